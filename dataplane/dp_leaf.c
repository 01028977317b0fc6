/* SPDX-License-Identifier: MIT */
/*
 * dp_leaf.c - the leaf for the client: once the upstream handshake is done, the upstream's
 * certificate goes to certcache (a hit, a single-flight mint through the HSM, or a refusal), and
 * the answer resumes the paused client handshake. Here too the HSM failure policy: fail closed
 * refuses the handshake, fail open replays the kept ClientHello on a fresh upstream connection
 * and splices.
 * Owns the connection's leaf reference from cc_get until dp_conn_release drops it.
 * Threads: loop threads; a mint's answer comes back on the loop that asked (on_leaf runs
 * inside cc_loop_poll).
 * Invariants: an answer for a connection that has gone (or left S_MINTING) only drops the entry.
 * Block pages get a leaf too: certcache mints it from a stand-in upstream certificate that
 * carries only the name (deterministic, so the cache serves it again).
 * Not here: building and signing leaves (certcache/, hsm_offload/).
 */
#include "dp_int.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

static void on_leaf(void *user, int status, struct cc_entry *e, uint64_t wait_ns);
static bool apply_status(struct dp_conn *c, const struct px_profile *pf, int st);
static void leaf_for(struct dp_conn *c, X509 *peer);

static void resume_client(struct dp_conn *c)
{
    struct side *cl = &c->s[D_CLIENT];
    if (SSL_use_cert_and_key(cl->ssl, cc_entry_cert(c->leaf), cc_entry_key(c->leaf),
                             cc_entry_chain(c->leaf), 1) != 1) {
        px_log_ossl_errors("SSL_use_cert_and_key");
        c->fail_hello = true;
    }
    c->leaf_ready = true;
    dp_conn_enter(c, S_CLIENT_HANDSHAKE);
}

/*
 * No leaf because the HSM cannot sign (down, queue full, deadline missed). fail_mode closed:
 * refuse the handshake. open: pass the connection through untouched, on a fresh upstream
 * connection, by replaying the kept ClientHello bytes; the used upstream is dropped first.
 */
static void no_leaf(struct dp_conn *c, int status)
{
    struct dp_loop *l = c->loop;
    bool open = c->g->cfg->fail_mode == PX_FAIL_OPEN && !c->hello_overflow && c->hello_len > 0;
    PX_LOG_RL(PX_LOG_WARN, "dp", "conn=%u:%u %s: no leaf: %s (fail %s)", c->slot, c->gen, c->host,
              px_strerror(status), open ? "open: passing through" : "closed");
    if (!open) {
        atomic_fetch_add_explicit(&l->ctr.refused_hsm, 1, memory_order_relaxed);
        dp_tls_refuse(c, O_REFUSED_HSM);
        return;
    }
    atomic_fetch_add_explicit(&l->ctr.fail_open, 1, memory_order_relaxed);
    c->fail_open = true;
    c->outcome = O_FAIL_OPEN;
    dp_conn_enter(c, S_REOPEN);
    if (c->s[D_UP].fd >= 0) {
        shutdown(c->s[D_UP].fd, SHUT_RDWR); /* wakes its pending recv */
    }
}

