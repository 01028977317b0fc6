/* SPDX-License-Identifier: MIT */
/*
 * hsm_pool.c - the proxy side of hsm_offload: job pool, dispatcher thread, signer lifecycle,
 * completion queues.
 * Owns a fixed array of jobs (the bound on everything queued), one dispatcher thread, and one
 * signer child process plus socketpair per HSM member.
 * Threads: any thread submits (a short mutex, never a wait on the HSM); only the dispatcher
 * touches members, frames and deadlines; each hsm_cq is drained by its owning thread.
 * Invariants: a job is in exactly one place (free list, submit list, pending list, a member's
 * in-flight list, or a cq) and gets exactly one completion per successful submit. A job id
 * carries a generation, so an answer that arrives after its deadline is recognised and dropped.
 * Latency: the signer reports each signature's service time (and how much of it was spent off
 * this machine's CPUs); from it the dispatcher sizes each member's sessions ([hsm] workers =
 * auto, Little's law, size_*), routes frames to the member where a job finishes first, and
 * publishes what a new job can expect, so hsm_sign_submit refuses at once (PX_E_OVERLOAD)
 * what could not finish by its deadline. A slow member stays up; only silence for
 * hang_timeout_ms gets its signer killed.
 * Not here: PKCS#11 (only inside the signer), what a signature is for (certcache/).
 */
#include "hsm_frame_int.h"
#include "px_mpsc.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

extern char **environ;

enum job_state { JOB_FREE = 0, JOB_QUEUED, JOB_PENDING, JOB_INFLIGHT, JOB_DONE };

struct job {
    uint64_t id; /* generation << 32 | index */
    struct job *next;
    struct job *iprev, *inext; /* member in-flight list */
    struct hsm_pool *pool;
    struct hsm_cq *cq;
    void *user;
    uint64_t submit_ns, deadline_ns;
    int status;
    unsigned long rv;
    int member;
    int retries; /* times moved to another member after a failure there */
    enum job_state state;
    uint8_t alg, dlen;
    uint8_t key; /* 0: forward-trust key; 1..: an [inbound.NAME] server key */
    uint16_t sig_len;
    uint8_t digest[64];
    uint8_t sig[HSM_SIG_MAX];
};

struct hsm_cq {
    _Atomic(struct job *) head;
    int evfd;
};
/* completions handed back to the submitting loop (hsm_cq.head) */
PX_MPSC_DEFINE(job_list, struct job, next)

#define LAT_BUCKETS 128
#define PROBE_ID_BIT (1ull << 63) /* job ids of health probes (never a pool job) */
#define PROBE_IDLE_NS 1000000000ull
#define REAP_MAX 32
#define BACKOFF_MIN_MS 100

struct member {
    int idx;
    const struct px_hsm_member_cfg *cfg;
    enum hsm_member_state state;
    pid_t pid;
    int fd;
    uint64_t state_ns;      /* when the state was entered */
    uint64_t next_spawn_ns; /* RECOVERING: when to try again */
    uint32_t backoff_ms;
    int failed_starts;
    uint64_t busy_since_ns; /* last time outstanding went 0 -> 1, or last answer */
    uint32_t outstanding;   /* sent and not answered (including jobs already timed out) */
    struct job *inflight;   /* jobs sent and still owned by this member */
    uint32_t n_inflight;
    bool send_blocked;
    /* statistics, written by the dispatcher under pool->stats_lock */
    uint64_t ops, errors, timeouts, gone, respawns, kills, spawns;
    uint64_t ops_inbound, errors_inbound; /* of ops and errors: jobs with key > 0 */
    uint32_t rv_codes[8];
    uint64_t rv_counts[8];
    int n_rv;
    uint64_t lat[LAT_BUCKETS];
    uint64_t lat_max_ns;
    struct px_hist lat_hist; /* the same latencies for metrics */
    char last_error[160];
    struct hsm_token_info info;
    bool have_info;
    bool refused;           /* key does not match the CA certificate: stays down */
    uint64_t last_send_ns;  /* last frame sent (jobs or probe) */
    bool suspect;           /* failed a job that went to another member */
    uint64_t last_answer_ns; /* last answer frame from the signer */
    /* sizing (size_*): how many sessions sign at once, from how the HSM measures */
    uint32_t workers;       /* sessions the signer was told to run */
    uint32_t sessions_open; /* as the signer last reported */
    uint32_t ceiling;       /* the token refused a session beyond this many (0: no limit seen) */
    double svc_ns;          /* service time of one signature (C_Sign), fast up, slow down */
    double blk_ns;          /* of it, the HSM's own latency that sessions overlap (same filter) */
    bool have_svc;
    double rate;            /* jobs/s sent to this member, smoothed per tick */
    uint32_t win_sent, win_done;
    double win_wait_ns;     /* sum of (latency - service) of the window's completions */
    double wait_ns;         /* the last window's mean queue wait */
    uint32_t hold_need;     /* largest need since below_since_ns */
    uint64_t below_since_ns; /* need has been below workers since (0: it is not) */
    uint64_t change_ns;     /* last change of workers */
    /* growth check: did more sessions sign faster? (a CPU-bound or saturated HSM does not) */
    bool g_pending;         /* a growth episode waits for its check */
    uint64_t g_eval_ns;     /* when to check it */
    uint32_t g_n1;          /* sessions before the episode ... */
    double g_cap1, g_s1;    /* ... what they could do (sessions / service time), service time */
    uint32_t sat_n;         /* saturated: no more than this many help ... */
    double sat_s;           /* ... while the service time stays below twice this */
    uint64_t sat_since_ns, sat_until_ns;
    uint64_t grows, shrinks;
    char change_reason[200];
    const char *change_code;
    uint64_t lost_ns;       /* when an up member was lost (0: not lost since last up) */
    double last_recovery_ms;
    uint64_t recoveries;
};

struct hsm_pool {
    const struct px_cfg *cfg;
    char exe[512];
    struct job *jobs;
    uint32_t njobs;

    pthread_mutex_t lock; /* free list, submit list, stopping, live count */
    struct job *free;
    struct job *sub_head, *sub_tail;
    bool stopping;
    bool freed;
    uint32_t live; /* jobs not on the free list */

    int evfd;
    pthread_t thr;
    bool thr_started;

    struct member members[PX_HSM_MAX_MEMBERS];
    int nmembers;
    _Atomic int members_up;
    _Atomic uint32_t queue_depth;

    /* dispatcher-only */
    struct job *pend_head, *pend_tail;
    uint32_t npend;
    pid_t reap[REAP_MAX];
    int nreap;
    uint8_t *rxbuf;
    uint8_t *txbuf;

    pthread_mutex_t stats_lock;
    enum hsm_alg alg;
    bool have_alg;
    _Atomic int key_type; /* enum hsm_key_type of the first member that came up */
    /* the extra keys as the first member that came up found them (stats_lock) */
    struct hsm_key_info xinfo[HSM_XKEYS_MAX];
    bool have_xinfo;
    _Atomic int xkey_type[HSM_XKEYS_MAX]; /* HSM_KEY_NONE: not found (submit refuses) */
    uint8_t ca_spki[HSM_PUB_MAX]; /* [ca] forward_trust_cert's key: every member must hold it */
    int ca_spki_len;
    _Atomic bool want_clear, want_recover;
    int rr; /* round-robin start for pick_member */
    bool running;         /* dispatcher started: start-up errors are the caller's to report */
    uint64_t tick_ns;     /* last sizing tick */

    /* admission control: published by the dispatcher, read by every submitter */
    _Atomic uint64_t adm_per_job_ns; /* one more job ahead costs this much time, 0: no estimate */
    _Atomic uint64_t adm_svc_ns;     /* the best member's service time */
    _Atomic uint64_t adm_silent_ns;  /* every usable member has work and no answer since (0) */
    _Atomic uint32_t in_system;      /* jobs submitted and not completed yet */
    _Atomic uint64_t n_overload, n_full, n_down;
};

static void pool_destroy(struct hsm_pool *pool);

const char *hsm_member_state_name(enum hsm_member_state s)
{
    switch (s) {
    case HSM_MEMBER_STARTING:
        return "starting";
    case HSM_MEMBER_UP:
        return "up";
    case HSM_MEMBER_RECOVERING:
        return "recovering";
    case HSM_MEMBER_DOWN:
        return "down";
    }
    return "?";
}

/* ---- completion queues ------------------------------------------------------------------ */

struct hsm_cq *hsm_cq_new(void)
{
    struct hsm_cq *cq = calloc(1, sizeof(*cq));
    if (cq == NULL) {
        return NULL;
    }
    cq->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (cq->evfd < 0) {
        free(cq);
        return NULL;
    }
    atomic_init(&cq->head, NULL);
    return cq;
}

void hsm_cq_free(struct hsm_cq *cq)
{
    if (cq == NULL) {
        return;
    }
    if (atomic_load(&cq->head) != NULL) {
        PX_BUG("hsm_cq_free with undrained completions");
    }
    close(cq->evfd);
    free(cq);
}

int hsm_cq_fd(const struct hsm_cq *cq)
{
    return cq->evfd;
}

void hsm_cq_wake(struct hsm_cq *cq)
{
    uint64_t one = 1;
    ssize_t w = write(cq->evfd, &one, sizeof(one));
    (void)w;
}

/* Called by the dispatcher: MPSC push; wakes the consumer only on empty -> non-empty. */
static void cq_push(struct hsm_cq *cq, struct job *j)
{
    if (job_list_push(&cq->head, j)) {
        uint64_t one = 1;
        ssize_t w = write(cq->evfd, &one, sizeof(one));
        (void)w;
    }
}

