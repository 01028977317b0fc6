/* SPDX-License-Identifier: MIT */
/*
 * test_lograte.c - unit tests for rate-limited log lines (PX_LOG_RL) and lost-line accounting of
 * the access/audit/keylog sinks (px_lograte.c).
 * Owns a temporary file per test that stderr is redirected to while the code under test logs.
 * Invariants checked: per call site, at most PX_LOG_RL_BURST lines per window are written and
 * every other call is counted in exactly one summary (also with 4 threads on one site); two
 * sites are limited independently; a new window allows a new burst and reports the old count;
 * a failing sink is reported once with its reason, then by count, and once when it works again.
 * Not here: the dataplane sites that use it (tests/e2e/test_lognoise.sh).
 */
#include "px.h"

#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

Suite *lograte_suite(void);

static int g_saved = -1;
static FILE *g_cap;

/* Sends stderr to a temporary file until cap_end. */
static void cap_begin(void)
{
    g_cap = tmpfile();
    ck_assert_ptr_nonnull(g_cap);
    fflush(stderr);
    g_saved = dup(STDERR_FILENO);
    ck_assert_int_ge(g_saved, 0);
    ck_assert_int_eq(dup2(fileno(g_cap), STDERR_FILENO), STDERR_FILENO);
}

/* Restores stderr; returns what was written (malloc'd). */
static char *cap_end(void)
{
    dup2(g_saved, STDERR_FILENO);
    close(g_saved);
    long n = ftell(g_cap);
    ck_assert_int_ge(n, 0);
    char *buf = calloc(1, (size_t)n + 1);
    rewind(g_cap);
    size_t got = fread(buf, 1, (size_t)n, g_cap);
    buf[got] = '\0';
    fclose(g_cap);
    return buf;
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle)) {
        n++;
    }
    return n;
}

/* Sum of the N in every "rate-limited: N more like" line that mentions needle. */
static unsigned long long summarised(const char *text, const char *needle)
{
    unsigned long long sum = 0;
    for (const char *p = text; (p = strstr(p, "rate-limited: ")) != NULL; p++) {
        const char *eol = strchr(p, '\n');
        const char *hit = strstr(p, needle);
        if (hit != NULL && (eol == NULL || hit < eol)) {
            sum += strtoull(p + strlen("rate-limited: "), NULL, 10);
        }
    }
    return sum;
}

static void noisy(int i)
{
    PX_LOG_RL(PX_LOG_WARN, "t", "noisy site conn=%d", i);
}

static void other(int i)
{
    PX_LOG_RL(PX_LOG_WARN, "t", "other site conn=%d", i);
}

START_TEST(burst_then_count)
{
    cap_begin();
    for (int i = 0; i < 1000; i++) {
        noisy(i);
    }
    char *mid = cap_end();
    ck_assert_int_eq(count(mid, "noisy site conn="), PX_LOG_RL_BURST);
    ck_assert_int_eq(count(mid, "rate-limited"), 0); /* the window has not ended */
    free(mid);
    cap_begin();
    px_log_flush();
    char *out = cap_end();
    ck_assert_uint_eq(summarised(out, "noisy site conn=%d"), 1000 - PX_LOG_RL_BURST);
    ck_assert_ptr_null(strstr(out, "conn=999")); /* a summary carries no argument */
    free(out);
    cap_begin();
    px_log_flush(); /* nothing left: nothing written */
    char *again = cap_end();
    ck_assert_str_eq(again, "");
    free(again);
}
END_TEST

START_TEST(sites_are_independent)
{
    cap_begin();
    for (int i = 0; i < 100; i++) {
        noisy(i);
        other(i);
    }
    px_log_flush();
    char *out = cap_end();
    ck_assert_int_eq(count(out, "] t: noisy site conn="), PX_LOG_RL_BURST);
    ck_assert_int_eq(count(out, "] t: other site conn="), PX_LOG_RL_BURST);
    ck_assert_uint_eq(summarised(out, "noisy site"), 100 - PX_LOG_RL_BURST);
    ck_assert_uint_eq(summarised(out, "other site"), 100 - PX_LOG_RL_BURST);
    free(out);
}
END_TEST

static struct px_log_rl g_win_site;

