#!/bin/bash
# SPDX-License-Identifier: MIT
# test_outage.sh - what live traffic sees while the HSM goes away and comes back.
# HSMs: the fault-injecting PKCS#11 module (tests/faultp11) in front of SoftHSM, and a network
# HSM made of `p11-kit server` (killed = outage). For each outage: fail closed refuses cache
# misses within the deadline and still serves hits; fail open passes misses through with the
# origin's own certificate, and with [export] on only the intercepted connections are in the pcap
# (a failed-open one is still encrypted); after the HSM returns, new hosts are intercepted again
# within 2 s.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib2.sh"

FAULTP11=${FAULTP11_PATH:?FAULTP11_PATH must point at faultp11.so}
P11CLIENT=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so

echo "== setup"
make_pki "$WORK/pki"
"$TLSMINT" init --dir "$WORK/state" >/dev/null || { echo "init failed"; exit 1; }
CA="$WORK/state/ca/forward-trust.pem"
export SOFTHSM2_CONF="$WORK/state/hsm/softhsm2.conf"
OPORT=$(free_port)
start_nginx "$WORK/origin" "$OPORT" "$WORK/pki/origin.pem" "$WORK/pki/origin.key"
# one origin per distinct certificate: each new origin is a cache miss for the proxy
NEXT_HOST=0
# new_origin: a fresh origin in a directory of its own ($WORK/oN) with a certificate never seen
# before; its port in ORIGIN. Not in $(...): NEXT_HOST and PIDS must advance in this shell (in a
# subshell every origin was $WORK/o1, and no nginx was in PIDS).
new_origin() {
    NEXT_HOST=$((NEXT_HOST + 1))
    local d="$WORK/o$NEXT_HOST"
    ORIGIN=$(free_port)
    mkdir -p "$d"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/k.pem" -out "$d/c.csr" \
        -subj "/CN=localhost" 2>/dev/null
    openssl x509 -req -in "$d/c.csr" -CA "$WORK/pki/root.pem" -CAkey "$WORK/pki/root.key" \
        -CAcreateserial -out "$d/c.pem" -days 5 -extfile "$WORK/pki/ext.cnf" 2>/dev/null
    start_nginx "$d" "$ORIGIN" "$d/c.pem" "$d/k.pem" >/dev/null
}
CTL="$WORK/fault.ctl"
: >"$CTL"

# base_conf NAME: a config whose HSM is SoftHSM behind the fault module
base_conf() {
    local c="$WORK/$1.conf"
    cp "$WORK/state/tlsmint.conf" "$c"
    set_conf "$c" listen explicit "127.0.0.1:$(free_port)"
    set_conf "$c" listen transparent ""
    set_conf "$c" listen threads 1
    set_conf "$c" upstream ca_file "$WORK/pki/root.pem"
    set_conf "$c" log access "$WORK/$1.access"
    set_conf "$c" admin socket "$WORK/run/$1.sock"
    set_conf "$c" admin metrics ""
    set_conf "$c" hsm sign_timeout_ms 300
    set_conf "$c" hsm hang_timeout_ms 1500
    printf "\n[hsm]\nmodule = %s\nenv = FAULTP11_MODULE=/usr/lib/softhsm/libsofthsm2.so\nenv = FAULTP11_CONTROL=%s\n" \
        "$FAULTP11" "$CTL" >>"$c"
    echo "$c"
}
proxy_of() { sed -n 's/^explicit = //p' "$1" | tail -1; }
fetch() { # fetch CONF PORT CAFILE -> curl exit code; body in $WORK/body
    curl -sS --max-time 10 --cacert "$3" -x "http://$(proxy_of "$1")" "https://localhost:$2/index.html" \
        -o "$WORK/body" 2>"$WORK/curl.err"
}
issuer_of() { # issuer CN the client saw through CONF for PORT (no verification)
    curl -sS -v -k --max-time 10 -x "http://$(proxy_of "$1")" "https://localhost:$2/" -o /dev/null 2>&1 |
        sed -n 's/^\*  issuer: //p'
}
ms_now() { date +%s%3N; }

