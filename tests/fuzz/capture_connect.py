#!/usr/bin/env python3
"""capture_connect.py OUTDIR - records the request heads real clients send to an explicit proxy.

Listens on a free loopback port; each client (curl -x, curl -x with proxy credentials, openssl
s_client -proxy, python http.client set_tunnel, curl through an IPv6 target) connects, its bytes
up to the blank line are saved as OUTDIR/<client>, and the connection is closed. Used by
tests/fuzz/mkseeds.sh.
"""
import http.client
import os
import socket
import subprocess
import sys
import threading


def serve(ls, out, name, done):
    c, _ = ls.accept()
    c.settimeout(10)
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = c.recv(4096)
        if not d:
            break
        buf += d
    open(os.path.join(out, name), "wb").write(buf)
    c.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    c.close()
    done.set()


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    port = ls.getsockname()[1]
    proxy = f"http://127.0.0.1:{port}"

    def python_tunnel():
        h = http.client.HTTPSConnection("127.0.0.1", port, timeout=5)
        h.set_tunnel("www.example.com", 443, headers={"User-Agent": "python-fuzz-seed"})
        try:
            h.connect()
        except OSError:
            pass

    clients = [
        ("curl", ["curl", "-s", "-m", "5", "-x", proxy, "https://www.example.com/"]),
        ("curl-auth", ["curl", "-s", "-m", "5", "-x", proxy, "-U", "user:secret",
                       "https://fuzz.example:8443/"]),
        ("curl-ipv6", ["curl", "-s", "-m", "5", "-x", proxy, "-g", "https://[::1]:443/"]),
        ("s_client", ["openssl", "s_client", "-proxy", f"127.0.0.1:{port}", "-connect",
                      "www.example.com:443"]),
        ("python", python_tunnel),
    ]
    for name, cmd in clients:
        done = threading.Event()
        t = threading.Thread(target=serve, args=(ls, out, name, done))
        t.start()
        if callable(cmd):
            cmd()
        else:
            subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=15)
        t.join(10)
    print(f"capture_connect: {len(os.listdir(out))} request heads")


if __name__ == "__main__":
    main()
