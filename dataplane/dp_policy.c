/* SPDX-License-Identifier: MIT */
/*
 * dp_policy.c - the decision for a new connection (the S_POLICY stage): once its ClientHello
 * is read, the connection gets its name (SNI, else the CONNECT host or the destination address)
 * and is inspected (upstream TLS next), bypassed (relayed untouched) or blocked. The decision
 * itself, dp_policy_decide, is a pure function of the configuration and (host, dst, client): the
 * [policy] bypass list first, then the [rule.NAME] sections in file order, else [policy]
 * default. A block is an access_denied alert, or a 403 page on a leaf of ours when the client
 * offered http/1.1 (the S_BLOCK_PAGE stage, here too).
 * Owns, per generation, the decision counters and the key that signs the stand-in upstream
 * certificates of block pages (dp_policy_load / dp_policy_unload).
 * Threads: load/unload on the main thread; the stages on loop threads, the config read-only.
 * Invariants: the rules are parsed and validated with the configuration (common/px_cfg.c), so
 * matching allocates nothing and cannot fail; a blocked connection is never relayed upstream.
 * Not here: the ClientHello itself (dp_tls.c), splicing (dp_relay.c), the block page's leaf
 * (dp_leaf.c), CIDR and host-pattern parsing (common/px_match.c).
 */
#include "dp_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/err.h>

/* The address (4 or 16 bytes), family (4, 6; 0 = none) and port of sa; IPv4-mapped -> IPv4. */
static int addr_of(const struct sockaddr *sa, const uint8_t **a, uint16_t *port)
{
    if (sa == NULL) {
        return 0;
    }
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        *a = (const uint8_t *)&s4->sin_addr;
        *port = ntohs(s4->sin_port);
        return 4;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        *a = s6->sin6_addr.s6_addr;
        *port = ntohs(s6->sin6_port);
        if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
            *a += 12;
            return 4;
        }
        return 6;
    }
    return 0;
}

static bool nets_match(const struct px_cidr *n, int count, int fam, const uint8_t *a,
                       uint16_t port)
{
    if (fam == 0) {
        return false;
    }
    for (int i = 0; i < count; i++) {
        if (px_cidr_match(&n[i], fam, a, port)) {
            return true;
        }
    }
    return false;
}

struct dp_decision dp_policy_decide(const struct px_cfg *cfg, const char *host,
                                    const struct sockaddr *dst, const struct sockaddr *client)
{
    struct dp_decision d = {.action = cfg->policy_default,
                            .index = DP_RULE_DEFAULT,
                            .rule = "default",
                            .profile = cfg->default_profile};
    char low[256];
    int ll = host != NULL && host[0] != '\0' ? px_host_lower(host, low) : -1;
    bool named = ll > 0;
    if (named && cfg->policy_bypass_hosts.n > 0 &&
        px_hosts_match_lower(&cfg->policy_bypass_hosts, low, (size_t)ll)) {
        d.action = PX_ACT_BYPASS;
        d.index = DP_RULE_BYPASS_LIST;
        d.rule = "bypass";
        return d;
    }
    const uint8_t *da = NULL, *ca = NULL;
    uint16_t dport = 0, cport = 0;
    int dfam = addr_of(dst, &da, &dport);
    int cfam = addr_of(client, &ca, &cport);
    for (int i = 0; i < cfg->n_rules; i++) {
        const struct px_rule *r = &cfg->rules[i];
        /* cheapest keys first: two compares per address block, then the names */
        if (r->nclients > 0 && !nets_match(r->clients, r->nclients, cfam, ca, 0)) {
            continue;
        }
        if (r->ndst > 0 && !nets_match(r->dst, r->ndst, dfam, da, dport)) {
            continue;
        }
        if (r->hosts.n > 0 && (!named || !px_hosts_match_lower(&r->hosts, low, (size_t)ll))) {
            continue;
        }
        d.action = r->action;
        d.index = i;
        d.rule = r->name;
        d.profile = r->profile;
        d.no_export = r->no_export;
        return d;
    }
    return d;
}

