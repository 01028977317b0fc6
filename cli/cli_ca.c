/* SPDX-License-Identifier: MIT */
/*
 * cli_ca.c - the enterprise forward-trust CA: `tlsmint ca csr` (a PKCS#10 request for the key
 * inside the HSM, signed through the HSM), `tlsmint ca import` (installs a CA certificate
 * issued for that key, or for the forward-untrust key, after checking it is a CA and that its
 * key is ours) and `tlsmint ca list` (every CA, its role, subject, expiry and where its key is).
 * Management commands: the module is loaded in this process. A running proxy takes an import on
 * `tlsmint ctl reload`.
 */
#include "cc.h"
#include "cli.h"

#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/pem.h>
#include <openssl/x509v3.h>

static const char ca_usage[] =
    "usage: tlsmint [-c CONFIG] ca csr --out FILE [--subject DN]\n"
    "       tlsmint [-c CONFIG] ca import --cert CERT [--chain CHAIN]\n"
    "       tlsmint [-c CONFIG] ca list\n"
    "\n"
    "  csr     PKCS#10 request for the forward-trust key held in the HSM, signed by it;\n"
    "          DN like '/O=Example/CN=Example forward-trust CA' (default: the current CA's)\n"
    "  import  installs a CA certificate issued by your organisation's root for the HSM key\n"
    "          (role forward-trust) or for the forward-untrust key; CHAIN (intermediates) is sent\n"
    "          to clients after each leaf. Applies on 'tlsmint ctl reload' or restart.\n"
    "  list    every CA certificate: role, subject, issuer, expiry, and where its key resides\n";

static X509 *read_cert(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return NULL;
    }
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    return x;
}

static EVP_PKEY *hsm_pubkey(struct hsm_direct *d)
{
    const struct hsm_token_info *ti = hsm_direct_info(d);
    const unsigned char *p = ti->pub_der;
    return ti->pub_len ? d2i_PUBKEY(NULL, &p, ti->pub_len) : NULL;
}

