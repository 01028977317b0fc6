/* SPDX-License-Identifier: MIT */
/*
 * fuzz_cfg.c - libFuzzer target: the configuration loader on arbitrary text.
 * Target functions: px_cfg_load_string (libinih's ini_parse_stream, every [section] key handler,
 * validate, the FILE:LINE error formatting) in common/px_cfg.c.
 * Checks: the loader never crashes; on failure the error is one NUL-terminated line naming the
 * input; on success every string field of the config is NUL-terminated within its array.
 * Deterministic: no files are opened, nothing is random.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "px.h"

#define FIELD_OK(f) (memchr((f), '\0', sizeof(f)) != NULL)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct px_cfg cfg;
    if (size > 64 * 1024) {
        return 0;
    }
    char *text = malloc(size + 1);
    if (text == NULL) {
        return 0;
    }
    memcpy(text, data, size);
    text[size] = '\0';
    char err[512];
    memset(err, 0x5a, sizeof(err));
    int r = px_cfg_load_string("fuzz.conf", text, &cfg, err, sizeof(err));
    if (r != 0) {
        if (r != PX_E_CONFIG || memchr(err, '\0', sizeof(err)) == NULL ||
            strncmp(err, "fuzz.conf", 9) != 0) {
            abort();
        }
    } else {
        if (!FIELD_OK(cfg.listen_explicit) || !FIELD_OK(cfg.listen_transparent) ||
            !FIELD_OK(cfg.policy_bypass) || !FIELD_OK(cfg.ca_forward_trust_cert) ||
            !FIELD_OK(cfg.upstream_ca_file) || !FIELD_OK(cfg.admin_metrics) || cfg.n_members < 0 ||
            cfg.n_members > PX_HSM_MAX_MEMBERS) {
            abort();
        }
        for (int i = 0; i < cfg.n_members; i++) {
            const struct px_hsm_member_cfg *m = &cfg.members[i];
            if (!FIELD_OK(m->name) || !FIELD_OK(m->module) || !FIELD_OK(m->token) ||
                !FIELD_OK(m->pin_file) || m->n_env < 0 || m->n_env > PX_HSM_MAX_ENV) {
                abort();
            }
            for (int k = 0; k < m->n_env; k++) {
                if (!FIELD_OK(m->env[k])) {
                    abort();
                }
            }
        }
    }
    free(text);
    return 0;
}
