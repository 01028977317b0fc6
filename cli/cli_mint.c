/* SPDX-License-Identifier: MIT */
/*
 * cli_mint.c - `tlsmint mint UPSTREAM.pem [--untrusted] [--rsa]`: mints one leaf the way the proxy
 * would (certcache, signer processes, HSM) and prints it as PEM, for checking and debugging.
 */
#include "cc.h"
#include "cli.h"

#include <getopt.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>

#include <openssl/pem.h>

static const char mint_usage[] =
    "usage: tlsmint [-c CONFIG] mint UPSTREAM.pem [--untrusted] [--rsa]\n"
    "\n"
    "Mints a leaf certificate for the upstream server certificate in UPSTREAM.pem (its first\n"
    "certificate) and prints it as PEM on stdout. Names (CN, SAN DNS and IP) are copied from\n"
    "the upstream certificate; the forward-trust CA signs it through the HSM.\n"
    "\n"
    "options:\n"
    "  --untrusted   treat the upstream chain as not verified: the forward-untrust CA signs\n"
    "  --rsa         use an RSA-2048 leaf key (default: EC P-256)\n";

struct mint_wait {
    int done, status;
    struct cc_entry *e;
    uint64_t wait_ns;
};

static void on_minted(void *user, int status, struct cc_entry *e, uint64_t wait_ns)
{
    struct mint_wait *w = user;
    w->done = 1;
    w->status = status;
    w->e = e;
    w->wait_ns = wait_ns;
}

int cli_mint(int argc, char **argv)
{
    static const struct option opts[] = {{"untrusted", no_argument, NULL, 'u'},
                                         {"rsa", no_argument, NULL, 'r'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *conf = "./var/tlsmint.conf";
    bool untrusted = false, rsa = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            conf = optarg;
            break;
        case 'u':
            untrusted = true;
            break;
        case 'r':
            rsa = true;
            break;
        case 'h':
            return cli_usage(mint_usage, 0);
        default:
            return cli_usage(mint_usage, 2);
        }
    }
    if (optind + 1 != argc) {
        return cli_usage(mint_usage, 2);
    }
    const char *upath = argv[optind];
    FILE *f = fopen(upath, "r");
    if (f == NULL) {
        fprintf(stderr, "tlsmint mint: cannot open %s\n", upath);
        return 1;
    }
    X509 *up = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (up == NULL) {
        fprintf(stderr, "tlsmint mint: %s holds no PEM certificate\n", upath);
        return 1;
    }
    static struct px_cfg cfg;
    if (cli_load_config(conf, &cfg) != 0) {
        X509_free(up);
        return 1;
    }
    char err[512];
    int ret = 1;
    struct hsm_pool *pool = NULL;
    struct cc_ctx *cc = NULL;
    struct cc_loop *l = NULL;
    struct mint_wait w = {0};
    if (!untrusted) {
        pool = hsm_pool_new(&cfg, cli_self_exe(), err, sizeof(err));
        if (pool == NULL) {
            fprintf(stderr, "tlsmint mint: %s\n", err);
            goto out;
        }
    }
    cc = cli_cc_new(&cfg, pool, err, sizeof(err));
    if (cc == NULL) {
        fprintf(stderr, "tlsmint mint: %s\n", err);
        goto out;
    }
    l = cc_loop_new(cc);
    if (l == NULL) {
        fprintf(stderr, "tlsmint mint: out of memory\n");
        goto out;
    }
    uint64_t t0 = px_now_ns();
    int r = cc_get(l, up, !untrusted, rsa ? CC_KEY_RSA : CC_KEY_EC, on_minted, &w, &w.e);
    if (r == CC_HIT || r == CC_MINTED) {
        w.done = 1;
    } else if (r < 0) {
        fprintf(stderr, "tlsmint mint: %s\n", px_strerror(r));
        goto out;
    }
    while (!w.done && px_now_ns() - t0 < 30000000000ull) {
        struct pollfd pfd = {.fd = cc_loop_fd(l), .events = POLLIN};
        poll(&pfd, 1, 100);
        cc_loop_poll(l);
    }
    if (!w.done || w.status != 0 || w.e == NULL) {
        fprintf(stderr, "tlsmint mint: minting failed: %s\n",
                w.done ? px_strerror(w.status) : "no answer in 30 s");
        goto out;
    }
    PEM_write_X509(stdout, cc_entry_cert(w.e));
    fprintf(stderr, "tlsmint mint: signed by the %s CA%s in %.2f ms\n",
            untrusted ? "forward-untrust" : "forward-trust", untrusted ? "" : " through the HSM",
            (double)(px_now_ns() - t0) / 1e6);
    ret = 0;
out:
    cc_entry_unref(w.e);
    if (l != NULL && cc_loop_free(l) != 0) {
        hsm_pool_free(pool); /* completes what is left, then the loop can go */
        pool = NULL;
        cc_loop_poll(l);
        (void)cc_loop_free(l);
    }
    cc_free(cc);
    hsm_pool_free(pool);
    X509_free(up);
    return ret;
}
