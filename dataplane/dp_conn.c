/* SPDX-License-Identifier: MIT */
/*
 * dp_conn.c - a connection from accept to close: its state machine (the stage table
 * dp_stages, dp_conn_enter, dp_conn_run), and the stages that are neither TLS nor relaying
 * (CONNECT request, destination, name lookup, upstream connect, the handshake steps' order).
 * Owns struct dp_conn from dp_conn_new to dp_conn_release: its sockets, buffers, SSL objects and
 * references (generation, leaf) are released there and nowhere else.
 * Threads: the loop thread that accepted the connection, only.
 * Invariants: c->state changes only in dp_conn_enter, along the table; a connection is freed
 * only when none of its operations is in flight; every accepted connection ends with one
 * outcome, counted and logged once.
 * Not here: TLS objects and callbacks (dp_tls.c), the leaf and the HSM failure policy
 * (dp_leaf.c), moving bytes (dp_relay.c), the policy decision (dp_policy.c), the log line
 * (dp_alog.c).
 */
#include "dp_int.h"

#include <errno.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>

static const char *outcome_name[] = {"none", "ok", "bypass", "refused_hsm", "upstream_failed",
                                     "client_error", "bad_request", "timeout", "shutdown",
                                     "fail_open", "dns_failed", "blocked", "excluded"};

/* The handshake deadline until the relay starts, then the idle time of T_IDLE stages. */
static void arm_deadline(struct dp_conn *c)
{
    uint64_t at = c->deadline_ns;
    if (dp_stages[c->state].timer == T_IDLE) {
        uint64_t idle_at = c->last_ns + (uint64_t)DP_IDLE_MS * 1000000ull;
        if (at == 0 || idle_at < at) {
            at = idle_at;
        }
    }
    if (at != 0) {
        dp_timer_set(c, at + 1); /* a deadline has passed once now > it */
    }
}

void dp_conn_on_timer(struct dp_conn *c, uint64_t now)
{
    if (c->state == S_FREE || c->state == S_CLOSING) {
        return;
    }
    bool hs_late = c->deadline_ns != 0 && now > c->deadline_ns;
    bool idle = dp_stages[c->state].timer == T_IDLE &&
                now - c->last_ns > (uint64_t)DP_IDLE_MS * 1000000ull;
    if (hs_late || idle) {
        dp_conn_abort(c, O_TIMEOUT);
        return;
    }
    arm_deadline(c); /* bytes moved since it was armed, or the relay started */
}

struct dp_conn *dp_conn_new(struct dp_loop *l, int fd, bool *at_limit)
{
    struct dp_server *srv = l->srv;
    bool full = atomic_fetch_add_explicit(&srv->nconns, 1, memory_order_relaxed) >= srv->max_conns;
    if (at_limit != NULL) {
        *at_limit = full;
    }
    /* no buffer yet: bytes in flight get theirs as they come (dp_buf.c) */
    struct dp_conn *c = full ? NULL : dp_loop_slot_take(l);
    if (c == NULL) {
        atomic_fetch_sub_explicit(&srv->nconns, 1, memory_order_relaxed);
        return NULL;
    }
    uint32_t slot = c->slot;
    uint16_t gen = (uint16_t)(c->gen + 1);
    memset(c, 0, sizeof(*c));
    c->slot = slot;
    c->gen = gen;
    c->loop = l;
    c->g = l->g;
    dp_gen_ref(c->g);
    c->s[D_CLIENT].fd = fd;
    c->s[D_UP].fd = -1;
    for (int d = 0; d < 2; d++) {
        c->s[d].conn = c;
        c->s[d].ibid = -1;
        c->s[d].out = dp_bio_out_new(&c->s[d]);
    }
    c->start_ns = c->last_ns = px_now_ns();
    c->deadline_ns = c->start_ns + (uint64_t)DP_HANDSHAKE_MS * 1000000ull;
    c->cache_result = "none";
    c->verify_result = -1;
    arm_deadline(c);
    l->nactive++;
    atomic_fetch_add_explicit(&l->ctr.accepted, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&l->ctr.active, 1, memory_order_relaxed);
    return c;
}

