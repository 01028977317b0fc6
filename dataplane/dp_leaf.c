/* SPDX-License-Identifier: MIT */
/*
 * dp_leaf.c - the leaf for the client: once the upstream handshake is done, the upstream's
 * certificate goes to certcache (a hit, a single-flight mint through the HSM, or a refusal), and
 * the answer resumes the paused client handshake. Here too the HSM failure policy: fail closed
 * refuses the handshake, fail open replays the kept ClientHello on a fresh upstream connection
 * and splices.
 * Owns the connection's leaf reference from cc_get until dp_conn_release drops it.
 * Threads: loop threads; a mint's answer comes back on the loop that asked (on_leaf runs
 * inside cc_loop_poll).
 * Invariants: an answer for a connection that has gone (or left S_MINTING) only drops the entry.
 * Not here: building and signing leaves (certcache/, hsm_offload/).
 */
#include "dp_int.h"

#include <stdint.h>
#include <sys/socket.h>
#include <unistd.h>

static void on_leaf(void *user, int status, struct cc_entry *e, uint64_t wait_ns);

static void resume_client(struct dp_conn *c)
{
    struct side *cl = &c->s[D_CLIENT];
    if (SSL_use_cert_and_key(cl->ssl, cc_entry_cert(c->leaf), cc_entry_key(c->leaf),
                             cc_entry_chain(c->leaf), 1) != 1) {
        px_log_ossl_errors("SSL_use_cert_and_key");
        c->fail_hello = true;
    }
    c->leaf_ready = true;
    dp_conn_enter(c, S_CLIENT_HANDSHAKE);
}

/*
 * No leaf because the HSM cannot sign (down, queue full, deadline missed). fail_mode closed:
 * refuse the handshake. open: pass the connection through untouched, on a fresh upstream
 * connection, by replaying the kept ClientHello bytes; the used upstream is dropped first.
 */
static void no_leaf(struct dp_conn *c, int status)
{
    struct dp_loop *l = c->loop;
    bool open = c->g->cfg->fail_mode == PX_FAIL_OPEN && !c->hello_overflow && c->hello_len > 0;
    PX_LOG_RL(PX_LOG_WARN, "dp", "conn=%u:%u %s: no leaf: %s (fail %s)", c->slot, c->gen, c->host,
              px_strerror(status), open ? "open: passing through" : "closed");
    if (!open) {
        atomic_fetch_add_explicit(&l->ctr.refused_hsm, 1, memory_order_relaxed);
        dp_tls_refuse(c, O_REFUSED_HSM);
        return;
    }
    atomic_fetch_add_explicit(&l->ctr.fail_open, 1, memory_order_relaxed);
    c->fail_open = true;
    c->outcome = O_FAIL_OPEN;
    dp_conn_enter(c, S_REOPEN);
    if (c->s[D_UP].fd >= 0) {
        shutdown(c->s[D_UP].fd, SHUT_RDWR); /* wakes its pending recv */
    }
}

/* S_REOPEN: once nothing of the old upstream is in flight, connect a new one. */
void dp_leaf_reopen(struct dp_conn *c)
{
    struct side *u = &c->s[D_UP];
    if (u->recv_armed || u->send_armed) {
        return;
    }
    if (u->fd >= 0) {
        close(u->fd);
        u->fd = -1;
    }
    if (u->ssl != NULL) {
        SSL_free(u->ssl);
        u->ssl = NULL;
        u->in = NULL;
    }
    u->out = BIO_new(BIO_s_mem());
    u->olen = u->ooff = 0;
    u->eof = u->err = false;
    c->up_connected = false;
    c->up_deadline_ns = 0;
    dp_conn_connect(c);
}

void dp_leaf_get(struct dp_conn *c)
{
    struct dp_loop *l = c->loop;
    struct side *u = &c->s[D_UP];
    X509 *peer = SSL_get0_peer_certificate(u->ssl);
    c->verify_result = SSL_get_verify_result(u->ssl);
    c->up_resumed = SSL_session_reused(u->ssl) == 1;
    atomic_fetch_add_explicit(c->up_resumed ? &l->ctr.up_resumed : &l->ctr.up_full, 1,
                              memory_order_relaxed);
    c->verified = !c->g->cfg->upstream_verify || c->verify_result == X509_V_OK;
    const unsigned char *sel = NULL;
    unsigned int sl = 0;
    SSL_get0_alpn_selected(u->ssl, &sel, &sl);
    if (sl > 0 && sl < sizeof(c->alpn_sel)) {
        memcpy(c->alpn_sel, sel, sl);
        c->alpn_sel_len = sl;
    }
    if (peer == NULL) {
        dp_tls_refuse(c, O_UPSTREAM_FAILED);
        return;
    }
    struct cc_entry *e = NULL;
    int r = cc_get(l->ccl, peer, c->verified, c->keykind, on_leaf, (void *)(uintptr_t)dp_conn_token(c),
                   &e);
    if (r == CC_HIT || r == CC_MINTED) {
        c->cache_result = r == CC_HIT ? "hit" : "minted";
        atomic_fetch_add_explicit(r == CC_HIT ? &l->ctr.cache_hit : &l->ctr.cache_miss, 1,
                                  memory_order_relaxed);
        c->leaf = e;
        resume_client(c);
    } else if (r == CC_PENDING) {
        c->cache_result = "miss";
        atomic_fetch_add_explicit(&l->ctr.cache_miss, 1, memory_order_relaxed);
        dp_conn_enter(c, S_MINTING);
    } else if (r == PX_E_INVAL) {
        /* the upstream certificate itself cannot be mirrored: never pass it through */
        dp_tls_refuse(c, O_UPSTREAM_FAILED);
    } else {
        no_leaf(c, r);
    }
}

static void on_leaf(void *user, int status, struct cc_entry *e, uint64_t wait_ns)
{
    struct dp_loop *l = dp_loop_cur;
    struct dp_conn *c = dp_conn_by_token(l, (uint64_t)(uintptr_t)user);
    if (c == NULL || c->state != S_MINTING) {
        cc_entry_unref(e); /* the connection went away meanwhile */
        return;
    }
    c->hsm_wait_ns = wait_ns;
    if (status == PX_E_INVAL || status == PX_E_CRYPTO) {
        dp_tls_refuse(c, O_UPSTREAM_FAILED);
    } else if (status != 0) {
        no_leaf(c, status);
    } else {
        c->leaf = e;
        resume_client(c);
    }
    dp_conn_run(c);
}
