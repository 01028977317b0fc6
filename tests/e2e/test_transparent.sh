#!/bin/bash
# SPDX-License-Identifier: MIT
# test_transparent.sh - tlsmint as a transparent proxy: a network namespace made here, the
# nftables rules of 'tlsmint transparent setup --exclude-uid 0' (nat output REDIRECT of
# everything but root's connections, so the proxy's own upstream connections are not
# redirected; setup twice changes nothing, teardown leaves the ruleset as it was), a real nginx
# origin and curl running as 'nobody'.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib2.sh"

if [ "$(id -u)" != 0 ] || ! command -v nft >/dev/null || ! ip netns list >/dev/null 2>&1; then
    echo "SKIP: needs root, nft and network namespaces"
    exit 77
fi
NS="tlsmint-e2e-$$"
ip netns add "$NS" || { echo "SKIP: cannot create a network namespace"; exit 77; }
cleanup_ns() { cleanup; ip netns del "$NS" 2>/dev/null; }
trap cleanup_ns EXIT
IN() { ip netns exec "$NS" "$@"; }
IN ip link set lo up

echo "== setup (namespace $NS)"
make_pki "$WORK/pki"
"$TLSMINT" init --dir "$WORK/state" >/dev/null || { echo "init failed"; exit 1; }
chmod 755 "$WORK/state" "$WORK/state/ca"
OPORT=18443
TPORT=18080
CONF="$WORK/state/tlsmint.conf"
set_conf "$CONF" listen explicit ""
set_conf "$CONF" listen transparent "127.0.0.1:$TPORT"
set_conf "$CONF" listen threads 1
set_conf "$CONF" upstream ca_file "$WORK/pki/root.pem"
set_conf "$CONF" log access "$WORK/access.log"
# origin and proxy run inside the namespace; the helpers' port probes must too
wait_port() {
    for _ in $(seq 1 100); do
        IN bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}