/* Frees everything once no operation is in flight. */
void dp_conn_release(struct dp_conn *c)
{
    struct dp_loop *l = c->loop;
    if (c->inflight > 0 || c->state == S_FREE) {
        return;
    }
    dp_inbound_conn_release(c); /* first: a handshake paused for the HSM is finished */
    dp_tls_sess_store(c);
    dp_export_end(c->loop->srv->exp, c, c->outcome != O_OK);
    for (int d = 0; d < 2; d++) {
        struct side *sd = &c->s[d];
        if (sd->fd >= 0) {
            close(sd->fd);
            sd->fd = -1;
        }
        if (sd->ssl != NULL) {
            SSL_free(sd->ssl); /* frees its BIOs */
        } else {
            BIO_free(sd->out);
        }
        sd->ssl = NULL;
        sd->out = sd->in = NULL;
        dp_buf_side_fini(sd); /* a ring buffer in its input goes back to the ring */
    }
    dp_buf_cold(c);
    dp_alog_conn(c);
    dp_gen_unref(c->g);
    c->g = NULL;
    atomic_fetch_add_explicit(&l->ctr.outcome[c->outcome], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&l->ctr.bytes_c2u, c->bytes_c2u, memory_order_relaxed);
    atomic_fetch_add_explicit(&l->ctr.bytes_u2c, c->bytes_u2c, memory_order_relaxed);
    cc_entry_unref(c->leaf);
    c->leaf = NULL;
    free(c->hello);
    free(c->inb);
    c->inb = NULL;
    free(c->rj);
    c->rj = NULL;
    dp_timer_cancel(c);
    dp_conn_enter(c, S_FREE);
    dp_loop_slot_put(l, c);
    atomic_fetch_sub_explicit(&l->srv->nconns, 1, memory_order_relaxed);
    l->nactive--;
    atomic_fetch_sub_explicit(&l->ctr.active, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&l->ctr.closed, 1, memory_order_relaxed);
}

/* Ends the connection now: pending operations are woken by shutdown and drained. */
void dp_conn_abort(struct dp_conn *c, enum dp_outcome why)
{
    if (c->outcome == O_NONE || c->outcome == O_OK || c->outcome == O_BYPASS) {
        if (why != O_OK || c->outcome == O_NONE) {
            c->outcome = why;
        }
    }
    dp_conn_enter(c, S_CLOSING);
    dp_policy_first_byte_cancel(c);
    dp_ocsp_wait_cancel(c);
    for (int d = 0; d < 2; d++) {
        if (c->s[d].fd >= 0) {
            shutdown(c->s[d].fd, SHUT_RDWR);
        }
        c->s[d].eof = true;
        c->s[d].err = true;
    }
    dp_conn_release(c);
}

/* Ends after flushing what is queued towards the client (an HTTP answer or a TLS alert). */
void dp_conn_finish(struct dp_conn *c, enum dp_outcome why)
{
    if (c->outcome == O_NONE) {
        c->outcome = why;
    }
    dp_conn_enter(c, S_CLOSING);
    dp_policy_first_byte_cancel(c);
    dp_ocsp_wait_cancel(c);
    dp_conn_run(c);
}

void dp_conn_connect(struct dp_conn *c)
{
    const struct px_cfg *cfg = c->g->cfg;
    if (!c->loop->ring_ok) {
        dp_conn_finish(c, O_UPSTREAM_FAILED); /* a loop without a ring (the fuzz targets') */
        return;
    }
    int fd = socket(c->dst.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        dp_conn_finish(c, O_UPSTREAM_FAILED);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (cfg->upstream_mark != 0) {
        uint32_t mark = cfg->upstream_mark;
        if (setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) != 0) {
            PX_LOG_RL(PX_LOG_WARN, "dp", "conn=%u:%u SO_MARK %u: %s", c->slot, c->gen, mark,
                      strerror(errno));
        }
    }
    c->s[D_UP].fd = fd;
    dp_conn_enter(c, S_UP_CONNECTING);
    struct io_uring_sqe *sqe = dp_sqe(c->loop);
    io_uring_prep_connect(sqe, fd, (struct sockaddr *)&c->dst, c->dstlen);
    io_uring_sqe_set_data64(sqe, dp_ud_make(OP_CONNECT, D_UP, c));
    sqe->flags |= IOSQE_IO_LINK;
    c->inflight++;
    /* each address gets an equal share of what is left of connect_timeout_ms */
    uint64_t now = px_now_ns();
    if (c->up_deadline_ns == 0) {
        c->up_deadline_ns = now + (uint64_t)cfg->connect_timeout_ms * 1000000ull;
    }
    uint64_t left = c->up_deadline_ns > now ? c->up_deadline_ns - now : 1000000ull;
    int tries = c->rj != NULL && c->rj->naddr > c->addr_next ? c->rj->naddr - c->addr_next + 1 : 1;
    left /= (uint64_t)tries;
    c->cto.tv_sec = (long long)(left / 1000000000ull);
    c->cto.tv_nsec = (long long)(left % 1000000000ull);
    sqe = dp_sqe(c->loop);
    io_uring_prep_link_timeout(sqe, &c->cto, 0);
    io_uring_sqe_set_data64(sqe, dp_ud_make(OP_LTIMEOUT, D_UP, c));
    c->inflight++;
}

static void resolve_failed(struct dp_conn *c, const struct dp_res_job *j);

