/* SPDX-License-Identifier: MIT */
/*
 * dp_loop.c - io_uring loops and the per-connection state machine of the interception proxy.
 * Owns, per loop thread: one ring, its listeners (SO_REUSEPORT), a fixed connection table, a
 * cc_loop (HSM completions for its mints) and a resolver completion list.
 * Threads: each loop touches only its own connections; results from the HSM and the resolver
 * come back through eventfds the ring keeps a read armed on. Nothing here blocks: sockets are
 * driven by io_uring, TLS runs over memory BIOs, minting is asynchronous.
 * Invariants: user_data is {op, dir, gen, slot}, never a pointer, so a late CQE for a reused slot
 * is recognised and dropped; a connection is freed only when none of its operations is in
 * flight; per connection at most one recv and one send per side, and a side is read only while
 * the other side has less than DP_PENDING_MAX bytes waiting (backpressure).
 * Not here: minting (certcache/), CONNECT parsing (dp_connect.c), DNS (dp_resolve.c).
 */
#include "dp_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

static const char *outcome_name[] = {"none", "ok", "bypass", "refused_hsm", "upstream_failed",
                                     "client_error", "bad_request", "timeout", "shutdown",
                                     "fail_open"};

static int g_conn_idx = -1; /* SSL ex_data index for the connection */
static struct dp_alog *g_keylog; /* SSLKEYLOGFILE sink, when [log] keylog is set */

static void keylog_cb(const SSL *ssl, const char *line)
{
    (void)ssl;
    char buf[512];
    int n = snprintf(buf, sizeof(buf), "%s\n", line);
    if (g_keylog != NULL && n > 0 && (size_t)n < sizeof(buf)) {
        dp_alog_write(g_keylog, buf, (size_t)n);
    }
}

/* ---- small helpers ---------------------------------------------------------------------- */

int dp_addr_parse(const char *s, struct sockaddr_storage *ss, socklen_t *len, int *port)
{
    char host[128];
    const char *colon = strrchr(s, ':');
    if (colon == NULL || (size_t)(colon - s) >= sizeof(host)) {
        return PX_E_INVAL;
    }
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    char *h = host;
    if (h[0] == '[') {
        h++;
        h[strlen(h) - 1] = '\0';
    }
    *port = atoi(colon + 1);
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, h, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)*port);
        *len = sizeof(*a4);
        return 0;
    }
    if (inet_pton(AF_INET6, h, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)*port);
        *len = sizeof(*a6);
        return 0;
    }
    return PX_E_INVAL;
}

void dp_addr_str(const struct sockaddr_storage *ss, char *out, size_t cap)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
        port = ntohs(a->sin_port);
        snprintf(out, cap, "%s:%d", ip, port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
        port = ntohs(a->sin6_port);
        snprintf(out, cap, "[%s]:%d", ip, port);
    } else {
        snprintf(out, cap, "-");
    }
}

/* JSON string body: escapes quotes, backslashes and control bytes. */
static size_t json_esc(char *out, size_t cap, const char *s)
{
    size_t n = 0;
    for (; *s && n + 7 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            out[n++] = '\\';
            out[n++] = (char)ch;
        } else if (ch < 0x20 || ch >= 0x7f) {
            n += (size_t)snprintf(out + n, cap - n, "\\u%04x", ch);
        } else {
            out[n++] = (char)ch;
        }
    }
    out[n] = '\0';
    return n;
}

/* Host names we accept from SNI: 1-253 bytes of letters, digits, '-', '.', '_'. */
static bool host_ok(const uint8_t *s, size_t len)
{
    if (len == 0 || len > 253) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        uint8_t ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '.' || ch == '_')) {
            return false;
        }
    }
    return true;
}

/* Same family, address and port (the rest of a sockaddr is padding). */
bool dp_addr_same(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family) {
        return false;
    }
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
    }
    return false;
}

static bool is_ip_literal(const char *h)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, h, buf) == 1 || inet_pton(AF_INET6, h, buf) == 1;
}

/* [policy] bypass: exact names, or "*.suffix" / ".suffix" for a domain and its subdomains. */
bool dp_policy_bypassed(const struct dp_gen *g, const char *host)
{
    size_t hl = strlen(host);
    for (int i = 0; i < g->nbypass; i++) {
        const char *p = g->bypass[i];
        if (p[0] == '*' && p[1] == '.') {
            p++;
        }
        if (p[0] == '.') {
            size_t pl = strlen(p);
            if ((hl > pl && strcasecmp(host + hl - pl, p) == 0) || strcasecmp(host, p + 1) == 0) {
                return true;
            }
        } else if (strcasecmp(host, p) == 0) {
            return true;
        }
    }
    return false;
}

/* ---- connection lifecycle --------------------------------------------------------------- */

void dp_conn_run(struct dp_conn *c);
void dp_tls_sess_store(struct dp_conn *c);

void dp_gen_ref(struct dp_gen *g)
{
    atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed);
}

void dp_gen_unref(struct dp_gen *g)
{
    if (g != NULL && atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) == 1) {
        SSL_CTX_free(g->sctx);
        SSL_CTX_free(g->uctx);
        cc_free(g->cc); /* its reference */
        free(g);
    }
}

static struct dp_conn *conn_new(struct dp_loop *l, int fd)
{
    struct dp_conn *c = l->free_list;
    if (c == NULL) {
        return NULL;
    }
    uint8_t *mem = malloc(2 * DP_RBUF); /* send buffers come and go with sends */
    if (mem == NULL) {
        return NULL;
    }
    l->free_list = c->next_free;
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
    c->s[D_CLIENT].rbuf = mem;
    c->s[D_UP].rbuf = mem + DP_RBUF;
    c->s[D_CLIENT].out = BIO_new(BIO_s_mem());
    c->s[D_UP].out = BIO_new(BIO_s_mem());
    c->start_ns = c->last_ns = px_now_ns();
    c->deadline_ns = c->start_ns + (uint64_t)DP_HANDSHAKE_MS * 1000000ull;
    c->cache_result = "none";
    c->verify_result = -1;
    l->nactive++;
    atomic_fetch_add_explicit(&l->ctr.accepted, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&l->ctr.active, 1, memory_order_relaxed);
    return c;
}

void dp_alog_conn(struct dp_conn *c)
{
    struct dp_server *srv = c->loop->srv;
    if (srv->alog == NULL) {
        return;
    }
    char client[64], dst[64], host[300], sni[300], alpn[80], ver[128], line[1400];
    dp_addr_str(&c->client_addr, client, sizeof(client));
    if (c->dstlen > 0) {
        dp_addr_str(&c->dst, dst, sizeof(dst));
    } else {
        snprintf(dst, sizeof(dst), "-");
    }
    json_esc(host, sizeof(host), c->host);
    json_esc(sni, sizeof(sni), c->sni);
    char a[64] = "";
    if (c->alpn_sel_len > 0 && c->alpn_sel_len < sizeof(a)) {
        memcpy(a, c->alpn_sel, c->alpn_sel_len);
        a[c->alpn_sel_len] = '\0';
    }
    json_esc(alpn, sizeof(alpn), a);
    if (c->verify_result < 0) {
        snprintf(ver, sizeof(ver), "none");
    } else if (c->verify_result == X509_V_OK) {
        snprintf(ver, sizeof(ver), "ok");
    } else {
        json_esc(ver, sizeof(ver), X509_verify_cert_error_string(c->verify_result));
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line),
                     "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"client\":\"%s\","
                     "\"dst\":\"%s\",\"host\":\"%s\",\"port\":%u,\"sni\":\"%s\",\"alpn\":\"%s\","
                     "\"mode\":\"%s\",\"upstream_verify\":\"%s\",\"upstream_resumed\":%s,"
                     "\"cache\":\"%s\","
                     "\"hsm_wait_ms\":%.3f,\"bytes_up\":%llu,\"bytes_down\":%llu,"
                     "\"duration_ms\":%.3f,\"outcome\":\"%s\"}\n",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, client, dst, host, c->port, sni, alpn,
                     c->transparent ? "transparent" : "explicit", ver,
                     c->up_resumed ? "true" : "false", c->cache_result,
                     (double)c->hsm_wait_ns / 1e6, (unsigned long long)c->bytes_c2u,
                     (unsigned long long)c->bytes_u2c,
                     (double)(px_now_ns() - c->start_ns) / 1e6, dp_outcome_name(c->outcome));
    if (n > 0) {
        dp_alog_write(srv->alog, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
    }
}

