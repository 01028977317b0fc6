/* SPDX-License-Identifier: MIT */
/*
 * dp_int.h - dataplane internals shared by its files. Private to dataplane/.
 * The rooms, in the order a connection meets them:
 *   dp_server.c  listeners, loop threads, reload generations (struct dp_gen), start/stop, stats
 *   dp_loop.c    one loop: the ring, CQE dispatch by user_data, the connection table, the tick
 *   dp_conn.c    the connection's state machine, accept to close; CONNECT, destination, connect
 *   dp_connect.c the CONNECT request head (http-parser)     dp_resolve.c  names, off the loops
 *   dp_policy.c  the decision for a new connection (rules, bypass list, default), block page
 *   dp_tls.c     both SSL_CTXs, ClientHello callback, ALPN, upstream SSL, session cache, keylog
 *   dp_leaf.c    certcache lookup, the wait for a mint, the HSM failure policy (closed / open)
 *   dp_relay.c   the pump: recv/send, backpressure, TLS relay, splice, half-close
 *   dp_buf.c     bytes in flight: the receive buffer ring, inputs, output queues, the BIOs
 *   dp_alog.c    the access-log line and its writer thread     dp_addr.c  IP:PORT helpers
 *   dp_rcache.c  the resolver's names: answers, negative answers, lookups in flight
 */
#ifndef DP_INT_H
#define DP_INT_H

#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <liburing.h>
#include <openssl/ocsp.h>
#include <openssl/ssl.h>

#include "dp.h"

/* ---- CONNECT request parsing (dp_connect.c) -------------------------------------------- */

enum dp_connect_result {
    DP_CONNECT_MORE = 0,   /* need more bytes */
    DP_CONNECT_OK = 1,     /* host/port filled, *consumed = bytes of the request head */
    DP_CONNECT_BAD = -1,   /* malformed: answer 400 */
    DP_CONNECT_METHOD = -2 /* not CONNECT: answer 405 */
};

/* Parses an HTTP/1.x CONNECT request head with http-parser. host gets at most hostcap-1 bytes. */
int dp_connect_parse(const uint8_t *buf, size_t len, char *host, size_t hostcap, uint16_t *port,
                     size_t *consumed);

/* ---- resolver (dp_resolve.c) ------------------------------------------------------------ */

#define DP_RES_ADDRS 8 /* addresses kept per name, IPv4 first */

enum dp_res_status {
    DP_RES_OK = 0,
    DP_RES_NXDOMAIN, /* the name does not exist */
    DP_RES_NODATA,   /* the name exists but has no A or AAAA record */
    DP_RES_TIMEOUT,  /* no answer within the job's timeout_ms */
    DP_RES_BUSY,     /* too many names in flight: answer 503 */
    DP_RES_ERROR     /* anything else (SERVFAIL, refused, not a host name): why says what */
};

union dp_res_addr {
    struct sockaddr sa;
    struct sockaddr_in in4;
    struct sockaddr_in6 in6;
};

struct dp_rent;
struct dp_resolver;
/*
 * One lookup for one connection. The loop allocates it and fills the request, the resolver
 * owns it from dp_resolver_submit until it comes back on done, then the loop frees it (and may
 * keep it meanwhile for its addresses).
 */
struct dp_res_job {
    struct dp_res_job *next; /* submit queue, then the done list */
    uint64_t token;          /* conn slot | gen */
    char host[256];
    uint16_t port;
    uint32_t timeout_ms;               /* [upstream] resolve_timeout_ms: the lookup as a whole */
    uint32_t max_ttl_s, neg_ttl_s;     /* dns_cache_max_ttl_s, dns_negative_ttl_s */
    struct dp_res_done *done;          /* where to deliver */
    /* the answer */
    int status;                        /* enum dp_res_status */
    bool cached;                       /* from the cache, no query */
    char why[96];                      /* one line when status is DP_RES_ERROR */
    int naddr;
    union dp_res_addr addr[DP_RES_ADDRS]; /* port filled in */
    /* the resolver's own */
    uint64_t submit_ns, deadline_ns;
    struct dp_rent *wait_on;           /* the pending name it waits for */
    struct dp_res_job *wnext;          /* the other jobs waiting for that name */
    struct dp_res_job *dprev, *dnext;  /* every waiting job, by deadline */
};
struct dp_res_done {
    _Atomic(struct dp_res_job *) head;
    int evfd;
};
/* Starts the resolver thread (c-ares reads resolv.conf and the hosts file here). Borrows cfg
 * only during the call. NULL and one line in err on failure. */
struct dp_resolver *dp_resolver_new(const struct px_cfg *cfg, char *err, size_t errlen);
/* Stops the thread; jobs not delivered yet are freed (their loops are gone too). */
void dp_resolver_free(struct dp_resolver *r);
/* Queues a lookup; the job comes back on done (MPSC + eventfd). PX_E_FULL when too many. Never
 * blocks: any loop thread may call it. */
PX_MUST_CHECK int dp_resolver_submit(struct dp_resolver *r, struct dp_res_job *job);
/* Takes every finished job, oldest first. */
struct dp_res_job *dp_res_done_take(struct dp_res_done *d);
/* A consistent snapshot of the counters (any thread). */
void dp_resolver_stats(struct dp_resolver *r, struct dp_dns_stats *out);
/* Length of an address as connect(2) wants it. */
socklen_t dp_res_addrlen(const union dp_res_addr *a);

/* ---- the resolver's names (dp_rcache.c; resolver thread only) ---------------------------- */

enum dp_rent_state { DP_RENT_PENDING = 1, DP_RENT_OK, DP_RENT_NEG };
struct dp_rent {
    char name[256]; /* normalised key */
    uint32_t hash;
    enum dp_rent_state state;
    int status;                         /* DP_RENT_NEG: DP_RES_NXDOMAIN or DP_RES_NODATA */
    int naddr;
    union dp_res_addr addr[DP_RES_ADDRS]; /* port 0 */
    uint64_t expires_ns;
    /* pending: the flight */
    struct dp_res_job *waiters;
    void *owner;                        /* the resolver, for c-ares' callback */
    uint64_t start_ns;
    uint32_t max_ttl_s, neg_ttl_s;
    struct dp_rent *hnext;
    struct dp_rent *lprev, *lnext;      /* LRU of resolved entries */
};
struct dp_rcache;
/*
 * The key of a host name: lower case, one trailing dot dropped; letters, digits, '-', '_'
 * in labels of 1-63 bytes, 253 bytes in all. Returns its length, or PX_E_INVAL for anything
 * that is no host name (out gets at most cap bytes).
 */