# outage_case NAME FAULT_ON FAULT_OFF: fail closed, then fail open, with one injected fault
outage_case() {
    local name=$1 on=$2 off=$3 conf pid hit miss t0 t1 rc port
    echo "== $name: fail closed"
    conf=$(base_conf "$name-closed")
    start_tlsmint "$conf" "$WORK/$name-closed.log" || return
    pid=$TLSMINT_PID
    new_origin; hit=$ORIGIN
    fetch "$conf" "$hit" "$CA"
    check_eq "$name: before the outage, interception works" "0" "$?"
    eval "$on"
    sleep 0.3
    new_origin; miss=$ORIGIN
    t0=$(ms_now)
    fetch "$conf" "$miss" "$CA"
    rc=$?
    t1=$(ms_now)
    check "$name: a cache miss is refused (curl $rc)" test "$rc" -ne 0
    check "$name: refused within the deadline, $((t1 - t0)) ms" test $((t1 - t0)) -lt 1500
    fetch "$conf" "$hit" "$CA"
    check_eq "$name: a cache hit is still served" "0" "$?"
    eval "$off"
    t0=$(ms_now)
    local back=1
    for _ in $(seq 1 40); do
        new_origin; port=$ORIGIN
        if fetch "$conf" "$port" "$CA"; then back=0; break; fi
        sleep 0.05
    done
    t1=$(ms_now)
    check_eq "$name: new hosts are intercepted again after the HSM returns" "0" "$back"
    check "$name: back within 2 s ($((t1 - t0)) ms)" test $((t1 - t0)) -lt 2000
    kill -TERM "$pid"; wait "$pid"
    check_eq "$name: clean exit" "0" "$?"
    check_not_contains "$name: no sanitizer report" "Sanitizer" "$(cat "$WORK/$name-closed.log")"

    echo "== $name: fail open"
    conf=$(base_conf "$name-open")
    set_conf "$conf" hsm fail_mode open
    # with export on: a failed-open connection's bytes are still encrypted, never exported
    mkdir -p "$WORK/$name-pcap"
    set_conf "$conf" export pcap "$WORK/$name-pcap/open-%Y%m%d-%H%M%S.pcap"
    start_tlsmint "$conf" "$WORK/$name-open.log" || return
    pid=$TLSMINT_PID
    new_origin; hit=$ORIGIN
    fetch "$conf" "$hit" "$CA"
    eval "$on"
    sleep 0.3
    new_origin; miss=$ORIGIN
    fetch "$conf" "$miss" "$WORK/pki/root.pem"
    check_eq "$name: a cache miss passes through, verified against the origin's own CA" "0" "$?"
    check_contains "$name: the client saw the origin's certificate" "tlsmint e2e root" "$(issuer_of "$conf" "$miss")"
    fetch "$conf" "$hit" "$CA"
    check_eq "$name: a cache hit is still intercepted" "0" "$?"
    eval "$off"
    back=1
    for _ in $(seq 1 40); do
        new_origin; port=$ORIGIN
        if fetch "$conf" "$port" "$CA"; then back=0; break; fi
        sleep 0.05
    done
    check_eq "$name: intercepted again after the HSM returns" "0" "$back"
    kill -TERM "$pid"; wait "$pid"
    check_eq "$name: clean exit" "0" "$?"
    check_eq "$name: access log: the failed-open connection was not exported" "no" \
        "$(jf export "$(grep "\"port\":$miss[,}]" "$WORK/$name-open.access" | head -1)")"
    local pcap ports
    pcap=$(ls "$WORK/$name-pcap"/open-*.pcap | head -1)
    ports=$(tshark -r "$pcap" -T fields -e tcp.dstport -Y "tcp.flags.syn == 1 && tcp.flags.ack == 0" 2>/dev/null | sort -u | tr '\n' ' ')
    check_contains "$name: the intercepted hit is in the export" " $hit " " $ports"
    check_not_contains "$name: the failed-open miss is not ($ports)" " $miss " " $ports"
    check_not_contains "$name: no sanitizer report" "Sanitizer" "$(cat "$WORK/$name-open.log")"
}

outage_case device_error "echo fail=CKR_DEVICE_ERROR >$CTL" ": >$CTL"
outage_case hang "echo hang=1 >$CTL" ": >$CTL"
outage_case gone "echo down=1 >$CTL" ": >$CTL"

echo "== operator clears all HSM sessions"
conf=$(base_conf clear)
start_tlsmint "$conf" "$WORK/clear.log" || exit 1
new_origin; port=$ORIGIN
fetch "$conf" "$port" "$CA"
check_eq "interception works" "0" "$?"
out=$("$TLSMINT" -c "$conf" ctl clear-hsm-sessions 2>&1)
check_contains "ctl clear-hsm-sessions answers" "clearing every HSM session" "$out"
sleep 0.3
ok_after=1
for _ in 1 2 3; do
    new_origin; port=$ORIGIN
    fetch "$conf" "$port" "$CA" && ok_after=0