/* Frees everything once no operation is in flight. */
void dp_conn_release(struct dp_conn *c)
{
    struct dp_loop *l = c->loop;
    if (c->inflight > 0 || c->state == S_FREE) {
        return;
    }
    dp_tls_sess_store(c);
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
    }
    dp_alog_conn(c);
    dp_gen_unref(c->g);
    c->g = NULL;
    atomic_fetch_add_explicit(&l->ctr.outcome[c->outcome], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&l->ctr.bytes_c2u, c->bytes_c2u, memory_order_relaxed);
    atomic_fetch_add_explicit(&l->ctr.bytes_u2c, c->bytes_u2c, memory_order_relaxed);
    cc_entry_unref(c->leaf);
    c->leaf = NULL;
    free(c->s[D_CLIENT].rbuf);
    free(c->s[D_CLIENT].obuf);
    free(c->s[D_UP].obuf);
    free(c->hello);
    c->state = S_FREE;
    c->next_free = l->free_list;
    l->free_list = c;
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
    c->state = S_CLOSING;
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
    c->state = S_CLOSING;
    dp_conn_run(c);
}

void dp_relay_queue(struct dp_conn *c, int dir, const void *p, size_t n)
{
    BIO_write(c->s[dir].out, p, (int)n);
}

/* ---- io submission ---------------------------------------------------------------------- */

static void arm_recv(struct dp_conn *c, int dir)
{
    struct side *sd = &c->s[dir];
    struct io_uring_sqe *sqe = dp_sqe(c->loop);
    if (sqe == NULL) {
        return;
    }
    uint32_t off = sd->rlen;
    io_uring_prep_recv(sqe, sd->fd, sd->rbuf + off, DP_RBUF - off, 0);
    io_uring_sqe_set_data64(sqe, dp_ud_make(OP_RECV, dir, c));
    sd->recv_armed = true;
    c->inflight++;
}

static void arm_send(struct dp_conn *c, int dir)
{
    struct side *sd = &c->s[dir];
    if (sd->obuf == NULL && (sd->obuf = malloc(DP_OBUF)) == NULL) {
        return; /* out of memory is backpressure: tried again on the next event */
    }
    if (sd->olen == sd->ooff) {
        sd->olen = sd->ooff = 0;
        int n = BIO_read(sd->out, sd->obuf, DP_OBUF);
        if (n <= 0) {
            return;
        }
        sd->olen = (uint32_t)n;
    }
    struct io_uring_sqe *sqe = dp_sqe(c->loop);
    if (sqe == NULL) {
        return;
    }
    io_uring_prep_send(sqe, sd->fd, sd->obuf + sd->ooff, sd->olen - sd->ooff, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, dp_ud_make(OP_SEND, dir, c));
    sd->send_armed = true;
    c->inflight++;
}

static bool wants_read(const struct dp_conn *c, int dir)
{
    const struct side *sd = &c->s[dir];
    if (sd->fd < 0 || sd->recv_armed || sd->eof || c->state == S_CLOSING) {
        return false;
    }
    if (sd->in != NULL && BIO_ctrl_pending(sd->in) >= DP_PENDING_MAX) {
        return false;
    }
    int other = dir ^ 1;
    switch (c->state) {
    case S_CONNECT_REQ:
        return dir == D_CLIENT && sd->ssl == NULL; /* after the head: wait for the upstream */
    case S_CLIENT_HELLO:
    case S_CLIENT_HANDSHAKE:
        return dir == D_CLIENT;
    case S_UP_HANDSHAKE:
        return dir == D_UP;
    case S_RELAY:
    case S_SPLICE:
        return dp_pending_out(c, other) < DP_PENDING_MAX;
    default:
        return false;
    }
}

void dp_relay_arm(struct dp_conn *c)
{
    for (int d = 0; d < 2; d++) {
        struct side *sd = &c->s[d];
        if (sd->fd >= 0 && !sd->send_armed && !sd->err && dp_pending_out(c, d) > 0) {
            arm_send(c, d);
        }
        if (wants_read(c, d)) {
            arm_recv(c, d);
        }
    }
}

/* ---- upstream connection ---------------------------------------------------------------- */

void dp_conn_connect(struct dp_conn *c)
{
    const struct px_cfg *cfg = c->g->cfg;
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
            px_log(PX_LOG_WARN, "dp", "conn=%u:%u SO_MARK %u: %s", c->slot, c->gen, mark,
                   strerror(errno));
        }
    }
    c->s[D_UP].fd = fd;
    c->state = S_UP_CONNECTING;
    struct io_uring_sqe *sqe = dp_sqe(c->loop);
    io_uring_prep_connect(sqe, fd, (struct sockaddr *)&c->dst, c->dstlen);
    io_uring_sqe_set_data64(sqe, dp_ud_make(OP_CONNECT, D_UP, c));
    sqe->flags |= IOSQE_IO_LINK;
    c->inflight++;
    static const struct __kernel_timespec cto = {.tv_sec = DP_CONNECT_MS / 1000, .tv_nsec = 0};
    sqe = dp_sqe(c->loop);
    io_uring_prep_link_timeout(sqe, (struct __kernel_timespec *)&cto, 0);
    io_uring_sqe_set_data64(sqe, dp_ud_make(OP_LTIMEOUT, D_UP, c));
    c->inflight++;
}

static void sess_key(const struct dp_conn *c, char *key, size_t cap)
{
    char a[64];
    dp_addr_str(&c->dst, a, sizeof(a));
    snprintf(key, cap, "%s|%s", c->sni[0] ? c->sni : c->host, a);
}

static struct sess_slot *sess_slot_for(struct dp_loop *l, const char *key)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *p = key; *p; p++) {
        h = (h ^ (uint8_t)*p) * 1099511628211ull;
    }
    return &l->sess[h & (DP_SESS_SLOTS - 1)];
}

/* Keeps the upstream session of a cleanly finished connection for the next one. */
void dp_tls_sess_store(struct dp_conn *c)
{
    struct side *u = &c->s[D_UP];
    if (u->ssl == NULL || c->outcome != O_OK || !SSL_is_init_finished(u->ssl) ||
        c->loop->sess == NULL) {
        return;
    }
    SSL_SESSION *s = SSL_get1_session(u->ssl);
    if (s == NULL || !SSL_SESSION_is_resumable(s)) {
        SSL_SESSION_free(s);
        return;
    }
    char key[300];
    sess_key(c, key, sizeof(key));
    struct sess_slot *slot = sess_slot_for(c->loop, key);
    SSL_SESSION_free(slot->sess);
    slot->sess = s;
    snprintf(slot->key, sizeof(slot->key), "%s", key);
    /* SSL_free without a shutdown would mark the session not resumable */
    SSL_set_shutdown(u->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
}

int dp_tls_upstream_start(struct dp_conn *c)
{
    struct side *u = &c->s[D_UP];
    BIO_free(u->out);
    u->out = NULL;
    u->ssl = SSL_new(c->g->uctx);
    BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());
    if (u->ssl == NULL || rb == NULL || wb == NULL) {
        BIO_free(rb);
        BIO_free(wb);
        return PX_E_CRYPTO;
    }
    BIO_set_mem_eof_return(rb, -1);
    SSL_set_bio(u->ssl, rb, wb);
    u->in = rb;
    u->out = wb;
    SSL_set_connect_state(u->ssl);
    const char *name = c->sni[0] ? c->sni : c->host;
    if (name[0] && !is_ip_literal(name)) {
        SSL_set_tlsext_host_name(u->ssl, name);
        SSL_set1_host(u->ssl, name);
    } else {
        char ip[INET6_ADDRSTRLEN] = "";
        if (c->dst.ss_family == AF_INET) {
            inet_ntop(AF_INET, &((struct sockaddr_in *)&c->dst)->sin_addr, ip, sizeof(ip));
        } else {
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&c->dst)->sin6_addr, ip, sizeof(ip));
        }
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(u->ssl), name[0] ? name : ip);
    }
    if (c->alpn_len > 0) {
        SSL_set_alpn_protos(u->ssl, c->alpn, c->alpn_len);
    }
    if (c->loop->sess != NULL) {
        char key[300];
        sess_key(c, key, sizeof(key));
        struct sess_slot *slot = sess_slot_for(c->loop, key);
        if (slot->sess != NULL && strcmp(slot->key, key) == 0) {
            SSL_set_session(u->ssl, slot->sess);
        }
    }
    c->state = S_UP_HANDSHAKE;
    return 0;
}

