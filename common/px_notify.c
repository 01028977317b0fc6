/* SPDX-License-Identifier: MIT */
/*
 * px_notify.c - telling systemd how the service is doing (Type=notify), through libsystemd's
 * sd_notify: READY=1, RELOADING=1, STOPPING=1, STATUS=, and the watchdog.
 * Owns the watchdog thread, which sends WATCHDOG=1 every half WatchdogSec while the liveness
 * callback says the process still works. Called from the main thread (state changes) and the
 * admin thread (reload through `ctl reload`); sd_notify is one sendmsg, safe from any thread.
 * Without NOTIFY_SOCKET (not started by systemd) every call does nothing.
 * Not here: the journal-aware log format (px_log.c).
 */
#include "px.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <systemd/sd-daemon.h>

struct watchdog {
    pthread_t th;
    uint64_t period_us;
    bool (*alive)(void *ctx);
    void *ctx;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stop;
};

static struct watchdog g_wd = {.lock = PTHREAD_MUTEX_INITIALIZER,
                               .cond = PTHREAD_COND_INITIALIZER};
static bool g_wd_running;

void px_notify(const char *state)
{
    (void)sd_notify(0, state);
}

void px_notify_status(const char *fmt, ...)
{
    char buf[512];
    int n = snprintf(buf, sizeof(buf), "STATUS=");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + n, sizeof(buf) - (size_t)n, fmt, ap);
    va_end(ap);
    (void)sd_notify(0, buf);
}

static void *wd_main(void *arg)
{
    struct watchdog *w = arg;
    pthread_mutex_lock(&w->lock);
    while (!w->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t ns = (uint64_t)ts.tv_nsec + w->period_us * 1000ull;
        ts.tv_sec += (time_t)(ns / 1000000000ull);
        ts.tv_nsec = (long)(ns % 1000000000ull);
        pthread_cond_timedwait(&w->cond, &w->lock, &ts);
        if (w->stop) {
            break;
        }
        /* a process that no longer works must let the watchdog fire: no ping then */
        if (w->alive == NULL || w->alive(w->ctx)) {
            (void)sd_notify(0, "WATCHDOG=1");
        } else {
            px_log(PX_LOG_WARN, "main", "watchdog: not alive, no ping");
        }
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

int px_notify_watchdog_start(bool (*alive)(void *ctx), void *ctx)
{
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) {
        return 0;
    }
    g_wd.period_us = usec / 2;
    g_wd.alive = alive;
    g_wd.ctx = ctx;
    g_wd.stop = false;
    if (pthread_create(&g_wd.th, NULL, wd_main, &g_wd) != 0) {
        return PX_E_INVAL;
    }
    g_wd_running = true;
    (void)sd_notify(0, "WATCHDOG=1");
    px_log(PX_LOG_INFO, "main", "systemd watchdog: a ping every %llu ms",
           (unsigned long long)(usec / 2000));
    return 1;
}

void px_notify_watchdog_stop(void)
{
    if (!g_wd_running) {
        return;
    }
    pthread_mutex_lock(&g_wd.lock);
    g_wd.stop = true;
    pthread_cond_signal(&g_wd.cond);
    pthread_mutex_unlock(&g_wd.lock);
    pthread_join(g_wd.th, NULL);
    g_wd_running = false;
}
