/* SPDX-License-Identifier: MIT */
/*
 * test_secret.c - unit tests for the secret (PIN) file reader, px_wipe and px_strerror
 * (px_log.c).
 * Owns a private mkdtemp directory under /tmp, created and removed by an unchecked fixture in
 * the runner process, so files left by a failed (forked) test are still cleaned up.
 * Invariants checked: only a non-empty, printable, 0600-or-stricter regular file no larger than
 * cap-1 is accepted; an error message names the path and never holds the PIN.
 * Not here: the config parser (test_cfg.c), which only stores the PIN file's path.
 */
#include "px.h"

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

Suite *secret_suite(void);

#define PIN "s3cretPIN"

static char g_dir[64];

static void dir_setup(void)
{
    snprintf(g_dir, sizeof(g_dir), "/tmp/test_secret.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(g_dir));
}

static void dir_teardown(void)
{
    DIR *d = opendir(g_dir);
    if (d != NULL) {
        struct dirent *e;
        char path[320];
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) {
                continue;
            }
            snprintf(path, sizeof(path), "%s/%s", g_dir, e->d_name);
            if (unlink(path) != 0) {
                rmdir(path);
            }
        }
        closedir(d);
    }
    rmdir(g_dir);
}

/* Creates a file holding data with the given mode (mkstemp in the test directory). */
static void make_file(char *path, size_t cap, const void *data, size_t len, mode_t mode)
{
    snprintf(path, cap, "%s/pin.XXXXXX", g_dir);
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    if (len > 0) {
        ck_assert_int_eq(write(fd, data, len), (ssize_t)len);
    }
    ck_assert_int_eq(fchmod(fd, mode), 0);
    ck_assert_int_eq(close(fd), 0);
}

/* Reads path into a 64-byte buffer; the result, message and buffer land in the arguments. */
static int read_secret(const char *path, char *buf, char *err, size_t errlen)
{
    memset(buf, 'Z', 63);
    buf[63] = '\0';
    memset(err, 0, errlen);
    return px_read_secret_file(path, buf, 64, err, errlen);
}

/* A refusal: negative code, one line naming the path, and the secret nowhere in it. */
static void assert_refused(int r, const char *err, const char *path, const char *secret)
{
    ck_assert_msg(r < 0, "accepted with %d", r);
    ck_assert_msg(strstr(err, path) != NULL, "message '%s' does not name %s", err, path);
    ck_assert_msg(strstr(err, secret) == NULL, "message '%s' leaks the PIN", err);
    ck_assert_msg(strchr(err, '\n') == NULL, "message '%s' is more than one line", err);
}

START_TEST(test_secret_good)
{
    static const struct {
        const char *content;
        mode_t mode;
    } cases[] = {
        {PIN "\n", 0600}, {PIN "\r\n", 0600}, {PIN, 0600}, {PIN "\n", 0400}, {PIN "\n\n", 0600},
    };
    char path[128];
    char buf[64];
    char err[256];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        make_file(path, sizeof(path), cases[i].content, strlen(cases[i].content), cases[i].mode);
        int r = read_secret(path, buf, err, sizeof(err));
        ck_assert_msg(r == (int)strlen(PIN), "case %zu: %d %s", i, r, err);
        ck_assert_str_eq(buf, PIN);
        unlink(path);
    }
    /* inner spaces are printable and kept */
    make_file(path, sizeof(path), "a b~\n", 5, 0600);
    ck_assert_int_eq(read_secret(path, buf, err, sizeof(err)), 4);
    ck_assert_str_eq(buf, "a b~");
    unlink(path);
}
END_TEST

START_TEST(test_secret_mode)
{
    static const mode_t modes[] = {0644, 0640, 0604, 0660, 0666, 0601, 0610};
    char path[128];
    char buf[64];
    char err[256];
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        make_file(path, sizeof(path), PIN "\n", strlen(PIN) + 1, modes[i]);
        int r = read_secret(path, buf, err, sizeof(err));
        ck_assert_msg(r == PX_E_INVAL, "mode %04o: %d", (unsigned)modes[i], r);
        assert_refused(r, err, path, PIN);
        ck_assert_msg(strstr(err, "chmod") != NULL, "message '%s' does not say chmod", err);
        ck_assert_msg(strstr(buf, PIN) == NULL, "mode %04o: PIN read anyway", (unsigned)modes[i]);
        unlink(path);
    }
}
END_TEST

