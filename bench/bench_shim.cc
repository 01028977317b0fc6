/* SPDX-License-Identifier: MIT */
/*
 * bench_shim.cc - the only C++ in tlsmint: registers the C benchmark bodies
 * (bench/<module>_bench.c) with Google Benchmark and owns main().
 * Owns the per-process case (struct hsm_bench) and, between Setup and Teardown of the plain
 * benchmark, its sessions. Google Benchmark calls the bodies from its own threads (plain loop:
 * one per HSM worker; pool: one submitting thread).
 * Invariants: the plain sessions and the pool never exist at the same time (each benchmark
 * creates its resources for a run and frees them before the next run starts).
 * Not here: what is measured (hsm_bench.c) and the case set-up (run-hsm-bench.sh).
 *
 * Both benchmarks report sig_per_s = signatures completed / wall time, so the two rows of a case
 * compare directly, and cpu_us_per_sig (CPU of every process involved / signatures), which a
 * busy machine disturbs much less. The pool adds tax_us_per_sig (its CPU outside the signer
 * workers), sig_per_wake and window. Names: hsm_plain/<key>/workers:<N>, hsm_pool/<key>/...
 */
#include <benchmark/benchmark.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "cc_bench.h"
#include "hsm_bench.h"

namespace
{

struct hsm_bench *g_bench;
struct hsm_bench_plain *g_plain; /* set by plain_setup, before the benchmark threads start */
char g_plain_err[512];
std::atomic<bool> g_failed{false};

void fail(benchmark::State &st, const char *msg)
{
    g_failed = true;
    std::fprintf(stderr, "hsm_bench: FAILED: %s\n", msg);
    st.SkipWithError(msg);
}

double min_time_s()
{
    const char *s = std::getenv("HSM_BENCH_MIN_TIME");
    double v = s != nullptr ? std::atof(s) : 0.0;
    return v > 0.0 ? v : 3.0;
}

/* Called once per run, before Google Benchmark starts the plain-loop threads. */
void plain_setup(const benchmark::State &)
{
    g_plain_err[0] = '\0';
    g_plain =
        bench_hsm_plain_new(g_bench, bench_hsm_workers(g_bench), g_plain_err, sizeof(g_plain_err));
}

void plain_teardown(const benchmark::State &)
{
    bench_hsm_plain_free(g_plain);
    g_plain = nullptr;
}

/* N threads (N = workers), each signing on its own session as fast as it can. */
void bm_hsm_plain(benchmark::State &st)
{
    char err[512];
    if (g_plain == nullptr) {
        fail(st, g_plain_err);
    }
    const int idx = st.thread_index();
    const uint64_t cpu0 = idx == 0 && g_plain != nullptr ? bench_hsm_plain_cpu_ns(g_plain) : 0;
    int64_t n = 0;
    for (auto _ : st) {
        if (bench_hsm_plain_sign(g_plain, idx, err, sizeof(err)) != 0) {
            fail(st, err);
            break;
        }
        n++;
    }
    /* summed over threads, divided by the (per-thread average) wall time */
    st.counters["sig_per_s"] =
        benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsRate);
    /* every thread has left its loop here (end barrier): thread 0 accounts for all of them */
    if (idx == 0 && g_plain != nullptr && n > 0) {
        const double total = static_cast<double>(n) * st.threads();
        st.counters["cpu_us_per_sig"] =
            static_cast<double>(bench_hsm_plain_cpu_ns(g_plain) - cpu0) / 1000.0 / total;
    }
}

/* One submitting thread keeping a window of jobs in flight through the whole pool path. */
void bm_hsm_pool(benchmark::State &st)
{
    char err[512];
    struct hsm_bench_pool *p = bench_hsm_pool_new(g_bench, err, sizeof(err));
    if (p == nullptr) {
        fail(st, err);
        for (auto _ : st) {
        }
        return;
    }
    int64_t n = 0;
    uint64_t out0 = 0, out1 = 0;
    const uint64_t cpu0 = bench_hsm_pool_cpu_ns(p, &out0);
    for (auto _ : st) {
        int r = bench_hsm_pool_step(p, err, sizeof(err));
        if (r < 0) {
            fail(st, err);
            break;
        }
        n += r;
    }
    const uint64_t cpu1 = bench_hsm_pool_cpu_ns(p, &out1); /* the timer stopped with the loop */
    st.counters["sig_per_s"] =
        benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsRate);
    if (n > 0) {
        const double sigs = static_cast<double>(n);
        /* submitter + dispatcher + signer processes, per signature */
        st.counters["cpu_us_per_sig"] = static_cast<double>(cpu1 - cpu0) / 1000.0 / sigs;
        /* the part of it not spent in the signer workers: the price of the path itself */
        st.counters["tax_us_per_sig"] = static_cast<double>(out1 - out0) / 1000.0 / sigs;
        /* signatures handled per wake-up of the submitting thread */
        st.counters["sig_per_wake"] = sigs / static_cast<double>(st.iterations());
    }
    st.counters["window"] = static_cast<double>(bench_hsm_pool_window(p));
    /* untimed: waits for the tail, checks a signature from the run, frees pool then cq */
    if (bench_hsm_pool_finish(p, err, sizeof(err)) != 0 && !st.error_occurred()) {
        fail(st, err);
    }
}

