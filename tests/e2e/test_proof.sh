#!/bin/bash
# SPDX-License-Identifier: MIT
# test_proof.sh - a name must be proven before it buys a bypass: with [policy] bypass =
# bank.example, a CONNECT to another server (certificate CN=evil.example, from a trusted root)
# with SNI bank.example is inspected (or blocked with [policy] unproven = block), never spliced;
# the real bank.example origin is still spliced, its proof made once for many connections; a
# CONNECT host that differs from the SNI is a mismatch. The same in transparent mode (network
# namespace + REDIRECT, as root): the destination address is fixed, the SNI a claim that must
# verify there. Real nginx origins, curl, openssl.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib2.sh"

echo "== setup"
P="$WORK/pki"
make_pki "$P"
sign_leaf "$P" bank bank.example "DNS:bank.example" || { echo "sign_leaf failed"; exit 1; }
sign_leaf "$P" evil evil.example "DNS:evil.example" || { echo "sign_leaf failed"; exit 1; }
S="$WORK/state"
"$TLSMINT" init --dir "$S" >/dev/null || { echo "init failed"; exit 1; }
BPORT=$(free_port) EPORT=$(free_port) PPORT=$(free_port) MPORT=$(free_port)
start_nginx2 "$WORK/bank" "$BPORT" "$P/bank.pem" "$P/bank.key"
start_nginx2 "$WORK/evil" "$EPORT" "$P/evil.pem" "$P/evil.key"
CONF="$S/tlsmint.conf"
set_conf "$CONF" listen explicit "127.0.0.1:$PPORT"
set_conf "$CONF" listen transparent ""
set_conf "$CONF" listen threads 2
set_conf "$CONF" upstream ca_file "$P/root.pem"
set_conf "$CONF" log access "$WORK/access.log"
set_conf "$CONF" admin socket "$WORK/run/admin.sock"
set_conf "$CONF" admin metrics "127.0.0.1:$MPORT"
set_conf "$CONF" policy bypass "bank.example"
start_tlsmint "$CONF" "$WORK/tlsmint.log" || exit 1
PROXY="http://127.0.0.1:$PPORT"
alog_use "$WORK/access.log"
metric() { curl -sS --max-time 5 "http://127.0.0.1:$MPORT/metrics" | sed -n "s/^$1 //p"; }

echo "== the attack: SNI bank.example to a server that is not bank.example"
out=$(curl -sS -k -v --max-time 10 -x "$PROXY" --connect-to "bank.example:443:127.0.0.1:$EPORT" \
    "https://bank.example/index.html" 2>&1)
check_not_contains "not spliced: the client never gets the evil server's own certificate" \
    "issuer: CN=tlsmint e2e root" "$out"
check_contains "  it gets our forward-untrust leaf instead (the name does not verify there)" \
    "issuer: O=tlsmint; CN=tlsmint forward-untrust CA" "$out"
alog_next; line=$LINE
check_eq "access log: inspected, reason unproven-name" "inspect unproven-name" "$(jf action "$line") $(jf reason "$line")"
check_not_contains "  outcome is not bypass" "bypass" "$(jf outcome "$line")"
st=$(echo | timeout 10 openssl s_client -proxy "127.0.0.1:$PPORT" -connect "127.0.0.1:$EPORT" \
    -servername bank.example 2>&1)
check_not_contains "openssl s_client: not the evil server's own certificate either" "i:CN = tlsmint e2e root" "$st"
check_contains "  but our forward-untrust leaf" "tlsmint forward-untrust CA" "$st"
alog_next # s_client's line
check_eq "the failed proof is cached (one proof handshake)" "1" "$(metric 'tlsmint_name_proofs_total{result="not_proven"}')"

echo "== the real bank.example is still spliced, its proof made once"
for i in 1 2 3; do
    out=$(curl -sS -v --max-time 10 --cacert "$P/root.pem" -x "$PROXY" \
        --connect-to "bank.example:443:127.0.0.1:$BPORT" "https://bank.example/index.html" 2>&1)
    check_contains "connection $i: the origin's own certificate (spliced)" "issuer: CN=tlsmint e2e root" "$out"
    check_contains "  and its body" "hello-from-origin" "$out"
    alog_next
    check_eq "  outcome bypass" "bypass" "$(jf outcome "$LINE")"
done
check_eq "one proof handshake for three connections" "1" "$(metric 'tlsmint_name_proofs_total{result="proven"}')"

echo "== a CONNECT host that is not the SNI"
st=$(echo | timeout 10 openssl s_client -proxy "127.0.0.1:$PPORT" -connect "localhost:$BPORT" \
    -servername bank.example 2>&1)
check_contains "CONNECT localhost, SNI bank.example: inspected (our leaf)" "tlsmint forward-" "$st"
alog_next; line=$LINE
check_eq "  reason sni-mismatch" "sni-mismatch" "$(jf reason "$line")"
check_eq "  counted" "1" "$(metric 'tlsmint_policy_unproven_total{reason="sni-mismatch"}')"