static void start_dns_or_connect(struct dp_conn *c)
{
    struct dp_loop *l = c->loop;
    char hp[300];
    snprintf(hp, sizeof(hp), "%s%s%s:%u", strchr(c->host, ':') ? "[" : "", c->host,
             strchr(c->host, ':') ? "]" : "", c->port);
    int port;
    if (dp_addr_parse(hp, &c->dst, &c->dstlen, &port) == 0) {
        dp_conn_connect(c);
        return;
    }
    struct dp_res_job *j = calloc(1, sizeof(*j));
    if (j == NULL) {
        dp_conn_abort(c, O_CLIENT_ERROR);
        return;
    }
    j->token = dp_conn_token(c);
    snprintf(j->host, sizeof(j->host), "%s", c->host);
    j->port = c->port;
    j->timeout_ms = (uint32_t)c->g->cfg->resolve_timeout_ms;
    j->max_ttl_s = (uint32_t)c->g->cfg->dns_cache_max_ttl_s;
    j->neg_ttl_s = (uint32_t)c->g->cfg->dns_negative_ttl_s;
    j->done = &l->res_done;
    if (dp_resolver_submit(l->srv->res, j) != 0) {
        j->status = DP_RES_BUSY;
        resolve_failed(c, j);
        free(j);
        return;
    }
    dp_conn_enter(c, S_RESOLVING);
}

/* An HTTP error to the explicit client; body is one line of text (or NULL for none). */
static void answer_http_body(struct dp_conn *c, int code, const char *reason, const char *body,
                             enum dp_outcome why)
{
    char buf[768];
    size_t blen = body != NULL ? strlen(body) : 0;
    int n = snprintf(buf, sizeof(buf),
                     "HTTP/1.1 %d %s\r\nContent-Length: %zu\r\nConnection: close\r\n"
                     "%sProxy-Agent: tlsmint\r\n\r\n%s",
                     code, reason, blen, body != NULL ? "Content-Type: text/plain\r\n" : "",
                     body != NULL ? body : "");
    if (n > 0 && (size_t)n < sizeof(buf)) {
        dp_relay_queue(c, D_CLIENT, buf, (size_t)n);
    }
    dp_conn_finish(c, why);
}

static void answer_http(struct dp_conn *c, int code, const char *reason, enum dp_outcome why)
{
    answer_http_body(c, code, reason, NULL, why);
}

/* The name did not resolve: 504 when DNS did not answer in time, 503 when the resolver is
 * full, 502 otherwise; one log line with the name, outcome dns_failed. */
static void resolve_failed(struct dp_conn *c, const struct dp_res_job *j)
{
    char name[256];
    size_t k = 0;
    for (const char *p = c->host; *p != '\0' && k < sizeof(name) - 1; p++) {
        name[k++] = (*p > 0x20 && *p < 0x7f) ? *p : '?'; /* the client's bytes: printable only */
    }
    name[k] = '\0';
    char why[200];
    int code = 502;
    const char *reason = "Bad Gateway";
    switch (j->status) {
    case DP_RES_TIMEOUT:
        code = 504;
        reason = "Gateway Timeout";
        snprintf(why, sizeof(why), "no DNS answer for %s within %u ms", name, j->timeout_ms);
        break;
    case DP_RES_NXDOMAIN:
        snprintf(why, sizeof(why), "the name %s does not exist (NXDOMAIN)", name);
        break;
    case DP_RES_NODATA:
    case DP_RES_OK:
        snprintf(why, sizeof(why), "the name %s has no IPv4 or IPv6 address", name);
        break;
    case DP_RES_BUSY:
        code = 503;
        reason = "Service Unavailable";
        snprintf(why, sizeof(why), "too many lookups in flight to look up %s", name);
        break;
    default:
        snprintf(why, sizeof(why), "cannot resolve %s: %s", name, j->why);
        break;
    }
    PX_LOG_RL(PX_LOG_INFO, "dp", "conn=%u:%u %d: %s%s", c->slot, c->gen, code, why,
              j->cached ? " (cached)" : "");
    char body[224];
    snprintf(body, sizeof(body), "tlsmint: %s\n", why);
    answer_http_body(c, code, reason, body, O_DNS_FAILED);
}