PX_MUST_CHECK int dp_rcache_key(const char *host, char *out, size_t cap);
/* A table of at most max names (pending ones included); NULL on bad max or no memory. */
struct dp_rcache *dp_rcache_new(uint32_t max);
void dp_rcache_free(struct dp_rcache *c);
/* The entry of key (borrowed), or NULL. An expired entry is removed and not returned; a hit
 * on a resolved entry makes it the most recently used. */
struct dp_rent *dp_rcache_find(struct dp_rcache *c, const char *key, uint64_t now_ns);
/* A new pending entry for key (which must not be in the table). Evicts the least recently used
 * resolved entry when full; NULL when every entry is pending, or out of memory. */
struct dp_rent *dp_rcache_add(struct dp_rcache *c, const char *key);
/* Ends a pending entry: kept with status and addresses for ttl_s seconds, or removed (and
 * freed) when ttl_s is 0 or an OK answer has no address. Returns whether it is kept. */
bool dp_rcache_settle(struct dp_rcache *c, struct dp_rent *e, int status,
                      const union dp_res_addr *addr, int naddr, uint32_t ttl_s, uint64_t now_ns);
/* Removes and frees e. */
void dp_rcache_remove(struct dp_rcache *c, struct dp_rent *e);
uint32_t dp_rcache_count(const struct dp_rcache *c);
uint32_t dp_rcache_pending(const struct dp_rcache *c);

/* ---- access log (dp_alog.c) ------------------------------------------------------------- */

struct dp_alog;
/* Opens path (append, created with mode) or uses stdout when path is empty; lines it cannot
 * write are counted and reported as the given sink's. */
struct dp_alog *dp_alog_new(const char *path, int mode, enum px_sink sink, char *err,
                            size_t errlen);
void dp_alog_free(struct dp_alog *a);
/* Queues one line (copied). Never blocks: drops and counts when the queue is full. */
void dp_alog_write(struct dp_alog *a, const char *line, size_t len);

/* ---- connections, loops, server (dp_loop.c) ---------------------------------------------- */

#define DP_CHUNK 1024           /* connections per table chunk (the table grows by chunks) */
#define DP_WHEEL 2048           /* timer wheel slots of DP_TICK_MS: 409.6 s > any deadline */
#define DP_FD_RESERVE 64        /* descriptors kept for listeners, rings, logs, signers, admin */
#define DP_RBUF 16384           /* a receive buffer (the loop's buffer ring; the CONNECT head) */
#define DP_RING_BUFS 128        /* receive buffers per loop (a power of two; dp_buf.c) */
#define DP_BGID 0               /* their buffer group */
#define DP_RXBUF 65536          /* the own receive buffer of a streaming side (dp_buf.c) */
#define DP_RX_CACHE 8           /* free ones a loop keeps (a stack: the warmest comes first) */
#define DP_IBID_RX (-2)         /* side input is a streaming side's own buffer */
#define DP_OCHUNK 17408         /* bytes per output chunk: a full TLS record (16,406) and a bit */
#define DP_CHUNK_CACHE 32       /* free output chunks a loop keeps for reuse */
#define DP_PENDING_MAX 65536    /* bytes waiting for a side before its peer is not read */
#define DP_HELLO_MAX 16384      /* raw ClientHello bytes kept for replay */
#define DP_HANDSHAKE_MS 10000
#define DP_IDLE_MS 300000
#define DP_TICK_MS 200

enum dp_op {
    OP_ACCEPT = 1, OP_RECV, OP_SEND, OP_CONNECT, OP_LTIMEOUT, OP_TIMER, OP_CC, OP_RES,
    OP_FIRSTBYTE, /* dir 0: the first-byte timer of a connection; dir 1: its removal */
    OP_IN_ACCEPT, /* dir: the [inbound.NAME] listener (dp_inbound.c) */
    OP_IN_CQ,     /* the loop's queue of inbound signatures */
    OP_OCSP,      /* an OCSP fetch's operation (dp_ocsp.c): dir = its step, slot = the fetch */
    OP_OCSP_WAIT  /* dir 0: a connection's own OCSP deadline (dp_ocsp.c); dir 1: its removal */
};
enum dp_dir { D_CLIENT = 0, D_UP = 1 };

/* The stages of a connection; dp_conn.c draws them and holds their table (dp_stages). */
enum dp_state {
    S_FREE = 0,
    S_CONNECT_REQ,   /* explicit: reading the CONNECT request */
    S_RESOLVING,     /* explicit: waiting for the resolver */
    S_CLIENT_HELLO,  /* reading the ClientHello */
    S_POLICY,        /* ClientHello read: inspect or bypass (dp_policy.c) */
    S_UP_CONNECTING, /* TCP connect to the upstream */
    S_UP_HANDSHAKE,  /* TLS with the upstream */
    S_MINTING,       /* waiting for certcache */
    S_CLIENT_HANDSHAKE,
    S_RELAY,
    S_SPLICE,        /* bypass: raw bytes both ways */
    S_REOPEN,        /* fail open: waiting for the first upstream's operations to end */
    S_CLOSING,       /* flushing what is queued, then close */
    S_BLOCK_PAGE,    /* blocked, on a leaf of ours: read the request, answer 403 (dp_policy.c) */
    S_FIRST_BYTE,    /* the client said nothing for first_byte_ms: whichever side speaks first */
    S_IN_HANDSHAKE,  /* inbound: TLS with the client, our certificate, the key in the HSM */
    S_IN_SIGNING,    /* inbound: handshake paused for the HSM signature (reads nothing) */
    S_IN_BACKEND_TLS, /* inbound: TLS with the backend (backend_tls = yes) */
    S_IN_RELAY,      /* inbound: client TLS <-> plain backend */
    S_STATUS,        /* waiting for the upstream certificate's OCSP status (dp_ocsp.c) */
    DP_STATES
};

struct dp_conn;

/* What a stage reads and which clock runs while a connection is in it. */
enum dp_reads { R_NONE = 0, R_CLIENT = 1 << D_CLIENT, R_UP = 1 << D_UP, R_BOTH = R_CLIENT | R_UP };
enum dp_timer { T_NONE = 0, T_HANDSHAKE, T_IDLE };

