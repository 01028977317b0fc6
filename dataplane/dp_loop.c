/* SPDX-License-Identifier: MIT */
/*
 * dp_loop.c - one dataplane loop: its io_uring ring, the dispatch of completions by user_data,
 * the connection table and the tick that enforces deadlines.
 * Owns, per loop thread: the ring, the fixed connection table and its free list, the armed
 * accepts, and the eventfd reads through which HSM completions (cc_loop), resolver answers and
 * other loops' OCSP outcomes come back.
 * Threads: everything here runs on the loop's own thread (SINGLE_ISSUER: the ring is made
 * there), except dp_loop_init/fini, which run on the main thread before the thread starts and
 * after it has ended.
 * Invariants: user_data is {op, dir, gen, slot}, never a pointer, so a late CQE for a reused
 * slot is recognised and dropped; a connection is freed only when none of its operations is in
 * flight; nothing here blocks.
 * Not here: what a completion means for a connection (dp_conn.c, dp_relay.c), listeners and
 * threads (dp_server.c).
 */
#include "dp_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* ---- the connection table -------------------------------------------------------------- */

struct dp_conn *dp_conn_by_token(struct dp_loop *l, uint64_t tok)
{
    struct dp_conn *c = dp_conn_at(l, (uint32_t)tok);
    uint16_t gen = (uint16_t)(tok >> 32);
    return (c != NULL && c->state != S_FREE && c->gen == gen) ? c : NULL;
}

/*
 * Slots come from the free list, else from the next chunk: the table only holds memory for as
 * many connections as were ever open at once (rounded up to a chunk), whatever the limit. A
 * chunk is never freed while the loop runs (CQEs name slots, SSL ex_data points into chunks).
 */
struct dp_conn *dp_loop_slot_take(struct dp_loop *l)
{
    struct dp_conn *c = l->free_list;
    if (c != NULL) {
        l->free_list = c->next_free;
        return c;
    }
    uint32_t k = l->used / DP_CHUNK;
    if (k >= l->nchunks) {
        return NULL; /* the server's limit is checked first: only when the limit was raised */
    }
    if (l->chunks[k] == NULL && (l->chunks[k] = calloc(DP_CHUNK, sizeof(struct dp_conn))) == NULL) {
        return NULL;
    }
    c = &l->chunks[k][l->used % DP_CHUNK];
    c->slot = l->used++;
    return c;
}

void dp_loop_slot_put(struct dp_loop *l, struct dp_conn *c)
{
    c->next_free = l->free_list;
    l->free_list = c;
}

/* ---- deadlines: a timer wheel ----------------------------------------------------------- */

/*
 * One list per tick of DP_TICK_MS, DP_WHEEL ticks around: arming and cancelling are O(1), a
 * tick costs what expires in it. Every deadline (handshake 10 s, idle 300 s) is shorter than a
 * turn of the wheel; a later one is clamped to the last slot and simply re-armed when it fires.
 * The idle clock is not re-armed per byte: when it fires, dp_conn_on_timer looks at the last
 * byte's time and arms the rest, so a connection that moves data costs one wake-up per
 * DP_IDLE_MS.
 */
void dp_timer_set(struct dp_conn *c, uint64_t at_ns)
{
    struct dp_loop *l = c->loop;
    const uint64_t tick_ns = (uint64_t)DP_TICK_MS * 1000000ull;
    uint64_t t = (at_ns + tick_ns - 1) / tick_ns;
    if (t <= l->wheel_tick) {
        t = l->wheel_tick + 1;
    } else if (t > l->wheel_tick + DP_WHEEL - 1) {
        t = l->wheel_tick + DP_WHEEL - 1;
    }
    dp_timer_cancel(c);
    struct dp_conn **head = &l->wheel[t % DP_WHEEL];
    c->t_next = *head;
    if (*head != NULL) {
        (*head)->t_pprev = &c->t_next;
    }
    *head = c;
    c->t_pprev = head;
    c->t_tick = t;
}

void dp_timer_cancel(struct dp_conn *c)
{
    if (c->t_pprev == NULL) {
        return;
    }
    *c->t_pprev = c->t_next;
    if (c->t_next != NULL) {
        c->t_next->t_pprev = c->t_pprev;
    }
    c->t_next = NULL;
    c->t_pprev = NULL;
}

