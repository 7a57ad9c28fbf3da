#!/usr/bin/env python3
"""The client of the shadow lab test: `shadow_client.py SERVER PORT CONNECTIONS TAG
[--posts] [--big]`. Opens CONNECTIONS TCP connections one after another; on each sends 1-3
requests (GET, and with --posts every third connection a POST with a body; with --big two
connections POST 1 MiB), each with a unique X-Request-Id. Prints one line per request:
`REQ <id> <method> <sha256 of the raw request> <length> <client port> <ok>`; exits 1 if any
request failed. With --users N, request r of connection c carries `X-User: u<(3c + r) % N>`
(users spread over connections, several on one). Every connection and read has a timeout."""
import hashlib
import json
import os
import socket
import sys


def request(method, path, rid, body=b"", user=None):
    extra = f"X-User: {user}\r\n" if user is not None else ""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: shadow-lab\r\nX-Request-Id: {rid}\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def read_response(f):
    status = f.readline()
    length = 0
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    return status, f.read(length)


def main():
    server, port, count, tag = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    posts, big = "--posts" in sys.argv, "--big" in sys.argv
    users = int(sys.argv[sys.argv.index("--users") + 1]) if "--users" in sys.argv else 0
    failed = 0
    for c in range(count):
        reqs = []
        for r in range(1 + c % 3):
            rid = f"{tag}-{c}-{r}"
            if big and c in (1, count // 2) and r == 0:
                reqs.append((rid, "POST", request("POST", "/upload", rid, os.urandom(1 << 20))))
            elif posts and c % 3 == 2 and r == 1:
                reqs.append((rid, "POST", request("POST", "/orders", rid, os.urandom(700 + c))))
            else:
                user = f"u{(3 * c + r) % users}" if users else None
                reqs.append((rid, "GET", request("GET", f"/items?n={c}", rid, user=user)))
        try:
            s = socket.create_connection((server, port), timeout=5)
            s.settimeout(5)
            f = s.makefile("rb")
            cport = s.getsockname()[1]
            for rid, method, raw in reqs:
                s.sendall(raw)
                status, body = read_response(f)
                ok = status.startswith(b"HTTP/1.1 200") and json.loads(body)["id"] == rid
                failed += 0 if ok else 1
                print(f"REQ {rid} {method} {hashlib.sha256(raw).hexdigest()} {len(raw)} {cport} {ok}")
            s.close()
        except (OSError, ValueError) as e:
            failed += len(reqs)
            print(f"ERR connection {c}: {e}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
