#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# tlsclient.py - raw clients for the end-to-end tests: hand-built ClientHellos (valid, truncated,
# with a huge or lying SNI), garbage, slow clients, malformed CONNECT heads.
# Usage: tlsclient.py CASE ARGS...  Prints one line of key=value pairs:
#   lport   the client's local port (to find its access-log line)
#   status  HTTP status code of the proxy's answer to CONNECT ('-' when there was none)
#   closed  1 when the proxy closed (EOF or RST) within the wait, 0 when it did not
#   how     eof | rst | timeout | sendfail
#   secs    seconds from connect until the close (or until the wait ended)
#   nbytes  bytes received after the CONNECT answer
#   rec     first byte of what followed (TLS record type: 15 alert, 16 handshake, '-' nothing)
#   alert   TLS alert description (decimal), hs: first handshake message type
import os
import select
import socket
import struct
import sys
import time


def u8(n):
    return struct.pack("!B", n)


def u16(n):
    return struct.pack("!H", n)


def u24(n):
    return struct.pack("!I", n)[1:]


def ext(t, body):
    return u16(t) + u16(len(body)) + body


def client_hello(sni=None, sni_raw=None, alpn=(b"http/1.1",)):
    """A TLS 1.2 ClientHello handshake message (no record header) with ECDHE suites."""
    exts = b""
    if sni_raw is not None:
        exts += ext(0x0000, sni_raw)
    elif sni is not None:
        name = u8(0) + u16(len(sni)) + sni
        exts += ext(0x0000, u16(len(name)) + name)
    exts += ext(0x000A, u16(4) + u16(0x001D) + u16(0x0017))  # supported_groups
    exts += ext(0x000B, u8(1) + u8(0))  # ec_point_formats
    sigs = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501]
    exts += ext(0x000D, u16(2 * len(sigs)) + b"".join(u16(s) for s in sigs))
    exts += ext(0x0017, b"")  # extended_master_secret
    exts += ext(0xFF01, b"\x00")  # renegotiation_info
    if alpn:
        lst = b"".join(u8(len(p)) + p for p in alpn)
        exts += ext(0x0010, u16(len(lst)) + lst)
    assert len(exts) <= 0xFFFF, len(exts)
    ciphers = [0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8]
    body = (u16(0x0303) + os.urandom(32) + u8(0) + u16(2 * len(ciphers)) +
            b"".join(u16(c) for c in ciphers) + u8(1) + u8(0) + u16(len(exts)) + exts)
    return u8(1) + u24(len(body)) + body


def records(hs, maxlen=16384):
    """Handshake bytes split into TLS records of at most maxlen bytes."""
    out = b""
    for i in range(0, len(hs), maxlen):
        chunk = hs[i:i + maxlen]
        out += b"\x16\x03\x01" + u16(len(chunk)) + chunk
    return out


class Result:
    def __init__(self):
        self.f = {"lport": "-", "status": "-", "closed": "0", "how": "timeout", "secs": "0",
                  "nbytes": "0", "rec": "-", "alert": "-", "hs": "-"}
        self.t0 = time.monotonic()
        self.data = b""

    def closed(self, how):
        self.f["closed"] = "1"
        self.f["how"] = how
        self.f["secs"] = "%.2f" % (time.monotonic() - self.t0)

    def out(self):
        d = self.data
        self.f["nbytes"] = str(len(d))
        if len(d) >= 1:
            self.f["rec"] = "%02x" % d[0]
        if len(d) >= 7 and d[0] == 0x15:
            self.f["alert"] = str(d[6])
        if len(d) >= 6 and d[0] == 0x16:
            self.f["hs"] = str(d[5])
        if self.f["closed"] == "0":
            self.f["secs"] = "%.2f" % (time.monotonic() - self.t0)
        print(" ".join("%s=%s" % kv for kv in self.f.items()))
        sys.stdout.flush()


def connect(port, r, host="127.0.0.1"):
    s = socket.create_connection((host, port), timeout=10)
    r.t0 = time.monotonic()
    r.f["lport"] = str(s.getsockname()[1])
    return s


