/* SPDX-License-Identifier: MIT */
/*
 * hsm_signer.c - the signer process: the only place a PKCS#11 module is loaded for the proxy.
 * Owns the module, one idle anchor session (closing the last session would log the token out),
 * and W worker threads, each with its own session. W is fixed ([hsm] workers = N) or set by the
 * proxy at run time (workers = auto: HSM_CTRL_SET_WORKERS; new workers open their session on
 * their own thread, surplus ones close theirs and leave after their current job). The main
 * thread reads request frames from the proxy and queues the jobs; each worker takes one job at a
 * time, measures how long the HSM took (svc_us, reported with the answer) and answers in frames
 * of up to B.
 * Invariants: every request gets exactly one answer unless the process dies; the PIN is read from
 * its file here and never sent anywhere.
 * Signals: SIGHUP, SIGINT and SIGTERM are ignored (they are the proxy's to handle); the process
 * ends when the proxy closes the socket, by SIGKILL from the proxy, or when the proxy dies.
 * Not here: deadlines (the proxy enforces them from outside, and kills this process if it hangs).
 */
#include "hsm_frame_int.h"
#include "hsm_p11_int.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define QCAP 1024
#define SLOW_SIGN_NS 1000000ull /* a signature this slow is answered at once, not batched */

struct qent {
    struct hsm_req r;
    uint64_t t_ns; /* when it arrived from the proxy */
};

struct signer;

struct worker {
    struct signer *sg;
    struct hsm_sess sess;
    int idx;
    int schedstat_fd; /* /proc/thread-self/schedstat of this worker's thread, -1 if none */
};

struct signer {
    int fd;
    int batch;
    struct hsm_mod mod;
    struct hsm_tok tok;
    struct hsm_sess anchor;
    pthread_mutex_t lock; /* queue, want, alive, open, ceiling */
    pthread_cond_t nonempty;
    pthread_cond_t nonfull;
    struct qent q[QCAP];
    uint32_t head, tail; /* tail - head = queued */
    int want;            /* worker sessions the proxy wants; workers idx >= want leave */
    int open;            /* worker sessions open */
    int ceiling;         /* a session open failed at this index: no worker at or above it */
    uint64_t ceiling_rv;
    bool alive[PX_HSM_WORKERS_LIMIT];
    struct worker workers[PX_HSM_WORKERS_LIMIT];
    pthread_mutex_t send_lock;
};

