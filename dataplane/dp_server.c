/* SPDX-License-Identifier: MIT */
/*
 * dp_server.c - the dataplane as a whole: listeners, loop threads, reload generations,
 * start, stop and drain, counters.
 * Owns the listening sockets (one per loop and mode, SO_REUSEPORT), the loops, the resolver
 * and log threads, and struct dp_gen: what a reload replaces (configuration, certificate cache,
 * TLS contexts, policy counters), refcounted so that a connection keeps the generation it was
 * accepted in.
 * Threads: dp_server_* run on the main or admin thread; dp_gen_switch runs on a loop thread
 * between two batches of completions. s->gen is read and replaced under gen_lock only.
 * Invariants: the server holds one reference of its current generation, each loop one of the
 * generation it gives new connections (and of the previous one until its mints are done),
 * each connection one of its own.
 * Not here: what a loop does (dp_loop.c), a connection (dp_conn.c), the TLS settings (dp_tls.c).
 */
#include "dp_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

void dp_gen_ref(struct dp_gen *g)
{
    atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed);
}

void dp_gen_unref(struct dp_gen *g)
{
    if (g != NULL && atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) == 1) {
        SSL_CTX_free(g->sctx);
        SSL_CTX_free(g->uctx);
        cc_free(g->cc); /* its reference */
        dp_policy_unload(g);
        free(g);
    }
}

/*
 * Takes the server's current generation for new connections. The previous cache handle is
 * kept (and polled) until the mints it started are done; at most one previous one is kept, an
 * older one still busy is finished by polling here.
 */
void dp_gen_switch(struct dp_loop *l)
{
    struct dp_server *srv = l->srv;
    pthread_mutex_lock(&srv->gen_lock);
    struct dp_gen *g = srv->gen;
    dp_gen_ref(g);
    pthread_mutex_unlock(&srv->gen_lock);
    struct cc_loop *nccl = cc_loop_new(g->cc);
    if (nccl == NULL) {
        dp_gen_unref(g);
        return; /* keep the old one; try again next iteration */
    }
    while (l->old_ccl != NULL && cc_loop_pending(l->old_ccl) > 0) {
        cc_loop_poll(l->old_ccl);
        usleep(1000); /* only when two reloads come within one mint's deadline */
    }
    if (l->old_ccl != NULL) {
        (void)cc_loop_free(l->old_ccl);
        dp_gen_unref(l->old_g);
    }
    l->old_ccl = l->ccl;
    l->old_g = l->g;
    uint64_t one = 1; /* completes the read armed on the old handle's eventfd */
    ssize_t w = write(cc_loop_fd(l->old_ccl), &one, sizeof(one));
    (void)w;
    l->ccl = nccl;
    l->g = g;
    l->cc_epoch++;
    dp_loop_arm_events(l, 0);
}

static int listen_on(const char *hostport, bool transparent, int *bound_port, char *err,
                     size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t len;
    int port;
    if (dp_addr_parse(hostport, &ss, &len, &port) != 0) {
        snprintf(err, errlen, "[listen] '%s' is not IP:PORT", hostport);
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (transparent &&
        setsockopt(fd, ss.ss_family == AF_INET6 ? SOL_IPV6 : SOL_IP,
                   ss.ss_family == AF_INET6 ? IPV6_TRANSPARENT : IP_TRANSPARENT, &one,
                   sizeof(one)) != 0) {
        snprintf(err, errlen, "[listen] tproxy: IP_TRANSPARENT on %s: %s (needs CAP_NET_ADMIN)",
                 hostport, strerror(errno));
        close(fd);
        return -1;
    }
    if (bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, 1024) != 0) {
        snprintf(err, errlen, "[listen] cannot listen on %s: %s", hostport, strerror(errno));
        close(fd);
        return -1;
    }
    struct sockaddr_storage b;
    socklen_t bl = sizeof(b);
    getsockname(fd, (struct sockaddr *)&b, &bl);
    *bound_port = ntohs(b.ss_family == AF_INET ? ((struct sockaddr_in *)&b)->sin_port
                                               : ((struct sockaddr_in6 *)&b)->sin6_port);
    return fd;
}

/*
 * How many client connections the server holds: [listen] max_connections, or as many as the
 * descriptor limit allows (two each: client and upstream, DP_FD_RESERVE kept for the rest).
 * Raises RLIMIT_NOFILE to its hard limit first, and says what it got.
 */
