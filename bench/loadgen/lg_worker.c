/* SPDX-License-Identifier: MIT */
/*
 * lg_worker.c - one load-generating thread: an epoll loop over a fixed connection table.
 * Owns its table (sockets, SSL objects, per-connection buffers), a 64 KiB receive buffer,
 * its counters and histograms (struct lg_stats) and its ring of timeline buckets.
 * Each worker runs on its own thread; the main thread only reads the counters (relaxed
 * atomics) and sets the run-wide stop_starts / abort_all flags.
 * Invariants: a slot is either on the free stack or holds one live connection (fd >= 0);
 * epoll user data is {slot, gen} so a stale event for a reused slot is ignored; every
 * started connection ends exactly once, as ok or as one failure kind, or is held (idle)
 * until the run ends; every connection has a deadline while it has one to meet; the
 * table never grows.
 * Not here: option parsing, the SSL_CTX (shared, built by main), reporting.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "lg.h"

#define RBUF_SIZE (64 * 1024)
#define LINE_MAX_LEN 512
#define OUT_MAX 1200
#define SCAN_NS 10000000ull      /* timeout scan every 10 ms */
#define MAX_STARTS_PER_ROUND 256 /* rate mode: bound the catch-up work per loop round */
#define MAX_READS_PER_EVENT 64

enum conn_state {
    ST_FREE = 0,
    ST_TCP,        /* non-blocking connect in progress */
    ST_PROXY_SEND, /* writing the CONNECT request */
    ST_PROXY_RECV, /* reading the proxy's answer */
    ST_TLS,        /* SSL_connect */
    ST_HTTP_SEND,  /* writing the GET */
    ST_HTTP_RECV,  /* reading the response until close */
    ST_HELD,       /* idle scenario: established, kept open */
};

static const char *const state_names[] = {
    [ST_FREE] = "free",
    [ST_TCP] = "tcp connect",
    [ST_PROXY_SEND] = "CONNECT send",
    [ST_PROXY_RECV] = "CONNECT response",
    [ST_TLS] = "tls handshake",
    [ST_HTTP_SEND] = "request send",
    [ST_HTTP_RECV] = "response",
    [ST_HELD] = "held",
};

/* Incremental parser of an HTTP/1.x response head, line by line in a bounded buffer. */
struct head {
    char line[LINE_MAX_LEN];
    uint32_t len;
    bool overflow; /* current line longer than the buffer: skipped after the status line */
    bool status_seen;
    bool done; /* empty line seen */
    int status;
    int64_t content_length; /* -1: none */
    bool conn_close;        /* "Connection: close": the server ends the connection after it */
};

struct lg_conn {
    int fd;
    uint32_t gen;
    enum conn_state st;
    uint32_t events; /* epoll interest currently registered */
    SSL *ssl;
    uint64_t t_start;  /* latency origin: actual start, or scheduled start (rate) */
    uint64_t deadline; /* 0: none */
    uint64_t body;
    uint32_t out_len;
    uint32_t out_off;
    struct head head;
    char host[LG_NAME_MAX];
    char out[OUT_MAX];
};

struct lg_worker {
    struct lg_run *run;
    const struct lg_opts *o;
    unsigned index;
    pthread_t thread;
    bool started;
    int ep;
    struct lg_conn *conns;
    unsigned nslots;
    uint32_t *free_stack;
    unsigned nfree;
    uint64_t active;
    double rate;
    uint64_t interval_ns;
    uint64_t next_due;
    uint64_t next_scan;
    uint8_t *rbuf;
    struct lg_stats *st;
    struct lg_tl_slot *tl;
    SSL_SESSION *sess; /* --resume: the last good connection's session */
};

/* ---- timeline ---------------------------------------------------------------------- */

/* The bucket for `now`, reset by this (its only writer) when it still holds an old one. */
static struct lg_tl_slot *tl_slot(struct lg_worker *w, uint64_t now)
{
    uint64_t b = now > w->run->t0_ns ? (now - w->run->t0_ns) / LG_TL_NS : 0;
    struct lg_tl_slot *s = &w->tl[b % LG_TL_SLOTS];

    if (__atomic_load_n(&s->tag, __ATOMIC_ACQUIRE) != b + 1) {
        __atomic_store_n(&s->tag, 0, __ATOMIC_RELEASE);
        memset((char *)s + sizeof(s->tag), 0, sizeof(*s) - sizeof(s->tag));
        __atomic_store_n(&s->tag, b + 1, __ATOMIC_RELEASE);
    }
    return s;
}

/* ---- connection table ---------------------------------------------------------------- */

