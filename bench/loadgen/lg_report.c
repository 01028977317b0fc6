/* SPDX-License-Identifier: MIT */
/*
 * lg_report.c - what tlsmint-bench measures and prints: latency histograms, /proc sampling
 * of the processes under test (--pid), the per-second progress line, the 100 ms timeline
 * CSV and the final report (text, or one JSON object).
 * Owns the report state (previous counters for interval rates, the timeline cursor, the
 * --pid samples) and the timeline FILE it is given. Histogram helpers are called by the
 * workers; everything else only by the main thread, which reads the workers' counters with
 * relaxed loads while they run and plainly after they are joined.
 * Invariants: the histogram is log-linear (exact below 128 us, then 64 bins per octave), so
 * a percentile is within about 1.6 % of the true value; memory is fixed at start.
 * Not here: the connection state machine (lg_worker.c), option parsing (lg_opts.c).
 */
#include <ctype.h>
#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "lg.h"

static const char *const err_names[LG_E_COUNT] = {
    [LG_E_CONNECT] = "connect", [LG_E_PROXY] = "proxy", [LG_E_TLS] = "tls",
    [LG_E_VERIFY] = "verify",   [LG_E_HTTP] = "http",   [LG_E_TIMEOUT] = "timeout",
    [LG_E_BUSY] = "busy",
};

uint64_t lg_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- histograms ------------------------------------------------------------------- */

unsigned lg_hist_bin(uint64_t us)
{
    unsigned e;
    uint64_t idx;

    if (us < 128) {
        return (unsigned)us;
    }
    e = (unsigned)(63 - __builtin_clzll(us)) - 6;
    idx = 64ull * e + (us >> e);
    return idx >= LG_HIST_BINS ? LG_HIST_BINS - 1 : (unsigned)idx;
}

/* The middle of the bin's range, in microseconds. */
uint64_t lg_hist_bin_value(unsigned bin)
{
    unsigned e;
    uint64_t m;

    if (bin < 128) {
        return bin;
    }
    e = bin / 64 - 1;
    m = bin - 64ull * e;
    return (m << e) + ((1ull << e) >> 1);
}

void lg_hist_add(struct lg_hist *h, uint64_t us)
{
    lg_add(&h->bins[lg_hist_bin(us)], 1);
    if (us > lg_load(&h->max_us)) {
        __atomic_store_n(&h->max_us, us, __ATOMIC_RELAXED);
    }
}

