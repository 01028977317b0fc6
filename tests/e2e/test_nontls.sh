#!/bin/bash
# SPDX-License-Identifier: MIT
# test_nontls.sh - traffic that is not TLS ([policy] non_tls, first_byte_ms): an SSH-like
# banner server through CONNECT (the banner within first_byte_ms + 100 ms, then an echo both
# ways), a plain HTTP GET through a CONNECT tunnel to a real nginx, a TLS client that is slow
# to speak (still intercepted), raw client-first bytes on the transparent port (namespace +
# REDIRECT, as root), then non_tls = block closes all of them and logs why.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib2.sh"
NT="$E2E_DIR/nontls.py"

echo "== setup"
make_pki "$WORK/pki"
S="$WORK/state"
"$TLSMINT" init --dir "$S" >/dev/null || { echo "init failed"; exit 1; }
OPORT=$(free_port) HPORT=$(free_port) BPORT=$(free_port) PPORT=$(free_port) MPORT=$(free_port)
start_nginx2 "$WORK/origin" "$OPORT" "$WORK/pki/origin.pem" "$WORK/pki/origin.key"
NGINX_LISTEN_OPTS="default_server" write_nginx "$WORK/plain" "127.0.0.1:$HPORT" "$WORK/pki/origin.pem" "$WORK/pki/origin.key"
nginx -c "$WORK/plain/nginx.conf" -e "$WORK/plain/logs/error.log" & PIDS+=($!)
python3 "$NT" server banner "$BPORT" & PIDS+=($!)
wait_port "$HPORT"; wait_port "$BPORT"
CONF="$S/tlsmint.conf"
set_conf "$CONF" listen explicit "127.0.0.1:$PPORT"
set_conf "$CONF" listen transparent ""
set_conf "$CONF" upstream ca_file "$WORK/pki/root.pem"
set_conf "$CONF" log access "$WORK/access.log"
set_conf "$CONF" admin socket "$WORK/run/admin.sock"
set_conf "$CONF" admin metrics "127.0.0.1:$MPORT"
set_conf "$CONF" policy first_byte_ms 300
cp "$CONF" "$WORK/base.conf"
start_tlsmint "$CONF" "$WORK/tlsmint.log" || exit 1
CA="$S/ca/forward-trust.pem"
PROXY="127.0.0.1:$PPORT"
alog_use "$WORK/access.log"

echo "== a server-first protocol through CONNECT"
r=$(timeout 20 python3 "$NT" banner "$PROXY" "127.0.0.1:$BPORT")
check_eq "the banner reaches the client" "banner" "$(kv result "$r")"
ms=$(kv ms "$r")
check_num "  within first_byte_ms + 100 ms" "${ms:-99999}" -lt 400
check_eq "  then an echo works both ways" "yes" "$(kv echo "$r")"
alog_next; line=$LINE
check_eq "access log: action tunnel" "tunnel" "$(jf action "$line")"
check_eq "access log: reason server-first" "server-first" "$(jf reason "$line")"
check_eq "access log: outcome bypass (spliced)" "bypass" "$(jf outcome "$line")"

echo "== plain HTTP through a CONNECT tunnel"
out=$(curl -sS --max-time 10 -p -x "http://$PROXY" "http://localhost:$HPORT/index.html" 2>&1)
check_eq "GET through the tunnel reaches the HTTP origin" "hello-from-origin" "$out"
alog_next; line=$LINE
check_eq "access log: reason not-tls" "not-tls" "$(jf reason "$line")"
check_eq "access log: action tunnel" "tunnel" "$(jf action "$line")"

echo "== a TLS client that waits before its ClientHello is still inspected"
r=$(timeout 20 python3 "$NT" slowtls "$PROXY" "localhost:$OPORT" "$CA" 700)
check_eq "TLS after 700 ms (first_byte_ms 300)" "tls" "$(kv result "$r")"
check_eq "  on a forward-trust leaf" "tlsmint_forward-trust_CA" "$(kv issuer "$r")"
check_eq "  and the origin answered" "yes" "$(kv body "$r")"
alog_next; line=$LINE
check_eq "  access log: inspected" "inspect" "$(jf action "$line")"
check_eq "  outcome ok" "ok" "$(jf outcome "$line")"

echo "== a block rule still blocks what is not TLS"
cp "$WORK/base.conf" "$CONF"
printf "\n[rule.no-banner]\ndst = 127.0.0.1:%s\naction = block\n" "$BPORT" >>"$CONF"
"$TLSMINT" -c "$CONF" ctl reload >/dev/null 2>&1
check_eq "ctl reload" "0" "$?"
r=$(timeout 20 python3 "$NT" banner "$PROXY" "127.0.0.1:$BPORT")
check_eq "the banner server's destination is blocked" "nobanner" "$(kv result "$r")"
alog_next; line=$LINE
check_eq "  rule no-banner" "no-banner" "$(jf rule "$line")"
check_eq "  outcome blocked" "blocked" "$(jf outcome "$line")"

