/* SPDX-License-Identifier: MIT */
/*
 * cc_int.h - certcache internals shared between cc_mint.c, cc_keys.c and cc_cache.c.
 */
#ifndef CC_INT_H
#define CC_INT_H

#include "cc.h"

#include <openssl/x509v3.h>

#include <time.h>

#define CC_KEY_LEN 34 /* SHA-256(upstream DER) | ca kind | key kind */

/* One leaf key of the pool, with what minting needs pre-computed. */
struct cc_leaf_key {
    EVP_PKEY *pkey;          /* legacy-backed: X509_set_pubkey costs ~7 us, not ~370 us */
    X509_EXTENSION *ski;     /* subjectKeyIdentifier for this key */
    enum cc_key_kind kind;
};

/* A CA as minting sees it. */
struct cc_ca {
    X509 *cert;
    X509_NAME *name;          /* subject = issuer of minted leaves */
    X509_EXTENSION *aki;      /* authorityKeyIdentifier = the CA's SKI */
    EVP_PKEY *soft_key;       /* forward-untrust: software key; NULL for the HSM CA */
    enum hsm_alg alg;         /* signature algorithm of leaves it signs */
    STACK_OF(X509) *chain;    /* sent after the leaf */
    time_t not_after;         /* earliest notAfter of the CA and every certificate of its chain
                                 file (roots included): no leaf outlives its issuers */
};

/* Pre-built extensions that never change. */
struct cc_fixed_ext {
    X509_EXTENSION *bc;      /* basicConstraints critical CA:FALSE */
    X509_EXTENSION *ku_ec;   /* keyUsage critical digitalSignature */
    X509_EXTENSION *ku_rsa;  /* keyUsage critical digitalSignature, keyEncipherment */
    X509_EXTENSION *eku;     /* extendedKeyUsage serverAuth */
};

/* SHA-256, fetched once (OpenSSL 3.0 fetches EVP_sha256() by name on every use). */
const EVP_MD *cc_md_sha256(void);

int cc_keys_make(struct cc_leaf_key *keys, int n, enum cc_key_kind kind, char *err, size_t errlen);
void cc_keys_free(struct cc_leaf_key *keys, int n);
int cc_fixed_ext_init(struct cc_fixed_ext *fx);
void cc_fixed_ext_fini(struct cc_fixed_ext *fx);
int cc_ca_load_trust(struct cc_ca *ca, const struct px_cfg *cfg, struct hsm_pool *pool, char *err,
                     size_t errlen);
int cc_ca_load_untrust(struct cc_ca *ca, const struct px_cfg *cfg, const uint8_t *mk, char *err,
                       size_t errlen);
/* Reads the sealed leaf-key pool into up to nec EC and nrsa RSA slots. */
int cc_keys_load(const char *path, const uint8_t *mk, struct cc_leaf_key *ec, int nec,
                 struct cc_leaf_key *rsa, int nrsa, int *got_ec, int *got_rsa, char *err,
                 size_t errlen);
void cc_ca_fini(struct cc_ca *ca);

/*
 * Builds an unsigned leaf for upstream: names copied from the upstream leaf only, validity
 * clamped to the upstream's, max_days and the signing CA's not_after, random serial, fixed extensions. Writes the TBS
 * digest into digest and returns a new X509 (NULL + reason in *why on failure).
 */
X509 *cc_mint_build(const struct cc_ca *ca, const struct cc_fixed_ext *fx,
                    const struct cc_leaf_key *key, X509 *upstream, int max_days, uint8_t *digest,
                    int *dlen, const char **why);

#endif
