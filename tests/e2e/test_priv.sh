#!/bin/bash
# SPDX-License-Identifier: MIT
# test_priv.sh - [run] user: started as root, the proxy binds, then runs as 'nobody' with no
# capability, or only CAP_NET_ADMIN (in its loop threads) when [upstream] mark needs it; /proc
# shows uid, groups and capability sets of every thread. Interception, reload (with new CA
# material: the unwrap child runs as nobody too), ctl (as root and as nobody) and a signer
# respawned after SIGKILL (it signs a new leaf) still work. The decrypted-traffic pcap files
# are created by that user (a directory it owns: its files, 0600; a directory it cannot write:
# an error logged once, interception goes on).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib2.sh"

[ "$(id -u)" = 0 ] || { echo "SKIP: needs root"; exit 77; }
NOBODY_UID=$(id -u nobody 2>/dev/null) || { echo "SKIP: no user nobody"; exit 77; }
runuser -u nobody -- test -x "$TLSMINT" || { echo "SKIP: nobody cannot run $TLSMINT"; exit 77; }

make_pki "$WORK/pki"
S="$WORK/state"
"$TLSMINT" init --dir "$S" >/dev/null || { echo "init failed"; exit 1; }
OPORT=$(free_port) O2PORT=$(free_port) PPORT=$(free_port) MPORT=$(free_port)
start_nginx "$WORK/origin" "$OPORT" "$WORK/pki/origin.pem" "$WORK/pki/origin.key"
start_nginx "$WORK/origin2" "$O2PORT" "$WORK/pki/origin2.pem" "$WORK/pki/origin2.key"
CONF="$S/tlsmint.conf"
set_conf "$CONF" listen explicit "127.0.0.1:$PPORT"
set_conf "$CONF" listen transparent ""
set_conf "$CONF" listen threads 2
set_conf "$CONF" upstream ca_file "$WORK/pki/root.pem"
set_conf "$CONF" admin socket "$WORK/run/admin.sock"
set_conf "$CONF" admin metrics "127.0.0.1:$MPORT"
set_conf "$CONF" run user nobody
# the state belongs to the user: signers (first and respawned) read the token and PIN as nobody
chown -R nobody:nogroup "$S"
# so does the pcap directory: every file is created after the switch
mkdir -m 700 "$WORK/pcap" "$WORK/pcap-root"
chown nobody:nogroup "$WORK/pcap"
set_conf "$CONF" export pcap "$WORK/pcap/dec-%Y%m%d-%H%M%S.pcap"
CA="$S/ca/forward-trust.pem"
PROXY="http://127.0.0.1:$PPORT"

