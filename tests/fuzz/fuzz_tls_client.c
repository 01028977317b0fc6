/* SPDX-License-Identifier: MIT */
/*
 * fuzz_tls_client.c - libFuzzer target: arbitrary bytes as a client's TLS stream on an
 * intercepted (transparent) connection, through the dataplane's real server-side SSL_CTX.
 * Target functions: dp_tls_ctx_init's server context with client_hello_cb (SNI, ALPN and
 * signature algorithms read from the ClientHello) and alpn_select_cb, dp_tls_client_start,
 * dp_tls_client_bytes (the ClientHello kept for a replay), the stage functions run by
 * dp_conn_run: step_client_hello, dp_policy_step with the [policy] bypass list (bypass:
 * dp_relay_splice with the kept ClientHello; inspect: dp_tls_upstream_start with the client's SNI
 * and ALPN and our ClientHello to the upstream), then, as dp_leaf.c does once a leaf is there,
 * step_client_handshake on the rest of the bytes; dp_conn_release and the access-log line.
 * All over memory BIOs: the connection has no socket (fd -1), so no I/O is armed.
 * Checks: no crash or leak; a kept SNI is 1-253 host-name characters; ALPN fits its buffer; the
 * kept ClientHello never exceeds DP_HELLO_MAX; a bypassed connection (by name, or a client that
 * cannot meet the profile's versions or suites) replays exactly the bytes the client sent (as
 * does a tunnel for bytes that are not TLS); an inspected one has sent a
 * ClientHello upstream; every connection ends.
 * Deterministic (the server's random values are not looked at).
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "fuzz_dp.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fz_dp_init(NULL);
    return 0;
}

static void check_names(const struct dp_conn *c)
{
    size_t n = strnlen(c->sni, sizeof(c->sni));
    if (n >= sizeof(c->sni) || n > 253 || c->alpn_len >= sizeof(c->alpn) ||
        c->hello_len > DP_HELLO_MAX) {
        abort();
    }
    for (size_t i = 0; i < n; i++) {
        char ch = c->sni[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '.' || ch == '_')) {
            abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 2 * DP_HELLO_MAX) {
        return 0;
    }
    uint8_t *buf = fz_dup(data, size);
    struct dp_conn *c = fz_dp_conn();
    if (dp_tls_client_start(c) != 0) {
        abort();
    }
    dp_conn_enter(c, S_CLIENT_HELLO);
    dp_tls_client_bytes(c, buf, size);
    c->s[D_CLIENT].eof = true; /* the client has sent all it will */
    dp_conn_run(c);
    check_names(c);
    const char *name = c->sni[0] ? c->sni : c->host;
    if (c->state == S_SPLICE || (c->state == S_CLOSING && c->outcome == O_BYPASS)) {
        /* bypassed by name, tunnelled as not TLS ([policy] non_tls = tunnel), or a client that
         * cannot meet the profile ([profile] unsupported = bypass) */
        bool unsup = c->reason != NULL && (strcmp(c->reason, "unsupported-version") == 0 ||
                                           strcmp(c->reason, "no-common-cipher") == 0);
        if ((!dp_policy_bypassed(c->g, name) && !c->tunnel && !unsup) ||
            (!c->hello_overflow && BIO_ctrl_pending(c->s[D_UP].out) != c->hello_len)) {
            abort();
        }
    } else if (c->state == S_UP_HANDSHAKE) {
        /* a bypassed name goes upstream first to be proven (c->proving) */
        if ((dp_policy_bypassed(c->g, name) && !c->proving) ||
            BIO_ctrl_pending(c->s[D_UP].out) == 0) {
            abort();
        }
        fz_dp_give_leaf(c); /* as dp_leaf.c does with certcache's answer */
        dp_conn_run(c);
    }
    fz_dp_end(c);
    free(buf);
    return 0;
}
