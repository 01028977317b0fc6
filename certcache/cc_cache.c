/* SPDX-License-Identifier: MIT */
/*
 * cc_cache.c - the leaf cache: sharded, bounded LRU with TTL, and single-flight minting.
 * Owns cc_entry objects (refcounted, atomic counts; a lookup returns a new ref; the cache holds
 * one ref while an entry is in it) and the per-loop handles.
 * Threads: any loop thread looks up; each shard has its own mutex, held only for list surgery,
 * never across a signature, an X.509 build or a callback. Finished mints are delivered to each
 * waiter's own loop through an MPSC list plus a wake-up of that loop's HSM completion eventfd,
 * so callbacks always run on the thread that asked.
 * Invariants: at most one mint per cache key is in flight; a minting entry is in the hash but not
 * in the LRU (it cannot be evicted); a failed mint is removed and wakes every waiter with the
 * error; count <= cap per shard after every insert (minting entries excepted).
 * With [cache] shared, a forward-trust miss first asks the shared tier (cc_shared.c): its answer
 * comes back to the asking loop like an HSM completion, and either is the leaf (no signature) or
 * tells the loop to mint; a fresh forward-trust leaf is published there.
 * Not here: building the certificate (cc_mint.c), the CAs and key pool (cc_keys.c), Redis
 * (cc_shared.c), the snapshot file (cc_snap.c).
 */
#include "cc_int.h"
#include "px_mpsc.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#define NSHARDS 64
#define POOL_EC 8
#define POOL_RSA 2

enum entry_state { E_MINTING = 0, E_READY };

struct waiter {
    cc_done_fn fn;
    void *user;
    struct cc_loop *loop;
    struct waiter *next;
    int status;
    struct cc_entry *e; /* new ref on success */
    uint64_t start_ns;
};
/* finished waits handed back to their loop (cc_loop.done) */
PX_MPSC_DEFINE(waiter_list, struct waiter, next)

struct cc_entry {
    _Atomic uint32_t refs;
    uint8_t key[CC_KEY_LEN];
    struct cc_entry *hnext;
    struct cc_entry *lprev, *lnext;
    enum entry_state state;
    bool in_cache;
    bool shared; /* the leaf came from the shared tier: another node minted it */
    enum cc_ca_kind ca;
    uint64_t expires_ns;
    X509 *cert;
    EVP_PKEY *pkey;
    STACK_OF(X509) *chain; /* own reference: entries may outlive their ctx (reload) */
    struct waiter *waiters;
    const struct cc_leaf_key *leaf_key;
    struct cc_ctx *cc;
};

struct shard {
    pthread_mutex_t lock;
    struct cc_entry **buckets;
    uint32_t mask;
    struct cc_entry lru; /* sentinel: lru.lnext is the most recent */
    uint32_t count, cap;
    uint64_t hits, misses, coalesced, evictions, expired, failures;
};

struct cc_ctx {
    _Atomic int refs;
    struct cc_shared *shared;      /* [cache] shared, or NULL */
    struct cc_wire_ctx wc[2];      /* checking entries from outside, per CA kind */
    uint8_t *spki[POOL_EC + POOL_RSA];
    uint8_t snap_key[32];          /* HKDF(master key, snapshot label) */
    bool have_mk;
    _Atomic uint64_t shared_hit_wait_ns, snap_loaded, snap_saved;
    const struct px_cfg *cfg; /* &own_cfg */
    struct px_cfg own_cfg;    /* a copy: the caller may free its config (reloads) */
    struct hsm_pool *pool;
    struct cc_ca trust, untrust;
    bool have_untrust;
    struct cc_fixed_ext fx;
    struct cc_leaf_key keys_ec[POOL_EC];
    struct cc_leaf_key keys_rsa[POOL_RSA];
    struct shard shards[NSHARDS];
    _Atomic uint64_t mints, hsm_wait_ns;
};

struct cc_loop {
    struct cc_ctx *cc;
    struct hsm_cq *cq;
    _Atomic(struct waiter *) done;
    uint32_t waits; /* waiters of this loop not yet called back */
    uint32_t jobs;  /* HSM jobs submitted through this loop's cq, not yet completed */
    _Atomic(struct cc_pend *) sh_done; /* answered shared lookups (MPSC) */
    uint32_t sh_pending;               /* shared lookups of this loop not yet answered */
};

struct mint_job {
    struct cc_entry *e;
    X509 *x;
};

/* A forward-trust miss waiting for the shared tier. */
struct cc_pend {
    struct cc_pend *next;
    struct cc_loop *l;
    struct cc_entry *e; /* the minting entry (the cache's reference keeps it alive) */
    X509 *up;           /* own reference to the upstream leaf, for minting after a miss */
    X509 *hit;          /* the answer: a checked leaf, or NULL */
    int idx;
    uint64_t t0_ns;
};
/* answered shared lookups handed back to their loop (cc_loop.sh_done) */
PX_MPSC_DEFINE(pend_list, struct cc_pend, next)

