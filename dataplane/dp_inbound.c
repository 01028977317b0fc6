/* SPDX-License-Identifier: MIT */
/*
 * dp_inbound.c - inbound inspection: listeners that terminate TLS for the organisation's own
 * servers ([inbound.NAME]) with a certificate whose private key lives in the HSM, and pass the
 * decrypted bytes on to a backend (plain TCP, or TLS verified against backend_ca).
 * A connection of an inbound listener ("mode inbound") goes
 *   IN_HANDSHAKE -(the key's signature: job submitted, handshake paused)-> IN_SIGNING
 *     -(completion on the loop's eventfd)-> IN_HANDSHAKE -> UP_CONNECTING (the backend)
 *     -> IN_RELAY (plain backend) | IN_BACKEND_TLS -> RELAY (TLS backend, dp_relay.c)
 * Each full handshake costs one signature by the server key (CertificateVerify in TLS 1.3,
 * ServerKeyExchange in TLS 1.2), made by hsm_offload's signers like a minting signature, never
 * on the loop: the key is an OpenSSL key of our own provider (dp_hsmkey.c) whose sign function
 * calls dp_inbound_sign, which submits the digest and pauses the SSL's async job
 * (SSL_MODE_ASYNC); SSL_do_handshake then returns SSL_ERROR_WANT_ASYNC and the connection waits
 * in IN_SIGNING, reading nothing, until the completion resumes it. The sign deadline, a full
 * queue or no HSM end the handshake at once with an alert: without the key there is no
 * handshake (there is no fail open here). Resumed handshakes (session tickets, keys made at
 * start, kept in memory only, rotated every [inbound] ticket_rotate_s) need no signature.
 * TLS 1.3, and TLS 1.2 with ECDHE suites only; a client that offers only RSA key exchange gets
 * handshake_failure and a log line saying so.
 *
 * Owns: the listeners' sockets (one per loop and listener, SO_REUSEPORT), their SSL_CTXs (server
 * side in dp_hsmkey's library context; backend side), the HSM keys, the ticket keys, each
 * loop's completion queue for inbound signatures, and each inbound connection's struct
 * dp_inb_conn (the signature it waits for).
 * Threads: contexts, keys and sockets are made and freed on the main thread; everything else
 * runs on the loop thread of the connection. Ticket keys are shared by the loops (a mutex, held
 * for a copy).
 * Invariants: a connection whose async job is paused is resumed before its SSL is freed (a
 * paused job would leak); every submitted signature comes back on the loop's queue exactly
 * once, so a loop ends only when none is pending; the private keys are never in this process.
 * Not here: the OpenSSL provider (dp_hsmkey.c), the byte pump (dp_relay.c), the stage table
 * (dp_conn.c), the signer processes (hsm_offload/).
 */
#include "dp_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/async.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

enum inb_hsm { INB_IDLE = 0, INB_INFLIGHT };

/* An inbound connection's own state (the part a forward-proxy connection does not have). */
struct dp_inb_conn {
    enum inb_hsm hsm;    /* a signature submitted, the handshake paused */
    int sign_status;     /* 0, or why the signature failed (PX_E_TIMEOUT, PX_E_DOWN, ...) */
    bool signed_once;    /* a full handshake: the HSM was asked */
    bool rsa_only;       /* the ClientHello offered no ECDHE and no TLS 1.3 suite */
    bool resumed;
    bool cl_done;        /* relay: the client will send nothing more (close_notify, or EOF) */
    uint16_t sig_len;
    uint8_t sig[HSM_SIG_MAX];
};

struct tkey {
    uint8_t name[16], aes[32], hmac[32];
    bool set;
};

struct dp_inb_listener {
    const struct px_inbound_cfg *cfg; /* borrowed from the server's first configuration */
    int idx;
    SSL_CTX *sctx;                    /* client-facing: our certificate, the HSM key */
    SSL_CTX *bctx;                    /* backend_tls: verifies the backend */
    EVP_PKEY *key;
    struct sockaddr_storage backend;
    socklen_t backend_len;
    uint16_t backend_port;
    int port;                         /* bound port */
    pthread_mutex_t tk_lock;
    struct tkey tk[2];                /* [0] issues tickets, [1] the one before still decrypts */
    uint64_t tk_next_ns, tk_period_ns;
    _Atomic uint64_t full, resumed, failed, refused_rsa, refused_hsm, backend_failed;
};

struct dp_inbound {
    int n;
    struct dp_inb_listener l[PX_INBOUND_MAX];
    _Atomic uint64_t sign_ok, sign_failed, sign_refused;
};

/* Per loop: its sockets of every listener, and the queue its signatures come back on. */
struct dp_inb_loop {
    int lfd[PX_INBOUND_MAX];
    bool armed[PX_INBOUND_MAX];
    struct hsm_cq *cq;
    uint64_t cq_val;
    uint32_t pending; /* signatures submitted, completion not yet drained */
};

static int g_inb_idx = -1;                /* SSL ex_data: the connection */
static __thread struct dp_conn *g_cur;    /* whose SSL_do_handshake runs on this thread now */

static struct dp_inb_listener *listener_of(const struct dp_conn *c)
{
    return &c->loop->srv->inb->l[c->inbound - 1];
}

