/* SPDX-License-Identifier: MIT */
/*
 * hsm_mgmt.c - management calls that load a PKCS#11 module in the calling process: token
 * creation and key generation for `tlsmint init`, and a direct synchronous session for tooling,
 * benchmarks (the plain C_Sign baseline) and test cross-checks.
 * Owns the module handle and sessions of each struct hsm_direct. Called from one thread per
 * object; never from the proxy (its module lives only in the signers).
 * Not here: deadlines and recovery (a management command simply fails with a clear message).
 */
#include "hsm_p11_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct hsm_direct {
    struct hsm_mod *mod; /* shared by clones; owned by the first */
    bool owns_mod;
    struct hsm_tok tok;
    struct hsm_sess sess;
    struct px_hsm_member_cfg m;
};

struct hsm_direct *hsm_direct_open(const struct px_hsm_member_cfg *m, char *err, size_t errlen)
{
    struct hsm_direct *d = calloc(1, sizeof(*d));
    struct hsm_mod *mod = calloc(1, sizeof(*mod));
    if (d == NULL || mod == NULL) {
        free(d);
        free(mod);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    d->m = *m;
    d->mod = mod;
    d->owns_mod = true;
    d->tok.m = &d->m;
    d->tok.mod = mod;
    CK_RV rv;
    if (px_read_secret_file(m->pin_file, d->tok.pin, sizeof(d->tok.pin), err, errlen) < 0 ||
        hsm_p11__load(mod, m->module, err, errlen) != 0) {
        px_wipe(d->tok.pin, sizeof(d->tok.pin));
        free(mod);
        free(d);
        return NULL;
    }
    if (hsm_p11__find_token(&d->tok, err, errlen) != 0 ||
        hsm_p11__session_open(&d->tok, &d->sess, &rv, err, errlen) != 0 ||
        hsm_p11__key_info(&d->tok, &d->sess, err, errlen) != 0) {
        hsm_direct_close(d);
        return NULL;
    }
    return d;
}

struct hsm_direct *hsm_direct_clone(struct hsm_direct *src, char *err, size_t errlen)
{
    struct hsm_direct *d = calloc(1, sizeof(*d));
    if (d == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    d->m = src->m;
    d->mod = src->mod;
    d->owns_mod = false;
    d->tok = src->tok;
    d->tok.m = &d->m;
    CK_RV rv;
    if (hsm_p11__session_open(&d->tok, &d->sess, &rv, err, errlen) != 0) {
        px_wipe(&d->tok, sizeof(d->tok));
        free(d);
        return NULL;
    }
    return d;
}

void hsm_direct_close(struct hsm_direct *d)
{
    if (d == NULL) {
        return;
    }
    hsm_p11__session_close(&d->tok, &d->sess);
    if (d->owns_mod) {
        hsm_p11__unload(d->mod);
        free(d->mod);
    }
    px_wipe(&d->tok, sizeof(d->tok));
    free(d);
}

const struct hsm_token_info *hsm_direct_info(const struct hsm_direct *d)
{
    return &d->tok.info;
}

int hsm_direct_sign(struct hsm_direct *d, enum hsm_alg alg, const uint8_t *digest,
                    size_t digest_len, uint8_t *sig, unsigned long *ck_rv)
{
    CK_RV rv = CKR_OK;
    int n = hsm_p11__sign(&d->tok, &d->sess, alg, digest, digest_len, sig, &rv);
    if (ck_rv) {
        *ck_rv = rv;
    }
    return n;
}

static CK_RV find_secret_key(struct hsm_direct *d, CK_SESSION_HANDLE h, const char *label,
                             CK_OBJECT_HANDLE *out)
{
    CK_FUNCTION_LIST *f = d->mod->f;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_ATTRIBUTE t[2] = {{CKA_CLASS, &cls, sizeof(cls)},
                         {CKA_LABEL, (void *)label, strlen(label)}};
    CK_ULONG n = 0;
    CK_RV rv = f->C_FindObjectsInit(h, t, 2);
    if (rv != CKR_OK) {
        return rv;
    }
    rv = f->C_FindObjects(h, out, 1, &n);
    f->C_FindObjectsFinal(h);
    return rv != CKR_OK ? rv : (n == 1 ? CKR_OK : CKR_KEY_HANDLE_INVALID);
}

int hsm_direct_aes_keygen(struct hsm_direct *d, const char *label, char *err, size_t errlen)
{
    CK_FUNCTION_LIST *f = d->mod->f;
    CK_SESSION_HANDLE h;
    CK_RV rv = f->C_OpenSession(d->tok.slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h);
    if (rv != CKR_OK) {
        snprintf(err, errlen, "C_OpenSession (rw): %s", hsm_ckr_name(rv));
        return PX_E_HSM;
    }
    CK_OBJECT_HANDLE k;
    if (find_secret_key(d, h, label, &k) == CKR_OK) {
        f->C_CloseSession(h);
        snprintf(err, errlen, "a key labelled '%s' already exists on token '%s'", label,
                 d->tok.info.label);
        return PX_E_EXISTS;
    }
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ULONG len = 32;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_KEY_TYPE, &kt, sizeof(kt)},
                        {CKA_TOKEN, &yes, sizeof(yes)},
                        {CKA_PRIVATE, &yes, sizeof(yes)},
                        {CKA_SENSITIVE, &yes, sizeof(yes)},
                        {CKA_EXTRACTABLE, &no, sizeof(no)},
                        {CKA_ENCRYPT, &yes, sizeof(yes)},
                        {CKA_DECRYPT, &yes, sizeof(yes)},
                        {CKA_VALUE_LEN, &len, sizeof(len)},
                        {CKA_LABEL, (void *)label, strlen(label)}};
    CK_MECHANISM m = {CKM_AES_KEY_GEN, NULL, 0};
    rv = f->C_GenerateKey(h, &m, t, sizeof(t) / sizeof(t[0]), &k);
    f->C_CloseSession(h);
    if (rv != CKR_OK) {
        snprintf(err, errlen, "C_GenerateKey(AES-256 '%s') on token '%s': %s", label,
                 d->tok.info.label, hsm_ckr_name(rv));
        return PX_E_HSM;
    }
    return 0;
}

