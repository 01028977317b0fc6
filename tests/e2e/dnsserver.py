#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""dnsserver.py - a UDP DNS server for the resolver tests, with four behaviours chosen per name.

  dnsserver.py --listen 127.0.0.2:53 --counts FILE RULE...

RULE is PATTERN=BEHAVIOUR[:ADDR,ADDR...], PATTERN a name or '*.suffix', first match wins;
a name no rule matches gets NXDOMAIN:
  answer:ADDRS  A records (AAAA queries: no records, NOERROR)
  slow:ADDRS    the same, 1.5 s late
  nx            NXDOMAIN
  silent        no answer at all
Every query counts: FILE is rewritten (atomically, within 20 ms of a query) as JSON
{"total": N, "NAME TYPE": N, ...}, TYPE A or AAAA or the number. Prints "ready" once bound.
Only queries are parsed (header, one question, no compression); answers are built here.
"""
import json
import os
import socket
import struct
import sys
import threading
import time

SLOW_S = 1.5
TTL = 60


def parse_rules(args):
    rules = []
    for a in args:
        pat, _, beh = a.partition("=")
        kind, _, addrs = beh.partition(":")
        if kind not in ("answer", "slow", "nx", "silent"):
            sys.exit("dnsserver.py: bad rule " + a)
        rules.append((pat.lower(), kind, [x for x in addrs.split(",") if x]))
    return rules


def match(rules, name):
    for pat, kind, addrs in rules:
        if pat == name or (pat.startswith("*.") and name.endswith(pat[1:])):
            return kind, addrs
    return "nx", []


def parse_query(pkt):
    """(id, flags, qname, qtype, question bytes) or None for anything that is no plain query."""
    if len(pkt) < 12:
        return None
    qid, flags, qd = struct.unpack("!HHH", pkt[:6])
    if qd < 1 or flags & 0x8000:
        return None
    off, labels = 12, []
    while True:
        if off >= len(pkt):
            return None
        n = pkt[off]
        off += 1
        if n == 0:
            break
        if n > 63 or off + n > len(pkt):
            return None
        labels.append(pkt[off:off + n].decode("ascii", "replace").lower())
        off += n
    if off + 4 > len(pkt):
        return None
    qtype = struct.unpack("!H", pkt[off:off + 2])[0]
    return qid, flags, ".".join(labels), qtype, pkt[12:off + 4]


def answer(qid, flags, question, rcode, qtype, addrs):
    rd = flags & 0x0100
    hdr_flags = 0x8000 | 0x0400 | rd | 0x0080 | rcode  # response, authoritative, RA
    recs = b""
    n = 0
    if rcode == 0 and qtype == 1:
        for a in addrs:
            recs += struct.pack("!HHHIH", 0xC00C, 1, 1, TTL, 4) + socket.inet_aton(a)
            n += 1
    return struct.pack("!HHHHHH", qid, hdr_flags, 1, n, 0, 0) + question + recs


def main():
    argv = sys.argv[1:]
    listen, counts_file = None, None
    while argv and argv[0].startswith("--"):
        opt = argv.pop(0)
        if opt == "--listen":
            listen = argv.pop(0)
        elif opt == "--counts":
            counts_file = argv.pop(0)
        else:
            sys.exit("dnsserver.py: unknown option " + opt)
    if listen is None or counts_file is None:
        sys.exit(__doc__)
    rules = parse_rules(argv)
    host, _, port = listen.rpartition(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, int(port)))
    lock = threading.Lock()
    counts = {"total": 0}

    dirty = threading.Event()

    def save():
        with lock:
            data = json.dumps(counts)
        tmp = counts_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(data)
        os.replace(tmp, counts_file)

    def saver():  # at most 50 writes a second, however many queries come in
        while True:
            dirty.wait()
            dirty.clear()
            save()
            time.sleep(0.02)

    save()
    threading.Thread(target=saver, daemon=True).start()
    print("ready", flush=True)
    while True:
        pkt, peer = s.recvfrom(4096)
        q = parse_query(pkt)
        if q is None:
            continue
        qid, flags, name, qtype, question = q
        tname = {1: "A", 28: "AAAA"}.get(qtype, str(qtype))
        with lock:
            counts["total"] += 1
            key = name + " " + tname
            counts[key] = counts.get(key, 0) + 1
        dirty.set()
        kind, addrs = match(rules, name)
        if kind == "silent":
            continue
        reply = answer(qid, flags, question, 3 if kind == "nx" else 0, qtype, addrs)
        if kind == "slow":
            threading.Timer(SLOW_S, s.sendto, (reply, peer)).start()
        else:
            s.sendto(reply, peer)


if __name__ == "__main__":
    main()
