/* SPDX-License-Identifier: MIT */
/*
 * test_certcache.c - certcache end to end against a real SoftHSM token made by `tlsmint init`:
 * minted leaves checked with OpenSSL (chain to the right CA, names, validity, extensions,
 * serials), odd upstream certificates, the forward-untrust path, single-flight under four
 * threads, failed mints, the bounded LRU, TTL expiry and the counters.
 * Upstream certificates are made here with the OpenSSL API, signed by a throwaway test root;
 * every date is computed from now.
 */
#include <arpa/inet.h>
#include <check.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "cc.h"
#include "hsm_fixture.h"

#define DAY 86400L

static struct fx fx_ec;

static void setup_token(void)
{
    fx_init(&fx_ec, "ec-p256");
}

static void teardown_token(void)
{
    fx_fini(&fx_ec);
}

/* ---- environment: config, pool, cache, one loop ---------------------------------------- */

struct env {
    struct px_cfg *cfg;
    struct hsm_pool *pool;
    struct cc_ctx *cc;
    struct cc_loop *l;
    X509 *trust_ca, *untrust_ca;
};

/* Configs must outlive the pool and the cache: static storage, a few per test. */
static struct px_cfg *load_cfg(const char *path)
{
    static struct px_cfg cfgs[4];
    static int next;
    struct px_cfg *c = &cfgs[next++ % 4];
    char err[600];
    int r = px_cfg_load(path, c, err, sizeof(err));
    ck_assert_msg(r == 0, "config: %s", err);
    return c;
}

static X509 *load_ca(const char *name)
{
    char path[400];
    snprintf(path, sizeof(path), "%s/state/ca/%s", fx_ec.dir, name);
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    ck_assert_msg(x != NULL, "%s is not a PEM certificate", path);
    return x;
}

/* Fixture config plus extra; with_pool starts the signer (else only the untrust CA can mint). */
static void env_open(struct env *v, const char *extra, bool with_pool)
{
    char path[400], err[600];
    memset(v, 0, sizeof(*v));
    v->cfg = load_cfg(fx_conf_with(&fx_ec, extra != NULL ? extra : "", path, sizeof(path)));
    if (with_pool) {
        v->pool = hsm_pool_new(v->cfg, fx_bin(), err, sizeof(err));
        ck_assert_msg(v->pool != NULL, "hsm_pool_new: %s", err);
    }
    v->cc = cc_new_mk(v->cfg, v->pool, fx_ec.mk, err, sizeof(err));
    ck_assert_msg(v->cc != NULL, "cc_new: %s", err);
    v->l = cc_loop_new(v->cc);
    ck_assert_ptr_nonnull(v->l);
    v->trust_ca = load_ca("forward-trust.pem");
    v->untrust_ca = load_ca("forward-untrust.pem");
}

/* The caller has dropped its entry references. Order: loop (all waits done), cache, pool. */
static void env_close(struct env *v)
{
    ck_assert_uint_eq(cc_loop_pending(v->l), 0);
    ck_assert_int_eq(cc_loop_free(v->l), 0);
    cc_free(v->cc);
    hsm_pool_free(v->pool);
    X509_free(v->trust_ca);
    X509_free(v->untrust_ca);
}

static struct cc_stats stats(const struct env *v)
{
    struct cc_stats s;
    cc_stats_get(v->cc, &s);
    return s;
}

static uint64_t hsm_ops(const struct env *v)
{
    struct hsm_member_stats st;
    hsm_pool_member_stats(v->pool, 0, &st);
    return st.ops;
}

/* ---- lookups ---------------------------------------------------------------------------- */

struct res {
    int calls;
    int status;
    struct cc_entry *e;
    uint64_t wait_ns;
};

static void on_res(void *user, int status, struct cc_entry *e, uint64_t wait_ns)
{
    struct res *r = user;
    if (r->calls++ == 0) {
        r->status = status;
        r->e = e;
        r->wait_ns = wait_ns;
    } else {
        cc_entry_unref(e); /* a second callback: the test fails on calls, without a leak */
    }
}

/* Polls the loops until every res has been called back or timeout_ms passes. */
static void pump(struct cc_loop *const *ls, int nl, const struct res *rs, int n, int timeout_ms)
{
    uint64_t end = px_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    for (;;) {
        int left = 0;
        for (int i = 0; i < n; i++) {
            left += rs[i].calls == 0;
        }
        if (left == 0 || px_now_ns() >= end) {
            return;
        }
        struct pollfd pfd[4];
        for (int i = 0; i < nl; i++) {
            pfd[i].fd = cc_loop_fd(ls[i]);
            pfd[i].events = POLLIN;
            pfd[i].revents = 0;
        }
        poll(pfd, (nfds_t)nl, 50);
        for (int i = 0; i < nl; i++) {
            cc_loop_poll(ls[i]);
        }
    }
}

static void pump1(struct cc_loop *l, const struct res *rs, int n, int timeout_ms)
{
    pump(&l, 1, rs, n, timeout_ms);
}

/* One lookup, waited for: a new reference to the leaf; *how says how cc_get answered. */
static struct cc_entry *get_leaf(struct env *v, X509 *up, bool verified, enum cc_key_kind kk,
                                 int *how)
{
    struct res r = {0};
    struct cc_entry *e = NULL;
    int rc = cc_get(v->l, up, verified, kk, on_res, &r, &e);
    ck_assert_msg(rc >= 0, "cc_get: %s", px_strerror(rc));
    if (rc == CC_PENDING) {
        ck_assert_ptr_null(e);
        pump1(v->l, &r, 1, 10000);
        ck_assert_int_eq(r.calls, 1);
        ck_assert_msg(r.status == 0, "mint failed: %s", px_strerror(r.status));
        ck_assert_ptr_nonnull(r.e);
        ck_assert_uint_gt(r.wait_ns, 0);
        e = r.e;
    } else {
        ck_assert(rc == CC_HIT || rc == CC_MINTED);
        ck_assert_ptr_nonnull(e);
    }
    cc_loop_poll(v->l);
    ck_assert_int_eq(r.calls, rc == CC_PENDING ? 1 : 0); /* exactly one result */
    if (how != NULL) {
        *how = rc;
    }
    return e;
}

/* ---- upstream certificates -------------------------------------------------------------- */

struct upspec {
    const char *cn;         /* NULL: no CN (written as a raw UTF8String: no 64-character bound) */
    const char *const *dns; /* SAN dNSName entries */
    int ndns;
    const char *const *ips; /* SAN iPAddress entries (text) */
    int nips;
    const char *email;   /* one SAN rfc822Name entry */
    long nb_off, na_off; /* validity, seconds from now */
    EVP_PKEY *key;       /* subject key; NULL: a shared P-256 key */
};

static struct upspec spec(const char *cn)
{
    struct upspec s;
    memset(&s, 0, sizeof(s));
    s.cn = cn;
    s.nb_off = -DAY;
    s.na_off = 365 * DAY;
    return s;
}

static EVP_PKEY *root_key, *shared_up_key;
static X509_NAME *root_name;

static void test_root(void)
{
    if (root_key != NULL) {
        return;
    }
    root_key = EVP_EC_gen("P-256");
    shared_up_key = EVP_EC_gen("P-256");
    root_name = X509_NAME_new();
    ck_assert(root_key != NULL && shared_up_key != NULL && root_name != NULL);
    ck_assert_int_eq(X509_NAME_add_entry_by_txt(root_name, "CN", MBSTRING_ASC,
                                                (const unsigned char *)"throwaway upstream root",
                                                -1, -1, 0),
                     1);
}

static void push_name(GENERAL_NAMES *gens, int type, const char *text)
{
    GENERAL_NAME *g = GENERAL_NAME_new();
    ck_assert_ptr_nonnull(g);
    if (type == GEN_IPADD) {
        ASN1_OCTET_STRING *os = a2i_IPADDRESS(text);
        ck_assert_msg(os != NULL, "bad IP %s", text);
        GENERAL_NAME_set0_value(g, GEN_IPADD, os);
    } else {
        ASN1_IA5STRING *s = ASN1_IA5STRING_new();
        ck_assert_ptr_nonnull(s);
        ck_assert_int_eq(ASN1_STRING_set(s, text, -1), 1);
        GENERAL_NAME_set0_value(g, type, s);
    }
    ck_assert_int_gt(sk_GENERAL_NAME_push(gens, g), 0);
}

