#!/bin/bash
# SPDX-License-Identifier: MIT
# test_ocsp.sh - [profile.NAME] ocsp: an OCSP responder (`openssl ocsp -index ... -port`) on
# loopback, upstream certificates whose AIA points at it, nginx origins serving them. ocsp =
# fetch: good -> intercepted (then from the cache: no second request); revoked -> blocked, the
# 403 page names the reason; unknown -> allowed (unknown_status = allow); concurrent connections
# for one certificate share one request, across the two loops ([listen] threads = 2: 20 clients
# at once, the responder sees one request, each client gets the answer: good served, revoked
# blocked), and a joining connection whose own deadline is shorter than the fetch's is answered
# "timeout" at its own deadline; the responder stopped (SIGSTOP: connected, never answered) ->
# allowed or blocked (status_timeout) within ocsp_timeout_ms + 50 ms; revoked = untrust gives a
# forward-untrust leaf. ocsp = stapled: a stapling origin (ssl_stapling_file) is checked with the
# responder down, good and revoked. Access log, metrics.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib2.sh"

echo "== setup"
P="$WORK/pki"
make_pki "$P"
RPORT=$(free_port)
# leaf NAME SERIAL [SAN]: NAME.pem for NAME.example (or the names SAN lists), its AIA naming the
# responder
leaf() {
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$P/$1.key" \
        -out "$P/$1.csr" -subj "/CN=$1.example" 2>/dev/null
    printf "subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nauthorityInfoAccess=OCSP;URI:http://127.0.0.1:%s/\n" \
        "${3:-DNS:$1.example}" "$RPORT" >"$P/$1.ext"
    openssl x509 -req -in "$P/$1.csr" -CA "$P/root.pem" -CAkey "$P/root.key" -set_serial "$2" \
        -out "$P/$1.pem" -days 20 -extfile "$P/$1.ext" 2>/dev/null
}
: >"$P/index.txt"
idx() { # idx V|R SERIALHEX NAME (openssl's index wants each subject once)
    local rev=""
    [ "$1" = R ] && rev="$(date -u -d '-1 day' +%y%m%d%H%M%SZ)"
    printf "%s\t%s\t%s\t%s\tunknown\t/CN=%s.example\n" "$1" \
        "$(date -u -d '+20 days' +%y%m%d%H%M%SZ)" "$rev" "$2" "$3" >>"$P/index.txt"
}
n=0
for spec in good:V revoked:R unknown:- ta:V tb:V sf:V ut:R st:V sr:R plain:- mg:V mr:R dual:V; do
    name=${spec%%:*} st=${spec#*:}
    n=$((n + 1))
    serial=$(printf "%X" $((0x3000 + n)))
    san=""
    [ "$name" = dual ] && san="DNS:dq.example,DNS:ds.example" # one certificate, two profiles
    leaf "$name" "0x$serial" $san
    [ "$st" != - ] && idx "$st" "$serial" "$name"
done
# requests: how many OCSP requests the responder has read so far (it logs each one)
requests() { grep -c "Received request" "$WORK/responder.log"; }
# the staples nginx serves: made offline by the same responder code
for name in st sr; do
    openssl ocsp -issuer "$P/root.pem" -cert "$P/$name.pem" -no_nonce -reqout "$P/$name.req" 2>/dev/null
    openssl ocsp -index "$P/index.txt" -rsigner "$P/root.pem" -rkey "$P/root.key" -CA "$P/root.pem" \
        -reqin "$P/$name.req" -respout "$P/$name.staple" -nmin 60 >/dev/null 2>&1
done
# one nginx, a server per certificate
mkdir -p "$WORK/o/www" "$WORK/o/logs" "$WORK/o/tmp"
echo "hello-from-origin" >"$WORK/o/www/index.html"
declare -A PORT
servers=""
for name in good revoked unknown ta tb sf ut st sr plain mg mr dual; do
    PORT[$name]=$(free_port)
    cert=$name
    extra=""
    case $name in st | sr) extra="ssl_stapling on; ssl_stapling_file $P/$name.staple;" ;; esac
    servers+="server { listen 127.0.0.1:${PORT[$name]} ssl; ssl_certificate $P/$cert.pem;
      ssl_certificate_key $P/$cert.key; root $WORK/o/www; $extra }
