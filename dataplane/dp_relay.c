/* SPDX-License-Identifier: MIT */
/*
 * dp_relay.c - moving bytes: recv and send submissions per side, backpressure, the TLS relay
 * (SSL_read on one side, SSL_write on the other), splice for bypass and fail open (raw bytes
 * both ways) and half-close.
 * Owns each side's send buffer (allocated while something waits to be sent, freed when idle).
 * Threads: the connection's loop thread.
 * Invariants: per side at most one recv and one send in flight; a side is read only while the
 * other side has less than DP_PENDING_MAX bytes waiting; a send buffer is reused or freed only
 * after its send has completed.
 * Not here: which stage comes next (dp_conn.c), the handshakes (dp_tls.c).
 */
#include "dp_int.h"

#include <openssl/err.h>
#include <stdlib.h>
#include <sys/socket.h>

void dp_relay_queue(struct dp_conn *c, int dir, const void *p, size_t n)
{
    BIO_write(c->s[dir].out, p, (int)n);
}

static void arm_recv(struct dp_conn *c, int dir)
{
    struct side *sd = &c->s[dir];
    struct io_uring_sqe *sqe = dp_sqe(c->loop);
    if (sqe == NULL) {
        return;
    }
    uint32_t off = sd->rlen;
    io_uring_prep_recv(sqe, sd->fd, sd->rbuf + off, DP_RBUF - off, 0);
    io_uring_sqe_set_data64(sqe, dp_ud_make(OP_RECV, dir, c));
    sd->recv_armed = true;
    c->inflight++;
}

static void arm_send(struct dp_conn *c, int dir)
{
    struct side *sd = &c->s[dir];
    if (sd->obuf == NULL && (sd->obuf = malloc(DP_OBUF)) == NULL) {
        return; /* out of memory is backpressure: tried again on the next event */
    }
    if (sd->olen == sd->ooff) {
        sd->olen = sd->ooff = 0;
        int n = BIO_read(sd->out, sd->obuf, DP_OBUF);
        if (n <= 0) {
            return;
        }
        sd->olen = (uint32_t)n;
    }
    struct io_uring_sqe *sqe = dp_sqe(c->loop);
    if (sqe == NULL) {
        return;
    }
    io_uring_prep_send(sqe, sd->fd, sd->obuf + sd->ooff, sd->olen - sd->ooff, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, dp_ud_make(OP_SEND, dir, c));
    sd->send_armed = true;
    c->inflight++;
}

static bool wants_read(const struct dp_conn *c, int dir)
{
    const struct side *sd = &c->s[dir];
    if (sd->fd < 0 || sd->recv_armed || sd->eof || c->state == S_CLOSING) {
        return false;
    }
    if (sd->in != NULL && BIO_ctrl_pending(sd->in) >= DP_PENDING_MAX) {
        return false;
    }
    uint8_t reads = dp_stages[c->state].reads;
    if (!(reads & (1u << dir))) {
        return false;
    }
    /* relaying both ways: a side is read only while its peer has room (backpressure) */
    return reads != R_BOTH || dp_pending_out(c, dir ^ 1) < DP_PENDING_MAX;
}

void dp_relay_arm(struct dp_conn *c)
{
    for (int d = 0; d < 2; d++) {
        struct side *sd = &c->s[d];
        if (sd->fd >= 0 && !sd->send_armed && !sd->err && dp_pending_out(c, d) > 0) {
            arm_send(c, d);
        }
        if (wants_read(c, d)) {
            arm_recv(c, d);
        }
    }
}

void dp_relay_splice(struct dp_conn *c)
{
    /* drop the TLS objects: from now on bytes pass untouched */
    struct side *cl = &c->s[D_CLIENT];
    BIO *pending = BIO_new(BIO_s_mem());
    SSL_free(cl->ssl);
    cl->ssl = NULL;
    cl->in = NULL;
    cl->out = pending;
    dp_conn_enter(c, S_SPLICE);
    c->deadline_ns = 0; /* no handshake to wait for: only idle time ends it now */
    if (c->excluding) {
        c->outcome = O_EXCLUDED;
        atomic_fetch_add_explicit(&c->loop->ctr.bypassed, 1, memory_order_relaxed);
    } else if (!c->fail_open) {
        c->outcome = O_BYPASS;
        atomic_fetch_add_explicit(&c->loop->ctr.bypassed, 1, memory_order_relaxed);
    }
    if (c->hello_len > 0) {
        dp_relay_queue(c, D_UP, c->hello, c->hello_len);
    }
}

