/* SPDX-License-Identifier: MIT */
/*
 * dp_xfile.c - the export's rolling pcap file ([export] pcap, pcap_rotate_mb, pcap_rotate_s;
 * pcap_keep is dp_xprune.c's, kicked at each new file): created 0600 with O_EXCL (a suffix
 * when the name exists), written with O_DIRECT where the file system allows it (copying gigabytes into the page cache cost more CPU than the
 * whole relay: perf put 52 % of the exporting proxy's time in copy_folio_from_iter_atomic on
 * this machine's VM). A loop's chunk of records that starts where the file is, modulo
 * DIO_ALIGN, is written from the chunk itself: the file's partial last block is copied in
 * front of its records, and its whole blocks go with those of the batch's other such chunks in
 * one pwritev, so the writer thread never reads the payload. Any other chunk is copied into
 * x->out (and its loop told where its next chunk should start). The partial last block stays
 * in x->out and is also written through a second, buffered descriptor at most every TAIL_MS
 * (and at rotation and exit), so the file is complete up to a fraction of a second, and the
 * next direct write covers it again. Without O_DIRECT every write is whole and buffered.
 * The file header is libpcap's (pcap_dump_fopen into a memory stream, once).
 * Threads: the writer thread only. Errors: a failed create or write is logged once, the
 * file's packets are counted as dropped, and a new file is tried every RETRY_S.
 */
#include "dp_export_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- the rolling file ------------------------------------------------------------------ */

