/* SPDX-License-Identifier: MIT */
/*
 * dp_buf.c - the bytes in flight of a connection's two sides, and the BIOs OpenSSL reads and
 * writes them through, so that an idle connection holds no buffer at all.
 *   receive: recvs take a buffer from the loop's provided buffer ring (io_uring picks one when
 *     the data arrives: a side that waits for bytes holds none). The filled buffer becomes the
 *     side's input, which OpenSSL (or the splice copy, or the CONNECT head) consumes in place;
 *     what is left once the completion has been handled is copied to the heap ("spilled") and
 *     the ring buffer goes back, so a ring buffer never outlives the event that filled it.
 *     A side that streams (its last recv was full) receives into a buffer of its own from
 *     a small per-loop stack instead, warm in the cache, until a short recv.
 *   send: a side's output is a queue of chunks (a full TLS record each) that exist only while
 *     bytes wait to be sent; a send takes the head chunk's unsent part.
 *   the BIOs: the input BIO's read copies from the side's input straight into OpenSSL's record
 *     buffer, the output BIO's write appends OpenSSL's records to the output queue. No memory
 *     BIO in between (two copies of every byte fewer, and no BIO buffer that keeps its grown
 *     size on an idle connection: OPENSSL-NOTES.md "Memory and bulk").
 *   idle trim: OpenSSL's own record buffers are kept while bytes flow (no malloc per record)
 *     and freed with SSL_free_buffers once a connection has been quiet for a tick (the hot
 *     list, swept from the loop's tick).
 * Owns, per loop: the buffer ring (its mapping and registration), a small cache of free
 * chunks, the list of sides waiting for a ring buffer, the hot list; per side: its input, its
 * output queue, the CONNECT head buffer.
 * Threads: the connection's loop thread only (the fuzz targets: their own thread, no ring).
 * Invariants: a ring buffer is in exactly one place: in the ring (the kernel's), or the input
 * of the side whose completion is being handled; a chunk with a send in flight is neither
 * freed nor moved (appending after its end is fine: the kernel reads only what was given);
 * sd->oq_bytes is the sum of the queue's unsent bytes.
 * Not here: when to receive or send (dp_relay.c), what the stages do with the bytes.
 */
#include "dp_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* ---- the receive buffer ring ------------------------------------------------------------- */

static uint8_t *ring_buf(struct dp_loop *l, uint16_t bid)
{
    return l->br_bufs + (size_t)bid * DP_RBUF;
}

static void ring_put(struct dp_loop *l, uint16_t bid)
{
    io_uring_buf_ring_add(l->br, ring_buf(l, bid), DP_RBUF, bid,
                          io_uring_buf_ring_mask(DP_RING_BUFS), 0);
    io_uring_buf_ring_advance(l->br, 1);
}

/*
 * On the loop thread, once its ring is made: DP_RING_BUFS buffers of DP_RBUF bytes in one
 * anonymous mapping (touched only as the kernel fills them), registered as buffer group
 * DP_BGID. Without it (a kernel older than 5.19, or no memory) every recv gets a heap buffer
 * of its own instead, as before: l->br stays NULL and the negative errno says why.
 */
int dp_buf_ring_init(struct dp_loop *l)
{
    size_t ring_sz = DP_RING_BUFS * sizeof(struct io_uring_buf);
    ring_sz = (ring_sz + 4095) & ~(size_t)4095;
    size_t total = ring_sz + (size_t)DP_RING_BUFS * DP_RBUF;
    void *mem = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        return -errno;
    }
    struct io_uring_buf_reg reg = {.ring_addr = (uint64_t)(uintptr_t)mem,
                                   .ring_entries = DP_RING_BUFS,
                                   .bgid = DP_BGID};
    int r = io_uring_register_buf_ring(&l->ring, &reg, 0);
    if (r != 0) {
        munmap(mem, total);
        return r;
    }
    l->br = mem;
    l->br_bufs = (uint8_t *)mem + ring_sz;
    l->br_size = total;
    io_uring_buf_ring_init(l->br);
    for (uint16_t b = 0; b < DP_RING_BUFS; b++) {
        io_uring_buf_ring_add(l->br, ring_buf(l, b), DP_RBUF, b,
                              io_uring_buf_ring_mask(DP_RING_BUFS), b);
    }
    io_uring_buf_ring_advance(l->br, DP_RING_BUFS);
    return 0;
}

