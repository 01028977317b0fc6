/* SPDX-License-Identifier: MIT */
/*
 * dp_export.c - decrypted traffic export: every intercepted connection as its own TCP
 * conversation in pcap form (rolling files, PCAP-over-IP readers, a live copy on an interface).
 * Owns the export queue, the writer thread and the three sinks. The loops call
 * dp_export_begin/data/end (lock-free push onto a bounded MPSC list, an eventfd wake-up only on
 * empty -> non-empty); only the writer thread touches files, sockets and libpcap. The relay
 * reads plaintext straight into a queued event's payload (dp_export_reserve/commit), so the
 * export copies nothing on the loop; those events come from a pool per loop, and the writer
 * hands each back to its loop (one more MPSC list each, taken whole by the loop), so neither
 * side calls malloc or free per record (the writer freeing what a loop allocated contended on
 * glibc's arena lock).
 * The TCP/IP framing is ours: an Ethernet header with fixed locally administered MACs, IPv4 (or
 * IPv6 when either end is IPv6; an IPv4 end is then written v4-mapped), a TCP header with
 * sequence and acknowledgement numbers that the loop keeps per connection (struct dp_xflow),
 * so the writer needs no state per flow. The frames of a batch are framed straight into one
 * buffer as pcap records (libpcap's record layout: the 16-byte header, then the frame), the
 * payload copied and checksummed in one pass, and the buffer goes whole to each PCAP-over-IP
 * reader and to the rolling file (dp_xfile.c). libpcap makes each stream's file header
 * (pcap_dump_fopen) and sends frames to the mirror (pcap_inject).
 * Invariants: queued bytes <= [export] queue_mb; a loop never waits: a full queue drops the
 * event and counts it for every sink; a reader that falls 12 MiB behind is dropped; a file
 * that cannot be written is reported once, then retried every 10 s while packets are counted
 * as dropped.
 * Not here: the file sink (dp_xfile.c); which connections are exported (dp_conn.c calls
 * begin for S_RELAY only, so bypassed, spliced and failed-open bytes, which are still
 * encrypted, never come here; the policy marks a connection whose rule says export = no, and
 * begin only counts it).
 */
#include "dp_export_int.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>
#include <pcap/pcap.h>

const char *const dp_export_sink_names[DP_EXPORT_SINKS] = {"file", "pcap_over_ip", "mirror"};

void dp_xset_state(struct dp_export *x, int sink, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&x->state_lock);
    vsnprintf(x->state[sink], sizeof(x->state[sink]), fmt, ap);
    pthread_mutex_unlock(&x->state_lock);
    va_end(ap);
}

static void count_drop_all(struct dp_export *x, uint64_t n)
{
    for (int s = 0; s < DP_EXPORT_SINKS; s++) {
        if (x->on[s]) {
            atomic_fetch_add_explicit(&x->dropped[s], n, memory_order_relaxed);
        }
    }
}

/* ---- loop side ------------------------------------------------------------------------- */

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

static size_t ev_size(const struct ev *e)
{
    return sizeof(struct ev) + (e->pooled ? EV_ROOM : e->len);
}

/* A pooled event of loop idx: its own free list, else what the writer gave back, else new. */
static struct ev *pool_get(struct dp_export *x, int idx)
{
    struct ev_pool *p = &x->pool[idx];
    if (p->free == NULL) {
        p->free = atomic_exchange_explicit(&p->back, NULL, memory_order_acquire);
        p->nfree = 0;
        for (struct ev *e = p->free; e != NULL; e = e->next) {
            p->nfree++;
        }
        while (p->nfree > POOL_KEEP) { /* after a burst: back to this loop's own arena */
            struct ev *e = p->free;
            p->free = e->next;
            free(e);
            p->nfree--;
        }
    }
    struct ev *e = p->free;
    if (e != NULL) {
        p->free = e->next;
        p->nfree--;
        return e;
    }
    e = malloc(sizeof(struct ev) + EV_ROOM);
    if (e != NULL) {
        e->pooled = true;
        e->loop = (uint16_t)idx;
    }
    return e;
}

/* The writer is done with e: a pooled one goes back to its loop. */
/* e onto the MPSC list at head (newest first); true when the list was empty. */
static bool list_push(_Atomic(struct ev *) *head, struct ev *e)
{
    struct ev *old = atomic_load_explicit(head, memory_order_relaxed);
    do {
        e->next = old;
    } while (!atomic_compare_exchange_weak_explicit(head, &old, e, memory_order_release,
                                                    memory_order_relaxed));
    return old == NULL;
}

