#!/bin/bash
# SPDX-License-Identifier: MIT
# test_expiry.sh - certificate lifetimes: a forward-trust CA issued for 10 days (imported with
# `ca import`) caps every leaf at its own notAfter, is warned about at start (within [ca]
# reminder_days), shows in `ctl status` and in tlsmint_certificate_expiry_timestamp_seconds;
# an expired forward-trust CA stops the proxy from starting, with a clear error.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib2.sh"

make_pki "$WORK/pki"
S="$WORK/state"
"$TLSMINT" init --dir "$S" >/dev/null || { echo "init failed"; exit 1; }
OPORT=$(free_port) PPORT=$(free_port) MPORT=$(free_port)
start_nginx "$WORK/origin" "$OPORT" "$WORK/pki/origin.pem" "$WORK/pki/origin.key"
set_conf "$S/tlsmint.conf" listen explicit "127.0.0.1:$PPORT"
set_conf "$S/tlsmint.conf" listen transparent ""
set_conf "$S/tlsmint.conf" upstream ca_file "$WORK/pki/root.pem"
set_conf "$S/tlsmint.conf" admin metrics "127.0.0.1:$MPORT"

echo "== a corporate root issues a forward-trust CA valid for 10 days"
R="$WORK/corp"
mkdir -p "$R"
"$TLSMINT" -c "$S/tlsmint.conf" ca csr --out "$R/ft.csr" --subject "/O=Example Corp/CN=Short CA" >/dev/null 2>&1
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$R/root.key" -out "$R/root.pem" \
    -subj "/CN=Example Corp Root" -days 300 -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign" 2>/dev/null
printf "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n" >"$R/ext"
openssl x509 -req -in "$R/ft.csr" -CA "$R/root.pem" -CAkey "$R/root.key" -CAcreateserial \
    -out "$R/ft.pem" -days 10 -extfile "$R/ext" 2>/dev/null
out=$("$TLSMINT" -c "$S/tlsmint.conf" ca import --cert "$R/ft.pem" --chain "$R/root.pem" 2>&1)
check_eq "ca import of the 10-day CA" "0" "$?"
ca_end=$(date -d "$(openssl x509 -in "$R/ft.pem" -noout -enddate | cut -d= -f2)" +%s)

echo "== start: the warning"
start_tlsmint "$S/tlsmint.conf" "$WORK/tlsmint.log" || exit 1
log=$(cat "$WORK/tlsmint.log")
check_contains "start warns about the forward-trust CA" \
    "certificate forward-trust (/O=Example Corp/CN=Short CA, $S/ca/forward-trust.pem) expires in 10 days (within [ca] reminder_days = 30)" "$log"
check_not_contains "the 300-day root is not within the reminder" "forward-trust-chain (/CN=Example Corp Root" "$log"

echo "== leaves end when the CA ends"
out=$(curl -sS --max-time 10 --cacert "$R/root.pem" -x "http://127.0.0.1:$PPORT" "https://localhost:$OPORT/index.html" 2>&1)
check_eq "a client trusting the corporate root is served" "hello-from-origin" "$out"
leaf=$(echo | openssl s_client -proxy "127.0.0.1:$PPORT" -connect "localhost:$OPORT" -servername localhost 2>/dev/null | openssl x509 -noout -enddate 2>/dev/null | cut -d= -f2)
check_eq "the leaf's notAfter is the CA's (origin: 20 days, leaf_max_days: 30)" "$ca_end" "$(date -d "$leaf" +%s 2>/dev/null)"
upend=$(date -d "$(openssl x509 -in "$WORK/pki/origin.pem" -noout -enddate | cut -d= -f2)" +%s)
check_num "and the origin's would have been later" "$upend" -gt "$ca_end"

echo "== ctl status and metrics"
st=$("$TLSMINT" -c "$S/tlsmint.conf" ctl status 2>&1)
check_contains "ctl status: days left and the reminder" \
    "certificate   forward-trust /O=Example Corp/CN=Short CA: 10 days left" "$st"
check_contains "ctl status: flagged" "10 days left (until $(date -u -d "@$ca_end" '+%Y-%m-%d %H:%M') UTC) (reminder: renew it)" "$st"
check_contains "ctl status: the chain's root too" "certificate   forward-trust-chain /CN=Example Corp Root: 300 days left" "$st"
m=$(curl -sS --max-time 5 "http://127.0.0.1:$MPORT/metrics")
check_contains "metric for the forward-trust CA" \
    "tlsmint_certificate_expiry_timestamp_seconds{role=\"forward-trust\",subject=\"/O=Example Corp/CN=Short CA\"} $ca_end" "$m"
check_contains "metric for the forward-untrust CA" \
    'tlsmint_certificate_expiry_timestamp_seconds{role="forward-untrust",' "$m"
check_contains "the reminder as a gauge" "tlsmint_certificate_reminder_seconds 2592000" "$m"

echo "== reload warns again"
n0=$(wc -l <"$WORK/tlsmint.log")
"$TLSMINT" -c "$S/tlsmint.conf" ctl reload >/dev/null
check_eq "ctl reload" "0" "$?"
check_contains "reload warns" "forward-trust (/O=Example Corp/CN=Short CA" "$(tail -n +$((n0 + 1)) "$WORK/tlsmint.log")"
kill -TERM "$TLSMINT_PID"; wait "$TLSMINT_PID"
check_eq "clean exit" "0" "$?"

echo "== an expired forward-trust CA: no start"
mkdir -p "$R/ca/newcerts"; : >"$R/ca/index.txt"; echo 2000 >"$R/ca/serial"
cat >"$R/ca/ca.cnf" <<CNF
[ ca ]
default_ca = corp
[ corp ]
database = $R/ca/index.txt
new_certs_dir = $R/ca/newcerts
serial = $R/ca/serial
default_md = sha256
policy = any
unique_subject = no
email_in_dn = no
[ any ]
commonName = supplied
organizationName = optional
CNF
openssl ca -batch -notext -config "$R/ca/ca.cnf" -cert "$R/root.pem" -keyfile "$R/root.key" \
    -in "$R/ft.csr" -out "$R/old.pem" -extfile "$R/ext" -startdate 20200101000000Z \
    -enddate 20200201000000Z >"$R/ca/old.log" 2>&1
check "an expired CA certificate was made" test -s "$R/old.pem"
cp "$R/old.pem" "$S/ca/forward-trust.pem"
out=$(timeout 30 "$TLSMINT" -c "$S/tlsmint.conf" run 2>&1)
rc=$?
check "run refuses to start" test "$rc" -ne 0 -a "$rc" -ne 124
check_contains "with a clear error" "tlsmint run: the forward-trust CA /CN=Short CA/O=Example Corp ($S/ca/forward-trust.pem) expired" "$out"
check_contains "saying what to do" "then 'tlsmint ca import'" "$out"
finish
