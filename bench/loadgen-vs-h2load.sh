#!/bin/bash
# SPDX-License-Identifier: MIT
#
# loadgen-vs-h2load.sh - is tlsmint-bench the limit? It and h2load (nghttp2-client, --h1) load
# the same nginx origin (bench/make-origin.sh, 1 worker on CPU 1) from CPU 0, one thread each,
# interleaved (tlsmint-bench, h2load, tlsmint-bench, ...), for:
#   - bulk: 1 connection downloading /big.bin (64 MiB) again and again: MB/s;
#   - keep-alive: 16 connections, GET /index.html one after another on each: requests/s;
# with the TLS 1.3 suite each negotiated (nginx follows the client's order) and the origin's CPU
# per MB or per request, since the origin is the side that saturates on this machine;
# and, for new-connection handshakes (h2load has no such mode), tlsmint-bench's own CPU next to
# the origin's, so that a reader can see which side is saturated.
# Writes bench/results/loadgen.md (medians and per-run values).
#
# usage: bench/loadgen-vs-h2load.sh [--runs N] [--seconds S] [BUILD_DIR]   (default 3, 5,
#        build/release). Needs root (a network namespace), nginx, h2load, taskset.
#        LG_ARGS="--ciphersuites ..." adds options to tlsmint-bench's bulk and keep-alive runs.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

here="$(cd "$(dirname "$0")" && pwd)"
runs=3
secs=5
build_arg="$here/../build/release"
while [ $# -gt 0 ]; do
    case "$1" in
    --runs) runs=$2; shift ;;
    --seconds) secs=$2; shift ;;
    -h | --help) bench_help 3 17; exit 0 ;;
    -*) bench_bad_option "$1" ;;
    *) build_arg=$1 ;;
    esac
    shift
