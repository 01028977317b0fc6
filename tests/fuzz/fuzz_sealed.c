/* SPDX-License-Identifier: MIT */
/*
 * fuzz_sealed.c - libFuzzer target: the sealed key files under keys/ (also carried in restore
 * bundles): the forward-untrust CA key and the leaf-key pool.
 * Target functions: px_unseal (common/px_seal.c: magic, role, lengths, AES-256-GCM) and the
 * certcache parsers behind it, cc_key_parse and cc_keys_parse (certcache/cc_keys.c: PEM private
 * keys, the legacy copies, the SKI), then cc_mint_build with every pool key that was accepted.
 * Input: byte 0 picks the mode, the rest is the file:
 *   0  the untrust key file as read from disk (sealed, or a plain PEM from before sealing);
 *   1  the leaf-pool file as read from disk;
 *   2  the untrust key's plaintext, sealed here with the corpus's master key first;
 *   3  the leaf pool's plaintext, sealed here first (random bytes never pass the AEAD, so modes
 *      2 and 3 reach the PEM parsing and the key handling behind it).
 * Checks: no crash or leak; cc_keys_parse never fills more slots than given and every filled
 * slot holds a key of its kind and its SKI; each such key can be put into a leaf.
 * Deterministic apart from px_seal's random IV and the leaf serial (neither is looked at).
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>

#include "cc_int.h"
#include "fuzz_common.h"

#define NEC 3
#define NRSA 3

static struct cc_ca g_ca;
static struct cc_fixed_ext g_fx;
static X509 *g_up; /* an upstream leaf to mint for */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    EVP_PKEY *k = fz_ec_key();
    g_ca.cert = fz_ca_cert(k, "tlsmint fuzz CA");
    g_ca.name = X509_get_subject_name(g_ca.cert);
    g_ca.soft_key = k;
    g_ca.alg = HSM_ALG_ECDSA_SHA256;
    g_up = fz_ca_cert(k, "fuzz.example");
    if (cc_fixed_ext_init(&g_fx) != 0) {
        abort();
    }
    return 0;
}

static void untrust_key(const uint8_t *raw, size_t len)
{
    char err[300];
    EVP_PKEY *k = cc_key_parse(raw, len, "fuzz.key", "forward-untrust-key", fz_mk, err, sizeof(err),
                               "[ca] forward_untrust_key");
    if (k != NULL) {
        /* what cc_ca_load_untrust does next */
        (void)X509_check_private_key(g_ca.cert, k);
        EVP_PKEY_free(k);
    } else if (memchr(err, '\0', sizeof(err)) == NULL) {
        abort();
    }
}

static void leaf_pool(const uint8_t *raw, size_t len)
{
    struct cc_leaf_key ec[NEC], rsa[NRSA];
    memset(ec, 0, sizeof(ec));
    memset(rsa, 0, sizeof(rsa));
    int got_ec = -1, got_rsa = -1;
    char err[300];
    int r = cc_keys_parse(raw, len, "fuzz.pool", fz_mk, ec, NEC, rsa, NRSA, &got_ec, &got_rsa, err,
                          sizeof(err));
    if (r != 0 && (got_ec != 0 || got_rsa != 0)) {
        abort();
    }
    if (got_ec < 0 || got_ec > NEC || got_rsa < 0 || got_rsa > NRSA) {
        abort();
    }
    for (int i = 0; i < got_ec + got_rsa; i++) {
        struct cc_leaf_key *s = i < got_ec ? &ec[i] : &rsa[i - got_ec];
        enum cc_key_kind want = i < got_ec ? CC_KEY_EC : CC_KEY_RSA;
        if (s->pkey == NULL || s->ski == NULL || s->kind != want) {
            abort();
        }
        uint8_t digest[64];
        int dlen = 0;
        const char *why = NULL;
        X509 *leaf = cc_mint_build(&g_ca, &g_fx, s, g_up, 30, digest, &dlen, &why);
        X509_free(leaf);
    }
    for (int i = got_ec; i < NEC; i++) {
        if (ec[i].pkey != NULL || ec[i].ski != NULL) {
            abort();
        }
    }
    for (int i = got_rsa; i < NRSA; i++) {
        if (rsa[i].pkey != NULL || rsa[i].ski != NULL) {
            abort();
        }
    }
    cc_keys_free(ec, NEC);
    cc_keys_free(rsa, NRSA);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 256 * 1024) {
        return 0;
    }
    int mode = data[0] & 3;
    uint8_t *raw = fz_dup(data + 1, size - 1);
    size_t len = size - 1;
    if (mode >= 2) {
        uint8_t *sealed = NULL;
        size_t sl = 0;
        if (px_seal(fz_mk, mode == 2 ? "forward-untrust-key" : "leaf-key-pool", raw, len, &sealed,
                    &sl) != 0) {
            abort();
        }
        free(raw);
        raw = sealed;
        len = sl;
    }
    if (mode == 0 || mode == 2) {
        untrust_key(raw, len);
    } else {
        leaf_pool(raw, len);
    }
    ERR_clear_error();
    free(raw);
    return 0;
}