static uint64_t conn_key(const struct lg_worker *w, const struct lg_conn *c)
{
    return (uint64_t)(c - w->conns) | ((uint64_t)c->gen << 32);
}

static void conn_want(struct lg_worker *w, struct lg_conn *c, uint32_t ev)
{
    struct epoll_event e;

    if (c->events == ev) {
        return;
    }
    e.events = ev;
    e.data.u64 = conn_key(w, c);
    if (epoll_ctl(w->ep, EPOLL_CTL_MOD, c->fd, &e) == 0) {
        c->events = ev;
    }
}

/*
 * Sends close_notify once, without waiting for anything: a finished connection ends cleanly
 * for the peer (a proxy logs it as a normal close, not a client error).
 */
static void conn_close_notify(struct lg_conn *c)
{
    if (c->ssl != NULL && SSL_is_init_finished(c->ssl)) {
        (void)SSL_shutdown(c->ssl);
    }
}

/* Releases everything the connection holds and returns its slot to the free stack. */
static void conn_release(struct lg_worker *w, struct lg_conn *c)
{
    ERR_clear_error();
    if (c->ssl != NULL) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    c->st = ST_FREE;
    c->gen++;
    c->deadline = 0;
    w->free_stack[w->nfree++] = (uint32_t)(c - w->conns);
    w->active--;
    lg_add(&w->st->active, (uint64_t)-1);
}

static void note_first_err(struct lg_worker *w, enum lg_err kind, const char *msg)
{
    char *dst = w->st->first_err[kind];

    if (dst[0] == '\0') {
        snprintf(dst, sizeof(w->st->first_err[kind]), "%s", msg);
    }
}

/* Ends the connection as a failure of `kind`; msg says what happened (first one is kept). */
static void conn_fail(struct lg_worker *w, struct lg_conn *c, enum lg_err kind, const char *msg)
{
    uint64_t now = lg_now_ns();
    struct lg_tl_slot *s = tl_slot(w, now);

    if (w->st->first_err[kind][0] == '\0') {
        char buf[160];

        snprintf(buf, sizeof(buf), "%s: %s (host %s)", state_names[c->st], msg, c->host);
        note_first_err(w, kind, buf);
    }
    lg_add(&w->st->failed[kind], 1);
    lg_add(&s->failed[kind], 1);
    ERR_clear_error();
    conn_release(w, c);
}

static void conn_ok(struct lg_worker *w, struct lg_conn *c)
{
    uint64_t now = lg_now_ns();
    struct lg_tl_slot *s = tl_slot(w, now);

    lg_add(&w->st->ok, 1);
    lg_add(&s->ok, 1);
    lg_hist_add(&w->st->request, (now - c->t_start) / 1000);
    lg_add(&w->st->body_bytes, c->body);
    if (w->o->resume && c->ssl != NULL) {
        /* TLS 1.3 tickets came after the handshake: the response has been read by now */
        SSL_SESSION *ss = SSL_get1_session(c->ssl);
        if (ss != NULL && SSL_SESSION_is_resumable(ss)) {
            SSL_SESSION_free(w->sess);
            w->sess = ss;
        } else {
            SSL_SESSION_free(ss);
        }
    }
    conn_close_notify(c);
    conn_release(w, c);
}

/* The OpenSSL reason for the last failure, or errno text, for the first-error sample. */
static void ssl_reason(char *buf, size_t len, int sslerr, int ret)
{
    unsigned long e = ERR_peek_last_error();

    if (e != 0) {
        ERR_error_string_n(e, buf, len);
    } else if (sslerr == SSL_ERROR_SYSCALL) {
        snprintf(buf, len, "%s", ret == 0 ? "unexpected EOF" : strerror(errno));
    } else if (sslerr == SSL_ERROR_ZERO_RETURN) {
        snprintf(buf, len, "closed by peer");
    } else {
        snprintf(buf, len, "SSL error %d", sslerr);
    }
}

/* ---- response head parsing --------------------------------------------------------- */

static void head_reset(struct head *h)
{
    h->len = 0;
    h->overflow = false;
    h->status_seen = false;
    h->done = false;
    h->status = 0;
    h->content_length = -1;
    h->conn_close = false;
}

