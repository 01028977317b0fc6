#!/bin/bash
# SPDX-License-Identifier: MIT
# test_slowhsm.sh - a slow HSM is not a dead HSM. tests/faultp11 adds latency to every C_Sign of
# a real SoftHSM token; tlsmint-bench drives never-seen hosts (each one HSM signature) through
# the explicit listener of a proxy with the config `tlsmint init` writes ([hsm] workers = auto).
#   sweep      latency 0, 10, 50 ms: >= 97 % of the connections ok at each, conn/s does not
#              collapse, more sessions in use at 50 ms than at 0 ms
#   step       0 -> 20 ms -> 0 during the load: no failed connection, the worker count follows
#              within 2 s each way (the times from the proxy's own log)
#   HA         one member at 2 ms, one at 30 ms: nothing fails, most work goes to the faster one
#   admission  workers = 1 at 100 ms (10 signatures/s): misses beyond that are refused at once
#              as overload (counted apart from timeouts), cache hits are all served
#   recovery   a spell slower than the deadline (600 ms per signature, deadline 250 ms), then
#              the HSM is fast again: new hosts are signed again at once, not refused forever
# The full sweep (2,000 hosts per latency, 0/2/10/20/50 ms) is bench/hsm-latency.sh.
# usage: test_slowhsm.sh TLSMINT_BENCH (meson passes the load generator's path)
. "$(dirname "$0")/lib.sh"

LG=${1:?usage: test_slowhsm.sh PATH_OF_tlsmint-bench}
FAULTP11=${FAULTP11_PATH:?FAULTP11_PATH must point at faultp11.so}
SRC=$(cd "$(dirname "$0")/../.." && pwd)
SWEEP_HOSTS=${SLOWHSM_SWEEP_HOSTS:-200}
PARTS=${SLOWHSM_PARTS:-"sweep step ha admission recovery"} # for debugging one part
part() { case " $PARTS " in *" $1 "*) return 0 ;; esac; return 1; }

echo "== setup"
"$TLSMINT" init --dir "$WORK/state" >/dev/null || { echo "init failed"; exit 1; }
CA="$WORK/state/ca/forward-trust.pem"
export SOFTHSM2_CONF="$WORK/state/hsm/softhsm2.conf"
OPORT=$(free_port)
"$SRC/bench/make-origin.sh" "$WORK/origin" 2000 "$OPORT" >/dev/null || { echo "make-origin failed"; exit 1; }
nginx -c "$WORK/origin/nginx.conf" -e "$WORK/origin/logs/error.log" 2>/dev/null &
PIDS+=($!)
for _ in $(seq 1 300); do # 2000 server blocks: nginx takes a while on a busy machine
    (exec 3<>/dev/tcp/127.0.0.1/"$OPORT") 2>/dev/null && break
    sleep 0.1
done
check_contains "init writes workers = auto" "workers         = auto" "$(cat "$WORK/state/tlsmint.conf")"
mkdir -p "$WORK/run"

# conf NAME CTL: init's config, SoftHSM behind faultp11 driven by control file CTL
conf() {
    local c="$WORK/$1.conf"
    cp "$WORK/state/tlsmint.conf" "$c"
    set_conf "$c" listen explicit "127.0.0.1:$(free_port)"
    set_conf "$c" listen transparent ""
    set_conf "$c" upstream ca_file "$WORK/origin/root.pem"
    set_conf "$c" log access "$WORK/$1.access"
    set_conf "$c" admin socket "$WORK/run/$1.sock"
    set_conf "$c" admin metrics ""
    printf "\n[hsm]\nmodule = %s\nenv = FAULTP11_MODULE=/usr/lib/softhsm/libsofthsm2.so\nenv = FAULTP11_CONTROL=%s\n" \
        "$FAULTP11" "$2" >>"$c"
    echo "$c"
}
proxy_of() { sed -n 's/^explicit = //p' "$1" | tail -1; }
# lg CONF OUT.json ARGS...: the mint scenario through CONF's explicit listener
lg() {
    local c=$1 out=$2
    shift 2
    "$LG" mint --proxy "$(proxy_of "$c")" --connect "127.0.0.1:$OPORT" --connect-host 127.0.0.1 \
        --cafile "$CA" --path /index.html --threads 1 -q --json "$@" >"$out" 2>"$out.err"
}
jget() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$@"; }
workers_now() { "$TLSMINT" -c "$1" ctl hsm 2>/dev/null | sed -n 's/^  workers *\([0-9]*\) sessions.*/\1/p' | head -1; }
ms_now() { date +%s%3N; }