bool dp_policy_bypassed(const struct dp_gen *g, const char *host)
{
    return host != NULL && px_hosts_match(&g->cfg->policy_bypass_hosts, host);
}

int dp_policy_load(struct dp_gen *g, const struct px_cfg *cfg, char *err, size_t errlen)
{
    g->decisions = calloc((size_t)cfg->n_rules + 2, sizeof(*g->decisions));
    EVP_PKEY_CTX *kc = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, NULL);
    if (g->decisions == NULL || kc == NULL || EVP_PKEY_keygen_init(kc) != 1 ||
        EVP_PKEY_keygen(kc, &g->page_key) != 1) {
        EVP_PKEY_CTX_free(kc);
        ERR_clear_error();
        snprintf(err, errlen, "policy: out of memory");
        return -ENOMEM;
    }
    EVP_PKEY_CTX_free(kc);
    return 0;
}

void dp_policy_unload(struct dp_gen *g)
{
    free(g->decisions);
    g->decisions = NULL;
    EVP_PKEY_free(g->page_key);
    g->page_key = NULL;
}

/* Whether the client's ALPN list offers http/1.1 (a block page can then be read). */
static bool offers_http11(const struct dp_conn *c)
{
    for (uint32_t i = 0; i < c->alpn_len;) {
        uint32_t l = c->alpn[i];
        if (i + 1 + l > c->alpn_len) {
            return false;
        }
        if (l == 8 && memcmp(c->alpn + i + 1, "http/1.1", 8) == 0) {
            return true;
        }
        i += 1 + l;
    }
    return false;
}

void dp_policy_block(struct dp_conn *c, const char *reason)
{
    c->action = PX_ACT_BLOCK;
    c->reason = reason;
    PX_LOG_RL(PX_LOG_INFO, "dp", "conn=%u:%u %s blocked by rule %s (%s)", c->slot, c->gen, c->host,
           c->rule, reason);
    if (!offers_http11(c) || c->hello_overflow) {
        dp_tls_deny(c);
        return;
    }
    c->block_page = true;
    memcpy(c->alpn_sel, "http/1.1", 8);
    c->alpn_sel_len = 8;
    c->outcome = O_BLOCKED;
    dp_leaf_for_page(c);
}

/* HTML-escapes s into out (at most cap-1 bytes, cut at a character). */
static void html_esc(char *out, size_t cap, const char *s)
{
    size_t n = 0;
    for (; *s && n + 7 < cap; s++) {
        switch (*s) {
        case '<':
            n += (size_t)snprintf(out + n, cap - n, "&lt;");
            break;
        case '>':
            n += (size_t)snprintf(out + n, cap - n, "&gt;");
            break;
        case '&':
            n += (size_t)snprintf(out + n, cap - n, "&amp;");
            break;
        case '"':
            n += (size_t)snprintf(out + n, cap - n, "&quot;");
            break;
        default:
            out[n++] = *s;
        }
    }
    out[n] = '\0';
}

static void send_page(struct dp_conn *c)
{
    char host[600], body[1200], head[300];
    html_esc(host, sizeof(host), c->host);
    int bl = snprintf(body, sizeof(body),
                      "<!DOCTYPE html>\n<html><head><title>Blocked</title></head><body>\n"
                      "<h1>Blocked</h1>\n<p>The connection to <b>%s</b> was blocked by the "
                      "TLS inspection policy: rule <b>%s</b> (reason: %s).</p>\n"
                      "<p>tlsmint</p>\n</body></html>\n",
                      host, c->rule, c->reason);
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 403 Forbidden\r\nContent-Type: text/html; charset=utf-8\r\n"
                      "Content-Length: %d\r\nCache-Control: no-store\r\nConnection: close\r\n"
                      "X-Tlsmint-Rule: %s\r\nX-Tlsmint-Reason: %s\r\n\r\n",
                      bl, c->rule, c->reason);
    SSL *s = c->s[D_CLIENT].ssl;
    if (SSL_write(s, head, hl) != hl || SSL_write(s, body, bl) != bl) {
        ERR_clear_error();
    }
    SSL_shutdown(s);
    c->cl_shut_sent = true;
    c->bytes_u2c += (uint64_t)(hl + bl);
    dp_conn_finish(c, O_BLOCKED);
}