static int conn_limit(const struct px_cfg *cfg, int nloops)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        rl.rlim_cur = rl.rlim_max = 1024;
    }
    if (rl.rlim_cur < rl.rlim_max) {
        struct rlimit want = {.rlim_cur = rl.rlim_max, .rlim_max = rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &want) == 0) {
            rl = want;
        } else {
            px_log(PX_LOG_WARN, "dp", "cannot raise RLIMIT_NOFILE to %llu: %s",
                   (unsigned long long)rl.rlim_max, strerror(errno));
        }
    }
    uint64_t fds = rl.rlim_cur == RLIM_INFINITY ? 1u << 30 : (uint64_t)rl.rlim_cur;
    uint64_t reserve = DP_FD_RESERVE + 8u * (uint64_t)nloops;
    uint64_t by_fds = fds > reserve + 2 ? (fds - reserve) / 2 : 1;
    if (by_fds > 10000000) {
        by_fds = 10000000;
    }
    int max = cfg->listen_max_connections > 0 ? cfg->listen_max_connections : (int)by_fds;
    if ((uint64_t)max > by_fds) {
        px_log(PX_LOG_WARN, "dp", "[listen] max_connections %d: RLIMIT_NOFILE %llu allows %llu "
               "(two descriptors each); accepts fail with EMFILE past that", max,
               (unsigned long long)fds, (unsigned long long)by_fds);
    }
    px_log(PX_LOG_INFO, "dp", "connections: up to %d at once (%s; RLIMIT_NOFILE %llu)", max,
           cfg->listen_max_connections > 0 ? "[listen] max_connections" : "two descriptors each",
           (unsigned long long)fds);
    return max;
}

/* A generation for cfg and cc: TLS contexts with the trust store loaded once, the policy's
 * state. */
static struct dp_gen *gen_new(const struct px_cfg *cfg, struct cc_ctx *cc, char *err, size_t errlen)
{
    struct dp_gen *g = calloc(1, sizeof(*g));
    if (g == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    atomic_init(&g->refs, 1);
    g->own_cfg = *cfg;
    g->cfg = &g->own_cfg;
    g->cc = cc;
    if (dp_tls_ctx_init(g, cfg, err, errlen) != 0) {
        g->cc = NULL; /* still the caller's */
        dp_gen_unref(g);
        return NULL;
    }
    if (dp_policy_load(g, cfg, err, errlen) != 0) {
        g->cc = NULL;
        dp_gen_unref(g);
        return NULL;
    }
    return g;
}

int dp_server_reload(struct dp_server *s, const struct px_cfg *cfg, struct cc_ctx *cc, char *err,
                     size_t errlen)
{
    struct dp_gen *g = gen_new(cfg, cc, err, errlen);
    if (g == NULL) {
        return PX_E_CONFIG; /* cc is still the caller's */
    }
    pthread_mutex_lock(&s->gen_lock);
    struct dp_gen *old = s->gen;
    g->id = old->id + 1;
    s->gen = g;
    atomic_store(&s->gen_id, g->id);
    pthread_mutex_unlock(&s->gen_lock);
    dp_gen_unref(old); /* loops and connections still holding it keep it alive */
    px_log(PX_LOG_INFO, "dp", "reload: generation %u in use for new connections", g->id);
    return 0;
}

struct dp_server *dp_server_new(const struct px_cfg *cfg, struct hsm_pool *pool, struct cc_ctx *cc,
                                char *err, size_t errlen)
{
    struct dp_server *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->cfg = cfg;
    s->pool = pool;
    pthread_mutex_init(&s->start_lock, NULL);
    pthread_cond_init(&s->start_cond, NULL);
    pthread_mutex_init(&s->gen_lock, NULL);
    s->res = dp_resolver_new(cfg, err, errlen);
    s->excl = dp_excl_new((uint32_t)cfg->excl_size);
    s->proofs = dp_excl_new(4096);
    s->ocsp = dp_ocsp_cache_new();
    s->alog = dp_alog_new(cfg->log_access, 0640, PX_SINK_ACCESS, err, errlen);
    if (s->alog != NULL && cfg->log_keylog[0]) {
        /* debugging only: these lines decrypt captured traffic, so the file is 0600 */
        s->keylog = dp_alog_new(cfg->log_keylog, 0600, PX_SINK_KEYLOG, err, errlen);
        if (s->keylog == NULL) {
            dp_server_free(s);
            return NULL;
        }
        dp_tls_keylog_set(s->keylog);
        px_log(PX_LOG_WARN, "dp", "SSLKEYLOGFILE output to %s: session secrets of both sides "
               "are being written", cfg->log_keylog);
    }
    if (s->alog != NULL && dp_export_new(cfg, &s->exp, err, errlen) != 0) {
        dp_server_free(s);
        return NULL;
    }
    if (s->res == NULL || s->alog == NULL || s->excl == NULL || s->proofs == NULL ||
        s->ocsp == NULL) {
        if (s->res != NULL && s->alog != NULL) {
            snprintf(err, errlen, "out of memory (exclusion cache)");
        }
        dp_server_free(s);
        return NULL;
    }
    cc_ref(cc); /* the first generation's reference; the caller keeps its own */
    s->gen = gen_new(cfg, cc, err, errlen);
    if (s->gen == NULL) {
        cc_free(cc);
        dp_server_free(s);
        return NULL;
    }
    int n = cfg->threads > 0 ? cfg->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) {
        n = 1;
    }
    s->loops = calloc((size_t)n, sizeof(*s->loops));
    if (s->loops == NULL) {
        snprintf(err, errlen, "out of memory");
        dp_server_free(s);
        return NULL;
    }
    s->nloops = n;
    s->max_conns = conn_limit(cfg, n);
    for (int i = 0; i < n; i++) {
        struct dp_loop *l = &s->loops[i];
        l->idx = i;
        l->srv = s;
        l->lfd[0] = l->lfd[1] = -1;
        l->res_done.evfd = -1;
    }
    for (int i = 0; i < n; i++) {
        struct dp_loop *l = &s->loops[i];
        if (cfg->listen_explicit[0]) {
            l->lfd[0] = listen_on(cfg->listen_explicit, false, &s->port_explicit, err, errlen);
            if (l->lfd[0] < 0) {
                dp_server_free(s);
                return NULL;
            }
        }
        if (cfg->listen_transparent[0]) {
            l->lfd[1] = listen_on(cfg->listen_transparent, cfg->listen_tproxy,
                                  &s->port_transparent, err, errlen);
            if (l->lfd[1] < 0) {
                dp_server_free(s);
                return NULL;
            }
        }
        if (dp_loop_init(l, s->gen, cc, s->max_conns) != 0) {
            snprintf(err, errlen, "out of memory");
            dp_server_free(s);
            return NULL;
        }
    }
    if (dp_inbound_new(s, err, errlen) != 0) {
        dp_server_free(s);
        return NULL;
    }
    return s;
}

