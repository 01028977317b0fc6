/* SPDX-License-Identifier: MIT */
/*
 * dp_alog.c - the access log: one JSON line per connection, written by its own thread so a
 * slow disk or a full pipe never stalls a loop.
 * Owns a bounded queue of lines and the output file (stdout when no path is given).
 * Invariants: at most ALOG_MAX lines queued; a line dropped because the queue is full or lost
 * because the file cannot be written is counted and reported (px_sink_lost, px_lograte.c).
 */
#include "dp_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/x509.h>

#define ALOG_MAX 65536

struct line {
    struct line *next;
    size_t len;
    char text[];
};

struct dp_alog {
    int fd;
    bool own_fd;
    enum px_sink sink;
    char path[256];
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct line *head, *tail;
    int queued;
    bool stop;
    pthread_t th;
};

static void *alog_main(void *arg)
{
    struct dp_alog *a = arg;
    for (;;) {
        pthread_mutex_lock(&a->lock);
        while (a->head == NULL && !a->stop) {
            pthread_cond_wait(&a->cond, &a->lock);
        }
        struct line *list = a->head;
        a->head = a->tail = NULL;
        a->queued = 0;
        bool stop = a->stop;
        pthread_mutex_unlock(&a->lock);
        while (list != NULL) {
            struct line *n = list->next;
            size_t off = 0;
            while (off < list->len) {
                ssize_t w = write(a->fd, list->text + off, list->len - off);
                if (w < 0 && errno == EINTR) {
                    continue;
                }
                if (w <= 0) {
                    px_sink_lost(a->sink, a->path, w < 0 ? strerror(errno) : "short write");
                    break;
                }
                off += (size_t)w;
            }
            if (off == list->len) {
                px_sink_ok(a->sink);
            }
            free(list);
            list = n;
        }
        if (stop) {
            return NULL;
        }
    }
}

struct dp_alog *dp_alog_new(const char *path, int mode, enum px_sink sink, char *err,
                            size_t errlen)
{
    struct dp_alog *a = calloc(1, sizeof(*a));
    if (a == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (path != NULL && path[0] != '\0') {
        a->fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, (mode_t)mode);
        if (a->fd < 0) {
            snprintf(err, errlen, "[log] cannot open %s: %s", path, strerror(errno));
            free(a);
            return NULL;
        }
        a->own_fd = true;
        snprintf(a->path, sizeof(a->path), "%s", path);
    } else {
        snprintf(a->path, sizeof(a->path), "stdout");
        a->fd = STDOUT_FILENO;
    }
    a->sink = sink;
    pthread_mutex_init(&a->lock, NULL);
    pthread_cond_init(&a->cond, NULL);
    if (pthread_create(&a->th, NULL, alog_main, a) != 0) {
        snprintf(err, errlen, "cannot start the access-log thread");
        if (a->own_fd) {
            close(a->fd);
        }
        free(a);
        return NULL;
    }
    return a;
}

void dp_alog_free(struct dp_alog *a)
{
    if (a == NULL) {
        return;
    }
    pthread_mutex_lock(&a->lock);
    a->stop = true;
    pthread_cond_signal(&a->cond);
    pthread_mutex_unlock(&a->lock);
    pthread_join(a->th, NULL);
    if (a->own_fd) {
        close(a->fd);
    }
    free(a);
}

void dp_alog_write(struct dp_alog *a, const char *text, size_t len)
{
    struct line *l = malloc(sizeof(*l) + len);
    if (l == NULL) {
        return;
    }
    memcpy(l->text, text, len);
    l->len = len;
    l->next = NULL;
    pthread_mutex_lock(&a->lock);
    if (a->queued >= ALOG_MAX) {
        pthread_mutex_unlock(&a->lock);
        free(l);
        px_sink_lost(a->sink, a->path, "the writer cannot keep up (queue full)");
        return;
    }
    if (a->tail) {
        a->tail->next = l;
    } else {
        a->head = l;
    }
    a->tail = l;
    a->queued++;
    pthread_cond_signal(&a->cond);
    pthread_mutex_unlock(&a->lock);
}

