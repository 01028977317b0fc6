/* SPDX-License-Identifier: MIT */
/*
 * cc_wire.c - the two byte formats a leaf leaves the process in: a shared-cache entry (Redis
 * value) and a snapshot record, and the checks an entry must pass before it is served.
 * Shared entry: "TMC1" | CA id (32: SHA-256 of the CA certificate DER) | key kind (1) |
 * pool index (1) | DER length (4, BE) | leaf DER | HMAC-SHA256 (32) over
 * "tlsmint shared entry v1" | cache key (34) | everything before the HMAC, under a key derived
 * from the master key. Binding the cache key means an entry copied under another key (another
 * upstream certificate) fails, so a writer to Redis without the master key cannot move a good
 * upstream's leaf onto a forged server.
 * Snapshot: "TMSN" | version (1) | count (4, BE) | records, each cache key (34) | CA id (32) |
 * pool index (1) | expiry in unix seconds (8, BE) | DER length (4, BE) | DER; the whole is
 * sealed (px_seal) by the caller.
 * Owns nothing; pure functions callable from any thread. Never handles a private key: an entry
 * names a pool key by index, and the check compares the leaf's public key with that pool key.
 * Not here: Redis (cc_shared.c), files (cc_snap.c).
 */
#include "cc_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/hmac.h>

#define SH_MAGIC "TMC1"
#define SH_LABEL "tlsmint shared entry v1"
#define SH_HDR (4 + CC_CAID_LEN + 1 + 1 + 4)
#define SH_MAC 32
#define SNAP_MAGIC "TMSN"
#define SNAP_VERSION 1
#define SNAP_REC_HDR (CC_KEY_LEN + CC_CAID_LEN + 1 + 8 + 4)

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put_be64(uint8_t *p, uint64_t v)
{
    put_be32(p, (uint32_t)(v >> 32));
    put_be32(p + 4, (uint32_t)v);
}

static uint64_t get_be64(const uint8_t *p)
{
    return (uint64_t)get_be32(p) << 32 | get_be32(p + 4);
}

const char *cc_reject_name(enum cc_reject why)
{
    switch (why) {
    case CC_REJ_FORMAT:
        return "malformed";
    case CC_REJ_HMAC:
        return "bad HMAC";
    case CC_REJ_CA:
        return "another CA";
    case CC_REJ_VERIFY:
        return "does not verify against the CA";
    case CC_REJ_KEY:
        return "leaf key not in the pool";
    case CC_REJ_EXPIRED:
        return "expired";
    }
    return "?";
}

static int entry_mac(const uint8_t mac_key[32], const uint8_t key[CC_KEY_LEN], const uint8_t *v,
                     size_t vlen, uint8_t out[SH_MAC])
{
    size_t ll = sizeof(SH_LABEL) - 1;
    size_t n = ll + CC_KEY_LEN + vlen;
    uint8_t *buf = malloc(n);
    PX_ENSURE(buf != NULL, -ENOMEM);
    memcpy(buf, SH_LABEL, ll);
    memcpy(buf + ll, key, CC_KEY_LEN);
    memcpy(buf + ll + CC_KEY_LEN, v, vlen);
    unsigned int ml = 0;
    unsigned char *r = HMAC(cc_md_sha256(), mac_key, 32, buf, n, out, &ml);
    free(buf);
    return r != NULL && ml == SH_MAC ? 0 : PX_E_CRYPTO;
}