struct dp_stage {
    const char *name;
    /* runs after every event in this stage; NULL: the stage waits for a completion handler */
    void (*step)(struct dp_conn *c);
    uint8_t reads;     /* enum dp_reads; R_BOTH stages read a side only while its peer has room */
    uint8_t timer;     /* enum dp_timer: handshake deadline (from accept), or idle time */
    uint32_t next;     /* the stages it may move to, one bit each (checked in debug builds) */
};
extern const struct dp_stage dp_stages[DP_STATES];

enum dp_outcome {
    O_NONE = 0, O_OK, O_BYPASS, O_REFUSED_HSM, O_UPSTREAM_FAILED, O_CLIENT_ERROR, O_BAD_REQUEST,
    O_TIMEOUT, O_SHUTDOWN, O_FAIL_OPEN, O_DNS_FAILED, O_BLOCKED, O_EXCLUDED
};

union dp_ud {
    uint64_t u;
    struct {
        uint8_t op;
        uint8_t dir;
        uint16_t gen;
        uint32_t slot;
    } f;
};

#define DP_SEND_IOV 4           /* chunks one send takes at most (a sendmsg) */

/* An output chunk: bytes waiting to be sent, [off, len) not sent yet (dp_buf.c). The head
 * chunk also holds the message of a send that takes more than one chunk (it outlives it). */
struct dp_chunk {
    struct dp_chunk *next;
    uint32_t off, len;
    struct msghdr msg;
    struct iovec iov[DP_SEND_IOV];
    uint8_t data[DP_OCHUNK];
};

/* One side of a connection: its socket, its bytes in flight (dp_buf.c), its TLS object. */
struct side {
    int fd;
    struct dp_conn *conn; /* the connection it is part of (its BIOs reach the loop by it) */
    uint8_t *rbuf;   /* S_CONNECT_REQ: the request head read so far (heap, then freed) */
    uint32_t rlen;
    uint8_t *rx;     /* streaming, or no buffer ring: the own buffer of the recv in flight */
    uint8_t *ip;     /* input: received bytes not consumed yet, [ioff, ioff + ilen) */
    uint32_t ioff, ilen;
    int32_t ibid;    /* the input's ring buffer id, -1: a heap copy (or none), DP_IBID_RX */
    struct dp_chunk *oq, *oq_tail; /* output queue; a send takes the head's unsent part */
    uint32_t oq_bytes;
    BIO *out;        /* appends to the output queue: the SSL's wbio, or alone (splice) */
    BIO *in;         /* reads the input: the SSL's rbio */
    SSL *ssl;
    bool recv_armed, send_armed, eof, err;
    bool nobufs;     /* its recv found the ring empty: armed again at the end of the batch */
    bool streaming;  /* its last recv was full: the next one gets its own buffer (dp_buf.c) */
};

struct dp_loop;

/*
 * What a reload replaces: the configuration, the certificate cache (CA material, key pool)
 * and the TLS contexts (trust store). Refcounted: the server holds the current one, each loop
 * and each connection holds the one it started with, so a reload never disturbs a connection.
 */
struct dp_gen {
    _Atomic int refs;
    unsigned id;
    const struct px_cfg *cfg; /* &own_cfg */
    struct px_cfg own_cfg;    /* a copy: the caller may free its config after a reload */
    struct cc_ctx *cc;        /* one reference */
    SSL_CTX *sctx;            /* client-facing (server role) */
    SSL_CTX *uctx;            /* upstream-facing (client role) */
    _Atomic uint64_t *decisions; /* per rule, then bypass list, then default (n_rules + 2) */
    EVP_PKEY *page_key;          /* signs the stand-in upstream certificates of block pages */
};

/* A connection as an exported TCP conversation (dp_export.c); kept by its loop. */
struct dp_xflow {
    bool on;
    bool was_on;      /* handed to the sinks (the access log's "export":"yes") */
    bool excluded;    /* kept out by its rule's export = no ("export":"excluded") */
    uint32_t seq[2];  /* next sequence number of each side (D_CLIENT, D_UP) */
    uint32_t left[2]; /* bytes still exported each way ([export] max_bytes_per_conn) */
    uint8_t ender;    /* 1 + the side whose end (FIN, reset, close_notify, alert) came first */
    bool ender_rst;   /* ... and it was a TCP reset */
};

enum { DP_V12 = 1, DP_V13 = 2, DP_VOLD = 4 };
enum { DP_C12 = 1, DP_C13 = 2, DP_CEXTRA = 4 };

