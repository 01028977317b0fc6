/* SPDX-License-Identifier: MIT */
/*
 * test_wire.c - unit tests for cc_wire.c: the shared-cache entry (encoding, HMAC, the checks
 * before a leaf from Redis is served) and the snapshot plaintext, with negative cases: every
 * single-bit flip, every truncation, one byte too many, a copy under another key, another CA,
 * a CA with the same name but another key, a pool index or key that is not ours, expired leaves;
 * and the sealing of a snapshot (px_seal) under another master key.
 * Owns its test PKI, made in memory per test (OpenSSL, EC P-256).
 * Not here: Redis itself and the whole proxy (tests/e2e/test_fleet.sh).
 */
#include "cc_int.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

Suite *wire_suite(void);

struct pki {
    EVP_PKEY *ca_key, *other_ca_key, *pool[2];
    X509 *ca, *other_ca;
    uint8_t ca_id[32], other_id[32];
    unsigned char *spki[2];
    int spki_len[2];
    struct cc_wire_ctx wc;
    uint8_t mac[32];
    uint8_t key[CC_KEY_LEN];
};

static EVP_PKEY *ec_key(void)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    ck_assert_ptr_nonnull(k);
    return k;
}

static X509 *make_cert(const char *cn, EVP_PKEY *subj_key, X509 *issuer, EVP_PKEY *issuer_key,
                       long not_after_s)
{
    X509 *x = X509_new();
    ck_assert_ptr_nonnull(x);
    ASN1_INTEGER_set(X509_get_serialNumber(x), (long)(rand() & 0x7fffffff));
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), not_after_s);
    X509_NAME *n = X509_NAME_new();
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_subject_name(x, n);
    X509_set_issuer_name(x, issuer != NULL ? X509_get_subject_name(issuer) : n);
    X509_NAME_free(n);
    X509_set_pubkey(x, subj_key);
    ck_assert_int_gt(X509_sign(x, issuer_key, EVP_sha256()), 0);
    return x;
}

static void cert_id(X509 *x, uint8_t out[32])
{
    unsigned char *der = NULL;
    int n = i2d_X509(x, &der);
    ck_assert_int_gt(n, 0);
    EVP_Digest(der, (size_t)n, out, NULL, EVP_sha256(), NULL);
    OPENSSL_free(der);
}

static void pki_init(struct pki *p)
{
    memset(p, 0, sizeof(*p));
    p->ca_key = ec_key();
    p->other_ca_key = ec_key();
    p->ca = make_cert("fleet CA", p->ca_key, NULL, p->ca_key, 86400 * 30);
    /* the same name as the fleet CA, another key: only the signature tells them apart */
    p->other_ca = make_cert("fleet CA", p->other_ca_key, NULL, p->other_ca_key, 86400 * 30);
    cert_id(p->ca, p->ca_id);
    cert_id(p->other_ca, p->other_id);
    for (int i = 0; i < 2; i++) {
        p->pool[i] = ec_key();
        p->spki_len[i] = i2d_PUBKEY(p->pool[i], &p->spki[i]);
        ck_assert_int_gt(p->spki_len[i], 0);
        p->wc.ec_spki[i] = p->spki[i];
        p->wc.ec_spki_len[i] = p->spki_len[i];
    }
    p->wc.ca_kind = CC_CA_TRUST;
    memcpy(p->wc.ca_id, p->ca_id, 32);
    p->wc.ca_name = X509_get_subject_name(p->ca);
    p->wc.ca_pub = p->ca_key;
    p->wc.nec = 2;
    p->wc.nrsa = 0;
    RAND_bytes(p->mac, sizeof(p->mac));
    RAND_bytes(p->key, 32);
    p->key[32] = CC_CA_TRUST;
    p->key[33] = CC_KEY_EC;
}

static void pki_fini(struct pki *p)
{
    EVP_PKEY_free(p->ca_key);
    EVP_PKEY_free(p->other_ca_key);
    X509_free(p->ca);
    X509_free(p->other_ca);
    for (int i = 0; i < 2; i++) {
        EVP_PKEY_free(p->pool[i]);
        OPENSSL_free(p->spki[i]);
    }
}

/* An entry for a leaf of pool key idx signed by signer (under the fleet CA's id). */
static void make_entry(struct pki *p, int idx, EVP_PKEY *signer, long life, uint8_t **val,
                       size_t *vlen)
{
    X509 *leaf = make_cert("h1.test", p->pool[idx], p->ca, signer, life);
    unsigned char *der = NULL;
    int n = i2d_X509(leaf, &der);
    struct cc_wire_entry w = {.key_kind = CC_KEY_EC, .pool_idx = (uint8_t)idx, .der = der,
                              .der_len = (uint32_t)n};
    memcpy(w.ca_id, p->ca_id, 32);
    ck_assert_int_eq(cc_wire_encode(p->mac, p->key, &w, val, vlen), 0);
    OPENSSL_free(der);
    X509_free(leaf);
}

