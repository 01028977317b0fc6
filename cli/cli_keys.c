/* SPDX-License-Identifier: MIT */
/*
 * cli_keys.c - the key state on disk that init, restore, run, mint, ca, backup and master-key
 * share: the wrapped master key file, DIR/keys -> keys.N, the HSM the wrapping key lives in,
 * getting the master key (in this process, or from the short-lived `__unwrap` child so the
 * proxy never loads the PKCS#11 module) and building a certificate cache with it.
 * Owns nothing past a call: every master-key copy is wiped before the function returns.
 * Threads: the main thread (management commands, proxy start and reload).
 * Invariants: DIR/keys changes only by one rename of a symlink (a crash leaves the old state or
 * the new one); the master key is wrapped with AES-256-GCM under a key that stays in the HSM.
 * Not here: the master-key commands (cli_mk.c), what is sealed (certcache reads the sealed
 * files), the backup bundle (cli_bundle.c).
 */
#include "cc.h"
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>

extern char **environ;

static const char mk_aad[] = "tlsmint master key v1";

static void hex(const uint8_t *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        snprintf(out + 2 * i, 3, "%02x", p[i]);
    }
}

static int unhex(const char *s, uint8_t *out, size_t n)
{
    if (strlen(s) != 2 * n) {
        return PX_E_INVAL;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned int b;
        if (sscanf(s + 2 * i, "%2x", &b) != 1) {
            return PX_E_INVAL;
        }
        out[i] = (uint8_t)b;
    }
    return 0;
}

int cli_mk_read_key_file(const char *path, uint8_t mk[32], char *err, size_t errlen)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    if (px_read_file(path, 200, &buf, &len) != 0) {
        snprintf(err, errlen, "cannot read master key file %s", path);
        return PX_E_INVAL;
    }
    int r = PX_E_INVAL;
    size_t got = len; /* wiped whole, trailing blanks included */
    if (len == 32) {
        memcpy(mk, buf, 32);
        r = 0;
    } else {
        while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' ')) {
            buf[--len] = 0;
        }
        if (len == 64 && unhex((char *)buf, mk, 32) == 0) {
            r = 0;
        }
    }
    px_wipe(buf, got);
    free(buf);
    if (r != 0) {
        snprintf(err, errlen, "master key file %s must hold 32 raw bytes or 64 hex digits", path);
    }
    return r;
}

int cli_mk_wrapped_read(const char *path, struct cli_mk_wrapped *w, char *err, size_t errlen)
{
    memset(w, 0, sizeof(*w));
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, errlen, "[master_key] file %s: %s", path, strerror(errno));
        return -errno;
    }
    char line[700];
    int have = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        line[strcspn(line, "\r\n")] = 0;
        char *sp = strchr(line, ' ');
        if (sp == NULL) {
            continue;
        }
        *sp++ = 0;
        if (strcmp(line, "tlsmint-master-key") == 0 && strcmp(sp, "1") == 0) {
            have |= 1;
        } else if (strcmp(line, "label") == 0) {
            snprintf(w->label, sizeof(w->label), "%s", sp);
            have |= 2;
        } else if (strcmp(line, "retired") == 0) {
            snprintf(w->retired, sizeof(w->retired), "%s", sp);
        } else if (strcmp(line, "created") == 0) {
            w->created = atoll(sp);
            have |= 4;
        } else if (strcmp(line, "iv") == 0 && unhex(sp, w->iv, 12) == 0) {
            have |= 8;
        } else if (strcmp(line, "data") == 0 && unhex(sp, w->data, 48) == 0) {
            have |= 16;
        }
    }
    fclose(f);
    if (have != 31) {
        snprintf(err, errlen, "[master_key] file %s is damaged or not a wrapped master key", path);
        return PX_E_PROTO;
    }
    return 0;
}