/* ---- minting ---------------------------------------------------------------------------- */

static void on_leaf(void *user, int status, struct cc_entry *e, uint64_t wait_ns);

static void resume_client(struct dp_conn *c)
{
    struct side *cl = &c->s[D_CLIENT];
    if (SSL_use_cert_and_key(cl->ssl, cc_entry_cert(c->leaf), cc_entry_key(c->leaf),
                             cc_entry_chain(c->leaf), 1) != 1) {
        px_log_ossl_errors("SSL_use_cert_and_key");
        c->fail_hello = true;
    }
    c->leaf_ready = true;
    c->state = S_CLIENT_HANDSHAKE;
}

void dp_tls_refuse(struct dp_conn *c, enum dp_outcome why)
{
    /* the ClientHello callback aborts with handshake_failure; then flush the alert and close */
    c->fail_hello = true;
    c->outcome = why;
    c->state = S_CLIENT_HANDSHAKE;
}

/*
 * No leaf because the HSM cannot sign (down, queue full, deadline missed). fail_mode closed:
 * refuse the handshake. open: pass the connection through untouched, on a fresh upstream
 * connection, by replaying the kept ClientHello bytes; the used upstream is dropped first.
 */
static void no_leaf(struct dp_conn *c, int status)
{
    struct dp_loop *l = c->loop;
    bool open = c->g->cfg->fail_mode == PX_FAIL_OPEN && !c->hello_overflow && c->hello_len > 0;
    px_log(PX_LOG_WARN, "dp", "conn=%u:%u %s: no leaf: %s (fail %s)", c->slot, c->gen, c->host,
           px_strerror(status), open ? "open: passing through" : "closed");
    if (!open) {
        atomic_fetch_add_explicit(&l->ctr.refused_hsm, 1, memory_order_relaxed);
        dp_tls_refuse(c, O_REFUSED_HSM);
        return;
    }
    atomic_fetch_add_explicit(&l->ctr.fail_open, 1, memory_order_relaxed);
    c->fail_open = true;
    c->outcome = O_FAIL_OPEN;
    c->state = S_REOPEN;
    if (c->s[D_UP].fd >= 0) {
        shutdown(c->s[D_UP].fd, SHUT_RDWR); /* wakes its pending recv */
    }
}

/* S_REOPEN: once nothing of the old upstream is in flight, connect a new one. */
void dp_leaf_reopen(struct dp_conn *c)
{
    struct side *u = &c->s[D_UP];
    if (u->recv_armed || u->send_armed) {
        return;
    }
    if (u->fd >= 0) {
        close(u->fd);
        u->fd = -1;
    }
    if (u->ssl != NULL) {
        SSL_free(u->ssl);
        u->ssl = NULL;
        u->in = NULL;
    }
    u->out = BIO_new(BIO_s_mem());
    u->olen = u->ooff = 0;
    u->eof = u->err = false;
    c->up_connected = false;
    dp_conn_connect(c);
}

void dp_leaf_get(struct dp_conn *c)
{
    struct dp_loop *l = c->loop;
    struct side *u = &c->s[D_UP];
    X509 *peer = SSL_get0_peer_certificate(u->ssl);
    c->verify_result = SSL_get_verify_result(u->ssl);
    c->up_resumed = SSL_session_reused(u->ssl) == 1;
    atomic_fetch_add_explicit(c->up_resumed ? &l->ctr.up_resumed : &l->ctr.up_full, 1,
                              memory_order_relaxed);
    c->verified = !c->g->cfg->upstream_verify || c->verify_result == X509_V_OK;
    const unsigned char *sel = NULL;
    unsigned int sl = 0;
    SSL_get0_alpn_selected(u->ssl, &sel, &sl);
    if (sl > 0 && sl < sizeof(c->alpn_sel)) {
        memcpy(c->alpn_sel, sel, sl);
        c->alpn_sel_len = sl;
    }
    if (peer == NULL) {
        dp_tls_refuse(c, O_UPSTREAM_FAILED);
        return;
    }
    struct cc_entry *e = NULL;
    int r = cc_get(l->ccl, peer, c->verified, c->keykind, on_leaf, (void *)(uintptr_t)dp_conn_token(c),
                   &e);
    if (r == CC_HIT || r == CC_MINTED) {
        c->cache_result = r == CC_HIT ? "hit" : "minted";
        atomic_fetch_add_explicit(r == CC_HIT ? &l->ctr.cache_hit : &l->ctr.cache_miss, 1,
                                  memory_order_relaxed);
        c->leaf = e;
        resume_client(c);
    } else if (r == CC_PENDING) {
        c->cache_result = "miss";
        atomic_fetch_add_explicit(&l->ctr.cache_miss, 1, memory_order_relaxed);
        c->state = S_MINTING;
    } else if (r == PX_E_INVAL) {
        /* the upstream certificate itself cannot be mirrored: never pass it through */
        dp_tls_refuse(c, O_UPSTREAM_FAILED);
    } else {
        no_leaf(c, r);
    }
}

struct dp_conn *dp_conn_by_token(struct dp_loop *l, uint64_t tok)
{
    uint32_t slot = (uint32_t)tok;
    uint16_t gen = (uint16_t)(tok >> 32);
    if (slot >= DP_MAX_CONNS) {
        return NULL;
    }
    struct dp_conn *c = &l->conns[slot];
    return (c->state != S_FREE && c->gen == gen) ? c : NULL;
}

__thread struct dp_loop *dp_loop_cur;

static void on_leaf(void *user, int status, struct cc_entry *e, uint64_t wait_ns)
{
    struct dp_loop *l = dp_loop_cur;
    struct dp_conn *c = dp_conn_by_token(l, (uint64_t)(uintptr_t)user);
    if (c == NULL || c->state != S_MINTING) {
        cc_entry_unref(e); /* the connection went away meanwhile */
        return;
    }
    c->hsm_wait_ns = wait_ns;
    if (status == PX_E_INVAL || status == PX_E_CRYPTO) {
        dp_tls_refuse(c, O_UPSTREAM_FAILED);
    } else if (status != 0) {
        no_leaf(c, status);
    } else {
        c->leaf = e;
        resume_client(c);
    }
    dp_conn_run(c);
}

/* ---- TLS callbacks ---------------------------------------------------------------------- */

/* Reads SNI, ALPN and signature algorithms; pauses the handshake until the leaf is there. */
static int client_hello_cb(SSL *s, int *al, void *arg)
{
    (void)arg;
    struct dp_conn *c = SSL_get_ex_data(s, g_conn_idx);
    if (c == NULL) {
        *al = SSL_AD_INTERNAL_ERROR;
        return SSL_CLIENT_HELLO_ERROR;
    }
    if (c->fail_hello) {
        *al = SSL_AD_HANDSHAKE_FAILURE;
        return SSL_CLIENT_HELLO_ERROR;
    }
    if (c->leaf_ready) {
        return SSL_CLIENT_HELLO_SUCCESS;
    }
    if (!c->hello_seen) {
        const unsigned char *p;
        size_t len;
        c->hello_seen = true;
        if (SSL_client_hello_get0_ext(s, TLSEXT_TYPE_server_name, &p, &len) == 1 && len >= 5) {
            size_t list = ((size_t)p[0] << 8) | p[1];
            size_t nl = ((size_t)p[3] << 8) | p[4];
            if (list + 2 <= len && p[2] == 0 && nl + 5 <= len && host_ok(p + 5, nl)) {
                memcpy(c->sni, p + 5, nl);
                c->sni[nl] = '\0';
            } else {
                px_log(PX_LOG_DEBUG, "dp", "conn=%u:%u unusable SNI (%zu bytes) ignored", c->slot,
                       c->gen, len);
            }
        }
        if (SSL_client_hello_get0_ext(s, TLSEXT_TYPE_application_layer_protocol_negotiation, &p,
                                      &len) == 1 &&
            len >= 2) {
            size_t list = ((size_t)p[0] << 8) | p[1];
            if (list + 2 == len && list < sizeof(c->alpn)) {
                memcpy(c->alpn, p + 2, list);
                c->alpn_len = (uint32_t)list;
            }
        }
        /* RSA leaf only for clients that offer no ECDSA signature algorithm */
        c->keykind = CC_KEY_EC;
        if (SSL_client_hello_get0_ext(s, TLSEXT_TYPE_signature_algorithms, &p, &len) == 1 &&
            len >= 2) {
            bool ecdsa = false;
            for (size_t i = 2; i + 1 < len; i += 2) {
                if (p[i + 1] == 0x03) { /* ecdsa_* (SignatureScheme low byte 3) */
                    ecdsa = true;
                }
            }
            if (!ecdsa) {
                c->keykind = CC_KEY_RSA;
            }
        }
    }
    return SSL_CLIENT_HELLO_RETRY;
}

