/* SPDX-License-Identifier: MIT */
/*
 * cli_hsm.c - `tlsmint hsm-status` and `tlsmint run`.
 * hsm-status goes through the same path the proxy uses (signer processes, dispatcher, a
 * completion queue), so what it prints is what the proxy would see. run starts the signing pool
 * and, until the dataplane lands, serves nothing else.
 */
#include "cli.h"
#include "cli_admin.h"
#include "dp.h"

#include <pthread.h>

#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

static int parse_common(int argc, char **argv, const char *usage, const char **conf)
{
    static const struct option opts[] = {{"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    int c;
    optind = 1;
    *conf = "./var/tlsmint.conf";
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            *conf = optarg;
            break;
        case 'h':
            fputs(usage, stdout);
            return 0;
        default:
            fputs(usage, stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "tlsmint: unexpected argument '%s'\n%s", argv[optind], usage);
        return 2;
    }
    return -1;
}

struct one_result {
    int done;
    struct hsm_result res;
    uint8_t sig[HSM_SIG_MAX];
};

static void on_done(void *ctx, const struct hsm_result *r)
{
    struct one_result *o = ctx;
    o->done = 1;
    o->res = *r;
    if (r->sig_len) {
        memcpy(o->sig, r->sig, r->sig_len);
        o->res.sig = o->sig;
    }
}

/* Compares the token's public key with the configured CA certificate. */
static const char *ca_match(const struct px_cfg *cfg, const struct hsm_token_info *ti)
{
    if (cfg->ca_forward_trust_cert[0] == '\0') {
        return "no [ca] forward_trust_cert configured";
    }
    FILE *f = fopen(cfg->ca_forward_trust_cert, "r");
    if (f == NULL) {
        return "cannot open [ca] forward_trust_cert";
    }
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (x == NULL) {
        return "[ca] forward_trust_cert is not a PEM certificate";
    }
    const char *verdict = "public key matches the forward-trust CA certificate";
    if (ti->pub_len == 0) {
        verdict = "token shows no public key object: cannot compare with the CA certificate";
    } else {
        const unsigned char *p = ti->pub_der;
        EVP_PKEY *k = d2i_PUBKEY(NULL, &p, ti->pub_len);
        if (k == NULL || EVP_PKEY_eq(k, X509_get0_pubkey(x)) != 1) {
            verdict = "MISMATCH: the token's key is not the forward-trust CA's key";
        }
        EVP_PKEY_free(k);
    }
    X509_free(x);
    return verdict;
}

static const char status_usage[] =
    "usage: tlsmint [-c CONFIG] hsm-status\n"
    "\n"
    "Starts a signer for every HSM member in CONFIG (as the proxy would), and prints per member:\n"
    "token label and serial number, manufacturer and model, module, login state, key label and\n"
    "type, whether the key matches the forward-trust CA certificate, and one test signature's\n"
    "latency through the whole path. Exit status 0 when every member is up.\n";

int cli_hsm_status(int argc, char **argv)
{
    const char *conf;
    int r = parse_common(argc, argv, status_usage, &conf);
    if (r >= 0) {
        return r;
    }
    static struct px_cfg cfg;
    if (cli_load_config(conf, &cfg) != 0) {
        return 1;
    }
    char err[512];
    struct hsm_pool *pool = hsm_pool_new(&cfg, cli_self_exe(), err, sizeof(err));
    if (pool == NULL) {
        fprintf(stderr, "tlsmint hsm-status: %s\n", err);
        return 1;
    }
    struct hsm_cq *cq = hsm_cq_new();
    int all_up = 1;
    for (int i = 0; i < hsm_pool_members(pool); i++) {
        struct hsm_member_stats st;
        hsm_pool_member_stats(pool, i, &st);
        const struct hsm_token_info *ti = &st.token;
        printf("member %s: %s\n", st.name, hsm_member_state_name(st.state));
        printf("  module        %s%s%s%s\n", cfg.members[i].module, ti->module_desc[0] ? " (" : "",
               ti->module_desc, ti->module_desc[0] ? ")" : "");
        if (st.state != HSM_MEMBER_UP) {
            printf("  error         %s\n", st.last_error);
            all_up = 0;
            continue;
        }
        printf("  token         label '%s', serial %s\n", ti->label, ti->serial);
        printf("  device        %s / %s\n", ti->manufacturer, ti->model);
        printf("  state         %s\n", ti->logged_in ? "authenticated (user logged in)"
                                                        : "not authenticated");
        printf("  key           '%s', %s-%d\n", ti->key_label,
               ti->key_type == HSM_KEY_RSA ? "RSA" : "EC", ti->key_bits);
        if (i == 0) {
            printf("  CA            %s\n", ca_match(&cfg, ti));
        }
        if (cfg.hsm_workers == PX_HSM_WORKERS_AUTO) {
            printf("  signer        pid %d, %u workers now (auto, %d-%d), batch %d\n", st.pid,
                   st.workers, cfg.hsm_workers_min, cfg.hsm_workers_max, cfg.hsm_batch);
        } else {
            printf("  signer        pid %d, %d workers, batch %d\n", st.pid, cfg.hsm_workers,
                   cfg.hsm_batch);
        }
    }
    enum hsm_alg alg;
    if (cq != NULL && hsm_pool_alg(pool, &alg) == 0) {
        uint8_t dg[64];
        RAND_bytes(dg, sizeof(dg));
        struct one_result o = {0};
        uint64_t t0 = px_now_ns();
        int s = hsm_sign_submit(pool, cq, alg, dg, hsm_alg_digest_len(alg), 0, &o);
        while (s == 0 && !o.done) {
            struct pollfd pfd = {.fd = hsm_cq_fd(cq), .events = POLLIN};
            poll(&pfd, 1, 1000);
            hsm_cq_drain(cq, on_done, &o);
            if (px_now_ns() - t0 > 10000000000ull) {
                break;
            }
        }
        if (s == 0 && o.done && o.res.status == 0) {
            printf("test signature  %s, %zu bytes, %.2f ms through signer and dispatcher\n",
                   hsm_alg_name(alg), o.res.sig_len, (double)o.res.latency_ns / 1e6);
        } else {
            printf("test signature  FAILED: %s%s%s\n", px_strerror(s ? s : o.res.status),
                   o.res.ck_rv ? " " : "", o.res.ck_rv ? hsm_ckr_name(o.res.ck_rv) : "");
            all_up = 0;
        }
    }
    hsm_pool_free(pool);
    hsm_cq_free(cq);
    return all_up ? 0 : 1;
}

/* Everything a reload needs (the dataplane and the cache keep their own copies of a config). */
struct reloader {
    pthread_mutex_t lock;
    const char *path;
    const struct px_cfg *first;
    struct hsm_pool *pool;
    struct dp_server *dp;
    struct cc_ctx *cur_cc;  /* one reference: the cache new connections use */
    char cur_sig[2048];     /* what cur_cc was built from */
    const struct px_cfg *cur_cfg; /* the configuration loaded last, under lock */
    struct px_cfg *cur_own;       /* = cur_cfg after a reload (owned), NULL before */
};

/* [cache] snapshot: the current cache into its sealed file (admin timer, and after the drain). */
static int do_snapshot(void *ctx, char *msg, size_t len)
{
    struct reloader *r = ctx;
    char path[sizeof(r->cur_cfg->cache_snapshot)];
    pthread_mutex_lock(&r->lock);
    snprintf(path, sizeof(path), "%s", r->cur_cfg->cache_snapshot); /* a reload frees cur_cfg */
    struct cc_ctx *cc = r->cur_cc;
    cc_ref(cc);
    pthread_mutex_unlock(&r->lock);
    int n = path[0] ? cc_snapshot_save(cc, path, msg, len) : 0;
    cc_free(cc);
    if (n >= 0) {
        snprintf(msg, len, "cache snapshot %s: %d leaves written", path, n);
    }
    px_log(n >= 0 ? PX_LOG_INFO : PX_LOG_WARN, "main", "%s", msg);
    return n < 0 ? -1 : 0;
}

/*
 * What a certificate cache depends on: the [ca] and [cache] settings and the CA files as they
 * are on disk now (a `ca import` replaces a file in place). Equal signatures: keep the cache.
 */
static void cc_signature(const struct px_cfg *c, char *out, size_t cap)
{
    const char *files[] = {c->ca_forward_trust_cert, c->ca_forward_trust_chain,
                           c->ca_forward_untrust_cert, c->ca_forward_untrust_key};
    int n = snprintf(out, cap, "%d|%d|%d|%s|%s|%d|%d|", c->ca_leaf_max_days, c->cache_size,
                     c->cache_ttl_s, c->cache_shared, c->cache_shared_password_file,
                     c->cache_shared_timeout_ms, c->cache_shared_lock_ms);
    for (int i = 0; i < 4 && n > 0 && (size_t)n < cap; i++) {
        struct stat st;
        memset(&st, 0, sizeof(st));
        if (files[i][0] != '\0') {
            stat(files[i], &st);
        }
        n += snprintf(out + n, cap - (size_t)n, "%s:%lld:%lld.%09ld:%llu|", files[i],
                      (long long)st.st_size, (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec,
                      (unsigned long long)st.st_ino);
    }
}

static bool same_hsm(const struct px_cfg *a, const struct px_cfg *b)
{
    return a->n_members == b->n_members &&
           memcmp(a->members, b->members, sizeof(a->members[0]) * (size_t)a->n_members) == 0 &&
           a->hsm_workers == b->hsm_workers && a->hsm_workers_min == b->hsm_workers_min &&
           a->hsm_workers_max == b->hsm_workers_max && a->hsm_batch == b->hsm_batch &&
           a->hsm_sign_timeout_ms == b->hsm_sign_timeout_ms &&
           a->hsm_hang_timeout_ms == b->hsm_hang_timeout_ms &&
           a->hsm_queue_size == b->hsm_queue_size;
}

/* SIGHUP and `ctl reload`: new config, CA material and cache for new connections. */
static int do_reload(void *ctx, char *msg, size_t len)
{
    struct reloader *r = ctx;
    char err[600];
    int ret = -1;
    px_notify("RELOADING=1");
    pthread_mutex_lock(&r->lock);
    struct px_cfg *cfg = malloc(sizeof(*cfg));
    if (cfg == NULL || px_cfg_load(r->path, cfg, err, sizeof(err)) != 0) {
        snprintf(msg, len, "reload refused, still running the previous configuration: %s",
                 cfg ? err : "out of memory");
        goto out;
    }
    if (cli_cert_expiry_check(cfg, err, sizeof(err)) != 0) {
        snprintf(msg, len, "reload refused, still running the previous configuration: %s", err);
        goto out;
    }
    cli_cert_expiry_warn(cfg);
    char sig[sizeof(r->cur_sig)];
    cc_signature(cfg, sig, sizeof(sig));
    bool keep_cache = strcmp(sig, r->cur_sig) == 0;
    struct cc_ctx *cc = r->cur_cc;
    if (keep_cache) {
        cc_ref(cc); /* the new generation's reference */
    } else {
        cc = cli_cc_new(cfg, r->pool, err, sizeof(err)); /* the reloader's reference */
        if (cc == NULL) {
            snprintf(msg, len, "reload refused, still running the previous configuration: %s",
                     err);
            goto out;
        }
        cc_ref(cc);
    }
    if (dp_server_reload(r->dp, cfg, cc, err, sizeof(err)) != 0) {
        cc_free(cc);
        if (!keep_cache) {
            cc_free(cc);
        }
        snprintf(msg, len, "reload refused, still running the previous configuration: %s", err);
        goto out;
    }
    if (!keep_cache) {
        cc_free(r->cur_cc);
        r->cur_cc = cc;
        snprintf(r->cur_sig, sizeof(r->cur_sig), "%s", sig);
    }
    free(r->cur_own); /* the previous reload's: the dataplane and the cache keep copies */
    r->cur_own = cfg;
    r->cur_cfg = cfg;
    px_log_set_level(cfg->log_level);
    bool hsm_same = same_hsm(r->first, cfg);
    bool listen_same = strcmp(r->first->listen_explicit, cfg->listen_explicit) == 0 &&
                       strcmp(r->first->listen_transparent, cfg->listen_transparent) == 0 &&
                       r->first->threads == cfg->threads &&
                       r->first->listen_max_connections == cfg->listen_max_connections;
    snprintf(msg, len, "reloaded %s: %s; upstream, policy and log settings apply to new "
             "connections%s%s",
             r->path, keep_cache ? "CA material unchanged, leaf cache kept"
                                 : "new CA material and an empty leaf cache",
             hsm_same ? "" : "; [hsm] changes need a restart (ignored)",
             listen_same ? "" : "; [listen] changes need a restart (ignored)");
    cfg = NULL; /* r->cur_own now */
    ret = 0;
out:
    free(cfg);
    pthread_mutex_unlock(&r->lock);
    px_notify("READY=1"); /* done, applied or refused: the old configuration keeps running */
    px_log(ret == 0 ? PX_LOG_INFO : PX_LOG_ERROR, "main", "%s", msg);
    return ret;
}

/* Logs how close the master key is to the end of its lifetime. */
static void mk_reminder(const struct px_cfg *cfg)
{
    int left = cli_mk_days_left(cfg);
    if (left == INT_MIN) {
        return;
    }
    if (left < 0) {
        px_log(PX_LOG_ERROR, "main", "master key lifetime ended %d days ago: run "
               "'tlsmint master-key change'", -left);
    } else if (left <= cfg->mk_reminder_days) {
        px_log(PX_LOG_WARN, "main", "master key lifetime ends in %d days: plan "
               "'tlsmint master-key change'", left);
    }
}

/*
 * The signals `tlsmint run` acts on: SIGHUP reloads, SIGTERM and SIGINT drain and stop. They
 * are blocked before the first child or thread exists (every thread inherits the mask, children
 * get a clean one: px_spawnattr_init) and taken in one place, the main thread's sigwaitinfo.
 * A signal that arrives while the main thread is reloading stays pending instead of going to
 * another thread, whose default action would end the process: SIGHUPs during a reload coalesce
 * into one more reload, a SIGTERM during a reload is taken when the reload ends.
 */
static void run_sigset(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGHUP);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGTERM);
}