static int ca_csr(const struct px_cfg *cfg, const char *out, const char *subject)
{
    char err[600];
    struct hsm_direct *d = cli_hsm_open(cfg, err, sizeof(err));
    if (d == NULL) {
        fprintf(stderr, "tlsmint ca csr: %s\n", err);
        return 1;
    }
    int ret = 1;
    X509_REQ *req = X509_REQ_new();
    EVP_PKEY *pub = hsm_pubkey(d);
    X509_NAME *name = NULL;
    X509 *cur = read_cert(cfg->ca_forward_trust_cert);
    if (subject != NULL) {
        name = X509_NAME_new();
        char buf[512];
        snprintf(buf, sizeof(buf), "%s", subject);
        for (char *sp = NULL, *t = strtok_r(buf, "/", &sp); t && name; t = strtok_r(NULL, "/", &sp)) {
            char *eq = strchr(t, '=');
            if (eq == NULL) {
                continue;
            }
            *eq = 0;
            if (X509_NAME_add_entry_by_txt(name, t, MBSTRING_UTF8, (unsigned char *)eq + 1, -1, -1,
                                           0) != 1) {
                fprintf(stderr, "tlsmint ca csr: bad subject component '%s'\n", t);
                goto out;
            }
        }
    } else if (cur != NULL) {
        name = X509_NAME_dup(X509_get_subject_name(cur));
    }
    if (req == NULL || pub == NULL || name == NULL || X509_REQ_set_version(req, 0) != 1 ||
        X509_REQ_set_subject_name(req, name) != 1 || X509_REQ_set_pubkey(req, pub) != 1) {
        fprintf(stderr, "tlsmint ca csr: cannot build the request (no public key on the token?)\n");
        goto out;
    }
    /* basicConstraints CA:TRUE and keyUsage keyCertSign requested */
    STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
    X509_EXTENSION *bc = X509V3_EXT_conf_nid(NULL, NULL, NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
    X509_EXTENSION *ku = X509V3_EXT_conf_nid(NULL, NULL, NID_key_usage, "critical,keyCertSign,cRLSign,digitalSignature");
    sk_X509_EXTENSION_push(exts, bc);
    sk_X509_EXTENSION_push(exts, ku);
    X509_REQ_add_extensions(req, exts);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    const struct hsm_token_info *ti = hsm_direct_info(d);
    enum hsm_alg alg = ti->key_type == HSM_KEY_RSA ? HSM_ALG_RSA_PKCS1_SHA256
                       : ti->key_bits == 384      ? HSM_ALG_ECDSA_SHA384
                                                  : HSM_ALG_ECDSA_SHA256;
    int nid = alg == HSM_ALG_RSA_PKCS1_SHA256 ? NID_sha256WithRSAEncryption
              : alg == HSM_ALG_ECDSA_SHA384    ? NID_ecdsa_with_SHA384
                                               : NID_ecdsa_with_SHA256;
    X509_ALGOR *a = X509_ALGOR_new();
    X509_ALGOR_set0(a, OBJ_nid2obj(nid), alg == HSM_ALG_RSA_PKCS1_SHA256 ? V_ASN1_NULL : V_ASN1_UNDEF,
                    NULL);
    X509_REQ_set1_signature_algo(req, a);
    X509_ALGOR_free(a);
    unsigned char *tbs = NULL;
    int tl = i2d_re_X509_REQ_tbs(req, &tbs);
    uint8_t dg[64], sig[HSM_SIG_MAX];
    unsigned int dl = 0;
    EVP_Digest(tbs, (size_t)tl, dg, &dl, alg == HSM_ALG_ECDSA_SHA384 ? EVP_sha384() : EVP_sha256(),
               NULL);
    OPENSSL_free(tbs);
    unsigned long rv = 0;
    int sl = hsm_direct_sign(d, alg, dg, dl, sig, &rv);
    if (sl < 0) {
        fprintf(stderr, "tlsmint ca csr: HSM signature failed: %s\n", hsm_ckr_name(rv));
        goto out;
    }
    ASN1_BIT_STRING *bs = ASN1_BIT_STRING_new();
    ASN1_BIT_STRING_set(bs, sig, sl);
    bs->flags &= ~(ASN1_STRING_FLAG_BITS_LEFT | 0x07);
    bs->flags |= ASN1_STRING_FLAG_BITS_LEFT;
    X509_REQ_set0_signature(req, bs);
    if (X509_REQ_verify(req, pub) != 1) {
        fprintf(stderr, "tlsmint ca csr: the request's signature does not verify\n");
        goto out;
    }
    FILE *f = fopen(out, "w");
    if (f == NULL || PEM_write_X509_REQ(f, req) != 1) {
        fprintf(stderr, "tlsmint ca csr: cannot write %s\n", out);
        if (f) {
            fclose(f);
        }
        goto out;
    }
    fclose(f);
    printf("certificate request for the HSM key '%s' (token '%s', serial %s) written to %s\n",
           ti->key_label, ti->label, ti->serial, out);
    cli_audit(cfg, "ca_csr", "\"file\":\"%s\"", out);
    ret = 0;
out:
    X509_REQ_free(req);
    EVP_PKEY_free(pub);
    X509_NAME_free(name);
    X509_free(cur);
    hsm_direct_close(d);
    return ret;
}

/* Adds or replaces `key = value` in [section] by appending an override (later keys win). */
static int config_set(const char *path, const char *section, const char *key, const char *value)
{
    FILE *f = fopen(path, "a");
    if (f == NULL) {
        return -1;
    }
    fprintf(f, "\n; set by tlsmint ca import\n[%s]\n%s = %s\n", section, key, value);
    return fclose(f);
}

static int ca_import(const struct px_cfg *cfg, const char *certp, const char *chainp)
{
    char err[600];
    X509 *x = read_cert(certp);
    if (x == NULL) {
        fprintf(stderr, "tlsmint ca import: %s is not a PEM certificate\n", certp);
        return 1;
    }
    int ret = 1;
    struct hsm_direct *d = NULL;
    EVP_PKEY *hpub = NULL;
    if (X509_check_ca(x) != 1 || !(X509_get_key_usage(x) & KU_KEY_CERT_SIGN)) {
        fprintf(stderr, "tlsmint ca import: %s is not a CA certificate (needs basicConstraints "
                        "CA:TRUE and keyUsage keyCertSign)\n", certp);
        goto out;
    }
    if (X509_cmp_current_time(X509_get0_notAfter(x)) <= 0) {
        fprintf(stderr, "tlsmint ca import: %s has expired\n", certp);
        goto out;
    }
    d = cli_hsm_open(cfg, err, sizeof(err));
    if (d == NULL) {
        fprintf(stderr, "tlsmint ca import: %s\n", err);
        goto out;
    }
    hpub = hsm_pubkey(d);
    const char *role = NULL, *dest = NULL;
    if (hpub != NULL && EVP_PKEY_eq(hpub, X509_get0_pubkey(x)) == 1) {
        role = "forward-trust";
        dest = cfg->ca_forward_trust_cert;
    } else {
        X509 *u = read_cert(cfg->ca_forward_untrust_cert);
        if (u != NULL && EVP_PKEY_eq(X509_get0_pubkey(u), X509_get0_pubkey(x)) == 1) {
            role = "forward-untrust";
            dest = cfg->ca_forward_untrust_cert;
        }
        X509_free(u);
    }
    if (role == NULL) {
        fprintf(stderr, "tlsmint ca import: the key of %s is neither the HSM's forward-trust key "
                        "nor the forward-untrust key: refused\n", certp);
        goto out;
    }
    if (chainp != NULL) {
        char chain_dest[PATH_MAX];
        snprintf(chain_dest, sizeof(chain_dest), "%s", dest);
        char *dot = strrchr(chain_dest, '.');
        snprintf(dot ? dot : chain_dest + strlen(chain_dest), 32, "-chain.pem");
        uint8_t *cd = NULL;
        size_t cl = 0;
        if (px_read_file(chainp, 1 << 20, &cd, &cl) != 0 ||
            px_write_atomic(chain_dest, cd, cl, 0644) != 0) {
            fprintf(stderr, "tlsmint ca import: cannot install the chain %s\n", chainp);
            free(cd);
            goto out;
        }
        free(cd);
        if (strcmp(role, "forward-trust") == 0 &&
            strcmp(cfg->ca_forward_trust_chain, chain_dest) != 0 &&
            config_set(cfg->path, "ca", "forward_trust_chain", chain_dest) != 0) {
            fprintf(stderr, "tlsmint ca import: cannot update %s\n", cfg->path);
            goto out;
        }
    }
    uint8_t *data = NULL;
    size_t len = 0;
    if (px_read_file(certp, 1 << 20, &data, &len) != 0 ||
        px_write_atomic(dest, data, len, 0644) != 0) {
        free(data);
        fprintf(stderr, "tlsmint ca import: cannot install %s\n", dest);
        goto out;
    }
    free(data);
    char subj[256], iss[256];
    X509_NAME_oneline(X509_get_subject_name(x), subj, sizeof(subj));
    X509_NAME_oneline(X509_get_issuer_name(x), iss, sizeof(iss));
    printf("imported %s CA %s (issued by %s) into %s; key resides %s. Apply with 'tlsmint ctl "
           "reload'.\n",
           role, subj, iss, dest,
           strcmp(role, "forward-trust") == 0 ? "on the HSM" : "locally, sealed with the master key");
    cli_audit(cfg, "ca_import", "\"role\":\"%s\",\"subject\":\"%s\",\"issuer\":\"%s\"", role, subj,
              iss);
    ret = 0;
out:
    EVP_PKEY_free(hpub);
    hsm_direct_close(d);
    X509_free(x);
    return ret;
}

static void list_one(const char *role, const char *path, const char *where)
{
    X509 *x = read_cert(path);
    if (x == NULL) {
        printf("%-16s %s: cannot read\n", role, path);
        return;
    }
    char subj[256], iss[256], na[64];
    X509_NAME_oneline(X509_get_subject_name(x), subj, sizeof(subj));
    X509_NAME_oneline(X509_get_issuer_name(x), iss, sizeof(iss));
    BIO *b = BIO_new(BIO_s_mem());
    ASN1_TIME_print(b, X509_get0_notAfter(x));
    int n = BIO_read(b, na, sizeof(na) - 1);
    na[n > 0 ? n : 0] = 0;
    BIO_free(b);
    printf("%s\n  subject   %s\n  issuer    %s%s\n  expires   %s%s\n  key       %s\n  file      %s\n",
           role, subj, iss, X509_check_issued(x, x) == X509_V_OK ? " (self-signed)" : "", na,
           X509_cmp_current_time(X509_get0_notAfter(x)) <= 0 ? " (EXPIRED)" : "", where, path);
    X509_free(x);
}

static int ca_list(const struct px_cfg *cfg)
{
    char err[600], where[800];
    struct hsm_direct *d = cli_hsm_open(cfg, err, sizeof(err));
    if (d != NULL) {
        const struct hsm_token_info *ti = hsm_direct_info(d);
        X509 *x = read_cert(cfg->ca_forward_trust_cert);
        EVP_PKEY *hp = hsm_pubkey(d);
        bool eq = x != NULL && hp != NULL && EVP_PKEY_eq(hp, X509_get0_pubkey(x)) == 1;
        snprintf(where, sizeof(where), "on the HSM and reachable: token '%s' serial %s, key '%s'%s",
                 ti->label, ti->serial, ti->key_label, eq ? " (matches)" : " (DOES NOT MATCH)");
        EVP_PKEY_free(hp);
        X509_free(x);
        hsm_direct_close(d);
    } else {
        snprintf(where, sizeof(where), "on the HSM, NOT reachable now: %s", err);
    }
    list_one("forward-trust", cfg->ca_forward_trust_cert, where);
    if (cfg->ca_forward_trust_chain[0]) {
        printf("  chain     %s\n", cfg->ca_forward_trust_chain);
    }
    if (cfg->ca_forward_untrust_cert[0]) {
        uint8_t *k = NULL;
        size_t kl = 0;
        bool sealed = px_read_file(cfg->ca_forward_untrust_key, 1 << 20, &k, &kl) == 0 && kl >= 4 &&
                      memcmp(k, "TMS1", 4) == 0;
        free(k);
        snprintf(where, sizeof(where), "local, %s (%s)",
                 sealed ? "sealed with the master key" : "NOT SEALED", cfg->ca_forward_untrust_key);
        list_one("forward-untrust", cfg->ca_forward_untrust_cert, where);
    }
    return 0;
}

int cli_ca(int argc, char **argv)
{
    static const struct option opts[] = {{"out", required_argument, NULL, 'o'},
                                         {"subject", required_argument, NULL, 's'},
                                         {"cert", required_argument, NULL, 'C'},
                                         {"chain", required_argument, NULL, 'K'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *conf = "./var/tlsmint.conf", *out = NULL, *subject = NULL, *cert = NULL,
               *chain = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            conf = optarg;
            break;
        case 'o':
            out = optarg;
            break;
        case 's':
            subject = optarg;
            break;
        case 'C':
            cert = optarg;
            break;
        case 'K':
            chain = optarg;
            break;
        case 'h':
            return cli_usage(ca_usage, 0);
        default:
            return cli_usage(ca_usage, 2);
        }
    }
    if (optind + 1 != argc) {
        return cli_usage(ca_usage, 2);
    }
    static struct px_cfg cfg;
    if (cli_load_config(conf, &cfg) != 0) {
        return 1;
    }
    const char *sub = argv[optind];
    if (strcmp(sub, "csr") == 0 && out != NULL) {
        return ca_csr(&cfg, out, subject);
    }
    if (strcmp(sub, "import") == 0 && cert != NULL) {
        return ca_import(&cfg, cert, chain);
    }
    if (strcmp(sub, "list") == 0) {
        return ca_list(&cfg);
    }
    return cli_usage(ca_usage, 2);
}
