#!/usr/bin/env python3
"""bundle_payload.py MASTER_KEY_FILE BUNDLE OUT - writes the decrypted layer of a restore bundle.

The seeds of fuzz_bundle_plain are real bundles from `tlsmint backup`, opened here the way
cli_bundle_open does: "TMB1" | salt (16) | IV (12) | AES-256-GCM | tag (16), the key
HKDF-SHA256(master key, info "tlsmint backup v1 " + hex(salt)), the 32-byte header as AAD.
"""
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def main():
    mkf, bundle, out = sys.argv[1:4]
    raw = open(mkf, "rb").read()
    mk = raw if len(raw) == 32 else bytes.fromhex(raw.decode().strip())
    b = open(bundle, "rb").read()
    assert b[:4] == b"TMB1", "not a bundle"
    salt, iv = b[4:20], b[20:32]
    key = HKDF(hashes.SHA256(), 32, None, b"tlsmint backup v1 " + salt.hex().encode()).derive(mk)
    plain = AESGCM(key).decrypt(iv, b[32:], b[:32])
    open(out, "wb").write(plain)


if __name__ == "__main__":
    main()
