/* SPDX-License-Identifier: MIT */
/*
 * hsm_p11.c - raw PKCS#11: load a module, find a token by label or serial, log in, find the key,
 * sign a digest and return a DER signature.
 * Owns the dlopen handle and sessions it opens. Called in the signer process (one session per
 * worker thread; the module is initialised with CKF_OS_LOCKING_OK) and by management commands.
 * Invariants: the PIN never leaves struct hsm_tok and is wiped on unload; nothing here logs it.
 * Not here: deadlines and recovery policy (hsm_signer.c decides what an error means).
 */
#include "hsm_p11_int.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

const char *hsm_ckr_name(unsigned long rv)
{
    switch (rv) {
#define C(x)                                                                                       \
    case x:                                                                                        \
        return #x;
        C(CKR_OK)
        C(CKR_CANCEL)
        C(CKR_HOST_MEMORY)
        C(CKR_SLOT_ID_INVALID)
        C(CKR_GENERAL_ERROR)
        C(CKR_FUNCTION_FAILED)
        C(CKR_ARGUMENTS_BAD)
        C(CKR_ATTRIBUTE_TYPE_INVALID)
        C(CKR_ATTRIBUTE_VALUE_INVALID)
        C(CKR_DATA_INVALID)
        C(CKR_DATA_LEN_RANGE)
        C(CKR_DEVICE_ERROR)
        C(CKR_DEVICE_MEMORY)
        C(CKR_DEVICE_REMOVED)
        C(CKR_FUNCTION_CANCELED)
        C(CKR_FUNCTION_NOT_SUPPORTED)
        C(CKR_KEY_HANDLE_INVALID)
        C(CKR_KEY_TYPE_INCONSISTENT)
        C(CKR_KEY_FUNCTION_NOT_PERMITTED)
        C(CKR_MECHANISM_INVALID)
        C(CKR_MECHANISM_PARAM_INVALID)
        C(CKR_OBJECT_HANDLE_INVALID)
        C(CKR_OPERATION_ACTIVE)
        C(CKR_OPERATION_NOT_INITIALIZED)
        C(CKR_PIN_INCORRECT)
        C(CKR_PIN_INVALID)
        C(CKR_PIN_LEN_RANGE)
        C(CKR_PIN_EXPIRED)
        C(CKR_PIN_LOCKED)
        C(CKR_SESSION_CLOSED)
        C(CKR_SESSION_COUNT)
        C(CKR_SESSION_HANDLE_INVALID)
        C(CKR_SESSION_READ_ONLY)
        C(CKR_SESSION_EXISTS)
        C(CKR_TEMPLATE_INCOMPLETE)
        C(CKR_TEMPLATE_INCONSISTENT)
        C(CKR_TOKEN_NOT_PRESENT)
        C(CKR_TOKEN_NOT_RECOGNIZED)
        C(CKR_TOKEN_WRITE_PROTECTED)
        C(CKR_USER_ALREADY_LOGGED_IN)
        C(CKR_USER_NOT_LOGGED_IN)
        C(CKR_USER_PIN_NOT_INITIALIZED)
        C(CKR_USER_TYPE_INVALID)
        C(CKR_BUFFER_TOO_SMALL)
        C(CKR_CRYPTOKI_NOT_INITIALIZED)
        C(CKR_CRYPTOKI_ALREADY_INITIALIZED)
#undef C
    default:
        return "CKR_(other)";
    }
}

bool hsm_p11__rv_session_level(CK_RV rv)
{
    return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED ||
           rv == CKR_OBJECT_HANDLE_INVALID || rv == CKR_KEY_HANDLE_INVALID ||
           rv == CKR_USER_NOT_LOGGED_IN;
}

bool hsm_p11__rv_device_level(CK_RV rv)
{
    return rv == CKR_DEVICE_ERROR || rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT ||
           rv == CKR_SLOT_ID_INVALID || rv == CKR_GENERAL_ERROR ||
           rv == CKR_CRYPTOKI_NOT_INITIALIZED || rv == CKR_DEVICE_MEMORY;
}