/* JSON string body: escapes quotes, backslashes and control bytes. */
static size_t json_esc(char *out, size_t cap, const char *s)
{
    size_t n = 0;
    for (; *s && n + 7 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            out[n++] = '\\';
            out[n++] = (char)ch;
        } else if (ch < 0x20 || ch >= 0x7f) {
            n += (size_t)snprintf(out + n, cap - n, "\\u%04x", ch);
        } else {
            out[n++] = (char)ch;
        }
    }
    out[n] = '\0';
    return n;
}

void dp_alog_conn(struct dp_conn *c)
{
    static const char *ocsp_names[] = {"", "good", "revoked", "unknown", "timeout", "error"};
    struct dp_server *srv = c->loop->srv;
    if (srv->alog == NULL) {
        return;
    }
    char client[64], dst[64], host[300], sni[300], alpn[80], ver[128], line[1600];
    dp_addr_str(&c->client_addr, client, sizeof(client));
    if (c->dstlen > 0) {
        dp_addr_str(&c->dst, dst, sizeof(dst));
    } else {
        snprintf(dst, sizeof(dst), "-");
    }
    json_esc(host, sizeof(host), c->host);
    json_esc(sni, sizeof(sni), c->sni);
    char a[64] = "";
    if (c->alpn_sel_len > 0 && c->alpn_sel_len < sizeof(a)) {
        memcpy(a, c->alpn_sel, c->alpn_sel_len);
        a[c->alpn_sel_len] = '\0';
    }
    json_esc(alpn, sizeof(alpn), a);
    if (c->verify_result < 0) {
        snprintf(ver, sizeof(ver), "none");
    } else if (c->verify_result == X509_V_OK) {
        snprintf(ver, sizeof(ver), "ok");
    } else {
        json_esc(ver, sizeof(ver), X509_verify_cert_error_string(c->verify_result));
    }
    char inb[120] = "";
    if (c->inbound != 0) {
        char ln[100];
        json_esc(ln, sizeof(ln), dp_inbound_name(c));
        snprintf(inb, sizeof(inb), ",\"listener\":\"%s\",\"resumed\":%s", ln,
                 dp_inbound_resumed(c) ? "true" : "false");
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line),
                     "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"client\":\"%s\","
                     "\"dst\":\"%s\",\"host\":\"%s\",\"port\":%u,\"sni\":\"%s\",\"alpn\":\"%s\","
                     "\"mode\":\"%s\"%s,\"upstream_verify\":\"%s\",\"upstream_resumed\":%s,"
                     "\"cache\":\"%s\","
                     "\"hsm_wait_ms\":%.3f,\"bytes_up\":%llu,\"bytes_down\":%llu,"
                     "\"duration_ms\":%.3f,\"rule\":\"%s\",\"action\":\"%s\","
                     "\"reason\":\"%s\",\"ocsp\":\"%s\",\"ocsp_src\":\"%s\","
                     "\"ocsp_ms\":%.3f,\"outcome\":\"%s\",\"export\":\"%s\"}\n",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, client, dst, host, c->port, sni, alpn,
                     c->inbound ? "inbound" : c->transparent ? "transparent" : "explicit", inb, ver,
                     c->up_resumed ? "true" : "false", c->cache_result,
                     (double)c->hsm_wait_ns / 1e6, (unsigned long long)c->bytes_c2u,
                     (unsigned long long)c->bytes_u2c,
                     (double)(px_now_ns() - c->start_ns) / 1e6, c->rule ? c->rule : "",
                     c->rule ? px_action_name(c->action) : "", c->reason ? c->reason : "",
                     ocsp_names[c->ocsp_status < 6 ? c->ocsp_status : 0],
                     c->ocsp_src ? c->ocsp_src : "", (double)c->ocsp_wait_ns / 1e6,
                     dp_outcome_name(c->outcome),
                     c->xf.was_on ? "yes" : c->xf.excluded ? "excluded" : "no");
    if (n > 0) {
        dp_alog_write(srv->alog, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
    }
}