int dp_server_start(struct dp_server *s)
{
    PX_TRY(dp_export_start(s->exp)); /* after the switch to [run] user: its files are that user's */
    int created = 0;
    for (int i = 0; i < s->nloops; i++) {
        if (pthread_create(&s->loops[i].th, NULL, dp_loop_main, &s->loops[i]) != 0) {
            break;
        }
        created++;
    }
    pthread_mutex_lock(&s->start_lock);
    while (s->started < created) {
        pthread_cond_wait(&s->start_cond, &s->start_lock);
    }
    pthread_mutex_unlock(&s->start_lock);
    int err = created < s->nloops ? -EAGAIN : 0;
    for (int i = 0; i < created; i++) {
        if (!s->loops[i].ring_ok) {
            px_log(PX_LOG_ERROR, "dp", "loop %d: io_uring_queue_init: %s", i,
                   strerror(-s->loops[i].start_err));
            err = s->loops[i].start_err;
        }
    }
    return err;
}

void dp_server_stop(struct dp_server *s, int drain_ms)
{
    atomic_store(&s->drain_ms, drain_ms);
    atomic_store(&s->stop, true);
    for (int i = 0; i < s->nloops; i++) {
        if (s->loops[i].th) {
            pthread_join(s->loops[i].th, NULL);
            s->loops[i].th = 0;
        }
    }
}

void dp_server_free(struct dp_server *s)
{
    if (s == NULL) {
        return;
    }
    /* first: no lookup may be handed back to a loop after its done list is drained below */
    dp_resolver_free(s->res);
    s->res = NULL;
    for (int i = 0; i < s->nloops; i++) {
        struct dp_loop *l = &s->loops[i];
        for (int w = 0; w < 2; w++) {
            if (l->lfd[w] >= 0) {
                close(l->lfd[w]);
            }
        }
        dp_loop_fini(l);
    }
    dp_inbound_free(s); /* after the loops: their last connections are inbound ones too */
    dp_export_free(s->exp); /* after the loops: closing connections still reports their end */
    dp_excl_free(s->excl);
    dp_excl_free(s->proofs);
    dp_ocsp_cache_free(s->ocsp);
    dp_alog_free(s->alog);
    if (s->keylog != NULL) {
        dp_tls_keylog_set(NULL);
        dp_alog_free(s->keylog);
    }
    free(s->loops);
    dp_gen_unref(s->gen);
    free(s);
}

