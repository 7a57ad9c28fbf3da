#!/usr/bin/env python3
"""An HTTP/1.1 server for the shadow lab test: it logs every request it receives as
`REQ <x-request-id> <method> <sha256 of the raw request bytes> <length>` on stdout and
answers JSON with the request id, a timestamp (noise a comparison must learn) and the
body length. Keep-alive, Content-Length bodies; one thread per connection."""
import hashlib
import json
import socket
import sys
import threading
import time


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
            method, path, _ = lines[0].split(b" ", 2)
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                headers[k.strip().lower()] = v.strip()
            length = int(headers.get(b"content-length", b"0"))
            while len(rest) < length:
                data = conn.recv(1 << 20)
                if not data:
                    return
                rest += data
            body, buf = rest[:length], rest[length:]
            raw = head + b"\r\n\r\n" + body
            rid = headers.get(b"x-request-id", b"-").decode()
            print(
                f"REQ {rid} {method.decode()} {hashlib.sha256(raw).hexdigest()} {len(raw)}",
                flush=True,
            )
            out = json.dumps(
                {"id": rid, "path": path.decode(), "length": length, "ts": time.time_ns()}
            ).encode()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + b"Content-Length: %d\r\n\r\n" % len(out)
                + out
            )
    except (OSError, ValueError):
        return
    finally:
        conn.close()


def main():
    port = int(sys.argv[1])
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(512)
    print(f"listening on {port}", flush=True)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
