/* SPDX-License-Identifier: MIT */
/*
 * cli_expiry.c - how long the certificates tlsmint serves stay valid: the forward-trust CA,
 * every certificate of its chain file, the forward-untrust CA.
 * Owns nothing between calls: each call reads the PEM files as they are on disk now, so a
 * `ca import` (which replaces a file in place) shows at once in `ctl status` and the metrics.
 * Called from the main thread (start, reload) and the admin thread (daily check, status,
 * metrics); reads files, so never from a loop thread.
 * Invariants: days left count started days, like the master key's (a CA issued for 10 days has
 * 10 left); an expired certificate has a negative count.
 * Not here: capping the leaves (certcache/cc_mint.c uses the same notAfter values).
 */
#include "cli.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/pem.h>

static time_t asn1_time(const ASN1_TIME *t)
{
    struct tm tm;
    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1) {
        return 0;
    }
    return timegm(&tm);
}

static void add_file(const char *path, const char *role, bool all, struct cli_cert_exp *out,
                     int max, int *n)
{
    if (path[0] == '\0') {
        return;
    }
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return;
    }
    X509 *x;
    while (*n < max && (x = PEM_read_X509(f, NULL, NULL, NULL)) != NULL) {
        struct cli_cert_exp *e = &out[(*n)++];
        memset(e, 0, sizeof(*e));
        snprintf(e->role, sizeof(e->role), "%s", role);
        snprintf(e->file, sizeof(e->file), "%s", path);
        X509_NAME_oneline(X509_get_subject_name(x), e->subject, sizeof(e->subject));
        e->not_after = asn1_time(X509_get0_notAfter(x));
        long long left = (long long)e->not_after - (long long)time(NULL);
        e->days_left = (int)(left >= 0 ? (left + 86399) / 86400 : -((-left + 86399) / 86400));
        e->expired = left <= 0;
        X509_free(x);
        if (!all) {
            break;
        }
    }
    ERR_clear_error();
    fclose(f);
}

int cli_cert_expiry(const struct px_cfg *cfg, struct cli_cert_exp *out, int max)
{
    int n = 0;
    add_file(cfg->ca_forward_trust_cert, "forward-trust", false, out, max, &n);
    add_file(cfg->ca_forward_trust_chain, "forward-trust-chain", true, out, max, &n);
    add_file(cfg->ca_forward_untrust_cert, "forward-untrust", false, out, max, &n);
    return n;
}

int cli_cert_expiry_check(const struct px_cfg *cfg, char *err, size_t errlen)
{
    struct cli_cert_exp e[CLI_CERT_EXP_MAX];
    int n = cli_cert_expiry(cfg, e, CLI_CERT_EXP_MAX);
    for (int i = 0; i < n; i++) {
        if (strcmp(e[i].role, "forward-trust") == 0 && e[i].expired) {
            snprintf(err, errlen, "the forward-trust CA %s (%s) expired %d days ago: every "
                     "intercepted connection would fail. Issue a new one ('tlsmint ca csr', "
                     "then 'tlsmint ca import')", e[i].subject, e[i].file, -e[i].days_left);
            return PX_E_CONFIG;
        }
    }
    return 0;
}

void cli_cert_expiry_warn(const struct px_cfg *cfg)
{
    struct cli_cert_exp e[CLI_CERT_EXP_MAX];
    int n = cli_cert_expiry(cfg, e, CLI_CERT_EXP_MAX);
    for (int i = 0; i < n; i++) {
        if (e[i].expired) {
            px_log(PX_LOG_ERROR, "main", "certificate %s (%s, %s) expired %d days ago", e[i].role,
                   e[i].subject, e[i].file, -e[i].days_left);
        } else if (e[i].days_left <= cfg->ca_reminder_days) {
            px_log(PX_LOG_WARN, "main", "certificate %s (%s, %s) expires in %d days (within "
                   "[ca] reminder_days = %d): renew it", e[i].role, e[i].subject, e[i].file,
                   e[i].days_left, cfg->ca_reminder_days);
        }
    }
}

/* Prometheus label values: backslash, double quote and newline escaped. */
static void label_escape(const char *in, char *out, size_t cap)
{
    size_t o = 0;
    for (; *in != '\0' && o + 3 < cap; in++) {
        if (*in == '\\' || *in == '"') {
            out[o++] = '\\';
            out[o++] = *in;
        } else if (*in == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else {
            out[o++] = *in;
        }
    }
    out[o] = '\0';
}

void cli_cert_expiry_metrics(const struct px_cfg *cfg, FILE *o)
{
    struct cli_cert_exp e[CLI_CERT_EXP_MAX];
    int n = cli_cert_expiry(cfg, e, CLI_CERT_EXP_MAX);
    fprintf(o, "# HELP tlsmint_certificate_expiry_timestamp_seconds notAfter of each CA and "
               "certificate tlsmint serves\n"
               "# TYPE tlsmint_certificate_expiry_timestamp_seconds gauge\n");
    for (int i = 0; i < n; i++) {
        char subj[520];
        label_escape(e[i].subject, subj, sizeof(subj));
        fprintf(o, "tlsmint_certificate_expiry_timestamp_seconds{role=\"%s\",subject=\"%s\"} %lld\n",
                e[i].role, subj, (long long)e[i].not_after);
    }
    fprintf(o, "# HELP tlsmint_certificate_reminder_seconds [ca] reminder_days, in seconds\n"
               "# TYPE tlsmint_certificate_reminder_seconds gauge\n"
               "tlsmint_certificate_reminder_seconds %lld\n"
               "# HELP tlsmint_master_key_reminder_seconds [master_key] reminder_days, in seconds\n"
               "# TYPE tlsmint_master_key_reminder_seconds gauge\n"
               "tlsmint_master_key_reminder_seconds %lld\n",
            (long long)cfg->ca_reminder_days * 86400, (long long)cfg->mk_reminder_days * 86400);
}

void cli_cert_expiry_status(const struct px_cfg *cfg, FILE *o)
{
    struct cli_cert_exp e[CLI_CERT_EXP_MAX];
    int n = cli_cert_expiry(cfg, e, CLI_CERT_EXP_MAX);
    for (int i = 0; i < n; i++) {
        char when[32];
        struct tm tm;
        gmtime_r(&e[i].not_after, &tm);
        strftime(when, sizeof(when), "%Y-%m-%d %H:%M UTC", &tm);
        fprintf(o, "certificate   %s %s: %d days left (until %s)%s\n", e[i].role, e[i].subject,
                e[i].days_left, when,
                e[i].expired                               ? " (EXPIRED)"
                : e[i].days_left <= cfg->ca_reminder_days ? " (reminder: renew it)"
                                                           : "");
    }
}
