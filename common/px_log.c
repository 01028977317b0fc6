/* SPDX-License-Identifier: MIT */
/*
 * px_log.c - leveled logging to stderr, error names, time, secret helpers.
 * Owns the global level and process tag (set before threads start, read-only after).
 * Called from every thread: each line is formatted on the stack and written with one write(2),
 * so lines from different threads and processes never interleave.
 * Under systemd (stderr is the journal) lines carry a <N> priority and no timestamp.
 * Not here: the access log (dataplane) and metrics.
 */
#include "px.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>

static enum px_log_level g_level = PX_LOG_INFO;
static const char *g_tag = "tlsmint";
static pthread_once_t g_journal_once = PTHREAD_ONCE_INIT;
static bool g_journal;

/*
 * systemd sets JOURNAL_STREAM=DEV:INODE for the stream it connected stdout/stderr to. When
 * stderr is that stream, the journal adds the time itself and reads a "<N>" syslog priority
 * prefix, so `journalctl -p warning` works; a redirected stderr keeps the plain format.
 */
static void journal_detect(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    struct stat st;
    unsigned long long dev = 0, ino = 0;
    g_journal = js != NULL && sscanf(js, "%llu:%llu", &dev, &ino) == 2 &&
                fstat(STDERR_FILENO, &st) == 0 && (unsigned long long)st.st_dev == dev &&
                (unsigned long long)st.st_ino == ino;
}

void px_log_set_level(enum px_log_level level)
{
    g_level = level;
}

enum px_log_level px_log_get_level(void)
{
    return g_level;
}

void px_log_set_tag(const char *tag)
{
    g_tag = tag;
}

int px_log_level_parse(const char *s, enum px_log_level *out)
{
    static const char *names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (enum px_log_level)i;
            return 0;
        }
    }
    return PX_E_INVAL;
}

void px_log(enum px_log_level level, const char *mod, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    px_vlog(level, mod, fmt, ap);
    va_end(ap);
}

void px_vlog(enum px_log_level level, const char *mod, const char *fmt, va_list ap)
{
    static const char *lv[] = {"ERROR", "WARN", "INFO", "DEBUG"};
    if (level > g_level) {
        return;
    }
    static const int prio[] = {3, 4, 6, 7}; /* LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG */
    char line[1024];
    int n;
    pthread_once(&g_journal_once, journal_detect);
    if (g_journal) {
        n = snprintf(line, sizeof(line), "<%d>%s[%d] %s: ", prio[level], g_tag, (int)getpid(),
                     mod);
    } else {
        struct timespec ts;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s[%d] %s: ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, lv[level], g_tag, (int)getpid(), mod);
    }
    if (n < 0) {
        return;
    }
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2) {
        len = sizeof(line) - 2;
    }
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

void px_log_ossl_errors(const char *where)
{
    unsigned long e;
    char buf[256];
    while ((e = ERR_get_error()) != 0) {
        ERR_error_string_n(e, buf, sizeof(buf));
        px_log(PX_LOG_ERROR, "ossl", "%s: %s", where, buf);
    }
}

void px_bug(const char *file, int line, const char *msg)
{
    px_log(PX_LOG_ERROR, "bug", "%s:%d: %s", file, line, msg);
    abort();
}

const char *px_strerror(int err)
{
    switch (err) {
    case PX_E_CONFIG:
        return "configuration error";
    case PX_E_CRYPTO:
        return "crypto library error";
    case PX_E_HSM:
        return "HSM error";
    case PX_E_SHORT:
        return "input too short";
    case PX_E_PROTO:
        return "protocol error";
    case PX_E_EXISTS:
        return "state already exists";
    case PX_E_FULL:
        return "queue full";
    case PX_E_TIMEOUT:
        return "deadline missed";
    case PX_E_GONE:
        return "signer process gone";
    case PX_E_DOWN:
        return "no HSM member can sign";
    case PX_E_INVAL:
        return "invalid argument";
    case PX_E_SHUTDOWN:
        return "shutting down";
    case PX_E_OVERLOAD:
        return "HSM overloaded (the signatures queued ahead cannot finish by the deadline)";
    default:
        break;
    }
    if (err < 0 && err > -4096) {
        return strerror(-err);
    }
    return "unknown error";
}

uint64_t px_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/*
 * A plain memset, so that ASan checks the whole range (explicit_bzero runs inside libc, where
 * the sanitizers do not look: that is how a wipe of 47 bytes past a buffer went unseen), and a
 * compiler barrier that names the buffer, so the store cannot be dropped as dead.
 */
void px_wipe(void *p, size_t n)
{
    if (p != NULL && n > 0) {
        memset(p, 0, n);
        __asm__ __volatile__("" : : "r"(p) : "memory");
    }
}

int px_read_secret_file(const char *path, char *buf, size_t cap, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "cannot open PIN file %s: %s", path, strerror(e));
        return -e;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        snprintf(err, errlen, "PIN file %s is not a regular file", path);
        return PX_E_INVAL;
    }
    if ((st.st_mode & 077) != 0) {
        close(fd);
        snprintf(err, errlen, "PIN file %s is accessible by group or others (mode %04o); chmod 600 it",
                 path, (unsigned)(st.st_mode & 07777));
        return PX_E_INVAL;
    }
    ssize_t n = read(fd, buf, cap);
    close(fd);
    if (n < 0) {
        snprintf(err, errlen, "cannot read PIN file %s", path);
        return PX_E_INVAL;
    }
    if ((size_t)n >= cap) {
        px_wipe(buf, cap);
        snprintf(err, errlen, "PIN file %s is too large (over %zu bytes): not a PIN", path, cap - 1);
        return PX_E_INVAL;
    }
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) {
        n--;
    }
    buf[n] = '\0';
    if (n == 0) {
        snprintf(err, errlen, "PIN file %s is empty", path);
        return PX_E_INVAL;
    }
    for (ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (c < 0x20 || c > 0x7e) {
            px_wipe(buf, cap);
            snprintf(err, errlen, "PIN file %s holds non-printable bytes: corrupt?", path);
            return PX_E_INVAL;
        }
    }
    return (int)n;
}
