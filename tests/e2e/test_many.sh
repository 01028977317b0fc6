#!/bin/bash
# SPDX-License-Identifier: MIT
# test_many.sh [N] - tlsmint holds many intercepted connections: TLSMINT_MANY, else N, else
# 9000 TLS connections through the explicit listener, both TLS sessions up (real nginx origin), kept
# idle; meanwhile a new connection is still intercepted within 1 s; then every held one relays
# a request. Prints the proxy's RSS per held connection (VmRSS delta / connections). Then
# [listen] max_connections: past it a new connection is refused cleanly, counted in the
# metrics, with a summary log line instead of one line per refusal.
# The machine's hard descriptor limit bounds the size: the proxy needs two per connection.
. "$(dirname "$0")/lib.sh"

N=${TLSMINT_MANY:-${1:-9000}}
HARD=$(ulimit -Hn)
if [ "$HARD" != unlimited ] && [ "$HARD" -lt $((2 * N + 200)) ]; then
    echo "SKIP: the hard descriptor limit ($HARD) is too low for $N connections (TLSMINT_MANY)"
    exit 77
fi
ulimit -Sn "$HARD"
# the figure is the release build's; a sanitizer build keeps redzones and a quarantine
# (release: 34 KiB measured, bench/results/many.md; the bound leaves room for the heap's moods)
if ldd "$TLSMINT" 2>/dev/null | grep -q libasan; then BUILD=ASan BOUND=4096; else BUILD=release BOUND=64; fi