/*
 * A frame's completions, grouped per completion queue and published with one CAS and at most
 * one eventfd write each, so a consumer wakes once per frame, not once per job.
 */
#define BATCH_CQS 8
struct cq_batch {
    struct hsm_cq *cq[BATCH_CQS];
    struct job *head[BATCH_CQS], *tail[BATCH_CQS];
    int n;
};

static void cq_push_chain(struct hsm_cq *cq, struct job *head, struct job *tail)
{
    if (job_list_push_chain(&cq->head, head, tail)) {
        uint64_t one = 1;
        ssize_t w = write(cq->evfd, &one, sizeof(one));
        (void)w;
    }
}

static void batch_flush(struct cq_batch *b)
{
    for (int i = 0; i < b->n; i++) {
        cq_push_chain(b->cq[i], b->head[i], b->tail[i]);
    }
    b->n = 0;
}

/* Adds j (already marked done) to the batch; newest first, as the MPSC list keeps them. */
static void batch_add(struct cq_batch *b, struct job *j)
{
    int i = 0;
    while (i < b->n && b->cq[i] != j->cq) {
        i++;
    }
    if (i == b->n) {
        if (b->n == BATCH_CQS) {
            batch_flush(b);
            i = 0;
        }
        b->cq[i] = j->cq;
        b->head[i] = b->tail[i] = j;
        j->next = NULL;
        b->n = i + 1;
        return;
    }
    j->next = b->head[i];
    b->head[i] = j;
}

static void jobs_release(struct hsm_pool *pool, struct job *first, struct job *last, uint32_t n)
{
    bool destroy = false;
    pthread_mutex_lock(&pool->lock);
    last->next = pool->free;
    pool->free = first;
    pool->live -= n;
    destroy = pool->freed && pool->live == 0;
    pthread_mutex_unlock(&pool->lock);
    if (destroy) {
        pool_destroy(pool);
    }
}

int hsm_cq_drain(struct hsm_cq *cq, hsm_done_fn fn, void *ctx)
{
    uint64_t v;
    ssize_t r = read(cq->evfd, &v, sizeof(v));
    (void)r;
    struct job *rev = job_list_take(&cq->head);
    int count = 0;
    while (rev != NULL) {
        /* release in runs of the same pool (normally one) */
        struct hsm_pool *pool = rev->pool;
        struct job *first = rev, *last = NULL;
        uint32_t n = 0;
        while (rev != NULL && rev->pool == pool) {
            struct hsm_result res = {.user = rev->user,
                                     .status = rev->status,
                                     .ck_rv = rev->rv,
                                     .latency_ns = px_now_ns() - rev->submit_ns,
                                     .sig = rev->status == 0 ? rev->sig : NULL,
                                     .sig_len = rev->status == 0 ? rev->sig_len : 0};
            fn(ctx, &res);
            rev->state = JOB_FREE;
            rev->cq = NULL;
            last = rev;
            rev = rev->next;
            n++;
            count++;
        }
        jobs_release(pool, first, last, n);
    }
    return count;
}

/* ---- submission ------------------------------------------------------------------------- */

int hsm_sign_submit(struct hsm_pool *pool, struct hsm_cq *cq, enum hsm_alg alg,
                    const uint8_t *digest, size_t digest_len, uint32_t timeout_ms, void *user)
{
    return hsm_sign_submit_key(pool, cq, 0, alg, digest, digest_len, timeout_ms, user);
}

int hsm_sign_submit_key(struct hsm_pool *pool, struct hsm_cq *cq, int key, enum hsm_alg alg,
                        const uint8_t *digest, size_t digest_len, uint32_t timeout_ms, void *user)
{
    PX_ENSURE_REF(pool);
    PX_ENSURE(key >= 0 && key <= HSM_XKEYS_MAX && key <= pool->cfg->n_inbound, PX_E_INVAL);
    PX_ENSURE_REF(cq);
    PX_ENSURE_REF(digest);
    PX_ENSURE(alg >= HSM_ALG_ECDSA_SHA256 && alg <= HSM_ALG_RSA_PSS_SHA256, PX_E_INVAL);
    PX_ENSURE(digest_len == hsm_alg_digest_len(alg), PX_E_INVAL);
    if (atomic_load(&pool->members_up) == 0) {
        atomic_fetch_add_explicit(&pool->n_down, 1, memory_order_relaxed);
        return PX_E_DOWN;
    }
    /* the key decides the family: an RSA mechanism on an EC key is a caller bug, not an HSM fault */
    bool want_rsa = alg == HSM_ALG_RSA_PKCS1_SHA256 || alg == HSM_ALG_RSA_PSS_SHA256;
    int kt = key == 0 ? atomic_load(&pool->key_type) : atomic_load(&pool->xkey_type[key - 1]);
    PX_ENSURE(kt != HSM_KEY_NONE && want_rsa == (kt == HSM_KEY_RSA), PX_E_INVAL);
    uint64_t now = px_now_ns();
    uint32_t to = timeout_ms ? timeout_ms : (uint32_t)pool->cfg->hsm_sign_timeout_ms;
    /*
     * Admission control: the jobs ahead of this one, at the rate the members can sign, plus one
     * signature, must fit in the deadline; if not, say so now instead of failing it after the
     * whole deadline. The estimate is the dispatcher's (publish_admission).
     */
    uint64_t per = atomic_load_explicit(&pool->adm_per_job_ns, memory_order_relaxed);
    if (per > 0) {
        double ahead = (double)atomic_load_explicit(&pool->in_system, memory_order_relaxed);
        double svc = (double)atomic_load_explicit(&pool->adm_svc_ns, memory_order_relaxed);
        /* every member has had work and answered nothing for this long: at least that much */
        uint64_t silent = atomic_load_explicit(&pool->adm_silent_ns, memory_order_relaxed);
        if (silent != 0 && now > silent && (double)(now - silent) > svc) {
            svc = (double)(now - silent);
        }
        /*
         * A job with nothing ahead of it goes through unless every member is silent: svc is
         * learnt from answers only, so after one slow spell that put it past the deadline,
         * refusing such a job too would refuse every later one and no answer would ever bring
         * svc down again (seen at 50 ms HSM latency on a loaded machine: svc stuck at 299 ms,
         * 1977 of 2000 new hosts refused, the workers shrunk for lack of work).
         */
        bool probe = ahead == 0 && silent == 0;
        if (!probe && ahead * (double)per + svc > (double)to * 1e6) {
            atomic_fetch_add_explicit(&pool->n_overload, 1, memory_order_relaxed);
            return PX_E_OVERLOAD;
        }
    }

    pthread_mutex_lock(&pool->lock);
    if (pool->stopping) {
        pthread_mutex_unlock(&pool->lock);
        return PX_E_SHUTDOWN;
    }
    struct job *j = pool->free;
    if (j == NULL) {
        pthread_mutex_unlock(&pool->lock);
        atomic_fetch_add_explicit(&pool->n_full, 1, memory_order_relaxed);
        return PX_E_FULL;
    }
    atomic_fetch_add_explicit(&pool->in_system, 1, memory_order_relaxed);
    pool->free = j->next;
    pool->live++;
    uint32_t idx = (uint32_t)(j - pool->jobs);
    j->id = ((j->id >> 32) + 1) << 32 | idx;
    j->next = NULL;
    j->cq = cq;
    j->user = user;
    j->submit_ns = now;
    j->deadline_ns = now + (uint64_t)to * 1000000ull;
    j->status = 0;
    j->rv = 0;
    j->member = -1;
    j->retries = 0;
    j->alg = (uint8_t)alg;
    j->key = (uint8_t)key;
    j->dlen = (uint8_t)digest_len;
    j->sig_len = 0;
    memcpy(j->digest, digest, digest_len);
    j->state = JOB_QUEUED;
    bool was_empty = pool->sub_head == NULL;
    if (was_empty) {
        pool->sub_head = j;
    } else {
        pool->sub_tail->next = j;
    }
    pool->sub_tail = j;
    pthread_mutex_unlock(&pool->lock);
    if (was_empty) {
        uint64_t one = 1;
        ssize_t w = write(pool->evfd, &one, sizeof(one));
        (void)w;
    }
    return 0;
}

/* ---- dispatcher helpers ----------------------------------------------------------------- */

static void complete(struct hsm_pool *pool, struct job *j, int status)
{
    atomic_fetch_sub_explicit(&pool->in_system, 1, memory_order_relaxed);
    j->status = status;
    j->state = JOB_DONE;
    cq_push(j->cq, j);
}

static void inflight_add(struct member *m, struct job *j)
{
    j->iprev = NULL;
    j->inext = m->inflight;
    if (m->inflight) {
        m->inflight->iprev = j;
    }
    m->inflight = j;
    m->n_inflight++;
    j->member = m->idx;
    j->state = JOB_INFLIGHT;
}

static void inflight_del(struct member *m, struct job *j)
{
    if (j->iprev) {
        j->iprev->inext = j->inext;
    } else {
        m->inflight = j->inext;
    }
    if (j->inext) {
        j->inext->iprev = j->iprev;
    }
    j->iprev = j->inext = NULL;
    m->n_inflight--;
}

static void pend_push_tail(struct hsm_pool *pool, struct job *j)
{
    j->next = NULL;
    j->state = JOB_PENDING;
    if (pool->pend_tail) {
        pool->pend_tail->next = j;
    } else {
        pool->pend_head = j;
    }
    pool->pend_tail = j;
    pool->npend++;
}

