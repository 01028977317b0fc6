/* SPDX-License-Identifier: MIT */
/*
 * cli.h - the tlsmint program's subcommands and the helpers they share (private to cli/).
 * Each command returns the process exit status and prints one clear line on stderr on failure.
 * Dependencies point one way: tlsmint.c -> the commands (one file each) -> the shared helpers
 * (cli_common.c, cli_keys.c, cli_expiry.c, cli_priv.c, cli_svc.c); a command never calls
 * another command's file, and the helpers call no command. cli_admin.c is the running proxy's
 * admin side, used by run (cli_hsm.c) and by the ctl command.
 */
#ifndef CLI_H
#define CLI_H

#include <stdbool.h>
#include <stdio.h>
#include <time.h>

#include <openssl/x509.h>

#include "hsm.h"

/* ---- commands ---- */
int cli_init(int argc, char **argv);        /* cli_init.c */
int cli_hsm_status(int argc, char **argv);  /* cli_hsm.c */
int cli_run(int argc, char **argv);         /* cli_hsm.c */
int cli_mint(int argc, char **argv);        /* cli_mint.c */
int cli_master_key(int argc, char **argv);  /* cli_mk.c */
int cli_backup(int argc, char **argv);      /* cli_bundle.c */
int cli_restore(int argc, char **argv);     /* cli_bundle.c */
int cli_ca(int argc, char **argv);          /* cli_ca.c */
int cli_inbound(int argc, char **argv);     /* cli_inbound.c */
int cli_transparent(int argc, char **argv); /* cli_nft.c */
int cli_unwrap_child(int argc, char **argv); /* cli_keys.c: the internal __unwrap */

/* ---- shared helpers: the program (cli_common.c) ---- */
/* Path of the running tlsmint binary (for spawning signers). */
const char *cli_self_exe(void);
/* Finds it (/proc/self/exe, else argv0); main calls it once, before any command. */
void cli_self_exe_init(const char *argv0);
/* Loads -c CONFIG (default ./var/tlsmint.conf); prints the error and returns non-zero on failure. */
int cli_load_config(const char *path, struct px_cfg *cfg);
/* A command's usage text (borrows usage): on stdout for --help (status 0), on stderr for a
 * usage error (status 2). Returns status, the command's exit status. */
int cli_usage(const char *usage, int status);
/* Removes path and everything below it (no shell; links are removed, not followed). 0 when
 * it is gone (or never was), else -errno of the first failure. */
int cli_rm_tree(const char *path);
/* One JSON line appended to [log] audit (never a PIN or key byte). fmt: extra JSON members. */
void cli_audit(const struct px_cfg *cfg, const char *event, const char *fmt, ...)
    PX_PRINTF(3, 4);

/* ---- shared helpers: the key state (cli_keys.c) ---- */
int cli_mk_read_key_file(const char *path, uint8_t mk[32], char *err, size_t errlen);
/* Unwraps the master key in this process (management commands). */
int cli_mk_unwrap(const struct px_cfg *cfg, uint8_t mk[32], char *err, size_t errlen);
/* Gets the master key from a short-lived child (the proxy never loads the module itself). */
int cli_mk_fetch(const struct px_cfg *cfg, uint8_t mk[32], char *err, size_t errlen);
/* cc_new_mk with the master key fetched for the call (if [master_key] file is set) and wiped
 * right after; the one way the CLI builds a certificate cache. */
struct cc_ctx *cli_cc_new(const struct px_cfg *cfg, struct hsm_pool *pool, char *err,
                          size_t errlen);
int cli_mk_days_left(const struct px_cfg *cfg);
long long cli_mk_expiry(const struct px_cfg *cfg);
struct hsm_direct *cli_hsm_open(const struct px_cfg *cfg, char *err, size_t errlen);
/* The wrapped master key file. */
struct cli_mk_wrapped {
    char label[64];
    char retired[512]; /* earlier wrapping keys, kept in the HSM */
    long long created;
    uint8_t iv[12];
    uint8_t data[48];
};
int cli_mk_wrapped_read(const char *path, struct cli_mk_wrapped *w, char *err, size_t errlen);
int cli_mk_wrapped_write(const char *path, const struct cli_mk_wrapped *w);
/* Wraps mk with the token's AES key `label` (made now if make_key): fresh IV, created = now. */
int cli_mk_wrap(struct hsm_direct *d, const char *label, bool make_key, const uint8_t mk[32],
                struct cli_mk_wrapped *w, char *err, size_t errlen);
