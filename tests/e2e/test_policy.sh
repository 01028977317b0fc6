#!/bin/bash
# SPDX-License-Identifier: MIT
# test_policy.sh - the decryption policy end to end: [rule.NAME] on hosts, dst (IPv4, IPv6,
# with a port) and clients, first match in file order, the [policy] bypass list before the
# rules, [policy] default; block as a 403 page on a forward-trust leaf (http/1.1 offered) or an
# access_denied alert; [profile.NAME] expired / untrusted_issuer = block; reload applies new
# rules; access log, metrics and ctl status. Real nginx origins, curl and openssl clients,
# through the explicit listener, then the transparent one (namespace + REDIRECT, as root).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib2.sh"

echo "== setup"
P="$WORK/pki"
make_pki "$P"
sign_leaf "$P" ip2 localhost "IP:127.0.0.2" || { echo "sign_leaf failed"; exit 1; }
# the main origin answers for the names the rules bypass: a bypass needs its name proven there
sign_leaf "$P" multi localhost \
    "DNS:localhost,IP:127.0.0.1,DNS:listed.example,DNS:order.example,DNS:www.pass.example" ||
    { echo "sign_leaf failed"; exit 1; }
sign_leaf "$P" old localhost "DNS:localhost,IP:127.0.0.1" \
    -startdate 20200101000000Z -enddate 20200301000000Z || { echo "sign_leaf (expired) failed"; exit 1; }
S="$WORK/state"
"$TLSMINT" init --dir "$S" >/dev/null || { echo "init failed"; exit 1; }
OPORT=$(free_port) SPORT=$(free_port) EPORT=$(free_port) O2PORT=$(free_port) O6PORT=$(free_port)
PPORT=$(free_port) MPORT=$(free_port)
start_nginx2 "$WORK/origin" "$OPORT" "$P/multi.pem" "$P/multi.key"
start_nginx2 "$WORK/self" "$SPORT" "$P/self.pem" "$P/self.key"
start_nginx2 "$WORK/old" "$EPORT" "$P/old.pem" "$P/old.key"
write_nginx "$WORK/ip2" "127.0.0.2:$O2PORT" "$P/ip2.pem" "$P/ip2.key"
nginx -c "$WORK/ip2/nginx.conf" -e "$WORK/ip2/logs/error.log" & PIDS+=($!)
write_nginx "$WORK/v6" "[::1]:$O6PORT" "$P/origin.pem" "$P/origin.key"
nginx -c "$WORK/v6/nginx.conf" -e "$WORK/v6/logs/error.log" & PIDS+=($!)
wait_port "$O2PORT" 127.0.0.2 && wait_port "$O6PORT" ::1 || exit 1
CONF="$S/tlsmint.conf"
set_conf "$CONF" listen explicit "127.0.0.1:$PPORT"
set_conf "$CONF" listen transparent ""
set_conf "$CONF" listen threads 2
set_conf "$CONF" upstream ca_file "$P/root.pem"
set_conf "$CONF" log access "$WORK/access.log"
set_conf "$CONF" admin socket "$WORK/run/admin.sock"
set_conf "$CONF" admin metrics "127.0.0.1:$MPORT"
cp "$CONF" "$WORK/base.conf"
cat >>"$CONF" <<EOF

[policy]
default = inspect
bypass  = listed.example

[rule.listed]
hosts  = listed.example
action = block

[rule.order-first]
hosts  = order.example
action = block

[rule.order-second]
hosts  = order.example, .pass.example
action = bypass

[rule.corp-clients]
hosts   = corp.example
clients = 127.0.0.3/32, [2001:db8::]/32
action  = block

[rule.net]
dst    = 127.0.0.2/31
action = bypass

[rule.v6]
dst    = [::1]/128:$O6PORT
action = block

[rule.strict]
dst     = 127.0.0.1:$SPORT, 127.0.0.1:$EPORT
action  = inspect
profile = strict