done
check_eq "new hosts are minted after the sessions were cleared" "0" "$ok_after"
check_contains "the signer logged the reset" "operator reset: C_CloseAllSessions CKR_OK" "$(cat "$WORK/clear.log")"
check_contains "workers reopened their sessions" "reopening session and logging in again" "$(cat "$WORK/clear.log")"
echo "reset=1" >"$CTL" # the HSM side drops every session it had (as a partition reset does)
sleep 0.2
new_origin; port=$ORIGIN
fetch "$conf" "$port" "$CA"
check_eq "HSM-side session reset: the next miss still gets a leaf" "0" "$?"
: >"$CTL"
kill -TERM "$TLSMINT_PID"; wait "$TLSMINT_PID"
check_eq "clean exit" "0" "$?"

echo "== recovery retries run out: member down until 'ctl hsm recover'"
conf=$(base_conf retries)
set_conf "$conf" hsm recovery_retries 2
start_tlsmint "$conf" "$WORK/retries.log" || exit 1
echo "down=1" >"$CTL"
new_origin; port=$ORIGIN
fetch "$conf" "$port" "$CA" # the signer notices, exits, fails to come back
for _ in $(seq 1 50); do
    "$TLSMINT" -c "$conf" ctl hsm 2>/dev/null | grep -q "member hsm: down" && break
    sleep 0.1
done
check_contains "after 2 failed restarts the member is down" "member hsm: down" "$("$TLSMINT" -c "$conf" ctl hsm 2>&1)"
: >"$CTL"
sleep 1.5
check_contains "and stays down although the HSM is back" "member hsm: down" "$("$TLSMINT" -c "$conf" ctl hsm 2>&1)"
"$TLSMINT" -c "$conf" ctl hsm recover >/dev/null
for _ in $(seq 1 50); do
    "$TLSMINT" -c "$conf" ctl hsm 2>/dev/null | grep -q "member hsm: up" && break
    sleep 0.1
done
h=$("$TLSMINT" -c "$conf" ctl hsm 2>&1)
check_contains "ctl hsm recover brings it back" "member hsm: up" "$h"
check_contains "recovery time is reported" "to the first good signature" "$h"
new_origin; port=$ORIGIN
fetch "$conf" "$port" "$CA"
check_eq "and interception works" "0" "$?"
kill -TERM "$TLSMINT_PID"; wait "$TLSMINT_PID"

echo "== network HSM: p11-kit server killed and restarted"
SOCK="$WORK/run/p11kit.sock"
start_p11kit() {
    p11-kit server -f --provider /usr/lib/softhsm/libsofthsm2.so -n "$SOCK" "pkcs11:token=tlsmint" \
        >>"$WORK/p11kit.log" 2>&1 &
    P11PID=$!
    PIDS+=($P11PID)
    for _ in $(seq 1 100); do [ -S "$SOCK" ] && return 0; sleep 0.05; done
    return 1
}
# kill_p11kit: this test's p11-kit server and the p11-kit-remote child it forked per connection
# (its children, listed before the listener dies), never another test's
kill_p11kit() {
    kill -9 "$P11PID" $(pgrep -P "$P11PID") 2>/dev/null
}
mkdir -p "$WORK/run"
start_p11kit || { bad "p11-kit server did not start"; finish; exit 1; }
conf="$WORK/net.conf"
cp "$WORK/state/tlsmint.conf" "$conf"
set_conf "$conf" listen explicit "127.0.0.1:$(free_port)"
set_conf "$conf" listen transparent ""
set_conf "$conf" upstream ca_file "$WORK/pki/root.pem"
set_conf "$conf" admin socket "$WORK/run/net.sock"
set_conf "$conf" admin metrics ""
set_conf "$conf" hsm sign_timeout_ms 300
printf "\n[hsm]\nmodule = %s\nenv = P11_KIT_SERVER_ADDRESS=unix:path=%s\n" "$P11CLIENT" "$SOCK" >>"$conf"
# p11-kit's RPC refuses AES: the master key's wrapping key is reached directly
printf "\n[master_key]\nmodule = /usr/lib/softhsm/libsofthsm2.so\nenv = SOFTHSM2_CONF=%s\n" "$SOFTHSM2_CONF" >>"$conf"
start_tlsmint "$conf" "$WORK/net.log" || exit 1
new_origin; hit=$ORIGIN
fetch "$conf" "$hit" "$CA"
check_eq "through p11-kit: interception works" "0" "$?"
kill_p11kit
wait "$P11PID" 2>/dev/null
rm -f "$SOCK"
sleep 0.3
new_origin; miss=$ORIGIN
t0=$(ms_now)
fetch "$conf" "$miss" "$CA"
rc=$?
t1=$(ms_now)
check "p11-kit server gone: miss refused (curl $rc)" test "$rc" -ne 0
check "refused within the deadline ($((t1 - t0)) ms)" test $((t1 - t0)) -lt 1500
fetch "$conf" "$hit" "$CA"
check_eq "p11-kit server gone: hit served" "0" "$?"
start_p11kit
t0=$(ms_now)
back=1
for _ in $(seq 1 40); do
    new_origin; port=$ORIGIN
    if fetch "$conf" "$port" "$CA"; then back=0; break; fi
    sleep 0.05