void dp_leaf_client_auth(struct dp_conn *c)
{
    const struct px_cfg *cfg = c->g->cfg;
    bool block = c->profile >= 0 && cfg->profiles[c->profile].client_auth_block;
    if (block) {
        dp_policy_block(c, "client-auth");
        return;
    }
    long vr = SSL_get_verify_result(c->s[D_UP].ssl);
    if (c->hello_overflow || c->hello_len == 0 || (vr != X509_V_OK && cfg->upstream_verify)) {
        /* nothing to replay; or an upstream whose certificate does not verify for the name
         * would buy itself a pass by asking for a client certificate */
        PX_LOG_RL(PX_LOG_INFO, "dp", "conn=%u:%u %s asks for a client certificate: refused (%s)",
               c->slot, c->gen, c->host,
               vr != X509_V_OK ? X509_verify_cert_error_string(vr) : "ClientHello not kept");
        c->verify_result = vr;
        dp_tls_refuse(c, O_UPSTREAM_FAILED);
        return;
    }
    if (c->proving) {
        /* an excluded name being proven: the certificate verified, so the name is proven */
        c->verify_result = vr;
        if (!dp_policy_proof_done(c) && c->state == S_UP_HANDSHAKE) {
            dp_tls_refuse(c, O_UPSTREAM_FAILED); /* not proven: cannot inspect it either */
        }
        return;
    }
    char key[256];
    dp_policy_excl_key(c, key, sizeof(key));
    dp_excl_add(c->loop->srv->excl, key, c->port, DP_EXCL_CLIENT_AUTH, cfg->excl_ttl_s);
    PX_LOG_RL(PX_LOG_INFO, "dp",
              "conn=%u:%u %s:%u asks for a client certificate: excluded for %d s, "
           "passed through", c->slot, c->gen, key, c->port, cfg->excl_ttl_s);
    c->excluding = true;
    c->action = PX_ACT_BYPASS;
    c->reason = "client-auth";
    c->outcome = O_EXCLUDED;
    dp_conn_enter(c, S_REOPEN);
    if (c->s[D_UP].fd >= 0) {
        shutdown(c->s[D_UP].fd, SHUT_RDWR); /* wakes its pending recv */
    }
}

/* S_REOPEN: once nothing of the old upstream is in flight, connect a new one. */
void dp_leaf_reopen(struct dp_conn *c)
{
    struct side *u = &c->s[D_UP];
    if (u->recv_armed || u->send_armed) {
        return;
    }
    if (u->fd >= 0) {
        close(u->fd);
        u->fd = -1;
    }
    if (u->ssl != NULL) {
        SSL_free(u->ssl); /* and its BIOs */
        u->ssl = NULL;
        u->in = NULL;
    } else {
        BIO_free(u->out);
    }
    u->out = dp_bio_out_new(u);
    dp_buf_in_drop(u);
    dp_buf_out_drop(u); /* what the old upstream was sent is not the new one's */
    u->eof = u->err = false;
    c->up_connected = false;
    c->up_deadline_ns = 0;
    dp_conn_connect(c);
}

void dp_leaf_get(struct dp_conn *c)
{
    struct dp_loop *l = c->loop;
    struct side *u = &c->s[D_UP];
    X509 *peer = SSL_get0_peer_certificate(u->ssl);
    c->verify_result = SSL_get_verify_result(u->ssl);
    c->up_resumed = SSL_session_reused(u->ssl) == 1;
    atomic_fetch_add_explicit(c->up_resumed ? &l->ctr.up_resumed : &l->ctr.up_full, 1,
                              memory_order_relaxed);
    c->verified = !c->g->cfg->upstream_verify || c->verify_result == X509_V_OK;
    const unsigned char *sel = NULL;
    unsigned int sl = 0;
    SSL_get0_alpn_selected(u->ssl, &sel, &sl);
    if (sl > 0 && sl < sizeof(c->alpn_sel)) {
        memcpy(c->alpn_sel, sel, sl);
        c->alpn_sel_len = sl;
    }
    if (c->proving && (dp_policy_proof_done(c) || c->state != S_UP_HANDSHAKE)) {
        return; /* proven: spliced on a fresh upstream; or blocked as unproven */
    }
    if (peer == NULL) {
        dp_tls_refuse(c, O_UPSTREAM_FAILED);
        return;
    }
    const struct px_profile *pf = px_cfg_profile(c->g->cfg, c->profile);
    if (!c->verified) {
        /* the profile may block what would otherwise get a forward-untrust leaf */
        bool expired = c->verify_result == X509_V_ERR_CERT_HAS_EXPIRED ||
                       c->verify_result == X509_V_ERR_CERT_NOT_YET_VALID;
        if ((expired ? pf->expired : pf->untrusted_issuer) == PX_CERT_BLOCK) {
            dp_policy_block(c, expired ? "expired" : "untrusted-issuer");
            return;
        }
    }
    if (pf->ocsp != PX_OCSP_OFF && c->verify_result == X509_V_OK) {
        int st = dp_ocsp_status(c, pf);
        if (st == DP_CS_PENDING || !apply_status(c, pf, st)) {
            return; /* S_STATUS until the responder answers; or blocked */
        }
    }
    leaf_for(c, peer);
}

