/* SPDX-License-Identifier: MIT */
/*
 * hsm.h - the public interface of hsm_offload: asynchronous signatures by keys held in HSMs.
 *
 * Two halves:
 *  - the signing pool (proxy side): a bounded job queue any thread submits to without waiting,
 *    one dispatcher thread that batches jobs into frames to one signer child process per HSM
 *    member, deadlines enforced from outside the signer, completions delivered to the submitting
 *    loop through an MPSC list plus an eventfd (struct hsm_cq) that an io_uring ring can watch;
 *  - management calls (init, tooling, benchmarks, tests) that load a PKCS#11 module in the
 *    calling process. The network-facing proxy never calls those: its module lives only in the
 *    signer processes.
 * Not here: X.509 (certcache/ and cli/), connection state (dataplane/).
 */
#ifndef HSM_H
#define HSM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "px.h"

/* What the signer computes over the caller's digest. Output is always DER, ready for X.509. */
enum hsm_alg {
    HSM_ALG_ECDSA_SHA256 = 1, /* digest: 32 bytes; output: DER ECDSA-Sig-Value */
    HSM_ALG_ECDSA_SHA384,     /* digest: 48 bytes */
    HSM_ALG_RSA_PKCS1_SHA256, /* digest: 32 bytes; output: the RSA signature */
    HSM_ALG_RSA_PSS_SHA256    /* digest: 32 bytes; MGF1-SHA256, salt 32 */
};

enum hsm_key_type { HSM_KEY_NONE = 0, HSM_KEY_EC, HSM_KEY_RSA };

enum hsm_member_state {
    HSM_MEMBER_STARTING = 0, /* signer spawned, waiting for its hello */
    HSM_MEMBER_UP,           /* signing */
    HSM_MEMBER_RECOVERING,   /* signer died or hung; respawn scheduled */
    HSM_MEMBER_DOWN          /* out of retries, or refused (key mismatch) */
};

const char *hsm_member_state_name(enum hsm_member_state s);
const char *hsm_alg_name(enum hsm_alg alg);
/* Digest length for alg (32 or 48). */
size_t hsm_alg_digest_len(enum hsm_alg alg);
/* PKCS#11 return code name ("CKR_PIN_INCORRECT"); never NULL. */
const char *hsm_ckr_name(unsigned long rv);

#define HSM_SIG_MAX 512
#define HSM_PUB_MAX 1024

/* What a signer found on its token, reported once per (re)start. */
struct hsm_token_info {
    char serial[17];
    char label[33];
    char manufacturer[33];
    char model[17];
    char module_desc[65];  /* library description from C_GetInfo */
    bool logged_in;
    enum hsm_key_type key_type;
    int key_bits;          /* 256/384 for EC, modulus bits for RSA */
    char key_label[64];
    uint8_t pub_der[HSM_PUB_MAX]; /* SubjectPublicKeyInfo, if the token has the public key */
    uint16_t pub_len;
};

/*
 * Keys a signer signs with besides the forward-trust key (job key 0): key 1 + i is the server
 * key of the configuration's [inbound.NAME] number i (file order).
 */
#define HSM_XKEYS_MAX 16

/* What a signer found for one extra key, reported once per (re)start. */
struct hsm_key_info {
    bool found;                   /* private key there, public key readable */
    enum hsm_key_type key_type;
    int key_bits;
    char label[64];               /* label (or hex id) looked for */
    char err[160];                /* why not found */
    uint16_t pub_len;
    uint8_t pub_der[HSM_PUB_MAX]; /* SubjectPublicKeyInfo */
};

/* One member's statistics, a consistent snapshot. */
struct hsm_member_stats {
    char name[32];
    enum hsm_member_state state;
    int pid;                 /* signer pid, 0 when none */
    uint64_t ops;            /* successful signatures */
    uint64_t errors;         /* jobs that failed in the signer */
    uint64_t ops_inbound;    /* of ops: by [inbound.NAME] server keys (the rest: minting) */
    uint64_t errors_inbound; /* of errors: the same */
    uint64_t timeouts;       /* jobs whose deadline passed while at this member */
    uint64_t gone;           /* jobs lost with a dead signer */
    uint64_t respawns;       /* signer (re)starts after the first */
    uint64_t kills;          /* signers killed for hanging */
    uint32_t inflight;       /* jobs sent to the signer, not answered */
    uint32_t rv_codes[8];    /* distinct CK_RVs seen on failures ... */
    uint64_t rv_counts[8];   /* ... and how often */
    int n_rv;
    double lat_p50_us, lat_p90_us, lat_p99_us, lat_max_us; /* submit to completion, successes */
    /* the same latencies (successes) as a cumulative histogram, 100 us to 1 s */
    struct px_hist lat_hist;
    char last_error[160];
    double state_age_s;      /* time in the current state */
    double last_recovery_ms; /* from losing the member to its next good canary signature */
    uint64_t recoveries;
    struct hsm_token_info token;
    /* sizing ([hsm] workers = auto moves between workers_min and workers_max) */
    bool workers_auto;
    uint32_t workers;        /* sessions signing at once now */
    uint32_t workers_min, workers_max;
    uint32_t sessions_open;  /* worker sessions the signer reports open */
    uint64_t workers_grows, workers_shrinks;
    double workers_change_age_s;
    char workers_reason[200]; /* the last change and why ("grow 2 -> 13: ...") */
    char workers_code[16];    /* short form: start, fixed, rate, backlog, deadline, idle, ceiling */
    double svc_us;            /* measured service time of one signature in the HSM */
    double blocked_us;        /* of it, off this machine's CPUs: what more sessions overlap */
    double queue_wait_us;     /* mean wait before a session took a job (last 100 ms) */
    double rate;              /* jobs/s sent to this member (smoothed) */
};

