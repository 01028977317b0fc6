/* SPDX-License-Identifier: MIT */
/*
 * cli_inbound.c - keys and certificates of the inbound listeners ([inbound.NAME], our own
 * servers whose private keys live in the HSM): `tlsmint inbound keygen` (a key pair made inside
 * the [hsm] token, sensitive and never extractable), `inbound csr` (a PKCS#10 request for it,
 * signed through the HSM) and `inbound list` (each listener's certificate, names, expiry, and
 * whether its key is in the HSM and matches the certificate).
 * Management commands: the module is loaded in this process (never in the proxy, whose keys are
 * reached only through its signers). Called from the main thread only.
 * Invariants: no private key byte ever exists outside the token; nothing here writes a key.
 * Not here: serving the listeners (dataplane/dp_inbound.c), the start-time check of the running
 * proxy (it asks its signers).
 */
#include "cli.h"

#include <arpa/inet.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

static const char inbound_usage[] =
    "usage: tlsmint [-c CONFIG] inbound keygen --label L [--key-type ec-p256|ec-p384|rsa-2048|rsa-3072]\n"
    "       tlsmint [-c CONFIG] inbound csr --label L --subject DN [--san DNS:a,DNS:b,IP:1.2.3.4] --out F\n"
    "       tlsmint [-c CONFIG] inbound list\n"
    "\n"
    "  keygen  makes a server key pair inside the [hsm] token (sensitive, never extractable);\n"
    "          name it in [inbound.NAME] key_label\n"
    "  csr     PKCS#10 request for that key, signed by it through the HSM; DN like\n"
    "          '/O=Example/CN=www.example.com'; --san defaults to DNS:<the CN>\n"
    "  list    each [inbound.NAME]: certificate subject, names, expiry, the key's label, and\n"
    "          whether the key is in the HSM and matches the certificate (exit 1 if one does not)\n";

/* The [hsm] member, looking for the key label (or id) instead of the forward-trust key. */
static struct hsm_direct *open_key(const struct px_cfg *cfg, const char *label, const char *id,
                                   char *err, size_t errlen)
{
    if (cfg->n_members == 0) {
        snprintf(err, errlen, "%s: no [hsm] section", cfg->path);
        return NULL;
    }
    struct px_hsm_member_cfg m = cfg->members[0];
    snprintf(m.key_label, sizeof(m.key_label), "%s", label != NULL ? label : "");
    snprintf(m.key_id, sizeof(m.key_id), "%s", id != NULL ? id : "");
    if (cli_priv_drop_child(cfg, err, errlen) != 0) {
        return NULL;
    }
    if (hsm_member_setenv(&m) != 0) {
        snprintf(err, errlen, "[%s] env: cannot set", m.name);
        return NULL;
    }
    return hsm_direct_open(&m, err, errlen);
}

static EVP_PKEY *token_pubkey(const struct hsm_token_info *ti)
{
    const unsigned char *p = ti->pub_der;
    return ti->pub_len ? d2i_PUBKEY(NULL, &p, ti->pub_len) : NULL;
}

static void key_desc(const struct hsm_token_info *ti, char *out, size_t cap)
{
    snprintf(out, cap, "%s-%d", ti->key_type == HSM_KEY_RSA ? "RSA" : "EC", ti->key_bits);
}