static void ev_put(struct dp_export *x, struct ev *e)
{
    if (!e->pooled) {
        free(e);
        return;
    }
    list_push(&x->pool[e->loop].back, e);
}

static int loop_idx(const struct dp_conn *c)
{
    return c->loop != NULL && c->loop->idx >= 0 && c->loop->idx < POOL_LOOPS ? c->loop->idx : -1;
}

/*
 * A new event with room for n payload bytes (pooled: EV_ROOM, for loop idx >= 0), or NULL
 * when the queue is full (counted as dropped if count).
 */
static struct ev *ev_new_in(struct dp_export *x, const struct dp_conn *c, enum ev_kind k,
                            size_t n, int idx, bool count)
{
    bool pooled = idx >= 0 && n > 0 && n <= EV_ROOM;
    size_t sz = sizeof(struct ev) + (pooled ? EV_ROOM : n);
    struct ev *e = NULL;
    if (atomic_fetch_add_explicit(&x->queued, sz, memory_order_relaxed) + sz <= x->cap) {
        e = pooled ? pool_get(x, idx) : malloc(sz);
    }
    if (e == NULL) {
        atomic_fetch_sub_explicit(&x->queued, sz, memory_order_relaxed);
        if (count) {
            count_drop_all(x, 1 + n / SEG_MAX);
        }
        return NULL;
    }
    e->pooled = pooled;
    e->kind = (uint8_t)k;
    e->dir = 0;
    e->len = (uint32_t)n;
    clock_gettime(CLOCK_REALTIME, &e->ts);
    bool v4a = addr16(&c->client_addr, e->ip[D_CLIENT], &e->port[D_CLIENT]);
    bool v4b = addr16(&c->dst, e->ip[D_UP], &e->port[D_UP]);
    e->v6 = !(v4a && v4b);
    e->seq[0] = c->xf.seq[0];
    e->seq[1] = c->xf.seq[1];
    return e;
}

static struct ev *ev_new(struct dp_export *x, const struct dp_conn *c, enum ev_kind k, size_t n)
{
    return ev_new_in(x, c, k, n, n > 0 ? loop_idx(c) : -1, true);
}

static void push(struct dp_export *x, struct ev *e)
{
    if (list_push(&x->head, e)) {
        uint64_t one = 1;
        ssize_t w = write(x->evfd, &one, sizeof(one)); /* nonblocking; a full counter wakes too */
        (void)w;
    }
}

