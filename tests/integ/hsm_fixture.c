/* SPDX-License-Identifier: MIT */
/*
 * hsm_fixture.c - real SoftHSM tokens for integration tests, made by the real `tlsmint init`
 * in a temporary directory (its own SOFTHSM2_CONF, nothing shared with other tests).
 */
#include "hsm_fixture.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

const char *fx_bin(void)
{
    const char *b = getenv("TLSMINT_BIN");
    if (b == NULL) {
        fprintf(stderr, "TLSMINT_BIN is not set (run through meson test)\n");
        exit(1);
    }
    return b;
}

int fx_run(const char *cmd, char *out, size_t outlen)
{
    char full[2048];
    snprintf(full, sizeof(full), "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    if (p == NULL) {
        return -1;
    }
    size_t n = fread(out, 1, outlen - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

void fx_init(struct fx *fx, const char *kind)
{
    snprintf(fx->dir, sizeof(fx->dir), "/tmp/tlsmint-test-XXXXXX");
    if (mkdtemp(fx->dir) == NULL) {
        perror("mkdtemp");
        exit(1);
    }
    char cmd[700], out[4096], mkpath[300];
    snprintf(mkpath, sizeof(mkpath), "%s/mk.key", fx->dir);
    FILE *r = fopen("/dev/urandom", "r");
    FILE *w = fopen(mkpath, "w");
    if (r == NULL || w == NULL || fread(fx->mk, 1, 32, r) != 32 || fwrite(fx->mk, 1, 32, w) != 32) {
        fprintf(stderr, "fixture: cannot make a master key\n");
        exit(1);
    }
    fclose(r);
    fclose(w);
    snprintf(cmd, sizeof(cmd), "%s init --dir %s/state --key-type %s --master-key-file %s",
             fx_bin(), fx->dir, kind, mkpath);
    int rc = fx_run(cmd, out, sizeof(out));
    if (rc != 0) {
        fprintf(stderr, "fixture: '%s' failed (%d):\n%s\n", cmd, rc, out);
        exit(1);
    }
    snprintf(fx->conf, sizeof(fx->conf), "%s/state/tlsmint.conf", fx->dir);
}

void fx_fini(struct fx *fx)
{
    if (fx->dir[0] == '\0' || strncmp(fx->dir, "/tmp/tlsmint-test-", 18) != 0) {
        return;
    }
    char cmd[300], out[256];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", fx->dir);
    fx_run(cmd, out, sizeof(out));
}

const char *fx_conf_with(const struct fx *fx, const char *extra, char *out, size_t outlen)
{
    static int seq;
    snprintf(out, outlen, "%s/conf-%d-%d.conf", fx->dir, (int)getpid(), seq++);
    FILE *in = fopen(fx->conf, "r");
    FILE *o = fopen(out, "w");
    if (in == NULL || o == NULL) {
        perror("fx_conf_with");
        exit(1);
    }
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), in)) > 0) {
        fwrite(buf, 1, n, o);
    }
    fprintf(o, "\n%s\n", extra);
    fclose(in);
    fclose(o);
    return out;
}
