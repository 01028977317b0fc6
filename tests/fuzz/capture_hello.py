#!/usr/bin/env python3
"""capture_hello.py OUTDIR - records real TLS first flights for the dataplane fuzz targets.

OUTDIR/tls_client/<client>: the ClientHello bytes real clients send to a loopback listener
(curl, openssl s_client, python ssl, Chromium headless when /usr/bin/chromium exists), each read
until the whole handshake message is in, then the connection is closed.
OUTDIR/tls_upstream/<server>: what a real server (openssl s_server: TLS 1.3, TLS 1.2 ECDSA and
RSA, a HelloRetryRequest, a version refusal) answers to an OpenSSL client's ClientHello,
relayed and recorded on loopback; the certificates come from a CA made here.
OUTDIR/data/upstream-ca.pem (that CA: fuzz_tls_upstream's [upstream] ca_file) and
OUTDIR/data/upstream-client-hello (the s_client ClientHello for upstream.example that
fuzz_tls_upstream feeds its client side before the upstream answers).
Used by tests/fuzz/mkseeds.sh.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time


def read_hello(c):
    """Reads TLS records until the first handshake message is complete."""
    buf = b""
    need = None
    c.settimeout(10)
    while True:
        d = c.recv(65536)
        if not d:
            return buf
        buf += d
        # records: type(1) version(2) len(2); the handshake header in the first fragment
        payload, off = b"", 0
        while off + 5 <= len(buf):
            rl = int.from_bytes(buf[off + 3:off + 5], "big")
            if off + 5 + rl > len(buf):
                break
            payload += buf[off + 5:off + 5 + rl]
            off += 5 + rl
        if len(payload) >= 4 and need is None:
            need = 4 + int.from_bytes(payload[1:4], "big")
        if need is not None and len(payload) >= need:
            return buf[:off]


def clients(port, tmp):
    url_sni = f"https://fuzz.example:{port}/"
    resolve = f"fuzz.example:{port}:127.0.0.1"
    curl = ["curl", "-s", "-k", "-m", "5", "-o", "/dev/null"]
    s_client = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}"]
    out = [
        ("curl", curl + ["--resolve", resolve, url_sni]),
        ("curl-ip-http1", curl + ["--http1.1", f"https://127.0.0.1:{port}/"]),
        ("curl-tls12", curl + ["--tlsv1.2", "--tls-max", "1.2", "--resolve", resolve, url_sni]),
        ("s_client", s_client + ["-servername", "fuzz.example", "-alpn", "h2,http/1.1"]),
        ("s_client-tls12-rsa", s_client + ["-tls1_2", "-servername", "rsa.example",
                                           "-sigalgs", "RSA+SHA256:RSA-PSS+SHA256"]),
        ("s_client-tls13-groups", s_client + ["-tls1_3", "-servername", "fuzz.example",
                                              "-groups", "P-384:X25519"]),
        ("python", [sys.executable, "-c",
                    "import socket,ssl,sys\n"
                    "c=ssl.create_default_context();c.check_hostname=False\n"
                    "c.verify_mode=ssl.CERT_NONE;c.set_alpn_protocols(['h2','http/1.1'])\n"
                    "s=socket.create_connection(('127.0.0.1',int(sys.argv[1])),timeout=5)\n"
                    "try:\n c.wrap_socket(s,server_hostname='py.fuzz.example')\n"
                    "except OSError:\n pass\n", str(port)]),
    ]
    chromium = shutil.which("chromium")
    if chromium:
        base = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]
        out.append(("chromium-ip", base + [f"--user-data-dir={tempfile.mkdtemp(dir=tmp)}",
                                           f"https://127.0.0.1:{port}/"]))
        out.append(("chromium-sni", base + [f"--user-data-dir={tempfile.mkdtemp(dir=tmp)}",
                                            "--host-resolver-rules=MAP fuzz.example 127.0.0.1",
                                            url_sni]))
    return out


def capture_clients(out, tmp):
    os.makedirs(out, exist_ok=True)
    for i in range(len(clients(0, tmp))):
        # a listener per client: a client's retries must not reach the next one's listener
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(16)
        name, cmd = clients(ls.getsockname()[1], tmp)[i]
        got = []

        def serve():
            c, _ = ls.accept()
            got.append(read_hello(c))
            c.close()

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        t.join(30)
        p.kill()
        p.wait()
        ls.close()
        if got and got[0]:
            open(os.path.join(out, name), "wb").write(got[0])


def pki(d):
    run = lambda *a: subprocess.run(a, check=True, capture_output=True, cwd=d)
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "3650", "-subj",
        "/CN=tlsmint fuzz upstream CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign")
    for kind, newkey in (("ec", ["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]),
                         ("rsa", ["rsa:2048"])):
        run("openssl", "req", "-new", "-newkey", *newkey, "-nodes", "-keyout", f"{kind}.key",
            "-out", f"{kind}.csr", "-subj", "/CN=upstream.example")
        open(f"{d}/ext", "w").write("subjectAltName=DNS:upstream.example,IP:127.0.0.1\n"
                                    "extendedKeyUsage=serverAuth\n")
        run("openssl", "x509", "-req", "-in", f"{kind}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "3650", "-extfile", "ext", "-out", f"{kind}.pem")


def server_flight(hello, server_args, d):
    """Starts s_server, sends hello, records what the server answers within a short while."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    port = ls.getsockname()[1]
    ls.close()
    srv = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-quiet",
                            "-naccept", "1", *server_args], cwd=d, stdin=subprocess.PIPE,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s = None
    for _ in range(100):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            break
        except OSError:
            time.sleep(0.05)
    s.sendall(hello)
    s.settimeout(0.7)
    buf = b""
    try:
        while True:
            d2 = s.recv(65536)
            if not d2:
                break
            buf += d2
    except socket.timeout:
        pass
    s.close()
    srv.kill()
    srv.wait()
    return buf


