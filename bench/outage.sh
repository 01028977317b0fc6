#!/bin/bash
# SPDX-License-Identifier: MIT
#
# outage.sh - the HSM outage experiment: steady open-loop load through tlsmint (explicit
# proxy), a chosen share of it on never-seen hosts (cache misses, every one needs an HSM
# signature) and the rest on a few hot hosts (cache hits); the HSM goes away at t1 and comes
# back at t2. Writes a 100 ms timeline, a plot and a summary of what the clients saw.
#
# usage: bench/outage.sh [--mode closed|open]
#                        [--mechanism p11kit|fault-hang|fault-down|fault-error|fault-slow]
#                        [--rate R] [--miss-share S] [--t1 S] [--t2 S] [--duration S] [--out DIR]
#                        [--origin DIR] [--keep]
#   --mode        [hsm] fail_mode of the proxy (default closed)
#   --mechanism   how the HSM goes away (default fault-hang):
#                   p11kit       the HSM is SoftHSM behind `p11-kit server` (a network HSM);
#                                at t1 the server and its p11-kit-remote children get SIGKILL,
#                                at t2 the server is started again on the same socket
#                   fault-hang   tests/faultp11 in front of SoftHSM; t1..t2: every C_Sign hangs
#                   fault-down   ...; t1..t2: no slot, sessions and signatures CKR_DEVICE_REMOVED
#                   fault-error  ...; t1..t2: every C_Sign fails with CKR_DEVICE_ERROR
#                   fault-slow   ...; t1..t2: not an outage but a slow HSM: every C_Sign's
#                                latency ramps from 0 to 50 ms (half-way) and back to 0
#                                (latency_ms, in 5 ms steps); the plot shows the proxy's
#                                signing sessions ([hsm] workers = auto) below
#   --rate        connections started per second, hits + misses (default 100)
#   --miss-share  share of them on never-seen hosts (default 0.5)
#   --t1, --t2    outage start and end, seconds after the load starts (default 5 and 15)
#   --duration    seconds of load, at most 30 (default 25)
#   --out         output directory (default bench/results/outage/MODE-MECHANISM)
#   --origin      reuse this origin directory (bench/make-origin.sh; hosts are added if too
#                 few); default: a fresh one in the temporary directory
#   --keep        keep the temporary directory (proxy log, access log, raw timelines)
#
# Outputs in DIR:
#   timeline.csv  per 100 ms bucket: t_s, attempted, intercepted, bypassed, refused, errors,
#                 p50_ms, p99_ms, hsm_state, then the same split by stream (miss_*, hit_*) and
#                 the proxy's largest hsm_wait_ms of connections ending in the bucket
#   plot.png, plot.svg   gnuplot: stacked outcomes per bucket, handshake p99 (right axis),
#                 the outage window shaded, the HSM member state below
#   summary.md    time to detect, time to recover, refused / bypassed / lost counts, the
#                 longest HSM wait against [hsm] sign_timeout_ms, the exact command line
#   proxy-events.log  the proxy's warnings and errors (without the per-connection lines),
#   hsm-final.txt     `tlsmint ctl hsm` after the run
#
# How: `tlsmint init` in a temporary directory, an nginx origin with enough distinct host
# certificates (bench/make-origin.sh), tlsmint from build/release, and two tlsmint-bench
# processes in open-loop rate mode (one walks never-seen hosts, one cycles over 4 hot hosts
# that were fetched once before the load starts); their timelines are merged per bucket.
# `tlsmint -c CONF ctl hsm` is sampled every 100 ms for the member state.
# Needs: a release build (meson setup build/release --buildtype=release -Dtests=false;
# ninja -C build/release), nginx, openssl, softhsm2, p11-kit, python3, a C compiler, gnuplot
# (installed with apt-get when missing and running as root).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CMDLINE="bench/outage.sh${*:+ $*}"
MODE=closed
MECH=fault-hang
RATE=100
SHARE=0.5
T1=5
T2=15
DUR=25
OUT=""
ORIGIN=""
KEEP=""
HOT=4
BUILD=${BUILD_DIR:-$ROOT/build/release}
TLSMINT=$BUILD/cli/tlsmint
BENCH=$BUILD/bench/loadgen/tlsmint-bench
SOFTHSM=/usr/lib/softhsm/libsofthsm2.so
P11CLIENT=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so

die() {
    echo "outage: $*" >&2
    exit 2
}
usage() {
    sed -n '/^# usage:/,/^#   --keep/p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-2}"
}
isnum() { [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]]; }

while [ $# -gt 0 ]; do
    case "$1" in
    --mode) MODE=${2:?}; shift 2 ;;
    --mechanism) MECH=${2:?}; shift 2 ;;
    --rate) RATE=${2:?}; shift 2 ;;
    --miss-share) SHARE=${2:?}; shift 2 ;;
    --t1) T1=${2:?}; shift 2 ;;
    --t2) T2=${2:?}; shift 2 ;;
    --duration) DUR=${2:?}; shift 2 ;;
    --out) OUT=${2:?}; shift 2 ;;
    --origin) ORIGIN=${2:?}; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h | --help) usage 0 ;;
    *) echo "outage: unknown argument '$1'" >&2; usage 2 ;;
    esac
