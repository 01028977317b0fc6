#!/bin/bash
# SPDX-License-Identifier: MIT
# test_protocols.sh - tlsmint as an explicit proxy across protocol versions and applications:
# TLS 1.2 / 1.3 on the client side and on the upstream side (nginx origins restricted with
# ssl_protocols), HTTP/1.1 and h2, a 10 MiB body byte for byte, the minted leaf as openssl
# s_client sees it (names copied from the origin), and upstreams that do not verify (expired,
# self-signed, certificate for another name).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib2.sh"
T_START=$(date +%s)

echo "== setup"
P="$WORK/pki"
make_pki "$P"
sign_leaf "$P" names names.test "DNS:names.test,DNS:localhost,DNS:*.wild.test,IP:127.0.0.1" ||
    { echo "cannot make the names certificate"; exit 1; }
sign_leaf "$P" other other.example "DNS:other.example" || { echo "cannot make other.example"; exit 1; }
sign_leaf "$P" expired localhost "DNS:localhost,IP:127.0.0.1" \
    -startdate 20200101000000Z -enddate 20200201000000Z ||
    { echo "openssl ca failed:"; cat "$P/ca/expired.log"; exit 1; }
check_contains "the expired origin certificate is expired" "notAfter=Feb  1 00:00:00 2020 GMT" \
    "$(openssl x509 -in "$P/expired.pem" -noout -enddate)"
"$TLSMINT" init --dir "$WORK/state" >/dev/null || { echo "init failed"; exit 1; }
O12=$(free_port)
O13=$(free_port)
OH1=$(free_port)
ONAMES=$(free_port)
OEXP=$(free_port)
OSELF=$(free_port)
OWRONG=$(free_port)
start_nginx2 "$WORK/o12" "$O12" "$P/origin.pem" "$P/origin.key" "ssl_protocols TLSv1.2;"
start_nginx2 "$WORK/o13" "$O13" "$P/origin.pem" "$P/origin.key" \
    "ssl_protocols TLSv1.3; client_max_body_size 64m; location /up/ { dav_methods PUT; }"
mkdir -p "$WORK/o13/www/up"
chmod 777 "$WORK/o13/www/up"
NGINX_LISTEN_OPTS=ssl start_nginx2 "$WORK/oh1" "$OH1" "$P/origin.pem" "$P/origin.key"
start_nginx2 "$WORK/onames" "$ONAMES" "$P/names.pem" "$P/names.key"
start_nginx2 "$WORK/oexp" "$OEXP" "$P/expired.pem" "$P/expired.key"
start_nginx2 "$WORK/oself" "$OSELF" "$P/self.pem" "$P/self.key"
start_nginx2 "$WORK/owrong" "$OWRONG" "$P/other.pem" "$P/other.key"
head -c 10485760 /dev/urandom >"$WORK/o13/www/ten.bin"
cp "$WORK/o13/www/ten.bin" "$WORK/o12/www/ten.bin"
chmod a+r "$WORK/o13/www/ten.bin" "$WORK/o12/www/ten.bin"
PPORT=$(free_port)
CONF="$WORK/state/tlsmint.conf"
set_conf "$CONF" listen explicit "127.0.0.1:$PPORT"
set_conf "$CONF" listen transparent ""
set_conf "$CONF" listen threads 2
set_conf "$CONF" upstream ca_file "$P/root.pem"
set_conf "$CONF" log access "$WORK/access.log"
set_conf "$CONF" admin socket "$WORK/run/admin.sock"
set_conf "$CONF" admin metrics ""
start_tlsmint "$CONF" "$WORK/tlsmint.log" || exit 1
CA="$WORK/state/ca/forward-trust.pem"
UCA="$WORK/state/ca/forward-untrust.pem"
PROXY="http://127.0.0.1:$PPORT"
alog_use "$WORK/access.log"