/* One complete line without CR/LF. Returns -1 on a malformed status line. */
static int head_line(struct head *h, const char *l, size_t n)
{
    if (!h->status_seen) {
        /* HTTP/1.x SSS ... */
        if (n < 12 || memcmp(l, "HTTP/1.", 7) != 0 || l[8] != ' ' || l[9] < '1' || l[9] > '5' ||
            l[10] < '0' || l[10] > '9' || l[11] < '0' || l[11] > '9') {
            return -1;
        }
        h->status = (l[9] - '0') * 100 + (l[10] - '0') * 10 + (l[11] - '0');
        h->status_seen = true;
        return 0;
    }
    if (n == 0) {
        h->done = true;
        return 0;
    }
    if (n >= 17 && strncasecmp(l, "connection:", 11) == 0 && strcasestr(l + 11, "close") != NULL) {
        h->conn_close = true;
    }
    if (n > 15 && strncasecmp(l, "content-length:", 15) == 0) {
        const char *p = l + 15;
        int64_t v = 0;

        while (*p == ' ' || *p == '\t') {
            p++;
        }
        while (*p >= '0' && *p <= '9' && v < (INT64_MAX / 10 - 10)) {
            v = v * 10 + (*p - '0');
            p++;
        }
        h->content_length = v;
    }
    return 0;
}

/*
 * Feeds received bytes; returns how many belonged to the head (the rest is body), or -1 on
 * a malformed head. Only the head is scanned; body bytes are never looked at.
 */
static long head_feed(struct head *h, const uint8_t *p, size_t n)
{
    size_t i = 0;

    while (i < n && !h->done) {
        const uint8_t *nl = memchr(p + i, '\n', n - i);
        size_t seg = nl != NULL ? (size_t)(nl - (p + i)) : n - i;

        if (!h->overflow) {
            if (h->len + seg < sizeof(h->line)) {
                memcpy(h->line + h->len, p + i, seg);
                h->len += (uint32_t)seg;
            } else {
                h->overflow = true;
            }
        }
        if (nl == NULL) {
            i = n;
            break;
        }
        i += seg + 1;
        if (h->overflow) {
            if (!h->status_seen) {
                return -1;
            }
        } else {
            size_t ll = h->len;

            if (ll > 0 && h->line[ll - 1] == '\r') {
                ll--;
            }
            h->line[ll] = '\0';
            if (head_line(h, h->line, ll) < 0) {
                return -1;
            }
        }
        h->len = 0;
        h->overflow = false;
    }
    return (long)i;
}

/* ---- connection steps -------------------------------------------------------------- */

static bool is_ip_literal(const char *s)
{
    unsigned char buf[16];

    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

static void step_tls(struct lg_worker *w, struct lg_conn *c);
static void step_http_send(struct lg_worker *w, struct lg_conn *c);

static void tls_begin(struct lg_worker *w, struct lg_conn *c)
{
    const struct lg_opts *o = w->o;
    const char *sni = o->sni != NULL ? o->sni : c->host;
    bool ip = is_ip_literal(c->host);

    c->ssl = SSL_new(w->run->ctx);
    if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1) {
        conn_fail(w, c, LG_E_TLS, "SSL_new failed");
        return;
    }
    if (!o->no_sni && !is_ip_literal(sni) && SSL_set_tlsext_host_name(c->ssl, sni) != 1) {
        conn_fail(w, c, LG_E_TLS, "bad SNI");
        return;
    }
    if (!o->insecure) {
        int rc = ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), c->host)
                    : SSL_set1_host(c->ssl, c->host);

        if (rc != 1) {
            conn_fail(w, c, LG_E_VERIFY, "cannot set the name to verify");
            return;
        }
    }
    if (o->resume && w->sess != NULL) {
        SSL_set_session(c->ssl, w->sess);
    }
    SSL_set_connect_state(c->ssl);
    c->st = ST_TLS;
    step_tls(w, c);
}

/* Formats host:port for a CONNECT line, with brackets around IPv6 literals. */
static void authority(char *buf, size_t len, const char *host, unsigned port)
{
    snprintf(buf, len, strchr(host, ':') != NULL ? "[%s]:%u" : "%s:%u", host, port);
}

static void step_proxy_send(struct lg_worker *w, struct lg_conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);

        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                conn_want(w, c, EPOLLOUT);
                return;
            }
            conn_fail(w, c, LG_E_PROXY, strerror(errno));
            return;
        }
        c->out_off += (uint32_t)n;
        lg_add(&w->st->bytes_out, (uint64_t)n);
    }
    c->st = ST_PROXY_RECV;
    head_reset(&c->head);
    conn_want(w, c, EPOLLIN);
}

