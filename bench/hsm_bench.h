/* SPDX-License-Identifier: MIT */
/*
 * hsm_bench.h - benchmark bodies for hsm_offload, in C, driven by bench/bench_shim.cc.
 * Two ways to the same token, measured in the same process, one after the other:
 *  - plain: one PKCS#11 session per thread (hsm_direct_open + hsm_direct_clone), each thread
 *    calling hsm_direct_sign in a loop - the ceiling;
 *  - pool: the whole proxy path, hsm_sign_submit -> dispatcher -> signer process -> hsm_cq,
 *    from one submitting thread that keeps a window of jobs in flight.
 * A struct hsm_bench owns the parsed configuration (the pool borrows it) and one idle "root"
 * session, kept for the whole process: it gives the key type and public key, and the plain
 * sessions are cloned from it. Nothing here is called by the proxy.
 * Threads: bench_hsm_plain_sign from one thread per index; everything else from one thread.
 * Not here: Google Benchmark (C++ lives only in bench_shim.cc).
 */
#ifndef HSM_BENCH_H
#define HSM_BENCH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct hsm_bench;
struct hsm_bench_plain;
struct hsm_bench_pool;

/*
 * Reads the case from the environment:
 *   HSM_BENCH_CONFIG   tlsmint.conf of a state dir made by `tlsmint init`
 *   HSM_BENCH_KEY      label of the case in benchmark names ("ec-p256", "rsa-2048")
 *   HSM_BENCH_WORKERS  expected [hsm] workers (must match the config; = plain-loop threads)
 *   TLSMINT_BIN        the tlsmint binary (hsm_pool_new spawns its "__signer")
 * loads the config, sets the member's env (SOFTHSM2_CONF) in this process, opens the root
 * session and signs + verifies one digest through it. NULL + one line in err on failure.
 * Returns new object; free with bench_hsm_free.
 */
struct hsm_bench *bench_hsm_new_from_env(char *err, size_t errlen);
void bench_hsm_free(struct hsm_bench *b);
/* Borrowed strings/values, valid until bench_hsm_free. */
const char *bench_hsm_key_label(const struct hsm_bench *b);
const char *bench_hsm_alg_name(const struct hsm_bench *b);
int bench_hsm_workers(const struct hsm_bench *b);
/* Device kind for the record ("SoftHSM slot ... / SoftHSM 2.x"), from the token info. */
const char *bench_hsm_device(const struct hsm_bench *b);

/*
 * Plain loop: nthreads sessions cloned from the root, each checked once (sign + verify).
 * Borrows b. Returns new object or NULL + err.
 */
struct hsm_bench_plain *bench_hsm_plain_new(struct hsm_bench *b, int nthreads, char *err,
                                            size_t errlen);
/* One signature on session idx, from the one thread that uses idx. 0, or negative + err. */
int bench_hsm_plain_sign(struct hsm_bench_plain *p, int idx, char *err, size_t errlen);
void bench_hsm_plain_free(struct hsm_bench_plain *p);

/*
 * Pool path: hsm_pool_new on b's config, one hsm_cq, and one signature submitted, awaited and
 * verified against the root session's public key; then the window is filled and turned over
 * once, so that a timed loop starts with the pipeline in steady state.
 * Window: jobs kept in flight = min(4 * workers * batch, queue_size); HSM_BENCH_WINDOW in the
 * environment replaces 4 * workers * batch. Borrows b (and its cfg, for the life of the pool).
 * Returns new object or NULL + err.
 */
struct hsm_bench_pool *bench_hsm_pool_new(struct hsm_bench *b, char *err, size_t errlen);
/*
 * One round: tops the window up, waits on the cq eventfd (at most 10 s) and drains it.
 * Returns the number of signatures completed with status 0 (may be 0 on a spurious wake-up),
 * or a negative code + err when any job failed, submission failed or nothing came back.
 */
int bench_hsm_pool_step(struct hsm_bench_pool *p, char *err, size_t errlen);
/*
 * Waits for the jobs still in flight (untimed), verifies one signature taken during the run,
 * then frees the pool, drains what hsm_pool_free completed, and frees the cq. Returns 0, or a
 * negative code + err if the tail failed or the sample did not verify; frees everything anyway.
 */
int bench_hsm_pool_finish(struct hsm_bench_pool *p, char *err, size_t errlen);
uint32_t bench_hsm_pool_window(const struct hsm_bench_pool *p);

/*
 * CPU time used so far, in ns: this process for the plain loop; this process plus every
 * signer process for the pool. The difference over a timed loop divided by the signatures is
 * the cost of one signature on each path, which a noisy machine disturbs much less than the
 * wall-clock rate. *outside_workers_ns (if not NULL) gets the pool's share spent outside the
 * signer worker threads: submitter, dispatcher, and each signer's frame-reading main thread.
 */
uint64_t bench_hsm_plain_cpu_ns(const struct hsm_bench_plain *p);
uint64_t bench_hsm_pool_cpu_ns(struct hsm_bench_pool *p, uint64_t *outside_workers_ns);

#ifdef __cplusplus
}
#endif

#endif /* HSM_BENCH_H */
