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
    uint8_t id[32];           /* SHA-256 of the certificate DER: names the CA in entries */
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
/* The same from the file's bytes (raw, rl; borrowed); path is only named in messages. */
int cc_keys_parse(const uint8_t *raw, size_t rl, const char *path, const uint8_t *mk,
                  struct cc_leaf_key *ec, int nec, struct cc_leaf_key *rsa, int nrsa, int *got_ec,
                  int *got_rsa, char *err, size_t errlen);
/*
 * A private key file's bytes: sealed with mk under role ("forward-untrust-key"), or a plain PEM
 * (state made before sealing existed). Returns a new EVP_PKEY, or NULL and one line in err naming
 * what and path.
 */
EVP_PKEY *cc_key_parse(const uint8_t *raw, size_t rl, const char *path, const char *role,
                       const uint8_t *mk, char *err, size_t errlen, const char *what);
void cc_ca_fini(struct cc_ca *ca);

/*
 * Builds an unsigned leaf for upstream: names copied from the upstream leaf only, validity
 * clamped to the upstream's, max_days and the signing CA's not_after, random serial, fixed extensions. Writes the TBS
 * digest into digest and returns a new X509 (NULL + reason in *why on failure).
 */
X509 *cc_mint_build(const struct cc_ca *ca, const struct cc_fixed_ext *fx,
                    const struct cc_leaf_key *key, X509 *upstream, int max_days, uint8_t *digest,
                    int *dlen, const char **why);


/* ---- entries outside the process (cc_wire.c) -------------------------------------------- */

#define CC_CAID_LEN 32
#define CC_WIRE_DER_MAX 16384

/* Why an entry from Redis or a snapshot was refused. */
enum cc_reject {
    CC_REJ_FORMAT = 0,
    CC_REJ_HMAC,
    CC_REJ_CA,
    CC_REJ_VERIFY,
    CC_REJ_KEY,
    CC_REJ_EXPIRED,
};
#define CC_REJ_N 6
const char *cc_reject_name(enum cc_reject why);

/* A leaf as it travels: borrowed DER, the CA that signed it, the pool key it uses. */
struct cc_wire_entry {
    uint8_t ca_id[CC_CAID_LEN];
    uint8_t key_kind; /* enum cc_key_kind */
    uint8_t pool_idx;
    const uint8_t *der;
    uint32_t der_len;
};

/* What checking an entry needs (built once; read-only from any thread). */
struct cc_wire_ctx {
    enum cc_ca_kind ca_kind;
    uint8_t ca_id[CC_CAID_LEN];
    const X509_NAME *ca_name;
    EVP_PKEY *ca_pub;             /* own copy, not the CA certificate's */
    const uint8_t *ec_spki[8], *rsa_spki[8];
    int ec_spki_len[8], rsa_spki_len[8];
    int nec, nrsa;
};

/* Shared-cache value for cache key; *out is new (malloc). */
PX_MUST_CHECK int cc_wire_encode(const uint8_t mac_key[32], const uint8_t key[CC_KEY_LEN],
                                 const struct cc_wire_entry *w, uint8_t **out, size_t *outlen);
/* Parses and authenticates a value found under cache key; w borrows in. PX_E_PROTO malformed,
 * PX_E_CRYPTO bad HMAC; *why says which. */
PX_MUST_CHECK int cc_wire_decode(const uint8_t mac_key[32], const uint8_t key[CC_KEY_LEN],
                                 const uint8_t *in, size_t len, struct cc_wire_entry *w,
                                 enum cc_reject *why);
/* The leaf of an authenticated entry as a new X509, or NULL and *why: another CA, a pool index
 * or public key that is not ours, an issuer or (verify) a signature that is not the CA's, an
 * expired leaf. */
X509 *cc_wire_check(const struct cc_wire_ctx *c, const uint8_t key[CC_KEY_LEN],
                    const struct cc_wire_entry *w, bool verify, enum cc_reject *why);

