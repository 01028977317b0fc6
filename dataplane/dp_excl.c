/* SPDX-License-Identifier: MIT */
/*
 * dp_excl.c - the exclusion cache: hosts that cannot be decrypted (the upstream asks for a
 * client certificate, or the client pins its server's key and aborts on our leaf), learned at
 * run time and passed through untouched until their entry expires ([exclusions] ttl_s).
 * Key: the SNI (or the destination address without one) and the destination port.
 * Owns a fixed table of entries (allocated once), a hash of them and an LRU list; a full
 * table drops its least recently used entry. Pinned-client events below [exclusions]
 * pinned_alerts are counted in entries that do not exclude yet.
 * Threads: every loop (lookups and additions, one short mutex hold each) and the admin thread
 * (list, clear, counters). Lives in the server, so it survives a reload, not a restart.
 * Invariants: count <= cap; an entry is in the hash and on the LRU list exactly while used.
 * Not here: when to add (dp_leaf.c, dp_conn.c), what an excluded connection gets (dp_policy.c).
 */
#include "dp_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NIL UINT32_MAX

struct excl_entry {
    char host[256];
    uint16_t port;
    uint8_t reason;   /* enum dp_excl_reason; DP_EXCL_NONE: pinned events being counted */
    uint32_t events;  /* pinned-client events seen */
    uint64_t added_ns, expires_ns, hits;
    int64_t added_wall; /* for ctl: seconds since the epoch */
    uint32_t hnext, prev, next;
    bool used;
};

struct dp_excl {
    pthread_mutex_t lock;
    struct excl_entry *e;
    uint32_t cap, count, nbuckets;
    uint32_t *bucket;
    uint32_t head, tail, free_head; /* LRU: head = most recent */
    uint64_t added[DP_EXCL_REASONS];
};

static const char *reason_names[DP_EXCL_REASONS] = {"none", "client-auth", "pinned"};

const char *dp_excl_reason_name(int reason)
{
    return reason >= 0 && reason < DP_EXCL_REASONS ? reason_names[reason] : "?";
}

struct dp_excl *dp_excl_new(uint32_t cap)
{
    struct dp_excl *x = calloc(1, sizeof(*x));
    if (x == NULL) {
        return NULL;
    }
    x->cap = cap < 1 ? 1 : cap;
    x->nbuckets = 1;
    while (x->nbuckets < 2 * x->cap) {
        x->nbuckets <<= 1;
    }
    x->e = calloc(x->cap, sizeof(*x->e));
    x->bucket = malloc(x->nbuckets * sizeof(*x->bucket));
    if (x->e == NULL || x->bucket == NULL) {
        dp_excl_free(x);
        return NULL;
    }
    for (uint32_t i = 0; i < x->nbuckets; i++) {
        x->bucket[i] = NIL;
    }
    for (uint32_t i = 0; i < x->cap; i++) {
        x->e[i].hnext = i + 1 < x->cap ? i + 1 : NIL; /* the free list runs through hnext */
    }
    x->free_head = 0;
    x->head = x->tail = NIL;
    pthread_mutex_init(&x->lock, NULL);
    return x;
}

void dp_excl_free(struct dp_excl *x)
{
    if (x == NULL) {
        return;
    }
    if (x->e != NULL && x->bucket != NULL) {
        pthread_mutex_destroy(&x->lock);
    }
    free(x->e);
    free(x->bucket);
    free(x);
}

static uint32_t hash_of(const struct dp_excl *x, const char *host, uint16_t port)
{
    uint64_t h = 1469598103934665603ull ^ port;
    for (const char *p = host; *p; p++) {
        h = (h ^ (uint8_t)*p) * 1099511628211ull;
    }
    return (uint32_t)(h ^ (h >> 32)) & (x->nbuckets - 1);
}

static void lru_unlink(struct dp_excl *x, uint32_t i)
{
    struct excl_entry *e = &x->e[i];
    if (e->prev != NIL) {
        x->e[e->prev].next = e->next;
    } else {
        x->head = e->next;
    }
    if (e->next != NIL) {
        x->e[e->next].prev = e->prev;
    } else {
        x->tail = e->prev;
    }
    e->prev = e->next = NIL;
}

static void lru_front(struct dp_excl *x, uint32_t i)
{
    struct excl_entry *e = &x->e[i];
    e->prev = NIL;
    e->next = x->head;
    if (x->head != NIL) {
        x->e[x->head].prev = i;
    }
    x->head = i;
    if (x->tail == NIL) {
        x->tail = i;
    }
}

static void remove_locked(struct dp_excl *x, uint32_t i)
{
    struct excl_entry *e = &x->e[i];
    uint32_t *pp = &x->bucket[hash_of(x, e->host, e->port)];
    while (*pp != NIL && *pp != i) {
        pp = &x->e[*pp].hnext;
    }
    if (*pp == i) {
        *pp = e->hnext;
    }
    lru_unlink(x, i);
    e->used = false;
    e->hnext = x->free_head;
    x->free_head = i;
    x->count--;
}

/* The live entry for (host, port), expired ones removed on the way; NIL when none. */
static uint32_t find_locked(struct dp_excl *x, const char *host, uint16_t port, uint64_t now)
{
    uint32_t i = x->bucket[hash_of(x, host, port)];
    while (i != NIL) {
        struct excl_entry *e = &x->e[i];
        uint32_t n = e->hnext;
        if (e->port == port && strcmp(e->host, host) == 0) {
            if (now >= e->expires_ns) {
                remove_locked(x, i);
                return NIL;
            }
            return i;
        }
        i = n;
    }
    return NIL;
}

