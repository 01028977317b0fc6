/* SPDX-License-Identifier: MIT */
/*
 * cli_admin.c - the running proxy's admin side: a unix socket for `tlsmint ctl` and a
 * Prometheus text endpoint ([admin] socket, metrics), served by one thread of their own.
 * Owns the two listening sockets and the thread. Reads statistics snapshots only; never touches
 * a loop's connections. Blocking is fine here: no loop waits on this thread.
 * Not here: what reload and the HSM commands do (cli_hsm.c do_reload, hsm_offload/).
 */
#include "cli_admin.h"
#include "cli.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static void text_status(struct cli_admin *a, FILE *o)
{
    struct dp_stats ds;
    struct cc_stats cs;
    dp_server_stats(a->dp, &ds);
    dp_server_cache_stats(a->dp, &cs);
    double up = (double)(px_now_ns() - a->start_ns) / 1e9;
    fprintf(o, "tlsmint %s, up %.0f s, config %s (generation %u)\n", TLSMINT_VERSION, up,
            a->cfg->path, dp_server_generation(a->dp));
    fprintf(o, "listeners     explicit %s, transparent %s\n",
            a->cfg->listen_explicit[0] ? a->cfg->listen_explicit : "off",
            a->cfg->listen_transparent[0] ? a->cfg->listen_transparent : "off");
    struct dp_inbound_stats ib[PX_INBOUND_MAX];
    int nib = dp_server_inbound_stats(a->dp, ib, PX_INBOUND_MAX);
    for (int i = 0; i < nib; i++) {
        fprintf(o, "inbound       %s: port %d, %llu full + %llu resumed handshakes, %llu failed "
                   "(%llu RSA key exchange only, %llu no HSM signature), %llu backend failures\n",
                ib[i].name, ib[i].port, (unsigned long long)ib[i].full,
                (unsigned long long)ib[i].resumed, (unsigned long long)ib[i].failed,
                (unsigned long long)ib[i].refused_rsa, (unsigned long long)ib[i].refused_hsm,
                (unsigned long long)ib[i].backend_failed);
    }
    fprintf(o, "connections   %llu active, %llu accepted, %llu closed\n",
            (unsigned long long)ds.active, (unsigned long long)ds.accepted,
            (unsigned long long)ds.closed);
    fprintf(o, "outcomes     ");
    for (int k = 1; k < DP_OUTCOMES; k++) {
        fprintf(o, " %s=%llu", dp_outcome_name(k), (unsigned long long)ds.outcome[k]);
    }
    fprintf(o, "\nhandshakes    %llu ok, %llu failed\n", (unsigned long long)ds.handshakes_ok,
            (unsigned long long)ds.handshakes_failed);
    fprintf(o, "bytes         %llu client->upstream, %llu upstream->client\n",
            (unsigned long long)ds.bytes_c2u, (unsigned long long)ds.bytes_u2c);
    fprintf(o, "cache         %llu entries, %llu hits, %llu misses, %llu mints\n",
            (unsigned long long)cs.entries, (unsigned long long)cs.hits,
            (unsigned long long)cs.misses, (unsigned long long)cs.mints);
    struct dp_dns_stats dns;
    dp_server_dns_stats(a->dp, &dns);
    fprintf(o, "resolver      %s\n", dns.state);
    fprintf(o, "dns           %u names cached or pending (max %u), %u in flight, %u connections "
               "waiting;",
            dns.names, dns.names_max, dns.in_flight, dns.waiting);
    for (int k = 0; k < DP_DNS_RESULTS; k++) {
        fprintf(o, " %s=%llu", dp_dns_result_name(k), (unsigned long long)dns.lookups[k]);
    }
    fputc('\n', o);
    struct dp_policy_info pi;
    dp_server_policy_info(a->dp, &pi);
    fprintf(o, "policy        %d rules, default %s%s\n", pi.rules, px_action_name(pi.def),
            pi.bypass_list ? ", bypass list" : "");
    uint64_t xn, xadded[DP_EXCL_REASONS];
    dp_server_exclusions_stats(a->dp, &xn, xadded);
    fprintf(o, "exclusions    %llu entries (ttl %d s, pinned apps %s%d alert%s)\n",
            (unsigned long long)xn, pi.excl_ttl_s,
            pi.excl_pinned_alerts == 0 ? "not learned, " : "after ",
            pi.excl_pinned_alerts, pi.excl_pinned_alerts == 1 ? "" : "s");
    fprintf(o, "hsm           %d/%d members up, fail_mode %s\n", hsm_pool_members_up(a->pool),
            hsm_pool_members(a->pool), a->cfg->fail_mode == PX_FAIL_OPEN ? "open" : "closed");
    int left = cli_mk_days_left(a->cfg);
    if (left != INT_MIN) {
        fprintf(o, "master key    %d of %d days left%s\n", left, a->cfg->mk_lifetime_days,
                left < 0                              ? " (EXPIRED: tlsmint master-key change)"
                : left <= a->cfg->mk_reminder_days ? " (reminder: change it soon)"
                                                      : "");
    }
    cli_cert_expiry_status(a->cfg, o);
    struct dp_export_stats xs;
    dp_server_export_stats(a->dp, &xs);
    for (int k = 0; k < DP_EXPORT_SINKS; k++) {
        if (xs.on[k]) {
            fprintf(o, "export        %s: %s; %llu packets, %llu bytes, %llu dropped\n",
                    dp_export_sink_names[k], xs.state[k], (unsigned long long)xs.packets[k],
                    (unsigned long long)xs.bytes[k], (unsigned long long)xs.dropped[k]);
        }
    }
    if (xs.on[DP_EXPORT_FILE] || xs.on[DP_EXPORT_POIP] || xs.on[DP_EXPORT_MIRROR]) {
        fprintf(o, "export        excluded by rule (export = no): %llu connections\n",
                (unsigned long long)xs.excluded);
    }
}

