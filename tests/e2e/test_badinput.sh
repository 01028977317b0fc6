#!/bin/bash
# SPDX-License-Identifier: MIT
# test_badinput.sh - tlsmint against clients that misbehave: garbage instead of a ClientHello,
# a truncated ClientHello, a ClientHello with a ~64 KiB SNI (multi-record) or lying SNI lengths,
# plain text on the transparent port, slowloris clients (CONNECT head and ClientHello at one
# byte per second), a client killed mid-download, malformed CONNECT heads. After every case a
# real curl request through the proxy must still get the origin's body and the proxy must be
# alive; failures must be answered (HTTP error, TLS alert) or closed, and logged.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib2.sh"
T_START=$(date +%s)

echo "== setup"
make_pki "$WORK/pki"
"$TLSMINT" init --dir "$WORK/state" >/dev/null || { echo "init failed"; exit 1; }
OPORT=$(free_port)
PPORT=$(free_port)
TPORT=$(free_port)
start_nginx "$WORK/origin" "$OPORT" "$WORK/pki/origin.pem" "$WORK/pki/origin.key"
# large enough that socket buffers (several MB on loopback) cannot take all of it at once
head -c 33554432 /dev/zero >"$WORK/origin/www/huge.bin"
chmod a+r "$WORK/origin/www/huge.bin"
BIGSIZE=33554432
CONF="$WORK/state/tlsmint.conf"
set_conf "$CONF" listen explicit "127.0.0.1:$PPORT"
set_conf "$CONF" listen transparent "127.0.0.1:$TPORT"
set_conf "$CONF" listen threads 2
set_conf "$CONF" upstream ca_file "$WORK/pki/root.pem"
set_conf "$CONF" log access "$WORK/access.log"
set_conf "$CONF" admin socket "$WORK/run/admin.sock"
set_conf "$CONF" admin metrics ""
start_tlsmint "$CONF" "$WORK/tlsmint.log" || exit 1
CA="$WORK/state/ca/forward-trust.pem"
PROXY="http://127.0.0.1:$PPORT"
ALOG="$WORK/access.log"
TARGET="localhost:$OPORT"
serving "baseline"

# outcome_of LPORT: the outcome in the access-log line of client 127.0.0.1:LPORT
outcome_of() {
    local line
    line=$(alog_client "$ALOG" "127.0.0.1:$1")
    if [ -z "$line" ]; then echo "<no access-log line>"; else jf outcome "$line"; fi
}

echo "== control: a hand-built ClientHello is a valid one"
r=$(rawc hello "$PPORT" "$TARGET" localhost)
echo "     $r"
check_eq "CONNECT answered 200" "200" "$(kv status "$r")"
check_eq "the proxy answers the hand-built ClientHello with a handshake record" "16" "$(kv rec "$r")"
check_eq "... whose first message is a ServerHello" "2" "$(kv hs "$r")"
serving "after the control ClientHello"

echo "== eager client: CONNECT head and ClientHello in one write"
r=$(rawc eager "$PPORT" "$TARGET")
echo "     $r"
check_eq "CONNECT answered 200" "200" "$(kv status "$r")"
check_eq "the ClientHello sent with the head is answered with a ServerHello" "16 2" "$(kv rec "$r") $(kv hs "$r")"
serving "after an eager client"

echo "== garbage bytes instead of a ClientHello (after CONNECT 200)"
r=$(rawc garbage "$PPORT" "$TARGET" 5)
echo "     $r"
check_eq "CONNECT answered 200" "200" "$(kv status "$r")"
check_eq "the proxy closes the connection" "1" "$(kv closed "$r")"
check_secs "... promptly" "$(kv secs "$r")" 3
line=$(alog_client "$ALOG" "127.0.0.1:$(kv lport "$r")")
check_eq "access log: tunnelled as not TLS ([policy] non_tls = tunnel), the origin closed it" \
    "tunnel not-tls" "$(jf action "$line") $(jf reason "$line")"
serving "after garbage"

echo "== truncated ClientHello (first 40 bytes, then FIN)"
r=$(rawc truncated "$PPORT" "$TARGET" 40)
echo "     $r"
check_eq "CONNECT answered 200" "200" "$(kv status "$r")"
check_eq "the proxy closes the connection" "1" "$(kv closed "$r")"
check_secs "... promptly" "$(kv secs "$r")" 3
check_eq "nothing but the close is sent back" "0" "$(kv nbytes "$r")"
check_eq "access log: client_error" "client_error" "$(outcome_of "$(kv lport "$r")")"
serving "after a truncated ClientHello"