void lg_tl_hist_add(uint32_t *bins, uint64_t us)
{
    uint32_t *b = &bins[lg_hist_bin(us)];

    __atomic_store_n(b, __atomic_load_n(b, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
}

uint64_t lg_hist_pct(const uint64_t *bins, double pct)
{
    uint64_t total = 0;
    uint64_t rank;
    uint64_t cum = 0;

    for (unsigned i = 0; i < LG_HIST_BINS; i++) {
        total += bins[i];
    }
    if (total == 0) {
        return 0;
    }
    rank = (uint64_t)ceil(pct / 100.0 * (double)total);
    if (rank == 0) {
        rank = 1;
    }
    for (unsigned i = 0; i < LG_HIST_BINS; i++) {
        cum += bins[i];
        if (cum >= rank) {
            return lg_hist_bin_value(i);
        }
    }
    return lg_hist_bin_value(LG_HIST_BINS - 1);
}

uint64_t lg_hist_pct32(const uint32_t *bins, double pct)
{
    static __thread uint64_t wide[LG_HIST_BINS];

    for (unsigned i = 0; i < LG_HIST_BINS; i++) {
        wide[i] = bins[i];
    }
    return lg_hist_pct(wide, pct);
}

/* ---- /proc ------------------------------------------------------------------------ */

struct proc_ent {
    int pid;
    int ppid;
    uint64_t ticks;
    bool in;
};

/* utime+stime+cutime+cstime and ppid of one process from /proc/PID/stat. */
static int read_stat(int pid, int *ppid, uint64_t *ticks)
{
    char path[64];
    char buf[1024];
    FILE *f;
    size_t n;
    char *p;
    unsigned long long ut = 0;
    unsigned long long st = 0;
    long long cut = 0;
    long long cst = 0;
    int pp = 0;

    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    f = fopen(path, "r");
    if (f == NULL) {
        return -1;
    }
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* the command name may hold spaces and parentheses: fields start after the last ')' */
    p = strrchr(buf, ')');
    if (p == NULL ||
        sscanf(p + 1, " %*c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %lld %lld", &pp, &ut,
               &st, &cut, &cst) != 5) {
        return -1;
    }
    *ppid = pp;
    *ticks = ut + st + (uint64_t)(cut > 0 ? cut : 0) + (uint64_t)(cst > 0 ? cst : 0);
    return 0;
}

static void read_mem(int pid, uint64_t *hwm, uint64_t *rss)
{
    char path[64];
    char line[256];
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    f = fopen(path, "r");
    if (f == NULL) {
        return;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        unsigned long long v = 0;

        if (sscanf(line, "VmHWM: %llu kB", &v) == 1) {
            *hwm += v;
        } else if (sscanf(line, "VmRSS: %llu kB", &v) == 1) {
            *rss += v;
        }
    }
    fclose(f);
}

int lg_proc_sample(const int *pids, unsigned npids, struct lg_proc_sample *s)
{
    DIR *d = opendir("/proc");
    struct dirent *de;
    struct proc_ent *ents = NULL;
    size_t n = 0;
    size_t cap = 0;
    bool changed = true;
    long hz = sysconf(_SC_CLK_TCK);
    uint64_t ticks = 0;
    int rc = 0;

    memset(s, 0, sizeof(*s));
    if (d == NULL) {
        return -1;
    }
    while ((de = readdir(d)) != NULL) {
        struct proc_ent e;

        if (!isdigit((unsigned char)de->d_name[0])) {
            continue;
        }
        memset(&e, 0, sizeof(e));
        e.pid = atoi(de->d_name);
        if (read_stat(e.pid, &e.ppid, &e.ticks) < 0) {
            continue;
        }
        if (n == cap) {
            size_t ncap = cap == 0 ? 512 : cap * 2;
            struct proc_ent *ne = realloc(ents, ncap * sizeof(*ne));

            if (ne == NULL) {
                rc = -1;
                goto out;
            }
            ents = ne;
            cap = ncap;
        }
        for (unsigned i = 0; i < npids; i++) {
            if (pids[i] == e.pid) {
                e.in = true;
            }
        }
        ents[n++] = e;
    }
    for (unsigned i = 0; i < npids; i++) {
        bool found = false;

        for (size_t j = 0; j < n; j++) {
            found = found || ents[j].pid == pids[i];
        }
        if (!found) {
            rc = -1;
        }
    }
    /* descendants: repeat until no process joins (trees are shallow) */
    while (changed) {
        changed = false;
        for (size_t j = 0; j < n; j++) {
            if (ents[j].in) {
                continue;
            }
            for (size_t k = 0; k < n; k++) {
                if (ents[k].in && ents[k].pid == ents[j].ppid) {
                    ents[j].in = true;
                    changed = true;
                    break;
                }
            }
        }
    }
    for (size_t j = 0; j < n; j++) {
        if (ents[j].in) {
            s->nproc++;
            ticks += ents[j].ticks;
            read_mem(ents[j].pid, &s->hwm_kb, &s->rss_kb);
        }
    }
    s->cpu_s = (double)ticks / (double)(hz > 0 ? hz : 100);
out:
    closedir(d);
    free(ents);
    return rc;
}

/* ---- aggregation ------------------------------------------------------------------ */

struct totals {
    uint64_t attempted;
    uint64_t ok;
    uint64_t failed[LG_E_COUNT];
    uint64_t failed_all;
    uint64_t handshakes;
    uint64_t resumed;
    uint64_t bytes_in;
    uint64_t bytes_out;
    uint64_t body_bytes;
    uint64_t active;
    uint64_t held;
    uint64_t dropped;
    uint64_t intercepted;
    uint64_t bypassed;
    uint64_t tls12;
    uint64_t tls13;
    uint64_t alpn_h2;
    uint64_t alpn_http11;
    uint64_t alpn_none;
    uint64_t cipher_aes128;
    uint64_t cipher_aes256;
    uint64_t cipher_other;
    uint64_t late_starts;
    uint64_t unfinished;
};

struct lg_report {
    struct lg_run *run;
    FILE *tl;
    uint64_t tl_next; /* next timeline bucket to write */
    uint64_t last_tick_ns;
    uint64_t prev_ok;
    uint64_t prev_attempted;
    uint64_t prev_bytes;
    uint64_t prev_failed;
    uint64_t prev_hs[LG_HIST_BINS];
    uint64_t cur_hs[LG_HIST_BINS];
    struct lg_hist merged[3]; /* connect, handshake, request: filled by lg_report_final */
    struct rusage ru0;
    struct lg_proc_sample p0;
    struct lg_proc_sample p1;
    bool p_ok;
    uint64_t rss_peak_kb; /* max of the summed VmRSS over the 1 s samples */
    uint32_t tl_bins[LG_HIST_BINS];
};

static void sum_totals(struct lg_run *run, struct totals *t)
{
    memset(t, 0, sizeof(*t));
    for (unsigned i = 0; i < run->nworkers; i++) {
        struct lg_stats *s = lg_worker_stats(run->workers[i]);

        t->attempted += lg_load(&s->attempted);
        t->ok += lg_load(&s->ok);
        for (unsigned k = 0; k < LG_E_COUNT; k++) {
            uint64_t f = lg_load(&s->failed[k]);

            t->failed[k] += f;
            t->failed_all += f;
        }
        t->handshakes += lg_load(&s->handshakes);
        t->resumed += lg_load(&s->resumed);
        t->bytes_in += lg_load(&s->bytes_in);
        t->bytes_out += lg_load(&s->bytes_out);
        t->body_bytes += lg_load(&s->body_bytes);
        t->active += lg_load(&s->active);
        t->held += lg_load(&s->held);
        t->dropped += lg_load(&s->dropped);
        t->intercepted += lg_load(&s->intercepted);
        t->bypassed += lg_load(&s->bypassed);
        t->tls12 += lg_load(&s->tls12);
        t->tls13 += lg_load(&s->tls13);
        t->alpn_h2 += lg_load(&s->alpn_h2);
        t->alpn_http11 += lg_load(&s->alpn_http11);
        t->alpn_none += lg_load(&s->alpn_none);
        t->cipher_aes128 += lg_load(&s->cipher_aes128);
        t->cipher_aes256 += lg_load(&s->cipher_aes256);
        t->cipher_other += lg_load(&s->cipher_other);
        t->late_starts += lg_load(&s->late_starts);
        t->unfinished += lg_load(&s->unfinished);
    }
}

struct lg_report *lg_report_new(struct lg_run *run, FILE *timeline)
{
    struct lg_report *r = calloc(1, sizeof(*r));

    if (r == NULL) {
        return NULL;
    }
    r->run = run;
    r->tl = timeline;
    getrusage(RUSAGE_SELF, &r->ru0);
    if (timeline != NULL) {
        fprintf(timeline, "t_s,attempted,ok,failed");
        for (unsigned k = 0; k < LG_E_COUNT; k++) {
            fprintf(timeline, ",failed_%s", err_names[k]);
        }
        fprintf(timeline, ",hs_p50_ms,hs_p99_ms,intercepted,bypassed\n");
    }
    return r;
}

void lg_report_free(struct lg_report *r)
{
    free(r);
}

/* ---- timeline --------------------------------------------------------------------- */

static void tl_write(struct lg_report *r, uint64_t b)
{
    struct lg_run *run = r->run;
    uint64_t att = 0;
    uint64_t ok = 0;
    uint64_t failed[LG_E_COUNT] = {0};
    uint64_t fall = 0;
    uint64_t icp = 0;
    uint64_t byp = 0;
    bool any_hs = false;

    memset(r->tl_bins, 0, sizeof(r->tl_bins));
    for (unsigned i = 0; i < run->nworkers; i++) {
        struct lg_tl_slot *s = &lg_worker_timeline(run->workers[i])[b % LG_TL_SLOTS];

        if (__atomic_load_n(&s->tag, __ATOMIC_ACQUIRE) != b + 1) {
            continue;
        }
        att += lg_load(&s->attempted);
        ok += lg_load(&s->ok);
        for (unsigned k = 0; k < LG_E_COUNT; k++) {
            failed[k] += lg_load(&s->failed[k]);
            fall += lg_load(&s->failed[k]);
        }
        icp += lg_load(&s->intercepted);
        byp += lg_load(&s->bypassed);
        for (unsigned j = 0; j < LG_HIST_BINS; j++) {
            uint32_t v = __atomic_load_n(&s->hs_bins[j], __ATOMIC_RELAXED);

            r->tl_bins[j] += v;
            any_hs = any_hs || v != 0;
        }
    }
    fprintf(r->tl, "%.1f,%llu,%llu,%llu", (double)b / 10.0, (unsigned long long)att,
            (unsigned long long)ok, (unsigned long long)fall);
    for (unsigned k = 0; k < LG_E_COUNT; k++) {
        fprintf(r->tl, ",%llu", (unsigned long long)failed[k]);
    }
    if (any_hs) {
        fprintf(r->tl, ",%.3f,%.3f", lg_hist_pct32(r->tl_bins, 50) / 1000.0,
                lg_hist_pct32(r->tl_bins, 99) / 1000.0);
    } else {
        fprintf(r->tl, ",nan,nan");
    }
    fprintf(r->tl, ",%llu,%llu\n", (unsigned long long)icp, (unsigned long long)byp);
}

void lg_report_timeline_flush(struct lg_report *r, uint64_t now_ns, bool final)
{
    uint64_t cur;
    uint64_t upto;

    if (r->tl == NULL) {
        return;
    }
    cur = now_ns > r->run->t0_ns ? (now_ns - r->run->t0_ns) / LG_TL_NS : 0;
    if (final) {
        upto = cur + 1;
    } else {
        upto = cur > LG_TL_LAG ? cur - LG_TL_LAG : 0;
    }
    /* a main thread stalled for seconds would find the ring reused: skip what is gone */
    if (upto > LG_TL_SLOTS && r->tl_next < upto - (LG_TL_SLOTS - LG_TL_LAG)) {
        r->tl_next = upto - (LG_TL_SLOTS - LG_TL_LAG);
    }
    for (; r->tl_next < upto; r->tl_next++) {
        tl_write(r, r->tl_next);
    }
    fflush(r->tl);
}

/* ---- progress --------------------------------------------------------------------- */

void lg_report_tick(struct lg_report *r, uint64_t now_ns)
{
    const struct lg_opts *o = r->run->opts;
    struct totals t;
    uint64_t last = r->last_tick_ns != 0 ? r->last_tick_ns : r->run->t0_ns;
    double dt = (double)(now_ns - last) / 1e9;
    double el = (double)(now_ns - r->run->t0_ns) / 1e9;
    char errs[200];
    size_t el_len = 0;
    uint64_t p50;
    uint64_t p99;

    if (o->npids > 0) {
        struct lg_proc_sample s;

        if (lg_proc_sample(o->pids, o->npids, &s) == 0 && s.rss_kb > r->rss_peak_kb) {
            r->rss_peak_kb = s.rss_kb;
        }
    }
    sum_totals(r->run, &t);
    memset(r->cur_hs, 0, sizeof(r->cur_hs));
    for (unsigned i = 0; i < r->run->nworkers; i++) {
        struct lg_stats *s = lg_worker_stats(r->run->workers[i]);

        for (unsigned j = 0; j < LG_HIST_BINS; j++) {
            r->cur_hs[j] += lg_load(&s->handshake.bins[j]);
        }
    }
    for (unsigned j = 0; j < LG_HIST_BINS; j++) {
        uint64_t c = r->cur_hs[j];

        r->cur_hs[j] = c - r->prev_hs[j];
        r->prev_hs[j] = c;
    }
    p50 = lg_hist_pct(r->cur_hs, 50);
    p99 = lg_hist_pct(r->cur_hs, 99);

    errs[0] = '\0';
    for (unsigned k = 0; k < LG_E_COUNT; k++) {
        if (t.failed[k] != 0 && el_len < sizeof(errs)) {
            el_len += (size_t)snprintf(errs + el_len, sizeof(errs) - el_len, "%s%s %llu",
                                       el_len != 0 ? ", " : " (", err_names[k],
                                       (unsigned long long)t.failed[k]);
        }
    }
    if (el_len != 0 && el_len < sizeof(errs) - 1) {
        strcat(errs, ")");
    }
    if (!o->quiet && dt > 0.0) {
        char held[48] = "";

        if (o->scenario == LG_SC_IDLE) {
            snprintf(held, sizeof(held), " held %llu dropped %llu", (unsigned long long)t.held,
                     (unsigned long long)t.dropped);
        }
        fprintf(stderr,
                "[%6.1fs] ok %llu (%.0f/s) failed %llu%s (+%llu) active %llu%s | "
                "hs p50 %.2f p99 %.2f ms | %.1f MB/s\n",
                el, (unsigned long long)t.ok, (double)(t.ok - r->prev_ok) / dt,
                (unsigned long long)t.failed_all, errs,
                (unsigned long long)(t.failed_all - r->prev_failed), (unsigned long long)t.active,
                held, p50 / 1000.0, p99 / 1000.0, (double)(t.bytes_in - r->prev_bytes) / dt / 1e6);
    }
    r->prev_ok = t.ok;
    r->prev_attempted = t.attempted;
    r->prev_bytes = t.bytes_in;
    r->prev_failed = t.failed_all;
    r->last_tick_ns = now_ns;
}

/* ---- --pid ------------------------------------------------------------------------ */

void lg_report_pids_begin(struct lg_report *r)
{
    const struct lg_opts *o = r->run->opts;

    if (o->npids > 0) {
        r->p_ok = lg_proc_sample(o->pids, o->npids, &r->p0) == 0;
        r->rss_peak_kb = r->p0.rss_kb;
    }
}

void lg_report_pids_end(struct lg_report *r)
{
    const struct lg_opts *o = r->run->opts;

    if (o->npids > 0) {
        if (lg_proc_sample(o->pids, o->npids, &r->p1) < 0) {
            r->p_ok = false;
        }
        if (r->p1.rss_kb > r->rss_peak_kb) {
            r->rss_peak_kb = r->p1.rss_kb;
        }
    }
}

/* ---- final report ----------------------------------------------------------------- */

static void merge_hists(struct lg_report *r)
{
    memset(r->merged, 0, sizeof(r->merged));
    for (unsigned i = 0; i < r->run->nworkers; i++) {
        struct lg_stats *s = lg_worker_stats(r->run->workers[i]);
        const struct lg_hist *src[3] = {&s->connect, &s->handshake, &s->request};

        for (unsigned h = 0; h < 3; h++) {
            for (unsigned j = 0; j < LG_HIST_BINS; j++) {
                r->merged[h].bins[j] += src[h]->bins[j];
            }
            if (src[h]->max_us > r->merged[h].max_us) {
                r->merged[h].max_us = src[h]->max_us;
            }
        }
    }
}

/* JSON string body: escapes quotes, backslashes and control bytes. */
static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s != '\0'; s++) {
        unsigned char ch = (unsigned char)*s;

        if (ch == '"' || ch == '\\') {
            fprintf(f, "\\%c", ch);
        } else if (ch < 0x20 || ch >= 0x7f) {
            fprintf(f, "\\u%04x", ch);
        } else {
            fputc(ch, f);
        }
    }
    fputc('"', f);
}

