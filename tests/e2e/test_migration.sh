#!/bin/bash
# SPDX-License-Identifier: MIT
# test_migration.sh - master key custody and the appliance migration: node A exports one
# bundle, node B (same master key, same HSM token) imports it, and a client that trusts only
# A's CA is served by B. Tampered or truncated bundles, a wrong master key and a mismatching
# HSM key are refused without changing anything; a kill -9 during 'master-key change' leaves
# the old or the new state; no private key or PIN is ever in clear outside the PIN file.
. "$(dirname "$0")/lib.sh"

make_pki "$WORK/pki"
head -c 32 /dev/urandom >"$WORK/mk"
head -c 32 /dev/urandom >"$WORK/mk.wrong"
chmod 600 "$WORK/mk" "$WORK/mk.wrong"
A="$WORK/nodeA" B="$WORK/nodeB" C="$WORK/nodeC"

# no PEM/DER private key and no PIN in any file of a state dir, but the PIN file
no_secrets() { # no_secrets DIR LABEL
    local pin leak
    pin=$(cat "$1/hsm/pin" 2>/dev/null)
    leak=$(grep -rlaE 'PRIVATE KEY|BEGIN EC PRIV|BEGIN RSA PRIV' "$1" 2>/dev/null)
    check_eq "$2: no private key in clear under $(basename "$1")" "" "$leak"
    if [ -n "$pin" ]; then
        leak=$(grep -rlaF "$pin" "$1" | grep -v '/hsm/pin$')
        check_eq "$2: the PIN only in its 0600 file" "" "$leak"
        check_eq "$2: PIN file is 0600" "600" "$(stat -c %a "$1/hsm/pin")"
    fi
}

echo "== node A"
"$TLSMINT" init --dir "$A" --master-key-file "$WORK/mk" >"$WORK/initA.out" 2>&1
check_eq "init with --master-key-file" "0" "$?"
check_eq "keys is a link to keys.1" "keys.1" "$(readlink "$A/keys")"
no_secrets "$A" "after init"
out=$("$TLSMINT" -c "$A/tlsmint.conf" master-key status 2>&1)
check_contains "master-key status" "wrapped by HSM key 'tlsmint-wrap-1'" "$out"
check_contains "lifetime shown" "365 days, 365 left" "$out"

echo "== wrapping-key rotation keeps everything readable"
out=$("$TLSMINT" -c "$A/tlsmint.conf" master-key rotate-wrapping-key 2>&1)
check_contains "rotate-wrapping-key" "re-wrapped with new HSM key 'tlsmint-wrap-" "$out"
check_contains "the old wrapping key is kept" "'tlsmint-wrap-1' is kept in the HSM" "$out"
"$TLSMINT" -c "$A/tlsmint.conf" mint --untrusted "$WORK/pki/origin.pem" >"$WORK/l1.pem" 2>/dev/null
check_eq "sealed untrust key still opens after rotation" "0" "$?"
no_secrets "$A" "after rotation"

echo "== backup"
out=$("$TLSMINT" -c "$A/tlsmint.conf" backup --out "$WORK/a.bundle" 2>&1)
check_contains "backup success" "backup success" "$out"
check_eq "bundle is 0600" "600" "$(stat -c %a "$WORK/a.bundle")"
check_eq "no private key in the bundle in clear" "" "$(grep -laE 'PRIVATE KEY' "$WORK/a.bundle")"
check_eq "no PIN in the bundle in clear" "" "$(grep -laF "$(cat "$A/hsm/pin")" "$WORK/a.bundle")"
check_contains "audit: backup with the bundle's sha256" '"event":"backup"' "$(cat "$A/audit.log")"

echo "== refused bundles change nothing"
size=$(stat -c %s "$WORK/a.bundle")
for pos in 2 10 40 $((size / 2)) $((size - 3)); do
    cp "$WORK/a.bundle" "$WORK/t.bundle"
    flip_byte "$WORK/t.bundle" "$pos"
    out=$("$TLSMINT" restore --in "$WORK/t.bundle" --dir "$B" --master-key-file "$WORK/mk" 2>&1)
    rc=$?
    check_eq "tampered byte at $pos: refused with exit 1 (no crash)" "1" "$rc"
    check "tampered byte at $pos: $B not created" test ! -e "$B"
