/* SPDX-License-Identifier: MIT */
/*
 * cc_mint.c - building a leaf certificate for an upstream certificate.
 * Owns nothing beyond the X509 it returns. Called on loop threads, outside any cache lock.
 * Invariants: every name in a leaf comes from the upstream leaf certificate (CN and SAN DNS/IP
 * entries), never from bytes a client sent; notAfter <= upstream notAfter, <= now + max_days
 * and <= the notAfter of the signing CA and of every certificate in its chain;
 * serials are 128 random bits, positive.
 * Cost: about 35-40 us per leaf with the legacy-backed pool keys (OPENSSL-NOTES.md); the one
 * signature is made elsewhere (HSM) or in cc_cache.c (software CA).
 * Not here: caching, the signature itself.
 */
#include "cc_int.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

int cc_x509_set_sigalg(X509 *x, enum hsm_alg alg)
{
    int nid, ptype = V_ASN1_UNDEF;
    switch (alg) {
    case HSM_ALG_ECDSA_SHA256:
        nid = NID_ecdsa_with_SHA256;
        break;
    case HSM_ALG_ECDSA_SHA384:
        nid = NID_ecdsa_with_SHA384;
        break;
    case HSM_ALG_RSA_PKCS1_SHA256:
        nid = NID_sha256WithRSAEncryption;
        ptype = V_ASN1_NULL;
        break;
    default:
        return PX_E_INVAL;
    }
    /* OpenSSL 3.0 has no setter for the TBS signature algorithm (OPENSSL-NOTES.md) */
    X509_ALGOR *tbs_alg = (X509_ALGOR *)X509_get0_tbs_sigalg(x);
    const ASN1_BIT_STRING *sig;
    const X509_ALGOR *outer;
    X509_get0_signature(&sig, &outer, x);
    if (X509_ALGOR_set0(tbs_alg, OBJ_nid2obj(nid), ptype, NULL) != 1 ||
        X509_ALGOR_set0((X509_ALGOR *)outer, OBJ_nid2obj(nid), ptype, NULL) != 1) {
        return PX_E_CRYPTO;
    }
    return 0;
}

int cc_x509_set_signature(X509 *x, const uint8_t *sig, size_t len)
{
    const ASN1_BIT_STRING *csig;
    const X509_ALGOR *alg;
    X509_get0_signature(&csig, &alg, x);
    ASN1_BIT_STRING *bs = (ASN1_BIT_STRING *)csig;
    if (ASN1_BIT_STRING_set(bs, (unsigned char *)sig, (int)len) != 1) {
        return PX_E_CRYPTO;
    }
    /* say "0 unused bits" explicitly, or the encoding is corrupt when the last byte is even */
    bs->flags &= ~(ASN1_STRING_FLAG_BITS_LEFT | 0x07);
    bs->flags |= ASN1_STRING_FLAG_BITS_LEFT;
    return 0;
}

/*
 * OpenSSL 3.0 fetches the implementation of EVP_sha256() by name on every EVP_Digest (name
 * compares, a global rwlock, allocations): fetch SHA-256 and SHA-384 once for the process.
 */
static pthread_once_t g_md_once = PTHREAD_ONCE_INIT;
static EVP_MD *g_sha256, *g_sha384;

static void md_fetch(void)
{
    g_sha256 = EVP_MD_fetch(NULL, "SHA2-256", NULL);
    g_sha384 = EVP_MD_fetch(NULL, "SHA2-384", NULL);
}

const EVP_MD *cc_md_sha256(void)
{
    pthread_once(&g_md_once, md_fetch);
    return g_sha256 != NULL ? g_sha256 : EVP_sha256();
}

static const EVP_MD *md_sha384(void)
{
    pthread_once(&g_md_once, md_fetch);
    return g_sha384 != NULL ? g_sha384 : EVP_sha384();
}

int cc_x509_tbs_digest(X509 *x, enum hsm_alg alg, uint8_t *out)
{
    unsigned char *tbs = NULL;
    int tlen = i2d_re_X509_tbs(x, &tbs);
    if (tlen <= 0) {
        return PX_E_CRYPTO;
    }
    unsigned int dlen = 0;
    const EVP_MD *md = alg == HSM_ALG_ECDSA_SHA384 ? md_sha384() : cc_md_sha256();
    int ok = EVP_Digest(tbs, (size_t)tlen, out, &dlen, md, NULL);
    OPENSSL_free(tbs);
    return ok == 1 ? (int)dlen : PX_E_CRYPTO;
}