static int inbound_keygen(const struct px_cfg *cfg, const char *label, const char *type)
{
    enum hsm_keygen kind;
    if (strcmp(type, "ec-p256") == 0) {
        kind = HSM_KEYGEN_EC_P256;
    } else if (strcmp(type, "ec-p384") == 0) {
        kind = HSM_KEYGEN_EC_P384;
    } else if (strcmp(type, "rsa-2048") == 0) {
        kind = HSM_KEYGEN_RSA_2048;
    } else if (strcmp(type, "rsa-3072") == 0) {
        kind = HSM_KEYGEN_RSA_3072;
    } else {
        fprintf(stderr, "tlsmint inbound keygen: unknown --key-type '%s' (ec-p256, ec-p384, "
                        "rsa-2048, rsa-3072)\n", type);
        return 2;
    }
    if (label[0] == '\0' || strlen(label) >= 64) {
        fprintf(stderr, "tlsmint inbound keygen: --label must be 1-63 characters\n");
        return 2;
    }
    if (cfg->n_members == 0) {
        fprintf(stderr, "tlsmint inbound keygen: %s: no [hsm] section\n", cfg->path);
        return 1;
    }
    char err[600];
    struct px_hsm_member_cfg m = cfg->members[0];
    if (cli_priv_drop_child(cfg, err, sizeof(err)) != 0 || hsm_member_setenv(&m) != 0) {
        fprintf(stderr, "tlsmint inbound keygen: %s\n", err);
        return 1;
    }
    uint8_t id[8], pub[HSM_PUB_MAX];
    if (RAND_bytes(id, sizeof(id)) != 1) {
        fprintf(stderr, "tlsmint inbound keygen: no random bytes for the key id\n");
        return 1;
    }
    int pl = hsm_mgmt_keygen(&m, label, kind, id, sizeof(id), pub, err, sizeof(err));
    if (pl < 0) {
        fprintf(stderr, "tlsmint inbound keygen: %s\n", err);
        return 1;
    }
    uint8_t fp[32];
    unsigned int fl = 0;
    EVP_Digest(pub, (size_t)pl, fp, &fl, EVP_sha256(), NULL);
    char idhex[17], fphex[65];
    for (size_t i = 0; i < sizeof(id); i++) {
        snprintf(idhex + 2 * i, 3, "%02x", id[i]);
    }
    for (unsigned int i = 0; i < fl; i++) {
        snprintf(fphex + 2 * i, 3, "%02x", fp[i]);
    }
    printf("generated %s key '%s' (key_id %s) inside token '%s': sensitive, never extractable\n"
           "public key SHA-256 %s\n"
           "next: tlsmint inbound csr --label %s --subject /CN=NAME --out NAME.csr\n",
           type, label, idhex, m.token[0] ? m.token : m.token_serial, fphex, label);
    cli_audit(cfg, "inbound_keygen", "\"label\":\"%s\",\"key_type\":\"%s\",\"key_id\":\"%s\"",
              label, type, idhex);
    return 0;
}

/* "/O=Example/CN=www.example.com" into a new X509_NAME; NULL and a message on a bad part. */
static X509_NAME *parse_dn(const char *dn)
{
    X509_NAME *name = X509_NAME_new();
    char buf[512];
    snprintf(buf, sizeof(buf), "%s", dn);
    int parts = 0;
    for (char *sp = NULL, *t = strtok_r(buf, "/", &sp); t != NULL && name != NULL;
         t = strtok_r(NULL, "/", &sp)) {
        char *eq = strchr(t, '=');
        if (eq == NULL || eq == t || eq[1] == '\0') {
            fprintf(stderr, "tlsmint inbound csr: '%s' in --subject is not KEY=VALUE\n", t);
            X509_NAME_free(name);
            return NULL;
        }
        *eq = '\0';
        if (X509_NAME_add_entry_by_txt(name, t, MBSTRING_UTF8, (unsigned char *)eq + 1, -1, -1,
                                       0) != 1) {
            fprintf(stderr, "tlsmint inbound csr: unknown attribute '%s' in --subject\n", t);
            X509_NAME_free(name);
            return NULL;
        }
        parts++;
    }
    if (name != NULL && parts == 0) {
        fprintf(stderr, "tlsmint inbound csr: --subject is empty (e.g. /CN=www.example.com)\n");
        X509_NAME_free(name);
        return NULL;
    }
    return name;
}

/* DNS:a,DNS:b,IP:10.0.0.1 (a bare name counts as DNS:) into the value of subjectAltName. */
static int san_value(const char *san, char *out, size_t cap)
{
    size_t o = 0;
    char buf[1024];
    snprintf(buf, sizeof(buf), "%s", san);
    for (char *sp = NULL, *t = strtok_r(buf, ",", &sp); t != NULL; t = strtok_r(NULL, ",", &sp)) {
        while (*t == ' ') {
            t++;
        }
        if (*t == '\0') {
            continue;
        }
        bool typed = strncmp(t, "DNS:", 4) == 0 || strncmp(t, "IP:", 3) == 0;
        if (!typed && strchr(t, ':') != NULL) {
            fprintf(stderr, "tlsmint inbound csr: '%s' in --san is neither DNS:NAME nor IP:ADDR\n",
                    t);
            return -1;
        }
        int n = snprintf(out + o, cap - o, "%s%s%s", o ? "," : "", typed ? "" : "DNS:", t);
        if (n < 0 || (size_t)n >= cap - o) {
            fprintf(stderr, "tlsmint inbound csr: --san is too long\n");
            return -1;
        }
        o += (size_t)n;
    }
    if (o == 0) {
        fprintf(stderr, "tlsmint inbound csr: --san names nothing\n");
        return -1;
    }
    return 0;
}

