#!/usr/bin/env python3
"""capture_frames.py TLSMINT CONF OUTDIR - records real frames of the proxy <-> signer socket.

Starts `tlsmint __signer` on a SOCK_SEQPACKET socketpair exactly as hsm_pool.c does (fd 3),
keeps its HELLO, sends request frames (one and several ECDSA-SHA256/384 jobs, a bad algorithm,
a wrong digest length) and the CTRL frame, and keeps every answer. Writes
OUTDIR/frame_proxy/{hello,resp-*} (what the proxy receives) and OUTDIR/frame_signer/{req-*,ctrl}
(what the signer receives). Used by tests/fuzz/mkseeds.sh.
"""
import os
import socket
import struct
import subprocess
import sys

MAGIC = 0x544D3031
HELLO, REQ, RESP, CTRL = 1, 2, 3, 4


def hdr(t, count):
    return struct.pack("=IHH", MAGIC, t, count)


def req(job_id, alg, digest):
    return struct.pack("=QBB6x", job_id, alg, len(digest)) + digest.ljust(64, b"\0")


def main():
    tlsmint, conf, out = sys.argv[1:4]
    os.makedirs(f"{out}/frame_proxy", exist_ok=True)
    os.makedirs(f"{out}/frame_signer", exist_ok=True)
    proxy, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
    fd = child.fileno()
    p = subprocess.Popen(["sh", "-c", f'exec "$0" __signer --fd 3 --member 0 -c "$1" 3<&{fd}',
                          tlsmint, conf], pass_fds=(fd,), env=env)
    child.close()
    proxy.settimeout(20)
    hello = proxy.recv(65536)
    open(f"{out}/frame_proxy/hello", "wb").write(hello)
    frames = {
        "req-one": hdr(REQ, 1) + req(1, 1, bytes(range(32))),
        "req-batch": hdr(REQ, 3) + req(2, 1, b"\x11" * 32) + req(3, 2, b"\x22" * 48)
        + req((1 << 63) | 4, 1, b"\x33" * 32),
        "req-bad-alg": hdr(REQ, 1) + req(5, 9, b"\x44" * 32),
        "req-bad-len": hdr(REQ, 1) + req(6, 1, b"\x55" * 20),
    }
    n = 0
    for name, f in frames.items():
        open(f"{out}/frame_signer/{name}", "wb").write(f)
        proxy.send(f)
        want = struct.unpack_from("=IHH", f)[2]
        got = 0
        while got < want:
            r = proxy.recv(65536)
            got += struct.unpack_from("=IHH", r)[2]
            open(f"{out}/frame_proxy/resp-{n}", "wb").write(r)
            n += 1
    ctrl = hdr(CTRL, 1) + struct.pack("=II", 1, 0)
    open(f"{out}/frame_signer/ctrl", "wb").write(ctrl)
    proxy.send(ctrl)
    proxy.send(hdr(REQ, 1) + req(7, 1, b"\x66" * 32))  # signs after the reset too
    open(f"{out}/frame_proxy/resp-{n}", "wb").write(proxy.recv(65536))
    proxy.close()
    p.wait(timeout=20)
    print(f"capture_frames: hello {len(hello)} bytes, {n + 1} answers")


if __name__ == "__main__":
    main()
