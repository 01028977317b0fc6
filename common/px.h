/* SPDX-License-Identifier: MIT */
/*
 * px.h - the common module: error idiom, guards, logging, time, config.
 * Owns nothing at run time but the log sink and the parsed configuration objects it returns.
 * Called from every thread; px_log is thread-safe (one write(2) per line).
 * Invariants: a px_cfg is immutable once px_cfg_load returns it.
 * Not here: anything that knows about TLS, certificates or PKCS#11.
 */
#ifndef PX_H
#define PX_H

#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define PX_MUST_CHECK __attribute__((warn_unused_result))
#define PX_PRINTF(a, b) __attribute__((format(printf, a, b)))

/* Project error codes: negative, from -4096 down, so they never collide with -errno. */
enum px_err {
    PX_E_CONFIG = -4096,  /* bad configuration */
    PX_E_CRYPTO = -4097,  /* OpenSSL failure */
    PX_E_HSM = -4098,     /* PKCS#11 call failed */
    PX_E_SHORT = -4099,   /* input too short / truncated */
    PX_E_PROTO = -4100,   /* malformed frame or message */
    PX_E_EXISTS = -4101,  /* refusing to overwrite state */
    PX_E_FULL = -4102,    /* bounded queue full */
    PX_E_TIMEOUT = -4103, /* deadline missed */
    PX_E_GONE = -4104,    /* peer process gone */
    PX_E_DOWN = -4105,    /* no HSM member can sign */
    PX_E_INVAL = -4106,   /* bad argument */
    PX_E_SHUTDOWN = -4107, /* component is shutting down */
    PX_E_OVERLOAD = -4108  /* refused at once: the queue ahead cannot finish by the deadline */
};

/* A short name for an error code (project code or -errno); never NULL. */
const char *px_strerror(int err);

#define PX_TRY(x)                                                                                  \
    do {                                                                                           \
        int px__r = (x);                                                                           \
        if (px__r < 0) {                                                                           \
            return px__r;                                                                          \
        }                                                                                          \
    } while (0)

#define PX_ENSURE(cond, err)                                                                       \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            return (err);                                                                          \
        }                                                                                          \
    } while (0)

#define PX_ENSURE_REF(p) PX_ENSURE((p) != NULL, PX_E_INVAL)

/* Only 1 counts as success for OpenSSL; the error queue is drained into the log here. */
#define PX_TRY_OSSL(call, err)                                                                     \
    do {                                                                                           \
        if ((call) != 1) {                                                                         \
            px_log_ossl_errors(__func__);                                                          \
            return (err);                                                                          \
        }                                                                                          \
    } while (0)

#define PX_BUG(msg) px_bug(__FILE__, __LINE__, (msg))
void px_bug(const char *file, int line, const char *msg) __attribute__((noreturn));

/* ---- logging ---------------------------------------------------------------------------- */

enum px_log_level { PX_LOG_ERROR = 0, PX_LOG_WARN, PX_LOG_INFO, PX_LOG_DEBUG };

/* Global level; set once at start-up (before threads), read everywhere. */
void px_log_set_level(enum px_log_level level);
enum px_log_level px_log_get_level(void);
/* Parses "error|warn|info|debug"; returns 0 and sets *out, or PX_E_INVAL. */
PX_MUST_CHECK int px_log_level_parse(const char *s, enum px_log_level *out);
/* Process tag printed in every line ("tlsmint", "signer:hsm0"); borrows a static string. */
void px_log_set_tag(const char *tag);
void px_log(enum px_log_level level, const char *mod, const char *fmt, ...) PX_PRINTF(3, 4);
void px_vlog(enum px_log_level level, const char *mod, const char *fmt, va_list ap);
void px_log_ossl_errors(const char *where);

/*
 * Rate-limited lines (px_lograte.c), for what an outsider can cause as often as they like:
 * client garbage, connections that were not redirected, a full connection table. Per call
 * site, the first PX_LOG_RL_BURST lines of each PX_LOG_RL_WINDOW_S seconds are logged; the
 * others are counted and reported once per window: "N more like <format> in the last 10 s".
 * Lock-free, any thread; the summary of a window is written when the site fires after it or
 * by px_log_tick. Every call is either logged or counted in exactly one summary.
 */
