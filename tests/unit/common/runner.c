/* SPDX-License-Identifier: MIT */
/*
 * runner.c - the unit test runner of the common module (cfg, der, secret, cfgdoc, hist and
 * lograte suites).
 * Owns the SRunner; exits 0 when every test passed, 1 otherwise.
 * Tests fork by default; CK_FORK=no runs them in-process (for gdb), and CK_RUN_SUITE /
 * CK_RUN_CASE select one suite or test case.
 * Not here: the tests themselves (test_cfg.c, test_der.c, test_secret.c, test_cfgdoc.c,
 * test_hist.c).
 */
#include <check.h>
#include <stdlib.h>

Suite *cfg_suite(void);
Suite *der_suite(void);
Suite *secret_suite(void);
Suite *cfgdoc_suite(void);
Suite *hist_suite(void);
Suite *lograte_suite(void);

int main(void)
{
    SRunner *sr = srunner_create(cfg_suite());
    srunner_add_suite(sr, der_suite());
    srunner_add_suite(sr, secret_suite());
    srunner_add_suite(sr, cfgdoc_suite());
    srunner_add_suite(sr, hist_suite());
    srunner_add_suite(sr, lograte_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failures = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failures ? 1 : 0;
}
