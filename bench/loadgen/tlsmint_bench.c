/* SPDX-License-Identifier: MIT */
/*
 * tlsmint_bench.c - main of tlsmint-bench, the TLS load generator (see --help).
 * Owns the run: the shared client SSL_CTX, the workers, the report, the timeline file.
 * The main thread parses options, builds everything, starts the workers and then only
 * watches: every 100 ms it writes timeline rows and checks the clock and signals, every
 * second it prints progress and samples --pid memory; it decides when starts stop
 * (--duration, SIGINT), when the idle hold begins and ends, and when to abort.
 * Invariants: errors never end a run early; the first SIGINT/SIGTERM stops new connections
 * and lets the running ones finish (idle: ends the hold), a second one aborts them.
 * Not here: the connection state machine (lg_worker.c), output formats (lg_report.c).
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "lg.h"

static volatile sig_atomic_t signals_seen;

static void on_signal(int sig)
{
    (void)sig;
    signals_seen++;
}

static int bench_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int bench_fail(const char *fmt, ...)
{
    va_list ap;

    fputs("tlsmint-bench: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return 2;
}

/* The client context every connection shares: versions, trust, ALPN, no resumption. */
static SSL_CTX *bench_ctx_new(const struct lg_opts *o)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

    if (ctx == NULL) {
        bench_fail("SSL_CTX_new failed");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, o->tls_version != 0 ? o->tls_version : TLS1_2_VERSION);
    if (o->tls_version != 0) {
        SSL_CTX_set_max_proto_version(ctx, o->tls_version);
    }
    /* every handshake is a full one: no client session cache, no tickets offered */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_IGNORE_UNEXPECTED_EOF);
    /* the suites' order decides the server's cost where it follows the client (nginx) */
    if (SSL_CTX_set_ciphersuites(ctx, o->ciphersuites) != 1) {
        bench_fail("--ciphersuites: no usable TLS 1.3 suite in '%s'", o->ciphersuites);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (o->scenario == LG_SC_IDLE) {
        SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    }
    if (o->insecure) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        if (o->cafile != NULL) {
            if (SSL_CTX_load_verify_locations(ctx, o->cafile, NULL) != 1) {
                char e[160];

                ERR_error_string_n(ERR_get_error(), e, sizeof(e));
                bench_fail("--cafile: cannot load '%s': %s", o->cafile, e);
                SSL_CTX_free(ctx);
                return NULL;
            }
        } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
            bench_fail("cannot load the system trust store (use --cafile)");
            SSL_CTX_free(ctx);
            return NULL;
        }
    }
    if (!o->insecure) {
        /*
         * OpenSSL 3.0 fills each certificate's extension cache lazily, under a lock, on first
         * use, while other threads read it without one: fill it for every trust anchor here,
         * before the workers share them.
         */
        STACK_OF(X509_OBJECT) *objs = X509_STORE_get0_objects(SSL_CTX_get_cert_store(ctx));

        for (int i = 0; i < sk_X509_OBJECT_num(objs); i++) {
            X509 *x = X509_OBJECT_get0_X509(sk_X509_OBJECT_value(objs, i));

            if (x != NULL) {
                (void)X509_check_purpose(x, -1, 0);
            }
        }
    }
    if (o->alpn != NULL) {
        unsigned char wire[16];
        size_t n = strlen(o->alpn);

        wire[0] = (unsigned char)n;
        memcpy(wire + 1, o->alpn, n);
        if (SSL_CTX_set_alpn_protos(ctx, wire, (unsigned)(n + 1)) != 0) {
            bench_fail("cannot set ALPN");
            SSL_CTX_free(ctx);
            return NULL;
        }
    }
    ERR_clear_error();
    return ctx;
}

/* Raises the descriptor limit to its hard maximum; fails when the table still won't fit. */
static int bench_fd_limit(unsigned long need)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        return 0;
    }
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
        (void)getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY && need > rl.rlim_cur) {
        return bench_fail("needs %lu file descriptors, the limit is %llu (ulimit -n)", need,
                          (unsigned long long)rl.rlim_cur);
    }
    return 0;
}