/* An upstream leaf as spec says, signed by the test root, returned parsed from its DER. */
static X509 *make_upstream(const struct upspec *s)
{
    test_root();
    X509 *x = X509_new();
    X509_NAME *subj = X509_NAME_new();
    BIGNUM *bn = BN_new();
    ck_assert(x != NULL && subj != NULL && bn != NULL);
    ck_assert_int_eq(X509_set_version(x, 2), 1);
    ck_assert_int_eq(BN_rand(bn, 64, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY), 1);
    ck_assert_ptr_nonnull(BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)));
    BN_free(bn);
    ck_assert_int_eq(X509_NAME_add_entry_by_txt(subj, "O", MBSTRING_ASC,
                                                (const unsigned char *)"upstream test", -1, -1, 0),
                     1);
    if (s->cn != NULL) {
        ck_assert_int_eq(X509_NAME_add_entry_by_NID(subj, NID_commonName, V_ASN1_UTF8STRING,
                                                    (const unsigned char *)s->cn, -1, -1, 0),
                         1);
    }
    ck_assert_int_eq(X509_set_subject_name(x, subj), 1);
    X509_NAME_free(subj);
    ck_assert_int_eq(X509_set_issuer_name(x, root_name), 1);
    time_t now = time(NULL);
    ck_assert_ptr_nonnull(ASN1_TIME_set(X509_getm_notBefore(x), now + s->nb_off));
    ck_assert_ptr_nonnull(ASN1_TIME_set(X509_getm_notAfter(x), now + s->na_off));
    ck_assert_int_eq(X509_set_pubkey(x, s->key != NULL ? s->key : shared_up_key), 1);
    if (s->ndns + s->nips > 0 || s->email != NULL) {
        GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
        ck_assert_ptr_nonnull(gens);
        for (int i = 0; i < s->ndns; i++) {
            push_name(gens, GEN_DNS, s->dns[i]);
        }
        for (int i = 0; i < s->nips; i++) {
            push_name(gens, GEN_IPADD, s->ips[i]);
        }
        if (s->email != NULL) {
            push_name(gens, GEN_EMAIL, s->email);
        }
        ck_assert_int_eq(X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, X509V3_ADD_DEFAULT),
                         1);
        GENERAL_NAMES_free(gens);
    }
    ck_assert_int_gt(X509_sign(x, root_key, EVP_sha256()), 0);
    unsigned char *der = NULL;
    int n = i2d_X509(x, &der);
    ck_assert_int_gt(n, 0);
    const unsigned char *p = der;
    X509 *y = d2i_X509(NULL, &p, n);
    OPENSSL_free(der);
    X509_free(x);
    ck_assert_ptr_nonnull(y);
    return y;
}

/* A DNS-only upstream: CN and one SAN entry, both name. */
static X509 *make_named(const char *name)
{
    const char *dns[] = {name};
    struct upspec s = spec(name);
    s.dns = dns;
    s.ndns = 1;
    return make_upstream(&s);
}

/* ---- checking a leaf -------------------------------------------------------------------- */

struct want {
    enum cc_ca_kind ca;
    enum cc_key_kind kk;
    time_t t0, t1;     /* time() before the lookup and after its result */
    int max_days;      /* [ca] leaf_max_days in force */
    bool std_validity; /* upstream valid now: notBefore = now - 1 h, notAfter = min(...) */
};

static struct want want_of(enum cc_ca_kind ca, enum cc_key_kind kk)
{
    struct want w;
    memset(&w, 0, sizeof(w));
    w.ca = ca;
    w.kk = kk;
    w.max_days = 30;
    w.std_validity = true;
    w.t0 = time(NULL);
    return w;
}

static time_t time_of(const ASN1_TIME *t)
{
    struct tm tm;
    ck_assert_int_eq(ASN1_TIME_to_tm(t, &tm), 1);
    return timegm(&tm);
}

/*
 * X509_verify_cert of leaf against a store holding only ca, strict RFC 5280 checks and the TLS
 * server purpose. Returns X509_V_OK or the verification error.
 */
static int verify_chain(X509 *leaf, X509 *ca, STACK_OF(X509) *chain, bool check_time)
{
    X509_STORE *st = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    ck_assert(st != NULL && ctx != NULL);
    ck_assert_int_eq(X509_STORE_add_cert(st, ca), 1);
    ck_assert_int_eq(X509_STORE_CTX_init(ctx, st, leaf, chain), 1);
    ck_assert_int_eq(X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_SERVER), 1);
    X509_STORE_CTX_set_flags(ctx, X509_V_FLAG_X509_STRICT |
                                      (check_time ? 0 : (unsigned long)X509_V_FLAG_NO_CHECK_TIME));
    int ok = X509_verify_cert(ctx);
    int err = X509_STORE_CTX_get_error(ctx);
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(st);
    ERR_clear_error();
    if (ok == 1) {
        return X509_V_OK;
    }
    return err == X509_V_OK ? -1 : err;
}

/* Present exactly once; criticality checked when want_crit >= 0. */
static void check_ext_once(X509 *x, int nid, int want_crit)
{
    int i = X509_get_ext_by_NID(x, nid, -1);
    ck_assert_msg(i >= 0, "extension %s missing", OBJ_nid2sn(nid));
    ck_assert_msg(X509_get_ext_by_NID(x, nid, i) < 0, "extension %s twice", OBJ_nid2sn(nid));
    if (want_crit >= 0) {
        ck_assert_msg(X509_EXTENSION_get_critical(X509_get_ext(x, i)) == want_crit,
                      "extension %s: critical should be %d", OBJ_nid2sn(nid), want_crit);
    }
}

static void check_serial(X509 *leaf)
{
    const ASN1_INTEGER *sn = X509_get0_serialNumber(leaf);
    ck_assert_int_eq(ASN1_STRING_type(sn), V_ASN1_INTEGER); /* not V_ASN1_NEG_INTEGER */
    BIGNUM *bn = ASN1_INTEGER_to_BN(sn, NULL);
    ck_assert_ptr_nonnull(bn);
    ck_assert(!BN_is_negative(bn) && !BN_is_zero(bn));
    ck_assert_int_eq(BN_num_bytes(bn), 16);
    BN_free(bn);
    /* DER INTEGER: tag, length, 16 content bytes (no 0x00 pad: the top bit is clear) */
    ck_assert_int_eq(i2d_ASN1_INTEGER(sn, NULL), 18);
}

