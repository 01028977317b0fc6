/* SPDX-License-Identifier: MIT */
/*
 * dp_hsmkey.c - the inbound listeners' private keys as OpenSSL keys whose signatures go to the
 * HSM without blocking: a small OpenSSL 3 provider ("tlsmint-hsm": key management for EC and
 * RSA keys, one signature algorithm) loaded into a library context of its own, used only by
 * the inbound listeners' server SSL_CTXs (SSL_MODE_ASYNC). Its sign function hands the digest to
 * dp_inbound_sign, which submits it to hsm_offload and parks the handshake with
 * ASYNC_pause_job(); the loop resumes the handshake when the completion comes back on its
 * eventfd, and the sign function returns the HSM's signature to libssl.
 *
 * Why a provider, and not an engine-style key (EC_KEY_METHOD / RSA_METHOD, as the Intel QAT
 * engine does for OpenSSL 1.1 and HAProxy's and nginx's async mode rely on): both pause the
 * same way (ASYNC_pause_job inside the key's sign call; the application sees
 * SSL_ERROR_WANT_ASYNC and calls SSL_do_handshake again), but
 *  - RSA-PSS, which TLS 1.3 requires for RSA keys, never reaches an RSA_METHOD as a digest:
 *    libcrypto pads itself and calls rsa_priv_enc with RSA_NO_PADDING, which would need raw
 *    RSA (CKM_RSA_X_509) in the HSM (often forbidden by HSM policy) and a 512-byte job; the
 *    provider's signature operation gets the digest and the padding parameters, which map
 *    one to one onto hsm_offload's algorithms (CKM_ECDSA, CKM_RSA_PKCS, CKM_RSA_PKCS_PSS);
 *  - EC_KEY_METHOD, RSA_METHOD and ENGINE are deprecated in OpenSSL 3.0 and keys with them
 *    stay on libcrypto's legacy paths; a provider is the 3.0 way (the QAT provider, the
 *    pkcs11 and tpm2 providers do the same);
 *  - the provider lives in its own OSSL_LIB_CTX, so nothing else in the process (minting,
 *    upstream TLS) can ever fetch its "EC"/"RSA" key management by accident.
 * The cost is the key-management glue: a key here is the public key (a default-provider
 * EVP_PKEY made from the SPKI the signer read from the token, to which every query is
 * delegated) plus the hsm_offload key index; the private key never leaves the HSM and exists
 * nowhere in this process. Key management imports public keys (so libssl can compare a
 * certificate's key with ours) and never exports (so libcrypto never moves our key to another
 * provider's signature code, which would have no private key to sign with).
 *
 * Threads: keys are made on the main thread (dp_server_new); signatures run on loop threads,
 * inside the SSL's async job, which runs on the loop thread that called SSL_do_handshake.
 * Invariants: a signature is only ever made inside an async job (else it fails); the only
 * digests signed are SHA-256 (EC, RSA) and SHA-384 (EC).
 * Not here: submitting to the HSM and parking the connection (dp_inbound.c).
 */
#include "dp_int.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/async.h>
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/params.h>
#include <openssl/provider.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#define PROV_NAME "tlsmint-hsm"
#define PROV_PROPS "provider=tlsmint-hsm"
#define SIG_NAME "TLSMINT-HSM"
#define P_KEY "tlsmint-hsm-key"   /* int: the hsm_offload key index */
#define P_SPKI "tlsmint-hsm-spki" /* octet string: the key's SubjectPublicKeyInfo */

struct hkey {
    EVP_PKEY *pub; /* the public half (default provider); every query goes to it */
    int key;       /* hsm_offload key index, 0: a public key only (imported for a comparison) */
    int type;      /* enum hsm_key_type */
};

struct hsig {
    struct hkey *k;
    EVP_MD_CTX *md; /* digest_sign: the running digest */
    int dlen;       /* 32 (SHA-256) or 48 (SHA-384) */
    bool pss;       /* RSA: PSS (else PKCS#1 v1.5) */
};

static OSSL_LIB_CTX *g_libctx;
static OSSL_PROVIDER *g_prov, *g_default;

/* ---- key management ------------------------------------------------------------------------ */

static void *km_new(void *provctx)
{
    (void)provctx;
    return calloc(1, sizeof(struct hkey));
}

static void km_free(void *kd)
{
    struct hkey *k = kd;
    if (k != NULL) {
        EVP_PKEY_free(k->pub);
        free(k);
    }
}