int hsm_direct_aes_gcm(struct hsm_direct *d, const char *label, bool encrypt,
                       const uint8_t iv[12], const uint8_t *aad, size_t aadlen, const uint8_t *in,
                       size_t inlen, uint8_t *out, size_t *outlen, char *err, size_t errlen)
{
    CK_FUNCTION_LIST *f = d->mod->f;
    CK_OBJECT_HANDLE k;
    CK_RV rv = find_secret_key(d, d->sess.h, label, &k);
    if (rv != CKR_OK) {
        snprintf(err, errlen, "no AES key labelled '%s' on token '%s' (%s)", label,
                 d->tok.info.label, hsm_ckr_name(rv));
        return PX_E_HSM;
    }
    CK_GCM_PARAMS p = {(CK_BYTE *)iv, 12, 96, (CK_BYTE *)aad, aadlen, 128};
    CK_MECHANISM m = {CKM_AES_GCM, &p, sizeof(p)};
    CK_ULONG ol = *outlen;
    rv = encrypt ? f->C_EncryptInit(d->sess.h, &m, k) : f->C_DecryptInit(d->sess.h, &m, k);
    if (rv == CKR_OK) {
        rv = encrypt ? f->C_Encrypt(d->sess.h, (CK_BYTE *)in, inlen, out, &ol)
                     : f->C_Decrypt(d->sess.h, (CK_BYTE *)in, inlen, out, &ol);
    }
    if (rv != CKR_OK) {
        /* SoftHSM reports a failed GCM tag as CKR_GENERAL_ERROR: a bad blob, not a bad device */
        snprintf(err, errlen, "AES-GCM %s with '%s': %s%s", encrypt ? "encrypt" : "decrypt", label,
                 hsm_ckr_name(rv), encrypt ? "" : " (wrong wrapping key or damaged blob)");
        return PX_E_HSM;
    }
    *outlen = ol;
    return 0;
}

/* After C_InitToken SoftHSM moves the token to a new slot id: find it by label again. */
static int find_slot_by_label(CK_FUNCTION_LIST *f, const char *label, bool initialized,
                              CK_SLOT_ID *out)
{
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64;
    if (f->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK) {
        return PX_E_HSM;
    }
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (f->C_GetTokenInfo(slots[i], &ti) != CKR_OK) {
            continue;
        }
        bool init = (ti.flags & CKF_TOKEN_INITIALIZED) != 0;
        if (!initialized && !init) {
            *out = slots[i];
            return 0;
        }
        char l[33];
        hsm_p11__str(l, sizeof(l), ti.label, sizeof(ti.label));
        if (initialized && init && strcmp(l, label) == 0) {
            *out = slots[i];
            return 0;
        }
    }
    return PX_E_HSM;
}

/*
 * Generates a key pair in the logged-in rw session h: token objects labelled label with CKA_ID
 * id, the private half sensitive and never extractable, signing only.
 */