/* ---- certcache (CC_BENCH=1) ---- */

struct cc_bench *g_cc;

bool cc_ready(benchmark::State &st)
{
    if (g_cc == nullptr) {
        char err[512];
        g_cc = bench_cc_new_from_env(20000, err, sizeof(err));
        if (g_cc == nullptr) {
            fail(st, err);
            return false;
        }
    }
    return true;
}

void cc_setup(const benchmark::State &)
{
    if (g_cc == nullptr) {
        char err[512];
        g_cc = bench_cc_new_from_env(20000, err, sizeof(err));
        if (g_cc == nullptr) {
            std::fprintf(stderr, "cc_bench: %s\n", err);
        }
    }
}

/* Cache hit: SHA-256 of the upstream DER, shard lock, LRU bump, reference. */
void bm_cc_hit(benchmark::State &st)
{
    if (g_cc == nullptr) {
        fail(st, "no certcache bench");
        for (auto _ : st) {
        }
        return;
    }
    const int idx = st.thread_index();
    for (auto _ : st) {
        if (bench_cc_hit(g_cc, idx) != 0) {
            fail(st, "lookup was not a hit");
            break;
        }
    }
    st.counters["lookups_per_s"] =
        benchmark::Counter(static_cast<double>(st.iterations()), benchmark::Counter::kIsRate);
}

/* The X.509 work of one mint: names, validity, extensions, pool key, TBS digest. */
void bm_cc_build(benchmark::State &st)
{
    if (!cc_ready(st)) {
        for (auto _ : st) {
        }
        return;
    }
    for (auto _ : st) {
        if (bench_cc_build(g_cc) != 0) {
            fail(st, "build failed");
            break;
        }
    }
}

/* Full mints of never-seen upstreams through the signer pool. */
void bm_cc_mint(benchmark::State &st)
{
    char err[512];
    if (!cc_ready(st)) {
        for (auto _ : st) {
        }
        return;
    }
    const int window = static_cast<int>(st.range(0));
    int64_t n = 0;
    for (auto _ : st) {
        if (bench_cc_refill_needed(g_cc, window)) {
            st.PauseTiming();
            if (bench_cc_refill(g_cc, err, sizeof(err)) != 0) {
                fail(st, err);
            }
            st.ResumeTiming();
        }
        int r = bench_cc_mint_step(g_cc, window, err, sizeof(err));
        if (r < 0) {
            fail(st, err);
            break;
        }
        n += r;
    }
    st.counters["mints_per_s"] =
        benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsRate);
}

} /* namespace */

int main(int argc, char **argv)
{
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) {
        return 2;
    }
    char err[512];
    g_bench = bench_hsm_new_from_env(err, sizeof(err));
    if (g_bench == nullptr) {
        std::fprintf(stderr, "hsm_bench: %s\n", err);
        return 1;
    }
    const int workers = bench_hsm_workers(g_bench);
    const std::string tag =
        std::string(bench_hsm_key_label(g_bench)) + "/workers:" + std::to_string(workers);
    benchmark::AddCustomContext("hsm_device", bench_hsm_device(g_bench));
    benchmark::AddCustomContext("hsm_alg", bench_hsm_alg_name(g_bench));
    benchmark::AddCustomContext("hsm_workers", std::to_string(workers));

    const double min_time = min_time_s();
    benchmark::RegisterBenchmark(("hsm_plain/" + tag).c_str(), bm_hsm_plain)
        ->Setup(plain_setup)
        ->Teardown(plain_teardown)
        ->Threads(workers)
        ->UseRealTime()
        ->MinTime(min_time)
        ->Unit(benchmark::kMicrosecond);
    if (std::getenv("CC_BENCH") == nullptr) {
        benchmark::RegisterBenchmark(("hsm_pool/" + tag).c_str(), bm_hsm_pool)
            ->UseRealTime()
            ->MinTime(min_time)
            ->Unit(benchmark::kMicrosecond);
    } else {
        /* certcache: raw signatures (hsm_plain above) next to full mints, same sessions' token */
        benchmark::RegisterBenchmark(("cc_mint/" + tag).c_str(), bm_cc_mint)
            ->Arg(64)
            ->UseRealTime()
            ->MinTime(min_time)
            ->Unit(benchmark::kMicrosecond);
        benchmark::RegisterBenchmark("cc_build", bm_cc_build)->MinTime(1.0);
        benchmark::RegisterBenchmark("cc_hit", bm_cc_hit)
            ->Setup(cc_setup)
            ->Threads(1)
            ->Threads(2)
            ->UseRealTime()
            ->MinTime(1.0);
    }

    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    bench_cc_free(g_cc);
    bench_hsm_free(g_bench);
    return g_failed ? 1 : 0;
}
