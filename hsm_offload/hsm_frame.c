/* SPDX-License-Identifier: MIT */
/*
 * hsm_frame.c - decoding the frames of the proxy <-> signer socket, for both ends.
 * Owns nothing; pure functions over a received buffer, called on the dispatcher thread (proxy)
 * and the signer's main thread.
 * Invariants: nothing is read outside buf[0, n); a decoded hello has every string NUL-terminated
 * and pub_len <= HSM_PUB_MAX; a decoded answer has sig_len <= HSM_SIG_MAX and its signature
 * inside the frame. A signer that is compromised or buggy can make the proxy drop it, never read
 * or write out of bounds (and the other way round).
 * Not here: what the frames mean (hsm_pool.c, hsm_signer.c), sending them.
 */
#include "hsm_frame_int.h"

#include <string.h>

int hsm_frame__hdr(const uint8_t *buf, size_t n, struct hsm_frame_hdr *h)
{
    PX_ENSURE(n >= sizeof(*h), PX_E_SHORT);
    memcpy(h, buf, sizeof(*h));
    PX_ENSURE(h->magic == HSM_FRAME_MAGIC, PX_E_PROTO);
    return 0;
}

int hsm_frame__parse_to_signer(const uint8_t *buf, size_t n, const struct hsm_req **reqs,
                               uint16_t *count, struct hsm_ctrl *ctrl)
{
    struct hsm_frame_hdr h;
    PX_TRY(hsm_frame__hdr(buf, n, &h));
    if (h.type == HSM_FRAME_CTRL) {
        PX_ENSURE(n == sizeof(h) + sizeof(*ctrl), PX_E_PROTO);
        memcpy(ctrl, buf + sizeof(h), sizeof(*ctrl));
        return HSM_FRAME_CTRL;
    }
    PX_ENSURE(h.type == HSM_FRAME_REQ && h.count <= HSM_BATCH_MAX &&
                  n == sizeof(h) + (size_t)h.count * sizeof(struct hsm_req),
              PX_E_PROTO);
    *reqs = (const struct hsm_req *)(const void *)(buf + sizeof(h));
    *count = h.count;
    return HSM_FRAME_REQ;
}

static bool terminated(const char *s, size_t cap)
{
    return memchr(s, '\0', cap) != NULL;
}

int hsm_frame__parse_hello(const uint8_t *buf, size_t n, struct hsm_hello *out)
{
    PX_ENSURE(n == sizeof(struct hsm_frame_hdr) + sizeof(*out), PX_E_PROTO);
    memcpy(out, buf + sizeof(struct hsm_frame_hdr), sizeof(*out));
    const struct hsm_token_info *i = &out->info;
    PX_ENSURE(terminated(out->err, sizeof(out->err)) && terminated(i->serial, sizeof(i->serial)) &&
                  terminated(i->label, sizeof(i->label)) &&
                  terminated(i->manufacturer, sizeof(i->manufacturer)) &&
                  terminated(i->model, sizeof(i->model)) &&
                  terminated(i->module_desc, sizeof(i->module_desc)) &&
                  terminated(i->key_label, sizeof(i->key_label)),
              PX_E_PROTO);
    PX_ENSURE(i->pub_len <= HSM_PUB_MAX, PX_E_PROTO);
    /* the enum came from another process: only the values this binary knows */
    int kt = (int)i->key_type;
    PX_ENSURE(kt == HSM_KEY_NONE || kt == HSM_KEY_EC || kt == HSM_KEY_RSA, PX_E_PROTO);
    PX_ENSURE(out->nx <= HSM_XKEYS_MAX, PX_E_PROTO);
    for (uint32_t k = 0; k < out->nx; k++) {
        const struct hsm_key_info *x = &out->xinfo[k];
        int xt = (int)x->key_type;
        PX_ENSURE(terminated(x->label, sizeof(x->label)) && terminated(x->err, sizeof(x->err)) &&
                      x->pub_len <= HSM_PUB_MAX &&
                      (xt == HSM_KEY_NONE || xt == HSM_KEY_EC || xt == HSM_KEY_RSA),
                  PX_E_PROTO);
    }
    return 0;
}

int hsm_frame__resp_next(const uint8_t *buf, size_t n, size_t *off, struct hsm_resp *r,
                         const uint8_t **sig)
{
    PX_ENSURE(*off <= n && n - *off >= sizeof(*r), PX_E_SHORT);
    memcpy(r, buf + *off, sizeof(*r));
    PX_ENSURE(r->sig_len <= HSM_SIG_MAX && n - *off - sizeof(*r) >= r->sig_len, PX_E_PROTO);
    *sig = buf + *off + sizeof(*r);
    /* each answer starts 8-byte aligned, as the signer writes them */
    *off = (*off + sizeof(*r) + r->sig_len + 7) & ~(size_t)7;
    return 0;
}
