#!/bin/bash
# SPDX-License-Identifier: MIT
# test_signals.sh - signals to a running proxy, as logrotate, config-management tools, systemd
# and a terminal send them: a burst of 300 SIGHUPs, 100 `ctl reload`s under curl traffic,
# SIGHUPs that arrive during a reload (coalesced into one more reload), and SIGTERM in the middle
# of a reload (the reload finishes, then the usual drain, exit 0, final log lines).
# A reload is held in progress deterministically: [upstream] ca_file points at a FIFO, so the
# main thread blocks reading the trust store until the test writes it.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib2.sh"

echo "== setup"
make_pki "$WORK/pki"
"$TLSMINT" init --dir "$WORK/state" >/dev/null || { echo "init failed"; exit 1; }
OPORT=$(free_port)
PPORT=$(free_port)
start_nginx "$WORK/origin" "$OPORT" "$WORK/pki/origin.pem" "$WORK/pki/origin.key"
# a trust store of realistic size (the system bundle plus the test root): every reload loads it,
# which keeps the main thread busy long enough for signals to arrive during a reload
TRUST="$WORK/trust.pem"
cat /etc/ssl/certs/ca-certificates.crt "$WORK/pki/root.pem" >"$TRUST"
CONF="$WORK/state/tlsmint.conf"
set_conf "$CONF" listen explicit "127.0.0.1:$PPORT"
set_conf "$CONF" listen transparent ""
set_conf "$CONF" listen threads 2
set_conf "$CONF" upstream ca_file "$TRUST"
set_conf "$CONF" log access "$WORK/access.log"
set_conf "$CONF" admin socket "$WORK/run/admin.sock"
set_conf "$CONF" admin metrics ""
LOG="$WORK/tlsmint.log"
start_tlsmint "$CONF" "$LOG" || exit 1
CA="$WORK/state/ca/forward-trust.pem"
PROXY="http://127.0.0.1:$PPORT"
serving "baseline"
SIGNERS=$(pgrep -P "$TLSMINT_PID" | sort | tr '\n' ' ')