done
case "$MODE" in closed | open) ;; *) die "--mode must be closed or open" ;; esac
case "$MECH" in p11kit | fault-hang | fault-down | fault-error | fault-slow) ;;
*) die "--mechanism must be p11kit, fault-hang, fault-down, fault-error or fault-slow" ;; esac
for v in "$RATE" "$SHARE" "$T1" "$T2" "$DUR"; do isnum "$v" || die "not a number: '$v'"; done
awk -v r="$RATE" -v s="$SHARE" -v a="$T1" -v b="$T2" -v d="$DUR" 'BEGIN {
    exit !(r > 0 && s >= 0 && s <= 1 && a > 0 && a < b && b < d && d <= 30) }' ||
    die "need rate > 0, 0 <= miss-share <= 1, 0 < t1 < t2 < duration <= 30"
OUT=${OUT:-$ROOT/bench/results/outage/$MODE-$MECH}

# ---- tools ----------------------------------------------------------------------------------
[ -x "$TLSMINT" ] && [ -x "$BENCH" ] ||
    die "no release build in $BUILD: meson setup build/release --buildtype=release -Dtests=false && ninja -C build/release"
for t in nginx openssl python3 cc p11-kit; do
    command -v "$t" >/dev/null || die "$t not found"
done
[ -r "$SOFTHSM" ] || die "SoftHSM module $SOFTHSM not found (apt-get install softhsm2)"
[ "$MECH" != p11kit ] || [ -r "$P11CLIENT" ] || die "$P11CLIENT not found (apt-get install p11-kit-modules)"
if ! command -v gnuplot >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "outage: installing gnuplot-nox"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q gnuplot-nox >/dev/null ||
            die "apt-get install gnuplot-nox failed"
    else
        die "gnuplot not found: install gnuplot-nox (apt-get install gnuplot-nox) or run as root"
    fi
fi

# ---- state ----------------------------------------------------------------------------------
WORK=$(mktemp -d /tmp/tlsmint-outage-XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/run" "$OUT"
OUT=$(cd "$OUT" && pwd)
PIDS=()
P11PID=""
SAMPLER=""
RAMP=""
cleanup() {
    set +e
    [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null
    [ -n "$RAMP" ] && kill "$RAMP" 2>/dev/null
    [ -n "$P11PID" ] && kill_p11kit
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    sleep 0.3
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    if [ -n "$KEEP" ]; then echo "outage: kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ms_now() { date +%s%3N; }

N_MISS=$(awk -v r="$RATE" -v s="$SHARE" -v d="$DUR" 'BEGIN { n = r * s * d; n = int(n * 1.1) + 10; print n }')
N_HOSTS=$((HOT + N_MISS))
MISS_RATE=$(awk -v r="$RATE" -v s="$SHARE" 'BEGIN { printf "%.3f", r * s }')
HIT_RATE=$(awk -v r="$RATE" -v s="$SHARE" 'BEGIN { printf "%.3f", r * (1 - s) }')
echo "outage: $MODE / $MECH, $RATE conn/s ($MISS_RATE misses, $HIT_RATE hits), outage $T1..$T2 s of $DUR s -> $OUT"

"$TLSMINT" init --dir "$WORK/state" >/dev/null || die "tlsmint init failed"
export SOFTHSM2_CONF="$WORK/state/hsm/softhsm2.conf"
CA="$WORK/state/ca/forward-trust.pem"

ORIGIN=${ORIGIN:-$WORK/origin}
OPORT=$(free_port)
echo "outage: origin with $N_HOSTS hosts in $ORIGIN"
"$ROOT/bench/make-origin.sh" "$ORIGIN" "$N_HOSTS" "$OPORT" >/dev/null
nginx -c "$ORIGIN/nginx.conf" -e "$ORIGIN/logs/error.log" &
PIDS+=($!)
wait_port "$OPORT"
cat "$CA" "$ORIGIN/root.pem" >"$WORK/trust.pem" # intercepted and bypassed leaves both verify
seq 1 "$HOT" | sed 's/^/h/; s/$/.bench.test/' >"$WORK/hot.txt"

# ---- the HSM path ---------------------------------------------------------------------------
CONF="$WORK/outage.conf"
CTL="$WORK/fault.ctl"
SOCK="$WORK/run/p11kit.sock"
cp "$WORK/state/tlsmint.conf" "$CONF"
PPORT=$(free_port)
set_conf "$CONF" listen explicit "127.0.0.1:$PPORT"
set_conf "$CONF" listen transparent ""
set_conf "$CONF" upstream ca_file "$ORIGIN/root.pem"
set_conf "$CONF" log access "$WORK/access.log"
set_conf "$CONF" admin socket "$WORK/run/tlsmint.sock"
set_conf "$CONF" admin metrics ""
set_conf "$CONF" hsm fail_mode "$MODE"

start_p11kit() {
    rm -f "$SOCK"
    p11-kit server -f --provider "$SOFTHSM" -n "$SOCK" "pkcs11:token=tlsmint" >>"$WORK/p11kit.log" 2>&1 &
    P11PID=$!
    for _ in $(seq 1 200); do [ -S "$SOCK" ] && return 0; sleep 0.025; done
    die "p11-kit server did not start (see $WORK/p11kit.log)"
}
descendants() { # PID -> every process below it (our own p11-kit-remote children only);
    # /proc/PID/task/*/children, not pgrep: pgrep scans all of /proc (slow on a busy machine)
    local c
    for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        echo "$c"
        descendants "$c"
    done
}
kill_p11kit() { # SIGKILL to our p11-kit server and everything below it (not anyone else's)
    local victims
    victims="$P11PID $(descendants "$P11PID" | tr '\n' ' ')"
    # shellcheck disable=SC2086
    kill -9 $victims 2>/dev/null || true
    wait "$P11PID" 2>/dev/null || true
    P11PID=""
    rm -f "$SOCK"
    echo "killed p11-kit pids: $victims" >>"$WORK/events.txt"
}

case "$MECH" in
p11kit)
    start_p11kit
    printf "\n[hsm]\nmodule = %s\nenv = P11_KIT_SERVER_ADDRESS=unix:path=%s\n" "$P11CLIENT" "$SOCK" >>"$CONF"
    # p11-kit's RPC refuses AES: the master key's wrapping key is reached directly
    printf "\n[master_key]\nmodule = %s\nenv = SOFTHSM2_CONF=%s\n" "$SOFTHSM" "$SOFTHSM2_CONF" >>"$CONF"
    HSM_DESC="SoftHSM behind p11-kit server (network HSM); t1: SIGKILL to the server and its p11-kit-remote children, t2: server restarted"
    ;;
fault-*)
    FAULTP11="$WORK/libfaultp11.so"
    build_faultp11 "$FAULTP11" || die "cannot build tests/faultp11"
    : >"$CTL"
    printf "\n[hsm]\nmodule = %s\nenv = FAULTP11_MODULE=%s\nenv = FAULTP11_CONTROL=%s\n" \
        "$FAULTP11" "$SOFTHSM" "$CTL" >>"$CONF"
    case "$MECH" in
    fault-hang) FAULT=hang=1; HSM_DESC="tests/faultp11 in front of SoftHSM; t1..t2: every C_Sign hangs (hang=1)" ;;
    fault-down) FAULT=down=1; HSM_DESC="tests/faultp11 in front of SoftHSM; t1..t2: HSM gone, CKR_DEVICE_REMOVED (down=1)" ;;
    fault-error) FAULT=fail=CKR_DEVICE_ERROR; HSM_DESC="tests/faultp11 in front of SoftHSM; t1..t2: every C_Sign fails (fail=CKR_DEVICE_ERROR)" ;;
    fault-slow) FAULT=""; HSM_DESC="tests/faultp11 in front of SoftHSM; t1..t2: a slow HSM, not a dead one: every C_Sign's latency ramps 0 -> 50 ms (half-way) -> 0 ms in 5 ms steps (latency_ms)" ;;
    esac
    ;;