static int add_ext(STACK_OF(X509_EXTENSION) *exts, int nid, const char *value)
{
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, NULL, nid, value);
    if (e == NULL) {
        return -1;
    }
    sk_X509_EXTENSION_push(exts, e);
    return 0;
}

static int inbound_csr(const struct px_cfg *cfg, const char *label, const char *subject,
                       const char *san, const char *out)
{
    X509_NAME *name = parse_dn(subject);
    if (name == NULL) {
        return 2;
    }
    char sanv[1200];
    if (san == NULL) {
        char cn[256];
        if (X509_NAME_get_text_by_NID(name, NID_commonName, cn, sizeof(cn)) <= 0) {
            fprintf(stderr, "tlsmint inbound csr: no CN in --subject: give --san\n");
            X509_NAME_free(name);
            return 2;
        }
        snprintf(sanv, sizeof(sanv), "DNS:%s", cn);
    } else if (san_value(san, sanv, sizeof(sanv)) != 0) {
        X509_NAME_free(name);
        return 2;
    }
    char err[600];
    struct hsm_direct *d = open_key(cfg, label, NULL, err, sizeof(err));
    if (d == NULL) {
        fprintf(stderr, "tlsmint inbound csr: %s\n", err);
        X509_NAME_free(name);
        return 1;
    }
    int ret = 1;
    const struct hsm_token_info *ti = hsm_direct_info(d);
    X509_REQ *req = X509_REQ_new();
    EVP_PKEY *pub = token_pubkey(ti);
    STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
    unsigned char *tbs = NULL;
    if (req == NULL || pub == NULL || exts == NULL || X509_REQ_set_version(req, 0) != 1 ||
        X509_REQ_set_subject_name(req, name) != 1 || X509_REQ_set_pubkey(req, pub) != 1) {
        fprintf(stderr, "tlsmint inbound csr: cannot build the request (no public key for '%s' "
                        "on the token?)\n", label);
        goto out;
    }
    /* a TLS server key: signatures only (no RSA key exchange is ever served) */
    if (add_ext(exts, NID_subject_alt_name, sanv) != 0) {
        fprintf(stderr, "tlsmint inbound csr: bad --san '%s'\n", sanv);
        goto out;
    }
    if (add_ext(exts, NID_key_usage, "critical,digitalSignature") != 0 ||
        add_ext(exts, NID_ext_key_usage, "serverAuth") != 0 ||
        X509_REQ_add_extensions(req, exts) != 1) {
        fprintf(stderr, "tlsmint inbound csr: cannot add the extensions\n");
        goto out;
    }
    enum hsm_alg alg = ti->key_type == HSM_KEY_RSA ? HSM_ALG_RSA_PKCS1_SHA256
                       : ti->key_bits == 384      ? HSM_ALG_ECDSA_SHA384
                                                  : HSM_ALG_ECDSA_SHA256;
    int nid = alg == HSM_ALG_RSA_PKCS1_SHA256 ? NID_sha256WithRSAEncryption
              : alg == HSM_ALG_ECDSA_SHA384    ? NID_ecdsa_with_SHA384
                                               : NID_ecdsa_with_SHA256;
    X509_ALGOR *a = X509_ALGOR_new();
    if (a == NULL) {
        goto out;
    }
    X509_ALGOR_set0(a, OBJ_nid2obj(nid),
                    alg == HSM_ALG_RSA_PKCS1_SHA256 ? V_ASN1_NULL : V_ASN1_UNDEF, NULL);
    X509_REQ_set1_signature_algo(req, a);
    X509_ALGOR_free(a);
    int tl = i2d_re_X509_REQ_tbs(req, &tbs);
    uint8_t dg[64], sig[HSM_SIG_MAX];
    unsigned int dl = 0;
    if (tl <= 0 || EVP_Digest(tbs, (size_t)tl, dg, &dl,
                              alg == HSM_ALG_ECDSA_SHA384 ? EVP_sha384() : EVP_sha256(),
                              NULL) != 1) {
        goto out;
    }
    unsigned long rv = 0;
    int sl = hsm_direct_sign(d, alg, dg, dl, sig, &rv);
    if (sl < 0) {
        fprintf(stderr, "tlsmint inbound csr: HSM signature with '%s' failed: %s\n", label,
                hsm_ckr_name(rv));
        goto out;
    }
    ASN1_BIT_STRING *bs = ASN1_BIT_STRING_new();
    if (bs == NULL || ASN1_BIT_STRING_set(bs, sig, sl) != 1) {
        ASN1_BIT_STRING_free(bs);
        goto out;
    }
    bs->flags &= ~(ASN1_STRING_FLAG_BITS_LEFT | 0x07);
    bs->flags |= ASN1_STRING_FLAG_BITS_LEFT;
    X509_REQ_set0_signature(req, bs);
    if (X509_REQ_verify(req, pub) != 1) {
        fprintf(stderr, "tlsmint inbound csr: the request's signature does not verify\n");
        goto out;
    }
    FILE *f = fopen(out, "w");
    if (f == NULL || PEM_write_X509_REQ(f, req) != 1) {
        fprintf(stderr, "tlsmint inbound csr: cannot write %s\n", out);
        if (f != NULL) {
            fclose(f);
        }
        goto out;
    }
    if (fclose(f) != 0) {
        fprintf(stderr, "tlsmint inbound csr: cannot write %s\n", out);
        goto out;
    }
    char kd[32];
    key_desc(ti, kd, sizeof(kd));
    printf("certificate request for the HSM key '%s' (%s, token '%s', serial %s), names %s, "
           "written to %s\n", label, kd, ti->label, ti->serial, sanv, out);
    cli_audit(cfg, "inbound_csr", "\"label\":\"%s\",\"file\":\"%s\"", label, out);
    ret = 0;
out:
    OPENSSL_free(tbs);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_REQ_free(req);
    EVP_PKEY_free(pub);
    X509_NAME_free(name);
    hsm_direct_close(d);
    ERR_clear_error();
    return ret;
}

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

