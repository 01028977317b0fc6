/* SPDX-License-Identifier: MIT */
/*
 * hsm_bench.c - signatures/s through the whole hsm_offload path against a plain C_Sign loop on
 * the same token and the same number of sessions, in the same process.
 * Owns one parsed configuration (borrowed by every pool it creates), one idle root session,
 * the token's public key, and while a case runs either the plain sessions or one pool + cq,
 * never both: they would compete for the same cores.
 * Threads: the plain loop signs from one thread per session index; the pool is driven by one
 * submitting thread that owns the cq. Setup and teardown run on one thread.
 * Invariants: every signature that is checked is verified with OpenSSL against the public key
 * the token reports; any job that completes with a status other than 0 fails the benchmark.
 * Not here: timing and reporting (Google Benchmark, bench_shim.cc).
 */
#include "hsm_bench.h"

#include "hsm.h"
#include "px.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#define SUBMIT_TIMEOUT_MS 5000 /* per-job deadline: far above any queueing delay here */
#define WAIT_MS 10000          /* a round that sees no completion this long is a failure */

struct hsm_bench {
    struct px_cfg *cfg; /* borrowed by every pool made from it */
    char exe[PATH_MAX];
    char key_label[32];
    char device[200];
    int workers;
    enum hsm_alg alg;
    size_t dlen;
    uint8_t digest[64];
    struct hsm_direct *root; /* idle session kept open: closing the last one logs out */
    EVP_PKEY *pub;
};

/* One per plain-loop thread, on its own cache lines. */
struct plain_slot {
    struct hsm_direct *d;
    uint8_t sig[HSM_SIG_MAX];
} __attribute__((aligned(64)));

struct hsm_bench_plain {
    struct hsm_bench *b;
    int n;
    struct plain_slot *slots;
};

struct hsm_bench_pool {
    struct hsm_bench *b;
    struct hsm_pool *pool;
    struct hsm_cq *cq;
    uint32_t window;   /* jobs kept in flight */
    uint32_t inflight; /* submitted, not yet drained */
    /* written by the drain callback */
    int round_ok;
    uint64_t failed;
    int first_status;
    unsigned long first_rv;
    bool ignore_status; /* after hsm_pool_free: PX_E_SHUTDOWN is expected */
    bool want_sample;
    uint8_t sample[HSM_SIG_MAX];
    size_t sample_len;
};

/* ---- shared helpers --------------------------------------------------------------------- */

static int env_int(const char *name, int *out)
{
    const char *s = getenv(name);
    if (s == NULL || *s == '\0') {
        return PX_E_INVAL;
    }
    char *end;
    long v = strtol(s, &end, 10);
    if (*end != '\0' || v < 1 || v > 64) {
        return PX_E_INVAL;
    }
    *out = (int)v;
    return 0;
}

/* The signer sets these before loading the module; the root session needs the same. */
/* Verifies sig over b->digest with the token's public key, the way an X.509 verifier would. */
static int verify_sig(const struct hsm_bench *b, const uint8_t *sig, size_t len, char *err,
                      size_t errlen)
{
    int ret = PX_E_CRYPTO;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(b->pub, NULL);
    const EVP_MD *md = b->alg == HSM_ALG_ECDSA_SHA384 ? EVP_sha384() : EVP_sha256();
    if (ctx == NULL || EVP_PKEY_verify_init(ctx) != 1) {
        snprintf(err, errlen, "OpenSSL: cannot set up verification");
        goto out;
    }
    if (b->alg == HSM_ALG_RSA_PKCS1_SHA256 &&
        EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) != 1) {
        snprintf(err, errlen, "OpenSSL: cannot set PKCS#1 padding");
        goto out;
    }
    if (b->alg == HSM_ALG_RSA_PSS_SHA256 &&
        (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PSS_PADDING) != 1 ||
         EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha256()) != 1 ||
         EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, 32) != 1)) {
        snprintf(err, errlen, "OpenSSL: cannot set PSS parameters");
        goto out;
    }
    if (EVP_PKEY_CTX_set_signature_md(ctx, md) != 1) {
        snprintf(err, errlen, "OpenSSL: cannot set the signature digest");
        goto out;
    }
    if (EVP_PKEY_verify(ctx, sig, len, b->digest, b->dlen) != 1) {
        snprintf(err, errlen,
                 "%s signature (%zu bytes) does not verify against the token's "
                 "public key",
                 hsm_alg_name(b->alg), len);
        goto out;
    }
    ret = 0;
