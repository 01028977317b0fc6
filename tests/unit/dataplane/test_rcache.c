/* SPDX-License-Identifier: MIT */
/*
 * test_rcache.c - unit tests for the resolver's table of names (dataplane/dp_rcache.c): the
 * host-name key (the only parsing written here; c-ares parses DNS), TTLs, negative entries,
 * the bound and what eviction may take.
 * Owns one table per test; time is passed in, so nothing sleeps.
 * Invariants checked: keys are lower case without the root dot and refuse what is no host
 * name, with the 253/63-byte limits tested one past the edge; an entry is never returned past
 * its expiry; the table never holds more than max names; pending names are never evicted.
 * Not here: c-ares and the resolver thread (test_resolve.c, tests/e2e/test_dns.sh).
 */
#include "dp_int.h"

#include <arpa/inet.h>
#include <check.h>
#include <stdio.h>
#include <string.h>

Suite *rcache_suite(void);

#define S_NS 1000000000ull

struct key_case {
    const char *in;
    const char *want; /* NULL: refused */
};

static const struct key_case key_cases[] = {
    {"example.com", "example.com"},
    {"WWW.Example.COM", "www.example.com"},
    {"example.com.", "example.com"},
    {"localhost", "localhost"},
    {"a-b_c.d9", "a-b_c.d9"},
    {"", NULL},
    {".", NULL},
    {"example..com", NULL},
    {".example.com", NULL},
    {"example.com..", NULL},
    {"exa mple.com", NULL},
    {"exa\tmple", NULL},
    {"ex%41mple", NULL},
    {"\xc3\xa9t\xc3\xa9.example", NULL},
    {"exa\nmple", NULL},
};

START_TEST(test_key)
{
    const struct key_case *c = &key_cases[_i];
    char out[256];
    int r = dp_rcache_key(c->in, out, sizeof(out));
    if (c->want == NULL) {
        ck_assert_msg(r == PX_E_INVAL, "'%s' accepted as '%s'", c->in, r >= 0 ? out : "");
    } else {
        ck_assert_int_eq(r, (int)strlen(c->want));
        ck_assert_str_eq(out, c->want);
    }
}
END_TEST

/* names of exactly 253 bytes and labels of 63 pass; one more byte fails */
START_TEST(test_key_limits)
{
    char name[300], out[256];
    memset(name, 'a', 63);
    name[63] = '\0';
    ck_assert_int_eq(dp_rcache_key(name, out, sizeof(out)), 63);
    name[63] = 'a';
    name[64] = '\0';
    ck_assert_int_eq(dp_rcache_key(name, out, sizeof(out)), PX_E_INVAL);

    /* 4 labels: 63.63.63.61 = 253 bytes */
    size_t n = 0;
    for (int l = 0; l < 4; l++) {
        int len = l < 3 ? 63 : 61;
        memset(name + n, 'b' + l, (size_t)len);
        n += (size_t)len;
        if (l < 3) {
            name[n++] = '.';
        }
    }
    name[n] = '\0';
    ck_assert_uint_eq(n, 253);
    ck_assert_int_eq(dp_rcache_key(name, out, sizeof(out)), 253);
    name[n] = '.'; /* the root dot does not count */
    name[n + 1] = '\0';
    ck_assert_int_eq(dp_rcache_key(name, out, sizeof(out)), 253);
    name[n] = 'x';
    ck_assert_int_eq(dp_rcache_key(name, out, sizeof(out)), PX_E_INVAL); /* 254 */
    /* and a buffer one byte short of the key */
    name[n] = '\0';
    ck_assert_int_eq(dp_rcache_key(name, out, 253), PX_E_INVAL);
    ck_assert_int_eq(dp_rcache_key(name, out, 254), 253);
}
END_TEST

static union dp_res_addr v4(const char *s)
{
    union dp_res_addr a;
    memset(&a, 0, sizeof(a));
    a.in4.sin_family = AF_INET;
    ck_assert_int_eq(inet_pton(AF_INET, s, &a.in4.sin_addr), 1);
    return a;
}

START_TEST(test_ttl_and_negative)
{
    struct dp_rcache *c = dp_rcache_new(8);
    ck_assert_ptr_nonnull(c);
    uint64_t t0 = 1000 * S_NS;
    ck_assert_ptr_null(dp_rcache_find(c, "a.test", t0));
    struct dp_rent *e = dp_rcache_add(c, "a.test");
    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(e->state, DP_RENT_PENDING);
    ck_assert_ptr_eq(dp_rcache_find(c, "a.test", t0), e); /* single flight: found while pending */
    ck_assert_uint_eq(dp_rcache_pending(c), 1);
    union dp_res_addr addr[2] = {v4("192.0.2.1"), v4("192.0.2.2")};
    ck_assert(dp_rcache_settle(c, e, DP_RES_OK, addr, 2, 60, t0));
    ck_assert_uint_eq(dp_rcache_pending(c), 0);
    e = dp_rcache_find(c, "a.test", t0 + 59 * S_NS);
    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(e->state, DP_RENT_OK);
    ck_assert_int_eq(e->naddr, 2);
    ck_assert(memcmp(&e->addr[1], &addr[1], sizeof(addr[1])) == 0);
    /* expired: gone, and the slot is free again */
    ck_assert_ptr_null(dp_rcache_find(c, "a.test", t0 + 60 * S_NS));
    ck_assert_uint_eq(dp_rcache_count(c), 0);

    e = dp_rcache_add(c, "nx.test");
    ck_assert(dp_rcache_settle(c, e, DP_RES_NXDOMAIN, NULL, 0, 5, t0));
    e = dp_rcache_find(c, "nx.test", t0 + 4 * S_NS);
    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(e->state, DP_RENT_NEG);
    ck_assert_int_eq(e->status, DP_RES_NXDOMAIN);
    ck_assert_ptr_null(dp_rcache_find(c, "nx.test", t0 + 5 * S_NS));

    /* TTL 0 (hosts file, timeouts) and an empty OK answer are not kept */
    e = dp_rcache_add(c, "hosts.test");
    ck_assert(!dp_rcache_settle(c, e, DP_RES_OK, addr, 1, 0, t0));
    ck_assert_ptr_null(dp_rcache_find(c, "hosts.test", t0));
    e = dp_rcache_add(c, "empty.test");
    ck_assert(!dp_rcache_settle(c, e, DP_RES_OK, addr, 0, 60, t0));
    ck_assert_uint_eq(dp_rcache_count(c), 0);
    dp_rcache_free(c);
}
END_TEST

