#!/bin/bash
# SPDX-License-Identifier: MIT
# test_versions.sh - [profile.NAME] min_version / max_version on both sides and unsupported =
# bypass | block: a client offering only what the profile leaves out (openssl s_client -tls1_2
# or -tls1_3, one cipher suite we do not do) is passed through or blocked (an alert, or a 403
# page when it can read one); an origin limited to one version (nginx ssl_protocols) that the
# profile does not allow is passed through when the client's own offer could reach it, refused
# when not; inside the profile both handshakes keep to it. Bad version names are FILE:LINE errors.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib2.sh"

echo "== setup"
P="$WORK/pki"
make_pki "$P"
sign_leaf "$P" multi localhost \
    "DNS:localhost,IP:127.0.0.1,DNS:only13.example,DNS:only13b.example,DNS:only12.example,DNS:any.example" ||
    { echo "sign_leaf failed"; exit 1; }
S="$WORK/state"
"$TLSMINT" init --dir "$S" >/dev/null || { echo "init failed"; exit 1; }
APORT=$(free_port) BPORT=$(free_port) CPORT=$(free_port) PPORT=$(free_port) MPORT=$(free_port)
start_nginx2 "$WORK/a" "$APORT" "$P/multi.pem" "$P/multi.key" "ssl_protocols TLSv1.2 TLSv1.3;"
start_nginx2 "$WORK/b" "$BPORT" "$P/multi.pem" "$P/multi.key" "ssl_protocols TLSv1.2;"
start_nginx2 "$WORK/c" "$CPORT" "$P/multi.pem" "$P/multi.key" "ssl_protocols TLSv1.3;"
CONF="$S/tlsmint.conf"
set_conf "$CONF" listen explicit "127.0.0.1:$PPORT"
set_conf "$CONF" listen transparent ""
set_conf "$CONF" upstream ca_file "$P/root.pem"
set_conf "$CONF" log access "$WORK/access.log"
set_conf "$CONF" admin socket "$WORK/run/admin.sock"
set_conf "$CONF" admin metrics "127.0.0.1:$MPORT"
cat >>"$CONF" <<EOF

[rule.only13]
hosts   = only13.example
action  = inspect
profile = p13

[rule.only13b]
hosts   = only13b.example
action  = inspect
profile = p13b

[rule.only12]
hosts   = only12.example
action  = inspect
profile = p12

[profile.p13]
min_version = tls1.3

[profile.p13b]
min_version = tls1.3
unsupported = block

[profile.p12]
max_version = tls1.2
EOF
start_tlsmint "$CONF" "$WORK/tlsmint.log" || exit 1
CA="$S/ca/forward-trust.pem"
PROXY="http://127.0.0.1:$PPORT"
alog_use "$WORK/access.log"
# sc NAME ORIGINPORT [s_client args]: openssl s_client through the proxy, SNI NAME
sc() {
    local name=$1 port=$2; shift 2
    echo | timeout 10 openssl s_client -proxy "127.0.0.1:$PPORT" -connect "127.0.0.1:$port" \
        -servername "$name" -CAfile "$CA" "$@" 2>&1
}
# via NAME ORIGINPORT [curl args]: curl through the proxy to https://NAME/, body then code=N
via() {
    local name=$1 port=$2; shift 2
    curl -sS --max-time 10 -x "$PROXY" --connect-to "$name:443:127.0.0.1:$port" "$@" \
        -w '\ncode=%{http_code}' "https://$name/" 2>&1
}
metric() { curl -sS --max-time 5 "http://127.0.0.1:$MPORT/metrics" | sed -n "s/^$1 //p"; }

echo "== the client: min_version = tls1.3"
st=$(sc only13.example "$APORT" -tls1_3)
check_contains "s_client -tls1_3: inspected (our leaf)" "tlsmint forward-trust CA" "$st"
check_contains "  TLS 1.3" "TLSv1.3" "$st"
alog_next
check_eq "  access log: ok" "ok" "$(jf outcome "$LINE")"
st=$(sc only13.example "$APORT" -tls1_2)
check_contains "s_client -tls1_2, unsupported = bypass: passed through (the origin's certificate)" \
    "i:CN = tlsmint e2e root" "$st"
check_contains "  over TLS 1.2 with the origin" "TLSv1.2" "$st"
alog_next; line=$LINE
check_eq "  access log: bypass, unsupported-version" "bypass unsupported-version bypass" \
    "$(jf action "$line") $(jf reason "$line") $(jf outcome "$line")"
st=$(sc only13b.example "$APORT" -tls1_2)
check_contains "unsupported = block, no http/1.1 offered: an access_denied alert" "alert access denied" "$st"
alog_next; line=$LINE
check_eq "  access log: blocked, unsupported-version" "blocked unsupported-version" \
    "$(jf outcome "$line") $(jf reason "$line")"