/* Runs the lists of every tick up to now (at most one turn after a long stall). */
static void run_wheel(struct dp_loop *l, uint64_t now)
{
    uint64_t target = now / ((uint64_t)DP_TICK_MS * 1000000ull);
    if (target > l->wheel_tick + DP_WHEEL) {
        l->wheel_tick = target - DP_WHEEL;
    }
    while (l->wheel_tick < target) {
        l->wheel_tick++;
        struct dp_conn **head = &l->wheel[l->wheel_tick % DP_WHEEL];
        struct dp_conn *c = *head;
        while (c != NULL) {
            struct dp_conn *next = c->t_next;
            if (c->t_tick <= l->wheel_tick) {
                dp_timer_cancel(c);
                dp_conn_on_timer(c, now); /* may end c, never another connection */
            }
            c = next;
        }
    }
}

/* ---- refusals at the limit -------------------------------------------------------------- */

/* One line for what was refused since the last one, when 10 s have passed (any loop may). */
static void refused_summary(struct dp_server *srv, uint64_t now)
{
    uint64_t last = atomic_load_explicit(&srv->refused_log_ns, memory_order_relaxed);
    if (atomic_load_explicit(&srv->refused_unlogged, memory_order_relaxed) == 0 ||
        (last != 0 && now - last < 10000000000ull) ||
        !atomic_compare_exchange_strong(&srv->refused_log_ns, &last, now)) {
        return;
    }
    uint64_t n = atomic_exchange(&srv->refused_unlogged, 0);
    px_log(PX_LOG_WARN, "dp", "connection limit (%d) reached: %llu connection(s) refused since "
           "the last report", srv->max_conns, (unsigned long long)n);
}

void dp_loop_refused(struct dp_loop *l)
{
    atomic_fetch_add_explicit(&l->ctr.refused_limit, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&l->srv->refused_unlogged, 1, memory_order_relaxed);
    refused_summary(l->srv, px_now_ns());
}

/* ---- the ring --------------------------------------------------------------------------- */

__thread struct dp_loop *dp_loop_cur;