struct dp_conn {
    uint32_t slot;
    uint16_t gen;
    enum dp_state state;
    enum dp_outcome outcome;
    struct dp_loop *loop;
    struct dp_gen *g;      /* reference taken at accept */
    int inflight;
    bool transparent;
    bool sent_200;
    bool up_connected;
    bool hello_seen;
    bool leaf_ready;
    bool fail_hello;       /* make the ClientHello callback abort with handshake_failure */
    bool up_shut_sent, cl_shut_sent;
    bool up_resumed;
    bool fail_open;        /* replay the ClientHello on a new upstream connection and splice */
    bool block_page;       /* blocked: the client handshake ends on our leaf, then a 403 */
    uint8_t fail_alert;    /* the alert fail_hello sends (0: handshake_failure) */
    uint8_t page_crlf;     /* S_BLOCK_PAGE: how much of "\r\n\r\n" the request has shown */
    uint32_t page_read;    /* S_BLOCK_PAGE: request bytes read */
    bool fb_armed;         /* the first-byte timer is in flight (counted in inflight) */
    bool fb_removing;      /* its removal is submitted */
    bool decided;          /* the decision is counted (once per connection) */
    bool fb_wait;          /* it fired: once connected, wait in S_FIRST_BYTE */
    bool tunnel;           /* not TLS: bytes kept for the replay until spliced */
    bool excluding;        /* in the exclusion cache (or just added): spliced, outcome excluded */
    bool proving;          /* a name-based bypass waits for its proof: the upstream handshake */
    bool proof_excl;       /* ... and it came from the exclusion cache */
    bool up_client_auth;   /* the upstream asked for a client certificate */
    uint8_t inbound;       /* [inbound.NAME] listener index + 1; 0: a forward-proxy connection */
    struct dp_inb_conn *inb; /* inbound: the signature it waits for (dp_inbound.c) */
    uint8_t client_alert;  /* the last alert the client sent us (0: none) */
    uint8_t hello_vers;    /* versions the ClientHello offers: DP_V12, DP_V13, DP_VOLD bits */
    uint8_t hello_ciph;    /* its ciphers: DP_C12 (one we do in TLS 1.2), DP_C13 (a TLS 1.3
                              suite we do), DP_CEXTRA (one we do not offer upstream) */
    uint8_t ocsp_status;   /* enum dp_cert_status of the upstream certificate */
    const char *ocsp_src;  /* where it came from: "stapled", "fetched", "cached" (static) */
    uint64_t ocsp_start_ns, ocsp_wait_ns;
    bool ocsp_timer;          /* its own OCSP deadline timer is in flight (counted in inflight) */
    bool ocsp_timer_removing; /* its removal is submitted */
    struct __kernel_timespec ocsp_ts;
    struct __kernel_timespec fb_ts;
    enum px_action action; /* the policy's decision */
    int profile;           /* its profile (cfg->profiles index, -1: built-in) */
    bool no_export;        /* its rule says export = no (dp_export_begin counts and skips it) */
    const char *rule;      /* the rule that decided (borrowed from the generation's cfg) */
    const char *reason;    /* why: "rule", "default", "expired", ... (static) */
    enum cc_key_kind keykind;
    struct side s[2];
    struct sockaddr_storage client_addr, dst;
    socklen_t dstlen;
    char host[256];        /* CONNECT host, or the SNI, or the destination IP */
    uint16_t port;
    char sni[256];
    uint8_t alpn[256];
    uint32_t alpn_len;
    uint8_t alpn_sel[256];
    uint32_t alpn_sel_len;
    uint8_t *hello;        /* raw ClientHello bytes, kept until the handshake is decided */
    uint32_t hello_len;
    bool hello_overflow;
    struct cc_entry *leaf;
    const char *cache_result;
    long verify_result;
    bool verified;
    uint64_t start_ns, last_ns, deadline_ns, hsm_wait_ns;
    uint64_t bytes_c2u, bytes_u2c;
    struct dp_res_job *rj;          /* the resolver's answer: addresses still to try */
    int addr_next;                  /* index in rj of the next address to try */
    uint64_t up_deadline_ns;        /* connect_timeout_ms, every address included */
    struct __kernel_timespec cto;   /* this attempt's share of it (read at submit) */
    struct dp_xflow xf;
    struct dp_conn *next_free;
    struct dp_conn *t_next, **t_pprev; /* timer wheel slot list (t_pprev NULL: not armed) */
    uint64_t t_tick;                   /* the tick it fires at */
    struct dp_conn *h_next, **h_pprev; /* the loop's hot list (dp_buf.c; NULL: cold) */
};

/* Side d ended the exported connection first (with a TCP reset: rst), unless the other one
 * did: the export closes the conversation from that side, as it did (dp_export_end). */
static inline void dp_xflow_ended(struct dp_conn *c, int d, bool rst)
{
    if (c->xf.on && c->xf.ender == 0) {
        c->xf.ender = (uint8_t)(d + 1);
        c->xf.ender_rst = rst;
    }
}

struct dp_counters {
    _Atomic uint64_t accepted, active, closed, handshakes_ok, handshakes_failed, bypassed,
        refused_hsm, upstream_failed, bad_request, bytes_c2u, bytes_u2c, cache_hit, cache_miss,
        fail_open, up_resumed, up_full, refused_limit;
    _Atomic uint64_t recv_nobufs; /* recvs that found the buffer ring empty (armed again) */
    _Atomic uint64_t non_tls[2][2]; /* [not-tls, server-first][tunnel, block] */
    _Atomic uint64_t proofs[2];     /* proof handshakes: [proven, not proven] */
    _Atomic uint64_t unproven[2];   /* name-based bypasses refused: [sni-mismatch, unproven-name] */
    _Atomic uint64_t unsupported[2]; /* a side cannot meet the profile: [bypass, block] */
    _Atomic uint64_t ocsp[DP_OCSP_RESULTS]; /* OCSP fetches by result (dp_ocsp.c) */
    _Atomic uint64_t outcome[DP_OUTCOMES];
};

/* Upstream TLS sessions, per loop, keyed by name + address: a resumed upstream handshake costs
 * a third of a full one (OPENSSL-NOTES.md). Direct-mapped ([upstream] session_cache slots,
 * fixed at start): a collision replaces. A kept session holds the upstream's certificates,
 * about 11 KiB each (bench/results/soak.md), so the slots bound that memory. */
struct sess_slot {
    char key[300];
    SSL_SESSION *sess;
};

struct dp_ocsp_loop;
struct dp_ocsp_cache;

struct dp_loop {
    int idx;
    struct dp_ocsp_loop *ocsp;  /* its OCSP fetches (dp_ocsp.c) */
    struct sess_slot *sess;
    uint32_t nsess; /* slots in sess (0: no upstream session cache) */
    uint64_t sess_resumed, sess_full;
    struct dp_server *srv;
    struct io_uring ring;
    bool ring_ok;
    int lfd[2];              /* explicit, transparent listeners (-1 = off) */
    bool accept_armed[2];
    struct dp_conn **chunks;  /* the connection table: chunks of DP_CHUNK, made as it grows */
    uint32_t nchunks;         /* room for nchunks * DP_CHUNK >= the server's max_conns */
    uint32_t used;            /* slots handed out so far (high-water mark) */
    struct dp_conn *free_list;
    uint32_t nactive;
    struct dp_conn *wheel[DP_WHEEL]; /* deadlines: one list per tick of DP_TICK_MS */
    uint64_t wheel_tick;             /* the last tick whose list was run */
    struct cc_loop *ccl;      /* for the current generation's cache */
    struct dp_gen *g;         /* the generation new connections use */
    struct cc_loop *old_ccl;  /* previous cache's handle, polled until its mints are done */
    struct dp_gen *old_g;
    uint8_t cc_epoch;         /* tags the eventfd read of the current ccl */
    uint64_t cc_val, res_val; /* eventfd read targets */
    struct dp_res_done res_done;
    struct __kernel_timespec tick;
    pthread_t th;
    int start_err;
    struct dp_counters ctr;
    struct dp_inb_loop *inb;  /* inbound listeners' sockets and signature queue (dp_inbound.c) */
    bool stopping;
    uint64_t drain_deadline_ns;
    /* bytes in flight (dp_buf.c) */
    struct io_uring_buf_ring *br; /* the receive buffer ring (NULL: a heap buffer per recv) */
    uint8_t *br_bufs;             /* its DP_RING_BUFS buffers */
    size_t br_size;               /* the whole mapping */
    struct dp_chunk *chunk_free;  /* free output chunks, at most DP_CHUNK_CACHE */
    uint8_t *rx_free[DP_RX_CACHE]; /* free own receive buffers of streaming sides (a stack) */
    uint32_t nrx_free;
    uint32_t nchunk_free;
    uint64_t *nobufs;             /* tokens (| dir << 48) of sides waiting for a ring buffer */
    uint32_t nnobufs, nobufs_cap;
    struct dp_conn *hot;          /* connections whose OpenSSL buffers may be allocated */
};