#define PX_LOG_RL_BURST 5
#define PX_LOG_RL_WINDOW_S 10
struct px_log_rl { /* one per call site, static and zeroed: use PX_LOG_RL */
    uint64_t win_ns;     /* start of the current window, 0 before the first call */
    uint64_t suppressed; /* calls not logged and not yet reported */
    uint32_t n;          /* calls in the current window */
    uint32_t listed;     /* on the list px_log_tick walks */
    struct px_log_rl *next;
    const char *mod, *fmt;
    int level;
};
#define PX_LOG_RL(level, mod, ...)                                                                 \
    do {                                                                                           \
        static struct px_log_rl px__rl_site;                                                       \
        px_log_rl(&px__rl_site, (level), (mod), __VA_ARGS__);                                      \
    } while (0)
void px_log_rl(struct px_log_rl *rl, enum px_log_level level, const char *mod, const char *fmt,
               ...) PX_PRINTF(4, 5);
/* Writes the summaries of windows that have ended; call about once a second (tlsmint run's
 * main thread does). */
void px_log_tick(void);
/* At exit: writes every count not reported yet, whether its window has ended or not. */
void px_log_flush(void);

/*
 * The files tlsmint logs to besides stderr. A line that cannot be written ([log] access =
 * /dev/full, a full disk, a writer that cannot keep up) is counted (px_sink_lost_total, the
 * tlsmint_log_dropped_total metric); the first loss is logged with its reason, later ones as a
 * count per PX_LOG_RL_WINDOW_S (px_log_tick), and the first line written again says how many
 * were lost. Any thread.
 */
enum px_sink { PX_SINK_ACCESS = 0, PX_SINK_AUDIT, PX_SINK_KEYLOG, PX_SINKS };
/* "access", "audit", "keylog" */
const char *px_sink_name(enum px_sink s);
/* One line for sink s (file path, borrowed for the call) was lost; reason: why (strerror). */
void px_sink_lost(enum px_sink s, const char *path, const char *reason);
/* One line for sink s was written (cheap unless lines were being lost). */
void px_sink_ok(enum px_sink s);
uint64_t px_sink_lost_total(enum px_sink s);

/* ---- systemd (px_notify.c; no-ops when not started by systemd) ------------------------- */

/* sd_notify(state), e.g. "READY=1", "RELOADING=1", "STOPPING=1". */
void px_notify(const char *state);
void px_notify_status(const char *fmt, ...) PX_PRINTF(1, 2);
/* Starts the WATCHDOG=1 thread when systemd asks for it (WatchdogSec=); it pings every half
 * period while alive(ctx) (NULL: always) is true. Returns 1 started, 0 not asked. */
PX_MUST_CHECK int px_notify_watchdog_start(bool (*alive)(void *ctx), void *ctx);
void px_notify_watchdog_stop(void);

/* ---- time ------------------------------------------------------------------------------- */

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t px_now_ns(void);

/* ---- processes -------------------------------------------------------------------------- */

/*
 * posix_spawn attributes for every child tlsmint starts (signers, the unwrap helper): an empty
 * signal mask and the default action for SIGHUP, SIGINT and SIGTERM, instead of the blocked
 * mask the spawning thread has in `tlsmint run`. The caller destroys attr. 0 or -errno.
 */
PX_MUST_CHECK int px_spawnattr_init(posix_spawnattr_t *attr);

/* ---- histograms (px_hist.c) ---------------------------------------------------------- */

#define PX_HIST_MAX 16
/* A cumulative histogram as Prometheus reads it; the owner serialises access. */
struct px_hist {
    const double *bounds_s; /* upper bounds in seconds, ascending, static storage */
    int n;
    uint64_t le[PX_HIST_MAX]; /* le[i]: observations <= bounds_s[i] */
    uint64_t count;
    double sum_s;
};
/* Empties h and gives it bounds (borrowed for h's life; at most PX_HIST_MAX are used). */
void px_hist_init(struct px_hist *h, const double *bounds_s, int n);
void px_hist_observe(struct px_hist *h, uint64_t ns);
/* NAME_bucket{LABELS,le="..."}, NAME_sum and NAME_count lines; labels may be "". */
void px_hist_write(FILE *o, const char *name, const char *labels, const struct px_hist *h);

