/* SPDX-License-Identifier: MIT */
/*
 * dp_xframe.c - the export's loop side: each exported connection's TCP/IP framing, done on the
 * loop thread while the plaintext is still in its cache, into the loop's record chunks.
 * dp_export_begin/data/end frame SYN/SYN-ACK/ACK, the plaintext (segments of at most SEG_MAX,
 * each acknowledged) and FIN or RST, from the side that ended first, as finished pcap records
 * (libpcap's record layout: the 16-byte header, then an Ethernet frame with fixed locally administered MACs, IPv4, or IPv6
 * when either end is IPv6 with an IPv4 end v4-mapped, and TCP, checksummed while the payload is
 * copied, dp_csum.c). Sequence and acknowledgement numbers are the connection's (struct
 * dp_xflow). Every record of one loop batch carries the time read once in that batch. A chunk
 * goes to the writer (one MPSC push, an eventfd wake-up only on empty -> non-empty) when it is
 * full, and at the end of a loop batch when the writer has taken everything else;
 * the writer gives it back to its loop's return list, taken whole, so neither side calls
 * malloc or free per record. A chunk starts where its records are expected in the file modulo
 * DIO_ALIGN (xloop.shift, set by the writer), so the writer can write it with O_DIRECT as it
 * is (dp_xfile.c).
 * Threads: the connection's loop (and, once the loops have ended, the thread that frees
 * them); xlist_push (dp_export_int.h) from any thread.
 * Invariants: chunks taken and not given back <= [export] queue_mb; a loop never waits: when
 * that is reached the records are dropped and counted for every sink, and the sequence numbers
 * move on, so a reader sees the gap.
 * Not here: the writer and the sinks (dp_export.c, dp_xfile.c).
 */
#include "dp_export_int.h"
#include "dp_csum.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>

/* ---- chunks ------------------------------------------------------------------------------ */

/*
 * A new slab in the pool, when it holds fewer than lim: SLAB_BYTES of memory aligned to
 * SLAB_BYTES, marked for transparent huge pages (one TLB entry and one pin for the chunks of a
 * slab instead of 512 of each; a kernel that will not is fine), its chunks linked in order
 * (chunk_get sets whose each one is). populate: its pages are faulted in here (dp_xpool_fill),
 * not at a loop's first store. NULL when the pool has lim slabs or memory is short. Slabs live
 * until dp_export_free.
 */
static struct xslab *slab_make(struct dp_export *x, unsigned lim, bool populate)
{
    if (lim > x->slabs_cap) {
        lim = x->slabs_cap;
    }
    unsigned s = atomic_load_explicit(&x->nslabs, memory_order_relaxed);
    if (s >= lim) {
        return NULL; /* the common case once the pool is full: no mmap to undo */
    }
    /* The memory first, the slot after: a failure here leaves the bound as it was. */
    uint8_t *raw = mmap(NULL, 2 * (size_t)SLAB_BYTES, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) {
        return NULL;
    }
    uint8_t *mem = (uint8_t *)(((uintptr_t)raw + SLAB_BYTES - 1) & ~(uintptr_t)(SLAB_BYTES - 1));
    if (mem > raw) {
        munmap(raw, (size_t)(mem - raw));
    }
    if (raw + 2 * (size_t)SLAB_BYTES > mem + SLAB_BYTES) {
        munmap(mem + SLAB_BYTES, (size_t)(raw + 2 * (size_t)SLAB_BYTES - (mem + SLAB_BYTES)));
    }
    struct xslab *sl = calloc(1, sizeof(*sl));
    if (sl == NULL) {
        munmap(mem, SLAB_BYTES);
        return NULL;
    }
    do {
        if (s >= lim) { /* another thread took the last slot meanwhile */
            munmap(mem, SLAB_BYTES);
            free(sl);
            return NULL;
        }
    } while (!atomic_compare_exchange_weak_explicit(&x->nslabs, &s, s + 1, memory_order_relaxed,
                                                    memory_order_relaxed));
    /* slot s is this thread's; dp_xpool_free skips a slot not filled yet */
    (void)madvise(mem, SLAB_BYTES, MADV_HUGEPAGE); /* best effort: 4 KiB pages work too */
    if (populate && madvise(mem, SLAB_BYTES, MADV_POPULATE_WRITE) != 0 && errno == EINVAL) {
        for (size_t i = 0; i < SLAB_BYTES; i += 4096) { /* a kernel before 5.14; not when
                                                         * memory is short (ENOMEM) */
            ((volatile uint8_t *)mem)[i] = 0;
        }
    }
    sl->mem = mem;
    for (unsigned i = 0; i < SLAB_CHUNKS; i++) {
        struct xchunk *k = &sl->k[i];
        k->mem = mem + (size_t)i * CHUNK_BYTES;
        k->slab = (uint16_t)s;
        k->next = i + 1 < SLAB_CHUNKS ? &sl->k[i + 1] : NULL;
    }
    x->slab[s] = sl; /* the others read it through a chunk pushed after this (release) */
    return sl;
}