esac
ramp_slow() { # 0 -> 50 -> 0 ms over t1..t2: 10 steps up, 10 down
    local step
    step=$(awk -v a="$T1" -v b="$T2" 'BEGIN { printf "%.3f", (b - a) / 20 }')
    for l in 5 10 15 20 25 30 35 40 45 50 45 40 35 30 25 20 15 10 5 0; do
        sleep "$step"
        echo "latency_ms=$l" >"$CTL"
        echo "latency $l ms at $(ms_now)" >>"$WORK/events.txt"
    done
}
outage_on() {
    case "$MECH" in
    p11kit) kill_p11kit ;;
    fault-slow) echo "latency_ms=0" >"$CTL"; ramp_slow & RAMP=$! ;;
    *) echo "$FAULT" >"$CTL" ;;
    esac
}
outage_off() {
    case "$MECH" in
    p11kit) start_p11kit ;;
    fault-slow)
        if [ -n "$RAMP" ]; then
            kill "$RAMP" 2>/dev/null || true
            wait "$RAMP" 2>/dev/null || true
        fi
        RAMP=""
        : >"$CTL"
        ;;
    *) : >"$CTL" ;;
    esac
}

# ---- the proxy ------------------------------------------------------------------------------
"$TLSMINT" -c "$CONF" run >"$WORK/proxy.log" 2>&1 &
PROXY=$!
PIDS+=($PROXY)
for _ in $(seq 1 200); do
    grep -q "tlsmint running" "$WORK/proxy.log" && break
    kill -0 "$PROXY" 2>/dev/null || break
    sleep 0.05
done
grep -q "tlsmint running" "$WORK/proxy.log" || { cat "$WORK/proxy.log" >&2; die "tlsmint did not start"; }
for _ in $(seq 1 100); do # the member must be up before the load starts
    "$TLSMINT" -c "$CONF" ctl hsm 2>/dev/null | head -1 | grep -q ": up " && break
    sleep 0.1
done

BENCH_COMMON=(--proxy "127.0.0.1:$PPORT" --connect "127.0.0.1:$OPORT" --connect-host 127.0.0.1
    --cafile "$WORK/trust.pem" --issuer-stats --threads 1 -q --json)
# the hot hosts are minted once now: during the run they are cache hits
"$BENCH" mint "${BENCH_COMMON[@]}" --hosts "$WORK/hot.txt" >"$WORK/warm.json" 2>"$WORK/warm.err" ||
    die "warm-up run failed: $(cat "$WORK/warm.err")"
