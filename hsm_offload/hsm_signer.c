/* SPDX-License-Identifier: MIT */
/*
 * hsm_signer.c - the signer process: the only place a PKCS#11 module is loaded for the proxy.
 * Owns the module, one idle anchor session (closing the last session would log the token out),
 * and W worker threads, each with its own session. The main thread reads request frames from the
 * proxy and queues the jobs; a worker takes up to B jobs per wake-up, signs them and answers with
 * one frame.
 * Invariants: every request gets exactly one answer unless the process dies; the PIN is read from
 * its file here and never sent anywhere.
 * Signals: SIGHUP, SIGINT and SIGTERM are ignored (they are the proxy's to handle); the process
 * ends when the proxy closes the socket, by SIGKILL from the proxy, or when the proxy dies.
 * Not here: deadlines (the proxy enforces them from outside, and kills this process if it hangs).
 */
#include "hsm_frame_int.h"
#include "hsm_p11_int.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define QCAP 1024

struct signer {
    int fd;
    int batch;
    int workers;
    struct hsm_mod mod;
    struct hsm_tok tok;
    struct hsm_sess anchor;
    pthread_mutex_t lock;
    pthread_cond_t nonempty;
    pthread_cond_t nonfull;
    struct hsm_req q[QCAP];
    uint32_t head, tail; /* tail - head = queued */
    pthread_mutex_t send_lock;
};

struct worker {
    struct signer *sg;
    struct hsm_sess sess;
    int idx;
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
    if (send_frame(sg, &f, sizeof(f)) != 0) {
        _exit(HSM_SIGNER_EXIT_PROTO);
    }
}

/* Signs one job; on a session-level error reopens this worker's session once and retries. */
static int sign_one(struct worker *w, const struct hsm_req *r, uint8_t *sig, CK_RV *rv)
{
    struct signer *sg = w->sg;
    int n = hsm_p11__sign(&sg->tok, &w->sess, (enum hsm_alg)r->alg, r->digest, r->dlen, sig, rv);
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
    return hsm_p11__sign(&sg->tok, &w->sess, (enum hsm_alg)r->alg, r->digest, r->dlen, sig, rv);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct signer *sg = w->sg;
    static __thread uint8_t frame[HSM_RESP_FRAME_MAX];
    struct hsm_req batch[HSM_BATCH_MAX];
    for (;;) {
        pthread_mutex_lock(&sg->lock);
        while (sg->tail == sg->head) {
            pthread_cond_wait(&sg->nonempty, &sg->lock);
        }
        /* Share a burst among the workers instead of one worker taking a whole batch. */
        uint32_t queued = sg->tail - sg->head;
        uint32_t take = (queued + (uint32_t)sg->workers - 1) / (uint32_t)sg->workers;
        if (take > (uint32_t)sg->batch) {
            take = (uint32_t)sg->batch;
        }
        int n = 0;
        while ((uint32_t)n < take && sg->tail != sg->head) {
            batch[n++] = sg->q[sg->head % QCAP];
            sg->head++;
        }
        pthread_cond_signal(&sg->nonfull);
        pthread_mutex_unlock(&sg->lock);

        size_t off = sizeof(struct hsm_frame_hdr);
        bool device_failed = false;
        for (int i = 0; i < n; i++) {
            struct hsm_resp *resp = (struct hsm_resp *)(frame + off);
            uint8_t *sig = frame + off + sizeof(*resp);
            CK_RV rv = CKR_OK;
            memset(resp, 0, sizeof(*resp));
            resp->id = batch[i].id;
            int len = device_failed ? PX_E_HSM : sign_one(w, &batch[i], sig, &rv);
            if (len >= 0) {
                resp->sig_len = (uint16_t)len;
            } else {
                resp->status = len;
                resp->rv = device_failed ? CKR_DEVICE_ERROR : rv;
                if (hsm_p11__rv_device_level(rv)) {
                    device_failed = true;
                }
            }
            off += sizeof(*resp) + resp->sig_len;
            /* keep each resp 8-byte aligned for the reader */
            off = (off + 7) & ~(size_t)7;
        }
        struct hsm_frame_hdr *h = (struct hsm_frame_hdr *)frame;
        *h = (struct hsm_frame_hdr){HSM_FRAME_MAGIC, HSM_FRAME_RESP, (uint16_t)n};
        if (send_frame(sg, frame, off) != 0) {
            _exit(HSM_SIGNER_EXIT_OK); /* proxy gone */
        }
        if (device_failed) {
            /* A fresh process is the sure way to re-initialise any vendor library. */
            px_log(PX_LOG_ERROR, "signer", "device-level PKCS#11 error, exiting for a clean restart");
            _exit(HSM_SIGNER_EXIT_DEVICE);
        }
    }
    return NULL;
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
    int nw = cfg.hsm_workers;
    sg.workers = nw;
    static struct worker workers[64];
    for (int i = 0; r >= 0 && i < nw; i++) {
        workers[i].sg = &sg;
        workers[i].idx = i;
        r = hsm_p11__session_open(&sg.tok, &workers[i].sess, &rv, err, sizeof(err));
    }
    if (r < 0) {
        px_wipe(sg.tok.pin, sizeof(sg.tok.pin));
        send_hello(&sg, r, rv, err, 0);
        return HSM_SIGNER_EXIT_STARTUP;
    }
    for (int i = 0; i < nw; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, worker_main, &workers[i]) != 0) {
            send_hello(&sg, -EAGAIN, 0, "cannot start worker threads", 0);
            return HSM_SIGNER_EXIT_STARTUP;
        }
        pthread_detach(t);
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
            if (ctl.op == HSM_CTRL_CLOSE_ALL_SESSIONS) {
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
        pthread_mutex_lock(&sg.lock);
        for (uint16_t i = 0; i < count; i++) {
            while (sg.tail - sg.head >= QCAP) {
                pthread_cond_wait(&sg.nonfull, &sg.lock);
            }
            sg.q[sg.tail % QCAP] = reqs[i];
            sg.tail++;
        }
        pthread_cond_broadcast(&sg.nonempty);
        pthread_mutex_unlock(&sg.lock);
    }
}