done
check_contains "the message says why" "wrong master key, or the file was modified or truncated" "$out"
head -c $((size - 100)) "$WORK/a.bundle" >"$WORK/t.bundle"
"$TLSMINT" restore --in "$WORK/t.bundle" --dir "$B" --master-key-file "$WORK/mk" >/dev/null 2>&1
check_eq "truncated bundle: refused with exit 1" "1" "$?"
out=$("$TLSMINT" restore --in "$WORK/a.bundle" --dir "$B" --master-key-file "$WORK/mk.wrong" 2>&1)
check_eq "wrong master key: refused with exit 1 (the release build once aborted here, 134)" "1" "$?"
check_contains "wrong master key: clear message" "does not open" "$out"
check "wrong master key: $B not created" test ! -e "$B"
"$TLSMINT" init --dir "$C" >/dev/null 2>&1
# another HSM behind the same name, same PIN, but not the forward-trust key
SOFTHSM2_CONF="$C/hsm/softhsm2.conf" pkcs11-tool --module /usr/lib/softhsm/libsofthsm2.so \
    --token-label tlsmint --login --pin "$(cat "$C/hsm/pin")" --change-pin \
    --new-pin "$(cat "$A/hsm/pin")" >/dev/null 2>&1
out=$("$TLSMINT" restore --in "$WORK/a.bundle" --dir "$B" --master-key-file "$WORK/mk" \
    --hsm-env "SOFTHSM2_CONF=$C/hsm/softhsm2.conf" 2>&1)
check "HSM whose key does not match: refused" test $? -ne 0
check_contains "HSM mismatch: clear message" "does not match the bundle's forward-trust CA certificate" "$out"
check "HSM mismatch: $B not created" test ! -e "$B"
check_eq "no half-built directory left" "" "$(ls -d "$B".tmp-* 2>/dev/null)"

echo "== restore on node B (same master key, same HSM token)"
out=$("$TLSMINT" restore --in "$WORK/a.bundle" --dir "$B" --master-key-file "$WORK/mk" 2>&1)
check_eq "restore exits 0" "0" "$?"
check_contains "restore says so" "trust infrastructure restored into $B" "$out"
check_contains "audit on B: restore" '"event":"restore"' "$(cat "$B/audit.log")"
check "B has its own wrapping key" grep -q "label tlsmint-wrap-" "$B/keys/master.wrapped"
no_secrets "$B" "after restore"
out=$("$TLSMINT" -c "$B/tlsmint.conf" master-key rotate-wrapping-key 2>&1)
check_contains "B rotates its own wrapping key on the shared token" "re-wrapped with new HSM key" "$out"
cmp -s "$A/ca/forward-trust.pem" "$B/ca/forward-trust.pem"
check_eq "B serves A's forward-trust CA" "0" "$?"
"$TLSMINT" -c "$B/tlsmint.conf" mint "$WORK/pki/origin.pem" >"$WORK/leafB.pem" 2>/dev/null
check_eq "mint on B" "0" "$?"
check_contains "B's leaf chains to A's CA" "OK" "$(openssl verify -CAfile "$A/ca/forward-trust.pem" "$WORK/leafB.pem" 2>&1)"

