/* SPDX-License-Identifier: MIT */
/*
 * cc_bench.h - benchmark bodies for certcache, in C, driven by bench/bench_shim.cc:
 * cache-hit lookup (1 and 2 threads), building one leaf (the X.509 work of a mint, without
 * the signature), and full mints through the signer pool (every one a cache miss).
 * The raw sign rate of the same sessions is hsm_plain from hsm_bench.h, in the same run.
 * Environment: HSM_BENCH_CONFIG (a `tlsmint init` config), CC_BENCH_MK (its master-key file),
 * TLSMINT_BIN (for the signers).
 */
#ifndef CC_BENCH_H
#define CC_BENCH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct cc_bench;

/* Pool, cache, a hot (cached) upstream, and n distinct fresh upstreams for mints. */
struct cc_bench *bench_cc_new_from_env(int n_upstreams, char *err, size_t errlen);
void bench_cc_free(struct cc_bench *b);
/* One cache-hit lookup + unref on loop handle idx (0 or 1, one thread each). */
int bench_cc_hit(struct cc_bench *b, int idx);
/* One leaf built and discarded (names, validity, extensions, TBS digest; no signature). */
int bench_cc_build(struct cc_bench *b);
/*
 * Keeps `window` mints of never-seen upstreams in flight through the HSM; waits for some to
 * finish and returns how many did (0 allowed), or negative + err. When the fresh upstreams run
 * out, bench_cc_refill (untimed) starts a new empty cache.
 */
int bench_cc_mint_step(struct cc_bench *b, int window, char *err, size_t errlen);
int bench_cc_refill_needed(const struct cc_bench *b, int window);
int bench_cc_refill(struct cc_bench *b, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
