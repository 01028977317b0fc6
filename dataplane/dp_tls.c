/* SPDX-License-Identifier: MIT */
/*
 * dp_tls.c - both TLS halves of an intercepted connection: a generation's two SSL_CTXs, the
 * ClientHello callback (SNI, ALPN, signature algorithms; the handshake pauses there until the
 * leaf is ready), ALPN selection, the upstream SSL (SNI, host check, the client's ALPN), the
 * per-loop upstream session cache and the SSLKEYLOGFILE callback.
 * Owns the SSL ex_data index of the connection and the keylog sink (process-wide, set before
 * the first generation is made); per loop, the upstream session slots.
 * Threads: the contexts are made on the main thread (start, reload); the rest runs on loop
 * threads, over the sides' own BIOs (dp_buf.c), never on a socket.
 * Invariants: the client handshake passes the ClientHello callback only once c->leaf_ready
 * (or fails there when c->fail_hello); the upstream chain is verified and recorded, never
 * enforced by OpenSSL (SSL_VERIFY_NONE): the leaf stage decides (dp_leaf.c).
 * Not here: the leaf itself (dp_leaf.c, certcache/), sockets (dp_relay.c).
 */
#include "dp_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

static int g_conn_idx = -1; /* SSL ex_data index for the connection */

static struct dp_alog *g_keylog; /* SSLKEYLOGFILE sink, when [log] keylog is set */

/* The TLS 1.2 cipher suites both contexts offer (the default list), one bit per suite number;
 * filled once by the first dp_tls_ctx_init, read-only afterwards. */
static uint8_t g_c12[65536 / 8];
static bool g_c12_done;

static void c12_fill(SSL_CTX *ctx)
{
    STACK_OF(SSL_CIPHER) *sk = SSL_CTX_get_ciphers(ctx);
    for (int i = 0; i < sk_SSL_CIPHER_num(sk); i++) {
        const SSL_CIPHER *ci = sk_SSL_CIPHER_value(sk, i);
        uint16_t id = SSL_CIPHER_get_protocol_id(ci);
        if ((id >> 8) != 0x13) { /* every suite but the TLS 1.3 ones works in TLS 1.2 */
            g_c12[id >> 3] |= (uint8_t)(1u << (id & 7));
        }
    }
    g_c12_done = true;
}

static bool grease(uint16_t v)
{
    return (v & 0x0f0f) == 0x0a0a && (v >> 8) == (v & 0xff);
}

/* The versions and cipher suites a ClientHello offers, as the profile checks them (dp_policy.c):
 * DP_V* and DP_C* bits into c->hello_vers / c->hello_ciph. */
static void note_offer(struct dp_conn *c, SSL *s)
{
    const unsigned char *p;
    size_t len;
    uint8_t v = 0;
    if (SSL_client_hello_get0_ext(s, TLSEXT_TYPE_supported_versions, &p, &len) == 1 && len >= 1) {
        for (size_t i = 1; i + 1 < len && i < 1u + p[0]; i += 2) {
            uint16_t ver = (uint16_t)((p[i] << 8) | p[i + 1]);
            v |= ver == TLS1_3_VERSION ? DP_V13 : ver == TLS1_2_VERSION ? DP_V12
                 : ver < TLS1_2_VERSION && ver >= SSL3_VERSION ? DP_VOLD : 0;
        }
    } else {
        /* no list: "up to" the legacy version; older ones are not counted as offered, since
         * no current stack would take them (OpenSSL 3 refuses them at security level 1) */
        unsigned lv = SSL_client_hello_get0_legacy_version(s);
        v = lv >= TLS1_2_VERSION ? DP_V12 : DP_VOLD;
    }
    uint8_t ci = 0;
    size_t n = SSL_client_hello_get0_ciphers(s, &p);
    for (size_t i = 0; i + 1 < n; i += 2) {
        uint16_t id = (uint16_t)((p[i] << 8) | p[i + 1]);
        if (id == 0x1301 || id == 0x1302 || id == 0x1303) {
            ci |= DP_C13; /* the three suites dp_tls_ctx_init sets */
        } else if (g_c12[id >> 3] & (1u << (id & 7))) {
            ci |= DP_C12;
        } else if (id != 0x00ff && id != 0x5600 && !grease(id)) {
            ci |= DP_CEXTRA; /* not the signalling values */
        }
    }
    c->hello_vers = v;
    c->hello_ciph = ci;
}

