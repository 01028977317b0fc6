/* SPDX-License-Identifier: MIT */
/*
 * cc_shared.c - the second cache tier: minted leaves shared by every node of a fleet through
 * Redis ([cache] shared), with a fleet-wide single flight, so the HSM signs each upstream
 * certificate once per fleet.
 * Owns one thread with one hiredis async connection (its own poll loop drives hiredis through
 * the ev hooks), the requests in flight, and the counters. Loop threads only push requests onto
 * an MPSC list (plus an eventfd wake on empty -> non-empty) and get their outcome back through
 * cc_cache__shared_done, which hands it to the submitting loop like an HSM completion. Nothing
 * here ever makes a loop wait.
 * A lookup: GET leaf key -> a valid entry is a hit; nothing -> SET lock NX PX shared_lock_ms;
 * won -> the node mints (and publishes); lost -> poll GET until the entry appears or the sign
 * deadline passes, then mint anyway. Every command has a deadline of shared_timeout_ms: a late
 * answer counts as a timeout and the node mints alone. A connection that answers nothing for a
 * second, errors or closes is dropped; reconnects back off from 100 ms to 2 s.
 * Invariants: every lookup is answered exactly once; an entry is served only after its HMAC, CA,
 * pool key and signature check out (cc_wire.c); no private key ever goes to Redis.
 * Not here: the local LRU (cc_cache.c), the byte format (cc_wire.c).
 */
#include "cc_int.h"
#include "px_mpsc.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <openssl/rand.h>

#define SH_MAX_REQ 4096                /* lookups + publications queued or in flight */
#define SH_STALL_NS 1000000000ull      /* a command unanswered this long: drop the connection */
#define SH_BACKOFF_MIN_MS 100
#define SH_BACKOFF_MAX_MS 2000
#define SH_POLL_FIRST_MS 2             /* a loser's first look for the winner's entry */
#define SH_POLL_MAX_MS 16

enum { EV_HIT = 0, EV_MISS, EV_PUBLISH, EV_LOCK_WON, EV_LOCK_WAITED, EV_REJECTED, EV_TIMEOUT };
enum { RQ_LOOKUP = 0, RQ_PUBLISH };
enum { PH_GET = 0, PH_LOCK, PH_WAIT };
enum { C_NONE = 0, C_CONNECTING, C_HANDSHAKE, C_UP };

struct sh_req {
    struct sh_req *next;          /* submit list */
    struct sh_req *aprev, *anext; /* active list (Redis thread only) */
    struct cc_shared *sh;
    uint8_t kind, phase;
    bool inflight;                /* a hiredis callback is outstanding */
    bool abandoned;               /* answered already (timeout): the callback only frees */
    bool refused;                 /* a bad entry was counted for this lookup already */
    uint8_t key[CC_KEY_LEN];
    struct cc_pend *pend;         /* lookup: the loop's side, NULL once answered */
    uint8_t *val;                 /* publish: the encoded entry */
    size_t vlen;
    long long ttl_ms;
    uint64_t t0_ns, sent_ns, deadline_ns, wait_until_ns, next_poll_ns;
    uint32_t gap_ms;
};
/* the loops' requests to the Redis thread (cc_shared.submit) */
PX_MPSC_DEFINE(req_list, struct sh_req, next)

struct cc_shared {
    const struct px_cfg *cfg;
    const struct cc_wire_ctx *wc;
    uint8_t mac_key[32];
    char password[512];
    char node_id[40];
    char where[260];
    pthread_t th;
    bool started;
    int evfd;
    _Atomic bool stop;
    _Atomic(struct sh_req *) submit;
    _Atomic int nreq;
    _Atomic int up;
    /* Redis thread only */
    redisAsyncContext *ac;
    int conn;
    bool want_r, want_w;
    bool reset_wanted;
    char reset_why[160];
    uint64_t reconnect_at_ns, hs_deadline_ns;
    uint32_t backoff_ms;
    bool down_logged;
    uint64_t last_warn_ns;
    struct sh_req active; /* sentinel */
    /* counters (read by any thread) */
    _Atomic uint64_t ev[7], rej[CC_REJ_N], skipped;
};