static char *serial_hex(X509 *x)
{
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    ck_assert_ptr_nonnull(bn);
    char *h = BN_bn2hex(bn);
    BN_free(bn);
    ck_assert_ptr_nonnull(h);
    return h;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Frees the strings; fails if two are equal. */
static void check_unique(char **s, int n)
{
    qsort(s, (size_t)n, sizeof(*s), cmp_str);
    for (int i = 1; i < n; i++) {
        ck_assert_msg(strcmp(s[i - 1], s[i]) != 0, "serial %s issued twice", s[i]);
    }
    for (int i = 0; i < n; i++) {
        OPENSSL_free(s[i]);
    }
}

/* The upstream's last CN as bytes (NULL when none). */
static const ASN1_STRING *cn_of(X509 *x)
{
    X509_NAME *n = X509_get_subject_name(x);
    int idx = -1, last = -1;
    while ((idx = X509_NAME_get_index_by_NID(n, NID_commonName, idx)) >= 0) {
        last = idx;
    }
    return last < 0 ? NULL : X509_NAME_ENTRY_get_data(X509_NAME_get_entry(n, last));
}

static void check_host(X509 *leaf, const ASN1_STRING *name)
{
    char buf[300];
    int len = ASN1_STRING_length(name);
    ck_assert_int_lt(len, (int)sizeof(buf));
    memcpy(buf, ASN1_STRING_get0_data(name), (size_t)len);
    buf[len] = '\0';
    ck_assert_msg(X509_check_host(leaf, buf, (size_t)len, 0, NULL) == 1,
                  "X509_check_host(%s) fails", buf);
}

static void check_ip(X509 *leaf, const ASN1_OCTET_STRING *ip)
{
    ck_assert_msg(
        X509_check_ip(leaf, ASN1_STRING_get0_data(ip), (size_t)ASN1_STRING_length(ip), 0) == 1,
        "X509_check_ip fails for a %d-byte address", ASN1_STRING_length(ip));
}

/* Names: SAN = the upstream's DNS and IP entries in order (or its CN); CN kept if <= 64. */
static void check_names(X509 *leaf, X509 *up)
{
    int crit = -1;
    GENERAL_NAMES *ls = X509_get_ext_d2i(leaf, NID_subject_alt_name, &crit, NULL);
    GENERAL_NAMES *ups = X509_get_ext_d2i(up, NID_subject_alt_name, NULL, NULL);
    ck_assert_msg(ls != NULL, "leaf has no subjectAltName");
    int k = 0;
    for (int i = 0; ups != NULL && i < sk_GENERAL_NAME_num(ups); i++) {
        GENERAL_NAME *g = sk_GENERAL_NAME_value(ups, i);
        if (g->type != GEN_DNS && g->type != GEN_IPADD) {
            continue;
        }
        ck_assert_int_lt(k, sk_GENERAL_NAME_num(ls));
        ck_assert_msg(GENERAL_NAME_cmp(g, sk_GENERAL_NAME_value(ls, k)) == 0,
                      "SAN entry %d differs from the upstream's", k);
        if (g->type == GEN_DNS) {
            check_host(leaf, g->d.dNSName);
        } else {
            check_ip(leaf, g->d.iPAddress);
        }
        k++;
    }
    const ASN1_STRING *cn = cn_of(up);
    if (k == 0) {
        /* no DNS/IP SAN upstream: its CN is the one SAN entry */
        ck_assert_ptr_nonnull(cn);
        ck_assert_int_eq(sk_GENERAL_NAME_num(ls), 1);
        GENERAL_NAME *g = sk_GENERAL_NAME_value(ls, 0);
        char buf[300];
        unsigned char ip[16];
        int len = ASN1_STRING_length(cn);
        ck_assert_int_lt(len, (int)sizeof(buf));
        memcpy(buf, ASN1_STRING_get0_data(cn), (size_t)len);
        buf[len] = '\0';
        if (inet_pton(AF_INET, buf, ip) == 1 || inet_pton(AF_INET6, buf, ip) == 1) {
            ck_assert_int_eq(g->type, GEN_IPADD);
            ck_assert_int_eq(X509_check_ip_asc(leaf, buf, 0), 1);
        } else {
            ck_assert_int_eq(g->type, GEN_DNS);
            /* same characters; the string types differ (IA5String vs the CN's) */
            ck_assert_int_eq(ASN1_STRING_length(g->d.dNSName), len);
            ck_assert_int_eq(memcmp(ASN1_STRING_get0_data(g->d.dNSName), buf, (size_t)len), 0);
            check_host(leaf, cn);
        }
    } else {
        ck_assert_int_eq(sk_GENERAL_NAME_num(ls), k);
    }
    /* subject CN: copied when it fits X.509's 64 characters; otherwise SAN must be critical */
    const ASN1_STRING *lcn = cn_of(leaf);
    if (cn != NULL && ASN1_STRING_length(cn) <= 64) {
        ck_assert_msg(lcn != NULL, "the upstream CN was not copied");
        ck_assert_int_eq(ASN1_STRING_cmp(lcn, cn), 0);
        ck_assert_int_eq(crit, 0);
    } else {
        ck_assert_msg(lcn == NULL, "leaf subject carries a CN the upstream cannot justify");
        ck_assert_int_eq(X509_NAME_entry_count(X509_get_subject_name(leaf)), 0);
        ck_assert_msg(crit == 1, "empty subject: subjectAltName must be critical");
    }
    /* the name checks above are not vacuous */
    ck_assert_int_ne(X509_check_host(leaf, "not-copied.invalid", 0, 0, NULL), 1);
    ck_assert_int_ne(X509_check_ip_asc(leaf, "198.51.100.254", 0), 1);
    GENERAL_NAMES_free(ls);
    GENERAL_NAMES_free(ups);
}

/* Everything a minted leaf must be; e's certificate for upstream up, as w says. */
static void check_leaf(const struct env *v, struct cc_entry *e, X509 *up, const struct want *w)
{
    X509 *leaf = cc_entry_cert(e);
    ck_assert_ptr_nonnull(leaf);
    X509 *ca = w->ca == CC_CA_TRUST ? v->trust_ca : v->untrust_ca;
    X509 *other = w->ca == CC_CA_TRUST ? v->untrust_ca : v->trust_ca;
    ck_assert_int_eq((int)cc_entry_ca(e), (int)w->ca);
    ck_assert_int_eq(X509_get_version(leaf), 2);

    /* chain: signed by this CA, and only by it */
    STACK_OF(X509) *chain = cc_entry_chain(e);
    ck_assert(chain == NULL || sk_X509_num(chain) == 0); /* no forward_trust_chain configured */
    ck_assert_int_eq(X509_NAME_cmp(X509_get_issuer_name(leaf), X509_get_subject_name(ca)), 0);
    ck_assert_int_eq(X509_check_issued(ca, leaf), X509_V_OK);
    ck_assert_int_eq(X509_verify(leaf, X509_get0_pubkey(ca)), 1);
    ck_assert_int_ne(X509_verify(leaf, X509_get0_pubkey(other)), 1);
    ERR_clear_error();
    int vr = verify_chain(leaf, ca, chain, w->std_validity);
    ck_assert_msg(vr == X509_V_OK, "leaf does not verify against its CA: %s",
                  X509_verify_cert_error_string(vr));
    ck_assert_int_ne(verify_chain(leaf, other, chain, false), X509_V_OK);

    /* extensions */
    ck_assert_int_eq(X509_get_extension_flags(leaf) & EXFLAG_INVALID, 0);
    check_ext_once(leaf, NID_basic_constraints, 1);
    BASIC_CONSTRAINTS *bc = X509_get_ext_d2i(leaf, NID_basic_constraints, NULL, NULL);
    ck_assert_ptr_nonnull(bc);
    ck_assert_int_eq(bc->ca, 0);
    BASIC_CONSTRAINTS_free(bc);
    ck_assert_int_eq(X509_check_ca(leaf), 0);
    check_ext_once(leaf, NID_key_usage, 1);
    uint32_t ku = KU_DIGITAL_SIGNATURE | (w->kk == CC_KEY_RSA ? KU_KEY_ENCIPHERMENT : 0);
    ck_assert_uint_eq(X509_get_key_usage(leaf), ku);
    check_ext_once(leaf, NID_ext_key_usage, -1);
    ck_assert_uint_eq(X509_get_extended_key_usage(leaf), XKU_SSL_SERVER);
    check_ext_once(leaf, NID_subject_key_identifier, -1);
    const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(leaf);
    ck_assert_ptr_nonnull(ski);
    unsigned char md[20];
    const ASN1_BIT_STRING *pk = X509_get0_pubkey_bitstr(leaf);
    ck_assert_int_eq(EVP_Digest(ASN1_STRING_get0_data(pk), (size_t)ASN1_STRING_length(pk), md, NULL,
                                EVP_sha1(), NULL),
                     1);
    ck_assert_int_eq(ASN1_STRING_length(ski), 20);
    ck_assert_int_eq(memcmp(ASN1_STRING_get0_data(ski), md, 20), 0);
    check_ext_once(leaf, NID_authority_key_identifier, -1);
    const ASN1_OCTET_STRING *aki = X509_get0_authority_key_id(leaf);
    ck_assert_ptr_nonnull(aki);
    ck_assert_ptr_nonnull(X509_get0_subject_key_id(ca));
    ck_assert_int_eq(ASN1_OCTET_STRING_cmp(aki, X509_get0_subject_key_id(ca)), 0);
    check_ext_once(leaf, NID_subject_alt_name, -1);

    check_serial(leaf);

    /* key: one of our pool keys, never the upstream's */
    EVP_PKEY *lk = X509_get0_pubkey(leaf);
    ck_assert_ptr_nonnull(lk);
    ck_assert_int_eq(EVP_PKEY_get_base_id(lk), w->kk == CC_KEY_RSA ? EVP_PKEY_RSA : EVP_PKEY_EC);
    ck_assert_int_eq(EVP_PKEY_get_bits(lk), w->kk == CC_KEY_RSA ? 2048 : 256);
    ck_assert_int_ne(EVP_PKEY_eq(lk, X509_get0_pubkey(up)), 1);
    ck_assert_int_eq(X509_check_private_key(leaf, cc_entry_key(e)), 1);
    ERR_clear_error();

    /* validity */
    time_t nb = time_of(X509_get0_notBefore(leaf));
    time_t na = time_of(X509_get0_notAfter(leaf));
    ck_assert(nb < na);
    if (w->std_validity) {
        time_t up_na = time_of(X509_get0_notAfter(up));
        time_t md0 = w->t0 + (time_t)w->max_days * DAY, md1 = w->t1 + (time_t)w->max_days * DAY;
        time_t lo = up_na < md0 ? up_na : md0, hi = up_na < md1 ? up_na : md1;
        ck_assert_msg(nb >= w->t0 - 3600 && nb <= w->t1 - 3600,
                      "notBefore %ld is not now - 1 h (now in [%ld, %ld])", (long)nb, (long)w->t0,
                      (long)w->t1);
        ck_assert_msg(na >= lo && na <= hi, "notAfter %ld not in [%ld, %ld]", (long)na, (long)lo,
                      (long)hi);
    }

    check_names(leaf, up);
}

/* ---- minted leaves ---------------------------------------------------------------------- */

START_TEST(trust_leaf_ec)
{
    struct env v;
    env_open(&v, NULL, true);
    const char *dns[] = {"www.example.com", "example.com", "api.example.com"};
    const char *ips[] = {"192.0.2.1", "2001:db8::1"};
    struct upspec s = spec("www.example.com");
    s.dns = dns;
    s.ndns = 3;
    s.ips = ips;
    s.nips = 2;
    X509 *up = make_upstream(&s);
    struct want w = want_of(CC_CA_TRUST, CC_KEY_EC);
    int how = -1;
    struct cc_entry *e = get_leaf(&v, up, true, CC_KEY_EC, &how);
    w.t1 = time(NULL);
    ck_assert_int_eq(how, CC_PENDING); /* the forward-trust CA signs through the HSM */
    check_leaf(&v, e, up, &w);
    ck_assert_uint_eq(hsm_ops(&v), 1);

    /* the same upstream again: the same leaf from the cache, no second signature */
    struct cc_entry *e2 = get_leaf(&v, up, true, CC_KEY_EC, &how);
    ck_assert_int_eq(how, CC_HIT);
    ck_assert_ptr_eq(e2, e);
    ck_assert_uint_eq(hsm_ops(&v), 1);
    struct cc_stats st = stats(&v);
    ck_assert_uint_eq(st.misses, 1);
    ck_assert_uint_eq(st.hits, 1);
    ck_assert_uint_eq(st.mints, 1);
    ck_assert_uint_eq(st.coalesced, 0);
    ck_assert_uint_eq(st.failures, 0);
    ck_assert_uint_eq(st.entries, 1);
    ck_assert_uint_gt(st.hsm_wait_ns_total, 0);
    cc_entry_unref(e2);
    cc_entry_unref(e);
    X509_free(up);
    env_close(&v);
}
END_TEST

START_TEST(rsa_leaf_separate_from_ec)
{
    struct env v;
    env_open(&v, NULL, true);
    X509 *up = make_named("rsa.example.com");
    struct want w = want_of(CC_CA_TRUST, CC_KEY_RSA);
    int how = -1;
    struct cc_entry *er = get_leaf(&v, up, true, CC_KEY_RSA, &how);
    w.t1 = time(NULL);
    ck_assert_int_eq(how, CC_PENDING);
    check_leaf(&v, er, up, &w); /* keyUsage has keyEncipherment, the key is RSA-2048 */

    /* the key kind is part of the cache key: an EC leaf for the same upstream is a new mint */
    w = want_of(CC_CA_TRUST, CC_KEY_EC);
    struct cc_entry *ee = get_leaf(&v, up, true, CC_KEY_EC, &how);
    w.t1 = time(NULL);
    ck_assert_int_eq(how, CC_PENDING);
    ck_assert_ptr_ne(ee, er);
    check_leaf(&v, ee, up, &w);
    struct cc_entry *er2 = get_leaf(&v, up, true, CC_KEY_RSA, &how);
    ck_assert_int_eq(how, CC_HIT);
    ck_assert_ptr_eq(er2, er);
    struct cc_stats st = stats(&v);
    ck_assert_uint_eq(st.misses, 2);
    ck_assert_uint_eq(st.mints, 2);
    ck_assert_uint_eq(st.hits, 1);
    ck_assert_uint_eq(st.entries, 2);
    ck_assert_uint_eq(hsm_ops(&v), 2);
    cc_entry_unref(er2);
    cc_entry_unref(ee);
    cc_entry_unref(er);
    X509_free(up);
    env_close(&v);
}
END_TEST

START_TEST(validity_clamped_to_upstream)
{
    struct env v;
    env_open(&v, NULL, true);
    const char *dns[] = {"short.example.com"};
    struct upspec s = spec("short.example.com");
    s.dns = dns;
    s.ndns = 1;
    s.na_off = 5 * DAY + 1234;
    X509 *up = make_upstream(&s);
    struct want w = want_of(CC_CA_TRUST, CC_KEY_EC);
    struct cc_entry *e = get_leaf(&v, up, true, CC_KEY_EC, NULL);
    w.t1 = time(NULL);
    check_leaf(&v, e, up, &w);
    ck_assert_int_eq(
        ASN1_TIME_compare(X509_get0_notAfter(cc_entry_cert(e)), X509_get0_notAfter(up)), 0);
    cc_entry_unref(e);
    X509_free(up);
    env_close(&v);
}
END_TEST

START_TEST(leaf_max_days_from_config)
{
    struct env v;
    env_open(&v, "[ca]\nleaf_max_days = 7\n", true);
    X509 *up = make_named("week.example.com"); /* valid for a year */
    struct want w = want_of(CC_CA_TRUST, CC_KEY_EC);
    w.max_days = 7;
    struct cc_entry *e = get_leaf(&v, up, true, CC_KEY_EC, NULL);
    w.t1 = time(NULL);
    check_leaf(&v, e, up, &w);
    time_t na = time_of(X509_get0_notAfter(cc_entry_cert(e)));
    ck_assert(na >= w.t0 + 7 * DAY && na <= w.t1 + 7 * DAY);
    cc_entry_unref(e);
    X509_free(up);
    env_close(&v);
}
END_TEST

#define N_SER_TRUST 200
#define N_SER_ALL 300

START_TEST(serials_unique_positive_16_bytes)
{
    struct env v;
    env_open(&v, "[hsm]\nsign_timeout_ms = 20000\n", true);
    static X509 *ups[N_SER_ALL];
    static struct res rs[N_SER_ALL];
    static struct cc_entry *es[N_SER_ALL];
    static char *hex[N_SER_ALL];
    time_t t0 = time(NULL);
    for (int i = 0; i < N_SER_ALL; i++) {
        char name[64];
        snprintf(name, sizeof(name), "serial-%d.example.com", i);
        ups[i] = make_named(name);
        /* trusted ones all in flight at once; the rest through the software CA */
        int rc = cc_get(v.l, ups[i], i < N_SER_TRUST, CC_KEY_EC, on_res, &rs[i], &es[i]);
        ck_assert_int_eq(rc, i < N_SER_TRUST ? CC_PENDING : CC_MINTED);
    }
    pump1(v.l, rs, N_SER_TRUST, 30000);
    time_t t1 = time(NULL);
    for (int i = 0; i < N_SER_ALL; i++) {
        if (i < N_SER_TRUST) {
            ck_assert_int_eq(rs[i].calls, 1);
            ck_assert_msg(rs[i].status == 0, "mint %d: %s", i, px_strerror(rs[i].status));
            es[i] = rs[i].e;
        }
        struct want w = want_of(i < N_SER_TRUST ? CC_CA_TRUST : CC_CA_UNTRUST, CC_KEY_EC);
        w.t0 = t0;
        w.t1 = t1;
        check_leaf(&v, es[i], ups[i], &w);
        hex[i] = serial_hex(cc_entry_cert(es[i]));
    }
    check_unique(hex, N_SER_ALL);
    ck_assert_uint_eq(hsm_ops(&v), N_SER_TRUST);
    ck_assert_uint_eq(stats(&v).mints, N_SER_ALL);
    for (int i = 0; i < N_SER_ALL; i++) {
        cc_entry_unref(es[i]);
        X509_free(ups[i]);
    }
    env_close(&v);
}
END_TEST

START_TEST(untrusted_chains_to_untrust_ca_only)
{
    struct env v;
    env_open(&v, NULL, true);
    X509 *up = make_named("untrusted.example.net");
    struct want w = want_of(CC_CA_UNTRUST, CC_KEY_EC);
    int how = -1;
    struct cc_entry *eu = get_leaf(&v, up, false, CC_KEY_EC, &how);
    w.t1 = time(NULL);
    ck_assert_int_eq(how, CC_MINTED); /* software CA: no HSM, no waiting */
    check_leaf(&v, eu, up, &w);       /* verifies against forward-untrust, not forward-trust */
    ck_assert_uint_eq(hsm_ops(&v), 0);

    /* the same upstream verified: another CA, so another cache entry and another leaf */
    w = want_of(CC_CA_TRUST, CC_KEY_EC);
    struct cc_entry *et = get_leaf(&v, up, true, CC_KEY_EC, &how);
    w.t1 = time(NULL);
    ck_assert_int_eq(how, CC_PENDING);
    ck_assert_ptr_ne(et, eu);
    check_leaf(&v, et, up, &w);
    ck_assert_int_ne(ASN1_INTEGER_cmp(X509_get0_serialNumber(cc_entry_cert(et)),
                                      X509_get0_serialNumber(cc_entry_cert(eu))),
                     0);

    /* both cached, each under its own key */
    struct cc_entry *eu2 = get_leaf(&v, up, false, CC_KEY_EC, &how);
    ck_assert_int_eq(how, CC_HIT);
    ck_assert_ptr_eq(eu2, eu);
    struct cc_entry *et2 = get_leaf(&v, up, true, CC_KEY_EC, &how);
    ck_assert_int_eq(how, CC_HIT);
    ck_assert_ptr_eq(et2, et);
    struct cc_stats st = stats(&v);
    ck_assert_uint_eq(st.misses, 2);
    ck_assert_uint_eq(st.hits, 2);
    ck_assert_uint_eq(st.mints, 2);
    ck_assert_uint_eq(st.entries, 2);
    ck_assert_uint_eq(hsm_ops(&v), 1);
    cc_entry_unref(eu);
    cc_entry_unref(eu2);
    cc_entry_unref(et);
    cc_entry_unref(et2);
    X509_free(up);
    env_close(&v);
}
END_TEST

START_TEST(untrust_only_without_pool)
{
    struct env v;
    env_open(&v, NULL, false);
    X509 *up = make_named("nopool.example.net");
    struct want w = want_of(CC_CA_UNTRUST, CC_KEY_RSA);
    int how = -1;
    struct cc_entry *e = get_leaf(&v, up, false, CC_KEY_RSA, &how);
    w.t1 = time(NULL);
    ck_assert_int_eq(how, CC_MINTED);
    check_leaf(&v, e, up, &w);
    /* no pool: a forward-trust lookup is refused at once, without a callback */
    struct res r = {0};
    struct cc_entry *out = NULL;
    ck_assert_int_eq(cc_get(v.l, up, true, CC_KEY_EC, on_res, &r, &out), PX_E_INVAL);
    ck_assert_ptr_null(out);
    ck_assert_int_eq(cc_loop_poll(v.l), 0);
    ck_assert_int_eq(r.calls, 0);
    cc_entry_unref(e);
    X509_free(up);
    env_close(&v);
}
END_TEST

/* ---- odd upstream certificates ---------------------------------------------------------- */

/* Mints a trusted EC leaf for up and runs every check; returns the entry. */
static struct cc_entry *mint_checked(struct env *v, X509 *up, bool std_validity)
{
    struct want w = want_of(CC_CA_TRUST, CC_KEY_EC);
    w.std_validity = std_validity;
    struct cc_entry *e = get_leaf(v, up, true, CC_KEY_EC, NULL);
    w.t1 = time(NULL);
    check_leaf(v, e, up, &w);
    return e;
}

START_TEST(no_san_cn_goes_to_san)
{
    struct env v;
    env_open(&v, NULL, true);
    const char *cns[] = {"nosan.example.org", "192.0.2.55", "2001:db8::55"};
    for (int i = 0; i < 3; i++) {
        struct upspec s = spec(cns[i]);
        X509 *up = make_upstream(&s);
        ck_assert_ptr_null(X509_get_ext_d2i(up, NID_subject_alt_name, NULL, NULL));
        struct cc_entry *e = mint_checked(&v, up, true); /* SAN = [CN], CN kept */
        X509 *leaf = cc_entry_cert(e);
        if (i == 0) {
            ck_assert_int_eq(X509_check_host(leaf, "nosan.example.org", 0, 0, NULL), 1);
        } else {
            ck_assert_int_eq(X509_check_ip_asc(leaf, cns[i], 0), 1);
        }
        cc_entry_unref(e);
        X509_free(up);
    }
    /* a SAN with only an email address counts as no SAN: the CN is used */
    struct upspec s = spec("mailonly.example.org");
    s.email = "postmaster@example.org";
    X509 *up = make_upstream(&s);
    struct cc_entry *e = mint_checked(&v, up, true);
    ck_assert_int_eq(X509_check_host(cc_entry_cert(e), "mailonly.example.org", 0, 0, NULL), 1);
    cc_entry_unref(e);
    X509_free(up);
    env_close(&v);
}
END_TEST

START_TEST(ip_only_san)
{
    struct env v;
    env_open(&v, NULL, true);
    const char *ips[] = {"192.0.2.10", "2001:db8::10"};
    struct upspec s = spec(NULL);
    s.ips = ips;
    s.nips = 2;
    X509 *up = make_upstream(&s);
    struct cc_entry *e = mint_checked(&v, up, true);
    X509 *leaf = cc_entry_cert(e);
    ck_assert_int_eq(X509_check_ip_asc(leaf, "192.0.2.10", 0), 1);
    ck_assert_int_eq(X509_check_ip_asc(leaf, "2001:db8::10", 0), 1);
    ck_assert_int_ne(X509_check_ip_asc(leaf, "192.0.2.11", 0), 1);
    ck_assert_int_ne(X509_check_ip_asc(leaf, "2001:db8::11", 0), 1);
    /* no CN upstream: empty subject and a critical SAN (checked in check_names) */
    ck_assert_int_eq(X509_NAME_entry_count(X509_get_subject_name(leaf)), 0);
    cc_entry_unref(e);
    X509_free(up);
    env_close(&v);
}
END_TEST

START_TEST(wildcard_copied)
{
    struct env v;
    env_open(&v, NULL, true);
    X509 *up = make_named("*.example.com");
    struct cc_entry *e = mint_checked(&v, up, true);
    X509 *leaf = cc_entry_cert(e);
    ck_assert_int_eq(X509_check_host(leaf, "a.example.com", 0, 0, NULL), 1);
    ck_assert_int_ne(X509_check_host(leaf, "example.com", 0, 0, NULL), 1);
    ck_assert_int_ne(X509_check_host(leaf, "a.b.example.com", 0, 0, NULL), 1);
    ck_assert_int_ne(X509_check_host(leaf, "a.example.org", 0, 0, NULL), 1);
    cc_entry_unref(e);
    X509_free(up);
    env_close(&v);
}
END_TEST

START_TEST(hundred_sans)
{
    struct env v;
    env_open(&v, NULL, true);
    static char names[100][64];
    const char *ptrs[100];
    for (int i = 0; i < 100; i++) {
        snprintf(names[i], sizeof(names[i]), "host%03d.many.example.com", i);
        ptrs[i] = names[i];
    }
    struct upspec s = spec(names[0]);
    s.dns = ptrs;
    s.ndns = 100;
    X509 *up = make_upstream(&s);
    struct cc_entry *e = mint_checked(&v, up, true); /* all 100, in order */
    GENERAL_NAMES *ls = X509_get_ext_d2i(cc_entry_cert(e), NID_subject_alt_name, NULL, NULL);
    ck_assert_ptr_nonnull(ls);
    ck_assert_int_eq(sk_GENERAL_NAME_num(ls), 100);
    GENERAL_NAMES_free(ls);
    for (int i = 0; i < 100; i++) {
        ck_assert_int_eq(X509_check_host(cc_entry_cert(e), names[i], 0, 0, NULL), 1);
    }
    cc_entry_unref(e);
    X509_free(up);
    env_close(&v);
}
END_TEST

START_TEST(expired_upstream)
{
    struct env v;
    env_open(&v, NULL, true);
    const char *dns[] = {"expired.example.com"};
    struct upspec s = spec("expired.example.com");
    s.dns = dns;
    s.ndns = 1;
    s.nb_off = -90 * DAY;
    s.na_off = -2 * DAY;
    X509 *up = make_upstream(&s);
    struct cc_entry *e = mint_checked(&v, up, false);
    X509 *leaf = cc_entry_cert(e);
    ck_assert_int_eq(ASN1_TIME_compare(X509_get0_notAfter(leaf), X509_get0_notAfter(up)), 0);
    ck_assert_int_lt(X509_cmp_current_time(X509_get0_notAfter(leaf)), 0); /* expired too */
    ck_assert(time_of(X509_get0_notBefore(leaf)) >= time_of(X509_get0_notBefore(up)));
    ck_assert_int_eq(verify_chain(leaf, v.trust_ca, NULL, true), X509_V_ERR_CERT_HAS_EXPIRED);
    cc_entry_unref(e);
    X509_free(up);
    /* and the process carries on */
    X509 *good = make_named("after-expired.example.com");
    e = mint_checked(&v, good, true);
    cc_entry_unref(e);
    X509_free(good);
    env_close(&v);
}
END_TEST

START_TEST(not_yet_valid_upstream)
{
    struct env v;
    env_open(&v, NULL, true);
    const char *dns[] = {"future.example.com"};
    struct upspec s = spec("future.example.com");
    s.dns = dns;
    s.ndns = 1;
    s.nb_off = 2 * DAY;
    s.na_off = 200 * DAY;
    X509 *up = make_upstream(&s);
    time_t t0 = time(NULL);
    struct cc_entry *e = mint_checked(&v, up, false);
    time_t t1 = time(NULL);
    X509 *leaf = cc_entry_cert(e);
    time_t nb = time_of(X509_get0_notBefore(leaf)), na = time_of(X509_get0_notAfter(leaf));
    ck_assert(nb >= time_of(X509_get0_notBefore(up)));
    ck_assert(na >= t0 + 30 * DAY && na <= t1 + 30 * DAY);
    ck_assert_int_eq(verify_chain(leaf, v.trust_ca, NULL, true), X509_V_ERR_CERT_NOT_YET_VALID);
    cc_entry_unref(e);
    X509_free(up);
    env_close(&v);
}
END_TEST

START_TEST(long_names)
{
    struct env v;
    env_open(&v, NULL, true);
    /* a 200-character DNS name (labels within 63) as SAN, and as a CN past X.509's 64 */
    char longname[256] = "";
    for (int i = 0; i < 3; i++) {
        size_t at = strlen(longname);
        memset(longname + at, 'a' + i, 63);
        longname[at + 63] = '.';
        longname[at + 64] = '\0';
    }
    strcat(longname, "examples");
    ck_assert_int_eq((int)strlen(longname), 200);
    const char *dns[] = {longname};
    struct upspec s = spec(longname);
    s.dns = dns;
    s.ndns = 1;
    X509 *up = make_upstream(&s);
    struct cc_entry *e = mint_checked(&v, up, true); /* no CN, name in SAN, SAN critical */
    X509 *leaf = cc_entry_cert(e);
    ck_assert_ptr_null(cn_of(leaf));
    ck_assert_int_eq(X509_check_host(leaf, longname, 0, 0, NULL), 1);
    cc_entry_unref(e);
    X509_free(up);

    /* the same long name as CN only: it still goes to the SAN */
    s = spec(longname);
    up = make_upstream(&s);
    e = mint_checked(&v, up, true);
    ck_assert_ptr_null(cn_of(cc_entry_cert(e)));
    ck_assert_int_eq(X509_check_host(cc_entry_cert(e), longname, 0, 0, NULL), 1);
    cc_entry_unref(e);
    X509_free(up);

    /* exactly 64 characters: kept as CN, SAN not critical */
    char cn64[65];
    memset(cn64, 'c', 60);
    memcpy(cn64 + 60, ".net", 5);
    ck_assert_int_eq((int)strlen(cn64), 64);
    up = make_named(cn64);
    e = mint_checked(&v, up, true);
    ck_assert_ptr_nonnull(cn_of(cc_entry_cert(e)));
    cc_entry_unref(e);
    X509_free(up);
    env_close(&v);
}
END_TEST

START_TEST(upstream_key_never_reused)
{
    struct env v;
    env_open(&v, NULL, true);
    EVP_PKEY *keys[2] = {EVP_RSA_gen(4096), EVP_EC_gen("P-384")};
    const char *names[2] = {"rsa4096.example.com", "p384.example.com"};
    for (int i = 0; i < 2; i++) {
        ck_assert_ptr_nonnull(keys[i]);
        const char *dns[] = {names[i]};
        struct upspec s = spec(names[i]);
        s.dns = dns;
        s.ndns = 1;
        s.key = keys[i];
        X509 *up = make_upstream(&s);
        ck_assert_int_eq(EVP_PKEY_eq(X509_get0_pubkey(up), keys[i]), 1);
        struct cc_entry *e = mint_checked(&v, up, true); /* leaf key: pool EC P-256 */
        ck_assert_int_ne(EVP_PKEY_eq(X509_get0_pubkey(cc_entry_cert(e)), keys[i]), 1);
        ERR_clear_error();
        cc_entry_unref(e);
        X509_free(up);
        EVP_PKEY_free(keys[i]);
    }
    env_close(&v);
}
END_TEST

/* An upstream without a usable name: error at once, no callback, and nothing kept. */
static void expect_rejected(struct env *v, X509 *up, bool verified)
{
    struct cc_stats before = stats(v);
    struct res r = {0};
    struct cc_entry *out = NULL;
    int rc = cc_get(v->l, up, verified, CC_KEY_EC, on_res, &r, &out);
    ck_assert_msg(rc < 0, "cc_get returned %d for an upstream without names", rc);
    ck_assert_ptr_null(out);
    ck_assert_uint_eq(cc_loop_pending(v->l), 0);
    /* no callback comes later either */
    uint64_t end = px_now_ns() + 200000000ull;
    while (px_now_ns() < end) {
        struct pollfd pfd = {.fd = cc_loop_fd(v->l), .events = POLLIN};
        poll(&pfd, 1, 20);
        cc_loop_poll(v->l);
    }
    ck_assert_int_eq(r.calls, 0);
    struct cc_stats after = stats(v);
    ck_assert_uint_eq(after.failures, before.failures + 1);
    ck_assert_uint_eq(after.mints, before.mints);
    ck_assert_uint_eq(after.entries, before.entries);
}

START_TEST(no_usable_name_rejected)
{
    struct env v;
    env_open(&v, NULL, true);
    struct upspec s = spec(NULL);
    s.email = "admin@example.com";
    X509 *up = make_upstream(&s);
    ck_assert_ptr_null(cn_of(up));
    expect_rejected(&v, up, true);
    expect_rejected(&v, up, false);
    expect_rejected(&v, up, true); /* not a cached failure either: rejected again */
    X509_free(up);
    /* a CN that is not a host name, and no SAN */
    s = spec("My Internal Server");
    up = make_upstream(&s);
    expect_rejected(&v, up, true);
    X509_free(up);
    ck_assert_uint_eq(hsm_ops(&v), 0);
    /* the next good mint works */
    X509 *good = make_named("good.example.com");
    struct cc_entry *e = mint_checked(&v, good, true);
    ck_assert_uint_eq(hsm_ops(&v), 1);
    ck_assert_uint_eq(stats(&v).mints, 1);
    cc_entry_unref(e);
    X509_free(good);
    env_close(&v);
}
END_TEST

START_TEST(cc_new_refuses_foreign_trust_cert)
{
    /* the pool runs with the fixture's (matching) config; cc_new gets one whose forward-trust
     * certificate holds another key, so it is cc_new's own check that must refuse it */
    char extra[600], path[400], err[600];
    struct px_cfg *good = load_cfg(fx_conf_with(&fx_ec, "", path, sizeof(path)));
    snprintf(extra, sizeof(extra), "[ca]\nforward_trust_cert = %s/state/ca/forward-untrust.pem\n",
             fx_ec.dir);
    struct px_cfg *bad = load_cfg(fx_conf_with(&fx_ec, extra, path, sizeof(path)));
    struct hsm_pool *pool = hsm_pool_new(good, fx_bin(), err, sizeof(err));
    ck_assert_msg(pool != NULL, "hsm_pool_new: %s", err);
    err[0] = '\0';
    struct cc_ctx *cc = cc_new_mk(bad, pool, fx_ec.mk, err, sizeof(err));
    ck_assert_ptr_null(cc);
    ck_assert_msg(strstr(err, "is not the key of") != NULL, "error: %s", err);
    ck_assert_ptr_null(strchr(err, '\n'));
    /* and the matching certificate is accepted by the same pool */
    cc = cc_new_mk(good, pool, fx_ec.mk, err, sizeof(err));
    ck_assert_msg(cc != NULL, "cc_new: %s", err);
    cc_free(cc);
    /* the sealed key files do not open without the master key, or with another one */
    cc = cc_new(good, pool, err, sizeof(err));
    ck_assert_ptr_null(cc);
    ck_assert_msg(strstr(err, "is sealed and no master key is available") != NULL, "error: %s", err);
    uint8_t wrong[32];
    memcpy(wrong, fx_ec.mk, 32);
    wrong[0] ^= 1;
    cc = cc_new_mk(good, pool, wrong, err, sizeof(err));
    ck_assert_ptr_null(cc);
    ck_assert_msg(strstr(err, "does not open with this master key") != NULL, "error: %s", err);
    hsm_pool_free(pool);
}
END_TEST

static Suite *mint_suite(void)
{
    Suite *s = suite_create("certcache_mint");
    TCase *tc = tcase_create("mint");
    tcase_add_unchecked_fixture(tc, setup_token, teardown_token);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, trust_leaf_ec);
    tcase_add_test(tc, rsa_leaf_separate_from_ec);
    tcase_add_test(tc, validity_clamped_to_upstream);
    tcase_add_test(tc, leaf_max_days_from_config);
    tcase_add_test(tc, serials_unique_positive_16_bytes);
    tcase_add_test(tc, untrusted_chains_to_untrust_ca_only);
    tcase_add_test(tc, untrust_only_without_pool);
    tcase_add_test(tc, cc_new_refuses_foreign_trust_cert);
    suite_add_tcase(s, tc);
    TCase *odd = tcase_create("odd_upstreams");
    tcase_add_unchecked_fixture(odd, setup_token, teardown_token);
    tcase_set_timeout(odd, 120);
    tcase_add_test(odd, no_san_cn_goes_to_san);
    tcase_add_test(odd, ip_only_san);
    tcase_add_test(odd, wildcard_copied);
    tcase_add_test(odd, hundred_sans);
    tcase_add_test(odd, expired_upstream);
    tcase_add_test(odd, not_yet_valid_upstream);
    tcase_add_test(odd, long_names);
    tcase_add_test(odd, upstream_key_never_reused);
    tcase_add_test(odd, no_usable_name_rejected);
    suite_add_tcase(s, odd);
    return s;
}