const char *dp_inbound_name(const struct dp_conn *c)
{
    return c->inbound != 0 ? listener_of(c)->cfg->name : "";
}

bool dp_inbound_resumed(const struct dp_conn *c)
{
    return c->inb != NULL && c->inb->resumed;
}

/* ---- session tickets ------------------------------------------------------------------------ */

static int tkey_fill(struct tkey *k)
{
    k->set = RAND_bytes(k->name, sizeof(k->name)) == 1 && RAND_bytes(k->aes, sizeof(k->aes)) == 1 &&
             RAND_priv_bytes(k->hmac, sizeof(k->hmac)) == 1;
    return k->set ? 0 : PX_E_CRYPTO;
}

/* A new issuing key every period; the previous one keeps decrypting for one more period. */
static void tkey_rotate_locked(struct dp_inb_listener *L, uint64_t now)
{
    if (now < L->tk_next_ns) {
        return;
    }
    struct tkey fresh;
    if (tkey_fill(&fresh) != 0) {
        return; /* keep the old key rather than issue none; tried again next time */
    }
    OPENSSL_cleanse(&L->tk[1], sizeof(L->tk[1]));
    L->tk[1] = L->tk[0];
    L->tk[0] = fresh;
    OPENSSL_cleanse(&fresh, sizeof(fresh));
    L->tk_next_ns = now + L->tk_period_ns;
}

static int ticket_cb(SSL *s, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx,
                     EVP_MAC_CTX *hctx, int enc)
{
    struct dp_inb_listener *L = SSL_CTX_get_app_data(SSL_get_SSL_CTX(s));
    struct tkey k;
    int which = -1;
    pthread_mutex_lock(&L->tk_lock);
    tkey_rotate_locked(L, px_now_ns());
    for (int i = 0; i < 2; i++) {
        if (L->tk[i].set && (enc ? i == 0 : memcmp(name, L->tk[i].name, 16) == 0)) {
            k = L->tk[i];
            which = i;
            break;
        }
    }
    pthread_mutex_unlock(&L->tk_lock);
    if (which < 0) {
        return 0; /* a ticket of a key we no longer have: a full handshake */
    }
    int r = enc ? 1 : (which == 0 ? 1 : 2); /* 2: decrypted with the old key, issue a new one */
    if (enc && RAND_bytes(iv, 16) != 1) {
        r = -1;
    }
    if (enc) {
        memcpy(name, k.name, 16);
    }
    OSSL_PARAM p[] = {OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, k.hmac, sizeof(k.hmac)),
                      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
                      OSSL_PARAM_construct_end()};
    if (r > 0 && ((enc ? EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k.aes, iv)
                       : EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k.aes, iv)) != 1 ||
                  EVP_MAC_CTX_set_params(hctx, p) != 1)) {
        r = -1;
    }
    OPENSSL_cleanse(&k, sizeof(k));
    return r;
}

/* ---- TLS contexts ----------------------------------------------------------------------------- */

/* The client offers no ECDHE suite and no TLS 1.3: refused with handshake_failure, and said. */
static int hello_cb(SSL *s, int *al, void *arg)
{
    (void)arg;
    struct dp_conn *c = SSL_get_ex_data(s, g_inb_idx);
    const unsigned char *ciphers = NULL;
    size_t n = SSL_client_hello_get0_ciphers(s, &ciphers);
    for (size_t i = 0; i + 1 < n; i += 2) {
        if (ciphers[i] == 0x13) {
            return SSL_CLIENT_HELLO_SUCCESS; /* a TLS 1.3 suite: (EC)DHE always */
        }
        /* (the renegotiation SCSV counts as "any" key exchange: not a way in) */
        const SSL_CIPHER *sc = SSL_CIPHER_find(s, ciphers + i);
        if (sc != NULL && SSL_CIPHER_get_kx_nid(sc) == NID_kx_ecdhe) {
            return SSL_CLIENT_HELLO_SUCCESS;
        }
    }
    if (c != NULL && c->inb != NULL) {
        c->inb->rsa_only = true;
    }
    *al = SSL_AD_HANDSHAKE_FAILURE;
    return SSL_CLIENT_HELLO_ERROR;
}

