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

uint32_t dp_csum_add(uint32_t sum, const uint8_t *p, size_t n);      /* portable reference */
uint32_t dp_csum_add_fast(uint32_t sum, const uint8_t *p, size_t n); /* AVX2 when the CPU has it */
/* src[0..n) copied to dst (they do not overlap) and summed */
uint32_t dp_csum_copy_ref(uint32_t sum, uint8_t *restrict dst, const uint8_t *restrict src,
                          size_t n);
uint32_t dp_csum_copy(uint32_t sum, uint8_t *restrict dst, const uint8_t *restrict src, size_t n);

#endif