void dp_export_begin(struct dp_export *x, struct dp_conn *c)
{
    if (x == NULL || c->xf.on || c->xf.excluded) {
        return;
    }
    if (c->no_export) { /* its rule: export = no. No event at all, so no sink sees it */
        c->xf.excluded = true;
        atomic_fetch_add_explicit(&x->excluded, 1, memory_order_relaxed);
        return;
    }
    uint32_t isn[2];
    RAND_bytes((unsigned char *)isn, sizeof(isn));
    c->xf.seq[0] = isn[0];
    c->xf.seq[1] = isn[1];
    c->xf.left[0] = c->xf.left[1] = x->max_bytes ? x->max_bytes : UINT32_MAX;
    c->xf.on = true;
    c->xf.was_on = true;
    struct ev *e = ev_new(x, c, EV_OPEN, 0);
    /* the SYN and SYN-ACK each take one sequence number */
    c->xf.seq[0]++;
    c->xf.seq[1]++;
    if (e != NULL) {
        push(x, e);
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
    struct ev *e = ev_new(x, c, EV_DATA, n);
    c->xf.seq[dir] += (uint32_t)n; /* advanced even when dropped: the reader sees the gap */
    if (e != NULL) {
        e->dir = (uint8_t)dir;
        memcpy(e->data, p, n);
        push(x, e);
    }
}

/*
 * Room to SSL_read side dir's next plaintext into (EV_ROOM bytes, in *cap), or NULL when
 * nothing of it is exported (then read into a buffer of your own). Exactly one
 * dp_export_commit follows, before the loop does anything else with the export.
 */
uint8_t *dp_export_reserve(struct dp_export *x, struct dp_conn *c, int dir, size_t *cap)
{
    int idx = x != NULL ? loop_idx(c) : -1;
    if (idx < 0 || !c->xf.on || c->xf.left[dir] == 0) {
        return NULL;
    }
    struct ev *e = ev_new_in(x, c, EV_DATA, EV_ROOM, idx, false);
    if (e == NULL) { /* the queue is full: dp_export_data counts the drop and the gap */
        return NULL;
    }
    e->dir = (uint8_t)dir;
    x->pool[idx].held = e;
    *cap = EV_ROOM;
    return e->data;
}

/* The reserved room now holds n bytes that were relayed (0: nothing was read): queued, at
 * most what [export] max_bytes_per_conn leaves. */
void dp_export_commit(struct dp_export *x, struct dp_conn *c, int dir, size_t n)
{
    int idx = loop_idx(c);
    struct ev *e = idx >= 0 ? x->pool[idx].held : NULL;
    if (e == NULL) {
        return;
    }
    x->pool[idx].held = NULL;
    if (n > c->xf.left[dir]) {
        n = c->xf.left[dir];
    }
    if (n == 0) { /* back to the loop's own list, and out of the queue's count */
        atomic_fetch_sub_explicit(&x->queued, ev_size(e), memory_order_relaxed);
        e->next = x->pool[idx].free;
        x->pool[idx].free = e;
        x->pool[idx].nfree++;
        return;
    }
    if (c->xf.left[dir] != UINT32_MAX) {
        c->xf.left[dir] -= (uint32_t)n;
    }
    e->len = (uint32_t)n;
    e->seq[0] = c->xf.seq[0]; /* as they are now: ev_new took them before the read */
    e->seq[1] = c->xf.seq[1];
    c->xf.seq[dir] += (uint32_t)n;
    push(x, e);
}

void dp_export_end(struct dp_export *x, struct dp_conn *c, bool reset)
{
    if (x == NULL || !c->xf.on) {
        return;
    }
    c->xf.on = false;
    struct ev *e = ev_new(x, c, reset ? EV_RST : EV_FIN, 0);
    if (e != NULL) {
        push(x, e);
    }
}

/* ---- framing (writer thread) ----------------------------------------------------------- */

/*
 * sum plus the ones' complement sum of p[0..n) taken as big-endian 16-bit words (RFC 1071),
 * not yet folded. The words are added in the machine's order, 8 bytes a step into 64 bits, and
 * the folded result is swapped once at the end: the ones' complement sum does not depend on
 * the byte order but for that swap (RFC 1071 2.B). A byte-wise loop cost the writer more than
 * the copy of the payload.
 */
static uint32_t csum_tail(uint32_t sum, uint64_t acc, const uint8_t *p, size_t i, size_t n);

static uint32_t csum_add(uint32_t sum, const uint8_t *p, size_t n)
{
    uint64_t acc = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        acc += (w & 0xffffffffu) + (w >> 32);
    }
    return csum_tail(sum, acc, p, i, n);
}

/* csum_add of src[0..n) while copying it to dst: one pass over the payload, not two. */
static uint32_t csum_copy(uint32_t sum, uint8_t *dst, const uint8_t *src, size_t n)
{
    uint64_t acc = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, src + i, 8);
        memcpy(dst + i, &w, 8);
        acc += (w & 0xffffffffu) + (w >> 32);
    }
    memcpy(dst + i, src + i, n - i);
    return csum_tail(sum, acc, src, i, n);
}

