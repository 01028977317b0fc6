/* SPDX-License-Identifier: MIT */
/*
 * cc.h - the public interface of certcache: leaf certificates minted for upstream server
 * certificates, signed by the forward-trust CA key in the HSM (asynchronously, through
 * hsm_offload) or by the software forward-untrust CA, cached and shared.
 *
 * Shape: one struct cc_ctx per process (CAs, leaf-key pool, sharded LRU cache); one struct
 * cc_loop per consumer thread (its HSM completion queue and its list of finished waits). A
 * lookup either hits at once, or attaches the caller to the single mint in flight for that
 * upstream certificate and calls it back later on the caller's own thread.
 * Not here: TLS connections (dataplane/), PKCS#11 (hsm_offload/).
 */
#ifndef CC_H
#define CC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/x509.h>

#include "hsm.h"
#include "px.h"

/* Which CA signs a leaf; part of the cache key. */
enum cc_ca_kind { CC_CA_TRUST = 0, CC_CA_UNTRUST = 1 };

/* The leaf key family; part of the cache key. */
enum cc_key_kind { CC_KEY_EC = 0, CC_KEY_RSA = 1 };

/* A minted leaf: refcounted, immutable once handed out. */
struct cc_entry;

/* Borrowed views of an entry (valid while the caller holds its reference). */
X509 *cc_entry_cert(const struct cc_entry *e);
/* The leaf came from the shared tier ([cache] shared): another node minted it. */
bool cc_entry_shared(const struct cc_entry *e);
EVP_PKEY *cc_entry_key(const struct cc_entry *e);
/* Certificates to send after the leaf (the CA's own chain; may be NULL or empty). Entries hold
 * their own references, so they stay valid after cc_free (reload swaps contexts). */
STACK_OF(X509) *cc_entry_chain(const struct cc_entry *e);
enum cc_ca_kind cc_entry_ca(const struct cc_entry *e);
void cc_entry_ref(struct cc_entry *e);
void cc_entry_unref(struct cc_entry *e);

struct cc_ctx;
struct cc_loop;

/* Shared-tier events, in the order of cc_shared_event_name(). */
#define CC_SHARED_EVENTS 7
/* "hit", "miss", "publish", "lock_won", "lock_waited", "rejected", "timeout" */
const char *cc_shared_event_name(int ev);
/* Why entries were refused ("malformed", "bad HMAC", "another CA", ...), CC_SHARED_REJECTS. */
#define CC_SHARED_REJECTS 6
const char *cc_shared_reject_name(int why);

struct cc_stats {
    uint64_t hits, misses, mints, coalesced, evictions, expired, failures, entries;
    uint64_t hsm_wait_ns_total; /* summed submit-to-signature time of successful mints */
    int shared_state;           /* [cache] shared: -1 off, 0 down, 1 up */
    uint64_t shared_events[CC_SHARED_EVENTS];
    uint64_t shared_rejected[CC_SHARED_REJECTS];
    uint64_t shared_skipped;    /* lookups not sent (down, or too many in flight) */
    uint64_t shared_hit_wait_ns; /* summed lookup-to-leaf time of shared hits */
    uint64_t snapshot_loaded, snapshot_saved; /* entries, at start and at the last write */
};

/*
 * Loads the CAs from cfg ([ca] section), makes the leaf-key pool (EC P-256 and RSA-2048 keys,
 * generated now: never on the minting path) and an empty cache sized by [cache]. pool may be
 * NULL only when nothing will be minted by the forward-trust CA (tests of the untrust path).
 * Refuses a forward-trust certificate whose public key is not the HSM's key.
 * Borrows pool for its life and cfg for the call only. NULL and one line in err on failure.
 */
struct cc_ctx *cc_new(const struct px_cfg *cfg, struct hsm_pool *pool, char *err, size_t errlen);
/* The same, opening sealed key files ([ca] forward_untrust_key, [cache] leaf_pool) with mk
 * (32 bytes, borrowed for the call only). */
