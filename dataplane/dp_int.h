/* SPDX-License-Identifier: MIT */
/*
 * dp_int.h - dataplane internals shared by its files. Private to dataplane/.
 */
#ifndef DP_INT_H
#define DP_INT_H

#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/socket.h>

#include <liburing.h>
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

struct dp_resolver;
struct dp_res_job {
    struct dp_res_job *next;
    uint64_t token; /* conn slot | gen */
    char host[256];
    uint16_t port;
    int status; /* 0 or EAI_* (negative) */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    struct dp_res_done *done; /* where to deliver */
};
struct dp_res_done {
    _Atomic(struct dp_res_job *) head;
    int evfd;
};
struct dp_resolver *dp_resolver_new(int threads);
void dp_resolver_free(struct dp_resolver *r);
/* Queues a lookup; the job comes back on done (MPSC + eventfd). PX_E_FULL when too many. */
int dp_resolver_submit(struct dp_resolver *r, struct dp_res_job *job);
/* Takes every finished job, oldest first. */
struct dp_res_job *dp_res_done_take(struct dp_res_done *d);

/* ---- access log (dp_alog.c) ------------------------------------------------------------- */

struct dp_alog;
/* Opens path (append, created with mode) or uses stdout when path is empty. */
struct dp_alog *dp_alog_new(const char *path, int mode, char *err, size_t errlen);
void dp_alog_free(struct dp_alog *a);
/* Queues one line (copied). Never blocks: drops and counts when the queue is full. */
void dp_alog_write(struct dp_alog *a, const char *line, size_t len);

#endif