static void pend_push_head(struct hsm_pool *pool, struct job *j)
{
    j->state = JOB_PENDING;
    j->next = pool->pend_head;
    pool->pend_head = j;
    if (pool->pend_tail == NULL) {
        pool->pend_tail = j;
    }
    pool->npend++;
}

static struct job *pend_pop(struct hsm_pool *pool)
{
    struct job *j = pool->pend_head;
    if (j) {
        pool->pend_head = j->next;
        if (pool->pend_head == NULL) {
            pool->pend_tail = NULL;
        }
        pool->npend--;
        j->next = NULL;
    }
    return j;
}

/* upper bounds of tlsmint_hsm_sign_duration_seconds, in seconds */
static const double lat_bounds_s[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                      0.01,   0.025,   0.05,   0.1,   0.25,   1.0};

static void lat_record(struct member *m, uint64_t ns)
{
    px_hist_observe(&m->lat_hist, ns);
    double us = (double)ns / 1000.0;
    int b = us <= 1.0 ? 0 : (int)(log2(us) * 4.0);
    if (b >= LAT_BUCKETS) {
        b = LAT_BUCKETS - 1;
    }
    m->lat[b]++;
    if (ns > m->lat_max_ns) {
        m->lat_max_ns = ns;
    }
}

static double lat_pct(const struct member *m, double p)
{
    uint64_t total = 0;
    for (int i = 0; i < LAT_BUCKETS; i++) {
        total += m->lat[i];
    }
    if (total == 0) {
        return 0;
    }
    uint64_t want = (uint64_t)ceil(p * (double)total), acc = 0;
    for (int i = 0; i < LAT_BUCKETS; i++) {
        acc += m->lat[i];
        if (acc >= want) {
            double edge = pow(2.0, (double)(i + 1) / 4.0);
            double mx = (double)m->lat_max_ns / 1000.0;
            return edge < mx ? edge : mx;
        }
    }
    return (double)m->lat_max_ns / 1000.0;
}

static void count_rv(struct member *m, unsigned long rv)
{
    for (int i = 0; i < m->n_rv; i++) {
        if (m->rv_codes[i] == (uint32_t)rv) {
            m->rv_counts[i]++;
            return;
        }
    }
    if (m->n_rv < 8) {
        m->rv_codes[m->n_rv] = (uint32_t)rv;
        m->rv_counts[m->n_rv++] = 1;
    }
}

/*
 * Members that can take work now: up. A slow member is up as long as it answers; one that
 * answers nothing for hang_timeout_ms is killed (check_timers). While it is merely silent, its
 * silence counts as service time (svc_eff), so routing avoids it and admission control refuses
 * at once what it could not finish by the deadline.
 */
static void recount_up(struct hsm_pool *pool)
{
    int n = 0;
    for (int i = 0; i < pool->nmembers; i++) {
        n += pool->members[i].state == HSM_MEMBER_UP;
    }
    atomic_store(&pool->members_up, n);
}

static void set_state(struct hsm_pool *pool, struct member *m, enum hsm_member_state s)
{
    if (m->state != s && pool->running) {
        px_log(s == HSM_MEMBER_UP ? PX_LOG_INFO : PX_LOG_WARN, "hsm", "member %s: %s -> %s",
               m->cfg->name, hsm_member_state_name(m->state), hsm_member_state_name(s));
    }
    m->state = s;
    m->state_ns = px_now_ns();
    recount_up(pool);
}

/* Starts a signer for m. Safe in a threaded process: posix_spawn, every other fd is CLOEXEC. */
static int spawn_signer(struct hsm_pool *pool, struct member *m)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
        return -errno;
    }
    int sz = 1 << 20;
    setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    if (sv[1] == 3) { /* dup2(3, 3) would keep CLOEXEC set */
        int nfd = fcntl(sv[1], F_DUPFD_CLOEXEC, 10);
        close(sv[1]);
        sv[1] = nfd;
    }
    char idx[16], conf[sizeof(pool->cfg->path)];
    snprintf(idx, sizeof(idx), "%d", m->idx);
    snprintf(conf, sizeof(conf), "%s", pool->cfg->path);
    char *argv[] = {"tlsmint", "__signer", "--fd", "3", "--member", idx, "-c", conf, NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, sv[1], 3);
    posix_spawnattr_t sa; /* not the dispatcher's blocked signal mask */
    int r = -px_spawnattr_init(&sa);
    pid_t pid = -1;
    if (r == 0) {
        r = posix_spawn(&pid, pool->exe, &fa, &sa, argv, environ);
        posix_spawnattr_destroy(&sa);
    }
    posix_spawn_file_actions_destroy(&fa);
    close(sv[1]);
    if (r != 0) {
        close(sv[0]);
        snprintf(m->last_error, sizeof(m->last_error), "cannot start signer %s: %s", pool->exe,
                 strerror(r));
        return -r;
    }
    fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    m->pid = pid;
    m->fd = sv[0];
    m->outstanding = 0;
    m->send_blocked = false;
    m->suspect = false;
    m->spawns++;
    if (m->spawns > 1) {
        m->respawns++;
    }
    set_state(pool, m, HSM_MEMBER_STARTING);
    return 0;
}

static void reap_add(struct hsm_pool *pool, pid_t pid)
{
    if (waitpid(pid, NULL, WNOHANG) == pid) {
        return;
    }
    if (pool->nreap < REAP_MAX) {
        pool->reap[pool->nreap++] = pid;
    } else {
        waitpid(pid, NULL, 0); /* killed with SIGKILL: returns promptly */
    }
}

static void reap_some(struct hsm_pool *pool)
{
    for (int i = 0; i < pool->nreap;) {
        if (waitpid(pool->reap[i], NULL, WNOHANG) != 0) {
            pool->reap[i] = pool->reap[--pool->nreap];
        } else {
            i++;
        }
    }
}

static int any_up(struct hsm_pool *pool)
{
    return atomic_load(&pool->members_up);
}

/*
 * The signer of m is gone (exited, hung and killed, or spoke garbage). Its in-flight jobs go to
 * another member while their deadline allows, else complete with PX_E_GONE. Schedules a respawn.
 */
static void member_lost(struct hsm_pool *pool, struct member *m, const char *why)
{
    uint64_t now = px_now_ns();
    if (m->pid > 0) {
        kill(m->pid, SIGKILL);
        reap_add(pool, m->pid);
    }
    if (m->fd >= 0) {
        close(m->fd);
    }
    m->pid = 0;
    m->fd = -1;
    m->outstanding = 0;
    bool was_up = m->state == HSM_MEMBER_UP;
    if (was_up) {
        m->lost_ns = now;
    }
    m->failed_starts += was_up ? 0 : 1;
    if (m->failed_starts == 0) {
        m->backoff_ms = BACKOFF_MIN_MS;
    }
    pthread_mutex_lock(&pool->stats_lock);
    snprintf(m->last_error, sizeof(m->last_error), "%s", why);
    int retries = pool->cfg->recovery_retries;
    enum hsm_member_state next = (m->refused || (retries > 0 && m->failed_starts > retries))
                                     ? HSM_MEMBER_DOWN
                                     : HSM_MEMBER_RECOVERING;
    set_state(pool, m, next);
    pthread_mutex_unlock(&pool->stats_lock);
    px_log(pool->running ? PX_LOG_ERROR : PX_LOG_DEBUG, "hsm", "member %s lost: %s; %s",
           m->cfg->name, why,
           next == HSM_MEMBER_DOWN ? (m->refused ? "member refused, down until fixed"
                                                 : "out of recovery retries, member is down "
                                                   "until 'tlsmint ctl hsm-recover'")
                                   : "restarting its signer");
    m->next_spawn_ns = now + (uint64_t)m->backoff_ms * 1000000ull;
    uint32_t cap = (uint32_t)pool->cfg->recovery_backoff_max_ms;
    m->backoff_ms = m->backoff_ms * 2 > cap ? cap : m->backoff_ms * 2;

    bool retry = any_up(pool) > 0;
    uint64_t gone = 0;
    while (m->inflight != NULL) {
        struct job *j = m->inflight;
        inflight_del(m, j);
        if (retry && j->deadline_ns > now) {
            pend_push_head(pool, j);
        } else {
            complete(pool, j, PX_E_GONE);
            gone++;
        }
    }
    pthread_mutex_lock(&pool->stats_lock);
    m->gone += gone;
    pthread_mutex_unlock(&pool->stats_lock);
}

/* ---- sizing: how many sessions sign at once, and what a member's queue costs ------------- */

#define TICK_NS 100000000ull        /* rates and window means are taken every 100 ms */
#define SHRINK_HOLD_NS 500000000ull /* need below the current count this long: shrink */
#define SVC_INIT_NS 1000000.0       /* service time assumed before the first answer */

static bool sizing_auto(const struct hsm_pool *pool)
{
    return pool->cfg->hsm_workers == PX_HSM_WORKERS_AUTO;
}

static uint32_t workers_hi(const struct hsm_pool *pool, const struct member *m)
{
    if (!sizing_auto(pool)) {
        return (uint32_t)pool->cfg->hsm_workers;
    }
    uint32_t hi = (uint32_t)pool->cfg->hsm_workers_max;
    return m->ceiling > 0 && m->ceiling < hi ? m->ceiling : hi;
}

