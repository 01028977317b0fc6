/* SPDX-License-Identifier: MIT */
/*
 * test_der.c - unit tests for the DER writing primitives (px_der.c).
 * Owns nothing beyond per-test heap buffers; output buffers are allocated at exactly the
 * capacity passed in, so ASan catches any write past cap.
 * Invariants checked: lengths use the shortest DER form, wrapping works in place, a buffer one
 * byte short fails with PX_E_SHORT, INTEGERs match OpenSSL's encoding byte for byte.
 * Not here: DER parsing (OpenSSL does that, and is the oracle here).
 */
#include "px.h"

#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/asn1.h>
#include <openssl/bn.h>

Suite *der_suite(void);

struct hdr_case {
    size_t len;
    size_t n;
    uint8_t want[6];
};

static const struct hdr_case hdr_cases[] = {
    {0, 2, {0x04, 0x00}},
    {1, 2, {0x04, 0x01}},
    {127, 2, {0x04, 0x7f}},
    {128, 3, {0x04, 0x81, 0x80}},
    {255, 3, {0x04, 0x81, 0xff}},
    {256, 4, {0x04, 0x82, 0x01, 0x00}},
    {65535, 4, {0x04, 0x82, 0xff, 0xff}},
    {65536, 5, {0x04, 0x83, 0x01, 0x00, 0x00}},
    {0xffffff, 5, {0x04, 0x83, 0xff, 0xff, 0xff}},
    {0x1000000, 6, {0x04, 0x84, 0x01, 0x00, 0x00, 0x00}},
};

START_TEST(test_der_header)
{
    const struct hdr_case *c = &hdr_cases[_i];
    uint8_t out[8];
    memset(out, 0xee, sizeof(out));
    size_t n = px_der_header(out, 0x04, c->len);
    ck_assert_msg(n == c->n, "len %zu: %zu header bytes, want %zu", c->len, n, c->n);
    ck_assert_mem_eq(out, c->want, c->n);
    /* nothing past the header is touched */
    for (size_t i = n; i < sizeof(out); i++) {
        ck_assert_uint_eq(out[i], 0xee);
    }
}
END_TEST

START_TEST(test_der_wrap_basic)
{
    static const uint8_t abc[] = {'a', 'b', 'c'};
    static const uint8_t want[] = {0x04, 0x03, 'a', 'b', 'c'};
    uint8_t out[16];
    int n = px_der_wrap(out, sizeof(out), 0x04, abc, sizeof(abc));
    ck_assert_int_eq(n, 5);
    ck_assert_mem_eq(out, want, sizeof(want));

    /* empty content: tag and a zero length */
    n = px_der_wrap(out, 2, 0x30, abc, 0);
    ck_assert_int_eq(n, 2);
    ck_assert_uint_eq(out[0], 0x30);
    ck_assert_uint_eq(out[1], 0x00);
}
END_TEST

/* Fills p with a pattern that makes a shifted copy detectable. */
static void fill_pattern(uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        p[i] = (uint8_t)(i * 7 + 3);
    }
}

static void check_pattern(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        ck_assert_msg(p[i] == (uint8_t)(i * 7 + 3), "content byte %zu is %02x", i, p[i]);
    }
}

/* Content already in out (the usual "build the body, then prepend the header" idiom): at the
 * very start of out, shifted right by the header, or exactly where it ends up. */
START_TEST(test_der_wrap_in_place)
{
    static const size_t lens[] = {5, 127, 128, 300, 70000};
    static const size_t hlen[] = {2, 2, 3, 4, 5};
    for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
        size_t len = lens[li];
        size_t h = hlen[li];
        /* content at out, at out + 1 (overlapping the header) and at out + h (no move) */
        const size_t starts[] = {0, 1, h};
        for (size_t si = 0; si < sizeof(starts) / sizeof(starts[0]); si++) {
            size_t start = starts[si];
            size_t cap = h + len;
            uint8_t *out = malloc(cap);
            ck_assert_ptr_nonnull(out);
            fill_pattern(out + start, len);
            int n = px_der_wrap(out, cap, 0x30, out + start, len);
            ck_assert_msg(n == (int)(h + len), "len %zu start %zu: got %d", len, start, n);
            uint8_t want[6];
            ck_assert_uint_eq(px_der_header(want, 0x30, len), h);
            ck_assert_mem_eq(out, want, h);
            check_pattern(out + h, len);
            free(out);
        }
    }
}
END_TEST