/* ---- requests --------------------------------------------------------------------------- */

static void active_add(struct cc_shared *sh, struct sh_req *r)
{
    r->anext = sh->active.anext;
    r->aprev = &sh->active;
    sh->active.anext->aprev = r;
    sh->active.anext = r;
}

static void req_free(struct sh_req *r)
{
    if (r->aprev != NULL) {
        r->aprev->anext = r->anext;
        r->anext->aprev = r->aprev;
    }
    atomic_fetch_sub(&r->sh->nreq, 1);
    free(r->val);
    free(r);
}

/* Answers a lookup (once): hit (using pool key idx), or NULL = mint it yourself. */
static void answer_hit(struct sh_req *r, X509 *hit, int idx)
{
    if (r->pend != NULL) {
        struct cc_pend *p = r->pend;
        r->pend = NULL;
        cc_cache__shared_done(p, hit, idx);
    } else {
        X509_free(hit);
    }
}

static void answer(struct sh_req *r, X509 *hit)
{
    answer_hit(r, hit, 0);
}

static void count(struct cc_shared *sh, int ev)
{
    atomic_fetch_add_explicit(&sh->ev[ev], 1, memory_order_relaxed);
}

static void key_name(char *out, size_t cap, const char *kind, const uint8_t *key)
{
    static const char hex[] = "0123456789abcdef";
    int n = snprintf(out, cap, "tlsmint:%s:", kind);
    for (int i = 0; i < CC_KEY_LEN && (size_t)n + 2 < cap; i++) {
        out[n++] = hex[key[i] >> 4];
        out[n++] = hex[key[i] & 15];
    }
    out[n] = '\0';
}

static void on_reply(redisAsyncContext *ac, void *reply, void *priv);

static int send_cmd(struct sh_req *r, int argc, const char **argv, const size_t *argvlen)
{
    struct cc_shared *sh = r->sh;
    if (sh->ac == NULL || sh->conn != C_UP ||
        redisAsyncCommandArgv(sh->ac, on_reply, r, argc, argv, argvlen) != REDIS_OK) {
        return PX_E_DOWN;
    }
    r->inflight = true;
    r->sent_ns = px_now_ns();
    r->deadline_ns = r->sent_ns + (uint64_t)sh->cfg->cache_shared_timeout_ms * 1000000ull;
    return 0;
}

static int send_get(struct sh_req *r)
{
    char k[96];
    key_name(k, sizeof(k), "leaf", r->key);
    const char *argv[] = {"GET", k};
    size_t lens[] = {3, strlen(k)};
    return send_cmd(r, 2, argv, lens);
}

static int send_lock(struct sh_req *r)
{
    char k[96], px[24];
    key_name(k, sizeof(k), "lock", r->key);
    snprintf(px, sizeof(px), "%d", r->sh->cfg->cache_shared_lock_ms);
    const char *argv[] = {"SET", k, r->sh->node_id, "NX", "PX", px};
    size_t lens[] = {3, strlen(k), strlen(r->sh->node_id), 2, 2, strlen(px)};
    return send_cmd(r, 6, argv, lens);
}

static int send_publish(struct sh_req *r)
{
    char k[96], px[24];
    key_name(k, sizeof(k), "leaf", r->key);
    snprintf(px, sizeof(px), "%lld", r->ttl_ms);
    const char *argv[] = {"SET", k, (const char *)r->val, "PX", px};
    size_t lens[] = {3, strlen(k), r->vlen, 2, strlen(px)};
    return send_cmd(r, 5, argv, lens);
}

