/* SPDX-License-Identifier: MIT */
/*
 * cli_common.c - what every command of the tlsmint program needs: its own path (signers and
 * the unwrap helper are started from it), loading -c CONFIG with the one error line every
 * command prints, a command's usage text (stdout for --help, stderr and 2 for a usage error),
 * and the audit log.
 * Owns the binary's path, found once by main before any command runs.
 * Threads: the main thread; cli_audit also from the admin thread (one open/write/close per
 * line, O_APPEND, so lines of two writers never mix).
 * Invariants: an audit line never holds a PIN or a key byte.
 * Not here: any command (each has its own file; they all depend on this one, it on none).
 */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char g_self[PATH_MAX];

const char *cli_self_exe(void)
{
    return g_self;
}

void cli_self_exe_init(const char *argv0)
{
    ssize_t n = readlink("/proc/self/exe", g_self, sizeof(g_self) - 1);
    if (n <= 0) {
        snprintf(g_self, sizeof(g_self), "%s", argv0);
    } else {
        g_self[n] = '\0';
    }
}

static int rm_one(const char *p, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)type;
    (void)ftw;
    return remove(p) == 0 || errno == ENOENT ? 0 : -errno;
}

int cli_rm_tree(const char *path)
{
    int r = nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    return r == -1 ? (errno == ENOENT ? 0 : -errno) : r;
}

int cli_load_config(const char *path, struct px_cfg *cfg)
{
    char err[600];
    if (px_cfg_load(path, cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "tlsmint: %s\n", err);
        if (access(path, F_OK) != 0) {
            fprintf(stderr, "tlsmint: run 'tlsmint init' first, or pass -c CONFIG\n");
        }
        return 1;
    }
    if (cli_priv_check(cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "tlsmint: %s: %s\n", path, err);
        return 1;
    }
    px_log_set_level(cfg->log_level);
    return 0;
}

int cli_usage(const char *usage, int status)
{
    fputs(usage, status == 0 ? stdout : stderr);
    return status;
}

void cli_audit(const struct px_cfg *cfg, const char *event, const char *fmt, ...)
{
    if (cfg == NULL || cfg->log_audit[0] == '\0') {
        return;
    }
    char detail[600] = "", line[900];
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(detail, sizeof(detail), fmt, ap);
        va_end(ap);
    }
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    int n = snprintf(line, sizeof(line),
                     "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02dZ\",\"event\":\"%s\",\"pid\":%d%s%s}\n",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     event, (int)getpid(), detail[0] ? "," : "", detail);
    if (n <= 0) {
        return;
    }
    size_t len = (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1;
    int fd = open(cfg->log_audit, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    ssize_t w = fd >= 0 ? write(fd, line, len) : -1;
    int e = errno;
    if (fd >= 0) {
        close(fd);
    }
    if (w == (ssize_t)len) {
        px_sink_ok(PX_SINK_AUDIT);
    } else { /* counted and reported (px_lograte.c): an audit trail must not lose lines quietly */
        px_sink_lost(PX_SINK_AUDIT, cfg->log_audit, w < 0 ? strerror(e) : "short write");
    }
}
