/* SPDX-License-Identifier: MIT */
/*
 * dp_ocsp.c - the revocation status of an inspected connection's upstream certificate, for
 * [profile] ocsp: the response the upstream stapled (ocsp = stapled or fetch), else (fetch) an
 * OCSP request to the responder the certificate's AIA names. The fetch is ours, on the ring of
 * the loop that needed it first: one HTTP/1.0 POST per responder (connect, send, read to EOF,
 * each an io_uring operation, under one deadline timer), single-flight per certificate across
 * all loops (a connection of any loop that needs the same status while the fetch runs joins it
 * and is handed the outcome on its own loop), answers kept in a table the loops share until
 * the response's nextUpdate (a day at most). OpenSSL's OCSP_* API encodes the request and
 * decodes and verifies the response (signer, nonce, the certificate's entry,
 * thisUpdate/nextUpdate); http-parser reads the HTTP answer.
 * Owns: the shared table (struct dp_ocsp_cache, one per server) of answers and of the fetches
 * in flight with their waiters (struct ocsp_flight, struct ocsp_waiter); per loop, a fixed
 * table of its own fetches (struct dp_ocsp_loop): their sockets and buffers, references of the
 * chain and trust store a response is verified against, and the list of outcomes other loops'
 * fetches handed back to it.
 * Threads: the shared table from every loop (a short mutex hold per look-up, join or end of a
 * fetch, never across I/O or a callback); a fetch only on its own loop. An outcome for a
 * connection of another loop goes to that loop's list (MPSC), woken through its resolver
 * eventfd (empty -> non-empty), and is applied there. A responder's name goes to the resolver
 * thread, its answer comes back on the loop (dp_conn_on_resolved hands it here).
 * Invariants: nothing here blocks (a non-blocking socket, ring operations, an eventfd write); at
 * most one fetch per certificate is in flight in the process, and an answer and the end of its
 * flight are published under one hold, so a look-up sees one or the other; every connection
 * waits at most until its own deadline (its profile's ocsp_timeout_ms from when it asked,
 * never past its handshake deadline): a fetch runs until its starter's deadline, a joiner whose
 * own deadline is earlier has its own timer (OP_OCSP_WAIT) and then gets "timeout"; a fetch
 * slot is reused only when none of its operations is in flight (user_data {OP_OCSP, step, gen,
 * slot}, never a pointer); a waiter that has gone, or left S_STATUS, is skipped.
 * Not here: what a status gets (dp_leaf.c, from the profile), the stage table (dp_conn.c),
 * https responders (not fetched: nothing to check, as without AIA).
 */
#include "dp_int.h"
#include "px_mpsc.h"

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
#define OCSP_FLIGHTS 256      /* fetches in flight in the process; more are answered "busy" */
#define OCSP_WAITERS 1024     /* connections waiting for one fetch; more are answered "busy" */
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

/* A connection waiting for a fetch, of any loop: made by its own loop, linked into the flight,
 * handed back to its loop with the outcome (then freed there). */
struct ocsp_waiter {
    struct ocsp_waiter *next;
    struct dp_loop *loop; /* the connection's */
    uint64_t token;       /* the connection (dp_conn_token) */
    int status;           /* the outcome (enum dp_cert_status), once the fetch has ended */
};
/* outcomes handed to a waiter's own loop (dp_ocsp_loop.done) */
PX_MPSC_DEFINE(waiter_list, struct ocsp_waiter, next)

/* A fetch in progress for one certificate, by one loop's fetch; every connection that needs the
 * same status meanwhile, whatever its loop, waits on it. */
struct ocsp_flight {
    bool used;
    uint8_t key[32];
    int loop;             /* the fetching loop (idx) */
    uint64_t deadline_ns; /* the fetch's: its starter's deadline */
    struct ocsp_waiter *waiters;
    uint32_t nwait;
};

struct dp_ocsp_cache {
    pthread_mutex_t lock;
    struct ocsp_ans slot[OCSP_CACHE_SLOTS];
    struct ocsp_flight flight[OCSP_FLIGHTS];
    uint32_t nflights; /* used entries of flight */
};

struct dp_ocsp_cache *dp_ocsp_cache_new(void)
{
    struct dp_ocsp_cache *k = calloc(1, sizeof(*k));
    if (k != NULL) {
        pthread_mutex_init(&k->lock, NULL);
    }
    return k;
}

