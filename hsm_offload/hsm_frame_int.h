/* SPDX-License-Identifier: MIT */
/*
 * hsm_frame_int.h - the frames between the proxy's dispatcher and a signer process.
 * One frame = one SOCK_SEQPACKET message, so boundaries come from the kernel. Both ends are the
 * same binary, so host byte order and fixed struct layouts are fine.
 * Private to hsm_offload/.
 */
#ifndef HSM_FRAME_INT_H
#define HSM_FRAME_INT_H

#include <stddef.h>
#include <stdint.h>

#include "hsm.h"

#define HSM_FRAME_MAGIC 0x544d3031u /* "TM01" */
#define HSM_BATCH_MAX 64

enum hsm_frame_type {
    HSM_FRAME_HELLO = 1, /* signer -> proxy, once: struct hsm_hello */
    HSM_FRAME_REQ,       /* proxy -> signer: count x struct hsm_req */
    HSM_FRAME_RESP,      /* signer -> proxy: count x (struct hsm_resp + sig bytes) */
    HSM_FRAME_CTRL,      /* proxy -> signer: struct hsm_ctrl */
    HSM_FRAME_WORKERS    /* signer -> proxy: struct hsm_workers_info, when sessions open/close */
};

enum hsm_ctrl_op {
    HSM_CTRL_CLOSE_ALL_SESSIONS = 1, /* C_CloseAllSessions, as an operator would */
    HSM_CTRL_SET_WORKERS             /* arg: worker sessions wanted (1..PX_HSM_WORKERS_LIMIT) */
};

struct hsm_ctrl {
    uint32_t op;
    uint32_t arg;
};

struct hsm_workers_info {
    uint32_t open;    /* worker sessions open now */
    uint32_t ceiling; /* most the token granted (a session open failed there), else 0 */
    uint64_t rv;      /* CK_RV of the last failed open, 0 if none */
};

struct hsm_frame_hdr {
    uint32_t magic;
    uint16_t type;
    uint16_t count;
};

struct hsm_req {
    uint64_t id;
    uint8_t alg;
    uint8_t dlen;
    uint8_t key; /* 0: the forward-trust key; 1..HSM_XKEYS_MAX: an [inbound.NAME] key */
    uint8_t pad[5];
    uint8_t digest[64];
};

struct hsm_resp {
    uint64_t id;
    uint64_t rv;      /* CK_RV of the failing call, 0 on success */
    int32_t status;   /* 0 or a px_err */
    uint16_t sig_len; /* bytes following this struct */
    uint16_t pad;
    uint32_t svc_us;     /* time in the PKCS#11 calls for this job (the HSM's service time) */
    uint32_t qwait_us;   /* time it waited in the signer for a free worker */
    uint32_t blocked_us; /* of svc_us, off CPU and not waiting for one: the HSM's own latency,
                            which more sessions can overlap (svc_us when unknown) */
    uint32_t pad2;
};

struct hsm_hello {
    int32_t status; /* 0: ready; otherwise startup failed, see err */
    uint32_t workers;
    uint64_t rv;
    char err[256];
    struct hsm_token_info info;
    uint32_t nx;                               /* extra keys looked for */
    struct hsm_key_info xinfo[HSM_XKEYS_MAX];  /* ... and what was found */
};

#define HSM_REQ_FRAME_MAX (sizeof(struct hsm_frame_hdr) + HSM_BATCH_MAX * sizeof(struct hsm_req))
#define HSM_RESP_FRAME_MAX                                                                         \
    (sizeof(struct hsm_frame_hdr) + HSM_BATCH_MAX * (sizeof(struct hsm_resp) + HSM_SIG_MAX))

/* the proxy reads every frame, a hello too, into one buffer of HSM_RESP_FRAME_MAX + 64 */
_Static_assert(sizeof(struct hsm_frame_hdr) + sizeof(struct hsm_hello) <= HSM_RESP_FRAME_MAX,
               "a hello must fit the proxy's receive buffer");

/* ---- decoding (hsm_frame.c) ---------------------------------------------------------------- */

/* Copies the header of a received frame into *h. PX_E_SHORT or PX_E_PROTO (bad magic). */
PX_MUST_CHECK int hsm_frame__hdr(const uint8_t *buf, size_t n, struct hsm_frame_hdr *h);
/*
 * Signer side: a frame from the proxy. Returns HSM_FRAME_REQ (*reqs points into buf, *count
 * requests) or HSM_FRAME_CTRL (*ctrl filled); PX_E_PROTO/PX_E_SHORT for anything else.
 */
PX_MUST_CHECK int hsm_frame__parse_to_signer(const uint8_t *buf, size_t n,
                                             const struct hsm_req **reqs, uint16_t *count,
                                             struct hsm_ctrl *ctrl);
/* Proxy side: a HELLO frame (header included), copied into *out once it is sound. */
PX_MUST_CHECK int hsm_frame__parse_hello(const uint8_t *buf, size_t n, struct hsm_hello *out);
/*
 * Proxy side: the next answer of a RESP frame; *off starts at sizeof(struct hsm_frame_hdr) and
 * is advanced. *sig points into buf. PX_E_SHORT: truncated; PX_E_PROTO: bad signature length.
 */
PX_MUST_CHECK int hsm_frame__resp_next(const uint8_t *buf, size_t n, size_t *off,
                                       struct hsm_resp *r, const uint8_t **sig);

/* Exit codes of the signer, read by the proxy to word its log line. */
enum hsm_signer_exit {
    HSM_SIGNER_EXIT_OK = 0,
    HSM_SIGNER_EXIT_STARTUP = 3,  /* could not load, find token, log in or find key */
    HSM_SIGNER_EXIT_DEVICE = 4,   /* device-level error: a fresh process re-initialises */
    HSM_SIGNER_EXIT_PROTO = 5     /* garbage on the job socket */
};

#endif
