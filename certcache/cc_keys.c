/* SPDX-License-Identifier: MIT */
/*
 * cc_keys.c - the leaf-key pool and the CAs minting signs with.
 * Owns the pool's EVP_PKEYs (made at start-up, never on the minting path) and the CA objects.
 * Called once at start-up; read-only afterwards from every loop thread.
 * The pool keys are legacy EC_KEY/RSA-backed on purpose: OpenSSL 3.0 builds an encoder for every
 * provider-key X509_set_pubkey (~370 us); a legacy key takes ~7 us (OPENSSL-NOTES.md). That is the
 * only reason for the deprecated calls in this file.
 * Not here: keeping the pool across restarts (encrypted state: the master-key issue).
 */
#define OPENSSL_SUPPRESS_DEPRECATED
#include "cc_int.h"

#include <stdio.h>
#include <string.h>

#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

static X509_EXTENSION *make_ext(int nid, const char *value, X509 *subject, X509 *issuer)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, subject, NULL, NULL, 0);
    return X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
}

/* subjectKeyIdentifier: SHA-1 of the subjectPublicKey BIT STRING (RFC 5280 method 1). */
static X509_EXTENSION *ski_for(EVP_PKEY *k)
{
    X509_PUBKEY *xpk = NULL;
    X509_EXTENSION *ext = NULL;
    ASN1_OCTET_STRING *os = NULL;
    const unsigned char *pk;
    int pklen;
    unsigned char md[20];
    if (X509_PUBKEY_set(&xpk, k) != 1 ||
        X509_PUBKEY_get0_param(NULL, &pk, &pklen, NULL, xpk) != 1 ||
        EVP_Digest(pk, (size_t)pklen, md, NULL, EVP_sha1(), NULL) != 1) {
        goto out;
    }
    os = ASN1_OCTET_STRING_new();
    if (os == NULL || ASN1_OCTET_STRING_set(os, md, sizeof(md)) != 1) {
        goto out;
    }
    ext = X509V3_EXT_i2d(NID_subject_key_identifier, 0, os);
out:
    ASN1_OCTET_STRING_free(os);
    X509_PUBKEY_free(xpk);
    return ext;
}

int cc_keys_make(struct cc_leaf_key *keys, int n, enum cc_key_kind kind, char *err, size_t errlen)
{
    for (int i = 0; i < n; i++) {
        EVP_PKEY *pk = EVP_PKEY_new();
        int ok = 0;
        if (kind == CC_KEY_EC) {
            EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
            ok = ec != NULL && EC_KEY_generate_key(ec) == 1 && pk != NULL &&
                 EVP_PKEY_set1_EC_KEY(pk, ec) == 1;
            EC_KEY_free(ec);
        } else {
            RSA *rsa = RSA_new();
            BIGNUM *e = BN_new();
            ok = rsa != NULL && e != NULL && BN_set_word(e, RSA_F4) == 1 &&
                 RSA_generate_key_ex(rsa, 2048, e, NULL) == 1 && pk != NULL &&
                 EVP_PKEY_set1_RSA(pk, rsa) == 1;
            RSA_free(rsa);
            BN_free(e);
        }
        keys[i].pkey = pk;
        keys[i].kind = kind;
        keys[i].ski = ok ? ski_for(pk) : NULL;
        if (!ok || keys[i].ski == NULL) {
            px_log_ossl_errors("cc_keys_make");
            snprintf(err, errlen, "cannot generate %s leaf key %d",
                     kind == CC_KEY_EC ? "EC P-256" : "RSA-2048", i);
            cc_keys_free(keys, i + 1);
            return PX_E_CRYPTO;
        }
    }
    return 0;
}

void cc_keys_free(struct cc_leaf_key *keys, int n)
{
    for (int i = 0; i < n; i++) {
        EVP_PKEY_free(keys[i].pkey);
        X509_EXTENSION_free(keys[i].ski);
        keys[i].pkey = NULL;
        keys[i].ski = NULL;
    }
}

int cc_fixed_ext_init(struct cc_fixed_ext *fx)
{
    fx->bc = make_ext(NID_basic_constraints, "critical,CA:FALSE", NULL, NULL);
    fx->ku_ec = make_ext(NID_key_usage, "critical,digitalSignature", NULL, NULL);
    fx->ku_rsa = make_ext(NID_key_usage, "critical,digitalSignature,keyEncipherment", NULL, NULL);
    fx->eku = make_ext(NID_ext_key_usage, "serverAuth", NULL, NULL);
    if (fx->bc == NULL || fx->ku_ec == NULL || fx->ku_rsa == NULL || fx->eku == NULL) {
        cc_fixed_ext_fini(fx);
        return PX_E_CRYPTO;
    }
    return 0;
}