/* ---- secrets ---------------------------------------------------------------------------- */

/* Wipes memory in a way the compiler cannot elide. */
void px_wipe(void *p, size_t n);

/*
 * Reads a small secret file (PIN) into buf (NUL-terminated, trailing newline stripped).
 * Refuses files readable by group or others, empty files and files larger than cap-1.
 * On error writes one line into err and returns a negative code; never logs the content.
 */
PX_MUST_CHECK int px_read_secret_file(const char *path, char *buf, size_t cap, char *err,
                                      size_t errlen);

/* ---- configuration ---------------------------------------------------------------------- */

#define PX_HSM_MAX_MEMBERS 16
#define PX_HSM_MAX_ENV 8

enum px_fail_mode { PX_FAIL_CLOSED = 0, PX_FAIL_OPEN };

/* ---- decryption policy: [policy], [rule.NAME], [profile.NAME] ---------------------------- */

#define PX_RULES_MAX 256    /* [rule.NAME] sections */
#define PX_PROFILES_MAX 32  /* [profile.NAME] sections */
#define PX_RULE_HOSTS 64    /* host patterns per rule (they share one 200-byte line) */
#define PX_RULE_NETS 16     /* CIDRs per dst or clients key */

/* PX_ACT_TUNNEL is never configured: traffic that is not TLS, passed through ([policy] non_tls) */
enum px_action { PX_ACT_INSPECT = 0, PX_ACT_BYPASS, PX_ACT_BLOCK, PX_ACT_TUNNEL };
enum px_non_tls { PX_NON_TLS_TUNNEL = 0, PX_NON_TLS_BLOCK };
/* "inspect", "bypass", "block", "tunnel" */
const char *px_action_name(enum px_action a);

/* An address block: family 4 or 6, prefix bits, port (0 = any port). addr in network order. */
struct px_cidr {
    uint8_t family;
    uint8_t bits;
    uint16_t port;
    uint8_t addr[16];
};

/*
 * "192.0.2.0/24", "192.0.2.1", "10.0.0.0/8:443", "[2001:db8::]/32:443", "[::1]:8443",
 * "2001:db8::/32" into *out. with_port false refuses a port. 0, or PX_E_INVAL (host bits set
 * beyond the prefix, bits out of range, bad address or port).
 */
PX_MUST_CHECK int px_cidr_parse(const char *s, bool with_port, struct px_cidr *out);
/* Whether the address (4 or 16 bytes, family 4 or 6) and port are inside the block. */
bool px_cidr_match(const struct px_cidr *c, int family, const uint8_t *addr, uint16_t port);

/*
 * Host patterns, lowercased, NUL-separated in one buffer: "name" (exactly that name),
 * "*.domain" or ".domain" (the domain and every name under it), IP literals as written.
 */
struct px_hosts {
    char buf[200];
    uint8_t off[PX_RULE_HOSTS], len[PX_RULE_HOSTS];
    bool suffix[PX_RULE_HOSTS]; /* ".domain": off/len name the ".domain" part */
    uint8_t n;
};
/*
 * A list separated by commas or spaces into *out. 0; PX_E_INVAL for a bad pattern, PX_E_FULL
 * for too many; the offending pattern is copied into bad.
 */
PX_MUST_CHECK int px_hosts_parse(const char *list, struct px_hosts *out, char *bad,
                                 size_t badcap);
/* Whether host (any case, at most 255 bytes) matches one of the patterns. */
bool px_hosts_match(const struct px_hosts *h, const char *host);
/* host lowercased (ASCII) into out, a trailing dot dropped: its length, or -1 when longer
 * than 255 bytes. Done once per connection, then px_hosts_match_lower for every rule. */
int px_host_lower(const char *host, char out[256]);
bool px_hosts_match_lower(const struct px_hosts *h, const char *low, size_t len);

enum px_cert_action { PX_CERT_UNTRUST = 0, PX_CERT_BLOCK };