echo "== setup ($N connections)"
make_pki "$WORK/pki"
"$TLSMINT" init --dir "$WORK/state" >/dev/null || { echo "init failed"; exit 1; }
OPORT=$(free_port)
PPORT=$(free_port)
MPORT=$(free_port)
# an origin for that many keep-alive connections: one worker, its own descriptor limit
O="$WORK/origin"
mkdir -p "$O/www" "$O/logs" "$O/tmp"
echo "hello-from-origin" >"$O/www/index.html"
mkdir -p "$O/www/slow"
head -c 2400000 /dev/urandom >"$O/www/slow/big.bin" # 12 s at the origin's 200 KB/s
cat >"$O/nginx.conf" <<EOF
daemon off;
worker_processes 1;
worker_rlimit_nofile $((N * 2 + 200));
pid $O/nginx.pid;
error_log $O/logs/error.log;
# nginx closes idle connections once fewer than 1/16 of worker_connections are free: room for 2N
events { worker_connections $((N * 2 + 100)); }
http {
  access_log off;
  client_body_temp_path $O/tmp;
  proxy_temp_path $O/tmp;
  fastcgi_temp_path $O/tmp;
  uwsgi_temp_path $O/tmp;
  scgi_temp_path $O/tmp;
  client_header_timeout 300s;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:$OPORT ssl backlog=4096;
    ssl_certificate $WORK/pki/origin.pem;
    ssl_certificate_key $WORK/pki/origin.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    root $O/www;
    location /slow/ { limit_rate 200k; }
  }
}
EOF
chmod -R a+rX "$O"
nginx -c "$O/nginx.conf" -e "$O/logs/error.log" &
PIDS+=($!)
wait_port "$OPORT"
CONF="$WORK/state/tlsmint.conf"
set_conf "$CONF" listen explicit "127.0.0.1:$PPORT"
set_conf "$CONF" listen transparent ""
set_conf "$CONF" upstream ca_file "$WORK/pki/root.pem"
set_conf "$CONF" log access "$WORK/access.log"
set_conf "$CONF" admin socket "$WORK/run/admin.sock"
set_conf "$CONF" admin metrics "127.0.0.1:$MPORT"
start_tlsmint "$CONF" "$WORK/tlsmint.log" || exit 1
CA="$WORK/state/ca/forward-trust.pem"
PROXY="http://127.0.0.1:$PPORT"
limit=$(sed -n 's/.*connections: up to \([0-9]*\) at once.*/\1/p' "$WORK/tlsmint.log" | head -n 1)
check "the log says how many connections it can hold ($limit)" test "${limit:-0}" -ge "$N"
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$TLSMINT_PID/status"; }
# warm: the leaf is minted, the upstream session cached, the first buffers allocated
out=$(curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" "https://localhost:$OPORT/index.html" 2>&1)
check_eq "one connection through the proxy" "hello-from-origin" "$out"
sleep 0.5
rss0=$(rss)

echo "== hold $N connections"
coproc MANY { exec python3 "$(dirname "$0")/manyconns.py" "$PPORT" localhost "$OPORT" "$CA" "$N"; }
read -r -t 170 word held failed secs retried <&"${MANY[0]}"
check_eq "$N TLS connections intercepted and held (${secs:-?} s, ${failed:-?} failed, ${retried:-?} opened again)" "held $N" "$word $held"
sleep 1
rss1=$(rss)
active=$(curl -sS --max-time 5 "http://127.0.0.1:$MPORT/metrics" | awk '$1 == "tlsmint_connections_active" {print $2}')
check "metrics: at least $N connections active (${active:-?})" test "${active:-0}" -ge "$N"
per=$(( (rss1 - rss0) / (held > 0 ? held : 1) ))
echo "   proxy VmRSS $rss0 KiB -> $rss1 KiB: $per KiB per held connection ($BUILD build)"
check "RSS per held connection is bounded (< $BOUND KiB: $per KiB)" test "$per" -lt "$BOUND"
t=$(curl -sS --max-time 5 --cacert "$CA" -x "$PROXY" -o "$WORK/new.txt" -w '%{time_total}' \
    "https://localhost:$OPORT/index.html" 2>&1)
check_eq "while they are held, a new connection is intercepted" "hello-from-origin" "$(cat "$WORK/new.txt" 2>/dev/null)"
check "and within 1 s (${t} s)" awk -v t="$t" 'BEGIN { exit !(t + 0 < 1.0 && t != "") }'

echo "== every held connection relays a request"
echo relay >&"${MANY[1]}"
read -r -t 170 word ok bad secs <&"${MANY[0]}"
check_eq "all $N answered through the proxy (${secs:-?} s, ${bad:-?} failed)" "relayed $N" "$word $ok"
# bash unsets MANY_PID once the coprocess has exited and been reaped (it may be by now)
[ -n "${MANY_PID:-}" ] && wait "$MANY_PID" 2>/dev/null
kill "$TLSMINT_PID" 2>/dev/null
wait "$TLSMINT_PID" 2>/dev/null
check_not_contains "no sanitizer report" "ERROR: AddressSanitizer" "$(cat "$WORK/tlsmint.log")"

echo "== [listen] max_connections: a clean refusal past it; a bypassed download outlives 10 s"
set_conf "$CONF" listen max_connections 4
set_conf "$CONF" policy bypass "127.0.0.1"
start_tlsmint "$CONF" "$WORK/tlsmint2.log" || exit 1
check_contains "the log names the configured limit" "connections: up to 4 at once ([listen] max_connections" "$(cat "$WORK/tlsmint2.log")"
# spliced, not intercepted: longer than the 10 s handshake deadline, ended only by idle time
curl -sS --max-time 40 --cacert "$WORK/pki/root.pem" -x "$PROXY" -o "$WORK/slow.bin" \
    -w '%{time_total}' "https://127.0.0.1:$OPORT/slow/big.bin" >"$WORK/slow.time" 2>&1 &
SLOW=$!
sleep 1
coproc FEW { exec python3 "$(dirname "$0")/manyconns.py" "$PPORT" localhost "$OPORT" "$CA" 3; }
read -r -t 60 word held failed secs retried <&"${FEW[0]}"
check_eq "3 connections held (the 4th is the download)" "held 3" "$word $held"
for _ in $(seq 1 20); do
    curl -sS --max-time 5 --cacert "$CA" -x "$PROXY" -o /dev/null "https://localhost:$OPORT/" 2>/dev/null
done
code=$(curl -sS --max-time 5 --cacert "$CA" -x "$PROXY" -o /dev/null -w '%{http_connect}' \
    "https://localhost:$OPORT/" 2>/dev/null)
check_eq "the 5th gets 503 from the explicit listener" "503" "$code"
m=$(curl -sS --max-time 5 "http://127.0.0.1:$MPORT/metrics")
check_contains "metrics: refusals counted" 'tlsmint_connections_refused_total{reason="limit"} 21' "$m"
lines=$(grep -c "connection limit (4) reached" "$WORK/tlsmint2.log")
check "21 refusals, one summary line so far ($lines)" test "$lines" -eq 1
echo quit >&"${FEW[1]}"
wait "$FEW_PID" 2>/dev/null
sleep 0.5
out=$(curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" "https://localhost:$OPORT/index.html" 2>&1)
check_eq "below the limit again: intercepted" "hello-from-origin" "$out"
wait "$SLOW"
check_eq "the bypassed download completes" "0" "$?"
check "it took longer than the handshake deadline ($(cat "$WORK/slow.time") s)" \
    awk -v t="$(cat "$WORK/slow.time")" 'BEGIN { exit !(t + 0 > 10.5) }'
check "and arrived whole" cmp -s "$WORK/slow.bin" "$O/www/slow/big.bin"

finish
