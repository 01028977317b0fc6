/* SPDX-License-Identifier: MIT */
/*
 * test_resolve.c - unit tests for the resolver thread (dataplane/dp_resolve.c) on what needs
 * no DNS server: hosts-file names, IP-shaped and invalid names, the hand-back through the
 * MPSC list and eventfd, the counters, and shutting down with lookups in flight.
 * Owns one resolver and one done list per test.
 * Invariants checked: every job comes back exactly once, through the eventfd; hosts-file
 * answers are read again each time (not cached); a name that is no host name is refused
 * without a query; freeing the resolver with jobs in flight leaks nothing (ASan).
 * Not here: DNS answers, timeouts and single flight against a real server (tests/e2e/test_dns.sh).
 */
#include "dp_int.h"

#include <arpa/inet.h>
#include <check.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

Suite *resolve_suite(void);

static struct dp_resolver *g_res;
static struct dp_res_done g_done;

static void setup(void)
{
    struct px_cfg cfg;
    px_cfg_defaults(&cfg);
    char err[256] = "";
    g_res = dp_resolver_new(&cfg, err, sizeof(err));
    ck_assert_msg(g_res != NULL, "%s", err);
    g_done.evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    ck_assert_int_ge(g_done.evfd, 0);
    atomic_init(&g_done.head, NULL);
}

static void teardown(void)
{
    dp_resolver_free(g_res);
    struct dp_res_job *j = dp_res_done_take(&g_done);
    while (j != NULL) {
        struct dp_res_job *n = j->next;
        free(j);
        j = n;
    }
    close(g_done.evfd);
}

static struct dp_res_job *job(const char *host, uint16_t port)
{
    struct dp_res_job *j = calloc(1, sizeof(*j));
    ck_assert_ptr_nonnull(j);
    snprintf(j->host, sizeof(j->host), "%s", host);
    j->port = port;
    j->timeout_ms = 2000;
    j->max_ttl_s = 300;
    j->neg_ttl_s = 5;
    j->done = &g_done;
    return j;
}

/* Waits (at most 5 s) for n jobs on the done list, through its eventfd as a loop would. */
static int wait_done(struct dp_res_job **out, int n)
{
    int got = 0;
    uint64_t end = px_now_ns() + 5000000000ull;
    while (got < n && px_now_ns() < end) {
        struct pollfd p = {.fd = g_done.evfd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0) {
            continue;
        }
        for (struct dp_res_job *j = dp_res_done_take(&g_done); j != NULL;) {
            struct dp_res_job *nx = j->next;
            ck_assert_int_lt(got, n);
            out[got++] = j;
            j = nx;
        }
    }
    return got;
}

START_TEST(test_hosts_file)
{
    struct dp_res_job *j = job("localhost", 8443), *done[2];
    ck_assert_int_eq(dp_resolver_submit(g_res, j), 0);
    ck_assert_int_eq(wait_done(done, 1), 1);
    ck_assert_ptr_eq(done[0], j);
    ck_assert_int_eq(j->status, DP_RES_OK);
    ck_assert_int_ge(j->naddr, 1);
    ck_assert_int_eq(j->addr[0].sa.sa_family, AF_INET); /* IPv4 first */
    ck_assert_uint_eq(ntohl(j->addr[0].in4.sin_addr.s_addr), 0x7f000001);
    ck_assert_uint_eq(ntohs(j->addr[0].in4.sin_port), 8443);
    ck_assert_uint_eq(dp_res_addrlen(&j->addr[0]), sizeof(struct sockaddr_in));
    ck_assert(!j->cached);
    free(j);
    /* the hosts file carries no TTL: read again, not cached */
    j = job("LOCALHOST.", 443);
    ck_assert_int_eq(dp_resolver_submit(g_res, j), 0);
    ck_assert_int_eq(wait_done(done, 1), 1);
    ck_assert_int_eq(j->status, DP_RES_OK);
    ck_assert(!j->cached);
    ck_assert_uint_eq(ntohs(j->addr[0].in4.sin_port), 443);
    free(j);
    struct dp_dns_stats st;
    dp_resolver_stats(g_res, &st);
    ck_assert_uint_eq(st.lookups[DP_DNS_OK], 2);
    ck_assert_uint_eq(st.lookups[DP_DNS_CACHED], 0);
    ck_assert_uint_eq(st.duration.count, 2);
    ck_assert_uint_eq(st.names, 0);
    ck_assert_ptr_nonnull(strstr(st.state, "c-ares "));
    ck_assert_ptr_nonnull(strstr(st.state, "nameservers"));
}
END_TEST

START_TEST(test_not_a_host_name)
{
    static const char *bad[] = {"a..b", "", "exa mple", "x\x01y"};
    struct dp_res_job *done[4];
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(dp_resolver_submit(g_res, job(bad[i], 443)), 0);
    }
    ck_assert_int_eq(wait_done(done, 4), 4);
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(done[i]->status, DP_RES_ERROR);
        ck_assert_str_eq(done[i]->why, "not a valid host name");
        ck_assert_int_eq(done[i]->naddr, 0);
        free(done[i]);
    }
    struct dp_dns_stats st;
    dp_resolver_stats(g_res, &st);
    ck_assert_uint_eq(st.lookups[DP_DNS_ERROR], 4);
}
END_TEST

/* many jobs from one submitter come back, each once */
START_TEST(test_many)
{
    enum { N = 500 };
    static struct dp_res_job *done[N];
    for (int i = 0; i < N; i++) {
        struct dp_res_job *j = job(i % 2 ? "localhost" : "bad..name", (uint16_t)(1000 + i));
        j->token = (uint64_t)i;
        ck_assert_int_eq(dp_resolver_submit(g_res, j), 0);
    }
    ck_assert_int_eq(wait_done(done, N), N);
    static bool seen[N];
    memset(seen, 0, sizeof(seen));
    for (int i = 0; i < N; i++) {
        int k = (int)done[i]->token;
        ck_assert(!seen[k]);
        seen[k] = true;
        ck_assert_int_eq(done[i]->status, k % 2 ? DP_RES_OK : DP_RES_ERROR);
        free(done[i]);
    }
}
END_TEST

/* freed with lookups queued and in flight: nothing delivered afterwards, nothing leaked */
START_TEST(test_free_in_flight)
{
    for (int i = 0; i < 20; i++) {
        char name[64];
        snprintf(name, sizeof(name), "n%d.tlsmint-unit.invalid", i);
        ck_assert_int_eq(dp_resolver_submit(g_res, job(name, 443)), 0);
    }
    usleep(20000);
    dp_resolver_free(g_res);
    g_res = NULL;
    /* whatever came back before the free is on the list; teardown frees it */
}
END_TEST

Suite *resolve_suite(void)
{
    Suite *s = suite_create("resolve");
    TCase *tc = tcase_create("resolve");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_hosts_file);
    tcase_add_test(tc, test_not_a_host_name);
    tcase_add_test(tc, test_many);
    tcase_add_test(tc, test_free_in_flight);
    suite_add_tcase(s, tc);
    return s;
}