static void sleep_until(uint64_t t_ns)
{
    struct timespec ts;

    ts.tv_sec = (time_t)(t_ns / 1000000000ull);
    ts.tv_nsec = (long)(t_ns % 1000000000ull);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
        if (signals_seen != 0) {
            break;
        }
    }
}

/* Sum of one counter over all workers (relaxed reads while they run). */
static uint64_t bench_sum(struct lg_run *run, size_t off)
{
    uint64_t v = 0;

    for (unsigned i = 0; i < run->nworkers; i++) {
        v += lg_load((const uint64_t *)((const char *)lg_worker_stats(run->workers[i]) + off));
    }
    return v;
}

static uint64_t bench_failed(struct lg_run *run)
{
    uint64_t v = 0;

    for (unsigned k = 0; k < LG_E_COUNT; k++) {
        v += bench_sum(run, offsetof(struct lg_stats, failed) + k * sizeof(uint64_t));
    }
    return v;
}

int main(int argc, char **argv)
{
    struct lg_opts o;
    struct lg_run run;
    struct lg_report *rep = NULL;
    FILE *tl = NULL;
    struct sigaction sa;
    unsigned total_slots;
    uint64_t tick;
    uint64_t end_ns;
    uint64_t stop_at = 0;
    uint64_t hold_end = 0;
    struct lg_idle_result idle = {0, 0, 0, 0};
    unsigned handled_signals = 0;
    unsigned ticks = 0;
    int rc;

    rc = lg_opts_parse(&o, argc, argv);
    if (rc != 0) {
        lg_opts_fini(&o);
        return rc > 0 ? 0 : 2;
    }
    memset(&run, 0, sizeof(run));
    run.opts = &o;
    run.limit = o.requests;
    run.nworkers = o.threads;
    total_slots = o.rate > 0.0 ? o.max_inflight : o.concurrency;
    if (total_slots < o.threads) {
        total_slots = o.threads;
    }
    for (unsigned i = 0; i < o.npids; i++) {
        char path[64];

        snprintf(path, sizeof(path), "/proc/%d/stat", o.pids[i]);
        if (access(path, R_OK) != 0) {
            lg_opts_fini(&o);
            return bench_fail("--pid %d: no such process (see --help)", o.pids[i]);
        }
    }
    if (bench_fd_limit((unsigned long)total_slots + 64) != 0) {
        lg_opts_fini(&o);
        return 2;
    }
    run.ctx = bench_ctx_new(&o);
    if (run.ctx == NULL) {
        lg_opts_fini(&o);
        return 2;
    }
    if (o.timeline_path != NULL) {
        tl = fopen(o.timeline_path, "w");
        if (tl == NULL) {
            rc = bench_fail("--timeline: cannot write '%s': %s", o.timeline_path, strerror(errno));
            goto out;
        }
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    run.workers = calloc(o.threads, sizeof(*run.workers));
    if (run.workers == NULL) {
        bench_fail("out of memory");
        rc = 1;
        goto out;
    }
    run.t0_ns = lg_now_ns();
    for (unsigned i = 0; i < o.threads; i++) {
        unsigned slots = total_slots / o.threads + (i < total_slots % o.threads ? 1 : 0);

        run.workers[i] = lg_worker_new(&run, i, slots, o.rate / o.threads);
        if (run.workers[i] == NULL) {
            bench_fail("out of memory for %u connection slots", slots);
            rc = 1;
            goto out;
        }
    }
    rep = lg_report_new(&run, tl);
    if (rep == NULL) {
        bench_fail("out of memory");
        rc = 1;
        goto out;
    }
    lg_report_pids_begin(rep);
    run.t0_ns = lg_now_ns();
    if (o.duration_s > 0.0) {
        stop_at = run.t0_ns + (uint64_t)(o.duration_s * 1e9);
    }
    for (unsigned i = 0; i < o.threads; i++) {
        if (lg_worker_start(run.workers[i]) != 0) {
            __atomic_store_n(&run.abort_all, 1, __ATOMIC_RELAXED);
            __atomic_store_n(&run.stop_starts, 1, __ATOMIC_RELAXED);
            run.nworkers = i;
            bench_fail("cannot start thread %u", i);
            rc = 1;
            goto out;
        }
    }

    tick = run.t0_ns;
    for (;;) {
        uint64_t now;

        tick += LG_TL_NS;
        sleep_until(tick);
        now = lg_now_ns();
        if (__atomic_load_n(&run.workers_done, __ATOMIC_ACQUIRE) == (int)run.nworkers) {
            break;
        }
        while (handled_signals < (unsigned)signals_seen) {
            handled_signals++;
            __atomic_store_n(&run.stop_starts, 1, __ATOMIC_RELAXED);
            if ((handled_signals >= 2 || o.scenario == LG_SC_IDLE) &&
                __atomic_load_n(&run.abort_all, __ATOMIC_RELAXED) == 0) {
                idle.end_ns = now;
                idle.end_held = bench_sum(&run, offsetof(struct lg_stats, held));
                __atomic_store_n(&run.abort_all, 1, __ATOMIC_RELAXED);
            }
        }
        if (stop_at != 0 && now >= stop_at) {
            __atomic_store_n(&run.stop_starts, 1, __ATOMIC_RELAXED);
        }
        if (o.scenario == LG_SC_IDLE && idle.up_ns == 0 &&
            bench_sum(&run, offsetof(struct lg_stats, ok)) + bench_failed(&run) >= o.concurrency) {
            idle.up_ns = now;
            idle.up_count = bench_sum(&run, offsetof(struct lg_stats, ok));
            hold_end = now + (uint64_t)(o.hold_s * 1e9);
            if (!o.quiet) {
                fprintf(stderr, "[%6.1fs] idle: %llu of %u connections up; holding %.1f s\n",
                        (double)(now - run.t0_ns) / 1e9, (unsigned long long)idle.up_count,
                        o.concurrency, o.hold_s);
            }
        }
        if (hold_end != 0 && now >= hold_end &&
            __atomic_load_n(&run.abort_all, __ATOMIC_RELAXED) == 0) {
            idle.end_ns = now;
            idle.end_held = bench_sum(&run, offsetof(struct lg_stats, held));
            if (o.npids > 0) {
                /* the memory the caller wants is the one with every connection still up */
                lg_report_pids_end(rep);
            }
            __atomic_store_n(&run.abort_all, 1, __ATOMIC_RELAXED);
        }
        lg_report_timeline_flush(rep, now, false);
        if (++ticks % 10 == 0) {
            lg_report_tick(rep, now);
        }
    }
    for (unsigned i = 0; i < run.nworkers; i++) {
        lg_worker_join(run.workers[i]);
    }
    /* the run ends with its last worker, not with the main thread's 100 ms tick */
    end_ns = run.t0_ns;
    for (unsigned i = 0; i < run.nworkers; i++) {
        uint64_t e = lg_worker_stats(run.workers[i])->end_ns;

        end_ns = e > end_ns ? e : end_ns;
    }
    if (o.scenario != LG_SC_IDLE || o.npids == 0 || hold_end == 0) {
        lg_report_pids_end(rep);
    }
    lg_report_timeline_flush(rep, end_ns, true);
    lg_report_final(rep, end_ns, &idle);
    rc = 0;
out:
    if (rc != 0) {
        __atomic_store_n(&run.abort_all, 1, __ATOMIC_RELAXED);
        for (unsigned i = 0; run.workers != NULL && i < run.nworkers; i++) {
            if (run.workers[i] != NULL) {
                lg_worker_join(run.workers[i]);
            }
        }
    }
    for (unsigned i = 0; run.workers != NULL && i < o.threads; i++) {
        lg_worker_free(run.workers[i]);
    }
    free(run.workers);
    lg_report_free(rep);
    if (tl != NULL) {
        fclose(tl);
    }
    SSL_CTX_free(run.ctx);
    lg_opts_fini(&o);
    return rc;
}