/* ---- entries ---------------------------------------------------------------------------- */

X509 *cc_entry_cert(const struct cc_entry *e)
{
    return e->cert;
}

bool cc_entry_shared(const struct cc_entry *e)
{
    return e->shared;
}

EVP_PKEY *cc_entry_key(const struct cc_entry *e)
{
    return e->pkey;
}

STACK_OF(X509) *cc_entry_chain(const struct cc_entry *e)
{
    return e->chain;
}

enum cc_ca_kind cc_entry_ca(const struct cc_entry *e)
{
    return e->ca;
}

void cc_entry_ref(struct cc_entry *e)
{
    atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
}

void cc_entry_unref(struct cc_entry *e)
{
    if (e == NULL) {
        return;
    }
    if (atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) == 1) {
        X509_free(e->cert);
        EVP_PKEY_free(e->pkey);
        if (e->chain != NULL) {
            sk_X509_pop_free(e->chain, X509_free);
        }
        free(e);
    }
}

/* ---- shard surgery (caller holds the shard lock) ---------------------------------------- */

static struct shard *shard_of(struct cc_ctx *cc, const uint8_t *key)
{
    return &cc->shards[key[4] % NSHARDS];
}

static uint32_t bucket_of(const struct shard *s, const uint8_t *key)
{
    uint32_t h;
    memcpy(&h, key, sizeof(h));
    return h & s->mask;
}

static struct cc_entry *find_locked(struct shard *s, const uint8_t *key)
{
    for (struct cc_entry *e = s->buckets[bucket_of(s, key)]; e != NULL; e = e->hnext) {
        if (memcmp(e->key, key, CC_KEY_LEN) == 0) {
            return e;
        }
    }
    return NULL;
}

static void lru_unlink(struct cc_entry *e)
{
    if (e->lprev != NULL) {
        e->lprev->lnext = e->lnext;
        e->lnext->lprev = e->lprev;
        e->lprev = e->lnext = NULL;
    }
}

static void lru_push_front(struct shard *s, struct cc_entry *e)
{
    e->lnext = s->lru.lnext;
    e->lprev = &s->lru;
    s->lru.lnext->lprev = e;
    s->lru.lnext = e;
}

/* Takes e out of the cache; the caller drops the cache's reference after unlocking. */
static void remove_locked(struct shard *s, struct cc_entry *e)
{
    struct cc_entry **pp = &s->buckets[bucket_of(s, e->key)];
    while (*pp != NULL && *pp != e) {
        pp = &(*pp)->hnext;
    }
    if (*pp == e) {
        *pp = e->hnext;
    }
    e->hnext = NULL;
    lru_unlink(e);
    e->in_cache = false;
    s->count--;
}

/* Evicts least recently used ready entries until count <= cap; returns a list to unref. */
static struct cc_entry *evict_locked(struct shard *s)
{
    struct cc_entry *victims = NULL;
    while (s->count > s->cap && s->lru.lprev != &s->lru) {
        struct cc_entry *v = s->lru.lprev;
        remove_locked(s, v);
        s->evictions++;
        v->hnext = victims;
        victims = v;
    }
    return victims;
}

static void unref_list(struct cc_entry *list)
{
    while (list != NULL) {
        struct cc_entry *n = list->hnext;
        list->hnext = NULL;
        cc_entry_unref(list);
        list = n;
    }
}

/* ---- delivery --------------------------------------------------------------------------- */

static void deliver(struct waiter *w)
{
    struct cc_loop *l = w->loop;
    if (waiter_list_push(&l->done, w)) {
        hsm_cq_wake(l->cq);
    }
}

static uint64_t expiry_ns(const struct cc_ctx *cc, X509 *x)
{
    struct tm tm;
    time_t now = time(NULL), na = 0;
    if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1) {
        na = timegm(&tm);
    }
    int64_t life = cc->cfg->cache_ttl_s;
    if (na > now + 60) {
        if (na - now - 60 < life) {
            life = na - now - 60; /* never serve a leaf past its notAfter */
        }
    } else if (life > 300) {
        life = 300; /* mirror of an expired upstream: expired on purpose, re-checked often */
    }
    return px_now_ns() + (uint64_t)life * 1000000000ull;
}

/* The mint of e succeeded with certificate x (or x came from outside: minted false): publish it
 * and wake every waiter. */