/* The words of p[i..n) after the 8-byte steps, the fold, and the one swap (see csum_add). */
static uint32_t csum_tail(uint32_t sum, uint64_t acc, const uint8_t *p, size_t i, size_t n)
{
    for (; i + 2 <= n; i += 2) {
        uint16_t w;
        memcpy(&w, p + i, 2);
        acc += w;
    }
    bool le = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;
    if (i < n) { /* the odd last byte is the high byte of a big-endian word */
        acc += le ? p[i] : (uint32_t)p[i] << 8;
    }
    while (acc >> 16) {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    uint16_t s = (uint16_t)acc;
    return sum + (le ? (uint16_t)(s << 8 | s >> 8) : s);
}

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

static void out_flush(struct dp_export *x);
static void out_frame(struct dp_export *x, const struct timespec *ts, uint8_t *rec, size_t len);

/*
 * One segment from side `from` (D_CLIENT or D_UP) with the given flags, sequence and
 * acknowledgement numbers and payload, framed as Ethernet + IPv4/IPv6 + TCP into the next
 * record of x->out and handed to every sink.
 */
static void segment(struct dp_export *x, const struct ev *e, int from, uint8_t flags,
                    uint32_t seq, uint32_t ack, const uint8_t *p, size_t n)
{
    if (x->outlen + REC_MAX > OUT_BUF) {
        out_flush(x);
    }
    uint8_t *rec = x->out + x->outlen, *f = rec + 16;
    int to = from ^ 1;
    static const uint8_t mac[2][6] = {{0x02, 0, 0, 0, 0, 0x01}, {0x02, 0, 0, 0, 0, 0x02}};
    memcpy(f, mac[to], 6);
    memcpy(f + 6, mac[from], 6);
    size_t ipl = e->v6 ? 40 : 20;
    uint8_t *ip = f + 14, *th = ip + ipl;
    uint32_t sum = 0;
    if (e->v6) {
        put16(f + 12, 0x86dd);
        put32(ip, 0x60000000u);
        put16(ip + 4, (uint16_t)(20 + n));
        ip[6] = 6;
        ip[7] = 64;
        memcpy(ip + 8, e->ip[from], 16);
        memcpy(ip + 24, e->ip[to], 16);
        sum = csum_add(sum, ip + 8, 32);
    } else {
        put16(f + 12, 0x0800);
        ip[0] = 0x45;
        ip[1] = 0;
        put16(ip + 2, (uint16_t)(20 + 20 + n));
        put16(ip + 4, x->ip_id++);
        put16(ip + 6, 0x4000);
        ip[8] = 64;
        ip[9] = 6;
        put16(ip + 10, 0);
        memcpy(ip + 12, e->ip[from] + 12, 4);
        memcpy(ip + 16, e->ip[to] + 12, 4);
        put16(ip + 10, csum_fold(csum_add(0, ip, 20)));
        sum = csum_add(sum, ip + 12, 8);
    }
    sum += 6 + (uint32_t)(20 + n); /* pseudo-header: protocol and TCP length */
    put16(th, e->port[from]);
    put16(th + 2, e->port[to]);
    put32(th + 4, seq);
    put32(th + 8, (flags & TH_ACK) ? ack : 0);
    th[12] = 5 << 4;
    th[13] = flags;
    put16(th + 14, 65535);
    put16(th + 16, 0);
    put16(th + 18, 0);
    sum = csum_add(sum, th, 20);
    if (n > 0) {
        sum = csum_copy(sum, th + 20, p, n);
    }
    put16(th + 16, csum_fold(sum));
    out_frame(x, &e->ts, rec, 14 + ipl + 20 + n);
}

static void emit(struct dp_export *x, const struct ev *e)
{
    const int C = D_CLIENT, U = D_UP;
    switch (e->kind) {
    case EV_OPEN: /* e->seq are the initial sequence numbers */
        segment(x, e, C, TH_SYN, e->seq[C], 0, NULL, 0);
        segment(x, e, U, TH_SYN | TH_ACK, e->seq[U], e->seq[C] + 1, NULL, 0);
        segment(x, e, C, TH_ACK, e->seq[C] + 1, e->seq[U] + 1, NULL, 0);
        break;
    case EV_DATA: {
        int d = e->dir;
        uint32_t seq = e->seq[d];
        for (size_t off = 0; off < e->len; off += SEG_MAX) {
            size_t n = e->len - off < SEG_MAX ? e->len - off : SEG_MAX;
            uint8_t fl = TH_ACK | (off + n == e->len ? TH_PSH : 0);
            segment(x, e, d, fl, seq + (uint32_t)off, e->seq[d ^ 1], e->data + off, n);
        }
        /* the receiver acknowledges each record, so no reader sees a window overrun */
        segment(x, e, d ^ 1, TH_ACK, e->seq[d ^ 1], seq + e->len, NULL, 0);
        break;
    }
    case EV_FIN:
        segment(x, e, C, TH_FIN | TH_ACK, e->seq[C], e->seq[U], NULL, 0);
        segment(x, e, U, TH_FIN | TH_ACK, e->seq[U], e->seq[C] + 1, NULL, 0);
        segment(x, e, C, TH_ACK, e->seq[C] + 1, e->seq[U] + 1, NULL, 0);
        break;
    case EV_RST:
        segment(x, e, C, TH_RST | TH_ACK, e->seq[C], e->seq[U], NULL, 0);
        break;
    default:
        break;
    }
}

/* ---- PCAP-over-IP readers -------------------------------------------------------------- */

static ssize_t reader_write(void *cookie, const char *p, size_t n)
{
    struct reader *r = cookie;
    if (r->dead) {
        return (ssize_t)n;
    }
    if (r->off > 0 && r->len + n > READER_BUF) {
        memmove(r->buf, r->buf + r->off, r->len - r->off);
        r->len -= r->off;
        r->off = 0;
    }
    if (r->len + n > READER_BUF) {
        r->dead = true; /* not keeping up: dropped, the proxy never waits for it */
        px_log(PX_LOG_WARN, "export", "PCAP-over-IP reader %s is %u MiB behind: dropped",
               r->name, READER_BUF >> 20);
        return (ssize_t)n;
    }
    memcpy(r->buf + r->len, p, n);
    r->len += n;
    return (ssize_t)n;
}

static void reader_free(struct dp_export *x, struct reader *r)
{
    if (r->d != NULL) {
        pcap_dump_close(r->d);
    } else if (r->fp != NULL) {
        fclose(r->fp);
    }
    if (r->fd >= 0) {
        close(r->fd);
    }
    free(r->buf);
    free(r);
    atomic_fetch_sub_explicit(&x->readers, 1, memory_order_relaxed);
}

static void reader_accept(struct dp_export *x)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    int fd = accept4(x->lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
        return;
    }
    char name[80];
    dp_addr_str(&ss, name, sizeof(name));
    if (x->nrd == READERS_MAX) {
        px_log(PX_LOG_WARN, "export", "PCAP-over-IP: %d readers already, %s refused", READERS_MAX,
               name);
        close(fd);
        return;
    }
    struct reader *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        close(fd);
        return;
    }
    x->rd[x->nrd] = r;
    r->fd = fd;
    snprintf(r->name, sizeof(r->name), "%s", name);
    r->buf = malloc(READER_BUF);
    cookie_io_functions_t io = {.write = reader_write};
    r->fp = r->buf != NULL ? fopencookie(r, "w", io) : NULL;
    if (r->fp != NULL) {
        setvbuf(r->fp, NULL, _IOFBF, 65536);
        r->d = pcap_dump_fopen(x->dead, r->fp); /* writes the file header first */
    }
    atomic_fetch_add_explicit(&x->readers, 1, memory_order_relaxed);
    x->nrd++;
    if (r->d == NULL) {
        r->dead = true;
        return;
    }
    fflush(r->fp);
    px_log(PX_LOG_INFO, "export", "PCAP-over-IP reader %s connected (%d now)", name, x->nrd);
}