/*
 * Waits for the next signal of run_sigset; a pending SIGTERM or SIGINT wins over SIGHUP.
 * Meanwhile, once a second, the counts of rate-limited log lines are written (px_log_tick).
 */
static int run_next_signal(const sigset_t *set, siginfo_t *si)
{
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    const struct timespec now = {0, 0}, second = {1, 0};
    int sig = sigtimedwait(&stop, si, &now);
    while (sig < 0) {
        sig = sigtimedwait(set, si, &second);
        if (sig < 0 && errno == EAGAIN) {
            px_log_tick();
        }
    }
    return sig;
}

static const char run_usage[] =
    "usage: tlsmint [-c CONFIG] run\n"
    "\n"
    "Starts the proxy in the foreground: HSM signers, certificate cache, and one io_uring loop\n"
    "per [listen] threads serving the explicit (HTTP CONNECT) and transparent listeners.\n"
    "SIGTERM or SIGINT: stop accepting, let connections finish (up to 5 s), exit 0.\n"
    "SIGHUP: reload CONFIG (as 'tlsmint ctl reload'); SIGHUPs during a reload make one more.\n";

int cli_run(int argc, char **argv)
{
    const char *conf;
    int r = parse_common(argc, argv, run_usage, &conf);
    if (r >= 0) {
        return r;
    }
    static struct px_cfg cfg;
    if (cli_load_config(conf, &cfg) != 0) {
        return 1;
    }
    char err[512];
    int ret = 1;
    struct cc_ctx *cc = NULL;
    struct dp_server *dp = NULL;
    static struct reloader rl = {.lock = PTHREAD_MUTEX_INITIALIZER};
    sigset_t set;
    run_sigset(&set);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* before any child or thread: see run_sigset */
    mk_reminder(&cfg);
    if (cli_cert_expiry_check(&cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "tlsmint run: %s\n", err);
        return 1;
    }
    cli_cert_expiry_warn(&cfg);
    /* signers are spawned before any other thread exists */
    struct hsm_pool *pool = hsm_pool_new(&cfg, cli_self_exe(), err, sizeof(err));
    if (pool == NULL) {
        fprintf(stderr, "tlsmint run: %s\n", err);
        if (strstr(err, "CKR_PIN") != NULL) {
            cli_audit(&cfg, "hsm_login_failure", "\"command\":\"run\"");
        }
        return 1;
    }
    cli_audit(&cfg, "start", "\"members_up\":%d", hsm_pool_members_up(pool));
    /* the master key is unwrapped by the HSM in a child: this process never loads the module */
    cc = cli_cc_new(&cfg, pool, err, sizeof(err));
    if (cc == NULL) {
        fprintf(stderr, "tlsmint run: %s\n", err);
        goto out;
    }
    if (cfg.cache_snapshot[0]) {
        (void)cc_snapshot_load(cc, cfg.cache_snapshot); /* before any listener opens */
    }
    dp = dp_server_new(&cfg, pool, cc, err, sizeof(err));
    if (dp == NULL) {
        fprintf(stderr, "tlsmint run: %s\n", err);
        goto out;
    }
    if (cli_priv_drop(&cfg, err, sizeof(err)) != 0) { /* listeners bound, loops not started */
        fprintf(stderr, "tlsmint run: %s\n", err);
        goto out;
    }
    if (dp_server_start(dp) != 0) {
        fprintf(stderr, "tlsmint run: cannot start the event loops\n");
        dp_server_stop(dp, 0);
        goto out;
    }
    rl.path = conf;
    rl.first = &cfg;
    rl.cur_cfg = &cfg;
    rl.cur_cc = cc;
    cc_ref(cc);
    cc_signature(&cfg, rl.cur_sig, sizeof(rl.cur_sig));
    rl.pool = pool;
    rl.dp = dp;
    struct cli_admin admin = {.cfg = &cfg, .pool = pool, .dp = dp,
                              .reload = do_reload, .reload_ctx = &rl,
                              .snapshot = cfg.cache_snapshot[0] ? do_snapshot : NULL,
                              .snapshot_ctx = &rl};
    if (cli_admin_start(&admin, err, sizeof(err)) != 0) {
        fprintf(stderr, "tlsmint run: %s\n", err);
        dp_server_stop(dp, 0);
        goto out;
    }
    char ex[32] = "off", tr[32] = "off";
    if (cfg.listen_explicit[0]) {
        snprintf(ex, sizeof(ex), "port %d", dp_server_explicit_port(dp));
    }
    if (cfg.listen_transparent[0]) {
        snprintf(tr, sizeof(tr), "port %d", dp_server_transparent_port(dp));
    }
    px_log(PX_LOG_INFO, "main", "tlsmint running: explicit %s, transparent %s, %d/%d HSM members up, CA %s",
           ex, tr, hsm_pool_members_up(pool), hsm_pool_members(pool), cfg.ca_forward_trust_cert);
    cli_svc_running(pool, ex, tr);
    for (;;) {
        siginfo_t si;
        int sig = run_next_signal(&set, &si);
        if (sig == SIGHUP) {
            px_log(PX_LOG_INFO, "main", "SIGHUP (from pid %d): reloading", (int)si.si_pid);
            char msg[700];
            (void)do_reload(&rl, msg, sizeof(msg));
            continue;
        }
        px_log(PX_LOG_INFO, "main", "%s: draining connections (signal from pid %d)",
               sig == SIGTERM ? "SIGTERM" : "SIGINT", (int)si.si_pid);
        px_notify("STOPPING=1");
        break;
    }
    px_notify_watchdog_stop();
    cli_admin_stop(&admin);
    dp_server_stop(dp, 5000);
    if (cfg.cache_snapshot[0]) {
        char msg[600];
        (void)do_snapshot(&rl, msg, sizeof(msg)); /* the drained cache, for a warm start */
    }
    struct dp_stats ds;
    dp_server_stats(dp, &ds);
    px_log(PX_LOG_INFO, "main", "connections: %llu accepted, %llu handshakes ok, %llu failed, "
           "%llu bypassed, %llu refused (HSM), %llu upstream failures",
           (unsigned long long)ds.accepted, (unsigned long long)ds.handshakes_ok,
           (unsigned long long)ds.handshakes_failed, (unsigned long long)ds.bypassed,
           (unsigned long long)ds.refused_hsm, (unsigned long long)ds.upstream_failed);
    ret = 0;
out:
    dp_server_free(dp);
    cc_free(rl.cur_cc);
    cc_free(cc);
    free(rl.cur_own);
    for (int i = 0; pool != NULL && i < hsm_pool_members(pool); i++) {
        struct hsm_member_stats st;
        hsm_pool_member_stats(pool, i, &st);
        px_log(PX_LOG_INFO, "main", "member %s: %s, %llu signatures, %llu errors, %llu respawns",
               st.name, hsm_member_state_name(st.state), (unsigned long long)st.ops,
               (unsigned long long)st.errors, (unsigned long long)st.respawns);
    }
    hsm_pool_free(pool);
    px_log_flush(); /* counts of rate-limited lines and lost log lines not written yet */
    if (ret == 0) {
        px_log(PX_LOG_INFO, "main", "stopped");
    }
    return ret;
}