/* workers_hi, or lower while a growth check found the member saturated (see size_check). */
static uint32_t workers_useful(const struct hsm_pool *pool, const struct member *m, uint64_t now)
{
    uint32_t hi = workers_hi(pool, m);
    double S = m->have_svc ? m->svc_ns : SVC_INIT_NS;
    /* the cap holds for 30 s, unless the HSM became slower at the capped count (measured once
     * the service time had 2 s to settle after the cut): then more sessions may help again */
    bool slower = now - m->sat_since_ns > 2000000000ull && S >= 2.0 * m->sat_s;
    if (m->sat_n > 0 && now < m->sat_until_ns && !slower && m->sat_n < hi) {
        return m->sat_n;
    }
    return hi;
}

static uint32_t workers_lo(const struct hsm_pool *pool, const struct member *m)
{
    uint32_t lo = sizing_auto(pool) ? (uint32_t)pool->cfg->hsm_workers_min
                                    : (uint32_t)pool->cfg->hsm_workers;
    uint32_t hi = workers_hi(pool, m);
    return lo < hi ? lo : hi;
}

/*
 * Jobs the dispatcher lets a member hold (signing or queued in its signer): twice its sessions
 * plus a frame, but no more than its sessions can sign within half the deadline, so a slow
 * member does not sit on jobs another one could sign in time (the rest wait in the dispatcher,
 * for whichever member has room first).
 */
static uint32_t member_cap(const struct hsm_pool *pool, const struct member *m)
{
    uint32_t w = m->workers > 0 ? m->workers : 1;
    uint32_t cap = 2 * w + (uint32_t)pool->cfg->hsm_batch;
    double S = m->have_svc ? m->svc_ns : SVC_INIT_NS;
    double fit = (double)w * (double)pool->cfg->hsm_sign_timeout_ms * 1e6 / 2.0 / S;
    if (fit < (double)cap) {
        cap = fit > (double)w ? (uint32_t)fit : w;
    }
    return cap;
}

static void ewma_fast_up(double *v, double x)
{
    *v += (x - *v) / (x > *v ? 2.0 : 8.0);
}

/*
 * One measured service time and its blocked part: up at once (a slower HSM must be believed
 * quickly), down slowly.
 */
static void svc_sample(struct member *m, double ns, double blocked_ns)
{
    if (!m->have_svc) {
        m->svc_ns = ns;
        m->blk_ns = blocked_ns;
        m->have_svc = true;
        return;
    }
    ewma_fast_up(&m->svc_ns, ns);
    ewma_fast_up(&m->blk_ns, blocked_ns);
    if (m->blk_ns > m->svc_ns) {
        m->blk_ns = m->svc_ns;
    }
}

/* The blocked share of the service time: what more sessions can overlap. */
static double svc_blocked(const struct member *m)
{
    return m->have_svc ? m->blk_ns : SVC_INIT_NS;
}

/*
 * How long m has had work and answered nothing, when that is past 4 service times and 50 ms
 * (less is a busy machine running the dispatcher or the signer late), else 0.
 */
static double silence(const struct member *m, uint64_t now)
{
    double s = m->have_svc ? m->svc_ns : SVC_INIT_NS;
    double quiet = 4.0 * s > 50e6 ? 4.0 * s : 50e6;
    double q = m->outstanding > 0 && now > m->busy_since_ns ? (double)(now - m->busy_since_ns) : 0;
    return q > quiet ? q : 0;
}

/*
 * The service time to plan with now: the measured one, or the silence of a member that has
 * work and answers nothing (a hang shows as an ever slower member until hang_timeout_ms kills
 * it).
 */
static double svc_eff(const struct member *m, uint64_t now)
{
    double s = m->have_svc ? m->svc_ns : SVC_INIT_NS;
    double q = silence(m, now);
    s = q > s ? q : s;
    return s < 1000.0 ? 1000.0 : s;
}

/*
 * Sessions member m needs (Little's law: in flight = arrival rate x service time). Only the
 * blocked part B of the service time S (the HSM's own latency: network, queueing in the
 * appliance) is overlapped by more sessions; the part spent on this machine's CPUs is not:
 * workers_min covers it (more would only add contention). Two terms:
 *  - rate: twice the jobs/s it gets times B, so the sessions in flight stay about half busy
 *    (when the sessions are the bottleneck, the rate is what they can do, and the term doubles
 *    the count each tick until they no longer are);
 *  - backlog: the jobs it holds now (plus its share of the proxy's queue) must all finish
 *    within half the deadline.
 * Writes why into why and a short code ("rate", "backlog") into *code.
 */
static uint32_t size_need(struct hsm_pool *pool, struct member *m, char *why, size_t cap,
                          const char **code)
{
    double S = m->have_svc ? m->svc_ns : SVC_INIT_NS;
    double B = svc_blocked(m);
    double D = (double)pool->cfg->hsm_sign_timeout_ms * 1e6;
    int up = any_up(pool) > 0 ? any_up(pool) : 1;
    uint32_t lo = workers_lo(pool, m), hi = workers_useful(pool, m, px_now_ns());
    lo = lo < hi ? lo : hi;
    double q = (double)m->outstanding + (double)pool->npend / up;
    double little = 2.0 * m->rate * B / 1e9;
    double room = D / 2.0 - S;
    double backlog = room > 0 ? q * B / room : (q > 0 && B > S / 2 ? 1e9 : 0);
    double need = little > backlog ? little : backlog;
    uint32_t n = need >= hi ? hi : (uint32_t)ceil(need);
    n = n < lo ? lo : n;
    if (backlog > little) {
        *code = "backlog";
        snprintf(why, cap, "%.0f signatures waiting or in flight at %.1f ms each (%.1f ms in the "
                 "HSM) must finish within half the %d ms deadline", q, S / 1e6, B / 1e6,
                 pool->cfg->hsm_sign_timeout_ms);
    } else {
        *code = "rate";
        snprintf(why, cap, "%.0f signatures/s x %.2f ms in the HSM = %.1f in flight, x2 headroom",
                 m->rate, B / 1e6, m->rate * B / 1e9);
    }
    return n;
}

static void size_apply(struct hsm_pool *pool, struct member *m, uint32_t n, uint64_t now,
                       const char *code, const char *why)
{
    struct {
        struct hsm_frame_hdr h;
        struct hsm_ctrl c;
    } f = {{HSM_FRAME_MAGIC, HSM_FRAME_CTRL, 1}, {HSM_CTRL_SET_WORKERS, n}};
    if (send(m->fd, &f, sizeof(f), MSG_DONTWAIT | MSG_NOSIGNAL) != (ssize_t)sizeof(f)) {
        return; /* socket full: the next check tries again */
    }
    uint32_t old = m->workers;
    pthread_mutex_lock(&pool->stats_lock);
    m->workers = n;
    m->change_ns = now;
    m->change_code = code;
    snprintf(m->change_reason, sizeof(m->change_reason), "%s %u -> %u: %s",
             n > old ? "grow" : "shrink", old, n, why);
    if (n > old) {
        m->grows++;
    } else {
        m->shrinks++;
    }
    pthread_mutex_unlock(&pool->stats_lock);
    px_log(PX_LOG_INFO, "hsm", "member %s: workers %u -> %u (%s)", m->cfg->name, old, n, why);
}

/*
 * Grows at once when the need is above the current count; shrinks only on a tick, to the
 * largest need seen while it stayed below for SHRINK_HOLD_NS (idle sessions go, a burst that
 * pauses for a moment does not make them flap). tick: also the deadline check on the last
 * window's mean queue wait.
 */
static void size_check(struct hsm_pool *pool, struct member *m, uint64_t now, bool tick)
{
    if (!sizing_auto(pool) || m->state != HSM_MEMBER_UP || m->fd < 0) {
        return;
    }
    char why[200];
    const char *code = "rate";
    uint32_t need = size_need(pool, m, why, sizeof(why), &code);
    double S = m->have_svc ? m->svc_ns : SVC_INIT_NS;
    double D = (double)pool->cfg->hsm_sign_timeout_ms * 1e6;
    if (tick && m->g_pending && now >= m->g_eval_ns) {
        m->g_pending = false;
        double cap2 = (double)m->workers / S;
        if (m->outstanding >= m->workers && cap2 < 1.3 * m->g_cap1 && m->workers > m->g_n1) {
            /* sessions busy, yet not faster: the HSM (or this machine's CPUs) is the limit */
            m->sat_n = m->g_n1;
            m->sat_s = m->g_s1;
            m->sat_since_ns = now;
            m->sat_until_ns = now + 30000000000ull;
            snprintf(why, sizeof(why), "saturated: %u sessions at %.2f ms each sign no faster "
                     "than %u at %.2f ms", m->workers, S / 1e6, m->g_n1, m->g_s1 / 1e6);
            m->below_since_ns = 0;
            size_apply(pool, m, m->g_n1, now, "saturated", why);
            return;
        }
    }
    if (tick && m->wait_ns + S > D / 4.0 && m->outstanding > m->workers && need <= m->workers &&
        svc_blocked(m) > S / 2.0) {
        uint32_t hi = workers_useful(pool, m, now);
        need = 2 * m->workers > hi ? hi : 2 * m->workers;
        code = "deadline";
        snprintf(why, sizeof(why), "queue wait %.1f ms + service %.1f ms passed a quarter of the "
                 "%d ms deadline", m->wait_ns / 1e6, S / 1e6, pool->cfg->hsm_sign_timeout_ms);
    }
    if (need > m->workers) {
        m->below_since_ns = 0;
        /* in steps of at least a quarter, so a growing backlog is not chased one by one */
        uint32_t step = m->workers + (m->workers + 3) / 4, hi = workers_useful(pool, m, now);
        need = need > step ? need : (step < hi ? step : hi);
        if (!m->g_pending) {
            m->g_pending = true;
            m->g_eval_ns = now + 300000000ull;
            m->g_n1 = m->workers;
            m->g_s1 = S;
            m->g_cap1 = (double)m->workers / S;
        }
        size_apply(pool, m, need, now, code, why);
        return;
    }
    if (need == m->workers) {
        m->below_since_ns = 0;
        return;
    }
    if (m->below_since_ns == 0) {
        m->below_since_ns = now;
        m->hold_need = need;
        return;
    }
    m->hold_need = need > m->hold_need ? need : m->hold_need;
    /* only a clear surplus (a quarter) is given back, so a steady load does not make it flap */
    if (!tick || now - m->below_since_ns < SHRINK_HOLD_NS) {
        return;
    }
    if (m->hold_need <= m->workers - (m->workers + 3) / 4) {
        snprintf(why, sizeof(why), "idle: at most %u needed for %.1f s (%.0f signatures/s x "
                 "%.2f ms in the HSM)", m->hold_need, (double)(now - m->below_since_ns) / 1e9,
                 m->rate, svc_blocked(m) / 1e6);
        m->below_since_ns = 0;
        size_apply(pool, m, m->hold_need, now, "idle", why);
    } else {
        m->below_since_ns = now; /* a small surplus: look again over the next window */
        m->hold_need = need;
    }
}