echo "== signal masks and dispositions"
# sigmask FILE FIELD: the hex mask of a /proc status field (SigBlk, SigIgn)
sigmask() { awk -v f="$2:" '$1 == f { print $2 }' "$1"; }
HUP_INT_TERM=$(((1 << 0) | (1 << 1) | (1 << 14)))
nthr=0 unblocked=0
for t in /proc/"$TLSMINT_PID"/task/*; do
    # the main thread is the one that takes them: sigwaitinfo unblocks them while it waits
    [ "$t" = "/proc/$TLSMINT_PID/task/$TLSMINT_PID" ] && continue
    nthr=$((nthr + 1))
    m=$((16#$(sigmask "$t/status" SigBlk)))
    [ $((m & HUP_INT_TERM)) -eq "$HUP_INT_TERM" ] || unblocked=$((unblocked + 1))
done
check_eq "SIGHUP, SIGINT and SIGTERM are blocked in all $nthr other proxy threads" "0" "$unblocked"
for p in $SIGNERS; do
    check_eq "signer $p: no signal blocked (not the proxy's mask)" "0" "$((16#$(sigmask /proc/"$p"/status SigBlk)))"
    ign=$((16#$(sigmask /proc/"$p"/status SigIgn)))
    check_eq "signer $p: ignores SIGHUP, SIGINT, SIGTERM (the proxy's to handle)" "$HUP_INT_TERM" "$((ign & HUP_INT_TERM))"
done

reloads() { grep -c "main: reloaded " "$LOG"; }
# stop_if_dead: when the proxy has died, says how and ends the test
stop_if_dead() {
    kill -0 "$TLSMINT_PID" 2>/dev/null && return 0
    wait "$TLSMINT_PID"
    bad "the proxy died (exit status $?), last log lines:"
    tail -n 3 "$LOG"
    finish
    exit 1
}
# settle_reloads: waits (at most 30 s) until no reload has been logged for 1 s, prints the count
settle_reloads() {
    local prev=-1 cur same=0
    for _ in $(seq 1 150); do
        cur=$(reloads)
        if [ "$cur" = "$prev" ]; then
            same=$((same + 1))
            [ "$same" -ge 5 ] && break
        else
            same=0
        fi
        prev=$cur
        sleep 0.2
    done
    echo "$cur"
}
# fifo_open_in_proxy: waits (at most 10 s) until the proxy has $FIFO open
fifo_open_in_proxy() {
    for _ in $(seq 1 200); do
        for f in /proc/"$TLSMINT_PID"/fd/*; do
            [ "$(readlink "$f" 2>/dev/null)" = "$FIFO" ] && return 0
        done
        sleep 0.05
    done
    return 1
}
# traffic ID: curl requests through the proxy until $WORK/stop exists; writes "OK BAD" to
# $WORK/traffic.ID
traffic() {
    local ok=0 bad=0 out
    while [ ! -e "$WORK/stop" ]; do
        out=$(curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" "https://localhost:$OPORT/index.html" 2>&1)
        if [ "$out" = "hello-from-origin" ]; then
            ok=$((ok + 1))
        else
            bad=$((bad + 1))
            echo "$out" >>"$WORK/traffic.err"
        fi
    done
    echo "$ok $bad" >"$WORK/traffic.$1"
}

echo "== 300 SIGHUPs in a burst"
python3 - "$TLSMINT_PID" <<'PY'
import os, signal, sys, time
pid = int(sys.argv[1])
for i in range(300):
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print("     the proxy died after %d SIGHUPs" % i)
        break
    time.sleep(0.005 if i % 3 else 0)
PY
n1=$(settle_reloads)
echo "     $n1 reloads for 300 SIGHUPs"
check "the proxy survives 300 SIGHUPs" kill -0 "$TLSMINT_PID"
check "SIGHUPs reloaded the configuration ($n1 reloads)" test "${n1:-0}" -ge 1
check "SIGHUPs that arrive during a reload are coalesced (${n1:-0} reloads <= 300)" test "${n1:-999}" -le 300
check_eq "no reload was refused" "0" "$(grep -c "reload refused" "$LOG")"
serving "after 300 SIGHUPs"
stop_if_dead

echo "== 100 'ctl reload's while curl traffic runs"
set_conf "$CONF" upstream ca_file "$WORK/pki/root.pem" # quicker reloads: the test stays short
rm -f "$WORK/stop"
traffic 1 &
T1=$!
traffic 2 &
T2=$!
failed=0
for i in $(seq 1 100); do
    if ! "$TLSMINT" -c "$CONF" ctl reload >"$WORK/ctl.out" 2>&1; then
        failed=$((failed + 1))
        [ "$failed" -le 3 ] && echo "     ctl reload $i: $(head -c 300 "$WORK/ctl.out")"
    fi
    kill -0 "$TLSMINT_PID" 2>/dev/null || break
done
touch "$WORK/stop"
wait "$T1" "$T2"
check_eq "100 ctl reloads succeed" "0" "$failed"
check "the proxy survives 100 ctl reloads" kill -0 "$TLSMINT_PID"
read -r ok1 bad1 <"$WORK/traffic.1"
read -r ok2 bad2 <"$WORK/traffic.2"
echo "     traffic during the reloads: $((ok1 + ok2)) requests ok, $((bad1 + bad2)) failed"
check "traffic ran during the reloads ($((ok1 + ok2)) requests)" test $((ok1 + ok2)) -ge 20
check_eq "every request during the reloads got the origin's body" "0" "$((bad1 + bad2))"
[ -s "$WORK/traffic.err" ] && head -n 3 "$WORK/traffic.err"
n2=$(settle_reloads)
check "every ctl reload reloaded ($((n2 - n1)) reloads)" test $((n2 - n1)) -ge 100
serving "after 100 ctl reloads"
stop_if_dead
check_eq "the signer processes were not disturbed" "$SIGNERS" "$(pgrep -P "$TLSMINT_PID" | sort | tr '\n' ' ')"
# a signer the dispatcher thread respawns gets a clean mask too
kill -9 $SIGNERS
for _ in $(seq 1 100); do
    NEW=$(pgrep -P "$TLSMINT_PID" | sort | tr '\n' ' ')
    [ -n "$NEW" ] && [ "$NEW" != "$SIGNERS" ] && grep -q "member hsm: .* -> up" "$LOG" && break
    sleep 0.05
done
for p in $NEW; do
    check_eq "respawned signer $p: no signal blocked" "0" "$((16#$(sigmask /proc/"$p"/status SigBlk)))"
done
SIGNERS=$NEW
serving "after a signer respawn"

echo "== SIGHUPs during a reload: coalesced into one more reload"
FIFO="$WORK/trust.fifo"
mkfifo "$FIFO"
set_conf "$CONF" upstream ca_file "$FIFO"
base=$(reloads)
kill -HUP "$TLSMINT_PID"
exec 7<>"$FIFO" # the proxy's open succeeds; its read waits for what the test writes
check "the reload is in progress (the proxy reads the trust store FIFO)" fifo_open_in_proxy
for _ in $(seq 1 20); do
    kill -HUP "$TLSMINT_PID"
    sleep 0.01
done
sleep 0.5
check "20 SIGHUPs during the reload: the proxy is alive" kill -0 "$TLSMINT_PID"
check_eq "the reload is still in progress" "$base" "$(reloads)"
stop_if_dead
cat "$TRUST" >&7
exec 7>&-
for _ in $(seq 1 200); do [ "$(reloads)" -gt "$base" ] && break; sleep 0.05; done
check_eq "the first reload finished" "$((base + 1))" "$(reloads)"
# the coalesced reload opens the FIFO again: it now blocks until a writer appears
exec 7<>"$FIFO"
check "one more reload follows (it reads the FIFO again)" fifo_open_in_proxy

echo "== SIGTERM in the middle of that reload"
# a download that is still running when SIGTERM arrives: the drain must let it finish
curl -sS --max-time 20 --limit-rate 1500K --cacert "$CA" -x "$PROXY" \
    "https://localhost:$OPORT/big.bin" -o "$WORK/drained.bin" 2>"$WORK/drained.err" &
DL=$!
wait_for 50 test -s "$WORK/drained.bin" # the download is under way
kill -TERM "$TLSMINT_PID"
sleep 0.5
check "SIGTERM during a reload: the proxy is alive until the reload ends" kill -0 "$TLSMINT_PID"
check_eq "no drain yet: the reload is still in progress" "0" "$(grep -c "draining" "$LOG")"
stop_if_dead
cat "$TRUST" >&7
exec 7>&-
st=none
for _ in $(seq 1 300); do
    if ! kill -0 "$TLSMINT_PID" 2>/dev/null; then
        wait "$TLSMINT_PID"
        st=$?
        break
    fi
    sleep 0.05
done
check_eq "after SIGTERM the proxy drains and exits 0" "0" "$st"
wait "$DL"
check_eq "the download running at SIGTERM completes during the drain" "0" "$?"
check_eq "... intact" "$(sha256sum <"$WORK/origin/www/big.bin")" "$(sha256sum <"$WORK/drained.bin")"
check_eq "exactly one more reload after the coalesced SIGHUPs" "$((base + 2))" "$(reloads)"
tail_log=$(tail -n 6 "$LOG")
check_contains "final log: drain" "SIGTERM: draining connections" "$(cat "$LOG")"
check "final log: the reload ended before the drain began" test \
    "$(grep -n "main: reloaded " "$LOG" | tail -n 1 | cut -d: -f1)" -lt \
    "$(grep -n "draining connections" "$LOG" | cut -d: -f1)"
check_contains "final log: connection summary" "main: connections: " "$tail_log"
check_contains "final log: stopped" "main: stopped" "$(tail -n 1 "$LOG")"
left=$SIGNERS
for _ in $(seq 1 40); do
    left=$(for p in $SIGNERS; do kill -0 "$p" 2>/dev/null && echo "$p"; done)
    [ -z "$left" ] && break
    sleep 0.05
done
check_eq "no signer is left behind" "" "$left"
errs=$(grep -E "ERROR|runtime error|AddressSanitizer" "$LOG" | grep -v "hsm: member hsm lost: ")
[ -n "$errs" ] && echo "$errs" | head -n 5
check_eq "no errors in the proxy log (but the signer the test killed)" "" "$errs"
finish
