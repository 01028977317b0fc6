/* SPDX-License-Identifier: MIT */
/*
 * hsm_p11_int.h - raw PKCS#11 helpers shared by the signer process and the management calls.
 * Private to hsm_offload/.
 */
#ifndef HSM_P11_INT_H
#define HSM_P11_INT_H

#include <p11-kit/pkcs11.h>

#include "hsm.h"

/* A loaded module. One per process per module path is enough (SoftHSM and p11-kit allow more). */
struct hsm_mod {
    void *dl;
    CK_FUNCTION_LIST *f;
    bool initialized;
};

/* An extra key a signer signs with (an [inbound.NAME] server key): by label, else hex id. */
struct hsm_xkey {
    char label[64];
    char id[64];
};

/* The token and keys one member uses; handles are per process. */
struct hsm_tok {
    struct hsm_mod *mod;
    CK_SLOT_ID slot;
    struct hsm_token_info info;
    char pin[128];
    const struct px_hsm_member_cfg *m;
    int nx;                                  /* extra keys: job key index 1..nx */
    struct hsm_xkey x[HSM_XKEYS_MAX];
    struct hsm_key_info xinfo[HSM_XKEYS_MAX]; /* what was found for each (hsm_p11__xkey_info) */
};

/* One session with the keys found in it. */
struct hsm_sess {
    CK_SESSION_HANDLE h;
    CK_OBJECT_HANDLE key;
    CK_OBJECT_HANDLE xkey[HSM_XKEYS_MAX]; /* CK_INVALID_HANDLE: not on the token */
    bool open;
};

int hsm_p11__load(struct hsm_mod *mod, const char *path, char *err, size_t errlen);
void hsm_p11__unload(struct hsm_mod *mod);
/* Finds the slot whose token matches m (label or serial) and fills tok->info. */
int hsm_p11__find_token(struct hsm_tok *tok, char *err, size_t errlen);
/* Opens a session, logs in (accepting CKR_USER_ALREADY_LOGGED_IN), finds the private key. */
int hsm_p11__session_open(struct hsm_tok *tok, struct hsm_sess *s, CK_RV *rv, char *err,
                          size_t errlen);
void hsm_p11__session_close(struct hsm_tok *tok, struct hsm_sess *s);
/* Reads key type/size/public key into tok->info (needs an open, logged-in session). */
int hsm_p11__key_info(struct hsm_tok *tok, struct hsm_sess *s, char *err, size_t errlen);
/* Fills tok->xinfo for every extra key (needs an open, logged-in session that looked them up). */
void hsm_p11__xkey_info(struct hsm_tok *tok, struct hsm_sess *s);
/* Signs with key 0 (the forward-trust key) or extra key 1..nx; returns DER signature length or
 * a negative code (PX_E_INVAL for a key this token does not hold); *rv holds the CK_RV. */
int hsm_p11__sign_key(struct hsm_tok *tok, struct hsm_sess *s, int key, enum hsm_alg alg,
                      const uint8_t *digest, size_t dlen, uint8_t *sig, CK_RV *rv);
/* Signs; returns DER signature length or a negative code; *rv holds the CK_RV. */
int hsm_p11__sign(struct hsm_tok *tok, struct hsm_sess *s, enum hsm_alg alg, const uint8_t *digest,
                  size_t dlen, uint8_t *sig, CK_RV *rv);
/* True for return codes after which reopening the session may help. */
bool hsm_p11__rv_session_level(CK_RV rv);
/* True for return codes that mean the module/device must be re-initialised. */
bool hsm_p11__rv_device_level(CK_RV rv);
/* Copies a blank-padded PKCS#11 string into a NUL-terminated one. */
void hsm_p11__str(char *dst, size_t cap, const CK_UTF8CHAR *src, size_t srclen);
/* Converts raw r||s to a DER ECDSA-Sig-Value; returns its length. */
int hsm_p11__ecdsa_raw_to_der(const uint8_t *raw, size_t rawlen, uint8_t *out, size_t cap);

#endif
