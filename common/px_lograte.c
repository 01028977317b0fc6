/* SPDX-License-Identifier: MIT */
/*
 * px_lograte.c - log lines an outsider can cause, rate-limited per call site (the idea of h2o's
 * error_reporter), and the accounting of lines the other logs (access, audit, keylog) lose.
 * Owns the list of call sites that have suppressed something and one state per sink.
 * Called from every thread; px_log_tick from one thread about once a second (tlsmint run's
 * main thread), px_log_flush once at exit.
 * Invariants: every px_log_rl call is either written or counted in exactly one summary line;
 * every lost sink line is counted in px_sink_lost_total. A summary names the call site by its
 * format string, never by the arguments, so it carries no byte a client sent.
 * Not here: writing a line (px_log.c), the files themselves (dataplane/dp_alog.c, cli_audit).
 */
#include "px.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define WINDOW_NS ((uint64_t)PX_LOG_RL_WINDOW_S * 1000000000ull)

static struct px_log_rl *g_sites; /* sites are pushed once and never removed */

/* Rounded seconds for "in the last N s". */
static unsigned long long secs(uint64_t ns)
{
    return (unsigned long long)((ns + 500000000ull) / 1000000000ull);
}

/*
 * Starts a new window at now when the current one has ended (or force), and reports what the
 * old one suppressed. Only the thread whose compare-and-swap wins reports, so a count is
 * written once; a call racing with the switch may land in either window's count.
 */
static void roll(struct px_log_rl *rl, uint64_t now, bool force)
{
    uint64_t w = __atomic_load_n(&rl->win_ns, __ATOMIC_ACQUIRE);
    if (!force && w != 0 && now - w < WINDOW_NS) {
        return;
    }
    if (!__atomic_compare_exchange_n(&rl->win_ns, &w, now, false, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE)) {
        return;
    }
    __atomic_store_n(&rl->n, 0, __ATOMIC_RELEASE);
    uint64_t s = __atomic_exchange_n(&rl->suppressed, 0, __ATOMIC_ACQ_REL);
    if (s > 0) {
        px_log((enum px_log_level)__atomic_load_n(&rl->level, __ATOMIC_RELAXED),
               __atomic_load_n(&rl->mod, __ATOMIC_RELAXED),
               "rate-limited: %llu more like \"%.160s\" in the last %llu s", (unsigned long long)s,
               __atomic_load_n(&rl->fmt, __ATOMIC_RELAXED), secs(w != 0 ? now - w : 0));
    }
}

void px_log_rl(struct px_log_rl *rl, enum px_log_level level, const char *mod, const char *fmt,
               ...)
{
    if (level > px_log_get_level()) {
        return;
    }
    /* the same values from every caller of one site */
    __atomic_store_n(&rl->mod, mod, __ATOMIC_RELAXED);
    __atomic_store_n(&rl->fmt, fmt, __ATOMIC_RELAXED);
    __atomic_store_n(&rl->level, (int)level, __ATOMIC_RELAXED);
    roll(rl, px_now_ns(), false);
    if (__atomic_fetch_add(&rl->n, 1, __ATOMIC_ACQ_REL) < PX_LOG_RL_BURST) {
        va_list ap;
        va_start(ap, fmt);
        px_vlog(level, mod, fmt, ap);
        va_end(ap);
        return;
    }
    __atomic_fetch_add(&rl->suppressed, 1, __ATOMIC_ACQ_REL);
    if (__atomic_exchange_n(&rl->listed, 1, __ATOMIC_ACQ_REL) == 0) {
        struct px_log_rl *head = __atomic_load_n(&g_sites, __ATOMIC_ACQUIRE);
        do {
            rl->next = head;
        } while (!__atomic_compare_exchange_n(&g_sites, &head, rl, true, __ATOMIC_ACQ_REL,
                                              __ATOMIC_ACQUIRE));
    }
}

/* ---- sinks ------------------------------------------------------------------------------ */

struct sink {
    pthread_mutex_t lock;
    int failing;       /* read without the lock (px_sink_ok's fast path) */
    uint64_t total;    /* atomic: every line lost since start */
    uint64_t win_ns;   /* under lock: start of the window lost_win counts */
    uint64_t lost_win; /* under lock: lost and not reported yet */
    uint64_t lost_run; /* under lock: lost since the sink started failing */
    char path[256], reason[160];
};

