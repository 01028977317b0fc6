/* SPDX-License-Identifier: MIT */
/*
 * cli_bundle.c - the migration bundle: `tlsmint backup --out FILE` and
 * `tlsmint restore --in FILE --dir DIR [--master-key-file F] [--hsm-env NAME=VALUE]`.
 * One authenticated, encrypted file: "TMB1" | salt (16) | IV (12) | AES-256-GCM(payload) | tag,
 * the key derived from the master key with HKDF (info "tlsmint backup v1" + salt), the header
 * authenticated. The payload is a list of (name, bytes): manifest, configuration, CA
 * certificates, the sealed key files (still sealed with the master key), and the HSM PIN.
 * HSM-held keys are never in it: only references (module, token label and serial, key label,
 * public-key fingerprint).
 * Restore verifies everything before it writes anything, builds DIR.tmp completely and renames
 * it to DIR: a refused bundle leaves DIR untouched.
 */
#include "cli.h"
#include "cli_bundle_fmt.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

/* The state directory: where the config file lives. */
static void state_dir(const struct px_cfg *cfg, char *out, size_t cap)
{
    char tmp[PATH_MAX];
    if (realpath(cfg->path, tmp) == NULL) {
        snprintf(tmp, sizeof(tmp), "%s", cfg->path);
    }
    char *slash = strrchr(tmp, '/');
    if (slash != NULL) {
        *slash = 0;
    }
    snprintf(out, cap, "%s", tmp);
}

static const char backup_usage[] =
    "usage: tlsmint [-c CONFIG] backup --out FILE\n"
    "\n"
    "Writes the whole trust infrastructure (CA certificates, sealed soft keys and leaf-key pool,\n"
    "configuration, HSM PIN, references to the HSM-held keys) into one file encrypted and\n"
    "authenticated under a key derived from the master key. Restore it on another node with\n"
    "the same master key: tlsmint restore --in FILE --dir DIR --master-key-file F\n";