void hsm_p11__str(char *dst, size_t cap, const CK_UTF8CHAR *src, size_t srclen)
{
    size_t n = srclen < cap - 1 ? srclen : cap - 1;
    memcpy(dst, src, n);
    while (n > 0 && (dst[n - 1] == ' ' || dst[n - 1] == '\0')) {
        n--;
    }
    dst[n] = '\0';
}

int hsm_member_setenv(const struct px_hsm_member_cfg *m)
{
    for (int i = 0; i < m->n_env; i++) {
        char buf[256];
        snprintf(buf, sizeof(buf), "%s", m->env[i]);
        char *eq = strchr(buf, '=');
        if (eq == NULL) {
            continue; /* blanked by the caller (restore --hsm-env), or rejected at parse time */
        }
        *eq = '\0';
        if (setenv(buf, eq + 1, 1) != 0) {
            return PX_E_CONFIG;
        }
    }
    return 0;
}

int hsm_p11__load(struct hsm_mod *mod, const char *path, char *err, size_t errlen)
{
    memset(mod, 0, sizeof(*mod));
    mod->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (mod->dl == NULL) {
        snprintf(err, errlen, "cannot load PKCS#11 module %s: %s", path, dlerror());
        return PX_E_HSM;
    }
    CK_C_GetFunctionList gfl = (CK_C_GetFunctionList)dlsym(mod->dl, "C_GetFunctionList");
    if (gfl == NULL) {
        snprintf(err, errlen, "%s is not a PKCS#11 module (no C_GetFunctionList)", path);
        dlclose(mod->dl);
        mod->dl = NULL;
        return PX_E_HSM;
    }
    CK_RV rv = gfl(&mod->f);
    if (rv != CKR_OK || mod->f == NULL) {
        snprintf(err, errlen, "%s: C_GetFunctionList: %s", path, hsm_ckr_name(rv));
        dlclose(mod->dl);
        mod->dl = NULL;
        return PX_E_HSM;
    }
    CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
    rv = mod->f->C_Initialize(&args);
    if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
        snprintf(err, errlen, "%s: C_Initialize: %s", path, hsm_ckr_name(rv));
        dlclose(mod->dl);
        mod->dl = NULL;
        return PX_E_HSM;
    }
    mod->initialized = true;
    return 0;
}

void hsm_p11__unload(struct hsm_mod *mod)
{
    if (mod->initialized) {
        mod->f->C_Finalize(NULL);
        mod->initialized = false;
    }
    /* dlclose is skipped on purpose: some modules leave threads or atexit handlers behind. */
    mod->dl = NULL;
}

int hsm_p11__find_token(struct hsm_tok *tok, char *err, size_t errlen)
{
    const struct px_hsm_member_cfg *m = tok->m;
    CK_FUNCTION_LIST *f = tok->mod->f;
    CK_ULONG n = 0;
    CK_RV rv = f->C_GetSlotList(CK_TRUE, NULL, &n);
    if (rv != CKR_OK) {
        snprintf(err, errlen, "[%s] C_GetSlotList: %s", m->name, hsm_ckr_name(rv));
        return PX_E_HSM;
    }
    if (n == 0) {
        snprintf(err, errlen, "[%s] module %s shows no token at all (HSM unreachable?)", m->name,
                 m->module);
        return PX_E_HSM;
    }
    CK_SLOT_ID slots[64];
    if (n > 64) {
        n = 64;
    }
    rv = f->C_GetSlotList(CK_TRUE, slots, &n);
    if (rv != CKR_OK) {
        snprintf(err, errlen, "[%s] C_GetSlotList: %s", m->name, hsm_ckr_name(rv));
        return PX_E_HSM;
    }
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (f->C_GetTokenInfo(slots[i], &ti) != CKR_OK) {
            continue;
        }
        char label[33], serial[17];
        hsm_p11__str(label, sizeof(label), ti.label, sizeof(ti.label));
        hsm_p11__str(serial, sizeof(serial), ti.serialNumber, sizeof(ti.serialNumber));
        bool match = m->token_serial[0] ? strcmp(serial, m->token_serial) == 0
                                        : strcmp(label, m->token) == 0;
        if (!match || !(ti.flags & CKF_TOKEN_INITIALIZED)) {
            continue;
        }
        tok->slot = slots[i];
        struct hsm_token_info *info = &tok->info;
        snprintf(info->label, sizeof(info->label), "%s", label);
        snprintf(info->serial, sizeof(info->serial), "%s", serial);
        hsm_p11__str(info->manufacturer, sizeof(info->manufacturer), ti.manufacturerID,
                     sizeof(ti.manufacturerID));
        hsm_p11__str(info->model, sizeof(info->model), ti.model, sizeof(ti.model));
        CK_INFO gi;
        if (f->C_GetInfo(&gi) == CKR_OK) {
            hsm_p11__str(info->module_desc, sizeof(info->module_desc), gi.libraryDescription,
                         sizeof(gi.libraryDescription));
        }
        return 0;
    }
    if (m->token_serial[0]) {
        snprintf(err, errlen, "[%s] no initialised token with serial '%s' in %s", m->name,
                 m->token_serial, m->module);
    } else {
        snprintf(err, errlen, "[%s] no initialised token labelled '%s' in %s", m->name, m->token,
                 m->module);
    }
    return PX_E_HSM;
}