struct dp_server {
    const struct px_cfg *cfg; /* the first configuration: listeners, threads */
    struct hsm_pool *pool;
    pthread_mutex_t gen_lock;
    struct dp_gen *gen;       /* current generation, under gen_lock */
    _Atomic unsigned gen_id;
    struct dp_resolver *res;
    struct dp_excl *excl;     /* the exclusion cache, kept across reloads */
    struct dp_excl *proofs;   /* names proven per (address, port): the same table, reason 1 =
                                 proven, 2 = not proven */
    struct dp_ocsp_cache *ocsp; /* OCSP answers, shared by the loops (dp_ocsp.c) */
    struct dp_alog *alog;
    struct dp_alog *keylog;
    struct dp_export *exp;    /* NULL when no [export] sink is configured */
    struct dp_inbound *inb;   /* [inbound.NAME] listeners; NULL when there is none */
    int nloops;
    struct dp_loop *loops;
    int port_explicit, port_transparent;
    int max_conns;            /* [listen] max_connections, or what RLIMIT_NOFILE allows */
    _Atomic int nconns;       /* client connections held now, all loops */
    _Atomic uint64_t refused_unlogged, refused_log_ns; /* since the last summary line */
    _Atomic bool stop;
    _Atomic int drain_ms;
    pthread_mutex_t start_lock;
    pthread_cond_t start_cond;
    int started;
};

/* ---- shared by the dataplane's files ------------------------------------------------------ */

/* dp_addr.c: socket addresses */
/* "IP:PORT" or "[IPv6]:PORT" (no names) into ss; PX_E_INVAL otherwise. */
int dp_addr_parse(const char *s, struct sockaddr_storage *ss, socklen_t *len, int *port);
/* "ip:port", "[ip6]:port" or "-". */
void dp_addr_str(const struct sockaddr_storage *ss, char *out, size_t cap);
/* Same family, address and port. */
bool dp_addr_same(const struct sockaddr_storage *a, const struct sockaddr_storage *b);

/* dp_server.c: reload generations */
void dp_gen_ref(struct dp_gen *g);
/* Drops one reference; the last one frees the TLS contexts and the cache reference. NULL ok. */
void dp_gen_unref(struct dp_gen *g);
/* On loop l: takes the server's current generation for new connections. */
void dp_gen_switch(struct dp_loop *l);

/* dp_loop.c: one loop */
extern __thread struct dp_loop *dp_loop_cur; /* the loop of this thread */
/* Table room for max connections (made as used), first generation g, cache handle of cc. */
int dp_loop_init(struct dp_loop *l, struct dp_gen *g, struct cc_ctx *cc, int max);
void dp_loop_fini(struct dp_loop *l);
/* The loop thread (arg: its struct dp_loop). */
void *dp_loop_main(void *arg);
void dp_loop_arm_accept(struct dp_loop *l, int which);
/* Re-arms the eventfd read of the cache handle (which 0) or of the resolver (which 1). */
void dp_loop_arm_events(struct dp_loop *l, int which);
/* The live connection a token names, or NULL when it has ended (or the slot was reused). */
struct dp_conn *dp_conn_by_token(struct dp_loop *l, uint64_t tok);
/* A free slot of the table (grown by a chunk when needed), or NULL when out of memory. */
struct dp_conn *dp_loop_slot_take(struct dp_loop *l);
void dp_loop_slot_put(struct dp_loop *l, struct dp_conn *c);
/* Arms c's one timer for the first tick at or after at_ns (replacing an armed one). */
void dp_timer_set(struct dp_conn *c, uint64_t at_ns);
void dp_timer_cancel(struct dp_conn *c);
/* A connection refused at the limit: counted; one summary line for the whole server at most
 * every 10 s (the first refusal at once). */
void dp_loop_refused(struct dp_loop *l);

/* dp_conn.c: a connection from accept to close */
/* Moves c to stage next: the only place c->state is written. */
void dp_conn_enter(struct dp_conn *c, enum dp_state next);
void dp_conn_accept(struct dp_loop *l, int which, int res, uint32_t flags);
/* Runs the state machine until it waits for something, then arms the I/O it waits for. */
void dp_conn_run(struct dp_conn *c);
void dp_conn_on_connect(struct dp_conn *c, int res);
void dp_conn_on_resolved(struct dp_loop *l);
/* Its timer fired: ends it when a deadline has passed, else arms the next one. */
void dp_conn_on_timer(struct dp_conn *c, uint64_t now);
/* Opens the upstream socket and submits connect + link timeout (state S_UP_CONNECTING). */
void dp_conn_connect(struct dp_conn *c);
/* A connection from l's table for socket fd (-1: none, as the fuzz targets use it), with its
 * buffers and output BIOs, a reference of l's generation and its handshake deadline armed; NULL
 * (and *at_limit, when not NULL) when the server holds max_conns already, or out of memory. */
struct dp_conn *dp_conn_new(struct dp_loop *l, int fd, bool *at_limit);
/* Frees everything once no operation is in flight (else a later CQE does). */
void dp_conn_release(struct dp_conn *c);
/* Ends the connection now: pending operations are woken by shutdown and drained. */
void dp_conn_abort(struct dp_conn *c, enum dp_outcome why);
/* Ends after flushing what is queued (an HTTP answer or a TLS alert). */
void dp_conn_finish(struct dp_conn *c, enum dp_outcome why);