/* Decodes and checks; returns the reason (or -1 when the leaf was accepted). */
static int verdict(struct pki *p, const uint8_t *key, const uint8_t *val, size_t vlen)
{
    struct cc_wire_entry w;
    enum cc_reject why = CC_REJ_FORMAT;
    if (cc_wire_decode(p->mac, key, val, vlen, &w, &why) != 0) {
        return (int)why;
    }
    X509 *x = cc_wire_check(&p->wc, key, &w, true, &why);
    if (x == NULL) {
        return (int)why;
    }
    X509_free(x);
    return -1;
}

START_TEST(test_entry_roundtrip)
{
    struct pki p;
    pki_init(&p);
    uint8_t *v = NULL;
    size_t n = 0;
    make_entry(&p, 1, p.ca_key, 86400, &v, &n);
    struct cc_wire_entry w;
    enum cc_reject why;
    ck_assert_int_eq(cc_wire_decode(p.mac, p.key, v, n, &w, &why), 0);
    ck_assert_int_eq(w.pool_idx, 1);
    ck_assert_int_eq(w.key_kind, CC_KEY_EC);
    ck_assert_mem_eq(w.ca_id, p.ca_id, 32);
    X509 *x = cc_wire_check(&p.wc, p.key, &w, true, &why);
    ck_assert_ptr_nonnull(x);
    ck_assert_int_eq(EVP_PKEY_eq(X509_get0_pubkey(x), p.pool[1]), 1);
    X509_free(x);
    /* no private key bytes in the value: only the leaf's public key */
    BIGNUM *d = NULL;
    uint8_t priv[32];
    ck_assert_int_eq(EVP_PKEY_get_bn_param(p.pool[1], "priv", &d), 1);
    ck_assert_int_eq(BN_bn2binpad(d, priv, sizeof(priv)), 32);
    BN_free(d);
    for (size_t i = 0; i + 32 <= n; i++) {
        ck_assert_int_ne(memcmp(v + i, priv, 32), 0);
    }
    free(v);
    pki_fini(&p);
}
END_TEST

START_TEST(test_entry_every_bit_flip)
{
    struct pki p;
    pki_init(&p);
    uint8_t *v = NULL;
    size_t n = 0;
    make_entry(&p, 0, p.ca_key, 86400, &v, &n);
    for (size_t i = 0; i < n; i++) {
        for (int b = 0; b < 8; b += 3) {
            v[i] ^= (uint8_t)(1u << b);
            int r = verdict(&p, p.key, v, n);
            ck_assert_msg(r == CC_REJ_HMAC || r == CC_REJ_FORMAT, "flip at %zu bit %d: %d", i,
                          b, r);
            v[i] ^= (uint8_t)(1u << b);
        }
    }
    ck_assert_int_eq(verdict(&p, p.key, v, n), -1);
    free(v);
    pki_fini(&p);
}
END_TEST

START_TEST(test_entry_truncated_and_long)
{
    struct pki p;
    pki_init(&p);
    uint8_t *v = NULL;
    size_t n = 0;
    make_entry(&p, 0, p.ca_key, 86400, &v, &n);
    for (size_t len = 0; len < n; len++) {
        ck_assert_int_eq(verdict(&p, p.key, v, len), CC_REJ_FORMAT);
    }
    uint8_t *longer = malloc(n + 1);
    memcpy(longer, v, n);
    longer[n] = 0;
    ck_assert_int_eq(verdict(&p, p.key, longer, n + 1), CC_REJ_FORMAT); /* 101 into 100 */
    free(longer);
    free(v);
    pki_fini(&p);
}
END_TEST

START_TEST(test_entry_other_key_or_mac_key)
{
    struct pki p;
    pki_init(&p);
    uint8_t *v = NULL;
    size_t n = 0;
    make_entry(&p, 0, p.ca_key, 86400, &v, &n);
    uint8_t other[CC_KEY_LEN];
    memcpy(other, p.key, CC_KEY_LEN);
    other[7] ^= 1; /* another upstream certificate: a copy under its key must fail */
    ck_assert_int_eq(verdict(&p, other, v, n), CC_REJ_HMAC);
    memcpy(other, p.key, CC_KEY_LEN);
    other[33] = CC_KEY_RSA;
    ck_assert_int_eq(verdict(&p, other, v, n), CC_REJ_HMAC);
    p.mac[0] ^= 1; /* another fleet's master key */
    ck_assert_int_eq(verdict(&p, p.key, v, n), CC_REJ_HMAC);
    free(v);
    pki_fini(&p);
}
END_TEST