static int alpn_select_cb(SSL *s, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)arg;
    struct dp_conn *c = SSL_get_ex_data(s, g_conn_idx);
    if (c == NULL || c->alpn_sel_len == 0) {
        return SSL_TLSEXT_ERR_NOACK;
    }
    for (unsigned int i = 0; i < inlen;) {
        unsigned int l = in[i];
        if (i + 1 + l > inlen) {
            break;
        }
        if (l == c->alpn_sel_len && memcmp(in + i + 1, c->alpn_sel, l) == 0) {
            *out = in + i + 1;
            *outlen = (unsigned char)l;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + l;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

int dp_tls_client_start(struct dp_conn *c)
{
    struct side *cl = &c->s[D_CLIENT];
    BIO *keep_out = cl->out; /* may already hold "200 Connection established" */
    cl->ssl = SSL_new(c->g->sctx);
    BIO *rb = BIO_new(BIO_s_mem());
    if (cl->ssl == NULL || rb == NULL) {
        BIO_free(rb);
        return PX_E_CRYPTO;
    }
    BIO_set_mem_eof_return(rb, -1);
    SSL_set_bio(cl->ssl, rb, keep_out);
    cl->in = rb;
    SSL_set_ex_data(cl->ssl, g_conn_idx, c);
    SSL_set_accept_state(cl->ssl);
    c->hello = malloc(DP_HELLO_MAX);
    if (c->hello == NULL) {
        return -ENOMEM;
    }
    c->state = S_CLIENT_HELLO;
    return 0;
}

/* Client bytes that arrive before the handshake is decided are kept for a replay (bypass). */
void dp_tls_client_bytes(struct dp_conn *c, const uint8_t *p, size_t n)
{
    if (c->state == S_CLIENT_HELLO && c->hello != NULL) {
        if (c->hello_len + n <= DP_HELLO_MAX) {
            memcpy(c->hello + c->hello_len, p, n);
            c->hello_len += (uint32_t)n;
        } else {
            c->hello_overflow = true;
        }
    }
    BIO_write(c->s[D_CLIENT].in, p, (int)n);
}

/* ---- the state machine ------------------------------------------------------------------ */

void dp_relay_splice(struct dp_conn *c)
{
    /* drop the TLS objects: from now on bytes pass untouched */
    struct side *cl = &c->s[D_CLIENT];
    BIO *pending = BIO_new(BIO_s_mem());
    SSL_free(cl->ssl);
    cl->ssl = NULL;
    cl->in = NULL;
    cl->out = pending;
    c->state = S_SPLICE;
    if (!c->fail_open) {
        c->outcome = O_BYPASS;
        atomic_fetch_add_explicit(&c->loop->ctr.bypassed, 1, memory_order_relaxed);
    }
    if (c->hello_len > 0) {
        dp_relay_queue(c, D_UP, c->hello, c->hello_len);
    }
}

static void after_hello(struct dp_conn *c)
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
    const char *name = c->sni[0] ? c->sni : c->host;
    if (c->g->nbypass > 0 && dp_policy_bypassed(c->g, name)) {
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
    if (!c->up_connected) {
        dp_conn_connect(c);
        return;
    }
    if (dp_tls_upstream_start(c) != 0) {
        dp_conn_abort(c, O_UPSTREAM_FAILED);
    }
}

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
    j->done = &l->res_done;
    if (dp_resolver_submit(l->srv->res, j) != 0) {
        free(j);
        static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                   "Connection: close\r\n\r\n";
        dp_relay_queue(c, D_CLIENT, busy, sizeof(busy) - 1);
        dp_conn_finish(c, O_UPSTREAM_FAILED);
        return;
    }
    c->state = S_RESOLVING;
}

static void answer_http(struct dp_conn *c, int code, const char *reason, enum dp_outcome why)
{
    char buf[256];
    int n = snprintf(buf, sizeof(buf),
                     "HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n"
                     "Proxy-Agent: tlsmint\r\n\r\n",
                     code, reason);
    dp_relay_queue(c, D_CLIENT, buf, (size_t)n);
    dp_conn_finish(c, why);
}

static void step_connect_req(struct dp_conn *c)
{
    struct side *cl = &c->s[D_CLIENT];
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
    uint8_t tail[DP_RBUF];
    memcpy(tail, cl->rbuf + used, rest);
    cl->rlen = 0;
    if (dp_tls_client_start(c) != 0) {
        dp_conn_abort(c, O_CLIENT_ERROR);
        return;
    }
    c->state = S_CONNECT_REQ; /* still: TLS starts after the 200 */
    if (rest > 0) {
        BIO_write(cl->in, tail, (int)rest);
        memcpy(c->hello, tail, rest);
        c->hello_len = (uint32_t)rest;
    }
    start_dns_or_connect(c);
}

void dp_relay_tls(struct dp_conn *c, int from)
{
    int to = from ^ 1;
    struct side *a = &c->s[from], *b = &c->s[to];
    uint8_t buf[16384];
    while (dp_pending_out(c, to) < DP_PENDING_MAX && a->ssl != NULL && b->ssl != NULL) {
        int n = SSL_read(a->ssl, buf, sizeof(buf));
        if (n > 0) {
            if (SSL_write(b->ssl, buf, n) != n) {
                dp_conn_abort(c, O_CLIENT_ERROR);
                return;
            }
            if (from == D_CLIENT) {
                c->bytes_c2u += (uint64_t)n;
            } else {
                c->bytes_u2c += (uint64_t)n;
            }
            c->last_ns = px_now_ns();
            continue;
        }
        int e = SSL_get_error(a->ssl, n);
        if (e == SSL_ERROR_WANT_READ) {
            if (a->eof) {
                /* TCP closed without close_notify: end the other side too */
                a->err = true;
                dp_conn_finish(c, c->outcome == O_NONE ? O_OK : c->outcome);
            }
            return;
        }
        if (e == SSL_ERROR_ZERO_RETURN) {
            /* close_notify: pass it on */
            if (from == D_CLIENT && !c->up_shut_sent) {
                SSL_shutdown(b->ssl);
                c->up_shut_sent = true;
            } else if (from == D_UP && !c->cl_shut_sent) {
                SSL_shutdown(b->ssl);
                c->cl_shut_sent = true;
            }
            a->eof = true;
            if (c->up_shut_sent && c->cl_shut_sent) {
                dp_conn_finish(c, O_OK);
            }
            return;
        }
        /* alert or reset from this side: end the other side cleanly */
        ERR_clear_error();
        if (!(from == D_CLIENT ? c->up_shut_sent : c->cl_shut_sent)) {
            SSL_shutdown(b->ssl);
        }
        dp_conn_finish(c, from == D_UP ? O_UPSTREAM_FAILED : O_CLIENT_ERROR);
        return;
    }
}

void dp_conn_run(struct dp_conn *c)
{
    for (int guard = 0; guard < 16; guard++) {
        enum dp_state before = c->state;
        switch (c->state) {
        case S_CONNECT_REQ:
            if (c->s[D_CLIENT].ssl == NULL) {
                step_connect_req(c);
            }
            break;
        case S_CLIENT_HELLO: {
            SSL *s = c->s[D_CLIENT].ssl;
            int r = SSL_do_handshake(s);
            int e = SSL_get_error(s, r);
            if (e == SSL_ERROR_WANT_CLIENT_HELLO_CB) {
                after_hello(c);
            } else if (e == SSL_ERROR_WANT_READ) {
                if (c->s[D_CLIENT].eof) {
                    dp_conn_abort(c, O_CLIENT_ERROR);
                }
            } else {
                ERR_clear_error();
                px_log(PX_LOG_DEBUG, "dp", "conn=%u:%u malformed ClientHello", c->slot, c->gen);
                dp_conn_finish(c, O_CLIENT_ERROR);
            }
            break;
        }
        case S_UP_HANDSHAKE: {
            SSL *s = c->s[D_UP].ssl;
            int r = SSL_do_handshake(s);
            if (r == 1) {
                dp_leaf_get(c);
                break;
            }
            int e = SSL_get_error(s, r);
            if (e == SSL_ERROR_WANT_READ && !c->s[D_UP].eof) {
                break;
            }
            unsigned long oe = ERR_peek_error();
            char eb[160] = "closed";
            if (oe) {
                ERR_error_string_n(oe, eb, sizeof(eb));
            }
            ERR_clear_error();
            px_log(PX_LOG_INFO, "dp", "conn=%u:%u upstream %s:%u TLS failed: %s", c->slot, c->gen,
                   c->host, c->port, eb);
            atomic_fetch_add_explicit(&c->loop->ctr.upstream_failed, 1, memory_order_relaxed);
            dp_tls_refuse(c, O_UPSTREAM_FAILED);
            break;
        }
        case S_CLIENT_HANDSHAKE: {
            SSL *s = c->s[D_CLIENT].ssl;
            int r = SSL_do_handshake(s);
            if (r == 1) {
                c->state = S_RELAY;
                c->deadline_ns = 0;
                if (c->outcome == O_NONE) {
                    c->outcome = O_OK;
                }
                free(c->hello);
                c->hello = NULL;
                atomic_fetch_add_explicit(&c->loop->ctr.handshakes_ok, 1, memory_order_relaxed);
                break;
            }
            int e = SSL_get_error(s, r);
            if (e == SSL_ERROR_WANT_READ && !c->s[D_CLIENT].eof) {
                break;
            }
            ERR_clear_error();
            atomic_fetch_add_explicit(&c->loop->ctr.handshakes_failed, 1, memory_order_relaxed);
            dp_conn_finish(c, c->fail_hello && c->outcome != O_NONE ? c->outcome : O_CLIENT_ERROR);
            break;
        }
        case S_RELAY:
            dp_relay_tls(c, D_CLIENT);
            if (c->state == S_RELAY) {
                dp_relay_tls(c, D_UP);
            }
            break;
        case S_REOPEN:
            dp_leaf_reopen(c);
            break;
        case S_SPLICE:
            if ((c->s[D_CLIENT].eof || c->s[D_UP].eof) && dp_pending_out(c, D_CLIENT) == 0 &&
                dp_pending_out(c, D_UP) == 0) {
                dp_conn_finish(c, c->fail_open ? O_FAIL_OPEN : O_BYPASS);
            }
            break;
        case S_CLOSING:
            if ((dp_pending_out(c, D_CLIENT) == 0 || c->s[D_CLIENT].err || c->s[D_CLIENT].fd < 0) &&
                (dp_pending_out(c, D_UP) == 0 || c->s[D_UP].err || c->s[D_UP].fd < 0)) {
                for (int d = 0; d < 2; d++) {
                    if (c->s[d].fd >= 0) {
                        shutdown(c->s[d].fd, SHUT_RDWR);
                    }
                    c->s[d].eof = true;
                }
                dp_conn_release(c);
                return;
            }
            break;
        default:
            break;
        }
        if (c->state == S_FREE) {
            return;
        }
        if (c->state == before) {
            break;
        }
    }
    if (c->state != S_FREE) {
        dp_relay_arm(c);
    }
}

/* ---- CQE handlers ----------------------------------------------------------------------- */

void dp_loop_arm_accept(struct dp_loop *l, int which)
{
    if (l->lfd[which] < 0 || l->accept_armed[which] || l->stopping) {
        return;
    }
    struct io_uring_sqe *sqe = dp_sqe(l);
    io_uring_prep_multishot_accept(sqe, l->lfd[which], NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    union dp_ud u = {.f = {.op = OP_ACCEPT, .dir = (uint8_t)which}};
    io_uring_sqe_set_data64(sqe, u.u);
    l->accept_armed[which] = true;
}

void dp_conn_accept(struct dp_loop *l, int which, int res, uint32_t flags)
{
    if (!(flags & IORING_CQE_F_MORE)) {
        l->accept_armed[which] = false;
    }
    if (res < 0) {
        if (res != -ECANCELED && res != -EINVAL) {
            px_log(PX_LOG_WARN, "dp", "accept: %s", strerror(-res));
        }
        dp_loop_arm_accept(l, which);
        return;
    }
    int fd = res;
    if (l->stopping) {
        close(fd);
        return;
    }
    struct dp_conn *c = conn_new(l, fd);
    if (c == NULL) {
        px_log(PX_LOG_WARN, "dp", "loop %d: connection table full (%d): refusing", l->idx,
               DP_MAX_CONNS);
        close(fd);
        dp_loop_arm_accept(l, which);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    socklen_t al = sizeof(c->client_addr);
    getpeername(fd, (struct sockaddr *)&c->client_addr, &al);
    if (which == 0) {
        c->state = S_CONNECT_REQ;
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
            px_log(PX_LOG_WARN, "dp", "conn=%u:%u transparent: no original destination (%s): "
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
    }
    dp_conn_run(c);
    dp_loop_arm_accept(l, which);
}

void dp_relay_on_recv(struct dp_conn *c, int dir, int res)
{
    struct side *sd = &c->s[dir];
    sd->recv_armed = false;
    if (c->state == S_CLOSING) {
        dp_conn_release(c);
        if (c->state != S_FREE) {
            dp_conn_run(c);
        }
        return;
    }
    if (c->state == S_REOPEN) {
        dp_conn_run(c); /* the old upstream's last bytes are dropped */
        return;
    }
    if (res <= 0) {
        sd->eof = true;
        if (res < 0) {
            sd->err = true;
        }
        if (c->state == S_SPLICE) {
            /* half-close: pass the FIN on once what is queued is out */
            int other = dir ^ 1;
            if (c->s[other].fd >= 0 && dp_pending_out(c, other) == 0) {
                shutdown(c->s[other].fd, SHUT_WR);
            }
        }
        dp_conn_run(c);
        return;
    }
    c->last_ns = px_now_ns();
    uint8_t *p = sd->rbuf + sd->rlen;
    size_t n = (size_t)res;
    if (c->state == S_CONNECT_REQ && dir == D_CLIENT && sd->ssl == NULL) {
        sd->rlen += (uint32_t)n;
    } else if (c->state == S_SPLICE) {
        dp_relay_queue(c, dir ^ 1, p, n);
        if (dir == D_CLIENT) {
            c->bytes_c2u += n;
        } else {
            c->bytes_u2c += n;
        }
    } else if (sd->in != NULL) {
        if (dir == D_CLIENT) {
            dp_tls_client_bytes(c, p, n);
        } else {
            BIO_write(sd->in, p, (int)n);
        }
    }
    dp_conn_run(c);
}

void dp_relay_on_send(struct dp_conn *c, int dir, int res)
{
    struct side *sd = &c->s[dir];
    sd->send_armed = false;
    if (c->state == S_REOPEN && dir == D_UP) {
        sd->olen = sd->ooff = 0;
        free(sd->obuf);
        sd->obuf = NULL;
        dp_conn_run(c);
        return;
    }
    if (res < 0) {
        sd->err = true;
        sd->olen = sd->ooff = 0;
        (void)BIO_reset(sd->out);
        /* the peer reset or vanished mid-stream: not a clean end, whatever came before */
        dp_conn_abort(c, dir == D_CLIENT ? O_CLIENT_ERROR : O_UPSTREAM_FAILED);
        return;
    }
    sd->ooff += (uint32_t)res;
    if (sd->ooff >= sd->olen) {
        sd->olen = sd->ooff = 0;
        if (BIO_ctrl_pending(sd->out) == 0) {
            free(sd->obuf); /* an idle connection holds no send buffer */
            sd->obuf = NULL;
        }
    }
    dp_conn_run(c);
}

void dp_conn_on_connect(struct dp_conn *c, int res)
{
    if (c->state == S_CLOSING) {
        dp_conn_release(c);
        return;
    }
    if (res < 0) {
        char d[64];
        dp_addr_str(&c->dst, d, sizeof(d));
        px_log(PX_LOG_INFO, "dp", "conn=%u:%u connect %s (%s): %s", c->slot, c->gen, d, c->host,
               res == -ECANCELED ? "timed out" : strerror(-res));
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
        c->state = S_CLIENT_HELLO;
        dp_conn_run(c);
        return;
    }
    if (c->fail_open) {
        dp_relay_splice(c);
        c->outcome = O_FAIL_OPEN;
    } else if (c->outcome == O_BYPASS) {
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
        struct dp_conn *c = dp_conn_by_token(l, j->token);
        if (c != NULL && c->state == S_RESOLVING) {
            if (j->status != 0) {
                px_log(PX_LOG_INFO, "dp", "conn=%u:%u cannot resolve %s: %s", c->slot, c->gen,
                       c->host, gai_strerror(j->status));
                atomic_fetch_add_explicit(&l->ctr.upstream_failed, 1, memory_order_relaxed);
                answer_http(c, 502, "Bad Gateway", O_UPSTREAM_FAILED);
            } else {
                memcpy(&c->dst, &j->addr, j->addrlen);
                c->dstlen = j->addrlen;
                dp_conn_connect(c);
                dp_conn_run(c);
            }
        }
        free(j);
        j = n;
    }
}

void dp_loop_arm_events(struct dp_loop *l, int which)
{
    struct io_uring_sqe *sqe = dp_sqe(l);
    union dp_ud u = {.f = {.op = (uint8_t)(which == 0 ? OP_CC : OP_RES), .dir = l->cc_epoch}};
    if (which == 0) {
        io_uring_prep_read(sqe, cc_loop_fd(l->ccl), &l->cc_val, sizeof(l->cc_val), 0);
    } else {
        io_uring_prep_read(sqe, l->res_done.evfd, &l->res_val, sizeof(l->res_val), 0);
    }
    io_uring_sqe_set_data64(sqe, u.u);
}

static void arm_tick(struct dp_loop *l)
{
    struct io_uring_sqe *sqe = dp_sqe(l);
    l->tick.tv_sec = 0;
    l->tick.tv_nsec = DP_TICK_MS * 1000000ll;
    io_uring_prep_timeout(sqe, &l->tick, 0, 0);
    union dp_ud u = {.f = {.op = OP_TIMER}};
    io_uring_sqe_set_data64(sqe, u.u);
}

static void handle_tick(struct dp_loop *l)
{
    uint64_t now = px_now_ns();
    for (uint32_t i = 0; i < DP_MAX_CONNS; i++) {
        struct dp_conn *c = &l->conns[i];
        if (c->state == S_FREE || c->state == S_CLOSING) {
            continue;
        }
        bool hs_late = c->deadline_ns != 0 && now > c->deadline_ns;
        bool idle = (c->state == S_RELAY || c->state == S_SPLICE) &&
                    now - c->last_ns > (uint64_t)DP_IDLE_MS * 1000000ull;
        bool drain = l->stopping && now > l->drain_deadline_ns;
        if (hs_late || idle || drain) {
            dp_conn_abort(c, drain ? O_SHUTDOWN : O_TIMEOUT);
        }
    }
    arm_tick(l);
}

static void handle_cqe(struct dp_loop *l, struct io_uring_cqe *cqe)
{
    union dp_ud u = {.u = io_uring_cqe_get_data64(cqe)};
    switch (u.f.op) {
    case OP_ACCEPT:
        dp_conn_accept(l, u.f.dir, cqe->res, cqe->flags);
        return;
    case OP_TIMER:
        handle_tick(l);
        return;
    case OP_CC:
        if (u.f.dir != l->cc_epoch) {
            return; /* the read of a previous generation's handle: not re-armed */
        }
        cc_loop_poll(l->ccl);
        dp_loop_arm_events(l, 0);
        return;
    case OP_RES:
        dp_conn_on_resolved(l);
        dp_loop_arm_events(l, 1);
        return;
    case OP_RECV:
    case OP_SEND:
    case OP_CONNECT:
    case OP_LTIMEOUT:
        break;
    default:
        px_log(PX_LOG_WARN, "dp", "loop %d: CQE with unknown op %u dropped", l->idx, u.f.op);
        return;
    }
    if (u.f.slot >= DP_MAX_CONNS) {
        return;
    }
    struct dp_conn *c = &l->conns[u.f.slot];
    if (c->gen != u.f.gen || c->state == S_FREE) {
        return; /* a late completion for a connection that is gone */
    }
    c->inflight--;
    switch (u.f.op) {
    case OP_RECV:
        dp_relay_on_recv(c, u.f.dir, cqe->res);
        break;
    case OP_SEND:
        dp_relay_on_send(c, u.f.dir, cqe->res);
        break;
    case OP_CONNECT:
        dp_conn_on_connect(c, cqe->res);
        break;
    case OP_LTIMEOUT:
        if (c->state == S_CLOSING) {
            dp_conn_release(c);
        }
        break;
    default:
        break;
    }
}

/*
 * Takes the server's current generation for new connections. The previous cache handle is
 * kept (and polled) until the mints it started are done; at most one previous one is kept, an
 * older one still busy is finished by polling here.
 */
void dp_gen_switch(struct dp_loop *l)
{
    struct dp_server *srv = l->srv;
    pthread_mutex_lock(&srv->gen_lock);
    struct dp_gen *g = srv->gen;
    dp_gen_ref(g);
    pthread_mutex_unlock(&srv->gen_lock);
    struct cc_loop *nccl = cc_loop_new(g->cc);
    if (nccl == NULL) {
        dp_gen_unref(g);
        return; /* keep the old one; try again next iteration */
    }
    while (l->old_ccl != NULL && cc_loop_pending(l->old_ccl) > 0) {
        cc_loop_poll(l->old_ccl);
        usleep(1000); /* only when two reloads come within one mint's deadline */
    }
    if (l->old_ccl != NULL) {
        (void)cc_loop_free(l->old_ccl);
        dp_gen_unref(l->old_g);
    }
    l->old_ccl = l->ccl;
    l->old_g = l->g;
    uint64_t one = 1; /* completes the read armed on the old handle's eventfd */
    ssize_t w = write(cc_loop_fd(l->old_ccl), &one, sizeof(one));
    (void)w;
    l->ccl = nccl;
    l->g = g;
    l->cc_epoch++;
    dp_loop_arm_events(l, 0);
}

/*
 * The ring is made on its own thread: with SINGLE_ISSUER the creating task is the only one that
 * may submit. Falls back to a plain ring on kernels without SINGLE_ISSUER/DEFER_TASKRUN.
 */
static int ring_init(struct dp_loop *l)
{
    struct io_uring_params p = {0};
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE;
    p.cq_entries = 8192;
    int r = io_uring_queue_init_params(1024, &l->ring, &p);
    if (r == -EINVAL) {
        memset(&p, 0, sizeof(p));
        p.flags = IORING_SETUP_CQSIZE;
        p.cq_entries = 8192;
        r = io_uring_queue_init_params(1024, &l->ring, &p);
    }
    return r;
}

void *dp_loop_main(void *arg)
{
    struct dp_loop *l = arg;
    struct dp_server *srv = l->srv;
    dp_loop_cur = l;
    int r0 = ring_init(l);
    pthread_mutex_lock(&srv->start_lock);
    l->ring_ok = r0 == 0;
    l->start_err = r0;
    srv->started++;
    pthread_cond_broadcast(&srv->start_cond);
    pthread_mutex_unlock(&srv->start_lock);
    if (r0 != 0) {
        return NULL;
    }
    dp_loop_arm_accept(l, 0);
    dp_loop_arm_accept(l, 1);
    dp_loop_arm_events(l, 0);
    dp_loop_arm_events(l, 1);
    arm_tick(l);
    bool stop_seen = false;
    for (;;) {
        struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = 100000000};
        struct io_uring_cqe *cqe = NULL;
        int r = io_uring_submit_and_wait_timeout(&l->ring, &cqe, 1, &ts, NULL);
        if (r < 0 && r != -ETIME && r != -EINTR && r != -EBUSY) {
            px_log(PX_LOG_ERROR, "dp", "loop %d: io_uring: %s", l->idx, strerror(-r));
        }
        /* a reload applies before this batch: a connection accepted now gets the new one */
        if (atomic_load_explicit(&srv->gen_id, memory_order_acquire) != l->g->id) {
            dp_gen_switch(l);
        }
        unsigned head, n = 0;
        io_uring_for_each_cqe(&l->ring, head, cqe)
        {
            handle_cqe(l, cqe);
            n++;
        }
        io_uring_cq_advance(&l->ring, n);
        if (l->old_ccl != NULL) {
            cc_loop_poll(l->old_ccl);
            if (cc_loop_pending(l->old_ccl) == 0) {
                (void)cc_loop_free(l->old_ccl);
                l->old_ccl = NULL;
                dp_gen_unref(l->old_g);
                l->old_g = NULL;
            }
        }
        if (atomic_load(&l->srv->stop) && !stop_seen) {
            stop_seen = true;
            l->stopping = true;
            l->drain_deadline_ns =
                px_now_ns() + (uint64_t)atomic_load(&l->srv->drain_ms) * 1000000ull;
            for (int w = 0; w < 2; w++) {
                if (l->lfd[w] >= 0) {
                    shutdown(l->lfd[w], SHUT_RDWR);
                }
            }
        }
        if (stop_seen && l->nactive == 0 && cc_loop_pending(l->ccl) == 0 && l->old_ccl == NULL) {
            break;
        }
    }
    return NULL;
}

/*
 * The loop's own state, before its thread starts: connection table, upstream session cache,
 * cache handle of g (a reference of g is taken), resolver completion eventfd. -ENOMEM; what
 * was made is freed by dp_loop_fini.
 */
int dp_loop_init(struct dp_loop *l, struct dp_gen *g, struct cc_ctx *cc)
{
    l->conns = calloc(DP_MAX_CONNS, sizeof(*l->conns));
    l->sess = calloc(DP_SESS_SLOTS, sizeof(*l->sess));
    l->g = g;
    dp_gen_ref(l->g);
    l->ccl = cc_loop_new(cc);
    l->res_done.evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (l->conns == NULL || l->ccl == NULL || l->res_done.evfd < 0) {
        return -ENOMEM;
    }
    atomic_init(&l->res_done.head, NULL);
    for (uint32_t k = DP_MAX_CONNS; k-- > 0;) {
        l->conns[k].slot = k;
        l->conns[k].next_free = l->free_list;
        l->free_list = &l->conns[k];
    }
    return 0;
}

/* Frees what dp_loop_init made and every connection still open; the thread has ended. */
void dp_loop_fini(struct dp_loop *l)
{
    if (l->ring_ok) {
        io_uring_queue_exit(&l->ring);
    }
    if (l->conns != NULL) {
        for (uint32_t k = 0; k < DP_MAX_CONNS; k++) {
            struct dp_conn *c = &l->conns[k];
            if (c->state != S_FREE) {
                c->inflight = 0;
                dp_conn_release(c);
            }
        }
    }
    free(l->conns);
    for (int k = 0; l->sess != NULL && k < DP_SESS_SLOTS; k++) {
        SSL_SESSION_free(l->sess[k].sess);
    }
    free(l->sess);
    if (l->ccl != NULL && cc_loop_free(l->ccl) != 0) {
        px_log(PX_LOG_WARN, "dp", "loop %d: mints still pending at exit", l->idx);
    }
    if (l->old_ccl != NULL && cc_loop_free(l->old_ccl) != 0) {
        px_log(PX_LOG_WARN, "dp", "loop %d: mints of a previous generation pending at exit",
               l->idx);
    }
    dp_gen_unref(l->old_g);
    dp_gen_unref(l->g);
    if (l->res_done.evfd >= 0) {
        struct dp_res_job *j = dp_res_done_take(&l->res_done);
        while (j != NULL) {
            struct dp_res_job *n = j->next;
            free(j);
            j = n;
        }
        close(l->res_done.evfd);
    }
}

/* ---- server ----------------------------------------------------------------------------- */

static int listen_on(const char *hostport, bool transparent, int *bound_port, char *err,
                     size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t len;
    int port;
    if (dp_addr_parse(hostport, &ss, &len, &port) != 0) {
        snprintf(err, errlen, "[listen] '%s' is not IP:PORT", hostport);
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (transparent &&
        setsockopt(fd, ss.ss_family == AF_INET6 ? SOL_IPV6 : SOL_IP,
                   ss.ss_family == AF_INET6 ? IPV6_TRANSPARENT : IP_TRANSPARENT, &one,
                   sizeof(one)) != 0) {
        snprintf(err, errlen, "[listen] tproxy: IP_TRANSPARENT on %s: %s (needs CAP_NET_ADMIN)",
                 hostport, strerror(errno));
        close(fd);
        return -1;
    }
    if (bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, 1024) != 0) {
        snprintf(err, errlen, "[listen] cannot listen on %s: %s", hostport, strerror(errno));
        close(fd);
        return -1;
    }
    struct sockaddr_storage b;
    socklen_t bl = sizeof(b);
    getsockname(fd, (struct sockaddr *)&b, &bl);
    *bound_port = ntohs(b.ss_family == AF_INET ? ((struct sockaddr_in *)&b)->sin_port
                                               : ((struct sockaddr_in6 *)&b)->sin6_port);
    return fd;
}

/*
 * The TLS half of a generation: both SSL_CTXs, the trust store loaded once. Fills g->sctx and
 * g->uctx (freed with the generation, also on failure); a negative value and one line in err.
 */
int dp_tls_ctx_init(struct dp_gen *g, const struct px_cfg *cfg, char *err, size_t errlen)
{
    if (g_conn_idx < 0) {
        g_conn_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    }
    g->sctx = SSL_CTX_new(TLS_server_method());
    g->uctx = SSL_CTX_new(TLS_client_method());
    if (g->sctx == NULL || g->uctx == NULL) {
        snprintf(err, errlen, "cannot create TLS contexts");
        return PX_E_CRYPTO;
    }
    SSL_CTX_set_min_proto_version(g->sctx, TLS1_2_VERSION);
    SSL_CTX_set_min_proto_version(g->uctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(g->sctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_mode(g->uctx, SSL_MODE_RELEASE_BUFFERS);
    /* both halves re-encrypt every byte: prefer AES-128-GCM (~10-15 % cheaper than AES-256 here,
     * OPENSSL-NOTES.md); clients and upstreams without it still get what they offer */
    static const char suites[] =
        "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
    SSL_CTX_set_ciphersuites(g->sctx, suites);
    SSL_CTX_set_ciphersuites(g->uctx, suites);
    SSL_CTX_set_options(g->sctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_client_hello_cb(g->sctx, client_hello_cb, NULL);
    SSL_CTX_set_alpn_select_cb(g->sctx, alpn_select_cb, NULL);
    SSL_CTX_set_verify(g->uctx, SSL_VERIFY_NONE, NULL); /* verified, recorded, decided by us */
    if (SSL_CTX_load_verify_locations(g->uctx, cfg->upstream_ca_file, NULL) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "[upstream] ca_file %s cannot be loaded", cfg->upstream_ca_file);
        return PX_E_CONFIG;
    }
    if (g_keylog != NULL) {
        SSL_CTX_set_keylog_callback(g->sctx, keylog_cb);
        SSL_CTX_set_keylog_callback(g->uctx, keylog_cb);
    }
    return 0;
}

void dp_tls_keylog_set(struct dp_alog *a)
{
    g_keylog = a;
}

/* [policy] bypass of cfg into g: comma or space separated, at most 64 entries. */
void dp_policy_load(struct dp_gen *g, const struct px_cfg *cfg)
{
    char tmp[sizeof(cfg->policy_bypass)];
    snprintf(tmp, sizeof(tmp), "%s", cfg->policy_bypass);
    for (char *sp = NULL, *t = strtok_r(tmp, ", \t", &sp); t && g->nbypass < 64;
         t = strtok_r(NULL, ", \t", &sp)) {
        snprintf(g->bypass[g->nbypass++], sizeof(g->bypass[0]), "%s", t);
    }
}

/* A generation for cfg and cc: TLS contexts with the trust store loaded once, bypass list. */
static struct dp_gen *gen_new(const struct px_cfg *cfg, struct cc_ctx *cc, char *err, size_t errlen)
{
    struct dp_gen *g = calloc(1, sizeof(*g));
    if (g == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    atomic_init(&g->refs, 1);
    g->cfg = cfg;
    g->cc = cc;
    if (dp_tls_ctx_init(g, cfg, err, errlen) != 0) {
        g->cc = NULL; /* still the caller's */
        dp_gen_unref(g);
        return NULL;
    }
    dp_policy_load(g, cfg);
    return g;
}

int dp_server_reload(struct dp_server *s, const struct px_cfg *cfg, struct cc_ctx *cc, char *err,
                     size_t errlen)
{
    struct dp_gen *g = gen_new(cfg, cc, err, errlen);
    if (g == NULL) {
        return PX_E_CONFIG; /* cc is still the caller's */
    }
    pthread_mutex_lock(&s->gen_lock);
    struct dp_gen *old = s->gen;
    g->id = old->id + 1;
    s->gen = g;
    atomic_store(&s->gen_id, g->id);
    pthread_mutex_unlock(&s->gen_lock);
    dp_gen_unref(old); /* loops and connections still holding it keep it alive */
    px_log(PX_LOG_INFO, "dp", "reload: generation %u in use for new connections", g->id);
    return 0;
}

struct dp_server *dp_server_new(const struct px_cfg *cfg, struct hsm_pool *pool, struct cc_ctx *cc,
                                char *err, size_t errlen)
{
    struct dp_server *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->cfg = cfg;
    s->pool = pool;
    pthread_mutex_init(&s->start_lock, NULL);
    pthread_cond_init(&s->start_cond, NULL);
    pthread_mutex_init(&s->gen_lock, NULL);
    s->res = dp_resolver_new(2);
    s->alog = dp_alog_new(cfg->log_access, 0640, err, errlen);
    if (s->alog != NULL && cfg->log_keylog[0]) {
        /* debugging only: these lines decrypt captured traffic, so the file is 0600 */
        s->keylog = dp_alog_new(cfg->log_keylog, 0600, err, errlen);
        if (s->keylog == NULL) {
            dp_server_free(s);
            return NULL;
        }
        dp_tls_keylog_set(s->keylog);
        px_log(PX_LOG_WARN, "dp", "SSLKEYLOGFILE output to %s: session secrets of both sides "
               "are being written", cfg->log_keylog);
    }
    if (s->res == NULL || s->alog == NULL) {
        if (s->res == NULL) {
            snprintf(err, errlen, "cannot start resolver threads");
        }
        dp_server_free(s);
        return NULL;
    }
    cc_ref(cc); /* the first generation's reference; the caller keeps its own */
    s->gen = gen_new(cfg, cc, err, errlen);
    if (s->gen == NULL) {
        cc_free(cc);
        dp_server_free(s);
        return NULL;
    }
    int n = cfg->threads > 0 ? cfg->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) {
        n = 1;
    }
    s->loops = calloc((size_t)n, sizeof(*s->loops));
    if (s->loops == NULL) {
        snprintf(err, errlen, "out of memory");
        dp_server_free(s);
        return NULL;
    }
    s->nloops = n;
    for (int i = 0; i < n; i++) {
        struct dp_loop *l = &s->loops[i];
        l->idx = i;
        l->srv = s;
        l->lfd[0] = l->lfd[1] = -1;
        l->res_done.evfd = -1;
    }
    for (int i = 0; i < n; i++) {
        struct dp_loop *l = &s->loops[i];
        if (cfg->listen_explicit[0]) {
            l->lfd[0] = listen_on(cfg->listen_explicit, false, &s->port_explicit, err, errlen);
            if (l->lfd[0] < 0) {
                dp_server_free(s);
                return NULL;
            }
        }
        if (cfg->listen_transparent[0]) {
            l->lfd[1] = listen_on(cfg->listen_transparent, cfg->listen_tproxy,
                                  &s->port_transparent, err, errlen);
            if (l->lfd[1] < 0) {
                dp_server_free(s);
                return NULL;
            }
        }
        if (dp_loop_init(l, s->gen, cc) != 0) {
            snprintf(err, errlen, "out of memory");
            dp_server_free(s);
            return NULL;
        }
    }
    return s;
}

int dp_server_start(struct dp_server *s)
{
    int created = 0;
    for (int i = 0; i < s->nloops; i++) {
        if (pthread_create(&s->loops[i].th, NULL, dp_loop_main, &s->loops[i]) != 0) {
            break;
        }
        created++;
    }
    pthread_mutex_lock(&s->start_lock);
    while (s->started < created) {
        pthread_cond_wait(&s->start_cond, &s->start_lock);
    }
    pthread_mutex_unlock(&s->start_lock);
    int err = created < s->nloops ? -EAGAIN : 0;
    for (int i = 0; i < created; i++) {
        if (!s->loops[i].ring_ok) {
            px_log(PX_LOG_ERROR, "dp", "loop %d: io_uring_queue_init: %s", i,
                   strerror(-s->loops[i].start_err));
            err = s->loops[i].start_err;
        }
    }
    return err;
}

void dp_server_stop(struct dp_server *s, int drain_ms)
{
    atomic_store(&s->drain_ms, drain_ms);
    atomic_store(&s->stop, true);
    for (int i = 0; i < s->nloops; i++) {
        if (s->loops[i].th) {
            pthread_join(s->loops[i].th, NULL);
            s->loops[i].th = 0;
        }
    }
}

void dp_server_free(struct dp_server *s)
{
    if (s == NULL) {
        return;
    }
    for (int i = 0; i < s->nloops; i++) {
        struct dp_loop *l = &s->loops[i];
        for (int w = 0; w < 2; w++) {
            if (l->lfd[w] >= 0) {
                close(l->lfd[w]);
            }
        }
        dp_loop_fini(l);
    }
    dp_resolver_free(s->res);
    dp_alog_free(s->alog);
    if (s->keylog != NULL) {
        dp_tls_keylog_set(NULL);
        dp_alog_free(s->keylog);
    }
    free(s->loops);
    dp_gen_unref(s->gen);
    free(s);
}

void dp_server_stats(struct dp_server *s, struct dp_stats *o)
{
    memset(o, 0, sizeof(*o));
    for (int i = 0; i < s->nloops; i++) {
        struct dp_counters *c = &s->loops[i].ctr;
        o->accepted += atomic_load(&c->accepted);
        o->active += atomic_load(&c->active);
        o->closed += atomic_load(&c->closed);
        o->handshakes_ok += atomic_load(&c->handshakes_ok);
        o->handshakes_failed += atomic_load(&c->handshakes_failed);
        o->bypassed += atomic_load(&c->bypassed);
        o->refused_hsm += atomic_load(&c->refused_hsm);
        o->upstream_failed += atomic_load(&c->upstream_failed);
        o->bad_request += atomic_load(&c->bad_request);
        o->cache_hit += atomic_load(&c->cache_hit);
        o->cache_miss += atomic_load(&c->cache_miss);
        o->bytes_c2u += atomic_load(&c->bytes_c2u);
        o->upstream_resumed += atomic_load(&c->up_resumed);
        o->upstream_full += atomic_load(&c->up_full);
        o->fail_open += atomic_load(&c->fail_open);
        o->bytes_u2c += atomic_load(&c->bytes_u2c);
        for (int k = 0; k < DP_OUTCOMES; k++) {
            o->outcome[k] += atomic_load(&c->outcome[k]);
        }
    }
}

const char *dp_outcome_name(int outcome)
{
    return outcome >= 0 && outcome < DP_OUTCOMES ? outcome_name[outcome] : "?";
}

void dp_server_cache_stats(struct dp_server *s, struct cc_stats *out)
{
    pthread_mutex_lock(&s->gen_lock);
    struct dp_gen *g = s->gen;
    dp_gen_ref(g);
    pthread_mutex_unlock(&s->gen_lock);
    cc_stats_get(g->cc, out);
    dp_gen_unref(g);
}

unsigned dp_server_generation(struct dp_server *s)
{
    return atomic_load(&s->gen_id);
}

int dp_server_explicit_port(const struct dp_server *s)
{
    return s->port_explicit;
}

int dp_server_transparent_port(const struct dp_server *s)
{
    return s->port_transparent;
}