"
done
cat >"$WORK/o/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $WORK/o/nginx.pid;
error_log $WORK/o/logs/error.log;
events { worker_connections 512; }
http {
  access_log $WORK/o/logs/access.log;
  client_body_temp_path $WORK/o/tmp;
  proxy_temp_path $WORK/o/tmp;
  fastcgi_temp_path $WORK/o/tmp;
  uwsgi_temp_path $WORK/o/tmp;
  scgi_temp_path $WORK/o/tmp;
  $servers
}
EOF
nginx -c "$WORK/o/nginx.conf" -e "$WORK/o/logs/error.log" &
PIDS+=($!)
PORT[dq]=${PORT[dual]} PORT[ds]=${PORT[dual]}
wait_port "${PORT[plain]}"
start_responder() {
    openssl ocsp -index "$P/index.txt" -port "$RPORT" -rsigner "$P/root.pem" -rkey "$P/root.key" \
        -CA "$P/root.pem" -nmin 10 -ignore_err >>"$WORK/responder.log" 2>&1 &
    RESP_PID=$!
    PIDS+=($RESP_PID)
    # not wait_port: the responder serves one connection at a time, and a probe that sends
    # nothing keeps it from answering anyone else
    for _ in $(seq 1 100); do
        grep -q "waiting for OCSP client connections" "$WORK/responder.log" && break
        sleep 0.05
    done
}
start_responder

S="$WORK/state"
"$TLSMINT" init --dir "$S" >/dev/null || { echo "init failed"; exit 1; }
PPORT=$(free_port) MPORT=$(free_port)
CONF="$S/tlsmint.conf"
set_conf "$CONF" listen explicit "127.0.0.1:$PPORT"
set_conf "$CONF" listen transparent ""
set_conf "$CONF" listen threads 2 # single flight across loops
set_conf "$CONF" upstream ca_file "$P/root.pem"
set_conf "$CONF" log access "$WORK/access.log"
set_conf "$CONF" admin socket "$WORK/run/admin.sock"
set_conf "$CONF" admin metrics "127.0.0.1:$MPORT"
cat >>"$CONF" <<EOF

[rule.stapled]
hosts   = st.example, sr.example, plain.example
action  = inspect
profile = stapled

[rule.timeout-block]
hosts   = tb.example
action  = inspect
profile = strict

[rule.patient]
hosts   = sf.example, mg.example, mr.example, ds.example
action  = inspect
profile = patient

[rule.untrust]
hosts   = ut.example
action  = inspect
profile = untrust

[profile.default]
ocsp            = fetch
ocsp_timeout_ms = 300

[profile.strict]
ocsp            = fetch
ocsp_timeout_ms = 300
status_timeout  = block

[profile.untrust]
ocsp    = fetch
revoked = untrust

[profile.patient]
ocsp            = fetch
ocsp_timeout_ms = 3000

[profile.stapled]
ocsp = stapled
EOF
start_tlsmint "$CONF" "$WORK/tlsmint.log" || exit 1
CA="$S/ca/forward-trust.pem"
UCA="$S/ca/forward-untrust.pem"
PROXY="http://127.0.0.1:$PPORT"
alog_use "$WORK/access.log"
# via NAME [curl args]: https://NAME.example/ through the proxy, to NAME's server
via() {
    local name=$1; shift
    curl -sS --max-time 10 -x "$PROXY" --connect-to "$name.example:443:127.0.0.1:${PORT[$name]}" \
        "$@" -w '\ncode=%{http_code}' "https://$name.example/" 2>&1
}
# sni_lines NAME.example N: NAME's access-log lines, once there are N of them (3 s at most)
sni_lines() {
    for _ in $(seq 1 30); do
        [ "$(grep -c "\"sni\":\"$1\"" "$WORK/access.log")" -ge "$2" ] && break
        sleep 0.1
    done
    grep "\"sni\":\"$1\"" "$WORK/access.log"
}
metric() { curl -sS --max-time 5 "http://127.0.0.1:$MPORT/metrics" | sed -n "s/^$1 //p"; }

echo "== ocsp = fetch"
out=$(via good --cacert "$CA")
check_contains "good: intercepted, served" "hello-from-origin" "$out"
alog_next; line=$LINE
check_eq "  access log: ocsp good, fetched, ok" "good fetched ok" \
    "$(jf ocsp "$line") $(jf ocsp_src "$line") $(jf outcome "$line")"