void cc_fixed_ext_fini(struct cc_fixed_ext *fx)
{
    X509_EXTENSION_free(fx->bc);
    X509_EXTENSION_free(fx->ku_ec);
    X509_EXTENSION_free(fx->ku_rsa);
    X509_EXTENSION_free(fx->eku);
    memset(fx, 0, sizeof(*fx));
}

static X509 *read_cert(const char *path, char *err, size_t errlen, const char *what)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, errlen, "[ca] %s: cannot open %s", what, path);
        return NULL;
    }
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (x == NULL) {
        snprintf(err, errlen, "[ca] %s: %s is not a PEM certificate", what, path);
        return NULL;
    }
    return x;
}

/* Common part: name, AKI, is-a-CA checks. */
static int ca_common(struct cc_ca *ca, char *err, size_t errlen, const char *what)
{
    if (X509_check_ca(ca->cert) != 1 || !(X509_get_key_usage(ca->cert) & KU_KEY_CERT_SIGN)) {
        snprintf(err, errlen, "[ca] %s is not a CA certificate (basicConstraints CA:TRUE and "
                 "keyUsage keyCertSign are required)", what);
        return PX_E_CONFIG;
    }
    ca->name = X509_NAME_dup(X509_get_subject_name(ca->cert));
    const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(ca->cert);
    if (ski != NULL) {
        AUTHORITY_KEYID *akid = AUTHORITY_KEYID_new();
        if (akid != NULL) {
            akid->keyid = ASN1_OCTET_STRING_dup(ski);
            ca->aki = X509V3_EXT_i2d(NID_authority_key_identifier, 0, akid);
            AUTHORITY_KEYID_free(akid);
        }
    }
    if (ca->name == NULL || (ski != NULL && ca->aki == NULL)) {
        snprintf(err, errlen, "[ca] %s: out of memory", what);
        return PX_E_CRYPTO;
    }
    return 0;
}

/* Lowers ca->not_after to x's notAfter (0 = not set yet). */
static void ca_cap_not_after(struct cc_ca *ca, const X509 *x)
{
    struct tm tm;
    if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) != 1) {
        return;
    }
    time_t na = timegm(&tm);
    if (ca->not_after == 0 || na < ca->not_after) {
        ca->not_after = na;
    }
}

static int load_chain(struct cc_ca *ca, const char *path, char *err, size_t errlen)
{
    ca->chain = sk_X509_new_null();
    if (ca->chain == NULL) {
        return PX_E_CRYPTO;
    }
    if (path == NULL || path[0] == '\0') {
        return 0;
    }
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, errlen, "[ca] forward_trust_chain: cannot open %s", path);
        return PX_E_CONFIG;
    }
    X509 *x;
    while ((x = PEM_read_X509(f, NULL, NULL, NULL)) != NULL) {
        ca_cap_not_after(ca, x); /* the root too: once it ends, so do the leaves under it */
        /* never send a self-signed root: clients parse every certificate they get */
        if (X509_check_issued(x, x) == X509_V_OK) {
            X509_free(x);
            continue;
        }
        sk_X509_push(ca->chain, x);
    }
    ERR_clear_error();
    fclose(f);
    return 0;
}

int cc_ca_load_trust(struct cc_ca *ca, const struct px_cfg *cfg, struct hsm_pool *pool, char *err,
                     size_t errlen)
{
    memset(ca, 0, sizeof(*ca));
    ca->cert = read_cert(cfg->ca_forward_trust_cert, err, errlen, "forward_trust_cert");
    PX_ENSURE(ca->cert != NULL, PX_E_CONFIG);
    ca_cap_not_after(ca, ca->cert);
    PX_TRY(ca_common(ca, err, errlen, "forward_trust_cert"));
    PX_TRY(load_chain(ca, cfg->ca_forward_trust_chain, err, errlen));
    if (X509_check_issued(ca->cert, ca->cert) != X509_V_OK) {
        /* a subordinate of the organisation's root: clients need it after each leaf */
        X509_up_ref(ca->cert);
        sk_X509_unshift(ca->chain, ca->cert);
    }
    ERR_clear_error();
    if (pool == NULL) {
        ca->alg = HSM_ALG_ECDSA_SHA256;
        return 0;
    }
    enum hsm_alg alg;
    if (hsm_pool_alg(pool, &alg) != 0) {
        snprintf(err, errlen, "no HSM member is up: cannot tell the forward-trust key type");
        return PX_E_DOWN;
    }
    ca->alg = alg == HSM_ALG_RSA_PSS_SHA256 ? HSM_ALG_RSA_PKCS1_SHA256 : alg;
    for (int i = 0; i < hsm_pool_members(pool); i++) {
        struct hsm_member_stats st;
        hsm_pool_member_stats(pool, i, &st);
        if (st.token.pub_len == 0) {
            continue; /* token without a public key object: cannot compare, signatures will tell */
        }
        const unsigned char *p = st.token.pub_der;
        EVP_PKEY *k = d2i_PUBKEY(NULL, &p, st.token.pub_len);
        int eq = k != NULL && EVP_PKEY_eq(k, X509_get0_pubkey(ca->cert)) == 1;
        EVP_PKEY_free(k);
        if (!eq) {
            snprintf(err, errlen, "HSM member %s: key '%s' on token '%s' is not the key of %s",
                     st.name, st.token.key_label, st.token.label, cfg->ca_forward_trust_cert);
            return PX_E_CONFIG;
        }
    }
    return 0;
}