static int hex_to_bin(const char *hex, uint8_t *out, size_t cap)
{
    size_t n = strlen(hex) / 2;
    if (n > cap) {
        return PX_E_INVAL;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned int b;
        if (sscanf(hex + 2 * i, "%2x", &b) != 1) {
            return PX_E_INVAL;
        }
        out[i] = (uint8_t)b;
    }
    return (int)n;
}

/* Finds one object of class cls by label (or, when label is empty, by hex id). */
static CK_RV find_object(struct hsm_tok *tok, CK_SESSION_HANDLE h, CK_OBJECT_CLASS cls,
                         const char *label, const char *idhex, CK_OBJECT_HANDLE *out,
                         CK_ULONG *count)
{
    CK_FUNCTION_LIST *f = tok->mod->f;
    uint8_t id[32];
    CK_ATTRIBUTE tmpl[2] = {{CKA_CLASS, &cls, sizeof(cls)}};
    *count = 0;
    if (label[0]) {
        tmpl[1] = (CK_ATTRIBUTE){CKA_LABEL, (void *)label, strlen(label)};
    } else {
        int n = hex_to_bin(idhex, id, sizeof(id));
        if (n <= 0) {
            return CKR_ARGUMENTS_BAD;
        }
        tmpl[1] = (CK_ATTRIBUTE){CKA_ID, id, (CK_ULONG)n};
    }
    CK_RV rv = f->C_FindObjectsInit(h, tmpl, 2);
    if (rv != CKR_OK) {
        return rv;
    }
    CK_OBJECT_HANDLE objs[2];
    rv = f->C_FindObjects(h, objs, 2, count);
    f->C_FindObjectsFinal(h);
    if (rv == CKR_OK && *count > 0) {
        *out = objs[0];
    }
    return rv;
}

/* The extra keys (tok->x) in session s; a key that is not there gets CK_INVALID_HANDLE. */
static void find_xkeys(struct hsm_tok *tok, struct hsm_sess *s)
{
    for (int i = 0; i < tok->nx && i < HSM_XKEYS_MAX; i++) {
        CK_ULONG count = 0;
        s->xkey[i] = CK_INVALID_HANDLE;
        CK_OBJECT_HANDLE k;
        if (find_object(tok, s->h, CKO_PRIVATE_KEY, tok->x[i].label, tok->x[i].id, &k, &count) ==
                CKR_OK &&
            count > 0) {
            s->xkey[i] = k;
        }
    }
}