field() { awk -v k="$1:" '$1 == k { $1 = ""; sub(/^ /, ""); print; exit }' "$2"; }
# caps_of PID: "tid=CapPrm/CapEff" for every thread
caps_of() {
    local t
    for t in /proc/"$1"/task/*; do
        echo "$(basename "$t")=$(field CapPrm "$t/status")/$(field CapEff "$t/status")"
    done
}
signer_pid() { pgrep -P "$TLSMINT_PID" -f __signer | head -n 1; }

echo "== [run] user = nobody, no mark: no capability at all"
# started with supplementary groups (adm, sudo), so that clearing them is visible
setpriv --groups=4,27 "$TLSMINT" -c "$CONF" run >"$WORK/tlsmint.log" 2>&1 &
TLSMINT_PID=$!
PIDS+=($TLSMINT_PID)
for _ in $(seq 1 200); do
    grep -q "tlsmint running" "$WORK/tlsmint.log" && break
    kill -0 "$TLSMINT_PID" 2>/dev/null || break
    sleep 0.05
done
grep -q "tlsmint running" "$WORK/tlsmint.log" || { echo "tlsmint did not start:"; cat "$WORK/tlsmint.log"; exit 1; }
st=/proc/$TLSMINT_PID/status
check_eq "uid (real, effective, saved, fs) is nobody" "$NOBODY_UID $NOBODY_UID $NOBODY_UID $NOBODY_UID" "$(field Uid "$st" | tr '\t' ' ' | tr -s ' ')"
check_eq "gid is nogroup" "$(id -g nobody)" "$(field Gid "$st" | awk '{print $1}')"
check_eq "no supplementary groups (started with 4 27)" "" "$(field Groups "$st")"
allcaps=$(caps_of "$TLSMINT_PID")
check_not_contains "no thread has a capability" "=0000003" "$allcaps"
check "every thread: CapPrm/CapEff empty" test -z "$(echo "$allcaps" | grep -v '=0000000000000000/0000000000000000$')"
check_contains "log says so" "running as nobody (uid $NOBODY_UID, gid $(id -g nobody)), capabilities: none" "$(cat "$WORK/tlsmint.log")"
out=$(curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" "https://localhost:$OPORT/index.html" 2>&1)
check_eq "interception works" "hello-from-origin" "$out"
sp=$(signer_pid)
check_eq "the signer runs as nobody" "$NOBODY_UID" "$(field Uid /proc/"$sp"/status | awk '{print $1}')"
check_eq "the signer has no capability" "0000000000000000" "$(field CapPrm /proc/"$sp"/status)"
kill -TERM "$TLSMINT_PID"; wait "$TLSMINT_PID"
check_eq "clean exit" "0" "$?"
pcaps=("$WORK"/pcap/dec-*.pcap)
check_eq "the pcap file belongs to nobody, 0600" "nobody 600" "$(stat -c '%U %a' "${pcaps[0]}")"
check_num "and holds the intercepted connection (bytes past the header)" \
    "$(stat -c %s "${pcaps[0]}")" -gt 500
# the next phase: a pcap directory nobody cannot write
set_conf "$CONF" export pcap "$WORK/pcap-root/dec-%Y%m%d-%H%M%S.pcap"

echo "== with [upstream] mark: CAP_NET_ADMIN kept, nothing else"
set_conf "$CONF" upstream mark 0x42
start_tlsmint "$CONF" "$WORK/tlsmint2.log" || exit 1
st=/proc/$TLSMINT_PID/status
check_eq "uid is nobody" "$NOBODY_UID" "$(field Uid "$st" | awk '{print $1}')"
check_eq "bounding set: CAP_NET_ADMIN only" "0000000000001000" "$(field CapBnd "$st")"
allcaps=$(caps_of "$TLSMINT_PID")
check "threads hold CAP_NET_ADMIN or nothing" test -z "$(echo "$allcaps" | grep -v -e '=0000000000001000/0000000000001000$' -e '=0000000000000000/0000000000000000$')"
check_num "the two loop threads (and main) hold CAP_NET_ADMIN" "$(echo "$allcaps" | grep -c '=0000000000001000/0000000000001000$')" -ge 2
check_contains "log says why" "capabilities: CAP_NET_ADMIN ([listen] tproxy or [upstream] mark)" "$(cat "$WORK/tlsmint2.log")"
out=$(curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" "https://localhost:$OPORT/index.html" 2>&1)
check_eq "interception works" "hello-from-origin" "$out"
check_not_contains "SO_MARK was allowed" "SO_MARK" "$(cat "$WORK/tlsmint2.log")"
check_eq "a pcap directory the user cannot write: one error line" "1" \
    "$(grep -c 'cannot create the pcap file .*Permission denied' "$WORK/tlsmint2.log")"
check_eq "no file in it" "" "$(ls "$WORK/pcap-root")"

echo "== ctl, as root and as nobody"
check_contains "ctl status (root)" "1/1 members up" "$("$TLSMINT" -c "$CONF" ctl status 2>&1)"
check_contains "ctl status (nobody)" "1/1 members up" "$(runuser -u nobody -- "$TLSMINT" -c "$CONF" ctl status 2>&1)"
check_eq "admin socket belongs to nobody, 0600" "nobody 600" "$(stat -c '%U %a' "$WORK/run/admin.sock")"

echo "== reload with new CA material (the unwrap child runs as nobody)"
touch "$S/ca/forward-untrust.pem"
out=$("$TLSMINT" -c "$CONF" ctl reload 2>&1)
check_contains "ctl reload" "new CA material and an empty leaf cache" "$out"
n=$(grep -c "reloaded $CONF" "$WORK/tlsmint2.log")
kill -HUP "$TLSMINT_PID"
wait_for 50 eval '[ "$(grep -c "reloaded $CONF" "$WORK/tlsmint2.log")" -gt "$n" ]'
check_contains "SIGHUP reload" "reloaded $CONF" "$(tail -n 3 "$WORK/tlsmint2.log")"

echo "== signer respawn"
sp=$(signer_pid)
kill -9 "$sp"
new=""
for _ in $(seq 1 100); do
    new=$(signer_pid)
    if [ -n "$new" ] && [ "$new" != "$sp" ] && "$TLSMINT" -c "$CONF" ctl hsm 2>/dev/null | grep -q "member hsm: up"; then
        break
    fi
    sleep 0.1
done
check "a new signer was started" test -n "$new" -a "$new" != "$sp"
check_eq "the respawned signer runs as nobody" "$NOBODY_UID" "$(field Uid /proc/"$new"/status | awk '{print $1}')"
check_contains "ctl hsm: up again" "member hsm: up" "$("$TLSMINT" -c "$CONF" ctl hsm 2>&1)"
out=$(curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" "https://localhost:$O2PORT/index.html" 2>&1)
check_eq "a new upstream certificate is minted through the respawned signer" "hello-from-origin" "$out"
check_contains "ctl hsm: one respawn" "1 respawns" "$("$TLSMINT" -c "$CONF" ctl hsm 2>&1)"
kill -TERM "$TLSMINT_PID"; wait "$TLSMINT_PID"
check_eq "clean exit" "0" "$?"

echo "== a user that does not exist"
set_conf "$CONF" run user no-such-user-$$
out=$(timeout 30 "$TLSMINT" -c "$CONF" run 2>&1)
check "run refuses" test $? -eq 1
check_contains "with a clear error" "[run] user: no such user 'no-such-user-$$'" "$out"
finish
