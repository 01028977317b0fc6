/* SPDX-License-Identifier: MIT */
/*
 * dp_export.c - decrypted traffic export: every intercepted connection as its own TCP
 * conversation in pcap form (rolling files, PCAP-over-IP readers, a live copy on an interface).
 * Owns the export queue, the writer thread and the three sinks. The loops frame the records
 * themselves, while the plaintext is in their cache (dp_xframe.c), and hand the writer chunks
 * of finished pcap records through a lock-free MPSC list; only the writer thread touches
 * files, sockets and libpcap. It appends each chunk to every PCAP-over-IP reader's buffer (the
 * stream is the file format), injects each of its frames on the mirror (pcap_inject), gives it
 * to the rolling file (dp_xfile.c: written from the chunk itself with O_DIRECT where it can),
 * and hands it back to its loop. libpcap makes each stream's file header (pcap_dump_fopen).
 * Invariants: chunks in the queue <= [export] queue_mb; a loop never waits: a full queue drops
 * records and counts them for every sink; a reader that falls 12 MiB behind is dropped with a
 * reset (what its socket holds is discarded); a file that cannot be written is reported once,
 * then retried every 10 s while packets are counted as dropped.
 * Not here: the framing (dp_xframe.c), the file sink (dp_xfile.c); which connections are
 * exported (dp_conn.c calls begin for S_RELAY only, so bypassed, spliced and failed-open
 * bytes, which are still encrypted, never come here; the policy marks a connection whose rule
 * says export = no, and begin only counts it).
 */
#include "dp_export_int.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

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

void dp_xcount_drop(struct dp_export *x, uint64_t n)
{
    for (int s = 0; s < DP_EXPORT_SINKS; s++) {
        if (x->on[s]) {
            atomic_fetch_add_explicit(&x->dropped[s], n, memory_order_relaxed);
        }
    }
}

/* The writer is done with k: back to its loop (to the spare list when the loop has not taken
 * the CHUNK_KEEP given back before: an idle loop holds no more), out of the queue's count. */