int hsm_p11__session_open(struct hsm_tok *tok, struct hsm_sess *s, CK_RV *rvp, char *err,
                          size_t errlen)
{
    CK_FUNCTION_LIST *f = tok->mod->f;
    const struct px_hsm_member_cfg *m = tok->m;
    memset(s, 0, sizeof(*s));
    CK_RV rv = f->C_OpenSession(tok->slot, CKF_SERIAL_SESSION, NULL, NULL, &s->h);
    *rvp = rv;
    if (rv != CKR_OK) {
        snprintf(err, errlen, "[%s] C_OpenSession on token '%s': %s", m->name, tok->info.label,
                 hsm_ckr_name(rv));
        return PX_E_HSM;
    }
    s->open = true;
    rv = f->C_Login(s->h, CKU_USER, (CK_UTF8CHAR *)tok->pin, strlen(tok->pin));
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
        *rvp = rv;
        if (rv == CKR_PIN_INCORRECT) {
            snprintf(err, errlen, "[%s] login to token '%s' refused: wrong PIN (CKR_PIN_INCORRECT; "
                     "check %s)", m->name, tok->info.label, m->pin_file);
        } else {
            snprintf(err, errlen, "[%s] C_Login on token '%s': %s", m->name, tok->info.label,
                     hsm_ckr_name(rv));
        }
        hsm_p11__session_close(tok, s);
        return PX_E_HSM;
    }
    tok->info.logged_in = true;
    CK_ULONG count = 0;
    rv = find_object(tok, s->h, CKO_PRIVATE_KEY, m->key_label, m->key_id, &s->key, &count);
    if (rv != CKR_OK || count == 0) {
        *rvp = rv;
        if (rv == CKR_OK) {
            snprintf(err, errlen, "[%s] no private key %s '%s' on token '%s'", m->name,
                     m->key_label[0] ? "labelled" : "with id", m->key_label[0] ? m->key_label
                                                                             : m->key_id,
                     tok->info.label);
        } else {
            snprintf(err, errlen, "[%s] finding key: %s", m->name, hsm_ckr_name(rv));
        }
        hsm_p11__session_close(tok, s);
        return PX_E_HSM;
    }
    find_xkeys(tok, s);
    return 0;
}

void hsm_p11__session_close(struct hsm_tok *tok, struct hsm_sess *s)
{
    if (s->open) {
        tok->mod->f->C_CloseSession(s->h);
        s->open = false;
    }
}

static CK_RV get_attr(struct hsm_tok *tok, CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o,
                      CK_ATTRIBUTE_TYPE t, void *buf, CK_ULONG *len)
{
    CK_ATTRIBUTE a = {t, buf, *len};
    CK_RV rv = tok->mod->f->C_GetAttributeValue(h, o, &a, 1);
    *len = a.ulValueLen;
    return rv;
}

