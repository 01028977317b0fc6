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
        PX_ENSURE(memchr(b + off, 0, nl) == NULL, PX_E_PROTO); /* names are C strings */
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

int cli_bundle_crypt(bool enc, const uint8_t mk[32], const uint8_t salt[16], const uint8_t iv[12],
                     const uint8_t *aad, size_t aadlen, const uint8_t *in, size_t inlen,
                     uint8_t *out, uint8_t tag[16])
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

int cli_bundle_open(const uint8_t mk[32], const uint8_t *blob, size_t blen, uint8_t **plain,
                    size_t *plen)
{
    *plain = NULL;
    *plen = 0;
    PX_ENSURE(blen >= 4 + 16 + 12 + 16 && blen <= CLI_BUNDLE_MAX &&
                  memcmp(blob, CLI_BUNDLE_MAGIC, 4) == 0,
              PX_E_PROTO);
    size_t n = blen - 32 - 16;
    uint8_t tag[16];
    memcpy(tag, blob + 32 + n, sizeof(tag));
    uint8_t *p = malloc(n + 1);
    PX_ENSURE(p != NULL, -ENOMEM);
    if (cli_bundle_crypt(false, mk, blob + 4, blob + 20, blob, 32, blob + 32, n, p, tag) != 0) {
        px_wipe(p, n + 1);
        free(p);
        return PX_E_CRYPTO;
    }
    p[n] = 0;
    *plain = p;
    *plen = n;
    return 0;
}

int cli_bundle_check(const uint8_t *plain, size_t plen, struct cli_archive *a,
                     struct cli_bundle_view *v, char *err, size_t errlen)
{
    memset(v, 0, sizeof(*v));
    if (cli_archive_unpack(a, plain, plen) != 0) {
        snprintf(err, errlen, "the bundle's contents are malformed");
        return PX_E_PROTO;
    }
    v->man = cli_archive_get(a, "manifest.json");
    v->cf = cli_archive_get(a, "tlsmint.conf");
    v->cert = cli_archive_get(a, "ca/forward-trust.pem");
    if (v->man == NULL || v->cf == NULL || v->cert == NULL) {
        snprintf(err, errlen, "the bundle lacks its manifest, config or CA");
        return PX_E_PROTO;
    }
    const char *man = (const char *)v->man->data; /* NUL-terminated by cli_archive_add */
    for (int i = 0; i < a->n; i++) {              /* every entry as the manifest lists it */
        if (&a->e[i] == v->man) {
            continue;
        }
        char h[65], needle[200];
        cli_sha256_hex(a->e[i].data, a->e[i].len, h);
        snprintf(needle, sizeof(needle), "{\"name\":\"%s\",\"sha256\":\"%s\"}", a->e[i].name, h);
        if (strstr(man, needle) == NULL) {
            snprintf(err, errlen, "%s does not match the manifest", a->e[i].name);
            return PX_E_PROTO;
        }
    }
    const char *sd = strstr(man, "\"state_dir\":\"");
    if (sd != NULL) {
        sd += 13;
        snprintf(v->old_dir, sizeof(v->old_dir), "%.*s", (int)strcspn(sd, "\""), sd);
    }
    return 0;
}

/* Replaces old_dir/ with new_dir/ in every line but module and env lines (the HSM is shared). */
char *cli_bundle_rewrite_config(const char *text, const char *old_dir, const char *new_dir)
{
    char *out = NULL;
    size_t ol = 0;
    FILE *o = open_memstream(&out, &ol);
    if (o == NULL) {
        return NULL;
    }
    const char *p = text;
    size_t odl = strlen(old_dir);
    while (*p) {
        size_t ll = strcspn(p, "\n");
        const char *k = p + strspn(p, " \t");
        /* an empty old_dir matches nowhere (it would match before every character, forever) */
        bool keep = odl == 0 || strncmp(k, "module", 6) == 0 || strncmp(k, "env", 3) == 0;
        for (size_t i = 0; i < ll;) {
            if (!keep && i + odl + 1 <= ll && strncmp(p + i, old_dir, odl) == 0 &&
                p[i + odl] == '/') {
                fputs(new_dir, o);
                i += odl;
            } else {
                fputc(p[i], o);
                i++;
            }
        }
        fputc('\n', o);
        p += ll;
        if (*p == '\n') {
            p++;
        }
    }
    fclose(o);
    return out;
}