/* S_CONNECT_REQ: the request head, then the destination (a name is resolved first). */
static void step_connect_req(struct dp_conn *c)
{
    struct side *cl = &c->s[D_CLIENT];
    if (cl->ssl != NULL) {
        return; /* head read: waiting for the upstream */
    }
    size_t used = 0;
    int r = dp_connect_parse(cl->rbuf, cl->rlen, c->host, sizeof(c->host), &c->port, &used);
    if (r == DP_CONNECT_MORE) {
        if (cl->rlen >= DP_RBUF) {
            answer_http(c, 431, "Request Header Fields Too Large", O_BAD_REQUEST);
        } else if (cl->eof) {
            dp_conn_abort(c, O_BAD_REQUEST);
        }
        return;
    }
    if (r == DP_CONNECT_METHOD) {
        atomic_fetch_add_explicit(&c->loop->ctr.bad_request, 1, memory_order_relaxed);
        answer_http(c, 405, "Method Not Allowed", O_BAD_REQUEST);
        return;
    }
    if (r != DP_CONNECT_OK) {
        atomic_fetch_add_explicit(&c->loop->ctr.bad_request, 1, memory_order_relaxed);
        answer_http(c, 400, "Bad Request", O_BAD_REQUEST);
        return;
    }
    /* bytes after the head (an eager client's ClientHello) stay for the TLS side */
    size_t rest = cl->rlen - used;
    if (dp_tls_client_start(c) != 0) {
        dp_conn_abort(c, O_CLIENT_ERROR);
        return;
    }
    /* still S_CONNECT_REQ: TLS starts after the 200 */
    if (rest > 0) {
        BIO_write(cl->in, cl->rbuf + used, (int)rest);
        if (rest <= DP_HELLO_MAX) {
            memcpy(c->hello, cl->rbuf + used, rest);
            c->hello_len = (uint32_t)rest;
        } else {
            c->hello_overflow = true;
        }
    }
    free(cl->rbuf); /* the head is parsed: the buffer goes */
    cl->rbuf = NULL;
    cl->rlen = 0;
    start_dns_or_connect(c);
}

/* S_CLIENT_HELLO: OpenSSL parses what has arrived; the callback stops it once SNI and ALPN are
 * known (dp_tls.c), and the policy decides. */
static void step_client_hello(struct dp_conn *c)
{
    if (c->hello_len > 0) {
        dp_policy_first_byte_cancel(c);
        if (!dp_policy_looks_tls(c->hello, c->hello_len)) {
            dp_policy_not_tls(c); /* a tunnel, or blocked: [policy] non_tls */
            return;
        }
    }
    SSL *s = c->s[D_CLIENT].ssl;
    int r = SSL_do_handshake(s);
    int e = SSL_get_error(s, r);
    if (e == SSL_ERROR_WANT_CLIENT_HELLO_CB) {
        dp_conn_enter(c, S_POLICY);
    } else if (e == SSL_ERROR_WANT_READ) {
        if (c->s[D_CLIENT].eof) {
            dp_conn_abort(c, O_CLIENT_ERROR);
        }
    } else {
        ERR_clear_error();
        PX_LOG_RL(PX_LOG_DEBUG, "dp", "conn=%u:%u malformed ClientHello", c->slot, c->gen);
        dp_conn_finish(c, O_CLIENT_ERROR);
    }
}

/* S_UP_HANDSHAKE: once the upstream's chain is in, the leaf stage takes over (dp_leaf.c). */
static void step_up_handshake(struct dp_conn *c)
{
    SSL *s = c->s[D_UP].ssl;
    int r = SSL_do_handshake(s);
    if (r == 1) {
        dp_leaf_get(c);
        return;
    }
    int e = SSL_get_error(s, r);
    if (e == SSL_ERROR_WANT_READ && !c->s[D_UP].eof) {
        return;
    }
    if (e == SSL_ERROR_WANT_X509_LOOKUP && c->up_client_auth) {
        dp_leaf_client_auth(c); /* a CertificateRequest: we have no certificate to give */
        return;
    }
    unsigned long oe = ERR_peek_error();
    char eb[160] = "closed";
    if (oe) {
        ERR_error_string_n(oe, eb, sizeof(eb));
    }
    ERR_clear_error();
    if (oe != 0 && dp_policy_upstream_failed(c, oe)) {
        return; /* the profile's versions or suites: passed through or blocked */
    }
    PX_LOG_RL(PX_LOG_INFO, "dp", "conn=%u:%u upstream %s:%u TLS failed: %s", c->slot, c->gen,
              c->host, c->port, eb);
    atomic_fetch_add_explicit(&c->loop->ctr.upstream_failed, 1, memory_order_relaxed);
    dp_tls_refuse(c, O_UPSTREAM_FAILED);
}