check_eq "  one request, good" "1" "$(metric 'tlsmint_ocsp_requests_total{result="good"}')"
out=$(via good --cacert "$CA")
check_contains "again: served" "hello-from-origin" "$out"
alog_next
check_eq "  from the cache (until nextUpdate)" "good cached" "$(jf ocsp "$LINE") $(jf ocsp_src "$LINE")"
check_eq "  no second request" "1" "$(metric 'tlsmint_ocsp_requests_total{result="good"}')"
out=$(via revoked --cacert "$CA")
check_contains "revoked: blocked with a 403" "code=403" "$out"
check_contains "  the page names the reason" "(reason: revoked)" "$out"
alog_next; line=$LINE
check_eq "  access log: blocked, reason revoked" "blocked revoked revoked" \
    "$(jf outcome "$line") $(jf reason "$line") $(jf ocsp "$line")"
check_eq "  counted" "1" "$(metric 'tlsmint_ocsp_requests_total{result="revoked"}')"
out=$(via unknown --cacert "$CA")
check_contains "unknown to the responder: allowed (unknown_status = allow)" "hello-from-origin" "$out"
alog_next
check_eq "  access log: ocsp unknown, reason ocsp-unknown" "unknown ocsp-unknown" \
    "$(jf ocsp "$LINE") $(jf reason "$LINE")"
out=$(via ut -v --cacert "$UCA" -o /dev/null)
check_contains "revoked = untrust: a forward-untrust leaf" "issuer: O=tlsmint; CN=tlsmint forward-untrust CA" "$out"

echo "== one request for concurrent connections (single flight)"
r0=$(requests)
kill -STOP "$RESP_PID"
cpids=()
for i in 1 2 3; do via sf --cacert "$CA" >"$WORK/sf.$i" & cpids+=($!); done
sleep 1 # all three wait for the one request (ocsp_timeout_ms 3000 in this profile)
kill -CONT "$RESP_PID"
wait "${cpids[@]}"
for i in 1 2 3; do check_contains "connection $i served" "hello-from-origin" "$(cat "$WORK/sf.$i")"; done
check_eq "  one request for the three (good: 2 in all)" "2" "$(metric 'tlsmint_ocsp_requests_total{result="good"}')"
check_eq "  the responder saw one" "1" "$(($(requests) - r0))"

echo "== one request for 20 clients at once on two loops"
# the responder is stopped while they come in: every loop that gets one of them needs the
# status while the fetch is in flight (20 connections over 2 SO_REUSEPORT listeners: both loops)
declare -A SEEN
for name in mg mr; do
    r0=$(requests)
    kill -STOP "$RESP_PID"
    cpids=()
    for i in $(seq 1 20); do via $name --cacert "$CA" >"$WORK/$name.$i" & cpids+=($!); done
    sleep 1.5
    kill -CONT "$RESP_PID"
    wait "${cpids[@]}"
    SEEN[$name]=$(($(requests) - r0))
done
served=0 blocked=0
for i in $(seq 1 20); do
    grep -q "hello-from-origin" "$WORK/mg.$i" && served=$((served + 1))
    grep -q "(reason: revoked)" "$WORK/mr.$i" && grep -q "code=403" "$WORK/mr.$i" && blocked=$((blocked + 1))
done
check_eq "good: all 20 served" "20" "$served"
check_eq "  the responder saw one request" "1" "${SEEN[mg]}"
check_eq "  20 access-log lines: ocsp good, ok" "20" \
    "$(sni_lines mg.example 20 | grep '"ocsp":"good"' | grep -c '"outcome":"ok"')"
check_eq "revoked: all 20 blocked, 403 naming the reason" "20" "$blocked"
check_eq "  the responder saw one request" "1" "${SEEN[mr]}"
check_eq "  20 access-log lines: blocked, revoked" "20" \
    "$(sni_lines mr.example 20 | grep '"reason":"revoked"' | grep -c '"outcome":"blocked"')"

echo "== a joining connection never waits past its own deadline"
# one certificate for ds.example (profile patient: 3000 ms) and dq.example (the default: 300 ms)
r0=$(requests)
kill -STOP "$RESP_PID"
via ds --cacert "$CA" >"$WORK/ds.out" &
dpid=$!
sleep 0.5 # ds's fetch is in flight, until 3 s after it started
out=$(via dq --cacert "$CA")
check_contains "dq joins it, gets 'timeout' at its own 300 ms: allowed" "hello-from-origin" "$out"
check "  the fetch it joined still runs (ds waits)" kill -0 "$dpid"
kill -CONT "$RESP_PID" # well before ds's 3 s, however slow the checks below are
line=$(sni_lines dq.example 1 | tail -n 1)
check_eq "  access log: ocsp timeout, reason ocsp-timeout" "timeout ocsp-timeout" \
    "$(jf ocsp "$line") $(jf reason "$line")"
