/* SPDX-License-Identifier: MIT */
/*
 * dp_rcache.c - the resolver's bounded table of names: answers kept for their TTL, negative
 * answers for a few seconds, and names being looked up right now (single flight: every job
 * asking for a pending name waits on that one entry).
 * Owns its entries (malloc'd, at most max of them, pending ones included). Called only from the
 * resolver thread, so there is no lock.
 * Invariants: a name is in the table at most once, under its normalised key (dp_rcache_key);
 * resolved entries are on the LRU list, pending ones are not and are never evicted; an entry
 * past its expiry is never returned.
 * Not here: talking DNS (dp_resolve.c, c-ares), timing out the jobs that wait.
 */
#include "dp_int.h"

#include <stdlib.h>
#include <string.h>

struct dp_rcache {
    struct dp_rent **buckets;
    uint32_t nbuckets; /* power of two */
    uint32_t max, count, pending;
    struct dp_rent *lru_head, *lru_tail; /* head = most recently used */
};

int dp_rcache_key(const char *host, char *out, size_t cap)
{
    size_t n = strlen(host);
    if (n > 0 && host[n - 1] == '.') {
        n--; /* the root label: "example.com." is "example.com" */
    }
    if (n == 0 || n > 253 || n >= cap) {
        return PX_E_INVAL;
    }
    size_t label = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)host[i];
        if (ch == '.') {
            if (label == 0) {
                return PX_E_INVAL; /* empty label */
            }
            label = 0;
        } else if ((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_') {
            label++;
        } else if (ch >= 'A' && ch <= 'Z') {
            ch = (unsigned char)(ch - 'A' + 'a');
            label++;
        } else {
            return PX_E_INVAL;
        }
        if (label > 63) {
            return PX_E_INVAL;
        }
        out[i] = (char)ch;
    }
    if (label == 0) {
        return PX_E_INVAL; /* "example.com.." */
    }
    out[n] = '\0';
    return (int)n;
}

static uint32_t hash_name(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s != '\0'; s++) {
        h = (h ^ (uint8_t)*s) * 16777619u;
    }
    return h;
}

struct dp_rcache *dp_rcache_new(uint32_t max)
{
    if (max < 1) {
        return NULL;
    }
    struct dp_rcache *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return NULL;
    }
    c->max = max;
    c->nbuckets = 16;
    while (c->nbuckets < max && c->nbuckets < (1u << 24)) {
        c->nbuckets <<= 1;
    }
    c->buckets = calloc(c->nbuckets, sizeof(*c->buckets));
    if (c->buckets == NULL) {
        free(c);
        return NULL;
    }
    return c;
}

static void lru_unlink(struct dp_rcache *c, struct dp_rent *e)
{
    if (e->lprev != NULL) {
        e->lprev->lnext = e->lnext;
    } else {
        c->lru_head = e->lnext;
    }
    if (e->lnext != NULL) {
        e->lnext->lprev = e->lprev;
    } else {
        c->lru_tail = e->lprev;
    }
    e->lprev = e->lnext = NULL;
}

static void lru_push(struct dp_rcache *c, struct dp_rent *e)
{
    e->lprev = NULL;
    e->lnext = c->lru_head;
    if (c->lru_head != NULL) {
        c->lru_head->lprev = e;
    } else {
        c->lru_tail = e;
    }
    c->lru_head = e;
}

void dp_rcache_remove(struct dp_rcache *c, struct dp_rent *e)
{
    struct dp_rent **pp = &c->buckets[e->hash & (c->nbuckets - 1)];
    while (*pp != NULL && *pp != e) {
        pp = &(*pp)->hnext;
    }
    if (*pp == NULL) {
        PX_BUG("dp_rcache_remove: entry not in its bucket");
    }
    *pp = e->hnext;
    if (e->state == DP_RENT_PENDING) {
        c->pending--;
    } else {
        lru_unlink(c, e);
    }
    c->count--;
    free(e);
}

void dp_rcache_free(struct dp_rcache *c)
{
    if (c == NULL) {
        return;
    }
    for (uint32_t i = 0; i < c->nbuckets; i++) {
        struct dp_rent *e = c->buckets[i];
        while (e != NULL) {
            struct dp_rent *n = e->hnext;
            free(e);
            e = n;
        }
    }
    free(c->buckets);
    free(c);
}

struct dp_rent *dp_rcache_find(struct dp_rcache *c, const char *key, uint64_t now_ns)
{
    uint32_t h = hash_name(key);
    struct dp_rent *e = c->buckets[h & (c->nbuckets - 1)];
    while (e != NULL && (e->hash != h || strcmp(e->name, key) != 0)) {
        e = e->hnext;
    }
    if (e == NULL || e->state == DP_RENT_PENDING) {
        return e;
    }
    if (now_ns >= e->expires_ns) {
        dp_rcache_remove(c, e);
        return NULL;
    }
    lru_unlink(c, e);
    lru_push(c, e);
    return e;
}

struct dp_rent *dp_rcache_add(struct dp_rcache *c, const char *key)
{
    if (c->count >= c->max) {
        if (c->lru_tail == NULL) {
            return NULL; /* every entry is a lookup in flight */
        }
        dp_rcache_remove(c, c->lru_tail);
    }
    size_t n = strlen(key);
    struct dp_rent *e = calloc(1, sizeof(*e));
    if (e == NULL || n >= sizeof(e->name)) {
        free(e);
        return NULL;
    }
    memcpy(e->name, key, n + 1);
    e->hash = hash_name(key);
    e->state = DP_RENT_PENDING;
    struct dp_rent **b = &c->buckets[e->hash & (c->nbuckets - 1)];
    e->hnext = *b;
    *b = e;
    c->count++;
    c->pending++;
    return e;
}

bool dp_rcache_settle(struct dp_rcache *c, struct dp_rent *e, int status,
                      const union dp_res_addr *addr, int naddr, uint32_t ttl_s, uint64_t now_ns)
{
    if (e->state != DP_RENT_PENDING) {
        PX_BUG("dp_rcache_settle: entry is not pending");
    }
    if (ttl_s == 0 || (status == DP_RES_OK && naddr <= 0)) {
        dp_rcache_remove(c, e);
        return false;
    }
    c->pending--;
    e->state = status == DP_RES_OK ? DP_RENT_OK : DP_RENT_NEG;
    e->status = status;
    e->naddr = 0;
    for (int i = 0; i < naddr && i < DP_RES_ADDRS; i++) {
        e->addr[e->naddr++] = addr[i];
    }
    e->expires_ns = now_ns + (uint64_t)ttl_s * 1000000000ull;
    lru_push(c, e);
    return true;
}

uint32_t dp_rcache_count(const struct dp_rcache *c)
{
    return c->count;
}

uint32_t dp_rcache_pending(const struct dp_rcache *c)
{
    return c->pending;
}