/* After the ring is gone and every connection released: the mapping, the chunk cache. */
void dp_buf_loop_fini(struct dp_loop *l)
{
    if (l->br != NULL) {
        munmap(l->br, l->br_size);
        l->br = NULL;
    }
    while (l->chunk_free != NULL) {
        struct dp_chunk *k = l->chunk_free;
        l->chunk_free = k->next;
        free(k);
    }
    l->nchunk_free = 0;
    while (l->nrx_free > 0) {
        free(l->rx_free[--l->nrx_free]);
    }
    free(l->nobufs);
    l->nobufs = NULL;
    l->nnobufs = l->nobufs_cap = 0;
}

/* ---- a streaming side's own receive buffer ------------------------------------------------- */

/*
 * The ring hands its buffers out in order, so consecutive recvs land in memory that has long
 * left the cache (DP_RING_BUFS x DP_RBUF is larger than L2): a bulk transfer paid for that in
 * the kernel's copy and again in OpenSSL's read. A side whose last recv was a full one is
 * streaming: its next recv gets a buffer of its own, DP_RXBUF bytes (several records: one
 * recv and one sendmsg carry them all), from a per-loop stack, so the same few buffers come
 * back warm. Held while that recv waits, it goes back to the stack once consumed; the first
 * recv that does not fill its buffer puts the side back on the ring (an idle side holds
 * nothing).
 */
static uint8_t *rx_get(struct dp_loop *l)
{
    if (l->nrx_free > 0) {
        return l->rx_free[--l->nrx_free];
    }
    return malloc(DP_RXBUF);
}

static void rx_put(struct dp_loop *l, uint8_t *b)
{
    if (l->nrx_free < DP_RX_CACHE) {
        l->rx_free[l->nrx_free++] = b;
    } else {
        free(b);
    }
}

void dp_buf_prep_recv(struct dp_loop *l, struct side *sd, struct io_uring_sqe *sqe)
{
    if (l->br != NULL && !sd->streaming) {
        io_uring_prep_recv(sqe, sd->fd, NULL, DP_RBUF, 0);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = DP_BGID;
        return;
    }
    /* streaming, or no ring: a buffer of its own (NULL: the recv fails with -EFAULT, then
     * the side ends as if closed) */
    if (sd->rx == NULL) {
        sd->rx = rx_get(l);
    }
    io_uring_prep_recv(sqe, sd->fd, sd->rx, sd->rx != NULL ? DP_RXBUF : 0, 0);
}

/* ---- a side's input ---------------------------------------------------------------------- */

static int in_feed(struct side *sd, const uint8_t *p, size_t n);

void dp_buf_in_drop(struct side *sd)
{
    if (sd->ip != NULL) {
        if (sd->ibid >= 0) {
            ring_put(sd->conn->loop, (uint16_t)sd->ibid);
        } else if (sd->ibid == DP_IBID_RX) {
            rx_put(sd->conn->loop, sd->ip);
        } else {
            free(sd->ip);
        }
    }
    sd->ip = NULL;
    sd->ibid = -1;
    sd->ioff = sd->ilen = 0;
}

uint8_t *dp_buf_recv_take(struct side *sd, int res, uint32_t flags)
{
    struct dp_loop *l = sd->conn->loop;
    uint8_t *p = NULL;
    int bid = -1;
    if (flags & IORING_CQE_F_BUFFER) {
        bid = (int)(flags >> IORING_CQE_BUFFER_SHIFT);
        p = ring_buf(l, (uint16_t)bid);
    } else if (sd->rx != NULL && res > 0) {
        p = sd->rx;
        sd->rx = NULL;
        bid = DP_IBID_RX;
    }
    if (res <= 0 || p == NULL) {
        if (bid >= 0) {
            ring_put(l, (uint16_t)bid);
        }
        return NULL;
    }
    /* a recv that filled its buffer found more queued than it could take: more is coming.
     * (A stream that ends exactly at a buffer's end leaves one own buffer with the idle
     * side's next recv: rare, and bounded by one per side.) */
    sd->streaming = (uint32_t)res == (bid == DP_IBID_RX ? DP_RXBUF : DP_RBUF);
    if (sd->ilen > 0) {
        /* a recv is armed only on an empty input; should bytes be there all the same, the
         * new ones go after them (a copy) */
        uint32_t old = sd->ilen;
        int r = in_feed(sd, p, (size_t)res);
        if (bid >= 0) {
            ring_put(l, (uint16_t)bid);
        } else {
            rx_put(l, p);
        }
        return r < 0 ? NULL : sd->ip + sd->ioff + old;
    }
    sd->ip = p;
    sd->ibid = bid;
    sd->ioff = 0;
    sd->ilen = (uint32_t)res;
    return p;
}