echo "== non_tls = block"
cp "$WORK/base.conf" "$CONF"
set_conf "$CONF" policy non_tls block
"$TLSMINT" -c "$CONF" ctl reload >/dev/null 2>&1
r=$(timeout 20 python3 "$NT" banner "$PROXY" "127.0.0.1:$BPORT")
check_eq "server-first: closed, no banner" "nobanner" "$(kv result "$r")"
alog_next; line=$LINE
check_eq "  logged: blocked, server-first" "blocked server-first" "$(jf outcome "$line") $(jf reason "$line")"
out=$(curl -sS --max-time 10 -p -x "http://$PROXY" "http://localhost:$HPORT/index.html" 2>&1)
check_not_contains "plain GET: closed" "hello-from-origin" "$out"
alog_next; line=$LINE
check_eq "  logged: blocked, not-tls" "blocked not-tls" "$(jf outcome "$line") $(jf reason "$line")"
out=$(curl -sS --max-time 10 --cacert "$CA" -x "http://$PROXY" "https://localhost:$OPORT/index.html" 2>&1)
check_eq "TLS is still intercepted" "hello-from-origin" "$out"
m=$(curl -sS --max-time 5 "http://127.0.0.1:$MPORT/metrics")
check_contains "metrics: tunnelled server-first" 'tlsmint_non_tls_total{reason="server-first",action="tunnel"} 1' "$m"
check_contains "metrics: blocked not-tls" 'tlsmint_non_tls_total{reason="not-tls",action="block"} 1' "$m"
kill -TERM "$TLSMINT_PID"; wait "$TLSMINT_PID"
check_eq "clean exit" "0" "$?"

echo "== transparent: raw client-first bytes reach their original destination"
if [ "$(id -u)" != 0 ] || ! command -v iptables >/dev/null || ! ip netns add "tlsmint-nt-$$" 2>/dev/null; then
    echo "  (skipped: needs root, iptables and network namespaces)"
    finish
    exit
fi
NS="tlsmint-nt-$$"
cleanup_ns() { cleanup; ip netns del "$NS" 2>/dev/null; }
trap cleanup_ns EXIT
IN() { ip netns exec "$NS" "$@"; }
IN ip link set lo up
chmod 755 "$S" "$S/ca"
TPORT=$(free_port) EPORT=$(free_port)
tconf() {
    cp "$WORK/base.conf" "$WORK/t.conf"
    set_conf "$WORK/t.conf" listen explicit ""
    set_conf "$WORK/t.conf" listen transparent "127.0.0.1:$TPORT"
    set_conf "$WORK/t.conf" admin socket "$WORK/run/t.sock"
    set_conf "$WORK/t.conf" admin metrics ""
    set_conf "$WORK/t.conf" log access "$WORK/t-access.log"
    [ -z "${1:-}" ] || set_conf "$WORK/t.conf" policy non_tls "$1"
}
tconf
IN bash -c "echo \$\$ >$WORK/echo.pid; exec python3 $NT server echo $EPORT" &
IN bash -c "echo \$\$ >$WORK/tt.pid; exec $TLSMINT -c $WORK/t.conf run" >"$WORK/tt.log" 2>&1 &
wait_for 50 test -s "$WORK/echo.pid" -a -s "$WORK/tt.pid"
PIDS+=($(cat "$WORK/echo.pid" "$WORK/tt.pid"))
wait_for 100 grep -q "tlsmint running" "$WORK/tt.log"
for _ in $(seq 1 100); do # the echo server inside the namespace (python starts slowly under load)
    IN bash -c "exec 3<>/dev/tcp/127.0.0.1/$EPORT" 2>/dev/null && break
    sleep 0.1
done
IN iptables -t nat -A OUTPUT -p tcp -d 127.0.0.1 --dport "$EPORT" -m owner --uid-owner 65534 \
    -j REDIRECT --to-ports "$TPORT"
AS_NOBODY() { IN setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
r=$(AS_NOBODY timeout 20 python3 "$NT" raw - "127.0.0.1:$EPORT" "hello-raw")
check_eq "raw bytes on the redirected port reach the echo server" "echo:hello-raw" "$(kv result "$r")"
log_next "$WORK/t-access.log"; line=$LINE
check_eq "  through the transparent listener, tunnelled, not-tls" "transparent tunnel not-tls" \
    "$(jf mode "$line") $(jf action "$line") $(jf reason "$line")"
check_eq "  to its original destination" "127.0.0.1:$EPORT" "$(jf dst "$line")"
tconf block
IN "$TLSMINT" -c "$WORK/t.conf" ctl reload >/dev/null 2>&1
r=$(AS_NOBODY timeout 20 python3 "$NT" raw - "127.0.0.1:$EPORT" "hello-raw")
check_eq "non_tls = block: closed" "closed" "$(kv result "$r")"
log_next "$WORK/t-access.log"; line=$LINE
check_eq "  logged: blocked, not-tls" "blocked not-tls" "$(jf outcome "$line") $(jf reason "$line")"

finish