static time_t asn1_to_time(const ASN1_TIME *t)
{
    struct tm tm;
    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1) {
        return 0;
    }
    return timegm(&tm);
}

/* A CN usable as a dNSName: printable ASCII host-name characters only. */
static bool dns_like(const unsigned char *s, int len)
{
    if (len <= 0 || len > 253) {
        return false;
    }
    for (int i = 0; i < len; i++) {
        unsigned char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.' || c == '*' || c == '_')) {
            return false;
        }
    }
    return true;
}

/* SAN for the leaf: the upstream's DNS and IP entries; or its CN when it has none. */
static GENERAL_NAMES *leaf_sans(X509 *up, const ASN1_STRING *cn, const char **why)
{
    GENERAL_NAMES *out = sk_GENERAL_NAME_new_null();
    GENERAL_NAMES *in = X509_get_ext_d2i(up, NID_subject_alt_name, NULL, NULL);
    if (out == NULL) {
        GENERAL_NAMES_free(in);
        *why = "out of memory";
        return NULL;
    }
    for (int i = 0; in != NULL && i < sk_GENERAL_NAME_num(in); i++) {
        GENERAL_NAME *g = sk_GENERAL_NAME_value(in, i);
        if (g->type != GEN_DNS && g->type != GEN_IPADD) {
            continue; /* email, URI, otherName ... are not server names */
        }
        if (sk_GENERAL_NAME_num(out) >= 1000) {
            break;
        }
        GENERAL_NAME *d = GENERAL_NAME_dup(g);
        if (d == NULL || sk_GENERAL_NAME_push(out, d) <= 0) {
            GENERAL_NAME_free(d);
            break;
        }
    }
    GENERAL_NAMES_free(in);
    if (sk_GENERAL_NAME_num(out) == 0 && cn != NULL) {
        const unsigned char *s = ASN1_STRING_get0_data(cn);
        int len = ASN1_STRING_length(cn);
        char buf[256];
        unsigned char ip[16];
        GENERAL_NAME *g = NULL;
        if (len > 0 && len < (int)sizeof(buf)) {
            memcpy(buf, s, (size_t)len);
            buf[len] = '\0';
        } else {
            buf[0] = '\0';
        }
        if (buf[0] && (inet_pton(AF_INET, buf, ip) == 1 || inet_pton(AF_INET6, buf, ip) == 1)) {
            int iplen = strchr(buf, ':') ? 16 : 4;
            ASN1_OCTET_STRING *os = ASN1_OCTET_STRING_new();
            if (os != NULL && ASN1_OCTET_STRING_set(os, ip, iplen) == 1 &&
                (g = GENERAL_NAME_new()) != NULL) {
                GENERAL_NAME_set0_value(g, GEN_IPADD, os);
                os = NULL;
            }
            ASN1_OCTET_STRING_free(os);
        } else if (dns_like(s, len)) {
            ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
            if (ia5 != NULL && ASN1_STRING_set(ia5, s, len) == 1 &&
                (g = GENERAL_NAME_new()) != NULL) {
                GENERAL_NAME_set0_value(g, GEN_DNS, ia5);
                ia5 = NULL;
            }
            ASN1_IA5STRING_free(ia5);
        }
        if (g != NULL && sk_GENERAL_NAME_push(out, g) <= 0) {
            GENERAL_NAME_free(g);
        }
    }
    if (sk_GENERAL_NAME_num(out) == 0) {
        GENERAL_NAMES_free(out);
        *why = "upstream certificate carries no DNS or IP name (no SAN, no usable CN)";
        return NULL;
    }
    return out;
}