[profile.strict]
expired          = block
untrusted_issuer = block
EOF
start_tlsmint "$CONF" "$WORK/tlsmint.log" || exit 1
CA="$S/ca/forward-trust.pem"
UCA="$S/ca/forward-untrust.pem"
PROXY="http://127.0.0.1:$PPORT"
alog_use "$WORK/access.log"
# via NAME [curl args]: curl through the proxy to https://NAME/ with the CONNECT going to the
# plain origin (SNI = NAME), printing body, then "code=N"
via() {
    local name=$1; shift
    curl -sS --max-time 10 -x "$PROXY" --connect-to "$name:443:127.0.0.1:$OPORT" "$@" \
        -w '\ncode=%{http_code}' "https://$name/" 2>&1
}

echo "== a hosts rule blocks: 403 page on our leaf, nothing upstream"
out=$(via order.example --cacert "$CA")
check_contains "403 through the proxy" "code=403" "$out"
check_contains "the page names the rule" "rule <b>order-first</b> (reason: rule)" "$out"
alog_next; line=$LINE
check_eq "access log: outcome blocked" "blocked" "$(jf outcome "$line")"
check_eq "access log: rule" "order-first" "$(jf rule "$line")"
check_eq "access log: action" "block" "$(jf action "$line")"
check_eq "access log: reason" "rule" "$(jf reason "$line")"
check_not_contains "the origin never saw that name" "order.example" "$(cat "$WORK/origin/logs/access.log")"
info=$(via order.example --cacert "$CA" -v -o /dev/null)
check_contains "the page is served on a forward-trust leaf for the name" "subject: CN=order.example" "$info"
check_contains "  issued by the forward-trust CA" "issuer: O=tlsmint; CN=tlsmint forward-trust CA" "$info"
out=$(via order.example --cacert "$CA" --http2)
check_contains "a client offering h2 and http/1.1 gets the page over http/1.1" "code=403" "$out"
st=$(echo | timeout 10 openssl s_client -proxy "127.0.0.1:$PPORT" -connect "127.0.0.1:$OPORT" \
    -servername order.example 2>&1)
check_contains "without http/1.1 in ALPN: a TLS access_denied alert" "alert access denied" "$st"
alog_next 3 # the -v request, the h2 one and s_client's
check_eq "  logged as blocked" "blocked" "$(jf outcome "$LINE")"

echo "== first match in file order, the bypass list first"
out=$(via listed.example -k -v -o /dev/null)
check_contains "[policy] bypass wins over a later block rule: the origin's own certificate" \
    "issuer: CN=tlsmint e2e root" "$out"
alog_next; line=$LINE
check_eq "access log: rule bypass" "bypass" "$(jf rule "$line")"
check_eq "access log: outcome bypass" "bypass" "$(jf outcome "$line")"
out=$(via www.pass.example -k -v -o /dev/null)
check_contains "a .domain pattern bypasses a subdomain" "issuer: CN=tlsmint e2e root" "$out"
alog_next
check_eq "  by the second rule" "order-second" "$(jf rule "$LINE")"