static void text_hsm(struct cli_admin *a, FILE *o)
{
    for (int i = 0; i < hsm_pool_members(a->pool); i++) {
        struct hsm_member_stats st;
        hsm_pool_member_stats(a->pool, i, &st);
        fprintf(o, "member %s: %s (for %.1f s)\n", st.name, hsm_member_state_name(st.state),
                st.state_age_s);
        fprintf(o, "  token        label '%s', serial %s (%s / %s)\n", st.token.label,
                st.token.serial, st.token.manufacturer, st.token.model);
        fprintf(o, "  module       %s, %s\n", a->cfg->members[i].module,
                st.token.logged_in ? "authenticated" : "not authenticated");
        fprintf(o, "  signer       pid %d, %u worker sessions open + 1 anchor\n", st.pid,
                st.sessions_open);
        if (st.workers_auto) {
            fprintf(o, "  workers      %u sessions in use (auto, %u-%u); last change %.1f s ago: "
                       "%s\n",
                    st.workers, st.workers_min, st.workers_max, st.workers_change_age_s,
                    st.workers_reason);
        } else {
            fprintf(o, "  workers      %u sessions in use (fixed by [hsm] workers)\n", st.workers);
        }
        fprintf(o, "  service      %.2f ms per signature (%.2f ms of it waiting on the HSM), queue "
                   "wait %.2f ms, %.0f signatures/s\n",
                st.svc_us / 1e3, st.blocked_us / 1e3, st.queue_wait_us / 1e3, st.rate);
        fprintf(o, "  operations   %llu signatures, %llu errors, %llu timeouts, %llu lost, "
                   "%u in flight\n",
                (unsigned long long)st.ops, (unsigned long long)st.errors,
                (unsigned long long)st.timeouts, (unsigned long long)st.gone, st.inflight);
        if (a->cfg->n_inbound > 0) {
            fprintf(o, "  by use       minting %llu signatures (%llu errors), inbound server keys "
                       "%llu signatures (%llu errors)\n",
                    (unsigned long long)(st.ops - st.ops_inbound),
                    (unsigned long long)(st.errors - st.errors_inbound),
                    (unsigned long long)st.ops_inbound, (unsigned long long)st.errors_inbound);
        }
        fprintf(o, "  restarts     %llu respawns, %llu killed for hanging, %llu recoveries",
                (unsigned long long)st.respawns, (unsigned long long)st.kills,
                (unsigned long long)st.recoveries);
        if (st.recoveries > 0) {
            fprintf(o, " (last took %.0f ms to the first good signature)", st.last_recovery_ms);
        }
        fputc('\n', o);
        fprintf(o, "  latency us   p50 %.0f, p90 %.0f, p99 %.0f, max %.0f\n", st.lat_p50_us,
                st.lat_p90_us, st.lat_p99_us, st.lat_max_us);
        for (int k = 0; k < st.n_rv; k++) {
            fprintf(o, "  error        %s x %llu\n", hsm_ckr_name(st.rv_codes[k]),
                    (unsigned long long)st.rv_counts[k]);
        }
        if (st.last_error[0]) {
            fprintf(o, "  last error   %s\n", st.last_error);
        }
    }
    struct hsm_pool_stats ps;
    hsm_pool_stats(a->pool, &ps);
    fprintf(o, "queue depth   %u (%u signatures in the system, capacity %.0f/s)\n",
            ps.queue_depth, ps.in_system, ps.capacity_per_s);
    fprintf(o, "refused       %llu overload (could not finish by the deadline), %llu queue full, "
               "%llu no member up\n",
            (unsigned long long)ps.refused_overload, (unsigned long long)ps.refused_full,
            (unsigned long long)ps.refused_down);
}

static void text_cache(struct cli_admin *a, FILE *o)
{
    struct cc_stats cs;
    dp_server_cache_stats(a->dp, &cs);
    fprintf(o, "entries       %llu (max %d, ttl %d s)\n", (unsigned long long)cs.entries,
            a->cfg->cache_size, a->cfg->cache_ttl_s);
    fprintf(o, "hits          %llu\nmisses        %llu\nmints         %llu\ncoalesced     %llu\n"
               "evictions     %llu\nexpired       %llu\nfailures      %llu\n",
            (unsigned long long)cs.hits, (unsigned long long)cs.misses,
            (unsigned long long)cs.mints, (unsigned long long)cs.coalesced,
            (unsigned long long)cs.evictions, (unsigned long long)cs.expired,
            (unsigned long long)cs.failures);
    if (cs.mints > 0) {
        fprintf(o, "hsm wait      %.3f ms per mint (average)\n",
                (double)cs.hsm_wait_ns_total / (double)cs.mints / 1e6);
    }
    if (cs.shared_state >= 0) {
        fprintf(o, "shared        %s %s\n", a->cfg->cache_shared, cs.shared_state ? "up" : "down");
        fprintf(o, "  events     ");
        for (int k = 0; k < CC_SHARED_EVENTS; k++) {
            fprintf(o, " %s=%llu", cc_shared_event_name(k),
                    (unsigned long long)cs.shared_events[k]);
        }
        fprintf(o, "\n  rejected   ");
        for (int k = 0; k < CC_SHARED_REJECTS; k++) {
            fprintf(o, " %s=%llu", cc_shared_reject_name(k),
                    (unsigned long long)cs.shared_rejected[k]);
        }
        fprintf(o, "\n  not asked   %llu (down, or too many lookups in flight)\n",
                (unsigned long long)cs.shared_skipped);
        if (cs.shared_events[0] > 0) {
            fprintf(o, "  hit wait    %.3f ms per shared hit (average)\n",
                    (double)cs.shared_hit_wait_ns / (double)cs.shared_events[0] / 1e6);
        }
    } else {
        fprintf(o, "shared        off\n");
    }
    if (a->cfg->cache_snapshot[0]) {
        fprintf(o, "snapshot      %s: %llu leaves loaded at start, %llu in the last write "
                   "(every %d s and on SIGTERM)\n",
                a->cfg->cache_snapshot, (unsigned long long)cs.snapshot_loaded,
                (unsigned long long)cs.snapshot_saved, a->cfg->cache_snapshot_interval_s);
    }
}