int cli_backup(int argc, char **argv)
{
    static const struct option opts[] = {{"out", required_argument, NULL, 'o'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *conf = "./var/tlsmint.conf", *outp = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        if (c == 'c') {
            conf = optarg;
        } else if (c == 'o') {
            outp = optarg;
        } else if (c == 'h') {
            return cli_usage(backup_usage, 0);
        } else {
            return cli_usage(backup_usage, 2);
        }
    }
    if (outp == NULL || optind != argc) {
        return cli_usage(backup_usage, 2);
    }
    static struct px_cfg cfg;
    if (cli_load_config(conf, &cfg) != 0) {
        return 1;
    }
    char err[600], dir[PATH_MAX];
    uint8_t mk[32];
    struct cli_archive a = {0};
    uint8_t *plain = NULL, *blob = NULL;
    size_t plen = 0;
    int ret = 1;
    state_dir(&cfg, dir, sizeof(dir));
    struct hsm_direct *d = cli_hsm_open(&cfg, err, sizeof(err));
    if (d == NULL || cli_mk_unwrap(&cfg, mk, err, sizeof(err)) != 0) {
        fprintf(stderr, "tlsmint backup: %s\n", err);
        hsm_direct_close(d);
        return 1;
    }
    const struct hsm_token_info *ti = hsm_direct_info(d);
    char fp[65] = "";
    cli_sha256_hex(ti->pub_der, ti->pub_len, fp);
    const struct {
        const char *name, *path;
    } files[] = {{"tlsmint.conf", cfg.path},
                 {"ca/forward-trust.pem", cfg.ca_forward_trust_cert},
                 {"ca/forward-trust-chain.pem", cfg.ca_forward_trust_chain},
                 {"ca/forward-untrust.pem", cfg.ca_forward_untrust_cert},
                 {"keys/forward-untrust.key.enc", cfg.ca_forward_untrust_key},
                 {"keys/leaf-pool.enc", cfg.cache_leaf_pool},
                 {"hsm/pin", cfg.members[0].pin_file}};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        if (files[i].path[0] == '\0') {
            continue;
        }
        if (cli_archive_add_file(&a, files[i].name, files[i].path, err, sizeof(err)) != 0) {
            fprintf(stderr, "tlsmint backup: %s\n", err);
            goto out;
        }
    }
    /* manifest: hashes of every entry, the HSM references, where the state lived */
    char *man = NULL;
    size_t manlen = 0;
    FILE *m = open_memstream(&man, &manlen);
    char host[128] = "";
    gethostname(host, sizeof(host) - 1);
    fprintf(m, "{\"format\":1,\"created\":%lld,\"node\":\"%s\",\"state_dir\":\"%s\",",
            (long long)time(NULL), host, dir);
    fprintf(m, "\"hsm\":{\"module\":\"%s\",\"token\":\"%s\",\"serial\":\"%s\",\"key_label\":\"%s\","
               "\"pubkey_sha256\":\"%s\"},\"files\":[",
            cfg.members[0].module, ti->label, ti->serial, ti->key_label, fp);
    for (int i = 0; i < a.n; i++) {
        char h[65];
        cli_sha256_hex(a.e[i].data, a.e[i].len, h);
        fprintf(m, "%s{\"name\":\"%s\",\"sha256\":\"%s\"}", i ? "," : "", a.e[i].name, h);
    }
    fprintf(m, "]}\n");
    fclose(m);
    int mr = cli_archive_add(&a, "manifest.json", (uint8_t *)man, manlen);
    free(man);
    if (mr != 0 || cli_archive_pack(&a, &plain, &plen) != 0) {
        fprintf(stderr, "tlsmint backup: out of memory\n");
        goto out;
    }
    size_t blen = 4 + 16 + 12 + plen + 16;
    blob = malloc(blen);
    if (blob == NULL) {
        goto out;
    }
    memcpy(blob, CLI_BUNDLE_MAGIC, 4);
    if (RAND_bytes(blob + 4, 28) != 1 ||
        cli_bundle_crypt(true, mk, blob + 4, blob + 20, blob, 32, plain, plen, blob + 32,
                     blob + 32 + plen) != 0) {
        fprintf(stderr, "tlsmint backup: encryption failed\n");
        goto out;
    }
    if (px_write_atomic(outp, blob, blen, 0600) != 0) {
        fprintf(stderr, "tlsmint backup: cannot write %s: %s\n", outp, strerror(errno));
        goto out;
    }
    char bh[65];
    cli_sha256_hex(blob, blen, bh);
    px_log(PX_LOG_INFO, "backup", "backup success: %s, %zu bytes, sha256 %s", outp, blen, bh);
    printf("backup success: %s (%d entries, sha256 %s)\n", outp, a.n, bh);
    cli_audit(&cfg, "backup", "\"file\":\"%s\",\"sha256\":\"%s\"", outp, bh);
    ret = 0;
out:
    px_wipe(mk, sizeof(mk));
    if (plain != NULL) {
        px_wipe(plain, plen);
    }
    free(plain);
    free(blob);
    cli_archive_free(&a);
    hsm_direct_close(d);
    return ret;
}

static int write_into(const char *root, const char *name, const struct entry_view *e, int mode)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s", root, name);
    char *slash = strrchr(path, '/');
    *slash = 0;
    mkdir(path, 0700);
    *slash = '/';
    return px_write_atomic(path, e->data, e->len, mode);
}

static const char restore_usage[] =
    "usage: tlsmint restore --in FILE --dir DIR [--master-key-file F] [--hsm-env NAME=VALUE]\n"
    "\n"
    "Verifies the bundle under the master key (the same one the exporting node uses), checks\n"
    "that the HSM named in it is reachable and holds the key of the forward-trust CA\n"
    "certificate, then installs everything into DIR (which must not exist) in one step and wraps\n"
    "the master key with a new AES key in that HSM. --hsm-env overrides how this node reaches\n"
    "the HSM (e.g. P11_KIT_SERVER_ADDRESS=...). A refused bundle changes nothing.\n"
    "A running proxy takes the restored state on restart (its config file moved).\n";