def capture_upstream(out, tmp):
    os.makedirs(out, exist_ok=True)
    d = os.path.join(tmp, "pki")
    os.makedirs(d, exist_ok=True)
    pki(d)
    data = os.path.join(os.path.dirname(out), "data")
    os.makedirs(data, exist_ok=True)
    shutil.copy(os.path.join(d, "ca.pem"), os.path.join(data, "upstream-ca.pem"))
    # the ClientHello an OpenSSL 3 client sends (recorded from s_client, as above)
    hello_dir = os.path.join(tmp, "hello")
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4)
    port = ls.getsockname()[1]
    hellos = {}
    for name, extra in (("", []), ("-tls12", ["-tls1_2"])):
        got = []
        t = threading.Thread(target=lambda: got.append(read_hello(ls.accept()[0])), daemon=True)
        t.start()
        p = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                              "-servername", "upstream.example", "-alpn", "h2,http/1.1", *extra],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        t.join(10)
        p.kill()
        p.wait()
        hellos[name] = got[0]
    open(os.path.join(data, "upstream-client-hello"), "wb").write(hellos[""])
    servers = [
        ("tls13-ec", hellos[""], ["-cert", "ec.pem", "-key", "ec.key", "-alpn", "h2"]),
        ("tls12-ec", hellos[""], ["-cert", "ec.pem", "-key", "ec.key", "-tls1_2",
                                  "-cert_chain", "ca.pem"]),
        ("tls12-rsa", hellos["-tls12"], ["-cert", "rsa.pem", "-key", "rsa.key", "-tls1_2",
                                         "-alpn", "http/1.1"]),
        ("tls13-hrr", hellos[""], ["-cert", "ec.pem", "-key", "ec.key", "-groups", "P-521"]),
        ("tls12-only-refusal", hellos[""], ["-cert", "ec.pem", "-key", "ec.key", "-tls1_1"]),
    ]
    for name, hello, args in servers:
        flight = server_flight(hello, args, d)
        if flight:
            open(os.path.join(out, name), "wb").write(flight)


def main():
    out = sys.argv[1]
    tmp = tempfile.mkdtemp()
    try:
        capture_clients(os.path.join(out, "tls_client"), tmp)
        capture_upstream(os.path.join(out, "tls_upstream"), tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("capture_hello:", sorted(os.listdir(os.path.join(out, "tls_client"))),
          sorted(os.listdir(os.path.join(out, "tls_upstream"))))


if __name__ == "__main__":
    main()
