#!/bin/bash
# SPDX-License-Identifier: MIT
# test_exclusions.sh - the exclusion cache: an nginx origin with ssl_verify_client on is passed
# through on the very first connection (the client, with its certificate, talks to the origin
# itself), listed by `ctl exclusions` as client-auth, bypassed from then on, expired after a
# short [exclusions] ttl_s and removed by `ctl exclusions clear`; a pinning client (python,
# trusts only the origin's root and checks the key's hash) aborts on our leaf once, and its next
# connection is passed through ([exclusions] pinned_alerts = 1, the default), with unknown_ca
# and with bad_certificate (a client that checks only the pin); [profile] client_auth = block
# blocks instead; metrics.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib2.sh"

echo "== setup"
P="$WORK/pki"
make_pki "$P"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$P/client.key" \
    -out "$P/client.csr" -subj "/CN=e2e client" 2>/dev/null
printf "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n" >"$P/client.ext"
openssl x509 -req -in "$P/client.csr" -CA "$P/root.pem" -CAkey "$P/root.key" -CAcreateserial \
    -out "$P/client.pem" -days 5 -extfile "$P/client.ext" 2>/dev/null
S="$WORK/state"
"$TLSMINT" init --dir "$S" >/dev/null || { echo "init failed"; exit 1; }
OPORT=$(free_port) CPORT=$(free_port) PPORT=$(free_port) MPORT=$(free_port) SPORT=$(free_port)
O2PORT=$(free_port)
start_nginx2 "$WORK/origin2" "$O2PORT" "$P/origin.pem" "$P/origin.key"
start_nginx2 "$WORK/self" "$SPORT" "$P/self.pem" "$P/self.key"
start_nginx2 "$WORK/origin" "$OPORT" "$P/origin.pem" "$P/origin.key"
start_nginx2 "$WORK/mtls" "$CPORT" "$P/origin.pem" "$P/origin.key" \
    "ssl_verify_client on; ssl_client_certificate $P/root.pem;"
CONF="$S/tlsmint.conf"
set_conf "$CONF" listen explicit "127.0.0.1:$PPORT"
set_conf "$CONF" listen transparent ""
set_conf "$CONF" upstream ca_file "$P/root.pem"
set_conf "$CONF" log access "$WORK/access.log"
set_conf "$CONF" admin socket "$WORK/run/admin.sock"
set_conf "$CONF" admin metrics "127.0.0.1:$MPORT"
set_conf "$CONF" exclusions ttl_s 10
cp "$CONF" "$WORK/base.conf"
start_tlsmint "$CONF" "$WORK/tlsmint.log" || exit 1
CA="$S/ca/forward-trust.pem"
PROXY="http://127.0.0.1:$PPORT"
alog_use "$WORK/access.log"
ctl() { "$TLSMINT" -c "$CONF" ctl "$@" 2>&1; }
mtls() { curl -sS --max-time 10 --cacert "$P/root.pem" --cert "$P/client.pem" --key "$P/client.key" \
    -x "$PROXY" "$@" "https://localhost:$CPORT/index.html" 2>&1; }

echo "== an origin that asks for a client certificate"
out=$(curl -sS --max-time 10 --cacert "$P/root.pem" --cert "$P/client.pem" --key "$P/client.key" \
    -x "$PROXY" -v "https://localhost:$CPORT/index.html" 2>&1)
check_contains "the first connection already succeeds" "hello-from-origin" "$out"
check_contains "  passed through: the client saw the origin's certificate" "issuer: CN=tlsmint e2e root" "$out"
alog_next; line=$LINE
check_eq "access log: outcome excluded, reason client-auth" "excluded client-auth" \
    "$(jf outcome "$line") $(jf reason "$line")"
ex=$(ctl exclusions)
check_contains "ctl exclusions lists it" "localhost" "$ex"
check_eq "  with its port and reason" "localhost $CPORT client-auth" \
    "$(echo "$ex" | awk -v p="$CPORT" '$2 == p {print $1, $2, $3}')"