ms=$(jf ocsp_ms "$line" | cut -d. -f1)
check_num "  not before its deadline (ms)" "$ms" -ge 299
check_num "  within its ocsp_timeout_ms + 50 ms" "$ms" -le 350
wait "$dpid"
check_contains "ds: served once the responder answers" "hello-from-origin" "$(cat "$WORK/ds.out")"
line=$(sni_lines ds.example 1 | tail -n 1)
check_eq "  access log: ocsp good, fetched" "good fetched" "$(jf ocsp "$line") $(jf ocsp_src "$line")"
check_eq "  one request for both" "1" "$(($(requests) - r0))"

echo "== the responder stopped (connects, never answers): ocsp_timeout_ms = 300"
alog_sync # the 46 connections since the last alog_next, read above by their names
kill -STOP "$RESP_PID"
t0=$(date +%s%N)
out=$(via ta --cacert "$CA")
t1=$(date +%s%N)
check_contains "status_timeout = allow: served" "hello-from-origin" "$out"
alog_next; line=$LINE
check_eq "  access log: ocsp timeout, reason ocsp-timeout, ok" "timeout ocsp-timeout ok" \
    "$(jf ocsp "$line") $(jf reason "$line") $(jf outcome "$line")"
ms=$(jf ocsp_ms "$line" | cut -d. -f1)
check_num "  waited at least the deadline (ms)" "$ms" -ge 299
check_num "  and at most ocsp_timeout_ms + 50 ms" "$ms" -le 350
check_num "  the whole connection under 3 s (ms)" "$(((t1 - t0) / 1000000))" -lt 3000
out=$(via tb --cacert "$CA")
check_contains "status_timeout = block: blocked with a 403" "code=403" "$out"
check_contains "  naming the reason" "(reason: ocsp-timeout)" "$out"
alog_next; line=$LINE
ms=$(jf ocsp_ms "$line" | cut -d. -f1)
check_num "  decided within ocsp_timeout_ms + 50 ms" "$ms" -le 350
check_num "  not before the deadline" "$ms" -ge 299
check_eq "  counted as timeouts" "2" "$(metric 'tlsmint_ocsp_requests_total{result="timeout"}')"

echo "== ocsp = stapled (the responder still stopped)"
out=$(via st --cacert "$CA")
check_contains "a stapled good response: intercepted" "hello-from-origin" "$out"
alog_next; line=$LINE
check_eq "  access log: ocsp good, stapled" "good stapled" "$(jf ocsp "$line") $(jf ocsp_src "$line")"
out=$(via sr --cacert "$CA")
check_contains "a stapled revoked response: blocked" "(reason: revoked)" "$out"
alog_next
check_eq "  stapled" "stapled" "$(jf ocsp_src "$LINE")"
out=$(via plain --cacert "$CA")
check_contains "no staple, ocsp = stapled: nothing to check, served" "hello-from-origin" "$out"
alog_next
check_eq "  ocsp empty (not checked)" "" "$(jf ocsp "$LINE")"
kill -CONT "$RESP_PID"

echo "== the responder gone"
kill "$RESP_PID"; wait "$RESP_PID" 2>/dev/null
sed -i 's/^ocsp_timeout_ms = 300$/ocsp_timeout_ms = 2000/' "$CONF"
"$TLSMINT" -c "$CONF" ctl reload >/dev/null 2>&1
t0=$(date +%s%N)
out=$(via ta --cacert "$CA")
t1=$(date +%s%N)
check_contains "connection refused: allowed at once (status_timeout = allow)" "hello-from-origin" "$out"
alog_next
check_eq "  reason ocsp-error" "error ocsp-error" "$(jf ocsp "$LINE") $(jf reason "$LINE")"
check_num "  without waiting for the 2 s deadline (ms)" "$(((t1 - t0) / 1000000))" -lt 1500
kill -TERM "$TLSMINT_PID"; wait "$TLSMINT_PID"
check_eq "clean exit" "0" "$?"
finish
