/* SPDX-License-Identifier: MIT */
/*
 * dp_resolve.c - host-name lookups for CONNECT targets, off the loop threads.
 * Owns a few resolver threads and their bounded queue. getaddrinfo blocks, so it runs here;
 * finished jobs go back to the asking loop through an MPSC list plus that loop's eventfd
 * (signalled only on empty -> non-empty), like HSM completions.
 * Not here: caching answers (the system resolver or a local cache does that).
 */
#include "dp_int.h"

#include <netdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define RES_QUEUE_MAX 1024

struct dp_resolver {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct dp_res_job *head, *tail;
    int queued;
    bool stop;
    int nthreads;
    pthread_t th[8];
};

static void deliver(struct dp_res_job *j)
{
    struct dp_res_done *d = j->done;
    struct dp_res_job *old = atomic_load_explicit(&d->head, memory_order_relaxed);
    do {
        j->next = old;
    } while (!atomic_compare_exchange_weak_explicit(&d->head, &old, j, memory_order_release,
                                                    memory_order_relaxed));
    if (old == NULL) {
        uint64_t one = 1;
        ssize_t w = write(d->evfd, &one, sizeof(one));
        (void)w;
    }
}

static void *res_main(void *arg)
{
    struct dp_resolver *r = arg;
    for (;;) {
        pthread_mutex_lock(&r->lock);
        while (r->head == NULL && !r->stop) {
            pthread_cond_wait(&r->cond, &r->lock);
        }
        if (r->stop && r->head == NULL) {
            pthread_mutex_unlock(&r->lock);
            return NULL;
        }
        struct dp_res_job *j = r->head;
        r->head = j->next;
        if (r->head == NULL) {
            r->tail = NULL;
        }
        r->queued--;
        pthread_mutex_unlock(&r->lock);

        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
        struct addrinfo *res = NULL;
        char port[8];
        snprintf(port, sizeof(port), "%u", j->port);
        int e = getaddrinfo(j->host, port, &hints, &res);
        if (e == 0 && res != NULL) {
            /* prefer IPv4 when both exist: loopback tests and most origins answer there */
            struct addrinfo *pick = res;
            for (struct addrinfo *a = res; a != NULL; a = a->ai_next) {
                if (a->ai_family == AF_INET) {
                    pick = a;
                    break;
                }
            }
            memcpy(&j->addr, pick->ai_addr, pick->ai_addrlen);
            j->addrlen = pick->ai_addrlen;
            j->status = 0;
        } else {
            j->status = e != 0 ? e : EAI_NONAME;
        }
        if (res != NULL) {
            freeaddrinfo(res);
        }
        deliver(j);
    }
}

struct dp_resolver *dp_resolver_new(int threads)
{
    struct dp_resolver *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        return NULL;
    }
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->cond, NULL);
    if (threads < 1) {
        threads = 1;
    }
    if (threads > 8) {
        threads = 8;
    }
    for (int i = 0; i < threads; i++) {
        if (pthread_create(&r->th[i], NULL, res_main, r) != 0) {
            break;
        }
        r->nthreads++;
    }
    if (r->nthreads == 0) {
        free(r);
        return NULL;
    }
    return r;
}

void dp_resolver_free(struct dp_resolver *r)
{
    if (r == NULL) {
        return;
    }
    pthread_mutex_lock(&r->lock);
    r->stop = true;
    /* queued jobs are dropped: their loops are gone too */
    while (r->head != NULL) {
        struct dp_res_job *j = r->head;
        r->head = j->next;
        free(j);
    }
    r->tail = NULL;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
    for (int i = 0; i < r->nthreads; i++) {
        pthread_join(r->th[i], NULL);
    }
    free(r);
}

int dp_resolver_submit(struct dp_resolver *r, struct dp_res_job *job)
{
    pthread_mutex_lock(&r->lock);
    if (r->queued >= RES_QUEUE_MAX || r->stop) {
        pthread_mutex_unlock(&r->lock);
        return PX_E_FULL;
    }
    job->next = NULL;
    if (r->tail) {
        r->tail->next = job;
    } else {
        r->head = job;
    }
    r->tail = job;
    r->queued++;
    pthread_cond_signal(&r->cond);
    pthread_mutex_unlock(&r->lock);
    return 0;
}

struct dp_res_job *dp_res_done_take(struct dp_res_done *d)
{
    uint64_t v;
    ssize_t n = read(d->evfd, &v, sizeof(v));
    (void)n;
    struct dp_res_job *list = atomic_exchange_explicit(&d->head, NULL, memory_order_acquire);
    struct dp_res_job *rev = NULL;
    while (list != NULL) {
        struct dp_res_job *nx = list->next;
        list->next = rev;
        rev = list;
        list = nx;
    }
    return rev;
}