out=$(mtls)
check_eq "the next connection is passed through from the start" "hello-from-origin" "$out"
alog_next; line=$LINE
check_eq "  excluded, client-auth" "excluded client-auth" "$(jf outcome "$line") $(jf reason "$line")"
check_eq "  the name proven on the way (the origin's certificate verified)" "ok" "$(jf upstream_verify "$line")"
check_eq "  one hit" "1" "$(ctl exclusions | awk -v p="$CPORT" '$2 == p {print $6}')"
out=$(curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" "https://localhost:$OPORT/index.html" 2>&1)
check_eq "the same name on another port is still inspected" "hello-from-origin" "$out"
alog_next
check_eq "  ok" "ok" "$(jf outcome "$LINE")"
m=$(curl -sS --max-time 5 "http://127.0.0.1:$MPORT/metrics")
check_contains "metrics: one entry" "tlsmint_exclusions_entries 1" "$m"
check_contains "metrics: added for client-auth" 'tlsmint_exclusions_added_total{reason="client-auth"} 1' "$m"
check_contains "ctl status: the exclusion count" "exclusions    1 entries" "$(ctl status)"

echo "== expiry after ttl_s (10 s), and clear"
age=$(ctl exclusions | awk -v p="$CPORT" '$2 == p {print $4}')
sleep $((11 - ${age:-0}))
check_not_contains "expired: no longer listed" "client-auth" "$(ctl exclusions)"
out=$(mtls)
check_eq "learned again on the next connection" "hello-from-origin" "$out"
check_contains "  listed again" "client-auth" "$(ctl exclusions)"
check_contains "ctl exclusions clear HOST" "1 exclusion removed for localhost" "$(ctl exclusions clear localhost)"
check_not_contains "  gone" "client-auth" "$(ctl exclusions)"

echo "== a pinning client"
PIN=$(openssl x509 -in "$P/origin.pem" -noout -pubkey | openssl pkey -pubin -outform der | sha256sum | cut -d' ' -f1)
PC="$E2E_DIR/pinclient.py"
r=$(timeout 20 python3 "$PC" "127.0.0.1:$PPORT" "localhost:$OPORT" "$P/root.pem" "$PIN")
check_eq "first connection: the app rejects our leaf" "rejected" "$(kv result "$r")"
alog_next 2; line=$LINE # the mtls connection after the expiry, and this one
check_eq "  logged with reason pinned" "pinned" "$(jf reason "$line")"
r=$(timeout 20 python3 "$PC" "127.0.0.1:$PPORT" "localhost:$OPORT" "$P/root.pem" "$PIN")
check_eq "next connection: passed through, the key matches its pin" "happy" "$(kv result "$r")"
alog_next; line=$LINE
check_eq "  excluded, pinned" "excluded pinned" "$(jf outcome "$line") $(jf reason "$line")"
check_contains "ctl exclusions: pinned" "pinned" "$(ctl exclusions)"
m=$(curl -sS --max-time 5 "http://127.0.0.1:$MPORT/metrics")
check_contains "metrics: added for pinned" 'tlsmint_exclusions_added_total{reason="pinned"} 1' "$m"
check_contains "a client that trusts us passes through too while it is excluded" "code=200" \
    "$(curl -sS --max-time 10 -k -x "$PROXY" -w '\ncode=%{http_code}' "https://localhost:$OPORT/index.html" 2>&1)"
r=$(timeout 20 python3 "$PC" "127.0.0.1:$PPORT" "localhost:$O2PORT" "$P/root.pem" "$PIN" bad_certificate)
check_eq "a client that checks only the pin rejects our leaf" "rejected" "$(kv result "$r")"
check_contains "  with a bad_certificate alert (42)" "excluded for 10 s: the client rejects our leaf (alert 42" \
    "$(cat "$WORK/tlsmint.log")"
alog_next 2; line=$LINE # the curl -k connection before, and this one
check_eq "  logged with reason pinned" "pinned" "$(jf reason "$line")"
r=$(timeout 20 python3 "$PC" "127.0.0.1:$PPORT" "localhost:$O2PORT" "$P/root.pem" "$PIN" bad_certificate)
check_eq "  its next connection is passed through: the pin matches" "happy" "$(kv result "$r")"
alog_next
check_eq "  excluded, pinned" "excluded pinned" "$(jf outcome "$LINE") $(jf reason "$LINE")"

echo "== a client refusing a forward-untrust leaf is no pinned app"
for i in 1 2; do
    curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" "https://localhost:$SPORT/" >/dev/null 2>&1
    check_eq "attempt $i: the self-signed origin is refused (curl exit 60)" "60" "$?"
done
check_eq "  never excluded (it would be passed through uninspected)" "" \
    "$(ctl exclusions | awk -v p="$SPORT" '$2 == p')"

echo "== entries survive a reload; client_auth = block"
ctl exclusions clear >/dev/null
mtls >/dev/null
cp "$WORK/base.conf" "$CONF"
printf "\n[profile.default]\nclient_auth = block\n" >>"$CONF"
ctl reload >/dev/null
check_contains "after a reload the entry is still there" "client-auth" "$(ctl exclusions)"
ctl exclusions clear >/dev/null
out=$(curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" -w '\ncode=%{http_code}' "https://localhost:$CPORT/index.html" 2>&1)
check_contains "client_auth = block: a 403 page naming the reason" "(reason: client-auth)" "$out"
check_eq "  nothing learned" "" "$(ctl exclusions | awk -v p="$CPORT" '$2 == p')"
kill -TERM "$TLSMINT_PID"; wait "$TLSMINT_PID"
check_eq "clean exit" "0" "$?"
finish