/* A value found under r's key: a new checked leaf, or NULL (refused and counted). */
static X509 *check_value(struct cc_shared *sh, struct sh_req *r, const redisReply *rep, int *idx)
{
    struct cc_wire_entry w;
    enum cc_reject why = CC_REJ_FORMAT;
    X509 *x = NULL;
    if (cc_wire_decode(sh->mac_key, r->key, (const uint8_t *)rep->str, rep->len, &w, &why) == 0) {
        x = cc_wire_check(sh->wc, r->key, &w, true, &why);
    }
    if (x != NULL) {
        *idx = w.pool_idx;
        return x;
    }
    if (r->refused) {
        return NULL; /* a loser polling sees the same bad entry again: counted once */
    }
    r->refused = true;
    count(sh, EV_REJECTED);
    atomic_fetch_add(&sh->rej[why], 1);
    uint64_t now = px_now_ns();
    if (now - sh->last_warn_ns > 10000000000ull || sh->last_warn_ns == 0) {
        sh->last_warn_ns = now;
        px_log(PX_LOG_WARN, "cc", "shared cache: refused an entry from %s (%s); %llu refused "
               "so far, the leaf is minted here instead", sh->where, cc_reject_name(why),
               (unsigned long long)atomic_load(&sh->ev[EV_REJECTED]));
    }
    return NULL;
}

static void start_wait(struct sh_req *r, uint64_t now)
{
    r->phase = PH_WAIT;
    r->wait_until_ns = r->t0_ns + (uint64_t)r->sh->cfg->hsm_sign_timeout_ms * 1000000ull;
    r->gap_ms = SH_POLL_FIRST_MS;
    r->next_poll_ns = now + (uint64_t)r->gap_ms * 1000000ull;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    struct sh_req *r = priv;
    struct cc_shared *sh = r->sh;
    const redisReply *rep = reply;
    r->inflight = false;
    if (r->abandoned || rep == NULL || rep->type == REDIS_REPLY_ERROR) {
        if (rep != NULL && rep->type == REDIS_REPLY_ERROR && !r->abandoned) {
            px_log(PX_LOG_DEBUG, "cc", "shared cache: %s answered an error: %.120s", sh->where,
                   rep->str);
        }
        answer(r, NULL); /* no answer (connection gone) or a Redis error: mint alone */
        req_free(r);
        return;
    }
    if (r->kind == RQ_PUBLISH) {
        if (rep->type == REDIS_REPLY_STATUS) {
            count(sh, EV_PUBLISH);
        }
        req_free(r);
        return;
    }
    uint64_t now = px_now_ns();
    if (r->phase == PH_GET || r->phase == PH_WAIT) {
        if (rep->type == REDIS_REPLY_STRING) {
            int idx = 0;
            X509 *x = check_value(sh, r, rep, &idx);
            if (x != NULL) {
                count(sh, EV_HIT);
                answer_hit(r, x, idx);
                req_free(r);
                return;
            }
        } else if (r->phase == PH_GET) {
            count(sh, EV_MISS);
        }
        if (r->phase == PH_WAIT) { /* nothing yet (or a bad entry): look again later */
            r->gap_ms = r->gap_ms * 2 > SH_POLL_MAX_MS ? SH_POLL_MAX_MS : r->gap_ms * 2;
            r->next_poll_ns = now + (uint64_t)r->gap_ms * 1000000ull;
            return;
        }
        r->phase = PH_LOCK; /* nothing usable: take the fleet lock for this key */
        if (send_lock(r) != 0) {
            answer(r, NULL);
            req_free(r);
        }
        return;
    }
    /* PH_LOCK */
    if (rep->type == REDIS_REPLY_STATUS) {
        count(sh, EV_LOCK_WON);
        answer(r, NULL);
        req_free(r);
        return;
    }
    count(sh, EV_LOCK_WAITED);
    start_wait(r, now);
}

static void start_req(struct cc_shared *sh, struct sh_req *r)
{
    active_add(sh, r);
    int rc = r->kind == RQ_PUBLISH ? send_publish(r) : send_get(r);
    if (rc != 0) {
        atomic_fetch_add(&sh->skipped, 1);
        answer(r, NULL);
        req_free(r);
    }
}

/* ---- connection ------------------------------------------------------------------------- */

static void ev_add_read(void *p)
{
    ((struct cc_shared *)p)->want_r = true;
}
static void ev_del_read(void *p)
{
    ((struct cc_shared *)p)->want_r = false;
}
static void ev_add_write(void *p)
{
    ((struct cc_shared *)p)->want_w = true;
}
static void ev_del_write(void *p)
{
    ((struct cc_shared *)p)->want_w = false;
}
static void ev_cleanup(void *p)
{
    struct cc_shared *sh = p;
    sh->want_r = sh->want_w = false;
}

