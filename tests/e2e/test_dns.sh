#!/bin/bash
# SPDX-License-Identifier: MIT
# test_dns.sh - name resolution of CONNECT targets (c-ares, dataplane/dp_resolve.c) against a DNS
# server written for the test (dnsserver.py: answers, answers 1.5 s late, NXDOMAIN, silent, and
# counts every query), in a network namespace made here, with tlsmint in its own mount
# namespace where a test resolv.conf and hosts file are bind-mounted over /etc's. Real nginx
# origin, real curl, raw CONNECT clients (dnsclient.py) for timings and bursts.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib2.sh"

if [ "$(id -u)" != 0 ] || ! ip netns list >/dev/null 2>&1 || ! command -v unshare >/dev/null; then
    echo "SKIP: needs root, network namespaces and unshare"
    exit 77
fi
NS="tlsmint-dns-$$"
ip netns add "$NS" || { echo "SKIP: cannot create a network namespace"; exit 77; }
cleanup_ns() { cleanup; ip netns del "$NS" 2>/dev/null; }
trap cleanup_ns EXIT
IN() { ip netns exec "$NS" "$@"; }
IN ip link set lo up
DNSC="$E2E_DIR/dnsclient.py"

echo "== setup (namespace $NS)"
make_pki "$WORK/pki"
# an origin certificate for every test name (the proxy verifies the upstream by name)
P="$WORK/pki"
sign_leaf "$P" names localhost \
    "DNS:localhost,IP:127.0.0.1,DNS:*.ok.test,DNS:*.slow.test,DNS:origin.hosts.test" || exit 1
"$TLSMINT" init --dir "$WORK/state" >/dev/null || { echo "init failed"; exit 1; }
chmod 755 "$WORK/state" "$WORK/state/ca"
OPORT=$(free_port)
PPORT=$(free_port)
CONF="$WORK/state/tlsmint.conf"
set_conf "$CONF" listen explicit "127.0.0.1:$PPORT"
set_conf "$CONF" listen transparent ""
set_conf "$CONF" listen threads 2
set_conf "$CONF" upstream ca_file "$P/root.pem"
set_conf "$CONF" upstream connect_timeout_ms 2000
set_conf "$CONF" log access "$WORK/access.log"
set_conf "$CONF" admin socket "$WORK/run/admin.sock"
set_conf "$CONF" admin metrics ""
wait_port() {
    for _ in $(seq 1 100); do
        IN bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}
# the namespace's resolver configuration: only the test server; a hosts file of its own
printf "nameserver 127.0.0.2\noptions ndots:1\n" >"$WORK/resolv.conf"
printf "127.0.0.1 localhost\n127.0.0.1 origin.hosts.test\n" >"$WORK/hosts"
IN python3 -u "$E2E_DIR/dnsserver.py" --listen 127.0.0.2:53 --counts "$WORK/dns-counts.json" \
    'two.ok.test=answer:127.0.0.3,127.0.0.1' 'blackhole.ok.test=answer:127.0.0.4,127.0.0.5,127.0.0.1' \
    '*.ok.test=answer:127.0.0.1' '*.slow.test=slow:127.0.0.1' '*.nx.test=nx' \
    '*.silent.test=silent' >"$WORK/dns.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do grep -q ready "$WORK/dns.log" && break; sleep 0.05; done
grep -q ready "$WORK/dns.log" || { echo "DNS server did not start"; cat "$WORK/dns.log"; exit 1; }
write_nginx "$WORK/origin" "127.0.0.1:$OPORT" "$P/names.pem" "$P/names.key"
chmod -R a+rX "$WORK/origin" "$P"
IN bash -c "echo \$\$ >$WORK/nginx.pid2; exec nginx -c $WORK/origin/nginx.conf -e $WORK/origin/logs/error.log" &
wait_for 50 test -s "$WORK/nginx.pid2"
PIDS+=($(cat "$WORK/nginx.pid2"))
wait_port "$OPORT" || { echo "origin did not start"; exit 1; }
IN unshare -m bash -c "mount --bind $WORK/resolv.conf /etc/resolv.conf && mount --bind $WORK/hosts /etc/hosts && echo \$\$ >$WORK/tlsmint.pid && exec $TLSMINT -c $CONF run" >"$WORK/tlsmint.log" 2>&1 &
wait_for 50 test -s "$WORK/tlsmint.pid"
TLSMINT_PID=$(cat "$WORK/tlsmint.pid")
PIDS+=($TLSMINT_PID)
wait_port "$PPORT" || { echo "tlsmint did not start"; cat "$WORK/tlsmint.log"; exit 1; }
check_contains "the resolver reads the namespace's resolv.conf" "nameservers 127.0.0.2:53" \
    "$(cat "$WORK/tlsmint.log")"