START_TEST(new_window_new_burst)
{
    cap_begin();
    for (int i = 0; i < 20; i++) {
        px_log_rl(&g_win_site, PX_LOG_WARN, "t", "window site %d", i);
    }
    /* as if the window had started 11 s ago */
    g_win_site.win_ns = px_now_ns() - (PX_LOG_RL_WINDOW_S + 1) * 1000000000ull;
    px_log_tick();
    for (int i = 0; i < 20; i++) {
        px_log_rl(&g_win_site, PX_LOG_WARN, "t", "window site %d", i);
    }
    px_log_flush();
    char *out = cap_end();
    ck_assert_int_eq(count(out, "] t: window site "), 2 * PX_LOG_RL_BURST);
    ck_assert_int_eq(count(out, "rate-limited"), 2);
    ck_assert_int_eq(count(out, "in the last 11 s"), 1);
    ck_assert_uint_eq(summarised(out, "window site"), 40 - 2 * PX_LOG_RL_BURST);
    free(out);
}
END_TEST

START_TEST(level_filter_counts_nothing)
{
    px_log_set_level(PX_LOG_ERROR);
    cap_begin();
    for (int i = 0; i < 50; i++) {
        noisy(i);
    }
    px_log_flush();
    char *out = cap_end();
    px_log_set_level(PX_LOG_INFO);
    ck_assert_str_eq(out, "");
    free(out);
}
END_TEST

static void *thread_main(void *arg)
{
    (void)arg;
    for (int i = 0; i < 20000; i++) {
        noisy(i);
    }
    return NULL;
}

START_TEST(threads_conserve_every_call)
{
    cap_begin();
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(pthread_create(&th[i], NULL, thread_main, NULL), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
    }
    px_log_flush();
    char *out = cap_end();
    int logged = count(out, "] t: noisy site conn=");
    ck_assert_int_le(logged, 2 * PX_LOG_RL_BURST); /* one window, maybe a racing second */
    ck_assert_uint_eq((unsigned long long)logged + summarised(out, "noisy site"), 80000);
    free(out);
}
END_TEST

START_TEST(sink_once_then_counts)
{
    ck_assert_str_eq(px_sink_name(PX_SINK_ACCESS), "access");
    ck_assert_str_eq(px_sink_name(PX_SINK_AUDIT), "audit");
    ck_assert_str_eq(px_sink_name(PX_SINK_KEYLOG), "keylog");
    cap_begin();
    px_sink_ok(PX_SINK_ACCESS); /* nothing was lost: silent */
    for (int i = 0; i < 100; i++) {
        px_sink_lost(PX_SINK_ACCESS, "/dev/full", "No space left on device");
    }
    px_sink_lost(PX_SINK_KEYLOG, "/k", "Broken pipe");
    char *mid = cap_end();
    ck_assert_int_eq(count(mid, "\n"), 2);
    ck_assert_int_eq(count(mid, "[log] access /dev/full: cannot write: No space left on device"),
                     1);
    ck_assert_int_eq(count(mid, "tlsmint_log_dropped_total{log=\"access\"}"), 1);
    ck_assert_int_eq(count(mid, "[log] keylog /k: cannot write: Broken pipe"), 1);
    free(mid);
    ck_assert_uint_eq(px_sink_lost_total(PX_SINK_ACCESS), 100);
    ck_assert_uint_eq(px_sink_lost_total(PX_SINK_KEYLOG), 1);
    ck_assert_uint_eq(px_sink_lost_total(PX_SINK_AUDIT), 0);
    cap_begin();
    px_log_tick(); /* the window has not ended */
    char *t = cap_end();
    ck_assert_str_eq(t, "");
    free(t);
    cap_begin();
    px_log_flush();
    px_sink_ok(PX_SINK_ACCESS);
    px_sink_ok(PX_SINK_ACCESS);
    px_sink_lost(PX_SINK_ACCESS, "/dev/full", "No space left on device"); /* fails again */
    char *out = cap_end();
    ck_assert_int_eq(count(out, "[log] access /dev/full: 99 more lines lost in the last"), 1);
    ck_assert_int_eq(count(out, "[log] access /dev/full: written again, 100 lines were lost"), 1);
    ck_assert_int_eq(count(out, "[log] access /dev/full: cannot write"), 1);
    ck_assert_uint_eq(px_sink_lost_total(PX_SINK_ACCESS), 101);
    free(out);
}
END_TEST

Suite *lograte_suite(void)
{
    Suite *s = suite_create("lograte");
    TCase *tc = tcase_create("rl");
    tcase_add_test(tc, burst_then_count);
    tcase_add_test(tc, sites_are_independent);
    tcase_add_test(tc, new_window_new_burst);
    tcase_add_test(tc, level_filter_counts_nothing);
    tcase_add_test(tc, threads_conserve_every_call);
    tcase_add_test(tc, sink_once_then_counts);
    suite_add_tcase(s, tc);
    return s;
}