/*
 * What the certificate's status gets from the profile: revoked (revoked), unknown
 * (unknown_status), no answer (status_timeout): allow leaves the leaf as it is, untrust makes it
 * a forward-untrust leaf, block blocks (false: c has moved on). Good or unchecked: true.
 */
static bool apply_status(struct dp_conn *c, const struct px_profile *pf, int st)
{
    c->ocsp_status = (uint8_t)st;
    enum px_status_action a;
    const char *why;
    switch (st) {
    case DP_CS_REVOKED:
        a = pf->revoked;
        why = "revoked";
        break;
    case DP_CS_UNKNOWN:
        a = pf->unknown_status;
        why = "ocsp-unknown";
        break;
    case DP_CS_TIMEOUT:
        a = pf->status_timeout;
        why = "ocsp-timeout";
        break;
    case DP_CS_ERROR:
        a = pf->status_timeout;
        why = "ocsp-error";
        break;
    default:
        return true;
    }
    c->reason = why;
    if (a == PX_STATUS_BLOCK) {
        dp_policy_block(c, why);
        return false;
    }
    if (a == PX_STATUS_UNTRUST) {
        c->verified = false; /* the user sees the problem, as with a chain that fails */
    }
    return true;
}

void dp_leaf_status(struct dp_conn *c, int status)
{
    if (!apply_status(c, px_cfg_profile(c->g->cfg, c->profile), status)) {
        return;
    }
    X509 *peer = SSL_get0_peer_certificate(c->s[D_UP].ssl);
    if (peer == NULL) {
        dp_tls_refuse(c, O_UPSTREAM_FAILED);
        return;
    }
    leaf_for(c, peer);
}

/* The leaf for the upstream certificate peer (borrowed): from the cache, or minted. */
static void leaf_for(struct dp_conn *c, X509 *peer)
{
    struct dp_loop *l = c->loop;
    struct cc_entry *e = NULL;
    int r = cc_get(l->ccl, peer, c->verified, c->keykind, on_leaf, (void *)(uintptr_t)dp_conn_token(c),
                   &e);
    if (r == CC_HIT || r == CC_MINTED) {
        c->cache_result = r == CC_HIT ? "hit" : "minted";
        atomic_fetch_add_explicit(r == CC_HIT ? &l->ctr.cache_hit : &l->ctr.cache_miss, 1,
                                  memory_order_relaxed);
        c->leaf = e;
        resume_client(c);
    } else if (r == CC_PENDING) {
        c->cache_result = "miss";
        atomic_fetch_add_explicit(&l->ctr.cache_miss, 1, memory_order_relaxed);
        dp_conn_enter(c, S_MINTING);
    } else if (r == PX_E_INVAL) {
        /* the upstream certificate itself cannot be mirrored: never pass it through */
        dp_tls_refuse(c, O_UPSTREAM_FAILED);
    } else {
        no_leaf(c, r);
    }
}

static void on_leaf(void *user, int status, struct cc_entry *e, uint64_t wait_ns)
{
    struct dp_loop *l = dp_loop_cur;
    struct dp_conn *c = dp_conn_by_token(l, (uint64_t)(uintptr_t)user);
    if (c == NULL || c->state != S_MINTING) {
        cc_entry_unref(e); /* the connection went away meanwhile */
        return;
    }
    c->hsm_wait_ns = wait_ns;
    if (status == PX_E_INVAL || status == PX_E_CRYPTO) {
        dp_tls_refuse(c, O_UPSTREAM_FAILED);
    } else if (status != 0) {
        no_leaf(c, status);
    } else {
        if (cc_entry_shared(e)) {
            c->cache_result = "shared"; /* another node of the fleet minted it */
        }
        c->leaf = e;
        resume_client(c);
    }
    dp_conn_run(c);
}

/*
 * A stand-in upstream certificate for name: CN (when it fits) and one SAN, fixed serial and
 * validity, signed with the generation's Ed25519 key. Ed25519 signatures are deterministic, so
 * the same name gives the same DER and certcache's key, and the HSM signs one leaf per name
 * and generation. Returns a new X509 or NULL.
 */