/* Every TICK_NS: per member, the rate it gets and the mean queue wait of the last window. */
static void size_tick(struct hsm_pool *pool, uint64_t now)
{
    if (pool->tick_ns == 0) {
        pool->tick_ns = now;
        return;
    }
    if (now - pool->tick_ns < TICK_NS) {
        return;
    }
    double dt = (double)(now - pool->tick_ns) / 1e9;
    pool->tick_ns = now;
    for (int i = 0; i < pool->nmembers; i++) {
        struct member *m = &pool->members[i];
        double r = (double)m->win_sent / dt;
        pthread_mutex_lock(&pool->stats_lock);
        m->rate = m->rate * 0.5 + r * 0.5;
        m->wait_ns = m->win_done > 0 ? m->win_wait_ns / m->win_done : 0;
        pthread_mutex_unlock(&pool->stats_lock);
        m->win_sent = m->win_done = 0;
        m->win_wait_ns = 0;
        size_check(pool, m, now, true);
    }
}

/*
 * What a new job can expect, for hsm_sign_submit: the members' combined rate and the best
 * service time. A member signs (sessions it may have) / (service time) per second: auto
 * members count at workers_max, since they grow within a tick; a fixed member at its workers.
 * A silent member's silence counts as service time. Deliberately optimistic: refusing what
 * could have been signed is worse than one that times out.
 */
static void publish_admission(struct hsm_pool *pool, uint64_t now)
{
    double mu = 0, best = 0;
    uint64_t silent = 0;
    bool all_silent = true;
    for (int i = 0; i < pool->nmembers; i++) {
        struct member *m = &pool->members[i];
        if (m->state != HSM_MEMBER_UP || m->fd < 0 || m->suspect) {
            continue;
        }
        double S = svc_eff(m, now);
        if (silence(m, now) > 0) {
            silent = m->busy_since_ns > silent ? m->busy_since_ns : silent;
        } else {
            all_silent = false;
        }
        double per = S / (double)workers_hi(pool, m);
        mu += 1.0 / (per > 1.0 ? per : 1.0);
        best = best == 0 || S < best ? S : best;
    }
    atomic_store_explicit(&pool->adm_per_job_ns, mu > 0 ? (uint64_t)(1.0 / mu) + 1 : 0,
                          memory_order_relaxed);
    atomic_store_explicit(&pool->adm_svc_ns, (uint64_t)best, memory_order_relaxed);
    atomic_store_explicit(&pool->adm_silent_ns, all_silent ? silent : 0, memory_order_relaxed);
}

/*
 * The member a new frame of jobs goes to: the one where a job would finish first (service
 * time x jobs it holds per session), so a faster member gets more of the work; members that
 * are full, blocked or suspect are skipped. Ties rotate so load spreads over equal members.
 */
static struct member *pick_member(struct hsm_pool *pool)
{
    struct member *best = NULL;
    double best_cost = 0;
    uint64_t now = px_now_ns();
    int n = pool->nmembers;
    for (int k = 0; k < n; k++) {
        struct member *m = &pool->members[(pool->rr + k) % n];
        if (m->state != HSM_MEMBER_UP || m->send_blocked || m->outstanding >= member_cap(pool, m) ||
            m->suspect) {
            continue;
        }
        double w = m->workers > 0 ? (double)m->workers : 1.0;
        double cost = svc_eff(m, now) * ((double)m->outstanding + 1.0) / w;
        if (best == NULL || cost < best_cost) {
            best = m;
            best_cost = cost;
        }
    }
    pool->rr = (pool->rr + 1) % (n > 0 ? n : 1);
    return best;
}

static void handle_hello(struct hsm_pool *pool, struct member *m, const uint8_t *buf, size_t n)
{
    struct hsm_hello hello;
    if (hsm_frame__parse_hello(buf, n, &hello) != 0) {
        member_lost(pool, m, "malformed hello from signer");
        return;
    }
    const struct hsm_hello *h = &hello;
    if (h->status != 0) {
        char why[300];
        snprintf(why, sizeof(why), "%s", h->err);
        member_lost(pool, m, why);
        return;
    }
    if (pool->ca_spki_len > 0 && h->info.pub_len > 0 &&
        (h->info.pub_len != pool->ca_spki_len ||
         memcmp(h->info.pub_der, pool->ca_spki, (size_t)pool->ca_spki_len) != 0)) {
        char why[300];
        snprintf(why, sizeof(why), "key '%s' on token '%s' (serial %s) is not the key of [ca] "
                 "forward_trust_cert %s", h->info.key_label, h->info.label, h->info.serial,
                 pool->cfg->ca_forward_trust_cert);
        m->refused = true;
        member_lost(pool, m, why);
        return;
    }
    pthread_mutex_lock(&pool->stats_lock);
    m->info = h->info;
    m->have_info = true;
    if (m->lost_ns != 0) {
        m->last_recovery_ms = (double)(px_now_ns() - m->lost_ns) / 1e6;
        m->recoveries++;
        m->lost_ns = 0;
    }
    if (!pool->have_alg) {
        pool->alg = h->info.key_type == HSM_KEY_RSA
                        ? (pool->cfg->rsa_pss ? HSM_ALG_RSA_PSS_SHA256 : HSM_ALG_RSA_PKCS1_SHA256)
                        : (h->info.key_bits == 384 ? HSM_ALG_ECDSA_SHA384 : HSM_ALG_ECDSA_SHA256);
        pool->have_alg = true;
        atomic_store(&pool->key_type, (int)h->info.key_type);
    }
    if (!pool->have_xinfo) {
        for (uint32_t k = 0; k < h->nx && k < HSM_XKEYS_MAX; k++) {
            pool->xinfo[k] = h->xinfo[k];
            atomic_store(&pool->xkey_type[k],
                         h->xinfo[k].found ? (int)h->xinfo[k].key_type : HSM_KEY_NONE);
        }
        pool->have_xinfo = true;
    }
    m->failed_starts = 0;
    m->backoff_ms = BACKOFF_MIN_MS;
    m->last_error[0] = '\0';
    m->workers = h->workers > 0 ? h->workers : 1;
    m->sessions_open = h->workers;
    m->ceiling = 0;
    m->below_since_ns = 0;
    m->g_pending = false;
    m->change_ns = px_now_ns();
    m->change_code = sizing_auto(pool) ? "start" : "fixed";
    snprintf(m->change_reason, sizeof(m->change_reason), "%s: %u sessions",
             sizing_auto(pool) ? "signer started with workers_min" : "fixed by [hsm] workers",
             m->workers);
    set_state(pool, m, HSM_MEMBER_UP);
    pthread_mutex_unlock(&pool->stats_lock);
    px_log(PX_LOG_INFO, "hsm", "member %s up: token '%s' serial %s (%s %s), key '%s' %s-%d, pid %d",
           m->cfg->name, h->info.label, h->info.serial, h->info.manufacturer, h->info.model,
           h->info.key_label, h->info.key_type == HSM_KEY_RSA ? "RSA" : "EC", h->info.key_bits,
           (int)m->pid);
}

static bool other_member_up(const struct hsm_pool *pool, const struct member *m)
{
    for (int i = 0; i < pool->nmembers; i++) {
        if (&pool->members[i] != m && pool->members[i].state == HSM_MEMBER_UP &&
            !pool->members[i].suspect) {
            return true;
        }
    }
    return false;
}