static int km_has(const void *kd, int sel)
{
    const struct hkey *k = kd;
    if (k == NULL) {
        return 0;
    }
    if ((sel & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) && k->key == 0) {
        return 0;
    }
    if ((sel & (OSSL_KEYMGMT_SELECT_PUBLIC_KEY | OSSL_KEYMGMT_SELECT_ALL_PARAMETERS)) &&
        k->pub == NULL) {
        return 0;
    }
    return 1;
}

static int km_match(const void *a, const void *b, int sel)
{
    (void)sel;
    const struct hkey *x = a, *y = b;
    return x->pub != NULL && y->pub != NULL && EVP_PKEY_eq(x->pub, y->pub) == 1;
}

/*
 * Ours (P_KEY + P_SPKI, from dp_hsmkey_new), or another provider's public key (libssl compares
 * the certificate's key with ours that way). A private key is never taken.
 */
static int km_import(struct hkey *k, const char *alg, int type, const OSSL_PARAM params[])
{
    if (k == NULL || k->pub != NULL) {
        return 0;
    }
    const OSSL_PARAM *ps = OSSL_PARAM_locate_const(params, P_SPKI);
    const OSSL_PARAM *pk = OSSL_PARAM_locate_const(params, P_KEY);
    if (ps != NULL && pk != NULL) {
        const void *der = NULL;
        size_t len = 0;
        int idx = 0;
        if (!OSSL_PARAM_get_octet_string_ptr(ps, &der, &len) || !OSSL_PARAM_get_int(pk, &idx) ||
            idx <= 0) {
            return 0;
        }
        const unsigned char *p = der;
        k->pub = d2i_PUBKEY_ex(NULL, &p, (long)len, NULL, NULL);
        k->key = idx;
        k->type = type;
        return k->pub != NULL;
    }
    if (OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_PRIV_KEY) != NULL ||
        OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_RSA_D) != NULL) {
        return 0;
    }
    EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_name(NULL, alg, "provider=default");
    int ok = pc != NULL && EVP_PKEY_fromdata_init(pc) == 1 &&
             EVP_PKEY_fromdata(pc, &k->pub, EVP_PKEY_PUBLIC_KEY, (OSSL_PARAM *)params) == 1;
    EVP_PKEY_CTX_free(pc);
    k->type = type;
    return ok;
}

static int km_import_ec(void *kd, int sel, const OSSL_PARAM params[])
{
    (void)sel;
    return km_import(kd, "EC", HSM_KEY_EC, params);
}

static int km_import_rsa(void *kd, int sel, const OSSL_PARAM params[])
{
    (void)sel;
    return km_import(kd, "RSA", HSM_KEY_RSA, params);
}

static const OSSL_PARAM *km_import_types(int sel)
{
    (void)sel;
    static const OSSL_PARAM t[] = {
        OSSL_PARAM_int(P_KEY, NULL),
        OSSL_PARAM_octet_string(P_SPKI, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
        OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
        OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, NULL, 0),
        OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, NULL, 0),
        OSSL_PARAM_END};
    return t;
}

static int km_get_params(void *kd, OSSL_PARAM params[])
{
    struct hkey *k = kd;
    return k != NULL && k->pub != NULL && EVP_PKEY_get_params(k->pub, params) == 1;
}

static const OSSL_PARAM *km_gettable(void *provctx)
{
    (void)provctx;
    static const OSSL_PARAM t[] = {
        OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, NULL),
        OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, NULL),
        OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, NULL),
        OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_DEFAULT_DIGEST, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, NULL, 0),
        OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, NULL, 0),
        OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
        OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, NULL, 0),
        OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, NULL, 0),
        OSSL_PARAM_END};
    return t;
}

/* libcrypto asks which signature algorithm goes with our keys: only ours. */
static const char *km_query_op(int op)
{
    return op == OSSL_OP_SIGNATURE ? SIG_NAME : NULL;
}

#define KM_FUNCS(import)                                                                           \
    {OSSL_FUNC_KEYMGMT_NEW, (void (*)(void))km_new},                                               \
        {OSSL_FUNC_KEYMGMT_FREE, (void (*)(void))km_free},                                         \
        {OSSL_FUNC_KEYMGMT_HAS, (void (*)(void))km_has},                                           \
        {OSSL_FUNC_KEYMGMT_MATCH, (void (*)(void))km_match},                                       \
        {OSSL_FUNC_KEYMGMT_IMPORT, (void (*)(void))import},                                        \
        {OSSL_FUNC_KEYMGMT_IMPORT_TYPES, (void (*)(void))km_import_types},                         \
        {OSSL_FUNC_KEYMGMT_GET_PARAMS, (void (*)(void))km_get_params},                             \
        {OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, (void (*)(void))km_gettable},                          \
        {OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, (void (*)(void))km_query_op},                     \
    {                                                                                              \
        0, NULL                                                                                    \
    }

