/* SPDX-License-Identifier: MIT */
/*
 * fuzz_tls_upstream.c - libFuzzer target: arbitrary bytes as an upstream server's answer to the
 * ClientHello the dataplane sends, through its real client-side SSL_CTX and verification.
 * Target functions: dp_tls_ctx_init's upstream context (TLS 1.2+, our cipher preference, the
 * [upstream] ca_file store, SSL_VERIFY_NONE with the result recorded), dp_tls_upstream_start
 * (SNI, SSL_set1_host, the client's ALPN), step_up_handshake through dp_conn_run on the
 * upstream's bytes (ServerHello, HelloRetryRequest, TLS 1.2 Certificate chain building and
 * verification against the CA, host check, ServerKeyExchange, alerts), and what follows a
 * failed upstream: dp_tls_refuse, the client handshake ending with an alert, the release.
 * The client side is a real ClientHello for upstream.example (tests/fuzz/data/, recorded by
 * capture_hello.py with the CA the seed servers' certificates chain to).
 * Checks: no crash or leak; the connection always ends; a failed upstream is refused to the
 * client as upstream_failed, never passed through, except where [profile] unsupported says so
 * (the upstream refused the profile's versions or suites, the client's ClientHello offers more).
 * Deterministic control flow (our ClientHello's random values differ per run).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "fuzz_dp.h"

static uint8_t *g_hello;
static size_t g_hello_len;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fz_dp_init(FUZZ_DATA_DIR "/upstream-ca.pem");
    if (px_read_file(FUZZ_DATA_DIR "/upstream-client-hello", 65536, &g_hello, &g_hello_len) != 0) {
        fprintf(stderr, "fuzz_tls_upstream: no %s\n", FUZZ_DATA_DIR "/upstream-client-hello");
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 64 * 1024) {
        return 0;
    }
    uint8_t *buf = fz_dup(data, size);
    struct dp_conn *c = fz_dp_conn();
    if (dp_tls_client_start(c) != 0) {
        abort();
    }
    dp_conn_enter(c, S_CLIENT_HELLO);
    dp_tls_client_bytes(c, g_hello, g_hello_len);
    dp_conn_run(c);
    if (c->state != S_UP_HANDSHAKE || strcmp(c->sni, "upstream.example") != 0) {
        abort(); /* the recorded ClientHello is inspected: the set-up itself is broken */
    }
    struct side *u = &c->s[D_UP];
    (void)BIO_reset(u->out); /* our ClientHello, as the relay would send it */
    BIO_write(u->in, buf, (int)size);
    u->eof = true; /* the upstream has sent all it will */
    c->s[D_CLIENT].eof = true;
    dp_conn_run(c);
    if (c->state != S_FREE && c->state != S_CLOSING && c->state != S_CLIENT_HANDSHAKE) {
        abort();
    }
    /* passed through only when the upstream refused the profile's versions or suites and the
     * client's own ClientHello offers what ours did not ([profile] unsupported = bypass; there
     * is no ring here to connect again, so it ends as it is) */
    bool unsup = c->outcome == O_BYPASS && c->reason != NULL &&
                 (strcmp(c->reason, "unsupported-version") == 0 ||
                  strcmp(c->reason, "no-common-cipher") == 0);
    if (c->state != S_FREE && c->outcome != O_UPSTREAM_FAILED && c->outcome != O_NONE && !unsup) {
        abort();
    }
    fz_dp_end(c);
    free(buf);
    return 0;
}