/* ---- single-flight and failures --------------------------------------------------------- */

#define SF_CERTS 100
#define SF_THREADS 4
#define SF_PER_THREAD 2500

struct sf_thread;

struct sf_req {
    struct sf_thread *th;
    int cert;
    int how;     /* what cc_get returned */
    int results; /* immediate results plus callbacks: must end at exactly 1 */
    int status;
    bool foreign_thread; /* a callback ran on another thread */
    struct cc_entry *e;
};

struct sf_thread {
    int idx;
    pthread_t self;
    struct cc_ctx *cc;
    X509 **ups;
    pthread_barrier_t *start;
    struct sf_req *reqs;
    int done;
    uint32_t pending_left;
    int free_rc;
};

static void sf_done(void *user, int status, struct cc_entry *e, uint64_t wait_ns)
{
    struct sf_req *r = user;
    if (!pthread_equal(pthread_self(), r->th->self)) {
        r->foreign_thread = true;
    }
    if (r->results++ == 0) {
        r->status = status;
        r->e = e;
    } else {
        cc_entry_unref(e);
    }
    r->th->done++;
}

static void *sf_main(void *arg)
{
    struct sf_thread *th = arg;
    th->self = pthread_self();
    struct cc_loop *l = cc_loop_new(th->cc);
    pthread_barrier_wait(th->start);
    if (l == NULL) {
        th->free_rc = -1;
        return NULL;
    }
    /* every request issued back to back, interleaved over all certificates */
    for (int i = 0; i < SF_PER_THREAD; i++) {
        struct sf_req *r = &th->reqs[i];
        r->th = th;
        r->cert = (i * 37 + th->idx * 25) % SF_CERTS;
        struct cc_entry *e = NULL;
        int rc = cc_get(l, th->ups[r->cert], true, CC_KEY_EC, sf_done, r, &e);
        r->how = rc;
        if (rc == CC_HIT || rc == CC_MINTED) {
            r->results++;
            r->e = e;
            th->done++;
        } else if (rc < 0) {
            r->results++;
            r->status = rc;
            th->done++;
        }
        if (i % 64 == 63) {
            cc_loop_poll(l); /* takes what has finished, never waits */
        }
    }
    uint64_t end = px_now_ns() + 60000000000ull;
    while ((th->done < SF_PER_THREAD || cc_loop_pending(l) > 0) && px_now_ns() < end) {
        struct pollfd pfd = {.fd = cc_loop_fd(l), .events = POLLIN};
        poll(&pfd, 1, 100);
        cc_loop_poll(l);
    }
    th->pending_left = cc_loop_pending(l);
    th->free_rc = cc_loop_free(l);
    return NULL;
}

