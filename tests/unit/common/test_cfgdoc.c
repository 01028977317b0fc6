/* SPDX-License-Identifier: MIT */
/*
 * test_cfgdoc.c - tlsmint.conf(5) must not drift from the parser: every [section] key the man
 * page documents is accepted by px_cfg, and every key px_cfg accepts is documented.
 * What px_cfg accepts is asked of px_cfg itself: every identifier-like string literal in
 * common/px_cfg*.c is tried as a key in every section the parser knows (a key is accepted when
 * the error, if any, is not "unknown key"), so the test needs no list kept by hand.
 * The man page's shape: section headings "# SECTION [name]" / "## SECTION [hsm.NAME]", keys as
 * lines that start with "*key*".
 * Not here: the values' meaning (test_cfg.c).
 */
#include "px.h"

#include <check.h>
#include <ctype.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

Suite *cfgdoc_suite(void);

#ifndef TLSMINT_SRCDIR
#define TLSMINT_SRCDIR "."
#endif

#define MAX_NAMES 1024

struct names {
    char v[MAX_NAMES][64];
    int n;
};

static void names_add(struct names *s, const char *x)
{
    for (int i = 0; i < s->n; i++) {
        if (strcmp(s->v[i], x) == 0) {
            return;
        }
    }
    ck_assert_int_lt(s->n, MAX_NAMES);
    snprintf(s->v[s->n++], sizeof(s->v[0]), "%s", x);
}

static bool names_has(const struct names *s, const char *x)
{
    for (int i = 0; i < s->n; i++) {
        if (strcmp(s->v[i], x) == 0) {
            return true;
        }
    }
    return false;
}

/* Identifier-like string literals ("[a-z][a-z0-9_.]*") of one C file. */
static void literals_of(const char *path, struct names *out)
{
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    char line[4096];
    while (fgets(line, sizeof(line), f) != NULL) {
        for (char *p = strchr(line, '"'); p != NULL;) {
            char *q = strchr(p + 1, '"');
            if (q == NULL) {
                break;
            }
            size_t n = (size_t)(q - p - 1);
            bool ident = n > 0 && n < 60 && islower((unsigned char)p[1]);
            for (size_t i = 1; ident && i <= n; i++) {
                ident = islower((unsigned char)p[i]) || isdigit((unsigned char)p[i]) ||
                        p[i] == '_' || p[i] == '.';
            }
            if (ident) {
                char w[64];
                snprintf(w, sizeof(w), "%.*s", (int)n, p + 1);
                names_add(out, w);
            }
            p = strchr(q + 1, '"');
        }
    }
    fclose(f);
}

static const char hsm_req[] = "[hsm]\nmodule = /m.so\ntoken = t\npin_file = /p\nkey_label = k\n";

/* The parser's verdict on "[sec] key = 1": true unless it says "unknown key/section". */
static bool accepted(const char *sec, const char *key)
{
    static struct px_cfg cfg;
    char text[512], err[600] = "", unknown[200];
    snprintf(text, sizeof(text), "%s[%s]\n%s = 1\n", hsm_req, sec, key);
    if (px_cfg_load_string("doc", text, &cfg, err, sizeof(err)) == 0) {
        return true;
    }
    snprintf(unknown, sizeof(unknown), "[%s] %s: unknown", sec, key);
    return strstr(err, unknown) == NULL && strstr(err, "unknown section") == NULL;
}