/* Sends what each reader has room for; drops readers that are gone or too slow. */
static void readers_flush(struct dp_export *x)
{
    for (int i = 0; i < x->nrd; i++) {
        struct reader *r = x->rd[i];
        if (!r->dead && r->fp != NULL) {
            fflush(r->fp);
        }
        while (!r->dead && r->off < r->len) {
            ssize_t n = send(r->fd, r->buf + r->off, r->len - r->off, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n > 0) {
                r->off += (size_t)n;
            } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
                break;
            } else {
                r->dead = true;
            }
        }
        if (r->off == r->len) {
            r->off = r->len = 0;
        }
        if (r->dead) {
            px_log(PX_LOG_INFO, "export", "PCAP-over-IP reader %s gone", r->name);
            reader_free(x, r);
            x->rd[i] = x->rd[x->nrd - 1];
            x->rd[x->nrd - 1] = NULL;
            x->nrd--;
            i--;
        }
    }
    if (x->on[DP_EXPORT_POIP]) {
        dp_xset_state(x, DP_EXPORT_POIP, "listening, %d reader%s", x->nrd, x->nrd == 1 ? "" : "s");
    }
}

/* At exit: what the readers have not been sent yet, within half a second in all. */
static void readers_last_flush(struct dp_export *x)
{
    uint64_t end = px_now_ns() + 500000000ull;
    for (int i = 0; i < x->nrd; i++) {
        struct reader *r = x->rd[i];
        if (r->dead || r->fp == NULL) {
            continue;
        }
        pcap_dump_close(r->d); /* flushes the stream into r->buf */
        r->d = NULL;
        r->fp = NULL;
        while (!r->dead && r->off < r->len && px_now_ns() < end) {
            struct pollfd pf = {.fd = r->fd, .events = POLLOUT};
            if (poll(&pf, 1, 50) <= 0) {
                continue;
            }
            ssize_t n = send(r->fd, r->buf + r->off, r->len - r->off, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n > 0) {
                r->off += (size_t)n;
            } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
                r->dead = true;
            }
        }
    }
}

