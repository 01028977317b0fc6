/* SPDX-License-Identifier: MIT */
/*
 * fuzz_frame_proxy.c - libFuzzer target: one SOCK_SEQPACKET message from a signer process, as
 * the proxy's dispatcher receives it (a compromised or buggy signer must not corrupt the proxy).
 * Target functions: hsm_frame__hdr, hsm_frame__parse_hello and hsm_frame__resp_next
 * (hsm_offload/hsm_frame.c), in the order member_read, handle_hello and handle_resp
 * (hsm_pool.c) call them, and what the proxy then does with the result: the hello's key info
 * formatted into log lines and its SubjectPublicKeyInfo parsed (cc_ca_load_trust), each answer's
 * signature copied into a job's HSM_SIG_MAX buffer.
 * Checks: no crash; a decoded hello has terminated strings and pub_len <= HSM_PUB_MAX; every
 * signature lies inside the frame. The input is a heap copy of exactly the message's size.
 * Deterministic.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509.h>

#include "fuzz_common.h"
#include "hsm_frame_int.h"

static void hello(const uint8_t *buf, size_t n)
{
    struct hsm_hello h;
    if (hsm_frame__parse_hello(buf, n, &h) != 0) {
        return;
    }
    const struct hsm_token_info *i = &h.info;
    if (i->pub_len > HSM_PUB_MAX) {
        abort();
    }
    char line[1024];
    snprintf(line, sizeof(line), "%s|%s|%s|%s|%s|%s|%s", h.err, i->label, i->serial,
             i->manufacturer, i->model, i->module_desc, i->key_label);
    const unsigned char *p = i->pub_der;
    EVP_PKEY *k = i->pub_len ? d2i_PUBKEY(NULL, &p, i->pub_len) : NULL;
    EVP_PKEY_free(k);
    ERR_clear_error();
}

static void resp(const uint8_t *buf, size_t n, uint16_t count)
{
    static uint8_t job_sig[HSM_SIG_MAX];
    size_t off = sizeof(struct hsm_frame_hdr);
    for (uint16_t i = 0; i < count; i++) {
        struct hsm_resp r;
        const uint8_t *sig = NULL;
        if (hsm_frame__resp_next(buf, n, &off, &r, &sig) != 0) {
            return;
        }
        if (r.sig_len > HSM_SIG_MAX || sig < buf || sig + r.sig_len > buf + n) {
            abort();
        }
        memcpy(job_sig, sig, r.sig_len);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > HSM_RESP_FRAME_MAX + 64) { /* the dispatcher's receive buffer */
        return 0;
    }
    uint8_t *buf = fz_dup(data, size);
    struct hsm_frame_hdr h;
    if (hsm_frame__hdr(buf, size, &h) == 0) {
        if (h.type == HSM_FRAME_HELLO) {
            hello(buf, size);
        } else if (h.type == HSM_FRAME_RESP && h.count <= HSM_BATCH_MAX) {
            resp(buf, size, h.count);
        }
    }
    free(buf);
    return 0;
}