done
die() { echo "loadgen-vs-h2load: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (network namespace)"
build="$(cd "$build_arg" && pwd)"
LG="$build/bench/loadgen/tlsmint-bench"
[ -x "$LG" ] || die "$LG missing (ninja -C $build_arg)"
command -v h2load >/dev/null || die "h2load not found: apt-get install -y nghttp2-client"
command -v nginx >/dev/null || die "nginx not found"

work="$(mktemp -d "${TMPDIR:-/tmp}/tlsmint-lgcmp.XXXXXX")"
NS="tlsmint-lgcmp-$$"
NGX=""
cleanup() {
    local rc=$?
    [ -n "$NGX" ] && kill "$NGX" 2>/dev/null
    ip netns del "$NS" 2>/dev/null || true
    [ $rc = 0 ] && rm -rf "$work" || echo "loadgen-vs-h2load: failed (rc $rc); kept $work" >&2
    exit $rc
}
trap cleanup EXIT INT TERM
IN() { ip netns exec "$NS" "$@"; }

PORT=9443
chmod 755 "$work" # nginx's workers run as nobody
"$here/make-origin.sh" "$work/origin" 2 "$PORT" 1 >"$work/make-origin.log"
chmod -R a+rX "$work/origin"
ip netns add "$NS"
IN ip link set lo up
# not through IN (a function: $! would be its subshell, not nginx's master)
ip netns exec "$NS" taskset -c 1 nginx -c "$work/origin/nginx.conf" \
    -e "$work/origin/logs/error.log" >"$work/nginx.out" 2>&1 &
NGX=$!
for _ in $(seq 1 100); do IN ss -ltn | grep -q ":$PORT " && break; sleep 0.1; done
IN ss -ltn | grep -q ":$PORT " || die "origin did not start"
CA="$work/origin/root.pem"
URL="https://h1.bench.test:$PORT"

raw="$work/raw.csv"
echo "run,tool,scenario,value,unit,tool_cpu_s,origin_cpu_s,cipher,nginx_sys" >"$raw"
# nginx's system calls during a keep-alive run (perf's syscall tracepoints on the worker), so a
# change of nginx's cost per request can be told from a change in what the tool makes it do
SYS_EV=syscalls:sys_enter_read,syscalls:sys_enter_write,syscalls:sys_enter_epoll_wait
WORKER=$(pgrep -P "$NGX" | head -1)
sys_on=0
command -v perf >/dev/null && perf stat -e "$SYS_EV" -p "$WORKER" -- true >/dev/null 2>&1 &&
    sys_on=1
sys_start() { # sys_start SCENARIO: perf stat on the worker until sys_stop
    SYS_PID=""
    [ "$1" = keepalive ] && [ $sys_on = 1 ] || return 0
    perf stat -x, -e "$SYS_EV" -p "$WORKER" -o "$work/sys.csv" &
    SYS_PID=$!
    sleep 0.2
}
sys_stop() { # sys_stop UNITS: "read=N;write=N;epoll_wait=N" per unit, or "" (no perf)
    [ -n "$SYS_PID" ] || { echo ""; return 0; }
    kill -INT "$SYS_PID"; wait "$SYS_PID" 2>/dev/null || true
    python3 - "$work/sys.csv" "$1" <<'PY'
import sys
n = float(sys.argv[2]); out = []
for l in open(sys.argv[1]):
    p = l.strip().split(",")
    if len(p) > 2 and p[0].replace(".", "").isdigit() and n > 0:
        out.append(f"{p[2].split('sys_enter_')[-1]}={float(p[0]) / n:.2f}")
print(";".join(out))
PY
}
origin_cpu() { # nginx master + workers, CPU seconds
    python3 - "$NGX" <<'PY'
import os, sys
hz = os.sysconf("SC_CLK_TCK")
def cpu(p):
    try:
        f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / hz
    except OSError:
        return 0.0
kids = [l.split()[0] for l in os.popen(f"pgrep -P {sys.argv[1]}")]
print(sum(cpu(p) for p in [sys.argv[1]] + kids))
PY
}
lg_json() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d[sys.argv[2]])' "$@"; }
h2() { # h2 SCENARIO RUN ARGS...: one h2load run, one raw line
    local sc=$1 r=$2 o0 t0 out
    shift 2
    o0=$(origin_cpu)
    sys_start "$sc"
    out=$(IN taskset -c 0 /usr/bin/time -f 'CPU %U %S' h2load --h1 -t 1 -D "$secs" \
        --connect-to "127.0.0.1:$PORT" "$@" 2>&1)
    local cpu reqs mbs
    cpu=$(echo "$out" | awk '/^CPU/ {print $2 + $3}')
    reqs=$(echo "$out" | sed -n 's/^finished in [0-9.]*s, \([0-9.]*\) req\/s.*/\1/p')
    mbs=$(echo "$out" | sed -n 's/^finished in [0-9.]*s, [0-9.]* req\/s, \([0-9.]*\)\([KMG]\)B\/s.*/\1 \2/p' |
        awk '{m = $2 == "G" ? 1024 : $2 == "K" ? 1 / 1024 : 1; print $1 * m * 1.048576}')
    [ -n "$reqs" ] || die "h2load failed: $out"
    local sys
    sys=$(sys_stop "$(python3 -c "print($reqs * $secs)")")
    local cipher
    cipher=$(echo "$out" | sed -n 's/^Cipher: *\(.*\)/\1/p' | head -1)
    if [ "$sc" = bulk ]; then
        echo "$r,h2load,$sc,$mbs,MB/s,$cpu,$(python3 -c "print($(origin_cpu) - $o0)"),${cipher:-?}," >>"$raw"
    else
        echo "$r,h2load,$sc,$reqs,req/s,$cpu,$(python3 -c "print($(origin_cpu) - $o0)"),${cipher:-?},$sys" >>"$raw"
    fi
}
lg() { # lg SCENARIO RUN ARGS...: one tlsmint-bench run, one raw line
    local sc=$1 r=$2 o0
    shift 2
    o0=$(origin_cpu)
    sys_start "$sc"
    IN taskset -c 0 "$LG" "$@" --connect "127.0.0.1:$PORT" --host h1.bench.test --cafile "$CA" \
        --threads 1 --duration "$secs" --json -q >"$work/lg.json"
    local v unit=req/s
    if [ "$sc" = bulk ]; then v=$(lg_json "$work/lg.json" mb_per_s); unit=MB/s
    else v=$(lg_json "$work/lg.json" conn_per_s); fi
    local sys
    sys=$(sys_stop "$(python3 -c "print($v * $secs)")")
    [ "$(lg_json "$work/lg.json" failed)" = 0 ] || die "tlsmint-bench $sc: failures ($(cat "$work/lg.json"))"
    local cipher
    cipher=$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))["cipher"]; print("/".join(k for k, v in c.items() if v))' "$work/lg.json")
    echo "$r,tlsmint-bench,$sc,$v,$unit,$(lg_json "$work/lg.json" loadgen_cpu_s),$(python3 -c "print($(origin_cpu) - $o0)"),$cipher,$sys" >>"$raw"
}