START_TEST(test_entry_checks)
{
    struct pki p;
    pki_init(&p);
    uint8_t *v = NULL;
    size_t n = 0;
    /* signed by a CA with the same name but another key, under the fleet CA's id */
    make_entry(&p, 0, p.other_ca_key, 86400, &v, &n);
    ck_assert_int_eq(verdict(&p, p.key, v, n), CC_REJ_VERIFY);
    free(v);
    /* expired */
    make_entry(&p, 0, p.ca_key, -60, &v, &n);
    ck_assert_int_eq(verdict(&p, p.key, v, n), CC_REJ_EXPIRED);
    free(v);
    /* another CA named in the entry */
    memcpy(p.wc.ca_id, p.other_id, 32);
    make_entry(&p, 0, p.ca_key, 86400, &v, &n);
    ck_assert_int_eq(verdict(&p, p.key, v, n), CC_REJ_CA);
    memcpy(p.wc.ca_id, p.ca_id, 32);
    ck_assert_int_eq(verdict(&p, p.key, v, n), -1);
    free(v);
    /* the pool index names a key that is not the leaf's, or none at all */
    X509 *leaf = make_cert("h1.test", p.pool[0], p.ca, p.ca_key, 86400);
    unsigned char *der = NULL;
    int dl = i2d_X509(leaf, &der);
    struct cc_wire_entry w = {.key_kind = CC_KEY_EC, .pool_idx = 1, .der = der,
                              .der_len = (uint32_t)dl};
    memcpy(w.ca_id, p.ca_id, 32);
    enum cc_reject why;
    ck_assert_ptr_null(cc_wire_check(&p.wc, p.key, &w, true, &why));
    ck_assert_int_eq(why, CC_REJ_KEY);
    w.pool_idx = 2;
    ck_assert_ptr_null(cc_wire_check(&p.wc, p.key, &w, true, &why));
    ck_assert_int_eq(why, CC_REJ_KEY);
    /* an RSA cache key for an EC entry, an untrust key for the trust CA */
    w.pool_idx = 0;
    uint8_t k2[CC_KEY_LEN];
    memcpy(k2, p.key, CC_KEY_LEN);
    k2[32] = CC_CA_UNTRUST;
    ck_assert_ptr_null(cc_wire_check(&p.wc, k2, &w, true, &why));
    ck_assert_int_eq(why, CC_REJ_FORMAT);
    /* garbage instead of DER */
    uint8_t junk[64];
    memset(junk, 0x30, sizeof(junk));
    w.der = junk;
    w.der_len = sizeof(junk);
    ck_assert_ptr_null(cc_wire_check(&p.wc, p.key, &w, true, &why));
    ck_assert_int_eq(why, CC_REJ_FORMAT);
    /* the DER of the leaf plus one byte */
    uint8_t *plus = malloc((size_t)dl + 1);
    memcpy(plus, der, (size_t)dl);
    plus[dl] = 0;
    w.der = plus;
    w.der_len = (uint32_t)dl + 1;
    ck_assert_ptr_null(cc_wire_check(&p.wc, p.key, &w, true, &why));
    free(plus);
    OPENSSL_free(der);
    X509_free(leaf);
    /* encoding refuses what decoding would refuse */
    uint8_t *out = NULL;
    size_t ol = 0;
    struct cc_wire_entry big = {.der = junk, .der_len = CC_WIRE_DER_MAX + 1};
    ck_assert_int_eq(cc_wire_encode(p.mac, p.key, &big, &out, &ol), PX_E_INVAL);
    pki_fini(&p);
}
END_TEST

struct seen {
    int n;
    uint8_t idx[8];
    int64_t exp[8];
    uint32_t len[8];
};

static void on_rec(void *user, const uint8_t key[CC_KEY_LEN], const struct cc_wire_entry *w,
                   int64_t exp)
{
    struct seen *s = user;
    ck_assert_int_lt(s->n, 8);
    ck_assert_int_eq(key[0], s->n);
    ck_assert_int_eq(w->key_kind, key[33]);
    s->idx[s->n] = w->pool_idx;
    s->exp[s->n] = exp;
    s->len[s->n] = w->der_len;
    s->n++;
}

static void snap3(struct cc_snap_buf *b)
{
    ck_assert_int_eq(cc_snap_buf_init(b), 0);
    uint8_t der[3000];
    memset(der, 0xab, sizeof(der));
    for (int i = 0; i < 3; i++) {
        uint8_t key[CC_KEY_LEN] = {(uint8_t)i};
        key[33] = (uint8_t)(i == 2 ? CC_KEY_RSA : CC_KEY_EC);
        struct cc_wire_entry w = {.key_kind = key[33], .pool_idx = (uint8_t)(i + 4), .der = der,
                                  .der_len = (uint32_t)(1000 * (i + 1))};
        ck_assert_int_eq(cc_snap_buf_add(b, key, &w, 1700000000 + i), 0);
    }
}