static CK_RV gen_pair(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE h, const char *key_label,
                      const CK_BYTE *id, CK_ULONG idlen, enum hsm_keygen kind,
                      CK_OBJECT_HANDLE *hpriv)
{
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    static const uint8_t p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    static const uint8_t p384[] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22};
    CK_BYTE exp[] = {0x01, 0x00, 0x01};
    CK_ULONG bits = kind == HSM_KEYGEN_RSA_3072 ? 3072 : 2048;
    CK_MECHANISM mech;
    CK_ATTRIBUTE pubt[8], privt[8];
    CK_ULONG np = 0, nq = 0;
    pubt[np++] = (CK_ATTRIBUTE){CKA_TOKEN, &yes, sizeof(yes)};
    pubt[np++] = (CK_ATTRIBUTE){CKA_VERIFY, &yes, sizeof(yes)};
    pubt[np++] = (CK_ATTRIBUTE){CKA_LABEL, (void *)key_label, strlen(key_label)};
    pubt[np++] = (CK_ATTRIBUTE){CKA_ID, (void *)id, idlen};
    if (kind == HSM_KEYGEN_EC_P256 || kind == HSM_KEYGEN_EC_P384) {
        mech = (CK_MECHANISM){CKM_EC_KEY_PAIR_GEN, NULL, 0};
        if (kind == HSM_KEYGEN_EC_P256) {
            pubt[np++] = (CK_ATTRIBUTE){CKA_EC_PARAMS, (void *)p256, sizeof(p256)};
        } else {
            pubt[np++] = (CK_ATTRIBUTE){CKA_EC_PARAMS, (void *)p384, sizeof(p384)};
        }
    } else {
        mech = (CK_MECHANISM){CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
        pubt[np++] = (CK_ATTRIBUTE){CKA_MODULUS_BITS, &bits, sizeof(bits)};
        pubt[np++] = (CK_ATTRIBUTE){CKA_PUBLIC_EXPONENT, exp, sizeof(exp)};
    }
    privt[nq++] = (CK_ATTRIBUTE){CKA_TOKEN, &yes, sizeof(yes)};
    privt[nq++] = (CK_ATTRIBUTE){CKA_PRIVATE, &yes, sizeof(yes)};
    privt[nq++] = (CK_ATTRIBUTE){CKA_SENSITIVE, &yes, sizeof(yes)};
    privt[nq++] = (CK_ATTRIBUTE){CKA_EXTRACTABLE, &no, sizeof(no)};
    privt[nq++] = (CK_ATTRIBUTE){CKA_SIGN, &yes, sizeof(yes)};
    privt[nq++] = (CK_ATTRIBUTE){CKA_LABEL, (void *)key_label, strlen(key_label)};
    privt[nq++] = (CK_ATTRIBUTE){CKA_ID, (void *)id, idlen};
    CK_OBJECT_HANDLE hpub;
    return f->C_GenerateKeyPair(h, &mech, pubt, np, privt, nq, &hpub, hpriv);
}

int hsm_mgmt_create_token_and_key(const char *module, const char *token_label, const char *so_pin,
                                  const char *user_pin, const char *key_label,
                                  enum hsm_keygen kind, uint8_t *pub, char *err, size_t errlen)
{
    struct hsm_mod mod;
    struct px_hsm_member_cfg m;
    struct hsm_tok tok;
    struct hsm_sess s = {0};
    CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
    CK_SLOT_ID slot;
    CK_RV rv = CKR_OK;
    int ret = PX_E_HSM;
    const char *step = "";

    memset(&m, 0, sizeof(m));
    memset(&tok, 0, sizeof(tok));
    if (hsm_p11__load(&mod, module, err, errlen) != 0) {
        return PX_E_HSM;
    }
    CK_FUNCTION_LIST *f = mod.f;
    if (find_slot_by_label(f, token_label, true, &slot) == 0) {
        snprintf(err, errlen, "a token labelled '%s' already exists in %s: refusing to touch it",
                 token_label, module);
        ret = PX_E_EXISTS;
        goto out;
    }
    if (find_slot_by_label(f, NULL, false, &slot) != 0) {
        snprintf(err, errlen, "no free (uninitialised) token slot in %s", module);
        goto out;
    }
    CK_UTF8CHAR label32[32];
    memset(label32, ' ', sizeof(label32));
    memcpy(label32, token_label, strnlen(token_label, 32));
    step = "C_InitToken";
    rv = f->C_InitToken(slot, (CK_UTF8CHAR *)so_pin, strlen(so_pin), label32);
    if (rv != CKR_OK) {
        goto fail;
    }
    if (find_slot_by_label(f, token_label, true, &slot) != 0) {
        snprintf(err, errlen, "token '%s' vanished after C_InitToken", token_label);
        goto out;
    }
    step = "C_OpenSession";
    rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h);
    if (rv != CKR_OK) {
        goto fail;
    }
    step = "C_Login(SO)";
    rv = f->C_Login(h, CKU_SO, (CK_UTF8CHAR *)so_pin, strlen(so_pin));
    if (rv != CKR_OK) {
        goto fail;
    }
    step = "C_InitPIN";
    rv = f->C_InitPIN(h, (CK_UTF8CHAR *)user_pin, strlen(user_pin));
    if (rv != CKR_OK) {
        goto fail;
    }
    f->C_Logout(h);
    step = "C_Login(user)";
    rv = f->C_Login(h, CKU_USER, (CK_UTF8CHAR *)user_pin, strlen(user_pin));
    if (rv != CKR_OK) {
        goto fail;
    }

    CK_BYTE id[] = {0x01};
    CK_OBJECT_HANDLE hpriv;
    step = "C_GenerateKeyPair";
    rv = gen_pair(f, h, key_label, id, sizeof(id), kind, &hpriv);
    if (rv != CKR_OK) {
        goto fail;
    }

    /* read the public key back the same way the signer will */
    snprintf(m.name, sizeof(m.name), "init");
    snprintf(m.key_label, sizeof(m.key_label), "%s", key_label);
    tok.m = &m;
    tok.mod = &mod;
    tok.slot = slot;
    s.h = h;
    s.key = hpriv;
    if (hsm_p11__key_info(&tok, &s, err, errlen) != 0) {
        goto out;
    }
    if (tok.info.pub_len == 0) {
        snprintf(err, errlen, "could not read the generated public key back");
        goto out;
    }
    memcpy(pub, tok.info.pub_der, tok.info.pub_len);
    ret = tok.info.pub_len;
    goto out;