X509 *cc_mint_build(const struct cc_ca *ca, const struct cc_fixed_ext *fx,
                    const struct cc_leaf_key *key, X509 *up, int max_days, uint8_t *digest,
                    int *dlen, const char **why)
{
    X509 *x = X509_new();
    X509 *ret = NULL;
    X509_NAME *subj = X509_NAME_new();
    GENERAL_NAMES *sans = NULL;
    *why = "out of memory";
    if (x == NULL || subj == NULL) {
        goto out;
    }

    /* names: CN (if it fits X.509's 64-character limit) and SANs, all from the upstream leaf */
    const ASN1_STRING *cn = NULL;
    X509_NAME *upn = X509_get_subject_name(up);
    int idx = X509_NAME_get_index_by_NID(upn, NID_commonName, -1), last = -1;
    while (idx >= 0) {
        last = idx;
        idx = X509_NAME_get_index_by_NID(upn, NID_commonName, idx);
    }
    if (last >= 0) {
        cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(upn, last));
    }
    sans = leaf_sans(up, cn, why);
    if (sans == NULL) {
        goto out;
    }
    bool cn_in_subject = cn != NULL && ASN1_STRING_length(cn) > 0 && ASN1_STRING_length(cn) <= 64;
    if (cn_in_subject &&
        X509_NAME_add_entry_by_NID(subj, NID_commonName, ASN1_STRING_type(cn),
                                   ASN1_STRING_get0_data(cn), ASN1_STRING_length(cn), -1,
                                   0) != 1) {
        *why = "upstream CN cannot be copied";
        goto out;
    }

    /* validity: mirror the upstream's, never longer than max_days from now */
    time_t now = time(NULL);
    time_t up_nb = asn1_to_time(X509_get0_notBefore(up));
    time_t up_na = asn1_to_time(X509_get0_notAfter(up));
    if (up_na == 0 || up_nb == 0) {
        *why = "upstream certificate has an unreadable validity period";
        goto out;
    }
    time_t na = now + (time_t)max_days * 86400;
    if (up_na < na) {
        na = up_na;
    }
    if (ca->not_after != 0 && ca->not_after < na) {
        na = ca->not_after; /* a leaf never outlives the CA that signs it, nor its chain */
    }
    time_t nb = now - 3600;
    if (up_nb > now) {
        nb = up_nb; /* not yet valid upstream: so is the leaf */
    }
    if (up_nb > now && up_nb >= na) {
        /* valid only after leaf_max_days: any leaf would start before the upstream does */
        *why = "upstream certificate becomes valid only after [ca] leaf_max_days";
        goto out;
    }
    if (nb >= na) {
        nb = up_nb < na ? up_nb : na - 1; /* expired upstream: the leaf is expired too */
    }

    uint8_t serial[16];
    if (RAND_bytes(serial, sizeof(serial)) != 1) {
        goto out;
    }
    serial[0] = (uint8_t)((serial[0] & 0x7f) | 0x40); /* positive, always 16 bytes */
    if (X509_set_version(x, 2) != 1 ||
        ASN1_STRING_set(X509_get_serialNumber(x), serial, sizeof(serial)) != 1 ||
        X509_set_issuer_name(x, ca->name) != 1 || X509_set_subject_name(x, subj) != 1 ||
        ASN1_TIME_set(X509_getm_notBefore(x), nb) == NULL ||
        ASN1_TIME_set(X509_getm_notAfter(x), na) == NULL || X509_set_pubkey(x, key->pkey) != 1) {
        goto out;
    }
    if (X509_add_ext(x, fx->bc, -1) != 1 ||
        X509_add_ext(x, key->kind == CC_KEY_RSA ? fx->ku_rsa : fx->ku_ec, -1) != 1 ||
        X509_add_ext(x, fx->eku, -1) != 1 || X509_add_ext(x, key->ski, -1) != 1 ||
        (ca->aki != NULL && X509_add_ext(x, ca->aki, -1) != 1) ||
        X509_add1_ext_i2d(x, NID_subject_alt_name, sans, cn_in_subject ? 0 : 1,
                          X509V3_ADD_DEFAULT) != 1) {
        goto out;
    }
    if (cc_x509_set_sigalg(x, ca->alg) != 0) {
        goto out;
    }
    int n = cc_x509_tbs_digest(x, ca->alg, digest);
    if (n < 0) {
        goto out;
    }
    *dlen = n;
    *why = NULL;
    ret = x;
    x = NULL;
out:
    X509_free(x);
    X509_NAME_free(subj);
    GENERAL_NAMES_free(sans);
    return ret;
}
