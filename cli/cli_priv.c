/* SPDX-License-Identifier: MIT */
/*
 * cli_priv.c - running unprivileged: `[run] user`, and the capabilities the proxy keeps.
 * The proxy (cli_priv_drop) binds its listeners as root, then switches to the user and its
 * group (setresgid/setresuid, supplementary groups cleared) and keeps CAP_NET_ADMIN only when
 * [listen] tproxy or a non-zero [upstream] mark asks for it. It runs on the main thread before
 * the loop threads start, so the loops inherit exactly that set; threads that exist already
 * (HSM dispatcher, resolvers, access log) change user with it and keep no capability at all.
 * Signers and the master-key unwrap child (cli_priv_drop_child) become the user themselves
 * before they read a PIN or load a module, from the very first start on: a signer the
 * dispatcher respawns later (as the user, from a thread without capabilities) works exactly as
 * the first one did, and the proxy can kill the signers it owns. The state they read (tokens,
 * PIN file, sealed keys) must therefore belong to the user: `init` as root on a directory that
 * belongs to another user creates it as that user (cli_priv_become_owner).
 * Capabilities are set with the raw capget/capset system calls (no libcap here).
 * Not here: where the call sites are (cli_hsm.c run, tlsmint.c, cli_mk.c, cli_init.c).
 */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <libgen.h>
#include <limits.h>
#include <linux/capability.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

struct caps {
    uint64_t eff, prm, inh;
};

static int caps_get(struct caps *c)
{
    struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct d[2];
    memset(d, 0, sizeof(d));
    if (syscall(SYS_capget, &h, d) != 0) {
        return -errno;
    }
    c->eff = d[0].effective | (uint64_t)d[1].effective << 32;
    c->prm = d[0].permitted | (uint64_t)d[1].permitted << 32;
    c->inh = d[0].inheritable | (uint64_t)d[1].inheritable << 32;
    return 0;
}

static int caps_set(const struct caps *c)
{
    struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct d[2];
    d[0].effective = (uint32_t)c->eff;
    d[1].effective = (uint32_t)(c->eff >> 32);
    d[0].permitted = (uint32_t)c->prm;
    d[1].permitted = (uint32_t)(c->prm >> 32);
    d[0].inheritable = (uint32_t)c->inh;
    d[1].inheritable = (uint32_t)(c->inh >> 32);
    return syscall(SYS_capset, &h, d) == 0 ? 0 : -errno;
}

static int cap_last(void)
{
    int last = 40;
    FILE *f = fopen("/proc/sys/kernel/cap_last_cap", "r");
    if (f != NULL) {
        if (fscanf(f, "%d", &last) != 1) {
            last = 40;
        }
        fclose(f);
    }
    return last;
}

bool cli_priv_needs_net_admin(const struct px_cfg *cfg)
{
    return cfg->listen_tproxy || cfg->upstream_mark != 0;
}

static int lookup(const char *user, uid_t *uid, gid_t *gid, char *err, size_t errlen)
{
    struct passwd pw, *res = NULL;
    char buf[4096];
    int r = getpwnam_r(user, &pw, buf, sizeof(buf), &res);
    if (r != 0 || res == NULL) {
        snprintf(err, errlen, "[run] user: no such user '%s'", user);
        return PX_E_CONFIG;
    }
    if (pw.pw_uid == 0) {
        snprintf(err, errlen, "[run] user: '%s' is root; name an unprivileged user", user);
        return PX_E_CONFIG;
    }
    *uid = pw.pw_uid;
    *gid = pw.pw_gid;
    return 0;
}

int cli_priv_check(const struct px_cfg *cfg, char *err, size_t errlen)
{
    uid_t uid;
    gid_t gid;
    return cfg->run_user[0] == '\0' ? 0 : lookup(cfg->run_user, &uid, &gid, err, errlen);
}

/* setgroups + setresgid + setresuid (glibc applies each to every thread of the process). */
static int switch_ids(const char *user, uid_t uid, gid_t gid, char *err, size_t errlen)
{
    if (setgroups(0, NULL) != 0 || setresgid(gid, gid, gid) != 0 ||
        setresuid(uid, uid, uid) != 0) {
        int e = errno;
        snprintf(err, errlen, "[run] user: cannot switch to '%s' (uid %u): %s", user,
                 (unsigned)uid, strerror(e));
        return -e;
    }
    uid_t r, e, s;
    if (getresuid(&r, &e, &s) != 0 || r != uid || e != uid || s != uid) {
        snprintf(err, errlen, "[run] user: uid did not change to %u", (unsigned)uid);
        return PX_E_INVAL;
    }
    return 0;
}

/* Effective, permitted, inheritable and ambient sets reduced to keep (a bit mask). */
static int caps_limit(uint64_t keep, char *err, size_t errlen)
{
    struct caps c = {0};
    int r = caps_get(&c);
    if (r == 0) {
        c.prm &= keep;
        c.eff = c.prm; /* setresuid cleared the effective set; raise what is kept */
        c.inh = 0;
        r = caps_set(&c);
    }
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    if (r != 0) {
        snprintf(err, errlen, "capset: %s", strerror(-r));
    }
    return r;
}