if part sweep; then
echo "== sweep: $SWEEP_HOSTS new hosts at concurrency 64 per latency"
declare -A CPS WMAX
for L in 0 10 50; do
    CTL="$WORK/sweep$L.ctl"
    echo "latency_ms=$L" >"$CTL"
    c=$(conf "sweep$L" "$CTL")
    start_tlsmint "$c" "$WORK/sweep$L.log" || exit 1
    (while :; do workers_now "$c"; sleep 0.2; done) >"$WORK/sweep$L.workers" 2>/dev/null &
    sampler=$!
    lg "$c" "$WORK/sweep$L.json" --host-pattern 'h%d.bench.test' --count "$SWEEP_HOSTS" --concurrency 64
    kill "$sampler"; wait "$sampler" 2>/dev/null
    ok=$(jget "$WORK/sweep$L.json" 'j["ok"]')
    CPS[$L]=$(jget "$WORK/sweep$L.json" 'j["conn_per_s"]')
    WMAX[$L]=$(sort -n "$WORK/sweep$L.workers" | tail -1)
    echo "  $L ms: $ok/$SWEEP_HOSTS ok, ${CPS[$L]} conn/s, up to ${WMAX[$L]:-?} workers;" \
        "errors $(jget "$WORK/sweep$L.json" 'j["errors"]') $(jget "$WORK/sweep$L.json" 'j["first_errors"]')"
    # the issue's >= 99.5 % is bench/hsm-latency.sh's (2,000 hosts, release build); here, under
    # ASan on a machine shared by many jobs (load averages of 30 on 2 cores were seen), 97 %
    check "sweep $L ms: >= 97 % of $SWEEP_HOSTS connections ok ($ok)" \
        test $((ok * 100)) -ge $((SWEEP_HOSTS * 97))
    kill -TERM "$TLSMINT_PID"; wait "$TLSMINT_PID"
    check_eq "sweep $L ms: clean exit" "0" "$?"
done
check "sweep: at 50 ms conn/s does not collapse (${CPS[50]} vs ${CPS[0]} at 0 ms, >= 0.3x; the 0.9x figure is bench/hsm-latency.sh's)" \
    python3 -c "import sys; sys.exit(not float('${CPS[50]}') >= 0.3 * float('${CPS[0]}'))"
check "sweep: more sessions at 50 ms (${WMAX[50]:-?}) than at 0 ms (${WMAX[0]:-?})" \
    test "${WMAX[50]:-0}" -gt "${WMAX[0]:-99}"
check_contains "sweep: ctl hsm said why it grew" "workers 2 -> " "$(cat "$WORK/sweep50.log")"
fi

if part step; then
echo "== step: 0 -> 20 ms -> 0 during the load"
CTL="$WORK/step.ctl"
echo "latency_ms=0" >"$CTL"
c=$(conf step "$CTL")
# A connection fails here when a job is lost or refused while the workers change, or when a
# signature misses its deadline. At the default 250 ms, 16 handshakes queued on 2 sessions at
# 20 ms plus an ASan signature's CPU on a loaded machine come close to it before the count has
# grown (29 alerts at the step once in a full make test): the deadline is 1 s in this part, so
# what fails it is a lost or refused job; how fast the count follows is the 2 s bounds' job.
set_conf "$c" hsm sign_timeout_ms 1000
start_tlsmint "$c" "$WORK/step.log" || exit 1
(while :; do echo "$(ms_now) $(workers_now "$c")"; sleep 0.1; done) >"$WORK/step.workers" 2>/dev/null &
sampler=$!
lg "$c" "$WORK/step.json" --host-pattern 'h%d.bench.test' --first 301 --count 1700 \
    --requests 1700 --concurrency 8 --duration 30 &