echo "== ClientHello with a 65400-byte SNI (5 TLS records)"
r=$(rawc bigsni "$PPORT" "$TARGET" 65400)
echo "     $r"
check_eq "CONNECT answered 200" "200" "$(kv status "$r")"
check_eq "the proxy ends the connection" "1" "$(kv closed "$r")"
rec=$(kv rec "$r")
check "answered with a TLS alert or a bare close (rec=$rec alert=$(kv alert "$r"))" \
    test "$rec" = 15 -o "$rec" = -
line=$(alog_client "$ALOG" "127.0.0.1:$(kv lport "$r")")
check_not_contains "access log: outcome is not ok" '"outcome":"ok"' "${line:-<no line>}"
check_contains "access log: the huge SNI is not recorded" '"sni":""' "${line:-<no line>}"
check_eq "access log line is valid JSON" "explicit" "$(jf mode "$line")"
serving "after a 64 KiB SNI"

echo "== ClientHello whose SNI lengths point past the extension"
r=$(rawc lyingsni "$PPORT" "$TARGET")
echo "     $r"
check_eq "the proxy ends the connection" "1" "$(kv closed "$r")"
rec=$(kv rec "$r")
check "answered with a TLS alert or a bare close (rec=$rec alert=$(kv alert "$r"))" \
    test "$rec" = 15 -o "$rec" = -
check_not_contains "access log: outcome is not ok" '"outcome":"ok"' \
    "$(alog_client "$ALOG" "127.0.0.1:$(kv lport "$r")")"
serving "after lying SNI lengths"

echo "== plain text on the transparent port (not REDIRECTed)"
n0=$(settle_lines "$ALOG") # the previous checks' lines are written asynchronously: let them land
r=$(rawc raw "$TPORT" plaintext "" 5)
echo "     $r"
check_eq "the connection is closed" "1" "$(kv closed "$r")"
check_secs "... within 3 s" "$(kv secs "$r")" 3
check_eq "no bytes are sent back" "0" "$(kv nbytes "$r")"
line=$(alog_client "$ALOG" "127.0.0.1:$(kv lport "$r")")
check_contains "access log: transparent mode" '"mode":"transparent"' "${line:-<no line>}"
check_eq "access log: bad_request" "bad_request" "$(jf outcome "${line:-x}")"
check_contains "log: not a REDIRECTed connection" "not a REDIRECTed connection" "$(cat "$WORK/tlsmint.log")"
check_eq "one connection, one access-log line (the proxy did not connect to itself)" "1" \
    "$(($(settle_lines "$ALOG") - n0))"
serving "after plain text on the transparent port"

echo "== slowloris: CONNECT head and ClientHello at one byte per second"
rawc slowhello "$PPORT" "$TARGET" 25 >"$WORK/slow1.out" &
SLOW1=$!
rawc slowconnect "$PPORT" "$TARGET" 25 >"$WORK/slow2.out" &
SLOW2=$!
sleep 3
served=0
for i in 1 2 3; do
    out=$(curl -sS --max-time 5 --cacert "$CA" -x "$PROXY" "https://localhost:$OPORT/index.html" 2>&1)
    [ "$out" = "hello-from-origin" ] && served=$((served + 1))
    sleep 1
done
check_eq "3 requests served while the slow clients are connected" "3" "$served"
check "slow clients still connected meanwhile" kill -0 "$SLOW1" "$SLOW2"
wait "$SLOW1" "$SLOW2"
r1=$(cat "$WORK/slow1.out")
r2=$(cat "$WORK/slow2.out")
echo "     hello:   $r1"
echo "     connect: $r2"
check_eq "slow ClientHello: CONNECT answered 200" "200" "$(kv status "$r1")"
check_eq "slow ClientHello: closed by the proxy" "1" "$(kv closed "$r1")"
check_secs "slow ClientHello: closed within 15 s" "$(kv secs "$r1")" 15
check "slow ClientHello: not before the 10 s handshake timeout (secs=$(kv secs "$r1"))" \
    python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) >= 9.5 else 1)' "$(kv secs "$r1")"
check_eq "slow ClientHello: access log says timeout" "timeout" "$(outcome_of "$(kv lport "$r1")")"
check_eq "slow CONNECT head: closed by the proxy" "1" "$(kv closed "$r2")"
check_secs "slow CONNECT head: closed within 15 s" "$(kv secs "$r2")" 15
check_eq "slow CONNECT head: access log says timeout" "timeout" "$(outcome_of "$(kv lport "$r2")")"
serving "after slowloris"

echo "== client killed mid-download"
LP=$(free_port)
curl -sS --max-time 20 --limit-rate 1M --local-port "$LP" --cacert "$CA" -x "$PROXY" \
    "https://localhost:$OPORT/huge.bin" -o "$WORK/partial.bin" 2>/dev/null &