/* The certificate's subjectAltName entries as "DNS:a, IP:b" (or "none"). */
static void san_list(X509 *x, char *out, size_t cap)
{
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    size_t o = 0;
    out[0] = '\0';
    for (int i = 0; gens != NULL && i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        char one[300] = "";
        if (g->type == GEN_DNS) {
            snprintf(one, sizeof(one), "DNS:%.*s", ASN1_STRING_length(g->d.dNSName),
                     (const char *)ASN1_STRING_get0_data(g->d.dNSName));
        } else if (g->type == GEN_IPADD) {
            char ip[INET6_ADDRSTRLEN] = "?";
            int len = ASN1_STRING_length(g->d.iPAddress);
            if (len == 4 || len == 16) {
                inet_ntop(len == 4 ? AF_INET : AF_INET6, ASN1_STRING_get0_data(g->d.iPAddress),
                          ip, sizeof(ip));
            }
            snprintf(one, sizeof(one), "IP:%s", ip);
        } else {
            continue;
        }
        int n = snprintf(out + o, cap - o, "%s%s", o ? ", " : "", one);
        if (n < 0 || (size_t)n >= cap - o) {
            break;
        }
        o += (size_t)n;
    }
    GENERAL_NAMES_free(gens);
    if (o == 0) {
        snprintf(out, cap, "none");
    }
}

/*
 * One listener: prints its certificate and key state. Returns 0 (the lock icon: key in the HSM,
 * matching the certificate), 1 (the error icon: missing or mismatched key, unreadable
 * certificate). An expired certificate is reported as a warning and does not change the result.
 */
