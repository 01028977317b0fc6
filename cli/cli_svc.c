/* SPDX-License-Identifier: MIT */
/*
 * cli_svc.c - `tlsmint run` as a systemd service (Type=notify): READY=1 once the listeners
 * accept and at least one HSM member is up, a STATUS= line, and the watchdog thread.
 * Owns nothing; px_notify.c talks to systemd. Called from the main thread of `run`.
 * Not here: RELOADING=1 / STOPPING=1 (one px_notify call at each place in cli_hsm.c).
 */
#include "cli.h"

#include <unistd.h>

void cli_svc_running(struct hsm_pool *pool, const char *explicit_l, const char *transparent_l)
{
    /* the listeners accept already (bound and armed before the loops reported started);
     * wait up to 10 s for a member, as a signer may still be logging in */
    for (int i = 0; i < 100 && hsm_pool_members_up(pool) < 1; i++) {
        usleep(100000);
    }
    int up = hsm_pool_members_up(pool);
    if (up < 1) {
        px_log(PX_LOG_WARN, "main", "no HSM member up: not telling systemd READY yet");
        px_notify_status("no HSM member up");
        return;
    }
    px_notify("READY=1");
    px_notify_status("explicit %s, transparent %s, %d/%d HSM members up", explicit_l,
                     transparent_l, up, hsm_pool_members(pool));
    if (px_notify_watchdog_start(NULL, NULL) < 0) {
        px_log(PX_LOG_WARN, "main", "cannot start the systemd watchdog thread");
    }
}
