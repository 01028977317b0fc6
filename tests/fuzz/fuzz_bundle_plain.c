/* SPDX-License-Identifier: MIT */
/*
 * fuzz_bundle_plain.c - libFuzzer target: the decrypted layer of a restore bundle (random bytes
 * never pass the AEAD, so this target starts behind it). The seeds are the payloads of real
 * bundles from `tlsmint backup`.
 * Target functions: cli_bundle_check (cli_archive_unpack, cli_archive_add, the manifest's
 * SHA-256 check, the state_dir extraction), cli_bundle_rewrite_config twice as restore does
 * (old dir -> new dir -> DIR.tmp), px_cfg_load_string on the result (restore loads that file),
 * the CA certificate's PEM and the sealed untrust key's px_unseal; then cli_archive_pack.
 * Checks: no crash, hang or leak; an accepted bundle has its three entries; packing the archive
 * and unpacking it again gives the same entries.
 * Deterministic.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>

#include "cli_bundle_fmt.h"
#include "fuzz_common.h"

#define NEW_DIR "/var/lib/tlsmint-restored"

static void roundtrip(const struct cli_archive *a)
{
    uint8_t *packed = NULL;
    size_t pl = 0;
    if (cli_archive_pack(a, &packed, &pl) != 0) {
        abort();
    }
    static struct cli_archive b;
    memset(&b, 0, sizeof(b));
    if (cli_archive_unpack(&b, packed, pl) != 0 || b.n != a->n) {
        abort();
    }
    for (int i = 0; i < a->n; i++) {
        if (strcmp(a->e[i].name, b.e[i].name) != 0 || a->e[i].len != b.e[i].len ||
            memcmp(a->e[i].data, b.e[i].data, a->e[i].len) != 0) {
            abort();
        }
    }
    cli_archive_free(&b);
    free(packed);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 20) {
        return 0;
    }
    uint8_t *plain = fz_dup(data, size);
    static struct cli_archive a;
    static struct cli_bundle_view v;
    static struct px_cfg cfg;
    char err[600];
    memset(&a, 0, sizeof(a));
    int r = cli_bundle_check(plain, size, &a, &v, err, sizeof(err));
    if (r == 0) {
        if (v.man == NULL || v.cf == NULL || v.cert == NULL || v.cf->data[v.cf->len] != 0) {
            abort();
        }
        char *conf = cli_bundle_rewrite_config((const char *)v.cf->data, v.old_dir, NEW_DIR);
        char *tmpconf = conf ? cli_bundle_rewrite_config(conf, NEW_DIR, NEW_DIR ".tmp-1") : NULL;
        if (tmpconf == NULL) {
            abort();
        }
        (void)px_cfg_load_string(NEW_DIR ".tmp-1/tlsmint.conf", tmpconf, &cfg, err, sizeof(err));
        free(tmpconf);
        free(conf);
        BIO *cb = BIO_new_mem_buf(v.cert->data, (int)v.cert->len);
        X509 *ca = cb ? PEM_read_bio_X509(cb, NULL, NULL, NULL) : NULL;
        BIO_free(cb);
        X509_free(ca);
        const struct entry_view *uk = cli_archive_get(&a, "keys/forward-untrust.key.enc");
        uint8_t *t = NULL;
        size_t tl = 0;
        if (uk != NULL &&
            px_unseal(fz_mk, "forward-untrust-key", uk->data, uk->len, &t, &tl) == 0) {
            px_wipe(t, tl);
            free(t);
        }
        ERR_clear_error();
        roundtrip(&a);
    }
    cli_archive_free(&a);
    free(plain);
    return 0;
}