/* Our preference among what the client offers ([inbound.NAME] alpn order); none: no ALPN. */
static int alpn_cb(SSL *s, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    const struct dp_inb_listener *L = arg;
    const struct px_inbound_cfg *ib = L->cfg;
    unsigned char *sel = NULL;
    unsigned char sl = 0;
    if (SSL_select_next_proto(&sel, &sl, ib->alpn_wire, ib->alpn_wire_len, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED) {
        return SSL_TLSEXT_ERR_NOACK;
    }
    *out = sel;
    *outlen = sl;
    struct dp_conn *c = SSL_get_ex_data(s, g_inb_idx);
    if (c != NULL) {
        memcpy(c->alpn_sel, sel, sl);
        c->alpn_sel_len = sl;
    }
    return SSL_TLSEXT_ERR_OK;
}

static X509 *read_pem_cert(BIO *b)
{
    return PEM_read_bio_X509(b, NULL, NULL, NULL);
}

/*
 * The listener's client-facing context: its certificate and chain, the HSM key (after checking
 * that the signer found it and that it is the certificate's key), TLS 1.2+ with ECDHE only, the
 * signature schemes the HSM path makes, tickets, ALPN, async mode.
 */
static int server_ctx(struct dp_inb_listener *L, struct hsm_pool *pool, char *err, size_t errlen)
{
    const struct px_inbound_cfg *ib = L->cfg;
    const char *kl = ib->key_label[0] ? ib->key_label : ib->key_id;
    const char *kkey = ib->key_label[0] ? "key_label" : "key_id";
    struct hsm_key_info ki;
    if (hsm_pool_key_info(pool, L->idx + 1, &ki) != 0) {
        snprintf(err, errlen, "[inbound.%s] %s '%s': no HSM member reported its keys", ib->name,
                 kkey, kl);
        return PX_E_HSM;
    }
    if (!ki.found) {
        snprintf(err, errlen, "[inbound.%s] %s: %s", ib->name, kkey, ki.err);
        return PX_E_HSM;
    }
    BIO *b = BIO_new_file(ib->cert, "r");
    X509 *x = b != NULL ? read_pem_cert(b) : NULL;
    BIO_free(b);
    if (x == NULL) {
        ERR_clear_error();
        snprintf(err, errlen, "[inbound.%s] cert: cannot read a PEM certificate from %s",
                 ib->name, ib->cert);
        return PX_E_CONFIG;
    }
    int ret = PX_E_CRYPTO;
    STACK_OF(X509) *chain = NULL;
    const unsigned char *pp = ki.pub_der;
    EVP_PKEY *hpub = d2i_PUBKEY(NULL, &pp, ki.pub_len);
    if (hpub == NULL || EVP_PKEY_eq(hpub, X509_get0_pubkey(x)) != 1) {
        snprintf(err, errlen, "[inbound.%s] cert %s: its public key is not the HSM key '%s' "
                 "(%s-%d): a certificate for another key", ib->name, ib->cert, kl,
                 ki.key_type == HSM_KEY_RSA ? "RSA" : "EC", ki.key_bits);
        ret = PX_E_CONFIG;
        goto out;
    }
    if (X509_cmp_current_time(X509_get0_notAfter(x)) <= 0) {
        char subj[256];
        X509_NAME_oneline(X509_get_subject_name(x), subj, sizeof(subj));
        px_log(PX_LOG_WARN, "inbound", "[inbound.%s] certificate %s (%s) has EXPIRED: clients "
               "will refuse it", ib->name, ib->cert, subj);
    }
    if (ib->chain[0] != '\0') {
        chain = sk_X509_new_null();
        b = BIO_new_file(ib->chain, "r");
        X509 *cx;
        while (b != NULL && chain != NULL && (cx = read_pem_cert(b)) != NULL) {
            sk_X509_push(chain, cx);
        }
        BIO_free(b);
        ERR_clear_error();
        if (chain == NULL || sk_X509_num(chain) == 0) {
            snprintf(err, errlen, "[inbound.%s] chain: no PEM certificate in %s", ib->name,
                     ib->chain);
            ret = PX_E_CONFIG;
            goto out;
        }
    }
    L->key = dp_hsmkey_new(L->idx + 1, ki.key_type, ki.pub_der, ki.pub_len);
    L->sctx = SSL_CTX_new_ex(dp_hsmkey_libctx(), "?provider=default", TLS_server_method());
    if (L->key == NULL || L->sctx == NULL) {
        snprintf(err, errlen, "[inbound.%s] cannot make the TLS context for the HSM key", ib->name);
        goto out;
    }
    SSL_CTX *s = L->sctx;
    SSL_CTX_set_app_data(s, L);
    SSL_CTX_set_min_proto_version(s, TLS1_2_VERSION);
    SSL_CTX_set_options(s, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION |
                               SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(s, SSL_MODE_ASYNC | SSL_MODE_RELEASE_BUFFERS);
    /* forward secrecy only: ECDHE in TLS 1.2 (never RSA key exchange, no DHE) */
    const char *sigalgs = ki.key_type == HSM_KEY_RSA ? "rsa_pss_rsae_sha256:rsa_pkcs1_sha256"
                          : ki.key_bits == 384       ? "ecdsa_secp384r1_sha384"
                                                     : "ecdsa_secp256r1_sha256";
    if (SSL_CTX_set_cipher_list(s, "ECDHE+AESGCM:ECDHE+CHACHA20:ECDHE+AES:!aNULL:!eNULL") != 1 ||
        SSL_CTX_set1_sigalgs_list(s, sigalgs) != 1 ||
        SSL_CTX_use_cert_and_key(s, x, L->key, chain, 1) != 1) {
        unsigned long e = ERR_peek_error();
        char eb[160] = "";
        ERR_error_string_n(e, eb, sizeof(eb));
        ERR_clear_error();
        snprintf(err, errlen, "[inbound.%s] TLS context: %s", ib->name, eb);
        goto out;
    }
    SSL_CTX_set_client_hello_cb(s, hello_cb, NULL);
    SSL_CTX_set_alpn_select_cb(s, alpn_cb, L);
    /* stateless resumption: tickets under keys of our own, no server-side cache */
    SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(s, 1);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(s, ticket_cb);
    ret = 0;
out:
    EVP_PKEY_free(hpub);
    X509_free(x);
    sk_X509_pop_free(chain, X509_free);
    return ret;
}

static int backend_ctx(struct dp_inb_listener *L, const struct px_cfg *cfg, char *err,
                       size_t errlen)
{
    const struct px_inbound_cfg *ib = L->cfg;
    if (!ib->backend_tls) {
        return 0;
    }
    const char *ca = ib->backend_ca[0] ? ib->backend_ca : cfg->upstream_ca_file;
    L->bctx = SSL_CTX_new(TLS_client_method());
    if (L->bctx == NULL) {
        snprintf(err, errlen, "[inbound.%s] cannot make the backend TLS context", ib->name);
        return PX_E_CRYPTO;
    }
    SSL_CTX_set_min_proto_version(L->bctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(L->bctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_verify(L->bctx, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_load_verify_locations(L->bctx, ca, NULL) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "[inbound.%s] %s %s cannot be loaded", ib->name,
                 ib->backend_ca[0] ? "backend_ca" : "backend_ca (from [upstream] ca_file)", ca);
        return PX_E_CONFIG;
    }
    return 0;
}

static int listen_sock(const struct px_inbound_cfg *ib, int *port, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t len;
    int p;
    if (dp_addr_parse(ib->listen, &ss, &len, &p) != 0) {
        snprintf(err, errlen, "[inbound.%s] listen: '%s' is not IP:PORT", ib->name, ib->listen);
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 ||
        bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, 1024) != 0) {
        snprintf(err, errlen, "[inbound.%s] cannot listen on %s: %s", ib->name, ib->listen,
                 strerror(errno));
        if (fd >= 0) {
            close(fd);
        }
        return -1;
    }
    struct sockaddr_storage b;
    socklen_t bl = sizeof(b);
    getsockname(fd, (struct sockaddr *)&b, &bl);
    *port = ntohs(b.ss_family == AF_INET ? ((struct sockaddr_in *)&b)->sin_port
                                         : ((struct sockaddr_in6 *)&b)->sin6_port);
    return fd;
}

int dp_inbound_new(struct dp_server *s, char *err, size_t errlen)
{
    const struct px_cfg *cfg = s->cfg;
    if (cfg->n_inbound == 0) {
        return 0;
    }
    if (g_inb_idx < 0) {
        g_inb_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    }
    if (dp_hsmkey_init(err, errlen) != 0) {
        return PX_E_CRYPTO;
    }
    struct dp_inbound *in = calloc(1, sizeof(*in));
    if (in == NULL) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    s->inb = in;
    for (int i = 0; i < cfg->n_inbound; i++) {
        struct dp_inb_listener *L = &in->l[i];
        L->cfg = &cfg->inbound[i];
        L->idx = i;
        pthread_mutex_init(&L->tk_lock, NULL);
        in->n = i + 1;
        int bp;
        if (dp_addr_parse(L->cfg->backend, &L->backend, &L->backend_len, &bp) != 0) {
            snprintf(err, errlen, "[inbound.%s] backend: '%s' is not IP:PORT", L->cfg->name,
                     L->cfg->backend);
            return PX_E_CONFIG;
        }
        L->backend_port = (uint16_t)bp;
        L->tk_period_ns = (uint64_t)cfg->inbound_ticket_rotate_s * 1000000000ull;
        L->tk_next_ns = px_now_ns() + L->tk_period_ns;
        if (tkey_fill(&L->tk[0]) != 0) {
            snprintf(err, errlen, "[inbound.%s] no random bytes for the ticket keys",
                     L->cfg->name);
            return PX_E_CRYPTO;
        }
        PX_TRY(server_ctx(L, s->pool, err, errlen));
        PX_TRY(backend_ctx(L, cfg, err, errlen));
    }
    for (int k = 0; k < s->nloops; k++) {
        struct dp_loop *l = &s->loops[k];
        struct dp_inb_loop *il = calloc(1, sizeof(*il));
        if (il == NULL || (il->cq = hsm_cq_new()) == NULL) {
            free(il);
            snprintf(err, errlen, "out of memory");
            return -ENOMEM;
        }
        l->inb = il;
        for (int i = 0; i < PX_INBOUND_MAX; i++) {
            il->lfd[i] = -1;
        }
        for (int i = 0; i < in->n; i++) {
            il->lfd[i] = listen_sock(in->l[i].cfg, &in->l[i].port, err, errlen);
            if (il->lfd[i] < 0) {
                return PX_E_CONFIG;
            }
        }
    }
    for (int i = 0; i < in->n; i++) {
        const struct px_inbound_cfg *ib = in->l[i].cfg;
        px_log(PX_LOG_INFO, "inbound", "[inbound.%s] listening on %s (port %d), backend %s%s, "
               "key '%s' in the HSM", ib->name, ib->listen, in->l[i].port, ib->backend,
               ib->backend_tls ? " (TLS)" : "", ib->key_label[0] ? ib->key_label : ib->key_id);
    }
    return 0;
}

void dp_inbound_free(struct dp_server *s)
{
    for (int k = 0; s->loops != NULL && k < s->nloops; k++) {
        struct dp_inb_loop *il = s->loops[k].inb;
        if (il == NULL) {
            continue;
        }
        for (int i = 0; i < PX_INBOUND_MAX; i++) {
            if (il->lfd[i] >= 0) {
                close(il->lfd[i]);
            }
        }
        hsm_cq_free(il->cq);
        free(il);
        s->loops[k].inb = NULL;
    }
    struct dp_inbound *in = s->inb;
    if (in == NULL) {
        return;
    }
    for (int i = 0; i < in->n; i++) {
        struct dp_inb_listener *L = &in->l[i];
        SSL_CTX_free(L->sctx);
        SSL_CTX_free(L->bctx);
        EVP_PKEY_free(L->key);
        OPENSSL_cleanse(L->tk, sizeof(L->tk));
        pthread_mutex_destroy(&L->tk_lock);
    }
    free(in);
    s->inb = NULL;
}

int dp_server_inbound_stats(struct dp_server *s, struct dp_inbound_stats *out, int cap)
{
    struct dp_inbound *in = s->inb;
    int n = 0;
    for (int i = 0; in != NULL && i < in->n && n < cap; i++, n++) {
        struct dp_inb_listener *L = &in->l[i];
        struct dp_inbound_stats *o = &out[n];
        memset(o, 0, sizeof(*o));
        snprintf(o->name, sizeof(o->name), "%s", L->cfg->name);
        o->port = L->port;
        o->full = atomic_load(&L->full);
        o->resumed = atomic_load(&L->resumed);
        o->failed = atomic_load(&L->failed);
        o->refused_rsa = atomic_load(&L->refused_rsa);
        o->refused_hsm = atomic_load(&L->refused_hsm);
        o->backend_failed = atomic_load(&L->backend_failed);
    }
    if (in != NULL && n > 0) {
        out[0].sign_ok = atomic_load(&in->sign_ok);
        out[0].sign_failed = atomic_load(&in->sign_failed);
        out[0].sign_refused = atomic_load(&in->sign_refused);
    }
    return n;
}

/* ---- the loop's side --------------------------------------------------------------------------- */

static void arm_accept(struct dp_loop *l, int i)
{
    struct dp_inb_loop *il = l->inb;
    if (il->lfd[i] < 0 || il->armed[i] || l->stopping) {
        return;
    }
    struct io_uring_sqe *sqe = dp_sqe(l);
    if (sqe == NULL) {
        return;
    }
    io_uring_prep_multishot_accept(sqe, il->lfd[i], NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    union dp_ud u = {.f = {.op = OP_IN_ACCEPT, .dir = (uint8_t)i}};
    io_uring_sqe_set_data64(sqe, u.u);
    il->armed[i] = true;
}

static void arm_cq(struct dp_loop *l)
{
    struct io_uring_sqe *sqe = dp_sqe(l);
    if (sqe == NULL) {
        return;
    }
    io_uring_prep_read(sqe, hsm_cq_fd(l->inb->cq), &l->inb->cq_val, sizeof(l->inb->cq_val), 0);
    union dp_ud u = {.f = {.op = OP_IN_CQ}};
    io_uring_sqe_set_data64(sqe, u.u);
}

void dp_inbound_loop_start(struct dp_loop *l)
{
    if (l->inb == NULL) {
        return;
    }
    for (int i = 0; i < l->srv->inb->n; i++) {
        arm_accept(l, i);
    }
    arm_cq(l);
}

void dp_inbound_loop_stop(struct dp_loop *l)
{
    for (int i = 0; l->inb != NULL && i < PX_INBOUND_MAX; i++) {
        if (l->inb->lfd[i] >= 0) {
            shutdown(l->inb->lfd[i], SHUT_RDWR);
        }
    }
}

uint32_t dp_inbound_loop_pending(const struct dp_loop *l)
{
    return l->inb != NULL ? l->inb->pending : 0;
}

void dp_inbound_accept(struct dp_loop *l, int which, int res, uint32_t flags)
{
    struct dp_inb_loop *il = l->inb;
    if (il == NULL || which < 0 || which >= l->srv->inb->n) {
        if (res >= 0) {
            close(res);
        }
        return;
    }
    if (!(flags & IORING_CQE_F_MORE)) {
        il->armed[which] = false;
    }
    if (res < 0) {
        if (res != -ECANCELED && res != -EINVAL) {
            PX_LOG_RL(PX_LOG_WARN, "inbound", "accept: %s", strerror(-res));
        }
        arm_accept(l, which);
        return;
    }
    int fd = res;
    if (l->stopping) {
        close(fd);
        return;
    }
    struct dp_inb_listener *L = &l->srv->inb->l[which];
    bool at_limit = false;
    struct dp_conn *c = dp_conn_new(l, fd, &at_limit);
    struct dp_inb_conn *ic = c != NULL ? calloc(1, sizeof(*ic)) : NULL;
    BIO *rb = ic != NULL ? dp_bio_in_new(&c->s[D_CLIENT]) : NULL; /* the side's input */
    SSL *ssl = rb != NULL ? SSL_new(L->sctx) : NULL;
    if (ssl == NULL) {
        if (c == NULL) {
            close(fd);
            if (at_limit) {
                dp_loop_refused(l);
            }
        } else {
            free(ic);
            BIO_free(rb);
            dp_conn_abort(c, O_CLIENT_ERROR); /* out of memory: closed */
        }
        arm_accept(l, which);
        return;
    }
    c->inbound = (uint8_t)(which + 1);
    c->inb = ic;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    socklen_t al = sizeof(c->client_addr);
    getpeername(fd, (struct sockaddr *)&c->client_addr, &al);
    memcpy(&c->dst, &L->backend, L->backend_len);
    c->dstlen = L->backend_len;
    c->port = L->backend_port;
    snprintf(c->host, sizeof(c->host), "%s", L->cfg->backend);
    c->action = PX_ACT_INSPECT;
    struct side *cl = &c->s[D_CLIENT];
    SSL_set_bio(ssl, rb, cl->out);
    cl->ssl = ssl;
    cl->in = rb;
    SSL_set_ex_data(ssl, g_inb_idx, c);
    SSL_set_accept_state(ssl);
    dp_conn_enter(c, S_IN_HANDSHAKE);
    dp_conn_run(c);
    arm_accept(l, which);
}

/*
 * Called by the key's sign function (dp_hsmkey.c), inside the SSL's async job, on the loop
 * thread: submits the digest and pauses the job until the loop resumes it with the answer.
 * Returns the signature's length, or a negative code (the handshake then fails with an alert).
 */
int dp_inbound_sign(int key, enum hsm_alg alg, const uint8_t *dg, size_t dlen, uint8_t *sig,
                    size_t cap)
{
    struct dp_conn *c = g_cur;
    if (c == NULL || c->inb == NULL || ASYNC_get_current_job() == NULL) {
        return PX_E_INVAL; /* only ever inside an inbound handshake in async mode */
    }
    struct dp_inb_conn *ic = c->inb;
    struct dp_loop *l = c->loop;
    struct dp_inbound *in = l->srv->inb;
    ic->signed_once = true;
    int r = hsm_sign_submit_key(l->srv->pool, l->inb->cq, key, alg, dg, dlen, 0,
                                (void *)(uintptr_t)dp_conn_token(c));
    if (r != 0) {
        ic->sign_status = r; /* queue full, no HSM, could not make the deadline: now */
        atomic_fetch_add_explicit(&in->sign_refused, 1, memory_order_relaxed);
        return r;
    }
    l->inb->pending++;
    ic->hsm = INB_INFLIGHT;
    ASYNC_pause_job();
    /* resumed by dp_inbound_on_cq (the answer is in) or by dp_inbound_conn_release (going) */
    ic->hsm = INB_IDLE;
    if (ic->sign_status != 0) {
        return ic->sign_status;
    }
    if (ic->sig_len == 0 || ic->sig_len > cap) {
        return PX_E_PROTO;
    }
    memcpy(sig, ic->sig, ic->sig_len);
    return ic->sig_len;
}

static void on_done(void *ctx, const struct hsm_result *res)
{
    struct dp_loop *l = ctx;
    struct dp_inbound *in = l->srv->inb;
    l->inb->pending--;
    atomic_fetch_add_explicit(res->status == 0 ? &in->sign_ok : &in->sign_failed, 1,
                              memory_order_relaxed);
    struct dp_conn *c = dp_conn_by_token(l, (uint64_t)(uintptr_t)res->user);
    if (c == NULL || c->inb == NULL || c->state != S_IN_SIGNING || c->inb->hsm != INB_INFLIGHT) {
        return; /* the connection ended meanwhile (its job was finished on the way out) */
    }
    struct dp_inb_conn *ic = c->inb;
    ic->sign_status = res->status;
    ic->sig_len = 0;
    if (res->status == 0 && res->sig_len > 0 && res->sig_len <= sizeof(ic->sig)) {
        memcpy(ic->sig, res->sig, res->sig_len);
        ic->sig_len = (uint16_t)res->sig_len;
    }
    c->hsm_wait_ns += res->latency_ns;
    dp_conn_enter(c, S_IN_HANDSHAKE);
    dp_conn_run(c);
}

void dp_inbound_on_cq(struct dp_loop *l)
{
    if (l->inb == NULL) {
        return;
    }
    hsm_cq_drain(l->inb->cq, on_done, l);
    arm_cq(l);
}

/* Runs (or resumes) the client handshake with this connection as the signer's context. */
static int handshake(struct dp_conn *c)
{
    g_cur = c;
    int r = SSL_do_handshake(c->s[D_CLIENT].ssl);
    g_cur = NULL;
    return r;
}

void dp_inbound_conn_release(struct dp_conn *c)
{
    struct dp_inb_conn *ic = c->inb;
    if (ic == NULL) {
        return;
    }
    if (ic->hsm == INB_INFLIGHT && c->s[D_CLIENT].ssl != NULL) {
        /* a paused job is only freed by finishing it: resume it with a failure */
        ic->sign_status = PX_E_SHUTDOWN;
        (void)handshake(c);
        ERR_clear_error();
    }
    /* a plain backend's read BIO belongs to no SSL: ours to free */
    if (c->s[D_UP].ssl == NULL && c->s[D_UP].in != NULL) {
        BIO_free(c->s[D_UP].in);
        c->s[D_UP].in = NULL;
    }
    /* c->inb itself is freed by dp_conn_release after the access-log line */
}

static const char *sign_reason(int status)
{
    switch (status) {
    case PX_E_TIMEOUT:
        return "hsm-timeout";
    case PX_E_FULL:
        return "hsm-queue-full";
    case PX_E_OVERLOAD:
        return "hsm-overload";
    case PX_E_DOWN:
        return "hsm-down";
    default:
        return "hsm-error";
    }
}

/* The handshake is done: connect to the backend. */
static void handshake_done(struct dp_conn *c)
{
    struct dp_inb_listener *L = listener_of(c);
    SSL *s = c->s[D_CLIENT].ssl;
    c->inb->resumed = SSL_session_reused(s) == 1;
    atomic_fetch_add_explicit(c->inb->resumed ? &L->resumed : &L->full, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&c->loop->ctr.handshakes_ok, 1, memory_order_relaxed);
    const char *sni = SSL_get_servername(s, TLSEXT_NAMETYPE_host_name);
    if (sni != NULL) {
        snprintf(c->sni, sizeof(c->sni), "%s", sni);
    }
    c->reason = c->inb->resumed ? "resumed" : "full";
    /* no signature can come after the handshake (no renegotiation): plain calls from now on */
    SSL_clear_mode(s, SSL_MODE_ASYNC);
    dp_conn_connect(c);
}

void dp_inbound_hs_step(struct dp_conn *c)
{
    struct dp_inb_conn *ic = c->inb;
    struct dp_inb_listener *L = listener_of(c);
    int r = handshake(c);
    if (r == 1) {
        handshake_done(c);
        return;
    }
    SSL *s = c->s[D_CLIENT].ssl;
    int e = SSL_get_error(s, r);
    if (e == SSL_ERROR_WANT_ASYNC && ic->hsm == INB_INFLIGHT) {
        dp_conn_enter(c, S_IN_SIGNING); /* parked until the signature comes back */
        return;
    }
    if (e == SSL_ERROR_WANT_READ && !c->s[D_CLIENT].eof) {
        return;
    }
    unsigned long oe = ERR_peek_error();
    char eb[160] = "the client closed";
    if (oe != 0) {
        ERR_error_string_n(oe, eb, sizeof(eb));
    }
    ERR_clear_error();
    atomic_fetch_add_explicit(&c->loop->ctr.handshakes_failed, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&L->failed, 1, memory_order_relaxed);
    char client[64];
    dp_addr_str(&c->client_addr, client, sizeof(client));
    enum dp_outcome why = O_CLIENT_ERROR;
    if (ic->rsa_only) {
        atomic_fetch_add_explicit(&L->refused_rsa, 1, memory_order_relaxed);
        c->reason = "rsa-key-exchange";
        PX_LOG_RL(PX_LOG_INFO, "inbound", "conn=%u:%u [inbound.%s] client %s offers only RSA key "
                  "exchange (no ECDHE suite, no TLS 1.3): refused with handshake_failure "
                  "(forward secrecy is required)", c->slot, c->gen, L->cfg->name, client);
    } else if (ic->signed_once && ic->sign_status != 0) {
        atomic_fetch_add_explicit(&L->refused_hsm, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&c->loop->ctr.refused_hsm, 1, memory_order_relaxed);
        c->reason = sign_reason(ic->sign_status);
        why = O_REFUSED_HSM;
        PX_LOG_RL(PX_LOG_WARN, "inbound", "conn=%u:%u [inbound.%s] client %s: no signature by "
                  "the server key (%s): handshake ended with an alert", c->slot, c->gen,
                  L->cfg->name, client, px_strerror(ic->sign_status));
    } else {
        PX_LOG_RL(PX_LOG_DEBUG, "inbound", "conn=%u:%u [inbound.%s] client %s handshake failed: "
                  "%s", c->slot, c->gen, L->cfg->name, client, eb);
    }
    dp_conn_finish(c, why);
}

/* Relaying starts: no handshake deadline any more, only idle time. */
static void relay_begin(struct dp_conn *c, enum dp_state st)
{
    dp_conn_enter(c, st);
    c->deadline_ns = 0;
    if (c->outcome == O_NONE) {
        c->outcome = O_OK;
    }
    dp_export_begin(c->loop->srv->exp, c);
}

/* The backend is not there (or its TLS failed): close_notify to the client, then close. */
static void backend_failed(struct dp_conn *c, const char *what, const char *why)
{
    struct dp_inb_listener *L = listener_of(c);
    atomic_fetch_add_explicit(&L->backend_failed, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&c->loop->ctr.upstream_failed, 1, memory_order_relaxed);
    PX_LOG_RL(PX_LOG_WARN, "inbound", "conn=%u:%u [inbound.%s] backend %s %s: %s", c->slot,
              c->gen, L->cfg->name, L->cfg->backend, what, why);
    if (c->s[D_CLIENT].ssl != NULL && SSL_is_init_finished(c->s[D_CLIENT].ssl)) {
        SSL_shutdown(c->s[D_CLIENT].ssl);
    }
    c->reason = "backend";
    dp_conn_finish(c, O_UPSTREAM_FAILED);
}

void dp_inbound_connected(struct dp_conn *c, int res)
{
    struct dp_inb_listener *L = listener_of(c);
    if (res < 0) {
        backend_failed(c, "connect", res == -ECANCELED ? "timed out" : strerror(-res));
        return;
    }
    c->up_connected = true;
    struct side *u = &c->s[D_UP];
    if (!L->cfg->backend_tls) {
        u->in = dp_bio_in_new(u); /* the backend's bytes (the side's input), read by the step */
        if (u->in == NULL) {
            dp_conn_abort(c, O_CLIENT_ERROR);
            return;
        }
        relay_begin(c, S_IN_RELAY);
        dp_conn_run(c);
        return;
    }
    BIO_free(u->out);
    u->out = NULL;
    u->ssl = SSL_new(L->bctx);
    BIO *rb = dp_bio_in_new(u), *wb = dp_bio_out_new(u);
    if (u->ssl == NULL || rb == NULL || wb == NULL) {
        BIO_free(rb);
        BIO_free(wb);
        if (u->ssl == NULL) {
            u->out = dp_bio_out_new(u);
        }
        dp_conn_abort(c, O_CLIENT_ERROR);
        return;
    }
    SSL_set_bio(u->ssl, rb, wb);
    u->in = rb;
    u->out = wb;
    SSL_set_connect_state(u->ssl);
    const char *sni = L->cfg->backend_sni;
    if (sni[0]) {
        SSL_set_tlsext_host_name(u->ssl, sni);
        SSL_set1_host(u->ssl, sni);
    } else {
        char ip[INET6_ADDRSTRLEN] = "";
        if (c->dst.ss_family == AF_INET) {
            inet_ntop(AF_INET, &((struct sockaddr_in *)&c->dst)->sin_addr, ip, sizeof(ip));
        } else {
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&c->dst)->sin6_addr, ip, sizeof(ip));
        }
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(u->ssl), ip);
    }
    if (c->alpn_sel_len > 0) {
        uint8_t w[256];
        w[0] = (uint8_t)c->alpn_sel_len;
        memcpy(w + 1, c->alpn_sel, c->alpn_sel_len);
        SSL_set_alpn_protos(u->ssl, w, c->alpn_sel_len + 1);
    }
    dp_conn_enter(c, S_IN_BACKEND_TLS);
    dp_conn_run(c);
}