CURL=$!
wait_for 50 test -s "$WORK/partial.bin" # part of the body has arrived
kill -9 "$CURL"
wait "$CURL" 2>/dev/null
got=$(stat -c %s "$WORK/partial.bin" 2>/dev/null || echo 0)
check "curl had received part of the body, not all ($got of $BIGSIZE)" test "$got" -lt "$BIGSIZE"
line=$(alog_client "$ALOG" "127.0.0.1:$LP" 5)
echo "     $line"
check "access log has a line for the vanished client" test -n "$line"
check_eq "access log line is valid JSON" "explicit" "$(jf mode "${line:-x}")"
down=$(jf bytes_down "${line:-x}")
check_num "access log: bytes_down counts what was relayed" "$down" -gt 0
check_num "access log: bytes_down is less than the whole body" "$down" -lt "$BIGSIZE"
echo "     (outcome recorded for the vanished client: $(jf outcome "${line:-x}"))"
serving "after a client vanished mid-stream"

echo "== malformed CONNECT heads"
for c in "port99999 400" "emptyhost 400" "port0 400" "nul 400" "longline 400|431" "longheader 431"; do
    name=${c% *}
    want=${c#* }
    r=$(rawc raw "$PPORT" "$name" "" 5)
    echo "     $name: $r"
    st=$(kv status "$r")
    case "|$want|" in *"|$st|"*) ok "$name: HTTP $st" ;; *) bad "$name: HTTP '$st', expected $want" ;; esac
    check_eq "$name: connection closed after the answer" "1" "$(kv closed "$r")"
    check_eq "$name: access log bad_request" "bad_request" "$(outcome_of "$(kv lport "$r")")"
    serving "after $name"
done
r=$(rawc raw "$PPORT" partial shutwr 5)
echo "     partial head then FIN: $r"
check_eq "partial head then FIN: closed" "1" "$(kv closed "$r")"
check_eq "partial head then FIN: access log bad_request" "bad_request" "$(outcome_of "$(kv lport "$r")")"
serving "after a partial head"

echo "== renegotiation and key update inside the relayed session"
out=$( (sleep 0.7; printf 'R\n'; sleep 0.7; printf 'GET /index.html HTTP/1.1\r\nHost: localhost\r\n\r\n'; sleep 0.7) |
    timeout 10 openssl s_client -tls1_2 -proxy "127.0.0.1:$PPORT" -connect "localhost:$OPORT" -CAfile "$CA" 2>&1)
check_contains "TLS 1.2: client-initiated renegotiation was attempted" "RENEGOTIATING" "$out"
check_contains "TLS 1.2: ... and refused with a no_renegotiation alert" "no renegotiation" "$out"
serving "after a renegotiation attempt"
out=$( (sleep 0.7; printf 'K\n'; sleep 0.7; printf 'GET /index.html HTTP/1.1\r\nHost: localhost\r\n\r\n'; sleep 0.7) |
    timeout 10 openssl s_client -tls1_3 -proxy "127.0.0.1:$PPORT" -connect "localhost:$OPORT" -CAfile "$CA" 2>&1)
check_contains "TLS 1.3: the client sent a KeyUpdate" "KEYUPDATE" "$out"
check_contains "TLS 1.3: the request after the KeyUpdate is answered" "hello-from-origin" "$out"
serving "after a key update"

echo "== CONNECT to the proxy's own listeners"
n0=$(settle_lines "$ALOG")
out=$(curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" "https://127.0.0.1:$PPORT/" 2>&1)
check_contains "CONNECT to the explicit port itself: clean curl error" "curl: (" "$out"
check_eq "... two connections (outer, inner), no loop" "2" "$(($(settle_lines "$ALOG") - n0))"
check_contains "... the outer one is logged upstream_failed" '"outcome":"upstream_failed"' \
    "$(tail -n 2 "$ALOG")"
serving "after a CONNECT to the explicit port"
n0=$(settle_lines "$ALOG")
out=$(curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" "https://127.0.0.1:$TPORT/" 2>&1)
check_contains "CONNECT to the transparent port: clean curl error" "curl: (" "$out"
check_eq "... two connections (outer, inner), no loop" "2" "$(($(settle_lines "$ALOG") - n0))"
serving "after a CONNECT to the transparent port"

echo "== SIGTERM"
kill -TERM "$TLSMINT_PID"
wait "$TLSMINT_PID"
check_eq "exit status 0" "0" "$?"
check_not_contains "no sanitizer report" "Sanitizer" "$(cat "$WORK/tlsmint.log")"
check_not_contains "no UBSan report" "runtime error" "$(cat "$WORK/tlsmint.log")"
all_json=$(python3 -c 'import json,sys
n = 0
for l in open(sys.argv[1]):
    json.loads(l); n += 1
print(n)' "$ALOG" 2>&1)
check_num "every access-log line is valid JSON ($all_json lines)" "$all_json" -gt 20
echo "runtime: $(($(date +%s) - T_START)) s"
finish