static void step_proxy_recv(struct lg_worker *w, struct lg_conn *c)
{
    char buf[1024];
    char msg[64];
    ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
    long used;

    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) {
            return;
        }
        conn_fail(w, c, LG_E_PROXY, strerror(errno));
        return;
    }
    if (n == 0) {
        conn_fail(w, c, LG_E_PROXY, "closed before answering CONNECT");
        return;
    }
    used = head_feed(&c->head, (const uint8_t *)buf, (size_t)n);
    if (used < 0) {
        conn_fail(w, c, LG_E_PROXY, "malformed CONNECT response");
        return;
    }
    if (!c->head.done) {
        return;
    }
    if (c->head.status != 200) {
        snprintf(msg, sizeof(msg), "CONNECT answered %d", c->head.status);
        conn_fail(w, c, LG_E_PROXY, msg);
        return;
    }
    if (used != n) {
        conn_fail(w, c, LG_E_PROXY, "bytes after the CONNECT response");
        return;
    }
    tls_begin(w, c);
}

static void step_connected(struct lg_worker *w, struct lg_conn *c)
{
    const struct lg_opts *o = w->o;
    uint64_t now = lg_now_ns();
    char auth[LG_NAME_MAX + 16];
    int n;

    lg_hist_add(&w->st->connect, (now - c->t_start) / 1000);
    if (o->proxy_arg == NULL) {
        tls_begin(w, c);
        return;
    }
    authority(auth, sizeof(auth), o->connect_line_host != NULL ? o->connect_line_host : c->host,
              o->port);
    n = snprintf(c->out, sizeof(c->out),
                 "CONNECT %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: tlsmint-bench\r\n\r\n", auth,
                 auth);
    c->out_len = (uint32_t)n;
    c->out_off = 0;
    c->st = ST_PROXY_SEND;
    step_proxy_send(w, c);
}

static void step_tcp(struct lg_worker *w, struct lg_conn *c)
{
    int err = 0;
    socklen_t len = sizeof(err);

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) {
        err = errno;
    }
    if (err == EINPROGRESS || err == EALREADY) {
        return;
    }
    if (err != 0) {
        conn_fail(w, c, LG_E_CONNECT, strerror(err));
        return;
    }
    step_connected(w, c);
}

/* Handshake done: latency, protocol, ALPN and issuer bookkeeping. */
static void handshake_done(struct lg_worker *w, struct lg_conn *c)
{
    uint64_t now = lg_now_ns();
    uint64_t us = (now - c->t_start) / 1000;
    struct lg_tl_slot *s = tl_slot(w, now);
    const unsigned char *alpn = NULL;
    unsigned alpn_len = 0;
    const char *cipher;

    lg_add(&w->st->handshakes, 1);
    if (SSL_session_reused(c->ssl)) {
        lg_add(&w->st->resumed, 1);
    }
    lg_hist_add(&w->st->handshake, us);
    lg_tl_hist_add(s->hs_bins, us);
    lg_add(SSL_version(c->ssl) == TLS1_3_VERSION ? &w->st->tls13 : &w->st->tls12, 1);
    cipher = SSL_CIPHER_get_name(SSL_get_current_cipher(c->ssl));
    if (strstr(cipher, "AES_128_GCM") != NULL || strstr(cipher, "AES128-GCM") != NULL) {
        lg_add(&w->st->cipher_aes128, 1);
    } else if (strstr(cipher, "AES_256_GCM") != NULL || strstr(cipher, "AES256-GCM") != NULL) {
        lg_add(&w->st->cipher_aes256, 1);
    } else {
        lg_add(&w->st->cipher_other, 1);
    }
    SSL_get0_alpn_selected(c->ssl, &alpn, &alpn_len);
    if (alpn_len == 2 && memcmp(alpn, "h2", 2) == 0) {
        lg_add(&w->st->alpn_h2, 1);
    } else if (alpn_len == 8 && memcmp(alpn, "http/1.1", 8) == 0) {
        lg_add(&w->st->alpn_http11, 1);
    } else {
        lg_add(&w->st->alpn_none, 1);
    }
    if (w->o->issuer_stats) {
        X509 *leaf = SSL_get0_peer_certificate(c->ssl);
        char cn[256];

        cn[0] = '\0';
        if (leaf != NULL) {
            X509_NAME_get_text_by_NID(X509_get_issuer_name(leaf), NID_commonName, cn, sizeof(cn));
        }
        if (strstr(cn, "forward-trust") != NULL) {
            lg_add(&w->st->intercepted, 1);
            lg_add(&s->intercepted, 1);
        } else {
            lg_add(&w->st->bypassed, 1);
            lg_add(&s->bypassed, 1);
        }
    }
    c->deadline = now + (uint64_t)w->o->timeout_ms * 1000000ull;

    if (w->o->scenario == LG_SC_IDLE) {
        /* the connection is the result: count it now, then hold it */
        lg_add(&w->st->ok, 1);
        lg_add(&s->ok, 1);
        lg_hist_add(&w->st->request, us);
        lg_add(&w->st->held, 1);
        c->st = ST_HELD;
        c->deadline = 0;
        conn_want(w, c, EPOLLIN);
        return;
    }
    if (alpn_len == 2 && memcmp(alpn, "h2", 2) == 0) {
        /* requests are HTTP/1.1 only: an h2 connection ends after its handshake */
        conn_ok(w, c);
        return;
    }
    {
        const struct lg_opts *o = w->o;
        const char *conn_hdr = o->scenario == LG_SC_KEEPALIVE ? "keep-alive" : "close";
        int n;

        if (o->port == 443) {
            n = snprintf(c->out, sizeof(c->out),
                         "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: tlsmint-bench\r\n"
                         "Accept: */*\r\nConnection: %s\r\n\r\n",
                         o->path, c->host, conn_hdr);
        } else {
            n = snprintf(c->out, sizeof(c->out),
                         "GET %s HTTP/1.1\r\nHost: %s%s%s:%u\r\nUser-Agent: tlsmint-bench\r\n"
                         "Accept: */*\r\nConnection: %s\r\n\r\n",
                         o->path, strchr(c->host, ':') != NULL ? "[" : "", c->host,
                         strchr(c->host, ':') != NULL ? "]" : "", (unsigned)o->port, conn_hdr);
        }
        c->out_len = (uint32_t)n;
        c->out_off = 0;
    }
    c->st = ST_HTTP_SEND;
    step_http_send(w, c);
}