def read_head(s, r):
    """Reads the proxy's answer head; returns the bytes that followed it."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        try:
            d = s.recv(4096)
        except (ConnectionResetError, socket.timeout):
            d = b""
        if not d:
            break
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    parts = head.split(b" ")
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/"):
        r.f["status"] = parts[1].decode(errors="replace")
    return rest


def proxy_connect(pport, target, r):
    s = connect(pport, r)
    s.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target.encode(), target.encode()))
    rest = read_head(s, r)
    r.data = rest
    return s


def wait_close(s, r, timeout):
    """Reads until EOF / RST or until timeout seconds have passed."""
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return
        s.settimeout(left)
        try:
            d = s.recv(65536)
        except socket.timeout:
            return
        except (ConnectionResetError, BrokenPipeError):
            r.closed("rst")
            return
        if not d:
            r.closed("eof")
            return
        r.data += d


def send_all(s, r, data):
    try:
        s.sendall(data)
        return True
    except (ConnectionResetError, BrokenPipeError):
        r.closed("sendfail")
        return False


def slow_send(s, r, data, interval, maxsecs):
    """One byte per interval; stops when the peer closes or after maxsecs."""
    for i in range(len(data)):
        if time.monotonic() - r.t0 > maxsecs:
            return
        if not send_all(s, r, data[i:i + 1]):
            return
        ready, _, _ = select.select([s], [], [], interval)
        if ready:
            try:
                d = s.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                r.closed("rst")
                return
            if not d:
                r.closed("eof")
                return
            r.data += d


RAW = {
    "port99999": b"CONNECT localhost:99999 HTTP/1.1\r\nHost: localhost:99999\r\n\r\n",
    "emptyhost": b"CONNECT :443 HTTP/1.1\r\nHost: :443\r\n\r\n",
    "port0": b"CONNECT localhost:0 HTTP/1.1\r\n\r\n",
    "longline": b"CONNECT " + b"a" * 20000 + b".example:443 HTTP/1.1\r\n\r\n",
    "longheader": b"CONNECT localhost:443 HTTP/1.1\r\nX-Pad: " + b"p" * 20000 + b"\r\n\r\n",
    "nul": b"CONNECT local\x00host:443 HTTP/1.1\r\n\r\n",
    "partial": b"CONNECT localhost:443 HTT",
    "plaintext": b"hello\r\n",
}


def main():
    case = sys.argv[1]
    a = sys.argv[2:]
    r = Result()
    try:
        if case == "hello":  # PPORT TARGET SNI: a valid hand-built ClientHello (control case)
            s = proxy_connect(int(a[0]), a[1], r)
            send_all(s, r, records(client_hello(sni=a[2].encode())))
            end = time.monotonic() + 10
            while len(r.data) < 6 and time.monotonic() < end and r.f["closed"] == "0":
                s.settimeout(max(0.01, end - time.monotonic()))
                try:
                    d = s.recv(65536)
                except socket.timeout:
                    break
                except ConnectionResetError:
                    r.closed("rst")
                    break
                if not d:
                    r.closed("eof")
                    break
                r.data += d
        elif case == "eager":  # PPORT TARGET: CONNECT head and ClientHello in one write
            s = connect(int(a[0]), r)
            t = a[1].encode()
            send_all(s, r, b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (t, t) +
                     records(client_hello(sni=b"localhost")))
            r.data = read_head(s, r)
            end = time.monotonic() + 10
            while len(r.data) < 6 and time.monotonic() < end:
                s.settimeout(max(0.01, end - time.monotonic()))
                try:
                    d = s.recv(65536)
                except (socket.timeout, ConnectionResetError):
                    break
                if not d:
                    r.closed("eof")
                    break
                r.data += d
        elif case == "garbage":  # PPORT TARGET: bytes that are no TLS record at all
            s = proxy_connect(int(a[0]), a[1], r)
            send_all(s, r, b"\x47\x00\xff" + os.urandom(509))
            wait_close(s, r, float(a[2]) if len(a) > 2 else 5)
        elif case == "truncated":  # PPORT TARGET N: first N bytes of a ClientHello, then FIN
            s = proxy_connect(int(a[0]), a[1], r)
            hello = records(client_hello(sni=b"localhost"))
            send_all(s, r, hello[:int(a[2])])
            s.shutdown(socket.SHUT_WR)
            wait_close(s, r, 5)
        elif case == "bigsni":  # PPORT TARGET SIZE: SNI host name of SIZE bytes, multi-record
            s = proxy_connect(int(a[0]), a[1], r)
            name = (b"a" * 63 + b".") * (int(a[2]) // 64) + b"x" * (int(a[2]) % 64)
            name = name[:int(a[2])]
            send_all(s, r, records(client_hello(sni=name)))
            wait_close(s, r, 10)
        elif case == "lyingsni":  # PPORT TARGET: SNI whose inner lengths exceed the extension
            s = proxy_connect(int(a[0]), a[1], r)
            raw = u16(0xFFF0) + u8(0) + u16(0xFFEB) + b"localhost"
            send_all(s, r, records(client_hello(sni_raw=raw)))
            wait_close(s, r, 10)
        elif case == "slowhello":  # PPORT TARGET MAXSECS: the ClientHello at 1 byte per second
            s = proxy_connect(int(a[0]), a[1], r)
            slow_send(s, r, records(client_hello(sni=b"localhost")), 1.0, float(a[2]))
        elif case == "slowconnect":  # PPORT TARGET MAXSECS: the CONNECT head at 1 byte/second
            s = connect(int(a[0]), r)
            head = b"CONNECT %s HTTP/1.1\r\nHost: %s\r\nX-Slow: yes\r\n\r\n" % (
                a[1].encode(), a[1].encode())
            slow_send(s, r, head, 1.0, float(a[2]))
            if r.f["closed"] == "1" and r.data.startswith(b"HTTP/"):
                r.data = read_head_from(r.data, r)
        elif case == "raw":  # PORT NAME [shutwr]: one of RAW, then read until close
            s = connect(int(a[0]), r)
            ok = send_all(s, r, RAW[a[1]])
            if ok and len(a) > 2 and a[2] == "shutwr":
                s.shutdown(socket.SHUT_WR)
            wait_close(s, r, float(a[3]) if len(a) > 3 else 5)
            if r.data.startswith(b"HTTP/"):
                r.data = read_head_from(r.data, r)
        else:
            print("unknown case", case, file=sys.stderr)
            sys.exit(2)
    except (ConnectionRefusedError, socket.timeout, OSError) as e:
        r.f["how"] = "error:" + type(e).__name__
    r.out()


def read_head_from(buf, r):
    head, _, rest = buf.partition(b"\r\n\r\n")
    parts = head.split(b" ")
    if len(parts) >= 2:
        r.f["status"] = parts[1].decode(errors="replace")
    return rest


if __name__ == "__main__":
    main()
