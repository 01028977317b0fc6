/* SPDX-License-Identifier: MIT */
/*
 * cli_init.c - `tlsmint init`: a private SoftHSM store and token, the forward-trust key pair
 * generated inside the token, the self-signed forward-trust CA certificate signed through the
 * HSM, a forward-untrust CA, and a commented configuration file.
 * Owns nothing after it returns. Runs single-threaded, before any proxy exists; it loads the
 * PKCS#11 module in-process because it is a management command, not the network-facing proxy.
 * Invariants: refuses to touch an existing DIR state; PINs go only into 0600 files.
 * Not here: the master key and encrypted key files (the master-key issue), the leaf-key pool.
 */
#include "cc.h"
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#define SOFTHSM_MODULE "/usr/lib/softhsm/libsofthsm2.so"
#define CA_DAYS 3650

static const char init_usage[] =
    "usage: tlsmint init [--dir DIR] [--key-type ec-p256|rsa-2048|rsa-3072] [--module PATH]\n"
    "\n"
    "Creates DIR (default ./var) with:\n"
    "  DIR/hsm/          private SoftHSM store (softhsm2.conf, tokens/), token 'tlsmint'\n"
    "  DIR/hsm/pin       the token's user PIN (mode 0600); DIR/hsm/so-pin the SO PIN (0600)\n"
    "  DIR/ca/forward-trust.pem    self-signed CA; its key was generated inside the token\n"
    "  DIR/ca/forward-untrust.pem  CA for upstreams whose chain does not verify\n"
    "  DIR/keys/         master key wrapped by an AES key made in the token; the forward-untrust\n"
    "                    key and the leaf-key pool sealed with it (AES-256-GCM)\n"
    "  DIR/tlsmint.conf  commented configuration that 'tlsmint run' uses as is\n"
    "Refuses to run when DIR already holds any of these.\n"
    "\n"
    "options:\n"
    "  --dir DIR         state directory (default ./var)\n"
    "  --key-type T      forward-trust key: ec-p256 (default), rsa-2048, rsa-3072\n"
    "  --module PATH     PKCS#11 module (default " SOFTHSM_MODULE ")\n"
    "  --master-key-file F  the deployment's master key (32 raw bytes or 64 hex digits);\n"
    "                    default: a random one. Every node of a fleet needs the same one.\n";

static int write_secret_file(const char *path, const char *content)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        return -errno;
    }
    size_t len = strlen(content);
    ssize_t w = write(fd, content, len);
    int r = (w == (ssize_t)len && fsync(fd) == 0) ? 0 : -EIO;
    close(fd);
    return r;
}

/* Text files (config, certificates): the common atomic write. */
static int write_file(const char *path, const char *content, mode_t mode)
{
    return px_write_atomic(path, content, strlen(content), (int)mode);
}

static int random_pin(char *out, size_t hexlen)
{
    uint8_t raw[32];
    if (hexlen / 2 > sizeof(raw) || RAND_bytes(raw, (int)(hexlen / 2)) != 1) {
        return PX_E_CRYPTO;
    }
    for (size_t i = 0; i < hexlen / 2; i++) {
        snprintf(out + 2 * i, 3, "%02x", raw[i]);
    }
    px_wipe(raw, sizeof(raw));
    return 0;
}

static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    X509_EXTENSION *ex = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (ex == NULL) {
        return PX_E_CRYPTO;
    }
    int ok = X509_add_ext(cert, ex, -1);
    X509_EXTENSION_free(ex);
    return ok == 1 ? 0 : PX_E_CRYPTO;
}

/* A CA certificate skeleton (everything but the signature). Returns new ref or NULL. */
static X509 *ca_skeleton(EVP_PKEY *pub, const char *cn)
{
    X509 *x = X509_new();
    X509_NAME *name = X509_NAME_new();
    BIGNUM *bn = BN_new();
    ASN1_INTEGER *serial = NULL;
    X509 *ret = NULL;
    if (x == NULL || name == NULL || bn == NULL) {
        goto out;
    }
    if (BN_rand(bn, 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) != 1 ||
        (serial = BN_to_ASN1_INTEGER(bn, NULL)) == NULL || X509_set_version(x, 2) != 1 ||
        X509_set_serialNumber(x, serial) != 1 ||
        X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const unsigned char *)"tlsmint", -1,
                                   -1, 0) != 1 ||
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1,
                                   0) != 1 ||
        X509_set_subject_name(x, name) != 1 || X509_set_issuer_name(x, name) != 1 ||
        X509_gmtime_adj(X509_getm_notBefore(x), -3600) == NULL ||
        X509_gmtime_adj(X509_getm_notAfter(x), (long)CA_DAYS * 86400) == NULL ||
        X509_set_pubkey(x, pub) != 1) {
        goto out;
    }
    if (add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") != 0 ||
        add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign,digitalSignature") != 0 ||
        add_ext(x, x, NID_subject_key_identifier, "hash") != 0 ||
        add_ext(x, x, NID_authority_key_identifier, "keyid:always") != 0) {
        goto out;
    }
    ret = x;
    x = NULL;