static void text_exclusions(struct cli_admin *a, FILE *o)
{
    struct dp_excl_info *x = calloc(1000, sizeof(*x));
    int n = x != NULL ? dp_server_exclusions(a->dp, x, 1000) : 0;
    fprintf(o, "%-40s %5s %-12s %8s %10s %8s\n", "host", "port", "reason", "age_s", "expires_s",
            "hits");
    for (int i = 0; i < n; i++) {
        fprintf(o, "%-40s %5u %-12s %8lld %10lld %8llu\n", x[i].host, x[i].port,
                dp_excl_reason_name(x[i].reason), (long long)x[i].age_s,
                (long long)x[i].expires_in_s, (unsigned long long)x[i].hits);
    }
    if (n == 1000) {
        fprintf(o, "(the first 1000, most recently used first)\n");
    }
    free(x);
}

/* One metric family's header: the text format wants HELP and TYPE once, before its samples. */
static void family(FILE *o, const char *name, const char *type, const char *help)
{
    fprintf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* tlsmint_export_*: per configured sink; nothing when export is off. */
static void export_metrics(struct cli_admin *a, FILE *o)
{
    struct dp_export_stats xs;
    dp_server_export_stats(a->dp, &xs);
    static const char *const what[] = {"packets", "bytes", "dropped"};
    static const char *const helps[] = {
        "Decrypted packets written, per export sink.",
        "Bytes of decrypted frames written, per export sink.",
        "Decrypted packets lost, per sink: queue full, slow reader or write error."};
    const uint64_t *vals[] = {xs.packets, xs.bytes, xs.dropped};
    for (int m = 0; m < 3; m++) {
        bool any = false;
        for (int k = 0; k < DP_EXPORT_SINKS; k++) {
            if (!xs.on[k]) {
                continue;
            }
            if (!any) {
                char name[64];
                snprintf(name, sizeof(name), "tlsmint_export_%s_total", what[m]);
                family(o, name, "counter", helps[m]);
                any = true;
            }
            fprintf(o, "tlsmint_export_%s_total{sink=\"%s\"} %llu\n", what[m],
                    dp_export_sink_names[k], (unsigned long long)vals[m][k]);
        }
    }
    if (xs.on[DP_EXPORT_FILE] || xs.on[DP_EXPORT_POIP] || xs.on[DP_EXPORT_MIRROR]) {
        family(o, "tlsmint_export_excluded_total", "counter",
               "Intercepted connections kept out of every export sink by a rule's export = no.");
        fprintf(o, "tlsmint_export_excluded_total %llu\n", (unsigned long long)xs.excluded);
    }
    if (xs.on[DP_EXPORT_POIP]) {
        family(o, "tlsmint_export_readers", "gauge", "PCAP-over-IP readers connected.");
        fprintf(o, "tlsmint_export_readers %llu\n", (unsigned long long)xs.readers);
    }
}

/*
 * Prometheus text exposition. Every family is written as one block (all members' samples
 * together), with HELP and TYPE, so `promtool check metrics` finds nothing to lint.
 */
static void text_metrics(struct cli_admin *a, FILE *o)
{
    struct dp_stats ds;
    struct cc_stats cs;
    dp_server_stats(a->dp, &ds);
    dp_server_cache_stats(a->dp, &cs);
    family(o, "tlsmint_connections_active", "gauge", "Client connections open now.");
    fprintf(o, "tlsmint_connections_active %llu\n", (unsigned long long)ds.active);
    family(o, "tlsmint_connections_accepted_total", "counter", "Client connections accepted.");
    fprintf(o, "tlsmint_connections_accepted_total %llu\n", (unsigned long long)ds.accepted);
    family(o, "tlsmint_connections_refused_total", "counter",
           "New client connections closed at once (limit: [listen] max_connections reached).");
    fprintf(o, "tlsmint_connections_refused_total{reason=\"limit\"} %llu\n",
            (unsigned long long)ds.refused_limit);
    family(o, "tlsmint_connections_total", "counter",
           "Finished client connections by outcome (fail_open: passed uninspected while no HSM "
           "member could sign; refused_hsm: refused for the same reason).");
    for (int k = 1; k < DP_OUTCOMES; k++) {
        fprintf(o, "tlsmint_connections_total{outcome=\"%s\"} %llu\n", dp_outcome_name(k),
                (unsigned long long)ds.outcome[k]);
    }
    struct dp_policy_count *pc = calloc(PX_RULES_MAX + 2, sizeof(*pc));
    int npc = pc != NULL ? dp_server_policy_counts(a->dp, pc, PX_RULES_MAX + 2) : 0;
    family(o, "tlsmint_policy_decisions_total", "counter",
           "Policy decisions per rule (since the last reload).");
    for (int k = 0; k < npc; k++) {
        fprintf(o, "tlsmint_policy_decisions_total{rule=\"%s\",action=\"%s\"} %llu\n",
                pc[k].rule, pc[k].action, (unsigned long long)pc[k].n);
    }
    free(pc);
    uint64_t xn, xadded[DP_EXCL_REASONS];
    dp_server_exclusions_stats(a->dp, &xn, xadded);
    family(o, "tlsmint_exclusions_entries", "gauge", "Hosts in the exclusion cache.");
    fprintf(o, "tlsmint_exclusions_entries %llu\n", (unsigned long long)xn);
    family(o, "tlsmint_exclusions_added_total", "counter",
           "Hosts added to the exclusion cache, by reason.");
    for (int k = DP_EXCL_CLIENT_AUTH; k < DP_EXCL_REASONS; k++) {
        fprintf(o, "tlsmint_exclusions_added_total{reason=\"%s\"} %llu\n",
                dp_excl_reason_name(k), (unsigned long long)xadded[k]);
    }
    family(o, "tlsmint_name_proofs_total", "counter",
           "Handshakes made to prove a bypassed name for its destination, by result.");
    fprintf(o, "tlsmint_name_proofs_total{result=\"proven\"} %llu\n"
               "tlsmint_name_proofs_total{result=\"not_proven\"} %llu\n",
            (unsigned long long)ds.proofs[0], (unsigned long long)ds.proofs[1]);
    family(o, "tlsmint_policy_unproven_total", "counter",
           "Name-based bypasses refused because the name was not proven, by reason.");
    fprintf(o, "tlsmint_policy_unproven_total{reason=\"sni-mismatch\"} %llu\n"
               "tlsmint_policy_unproven_total{reason=\"unproven-name\"} %llu\n",
            (unsigned long long)ds.unproven[0], (unsigned long long)ds.unproven[1]);
    family(o, "tlsmint_policy_unsupported_total", "counter",
           "Connections whose client or server cannot meet the profile's versions or cipher "
           "suites, by action.");
    fprintf(o, "tlsmint_policy_unsupported_total{action=\"bypass\"} %llu\n"
               "tlsmint_policy_unsupported_total{action=\"block\"} %llu\n",
            (unsigned long long)ds.unsupported[0], (unsigned long long)ds.unsupported[1]);
    family(o, "tlsmint_ocsp_requests_total", "counter",
           "OCSP requests sent to upstream certificates' responders, by result.");
    for (int r = 0; r < DP_OCSP_RESULTS; r++) {
        fprintf(o, "tlsmint_ocsp_requests_total{result=\"%s\"} %llu\n", dp_ocsp_result_name(r),
                (unsigned long long)ds.ocsp[r]);
    }
    family(o, "tlsmint_non_tls_total", "counter",
           "Connections that were not TLS, by reason and action.");
    for (int r = 0; r < 2; r++) {
        for (int k = 0; k < 2; k++) {
            fprintf(o, "tlsmint_non_tls_total{reason=\"%s\",action=\"%s\"} %llu\n",
                    r == 0 ? "not-tls" : "server-first", k == 0 ? "tunnel" : "block",
                    (unsigned long long)ds.non_tls[r][k]);
        }
    }
    family(o, "tlsmint_handshakes_total", "counter", "Client-side TLS handshakes by result.");
    fprintf(o, "tlsmint_handshakes_total{result=\"ok\"} %llu\n"
               "tlsmint_handshakes_total{result=\"failed\"} %llu\n",
            (unsigned long long)ds.handshakes_ok, (unsigned long long)ds.handshakes_failed);
    family(o, "tlsmint_bytes_total", "counter", "Plaintext bytes relayed, by direction.");
    fprintf(o, "tlsmint_bytes_total{direction=\"client_to_upstream\"} %llu\n"
               "tlsmint_bytes_total{direction=\"upstream_to_client\"} %llu\n",
            (unsigned long long)ds.bytes_c2u, (unsigned long long)ds.bytes_u2c);
    export_metrics(a, o);
    family(o, "tlsmint_cache_entries", "gauge", "Leaf certificates in the local cache.");
    fprintf(o, "tlsmint_cache_entries %llu\n", (unsigned long long)cs.entries);
    family(o, "tlsmint_cache_events_total", "counter", "Local leaf cache events.");
    const char *names[] = {"hit", "miss", "mint", "coalesced", "eviction", "expired", "failure"};
    uint64_t vals[] = {cs.hits, cs.misses, cs.mints, cs.coalesced, cs.evictions, cs.expired,
                       cs.failures};
    for (int k = 0; k < 7; k++) {
        fprintf(o, "tlsmint_cache_events_total{event=\"%s\"} %llu\n", names[k],
                (unsigned long long)vals[k]);
    }
    if (cs.shared_state >= 0) {
        family(o, "tlsmint_shared_cache_events_total", "counter", "Shared (Redis) cache events.");
        for (int k = 0; k < CC_SHARED_EVENTS; k++) {
            fprintf(o, "tlsmint_shared_cache_events_total{event=\"%s\"} %llu\n",
                    cc_shared_event_name(k), (unsigned long long)cs.shared_events[k]);
        }
        family(o, "tlsmint_shared_cache_up", "gauge", "1 while the shared cache answers.");
        fprintf(o, "tlsmint_shared_cache_up %d\n", cs.shared_state);
    }
    struct dp_dns_stats dns;
    dp_server_dns_stats(a->dp, &dns);
    family(o, "tlsmint_dns_queries_total", "counter",
           "CONNECT name lookups by result (cached: answered from the cache, no query).");
    for (int k = 0; k < DP_DNS_RESULTS; k++) {
        fprintf(o, "tlsmint_dns_queries_total{result=\"%s\"} %llu\n", dp_dns_result_name(k),
                (unsigned long long)dns.lookups[k]);
    }
    family(o, "tlsmint_dns_duration_seconds", "histogram",
           "Name lookups not answered from the cache, submit to answer.");
    px_hist_write(o, "tlsmint_dns_duration_seconds", "", &dns.duration);
    family(o, "tlsmint_dns_cache_entries", "gauge", "Names cached or being looked up.");
    fprintf(o, "tlsmint_dns_cache_entries %u\n", dns.names);
    family(o, "tlsmint_dns_in_flight", "gauge", "Names being looked up now (one query each).");
    fprintf(o, "tlsmint_dns_in_flight %u\n", dns.in_flight);
    long long mk_end = cli_mk_expiry(a->cfg);
    if (mk_end != LLONG_MIN) {
        family(o, "tlsmint_master_key_expiry_timestamp_seconds", "gauge",
               "End of the master key's lifetime ([master_key] lifetime_days).");
        fprintf(o, "tlsmint_master_key_expiry_timestamp_seconds %lld\n", mk_end);
    }
    cli_cert_expiry_metrics(a->cfg, o);
    family(o, "tlsmint_log_dropped_total", "counter",
           "Log lines that could not be written (file error, or the writer could not keep up).");
    for (int k = 0; k < PX_SINKS; k++) {
        fprintf(o, "tlsmint_log_dropped_total{log=\"%s\"} %llu\n", px_sink_name((enum px_sink)k),
                (unsigned long long)px_sink_lost_total((enum px_sink)k));
    }
    family(o, "tlsmint_hsm_members_up", "gauge", "HSM members that can sign now.");
    fprintf(o, "tlsmint_hsm_members_up %d\n", hsm_pool_members_up(a->pool));
    family(o, "tlsmint_hsm_queue_depth", "gauge", "Signatures queued for the HSM members.");
    fprintf(o, "tlsmint_hsm_queue_depth %u\n", hsm_pool_queue_depth(a->pool));
    struct hsm_pool_stats ps;
    hsm_pool_stats(a->pool, &ps);
    family(o, "tlsmint_hsm_refused_total", "counter",
           "Signatures refused at once: overload (could not finish by the deadline), queue_full, "
           "down (no member up).");
    fprintf(o, "tlsmint_hsm_refused_total{reason=\"overload\"} %llu\n"
               "tlsmint_hsm_refused_total{reason=\"queue_full\"} %llu\n"
               "tlsmint_hsm_refused_total{reason=\"down\"} %llu\n",
            (unsigned long long)ps.refused_overload, (unsigned long long)ps.refused_full,
            (unsigned long long)ps.refused_down);
    int n = hsm_pool_members(a->pool);
    struct hsm_member_stats *st = calloc((size_t)(n > 0 ? n : 1), sizeof(*st));
    if (st == NULL) {
        return;
    }
    for (int i = 0; i < n; i++) {
        hsm_pool_member_stats(a->pool, i, &st[i]);
    }
    family(o, "tlsmint_hsm_signatures_total", "counter", "Signatures by HSM member and result.");
    for (int i = 0; i < n; i++) {
        fprintf(o, "tlsmint_hsm_signatures_total{member=\"%s\",result=\"ok\"} %llu\n"
                   "tlsmint_hsm_signatures_total{member=\"%s\",result=\"error\"} %llu\n"
                   "tlsmint_hsm_signatures_total{member=\"%s\",result=\"timeout\"} %llu\n",
                st[i].name, (unsigned long long)st[i].ops, st[i].name,
                (unsigned long long)st[i].errors, st[i].name, (unsigned long long)st[i].timeouts);
    }
    family(o, "tlsmint_hsm_signatures_by_use_total", "counter",
           "Signatures by HSM member, use (mint: leaf certificates; inbound: handshakes of the "
           "[inbound.NAME] listeners) and result.");
    for (int i = 0; i < n; i++) {
        fprintf(o, "tlsmint_hsm_signatures_by_use_total{member=\"%s\",use=\"mint\",result=\"ok\"} "
                   "%llu\n"
                   "tlsmint_hsm_signatures_by_use_total{member=\"%s\",use=\"mint\",result=\"error\"} "
                   "%llu\n"
                   "tlsmint_hsm_signatures_by_use_total{member=\"%s\",use=\"inbound\",result=\"ok\"} "
                   "%llu\n"
                   "tlsmint_hsm_signatures_by_use_total{member=\"%s\",use=\"inbound\",result=\"error\"} "
                   "%llu\n",
                st[i].name, (unsigned long long)(st[i].ops - st[i].ops_inbound), st[i].name,
                (unsigned long long)(st[i].errors - st[i].errors_inbound), st[i].name,
                (unsigned long long)st[i].ops_inbound, st[i].name,
                (unsigned long long)st[i].errors_inbound);
    }
    struct dp_inbound_stats ib[PX_INBOUND_MAX];
    int nib = dp_server_inbound_stats(a->dp, ib, PX_INBOUND_MAX);
    if (nib > 0) {
        family(o, "tlsmint_inbound_handshakes_total", "counter",
               "Inbound listeners' client handshakes: full (one HSM signature), resumed (none), "
               "failed.");
        for (int i = 0; i < nib; i++) {
            fprintf(o, "tlsmint_inbound_handshakes_total{listener=\"%s\",kind=\"full\"} %llu\n"
                       "tlsmint_inbound_handshakes_total{listener=\"%s\",kind=\"resumed\"} %llu\n"
                       "tlsmint_inbound_handshakes_total{listener=\"%s\",kind=\"failed\"} %llu\n",
                    ib[i].name, (unsigned long long)ib[i].full, ib[i].name,
                    (unsigned long long)ib[i].resumed, ib[i].name,
                    (unsigned long long)ib[i].failed);
        }
        family(o, "tlsmint_inbound_refused_total", "counter",
               "Inbound connections refused: clients offering only RSA key exchange, handshakes "
               "without an HSM signature (deadline, queue full, HSM down), backends unreachable.");
        for (int i = 0; i < nib; i++) {
            fprintf(o, "tlsmint_inbound_refused_total{listener=\"%s\",reason=\"rsa_key_exchange\"} "
                       "%llu\n"
                       "tlsmint_inbound_refused_total{listener=\"%s\",reason=\"hsm\"} %llu\n"
                       "tlsmint_inbound_refused_total{listener=\"%s\",reason=\"backend\"} %llu\n",
                    ib[i].name, (unsigned long long)ib[i].refused_rsa, ib[i].name,
                    (unsigned long long)ib[i].refused_hsm, ib[i].name,
                    (unsigned long long)ib[i].backend_failed);
        }
    }
    family(o, "tlsmint_hsm_sign_latency_seconds", "summary",
           "Signature latency quantiles per HSM member (recent signatures).");
    for (int i = 0; i < n; i++) {
        fprintf(o, "tlsmint_hsm_sign_latency_seconds{member=\"%s\",quantile=\"0.5\"} %.6f\n"
                   "tlsmint_hsm_sign_latency_seconds{member=\"%s\",quantile=\"0.9\"} %.6f\n"
                   "tlsmint_hsm_sign_latency_seconds{member=\"%s\",quantile=\"0.99\"} %.6f\n",
                st[i].name, st[i].lat_p50_us / 1e6, st[i].name, st[i].lat_p90_us / 1e6,
                st[i].name, st[i].lat_p99_us / 1e6);
    }
    family(o, "tlsmint_hsm_sign_duration_seconds", "histogram",
           "Signature latency per HSM member, submit to completion.");
    for (int i = 0; i < n; i++) {
        char labels[64];
        snprintf(labels, sizeof(labels), "member=\"%s\"", st[i].name);
        px_hist_write(o, "tlsmint_hsm_sign_duration_seconds", labels, &st[i].lat_hist);
    }
    family(o, "tlsmint_hsm_member_up", "gauge", "1 while the HSM member can sign.");
    for (int i = 0; i < n; i++) {
        fprintf(o, "tlsmint_hsm_member_up{member=\"%s\"} %d\n", st[i].name,
                st[i].state == HSM_MEMBER_UP ? 1 : 0);
    }
    family(o, "tlsmint_hsm_workers", "gauge", "PKCS#11 sessions signing at once per member.");
    for (int i = 0; i < n; i++) {
        fprintf(o, "tlsmint_hsm_workers{member=\"%s\"} %u\n", st[i].name, st[i].workers);
    }
    family(o, "tlsmint_hsm_sessions_open", "gauge", "Worker sessions the signer reports open.");
    for (int i = 0; i < n; i++) {
        fprintf(o, "tlsmint_hsm_sessions_open{member=\"%s\"} %u\n", st[i].name,
                st[i].sessions_open);
    }
    family(o, "tlsmint_hsm_workers_changes_total", "counter",
           "Changes of the session count ([hsm] workers = auto).");
    for (int i = 0; i < n; i++) {
        fprintf(o, "tlsmint_hsm_workers_changes_total{member=\"%s\",direction=\"grow\"} %llu\n"
                   "tlsmint_hsm_workers_changes_total{member=\"%s\",direction=\"shrink\"} %llu\n",
                st[i].name, (unsigned long long)st[i].workers_grows, st[i].name,
                (unsigned long long)st[i].workers_shrinks);
    }
    family(o, "tlsmint_hsm_workers_last_change_info", "gauge",
           "Why the session count last changed (start, fixed, rate, backlog, deadline, saturated, "
           "idle, ceiling).");
    for (int i = 0; i < n; i++) {
        fprintf(o, "tlsmint_hsm_workers_last_change_info{member=\"%s\",reason=\"%s\"} 1\n",
                st[i].name, st[i].workers_code);
    }
    family(o, "tlsmint_hsm_service_seconds", "gauge",
           "Measured service time of one signature in the HSM member.");
    for (int i = 0; i < n; i++) {
        fprintf(o, "tlsmint_hsm_service_seconds{member=\"%s\"} %.6f\n", st[i].name,
                st[i].svc_us / 1e6);
    }
    family(o, "tlsmint_hsm_restarts_total", "counter", "Signer processes restarted.");
    for (int i = 0; i < n; i++) {
        fprintf(o, "tlsmint_hsm_restarts_total{member=\"%s\"} %llu\n", st[i].name,
                (unsigned long long)st[i].respawns);
    }
    family(o, "tlsmint_hsm_last_recovery_seconds", "gauge",
           "How long the last recovery took, to the first good signature.");
    for (int i = 0; i < n; i++) {
        fprintf(o, "tlsmint_hsm_last_recovery_seconds{member=\"%s\"} %.3f\n", st[i].name,
                st[i].last_recovery_ms / 1e3);
    }
    free(st);
}

static void serve_ctl(struct cli_admin *a, int fd)
{
    char cmd[400];
    ssize_t n = recv(fd, cmd, sizeof(cmd) - 1, 0);
    if (n <= 0) {
        return;
    }
    cmd[n] = '\0';
    cmd[strcspn(cmd, "\r\n")] = '\0';
    char *arg = strchr(cmd, ' '); /* "exclusions-clear HOST" */
    if (arg != NULL) {
        *arg++ = '\0';
    }
    char *buf = NULL;
    size_t len = 0;
    FILE *o = open_memstream(&buf, &len);
    if (o == NULL) {
        return;
    }
    if (strcmp(cmd, "status") == 0) {
        text_status(a, o);
    } else if (strcmp(cmd, "hsm") == 0) {
        text_hsm(a, o);
    } else if (strcmp(cmd, "cache") == 0) {
        text_cache(a, o);
    } else if (strcmp(cmd, "metrics") == 0) {
        text_metrics(a, o);
    } else if (strcmp(cmd, "reload") == 0) {
        char msg[600];
        if (a->reload != NULL && a->reload(a->reload_ctx, msg, sizeof(msg)) == 0) {
            fprintf(o, "%s\n", msg);
        } else {
            fprintf(o, "error: %s\n", a->reload != NULL ? msg : "reload not available");
        }
    } else if (strcmp(cmd, "clear-hsm-sessions") == 0) {
        hsm_pool_clear_sessions(a->pool);
        cli_audit(a->cfg, "operator_session_reset", NULL);
        fprintf(o, "clearing every HSM session of %d member(s); signers reopen theirs on their "
                   "next signature (watch: tlsmint ctl hsm)\n",
                hsm_pool_members_up(a->pool));
    } else if (strcmp(cmd, "exclusions") == 0) {
        text_exclusions(a, o);
    } else if (strcmp(cmd, "exclusions-clear") == 0) {
        int removed = dp_server_exclusions_clear(a->dp, arg);
        fprintf(o, "%d exclusion%s removed%s%s\n", removed, removed == 1 ? "" : "s",
                arg != NULL && arg[0] ? " for " : "", arg != NULL ? arg : "");
    } else if (strcmp(cmd, "hsm-recover") == 0) {
        hsm_pool_recover(a->pool);
        fprintf(o, "recovery requested for members that are down\n");
    } else {
        fprintf(o, "error: unknown command '%s' (status, hsm, hsm recover, cache, metrics, "
                   "reload, clear-hsm-sessions, exclusions, exclusions clear [HOST])\n",
                cmd);
    }
    fclose(o);
    size_t off = 0;
    while (off < len) {
        ssize_t w = send(fd, buf + off, len - off, MSG_NOSIGNAL);
        if (w <= 0) {
            break;
        }
        off += (size_t)w;
    }
    free(buf);
}

static void serve_metrics(struct cli_admin *a, int fd)
{
    char req[2048];
    size_t got = 0;
    while (got < sizeof(req) - 1) {
        ssize_t n = recv(fd, req + got, sizeof(req) - 1 - got, 0);
        if (n <= 0) {
            break;
        }
        got += (size_t)n;
        req[got] = '\0';
        if (strstr(req, "\r\n\r\n") != NULL) {
            break;
        }
    }
    req[got] = '\0';
    char *body = NULL;
    size_t blen = 0;
    FILE *o = open_memstream(&body, &blen);
    if (o == NULL) {
        return;
    }
    int code = 200;
    if (strncmp(req, "GET /metrics ", 13) == 0 || strncmp(req, "GET / ", 6) == 0) {
        text_metrics(a, o);
    } else {
        code = 404;
        fprintf(o, "not found: GET /metrics\n");
    }
    fclose(o);
    char head[200];
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d %s\r\nContent-Type: text/plain; version=0.0.4\r\n"
                      "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                      code, code == 200 ? "OK" : "Not Found", blen);
    ssize_t w = send(fd, head, (size_t)hl, MSG_NOSIGNAL);
    size_t off = 0;
    while (w > 0 && off < blen) {
        w = send(fd, body + off, blen - off, MSG_NOSIGNAL);
        off += w > 0 ? (size_t)w : 0;
    }
    free(body);
}

/* Audit: signatures are counted per minute, never logged one by one. */
static void audit_minute(struct cli_admin *a)
{
    uint64_t ops = 0, errors = 0;
    for (int i = 0; i < hsm_pool_members(a->pool); i++) {
        struct hsm_member_stats st;
        hsm_pool_member_stats(a->pool, i, &st);
        ops += st.ops;
        errors += st.errors + st.timeouts;
    }
    if (ops != a->audit_ops || errors != a->audit_errors) {
        cli_audit(a->cfg, "signatures", "\"minute_ops\":%llu,\"minute_failures\":%llu",
                  (unsigned long long)(ops - a->audit_ops),
                  (unsigned long long)(errors - a->audit_errors));
        a->audit_ops = ops;
        a->audit_errors = errors;
    }
}

static void *admin_main(void *arg)
{
    struct cli_admin *a = arg;
    uint64_t next_audit = px_now_ns() + 60000000000ull;
    uint64_t next_expiry = px_now_ns() + 86400000000000ull; /* start and reload warn too */
    uint64_t snap_every = (uint64_t)a->cfg->cache_snapshot_interval_s * 1000000000ull;
    uint64_t next_snap = a->snapshot != NULL ? px_now_ns() + snap_every : UINT64_MAX;
    for (;;) {
        struct pollfd p[3] = {{.fd = a->stopfd, .events = POLLIN},
                              {.fd = a->ufd, .events = POLLIN},
                              {.fd = a->mfd, .events = POLLIN}};
        uint64_t now = px_now_ns();
        if (now >= next_audit) {
            audit_minute(a);
            next_audit = now + 60000000000ull;
        }
        if (now >= next_expiry) {
            cli_cert_expiry_warn(a->cfg);
            next_expiry = now + 86400000000000ull;
        }
        if (now >= next_snap) {
            char msg[600];
            (void)a->snapshot(a->snapshot_ctx, msg, sizeof(msg)); /* logs its outcome */
            next_snap = px_now_ns() + snap_every;
        }
        uint64_t next = next_audit < next_snap ? next_audit : next_snap;
        now = px_now_ns();
        int wait_ms = next > now ? (int)((next - now) / 1000000ull) + 1 : 0;
        if (poll(p, 3, wait_ms) < 0 && errno != EINTR) {
            return NULL;
        }
        if (p[0].revents) {
            return NULL;
        }
        for (int k = 1; k < 3; k++) {
            if (p[k].fd < 0 || !(p[k].revents & POLLIN)) {
                continue;
            }
            int c = accept4(p[k].fd, NULL, NULL, SOCK_CLOEXEC);
            if (c < 0) {
                continue;
            }
            struct timeval tv = {.tv_sec = 2};
            setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
            setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
            if (k == 1) {
                serve_ctl(a, c);
            } else {
                serve_metrics(a, c);
            }
            close(c);
        }
    }
}

static int open_unix(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path)) {
        snprintf(err, errlen, "[admin] socket path too long: %s", path);
        return -1;
    }
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    char dir[sizeof(sa.sun_path)];
    snprintf(dir, sizeof(dir), "%s", path);
    mkdir(dirname(dir), 0700);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    /* a stale socket from a crashed run is replaced; a live one means another instance */
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
        close(fd);
        snprintf(err, errlen, "[admin] socket %s is in use: is tlsmint already running?", path);
        return -1;
    }
    unlink(path);
    mode_t old = umask(0177); /* socket file 0600 */
    int r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    umask(old);
    if (r != 0 || listen(fd, 16) != 0) {
        snprintf(err, errlen, "[admin] cannot listen on %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static int open_tcp(const char *hostport, char *err, size_t errlen)
{
    char host[64];
    const char *colon = strrchr(hostport, ':');
    if (colon == NULL || (size_t)(colon - hostport) >= sizeof(host)) {
        snprintf(err, errlen, "[admin] metrics '%s' is not IP:PORT", hostport);
        return -1;
    }
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = '\0';
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        snprintf(err, errlen, "[admin] metrics '%s': IPv4 address expected", hostport);
        return -1;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, 16) != 0) {
        snprintf(err, errlen, "[admin] cannot listen on %s: %s", hostport, strerror(errno));
        if (fd >= 0) {
            close(fd);
        }
        return -1;
    }
    return fd;
}

