/* SPDX-License-Identifier: MIT */
/*
 * fuzz_mint.c - libFuzzer target: arbitrary DER as the upstream leaf certificate.
 * Target functions: cc_mint_build (certcache/cc_mint.c: CN and SAN copying, dns_like, the IP
 * CN conversion, validity clamping, cc_x509_set_sigalg, cc_x509_tbs_digest), then the software
 * CA's signature and the DER encoding the dataplane sends, as cc_cache.c does for the
 * forward-untrust CA. No HSM: the TBS digest is where the HSM path would take over.
 * Checks: no crash or leak; a minted leaf's notAfter is never after the upstream's, nor after
 * now + leaf_max_days, nor after the signing CA's not_after; it carries only DNS and IP names,
 * at least one; it encodes to DER.
 * Deterministic apart from the random serial (not looked at).
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>

#include "cc_int.h"
#include "fuzz_common.h"

#define MAX_DAYS 30

static struct cc_ca g_ca[2]; /* ECDSA-SHA256 and ECDSA-SHA384 leaves */
static struct cc_fixed_ext g_fx;
static struct cc_leaf_key g_key[2]; /* EC, RSA */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char err[256];
    EVP_PKEY *k = fz_ec_key();
    X509 *ca = fz_ca_cert(k, "tlsmint fuzz untrust CA");
    for (int i = 0; i < 2; i++) {
        struct cc_ca *c = &g_ca[i];
        c->cert = ca;
        c->name = X509_get_subject_name(ca);
        c->soft_key = k;
        c->alg = i == 0 ? HSM_ALG_ECDSA_SHA256 : HSM_ALG_ECDSA_SHA384;
        /* the second CA (or its chain) ends in a week: leaves are clamped to it */
        c->not_after = i == 0 ? 0 : time(NULL) + 7 * 86400;
        AUTHORITY_KEYID *akid = AUTHORITY_KEYID_new();
        akid->keyid = ASN1_OCTET_STRING_dup(X509_get0_subject_key_id(ca));
        c->aki = X509V3_EXT_i2d(NID_authority_key_identifier, 0, akid);
        AUTHORITY_KEYID_free(akid);
    }
    if (cc_fixed_ext_init(&g_fx) != 0 || cc_keys_make(&g_key[0], 1, CC_KEY_EC, err, sizeof(err)) ||
        cc_keys_make(&g_key[1], 1, CC_KEY_RSA, err, sizeof(err)) != 0) {
        abort();
    }
    return 0;
}

static time_t t_of(const ASN1_TIME *t)
{
    struct tm tm;
    return ASN1_TIME_to_tm(t, &tm) == 1 ? timegm(&tm) : 0;
}

static void check_leaf(X509 *leaf, X509 *up, const struct cc_ca *ca)
{
    time_t na = t_of(X509_get0_notAfter(leaf));
    time_t up_na = t_of(X509_get0_notAfter(up));
    if (na == 0 || na > up_na || na > time(NULL) + (time_t)MAX_DAYS * 86400 ||
        (ca->not_after != 0 && na > ca->not_after)) {
        abort();
    }
    GENERAL_NAMES *sans = X509_get_ext_d2i(leaf, NID_subject_alt_name, NULL, NULL);
    if (sans == NULL || sk_GENERAL_NAME_num(sans) == 0) {
        abort();
    }
    for (int i = 0; i < sk_GENERAL_NAME_num(sans); i++) {
        int t = sk_GENERAL_NAME_value(sans, i)->type;
        if (t != GEN_DNS && t != GEN_IPADD) {
            abort();
        }
    }
    GENERAL_NAMES_free(sans);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 64 * 1024) {
        return 0;
    }
    uint8_t *buf = fz_dup(data, size);
    const unsigned char *p = buf;
    X509 *up = d2i_X509(NULL, &p, (long)size);
    if (up != NULL) {
        /* the key kind and the CA's digest come from the input's length, so one seed tries
         * every combination as it grows or shrinks */
        const struct cc_ca *ca = &g_ca[(size >> 1) & 1];
        const struct cc_leaf_key *key = &g_key[size & 1];
        uint8_t digest[64];
        int dlen = 0;
        const char *why = NULL;
        X509 *leaf = cc_mint_build(ca, &g_fx, key, up, MAX_DAYS, digest, &dlen, &why);
        if (leaf != NULL) {
            if (why != NULL || (dlen != 32 && dlen != 48)) {
                abort();
            }
            if (X509_sign(leaf, ca->soft_key, EVP_sha256()) <= 0) { /* as cc_cache.c */
                abort();
            }
            unsigned char *der = NULL;
            int dl = i2d_X509(leaf, &der);
            if (dl <= 0) {
                abort();
            }
            OPENSSL_free(der);
            check_leaf(leaf, up, ca);
            X509_free(leaf);
        } else if (why == NULL) {
            abort();
        }
        X509_free(up);
    }
    ERR_clear_error();
    free(buf);
    return 0;
}