out:
    X509_free(x);
    X509_NAME_free(name);
    BN_free(bn);
    ASN1_INTEGER_free(serial);
    return ret;
}

/* Signs x with the HSM key behind d (CKM_ECDSA or CKM_RSA_PKCS on the TBS digest). */
static int sign_hsm(X509 *x, struct hsm_direct *d)
{
    const struct hsm_token_info *info = hsm_direct_info(d);
    enum hsm_alg alg = info->key_type == HSM_KEY_RSA ? HSM_ALG_RSA_PKCS1_SHA256
                       : info->key_bits == 384      ? HSM_ALG_ECDSA_SHA384
                                                    : HSM_ALG_ECDSA_SHA256;
    uint8_t digest[64], sig[HSM_SIG_MAX];
    PX_TRY(cc_x509_set_sigalg(x, alg));
    int dlen = cc_x509_tbs_digest(x, alg, digest);
    PX_TRY(dlen);
    unsigned long rv = 0;
    int slen = hsm_direct_sign(d, alg, digest, (size_t)dlen, sig, &rv);
    if (slen < 0) {
        px_log(PX_LOG_ERROR, "init", "HSM signature failed: %s", hsm_ckr_name(rv));
        return slen;
    }
    return cc_x509_set_signature(x, sig, (size_t)slen);
}

static int write_cert_pem(const char *path, X509 *x)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (b == NULL || PEM_write_bio_X509(b, x) != 1) {
        BIO_free(b);
        return PX_E_CRYPTO;
    }
    char *data;
    long len = BIO_get_mem_data(b, &data);
    char *s = strndup(data, (size_t)len);
    BIO_free(b);
    if (s == NULL) {
        return -ENOMEM;
    }
    int r = write_file(path, s, 0644);
    free(s);
    return r;
}

/* PEM (PKCS#8) of key appended to a memory BIO: private keys never touch the disk in clear. */
static int key_pem(BIO *mem, EVP_PKEY *key)
{
    return PEM_write_bio_PrivateKey(mem, key, NULL, NULL, 0, NULL, NULL) == 1 ? 0 : PX_E_CRYPTO;
}

/* The forward-untrust CA: certificate to DIR/ca, key PEM into mem (sealed later). */
static int make_untrust_ca(const char *dir, BIO *mem)
{
    char path[PATH_MAX];
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = NULL;
    int ret = PX_E_CRYPTO;
    if (key == NULL) {
        goto out;
    }
    x = ca_skeleton(key, "tlsmint forward-untrust CA (do not trust)");
    if (x == NULL || X509_sign(x, key, EVP_sha256()) <= 0) {
        goto out;
    }
    snprintf(path, sizeof(path), "%s/ca/forward-untrust.pem", dir);
    if ((ret = write_cert_pem(path, x)) != 0) {
        goto out;
    }
    ret = key_pem(mem, key);
out:
    X509_free(x);
    EVP_PKEY_free(key);
    return ret;
}

/* The leaf-key pool: EC P-256 keys for clients with ECDSA, RSA-2048 for the others. */
static int make_leaf_pool(BIO *mem)
{
    for (int i = 0; i < 8 + 2; i++) {
        EVP_PKEY *k = i < 8 ? EVP_EC_gen("P-256") : EVP_RSA_gen(2048);
        int r = k != NULL ? key_pem(mem, k) : PX_E_CRYPTO;
        EVP_PKEY_free(k);
        PX_TRY(r);
    }
    return 0;
}