/* dp_tls.c: both TLS halves */
int dp_tls_ctx_init(struct dp_gen *g, const struct px_cfg *cfg, char *err, size_t errlen);
/* Where SSLKEYLOGFILE lines go (borrowed; NULL = off). Set before the first generation. */
void dp_tls_keylog_set(struct dp_alog *a);
/* Client-side SSL over memory BIOs, accept state, ClientHello buffer; the caller then
 * enters S_CLIENT_HELLO (transparent) or stays in S_CONNECT_REQ until the 200 is queued. */
int dp_tls_client_start(struct dp_conn *c);
/* Upstream SSL: SNI, host check, client's ALPN, cached session (S_UP_HANDSHAKE). */
int dp_tls_upstream_start(struct dp_conn *c);
/* Client bytes into the TLS side; kept raw while the ClientHello is read (for a replay). */
void dp_tls_client_bytes(struct dp_conn *c, const uint8_t *p, size_t n);
/* Only the keeping: received bytes that are already the client side's input. */
void dp_tls_hello_keep(struct dp_conn *c, const uint8_t *p, size_t n);
/* Makes the client handshake fail with handshake_failure, outcome why (S_CLIENT_HANDSHAKE). */
void dp_tls_refuse(struct dp_conn *c, enum dp_outcome why);
/* The same with an access_denied alert, outcome blocked. */
void dp_tls_deny(struct dp_conn *c);
/* Keeps the upstream session of a cleanly finished connection for the next one. */
void dp_tls_sess_store(struct dp_conn *c);

/* dp_leaf.c: the leaf for the client */
/* Upstream handshake done: records verification and ALPN, asks certcache for the leaf. */
void dp_leaf_get(struct dp_conn *c);
/* S_REOPEN: once nothing of the old upstream is in flight, connects a new one. */
void dp_leaf_reopen(struct dp_conn *c);
/* The upstream asked for a client certificate (the upstream handshake is paused): [profile]
 * client_auth = block blocks; bypass excludes the host and replays the kept ClientHello on a
 * fresh upstream connection, spliced (the fail-open route). */
void dp_leaf_client_auth(struct dp_conn *c);
/* S_STATUS: the fetch ended with status (enum dp_cert_status): the profile's answer to it, then
 * the leaf as dp_leaf_get would go on. */
void dp_leaf_status(struct dp_conn *c, int status);
/* A forward-trust leaf for c's name alone (no upstream), for a block page: resumes the client
 * handshake with it (S_CLIENT_HANDSHAKE, maybe through S_MINTING), or denies when none. */
void dp_leaf_for_page(struct dp_conn *c);

/* dp_buf.c: bytes in flight, the BIOs over them */
/* The loop's receive buffer ring (on the loop thread, after the ring); -errno: none, every
 * recv then gets a heap buffer. */
int dp_buf_ring_init(struct dp_loop *l);
/* Frees the ring's mapping and the chunk cache, once every connection is released. */
void dp_buf_loop_fini(struct dp_loop *l);
/* Fills sqe with a recv for sd (a buffer from the ring, picked by the kernel). */
void dp_buf_prep_recv(struct dp_loop *l, struct side *sd, struct io_uring_sqe *sqe);
/* A recv completed: its bytes become sd's input (returned: the first byte), NULL for none. */
uint8_t *dp_buf_recv_take(struct side *sd, int res, uint32_t flags);
/* The input is done with (a ring buffer goes back to the ring). */
void dp_buf_in_drop(struct side *sd);
/* After the completion that filled it: what is left of a ring buffer moves to the heap. */
void dp_buf_spill(struct side *sd);
/* Appends to the output queue (copied); n, or -ENOMEM (part may be queued). */
int dp_buf_out_append(struct side *sd, const void *p, size_t n);
/* Fills sqe with a send of what is queued (the head chunk, or up to DP_SEND_IOV chunks with
 * one sendmsg); sd->oq must not be NULL (then the head has unsent bytes). */
void dp_buf_prep_send(struct side *sd, struct io_uring_sqe *sqe);
/* n bytes of the head were sent: emptied chunks go (to the loop's cache). */
void dp_buf_out_sent(struct side *sd, uint32_t n);
/* Drops everything queued (no send in flight). */
void dp_buf_out_drop(struct side *sd);
/* At release: input, output queue, CONNECT head. */
void dp_buf_side_fini(struct side *sd);
/* BIOs over sd: the input (OpenSSL's rbio; a write hands bytes over as input) and the output
 * queue (the wbio). Views: freeing them leaves the bytes to the side. NULL on no memory. */
BIO *dp_bio_in_new(struct side *sd);
BIO *dp_bio_out_new(struct side *sd);
/* A recv of side dir got -ENOBUFS: armed again by dp_buf_nobufs_run at the end of the batch. */
void dp_buf_nobufs(struct dp_conn *c, int dir);
void dp_buf_nobufs_run(struct dp_loop *l);
/* Bytes moved on a TLS side: c's OpenSSL buffers are freed once it is quiet (dp_buf_sweep). */
void dp_buf_hot(struct dp_conn *c);
void dp_buf_cold(struct dp_conn *c);
/* The tick: connections quiet for a tick give their OpenSSL record buffers back. */
void dp_buf_sweep(struct dp_loop *l, uint64_t now);

/* dp_relay.c: moving bytes */
void dp_relay_queue(struct dp_conn *c, int dir, const void *p, size_t n);
/* Submits the sends and recvs the connection's state and backpressure allow. */
void dp_relay_arm(struct dp_conn *c);
/* S_RELAY: decrypts what each side holds and re-encrypts it towards the other side. */
void dp_relay_step(struct dp_conn *c);
/* S_SPLICE: ends the connection once a side has closed and nothing is left to send. */
void dp_relay_splice_step(struct dp_conn *c);
/* Drops the client's TLS objects and passes bytes untouched (S_SPLICE); replays the hello. */
void dp_relay_splice(struct dp_conn *c);
void dp_relay_on_recv(struct dp_conn *c, int dir, int res, uint32_t flags);
void dp_relay_on_send(struct dp_conn *c, int dir, int res);

/* dp_policy.c: the decision for a new connection */
/* The generation's policy state: decision counters, the block pages' signing key. */
int dp_policy_load(struct dp_gen *g, const struct px_cfg *cfg, char *err, size_t errlen);
void dp_policy_unload(struct dp_gen *g);
/* Whether host is on g's [policy] bypass list (the fuzz targets check the stage against it). */
bool dp_policy_bypassed(const struct dp_gen *g, const char *host);
/* S_POLICY: names the connection (SNI, else CONNECT host or destination) and routes it. */
void dp_policy_step(struct dp_conn *c);
/* Blocks c (reason: static string): a 403 page on our leaf when the client offered http/1.1,
 * else an access_denied alert. From S_POLICY or once the upstream is checked. */
