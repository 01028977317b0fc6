/* SPDX-License-Identifier: MIT */
/*
 * runner.c - the unit test runner of certcache's formats (shared-cache entry, snapshot).
 * Owns the SRunner; exits 0 when every test passed, 1 otherwise. CK_FORK=no runs tests
 * in-process (gdb); CK_RUN_SUITE / CK_RUN_CASE select a suite or case.
 * Not here: the tests (test_wire.c); minting against a real HSM (tests/integ).
 */
#include <check.h>
#include <stdlib.h>

Suite *wire_suite(void);

int main(void)
{
    SRunner *sr = srunner_create(wire_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failures = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failures ? 1 : 0;
}