static void handle_resp(struct hsm_pool *pool, struct member *m, const uint8_t *buf, size_t n)
{
    const struct hsm_frame_hdr *h = (const struct hsm_frame_hdr *)buf;
    size_t off = sizeof(*h);
    uint64_t now = px_now_ns();
    struct cq_batch batch = {.n = 0};
    pthread_mutex_lock(&pool->stats_lock);
    for (uint16_t i = 0; i < h->count; i++) {
        struct hsm_resp r;
        const uint8_t *sig = NULL;
        int dr = hsm_frame__resp_next(buf, n, &off, &r, &sig);
        if (dr != 0) {
            pthread_mutex_unlock(&pool->stats_lock);
            batch_flush(&batch);
            member_lost(pool, m, dr == PX_E_SHORT ? "truncated answer frame from signer"
                                                  : "bad signature length from signer");
            return;
        }
        if (m->outstanding > 0) {
            m->outstanding--;
        }
        if (r.status == 0) {
            svc_sample(m, (double)r.svc_us * 1000.0, (double)r.blocked_us * 1000.0);
        }
        if (r.id & PROBE_ID_BIT) {
            continue; /* health probe: a failure shows as the signer exiting */
        }
        uint32_t idx = (uint32_t)(r.id & 0xffffffffu);
        if (idx >= pool->njobs) {
            continue;
        }
        struct job *j = &pool->jobs[idx];
        if (j->id != r.id || j->state != JOB_INFLIGHT || j->member != m->idx) {
            continue; /* answered after its deadline: already completed */
        }
        inflight_del(m, j);
        if (r.status == 0) {
            memcpy(j->sig, sig, r.sig_len);
            j->sig_len = r.sig_len;
            m->ops++;
            m->ops_inbound += j->key != 0;
            lat_record(m, now - j->submit_ns);
            double wait = (double)(now - j->submit_ns) - (double)r.svc_us * 1000.0;
            m->win_wait_ns += wait > 0 ? wait : 0;
            m->win_done++;
            j->status = 0;
            j->state = JOB_DONE;
            atomic_fetch_sub_explicit(&pool->in_system, 1, memory_order_relaxed);
            batch_add(&batch, j);
        } else {
            j->rv = (unsigned long)r.rv;
            m->errors++;
            m->errors_inbound += j->key != 0;
            count_rv(m, (unsigned long)r.rv);
            snprintf(m->last_error, sizeof(m->last_error), "%s", hsm_ckr_name((unsigned long)r.rv));
            if (r.status != PX_E_INVAL && j->retries < 2 && j->deadline_ns > now &&
                other_member_up(pool, m)) {
                /* HA: this member failed it; another one may still sign in time */
                j->retries++;
                m->suspect = true; /* no new work until its signer has restarted */
                pend_push_head(pool, j);
            } else {
                complete(pool, j, r.status == PX_E_INVAL ? PX_E_INVAL : PX_E_HSM);
            }
        }
    }
    m->busy_since_ns = now;
    m->last_answer_ns = now;
    pthread_mutex_unlock(&pool->stats_lock);
    batch_flush(&batch);
}

/* The signer opened or closed a worker session; a refused open caps the member's sessions. */
static void handle_workers(struct hsm_pool *pool, struct member *m, const uint8_t *p)
{
    struct hsm_workers_info wi;
    memcpy(&wi, p, sizeof(wi));
    pthread_mutex_lock(&pool->stats_lock);
    m->sessions_open = wi.open;
    bool capped = wi.ceiling > 0 && (m->ceiling == 0 || wi.ceiling < m->ceiling);
    if (capped) {
        m->ceiling = wi.ceiling;
        if (m->workers > wi.ceiling) {
            m->workers = wi.ceiling;
            m->change_ns = px_now_ns();
            m->change_code = "ceiling";
            snprintf(m->change_reason, sizeof(m->change_reason),
                     "capped at %u: the token refused another session (%s)", wi.ceiling,
                     hsm_ckr_name((unsigned long)wi.rv));
        }
    }
    pthread_mutex_unlock(&pool->stats_lock);
    if (capped) {
        px_log(PX_LOG_WARN, "hsm", "member %s: the token refused session %u (%s): at most %u "
               "workers", m->cfg->name, wi.ceiling + 1, hsm_ckr_name((unsigned long)wi.rv),
               wi.ceiling);
    }
}

static void member_read(struct hsm_pool *pool, struct member *m)
{
    for (int rounds = 0; rounds < 64 && m->fd >= 0; rounds++) {
        ssize_t n = recv(m->fd, pool->rxbuf, HSM_RESP_FRAME_MAX + 64, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            return;
        }
        if (n <= 0) {
            int st = 0;
            char why[128];
            if (m->pid > 0 && waitpid(m->pid, &st, WNOHANG) == m->pid) {
                m->pid = 0;
                if (WIFEXITED(st)) {
                    snprintf(why, sizeof(why), "signer exited with status %d%s", WEXITSTATUS(st),
                             WEXITSTATUS(st) == HSM_SIGNER_EXIT_DEVICE ? " (device error)" : "");
                } else {
                    snprintf(why, sizeof(why), "signer killed by signal %d", WTERMSIG(st));
                }
            } else {
                snprintf(why, sizeof(why), "signer closed its socket");
            }
            member_lost(pool, m, why);
            return;
        }
        struct hsm_frame_hdr hd;
        if (hsm_frame__hdr(pool->rxbuf, (size_t)n, &hd) != 0) {
            member_lost(pool, m, "garbage on the signer socket");
            return;
        }
        const struct hsm_frame_hdr *h = &hd;
        if (h->type == HSM_FRAME_HELLO && m->state == HSM_MEMBER_STARTING) {
            handle_hello(pool, m, pool->rxbuf, (size_t)n);
        } else if (h->type == HSM_FRAME_RESP && h->count <= HSM_BATCH_MAX) {
            handle_resp(pool, m, pool->rxbuf, (size_t)n);
        } else if (h->type == HSM_FRAME_WORKERS &&
                   (size_t)n == sizeof(*h) + sizeof(struct hsm_workers_info)) {
            handle_workers(pool, m, pool->rxbuf + sizeof(*h));
        } else {
            member_lost(pool, m, "unexpected frame from signer");
            return;
        }
    }
}

/*
 * An idle member is probed with a throw-away signature every second, so a network HSM that
 * went away is noticed (its signer exits on the device error and is restarted) before live
 * traffic depends on it. The answer carries a probe id and only counts as traffic.
 */

static void probe_idle(struct hsm_pool *pool, uint64_t now)
{
    for (int i = 0; i < pool->nmembers; i++) {
        struct member *m = &pool->members[i];
        if (m->state != HSM_MEMBER_UP || m->outstanding > 0 || m->fd < 0 ||
            now - m->last_send_ns < PROBE_IDLE_NS) {
            continue;
        }
        struct {
            struct hsm_frame_hdr h;
            struct hsm_req r;
        } f;
        memset(&f, 0, sizeof(f));
        f.h = (struct hsm_frame_hdr){HSM_FRAME_MAGIC, HSM_FRAME_REQ, 1};
        f.r.id = PROBE_ID_BIT | (uint64_t)i;
        f.r.alg = (uint8_t)(m->info.key_type == HSM_KEY_RSA ? HSM_ALG_RSA_PKCS1_SHA256
                            : m->info.key_bits == 384      ? HSM_ALG_ECDSA_SHA384
                                                           : HSM_ALG_ECDSA_SHA256);
        f.r.dlen = (uint8_t)hsm_alg_digest_len((enum hsm_alg)f.r.alg);
        if (send(m->fd, &f, sizeof(f), MSG_DONTWAIT | MSG_NOSIGNAL) == (ssize_t)sizeof(f)) {
            m->outstanding++;
            m->busy_since_ns = now;
        }
        m->last_send_ns = now;
    }
}

static void dispatch(struct hsm_pool *pool)
{
    int batch = pool->cfg->hsm_batch > HSM_BATCH_MAX ? HSM_BATCH_MAX : pool->cfg->hsm_batch;
    while (pool->pend_head != NULL) {
        if (any_up(pool) == 0) {
            /* nobody can sign: answer now instead of letting deadlines run out */
            struct job *j;
            while ((j = pend_pop(pool)) != NULL) {
                complete(pool, j, PX_E_DOWN);
            }
            return;
        }
        struct member *m = pick_member(pool);
        if (m == NULL) {
            return;
        }
        struct hsm_frame_hdr *h = (struct hsm_frame_hdr *)pool->txbuf;
        struct hsm_req *reqs = (struct hsm_req *)(pool->txbuf + sizeof(*h));
        struct job *taken[HSM_BATCH_MAX];
        uint32_t cap = member_cap(pool, m);
        int n = 0;
        while (n < batch && pool->pend_head != NULL && m->outstanding + (uint32_t)n < cap) {
            struct job *j = pend_pop(pool);
            taken[n] = j;
            memset(&reqs[n], 0, sizeof(reqs[n]));
            reqs[n].id = j->id;
            reqs[n].alg = j->alg;
            reqs[n].key = j->key;
            reqs[n].dlen = j->dlen;
            memcpy(reqs[n].digest, j->digest, j->dlen);
            n++;
        }
        *h = (struct hsm_frame_hdr){HSM_FRAME_MAGIC, HSM_FRAME_REQ, (uint16_t)n};
        size_t len = sizeof(*h) + (size_t)n * sizeof(struct hsm_req);
        ssize_t w = send(m->fd, pool->txbuf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w != (ssize_t)len) {
            for (int i = n - 1; i >= 0; i--) {
                pend_push_head(pool, taken[i]);
            }
            if (w < 0 && (errno == EAGAIN || errno == ENOBUFS)) {
                m->send_blocked = true;
                continue;
            }
            member_lost(pool, m, "cannot send to signer");
            continue;
        }
        if (m->outstanding == 0) {
            m->busy_since_ns = px_now_ns();
        }
        m->last_send_ns = px_now_ns();
        m->outstanding += (uint32_t)n;
        m->win_sent += (uint32_t)n;
        for (int i = 0; i < n; i++) {
            inflight_add(m, taken[i]);
        }
    }
}