void dp_policy_page_step(struct dp_conn *c)
{
    static const char end[] = "\r\n\r\n";
    SSL *s = c->s[D_CLIENT].ssl;
    uint8_t buf[4096];
    for (;;) {
        int n = SSL_read(s, buf, sizeof(buf));
        if (n <= 0) {
            int e = SSL_get_error(s, n);
            if (e == SSL_ERROR_WANT_READ && !c->s[D_CLIENT].eof) {
                return; /* the rest of the request head */
            }
            ERR_clear_error();
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_ZERO_RETURN) {
                send_page(c); /* closed or half-closed: the answer may still be read */
            } else {
                dp_conn_finish(c, O_BLOCKED);
            }
            return;
        }
        c->bytes_c2u += (uint64_t)n;
        for (int i = 0; i < n && c->page_crlf < 4; i++) {
            c->page_crlf = buf[i] == (uint8_t)end[c->page_crlf] ? c->page_crlf + 1
                           : buf[i] == '\r'                   ? 1
                                                              : 0;
        }
        c->page_read += (uint32_t)n;
        if (c->page_crlf == 4 || c->page_read > 65536) {
            send_page(c);
            return;
        }
    }
}

/* The connection's name: SNI, else the CONNECT host, else the destination address. */
static void name_conn(struct dp_conn *c)
{
    if (c->host[0] == '\0' || c->transparent) {
        if (c->sni[0]) {
            snprintf(c->host, sizeof(c->host), "%s", c->sni);
        } else if (c->host[0] == '\0') {
            char a[64];
            dp_addr_str(&c->dst, a, sizeof(a));
            char *colon = strrchr(a, ':');
            if (colon) {
                *colon = '\0';
            }
            snprintf(c->host, sizeof(c->host), "%s", a[0] == '[' ? a + 1 : a);
            size_t hl = strlen(c->host);
            if (hl > 0 && c->host[hl - 1] == ']') {
                c->host[hl - 1] = '\0';
            }
        }
    }
}

/* Names the connection, takes the decision, records and counts it (once per connection). */
static struct dp_decision decide_conn(struct dp_conn *c)
{
    name_conn(c);
    const struct px_cfg *cfg = c->g->cfg;
    const char *name = c->sni[0] ? c->sni : c->host;
    struct dp_decision d = dp_policy_decide(cfg, name, (const struct sockaddr *)&c->dst,
                                            (const struct sockaddr *)&c->client_addr);
    int slot = d.index >= 0 ? d.index : d.index == DP_RULE_BYPASS_LIST ? cfg->n_rules
                                                                       : cfg->n_rules + 1;
    if (!c->decided) {
        atomic_fetch_add_explicit(&c->g->decisions[slot], 1, memory_order_relaxed);
        c->decided = true;
    }
    c->rule = d.rule;
    c->action = d.action;
    c->profile = d.profile;
    c->no_export = d.no_export;
    c->reason = d.index == DP_RULE_DEFAULT ? "default" : "rule";
    return d;
}

void dp_policy_excl_key(const struct dp_conn *c, char *out, size_t cap)
{
    if (c->sni[0] != '\0') {
        snprintf(out, cap, "%s", c->sni);
        return;
    }
    char a[64];
    dp_addr_str(&c->dst, a, sizeof(a));
    char *colon = strrchr(a, ':');
    if (colon != NULL) {
        *colon = '\0';
    }
    snprintf(out, cap, "%s", a);
}

bool dp_policy_pinning_alert(uint8_t al)
{
    return al == SSL_AD_BAD_CERTIFICATE || al == SSL_AD_UNSUPPORTED_CERTIFICATE ||
           al == SSL_AD_CERTIFICATE_UNKNOWN || al == SSL_AD_UNKNOWN_CA;
}

