/* SPDX-License-Identifier: MIT */
/*
 * test_hsm_pool.c - hsm_offload end to end against real SoftHSM tokens: signer processes,
 * batching dispatcher, deadlines, queue bound, killed and hung signers, and start-up errors.
 * Signatures are verified with OpenSSL against the forward-trust CA certificate's public key.
 */
#include <check.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#include "hsm.h"
#include "hsm_fixture.h"

Suite *hsm_pool_suite(void);
Suite *hsm_errors_suite(void);

static struct fx fx_ec, fx_rsa, fx_p384;

static void setup_tokens(void)
{
    fx_init(&fx_ec, "ec-p256");
    fx_init(&fx_rsa, "rsa-2048");
    fx_init(&fx_p384, "ec-p384");
}

static void teardown_tokens(void)
{
    fx_fini(&fx_ec);
    fx_fini(&fx_rsa);
    fx_fini(&fx_p384);
}

/* ---- helpers ---------------------------------------------------------------------------- */

#define MAXJOBS 5000

struct tally {
    int done;
    int per_job[MAXJOBS]; /* completions per job id: must end at exactly 1 */
    int status_ok, status_gone, status_timeout, status_down, status_other;
    uint64_t max_latency_ns;
    uint8_t last_sig[HSM_SIG_MAX];
    size_t last_sig_len;
};

static void on_done(void *ctx, const struct hsm_result *r)
{
    struct tally *t = ctx;
    intptr_t id = (intptr_t)r->user;
    ck_assert_int_ge(id, 0);
    ck_assert_int_lt(id, MAXJOBS);
    t->per_job[id]++;
    t->done++;
    if (r->latency_ns > t->max_latency_ns) {
        t->max_latency_ns = r->latency_ns;
    }
    switch (r->status) {
    case 0:
        t->status_ok++;
        ck_assert_int_gt((int)r->sig_len, 0);
        memcpy(t->last_sig, r->sig, r->sig_len);
        t->last_sig_len = r->sig_len;
        break;
    case PX_E_GONE:
        t->status_gone++;
        break;
    case PX_E_TIMEOUT:
        t->status_timeout++;
        break;
    case PX_E_DOWN:
        t->status_down++;
        break;
    default:
        t->status_other++;
        break;
    }
}

/* Drains cq until t->done reaches want or timeout_ms passes. */
static void wait_done(struct hsm_cq *cq, struct tally *t, int want, int timeout_ms)
{
    uint64_t end = px_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    while (t->done < want && px_now_ns() < end) {
        struct pollfd pfd = {.fd = hsm_cq_fd(cq), .events = POLLIN};
        poll(&pfd, 1, 50);
        hsm_cq_drain(cq, on_done, t);
    }
}

static EVP_PKEY *ca_pubkey(const struct fx *fx)
{
    char path[400];
    snprintf(path, sizeof(path), "%s/state/ca/forward-trust.pem", fx->dir);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    ck_assert_ptr_nonnull(x);
    EVP_PKEY *k = X509_get_pubkey(x);
    X509_free(x);
    ck_assert_ptr_nonnull(k);
    return k;
}

/* Verifies a DER signature over digest with OpenSSL; pss selects RSA-PSS padding. */
static int verify_sig(EVP_PKEY *k, enum hsm_alg alg, const uint8_t *dg, size_t dlen,
                      const uint8_t *sig, size_t slen)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(k, NULL);
    int ok = ctx != NULL && EVP_PKEY_verify_init(ctx) == 1;
    if (ok && (alg == HSM_ALG_RSA_PKCS1_SHA256 || alg == HSM_ALG_RSA_PSS_SHA256)) {
        ok = EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256()) == 1;
        if (ok && alg == HSM_ALG_RSA_PSS_SHA256) {
            ok = EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PSS_PADDING) == 1 &&
                 EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, 32) == 1;
        } else if (ok) {
            ok = EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) == 1;
        }
    }
    int r = ok ? EVP_PKEY_verify(ctx, sig, slen, dg, dlen) : -1;
    EVP_PKEY_CTX_free(ctx);
    return r;
}

static struct px_cfg *load_cfg(const char *path)
{
    static struct px_cfg cfgs[4];
    static int next;
    struct px_cfg *c = &cfgs[next++ % 4];
    char err[600];
    int r = px_cfg_load(path, c, err, sizeof(err));
    ck_assert_msg(r == 0, "config: %s", err);
    return c;
}

static struct hsm_pool *pool_for(const struct fx *fx, const char *extra, struct px_cfg **cfgp)
{
    char path[400], err[600];
    struct px_cfg *cfg = load_cfg(fx_conf_with(fx, extra ? extra : "", path, sizeof(path)));
    struct hsm_pool *p = hsm_pool_new(cfg, fx_bin(), err, sizeof(err));
    ck_assert_msg(p != NULL, "hsm_pool_new: %s", err);
    if (cfgp) {
        *cfgp = cfg;
    }
    return p;
}

