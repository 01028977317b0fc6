/* SPDX-License-Identifier: MIT */
/*
 * test_csum.c - unit tests for the export's Internet checksum (dataplane/dp_csum.c).
 * Invariants checked: the copy the framing uses (dp_csum_copy: AVX2 where the CPU has it) and
 * the vectorised sum give the same folded checksum as the portable reference and as a plain
 * RFC 1071 sum of big-endian words, for random lengths 0-4,200, source and destination
 * alignments 0-63 and starting sums; the copy is byte-identical and writes nothing outside
 * dst[0, n); a known header (RFC 1071's example, an IPv4 header) checksums to the published
 * value.
 * Not here: the frames themselves (tshark validates their checksums in tests/e2e/export.sh).
 */
#include "dp_csum.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

Suite *csum_suite(void);

static uint16_t fold(uint32_t s)
{
    while (s >> 16) {
        s = (s & 0xffff) + (s >> 16);
    }
    return (uint16_t)s;
}

/* RFC 1071 by the book: big-endian 16-bit words, an odd last byte padded with zero. */
static uint16_t rfc1071(uint32_t sum, const uint8_t *p, size_t n)
{
    uint64_t acc = sum;
    for (size_t i = 0; i < n; i += 2) {
        acc += (uint32_t)p[i] << 8 | (i + 1 < n ? p[i + 1] : 0);
    }
    while (acc >> 16) {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    return (uint16_t)acc;
}

/* 0 and 0xffff are the same number in ones' complement */
static bool same(uint16_t a, uint16_t b)
{
    return a == b || (a == 0 && b == 0xffff) || (a == 0xffff && b == 0);
}

START_TEST(test_csum_random)
{
    enum { MAXN = 4200, PAD = 128 };
    static uint8_t src[MAXN + PAD], d1[MAXN + PAD], d2[MAXN + PAD];
    unsigned seed = 12345;
    for (int it = 0; it < 20000; it++) {
        size_t n = (size_t)rand_r(&seed) % (MAXN + 1);
        if (it < 200) {
            n = (size_t)it; /* every short length */
        }
        size_t so = (size_t)rand_r(&seed) % 64, dof = (size_t)rand_r(&seed) % 64;
        for (size_t i = 0; i < n + so; i++) {
            src[i] = (uint8_t)rand_r(&seed);
        }
        if (it % 7 == 0) {
            memset(src + so, 0xff, n); /* the largest words: carries in every lane */
        }
        uint32_t s0 = (uint32_t)rand_r(&seed) % 300000;
        memset(d1, 0xa5, sizeof(d1));
        memset(d2, 0xa5, sizeof(d2));
        uint16_t want = rfc1071(s0, src + so, n);
        uint16_t ref = fold(dp_csum_copy_ref(s0, d1 + dof, src + so, n));
        uint16_t fast = fold(dp_csum_copy(s0, d2 + dof, src + so, n));
        ck_assert_msg(same(ref, want), "ref n=%zu: %04x, want %04x", n, ref, want);
        ck_assert_msg(same(fast, want), "copy n=%zu so=%zu do=%zu: %04x, want %04x", n, so, dof,
                      fast, want);
        ck_assert_msg(same(fold(dp_csum_add_fast(s0, src + so, n)), want), "add_fast n=%zu", n);
        ck_assert_msg(same(fold(dp_csum_add(s0, src + so, n)), want), "add n=%zu", n);
        ck_assert_msg(memcmp(d2 + dof, src + so, n) == 0, "copy differs, n=%zu", n);
        ck_assert_msg(memcmp(d1, d2, sizeof(d1)) == 0, "bytes outside the copy, n=%zu", n);
    }
}
END_TEST

START_TEST(test_csum_known)
{
    /* RFC 1071 section 3: the sum of 00 01 f2 03 f4 f5 f6 f7 is ddf2 */
    static const uint8_t rfc[] = {0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7};
    ck_assert_uint_eq(fold(dp_csum_add(0, rfc, sizeof(rfc))), 0xddf2);
    /* an IPv4 header whose checksum field (b861) makes the whole sum ffff */
    static const uint8_t ip[20] = {0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11,
                                   0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7};
    ck_assert_uint_eq(fold(dp_csum_add(0, ip, sizeof(ip))), 0xffff);
    uint8_t d[20];
    ck_assert_uint_eq(fold(dp_csum_copy(0, d, ip, sizeof(ip))), 0xffff);
    /* a long run of 0xff: 1 MiB, past the 512 KiB after which the vector lanes are widened */
    size_t n = 1u << 20;
    uint8_t *big = malloc(n), *dst = malloc(n);
    ck_assert_ptr_nonnull(big);
    ck_assert_ptr_nonnull(dst);
    memset(big, 0xff, n);
    ck_assert_uint_eq(fold(dp_csum_copy(0, dst, big, n)), rfc1071(0, big, n));
    big[n - 1] = 0x01;
    ck_assert_uint_eq(fold(dp_csum_add_fast(7, big, n - 1)), rfc1071(7, big, n - 1));
    free(big);
    free(dst);
}
END_TEST

Suite *csum_suite(void)
{
    Suite *s = suite_create("csum");
    TCase *tc = tcase_create("csum");
    tcase_add_test(tc, test_csum_random);
    tcase_add_test(tc, test_csum_known);
    suite_add_tcase(s, tc);
    return s;
}