void dp_policy_pinned_event(struct dp_conn *c)
{
    const struct px_cfg *cfg = c->g->cfg;
    if (cfg->excl_pinned_alerts == 0) {
        return; /* learning pinned apps is off */
    }
    char key[256];
    dp_policy_excl_key(c, key, sizeof(key));
    if (dp_excl_pinned_event(c->loop->srv->excl, key, c->port, cfg->excl_pinned_alerts,
                             cfg->excl_ttl_s)) {
        PX_LOG_RL(PX_LOG_INFO, "dp", "conn=%u:%u %s:%u excluded for %d s: the client rejects our "
               "leaf (alert %u; a pinned app)", c->slot, c->gen, key, c->port, cfg->excl_ttl_s,
               c->client_alert);
    }
    c->reason = "pinned";
}

/* ---- a name must be proven before it buys a bypass ---------------------------------------- */

enum { PROOF_UNKNOWN = 0, PROOF_OK = 1, PROOF_FAILED = 2 };

static void proof_key(const struct dp_conn *c, char *out, size_t cap)
{
    char a[64];
    dp_addr_str(&c->dst, a, sizeof(a));
    snprintf(out, cap, "%s|%s", c->sni, a);
}

static bool is_ip(const char *h)
{
    uint8_t b[16];
    return inet_pton(AF_INET, h, b) == 1 || inet_pton(AF_INET6, h, b) == 1;
}

/* A bypass decided on a name the client chose is refused: inspect (or block), counted. */
static void unproven(struct dp_conn *c, int why)
{
    static const char *names[] = {"sni-mismatch", "unproven-name"};
    atomic_fetch_add_explicit(&c->loop->ctr.unproven[why], 1, memory_order_relaxed);
    PX_LOG_RL(PX_LOG_INFO, "dp", "conn=%u:%u bypass of %s (rule %s) refused: %s", c->slot, c->gen,
           c->sni[0] ? c->sni : c->host, c->rule, names[why]);
    c->reason = names[why];
    c->excluding = false;
    c->proving = false;
    if (c->g->cfg->policy_unproven_block) {
        dp_policy_block(c, names[why]);
        return;
    }
    c->action = PX_ACT_INSPECT;
}

bool dp_policy_proof_done(struct dp_conn *c)
{
    bool ok = c->verify_result == X509_V_OK;
    char key[400];
    proof_key(c, key, sizeof(key));
    dp_excl_add(c->loop->srv->proofs, key, c->port, ok ? PROOF_OK : PROOF_FAILED,
                c->g->cfg->policy_proof_ttl_s);
    atomic_fetch_add_explicit(&c->loop->ctr.proofs[ok ? 0 : 1], 1, memory_order_relaxed);
    c->proving = false;
    if (!ok) {
        unproven(c, 1); /* inspected on this very upstream handshake, or blocked */
        return false;
    }
    /* proven: this upstream did our handshake; the client's goes to a fresh one, spliced */
    c->excluding = c->proof_excl;
    c->action = PX_ACT_BYPASS;
    c->outcome = c->excluding ? O_EXCLUDED : O_BYPASS;
    dp_conn_enter(c, S_REOPEN);
    if (c->s[D_UP].fd >= 0) {
        shutdown(c->s[D_UP].fd, SHUT_RDWR);
    }
    return true;
}

/*
 * A bypass (the list, a rule on hosts, the exclusion cache) rests on the SNI, which the client
 * chose. It stands only once the name is proven for this destination: our own handshake there
 * with that SNI verified (cached per address, port and name). Returns false when the bypass
 * stands, true when c was routed otherwise (to its proof, inspection or a block).
 */
static bool needs_proof(struct dp_conn *c, const struct dp_decision *d)
{
    const struct px_cfg *cfg = c->g->cfg;
    bool by_name = c->excluding || d->index == DP_RULE_BYPASS_LIST ||
                   (d->index >= 0 && cfg->rules[d->index].hosts.n > 0);
    if (!by_name || c->sni[0] == '\0') {
        return false; /* no SNI: the name was the destination address itself */
    }
    if (!c->transparent && !is_ip(c->host) && strcasecmp(c->host, c->sni) != 0) {
        unproven(c, 0); /* CONNECT to one name, TLS to another */
        return true;
    }
    char key[400];
    proof_key(c, key, sizeof(key));
    int p = dp_excl_lookup(c->loop->srv->proofs, key, c->port);
    if (p == PROOF_OK) {
        return false;
    }
    if (p == PROOF_FAILED) {
        unproven(c, 1);
        return true;
    }
    c->proving = true;
    c->proof_excl = c->excluding;
    c->excluding = false;
    return true;
}

