#!/bin/bash
# tests/fuzz/mkseeds-ocsp.sh OUT - the fuzz_ocsp seeds and data, made by openssl alone: a CA and
# a leaf valid until 2126 (OUT/data/ocsp-ca.pem, ocsp-leaf.pem: fuzz_ocsp checks at 2100-01-01),
# and HTTP answers of `openssl ocsp` as a responder signing with that CA (nextUpdate 100 years
# on): good, revoked, unknown, without Content-Length, a non-successful response, one signed by
# another key, a 404, a bare DER response (as a staple). Called by mkseeds.sh.
set -euo pipefail
out="${1:?usage: mkseeds-ocsp.sh OUT}"
work="$(mktemp -d /tmp/tlsmint-ocspseeds.XXXXXX)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$out/ocsp" "$out/data"
cd "$work"
ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ec ca.key
ec leaf.key
ec other.key
openssl req -x509 -key ca.key -subj "/CN=fuzz ocsp CA" -days 40000 -out ca.pem \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null
openssl req -x509 -key other.key -subj "/CN=fuzz ocsp CA" -days 40000 -out other.pem 2>/dev/null
openssl req -new -key leaf.key -subj "/CN=leaf.example" -out leaf.csr 2>/dev/null
printf "subjectAltName=DNS:leaf.example\nauthorityInfoAccess=OCSP;URI:http://127.0.0.1:1/\n" >leaf.ext
openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -set_serial 0x1001 -days 40000 \
    -extfile leaf.ext -out leaf.pem 2>/dev/null
openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -set_serial 0x1002 -days 40000 \
    -extfile leaf.ext -out leaf2.pem 2>/dev/null
subj="/CN=leaf.example"
printf "V\t491231235959Z\t\t1001\tunknown\t%s\n" "$subj" >good.idx
printf "R\t491231235959Z\t240101000000Z,keyCompromise\t1001\tunknown\t%s\n" "$subj" >revoked.idx
printf "V\t491231235959Z\t\t1002\tunknown\t%s\n" "$subj" >unknown.idx
openssl ocsp -issuer ca.pem -cert leaf.pem -no_nonce -reqout req.der 2>/dev/null
resp() { # name, index, signer cert, signer key
    openssl ocsp -index "$2" -rsigner "$3" -rkey "$4" -CA ca.pem -reqin req.der \
        -respout "$1.der" -ndays 36500 2>/dev/null
}
resp good good.idx ca.pem ca.key
resp revoked revoked.idx ca.pem ca.key
resp unknown unknown.idx ca.pem ca.key
resp forged good.idx other.pem other.key
http() { # name, body file, [no-length]
    { printf "HTTP/1.0 200 OK\r\nContent-Type: application/ocsp-response\r\n"
      [ "${3:-}" = no-length ] || printf "Content-Length: %d\r\n" "$(stat -c %s "$2")"
      printf "\r\n"; cat "$2"; } >"$out/ocsp/$1"
}
http good good.der
http revoked revoked.der
http unknown unknown.der
http forged forged.der
http eof-body good.der no-length
printf '\x30\x03\x0a\x01\x03' >trylater.der
http try-later trylater.der
printf "HTTP/1.0 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found" >"$out/ocsp/not-found"
cp good.der "$out/ocsp/staple-good"
cp ca.pem "$out/data/ocsp-ca.pem"
cp leaf.pem "$out/data/ocsp-leaf.pem"
