/* SPDX-License-Identifier: MIT */
/*
 * px_proc.c - what a child process inherits from tlsmint.
 * Owns nothing. Called from any thread that spawns a child (the main thread, the HSM
 * dispatcher when it respawns a signer).
 * Invariant: a child never starts with the proxy's blocked signal mask. `tlsmint run` blocks
 * SIGHUP, SIGINT and SIGTERM in every thread before the first child or thread exists, and
 * posix_spawn passes the calling thread's mask on through exec: a child that kept it could
 * not be stopped with SIGTERM or SIGINT (they would stay pending forever).
 * Not here: what each child does with its signals (the signer ignores them, see
 * hsm_signer.c).
 */
#include "px.h"

#include <signal.h>

int px_spawnattr_init(posix_spawnattr_t *attr)
{
    int r = posix_spawnattr_init(attr);
    if (r != 0) {
        return -r;
    }
    sigset_t none, dfl;
    sigemptyset(&none);
    sigemptyset(&dfl);
    sigaddset(&dfl, SIGHUP);
    sigaddset(&dfl, SIGINT);
    sigaddset(&dfl, SIGTERM);
    r = posix_spawnattr_setsigmask(attr, &none);
    if (r == 0) {
        r = posix_spawnattr_setsigdefault(attr, &dfl);
    }
    if (r == 0) {
        r = posix_spawnattr_setflags(attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    }
    if (r != 0) {
        posix_spawnattr_destroy(attr);
        return -r;
    }
    return 0;
}