/* ---- the profile's versions: both sides ---------------------------------------------------- */

/* The versions pf allows, as DP_V12 / DP_V13 bits. */
static uint8_t profile_vers(const struct px_profile *pf)
{
    uint8_t m = 0;
    if (pf->min_version <= TLS1_2_VERSION && pf->max_version >= TLS1_2_VERSION) {
        m |= DP_V12;
    }
    if (pf->max_version >= TLS1_3_VERSION) {
        m |= DP_V13;
    }
    return m;
}

/* Whether the client offers a version pf allows with a cipher suite we do in that version. */
static bool client_meets(const struct dp_conn *c, const struct px_profile *pf)
{
    uint8_t v = c->hello_vers & profile_vers(pf);
    return ((v & DP_V12) && (c->hello_ciph & DP_C12)) || ((v & DP_V13) && (c->hello_ciph & DP_C13));
}

/* The client could make a handshake with us at all (1.2 or 1.3, a suite we do): a block can be
 * a page then, else only an alert. */
static bool client_can_page(const struct dp_conn *c)
{
    return ((c->hello_vers & DP_V12) && (c->hello_ciph & DP_C12)) ||
           ((c->hello_vers & DP_V13) && (c->hello_ciph & DP_C13));
}

/* A side cannot meet the profile: [profile] unsupported = bypass splices the client's own
 * ClientHello to the origin (on the upstream already connected, or a fresh one); block blocks. */
static void unsupported(struct dp_conn *c, const char *why, bool upstream_used)
{
    const struct px_profile *pf = px_cfg_profile(c->g->cfg, c->profile);
    atomic_fetch_add_explicit(&c->loop->ctr.unsupported[pf->unsupported_block ? 1 : 0], 1,
                              memory_order_relaxed);
    PX_LOG_RL(PX_LOG_INFO, "dp", "conn=%u:%u %s: %s for profile %s: %s", c->slot, c->gen, c->host,
              why, pf->name, pf->unsupported_block ? "blocked" : "passed through");
    if (pf->unsupported_block) {
        if (!client_can_page(c)) {
            c->action = PX_ACT_BLOCK;
            c->reason = why;
            dp_tls_deny(c);
            return;
        }
        dp_policy_block(c, why);
        return;
    }
    if (c->hello_overflow) {
        dp_conn_abort(c, O_CLIENT_ERROR); /* nothing complete to replay */
        return;
    }
    c->action = PX_ACT_BYPASS;
    c->reason = why;
    c->outcome = O_BYPASS;
    if (upstream_used) {
        dp_conn_enter(c, S_REOPEN); /* our attempt is dropped; the client's goes on a fresh one */
        if (c->s[D_UP].fd >= 0) {
            shutdown(c->s[D_UP].fd, SHUT_RDWR);
        }
    } else if (!c->up_connected) {
        dp_conn_connect(c); /* spliced when connected */
    } else {
        dp_relay_splice(c);
    }
}

bool dp_policy_upstream_failed(struct dp_conn *c, unsigned long err)
{
    if (c->proving || c->hello_overflow || c->hello_len == 0 || ERR_GET_LIB(err) != ERR_LIB_SSL) {
        return false;
    }
    const struct px_profile *pf = px_cfg_profile(c->g->cfg, c->profile);
    int r = ERR_GET_REASON(err);
    bool version = r == SSL_R_UNSUPPORTED_PROTOCOL || r == SSL_R_TLSV1_ALERT_PROTOCOL_VERSION ||
                   r == SSL_R_NO_PROTOCOLS_AVAILABLE || r == SSL_R_WRONG_SSL_VERSION;
    bool cipher = r == SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE ||
                  r == SSL_R_TLSV1_ALERT_INSUFFICIENT_SECURITY ||
                  r == SSL_R_WRONG_CIPHER_RETURNED || r == SSL_R_NO_SHARED_CIPHER;
    /* only where the client's own ClientHello offers what ours did not (a version the profile
     * leaves out, a suite we do not offer): a server refusing both gains nothing from a pass,
     * and one refusing only ours would otherwise buy itself a splice past inspection */
    if (version && (c->hello_vers & ~profile_vers(pf) & (DP_V12 | DP_V13 | DP_VOLD))) {
        unsupported(c, "unsupported-version", true);
        return true;
    }
    if (cipher && (c->hello_ciph & DP_CEXTRA)) {
        unsupported(c, "no-common-cipher", true);
        return true;
    }
    return false;
}