void dp_policy_block(struct dp_conn *c, const char *reason);
/* The exclusion cache's key of c: SNI, else the destination address (no port). */
void dp_policy_excl_key(const struct dp_conn *c, char *out, size_t cap);
/* The upstream handshake of a connection that was proving its name is done: records the proof.
 * Proven: the bypass goes ahead (S_REOPEN, then spliced); returns true. Not proven: false, and
 * the connection is inspected (or blocked, [policy] unproven = block: state changed). */
bool dp_policy_proof_done(struct dp_conn *c);
/* The upstream handshake failed with err (an OpenSSL error code): when it is the profile's
 * versions or cipher suites, [profile] unsupported passes the client through or blocks it
 * (true: c moved on); false: an ordinary upstream failure. */
bool dp_policy_upstream_failed(struct dp_conn *c, unsigned long err);
/* Whether a client's alert is how pinned apps refuse a leaf (42, 43, 46, 48). */
bool dp_policy_pinning_alert(uint8_t alert);
/* The client gave up on our leaf (a pinning alert, or closed before any data): one event. */
void dp_policy_pinned_event(struct dp_conn *c);
/* S_BLOCK_PAGE: reads the request head, answers 403 naming the rule and reason, closes. */
void dp_policy_page_step(struct dp_conn *c);
/* Entering S_CLIENT_HELLO with nothing read yet: starts the [policy] first_byte_ms timer. */
void dp_policy_first_byte_arm(struct dp_conn *c);
/* Stops the timer (the first byte came, or the connection ends); its CQE still comes back. */
void dp_policy_first_byte_cancel(struct dp_conn *c);
/* The timer's CQE (res -ETIME when it fired). */
void dp_policy_first_byte_done(struct dp_conn *c, int res);
/* Whether the first client bytes can be a TLS record (handshake, version 3.x). */
bool dp_policy_looks_tls(const uint8_t *p, uint32_t n);
/* The client's first bytes are not TLS: tunnel or block ([policy] non_tls, rules). */
void dp_policy_not_tls(struct dp_conn *c);
/* S_FIRST_BYTE: the client spoke first (TLS: back to S_CLIENT_HELLO; else not_tls). */
void dp_policy_first_byte_step(struct dp_conn *c);
/* S_FIRST_BYTE: the upstream spoke first: tunnel (spliced, state S_SPLICE) or block. */
void dp_policy_server_first(struct dp_conn *c);

/* dp_ocsp.c: the upstream certificate's revocation status ([profile] ocsp) */
/* DP_CS_NONE: nothing checked (ocsp off, no issuer, no responder); GOOD, REVOKED, UNKNOWN: the
 * responder's word (stapled, fetched or cached); TIMEOUT: no answer within ocsp_timeout_ms;
 * ERROR: no usable answer (refused, not HTTP 200, does not parse or verify, too many fetches);
 * PENDING: a fetch is under way, the connection waits in S_STATUS (dp_leaf_status next). */
enum dp_cert_status {
    DP_CS_NONE = 0, DP_CS_GOOD, DP_CS_REVOKED, DP_CS_UNKNOWN, DP_CS_TIMEOUT, DP_CS_ERROR,
    DP_CS_PENDING
};
#define DP_TOKEN_OCSP (1ull << 63) /* a resolver job of an OCSP fetch, not of a connection */
struct dp_ocsp_cache *dp_ocsp_cache_new(void);
void dp_ocsp_cache_free(struct dp_ocsp_cache *k);
struct dp_ocsp_loop *dp_ocsp_loop_new(void);
/* Frees every fetch (the ring is gone); NULL ok. */
void dp_ocsp_loop_free(struct dp_ocsp_loop *o);
/* The upstream SSL is made: asks for a stapled response when the profile checks status. */
void dp_ocsp_upstream_start(struct dp_conn *c, const struct px_profile *pf);
/* The upstream chain verified: its leaf's status (enum dp_cert_status). DP_CS_PENDING: c is
 * in S_STATUS until the fetch ends and dp_leaf_status is called with the answer. */
int dp_ocsp_status(struct dp_conn *c, const struct px_profile *pf);
/* The loop was woken (its resolver eventfd): applies the outcomes other loops' fetches handed
 * to its waiting connections. */
void dp_ocsp_on_wake(struct dp_loop *l);
/* c leaves S_STATUS or ends: its own deadline timer, if any, is removed (its CQE comes back). */
void dp_ocsp_wait_cancel(struct dp_conn *c);
/* The own deadline timer's CQE (op OP_OCSP_WAIT, dir 0): -ETIME answers c "timeout". */
void dp_ocsp_wait_done(struct dp_conn *c, int res);
/* A CQE of an OCSP fetch (op OP_OCSP). */
void dp_ocsp_on_cqe(struct dp_loop *l, int step, uint32_t slot, uint16_t gen, int res);
/* The resolver's answer for a fetch's responder name (token with DP_TOKEN_OCSP); takes j. */
void dp_ocsp_on_resolved(struct dp_loop *l, struct dp_res_job *j);
/* The body of an HTTP response (status 200, one run of bytes) in buf: 0, or PX_E_INVAL. */
PX_MUST_CHECK int dp_ocsp_http_body(const uint8_t *buf, size_t len, const uint8_t **body,
                                    size_t *blen);
/* A DER OCSPResponse for id: DP_CS_GOOD, _REVOKED or _UNKNOWN when it is successful, signed by
 * the issuer (or its delegated responder) chaining to store through chain, carries req's nonce
 * when it carries one (req may be NULL), and is current at now (seconds since the epoch; its
 * nextUpdate into *next_update, 0 when it has none); else PX_E_INVAL. Borrows everything. */
int dp_ocsp_verify(const uint8_t *der, size_t len, OCSP_CERTID *id, OCSP_REQUEST *req,
                   STACK_OF(X509) *chain, X509_STORE *store, int64_t now, int64_t *next_update);