lgpid=$!
# the steps are timed from the first connection done, not from the load generator's start, 2 s and
# 2.5 s apart, with 8 connections at a time, so that the 1,700 hosts (h301-h2000: the names there
# are) outlast the step down (at 16 and 3 s + 3 s they were all done 2 ms before it on a fast machine);
# --duration is far away, since a cut-off
# would count the connections in flight as failed
wait_for 100 test -s "$WORK/step.access"
sleep 2; TUP=$(ms_now); echo "latency_ms=20" >"$CTL"
sleep 2.5; TDOWN=$(ms_now); echo "latency_ms=0" >"$CTL"
wait "$lgpid"
TEND=$(ms_now)
sleep 0.5
kill "$sampler"; wait "$sampler" 2>/dev/null
att=$(jget "$WORK/step.json" 'j["attempted"]')
failed=$(jget "$WORK/step.json" 'j["failed"]')
echo "  $att connections, $failed failed ($(jget "$WORK/step.json" 'j["first_errors"]'));" \
    "workers (ctl, every 0.1 s): $(awk '{print $2}' "$WORK/step.workers" | uniq | tr '\n' ' ')"
check "step: the load ran through both steps ($att connections)" test "$att" -ge 100
check_eq "step: no failed connection" "0" "$failed"
check "step: the load was still running after the step down (for $((TEND - TDOWN)) ms, $att of 1700 new hosts)" \
    test $((TEND - TDOWN)) -ge 500
# the worker count over time from the proxy's log ("member hsm: workers 2 -> 7 (...)", each line
# stamped when the change was made, however slow a ctl sampler is): how long after TUP it was
# above workers_min, and how long after TDOWN it was back at it
read -r up_at down_at <<<"$(python3 - "$WORK/step.log" "$TUP" "$TDOWN" <<'EOF'
import datetime, re, sys
ch = []
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"(\S+)Z \S+ \S+ hsm: member hsm: workers (\d+) -> (\d+) ", line)
    if m:
        t = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f")
        t = t.replace(tzinfo=datetime.timezone.utc)
        ch.append((round(t.timestamp() * 1000), int(m.group(2)), int(m.group(3))))
def count_at(t):
    n = ch[0][1] if ch else 2
    for tc, _, b in ch:
        if tc <= t:
            n = b
    return n
def after(t0, ok):
    if ok(count_at(t0)):
        return "0"
    for tc, _, b in ch:
        if tc >= t0 and ok(b):
            return str(tc - t0)
    return "never"
print(after(int(sys.argv[2]), lambda n: n >= 3), after(int(sys.argv[3]), lambda n: n <= 2))
EOF
)"
within() { case "$1" in '' | *[!0-9]*) return 1 ;; esac; [ "$1" -le "$2" ]; }
check "step up: more than workers_min within 2 s of the latency going to 20 ms (${up_at:-?} ms)" \
    within "${up_at:-}" 2000
check "step down: back to workers_min within 2 s of the latency going to 0 (${down_at:-?} ms)" \
    within "${down_at:-}" 2000
h=$("$TLSMINT" -c "$c" ctl hsm 2>&1)
check_contains "step: ctl hsm shows auto sizing and the reason of the last change" "(auto, 2-64); last change" "$h"
check_contains "step: the last change was a shrink when idle" "shrink" "$h"
m=$("$TLSMINT" -c "$c" ctl metrics 2>&1)
check_contains "step: metrics carry the worker count" 'tlsmint_hsm_workers{member="hsm"} 2' "$m"
check_contains "step: metrics count the grows" 'tlsmint_hsm_workers_changes_total{member="hsm",direction="grow"}' "$m"
kill -TERM "$TLSMINT_PID"; wait "$TLSMINT_PID"
check_eq "step: clean exit" "0" "$?"
check_not_contains "step: no sanitizer report" "Sanitizer" "$(cat "$WORK/step.log")"
fi