int cli_admin_start(struct cli_admin *a, char *err, size_t errlen)
{
    a->ufd = a->mfd = -1;
    a->start_ns = px_now_ns();
    a->stopfd = eventfd(0, EFD_CLOEXEC);
    if (a->cfg->admin_socket[0] && (a->ufd = open_unix(a->cfg->admin_socket, err, errlen)) < 0) {
        return -1;
    }
    if (a->cfg->admin_metrics[0] && (a->mfd = open_tcp(a->cfg->admin_metrics, err, errlen)) < 0) {
        cli_admin_stop(a);
        return -1;
    }
    if (pthread_create(&a->th, NULL, admin_main, a) != 0) {
        snprintf(err, errlen, "cannot start the admin thread");
        cli_admin_stop(a);
        return -1;
    }
    a->running = true;
    return 0;
}

void cli_admin_stop(struct cli_admin *a)
{
    if (a->running) {
        uint64_t one = 1;
        ssize_t w = write(a->stopfd, &one, sizeof(one));
        (void)w;
        pthread_join(a->th, NULL);
        a->running = false;
        audit_minute(a); /* the last partial minute */
    }
    if (a->ufd >= 0) {
        close(a->ufd);
        unlink(a->cfg->admin_socket);
        a->ufd = -1;
    }
    if (a->mfd >= 0) {
        close(a->mfd);
        a->mfd = -1;
    }
    if (a->stopfd >= 0) {
        close(a->stopfd);
        a->stopfd = -1;
    }
}

