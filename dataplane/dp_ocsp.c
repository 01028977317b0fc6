/* SPDX-License-Identifier: MIT */
/*
 * dp_ocsp.c - the revocation status of an inspected connection's upstream certificate, for
 * [profile] ocsp: the response the upstream stapled (ocsp = stapled or fetch), else (fetch) an
 * OCSP request to the responder the certificate's AIA names. The fetch is ours, on the loop's
 * ring: one HTTP/1.0 POST per responder (connect, send, read to EOF, each an io_uring operation,
 * under one deadline timer of ocsp_timeout_ms), single-flight per certificate on the loop (later
 * connections wait for the first one's fetch), answers kept in a table the loops share until the
 * response's nextUpdate (a day at most). OpenSSL's OCSP_* API encodes the request and decodes
 * and verifies the response (signer, nonce, the certificate's entry, thisUpdate/nextUpdate);
 * http-parser reads the HTTP answer.
 * Owns: the shared answer table (struct dp_ocsp_cache, one per server) and, per loop, a fixed
 * table of fetches (struct dp_ocsp_loop): their sockets and buffers, references of the chain
 * and trust store a response is verified against, the tokens of the connections that wait.
 * Threads: the answer table from every loop (a short mutex hold per look-up or answer); a
 * fetch only on its own loop. A responder's name goes to the resolver thread, its answer comes
 * back on the loop (dp_conn_on_resolved hands it here).
 * Invariants: nothing here blocks (a non-blocking socket, ring operations only); a fetch never
 * lasts past the deadline of the connection that started it; a fetch slot is reused only when
 * none of its operations is in flight (user_data {OP_OCSP, step, gen, slot}, never a pointer);
 * a waiter that has gone, or left S_STATUS, is skipped.
 * Not here: what a status gets (dp_leaf.c, from the profile), the stage table (dp_conn.c),
 * https responders (not fetched: nothing to check, as without AIA).
 */
#include "dp_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <http_parser.h>
#include <openssl/err.h>
#include <openssl/ocsp.h>
#include <openssl/x509v3.h>

#define OCSP_FETCHES 32       /* fetches in flight per loop; more are answered "busy" */
#define OCSP_BUF 32768        /* request, then response: a larger response is an error */
#define OCSP_CACHE_SLOTS 4096 /* shared answers, direct-mapped: a collision replaces */
#define OCSP_MAX_AGE_S 86400  /* an answer is kept until nextUpdate, a day at most */
#define OCSP_SKEW_S 300       /* clock skew allowed on thisUpdate / nextUpdate */

/* the user_data dir byte: which operation of the fetch */
enum { ST_CONNECT = 0, ST_SEND, ST_RECV, ST_TIMER, ST_TIMER_DEL, ST_CANCEL };

static const char *result_names[DP_OCSP_RESULTS] = {"good",    "revoked", "unknown",
                                                    "timeout", "error",   "busy"};

const char *dp_ocsp_result_name(int r)
{
    return r >= 0 && r < DP_OCSP_RESULTS ? result_names[r] : "?";
}

/* ---- the answers, shared by the loops ------------------------------------------------------ */

struct ocsp_ans {
    uint8_t key[32]; /* SHA-256 of the certificate */
    uint8_t status;  /* DP_CS_GOOD, _REVOKED, _UNKNOWN; 0: empty */
    uint64_t expires_ns;
};

struct dp_ocsp_cache {
    pthread_mutex_t lock;
    struct ocsp_ans slot[OCSP_CACHE_SLOTS];
};

struct dp_ocsp_cache *dp_ocsp_cache_new(void)
{
    struct dp_ocsp_cache *k = calloc(1, sizeof(*k));
    if (k != NULL) {
        pthread_mutex_init(&k->lock, NULL);
    }
    return k;
}

void dp_ocsp_cache_free(struct dp_ocsp_cache *k)
{
    if (k != NULL) {
        pthread_mutex_destroy(&k->lock);
        free(k);
    }
}