START_TEST(single_flight_10000_requests_100_signatures)
{
    struct env v;
    env_open(&v, "[hsm]\nsign_timeout_ms = 20000\n", true);
    static X509 *ups[SF_CERTS];
    static struct sf_req reqs[SF_THREADS][SF_PER_THREAD];
    static struct sf_thread th[SF_THREADS];
    static struct cc_entry *first[SF_CERTS];
    static char *hex[SF_CERTS];
    for (int i = 0; i < SF_CERTS; i++) {
        char name[64];
        snprintf(name, sizeof(name), "flight-%03d.example.com", i);
        ups[i] = make_named(name);
        ck_assert_int_eq(X509_check_purpose(ups[i], -1, 0), 1); /* extension cache filled now */
    }
    pthread_barrier_t start;
    ck_assert_int_eq(pthread_barrier_init(&start, NULL, SF_THREADS), 0);
    time_t t0 = time(NULL);
    for (int t = 0; t < SF_THREADS; t++) {
        th[t].idx = t;
        th[t].cc = v.cc;
        th[t].ups = ups;
        th[t].start = &start;
        th[t].reqs = reqs[t];
    }
    pthread_t tids[SF_THREADS];
    for (int t = 0; t < SF_THREADS; t++) {
        ck_assert_int_eq(pthread_create(&tids[t], NULL, sf_main, &th[t]), 0);
    }
    for (int t = 0; t < SF_THREADS; t++) {
        pthread_join(tids[t], NULL);
    }
    time_t t1 = time(NULL);
    pthread_barrier_destroy(&start);

    uint64_t n_hit = 0, n_pending = 0;
    for (int t = 0; t < SF_THREADS; t++) {
        ck_assert_msg(th[t].free_rc == 0, "thread %d: loop still had %u pending", t,
                      th[t].pending_left);
        ck_assert_int_eq(th[t].done, SF_PER_THREAD);
        for (int i = 0; i < SF_PER_THREAD; i++) {
            struct sf_req *r = &reqs[t][i];
            ck_assert_msg(r->results == 1, "thread %d request %d: %d results", t, i, r->results);
            ck_assert_msg(r->how == CC_HIT || r->how == CC_PENDING,
                          "thread %d request %d: cc_get returned %d", t, i, r->how);
            ck_assert_msg(r->status == 0, "thread %d request %d: %s", t, i, px_strerror(r->status));
            ck_assert_msg(!r->foreign_thread, "thread %d request %d: callback on another thread", t,
                          i);
            ck_assert_ptr_nonnull(r->e);
            n_hit += r->how == CC_HIT;
            n_pending += r->how == CC_PENDING;
            /* one leaf per upstream, shared by every request for it */
            if (first[r->cert] == NULL) {
                first[r->cert] = r->e;
            }
            ck_assert_msg(r->e == first[r->cert], "upstream %d got two different leaves", r->cert);
            ck_assert_ptr_eq(cc_entry_cert(r->e), cc_entry_cert(first[r->cert]));
            ck_assert_int_eq(
                ASN1_INTEGER_cmp(X509_get0_serialNumber(cc_entry_cert(r->e)),
                                 X509_get0_serialNumber(cc_entry_cert(first[r->cert]))),
                0);
        }
    }
    struct cc_stats st = stats(&v);
    ck_assert_uint_eq(hsm_ops(&v), SF_CERTS);
    ck_assert_uint_eq(st.mints, SF_CERTS);
    ck_assert_uint_eq(st.misses, SF_CERTS);
    ck_assert_uint_eq(st.hits + st.coalesced + st.misses, SF_THREADS * SF_PER_THREAD);
    ck_assert_uint_eq(st.hits, n_hit);
    ck_assert_uint_eq(st.coalesced + st.misses, n_pending);
    ck_assert_msg(st.coalesced > 0, "no request arrived while its mint was in flight");
    ck_assert_uint_eq(st.failures, 0);
    ck_assert_uint_eq(st.evictions, 0);
    ck_assert_uint_eq(st.entries, SF_CERTS);
    for (int c = 0; c < SF_CERTS; c++) {
        ck_assert_ptr_nonnull(first[c]);
        struct want w = want_of(CC_CA_TRUST, CC_KEY_EC);
        w.t0 = t0;
        w.t1 = t1;
        check_leaf(&v, first[c], ups[c], &w);
        hex[c] = serial_hex(cc_entry_cert(first[c]));
    }
    check_unique(hex, SF_CERTS);
    for (int t = 0; t < SF_THREADS; t++) {
        for (int i = 0; i < SF_PER_THREAD; i++) {
            cc_entry_unref(reqs[t][i].e);
        }
    }
    for (int c = 0; c < SF_CERTS; c++) {
        X509_free(ups[c]);
    }
    env_close(&v);
}
END_TEST