void dp_loop_arm_accept(struct dp_loop *l, int which)
{
    if (l->lfd[which] < 0 || l->accept_armed[which] || l->stopping) {
        return;
    }
    struct io_uring_sqe *sqe = dp_sqe(l);
    io_uring_prep_multishot_accept(sqe, l->lfd[which], NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    union dp_ud u = {.f = {.op = OP_ACCEPT, .dir = (uint8_t)which}};
    io_uring_sqe_set_data64(sqe, u.u);
    l->accept_armed[which] = true;
}

void dp_loop_arm_events(struct dp_loop *l, int which)
{
    struct io_uring_sqe *sqe = dp_sqe(l);
    union dp_ud u = {.f = {.op = (uint8_t)(which == 0 ? OP_CC : OP_RES), .dir = l->cc_epoch}};
    if (which == 0) {
        io_uring_prep_read(sqe, cc_loop_fd(l->ccl), &l->cc_val, sizeof(l->cc_val), 0);
    } else {
        io_uring_prep_read(sqe, l->res_done.evfd, &l->res_val, sizeof(l->res_val), 0);
    }
    io_uring_sqe_set_data64(sqe, u.u);
}

static void arm_tick(struct dp_loop *l)
{
    struct io_uring_sqe *sqe = dp_sqe(l);
    l->tick.tv_sec = 0;
    l->tick.tv_nsec = DP_TICK_MS * 1000000ll;
    io_uring_prep_timeout(sqe, &l->tick, 0, 0);
    union dp_ud u = {.f = {.op = OP_TIMER}};
    io_uring_sqe_set_data64(sqe, u.u);
}

static void handle_tick(struct dp_loop *l)
{
    uint64_t now = px_now_ns();
    run_wheel(l, now);
    dp_buf_sweep(l, now); /* quiet connections give OpenSSL's record buffers back */
    if (l->stopping && now > l->drain_deadline_ns) {
        /* drained for long enough: the rest goes (a scan, but only while stopping) */
        for (uint32_t i = 0; i < l->used; i++) {
            struct dp_conn *c = dp_conn_at(l, i);
            if (c->state != S_FREE && c->state != S_CLOSING) {
                dp_conn_abort(c, O_SHUTDOWN);
            }
        }
    }
    refused_summary(l->srv, now);
    arm_tick(l);
}

static void handle_cqe(struct dp_loop *l, struct io_uring_cqe *cqe)
{
    union dp_ud u = {.u = io_uring_cqe_get_data64(cqe)};
    switch (u.f.op) {
    case OP_ACCEPT:
        dp_conn_accept(l, u.f.dir, cqe->res, cqe->flags);
        return;
    case OP_TIMER:
        handle_tick(l);
        return;
    case OP_CC:
        if (u.f.dir != l->cc_epoch) {
            return; /* the read of a previous generation's handle: not re-armed */
        }
        cc_loop_poll(l->ccl);
        dp_loop_arm_events(l, 0);
        return;
    case OP_RES:
        dp_conn_on_resolved(l);
        dp_ocsp_on_wake(l); /* after the eventfd is read: other loops' OCSP outcomes */
        dp_loop_arm_events(l, 1);
        return;
    case OP_IN_ACCEPT:
        dp_inbound_accept(l, u.f.dir, cqe->res, cqe->flags);
        return;
    case OP_IN_CQ:
        dp_inbound_on_cq(l);
        return;
    case OP_FIRSTBYTE:
        if (u.f.dir == 1) {
            return; /* the removal's own answer: the timer's comes separately */
        }
        break;
    case OP_OCSP:
        dp_ocsp_on_cqe(l, u.f.dir, u.f.slot, u.f.gen, cqe->res);
        return;
    case OP_OCSP_WAIT:
        if (u.f.dir == 1) {
            return; /* the removal's own answer: the timer's comes separately */
        }
        break;
    case OP_RECV:
    case OP_SEND:
    case OP_CONNECT:
    case OP_LTIMEOUT:
        break;
    default:
        PX_LOG_RL(PX_LOG_WARN, "dp", "loop %d: CQE with unknown op %u dropped", l->idx, u.f.op);
        return;
    }
    struct dp_conn *c = dp_conn_at(l, u.f.slot);
    if (c == NULL || c->gen != u.f.gen || c->state == S_FREE) {
        return; /* a late completion for a connection that is gone */
    }
    c->inflight--;
    switch (u.f.op) {
    case OP_RECV:
        dp_relay_on_recv(c, u.f.dir, cqe->res, cqe->flags);
        break;
    case OP_SEND:
        dp_relay_on_send(c, u.f.dir, cqe->res);
        break;
    case OP_CONNECT:
        dp_conn_on_connect(c, cqe->res);
        break;
    case OP_LTIMEOUT:
        if (c->state == S_CLOSING) {
            dp_conn_release(c);
        }
        break;
    case OP_FIRSTBYTE:
        dp_policy_first_byte_done(c, cqe->res);
        break;
    case OP_OCSP_WAIT:
        dp_ocsp_wait_done(c, cqe->res);
        break;
    default:
        break;
    }
}

/*
 * The ring is made on its own thread: with SINGLE_ISSUER the creating task is the only one that
 * may submit. Falls back to a plain ring on kernels without SINGLE_ISSUER/DEFER_TASKRUN.
 */
static int ring_init(struct dp_loop *l)
{
    struct io_uring_params p = {0};
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE;
    p.cq_entries = 8192;
    int r = io_uring_queue_init_params(1024, &l->ring, &p);
    if (r == -EINVAL) {
        memset(&p, 0, sizeof(p));
        p.flags = IORING_SETUP_CQSIZE;
        p.cq_entries = 8192;
        r = io_uring_queue_init_params(1024, &l->ring, &p);
    }
    return r;
}

void *dp_loop_main(void *arg)
{
    struct dp_loop *l = arg;
    struct dp_server *srv = l->srv;
    dp_loop_cur = l;
    int r0 = ring_init(l);
    pthread_mutex_lock(&srv->start_lock);
    l->ring_ok = r0 == 0;
    l->start_err = r0;
    srv->started++;
    pthread_cond_broadcast(&srv->start_cond);
    pthread_mutex_unlock(&srv->start_lock);
    if (r0 != 0) {
        return NULL;
    }
    int rb = dp_buf_ring_init(l);
    if (rb != 0) {
        px_log(PX_LOG_INFO, "dp", "loop %d: no receive buffer ring (%s): a buffer per recv",
               l->idx, strerror(-rb));
    }
    dp_loop_arm_accept(l, 0);
    dp_loop_arm_accept(l, 1);
    dp_loop_arm_events(l, 0);
    dp_loop_arm_events(l, 1);
    dp_inbound_loop_start(l);
    l->wheel_tick = px_now_ns() / ((uint64_t)DP_TICK_MS * 1000000ull);
    arm_tick(l);
    bool stop_seen = false;
    for (;;) {
        struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = 100000000};
        struct io_uring_cqe *cqe = NULL;
        int r = io_uring_submit_and_wait_timeout(&l->ring, &cqe, 1, &ts, NULL);
        if (r < 0 && r != -ETIME && r != -EINTR && r != -EBUSY) {
            PX_LOG_RL(PX_LOG_ERROR, "dp", "loop %d: io_uring: %s", l->idx, strerror(-r));
        }
        /* a reload applies before this batch: a connection accepted now gets the new one */
        if (atomic_load_explicit(&srv->gen_id, memory_order_acquire) != l->g->id) {
            dp_gen_switch(l);
        }
        unsigned head, n = 0;
        io_uring_for_each_cqe(&l->ring, head, cqe)
        {
            handle_cqe(l, cqe);
            n++;
        }
        io_uring_cq_advance(&l->ring, n);
        if (l->nnobufs > 0) {
            dp_buf_nobufs_run(l); /* the batch's buffers are back in the ring */
        }
        dp_export_batch_end(srv->exp, l);
        if (l->old_ccl != NULL) {
            cc_loop_poll(l->old_ccl);
            if (cc_loop_pending(l->old_ccl) == 0) {
                (void)cc_loop_free(l->old_ccl);
                l->old_ccl = NULL;
                dp_gen_unref(l->old_g);
                l->old_g = NULL;
            }
        }
        if (atomic_load(&l->srv->stop) && !stop_seen) {
            stop_seen = true;
            l->stopping = true;
            l->drain_deadline_ns =
                px_now_ns() + (uint64_t)atomic_load(&l->srv->drain_ms) * 1000000ull;
            for (int w = 0; w < 2; w++) {
                if (l->lfd[w] >= 0) {
                    shutdown(l->lfd[w], SHUT_RDWR);
                }
            }
            dp_inbound_loop_stop(l);
        }
        if (stop_seen && l->nactive == 0 && cc_loop_pending(l->ccl) == 0 && l->old_ccl == NULL &&
            dp_inbound_loop_pending(l) == 0) {
            break;
        }
    }
    return NULL;
}