static struct ocsp_ans *ans_slot(struct dp_ocsp_cache *k, const uint8_t key[32])
{
    uint32_t h;
    memcpy(&h, key, sizeof(h)); /* a hash already */
    return &k->slot[h % OCSP_CACHE_SLOTS];
}

static int cache_get(struct dp_ocsp_cache *k, const uint8_t key[32], uint64_t now)
{
    int st = DP_CS_NONE;
    pthread_mutex_lock(&k->lock);
    struct ocsp_ans *a = ans_slot(k, key);
    if (a->status != 0 && memcmp(a->key, key, 32) == 0) {
        if (now < a->expires_ns) {
            st = a->status;
        } else {
            a->status = 0;
        }
    }
    pthread_mutex_unlock(&k->lock);
    return st;
}

static void cache_put(struct dp_ocsp_cache *k, const uint8_t key[32], int status, uint64_t now,
                      int64_t life_s)
{
    if (life_s <= 0) {
        return; /* no nextUpdate (or one in the past): asked again next time */
    }
    if (life_s > OCSP_MAX_AGE_S) {
        life_s = OCSP_MAX_AGE_S;
    }
    pthread_mutex_lock(&k->lock);
    struct ocsp_ans *a = ans_slot(k, key);
    memcpy(a->key, key, 32);
    a->status = (uint8_t)status;
    a->expires_ns = now + (uint64_t)life_s * 1000000000ull;
    pthread_mutex_unlock(&k->lock);
}

/* ---- the response: HTTP, then OCSP (pure functions; the fuzz target calls them) ------------ */

struct hstate {
    const char *body;
    size_t blen;
    bool split; /* the body came in pieces that are not one run (chunked): refused */
    bool done;
};

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct hstate *h = p->data;
    if (h->body == NULL) {
        h->body = at;
    } else if (h->body + h->blen != at) {
        h->split = true;
        return 1;
    }
    h->blen += len;
    return 0;
}

static int on_complete(http_parser *p)
{
    ((struct hstate *)p->data)->done = true;
    return 0;
}

int dp_ocsp_http_body(const uint8_t *buf, size_t len, const uint8_t **body, size_t *blen)
{
    http_parser_settings set;
    http_parser_settings_init(&set);
    set.on_body = on_body;
    set.on_message_complete = on_complete;
    http_parser p;
    http_parser_init(&p, HTTP_RESPONSE);
    struct hstate h = {0};
    p.data = &h;
    size_t n = http_parser_execute(&p, &set, (const char *)buf, len);
    if (HTTP_PARSER_ERRNO(&p) == HPE_OK && n == len && !h.done) {
        http_parser_execute(&p, &set, NULL, 0); /* EOF: ends a body without a length */
    }
    if (h.split || !h.done || HTTP_PARSER_ERRNO(&p) != HPE_OK || p.status_code != 200 ||
        h.body == NULL || h.blen == 0) {
        return PX_E_INVAL;
    }
    *body = (const uint8_t *)h.body;
    *blen = h.blen;
    return 0;
}

/* t as seconds since the epoch; false when it does not convert. */
static bool asn1_epoch(const ASN1_GENERALIZEDTIME *t, int64_t *out)
{
    struct tm tm;
    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1) {
        return false;
    }
    *out = (int64_t)timegm(&tm);
    return true;
}