int cc_wire_encode(const uint8_t mac_key[32], const uint8_t key[CC_KEY_LEN],
                   const struct cc_wire_entry *w, uint8_t **out, size_t *outlen)
{
    PX_ENSURE(w->der != NULL && w->der_len > 0 && w->der_len <= CC_WIRE_DER_MAX, PX_E_INVAL);
    size_t n = SH_HDR + w->der_len + SH_MAC;
    uint8_t *b = malloc(n);
    PX_ENSURE(b != NULL, -ENOMEM);
    memcpy(b, SH_MAGIC, 4);
    memcpy(b + 4, w->ca_id, CC_CAID_LEN);
    b[4 + CC_CAID_LEN] = w->key_kind;
    b[5 + CC_CAID_LEN] = w->pool_idx;
    put_be32(b + 6 + CC_CAID_LEN, w->der_len);
    memcpy(b + SH_HDR, w->der, w->der_len);
    int r = entry_mac(mac_key, key, b, SH_HDR + w->der_len, b + SH_HDR + w->der_len);
    if (r != 0) {
        free(b);
        return r;
    }
    *out = b;
    *outlen = n;
    return 0;
}

int cc_wire_decode(const uint8_t mac_key[32], const uint8_t key[CC_KEY_LEN], const uint8_t *in,
                   size_t len, struct cc_wire_entry *w, enum cc_reject *why)
{
    *why = CC_REJ_FORMAT;
    PX_ENSURE(len >= SH_HDR + SH_MAC && memcmp(in, SH_MAGIC, 4) == 0, PX_E_PROTO);
    uint32_t dl = get_be32(in + 6 + CC_CAID_LEN);
    PX_ENSURE(dl > 0 && dl <= CC_WIRE_DER_MAX && (size_t)dl + SH_HDR + SH_MAC == len, PX_E_PROTO);
    uint8_t mac[SH_MAC];
    PX_TRY(entry_mac(mac_key, key, in, SH_HDR + dl, mac));
    if (CRYPTO_memcmp(mac, in + SH_HDR + dl, SH_MAC) != 0) {
        *why = CC_REJ_HMAC;
        return PX_E_CRYPTO;
    }
    memset(w, 0, sizeof(*w));
    memcpy(w->ca_id, in + 4, CC_CAID_LEN);
    w->key_kind = in[4 + CC_CAID_LEN];
    w->pool_idx = in[5 + CC_CAID_LEN];
    w->der = in + SH_HDR;
    w->der_len = dl;
    return 0;
}

X509 *cc_wire_check(const struct cc_wire_ctx *c, const uint8_t key[CC_KEY_LEN],
                    const struct cc_wire_entry *w, bool verify, enum cc_reject *why)
{
    *why = CC_REJ_FORMAT;
    int nkeys = key[33] == CC_KEY_RSA ? c->nrsa : c->nec;
    const uint8_t *const *spki = key[33] == CC_KEY_RSA ? c->rsa_spki : c->ec_spki;
    const int *spki_len = key[33] == CC_KEY_RSA ? c->rsa_spki_len : c->ec_spki_len;
    if (w->key_kind != key[33] || key[32] != (uint8_t)c->ca_kind) {
        return NULL;
    }
    if (CRYPTO_memcmp(w->ca_id, c->ca_id, CC_CAID_LEN) != 0) {
        *why = CC_REJ_CA;
        return NULL;
    }
    if (w->pool_idx >= nkeys) {
        *why = CC_REJ_KEY;
        return NULL;
    }
    const unsigned char *p = w->der;
    X509 *x = d2i_X509(NULL, &p, (long)w->der_len);
    if (x == NULL || p != w->der + w->der_len) {
        X509_free(x);
        return NULL;
    }
    /* the leaf's SubjectPublicKeyInfo must be the pool key the entry names, byte for byte */
    unsigned char spk[1024], *q = spk;
    X509_PUBKEY *xpk = X509_get_X509_PUBKEY(x);
    int n = xpk != NULL ? i2d_X509_PUBKEY(xpk, NULL) : -1;
    if (n <= 0 || n > (int)sizeof(spk) || i2d_X509_PUBKEY(xpk, &q) != n ||
        n != spki_len[w->pool_idx] || memcmp(spk, spki[w->pool_idx], (size_t)n) != 0) {
        *why = CC_REJ_KEY;
        X509_free(x);
        return NULL;
    }
    if (X509_NAME_cmp(X509_get_issuer_name(x), c->ca_name) != 0 ||
        (verify && X509_verify(x, c->ca_pub) != 1)) {
        ERR_clear_error();
        *why = CC_REJ_VERIFY;
        X509_free(x);
        return NULL;
    }
    if (X509_cmp_time(X509_get0_notAfter(x), NULL) <= 0) {
        *why = CC_REJ_EXPIRED;
        X509_free(x);
        return NULL;
    }
    return x;
}

