/* SPDX-License-Identifier: MIT */
/*
 * dp_policy.c - the decision for a new connection (the S_POLICY stage): once its ClientHello
 * is read, the connection gets its name (SNI, else the CONNECT host or the destination address)
 * and is either inspected (upstream TLS next) or bypassed (relayed untouched). Today the
 * [policy] bypass list decides; the policy issue's rules come here.
 * Owns nothing at run time: the list lives in the generation (struct dp_gen), parsed once per
 * start or reload.
 * Threads: dp_policy_load on the main thread; the stage on loop threads, the list read-only.
 * Not here: the ClientHello itself (dp_tls.c), splicing (dp_relay.c).
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

void dp_policy_step(struct dp_conn *c)
{
    if (c->host[0] == '\0' || c->transparent) {
        if (c->sni[0]) {
            snprintf(c->host, sizeof(c->host), "%s", c->sni);
        } else if (c->host[0] == '\0') {
            char a[64];
            dp_addr_str(&c->dst, a, sizeof(a));
            char *colon = strrchr(a, ':');
            if (colon) {
                *colon = '\0';
            }
            snprintf(c->host, sizeof(c->host), "%s", a[0] == '[' ? a + 1 : a);
            size_t hl = strlen(c->host);
            if (hl > 0 && c->host[hl - 1] == ']') {
                c->host[hl - 1] = '\0';
            }
        }
    }
    const char *name = c->sni[0] ? c->sni : c->host;
    if (c->g->nbypass > 0 && dp_policy_bypassed(c->g, name)) {
        if (c->hello_overflow) {
            dp_conn_abort(c, O_CLIENT_ERROR);
            return;
        }
        if (!c->up_connected) {
            c->outcome = O_BYPASS;
            dp_conn_connect(c); /* dp_relay_splice happens when connected */
            return;
        }
        dp_relay_splice(c);
        return;
    }
    if (!c->up_connected) {
        dp_conn_connect(c);
        return;
    }
    if (dp_tls_upstream_start(c) != 0) {
        dp_conn_abort(c, O_UPSTREAM_FAILED);
    }
}