int dp_ocsp_verify(const uint8_t *der, size_t len, OCSP_CERTID *id, OCSP_REQUEST *req,
                   STACK_OF(X509) * chain, X509_STORE *store, int64_t now, int64_t *next_update)
{
    int rc = PX_E_INVAL;
    const unsigned char *p = der;
    OCSP_RESPONSE *resp = len <= OCSP_BUF ? d2i_OCSP_RESPONSE(NULL, &p, (long)len) : NULL;
    OCSP_BASICRESP *bs = NULL;
    *next_update = 0;
    if (resp == NULL || OCSP_response_status(resp) != OCSP_RESPONSE_STATUS_SUCCESSFUL) {
        goto out;
    }
    bs = OCSP_response_get1_basic(resp);
    if (bs == NULL || OCSP_basic_verify(bs, chain, store, 0) <= 0) {
        goto out; /* not signed by the issuer or a responder it delegated to */
    }
    if (req != NULL && OCSP_check_nonce(req, bs) == 0) {
        goto out; /* a nonce, but not ours: a replayed answer */
    }
    int status = -1, reason = -1;
    ASN1_GENERALIZEDTIME *rev = NULL, *thisupd = NULL, *nextupd = NULL;
    if (OCSP_resp_find_status(bs, id, &status, &reason, &rev, &thisupd, &nextupd) != 1) {
        goto out; /* the certificate is not in the response */
    }
    int64_t tu = 0, nu = 0;
    if (!asn1_epoch(thisupd, &tu) || tu > now + OCSP_SKEW_S) {
        goto out;
    }
    if (nextupd != NULL) {
        if (!asn1_epoch(nextupd, &nu) || nu < now - OCSP_SKEW_S || nu < tu) {
            goto out; /* stale */
        }
        *next_update = nu;
    }
    rc = status == V_OCSP_CERTSTATUS_GOOD      ? DP_CS_GOOD
         : status == V_OCSP_CERTSTATUS_REVOKED ? DP_CS_REVOKED
                                               : DP_CS_UNKNOWN;
out:
    ERR_clear_error();
    OCSP_BASICRESP_free(bs);
    OCSP_RESPONSE_free(resp);
    return rc;
}

/* ---- fetches, per loop ----------------------------------------------------------------------- */

enum fstate { F_FREE = 0, F_RESOLVING, F_CONNECTING, F_SENDING, F_RECEIVING, F_DONE };

struct ocsp_fetch {
    uint16_t gen;
    enum fstate state;
    int fd;
    int inflight;
    bool timer_armed; /* its CQE has not come back yet */
    uint8_t key[32];
    OCSP_CERTID *id;
    OCSP_REQUEST *req; /* kept for the nonce */
    STACK_OF(X509) * chain;
    X509_STORE *store;
    char host[256];
    uint16_t port;
    union dp_res_addr addr;
    uint8_t *buf;
    uint32_t len, sent, reqlen;
    struct __kernel_timespec ts;
    uint64_t start_ns, deadline_ns;
    uint64_t *waiters; /* connection tokens */
    uint32_t nwait, capwait;
};

struct dp_ocsp_loop {
    struct ocsp_fetch f[OCSP_FETCHES];
};

struct dp_ocsp_loop *dp_ocsp_loop_new(void)
{
    struct dp_ocsp_loop *o = calloc(1, sizeof(*o));
    for (int i = 0; o != NULL && i < OCSP_FETCHES; i++) {
        o->f[i].fd = -1;
    }
    return o;
}

static void fetch_free(struct ocsp_fetch *f)
{
    if (f->fd >= 0) {
        close(f->fd);
        f->fd = -1;
    }
    free(f->buf);
    free(f->waiters);
    OCSP_CERTID_free(f->id);
    OCSP_REQUEST_free(f->req);
    sk_X509_pop_free(f->chain, X509_free);
    X509_STORE_free(f->store);
    uint16_t gen = f->gen;
    memset(f, 0, sizeof(*f));
    f->fd = -1;
    f->gen = (uint16_t)(gen + 1);
    f->state = F_FREE;
}

void dp_ocsp_loop_free(struct dp_ocsp_loop *o)
{
    if (o == NULL) {
        return;
    }
    for (int i = 0; i < OCSP_FETCHES; i++) {
        if (o->f[i].state != F_FREE) {
            fetch_free(&o->f[i]); /* the ring is gone: nothing will complete */
        }
    }
    free(o);
}

static uint64_t fetch_ud(const struct dp_ocsp_loop *o, const struct ocsp_fetch *f, int step)
{
    union dp_ud u = {
        .f = {.op = OP_OCSP, .dir = (uint8_t)step, .gen = f->gen, .slot = (uint32_t)(f - o->f)}};
    return u.u;
}

