#!/bin/bash
# SPDX-License-Identifier: MIT
#
# soak.sh - tlsmint for a long time under a mix of everything, with the HSM restarted under it,
# watching what must not drift: the proxy's memory, its file descriptors, and whether clients
# are served. All on loopback, with the release build (make build); `make soak` runs it.
#
# usage: bench/soak.sh            (SOAK_S=600 by default: 10 minutes of load)
# Environment:
#   SOAK_S          seconds of load (default 600)
#   SOAK_WARM_S     warm-up excluded from the RSS check (default: a fifth of SOAK_S, >= 60)
#   SOAK_HIT_RATE   cache-hit connections per second over 4 hot hosts (default 20)
#   SOAK_MISS_RATE  connections per second to never-seen hosts, each a mint (default 2)
#   SOAK_CACHE      [cache] size (default 200: full during the warm-up, then the LRU evicts,
#                   so memory must stop growing)
#   SOAK_SESSIONS   [upstream] session_cache (default 64: also full during the warm-up; the
#                   default 1024 slots fill only after about 1000 new hosts, longer than the
#                   soak, and each holds an origin's certificates, about 11 KiB)
#   SOAK_OUT        output directory (default bench/results)
#   KEEP=1          keep the temporary directory
#
# What runs, all the time: cache hits (tlsmint-bench, open loop), misses over a growing host set
# (one origin certificate per host, bench/make-origin.sh), a 20 MiB download through the proxy
# every 5 s (tlsmint-bench bulk, checked for size), a bad-input client every 2 s (the cases of
# tests/e2e/test_badinput.sh, tests/e2e/tlsclient.py). And on a schedule: `ctl reload` every
# 30 s, SIGKILL to the signer every 60 s, the network HSM (SoftHSM behind `p11-kit server`, as
# in tests/e2e/test_outage.sh and bench/outage.sh) killed and restarted every 90 s.
# Every 10 s it samples the proxy's VmRSS, open fds, active and accepted connections and the
# outcomes from the metrics endpoint.
#
# Pass when: RSS after the warm-up stays within +-10 % of its first post-warm-up sample; the fd
# count after the load (connections closed) is back to the count before it; no connection was
# lost other than by the documented fail policy ([hsm] fail_mode = closed: a cache miss while no
# member can sign is refused with a TLS alert; every such client failure is a TLS failure, and
# there are no more of them than the proxy's refused_hsm count; cache hits and downloads never
# fail); the proxy served cache hits in every 10 s window, and every reload succeeded.
#
# Outputs in SOAK_OUT: soak.csv (one row per 10 s), soak.png (gnuplot: RSS, fds, conn/s, errors
# over time, the HSM restarts and signer kills marked), soak.md (figures, verdicts, command).
# Exit status 0 when every check passed, 1 when one failed, 2 when it could not run.
set -euo pipefail
case "${1:-}" in
"") ;;
-h | --help) sed -n '3,40p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
*) echo "soak.sh: unknown argument $1 (it takes none; see --help)" >&2; exit 2 ;;
esac
. "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SOAK_S=${SOAK_S:-600}
WARM_S=${SOAK_WARM_S:-$((SOAK_S / 5 > 60 ? SOAK_S / 5 : 60))}
HIT_RATE=${SOAK_HIT_RATE:-20}
MISS_RATE=${SOAK_MISS_RATE:-2}
CACHE=${SOAK_CACHE:-200}
SESSIONS=${SOAK_SESSIONS:-64}
OUT=${SOAK_OUT:-$ROOT/bench/results}
BUILD=${BUILD_DIR:-$ROOT/build/release}
TLSMINT=$BUILD/cli/tlsmint
BENCH=$BUILD/bench/loadgen/tlsmint-bench
TLSCLIENT=$ROOT/tests/e2e/tlsclient.py
SOFTHSM=/usr/lib/softhsm/libsofthsm2.so
P11CLIENT=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so
HOT=4

die() {
    echo "soak: $*" >&2
    exit 2
}
for v in "$SOAK_S" "$WARM_S" "$HIT_RATE" "$MISS_RATE" "$CACHE" "$SESSIONS"; do
    [[ $v =~ ^[0-9]+$ ]] || die "not a whole number: '$v'"
