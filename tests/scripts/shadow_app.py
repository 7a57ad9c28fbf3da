#!/usr/bin/env python3
"""A JSON HTTP/1.1 app for the shadow differential-analysis bench: `shadow_app.py PORT
[--field E:PCT]... [--slow E:PCT]... [--errors E:PCT]...`. Endpoints /e0 .. /e9 answer
`{"endpoint", "items": [{"id", "name"}...], "count", "ts", "request_id"}` after 1-3 ms of
work; `ts` (a timestamp) and `request_id` (random) differ on every answer: noise that a
comparison must learn, not report.

Injected differences (what a new version in a shadow might do), per endpoint E:
  --field E:PCT   `items.0.name` changes in PCT % of answers;
  --slow E:PCT    the work takes PCT % longer;
  --errors E:PCT  PCT % of answers are 500s.
  --inject-in S   inject only when this process's network namespace name (`ip netns
                  identify`) contains S: one command line for production and its mirrors,
                  the differences in the shadow alone.
CPU work instead of waiting (for CPU limits):
  --burn MS       every answer spins the CPU for MS ms (after the wait);
  --heavier PCT   injected: the spinning takes PCT % longer (a version that needs more CPU).
Keep-alive, Content-Length bodies, one thread per connection."""
import json
import os
import random
import socket
import sys
import threading
import time
import uuid


def options(flag):
    out = {}
    args = sys.argv[2:]
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            e, _, pct = args[i + 1].partition(":")
            out[e] = float(pct)
    return out


FIELD, SLOW, ERRORS = options("--field"), options("--slow"), options("--errors")


def number(flag):
    args = sys.argv[2:]
    return float(args[args.index(flag) + 1]) if flag in args[:-1] else 0.0


BURN_MS, HEAVIER = number("--burn"), number("--heavier")


def namespace_name():
    """The name of this process's network namespace under /run/netns ("" if none)."""
    try:
        me = os.stat("/proc/self/ns/net")
        for name in os.listdir("/run/netns"):
            st = os.stat(os.path.join("/run/netns", name))
            if (st.st_dev, st.st_ino) == (me.st_dev, me.st_ino):
                return name
    except OSError:
        pass
    return ""


def namespace_matches():
    args = sys.argv[2:]
    if "--inject-in" not in args:
        return True
    want = args[args.index("--inject-in") + 1]
    name = namespace_name()
    print(f"namespace {name!r}: injecting {want in name}", flush=True)
    return want in name


if not namespace_matches():
    FIELD, SLOW, ERRORS, HEAVIER = {}, {}, {}, 0.0
COUNTER = {}
LOCK = threading.Lock()


def every(e, pct):
    """True for pct % of the answers of endpoint e, spread evenly."""
    if pct <= 0:
        return False
    with LOCK:
        n = COUNTER.get(e, 0) + 1
        COUNTER[e] = n
    period = 100.0 / pct
    return int(n / period) != int((n - 1) / period)


def answer(path):
    e = path.split("?")[0].strip("/") or "e0"
    work = random.uniform(0.001, 0.003) * (1 + SLOW.get(e, 0) / 100)
    time.sleep(work)
    if BURN_MS > 0:
        # CPU time of this thread, so that time spent throttled does not count as work.
        until = time.thread_time() + BURN_MS * (1 + HEAVIER / 100) / 1000
        while time.thread_time() < until:
            pass
    if every(e + "/err", ERRORS.get(e, 0)):
        return 500, {"error": "injected"}
    items = [{"id": i, "name": f"{e}-item-{i}"} for i in range(3)]
    if every(e + "/field", FIELD.get(e, 0)):
        items[0]["name"] = f"{e}-changed"
    return 200, {
        "endpoint": e,
        "items": items,
        "count": len(items),
        "ts": time.time_ns(),
        "request_id": str(uuid.uuid4()),
    }


def serve(conn):
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                if len(buf) > 1 << 20 and b"\r\n\r\n" not in buf:
                    return
            head, _, rest = buf.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            _, path, _ = lines[0].split(b" ", 2)
            length = 0
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v.strip())
            while len(rest) < length:
                data = conn.recv(65536)
                if not data:
                    return
                rest += data
            buf = rest[length:]
            status, body = answer(path.decode())
            out = json.dumps(body).encode()
            reason = b"OK" if status == 200 else b"Internal Server Error"
            conn.sendall(
                b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n" % (status, reason)
                + b"Content-Length: %d\r\n\r\n" % len(out)
                + out
            )
    except (OSError, ValueError):
        return
    finally:
        conn.close()


def main():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[1])))
    s.listen(512)
    print(f"listening on {sys.argv[1]}", flush=True)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
