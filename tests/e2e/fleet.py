#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# fleet.py - helpers for the many-nodes tests and bench/fleet.sh.
#   fleet.py pki DIR N           a root (DIR/root.pem) and N origin leaves DIR/hosts/hK.test.pem
#                                (K = 1..N, one shared key, SAN DNS:hK.test), one per host name
#   fleet.py load CA OPORT SPEC  real TLS clients: SPEC lines "PROXYPORT HOST" on stdin; each
#                                does CONNECT 127.0.0.1:OPORT through the proxy, TLS with SNI
#                                HOST, verifies the leaf against CA (chain + host name), GETs
#                                /index.html. Options: --threads N, --times FILE (per request:
#                                proxyport host seconds ok). Prints "ok=N failed=M" and the
#                                first failures; exit 0 when none failed.
import concurrent.futures
import datetime
import os
import socket
import ssl
import sys
import time


def pki(d, n):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    os.makedirs(os.path.join(d, "hosts"), exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    rk = ec.generate_private_key(ec.SECP256R1())
    rname = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tlsmint fleet test root")])
    root = (x509.CertificateBuilder().subject_name(rname).issuer_name(rname)
            .public_key(rk.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(rk, hashes.SHA256()))
    with open(os.path.join(d, "root.pem"), "wb") as f:
        f.write(root.public_bytes(serialization.Encoding.PEM))
    lk = ec.generate_private_key(ec.SECP256R1())
    kpem = lk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    with open(os.path.join(d, "hosts.key"), "wb") as f:
        f.write(kpem)
    for k in range(1, n + 1):
        host = "h%d.test" % k
        c = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
             .issuer_name(rname).public_key(lk.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=20))
             .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                            critical=False)
             .sign(rk, hashes.SHA256()))
        base = os.path.join(d, "hosts", host)
        with open(base + ".pem", "wb") as f:
            f.write(c.public_bytes(serialization.Encoding.PEM))
        with open(base + ".der", "wb") as f:
            f.write(c.public_bytes(serialization.Encoding.DER))
        with open(base + ".key", "wb") as f:
            f.write(kpem)


def one(ctx, pport, oport, host, timeout):
    t0 = time.monotonic()
    try:
        s = socket.create_connection(("127.0.0.1", pport), timeout=timeout)
        s.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (oport, oport))
        head = b""
        while b"\r\n\r\n" not in head:
            b = s.recv(1024)
            if not b:
                raise OSError("proxy closed during CONNECT")
            head += b
        if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
            raise OSError("CONNECT answer: %r" % head[:40])
        t = ctx.wrap_socket(s, server_hostname=host)
        t.sendall(b"GET /index.html HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" %
                  host.encode())
        body = b""
        while True:
            b = t.recv(4096)
            if not b:
                break
            body += b
        t.close()
        if b"hello-from-origin" not in body:
            raise OSError("unexpected answer: %r" % body[:60])
        return (pport, host, time.monotonic() - t0, None)
    except Exception as e:  # noqa: BLE001 - every failure is reported
        return (pport, host, time.monotonic() - t0, "%s: %s" % (type(e).__name__, e))


def load(ca, oport, args):
    threads, times = 24, None
    i = 0
    while i < len(args):
        if args[i] == "--threads":
            threads = int(args[i + 1])
            i += 2
        elif args[i] == "--times":
            times = args[i + 1]
            i += 2
        else:
            sys.exit("unknown option " + args[i])
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    jobs = [ln.split() for ln in sys.stdin if ln.strip()]
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as ex:
        res = list(ex.map(lambda j: one(ctx, int(j[0]), oport, j[1], 20), jobs))
    bad = [r for r in res if r[3] is not None]
    if times:
        with open(times, "w") as f:
            for r in res:
                f.write("%d %s %.6f %d\n" % (r[0], r[1], r[2], 1 if r[3] is None else 0))
    print("ok=%d failed=%d" % (len(res) - len(bad), len(bad)))
    for r in bad[:5]:
        print("  failed: port %d host %s: %s" % (r[0], r[1], r[3]))
    return 0 if not bad else 1


if __name__ == "__main__":
    if sys.argv[1] == "pki":
        pki(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "load":
        sys.exit(load(sys.argv[2], int(sys.argv[3]), sys.argv[4:]))
    else:
        sys.exit("usage: fleet.py pki DIR N | load CA OPORT [--threads N] [--times F] < SPEC")
