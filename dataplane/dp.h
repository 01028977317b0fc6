/* SPDX-License-Identifier: MIT */
/*
 * dp.h - the public interface of the dataplane: io_uring loops that accept clients (explicit
 * HTTP CONNECT and transparent REDIRECT listeners), terminate their TLS with leaves from
 * certcache, connect and verify upstream, and relay decrypted bytes both ways.
 * Not here: minting and caching (certcache/), PKCS#11 (hsm_offload/).
 */
#ifndef DP_H
#define DP_H

#include <stdint.h>

#include "cc.h"
#include "hsm.h"
#include "px.h"

struct dp_server;

#define DP_OUTCOMES 13
/* "none", "ok", "bypass", "refused_hsm", "upstream_failed", "client_error", "bad_request",
 * "timeout", "shutdown", "fail_open", "dns_failed", "blocked", "excluded" */
const char *dp_outcome_name(int outcome);

/* What an OCSP fetch ended with: good, revoked, unknown (the responder's statuses); timeout (no
 * answer within [profile] ocsp_timeout_ms), error (refused, not HTTP 200, a response that does
 * not parse or verify), busy (too many fetches in flight on the loop) */
enum dp_ocsp_result {
    DP_OCSP_GOOD = 0, DP_OCSP_REVOKED, DP_OCSP_UNKNOWN, DP_OCSP_TIMEOUT, DP_OCSP_ERROR,
    DP_OCSP_BUSY, DP_OCSP_RESULTS
};
/* "good", "revoked", "unknown", "timeout", "error", "busy" */
const char *dp_ocsp_result_name(int r);

struct sockaddr;

/* What the policy decided for a connection, and which rule said so. */
struct dp_decision {
    enum px_action action;
    int index;        /* in cfg->rules; DP_RULE_BYPASS_LIST or DP_RULE_DEFAULT */
    const char *rule; /* the rule's name, "bypass" or "default" (borrowed from cfg or static) */
    int profile;      /* in cfg->profiles, -1: the built-in profile */
    bool no_export;   /* the rule says export = no: kept out of every [export] sink */
};
#define DP_RULE_BYPASS_LIST (-1) /* [policy] bypass */
#define DP_RULE_DEFAULT (-2)     /* [policy] default */

/*
 * The decision for a connection to host (SNI or CONNECT host; NULL or "" when there is none),
 * at dst (its original destination, AF_INET or AF_INET6, IPv4-mapped IPv6 counts as IPv4),
 * from client: the [policy] bypass list first, then [rule.NAME] in file order (every key a
 * rule gives must match), else [policy] default. Pure: reads cfg only (borrowed), any thread.
 */
struct dp_decision dp_policy_decide(const struct px_cfg *cfg, const char *host,
                                    const struct sockaddr *dst, const struct sockaddr *client);

/* One line of tlsmint_policy_decisions_total. */
struct dp_policy_count {
    char rule[48];      /* copied: a reload may free the configuration it came from */
    const char *action; /* static */
    uint64_t n;
};
/* Decisions taken under the configuration in use (a reload starts them from zero): at most
 * cap entries (rules in file order, then "bypass" and "default"); returns how many. */
int dp_server_policy_counts(struct dp_server *s, struct dp_policy_count *out, int cap);
/* The exclusion cache: hosts learned as impossible to decrypt, passed through until expiry. */
enum dp_excl_reason { DP_EXCL_NONE = 0, DP_EXCL_CLIENT_AUTH, DP_EXCL_PINNED, DP_EXCL_REASONS };
/* "none", "client-auth", "pinned" */
const char *dp_excl_reason_name(int reason);
struct dp_excl_info {
    char host[256]; /* SNI, or the destination address */
    uint16_t port;
    int reason;
    int64_t age_s, expires_in_s;
    uint64_t hits;  /* connections passed through because of it */
};
/* At most cap entries, most recently used first; returns how many. */
int dp_server_exclusions(struct dp_server *s, struct dp_excl_info *out, int cap);
/* Removes the entries of host (all of them when NULL or ""); returns how many. */
int dp_server_exclusions_clear(struct dp_server *s, const char *host);
/* Entries now, and entries added since start by reason. */
void dp_server_exclusions_stats(struct dp_server *s, uint64_t *entries,
                                uint64_t added[DP_EXCL_REASONS]);

/* The policy settings new connections use (a copy: the configuration may go on a reload). */
struct dp_policy_info {
    int rules;
    enum px_action def;
    bool bypass_list;
    int excl_ttl_s, excl_pinned_alerts;
};
void dp_server_policy_info(struct dp_server *s, struct dp_policy_info *out);

