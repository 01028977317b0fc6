/* SPDX-License-Identifier: MIT */
/*
 * fuzz_dp.c - set-up shared by the dataplane TLS fuzz targets (see fuzz_dp.h). Nothing here is
 * on the path being fuzzed except what it calls: dp_tls_ctx_init, dp_policy_load, dp_conn_new,
 * dp_conn_abort/release, dp_alog_new.
 */
#include "fuzz_dp.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>

#include "fuzz_common.h"

static struct px_cfg g_cfg;
static struct dp_server g_srv;
static struct dp_loop g_loop;
static struct dp_conn g_conn;
static struct dp_gen *g_gen;
static X509 *g_leaf[2];
static EVP_PKEY *g_leaf_key[2];

static EVP_PKEY *rsa_key(void)
{
    EVP_PKEY *k = EVP_RSA_gen(2048);
    if (k == NULL) {
        abort();
    }
    return k;
}

void fz_dp_init(const char *upstream_ca)
{
    char text[1024], err[512];
    snprintf(text, sizeof(text),
             "[policy]\nbypass = %s\n[upstream]\nca_file = %s\n[log]\nlevel = error\n",
             FZ_DP_BYPASS, upstream_ca ? upstream_ca : "/etc/ssl/certs/ca-certificates.crt");
    if (px_cfg_load_string("fuzz.conf", text, &g_cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "fuzz_dp: %s\n", err);
        abort();
    }
    px_log_set_level(PX_LOG_ERROR);
    g_gen = calloc(1, sizeof(*g_gen));
    if (g_gen == NULL) {
        abort();
    }
    atomic_init(&g_gen->refs, 1); /* the fuzzer's own: connections take and drop theirs */
    g_gen->cfg = &g_cfg;
    if (dp_tls_ctx_init(g_gen, &g_cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "fuzz_dp: %s\n", err);
        abort();
    }
    if (dp_policy_load(g_gen, &g_cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "fuzz_dp: %s\n", err);
        abort();
    }
    g_srv.cfg = &g_cfg;
    g_srv.excl = dp_excl_new(64); /* the exclusion cache the policy stage consults */
    g_srv.proofs = dp_excl_new(64); /* and the names proven for their destinations */
    if (g_srv.excl == NULL || g_srv.proofs == NULL) {
        abort();
    }
    g_srv.alog = dp_alog_new("/dev/null", 0600, PX_SINK_ACCESS, err, sizeof(err));
    g_loop.srv = &g_srv;
    g_loop.g = g_gen;
    g_srv.max_conns = 1; /* the one connection below: a table of one slot, free */
    static struct dp_conn *chunk[1] = {&g_conn};
    g_loop.chunks = chunk;
    g_loop.nchunks = 1;
    g_loop.used = 1;
    g_loop.free_list = &g_conn;
    for (int i = 0; i < 2; i++) {
        g_leaf_key[i] = i == CC_KEY_EC ? fz_ec_key() : rsa_key();
        g_leaf[i] = fz_ca_cert(g_leaf_key[i], "fuzz.example");
    }
}

struct dp_conn *fz_dp_conn(void)
{
    /* what one input taught the exclusion cache (a handshake that ended on EOF counts as a
     * pinned app) must not change how the next input is decided: deterministic */
    dp_excl_clear(g_srv.excl, NULL);
    dp_excl_clear(g_srv.proofs, NULL);
    struct dp_conn *c = dp_conn_new(&g_loop, -1, NULL);
    if (c == NULL) {
        abort(); /* the previous input's connection was not released */
    }
    c->transparent = true;
    struct sockaddr_in *d = (struct sockaddr_in *)&c->dst;
    d->sin_family = AF_INET;
    d->sin_port = htons(443);
    inet_pton(AF_INET, "192.0.2.10", &d->sin_addr);
    c->dstlen = sizeof(*d);
    c->port = 443;
    c->up_connected = true; /* the policy stage then decides without connecting */
    return c;
}

void fz_dp_end(struct dp_conn *c)
{
    if (c->state != S_FREE) {
        dp_conn_abort(c, O_SHUTDOWN);
    }
    if (c->state != S_FREE) {
        abort(); /* nothing is in flight: the release must have happened */
    }
    ERR_clear_error();
}

void fz_dp_give_leaf(struct dp_conn *c)
{
    struct side *cl = &c->s[D_CLIENT];
    int k = c->keykind == CC_KEY_RSA ? CC_KEY_RSA : CC_KEY_EC;
    if (SSL_use_cert_and_key(cl->ssl, g_leaf[k], g_leaf_key[k], NULL, 1) != 1) {
        c->fail_hello = true;
    }
    c->leaf_ready = true;
    dp_conn_enter(c, S_CLIENT_HANDSHAKE);
}
