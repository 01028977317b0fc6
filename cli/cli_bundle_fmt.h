/* SPDX-License-Identifier: MIT */
/*
 * cli_bundle_fmt.h - the migration bundle's format (private to cli/ and its fuzz targets).
 * "TMB1" | salt (16) | IV (12) | AES-256-GCM(payload) | tag (16); the payload is a list of
 * entries: name_len (1) | name | len (4, big endian) | bytes.
 */
#ifndef CLI_BUNDLE_FMT_H
#define CLI_BUNDLE_FMT_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cli.h"
#include "px.h"

#define CLI_BUNDLE_MAGIC "TMB1"
#define CLI_BUNDLE_MAX (16 << 20)
#define CLI_BUNDLE_ENTRIES 16

struct cli_archive {
    struct entry_view e[CLI_BUNDLE_ENTRIES];
    int n;
};

/* Wipes and frees every entry. */
void cli_archive_free(struct cli_archive *a);
/* Adds a copy of data (NUL-terminated after len) under name. */
PX_MUST_CHECK int cli_archive_add(struct cli_archive *a, const char *name, const uint8_t *data,
                                  size_t len);
PX_MUST_CHECK int cli_archive_add_file(struct cli_archive *a, const char *name, const char *path,
                                       char *err, size_t errlen);
/* Borrowed view of the entry called name, or NULL. */
const struct entry_view *cli_archive_get(const struct cli_archive *a, const char *name);
/* *out is new (malloc). */
PX_MUST_CHECK int cli_archive_pack(const struct cli_archive *a, uint8_t **out, size_t *outlen);
PX_MUST_CHECK int cli_archive_unpack(struct cli_archive *a, const uint8_t *b, size_t len);
/* Lower-case hex SHA-256 of d. */
void cli_sha256_hex(const uint8_t *d, size_t l, char out[65]);
/* AES-256-GCM under HKDF(mk, "tlsmint backup v1 " + hex(salt)); aad is authenticated. */
PX_MUST_CHECK int cli_bundle_crypt(bool enc, const uint8_t mk[32], const uint8_t salt[16],
                                   const uint8_t iv[12], const uint8_t *aad, size_t aadlen,
                                   const uint8_t *in, size_t inlen, uint8_t *out, uint8_t tag[16]);

/*
 * The outer layer: magic, lengths, AEAD. *plain is new (NUL-terminated after *plen bytes), the
 * caller wipes and frees it. PX_E_PROTO: not a bundle or truncated; PX_E_CRYPTO: wrong master
 * key or modified.
 */
PX_MUST_CHECK int cli_bundle_open(const uint8_t mk[32], const uint8_t *blob, size_t blen,
                                  uint8_t **plain, size_t *plen);

/* What restore needs from a decrypted bundle; the entries are borrowed from the archive. */
struct cli_bundle_view {
    const struct entry_view *man, *cf, *cert;
    char old_dir[PATH_MAX]; /* the exporting node's state directory ("" if not said) */
};

/*
 * The decrypted layer: unpacks plain into a (empty on entry; the caller frees it), requires the
 * manifest, config and CA entries and checks every entry against the manifest's SHA-256.
 * PX_E_PROTO with one line in err when the bundle is refused.
 */
PX_MUST_CHECK int cli_bundle_check(const uint8_t *plain, size_t plen, struct cli_archive *a,
                                   struct cli_bundle_view *v, char *err, size_t errlen);

/*
 * The bundle's config text with old_dir/ replaced by new_dir/ in every line but module and env
 * lines (the HSM is shared). New string (malloc), NULL when out of memory.
 */
char *cli_bundle_rewrite_config(const char *text, const char *old_dir, const char *new_dir);

#endif