static void step_tls(struct lg_worker *w, struct lg_conn *c)
{
    int r = SSL_connect(c->ssl);
    int e;
    char reason[128];

    if (r == 1) {
        handshake_done(w, c);
        return;
    }
    e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) {
        conn_want(w, c, EPOLLIN);
        return;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        conn_want(w, c, EPOLLOUT);
        return;
    }
    if (!w->o->insecure && SSL_get_verify_result(c->ssl) != X509_V_OK) {
        conn_fail(w, c, LG_E_VERIFY, X509_verify_cert_error_string(SSL_get_verify_result(c->ssl)));
        return;
    }
    ssl_reason(reason, sizeof(reason), e, r);
    conn_fail(w, c, LG_E_TLS, reason);
}

static void step_http_send(struct lg_worker *w, struct lg_conn *c)
{
    int r = SSL_write(c->ssl, c->out, (int)c->out_len);
    int e;
    char reason[128];

    if (r > 0) {
        lg_add(&w->st->bytes_out, (uint64_t)r);
        c->st = ST_HTTP_RECV;
        c->body = 0;
        head_reset(&c->head);
        conn_want(w, c, EPOLLIN);
        return;
    }
    e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) {
        conn_want(w, c, EPOLLIN);
        return;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        conn_want(w, c, EPOLLOUT);
        return;
    }
    ssl_reason(reason, sizeof(reason), e, r);
    conn_fail(w, c, LG_E_HTTP, reason);
}

static bool claim(struct lg_worker *w, uint64_t *n);

/*
 * keepalive: a response is complete (its Content-Length read): it counts as one request, and
 * the same connection sends the next one while the run goes on.
 */
static void keepalive_next(struct lg_worker *w, struct lg_conn *c)
{
    char msg[64];
    uint64_t now = lg_now_ns(), n;
    struct lg_tl_slot *s = tl_slot(w, now);

    if (c->head.status < 200 || c->head.status > 299) {
        snprintf(msg, sizeof(msg), "status %d", c->head.status);
        conn_fail(w, c, LG_E_HTTP, msg);
        return;
    }
    lg_add(&w->st->ok, 1);
    lg_add(&s->ok, 1);
    lg_hist_add(&w->st->request, (now - c->t_start) / 1000);
    lg_add(&w->st->body_bytes, c->body);
    if (c->head.conn_close || !claim(w, &n)) { /* e.g. nginx's keepalive_requests: a new one */
        conn_close_notify(c);
        conn_release(w, c);
        return;
    }
    lg_add(&w->st->attempted, 1);
    lg_add(&s->attempted, 1);
    c->t_start = now;
    c->out_off = 0;
    c->st = ST_HTTP_SEND;
    step_http_send(w, c);
}