/* SubjectPublicKeyInfo of a key_type key from the token's public key object, into out. */
static int build_spki(struct hsm_tok *tok, struct hsm_sess *s, CK_OBJECT_HANDLE pub,
                      enum hsm_key_type key_type, uint8_t *out, uint16_t *out_len)
{
    uint8_t body[HSM_PUB_MAX], alg[64];
    int alen, blen;
    if (key_type == HSM_KEY_EC) {
        uint8_t params[64], point[160];
        CK_ULONG plen = sizeof(params), qlen = sizeof(point);
        if (get_attr(tok, s->h, pub, CKA_EC_PARAMS, params, &plen) != CKR_OK ||
            get_attr(tok, s->h, pub, CKA_EC_POINT, point, &qlen) != CKR_OK || qlen < 3) {
            return PX_E_HSM;
        }
        /* CKA_EC_POINT is a DER OCTET STRING around the point (some modules give it raw). */
        const uint8_t *q = point;
        size_t ql = qlen;
        if (point[0] == 0x04 && (point[1] == qlen - 2 || (point[1] == 0x81 && point[2] == qlen - 3))) {
            size_t h = point[1] == 0x81 ? 3 : 2;
            q = point + h;
            ql = qlen - h;
        }
        static const uint8_t ec_oid[] = {0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01};
        memcpy(alg, ec_oid, sizeof(ec_oid));
        memcpy(alg + sizeof(ec_oid), params, plen);
        alen = px_der_wrap(alg, sizeof(alg), 0x30, alg, sizeof(ec_oid) + plen);
        uint8_t bits[170];
        bits[0] = 0;
        memcpy(bits + 1, q, ql);
        blen = px_der_wrap(body, sizeof(body), 0x03, bits, ql + 1);
    } else {
        uint8_t n[520], e[16];
        CK_ULONG nl = sizeof(n), el = sizeof(e);
        if (get_attr(tok, s->h, pub, CKA_MODULUS, n, &nl) != CKR_OK ||
            get_attr(tok, s->h, pub, CKA_PUBLIC_EXPONENT, e, &el) != CKR_OK) {
            return PX_E_HSM;
        }
        uint8_t seq[560];
        int a = px_der_uint(seq, sizeof(seq), n, nl);
        int b = a < 0 ? a : px_der_uint(seq + a, sizeof(seq) - (size_t)a, e, el);
        if (b < 0) {
            return PX_E_HSM;
        }
        int sl = px_der_wrap(seq, sizeof(seq), 0x30, seq, (size_t)(a + b));
        if (sl < 0) {
            return PX_E_HSM;
        }
        uint8_t bits[600];
        bits[0] = 0;
        memcpy(bits + 1, seq, (size_t)sl);
        blen = px_der_wrap(body, sizeof(body), 0x03, bits, (size_t)sl + 1);
        static const uint8_t rsa_alg[] = {0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7,
                                          0x0d, 0x01, 0x01, 0x01, 0x05, 0x00};
        memcpy(alg, rsa_alg, sizeof(rsa_alg));
        alen = sizeof(rsa_alg);
    }
    if (alen < 0 || blen < 0 || (size_t)(alen + blen) > HSM_PUB_MAX) {
        return PX_E_HSM;
    }
    memcpy(out, alg, (size_t)alen);
    memcpy(out + alen, body, (size_t)blen);
    int r = px_der_wrap(out, HSM_PUB_MAX, 0x30, out, (size_t)(alen + blen));
    if (r < 0) {
        return PX_E_HSM;
    }
    *out_len = (uint16_t)r;
    return 0;
}

/*
 * Type, size and public key (when the token has the public object of the same label or id) of
 * the private key `key`. what names it in messages.
 */
static int key_props(struct hsm_tok *tok, struct hsm_sess *s, CK_OBJECT_HANDLE key,
                     const char *label, const char *idhex, const char *what,
                     enum hsm_key_type *type, int *bits, uint8_t *pub, uint16_t *pub_len,
                     char *err, size_t errlen)
{
    CK_KEY_TYPE kt = 0;
    CK_ULONG len = sizeof(kt);
    *bits = 0;
    CK_RV rv = get_attr(tok, s->h, key, CKA_KEY_TYPE, &kt, &len);
    if (rv != CKR_OK) {
        snprintf(err, errlen, "[%s] %s: reading key type: %s", tok->m->name, what,
                 hsm_ckr_name(rv));
        return PX_E_HSM;
    }
    if (kt == CKK_EC) {
        *type = HSM_KEY_EC;
        uint8_t params[64];
        CK_ULONG plen = sizeof(params);
        static const uint8_t p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
        static const uint8_t p384[] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22};
        if (get_attr(tok, s->h, key, CKA_EC_PARAMS, params, &plen) == CKR_OK) {
            if (plen == sizeof(p256) && memcmp(params, p256, plen) == 0) {
                *bits = 256;
            } else if (plen == sizeof(p384) && memcmp(params, p384, plen) == 0) {
                *bits = 384;
            }
        }
        if (*bits == 0) {
            snprintf(err, errlen, "[%s] %s: EC key on an unsupported curve (P-256 and P-384 only)",
                     tok->m->name, what);
            return PX_E_HSM;
        }
    } else if (kt == CKK_RSA) {
        *type = HSM_KEY_RSA;
        uint8_t n[1024];
        CK_ULONG nl = sizeof(n);
        if (get_attr(tok, s->h, key, CKA_MODULUS, n, &nl) == CKR_OK) {
            *bits = (int)nl * 8;
        }
    } else {
        snprintf(err, errlen, "[%s] %s: key type %lu is neither EC nor RSA", tok->m->name, what,
                 (unsigned long)kt);
        return PX_E_HSM;
    }
    CK_OBJECT_HANDLE po;
    CK_ULONG count = 0;
    *pub_len = 0;
    if (find_object(tok, s->h, CKO_PUBLIC_KEY, label, idhex, &po, &count) == CKR_OK && count > 0) {
        if (build_spki(tok, s, po, *type, pub, pub_len) != 0) {
            *pub_len = 0;
        }
    }
    return 0;
}