START_TEST(test_secret_empty)
{
    static const char *const contents[] = {"", "\n", "\r\n", "\n\n"};
    char path[128];
    char buf[64];
    char err[256];
    for (size_t i = 0; i < sizeof(contents) / sizeof(contents[0]); i++) {
        make_file(path, sizeof(path), contents[i], strlen(contents[i]), 0600);
        int r = read_secret(path, buf, err, sizeof(err));
        ck_assert_msg(r == PX_E_INVAL, "case %zu: %d", i, r);
        ck_assert_msg(strstr(err, "empty") != NULL, "message '%s' does not say empty", err);
        ck_assert_ptr_nonnull(strstr(err, path));
        unlink(path);
    }
}
END_TEST

/* "write 101 into 100": cap-1 bytes fit, cap bytes do not (a trailing newline counts). */
START_TEST(test_secret_too_large)
{
    char path[128];
    char buf[16];
    char err[256];
    const char pin15[] = "ABCDEFGHIJKLMNO";

    make_file(path, sizeof(path), pin15, 15, 0600);
    int r = px_read_secret_file(path, buf, sizeof(buf), err, sizeof(err));
    ck_assert_msg(r == 15, "15 bytes in cap 16: %d %s", r, err);
    ck_assert_str_eq(buf, pin15);
    unlink(path);

    make_file(path, sizeof(path), "ABCDEFGHIJKLMNOP", 16, 0600);
    memset(err, 0, sizeof(err));
    r = px_read_secret_file(path, buf, sizeof(buf), err, sizeof(err));
    ck_assert_int_eq(r, PX_E_INVAL);
    assert_refused(r, err, path, "ABCDEFGH");
    ck_assert_msg(strstr(err, "too large") != NULL, "message '%s' does not say too large", err);
    ck_assert_msg(memchr(buf, 'A', sizeof(buf)) == NULL, "refused PIN left in the buffer");
    unlink(path);

    make_file(path, sizeof(path), "ABCDEFGHIJKLMNO\n", 16, 0600);
    r = px_read_secret_file(path, buf, sizeof(buf), err, sizeof(err));
    ck_assert_int_eq(r, PX_E_INVAL);
    assert_refused(r, err, path, "ABCDEFGH");
    unlink(path);

    char big[4096];
    memset(big, 'Q', sizeof(big));
    make_file(path, sizeof(path), big, sizeof(big), 0600);
    r = px_read_secret_file(path, buf, sizeof(buf), err, sizeof(err));
    ck_assert_int_eq(r, PX_E_INVAL);
    assert_refused(r, err, path, "QQQQ");
    unlink(path);
}
END_TEST

START_TEST(test_secret_nonprintable)
{
    static const struct {
        const char *content;
        size_t len;
    } cases[] = {
        {PIN "\x01", sizeof(PIN)},    {PIN "\tx", sizeof(PIN) + 1},
        {PIN "\x7f", sizeof(PIN)},    {PIN "\xc3\xa9", sizeof(PIN) + 1},
        {PIN "\0x", sizeof(PIN) + 1}, {PIN "\nsecond line\n", sizeof(PIN) + 12},
        {"\r" PIN, sizeof(PIN)},
    };
    char path[128];
    char buf[64];
    char err[256];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        make_file(path, sizeof(path), cases[i].content, cases[i].len, 0600);
        int r = read_secret(path, buf, err, sizeof(err));
        ck_assert_msg(r == PX_E_INVAL, "case %zu: %d", i, r);
        assert_refused(r, err, path, PIN);
        ck_assert_msg(strstr(err, "non-printable") != NULL, "case %zu: message '%s'", i, err);
        ck_assert_msg(strstr(buf, PIN) == NULL, "case %zu: refused PIN left in the buffer", i);
        unlink(path);
    }
}
END_TEST