/*
 * The loop's own state, before its thread starts: room in the connection table for max
 * connections (chunks are made as they fill), upstream session cache, cache handle of g (a
 * reference of g is taken), resolver completion eventfd. -ENOMEM; what was made is freed by
 * dp_loop_fini.
 */
int dp_loop_init(struct dp_loop *l, struct dp_gen *g, struct cc_ctx *cc, int max)
{
    l->nchunks = (uint32_t)((max + DP_CHUNK - 1) / DP_CHUNK);
    l->chunks = calloc(l->nchunks, sizeof(*l->chunks));
    l->nsess = (uint32_t)g->cfg->upstream_session_cache;
    l->sess = l->nsess > 0 ? calloc(l->nsess, sizeof(*l->sess)) : NULL;
    l->g = g;
    dp_gen_ref(l->g);
    l->ccl = cc_loop_new(cc);
    l->res_done.evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    l->ocsp = dp_ocsp_loop_new();
    if (l->chunks == NULL || l->ccl == NULL || l->res_done.evfd < 0 || l->ocsp == NULL) {
        return -ENOMEM;
    }
    atomic_init(&l->res_done.head, NULL);
    return 0;
}

/* Frees what dp_loop_init made and every connection still open; the thread has ended. */
void dp_loop_fini(struct dp_loop *l)
{
    if (l->ring_ok) {
        io_uring_queue_exit(&l->ring);
    }
    for (uint32_t k = 0; k < l->used; k++) {
        struct dp_conn *c = dp_conn_at(l, k);
        if (c->state != S_FREE) {
            c->inflight = 0; /* the ring is gone: nothing will complete */
            dp_conn_enter(c, S_CLOSING);
            dp_conn_release(c);
        }
    }
    dp_buf_loop_fini(l); /* after the connections: they gave their buffers back */
    for (uint32_t k = 0; l->chunks != NULL && k < l->nchunks; k++) {
        free(l->chunks[k]);
    }
    free(l->chunks);
    for (int k = 0; l->sess != NULL && k < (int)l->nsess; k++) {
        SSL_SESSION_free(l->sess[k].sess);
    }
    free(l->sess);
    dp_ocsp_loop_free(l->ocsp);
    l->ocsp = NULL;
    if (l->ccl != NULL && cc_loop_free(l->ccl) != 0) {
        px_log(PX_LOG_WARN, "dp", "loop %d: mints still pending at exit", l->idx);
    }
    if (l->old_ccl != NULL && cc_loop_free(l->old_ccl) != 0) {
        px_log(PX_LOG_WARN, "dp", "loop %d: mints of a previous generation pending at exit",
               l->idx);
    }
    dp_gen_unref(l->old_g);
    dp_gen_unref(l->g);
    if (l->res_done.evfd >= 0) {
        struct dp_res_job *j = dp_res_done_take(&l->res_done);
        while (j != NULL) {
            struct dp_res_job *n = j->next;
            free(j);
            j = n;
        }
        close(l->res_done.evfd);
    }
}
