/* SPDX-License-Identifier: MIT */
/*
 * px_der.c - the few DER writing primitives the project needs (lengths, wrapping, INTEGER).
 * Owns nothing; pure functions, callable from any thread.
 * Invariants: never writes past cap; a failed call leaves out's content unspecified.
 * Not here: DER parsing (OpenSSL does that).
 */
#include "px.h"

#include <string.h>

size_t px_der_header(uint8_t *out, uint8_t tag, size_t len)
{
    size_t n = 0;
    out[n++] = tag;
    if (len < 0x80) {
        out[n++] = (uint8_t)len;
    } else if (len <= 0xff) {
        out[n++] = 0x81;
        out[n++] = (uint8_t)len;
    } else if (len <= 0xffff) {
        out[n++] = 0x82;
        out[n++] = (uint8_t)(len >> 8);
        out[n++] = (uint8_t)len;
    } else if (len <= 0xffffff) {
        out[n++] = 0x83;
        out[n++] = (uint8_t)(len >> 16);
        out[n++] = (uint8_t)(len >> 8);
        out[n++] = (uint8_t)len;
    } else {
        out[n++] = 0x84;
        out[n++] = (uint8_t)(len >> 24);
        out[n++] = (uint8_t)(len >> 16);
        out[n++] = (uint8_t)(len >> 8);
        out[n++] = (uint8_t)len;
    }
    return n;
}

int px_der_wrap(uint8_t *out, size_t cap, uint8_t tag, const uint8_t *content, size_t len)
{
    uint8_t hdr[8];
    if (len > 0xffffff) {
        return PX_E_SHORT;
    }
    size_t h = px_der_header(hdr, tag, len);
    if (h + len > cap) {
        return PX_E_SHORT;
    }
    if (len > 0) {
        memmove(out + h, content, len);
    }
    memcpy(out, hdr, h);
    return (int)(h + len);
}

int px_der_uint(uint8_t *out, size_t cap, const uint8_t *be, size_t len)
{
    while (len > 1 && be[0] == 0) {
        be++;
        len--;
    }
    uint8_t tmp[1040];
    size_t n = 0;
    if (len + 1 > sizeof(tmp)) {
        return PX_E_SHORT;
    }
    if (len == 0 || (be[0] & 0x80)) {
        tmp[n++] = 0;
    }
    if (len > 0) {
        memcpy(tmp + n, be, len);
        n += len;
    }
    return px_der_wrap(out, cap, 0x02, tmp, n);
}