grep -q "\"ok\":$HOT," "$WORK/warm.json" || die "warm-up: not every hot host went through: $(cat "$WORK/warm.json")"

# ---- the run --------------------------------------------------------------------------------
(
    set +e
    while :; do
        now=$(ms_now)
        out=$(timeout 1 "$TLSMINT" -c "$CONF" ctl hsm 2>&1)
        raw=$(echo "$out" | head -1)
        s=$(echo "$raw" | sed -n 's/^member [^:]*: \([a-z]*\) (for \([0-9.]*\) s).*/\1,\2/p')
        wk=$(echo "$out" | sed -n 's/^  workers *\([0-9]*\) sessions.*/\1/p' | head -1)
        [ -n "$s" ] || echo "$now $raw" >>"$WORK/hsm-noanswer.txt"
        echo "$now,${s:-no-answer,},$wk"
        sleep 0.1
    done
) >"$WORK/hsm.csv" 2>/dev/null &
SAMPLER=$!
sleep 0.3

T0=$(ms_now)
BPIDS=()
if awk -v r="$MISS_RATE" 'BEGIN { exit !(r > 0) }'; then
    "$BENCH" mint "${BENCH_COMMON[@]}" --host-pattern 'h%d.bench.test' --first $((HOT + 1)) \
        --count "$N_MISS" --requests "$N_MISS" --rate "$MISS_RATE" --duration "$DUR" \
        --timeline "$WORK/miss.csv" --pid "$PROXY" >"$WORK/miss.json" 2>"$WORK/miss.err" &
    BPIDS+=($!)
fi
if awk -v r="$HIT_RATE" 'BEGIN { exit !(r > 0) }'; then
    "$BENCH" mint "${BENCH_COMMON[@]}" --hosts "$WORK/hot.txt" --requests 10000000 \
        --rate "$HIT_RATE" --duration "$DUR" \
        --timeline "$WORK/hit.csv" --pid "$PROXY" >"$WORK/hit.json" 2>"$WORK/hit.err" &
    BPIDS+=($!)
fi
PIDS+=("${BPIDS[@]}")
sleep_until() { # sleep_until SECONDS_AFTER_T0
    local left
    left=$(awk -v t0="$T0" -v s="$1" -v now="$(ms_now)" 'BEGIN { d = (t0 + s * 1000 - now) / 1000; print (d > 0 ? d : 0) }')
    sleep "$left"
}
sleep_until "$T1"
A1Q=$(ms_now)
outage_on
A1=$(ms_now) # t1 = when the kill / the control file write is done
echo "outage on at $A1 (asked at $A1Q)" >>"$WORK/events.txt"
sleep_until "$T2"
A2=$(ms_now) # t2 = when the HSM is given back (p11kit: the restart begins)
outage_off
A2R=$(ms_now) # p11kit: the server's socket is there again
echo "outage off at $A2 (ready $A2R)" >>"$WORK/events.txt"
for p in "${BPIDS[@]}"; do wait "$p" || die "tlsmint-bench failed: $(cat "$WORK"/*.err)"; done
sleep 0.3
kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
SAMPLER=""
"$TLSMINT" -c "$CONF" ctl hsm >"$OUT/hsm-final.txt" 2>&1 || true
"$TLSMINT" -c "$CONF" ctl status >"$WORK/status.txt" 2>&1 || true
kill -TERM "$PROXY"
wait "$PROXY" || echo "outage: the proxy exited with status $?" >>"$WORK/events.txt"
grep -E " (WARN|ERROR) " "$WORK/proxy.log" | grep -v " dp: conn=" >"$OUT/proxy-events.log" || true
NOLEAF=$(grep -c " no leaf: " "$WORK/proxy.log" || true)
echo "(plus $NOLEAF per-connection 'no leaf' warnings)" >>"$OUT/proxy-events.log"

SIGN_TIMEOUT=$(awk -F'=' '/^\[/ { sec = $0 } sec == "[hsm]" && $1 ~ /^sign_timeout_ms[ \t]*$/ { split($2, a, ";"); v = a[1] } END { gsub(/[ \t]/, "", v); print v }' "$CONF")
HANG_TIMEOUT=$(awk -F'=' '/^\[/ { sec = $0 } sec == "[hsm]" && $1 ~ /^hang_timeout_ms[ \t]*$/ { split($2, a, ";"); v = a[1] } END { gsub(/[ \t]/, "", v); print v }' "$CONF")

# ---- timeline, summary ------------------------------------------------------------------------
python3 - "$WORK" "$OUT" "$T0" "$A1" "$A2" "$A2R" "$T1" "$T2" "$DUR" "$MODE" "$MECH" "$RATE" "$SHARE" \
    "${SIGN_TIMEOUT:-250}" "${HANG_TIMEOUT:-2000}" "$CMDLINE" "$HSM_DESC" "$HOT" <<'EOF'
import csv, datetime, json, math, os, sys
from collections import Counter

(work, out, t0, a1, a2, a2r, t1_req, t2_req, dur, mode, mech, rate, share,
 sign_to, hang_to, cmdline, hsm_desc, hot) = sys.argv[1:]