/* A new slab for loop l, when no chunk is free: the first chunk is returned, the others
 * go to l's free list. NULL when the pool has its bound (x->slabs_cap, and what the loops in
 * use need: every chunk the queue may hold, plus what each loop keeps) or memory is short. */
static struct xchunk *slab_new(struct dp_export *x, struct xloop *l)
{
    if (!l->pooled) {
        l->pooled = true;
        atomic_fetch_add_explicit(&x->nloops, 1, memory_order_relaxed);
    }
    unsigned loops = atomic_load_explicit(&x->nloops, memory_order_relaxed);
    unsigned lim = (unsigned)(x->cap / SLAB_BYTES) + 1 + loops * (2 * CHUNK_KEEP / SLAB_CHUNKS + 1);
    struct xslab *sl = slab_make(x, lim, false);
    if (sl == NULL) {
        return NULL;
    }
    sl->k[SLAB_CHUNKS - 1].next = l->free;
    l->free = sl->k[0].next;
    l->nfree += SLAB_CHUNKS - 1;
    sl->k[0].next = NULL;
    return &sl->k[0];
}

/*
 * The writer thread, at start: slabs for every chunk the queue may hold, faulted in, to the
 * spare list. A loop that takes a chunk of a slab made by slab_new takes a page fault at its
 * first store to each page (a 2 MiB huge page is cleared in it: perf showed clear_page_erms
 * at 0.057 s per GB in the first bulk transfers of a process, in the loop thread), so the
 * pool is made and touched here instead, while nothing waits for it.
 */
void dp_xpool_fill(struct dp_export *x)
{
    unsigned lim = (unsigned)(x->cap / SLAB_BYTES);
    struct xslab *sl;
    while (!atomic_load_explicit(&x->stop, memory_order_relaxed) &&
           (sl = slab_make(x, lim, true)) != NULL) {
        xlist_push_chain(&x->spare, &sl->k[0], &sl->k[SLAB_CHUNKS - 1]);
    }
}

/* l's free list after taking list (the writer's returns or the spare chunks): at most
 * CHUNK_KEEP stay, the rest go to the export's spare list for any loop. */
static void free_refill(struct dp_export *x, struct xloop *l, struct xchunk *list)
{
    while (list != NULL && l->nfree < CHUNK_KEEP) {
        struct xchunk *k = list;
        list = k->next;
        k->next = l->free;
        l->free = k;
        l->nfree++;
    }
    if (list != NULL) {
        struct xchunk *last = list;
        while (last->next != NULL) {
            last = last->next;
        }
        xlist_push_chain(&x->spare, list, last);
    }
}

/* A chunk for loop l (idx), counted in the queue: its free list, else what the writer gave
 * back, else a spare one, else one of a new slab; NULL when the queue is full. */
static struct xchunk *chunk_get(struct dp_export *x, struct xloop *l, int idx)
{
    if (atomic_fetch_add_explicit(&x->queued, CHUNK_BYTES, memory_order_relaxed) + CHUNK_BYTES >
        x->cap) {
        atomic_fetch_sub_explicit(&x->queued, CHUNK_BYTES, memory_order_relaxed);
        return NULL;
    }
    if (l->free == NULL) {
        atomic_store_explicit(&l->nback, 0, memory_order_relaxed);
        free_refill(x, l, xlist_take_any(&l->back));
    }
    if (l->free == NULL) {
        free_refill(x, l, xlist_take_any(&x->spare));
    }
    struct xchunk *k = l->free;
    if (k != NULL) {
        l->free = k->next;
        l->nfree--;
    } else {
        k = slab_new(x, l);
    }
    if (k == NULL) {
        atomic_fetch_sub_explicit(&x->queued, CHUNK_BYTES, memory_order_relaxed);
        return NULL;
    }
    uint32_t shift = atomic_load_explicit(&l->shift, memory_order_relaxed);
    k->loop = (uint16_t)idx; /* a spare chunk may have been another loop's */
    k->pos = l->pos;
    k->start = (uint32_t)((l->pos + shift) & (DIO_ALIGN - 1));
    k->len = k->pkts = 0;
    k->bytes = 0;
    return k;
}