static const OSSL_DISPATCH km_ec_fns[] = {KM_FUNCS(km_import_ec)};
static const OSSL_DISPATCH km_rsa_fns[] = {KM_FUNCS(km_import_rsa)};

/* ---- signature ------------------------------------------------------------------------------ */

static void *sig_new(void *provctx, const char *propq)
{
    (void)provctx;
    (void)propq;
    return calloc(1, sizeof(struct hsig));
}

static void sig_free(void *ctx)
{
    struct hsig *s = ctx;
    if (s != NULL) {
        EVP_MD_CTX_free(s->md);
        free(s);
    }
}

static void *sig_dup(void *ctx)
{
    struct hsig *s = ctx, *d = malloc(sizeof(*d));
    if (d == NULL) {
        return NULL;
    }
    *d = *s;
    d->md = NULL;
    if (s->md != NULL &&
        ((d->md = EVP_MD_CTX_new()) == NULL || EVP_MD_CTX_copy_ex(d->md, s->md) != 1)) {
        EVP_MD_CTX_free(d->md);
        free(d);
        return NULL;
    }
    return d;
}

/* pad-mode, saltlen, mgf1 and digest as libssl sets them; anything we cannot sign is refused. */
static int sig_set_params(void *ctx, const OSSL_PARAM params[])
{
    struct hsig *s = ctx;
    const OSSL_PARAM *p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_PAD_MODE);
    if (p != NULL) {
        int mode = 0;
        if (p->data_type == OSSL_PARAM_UTF8_STRING) {
            const char *v = p->data;
            mode = strcmp(v, OSSL_PKEY_RSA_PAD_MODE_PSS) == 0       ? RSA_PKCS1_PSS_PADDING
                   : strcmp(v, OSSL_PKEY_RSA_PAD_MODE_PKCSV15) == 0 ? RSA_PKCS1_PADDING
                                                                    : 0;
        } else if (!OSSL_PARAM_get_int(p, &mode)) {
            return 0;
        }
        if (mode != RSA_PKCS1_PSS_PADDING && mode != RSA_PKCS1_PADDING) {
            return 0;
        }
        s->pss = mode == RSA_PKCS1_PSS_PADDING;
    }
    p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_PSS_SALTLEN);
    if (p != NULL) {
        /* the HSM's PSS uses a salt as long as the digest: TLS's rule */
        int len = 0;
        if (p->data_type == OSSL_PARAM_UTF8_STRING) {
            const char *v = p->data;
            if (strcmp(v, OSSL_PKEY_RSA_PSS_SALT_LEN_DIGEST) != 0 && strcmp(v, "32") != 0) {
                return 0;
            }
        } else if (!OSSL_PARAM_get_int(p, &len) || (len != RSA_PSS_SALTLEN_DIGEST && len != 32)) {
            return 0;
        }
    }
    const char *names[] = {OSSL_SIGNATURE_PARAM_MGF1_DIGEST, OSSL_SIGNATURE_PARAM_DIGEST};
    for (int i = 0; i < 2; i++) {
        p = OSSL_PARAM_locate_const(params, names[i]);
        if (p != NULL) {
            const char *v = NULL;
            if (!OSSL_PARAM_get_utf8_string_ptr(p, &v)) {
                return 0;
            }
            EVP_MD *md = EVP_MD_fetch(NULL, v, NULL);
            int size = md != NULL ? EVP_MD_get_size(md) : 0;
            EVP_MD_free(md);
            if (size != (s->dlen ? s->dlen : 32)) {
                return 0;
            }
        }
    }
    return 1;
}

static const OSSL_PARAM *sig_settable(void *ctx, void *provctx)
{
    (void)ctx;
    (void)provctx;
    static const OSSL_PARAM t[] = {
        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_DIGEST, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
        OSSL_PARAM_END};
    return t;
}

static int sig_get_params(void *ctx, OSSL_PARAM params[])
{
    (void)ctx;
    (void)params;
    return 1;
}

static const OSSL_PARAM *sig_gettable(void *ctx, void *provctx)
{
    (void)ctx;
    (void)provctx;
    static const OSSL_PARAM t[] = {OSSL_PARAM_END};
    return t;
}

