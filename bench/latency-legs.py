#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
#
# latency-legs.py - where a TLS proxy's handshake time goes, from a loopback capture of a
# benchmark run (bench/run-bench.sh's namespace: the client dials ORIGIN_PORT, nat REDIRECT
# sends it to PROXY_PORT, the proxy dials ORIGIN_PORT itself).
#
# It splits each TCP connection into flights (consecutive payload segments of one side) and
# prints, for the client leg (client <-> proxy) and the upstream leg (proxy <-> origin), the gap
# before each flight: who was being waited for, p50/p90/p99/max, and the mean gaps of the
# slowest 1 % of connections, so a tail can be put on the client, the proxy or the origin.
#
# usage: latency-legs.py CAPTURE.pcap [PROXY_PORT] [ORIGIN_PORT]   (default 18080 9443)
# Capture (in the benchmark's namespace, while a latency run goes on):
#   ip netns exec tlsmint-bench-PID dumpcap -q -i lo -s 128 -a duration:6 -w cap.pcap
import subprocess
import sys


def read(path):
    out = subprocess.run(
        ["tshark", "-r", path, "-T", "fields", "-E", "separator=,", "-e", "frame.time_relative",
         "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "tcp.flags.syn", "-e", "tcp.flags.ack",
         "-e", "tcp.len"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        f = line.split(",")
        if len(f) == 6 and f[1]:
            yield float(f[0]), int(f[1]), int(f[2]), f[3] == "1", f[4] == "1", int(f[5] or 0)


def split(rows, pport, oport):
    """Connections of each leg, in SYN order. A client port can be reused within the capture,
    so each SYN starts a new record. Replies from the proxy carry ORIGIN_PORT as source (the
    redirect is undone), so a reply goes to the newer record of that port on either leg."""
    cur = {"A": {}, "B": {}}
    legs = {"A": [], "B": []}
    for t, sp, dp, syn, ack, ln in rows:
        if syn and not ack:
            leg = "A" if dp == pport else "B" if dp == oport else None
            if leg:
                rec = {"syn": t, "ev": []}
                cur[leg][sp] = rec
                legs[leg].append(rec)
            continue
        if dp == pport and sp in cur["A"]:
            cur["A"][sp]["ev"].append((t, "c", ln))
        elif dp == oport and sp in cur["B"]:
            cur["B"][sp]["ev"].append((t, "c", ln))
        elif sp == oport:
            a, b = cur["A"].get(dp), cur["B"].get(dp)
            rec = a if a and (not b or a["syn"] > b["syn"]) else b
            if rec:
                rec["ev"].append((t, "s", ln))
    return legs


def flights(rec):
    seq = []
    for t, who, ln in rec["ev"]:
        if ln > 0:
            if not seq or seq[-1][0] != who:
                seq.append([who, t, t])
            else:
                seq[-1][2] = t
    return seq


def pct(v, p):
    return v[min(len(v) - 1, int(len(v) * p))]


def show(title, names, recs):
    gaps = []
    for r in recs:
        f = flights(r)
        if len(f) < len(names):
            continue
        g = [(f[0][1] - r["syn"]) * 1e3] + [(f[i][1] - f[i - 1][2]) * 1e3 for i in range(1, len(names))]
        gaps.append(((f[len(names) - 1][2] - r["syn"]) * 1e3, g))
    print(f"{title}: {len(gaps)} connections with {len(names)} flights")
    if not gaps:
        return
    print(f"  {'gap before the flight (waiting for)':44} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}  ms")
    for i, n in enumerate(names):
        v = sorted(g[1][i] for g in gaps)
        print(f"  {n:44} {pct(v, .5):7.2f} {pct(v, .9):7.2f} {pct(v, .99):7.2f} {v[-1]:7.2f}")
    tot = sorted(g[0] for g in gaps)
    slow = sorted(gaps, key=lambda g: -g[0])[:max(1, len(gaps) // 100)]
    print(f"  SYN to the end of the last flight: p50 {pct(tot, .5):.2f}, p99 {pct(tot, .99):.2f} ms")
    print(f"  the slowest 1 % ({len(slow)}), mean gap before each flight: " +
          ", ".join(f"{sum(s[1][i] for s in slow) / len(slow):.1f}" for i in range(len(names))) + " ms")


def main():
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        head = open(__file__).read().split("\nimport subprocess")[0].splitlines()[3:]
        print("\n".join(l[2:] if l.startswith("# ") else l.lstrip("#") for l in head))
        return 0 if len(sys.argv) >= 2 else 2
    pport = int(sys.argv[2]) if len(sys.argv) > 2 else 18080
    oport = int(sys.argv[3]) if len(sys.argv) > 3 else 9443
    legs = split(read(sys.argv[1]), pport, oport)
    show("client leg (client <-> proxy)",
         ["SYN -> ClientHello (client)", "ClientHello -> ServerHello (proxy: upstream, leaf)",
          "ServerHello -> Finished + request (client)", "-> tickets and response (proxy)"], legs["A"])
    show("upstream leg (proxy <-> origin)",
         ["SYN -> ClientHello (proxy)", "ClientHello -> ServerHello (origin)",
          "ServerHello -> Finished (proxy: verify)", "Finished -> tickets (origin)"], legs["B"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