done
t1=$(ms_now)
check_eq "p11-kit server back: intercepted again" "0" "$back"
check "within 2 s ($((t1 - t0)) ms)" test $((t1 - t0)) -lt 2000
kill -TERM "$TLSMINT_PID"; wait "$TLSMINT_PID"
check_eq "clean exit" "0" "$?"
check_not_contains "no sanitizer report" "Sanitizer" "$(cat "$WORK/net.log")"

echo "== HA group: SoftHSM directly + the same token through p11-kit; one member dies"
conf="$WORK/ha.conf"
cp "$WORK/state/tlsmint.conf" "$conf"
set_conf "$conf" listen explicit "127.0.0.1:$(free_port)"
set_conf "$conf" listen transparent ""
set_conf "$conf" upstream ca_file "$WORK/pki/root.pem"
set_conf "$conf" admin socket "$WORK/run/ha.sock"
set_conf "$conf" admin metrics ""
PIN_FILE="$WORK/state/hsm/pin"
printf "\n[hsm.net]\nmodule = %s\nenv = P11_KIT_SERVER_ADDRESS=unix:path=%s\ntoken = tlsmint\npin_file = %s\nkey_label = forward-trust\n" \
    "$P11CLIENT" "$SOCK" "$PIN_FILE" >>"$conf"
start_tlsmint "$conf" "$WORK/ha.log" || exit 1
for _ in $(seq 1 60); do # a member whose first start failed comes back by itself
    [ "$("$TLSMINT" -c "$conf" ctl hsm 2>&1 | grep -c ': up (')" = 2 ] && break
    sleep 0.1
done
h=$("$TLSMINT" -c "$conf" ctl hsm 2>&1)
check_contains "HA: member hsm up" "member hsm: up" "$h"
check_contains "HA: member net up" "member net: up" "$h"
# keep minting while one member dies: no request may fail. The job of the request made right
# after the kill usually lands on the dying member (through p11-kit the token signs faster than
# in-process under ASan) and is resubmitted to the survivor. A failure is reported with what the
# client and the proxy saw, so its cause can be read from the CI log.
fails=0
for i in $(seq 1 12); do
    new_origin; port=$ORIGIN
    [ "$i" = 4 ] && kill_p11kit
    if ! fetch "$conf" "$port" "$CA"; then
        fails=$((fails + 1))
        echo "  (request $i of 12 failed, port $port: $(head -c 300 "$WORK/curl.err"))"
        grep -e "\"port\":$port," -e "WARN\|ERROR" "$WORK/ha.log" | tail -n 20 | sed 's/^/    | /'
    fi
done
check_eq "HA: killing one member loses no connection" "0" "$fails"
check_not_contains "HA: the dead member is out" "member net: up" "$("$TLSMINT" -c "$conf" ctl hsm 2>&1)"
check_contains "HA: the survivor signed" "member hsm: up" "$("$TLSMINT" -c "$conf" ctl hsm 2>&1)"
kill -TERM "$TLSMINT_PID"; wait "$TLSMINT_PID"
check_eq "HA: clean exit" "0" "$?"

echo "== a member whose key is not the CA's is refused"
"$TLSMINT" init --dir "$WORK/other" >/dev/null
conf="$WORK/mismatch.conf"
cp "$WORK/state/tlsmint.conf" "$conf"
set_conf "$conf" listen explicit "127.0.0.1:$(free_port)"
set_conf "$conf" listen transparent ""
set_conf "$conf" admin socket "$WORK/run/mm.sock"
set_conf "$conf" admin metrics ""
printf "\n[hsm.other]\nmodule = /usr/lib/softhsm/libsofthsm2.so\nenv = SOFTHSM2_CONF=%s\ntoken = tlsmint\npin_file = %s\nkey_label = forward-trust\n" \
    "$WORK/other/hsm/softhsm2.conf" "$WORK/other/hsm/pin" >>"$conf"
start_tlsmint "$conf" "$WORK/mm.log" || exit 1
h=$("$TLSMINT" -c "$conf" ctl hsm 2>&1)
check_contains "mismatching member is down" "member other: down" "$h"
check_contains "with a clear reason" "is not the key of [ca] forward_trust_cert" "$h"
check_contains "the good member is up" "member hsm: up" "$h"
kill -TERM "$TLSMINT_PID"; wait "$TLSMINT_PID"

finish