CA="$WORK/state/ca/forward-trust.pem"
PROXY="http://127.0.0.1:$PPORT"
# qcount "NAME TYPE": queries the DNS server saw for it
qcount() { sleep 0.1; python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], 0))' "$WORK/dns-counts.json" "$1"; }
# hold N PATTERN NAME: N raw CONNECTs to PATTERN left waiting, in the background; its pid
# (the python process itself, so that killing it closes them) goes to PIDS and $HOLD
hold() {
    rm -f "$WORK/$3.log"
    IN bash -c "echo \$\$ >$WORK/$3.pid; exec python3 $DNSC hold $PPORT '$2' $1" >"$WORK/$3.log" 2>&1 &
    for _ in $(seq 1 200); do grep -q held "$WORK/$3.log" 2>/dev/null && break; sleep 0.05; done
    HOLD=$(cat "$WORK/$3.pid")
    PIDS+=($HOLD)
}
unhold() { kill "$HOLD" 2>/dev/null; for _ in $(seq 1 50); do kill -0 "$HOLD" 2>/dev/null || break; sleep 0.1; done; }
get() { IN curl -sS --max-time 20 --cacert "$CA" -x "$PROXY" "https://$1:$OPORT/index.html" 2>&1; }
metric() { "$TLSMINT" -c "$CONF" ctl metrics 2>&1 | sed -n "s/^$1 //p"; }

echo "== names that resolve"
check_eq "a name the DNS server answers" "hello-from-origin" "$(get a.ok.test)"
check_eq "one A query for it" "1" "$(qcount "a.ok.test A")"
check_eq "again: served" "hello-from-origin" "$(get a.ok.test)"
check_eq "... from the cache: no second query" "1" "$(qcount "a.ok.test A")"
check_eq "a name from the hosts file" "hello-from-origin" "$(get origin.hosts.test)"
check_eq "... needs no DNS query" "0" "$(qcount "origin.hosts.test A")"
check_eq "localhost (hosts file)" "hello-from-origin" "$(get localhost)"
check_eq "an IP literal (no lookup)" "hello-from-origin" "$(get 127.0.0.1)"
check_eq "a name in capitals is the same name" "hello-from-origin" "$(get A.OK.TEST)"
check_eq "... and comes from the cache too" "1" "$(qcount "a.ok.test A")"

echo "== NXDOMAIN"
r=$(IN python3 "$DNSC" one "$PPORT" "nope.nx.test:$OPORT")
echo "     $r"
check_eq "a name that does not exist: 502" "502" "$(kv status "$r")"
check_contains "... saying so in one line" "does_not_exist" "$(kv body "$r")"
n1=$(qcount "nope.nx.test A")
r=$(IN python3 "$DNSC" one "$PPORT" "nope.nx.test:$OPORT")
check_eq "again within dns_negative_ttl_s: 502" "502" "$(kv status "$r")"
check_eq "... from the negative cache, no query" "$n1" "$(qcount "nope.nx.test A")"
check_eq "logged once per connection, with the name" "2" \
    "$(grep -c '502: the name nope.nx.test does not exist' "$WORK/tlsmint.log")"
line=$(grep -F '"host":"nope.nx.test"' "$WORK/access.log" | tail -n 1)
check_eq "outcome dns_failed in the access log" "dns_failed" "$(jf outcome "$line")"

echo "== silent DNS server"
r=$(IN python3 "$DNSC" one "$PPORT" "n1.silent.test:443")
echo "     $r"
ms=$(kv ms "$r")
check_eq "no answer: 504" "504" "$(kv status "$r")"
check "... within resolve_timeout_ms + 200 ms, not before 1900 ms (took $ms ms)" \
    python3 -c "import sys; sys.exit(0 if 1900 <= $ms <= 2200 else 1)"
check_contains "... with a one-line reason" "no_DNS_answer_for_n1.silent.test_within_2000_ms" \
    "$(kv body "$r")"
check_eq "logged once, with the name" "1" \
    "$(grep -c '504: no DNS answer for n1.silent.test' "$WORK/tlsmint.log")"