static X509 *page_cert(const struct dp_gen *g, const char *name)
{
    X509 *x = X509_new();
    X509_NAME *n = X509_NAME_new();
    GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
    GENERAL_NAME *gn = GENERAL_NAME_new();
    ASN1_IA5STRING *ia5 = NULL;
    ASN1_OCTET_STRING *ip = NULL;
    bool ok = x != NULL && n != NULL && gens != NULL && gn != NULL && g->page_key != NULL;
    const char *cn = strlen(name) <= 64 ? name : "tlsmint block page";
    uint8_t bin[16];
    int iplen = inet_pton(AF_INET, name, bin) == 1    ? 4
                : inet_pton(AF_INET6, name, bin) == 1 ? 16
                                                      : 0;
    ok = ok && X509_set_version(x, 2) == 1 && ASN1_INTEGER_set(X509_get_serialNumber(x), 1) == 1;
    ok = ok && X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1,
                                          -1, 0) == 1;
    ok = ok && X509_set_subject_name(x, n) == 1 && X509_set_issuer_name(x, n) == 1;
    ok = ok && ASN1_TIME_set_string(X509_getm_notBefore(x), "20240101000000Z") == 1 &&
         ASN1_TIME_set_string(X509_getm_notAfter(x), "20991231235959Z") == 1;
    ok = ok && X509_set_pubkey(x, g->page_key) == 1;
    if (ok && iplen > 0) {
        ip = ASN1_OCTET_STRING_new();
        ok = ip != NULL && ASN1_OCTET_STRING_set(ip, bin, iplen) == 1;
        if (ok) {
            GENERAL_NAME_set0_value(gn, GEN_IPADD, ip);
            ip = NULL;
        }
    } else if (ok) {
        ia5 = ASN1_IA5STRING_new();
        ok = ia5 != NULL && ASN1_STRING_set(ia5, name, -1) == 1;
        if (ok) {
            GENERAL_NAME_set0_value(gn, GEN_DNS, ia5);
            ia5 = NULL;
        }
    }
    ok = ok && sk_GENERAL_NAME_push(gens, gn) > 0;
    if (ok) {
        gn = NULL; /* the stack's */
        ok = X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, 0) == 1;
    }
    ok = ok && X509_sign(x, g->page_key, NULL) > 0;
    ASN1_IA5STRING_free(ia5);
    ASN1_OCTET_STRING_free(ip);
    GENERAL_NAME_free(gn);
    GENERAL_NAMES_free(gens);
    X509_NAME_free(n);
    if (!ok) {
        px_log_ossl_errors("block page certificate");
        X509_free(x);
        return NULL;
    }
    return x;
}

static void on_page_leaf(void *user, int status, struct cc_entry *e, uint64_t wait_ns)
{
    struct dp_loop *l = dp_loop_cur;
    struct dp_conn *c = dp_conn_by_token(l, (uint64_t)(uintptr_t)user);
    if (c == NULL || c->state != S_MINTING) {
        cc_entry_unref(e);
        return;
    }
    c->hsm_wait_ns = wait_ns;
    if (status != 0) {
        dp_tls_deny(c); /* no leaf for the page: the alert says as much */
    } else {
        c->leaf = e;
        resume_client(c);
    }
    dp_conn_run(c);
}

void dp_leaf_for_page(struct dp_conn *c)
{
    struct dp_loop *l = c->loop;
    X509 *x = page_cert(c->g, c->sni[0] ? c->sni : c->host);
    struct cc_entry *e = NULL;
    int r = x == NULL ? PX_E_CRYPTO
                      : cc_get(l->ccl, x, true, c->keykind, on_page_leaf,
                               (void *)(uintptr_t)dp_conn_token(c), &e);
    X509_free(x);
    if (r == CC_HIT || r == CC_MINTED) {
        c->cache_result = r == CC_HIT ? "hit" : "minted";
        c->leaf = e;
        resume_client(c);
    } else if (r == CC_PENDING) {
        c->cache_result = "miss";
        dp_conn_enter(c, S_MINTING);
    } else {
        dp_tls_deny(c); /* never fail open here: a blocked connection stays blocked */
    }
}
