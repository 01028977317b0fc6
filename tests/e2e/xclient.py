#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# xclient.py - helpers for test_export.sh.
#   xclient.py exact PROXY_PORT HOST PORT CA PATH OUTDIR NAME
#       CONNECT through the proxy, TLS (trusting CA), one HTTP/1.1 request with Connection:
#       close; writes OUTDIR/NAME.sent and NAME.got (the exact plaintext bytes each way) and
#       prints the local port of the proxy connection.
#   xclient.py reset PROXY_PORT HOST PORT CA PATH
#       the same request without Connection: close; resets the connection (SO_LINGER 0) once
#       64 KiB of the answer are in; prints the local port.
#   xclient.py reader HOST PORT OUT SECONDS
#       a PCAP-over-IP reader: copies the stream to OUT for SECONDS (or until the peer closes).
#   xclient.py stalled HOST PORT GOFILE
#       a reader that connects and never reads (tiny receive buffer); prints whether the
#       proxy dropped it: "dropped" (reset), "closed" (an orderly close) or "still-connected".
#   xclient.py records PCAP
#       prints the packet records (length and bytes, not the timestamps) of a pcap file as one
#       sha256 and their count: "SHA N".
#   xclient.py streams PCAP|TSV PORT [sha TAIL]
#       prints, per TCP conversation whose client port is PORT, the payload bytes each way as
#       "c2s_hex s2c_hex" reassembled from tshark's fields (or from test_export's table of them,
#       FILE.tsv: tcp.srcport, tcp.dstport in columns 2 and 3, tcp.payload in column 13).
#       With "sha TAIL": the sha256 of the client's bytes and of the server's last TAIL bytes
#       instead (for bodies too big to pass through the shell).
import hashlib
import os
import socket
import struct
import ssl
import subprocess
import sys
import time


def connect_tls(pport, host, port, ca):
    """CONNECT host:port through the proxy, then TLS trusting ca: (the TLS socket, local port)."""
    s = socket.create_connection(("127.0.0.1", int(pport)), timeout=10)
    lport = s.getsockname()[1]
    s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        d = s.recv(1)
        if not d:
            sys.exit("proxy closed during CONNECT")
        head += d
    return ssl.create_default_context(cafile=ca).wrap_socket(s, server_hostname=host), lport


def exact(pport, host, port, ca, path, outdir, name):
    t, lport = connect_tls(pport, host, port, ca)
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


def reset(pport, host, port, ca, path):
    """Asks for path and, once 64 KiB of the answer are in, resets the connection (SO_LINGER 0)."""
    t, lport = connect_tls(pport, host, port, ca)
    t.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    got = 0
    while got < 65536:
        d = t.recv(65536)
        if not d:
            sys.exit("the answer ended before 64 KiB")
        got += len(d)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    t.close()
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
    # now read what is there: a dropped reader ends in a reset (the proxy discards what its
    # socket still holds); an orderly close would deliver all of it first, at the pace of this
    # reader's tiny window
    s.settimeout(2)
    try:
        while True:
            d = s.recv(1 << 16)
            if not d:
                print("closed")
                return
    except ConnectionResetError:
        print("dropped")
    except socket.timeout:
        print("still-connected")


def records(pcap):
    h = hashlib.sha256()
    n = 0
    with open(pcap, "rb") as f:
        f.read(24)
        while True:
            rh = f.read(16)
            if len(rh) < 16:
                break
            caplen = struct.unpack("<I", rh[8:12])[0]
            h.update(rh[8:16])
            h.update(f.read(caplen))
            n += 1
    print(h.hexdigest(), n)


def streams(pcap, port, mode="hex", tail="0"):
    port = str(port)
    if pcap.endswith(".tsv"):  # test_export's one-pass field table: srcport, dstport, payload
        rows = (line.rstrip("\n").split("\t") for line in open(pcap))
        segs = [(r[1], r[12]) for r in rows if len(r) > 12 and r[12] and port in (r[1], r[2])]
    else:
        out = subprocess.run(["tshark", "-r", pcap, "-Y", f"tcp.port=={port} && tcp.len>0",
                              "-T", "fields", "-e", "tcp.srcport", "-e", "tcp.payload"],
                             capture_output=True, text=True).stdout  # a cut-off end is fine
        segs = [line.partition("\t")[::2] for line in out.splitlines()]
    c2s, s2c = [], []
    for sport, hexs in segs:
        (c2s if sport == port else s2c).append(hexs.replace(":", ""))
    if mode == "sha":
        print(hashlib.sha256(bytes.fromhex("".join(c2s))).hexdigest(),
              hashlib.sha256(bytes.fromhex("".join(s2c))[-int(tail):]).hexdigest())
    else:
        print("".join(c2s), "".join(s2c))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"exact": exact, "reset": reset, "reader": reader, "stalled": stalled, "streams": streams,
     "records": records}[cmd](*args)