/* The connection is gone (hiredis freed it or is about to): down, back off, retry. */
static void lost(struct cc_shared *sh, const char *why)
{
    bool was_up = sh->conn == C_UP;
    sh->ac = NULL;
    sh->conn = C_NONE;
    atomic_store(&sh->up, 0);
    sh->reconnect_at_ns = px_now_ns() + (uint64_t)sh->backoff_ms * 1000000ull;
    if (was_up || !sh->down_logged) {
        px_log(PX_LOG_WARN, "cc", "shared cache %s down: %s; this node works alone, retrying "
               "in %u ms", sh->where, why, sh->backoff_ms);
        sh->down_logged = true;
    }
    sh->backoff_ms = sh->backoff_ms * 2 > SH_BACKOFF_MAX_MS ? SH_BACKOFF_MAX_MS
                                                            : sh->backoff_ms * 2;
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct cc_shared *sh = ac->data;
    char why[160];
    snprintf(why, sizeof(why), "%s", status == REDIS_OK ? "connection closed"
                                     : ac->errstr != NULL ? ac->errstr : "connection lost");
    lost(sh, why);
}

static void on_hs_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    struct cc_shared *sh = ac->data;
    const redisReply *rep = reply;
    if (rep == NULL) {
        return; /* the connection is going away: lost() says so */
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        if (!sh->reset_wanted) {
            sh->reset_wanted = true;
            snprintf(sh->reset_why, sizeof(sh->reset_why), "%s refused: %.100s",
                     (const char *)priv, rep->str);
        }
        return;
    }
    if (strcmp(priv, "PING") == 0 && sh->conn == C_HANDSHAKE && !sh->reset_wanted) {
        sh->conn = C_UP;
        sh->backoff_ms = SH_BACKOFF_MIN_MS;
        sh->down_logged = false;
        atomic_store(&sh->up, 1);
        px_log(PX_LOG_INFO, "cc", "shared cache %s up", sh->where);
    }
}

static void on_connect(const redisAsyncContext *cac, int status)
{
    struct cc_shared *sh = cac->data;
    if (status != REDIS_OK) {
        char why[160];
        snprintf(why, sizeof(why), "%s", cac->errstr != NULL ? cac->errstr : "connect failed");
        lost(sh, why); /* hiredis frees the context after this callback */
        return;
    }
    redisAsyncContext *ac = sh->ac;
    sh->conn = C_HANDSHAKE;
    if (sh->password[0] != '\0') {
        const char *argv[] = {"AUTH", sh->password};
        size_t lens[] = {4, strlen(sh->password)};
        redisAsyncCommandArgv(ac, on_hs_reply, "AUTH", 2, argv, lens);
    }
    if (sh->cfg->cache_shared_db != 0) {
        char db[8];
        snprintf(db, sizeof(db), "%d", sh->cfg->cache_shared_db);
        const char *argv[] = {"SELECT", db};
        size_t lens[] = {6, strlen(db)};
        redisAsyncCommandArgv(ac, on_hs_reply, "SELECT", 2, argv, lens);
    }
    const char *argv[] = {"PING"};
    size_t lens[] = {4};
    redisAsyncCommandArgv(ac, on_hs_reply, "PING", 1, argv, lens);
}

static void try_connect(struct cc_shared *sh)
{
    const struct px_cfg *c = sh->cfg;
    redisAsyncContext *ac = c->cache_shared_unix[0] != '\0'
                                ? redisAsyncConnectUnix(c->cache_shared_unix)
                                : redisAsyncConnect(c->cache_shared_host, c->cache_shared_port);
    if (ac == NULL || ac->err) {
        char why[160];
        snprintf(why, sizeof(why), "%s", ac != NULL && ac->errstr != NULL ? ac->errstr
                                                                          : "out of memory");
        if (ac != NULL) {
            redisAsyncFree(ac);
        }
        sh->conn = C_NONE;
        lost(sh, why);
        return;
    }
    ac->data = sh;
    ac->ev.data = sh;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    sh->ac = ac;
    sh->conn = C_CONNECTING;
    sh->reset_wanted = false;
    sh->hs_deadline_ns = px_now_ns() + 1000000000ull;
    redisAsyncSetConnectCallback(ac, on_connect); /* arms the write event */
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
}