/* dp_excl.c: the exclusion cache (shared by the loops, kept across reloads) */
struct dp_excl;
struct dp_excl *dp_excl_new(uint32_t cap);
void dp_excl_free(struct dp_excl *x);
/* The reason (host, port) is excluded, or DP_EXCL_NONE; counts a hit. */
int dp_excl_lookup(struct dp_excl *x, const char *host, uint16_t port);
void dp_excl_add(struct dp_excl *x, const char *host, uint16_t port, int reason, int ttl_s);
/* One pinned-client event; true when it made (host, port) an exclusion (threshold reached). */
bool dp_excl_pinned_event(struct dp_excl *x, const char *host, uint16_t port, int threshold,
                          int ttl_s);
int dp_excl_list(struct dp_excl *x, struct dp_excl_info *out, int cap);
int dp_excl_clear(struct dp_excl *x, const char *host);
void dp_excl_stats(struct dp_excl *x, uint64_t *entries, uint64_t added[DP_EXCL_REASONS]);

/* dp_inbound.c: inbound inspection, our own servers' TLS with their keys in the HSM */
/* Listeners, TLS contexts (the keys checked against the certificates), each loop's signature
 * queue; after the loops are set up. 0, or negative and one line in err (run stops). */
int dp_inbound_new(struct dp_server *s, char *err, size_t errlen);
void dp_inbound_free(struct dp_server *s);
/* Loop thread: arms the listeners' accepts and the signature queue's read. */
void dp_inbound_loop_start(struct dp_loop *l);
/* Loop thread, once stopping: no more accepts. */
void dp_inbound_loop_stop(struct dp_loop *l);
/* Signatures submitted by l and not yet come back (the loop ends only at 0). */
uint32_t dp_inbound_loop_pending(const struct dp_loop *l);
void dp_inbound_accept(struct dp_loop *l, int which, int res, uint32_t flags);
/* The signature queue's eventfd fired: resumes the handshakes whose signatures are in. */
void dp_inbound_on_cq(struct dp_loop *l);
/* The backend connect finished (dp_conn_on_connect, for inbound connections). */
void dp_inbound_connected(struct dp_conn *c, int res);
/* Before c's SSL objects are freed: a paused handshake is finished (failed) first. */
void dp_inbound_conn_release(struct dp_conn *c);
/* Stage steps: S_IN_HANDSHAKE, S_IN_BACKEND_TLS, S_IN_RELAY. */
void dp_inbound_hs_step(struct dp_conn *c);
void dp_inbound_backend_step(struct dp_conn *c);
void dp_inbound_relay_step(struct dp_conn *c);
/* The listener's name ("" for a forward-proxy connection); whether it was resumed. */
const char *dp_inbound_name(const struct dp_conn *c);
bool dp_inbound_resumed(const struct dp_conn *c);
/* The key's sign function (dp_hsmkey.c), inside the SSL's async job: submits, pauses, returns
 * the signature's length or a negative code. */
int dp_inbound_sign(int key, enum hsm_alg alg, const uint8_t *dg, size_t dlen, uint8_t *sig,
                    size_t cap);

/* dp_hsmkey.c: HSM-held keys as OpenSSL keys (a provider in a library context of its own) */
int dp_hsmkey_init(char *err, size_t errlen);
void dp_hsmkey_fini(void);
OSSL_LIB_CTX *dp_hsmkey_libctx(void);
/* A key whose signatures are made by hsm_offload key `key`; spki: its public key. NULL on
 * failure. */
EVP_PKEY *dp_hsmkey_new(int key, enum hsm_key_type type, const uint8_t *spki, size_t len);

/* dp_alog.c: the access-log line of a connection that ends */
void dp_alog_conn(struct dp_conn *c);

/* ---- small helpers on the hot path ---------------------------------------------------------- */

/* user_data of an operation: never a pointer (a late CQE of a reused slot is recognised). */
static inline uint64_t dp_ud_make(enum dp_op op, int dir, const struct dp_conn *c)
{
    union dp_ud u = {.f = {.op = (uint8_t)op,
                           .dir = (uint8_t)dir,
                           .gen = c ? c->gen : 0,
                           .slot = c ? c->slot : 0}};
    return u.u;
}

/* An SQE; flushes the SQ once when it is full. NULL only if that submit failed. */
static inline struct io_uring_sqe *dp_sqe(struct dp_loop *l)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&l->ring);
    if (sqe == NULL) {
        io_uring_submit(&l->ring);
        sqe = io_uring_get_sqe(&l->ring);
    }
    return sqe;
}

/* Bytes waiting to be sent to side dir (its output queue, the part in flight included). */
static inline size_t dp_pending_out(const struct dp_conn *c, int dir)
{
    return c->s[dir].oq_bytes;
}

/* The connection in slot, or NULL past the slots handed out. */
static inline struct dp_conn *dp_conn_at(struct dp_loop *l, uint32_t slot)
{
    return slot < l->used ? &l->chunks[slot / DP_CHUNK][slot % DP_CHUNK] : NULL;
}

/* {gen, slot} of a connection, for completions that come back from other threads. */
static inline uint64_t dp_conn_token(const struct dp_conn *c)
{
    return ((uint64_t)c->gen << 32) | c->slot;
}

/* ---- decrypted traffic export (dp_export.c, dp_xframe.c) ------------------------------------------ */

struct dp_export;
/* *out = NULL (and 0) when no sink is configured; an error names the key. */
int dp_export_new(const struct px_cfg *cfg, struct dp_export **out, char *err, size_t errlen);
/* Main thread, once privileges are dropped: starts the writer (x may be NULL). */
PX_MUST_CHECK int dp_export_start(struct dp_export *x);
void dp_export_free(struct dp_export *x);
/* Loop thread (dp_xframe.c). x may be NULL. begin: the relay starts (SYN, SYN-ACK, ACK);
 * data: plaintext relayed from side dir (framed and copied at once, p is the caller's); end:
 * FIN both ways, or an RST when the connection failed or a side reset it, from the side that
 * ended first (dp_xflow_ended; the client when neither did). batch_end: after each batch of the
 * loop's completions (the next records read the clock again; the writer gets what is framed). */
void dp_export_begin(struct dp_export *x, struct dp_conn *c);
void dp_export_data(struct dp_export *x, struct dp_conn *c, int dir, const uint8_t *p, size_t n);
void dp_export_end(struct dp_export *x, struct dp_conn *c, bool reset);
void dp_export_batch_end(struct dp_export *x, struct dp_loop *l);
void dp_export_stats(struct dp_export *x, struct dp_export_stats *o);

#endif