out:
    EVP_PKEY_CTX_free(ctx);
    return ret;
}

/* ---- the case ------------------------------------------------------------------------------ */

void bench_hsm_free(struct hsm_bench *b)
{
    if (b == NULL) {
        return;
    }
    hsm_direct_close(b->root);
    EVP_PKEY_free(b->pub);
    free(b->cfg);
    free(b);
}

struct hsm_bench *bench_hsm_new_from_env(char *err, size_t errlen)
{
    struct hsm_bench *b = NULL, *ret = NULL;
    const char *conf = getenv("HSM_BENCH_CONFIG");
    const char *key = getenv("HSM_BENCH_KEY");
    const char *exe = getenv("TLSMINT_BIN");
    if (conf == NULL || key == NULL || exe == NULL || *conf == '\0' || *key == '\0' ||
        *exe == '\0') {
        snprintf(err, errlen,
                 "set HSM_BENCH_CONFIG, HSM_BENCH_KEY, HSM_BENCH_WORKERS and "
                 "TLSMINT_BIN (bench/run-hsm-bench.sh does)");
        goto out;
    }
    b = calloc(1, sizeof(*b));
    if (b == NULL || (b->cfg = calloc(1, sizeof(*b->cfg))) == NULL) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    if (env_int("HSM_BENCH_WORKERS", &b->workers) != 0) {
        snprintf(err, errlen, "HSM_BENCH_WORKERS must be 1..64");
        goto out;
    }
    snprintf(b->key_label, sizeof(b->key_label), "%s", key);
    if (realpath(exe, b->exe) == NULL) {
        snprintf(err, errlen, "TLSMINT_BIN %s: %s", exe, strerror(errno));
        goto out;
    }
    if (px_cfg_load(conf, b->cfg, err, errlen) != 0) {
        goto out;
    }
    if (b->cfg->n_members < 1) {
        snprintf(err, errlen, "%s: no [hsm] section", conf);
        goto out;
    }
    if (b->cfg->hsm_workers != b->workers) {
        snprintf(err, errlen, "%s: [hsm] workers = %d, but HSM_BENCH_WORKERS = %d", conf,
                 b->cfg->hsm_workers, b->workers);
        goto out;
    }
    /* the pool logs every member start at info: noise between benchmark lines */
    px_log_set_level(PX_LOG_WARN);
    const struct px_hsm_member_cfg *m = &b->cfg->members[0];
    if (hsm_member_setenv(m) != 0) {
        snprintf(err, errlen, "[%s] env: cannot apply", m->name);
        goto out;
    }
    b->root = hsm_direct_open(m, err, errlen);
    if (b->root == NULL) {
        goto out;
    }
    const struct hsm_token_info *info = hsm_direct_info(b->root);
    /* the same choice hsm_pool makes from the signer's hello */
    if (info->key_type == HSM_KEY_RSA) {
        b->alg = b->cfg->rsa_pss ? HSM_ALG_RSA_PSS_SHA256 : HSM_ALG_RSA_PKCS1_SHA256;
    } else if (info->key_type == HSM_KEY_EC) {
        b->alg = info->key_bits == 384 ? HSM_ALG_ECDSA_SHA384 : HSM_ALG_ECDSA_SHA256;
    } else {
        snprintf(err, errlen, "token '%s': key '%s' is neither EC nor RSA", info->label,
                 info->key_label);
        goto out;
    }
    snprintf(b->device, sizeof(b->device), "%s %s (%s), %s-%d", info->manufacturer, info->model,
             info->module_desc, info->key_type == HSM_KEY_RSA ? "RSA" : "EC", info->key_bits);
    const unsigned char *p = info->pub_der;
    if (info->pub_len == 0 || (b->pub = d2i_PUBKEY(NULL, &p, info->pub_len)) == NULL) {
        snprintf(err, errlen, "token '%s': no usable public key for key '%s'", info->label,
                 info->key_label);
        goto out;
    }
    /* one fixed digest for every signature: the HSM's work does not depend on its value */
    static const char msg[] = "tlsmint hsm_bench fixed message";
    unsigned int dl = 0;
    const EVP_MD *md = b->alg == HSM_ALG_ECDSA_SHA384 ? EVP_sha384() : EVP_sha256();
    if (EVP_Digest(msg, sizeof(msg) - 1, b->digest, &dl, md, NULL) != 1 ||
        dl != hsm_alg_digest_len(b->alg)) {
        snprintf(err, errlen, "OpenSSL: digest failed");
        goto out;
    }
    b->dlen = dl;
    uint8_t sig[HSM_SIG_MAX];
    unsigned long rv = 0;
    int n = hsm_direct_sign(b->root, b->alg, b->digest, b->dlen, sig, &rv);
    if (n < 0) {
        snprintf(err, errlen, "root session: sign: %s (%s)", px_strerror(n), hsm_ckr_name(rv));
        goto out;
    }
    if (verify_sig(b, sig, (size_t)n, err, errlen) != 0) {
        goto out;
    }
    ret = b;
    b = NULL;
out:
    bench_hsm_free(b);
    return ret;
}