/* Drops the connection on purpose (from the thread's loop, never inside a hiredis callback). */
static void reset(struct cc_shared *sh, const char *why)
{
    redisAsyncContext *ac = sh->ac;
    if (ac != NULL) {
        redisAsyncFree(ac); /* pending callbacks run with no reply: those lookups mint alone */
    }
    if (sh->ac != NULL) {
        lost(sh, why); /* no disconnect callback for a context that never connected */
    }
    /* lookups waiting for a winner cannot be answered by this connection any more */
    for (struct sh_req *r = sh->active.anext, *n; r != &sh->active; r = n) {
        n = r->anext;
        if (!r->inflight) {
            answer(r, NULL);
            req_free(r);
        }
    }
}

/* ---- the thread ------------------------------------------------------------------------- */

/* Deadlines, stalls and losers' polls; returns when the thread must wake next. */
static uint64_t timers(struct cc_shared *sh, uint64_t now)
{
    uint64_t next = now + 100000000ull;
    bool stalled = false;
    for (struct sh_req *r = sh->active.anext, *n; r != &sh->active; r = n) {
        n = r->anext;
        if (r->inflight) {
            if (!r->abandoned && now >= r->deadline_ns) {
                count(sh, EV_TIMEOUT); /* answered now; the late reply only frees it */
                r->abandoned = true;
                answer(r, NULL);
            }
            if (now - r->sent_ns > SH_STALL_NS) {
                stalled = true;
            }
            if (!r->abandoned && r->deadline_ns < next) {
                next = r->deadline_ns;
            }
            continue;
        }
        if (r->phase == PH_WAIT) {
            if (now >= r->wait_until_ns) {
                answer(r, NULL); /* the winner did not publish in time: mint here */
                req_free(r);
                continue;
            }
            if (now >= r->next_poll_ns) {
                if (send_get(r) != 0) {
                    answer(r, NULL);
                    req_free(r);
                    continue;
                }
                if (r->deadline_ns < next) {
                    next = r->deadline_ns;
                }
            } else if (r->next_poll_ns < next) {
                next = r->next_poll_ns;
            }
        }
    }
    if (stalled && sh->ac != NULL) {
        reset(sh, "no answer for a second");
    }
    return next;
}

static void drain_submit(struct cc_shared *sh)
{
    struct sh_req *rev = req_list_take(&sh->submit);
    while (rev != NULL) {
        struct sh_req *nx = rev->next;
        rev->next = NULL;
        start_req(sh, rev);
        rev = nx;
    }
}

/* Reads whatever answers the socket holds now, without waiting. */
static void read_ready(struct cc_shared *sh)
{
    if (sh->ac == NULL || !sh->want_r || sh->conn == C_CONNECTING) {
        return;
    }
    struct pollfd p = {.fd = sh->ac->c.fd, .events = POLLIN};
    if (poll(&p, 1, 0) == 1 && (p.revents & (POLLIN | POLLERR | POLLHUP))) {
        redisAsyncHandleRead(sh->ac);
    }
}