int hsm_p11__key_info(struct hsm_tok *tok, struct hsm_sess *s, char *err, size_t errlen)
{
    struct hsm_token_info *info = &tok->info;
    snprintf(info->key_label, sizeof(info->key_label), "%s",
             tok->m->key_label[0] ? tok->m->key_label : tok->m->key_id);
    return key_props(tok, s, s->key, tok->m->key_label, tok->m->key_id, "forward-trust key",
                     &info->key_type, &info->key_bits, info->pub_der, &info->pub_len, err, errlen);
}

void hsm_p11__xkey_info(struct hsm_tok *tok, struct hsm_sess *s)
{
    for (int i = 0; i < tok->nx && i < HSM_XKEYS_MAX; i++) {
        struct hsm_key_info *xi = &tok->xinfo[i];
        const struct hsm_xkey *x = &tok->x[i];
        /* copies: the messages below write into the same struct hsm_tok they quote */
        char label[64], tlabel[33];
        snprintf(label, sizeof(label), "%s", x->label[0] ? x->label : x->id);
        snprintf(tlabel, sizeof(tlabel), "%s", tok->info.label);
        memset(xi, 0, sizeof(*xi));
        snprintf(xi->label, sizeof(xi->label), "%s", label);
        if (s->xkey[i] == CK_INVALID_HANDLE) {
            snprintf(xi->err, sizeof(xi->err), "no private key %s '%s' on token '%s'",
                     x->label[0] ? "labelled" : "with id", label, tlabel);
            continue;
        }
        char what[96];
        snprintf(what, sizeof(what), "key '%s'", label);
        char err[256];
        if (key_props(tok, s, s->xkey[i], x->label, x->id, what, &xi->key_type, &xi->key_bits,
                      xi->pub_der, &xi->pub_len, err, sizeof(err)) != 0) {
            snprintf(xi->err, sizeof(xi->err), "%s", err);
            continue;
        }
        if (xi->pub_len == 0) {
            snprintf(xi->err, sizeof(xi->err), "key '%s' on token '%s' has no public key object "
                     "to compare with its certificate", label, tlabel);
            continue;
        }
        xi->found = true;
    }
}

int hsm_p11__ecdsa_raw_to_der(const uint8_t *raw, size_t rawlen, uint8_t *out, size_t cap)
{
    if (rawlen == 0 || rawlen % 2 != 0 || rawlen > 132) {
        return PX_E_PROTO;
    }
    size_t half = rawlen / 2;
    uint8_t seq[150];
    int a = px_der_uint(seq, sizeof(seq), raw, half);
    if (a < 0) {
        return a;
    }
    int b = px_der_uint(seq + a, sizeof(seq) - (size_t)a, raw + half, half);
    if (b < 0) {
        return b;
    }
    return px_der_wrap(out, cap, 0x30, seq, (size_t)(a + b));
}

int hsm_p11__sign(struct hsm_tok *tok, struct hsm_sess *s, enum hsm_alg alg, const uint8_t *digest,
                  size_t dlen, uint8_t *sig, CK_RV *rvp)
{
    return hsm_p11__sign_key(tok, s, 0, alg, digest, dlen, sig, rvp);
}

