/* SPDX-License-Identifier: MIT */
/*
 * hsm_fixture.h - SoftHSM fixtures for integration tests: a fresh state directory made by the
 * real `tlsmint init` (token, key generated inside it, CA), plus helpers to derive configs.
 */
#ifndef HSM_FIXTURE_H
#define HSM_FIXTURE_H

#include <stddef.h>
#include <stdint.h>

#include "hsm.h"

struct fx {
    char dir[256];  /* state dir made by tlsmint init */
    char conf[300]; /* dir/tlsmint.conf */
    uint8_t mk[32]; /* the master key given to init (--master-key-file dir/mk.key) */
};

/* Runs `tlsmint init --dir <tmp> --key-type kind`; aborts the test run on failure. */
void fx_init(struct fx *fx, const char *kind);
/* rm -rf the fixture directory. */
void fx_fini(struct fx *fx);
/*
 * Writes fx->conf plus `extra` (INI text appended; later keys override earlier ones) to a new
 * file and returns its path (static buffer per call site: copy it if you need two).
 */
const char *fx_conf_with(const struct fx *fx, const char *extra, char *out, size_t outlen);
/* Runs a command line through sh, captures stdout+stderr into out; returns the exit status. */
int fx_run(const char *cmd, char *out, size_t outlen);
/* Path of the tlsmint binary under test (TLSMINT_BIN). */
const char *fx_bin(void);

#endif