void dp_xpool_free(struct dp_export *x)
{
    unsigned n = atomic_load_explicit(&x->nslabs, memory_order_relaxed);
    for (unsigned i = 0; x->slab != NULL && i < n && i < x->slabs_cap; i++) {
        if (x->slab[i] != NULL) {
            munmap(x->slab[i]->mem, SLAB_BYTES);
            free(x->slab[i]);
        }
    }
    free(x->slab);
    x->slab = NULL;
}

/* The loop's current chunk to the writer. */
static void handoff(struct dp_export *x, struct xloop *l)
{
    struct xchunk *k = l->cur;
    l->cur = NULL;
    l->pos += k->len;
    if (xlist_push(&x->head, k)) {
        uint64_t one = 1;
        ssize_t w = write(x->evfd, &one, sizeof(one)); /* nonblocking; a full counter wakes too */
        (void)w;
    }
}

void dp_export_batch_end(struct dp_export *x, struct dp_loop *lp)
{
    if (x == NULL || lp->idx < 0 || lp->idx >= POOL_LOOPS) {
        return;
    }
    struct xloop *l = &x->lp[lp->idx];
    l->ts_ok = false;
    struct xchunk *k = l->cur;
    /* while the writer has chunks to take, this one fills up: a queue of full chunks holds
     * the most records when the writer stalls (a rotation, a slow disk) */
    if (k != NULL && k->len > 0 && atomic_load_explicit(&x->head, memory_order_relaxed) == NULL) {
        handoff(x, l);
    }
}

void dp_xframe_flush_all(struct dp_export *x)
{
    for (int i = 0; i < POOL_LOOPS; i++) {
        struct xloop *l = &x->lp[i];
        if (l->cur != NULL && l->cur->len > 0) {
            handoff(x, l);
        } else if (l->cur != NULL) {
            dp_xchunk_put(x, l->cur);
            l->cur = NULL;
        }
    }
}

/* ---- framing ----------------------------------------------------------------------------- */

static uint16_t csum_fold(uint32_t sum)
{
    while (sum >> 16) {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    return (uint16_t)~sum;
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

enum { TH_FIN = 0x01, TH_SYN = 0x02, TH_RST = 0x04, TH_PSH = 0x08, TH_ACK = 0x10 };

/* What every segment of one event needs: the loop, the two ends, the pseudo-header's
 * addresses summed once per direction. */
struct flow {
    struct dp_export *x;
    struct xloop *l;
    int idx;
    bool v6;
    uint8_t ip[2][16]; /* [D_CLIENT] the client, [D_UP] the original destination */
    uint16_t port[2];
    uint32_t asum;     /* the pseudo-header's two addresses (the same sum either way) */
};

/* The address as 16 bytes; true when it is IPv4 (plain or v4-mapped), in the last 4 bytes. */
static bool addr16(const struct sockaddr_storage *ss, uint8_t out[16], uint16_t *port)
{
    memset(out, 0, 16);
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        memcpy(out, &a->sin6_addr, 16);
        *port = ntohs(a->sin6_port);
        return IN6_IS_ADDR_V4MAPPED(&a->sin6_addr);
    }
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    out[10] = out[11] = 0xff;
    memcpy(out + 12, &a->sin_addr, 4);
    *port = ntohs(a->sin_port);
    return true;
}

/* The flow of c, with the batch's time read if it is not yet; false when c's loop has no
 * chunks (not one of the server's loops). */
static bool flow_of(struct dp_export *x, const struct dp_conn *c, struct flow *f)
{
    int idx = c->loop != NULL ? c->loop->idx : -1;
    if (idx < 0 || idx >= POOL_LOOPS) {
        return false;
    }
    f->x = x;
    f->idx = idx;
    f->l = &x->lp[idx];
    bool v4a = addr16(&c->client_addr, f->ip[D_CLIENT], &f->port[D_CLIENT]);
    bool v4b = addr16(&c->dst, f->ip[D_UP], &f->port[D_UP]);
    f->v6 = !(v4a && v4b);
    f->asum = f->v6 ? dp_csum_add(dp_csum_add(0, f->ip[0], 16), f->ip[1], 16)
                    : dp_csum_add(dp_csum_add(0, f->ip[0] + 12, 4), f->ip[1] + 12, 4);
    if (!f->l->ts_ok) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        f->l->ts[0] = (uint32_t)ts.tv_sec;
        f->l->ts[1] = (uint32_t)(ts.tv_nsec / 1000);
        f->l->ts_ok = true;
    }
    return true;
}