/* Counters summed over all loops (a consistent-enough snapshot). */
struct dp_stats {
    uint64_t accepted, active, closed;
    uint64_t handshakes_ok, handshakes_failed;
    uint64_t bypassed, refused_hsm, upstream_failed, bad_request;
    uint64_t bytes_c2u, bytes_u2c;
    uint64_t cache_hit, cache_miss; /* coalesced waits: cc_stats */
    uint64_t upstream_resumed, upstream_full, fail_open;
    uint64_t refused_limit; /* new connections closed at [listen] max_connections */
    uint64_t outcome[DP_OUTCOMES]; /* closed connections by outcome, see dp_outcome_name() */
    uint64_t non_tls[2][2];        /* [not-tls, server-first][tunnel, block] */
    uint64_t proofs[2];            /* name-proof handshakes: [proven, not proven] */
    uint64_t unproven[2];          /* name-based bypasses refused: [sni-mismatch, unproven-name] */
    uint64_t unsupported[2];       /* a side cannot meet the profile: [bypass, block] */
    uint64_t ocsp[DP_OCSP_RESULTS]; /* OCSP fetches by result, see dp_ocsp_result_name() */
};

/* Name resolution for CONNECT targets (one c-ares thread), a snapshot. */
enum dp_dns_result {
    DP_DNS_OK = 0,
    DP_DNS_NXDOMAIN, /* no such name, or no address for it */
    DP_DNS_TIMEOUT,
    DP_DNS_ERROR,
    DP_DNS_CACHED, /* answered from the cache (positive or negative), no query */
    DP_DNS_RESULTS
};
/* "ok", "nxdomain", "timeout", "error", "cached" */
const char *dp_dns_result_name(int result);
struct dp_dns_stats {
    uint64_t lookups[DP_DNS_RESULTS]; /* one per CONNECT that needed a name */
    struct px_hist duration;          /* lookups that were not answered from the cache */
    uint32_t names, names_max;        /* cache entries (pending ones included), bound */
    uint32_t in_flight;               /* names being looked up now (one query each) */
    uint32_t waiting;                 /* connections waiting for them */
    char state[200];                  /* "c-ares 1.18.1, nameservers 10.0.0.1:53" or why not */
};

/*
 * Creates the listeners and N loop threads (not started). Borrows cfg, pool and cc for its
 * life. NULL and one line in err when a listener cannot be opened or TLS contexts fail.
 */
struct dp_server *dp_server_new(const struct px_cfg *cfg, struct hsm_pool *pool, struct cc_ctx *cc,
                                char *err, size_t errlen);
/*
 * Applies a new configuration and certificate cache to new connections; open connections keep
 * theirs. Takes one reference of cc on success (dropped when the last connection using it
 * ends); copies cfg (borrowed for the call only). Listeners, threads and [hsm] are not
 * changed. dp_server_new takes its own reference of its cc.
 */
PX_MUST_CHECK int dp_server_reload(struct dp_server *s, const struct px_cfg *cfg,
                                   struct cc_ctx *cc, char *err, size_t errlen);
/* Starts the loops and returns at once. */
PX_MUST_CHECK int dp_server_start(struct dp_server *s);
/* Stops accepting, lets open connections finish for up to drain_ms, then closes the rest. */
void dp_server_stop(struct dp_server *s, int drain_ms);
void dp_server_free(struct dp_server *s);
void dp_server_stats(struct dp_server *s, struct dp_stats *out);
/* Counters of the resolver. */
void dp_server_dns_stats(struct dp_server *s, struct dp_dns_stats *out);
/* Decrypted traffic export ([export], dataplane/dp_export.c): per sink counters and state. */
enum dp_export_sink { DP_EXPORT_FILE = 0, DP_EXPORT_POIP, DP_EXPORT_MIRROR, DP_EXPORT_SINKS };
extern const char *const dp_export_sink_names[DP_EXPORT_SINKS]; /* metric label values */
struct dp_export_stats {
    bool on[DP_EXPORT_SINKS];
    uint64_t packets[DP_EXPORT_SINKS], bytes[DP_EXPORT_SINKS], dropped[DP_EXPORT_SINKS];
    uint64_t readers; /* PCAP-over-IP readers connected */
    uint64_t excluded; /* intercepted connections kept out by a rule's export = no */
    char state[DP_EXPORT_SINKS][200];
};
void dp_server_export_stats(struct dp_server *s, struct dp_export_stats *out);
/* Inbound inspection ([inbound.NAME], dataplane/dp_inbound.c): per listener. */
struct dp_inbound_stats {
    char name[48];
    int port;                            /* bound port */
    uint64_t full, resumed;              /* handshakes done: with an HSM signature, or resumed */
    uint64_t failed;                     /* handshakes that failed, for any reason; of them: */
    uint64_t refused_rsa, refused_hsm;   /* RSA-only clients; no signature (deadline, down, ...) */
    uint64_t backend_failed;
    uint64_t sign_ok, sign_failed, sign_refused; /* [0] only, all listeners: HSM signatures */
};
/* At most cap listeners, file order; returns how many. */
int dp_server_inbound_stats(struct dp_server *s, struct dp_inbound_stats *out, int cap);
/* Counters of the certificate cache new connections use now. */
void dp_server_cache_stats(struct dp_server *s, struct cc_stats *out);
/* 0 at start, +1 per successful reload. */
unsigned dp_server_generation(struct dp_server *s);
/* Bound addresses (useful when the config says port 0). */
int dp_server_explicit_port(const struct dp_server *s);
int dp_server_transparent_port(const struct dp_server *s);

#endif /* DP_H */