/* S_CLIENT_HANDSHAKE: the paused handshake goes on with the leaf (or fails as refused). */
static void step_client_handshake(struct dp_conn *c)
{
    SSL *s = c->s[D_CLIENT].ssl;
    int r = SSL_do_handshake(s);
    if (r == 1 && c->block_page) {
        dp_conn_enter(c, S_BLOCK_PAGE); /* our leaf, only to say why: no upstream bytes */
        atomic_fetch_add_explicit(&c->loop->ctr.handshakes_ok, 1, memory_order_relaxed);
        return;
    }
    if (r == 1) {
        dp_conn_enter(c, S_RELAY);
        dp_export_begin(c->loop->srv->exp, c);
        c->deadline_ns = 0;
        if (c->outcome == O_NONE) {
            c->outcome = O_OK;
        }
        free(c->hello);
        c->hello = NULL;
        atomic_fetch_add_explicit(&c->loop->ctr.handshakes_ok, 1, memory_order_relaxed);
        return;
    }
    int e = SSL_get_error(s, r);
    if (e == SSL_ERROR_WANT_READ && !c->s[D_CLIENT].eof) {
        return;
    }
    ERR_clear_error();
    atomic_fetch_add_explicit(&c->loop->ctr.handshakes_failed, 1, memory_order_relaxed);
    /* a client that refuses our forward-trust leaf with bad_certificate,
     * unsupported_certificate, certificate_unknown or unknown_ca: a pinned app. A client that
     * just goes away is not one; refusing a forward-untrust leaf is what that leaf is for */
    if (c->leaf_ready && c->verified && !c->fail_hello && !c->block_page &&
        dp_policy_pinning_alert(c->client_alert)) {
        dp_policy_pinned_event(c);
    }
    dp_conn_finish(c, c->fail_hello && c->outcome != O_NONE ? c->outcome : O_CLIENT_ERROR);
}

/* S_CLOSING: once what is queued is out (or cannot be), the sockets are shut and released. */
static void step_closing(struct dp_conn *c)
{
    if ((dp_pending_out(c, D_CLIENT) == 0 || c->s[D_CLIENT].err || c->s[D_CLIENT].fd < 0) &&
        (dp_pending_out(c, D_UP) == 0 || c->s[D_UP].err || c->s[D_UP].fd < 0)) {
        for (int d = 0; d < 2; d++) {
            if (c->s[d].fd >= 0) {
                shutdown(c->s[d].fd, SHUT_RDWR);
            }
            c->s[d].eof = true;
        }
        dp_conn_release(c); /* waits for the operations still in flight, if any */
    }
}

#define TO(st) (1u << (st))
/*
 * The stages of a connection and the ways between them (DESIGN.md "Data path"). A connection
 * is FREE before accept and after close; dp_conn_enter is the only way from one stage to the
 * next, and it checks the move against the row's `next`.
 *
 *   explicit listener                                    transparent listener
 *         |                                                      |
 *         v                                                      |
 *   CONNECT_REQ --a name--> RESOLVING                            |
 *         | an IP literal       |                                |
 *         v                     v                                |
 *   UP_CONNECTING <-------------+                                |
 *   (a connect fails: the name's next address, again)            |
 *         | connected: "200 Connection established"              |
 *         v                                                      v
 *   CLIENT_HELLO <-----------------------------------------------+
 *         |  `--not TLS ([policy] non_tls)--> (UP_CONNECTING) --> SPLICE, or closed
 *         |  `--silent for first_byte_ms--> (UP_CONNECTING) --> FIRST_BYTE: the server
 *         |       speaks first: SPLICE; the client does: back to CLIENT_HELLO (or not TLS)
 *         | SNI and ALPN known (the ClientHello callback pauses the handshake)
 *         v
 *      POLICY --bypass--> (transparent: UP_CONNECTING) --> SPLICE
 *         |  `--block--> alert: CLIENT_HANDSHAKE (fails with access_denied)
 *         |              a page: (MINTING) --> CLIENT_HANDSHAKE --> BLOCK_PAGE (403, close)
 *         | inspect
 *         v
 *   (transparent: UP_CONNECTING) --> UP_HANDSHAKE --cache miss--> MINTING
 *                                         |  `--OCSP fetch--> STATUS --+  | leaf
 *                                         | hit          (then as UP_HANDSHAKE: hit or miss)
 *                                         v                               v
 *                                    CLIENT_HANDSHAKE <-------------------+
 *                                         |
 *                                         v
 *                                       RELAY
 *
 *   inbound listener ([inbound.NAME], dp_inbound.c: our own servers, keys in the HSM):
 *   IN_HANDSHAKE <--the signature is in-- IN_SIGNING (the key's signature submitted, the
 *         |      ---async job paused-->  handshake parked; resumed handshakes skip it)
 *         v
 *   UP_CONNECTING (the backend) --plain--> IN_RELAY
 *         `--backend_tls--> IN_BACKEND_TLS --> RELAY
 *
 *   no leaf (UP_HANDSHAKE, MINTING) or no upstream (UP_CONNECTING after the ClientHello):
 *     refused (fail closed, a bad upstream): CLIENT_HANDSHAKE, which ends with an alert;
 *     fail open: REOPEN --> UP_CONNECTING --> SPLICE, the kept ClientHello replayed
 *   any stage --> CLOSING (an error, a timeout, the end) --> FREE
 *
 * step: what runs after each event in the stage (dp_conn_run); NULL when a completion handler
 * moves the connection on (connect, resolver, mint). reads: the sides armed for reading.
 * timer: the clock that ends a connection that stays too long (the handshake deadline set at
 * accept, or the idle time since the last byte). A new stage is a value in enum dp_state, a row
 * here (its step in the file of its room) and a bit in the rows that lead to it.
 */