static void finish_entry_as(struct cc_ctx *cc, struct cc_entry *e, X509 *x, bool minted)
{
    struct shard *s = shard_of(cc, e->key);
    e->cert = x;
    EVP_PKEY_up_ref(e->leaf_key->pkey);
    e->pkey = e->leaf_key->pkey;
    e->expires_ns = expiry_ns(cc, x);
    pthread_mutex_lock(&s->lock);
    e->state = E_READY;
    struct cc_entry *victims = NULL;
    if (e->in_cache) {
        lru_push_front(s, e);
        victims = evict_locked(s);
    }
    struct waiter *ws = e->waiters;
    e->waiters = NULL;
    for (struct waiter *w = ws; w != NULL; w = w->next) {
        cc_entry_ref(e);
        w->e = e;
        w->status = 0;
    }
    pthread_mutex_unlock(&s->lock);
    if (minted) {
        atomic_fetch_add(&cc->mints, 1);
    }
    unref_list(victims);
    while (ws != NULL) {
        struct waiter *n = ws->next;
        deliver(ws);
        ws = n;
    }
}

static void finish_entry(struct cc_ctx *cc, struct cc_entry *e, X509 *x)
{
    finish_entry_as(cc, e, x, true);
}

/* The mint of e failed: take it out (it is not cached) and wake every waiter with status. */
static void fail_entry(struct cc_ctx *cc, struct cc_entry *e, int status)
{
    struct shard *s = shard_of(cc, e->key);
    pthread_mutex_lock(&s->lock);
    bool was_cached = e->in_cache;
    if (was_cached) {
        remove_locked(s, e);
    }
    s->failures++;
    struct waiter *ws = e->waiters;
    e->waiters = NULL;
    pthread_mutex_unlock(&s->lock);
    while (ws != NULL) {
        struct waiter *n = ws->next;
        ws->status = status;
        ws->e = NULL;
        deliver(ws);
        ws = n;
    }
    if (was_cached) {
        cc_entry_unref(e);
    }
}

/* ---- lookups ---------------------------------------------------------------------------- */

static int cache_key(X509 *up, enum cc_ca_kind ca, enum cc_key_kind kk, uint8_t *key)
{
    /* most certificates fit on the stack: no allocation on the hit path */
    unsigned char stackbuf[8192], *der = stackbuf, *heap = NULL;
    int len = i2d_X509(up, NULL);
    if (len <= 0) {
        return PX_E_INVAL;
    }
    if ((size_t)len > sizeof(stackbuf)) {
        heap = OPENSSL_malloc((size_t)len);
        if (heap == NULL) {
            return -ENOMEM;
        }
        der = heap;
    }
    unsigned char *p = der;
    if (i2d_X509(up, &p) != len) {
        OPENSSL_free(heap);
        return PX_E_INVAL;
    }
    unsigned int n = 0;
    int ok = EVP_Digest(der, (size_t)len, key, &n, cc_md_sha256(), NULL);
    OPENSSL_free(heap);
    if (ok != 1) {
        return PX_E_CRYPTO;
    }
    key[32] = (uint8_t)ca;
    key[33] = (uint8_t)kk;
    return 0;
}

static struct waiter *waiter_new(struct cc_loop *l, cc_done_fn fn, void *user)
{
    struct waiter *w = calloc(1, sizeof(*w));
    if (w != NULL) {
        w->fn = fn;
        w->user = user;
        w->loop = l;
        w->start_ns = px_now_ns();
    }
    return w;
}

/*
 * Builds the forward-trust leaf of the minting entry e for upstream (borrowed) and submits its
 * signature through l's completion queue. On failure e has been failed (its waiters woken with
 * the error) and the code is returned. Completions run only in cc_loop_poll on this thread, so
 * the caller may attach its waiter after a successful return.
 */
static int submit_mint(struct cc_loop *l, struct cc_entry *e, X509 *up)
{
    struct cc_ctx *cc = l->cc;
    const struct cc_ca *ca = &cc->trust;
    uint8_t digest[64];
    int dlen = 0;
    const char *why = NULL;
    X509 *x = cc_mint_build(ca, &cc->fx, e->leaf_key, up, cc->cfg->ca_leaf_max_days, digest, &dlen,
                            &why);
    if (x == NULL) {
        px_log(PX_LOG_WARN, "cc", "cannot mint a leaf: %s", why);
        px_log_ossl_errors("cc_mint_build");
        fail_entry(cc, e, PX_E_INVAL);
        return PX_E_INVAL;
    }
    struct mint_job *job = malloc(sizeof(*job));
    int r = job == NULL ? -ENOMEM
                        : hsm_sign_submit(cc->pool, l->cq, ca->alg, digest, (size_t)dlen, 0, job);
    if (r != 0) {
        free(job);
        X509_free(x);
        fail_entry(cc, e, r);
        return r;
    }
    job->e = e;
    job->x = x;
    l->jobs++;
    return 0;
}

static int pool_index(const struct cc_ctx *cc, const struct cc_leaf_key *k)
{
    return k->kind == CC_KEY_RSA ? (int)(k - cc->keys_rsa) : (int)(k - cc->keys_ec);
}