/* ---- every sink -------------------------------------------------------------------------- */

/*
 * The frame at rec + 16 (len bytes) becomes the record at the end of x->out: its header in
 * libpcap's file layout (struct pcap_sf_pkthdr: 32-bit seconds, microseconds, captured and
 * original length, in the machine's byte order like the file header pcap_dump_fopen wrote);
 * the mirror gets the frame at once.
 */
static void out_frame(struct dp_export *x, const struct timespec *ts, uint8_t *rec, size_t len)
{
    uint32_t h[4] = {(uint32_t)ts->tv_sec, (uint32_t)(ts->tv_nsec / 1000), (uint32_t)len,
                     (uint32_t)len};
    memcpy(rec, h, sizeof(h));
    x->outlen += 16 + len;
    x->out_pkts++;
    x->out_bytes += len;
    if (x->mir != NULL) {
        int s = DP_EXPORT_MIRROR;
        if (pcap_inject(x->mir, rec + 16, len) == (int)len) {
            atomic_fetch_add_explicit(&x->packets[s], 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&x->bytes[s], len, memory_order_relaxed);
        } else {
            atomic_fetch_add_explicit(&x->dropped[s], 1, memory_order_relaxed);
        }
    }
}

static void count_sent(struct dp_export *x, int s, bool ok)
{
    if (ok) {
        atomic_fetch_add_explicit(&x->packets[s], x->out_pkts, memory_order_relaxed);
        atomic_fetch_add_explicit(&x->bytes[s], x->out_bytes, memory_order_relaxed);
    } else {
        atomic_fetch_add_explicit(&x->dropped[s], x->out_pkts, memory_order_relaxed);
    }
}

/* The new records in x->out into every reader's buffer and to the file. */
static void out_flush(struct dp_export *x)
{
    if (x->outlen == x->out_base) {
        return;
    }
    const uint8_t *nw = x->out + x->out_base;
    size_t nlen = x->outlen - x->out_base;
    for (int i = 0; i < x->nrd; i++) {
        struct reader *r = x->rd[i];
        if (!r->dead) {
            reader_write(r, (const char *)nw, nlen);
        }
        count_sent(x, DP_EXPORT_POIP, !r->dead);
    }
    if (x->on[DP_EXPORT_FILE]) {
        int r = x->ffd >= 0 ? dp_xfile_write(x) : -EBADF;
        count_sent(x, DP_EXPORT_FILE, r == 0);
        if (r != 0 && x->ffd >= 0) {
            dp_xfile_fail(x, -r);
        }
    }
    if (x->ffd < 0) {
        x->outlen = x->out_base = 0;
    }
    x->out_pkts = x->out_bytes = 0;
}

/* Takes every queued event, oldest first, and writes it out. Returns how many. */
static size_t drain(struct dp_export *x)
{
    struct ev *e = atomic_exchange_explicit(&x->head, NULL, memory_order_acquire), *rev = NULL;
    while (e != NULL) { /* the list is newest first */
        struct ev *n = e->next;
        e->next = rev;
        rev = e;
        e = n;
    }
    size_t k = 0, unsent = 0;
    while (rev != NULL) {
        struct ev *n = rev->next;
        emit(x, rev);
        unsent += rev->len;
        if (x->nrd > 0 && unsent >= READER_STEP) {
            /* a batch can hold more than READER_BUF (a bulk transfer while the writer was
             * busy): a reader that keeps up must not be dropped for the size of one batch */
            out_flush(x);
            readers_flush(x);
            unsent = 0;
        }
        atomic_fetch_sub_explicit(&x->queued, ev_size(rev), memory_order_relaxed);
        ev_put(x, rev);
        rev = n;
        k++;
    }
    out_flush(x);
    return k;
}