if part ha; then
echo "== HA: member hsm at 2 ms, member slow at 30 ms"
echo "latency_ms=2" >"$WORK/fast.ctl"
echo "latency_ms=30" >"$WORK/slow.ctl"
c=$(conf ha "$WORK/fast.ctl")
printf "\n[hsm.slow]\nmodule = %s\nenv = FAULTP11_MODULE=/usr/lib/softhsm/libsofthsm2.so\nenv = FAULTP11_CONTROL=%s\nenv = SOFTHSM2_CONF=%s\ntoken = tlsmint\npin_file = %s\nkey_label = forward-trust\n" \
    "$FAULTP11" "$WORK/slow.ctl" "$SOFTHSM2_CONF" "$WORK/state/hsm/pin" >>"$c"
start_tlsmint "$c" "$WORK/ha.log" || exit 1
for _ in $(seq 1 50); do
    [ "$("$TLSMINT" -c "$c" ctl hsm 2>&1 | grep -c ': up (')" = 2 ] && break
    sleep 0.1
done
lg "$c" "$WORK/ha.json" --host-pattern 'h%d.bench.test' --count "$SWEEP_HOSTS" --concurrency 64
ok=$(jget "$WORK/ha.json" 'j["ok"]')
check_eq "HA: every connection ok" "$SWEEP_HOSTS" "$ok"
h=$("$TLSMINT" -c "$c" ctl hsm 2>&1)
fast=$(echo "$h" | awk '/^member hsm:/ { f = 1 } /^member slow:/ { f = 0 } f && /operations/ { print $2; exit }')
slow=$(echo "$h" | awk '/^member slow:/ { f = 1 } f && /operations/ { print $2; exit }')
echo "  signatures: fast member $fast, slow member $slow"
check "HA: the 2 ms member signed most ($fast vs $slow)" test "${fast:-0}" -gt $((2 * ${slow:-0}))
check "HA: both members signed at all (fast $fast)" test "${fast:-0}" -gt 0
kill -TERM "$TLSMINT_PID"; wait "$TLSMINT_PID"
check_eq "HA: clean exit" "0" "$?"
fi

if part admission; then
echo "== admission: workers = 1 at 100 ms, more new hosts than it can sign"
CTL="$WORK/adm.ctl"
: >"$CTL"
c=$(conf adm "$CTL")
set_conf "$c" hsm workers 1
start_tlsmint "$c" "$WORK/adm.log" || exit 1
seq 1 4 | sed 's/^/h/; s/$/.bench.test/' >"$WORK/hot.txt"
lg "$c" "$WORK/warm.json" --hosts "$WORK/hot.txt" --concurrency 1
check_eq "admission: hot hosts minted before the load" "4" "$(jget "$WORK/warm.json" 'j["ok"]')"
echo "latency_ms=100" >"$CTL"
lg "$c" "$WORK/hits.json" --hosts "$WORK/hot.txt" --requests 300 --concurrency 4 &
hitpid=$!
lg "$c" "$WORK/miss.json" --host-pattern 'h%d.bench.test' --first 5 --count 200 --concurrency 32
wait "$hitpid"
hits_ok=$(jget "$WORK/hits.json" 'j["ok"]')
miss_ok=$(jget "$WORK/miss.json" 'j["ok"]')
miss_tls=$(jget "$WORK/miss.json" 'j["errors"]["tls"]')
echo "  misses: $miss_ok ok, $miss_tls refused; hits: $hits_ok/300 ok"
check_eq "admission: every cache hit served" "300" "$hits_ok"
check "admission: some misses signed ($miss_ok)" test "$miss_ok" -gt 0
check "admission: the rest refused with the proxy's alert ($miss_tls)" test "$miss_tls" -gt 0
h=$("$TLSMINT" -c "$c" ctl hsm 2>&1)
over=$(echo "$h" | sed -n 's/^refused *\([0-9]*\) overload.*/\1/p')
tmo=$(echo "$h" | sed -n 's/.* errors, \([0-9]*\) timeouts.*/\1/p')
echo "  overload $over, timeouts $tmo"
check "admission: refusals counted as overload ($over)" test "${over:-0}" -gt 0
check "admission: overload counted apart from timeouts ($over overload, $tmo timeouts)" \
    test "${over:-0}" -gt "${tmo:-0}"