/* An encrypted PEM is refused: OpenSSL's default would prompt on the terminal and block. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1;
}

EVP_PKEY *cc_key_parse(const uint8_t *raw, size_t rl, const char *path, const char *role,
                       const uint8_t *mk, char *err, size_t errlen, const char *what)
{
    uint8_t *pt = NULL;
    size_t pl = 0;
    EVP_PKEY *k = NULL;
    if (rl >= 4 && memcmp(raw, "TMS1", 4) == 0) {
        int r = mk == NULL ? PX_E_INVAL : px_unseal(mk, role, raw, rl, &pt, &pl);
        if (r != 0) {
            snprintf(err, errlen, "%s: %s %s", what, path,
                     mk == NULL ? "is sealed and no master key is available"
                     : r == PX_E_CRYPTO ? "does not open with this master key (wrong key or damaged)"
                                        : "is not the expected file");
            return NULL;
        }
        BIO *b = BIO_new_mem_buf(pt, (int)pl);
        k = b ? PEM_read_bio_PrivateKey(b, NULL, no_passphrase, NULL) : NULL;
        BIO_free(b);
        px_wipe(pt, pl);
        free(pt);
    } else {
        BIO *b = BIO_new_mem_buf(raw, (int)rl);
        k = b ? PEM_read_bio_PrivateKey(b, NULL, no_passphrase, NULL) : NULL;
        BIO_free(b);
    }
    if (k == NULL) {
        ERR_clear_error();
        snprintf(err, errlen, "%s: %s holds no private key", what, path);
    }
    return k;
}

/*
 * Reads a private key file: sealed with the master key (role says which file it is) or, for
 * state made before sealing existed, a plain PEM. Returns a new EVP_PKEY or NULL + err.
 */
static EVP_PKEY *read_key_file(const char *path, const char *role, const uint8_t *mk, char *err,
                               size_t errlen, const char *what)
{
    uint8_t *raw = NULL;
    size_t rl = 0;
    if (px_read_file(path, 1 << 20, &raw, &rl) != 0) {
        snprintf(err, errlen, "%s: cannot read %s", what, path);
        return NULL;
    }
    EVP_PKEY *k = cc_key_parse(raw, rl, path, role, mk, err, errlen, what);
    px_wipe(raw, rl);
    free(raw);
    return k;
}

int cc_ca_load_untrust(struct cc_ca *ca, const struct px_cfg *cfg, const uint8_t *mk, char *err,
                       size_t errlen)
{
    memset(ca, 0, sizeof(*ca));
    ca->cert = read_cert(cfg->ca_forward_untrust_cert, err, errlen, "forward_untrust_cert");
    PX_ENSURE(ca->cert != NULL, PX_E_CONFIG);
    ca_cap_not_after(ca, ca->cert);
    PX_TRY(ca_common(ca, err, errlen, "forward_untrust_cert"));
    PX_TRY(load_chain(ca, NULL, err, errlen));
    ca->soft_key = read_key_file(cfg->ca_forward_untrust_key, "forward-untrust-key", mk, err,
                                 errlen, "[ca] forward_untrust_key");
    PX_ENSURE(ca->soft_key != NULL, PX_E_CONFIG);
    if (X509_check_private_key(ca->cert, ca->soft_key) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "[ca] forward_untrust_key %s is not the key of %s",
                 cfg->ca_forward_untrust_key, cfg->ca_forward_untrust_cert);
        return PX_E_CONFIG;
    }
    ca->alg = EVP_PKEY_get_base_id(ca->soft_key) == EVP_PKEY_RSA ? HSM_ALG_RSA_PKCS1_SHA256
                                                                 : HSM_ALG_ECDSA_SHA256;
    return 0;
}