static void *writer_main(void *arg)
{
    struct dp_export *x = arg;
    if (x->on[DP_EXPORT_FILE]) {
        dp_xfile_open(x, time(NULL)); /* an error here is logged and retried, not fatal */
    }
    for (;;) {
        struct pollfd pf[2 + READERS_MAX];
        int n = 0;
        pf[n++] = (struct pollfd){.fd = x->evfd, .events = POLLIN};
        if (x->lfd >= 0) {
            pf[n++] = (struct pollfd){.fd = x->lfd, .events = POLLIN};
        }
        int first_reader = n;
        for (int i = 0; i < x->nrd; i++) {
            struct reader *r = x->rd[i];
            pf[n++] = (struct pollfd){.fd = r->fd,
                                      .events = (short)(POLLIN | (r->off < r->len ? POLLOUT : 0))};
        }
        int pr = poll(pf, (nfds_t)n, 1000);
        if (pr > 0 && (pf[0].revents & POLLIN)) {
            uint64_t v;
            ssize_t rd = read(x->evfd, &v, sizeof(v));
            (void)rd;
        }
        for (int i = first_reader; pr > 0 && i < n; i++) {
            struct reader *r = x->rd[i - first_reader];
            if (pf[i].revents & (POLLIN | POLLHUP | POLLERR)) {
                char junk[512]; /* readers send nothing; EOF or an error means gone */
                ssize_t got = recv(r->fd, junk, sizeof(junk), MSG_DONTWAIT);
                if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR)) {
                    r->dead = true;
                }
            }
        }
        size_t k = drain(x);
        readers_flush(x);
        if (x->lfd >= 0 && pr > 0 && (pf[1].revents & POLLIN)) {
            reader_accept(x);
            readers_flush(x);
        }
        dp_xfile_tick(x, time(NULL));
        if (atomic_load_explicit(&x->stop, memory_order_acquire) &&
            atomic_load_explicit(&x->head, memory_order_acquire) == NULL) {
            break;
        }
        if (k > 0 && !atomic_load_explicit(&x->stop, memory_order_relaxed)) {
            /* let the next batch gather: one wake-up (eventfd write, context switch, drain,
             * flush) per BATCH_NS at most instead of one per relayed record */
            struct timespec ts = {.tv_sec = 0, .tv_nsec = BATCH_NS};
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

/* ---- set-up ------------------------------------------------------------------------------ */

static int listen_poip(struct dp_export *x, const char *hp, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    int port;
    if (dp_addr_parse(hp, &ss, &sl, &port) != 0) {
        snprintf(err, errlen, "[export] pcap_listen: '%s' is not an IP address and port", hp);
        return PX_E_CONFIG;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, (struct sockaddr *)&ss, sl) != 0 || listen(fd, 16) != 0) {
        int e = errno;
        if (fd >= 0) {
            close(fd);
        }
        snprintf(err, errlen, "[export] pcap_listen: cannot listen on %s: %s", hp, strerror(e));
        return -e;
    }
    x->lfd = fd;
    return 0;
}

static int open_mirror(struct dp_export *x, const char *ifname, char *err, size_t errlen)
{
    char eb[PCAP_ERRBUF_SIZE] = "";
    pcap_t *p = pcap_create(ifname, eb);
    int r = p != NULL ? pcap_activate(p) : -1;
    if (r < 0) {
        snprintf(err, errlen, "[export] mirror_if: cannot open %s: %s", ifname,
                 p != NULL ? pcap_geterr(p) : eb);
        if (p != NULL) {
            pcap_close(p);
        }
        return PX_E_CONFIG;
    }
    x->mir = p;
    return 0;
}

int dp_export_new(const struct px_cfg *cfg, struct dp_export **out, char *err, size_t errlen)
{
    *out = NULL;
    if (cfg->export_pcap[0] == '\0' && cfg->export_listen[0] == '\0' &&
        cfg->export_mirror_if[0] == '\0') {
        return 0;
    }
    struct dp_export *x = calloc(1, sizeof(*x));
    if (x == NULL) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    pthread_mutex_init(&x->state_lock, NULL);
    x->lfd = -1;
    x->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    x->cap = (size_t)cfg->export_queue_mb << 20;
    x->max_bytes = (uint32_t)cfg->export_max_bytes;
    x->ffd = x->ffd_tail = -1;
    x->dead = pcap_open_dead(DLT_EN10MB, 65535);
    void *buf = NULL;
    x->out = posix_memalign(&buf, DIO_ALIGN, OUT_BUF) == 0 ? buf : NULL;
    int r = x->evfd >= 0 && x->dead != NULL && x->out != NULL ? 0 : -ENOMEM;
    if (r == 0) {
        r = dp_xfile_header(x);
    }
    if (r == 0 && cfg->export_pcap[0] != '\0') {
        snprintf(x->pattern, sizeof(x->pattern), "%s", cfg->export_pcap);
        x->rotate_bytes = (uint64_t)cfg->export_rotate_mb << 20;
        x->rotate_s = cfg->export_rotate_s;
        x->keep = cfg->export_keep;
        x->on[DP_EXPORT_FILE] = true;
        dp_xset_state(x, DP_EXPORT_FILE, "starting");
    }
    if (r == 0 && cfg->export_listen[0] != '\0') {
        r = listen_poip(x, cfg->export_listen, err, errlen);
        x->on[DP_EXPORT_POIP] = r == 0;
        dp_xset_state(x, DP_EXPORT_POIP, "listening on %s, 0 readers", cfg->export_listen);
    }
    if (r == 0 && cfg->export_mirror_if[0] != '\0') {
        r = open_mirror(x, cfg->export_mirror_if, err, errlen);
        x->on[DP_EXPORT_MIRROR] = r == 0;
        dp_xset_state(x, DP_EXPORT_MIRROR, "copying to %s", cfg->export_mirror_if);
    }
    if (r != 0) {
        if (err[0] == '\0') {
            snprintf(err, errlen, "out of memory");
        }
        dp_export_free(x);
        return r;
    }
    px_log(PX_LOG_WARN, "export", "decrypted traffic is exported (%s%s%s%s%s): whoever can read it "
           "reads every intercepted secret", cfg->export_pcap[0] ? "pcap files " : "",
           cfg->export_pcap, cfg->export_listen[0] ? ", PCAP-over-IP " : "", cfg->export_listen,
           cfg->export_mirror_if[0] ? ", mirror" : "");
    *out = x;
    return 0;
}