/* The response ended (close): ok if the status is 2xx and the body is complete. */
static void response_end(struct lg_worker *w, struct lg_conn *c, const char *why)
{
    char msg[160];

    if (!c->head.done) {
        snprintf(msg, sizeof(msg), "%s before the end of the response head", why);
        conn_fail(w, c, LG_E_HTTP, msg);
        return;
    }
    if (c->head.status < 200 || c->head.status > 299) {
        snprintf(msg, sizeof(msg), "status %d", c->head.status);
        conn_fail(w, c, LG_E_HTTP, msg);
        return;
    }
    if (c->head.content_length >= 0 && c->body < (uint64_t)c->head.content_length) {
        snprintf(msg, sizeof(msg), "%s after %llu of %lld body bytes", why,
                 (unsigned long long)c->body, (long long)c->head.content_length);
        conn_fail(w, c, LG_E_HTTP, msg);
        return;
    }
    conn_ok(w, c);
}

static void step_http_recv(struct lg_worker *w, struct lg_conn *c)
{
    char reason[128];

    for (int i = 0; i < MAX_READS_PER_EVENT; i++) {
        int r = SSL_read(c->ssl, w->rbuf, RBUF_SIZE);
        int e;

        if (r > 0) {
            long used = 0;

            lg_add(&w->st->bytes_in, (uint64_t)r);
            if (!c->head.done) {
                used = head_feed(&c->head, w->rbuf, (size_t)r);
                if (used < 0) {
                    conn_fail(w, c, LG_E_HTTP, "malformed response head");
                    return;
                }
            }
            c->body += (uint64_t)(r - used);
            c->deadline = lg_now_ns() + (uint64_t)w->o->timeout_ms * 1000000ull;
            if (w->o->scenario == LG_SC_KEEPALIVE && c->head.done) {
                if (c->head.content_length < 0) {
                    conn_fail(w, c, LG_E_HTTP, "keepalive: a response without Content-Length");
                    return;
                }
                if (c->body >= (uint64_t)c->head.content_length) {
                    keepalive_next(w, c);
                    return;
                }
            }
            continue;
        }
        e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ) {
            conn_want(w, c, EPOLLIN);
            return;
        }
        if (e == SSL_ERROR_WANT_WRITE) {
            conn_want(w, c, EPOLLOUT);
            return;
        }
        if (e == SSL_ERROR_ZERO_RETURN) {
            response_end(w, c, "closed");
            return;
        }
        ssl_reason(reason, sizeof(reason), e, r);
        if (c->head.done && c->head.content_length >= 0 &&
            c->body >= (uint64_t)c->head.content_length) {
            /* complete body, then a reset instead of a clean close: still a full response */
            response_end(w, c, reason);
            return;
        }
        if (!c->head.done || c->head.content_length >= 0) {
            response_end(w, c, reason);
            return;
        }
        conn_fail(w, c, LG_E_HTTP, reason);
        return;
    }
}

/* idle: a held connection became readable: session tickets are fine, EOF means dropped. */
static void step_held(struct lg_worker *w, struct lg_conn *c)
{
    for (int i = 0; i < MAX_READS_PER_EVENT; i++) {
        int r = SSL_read(c->ssl, w->rbuf, RBUF_SIZE);
        int e;

        if (r > 0) {
            lg_add(&w->st->bytes_in, (uint64_t)r);
            continue;
        }
        e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ) {
            conn_want(w, c, EPOLLIN);
            return;
        }
        if (e == SSL_ERROR_WANT_WRITE) {
            conn_want(w, c, EPOLLOUT);
            return;
        }
        lg_add(&w->st->held, (uint64_t)-1);
        lg_add(&w->st->dropped, 1);
        ERR_clear_error();
        conn_release(w, c);
        return;
    }
}

static void conn_event(struct lg_worker *w, struct lg_conn *c)
{
    switch (c->st) {
    case ST_TCP:
        step_tcp(w, c);
        break;
    case ST_PROXY_SEND:
        step_proxy_send(w, c);
        break;
    case ST_PROXY_RECV:
        step_proxy_recv(w, c);
        break;
    case ST_TLS:
        step_tls(w, c);
        break;
    case ST_HTTP_SEND:
        step_http_send(w, c);
        break;
    case ST_HTTP_RECV:
        step_http_recv(w, c);
        break;
    case ST_HELD:
        step_held(w, c);
        break;
    case ST_FREE:
    default:
        break;
    }
}

/*
 * Starts connection number n (its host name comes from the list) in a free slot; t_start is
 * the latency origin. Failures to even start are counted like any other connect failure.
 */