/* A legacy-backed copy of k (see the top of this file for why). */
static EVP_PKEY *legacy_copy(EVP_PKEY *k)
{
    EVP_PKEY *out = EVP_PKEY_new();
    int ok = 0;
    if (out != NULL && EVP_PKEY_get_base_id(k) == EVP_PKEY_EC) {
        EC_KEY *ec = EVP_PKEY_get1_EC_KEY(k);
        ok = ec != NULL && EVP_PKEY_set1_EC_KEY(out, ec) == 1;
        EC_KEY_free(ec);
    } else if (out != NULL && EVP_PKEY_get_base_id(k) == EVP_PKEY_RSA) {
        RSA *rsa = EVP_PKEY_get1_RSA(k);
        ok = rsa != NULL && EVP_PKEY_set1_RSA(out, rsa) == 1;
        RSA_free(rsa);
    }
    if (!ok) {
        EVP_PKEY_free(out);
        return NULL;
    }
    return out;
}

int cc_keys_parse(const uint8_t *raw, size_t rl, const char *path, const uint8_t *mk,
                  struct cc_leaf_key *ec, int nec, struct cc_leaf_key *rsa, int nrsa, int *got_ec,
                  int *got_rsa, char *err, size_t errlen)
{
    uint8_t *pt = NULL;
    size_t pl = 0;
    *got_ec = *got_rsa = 0;
    int r = mk == NULL ? PX_E_INVAL : px_unseal(mk, "leaf-key-pool", raw, rl, &pt, &pl);
    if (r != 0) {
        snprintf(err, errlen, "[cache] leaf_pool: %s %s", path,
                 mk == NULL ? "is sealed and no master key is available"
                            : "does not open with this master key (wrong key or damaged)");
        return PX_E_CONFIG;
    }
    BIO *b = BIO_new_mem_buf(pt, (int)pl);
    EVP_PKEY *k;
    while (b != NULL && (k = PEM_read_bio_PrivateKey(b, NULL, no_passphrase, NULL)) != NULL) {
        /* only EC and RSA keys fill a slot, and only once copied with their SKI: a slot
         * without a key would fail every mint that hashes to it */
        int id = EVP_PKEY_get_base_id(k);
        bool is_ec = id == EVP_PKEY_EC;
        struct cc_leaf_key *slot = NULL;
        if (is_ec && *got_ec < nec) {
            slot = &ec[*got_ec];
        } else if (id == EVP_PKEY_RSA && *got_rsa < nrsa) {
            slot = &rsa[*got_rsa];
        }
        EVP_PKEY *lk = slot != NULL ? legacy_copy(k) : NULL;
        X509_EXTENSION *ski = lk != NULL ? ski_for(lk) : NULL;
        if (ski != NULL) {
            slot->pkey = lk;
            slot->kind = is_ec ? CC_KEY_EC : CC_KEY_RSA;
            slot->ski = ski;
            (*(is_ec ? got_ec : got_rsa))++;
        } else {
            EVP_PKEY_free(lk);
        }
        EVP_PKEY_free(k);
    }
    ERR_clear_error();
    BIO_free(b);
    px_wipe(pt, pl);
    free(pt);
    return 0;
}

int cc_keys_load(const char *path, const uint8_t *mk, struct cc_leaf_key *ec, int nec,
                 struct cc_leaf_key *rsa, int nrsa, int *got_ec, int *got_rsa, char *err,
                 size_t errlen)
{
    uint8_t *raw = NULL;
    size_t rl = 0;
    *got_ec = *got_rsa = 0;
    if (px_read_file(path, 4 << 20, &raw, &rl) != 0) {
        snprintf(err, errlen, "[cache] leaf_pool: cannot read %s", path);
        return PX_E_CONFIG;
    }
    int r = cc_keys_parse(raw, rl, path, mk, ec, nec, rsa, nrsa, got_ec, got_rsa, err, errlen);
    free(raw);
    return r;
}

void cc_ca_fini(struct cc_ca *ca)
{
    X509_free(ca->cert);
    X509_NAME_free(ca->name);
    X509_EXTENSION_free(ca->aki);
    EVP_PKEY_free(ca->soft_key);
    if (ca->chain != NULL) {
        sk_X509_pop_free(ca->chain, X509_free);
    }
    memset(ca, 0, sizeof(*ca));
}