static pid_t signer_pid(struct hsm_pool *p)
{
    struct hsm_member_stats st;
    hsm_pool_member_stats(p, 0, &st);
    return st.pid;
}

static void wait_up(struct hsm_pool *p, int timeout_ms)
{
    uint64_t end = px_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    while (hsm_pool_members_up(p) == 0 && px_now_ns() < end) {
        usleep(10000);
    }
}

/* ---- signing correctness ---------------------------------------------------------------- */

static void sign_and_verify(const struct fx *fx, const char *extra, enum hsm_alg want_alg,
                            enum hsm_alg submit_alg)
{
    struct hsm_pool *p = pool_for(fx, extra, NULL);
    enum hsm_alg alg;
    ck_assert_int_eq(hsm_pool_alg(p, &alg), 0);
    ck_assert_int_eq(alg, want_alg);
    struct hsm_cq *cq = hsm_cq_new();
    EVP_PKEY *k = ca_pubkey(fx);
    static struct tally t;
    memset(&t, 0, sizeof(t));
    for (int i = 0; i < 20; i++) {
        uint8_t dg[48];
        RAND_bytes(dg, sizeof(dg));
        size_t dlen = hsm_alg_digest_len(submit_alg);
        int before = t.done;
        ck_assert_int_eq(hsm_sign_submit(p, cq, submit_alg, dg, dlen, 5000, (void *)(intptr_t)i), 0);
        wait_done(cq, &t, before + 1, 5000);
        ck_assert_int_eq(t.status_ok, i + 1);
        ck_assert_int_eq(verify_sig(k, submit_alg, dg, dlen, t.last_sig, t.last_sig_len), 1);
        /* a flipped digest bit must not verify: the check above is not vacuous */
        dg[0] ^= 1;
        ck_assert_int_ne(verify_sig(k, submit_alg, dg, dlen, t.last_sig, t.last_sig_len), 1);
    }
    struct hsm_member_stats st;
    hsm_pool_member_stats(p, 0, &st);
    ck_assert_uint_eq(st.ops, 20);
    ck_assert_uint_eq(st.errors, 0);
    ck_assert(st.lat_p50_us > 0 && st.lat_p50_us <= st.lat_max_us);
    ck_assert_str_eq(st.token.label, "tlsmint");
    ck_assert_int_eq((int)strlen(st.token.serial), 16);
    ck_assert(st.token.logged_in);
    EVP_PKEY_free(k);
    hsm_pool_free(p);
    hsm_cq_free(cq);
}

START_TEST(sign_ec_p256)
{
    sign_and_verify(&fx_ec, NULL, HSM_ALG_ECDSA_SHA256, HSM_ALG_ECDSA_SHA256);
}
END_TEST

START_TEST(sign_ec_p384)
{
    sign_and_verify(&fx_p384, NULL, HSM_ALG_ECDSA_SHA384, HSM_ALG_ECDSA_SHA384);
}
END_TEST

START_TEST(sign_rsa_pkcs1)
{
    sign_and_verify(&fx_rsa, NULL, HSM_ALG_RSA_PKCS1_SHA256, HSM_ALG_RSA_PKCS1_SHA256);
}
END_TEST

START_TEST(sign_rsa_pss)
{
    sign_and_verify(&fx_rsa, "[hsm]\nrsa_pss = yes\n", HSM_ALG_RSA_PSS_SHA256,
                    HSM_ALG_RSA_PSS_SHA256);
}
END_TEST

START_TEST(submit_rejects_bad_args)
{
    struct hsm_pool *p = pool_for(&fx_ec, NULL, NULL);
    struct hsm_cq *cq = hsm_cq_new();
    uint8_t dg[64] = {0};
    ck_assert_int_eq(hsm_sign_submit(p, cq, HSM_ALG_ECDSA_SHA256, dg, 31, 0, NULL), PX_E_INVAL);
    ck_assert_int_eq(hsm_sign_submit(p, cq, HSM_ALG_ECDSA_SHA256, dg, 33, 0, NULL), PX_E_INVAL);
    ck_assert_int_eq(hsm_sign_submit(p, cq, (enum hsm_alg)99, dg, 32, 0, NULL), PX_E_INVAL);
    ck_assert_int_eq(hsm_sign_submit(p, NULL, HSM_ALG_ECDSA_SHA256, dg, 32, 0, NULL), PX_E_INVAL);
    /* an EC key asked for an RSA signature: refused at submit, the signer never sees it */
    ck_assert_int_eq(hsm_sign_submit(p, cq, HSM_ALG_RSA_PKCS1_SHA256, dg, 32, 5000, (void *)1),
                     PX_E_INVAL);
    ck_assert_int_eq(hsm_sign_submit(p, cq, HSM_ALG_RSA_PSS_SHA256, dg, 32, 5000, (void *)1),
                     PX_E_INVAL);
    struct hsm_member_stats st;
    hsm_pool_member_stats(p, 0, &st);
    ck_assert_uint_eq(st.errors, 0);
    ck_assert_uint_eq(st.ops, 0);
    ck_assert_int_eq(st.state, HSM_MEMBER_UP);
    hsm_pool_free(p);
    hsm_cq_free(cq);
}
END_TEST