static void keylog_cb(const SSL *ssl, const char *line)
{
    (void)ssl;
    char buf[512];
    int n = snprintf(buf, sizeof(buf), "%s\n", line);
    if (g_keylog != NULL && n > 0 && (size_t)n < sizeof(buf)) {
        dp_alog_write(g_keylog, buf, (size_t)n);
    }
}

/* Host names we accept from SNI: 1-253 bytes of letters, digits, '-', '.', '_'. */
static bool host_ok(const uint8_t *s, size_t len)
{
    if (len == 0 || len > 253) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        uint8_t ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '.' || ch == '_')) {
            return false;
        }
    }
    return true;
}

static bool is_ip_literal(const char *h)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, h, buf) == 1 || inet_pton(AF_INET6, h, buf) == 1;
}

static void sess_key(const struct dp_conn *c, char *key, size_t cap)
{
    char a[64];
    dp_addr_str(&c->dst, a, sizeof(a));
    snprintf(key, cap, "%s|%s", c->sni[0] ? c->sni : c->host, a);
}

static struct sess_slot *sess_slot_for(struct dp_loop *l, const char *key)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *p = key; *p; p++) {
        h = (h ^ (uint8_t)*p) * 1099511628211ull;
    }
    return &l->sess[h % l->nsess];
}

/* Keeps the upstream session of a cleanly finished connection for the next one. */
void dp_tls_sess_store(struct dp_conn *c)
{
    struct side *u = &c->s[D_UP];
    if (u->ssl == NULL || c->outcome != O_OK || !SSL_is_init_finished(u->ssl) ||
        c->loop->sess == NULL) {
        return;
    }
    SSL_SESSION *s = SSL_get1_session(u->ssl);
    if (s == NULL || !SSL_SESSION_is_resumable(s)) {
        SSL_SESSION_free(s);
        return;
    }
    char key[300];
    sess_key(c, key, sizeof(key));
    struct sess_slot *slot = sess_slot_for(c->loop, key);
    SSL_SESSION_free(slot->sess);
    slot->sess = s;
    snprintf(slot->key, sizeof(slot->key), "%s", key);
    /* SSL_free without a shutdown would mark the session not resumable */
    SSL_set_shutdown(u->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
}

int dp_tls_upstream_start(struct dp_conn *c)
{
    struct side *u = &c->s[D_UP];
    BIO_free(u->out);
    u->out = NULL;
    u->ssl = SSL_new(c->g->uctx);
    BIO *rb = dp_bio_in_new(u), *wb = dp_bio_out_new(u);
    if (u->ssl == NULL || rb == NULL || wb == NULL) {
        BIO_free(rb);
        BIO_free(wb);
        return PX_E_CRYPTO;
    }
    SSL_set_bio(u->ssl, rb, wb);
    SSL_set_ex_data(u->ssl, g_conn_idx, c);
    u->in = rb;
    u->out = wb;
    SSL_set_connect_state(u->ssl);
    const struct px_profile *pf = px_cfg_profile(c->g->cfg, c->profile);
    if (!c->proving && (pf->min_version != TLS1_2_VERSION || pf->max_version != TLS1_3_VERSION)) {
        SSL_set_min_proto_version(u->ssl, pf->min_version);
        SSL_set_max_proto_version(u->ssl, pf->max_version);
    }
    dp_ocsp_upstream_start(c, pf);
    const char *name = c->sni[0] ? c->sni : c->host;
    if (name[0] && !is_ip_literal(name)) {
        SSL_set_tlsext_host_name(u->ssl, name);
        SSL_set1_host(u->ssl, name);
    } else {
        char ip[INET6_ADDRSTRLEN] = "";
        if (c->dst.ss_family == AF_INET) {
            inet_ntop(AF_INET, &((struct sockaddr_in *)&c->dst)->sin_addr, ip, sizeof(ip));
        } else {
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&c->dst)->sin6_addr, ip, sizeof(ip));
        }
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(u->ssl), name[0] ? name : ip);
    }
    if (c->alpn_len > 0) {
        SSL_set_alpn_protos(u->ssl, c->alpn, c->alpn_len);
    }
    /* no resumption where the status is checked: a resumed session has no chain to ask about */
    if (c->loop->sess != NULL && pf->ocsp == PX_OCSP_OFF) {
        char key[300];
        sess_key(c, key, sizeof(key));
        struct sess_slot *slot = sess_slot_for(c->loop, key);
        if (slot->sess != NULL && strcmp(slot->key, key) == 0) {
            SSL_set_session(u->ssl, slot->sess);
        }
    }
    dp_conn_enter(c, S_UP_HANDSHAKE);
    return 0;
}