START_TEST(test_secret_missing)
{
    char path[128];
    char buf[64];
    char err[256];
    snprintf(path, sizeof(path), "%s/no-such-pin", g_dir);
    int r = read_secret(path, buf, err, sizeof(err));
    ck_assert_int_eq(r, -ENOENT);
    ck_assert_msg(strstr(err, path) != NULL, "message '%s' does not name %s", err, path);
    ck_assert_ptr_nonnull(strstr(err, strerror(ENOENT)));

    /* a directory is not a PIN file */
    snprintf(path, sizeof(path), "%s/adir", g_dir);
    ck_assert_int_eq(mkdir(path, 0700), 0);
    r = read_secret(path, buf, err, sizeof(err));
    ck_assert_int_eq(r, PX_E_INVAL);
    ck_assert_ptr_nonnull(strstr(err, path));
    ck_assert_ptr_nonnull(strstr(err, "not a regular file"));
    ck_assert_int_eq(rmdir(path), 0);
}
END_TEST

START_TEST(test_wipe)
{
    uint8_t b[32];
    memset(b, 0xa5, sizeof(b));
    px_wipe(b + 4, 16);
    for (size_t i = 0; i < sizeof(b); i++) {
        ck_assert_uint_eq(b[i], (i >= 4 && i < 20) ? 0 : 0xa5);
    }
    px_wipe(NULL, 16);
    px_wipe(b, 0);
    ck_assert_uint_eq(b[0], 0xa5);
}
END_TEST

#if defined(__SANITIZE_ADDRESS__)
/*
 * "Write 17 into 16": px_wipe must be a store ASan sees. With explicit_bzero (inside libc) the
 * wipe of 47 bytes past restore's buffer went unseen and crashed only the release binary.
 * ASan reports and exits with status 1 (ASAN_OPTIONS abort_on_error=0), which this exit test
 * expects; without the report the function returns and the test fails.
 */
START_TEST(test_wipe_overflow_seen)
{
    uint8_t *volatile p = malloc(16);
    ck_assert_ptr_nonnull(p);
    px_wipe(p, 17);
    free(p);
    exit(0);
}
END_TEST
#endif

START_TEST(test_strerror)
{
    static const int codes[] = {
        PX_E_CONFIG, PX_E_CRYPTO,  PX_E_HSM,  PX_E_SHORT, PX_E_PROTO, PX_E_EXISTS,
        PX_E_FULL,   PX_E_TIMEOUT, PX_E_GONE, PX_E_DOWN,  PX_E_INVAL, PX_E_SHUTDOWN,
    };
    const size_t n = sizeof(codes) / sizeof(codes[0]);
    const char *unknown = px_strerror(-4200);
    ck_assert_ptr_nonnull(unknown);
    for (size_t i = 0; i < n; i++) {
        const char *s = px_strerror(codes[i]);
        ck_assert_msg(s != NULL && s[0] != '\0', "code %d has no name", codes[i]);
        ck_assert_msg(strcmp(s, unknown) != 0, "code %d is unknown", codes[i]);
        for (size_t j = 0; j < i; j++) {
            ck_assert_msg(strcmp(s, px_strerror(codes[j])) != 0, "codes %d and %d share '%s'",
                          codes[i], codes[j], s);
        }
    }
    ck_assert_str_eq(px_strerror(-ENOENT), strerror(ENOENT));
    ck_assert_str_eq(px_strerror(-EACCES), strerror(EACCES));
    /* -errno values never collide with project codes */
    ck_assert_str_ne(px_strerror(-ENOENT), px_strerror(PX_E_CONFIG));
}
END_TEST

Suite *secret_suite(void)
{
    Suite *s = suite_create("secret");

    TCase *tc = tcase_create("pin_file");
    tcase_add_unchecked_fixture(tc, dir_setup, dir_teardown);
    tcase_add_test(tc, test_secret_good);
    tcase_add_test(tc, test_secret_mode);
    tcase_add_test(tc, test_secret_empty);
    tcase_add_test(tc, test_secret_too_large);
    tcase_add_test(tc, test_secret_nonprintable);
    tcase_add_test(tc, test_secret_missing);
    suite_add_tcase(s, tc);

    tc = tcase_create("helpers");
    tcase_add_test(tc, test_wipe);
#if defined(__SANITIZE_ADDRESS__)
    tcase_add_exit_test(tc, test_wipe_overflow_seen, 1);
#endif
    tcase_add_test(tc, test_strerror);
    suite_add_tcase(s, tc);

    return s;
}