/* A signer this test stopped is resumed even when an assertion ends the test early. */
static pid_t stopped_pid;

static void resume_stopped(void)
{
    if (stopped_pid > 0) {
        kill(stopped_pid, SIGCONT);
    }
}

START_TEST(failed_mint_wakes_all_waiters_not_cached)
{
    struct env v;
    /* a short deadline, but long enough for the recovery mint on a loaded test machine */
    env_open(&v, "[hsm]\nsign_timeout_ms = 500\nhang_timeout_ms = 60000\n", true);
    struct cc_loop *l2 = cc_loop_new(v.cc);
    ck_assert_ptr_nonnull(l2);
    X509 *up = make_named("fail.example.net");
    struct hsm_member_stats ms;
    hsm_pool_member_stats(v.pool, 0, &ms);
    pid_t pid = ms.pid;
    ck_assert_int_gt(pid, 0);
    stopped_pid = pid;
    ck_assert_int_eq(atexit(resume_stopped), 0);
    ck_assert_int_eq(kill(pid, SIGSTOP), 0);

    /* six lookups on two loops: the first is a miss, the other five attach to its mint */
    struct res rs[6];
    memset(rs, 0, sizeof(rs));
    for (int i = 0; i < 6; i++) {
        struct cc_entry *e = NULL;
        int rc = cc_get(i < 4 ? v.l : l2, up, true, CC_KEY_EC, on_res, &rs[i], &e);
        ck_assert_int_eq(rc, CC_PENDING);
        ck_assert_ptr_null(e);
    }
    struct cc_stats st = stats(&v);
    ck_assert_uint_eq(st.misses, 1);
    ck_assert_uint_eq(st.coalesced, 5);
    /* a loop with waits outstanding cannot be freed */
    ck_assert_int_eq(cc_loop_free(l2), PX_E_INVAL);
    struct cc_loop *ls[2] = {v.l, l2};
    pump(ls, 2, rs, 6, 5000);
    ck_assert_int_eq(kill(pid, SIGCONT), 0);
    stopped_pid = 0;
    for (int i = 0; i < 6; i++) {
        ck_assert_msg(rs[i].calls == 1, "waiter %d called %d times", i, rs[i].calls);
        ck_assert_msg(rs[i].status == PX_E_TIMEOUT, "waiter %d: %s", i, px_strerror(rs[i].status));
        ck_assert_ptr_null(rs[i].e);
        /* woken by the 500 ms deadline, not at once */
        ck_assert_uint_ge(rs[i].wait_ns, 400000000ull);
    }
    st = stats(&v);
    ck_assert_uint_eq(st.failures, 1);
    ck_assert_uint_eq(st.mints, 0);
    ck_assert_uint_eq(st.entries, 0);
    hsm_pool_member_stats(v.pool, 0, &ms);
    ck_assert_uint_eq(ms.timeouts, 1); /* one HSM job for six lookups */
    ck_assert_int_eq(ms.pid, pid);     /* the signer was not replaced */
    ck_assert_uint_eq(cc_loop_pending(v.l), 0);
    ck_assert_uint_eq(cc_loop_pending(l2), 0);
    ck_assert_int_eq(cc_loop_free(l2), 0);

    /* let the resumed signer answer the stale job before a new deadline starts */
    uint64_t end = px_now_ns() + 5000000000ull;
    do {
        usleep(20000);
        hsm_pool_member_stats(v.pool, 0, &ms);
    } while (ms.inflight > 0 && px_now_ns() < end);

    /* the failure was not cached: a miss again, and this time a leaf */
    int how = -1;
    struct want w = want_of(CC_CA_TRUST, CC_KEY_EC);
    struct cc_entry *e = get_leaf(&v, up, true, CC_KEY_EC, &how);
    w.t1 = time(NULL);
    ck_assert_int_eq(how, CC_PENDING);
    check_leaf(&v, e, up, &w);
    st = stats(&v);
    ck_assert_uint_eq(st.misses, 2);
    ck_assert_uint_eq(st.mints, 1);
    ck_assert_uint_eq(st.failures, 1);
    ck_assert_uint_eq(st.entries, 1);
    struct cc_entry *e2 = get_leaf(&v, up, true, CC_KEY_EC, &how);
    ck_assert_int_eq(how, CC_HIT);
    ck_assert_ptr_eq(e2, e);
    cc_entry_unref(e2);
    cc_entry_unref(e);
    X509_free(up);
    env_close(&v);
}
END_TEST