# 20 silent names in flight, then a hosts-file name and an IP literal: served at once
hold 20 "s{i}.silent.test:443" hold20
check_contains "20 silent names in flight" "held=20" "$(cat "$WORK/hold20.log")"
sleep 0.5
r=$(IN python3 "$DNSC" one "$PPORT" "localhost:$OPORT")
check_eq "meanwhile, a hosts-file name: 200" "200" "$(kv status "$r")"
check "... without delay ($(kv ms "$r") ms)" python3 -c "import sys; sys.exit(0 if $(kv ms "$r") < 200 else 1)"
r=$(IN python3 "$DNSC" one "$PPORT" "127.0.0.1:$OPORT")
check_eq "meanwhile, an IP literal: 200" "200" "$(kv status "$r")"
check "... without delay ($(kv ms "$r") ms)" python3 -c "import sys; sys.exit(0 if $(kv ms "$r") < 200 else 1)"
unhold

echo "== single flight"
r=$(IN python3 "$DNSC" burst "$PPORT" "burst.ok.test:$OPORT" 200)
echo "     $r"
check_eq "200 concurrent CONNECTs to one new name all succeed" "200" "$(kv s200 "$r")"
check_eq "... after one A query" "1" "$(qcount "burst.ok.test A")"
check_eq "... and one AAAA query" "1" "$(qcount "burst.ok.test AAAA")"

echo "== several addresses"
check_eq "a name whose first address refuses: served by the second" "hello-from-origin" \
    "$(get two.ok.test)"
check_contains "... after trying the first" "connect 127.0.0.3:$OPORT (two.ok.test): Connection refused; trying its next address" \
    "$(cat "$WORK/tlsmint.log")"
IN iptables -A OUTPUT -d 127.0.0.4 -p tcp -j DROP
IN iptables -A OUTPUT -d 127.0.0.5 -p tcp -j DROP
t0=$(date +%s%N)
out=$(get blackhole.ok.test)
t1=$(( ($(date +%s%N) - t0) / 1000000 ))
check_eq "a name whose first two addresses drop SYNs: served by the third" "hello-from-origin" "$out"
# connect_timeout_ms is for the connect as a whole: the two silent addresses get a third of it
# each (667 ms, then 667 of the 1333 left), so the connects take about 1333 ms; if each attempt
# got the whole 2000 ms, they would take 4000. The bound is connect_timeout_ms + 1500 ms of slack
# for the rest of the request under load (name, both handshakes, a mint, curl itself: 1286 ms
# were seen over a 1000 ms connect on a loaded machine), and still below those 4000 ms.
check "... within connect_timeout_ms (2000) as a whole, + 1500 ms slack ($t1 ms)" test "$t1" -lt 3500
check_eq "... after both timed out" "2" \
    "$(grep -c "(blackhole.ok.test): timed out; trying its next address" "$WORK/tlsmint.log")"

echo "== slow DNS server, resolve_timeout_ms = 3000 (reload)"
set_conf "$CONF" upstream resolve_timeout_ms 3000
check_contains "reload" "reload" "$("$TLSMINT" -c "$CONF" ctl reload 2>&1)"
r=$(IN python3 "$DNSC" one "$PPORT" "a.slow.test:$OPORT")
echo "     $r"
ms=$(kv ms "$r")
check_eq "an answer 1.5 s late: 200" "200" "$(kv status "$r")"
check "... after about 1.5 s ($ms ms)" python3 -c "import sys; sys.exit(0 if 1450 <= $ms <= 2500 else 1)"
n1=$(qcount "a.slow.test A")
cached1=$(metric 'tlsmint_dns_queries_total{result="cached"}')
r=$(IN python3 "$DNSC" one "$PPORT" "a.slow.test:$OPORT")
check_eq "the second request for it: 200" "200" "$(kv status "$r")"
check "... at once ($(kv ms "$r") ms)" python3 -c "import sys; sys.exit(0 if $(kv ms "$r") < 300 else 1)"
check_eq "... with no query" "$n1" "$(qcount "a.slow.test A")"
check_eq "... counted as cached" "$((cached1 + 1))" "$(metric 'tlsmint_dns_queries_total{result="cached"}')"
check_eq "the body comes through too" "hello-from-origin" "$(get a.slow.test)"