/*
 * Starts the writer thread, which creates the first pcap file: called once the process runs
 * as [run] user, so that every file (the first one too) belongs to that user, and a directory
 * that user cannot write is the same logged, retried error at start as at a rotation.
 */
int dp_export_start(struct dp_export *x)
{
    if (x == NULL || x->th_ok) {
        return 0;
    }
    int r = pthread_create(&x->th, NULL, writer_main, x);
    if (r != 0) {
        px_log(PX_LOG_ERROR, "export", "cannot start the export thread: %s", strerror(r));
        return -r;
    }
    x->th_ok = true;
    return 0;
}

void dp_export_free(struct dp_export *x)
{
    if (x == NULL) {
        return;
    }
    if (x->th_ok) {
        atomic_store_explicit(&x->stop, true, memory_order_release);
        uint64_t one = 1;
        ssize_t w = write(x->evfd, &one, sizeof(one));
        (void)w;
        pthread_join(x->th, NULL);
    }
    drain(x); /* nothing is pushed any more: free what is left */
    dp_xfile_close(x);
    readers_last_flush(x);
    while (x->nrd > 0) {
        reader_free(x, x->rd[--x->nrd]);
    }
    if (x->lfd >= 0) {
        close(x->lfd);
    }
    if (x->mir != NULL) {
        pcap_close(x->mir);
    }
    if (x->dead != NULL) {
        pcap_close(x->dead);
    }
    if (x->evfd >= 0) {
        close(x->evfd);
    }
    for (int i = 0; i < POOL_LOOPS; i++) { /* the loops are gone: every pooled event */
        struct ev_pool *p = &x->pool[i];
        struct ev *e = atomic_exchange_explicit(&p->back, NULL, memory_order_acquire);
        while (e != NULL) {
            struct ev *n = e->next;
            free(e);
            e = n;
        }
        for (e = p->free; e != NULL; e = p->free) {
            p->free = e->next;
            free(e);
        }
        free(p->held);
    }
    pthread_mutex_destroy(&x->state_lock);
    free(x->out);
    free(x);
}

void dp_export_stats(struct dp_export *x, struct dp_export_stats *o)
{
    memset(o, 0, sizeof(*o));
    if (x == NULL) {
        return;
    }
    pthread_mutex_lock(&x->state_lock);
    for (int s = 0; s < DP_EXPORT_SINKS; s++) {
        o->on[s] = x->on[s];
        o->packets[s] = atomic_load_explicit(&x->packets[s], memory_order_relaxed);
        o->bytes[s] = atomic_load_explicit(&x->bytes[s], memory_order_relaxed);
        o->dropped[s] = atomic_load_explicit(&x->dropped[s], memory_order_relaxed);
        snprintf(o->state[s], sizeof(o->state[s]), "%s", x->state[s]);
    }
    pthread_mutex_unlock(&x->state_lock);
    o->readers = (uint64_t)atomic_load_explicit(&x->readers, memory_order_relaxed);
    o->excluded = atomic_load_explicit(&x->excluded, memory_order_relaxed);
}
