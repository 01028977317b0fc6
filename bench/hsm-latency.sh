#!/bin/bash
# SPDX-License-Identifier: MIT
#
# hsm-latency.sh - what a slow HSM does to interception of new hosts: tests/faultp11 in front
# of SoftHSM adds L ms to every C_Sign; for each L, a fresh proxy (empty cache, the default
# [hsm] settings unless --set says otherwise) gets N never-seen hosts through its explicit
# listener from tlsmint-bench at a fixed concurrency (closed loop), so every connection needs
# one HSM signature.
#
# usage: bench/hsm-latency.sh [--hosts N] [--concurrency C] [--latencies "0 2 10 20 50"]
#                             [--runs R] [--set SECTION.KEY=VALUE]... [--name NAME] [--out DIR]
#                             [--keep]
#   --hosts        new hosts per latency and run (default 2000)
#   --runs         runs per latency, interleaved (run 1 of every latency, then run 2, ...), so
#                  drift of a shared machine hits all latencies alike; medians are reported,
#                  "connections ok" is the worst run (default 3)
#   --concurrency  connections in flight (default 64)
#   --latencies    faultp11 latency_ms values, in order (default "0 2 10 20 50"); the first
#                  one is the baseline the conn/s ratios are taken against
#   --set          a config override, e.g. --set hsm.workers=2 (repeatable)
#   --name         output file name stem (default hsm-latency)
#   --out          output directory (default bench/results)
#   --keep         keep the temporary directory (proxy logs, raw JSON, worker samples)
# Outputs in DIR: NAME.md (table + how it was measured), NAME.csv, NAME.png (gnuplot: conn/s,
# p99 handshake added to the baseline's, HSM workers in use, against the latency).
# "workers in use" is `tlsmint ctl hsm`'s session count, sampled every 200 ms during the load:
# the mean and the largest sample.
# Needs: a release build (meson setup build/release --buildtype=release -Dtests=false; ninja
# -C build/release), nginx, openssl, softhsm2, python3, a C compiler, gnuplot.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CMDLINE="bench/hsm-latency.sh${*:+ $*}"
HOSTS=2000
CONC=64
LATS="0 2 10 20 50"
RUNS=3
SETS=()
NAME=hsm-latency
OUT=$ROOT/bench/results
KEEP=""
BUILD=${BUILD_DIR:-$ROOT/build/release}
TLSMINT=$BUILD/cli/tlsmint
BENCH=$BUILD/bench/loadgen/tlsmint-bench
SOFTHSM=/usr/lib/softhsm/libsofthsm2.so

die() {
    echo "hsm-latency: $*" >&2
    exit 2
}
while [ $# -gt 0 ]; do
    case "$1" in
    --hosts) HOSTS=${2:?}; shift 2 ;;
    --concurrency) CONC=${2:?}; shift 2 ;;
    --latencies) LATS=${2:?}; shift 2 ;;
    --runs) RUNS=${2:?}; shift 2 ;;
    --set) SETS+=("${2:?}"); shift 2 ;;
    --name) NAME=${2:?}; shift 2 ;;
    --out) OUT=${2:?}; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h | --help) sed -n '/^# usage:/,/^# Needs:/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (--help)" ;;
    esac
done
[[ $HOSTS =~ ^[0-9]+$ ]] && [ "$HOSTS" -ge 1 ] || die "--hosts must be a positive number"
[[ $CONC =~ ^[0-9]+$ ]] && [ "$CONC" -ge 1 ] || die "--concurrency must be a positive number"
[[ $RUNS =~ ^[0-9]+$ ]] && [ "$RUNS" -ge 1 ] || die "--runs must be a positive number"
for l in $LATS; do [[ $l =~ ^[0-9]+$ ]] || die "--latencies: '$l' is not a number of ms"; done
for s in "${SETS[@]}"; do [[ $s =~ ^[a-z_.]+\.[a-z_]+=.*$ ]] || die "--set '$s' is not SECTION.KEY=VALUE"; done
[ -x "$TLSMINT" ] && [ -x "$BENCH" ] ||
    die "no release build in $BUILD: meson setup build/release --buildtype=release -Dtests=false && ninja -C build/release"