/* Bytes handed over otherwise (a CONNECT request's tail, the fuzz targets): a heap copy
 * after what the input still holds. */
static int in_feed(struct side *sd, const uint8_t *p, size_t n)
{
    if (n == 0) {
        return 0;
    }
    if (n > (size_t)INT32_MAX - sd->ilen) {
        return -EOVERFLOW;
    }
    uint8_t *np = malloc(sd->ilen + n);
    if (np == NULL) {
        return -ENOMEM;
    }
    if (sd->ilen > 0) {
        memcpy(np, sd->ip + sd->ioff, sd->ilen);
    }
    memcpy(np + sd->ilen, p, n);
    uint32_t len = sd->ilen + (uint32_t)n;
    dp_buf_in_drop(sd);
    sd->ip = np;
    sd->ilen = len;
    return (int)n;
}

void dp_buf_spill(struct side *sd)
{
    if (sd->ibid < 0 || sd->ilen == 0) { /* a side's own buffer may stay: it is its own */
        return;
    }
    uint8_t *np = malloc(sd->ilen);
    if (np == NULL) {
        /* no memory for the rest: the ring buffer stays; the ring has others, and -ENOBUFS
         * is backpressure for whoever finds it empty */
        return;
    }
    memcpy(np, sd->ip + sd->ioff, sd->ilen);
    uint32_t len = sd->ilen;
    dp_buf_in_drop(sd);
    sd->ip = np;
    sd->ilen = len;
}

/* ---- the output queue -------------------------------------------------------------------- */

static struct dp_chunk *chunk_get(struct dp_loop *l)
{
    struct dp_chunk *k = l->chunk_free;
    if (k != NULL) {
        l->chunk_free = k->next;
        l->nchunk_free--;
    } else if ((k = malloc(sizeof(*k))) == NULL) {
        return NULL;
    }
    k->next = NULL;
    k->off = k->len = 0;
    return k;
}

static void chunk_put(struct dp_loop *l, struct dp_chunk *k)
{
    if (l->nchunk_free < DP_CHUNK_CACHE) {
        k->next = l->chunk_free;
        l->chunk_free = k;
        l->nchunk_free++;
    } else {
        free(k);
    }
}

int dp_buf_out_append(struct side *sd, const void *p, size_t n)
{
    struct dp_loop *l = sd->conn->loop;
    const uint8_t *s = p;
    if (n > (size_t)INT32_MAX - sd->oq_bytes) {
        return -EOVERFLOW;
    }
    size_t left = n;
    while (left > 0) {
        struct dp_chunk *k = sd->oq_tail;
        if (k == NULL || k->len == DP_OCHUNK) {
            if ((k = chunk_get(l)) == NULL) {
                return -ENOMEM; /* what was appended stays: the caller ends the connection */
            }
            if (sd->oq_tail != NULL) {
                sd->oq_tail->next = k;
            } else {
                sd->oq = k;
            }
            sd->oq_tail = k;
        }
        size_t m = DP_OCHUNK - k->len < left ? DP_OCHUNK - k->len : left;
        memcpy(k->data + k->len, s, m);
        k->len += (uint32_t)m;
        s += m;
        left -= m;
        sd->oq_bytes += (uint32_t)m;
    }
    return (int)n;
}

void dp_buf_prep_send(struct side *sd, struct io_uring_sqe *sqe)
{
    struct dp_chunk *k = sd->oq;
    if (k->next == NULL) {
        io_uring_prep_send(sqe, sd->fd, k->data + k->off, k->len - k->off, MSG_NOSIGNAL);
        return;
    }
    /* several records queued: one sendmsg for up to DP_SEND_IOV chunks (one syscall's work
     * instead of several); the message lives in the head chunk, which outlives the send */
    int n = 0;
    for (struct dp_chunk *q = k; q != NULL && n < DP_SEND_IOV; q = q->next) {
        k->iov[n].iov_base = q->data + q->off;
        k->iov[n].iov_len = q->len - q->off;
        n++;
    }
    memset(&k->msg, 0, sizeof(k->msg));
    k->msg.msg_iov = k->iov;
    k->msg.msg_iovlen = (size_t)n;
    io_uring_prep_sendmsg(sqe, sd->fd, &k->msg, MSG_NOSIGNAL);
}