const char *bench_hsm_key_label(const struct hsm_bench *b)
{
    return b->key_label;
}

const char *bench_hsm_alg_name(const struct hsm_bench *b)
{
    return hsm_alg_name(b->alg);
}

int bench_hsm_workers(const struct hsm_bench *b)
{
    return b->workers;
}

const char *bench_hsm_device(const struct hsm_bench *b)
{
    return b->device;
}

/* ---- plain loop ------------------------------------------------------------------------- */

void bench_hsm_plain_free(struct hsm_bench_plain *p)
{
    if (p == NULL) {
        return;
    }
    for (int i = 0; p->slots != NULL && i < p->n; i++) {
        hsm_direct_close(p->slots[i].d);
    }
    free(p->slots);
    free(p);
}

struct hsm_bench_plain *bench_hsm_plain_new(struct hsm_bench *b, int nthreads, char *err,
                                            size_t errlen)
{
    struct hsm_bench_plain *p = NULL, *ret = NULL;
    if (nthreads < 1 || nthreads > 64) {
        snprintf(err, errlen, "plain loop: %d threads", nthreads);
        goto out;
    }
    p = calloc(1, sizeof(*p));
    if (p == NULL) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    p->b = b;
    p->n = nthreads;
    p->slots = aligned_alloc(64, (size_t)nthreads * sizeof(struct plain_slot));
    if (p->slots == NULL) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    memset(p->slots, 0, (size_t)nthreads * sizeof(struct plain_slot));
    for (int i = 0; i < nthreads; i++) {
        p->slots[i].d = hsm_direct_clone(b->root, err, errlen);
        if (p->slots[i].d == NULL) {
            goto out;
        }
        unsigned long rv = 0;
        int n = hsm_direct_sign(p->slots[i].d, b->alg, b->digest, b->dlen, p->slots[i].sig, &rv);
        if (n < 0) {
            snprintf(err, errlen, "plain session %d: sign: %s (%s)", i, px_strerror(n),
                     hsm_ckr_name(rv));
            goto out;
        }
        if (verify_sig(b, p->slots[i].sig, (size_t)n, err, errlen) != 0) {
            goto out;
        }
    }
    ret = p;
    p = NULL;
out:
    bench_hsm_plain_free(p);
    return ret;
}

int bench_hsm_plain_sign(struct hsm_bench_plain *p, int idx, char *err, size_t errlen)
{
    struct plain_slot *s = &p->slots[idx];
    unsigned long rv = 0;
    int n = hsm_direct_sign(s->d, p->b->alg, p->b->digest, p->b->dlen, s->sig, &rv);
    if (n < 0) {
        snprintf(err, errlen, "plain session %d: sign: %s (%s)", idx, px_strerror(n),
                 hsm_ckr_name(rv));
        return n;
    }
    return 0;
}

/* ---- through the pool ------------------------------------------------------------------- */

static void on_done(void *ctx, const struct hsm_result *res)
{
    struct hsm_bench_pool *p = ctx;
    if (res->status != 0) {
        if (!p->ignore_status && p->failed++ == 0) {
            p->first_status = res->status;
            p->first_rv = res->ck_rv;
        }
        return;
    }
    p->round_ok++;
    if (p->want_sample) {
        memcpy(p->sample, res->sig, res->sig_len);
        p->sample_len = res->sig_len;
        p->want_sample = false;
    }
}