const struct dp_stage dp_stages[DP_STATES] = {
    [S_FREE] = {"free", NULL, R_NONE, T_NONE,
                TO(S_CONNECT_REQ) | TO(S_CLIENT_HELLO) | TO(S_IN_HANDSHAKE) | TO(S_CLOSING)},
    [S_CONNECT_REQ] = {"connect_req", step_connect_req, R_CLIENT, T_HANDSHAKE,
                       TO(S_RESOLVING) | TO(S_UP_CONNECTING) | TO(S_CLOSING)},
    [S_RESOLVING] = {"resolving", NULL, R_NONE, T_HANDSHAKE, TO(S_UP_CONNECTING) | TO(S_CLOSING)},
    [S_CLIENT_HELLO] = {"client_hello", step_client_hello, R_CLIENT, T_HANDSHAKE,
                        TO(S_POLICY) | TO(S_FIRST_BYTE) | TO(S_UP_CONNECTING) | TO(S_SPLICE) |
                            TO(S_CLOSING)},
    [S_POLICY] = {"policy", dp_policy_step, R_NONE, T_HANDSHAKE,
                  TO(S_UP_CONNECTING) | TO(S_UP_HANDSHAKE) | TO(S_SPLICE) | TO(S_MINTING) |
                      TO(S_CLIENT_HANDSHAKE) | TO(S_CLOSING)},
    [S_UP_CONNECTING] = {"up_connecting", NULL, R_NONE, T_HANDSHAKE,
                         TO(S_UP_CONNECTING) | TO(S_CLIENT_HELLO) | TO(S_UP_HANDSHAKE) |
                             TO(S_SPLICE) | TO(S_CLIENT_HANDSHAKE) | TO(S_FIRST_BYTE) |
                             TO(S_IN_BACKEND_TLS) | TO(S_IN_RELAY) | TO(S_CLOSING)},
    [S_UP_HANDSHAKE] = {"up_handshake", step_up_handshake, R_UP, T_HANDSHAKE,
                        TO(S_MINTING) | TO(S_CLIENT_HANDSHAKE) | TO(S_REOPEN) | TO(S_STATUS) |
                            TO(S_CLOSING)},
    [S_MINTING] = {"minting", NULL, R_NONE, T_HANDSHAKE,
                   TO(S_CLIENT_HANDSHAKE) | TO(S_REOPEN) | TO(S_CLOSING)},
    [S_CLIENT_HANDSHAKE] = {"client_handshake", step_client_handshake, R_CLIENT, T_HANDSHAKE,
                            TO(S_RELAY) | TO(S_BLOCK_PAGE) | TO(S_CLOSING)},
    [S_RELAY] = {"relay", dp_relay_step, R_BOTH, T_IDLE, TO(S_CLOSING)},
    [S_SPLICE] = {"splice", dp_relay_splice_step, R_BOTH, T_IDLE, TO(S_CLOSING)},
    [S_REOPEN] = {"reopen", dp_leaf_reopen, R_NONE, T_HANDSHAKE,
                  TO(S_UP_CONNECTING) | TO(S_CLOSING)},
    [S_CLOSING] = {"closing", step_closing, R_NONE, T_NONE, TO(S_CLOSING) | TO(S_FREE)},
    [S_BLOCK_PAGE] = {"block_page", dp_policy_page_step, R_CLIENT, T_HANDSHAKE, TO(S_CLOSING)},
    [S_FIRST_BYTE] = {"first_byte", dp_policy_first_byte_step, R_BOTH, T_HANDSHAKE,
                      TO(S_CLIENT_HELLO) | TO(S_SPLICE) | TO(S_CLOSING)},
    [S_IN_HANDSHAKE] = {"in_handshake", dp_inbound_hs_step, R_CLIENT, T_HANDSHAKE,
                        TO(S_IN_SIGNING) | TO(S_UP_CONNECTING) | TO(S_CLOSING)},
    [S_IN_SIGNING] = {"in_signing", NULL, R_NONE, T_HANDSHAKE, TO(S_IN_HANDSHAKE) | TO(S_CLOSING)},
    [S_IN_BACKEND_TLS] = {"in_backend_tls", dp_inbound_backend_step, R_UP, T_HANDSHAKE,
                          TO(S_RELAY) | TO(S_CLOSING)},
    [S_IN_RELAY] = {"in_relay", dp_inbound_relay_step, R_BOTH, T_IDLE, TO(S_CLOSING)},
    [S_STATUS] = {"status", NULL, R_NONE, T_HANDSHAKE,
                  TO(S_MINTING) | TO(S_CLIENT_HANDSHAKE) | TO(S_REOPEN) | TO(S_CLOSING)},
};
#undef TO

static void bad_transition(const struct dp_conn *c, enum dp_state next);

