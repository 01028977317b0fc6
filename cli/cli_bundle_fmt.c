/* SPDX-License-Identifier: MIT */
/*
 * cli_bundle_fmt.c - the migration bundle's format, shared by `tlsmint backup`/`restore`
 * (cli_bundle.c) and the fuzz targets: the archive of named entries and the AEAD layer.
 * Owns nothing beyond the buffers it returns. Single-threaded (CLI).
 * Not here: reading the node's state, talking to the HSM, installing a restored node.
 */
#include "cli_bundle_fmt.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

void cli_archive_free(struct cli_archive *a)
{
    for (int i = 0; i < a->n; i++) {
        px_wipe(a->e[i].data, a->e[i].len);
        free(a->e[i].data);
    }
    a->n = 0;
}

int cli_archive_add(struct cli_archive *a, const char *name, const uint8_t *data, size_t len)
{
    PX_ENSURE(a->n < CLI_BUNDLE_ENTRIES, PX_E_FULL);
    struct entry_view *e = &a->e[a->n];
    snprintf(e->name, sizeof(e->name), "%s", name);
    e->data = malloc(len + 1);
    PX_ENSURE(e->data != NULL, -ENOMEM);
    memcpy(e->data, data, len);
    e->data[len] = 0;
    e->len = len;
    a->n++;
    return 0;
}

int cli_archive_add_file(struct cli_archive *a, const char *name, const char *path, char *err,
                            size_t errlen)
{
    uint8_t *d = NULL;
    size_t l = 0;
    if (px_read_file(path, CLI_BUNDLE_MAX, &d, &l) != 0) {
        snprintf(err, errlen, "cannot read %s", path);
        return PX_E_INVAL;
    }
    int r = cli_archive_add(a, name, d, l);
    px_wipe(d, l);
    free(d);
    return r;
}

const struct entry_view *cli_archive_get(const struct cli_archive *a, const char *name)
{
    for (int i = 0; i < a->n; i++) {
        if (strcmp(a->e[i].name, name) == 0) {
            return &a->e[i];
        }
    }
    return NULL;
}

/* name_len (1) | name | len (4, big endian) | bytes ... */
int cli_archive_pack(const struct cli_archive *a, uint8_t **out, size_t *outlen)
{
    size_t total = 0;
    for (int i = 0; i < a->n; i++) {
        total += 1 + strlen(a->e[i].name) + 4 + a->e[i].len;
    }
    uint8_t *b = malloc(total);
    PX_ENSURE(b != NULL, -ENOMEM);
    size_t off = 0;
    for (int i = 0; i < a->n; i++) {
        size_t nl = strlen(a->e[i].name);
        b[off++] = (uint8_t)nl;
        memcpy(b + off, a->e[i].name, nl);
        off += nl;
        uint32_t l = (uint32_t)a->e[i].len;
        b[off++] = (uint8_t)(l >> 24);
        b[off++] = (uint8_t)(l >> 16);
        b[off++] = (uint8_t)(l >> 8);
        b[off++] = (uint8_t)l;
        memcpy(b + off, a->e[i].data, a->e[i].len);
        off += a->e[i].len;
    }
    *out = b;
    *outlen = total;
    return 0;
}

int cli_archive_unpack(struct cli_archive *a, const uint8_t *b, size_t len)
{
    size_t off = 0;
    while (off < len) {
        size_t nl = b[off++];
        PX_ENSURE(nl > 0 && nl < 64 && off + nl + 4 <= len, PX_E_PROTO);
        char name[64];
        memcpy(name, b + off, nl);
        name[nl] = 0;
        off += nl;
        uint32_t l = (uint32_t)b[off] << 24 | (uint32_t)b[off + 1] << 16 |
                     (uint32_t)b[off + 2] << 8 | b[off + 3];
        off += 4;
        PX_ENSURE(l <= len - off, PX_E_PROTO);
        PX_TRY(cli_archive_add(a, name, b + off, l));
        off += l;
    }
    return 0;
}

void cli_sha256_hex(const uint8_t *d, size_t l, char out[65])
{
    uint8_t md[32];
    unsigned int ml = 0;
    EVP_Digest(d, l, md, &ml, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++) {
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    }
}

int cli_bundle_crypt(bool enc, const uint8_t mk[32], const uint8_t salt[16],
                        const uint8_t iv[12], const uint8_t *aad, size_t aadlen, const uint8_t *in,
                        size_t inlen, uint8_t *out, uint8_t tag[16])
{
    char info[64] = "tlsmint backup v1 ";
    size_t il = strlen(info);
    for (int i = 0; i < 16; i++) {
        snprintf(info + il + 2 * i, 3, "%02x", salt[i]);
    }
    uint8_t k[32];
    PX_TRY(px_hkdf(mk, info, k));
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int n = 0, ok;
    if (enc) {
        ok = c && EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, k, iv) == 1 &&
             EVP_EncryptUpdate(c, NULL, &n, aad, (int)aadlen) == 1 &&
             EVP_EncryptUpdate(c, out, &n, in, (int)inlen) == 1 &&
             EVP_EncryptFinal_ex(c, out + n, &n) == 1 &&
             EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1;
    } else {
        ok = c && EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, k, iv) == 1 &&
             EVP_DecryptUpdate(c, NULL, &n, aad, (int)aadlen) == 1 &&
             EVP_DecryptUpdate(c, out, &n, in, (int)inlen) == 1 &&
             EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, tag) == 1 &&
             EVP_DecryptFinal_ex(c, out + n, &n) == 1;
    }
    EVP_CIPHER_CTX_free(c);
    px_wipe(k, sizeof(k));
    return ok ? 0 : PX_E_CRYPTO;
}