int cc_get(struct cc_loop *l, X509 *up, bool verified, enum cc_key_kind kk, cc_done_fn done,
           void *user, struct cc_entry **out)
{
    PX_ENSURE(l != NULL && up != NULL && out != NULL && done != NULL, PX_E_INVAL);
    struct cc_ctx *cc = l->cc;
    enum cc_ca_kind cak = verified ? CC_CA_TRUST : CC_CA_UNTRUST;
    PX_ENSURE(cak == CC_CA_TRUST ? cc->pool != NULL : cc->have_untrust, PX_E_INVAL);
    uint8_t key[CC_KEY_LEN];
    PX_TRY(cache_key(up, cak, kk, key));
    struct shard *s = shard_of(cc, key);
    *out = NULL;

    struct waiter *w = waiter_new(l, done, user); /* allocated outside the lock, often unused */
    PX_ENSURE(w != NULL, -ENOMEM);
    struct cc_entry *stale = NULL;
    pthread_mutex_lock(&s->lock);
    struct cc_entry *e = find_locked(s, key);
    if (e != NULL && e->state == E_READY && px_now_ns() >= e->expires_ns) {
        remove_locked(s, e); /* expired leaves are never served */
        s->expired++;
        stale = e;
        e = NULL;
    }
    if (e != NULL && e->state == E_READY) {
        cc_entry_ref(e);
        lru_unlink(e);
        lru_push_front(s, e);
        s->hits++;
        pthread_mutex_unlock(&s->lock);
        cc_entry_unref(stale);
        free(w);
        *out = e;
        return CC_HIT;
    }
    if (e != NULL) { /* minting: attach to it */
        w->next = e->waiters;
        e->waiters = w;
        s->coalesced++;
        l->waits++;
        pthread_mutex_unlock(&s->lock);
        cc_entry_unref(stale);
        return CC_PENDING;
    }
    e = calloc(1, sizeof(*e));
    struct cc_pend *pend = NULL;
    if (e != NULL && cak == CC_CA_TRUST && cc_shared_up(cc->shared)) {
        pend = calloc(1, sizeof(*pend));
    }
    if (e == NULL) {
        pthread_mutex_unlock(&s->lock);
        cc_entry_unref(stale);
        free(w);
        return -ENOMEM;
    }
    memcpy(e->key, key, CC_KEY_LEN);
    atomic_init(&e->refs, 1); /* the cache's */
    e->cc = cc;
    e->ca = cak;
    e->state = E_MINTING;
    e->in_cache = true;
    uint32_t b = bucket_of(s, key);
    e->hnext = s->buckets[b];
    s->buckets[b] = e;
    s->count++;
    s->misses++;
    struct cc_entry *victims = evict_locked(s);
    pthread_mutex_unlock(&s->lock);
    cc_entry_unref(stale);
    unref_list(victims);

    /* mint outside the lock */
    uint32_t h;
    memcpy(&h, key + 8, sizeof(h));
    e->leaf_key = kk == CC_KEY_RSA ? &cc->keys_rsa[h % POOL_RSA] : &cc->keys_ec[h % POOL_EC];
    const struct cc_ca *ca = cak == CC_CA_TRUST ? &cc->trust : &cc->untrust;
    e->chain = X509_chain_up_ref(ca->chain);
    if (pend != NULL) {
        /* ask the fleet first; the answer comes back through cc_loop_poll on this thread */
        X509_up_ref(up);
        pend->up = up;
        pend->l = l;
        pend->e = e;
        pend->t0_ns = px_now_ns();
        if (cc_shared_lookup(cc->shared, key, pend) == 0) {
            l->sh_pending++;
            pthread_mutex_lock(&s->lock);
            w->next = e->waiters;
            e->waiters = w;
            pthread_mutex_unlock(&s->lock);
            l->waits++;
            return CC_PENDING;
        }
        X509_free(up);
        free(pend); /* down meanwhile, or too busy: mint here */
    }
    int r = cak == CC_CA_TRUST ? submit_mint(l, e, up) : 0;
    if (r != 0) {
        free(w);
        return r;
    }
    if (cak == CC_CA_TRUST) {
        pthread_mutex_lock(&s->lock);
        w->next = e->waiters;
        e->waiters = w;
        pthread_mutex_unlock(&s->lock);
        l->waits++;
        return CC_PENDING;
    }
    uint8_t digest[64];
    int dlen = 0;
    const char *why = NULL;
    X509 *x = cc_mint_build(ca, &cc->fx, e->leaf_key, up, cc->cfg->ca_leaf_max_days, digest, &dlen,
                            &why);
    if (x == NULL) {
        px_log(PX_LOG_WARN, "cc", "cannot mint a leaf: %s", why);
        px_log_ossl_errors("cc_mint_build");
        free(w);
        fail_entry(cc, e, PX_E_INVAL);
        return PX_E_INVAL;
    }
    if (cak == CC_CA_UNTRUST) {
        /* software CA: one local signature, no HSM, no waiting */
        if (X509_sign(x, ca->soft_key, EVP_sha256()) <= 0) {
            px_log_ossl_errors("cc untrust sign");
            X509_free(x);
            free(w);
            fail_entry(cc, e, PX_E_CRYPTO);
            return PX_E_CRYPTO;
        }
        cc_entry_ref(e); /* the caller's, before finish_entry can publish it */
        finish_entry(cc, e, x);
        free(w);
        *out = e;
        return CC_MINTED;
    }
    PX_BUG("forward-trust leaves are minted by submit_mint");
}