void dp_xchunk_put(struct dp_export *x, struct xchunk *k)
{
    atomic_fetch_sub_explicit(&x->queued, CHUNK_BYTES, memory_order_relaxed);
    struct xloop *l = &x->lp[k->loop];
    if (atomic_fetch_add_explicit(&l->nback, 1, memory_order_relaxed) < CHUNK_KEEP) {
        xlist_push(&l->back, k);
    } else {
        xlist_push(&x->spare, k);
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
        r->dead = r->behind = true; /* not keeping up: dropped, the proxy never waits for it */
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
        if (r->behind) {
            /* A reset, not a FIN after what its socket holds: up to the kernel's send buffer
             * (4 MiB) that a reader with a small window would take minutes to drain. */
            struct linger lg = {.l_onoff = 1, .l_linger = 0};
            (void)setsockopt(r->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        }
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

static void count_sent(struct dp_export *x, int s, const struct xchunk *k, bool ok)
{
    if (ok) {
        atomic_fetch_add_explicit(&x->packets[s], k->pkts, memory_order_relaxed);
        atomic_fetch_add_explicit(&x->bytes[s], k->bytes, memory_order_relaxed);
    } else {
        atomic_fetch_add_explicit(&x->dropped[s], k->pkts, memory_order_relaxed);
    }
}

/* Each frame of k on the mirror interface. */
static void mirror_chunk(struct dp_export *x, const struct xchunk *k)
{
    const int s = DP_EXPORT_MIRROR;
    uint64_t ok = 0, okb = 0, bad = 0;
    for (const uint8_t *p = k->mem + k->start, *end = p + k->len; p + 16 <= end;) {
        uint32_t h[4];
        memcpy(h, p, sizeof(h));
        if (pcap_inject(x->mir, p + 16, h[2]) == (int)h[2]) {
            ok++;
            okb += h[2];
        } else {
            bad++;
        }
        p += 16 + h[2];
    }
    atomic_fetch_add_explicit(&x->packets[s], ok, memory_order_relaxed);
    atomic_fetch_add_explicit(&x->bytes[s], okb, memory_order_relaxed);
    atomic_fetch_add_explicit(&x->dropped[s], bad, memory_order_relaxed);
}

/* k's records to every sink; the file may keep k until dp_xfile_flush, else it goes back. */
static void sink_chunk(struct dp_export *x, struct xchunk *k)
{
    const uint8_t *p = k->mem + k->start;
    for (int i = 0; i < x->nrd; i++) {
        struct reader *r = x->rd[i];
        if (!r->dead) {
            reader_write(r, (const char *)p, k->len);
        }
        count_sent(x, DP_EXPORT_POIP, k, !r->dead);
    }
    if (x->mir != NULL) {
        mirror_chunk(x, k);
    }
    if (x->on[DP_EXPORT_FILE] && x->ffd >= 0) {
        dp_xfile_chunk(x, k); /* counted when written */
    } else {
        if (x->on[DP_EXPORT_FILE]) {
            count_sent(x, DP_EXPORT_FILE, k, false);
        }
        dp_xchunk_put(x, k);
    }
}

/* Takes every queued chunk, oldest first, and writes it out. Returns their record bytes. */
static size_t drain(struct dp_export *x)
{
    struct xchunk *rev = xlist_take(&x->head);
    size_t cnt = 0, unsent = 0;
    while (rev != NULL) {
        struct xchunk *n = rev->next;
        unsent += rev->len;
        cnt += rev->len;
        sink_chunk(x, rev);
        if (x->nrd > 0 && unsent >= READER_STEP) {
            /* a batch can hold more than READER_BUF (a bulk transfer while the writer was
             * busy): a reader that keeps up must not be dropped for the size of one batch */
            readers_flush(x);
            unsent = 0;
        }
        rev = n;
    }
    dp_xfile_flush(x);
    return cnt;
}

/*
 * The writer's pause after a batch of `bytes`, `since` ns after the previous one began: the
 * loops' pushes meanwhile find the list non-empty and signal nothing, so a busy export costs
 * one wake-up, one drain and one file write per pause instead of one per relayed record.
 * BATCH_NS, or less when a quarter of the queue would fill in that time at the last batch's
 * rate (a small queue_mb must not fill while the writer sleeps).
 */
static long batch_pause_ns(const struct dp_export *x, size_t bytes, uint64_t since)
{
    if (bytes == 0 || since == 0) {
        return BATCH_NS;
    }
    double fill = (double)(x->cap / 4) * (double)since / (double)bytes;
    return fill < (double)BATCH_NS ? (long)fill : BATCH_NS;
}

static void *writer_main(void *arg)
{
    struct dp_export *x = arg;
    if (x->on[DP_EXPORT_FILE]) {
        dp_xfile_open(x, time(NULL)); /* an error here is logged and retried, not fatal */
    }
    dp_xpool_fill(x);
    uint64_t last_t = 0; /* when the last batch with records began (0: none just before) */
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
        uint64_t t = px_now_ns();
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
            struct timespec ts = {.tv_sec = 0,
                                  .tv_nsec = batch_pause_ns(x, k, last_t ? t - last_t : 0)};
            nanosleep(&ts, NULL);
        }
        last_t = k > 0 ? t : 0;
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
    void *mem = NULL; /* struct xloop is cache-line aligned */
    struct dp_export *x = posix_memalign(&mem, 64, sizeof(*x)) == 0 ? mem : NULL;
    if (x != NULL) {
        memset(x, 0, sizeof(*x));
    }
    if (x == NULL) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    pthread_mutex_init(&x->state_lock, NULL);
    x->lfd = -1;
    x->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    x->cap = (size_t)cfg->export_queue_mb << 20;
    x->slabs_cap = (unsigned)(x->cap / SLAB_BYTES) + 1 +
                   POOL_LOOPS * (2 * CHUNK_KEEP / SLAB_CHUNKS + 1); /* what slab_new allows */
    x->slab = calloc(x->slabs_cap, sizeof(*x->slab));
    x->max_bytes = (uint32_t)cfg->export_max_bytes;
    x->ffd = x->ffd_tail = -1;
    x->dead = pcap_open_dead(DLT_EN10MB, 65535);
    void *buf = NULL;
    x->out = posix_memalign(&buf, DIO_ALIGN, OUT_BUF) == 0 ? buf : NULL;
    int r = x->evfd >= 0 && x->dead != NULL && x->out != NULL && x->slab != NULL ? 0 : -ENOMEM;
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
    int r = dp_xprune_start(x); /* first: the writer kicks it when it opens its first file */
    if (r != 0) {
        px_log(PX_LOG_WARN, "export", "cannot start the pcap_keep thread: %s; the writer deletes "
               "old files itself", strerror(-r));
    }
    r = pthread_create(&x->th, NULL, writer_main, x);
    if (r != 0) {
        px_log(PX_LOG_ERROR, "export", "cannot start the export thread: %s", strerror(r));
        dp_xprune_stop(x);
        return -r;
    }
    pthread_setname_np(x->th, "tlsmint-export"); /* for perf and top; a failure changes nothing */
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
    dp_xprune_stop(x); /* the writer is gone: nothing kicks it any more */
    dp_xframe_flush_all(x); /* the loops are gone: what they framed last */
    drain(x); /* nothing is pushed any more: write what is left */
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
    dp_xpool_free(x); /* every chunk is given back by now */
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