/* Pool-wide counters. */
struct hsm_pool_stats {
    uint64_t refused_overload; /* PX_E_OVERLOAD: could not finish by the deadline */
    uint64_t refused_full;     /* PX_E_FULL */
    uint64_t refused_down;     /* PX_E_DOWN */
    uint32_t queue_depth;
    uint32_t in_system;        /* jobs submitted and not completed */
    double capacity_per_s;     /* signatures/s admission control plans with */
};

/* ---- signing pool ----------------------------------------------------------------------- */

struct hsm_pool;
struct hsm_cq;

/* A finished job, as a completion callback sees it. sig borrows the job's buffer: copy it. */
struct hsm_result {
    void *user;              /* as given to hsm_sign_submit */
    int status;              /* 0 ok, PX_E_TIMEOUT, PX_E_GONE, PX_E_DOWN, PX_E_HSM, ... */
    unsigned long ck_rv;     /* PKCS#11 code when status is PX_E_HSM */
    uint64_t latency_ns;     /* submit to completion */
    const uint8_t *sig;
    size_t sig_len;
};

typedef void (*hsm_done_fn)(void *ctx, const struct hsm_result *res);

/*
 * Spawns one signer per configured HSM member (exe is the tlsmint binary; the signer is its
 * internal "__signer" subcommand) and waits up to the hang timeout for each hello. Call it before
 * creating threads that fork-sensitive code might race with. Fails (NULL, one line in err) when
 * no member comes up; members that fail later are respawned with back-off.
 * Borrows cfg for the life of the pool.
 */
struct hsm_pool *hsm_pool_new(const struct px_cfg *cfg, const char *exe, char *err, size_t errlen);
/* Stops the dispatcher, completes every outstanding job with PX_E_SHUTDOWN, kills the signers. */
void hsm_pool_free(struct hsm_pool *pool);

/* Completion queue of one consumer thread. Its eventfd becomes readable on empty -> non-empty. */
struct hsm_cq *hsm_cq_new(void);
/* Frees the queue; the caller must have drained every job it submitted through it. */
void hsm_cq_free(struct hsm_cq *cq);
int hsm_cq_fd(const struct hsm_cq *cq);
/* Makes the cq's eventfd readable (any thread): lets a layer above share the one fd a loop watches. */
void hsm_cq_wake(struct hsm_cq *cq);
/*
 * Calls fn for every finished job in submission-completion order, returns the jobs to the pool,
 * and returns how many ran. Resets the eventfd. Only the owning thread calls it.
 */
int hsm_cq_drain(struct hsm_cq *cq, hsm_done_fn fn, void *ctx);

/*
 * Queues one signature. Never waits: returns 0 (exactly one completion will follow on cq), or
 * PX_E_FULL (queue full), PX_E_DOWN (no member can sign now), PX_E_OVERLOAD (the jobs ahead, at
 * the rate the members sign, cannot finish before this job's deadline), PX_E_INVAL,
 * PX_E_SHUTDOWN, with no completion. timeout_ms 0 means [hsm] sign_timeout_ms. Borrows digest
 * (copied).
 */
PX_MUST_CHECK int hsm_sign_submit(struct hsm_pool *pool, struct hsm_cq *cq, enum hsm_alg alg,
                                  const uint8_t *digest, size_t digest_len, uint32_t timeout_ms,
                                  void *user);

/*
 * The same with extra key `key` (1..HSM_XKEYS_MAX, an [inbound.NAME] server key; 0 is the
 * forward-trust key, as hsm_sign_submit). PX_E_INVAL also when no member found that key.
 */
PX_MUST_CHECK int hsm_sign_submit_key(struct hsm_pool *pool, struct hsm_cq *cq, int key,
                                      enum hsm_alg alg, const uint8_t *digest, size_t digest_len,
                                      uint32_t timeout_ms, void *user);
/*
 * What the first member that came up found for extra key `key` (1..the configuration's
 * [inbound.NAME] count): 0 and *out filled, or PX_E_INVAL for a key index not configured.
 */