/* "write 101 into 100": the exact size fits, one byte less is PX_E_SHORT and writes nothing
 * outside the (exactly sized, ASan-guarded) buffer. */
START_TEST(test_der_wrap_cap)
{
    static const size_t lens[] = {0, 5, 127, 128, 255, 256, 65535, 65536};
    for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
        size_t len = lens[li];
        uint8_t hdr[8];
        size_t need = px_der_header(hdr, 0x04, len) + len;
        uint8_t *content = malloc(len + 1);
        ck_assert_ptr_nonnull(content);
        fill_pattern(content, len);

        uint8_t *shortbuf = malloc(need - 1);
        ck_assert_ptr_nonnull(shortbuf);
        int n = px_der_wrap(shortbuf, need - 1, 0x04, content, len);
        ck_assert_msg(n == PX_E_SHORT, "len %zu cap %zu: got %d", len, need - 1, n);
        free(shortbuf);

        uint8_t *exact = malloc(need);
        ck_assert_ptr_nonnull(exact);
        n = px_der_wrap(exact, need, 0x04, content, len);
        ck_assert_msg(n == (int)need, "len %zu cap %zu: got %d", len, need, n);
        check_pattern(exact + need - len, len);
        free(exact);
        free(content);
    }
    /* no room at all */
    uint8_t one[1];
    ck_assert_int_eq(px_der_wrap(one, 0, 0x04, one, 0), PX_E_SHORT);
    ck_assert_int_eq(px_der_wrap(one, 1, 0x04, one, 0), PX_E_SHORT);
}
END_TEST

/* Content too long for a 3-byte length is refused rather than mis-encoded. */
START_TEST(test_der_wrap_too_long)
{
    size_t len = 0x1000000;
    uint8_t *content = calloc(1, len);
    uint8_t *out = malloc(len + 16);
    ck_assert_ptr_nonnull(content);
    ck_assert_ptr_nonnull(out);
    ck_assert_int_eq(px_der_wrap(out, len + 16, 0x04, content, len), PX_E_SHORT);
    ck_assert_int_eq(px_der_wrap(out, len + 16, 0x04, content, len - 1), (int)(len - 1 + 5));
    free(out);
    free(content);
}
END_TEST

struct uint_case {
    size_t len;
    uint8_t in[5];
    size_t n;
    uint8_t want[8];
};

static const struct uint_case uint_cases[] = {
    {0, {0}, 3, {0x02, 0x01, 0x00}},
    {1, {0x00}, 3, {0x02, 0x01, 0x00}},
    {4, {0x00, 0x00, 0x00, 0x00}, 3, {0x02, 0x01, 0x00}},
    {1, {0x01}, 3, {0x02, 0x01, 0x01}},
    {1, {0x7f}, 3, {0x02, 0x01, 0x7f}},
    {1, {0x80}, 4, {0x02, 0x02, 0x00, 0x80}},
    {1, {0xff}, 4, {0x02, 0x02, 0x00, 0xff}},
    {3, {0x00, 0x00, 0x7f}, 3, {0x02, 0x01, 0x7f}},
    {3, {0x00, 0x00, 0x80}, 4, {0x02, 0x02, 0x00, 0x80}},
    {3, {0x00, 0xff, 0x01}, 5, {0x02, 0x03, 0x00, 0xff, 0x01}},
    {2, {0x01, 0x00}, 4, {0x02, 0x02, 0x01, 0x00}},
    {5, {0x00, 0x12, 0x34, 0x56, 0x78}, 6, {0x02, 0x04, 0x12, 0x34, 0x56, 0x78}},
};

START_TEST(test_der_uint_known)
{
    const struct uint_case *c = &uint_cases[_i];
    uint8_t out[16];
    memset(out, 0xee, sizeof(out));
    int n = px_der_uint(out, sizeof(out), c->in, c->len);
    ck_assert_msg(n == (int)c->n, "case %d: got %d, want %zu", _i, n, c->n);
    ck_assert_mem_eq(out, c->want, c->n);
    ck_assert_uint_eq(out[c->n], 0xee);
}
END_TEST

