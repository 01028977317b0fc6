/* SPDX-License-Identifier: MIT */
/*
 * px_hist.c - cumulative latency histograms in the Prometheus style, shared by every metric
 * that has one (HSM signatures, DNS lookups).
 * Owns nothing: a struct px_hist is embedded by its user, who also serialises access to it
 * (the HSM dispatcher under its stats lock, the resolver thread under its own).
 * Invariants: bounds are ascending and static; le[i] counts observations <= bounds_s[i], so
 * le[] is cumulative as Prometheus wants it and le[n-1] <= count.
 * Not here: quantile estimates (the HSM keeps its own log2 buckets for p50/p99).
 */
#include "px.h"

#include <stdio.h>

void px_hist_init(struct px_hist *h, const double *bounds_s, int n)
{
    *h = (struct px_hist){.bounds_s = bounds_s, .n = n < PX_HIST_MAX ? n : PX_HIST_MAX};
}

void px_hist_observe(struct px_hist *h, uint64_t ns)
{
    double s = (double)ns / 1e9;
    h->count++;
    h->sum_s += s;
    for (int i = 0; i < h->n; i++) {
        if (s <= h->bounds_s[i]) {
            h->le[i]++;
        }
    }
}

void px_hist_write(FILE *o, const char *name, const char *labels, const struct px_hist *h)
{
    const char *sep = labels[0] != '\0' ? "," : "";
    for (int i = 0; i < h->n; i++) {
        fprintf(o, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, h->bounds_s[i],
                (unsigned long long)h->le[i]);
    }
    fprintf(o, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep,
            (unsigned long long)h->count);
    if (labels[0] != '\0') {
        fprintf(o, "%s_sum{%s} %.6f\n%s_count{%s} %llu\n", name, labels, h->sum_s, name, labels,
                (unsigned long long)h->count);
    } else {
        fprintf(o, "%s_sum %.6f\n%s_count %llu\n", name, h->sum_s, name,
                (unsigned long long)h->count);
    }
}
