/* SPDX-License-Identifier: MIT */
/*
 * dp_resolve.c - host-name lookups for CONNECT targets: c-ares driven by one resolver thread,
 * any number of names in flight, none of it on a loop thread.
 * Owns the thread, the c-ares channel (which reads resolv.conf: nameservers, search, ndots,
 * options; and the hosts file first, as nsswitch.conf says), the table of names (dp_rcache.c)
 * and the jobs from their submission until they are handed back.
 * Threads: loops call dp_resolver_submit (a lock-free MPSC push plus an eventfd write on empty
 * -> non-empty); the resolver thread polls that eventfd and c-ares' sockets, answers from the
 * cache at once, starts one ares_getaddrinfo (A and AAAA) per name that nobody is looking up
 * yet, and makes every other job for that name wait on it (single flight). Answers go back to
 * the asking loop through its MPSC list and eventfd, like HSM completions. The admin thread
 * reads the counters under stats_lock.
 * Why a thread and not the loops' rings: a c-ares channel belongs to one thread, and one
 * channel for the whole process gives one cache and one query per name whichever loop asks;
 * the hop costs a few microseconds against a lookup's milliseconds.
 * Invariants: every submitted job comes back exactly once, at its deadline at the latest
 * (resolve_timeout_ms), whatever the DNS servers do; a pending name is looked up by exactly one
 * c-ares query at a time; queues and the table are bounded (RES_JOBS_MAX, RES_NAMES_MAX).
 * Not here: what the connection does with the answer (dp_conn.c), IP literals (never submitted).
 */
#include "dp_int.h"
#include "px_mpsc.h"

#include <ares.h>
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define RES_JOBS_MAX 16384  /* jobs submitted and not handed back yet */
#define RES_NAMES_MAX 10000 /* cached and pending names */
#define RES_SOCKS_MAX 64    /* c-ares sockets (two per nameserver at most) */

/* upper bounds of tlsmint_dns_duration_seconds, in seconds */
static const double dns_bounds_s[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                      0.1,    0.25,  0.5,    1.0,   2.5,  5.0,   10.0};

struct res_sock {
    ares_socket_t fd;
    bool rd, wr;
};

struct dp_resolver {
    ares_channel ch;
    bool lib_ok, ch_ok;
    pthread_t th;
    bool th_ok;
    int evfd;                              /* submissions and stop */
    _Atomic(struct dp_res_job *) sub_head; /* MPSC, newest first */
    _Atomic uint32_t outstanding;          /* submitted, not handed back */
    _Atomic bool stop;
    struct res_sock socks[RES_SOCKS_MAX]; /* what c-ares wants polled */
    int nsocks;
    struct dp_rcache *names;
    struct dp_res_job *dl_head, *dl_tail; /* waiting jobs, earliest deadline first */
    uint32_t waiting;
    pthread_mutex_t stats_lock;
    uint64_t lookups[DP_DNS_RESULTS];
    struct px_hist duration;
    uint32_t st_names, st_pending, st_waiting;
    char state[200];
};

static const char *result_names[DP_DNS_RESULTS] = {"ok", "nxdomain", "timeout", "error", "cached"};

const char *dp_dns_result_name(int result)
{
    return result >= 0 && result < DP_DNS_RESULTS ? result_names[result] : "?";
}