static void waiters_free(struct ocsp_waiter *w)
{
    while (w != NULL) {
        struct ocsp_waiter *n = w->next;
        free(w);
        w = n;
    }
}

/* After the loops: flights whose fetch was still running at exit keep their waiters. */
void dp_ocsp_cache_free(struct dp_ocsp_cache *k)
{
    if (k != NULL) {
        for (int i = 0; i < OCSP_FLIGHTS; i++) {
            waiters_free(k->flight[i].waiters);
        }
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

/* The answer for key, or DP_CS_NONE; an expired one is dropped. Lock held. */
static int answer_locked(struct dp_ocsp_cache *k, const uint8_t key[32], uint64_t now)
{
    struct ocsp_ans *a = ans_slot(k, key);
    if (a->status != 0 && memcmp(a->key, key, 32) == 0) {
        if (now < a->expires_ns) {
            return a->status;
        }
        a->status = 0;
    }
    return DP_CS_NONE;
}

static int cache_get(struct dp_ocsp_cache *k, const uint8_t key[32], uint64_t now)
{
    pthread_mutex_lock(&k->lock);
    int st = answer_locked(k, key, now);
    pthread_mutex_unlock(&k->lock);
    return st;
}

/* Keeps status for life_s seconds (a day at most); nothing without a nextUpdate. Lock held. */
static void answer_put_locked(struct dp_ocsp_cache *k, const uint8_t key[32], int status,
                              uint64_t now, int64_t life_s)
{
    if (life_s <= 0) {
        return; /* no nextUpdate (or one in the past): asked again next time */
    }
    if (life_s > OCSP_MAX_AGE_S) {
        life_s = OCSP_MAX_AGE_S;
    }
    struct ocsp_ans *a = ans_slot(k, key);
    memcpy(a->key, key, 32);
    a->status = (uint8_t)status;
    a->expires_ns = now + (uint64_t)life_s * 1000000000ull;
}

enum { J_ANSWER = 0, J_JOINED, J_OWNER, J_BUSY };

/*
 * Under one hold of the lock: the answer for key (J_ANSWER, *st), or w joins the flight in
 * progress (J_JOINED, *until: the fetch's deadline), or a new flight of loop with w as its first
 * waiter and deadline as the fetch's (J_OWNER, *idx: the flight). J_BUSY: the table, or the
 * flight's waiters, are full. w is taken on J_JOINED and J_OWNER only.
 */
static int flight_join(struct dp_ocsp_cache *k, const uint8_t key[32], uint64_t now,
                       struct ocsp_waiter *w, int loop, uint64_t deadline, int *st, int *idx,
                       uint64_t *until)
{
    int r = J_BUSY, free_i = -1;
    pthread_mutex_lock(&k->lock);
    *st = answer_locked(k, key, now);
    if (*st != DP_CS_NONE) {
        r = J_ANSWER;
        goto out;
    }
    for (int i = 0, seen = 0; i < OCSP_FLIGHTS && (seen < (int)k->nflights || free_i < 0); i++) {
        struct ocsp_flight *fl = &k->flight[i];
        if (!fl->used) {
            if (free_i < 0) {
                free_i = i;
            }
            continue;
        }
        seen++;
        if (memcmp(fl->key, key, 32) == 0) {
            if (fl->nwait < OCSP_WAITERS) {
                w->next = fl->waiters;
                fl->waiters = w;
                fl->nwait++;
                *until = fl->deadline_ns;
                *idx = i;
                r = J_JOINED;
            }
            goto out;
        }
    }
    if (free_i >= 0) {
        struct ocsp_flight *fl = &k->flight[free_i];
        fl->used = true;
        memcpy(fl->key, key, 32);
        fl->loop = loop;
        fl->deadline_ns = deadline;
        w->next = NULL;
        fl->waiters = w;
        fl->nwait = 1;
        k->nflights++;
        *idx = free_i;
        r = J_OWNER;
    }
out:
    pthread_mutex_unlock(&k->lock);
    return r;
}

/* Ends flight idx with status: the answer kept (when the responder gave one, for life_s) and
 * the flight removed under one hold. Returns its waiters, oldest first (*n: how many). */
static struct ocsp_waiter *flight_end(struct dp_ocsp_cache *k, int idx, int status, uint64_t now,
                                      int64_t life_s, uint32_t *n)
{
    struct ocsp_flight *fl = &k->flight[idx];
    pthread_mutex_lock(&k->lock);
    if (status == DP_CS_GOOD || status == DP_CS_REVOKED || status == DP_CS_UNKNOWN) {
        answer_put_locked(k, fl->key, status, now, life_s);
    }
    struct ocsp_waiter *w = fl->waiters;
    *n = fl->nwait;
    memset(fl, 0, sizeof(*fl));
    k->nflights--;
    pthread_mutex_unlock(&k->lock);
    struct ocsp_waiter *rev = NULL;
    while (w != NULL) {
        struct ocsp_waiter *nx = w->next;
        w->next = rev;
        rev = w;
        w = nx;
    }
    return rev;
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
    int flight;                   /* its entry in the shared table */
    struct ocsp_waiter *starting; /* while fetch_start runs: its caller, answered directly */
};

struct dp_ocsp_loop {
    struct ocsp_fetch f[OCSP_FETCHES];
    _Atomic(struct ocsp_waiter *) done; /* outcomes for its waiting connections (MPSC) */
};

struct dp_ocsp_loop *dp_ocsp_loop_new(void)
{
    struct dp_ocsp_loop *o = calloc(1, sizeof(*o));
    for (int i = 0; o != NULL && i < OCSP_FETCHES; i++) {
        o->f[i].fd = -1;
    }
    if (o != NULL) {
        atomic_init(&o->done, NULL);
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
    /* outcomes handed to this loop after it stopped (every loop thread has ended now) */
    waiters_free(waiter_list_take_any(&o->done));
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

/* ---- waiters: the outcome on the connection's own loop -------------------------------------- */

/* c's wait is over with status (on c's loop): the profile's answer, then on. A connection that
 * has gone, or left S_STATUS (its own deadline answered it), is skipped. */
static void waiter_resume(struct dp_loop *l, uint64_t token, int status, uint64_t now)
{
    struct dp_conn *c = dp_conn_by_token(l, token);
    if (c == NULL || c->state != S_STATUS) {
        return;
    }
    dp_ocsp_wait_cancel(c);
    c->ocsp_wait_ns = now - c->ocsp_start_ns;
    c->ocsp_src = "fetched";
    dp_leaf_status(c, status);
    dp_conn_run(c);
}

/* Hands w (taken) to its loop: the MPSC list, and a wake-up of the loop's resolver eventfd when
 * the list was empty (the loop drains both lists on every wake-up: dp_ocsp_on_wake). */
static void waiter_deliver(struct ocsp_waiter *w)
{
    struct dp_loop *to = w->loop; /* w may be freed by its loop as soon as it is pushed */
    struct dp_ocsp_loop *o = to->ocsp;
    if (waiter_list_push(&o->done, w)) {
        uint64_t one = 1;
        ssize_t n = write(to->res_done.evfd, &one, sizeof(one)); /* non-blocking */
        (void)n;
    }
}

/*
 * The outcome status to the waiters ws (taken, oldest first), on loop l: those of l resumed
 * here, the others handed to their loops. skip (when not NULL) is the connection that asked
 * just now and is answered by the return value of its call: it is freed, and this loop's other
 * waiters are handed over through the list too, so no connection runs inside another's step.
 */
static void waiters_wake(struct dp_loop *l, struct ocsp_waiter *ws, int status,
                         struct ocsp_waiter *skip)
{
    uint64_t now = px_now_ns();
    while (ws != NULL) {
        struct ocsp_waiter *n = ws->next;
        ws->status = status;
        if (ws == skip) {
            free(ws);
        } else if (ws->loop == l && skip == NULL) {
            waiter_resume(l, ws->token, status, now);
            free(ws);
        } else {
            waiter_deliver(ws);
        }
        ws = n;
    }
}

void dp_ocsp_on_wake(struct dp_loop *l)
{
    if (l->ocsp == NULL) {
        return;
    }
    struct ocsp_waiter *rev = waiter_list_take(&l->ocsp->done);
    uint64_t now = px_now_ns();
    while (rev != NULL) {
        struct ocsp_waiter *nx = rev->next;
        waiter_resume(l, rev->token, rev->status, now);
        free(rev);
        rev = nx;
    }
}

/* A connection's own deadline: its profile's ocsp_timeout_ms from now, never past its
 * handshake deadline. */
static uint64_t own_deadline(const struct dp_conn *c, const struct px_profile *pf, uint64_t now)
{
    uint64_t d = now + (uint64_t)pf->ocsp_timeout_ms * 1000000ull;
    if (c->deadline_ns != 0 && c->deadline_ns < d) {
        d = c->deadline_ns > now ? c->deadline_ns : now + 1000000ull;
    }
    return d;
}

/* c joined a fetch that ends after c's own deadline at: a timer of c's own for it (no SQE: c
 * waits for the fetch). */
static void wait_arm(struct dp_conn *c, uint64_t at, uint64_t now)
{
    struct io_uring_sqe *sqe = c->ocsp_timer ? NULL : dp_sqe(c->loop);
    if (sqe == NULL) {
        return;
    }
    uint64_t left = at > now ? at - now : 1000000ull;
    c->ocsp_ts.tv_sec = (long long)(left / 1000000000ull);
    c->ocsp_ts.tv_nsec = (long long)(left % 1000000000ull);
    io_uring_prep_timeout(sqe, &c->ocsp_ts, 0, 0);
    io_uring_sqe_set_data64(sqe, dp_ud_make(OP_OCSP_WAIT, 0, c));
    c->ocsp_timer = true;
    c->inflight++;
}

void dp_ocsp_wait_cancel(struct dp_conn *c)
{
    if (!c->ocsp_timer || c->ocsp_timer_removing) {
        return;
    }
    struct io_uring_sqe *sqe = dp_sqe(c->loop);
    if (sqe == NULL) {
        return; /* it fires on its own, and is ignored then */
    }
    io_uring_prep_timeout_remove(sqe, dp_ud_make(OP_OCSP_WAIT, 0, c), 0);
    io_uring_sqe_set_data64(sqe, dp_ud_make(OP_OCSP_WAIT, 1, c));
    c->ocsp_timer_removing = true;
}

void dp_ocsp_wait_done(struct dp_conn *c, int res)
{
    c->ocsp_timer = false;
    c->ocsp_timer_removing = false;
    if (c->state == S_CLOSING) {
        dp_conn_release(c);
        return;
    }
    if (res != -ETIME || c->state != S_STATUS) {
        return; /* removed: the outcome came first */
    }
    uint64_t now = px_now_ns();
    PX_LOG_RL(PX_LOG_INFO, "dp",
              "conn=%u:%u %s: no OCSP answer within its own deadline (%.0f ms; the fetch it "
              "joined runs longer)",
              c->slot, c->gen, c->host, (double)(now - c->ocsp_start_ns) / 1e6);
    c->ocsp_wait_ns = now - c->ocsp_start_ns;
    c->ocsp_src = "fetched";
    dp_leaf_status(c, DP_CS_TIMEOUT); /* the fetch's outcome later finds c moved on */
    dp_conn_run(c);
}

/* ---- the end of a fetch ---------------------------------------------------------------------- */

/* Ends a fetch with result (status and nextUpdate when the responder answered): counted, the
 * answer kept and its flight ended, every waiter of every loop given the outcome; the slot is
 * freed once nothing is in flight. */
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
    int64_t life = 0;
    if (status == DP_CS_GOOD || status == DP_CS_REVOKED || status == DP_CS_UNKNOWN) {
        life = next_update - (int64_t)time(NULL);
    } else {
        status = result == DP_OCSP_TIMEOUT ? DP_CS_TIMEOUT : DP_CS_ERROR;
    }
    uint32_t nw = 0;
    struct ocsp_waiter *ws = flight_end(l->srv->ocsp, f->flight, status, now, life, &nw);
    PX_LOG_RL(PX_LOG_DEBUG, "dp", "OCSP %s:%u: %s after %.1f ms, %u connection(s) waiting", f->host,
              f->port, dp_ocsp_result_name(result), (double)(now - f->start_ns) / 1e6, nw);
    if (f->timer_armed) {
        fetch_submit(l, f, ST_TIMER_DEL);
    }
    if (f->fd >= 0 && on_socket) {
        fetch_submit(l, f, ST_CANCEL); /* its CQE, and the cancelled one's, free the slot */
    }
    waiters_wake(l, ws, status, f->starting);
    f->starting = NULL;
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

/* Ends flight idx, which has no fetch (none could start), with status: its waiters other than
 * the asking one (w, freed) are handed the same. */
static int flight_abandon(struct dp_loop *l, int idx, int status, struct ocsp_waiter *w)
{
    uint32_t nw;
    struct ocsp_waiter *ws = flight_end(l->srv->ocsp, idx, status, px_now_ns(), 0, &nw);
    waiters_wake(l, ws, status, w);
    return status;
}

/*
 * A new fetch for c's certificate (key) from its responder (host, port, path: borrowed), for the
 * flight idx this loop owns now, whose first waiter is c's (w), until deadline (c's own). The
 * status to answer c with at once (the flight ended with it), or DP_CS_PENDING.
 */
static int fetch_start(struct dp_conn *c, const uint8_t key[32], X509 *leaf, X509 *issuer,
                       STACK_OF(X509) * chain, const char *host, const char *port, const char *path,
                       int idx, struct ocsp_waiter *w, uint64_t deadline)
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
        return flight_abandon(l, idx, DP_CS_ERROR, w);
    }
    memcpy(f->key, key, 32);
    f->state = F_RESOLVING; /* taken; fetch_free returns it */
    f->flight = idx;
    f->starting = w; /* fetch_end answers c by our return value, not by resuming it */
    snprintf(f->host, sizeof(f->host), "%s", host);
    long pn = strtol(port, NULL, 10);
    f->port = pn > 0 && pn < 65536 ? (uint16_t)pn : 80;
    f->buf = malloc(OCSP_BUF);
    f->id = OCSP_cert_to_id(NULL, leaf, issuer);
    f->chain = X509_chain_up_ref(chain);
    X509_STORE *st = SSL_CTX_get_cert_store(c->g->uctx);
    if (st != NULL && X509_STORE_up_ref(st) == 1) {
        f->store = st;
    }
    int rc = f->buf == NULL || f->id == NULL || f->chain == NULL || f->store == NULL
                 ? -ENOMEM
                 : build_request(f, path);
    f->start_ns = px_now_ns();
    f->deadline_ns = deadline > f->start_ns ? deadline : f->start_ns + 1000000ull;
    uint64_t left = f->deadline_ns - f->start_ns;
    f->ts.tv_sec = (long long)(left / 1000000000ull);
    f->ts.tv_nsec = (long long)(left % 1000000000ull);
    if (rc != 0 || !fetch_submit(l, f, ST_TIMER)) {
        ERR_clear_error();
        fetch_end(l, f, DP_OCSP_ERROR, 0, 0); /* nothing in flight: frees f */
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
        j->timeout_ms = (uint32_t)((left + 999999ull) / 1000000ull);
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
    f->starting = NULL; /* from now on c is resumed like every other waiter */
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
    struct dp_ocsp_cache *k = c->loop->srv->ocsp;
    int st = cache_get(k, key, c->ocsp_start_ns);
    if (st != DP_CS_NONE) {
        c->ocsp_src = "cached";
        return st;
    }
    char *host = NULL, *port = NULL, *path = NULL;
    if (!responder_of(leaf, &host, &port, &path)) {
        return DP_CS_NONE; /* no responder named: nothing to check */
    }
    /* single flight across the loops: the answer, or the fetch in progress on any loop is
     * joined, or this loop starts it (looked at under one hold) */
    struct ocsp_waiter *w = calloc(1, sizeof(*w));
    int idx = -1;
    uint64_t until = 0, own = own_deadline(c, pf, c->ocsp_start_ns);
    int j = J_BUSY;
    if (w != NULL) {
        w->loop = c->loop;
        w->token = dp_conn_token(c);
        j = flight_join(k, key, c->ocsp_start_ns, w, c->loop->idx, own, &st, &idx, &until);
    }
    switch (j) {
    case J_ANSWER:
        c->ocsp_src = "cached"; /* a fetch ended just now */
        break;
    case J_JOINED:
        dp_conn_enter(c, S_STATUS);
        if (until > own) {
            wait_arm(c, own, c->ocsp_start_ns); /* the fetch ends later than c may wait */
        }
        st = DP_CS_PENDING;
        break;
    case J_OWNER:
        st = fetch_start(c, key, leaf, issuer, chain, host, port, path, idx, w, own);
        if (st == DP_CS_PENDING) {
            dp_conn_enter(c, S_STATUS);
        }
        break;
    default:
        atomic_fetch_add_explicit(&c->loop->ctr.ocsp[DP_OCSP_BUSY], 1, memory_order_relaxed);
        st = DP_CS_ERROR;
        break;
    }
    if (j == J_ANSWER || j == J_BUSY) {
        free(w);
    }
    OPENSSL_free(host);
    OPENSSL_free(port);
    OPENSSL_free(path);
    return st;
}