void dp_tls_refuse(struct dp_conn *c, enum dp_outcome why)
{
    /* the ClientHello callback aborts with handshake_failure; then flush the alert and close */
    c->fail_hello = true;
    c->outcome = why;
    dp_conn_enter(c, S_CLIENT_HANDSHAKE);
}

void dp_tls_deny(struct dp_conn *c)
{
    c->fail_hello = true;
    c->fail_alert = SSL_AD_ACCESS_DENIED;
    c->outcome = O_BLOCKED;
    dp_conn_enter(c, S_CLIENT_HANDSHAKE);
}

/* Reads SNI, ALPN and signature algorithms; pauses the handshake until the leaf is there. */
static int client_hello_cb(SSL *s, int *al, void *arg)
{
    (void)arg;
    struct dp_conn *c = SSL_get_ex_data(s, g_conn_idx);
    if (c == NULL) {
        *al = SSL_AD_INTERNAL_ERROR;
        return SSL_CLIENT_HELLO_ERROR;
    }
    if (c->fail_hello) {
        *al = c->fail_alert != 0 ? c->fail_alert : SSL_AD_HANDSHAKE_FAILURE;
        return SSL_CLIENT_HELLO_ERROR;
    }
    if (c->leaf_ready) {
        return SSL_CLIENT_HELLO_SUCCESS;
    }
    if (!c->hello_seen) {
        const unsigned char *p;
        size_t len;
        c->hello_seen = true;
        if (SSL_client_hello_get0_ext(s, TLSEXT_TYPE_server_name, &p, &len) == 1 && len >= 5) {
            size_t list = ((size_t)p[0] << 8) | p[1];
            size_t nl = ((size_t)p[3] << 8) | p[4];
            if (list + 2 <= len && p[2] == 0 && nl + 5 <= len && host_ok(p + 5, nl)) {
                memcpy(c->sni, p + 5, nl);
                c->sni[nl] = '\0';
            } else {
                PX_LOG_RL(PX_LOG_DEBUG, "dp", "conn=%u:%u unusable SNI (%zu bytes) ignored",
                          c->slot, c->gen, len);
            }
        }
        if (SSL_client_hello_get0_ext(s, TLSEXT_TYPE_application_layer_protocol_negotiation, &p,
                                      &len) == 1 &&
            len >= 2) {
            size_t list = ((size_t)p[0] << 8) | p[1];
            if (list + 2 == len && list < sizeof(c->alpn)) {
                memcpy(c->alpn, p + 2, list);
                c->alpn_len = (uint32_t)list;
            }
        }
        note_offer(c, s);
        /* RSA leaf only for clients that offer no ECDSA signature algorithm */
        c->keykind = CC_KEY_EC;
        if (SSL_client_hello_get0_ext(s, TLSEXT_TYPE_signature_algorithms, &p, &len) == 1 &&
            len >= 2) {
            bool ecdsa = false;
            for (size_t i = 2; i + 1 < len; i += 2) {
                if (p[i + 1] == 0x03) { /* ecdsa_* (SignatureScheme low byte 3) */
                    ecdsa = true;
                }
            }
            if (!ecdsa) {
                c->keykind = CC_KEY_RSA;
            }
        }
    }
    return SSL_CLIENT_HELLO_RETRY;
}

/* The upstream sent a CertificateRequest: pause its handshake (SSL_ERROR_WANT_X509_LOOKUP), so
 * the leaf stage can pass the connection through instead of failing it (dp_leaf_client_auth). */
static int client_cert_cb(SSL *s, X509 **x509, EVP_PKEY **pkey)
{
    (void)x509;
    (void)pkey;
    struct dp_conn *c = SSL_get_ex_data(s, g_conn_idx);
    if (c == NULL) {
        return 0;
    }
    c->up_client_auth = true;
    return -1;
}

/* Notes the alerts a client sends: a pinned app rejects our leaf with one. */
static void info_cb(const SSL *s, int where, int ret)
{
    if (where & SSL_CB_READ_ALERT) {
        struct dp_conn *c = SSL_get_ex_data(s, g_conn_idx);
        if (c != NULL) {
            c->client_alert = (uint8_t)(ret & 0xff);
        }
    }
}