/* Limits the client handshake (still paused at its ClientHello) to the profile's versions. */
static void client_versions(struct dp_conn *c, const struct px_profile *pf)
{
    if (pf->min_version != TLS1_2_VERSION || pf->max_version != TLS1_3_VERSION) {
        SSL_set_min_proto_version(c->s[D_CLIENT].ssl, pf->min_version);
        SSL_set_max_proto_version(c->s[D_CLIENT].ssl, pf->max_version);
    }
}

void dp_policy_step(struct dp_conn *c)
{
    struct dp_decision d = decide_conn(c);
    if (d.action == PX_ACT_BLOCK) {
        dp_policy_block(c, c->reason);
        return;
    }
    if (d.action == PX_ACT_INSPECT) {
        /* what cannot be decrypted (learned) passes untouched; a block rule still blocks */
        char key[256];
        dp_policy_excl_key(c, key, sizeof(key));
        int why = dp_excl_lookup(c->loop->srv->excl, key, c->port);
        if (why != DP_EXCL_NONE) {
            c->excluding = true;
            c->action = PX_ACT_BYPASS;
            c->reason = dp_excl_reason_name(why);
            d.action = PX_ACT_BYPASS;
        }
    }
    if (d.action == PX_ACT_BYPASS && needs_proof(c, &d)) {
        if (c->state != S_POLICY) {
            return; /* blocked */
        }
        d.action = PX_ACT_INSPECT; /* the proof is the upstream handshake of an inspection */
    }
    if (d.action == PX_ACT_BYPASS) {
        if (c->hello_overflow) {
            dp_conn_abort(c, O_CLIENT_ERROR);
            return;
        }
        if (!c->up_connected) {
            c->outcome = O_BYPASS;
            dp_conn_connect(c); /* dp_relay_splice happens when connected */
            return;
        }
        dp_relay_splice(c);
        return;
    }
    const struct px_profile *pf = px_cfg_profile(c->g->cfg, c->profile);
    if (!c->proving && !client_meets(c, pf)) {
        unsupported(c, (c->hello_vers & profile_vers(pf)) == 0 ? "unsupported-version"
                                                                : "no-common-cipher", false);
        return;
    }
    client_versions(c, pf);
    if (!c->up_connected) {
        dp_conn_connect(c);
        return;
    }
    if (dp_tls_upstream_start(c) != 0) {
        dp_conn_abort(c, O_UPSTREAM_FAILED);
    }
}

/* ---- traffic that is not TLS ------------------------------------------------------------ */

bool dp_policy_looks_tls(const uint8_t *p, uint32_t n)
{
    return n == 0 || (p[0] == 0x16 && (n < 2 || p[1] == 0x03));
}

void dp_policy_first_byte_arm(struct dp_conn *c)
{
    int ms = c->g->cfg->policy_first_byte_ms;
    if (ms <= 0 || c->hello_len > 0 || c->fb_armed) {
        return;
    }
    struct io_uring_sqe *sqe = dp_sqe(c->loop);
    if (sqe == NULL) {
        return; /* no timer: the connection is taken for client-first */
    }
    c->fb_ts.tv_sec = ms / 1000;
    c->fb_ts.tv_nsec = (long long)(ms % 1000) * 1000000ll;
    io_uring_prep_timeout(sqe, &c->fb_ts, 0, 0);
    io_uring_sqe_set_data64(sqe, dp_ud_make(OP_FIRSTBYTE, 0, c));
    c->fb_armed = true;
    c->inflight++;
}

