/* SPDX-License-Identifier: MIT */
/*
 * fuzz_bundle.c - libFuzzer target: a file handed to `tlsmint restore --in`.
 * Target functions: cli_bundle_open (cli/cli_bundle_fmt.c: magic, lengths, HKDF, AES-256-GCM
 * with the header as associated data) and, when the bytes open under the corpus's master key
 * (the seeds are real bundles from `tlsmint backup`), cli_bundle_check and
 * cli_bundle_rewrite_config as cli_restore runs them.
 * Checks: no crash or leak; refusals are PX_E_PROTO or PX_E_CRYPTO; an opened payload is
 * exactly size - 48 bytes and NUL-terminated.
 * Deterministic.
 */
#include <stdlib.h>
#include <string.h>

#include "cli_bundle_fmt.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 20) {
        return 0;
    }
    uint8_t *blob = fz_dup(data, size);
    uint8_t *plain = NULL;
    size_t plen = 0;
    int r = cli_bundle_open(fz_mk, blob, size, &plain, &plen);
    if (r == 0) {
        if (plain == NULL || plen != size - 48 || plain[plen] != 0) {
            abort();
        }
        static struct cli_archive a;
        static struct cli_bundle_view v;
        char err[300];
        memset(&a, 0, sizeof(a));
        if (cli_bundle_check(plain, plen, &a, &v, err, sizeof(err)) == 0) {
            char *conf = cli_bundle_rewrite_config((const char *)v.cf->data, v.old_dir,
                                                   "/var/lib/tlsmint-restored");
            free(conf);
        }
        cli_archive_free(&a);
        px_wipe(plain, plen);
        free(plain);
    } else if ((r != PX_E_PROTO && r != PX_E_CRYPTO) || plain != NULL) {
        abort();
    }
    free(blob);
    return 0;
}
