/* SPDX-License-Identifier: MIT */
/*
 * lg.h - shared types of tlsmint-bench, the TLS load generator (prefix lg_).
 * Owns nothing itself: it declares the parsed options (immutable once the run starts), the
 * per-thread counters and latency histograms the worker threads write and the main thread
 * reads (relaxed atomics, one writer each), the timeline ring, and the entry points of the
 * units: lg_opts.c (command line), lg_worker.c (epoll loop, connection state machine),
 * lg_report.c (histograms, /proc sampling, progress, timeline CSV, text and JSON reports).
 * Invariants: every worker has a fixed connection table sized at start; nothing on the
 * request path allocates except OpenSSL's own SSL objects, which are freed per connection.
 * Not here: HTTP/2 framing (ALPN h2 is only negotiated), DNS at run time.
 */
#ifndef TLSMINT_LG_H
#define TLSMINT_LG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include <openssl/ssl.h>

#define LG_NAME_MAX 256
#define LG_MAX_PIDS 32
#define LG_TL_SLOTS 64 /* timeline ring: 6.4 s of 100 ms buckets per thread */
#define LG_TL_LAG 10   /* buckets the main thread waits before it writes one out */
#define LG_TL_NS 100000000ull
#define LG_HIST_BINS 2048 /* log-linear, 64 sub-bins per octave: about 1.6 % resolution */

enum lg_scenario {
    LG_SC_HANDSHAKE = 1,
    LG_SC_MINT,
    LG_SC_BULK,
    LG_SC_IDLE,
    LG_SC_KEEPALIVE,
};

/* Failure kinds; the order is the order of report columns. */
enum lg_err {
    LG_E_CONNECT = 0, /* TCP connect failed or was refused */
    LG_E_PROXY,       /* CONNECT answered with non-200, malformed, or closed */
    LG_E_TLS,         /* TLS handshake failed (alert, reset, EOF) */
    LG_E_VERIFY,      /* certificate chain or name did not verify */
    LG_E_HTTP,        /* non-2xx, malformed or truncated response, I/O error after handshake */
    LG_E_TIMEOUT,     /* --timeout-ms passed without progress */
    LG_E_BUSY,        /* rate mode: the connection table was full, start skipped */
    LG_E_COUNT,
};

struct lg_opts {
    enum lg_scenario scenario;
    const char *scenario_name;

    /* where to connect */
    const char *connect_arg;        /* as given: ADDR:PORT */
    char connect_host[LG_NAME_MAX]; /* ADDR part without brackets */
    uint16_t port;
    struct sockaddr_storage target;
    socklen_t target_len;
    const char *proxy_arg;
    struct sockaddr_storage proxy;
    socklen_t proxy_len;
    const char *connect_line_host; /* --connect-host, NULL: the host name */

    /* names */
    const char *host; /* --host, default connect_host */
    const char *sni;  /* --sni; NULL: host name; "" never (see no_sni) */
    bool no_sni;
    const char *path;
    const char *hosts_file;
    char *hosts_buf;    /* --hosts: the file, NUL separated */
    const char **hosts; /* pointers into hosts_buf */
    uint32_t nhosts;
    const char *host_pattern; /* exactly one %d, split into pat_pre and pat_suf */
    char pat_pre[LG_NAME_MAX];
    char pat_suf[LG_NAME_MAX];
    uint64_t count;
    uint64_t first;

    /* load */
    unsigned threads;
    unsigned concurrency;  /* closed loop: connections kept busy; idle: connections */
    double duration_s;     /* 0: not limited by time */
    uint64_t requests;     /* 0: not limited by count */
    double rate;           /* 0: closed loop */
    unsigned max_inflight; /* rate mode: size of the connection table */
    unsigned timeout_ms;
    double hold_s;

    /* TLS */
    const char *cafile;
    bool insecure;
    bool resume;      /* --resume: each thread offers its last session again (tickets) */
    int tls_version;  /* 0, TLS1_2_VERSION or TLS1_3_VERSION */
    const char *alpn; /* "h2" or "http/1.1" */
    const char *ciphersuites; /* TLS 1.3 suites offered, in order */

    /* output */
    bool quiet;
    bool json;
    bool issuer_stats;
    const char *timeline_path;
    int pids[LG_MAX_PIDS];
    unsigned npids;
};

/* Latency histogram in microseconds; bins are bumped with relaxed atomics by one thread. */
struct lg_hist {
    uint64_t bins[LG_HIST_BINS];
    uint64_t max_us;
};

/* One timeline bucket of one thread; tag is the bucket number it holds (+1, 0 = empty). */
struct lg_tl_slot {
    uint64_t tag;
    uint64_t attempted;
    uint64_t ok;
    uint64_t failed[LG_E_COUNT];
    uint64_t intercepted;
    uint64_t bypassed;
    uint32_t hs_bins[LG_HIST_BINS];
};