static const char conf_template[] =
    "; tlsmint configuration, written by 'tlsmint init' on %s.\n"
    "; Relative paths are relative to the directory tlsmint is started from.\n"
    "\n"
    "[listen]\n"
    "explicit    = 127.0.0.1:3128     ; HTTP CONNECT proxy; empty = off\n"
    "transparent = 127.0.0.1:8443     ; REDIRECT/TPROXY target; empty = off\n"
    "threads     = 0                  ; 0 = one loop per core\n"
    "\n"
    "[hsm]\n"
    "module          = %s\n"
    "env             = SOFTHSM2_CONF=%s/hsm/softhsm2.conf  ; set in the signer before loading\n"
    "token           = tlsmint        ; token label (or token_serial = ...)\n"
    "pin_file        = %s/hsm/pin\n"
    "key_label       = forward-trust\n"
    "workers         = auto           ; PKCS#11 sessions signing at once: auto, or a fixed 1-64\n"
    "workers_min     = 2              ; auto: never fewer sessions than this\n"
    "workers_max     = 64             ; auto: never more (the HSM's session limit, if lower)\n"
    "batch           = 16             ; jobs per frame and per worker wake-up (1-64)\n"
    "sign_timeout_ms = 250            ; deadline of one signature\n"
    "hang_timeout_ms = 2000           ; a signer silent this long is killed and restarted\n"
    "queue_size      = 4096           ; signatures queued at most (then: queue full)\n"
    "fail_mode       = closed         ; closed | open\n"
    "recovery_retries = 0             ; 0-500, 0 = keep retrying\n"
    "recovery_backoff_max_ms = 1000   ; restart back-off doubles from 100 ms up to this\n"
    "; [hsm.NAME] sections add HA members holding the same key (module, token, pin_file,\n"
    "; key_label, env).\n"
    "\n"
    "[master_key]\n"
    "file          = %s/keys/master.wrapped ; wrapped by an AES-256 key inside the HSM\n"
    "lifetime_days = 365              ; 1-730\n"
    "reminder_days = 30               ; warn this long before the lifetime ends\n"
    "\n"
    "[ca]\n"
    "forward_trust_cert   = %s/ca/forward-trust.pem\n"
    "forward_untrust_cert = %s/ca/forward-untrust.pem\n"
    "forward_untrust_key  = %s/keys/forward-untrust.key.enc ; sealed with the master key\n"
    "leaf_max_days        = 30\n"
    "\n"
    "[cache]\n"
    "size      = 100000               ; leaf certificates kept\n"
    "ttl_s     = 86400\n"
    "leaf_pool = %s/keys/leaf-pool.enc ; leaf keys, sealed with the master key\n"
    "\n"
    "[upstream]\n"
    "ca_file = /etc/ssl/certs/ca-certificates.crt\n"
    "verify  = yes\n"
    "mark    = 0                      ; SO_MARK on upstream sockets (transparent loops)\n"
    "\n"
    "[policy]\n"
    "bypass  =                        ; host patterns passed through untouched\n"
    "\n"
    "[log]\n"
    "level   = info                   ; error | warn | info | debug\n"
    "access  =                        ; JSON line per connection: file path, empty = stdout\n"
    "audit   = %s/audit.log           ; key-management events, append only\n"
    "\n"
    "[admin]\n"
    "socket  = %s/run/tlsmint.sock\n"
    "metrics = 127.0.0.1:9120\n";

static int mkdir_p(const char *path, mode_t mode)
{
    if (mkdir(path, mode) != 0 && errno != EEXIST) {
        return -errno;
    }
    return 0;
}

