#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# nontls.py - servers and clients for test_nontls.sh (traffic that is not TLS):
#   server banner PORT     an SSH-like server: sends a banner on accept, then echoes lines
#   server echo PORT       a client-first server: echoes what it reads, prefixed "echo:"
#   banner PROXY HOST:PORT CONNECT, then: ms until the banner, and whether an echo comes back
#   raw PROXY HOST:PORT DATA   CONNECT (PROXY "-": straight to HOST:PORT), send DATA, print the answer
#   slowtls PROXY HOST:PORT CAFILE MS   CONNECT, wait MS, then TLS: print the leaf's issuer CN
# Clients print one line of key=value pairs; they never wait longer than 5 s for anything.
import socket
import ssl
import sys
import threading
import time


def serve(kind, port):
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(64)

    def one(s):
        try:
            s.settimeout(10)
            if kind == "banner":
                s.sendall(b"SSH-2.0-tlsmint_e2e_banner\r\n")
            while True:
                d = s.recv(4096)
                if not d:
                    break
                s.sendall(d if kind == "banner" else b"echo:" + d)
        except OSError:
            pass
        finally:
            s.close()

    while True:
        s, _ = ls.accept()
        threading.Thread(target=one, args=(s,), daemon=True).start()


def connect(proxy, target):
    host, port = target.rsplit(":", 1)
    if proxy == "-":
        s = socket.create_connection((host, int(port)), timeout=5)
        return s, b""
    ph, pp = proxy.rsplit(":", 1)
    s = socket.create_connection((ph, int(pp)), timeout=5)
    s.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target.encode(), target.encode()))
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(4096)
        if not d:
            raise OSError("proxy closed before 200")
        buf += d
    head, rest = buf.split(b"\r\n\r\n", 1)
    if b" 200 " not in head.split(b"\r\n")[0]:
        raise OSError("proxy said " + head.split(b"\r\n")[0].decode())
    return s, rest


def recv_some(s, want, limit=5.0):
    s.settimeout(limit)
    buf = b""
    end = time.monotonic() + limit
    try:
        while want not in buf and time.monotonic() < end:
            d = s.recv(4096)
            if not d:
                break
            buf += d
    except OSError:
        pass
    return buf


def main():
    mode = sys.argv[1]
    if mode == "server":
        serve(sys.argv[2], int(sys.argv[3]))
        return
    try:
        s, rest = connect(sys.argv[2], sys.argv[3])
    except OSError as e:
        print("result=noconnect err=%s" % str(e).replace(" ", "_"))
        return
    if mode == "banner":
        t0 = time.monotonic()
        got = rest + recv_some(s, b"\r\n")
        ms = int((time.monotonic() - t0) * 1000)
        if b"SSH-2.0-tlsmint_e2e_banner" not in got:
            print("result=nobanner ms=%d got=%r" % (ms, got[:40]))
            return
        s.sendall(b"ping-42\n")
        echo = recv_some(s, b"ping-42\n")
        print("result=banner ms=%d echo=%s" % (ms, "yes" if b"ping-42\n" in echo else "no"))
    elif mode == "raw":
        s.sendall(sys.argv[4].encode())
        got = rest + recv_some(s, sys.argv[4].encode())
        print("result=%s" % (got.decode(errors="replace").replace(" ", "_").replace("\n", "|")
                             or "closed"))
    elif mode == "slowtls":
        time.sleep(int(sys.argv[5]) / 1000.0)
        ctx = ssl.create_default_context(cafile=sys.argv[4])
        try:
            t = ctx.wrap_socket(s, server_hostname="localhost")
            issuer = dict(x[0] for x in t.getpeercert()["issuer"]).get("commonName", "?")
            t.sendall(b"GET /index.html HTTP/1.0\r\nHost: localhost\r\n\r\n")
            body = recv_some(t, b"hello-from-origin")
            print("result=tls issuer=%s body=%s" % (issuer.replace(" ", "_"),
                                                    "yes" if b"hello-from-origin" in body else "no"))
        except (OSError, ssl.SSLError) as e:
            print("result=tlsfail err=%s" % str(e).replace(" ", "_")[:80])


if __name__ == "__main__":
    main()