void dp_buf_out_sent(struct side *sd, uint32_t n)
{
    struct dp_loop *l = sd->conn->loop;
    while (n > 0 && sd->oq != NULL) {
        struct dp_chunk *k = sd->oq;
        uint32_t m = k->len - k->off < n ? k->len - k->off : n;
        k->off += m;
        n -= m;
        sd->oq_bytes -= m;
        if (k->off == k->len) {
            sd->oq = k->next;
            if (sd->oq == NULL) {
                sd->oq_tail = NULL; /* empty: an idle side holds no send buffer */
            }
            chunk_put(l, k);
        }
    }
}

void dp_buf_out_drop(struct side *sd)
{
    struct dp_loop *l = sd->conn->loop;
    while (sd->oq != NULL) {
        struct dp_chunk *k = sd->oq;
        sd->oq = k->next;
        chunk_put(l, k);
    }
    sd->oq_tail = NULL;
    sd->oq_bytes = 0;
}

/* Everything a side holds; at release (no operation in flight). */
void dp_buf_side_fini(struct side *sd)
{
    dp_buf_in_drop(sd);
    dp_buf_out_drop(sd);
    free(sd->rbuf);
    sd->rbuf = NULL;
    sd->rlen = 0;
    if (sd->rx != NULL) {
        rx_put(sd->conn->loop, sd->rx);
        sd->rx = NULL;
    }
}

/* ---- the BIOs ------------------------------------------------------------------------------ */

/*
 * Two BIO types over a side. The input BIO reads the side's input (a retry when it is empty:
 * the end of a stream is the side's eof flag, never the BIO's); a write to it hands bytes
 * over as input (a copy). The output BIO appends to the output queue; its pending count is
 * the queue's. Both are views: freeing one (SSL_free does) leaves the side's bytes alone.
 */
static int bin_read(BIO *b, char *out, int len)
{
    struct side *sd = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (sd->ilen == 0 || len <= 0) {
        BIO_set_retry_read(b);
        return -1;
    }
    uint32_t n = (uint32_t)len < sd->ilen ? (uint32_t)len : sd->ilen;
    memcpy(out, sd->ip + sd->ioff, n);
    sd->ioff += n;
    sd->ilen -= n;
    if (sd->ilen == 0) {
        dp_buf_in_drop(sd); /* a ring buffer goes back at once */
    }
    return (int)n;
}

static int bin_write(BIO *b, const char *p, int len)
{
    struct side *sd = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    return len > 0 ? in_feed(sd, (const uint8_t *)p, (size_t)len) : 0;
}

static long bin_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)num;
    (void)ptr;
    struct side *sd = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_PENDING:
        return (long)sd->ilen;
    case BIO_CTRL_RESET:
        dp_buf_in_drop(sd);
        return 1;
    case BIO_CTRL_FLUSH:
        return 1;
    default:
        return 0;
    }
}

static int bout_write(BIO *b, const char *p, int len)
{
    struct side *sd = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (len <= 0) {
        return 0;
    }
    int r = dp_buf_out_append(sd, p, (size_t)len);
    if (r < 0) {
        BIO_set_retry_write(b); /* out of memory: SSL_write fails, the relay ends the conn */
        return -1;
    }
    return r;
}

static int bout_read(BIO *b, char *out, int len)
{
    (void)out;
    (void)len;
    BIO_clear_retry_flags(b);
    BIO_set_retry_read(b); /* nothing reads back what goes out */
    return -1;
}

static long bout_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)num;
    (void)ptr;
    struct side *sd = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_PENDING:
    case BIO_CTRL_WPENDING:
        return (long)sd->oq_bytes;
    case BIO_CTRL_RESET:
        dp_buf_out_drop(sd);
        return 1;
    case BIO_CTRL_FLUSH:
        return 1;
    default:
        return 0;
    }
}

static int b_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static BIO_METHOD *g_in_meth, *g_out_meth;
static pthread_once_t g_meth_once = PTHREAD_ONCE_INIT;

static void meth_init(void)
{
    int ti = BIO_get_new_index(), to = BIO_get_new_index();
    if (ti < 0 || to < 0) {
        return;
    }
    g_in_meth = BIO_meth_new(ti | BIO_TYPE_SOURCE_SINK, "tlsmint side input");
    g_out_meth = BIO_meth_new(to | BIO_TYPE_SOURCE_SINK, "tlsmint side output");
    if (g_in_meth == NULL || g_out_meth == NULL) {
        BIO_meth_free(g_in_meth);
        BIO_meth_free(g_out_meth);
        g_in_meth = g_out_meth = NULL;
        return;
    }
    BIO_meth_set_read(g_in_meth, bin_read);
    BIO_meth_set_write(g_in_meth, bin_write);
    BIO_meth_set_ctrl(g_in_meth, bin_ctrl);
    BIO_meth_set_create(g_in_meth, b_create);
    BIO_meth_set_read(g_out_meth, bout_read);
    BIO_meth_set_write(g_out_meth, bout_write);
    BIO_meth_set_ctrl(g_out_meth, bout_ctrl);
    BIO_meth_set_create(g_out_meth, b_create);
}