OPORT=$(free_port)
start_nginx "$WORK/origin" "$OPORT" "$WORK/pki/origin.pem" "$WORK/pki/origin.key"
PB=$(free_port)
set_conf "$B/tlsmint.conf" listen explicit "127.0.0.1:$PB"
set_conf "$B/tlsmint.conf" listen transparent ""
set_conf "$B/tlsmint.conf" upstream ca_file "$WORK/pki/root.pem"
set_conf "$B/tlsmint.conf" admin metrics ""
start_tlsmint "$B/tlsmint.conf" "$WORK/B.log" || exit 1
out=$(curl -sS --max-time 10 --cacert "$A/ca/forward-trust.pem" -x "http://127.0.0.1:$PB" "https://localhost:$OPORT/index.html" 2>&1)
check_eq "a client trusting only A's CA is served through B" "hello-from-origin" "$out"
out=$(curl -sS --max-time 10 --cacert "$A/ca/forward-untrust.pem" -x "http://127.0.0.1:$PB" "https://localhost:$(free_port)/" 2>&1)
check_contains "(an unreachable upstream fails cleanly)" "curl: (" "$out"
kill -TERM "$TLSMINT_PID"; wait "$TLSMINT_PID"
check_eq "B: clean exit" "0" "$?"
check_not_contains "B: no sanitizer report" "Sanitizer" "$(cat "$WORK/B.log")"
check_not_contains "B: the PIN is not in the log" "$(cat "$B/hsm/pin")" "$(cat "$WORK/B.log")"

echo "== master-key change: all or nothing"
before=$(readlink "$A/keys")
sum_before=$(sha256sum "$A/keys/leaf-pool.enc" | cut -d' ' -f1)
TLSMINT_TEST_CRASH_BEFORE_SWITCH=1 "$TLSMINT" -c "$A/tlsmint.conf" master-key change >/dev/null 2>&1
check_eq "a crash at the worst moment (exit 9)" "9" "$?"
check_eq "the old state is still the live one" "$before" "$(readlink "$A/keys")"
check_eq "its sealed files are untouched" "$sum_before" "$(sha256sum "$A/keys/leaf-pool.enc" | cut -d' ' -f1)"
"$TLSMINT" -c "$A/tlsmint.conf" mint --untrusted "$WORK/pki/origin.pem" >/dev/null 2>&1
check_eq "and it still works" "0" "$?"
# a kill -9 from outside at a random moment: either state must work afterwards
for delay in 0.05 0.1 0.2; do
    "$TLSMINT" -c "$A/tlsmint.conf" master-key change >/dev/null 2>&1 &
    sleep "$delay"
    kill -9 $! 2>/dev/null
    wait $! 2>/dev/null
    "$TLSMINT" -c "$A/tlsmint.conf" mint --untrusted "$WORK/pki/origin.pem" >/dev/null 2>&1
    check_eq "kill -9 after ${delay}s: state $(readlink "$A/keys") is whole" "0" "$?"
done
# what a change killed after its switch and before its clean-up leaves: an old generation
mkdir -p "$A/keys.77" && echo stale >"$A/keys.77/leaf-pool.enc"
out=$("$TLSMINT" -c "$A/tlsmint.conf" master-key change --master-key-file "$WORK/mk.wrong" 2>&1)
check_contains "change to a given master key" "master key changed" "$out"
"$TLSMINT" -c "$A/tlsmint.conf" mint --untrusted "$WORK/pki/origin.pem" >/dev/null 2>&1
check_eq "everything opens with the new master key" "0" "$?"
check_eq "only one key directory remains (a stale old generation too is removed)" "1" "$(ls -d "$A"/keys.* | wc -l)"
"$TLSMINT" -c "$A/tlsmint.conf" backup --out "$WORK/a2.bundle" >/dev/null 2>&1
"$TLSMINT" restore --in "$WORK/a2.bundle" --dir "$WORK/nodeD" --master-key-file "$WORK/mk" >/dev/null 2>&1
check "a bundle made after the change does not open with the old master key" test $? -ne 0
"$TLSMINT" restore --in "$WORK/a2.bundle" --dir "$WORK/nodeD" --master-key-file "$WORK/mk.wrong" >/dev/null 2>&1
check_eq "it opens with the new one" "0" "$?"
no_secrets "$A" "after master-key change"
no_secrets "$WORK/nodeD" "second restore"
audit=$(cat "$A/audit.log")
for ev in init wrapping_key_rotated backup master_key_changed; do
    check_contains "audit: $ev" "\"event\":\"$ev\"" "$audit"
done
check_not_contains "audit holds no PIN" "$(cat "$A/hsm/pin")" "$audit"
finish