/* A fresh entry (the LRU's tail is dropped when the table is full). */
static uint32_t new_locked(struct dp_excl *x, const char *host, uint16_t port)
{
    if (x->free_head == NIL) {
        remove_locked(x, x->tail);
    }
    uint32_t i = x->free_head;
    struct excl_entry *e = &x->e[i];
    x->free_head = e->hnext;
    memset(e, 0, sizeof(*e));
    snprintf(e->host, sizeof(e->host), "%s", host);
    e->port = port;
    e->used = true;
    uint32_t b = hash_of(x, host, port);
    e->hnext = x->bucket[b];
    x->bucket[b] = i;
    e->prev = e->next = NIL;
    lru_front(x, i);
    x->count++;
    return i;
}

int dp_excl_lookup(struct dp_excl *x, const char *host, uint16_t port)
{
    uint64_t now = px_now_ns();
    pthread_mutex_lock(&x->lock);
    uint32_t i = find_locked(x, host, port, now);
    int r = DP_EXCL_NONE;
    if (i != NIL && x->e[i].reason != DP_EXCL_NONE) {
        r = x->e[i].reason;
        x->e[i].hits++;
        lru_unlink(x, i);
        lru_front(x, i);
    }
    pthread_mutex_unlock(&x->lock);
    return r;
}

static void make_exclusion(struct dp_excl *x, uint32_t i, int reason, int ttl_s, uint64_t now)
{
    struct excl_entry *e = &x->e[i];
    e->reason = (uint8_t)reason;
    e->added_ns = now;
    e->added_wall = (int64_t)time(NULL);
    e->expires_ns = now + (uint64_t)ttl_s * 1000000000ull;
    x->added[reason]++;
}

void dp_excl_add(struct dp_excl *x, const char *host, uint16_t port, int reason, int ttl_s)
{
    uint64_t now = px_now_ns();
    pthread_mutex_lock(&x->lock);
    uint32_t i = find_locked(x, host, port, now);
    if (i == NIL) {
        i = new_locked(x, host, port);
    }
    if (x->e[i].reason == DP_EXCL_NONE) {
        make_exclusion(x, i, reason, ttl_s, now);
    }
    pthread_mutex_unlock(&x->lock);
}

bool dp_excl_pinned_event(struct dp_excl *x, const char *host, uint16_t port, int threshold,
                          int ttl_s)
{
    uint64_t now = px_now_ns();
    bool added = false;
    pthread_mutex_lock(&x->lock);
    uint32_t i = find_locked(x, host, port, now);
    if (i == NIL) {
        i = new_locked(x, host, port);
        x->e[i].expires_ns = now + (uint64_t)ttl_s * 1000000000ull; /* events are forgotten too */
    }
    struct excl_entry *e = &x->e[i];
    e->events++;
    if (e->reason == DP_EXCL_NONE && e->events >= (uint32_t)threshold) {
        make_exclusion(x, i, DP_EXCL_PINNED, ttl_s, now);
        added = true;
    }
    pthread_mutex_unlock(&x->lock);
    return added;
}

int dp_excl_list(struct dp_excl *x, struct dp_excl_info *out, int cap)
{
    uint64_t now = px_now_ns();
    int64_t wall = (int64_t)time(NULL);
    int n = 0;
    pthread_mutex_lock(&x->lock);
    for (uint32_t i = x->head; i != NIL && n < cap;) {
        struct excl_entry *e = &x->e[i];
        uint32_t next = e->next;
        if (now >= e->expires_ns) {
            remove_locked(x, i);
        } else if (e->reason != DP_EXCL_NONE) {
            struct dp_excl_info *o = &out[n++];
            snprintf(o->host, sizeof(o->host), "%s", e->host);
            o->port = e->port;
            o->reason = e->reason;
            o->age_s = wall - e->added_wall;
            o->expires_in_s = (int64_t)((e->expires_ns - now) / 1000000000ull);
            o->hits = e->hits;
        }
        i = next;
    }
    pthread_mutex_unlock(&x->lock);
    return n;
}

int dp_excl_clear(struct dp_excl *x, const char *host)
{
    int n = 0;
    pthread_mutex_lock(&x->lock);
    for (uint32_t i = x->head; i != NIL;) {
        uint32_t next = x->e[i].next;
        if (host == NULL || host[0] == '\0' || strcmp(x->e[i].host, host) == 0) {
            n += x->e[i].reason != DP_EXCL_NONE;
            remove_locked(x, i);
        }
        i = next;
    }
    pthread_mutex_unlock(&x->lock);
    return n;
}

void dp_excl_stats(struct dp_excl *x, uint64_t *entries, uint64_t added[DP_EXCL_REASONS])
{
    uint64_t now = px_now_ns();
    pthread_mutex_lock(&x->lock);
    uint64_t n = 0;
    for (uint32_t i = x->head; i != NIL; i = x->e[i].next) {
        n += x->e[i].reason != DP_EXCL_NONE && now < x->e[i].expires_ns;
    }
    *entries = n;
    memcpy(added, x->added, sizeof(x->added));
    pthread_mutex_unlock(&x->lock);
}