static int alpn_select_cb(SSL *s, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)arg;
    struct dp_conn *c = SSL_get_ex_data(s, g_conn_idx);
    if (c == NULL || c->alpn_sel_len == 0) {
        return SSL_TLSEXT_ERR_NOACK;
    }
    for (unsigned int i = 0; i < inlen;) {
        unsigned int l = in[i];
        if (i + 1 + l > inlen) {
            break;
        }
        if (l == c->alpn_sel_len && memcmp(in + i + 1, c->alpn_sel, l) == 0) {
            *out = in + i + 1;
            *outlen = (unsigned char)l;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + l;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

int dp_tls_client_start(struct dp_conn *c)
{
    struct side *cl = &c->s[D_CLIENT];
    BIO *keep_out = cl->out; /* may already hold "200 Connection established" */
    cl->ssl = SSL_new(c->g->sctx);
    BIO *rb = dp_bio_in_new(cl);
    if (cl->ssl == NULL || rb == NULL) {
        BIO_free(rb);
        return PX_E_CRYPTO;
    }
    SSL_set_bio(cl->ssl, rb, keep_out);
    cl->in = rb;
    SSL_set_ex_data(cl->ssl, g_conn_idx, c);
    SSL_set_accept_state(cl->ssl);
    c->hello = malloc(DP_HELLO_MAX);
    if (c->hello == NULL) {
        return -ENOMEM;
    }
    return 0;
}

/* Client bytes that arrive before the handshake is decided are kept for a replay (bypass). */
void dp_tls_hello_keep(struct dp_conn *c, const uint8_t *p, size_t n)
{
    if ((c->state == S_CLIENT_HELLO || c->state == S_FIRST_BYTE || c->tunnel) &&
        c->hello != NULL) {
        if (c->hello_len + n <= DP_HELLO_MAX) {
            memcpy(c->hello + c->hello_len, p, n);
            c->hello_len += (uint32_t)n;
        } else {
            c->hello_overflow = true;
        }
    }
}

void dp_tls_client_bytes(struct dp_conn *c, const uint8_t *p, size_t n)
{
    dp_tls_hello_keep(c, p, n);
    BIO_write(c->s[D_CLIENT].in, p, (int)n); /* a copy, as the side's input */
}

/*
 * The TLS half of a generation: both SSL_CTXs, the trust store loaded once. Fills g->sctx and
 * g->uctx (freed with the generation, also on failure); a negative value and one line in err.
 */
int dp_tls_ctx_init(struct dp_gen *g, const struct px_cfg *cfg, char *err, size_t errlen)
{
    if (g_conn_idx < 0) {
        g_conn_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    }
    g->sctx = SSL_CTX_new(TLS_server_method());
    g->uctx = SSL_CTX_new(TLS_client_method());
    if (g->sctx == NULL || g->uctx == NULL) {
        snprintf(err, errlen, "cannot create TLS contexts");
        return PX_E_CRYPTO;
    }
    SSL_CTX_set_min_proto_version(g->sctx, TLS1_2_VERSION);
    SSL_CTX_set_min_proto_version(g->uctx, TLS1_2_VERSION);
    /* OpenSSL frees its record buffers when a record is done; what it keeps (the upstream's
     * read buffer after its session tickets, measured) dp_buf_sweep frees once quiet. Keeping
     * them while bytes flow instead made no difference to bulk CPU here (interleaved runs) */
    SSL_CTX_set_mode(g->sctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_mode(g->uctx, SSL_MODE_RELEASE_BUFFERS);
    /* both halves re-encrypt every byte: prefer AES-128-GCM (~10-15 % cheaper than AES-256 here,
     * OPENSSL-NOTES.md); clients and upstreams without it still get what they offer */
    static const char suites[] =
        "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
    SSL_CTX_set_ciphersuites(g->sctx, suites);
    SSL_CTX_set_ciphersuites(g->uctx, suites);
    SSL_CTX_set_options(g->sctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (!g_c12_done) {
        c12_fill(g->sctx);
    }
    SSL_CTX_set_client_hello_cb(g->sctx, client_hello_cb, NULL);
    SSL_CTX_set_alpn_select_cb(g->sctx, alpn_select_cb, NULL);
    SSL_CTX_set_info_callback(g->sctx, info_cb);
    SSL_CTX_set_client_cert_cb(g->uctx, client_cert_cb);
    SSL_CTX_set_verify(g->uctx, SSL_VERIFY_NONE, NULL); /* verified, recorded, decided by us */
    if (SSL_CTX_load_verify_locations(g->uctx, cfg->upstream_ca_file, NULL) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "[upstream] ca_file %s cannot be loaded", cfg->upstream_ca_file);
        return PX_E_CONFIG;
    }
    if (g_keylog != NULL) {
        SSL_CTX_set_keylog_callback(g->sctx, keylog_cb);
        SSL_CTX_set_keylog_callback(g->uctx, keylog_cb);
    }
    return 0;
}

void dp_tls_keylog_set(struct dp_alog *a)
{
    g_keylog = a;
}