void dp_conn_enter(struct dp_conn *c, enum dp_state next)
{
    if (!(dp_stages[c->state].next & (1u << next))) {
        bad_transition(c, next);
    }
    c->state = next;
}

void dp_conn_run(struct dp_conn *c)
{
    for (int guard = 0; guard < 16; guard++) {
        enum dp_state before = c->state;
        if (dp_stages[before].step != NULL) {
            dp_stages[before].step(c);
        }
        if (c->state == S_FREE) {
            return;
        }
        if (c->state == before) {
            break;
        }
    }
    dp_relay_arm(c);
}

/*
 * Past [listen] max_connections: closed at once, after a 503 on the explicit listener. What
 * the client sent already is read first, so that the close is a FIN, not a reset that could
 * overtake the answer. Counted; logged as a summary (dp_loop_refused), never per connection.
 */
static void refuse(struct dp_loop *l, int which, int fd)
{
    static const char full[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                               "Connection: close\r\nProxy-Agent: tlsmint\r\n\r\n";
    char sink[2048];
    ssize_t n = recv(fd, sink, sizeof(sink), MSG_DONTWAIT);
    if (which == 0) {
        n = send(fd, full, sizeof(full) - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
    }
    (void)n;
    close(fd);
    dp_loop_refused(l);
}

void dp_conn_accept(struct dp_loop *l, int which, int res, uint32_t flags)
{
    if (!(flags & IORING_CQE_F_MORE)) {
        l->accept_armed[which] = false;
    }
    if (res < 0) {
        if (res != -ECANCELED && res != -EINVAL) {
            PX_LOG_RL(PX_LOG_WARN, "dp", "accept: %s", strerror(-res));
        }
        dp_loop_arm_accept(l, which);
        return;
    }
    int fd = res;
    if (l->stopping) {
        close(fd);
        return;
    }
    bool at_limit;
    struct dp_conn *c = dp_conn_new(l, fd, &at_limit);
    if (c == NULL) {
        if (at_limit) {
            refuse(l, which, fd);
        } else {
            PX_LOG_RL(PX_LOG_WARN, "dp", "loop %d: out of memory for a connection: refusing",
                      l->idx);
            close(fd);
        }
        dp_loop_arm_accept(l, which);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    socklen_t al = sizeof(c->client_addr);
    getpeername(fd, (struct sockaddr *)&c->client_addr, &al);
    if (which == 0) {
        dp_conn_enter(c, S_CONNECT_REQ);
    } else {
        c->transparent = true;
        socklen_t dl = sizeof(c->dst);
        int r;
        bool tproxy = l->srv->cfg->listen_tproxy;
        if (tproxy) {
            /* TPROXY: the socket's own local address is where the client was going */
            r = getsockname(fd, (struct sockaddr *)&c->dst, &dl);
        } else if (c->client_addr.ss_family == AF_INET6) {
            r = getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &c->dst, &dl);
        } else {
            r = getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &c->dst, &dl);
        }
        /* the kernel does not update the length: take it from the family */
        dl = c->dst.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
        uint16_t dport = ntohs(c->dst.ss_family == AF_INET6
                                   ? ((struct sockaddr_in6 *)&c->dst)->sin6_port
                                   : ((struct sockaddr_in *)&c->dst)->sin_port);
        struct sockaddr_storage local;
        socklen_t ll = sizeof(local);
        if (r == 0 && tproxy && dport == l->srv->port_transparent) {
            r = -1; /* straight to the listener's port: nothing was intercepted */
            errno = ENOENT;
        } else if (r == 0 && !tproxy && getsockname(fd, (struct sockaddr *)&local, &ll) == 0 &&
                   dp_addr_same(&local, &c->dst)) {
            /* without NAT, conntrack reports the listener itself: connecting there would loop */
            r = -1;
            errno = ENOENT;
        }
        if (r != 0) {
            PX_LOG_RL(PX_LOG_WARN, "dp", "conn=%u:%u transparent: no original destination (%s): "
                      "not a REDIRECTed connection", c->slot, c->gen, strerror(errno));
            dp_conn_abort(c, O_BAD_REQUEST);
            dp_loop_arm_accept(l, which);
            return;
        }
        c->dstlen = dl;
        c->port = ntohs(c->dst.ss_family == AF_INET ? ((struct sockaddr_in *)&c->dst)->sin_port
                                                    : ((struct sockaddr_in6 *)&c->dst)->sin6_port);
        if (dp_tls_client_start(c) != 0) {
            dp_conn_abort(c, O_CLIENT_ERROR);
            dp_loop_arm_accept(l, which);
            return;
        }
        dp_conn_enter(c, S_CLIENT_HELLO);
        dp_policy_first_byte_arm(c);
    }
    dp_conn_run(c);
    dp_loop_arm_accept(l, which);
}

void dp_conn_on_connect(struct dp_conn *c, int res)
{
    if (c->state == S_CLOSING) {
        dp_conn_release(c);
        return;
    }
    if (c->inbound != 0) {
        dp_inbound_connected(c, res); /* a backend of an inbound listener */
        return;
    }
    if (res < 0) {
        char d[64];
        dp_addr_str(&c->dst, d, sizeof(d));
        bool next = c->rj != NULL && c->addr_next < c->rj->naddr && px_now_ns() < c->up_deadline_ns;
        PX_LOG_RL(PX_LOG_INFO, "dp", "conn=%u:%u connect %s (%s): %s%s", c->slot, c->gen, d,
                  c->host, res == -ECANCELED ? "timed out" : strerror(-res),
                  next ? "; trying its next address" : "");
        if (next) {
            close(c->s[D_UP].fd);
            c->s[D_UP].fd = -1;
            const union dp_res_addr *a = &c->rj->addr[c->addr_next++];
            c->dstlen = dp_res_addrlen(a);
            memcpy(&c->dst, a, c->dstlen);
            dp_conn_connect(c);
            return;
        }
        atomic_fetch_add_explicit(&c->loop->ctr.upstream_failed, 1, memory_order_relaxed);
        if (!c->transparent && !c->sent_200) {
            answer_http(c, 502, "Bad Gateway", O_UPSTREAM_FAILED);
        } else if (c->hello_seen) {
            dp_tls_refuse(c, O_UPSTREAM_FAILED);
            dp_conn_run(c);
        } else {
            dp_conn_abort(c, O_UPSTREAM_FAILED);
        }
        return;
    }
    c->up_connected = true;
    if (!c->transparent && !c->sent_200) {
        static const char ok[] = "HTTP/1.1 200 Connection established\r\nProxy-Agent: tlsmint\r\n\r\n";
        /* the 200 must precede any TLS byte: it goes first into the client's output BIO */
        dp_relay_queue(c, D_CLIENT, ok, sizeof(ok) - 1);
        c->sent_200 = true;
        dp_conn_enter(c, S_CLIENT_HELLO);
        dp_policy_first_byte_arm(c);
        dp_conn_run(c);
        return;
    }
    if (c->tunnel && c->hello_overflow) {
        dp_conn_abort(c, O_CLIENT_ERROR); /* more than could be kept while connecting */
        return;
    }
    if (c->fb_wait) {
        dp_conn_enter(c, S_FIRST_BYTE); /* whichever side speaks first */
    } else if (c->fail_open && !c->excluding) {
        dp_relay_splice(c);
        c->outcome = O_FAIL_OPEN;
    } else if (c->outcome == O_BYPASS || c->excluding) {
        dp_relay_splice(c);
    } else if (dp_tls_upstream_start(c) != 0) {
        dp_conn_abort(c, O_UPSTREAM_FAILED);
        return;
    }
    dp_conn_run(c);
}

void dp_conn_on_resolved(struct dp_loop *l)
{
    struct dp_res_job *j = dp_res_done_take(&l->res_done);
    while (j != NULL) {
        struct dp_res_job *n = j->next;
        if (j->token & DP_TOKEN_OCSP) {
            dp_ocsp_on_resolved(l, j); /* an OCSP responder's name */
            j = n;
            continue;
        }
        struct dp_conn *c = dp_conn_by_token(l, j->token);
        if (c != NULL && c->state == S_RESOLVING) {
            if (j->status != DP_RES_OK || j->naddr <= 0) {
                resolve_failed(c, j);
            } else {
                c->rj = j; /* kept for its other addresses */
                c->addr_next = 1;
                c->dstlen = dp_res_addrlen(&j->addr[0]);
                memcpy(&c->dst, &j->addr[0], c->dstlen);
                dp_conn_connect(c);
                dp_conn_run(c);
                j = NULL;
            }
        }
        free(j);
        j = n;
    }
}

const char *dp_outcome_name(int outcome)
{
    return outcome >= 0 && outcome < DP_OUTCOMES ? outcome_name[outcome] : "?";
}

#ifdef NDEBUG
/* Release builds: a transition the table does not list is logged, and made all the same. */
static void bad_transition(const struct dp_conn *c, enum dp_state next)
{
    PX_LOG_RL(PX_LOG_ERROR, "dp", "conn=%u:%u %s -> %s is not in the stage table", c->slot, c->gen,
              dp_stages[c->state].name, dp_stages[next].name);
}
#else
/* Debug builds (the test suite): a transition the table does not list is a bug. */
static void bad_transition(const struct dp_conn *c, enum dp_state next)
{
    char msg[128];
    snprintf(msg, sizeof(msg), "conn=%u:%u %s -> %s is not in the stage table", c->slot, c->gen,
             dp_stages[c->state].name, dp_stages[next].name);
    PX_BUG(msg);
}
#endif