/* OCSP: off; the upstream's stapled response; or that, else a fetch from the AIA responder */
enum px_ocsp_mode { PX_OCSP_OFF = 0, PX_OCSP_STAPLED, PX_OCSP_FETCH };
/* What a certificate status gets: a forward-trust leaf, a forward-untrust leaf, a block */
enum px_status_action { PX_STATUS_ALLOW = 0, PX_STATUS_UNTRUST, PX_STATUS_BLOCK };

/* [profile.NAME]: what an inspected connection's upstream certificate must pass. */
struct px_profile {
    char name[48];
    enum px_cert_action expired;          /* expired or not yet valid */
    enum px_cert_action untrusted_issuer; /* the chain does not verify */
    bool client_auth_block;               /* the upstream asks for a client certificate:
                                             block (else bypass, and remember) */
    int min_version, max_version;         /* TLS1_2_VERSION, TLS1_3_VERSION: both sides */
    bool unsupported_block;               /* a side cannot meet them (or no common cipher):
                                             block (else bypass) */
    enum px_ocsp_mode ocsp;
    int ocsp_timeout_ms;                  /* deadline of a fetch */
    enum px_status_action revoked;        /* untrust or block */
    enum px_status_action unknown_status; /* the responder does not know the certificate */
    enum px_status_action status_timeout; /* no usable answer within ocsp_timeout_ms */
    int line;
    int version_line;                     /* of the later of min_version / max_version */
};
/* The documented defaults (the built-in profile, and every [profile.NAME] before its keys). */
void px_profile_defaults(struct px_profile *p);

/* [rule.NAME]: every key given must match; the first matching rule in file order decides. */
struct px_rule {
    char name[48];
    enum px_action action;
    bool has_action;
    int profile;                  /* index in px_cfg.profiles, -1: built-in defaults */
    char profile_name[48];
    int profile_line;
    struct px_hosts hosts;
    struct px_cidr dst[PX_RULE_NETS];
    struct px_cidr clients[PX_RULE_NETS];
    uint8_t ndst, nclients;
    bool no_export;               /* export = no: kept out of every [export] sink */
    int export_line;              /* of its export key (0: none; refused unless inspect) */
    int line;                     /* of the section header */
};

/* ---- inbound inspection: [inbound], [inbound.NAME] ---------------------------------------- */

#define PX_INBOUND_MAX 16 /* [inbound.NAME] sections (each one key in the HSM) */

/* [inbound.NAME]: one of our own servers; its key lives in the HSM ([hsm] token). */
struct px_inbound_cfg {
    char name[48];
    char listen[128];      /* HOST:PORT clients connect to */
    char cert[256];        /* the server's certificate (PEM) */
    char chain[256];       /* intermediates sent after it (PEM), may be empty */
    char key_label[64];    /* its private key in the token, by label ... */
    char key_id[64];       /* ... or by hex CKA_ID */
    char backend[128];     /* IP:PORT the decrypted traffic goes to */
    bool backend_tls;      /* re-encrypt to the backend, verified */
    char backend_ca[256];  /* trust store for the backend (empty: [upstream] ca_file) */
    char backend_sni[256]; /* SNI and name checked on the backend (empty: none sent, IP) */
    char alpn[128];        /* as written: "h2,http/1.1" */
    uint8_t alpn_wire[128]; /* the same as ALPN wire bytes (length-prefixed names) */
    uint8_t alpn_wire_len;
    int line;              /* of the section header */
};

/* One HSM member: [hsm] itself, or an [hsm.NAME] section. */
#define PX_HSM_WORKERS_AUTO 0
#define PX_HSM_WORKERS_LIMIT 64

struct px_hsm_member_cfg {
    char name[32];          /* "hsm" for the primary, NAME for [hsm.NAME] */
    char module[256];       /* PKCS#11 module path */
    char token[33];         /* token label (PKCS#11 labels are 32 bytes) */
    char token_serial[17];  /* token serial; used instead of the label when set */
    char pin_file[256];     /* user PIN, 0600 */
    char key_label[64];     /* forward-trust private key label */
    char key_id[64];        /* hex CKA_ID; used when key_label is empty */
    char env[PX_HSM_MAX_ENV][256]; /* NAME=VALUE set in the signer before loading the module */
    int n_env;
    int line;               /* config line of the section header, for messages */
};

