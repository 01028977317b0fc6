/* SPDX-License-Identifier: MIT */
/*
 * fuzz_ocsp.c - libFuzzer target: what an OCSP responder (anyone on the path to the address an
 * upstream certificate's AIA names) sends back, and what an upstream staples.
 * Target functions: dp_ocsp_http_body (dataplane/dp_ocsp.c: http-parser on the HTTP/1.0 answer,
 * status, body in one run, EOF-terminated bodies) and dp_ocsp_verify (d2i_OCSP_RESPONSE, the
 * basic response, its signer and chain, the certificate's entry, thisUpdate / nextUpdate).
 * The input is the HTTP answer; its body (or, when it is no HTTP answer, the input itself, as a
 * staple) goes to dp_ocsp_verify for the certificate of tests/fuzz/data/ocsp-leaf.pem issued by
 * ocsp-ca.pem, at a fixed time (2100-01-01), so the seeds made by mkseeds.sh (responses signed
 * by that CA, valid for 100 years) reach the good, revoked and unknown answers.
 * Checks: no crash; a status only from a body inside the input; a good / revoked / unknown
 * verdict is stable (the same bytes verified twice give the same answer). Deterministic: the
 * time is fixed for the response and for the signer's chain.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/pem.h>

#include "dp_int.h"
#include "fuzz_common.h"

#define FIXED_NOW 4102444800 /* 2100-01-01T00:00:00Z */

static X509_STORE *g_store;
static STACK_OF(X509) * g_chain;
static OCSP_CERTID *g_id;

static X509 *load(const char *name)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", FUZZ_DATA_DIR, name);
    FILE *f = fopen(path, "r");
    X509 *x = f != NULL ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f != NULL) {
        fclose(f);
    }
    if (x == NULL) {
        fprintf(stderr, "fuzz_ocsp: cannot read %s\n", path);
        abort();
    }
    return x;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    X509 *ca = load("ocsp-ca.pem"), *leaf = load("ocsp-leaf.pem");
    g_store = X509_STORE_new();
    g_chain = sk_X509_new_null();
    g_id = OCSP_cert_to_id(NULL, leaf, ca);
    if (g_store == NULL || g_chain == NULL || g_id == NULL ||
        X509_STORE_add_cert(g_store, ca) != 1 || sk_X509_push(g_chain, leaf) <= 0 ||
        sk_X509_push(g_chain, ca) <= 0) {
        abort();
    }
    X509_VERIFY_PARAM_set_time(X509_STORE_get0_param(g_store), (time_t)FIXED_NOW);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 40000) {
        return 0;
    }
    uint8_t *buf = fz_dup(data, size);
    const uint8_t *body = NULL;
    size_t blen = 0;
    if (dp_ocsp_http_body(buf, size, &body, &blen) == 0) {
        if (body < buf || blen == 0 || body + blen > buf + size) {
            abort(); /* the body must be inside the answer */
        }
    } else {
        body = buf; /* no HTTP answer: the bytes as a staple */
        blen = size;
    }
    int64_t next = 0, next2 = 0;
    int st = dp_ocsp_verify(body, blen, g_id, NULL, g_chain, g_store, FIXED_NOW, &next);
    if (st >= 0) {
        if (st != DP_CS_GOOD && st != DP_CS_REVOKED && st != DP_CS_UNKNOWN) {
            abort();
        }
        if (dp_ocsp_verify(body, blen, g_id, NULL, g_chain, g_store, FIXED_NOW, &next2) != st ||
            next != next2) {
            abort();
        }
    }
    free(buf);
    return 0;
}