fail:
    snprintf(err, errlen, "%s on %s: %s", step, module, hsm_ckr_name(rv));
    ret = PX_E_HSM;
out:
    if (h != CK_INVALID_HANDLE) {
        f->C_CloseSession(h);
    }
    hsm_p11__unload(&mod);
    return ret;
}

int hsm_mgmt_keygen(const struct px_hsm_member_cfg *member, const char *key_label,
                    enum hsm_keygen kind, uint8_t *id, size_t idlen, uint8_t *pub, char *err,
                    size_t errlen)
{
    struct hsm_mod mod;
    struct px_hsm_member_cfg m = *member;
    struct hsm_tok tok;
    struct hsm_sess s = {0};
    CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
    CK_RV rv = CKR_OK;
    int ret = PX_E_HSM;
    const char *step = "";

    memset(&tok, 0, sizeof(tok));
    snprintf(m.key_label, sizeof(m.key_label), "%s", key_label);
    m.key_id[0] = '\0';
    tok.m = &m;
    tok.mod = &mod;
    if (px_read_secret_file(m.pin_file, tok.pin, sizeof(tok.pin), err, errlen) < 0) {
        return PX_E_CONFIG;
    }
    if (hsm_p11__load(&mod, m.module, err, errlen) != 0) {
        px_wipe(tok.pin, sizeof(tok.pin));
        return PX_E_HSM;
    }
    CK_FUNCTION_LIST *f = mod.f;
    if (hsm_p11__find_token(&tok, err, errlen) != 0) {
        goto out;
    }
    /* an existing key of that label would make the label ambiguous: refuse */
    if (hsm_p11__session_open(&tok, &s, &rv, err, errlen) == 0) {
        hsm_p11__session_close(&tok, &s);
        snprintf(err, errlen, "a private key labelled '%s' already exists on token '%s': "
                 "refusing to make another", key_label, tok.info.label);
        ret = PX_E_EXISTS;
        goto out;
    }
    step = "C_OpenSession (rw)";
    rv = f->C_OpenSession(tok.slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h);
    if (rv != CKR_OK) {
        goto fail;
    }
    step = "C_Login";
    rv = f->C_Login(h, CKU_USER, (CK_UTF8CHAR *)tok.pin, strlen(tok.pin));
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
        goto fail;
    }
    CK_OBJECT_HANDLE hpriv;
    step = "C_GenerateKeyPair";
    rv = gen_pair(f, h, key_label, id, idlen, kind, &hpriv);
    if (rv != CKR_OK) {
        goto fail;
    }
    s.h = h;
    s.key = hpriv;
    if (hsm_p11__key_info(&tok, &s, err, errlen) != 0) {
        goto out;
    }
    if (tok.info.pub_len == 0) {
        snprintf(err, errlen, "could not read the generated public key back");
        goto out;
    }
    memcpy(pub, tok.info.pub_der, tok.info.pub_len);
    ret = tok.info.pub_len;
    goto out;

fail:
    snprintf(err, errlen, "[%s] %s on token '%s': %s", m.name, step, tok.info.label,
             hsm_ckr_name(rv));
    ret = PX_E_HSM;
out:
    if (h != CK_INVALID_HANDLE) {
        f->C_CloseSession(h);
    }
    px_wipe(tok.pin, sizeof(tok.pin));
    hsm_p11__unload(&mod);
    return ret;
}