static void on_hsm_done(void *ctx, const struct hsm_result *r)
{
    struct cc_loop *l = ctx;
    struct mint_job *job = r->user;
    struct cc_entry *e = job->e;
    X509 *x = job->x;
    free(job);
    l->jobs--;
    if (r->status != 0) {
        X509_free(x);
        px_log(PX_LOG_DEBUG, "cc", "HSM signature for a leaf failed: %s", px_strerror(r->status));
        fail_entry(l->cc, e, r->status);
        return;
    }
    if (cc_x509_set_signature(x, r->sig, r->sig_len) != 0) {
        X509_free(x);
        fail_entry(l->cc, e, PX_E_CRYPTO);
        return;
    }
    atomic_fetch_add(&l->cc->hsm_wait_ns, r->latency_ns);
    finish_entry(l->cc, e, x);
    if (l->cc->shared != NULL) {
        /* the fleet gets it too (losers of the lock are polling for it) */
        uint64_t now = px_now_ns();
        int64_t ttl = e->expires_ns > now ? (int64_t)((e->expires_ns - now) / 1000000000ull) : 0;
        cc_shared_publish(l->cc->shared, e->key, x, (uint8_t)pool_index(l->cc, e->leaf_key), ttl);
    }
}

void cc_cache__shared_done(struct cc_pend *p, X509 *hit, int idx)
{
    struct cc_loop *l = p->l;
    p->hit = hit;
    p->idx = idx;
    if (pend_list_push(&l->sh_done, p)) {
        hsm_cq_wake(l->cq);
    }
}

/* Shared lookups answered: take the fleet's leaf, or mint it here. */
static int drain_shared(struct cc_loop *l)
{
    struct cc_pend *p = pend_list_take_any(&l->sh_done);
    int n = 0;
    while (p != NULL) {
        struct cc_pend *nx = p->next;
        struct cc_entry *e = p->e;
        l->sh_pending--;
        if (p->hit != NULL) {
            e->leaf_key = e->key[33] == CC_KEY_RSA ? &l->cc->keys_rsa[p->idx]
                                                   : &l->cc->keys_ec[p->idx];
            atomic_fetch_add(&l->cc->shared_hit_wait_ns, px_now_ns() - p->t0_ns);
            e->shared = true;
            finish_entry_as(l->cc, e, p->hit, false);
        } else {
            (void)submit_mint(l, e, p->up); /* a failure has woken the waiters already */
        }
        X509_free(p->up);
        free(p);
        p = nx;
        n++;
    }
    return n;
}

int cc_loop_poll(struct cc_loop *l)
{
    /* hsm_cq_drain consumes the eventfd: every list it wakes for is taken after it, or a push
     * in between would have spent its wake-up and sit there until the next one */
    int n = hsm_cq_drain(l->cq, on_hsm_done, l);
    n += drain_shared(l);
    struct waiter *rev = waiter_list_take(&l->done);
    uint64_t now = px_now_ns();
    while (rev != NULL) {
        struct waiter *nx = rev->next;
        l->waits--;
        rev->fn(rev->user, rev->status, rev->e, now - rev->start_ns);
        free(rev);
        rev = nx;
        n++;
    }
    return n;
}

/* ---- loops and context ------------------------------------------------------------------ */

struct cc_loop *cc_loop_new(struct cc_ctx *cc)
{
    struct cc_loop *l = calloc(1, sizeof(*l));
    if (l == NULL) {
        return NULL;
    }
    l->cc = cc;
    l->cq = hsm_cq_new();
    if (l->cq == NULL) {
        free(l);
        return NULL;
    }
    atomic_init(&l->done, NULL);
    atomic_init(&l->sh_done, NULL);
    return l;
}

int cc_loop_free(struct cc_loop *l)
{
    if (l == NULL) {
        return 0;
    }
    PX_ENSURE(l->waits == 0 && l->jobs == 0 && l->sh_pending == 0, PX_E_INVAL);
    hsm_cq_free(l->cq);
    free(l);
    return 0;
}

int cc_loop_fd(const struct cc_loop *l)
{
    return hsm_cq_fd(l->cq);
}

uint32_t cc_loop_pending(const struct cc_loop *l)
{
    return l->waits + l->jobs + l->sh_pending;
}

