/* SPDX-License-Identifier: MIT */
/*
 * dp_export_int.h - what the export's files share: the loops' record chunks, the readers, the
 * export itself (struct dp_export). dp_xframe.c: the loop side (the TCP/IP framing into the
 * loop's chunks); dp_export.c: the writer thread, the readers and the mirror; dp_xfile.c: the
 * rolling pcap file. Nothing outside them includes this.
 */
#ifndef DP_EXPORT_INT_H
#define DP_EXPORT_INT_H

#include "dp_int.h"
#include "px_mpsc.h"

#include <pcap/pcap.h>
#include <stdio.h>
#include <sys/uio.h>
#include <time.h>

#define READERS_MAX 16
#define READER_BUF (12u << 20) /* a reader this far behind is dropped (a writer without the
                                  page cache copy outruns a reader on a busy machine) */
#define READER_STEP (256u << 10) /* within a batch, readers are sent to every this many bytes */
#define SEG_MAX 1460          /* payload per segment, as on an Ethernet path */
#define RETRY_S 10
#define OUT_BUF (1u << 20)    /* records copied for the file (chunks that cannot go direct) */
#define DIO_ALIGN 4096u       /* O_DIRECT: buffer address, file offset and length */
#define TAIL_MS 200           /* the file's partial last block is written this often at most */
#define REC_MAX (16 + 14 + 40 + 20 + SEG_MAX) /* the largest record: header and frame */
#define CHUNK_BYTES (128u << 10) /* a loop's record chunk (DIO_ALIGN-aligned) */
#define CHUNK_KEEP 16         /* chunks a loop keeps in its free list (2 MiB); more are spare */
#define SLAB_BYTES (2u << 20) /* the chunks' memory, in slabs of one huge page each */
#define SLAB_CHUNKS (SLAB_BYTES / CHUNK_BYTES)
#define POOL_LOOPS 256        /* loops with a chunk pool ([listen] threads at most) */
#define PEND_MAX 64           /* chunks written by one pwritev */
/* The writer's longest pause after a batch (dp_export.c batch_pause_ns): 2 ms cost the writer
 * thread 0.105-0.117 s per GB of bulk, 8 ms 0.052-0.070 (each file write kicks the VM's disk:
 * perf had iowrite16 at 0.05 s per GB). */
#define BATCH_NS 8000000L

/*
 * Finished pcap records of one loop (record header and frame, as in the file), at
 * mem[start, start + len). start is where the loop expects the records to fall in the file
 * modulo DIO_ALIGN, so that the writer can write the chunk itself with O_DIRECT: it copies the
 * file's partial last block into mem[0, start) and writes the whole blocks straight from mem.
 * The struct lies in its slab's descriptor (struct xslab), mem in the slab's memory.
 */
struct xchunk {
    struct xchunk *next;
    uint8_t *mem;
    uint32_t start, len;
    uint32_t pkts;   /* records in it */
    uint16_t loop;   /* whose back list it goes to (set again when a loop takes it) */
    uint16_t slab;   /* x->slab[slab] holds it */
    uint64_t bytes;  /* their frames' bytes (the sinks count frames, not record headers) */
    uint64_t pos;    /* the loop's record bytes handed off before this chunk */
};
/* the writer's queue, each loop's return list and the spare list (px_mpsc.h): push from any
 * thread, take whole (the spare list by any loop: a take is one exchange, so no ABA) */
PX_MPSC_DEFINE(xlist, struct xchunk, next)

/* SLAB_BYTES of chunk memory (SLAB_BYTES-aligned) and its chunks: made by the writer at start
 * (dp_xframe.c dp_xpool_fill, the queue's share) or by a loop when no chunk
 * is free (dp_xframe.c slab_new), freed with the export. */
struct xslab {
    uint8_t *mem;
    struct xchunk k[SLAB_CHUNKS];
};

/* One loop's side of the export. back, nback and shift are written by the writer, the rest
 * only by the loop (its own cache line). */
struct xloop {
    _Atomic(struct xchunk *) back; /* chunks the writer is done with (MPSC, taken whole) */
    _Atomic unsigned nback; /* pushed to back since the loop last took it (about: past
                               CHUNK_KEEP the writer gives chunks to the spare list) */
    _Atomic uint32_t shift; /* the file offset minus pos, mod DIO_ALIGN, as the writer saw last */
    _Alignas(64) struct xchunk *cur; /* being filled */
    struct xchunk *free;
    unsigned nfree;
    bool pooled;      /* counted in x->nloops */
    uint64_t pos;     /* record bytes handed off so far */
    uint16_t ip_id;
    bool ts_ok;       /* ts was read in this batch of the loop */
    uint32_t ts[2];   /* seconds, microseconds: every record of the batch */
};

struct reader {
    int fd;
    uint8_t *buf;
    size_t len, off;
    FILE *fp; /* fopencookie into buf: libpcap writes the stream format */
    pcap_dumper_t *d;
    bool dead;
    bool behind; /* dropped for not keeping up: what its socket still holds is discarded */
    char name[80];
};

