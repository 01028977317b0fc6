#!/bin/bash
# SPDX-License-Identifier: MIT
# test_explicit.sh - tlsmint end to end as an explicit (HTTP CONNECT) proxy: a real SoftHSM
# token, a real nginx origin (HTTP/1.1 and h2), real curl and openssl clients.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib2.sh"

echo "== setup"
make_pki "$WORK/pki"
"$TLSMINT" init --dir "$WORK/state" >/dev/null || { echo "init failed"; exit 1; }
OPORT=$(free_port)
SPORT=$(free_port)
PPORT=$(free_port)
start_nginx "$WORK/origin" "$OPORT" "$WORK/pki/origin.pem" "$WORK/pki/origin.key"
start_nginx "$WORK/selfsigned" "$SPORT" "$WORK/pki/self.pem" "$WORK/pki/self.key"
O2PORT=$(free_port)
start_nginx "$WORK/origin2" "$O2PORT" "$WORK/pki/origin2.pem" "$WORK/pki/origin2.key"
CONF="$WORK/state/tlsmint.conf"
set_conf "$CONF" listen explicit "127.0.0.1:$PPORT"
set_conf "$CONF" listen transparent ""
set_conf "$CONF" listen threads 2
set_conf "$CONF" upstream ca_file "$WORK/pki/root.pem"
set_conf "$CONF" log access "$WORK/access.log"
set_conf "$CONF" policy bypass "127.0.0.1"
set_conf "$CONF" log keylog "$WORK/keylog.txt"
MPORT=$(free_port)
set_conf "$CONF" admin socket "$WORK/run/admin.sock"
set_conf "$CONF" admin metrics "127.0.0.1:$MPORT"
start_tlsmint "$CONF" "$WORK/tlsmint.log" || exit 1
CA="$WORK/state/ca/forward-trust.pem"
UCA="$WORK/state/ca/forward-untrust.pem"
PROXY="http://127.0.0.1:$PPORT"
alog_use "$WORK/access.log"