void dp_inbound_backend_step(struct dp_conn *c)
{
    SSL *s = c->s[D_UP].ssl;
    int r = SSL_do_handshake(s);
    if (r == 1) {
        c->verify_result = SSL_get_verify_result(s);
        relay_begin(c, S_RELAY);
        return;
    }
    int e = SSL_get_error(s, r);
    if (e == SSL_ERROR_WANT_READ && !c->s[D_UP].eof) {
        return;
    }
    long v = SSL_get_verify_result(s);
    unsigned long oe = ERR_peek_error();
    char eb[200] = "closed";
    if (v != X509_V_OK) {
        snprintf(eb, sizeof(eb), "certificate not verified: %s", X509_verify_cert_error_string(v));
    } else if (oe != 0) {
        ERR_error_string_n(oe, eb, sizeof(eb));
    }
    ERR_clear_error();
    c->verify_result = v;
    backend_failed(c, "TLS", eb);
}

/* S_IN_RELAY: client TLS <-> plain backend, both ways, half-close passed on. */
void dp_inbound_relay_step(struct dp_conn *c)
{
    struct side *cl = &c->s[D_CLIENT], *up = &c->s[D_UP];
    struct dp_export *x = c->loop->srv->exp;
    uint8_t buf[16384];
    struct dp_inb_conn *ic = c->inb;
    while (!ic->cl_done && dp_pending_out(c, D_UP) < DP_PENDING_MAX) {
        int n = SSL_read(cl->ssl, buf, sizeof(buf));
        if (n > 0) {
            BIO_write(up->out, buf, n);
            dp_export_data(x, c, D_CLIENT, buf, (size_t)n);
            c->bytes_c2u += (uint64_t)n;
            c->last_ns = px_now_ns();
            continue;
        }
        int e = SSL_get_error(cl->ssl, n);
        if (e == SSL_ERROR_WANT_READ) {
            ic->cl_done = cl->eof; /* TCP closed, everything read: as good as close_notify */
            break;
        }
        if (e == SSL_ERROR_ZERO_RETURN) {
            dp_xflow_ended(c, D_CLIENT, false);
            cl->eof = true; /* close_notify: the backend gets a FIN once all is sent */
            ic->cl_done = true;
            break;
        }
        ERR_clear_error();
        dp_conn_finish(c, O_CLIENT_ERROR);
        return;
    }
    while (dp_pending_out(c, D_CLIENT) < DP_PENDING_MAX) {
        int n = BIO_read(up->in, buf, sizeof(buf));
        if (n <= 0) {
            break;
        }
        if (SSL_write(cl->ssl, buf, n) != n) {
            ERR_clear_error();
            dp_conn_abort(c, O_CLIENT_ERROR);
            return;
        }
        dp_export_data(x, c, D_UP, buf, (size_t)n);
        c->bytes_u2c += (uint64_t)n;
        c->last_ns = px_now_ns();
    }
    if (up->eof && BIO_ctrl_pending(up->in) == 0) {
        /* the backend is done: close_notify to the client, flushed, then the end */
        if (!c->cl_shut_sent) {
            SSL_shutdown(cl->ssl);
            c->cl_shut_sent = true;
        }
        dp_conn_finish(c, up->err ? O_UPSTREAM_FAILED : O_OK);
        return;
    }
    if (ic->cl_done && !c->up_shut_sent && dp_pending_out(c, D_UP) == 0) {
        shutdown(up->fd, SHUT_WR);
        c->up_shut_sent = true;
    }
}