struct dp_export {
    _Atomic(struct xchunk *) head; /* handed-off chunks, newest first */
    _Atomic size_t queued;
    size_t cap;
    /* the chunk pool: slabs made by the writer and the loops, up to what the queue and the
     * loops need */
    _Atomic(struct xchunk *) spare; /* free chunks no loop keeps */
    _Atomic unsigned nslabs, nloops; /* slab slots taken; loops that have taken chunks */
    unsigned slabs_cap;
    struct xslab **slab; /* [slabs_cap]; NULL where a slab could not be made */
    int evfd;
    pthread_t th;
    bool th_ok;
    _Atomic bool stop;
    uint32_t max_bytes;
    pcap_t *dead; /* DLT_EN10MB, for pcap_dump */
    /* the rolling file */
    char pattern[256];
    uint64_t rotate_bytes;
    int rotate_s, keep;
    int ffd;          /* the open file, or -1 (none yet, or an error: retried) */
    int ffd_tail;     /* when ffd is O_DIRECT: a buffered descriptor for the partial block */
    uint64_t foff;    /* the file offset of x->out[0], or of pend[0]'s mem */
    uint64_t tail_ns; /* when the partial block was last written */
    bool tail_dirty;  /* x->out holds bytes the file does not have yet */
    char path[600];
    time_t fopened, fretry;
    bool ferr;        /* no file open after an error: retried at fretry */
    bool freported;   /* an error is logged and nothing written since: one line for a
                       * disk that stays full, not one per retry */
    uint8_t fhdr[64]; /* the pcap file header, as libpcap writes it */
    size_t fhdr_len;
    /* PCAP-over-IP */
    int lfd;
    struct reader *rd[READERS_MAX]; /* the first nrd are in use; the cookies point at them */
    int nrd;
    /* the mirror */
    pcap_t *mir;
    /* what the admin socket shows */
    bool on[DP_EXPORT_SINKS];
    _Atomic uint64_t packets[DP_EXPORT_SINKS], bytes[DP_EXPORT_SINKS], dropped[DP_EXPORT_SINKS];
    _Atomic int readers;
    _Atomic uint64_t excluded; /* connections a rule's export = no kept out */
    pthread_mutex_t state_lock;
    char state[DP_EXPORT_SINKS][200];
    /* the file's records not written yet (writer thread only), DIO_ALIGN-aligned: in x->out,
     * or (npend > 0) in the chunks of pend, whose mem[0, pend_a[i]) follow each other in the
     * file (x->out is empty then) and whose last one holds the partial block after them */
    uint8_t *out;
    size_t outlen;
    struct xchunk *pend[PEND_MAX];
    uint32_t pend_a[PEND_MAX];
    int npend;
    size_t pend_sum; /* the sum of pend_a */
    uint64_t fpkts, fbytes; /* frames given to the file since its last write */
    uint64_t direct_chunks, copied_chunks; /* how the file got its chunks (ctl status) */
    uint64_t state_n; /* their sum when the file's state line last showed them */
    /* the pruner (dp_xprune.c): what the writer asked for, under prune_lock */
    pthread_t prune_th;
    bool prune_ok;
    pthread_mutex_t prune_lock;
    pthread_cond_t prune_cond;
    bool prune_want, prune_stop;
    char prune_path[600]; /* the file the writer opened last: never deleted */
    struct xloop lp[POOL_LOOPS];
};

/* dp_export.c */
void dp_xset_state(struct dp_export *x, int sink, const char *fmt, ...) PX_PRINTF(3, 4);
void dp_xcount_drop(struct dp_export *x, uint64_t n); /* n packets, for every sink */
void dp_xchunk_put(struct dp_export *x, struct xchunk *k); /* the writer is done with k */

/* dp_xframe.c */
void dp_xframe_flush_all(struct dp_export *x); /* the loops have ended: every chunk queued */
void dp_xpool_fill(struct dp_export *x); /* the writer, at start: the queue's slabs, faulted in */
void dp_xpool_free(struct dp_export *x); /* every slab (the chunks are back by then) */

/* dp_xfile.c, the writer thread only */
int dp_xfile_header(struct dp_export *x); /* once, at set-up: x->fhdr */
void dp_xfile_open(struct dp_export *x, time_t now);
void dp_xfile_close(struct dp_export *x);
int dp_xfile_write(struct dp_export *x); /* x->out's records; 0 or -errno */
void dp_xfile_chunk(struct dp_export *x, struct xchunk *k); /* k's records after the others */
void dp_xfile_flush(struct dp_export *x); /* what dp_xfile_chunk kept, written */
void dp_xfile_fail(struct dp_export *x, int err);
void dp_xfile_tick(struct dp_export *x, time_t now);

/* dp_xprune.c */
int dp_xprune_start(struct dp_export *x); /* 0, or -errno: then kick prunes in the writer */
void dp_xprune_kick(struct dp_export *x, const char *current); /* the writer: a new file */
void dp_xprune_stop(struct dp_export *x); /* after the writer: a prune asked for is made */

#endif