/* Room for one more record in the loop's chunk (a new chunk when it is full), or NULL when the
 * queue is full. */
static uint8_t *rec_room(struct flow *f)
{
    struct xloop *l = f->l;
    struct xchunk *k = l->cur;
    if (k != NULL && k->start + k->len + REC_MAX <= CHUNK_BYTES) {
        return k->mem + k->start + k->len;
    }
    if (k != NULL) {
        handoff(f->x, l);
    }
    k = chunk_get(f->x, l, f->idx);
    if (k == NULL) {
        return NULL;
    }
    l->cur = k;
    return k->mem + k->start;
}

/*
 * One segment from side `from` (D_CLIENT or D_UP) with the given flags, sequence and
 * acknowledgement numbers and payload, framed as Ethernet + IPv4/IPv6 + TCP, as the next pcap
 * record of the loop's chunk. False when it was dropped (the queue is full). The headers are
 * built and summed on the stack, so the chunk is only stored to. Its lines were last read by
 * the disk, and taking them back is most of what framing costs (perf: the stores wait; the
 * same cost sat in the writer when it framed into its own buffer). Streaming stores for the
 * payload were worse (2.5x), a memset of each run first only moved the wait, and reusing a
 * chunk only after 32 others changed nothing; the AVX2 copy and sum (dp_csum.c) and the slabs'
 * huge pages took segment and its sums from 0.195 to 0.15 s per GB; measured on this
 * machine's VM.
 */
static bool segment(struct flow *f, int from, uint8_t flags, uint32_t seq, uint32_t ack,
                    const uint8_t *p, size_t n)
{
    uint8_t *rec = rec_room(f);
    if (rec == NULL) {
        return false;
    }
    uint8_t h[16 + 14 + 40 + 20]; /* the record header and the frame's headers */
    uint8_t *fr = h + 16;
    int to = from ^ 1;
    static const uint8_t mac[2][6] = {{0x02, 0, 0, 0, 0, 0x01}, {0x02, 0, 0, 0, 0, 0x02}};
    memcpy(fr, mac[to], 6);
    memcpy(fr + 6, mac[from], 6);
    size_t ipl = f->v6 ? 40 : 20;
    uint8_t *ip = fr + 14, *th = ip + ipl;
    if (f->v6) {
        put16(fr + 12, 0x86dd);
        put32(ip, 0x60000000u);
        put16(ip + 4, (uint16_t)(20 + n));
        ip[6] = 6;
        ip[7] = 64;
        memcpy(ip + 8, f->ip[from], 16);
        memcpy(ip + 24, f->ip[to], 16);
    } else {
        put16(fr + 12, 0x0800);
        ip[0] = 0x45;
        ip[1] = 0;
        put16(ip + 2, (uint16_t)(20 + 20 + n));
        put16(ip + 4, f->l->ip_id++);
        put16(ip + 6, 0x4000);
        ip[8] = 64;
        ip[9] = 6;
        put16(ip + 10, 0);
        memcpy(ip + 12, f->ip[from] + 12, 4);
        memcpy(ip + 16, f->ip[to] + 12, 4);
        put16(ip + 10, csum_fold(dp_csum_add(0, ip, 20)));
    }
    uint32_t sum = f->asum + 6 + (uint32_t)(20 + n); /* pseudo-header: protocol, TCP length */
    put16(th, f->port[from]);
    put16(th + 2, f->port[to]);
    put32(th + 4, seq);
    put32(th + 8, (flags & TH_ACK) ? ack : 0);
    th[12] = 5 << 4;
    th[13] = flags;
    put16(th + 14, 65535);
    put16(th + 16, 0);
    put16(th + 18, 0);
    sum = dp_csum_add(sum, th, 20);
    size_t hl = 16 + 14 + ipl + 20;
    if (n > 0) {
        sum = dp_csum_copy(sum, rec + hl, p, n);
    }
    put16(th + 16, csum_fold(sum));
    /* the record header: libpcap's file layout (struct pcap_sf_pkthdr: 32-bit seconds,
     * microseconds, captured and original length, in the machine's byte order like the file
     * header pcap_dump_fopen writes) */
    uint32_t len = (uint32_t)(hl - 16 + n);
    uint32_t rh[4] = {f->l->ts[0], f->l->ts[1], len, len};
    memcpy(h, rh, sizeof(rh));
    if (f->v6) { /* a constant size: a few vector stores, not a string copy */
        memcpy(rec, h, 16 + 14 + 40 + 20);
    } else {
        memcpy(rec, h, 16 + 14 + 20 + 20);
    }
    struct xchunk *k = f->l->cur;
    k->len += 16 + len;
    k->pkts++;
    k->bytes += len;
    return true;
}

