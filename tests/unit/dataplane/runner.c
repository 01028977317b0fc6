/* SPDX-License-Identifier: MIT */
/*
 * runner.c - the unit test runner of the dataplane module (resolver names, resolver, policy,
 * address literals, the export's checksum).
 * Owns the SRunner; exits 0 when every test passed, 1 otherwise.
 * Tests fork by default; CK_FORK=no runs them in-process (for gdb), and CK_RUN_SUITE /
 * CK_RUN_CASE select one suite or test case.
 * Not here: the tests themselves (test_rcache.c, test_resolve.c, test_policy.c, test_addr.c,
 * test_csum.c);
 * the connection state machine is tested end to end (tests/e2e).
 */
#include <check.h>
#include <stdlib.h>

Suite *rcache_suite(void);
Suite *resolve_suite(void);
Suite *policy_suite(void);
Suite *addr_suite(void);
Suite *csum_suite(void);

int main(void)
{
    SRunner *sr = srunner_create(rcache_suite());
    srunner_add_suite(sr, resolve_suite());
    srunner_add_suite(sr, policy_suite());
    srunner_add_suite(sr, addr_suite());
    srunner_add_suite(sr, csum_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failures = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failures ? 1 : 0;
}