void dp_policy_first_byte_cancel(struct dp_conn *c)
{
    if (!c->fb_armed || c->fb_removing) {
        return;
    }
    struct io_uring_sqe *sqe = dp_sqe(c->loop);
    if (sqe == NULL) {
        return; /* it fires on its own, and is ignored then */
    }
    io_uring_prep_timeout_remove(sqe, dp_ud_make(OP_FIRSTBYTE, 0, c), 0);
    io_uring_sqe_set_data64(sqe, dp_ud_make(OP_FIRSTBYTE, 1, c));
    c->fb_removing = true;
}

/* Counts and logs a connection that is not TLS (reason 0 not-tls, 1 server-first). */
static void note_non_tls(struct dp_conn *c, int reason, bool block)
{
    static const char *names[] = {"not-tls", "server-first"};
    atomic_fetch_add_explicit(&c->loop->ctr.non_tls[reason][block ? 1 : 0], 1,
                              memory_order_relaxed);
    c->reason = names[reason];
    c->action = block ? PX_ACT_BLOCK : PX_ACT_TUNNEL;
    PX_LOG_RL(PX_LOG_INFO, "dp", "conn=%u:%u %s: %s, %s (rule %s)", c->slot, c->gen, c->host,
           names[reason], block ? "blocked" : "tunnelled", c->rule);
}

void dp_policy_first_byte_done(struct dp_conn *c, int res)
{
    c->fb_armed = false;
    c->fb_removing = false;
    if (c->state == S_CLOSING) {
        dp_conn_release(c);
        return;
    }
    if (res != -ETIME || c->state != S_CLIENT_HELLO || c->hello_len > 0) {
        return; /* removed, or the client has spoken meanwhile */
    }
    /* the client is silent: a server-first protocol, or a slow TLS client. Connect (and let
     * whichever side speaks first decide) unless a rule blocks the destination outright. */
    struct dp_decision d = decide_conn(c);
    if (d.action == PX_ACT_BLOCK) {
        note_non_tls(c, 1, true);
        dp_conn_abort(c, O_BLOCKED);
        return;
    }
    if (c->up_connected) {
        dp_conn_enter(c, S_FIRST_BYTE);
    } else {
        c->fb_wait = true;
        dp_conn_connect(c); /* S_FIRST_BYTE once connected */
    }
    dp_conn_run(c);
}

void dp_policy_not_tls(struct dp_conn *c)
{
    if (c->rule == NULL) {
        decide_conn(c);
    }
    bool block = c->action == PX_ACT_BLOCK || c->g->cfg->policy_non_tls == PX_NON_TLS_BLOCK;
    note_non_tls(c, 0, block);
    if (block) {
        dp_conn_abort(c, O_BLOCKED);
        return;
    }
    c->tunnel = true;
    if (!c->up_connected) {
        c->outcome = O_BYPASS;
        dp_conn_connect(c); /* spliced when connected; what the client sends is kept */
        return;
    }
    dp_relay_splice(c); /* replays what the client sent */
}

void dp_policy_first_byte_step(struct dp_conn *c)
{
    if (c->hello_len > 0) {
        if (dp_policy_looks_tls(c->hello, c->hello_len)) {
            c->rule = NULL; /* decided again, on the SNI */
            dp_conn_enter(c, S_CLIENT_HELLO);
        } else {
            dp_policy_not_tls(c);
        }
        return;
    }
    if (c->s[D_CLIENT].eof || c->s[D_UP].eof) {
        dp_conn_abort(c, c->s[D_UP].eof ? O_UPSTREAM_FAILED : O_CLIENT_ERROR);
    }
}

void dp_policy_server_first(struct dp_conn *c)
{
    bool block = c->action == PX_ACT_BLOCK || c->g->cfg->policy_non_tls == PX_NON_TLS_BLOCK;
    note_non_tls(c, 1, block);
    if (block) {
        dp_conn_abort(c, O_BLOCKED);
        return;
    }
    c->tunnel = true;
    dp_relay_splice(c);
}