/* ---- the tap ----------------------------------------------------------------------------- */

void dp_export_begin(struct dp_export *x, struct dp_conn *c)
{
    if (x == NULL || c->xf.on || c->xf.excluded) {
        return;
    }
    if (c->no_export) { /* its rule: export = no. No record at all, so no sink sees it */
        c->xf.excluded = true;
        atomic_fetch_add_explicit(&x->excluded, 1, memory_order_relaxed);
        return;
    }
    uint32_t isn[2];
    RAND_bytes((unsigned char *)isn, sizeof(isn));
    const int C = D_CLIENT, U = D_UP;
    c->xf.seq[C] = isn[C] + 1; /* the SYN and SYN-ACK each take one sequence number */
    c->xf.seq[U] = isn[U] + 1;
    c->xf.left[0] = c->xf.left[1] = x->max_bytes ? x->max_bytes : UINT32_MAX;
    c->xf.on = true;
    c->xf.was_on = true;
    struct flow f;
    if (!flow_of(x, c, &f)) {
        dp_xcount_drop(x, 3);
        return;
    }
    int lost = !segment(&f, C, TH_SYN, isn[C], 0, NULL, 0);
    lost += !segment(&f, U, TH_SYN | TH_ACK, isn[U], isn[C] + 1, NULL, 0);
    lost += !segment(&f, C, TH_ACK, isn[C] + 1, isn[U] + 1, NULL, 0);
    if (lost > 0) {
        dp_xcount_drop(x, (uint64_t)lost);
    }
}

void dp_export_data(struct dp_export *x, struct dp_conn *c, int dir, const uint8_t *p, size_t n)
{
    if (x == NULL || !c->xf.on || c->xf.left[dir] == 0 || n == 0) {
        return;
    }
    if (n > c->xf.left[dir]) {
        n = c->xf.left[dir];
    }
    if (c->xf.left[dir] != UINT32_MAX) {
        c->xf.left[dir] -= (uint32_t)n;
    }
    uint32_t seq = c->xf.seq[dir], ack = c->xf.seq[dir ^ 1];
    c->xf.seq[dir] += (uint32_t)n; /* advanced even when dropped: the reader sees the gap */
    size_t nseg = (n + SEG_MAX - 1) / SEG_MAX;
    struct flow f;
    if (!flow_of(x, c, &f)) {
        dp_xcount_drop(x, nseg + 1);
        return;
    }
    size_t off = 0, i = 0;
    for (; off < n; off += SEG_MAX, i++) {
        size_t m = n - off < SEG_MAX ? n - off : SEG_MAX;
        uint8_t fl = TH_ACK | (off + m == n ? TH_PSH : 0);
        if (!segment(&f, dir, fl, seq + (uint32_t)off, ack, p + off, m)) {
            dp_xcount_drop(x, nseg + 1 - i);
            return;
        }
    }
    /* the receiver acknowledges each record, so no reader sees a window overrun */
    if (!segment(&f, dir ^ 1, TH_ACK, ack, seq + (uint32_t)n, NULL, 0)) {
        dp_xcount_drop(x, 1);
    }
}

void dp_export_end(struct dp_export *x, struct dp_conn *c, bool reset)
{
    if (x == NULL || !c->xf.on) {
        return;
    }
    c->xf.on = false;
    /* from the side that ended first (the client when neither did: a timeout, a drain) */
    const int A = c->xf.ender != 0 ? c->xf.ender - 1 : D_CLIENT, B = A ^ 1;
    uint32_t sa = c->xf.seq[A], sb = c->xf.seq[B];
    const bool rst = reset || c->xf.ender_rst;
    struct flow f;
    if (!flow_of(x, c, &f)) {
        dp_xcount_drop(x, rst ? 1 : 3);
        return;
    }
    int lost;
    if (rst) {
        lost = !segment(&f, A, TH_RST | TH_ACK, sa, sb, NULL, 0);
    } else {
        lost = !segment(&f, A, TH_FIN | TH_ACK, sa, sb, NULL, 0);
        lost += !segment(&f, B, TH_FIN | TH_ACK, sb, sa + 1, NULL, 0);
        lost += !segment(&f, A, TH_ACK, sa + 1, sb + 1, NULL, 0);
    }
    if (lost > 0) {
        dp_xcount_drop(x, (uint64_t)lost);
    }
}