for t in nginx openssl python3 cc gnuplot; do command -v "$t" >/dev/null || die "$t not found"; done

WORK=$(mktemp -d /tmp/tlsmint-hsmlat-XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/run" "$OUT"
OUT=$(cd "$OUT" && pwd)
PIDS=()
SAMPLER=""
cleanup() {
    set +e
    [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    sleep 0.3
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    if [ -n "$KEEP" ]; then echo "hsm-latency: kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$TLSMINT" init --dir "$WORK/state" >/dev/null || die "tlsmint init failed"
export SOFTHSM2_CONF="$WORK/state/hsm/softhsm2.conf"
CA="$WORK/state/ca/forward-trust.pem"
OPORT=$(free_port)
"$ROOT/bench/make-origin.sh" "$WORK/origin" "$HOSTS" "$OPORT" >/dev/null
nginx -c "$WORK/origin/nginx.conf" -e "$WORK/origin/logs/error.log" &
PIDS+=($!)
wait_port "$OPORT"
FAULTP11="$WORK/libfaultp11.so"
build_faultp11 "$FAULTP11" || die "cannot build tests/faultp11"
CTL="$WORK/fault.ctl"

echo "hsm-latency: $HOSTS new hosts per latency at concurrency $CONC, latencies: $LATS ms," \
    "$RUNS runs ${SETS[*]:+(overrides: ${SETS[*]})}"
: >"$WORK/rows.txt"
for R in $(seq 1 "$RUNS"); do
for LAT in $LATS; do
    L="$LAT-r$R"
    echo "latency_ms=$LAT" >"$CTL"
    CONF="$WORK/l$L.conf"
    cp "$WORK/state/tlsmint.conf" "$CONF"
    PPORT=$(free_port)
    set_conf "$CONF" listen explicit "127.0.0.1:$PPORT"
    set_conf "$CONF" listen transparent ""
    set_conf "$CONF" upstream ca_file "$WORK/origin/root.pem"
    set_conf "$CONF" log access "$WORK/l$L.access"
    set_conf "$CONF" admin socket "$WORK/run/l$L.sock"
    set_conf "$CONF" admin metrics ""
    printf "\n[hsm]\nmodule = %s\nenv = FAULTP11_MODULE=%s\nenv = FAULTP11_CONTROL=%s\n" \
        "$FAULTP11" "$SOFTHSM" "$CTL" >>"$CONF"
    for s in "${SETS[@]}"; do
        k=${s%%=*}
        set_conf "$CONF" "${k%.*}" "${k##*.}" "${s#*=}"
    done
    : >"$WORK/l$L.log"
    "$TLSMINT" -c "$CONF" run >"$WORK/l$L.log" 2>&1 &
    PROXY=$!
    PIDS+=($PROXY)
    for _ in $(seq 1 200); do
        grep -q "tlsmint running" "$WORK/l$L.log" && break
        kill -0 "$PROXY" 2>/dev/null || break
        sleep 0.05
    done
    grep -q "tlsmint running" "$WORK/l$L.log" || { cat "$WORK/l$L.log" >&2; die "tlsmint did not start"; }
    (
        set +e
        while :; do
            "$TLSMINT" -c "$CONF" ctl hsm 2>/dev/null |
                sed -n -e 's/^  workers *\([0-9]*\) sessions.*/\1/p' \
                    -e 's/^  signer .*pid [0-9]*, \([0-9]*\) sessions.*/\1/p' | head -1
            sleep 0.2
        done
    ) >"$WORK/l$L.workers" 2>/dev/null &
    SAMPLER=$!
    "$BENCH" mint --proxy "127.0.0.1:$PPORT" --connect "127.0.0.1:$OPORT" --connect-host 127.0.0.1 \
        --cafile "$CA" --host-pattern 'h%d.bench.test' --count "$HOSTS" --concurrency "$CONC" \
        --threads 1 --path /index.html -q --json --pid "$PROXY" >"$WORK/l$L.json" 2>"$WORK/l$L.err" ||
        die "tlsmint-bench failed: $(cat "$WORK/l$L.err")"
    kill "$SAMPLER" 2>/dev/null || true
    wait "$SAMPLER" 2>/dev/null || true
    SAMPLER=""
    "$TLSMINT" -c "$CONF" ctl metrics >"$WORK/l$L.metrics" 2>&1 || true
    "$TLSMINT" -c "$CONF" ctl hsm >"$WORK/l$L.hsm" 2>&1 || true
    kill -TERM "$PROXY"
    wait "$PROXY" || true
    echo "$LAT $WORK/l$L.json $WORK/l$L.workers $WORK/l$L.metrics" >>"$WORK/rows.txt"
    python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print("  run %s, %s ms: %d/%d ok, %.1f conn/s, handshake p99 %.1f ms" % (sys.argv[3], sys.argv[2], j["ok"], j["attempted"], j["conn_per_s"], j["latency_ms"]["handshake"]["p99"]))' \
        "$WORK/l$L.json" "$LAT" "$R"
done
done

python3 - "$WORK/rows.txt" "$OUT" "$NAME" "$HOSTS" "$CONC" "$CMDLINE" "${SETS[*]:-}" "$RUNS" <<'EOF'
import json, re, statistics, sys
rows_txt, out, name, hosts, conc, cmdline, sets, runs = sys.argv[1:]
by = {}
order = []
for line in open(rows_txt):
    lat, js, wk, met = line.split()
    j = json.load(open(js))
    w = [int(x) for x in open(wk).read().split() if x.isdigit()]
    m = open(met).read()
    def metric(pat):
        v = re.findall(pat + r" (\d+)", m)
        return sum(int(x) for x in v) if v else None
    lat = int(lat)
    if lat not in by:
        by[lat] = []
        order.append(lat)
    by[lat].append(dict(ok=j["ok"], att=j["attempted"], cps=j["conn_per_s"],
                        p99=j["latency_ms"]["handshake"]["p99"], p50=j["latency_ms"]["handshake"]["p50"],
                        wmean=sum(w) / len(w) if w else float("nan"), wmax=max(w) if w else 0,
                        overload=metric(r'tlsmint_hsm_refused_total\{reason="overload"\}'),
                        timeout=metric(r'tlsmint_hsm_signatures_total\{member="[^"]*",result="timeout"\}')))
med = statistics.median
rows = []
for lat in order:
    rs = by[lat]
    worst = min(rs, key=lambda r: r["ok"] / max(r["att"], 1))
    tot = lambda k: None if any(r[k] is None for r in rs) else sum(r[k] for r in rs)
    rows.append(dict(lat=lat, ok=worst["ok"], att=worst["att"], cps=med([r["cps"] for r in rs]),
                     cps_all=[r["cps"] for r in rs], p50=med([r["p50"] for r in rs]),
                     p99=med([r["p99"] for r in rs]), wmean=med([r["wmean"] for r in rs]),
                     wmax=max(r["wmax"] for r in rs), timeout=tot("timeout"), overload=tot("overload")))
base = rows[0]
with open("%s/%s.csv" % (out, name), "w") as f:
    f.write("latency_ms,ok_worst_run,attempted,ok_pct,conn_per_s_median,ratio_to_first,hs_p50_ms,"
            "hs_p99_ms,hs_p99_added_ms,workers_mean,workers_max,hsm_timeouts,hsm_overload\n")
    for r in rows:
        f.write("%d,%d,%d,%.2f,%.1f,%.3f,%.2f,%.2f,%.2f,%.1f,%d,%s,%s\n" % (
            r["lat"], r["ok"], r["att"], 100.0 * r["ok"] / max(r["att"], 1), r["cps"],
            r["cps"] / base["cps"] if base["cps"] else 0, r["p50"], r["p99"], r["p99"] - base["p99"],
            r["wmean"], r["wmax"], r["timeout"] if r["timeout"] is not None else "",
            r["overload"] if r["overload"] is not None else ""))
L = ["# HSM latency sweep%s\n" % ("" if not sets else " (" + sets + ")"),
     "tests/faultp11 in front of SoftHSM adds the latency to every C_Sign. Per latency and run: a "
     "fresh proxy (empty cache), %s never-seen hosts through the explicit listener, tlsmint-bench "
     "`mint` at concurrency %s (closed loop, 1 thread), every connection one HSM signature. %s runs "
     "per latency, interleaved; conn/s, handshake p50/p99 and mean workers are medians over the runs, "
     "'connections ok' is the worst run, timeouts and overload refusals are summed. "
     "Config: what `tlsmint init` writes%s. Workers in use: `tlsmint ctl hsm` sampled every "
     "200 ms during the load (mean / largest sample). p99 added: handshake p99 minus the "
     "%d ms row's. Machine: 2 shared cores, other jobs running: read the ratios, not the "
     "absolute figures.\n" % (hosts, conc, runs, "" if not sets else ", then " + sets, base["lat"]),
     "| HSM latency | connections ok (worst run) | conn/s (median; runs) | vs %d ms | handshake p50 / p99 ms | p99 added ms | workers in use (mean / max) | HSM timeouts | refused: overload |" % base["lat"],
     "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
for r in rows:
    L.append("| %d ms | %d / %d (%.1f %%) | %.0f (%s) | %.2f | %.1f / %.1f | %.1f | %.1f / %d | %s | %s |" % (
        r["lat"], r["ok"], r["att"], 100.0 * r["ok"] / max(r["att"], 1), r["cps"],
        ", ".join("%.0f" % x for x in r["cps_all"]),
        r["cps"] / base["cps"] if base["cps"] else 0, r["p50"], r["p99"], r["p99"] - base["p99"],
        r["wmean"], r["wmax"], "-" if r["timeout"] is None else r["timeout"],
        "-" if r["overload"] is None else r["overload"]))
L.append("\n![sweep](%s.png)\n" % name)
L.append("Command line:\n\n```\n%s\n```\n" % cmdline)
open("%s/%s.md" % (out, name), "w").write("\n".join(L))
print("\n".join(L[2:2 + 2 + len(rows)]))
EOF

gnuplot <<EOF
set terminal pngcairo size 900,900 font 'DejaVu Sans,11'
set output '$OUT/$NAME.png'
set datafile separator ','
set key off
set grid
set multiplot layout 3,1 title "tlsmint: $HOSTS new hosts at concurrency $CONC vs HSM latency${SETS[*]:+ (${SETS[*]})}"
set xrange [-1:*]
set ylabel 'conn/s'
set yrange [0:*]
plot '$OUT/$NAME.csv' using 1:5 skip 1 with linespoints lw 2 pt 7 lc rgb '#1f3fbf'
set ylabel 'p99 handshake added (ms)'
set yrange [*:*]
plot '$OUT/$NAME.csv' using 1:9 skip 1 with linespoints lw 2 pt 7 lc rgb '#d62728'
set ylabel 'HSM workers in use'
set xlabel 'HSM latency per signature (ms)'
set yrange [0:*]
set key top left
plot '$OUT/$NAME.csv' using 1:10 skip 1 with linespoints lw 2 pt 7 lc rgb '#2ca02c' title 'mean', \
     '' using 1:11 skip 1 with linespoints lw 1 pt 6 dt 2 lc rgb '#2ca02c' title 'max'
unset multiplot
EOF
echo "hsm-latency: wrote $OUT/$NAME.{md,csv,png}"