echo "== TLS versions: client side x upstream side"
for up in 1.2 1.3; do
    if [ "$up" = 1.2 ]; then OP=$O12; OD="$WORK/o12"; else OP=$O13; OD="$WORK/o13"; fi
    for cl in 1.2 1.3; do
        v=$(curl -sS -v --tlsv$cl --tls-max $cl --max-time 10 --cacert "$CA" -x "$PROXY" \
            "https://localhost:$OP/index.html" 2>&1)
        check_contains "client TLS $cl, upstream TLS $up only: body" "hello-from-origin" "$v"
        check_contains "client TLS $cl, upstream TLS $up only: client side is TLS $cl" \
            "SSL connection using TLSv$cl" "$v"
        check_contains "client TLS $cl, upstream TLS $up only: leaf from forward-trust" \
            "issuer: O=tlsmint; CN=tlsmint forward-trust CA" "$v"
        nginx_next "$OD"; n=$LINE
        check_contains "client TLS $cl, upstream TLS $up only: upstream side is TLS $up" \
            " TLSv$up " "$n"
        alog_next
        check_contains "client TLS $cl, upstream TLS $up only: access log ok" \
            '"outcome":"ok"' "$LINE"
    done
done
out=$(echo | timeout 10 openssl s_client -proxy "127.0.0.1:$PPORT" -connect "localhost:$O13" \
    -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0' -CAfile "$CA" 2>&1)
check_contains "a TLS 1.1-only client gets the origin's protocol_version alert" \
    "alert protocol version" "$out"
alog_next; line=$LINE
check_eq "  passed through ([profile] unsupported = bypass): it cannot meet tls1.2-tls1.3" \
    "bypass unsupported-version" "$(jf action "$line") $(jf reason "$line")"

echo "== HTTP/1.1 and h2"
for up in 12 13; do
    if [ "$up" = 12 ]; then OP=$O12; OD="$WORK/o12"; else OP=$O13; OD="$WORK/o13"; fi
    out=$(curl -sS --http1.1 --max-time 10 --cacert "$CA" -x "$PROXY" -o /dev/null \
        -w '%{http_version} %{http_code}' "https://localhost:$OP/index.html" 2>&1)
    check_eq "upstream TLS $up: HTTP/1.1 end to end" "1.1 200" "$out"
    alog_next
    check_contains "upstream TLS $up: access log ALPN http/1.1" '"alpn":"http/1.1"' "$LINE"
    nginx_next "$OD"
    check_contains "upstream TLS $up: origin saw HTTP/1.1" " HTTP/1.1 " "$LINE"
    out=$(curl -sS --http2 --max-time 10 --cacert "$CA" -x "$PROXY" -o /dev/null \
        -w '%{http_version} %{http_code}' "https://localhost:$OP/index.html" 2>&1)
    check_eq "upstream TLS $up: h2 end to end" "2 200" "$out"
    alog_next
    check_contains "upstream TLS $up: access log ALPN h2" '"alpn":"h2"' "$LINE"
    nginx_next "$OD"
    check_contains "upstream TLS $up: origin saw HTTP/2" " HTTP/2.0 " "$LINE"
done
out=$(curl -sS --http2 --max-time 10 --cacert "$CA" -x "$PROXY" -o /dev/null \
    -w '%{http_version} %{http_code}' "https://localhost:$OH1/index.html" 2>&1)
check_eq "client offers h2, origin speaks only HTTP/1.1: the client gets HTTP/1.1" "1.1 200" "$out"
alog_next
check_contains "access log: ALPN http/1.1" '"alpn":"http/1.1"' "$LINE"

echo "== 10 MiB bodies byte for byte"
want=$(sha256sum <"$WORK/o13/www/ten.bin" | cut -d' ' -f1)
got=$(curl -sS --http2 --max-time 60 --cacert "$CA" -x "$PROXY" "https://localhost:$O13/ten.bin" |
    sha256sum | cut -d' ' -f1)
check_eq "h2 over TLS 1.3 upstream: sha256 equal" "$want" "$got"
alog_next; down=$(jf bytes_down "$LINE")
check_num "access log counts at least 10 MiB down" "$down" -ge 10485760
got=$(curl -sS --http1.1 --tlsv1.2 --tls-max 1.2 --max-time 60 --cacert "$CA" -x "$PROXY" \
    "https://localhost:$O12/ten.bin" | sha256sum | cut -d' ' -f1)
check_eq "HTTP/1.1 over TLS 1.2 on both sides: sha256 equal" "$want" "$got"
alog_next # its line, unchecked
head -c 5000000 /dev/urandom >"$WORK/upload.bin"
upb=$(sha256sum <"$WORK/upload.bin" | cut -d' ' -f1)
for v in 1.1 2; do
    out=$(curl -sS --http$v --max-time 30 --cacert "$CA" -x "$PROXY" -T "$WORK/upload.bin" \
        -o /dev/null -w '%{http_version} %{http_code}' "https://localhost:$O13/up/u$v.bin" 2>&1)
    check_eq "5 MB upload (PUT, HTTP/$v) stored by the origin" "$v 201" "$out"
    check_eq "5 MB upload (HTTP/$v): sha256 equal at the origin" "$upb" \
        "$(sha256sum <"$WORK/o13/www/up/u$v.bin" 2>/dev/null | cut -d' ' -f1)"
    alog_next
    up=$(jf bytes_up "$LINE")
    check_num "access log counts the 5 MB upload (HTTP/$v)" "$up" -ge 5000000
done

echo "== the minted leaf as openssl s_client sees it"
leaf_of() { # leaf_of PORT SERVERNAME CAFILE [extra s_client args]: s_client output; leaf in $WORK/leaf.pem
    local port=$1 sn=$2 caf=$3
    shift 3
    local o
    o=$(echo | timeout 10 openssl s_client -proxy "127.0.0.1:$PPORT" -connect "localhost:$port" \
        -servername "$sn" -CAfile "$caf" -showcerts "$@" 2>&1)
    echo "$o" | awk '/-----BEGIN CERTIFICATE-----/{p=1} p{print} /-----END CERTIFICATE-----/{exit}' \
        >"$WORK/leaf.pem"
    echo "$o"
}
san_of() { openssl x509 -in "$1" -noout -ext subjectAltName 2>/dev/null | sed -n '2,$p' | tr -d ' '; }
out=$(leaf_of "$O13" localhost "$CA" -verify_hostname localhost)
check_contains "s_client: Verify return code: 0 (ok)" "Verify return code: 0 (ok)" "$out"
check_eq "leaf subject is the origin's" "$(openssl x509 -in "$P/origin.pem" -noout -subject)" \
    "$(openssl x509 -in "$WORK/leaf.pem" -noout -subject 2>&1)"
check_eq "leaf SAN is the origin's (DNS:localhost, DNS:bypass.localhost, IP:127.0.0.1)" \
    "$(san_of "$P/origin.pem")" "$(san_of "$WORK/leaf.pem")"
check_eq "leaf issuer is the forward-trust CA" "$(openssl x509 -in "$CA" -noout -subject | sed 's/^subject=//')" \
    "$(openssl x509 -in "$WORK/leaf.pem" -noout -issuer | sed 's/^issuer=//')"
check_contains "openssl verify: leaf chains to forward-trust" "OK" \
    "$(openssl verify -CAfile "$CA" "$WORK/leaf.pem" 2>&1)"
check "leaf key is the proxy's, not the origin's" test \
    "$(openssl x509 -in "$WORK/leaf.pem" -noout -pubkey 2>/dev/null)" != "$(openssl x509 -in "$P/origin.pem" -noout -pubkey)"
out=$(leaf_of "$ONAMES" names.test "$CA" -verify_hostname names.test)
check_contains "origin with several names: Verify return code: 0 (ok)" "Verify return code: 0 (ok)" "$out"
check_eq "leaf subject CN = names.test" "subject=CN = names.test" \
    "$(openssl x509 -in "$WORK/leaf.pem" -noout -subject 2>&1)"
check_eq "leaf SAN: every name of the origin, wildcard and IP included" \
    "DNS:names.test,DNS:localhost,DNS:*.wild.test,IPAddress:127.0.0.1" "$(san_of "$WORK/leaf.pem")"
la=$(date -d "$(openssl x509 -in "$WORK/leaf.pem" -noout -enddate | cut -d= -f2)" +%s)
oa=$(date -d "$(openssl x509 -in "$P/names.pem" -noout -enddate | cut -d= -f2)" +%s)
check "leaf notAfter is not past the origin's" test "$la" -le "$oa"
out=$(echo | timeout 10 openssl s_client -proxy "127.0.0.1:$PPORT" -connect "localhost:$ONAMES" \
    -servername x.wild.test -verify_hostname x.wild.test -CAfile "$CA" 2>&1)
check_contains "a name covered by the wildcard verifies through the proxy" "Verify return code: 0 (ok)" "$out"

echo "== upstreams whose certificate does not verify"
# self-signed: the leaf comes from forward-untrust with the origin's names
curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" "https://localhost:$OSELF/index.html" >/dev/null 2>&1
check_eq "self-signed: client trusting forward-trust fails verification (curl exit 60)" "60" "$?"
alog_next 4; line=$LINE # three s_client connections above, and this one
check_not_contains "self-signed: access log upstream_verify is not ok" '"upstream_verify":"ok"' "$line"
check_contains "self-signed: access log names the error" "self-signed certificate" "$line"
out=$(curl -sS --max-time 10 --cacert "$UCA" -x "$PROXY" "https://localhost:$OSELF/index.html" 2>&1)
check_eq "self-signed: client trusting forward-untrust gets the body" "hello-from-origin" "$out"

# expired: by design (certcache/cc_mint.c) the leaf mirrors the upstream's validity, so it is
# expired too and a client trusting forward-untrust still sees "certificate has expired"
curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" "https://localhost:$OEXP/index.html" >/dev/null 2>&1
check_eq "expired: client trusting forward-trust fails verification (curl exit 60)" "60" "$?"
alog_next 2; line=$LINE
check_not_contains "expired: access log upstream_verify is not ok" '"upstream_verify":"ok"' "$line"
check_contains "expired: access log says certificate has expired" '"upstream_verify":"certificate has expired"' "$line"
out=$(curl -sS --max-time 10 --cacert "$UCA" -x "$PROXY" "https://localhost:$OEXP/index.html" 2>&1)
check_contains "expired: client trusting forward-untrust sees the mirrored expiry" "certificate has expired" "$out"
out=$(leaf_of "$OEXP" localhost "$UCA")
check_contains "expired: chain builds to forward-untrust, only the expiry fails (code 10)" \
    "Verify return code: 10 (certificate has expired)" "$out"
check_contains "expired: leaf issued by forward-untrust" "CN = tlsmint forward-untrust CA" \
    "$(openssl x509 -in "$WORK/leaf.pem" -noout -issuer 2>&1)"
check_eq "expired: leaf notAfter mirrors the origin's" "notAfter=Feb  1 00:00:00 2020 GMT" \
    "$(openssl x509 -in "$WORK/leaf.pem" -noout -enddate 2>&1)"

# wrong host: names come from the upstream only, so the leaf is for other.example
curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" "https://localhost:$OWRONG/index.html" >/dev/null 2>&1
check_eq "wrong host: client trusting forward-trust fails verification (curl exit 60)" "60" "$?"
alog_next 3; line=$LINE
check_contains "wrong host: access log says hostname mismatch" '"upstream_verify":"hostname mismatch"' "$line"
out=$(curl -sS --max-time 10 --cacert "$UCA" -x "$PROXY" "https://localhost:$OWRONG/index.html" 2>&1)
check_contains "wrong host: client trusting forward-untrust still sees the name mismatch" \
    "no alternative certificate subject name matches" "$out"
out=$(leaf_of "$OWRONG" localhost "$UCA")
check_contains "wrong host: chain verifies to forward-untrust (no host check)" "Verify return code: 0 (ok)" "$out"
check_eq "wrong host: leaf carries the upstream's name only" "DNS:other.example" "$(san_of "$WORK/leaf.pem")"
out=$(curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" --connect-to "other.example:443:localhost:$OWRONG" \
    "https://other.example/index.html" 2>&1)
check_eq "the same upstream asked for by its own name (SNI other.example) verifies" "hello-from-origin" "$out"
alog_next 3
check_contains "access log: upstream_verify ok for SNI other.example" '"upstream_verify":"ok"' "$LINE"

echo "== SIGTERM"
check "proxy alive" kill -0 "$TLSMINT_PID"
kill -TERM "$TLSMINT_PID"
wait "$TLSMINT_PID"
check_eq "exit status 0" "0" "$?"
check_not_contains "no sanitizer report" "Sanitizer" "$(cat "$WORK/tlsmint.log")"
check_not_contains "no UBSan report" "runtime error" "$(cat "$WORK/tlsmint.log")"
echo "runtime: $(($(date +%s) - T_START)) s"
finish