static void conn_start(struct lg_worker *w, uint64_t n, uint64_t t_start, uint64_t now)
{
    const struct lg_opts *o = w->o;
    struct lg_conn *c = &w->conns[w->free_stack[--w->nfree]];
    const struct sockaddr_storage *dst = o->proxy_arg != NULL ? &o->proxy : &o->target;
    socklen_t dlen = o->proxy_arg != NULL ? o->proxy_len : o->target_len;
    struct lg_tl_slot *s = tl_slot(w, now);
    struct epoll_event e;
    int one = 1;
    int rc;

    w->active++;
    lg_add(&w->st->active, 1);
    lg_add(&w->st->attempted, 1);
    lg_add(&s->attempted, 1);
    c->t_start = t_start;
    c->deadline = now + (uint64_t)o->timeout_ms * 1000000ull;
    c->events = 0;
    c->body = 0;
    c->st = ST_TCP;
    lg_opts_host_name(o, n, c->host, sizeof(c->host));

    c->fd = socket(dst->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        conn_fail(w, c, LG_E_CONNECT, strerror(errno));
        return;
    }
    (void)setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    rc = connect(c->fd, (const struct sockaddr *)dst, dlen);
    if (rc < 0 && errno != EINPROGRESS) {
        conn_fail(w, c, LG_E_CONNECT, strerror(errno));
        return;
    }
    e.events = EPOLLOUT;
    e.data.u64 = conn_key(w, c);
    if (epoll_ctl(w->ep, EPOLL_CTL_ADD, c->fd, &e) < 0) {
        conn_fail(w, c, LG_E_CONNECT, strerror(errno));
        return;
    }
    c->events = EPOLLOUT;
    if (rc == 0) {
        step_connected(w, c);
    }
}

/* Claims the next request number; false once --requests is used up (then stops starts). */
static bool claim(struct lg_worker *w, uint64_t *n)
{
    struct lg_run *run = w->run;

    if (__atomic_load_n(&run->stop_starts, __ATOMIC_RELAXED) != 0) {
        return false;
    }
    *n = __atomic_fetch_add(&run->issued, 1, __ATOMIC_RELAXED);
    if (run->limit != 0 && *n >= run->limit) {
        __atomic_store_n(&run->stop_starts, 1, __ATOMIC_RELAXED);
        return false;
    }
    return true;
}

/* Fills free slots; at most one table's worth per round, so instant failures cannot spin. */
static void start_closed_loop(struct lg_worker *w, uint64_t now)
{
    uint64_t n;

    for (unsigned i = 0; i < w->nslots && w->nfree > 0 && claim(w, &n); i++) {
        conn_start(w, n, now, now);
        now = lg_now_ns();
    }
}

/* Open loop: every due start happens, table full or not (a full table counts as busy). */
static void start_rate(struct lg_worker *w, uint64_t now)
{
    uint64_t n;

    for (int i = 0; i < MAX_STARTS_PER_ROUND && now >= w->next_due; i++) {
        uint64_t due = w->next_due;

        if (!claim(w, &n)) {
            return;
        }
        w->next_due += w->interval_ns;
        if (now - due > 1000000ull) {
            lg_add(&w->st->late_starts, 1);
        }
        if (w->nfree == 0) {
            struct lg_tl_slot *s = tl_slot(w, now);

            lg_add(&w->st->attempted, 1);
            lg_add(&s->attempted, 1);
            lg_add(&w->st->failed[LG_E_BUSY], 1);
            lg_add(&s->failed[LG_E_BUSY], 1);
            note_first_err(w, LG_E_BUSY, "connection table full (raise --max-inflight)");
            continue;
        }
        conn_start(w, n, due, now);
        now = lg_now_ns();
    }
}

static void scan_timeouts(struct lg_worker *w, uint64_t now)
{
    for (unsigned i = 0; i < w->nslots; i++) {
        struct lg_conn *c = &w->conns[i];

        if (c->st != ST_FREE && c->deadline != 0 && now >= c->deadline) {
            conn_fail(w, c, LG_E_TIMEOUT, "no progress within --timeout-ms");
        }
    }
}

static void close_all(struct lg_worker *w)
{
    for (unsigned i = 0; i < w->nslots; i++) {
        struct lg_conn *c = &w->conns[i];

        if (c->st == ST_FREE) {
            continue;
        }
        if (c->st == ST_HELD) {
            lg_add(&w->st->held, (uint64_t)-1);
            conn_close_notify(c);
        } else {
            lg_add(&w->st->unfinished, 1);
        }
        conn_release(w, c);
    }
}

