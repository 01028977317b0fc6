/* SPDX-License-Identifier: MIT */
/*
 * cli_admin.h - admin socket and metrics endpoint of a running proxy (private to cli/).
 */
#ifndef CLI_ADMIN_H
#define CLI_ADMIN_H

#include <pthread.h>
#include <stdbool.h>

#include "cc.h"
#include "dp.h"
#include "hsm.h"

struct cli_admin {
    const struct px_cfg *cfg; /* borrowed */
    struct hsm_pool *pool;    /* borrowed */
    struct dp_server *dp;     /* borrowed */
    /* reload hook (main thread's function); writes one line into msg; 0 on success */
    int (*reload)(void *ctx, char *msg, size_t len);
    void *reload_ctx;
    /* [cache] snapshot hook, run every snapshot_interval_s on the admin thread (NULL = off) */
    int (*snapshot)(void *ctx, char *msg, size_t len);
    void *snapshot_ctx;
    int ufd, mfd, stopfd;
    pthread_t th;
    bool running;
    uint64_t start_ns;
    uint64_t audit_ops, audit_errors; /* totals at the last audit line */
};

/* Opens [admin] socket (0600) and metrics; starts the thread. -1 and a line in err on failure. */
int cli_admin_start(struct cli_admin *a, char *err, size_t errlen);
void cli_admin_stop(struct cli_admin *a);
int cli_ctl(int argc, char **argv);

#endif