static int list_one(const struct px_cfg *cfg, const struct px_inbound_cfg *ib)
{
    char err[600];
    const char *klabel = ib->key_label[0] ? ib->key_label : ib->key_id;
    printf("%s\n  listen    %s -> %s (%s)\n", ib->name, ib->listen, ib->backend,
           ib->backend_tls ? "TLS" : "plain TCP");
    X509 *x = read_cert(ib->cert);
    const char *problem = NULL;
    char why[700] = "";
    bool expired = false;
    if (x == NULL) {
        snprintf(why, sizeof(why), "cannot read the certificate %s (PEM)", ib->cert);
        problem = why;
        printf("  cert      %s: cannot read\n", ib->cert);
    } else {
        char subj[256], names[1024], na[64];
        X509_NAME_oneline(X509_get_subject_name(x), subj, sizeof(subj));
        san_list(x, names, sizeof(names));
        BIO *b = BIO_new(BIO_s_mem());
        ASN1_TIME_print(b, X509_get0_notAfter(x));
        int n = BIO_read(b, na, sizeof(na) - 1);
        na[n > 0 ? n : 0] = '\0';
        BIO_free(b);
        int days = 0, secs = 0;
        ASN1_TIME_diff(&days, &secs, NULL, X509_get0_notAfter(x));
        expired = X509_cmp_current_time(X509_get0_notAfter(x)) <= 0;
        printf("  subject   %s\n  names     %s\n  expires   %s (%s%d days)\n  cert      %s\n",
               subj, names, na, expired ? "EXPIRED " : "", days, ib->cert);
    }
    struct hsm_direct *d = open_key(cfg, ib->key_label[0] ? ib->key_label : NULL,
                                    ib->key_label[0] ? NULL : ib->key_id, err, sizeof(err));
    if (d == NULL) {
        printf("  key       '%s': NOT in the HSM (%s)\n", klabel, err);
        if (problem == NULL) {
            snprintf(why, sizeof(why), "key '%s' not in the HSM: %s", klabel, err);
            problem = why;
        }
    } else {
        const struct hsm_token_info *ti = hsm_direct_info(d);
        EVP_PKEY *hp = token_pubkey(ti);
        bool match = x != NULL && hp != NULL && EVP_PKEY_eq(hp, X509_get0_pubkey(x)) == 1;
        char kd[32];
        key_desc(ti, kd, sizeof(kd));
        printf("  key       '%s' in the HSM (token '%s', serial %s), %s, %s\n", klabel, ti->label,
               ti->serial, kd,
               x == NULL ? "no certificate to compare"
               : match   ? "matches the certificate"
                         : "DOES NOT MATCH the certificate");
        if (x != NULL && !match && problem == NULL) {
            snprintf(why, sizeof(why), "the certificate's public key is not the HSM key '%s'",
                     klabel);
            problem = why;
        }
        EVP_PKEY_free(hp);
        hsm_direct_close(d);
    }
    X509_free(x);
    ERR_clear_error();
    if (problem != NULL) {
        printf("  status    error: %s\n", problem);
        return 1;
    }
    printf("  status    %s\n", expired ? "warning: the certificate has expired" : "ok");
    return 0;
}

static int inbound_list(const struct px_cfg *cfg)
{
    if (cfg->n_inbound == 0) {
        printf("no [inbound.NAME] listener in %s\n", cfg->path);
        return 0;
    }
    int bad = 0;
    for (int i = 0; i < cfg->n_inbound; i++) {
        bad += list_one(cfg, &cfg->inbound[i]);
    }
    return bad > 0 ? 1 : 0;
}

int cli_inbound(int argc, char **argv)
{
    static const struct option opts[] = {{"label", required_argument, NULL, 'l'},
                                         {"key-type", required_argument, NULL, 'k'},
                                         {"subject", required_argument, NULL, 's'},
                                         {"san", required_argument, NULL, 'S'},
                                         {"out", required_argument, NULL, 'o'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *conf = "./var/tlsmint.conf", *label = NULL, *type = "ec-p256", *subject = NULL,
               *san = NULL, *out = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            conf = optarg;
            break;
        case 'l':
            label = optarg;
            break;
        case 'k':
            type = optarg;
            break;
        case 's':
            subject = optarg;
            break;
        case 'S':
            san = optarg;
            break;
        case 'o':
            out = optarg;
            break;
        case 'h':
            return cli_usage(inbound_usage, 0);
        default:
            return cli_usage(inbound_usage, 2);
        }
    }
    if (optind + 1 != argc) {
        return cli_usage(inbound_usage, 2);
    }
    const char *sub = argv[optind];
    bool keygen = strcmp(sub, "keygen") == 0, csr = strcmp(sub, "csr") == 0,
         list = strcmp(sub, "list") == 0;
    if ((keygen && label == NULL) || (csr && (label == NULL || subject == NULL || out == NULL)) ||
        (!keygen && !csr && !list)) {
        return cli_usage(inbound_usage, 2);
    }
    static struct px_cfg cfg;
    if (cli_load_config(conf, &cfg) != 0) {
        return 1;
    }
    if (keygen) {
        return inbound_keygen(&cfg, label, type);
    }
    if (csr) {
        return inbound_csr(&cfg, label, subject, san, out);
    }
    return inbound_list(&cfg);
}