/* Waits for the cq eventfd, drains it. Returns signatures that succeeded, or negative + err. */
static int wait_round(struct hsm_bench_pool *p, char *err, size_t errlen)
{
    struct pollfd pfd = {.fd = hsm_cq_fd(p->cq), .events = POLLIN};
    int r;
    do {
        r = poll(&pfd, 1, WAIT_MS);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        snprintf(err, errlen, "poll on the cq: %s", strerror(errno));
        return -errno;
    }
    if (r == 0) {
        snprintf(err, errlen, "no completion within %d ms (%u jobs in flight)", WAIT_MS,
                 p->inflight);
        return PX_E_TIMEOUT;
    }
    p->round_ok = 0;
    int n = hsm_cq_drain(p->cq, on_done, p);
    p->inflight -= (uint32_t)n;
    if (p->failed > 0) {
        snprintf(err, errlen, "%llu job(s) failed; first: %s%s%s", (unsigned long long)p->failed,
                 px_strerror(p->first_status), p->first_status == PX_E_HSM ? " " : "",
                 p->first_status == PX_E_HSM ? hsm_ckr_name(p->first_rv) : "");
        return p->first_status < 0 ? p->first_status : PX_E_HSM;
    }
    return p->round_ok;
}

/* Frees pool then cq, draining what the shutdown completed in between (see hsm.h). */
static void pool_teardown(struct hsm_bench_pool *p, char *err, size_t errlen, int *ret)
{
    hsm_pool_free(p->pool);
    p->pool = NULL;
    p->ignore_status = true;
    int n;
    while ((n = hsm_cq_drain(p->cq, on_done, p)) > 0) {
        p->inflight -= (uint32_t)n;
    }
    if (p->inflight != 0) {
        /* hsm_cq_free would abort on a non-empty queue: leak it instead and say so */
        if (*ret == 0) {
            snprintf(err, errlen, "%u jobs never completed after hsm_pool_free", p->inflight);
            *ret = PX_E_PROTO;
        }
        p->cq = NULL;
    }
    hsm_cq_free(p->cq);
    p->cq = NULL;
}

struct hsm_bench_pool *bench_hsm_pool_new(struct hsm_bench *b, char *err, size_t errlen)
{
    struct hsm_bench_pool *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    p->b = b;
    int ret = PX_E_INVAL;
    p->cq = hsm_cq_new();
    if (p->cq == NULL) {
        snprintf(err, errlen, "cannot create a completion queue");
        goto out;
    }
    p->pool = hsm_pool_new(b->cfg, b->exe, err, errlen);
    if (p->pool == NULL) {
        goto out;
    }
    enum hsm_alg alg = (enum hsm_alg)0;
    if (hsm_pool_alg(p->pool, &alg) != 0 || alg != b->alg) {
        snprintf(err, errlen, "pool signs with %s, the root session's key needs %s",
                 hsm_alg_name(alg), hsm_alg_name(b->alg));
        goto out;
    }
    /* 2x what the dispatcher lets each signer hold, so jobs also wait in the dispatcher */
    uint32_t w = (uint32_t)(4 * b->cfg->hsm_workers * b->cfg->hsm_batch);
    const char *ws = getenv("HSM_BENCH_WINDOW"); /* exploration: override, e.g. 512 */
    if (ws != NULL && atoi(ws) > 0) {
        w = (uint32_t)atoi(ws);
    }
    uint32_t q = (uint32_t)b->cfg->hsm_queue_size;
    p->window = w < q ? w : q;