socklen_t dp_res_addrlen(const union dp_res_addr *a)
{
    return a->sa.sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

/* ---- handing jobs back -------------------------------------------------------------------- */

/* the submission list (loops -> resolver) and each loop's answer list (resolver -> loop) */
PX_MPSC_DEFINE(job_list, struct dp_res_job, next)

static void deliver(struct dp_resolver *r, struct dp_res_job *j)
{
    struct dp_res_done *d = j->done;
    if (job_list_push(&d->head, j)) {
        uint64_t one = 1;
        ssize_t w = write(d->evfd, &one, sizeof(one));
        (void)w;
    }
    atomic_fetch_sub_explicit(&r->outstanding, 1, memory_order_relaxed);
}

static int result_of(const struct dp_res_job *j)
{
    if (j->cached) {
        return DP_DNS_CACHED;
    }
    switch (j->status) {
    case DP_RES_OK:
        return DP_DNS_OK;
    case DP_RES_NXDOMAIN:
    case DP_RES_NODATA:
        return DP_DNS_NXDOMAIN;
    case DP_RES_TIMEOUT:
        return DP_DNS_TIMEOUT;
    default:
        return DP_DNS_ERROR;
    }
}

/* Counts j and hands it back; j is the loop's again after this. */
static void finish(struct dp_resolver *r, struct dp_res_job *j, uint64_t now)
{
    pthread_mutex_lock(&r->stats_lock);
    r->lookups[result_of(j)]++;
    if (!j->cached) {
        px_hist_observe(&r->duration, now - j->submit_ns);
    }
    pthread_mutex_unlock(&r->stats_lock);
    deliver(r, j);
}

static void fill_addrs(struct dp_res_job *j, const union dp_res_addr *a, int n)
{
    j->naddr = 0;
    for (int i = 0; i < n && i < DP_RES_ADDRS; i++) {
        j->addr[i] = a[i];
        if (a[i].sa.sa_family == AF_INET6) {
            j->addr[i].in6.sin6_port = htons(j->port);
        } else {
            j->addr[i].in4.sin_port = htons(j->port);
        }
        j->naddr++;
    }
}

/* ---- waiting jobs, by deadline ------------------------------------------------------------ */

static void dl_insert(struct dp_resolver *r, struct dp_res_job *j)
{
    /* timeouts change only on reload: nearly always the new job goes last */
    struct dp_res_job *at = r->dl_tail;
    while (at != NULL && at->deadline_ns > j->deadline_ns) {
        at = at->dprev;
    }
    j->dprev = at;
    j->dnext = at != NULL ? at->dnext : r->dl_head;
    if (j->dnext != NULL) {
        j->dnext->dprev = j;
    } else {
        r->dl_tail = j;
    }
    if (at != NULL) {
        at->dnext = j;
    } else {
        r->dl_head = j;
    }
    r->waiting++;
}

static void dl_remove(struct dp_resolver *r, struct dp_res_job *j)
{
    if (j->dprev != NULL) {
        j->dprev->dnext = j->dnext;
    } else {
        r->dl_head = j->dnext;
    }
    if (j->dnext != NULL) {
        j->dnext->dprev = j->dprev;
    } else {
        r->dl_tail = j->dprev;
    }
    j->dprev = j->dnext = NULL;
    r->waiting--;
}

/* ---- c-ares ------------------------------------------------------------------------------- */

static void start_flight(struct dp_resolver *r, struct dp_rent *e);

/* c-ares wants fd watched for reading and/or writing, or no longer (both false). */
static void sock_state_cb(void *data, ares_socket_t fd, int readable, int writable)
{
    struct dp_resolver *r = data;
    for (int i = 0; i < r->nsocks; i++) {
        if (r->socks[i].fd == fd) {
            if (!readable && !writable) {
                r->socks[i] = r->socks[--r->nsocks];
            } else {
                r->socks[i].rd = readable;
                r->socks[i].wr = writable;
            }
            return;
        }
    }
    if ((readable || writable) && r->nsocks < RES_SOCKS_MAX) {
        r->socks[r->nsocks++] = (struct res_sock){.fd = fd, .rd = readable, .wr = writable};
    } else if (readable || writable) {
        /* only with more than 32 nameservers: its queries time out instead */
        PX_LOG_RL(PX_LOG_WARN, "dns", "more than %d resolver sockets; one is not watched",
                  RES_SOCKS_MAX);
    }
}

/* The addresses of an answer, IPv4 first (as before: most origins and tests answer there),
 * each family in the order of the answer; *ttl gets the smallest TTL. */
static int collect(const struct ares_addrinfo *ai, union dp_res_addr *out, uint32_t *ttl)
{
    int n = 0;
    *ttl = UINT32_MAX;
    static const int fams[2] = {AF_INET, AF_INET6};
    for (int f = 0; f < 2; f++) {
        for (const struct ares_addrinfo_node *a = ai != NULL ? ai->nodes : NULL;
             a != NULL && n < DP_RES_ADDRS; a = a->ai_next) {
            if (a->ai_family != fams[f] || a->ai_addr == NULL) {
                continue;
            }
            union dp_res_addr x;
            memset(&x, 0, sizeof(x));
            if (a->ai_family == AF_INET && a->ai_addrlen >= sizeof(struct sockaddr_in)) {
                memcpy(&x.in4, a->ai_addr, sizeof(x.in4));
                x.in4.sin_port = 0;
            } else if (a->ai_family == AF_INET6 && a->ai_addrlen >= sizeof(struct sockaddr_in6)) {
                memcpy(&x.in6, a->ai_addr, sizeof(x.in6));
                x.in6.sin6_port = 0;
            } else {
                continue;
            }
            bool dup = false;
            for (int k = 0; k < n && !dup; k++) {
                dup = memcmp(&out[k], &x, sizeof(x)) == 0;
            }
            if (dup) {
                continue;
            }
            out[n++] = x;
            uint32_t t = a->ai_ttl > 0 ? (uint32_t)a->ai_ttl : 0;
            if (t < *ttl) {
                *ttl = t;
            }
        }
    }
    if (n == 0) {
        *ttl = 0;
    }
    return n;
}

static void status_of(int ares_status, struct dp_res_job *j)
{
    switch (ares_status) {
    case ARES_SUCCESS:
        j->status = j->naddr > 0 ? DP_RES_OK : DP_RES_NODATA;
        break;
    case ARES_ENOTFOUND:
        j->status = DP_RES_NXDOMAIN;
        break;
    case ARES_ENODATA:
        j->status = DP_RES_NODATA;
        break;
    case ARES_ETIMEOUT:
        j->status = DP_RES_TIMEOUT;
        break;
    default:
        j->status = DP_RES_ERROR;
        snprintf(j->why, sizeof(j->why), "%s", ares_strerror(ares_status));
        break;
    }
}

/* One name's query ended, or c-ares is being destroyed (ARES_EDESTRUCTION). */
static void on_answer(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
    (void)timeouts;
    struct dp_rent *e = arg;
    struct dp_resolver *r = e->owner;
    uint64_t now = px_now_ns();
    union dp_res_addr addr[DP_RES_ADDRS];
    uint32_t ttl = 0;
    int n = status == ARES_SUCCESS ? collect(res, addr, &ttl) : 0;
    ares_freeaddrinfo(res);

    if (status == ARES_ETIMEOUT && now - e->start_ns >= 100 * 1000000ull) {
        /* c-ares gave up within its tries; ask again while someone still has time left (a
         * reload may have raised resolve_timeout_ms). Only after a real wait: never a spin. */
        for (struct dp_res_job *j = e->waiters; j != NULL; j = j->wnext) {
            if (j->deadline_ns > now + 50 * 1000000ull && !atomic_load(&r->stop)) {
                start_flight(r, e);
                return;
            }
        }
    }
    struct dp_res_job *w = e->waiters;
    e->waiters = NULL;
    while (w != NULL) {
        struct dp_res_job *nx = w->wnext;
        dl_remove(r, w);
        w->wait_on = NULL;
        w->wnext = NULL;
        if (status == ARES_EDESTRUCTION) {
            free(w); /* shutting down: the loops and their done lists are gone already */
        } else {
            fill_addrs(w, addr, n);
            status_of(status, w);
            finish(r, w, now);
        }
        w = nx;
    }
    if (status == ARES_EDESTRUCTION) {
        return; /* dp_resolver_free frees the table */
    }
    struct dp_res_job probe = {.naddr = n};
    status_of(status, &probe);
    if (probe.status == DP_RES_OK) {
        /* hosts-file answers carry no TTL (0): read again next time, so edits take effect */
        dp_rcache_settle(r->names, e, DP_RES_OK, addr, n, ttl < e->max_ttl_s ? ttl : e->max_ttl_s,
                         now);
    } else if (probe.status == DP_RES_NXDOMAIN || probe.status == DP_RES_NODATA) {
        dp_rcache_settle(r->names, e, probe.status, NULL, 0, e->neg_ttl_s, now);
    } else {
        dp_rcache_settle(r->names, e, probe.status, NULL, 0, 0, now); /* not cached */
    }
}

static void start_flight(struct dp_resolver *r, struct dp_rent *e)
{
    struct ares_addrinfo_hints hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    /* keep the answer's order: the connection tries the addresses in turn */
    hints.ai_flags = ARES_AI_NOSORT;
    e->owner = r;
    e->start_ns = px_now_ns();
    /* may call on_answer before it returns (hosts file, bad name) */
    ares_getaddrinfo(r->ch, e->name, NULL, &hints, on_answer, e);
}

/* ---- the resolver thread ------------------------------------------------------------------ */

static void submit_one(struct dp_resolver *r, struct dp_res_job *j, uint64_t now)
{
    char key[256];
    j->submit_ns = now;
    j->deadline_ns = now + (uint64_t)(j->timeout_ms > 0 ? j->timeout_ms : 2000) * 1000000ull;
    if (dp_rcache_key(j->host, key, sizeof(key)) < 0) {
        j->status = DP_RES_ERROR;
        snprintf(j->why, sizeof(j->why), "not a valid host name");
        finish(r, j, now);
        return;
    }
    struct dp_rent *e = dp_rcache_find(r->names, key, now);
    if (e != NULL && e->state != DP_RENT_PENDING) {
        j->cached = true;
        j->status = e->state == DP_RENT_OK ? DP_RES_OK : e->status;
        fill_addrs(j, e->addr, e->state == DP_RENT_OK ? e->naddr : 0);
        finish(r, j, now);
        return;
    }
    bool fresh = e == NULL;
    if (fresh) {
        e = dp_rcache_add(r->names, key);
        if (e == NULL) {
            j->status = DP_RES_BUSY;
            snprintf(j->why, sizeof(j->why), "%u names being looked up already",
                     dp_rcache_pending(r->names));
            finish(r, j, now);
            return;
        }
        e->max_ttl_s = j->max_ttl_s;
        e->neg_ttl_s = j->neg_ttl_s;
    }
    j->wait_on = e;
    j->wnext = e->waiters;
    e->waiters = j;
    dl_insert(r, j);
    if (fresh) {
        start_flight(r, e);
    }
}

/* Jobs whose deadline passed get DP_RES_TIMEOUT; their name's query goes on (and fills the
 * cache for the next connection). */
static void expire(struct dp_resolver *r, uint64_t now)
{
    while (r->dl_head != NULL && r->dl_head->deadline_ns <= now) {
        struct dp_res_job *j = r->dl_head;
        dl_remove(r, j);
        struct dp_res_job **pp = &j->wait_on->waiters;
        while (*pp != NULL && *pp != j) {
            pp = &(*pp)->wnext;
        }
        if (*pp == j) {
            *pp = j->wnext;
        }
        j->wait_on = NULL;
        j->wnext = NULL;
        j->status = DP_RES_TIMEOUT;
        j->naddr = 0;
        finish(r, j, now);
    }
}

static void take_submissions(struct dp_resolver *r)
{
    uint64_t v;
    ssize_t n = read(r->evfd, &v, sizeof(v));
    (void)n;
    struct dp_res_job *rev = job_list_take(&r->sub_head);
    uint64_t now = px_now_ns();
    while (rev != NULL) {
        struct dp_res_job *nx = rev->next;
        rev->next = NULL;
        submit_one(r, rev, now);
        rev = nx;
    }
}

static int poll_timeout_ms(struct dp_resolver *r)
{
    struct timeval max = {.tv_sec = 1, .tv_usec = 0}, tv;
    struct timeval *t = ares_timeout(r->ch, &max, &tv);
    int64_t ms = (int64_t)t->tv_sec * 1000 + (t->tv_usec + 999) / 1000;
    if (r->dl_head != NULL) {
        uint64_t now = px_now_ns();
        int64_t d = r->dl_head->deadline_ns > now
                        ? (int64_t)((r->dl_head->deadline_ns - now + 999999) / 1000000)
                        : 0;
        if (d < ms) {
            ms = d;
        }
    }
    return (int)ms;
}

static void *res_main(void *arg)
{
    struct dp_resolver *r = arg;
    struct pollfd pfd[1 + RES_SOCKS_MAX];
    while (!atomic_load_explicit(&r->stop, memory_order_acquire)) {
        int n = 0;
        pfd[n++] = (struct pollfd){.fd = r->evfd, .events = POLLIN};
        for (int i = 0; i < r->nsocks; i++) {
            pfd[n++] = (struct pollfd){
                .fd = r->socks[i].fd,
                .events = (short)((r->socks[i].rd ? POLLIN : 0) | (r->socks[i].wr ? POLLOUT : 0))};
        }
        int rc = poll(pfd, (nfds_t)n, poll_timeout_ms(r));
        if (rc < 0 && errno != EINTR) {
            PX_LOG_RL(PX_LOG_ERROR, "dns", "poll: %s", strerror(errno));
        }
        if (rc > 0 && (pfd[0].revents & POLLIN)) {
            take_submissions(r);
        }
        for (int i = 1; rc > 0 && i < n; i++) {
            if (pfd[i].revents == 0) {
                continue;
            }
            bool rd = (pfd[i].revents & (POLLIN | POLLERR | POLLHUP)) != 0;
            bool wr = (pfd[i].revents & (POLLOUT | POLLERR | POLLHUP)) != 0;
            ares_process_fd(r->ch, rd ? pfd[i].fd : ARES_SOCKET_BAD,
                            wr ? pfd[i].fd : ARES_SOCKET_BAD);
        }
        ares_process_fd(r->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD); /* c-ares' own timeouts */
        expire(r, px_now_ns());
        pthread_mutex_lock(&r->stats_lock);
        r->st_names = dp_rcache_count(r->names);
        r->st_pending = dp_rcache_pending(r->names);
        r->st_waiting = r->waiting;
        pthread_mutex_unlock(&r->stats_lock);
    }
    return NULL;
}

/* ---- life cycle --------------------------------------------------------------------------- */

static void describe_servers(struct dp_resolver *r)
{
    struct ares_addr_port_node *servers = NULL;
    int n = snprintf(r->state, sizeof(r->state), "c-ares %s, nameservers", ares_version(NULL));
    if (ares_get_servers_ports(r->ch, &servers) == ARES_SUCCESS) {
        int count = 0;
        for (struct ares_addr_port_node *s = servers;
             s != NULL && n > 0 && (size_t)n < sizeof(r->state) - 1; s = s->next) {
            char a[INET6_ADDRSTRLEN] = "?";
            inet_ntop(s->family, &s->addr, a, sizeof(a));
            n += snprintf(r->state + n, sizeof(r->state) - (size_t)n,
                          s->family == AF_INET6 ? " [%s]:%d" : " %s:%d", a,
                          s->udp_port > 0 ? s->udp_port : 53);
            count++;
        }
        if (count == 0 && n > 0 && (size_t)n < sizeof(r->state)) {
            snprintf(r->state + n, sizeof(r->state) - (size_t)n, " (none)");
        }
    }
    ares_free_data(servers);
}

struct dp_resolver *dp_resolver_new(const struct px_cfg *cfg, char *err, size_t errlen)
{
    struct dp_resolver *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        snprintf(err, errlen, "resolver: out of memory");
        return NULL;
    }
    r->evfd = -1;
    pthread_mutex_init(&r->stats_lock, NULL);
    px_hist_init(&r->duration, dns_bounds_s, (int)(sizeof(dns_bounds_s) / sizeof(dns_bounds_s[0])));
    /* refcounted by c-ares, undone in dp_resolver_free; called where servers are made (the
     * main thread), never concurrently */
    int rc = ares_library_init(ARES_LIB_INIT_ALL);
    if (rc != ARES_SUCCESS) {
        snprintf(err, errlen, "resolver: c-ares: %s", ares_strerror(rc));
        free(r);
        return NULL;
    }
    r->lib_ok = true;
    /*
     * resolve_timeout_ms bounds a lookup as a whole: c-ares gets a first try of a third of it
     * and one retry (its retries double the wait: 1/3 + 2/3); this replaces resolv.conf's
     * timeout and attempts options, everything else in resolv.conf applies.
     */
    struct ares_options opt;
    memset(&opt, 0, sizeof(opt));
    opt.sock_state_cb = sock_state_cb;
    opt.sock_state_cb_data = r;
    opt.timeout = cfg->resolve_timeout_ms / 3 > 100 ? cfg->resolve_timeout_ms / 3 : 100;
    opt.tries = 2;
    rc = ares_init_options(&r->ch, &opt,
                           ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
    if (rc != ARES_SUCCESS) {
        snprintf(err, errlen, "resolver: c-ares cannot start: %s", ares_strerror(rc));
        goto fail;
    }
    r->ch_ok = true;
    describe_servers(r);
    r->names = dp_rcache_new(RES_NAMES_MAX);
    r->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r->names == NULL || r->evfd < 0) {
        snprintf(err, errlen, "resolver: out of memory");
        goto fail;
    }
    if (pthread_create(&r->th, NULL, res_main, r) != 0) {
        snprintf(err, errlen, "resolver: cannot start its thread");
        goto fail;
    }
    r->th_ok = true;
    px_log(PX_LOG_INFO, "dns", "resolver: %s, lookups bounded by %d ms", r->state,
           cfg->resolve_timeout_ms);
    return r;
fail:
    dp_resolver_free(r);
    return NULL;
}

