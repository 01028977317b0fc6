/* SPDX-License-Identifier: MIT */
/*
 * dp_csum.c - the Internet checksum (RFC 1071) of the export's frames, and the copy of the
 * payload into the loop's record chunk that goes with it (dp_xframe.c's segments).
 * dp_csum_add (dp_csum.h, inline: the framing sums 20-byte headers with it) is the portable
 * reference: 8 bytes a step, words added in the machine's order and the folded result swapped
 * once at the end (the ones' complement sum does not depend on
 * the byte order but for that swap, RFC 1071 2.B). dp_csum_copy is what the framing calls:
 * with AVX2 (checked at run time, __builtin_cpu_supports) it loads, stores and sums 32 bytes a
 * step, else it is the reference. Measured on this machine's VM (a ring of 128 KiB chunks, 1,460
 * bytes a segment from a hot source): the reference 0.10-0.12 s per GB, AVX2 0.04-0.07; a
 * rep movsb copy and a separate AVX2 sum of the source 0.055-0.07. In the proxy the chunk's
 * lines were last read by the disk's DMA, so each store waits for its line: a prefetch for
 * writing PREFETCH_AHEAD bytes ahead took 12 % off that in a ring with O_DIRECT writes, and
 * about 2 % off the exporting proxy's CPU per GB (bench/export-cost.sh A/B).
 * Threads: any (no state but the CPU check, made once at first use).
 * Not here: the framing (dp_xframe.c).
 */
#include "dp_csum.h"

#include <stdatomic.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* How far ahead of the copy a destination line is asked for in exclusive state. */
#define PREFETCH_AHEAD 1024

uint32_t dp_csum_copy_ref(uint32_t sum, uint8_t *restrict dst, const uint8_t *restrict src,
                          size_t n)
{
    uint64_t acc = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, src + i, 8);
        memcpy(dst + i, &w, 8);
        acc += (w & 0xffffffffu) + (w >> 32);
    }
    memcpy(dst + i, src + i, n - i);
    return dp_csum_tail(sum, acc, src, i, n);
}

#if defined(__x86_64__)
/* The 32-byte steps of p[0..n) (and their copy to dst when dst is not NULL), summed as 16-bit
 * words in 32-bit lanes: each step adds at most 2 * 0xffff to a lane, so a lane is widened
 * into the 64-bit total every 16,384 steps, long before it could overflow. Returns the bytes
 * done; *acc gets their sum in the machine's order, as csum_tail expects. */
__attribute__((target("avx2"))) static size_t sum_avx2(uint64_t *acc, uint8_t *dst,
                                                       const uint8_t *src, size_t n)
{
    const __m256i lo16 = _mm256_set1_epi32(0xffff);
    size_t i = 0;
    uint64_t total = 0;
    while (i + 32 <= n) {
        __m256i a = _mm256_setzero_si256();
        size_t end = n - i > (size_t)16384 * 32 ? i + (size_t)16384 * 32 : n;
        for (; i + 32 <= end; i += 32) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(src + i));
            if (dst != NULL) {
                if ((((uintptr_t)(dst + i)) & 63) < 32) { /* once a line: its RFO starts early */
                    __builtin_prefetch(dst + i + PREFETCH_AHEAD, 1, 3);
                }
                _mm256_storeu_si256((__m256i *)(dst + i), v);
            }
            a = _mm256_add_epi32(a, _mm256_and_si256(v, lo16));
            a = _mm256_add_epi32(a, _mm256_srli_epi32(v, 16));
        }
        uint32_t l[8];
        _mm256_storeu_si256((__m256i *)l, a);
        for (int k = 0; k < 8; k++) {
            total += l[k];
        }
    }
    *acc = total;
    return i;
}

static bool have_avx2(void)
{
    static _Atomic int v = -1; /* every thread that finds it unset computes the same value */
    int h = atomic_load_explicit(&v, memory_order_relaxed);
    if (h < 0) {
        __builtin_cpu_init();
        h = __builtin_cpu_supports("avx2") ? 1 : 0;
        atomic_store_explicit(&v, h, memory_order_relaxed);
    }
    return h == 1;
}

uint32_t dp_csum_add_fast(uint32_t sum, const uint8_t *p, size_t n)
{
    if (!have_avx2()) {
        return dp_csum_add(sum, p, n);
    }
    uint64_t acc;
    size_t i = sum_avx2(&acc, NULL, p, n);
    return dp_csum_tail(sum, acc, p, i, n);
}

uint32_t dp_csum_copy(uint32_t sum, uint8_t *restrict dst, const uint8_t *restrict src, size_t n)
{
    if (!have_avx2()) {
        return dp_csum_copy_ref(sum, dst, src, n);
    }
    uint64_t acc;
    size_t i = sum_avx2(&acc, dst, src, n);
    memcpy(dst + i, src + i, n - i);
    return dp_csum_tail(sum, acc, src, i, n);
}
#else /* no AVX2 to be had: the reference */
uint32_t dp_csum_add_fast(uint32_t sum, const uint8_t *p, size_t n)
{
    return dp_csum_add(sum, p, n);
}

uint32_t dp_csum_copy(uint32_t sum, uint8_t *restrict dst, const uint8_t *restrict src, size_t n)
{
    return dp_csum_copy_ref(sum, dst, src, n);
}
#endif