for r in $(seq 1 "$runs"); do
    echo "== run $r/$runs" >&2
    lg bulk "$r" bulk --conns 1 --path /big.bin ${LG_ARGS:-}
    h2 bulk "$r" -c 1 "$URL/big.bin"
    lg keepalive "$r" keepalive --conns 16 --path /index.html ${LG_ARGS:-}
    h2 keepalive "$r" -c 16 "$URL/index.html"
    lg handshake "$r" handshake --concurrency 16 --path /index.html
done

mkdir -p "$here/results"
python3 - "$raw" "$here/results/loadgen.md" "$secs" "$runs" <<'EOF'
import csv, statistics as st, sys, time, os, platform
rows = list(csv.DictReader(open(sys.argv[1])))
out, secs, runs = sys.argv[2], sys.argv[3], sys.argv[4]
def vals(tool, sc, f="value"):
    return [float(r[f]) for r in rows if r["tool"] == tool and r["scenario"] == sc]
def med(tool, sc, f="value"):
    v = vals(tool, sc, f)
    return st.median(v) if v else None
ratios = {}
for sc in ("bulk", "keepalive"):
    a, b = vals("tlsmint-bench", sc), vals("h2load", sc)
    ratios[sc] = [x / y for x, y in zip(a, b) if y]
model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
L = ["# tlsmint-bench against h2load", "",
     f"Generated by `bench/loadgen-vs-h2load.sh` on {time.strftime('%Y-%m-%d %H:%M %Z')}: "
     f"{os.cpu_count()} CPUs ({model}), {platform.system()} {platform.release()}. The same nginx "
     "origin (1 worker, CPU 1, TLS 1.3 P-256), each tool on CPU 0 with one thread, "
     f"{secs} s per run, {runs} interleaved runs; h2load `--h1`.", "",
     "| scenario | tlsmint-bench | h2load | ratio (median of per-run ratios) | target |",
     "|---|---:|---:|---:|---|",
     f"| bulk, 1 connection, MB/s | {med('tlsmint-bench','bulk'):,.0f} | {med('h2load','bulk'):,.0f} | "
     f"{st.median(ratios['bulk']):.2f} | ≥ 0.95 |",
     f"| keep-alive, 16 connections, requests/s | {med('tlsmint-bench','keepalive'):,.0f} | "
     f"{med('h2load','keepalive'):,.0f} | {st.median(ratios['keepalive']):.2f} | ≥ 0.95 |", "",
     "CPU of each side (s, medians of the runs; the load generator on CPU 0, nginx on CPU 1, "
     f"{secs} s per run, so {secs} s is one whole core):", "",
     "| scenario | tool | cipher | tool CPU s | origin CPU s | origin CPU per unit |", "|---|---|---|---:|---:|---:|"]
def per_unit(tool, sc):
    v = [float(r["origin_cpu_s"]) / (float(r["value"]) * float(secs)) for r in rows
         if r["tool"] == tool and r["scenario"] == sc and float(r["value"]) > 0]
    if not v:
        return "—"
    m = st.median(v)
    return f"{m * 1e3:.2f} s/GB" if sc == "bulk" else f"{m * 1e6:.1f} µs/req"
for sc in ("bulk", "keepalive", "handshake"):
    for tool in ("tlsmint-bench", "h2load"):
        if vals(tool, sc):
            ci = sorted({r["cipher"] for r in rows if r["tool"] == tool and r["scenario"] == sc})
            L.append(f"| {sc} | {tool} | {', '.join(ci)} | {med(tool, sc, 'tool_cpu_s'):.2f} | {med(tool, sc, 'origin_cpu_s'):.2f} | {per_unit(tool, sc)} |")
ka = [r for r in rows if r["scenario"] == "keepalive"]
if any(r["nginx_sys"] for r in ka):
    L += ["", "Keep-alive, run by run: what nginx did per request (its CPU, and its system calls "
          "counted by perf's tracepoints on the worker):", "",
          "| run | tool | requests/s | nginx µs/req | nginx system calls per request |",
          "|---:|---|---:|---:|---|"]
    for r in ka:
        us = float(r["origin_cpu_s"]) / (float(r["value"]) * float(secs)) * 1e6
        L.append(f"| {r['run']} | {r['tool']} | {float(r['value']):,.0f} | {us:.1f} | "
                 f"{r['nginx_sys'].replace(';', ', ')} |")
hs = med("tlsmint-bench", "handshake")
L += ["", f"New-connection handshakes (tlsmint-bench only: h2load has no such mode): {hs:,.0f} conn/s.",
      "", "Raw rows:", "", "```"] + [",".join(r.values()) for r in rows] + ["```", ""]
open(out, "w").write("\n".join(L))
print("\n".join(L))
EOF