static Suite *flight_suite(void)
{
    Suite *s = suite_create("certcache_flight");
    TCase *tc = tcase_create("flight");
    tcase_add_unchecked_fixture(tc, setup_token, teardown_token);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, single_flight_10000_requests_100_signatures);
    tcase_add_test(tc, failed_mint_wakes_all_waiters_not_cached);
    suite_add_tcase(s, tc);
    return s;
}

/* ---- the cache: bound, LRU order, TTL, counters ----------------------------------------- */

START_TEST(lru_bounded)
{
    struct env v;
    env_open(&v, "[cache]\nsize = 64\n", false);
    enum { N = 300 };
    static X509 *ups[N];
    static struct cc_entry *es[N];
    for (int i = 0; i < N; i++) {
        char name[64];
        snprintf(name, sizeof(name), "lru-%d.example.org", i);
        ups[i] = make_named(name);
        int how = -1;
        es[i] = get_leaf(&v, ups[i], false, CC_KEY_EC, &how);
        ck_assert_int_eq(how, CC_MINTED);
    }
    struct cc_stats st = stats(&v);
    /* the cap is per shard: ceil(size / 64) in each of 64 shards */
    uint64_t bound = 64 * ((64 + 63) / 64);
    ck_assert_msg(st.entries <= bound, "%llu entries for size 64", (unsigned long long)st.entries);
    ck_assert_uint_gt(st.entries, 0);
    ck_assert_uint_gt(st.evictions, 0);
    ck_assert_uint_eq(st.misses, N);
    ck_assert_uint_eq(st.mints, N);
    ck_assert_uint_eq(st.entries + st.evictions, N); /* every miss inserted one */
    /* the newest is still there */
    int how = -1;
    struct cc_entry *last = get_leaf(&v, ups[N - 1], false, CC_KEY_EC, &how);
    ck_assert_int_eq(how, CC_HIT);
    ck_assert_ptr_eq(last, es[N - 1]);
    cc_entry_unref(last);
    /* evicted leaves stay valid for whoever holds them */
    for (int i = 0; i < N; i++) {
        char name[64];
        snprintf(name, sizeof(name), "lru-%d.example.org", i);
        ck_assert_int_eq(X509_check_host(cc_entry_cert(es[i]), name, 0, 0, NULL), 1);
        cc_entry_unref(es[i]);
        X509_free(ups[i]);
    }
    env_close(&v);
}
END_TEST