void dp_server_stats(struct dp_server *s, struct dp_stats *o)
{
    memset(o, 0, sizeof(*o));
    for (int i = 0; i < s->nloops; i++) {
        struct dp_counters *c = &s->loops[i].ctr;
        o->accepted += atomic_load(&c->accepted);
        o->active += atomic_load(&c->active);
        o->closed += atomic_load(&c->closed);
        o->handshakes_ok += atomic_load(&c->handshakes_ok);
        o->handshakes_failed += atomic_load(&c->handshakes_failed);
        o->bypassed += atomic_load(&c->bypassed);
        o->refused_hsm += atomic_load(&c->refused_hsm);
        o->upstream_failed += atomic_load(&c->upstream_failed);
        o->bad_request += atomic_load(&c->bad_request);
        o->cache_hit += atomic_load(&c->cache_hit);
        o->cache_miss += atomic_load(&c->cache_miss);
        o->bytes_c2u += atomic_load(&c->bytes_c2u);
        o->upstream_resumed += atomic_load(&c->up_resumed);
        o->upstream_full += atomic_load(&c->up_full);
        o->fail_open += atomic_load(&c->fail_open);
        o->refused_limit += atomic_load(&c->refused_limit);
        o->bytes_u2c += atomic_load(&c->bytes_u2c);
        for (int k = 0; k < DP_OUTCOMES; k++) {
            o->outcome[k] += atomic_load(&c->outcome[k]);
        }
        for (int r = 0; r < 2; r++) {
            for (int a = 0; a < 2; a++) {
                o->non_tls[r][a] += atomic_load(&c->non_tls[r][a]);
            }
            o->proofs[r] += atomic_load(&c->proofs[r]);
            o->unproven[r] += atomic_load(&c->unproven[r]);
            o->unsupported[r] += atomic_load(&c->unsupported[r]);
        }
        for (int r = 0; r < DP_OCSP_RESULTS; r++) {
            o->ocsp[r] += atomic_load(&c->ocsp[r]);
        }
    }
}

void dp_server_dns_stats(struct dp_server *s, struct dp_dns_stats *out)
{
    dp_resolver_stats(s->res, out);
}

void dp_server_cache_stats(struct dp_server *s, struct cc_stats *out)
{
    pthread_mutex_lock(&s->gen_lock);
    struct dp_gen *g = s->gen;
    dp_gen_ref(g);
    pthread_mutex_unlock(&s->gen_lock);
    cc_stats_get(g->cc, out);
    dp_gen_unref(g);
}

void dp_server_export_stats(struct dp_server *s, struct dp_export_stats *out)
{
    dp_export_stats(s->exp, out);
}

int dp_server_policy_counts(struct dp_server *s, struct dp_policy_count *out, int cap)
{
    pthread_mutex_lock(&s->gen_lock);
    struct dp_gen *g = s->gen;
    dp_gen_ref(g);
    pthread_mutex_unlock(&s->gen_lock);
    const struct px_cfg *cfg = g->cfg;
    int n = 0;
    for (int i = 0; i < cfg->n_rules + 2 && n < cap; i++) {
        if (i < cfg->n_rules) {
            snprintf(out[n].rule, sizeof(out[n].rule), "%s", cfg->rules[i].name);
            out[n].action = px_action_name(cfg->rules[i].action);
        } else if (i == cfg->n_rules) {
            snprintf(out[n].rule, sizeof(out[n].rule), "bypass");
            out[n].action = "bypass";
        } else {
            snprintf(out[n].rule, sizeof(out[n].rule), "default");
            out[n].action = px_action_name(cfg->policy_default);
        }
        out[n].n = atomic_load_explicit(&g->decisions[i], memory_order_relaxed);
        n++;
    }
    dp_gen_unref(g);
    return n;
}

int dp_server_exclusions(struct dp_server *s, struct dp_excl_info *out, int cap)
{
    return dp_excl_list(s->excl, out, cap);
}

int dp_server_exclusions_clear(struct dp_server *s, const char *host)
{
    return dp_excl_clear(s->excl, host);
}

void dp_server_exclusions_stats(struct dp_server *s, uint64_t *entries,
                                uint64_t added[DP_EXCL_REASONS])
{
    dp_excl_stats(s->excl, entries, added);
}

void dp_server_policy_info(struct dp_server *s, struct dp_policy_info *out)
{
    pthread_mutex_lock(&s->gen_lock);
    const struct px_cfg *cfg = s->gen->cfg;
    out->rules = cfg->n_rules;
    out->def = cfg->policy_default;
    out->bypass_list = cfg->policy_bypass_hosts.n > 0;
    out->excl_ttl_s = cfg->excl_ttl_s;
    out->excl_pinned_alerts = cfg->excl_pinned_alerts;
    pthread_mutex_unlock(&s->gen_lock);
}

unsigned dp_server_generation(struct dp_server *s)
{
    return atomic_load(&s->gen_id);
}

int dp_server_explicit_port(const struct dp_server *s)
{
    return s->port_explicit;
}

int dp_server_transparent_port(const struct dp_server *s)
{
    return s->port_transparent;
}