struct px_cfg {
    char path[256];

    /* [listen] */
    char listen_explicit[128];
    char listen_transparent[128];
    bool listen_tproxy; /* transparent listener takes TPROXY'd traffic (IP_TRANSPARENT) */
    int threads;
    int listen_max_connections; /* 0 = as many as RLIMIT_NOFILE allows (two fds each) */

    /* [hsm] shared settings + members (members[0] is [hsm]) */
    struct px_hsm_member_cfg members[PX_HSM_MAX_MEMBERS];
    int n_members;
    int hsm_workers;     /* signer sessions; PX_HSM_WORKERS_AUTO: sized at run time */
    int hsm_workers_min; /* auto: the bounds it moves between */
    int hsm_workers_max;
    int hsm_batch;
    int hsm_sign_timeout_ms;
    int hsm_hang_timeout_ms;
    int hsm_queue_size;
    enum px_fail_mode fail_mode;
    int recovery_retries;
    int recovery_backoff_max_ms;
    bool rsa_pss;

    /* [ca] */
    char ca_forward_trust_cert[256];
    char ca_forward_trust_chain[256];
    char ca_forward_untrust_cert[256];
    char ca_forward_untrust_key[256];
    int ca_leaf_max_days;
    int ca_reminder_days; /* warn when a CA or served certificate ends within this many days */

    /* [cache] */
    int cache_size;
    int cache_ttl_s;

    /* [upstream] */
    char upstream_ca_file[256];
    bool upstream_verify;
    uint32_t upstream_mark;
    int resolve_timeout_ms;  /* a CONNECT name's lookup as a whole */
    int upstream_session_cache; /* upstream TLS sessions kept per loop (0 = none) */
    int dns_cache_max_ttl_s; /* answers kept for their TTL, at most this */
    int dns_negative_ttl_s;  /* "no such name" kept this long */
    int connect_timeout_ms;  /* connecting upstream, every address of the name included */

    /* [policy] */
    char policy_bypass[1024];
    struct px_hosts policy_bypass_hosts; /* the list parsed: a bypass rule evaluated first */
    enum px_action policy_default;
    enum px_non_tls policy_non_tls;     /* first client bytes are not a ClientHello */
    int policy_first_byte_ms;           /* client silent this long: maybe server-first; 0 = off */
    int policy_proof_ttl_s;             /* how long a proven (or failed) name is remembered */
    bool policy_unproven_block;         /* a name-based bypass whose name is not proven: block
                                           (else inspect) */
    struct px_rule rules[PX_RULES_MAX]; /* file order */
    int n_rules;
    struct px_profile profiles[PX_PROFILES_MAX];
    int n_profiles;
    int default_profile;                /* index of [profile.default], or -1: built-in */
    struct px_profile builtin_profile;  /* profile -1: px_profile_defaults */

    /* [exclusions] */
    int excl_ttl_s;        /* an exclusion's life */
    int excl_pinned_alerts; /* pinned-client events before a host is excluded (1); 0 = off */
    int excl_size;         /* entries at most (LRU); read at start only */

    /* [log] */
    enum px_log_level log_level;
    char log_access[256];
    char log_keylog[256];

    /* [master_key] */
    char mk_file[256];
    int mk_lifetime_days;
    int mk_reminder_days;
    struct px_hsm_member_cfg mk_hsm; /* [master_key] module/env/token/pin_file: where the
                                        wrapping key is, when not the [hsm] member */

    /* [cache] leaf_pool: sealed leaf keys; [log] audit */
    char cache_leaf_pool[256];
    char log_audit[256];

    /* [run] */
    char run_user[64]; /* drop to this user after binding; empty = stay as started */