/*
 * The shard an upstream lands in. This mirrors cc_cache.c (SHA-256 of the DER, byte 4 modulo
 * 64 shards): if that changes, the eviction count check below reports it.
 */
static int shard_of_up(X509 *up)
{
    unsigned char *der = NULL, md[32];
    int n = i2d_X509(up, &der);
    ck_assert_int_gt(n, 0);
    ck_assert_int_eq(EVP_Digest(der, (size_t)n, md, NULL, EVP_sha256(), NULL), 1);
    OPENSSL_free(der);
    return md[4] % 64;
}

START_TEST(lru_evicts_least_recently_used)
{
    struct env v;
    env_open(&v, "[cache]\nsize = 128\n", false); /* two per shard */
    X509 *a = make_named("lru-a.example.org");
    int shard = shard_of_up(a);
    X509 *same[2] = {NULL, NULL};
    for (int i = 0, found = 0; found < 2; i++) {
        ck_assert_int_lt(i, 5000);
        char name[64];
        snprintf(name, sizeof(name), "lru-cand-%d.example.org", i);
        X509 *x = make_named(name);
        if (shard_of_up(x) == shard) {
            same[found++] = x;
        } else {
            X509_free(x);
        }
    }
    X509 *b = same[0], *c = same[1];
    int how = -1;
    struct cc_entry *ea = get_leaf(&v, a, false, CC_KEY_EC, &how);
    struct cc_entry *eb = get_leaf(&v, b, false, CC_KEY_EC, &how);
    struct cc_entry *ea2 = get_leaf(&v, a, false, CC_KEY_EC, &how); /* a is now the newest */
    ck_assert_int_eq(how, CC_HIT);
    ck_assert_uint_eq(stats(&v).evictions, 0);
    struct cc_entry *ec = get_leaf(&v, c, false, CC_KEY_EC, &how); /* evicts b */
    ck_assert_int_eq(how, CC_MINTED);
    ck_assert_msg(stats(&v).evictions == 1, "three upstreams in one shard of two: one eviction");
    struct cc_entry *ea3 = get_leaf(&v, a, false, CC_KEY_EC, &how);
    ck_assert_int_eq(how, CC_HIT);
    ck_assert_ptr_eq(ea3, ea);
    struct cc_entry *ec2 = get_leaf(&v, c, false, CC_KEY_EC, &how);
    ck_assert_int_eq(how, CC_HIT);
    ck_assert_ptr_eq(ec2, ec);
    struct cc_entry *eb2 = get_leaf(&v, b, false, CC_KEY_EC, &how); /* b was the one evicted */
    ck_assert_int_eq(how, CC_MINTED);
    ck_assert_ptr_ne(eb2, eb);
    struct cc_entry *all[] = {ea, eb, ea2, ec, ea3, ec2, eb2};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        cc_entry_unref(all[i]);
    }
    X509_free(a);
    X509_free(b);
    X509_free(c);
    env_close(&v);
}
END_TEST

START_TEST(ttl_expiry)
{
    struct env v;
    env_open(&v, "[cache]\nttl_s = 1\n", true);
    X509 *up = make_named("ttl.example.com");
    int how = -1;
    struct cc_entry *e1 = get_leaf(&v, up, true, CC_KEY_EC, &how);
    ck_assert_int_eq(how, CC_PENDING);
    struct cc_entry *e2 = get_leaf(&v, up, true, CC_KEY_EC, &how);
    ck_assert_int_eq(how, CC_HIT);
    ck_assert_ptr_eq(e2, e1);
    ck_assert_uint_eq(stats(&v).expired, 0);
    usleep(1500000);
    struct want w = want_of(CC_CA_TRUST, CC_KEY_EC);
    struct cc_entry *e3 = get_leaf(&v, up, true, CC_KEY_EC, &how);
    w.t1 = time(NULL);
    ck_assert_int_eq(how, CC_PENDING); /* expired: a miss and a new mint */
    ck_assert_ptr_ne(e3, e1);
    check_leaf(&v, e3, up, &w);
    ck_assert_int_ne(ASN1_INTEGER_cmp(X509_get0_serialNumber(cc_entry_cert(e3)),
                                      X509_get0_serialNumber(cc_entry_cert(e1))),
                     0);
    struct cc_stats st = stats(&v);
    ck_assert_uint_eq(st.expired, 1);
    ck_assert_uint_eq(st.misses, 2);
    ck_assert_uint_eq(st.hits, 1);
    ck_assert_uint_eq(st.mints, 2);
    ck_assert_uint_eq(st.entries, 1);
    ck_assert_uint_eq(hsm_ops(&v), 2);
    /* the expired leaf is still intact for its holders */
    ck_assert_int_eq(X509_check_host(cc_entry_cert(e1), "ttl.example.com", 0, 0, NULL), 1);
    cc_entry_unref(e1);
    cc_entry_unref(e2);
    cc_entry_unref(e3);
    X509_free(up);
    env_close(&v);
}
END_TEST

static void check_stats(const struct env *v, uint64_t hits, uint64_t misses, uint64_t mints,
                        uint64_t coalesced, uint64_t failures, uint64_t entries)
{
    struct cc_stats st = stats(v);
    ck_assert_uint_eq(st.hits, hits);
    ck_assert_uint_eq(st.misses, misses);
    ck_assert_uint_eq(st.mints, mints);
    ck_assert_uint_eq(st.coalesced, coalesced);
    ck_assert_uint_eq(st.failures, failures);
    ck_assert_uint_eq(st.entries, entries);
    ck_assert_uint_eq(st.evictions, 0);
    ck_assert_uint_eq(st.expired, 0);
}

START_TEST(counters)
{
    struct env v;
    env_open(&v, NULL, true);
    check_stats(&v, 0, 0, 0, 0, 0, 0);
    X509 *up = make_named("count.example.com");
    int how = -1;
    struct cc_entry *e1 = get_leaf(&v, up, false, CC_KEY_EC, &how); /* miss, software mint */
    check_stats(&v, 0, 1, 1, 0, 0, 1);
    struct cc_entry *e2 = get_leaf(&v, up, false, CC_KEY_EC, &how); /* hit */
    check_stats(&v, 1, 1, 1, 0, 0, 1);
    ck_assert_uint_eq(stats(&v).hsm_wait_ns_total, 0); /* no HSM so far */

    /* trusted: a miss, then two lookups attached to its mint */
    struct res rs[3];
    memset(rs, 0, sizeof(rs));
    struct cc_entry *out = NULL;
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(cc_get(v.l, up, true, CC_KEY_EC, on_res, &rs[i], &out), CC_PENDING);
    }
    check_stats(&v, 1, 2, 1, 2, 0, 2); /* the minting entry already counts */
    pump1(v.l, rs, 3, 10000);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(rs[i].calls, 1);
        ck_assert_int_eq(rs[i].status, 0);
        ck_assert_ptr_eq(rs[i].e, rs[0].e);
    }
    check_stats(&v, 1, 2, 2, 2, 0, 2);
    ck_assert_uint_gt(stats(&v).hsm_wait_ns_total, 0);
    ck_assert_uint_eq(hsm_ops(&v), 1);

    /* RSA: another key */
    struct cc_entry *e3 = get_leaf(&v, up, true, CC_KEY_RSA, &how);
    check_stats(&v, 1, 3, 3, 2, 0, 3);

    /* unusable upstream: a miss that fails */
    struct upspec s = spec(NULL);
    s.email = "nobody@example.com";
    X509 *bad = make_upstream(&s);
    struct res rb = {0};
    ck_assert_int_lt(cc_get(v.l, bad, true, CC_KEY_EC, on_res, &rb, &out), 0);
    check_stats(&v, 1, 4, 3, 2, 1, 3);
    ck_assert_int_eq(rb.calls, 0);
    X509_free(bad);

    cc_entry_unref(e1);
    cc_entry_unref(e2);
    cc_entry_unref(e3);
    for (int i = 0; i < 3; i++) {
        cc_entry_unref(rs[i].e);
    }
    X509_free(up);
    env_close(&v);
}
END_TEST

static Suite *cache_suite(void)
{
    Suite *s = suite_create("certcache_cache");
    TCase *tc = tcase_create("cache");
    tcase_add_unchecked_fixture(tc, setup_token, teardown_token);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, lru_bounded);
    tcase_add_test(tc, lru_evicts_least_recently_used);
    tcase_add_test(tc, ttl_expiry);
    tcase_add_test(tc, counters);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(mint_suite());
    srunner_add_suite(sr, flight_suite());
    srunner_add_suite(sr, cache_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
