/* SPDX-License-Identifier: MIT */
/*
 * px_seal.c - files at rest: AES-256-GCM under the master key, and atomic writes.
 * Sealed format: "TMS1" | role length (1) | role | IV (12) | ciphertext | tag (16). The magic,
 * version and role are the associated data, so a file cannot be swapped for another role's.
 * Owns nothing; callable from any thread. Plaintext buffers are the caller's to wipe.
 * Invariants: a write is temp file + fsync + rename + fsync of the directory, so a crash leaves
 * the old file or the new one; secrets are never written unencrypted, not even temporarily.
 */
#include "px.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>

#define SEAL_MAGIC "TMS1"

int px_seal(const uint8_t key[32], const char *role, const uint8_t *pt, size_t ptlen,
            uint8_t **out, size_t *outlen)
{
    size_t rl = strlen(role);
    PX_ENSURE(rl > 0 && rl < 256, PX_E_INVAL);
    size_t hdr = 4 + 1 + rl;
    size_t total = hdr + 12 + ptlen + 16;
    uint8_t *buf = malloc(total);
    PX_ENSURE(buf != NULL, -ENOMEM);
    memcpy(buf, SEAL_MAGIC, 4);
    buf[4] = (uint8_t)rl;
    memcpy(buf + 5, role, rl);
    uint8_t *iv = buf + hdr;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n = 0, ok = ctx != NULL && RAND_bytes(iv, 12) == 1 &&
                    EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, iv) == 1 &&
                    EVP_EncryptUpdate(ctx, NULL, &n, buf, (int)hdr) == 1 &&
                    EVP_EncryptUpdate(ctx, iv + 12, &n, pt, (int)ptlen) == 1 &&
                    EVP_EncryptFinal_ex(ctx, iv + 12 + n, &n) == 1 &&
                    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, iv + 12 + ptlen) == 1;
    EVP_CIPHER_CTX_free(ctx);
    if (!ok) {
        free(buf);
        return PX_E_CRYPTO;
    }
    *out = buf;
    *outlen = total;
    return 0;
}

int px_unseal(const uint8_t key[32], const char *role, const uint8_t *in, size_t inlen,
              uint8_t **out, size_t *outlen)
{
    size_t rl = strlen(role);
    PX_ENSURE(inlen >= 4 + 1 + 12 + 16 && memcmp(in, SEAL_MAGIC, 4) == 0, PX_E_PROTO);
    PX_ENSURE(in[4] == rl && inlen >= 5 + rl + 12 + 16 && memcmp(in + 5, role, rl) == 0,
              PX_E_PROTO);
    size_t hdr = 5 + rl;
    const uint8_t *iv = in + hdr;
    size_t ctlen = inlen - hdr - 12 - 16;
    uint8_t *pt = malloc(ctlen + 1);
    PX_ENSURE(pt != NULL, -ENOMEM);
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n = 0, m = 0;
    int ok = ctx != NULL && EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, iv) == 1 &&
             EVP_DecryptUpdate(ctx, NULL, &n, in, (int)hdr) == 1 &&
             EVP_DecryptUpdate(ctx, pt, &n, iv + 12, (int)ctlen) == 1 &&
             EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, (void *)(iv + 12 + ctlen)) == 1 &&
             EVP_DecryptFinal_ex(ctx, pt + n, &m) == 1;
    EVP_CIPHER_CTX_free(ctx);
    if (!ok) {
        px_wipe(pt, ctlen + 1);
        free(pt);
        return PX_E_CRYPTO; /* wrong key, or the file was tampered with */
    }
    pt[ctlen] = 0;
    *out = pt;
    *outlen = ctlen;
    return 0;
}

int px_hkdf(const uint8_t key[32], const char *info, uint8_t out[32])
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
    size_t len = 32;
    int ok = ctx != NULL && EVP_PKEY_derive_init(ctx) == 1 &&
             EVP_PKEY_CTX_set_hkdf_md(ctx, EVP_sha256()) == 1 &&
             EVP_PKEY_CTX_set1_hkdf_key(ctx, key, 32) == 1 &&
             EVP_PKEY_CTX_add1_hkdf_info(ctx, (const unsigned char *)info, (int)strlen(info)) == 1 &&
             EVP_PKEY_derive(ctx, out, &len) == 1;
    EVP_PKEY_CTX_free(ctx);
    return ok ? 0 : PX_E_CRYPTO;
}

int px_write_atomic(const char *path, const void *data, size_t len, int mode)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, (mode_t)mode);
    if (fd < 0) {
        return -errno;
    }
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, (const uint8_t *)data + off, len - off);
        if (w <= 0) {
            int e = w < 0 ? errno : EIO;
            close(fd);
            unlink(tmp);
            return -e;
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0 || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return -e;
    }
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

int px_read_file(const char *path, size_t max, uint8_t **out, size_t *outlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -errno;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (size_t)st.st_size > max) {
        close(fd);
        return PX_E_INVAL;
    }
    uint8_t *buf = malloc((size_t)st.st_size + 1);
    if (buf == NULL) {
        close(fd);
        return -ENOMEM;
    }
    size_t off = 0;
    while (off < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + off, (size_t)st.st_size - off);
        if (r <= 0) {
            break;
        }
        off += (size_t)r;
    }
    close(fd);
    buf[off] = 0;
    *out = buf;
    *outlen = off;
    return 0;
}
