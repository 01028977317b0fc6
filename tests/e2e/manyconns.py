#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# manyconns.py - holds many intercepted TLS connections through tlsmint's explicit listener, for
# tests/e2e/test_many.sh: one process, non-blocking sockets and one selector (epoll), so a few
# thousand connections cost one thread.
#
# usage: manyconns.py PROXY_PORT HOST ORIGIN_PORT CA_FILE N [WINDOW]
#   1. opens N connections: CONNECT HOST:ORIGIN_PORT, "200", then a TLS handshake that verifies
#      the proxy's leaf against CA_FILE (so the proxy's upstream TLS session is up too); at most
#      WINDOW (default 100) are being opened at once; one that fails is tried again, twice at
#      most. Prints "held OK FAILED SECONDS RETRIED".
#   2. waits for a line on stdin ("relay", or anything else to quit).
#   3. sends one GET /index.html on every held connection and reads the answer. Prints
#      "relayed OK FAILED SECONDS", OK counting answers that hold the origin's body.
# Every wait is bounded (TIMEOUT seconds per phase); the process exits by itself.
import resource
import selectors
import socket
import ssl
import sys
import time

TIMEOUT = 150.0
BODY = b"hello-from-origin"


class Conn:
    __slots__ = ("sock", "tls", "state", "buf", "tries")

    def __init__(self, tries=1):
        self.sock = None
        self.tls = None
        self.state = "connecting"
        self.buf = b""
        self.tries = tries


def main():
    pport, host, oport, cafile, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    window = int(sys.argv[6]) if len(sys.argv) > 6 else 100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    sel = selectors.DefaultSelector()
    request = ("CONNECT %s:%s HTTP/1.1\r\nHost: %s:%s\r\n\r\n" % (host, oport, host, oport)).encode()
    held, failed, opening, started, retried = [], 0, 0, 0, 0
    retry = []  # attempts of the connections to open again
    t0 = time.monotonic()

    def fail(c):
        nonlocal failed, opening
        opening -= 1
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()
        if c.tries < 3:
            retry.append(c.tries + 1)
        else:
            failed += 1

    def want(c, ev):
        sel.modify(c.sock, ev, c)

    def handshake(c):
        nonlocal opening
        try:
            c.tls.do_handshake()
        except ssl.SSLWantReadError:
            want(c, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            want(c, selectors.EVENT_WRITE)
            return
        except (ssl.SSLError, OSError):
            fail(c)
            return
        c.state = "held"
        opening -= 1
        sel.unregister(c.sock)
        held.append(c)

    def step(c):
        if c.state == "connecting":
            if c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                fail(c)
                return
            c.sock.send(request)
            c.state = "reply"
            want(c, selectors.EVENT_READ)
        elif c.state == "reply":
            try:
                data = c.sock.recv(4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                fail(c)
                return
            c.buf += data
            if b"\r\n\r\n" not in c.buf:
                return
            if not c.buf.startswith(b"HTTP/1.1 200"):
                fail(c)
                return
            sel.unregister(c.sock)
            c.tls = ctx.wrap_socket(c.sock, server_hostname=host, do_handshake_on_connect=False)
            c.sock = c.tls
            c.state = "handshake"
            sel.register(c.sock, selectors.EVENT_WRITE, c)
            handshake(c)
        elif c.state == "handshake":
            handshake(c)

    while (started < n or opening > 0 or retry) and time.monotonic() - t0 < TIMEOUT:
        while (started < n or retry) and opening < window:
            if retry:
                c = Conn(retry.pop())
                retried += 1
            else:
                c = Conn()
                started += 1
            c.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.sock.setblocking(False)
            c.sock.connect_ex(("127.0.0.1", int(pport)))
            sel.register(c.sock, selectors.EVENT_WRITE, c)
            opening += 1
        for key, _ in sel.select(timeout=1.0):
            step(key.data)
    failed = n - len(held)
    print("held %d %d %.1f %d" % (len(held), failed, time.monotonic() - t0, retried), flush=True)

    if sys.stdin.readline().strip() != "relay":
        return 0
    t0 = time.monotonic()
    get = ("GET /index.html HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host).encode()
    ok, bad, pending = 0, 0, 0
    why = {}
    for c in held:
        c.buf = b""
        try:
            c.tls.send(get)
        except (ssl.SSLError, OSError) as e:
            bad += 1
            why["send " + type(e).__name__] = why.get("send " + type(e).__name__, 0) + 1
            c.tls.close()
            continue
        sel.register(c.sock, selectors.EVENT_READ, c)
        pending += 1
    while pending > 0 and time.monotonic() - t0 < TIMEOUT:
        for key, _ in sel.select(timeout=1.0):
            c = key.data
            done = False
            try:
                while True:
                    data = c.tls.recv(65536)
                    if not data:
                        done = True
                        break
                    c.buf += data
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLError, OSError) as e:
                done = True
                err = type(e).__name__
            else:
                err = "eof"
            if BODY in c.buf:
                ok += 1
                done = True
            elif done:
                bad += 1
                k = "%s after %d bytes: %r" % (err, len(c.buf), c.buf[:40])
                why[k] = why.get(k, 0) + 1
            if done:
                pending -= 1
                sel.unregister(c.sock)
                c.tls.close()
    bad += pending
    for k, v in sorted(why.items()):
        print("relay failure: %d x %s" % (v, k), file=sys.stderr, flush=True)
    print("relayed %d %d %.1f" % (ok, bad, time.monotonic() - t0), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
