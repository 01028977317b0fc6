/* SPDX-License-Identifier: MIT */
/*
 * fuzz_common.c - helpers shared by the fuzz targets (see fuzz_common.h). Set-up only: nothing
 * here is on the path being fuzzed.
 */
#include "fuzz_common.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/ec.h>
#include <openssl/x509v3.h>

const uint8_t fz_mk[32] = {0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a,
                           0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15,
                           0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f};

uint8_t *fz_dup(const uint8_t *data, size_t size)
{
    uint8_t *b = malloc(size ? size : 1);
    if (b == NULL) {
        abort();
    }
    if (size) {
        memcpy(b, data, size);
    }
    return b;
}

EVP_PKEY *fz_ec_key(void)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    if (k == NULL) {
        abort();
    }
    return k;
}

static void add_ext(X509 *x, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (e == NULL || X509_add_ext(x, e, -1) != 1) {
        abort();
    }
    X509_EXTENSION_free(e);
}

X509 *fz_ca_cert(EVP_PKEY *key, const char *cn)
{
    X509 *x = X509_new();
    if (x == NULL || X509_set_version(x, 2) != 1 ||
        ASN1_INTEGER_set(X509_get_serialNumber(x), 1) != 1 ||
        X509_gmtime_adj(X509_getm_notBefore(x), -86400) == NULL ||
        X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 3650) == NULL ||
        X509_set_pubkey(x, key) != 1) {
        abort();
    }
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, n);
    add_ext(x, NID_basic_constraints, "critical,CA:TRUE");
    add_ext(x, NID_key_usage, "critical,keyCertSign,cRLSign");
    add_ext(x, NID_subject_key_identifier, "hash");
    if (X509_sign(x, key, EVP_sha256()) <= 0) {
        abort();
    }
    return x;
}