/* chown of a file or directory that exists; a missing one is fine. */
static int give(const char *path, uid_t uid, gid_t gid, char *err, size_t errlen)
{
    if (path[0] == '\0') {
        return 0;
    }
    if (chown(path, uid, gid) != 0 && errno != ENOENT) {
        int e = errno;
        snprintf(err, errlen, "[run] user: cannot chown %s: %s", path, strerror(e));
        return -e;
    }
    return 0;
}

int cli_priv_drop(const struct px_cfg *cfg, char *err, size_t errlen)
{
    bool need = cli_priv_needs_net_admin(cfg);
    uint64_t keep = need ? (1ull << CAP_NET_ADMIN) : 0;
    if (cfg->run_user[0] == '\0' || geteuid() != 0) {
        /* not asked to switch, or started unprivileged (systemd User=): shed what is not
         * needed; a process without capabilities has nothing to shed */
        struct caps c = {0};
        if (caps_get(&c) == 0 && (c.prm & ~keep) != 0 && geteuid() != 0) {
            PX_TRY(caps_limit(keep, err, errlen));
            px_log(PX_LOG_INFO, "main", "capabilities reduced to %s",
                   need ? "CAP_NET_ADMIN" : "none");
        }
        return 0;
    }
    uid_t uid;
    gid_t gid;
    PX_TRY(lookup(cfg->run_user, &uid, &gid, err, errlen));
    /* what the user must be able to write after the switch: the admin socket's directory
     * (the socket is bound after it), the log files opened per line */
    char dir[sizeof(cfg->admin_socket)];
    snprintf(dir, sizeof(dir), "%s", cfg->admin_socket);
    if (cfg->admin_socket[0] != '\0') {
        const char *d = dirname(dir);
        if (mkdir(d, 0750) != 0 && errno != EEXIST) {
            snprintf(err, errlen, "[admin] socket: cannot create %s: %s", d, strerror(errno));
            return -errno;
        }
        PX_TRY(give(d, uid, gid, err, errlen));
    }
    PX_TRY(give(cfg->log_audit, uid, gid, err, errlen));
    PX_TRY(give(cfg->log_access, uid, gid, err, errlen));
    PX_TRY(give(cfg->log_keylog, uid, gid, err, errlen));
    /* this thread keeps its permitted set across setresuid; every other thread loses all */
    if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0) {
        snprintf(err, errlen, "prctl(PR_SET_KEEPCAPS): %s", strerror(errno));
        return -errno;
    }
    int last = cap_last();
    for (int c = 0; c <= last; c++) {
        if (!(keep & (1ull << c))) {
            prctl(PR_CAPBSET_DROP, c, 0, 0, 0); /* loop threads inherit the bounding set */
        }
    }
    PX_TRY(switch_ids(cfg->run_user, uid, gid, err, errlen));
    prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0);
    PX_TRY(caps_limit(keep, err, errlen));
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    px_log(PX_LOG_INFO, "main", "running as %s (uid %u, gid %u), capabilities: %s",
           cfg->run_user, (unsigned)uid, (unsigned)gid,
           need ? "CAP_NET_ADMIN ([listen] tproxy or [upstream] mark)" : "none");
    return 0;
}

int cli_priv_drop_child(const struct px_cfg *cfg, char *err, size_t errlen)
{
    if (cfg->run_user[0] != '\0' && geteuid() == 0) {
        uid_t uid;
        gid_t gid;
        PX_TRY(lookup(cfg->run_user, &uid, &gid, err, errlen));
        PX_TRY(switch_ids(cfg->run_user, uid, gid, err, errlen));
    }
    if (geteuid() != 0) {
        /* a signer needs no capability, whatever its parent thread had (ambient, systemd) */
        struct caps c = {0};
        if (caps_get(&c) == 0 && (c.prm | c.inh) != 0) {
            PX_TRY(caps_limit(0, err, errlen));
        }
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    }
    return 0;
}

int cli_priv_become_owner(const char *dir, char *err, size_t errlen)
{
    struct stat st;
    if (geteuid() != 0 || stat(dir, &st) != 0 || st.st_uid == 0) {
        return 0;
    }
    struct passwd pw, *res = NULL;
    char buf[4096];
    const char *name = getpwuid_r(st.st_uid, &pw, buf, sizeof(buf), &res) == 0 && res != NULL
                           ? pw.pw_name
                           : "?";
    char nm[64];
    snprintf(nm, sizeof(nm), "%s", name);
    gid_t gid = res != NULL ? pw.pw_gid : st.st_gid;
    PX_TRY(switch_ids(nm, st.st_uid, gid, err, errlen));
    printf("tlsmint init: %s belongs to %s (uid %u): creating the state as %s\n", dir, nm,
           (unsigned)st.st_uid, nm);
    return 1;
}