mkdir -p "$WORK/origin/www" "$WORK/origin/tmp" "$WORK/origin/logs"
echo "hello-from-origin" >"$WORK/origin/www/index.html"
cat >"$WORK/origin/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $WORK/origin/nginx.pid;
error_log $WORK/origin/logs/error.log;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path $WORK/origin/tmp;
  proxy_temp_path $WORK/origin/tmp;
  fastcgi_temp_path $WORK/origin/tmp;
  uwsgi_temp_path $WORK/origin/tmp;
  scgi_temp_path $WORK/origin/tmp;
  server {
    listen 127.0.0.1:$OPORT ssl http2;
    listen [::1]:$OPORT ssl http2;
    ssl_certificate $WORK/pki/origin.pem;
    ssl_certificate_key $WORK/pki/origin.key;
    root $WORK/origin/www;
  }
}
EOF
chmod -R a+rX "$WORK/origin" "$WORK/pki"
# 'ip netns exec' may fork: start through a shell that records the real pid, then execs
IN bash -c "echo \$\$ >$WORK/nginx.pid2; exec nginx -c $WORK/origin/nginx.conf -e $WORK/origin/logs/error.log" &
wait_for 50 test -s "$WORK/nginx.pid2"
PIDS+=($(cat "$WORK/nginx.pid2"))
wait_port "$OPORT" || { echo "origin did not start"; exit 1; }
IN bash -c "echo \$\$ >$WORK/tlsmint.pid; exec $TLSMINT -c $CONF run" >"$WORK/tlsmint.log" 2>&1 &
WAITER=$!
wait_for 50 test -s "$WORK/tlsmint.pid"
TLSMINT_PID=$(cat "$WORK/tlsmint.pid")
PIDS+=($TLSMINT_PID)
wait_port "$TPORT" || { echo "tlsmint did not start"; cat "$WORK/tlsmint.log"; exit 1; }
echo "== tlsmint transparent setup"
RS0=$(IN nft -s list ruleset)
out=$(IN "$TLSMINT" -c "$CONF" transparent setup --ports "$OPORT" --exclude-uid 0 2>&1)
check_eq "setup: exit 0" "0" "$?"
check_contains "setup says what it did" "nftables: table inet tlsmint: TCP port(s) $OPORT arriving on any interface, this host's own except uid 0 redirected to port $TPORT (IPv4 and IPv6)" "$out"
RS1=$(IN nft -s list ruleset)
IN "$TLSMINT" -c "$CONF" transparent setup --ports "$OPORT" --exclude-uid 0 >/dev/null 2>&1
check_eq "setup twice changes nothing" "$RS1" "$(IN nft -s list ruleset)"
check_eq "nothing outside table inet tlsmint" "table inet tlsmint" "$(IN nft list tables | grep -v -F -x -f <(echo "$RS0" | grep '^table') )"
out=$(IN "$TLSMINT" transparent setup --ports 0,443 --to-port 1 2>&1)
check "bad --ports refused" test $? -eq 2
check_contains "with a reason" "--ports '0,443': comma-separated TCP ports" "$out"
CA="$WORK/state/ca/forward-trust.pem"
AS_NOBODY() { IN setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
alog_use "$WORK/access.log"

echo "== redirected client"
out=$(AS_NOBODY curl -sS --max-time 10 --cacert "$CA" "https://localhost:$OPORT/index.html" 2>&1)
check_eq "curl (uid nobody, no proxy setting) gets the origin's body" "hello-from-origin" "$out"
alog_next; line=$LINE
check_contains "access log: transparent mode" '"mode":"transparent"' "$line"
check_contains "access log: original destination from SO_ORIGINAL_DST" "\"dst\":\"127.0.0.1:$OPORT\"" "$line"
check_contains "access log: upstream verified" '"upstream_verify":"ok"' "$line"
info=$(AS_NOBODY curl -sS -v --max-time 10 --cacert "$CA" "https://localhost:$OPORT/" -o /dev/null 2>&1)
check_contains "the client saw a forward-trust leaf" "issuer: O=tlsmint; CN=tlsmint forward-trust CA" "$info"
out=$(AS_NOBODY curl -sS --http2 --max-time 10 --cacert "$CA" -o /dev/null -w '%{http_version}' "https://localhost:$OPORT/index.html" 2>&1)
check_eq "h2 through the transparent proxy" "2" "$out"

echo "== no SNI (IP literal)"
out=$(AS_NOBODY curl -sS --max-time 10 --cacert "$CA" "https://127.0.0.1:$OPORT/index.html" 2>&1)
check_eq "IP-only request: leaf carries the upstream's IP SAN and verifies" "hello-from-origin" "$out"
alog_next 3 # the -v request, the h2 one, and this one
check_contains "access log: no SNI" '"sni":""' "$LINE"

echo "== traffic that is not redirected"
info=$(IN curl -sS -v --max-time 10 --cacert "$WORK/pki/root.pem" "https://localhost:$OPORT/" -o /dev/null 2>&1)
check_contains "root's own traffic goes straight to the origin" "issuer: CN=tlsmint e2e root" "$info"
out=$(IN curl -sS --max-time 5 --cacert "$CA" "https://localhost:$TPORT/" 2>&1)
check_contains "a direct connection to the transparent port is refused" "curl: (" "$out"
check_contains "and logged as having no original destination" "no original destination" "$(cat "$WORK/tlsmint.log")"
check "proxy still alive" kill -0 "$TLSMINT_PID"
out=$(AS_NOBODY curl -sS --max-time 10 --cacert "$CA" "https://localhost:$OPORT/index.html" 2>&1)
check_eq "and still serving" "hello-from-origin" "$out"

echo "== transparent status: rules and counters"
st=$(IN "$TLSMINT" transparent status 2>&1)
check_contains "status lists the table" "table inet tlsmint" "$st"
check_contains "status shows the uid exclusion" "meta skuid 0 counter packets" "$st"
check "status: the redirect rule counted packets" test -n "$(echo "$st" | grep "redirect to :$TPORT" | grep -v 'packets 0 ')"

echo "== IPv6: the same rules (inet) to a listener on [::1] (IP6T_SO_ORIGINAL_DST)"
TPORT6=18081
CONF6="$WORK/v6.conf"
cp "$CONF" "$CONF6"
set_conf "$CONF6" listen transparent "[::1]:$TPORT6"
set_conf "$CONF6" log access "$WORK/access6.log"
set_conf "$CONF6" admin socket "$WORK/admin6.sock"
set_conf "$CONF6" admin metrics ""
if IN ip -6 addr show dev lo 2>/dev/null | grep -q '::1' &&
    IN "$TLSMINT" -c "$CONF6" transparent setup --ports "$OPORT" --exclude-uid 0 >/dev/null; then
    IN bash -c "echo \$\$ >$WORK/tlsmint6.pid; exec $TLSMINT -c $CONF6 run" >"$WORK/tlsmint6.log" 2>&1 &
    W6=$!
    wait_for 50 test -s "$WORK/tlsmint6.pid"
    P6=$(cat "$WORK/tlsmint6.pid")
    PIDS+=($P6)
    wait_for 100 grep -q "tlsmint running" "$WORK/tlsmint6.log"
    out=$(AS_NOBODY curl -6 -sS --max-time 10 --cacert "$CA" "https://localhost:$OPORT/index.html" 2>&1)
    check_eq "IPv6: redirected curl gets the origin's body" "hello-from-origin" "$out"
    log_next "$WORK/access6.log"; line=$LINE
    check_contains "IPv6: original destination [::1]:$OPORT" "\"dst\":\"[::1]:$OPORT\"" "$line"
    check_contains "IPv6: intercepted and verified" '"upstream_verify":"ok"' "$line"
    kill -TERM "$P6"
    wait "$W6"
    check_eq "IPv6: exit 0" "0" "$?"
    check_not_contains "IPv6: no sanitizer report" "Sanitizer" "$(cat "$WORK/tlsmint6.log")"
else
    echo "  (no IPv6 loopback here: IPv6 checks skipped)"
fi

echo "== transparent teardown"
out=$(IN "$TLSMINT" transparent teardown 2>&1)
check_contains "teardown removes the table" "nftables: table inet tlsmint removed" "$out"
check_eq "the ruleset is as it was before setup" "$RS0" "$(IN nft -s list ruleset)"
out=$(IN "$TLSMINT" transparent status 2>&1)
check "status after teardown: exit 1" test $? -eq 1
check_contains "and says so" "no table inet tlsmint" "$out"
check_contains "teardown twice: nothing to remove" "nothing to remove" "$(IN "$TLSMINT" transparent teardown 2>&1)"

kill -TERM "$TLSMINT_PID"
wait "$WAITER"
check_eq "SIGTERM: exit 0" "0" "$?"
check_contains "log says stopped" "main: stopped" "$(cat "$WORK/tlsmint.log")"
check_not_contains "no sanitizer report" "Sanitizer" "$(cat "$WORK/tlsmint.log")"
finish