/* SHA-256 of a certificate's DER: how entries outside the process name their CA. */
static int cert_id(X509 *x, uint8_t out[32])
{
    unsigned char *der = NULL;
    int n = i2d_X509(x, &der);
    unsigned int ml = 0;
    int ok = n > 0 && EVP_Digest(der, (size_t)n, out, &ml, cc_md_sha256(), NULL) == 1;
    OPENSSL_free(der);
    return ok ? 0 : PX_E_CRYPTO;
}

static int wire_ctx_init(struct cc_ctx *cc, struct cc_wire_ctx *wc, struct cc_ca *ca,
                         enum cc_ca_kind kind)
{
    memset(wc, 0, sizeof(*wc));
    wc->ca_kind = kind;
    PX_TRY(cert_id(ca->cert, ca->id));
    memcpy(wc->ca_id, ca->id, 32);
    wc->ca_name = X509_get_subject_name(ca->cert);
    /* a private copy of the CA public key for verifying on other threads */
    unsigned char *der = NULL;
    int n = i2d_PUBKEY(X509_get0_pubkey(ca->cert), &der);
    const unsigned char *p = der;
    wc->ca_pub = n > 0 ? d2i_PUBKEY(NULL, &p, n) : NULL;
    OPENSSL_free(der);
    PX_ENSURE(wc->ca_pub != NULL, PX_E_CRYPTO);
    wc->nec = POOL_EC;
    wc->nrsa = POOL_RSA;
    /* two loops: one over both arrays made gcc -O2 warn of an out-of-bounds iteration */
    for (int i = 0; i < POOL_EC; i++) {
        memcpy(&wc->ec_spki_len[i], cc->spki[i], sizeof(int));
        wc->ec_spki[i] = cc->spki[i] + sizeof(int);
    }
    for (int i = 0; i < POOL_RSA; i++) {
        memcpy(&wc->rsa_spki_len[i], cc->spki[POOL_EC + i], sizeof(int));
        wc->rsa_spki[i] = cc->spki[POOL_EC + i] + sizeof(int);
    }
    return 0;
}

/* What entries from outside the process are checked with, and the keys derived from mk. */
static int wire_setup(struct cc_ctx *cc, const uint8_t *mk, char *err, size_t errlen)
{
    for (int i = 0; i < POOL_EC + POOL_RSA; i++) {
        EVP_PKEY *k = i < POOL_EC ? cc->keys_ec[i].pkey : cc->keys_rsa[i - POOL_EC].pkey;
        int n = i2d_PUBKEY(k, NULL);
        cc->spki[i] = n > 0 ? malloc(sizeof(int) + (size_t)n) : NULL;
        unsigned char *q = cc->spki[i] + sizeof(int);
        if (cc->spki[i] == NULL || i2d_PUBKEY(k, &q) != n) {
            snprintf(err, errlen, "cannot encode the leaf-key pool");
            return PX_E_CRYPTO;
        }
        memcpy(cc->spki[i], &n, sizeof(n));
    }
    if (wire_ctx_init(cc, &cc->wc[CC_CA_TRUST], &cc->trust, CC_CA_TRUST) != 0 ||
        (cc->have_untrust &&
         wire_ctx_init(cc, &cc->wc[CC_CA_UNTRUST], &cc->untrust, CC_CA_UNTRUST) != 0)) {
        snprintf(err, errlen, "cannot encode the CA certificates");
        return PX_E_CRYPTO;
    }
    if (mk != NULL) {
        if (px_hkdf(mk, "tlsmint cache-snapshot v1", cc->snap_key) != 0) {
            snprintf(err, errlen, "cannot derive the snapshot key");
            return PX_E_CRYPTO;
        }
        cc->have_mk = true;
    }
    return 0;
}

struct cc_ctx *cc_new(const struct px_cfg *cfg, struct hsm_pool *pool, char *err, size_t errlen)
{
    return cc_new_mk(cfg, pool, NULL, err, errlen);
}