/* Found by fuzz_frame_signer: a request of the other key family reached SoftHSM, which crashed
 * in C_Sign (RSA-PSS with an EC key). The signer's signing call now refuses it first. */
START_TEST(sign_other_key_family_refused)
{
    char path[400], err[600];
    struct px_cfg *cfg = load_cfg(fx_conf_with(&fx_ec, "", path, sizeof(path)));
    ck_assert_int_eq(hsm_member_setenv(&cfg->members[0]), 0);
    struct hsm_direct *d = hsm_direct_open(&cfg->members[0], err, sizeof(err));
    ck_assert_msg(d != NULL, "hsm_direct_open: %s", err);
    uint8_t dg[32] = {1, 2, 3}, sig[HSM_SIG_MAX];
    unsigned long rv = 0;
    ck_assert_int_eq(hsm_direct_sign(d, HSM_ALG_RSA_PSS_SHA256, dg, 32, sig, &rv), PX_E_INVAL);
    ck_assert_int_eq(hsm_direct_sign(d, HSM_ALG_RSA_PKCS1_SHA256, dg, 32, sig, &rv), PX_E_INVAL);
    /* and the key of the right family still signs through the same session */
    ck_assert_int_gt(hsm_direct_sign(d, HSM_ALG_ECDSA_SHA256, dg, 32, sig, &rv), 0);
    hsm_direct_close(d);
}
END_TEST

/* ---- concurrency ------------------------------------------------------------------------ */

struct submitter {
    struct hsm_pool *pool;
    int base, count;
    struct tally t;
};

static void *submit_thread(void *arg)
{
    struct submitter *s = arg;
    struct hsm_cq *cq = hsm_cq_new();
    uint8_t dg[32];
    RAND_bytes(dg, sizeof(dg));
    int sent = 0;
    while (sent < s->count) {
        int r = hsm_sign_submit(s->pool, cq, HSM_ALG_ECDSA_SHA256, dg, 32, 10000,
                                (void *)(intptr_t)(s->base + sent));
        if (r == PX_E_FULL) {
            hsm_cq_drain(cq, on_done, &s->t);
            usleep(1000);
            continue;
        }
        ck_assert_int_eq(r, 0);
        sent++;
        if (sent % 64 == 0) {
            hsm_cq_drain(cq, on_done, &s->t);
        }
    }
    wait_done(cq, &s->t, s->count, 30000);
    hsm_cq_free(cq);
    return NULL;
}

