/* SPDX-License-Identifier: MIT */
/*
 * tcp_relay.c - the floor of a relay on this machine: a plain TCP relay with no TLS at all,
 * so that bench/run-bench.sh can measure in the same run what the kernel's TCP work costs for
 * the same bytes (recv and send on both sides, as tlsmint does them, or splice(2) through a
 * pipe). One thread, epoll, non-blocking sockets; every accepted connection is connected to
 * one fixed upstream address.
 * Owns its connections (a fixed table). Invariants: per direction at most one buffer of bytes
 * in flight; a side is read only while that buffer is empty (backpressure).
 * Not here: anything TLS, transparent destinations (the upstream is given), IPv6.
 *
 * usage: tcp-relay [-s] [-b BYTES] LISTEN_PORT UPSTREAM_IP:PORT
 *   -s        splice(2) through a pipe per direction instead of recv/send
 *   -b BYTES  bytes per recv (default 65536)
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXC 4096

struct dir {
    int from, to;   /* descriptors */
    char *buf;      /* recv/send mode */
    size_t len, off;
    int pipe[2];    /* splice mode */
    size_t inpipe;
    int eof;
};
struct conn {
    int fd[2];
    struct dir d[2]; /* 0: client -> upstream, 1: upstream -> client */
    int used;
};

static struct conn g_conns[MAXC];
static int g_ep, g_splice;
static size_t g_bufsz = 65536;
static struct sockaddr_in g_up;

static void conn_close(struct conn *c)
{
    for (int i = 0; i < 2; i++) {
        close(c->fd[i]);
        free(c->d[i].buf);
        if (g_splice) {
            close(c->d[i].pipe[0]);
            close(c->d[i].pipe[1]);
        }
    }
    memset(c, 0, sizeof(*c));
}

static void want(struct conn *c)
{
    /* a descriptor waits for input when its direction's buffer is empty, for output when the
     * other direction has bytes for it */
    for (int i = 0; i < 2; i++) {
        struct dir *rd = &c->d[i], *wd = &c->d[i ^ 1];
        uint32_t ev = 0;
        size_t rpending = g_splice ? rd->inpipe : rd->len - rd->off;
        size_t wpending = g_splice ? wd->inpipe : wd->len - wd->off;
        if (rpending == 0 && !rd->eof) {
            ev |= EPOLLIN;
        }
        if (wpending > 0) {
            ev |= EPOLLOUT;
        }
        struct epoll_event e = {.events = ev, .data.u64 = ((uint64_t)(c - g_conns) << 1) | (uint64_t)i};
        epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd[i], &e);
    }
}

/* Moves what it can in direction i; -1 when the connection is over. */
static int pump(struct conn *c, int i)
{
    struct dir *d = &c->d[i];
    for (;;) {
        if (g_splice) {
            if (d->inpipe == 0 && !d->eof) {
                ssize_t n = splice(d->from, NULL, d->pipe[1], NULL, g_bufsz,
                                   SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
                if (n == 0) {
                    d->eof = 1;
                } else if (n < 0) {
                    return errno == EAGAIN ? 0 : -1;
                } else {
                    d->inpipe = (size_t)n;
                }
            }
            while (d->inpipe > 0) {
                ssize_t n = splice(d->pipe[0], NULL, d->to, NULL, d->inpipe,
                                   SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
                if (n < 0) {
                    return errno == EAGAIN ? 0 : -1;
                }
                d->inpipe -= (size_t)n;
            }
        } else {
            if (d->off == d->len && !d->eof) {
                ssize_t n = recv(d->from, d->buf, g_bufsz, 0);
                if (n == 0) {
                    d->eof = 1;
                } else if (n < 0) {
                    return errno == EAGAIN ? 0 : -1;
                } else {
                    d->len = (size_t)n;
                    d->off = 0;
                }
            }
            while (d->off < d->len) {
                ssize_t n = send(d->to, d->buf + d->off, d->len - d->off, MSG_NOSIGNAL);
                if (n < 0) {
                    return errno == EAGAIN ? 0 : -1;
                }
                d->off += (size_t)n;
            }
        }
        if (d->eof) {
            shutdown(d->to, SHUT_WR);
            return c->d[i ^ 1].eof ? -1 : 0;
        }
    }
}

static void accept_one(int lfd)
{
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
    if (fd < 0) {
        return;
    }
    int k = 0;
    while (k < MAXC && g_conns[k].used) {
        k++;
    }
    int up = socket(AF_INET, SOCK_STREAM, 0);
    if (k == MAXC || up < 0 || connect(up, (struct sockaddr *)&g_up, sizeof(g_up)) != 0) {
        close(fd);
        if (up >= 0) {
            close(up);
        }
        return;
    }
    fcntl(up, F_SETFL, O_NONBLOCK);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(up, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct conn *c = &g_conns[k];
    c->used = 1;
    c->fd[0] = fd;
    c->fd[1] = up;
    for (int i = 0; i < 2; i++) {
        c->d[i].from = c->fd[i];
        c->d[i].to = c->fd[i ^ 1];
        if (g_splice) {
            if (pipe2(c->d[i].pipe, O_NONBLOCK) != 0) {
                exit(1);
            }
            fcntl(c->d[i].pipe[1], F_SETPIPE_SZ, (int)g_bufsz);
        } else if ((c->d[i].buf = malloc(g_bufsz)) == NULL) {
            exit(1);
        }
        struct epoll_event e = {.events = EPOLLIN, .data.u64 = ((uint64_t)k << 1) | (uint64_t)i};
        epoll_ctl(g_ep, EPOLL_CTL_ADD, c->fd[i], &e);
    }
}

int main(int argc, char **argv)
{
    int opt;
    while ((opt = getopt(argc, argv, "sb:")) != -1) {
        if (opt == 's') {
            g_splice = 1;
        } else if (opt == 'b') {
            g_bufsz = strtoul(optarg, NULL, 10);
        } else {
            return 2;
        }
    }
    if (argc - optind != 2 || g_bufsz == 0) {
        fprintf(stderr, "usage: tcp-relay [-s] [-b BYTES] LISTEN_PORT UPSTREAM_IP:PORT\n");
        return 2;
    }
    char ip[64];
    snprintf(ip, sizeof(ip), "%s", argv[optind + 1]);
    char *colon = strrchr(ip, ':');
    if (colon == NULL) {
        return 2;
    }
    *colon = '\0';
    g_up.sin_family = AF_INET;
    g_up.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, ip, &g_up.sin_addr) != 1) {
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in la = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[optind]))};
    la.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&la, sizeof(la)) != 0 || listen(lfd, 512) != 0) {
        perror("tcp-relay: listen");
        return 1;
    }
    g_ep = epoll_create1(0);
    struct epoll_event le = {.events = EPOLLIN, .data.u64 = UINT64_MAX};
    epoll_ctl(g_ep, EPOLL_CTL_ADD, lfd, &le);
    struct epoll_event evs[64];
    for (;;) {
        int n = epoll_wait(g_ep, evs, 64, -1);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u64 == UINT64_MAX) {
                accept_one(lfd);
                continue;
            }
            struct conn *c = &g_conns[evs[i].data.u64 >> 1];
            if (!c->used) {
                continue;
            }
            /* either descriptor's event: try both directions */
            if (pump(c, 0) < 0 || pump(c, 1) < 0) {
                conn_close(c);
                continue;
            }
            want(c);
        }
    }
}