void dp_resolver_free(struct dp_resolver *r)
{
    if (r == NULL) {
        return;
    }
    if (r->th_ok) {
        atomic_store_explicit(&r->stop, true, memory_order_release);
        uint64_t one = 1;
        ssize_t w = write(r->evfd, &one, sizeof(one));
        (void)w;
        pthread_join(r->th, NULL);
    }
    /* submitted but never taken: freed, like the waiters ares_destroy hands back */
    struct dp_res_job *j = job_list_take_any(&r->sub_head);
    while (j != NULL) {
        struct dp_res_job *nx = j->next;
        free(j);
        j = nx;
    }
    if (r->ch_ok) {
        ares_destroy(r->ch);
    }
    if (r->lib_ok) {
        ares_library_cleanup();
    }
    dp_rcache_free(r->names);
    if (r->evfd >= 0) {
        close(r->evfd);
    }
    pthread_mutex_destroy(&r->stats_lock);
    free(r);
}

int dp_resolver_submit(struct dp_resolver *r, struct dp_res_job *job)
{
    if (atomic_load_explicit(&r->stop, memory_order_relaxed)) {
        return PX_E_SHUTDOWN;
    }
    if (atomic_fetch_add_explicit(&r->outstanding, 1, memory_order_relaxed) >= RES_JOBS_MAX) {
        atomic_fetch_sub_explicit(&r->outstanding, 1, memory_order_relaxed);
        return PX_E_FULL;
    }
    job->status = DP_RES_ERROR;
    job->cached = false;
    job->naddr = 0;
    job->why[0] = '\0';
    job->wait_on = NULL;
    job->wnext = job->dprev = job->dnext = NULL;
    if (job_list_push(&r->sub_head, job)) {
        uint64_t one = 1;
        ssize_t w = write(r->evfd, &one, sizeof(one));
        (void)w;
    }
    return 0;
}

struct dp_res_job *dp_res_done_take(struct dp_res_done *d)
{
    uint64_t v;
    ssize_t n = read(d->evfd, &v, sizeof(v));
    (void)n;
    return job_list_take(&d->head);
}

void dp_resolver_stats(struct dp_resolver *r, struct dp_dns_stats *out)
{
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&r->stats_lock);
    memcpy(out->lookups, r->lookups, sizeof(out->lookups));
    out->duration = r->duration;
    out->names = r->st_names;
    out->in_flight = r->st_pending;
    out->waiting = r->st_waiting;
    pthread_mutex_unlock(&r->stats_lock);
    out->names_max = RES_NAMES_MAX;
    snprintf(out->state, sizeof(out->state), "%s", r->state);
}
