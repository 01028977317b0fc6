/* SPDX-License-Identifier: MIT */
/*
 * dp_csum.h - the Internet checksum of the export's frames (dp_csum.c). Each function returns
 * sum plus the ones' complement sum of its bytes taken as big-endian 16-bit words, not yet
 * folded (fold and complement once per header with the caller's csum_fold).
 */
#ifndef DP_CSUM_H
#define DP_CSUM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* p[i..n) after the steps already summed into acc: 8 bytes a step, the fold, the one swap */
static inline uint32_t dp_csum_tail(uint32_t sum, uint64_t acc, const uint8_t *p, size_t i,
                                    size_t n)
{
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        acc += (w & 0xffffffffu) + (w >> 32);
    }
    for (; i + 2 <= n; i += 2) {
        uint16_t w;
        memcpy(&w, p + i, 2);
        acc += w;
    }
    bool le = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;
    if (i < n) { /* the odd last byte is the high byte of a big-endian word */
        acc += le ? p[i] : (uint32_t)p[i] << 8;
    }
    while (acc >> 16) {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    uint16_t s = (uint16_t)acc;
    return sum + (le ? (uint16_t)(s << 8 | s >> 8) : s);
}

/* the portable reference; inline, for the headers' few bytes (an out-of-line call per header
 * cost 0.024 s per GB in perf) */
static inline uint32_t dp_csum_add(uint32_t sum, const uint8_t *p, size_t n)
{
    return dp_csum_tail(sum, 0, p, 0, n);
}

uint32_t dp_csum_add_fast(uint32_t sum, const uint8_t *p, size_t n); /* AVX2 when the CPU has it */
/* src[0..n) copied to dst (they do not overlap) and summed */
uint32_t dp_csum_copy_ref(uint32_t sum, uint8_t *restrict dst, const uint8_t *restrict src,
                          size_t n);
uint32_t dp_csum_copy(uint32_t sum, uint8_t *restrict dst, const uint8_t *restrict src, size_t n);

#endif