START_TEST(many_threads_submit)
{
    struct hsm_pool *p = pool_for(&fx_ec, "[hsm]\nqueue_size = 256\n", NULL);
    static struct submitter subs[4];
    pthread_t th[4];
    memset(subs, 0, sizeof(subs));
    for (int i = 0; i < 4; i++) {
        subs[i].pool = p;
        subs[i].base = i * 1000;
        subs[i].count = 1000;
        ck_assert_int_eq(pthread_create(&th[i], NULL, submit_thread, &subs[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
    }
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(subs[i].t.done, 1000);
        ck_assert_int_eq(subs[i].t.status_ok, 1000);
        for (int j = 0; j < 1000; j++) {
            ck_assert_int_eq(subs[i].t.per_job[subs[i].base + j], 1);
        }
    }
    struct hsm_member_stats st;
    hsm_pool_member_stats(p, 0, &st);
    ck_assert_uint_eq(st.ops, 4000);
    ck_assert_uint_eq(st.inflight, 0);
    hsm_pool_free(p);
}
END_TEST

START_TEST(queue_full_is_immediate)
{
    struct hsm_pool *p = pool_for(&fx_ec, "[hsm]\nqueue_size = 8\nhang_timeout_ms = 60000\n", NULL);
    struct hsm_cq *cq = hsm_cq_new();
    pid_t pid = signer_pid(p);
    ck_assert_int_gt(pid, 0);
    ck_assert_int_eq(kill(pid, SIGSTOP), 0);
    uint8_t dg[32] = {1};
    for (int i = 0; i < 8; i++) {
        ck_assert_int_eq(hsm_sign_submit(p, cq, HSM_ALG_ECDSA_SHA256, dg, 32, 20000,
                                         (void *)(intptr_t)i), 0);
    }
    uint64_t t0 = px_now_ns();
    ck_assert_int_eq(hsm_sign_submit(p, cq, HSM_ALG_ECDSA_SHA256, dg, 32, 20000, (void *)8),
                     PX_E_FULL);
    ck_assert_uint_lt(px_now_ns() - t0, 50000000ull); /* immediate, not a wait */
    ck_assert_int_eq(kill(pid, SIGCONT), 0);
    static struct tally t;
    memset(&t, 0, sizeof(t));
    wait_done(cq, &t, 8, 10000);
    ck_assert_int_eq(t.status_ok, 8);
    /* room again */
    ck_assert_int_eq(hsm_sign_submit(p, cq, HSM_ALG_ECDSA_SHA256, dg, 32, 5000, (void *)9), 0);
    wait_done(cq, &t, 9, 5000);
    ck_assert_int_eq(t.status_ok, 9);
    hsm_pool_free(p);
    hsm_cq_free(cq);
}
END_TEST

START_TEST(hung_signer_deadline_then_respawn)
{
    struct hsm_pool *p = pool_for(&fx_ec, "[hsm]\nhang_timeout_ms = 600\n", NULL);
    struct hsm_cq *cq = hsm_cq_new();
    pid_t pid = signer_pid(p);
    ck_assert_int_eq(kill(pid, SIGSTOP), 0);
    uint8_t dg[32] = {2};
    static struct tally t;
    memset(&t, 0, sizeof(t));
    uint64_t t0 = px_now_ns();
    for (int i = 0; i < 10; i++) {
        ck_assert_int_eq(hsm_sign_submit(p, cq, HSM_ALG_ECDSA_SHA256, dg, 32, 150,
                                         (void *)(intptr_t)i), 0);
    }
    wait_done(cq, &t, 10, 5000);
    uint64_t took_ms = (px_now_ns() - t0) / 1000000ull;
    ck_assert_int_eq(t.status_timeout, 10);
    ck_assert_uint_ge(took_ms, 140);
    ck_assert_uint_lt(took_ms, 500); /* within the deadline plus scheduling slack */
    for (int i = 0; i < 10; i++) {
        ck_assert_int_eq(t.per_job[i], 1);
    }
    /* a member silent for a whole deadline is still up (it may only be slow), but its silence
     * counts as service time: the next lookup is refused at once as overload (the fail
     * policy's cue), not after another deadline */
    usleep(10000);
    if ((px_now_ns() - t0) / 1000000ull < 450) {
        ck_assert_int_eq(hsm_pool_members_up(p), 1);
        uint64_t t1 = px_now_ns();
        ck_assert_int_eq(hsm_sign_submit(p, cq, HSM_ALG_ECDSA_SHA256, dg, 32, 150, (void *)11),
                         PX_E_OVERLOAD);
        ck_assert_uint_lt(px_now_ns() - t1, 20000000ull);
        struct hsm_pool_stats ps;
        hsm_pool_stats(p, &ps);
        ck_assert_uint_eq(ps.refused_overload, 1);
    }
    /* the hang threshold passes: the stopped signer is killed and a new one starts */
    uint64_t end = px_now_ns() + 5000000000ull;
    while (px_now_ns() < end && (signer_pid(p) == pid || hsm_pool_members_up(p) == 0)) {
        usleep(20000);
    }
    pid_t npid = signer_pid(p);
    ck_assert_int_ne(npid, pid);
    ck_assert_int_gt(npid, 0);
    ck_assert_int_eq(hsm_pool_members_up(p), 1);
    struct hsm_member_stats st;
    hsm_pool_member_stats(p, 0, &st);
    ck_assert_uint_eq(st.kills, 1);
    ck_assert_uint_eq(st.respawns, 1);
    ck_assert_uint_eq(st.timeouts, 10);
    ck_assert_int_ne(kill(pid, 0), 0); /* the old one is really gone */
    ck_assert_int_eq(hsm_sign_submit(p, cq, HSM_ALG_ECDSA_SHA256, dg, 32, 5000, (void *)10), 0);
    wait_done(cq, &t, 11, 5000);
    ck_assert_int_eq(t.status_ok, 1);
    hsm_pool_free(p);
    hsm_cq_free(cq);
}
END_TEST

START_TEST(killed_signer_every_job_completes_once)
{
    struct hsm_pool *p = pool_for(&fx_ec, "[hsm]\nworkers = 2\nbatch = 16\n", NULL);
    struct hsm_cq *cq = hsm_cq_new();
    pid_t pid = signer_pid(p);
    uint8_t dg[32] = {3};
    static struct tally t;
    memset(&t, 0, sizeof(t));
    const int n = 3000;
    /* a deadline far past what 3000 signatures on 2 sessions take even on a loaded machine:
     * admission control refuses a job whose queue cannot finish by its deadline, and this test
     * is about the kill, not about admission (20 s was refused once at load 11 under ASan) */
    for (int i = 0; i < n; i++) {
        ck_assert_int_eq(hsm_sign_submit(p, cq, HSM_ALG_ECDSA_SHA256, dg, 32, 120000,
                                         (void *)(intptr_t)i), 0);
    }
    wait_done(cq, &t, 100, 10000);
    ck_assert_int_ge(t.done, 100);
    ck_assert_int_lt(t.done, n); /* killed mid-stream */
    ck_assert_int_eq(kill(pid, SIGKILL), 0);
    wait_done(cq, &t, n, 20000);
    ck_assert_int_eq(t.done, n);
    for (int i = 0; i < n; i++) {
        ck_assert_msg(t.per_job[i] == 1, "job %d completed %d times", i, t.per_job[i]);
    }
    ck_assert_int_eq(t.status_ok + t.status_gone + t.status_down, n);
    ck_assert_int_gt(t.status_gone + t.status_down, 0);
    ck_assert_int_eq(t.status_other, 0);
    wait_up(p, 5000);
    ck_assert_int_eq(hsm_pool_members_up(p), 1);
    ck_assert_int_ne(signer_pid(p), pid);
    struct hsm_member_stats st;
    hsm_pool_member_stats(p, 0, &st);
    ck_assert_uint_eq(st.gone, (uint64_t)t.status_gone);
    ck_assert_uint_eq(st.respawns, 1);
    ck_assert_int_eq(hsm_sign_submit(p, cq, HSM_ALG_ECDSA_SHA256, dg, 32, 5000, (void *)0), 0);
    int before_ok = t.status_ok;
    wait_done(cq, &t, n + 1, 5000);
    ck_assert_int_eq(t.status_ok, before_ok + 1);
    hsm_pool_free(p);
    hsm_cq_free(cq);
}
END_TEST

START_TEST(pool_free_completes_outstanding)
{
    struct hsm_pool *p = pool_for(&fx_ec, "[hsm]\nhang_timeout_ms = 60000\n", NULL);
    struct hsm_cq *cq = hsm_cq_new();
    kill(signer_pid(p), SIGSTOP);
    uint8_t dg[32] = {4};
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(hsm_sign_submit(p, cq, HSM_ALG_ECDSA_SHA256, dg, 32, 30000,
                                         (void *)(intptr_t)i), 0);
    }
    usleep(50000);
    hsm_pool_free(p); /* kills the stopped signer; jobs end with PX_E_SHUTDOWN */
    static struct tally t;
    memset(&t, 0, sizeof(t));
    wait_done(cq, &t, 5, 2000);
    ck_assert_int_eq(t.done, 5);
    ck_assert_int_eq(t.status_other, 5);
    hsm_cq_free(cq);
}
END_TEST

/* ---- HA group: a member that fails or dies loses no job while another one is up -------- */

/*
 * Two members on the same token: [hsm] SoftHSM directly, [hsm.b] SoftHSM behind the fault module
 * (tests/faultp11) driven by a control file, so member b can be made to fail on command.
 */
static struct hsm_pool *ha_pool(const char *ctl)
{
    const char *fault = getenv("FAULTP11_PATH");
    ck_assert_msg(fault != NULL, "FAULTP11_PATH is not set (meson sets it)");
    FILE *f = fopen(ctl, "w");
    ck_assert_ptr_nonnull(f);
    fclose(f);
    char extra[2048];
    snprintf(extra, sizeof(extra),
             "[hsm]\nworkers = 2\nhang_timeout_ms = 5000\n"
             "[hsm.b]\nmodule = %s\nenv = FAULTP11_MODULE=/usr/lib/softhsm/libsofthsm2.so\n"
             "env = FAULTP11_CONTROL=%s\nenv = SOFTHSM2_CONF=%s/state/hsm/softhsm2.conf\n"
             "token = tlsmint\npin_file = %s/state/hsm/pin\nkey_label = forward-trust\n",
             fault, ctl, fx_ec.dir, fx_ec.dir);
    /* both members open the same SoftHSM token at the same moment, which a real HA pair (two
     * HSMs) never does: SoftHSM then sometimes reports the token as not initialised to one of
     * them and the pool refuses to start (seen once in a make test run). Tries for 5 s: 5 tries
     * in 1 s all failed once on a loaded machine, right after the previous case's signers. */
    char path[400], err[600];
    struct hsm_pool *p = NULL;
    for (int i = 0; i < 25 && p == NULL; i++) {
        p = hsm_pool_new(load_cfg(fx_conf_with(&fx_ec, extra, path, sizeof(path))), fx_bin(), err,
                         sizeof(err));
        if (p == NULL) {
            usleep(200000);
        }
    }
    ck_assert_msg(p != NULL, "hsm_pool_new: %s", err);
    uint64_t end = px_now_ns() + 10000000000ull; /* a member whose first start failed returns */
    while (hsm_pool_members_up(p) < 2 && px_now_ns() < end) {
        usleep(20000);
    }
    ck_assert_int_eq(hsm_pool_members_up(p), 2);
    return p;
}

static void set_ctl(const char *ctl, const char *text)
{
    FILE *f = fopen(ctl, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

/* Submits n jobs (ids base..base+n-1) and waits for all; every one must be signed, once. */
static void ha_burst(struct hsm_pool *p, struct hsm_cq *cq, struct tally *t, int base, int n)
{
    uint8_t dg[32] = {5};
    int before = t->done;
    for (int i = 0; i < n; i++) {
        ck_assert_int_eq(hsm_sign_submit(p, cq, HSM_ALG_ECDSA_SHA256, dg, 32, 20000,
                                         (void *)(intptr_t)(base + i)), 0);
    }
    wait_done(cq, t, before + n, 30000);
    ck_assert_int_eq(t->done, before + n);
    for (int i = base; i < base + n; i++) {
        ck_assert_msg(t->per_job[i] == 1, "job %d completed %d times", i, t->per_job[i]);
    }
}

/* Member b answers every signature with CKR_DEVICE_ERROR: its jobs are signed by the other. */
START_TEST(ha_failing_member_loses_no_job)
{
    char ctl[400];
    snprintf(ctl, sizeof(ctl), "%s/ha-fail.ctl", fx_ec.dir);
    struct hsm_pool *p = ha_pool(ctl);
    struct hsm_cq *cq = hsm_cq_new();
    static struct tally t;
    memset(&t, 0, sizeof(t));
    ha_burst(p, cq, &t, 0, 200); /* both sign */
    struct hsm_member_stats a, b;
    hsm_pool_member_stats(p, 1, &b);
    ck_assert_uint_gt(b.ops, 0); /* b really takes work, so the next burst reaches it */
    uint64_t respawns0 = b.respawns;
    set_ctl(ctl, "fail=CKR_DEVICE_ERROR\n");
    ha_burst(p, cq, &t, 200, 400);
    ck_assert_int_eq(t.status_ok, 600);
    hsm_pool_member_stats(p, 0, &a);
    hsm_pool_member_stats(p, 1, &b);
    /* b failed: its error answers were read (errors), or its signer was found gone first (it
     * exits on the device error) and is being restarted or was; either way b's jobs were signed
     * by a. A restarted signer says hello and is up until its next job, which may come after
     * the burst (seen once on a loaded machine): up again only after a restart. */
    ck_assert(b.errors > 0 || b.respawns > respawns0 || b.state != HSM_MEMBER_UP);
    ck_assert(b.state != HSM_MEMBER_UP || b.respawns > respawns0);
    ck_assert_int_eq(a.state, HSM_MEMBER_UP);
    set_ctl(ctl, "");
    hsm_pool_free(p);
    hsm_cq_free(cq);
}
END_TEST

/* Member b's signer is killed with jobs in flight: every job is still signed, by a. */
START_TEST(ha_killed_member_loses_no_job)
{
    char ctl[400];
    snprintf(ctl, sizeof(ctl), "%s/ha-kill.ctl", fx_ec.dir);
    struct hsm_pool *p = ha_pool(ctl);
    struct hsm_cq *cq = hsm_cq_new();
    static struct tally t;
    memset(&t, 0, sizeof(t));
    struct hsm_member_stats b;
    hsm_pool_member_stats(p, 1, &b);
    pid_t pid = b.pid;
    ck_assert_int_gt(pid, 0);
    uint8_t dg[32] = {6};
    const int n = 2000;
    for (int i = 0; i < n; i++) {
        ck_assert_int_eq(hsm_sign_submit(p, cq, HSM_ALG_ECDSA_SHA256, dg, 32, 120000,
                                         (void *)(intptr_t)i), 0);
    }
    wait_done(cq, &t, 100, 10000);
    ck_assert_int_lt(t.done, n); /* killed mid-stream */
    ck_assert_int_eq(kill(pid, SIGKILL), 0);
    wait_done(cq, &t, n, 30000);
    ck_assert_int_eq(t.done, n);
    for (int i = 0; i < n; i++) {
        ck_assert_msg(t.per_job[i] == 1, "job %d completed %d times", i, t.per_job[i]);
    }
    ck_assert_int_eq(t.status_ok, n);
    hsm_pool_member_stats(p, 1, &b);
    ck_assert_uint_eq(b.gone, 0); /* none failed with it: all went to the survivor */
    ck_assert_uint_ge(b.respawns, 1);
    hsm_pool_free(p);
    hsm_cq_free(cq);
}
END_TEST

Suite *hsm_pool_suite(void)
{
    Suite *s = suite_create("hsm_pool");
    TCase *tc = tcase_create("pool");
    tcase_add_unchecked_fixture(tc, setup_tokens, teardown_tokens);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, sign_ec_p256);
    tcase_add_test(tc, sign_ec_p384);
    tcase_add_test(tc, sign_rsa_pkcs1);
    tcase_add_test(tc, sign_rsa_pss);
    tcase_add_test(tc, submit_rejects_bad_args);
    tcase_add_test(tc, sign_other_key_family_refused);
    tcase_add_test(tc, many_threads_submit);
    tcase_add_test(tc, queue_full_is_immediate);
    tcase_add_test(tc, hung_signer_deadline_then_respawn);
    tcase_add_test(tc, killed_signer_every_job_completes_once);
    tcase_add_test(tc, pool_free_completes_outstanding);
    tcase_add_test(tc, ha_failing_member_loses_no_job);
    tcase_add_test(tc, ha_killed_member_loses_no_job);
    suite_add_tcase(s, tc);
    return s;
}

/* ---- start-up errors -------------------------------------------------------------------- */

static void expect_pool_error(const char *extra, const char *needle)
{
    char path[400], err[600];
    struct px_cfg *cfg = load_cfg(fx_conf_with(&fx_ec, extra, path, sizeof(path)));
    struct hsm_pool *p = hsm_pool_new(cfg, fx_bin(), err, sizeof(err));
    ck_assert_msg(p == NULL, "pool started although: %s", extra);
    ck_assert_msg(strstr(err, needle) != NULL, "error '%s' lacks '%s'", err, needle);
    ck_assert_ptr_null(strchr(err, '\n')); /* one line */
}

static void write_pin(const char *path, const char *content, size_t len, mode_t mode)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fwrite(content, 1, len, f);
    fclose(f);
    chmod(path, mode);
}

START_TEST(err_wrong_pin)
{
    char pin[400];
    snprintf(pin, sizeof(pin), "%s/wrong-pin", fx_ec.dir);
    write_pin(pin, "0000000000000000\n", 17, 0600);
    char extra[512];
    snprintf(extra, sizeof(extra), "[hsm]\npin_file = %s\n", pin);
    expect_pool_error(extra, "wrong PIN");
}
END_TEST

START_TEST(err_missing_key)
{
    expect_pool_error("[hsm]\nkey_label = no-such-key\n",
                      "no private key labelled 'no-such-key' on token 'tlsmint'");
}
END_TEST

START_TEST(err_missing_token)
{
    expect_pool_error("[hsm]\ntoken = other\n", "no initialised token labelled 'other'");
}
END_TEST

START_TEST(err_missing_module)
{
    expect_pool_error("[hsm]\nmodule = /nonexistent/libpkcs11.so\n",
                      "cannot load PKCS#11 module /nonexistent/libpkcs11.so");
}
END_TEST

START_TEST(err_corrupt_pin_file)
{
    char pin[400], extra[512];
    snprintf(pin, sizeof(pin), "%s/corrupt-pin", fx_ec.dir);
    write_pin(pin, "\x01\x02\xff\xfe garbage", 12, 0600);
    snprintf(extra, sizeof(extra), "[hsm]\npin_file = %s\n", pin);
    expect_pool_error(extra, "non-printable");
}
END_TEST

START_TEST(err_pin_file_mode)
{
    char pin[400], extra[512];
    snprintf(pin, sizeof(pin), "%s/open-pin", fx_ec.dir);
    write_pin(pin, "1234\n", 5, 0644);
    snprintf(extra, sizeof(extra), "[hsm]\npin_file = %s\n", pin);
    expect_pool_error(extra, "accessible by group or others");
}
END_TEST

START_TEST(err_unknown_config_key_cli)
{
    char path[400], cmd[900], out[4096];
    fx_conf_with(&fx_ec, "[hsm]\nworkerz = 2\n", path, sizeof(path));
    snprintf(cmd, sizeof(cmd), "%s -c %s hsm-status", fx_bin(), path);
    int rc = fx_run(cmd, out, sizeof(out));
    ck_assert_int_eq(rc, 1);
    ck_assert_msg(strstr(out, "[hsm] workerz: unknown key") != NULL, "got: %s", out);
    ck_assert_msg(strstr(out, path) != NULL, "message lacks the file name: %s", out);
}
END_TEST

START_TEST(cli_hsm_status_and_no_pin_in_logs)
{
    char path[400], cmd[900], out[8192], pin[64];
    char extra[] = "[log]\nlevel = debug\n";
    fx_conf_with(&fx_ec, extra, path, sizeof(path));
    snprintf(cmd, sizeof(cmd), "%s -c %s hsm-status", fx_bin(), path);
    int rc = fx_run(cmd, out, sizeof(out));
    ck_assert_msg(rc == 0, "hsm-status failed: %s", out);
    ck_assert_ptr_nonnull(strstr(out, "label 'tlsmint', serial "));
    ck_assert_ptr_nonnull(strstr(out, "authenticated (user logged in)"));
    ck_assert_ptr_nonnull(strstr(out, "public key matches the forward-trust CA certificate"));
    ck_assert_ptr_nonnull(strstr(out, "test signature  ecdsa-with-SHA256"));
    char pinpath[400];
    snprintf(pinpath, sizeof(pinpath), "%s/state/hsm/pin", fx_ec.dir);
    FILE *f = fopen(pinpath, "r");
    ck_assert_ptr_nonnull(f);
    ck_assert_ptr_nonnull(fgets(pin, sizeof(pin), f));
    fclose(f);
    ck_assert_int_eq((int)strlen(pin), 16);
    ck_assert_msg(strstr(out, pin) == NULL, "the PIN appears in the output");
}
END_TEST

START_TEST(cli_init_refuses_existing_state)
{
    char cmd[600], out[4096];
    snprintf(cmd, sizeof(cmd), "%s init --dir %s/state", fx_bin(), fx_ec.dir);
    int rc = fx_run(cmd, out, sizeof(out));
    ck_assert_int_eq(rc, 1);
    ck_assert_ptr_nonnull(strstr(out, "refusing to overwrite existing state"));
    /* and the existing token still works */
    snprintf(cmd, sizeof(cmd), "%s -c %s hsm-status", fx_bin(), fx_ec.conf);
    ck_assert_int_eq(fx_run(cmd, out, sizeof(out)), 0);
}
END_TEST

START_TEST(cli_init_files_and_modes)
{
    char p[600];
    struct stat st;
    snprintf(p, sizeof(p), "%s/state/hsm/pin", fx_ec.dir);
    ck_assert_int_eq(stat(p, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0600);
    snprintf(p, sizeof(p), "%s/state/keys/forward-untrust.key.enc", fx_ec.dir);
    ck_assert_int_eq(stat(p, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0600);
    /* no private key in clear anywhere in the state directory, and the PIN only in its file */
    char cmd[900], out[8192];
    snprintf(cmd, sizeof(cmd),
             "grep -rlE 'PRIVATE KEY|BEGIN EC|BEGIN RSA' %s/state; "
             "grep -rlF \"$(cat %s/state/hsm/pin)\" %s/state | grep -v '/hsm/pin$'; true",
             fx_ec.dir, fx_ec.dir, fx_ec.dir);
    fx_run(cmd, out, sizeof(out));
    ck_assert_msg(out[0] == '\0', "secrets found in clear: %s", out);
    /* the CA is a CA, self-signed by the HSM key, and verifies */
    snprintf(p, sizeof(p), "%s/state/ca/forward-trust.pem", fx_ec.dir);
    FILE *f = fopen(p, "r");
    ck_assert_ptr_nonnull(f);
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    ck_assert_ptr_nonnull(x);
    ck_assert_int_eq(X509_check_ca(x), 1);
    ck_assert(X509_get_key_usage(x) & KU_KEY_CERT_SIGN);
    ck_assert_int_eq(X509_verify(x, X509_get0_pubkey(x)), 1);
    ck_assert_int_eq(X509_cmp_current_time(X509_get0_notBefore(x)), -1);
    ck_assert_int_eq(X509_cmp_current_time(X509_get0_notAfter(x)), 1);
    X509_free(x);
    /* the private key cannot be read out of the token: sensitive, never extractable */
    snprintf(cmd, sizeof(cmd),
             "SOFTHSM2_CONF=%s/state/hsm/softhsm2.conf pkcs11-tool --module "
             "/usr/lib/softhsm/libsofthsm2.so --token-label tlsmint --login --pin $(cat "
             "%s/state/hsm/pin) --list-objects --type privkey",
             fx_ec.dir, fx_ec.dir);
    int rc = fx_run(cmd, out, sizeof(out));
    ck_assert_msg(rc == 0, "pkcs11-tool: %s", out);
    ck_assert_msg(strstr(out, "label:      forward-trust") != NULL, "%s", out);
    ck_assert_msg(strstr(out, "sensitive") != NULL && strstr(out, "never extractable") != NULL,
                  "key attributes: %s", out);
}
END_TEST

Suite *hsm_errors_suite(void)
{
    Suite *s = suite_create("hsm_errors");
    TCase *tc = tcase_create("errors");
    tcase_add_unchecked_fixture(tc, setup_tokens, teardown_tokens);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, err_wrong_pin);
    tcase_add_test(tc, err_missing_key);
    tcase_add_test(tc, err_missing_token);
    tcase_add_test(tc, err_missing_module);
    tcase_add_test(tc, err_corrupt_pin_file);
    tcase_add_test(tc, err_pin_file_mode);
    tcase_add_test(tc, err_unknown_config_key_cli);
    tcase_add_test(tc, cli_hsm_status_and_no_pin_in_logs);
    tcase_add_test(tc, cli_init_refuses_existing_state);
    tcase_add_test(tc, cli_init_files_and_modes);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(hsm_pool_suite());
    srunner_add_suite(sr, hsm_errors_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
