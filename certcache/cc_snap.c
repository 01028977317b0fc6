/* SPDX-License-Identifier: MIT */
/*
 * cc_snap.c - warm restart: the leaf cache written to a sealed file and read back at start, so
 * a restart does not sign the working set again.
 * File: px_seal(key = HKDF(master key, "tlsmint cache-snapshot v1"), role "cache-snapshot",
 * the cc_wire.c snapshot plaintext); written with px_write_atomic (mode 0600).
 * Owns nothing past a call. Save runs on a thread that may block (the admin thread on its timer,
 * the main thread on SIGTERM), never on a loop; load runs at start-up before the listeners open.
 * Invariants: only leaves, CA ids and pool indexes are written, never a private key; a file that
 * does not open, parse or match this node is ignored as a whole (one warning), never a failure.
 * Not here: the cache itself (cc_cache.c).
 */
#include "cc_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SNAP_ROLE "cache-snapshot"
#define SNAP_MAX (1024u * 1024u * 1024u)
#define SNAP_MIN_LIFE_S 60

struct save_ctx {
    struct cc_snap_buf b;
    struct cc_ctx *cc;
    int err;
};

static int save_one(void *user, const uint8_t key[CC_KEY_LEN], X509 *x,
                    const struct cc_leaf_key *lk, int pool_idx, int64_t expires_unix)
{
    struct save_ctx *s = user;
    (void)lk;
    const struct cc_wire_ctx *wc = cc_cache__wire_ctx(s->cc, (enum cc_ca_kind)key[32]);
    unsigned char der[CC_WIRE_DER_MAX], *q = der;
    int n = i2d_X509(x, NULL);
    if (s->err != 0 || wc == NULL || n <= 0 || n > (int)sizeof(der) || i2d_X509(x, &q) != n) {
        return -1;
    }
    struct cc_wire_entry w = {.key_kind = key[33], .pool_idx = (uint8_t)pool_idx, .der = der,
                              .der_len = (uint32_t)n};
    memcpy(w.ca_id, wc->ca_id, CC_CAID_LEN);
    int r = cc_snap_buf_add(&s->b, key, &w, expires_unix);
    if (r != 0) {
        s->err = r;
        return -1;
    }
    return 0;
}

int cc_snapshot_save(struct cc_ctx *cc, const char *path, char *err, size_t errlen)
{
    const uint8_t *key = cc_cache__snap_key(cc);
    if (key == NULL) {
        snprintf(err, errlen, "[cache] snapshot needs the master key ([master_key] file)");
        return PX_E_CONFIG;
    }
    struct save_ctx s = {.cc = cc};
    if (cc_snap_buf_init(&s.b) != 0) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int n = cc_cache__each(cc, SNAP_MIN_LIFE_S, save_one, &s);
    uint8_t *sealed = NULL;
    size_t slen = 0;
    int r = s.err;
    if (r == 0) {
        r = px_seal(key, SNAP_ROLE, s.b.p, s.b.len, &sealed, &slen);
    }
    cc_snap_buf_fini(&s.b);
    if (r == 0) {
        r = px_write_atomic(path, sealed, slen, 0600);
    }
    free(sealed);
    if (r != 0) {
        snprintf(err, errlen, "cannot write the cache snapshot %s: %s", path, px_strerror(r));
        return r;
    }
    cc_cache__snap_counts(cc, UINT64_MAX, (uint64_t)n);
    return n;
}

struct load_ctx {
    struct cc_ctx *cc;
    int loaded, skipped;
};

static void load_one(void *user, const uint8_t key[CC_KEY_LEN], const struct cc_wire_entry *w,
                     int64_t expires_unix)
{
    struct load_ctx *l = user;
    const struct cc_wire_ctx *wc = cc_cache__wire_ctx(l->cc, (enum cc_ca_kind)key[32]);
    enum cc_reject why;
    /* sealed by us: authentic, but the CA or the pool may have changed since (no re-verify) */
    X509 *x = wc != NULL ? cc_wire_check(wc, key, w, false, &why) : NULL;
    if (x == NULL || cc_cache__insert(l->cc, key, x, w->pool_idx, expires_unix) != 0) {
        X509_free(x);
        l->skipped++;
        return;
    }
    l->loaded++;
}

int cc_snapshot_load(struct cc_ctx *cc, const char *path)
{
    const uint8_t *key = cc_cache__snap_key(cc);
    uint8_t *raw = NULL, *pt = NULL;
    size_t rlen = 0, plen = 0;
    int r = px_read_file(path, SNAP_MAX, &raw, &rlen);
    if (r == -ENOENT) {
        px_log(PX_LOG_INFO, "cc", "no cache snapshot at %s yet: cold start", path);
        return 0;
    }
    const char *why = NULL;
    if (key == NULL) {
        why = "no master key to open it with";
    } else if (r != 0) {
        why = px_strerror(r);
    } else if ((r = px_unseal(key, SNAP_ROLE, raw, rlen, &pt, &plen)) != 0) {
        why = r == PX_E_PROTO ? "not a cache snapshot, or truncated"
                              : "does not open: truncated, modified, or sealed by another master key";
    }
    struct load_ctx l = {.cc = cc};
    if (why == NULL && (r = cc_snap_parse(pt, plen, load_one, &l)) < 0) {
        why = "malformed contents";
    }
    free(raw);
    if (pt != NULL) {
        px_wipe(pt, plen);
        free(pt);
    }
    if (why != NULL) {
        px_log(PX_LOG_WARN, "cc", "cache snapshot %s ignored (%s): cold start", path, why);
        return 0;
    }
    px_log(PX_LOG_INFO, "cc", "cache snapshot %s: %d leaves loaded, %d skipped (expired, "
           "another CA or leaf key)", path, l.loaded, l.skipped);
    cc_cache__snap_counts(cc, (uint64_t)l.loaded, UINT64_MAX);
    return l.loaded;
}