    /* correctness first: one signature through the whole path, verified */
    p->want_sample = true;
    ret = hsm_sign_submit(p->pool, p->cq, b->alg, b->digest, b->dlen, SUBMIT_TIMEOUT_MS, p);
    if (ret != 0) {
        snprintf(err, errlen, "first submit: %s", px_strerror(ret));
        goto out;
    }
    p->inflight = 1;
    while (p->inflight > 0) {
        ret = wait_round(p, err, errlen);
        if (ret < 0) {
            goto out;
        }
    }
    if (p->sample_len == 0) {
        snprintf(err, errlen, "first job: no signature came back");
        ret = PX_E_PROTO;
        goto out;
    }
    ret = verify_sig(b, p->sample, p->sample_len, err, errlen);
    if (ret != 0) {
        goto out;
    }
    /*
     * Fill the window and let it turn over once, so the timed loop starts in steady state:
     * otherwise the first batch's signing time counts against the pool and not the plain loop.
     */
    uint32_t warm = 0;
    while (warm < p->window) {
        ret = bench_hsm_pool_step(p, err, errlen);
        if (ret < 0) {
            goto out;
        }
        warm += (uint32_t)ret;
    }
    p->sample_len = 0;
    p->want_sample = true; /* the first signature of the timed run is checked in finish */
    ret = 0;
out:
    if (ret != 0) {
        if (p->pool != NULL) {
            pool_teardown(p, err, errlen, &ret); /* keeps err: ret is already set */
        } else {
            hsm_cq_free(p->cq);
        }
        free(p);
        return NULL;
    }
    return p;
}

int bench_hsm_pool_step(struct hsm_bench_pool *p, char *err, size_t errlen)
{
    const struct hsm_bench *b = p->b;
    while (p->inflight < p->window) {
        int r = hsm_sign_submit(p->pool, p->cq, b->alg, b->digest, b->dlen, SUBMIT_TIMEOUT_MS, p);
        if (r == PX_E_FULL && p->inflight > 0) {
            break; /* shared queue full: what is in flight refills it */
        }
        if (r != 0) {
            snprintf(err, errlen, "submit: %s (%u in flight)", px_strerror(r), p->inflight);
            return r;
        }
        p->inflight++;
    }
    return wait_round(p, err, errlen);
}

int bench_hsm_pool_finish(struct hsm_bench_pool *p, char *err, size_t errlen)
{
    int ret = 0;
    while (ret >= 0 && p->inflight > 0) {
        ret = wait_round(p, err, errlen);
    }
    if (ret > 0) {
        ret = 0;
    }
    if (ret == 0 && p->sample_len > 0) {
        ret = verify_sig(p->b, p->sample, p->sample_len, err, errlen);
    }
    pool_teardown(p, err, errlen, &ret);
    free(p);
    return ret;
}

uint32_t bench_hsm_pool_window(const struct hsm_bench_pool *p)
{
    return p->window;
}

/* ---- CPU accounting --------------------------------------------------------------------- */

static uint64_t self_cpu_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0) {
        return 0;
    }
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/*
 * Run time of every thread of pid, from /proc/PID/task/TID/schedstat (ns, first field); the
 * main thread's share (a signer's frame reader) also goes to *main_ns.
 */
static uint64_t other_cpu_ns(int pid, uint64_t *main_ns)
{
    char path[64];
    uint64_t total = 0;
    snprintf(path, sizeof(path), "/proc/%d/task", pid);
    DIR *d = opendir(path);
    if (d == NULL) {
        return 0;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') {
            continue;
        }
        char f[128];
        snprintf(f, sizeof(f), "/proc/%d/task/%s/schedstat", pid, e->d_name);
        FILE *fp = fopen(f, "r");
        if (fp == NULL) {
            continue;
        }
        unsigned long long run = 0;
        if (fscanf(fp, "%llu", &run) == 1) {
            total += run;
            if (atoi(e->d_name) == pid) {
                *main_ns += run;
            }
        }
        fclose(fp);
    }
    closedir(d);
    return total;
}

uint64_t bench_hsm_plain_cpu_ns(const struct hsm_bench_plain *p)
{
    (void)p;
    return self_cpu_ns();
}

uint64_t bench_hsm_pool_cpu_ns(struct hsm_bench_pool *p, uint64_t *outside_workers_ns)
{
    uint64_t self = self_cpu_ns(), total = self, outside = self;
    for (int i = 0; i < hsm_pool_members(p->pool); i++) {
        struct hsm_member_stats ms;
        hsm_pool_member_stats(p->pool, i, &ms);
        if (ms.pid > 0) {
            total += other_cpu_ns(ms.pid, &outside);
        }
    }
    if (outside_workers_ns != NULL) {
        *outside_workers_ns = outside;
    }
    return total;
}