/* Deadlines, hung signers, slow starts, respawns. Returns the next time something is due. */
static uint64_t check_timers(struct hsm_pool *pool, uint64_t now)
{
    uint64_t next = now + 100000000ull; /* at least every 100 ms */
    uint64_t hang = (uint64_t)pool->cfg->hsm_hang_timeout_ms * 1000000ull;

    /* pending deadlines */
    struct job **pp = &pool->pend_head;
    struct job *prev = NULL;
    while (*pp != NULL) {
        struct job *j = *pp;
        if (j->deadline_ns <= now) {
            *pp = j->next;
            if (pool->pend_tail == j) {
                pool->pend_tail = prev;
            }
            pool->npend--;
            complete(pool, j, PX_E_TIMEOUT);
            continue;
        }
        if (j->deadline_ns < next) {
            next = j->deadline_ns;
        }
        prev = j;
        pp = &j->next;
    }

    for (int i = 0; i < pool->nmembers; i++) {
        struct member *m = &pool->members[i];
        uint64_t to = 0;
        for (struct job *j = m->inflight, *n; j != NULL; j = n) {
            n = j->inext;
            if (j->deadline_ns <= now) {
                inflight_del(m, j);
                complete(pool, j, PX_E_TIMEOUT);
                to++;
            } else if (j->deadline_ns < next) {
                next = j->deadline_ns;
            }
        }
        if (to) {
            pthread_mutex_lock(&pool->stats_lock);
            m->timeouts += to;
            pthread_mutex_unlock(&pool->stats_lock);
        }
        if (m->state == HSM_MEMBER_UP && m->outstanding > 0) {
            uint64_t due = m->busy_since_ns + hang;
            if (now >= due) {
                char why[128];
                snprintf(why, sizeof(why), "signer pid %d gave no answer for %d ms: killed",
                         (int)m->pid, pool->cfg->hsm_hang_timeout_ms);
                pthread_mutex_lock(&pool->stats_lock);
                m->kills++;
                pthread_mutex_unlock(&pool->stats_lock);
                member_lost(pool, m, why);
            } else if (due < next) {
                next = due;
            }
        } else if (m->state == HSM_MEMBER_STARTING) {
            uint64_t due = m->state_ns + (hang > 5000000000ull ? hang : 5000000000ull);
            if (now >= due) {
                pthread_mutex_lock(&pool->stats_lock);
                m->kills++;
                pthread_mutex_unlock(&pool->stats_lock);
                member_lost(pool, m, "signer did not finish starting in time: killed");
            } else if (due < next) {
                next = due;
            }
        } else if (m->state == HSM_MEMBER_RECOVERING) {
            if (now >= m->next_spawn_ns) {
                if (spawn_signer(pool, m) != 0) {
                    m->failed_starts++;
                    m->next_spawn_ns = now + (uint64_t)m->backoff_ms * 1000000ull;
                }
            }
            if (m->state == HSM_MEMBER_RECOVERING && m->next_spawn_ns < next) {
                next = m->next_spawn_ns;
            }
        }
    }
    return next;
}

static void take_submitted(struct hsm_pool *pool)
{
    uint64_t v;
    ssize_t r = read(pool->evfd, &v, sizeof(v));
    (void)r;
    pthread_mutex_lock(&pool->lock);
    struct job *list = pool->sub_head;
    pool->sub_head = pool->sub_tail = NULL;
    pthread_mutex_unlock(&pool->lock);
    while (list != NULL) {
        struct job *n = list->next;
        pend_push_tail(pool, list);
        list = n;
    }
}

static void shutdown_all(struct hsm_pool *pool)
{
    take_submitted(pool);
    struct job *j;
    while ((j = pend_pop(pool)) != NULL) {
        complete(pool, j, PX_E_SHUTDOWN);
    }
    for (int i = 0; i < pool->nmembers; i++) {
        struct member *m = &pool->members[i];
        while (m->inflight != NULL) {
            j = m->inflight;
            inflight_del(m, j);
            complete(pool, j, PX_E_SHUTDOWN);
        }
        if (m->fd >= 0) {
            close(m->fd);
            m->fd = -1;
        }
        if (m->pid > 0) {
            kill(m->pid, SIGKILL);
            waitpid(m->pid, NULL, 0);
            m->pid = 0;
        }
        m->state = HSM_MEMBER_DOWN; /* stopping on purpose: not worth a warning */
        recount_up(pool);
    }
    for (int i = 0; i < pool->nreap; i++) {
        waitpid(pool->reap[i], NULL, 0);
    }
    pool->nreap = 0;
}

static void send_ctrl_all(struct hsm_pool *pool, uint32_t op)
{
    struct {
        struct hsm_frame_hdr h;
        struct hsm_ctrl c;
    } f = {{HSM_FRAME_MAGIC, HSM_FRAME_CTRL, 1}, {op, 0}};
    for (int i = 0; i < pool->nmembers; i++) {
        struct member *m = &pool->members[i];
        if (m->state == HSM_MEMBER_UP && m->fd >= 0) {
            ssize_t w = send(m->fd, &f, sizeof(f), MSG_DONTWAIT | MSG_NOSIGNAL);
            px_log(PX_LOG_WARN, "hsm", "member %s: operator clears all HSM sessions%s",
                   m->cfg->name, w == (ssize_t)sizeof(f) ? "" : " (could not reach the signer)");
        }
    }
}

void hsm_pool_clear_sessions(struct hsm_pool *pool)
{
    atomic_store(&pool->want_clear, true);
    uint64_t one = 1;
    ssize_t w = write(pool->evfd, &one, sizeof(one));
    (void)w;
}

void hsm_pool_recover(struct hsm_pool *pool)
{
    atomic_store(&pool->want_recover, true);
    uint64_t one = 1;
    ssize_t w = write(pool->evfd, &one, sizeof(one));
    (void)w;
}

static void *dispatcher_main(void *arg)
{
    struct hsm_pool *pool = arg;
    struct pollfd pfd[1 + PX_HSM_MAX_MEMBERS];
    int map[1 + PX_HSM_MAX_MEMBERS];
    for (;;) {
        if (atomic_exchange(&pool->want_clear, false)) {
            send_ctrl_all(pool, HSM_CTRL_CLOSE_ALL_SESSIONS);
        }
        if (atomic_exchange(&pool->want_recover, false)) {
            for (int i = 0; i < pool->nmembers; i++) {
                struct member *m = &pool->members[i];
                if (m->state == HSM_MEMBER_DOWN) {
                    px_log(PX_LOG_INFO, "hsm", "member %s: recovery requested by the operator",
                           m->cfg->name);
                    m->refused = false;
                    m->failed_starts = 0;
                    m->backoff_ms = BACKOFF_MIN_MS;
                    m->next_spawn_ns = 0;
                    set_state(pool, m, HSM_MEMBER_RECOVERING);
                }
            }
        }
        uint64_t now = px_now_ns();
        uint64_t next = check_timers(pool, now);
        size_tick(pool, now);
        for (int i = 0; i < pool->nmembers; i++) {
            size_check(pool, &pool->members[i], now, false);
        }
        dispatch(pool);
        probe_idle(pool, now);
        publish_admission(pool, now);
        atomic_store(&pool->queue_depth, pool->npend);
        reap_some(pool);

        int n = 0;
        pfd[n++] = (struct pollfd){.fd = pool->evfd, .events = POLLIN};
        for (int i = 0; i < pool->nmembers; i++) {
            struct member *m = &pool->members[i];
            if (m->fd >= 0) {
                map[n] = i;
                pfd[n++] = (struct pollfd){
                    .fd = m->fd, .events = (short)(POLLIN | (m->send_blocked ? POLLOUT : 0))};
            }
        }
        now = px_now_ns();
        uint64_t wait_ns = next > now ? next - now : 0;
        struct timespec ts = {.tv_sec = (time_t)(wait_ns / 1000000000ull),
                              .tv_nsec = (long)(wait_ns % 1000000000ull)};
        int r = ppoll(pfd, (nfds_t)n, &ts, NULL);
        if (r < 0 && errno != EINTR) {
            px_log(PX_LOG_ERROR, "hsm", "dispatcher poll: %s", strerror(errno));
        }
        if (r <= 0) {
            continue;
        }
        if (pfd[0].revents & POLLIN) {
            pthread_mutex_lock(&pool->lock);
            bool stop = pool->stopping;
            pthread_mutex_unlock(&pool->lock);
            if (stop) {
                shutdown_all(pool);
                return NULL;
            }
            take_submitted(pool);
        }
        for (int k = 1; k < n; k++) {
            struct member *m = &pool->members[map[k]];
            if (pfd[k].revents & POLLOUT) {
                m->send_blocked = false;
            }
            if (pfd[k].revents & (POLLIN | POLLHUP | POLLERR)) {
                member_read(pool, m);
            }
        }
    }
}

/* ---- construction ----------------------------------------------------------------------- */

static void pool_destroy(struct hsm_pool *pool)
{
    if (pool->evfd >= 0) {
        close(pool->evfd);
    }
    free(pool->jobs);
    free(pool->rxbuf);
    free(pool->txbuf);
    pthread_mutex_destroy(&pool->lock);
    pthread_mutex_destroy(&pool->stats_lock);
    free(pool);
}

