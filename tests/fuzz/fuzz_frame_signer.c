/* SPDX-License-Identifier: MIT */
/*
 * fuzz_frame_signer.c - libFuzzer target: one SOCK_SEQPACKET message from the proxy, as a signer
 * process receives it (a buggy proxy must not make the signer read or sign out of bounds).
 * Target functions: hsm_frame__parse_to_signer (hsm_offload/hsm_frame.c), called as
 * hsm_signer_main does, then for every request what the signer's worker does with it:
 * hsm_p11__sign's checks of algorithm and digest length, through hsm_direct_sign on a real
 * SoftHSM token when TLSMINT_BIN names the tlsmint binary (`tlsmint init` makes the token in a
 * temporary directory at start-up; tools/fuzz-run.sh sets it). Without it only the decoding runs.
 * Checks: no crash; requests lie inside the frame, at most HSM_BATCH_MAX; a signature is made
 * only for a digest of the algorithm's length and fits HSM_SIG_MAX.
 * Deterministic control flow (ECDSA signatures are random; only their length is looked at).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "hsm_frame_int.h"

#define SIGN_MAX 4

static struct hsm_direct *g_hsm;
static char g_dir[256];

static void cleanup(void)
{
    hsm_direct_close(g_hsm);
    if (g_dir[0]) {
        char cmd[300];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
        if (system(cmd) != 0) {
            fprintf(stderr, "fuzz_frame_signer: cannot remove %s\n", g_dir);
        }
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *bin = getenv("TLSMINT_BIN");
    if (bin == NULL || bin[0] == '\0') {
        fprintf(stderr, "fuzz_frame_signer: TLSMINT_BIN unset: decoding only, no SoftHSM\n");
        return 0;
    }
    /* under TMPDIR: tools/fuzz-run.sh points it at a scratch directory it removes, so a crash
     * (no atexit) leaves nothing behind */
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof(g_dir), "%s/fuzz-signer-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (mkdtemp(g_dir) == NULL) {
        abort();
    }
    atexit(cleanup);
    char cmd[1024], err[300], conf[300];
    snprintf(cmd, sizeof(cmd), "ASAN_OPTIONS=detect_leaks=0 '%s' init --dir '%s/s' >/dev/null 2>&1",
             bin, g_dir);
    snprintf(conf, sizeof(conf), "%s/s/tlsmint.conf", g_dir);
    static struct px_cfg cfg;
    if (system(cmd) != 0 || px_cfg_load(conf, &cfg, err, sizeof(err)) != 0 ||
        hsm_member_setenv(&cfg.members[0]) != 0 ||
        (g_hsm = hsm_direct_open(&cfg.members[0], err, sizeof(err))) == NULL) {
        fprintf(stderr, "fuzz_frame_signer: no SoftHSM token: %s\n", err);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > HSM_REQ_FRAME_MAX + 64) { /* the signer's receive buffer */
        return 0;
    }
    uint8_t *buf = fz_dup(data, size);
    const struct hsm_req *reqs = NULL;
    uint16_t count = 0;
    struct hsm_ctrl ctl;
    int kind = hsm_frame__parse_to_signer(buf, size, &reqs, &count, &ctl);
    if (kind == HSM_FRAME_REQ) {
        if (count > HSM_BATCH_MAX || (const uint8_t *)(reqs + count) > buf + size) {
            abort();
        }
        /* the first SIGN_MAX of a batch go to the token (every one takes the same path, and a
         * full batch of 64 real signatures would slow the campaign down 16 times) */
        for (uint16_t i = 0; i < count && i < SIGN_MAX && g_hsm != NULL; i++) {
            struct hsm_req r = reqs[i]; /* the signer copies each request into its queue */
            uint8_t sig[HSM_SIG_MAX];
            unsigned long rv = 0;
            int n = hsm_direct_sign(g_hsm, (enum hsm_alg)r.alg, r.digest, r.dlen, sig, &rv);
            if (n >= 0 && (n > HSM_SIG_MAX || r.dlen != hsm_alg_digest_len((enum hsm_alg)r.alg))) {
                abort();
            }
        }
    } else if (kind != HSM_FRAME_CTRL && kind != PX_E_PROTO && kind != PX_E_SHORT) {
        abort();
    }
    free(buf);
    return 0;
}
