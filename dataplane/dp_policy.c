/* SPDX-License-Identifier: MIT */
/*
 * dp_policy.c - the decision for a new connection, from its ClientHello (SNI) or destination:
 * inspect it, or bypass it (relay the bytes untouched). Today the [policy] bypass list; the
 * policy issue's rules come here.
 * Owns nothing at run time: the list lives in the generation (struct dp_gen), parsed once per
 * start or reload.
 * Threads: dp_policy_load on the main thread; dp_policy_bypassed on loop threads, read-only.
 * Not here: acting on the decision (after_hello in dp_conn.c, dp_relay_splice).
 */
#include "dp_int.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

/* [policy] bypass: exact names, or "*.suffix" / ".suffix" for a domain and its subdomains. */
bool dp_policy_bypassed(const struct dp_gen *g, const char *host)
{
    size_t hl = strlen(host);
    for (int i = 0; i < g->nbypass; i++) {
        const char *p = g->bypass[i];
        if (p[0] == '*' && p[1] == '.') {
            p++;
        }
        if (p[0] == '.') {
            size_t pl = strlen(p);
            if ((hl > pl && strcasecmp(host + hl - pl, p) == 0) || strcasecmp(host, p + 1) == 0) {
                return true;
            }
        } else if (strcasecmp(host, p) == 0) {
            return true;
        }
    }
    return false;
}

/* [policy] bypass of cfg into g: comma or space separated, at most 64 entries. */
void dp_policy_load(struct dp_gen *g, const struct px_cfg *cfg)
{
    char tmp[sizeof(cfg->policy_bypass)];
    snprintf(tmp, sizeof(tmp), "%s", cfg->policy_bypass);
    for (char *sp = NULL, *t = strtok_r(tmp, ", \t", &sp); t && g->nbypass < 64;
         t = strtok_r(NULL, ", \t", &sp)) {
        snprintf(g->bypass[g->nbypass++], sizeof(g->bypass[0]), "%s", t);
    }
}
