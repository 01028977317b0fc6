#!/bin/bash
# SPDX-License-Identifier: MIT
# test_systemd.sh - dist/tlsmint.service and what `tlsmint run` tells systemd: the unit passes
# `systemd-analyze verify` and its `systemd-analyze security` exposure stays low; run under a
# real sd_notify socket (a datagram socket made here, the NOTIFY_SOCKET protocol libsystemd
# speaks) sends READY=1 once the listeners accept and an HSM member is up, RELOADING=1 then
# READY=1 on SIGHUP and `ctl reload`, WATCHDOG=1 every half WATCHDOG_USEC, STOPPING=1 on
# SIGTERM; with stderr as the journal (JOURNAL_STREAM), lines carry <N> priorities and no time.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib2.sh"
SRC=$(cd "$(dirname "$0")/../.." && pwd)

command -v systemd-analyze >/dev/null || { echo "SKIP: no systemd-analyze"; exit 77; }

echo "== the unit file"
mkdir -p "$WORK/unit"
sed "s#/usr/bin/tlsmint#$TLSMINT#" "$SRC/dist/tlsmint.service" >"$WORK/unit/tlsmint.service"
out=$(cd "$WORK/unit" && systemd-analyze verify --man=no ./tlsmint.service 2>&1)
check_eq "systemd-analyze verify: clean" "0:" "$?:$out"
sec=$(cd "$WORK/unit" && systemd-analyze security --offline=yes ./tlsmint.service 2>&1)
level=$(echo "$sec" | sed -n 's/.*Overall exposure level for tlsmint.service: \([0-9.]*\).*/\1/p')
echo "  systemd-analyze security: exposure $level"
check "exposure level at most 2.5 (got '$level')" python3 -c "import sys; sys.exit(0 if float('$level' or 99) <= 2.5 else 1)"
for k in "Type=notify" "WatchdogSec=" "NoNewPrivileges=yes" "ProtectSystem=strict" \
    "StateDirectory=tlsmint" "RuntimeDirectory=tlsmint" "PrivateTmp=yes" "ProtectHome=yes" \
    "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE" "LimitNOFILE=1048576"; do
    check_contains "unit has $k" "$k" "$(cat "$SRC/dist/tlsmint.service")"
done

echo "== sd_notify"
make_pki "$WORK/pki"
S="$WORK/state"
"$TLSMINT" init --dir "$S" >/dev/null || { echo "init failed"; exit 1; }
OPORT=$(free_port) PPORT=$(free_port)
start_nginx "$WORK/origin" "$OPORT" "$WORK/pki/origin.pem" "$WORK/pki/origin.key"
CONF="$S/tlsmint.conf"
set_conf "$CONF" listen explicit "127.0.0.1:$PPORT"
set_conf "$CONF" listen transparent ""
set_conf "$CONF" upstream ca_file "$WORK/pki/root.pem"
set_conf "$CONF" admin metrics ""
set_conf "$CONF" ca reminder_days 3650 # the 10-year CA is within it: one warning at start
NSOCK="$WORK/notify.sock"
python3 - "$NSOCK" "$WORK/notify.log" <<'PY' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(60)
with open(sys.argv[2], "a", buffering=1) as f:
    while True:
        try:
            m = s.recv(4096).decode()
        except socket.timeout:
            break
        for line in m.split("\n"):
            f.write("%.3f %s\n" % (time.time(), line))
PY
PIDS+=($!)
for _ in $(seq 1 50); do [ -S "$NSOCK" ] && break; sleep 0.05; done
: >"$WORK/notify.log"
: >"$WORK/err.log"
JS=$(stat -c '%d:%i' "$WORK/err.log")
NOTIFY_SOCKET="$NSOCK" WATCHDOG_USEC=400000 JOURNAL_STREAM="$JS" \
    bash -c 'export WATCHDOG_PID=$$; exec "$0" -c "$1" run' "$TLSMINT" "$CONF" 2>>"$WORK/err.log" >/dev/null &
TLSMINT_PID=$!
PIDS+=($TLSMINT_PID)
wait_msg() { # wait_msg PATTERN [SECS]: waits for a notify line
    for _ in $(seq 1 $((${2:-10} * 20))); do
        grep -q -- "$1" "$WORK/notify.log" && return 0
        sleep 0.05
    done
    return 1
}
check "READY=1 arrives" wait_msg "READY=1" 20
out=$(curl -sS --max-time 10 --cacert "$S/ca/forward-trust.pem" -x "http://127.0.0.1:$PPORT" "https://localhost:$OPORT/index.html" 2>&1)
check_eq "once READY, the proxy serves" "hello-from-origin" "$out"
check_contains "STATUS: members up" "STATUS=explicit port $PPORT, transparent off, 1/1 HSM members up" "$(cat "$WORK/notify.log")"
sleep 1
check_num "WATCHDOG=1 every 200 ms (at least 3 in 1 s)" "$(grep -c 'WATCHDOG=1' "$WORK/notify.log")" -ge 3
# ready_after N: a READY=1 after the notify log's first N lines
ready_after() { tail -n +$(($1 + 1)) "$WORK/notify.log" | grep -q "READY=1"; }
n0=$(wc -l <"$WORK/notify.log")
kill -HUP "$TLSMINT_PID"
wait_for 50 ready_after "$n0"
after=$(tail -n +$((n0 + 1)) "$WORK/notify.log" | grep -v WATCHDOG | awk '{print $2}' | tr '\n' ' ')
check_contains "SIGHUP: RELOADING=1 then READY=1" "RELOADING=1 READY=1" "$after"
n0=$(wc -l <"$WORK/notify.log")
"$TLSMINT" -c "$CONF" ctl reload >/dev/null
wait_for 50 ready_after "$n0"
after=$(tail -n +$((n0 + 1)) "$WORK/notify.log" | grep -v WATCHDOG | awk '{print $2}' | tr '\n' ' ')
check_contains "ctl reload: RELOADING=1 then READY=1" "RELOADING=1 READY=1" "$after"
kill -TERM "$TLSMINT_PID"; wait "$TLSMINT_PID"
check_eq "SIGTERM: exit 0" "0" "$?"
check "STOPPING=1" wait_msg "STOPPING=1" 2

echo "== journal format"
log=$(cat "$WORK/err.log")
check_contains "info lines carry <6>" "<6>tlsmint[$TLSMINT_PID] main: tlsmint running" "$log"
check_contains "warnings carry <4>" "<4>tlsmint[$TLSMINT_PID] main: certificate forward-trust" "$log"
check_eq "no timestamps of our own" "0" "$(grep -c '^20[0-9][0-9]-' "$WORK/err.log")"
check_eq "every line has a priority" "0" "$(grep -vc '^<[0-7]>' "$WORK/err.log")"
finish