static int sig_init(void *ctx, void *kd, const OSSL_PARAM params[])
{
    struct hsig *s = ctx;
    s->k = kd;
    s->pss = false;
    s->dlen = 0;
    return s->k != NULL && s->k->key > 0 && sig_set_params(s, params);
}

/* The HSM signature of a digest (inside the SSL's async job: pauses until it is there). */
static int do_sign(struct hsig *s, const uint8_t *dg, size_t dlen, unsigned char *sig,
                   size_t *siglen, size_t sigsize)
{
    enum hsm_alg alg;
    if (s->k->type == HSM_KEY_EC) {
        if (dlen != 32 && dlen != 48) {
            return 0;
        }
        alg = dlen == 48 ? HSM_ALG_ECDSA_SHA384 : HSM_ALG_ECDSA_SHA256;
    } else {
        if (dlen != 32) {
            return 0;
        }
        alg = s->pss ? HSM_ALG_RSA_PSS_SHA256 : HSM_ALG_RSA_PKCS1_SHA256;
    }
    uint8_t out[HSM_SIG_MAX];
    int n = dp_inbound_sign(s->k->key, alg, dg, dlen, out, sizeof(out));
    if (n <= 0 || (size_t)n > sigsize) {
        return 0;
    }
    memcpy(sig, out, (size_t)n);
    *siglen = (size_t)n;
    return 1;
}

static int sig_sign(void *ctx, unsigned char *sig, size_t *siglen, size_t sigsize,
                    const unsigned char *tbs, size_t tbslen)
{
    struct hsig *s = ctx;
    if (sig == NULL) {
        *siglen = (size_t)EVP_PKEY_get_size(s->k->pub);
        return 1;
    }
    return do_sign(s, tbs, tbslen, sig, siglen, sigsize);
}

static int sig_dinit(void *ctx, const char *mdname, void *kd, const OSSL_PARAM params[])
{
    struct hsig *s = ctx;
    s->k = kd;
    s->pss = false;
    if (s->k == NULL || s->k->key <= 0) {
        return 0;
    }
    const char *name = mdname != NULL && mdname[0] ? mdname : "SHA256";
    EVP_MD *md = EVP_MD_fetch(NULL, name, "provider=default");
    int size = md != NULL ? EVP_MD_get_size(md) : 0;
    /* what the HSM path signs: SHA-256 (EC, RSA), SHA-384 (EC) */
    if (size != 32 && !(size == 48 && s->k->type == HSM_KEY_EC)) {
        EVP_MD_free(md);
        return 0;
    }
    s->dlen = size;
    if (s->md == NULL) {
        s->md = EVP_MD_CTX_new();
    }
    int ok = s->md != NULL && EVP_DigestInit_ex(s->md, md, NULL) == 1;
    EVP_MD_free(md);
    return ok && sig_set_params(s, params);
}

static int sig_dupdate(void *ctx, const unsigned char *data, size_t len)
{
    struct hsig *s = ctx;
    return s->md != NULL && EVP_DigestUpdate(s->md, data, len) == 1;
}

static int sig_dfinal(void *ctx, unsigned char *sig, size_t *siglen, size_t sigsize)
{
    struct hsig *s = ctx;
    if (sig == NULL) {
        *siglen = (size_t)EVP_PKEY_get_size(s->k->pub);
        return 1;
    }
    uint8_t dg[EVP_MAX_MD_SIZE];
    unsigned int dl = 0;
    if (s->md == NULL || EVP_DigestFinal_ex(s->md, dg, &dl) != 1) {
        return 0;
    }
    return do_sign(s, dg, dl, sig, siglen, sigsize);
}

/* The one-shot form libssl uses (EVP_DigestSign): asked once for the size, once to sign. */
static int sig_dsign(void *ctx, unsigned char *sig, size_t *siglen, size_t sigsize,
                     const unsigned char *tbs, size_t tbslen)
{
    struct hsig *s = ctx;
    if (sig == NULL) {
        *siglen = (size_t)EVP_PKEY_get_size(s->k->pub);
        return 1;
    }
    if (!sig_dupdate(s, tbs, tbslen)) {
        return 0;
    }
    return sig_dfinal(s, sig, siglen, sigsize);
}