static struct sink g_sinks[PX_SINKS] = {
    {.lock = PTHREAD_MUTEX_INITIALIZER},
    {.lock = PTHREAD_MUTEX_INITIALIZER},
    {.lock = PTHREAD_MUTEX_INITIALIZER},
};

const char *px_sink_name(enum px_sink s)
{
    static const char *names[PX_SINKS] = {"access", "audit", "keylog"};
    return (unsigned)s < PX_SINKS ? names[s] : "?";
}

/* Under k->lock: the count of the window that ends now. */
static void sink_report(enum px_sink s, struct sink *k, uint64_t now)
{
    px_log(PX_LOG_WARN, "log", "[log] %s %s: %llu more lines lost in the last %llu s (%s)",
           px_sink_name(s), k->path, (unsigned long long)k->lost_win, secs(now - k->win_ns),
           k->reason);
    k->win_ns = now;
    k->lost_win = 0;
}

void px_sink_lost(enum px_sink s, const char *path, const char *reason)
{
    if ((unsigned)s >= PX_SINKS) {
        return;
    }
    struct sink *k = &g_sinks[s];
    __atomic_fetch_add(&k->total, 1, __ATOMIC_RELAXED);
    uint64_t now = px_now_ns();
    pthread_mutex_lock(&k->lock);
    if (!k->failing) {
        snprintf(k->path, sizeof(k->path), "%s", path != NULL && path[0] ? path : "stdout");
        snprintf(k->reason, sizeof(k->reason), "%s", reason);
        k->win_ns = now;
        k->lost_win = 0;
        k->lost_run = 1;
        __atomic_store_n(&k->failing, 1, __ATOMIC_RELEASE);
        px_log(PX_LOG_ERROR, "log",
               "[log] %s %s: cannot write: %s; its lines are lost until it can (counted in "
               "tlsmint_log_dropped_total{log=\"%s\"}, a count follows every %d s)",
               px_sink_name(s), k->path, k->reason, px_sink_name(s), PX_LOG_RL_WINDOW_S);
    } else {
        k->lost_win++;
        k->lost_run++;
        if (strcmp(k->reason, reason) != 0) {
            snprintf(k->reason, sizeof(k->reason), "%s", reason);
        }
        if (now - k->win_ns >= WINDOW_NS) {
            sink_report(s, k, now);
        }
    }
    pthread_mutex_unlock(&k->lock);
}

void px_sink_ok(enum px_sink s)
{
    if ((unsigned)s >= PX_SINKS || !__atomic_load_n(&g_sinks[s].failing, __ATOMIC_ACQUIRE)) {
        return;
    }
    struct sink *k = &g_sinks[s];
    pthread_mutex_lock(&k->lock);
    if (k->failing) {
        px_log(PX_LOG_INFO, "log", "[log] %s %s: written again, %llu lines were lost (%s)",
               px_sink_name(s), k->path, (unsigned long long)k->lost_run, k->reason);
        k->lost_win = 0;
        __atomic_store_n(&k->failing, 0, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&k->lock);
}

uint64_t px_sink_lost_total(enum px_sink s)
{
    return (unsigned)s < PX_SINKS ? __atomic_load_n(&g_sinks[s].total, __ATOMIC_RELAXED) : 0;
}

/* ---- periodic summaries ----------------------------------------------------------------- */

static void tick(bool force)
{
    uint64_t now = px_now_ns();
    for (struct px_log_rl *rl = __atomic_load_n(&g_sites, __ATOMIC_ACQUIRE); rl != NULL;
         rl = rl->next) {
        if (__atomic_load_n(&rl->suppressed, __ATOMIC_ACQUIRE) > 0) {
            roll(rl, now, force);
        }
    }
    for (int s = 0; s < PX_SINKS; s++) {
        struct sink *k = &g_sinks[s];
        if (!__atomic_load_n(&k->failing, __ATOMIC_ACQUIRE)) {
            continue;
        }
        pthread_mutex_lock(&k->lock);
        if (k->failing && k->lost_win > 0 && (force || now - k->win_ns >= WINDOW_NS)) {
            sink_report((enum px_sink)s, k, now);
        }
        pthread_mutex_unlock(&k->lock);
    }
}

void px_log_tick(void)
{
    tick(false);
}

void px_log_flush(void)
{
    tick(true);
}