static bool fetch_submit(struct dp_loop *l, struct ocsp_fetch *f, int step)
{
    struct io_uring_sqe *sqe = dp_sqe(l);
    if (sqe == NULL) {
        return false;
    }
    switch (step) {
    case ST_CONNECT:
        io_uring_prep_connect(sqe, f->fd, &f->addr.sa, dp_res_addrlen(&f->addr));
        break;
    case ST_SEND:
        io_uring_prep_send(sqe, f->fd, f->buf + f->sent, f->reqlen - f->sent, MSG_NOSIGNAL);
        break;
    case ST_RECV:
        io_uring_prep_recv(sqe, f->fd, f->buf + f->len, OCSP_BUF - f->len, 0);
        break;
    case ST_TIMER:
        io_uring_prep_timeout(sqe, &f->ts, 0, 0);
        f->timer_armed = true;
        break;
    case ST_TIMER_DEL:
        io_uring_prep_timeout_remove(sqe, fetch_ud(l->ocsp, f, ST_TIMER), 0);
        break;
    default: /* ST_CANCEL: whatever is pending on the socket (a connect that would wait for
              * TCP's own timeout, a recv from a responder that never answers) */
        io_uring_prep_cancel_fd(sqe, f->fd, IORING_ASYNC_CANCEL_ALL);
        break;
    }
    io_uring_sqe_set_data64(sqe, fetch_ud(l->ocsp, f, step));
    f->inflight++;
    return true;
}

/* Ends a fetch with result (status and nextUpdate when the responder answered): counted, the
 * answer kept, every waiter resumed; the slot is freed once nothing is in flight. */
static void fetch_end(struct dp_loop *l, struct ocsp_fetch *f, int result, int status,
                      int64_t next_update)
{
    if (f->state == F_DONE) {
        return;
    }
    bool on_socket = f->state == F_CONNECTING || f->state == F_SENDING || f->state == F_RECEIVING;
    f->state = F_DONE;
    uint64_t now = px_now_ns();
    atomic_fetch_add_explicit(&l->ctr.ocsp[result], 1, memory_order_relaxed);
    if (status == DP_CS_GOOD || status == DP_CS_REVOKED || status == DP_CS_UNKNOWN) {
        cache_put(l->srv->ocsp, f->key, status, now, next_update - (int64_t)time(NULL));
    } else {
        status = result == DP_OCSP_TIMEOUT ? DP_CS_TIMEOUT : DP_CS_ERROR;
    }
    PX_LOG_RL(PX_LOG_DEBUG, "dp", "OCSP %s:%u: %s after %.1f ms, %u connection(s) waiting", f->host,
              f->port, dp_ocsp_result_name(result), (double)(now - f->start_ns) / 1e6, f->nwait);
    if (f->timer_armed) {
        fetch_submit(l, f, ST_TIMER_DEL);
    }
    if (f->fd >= 0 && on_socket) {
        fetch_submit(l, f, ST_CANCEL); /* its CQE, and the cancelled one's, free the slot */
    }
    uint64_t *w = f->waiters;
    uint32_t nw = f->nwait;
    f->waiters = NULL;
    f->nwait = f->capwait = 0;
    for (uint32_t i = 0; i < nw; i++) {
        struct dp_conn *c = dp_conn_by_token(l, w[i]);
        if (c != NULL && c->state == S_STATUS) {
            c->ocsp_wait_ns = now - c->ocsp_start_ns;
            c->ocsp_src = "fetched";
            dp_leaf_status(c, status);
            dp_conn_run(c);
        }
    }
    free(w);
    if (f->inflight == 0) {
        fetch_free(f);
    }
}