done
[ "$SOAK_S" -ge 60 ] || die "SOAK_S must be at least 60"
[ "$WARM_S" -lt "$SOAK_S" ] || die "SOAK_WARM_S must be less than SOAK_S"
[ -x "$TLSMINT" ] && [ -x "$BENCH" ] || die "no release build in $BUILD: make build"
for t in nginx openssl python3 curl p11-kit gnuplot; do
    command -v "$t" >/dev/null || die "$t not found (gnuplot: apt-get install gnuplot-nox)"
done
[ -r "$SOFTHSM" ] || die "$SOFTHSM not found"
[ -r "$P11CLIENT" ] || die "$P11CLIENT not found"

WORK=$(mktemp -d /tmp/tlsmint-soak-XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/run" "$OUT"
OUT=$(cd "$OUT" && pwd)
PIDS=()
P11PID=""
descendants() { # PID -> every process below it (/proc, not pgrep: ours only)
    local c
    for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        echo "$c"
        descendants "$c"
    done
}
kill_p11kit() {
    local victims
    victims="$P11PID $(descendants "$P11PID" | tr '\n' ' ')"
    # shellcheck disable=SC2086
    kill -9 $victims 2>/dev/null || true
    wait "$P11PID" 2>/dev/null || true
    P11PID=""
}
cleanup() {
    set +e
    touch "$WORK/stop"
    [ -n "$P11PID" ] && kill_p11kit
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    if [ -n "${KEEP:-}" ]; then echo "soak: kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# the whole run is bounded: setup, load, settle and report within SOAK_S + 15 min
(sleep $((SOAK_S + 900)) && echo "soak: time limit reached" >&2 && kill -TERM $$) 2>/dev/null &
PIDS+=($!)

now_s() { date +%s.%N | cut -c1-14; }
event() { echo "$(now_s),$1,$2" >>"$WORK/events.csv"; }

N_MISS=$((MISS_RATE * SOAK_S + MISS_RATE * SOAK_S / 20 + 10))
echo "soak: $SOAK_S s ($WARM_S s warm-up), $HIT_RATE hits/s, $MISS_RATE misses/s over $N_MISS new hosts, cache $CACHE, -> $OUT"

"$TLSMINT" init --dir "$WORK/state" >/dev/null || die "tlsmint init failed"
export SOFTHSM2_CONF="$WORK/state/hsm/softhsm2.conf"
CA="$WORK/state/ca/forward-trust.pem"
OPORT=$(free_port)
PPORT=$(free_port)
TPORT=$(free_port)
MPORT=$(free_port)
ORIGIN="$WORK/origin"
echo "soak: origin with $((HOT + N_MISS)) host certificates"
"$ROOT/bench/make-origin.sh" "$ORIGIN" $((HOT + N_MISS)) "$OPORT" >/dev/null
head -c 20971520 /dev/urandom >"$ORIGIN/www/big20.bin"
chmod a+r "$ORIGIN/www/big20.bin"
nginx -c "$ORIGIN/nginx.conf" -e "$ORIGIN/logs/error.log" &
PIDS+=($!)
wait_port "$OPORT" 400
seq 1 "$HOT" | sed 's/^/h/; s/$/.bench.test/' >"$WORK/hot.txt"

SOCK="$WORK/run/p11kit.sock"
start_p11kit() {
    rm -f "$SOCK"
    p11-kit server -f --provider "$SOFTHSM" -n "$SOCK" "pkcs11:token=tlsmint" >>"$WORK/p11kit.log" 2>&1 &
    P11PID=$!
    for _ in $(seq 1 400); do [ -S "$SOCK" ] && return 0; sleep 0.025; done
    die "p11-kit server did not start (see $WORK/p11kit.log)"
}
start_p11kit

CONF="$WORK/soak.conf"
cp "$WORK/state/tlsmint.conf" "$CONF"
set_conf "$CONF" listen explicit "127.0.0.1:$PPORT"
set_conf "$CONF" listen transparent "127.0.0.1:$TPORT"
set_conf "$CONF" upstream ca_file "$ORIGIN/root.pem"
set_conf "$CONF" cache size "$CACHE"
set_conf "$CONF" upstream session_cache "$SESSIONS"
set_conf "$CONF" log access "$WORK/access.log"
set_conf "$CONF" admin socket "$WORK/run/tlsmint.sock"
set_conf "$CONF" admin metrics "127.0.0.1:$MPORT"
set_conf "$CONF" hsm fail_mode closed
printf "\n[hsm]\nmodule = %s\nenv = P11_KIT_SERVER_ADDRESS=unix:path=%s\n" "$P11CLIENT" "$SOCK" >>"$CONF"
# p11-kit's RPC refuses AES: the master key's wrapping key is reached directly
printf "\n[master_key]\nmodule = %s\nenv = SOFTHSM2_CONF=%s\n" "$SOFTHSM" "$SOFTHSM2_CONF" >>"$CONF"

"$TLSMINT" -c "$CONF" run >"$WORK/proxy.log" 2>&1 &
PROXY=$!
PIDS+=($PROXY)
for _ in $(seq 1 400); do
    grep -q "tlsmint running" "$WORK/proxy.log" && break
    kill -0 "$PROXY" 2>/dev/null || break
    sleep 0.05
done
grep -q "tlsmint running" "$WORK/proxy.log" || { cat "$WORK/proxy.log" >&2; die "tlsmint did not start"; }
cat "$CA" "$ORIGIN/root.pem" >"$WORK/trust.pem"
COMMON=(--proxy "127.0.0.1:$PPORT" --connect "127.0.0.1:$OPORT" --connect-host 127.0.0.1
    --cafile "$WORK/trust.pem" --issuer-stats --threads 1 -q --json)
timeout 60 "$BENCH" mint "${COMMON[@]}" --hosts "$WORK/hot.txt" >"$WORK/warm.json" 2>"$WORK/warm.err" ||
    die "warm-up run failed: $(cat "$WORK/warm.err")"
grep -q "\"ok\":$HOT," "$WORK/warm.json" || die "warm-up: not every hot host went through: $(cat "$WORK/warm.json")"

metrics() { curl -sS --max-time 5 "http://127.0.0.1:$MPORT/metrics" 2>/dev/null || true; }
fds() { ls /proc/"$PROXY"/fd 2>/dev/null | wc -l; }
rss() { awk '/^VmRSS:/ { print $2 }' /proc/"$PROXY"/status 2>/dev/null || echo 0; }
sleep 1
FD0=$(fds)
RSS0=$(rss)
echo "soak: proxy pid $PROXY up, baseline $FD0 fds, $RSS0 KiB RSS"

# ---- the load ---------------------------------------------------------------------------------
T0=$(now_s)
T_END=$(awk -v a="$T0" -v d="$SOAK_S" 'BEGIN { printf "%.3f", a + d }')
running() { awk -v e="$T_END" -v n="$(now_s)" 'BEGIN { exit !(n < e) }' && [ ! -e "$WORK/stop" ]; }
: >"$WORK/events.csv"
timeout $((SOAK_S + 120)) "$BENCH" mint "${COMMON[@]}" --hosts "$WORK/hot.txt" --requests 100000000 \
    --rate "$HIT_RATE" --duration "$SOAK_S" --timeline "$WORK/hit.csv" >"$WORK/hit.json" 2>"$WORK/hit.err" &
HITS=$!
timeout $((SOAK_S + 120)) "$BENCH" mint "${COMMON[@]}" --host-pattern 'h%d.bench.test' --first $((HOT + 1)) \
    --count "$N_MISS" --requests "$N_MISS" --rate "$MISS_RATE" --duration "$SOAK_S" \
    --timeline "$WORK/miss.csv" >"$WORK/miss.json" 2>"$WORK/miss.err" &
MISSES=$!
PIDS+=($HITS $MISSES)

( # a 20 MiB download every 5 s (tlsmint-bench: the CONNECT line names 127.0.0.1, SNI the host)
    while running; do
        t=$(now_s)
        j=$(timeout 90 "$BENCH" bulk --proxy "127.0.0.1:$PPORT" --connect "127.0.0.1:$OPORT" \
            --connect-host 127.0.0.1 --host h1.bench.test --path /big20.bin --conns 1 --threads 1 \
            --timeout-ms 30000 --cafile "$WORK/trust.pem" -q --json 2>>"$WORK/bulk.err" || true)
        echo "$j" >>"$WORK/bulk.json"
        code=$(echo "$j" | grep -q '"ok":1,"failed":0,' && echo 200 || echo failed)
        size=$(echo "$j" | sed -n 's/.*"body_bytes":\([0-9]*\).*/\1/p')
        echo "$t,$code,${size:-0}" >>"$WORK/bulk.csv"
        sleep 5
    done
) &
PIDS+=($!)

( # a bad-input client every 2 s
    T="127.0.0.1:$OPORT"
    cases=("garbage $PPORT $T 3" "truncated $PPORT $T 40" "bigsni $PPORT $T 65400" "lyingsni $PPORT $T"
        "raw $TPORT plaintext x 3" "raw $PPORT emptyhost x 3" "raw $PPORT longline x 3"
        "raw $PPORT longheader x 3" "raw $PPORT nul x 3" "raw $PPORT partial shutwr 3"
        "slowhello $PPORT $T 4" "slowconnect $PPORT $T 4")
    i=0
    while running; do
        # shellcheck disable=SC2086
        r=$(timeout 20 python3 "$TLSCLIENT" ${cases[$((i % ${#cases[@]}))]} 2>&1 | tail -n 1 || true)
        echo "$(now_s),${cases[$((i % ${#cases[@]}))]%% *},$r" >>"$WORK/bad.csv"
        i=$((i + 1))
        sleep 2
    done
) &
PIDS+=($!)

( # the proxy, every 10 s
    echo "t_s,rss_kib,fds,conns_active,accepted_total,ok,refused_hsm,upstream_failed,client_error,bad_request,timeout,fail_open,hsm_up"
    while running; do
        m=$(metrics)
        get() { echo "$m" | awk -v k="$1" '$1 == k { print $2; f = 1 } END { if (!f) print "" }'; }
        echo "$(now_s),$(rss),$(fds),$(get tlsmint_connections_active),$(get tlsmint_connections_accepted_total),$(get 'tlsmint_connections_total{outcome="ok"}'),$(get 'tlsmint_connections_total{outcome="refused_hsm"}'),$(get 'tlsmint_connections_total{outcome="upstream_failed"}'),$(get 'tlsmint_connections_total{outcome="client_error"}'),$(get 'tlsmint_connections_total{outcome="bad_request"}'),$(get 'tlsmint_connections_total{outcome="timeout"}'),$(get 'tlsmint_connections_total{outcome="fail_open"}'),$(get tlsmint_hsm_members_up)"
        sleep 10
    done
) >"$WORK/samples.csv" &
SAMPLER=$!
PIDS+=($SAMPLER)

# the schedule: reload every 30 s, signer SIGKILL every 60 s, p11-kit restart every 90 s
elapsed() { awk -v a="$T0" -v n="$(now_s)" 'BEGIN { printf "%d", n - a }'; }
next_reload=30 next_kill=60 next_p11=90
while running; do
    sleep 0.5
    e=$(elapsed)
    if [ "$e" -ge "$next_reload" ]; then
        next_reload=$((next_reload + 30))
        if timeout 30 "$TLSMINT" -c "$CONF" ctl reload >>"$WORK/reload.out" 2>&1; then
            event reload ok
        else
            event reload failed
        fi
    fi
    if [ "$e" -ge "$next_kill" ]; then
        next_kill=$((next_kill + 60))
        victims=""
        for c in $(cat /proc/"$PROXY"/task/*/children 2>/dev/null); do
            grep -q "__signer" /proc/"$c"/cmdline 2>/dev/null && victims="$victims $c"
        done
        # shellcheck disable=SC2086
        [ -n "$victims" ] && kill -9 $victims 2>/dev/null
        event signer_kill "${victims# }"
    fi
    if [ "$e" -ge "$next_p11" ]; then
        next_p11=$((next_p11 + 90))
        kill_p11kit
        start_p11kit
        event p11kit_restart ok
    fi
done
wait "$HITS" || true
wait "$MISSES" || true
touch "$WORK/stop"
wait "$SAMPLER" 2>/dev/null || true
# after the load: open connections end (slow bad-input clients included), then the fds
sleep 5
FD1=$(fds)
for _ in $(seq 1 30); do
    [ "$FD1" -le "$FD0" ] && break
    sleep 1
    FD1=$(fds)
done
RSS1=$(rss)
ALIVE=0
kill -0 "$PROXY" 2>/dev/null && ALIVE=1
M_END=$(metrics)
"$TLSMINT" -c "$CONF" ctl status >"$WORK/status.txt" 2>&1 || true
kill -TERM "$PROXY" 2>/dev/null || true
STOP=0
wait "$PROXY" || STOP=$?
echo "soak: load done; fds $FD0 -> $FD1, RSS $RSS0 -> $RSS1 KiB, proxy exit status $STOP"
echo "$M_END" >"$WORK/metrics-end.txt"

python3 - "$WORK" "$OUT" "$T0" "$SOAK_S" "$WARM_S" "$FD0" "$FD1" "$RSS0" "$ALIVE" "$STOP" \
    "$HIT_RATE" "$MISS_RATE" "$CACHE, upstream session_cache $SESSIONS" "$N_MISS" <<'PY'
import csv, json, os, sys
(work, out, t0, soak_s, warm_s, fd0, fd1, rss0, alive, stop, hit_rate, miss_rate, cache,
 n_miss) = sys.argv[1:]
t0, soak_s, warm_s = float(t0), int(soak_s), int(warm_s)
fd0, fd1, rss0, alive, stop = int(fd0), int(fd1), int(rss0), int(alive), int(stop)

def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return 0.0

samples = [r for r in csv.DictReader(open(os.path.join(work, "samples.csv")))]
for r in samples:
    r["t"] = num(r["t_s"]) - t0

def timeline(name):
    p = os.path.join(work, name)
    return list(csv.DictReader(open(p))) if os.path.exists(p) else []

KINDS = ["failed_connect", "failed_proxy", "failed_tls", "failed_verify", "failed_http",
         "failed_timeout", "failed_busy"]
def window_sums(rows, lo, hi):
    s = {"ok": 0, "failed": 0}
    for k in KINDS:
        s[k] = 0
    for r in rows:
        t = num(r["t_s"])
        if lo <= t < hi:
            s["ok"] += int(num(r["ok"]))
            s["failed"] += int(num(r["failed"]))
            for k in KINDS:
                s[k] += int(num(r[k]))
    return s

hit, miss = timeline("hit.csv"), timeline("miss.csv")
def lines(name):
    p = os.path.join(work, name)
    return [l.rstrip("\n").split(",") for l in open(p)] if os.path.exists(p) else []
bulk = [(num(x[0]) - t0, x[1] if len(x) > 1 else "", int(num(x[2])) if len(x) > 2 else 0)
        for x in lines("bulk.csv")]
bad = [(num(x[0]) - t0, x[1]) for x in lines("bad.csv")]
events = [(num(x[0]) - t0, x[1], x[2] if len(x) > 2 else "") for x in lines("events.csv")]

rows = []
prev = None
for r in samples:
    t = r["t"]
    lo = prev["t"] if prev else 0.0
    h = window_sums(hit, lo, t)
    m = window_sums(miss, lo, t)
    b_ok = sum(1 for (bt, code, size) in bulk if lo <= bt < t and code == "200" and size == 20971520)
    b_bad = sum(1 for (bt, code, size) in bulk if lo <= bt < t and not (code == "200" and size == 20971520))
    acc = num(r["accepted_total"])
    cps = (acc - num(prev["accepted_total"])) / (t - lo) if prev and t > lo else 0.0
    ev = ";".join("%s@%.0f" % (e[1], e[0]) for e in events if lo <= e[0] < t)
    rows.append(dict(
        t_s="%.1f" % t, rss_kib=r["rss_kib"], fds=r["fds"], conns_active=r["conns_active"],
        accepted_total=r["accepted_total"], conn_per_s="%.1f" % cps,
        hit_ok=h["ok"], hit_failed=h["failed"], miss_ok=m["ok"], miss_failed=m["failed"],
        miss_failed_tls=m["failed_tls"], bulk_ok=b_ok, bulk_failed=b_bad,
        bad_input=sum(1 for (bt, _) in bad if lo <= bt < t),
        outcome_ok=r["ok"], outcome_refused_hsm=r["refused_hsm"],
        outcome_upstream_failed=r["upstream_failed"], outcome_client_error=r["client_error"],
        outcome_bad_request=r["bad_request"], outcome_timeout=r["timeout"],
        hsm_up=r["hsm_up"], errors=h["failed"] + m["failed"] + b_bad, events=ev))
    prev = r
cols = list(rows[0].keys()) if rows else []
with open(os.path.join(out, "soak.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)

# ---- verdicts
checks = []
post = [r for r in rows if float(r["t_s"]) >= warm_s and int(r["rss_kib"] or 0) > 0]
if post:
    ref = int(post[0]["rss_kib"])
    lo_r, hi_r = min(int(r["rss_kib"]) for r in post), max(int(r["rss_kib"]) for r in post)
    dev = max(abs(lo_r - ref), abs(hi_r - ref)) * 100.0 / ref
    checks.append(("RSS after the %d s warm-up within +-10 %% of %d KiB (min %d, max %d KiB: %.1f %%)"
                   % (warm_s, ref, lo_r, hi_r, dev), dev <= 10.0))
else:
    ref = lo_r = hi_r = 0
    dev = 0.0
    checks.append(("RSS samples after the warm-up", False))
checks.append(("fds back to the baseline after the load (%d before, %d after)" % (fd0, fd1),
               fd1 <= fd0))
H = window_sums(hit, -1, 1e9)
M = window_sums(miss, -1, 1e9)
m_end = {}
for l in open(os.path.join(work, "metrics-end.txt")):
    p = l.split()
    if len(p) == 2 and not l.startswith("#"):
        m_end[p[0]] = num(p[1])
refused = int(m_end.get('tlsmint_connections_total{outcome="refused_hsm"}', 0))
lost_kinds = {k: H[k] + M[k] for k in KINDS if k != "failed_tls" and H[k] + M[k]}
checks.append(("cache hits: %d ok, %d failed" % (H["ok"], H["failed"]), H["failed"] == 0 and H["ok"] > 0))
checks.append(("cache misses: %d ok, %d failed, all by the fail policy (TLS alert; proxy "
               "refused_hsm %d)" % (M["ok"], M["failed"], refused),
               M["failed"] == M["failed_tls"] and M["failed_tls"] <= refused and M["ok"] > 0))
checks.append(("no connection lost otherwise (connect, proxy, verify, http, timeout, busy: %s)"
               % (", ".join("%s %d" % kv for kv in lost_kinds.items()) or "none"), not lost_kinds))
b_ok = sum(1 for (_, code, size) in bulk if code == "200" and size == 20971520)
checks.append(("20 MiB downloads: %d ok, %d failed" % (b_ok, len(bulk) - b_ok),
               b_ok == len(bulk) and b_ok > 0))
served = [r for r in rows if float(r["t_s"]) > 1 and int(r["hit_ok"]) == 0]
checks.append(("cache hits served in every 10 s window (%d windows without)" % len(served),
               not served and len(rows) >= soak_s // 10 - 1))
rel = [e for e in events if e[1] == "reload"]
checks.append(("ctl reloads: %d, all succeeded" % len(rel),
               len(rel) >= soak_s // 30 - 1 and all(e[2] == "ok" for e in rel)))
kills = [e for e in events if e[1] == "signer_kill"]
p11 = [e for e in events if e[1] == "p11kit_restart"]
checks.append(("signer SIGKILLs: %d, p11-kit server restarts: %d" % (len(kills), len(p11)),
               len(kills) >= soak_s // 60 - 1 and len(p11) >= soak_s // 90 - 1 and
               all(e[2] for e in kills)))
checks.append(("bad-input clients: %d" % len(bad), len(bad) >= soak_s // 4))
checks.append(("the proxy alive at the end, exit status %d after SIGTERM" % stop,
               alive == 1 and stop == 0))
ok = all(c[1] for c in checks)

# ---- plot
gp = os.path.join(work, "plot.gp")
marks = []
for (t, kind, _) in events:
    if kind == "p11kit_restart":
        marks.append('set arrow from %.1f, graph 0 to %.1f, graph 1 nohead lc rgb "#e07070" lw 1' % (t, t))
    elif kind == "signer_kill":
        marks.append('set arrow from %.1f, graph 0 to %.1f, graph 1 nohead lc rgb "#e0b040" lw 1 dt 2' % (t, t))
csvp = os.path.join(out, "soak.csv")
with open(gp, "w") as f:
    f.write("""set terminal pngcairo size 1100,1000 font ",10"
set output "%s"
set datafile separator ","
set key top left
set grid ytics
set multiplot layout 4,1 title "tlsmint soak: %d s, %s hits/s + %s misses/s, 20 MiB every 5 s, bad input every 2 s; reload 30 s, signer SIGKILL 60 s (dashed), p11-kit restart 90 s (red)"
%s
set xrange [0:%d]
set lmargin 10
set ylabel "RSS MiB"
set yrange [0:*]
plot "%s" using 1:($2/1024) skip 1 with linespoints pt 7 ps 0.4 lw 2 title "proxy VmRSS", \
     %f with lines dt 3 lc rgb "#888888" title "+-10 %% of the first post-warm-up sample", %f with lines dt 3 lc rgb "#888888" notitle
set ylabel "open fds"
plot "%s" using 1:3 skip 1 with linespoints pt 7 ps 0.4 lw 2 title "proxy fds", %d with lines dt 3 lc rgb "#888888" title "baseline before the load"
set ylabel "conn/s"
plot "%s" using 1:6 skip 1 with linespoints pt 7 ps 0.4 lw 2 title "accepted per second (10 s average)"
set ylabel "per 10 s"
set xlabel "seconds since the load started"
plot "%s" using 1:22 skip 1 with impulses lw 4 lc rgb "#c03030" title "client failures, all streams (by the fail policy: misses refused while no member could sign)", \
     "%s" using 1:9 skip 1 with linespoints pt 7 ps 0.4 lc rgb "#3060c0" title "cache misses ok"
unset multiplot
""" % (os.path.join(out, "soak.png"), soak_s, hit_rate, miss_rate, "\n".join(marks), soak_s + 5,
       csvp, ref * 1.1 / 1024, ref * 0.9 / 1024, csvp, fd0, csvp, csvp, csvp))
rc = os.system("gnuplot %s 2>%s" % (gp, os.path.join(work, "gnuplot.err")))
if rc != 0:
    checks.append(("gnuplot: " + open(os.path.join(work, "gnuplot.err")).read().strip()[:300], False))
    ok = False

with open(os.path.join(out, "soak.md"), "w") as f:
    f.write("# Soak: %d s\n\n" % soak_s)
    f.write("`bench/soak.sh` (SOAK_S=%d), release build, all on loopback: %s cache hits/s over %d hot "
            "hosts, %s misses/s over %s never-seen hosts (cache size %s), a 20 MiB download every "
            "5 s, a bad-input client every 2 s; `ctl reload` every 30 s, SIGKILL to the signer every "
            "60 s, the network HSM (SoftHSM behind `p11-kit server`) killed and restarted every "
            "90 s; fail_mode closed.\n\n" % (soak_s, hit_rate, 4, miss_rate, n_miss, cache))
    f.write("Result: **%s**\n\n" % ("PASS" if ok else "FAIL"))
    for (d, v) in checks:
        f.write("- %s %s\n" % ("ok  " if v else "FAIL", d))
    f.write("\nRSS before the load %d KiB; connections accepted %d; outcomes at the end: %s.\n"
            % (rss0, int(m_end.get("tlsmint_connections_accepted_total", 0)),
               ", ".join("%s %d" % (k.split('"')[1], v) for k, v in m_end.items()
                         if k.startswith("tlsmint_connections_total{") and v)))
    f.write("\nFiles: `soak.csv` (one row per 10 s), `soak.png`.\n")
print(open(os.path.join(out, "soak.md")).read())
sys.exit(0 if ok else 1)
PY