PX_MUST_CHECK int hsm_pool_key_info(struct hsm_pool *pool, int key, struct hsm_key_info *out);

/* The signature algorithm matching the pool's key (first member that reported one). */
PX_MUST_CHECK int hsm_pool_alg(const struct hsm_pool *pool, enum hsm_alg *out);
int hsm_pool_members(const struct hsm_pool *pool);
/* Number of members that can sign now. */
int hsm_pool_members_up(const struct hsm_pool *pool);
void hsm_pool_member_stats(struct hsm_pool *pool, int idx, struct hsm_member_stats *out);
/*
 * Operator commands, carried out by the dispatcher thread soon after the call:
 * close every PKCS#11 session of every member (C_CloseAllSessions, "clear session all"; the
 * signers' workers reopen theirs on their next signature), and give members that are down
 * (out of recovery retries, or refused) another start.
 */
void hsm_pool_clear_sessions(struct hsm_pool *pool);
void hsm_pool_recover(struct hsm_pool *pool);
/* Total jobs waiting in the dispatcher (not yet sent to a signer). */
uint32_t hsm_pool_queue_depth(struct hsm_pool *pool);
void hsm_pool_stats(struct hsm_pool *pool, struct hsm_pool_stats *out);

/*
 * Sets the member's `env` lines (NAME=VALUE, e.g. SOFTHSM2_CONF) in this process, before its
 * module is loaded here. Returns 0 or PX_E_CONFIG.
 */
PX_MUST_CHECK int hsm_member_setenv(const struct px_hsm_member_cfg *m);

/* Signer entry point ("tlsmint __signer"): runs until the proxy closes fd; returns exit code. */
int hsm_signer_main(int fd, const char *config_path, int member_idx);

/* ---- management (loads the module in this process; never in the proxy) -------------------- */

struct hsm_direct;

/* Opens the member's token, logs in and finds the key. NULL + one line in err on failure. */
struct hsm_direct *hsm_direct_open(const struct px_hsm_member_cfg *m, char *err, size_t errlen);
void hsm_direct_close(struct hsm_direct *d);
const struct hsm_token_info *hsm_direct_info(const struct hsm_direct *d);
/* Signs digest with the member's key. sig must hold HSM_SIG_MAX bytes. Returns sig length. */
PX_MUST_CHECK int hsm_direct_sign(struct hsm_direct *d, enum hsm_alg alg, const uint8_t *digest,
                                  size_t digest_len, uint8_t *sig, unsigned long *ck_rv);
/* Opens one more session on the same token (for benchmarks: one per thread). */
struct hsm_direct *hsm_direct_clone(struct hsm_direct *d, char *err, size_t errlen);

/*
 * AES-256 keys in the token for wrapping the master key (management only; p11-kit's RPC refuses
 * AES mechanisms, so these need the module loaded directly).
 * keygen: sensitive, never extractable, token object labelled label.
 * gcm: CKM_AES_GCM with the key labelled label; encrypt writes ciphertext||tag (inlen+16).
 */
PX_MUST_CHECK int hsm_direct_aes_keygen(struct hsm_direct *d, const char *label, char *err,
                                        size_t errlen);
PX_MUST_CHECK int hsm_direct_aes_gcm(struct hsm_direct *d, const char *label, bool encrypt,
                                     const uint8_t iv[12], const uint8_t *aad, size_t aadlen,
                                     const uint8_t *in, size_t inlen, uint8_t *out,
                                     size_t *outlen, char *err, size_t errlen);

enum hsm_keygen { HSM_KEYGEN_EC_P256 = 1, HSM_KEYGEN_EC_P384, HSM_KEYGEN_RSA_2048,
                  HSM_KEYGEN_RSA_3072 };

/*
 * Initialises a free slot's token (label, SO PIN, user PIN) and generates a key pair inside it
 * (sensitive, never extractable). Module environment (SOFTHSM2_CONF) must be set by the caller.
 * Writes the public key's SubjectPublicKeyInfo into pub (HSM_PUB_MAX). Returns its length.
 */
PX_MUST_CHECK int hsm_mgmt_create_token_and_key(const char *module, const char *token_label,
                                                const char *so_pin, const char *user_pin,
                                                const char *key_label, enum hsm_keygen kind,
                                                uint8_t *pub, char *err, size_t errlen);

/*
 * Generates a key pair labelled key_label with CKA_ID id inside member's existing token (login
 * with its PIN file): sensitive, never extractable, signing only. Refuses (PX_E_EXISTS) when a
 * private key of that label is there already. Module environment must be set by the caller.
 * Writes the SubjectPublicKeyInfo into pub (HSM_PUB_MAX); returns its length.
 */
PX_MUST_CHECK int hsm_mgmt_keygen(const struct px_hsm_member_cfg *member, const char *key_label,
                                  enum hsm_keygen kind, uint8_t *id, size_t idlen, uint8_t *pub,
                                  char *err, size_t errlen);

#endif /* HSM_H */
