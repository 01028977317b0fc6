/* SPDX-License-Identifier: MIT */
/*
 * cc_bench.c - certcache benchmark bodies (see cc_bench.h). Owns a pool, a cache, two loop
 * handles and the upstream certificates it mints for. Not called by the proxy.
 */
#include "cc_bench.h"

#include "cc.h"
#include "cc_int.h" /* cc_mint_build: the benchmark times the X.509 work alone */

#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/x509v3.h>

struct cc_bench {
    struct px_cfg cfg;
    uint8_t mk[32];
    struct hsm_pool *pool;
    struct cc_ctx *cc;
    struct cc_loop *loop[2];
    X509 *hot;
    X509 **ups;
    int n, next;
    int inflight, done, failed;
    struct cc_ca ca;
    struct cc_fixed_ext fx;
    struct cc_leaf_key key;
};

/* An upstream leaf like a real one: CN + 3 SANs, EC key, signed by a throwaway key. */
static X509 *make_upstream(EVP_PKEY *k, int i)
{
    X509 *x = X509_new();
    char cn[64], san[200];
    snprintf(cn, sizeof(cn), "h%d.bench.test", i);
    snprintf(san, sizeof(san), "DNS:h%d.bench.test,DNS:www.h%d.bench.test,IP:10.0.%d.%d", i, i,
             (i >> 8) & 255, i & 255);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), i + 1);
    X509_NAME *nm = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC, (unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, nm);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400 * 90);
    X509_set_pubkey(x, k);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, san);
    X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
    X509_sign(x, k, EVP_sha256());
    return x;
}

static int make_ups(struct cc_bench *b, char *err, size_t errlen)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    if (k == NULL) {
        snprintf(err, errlen, "keygen failed");
        return -1;
    }
    static int base;
    for (int i = 0; i < b->n; i++) {
        X509_free(b->ups[i]);
        b->ups[i] = make_upstream(k, base + i + 1);
    }
    base += b->n;
    b->next = 0;
    EVP_PKEY_free(k);
    return 0;
}

struct cc_bench *bench_cc_new_from_env(int n, char *err, size_t errlen)
{
    const char *conf = getenv("HSM_BENCH_CONFIG"), *mkf = getenv("CC_BENCH_MK"),
               *exe = getenv("TLSMINT_BIN");
    if (conf == NULL || mkf == NULL || exe == NULL) {
        snprintf(err, errlen, "set HSM_BENCH_CONFIG, CC_BENCH_MK and TLSMINT_BIN");
        return NULL;
    }
    struct cc_bench *b = calloc(1, sizeof(*b));
    FILE *f = fopen(mkf, "r");
    if (b == NULL || f == NULL || fread(b->mk, 1, 32, f) != 32) {
        snprintf(err, errlen, "cannot read the master key %s", mkf);
        if (f) {
            fclose(f);
        }
        free(b);
        return NULL;
    }
    fclose(f);
    if (px_cfg_load(conf, &b->cfg, err, errlen) != 0) {
        free(b);
        return NULL;
    }
    px_log_set_level(PX_LOG_WARN);
    b->pool = hsm_pool_new(&b->cfg, exe, err, errlen);
    if (b->pool == NULL) {
        free(b);
        return NULL;
    }
    b->cc = cc_new_mk(&b->cfg, b->pool, b->mk, err, errlen);
    b->loop[0] = b->cc ? cc_loop_new(b->cc) : NULL;
    b->loop[1] = b->cc ? cc_loop_new(b->cc) : NULL;
    b->n = n;
    b->ups = calloc((size_t)n, sizeof(X509 *));
    if (b->loop[1] == NULL || b->ups == NULL || make_ups(b, err, errlen) != 0) {
        bench_cc_free(b);
        return NULL;
    }
    /* the hot upstream: minted once, then every lookup is a hit */
    EVP_PKEY *k = EVP_EC_gen("P-256");
    b->hot = make_upstream(k, 0);
    EVP_PKEY_free(k);
    if (bench_cc_hit(b, 0) != 0 || bench_cc_hit(b, 0) != 0) { /* mint it, then hit it */
        snprintf(err, errlen, "the hot upstream could not be minted");
        bench_cc_free(b);
        return NULL;
    }
    /* separate pieces for the build-only benchmark, as cc_get uses them */
    if (cc_ca_load_trust(&b->ca, &b->cfg, b->pool, err, errlen) != 0 ||
        cc_fixed_ext_init(&b->fx) != 0 || cc_keys_make(&b->key, 1, CC_KEY_EC, err, errlen) != 0) {
        bench_cc_free(b);
        return NULL;
    }
    return b;
}

