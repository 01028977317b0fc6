/* SPDX-License-Identifier: MIT */
/*
 * cli_mk.c - the `master-key` command: status, rotate-wrapping-key (a new AES-256 key made
 * inside the HSM wraps the same master key; the old one stays in the HSM) and change (a new
 * master key, every sealed file re-encrypted into DIR/keys.N+1, then one atomic switch).
 * Owns nothing past the command; the old and new master keys are wiped before it returns.
 * Threads: the main thread of a management command.
 * Invariants: a crash at any point leaves DIR/keys at the complete old state or the new one.
 * Not here: the key state helpers other commands share (cli_keys.c), the audit log
 * (cli_common.c), what is sealed (certcache reads the sealed files).
 */
#include "cli.h"

#include <dirent.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>

static const char mk_usage[] =
    "usage: tlsmint [-c CONFIG] master-key status|rotate-wrapping-key|change [--master-key-file F]\n"
    "\n"
    "  status               wrapping key, age and lifetime of the master key\n"
    "  rotate-wrapping-key  new AES-256 wrapping key in the HSM, master key re-wrapped with it;\n"
    "                       the old wrapping key stays in the HSM\n"
    "  change               new master key (random, or from F: 32 bytes or 64 hex digits);\n"
    "                       every sealed file re-encrypted, all or nothing\n";

static int state_dir_of(const struct px_cfg *cfg, char *dir, size_t cap)
{
    /* mk_file = DIR/keys/master.wrapped */
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof(tmp), "%s", cfg->mk_file);
    char *k = dirname(tmp);
    snprintf(dir, cap, "%s", dirname(k));
    return 0;
}

/*
 * After a switch to keys.live: every other keys.N goes, not only the one just left. A change
 * killed between its switch and its clean-up leaves the old directory behind, and the next
 * change would otherwise only ever remove its own predecessor.
 */
static void remove_old_generations(const char *dir, int live)
{
    DIR *dp = opendir(dir);
    if (dp == NULL) {
        return;
    }
    struct dirent *de;
    while ((de = readdir(dp)) != NULL) {
        int n = 0, used = 0;
        if (sscanf(de->d_name, "keys.%d%n", &n, &used) != 1 || de->d_name[used] != '\0' ||
            n < 1 || n == live) {
            continue;
        }
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
        if (cli_rm_tree(p) != 0) {
            px_log(PX_LOG_WARN, "mk", "could not remove the old key directory %s", de->d_name);
        }
    }
    closedir(dp);
}

static int mk_change(const struct px_cfg *cfg, struct hsm_direct *d, const char *newfile,
                     char *err, size_t errlen)
{
    char dir[PATH_MAX];
    state_dir_of(cfg, dir, sizeof(dir));
    int gen = cli_keys_generation(dir);
    if (gen < 1) {
        snprintf(err, errlen, "%s/keys is not a key directory link", dir);
        return PX_E_INVAL;
    }
    struct cli_mk_wrapped w;
    uint8_t oldk[32], newk[32];
    PX_TRY(cli_mk_wrapped_read(cfg->mk_file, &w, err, errlen));
    PX_TRY(cli_mk_unwrap_with(d, &w, oldk, err, errlen));
    if (newfile != NULL) {
        PX_TRY(cli_mk_read_key_file(newfile, newk, err, errlen));
    } else if (RAND_bytes(newk, 32) != 1) {
        return PX_E_CRYPTO;
    }
    char nd[PATH_MAX], p[PATH_MAX + 64], q[PATH_MAX + 64];
    snprintf(nd, sizeof(nd), "%s/keys.%d", dir, gen + 1);
    if (cli_rm_tree(nd) != 0 || mkdir(nd, 0700) != 0) { /* leftover of an interrupted change */
        snprintf(err, errlen, "cannot create %s", nd);
        return PX_E_INVAL;
    }
    const char *files[][2] = {{"forward-untrust.key.enc", "forward-untrust-key"},
                              {"leaf-pool.enc", "leaf-key-pool"}};
    int ret = 0;
    for (size_t i = 0; i < 2 && ret == 0; i++) {
        uint8_t *in = NULL, *pt = NULL, *out = NULL;
        size_t il = 0, pl = 0, ol = 0;
        snprintf(p, sizeof(p), "%s/keys.%d/%s", dir, gen, files[i][0]);
        snprintf(q, sizeof(q), "%s/%s", nd, files[i][0]);
        ret = px_read_file(p, 1 << 20, &in, &il);
        if (ret == 0) {
            ret = px_unseal(oldk, files[i][1], in, il, &pt, &pl);
        }
        if (ret == 0) {
            ret = px_seal(newk, files[i][1], pt, pl, &out, &ol);
        }
        if (ret == 0) {
            ret = px_write_atomic(q, out, ol, 0600);
        }
        if (pt != NULL) {
            px_wipe(pt, pl);
        }
        free(in);
        free(pt);
        free(out);
        if (ret != 0) {
            snprintf(err, errlen, "re-encrypting %s failed (%s): nothing changed", p,
                     px_strerror(ret));
        }
    }
    if (ret == 0) {
        struct cli_mk_wrapped nw = w; /* same wrapping key, same retired list */
        ret = cli_mk_wrap(d, w.label, false, newk, &nw, err, errlen);
        snprintf(p, sizeof(p), "%s/master.wrapped", nd);
        if (ret == 0) {
            ret = cli_mk_wrapped_write(p, &nw);
        }
    }
    /* the one atomic step: before it the old state is complete, after it the new one */
    if (ret == 0 && getenv("TLSMINT_TEST_CRASH_BEFORE_SWITCH") != NULL) {
        _exit(9); /* tests: a kill -9 at the worst moment */
    }
    if (ret == 0) {
        ret = cli_keys_switch(dir, gen + 1);
    }
    px_wipe(oldk, sizeof(oldk));
    px_wipe(newk, sizeof(newk));
    if (ret == 0) {
        remove_old_generations(dir, gen + 1);
    }
    return ret;
}