/* The answer is in (the responder closed): parse and verify it. */
static void fetch_parse(struct dp_loop *l, struct ocsp_fetch *f)
{
    const uint8_t *body;
    size_t blen;
    int64_t next = 0;
    int st = dp_ocsp_http_body(f->buf, f->len, &body, &blen) == 0
                 ? dp_ocsp_verify(body, blen, f->id, f->req, f->chain, f->store,
                                  (int64_t)time(NULL), &next)
                 : PX_E_INVAL;
    if (st < 0) {
        PX_LOG_RL(PX_LOG_INFO, "dp",
                  "OCSP %s:%u: the answer (%u bytes) is not a valid response "
                  "for the certificate",
                  f->host, f->port, f->len);
        fetch_end(l, f, DP_OCSP_ERROR, 0, 0);
        return;
    }
    fetch_end(l, f,
              st == DP_CS_GOOD      ? DP_OCSP_GOOD
              : st == DP_CS_REVOKED ? DP_OCSP_REVOKED
                                    : DP_OCSP_UNKNOWN,
              st, next);
}

/* Opens the socket and submits the connect (the address is known); false when it cannot. */
static bool fetch_connect(struct dp_loop *l, struct ocsp_fetch *f)
{
    f->fd = socket(f->addr.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (f->fd < 0 || !fetch_submit(l, f, ST_CONNECT)) {
        return false;
    }
    f->state = F_CONNECTING;
    return true;
}

void dp_ocsp_on_cqe(struct dp_loop *l, int step, uint32_t slot, uint16_t gen, int res)
{
    if (l->ocsp == NULL || slot >= OCSP_FETCHES) {
        return;
    }
    struct ocsp_fetch *f = &l->ocsp->f[slot];
    if (f->state == F_FREE || f->gen != gen) {
        return;
    }
    f->inflight--;
    if (step == ST_TIMER) {
        f->timer_armed = false;
        if (res == -ETIME) {
            PX_LOG_RL(PX_LOG_INFO, "dp", "OCSP %s:%u: no answer within %.0f ms", f->host, f->port,
                      (double)(f->deadline_ns - f->start_ns) / 1e6);
            fetch_end(l, f, DP_OCSP_TIMEOUT, 0, 0);
        }
    }
    if (f->state == F_DONE) {
        if (f->inflight == 0) {
            fetch_free(f);
        }
        return;
    }
    switch (step) {
    case ST_CONNECT:
        if (res < 0) {
            PX_LOG_RL(PX_LOG_INFO, "dp", "OCSP %s:%u: connect: %s", f->host, f->port,
                      strerror(-res));
            fetch_end(l, f, DP_OCSP_ERROR, 0, 0);
            return;
        }
        f->state = F_SENDING;
        if (!fetch_submit(l, f, ST_SEND)) {
            fetch_end(l, f, DP_OCSP_ERROR, 0, 0);
        }
        return;
    case ST_SEND:
        if (res <= 0) {
            fetch_end(l, f, DP_OCSP_ERROR, 0, 0);
            return;
        }
        f->sent += (uint32_t)res;
        if (f->sent < f->reqlen) {
            if (!fetch_submit(l, f, ST_SEND)) {
                fetch_end(l, f, DP_OCSP_ERROR, 0, 0);
            }
            return;
        }
        f->state = F_RECEIVING;
        f->len = 0;
        shutdown(f->fd, SHUT_WR); /* HTTP/1.0: the request is complete */
        if (!fetch_submit(l, f, ST_RECV)) {
            fetch_end(l, f, DP_OCSP_ERROR, 0, 0);
        }
        return;
    case ST_RECV:
        if (res < 0) {
            fetch_end(l, f, DP_OCSP_ERROR, 0, 0);
            return;
        }
        if (res == 0) {
            fetch_parse(l, f);
            return;
        }
        f->len += (uint32_t)res;
        if (f->len >= OCSP_BUF) {
            PX_LOG_RL(PX_LOG_INFO, "dp", "OCSP %s:%u: answer larger than %d bytes", f->host,
                      f->port, OCSP_BUF);
            fetch_end(l, f, DP_OCSP_ERROR, 0, 0);
            return;
        }
        if (!fetch_submit(l, f, ST_RECV)) {
            fetch_end(l, f, DP_OCSP_ERROR, 0, 0);
        }
        return;
    default:
        return; /* the timer's removal */
    }
}

void dp_ocsp_on_resolved(struct dp_loop *l, struct dp_res_job *j)
{
    uint32_t slot = (uint32_t)j->token;
    uint16_t gen = (uint16_t)(j->token >> 32);
    struct ocsp_fetch *f = l->ocsp != NULL && slot < OCSP_FETCHES ? &l->ocsp->f[slot] : NULL;
    if (f != NULL && f->gen == gen && f->state == F_RESOLVING) {
        f->inflight--;
        if (j->status != DP_RES_OK || j->naddr <= 0) {
            PX_LOG_RL(PX_LOG_INFO, "dp", "OCSP responder %s does not resolve", f->host);
            fetch_end(l, f, j->status == DP_RES_TIMEOUT ? DP_OCSP_TIMEOUT : DP_OCSP_ERROR, 0, 0);
        } else {
            memcpy(&f->addr, &j->addr[0], dp_res_addrlen(&j->addr[0]));
            if (!fetch_connect(l, f)) {
                fetch_end(l, f, DP_OCSP_ERROR, 0, 0);
            }
        }
    } else if (f != NULL && f->gen == gen && f->state == F_DONE) {
        f->inflight--;
        if (f->inflight == 0) {
            fetch_free(f);
        }
    }
    free(j);
}

/* The POST of an OCSP request for id (with a nonce) to host:port/path into f->buf. */
static int build_request(struct ocsp_fetch *f, const char *path)
{
    unsigned char *der = NULL;
    f->req = OCSP_REQUEST_new();
    OCSP_CERTID *idc = OCSP_CERTID_dup(f->id);
    if (f->req == NULL || idc == NULL || OCSP_request_add0_id(f->req, idc) == NULL) {
        OCSP_CERTID_free(idc);
        return PX_E_CRYPTO;
    }
    if (OCSP_request_add1_nonce(f->req, NULL, -1) != 1) {
        return PX_E_CRYPTO;
    }
    int dl = i2d_OCSP_REQUEST(f->req, &der);
    if (dl <= 0) {
        return PX_E_CRYPTO;
    }
    bool v6 = strchr(f->host, ':') != NULL;
    int hl = snprintf((char *)f->buf, OCSP_BUF,
                      "POST %s HTTP/1.0\r\nHost: %s%s%s:%u\r\n"
                      "Content-Type: application/ocsp-request\r\n"
                      "Accept: application/ocsp-response\r\nContent-Length: %d\r\n\r\n",
                      path[0] ? path : "/", v6 ? "[" : "", f->host, v6 ? "]" : "", f->port, dl);
    if (hl <= 0 || (size_t)hl + (size_t)dl > OCSP_BUF) {
        OPENSSL_free(der);
        return PX_E_FULL;
    }
    memcpy(f->buf + hl, der, (size_t)dl);
    OPENSSL_free(der);
    f->reqlen = (uint32_t)(hl + dl);
    return 0;
}

/* The first plain-HTTP responder of leaf's AIA: host, port, path (OPENSSL_free'd by the
 * caller); false when there is none. */
static bool responder_of(X509 *leaf, char **host, char **port, char **path)
{
    STACK_OF(OPENSSL_STRING) *urls = X509_get1_ocsp(leaf);
    bool found = false;
    for (int i = 0; !found && i < sk_OPENSSL_STRING_num(urls); i++) {
        int tls = 0;
        char *h = NULL, *p = NULL, *pa = NULL;
        if (OCSP_parse_url(sk_OPENSSL_STRING_value(urls, i), &h, &p, &pa, &tls) == 1 && !tls) {
            *host = h;
            *port = p;
            *path = pa;
            found = true;
        } else {
            OPENSSL_free(h);
            OPENSSL_free(p);
            OPENSSL_free(pa);
        }
    }
    X509_email_free(urls);
    ERR_clear_error();
    return found;
}

/* A new fetch for c's certificate (key) from its responder, c its first waiter. */
static int fetch_start(struct dp_conn *c, const struct px_profile *pf, const uint8_t key[32],
                       X509 *leaf, X509 *issuer, STACK_OF(X509) * chain)
{
    struct dp_loop *l = c->loop;
    struct ocsp_fetch *f = NULL;
    for (int i = 0; i < OCSP_FETCHES; i++) {
        if (l->ocsp->f[i].state == F_FREE) {
            f = &l->ocsp->f[i];
            break;
        }
    }
    if (f == NULL) {
        atomic_fetch_add_explicit(&l->ctr.ocsp[DP_OCSP_BUSY], 1, memory_order_relaxed);
        return DP_CS_ERROR;
    }
    char *host = NULL, *port = NULL, *path = NULL;
    if (!responder_of(leaf, &host, &port, &path)) {
        return DP_CS_NONE; /* no responder named: nothing to check */
    }
    memcpy(f->key, key, 32);
    f->state = F_RESOLVING; /* taken; fetch_free returns it */
    snprintf(f->host, sizeof(f->host), "%s", host);
    long pn = strtol(port, NULL, 10);
    f->port = pn > 0 && pn < 65536 ? (uint16_t)pn : 80;
    f->buf = malloc(OCSP_BUF);
    f->waiters = malloc(4 * sizeof(*f->waiters));
    f->capwait = 4;
    f->id = OCSP_cert_to_id(NULL, leaf, issuer);
    f->chain = X509_chain_up_ref(chain);
    X509_STORE *st = SSL_CTX_get_cert_store(c->g->uctx);
    if (st != NULL && X509_STORE_up_ref(st) == 1) {
        f->store = st;
    }
    int rc = f->buf == NULL || f->waiters == NULL || f->id == NULL || f->chain == NULL ||
                     f->store == NULL
                 ? -ENOMEM
                 : build_request(f, path);
    OPENSSL_free(host);
    OPENSSL_free(port);
    OPENSSL_free(path);
    if (rc != 0) {
        ERR_clear_error();
        fetch_free(f);
        atomic_fetch_add_explicit(&l->ctr.ocsp[DP_OCSP_ERROR], 1, memory_order_relaxed);
        return DP_CS_ERROR;
    }
    f->start_ns = px_now_ns();
    f->deadline_ns = f->start_ns + (uint64_t)pf->ocsp_timeout_ms * 1000000ull;
    f->ts.tv_sec = pf->ocsp_timeout_ms / 1000;
    f->ts.tv_nsec = (long long)(pf->ocsp_timeout_ms % 1000) * 1000000ll;
    if (!fetch_submit(l, f, ST_TIMER)) {
        fetch_free(f);
        atomic_fetch_add_explicit(&l->ctr.ocsp[DP_OCSP_ERROR], 1, memory_order_relaxed);
        return DP_CS_ERROR;
    }
    /* c waits only once everything is under way: a failure here is answered to c at once */
    char hp[300];
    snprintf(hp, sizeof(hp), "%s%s%s:%u", strchr(f->host, ':') ? "[" : "", f->host,
             strchr(f->host, ':') ? "]" : "", f->port);
    struct sockaddr_storage ss;
    socklen_t sl;
    int p;
    if (dp_addr_parse(hp, &ss, &sl, &p) == 0) {
        memcpy(&f->addr, &ss, sl);
        if (!fetch_connect(l, f)) {
            fetch_end(l, f, DP_OCSP_ERROR, 0, 0);
            return DP_CS_ERROR;
        }
    } else {
        struct dp_res_job *j = calloc(1, sizeof(*j));
        if (j == NULL) {
            fetch_end(l, f, DP_OCSP_ERROR, 0, 0);
            return DP_CS_ERROR;
        }
        j->token = DP_TOKEN_OCSP | ((uint64_t)f->gen << 32) | (uint32_t)(f - l->ocsp->f);
        snprintf(j->host, sizeof(j->host), "%s", f->host);
        j->port = f->port;
        j->timeout_ms = (uint32_t)pf->ocsp_timeout_ms;
        j->max_ttl_s = (uint32_t)c->g->cfg->dns_cache_max_ttl_s;
        j->neg_ttl_s = (uint32_t)c->g->cfg->dns_negative_ttl_s;
        j->done = &l->res_done;
        if (dp_resolver_submit(l->srv->res, j) != 0) {
            free(j);
            fetch_end(l, f, DP_OCSP_ERROR, 0, 0);
            return DP_CS_ERROR;
        }
        f->inflight++; /* the lookup counts as an operation in flight */
    }
    f->waiters[f->nwait++] = dp_conn_token(c);
    return DP_CS_PENDING;
}

/* ---- a connection's status --------------------------------------------------------------- */

void dp_ocsp_upstream_start(struct dp_conn *c, const struct px_profile *pf)
{
    if (pf->ocsp != PX_OCSP_OFF && !c->proving) {
        SSL_set_tlsext_status_type(c->s[D_UP].ssl, TLSEXT_STATUSTYPE_ocsp);
    }
}

int dp_ocsp_status(struct dp_conn *c, const struct px_profile *pf)
{
    SSL *u = c->s[D_UP].ssl;
    STACK_OF(X509) *chain = SSL_get0_verified_chain(u);
    if (pf->ocsp == PX_OCSP_OFF || chain == NULL || sk_X509_num(chain) < 2) {
        return DP_CS_NONE; /* a trusted certificate on its own: no issuer to ask about it */
    }
    X509 *leaf = sk_X509_value(chain, 0), *issuer = sk_X509_value(chain, 1);
    X509_STORE *store = SSL_CTX_get_cert_store(c->g->uctx);
    int64_t now = (int64_t)time(NULL);
    const unsigned char *sp = NULL;
    long sl = SSL_get_tlsext_status_ocsp_resp(u, &sp);
    bool bad_staple = false;
    c->ocsp_start_ns = px_now_ns();
    if (sl > 0 && sp != NULL) {
        OCSP_CERTID *id = OCSP_cert_to_id(NULL, leaf, issuer);
        int64_t next;
        int st = id != NULL ? dp_ocsp_verify(sp, (size_t)sl, id, NULL, chain, store, now, &next)
                            : PX_E_CRYPTO;
        OCSP_CERTID_free(id);
        ERR_clear_error();
        if (st > 0) {
            c->ocsp_src = "stapled";
            return st;
        }
        bad_staple = true;
        PX_LOG_RL(PX_LOG_INFO, "dp", "conn=%u:%u %s: the stapled OCSP response does not verify",
                  c->slot, c->gen, c->host);
    }
    if (pf->ocsp != PX_OCSP_FETCH) {
        c->ocsp_src = bad_staple ? "stapled" : "";
        return bad_staple ? DP_CS_ERROR
                          : DP_CS_NONE; /* stapled only: nothing sent, nothing to check */
    }
    uint8_t key[32];
    unsigned int kl = 0;
    if (X509_digest(leaf, EVP_sha256(), key, &kl) != 1 || kl != 32) {
        ERR_clear_error();
        return DP_CS_ERROR;
    }
    int st = cache_get(c->loop->srv->ocsp, key, c->ocsp_start_ns);
    if (st != DP_CS_NONE) {
        c->ocsp_src = "cached";
        return st;
    }
    /* single flight: a fetch for the same certificate on this loop is joined */
    struct dp_ocsp_loop *o = c->loop->ocsp;
    for (int i = 0; i < OCSP_FETCHES; i++) {
        struct ocsp_fetch *f = &o->f[i];
        if (f->state != F_FREE && f->state != F_DONE && memcmp(f->key, key, 32) == 0) {
            if (f->nwait == f->capwait) {
                uint64_t *nw = realloc(f->waiters, 2 * f->capwait * sizeof(*nw));
                if (nw == NULL) {
                    return DP_CS_ERROR;
                }
                f->waiters = nw;
                f->capwait *= 2;
            }
            f->waiters[f->nwait++] = dp_conn_token(c);
            dp_conn_enter(c, S_STATUS);
            return DP_CS_PENDING;
        }
    }
    st = fetch_start(c, pf, key, leaf, issuer, chain);
    if (st == DP_CS_PENDING) {
        dp_conn_enter(c, S_STATUS);
    }
    return st;
}