static const char ctl_usage[] =
    "usage: tlsmint [-c CONFIG] ctl status|hsm|hsm recover|cache|metrics|reload|"
    "clear-hsm-sessions|exclusions [clear [HOST]]\n"
    "\n"
    "Talks to a running proxy over its admin socket ([admin] socket).\n"
    "  status    listeners, connections by outcome, bytes, cache and HSM summary\n"
    "  hsm       per HSM member: serial, token label, state, sessions, operations, errors, latency\n"
    "  cache     leaf cache counters\n"
    "  metrics   the Prometheus text the metrics endpoint serves\n"
    "  reload    re-read CONFIG: CA material, cache, upstream, policy, log (as SIGHUP)\n"
    "  hsm recover          restart members that are down (out of recovery retries)\n"
    "  clear-hsm-sessions   close every HSM session on purpose, to observe recovery\n"
    "  exclusions           hosts passed through because they cannot be decrypted (client\n"
    "                       certificate, pinned app): host, port, reason, age, expiry, hits\n"
    "  exclusions clear [HOST]  remove them (all, or those of HOST)\n";

/* Finds [admin] socket in a file that does not parse as a whole; default when absent. */
static int admin_socket_scan(const char *path, char *out, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return -1;
    }
    struct px_cfg d;
    px_cfg_defaults(&d);
    snprintf(out, cap, "%s", d.admin_socket);
    char line[512];
    bool in_admin = false;
    while (fgets(line, sizeof(line), f) != NULL) {
        char *p = line + strspn(line, " \t");
        p[strcspn(p, ";#\r\n")] = '\0';
        if (*p == '[') {
            in_admin = strncmp(p, "[admin]", 7) == 0;
            continue;
        }
        char *eq = strchr(p, '=');
        if (!in_admin || eq == NULL || strncmp(p, "socket", 6) != 0) {
            continue;
        }
        char *v = eq + 1 + strspn(eq + 1, " \t");
        size_t n = strlen(v);
        while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t')) {
            v[--n] = '\0';
        }
        snprintf(out, cap, "%s", v);
    }
    fclose(f);
    return 0;
}