/* Snapshot plaintext, built record by record. */
struct cc_snap_buf {
    uint8_t *p;
    size_t len, cap;
    uint32_t count;
};
PX_MUST_CHECK int cc_snap_buf_init(struct cc_snap_buf *b);
PX_MUST_CHECK int cc_snap_buf_add(struct cc_snap_buf *b, const uint8_t key[CC_KEY_LEN],
                                  const struct cc_wire_entry *w, int64_t expires_unix);
void cc_snap_buf_fini(struct cc_snap_buf *b);
typedef void (*cc_snap_rec_fn)(void *user, const uint8_t key[CC_KEY_LEN],
                               const struct cc_wire_entry *w, int64_t expires_unix);
/* Checks the whole plaintext, then calls fn per record. Returns the record count, or
 * PX_E_PROTO / PX_E_SHORT for a buffer that is not a whole snapshot (fn never called). */
PX_MUST_CHECK int cc_snap_parse(const uint8_t *in, size_t len, cc_snap_rec_fn fn, void *user);

/* ---- the shared tier (cc_shared.c) ------------------------------------------------------ */

struct cc_shared;
struct cc_pend; /* a loop's lookup in progress (cc_cache.c) */

/* Starts the Redis thread for [cache] shared. Borrows cfg and wc for its life. */
struct cc_shared *cc_shared_new(const struct px_cfg *cfg, const struct cc_wire_ctx *wc,
                                const uint8_t mac_key[32], char *err, size_t errlen);
/* Stops the thread, closes the connection; lookups still queued are dropped. */
void cc_shared_free(struct cc_shared *sh);
/* Connected and ready: lookups and publications are worth sending. */
bool cc_shared_up(const struct cc_shared *sh);
/* Queues a lookup for key; its outcome comes back through cc_cache__shared_done on some
 * thread. 0 when queued; negative when not (down, too many in flight): the caller mints. */
PX_MUST_CHECK int cc_shared_lookup(struct cc_shared *sh, const uint8_t key[CC_KEY_LEN],
                                   struct cc_pend *p);
/* Publishes a freshly minted leaf (borrowed; encoded here, on the caller's thread). */
void cc_shared_publish(struct cc_shared *sh, const uint8_t key[CC_KEY_LEN], X509 *x,
                       uint8_t pool_idx, int64_t ttl_s);
void cc_shared_stats(struct cc_shared *sh, struct cc_stats *out);
/* Called from the Redis thread: hit is a new, checked leaf using pool key idx, or NULL: mint
 * it yourself. */
void cc_cache__shared_done(struct cc_pend *p, X509 *hit, int idx);

/* ---- snapshot support (cc_cache.c for cc_snap.c) ---------------------------------------- */

/* Calls fn for every ready entry with more than min_life_s of life left (under its shard lock:
 * fn must only copy). expires_unix is wall-clock. Returns how many fn was called for. */
typedef int (*cc_each_fn)(void *user, const uint8_t key[CC_KEY_LEN], X509 *x,
                          const struct cc_leaf_key *lk, int pool_idx, int64_t expires_unix);
int cc_cache__each(struct cc_ctx *cc, int64_t min_life_s, cc_each_fn fn, void *user);
/* Inserts a ready entry (takes x) unless the key is present; 0 inserted, 1 present, <0 error. */
int cc_cache__insert(struct cc_ctx *cc, const uint8_t key[CC_KEY_LEN], X509 *x, int pool_idx,
                     int64_t expires_unix);
/* The checking context for key's CA kind, or NULL when that CA is not configured. */
const struct cc_wire_ctx *cc_cache__wire_ctx(struct cc_ctx *cc, enum cc_ca_kind kind);
/* The snapshot sealing key, or NULL without a master key. */
const uint8_t *cc_cache__snap_key(struct cc_ctx *cc);
void cc_cache__snap_counts(struct cc_ctx *cc, uint64_t loaded, uint64_t saved);

#endif