START_TEST(test_der_uint_cap)
{
    /* 0x80 needs a pad byte: 02 02 00 80 */
    static const uint8_t hi[] = {0x80};
    uint8_t *buf = malloc(3);
    ck_assert_ptr_nonnull(buf);
    ck_assert_int_eq(px_der_uint(buf, 3, hi, sizeof(hi)), PX_E_SHORT);
    free(buf);
    buf = malloc(4);
    ck_assert_ptr_nonnull(buf);
    ck_assert_int_eq(px_der_uint(buf, 4, hi, sizeof(hi)), 4);
    free(buf);

    /* leading zeros do not count against cap */
    static const uint8_t lz[] = {0x00, 0x00, 0x00, 0x00, 0x05};
    buf = malloc(3);
    ck_assert_ptr_nonnull(buf);
    ck_assert_int_eq(px_der_uint(buf, 3, lz, sizeof(lz)), 3);
    ck_assert_uint_eq(buf[2], 0x05);
    ck_assert_int_eq(px_der_uint(buf, 2, lz, sizeof(lz)), PX_E_SHORT);
    free(buf);

    /* a 256-byte number with the high bit set: 02 82 01 01 00 ... */
    uint8_t in[256];
    memset(in, 0xa5, sizeof(in));
    buf = malloc(261);
    ck_assert_ptr_nonnull(buf);
    ck_assert_int_eq(px_der_uint(buf, 260, in, sizeof(in)), PX_E_SHORT);
    ck_assert_int_eq(px_der_uint(buf, 261, in, sizeof(in)), 261);
    static const uint8_t head[] = {0x02, 0x82, 0x01, 0x01, 0x00, 0xa5};
    ck_assert_mem_eq(buf, head, sizeof(head));
    free(buf);
}
END_TEST

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

/* OpenSSL's DER for the unsigned big-endian number be/len; caller frees with OPENSSL_free. */
static int ossl_der_uint(const uint8_t *be, size_t len, unsigned char **der)
{
    BIGNUM *bn = BN_bin2bn(be, (int)len, NULL);
    ck_assert_ptr_nonnull(bn);
    ASN1_INTEGER *ai = BN_to_ASN1_INTEGER(bn, NULL);
    ck_assert_ptr_nonnull(ai);
    *der = NULL;
    int n = i2d_ASN1_INTEGER(ai, der);
    ck_assert_int_gt(n, 0);
    ASN1_INTEGER_free(ai);
    BN_free(bn);
    return n;
}

/* Deterministic pseudo-random numbers of 0-600 bytes, with and without leading zero bytes
 * and high bits, compared with OpenSSL's encoding. */
START_TEST(test_der_uint_openssl)
{
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    uint8_t in[600];
    uint8_t out[620];
    for (int iter = 0; iter < 500; iter++) {
        size_t len = (size_t)(xorshift(&seed) % sizeof(in));
        if (iter < 8) {
            len = (size_t)iter; /* make sure the tiny sizes are covered */
        }
        for (size_t i = 0; i < len; i++) {
            in[i] = (uint8_t)xorshift(&seed);
        }
        if (len > 0) {
            switch (iter % 4) {
            case 0:
                in[0] |= 0x80;
                break;
            case 1:
                in[0] &= 0x7f;
                break;
            case 2:
                memset(in, 0, len < 3 ? len : 3);
                break;
            default:
                break;
            }
        }
        unsigned char *der = NULL;
        int want = ossl_der_uint(in, len, &der);
        int n = px_der_uint(out, sizeof(out), in, len);
        ck_assert_msg(n == want, "iter %d len %zu: %d bytes, OpenSSL %d", iter, len, n, want);
        ck_assert_msg(memcmp(out, der, (size_t)want) == 0, "iter %d len %zu: bytes differ", iter,
                      len);
        OPENSSL_free(der);
    }
}
END_TEST

Suite *der_suite(void)
{
    Suite *s = suite_create("der");

    TCase *tc = tcase_create("header");
    tcase_add_loop_test(tc, test_der_header, 0, (int)(sizeof(hdr_cases) / sizeof(hdr_cases[0])));
    suite_add_tcase(s, tc);

    tc = tcase_create("wrap");
    tcase_add_test(tc, test_der_wrap_basic);
    tcase_add_test(tc, test_der_wrap_in_place);
    tcase_add_test(tc, test_der_wrap_cap);
    tcase_add_test(tc, test_der_wrap_too_long);
    suite_add_tcase(s, tc);

    tc = tcase_create("uint");
    tcase_add_loop_test(tc, test_der_uint_known, 0,
                        (int)(sizeof(uint_cases) / sizeof(uint_cases[0])));
    tcase_add_test(tc, test_der_uint_cap);
    tcase_add_test(tc, test_der_uint_openssl);
    suite_add_tcase(s, tc);

    return s;
}