echo "== [policy] unproven = block"
set_conf "$CONF" policy unproven block
"$TLSMINT" -c "$CONF" ctl reload >/dev/null 2>&1
out=$(curl -sS -k --max-time 10 -x "$PROXY" --connect-to "bank.example:443:127.0.0.1:$EPORT" \
    -w '\ncode=%{http_code}' "https://bank.example/index.html" 2>&1)
check_contains "the attack is blocked: 403" "code=403" "$out"
check_contains "  the page names the reason" "(reason: unproven-name)" "$out"
alog_next
check_eq "  outcome blocked" "blocked" "$(jf outcome "$LINE")"
out=$(curl -sS --max-time 10 --cacert "$P/root.pem" -x "$PROXY" \
    --connect-to "bank.example:443:127.0.0.1:$BPORT" "https://bank.example/index.html" 2>&1)
check_eq "the real bank still passes" "hello-from-origin" "$out"
kill -TERM "$TLSMINT_PID"; wait "$TLSMINT_PID"
check_eq "clean exit" "0" "$?"

echo "== transparent mode: the destination is fixed, the SNI only a claim"
if [ "$(id -u)" != 0 ] || ! command -v iptables >/dev/null || ! ip netns add "tlsmint-prf-$$" 2>/dev/null; then
    echo "  (skipped: needs root, iptables and network namespaces)"
    finish
    exit
fi
NS="tlsmint-prf-$$"
cleanup_ns() { cleanup; ip netns del "$NS" 2>/dev/null; }
trap cleanup_ns EXIT
IN() { ip netns exec "$NS" "$@"; }
IN ip link set lo up
chmod 755 "$S" "$S/ca"
chmod -R a+rX "$P"
TPORT=$(free_port) TB=$(free_port) TE=$(free_port)
T="$WORK/t.conf"
cp "$CONF" "$T"
set_conf "$T" listen explicit ""
set_conf "$T" listen transparent "127.0.0.1:$TPORT"
set_conf "$T" admin socket "$WORK/run/t.sock"
set_conf "$T" admin metrics ""
set_conf "$T" log access "$WORK/t-access.log"
set_conf "$T" policy unproven inspect
write_nginx "$WORK/tbank" "127.0.0.1:$TB" "$P/bank.pem" "$P/bank.key"
write_nginx "$WORK/tevil" "127.0.0.1:$TE" "$P/evil.pem" "$P/evil.key"
for o in tbank tevil; do
    IN bash -c "echo \$\$ >$WORK/$o.pid; exec nginx -c $WORK/$o/nginx.conf -e $WORK/$o/logs/error.log" &
done
IN bash -c "echo \$\$ >$WORK/tt.pid; exec $TLSMINT -c $T run" >"$WORK/tt.log" 2>&1 &
wait_for 50 test -s "$WORK/tbank.pid" -a -s "$WORK/tevil.pid" -a -s "$WORK/tt.pid"
PIDS+=($(cat "$WORK/tbank.pid" "$WORK/tevil.pid" "$WORK/tt.pid"))
wait_for 100 grep -q "tlsmint running" "$WORK/tt.log"
for p in "$TB" "$TE"; do wait_for 50 IN bash -c "exec 3<>/dev/tcp/127.0.0.1/$p" 2>/dev/null; done
for p in "$TB" "$TE"; do
    IN iptables -t nat -A OUTPUT -p tcp -d 127.0.0.1 --dport "$p" -m owner --uid-owner 65534 \
        -j REDIRECT --to-ports "$TPORT"
done
AS_NOBODY() { IN setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
alog_use "$WORK/t-access.log"
out=$(AS_NOBODY curl -sS -k -v --max-time 10 --resolve "bank.example:$TE:127.0.0.1" \
    "https://bank.example:$TE/index.html" 2>&1)
check_not_contains "SNI bank.example to the evil server's address: never spliced" \
    "issuer: CN=tlsmint e2e root" "$out"
check_contains "  our forward-untrust leaf instead" "issuer: O=tlsmint; CN=tlsmint forward-untrust CA" "$out"
alog_next; line=$LINE
check_eq "  access log: transparent, inspected, reason unproven-name" "transparent inspect unproven-name" \
    "$(jf mode "$line") $(jf action "$line") $(jf reason "$line")"
check_not_contains "  outcome is not bypass" "bypass" "$(jf outcome "$line")"
for i in 1 2; do
    out=$(AS_NOBODY curl -sS -v --max-time 10 --cacert "$P/root.pem" \
        --resolve "bank.example:$TB:127.0.0.1" "https://bank.example:$TB/index.html" 2>&1)
    check_contains "the real bank.example at its own address, connection $i: spliced" \
        "issuer: CN=tlsmint e2e root" "$out"
    alog_next
    check_eq "  outcome bypass" "bypass" "$(jf outcome "$LINE")"
done
finish