struct cc_ctx *cc_new_mk(const struct px_cfg *cfg, struct hsm_pool *pool, const uint8_t *mk,
                         char *err, size_t errlen);
/* cc_new returns one reference; cc_ref adds one, cc_free drops one (the last frees). */
void cc_ref(struct cc_ctx *cc);
void cc_free(struct cc_ctx *cc);
void cc_stats_get(struct cc_ctx *cc, struct cc_stats *out);

/*
 * Warm restart ([cache] snapshot). Save writes every entry still valid for more than a minute
 * into path, sealed (AES-256-GCM, key derived from the master key) and atomically replaced;
 * returns the entry count or a negative code with one line in err. Load, into a cache that
 * serves nothing yet, takes every entry whose CA is still ours and whose pool key matches; a
 * missing file is a silent cold start, a truncated, tampered or foreign one is one warning and a
 * cold start. Returns the entries loaded (never fails). Both need a master key (cc_new_mk).
 */
PX_MUST_CHECK int cc_snapshot_save(struct cc_ctx *cc, const char *path, char *err, size_t errlen);
int cc_snapshot_load(struct cc_ctx *cc, const char *path);

/* A consumer thread's handle. The fd becomes readable when cc_loop_poll has work to do. */
struct cc_loop *cc_loop_new(struct cc_ctx *cc);
/* Frees the handle; fails (returns PX_E_INVAL) while mints or waits it started are pending. */
int cc_loop_free(struct cc_loop *l);
int cc_loop_fd(const struct cc_loop *l);
/* Mints and waits started through this loop and not finished yet. */
uint32_t cc_loop_pending(const struct cc_loop *l);

/*
 * Callback for a lookup that did not hit at once. status 0: e is a new reference the callee
 * owns; otherwise e is NULL and status says why (PX_E_FULL, PX_E_DOWN, PX_E_TIMEOUT, PX_E_GONE,
 * PX_E_HSM, PX_E_CRYPTO). hsm_wait_ns is how long this caller waited.
 */
typedef void (*cc_done_fn)(void *user, int status, struct cc_entry *e, uint64_t hsm_wait_ns);

enum cc_get_result { CC_HIT = 0, CC_PENDING = 1, CC_MINTED = 2 };

/*
 * The leaf for an upstream leaf certificate (borrowed; only its DER, names and validity are
 * read). verified says whether the upstream chain verified: if not, the forward-untrust CA
 * signs. Returns:
 *   CC_HIT    *out is a new reference, served from the cache;
 *   CC_MINTED *out is a new reference, minted right now (software CA: no HSM involved);
 *   CC_PENDING done(user, ...) will be called exactly once from cc_loop_poll on this thread;
 *   negative  an immediate error (HSM queue full or down, upstream certificate unusable), no
 *             callback. A cache miss never waits on the HSM here.
 */
PX_MUST_CHECK int cc_get(struct cc_loop *l, X509 *upstream, bool verified, enum cc_key_kind kk,
                         cc_done_fn done, void *user, struct cc_entry **out);

/* Runs finished mints and waits of this loop (callbacks fire here). Returns how many ran. */
int cc_loop_poll(struct cc_loop *l);

/* ---- X.509 helpers shared with the CLI -------------------------------------------------- */

/* Sets both signature AlgorithmIdentifiers of x for alg (RSA-PSS is not supported here). */
PX_MUST_CHECK int cc_x509_set_sigalg(X509 *x, enum hsm_alg alg);
/* Stores a DER signature in x (0 unused bits, as X.509 requires). */
PX_MUST_CHECK int cc_x509_set_signature(X509 *x, const uint8_t *sig, size_t len);
/* SHA-256 or SHA-384 (per alg) of x's re-encoded TBSCertificate. Returns digest length. */
PX_MUST_CHECK int cc_x509_tbs_digest(X509 *x, enum hsm_alg alg, uint8_t *out);

#endif /* CC_H */