/* max names: adding name max+1 evicts the least recently used resolved one */
START_TEST(test_bound_lru)
{
    enum { MAX = 100 };
    struct dp_rcache *c = dp_rcache_new(MAX);
    union dp_res_addr a = v4("192.0.2.9");
    uint64_t t0 = 5 * S_NS;
    char name[32];
    for (int i = 0; i < MAX; i++) {
        snprintf(name, sizeof(name), "n%d.test", i);
        struct dp_rent *e = dp_rcache_add(c, name);
        ck_assert_ptr_nonnull(e);
        ck_assert(dp_rcache_settle(c, e, DP_RES_OK, &a, 1, 300, t0));
    }
    ck_assert_uint_eq(dp_rcache_count(c), MAX);
    ck_assert_ptr_nonnull(dp_rcache_find(c, "n0.test", t0)); /* n0 is now the most recent */
    struct dp_rent *e = dp_rcache_add(c, "n100.test");       /* the 101st */
    ck_assert_ptr_nonnull(e);
    ck_assert_uint_eq(dp_rcache_count(c), MAX);
    ck_assert_ptr_null(dp_rcache_find(c, "n1.test", t0)); /* the least recent went */
    ck_assert_ptr_nonnull(dp_rcache_find(c, "n0.test", t0));
    ck_assert_ptr_nonnull(dp_rcache_find(c, "n2.test", t0));
    ck_assert(dp_rcache_settle(c, e, DP_RES_OK, &a, 1, 300, t0));
    dp_rcache_free(c);
}
END_TEST

/* a table full of names in flight refuses a new one instead of evicting a pending entry */
START_TEST(test_pending_not_evicted)
{
    struct dp_rcache *c = dp_rcache_new(3);
    union dp_res_addr a = v4("192.0.2.9");
    struct dp_rent *p1 = dp_rcache_add(c, "p1.test");
    struct dp_rent *p2 = dp_rcache_add(c, "p2.test");
    struct dp_rent *r = dp_rcache_add(c, "r.test");
    ck_assert(dp_rcache_settle(c, r, DP_RES_OK, &a, 1, 300, 0));
    struct dp_rent *p3 = dp_rcache_add(c, "p3.test"); /* evicts r, the only resolved one */
    ck_assert_ptr_nonnull(p3);
    ck_assert_ptr_null(dp_rcache_find(c, "r.test", 0));
    ck_assert_ptr_null(dp_rcache_add(c, "p4.test"));
    ck_assert_uint_eq(dp_rcache_pending(c), 3);
    ck_assert_ptr_eq(dp_rcache_find(c, "p1.test", 0), p1);
    ck_assert_ptr_eq(dp_rcache_find(c, "p2.test", 0), p2);
    dp_rcache_remove(c, p2); /* a pending entry can be removed (lookup failed) */
    ck_assert_uint_eq(dp_rcache_pending(c), 2);
    ck_assert_ptr_nonnull(dp_rcache_add(c, "p4.test"));
    ck_assert_ptr_null(dp_rcache_new(0));
    dp_rcache_free(c); /* frees pending entries too */
}
END_TEST

/* many names in few buckets: every one found, removal keeps the chains intact */
START_TEST(test_collisions)
{
    struct dp_rcache *c = dp_rcache_new(16); /* 16 buckets */
    union dp_res_addr a = v4("192.0.2.9");
    char name[32];
    struct dp_rent *ents[16];
    for (int i = 0; i < 16; i++) {
        snprintf(name, sizeof(name), "c%d.test", i);
        ents[i] = dp_rcache_add(c, name);
        ck_assert(dp_rcache_settle(c, ents[i], DP_RES_OK, &a, 1, 10, 0));
    }
    for (int i = 0; i < 16; i += 2) {
        dp_rcache_remove(c, ents[i]);
    }
    for (int i = 0; i < 16; i++) {
        snprintf(name, sizeof(name), "c%d.test", i);
        struct dp_rent *e = dp_rcache_find(c, name, 0);
        if (i % 2 == 0) {
            ck_assert_ptr_null(e);
        } else {
            ck_assert_ptr_eq(e, ents[i]);
        }
    }
    ck_assert_uint_eq(dp_rcache_count(c), 8);
    dp_rcache_free(c);
}
END_TEST

Suite *rcache_suite(void)
{
    Suite *s = suite_create("rcache");
    TCase *tc = tcase_create("rcache");
    tcase_add_loop_test(tc, test_key, 0, sizeof(key_cases) / sizeof(key_cases[0]));
    tcase_add_test(tc, test_key_limits);
    tcase_add_test(tc, test_ttl_and_negative);
    tcase_add_test(tc, test_bound_lru);
    tcase_add_test(tc, test_pending_not_evicted);
    tcase_add_test(tc, test_collisions);
    suite_add_tcase(s, tc);
    return s;
}