/* Waits for the first hello of every member (before the dispatcher runs). */
static void wait_first_hellos(struct hsm_pool *pool)
{
    uint64_t limit = (uint64_t)(pool->cfg->hsm_hang_timeout_ms > 10000
                                    ? pool->cfg->hsm_hang_timeout_ms
                                    : 10000) * 1000000ull;
    uint64_t end = px_now_ns() + limit;
    for (;;) {
        struct pollfd pfd[PX_HSM_MAX_MEMBERS];
        int map[PX_HSM_MAX_MEMBERS], n = 0;
        for (int i = 0; i < pool->nmembers; i++) {
            if (pool->members[i].state == HSM_MEMBER_STARTING && pool->members[i].fd >= 0) {
                map[n] = i;
                pfd[n++] = (struct pollfd){.fd = pool->members[i].fd, .events = POLLIN};
            }
        }
        uint64_t now = px_now_ns();
        if (n == 0 || now >= end) {
            return;
        }
        int r = poll(pfd, (nfds_t)n, (int)((end - now) / 1000000ull) + 1);
        for (int k = 0; r > 0 && k < n; k++) {
            if (pfd[k].revents) {
                member_read(pool, &pool->members[map[k]]);
            }
        }
    }
}

/* The forward-trust CA certificate's SubjectPublicKeyInfo, or 0 when there is none to read. */
static int load_ca_spki(const char *path, uint8_t *out)
{
    if (path == NULL || path[0] == '\0') {
        return 0;
    }
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return 0;
    }
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    int n = 0;
    if (x != NULL) {
        unsigned char *p = NULL;
        n = i2d_PUBKEY(X509_get0_pubkey(x), &p);
        if (n > 0 && n <= HSM_PUB_MAX) {
            memcpy(out, p, (size_t)n);
        } else {
            n = 0;
        }
        OPENSSL_free(p);
        X509_free(x);
    }
    ERR_clear_error();
    return n;
}

struct hsm_pool *hsm_pool_new(const struct px_cfg *cfg, const char *exe, char *err, size_t errlen)
{
    if (cfg->n_members == 0) {
        snprintf(err, errlen, "%s: no [hsm] section: nothing can sign", cfg->path);
        return NULL;
    }
    signal(SIGPIPE, SIG_IGN);
    struct hsm_pool *pool = calloc(1, sizeof(*pool));
    if (pool == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pool->cfg = cfg;
    snprintf(pool->exe, sizeof(pool->exe), "%s", exe);
    pthread_mutex_init(&pool->lock, NULL);
    pthread_mutex_init(&pool->stats_lock, NULL);
    pool->njobs = (uint32_t)cfg->hsm_queue_size;
    pool->jobs = calloc(pool->njobs, sizeof(struct job));
    pool->rxbuf = malloc(HSM_RESP_FRAME_MAX + 64);
    pool->txbuf = malloc(HSM_REQ_FRAME_MAX);
    pool->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (pool->jobs == NULL || pool->rxbuf == NULL || pool->txbuf == NULL || pool->evfd < 0) {
        snprintf(err, errlen, "out of memory");
        pool_destroy(pool);
        return NULL;
    }
    for (uint32_t i = 0; i < pool->njobs; i++) {
        pool->jobs[i].pool = pool;
        pool->jobs[i].id = i;
        pool->jobs[i].next = i + 1 < pool->njobs ? &pool->jobs[i + 1] : NULL;
    }
    pool->free = &pool->jobs[0];
    pool->ca_spki_len = load_ca_spki(cfg->ca_forward_trust_cert, pool->ca_spki);
    pool->nmembers = cfg->n_members;
    for (int i = 0; i < pool->nmembers; i++) {
        struct member *m = &pool->members[i];
        m->idx = i;
        m->cfg = &cfg->members[i];
        m->fd = -1;
        m->state = HSM_MEMBER_STARTING;
        m->backoff_ms = BACKOFF_MIN_MS;
        px_hist_init(&m->lat_hist, lat_bounds_s,
                     (int)(sizeof(lat_bounds_s) / sizeof(lat_bounds_s[0])));
        if (spawn_signer(pool, m) != 0) {
            m->state = HSM_MEMBER_RECOVERING;
            m->next_spawn_ns = px_now_ns() + BACKOFF_MIN_MS * 1000000ull;
        }
    }
    wait_first_hellos(pool);
    if (any_up(pool) == 0) {
        const char *why = pool->members[0].last_error[0] ? pool->members[0].last_error
                                                         : "signer did not start";
        snprintf(err, errlen, "%s", why);
        shutdown_all(pool);
        pool_destroy(pool);
        return NULL;
    }
    pool->running = true;
    if (pthread_create(&pool->thr, NULL, dispatcher_main, pool) != 0) {
        snprintf(err, errlen, "cannot start the HSM dispatcher thread");
        shutdown_all(pool);
        pool_destroy(pool);
        return NULL;
    }
    pool->thr_started = true;
    return pool;
}

void hsm_pool_free(struct hsm_pool *pool)
{
    if (pool == NULL) {
        return;
    }
    pthread_mutex_lock(&pool->lock);
    pool->stopping = true;
    pthread_mutex_unlock(&pool->lock);
    uint64_t one = 1;
    ssize_t w = write(pool->evfd, &one, sizeof(one));
    (void)w;
    if (pool->thr_started) {
        pthread_join(pool->thr, NULL);
    }
    /* jobs completed with PX_E_SHUTDOWN may still sit in cqs: the last release frees the pool */
    pthread_mutex_lock(&pool->lock);
    pool->freed = true;
    bool destroy = pool->live == 0;
    pthread_mutex_unlock(&pool->lock);
    if (destroy) {
        pool_destroy(pool);
    }
}

int hsm_pool_alg(const struct hsm_pool *pool, enum hsm_alg *out)
{
    struct hsm_pool *p = (struct hsm_pool *)pool;
    pthread_mutex_lock(&p->stats_lock);
    bool have = p->have_alg;
    *out = p->alg;
    pthread_mutex_unlock(&p->stats_lock);
    return have ? 0 : PX_E_DOWN;
}

int hsm_pool_key_info(struct hsm_pool *pool, int key, struct hsm_key_info *out)
{
    memset(out, 0, sizeof(*out));
    PX_ENSURE(key >= 1 && key <= HSM_XKEYS_MAX && key <= pool->cfg->n_inbound, PX_E_INVAL);
    pthread_mutex_lock(&pool->stats_lock);
    bool have = pool->have_xinfo;
    *out = pool->xinfo[key - 1];
    pthread_mutex_unlock(&pool->stats_lock);
    return have ? 0 : PX_E_DOWN;
}

int hsm_pool_members(const struct hsm_pool *pool)
{
    return pool->nmembers;
}

int hsm_pool_members_up(const struct hsm_pool *pool)
{
    return atomic_load(&((struct hsm_pool *)pool)->members_up);
}

uint32_t hsm_pool_queue_depth(struct hsm_pool *pool)
{
    return atomic_load(&pool->queue_depth);
}

void hsm_pool_member_stats(struct hsm_pool *pool, int idx, struct hsm_member_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (idx < 0 || idx >= pool->nmembers) {
        return;
    }
    struct member *m = &pool->members[idx];
    pthread_mutex_lock(&pool->stats_lock);
    snprintf(out->name, sizeof(out->name), "%s", m->cfg->name);
    out->state = m->state;
    out->pid = m->pid;
    out->ops = m->ops;
    out->errors = m->errors;
    out->ops_inbound = m->ops_inbound;
    out->errors_inbound = m->errors_inbound;
    out->timeouts = m->timeouts;
    out->gone = m->gone;
    out->respawns = m->respawns;
    out->kills = m->kills;
    out->inflight = m->n_inflight;
    out->n_rv = m->n_rv;
    memcpy(out->rv_codes, m->rv_codes, sizeof(out->rv_codes));
    memcpy(out->rv_counts, m->rv_counts, sizeof(out->rv_counts));
    out->lat_p50_us = lat_pct(m, 0.50);
    out->lat_p90_us = lat_pct(m, 0.90);
    out->lat_p99_us = lat_pct(m, 0.99);
    out->lat_max_us = (double)m->lat_max_ns / 1000.0;
    out->lat_hist = m->lat_hist;
    snprintf(out->last_error, sizeof(out->last_error), "%s", m->last_error);
    out->state_age_s = (double)(px_now_ns() - m->state_ns) / 1e9;
    out->last_recovery_ms = m->last_recovery_ms;
    out->recoveries = m->recoveries;
    out->token = m->info;
    out->workers_auto = sizing_auto(pool);
    out->workers = m->workers;
    out->workers_min = workers_lo(pool, m);
    out->workers_max = workers_hi(pool, m);
    out->sessions_open = m->sessions_open;
    out->workers_grows = m->grows;
    out->workers_shrinks = m->shrinks;
    out->workers_change_age_s = m->change_ns ? (double)(px_now_ns() - m->change_ns) / 1e9 : 0;
    snprintf(out->workers_reason, sizeof(out->workers_reason), "%s", m->change_reason);
    snprintf(out->workers_code, sizeof(out->workers_code), "%s",
             m->change_code ? m->change_code : "");
    out->svc_us = m->have_svc ? m->svc_ns / 1e3 : 0;
    out->blocked_us = m->have_svc ? m->blk_ns / 1e3 : 0;
    out->queue_wait_us = m->wait_ns / 1e3;
    out->rate = m->rate;
    pthread_mutex_unlock(&pool->stats_lock);
}

void hsm_pool_stats(struct hsm_pool *pool, struct hsm_pool_stats *out)
{
    memset(out, 0, sizeof(*out));
    out->refused_overload = atomic_load(&pool->n_overload);
    out->refused_full = atomic_load(&pool->n_full);
    out->refused_down = atomic_load(&pool->n_down);
    out->queue_depth = atomic_load(&pool->queue_depth);
    out->in_system = atomic_load(&pool->in_system);
    uint64_t per = atomic_load(&pool->adm_per_job_ns);
    out->capacity_per_s = per > 0 ? 1e9 / (double)per : 0;
}