static void *worker_main(void *arg)
{
    struct lg_worker *w = arg;
    struct lg_run *run = w->run;
    struct epoll_event evs[256];

    w->next_scan = lg_now_ns() + SCAN_NS;
    if (w->rate > 0.0) {
        /* threads start staggered by one global interval, each at rate/threads */
        w->interval_ns = (uint64_t)(1e9 / w->rate);
        w->next_due = run->t0_ns + (uint64_t)((double)w->index * 1e9 / w->o->rate);
    }
    for (;;) {
        uint64_t now = lg_now_ns();
        uint64_t wait;
        struct timespec ts;
        int n;

        if (__atomic_load_n(&run->abort_all, __ATOMIC_RELAXED) != 0) {
            close_all(w);
            break;
        }
        if (w->rate > 0.0) {
            start_rate(w, now);
        } else {
            start_closed_loop(w, now);
        }
        if (__atomic_load_n(&run->stop_starts, __ATOMIC_RELAXED) != 0 && w->active == 0) {
            break;
        }
        now = lg_now_ns();
        wait = w->next_scan > now ? w->next_scan - now : 0;
        if (w->rate > 0.0 && __atomic_load_n(&run->stop_starts, __ATOMIC_RELAXED) == 0) {
            uint64_t due = w->next_due > now ? w->next_due - now : 0;

            wait = due < wait ? due : wait;
        }
        ts.tv_sec = (time_t)(wait / 1000000000ull);
        ts.tv_nsec = (long)(wait % 1000000000ull);
        n = epoll_pwait2(w->ep, evs, (int)(sizeof(evs) / sizeof(evs[0])), &ts, NULL);
        for (int i = 0; i < n; i++) {
            uint64_t key = evs[i].data.u64;
            uint32_t slot = (uint32_t)key;
            uint32_t gen = (uint32_t)(key >> 32);

            if (slot < w->nslots && w->conns[slot].gen == gen && w->conns[slot].st != ST_FREE) {
                conn_event(w, &w->conns[slot]);
            }
        }
        now = lg_now_ns();
        if (now >= w->next_scan) {
            scan_timeouts(w, now);
            w->next_scan = now + SCAN_NS;
        }
    }
    __atomic_store_n(&w->st->end_ns, lg_now_ns(), __ATOMIC_RELAXED);
    __atomic_fetch_add(&run->workers_done, 1, __ATOMIC_RELEASE);
    return NULL;
}

struct lg_worker *lg_worker_new(struct lg_run *run, unsigned index, unsigned slots, double rate)
{
    struct lg_worker *w = calloc(1, sizeof(*w));

    if (w == NULL) {
        return NULL;
    }
    w->run = run;
    w->o = run->opts;
    w->index = index;
    w->rate = rate;
    w->nslots = slots;
    w->ep = epoll_create1(EPOLL_CLOEXEC);
    w->conns = calloc(slots, sizeof(*w->conns));
    if (w->conns != NULL) {
        for (unsigned i = 0; i < slots; i++) {
            w->conns[i].fd = -1;
        }
    }
    w->free_stack = calloc(slots, sizeof(*w->free_stack));
    w->rbuf = malloc(RBUF_SIZE);
    w->st = calloc(1, sizeof(*w->st));
    w->tl = calloc(LG_TL_SLOTS, sizeof(*w->tl));
    if (w->ep < 0 || w->conns == NULL || w->free_stack == NULL || w->rbuf == NULL ||
        w->st == NULL || w->tl == NULL) {
        lg_worker_free(w);
        return NULL;
    }
    /* free stack pops slot 0 first */
    for (unsigned i = 0; i < slots; i++) {
        w->free_stack[i] = slots - 1 - i;
    }
    w->nfree = slots;
    return w;
}

void lg_worker_free(struct lg_worker *w)
{
    if (w == NULL) {
        return;
    }
    SSL_SESSION_free(w->sess);
    if (w->conns != NULL) {
        for (unsigned i = 0; i < w->nslots; i++) {
            if (w->conns[i].ssl != NULL) {
                SSL_free(w->conns[i].ssl);
            }
            if (w->conns[i].fd >= 0) {
                close(w->conns[i].fd);
            }
        }
    }
    if (w->ep >= 0) {
        close(w->ep);
    }
    free(w->conns);
    free(w->free_stack);
    free(w->rbuf);
    free(w->st);
    free(w->tl);
    free(w);
}

int lg_worker_start(struct lg_worker *w)
{
    int rc = pthread_create(&w->thread, NULL, worker_main, w);

    if (rc != 0) {
        return -rc;
    }
    w->started = true;
    return 0;
}

void lg_worker_join(struct lg_worker *w)
{
    if (w->started) {
        pthread_join(w->thread, NULL);
        w->started = false;
    }
}

struct lg_stats *lg_worker_stats(struct lg_worker *w)
{
    return w->st;
}

struct lg_tl_slot *lg_worker_timeline(struct lg_worker *w)
{
    return w->tl;
}
