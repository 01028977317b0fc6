#!/bin/bash
# SPDX-License-Identifier: MIT
# test_ca.sh - an enterprise forward-trust CA: the key is made in the HSM, the organisation's
# root issues its certificate from tlsmint's CSR, tlsmint imports it, and clients that trust
# only that root accept the leaves (the proxy sends the subordinate CA after each leaf).
. "$(dirname "$0")/lib.sh"

make_pki "$WORK/pki"
S="$WORK/state"
"$TLSMINT" init --dir "$S" >/dev/null || { echo "init failed"; exit 1; }
OPORT=$(free_port) PPORT=$(free_port)
start_nginx "$WORK/origin" "$OPORT" "$WORK/pki/origin.pem" "$WORK/pki/origin.key"
set_conf "$S/tlsmint.conf" listen explicit "127.0.0.1:$PPORT"
set_conf "$S/tlsmint.conf" listen transparent ""
set_conf "$S/tlsmint.conf" upstream ca_file "$WORK/pki/root.pem"
set_conf "$S/tlsmint.conf" admin metrics ""
start_tlsmint "$S/tlsmint.conf" "$WORK/tlsmint.log" || exit 1
PROXY="http://127.0.0.1:$PPORT"

echo "== CSR for the HSM-held key"
out=$("$TLSMINT" -c "$S/tlsmint.conf" ca csr --out "$WORK/ft.csr" --subject "/O=Example Corp/CN=Example forward-trust CA" 2>&1)
check_contains "ca csr writes the request" "certificate request for the HSM key 'forward-trust'" "$out"
check_contains "the request is signed by the HSM key" "verify OK" "$(openssl req -in "$WORK/ft.csr" -noout -verify 2>&1)"
hsm_pub=$(openssl x509 -in "$S/ca/forward-trust.pem" -noout -pubkey)
check_eq "the request carries the HSM's public key" "$hsm_pub" "$(openssl req -in "$WORK/ft.csr" -noout -pubkey)"

echo "== the organisation's root issues it"
R="$WORK/corp"
mkdir -p "$R"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$R/root.key" -out "$R/root.pem" \
    -subj "/CN=Example Corp Root" -days 30 -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign" 2>/dev/null
printf "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n" >"$R/ext"
openssl x509 -req -in "$WORK/ft.csr" -CA "$R/root.pem" -CAkey "$R/root.key" -CAcreateserial \
    -out "$R/ft.pem" -days 20 -extfile "$R/ext" 2>/dev/null
printf "basicConstraints=CA:FALSE\n" >"$R/leafext"
openssl x509 -req -in "$WORK/ft.csr" -CA "$R/root.pem" -CAkey "$R/root.key" -CAcreateserial \
    -out "$R/notca.pem" -days 20 -extfile "$R/leafext" 2>/dev/null

echo "== import"
out=$("$TLSMINT" -c "$S/tlsmint.conf" ca import --cert "$R/notca.pem" 2>&1)
check "a certificate that is not a CA is refused" test $? -ne 0
check_contains "with a reason" "is not a CA certificate" "$out"
out=$("$TLSMINT" -c "$S/tlsmint.conf" ca import --cert "$R/root.pem" 2>&1)
check "a CA for another key is refused" test $? -ne 0
check_contains "with a reason" "neither the HSM's forward-trust key nor the forward-untrust key" "$out"
out=$("$TLSMINT" -c "$S/tlsmint.conf" ca import --cert "$R/ft.pem" --chain "$R/root.pem" 2>&1)
check_eq "the issued certificate is imported" "0" "$?"
check_contains "and its key is on the HSM" "key resides on the HSM" "$out"
list=$("$TLSMINT" -c "$S/tlsmint.conf" ca list 2>&1)
check_contains "ca list: issuer is the corporate root" "issuer    /CN=Example Corp Root" "$list"
check_contains "ca list: key on the HSM, reachable, matching" "on the HSM and reachable" "$list"
check_contains "ca list: untrust key sealed" "local, sealed with the master key" "$list"
check_contains "audit: ca_import" '"event":"ca_import"' "$(cat "$S/audit.log")"

echo "== a running proxy takes it on reload"
"$TLSMINT" -c "$S/tlsmint.conf" ctl reload >/dev/null
check_eq "ctl reload" "0" "$?"
out=$(curl -sS --max-time 10 --cacert "$R/root.pem" -x "$PROXY" "https://localhost:$OPORT/index.html" 2>&1)
check_eq "a client trusting only the corporate root is served" "hello-from-origin" "$out"
chain=$(echo | openssl s_client -proxy "127.0.0.1:$PPORT" -connect "localhost:$OPORT" -showcerts 2>/dev/null | grep -c "BEGIN CERTIFICATE")
check_eq "the proxy sends leaf + subordinate CA, not the root" "2" "$chain"
kill -TERM "$TLSMINT_PID"; wait "$TLSMINT_PID"
check_eq "clean exit" "0" "$?"
finish