static int send_frame(struct signer *sg, const void *buf, size_t len)
{
    pthread_mutex_lock(&sg->send_lock);
    ssize_t n;
    do {
        n = send(sg->fd, buf, len, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    pthread_mutex_unlock(&sg->send_lock);
    return n == (ssize_t)len ? 0 : -1;
}

static void send_hello(struct signer *sg, int status, CK_RV rv, const char *err, int workers)
{
    struct {
        struct hsm_frame_hdr h;
        struct hsm_hello hello;
    } f;
    memset(&f, 0, sizeof(f));
    f.h = (struct hsm_frame_hdr){HSM_FRAME_MAGIC, HSM_FRAME_HELLO, 1};
    f.hello.status = status;
    f.hello.rv = rv;
    f.hello.workers = (uint32_t)workers;
    snprintf(f.hello.err, sizeof(f.hello.err), "%s", err ? err : "");
    f.hello.info = sg->tok.info;
    f.hello.nx = (uint32_t)sg->tok.nx;
    memcpy(f.hello.xinfo, sg->tok.xinfo, sizeof(f.hello.xinfo));
    if (send_frame(sg, &f, sizeof(f)) != 0) {
        _exit(HSM_SIGNER_EXIT_PROTO);
    }
}

/* Tells the proxy how many worker sessions are open (after one opened or closed). */
static void send_workers(struct signer *sg)
{
    struct {
        struct hsm_frame_hdr h;
        struct hsm_workers_info w;
    } f;
    memset(&f, 0, sizeof(f));
    f.h = (struct hsm_frame_hdr){HSM_FRAME_MAGIC, HSM_FRAME_WORKERS, 1};
    pthread_mutex_lock(&sg->lock);
    f.w.open = (uint32_t)sg->open;
    f.w.ceiling = sg->ceiling < PX_HSM_WORKERS_LIMIT ? (uint32_t)sg->ceiling : 0;
    f.w.rv = sg->ceiling_rv;
    pthread_mutex_unlock(&sg->lock);
    if (send_frame(sg, &f, sizeof(f)) != 0) {
        _exit(HSM_SIGNER_EXIT_OK); /* proxy gone */
    }
}

/* Signs one job; on a session-level error reopens this worker's session once and retries. */
static int sign_one(struct worker *w, const struct hsm_req *r, uint8_t *sig, CK_RV *rv)
{
    struct signer *sg = w->sg;
    int n = hsm_p11__sign_key(&sg->tok, &w->sess, r->key, (enum hsm_alg)r->alg, r->digest, r->dlen,
                              sig, rv);
    if (n >= 0 || !hsm_p11__rv_session_level(*rv)) {
        return n;
    }
    px_log(PX_LOG_WARN, "signer", "worker %d: %s, reopening session and logging in again", w->idx,
           hsm_ckr_name(*rv));
    char err[256];
    CK_RV orv;
    hsm_p11__session_close(&sg->tok, &w->sess);
    if (hsm_p11__session_open(&sg->tok, &w->sess, &orv, err, sizeof(err)) != 0) {
        px_log(PX_LOG_ERROR, "signer", "worker %d: %s", w->idx, err);
        *rv = orv;
        return PX_E_HSM;
    }
    return hsm_p11__sign_key(&sg->tok, &w->sess, r->key, (enum hsm_alg)r->alg, r->digest, r->dlen,
                             sig, rv);
}

/*
 * Takes the next job for worker w, or returns false when w must leave (the proxy wants fewer
 * sessions). Called with sg->lock held; may wait on nonempty.
 */
static bool take_job(struct signer *sg, struct worker *w, struct qent *out)
{
    while (sg->tail == sg->head && w->idx < sg->want) {
        pthread_cond_wait(&sg->nonempty, &sg->lock);
    }
    if (w->idx >= sg->want) {
        return false;
    }
    *out = sg->q[sg->head % QCAP];
    sg->head++;
    pthread_cond_signal(&sg->nonfull);
    return true;
}

static int start_workers_locked(struct signer *sg);

/*
 * This thread's CPU time and run-queue wait (ns) from /proc/thread-self/schedstat. Returns false
 * when unavailable. One pread per signature: the reading after a job is the next job's start.
 */
static bool sched_now(int fd, uint64_t *cpu, uint64_t *rq)
{
    char b[96];
    ssize_t n = fd >= 0 ? pread(fd, b, sizeof(b) - 1, 0) : -1;
    if (n <= 0) {
        return false;
    }
    b[n] = '\0';
    char *e = NULL;
    *cpu = strtoull(b, &e, 10);
    if (e == b) {
        return false;
    }
    *rq = strtoull(e, NULL, 10);
    return true;
}

/* Sends the n answers collected in frame (if any) and starts a new frame. */
static void flush_answers(struct signer *sg, uint8_t *frame, size_t *off, int *n)
{
    if (*n == 0) {
        return;
    }
    struct hsm_frame_hdr *h = (struct hsm_frame_hdr *)frame;
    *h = (struct hsm_frame_hdr){HSM_FRAME_MAGIC, HSM_FRAME_RESP, (uint16_t)*n};
    if (send_frame(sg, frame, *off) != 0) {
        _exit(HSM_SIGNER_EXIT_OK); /* proxy gone */
    }
    *off = sizeof(struct hsm_frame_hdr);
    *n = 0;
}

/*
 * One worker = one session. Takes queued jobs one at a time (so a job never waits behind
 * another worker's private batch while a session is free) and answers in frames of up to B:
 * a frame goes out when B answers are in it, when nothing more is queued, or after a slow
 * signature (with an HSM that takes milliseconds, batching answers would only delay them).
 */
static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct signer *sg = w->sg;
    static __thread uint8_t frame[HSM_RESP_FRAME_MAX];
    if (!w->sess.open) {
        char err[256];
        CK_RV rv = CKR_OK;
        if (hsm_p11__session_open(&sg->tok, &w->sess, &rv, err, sizeof(err)) != 0) {
            px_log(PX_LOG_WARN, "signer", "worker %d: no session (%s): staying at %d sessions",
                   w->idx, err, w->idx);
            pthread_mutex_lock(&sg->lock);
            sg->alive[w->idx] = false;
            if (w->idx < sg->ceiling) {
                sg->ceiling = w->idx;
                sg->ceiling_rv = rv;
            }
            pthread_mutex_unlock(&sg->lock);
            send_workers(sg);
            if (hsm_p11__rv_device_level(rv)) {
                px_log(PX_LOG_ERROR, "signer", "device-level PKCS#11 error, exiting for a clean "
                       "restart");
                _exit(HSM_SIGNER_EXIT_DEVICE);
            }
            return NULL;
        }
        pthread_mutex_lock(&sg->lock);
        sg->open++;
        pthread_mutex_unlock(&sg->lock);
        send_workers(sg);
    }
    size_t off = sizeof(struct hsm_frame_hdr);
    int n = 0;
    bool device_failed = false;
    /*
     * How much of a signature's time more sessions could overlap: wall time minus CPU time
     * minus waiting for a CPU. A network HSM's round trip counts; a software token that burns
     * CPU, or a machine too busy to run the worker, does not (more sessions would only add
     * contention there).
     */
    w->schedstat_fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
    uint64_t cpu0 = 0, rq0 = 0;
    bool have_sched = sched_now(w->schedstat_fd, &cpu0, &rq0);
    for (;;) {
        struct qent job;
        pthread_mutex_lock(&sg->lock);
        /* answers go out before this worker could wait for more work */
        if (n > 0 && (sg->tail == sg->head || w->idx >= sg->want)) {
            pthread_mutex_unlock(&sg->lock);
            flush_answers(sg, frame, &off, &n);
            pthread_mutex_lock(&sg->lock);
        }
        bool got = take_job(sg, w, &job);
        if (!got) {
            sg->open--;
        }
        pthread_mutex_unlock(&sg->lock);
        if (!got) {
            flush_answers(sg, frame, &off, &n);
            hsm_p11__session_close(&sg->tok, &w->sess);
            if (w->schedstat_fd >= 0) {
                close(w->schedstat_fd);
                w->schedstat_fd = -1;
            }
            /* w is free for a new thread only now; wanted again meanwhile: start one */
            pthread_mutex_lock(&sg->lock);
            sg->alive[w->idx] = false;
            if (w->idx < sg->want && start_workers_locked(sg) != 0) {
                px_log(PX_LOG_WARN, "signer", "cannot start more worker threads");
            }
            pthread_mutex_unlock(&sg->lock);
            send_workers(sg);
            return NULL;
        }
        struct hsm_resp *resp = (struct hsm_resp *)(frame + off);
        uint8_t *sig = frame + off + sizeof(*resp);
        CK_RV rv = CKR_OK;
        memset(resp, 0, sizeof(*resp));
        resp->id = job.r.id;
        uint64_t t0 = px_now_ns();
        int len = sign_one(w, &job.r, sig, &rv);
        uint64_t t1 = px_now_ns();
        resp->svc_us = (uint32_t)((t1 - t0) / 1000u);
        resp->qwait_us = (uint32_t)((t0 - job.t_ns) / 1000u);
        resp->blocked_us = resp->svc_us;
        uint64_t cpu1, rq1;
        if (have_sched && sched_now(w->schedstat_fd, &cpu1, &rq1)) {
            uint64_t busy = (cpu1 - cpu0) + (rq1 - rq0);
            resp->blocked_us = t1 - t0 > busy ? (uint32_t)((t1 - t0 - busy) / 1000u) : 0;
            cpu0 = cpu1;
            rq0 = rq1;
        }
        if (len >= 0) {
            resp->sig_len = (uint16_t)len;
        } else {
            resp->status = len;
            resp->rv = rv;
            if (hsm_p11__rv_device_level(rv)) {
                device_failed = true;
            }
        }
        off += sizeof(*resp) + resp->sig_len;
        /* keep each resp 8-byte aligned for the reader */
        off = (off + 7) & ~(size_t)7;
        n++;
        if (n == sg->batch || t1 - t0 >= SLOW_SIGN_NS || device_failed) {
            flush_answers(sg, frame, &off, &n);
        }
        if (device_failed) {
            /* A fresh process is the sure way to re-initialise any vendor library. */
            px_log(PX_LOG_ERROR, "signer", "device-level PKCS#11 error, exiting for a clean restart");
            _exit(HSM_SIGNER_EXIT_DEVICE);
        }
    }
    return NULL;
}

/* Starts workers up to sg->want (each opens its own session). Called with sg->lock held. */
static int start_workers_locked(struct signer *sg)
{
    for (int i = 0; i < sg->want && i < sg->ceiling; i++) {
        if (sg->alive[i]) {
            continue;
        }
        sg->workers[i].sg = sg;
        sg->workers[i].idx = i;
        sg->alive[i] = true;
        pthread_t t;
        if (pthread_create(&t, NULL, worker_main, &sg->workers[i]) != 0) {
            sg->alive[i] = false;
            return -EAGAIN;
        }
        pthread_detach(t);
    }
    return 0;
}

/* The proxy's sizing decision: more workers start now, surplus ones leave after their job. */
static void set_workers(struct signer *sg, uint32_t n)
{
    if (n < 1) {
        n = 1;
    }
    if (n > PX_HSM_WORKERS_LIMIT) {
        n = PX_HSM_WORKERS_LIMIT;
    }
    pthread_mutex_lock(&sg->lock);
    int before = sg->want;
    sg->want = (int)n;
    if (start_workers_locked(sg) != 0) {
        px_log(PX_LOG_WARN, "signer", "cannot start more worker threads");
    }
    pthread_cond_broadcast(&sg->nonempty); /* surplus workers wake up and leave */
    pthread_mutex_unlock(&sg->lock);
    px_log(PX_LOG_DEBUG, "signer", "workers %d -> %u", before, n);
}

int hsm_signer_main(int fd, const char *config_path, int member_idx)
{
    static struct signer sg; /* large queue: not on the stack */
    static struct px_cfg cfg;
    char err[512] = "";
    CK_RV rv = CKR_OK;

    signal(SIGPIPE, SIG_IGN); /* p11-kit-client writes without MSG_NOSIGNAL (HSM-NOTES.md) */
    /* A terminal's ^C and hangup reach the whole process group, systemd's stop the whole
     * cgroup: the proxy handles them (reload, or drain) and ends this process by closing its
     * socket, or SIGKILLs it. Dying first would fail the signatures the drain still needs. */
    signal(SIGHUP, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    sg.fd = fd;
    pthread_mutex_init(&sg.lock, NULL);
    pthread_mutex_init(&sg.send_lock, NULL);
    pthread_cond_init(&sg.nonempty, NULL);
    pthread_cond_init(&sg.nonfull, NULL);

    if (px_cfg_load(config_path, &cfg, err, sizeof(err)) != 0) {
        send_hello(&sg, PX_E_CONFIG, 0, err, 0);
        return HSM_SIGNER_EXIT_STARTUP;
    }
    px_log_set_level(cfg.log_level);
    if (member_idx < 0 || member_idx >= cfg.n_members) {
        send_hello(&sg, PX_E_CONFIG, 0, "no such HSM member", 0);
        return HSM_SIGNER_EXIT_STARTUP;
    }
    const struct px_hsm_member_cfg *m = &cfg.members[member_idx];
    static char tag[48];
    snprintf(tag, sizeof(tag), "signer:%s", m->name);
    px_log_set_tag(tag);
    sg.batch = cfg.hsm_batch > HSM_BATCH_MAX ? HSM_BATCH_MAX : cfg.hsm_batch;
    sg.tok.m = m;
    sg.tok.mod = &sg.mod;
    /* the [inbound.NAME] server keys, in file order: job key 1 + i */
    for (int i = 0; i < cfg.n_inbound && i < HSM_XKEYS_MAX; i++) {
        snprintf(sg.tok.x[i].label, sizeof(sg.tok.x[i].label), "%s", cfg.inbound[i].key_label);
        snprintf(sg.tok.x[i].id, sizeof(sg.tok.x[i].id), "%s", cfg.inbound[i].key_id);
        sg.tok.nx = i + 1;
    }

    int r = hsm_member_setenv(m);
    if (r == 0) {
        r = px_read_secret_file(m->pin_file, sg.tok.pin, sizeof(sg.tok.pin), err, sizeof(err));
    }
    if (r >= 0) {
        r = hsm_p11__load(&sg.mod, m->module, err, sizeof(err));
    }
    if (r >= 0) {
        r = hsm_p11__find_token(&sg.tok, err, sizeof(err));
    }
    if (r >= 0) {
        r = hsm_p11__session_open(&sg.tok, &sg.anchor, &rv, err, sizeof(err));
    }
    if (r >= 0) {
        r = hsm_p11__key_info(&sg.tok, &sg.anchor, err, sizeof(err));
    }
    if (r >= 0) {
        hsm_p11__xkey_info(&sg.tok, &sg.anchor); /* a missing one is reported, not fatal */
    }
    if (r >= 0) {
        /* canary: a member is up only once it has really signed */
        uint8_t dg[48] = {0}, sig[HSM_SIG_MAX];
        enum hsm_alg alg = sg.tok.info.key_type == HSM_KEY_RSA ? HSM_ALG_RSA_PKCS1_SHA256
                           : sg.tok.info.key_bits == 384      ? HSM_ALG_ECDSA_SHA384
                                                              : HSM_ALG_ECDSA_SHA256;
        if (hsm_p11__sign(&sg.tok, &sg.anchor, alg, dg, hsm_alg_digest_len(alg), sig, &rv) < 0) {
            snprintf(err, sizeof(err), "[%s] canary signature on token '%s' failed: %s", m->name,
                     sg.tok.info.label, hsm_ckr_name(rv));
            r = PX_E_HSM;
        }
    }
    int nw = cfg.hsm_workers == PX_HSM_WORKERS_AUTO ? cfg.hsm_workers_min : cfg.hsm_workers;
    sg.ceiling = PX_HSM_WORKERS_LIMIT;
    for (int i = 0; r >= 0 && i < nw; i++) {
        sg.workers[i].sg = &sg;
        sg.workers[i].idx = i;
        r = hsm_p11__session_open(&sg.tok, &sg.workers[i].sess, &rv, err, sizeof(err));
    }
    if (r < 0) {
        px_wipe(sg.tok.pin, sizeof(sg.tok.pin));
        send_hello(&sg, r, rv, err, 0);
        return HSM_SIGNER_EXIT_STARTUP;
    }
    pthread_mutex_lock(&sg.lock);
    sg.want = nw;
    sg.open = nw;
    r = start_workers_locked(&sg);
    pthread_mutex_unlock(&sg.lock);
    if (r != 0) {
        send_hello(&sg, -EAGAIN, 0, "cannot start worker threads", 0);
        return HSM_SIGNER_EXIT_STARTUP;
    }
    px_log(PX_LOG_DEBUG, "signer", "token '%s' serial %s, key '%s', %d workers", sg.tok.info.label,
           sg.tok.info.serial, sg.tok.info.key_label, nw);
    send_hello(&sg, 0, 0, NULL, nw);

    static uint8_t buf[HSM_REQ_FRAME_MAX + 64];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            _exit(HSM_SIGNER_EXIT_OK); /* proxy closed the socket: no C_Finalize, it may hang */
        }
        const struct hsm_req *reqs = NULL;
        uint16_t count = 0;
        struct hsm_ctrl ctl;
        int kind = hsm_frame__parse_to_signer(buf, (size_t)n, &reqs, &count, &ctl);
        if (kind == HSM_FRAME_CTRL) {
            if (ctl.op == HSM_CTRL_SET_WORKERS) {
                set_workers(&sg, ctl.arg);
            } else if (ctl.op == HSM_CTRL_CLOSE_ALL_SESSIONS) {
                /* workers find out on their next signature and reopen (session-level path) */
                CK_RV crv = sg.mod.f->C_CloseAllSessions(sg.tok.slot);
                sg.anchor.open = false;
                char e2[256];
                CK_RV orv;
                int ar = hsm_p11__session_open(&sg.tok, &sg.anchor, &orv, e2, sizeof(e2));
                px_log(crv == CKR_OK && ar == 0 ? PX_LOG_WARN : PX_LOG_ERROR, "signer",
                       "operator reset: C_CloseAllSessions %s, anchor session %s",
                       hsm_ckr_name(crv), ar == 0 ? "reopened" : e2);
            }
            continue;
        }
        if (kind != HSM_FRAME_REQ) {
            px_log(PX_LOG_ERROR, "signer", "malformed frame (%zd bytes) on the job socket", n);
            _exit(HSM_SIGNER_EXIT_PROTO);
        }
        uint64_t now = px_now_ns();
        pthread_mutex_lock(&sg.lock);
        for (uint16_t i = 0; i < count; i++) {
            while (sg.tail - sg.head >= QCAP) {
                pthread_cond_wait(&sg.nonfull, &sg.lock);
            }
            sg.q[sg.tail % QCAP] = (struct qent){.r = reqs[i], .t_ns = now};
            sg.tail++;
        }
        pthread_cond_broadcast(&sg.nonempty);
        pthread_mutex_unlock(&sg.lock);
    }
}