int cli_ctl(int argc, char **argv)
{
    const char *conf = "./var/tlsmint.conf";
    const char *cmd = NULL;
    const char *xhost = NULL; /* ctl exclusions clear HOST */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) {
            conf = argv[++i];
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            return cli_usage(ctl_usage, 0);
        } else if (cmd == NULL) {
            cmd = argv[i];
        } else if (strcmp(cmd, "hsm") == 0 && strcmp(argv[i], "recover") == 0) {
            cmd = "hsm-recover";
        } else if (strcmp(cmd, "exclusions") == 0 && strcmp(argv[i], "clear") == 0) {
            cmd = "exclusions-clear";
        } else if (strcmp(cmd, "exclusions-clear") == 0 && xhost == NULL &&
                   strlen(argv[i]) < 256 && strpbrk(argv[i], " \r\n") == NULL) {
            xhost = argv[i];
        } else {
            return cli_usage(ctl_usage, 2);
        }
    }
    if (cmd == NULL) {
        return cli_usage(ctl_usage, 2);
    }
    static struct px_cfg cfg;
    char err[600];
    if (px_cfg_load(conf, &cfg, err, sizeof(err)) != 0) {
        /* a broken file must not stop `ctl reload` from reaching the proxy to be refused there */
        if (admin_socket_scan(conf, cfg.admin_socket, sizeof(cfg.admin_socket)) != 0) {
            fprintf(stderr, "tlsmint ctl: %s\n", err);
            return 1;
        }
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", cfg.admin_socket);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        fprintf(stderr, "tlsmint ctl: cannot reach %s: %s (is tlsmint running?)\n",
                cfg.admin_socket, strerror(errno));
        if (fd >= 0) {
            close(fd);
        }
        return 1;
    }
    char line[400];
    int n = snprintf(line, sizeof(line), "%s%s%s\n", cmd, xhost != NULL ? " " : "",
                     xhost != NULL ? xhost : "");
    if (send(fd, line, (size_t)n, MSG_NOSIGNAL) != n) {
        close(fd);
        fprintf(stderr, "tlsmint ctl: send failed\n");
        return 1;
    }
    char buf[4096];
    ssize_t r;
    bool first = true, error = false;
    while ((r = recv(fd, buf, sizeof(buf), 0)) > 0) {
        if (first && r >= 6 && strncmp(buf, "error:", 6) == 0) {
            error = true;
        }
        first = false;
        fwrite(buf, 1, (size_t)r, error ? stderr : stdout);
    }
    close(fd);
    return error ? 1 : 0;
}
