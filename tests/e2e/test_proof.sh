#!/bin/bash
# SPDX-License-Identifier: MIT
# test_proof.sh - a name must be proven before it buys a bypass: with [policy] bypass =
# bank.example, a CONNECT to another server (certificate CN=evil.example, from a trusted root)
# with SNI bank.example is inspected (or blocked with [policy] unproven = block), never spliced;
# the real bank.example origin is still spliced, its proof made once for many connections; a
# CONNECT host that differs from the SNI is a mismatch. Real nginx origins, curl, openssl.
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
alog() { sleep 0.3; tail -n 1 "$WORK/access.log"; }
metric() { curl -sS --max-time 5 "http://127.0.0.1:$MPORT/metrics" | sed -n "s/^$1 //p"; }

echo "== the attack: SNI bank.example to a server that is not bank.example"
out=$(curl -sS -k -v --max-time 10 -x "$PROXY" --connect-to "bank.example:443:127.0.0.1:$EPORT" \
    "https://bank.example/index.html" 2>&1)
check_not_contains "not spliced: the client never gets the evil server's own certificate" \
    "issuer: CN=tlsmint e2e root" "$out"
check_contains "  it gets our forward-untrust leaf instead (the name does not verify there)" \
    "issuer: O=tlsmint; CN=tlsmint forward-untrust CA" "$out"
line=$(alog)
check_eq "access log: inspected, reason unproven-name" "inspect unproven-name" "$(jf action "$line") $(jf reason "$line")"
check_not_contains "  outcome is not bypass" "bypass" "$(jf outcome "$line")"
st=$(echo | timeout 10 openssl s_client -proxy "127.0.0.1:$PPORT" -connect "127.0.0.1:$EPORT" \
    -servername bank.example 2>&1)
check_not_contains "openssl s_client: not the evil server's own certificate either" "i:CN = tlsmint e2e root" "$st"
check_contains "  but our forward-untrust leaf" "tlsmint forward-untrust CA" "$st"
check_eq "the failed proof is cached (one proof handshake)" "1" "$(metric 'tlsmint_name_proofs_total{result="not_proven"}')"

echo "== the real bank.example is still spliced, its proof made once"
for i in 1 2 3; do
    out=$(curl -sS -v --max-time 10 --cacert "$P/root.pem" -x "$PROXY" \
        --connect-to "bank.example:443:127.0.0.1:$BPORT" "https://bank.example/index.html" 2>&1)
    check_contains "connection $i: the origin's own certificate (spliced)" "issuer: CN=tlsmint e2e root" "$out"
    check_contains "  and its body" "hello-from-origin" "$out"
    check_eq "  outcome bypass" "bypass" "$(jf outcome "$(alog)")"
done
check_eq "one proof handshake for three connections" "1" "$(metric 'tlsmint_name_proofs_total{result="proven"}')"

echo "== a CONNECT host that is not the SNI"
st=$(echo | timeout 10 openssl s_client -proxy "127.0.0.1:$PPORT" -connect "localhost:$BPORT" \
    -servername bank.example 2>&1)
check_contains "CONNECT localhost, SNI bank.example: inspected (our leaf)" "tlsmint forward-" "$st"
line=$(alog)
check_eq "  reason sni-mismatch" "sni-mismatch" "$(jf reason "$line")"
check_eq "  counted" "1" "$(metric 'tlsmint_policy_unproven_total{reason="sni-mismatch"}')"

echo "== [policy] unproven = block"
set_conf "$CONF" policy unproven block
"$TLSMINT" -c "$CONF" ctl reload >/dev/null 2>&1
out=$(curl -sS -k --max-time 10 -x "$PROXY" --connect-to "bank.example:443:127.0.0.1:$EPORT" \
    -w '\ncode=%{http_code}' "https://bank.example/index.html" 2>&1)
check_contains "the attack is blocked: 403" "code=403" "$out"
check_contains "  the page names the reason" "(reason: unproven-name)" "$out"
check_eq "  outcome blocked" "blocked" "$(jf outcome "$(alog)")"
out=$(curl -sS --max-time 10 --cacert "$P/root.pem" -x "$PROXY" \
    --connect-to "bank.example:443:127.0.0.1:$BPORT" "https://bank.example/index.html" 2>&1)
check_eq "the real bank still passes" "hello-from-origin" "$out"
kill -TERM "$TLSMINT_PID"; wait "$TLSMINT_PID"
check_eq "clean exit" "0" "$?"
finish
