/* SPDX-License-Identifier: MIT */
/*
 * test_hist.c - unit tests for the Prometheus histogram (px_hist.c) behind
 * tlsmint_hsm_sign_duration_seconds and tlsmint_dns_duration_seconds.
 * Owns one histogram per test and an in-memory FILE for the text.
 * Invariants checked: a value equal to a bound counts in that bucket (le = "less or equal"),
 * buckets are cumulative, +Inf equals the count, the text is exactly what Prometheus reads,
 * with and without labels; more bounds than PX_HIST_MAX are cut, never written past.
 * Not here: which bounds a metric uses (hsm_pool.c, dp_resolve.c).
 */
#include "px.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

Suite *hist_suite(void);

static const double bounds[] = {0.001, 0.01, 1.0};

START_TEST(test_hist_counts)
{
    struct px_hist h;
    px_hist_init(&h, bounds, 3);
    px_hist_observe(&h, 500000);     /* 0.5 ms */
    px_hist_observe(&h, 1000000);    /* exactly 1 ms: le="0.001" */
    px_hist_observe(&h, 5000000);    /* 5 ms */
    px_hist_observe(&h, 3000000000); /* 3 s: only +Inf */
    ck_assert_uint_eq(h.le[0], 2);
    ck_assert_uint_eq(h.le[1], 3);
    ck_assert_uint_eq(h.le[2], 3);
    ck_assert_uint_eq(h.count, 4);
    ck_assert(h.sum_s > 3.0064 && h.sum_s < 3.0066);
}
END_TEST

START_TEST(test_hist_text)
{
    struct px_hist h;
    px_hist_init(&h, bounds, 3);
    px_hist_observe(&h, 2000000);
    char *buf = NULL;
    size_t len = 0;
    FILE *o = open_memstream(&buf, &len);
    px_hist_write(o, "x_seconds", "member=\"a\"", &h);
    px_hist_write(o, "y_seconds", "", &h);
    fclose(o);
    ck_assert_str_eq(buf, "x_seconds_bucket{member=\"a\",le=\"0.001\"} 0\n"
                          "x_seconds_bucket{member=\"a\",le=\"0.01\"} 1\n"
                          "x_seconds_bucket{member=\"a\",le=\"1\"} 1\n"
                          "x_seconds_bucket{member=\"a\",le=\"+Inf\"} 1\n"
                          "x_seconds_sum{member=\"a\"} 0.002000\n"
                          "x_seconds_count{member=\"a\"} 1\n"
                          "y_seconds_bucket{le=\"0.001\"} 0\n"
                          "y_seconds_bucket{le=\"0.01\"} 1\n"
                          "y_seconds_bucket{le=\"1\"} 1\n"
                          "y_seconds_bucket{le=\"+Inf\"} 1\n"
                          "y_seconds_sum 0.002000\n"
                          "y_seconds_count 1\n");
    free(buf);
}
END_TEST

/* PX_HIST_MAX + 1 bounds: the last one is dropped, nothing is written past le[] */
START_TEST(test_hist_too_many_bounds)
{
    double many[PX_HIST_MAX + 1];
    for (int i = 0; i <= PX_HIST_MAX; i++) {
        many[i] = (double)(i + 1);
    }
    struct px_hist h;
    px_hist_init(&h, many, PX_HIST_MAX + 1);
    ck_assert_int_eq(h.n, PX_HIST_MAX);
    px_hist_observe(&h, 100ull * 1000000000ull);
    ck_assert_uint_eq(h.le[PX_HIST_MAX - 1], 0);
    ck_assert_uint_eq(h.count, 1);
}
END_TEST

Suite *hist_suite(void)
{
    Suite *s = suite_create("hist");
    TCase *tc = tcase_create("hist");
    tcase_add_test(tc, test_hist_counts);
    tcase_add_test(tc, test_hist_text);
    tcase_add_test(tc, test_hist_too_many_bounds);
    suite_add_tcase(s, tc);
    return s;
}