/* iov[0, n) at file offset off, all of it, or -errno (iov is used up). */
static int writev_at(int fd, struct iovec *iov, int n, uint64_t off)
{
    while (n > 0) {
        ssize_t w = pwritev(fd, iov, n, (off_t)off);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return w < 0 ? -errno : -EIO;
        }
        off += (uint64_t)w;
        while (n > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

/* n bytes at file offset off, all of them, or -errno. */
static int write_at(int fd, const uint8_t *p, size_t n, uint64_t off)
{
    struct iovec v = {.iov_base = (void *)p, .iov_len = n};
    return writev_at(fd, &v, 1, off);
}

/* Bytes reached the file: a reported error is over. */
static void written(struct dp_export *x)
{
    if (x->freported) {
        px_log(PX_LOG_INFO, "export", "pcap file %s: writing again", x->path);
        x->freported = false;
    }
}

/* The chunks of pend back to their loops (written or not). */
static void pend_release(struct dp_export *x)
{
    for (int i = 0; i < x->npend; i++) {
        dp_xchunk_put(x, x->pend[i]);
    }
    x->npend = 0;
    x->pend_sum = 0;
}

/* The whole blocks of pend, in one pwritev; the partial block after them into x->out. */
static int pend_write(struct dp_export *x)
{
    if (x->npend == 0) {
        return 0;
    }
    struct iovec iov[PEND_MAX];
    int n = 0;
    for (int i = 0; i < x->npend; i++) {
        if (x->pend_a[i] > 0) {
            iov[n++] = (struct iovec){.iov_base = x->pend[i]->mem, .iov_len = x->pend_a[i]};
        }
    }
    int r = n > 0 ? writev_at(x->ffd, iov, n, x->foff) : 0;
    if (r == 0) {
        if (n > 0) {
            written(x);
        }
        const struct xchunk *k = x->pend[x->npend - 1];
        uint32_t a = x->pend_a[x->npend - 1];
        x->foff += x->pend_sum;
        x->outlen = k->start + k->len - a;
        memcpy(x->out, k->mem + a, x->outlen);
    }
    pend_release(x);
    return r;
}

/* The whole blocks of x->out (everything when the file is buffered): x->out keeps the
 * partial block. */
static int out_blocks(struct dp_export *x)
{
    size_t n = x->outlen, a = x->ffd_tail >= 0 ? n & ~(size_t)(DIO_ALIGN - 1) : n;
    if (a > 0) {
        int r = write_at(x->ffd, x->out, a, x->foff);
        if (r != 0) {
            return r;
        }
        written(x);
        x->foff += a;
        memmove(x->out, x->out + a, n - a);
        x->outlen = n - a;
    }
    return 0;
}

/* The partial block of a direct file through the buffered descriptor (the whole rest for a
 * buffered one), so that a reader of the file sees every record written so far. */
static int file_tail(struct dp_export *x, uint64_t now_ns)
{
    int r = 0;
    if (x->tail_dirty && x->outlen > 0) {
        r = write_at(x->ffd_tail >= 0 ? x->ffd_tail : x->ffd, x->out, x->outlen, x->foff);
        if (r == 0) {
            written(x);
        }
    }
    x->tail_dirty = false;
    x->tail_ns = now_ns;
    return r;
}

void dp_xfile_close(struct dp_export *x)
{
    pend_release(x); /* empty, but after a failed write: dp_xfile_flush came first */
    if (x->ffd >= 0) {
        int r = file_tail(x, px_now_ns());
        if (r != 0) {
            px_log(PX_LOG_ERROR, "export", "pcap file %s: writing its last records failed: %s",
                   x->path, strerror(-r));
        }
        close(x->ffd);
    }
    if (x->ffd_tail >= 0) {
        close(x->ffd_tail);
    }
    x->ffd = x->ffd_tail = -1;
    x->outlen = 0;
    x->foff = 0;
}

/* A write error: the file is closed, its packets from now on are dropped and counted, and
 * a new file is tried every RETRY_S. Logged once until bytes reach a file again (a full disk
 * fails every retry's first write). */
void dp_xfile_fail(struct dp_export *x, int err)
{
    if (!x->freported) {
        px_log(PX_LOG_ERROR, "export", "pcap file %s: write failed: %s; decrypted packets are "
               "dropped and counted, retrying every %d s", x->path, strerror(err), RETRY_S);
        x->freported = true;
    }
    dp_xset_state(x, DP_EXPORT_FILE, "error: writing %s: %s", x->path, strerror(err));
    atomic_fetch_add_explicit(&x->dropped[DP_EXPORT_FILE], x->fpkts, memory_order_relaxed);
    x->fpkts = x->fbytes = 0;
    x->tail_dirty = false;
    dp_xfile_close(x);
    x->ferr = true;
    x->fretry = time(NULL) + RETRY_S;
}

/*
 * The records in x->out to the file: the whole blocks with one direct write (everything with
 * a buffered one); the partial block moves to the front of x->out and is written on its own
 * at most every TAIL_MS. Returns 0 or -errno.
 */
int dp_xfile_write(struct dp_export *x)
{
    int r = out_blocks(x);
    if (r != 0) {
        return r;
    }
    x->tail_dirty = x->outlen > 0;
    uint64_t now = px_now_ns();
    if (x->tail_dirty && now - x->tail_ns >= TAIL_MS * 1000000ull) {
        return file_tail(x, now);
    }
    return 0;
}

/*
 * k's records after everything before them: kept in pend to be written from k itself when k
 * starts where they fall in the file's block (a direct file), else copied into x->out and k
 * goes back to its loop at once, which is told where its next chunk should start. Counted as
 * sent or dropped when written (dp_xfile_flush, dp_xfile_fail).
 */
void dp_xfile_chunk(struct dp_export *x, struct xchunk *k)
{
    x->fpkts += k->pkts;
    x->fbytes += k->bytes;
    const uint8_t *tail = x->out; /* the partial block before k's records */
    size_t t = x->outlen;
    if (x->npend > 0) {
        const struct xchunk *last = x->pend[x->npend - 1];
        tail = last->mem + x->pend_a[x->npend - 1];
        t = last->start + last->len - x->pend_a[x->npend - 1];
    }
    uint32_t at = (uint32_t)((x->foff + x->pend_sum + t) & (DIO_ALIGN - 1));
    int r = 0;
    if (x->ffd_tail >= 0 && k->start == at) {
        if (x->npend == 0 && x->outlen >= DIO_ALIGN) {
            r = out_blocks(x); /* x->out keeps less than a block: at bytes */
            t = x->outlen;
        }
        if (r == 0) {
            memcpy(k->mem, tail, t); /* t == at == k->start: foff and pend_sum are aligned */
            uint32_t a = (uint32_t)((t + k->len) & ~(size_t)(DIO_ALIGN - 1));
            x->pend[x->npend] = k;
            x->pend_a[x->npend++] = a;
            x->pend_sum += a;
            x->outlen = 0;
            x->direct_chunks++;
            if (x->npend == PEND_MAX) {
                r = pend_write(x);
            }
        } else {
            dp_xchunk_put(x, k);
        }
    } else {
        if (x->ffd_tail >= 0) {
            atomic_store_explicit(&x->lp[k->loop].shift, (uint32_t)(at - k->pos) & (DIO_ALIGN - 1),
                                  memory_order_relaxed);
        }
        r = pend_write(x);
        if (r == 0 && x->outlen + k->len > OUT_BUF) {
            r = out_blocks(x);
        }
        if (r == 0) {
            memcpy(x->out + x->outlen, k->mem + k->start, k->len);
            x->outlen += k->len;
        }
        x->copied_chunks++;
        dp_xchunk_put(x, k);
    }
    if (r != 0) {
        dp_xfile_fail(x, -r);
    }
}

/* At the end of a batch: what dp_xfile_chunk kept, written, and the batch's packets counted. */
void dp_xfile_flush(struct dp_export *x)
{
    if (x->ffd < 0) {
        return;
    }
    int r = pend_write(x);
    if (r == 0) {
        r = dp_xfile_write(x);
    }
    if (r != 0) {
        dp_xfile_fail(x, -r);
        return;
    }
    atomic_fetch_add_explicit(&x->packets[DP_EXPORT_FILE], x->fpkts, memory_order_relaxed);
    atomic_fetch_add_explicit(&x->bytes[DP_EXPORT_FILE], x->fbytes, memory_order_relaxed);
    x->fpkts = x->fbytes = 0;
}

void dp_xfile_open(struct dp_export *x, time_t now)
{
    char name[512];
    struct tm tm;
    localtime_r(&now, &tm);
    if (strftime(name, sizeof(name), x->pattern, &tm) == 0) {
        snprintf(name, sizeof(name), "%s", x->pattern);
    }
    int fd = -1, tfd = -1;
    for (int i = 0; i < 100 && fd < 0; i++) {
        if (i == 0) {
            snprintf(x->path, sizeof(x->path), "%s", name);
        } else {
            snprintf(x->path, sizeof(x->path), "%s.%d", name, i); /* same second: a suffix */
        }
        fd = open(x->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0 && errno != EEXIST) {
            break;
        }
    }
    /* direct where the file system allows it, with a buffered twin for the partial block */
    if (fd >= 0 && fcntl(fd, F_SETFL, O_DIRECT) == 0) {
        tfd = open(x->path, O_WRONLY | O_CLOEXEC);
        if (tfd < 0) {
            int e = errno;
            close(fd);
            fd = -1;
            errno = e;
        }
    }
    if (fd < 0) {
        int e = errno;
        if (!x->freported) {
            px_log(PX_LOG_ERROR, "export", "cannot create the pcap file %s: %s; decrypted "
                   "packets for it are dropped and counted, retrying every %d s",
                   x->path, strerror(e), RETRY_S);
            x->freported = true;
        }
        dp_xset_state(x, DP_EXPORT_FILE, "error: cannot create %s: %s", x->path, strerror(e));
        x->ferr = true;
        x->fretry = now + RETRY_S;
        return;
    }
    x->ffd = fd;
    x->ffd_tail = tfd;
    x->foff = 0;
    memcpy(x->out, x->fhdr, x->fhdr_len); /* x->out is empty: file_close or the start */
    x->outlen = x->fhdr_len;
    x->tail_dirty = true;
    x->tail_ns = 0; /* the header goes out with the first batch, or at the next tick */
    x->fopened = now;
    x->ferr = false; /* "writing again" is logged when bytes reach it (written) */
    dp_xset_state(x, DP_EXPORT_FILE, "writing %s%s", x->path, tfd >= 0 ? " (direct I/O)" : "");
    dp_xprune_kick(x, x->path); /* pcap_keep: another thread deletes the oldest */
}

/* After a batch, and at least once a second: the partial block, rotation by size or age,
 * the retry of a file that could not be written. */
void dp_xfile_tick(struct dp_export *x, time_t now)
{
    if (!x->on[DP_EXPORT_FILE]) {
        return;
    }
    uint64_t ns = px_now_ns();
    if (x->ffd >= 0 && x->tail_dirty && ns - x->tail_ns >= TAIL_MS * 1000000ull) {
        int r = file_tail(x, ns);
        if (r != 0) {
            dp_xfile_fail(x, -r);
            return;
        }
    }
    if (x->ffd >= 0 && x->ffd_tail >= 0 && x->direct_chunks + x->copied_chunks != x->state_n) {
        x->state_n = x->direct_chunks + x->copied_chunks; /* a lock and a printf per batch */
        dp_xset_state(x, DP_EXPORT_FILE, "writing %s (direct I/O); %llu of %llu chunks written in place",
                      x->path, (unsigned long long)x->direct_chunks,
                      (unsigned long long)(x->direct_chunks + x->copied_chunks));
    }
    if (x->ffd >= 0 && (x->foff + x->outlen >= x->rotate_bytes || now - x->fopened >= x->rotate_s)) {
        dp_xfile_close(x);
        dp_xfile_open(x, now);
    } else if (x->ffd < 0 && now >= x->fretry) {
        dp_xfile_open(x, now);
    }
}

/* The pcap file header as libpcap writes it (pcap_dump_fopen into a memory stream): the file
 * itself is written from x->out, not through stdio. */
int dp_xfile_header(struct dp_export *x)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    pcap_dumper_t *d = m != NULL ? pcap_dump_fopen(x->dead, m) : NULL;
    if (d != NULL) {
        pcap_dump_close(d); /* closes m: buf and len are final */
    } else if (m != NULL) {
        fclose(m);
    }
    int r = d != NULL && len > 0 && len <= sizeof(x->fhdr) ? 0 : -ENOMEM;
    if (r == 0) {
        memcpy(x->fhdr, buf, len);
        x->fhdr_len = len;
    }
    free(buf);
    return r;
}
