#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# xclient.py - helpers for test_export.sh.
#   xclient.py exact PROXY_PORT HOST PORT CA PATH OUTDIR NAME
#       CONNECT through the proxy, TLS (trusting CA), one HTTP/1.1 request with Connection:
#       close; writes OUTDIR/NAME.sent and NAME.got (the exact plaintext bytes each way) and
#       prints the local port of the proxy connection.
#   xclient.py reader HOST PORT OUT SECONDS
#       a PCAP-over-IP reader: copies the stream to OUT for SECONDS (or until the peer closes).
#   xclient.py stalled HOST PORT GOFILE
#       a reader that connects and never reads (tiny receive buffer); prints whether the
#       proxy dropped it (the connection closed or reset by the other side).
#   xclient.py streams PCAP PORT
#       prints, per TCP conversation whose client port is PORT, the payload bytes each way as
#       "c2s_hex s2c_hex" reassembled from tshark's fields.
import os
import socket
import ssl
import subprocess
import sys
import time


def exact(pport, host, port, ca, path, outdir, name):
    s = socket.create_connection(("127.0.0.1", int(pport)), timeout=10)
    lport = s.getsockname()[1]
    s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        d = s.recv(1)
        if not d:
            sys.exit("proxy closed during CONNECT")
        head += d
    ctx = ssl.create_default_context(cafile=ca)
    t = ctx.wrap_socket(s, server_hostname=host)
    req = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: tlsmint-export-test\r\n"
           f"X-Marker: {name}\r\nConnection: close\r\n\r\n").encode()
    t.sendall(req)
    got = b""
    while True:
        try:
            d = t.recv(65536)
        except (ssl.SSLEOFError, ConnectionResetError):
            break
        if not d:
            break
        got += d
    t.close()
    open(f"{outdir}/{name}.sent", "wb").write(req)
    open(f"{outdir}/{name}.got", "wb").write(got)
    print(lport)


def reader(host, port, out, secs):
    s = socket.create_connection((host, int(port)), timeout=2)
    end = time.time() + float(secs)
    with open(out, "wb") as f:
        while time.time() < end:
            s.settimeout(max(0.05, end - time.time()))
            try:
                d = s.recv(1 << 16)
            except socket.timeout:
                continue
            if not d:
                break
            f.write(d)
            f.flush()


def stalled(host, port, gofile):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, int(port)))
    # never reads until the test has pushed its 20 MiB through (bounded wait)
    end = time.time() + 120
    while not os.path.exists(gofile) and time.time() < end:
        time.sleep(0.1)
    # now read what is there: a dropped reader ends in EOF or a reset
    s.settimeout(2)
    try:
        while True:
            d = s.recv(1 << 16)
            if not d:
                print("dropped")
                return
    except ConnectionResetError:
        print("dropped")
    except socket.timeout:
        print("still-connected")


def streams(pcap, port):
    out = subprocess.run(["tshark", "-r", pcap, "-Y", f"tcp.port=={port} && tcp.len>0",
                          "-T", "fields", "-e", "tcp.srcport", "-e", "tcp.payload"],
                         capture_output=True, text=True).stdout  # a cut-off end is fine
    c2s, s2c = [], []
    for line in out.splitlines():
        sport, _, hexs = line.partition("\t")
        (c2s if sport == str(port) else s2c).append(hexs.replace(":", ""))
    print("".join(c2s), "".join(s2c))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"exact": exact, "reader": reader, "stalled": stalled, "streams": streams}[cmd](*args)
