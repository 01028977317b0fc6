/* SPDX-License-Identifier: MIT */
/*
 * dp_relay.c - moving bytes: recv and send submissions per side, backpressure, the TLS relay
 * (SSL_read on one side, SSL_write on the other), splice for bypass and fail open (raw bytes
 * both ways) and half-close.
 * Owns nothing of its own: the bytes in flight are the sides' (dp_buf.c).
 * Threads: the connection's loop thread.
 * Invariants: per side at most one recv and one send in flight; a side is read only while its
 * input is empty and the other side has less than DP_PENDING_MAX bytes waiting; a chunk is
 * reused or freed only after its send has completed.
 * Not here: which stage comes next (dp_conn.c), the handshakes (dp_tls.c), the buffers and
 * BIOs themselves (dp_buf.c).
 */
#include "dp_int.h"

#include <errno.h>
#include <openssl/err.h>
#include <stdlib.h>
#include <string.h>
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
    dp_buf_prep_recv(c->loop, sd, sqe);
    io_uring_sqe_set_data64(sqe, dp_ud_make(OP_RECV, dir, c));
    sd->recv_armed = true;
    c->inflight++;
}

static void arm_send(struct dp_conn *c, int dir)
{
    struct side *sd = &c->s[dir];
    if (sd->oq == NULL) {
        return; /* nothing queued (an emptied chunk leaves the queue at once) */
    }
    struct io_uring_sqe *sqe = dp_sqe(c->loop);
    if (sqe == NULL) {
        return;
    }
    dp_buf_prep_send(sd, sqe);
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
    if (sd->ilen > 0 || sd->nobufs) {
        return false; /* what was received is consumed first; or waiting for a ring buffer */
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
    SSL_free(cl->ssl); /* and its BIOs: what is queued to the client stays in the side */
    cl->ssl = NULL;
    cl->in = NULL;
    cl->out = dp_bio_out_new(cl);
    dp_buf_in_drop(cl); /* what OpenSSL did not read is in the kept hello, replayed below */
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
    struct dp_export *x = c->loop->srv->exp;
    while (dp_pending_out(c, to) < DP_PENDING_MAX && a->ssl != NULL && b->ssl != NULL) {
        int n = SSL_read(a->ssl, buf, (int)sizeof(buf));
        if (n > 0) {
            if (SSL_write(b->ssl, buf, n) != n) {
                dp_conn_abort(c, O_CLIENT_ERROR);
                return;
            }
            /* framed at once, while the plaintext is in this core's cache (dp_xframe.c) */
            dp_export_data(x, c, from, buf, (size_t)n);
            if (from == D_CLIENT) {
                c->bytes_c2u += (uint64_t)n;
            } else {
                c->bytes_u2c += (uint64_t)n;
            }
            c->last_ns = px_now_ns();
            dp_buf_hot(c);
            continue;
        }
        int e = SSL_get_error(a->ssl, n);
        if (e == SSL_ERROR_WANT_READ) {
            if (a->eof) {
                /* TCP closed without close_notify: end the other side too */
                dp_xflow_ended(c, from, false);
                a->err = true;
                dp_conn_finish(c, c->outcome == O_NONE ? O_OK : c->outcome);
            }
            return;
        }
        if (e == SSL_ERROR_ZERO_RETURN) {
            /* close_notify: pass it on */
            dp_xflow_ended(c, from, false);
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
        dp_xflow_ended(c, from, false);
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

/* The request head of the explicit listener, kept whole until it parses (at most 2 x DP_RBUF:
 * the stage stops reading at DP_RBUF and answers 431). */
static void keep_head(struct side *sd, const uint8_t *p, size_t n)
{
    if (sd->rbuf == NULL || sd->rlen + n > DP_RBUF) {
        uint32_t cap = sd->rlen + (uint32_t)n > DP_RBUF ? sd->rlen + (uint32_t)n : DP_RBUF;
        uint8_t *nb = realloc(sd->rbuf, cap);
        if (nb == NULL) {
            sd->eof = sd->err = true; /* the stage ends it as a bad request */
            return;
        }
        sd->rbuf = nb;
    }
    memcpy(sd->rbuf + sd->rlen, p, n);
    sd->rlen += (uint32_t)n;
}

void dp_relay_on_recv(struct dp_conn *c, int dir, int res, uint32_t flags)
{
    struct side *sd = &c->s[dir];
    sd->recv_armed = false;
    /* the received bytes are the side's input from here (a ring buffer, in place) */
    uint8_t *p = dp_buf_recv_take(sd, res, flags);
    if (res == -ENOBUFS) {
        if (c->state == S_CLOSING) {
            dp_conn_release(c);
        } else if (c->state == S_REOPEN) {
            dp_conn_run(c);
        } else {
            dp_buf_nobufs(c, dir); /* backpressure: armed again once the batch gave buffers back */
        }
        return;
    }
    if (c->state == S_CLOSING) {
        dp_buf_in_drop(sd);
        dp_conn_release(c);
        if (c->state != S_FREE) {
            dp_conn_run(c);
        }
        return;
    }
    if (c->state == S_REOPEN) {
        dp_buf_in_drop(sd); /* the old upstream's last bytes are dropped */
        dp_conn_run(c);
        return;
    }
    if (p == NULL) {
        dp_xflow_ended(c, dir, res < 0);
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
    size_t n = (size_t)res;
    if (c->state == S_CONNECT_REQ && dir == D_CLIENT && sd->ssl == NULL) {
        keep_head(sd, p, n);
        dp_buf_in_drop(sd);
    } else if (c->state == S_FIRST_BYTE && dir == D_UP) {
        dp_policy_server_first(c); /* the server spoke first: a tunnel, or closed */
        if (c->state == S_SPLICE) {
            dp_relay_queue(c, D_CLIENT, p, n);
            c->bytes_u2c += n;
        }
        dp_buf_in_drop(sd);
    } else if (c->state == S_SPLICE) {
        dp_relay_queue(c, dir ^ 1, p, n);
        if (dir == D_CLIENT) {
            c->bytes_c2u += n;
        } else {
            c->bytes_u2c += n;
        }
        dp_buf_in_drop(sd);
    } else if (sd->in != NULL) {
        /* TLS: OpenSSL reads the input in place through the side's BIO */
        if (dir == D_CLIENT) {
            dp_tls_hello_keep(c, p, n);
        }
        dp_buf_hot(c);
    } else {
        dp_buf_in_drop(sd); /* nobody reads this side now */
    }
    dp_conn_run(c);
    if (c->state != S_FREE) {
        dp_buf_spill(sd); /* backpressure or a paused stage: the ring buffer goes back */
    }
}

void dp_relay_on_send(struct dp_conn *c, int dir, int res)
{
    struct side *sd = &c->s[dir];
    sd->send_armed = false;
    if (c->state == S_REOPEN && dir == D_UP) {
        dp_buf_out_drop(sd);
        dp_conn_run(c);
        return;
    }
    if (res < 0) {
        dp_xflow_ended(c, dir, true);
        sd->err = true;
        dp_buf_out_drop(sd);
        /* the peer reset or vanished mid-stream: not a clean end, whatever came before */
        dp_conn_abort(c, dir == D_CLIENT ? O_CLIENT_ERROR : O_UPSTREAM_FAILED);
        return;
    }
    dp_buf_out_sent(sd, (uint32_t)res); /* an emptied queue holds no chunk */
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