int cli_mk_wrapped_write(const char *path, const struct cli_mk_wrapped *w)
{
    char iv[25], data[97], buf[1200];
    hex(w->iv, 12, iv);
    hex(w->data, 48, data);
    int n = snprintf(buf, sizeof(buf),
                     "tlsmint-master-key 1\nlabel %s\nretired %s\ncreated %lld\niv %s\ndata %s\n",
                     w->label, w->retired, w->created, iv, data);
    return px_write_atomic(path, buf, (size_t)n, 0600);
}

/* Wraps mk with the token's AES key `label` (made now if make_key). */
int cli_mk_wrap(struct hsm_direct *d, const char *label, bool make_key, const uint8_t mk[32],
                   struct cli_mk_wrapped *w, char *err, size_t errlen)
{
    if (make_key && hsm_direct_aes_keygen(d, label, err, errlen) != 0) {
        return PX_E_HSM;
    }
    snprintf(w->label, sizeof(w->label), "%s", label);
    w->created = (long long)time(NULL);
    if (RAND_bytes(w->iv, 12) != 1) {
        return PX_E_CRYPTO;
    }
    size_t ol = sizeof(w->data);
    return hsm_direct_aes_gcm(d, label, true, w->iv, (const uint8_t *)mk_aad, sizeof(mk_aad) - 1,
                              mk, 32, w->data, &ol, err, errlen);
}

int cli_mk_unwrap_with(struct hsm_direct *d, const struct cli_mk_wrapped *w, uint8_t mk[32],
                          char *err, size_t errlen)
{
    uint8_t out[64]; /* modules want room for the whole input, tag included */
    size_t ol = sizeof(out);
    int r = hsm_direct_aes_gcm(d, w->label, false, w->iv, (const uint8_t *)mk_aad,
                               sizeof(mk_aad) - 1, w->data, 48, out, &ol, err, errlen);
    if (r == 0 && ol != 32) {
        snprintf(err, errlen, "unwrapped master key has %zu bytes, not 32", ol);
        r = PX_E_PROTO;
    }
    if (r == 0) {
        memcpy(mk, out, 32);
    }
    px_wipe(out, sizeof(out));
    return r;
}

struct hsm_direct *cli_hsm_open(const struct px_cfg *cfg, char *err, size_t errlen)
{
    if (cfg->n_members == 0) {
        snprintf(err, errlen, "%s: no [hsm] section", cfg->path);
        return NULL;
    }
    /* as the proxy's signers do: files the token writes must stay readable by [run] user */
    if (cli_priv_drop_child(cfg, err, errlen) != 0) {
        return NULL;
    }
    /* [master_key] module/env/token/pin_file name the HSM with the wrapping key when it is not
     * the [hsm] member (p11-kit's RPC refuses AES mechanisms, for instance) */
    struct px_hsm_member_cfg m = cfg->members[0];
    const struct px_hsm_member_cfg *o = &cfg->mk_hsm;
    if (o->module[0]) {
        snprintf(m.module, sizeof(m.module), "%s", o->module);
        m.n_env = o->n_env;
        memcpy(m.env, o->env, sizeof(m.env));
        snprintf(m.name, sizeof(m.name), "master_key");
    }
    if (o->token[0]) {
        snprintf(m.token, sizeof(m.token), "%s", o->token);
    }
    if (o->pin_file[0]) {
        snprintf(m.pin_file, sizeof(m.pin_file), "%s", o->pin_file);
    }
    if (hsm_member_setenv(&m) != 0) {
        snprintf(err, errlen, "[%s] env: cannot set", m.name);
        return NULL;
    }
    return hsm_direct_open(&m, err, errlen);
}

int cli_mk_unwrap(const struct px_cfg *cfg, uint8_t mk[32], char *err, size_t errlen)
{
    struct cli_mk_wrapped w;
    PX_TRY(cli_mk_wrapped_read(cfg->mk_file, &w, err, errlen));
    struct hsm_direct *d = cli_hsm_open(cfg, err, errlen);
    if (d == NULL) {
        return PX_E_HSM;
    }
    int r = cli_mk_unwrap_with(d, &w, mk, err, errlen);
    hsm_direct_close(d);
    return r;
}