static void *sh_main(void *arg)
{
    struct cc_shared *sh = arg;
    while (!atomic_load(&sh->stop)) {
        uint64_t now = px_now_ns();
        if (sh->ac == NULL && now >= sh->reconnect_at_ns) {
            try_connect(sh);
        }
        if (sh->ac != NULL && sh->conn != C_UP && now > sh->hs_deadline_ns) {
            reset(sh, "no answer to the connection handshake within a second");
        }
        if (sh->reset_wanted && sh->ac != NULL) {
            char why[160];
            snprintf(why, sizeof(why), "%s", sh->reset_why);
            reset(sh, why);
        }
        drain_submit(sh);
        read_ready(sh); /* answers already here are not timeouts, however late we woke */
        now = px_now_ns();
        uint64_t next = timers(sh, now);
        if (sh->ac == NULL && sh->reconnect_at_ns < next) {
            next = sh->reconnect_at_ns;
        }
        struct pollfd p[2] = {{.fd = sh->evfd, .events = POLLIN}, {.fd = -1}};
        if (sh->ac != NULL && (sh->want_r || sh->want_w)) {
            p[1].fd = sh->ac->c.fd;
            p[1].events = (short)((sh->want_r ? POLLIN : 0) | (sh->want_w ? POLLOUT : 0));
        }
        now = px_now_ns();
        uint64_t wait = next > now ? next - now : 0;
        struct timespec ts = {.tv_sec = (time_t)(wait / 1000000000ull),
                              .tv_nsec = (long)(wait % 1000000000ull)};
        int n = ppoll(p, 2, &ts, NULL);
        if (n < 0 && errno != EINTR) {
            break;
        }
        if (n <= 0) {
            continue;
        }
        if (p[0].revents & POLLIN) {
            uint64_t v;
            ssize_t rd = read(sh->evfd, &v, sizeof(v));
            (void)rd;
        }
        short re = p[1].revents;
        if (p[1].fd >= 0 && sh->ac != NULL && (re & (POLLOUT | POLLERR | POLLHUP)) &&
            (sh->want_w || sh->conn == C_CONNECTING)) {
            redisAsyncHandleWrite(sh->ac);
        }
        if (p[1].fd >= 0 && sh->ac != NULL && (re & (POLLIN | POLLERR | POLLHUP)) && sh->want_r) {
            redisAsyncHandleRead(sh->ac);
        }
    }
    if (sh->ac != NULL) {
        redisAsyncContext *ac = sh->ac;
        sh->ac = NULL;
        sh->conn = C_NONE;
        redisAsyncFree(ac);
    }
    return NULL;
}

/* ---- API -------------------------------------------------------------------------------- */

static int push(struct cc_shared *sh, struct sh_req *r)
{
    if (req_list_push(&sh->submit, r)) {
        uint64_t one = 1;
        ssize_t w = write(sh->evfd, &one, sizeof(one));
        (void)w;
    }
    return 0;
}

static struct sh_req *req_new(struct cc_shared *sh, const uint8_t *key, int kind)
{
    if (!atomic_load(&sh->up) || atomic_fetch_add(&sh->nreq, 1) >= SH_MAX_REQ) {
        if (atomic_load(&sh->up)) {
            atomic_fetch_sub(&sh->nreq, 1);
        }
        atomic_fetch_add(&sh->skipped, 1);
        return NULL;
    }
    struct sh_req *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        atomic_fetch_sub(&sh->nreq, 1);
        return NULL;
    }
    r->sh = sh;
    r->kind = (uint8_t)kind;
    r->phase = PH_GET;
    memcpy(r->key, key, CC_KEY_LEN);
    r->t0_ns = px_now_ns();
    return r;
}

bool cc_shared_up(const struct cc_shared *sh)
{
    return sh != NULL && atomic_load(&sh->up);
}

int cc_shared_lookup(struct cc_shared *sh, const uint8_t key[CC_KEY_LEN], struct cc_pend *p)
{
    struct sh_req *r = req_new(sh, key, RQ_LOOKUP);
    PX_ENSURE(r != NULL, PX_E_DOWN);
    r->pend = p;
    return push(sh, r);
}