int cli_master_key(int argc, char **argv)
{
    static const struct option opts[] = {{"master-key-file", required_argument, NULL, 'm'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *conf = "./var/tlsmint.conf", *mkfile = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            conf = optarg;
            break;
        case 'm':
            mkfile = optarg;
            break;
        case 'h':
            return cli_usage(mk_usage, 0);
        default:
            return cli_usage(mk_usage, 2);
        }
    }
    if (optind + 1 != argc) {
        return cli_usage(mk_usage, 2);
    }
    const char *cmd = argv[optind];
    static struct px_cfg cfg;
    if (cli_load_config(conf, &cfg) != 0) {
        return 1;
    }
    if (cfg.mk_file[0] == '\0') {
        fprintf(stderr, "tlsmint master-key: %s has no [master_key] file\n", conf);
        return 1;
    }
    char err[600];
    struct cli_mk_wrapped w;
    if (cli_mk_wrapped_read(cfg.mk_file, &w, err, sizeof(err)) != 0) {
        fprintf(stderr, "tlsmint master-key: %s\n", err);
        return 1;
    }
    if (strcmp(cmd, "status") == 0) {
        int left = cli_mk_days_left(&cfg);
        printf("master key    wrapped by HSM key '%s'%s%s\n", w.label,
               w.retired[0] ? ", earlier wrapping keys kept: " : "", w.retired);
        printf("lifetime      %d days, %d left%s\n", cfg.mk_lifetime_days, left,
               left < 0                           ? " (EXPIRED: run master-key change)"
               : left <= cfg.mk_reminder_days ? " (reminder: change it soon)"
                                                  : "");
        return 0;
    }
    struct hsm_direct *d = cli_hsm_open(&cfg, err, sizeof(err));
    if (d == NULL) {
        fprintf(stderr, "tlsmint master-key: %s\n", err);
        cli_audit(&cfg, "hsm_login_failure", "\"command\":\"master-key %s\"", cmd);
        return 1;
    }
    int ret = 1;
    if (strcmp(cmd, "rotate-wrapping-key") == 0) {
        uint8_t mk[32];
        struct cli_mk_wrapped nw;
        /* a fresh label: nodes sharing a token (HA, restored nodes) each add their own keys */
        uint8_t rnd[4];
        RAND_bytes(rnd, sizeof(rnd));
        char label[64];
        snprintf(label, sizeof(label), "tlsmint-wrap-%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2],
                 rnd[3]);
        if (cli_mk_unwrap_with(d, &w, mk, err, sizeof(err)) == 0 &&
            cli_mk_wrap(d, label, true, mk, &nw, err, sizeof(err)) == 0) {
            snprintf(nw.retired, sizeof(nw.retired), "%s%s%s", w.retired, w.retired[0] ? "," : "",
                     w.label);
            nw.created = w.created; /* the master key's age does not change */
            if (cli_mk_wrapped_write(cfg.mk_file, &nw) == 0) {
                printf("master key re-wrapped with new HSM key '%s'; '%s' is kept in the HSM\n",
                       label, w.label);
                cli_audit(&cfg, "wrapping_key_rotated", "\"new\":\"%s\",\"old\":\"%s\"", label,
                          w.label);
                ret = 0;
            }
        }
        px_wipe(mk, sizeof(mk));
    } else if (strcmp(cmd, "change") == 0) {
        if (mk_change(&cfg, d, mkfile, err, sizeof(err)) == 0) {
            printf("master key changed; every sealed file re-encrypted. A running proxy uses the "
                   "new key after 'tlsmint ctl reload' or a restart.\n");
            cli_audit(&cfg, "master_key_changed", "\"from_file\":%s", mkfile ? "true" : "false");
            ret = 0;
        }
    } else {
        snprintf(err, sizeof(err), "unknown master-key command '%s'", cmd);
    }
    if (ret != 0) {
        fprintf(stderr, "tlsmint master-key: %s\n", err);
    }
    hsm_direct_close(d);
    return ret;
}