t0, a1, a2, a2r = int(t0), int(a1), int(a2), int(a2r)
sign_to, hang_to = float(sign_to), float(hang_to)
SLACK = 50.0  # ms of scheduling slack on a shared 2-core machine before a wait counts as late

def load_tl(name):
    p = os.path.join(work, name)
    rows = {}
    if not os.path.exists(p):
        return rows
    for r in csv.DictReader(open(p)):
        rows[int(round(float(r["t_s"]) * 10))] = r
    return rows

miss, hit = load_tl("miss.csv"), load_tl("hit.csv")

def cls(r):
    """attempted, intercepted, bypassed, refused (TLS handshake refused: the proxy's alert),
    errors (every other failure: timeout, connect, proxy, verify, http, busy), p50, p99"""
    if r is None:
        return dict(att=0, icp=0, byp=0, ref=0, err=0, p50=math.nan, p99=math.nan)
    f = lambda k: int(r[k])
    ref = f("failed_tls")
    return dict(att=f("attempted"), icp=f("intercepted"), byp=f("bypassed"), ref=ref,
                err=f("failed") - ref, p50=float(r["hs_p50_ms"]), p99=float(r["hs_p99_ms"]))

# HSM member state samples: wall ms -> state
samples = []
wsamples = []  # (wall ms, signing sessions) from the 'workers' line of ctl hsm
for line in open(os.path.join(work, "hsm.csv")):
    parts = line.strip().split(",")
    if len(parts) >= 2 and parts[0].isdigit():
        samples.append((int(parts[0]), parts[1] or "no-answer"))
        if len(parts) >= 4 and parts[3].isdigit():
            wsamples.append((int(parts[0]), int(parts[3])))