    /* [cache] shared tier (Redis) and warm-restart snapshot; cache_shared empty = off */
    char cache_shared[256];            /* as written: redis://HOST:PORT/DB or unix:/path */
    char cache_shared_host[128];       /* parsed: TCP host, or empty for a unix socket */
    char cache_shared_unix[200];       /* parsed: unix socket path */
    int cache_shared_port;
    int cache_shared_db;
    char cache_shared_password_file[256];
    int cache_shared_timeout_ms;
    int cache_shared_lock_ms;
    char cache_snapshot[256];          /* sealed snapshot file; empty = off */
    int cache_snapshot_interval_s;

    /* [export] decrypted traffic as pcap (dataplane/dp_export.c); every sink empty = off */
    char export_pcap[256];      /* strftime pattern of the rolling files */
    int export_rotate_mb;
    int export_rotate_s;
    int export_keep;            /* files kept, older ones deleted; 0 = keep all */
    char export_listen[128];    /* PCAP-over-IP HOST:PORT */
    char export_mirror_if[16];  /* live copy on this interface */
    int export_max_bytes;       /* per connection and direction; 0 = all */
    int export_queue_mb;

    /* [inbound] and [inbound.NAME] (file order) */
    int inbound_ticket_rotate_s; /* session ticket keys: a new one this often */
    struct px_inbound_cfg inbound[PX_INBOUND_MAX];
    int n_inbound;

    /* [admin] */
    char admin_socket[256];
    char admin_metrics[128];
};

/* Profile i of cfg (-1: the built-in defaults). */
static inline const struct px_profile *px_cfg_profile(const struct px_cfg *cfg, int i)
{
    return i >= 0 ? &cfg->profiles[i] : &cfg->builtin_profile;
}

/* Fills every field with its documented default (no HSM member configured yet). */
void px_cfg_defaults(struct px_cfg *cfg);

/*
 * Parses and validates an INI file. Returns 0 and a filled *cfg, or a negative code with one
 * line "FILE:LINE: [section] key: reason" in err. Unknown sections/keys and bad values are errors.
 */
PX_MUST_CHECK int px_cfg_load(const char *path, struct px_cfg *cfg, char *err, size_t errlen);
/* Same, from a string (for tests and fuzzing); name is used in messages. */
PX_MUST_CHECK int px_cfg_load_string(const char *name, const char *text, struct px_cfg *cfg,
                                     char *err, size_t errlen);

/* ---- DER writing (small, bounded) ------------------------------------------------------- */

/* Writes tag and the DER length of len into out (at most 6 bytes); returns bytes written. */
size_t px_der_header(uint8_t *out, uint8_t tag, size_t len);
/* out = tag | length | content (content may overlap out: memmove). Returns total or PX_E_SHORT. */
PX_MUST_CHECK int px_der_wrap(uint8_t *out, size_t cap, uint8_t tag, const uint8_t *content,
                              size_t len);
/* A DER INTEGER from an unsigned big-endian number. Returns total or PX_E_SHORT. */
PX_MUST_CHECK int px_der_uint(uint8_t *out, size_t cap, const uint8_t *be, size_t len);

/* ---- files at rest ---------------------------------------------------------------------- */

/* AES-256-GCM under key; role (e.g. "leaf-key-pool") and format version are authenticated. */
PX_MUST_CHECK int px_seal(const uint8_t key[32], const char *role, const uint8_t *pt, size_t ptlen,
                          uint8_t **out, size_t *outlen);
/* Opens a sealed buffer; PX_E_CRYPTO for a wrong key or tampering, PX_E_PROTO for another role
 * or a file that is not sealed. *out is new (NUL-terminated), the caller wipes and frees it. */
PX_MUST_CHECK int px_unseal(const uint8_t key[32], const char *role, const uint8_t *in,
                            size_t inlen, uint8_t **out, size_t *outlen);
/* HKDF-SHA256(key, info) -> 32 bytes. */
PX_MUST_CHECK int px_hkdf(const uint8_t key[32], const char *info, uint8_t out[32]);
/* temp + fsync + rename + fsync(dir): a crash leaves the old file or the new one. */
PX_MUST_CHECK int px_write_atomic(const char *path, const void *data, size_t len, int mode);
/* Reads a regular file of at most max bytes (NUL-terminated copy). */
PX_MUST_CHECK int px_read_file(const char *path, size_t max, uint8_t **out, size_t *outlen);

#endif /* PX_H */