echo "== default: inspected"
out=$(curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" "https://localhost:$OPORT/index.html" 2>&1)
check_eq "no rule matches: intercepted and served" "hello-from-origin" "$out"
alog_next; line=$LINE
check_eq "access log: rule default" "default" "$(jf rule "$line")"
check_eq "access log: action inspect" "inspect" "$(jf action "$line")"
check_eq "access log: outcome ok" "ok" "$(jf outcome "$line")"

echo "== clients"
out=$(via corp.example --cacert "$CA" --interface 127.0.0.3)
check_contains "client 127.0.0.3 is blocked for corp.example" "rule <b>corp-clients</b>" "$out"
alog_next
check_eq "  from 127.0.0.3" "127.0.0.3" "$(jf client "$LINE" | cut -d: -f1)"
out=$(via corp.example -k -o /dev/null)
check_contains "client 127.0.0.1 is not in the rule: intercepted (the origin answers)" "code=200" "$out"
alog_next
check_eq "  rule default" "default" "$(jf rule "$LINE")"

echo "== dst (IPv4 CIDR, IPv6 with a port)"
out=$(curl -sS --max-time 10 --cacert "$P/root.pem" -x "$PROXY" "https://127.0.0.2:$O2PORT/index.html" 2>&1)
check_eq "dst 127.0.0.2/31 bypasses: the client verifies the origin itself" "hello-from-origin" "$out"
alog_next; line=$LINE
check_eq "  rule net" "net" "$(jf rule "$line")"
check_eq "  outcome bypass" "bypass" "$(jf outcome "$line")"
out=$(curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" -w '\ncode=%{http_code}' \
    --connect-to "six.example:443:[::1]:$O6PORT" "https://six.example/" 2>&1)
check_contains "dst [::1]/128:$O6PORT blocks" "rule <b>v6</b>" "$out"
alog_next
check_eq "  destination [::1]" "[::1]:$O6PORT" "$(jf dst "$LINE")"

echo "== profile: expired and untrusted issuer blocked after the upstream check"
out=$(curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" -w '\ncode=%{http_code}' "https://localhost:$EPORT/" 2>&1)
check_contains "an expired origin certificate: 403" "code=403" "$out"
check_contains "  the page names the reason" "rule <b>strict</b> (reason: expired)" "$out"
alog_next; line=$LINE
check_eq "  access log reason" "expired" "$(jf reason "$line")"
check_eq "  access log outcome" "blocked" "$(jf outcome "$line")"
out=$(curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" -w '\ncode=%{http_code}' "https://localhost:$SPORT/" 2>&1)
check_contains "a self-signed origin: 403, reason untrusted-issuer" "(reason: untrusted-issuer)" "$out"

echo "== metrics and ctl status"
m=$(curl -sS --max-time 5 "http://127.0.0.1:$MPORT/metrics")
n=$(echo "$m" | sed -n 's/^tlsmint_policy_decisions_total{rule="order-first",action="block"} //p')
check_num "tlsmint_policy_decisions_total for order-first" "$n" -ge 3
check_contains "the bypass list's line" 'tlsmint_policy_decisions_total{rule="bypass",action="bypass"} 1' "$m"
check_contains "blocked connections by outcome" 'tlsmint_connections_total{outcome="blocked"}' "$m"
st=$("$TLSMINT" -c "$CONF" ctl status 2>&1)
check_contains "ctl status: rule count" "policy        7 rules, default inspect, bypass list" "$st"

echo "== reload: new rules for new connections"
cp "$WORK/base.conf" "$WORK/new.conf"
cat >>"$WORK/new.conf" <<EOF

[policy]
default = block

[rule.order-second]
hosts  = order.example
action = bypass

[rule.order-first]
hosts  = order.example
action = block
EOF
cp "$WORK/new.conf" "$CONF"
"$TLSMINT" -c "$CONF" ctl reload >/dev/null 2>&1
check_eq "ctl reload" "0" "$?"
out=$(via order.example -k -v -o /dev/null)
check_contains "the new order: bypass first" "issuer: CN=tlsmint e2e root" "$out"
out=$(curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" -w '\ncode=%{http_code}' "https://localhost:$OPORT/index.html" 2>&1)
check_contains "default = block: blocked, rule default" "rule <b>default</b> (reason: default)" "$out"
check_contains "ctl status: 2 rules" "policy        2 rules, default block" "$("$TLSMINT" -c "$CONF" ctl status 2>&1)"
printf "\n[rule.bad]\nhosts = x.example\naction = allow\n" >>"$CONF"
bad_line=$(wc -l <"$CONF")
out=$("$TLSMINT" -c "$CONF" ctl reload 2>&1)
check_contains "a bad rule is refused with FILE:LINE" "$CONF:$bad_line: [rule.bad] action: 'allow' is not inspect, bypass or block" "$out"
out=$(via order.example -k -v -o /dev/null)
check_contains "  and the running rules stay" "issuer: CN=tlsmint e2e root" "$out"
kill -TERM "$TLSMINT_PID"; wait "$TLSMINT_PID"
check_eq "clean exit" "0" "$?"

echo "== transparent listener"
if [ "$(id -u)" != 0 ] || ! command -v iptables >/dev/null || ! ip netns add "tlsmint-pol-$$" 2>/dev/null; then
    echo "  (skipped: needs root, iptables and network namespaces)"
    finish
    exit
fi
NS="tlsmint-pol-$$"
cleanup_ns() { cleanup; ip netns del "$NS" 2>/dev/null; }
trap cleanup_ns EXIT
IN() { ip netns exec "$NS" "$@"; }
IN ip link set lo up
chmod 755 "$S" "$S/ca"
chmod -R a+rX "$P"
TPORT=$(free_port) T1=$(free_port) T2=$(free_port)
cp "$WORK/base.conf" "$WORK/t.conf"
set_conf "$WORK/t.conf" listen explicit ""
set_conf "$WORK/t.conf" listen transparent "127.0.0.1:$TPORT"
set_conf "$WORK/t.conf" admin socket "$WORK/run/t.sock"
set_conf "$WORK/t.conf" admin metrics ""
set_conf "$WORK/t.conf" log access "$WORK/t-access.log"
cat >>"$WORK/t.conf" <<EOF

[rule.t-block]
dst    = 127.0.0.1:$T2
action = block

[rule.t-pass]
hosts  = localhost
dst    = 127.0.0.1:$T1
action = bypass
EOF
write_nginx "$WORK/t1" "127.0.0.1:$T1" "$P/origin.pem" "$P/origin.key"
write_nginx "$WORK/t2" "127.0.0.1:$T2" "$P/origin.pem" "$P/origin.key"
for o in t1 t2; do
    IN bash -c "echo \$\$ >$WORK/$o.pid; exec nginx -c $WORK/$o/nginx.conf -e $WORK/$o/logs/error.log" &
done
IN bash -c "echo \$\$ >$WORK/tt.pid; exec $TLSMINT -c $WORK/t.conf run" >"$WORK/tt.log" 2>&1 &
wait_for 50 test -s "$WORK/t1.pid" -a -s "$WORK/t2.pid" -a -s "$WORK/tt.pid"
PIDS+=($(cat "$WORK/t1.pid" "$WORK/t2.pid" "$WORK/tt.pid"))
wait_for 100 grep -q "tlsmint running" "$WORK/tt.log"
for p in "$T1" "$T2"; do wait_for 50 IN bash -c "exec 3<>/dev/tcp/127.0.0.1/$p" 2>/dev/null; done
for p in "$T1" "$T2"; do
    IN iptables -t nat -A OUTPUT -p tcp -d 127.0.0.1 --dport "$p" -m owner --uid-owner 65534 \
        -j REDIRECT --to-ports "$TPORT"
done
AS_NOBODY() { IN setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
alog_use "$WORK/t-access.log"
out=$(AS_NOBODY curl -sS -v --max-time 10 --cacert "$P/root.pem" "https://localhost:$T1/index.html" 2>&1)
check_contains "transparent: hosts + dst bypass, the origin's own certificate" "issuer: CN=tlsmint e2e root" "$out"
alog_next
check_eq "  rule t-pass" "t-pass" "$(jf rule "$LINE")"
out=$(AS_NOBODY curl -sS --max-time 10 --cacert "$CA" -w '\ncode=%{http_code}' "https://localhost:$T2/" 2>&1)
check_contains "transparent: the original destination blocks (403 page)" "rule <b>t-block</b>" "$out"
alog_next; line=$LINE
check_eq "  outcome blocked" "blocked" "$(jf outcome "$line")"
check_eq "  mode transparent" "transparent" "$(jf mode "$line")"
out=$(AS_NOBODY curl -sS --max-time 10 --cacert "$CA" "https://127.0.0.1:$T1/index.html" 2>&1)
check_eq "transparent: no SNI, hosts rule does not match: inspected" "hello-from-origin" "$out"
alog_next
check_eq "  rule default" "default" "$(jf rule "$LINE")"

finish