int hsm_p11__sign_key(struct hsm_tok *tok, struct hsm_sess *s, int key, enum hsm_alg alg,
                      const uint8_t *digest, size_t dlen, uint8_t *sig, CK_RV *rvp)
{
    CK_FUNCTION_LIST *f = tok->mod->f;
    static const uint8_t sha256_prefix[] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60,
                                            0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                                            0x01, 0x05, 0x00, 0x04, 0x20};
    CK_RSA_PKCS_PSS_PARAMS pss = {CKM_SHA256, CKG_MGF1_SHA256, 32};
    CK_MECHANISM mech = {0, NULL, 0};
    uint8_t in[80];
    size_t inlen = dlen;
    *rvp = CKR_OK;
    if (dlen != hsm_alg_digest_len(alg)) {
        return PX_E_INVAL;
    }
    /* a mechanism of the other key family never reaches the module: SoftHSM 2.6 dereferences
     * NULL in C_Sign for RSA-PSS with an EC key (found by fuzz_frame_signer) */
    bool ec_alg = alg == HSM_ALG_ECDSA_SHA256 || alg == HSM_ALG_ECDSA_SHA384;
    enum hsm_key_type kt = tok->info.key_type;
    CK_OBJECT_HANDLE kh = s->key;
    if (key != 0) {
        /* an [inbound.NAME] server key: only one this signer found */
        if (key < 0 || key > tok->nx || key > HSM_XKEYS_MAX || !tok->xinfo[key - 1].found ||
            s->xkey[key - 1] == CK_INVALID_HANDLE) {
            *rvp = CKR_KEY_HANDLE_INVALID;
            return PX_E_INVAL;
        }
        kt = tok->xinfo[key - 1].key_type;
        kh = s->xkey[key - 1];
    }
    if ((kt == HSM_KEY_EC && !ec_alg) || (kt == HSM_KEY_RSA && ec_alg)) {
        return PX_E_INVAL;
    }
    switch (alg) {
    case HSM_ALG_ECDSA_SHA256:
    case HSM_ALG_ECDSA_SHA384:
        mech.mechanism = CKM_ECDSA;
        memcpy(in, digest, dlen);
        break;
    case HSM_ALG_RSA_PKCS1_SHA256:
        mech.mechanism = CKM_RSA_PKCS;
        memcpy(in, sha256_prefix, sizeof(sha256_prefix));
        memcpy(in + sizeof(sha256_prefix), digest, dlen);
        inlen = sizeof(sha256_prefix) + dlen;
        break;
    case HSM_ALG_RSA_PSS_SHA256:
        mech.mechanism = CKM_RSA_PKCS_PSS;
        mech.pParameter = &pss;
        mech.ulParameterLen = sizeof(pss);
        memcpy(in, digest, dlen);
        break;
    default:
        return PX_E_INVAL;
    }
    CK_RV rv = f->C_SignInit(s->h, &mech, kh);
    if (rv != CKR_OK) {
        *rvp = rv;
        return PX_E_HSM;
    }
    uint8_t raw[HSM_SIG_MAX];
    CK_ULONG rawlen = sizeof(raw);
    rv = f->C_Sign(s->h, in, inlen, raw, &rawlen);
    if (rv != CKR_OK) {
        *rvp = rv;
        return PX_E_HSM;
    }
    if (mech.mechanism == CKM_ECDSA) {
        return hsm_p11__ecdsa_raw_to_der(raw, rawlen, sig, HSM_SIG_MAX);
    }
    memcpy(sig, raw, rawlen);
    return (int)rawlen;
}

size_t hsm_alg_digest_len(enum hsm_alg alg)
{
    return alg == HSM_ALG_ECDSA_SHA384 ? 48 : 32;
}

const char *hsm_alg_name(enum hsm_alg alg)
{
    switch (alg) {
    case HSM_ALG_ECDSA_SHA256:
        return "ecdsa-with-SHA256";
    case HSM_ALG_ECDSA_SHA384:
        return "ecdsa-with-SHA384";
    case HSM_ALG_RSA_PKCS1_SHA256:
        return "sha256WithRSAEncryption";
    case HSM_ALG_RSA_PSS_SHA256:
        return "rsassa-pss-sha256";
    }
    return "?";
}