int cli_restore(int argc, char **argv)
{
    static const struct option opts[] = {{"in", required_argument, NULL, 'i'},
                                         {"dir", required_argument, NULL, 'd'},
                                         {"master-key-file", required_argument, NULL, 'm'},
                                         {"hsm-env", required_argument, NULL, 'e'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *in = NULL, *dir_arg = NULL, *mkfile = NULL;
    const char *envs[8];
    int nenv = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'i':
            in = optarg;
            break;
        case 'd':
            dir_arg = optarg;
            break;
        case 'm':
            mkfile = optarg;
            break;
        case 'e':
            if (nenv < 8 && strchr(optarg, '=') != NULL) {
                envs[nenv++] = optarg;
            }
            break;
        case 'c':
            break;
        case 'h':
            return cli_usage(restore_usage, 0);
        default:
            return cli_usage(restore_usage, 2);
        }
    }
    if (in == NULL || dir_arg == NULL || mkfile == NULL || optind != argc) {
        fputs(restore_usage, stderr);
        if (in != NULL && dir_arg != NULL && mkfile == NULL) {
            fprintf(stderr, "tlsmint restore: --master-key-file is required (the deployment's "
                            "master key)\n");
        }
        return 2;
    }
    char err[700], dir[PATH_MAX], tmpdir[PATH_MAX + 32];
    if (access(dir_arg, F_OK) == 0) {
        fprintf(stderr, "tlsmint restore: %s exists: refusing to overwrite state\n", dir_arg);
        return 1;
    }
    if (dir_arg[0] == '/') {
        snprintf(dir, sizeof(dir), "%s", dir_arg);
    } else {
        char cwd[PATH_MAX];
        snprintf(dir, sizeof(dir), "%s/%s", getcwd(cwd, sizeof(cwd)) ? cwd : ".", dir_arg);
    }
    uint8_t mk[32];
    if (cli_mk_read_key_file(mkfile, mk, err, sizeof(err)) != 0) {
        fprintf(stderr, "tlsmint restore: %s\n", err);
        return 1;
    }
    uint8_t *blob = NULL, *plain = NULL;
    size_t blen = 0, plen = 0;
    struct cli_archive a = {0};
    struct hsm_direct *d = NULL;
    char *conftext = NULL;
    X509 *ca = NULL;
    int ret = 1;
    snprintf(tmpdir, sizeof(tmpdir), "%s.tmp-%d", dir, (int)getpid());
    if (px_read_file(in, CLI_BUNDLE_MAX, &blob, &blen) != 0) {
        fprintf(stderr, "tlsmint restore: cannot read %s\n", in);
        goto out;
    }
    int orc = cli_bundle_open(mk, blob, blen, &plain, &plen);
    if (orc == PX_E_PROTO) {
        fprintf(stderr, "tlsmint restore: %s is not a tlsmint bundle (or it is truncated)\n", in);
        goto out;
    }
    if (orc != 0) {
        fprintf(stderr, "tlsmint restore: the bundle does not open: wrong master key, or the "
                        "file was modified or truncated. Nothing was changed.\n");
        goto out;
    }
    static struct cli_bundle_view v;
    if (cli_bundle_check(plain, plen, &a, &v, err, sizeof(err)) != 0) {
        fprintf(stderr, "tlsmint restore: %s\n", err);
        goto out;
    }
    const struct entry_view *cf = v.cf, *cert = v.cert;
    conftext = cli_bundle_rewrite_config((const char *)cf->data, v.old_dir, dir);
    if (conftext == NULL) {
        fprintf(stderr, "tlsmint restore: out of memory\n");
        goto out;
    }
    /* build the new state in DIR.tmp, then check the HSM against it */
    if (mkdir(tmpdir, 0755) != 0) {
        fprintf(stderr, "tlsmint restore: cannot create %s: %s\n", tmpdir, strerror(errno));
        goto out;
    }
    const char *names[] = {"ca/forward-trust.pem", "ca/forward-trust-chain.pem",
                           "ca/forward-untrust.pem", "hsm/pin"};
    for (size_t i = 0; i < 4; i++) {
        const struct entry_view *e = cli_archive_get(&a, names[i]);
        if (e != NULL && write_into(tmpdir, names[i], e, i == 3 ? 0600 : 0644) != 0) {
            fprintf(stderr, "tlsmint restore: cannot write %s\n", names[i]);
            goto out;
        }
    }
    char p[PATH_MAX + 64];
    snprintf(p, sizeof(p), "%s/run", tmpdir);
    mkdir(p, 0755);
    /* the config as it will be, but pointing into DIR.tmp while we check the HSM */
    char *tmpconf = cli_bundle_rewrite_config(conftext, dir, tmpdir);
    snprintf(p, sizeof(p), "%s/tlsmint.conf", tmpdir);
    int wr = tmpconf ? px_write_atomic(p, tmpconf, strlen(tmpconf), 0644) : -ENOMEM;
    free(tmpconf);
    static struct px_cfg cfg;
    if (wr != 0 || px_cfg_load(p, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "tlsmint restore: the bundle's configuration does not load: %s\n", err);
        goto out;
    }
    for (int i = 0; i < nenv; i++) { /* how this node reaches the HSM */
        char nm[128];
        snprintf(nm, sizeof(nm), "%.*s", (int)(strchr(envs[i], '=') - envs[i]), envs[i]);
        for (int k = 0; k < cfg.members[0].n_env; k++) {
            if (strncmp(cfg.members[0].env[k], nm, strlen(nm)) == 0) {
                cfg.members[0].env[k][0] = 0;
            }
        }
        setenv(nm, strchr(envs[i], '=') + 1, 1);
    }
    d = cli_hsm_open(&cfg, err, sizeof(err));
    if (d == NULL) {
        fprintf(stderr, "tlsmint restore: the HSM named in the bundle is not usable from here: "
                        "%s. Nothing was changed.\n", err);
        goto out;
    }
    BIO *cb = BIO_new_mem_buf(cert->data, (int)cert->len);
    ca = cb ? PEM_read_bio_X509(cb, NULL, NULL, NULL) : NULL;
    BIO_free(cb);
    const struct hsm_token_info *ti = hsm_direct_info(d);
    const unsigned char *pk = ti->pub_der;
    EVP_PKEY *hk = ti->pub_len ? d2i_PUBKEY(NULL, &pk, ti->pub_len) : NULL;
    bool match = ca != NULL && hk != NULL && EVP_PKEY_eq(hk, X509_get0_pubkey(ca)) == 1;
    EVP_PKEY_free(hk);
    if (!match) {
        fprintf(stderr, "tlsmint restore: the HSM key '%s' on token '%s' (serial %s) does not "
                        "match the bundle's forward-trust CA certificate. Nothing was changed.\n",
                ti->key_label, ti->label, ti->serial);
        goto out;
    }
    /* sealed files under the master key: they must open with it */
    const struct entry_view *uk = cli_archive_get(&a, "keys/forward-untrust.key.enc");
    const struct entry_view *lp = cli_archive_get(&a, "keys/leaf-pool.enc");
    uint8_t *t = NULL;
    size_t tl = 0;
    if ((uk != NULL && px_unseal(mk, "forward-untrust-key", uk->data, uk->len, &t, &tl) != 0)) {
        fprintf(stderr, "tlsmint restore: the sealed keys do not open with this master key\n");
        goto out;
    }
    if (t != NULL) {
        px_wipe(t, tl);
        free(t);
    }
    /* keys.1: the sealed files as they are, the master key wrapped by a new key of this node */
    uint8_t rnd[4];
    RAND_bytes(rnd, sizeof(rnd));
    char label[64];
    snprintf(label, sizeof(label), "tlsmint-wrap-%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2],
             rnd[3]);
    if (cli_keys_restore(tmpdir, d, mk, label, uk, lp, err, sizeof(err)) != 0) {
        fprintf(stderr, "tlsmint restore: %s\n", err);
        goto out;
    }
    snprintf(p, sizeof(p), "%s/tlsmint.conf", tmpdir);
    if (px_write_atomic(p, conftext, strlen(conftext), 0644) != 0 || rename(tmpdir, dir) != 0) {
        fprintf(stderr, "tlsmint restore: cannot install %s: %s\n", dir, strerror(errno));
        goto out;
    }
    tmpdir[0] = 0;
    char bh[65];
    cli_sha256_hex(blob, blen, bh);
    snprintf(cfg.log_audit, sizeof(cfg.log_audit), "%s/audit.log", dir);
    cli_audit(&cfg, "restore", "\"bundle_sha256\":\"%s\",\"dir\":\"%s\"", bh, dir);
    printf("trust infrastructure restored into %s: forward-trust CA %s, HSM token '%s' serial %s "
           "(key matches), master key wrapped by new HSM key '%s'. Start with: tlsmint -c "
           "%s/tlsmint.conf run\n",
           dir, X509_NAME_oneline(X509_get_subject_name(ca), err, 200), ti->label, ti->serial,
           label, dir);
    ret = 0;
out:
    if (tmpdir[0] != 0 && access(tmpdir, F_OK) == 0) {
        if (cli_rm_tree(tmpdir) != 0) {
            fprintf(stderr, "tlsmint restore: could not remove %s\n", tmpdir);
        }
    }
    px_wipe(mk, sizeof(mk));
    if (plain != NULL) {
        px_wipe(plain, plen + 1);
    }
    free(plain);
    free(blob);
    free(conftext);
    cli_archive_free(&a);
    X509_free(ca);
    hsm_direct_close(d);
    return ret;
}