void bench_cc_free(struct cc_bench *b)
{
    if (b == NULL) {
        return;
    }
    for (int i = 0; i < 2; i++) {
        if (b->loop[i] != NULL && cc_loop_free(b->loop[i]) != 0) {
            hsm_pool_free(b->pool); /* completes what is left */
            b->pool = NULL;
            cc_loop_poll(b->loop[i]);
            (void)cc_loop_free(b->loop[i]);
        }
    }
    cc_free(b->cc);
    hsm_pool_free(b->pool);
    for (int i = 0; b->ups && i < b->n; i++) {
        X509_free(b->ups[i]);
    }
    free(b->ups);
    X509_free(b->hot);
    cc_ca_fini(&b->ca);
    cc_fixed_ext_fini(&b->fx);
    cc_keys_free(&b->key, 1);
    free(b);
}

static void on_done(void *user, int status, struct cc_entry *e, uint64_t wait_ns)
{
    struct cc_bench *b = user;
    (void)wait_ns;
    b->inflight--;
    if (status == 0) {
        b->done++;
    } else {
        b->failed++;
    }
    cc_entry_unref(e);
}

int bench_cc_hit(struct cc_bench *b, int idx)
{
    struct cc_entry *e = NULL;
    int r = cc_get(b->loop[idx & 1], b->hot, true, CC_KEY_EC, on_done, b, &e);
    if (r == CC_PENDING) {
        b->inflight++;
        /* the first lookup may still be minting: wait for it (untimed in practice: once) */
        while (cc_loop_pending(b->loop[idx & 1]) > 0) {
            struct pollfd p = {.fd = cc_loop_fd(b->loop[idx & 1]), .events = POLLIN};
            poll(&p, 1, 100);
            cc_loop_poll(b->loop[idx & 1]);
        }
        return b->failed == 0 ? 0 : -1;
    }
    cc_entry_unref(e);
    return r == CC_HIT || r == CC_MINTED ? 0 : -1;
}

int bench_cc_build(struct cc_bench *b)
{
    uint8_t dg[64];
    int dl = 0;
    const char *why = NULL;
    X509 *x = cc_mint_build(&b->ca, &b->fx, &b->key, b->hot, 30, dg, &dl, &why);
    X509_free(x);
    return x != NULL ? 0 : -1;
}

int bench_cc_refill_needed(const struct cc_bench *b, int window)
{
    return b->next + window > b->n;
}

int bench_cc_refill(struct cc_bench *b, char *err, size_t errlen)
{
    while (b->inflight > 0) {
        struct pollfd p = {.fd = cc_loop_fd(b->loop[0]), .events = POLLIN};
        poll(&p, 1, 100);
        cc_loop_poll(b->loop[0]);
    }
    return make_ups(b, err, errlen);
}

int bench_cc_mint_step(struct cc_bench *b, int window, char *err, size_t errlen)
{
    while (b->inflight < window && b->next < b->n) {
        struct cc_entry *e = NULL;
        int r = cc_get(b->loop[0], b->ups[b->next++], true, CC_KEY_EC, on_done, b, &e);
        if (r == CC_PENDING) {
            b->inflight++;
        } else if (r >= 0) {
            cc_entry_unref(e); /* a hit: should not happen with fresh upstreams */
        } else {
            snprintf(err, errlen, "cc_get: %s", px_strerror(r));
            return r;
        }
    }
    int before = b->done;
    struct pollfd p = {.fd = cc_loop_fd(b->loop[0]), .events = POLLIN};
    poll(&p, 1, 1000);
    cc_loop_poll(b->loop[0]);
    if (b->failed > 0) {
        snprintf(err, errlen, "%d mint(s) failed", b->failed);
        return -1;
    }
    return b->done - before;
}