int cli_init(int argc, char **argv)
{
    static const struct option opts[] = {{"dir", required_argument, NULL, 'd'},
                                         {"key-type", required_argument, NULL, 'k'},
                                         {"module", required_argument, NULL, 'm'},
                                         {"master-key-file", required_argument, NULL, 'K'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *dir_arg = "./var", *ktype = "ec-p256", *module = SOFTHSM_MODULE, *mkfile = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            dir_arg = optarg;
            break;
        case 'k':
            ktype = optarg;
            break;
        case 'm':
            module = optarg;
            break;
        case 'K':
            mkfile = optarg;
            break;
        case 'c':
            break; /* init writes the config; -c is accepted for uniformity */
        case 'h':
            return cli_usage(init_usage, 0);
        default:
            return cli_usage(init_usage, 2);
        }
    }
    enum hsm_keygen kind;
    if (strcmp(ktype, "ec-p256") == 0) {
        kind = HSM_KEYGEN_EC_P256;
    } else if (strcmp(ktype, "rsa-2048") == 0) {
        kind = HSM_KEYGEN_RSA_2048;
    } else if (strcmp(ktype, "rsa-3072") == 0) {
        kind = HSM_KEYGEN_RSA_3072;
    } else if (strcmp(ktype, "ec-p384") == 0) {
        kind = HSM_KEYGEN_EC_P384;
    } else {
        fprintf(stderr, "tlsmint init: unknown --key-type '%s' (ec-p256, rsa-2048, rsa-3072)\n",
                ktype);
        return 2;
    }
    if (mkdir_p(dir_arg, 0755) != 0) {
        fprintf(stderr, "tlsmint init: cannot create %s: %s\n", dir_arg, strerror(errno));
        return 1;
    }
    char dir[PATH_MAX];
    if (realpath(dir_arg, dir) == NULL) {
        fprintf(stderr, "tlsmint init: %s: %s\n", dir_arg, strerror(errno));
        return 1;
    }
    static const char *state[] = {"tlsmint.conf", "hsm", "ca", "keys", "keys.1"};
    for (size_t i = 0; i < sizeof(state) / sizeof(state[0]); i++) {
        char p[PATH_MAX + 32];
        snprintf(p, sizeof(p), "%s/%s", dir, state[i]);
        if (access(p, F_OK) == 0) {
            fprintf(stderr,
                    "tlsmint init: %s already exists: refusing to overwrite existing state "
                    "(move it away or choose another --dir)\n",
                    p);
            return 1;
        }
    }
    char perr[300];
    if (cli_priv_become_owner(dir, perr, sizeof(perr)) < 0) {
        fprintf(stderr, "tlsmint init: %s\n", perr);
        return 1;
    }
    char p[PATH_MAX + 64], pin[33] = "", so_pin[33] = "";
    int ret = 1;
    uint8_t pub[HSM_PUB_MAX];
    char err[512];
    EVP_PKEY *pkey = NULL;
    X509 *ca = NULL;
    struct hsm_direct *d = NULL;
    char *conf = NULL;
    BIO *untrust_mem = NULL, *pool_mem = NULL;

    const char *subdirs[] = {"hsm", "hsm/tokens", "ca", "run"};
    for (size_t i = 0; i < 4; i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, subdirs[i]);
        if (mkdir_p(p, strncmp(subdirs[i], "hsm", 3) == 0 ? 0700 : 0755) != 0) {
            fprintf(stderr, "tlsmint init: cannot create %s: %s\n", p, strerror(errno));
            goto out;
        }
    }
    snprintf(p, sizeof(p), "%s/hsm/softhsm2.conf", dir);
    char hsmconf[PATH_MAX + 128];
    snprintf(hsmconf, sizeof(hsmconf),
             "# SoftHSM store private to this tlsmint instance\n"
             "directories.tokendir = %s/hsm/tokens\nobjectstore.backend = file\n"
             "log.level = ERROR\nslots.removable = false\n",
             dir);
    if (write_file(p, hsmconf, 0600) != 0) {
        fprintf(stderr, "tlsmint init: cannot write %s\n", p);
        goto out;
    }
    setenv("SOFTHSM2_CONF", p, 1);

    if (random_pin(pin, 16) != 0 || random_pin(so_pin, 16) != 0) {
        fprintf(stderr, "tlsmint init: no randomness for PINs\n");
        goto out;
    }
    snprintf(p, sizeof(p), "%s/hsm/pin", dir);
    if (write_secret_file(p, pin) != 0) {
        fprintf(stderr, "tlsmint init: cannot write %s\n", p);
        goto out;
    }
    snprintf(p, sizeof(p), "%s/hsm/so-pin", dir);
    if (write_secret_file(p, so_pin) != 0) {
        fprintf(stderr, "tlsmint init: cannot write %s\n", p);
        goto out;
    }

    int publen = hsm_mgmt_create_token_and_key(module, "tlsmint", so_pin, pin, "forward-trust",
                                               kind, pub, err, sizeof(err));
    if (publen < 0) {
        fprintf(stderr, "tlsmint init: %s\n", err);
        goto out;
    }
    const unsigned char *pp = pub;
    pkey = d2i_PUBKEY(NULL, &pp, publen);
    if (pkey == NULL) {
        fprintf(stderr, "tlsmint init: the token's public key does not parse\n");
        goto out;
    }

    struct px_hsm_member_cfg m;
    memset(&m, 0, sizeof(m));
    snprintf(m.name, sizeof(m.name), "hsm");
    snprintf(m.module, sizeof(m.module), "%s", module);
    snprintf(m.token, sizeof(m.token), "tlsmint");
    snprintf(m.pin_file, sizeof(m.pin_file), "%s/hsm/pin", dir);
    snprintf(m.key_label, sizeof(m.key_label), "forward-trust");
    d = hsm_direct_open(&m, err, sizeof(err));
    if (d == NULL) {
        fprintf(stderr, "tlsmint init: %s\n", err);
        goto out;
    }
    ca = ca_skeleton(pkey, "tlsmint forward-trust CA");
    if (ca == NULL || sign_hsm(ca, d) != 0) {
        px_log_ossl_errors("init");
        fprintf(stderr, "tlsmint init: could not make the forward-trust CA certificate\n");
        goto out;
    }
    if (X509_verify(ca, pkey) != 1) {
        fprintf(stderr, "tlsmint init: the HSM's signature on the CA does not verify\n");
        goto out;
    }
    snprintf(p, sizeof(p), "%s/ca/forward-trust.pem", dir);
    if (write_cert_pem(p, ca) != 0) {
        fprintf(stderr, "tlsmint init: cannot write %s\n", p);
        goto out;
    }
    uint8_t mk[32];
    if (mkfile != NULL) {
        if (cli_mk_read_key_file(mkfile, mk, err, sizeof(err)) != 0) {
            fprintf(stderr, "tlsmint init: %s\n", err);
            goto out;
        }
    } else if (RAND_bytes(mk, sizeof(mk)) != 1) {
        fprintf(stderr, "tlsmint init: no randomness for the master key\n");
        goto out;
    }
    untrust_mem = BIO_new(BIO_s_secmem());
    pool_mem = BIO_new(BIO_s_secmem());
    if (untrust_mem == NULL || pool_mem == NULL || make_untrust_ca(dir, untrust_mem) != 0 ||
        make_leaf_pool(pool_mem) != 0) {
        px_log_ossl_errors("init");
        fprintf(stderr, "tlsmint init: could not make the forward-untrust CA or the leaf keys\n");
        px_wipe(mk, sizeof(mk));
        goto out;
    }
    char *up, *ppool;
    long ul = BIO_get_mem_data(untrust_mem, &up);
    long pl = BIO_get_mem_data(pool_mem, &ppool);
    int kr = cli_keys_create(dir, d, mk, (const uint8_t *)up, (size_t)ul, (const uint8_t *)ppool,
                             (size_t)pl, err, sizeof(err));
    px_wipe(mk, sizeof(mk));
    if (kr != 0) {
        fprintf(stderr, "tlsmint init: %s\n", err);
        goto out;
    }
    time_t now = time(NULL);
    char when[32];
    strftime(when, sizeof(when), "%Y-%m-%d", gmtime(&now));
    size_t cap = sizeof(conf_template) + 8 * PATH_MAX;
    conf = malloc(cap);
    if (conf == NULL) {
        goto out;
    }
    snprintf(conf, cap, conf_template, when, module, dir, dir, dir, dir, dir, dir, dir, dir, dir);
    snprintf(p, sizeof(p), "%s/tlsmint.conf", dir);
    if (write_file(p, conf, 0644) != 0) {
        fprintf(stderr, "tlsmint init: cannot write %s\n", p);
        goto out;
    }
    const struct hsm_token_info *info = hsm_direct_info(d);
    struct px_cfg acfg;
    memset(&acfg, 0, sizeof(acfg));
    snprintf(acfg.log_audit, sizeof(acfg.log_audit), "%s/audit.log", dir);
    cli_audit(&acfg, "init", "\"dir\":\"%s\",\"token_serial\":\"%s\",\"key\":\"%s\","
              "\"key_type\":\"%s-%d\",\"master_key\":\"%s\"",
              dir, hsm_direct_info(d)->serial, hsm_direct_info(d)->key_label,
              hsm_direct_info(d)->key_type == HSM_KEY_RSA ? "RSA" : "EC",
              hsm_direct_info(d)->key_bits, mkfile ? "from file" : "random");
    printf("tlsmint: initialised %s\n", dir);
    printf("  HSM token      'tlsmint' serial %s (%s), store %s/hsm\n", info->serial,
           info->module_desc, dir);
    printf("  forward-trust  key '%s' (%s-%d, generated in the token, not extractable)\n",
           info->key_label, info->key_type == HSM_KEY_RSA ? "RSA" : "EC", info->key_bits);
    printf("  CA certificate %s/ca/forward-trust.pem  <- clients must trust this\n", dir);
    printf("  untrust CA     %s/ca/forward-untrust.pem (key sealed in %s/keys)\n", dir, dir);
    printf("  master key     wrapped by HSM key 'tlsmint-wrap-1' in %s/keys/master.wrapped\n",
           dir);
    printf("  config         %s/tlsmint.conf\n", dir);
    ret = 0;
out:
    px_wipe(pin, sizeof(pin));
    px_wipe(so_pin, sizeof(so_pin));
    BIO_free(untrust_mem); /* secure heap: cleared on free */
    BIO_free(pool_mem);
    free(conf);
    hsm_direct_close(d);
    X509_free(ca);
    EVP_PKEY_free(pkey);
    return ret;
}
