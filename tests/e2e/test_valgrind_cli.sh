#!/bin/bash
# SPDX-License-Identifier: MIT
# test_valgrind_cli.sh - every management command of the release binary once under valgrind
# (memcheck, signer children followed): init, hsm-status, mint, backup, restore (good,
# tampered, wrong key), master-key status / rotate-wrapping-key / change, ca csr / import /
# list. Any invalid read or write, use of uninitialised memory, bad free or definite/indirect
# leak fails the check (valgrind exits 99). ASan cannot see inside libc or OpenSSL: valgrind
# can. tests/e2e/valgrind.supp may hold OpenSSL's global state only.
. "$(dirname "$0")/lib.sh"
command -v valgrind >/dev/null || { echo "SKIP: valgrind is not installed"; exit 77; }
case "$(file -L "$TLSMINT" 2>/dev/null)$(nm -D "$TLSMINT" 2>/dev/null | grep -c __asan_init)" in
*[1-9]) echo "SKIP: $TLSMINT is an ASan build; valgrind runs on the release binary"; exit 77 ;;
esac

SUPP="$(dirname "$0")/valgrind.supp"
VG_RC=99
# vg EXPECTED_RC NAME ARGS...: runs tlsmint ARGS under valgrind; checks the exit status and
# that valgrind found nothing (its report is printed on failure)
vg() {
    local want=$1 name=$2 rc
    shift 2
    valgrind -q --trace-children=yes --error-exitcode=$VG_RC --leak-check=full \
        --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect \
        --suppressions="$SUPP" --log-file="$WORK/vg.$name.%p" "$TLSMINT" "$@" \
        >"$WORK/out.$name" 2>&1
    rc=$?
    local report
    report=$(cat "$WORK"/vg."$name".* 2>/dev/null)
    if [ -n "$report" ] || [ "$rc" = "$VG_RC" ]; then
        bad "$name: valgrind reports (exit $rc): $(echo "$report" | head -c 3000)"
    else
        ok "$name: valgrind clean"
    fi
    if [ "$rc" = "$want" ]; then
        ok "$name: exit status $rc"
    else
        bad "$name: exit status (expected $want, got $rc): $(head -c 1500 "$WORK/out.$name")"
    fi
}

make_pki "$WORK/pki"
head -c 32 /dev/urandom >"$WORK/mk"
head -c 32 /dev/urandom >"$WORK/mk.wrong"
chmod 600 "$WORK/mk" "$WORK/mk.wrong"
A="$WORK/nodeA"

echo "== state and HSM"
vg 0 init init --dir "$A" --master-key-file "$WORK/mk"
C="$A/tlsmint.conf"
vg 0 hsm-status -c "$C" hsm-status
check_contains "hsm-status names the token" "tlsmint" "$(cat "$WORK/out.hsm-status")"
vg 0 mint -c "$C" mint "$WORK/pki/origin.pem"
check_contains "mint prints a certificate" "BEGIN CERTIFICATE" "$(cat "$WORK/out.mint")"
vg 0 mint-untrusted -c "$C" mint --untrusted "$WORK/pki/origin.pem"

echo "== master key"
vg 0 mk-status -c "$C" master-key status
check_contains "master-key status" "wrapped by HSM key" "$(cat "$WORK/out.mk-status")"
vg 0 mk-rotate -c "$C" master-key rotate-wrapping-key
vg 0 mk-change -c "$C" master-key change

echo "== forward-trust CA"
vg 0 ca-csr -c "$C" ca csr --out "$WORK/ft.csr" --subject "/O=Example/CN=Example forward-trust CA"
R="$WORK/corp"
mkdir -p "$R"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$R/root.key" \
    -out "$R/root.pem" -subj "/CN=Example Root" -days 30 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
printf "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n" >"$R/ext"
openssl x509 -req -in "$WORK/ft.csr" -CA "$R/root.pem" -CAkey "$R/root.key" -CAcreateserial \
    -out "$R/ft.pem" -days 20 -extfile "$R/ext" 2>/dev/null
vg 0 ca-import -c "$C" ca import --cert "$R/ft.pem" --chain "$R/root.pem"
vg 1 ca-import-bad -c "$C" ca import --cert "$R/root.pem"
vg 0 ca-list -c "$C" ca list
check_contains "ca list shows the imported CA" "Example Root" "$(cat "$WORK/out.ca-list")"

echo "== backup and restore"
vg 0 backup -c "$C" backup --out "$WORK/a.bundle"
# the master key changed above and is held only by the HSM now: restore a bundle of a second
# node whose master key file we hold
B0="$WORK/nodeB0"
"$TLSMINT" init --dir "$B0" --master-key-file "$WORK/mk" >/dev/null 2>&1
"$TLSMINT" -c "$B0/tlsmint.conf" backup --out "$WORK/b.bundle" >/dev/null 2>&1
vg 0 restore restore --in "$WORK/b.bundle" --dir "$WORK/nodeB" --master-key-file "$WORK/mk"
check_contains "restore says so" "trust infrastructure restored into" "$(cat "$WORK/out.restore")"
cp "$WORK/b.bundle" "$WORK/t.bundle"
flip_byte "$WORK/t.bundle" $(($(stat -c %s "$WORK/b.bundle") / 2))
vg 1 restore-tampered restore --in "$WORK/t.bundle" --dir "$WORK/nodeC" --master-key-file "$WORK/mk"
check_contains "tampered: refused" "does not open" "$(cat "$WORK/out.restore-tampered")"
vg 1 restore-wrong-key restore --in "$WORK/b.bundle" --dir "$WORK/nodeC" --master-key-file "$WORK/mk.wrong"
check_contains "wrong key: refused" "does not open" "$(cat "$WORK/out.restore-wrong-key")"
check "nothing was written for the refused bundles" test ! -e "$WORK/nodeC"
finish
