/* SPDX-License-Identifier: MIT */
/*
 * tlsmint.c - program entry: global options, subcommand dispatch, help.
 * The internal "__signer" subcommand is dispatched before anything else so the signer process
 * starts with nothing but its socket (DESIGN.md "Threads and processes").
 */
#include "cli.h"
#include "cli_admin.h"

#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage[] =
    "usage: tlsmint [-c CONFIG] COMMAND [ARGS]\n"
    "\n"
    "TLS forward proxy that mints leaf certificates signed by a CA key held in an HSM.\n"
    "\n"
    "commands:\n"
    "  init [--dir DIR] [--key-type ec-p256|rsa-2048|rsa-3072]\n"
    "                 create DIR (default ./var): SoftHSM token with the forward-trust key made\n"
    "                 inside it, forward-trust and forward-untrust CAs, and DIR/tlsmint.conf\n"
    "  run            start the proxy in the foreground (SIGTERM stops it)\n"
    "  mint UPSTREAM.pem [--untrusted] [--rsa]\n"
    "                 mint a leaf for that upstream certificate and print it as PEM\n"
    "  ctl status|hsm|cache|metrics\n"
    "                 ask a running proxy (admin socket)\n"
    "  master-key status|rotate-wrapping-key|change [--master-key-file F]\n"
    "                 master-key custody (sealed key files, HSM wrapping key)\n"
    "  ca csr --out FILE [--subject DN] | ca import --cert C [--chain CH] | ca list\n"
    "                 enterprise forward-trust CA (key in the HSM, issued by your root)\n"
    "  inbound keygen --label L [--key-type T] | inbound csr --label L --subject DN\n"
    "                 [--san DNS:a,DNS:b] --out F | inbound list\n"
    "                 keys (inside the HSM) and certificates of the [inbound.NAME] listeners\n"
    "  backup --out FILE   the trust infrastructure in one encrypted, authenticated file\n"
    "  restore --in FILE --dir DIR --master-key-file F [--hsm-env NAME=VALUE]\n"
    "                 install a bundle on this node (verifies it and the HSM first)\n"
    "  hsm-status     show each HSM member: token, serial, state, key, a test signature\n"
    "  transparent setup|status|teardown [--mode redirect|tproxy] [--in-interface IF]\n"
    "                 [--ports 443,8443] [--exclude-uid U | --exclude-mark M]\n"
    "                 nftables rules for transparent mode, in their own table inet tlsmint\n"
    "  help           this text; 'tlsmint COMMAND --help' shows a command's options\n"
    "\n"
    "options:\n"
    "  -c CONFIG      configuration file (default ./var/tlsmint.conf, written by init)\n"
    "  -h, --help     this text\n"
    "  -V, --version  print the version\n";

static int signer_cmd(int argc, char **argv)
{
    int fd = -1, member = -1;
    const char *conf = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--fd") == 0) {
            fd = atoi(argv[i + 1]);
        } else if (strcmp(argv[i], "--member") == 0) {
            member = atoi(argv[i + 1]);
        } else if (strcmp(argv[i], "-c") == 0) {
            conf = argv[i + 1];
        }
    }
    if (fd < 0 || member < 0 || conf == NULL) {
        fprintf(stderr, "tlsmint: __signer is internal: started by the proxy, not by hand\n");
        return 2;
    }
    static struct px_cfg cfg; /* only for [run] user: hsm_signer_main loads its own */
    char err[600];
    if (px_cfg_load(conf, &cfg, err, sizeof(err)) == 0 &&
        cli_priv_drop_child(&cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "tlsmint __signer: %s\n", err);
        return 1;
    }
    return hsm_signer_main(fd, conf, member);
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "__signer") == 0) {
        return signer_cmd(argc - 1, argv + 1);
    }
    if (argc >= 2 && strcmp(argv[1], "__unwrap") == 0) {
        signal(SIGPIPE, SIG_IGN);
        return cli_unwrap_child(argc - 1, argv + 1);
    }
    cli_self_exe_init(argv[0]);

    /* global options before the command; -c is passed through to the command */
    const char *conf = NULL;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            fputs(usage, stdout);
            return 0;
        }
        if (strcmp(argv[i], "-V") == 0 || strcmp(argv[i], "--version") == 0) {
            printf("tlsmint %s\n", TLSMINT_VERSION);
            return 0;
        }
        if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) {
            conf = argv[++i];
            continue;
        }
        fprintf(stderr, "tlsmint: unknown option '%s' (see tlsmint --help)\n", argv[i]);
        return 2;
    }
    if (i >= argc) {
        fputs(usage, stderr);
        return 2;
    }
    const char *cmd = argv[i];
    /* rebuild argv for the command: cmd [-c CONF] rest... */
    char *sub[256];
    int sc = 0;
    sub[sc++] = argv[i];
    if (conf != NULL) {
        sub[sc++] = "-c";
        sub[sc++] = (char *)conf;
    }
    for (int k = i + 1; k < argc && sc < 255; k++) {
        sub[sc++] = argv[k];
    }
    sub[sc] = NULL;

    if (strcmp(cmd, "help") == 0) {
        fputs(usage, stdout);
        return 0;
    }
    if (strcmp(cmd, "init") == 0) {
        return cli_init(sc, sub);
    }
    if (strcmp(cmd, "hsm-status") == 0) {
        return cli_hsm_status(sc, sub);
    }
    if (strcmp(cmd, "ca") == 0) {
        return cli_ca(sc, sub);
    }
    if (strcmp(cmd, "inbound") == 0) {
        return cli_inbound(sc, sub);
    }
    if (strcmp(cmd, "backup") == 0) {
        return cli_backup(sc, sub);
    }
    if (strcmp(cmd, "restore") == 0) {
        return cli_restore(sc, sub);
    }
    if (strcmp(cmd, "master-key") == 0) {
        return cli_master_key(sc, sub);
    }
    if (strcmp(cmd, "ctl") == 0) {
        return cli_ctl(sc, sub);
    }
    if (strcmp(cmd, "mint") == 0) {
        return cli_mint(sc, sub);
    }
    if (strcmp(cmd, "transparent") == 0) {
        return cli_transparent(sc, sub);
    }
    if (strcmp(cmd, "run") == 0) {
        return cli_run(sc, sub);
    }
    fprintf(stderr, "tlsmint: unknown command '%s' (see tlsmint --help)\n", cmd);
    return 2;
}