/* ---- snapshot --------------------------------------------------------------------------- */

int cc_snap_buf_init(struct cc_snap_buf *b)
{
    memset(b, 0, sizeof(*b));
    b->cap = 4096;
    b->p = malloc(b->cap);
    PX_ENSURE(b->p != NULL, -ENOMEM);
    memcpy(b->p, SNAP_MAGIC, 4);
    b->p[4] = SNAP_VERSION;
    put_be32(b->p + 5, 0);
    b->len = 9;
    return 0;
}

int cc_snap_buf_add(struct cc_snap_buf *b, const uint8_t key[CC_KEY_LEN],
                    const struct cc_wire_entry *w, int64_t expires_unix)
{
    PX_ENSURE(w->der_len > 0 && w->der_len <= CC_WIRE_DER_MAX, PX_E_INVAL);
    size_t need = b->len + SNAP_REC_HDR + w->der_len;
    if (need > b->cap) {
        size_t nc = b->cap;
        while (nc < need) {
            nc *= 2;
        }
        uint8_t *np = realloc(b->p, nc);
        PX_ENSURE(np != NULL, -ENOMEM);
        b->p = np;
        b->cap = nc;
    }
    uint8_t *r = b->p + b->len;
    memcpy(r, key, CC_KEY_LEN);
    memcpy(r + CC_KEY_LEN, w->ca_id, CC_CAID_LEN);
    r[CC_KEY_LEN + CC_CAID_LEN] = w->pool_idx;
    put_be64(r + CC_KEY_LEN + CC_CAID_LEN + 1, (uint64_t)expires_unix);
    put_be32(r + CC_KEY_LEN + CC_CAID_LEN + 9, w->der_len);
    memcpy(r + SNAP_REC_HDR, w->der, w->der_len);
    b->len = need;
    b->count++;
    put_be32(b->p + 5, b->count);
    return 0;
}

void cc_snap_buf_fini(struct cc_snap_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

int cc_snap_parse(const uint8_t *in, size_t len, cc_snap_rec_fn fn, void *user)
{
    PX_ENSURE(len >= 9 && memcmp(in, SNAP_MAGIC, 4) == 0 && in[4] == SNAP_VERSION, PX_E_PROTO);
    uint32_t count = get_be32(in + 5);
    size_t off = 9;
    /* the whole buffer is checked before the first record is handed out */
    for (uint32_t i = 0; i < count; i++) {
        PX_ENSURE(len - off >= SNAP_REC_HDR, PX_E_SHORT);
        uint32_t dl = get_be32(in + off + CC_KEY_LEN + CC_CAID_LEN + 9);
        PX_ENSURE(dl > 0 && dl <= CC_WIRE_DER_MAX && len - off - SNAP_REC_HDR >= dl, PX_E_SHORT);
        off += SNAP_REC_HDR + dl;
    }
    PX_ENSURE(off == len, PX_E_PROTO);
    off = 9;
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *r = in + off;
        struct cc_wire_entry w = {0};
        memcpy(w.ca_id, r + CC_KEY_LEN, CC_CAID_LEN);
        w.key_kind = r[CC_KEY_LEN - 1];
        w.pool_idx = r[CC_KEY_LEN + CC_CAID_LEN];
        int64_t exp = (int64_t)get_be64(r + CC_KEY_LEN + CC_CAID_LEN + 1);
        w.der_len = get_be32(r + CC_KEY_LEN + CC_CAID_LEN + 9);
        w.der = r + SNAP_REC_HDR;
        fn(user, r, &w, exp);
        off += SNAP_REC_HDR + w.der_len;
    }
    return (int)count;
}
