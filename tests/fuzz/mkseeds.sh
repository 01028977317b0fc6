#!/bin/bash
# tests/fuzz/mkseeds.sh TLSMINT_BIN [OUT] - (re)makes the seed corpora from real components.
# Everything is made here, on loopback, by the real programs: `tlsmint init` and `tlsmint backup`
# with the master key 00 01 .. 1f (fuzz_common.c), a real signer's frames (capture_frames.py),
# real clients' CONNECT heads (capture_connect.py) and ClientHellos (capture_hello.py), a real
# server's first flight, certificates from openssl. Writes OUT/<target>/ (default a scratch
# directory, printed); tests/fuzz/corpus/ holds these after `-merge=1` minimisation, and
# tests/fuzz/data/ holds OUT/data/ (the CA and ClientHello fuzz_tls_upstream starts from: the
# tls_upstream seeds chain to that CA, so the three are replaced together).
set -euo pipefail
bin="$(readlink -f "${1:?usage: mkseeds.sh TLSMINT_BIN [OUT]}")"
out="${2:-$(mktemp -d /tmp/tlsmint-seeds.XXXXXX)}"
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d /tmp/tlsmint-seedwork.XXXXXX)"
trap 'rm -rf "$work"' EXIT
export ASAN_OPTIONS=detect_leaks=0
mkdir -p "$out"/{cfg,connect,bundle,bundle_plain,sealed,mint,frame_proxy,frame_signer}
cd "$work"
printf '000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n' >mk
chmod 600 mk

# ---- state, bundles, sealed files, configs
for kt in ec-p256 rsa-2048; do
    "$bin" init --dir "$work/$kt" --key-type "$kt" --master-key-file mk >/dev/null
    "$bin" backup -c "$work/$kt/tlsmint.conf" --out "$out/bundle/$kt" >/dev/null 2>&1
    python3 "$here/bundle_payload.py" mk "$out/bundle/$kt" "$out/bundle_plain/$kt"
    cp "$work/$kt/tlsmint.conf" "$out/cfg/init-$kt.conf"
done
k="$work/ec-p256/keys"
{ printf '\0'; cat "$k/forward-untrust.key.enc"; } >"$out/sealed/0-untrust-sealed"
{ printf '\1'; cat "$k/leaf-pool.enc"; } >"$out/sealed/1-pool-sealed"
python3 - "$k" "$out/sealed" <<'PY'
import sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
mk = bytes(range(32))
k, out = sys.argv[1:3]
for name, mode in (("forward-untrust.key.enc", 2), ("leaf-pool.enc", 3)):
    b = open(f"{k}/{name}", "rb").read()
    rl = b[4]
    pt = AESGCM(mk).decrypt(b[5 + rl:17 + rl], b[17 + rl:], b[:5 + rl])
    open(f"{out}/{mode}-{name.split('.')[0]}-plain", "wb").write(bytes([mode]) + pt)
PY
openssl genpkey -algorithm ed25519 2>/dev/null | { printf '\3'; cat; } >"$out/sealed/3-pool-ed25519"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 2>/dev/null |
    { printf '\2'; cat; } >"$out/sealed/2-untrust-p384-plain"
cat >"$out/cfg/members.conf" <<'CONF'
[listen]
explicit = [::1]:3128
transparent =
tproxy = yes
threads = 2
[hsm]
module = /usr/lib/softhsm/libsofthsm2.so
env = SOFTHSM2_CONF=/var/lib/tlsmint/hsm/softhsm2.conf
token_serial = 0123456789abcdef
pin_file = /var/lib/tlsmint/hsm/pin
key_id = 0a0b0c
fail_mode = open
[hsm.b]
module = /usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so
env = P11_KIT_SERVER_ADDRESS=unix:path=/run/p11-kit/pkcs11
token = tlsmint
pin_file = /var/lib/tlsmint/hsm/pin
key_label = forward-trust
[master_key]
file = /var/lib/tlsmint/keys/master.wrapped
module = /usr/lib/softhsm/libsofthsm2.so
[policy]
bypass = *.bank.example, updates.example.org
[upstream]
mark = 0x10
verify = no
[log]
level = debug
keylog = /tmp/keys.log
CONF

# ---- signer frames, CONNECT heads
python3 "$here/capture_frames.py" "$bin" "$work/ec-p256/tlsmint.conf" "$out" >/dev/null 2>&1
python3 "$here/capture_connect.py" "$out/connect" >/dev/null

# ---- upstream leaf certificates (DER) for fuzz_mint
cert() { # name, subject, extra openssl req arguments...
    local n="$1" s="$2"
    shift 2
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /dev/null \
        -subj "$s" -outform DER -out "$out/mint/$n" "$@" 2>/dev/null
}
cert san-dns "/CN=www.example.com" -days 90 \
    -addext "subjectAltName=DNS:www.example.com,DNS:example.com,DNS:*.cdn.example.com"
cert san-ip "/CN=10.0.0.1" -days 30 -addext "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost"
cert cn-only "/C=DE/O=Example/CN=legacy.example.org" -days 400
cert cn-ip "/CN=192.0.2.7" -days 10
cert cn-ipv6 "/CN=2001:db8::1" -days 10
cert no-names "/O=No Names Inc" -days 10 -addext "subjectAltName=email:a@example.com,URI:https://x/"
python3 - "$out/mint" <<'PY'
# validity and names openssl req cannot make: a CN longer than 64, future and past periods
import datetime, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
out = sys.argv[1]
key = ec.generate_private_key(ec.SECP256R1())
def make(name, cn, nb, na, sans=None):
    subj = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn, _validate=False)])
    b = (x509.CertificateBuilder().subject_name(subj).issuer_name(subj)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(nb).not_valid_after(na))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), False)
    c = b.sign(key, hashes.SHA256())
    open(f"{out}/{name}", "wb").write(c.public_bytes(serialization.Encoding.DER))
d = datetime.datetime
make("long-cn", "a" * 80 + ".example", d(2024, 1, 1), d(2099, 1, 1))
make("not-yet-valid", "future.example", d(2099, 1, 1), d(2100, 1, 1), ["future.example"])
make("expired", "old.example", d(2020, 1, 1), d(2020, 2, 1), ["old.example"])
make("y2050", "y2050.example", d(2049, 12, 1), d(2051, 1, 1))
PY
openssl req -x509 -newkey rsa:2048 -nodes -keyout /dev/null -subj "/CN=rsa.example" \
    -addext "subjectAltName=DNS:rsa.example" -outform DER -out "$out/mint/rsa" -days 30 2>/dev/null
for c in /etc/ssl/certs/ISRG_Root_X1.pem /etc/ssl/certs/DigiCert_Global_Root_G2.pem; do
    [ -f "$c" ] && openssl x509 -in "$c" -outform DER -out "$out/mint/$(basename "$c" .pem)"
done

# ---- TLS: real ClientHellos and a real server's replies (dataplane targets)
python3 "$here/capture_hello.py" "$out" >/dev/null

# ---- OCSP answers (fuzz_ocsp; its CA and leaf go to OUT/data/ with them)
bash "$here/mkseeds-ocsp.sh" "$out"
echo "$out"