struct cc_ctx *cc_new_mk(const struct px_cfg *cfg, struct hsm_pool *pool, const uint8_t *mk,
                         char *err, size_t errlen)
{
    struct cc_ctx *cc = calloc(1, sizeof(*cc));
    if (cc == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    atomic_init(&cc->refs, 1);
    cc->own_cfg = *cfg;
    cfg = &cc->own_cfg; /* everything below (the shared tier too) keeps the copy */
    cc->cfg = cfg;
    cc->pool = pool;
    for (int i = 0; i < NSHARDS; i++) {
        struct shard *s = &cc->shards[i];
        pthread_mutex_init(&s->lock, NULL);
        s->lru.lnext = s->lru.lprev = &s->lru;
        s->cap = (uint32_t)(cfg->cache_size + NSHARDS - 1) / NSHARDS;
        uint32_t nb = 16;
        while (nb < s->cap) {
            nb <<= 1;
        }
        s->mask = nb - 1;
        s->buckets = calloc(nb, sizeof(*s->buckets));
        if (s->buckets == NULL) {
            snprintf(err, errlen, "out of memory");
            cc_free(cc);
            return NULL;
        }
    }
    if (cc_fixed_ext_init(&cc->fx) != 0) {
        snprintf(err, errlen, "cannot build the fixed leaf extensions");
        cc_free(cc);
        return NULL;
    }
    if (cc_ca_load_trust(&cc->trust, cfg, pool, err, errlen) != 0) {
        cc_free(cc);
        return NULL;
    }
    if (cfg->ca_forward_untrust_cert[0] != '\0') {
        if (cc_ca_load_untrust(&cc->untrust, cfg, mk, err, errlen) != 0) {
            cc_free(cc);
            return NULL;
        }
        cc->have_untrust = true;
    }
    int got_ec = 0, got_rsa = 0;
    if (cfg->cache_leaf_pool[0] != '\0' &&
        cc_keys_load(cfg->cache_leaf_pool, mk, cc->keys_ec, POOL_EC, cc->keys_rsa, POOL_RSA,
                     &got_ec, &got_rsa, err, errlen) != 0) {
        cc_free(cc);
        return NULL;
    }
    /* keys the pool file does not have are made now (never on the minting path) */
    if (cc_keys_make(cc->keys_ec + got_ec, POOL_EC - got_ec, CC_KEY_EC, err, errlen) != 0 ||
        cc_keys_make(cc->keys_rsa + got_rsa, POOL_RSA - got_rsa, CC_KEY_RSA, err, errlen) != 0) {
        cc_free(cc);
        return NULL;
    }
    if (wire_setup(cc, mk, err, errlen) != 0) {
        cc_free(cc);
        return NULL;
    }
    if (cfg->cache_shared[0] != '\0') {
        uint8_t mac[32];
        if (!cc->have_mk || pool == NULL) {
            snprintf(err, errlen, "[cache] shared needs the master key ([master_key] file) and "
                     "the HSM: entries are authenticated with a key derived from it");
            cc_free(cc);
            return NULL;
        }
        if (px_hkdf(mk, "tlsmint shared-cache hmac v1", mac) != 0) {
            snprintf(err, errlen, "cannot derive the shared cache key");
            cc_free(cc);
            return NULL;
        }
        cc->shared = cc_shared_new(cfg, &cc->wc[CC_CA_TRUST], mac, err, errlen);
        px_wipe(mac, sizeof(mac));
        if (cc->shared == NULL) {
            cc_free(cc);
            return NULL;
        }
    }
    return cc;
}

void cc_ref(struct cc_ctx *cc)
{
    atomic_fetch_add(&cc->refs, 1);
}

void cc_free(struct cc_ctx *cc)
{
    if (cc == NULL || atomic_fetch_sub(&cc->refs, 1) != 1) {
        return;
    }
    cc_shared_free(cc->shared); /* its thread reads the CA and pool freed below */
    for (int i = 0; i < 2; i++) {
        EVP_PKEY_free(cc->wc[i].ca_pub);
    }
    for (int i = 0; i < POOL_EC + POOL_RSA; i++) {
        free(cc->spki[i]);
    }
    px_wipe(cc->snap_key, sizeof(cc->snap_key));
    for (int i = 0; i < NSHARDS; i++) {
        struct shard *s = &cc->shards[i];
        if (s->buckets != NULL) {
            for (uint32_t b = 0; b <= s->mask; b++) {
                struct cc_entry *e = s->buckets[b];
                while (e != NULL) {
                    struct cc_entry *n = e->hnext;
                    e->hnext = NULL;
                    e->in_cache = false;
                    cc_entry_unref(e);
                    e = n;
                }
            }
            free(s->buckets);
        }
        pthread_mutex_destroy(&s->lock);
    }
    cc_keys_free(cc->keys_ec, POOL_EC);
    cc_keys_free(cc->keys_rsa, POOL_RSA);
    cc_fixed_ext_fini(&cc->fx);
    cc_ca_fini(&cc->trust);
    cc_ca_fini(&cc->untrust);
    free(cc);
}

void cc_stats_get(struct cc_ctx *cc, struct cc_stats *out)
{
    memset(out, 0, sizeof(*out));
    for (int i = 0; i < NSHARDS; i++) {
        struct shard *s = &cc->shards[i];
        pthread_mutex_lock(&s->lock);
        out->hits += s->hits;
        out->misses += s->misses;
        out->coalesced += s->coalesced;
        out->evictions += s->evictions;
        out->expired += s->expired;
        out->failures += s->failures;
        out->entries += s->count;
        pthread_mutex_unlock(&s->lock);
    }
    out->mints = atomic_load(&cc->mints);
    out->hsm_wait_ns_total = atomic_load(&cc->hsm_wait_ns);
    cc_shared_stats(cc->shared, out);
    out->shared_hit_wait_ns = atomic_load(&cc->shared_hit_wait_ns);
    out->snapshot_loaded = atomic_load(&cc->snap_loaded);
    out->snapshot_saved = atomic_load(&cc->snap_saved);
}

const char *cc_shared_event_name(int ev)
{
    static const char *names[CC_SHARED_EVENTS] = {"hit",      "miss",        "publish", "lock_won",
                                                  "lock_waited", "rejected", "timeout"};
    return ev >= 0 && ev < CC_SHARED_EVENTS ? names[ev] : "?";
}

const char *cc_shared_reject_name(int why)
{
    return cc_reject_name((enum cc_reject)why);
}

/* ---- snapshot support ------------------------------------------------------------------- */

int cc_cache__each(struct cc_ctx *cc, int64_t min_life_s, cc_each_fn fn, void *user)
{
    int n = 0;
    uint64_t now = px_now_ns();
    int64_t wall = (int64_t)time(NULL);
    for (int i = 0; i < NSHARDS; i++) {
        struct shard *s = &cc->shards[i];
        pthread_mutex_lock(&s->lock);
        for (struct cc_entry *e = s->lru.lnext; e != &s->lru; e = e->lnext) {
            if (e->state != E_READY || e->expires_ns <= now + (uint64_t)min_life_s * 1000000000ull) {
                continue;
            }
            int64_t exp = wall + (int64_t)((e->expires_ns - now) / 1000000000ull);
            if (fn(user, e->key, e->cert, e->leaf_key, pool_index(cc, e->leaf_key), exp) == 0) {
                n++;
            }
        }
        pthread_mutex_unlock(&s->lock);
    }
    return n;
}

int cc_cache__insert(struct cc_ctx *cc, const uint8_t key[CC_KEY_LEN], X509 *x, int pool_idx,
                     int64_t expires_unix)
{
    enum cc_ca_kind cak = key[32] == CC_CA_UNTRUST ? CC_CA_UNTRUST : CC_CA_TRUST;
    int64_t life = expires_unix - (int64_t)time(NULL);
    PX_ENSURE(life > 0 && (cak == CC_CA_TRUST || cc->have_untrust), PX_E_INVAL);
    struct cc_entry *e = calloc(1, sizeof(*e));
    PX_ENSURE(e != NULL, -ENOMEM);
    memcpy(e->key, key, CC_KEY_LEN);
    atomic_init(&e->refs, 1);
    e->cc = cc;
    e->ca = cak;
    e->state = E_READY;
    e->leaf_key = key[33] == CC_KEY_RSA ? &cc->keys_rsa[pool_idx] : &cc->keys_ec[pool_idx];
    EVP_PKEY_up_ref(e->leaf_key->pkey);
    e->pkey = e->leaf_key->pkey;
    e->chain = X509_chain_up_ref(cak == CC_CA_TRUST ? cc->trust.chain : cc->untrust.chain);
    uint64_t exp_ns = expiry_ns(cc, x); /* never longer than this run's ttl and the notAfter */
    uint64_t snap_ns = px_now_ns() + (uint64_t)life * 1000000000ull;
    e->expires_ns = snap_ns < exp_ns ? snap_ns : exp_ns;
    e->cert = x;
    struct shard *s = shard_of(cc, key);
    pthread_mutex_lock(&s->lock);
    if (find_locked(s, key) != NULL) {
        pthread_mutex_unlock(&s->lock);
        e->cert = NULL;
        cc_entry_unref(e);
        return 1;
    }
    uint32_t b = bucket_of(s, key);
    e->hnext = s->buckets[b];
    s->buckets[b] = e;
    e->in_cache = true;
    s->count++;
    lru_push_front(s, e);
    struct cc_entry *victims = evict_locked(s);
    pthread_mutex_unlock(&s->lock);
    unref_list(victims);
    return 0;
}

const struct cc_wire_ctx *cc_cache__wire_ctx(struct cc_ctx *cc, enum cc_ca_kind kind)
{
    if (kind == CC_CA_UNTRUST && !cc->have_untrust) {
        return NULL;
    }
    return &cc->wc[kind == CC_CA_UNTRUST ? CC_CA_UNTRUST : CC_CA_TRUST];
}

const uint8_t *cc_cache__snap_key(struct cc_ctx *cc)
{
    return cc->have_mk ? cc->snap_key : NULL;
}

void cc_cache__snap_counts(struct cc_ctx *cc, uint64_t loaded, uint64_t saved)
{
    if (loaded != UINT64_MAX) {
        atomic_store(&cc->snap_loaded, loaded);
    }
    if (saved != UINT64_MAX) {
        atomic_store(&cc->snap_saved, saved);
    }
}