START_TEST(test_snap_roundtrip)
{
    struct cc_snap_buf b;
    snap3(&b);
    struct seen s = {0};
    ck_assert_int_eq(cc_snap_parse(b.p, b.len, on_rec, &s), 3);
    ck_assert_int_eq(s.n, 3);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(s.idx[i], i + 4);
        ck_assert_int_eq(s.exp[i], 1700000000 + i);
        ck_assert_uint_eq(s.len[i], 1000u * (uint32_t)(i + 1));
    }
    cc_snap_buf_fini(&b);
    ck_assert_int_eq(cc_snap_buf_init(&b), 0); /* an empty cache is a valid snapshot */
    ck_assert_int_eq(cc_snap_parse(b.p, b.len, on_rec, &s), 0);
    cc_snap_buf_fini(&b);
}
END_TEST

START_TEST(test_snap_truncated_long_and_lying)
{
    struct cc_snap_buf b;
    snap3(&b);
    struct seen s = {0};
    for (size_t len = 0; len < b.len; len++) {
        ck_assert_int_lt(cc_snap_parse(b.p, len, on_rec, &s), 0);
    }
    ck_assert_int_eq(s.n, 0); /* nothing handed out from a broken buffer */
    uint8_t *longer = malloc(b.len + 1);
    memcpy(longer, b.p, b.len);
    longer[b.len] = 0;
    ck_assert_int_lt(cc_snap_parse(longer, b.len + 1, on_rec, &s), 0);
    longer[8]++; /* count says 4, three records follow */
    ck_assert_int_lt(cc_snap_parse(longer, b.len, on_rec, &s), 0);
    longer[8] -= 2; /* count says 2: bytes left over */
    ck_assert_int_lt(cc_snap_parse(longer, b.len, on_rec, &s), 0);
    longer[8]++;
    longer[4] = 2; /* a future version */
    ck_assert_int_lt(cc_snap_parse(longer, b.len, on_rec, &s), 0);
    ck_assert_int_eq(s.n, 0);
    free(longer);
    cc_snap_buf_fini(&b);
}
END_TEST

START_TEST(test_snap_sealed)
{
    struct cc_snap_buf b;
    snap3(&b);
    uint8_t k1[32], k2[32], mk[32];
    RAND_bytes(mk, sizeof(mk));
    ck_assert_int_eq(px_hkdf(mk, "tlsmint cache-snapshot v1", k1), 0);
    ck_assert_int_eq(px_hkdf(mk, "tlsmint shared-cache hmac v1", k2), 0);
    ck_assert_int_ne(memcmp(k1, k2, 32), 0); /* each use its own key */
    uint8_t *sealed = NULL, *pt = NULL;
    size_t sl = 0, pl = 0;
    ck_assert_int_eq(px_seal(k1, "cache-snapshot", b.p, b.len, &sealed, &sl), 0);
    ck_assert_int_eq(px_unseal(k1, "cache-snapshot", sealed, sl, &pt, &pl), 0);
    ck_assert_uint_eq(pl, b.len);
    ck_assert_mem_eq(pt, b.p, pl);
    free(pt);
    ck_assert_int_eq(px_unseal(k2, "cache-snapshot", sealed, sl, &pt, &pl), PX_E_CRYPTO);
    ck_assert_int_eq(px_unseal(k1, "leaf-key-pool", sealed, sl, &pt, &pl), PX_E_PROTO);
    sealed[sl / 2] ^= 1;
    ck_assert_int_eq(px_unseal(k1, "cache-snapshot", sealed, sl, &pt, &pl), PX_E_CRYPTO);
    sealed[sl / 2] ^= 1;
    ck_assert_int_ne(px_unseal(k1, "cache-snapshot", sealed, sl - 1, &pt, &pl), 0);
    free(sealed);
    cc_snap_buf_fini(&b);
}
END_TEST

Suite *wire_suite(void)
{
    Suite *s = suite_create("wire");
    TCase *t = tcase_create("entry");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, test_entry_roundtrip);
    tcase_add_test(t, test_entry_every_bit_flip);
    tcase_add_test(t, test_entry_truncated_and_long);
    tcase_add_test(t, test_entry_other_key_or_mac_key);
    tcase_add_test(t, test_entry_checks);
    suite_add_tcase(s, t);
    t = tcase_create("snapshot");
    tcase_add_test(t, test_snap_roundtrip);
    tcase_add_test(t, test_snap_truncated_long_and_lying);
    tcase_add_test(t, test_snap_sealed);
    suite_add_tcase(s, t);
    return s;
}