echo "== interception through CONNECT"
out=$(curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" "https://localhost:$OPORT/index.html" 2>&1)
check_eq "curl through the proxy gets the origin's body" "hello-from-origin" "$out"
alog_next; line=$LINE
check_contains "access log: first visit is a cache miss" '"cache":"miss"' "$line"
check_contains "access log: upstream verified" '"upstream_verify":"ok"' "$line"
check_contains "access log: outcome ok" '"outcome":"ok"' "$line"
check_contains "access log: SNI" '"sni":"localhost"' "$line"
out=$(curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" "https://localhost:$OPORT/index.html" 2>&1)
check_eq "second request works" "hello-from-origin" "$out"
alog_next; line=$LINE
check_contains "access log: second visit is a cache hit" '"cache":"hit"' "$line"
for _ in 1 2 3 4; do curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" "https://localhost:$OPORT/index.html" >/dev/null 2>&1; done
alog_next 4
check_contains "access log: upstream sessions are resumed (per loop)" '"upstream_resumed":true' "$(tail -n 4 "$WORK/access.log")"
# client-side resumption: TLS 1.3 tickets from the proxy, the next connection resumes with them
req='GET /index.html HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n'
printf "$req" | timeout 10 openssl s_client -proxy "127.0.0.1:$PPORT" -connect "localhost:$OPORT" \
    -servername localhost -CAfile "$CA" -tls1_3 -ign_eof -sess_out "$WORK/c.sess" >"$WORK/s1.out" 2>&1
check_contains "a client's first connection: the body" "hello-from-origin" "$(cat "$WORK/s1.out")"
check_eq "it was given 2 session tickets (TLS 1.3, full handshake)" "2" "$(grep -c "Post-Handshake New Session Ticket arrived" "$WORK/s1.out")"
printf "$req" | timeout 10 openssl s_client -proxy "127.0.0.1:$PPORT" -connect "localhost:$OPORT" \
    -servername localhost -CAfile "$CA" -tls1_3 -ign_eof -sess_in "$WORK/c.sess" >"$WORK/s2.out" 2>&1
check_contains "its next connection resumes the client session" "Reused, TLSv1.3" "$(cat "$WORK/s2.out")"
check_contains "and gets the body" "hello-from-origin" "$(cat "$WORK/s2.out")"
check_eq "a resumption is given 1 ticket" "1" "$(grep -c "Post-Handshake New Session Ticket arrived" "$WORK/s2.out")"
check_eq "SSLKEYLOGFILE output is 0600" "600" "$(stat -c %a "$WORK/keylog.txt")"
check "SSLKEYLOGFILE has TLS 1.3 secrets (both sides: 2 per connection)" test "$(grep -c CLIENT_HANDSHAKE_TRAFFIC_SECRET "$WORK/keylog.txt")" -ge 10

info=$(curl -sS -v --max-time 10 --cacert "$CA" -x "$PROXY" "https://localhost:$OPORT/" -o /dev/null 2>&1)
check_contains "leaf issued by the forward-trust CA" "issuer: O=tlsmint; CN=tlsmint forward-trust CA" "$info"
check_contains "leaf subject copied from the upstream" "subject: CN=localhost" "$info"
check_contains "client verified the leaf" "SSL certificate verify ok" "$info"

echo "== ALPN: h2 end to end"
out=$(curl -sS --http2 --max-time 10 --cacert "$CA" -x "$PROXY" -o /dev/null -w '%{http_version} %{http_code}' "https://localhost:$OPORT/index.html" 2>&1)
check_eq "HTTP/2 through the proxy" "2 200" "$out"
alog_next 4 # the two s_client ones, the -v request, and this one
check_contains "access log: ALPN h2" '"alpn":"h2"' "$LINE"

echo "== bulk relay"
sum_direct=$(sha256sum <"$WORK/origin/www/big.bin" | cut -d' ' -f1)
sum_proxy=$(curl -sS --max-time 30 --cacert "$CA" -x "$PROXY" "https://localhost:$OPORT/big.bin" | sha256sum | cut -d' ' -f1)
check_eq "3 MB body arrives intact" "$sum_direct" "$sum_proxy"
alog_next
check_contains "access log counts the bytes" '"bytes_down":300' "$LINE"

echo "== upstream whose chain does not verify"
curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" "https://localhost:$SPORT/index.html" >/dev/null 2>&1
check_eq "client trusting only forward-trust refuses it (curl exit 60)" "60" "$?"
out=$(curl -sS --max-time 10 --cacert "$UCA" -x "$PROXY" "https://localhost:$SPORT/index.html" 2>&1)
check_eq "the leaf chains to forward-untrust" "hello-from-origin" "$out"
alog_next 2
check_not_contains "access log records the verification error" '"upstream_verify":"ok"' "$LINE"

echo "== bypass list"
out=$(curl -sS --max-time 10 --cacert "$WORK/pki/root.pem" -x "$PROXY" "https://127.0.0.1:$OPORT/index.html" 2>&1)
check_eq "bypassed host: client sees the origin's own certificate" "hello-from-origin" "$out"
alog_next
check_contains "access log: bypass" '"outcome":"bypass"' "$LINE"

echo "== bad input"
resp=$(printf 'GET http://localhost/ HTTP/1.1\r\nHost: localhost\r\n\r\n' | timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PPORT; cat >&3; cat <&3")
check_contains "plain GET: 405" "HTTP/1.1 405" "$resp"
resp=$(printf 'CONNECT nonsense HTTP/1.1\r\n\r\n' | timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PPORT; cat >&3; cat <&3")
check_contains "CONNECT without a port: 400" "HTTP/1.1 400" "$resp"
resp=$(printf '\x16\x03\x01garbage\r\n\r\n' | timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PPORT; cat >&3; cat <&3")
check_contains "binary garbage: 400" "HTTP/1.1 400" "$resp"
DEAD=$(free_port)
resp=$(printf 'CONNECT 127.0.0.1:%s HTTP/1.1\r\n\r\n' "$DEAD" | timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PPORT; cat >&3; cat <&3")
check_contains "CONNECT to a closed port: 502" "HTTP/1.1 502" "$resp"
resp=$(printf 'CONNECT no-such-host.invalid:443 HTTP/1.1\r\n\r\n' | timeout 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PPORT; cat >&3; cat <&3")
check_contains "CONNECT to an unknown name: 502" "HTTP/1.1 502" "$resp"
resp=$(python3 - "$PPORT" "$OPORT" <<'PY'
import os, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(b"CONNECT localhost:%s HTTP/1.1\r\n\r\n" % sys.argv[2].encode())
head = s.recv(200)
s.sendall(b"\x16\x03\x01\x00\x40" + os.urandom(64))   # a TLS record that is no ClientHello
rest = b""
try:
    while True:
        d = s.recv(4096)
        if not d:
            break
        rest += d
except socket.timeout:
    rest += b"TIMEOUT"
print(head.split(b"\r\n")[0].decode(), "closed" if b"TIMEOUT" not in rest else "hung", len(rest))
PY
)
check_contains "malformed ClientHello after CONNECT: 200, then an alert and close" "HTTP/1.1 200 Connection established closed" "$resp"
long=$(printf 'a%.0s' $(seq 1 60)).$(printf 'b%.0s' $(seq 1 60)).$(printf 'c%.0s' $(seq 1 60)).example
out=$(echo | timeout 10 openssl s_client -proxy "127.0.0.1:$PPORT" -connect "localhost:$OPORT" -servername "$long" -CAfile "$CA" 2>&1)
check_contains "190-byte SNI that the upstream does not match: names come from the upstream only" "subject=CN = localhost" "$out"
check_contains "and the name mismatch makes it a forward-untrust leaf" "issuer=O = tlsmint, CN = tlsmint forward-untrust CA" "$out"
out=$(echo | timeout 10 openssl s_client -proxy "127.0.0.1:$PPORT" -connect "localhost:$OPORT" -servername 'odd"name\x' -CAfile "$CA" 2>&1)
check_contains "SNI with odd bytes is ignored: the CONNECT host is used, leaf verifies" "Verify return code: 0 (ok)" "$out"
check_not_contains "odd SNI bytes never reach the leaf" 'odd"name' "$(echo "$out" | grep -E '^(subject|issuer)=')"
out=$(curl -sS --max-time 10 --cacert "$CA" --resolve "$long:$OPORT:127.0.0.1" -x "$PROXY" "https://$long:$OPORT/" 2>&1)
check_contains "CONNECT to a name that does not resolve: clean curl error" "curl: (" "$out"
out=$(curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" "https://localhost:$OPORT/index.html" 2>&1)
check_eq "still serving after all of that" "hello-from-origin" "$out"
check "proxy process alive" kill -0 "$TLSMINT_PID"

echo "== admin socket and metrics"
st=$("$TLSMINT" -c "$CONF" ctl status 2>&1)
check_contains "ctl status answers" "connections " "$st"
check_not_contains "ctl status counts handshakes" "handshakes    0 ok" "$st"
hs=$("$TLSMINT" -c "$CONF" ctl hsm 2>&1)
check_contains "ctl hsm shows the token" "label 'tlsmint', serial" "$hs"
check_contains "ctl hsm shows the member up" "member hsm: up" "$hs"
check_not_contains "ctl hsm counts signatures" "operations   0 signatures" "$hs"
"$TLSMINT" -c "$CONF" ctl bogus >/dev/null 2>&1
check_eq "ctl with an unknown command exits 1" "1" "$?"
check_eq "admin socket is 0600" "600" "$(stat -c %a "$WORK/run/admin.sock")"
m=$(curl -sS --max-time 5 "http://127.0.0.1:$MPORT/metrics")
check_contains "metrics: Prometheus text" "# TYPE tlsmint_connections_total counter" "$m"
ok_count=$(echo "$m" | sed -n 's/^tlsmint_connections_total{outcome="ok"} //p')
check "metrics: ok connections counted ($ok_count)" test "${ok_count:-0}" -ge 5
check_contains "metrics: HSM latency" 'tlsmint_hsm_sign_latency_seconds{member="hsm",quantile="0.99"}' "$m"
hcount=$(echo "$m" | sed -n 's/^tlsmint_hsm_sign_duration_seconds_count{member="hsm"} //p')
hinf=$(echo "$m" | sed -n 's/^tlsmint_hsm_sign_duration_seconds_bucket{member="hsm",le="+Inf"} //p')
h1s=$(echo "$m" | sed -n 's/^tlsmint_hsm_sign_duration_seconds_bucket{member="hsm",le="1"} //p')
check "metrics: HSM latency histogram counts every signature (${hcount:-?})" test "${hcount:-0}" -ge 1
check_eq "metrics: histogram +Inf bucket = count" "$hcount" "$hinf"
check "metrics: histogram buckets are cumulative (1 s bucket <= +Inf)" test "${h1s:-x}" -le "${hinf:-0}"

echo "== reload (ctl reload and SIGHUP) without dropping connections"
curl -sS --max-time 30 --limit-rate 600K --cacert "$CA" -x "$PROXY" "https://localhost:$OPORT/big.bin" -o "$WORK/slow.bin" &
SLOW=$!
wait_for 50 test -s "$WORK/slow.bin" # the download is under way
cp "$CONF" "$WORK/conf.before"
set_conf "$CONF" policy bypass "127.0.0.1 localhost"
r0=$("$TLSMINT" -c "$CONF" ctl reload 2>&1)
check_eq "ctl reload exits 0" "0" "$?"
check_contains "ctl reload says what applies" "reloaded" "$r0"
info=$(curl -sS -v --max-time 10 --cacert "$WORK/pki/root.pem" -x "$PROXY" "https://localhost:$OPORT/index.html" 2>&1)
check_contains "new connections follow the new bypass list" "issuer: CN=tlsmint e2e root" "$info"
echo "[listen]" >>"$CONF"; echo "threads = many" >>"$CONF"
r=$("$TLSMINT" -c "$CONF" ctl reload 2>&1)
check_eq "a broken config: ctl reload exits 1" "1" "$?"
check_contains "and says the old configuration stays" "still running the previous configuration" "$r"
check_contains "and names file, line and key" "[listen] threads: 'many' is not an integer" "$r"
check_contains "reload keeps the leaf cache when the CA material is unchanged" "leaf cache kept" "$r0"
cp "$WORK/conf.before" "$CONF"
before=$(grep -c "reloaded $CONF" "$WORK/tlsmint.log")
kill -HUP "$TLSMINT_PID"
for _ in $(seq 1 100); do
    [ "$(grep -c "reloaded $CONF" "$WORK/tlsmint.log")" -gt "$before" ] && break
    sleep 0.05
done
check "SIGHUP reloads too" test "$(grep -c "reloaded $CONF" "$WORK/tlsmint.log")" -gt "$before"
out=$(curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" "https://localhost:$OPORT/index.html" 2>&1)
check_eq "after SIGHUP, localhost is intercepted again" "hello-from-origin" "$out"
wait "$SLOW"
check_eq "the download that spanned two reloads finished" "0" "$?"
check_eq "and is byte-identical" "$sum_direct" "$(sha256sum <"$WORK/slow.bin" | cut -d' ' -f1)"
check_contains "ctl status shows the generation" "(generation 2)" "$("$TLSMINT" -c "$CONF" ctl status 2>&1)"

echo "== HSM hangs: fail closed for misses, hits keep working"
SIGNER=$(pgrep -P "$TLSMINT_PID" -f __signer | head -1)
check "signer process found" test -n "$SIGNER"
alog_sync # the bad input's connections above, not all of them logged
kill -STOP "$SIGNER"
t0=$(date +%s%N)
curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" "https://localhost:$O2PORT/index.html" >/dev/null 2>&1
rc=$?
t1=$(date +%s%N)
check "cache miss while the HSM hangs is refused (curl rc=$rc)" test "$rc" -ne 0
ms=$(((t1 - t0) / 1000000))
check "refused within the sign deadline plus slack (${ms} ms < 2000)" test "$ms" -lt 2000
alog_next
check_contains "access log: refused_hsm" '"outcome":"refused_hsm"' "$LINE"
out=$(curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" "https://localhost:$OPORT/index.html" 2>&1)
check_eq "cache hit still served while the HSM hangs" "hello-from-origin" "$out"
kill -CONT "$SIGNER" 2>/dev/null
for _ in $(seq 1 60); do
    curl -sS --max-time 5 --cacert "$CA" -x "$PROXY" "https://localhost:$O2PORT/index.html" >/dev/null 2>&1 && break
    sleep 0.1
done
out=$(curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" "https://localhost:$O2PORT/index.html" 2>&1)
check_eq "after the HSM is back, the miss is minted" "hello-from-origin" "$out"

echo "== SIGTERM drains and exits 0"
kill -TERM "$TLSMINT_PID"
wait "$TLSMINT_PID"
check_eq "exit status 0" "0" "$?"
check_contains "log says stopped" "main: stopped" "$(cat "$WORK/tlsmint.log")"
check_not_contains "no sanitizer report" "ERROR: AddressSanitizer" "$(cat "$WORK/tlsmint.log")"
check_not_contains "no UBSan report" "runtime error" "$(cat "$WORK/tlsmint.log")"
echo "== fail_mode = open: while the HSM hangs, misses pass through untouched"
CONF2="$WORK/open.conf"
cp "$CONF" "$CONF2"
PPORT2=$(free_port)
set_conf "$CONF2" listen explicit "127.0.0.1:$PPORT2"
set_conf "$CONF2" admin socket "$WORK/run/admin2.sock"
set_conf "$CONF2" admin metrics ""
set_conf "$CONF2" hsm fail_mode open
start_tlsmint "$CONF2" "$WORK/tlsmint2.log" || exit 1
alog_use "$WORK/access.log" # the first instance has exited: its lines are all written
SIGNER=$(pgrep -P "$TLSMINT_PID" -f __signer | head -1)
kill -STOP "$SIGNER"
info=$(curl -sS -v --max-time 10 --cacert "$WORK/pki/root.pem" -x "http://127.0.0.1:$PPORT2" "https://localhost:$OPORT/index.html" 2>&1)
check_contains "fail open: the client talks to the origin itself" "issuer: CN=tlsmint e2e root" "$info"
check_contains "fail open: the body arrives" "hello-from-origin" "$info"
alog_next
check_contains "access log: fail_open" '"outcome":"fail_open"' "$LINE"
kill -CONT "$SIGNER"
for _ in $(seq 1 60); do
    curl -sS --max-time 5 --cacert "$CA" -x "http://127.0.0.1:$PPORT2" "https://localhost:$OPORT/index.html" >/dev/null 2>&1 && break
    sleep 0.1
done
out=$(curl -sS -v --max-time 10 --cacert "$CA" -x "http://127.0.0.1:$PPORT2" "https://localhost:$O2PORT/index.html" 2>&1)
check_contains "HSM back: intercepted again" "issuer: O=tlsmint; CN=tlsmint forward-trust CA" "$out"
kill -TERM "$TLSMINT_PID"
wait "$TLSMINT_PID"
check_eq "second instance: exit 0" "0" "$?"
check_not_contains "second instance: no sanitizer report" "Sanitizer" "$(cat "$WORK/tlsmint2.log")"

audit=$(cat "$WORK/state/audit.log")
check_contains "audit: proxy start" '"event":"start"' "$audit"
check_contains "audit: signatures counted, not logged one by one" '"event":"signatures","pid"' "$audit"
check_contains "audit: operator actions are not in it unless done" '"event":"init"' "$audit"
PIN=$(cat "$WORK/state/hsm/pin")
check_not_contains "the PIN is not in the logs" "$PIN" "$(cat "$WORK/tlsmint.log" "$WORK/tlsmint2.log" "$WORK/access.log")"

finish