void cc_shared_publish(struct cc_shared *sh, const uint8_t key[CC_KEY_LEN], X509 *x,
                       uint8_t pool_idx, int64_t ttl_s)
{
    if (ttl_s <= 0 || !cc_shared_up(sh)) {
        return;
    }
    unsigned char stackbuf[CC_WIRE_DER_MAX], *q = stackbuf;
    int n = i2d_X509(x, NULL);
    if (n <= 0 || n > (int)sizeof(stackbuf) || i2d_X509(x, &q) != n) {
        return;
    }
    struct cc_wire_entry w = {.key_kind = key[33], .pool_idx = pool_idx, .der = stackbuf,
                              .der_len = (uint32_t)n};
    memcpy(w.ca_id, sh->wc->ca_id, CC_CAID_LEN);
    struct sh_req *r = req_new(sh, key, RQ_PUBLISH);
    if (r == NULL) {
        return;
    }
    if (cc_wire_encode(sh->mac_key, key, &w, &r->val, &r->vlen) != 0) {
        atomic_fetch_sub(&sh->nreq, 1);
        free(r);
        return;
    }
    r->ttl_ms = (long long)ttl_s * 1000;
    (void)push(sh, r);
}

void cc_shared_stats(struct cc_shared *sh, struct cc_stats *out)
{
    if (sh == NULL) {
        out->shared_state = -1;
        return;
    }
    out->shared_state = atomic_load(&sh->up) ? 1 : 0;
    for (int i = 0; i < 7; i++) {
        out->shared_events[i] = atomic_load_explicit(&sh->ev[i], memory_order_relaxed);
    }
    for (int i = 0; i < CC_REJ_N; i++) {
        out->shared_rejected[i] = atomic_load_explicit(&sh->rej[i], memory_order_relaxed);
    }
    out->shared_skipped = atomic_load(&sh->skipped);
}

struct cc_shared *cc_shared_new(const struct px_cfg *cfg, const struct cc_wire_ctx *wc,
                                const uint8_t mac_key[32], char *err, size_t errlen)
{
    struct cc_shared *sh = calloc(1, sizeof(*sh));
    if (sh == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    sh->cfg = cfg;
    sh->wc = wc;
    sh->evfd = -1;
    memcpy(sh->mac_key, mac_key, 32);
    sh->active.anext = sh->active.aprev = &sh->active;
    sh->backoff_ms = SH_BACKOFF_MIN_MS;
    snprintf(sh->where, sizeof(sh->where), "%s", cfg->cache_shared);
    uint8_t id[8];
    if (RAND_bytes(id, sizeof(id)) != 1) {
        snprintf(err, errlen, "no randomness for the shared cache node id");
        cc_shared_free(sh);
        return NULL;
    }
    snprintf(sh->node_id, sizeof(sh->node_id), "%d-%02x%02x%02x%02x%02x%02x%02x%02x",
             (int)getpid(), id[0], id[1], id[2], id[3], id[4], id[5], id[6], id[7]);
    if (cfg->cache_shared_password_file[0] != '\0') {
        char why[300];
        if (px_read_secret_file(cfg->cache_shared_password_file, sh->password,
                                sizeof(sh->password), why, sizeof(why)) < 0) {
            snprintf(err, errlen, "[cache] shared_password_file: %s", why);
            cc_shared_free(sh);
            return NULL;
        }
    }
    sh->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (sh->evfd < 0 || pthread_create(&sh->th, NULL, sh_main, sh) != 0) {
        snprintf(err, errlen, "cannot start the shared cache thread");
        cc_shared_free(sh);
        return NULL;
    }
    sh->started = true;
    return sh;
}

void cc_shared_free(struct cc_shared *sh)
{
    if (sh == NULL) {
        return;
    }
    if (sh->started) {
        atomic_store(&sh->stop, true);
        uint64_t one = 1;
        ssize_t w = write(sh->evfd, &one, sizeof(one));
        (void)w;
        pthread_join(sh->th, NULL);
    }
    /* whatever is left has no loop to go back to any more (loops are freed first) */
    struct sh_req *list = req_list_take_any(&sh->submit);
    while (list != NULL) {
        struct sh_req *n = list->next;
        free(list->val);
        free(list);
        list = n;
    }
    for (struct sh_req *r = sh->active.anext, *n; r != &sh->active; r = n) {
        n = r->anext;
        free(r->val);
        free(r);
    }
    if (sh->evfd >= 0) {
        close(sh->evfd);
    }
    px_wipe(sh->mac_key, sizeof(sh->mac_key));
    px_wipe(sh->password, sizeof(sh->password));
    free(sh);
}
