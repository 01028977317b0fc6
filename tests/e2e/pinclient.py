#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# pinclient.py - a pinning app for test_exclusions.sh: CONNECTs through the proxy, trusts only
# the origin's own root and checks that the server key's SHA-256 (of its SubjectPublicKeyInfo)
# is the pinned one. A leaf of the proxy's fails the first check: OpenSSL aborts the handshake
# with an alert (unknown_ca), as pinned apps do. Prints one line: result=happy|rejected|...
#   pinclient.py PROXYHOST:PORT HOST:PORT ROOT.pem PIN_HEX
import hashlib
import socket
import ssl
import sys


def der_len(b, i):
    n = b[i]
    if n < 0x80:
        return n, i + 1
    k = n & 0x7F
    return int.from_bytes(b[i + 1:i + 1 + k], "big"), i + 1 + k


def spki(cert):
    """The SubjectPublicKeyInfo of a DER certificate (7th field of the TBS, 6th without [0])."""
    _, i = der_len(cert, 1)          # Certificate SEQUENCE
    _, i = der_len(cert, i + 1)      # tbsCertificate SEQUENCE: i at its first field
    fields = []
    while len(fields) < 7:
        start = i
        n, j = der_len(cert, i + 1)
        fields.append(cert[start:j + n])
        i = j + n
    if fields[0][0] != 0xA0:         # no explicit version: SPKI is the 6th field
        return fields[5]
    return fields[6]


def main():
    proxy, target, root, pin = sys.argv[1:5]
    ph, pp = proxy.rsplit(":", 1)
    host = target.rsplit(":", 1)[0]
    s = socket.create_connection((ph, int(pp)), timeout=5)
    s.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target.encode(), target.encode()))
    head = b""
    while b"\r\n\r\n" not in head:
        d = s.recv(1)
        if not d:
            print("result=noconnect")
            return
        head += d
    ctx = ssl.create_default_context(cafile=root)
    try:
        t = ctx.wrap_socket(s, server_hostname=host)
    except ssl.SSLError as e:
        print("result=rejected why=%s" % str(e.reason).replace(" ", "_"))
        return
    got = hashlib.sha256(spki(t.getpeercert(binary_form=True))).hexdigest()
    if got != pin:
        print("result=wrongkey")
        return
    t.sendall(b"GET /index.html HTTP/1.0\r\nHost: %s\r\n\r\n" % host.encode())
    body = b""
    try:
        while True:
            d = t.recv(4096)
            if not d:
                break
            body += d
    except (OSError, ssl.SSLError):
        pass
    print("result=%s" % ("happy" if b"hello-from-origin" in body else "nobody"))


if __name__ == "__main__":
    main()