/* Counters of one worker; written by that worker only, read by main with relaxed loads. */
struct lg_stats {
    uint64_t attempted;
    uint64_t ok;
    uint64_t failed[LG_E_COUNT];
    uint64_t handshakes;
    uint64_t resumed;   /* of the handshakes: sessions resumed (--resume) */
    uint64_t bytes_in;  /* application bytes received (headers and body) */
    uint64_t bytes_out; /* application bytes sent (requests) */
    uint64_t body_bytes;
    uint64_t active;  /* connections in the table right now */
    uint64_t held;    /* idle: established connections held open now */
    uint64_t dropped; /* idle: held connections the peer closed */
    uint64_t intercepted;
    uint64_t bypassed;
    uint64_t tls12;
    uint64_t tls13;
    uint64_t alpn_h2;
    uint64_t alpn_http11;
    uint64_t alpn_none;
    uint64_t cipher_aes128; /* negotiated AES-128-GCM (TLS 1.3 or 1.2) */
    uint64_t cipher_aes256; /* negotiated AES-256-GCM */
    uint64_t cipher_other;  /* anything else (ChaCha20, CCM, CBC) */
    uint64_t late_starts;            /* rate mode: starts more than 1 ms behind schedule */
    uint64_t unfinished;             /* abandoned by a second SIGINT */
    uint64_t end_ns;                 /* when the worker's loop ended (CLOCK_MONOTONIC) */
    struct lg_hist connect;          /* TCP connect */
    struct lg_hist handshake;        /* connect start .. TLS handshake done (incl. CONNECT) */
    struct lg_hist request;          /* connect start .. response complete */
    char first_err[LG_E_COUNT][160]; /* first message of each kind, read after join */
};

struct lg_worker;

/* Run-wide state shared by main and the workers. */
struct lg_run {
    const struct lg_opts *opts;
    SSL_CTX *ctx;
    uint64_t t0_ns;   /* CLOCK_MONOTONIC at start; timeline bucket 0 */
    uint64_t issued;  /* request numbers claimed (atomic) */
    uint64_t limit;   /* 0: none; else starts stop at this many */
    int stop_starts;  /* atomic: no new connections */
    int abort_all;    /* atomic: close everything and exit now */
    int workers_done; /* atomic */
    struct lg_worker **workers;
    unsigned nworkers;
};

/* lg_opts.c */
/* Parses argv into *o (argv strings are borrowed). Returns 0, 1 after --help/--version was
 * printed, or -1 after printing one line to stderr (the caller exits 2). */
int lg_opts_parse(struct lg_opts *o, int argc, char **argv);
void lg_opts_fini(struct lg_opts *o);
/* Writes the name of request number n (mint list or pattern, else the host) into buf. */
void lg_opts_host_name(const struct lg_opts *o, uint64_t n, char *buf, size_t len);

/* lg_worker.c */
struct lg_worker *lg_worker_new(struct lg_run *run, unsigned index, unsigned slots, double rate);
void lg_worker_free(struct lg_worker *w);
int lg_worker_start(struct lg_worker *w);
void lg_worker_join(struct lg_worker *w);
struct lg_stats *lg_worker_stats(struct lg_worker *w);
struct lg_tl_slot *lg_worker_timeline(struct lg_worker *w);

/* lg_report.c */
uint64_t lg_now_ns(void);
void lg_hist_add(struct lg_hist *h, uint64_t us);
void lg_tl_hist_add(uint32_t *bins, uint64_t us);
unsigned lg_hist_bin(uint64_t us);
uint64_t lg_hist_bin_value(unsigned bin);
/* Percentile (0..100) over bins as microseconds; 0 when empty. */
uint64_t lg_hist_pct(const uint64_t *bins, double pct);
uint64_t lg_hist_pct32(const uint32_t *bins, double pct);

struct lg_proc_sample {
    unsigned nproc;  /* processes in the trees */
    double cpu_s;    /* utime+stime+cutime+cstime summed */
    uint64_t hwm_kb; /* VmHWM summed */
    uint64_t rss_kb; /* VmRSS summed */
};
/* Samples the given pids and all their descendants; returns -1 if a root pid is gone. */
int lg_proc_sample(const int *pids, unsigned npids, struct lg_proc_sample *s);

struct lg_report;
struct lg_report *lg_report_new(struct lg_run *run, FILE *timeline);
void lg_report_free(struct lg_report *r);
/* Called by main every 100 ms: writes timeline buckets older than LG_TL_LAG; at `final`,
 * writes everything left. */
void lg_report_timeline_flush(struct lg_report *r, uint64_t now_ns, bool final);
/* Called by main every second: one progress line to stderr, RSS sampling of --pid. */
void lg_report_tick(struct lg_report *r, uint64_t now_ns);
void lg_report_pids_begin(struct lg_report *r);
void lg_report_pids_end(struct lg_report *r);
/* What main observed of the idle scenario's phases. */
struct lg_idle_result {
    uint64_t up_ns;    /* when every attempt had ended up or failed; 0: never */
    uint64_t up_count; /* established connections then */
    uint64_t end_ns;   /* when the hold ended (time, or a signal) */
    uint64_t end_held; /* connections still up at that moment */
};
/* Final summary (text to stdout, or one JSON object with --json). */
void lg_report_final(struct lg_report *r, uint64_t end_ns, const struct lg_idle_result *idle);

/* Atomic helpers: each counter has one writer; main reads while workers run. */
static inline void lg_add(uint64_t *p, uint64_t v)
{
    /* single writer: a plain load and store, atomic only so the reader sees whole values */
    __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + v, __ATOMIC_RELAXED);
}

static inline uint64_t lg_load(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

#endif
