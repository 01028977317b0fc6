/* SPDX-License-Identifier: MIT */
/*
 * fuzz_common.h - what several fuzz targets share: the test master key the seed bundles and
 * sealed files in tests/fuzz/corpus/ were made with, a software CA for minting, and a heap copy
 * of the input so AddressSanitizer sees any read past its end.
 */
#ifndef FUZZ_COMMON_H
#define FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* 00 01 02 ... 1f: the --master-key-file the corpus was made with (tests/fuzz/mkseeds.sh). */
extern const uint8_t fz_mk[32];

/* An exact-size heap copy of data (size 0 gives a 1-byte buffer); aborts when out of memory. */
uint8_t *fz_dup(const uint8_t *data, size_t size);
/* A fresh EC P-256 key (aborts on failure). */
EVP_PKEY *fz_ec_key(void);
/* A self-signed CA certificate for key (CA:TRUE, keyCertSign, SKI), subject CN=cn. */
X509 *fz_ca_cert(EVP_PKEY *key, const char *cn);

#endif
