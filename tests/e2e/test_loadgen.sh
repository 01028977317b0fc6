#!/bin/bash
# SPDX-License-Identifier: MIT
# test_loadgen.sh - tlsmint-bench's keepalive scenario against a real nginx: requests one after
# another on each connection (counted one by one), a new connection when the origin ends
# keep-alive ("Connection: close" after keepalive_requests), a clear failure for a response
# without Content-Length.
# usage: test_loadgen.sh TLSMINT_BENCH (meson passes the load generator's path)
. "$(dirname "$0")/lib.sh"

LG=${1:?usage: test_loadgen.sh PATH_OF_tlsmint-bench}
make_pki "$WORK/pki"
OPORT=$(free_port)
start_nginx "$WORK/o" "$OPORT" "$WORK/pki/origin.pem" "$WORK/pki/origin.key" || exit 1
# a second server: keep-alive ends after 10 requests, and /chunked (SSI: chunked) has no Content-Length
KPORT=$(free_port)
sed -e "s/listen 127.0.0.1:$OPORT ssl http2;/listen 127.0.0.1:$KPORT ssl;\n    keepalive_requests 10;\n    location = \/chunked { ssi on; ssi_types *; }/" \
    -e "s|pid $WORK/o/nginx.pid|pid $WORK/o/nginx2.pid|" "$WORK/o/nginx.conf" >"$WORK/o/nginx2.conf"
seq 1 2000 >"$WORK/o/www/chunked"
nginx -c "$WORK/o/nginx2.conf" -e "$WORK/o/logs/error2.log" >>"$WORK/o/logs/stdout.log" 2>&1 &
PIDS+=($!)
wait_port "$KPORT" || exit 1
jf() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$@"; }

echo "== keepalive: 2 connections, 100 requests"
"$LG" keepalive --connect "127.0.0.1:$OPORT" --host localhost --cafile "$WORK/pki/root.pem" \
    --conns 2 --threads 1 --requests 100 --path /index.html --json -q >"$WORK/k1.json"
check_eq "every request answered" "100 0" "$(jf "$WORK/k1.json" 'd["ok"], d["failed"]' | tr -d '(),')"
check_eq "on the two connections only (one handshake each)" "2" "$(jf "$WORK/k1.json" 'd["handshakes"]')"
check_eq "the bodies are counted" "$((100 * 18))" "$(jf "$WORK/k1.json" 'd["body_bytes"]')"

echo "== the origin ends keep-alive after 10 requests: a new connection, no failure"
"$LG" keepalive --connect "127.0.0.1:$KPORT" --host localhost --cafile "$WORK/pki/root.pem" \
    --conns 1 --threads 1 --requests 35 --path /index.html --json -q >"$WORK/k2.json"
check_eq "35 answered, none failed" "35 0" "$(jf "$WORK/k2.json" 'd["ok"], d["failed"]' | tr -d '(),')"
check_eq "4 connections for 35 requests at 10 each" "4" "$(jf "$WORK/k2.json" 'd["handshakes"]')"

echo "== the TLS 1.3 suites offered: AES-128-GCM first by default (as browsers and h2load), --ciphersuites changes it"
check_eq "default: AES-128-GCM negotiated on both connections" "2 0" \
    "$(jf "$WORK/k1.json" 'd["cipher"]["aes-128-gcm"], d["cipher"]["aes-256-gcm"]' | tr -d '(),')"
"$LG" keepalive --connect "127.0.0.1:$OPORT" --host localhost --cafile "$WORK/pki/root.pem" \
    --conns 1 --threads 1 --requests 2 --path /index.html --ciphersuites TLS_AES_256_GCM_SHA384 \
    --json -q >"$WORK/k4.json"
check_eq "--ciphersuites TLS_AES_256_GCM_SHA384: AES-256-GCM" "0 1" \
    "$(jf "$WORK/k4.json" 'd["cipher"]["aes-128-gcm"], d["cipher"]["aes-256-gcm"]' | tr -d '(),')"
rc=0
"$LG" keepalive --connect "127.0.0.1:$OPORT" --host localhost --cafile "$WORK/pki/root.pem" \
    --requests 1 --ciphersuites NO_SUCH_SUITE -q >"$WORK/k5.out" 2>&1 || rc=$?
check_eq "an unknown suite: exit 2" "2" "$rc"
check_contains "named in the error" "NO_SUCH_SUITE" "$(cat "$WORK/k5.out")"

echo "== a response without Content-Length is a clear failure"
"$LG" keepalive --connect "127.0.0.1:$KPORT" --host localhost --cafile "$WORK/pki/root.pem" \
    --conns 1 --threads 1 --requests 3 --path /chunked --json -q >"$WORK/k3.json"
check_contains "named in the errors" "without Content-Length" "$(jf "$WORK/k3.json" 'd["first_errors"]')"
check_eq "nothing counted as answered" "0" "$(jf "$WORK/k3.json" 'd["ok"]')"
finish
