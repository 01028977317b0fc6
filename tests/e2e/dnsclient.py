#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""dnsclient.py - raw CONNECT clients for the resolver test (tests/e2e/test_dns.sh).

  dnsclient.py times PROXY_PORT TARGET N     N CONNECTs one after the other: prints
                                             "median_ms=M max_ms=X status=S" (S: the codes seen)
  dnsclient.py burst PROXY_PORT TARGET N     N CONNECTs at once, every head sent before any
                                             answer is read: prints "s200=K other=J"
  dnsclient.py hold PROXY_PORT PATTERN N     N CONNECTs to PATTERN with {i} replaced, left
                                             waiting; prints "held=N" and keeps them until killed
  dnsclient.py one PROXY_PORT TARGET         one CONNECT: "status=S ms=M body=FIRST_BODY_LINE"
"""
import socket
import statistics
import sys
import time


def connect(port, target):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)).encode())
    return s


def read_head(s):
    """(status, body first line) of the proxy's answer; body only when the proxy closes."""
    data = b""
    while b"\r\n\r\n" not in data:
        d = s.recv(4096)
        if not d:
            break
        data += d
    line = data.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    status = parts[1] if len(parts) > 1 else "none"
    body = b""
    if status != "200":
        head, _, body = data.partition(b"\r\n\r\n")
        s.settimeout(5)
        try:
            while True:
                d = s.recv(4096)
                if not d:
                    break
                body += d
        except socket.timeout:
            pass
    return status, body.decode("latin-1").split("\n", 1)[0]


def main():
    cmd, port = sys.argv[1], int(sys.argv[2])
    if cmd == "one":
        t0 = time.monotonic()
        s = connect(port, sys.argv[3])
        st, body = read_head(s)
        ms = (time.monotonic() - t0) * 1000
        print("status=%s ms=%.1f body=%s" % (st, ms, body.replace(" ", "_")))
    elif cmd == "times":
        target, n = sys.argv[3], int(sys.argv[4])
        times, seen = [], set()
        for _ in range(n):
            t0 = time.monotonic()
            s = connect(port, target)
            st, _ = read_head(s)
            times.append((time.monotonic() - t0) * 1000)
            seen.add(st)
            s.close()
        print("median_ms=%.2f max_ms=%.2f status=%s" % (statistics.median(times), max(times),
                                                         ",".join(sorted(seen))))
    elif cmd == "burst":
        target, n = sys.argv[3], int(sys.argv[4])
        socks = [connect(port, target) for _ in range(n)]
        ok = 0
        for s in socks:
            st, _ = read_head(s)
            ok += st == "200"
            s.close()
        print("s200=%d other=%d" % (ok, n - ok))
    elif cmd == "hold":
        pat, n = sys.argv[3], int(sys.argv[4])
        socks = [connect(port, pat.replace("{i}", str(i))) for i in range(n)]
        print("held=%d" % len(socks), flush=True)
        while True:
            time.sleep(3600)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