echo "== no head-of-line blocking: 1,000 lookups in flight"
set_conf "$CONF" upstream resolve_timeout_ms 20000
"$TLSMINT" -c "$CONF" ctl reload >/dev/null 2>&1
base_h=$(IN python3 "$DNSC" times "$PPORT" "localhost:$OPORT" 21)
base_c=$(IN python3 "$DNSC" times "$PPORT" "a.ok.test:$OPORT" 21)
base_i=$(IN python3 "$DNSC" times "$PPORT" "127.0.0.1:$OPORT" 21)
hold 1000 "h{i}.silent.test:443" hold1000
sleep 1
st=$("$TLSMINT" -c "$CONF" ctl status 2>&1)
inflight=$(echo "$st" | sed -n 's/^dns .*, \([0-9]*\) in flight.*/\1/p')
check "ctl status shows the lookups in flight (${inflight:-?})" test "${inflight:-0}" -ge 1000
load_h=$(IN python3 "$DNSC" times "$PPORT" "localhost:$OPORT" 21)
load_c=$(IN python3 "$DNSC" times "$PPORT" "a.ok.test:$OPORT" 21)
load_i=$(IN python3 "$DNSC" times "$PPORT" "127.0.0.1:$OPORT" 21)
st2=$("$TLSMINT" -c "$CONF" ctl status 2>&1)
inflight2=$(echo "$st2" | sed -n 's/^dns .*, \([0-9]*\) in flight.*/\1/p')
unhold
for k in h c i; do
    b=$(eval echo "\$base_$k"); l=$(eval echo "\$load_$k")
    what=$(case $k in h) echo "hosts-file name" ;; c) echo "cached name" ;; i) echo "IP literal" ;; esac)
    echo "     $what: idle $b | 1000 in flight $l"
    check_eq "$what answered 200 under load" "200" "$(kv status "$l")"
    check "$what: median within 10 ms of the idle one ($(kv median_ms "$b") -> $(kv median_ms "$l") ms)" \
        python3 -c "import sys; sys.exit(0 if $(kv median_ms "$l") <= $(kv median_ms "$b") + 10 else 1)"
done
check "the 1,000 were still in flight after the measurement (${inflight2:-?})" test "${inflight2:-0}" -ge 1000

echo "== status and metrics"
st=$("$TLSMINT" -c "$CONF" ctl status 2>&1)
echo "$st" | grep -E '^(resolver|dns|outcomes)'
check_contains "ctl status: the resolver's state" "resolver      c-ares" "$st"
check_contains "ctl status: dns_failed outcome" "dns_failed=" "$st"
m=$("$TLSMINT" -c "$CONF" ctl metrics 2>&1)
for res in ok nxdomain timeout cached; do
    v=$(echo "$m" | sed -n "s/^tlsmint_dns_queries_total{result=\"$res\"} //p")
    check "metric tlsmint_dns_queries_total{result=\"$res\"} counted ($v)" test "${v:-0}" -ge 1
done
check_contains "metric: error result present" 'tlsmint_dns_queries_total{result="error"}' "$m"
hc=$(echo "$m" | sed -n 's/^tlsmint_dns_duration_seconds_count //p')
hinf=$(echo "$m" | sed -n 's/^tlsmint_dns_duration_seconds_bucket{le="+Inf"} //p')
h2=$(echo "$m" | sed -n 's/^tlsmint_dns_duration_seconds_bucket{le="2.5"} //p')
h1=$(echo "$m" | sed -n 's/^tlsmint_dns_duration_seconds_bucket{le="1"} //p')
check "histogram: +Inf bucket = count ($hinf = $hc)" test "${hinf:-x}" = "${hc:-y}"
check "histogram: cumulative (le=1 $h1 <= le=2.5 $h2 <= count $hc)" \
    test "${h1:-9}" -le "${h2:-0}" -a "${h2:-9}" -le "${hc:-0}"
check "histogram: the slow answer and the timeouts are in the upper buckets" test "$((hc - h1))" -ge 2
check_contains "metric: dns_failed outcome" 'tlsmint_connections_total{outcome="dns_failed"}' "$m"
check "proxy process alive" kill -0 "$TLSMINT_PID"
kill -TERM "$TLSMINT_PID"
for _ in $(seq 1 100); do kill -0 "$TLSMINT_PID" 2>/dev/null || break; sleep 0.1; done
check "stops on SIGTERM with lookups in flight" bash -c "! kill -0 $TLSMINT_PID 2>/dev/null"
check_not_contains "no sanitizer report" "ERROR: AddressSanitizer" "$(cat "$WORK/tlsmint.log")"
check_not_contains "no leak report" "LeakSanitizer" "$(cat "$WORK/tlsmint.log")"
check_not_contains "no UBSan report" "runtime error" "$(cat "$WORK/tlsmint.log")"
finish