/* "[sec] key" pairs px_cfg accepts, from the literals of common/px_cfg*.c. */
static void parser_keys(struct names *out)
{
    static struct names lits;
    lits.n = 0;
    DIR *d = opendir(TLSMINT_SRCDIR "/common");
    ck_assert(d != NULL);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (strncmp(e->d_name, "px_cfg", 6) == 0 && n > 2 && strcmp(e->d_name + n - 2, ".c") == 0) {
            char p[600];
            snprintf(p, sizeof(p), "%s/common/%s", TLSMINT_SRCDIR, e->d_name);
            literals_of(p, &lits);
        }
    }
    closedir(d);
    ck_assert_int_gt(lits.n, 10);
    static struct names secs;
    secs.n = 0;
    names_add(&secs, "hsm.x");     /* [hsm.NAME] */
    names_add(&secs, "rule.x");    /* [rule.NAME] */
    names_add(&secs, "profile.x"); /* [profile.NAME] */
    names_add(&secs, "inbound.x"); /* [inbound.NAME] */
    for (int i = 0; i < lits.n; i++) {
        char text[512], err[600] = "";
        static struct px_cfg cfg;
        snprintf(text, sizeof(text), "%s[%s]\nzz_no_such_key = 1\n", hsm_req, lits.v[i]);
        if (strchr(lits.v[i], '.') == NULL &&
            px_cfg_load_string("doc", text, &cfg, err, sizeof(err)) != 0 &&
            strstr(err, "unknown section") == NULL) {
            names_add(&secs, lits.v[i]);
        }
    }
    ck_assert_msg(names_has(&secs, "listen") && names_has(&secs, "hsm"), "sections not found");
    for (int s = 0; s < secs.n; s++) {
        for (int k = 0; k < lits.n; k++) {
            if (strchr(lits.v[k], '.') == NULL && accepted(secs.v[s], lits.v[k])) {
                char pair[140];
                const char *sn = secs.v[s];
                snprintf(pair, sizeof(pair), "[%s] %s",
                         strcmp(sn, "hsm.x") == 0       ? "hsm.NAME"
                         : strcmp(sn, "rule.x") == 0    ? "rule.NAME"
                         : strcmp(sn, "profile.x") == 0 ? "profile.NAME"
                         : strcmp(sn, "inbound.x") == 0 ? "inbound.NAME"
                                                        : sn,
                         lits.v[k]);
                names_add(out, pair);
            }
        }
    }
}

/* "[sec] key" pairs tlsmint.conf(5) documents. */
static void doc_keys(struct names *out)
{
    const char *path = TLSMINT_SRCDIR "/doc/tlsmint.conf.5.scd";
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    char line[1024], sec[64] = "";
    while (fgets(line, sizeof(line), f) != NULL) {
        char *b = strstr(line, "SECTION [");
        if (line[0] == '#' && b != NULL) {
            char *e = strchr(b, ']');
            snprintf(sec, sizeof(sec), "%.*s", e ? (int)(e - b - 9) : 0, b + 9);
            continue;
        }
        if (line[0] == '#') {
            sec[0] = '\0'; /* NAME, FILES, ...: no keys there */
            continue;
        }
        if (line[0] == '*' && sec[0] != '\0') {
            char *e = strchr(line + 1, '*');
            if (e != NULL && e - line > 1) {
                char pair[140];
                snprintf(pair, sizeof(pair), "[%s] %.*s", sec, (int)(e - line - 1), line + 1);
                names_add(out, pair);
            }
        }
    }
    fclose(f);
}

START_TEST(test_doc_matches_parser)
{
    static struct names parsed, doc;
    parsed.n = doc.n = 0;
    parser_keys(&parsed);
    doc_keys(&doc);
    ck_assert_int_gt(doc.n, 20);
    char undocumented[4096] = "", unknown[4096] = "";
    for (int i = 0; i < parsed.n; i++) {
        if (!names_has(&doc, parsed.v[i])) {
            size_t l = strlen(undocumented);
            snprintf(undocumented + l, sizeof(undocumented) - l, " %s;", parsed.v[i]);
        }
    }
    for (int i = 0; i < doc.n; i++) {
        if (!names_has(&parsed, doc.v[i])) {
            size_t l = strlen(unknown);
            snprintf(unknown + l, sizeof(unknown) - l, " %s;", doc.v[i]);
        }
    }
    ck_assert_msg(undocumented[0] == '\0' && unknown[0] == '\0',
                  "doc/tlsmint.conf.5.scd and common/px_cfg.c disagree. Accepted by the parser "
                  "but not documented (add a '*key* = _VALUE_ (default)' entry under its "
                  "'# SECTION [name]'):%s%s Documented but refused by the parser:%s%s",
                  undocumented, undocumented[0] ? "" : " none.", unknown,
                  unknown[0] ? "" : " none.");
}
END_TEST

/* The comparison itself must be able to fail: a made-up key is neither accepted nor found. */
START_TEST(test_doc_check_can_fail)
{
    ck_assert(!accepted("listen", "zz_no_such_key"));
    ck_assert(!accepted("zz_no_such_section", "threads"));
    ck_assert(accepted("listen", "threads"));
    ck_assert(accepted("hsm.x", "module"));
    ck_assert(!accepted("hsm.x", "workers")); /* shared settings live in [hsm] only */
}
END_TEST

Suite *cfgdoc_suite(void)
{
    Suite *s = suite_create("cfgdoc");
    TCase *tc = tcase_create("cfgdoc");
    tcase_add_test(tc, test_doc_matches_parser);
    tcase_add_test(tc, test_doc_check_can_fail);
    suite_add_tcase(s, tc);
    return s;
}