# the proxy's access log: per connection end time, outcome, cache, hsm wait
access = []
for line in open(os.path.join(work, "access.log")):
    try:
        j = json.loads(line)
    except ValueError:
        continue
    ts = datetime.datetime.strptime(j["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp() * 1000.0
    j["_end"] = ts
    access.append(j)
access = [j for j in access if j["_end"] >= t0 - 50]  # not the warm-up
# Time zero is the miss stream's own start (tlsmint-bench's t0: its first connection is
# scheduled there), found as the proxy's first accept of a never-seen host; the launch time
# t0 is earlier by the tool's start-up (tens of ms on a busy machine).
hot_names = set("h%d.bench.test" % k for k in range(1, int(hot) + 1))
starts = [j["_end"] - j["duration_ms"] for j in access
          if j.get("sni") not in hot_names and j["_end"] - j["duration_ms"] >= t0 - 5]
if not miss:
    starts = [j["_end"] - j["duration_ms"] for j in access if j["_end"] - j["duration_ms"] >= t0 - 5]
launch = t0
if starts and 0 <= min(starts) - t0 < 2000:
    t0 = int(round(min(starts)))
for j in access:
    j["_rel"] = (j["_end"] - t0) / 1000.0
t1 = (a1 - t0) / 1000.0  # the outage as it happened, seconds after the load started
t2 = (a2 - t0) / 1000.0

nb = max(list(miss) + list(hit) + [0]) + 1
rows = []
si = 0
state = samples[0][1] if samples else "?"
for b in range(nb):
    m, h = cls(miss.get(b)), cls(hit.get(b))
    end_ms = t0 + (b + 1) * 100
    while si < len(samples) and samples[si][0] < end_ms:
        state = samples[si][1]
        si += 1
    waits = [j["hsm_wait_ms"] for j in access if b / 10.0 <= j["_rel"] < (b + 1) / 10.0
             and j.get("hsm_wait_ms") is not None]
    p50s = [x for x in (m["p50"], h["p50"]) if not math.isnan(x)]
    p99s = [x for x in (m["p99"], h["p99"]) if not math.isnan(x)]
    rows.append(dict(
        t_s="%.1f" % (b / 10.0),
        attempted=m["att"] + h["att"], intercepted=m["icp"] + h["icp"],
        bypassed=m["byp"] + h["byp"], refused=m["ref"] + h["ref"], errors=m["err"] + h["err"],
        p50_ms="%.3f" % max(p50s) if p50s else "nan", p99_ms="%.3f" % max(p99s) if p99s else "nan",
        hsm_state=state,
        miss_attempted=m["att"], miss_intercepted=m["icp"], miss_bypassed=m["byp"],
        miss_refused=m["ref"], miss_errors=m["err"],
        miss_p99_ms="nan" if math.isnan(m["p99"]) else "%.3f" % m["p99"],
        hit_attempted=h["att"], hit_intercepted=h["icp"], hit_bypassed=h["byp"],
        hit_refused=h["ref"], hit_errors=h["err"],
        hit_p99_ms="nan" if math.isnan(h["p99"]) else "%.3f" % h["p99"],
        max_hsm_wait_ms="%.3f" % max(waits) if waits else "nan"))
cols = list(rows[0].keys()) if rows else []
with open(os.path.join(out, "timeline.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
# the same for gnuplot: state as a number (down 0, starting 1, recovering 2, up 3)
snum = {"down": 0, "starting": 1, "recovering": 2, "up": 3}
with open(os.path.join(work, "plot.dat"), "w") as f:
    for r in rows:
        f.write("%s %d %d %d %d %s %s %d\n" % (r["t_s"], r["intercepted"], r["bypassed"],
                r["refused"], r["errors"], r["p99_ms"], r["max_hsm_wait_ms"],
                snum.get(r["hsm_state"], -1)))
with open(os.path.join(work, "states.dat"), "w") as f:
    for ms, s in samples:
        if s in snum:  # 'no-answer' (ctl hsm gave no member line) is left out of the plot
            f.write("%.3f %d\n" % ((ms - t0) / 1000.0, snum[s]))
with open(os.path.join(work, "workers.dat"), "w") as f:
    for ms, w in wsamples:
        f.write("%.3f %d\n" % ((ms - t0) / 1000.0, w))

# ---- the numbers ----------------------------------------------------------------------------
def fmt_s(x):
    return "n/a" if x is None else "%.2f s" % x

b1, b2 = int(t1 * 10), int(t2 * 10)
# detection: clients (timeline), proxy (access log), member state (ctl hsm)
det_client = next(((b + 1) / 10.0 for b in range(b1, nb)
                   if rows[b]["miss_refused"] + rows[b]["miss_bypassed"] + rows[b]["miss_errors"] +
                   rows[b]["hit_refused"] + rows[b]["hit_errors"] > 0), None)
det_client = None if det_client is None else det_client - t1  # bucket end
bad_out = ("refused_hsm", "fail_open")
det_proxy = next((j["_rel"] - t1 for j in sorted(access, key=lambda j: j["_end"])
                  if j["_end"] >= a1 and j["outcome"] in bad_out), None)
det_state = next(((ms - a1) / 1000.0 for ms, s in samples if ms >= a1 and s != "up"), None)
first_state = next((s for ms, s in samples if ms >= a1 and s != "up"), None)
cands = [x for x in (det_proxy, det_state) if x is not None]
detect = min(cands) if cands else None
# recovery: first bucket after t2 where misses are intercepted again; the first intercepted
# miss in the access log; the member up again; the last refused/bypassed/failed miss
rec_client = next(((b + 1) / 10.0 for b in range(b2, nb) if rows[b]["miss_intercepted"] > 0), None)
rec_client = None if rec_client is None else rec_client - t2  # bucket end
rec_proxy = next((j["_rel"] - t2 for j in sorted(access, key=lambda j: j["_end"])
                  if j["_end"] >= a2 and j["cache"] == "miss" and j["outcome"] == "ok"
                  and j["_end"] - j["duration_ms"] >= a2 - 1), None)
rec_state = None
if samples:
    after = [(ms, s) for ms, s in samples if ms >= a2]
    was_down = any(s != "up" for ms, s in samples if a1 <= ms < a2)
    if after and after[0][1] == "up" and not was_down:
        rec_state = 0.0
    else:
        rec_state = next(((ms - a2) / 1000.0 for ms, s in after if s == "up"), None)
last_bad = None
for b in range(b2, nb):
    r = rows[b]
    if r["miss_refused"] + r["miss_bypassed"] + r["miss_errors"] > 0:
        last_bad = (b + 1) / 10.0 - t2
recover = rec_proxy if rec_proxy is not None else rec_client

def tot(k, lo=0, hi=None):
    hi = nb if hi is None else hi
    return sum(rows[b][k] for b in range(lo, hi))

# the window where the outage shows: t1 .. t2 + hang_timeout + 1 s (late effects)
wend = min(nb, int((t2 + hang_to / 1000.0 + 1.0) * 10) + 1)
out_access = [j for j in access if a1 <= j["_end"] <= t0 + wend * 100]
waits = [j for j in out_access if j.get("hsm_wait_ms") is not None and j["cache"] in ("miss", "none")]
max_wait = max((j["hsm_wait_ms"] for j in waits), default=None)
late = [j for j in waits if j["hsm_wait_ms"] > sign_to]
late_slack = [j for j in waits if j["hsm_wait_ms"] > sign_to + SLACK]
nonok = [j for j in out_access if j["outcome"] != "ok"]
max_dur_nonok = max((j["duration_ms"] for j in nonok), default=None)
p99_out = [float(rows[b]["p99_ms"]) for b in range(b1, min(wend, nb)) if rows[b]["p99_ms"] != "nan"]
p99_hit_out = [float(rows[b]["hit_p99_ms"]) for b in range(b1, min(b2 + 1, nb))
               if rows[b]["hit_p99_ms"] != "nan"]
outcomes = Counter((j["cache"], j["outcome"]) for j in access)

def js(name):
    try:
        return json.load(open(os.path.join(work, name)))
    except (OSError, ValueError):
        return {}
mj, hj = js("miss.json"), js("hit.json")
hs_max = max([x.get("latency_ms", {}).get("handshake", {}).get("max", 0) for x in (mj, hj)])

waited_past = ("**yes**: %d connection(s) waited more than %.0f + %.0f ms for the HSM (max %.1f ms)"
               % (len(late_slack), sign_to, SLACK, max_wait)) if late_slack else \
              ("no (max %.1f ms; %d above %.0f ms, all within %.0f ms of scheduling slack)"
               % (max_wait, len(late), sign_to, SLACK) if max_wait is not None else "no HSM waits recorded")

summ = dict(mode=mode, mechanism=mech, rate=float(rate), miss_share=float(share),
            t1=round(t1, 3), t2=round(t2, 3), detect_s=detect, detect_client_s=det_client,
            detect_proxy_s=det_proxy, detect_state_s=det_state, first_state=first_state,
            recover_s=recover, recover_client_s=rec_client, recover_state_s=rec_state,
            last_bad_after_t2_s=last_bad,
            attempted=tot("attempted"), intercepted=tot("intercepted"), bypassed=tot("bypassed"),
            refused=tot("refused"), lost=tot("errors"),
            hit_refused=tot("hit_refused"), hit_lost=tot("hit_errors"), hit_bypassed=tot("hit_bypassed"),
            max_hsm_wait_ms=max_wait, sign_timeout_ms=sign_to, late=len(late), late_slack=len(late_slack),
            max_nonok_duration_ms=max_dur_nonok,
            max_p99_outage_ms=max(p99_out) if p99_out else None,
            max_hit_p99_outage_ms=max(p99_hit_out) if p99_hit_out else None,
            handshake_max_ms=hs_max, waited_past=bool(late_slack),
            workers_min=min((w for _, w in wsamples), default=None),
            workers_max=max((w for _, w in wsamples), default=None))
json.dump(summ, open(os.path.join(out, "summary.json"), "w"), indent=1)

L = []
L.append("# Outage: fail-%s, %s\n" % (mode, mech))
L.append("HSM: %s.  \nLoad: %s connections/s open loop through the explicit proxy, %.0f %% on never-seen hosts "
         "(cache misses: each needs an HSM signature), the rest on %d hot hosts minted before the run "
         "(cache hits). Outage from t1 = %.2f s to t2 = %.2f s of %s s (requested %s..%s). "
         "[hsm] sign_timeout_ms = %.0f, hang_timeout_ms = %.0f. Time 0 = the first connection of the "
         "load (%d ms after the load generators were launched).\n"
         % (hsm_desc, rate, float(share) * 100, int(hot), t1, t2, dur, t1_req, t2_req, sign_to, hang_to,
            t0 - launch))
L.append("![timeline](plot.png)\n")
L.append("| | |\n|---|---|")
L.append("| time to detect | **%s** (first refused/bypassed connection at the proxy %s; member state change %s%s; the clients' first 100 ms bucket with a failed/bypassed connection ends %s after t1) |"
         % (fmt_s(detect), fmt_s(det_proxy), fmt_s(det_state),
            " to '%s'" % first_state if first_state else "", fmt_s(det_client)))
L.append("| time to recover after t2 | **%s** (first intercepted miss at the proxy; the first bucket with intercepted misses ends %s after t2; member 'up' again %s; last refused/bypassed/failed miss: %s) |"
         % (fmt_s(recover), fmt_s(rec_client), fmt_s(rec_state),
            "none after t2" if last_bad is None else "in the bucket ending %s after t2" % fmt_s(last_bad)))
L.append("| connections | %d attempted: %d intercepted, %d bypassed, %d refused, %d lost |"
         % (summ["attempted"], summ["intercepted"], summ["bypassed"], summ["refused"], summ["lost"]))
L.append("| of them cache hits | %d attempted: %d intercepted, %d bypassed, %d refused, %d lost |"
         % (tot("hit_attempted"), tot("hit_intercepted"), tot("hit_bypassed"), tot("hit_refused"), tot("hit_errors")))
L.append("| of them misses | %d attempted: %d intercepted, %d bypassed, %d refused, %d lost |"
         % (tot("miss_attempted"), tot("miss_intercepted"), tot("miss_bypassed"), tot("miss_refused"), tot("miss_errors")))
L.append("| longest HSM wait (t1 .. t2 + %.1f s) | %s ms against a deadline of %.0f ms |"
         % (hang_to / 1000.0 + 1.0, "n/a" if max_wait is None else "%.1f" % max_wait, sign_to))
L.append("| waited past the deadline? | %s |" % waited_past)
L.append("| longest refused / passed-through connection (proxy) | %s ms |"
         % ("n/a" if max_dur_nonok is None else "%.1f" % max_dur_nonok))
L.append("| handshake p99 during the outage | max %s ms over the buckets (successful handshakes only); hits alone: max %s ms |"
         % ("n/a" if not p99_out else "%.1f" % max(p99_out),
            "n/a" if not p99_hit_out else "%.1f" % max(p99_hit_out)))
L.append("| slowest successful handshake of the run | %.1f ms |" % hs_max)
if wsamples:
    L.append("| HSM signing sessions (ctl hsm) | %d .. %d over the run |"
             % (summ["workers_min"], summ["workers_max"]))
L.append("")
L.append("Definitions: *intercepted* = the client saw a leaf of the forward-trust CA; *bypassed* = it saw "
         "the origin's own certificate (fail open); *refused* = the TLS handshake ended with the proxy's "
         "handshake_failure alert; *lost* = any other failure (timeout, reset, proxy error, verify, HTTP). "
         "Counts are from tlsmint-bench; HSM waits and the proxy-side times from the proxy's access log "
         "(`hsm_wait_ms`, `duration_ms`, timestamps at the connection's end). p50/p99 in timeline.csv are "
         "the larger of the two streams' percentiles (an upper bound of the mixed one; per stream: "
         "`miss_p99_ms`, `hit_p99_ms`). Latencies of refused connections are not in the p99 (tlsmint-bench "
         "measures successful handshakes only).\n")
L.append("Member state: %d `tlsmint ctl hsm` samples, %d without an answer; states seen: %s.\n"
         % (len(samples), sum(1 for _, s in samples if s not in snum),
            ", ".join("%s %d" % kv for kv in sorted(Counter(s for _, s in samples).items()))))
L.append("Proxy outcomes (access log, cache/outcome): " +
         ", ".join("%s/%s %d" % (k[0], k[1], v) for k, v in sorted(outcomes.items())) + "\n")
L.append("Command line:\n\n```\n%s\n```\n" % cmdline)
open(os.path.join(out, "summary.md"), "w").write("\n".join(L))
print("\n".join(L[3:13]))
EOF

# ---- plot -------------------------------------------------------------------------------------
MODE_T=$([ "$MODE" = open ] && echo "fail open" || echo "fail closed")
PLOT_TITLE="tlsmint HSM outage: $MODE_T, $MECH, $RATE conn/s, $(awk -v s="$SHARE" 'BEGIN { printf "%.0f", s * 100 }')% misses"
PT1=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["t1"])' "$OUT/summary.json")
PT2=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["t2"])' "$OUT/summary.json")
XMAX=$(awk 'END { print $1 + 0.1 }' "$WORK/plot.dat")
for term in png svg; do
    if [ $term = png ]; then
        setterm="set terminal pngcairo size 1200,720 font 'DejaVu Sans,11'"
    else
        setterm="set terminal svg size 1200,720 dynamic font 'DejaVu Sans,11' background rgb 'white'"
    fi
    gnuplot <<EOF
$setterm
set output '$OUT/plot.$term'
set multiplot
# top: outcomes per 100 ms (stacked) and handshake p99
set size 1,0.76
set origin 0,0.24
set lmargin 10
set rmargin 11
set title "$PLOT_TITLE"
set object 1 rect from $PT1, graph 0 to $PT2, graph 1 behind fc rgb '#b0b0b0' fs transparent solid 0.35 noborder
set label 1 "$([ "$MECH" = fault-slow ] && echo "slow HSM" || echo outage)" at ($PT1 + $PT2) / 2, graph 0.96 center
set xrange [0:$XMAX]
set format x ''
set ylabel 'connections per 100 ms'
set yrange [0:*]
set y2label 'handshake ms (log)'
set logscale y2
set y2range [1:*]
set y2tics nomirror
set ytics nomirror
set grid ytics
set key outside bottom center horizontal
set datafile missing 'nan'
plot '$WORK/plot.dat' using 1:(\$2+\$3+\$4+\$5) with fillsteps fc rgb '#000000' fs solid 0.8 title 'lost (other errors)', \
     '' using 1:(\$2+\$3+\$4) with fillsteps fc rgb '#d62728' fs solid 0.75 title 'refused', \
     '' using 1:(\$2+\$3) with fillsteps fc rgb '#ff9f1c' fs solid 0.75 title 'bypassed (origin cert)', \
     '' using 1:2 with fillsteps fc rgb '#2ca02c' fs solid 0.6 title 'intercepted', \
     '' using 1:6 axes x1y2 with lines lw 2 lc rgb '#1f3fbf' title 'handshake p99 (ok ones)', \
     '' using 1:7 axes x1y2 with points pt 7 ps 0.5 lc rgb '#7f3fbf' title 'max HSM wait (proxy)', \
     $SIGN_TIMEOUT axes x1y2 with lines dt 2 lw 1.5 lc rgb '#7f3fbf' title 'sign_timeout_ms' noenhanced
# bottom: the HSM member state from 'tlsmint ctl hsm'
unset object 1
unset label 1
unset title
unset logscale y2
unset y2tics
unset y2label
unset grid
set size 1,0.24
set origin 0,0
set object 2 rect from $PT1, graph 0 to $PT2, graph 1 behind fc rgb '#b0b0b0' fs transparent solid 0.35 noborder
set format x '%g'
set xlabel 'seconds since the load started'
set ylabel 'HSM member'
set yrange [-0.5:3.5]
set ytics ('down' 0, 'starting' 1, 'recovering' 2, 'up' 3)
set grid ytics
$(if [ -s "$WORK/workers.dat" ]; then
    echo "set y2label 'sessions'"
    echo "set y2range [0:*]"
    echo "set y2tics nomirror"
    echo "set key top left horizontal"
    echo "plot '$WORK/states.dat' using 1:2 with steps lw 2 lc rgb '#1f3fbf' title 'member state', '$WORK/workers.dat' using 1:2 axes x1y2 with steps lw 1.5 lc rgb '#2ca02c' title 'signing sessions (workers)'"
else
    echo "unset key"
    echo "plot '$WORK/states.dat' using 1:2 with steps lw 2 lc rgb '#1f3fbf'"
fi)
unset multiplot
EOF
done
echo "outage: wrote $OUT/{timeline.csv,plot.png,plot.svg,summary.md}"
