#!/usr/bin/env python3
"""Load for the shadow differential-analysis lab test: `shadow_diff_client.py SERVER PORT
REQUESTS CONNECTIONS`: REQUESTS GETs over CONNECTIONS keep-alive connections (one after
another), cycling through the endpoints /e0 .. /e9. Prints `DONE <ok> <errors>`."""
import http.client
import sys


def main():
    server, port, total, conns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    per = max(1, total // conns)
    ok = errors = n = 0
    for _ in range(conns):
        c = http.client.HTTPConnection(server, port, timeout=10)
        for _ in range(per):
            c.request("GET", f"/e{n % 10}")
            r = c.getresponse()
            r.read()
            if r.status == 200:
                ok += 1
            else:
                errors += 1
            n += 1
        c.close()
    print(f"DONE {ok} {errors}", flush=True)


if __name__ == "__main__":
    main()