int cli_mk_unwrap_with(struct hsm_direct *d, const struct cli_mk_wrapped *w, uint8_t mk[32],
                       char *err, size_t errlen);
/* DIR/keys -> keys.N: returns N, or -1. */
int cli_keys_generation(const char *dir);
/* Points DIR/keys at keys.N with one rename (atomic). */
int cli_keys_switch(const char *dir, int gen);
/* DIR/keys.1 with the wrapped master key (new HSM wrapping key) and the sealed key files. */
int cli_keys_create(const char *dir, struct hsm_direct *d, const uint8_t mk[32],
                    const uint8_t *untrust_pem, size_t untrust_len, const uint8_t *pool_pem,
                    size_t pool_len, char *err, size_t errlen);

/* A named byte string (bundle entries). */
struct entry_view {
    char name[64];
    uint8_t *data;
    size_t len;
};
/* DIR/keys.1 for a restored node: sealed files as they are, mk wrapped by a new HSM key. */
int cli_keys_restore(const char *dir, struct hsm_direct *d, const uint8_t mk[32],
                     const char *label, const struct entry_view *uk, const struct entry_view *lp,
                     char *err, size_t errlen);

/* ---- shared helpers: certificate lifetimes (cli_expiry.c) ---- */
#define CLI_CERT_EXP_MAX 16
struct cli_cert_exp {
    char role[24];     /* forward-trust | forward-trust-chain | forward-untrust */
    char subject[256]; /* one-line DN */
    char file[256];
    time_t not_after;
    int days_left;     /* started days; negative once expired */
    bool expired;
};
/* The certificates tlsmint serves, read from their files now; returns how many (<= max). */
int cli_cert_expiry(const struct px_cfg *cfg, struct cli_cert_exp *out, int max);
/* PX_E_CONFIG and a line in err when the forward-trust CA has expired (start, reload). */
int cli_cert_expiry_check(const struct px_cfg *cfg, char *err, size_t errlen);
/* Logs a warning for each one within [ca] reminder_days, an error for each expired one. */
void cli_cert_expiry_warn(const struct px_cfg *cfg);
/* `ctl status` lines and the metrics (tlsmint_certificate_expiry_timestamp_seconds{role,subject},
 * reminder gauges) for the admin thread. */
void cli_cert_expiry_status(const struct px_cfg *cfg, FILE *o);
void cli_cert_expiry_metrics(const struct px_cfg *cfg, FILE *o);

/* ---- shared helpers: privileges (cli_priv.c) ---- */
/* [listen] tproxy or [upstream] mark: the loops keep CAP_NET_ADMIN. */
bool cli_priv_needs_net_admin(const struct px_cfg *cfg);
/* The proxy, on the main thread, after binding and before the loop threads start: becomes
 * [run] user (when root) keeping only the capabilities cfg needs. 0, or negative + err. */
int cli_priv_drop(const struct px_cfg *cfg, char *err, size_t errlen);
/* [run] user names an existing, unprivileged user (checked when the config is loaded). */
int cli_priv_check(const struct px_cfg *cfg, char *err, size_t errlen);
/* Signer and unwrap children: become [run] user (when root), keep no capability. */
int cli_priv_drop_child(const struct px_cfg *cfg, char *err, size_t errlen);
/* init as root on a directory owned by another user: become that user. 1 switched, 0 not. */
int cli_priv_become_owner(const char *dir, char *err, size_t errlen);

/* ---- shared helpers: systemd (cli_svc.c) ---- */
/* READY=1 (once >= 1 HSM member is up), STATUS= and the watchdog; after the listeners accept. */
void cli_svc_running(struct hsm_pool *pool, const char *explicit_l, const char *transparent_l);

#endif