out=$(via only13b.example "$APORT" --cacert "$CA" --tls-max 1.2)
check_contains "curl --tls-max 1.2: a 403 page" "code=403" "$out"
check_contains "  naming the reason" "(reason: unsupported-version)" "$out"
check_not_contains "nothing of it reached the origin" "only13b.example" "$(cat "$WORK/a/logs/access.log")"

echo "== the client: max_version = tls1.2"
st=$(sc only12.example "$APORT")
check_contains "a client offering 1.2 and 1.3: inspected" "tlsmint forward-trust CA" "$st"
check_contains "  at TLS 1.2 towards the client" "TLSv1.2" "$st"
log_wait "$WORK/a/logs/access.log" " only12.example "
check_eq "  and towards the origin (its log)" "TLSv1.2 only12.example" \
    "$(echo "$LINE" | awk '{print $2, $4}')"
st=$(sc only12.example "$APORT" -tls1_3)
check_contains "s_client -tls1_3: passed through" "i:CN = tlsmint e2e root" "$st"
alog_next 3 # the curl --tls-max 1.2 one, s_client offering both, and this one
check_eq "  reason unsupported-version" "unsupported-version" "$(jf reason "$LINE")"

echo "== no common cipher suite"
st=$(sc any.example "$APORT" -tls1_2 -cipher ECDHE-ECDSA-ARIA256-GCM-SHA384)
alog_next; line=$LINE
check_eq "a client offering only a suite we do not do: passed through" \
    "bypass no-common-cipher" "$(jf action "$line") $(jf reason "$line")"
check_contains "  the origin's certificate" "i:CN = tlsmint e2e root" "$st"

echo "== the origin: limited to one version"
out=$(via only13.example "$BPORT" --cacert "$P/root.pem")
check_contains "a TLS 1.2-only origin, min_version = tls1.3: passed through (the client reaches it)" \
    "hello-from-origin" "$out"
alog_next; line=$LINE
check_eq "  access log: bypass, unsupported-version" "bypass unsupported-version bypass" \
    "$(jf action "$line") $(jf reason "$line") $(jf outcome "$line")"
out=$(via only13b.example "$BPORT" --cacert "$CA")
check_contains "  unsupported = block: a 403 page" "code=403" "$out"
check_contains "  naming the reason" "(reason: unsupported-version)" "$out"
out=$(via only12.example "$CPORT" --cacert "$P/root.pem")
check_contains "a TLS 1.3-only origin, max_version = tls1.2: passed through" "hello-from-origin" "$out"
out=$(via only12.example "$CPORT" --cacert "$CA" --tls-max 1.2)
check_contains "  a client that offers only 1.2 cannot reach it either: refused, not spliced" \
    "code=000" "$out"
alog_next 3 # the unsupported = block one, the passed-through one, and this one
check_eq "  access log: upstream_failed" "upstream_failed" "$(jf outcome "$LINE")"
out=$(via any.example "$CPORT" --cacert "$CA")
check_contains "the default profile (tls1.2-tls1.3) inspects a TLS 1.3-only origin" "hello-from-origin" "$out"
alog_next
check_eq "  ok" "ok" "$(jf outcome "$LINE")"
check_eq "metrics: passed through" "5" "$(metric 'tlsmint_policy_unsupported_total{action="bypass"}')"
check_eq "metrics: blocked" "3" "$(metric 'tlsmint_policy_unsupported_total{action="block"}')"

echo "== bad version names"
cp "$CONF" "$WORK/good.conf"
printf "\n[profile.bad]\nmin_version = tls1.1\n" >>"$CONF"
out=$("$TLSMINT" -c "$CONF" ctl reload 2>&1)
check_contains "min_version = tls1.1: FILE:LINE error" \
    "$CONF:$(wc -l <"$CONF"): [profile.bad] min_version: 'tls1.1' is not tls1.2 or tls1.3" "$out"
cp "$WORK/good.conf" "$CONF"
printf "\n[profile.bad]\nmin_version = tls1.3\nmax_version = tls1.2\n" >>"$CONF"
out=$("$TLSMINT" -c "$CONF" ctl reload 2>&1)
check_contains "min_version above max_version: FILE:LINE error" \
    "$CONF:$(wc -l <"$CONF"): [profile.bad] min_version: tls1.3 is above max_version tls1.2" "$out"
cp "$WORK/good.conf" "$CONF"
kill -TERM "$TLSMINT_PID"; wait "$TLSMINT_PID"
check_eq "clean exit" "0" "$?"
finish