static BIO *bio_new(BIO_METHOD **m, struct side *sd)
{
    pthread_once(&g_meth_once, meth_init);
    BIO *b = *m != NULL ? BIO_new(*m) : NULL;
    if (b != NULL) {
        BIO_set_data(b, sd);
    }
    return b;
}

BIO *dp_bio_in_new(struct side *sd)
{
    return bio_new(&g_in_meth, sd);
}

BIO *dp_bio_out_new(struct side *sd)
{
    return bio_new(&g_out_meth, sd);
}

/* ---- sides waiting for a ring buffer ------------------------------------------------------ */

/*
 * A recv found the ring empty (-ENOBUFS): the side is noted and its recv armed again at the
 * end of the batch, when the buffers the batch's completions held are back. The list holds
 * tokens, not pointers: a connection that ends meanwhile is simply not found.
 */
void dp_buf_nobufs(struct dp_conn *c, int dir)
{
    struct dp_loop *l = c->loop;
    c->s[dir].nobufs = true;
    atomic_fetch_add_explicit(&l->ctr.recv_nobufs, 1, memory_order_relaxed);
    if (l->nnobufs == l->nobufs_cap) {
        uint32_t cap = l->nobufs_cap ? 2 * l->nobufs_cap : 64;
        uint64_t *n = realloc(l->nobufs, cap * sizeof(*n));
        if (n == NULL) {
            c->s[dir].nobufs = false; /* armed again by the connection's next event */
            return;
        }
        l->nobufs = n;
        l->nobufs_cap = cap;
    }
    l->nobufs[l->nnobufs++] = dp_conn_token(c) | ((uint64_t)dir << 48);
}

void dp_buf_nobufs_run(struct dp_loop *l)
{
    uint32_t n = l->nnobufs;
    l->nnobufs = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t t = l->nobufs[i];
        int dir = (int)(t >> 48) & 1;
        struct dp_conn *c = dp_conn_by_token(l, t & 0xffffffffffffull);
        if (c != NULL && c->s[dir].nobufs) {
            c->s[dir].nobufs = false;
            dp_conn_run(c);
        }
    }
}

/* ---- the hot list: connections whose OpenSSL buffers may be allocated ----------------------- */

void dp_buf_hot(struct dp_conn *c)
{
    if (c->h_pprev != NULL) {
        return;
    }
    struct dp_loop *l = c->loop;
    c->h_next = l->hot;
    if (l->hot != NULL) {
        l->hot->h_pprev = &c->h_next;
    }
    l->hot = c;
    c->h_pprev = &l->hot;
}

void dp_buf_cold(struct dp_conn *c)
{
    if (c->h_pprev == NULL) {
        return;
    }
    *c->h_pprev = c->h_next;
    if (c->h_next != NULL) {
        c->h_next->h_pprev = c->h_pprev;
    }
    c->h_next = NULL;
    c->h_pprev = NULL;
}

/*
 * From the tick: a relaying connection that has moved no byte for a whole tick gives OpenSSL's
 * record buffers back (SSL_free_buffers refuses, and the connection stays hot, while a record
 * is half read or half written; OpenSSL >= 3.0.14 also when the buffer holds bytes of the
 * next record, CVE-2024-4741). Costs what is hot, not what is open.
 */
void dp_buf_sweep(struct dp_loop *l, uint64_t now)
{
    const uint64_t quiet = (uint64_t)DP_TICK_MS * 1000000ull;
    struct dp_conn *c = l->hot;
    while (c != NULL) {
        struct dp_conn *next = c->h_next;
        /* relaying only: a handshake in progress keeps what it has until it is done */
        if ((c->state == S_RELAY || c->state == S_IN_RELAY) && now - c->last_ns >= quiet) {
            bool done = true;
            for (int d = 0; d < 2; d++) {
                if (c->s[d].ssl != NULL && SSL_free_buffers(c->s[d].ssl) != 1) {
                    done = false;
                }
            }
            if (done) {
                dp_buf_cold(c);
            }
        }
        c = next;
    }
}
