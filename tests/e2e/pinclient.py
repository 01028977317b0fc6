#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# pinclient.py - a pinning app for test_exclusions.sh: CONNECTs through the proxy, trusts only
# the origin's own root and checks that the server key's SHA-256 (of its SubjectPublicKeyInfo)
# is the pinned one. A leaf of the proxy's fails the first check: OpenSSL aborts the handshake
# with an alert (unknown_ca), as pinned apps do. With MODE bad_certificate it trusts no root at
# all and checks only the pin, in a verify callback (libssl through ctypes: Python's ssl module
# has none) that rejects another key with X509_V_ERR_CERT_REJECTED, which OpenSSL sends as a
# bad_certificate alert, as apps that pin the key alone do.
# Prints one line: result=happy|rejected|...
#   pinclient.py PROXYHOST:PORT HOST:PORT ROOT.pem PIN_HEX [MODE]
import ctypes
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


def pinned_only(s, host, pin):
    """The handshake in libssl with a verify callback that checks only the leaf key's pin."""
    lssl = ctypes.CDLL("libssl.so.3")
    lcr = ctypes.CDLL("libcrypto.so.3")
    vp = ctypes.c_void_p
    for f, res, args in ((lssl.TLS_client_method, vp, []), (lssl.SSL_CTX_new, vp, [vp]),
                         (lssl.SSL_new, vp, [vp]), (lssl.SSL_set_fd, ctypes.c_int, [vp, ctypes.c_int]),
                         (lssl.SSL_ctrl, ctypes.c_long, [vp, ctypes.c_int, ctypes.c_long, vp]),
                         (lssl.SSL_connect, ctypes.c_int, [vp]),
                         (lssl.SSL_write, ctypes.c_int, [vp, ctypes.c_char_p, ctypes.c_int]),
                         (lssl.SSL_read, ctypes.c_int, [vp, vp, ctypes.c_int]),
                         (lcr.X509_STORE_CTX_get_error_depth, ctypes.c_int, [vp]),
                         (lcr.X509_STORE_CTX_get_current_cert, vp, [vp]),
                         (lcr.X509_STORE_CTX_set_error, None, [vp, ctypes.c_int]),
                         (lcr.X509_get_pubkey, vp, [vp]), (lcr.EVP_PKEY_free, None, [vp]),
                         (lcr.i2d_PUBKEY, ctypes.c_int, [vp, vp])):
        f.restype = res
        f.argtypes = args
    cb_t = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, vp)

    def verify(ok, xs):
        if lcr.X509_STORE_CTX_get_error_depth(xs) != 0:
            return 1  # the chain is not what the app trusts: the pin is
        pk = lcr.X509_get_pubkey(lcr.X509_STORE_CTX_get_current_cert(xs))
        n = lcr.i2d_PUBKEY(pk, None)
        b = ctypes.create_string_buffer(n)
        pp = vp(ctypes.addressof(b))
        lcr.i2d_PUBKEY(pk, ctypes.byref(pp))
        lcr.EVP_PKEY_free(pk)
        if hashlib.sha256(b.raw[:n]).hexdigest() == pin:
            return 1
        lcr.X509_STORE_CTX_set_error(xs, 28)  # X509_V_ERR_CERT_REJECTED: bad_certificate
        return 0

    cb = cb_t(verify)
    ctx = lssl.SSL_CTX_new(lssl.TLS_client_method())
    lssl.SSL_CTX_set_verify.argtypes = [vp, ctypes.c_int, cb_t]
    lssl.SSL_CTX_set_verify(ctx, 1, cb)  # SSL_VERIFY_PEER
    t = lssl.SSL_new(ctx)
    s.setblocking(True)  # libssl on the descriptor itself: a timeout would make it non-blocking
    lssl.SSL_set_fd(t, s.fileno())
    lssl.SSL_ctrl(t, 55, 0, ctypes.cast(ctypes.c_char_p(host.encode()), vp))  # SNI
    if lssl.SSL_connect(t) != 1:
        print("result=rejected why=bad_certificate")
        return
    req = b"GET /index.html HTTP/1.0\r\nHost: %s\r\n\r\n" % host.encode()
    lssl.SSL_write(t, req, len(req))
    body = b""
    buf = ctypes.create_string_buffer(4096)
    while True:
        n = lssl.SSL_read(t, buf, 4096)
        if n <= 0:
            break
        body += buf.raw[:n]
    print("result=%s" % ("happy" if b"hello-from-origin" in body else "nobody"))


def main():
    proxy, target, root, pin = sys.argv[1:5]
    mode = sys.argv[5] if len(sys.argv) > 5 else "unknown_ca"
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
    if mode == "bad_certificate":
        pinned_only(s, host, pin)
        return
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