static const char *first_err(struct lg_run *run, unsigned k)
{
    for (unsigned i = 0; i < run->nworkers; i++) {
        const char *e = lg_worker_stats(run->workers[i])->first_err[k];

        if (e[0] != '\0') {
            return e;
        }
    }
    return "";
}

static double ms(uint64_t us)
{
    return (double)us / 1000.0;
}

/* A percentile in ms, never above the exact maximum (bins report their middle). */
static double pct_ms(const struct lg_hist *h, double pct)
{
    uint64_t v = lg_hist_pct(h->bins, pct);

    return ms(v > h->max_us ? h->max_us : v);
}

static double ru_cpu(const struct rusage *ru)
{
    return (double)ru->ru_utime.tv_sec + (double)ru->ru_utime.tv_usec / 1e6 +
           (double)ru->ru_stime.tv_sec + (double)ru->ru_stime.tv_usec / 1e6;
}

static void pid_list(FILE *f, const struct lg_opts *o)
{
    for (unsigned i = 0; i < o->npids; i++) {
        fprintf(f, "%s%d", i == 0 ? "" : ",", o->pids[i]);
    }
}

void lg_report_final(struct lg_report *r, uint64_t end_ns, const struct lg_idle_result *idle)
{
    uint64_t idle_up_ns = idle->up_ns;
    uint64_t idle_up_count = idle->up_count;
    uint64_t idle_end_held = idle->end_held;
    double held_s = idle->up_ns != 0 && idle->end_ns > idle->up_ns
                        ? (double)(idle->end_ns - idle->up_ns) / 1e9
                        : 0.0;
    struct lg_run *run = r->run;
    const struct lg_opts *o = run->opts;
    struct totals t;
    struct rusage ru1;
    double el = (double)(end_ns - run->t0_ns) / 1e9;
    double up_s = idle_up_ns != 0 ? (double)(idle_up_ns - run->t0_ns) / 1e9 : el;
    double rate_el = o->scenario == LG_SC_IDLE ? up_s : el;
    double cps;
    double mbps;
    double lg_cpu;
    double pcpu = r->p1.cpu_s - r->p0.cpu_s;
    static const char *const hnames[3] = {"connect", "handshake", "request"};
    FILE *f = stdout;

    sum_totals(run, &t);
    merge_hists(r);
    getrusage(RUSAGE_SELF, &ru1);
    lg_cpu = ru_cpu(&ru1) - ru_cpu(&r->ru0);
    cps = rate_el > 0.0 ? (double)t.ok / rate_el : 0.0;
    mbps = el > 0.0 ? (double)t.bytes_in / el / 1e6 : 0.0;

    if (o->json) {
        fprintf(f, "{\"scenario\":\"%s\",\"connect\":", o->scenario_name);
        json_str(f, o->connect_arg);
        fprintf(f, ",\"host\":");
        json_str(f, o->host_pattern != NULL ? o->host_pattern
                    : o->hosts_file != NULL ? o->hosts_file
                                            : o->host);
        fprintf(f, ",\"proxy\":");
        if (o->proxy_arg != NULL) {
            json_str(f, o->proxy_arg);
        } else {
            fputs("null", f);
        }
        fprintf(f,
                ",\"threads\":%u,\"mode\":\"%s\",\"concurrency\":%u,\"rate\":%g,"
                "\"timeout_ms\":%u,\"tls\":\"%s\",\"alpn\":",
                run->nworkers, o->rate > 0.0 ? "open" : "closed",
                o->rate > 0.0 ? 0u : o->concurrency, o->rate, o->timeout_ms,
                o->tls_version == TLS1_3_VERSION   ? "1.3"
                : o->tls_version == TLS1_2_VERSION ? "1.2"
                                                   : "any");
        if (o->alpn != NULL) {
            json_str(f, o->alpn);
        } else {
            fputs("null", f);
        }
        fprintf(f,
                ",\"elapsed_s\":%.3f,\"attempted\":%llu,\"ok\":%llu,\"failed\":%llu,"
                "\"errors\":{",
                el, (unsigned long long)t.attempted, (unsigned long long)t.ok,
                (unsigned long long)t.failed_all);
        for (unsigned k = 0; k < LG_E_COUNT; k++) {
            fprintf(f, "%s\"%s\":%llu", k == 0 ? "" : ",", err_names[k],
                    (unsigned long long)t.failed[k]);
        }
        fprintf(f, "},\"first_errors\":{");
        for (unsigned k = 0, n = 0; k < LG_E_COUNT; k++) {
            if (first_err(run, k)[0] != '\0') {
                fprintf(f, "%s\"%s\":", n++ == 0 ? "" : ",", err_names[k]);
                json_str(f, first_err(run, k));
            }
        }
        fprintf(f,
                "},\"unfinished\":%llu,\"late_starts\":%llu,\"conn_per_s\":%.2f,"
                "\"handshakes\":%llu,\"resumed\":%llu,\"latency_ms\":{",
                (unsigned long long)t.unfinished, (unsigned long long)t.late_starts, cps,
                (unsigned long long)t.handshakes, (unsigned long long)t.resumed);
        for (unsigned h = 0; h < 3; h++) {
            const struct lg_hist *hh = &r->merged[h];

            fprintf(f, "%s\"%s\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f}",
                    h == 0 ? "" : ",", hnames[h], pct_ms(hh, 50), pct_ms(hh, 90), pct_ms(hh, 99),
                    ms(hh->max_us));
        }
        fprintf(f,
                "},\"bytes_in\":%llu,\"body_bytes\":%llu,\"bytes_out\":%llu,"
                "\"mb_per_s\":%.2f,\"tls_versions\":{\"1.2\":%llu,\"1.3\":%llu},"
                "\"alpn_negotiated\":{\"h2\":%llu,\"http/1.1\":%llu,\"none\":%llu}",
                (unsigned long long)t.bytes_in, (unsigned long long)t.body_bytes,
                (unsigned long long)t.bytes_out, mbps, (unsigned long long)t.tls12,
                (unsigned long long)t.tls13, (unsigned long long)t.alpn_h2,
                (unsigned long long)t.alpn_http11, (unsigned long long)t.alpn_none);
        fprintf(f, ",\"cipher\":{\"aes-128-gcm\":%llu,\"aes-256-gcm\":%llu,\"other\":%llu}",
                (unsigned long long)t.cipher_aes128, (unsigned long long)t.cipher_aes256,
                (unsigned long long)t.cipher_other);
        if (o->issuer_stats) {
            fprintf(f, ",\"issuers\":{\"intercepted\":%llu,\"bypassed\":%llu}",
                    (unsigned long long)t.intercepted, (unsigned long long)t.bypassed);
        }
        if (o->scenario == LG_SC_IDLE) {
            fprintf(f,
                    ",\"idle\":{\"conns\":%u,\"up\":%llu,\"up_after_s\":%.3f,"
                    "\"hold_s\":%.3f,\"held_at_end\":%llu,\"dropped\":%llu}",
                    o->concurrency, (unsigned long long)idle_up_count, up_s, held_s,
                    (unsigned long long)idle_end_held, (unsigned long long)t.dropped);
        }
        if (o->npids > 0) {
            fprintf(f, ",\"pids\":{\"pids\":[");
            pid_list(f, o);
            fprintf(f,
                    "],\"valid\":%s,\"processes\":%u,\"cpu_s\":%.3f,"
                    "\"cpu_ms_per_conn\":%.4f,\"cpu_s_per_gb\":%.3f,\"vmhwm_kb\":%llu,"
                    "\"vmrss_kb\":%llu,\"rss_peak_sampled_kb\":%llu}",
                    r->p_ok ? "true" : "false", r->p1.nproc, pcpu,
                    t.ok > 0 ? pcpu * 1000.0 / (double)t.ok : 0.0,
                    t.bytes_in > 0 ? pcpu / ((double)t.bytes_in / 1e9) : 0.0,
                    (unsigned long long)r->p1.hwm_kb, (unsigned long long)r->p1.rss_kb,
                    (unsigned long long)r->rss_peak_kb);
        }
        fprintf(f, ",\"loadgen_cpu_s\":%.3f}\n", lg_cpu);
        fflush(f);
        return;
    }

    fprintf(f, "tlsmint-bench %s: %u thread%s, ", o->scenario_name, run->nworkers,
            run->nworkers == 1 ? "" : "s");
    if (o->rate > 0.0) {
        fprintf(f, "open loop %g conn/s (table %u)", o->rate, o->max_inflight);
    } else {
        fprintf(f, "closed loop, concurrency %u", o->concurrency);
    }
    fprintf(f, ", %.2f s\n", el);
    fprintf(f, "  target       %s", o->connect_arg);
    if (o->host_pattern != NULL) {
        fprintf(f, ", hosts %s x %llu", o->host_pattern, (unsigned long long)o->count);
    } else if (o->hosts_file != NULL) {
        fprintf(f, ", hosts from %s (%u)", o->hosts_file, o->nhosts);
    } else {
        fprintf(f, ", host %s", o->host);
    }
    if (o->proxy_arg != NULL) {
        fprintf(f, ", via proxy %s", o->proxy_arg);
        if (o->connect_line_host != NULL) {
            fprintf(f, " (CONNECT %s:%u)", o->connect_line_host, (unsigned)o->port);
        }
    }
    fprintf(f, ", verify %s\n", o->insecure ? "off" : o->cafile != NULL ? o->cafile : "system");
    fprintf(f, "  connections  %llu attempted, %llu ok, %llu failed",
            (unsigned long long)t.attempted, (unsigned long long)t.ok,
            (unsigned long long)t.failed_all);
    if (t.unfinished != 0) {
        fprintf(f, ", %llu unfinished", (unsigned long long)t.unfinished);
    }
    fprintf(f, "; %.1f conn/s\n", cps);
    fprintf(f, "  errors      ");
    for (unsigned k = 0; k < LG_E_COUNT; k++) {
        fprintf(f, " %s %llu", err_names[k], (unsigned long long)t.failed[k]);
    }
    fputc('\n', f);
    for (unsigned k = 0; k < LG_E_COUNT; k++) {
        if (first_err(run, k)[0] != '\0') {
            fprintf(f, "    first %-7s %s\n", err_names[k], first_err(run, k));
        }
    }
    fprintf(f, "  latency ms        p50       p90       p99       max\n");
    for (unsigned h = 0; h < 3; h++) {
        const struct lg_hist *hh = &r->merged[h];

        fprintf(f, "    %-10s %9.3f %9.3f %9.3f %9.3f\n", hnames[h], pct_ms(hh, 50), pct_ms(hh, 90),
                pct_ms(hh, 99), ms(hh->max_us));
    }
    fprintf(f, "  tls          1.3: %llu, 1.2: %llu; alpn h2 %llu, http/1.1 %llu, none %llu\n",
            (unsigned long long)t.tls13, (unsigned long long)t.tls12, (unsigned long long)t.alpn_h2,
            (unsigned long long)t.alpn_http11, (unsigned long long)t.alpn_none);
    fprintf(f, "  cipher       aes-128-gcm %llu, aes-256-gcm %llu, other %llu\n",
            (unsigned long long)t.cipher_aes128, (unsigned long long)t.cipher_aes256,
            (unsigned long long)t.cipher_other);
    if (o->resume) {
        fprintf(f, "  resumed      %llu of %llu handshakes\n", (unsigned long long)t.resumed,
                (unsigned long long)t.handshakes);
    }
    fprintf(f, "  bytes        in %.3f MB (body %.3f MB), out %.3f MB; %.2f MB/s in\n",
            (double)t.bytes_in / 1e6, (double)t.body_bytes / 1e6, (double)t.bytes_out / 1e6, mbps);
    if (o->issuer_stats) {
        fprintf(f, "  issuers      intercepted %llu, bypassed %llu\n",
                (unsigned long long)t.intercepted, (unsigned long long)t.bypassed);
    }
    if (o->scenario == LG_SC_IDLE) {
        fprintf(f,
                "  idle         %llu of %u up after %.2f s; held %.1f s; %llu still up at the "
                "end, %llu closed by the peer\n",
                (unsigned long long)idle_up_count, o->concurrency, up_s, held_s,
                (unsigned long long)idle_end_held, (unsigned long long)t.dropped);
    }
    if (o->npids > 0) {
        fprintf(f, "  processes    pid ");
        pid_list(f, o);
        fprintf(f, " + descendants (%u processes)%s: CPU %.3f s = %.4f ms/conn", r->p1.nproc,
                r->p_ok ? "" : " [a pid vanished: numbers incomplete]", pcpu,
                t.ok > 0 ? pcpu * 1000.0 / (double)t.ok : 0.0);
        if (t.bytes_in >= 100000000ull) {
            /* per GB only means something when the run moved a fair amount of data */
            fprintf(f, ", %.2f s/GB", pcpu / ((double)t.bytes_in / 1e9));
        }
        fprintf(f, ";\n               VmHWM %.1f MB, VmRSS %.1f MB (max sampled %.1f MB)\n",
                (double)r->p1.hwm_kb / 1024.0, (double)r->p1.rss_kb / 1024.0,
                (double)r->rss_peak_kb / 1024.0);
    }
    fprintf(f, "  loadgen      CPU %.3f s", lg_cpu);
    if (o->rate > 0.0) {
        fprintf(f, ", %llu starts more than 1 ms late", (unsigned long long)t.late_starts);
    }
    fputc('\n', f);
    fflush(f);
}