static const OSSL_DISPATCH sig_fns[] = {
    {OSSL_FUNC_SIGNATURE_NEWCTX, (void (*)(void))sig_new},
    {OSSL_FUNC_SIGNATURE_FREECTX, (void (*)(void))sig_free},
    {OSSL_FUNC_SIGNATURE_DUPCTX, (void (*)(void))sig_dup},
    {OSSL_FUNC_SIGNATURE_SIGN_INIT, (void (*)(void))sig_init},
    {OSSL_FUNC_SIGNATURE_SIGN, (void (*)(void))sig_sign},
    {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_INIT, (void (*)(void))sig_dinit},
    {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_UPDATE, (void (*)(void))sig_dupdate},
    {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_FINAL, (void (*)(void))sig_dfinal},
    {OSSL_FUNC_SIGNATURE_DIGEST_SIGN, (void (*)(void))sig_dsign},
    {OSSL_FUNC_SIGNATURE_SET_CTX_PARAMS, (void (*)(void))sig_set_params},
    {OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS, (void (*)(void))sig_settable},
    {OSSL_FUNC_SIGNATURE_GET_CTX_PARAMS, (void (*)(void))sig_get_params},
    {OSSL_FUNC_SIGNATURE_GETTABLE_CTX_PARAMS, (void (*)(void))sig_gettable},
    {0, NULL}};

/* ---- the provider --------------------------------------------------------------------------- */

static const OSSL_ALGORITHM km_algs[] = {
    {"EC:id-ecPublicKey:1.2.840.10045.2.1", PROV_PROPS, km_ec_fns, "EC key held in the HSM"},
    {"RSA:rsaEncryption:1.2.840.113549.1.1.1", PROV_PROPS, km_rsa_fns, "RSA key held in the HSM"},
    {NULL, NULL, NULL, NULL}};

static const OSSL_ALGORITHM sig_algs[] = {
    {SIG_NAME, PROV_PROPS, sig_fns, "signature through hsm_offload, paused until it is made"},
    {NULL, NULL, NULL, NULL}};

static const OSSL_ALGORITHM *prov_query(void *provctx, int op, int *no_cache)
{
    (void)provctx;
    *no_cache = 0;
    return op == OSSL_OP_KEYMGMT ? km_algs : op == OSSL_OP_SIGNATURE ? sig_algs : NULL;
}

static const OSSL_DISPATCH prov_fns[] = {
    {OSSL_FUNC_PROVIDER_QUERY_OPERATION, (void (*)(void))prov_query}, {0, NULL}};

static int prov_init(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in,
                     const OSSL_DISPATCH **out, void **provctx)
{
    (void)in;
    *out = prov_fns;
    *provctx = (void *)handle;
    return 1;
}

int dp_hsmkey_init(char *err, size_t errlen)
{
    if (g_libctx != NULL) {
        return 0;
    }
    g_libctx = OSSL_LIB_CTX_new();
    if (g_libctx == NULL || OSSL_PROVIDER_add_builtin(g_libctx, PROV_NAME, prov_init) != 1 ||
        (g_default = OSSL_PROVIDER_load(g_libctx, "default")) == NULL ||
        (g_prov = OSSL_PROVIDER_load(g_libctx, PROV_NAME)) == NULL) {
        ERR_clear_error();
        snprintf(err, errlen, "cannot set up the OpenSSL provider for HSM-held server keys");
        dp_hsmkey_fini();
        return PX_E_CRYPTO;
    }
    return 0;
}

void dp_hsmkey_fini(void)
{
    if (g_prov != NULL) {
        OSSL_PROVIDER_unload(g_prov);
    }
    if (g_default != NULL) {
        OSSL_PROVIDER_unload(g_default);
    }
    OSSL_LIB_CTX_free(g_libctx);
    g_prov = g_default = NULL;
    g_libctx = NULL;
}

OSSL_LIB_CTX *dp_hsmkey_libctx(void)
{
    return g_libctx;
}

EVP_PKEY *dp_hsmkey_new(int key, enum hsm_key_type type, const uint8_t *spki, size_t len)
{
    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *pc =
        EVP_PKEY_CTX_new_from_name(g_libctx, type == HSM_KEY_RSA ? "RSA" : "EC", PROV_PROPS);
    OSSL_PARAM params[] = {OSSL_PARAM_int(P_KEY, &key),
                           OSSL_PARAM_octet_string(P_SPKI, (void *)spki, len), OSSL_PARAM_END};
    if (pc == NULL || EVP_PKEY_fromdata_init(pc) != 1 ||
        EVP_PKEY_fromdata(pc, &pkey, EVP_PKEY_KEYPAIR, params) != 1) {
        EVP_PKEY_free(pkey);
        pkey = NULL;
    }
    EVP_PKEY_CTX_free(pc);
    ERR_clear_error();
    return pkey;
}