check_contains "admission: metrics count overload apart" 'tlsmint_hsm_refused_total{reason="overload"}' \
    "$("$TLSMINT" -c "$c" ctl metrics 2>&1)"
# refused at once = no HSM wait; the few that were admitted and then missed the deadline
# (the estimate is one signature's time off under load) are the timeouts
waits=$(python3 - "$WORK/adm.access" <<'EOF'
import json, sys
fast = slow = 0
for line in open(sys.argv[1]):
    try:
        j = json.loads(line)
    except ValueError:
        continue
    if j.get("outcome") == "refused_hsm":
        if (j.get("hsm_wait_ms") or 0) <= 50:
            fast += 1
        else:
            slow += 1
print(fast, slow)
EOF
)
read -r fast_ref slow_ref <<<"$waits"
echo "  refused at once: $fast_ref, after waiting: $slow_ref"
# (under ASan on a busy machine a signature takes well over its 100 ms now and then, so some
# admitted jobs still time out; before admission control every refusal waited the deadline)
check "admission: at least 2/3 of the refusals were at once ($fast_ref of $((fast_ref + slow_ref)))" \
    test $((fast_ref * 3)) -ge $(((fast_ref + slow_ref) * 2))
check_contains "admission: the log names the reason" "HSM overloaded" "$(cat "$WORK/adm.log")"
kill -TERM "$TLSMINT_PID"; wait "$TLSMINT_PID"
check_eq "admission: clean exit" "0" "$?"
fi
if part recovery; then
echo "== recovery: one spell slower than the deadline, then a fast HSM again"
CTL="$WORK/rec.ctl"
echo "latency_ms=600" >"$CTL"
c=$(conf rec "$CTL")
start_tlsmint "$c" "$WORK/rec.log" || exit 1
# one at a time: each signature alone takes 600 ms, well past the 250 ms deadline (measured by the
# signer and learnt by the proxy when the late answer arrives)
lg "$c" "$WORK/slow.json" --host-pattern 'h%d.bench.test' --first 1500 --count 3 --concurrency 1
check_eq "recovery: signatures slower than the deadline fail" "0" "$(jget "$WORK/slow.json" 'j["ok"]')"
sleep 1 # the late answers arrive
echo "latency_ms=0" >"$CTL"
lg "$c" "$WORK/fast.json" --host-pattern 'h%d.bench.test' --first 1510 --count 20 --concurrency 1
fast_ok=$(jget "$WORK/fast.json" 'j["ok"]')
echo "  after the spell: $fast_ok of 20 new hosts ok; $("$TLSMINT" -c "$c" ctl hsm 2>&1 | grep '^refused')"
# before the fix the learnt 600 ms alone was past the deadline, so every job was refused as
# overload and no answer could bring the estimate down: 0 of 20
check "recovery: new hosts signed again once the HSM is fast ($fast_ok of 20)" test "$fast_ok" -ge 18
kill -TERM "$TLSMINT_PID"; wait "$TLSMINT_PID"
check_eq "recovery: clean exit" "0" "$?"
fi
check_not_contains "no sanitizer report" "Sanitizer" "$(cat "$WORK"/*.log)"

finish