int cli_unwrap_child(int argc, char **argv)
{
    const char *conf = NULL;
    for (int i = 1; i + 1 < argc; i++) {
        if (strcmp(argv[i], "-c") == 0) {
            conf = argv[i + 1];
        }
    }
    static struct px_cfg cfg;
    char err[600];
    uint8_t mk[32];
    if (conf == NULL || px_cfg_load(conf, &cfg, err, sizeof(err)) != 0 ||
        cli_priv_drop_child(&cfg, err, sizeof(err)) != 0 ||
        cli_mk_unwrap(&cfg, mk, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", conf ? err : "__unwrap is internal");
        return 1;
    }
    ssize_t w = write(STDOUT_FILENO, mk, 32);
    px_wipe(mk, sizeof(mk));
    return w == 32 ? 0 : 1;
}

int cli_mk_fetch(const struct px_cfg *cfg, uint8_t mk[32], char *err, size_t errlen)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        return -errno;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, p[1], STDOUT_FILENO);
    char conf[sizeof(cfg->path)];
    snprintf(conf, sizeof(conf), "%s", cfg->path);
    char *argv[] = {"tlsmint", "__unwrap", "-c", conf, NULL};
    posix_spawnattr_t sa; /* not the proxy's blocked signal mask */
    int r = -px_spawnattr_init(&sa);
    pid_t pid = -1;
    if (r == 0) {
        r = posix_spawn(&pid, cli_self_exe(), &fa, &sa, argv, environ);
        posix_spawnattr_destroy(&sa);
    }
    posix_spawn_file_actions_destroy(&fa);
    close(p[1]);
    if (r != 0) {
        close(p[0]);
        snprintf(err, errlen, "cannot start the unwrap helper: %s", strerror(r));
        return -r;
    }
    size_t got = 0;
    while (got < 32) {
        ssize_t n = read(p[0], mk + got, 32 - got);
        if (n <= 0) {
            break;
        }
        got += (size_t)n;
    }
    close(p[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    if (got != 32 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        px_wipe(mk, 32);
        snprintf(err, errlen, "the master key could not be unwrapped by the HSM (see the line "
                 "above)");
        return PX_E_HSM;
    }
    return 0;
}

struct cc_ctx *cli_cc_new(const struct px_cfg *cfg, struct hsm_pool *pool, char *err,
                          size_t errlen)
{
    uint8_t mk[32] = {0};
    bool have_mk = cfg->mk_file[0] != '\0';
    if (have_mk) {
        mlock(mk, sizeof(mk));
        if (cli_mk_fetch(cfg, mk, err, errlen) != 0) {
            return NULL;
        }
    }
    struct cc_ctx *cc = cc_new_mk(cfg, pool, have_mk ? mk : NULL, err, errlen);
    px_wipe(mk, sizeof(mk)); /* the cache has opened what it needs */
    return cc;
}

/* When the master key's lifetime ends (Unix time); LLONG_MIN when unknown. */
long long cli_mk_expiry(const struct px_cfg *cfg)
{
    struct cli_mk_wrapped w;
    char err[300];
    if (cfg->mk_file[0] == '\0' || cli_mk_wrapped_read(cfg->mk_file, &w, err, sizeof(err)) != 0) {
        return LLONG_MIN;
    }
    return (long long)w.created + (long long)cfg->mk_lifetime_days * 86400;
}

/* Days until the master key's lifetime ends (negative: overdue); INT_MIN when unknown. */
int cli_mk_days_left(const struct px_cfg *cfg)
{
    struct cli_mk_wrapped w;
    char err[300];
    if (cfg->mk_file[0] == '\0' || cli_mk_wrapped_read(cfg->mk_file, &w, err, sizeof(err)) != 0) {
        return INT_MIN;
    }
    long long left = w.created + (long long)cfg->mk_lifetime_days * 86400 - (long long)time(NULL);
    /* whole days, started days counting: a fresh key has its full lifetime left */
    return (int)(left >= 0 ? (left + 86399) / 86400 : -((-left + 86399) / 86400));
}

/* DIR/keys -> keys.N: returns N, or -1. */
int cli_keys_generation(const char *dir)
{
    char link[PATH_MAX], target[PATH_MAX];
    snprintf(link, sizeof(link), "%s/keys", dir);
    ssize_t n = readlink(link, target, sizeof(target) - 1);
    if (n <= 0) {
        return -1;
    }
    target[n] = 0;
    const char *dot = strrchr(target, '.');
    return dot ? atoi(dot + 1) : -1;
}

/* Points DIR/keys at keys.N with one rename (atomic). */
int cli_keys_switch(const char *dir, int gen)
{
    char tmp[PATH_MAX], link[PATH_MAX], target[64];
    snprintf(target, sizeof(target), "keys.%d", gen);
    snprintf(tmp, sizeof(tmp), "%s/keys.link.tmp", dir);
    snprintf(link, sizeof(link), "%s/keys", dir);
    unlink(tmp);
    if (symlink(target, tmp) != 0 || rename(tmp, link) != 0) {
        return -errno;
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

int cli_keys_create(const char *dir, struct hsm_direct *d, const uint8_t mk[32],
                    const uint8_t *untrust_pem, size_t untrust_len, const uint8_t *pool_pem,
                    size_t pool_len, char *err, size_t errlen)
{
    char kd[PATH_MAX], p[PATH_MAX + 64];
    snprintf(kd, sizeof(kd), "%s/keys.1", dir);
    if (mkdir(kd, 0700) != 0) {
        snprintf(err, errlen, "cannot create %s: %s", kd, strerror(errno));
        return -errno;
    }
    struct cli_mk_wrapped w = {0};
    PX_TRY(cli_mk_wrap(d, "tlsmint-wrap-1", true, mk, &w, err, errlen));
    snprintf(p, sizeof(p), "%s/master.wrapped", kd);
    PX_TRY(cli_mk_wrapped_write(p, &w));
    const struct {
        const char *name, *role;
        const uint8_t *pt;
        size_t len;
    } files[] = {{"forward-untrust.key.enc", "forward-untrust-key", untrust_pem, untrust_len},
                 {"leaf-pool.enc", "leaf-key-pool", pool_pem, pool_len}};
    for (size_t i = 0; i < 2; i++) {
        uint8_t *sealed = NULL;
        size_t sl = 0;
        PX_TRY(px_seal(mk, files[i].role, files[i].pt, files[i].len, &sealed, &sl));
        snprintf(p, sizeof(p), "%s/%s", kd, files[i].name);
        int r = px_write_atomic(p, sealed, sl, 0600);
        free(sealed);
        if (r != 0) {
            snprintf(err, errlen, "cannot write %s", p);
            return r;
        }
    }
    return cli_keys_switch(dir, 1);
}

int cli_keys_restore(const char *dir, struct hsm_direct *d, const uint8_t mk[32],
                     const char *label, const struct entry_view *uk, const struct entry_view *lp,
                     char *err, size_t errlen)
{
    char kd[PATH_MAX], p[PATH_MAX + 64];
    snprintf(kd, sizeof(kd), "%s/keys.1", dir);
    if (mkdir(kd, 0700) != 0) {
        snprintf(err, errlen, "cannot create %s: %s", kd, strerror(errno));
        return -errno;
    }
    struct cli_mk_wrapped w = {0};
    PX_TRY(cli_mk_wrap(d, label, true, mk, &w, err, errlen));
    snprintf(p, sizeof(p), "%s/master.wrapped", kd);
    PX_TRY(cli_mk_wrapped_write(p, &w));
    const struct entry_view *v[2] = {uk, lp};
    const char *names[2] = {"forward-untrust.key.enc", "leaf-pool.enc"};
    for (int i = 0; i < 2; i++) {
        if (v[i] == NULL) {
            continue;
        }
        snprintf(p, sizeof(p), "%s/%s", kd, names[i]);
        PX_TRY(px_write_atomic(p, v[i]->data, v[i]->len, 0600));
    }
    return cli_keys_switch(dir, 1);
}