static void relay_tls(struct dp_conn *c, int from)
{
    int to = from ^ 1;
    struct side *a = &c->s[from], *b = &c->s[to];
    uint8_t buf[16384];
    while (dp_pending_out(c, to) < DP_PENDING_MAX && a->ssl != NULL && b->ssl != NULL) {
        int n = SSL_read(a->ssl, buf, sizeof(buf));
        if (n > 0) {
            if (SSL_write(b->ssl, buf, n) != n) {
                dp_conn_abort(c, O_CLIENT_ERROR);
                return;
            }
            dp_export_data(c->loop->srv->exp, c, from, buf, (size_t)n);
            if (from == D_CLIENT) {
                c->bytes_c2u += (uint64_t)n;
            } else {
                c->bytes_u2c += (uint64_t)n;
            }
            c->last_ns = px_now_ns();
            continue;
        }
        int e = SSL_get_error(a->ssl, n);
        if (e == SSL_ERROR_WANT_READ) {
            if (a->eof) {
                /* TCP closed without close_notify: end the other side too */
                a->err = true;
                dp_conn_finish(c, c->outcome == O_NONE ? O_OK : c->outcome);
            }
            return;
        }
        if (e == SSL_ERROR_ZERO_RETURN) {
            /* close_notify: pass it on */
            if (from == D_CLIENT && !c->up_shut_sent) {
                SSL_shutdown(b->ssl);
                c->up_shut_sent = true;
            } else if (from == D_UP && !c->cl_shut_sent) {
                SSL_shutdown(b->ssl);
                c->cl_shut_sent = true;
            }
            a->eof = true;
            if (c->up_shut_sent && c->cl_shut_sent) {
                dp_conn_finish(c, O_OK);
            }
            return;
        }
        /* alert or reset from this side: end the other side cleanly. Not a success, even
         * after a good handshake (an upstream that wants a client certificate says so here) */
        ERR_clear_error();
        if (c->outcome == O_OK) {
            c->outcome = from == D_UP ? O_UPSTREAM_FAILED : O_CLIENT_ERROR;
        }
        if (from == D_CLIENT && c->bytes_c2u == 0 && c->verified &&
            dp_policy_pinning_alert(c->client_alert)) {
            dp_policy_pinned_event(c); /* our leaf was refused after the handshake */
        }
        if (!(from == D_CLIENT ? c->up_shut_sent : c->cl_shut_sent)) {
            SSL_shutdown(b->ssl);
        }
        dp_conn_finish(c, from == D_UP ? O_UPSTREAM_FAILED : O_CLIENT_ERROR);
        return;
    }
}

void dp_relay_on_recv(struct dp_conn *c, int dir, int res)
{
    struct side *sd = &c->s[dir];
    sd->recv_armed = false;
    if (c->state == S_CLOSING) {
        dp_conn_release(c);
        if (c->state != S_FREE) {
            dp_conn_run(c);
        }
        return;
    }
    if (c->state == S_REOPEN) {
        dp_conn_run(c); /* the old upstream's last bytes are dropped */
        return;
    }
    if (res <= 0) {
        sd->eof = true;
        if (res < 0) {
            sd->err = true;
        }
        if (c->state == S_SPLICE) {
            /* half-close: pass the FIN on once what is queued is out */
            int other = dir ^ 1;
            if (c->s[other].fd >= 0 && dp_pending_out(c, other) == 0) {
                shutdown(c->s[other].fd, SHUT_WR);
            }
        }
        dp_conn_run(c);
        return;
    }
    c->last_ns = px_now_ns();
    uint8_t *p = sd->rbuf + sd->rlen;
    size_t n = (size_t)res;
    if (c->state == S_CONNECT_REQ && dir == D_CLIENT && sd->ssl == NULL) {
        sd->rlen += (uint32_t)n;
    } else if (c->state == S_FIRST_BYTE && dir == D_UP) {
        dp_policy_server_first(c); /* the server spoke first: a tunnel, or closed */
        if (c->state == S_SPLICE) {
            dp_relay_queue(c, D_CLIENT, p, n);
            c->bytes_u2c += n;
        }
    } else if (c->state == S_SPLICE) {
        dp_relay_queue(c, dir ^ 1, p, n);
        if (dir == D_CLIENT) {
            c->bytes_c2u += n;
        } else {
            c->bytes_u2c += n;
        }
    } else if (sd->in != NULL) {
        if (dir == D_CLIENT) {
            dp_tls_client_bytes(c, p, n);
        } else {
            BIO_write(sd->in, p, (int)n);
        }
    }
    dp_conn_run(c);
}

void dp_relay_on_send(struct dp_conn *c, int dir, int res)
{
    struct side *sd = &c->s[dir];
    sd->send_armed = false;
    if (c->state == S_REOPEN && dir == D_UP) {
        sd->olen = sd->ooff = 0;
        free(sd->obuf);
        sd->obuf = NULL;
        dp_conn_run(c);
        return;
    }
    if (res < 0) {
        sd->err = true;
        sd->olen = sd->ooff = 0;
        (void)BIO_reset(sd->out);
        /* the peer reset or vanished mid-stream: not a clean end, whatever came before */
        dp_conn_abort(c, dir == D_CLIENT ? O_CLIENT_ERROR : O_UPSTREAM_FAILED);
        return;
    }
    sd->ooff += (uint32_t)res;
    if (sd->ooff >= sd->olen) {
        sd->olen = sd->ooff = 0;
        if (BIO_ctrl_pending(sd->out) == 0) {
            free(sd->obuf); /* an idle connection holds no send buffer */
            sd->obuf = NULL;
        }
    }
    dp_conn_run(c);
}

void dp_relay_step(struct dp_conn *c)
{
    relay_tls(c, D_CLIENT);
    if (c->state == S_RELAY) {
        relay_tls(c, D_UP);
    }
}

void dp_relay_splice_step(struct dp_conn *c)
{
    if ((c->s[D_CLIENT].eof || c->s[D_UP].eof) && dp_pending_out(c, D_CLIENT) == 0 &&
        dp_pending_out(c, D_UP) == 0) {
        dp_conn_finish(c, c->fail_open ? O_FAIL_OPEN : O_BYPASS);
    }
}
