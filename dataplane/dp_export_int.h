/* SPDX-License-Identifier: MIT */
/*
 * dp_export_int.h - what the export's two files share: the queue's events, the readers, the
 * export itself (struct dp_export). dp_export.c: the loop side, the framing, the readers and
 * the mirror, the writer thread; dp_xfile.c: the rolling pcap file. Nothing outside them
 * includes this.
 */
#ifndef DP_EXPORT_INT_H
#define DP_EXPORT_INT_H

#include "dp_int.h"

#include <pcap/pcap.h>
#include <stdio.h>
#include <time.h>

#define READERS_MAX 16
#define READER_BUF (12u << 20) /* a reader this far behind is dropped (a writer without the
                                  page cache copy outruns a reader on a busy machine) */
#define READER_STEP (256u << 10) /* within a batch, readers are sent to every this many bytes */
#define SEG_MAX 1460          /* payload per segment, as on an Ethernet path */
#define RETRY_S 10
#define OUT_BUF (1u << 20)    /* a batch's pcap records, written whole to every stream */
#define DIO_ALIGN 4096u       /* O_DIRECT: buffer address, file offset and length */
#define TAIL_MS 200           /* the file's partial last block is written this often at most */
#define REC_MAX (16 + 14 + 40 + 20 + SEG_MAX) /* the largest record: header and frame */
#define EV_ROOM 16384         /* payload of a pooled event: a TLS record's plaintext */
#define POOL_KEEP 256         /* pooled events a loop keeps when it has more (4 MiB) */
#define POOL_LOOPS 256        /* loops with a pool ([listen] threads at most); others malloc */
#define BATCH_NS 2000000L     /* the writer's pause after a batch: the loops' pushes meanwhile
                                 find the list non-empty and signal nothing */

enum ev_kind { EV_OPEN, EV_DATA, EV_FIN, EV_RST };

struct ev {
    struct ev *next;
    uint8_t kind, dir, v6;
    bool pooled;       /* from pool[loop] (EV_ROOM of payload), else malloc'd to its size */
    uint16_t loop;
    struct timespec ts;
    uint8_t ip[2][16]; /* [D_CLIENT] the client, [D_UP] the original destination */
    uint16_t port[2];
    uint32_t seq[2];   /* each side's next sequence number when the event was made */
    uint32_t len;
    uint8_t data[];
};

struct reader {
    int fd;
    uint8_t *buf;
    size_t len, off;
    FILE *fp; /* fopencookie into buf: libpcap writes the stream format */
    pcap_dumper_t *d;
    bool dead;
    char name[80];
};

/* The pooled events of one loop: back is pushed by the writer only and taken whole by the loop
 * (no ABA: nobody pops single entries of it); free and held are the loop's own. */
struct ev_pool {
    _Atomic(struct ev *) back;
    struct ev *free;
    unsigned nfree;
    struct ev *held; /* reserved by dp_export_reserve, not committed yet */
};

struct dp_export {
    _Atomic(struct ev *) head;
    _Atomic size_t queued;
    size_t cap;
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
    uint64_t foff;    /* the file offset of x->out[0] */
    uint64_t tail_ns; /* when the partial block was last written */
    bool tail_dirty;  /* x->out holds bytes the file does not have yet */
    char path[600];
    time_t fopened, fretry;
    bool ferr;
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
    uint16_t ip_id;
    /* records not written yet (writer thread only): [0, out_base) the file's partial block,
     * already sent to the readers; [out_base, outlen) new records. DIO_ALIGN-aligned. */
    uint8_t *out;
    size_t outlen, out_base;
    uint64_t out_pkts, out_bytes; /* frames in out and their bytes, without record headers */
    struct ev_pool pool[POOL_LOOPS];
};

/* dp_export.c */
void dp_xset_state(struct dp_export *x, int sink, const char *fmt, ...) PX_PRINTF(3, 4);

/* dp_xfile.c, the writer thread only */
int dp_xfile_header(struct dp_export *x); /* once, at set-up: x->fhdr */
void dp_xfile_open(struct dp_export *x, time_t now);
void dp_xfile_close(struct dp_export *x);
int dp_xfile_write(struct dp_export *x); /* x->out's records; 0 or -errno */
void dp_xfile_fail(struct dp_export *x, int err);
void dp_xfile_tick(struct dp_export *x, time_t now);

#endif
