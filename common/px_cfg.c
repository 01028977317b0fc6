/* SPDX-License-Identifier: MIT */
/*
 * px_cfg.c - the configuration file: INI (libinih) into a validated struct px_cfg.
 * Owns nothing after it returns; the caller owns the struct.
 * Called at start-up and on reload, from one thread at a time.
 * Invariants: every accepted key is in the table below; the first error wins and names
 * FILE:LINE: [section] key.
 * Not here: what the values mean at run time.
 */
#include "px.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>

#include <ini.h>

#define CFG_MAX_LINE 4096

struct parse_state {
    struct px_cfg *cfg;
    const char *name;
    int line;          /* line the reader returned last */
    int section_line;  /* line of the last [section] header */
    char err[512];
    int failed;
    int fail_line;
    int workers_line; /* last [hsm] workers/workers_min/workers_max line */
    /* stream sources */
    FILE *fp;
    const char *str;
};

static int fail(struct parse_state *st, const char *section, const char *key, const char *fmt,
                ...) PX_PRINTF(4, 5);

static bool known_section(const char *name, size_t len)
{
    static const char *known[] = {"listen", "hsm", "ca", "cache", "upstream", "policy", "log",
                                  "admin", "master_key", "run", "export",
                                  "exclusions", "inbound"};
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        if (strlen(known[i]) == len && strncmp(name, known[i], len) == 0) {
            return true;
        }
    }
    /* member, rule and profile names are checked when the section is registered */
    return (len >= 4 && strncmp(name, "hsm.", 4) == 0) ||
           (len >= 5 && strncmp(name, "rule.", 5) == 0) ||
           (len >= 8 && strncmp(name, "profile.", 8) == 0) ||
           (len >= 8 && strncmp(name, "inbound.", 8) == 0);
}

static bool name_ok(const char *n)
{
    size_t l = strlen(n);
    if (l == 0 || l >= 48) {
        return false;
    }
    for (size_t i = 0; i < l; i++) {
        unsigned char ch = (unsigned char)n[i];
        if (!isalnum(ch) && ch != '_' && ch != '-') {
            return false;
        }
    }
    return true;
}

/* The [rule.NAME] of sec ("rule.NAME"); create: registered at its header, in file order. */
static struct px_rule *rule_for(struct parse_state *st, const char *sec, bool create)
{
    struct px_cfg *c = st->cfg;
    const char *name = sec + 5;
    for (int i = 0; i < c->n_rules; i++) {
        if (strcmp(c->rules[i].name, name) == 0) {
            return &c->rules[i];
        }
    }
    if (!create) {
        return NULL;
    }
    if (!name_ok(name) || strcmp(name, "bypass") == 0 || strcmp(name, "default") == 0) {
        fail(st, sec, "-", "rule name must be 1-47 letters, digits, '-' or '_' (and not "
             "bypass or default, the names of [policy] bypass and default)");
        return NULL;
    }
    if (c->n_rules >= PX_RULES_MAX) {
        fail(st, sec, "-", "at most %d rules", PX_RULES_MAX);
        return NULL;
    }
    struct px_rule *r = &c->rules[c->n_rules++];
    memset(r, 0, sizeof(*r));
    snprintf(r->name, sizeof(r->name), "%s", name);
    r->profile = -1;
    r->line = st->line;
    return r;
}

static struct px_profile *profile_for(struct parse_state *st, const char *sec, bool create)
{
    struct px_cfg *c = st->cfg;
    const char *name = sec + 8;
    for (int i = 0; i < c->n_profiles; i++) {
        if (strcmp(c->profiles[i].name, name) == 0) {
            return &c->profiles[i];
        }
    }
    if (!create) {
        return NULL;
    }
    if (!name_ok(name)) {
        fail(st, sec, "-", "profile name must be 1-47 letters, digits, '-' or '_'");
        return NULL;
    }
    if (c->n_profiles >= PX_PROFILES_MAX) {
        fail(st, sec, "-", "at most %d profiles", PX_PROFILES_MAX);
        return NULL;
    }
    struct px_profile *p = &c->profiles[c->n_profiles++];
    px_profile_defaults(p);
    snprintf(p->name, sizeof(p->name), "%s", name);
    p->line = st->line;
    return p;
}

/* The [inbound.NAME] of sec; create: registered at its header, in file order. */
static struct px_inbound_cfg *inbound_for(struct parse_state *st, const char *sec, bool create)
{
    struct px_cfg *c = st->cfg;
    const char *name = sec + 8;
    for (int i = 0; i < c->n_inbound; i++) {
        if (strcmp(c->inbound[i].name, name) == 0) {
            return &c->inbound[i];
        }
    }
    if (!create) {
        return NULL;
    }
    if (!name_ok(name)) {
        fail(st, sec, "-", "inbound listener name must be 1-47 letters, digits, '-' or '_'");
        return NULL;
    }
    if (c->n_inbound >= PX_INBOUND_MAX) {
        fail(st, sec, "-", "at most %d inbound listeners", PX_INBOUND_MAX);
        return NULL;
    }
    struct px_inbound_cfg *ib = &c->inbound[c->n_inbound++];
    memset(ib, 0, sizeof(*ib));
    snprintf(ib->name, sizeof(ib->name), "%s", name);
    snprintf(ib->alpn, sizeof(ib->alpn), "http/1.1");
    ib->alpn_wire[0] = 8;
    memcpy(ib->alpn_wire + 1, "http/1.1", 8);
    ib->alpn_wire_len = 9;
    ib->line = st->line;
    return ib;
}

/*
 * Every line passes here before inih sees it: counts lines (for messages), notes section
 * headers (so an empty unknown section is still an error and HA members report their header
 * line), and turns an over-long line into an error instead of letting it be split in two.
 */
static char *filter_line(struct parse_state *st, char *buf, int num, size_t len, bool complete)
{
    st->line++;
    if (!complete || len >= (size_t)num - 1) {
        fail(st, "-", "-", "line longer than %d characters", num - 3);
        snprintf(buf, (size_t)num, ";\n");
        return buf;
    }
    const char *p = buf + strspn(buf, " \t");
    if (*p == '[') {
        const char *end = strchr(p, ']');
        if (end != NULL) {
            st->section_line = st->line;
            if (!known_section(p + 1, (size_t)(end - p - 1))) {
                char name[64];
                snprintf(name, sizeof(name), "%.*s", (int)(end - p - 1), p + 1);
                fail(st, name, "-", "unknown section");
            } else {
                char name[80];
                snprintf(name, sizeof(name), "%.*s", (int)(end - p - 1), p + 1);
                if (strncmp(name, "rule.", 5) == 0) {
                    rule_for(st, name, true);
                } else if (strncmp(name, "profile.", 8) == 0) {
                    profile_for(st, name, true);
                } else if (strncmp(name, "inbound.", 8) == 0) {
                    inbound_for(st, name, true);
                }
            }
        }
    }
    return buf;
}

static char *reader_file(char *buf, int num, void *stream)
{
    struct parse_state *st = stream;
    char line[CFG_MAX_LINE + 2];
    if (fgets(line, sizeof(line), st->fp) == NULL) {
        return NULL;
    }
    size_t len = strlen(line);
    bool complete = len > 0 && line[len - 1] == '\n';
    if (!complete && !feof(st->fp)) {
        int ch; /* skip the rest of an over-long line */
        while ((ch = fgetc(st->fp)) != EOF && ch != '\n') {
        }
    } else {
        complete = true;
    }
    snprintf(buf, (size_t)num, "%s", line);
    return filter_line(st, buf, num, len, complete);
}

static char *reader_string(char *buf, int num, void *stream)
{
    struct parse_state *st = stream;
    if (*st->str == '\0' || num < 2) {
        return NULL;
    }
    size_t len = strcspn(st->str, "\n");
    bool has_nl = st->str[len] == '\n';
    size_t take = len + (has_nl ? 1 : 0);
    size_t copy = take < (size_t)num - 1 ? take : (size_t)num - 1;
    memcpy(buf, st->str, copy);
    buf[copy] = '\0';
    st->str += take;
    return filter_line(st, buf, num, take, take < (size_t)num);
}

static int fail(struct parse_state *st, const char *section, const char *key, const char *fmt, ...)
{
    if (!st->failed) {
        st->fail_line = st->line;
        char why[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, sizeof(why), fmt, ap);
        va_end(ap);
        snprintf(st->err, sizeof(st->err), "%s:%d: [%s] %s: %s", st->name, st->line, section, key,
                 why);
        st->failed = 1;
    }
    return 0;
}

static int set_str(struct parse_state *st, const char *sec, const char *key, const char *val,
                   char *dst, size_t cap)
{
    size_t n = strlen(val);
    if (n >= cap) {
        return fail(st, sec, key, "value too long (%zu bytes, at most %zu)", n, cap - 1);
    }
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)val[i] < 0x20) {
            return fail(st, sec, key, "control character in value");
        }
    }
    memcpy(dst, val, n + 1);
    return 1;
}

static int set_int(struct parse_state *st, const char *sec, const char *key, const char *val,
                   int *dst, long lo, long hi)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(val, &end, 10);
    if (errno != 0 || end == val || *end != '\0') {
        return fail(st, sec, key, "'%s' is not an integer", val);
    }
    if (v < lo || v > hi) {
        return fail(st, sec, key, "%ld is out of range %ld-%ld", v, lo, hi);
    }
    *dst = (int)v;
    return 1;
}

static int set_bool(struct parse_state *st, const char *sec, const char *key, const char *val,
                    bool *dst)
{
    if (strcmp(val, "yes") == 0 || strcmp(val, "true") == 0 || strcmp(val, "1") == 0 ||
        strcmp(val, "on") == 0) {
        *dst = true;
        return 1;
    }
    if (strcmp(val, "no") == 0 || strcmp(val, "false") == 0 || strcmp(val, "0") == 0 ||
        strcmp(val, "off") == 0) {
        *dst = false;
        return 1;
    }
    return fail(st, sec, key, "'%s' is not yes or no", val);
}

static int set_addr(struct parse_state *st, const char *sec, const char *key, const char *val,
                    char *dst, size_t cap)
{
    if (*val != '\0') {
        const char *colon = strrchr(val, ':');
        char *end = NULL;
        long port = colon ? strtol(colon + 1, &end, 10) : -1;
        if (colon == NULL || colon == val || end == colon + 1 || *end != '\0' || port < 1 ||
            port > 65535) {
            return fail(st, sec, key, "'%s' is not HOST:PORT (or empty to turn it off)", val);
        }
    }
    return set_str(st, sec, key, val, dst, cap);
}

/* [cache] shared: redis://HOST:PORT[/DB] or unix:/PATH[?db=N]; empty turns the tier off. */
static int set_shared_url(struct parse_state *st, const char *sec, const char *key,
                          const char *val, struct px_cfg *c)
{
    c->cache_shared_host[0] = c->cache_shared_unix[0] = '\0';
    c->cache_shared_port = 0;
    c->cache_shared_db = 0;
    if (*val == '\0') {
        return set_str(st, sec, key, val, c->cache_shared, sizeof(c->cache_shared));
    }
    static const char want[] = "is not redis://HOST:PORT/DB or unix:/PATH (or empty for off)";
    if (strncmp(val, "unix:", 5) == 0) {
        const char *path = val + 5;
        size_t n = strcspn(path, "?");
        if (path[0] != '/' || n >= sizeof(c->cache_shared_unix)) {
            return fail(st, sec, key, "'%s' %s", val, want);
        }
        if (path[n] == '?') {
            char *end = NULL;
            long db = strncmp(path + n, "?db=", 4) == 0 ? strtol(path + n + 4, &end, 10) : -1;
            if (end == NULL || end == path + n + 4 || *end != '\0' || db < 0 || db > 15) {
                return fail(st, sec, key, "'%s' %s", val, want);
            }
            c->cache_shared_db = (int)db;
        }
        memcpy(c->cache_shared_unix, path, n);
        c->cache_shared_unix[n] = '\0';
        return set_str(st, sec, key, val, c->cache_shared, sizeof(c->cache_shared));
    }
    if (strncmp(val, "redis://", 8) != 0) {
        return fail(st, sec, key, "'%s' %s", val, want);
    }
    const char *h = val + 8, *colon = strrchr(h, ':');
    const char *slash = colon != NULL ? strchr(colon, '/') : NULL;
    char *end = NULL;
    long port = colon != NULL ? strtol(colon + 1, &end, 10) : -1;
    if (colon == NULL || colon == h || (size_t)(colon - h) >= sizeof(c->cache_shared_host) ||
        memchr(h, '@', (size_t)(colon - h)) != NULL || end == colon + 1 ||
        (*end != '\0' && end != slash) || port < 1 || port > 65535) {
        return fail(st, sec, key, "'%s' %s", val, want);
    }
    long db = 0;
    if (slash != NULL && slash[1] != '\0') {
        db = strtol(slash + 1, &end, 10);
        if (end == slash + 1 || *end != '\0' || db < 0 || db > 15) {
            return fail(st, sec, key, "'%s': database must be 0-15", val);
        }
    }
    /* [::1]:6379: the brackets hold the whole host and close right before the port's colon
     * ("redis://[:6379" made the length -1: found by the cfg fuzz campaign) */
    bool br = h[0] == '[';
    if (br && (colon - h < 3 || colon[-1] != ']')) {
        return fail(st, sec, key, "'%s' %s", val, want);
    }
    const char *hs = br ? h + 1 : h;
    size_t hl = (size_t)(colon - hs) - (br ? 1 : 0);
    memcpy(c->cache_shared_host, hs, hl);
    c->cache_shared_host[hl] = '\0';
    c->cache_shared_port = (int)port;
    c->cache_shared_db = (int)db;
    return set_str(st, sec, key, val, c->cache_shared, sizeof(c->cache_shared));
}

static int set_action(struct parse_state *st, const char *sec, const char *key, const char *val,
                      enum px_action *dst)
{
    static const enum px_action acts[] = {PX_ACT_INSPECT, PX_ACT_BYPASS, PX_ACT_BLOCK};
    for (size_t i = 0; i < sizeof(acts) / sizeof(acts[0]); i++) {
        if (strcmp(val, px_action_name(acts[i])) == 0) {
            *dst = acts[i];
            return 1;
        }
    }
    return fail(st, sec, key, "'%s' is not inspect, bypass or block", val);
}

static int set_cert_action(struct parse_state *st, const char *sec, const char *key,
                           const char *val, enum px_cert_action *dst)
{
    if (strcmp(val, "untrust") == 0) {
        *dst = PX_CERT_UNTRUST;
        return 1;
    }
    if (strcmp(val, "block") == 0) {
        *dst = PX_CERT_BLOCK;
        return 1;
    }
    return fail(st, sec, key, "'%s' is not untrust or block", val);
}

#define TLS12 0x0303 /* the wire numbers OpenSSL's TLS1_2_VERSION / TLS1_3_VERSION name */
#define TLS13 0x0304

void px_profile_defaults(struct px_profile *p)
{
    memset(p, 0, sizeof(*p));
    p->expired = PX_CERT_UNTRUST;
    p->untrusted_issuer = PX_CERT_UNTRUST;
    p->min_version = TLS12;
    p->max_version = TLS13;
    p->ocsp = PX_OCSP_OFF;
    p->ocsp_timeout_ms = 500;
    p->revoked = PX_STATUS_BLOCK;
    p->unknown_status = PX_STATUS_ALLOW;
    p->status_timeout = PX_STATUS_ALLOW;
}

/* "tls1.2" / "tls1.3" (older versions are never offered: OpenSSL 3 refuses them anyway). */
static int set_version(struct parse_state *st, const char *sec, const char *key, const char *val,
                       struct px_profile *p, int *dst)
{
    if (strcmp(val, "tls1.2") == 0 || strcmp(val, "tls1.3") == 0) {
        *dst = val[5] == '2' ? TLS12 : TLS13;
        p->version_line = st->line;
        return 1;
    }
    return fail(st, sec, key, "'%s' is not tls1.2 or tls1.3", val);
}

/* allow | untrust | block; allow_ok false: untrust | block only. */
static int set_status_action(struct parse_state *st, const char *sec, const char *key,
                             const char *val, bool allow_ok, enum px_status_action *dst)
{
    if (allow_ok && strcmp(val, "allow") == 0) {
        *dst = PX_STATUS_ALLOW;
        return 1;
    }
    if (strcmp(val, "untrust") == 0) {
        *dst = PX_STATUS_UNTRUST;
        return 1;
    }
    if (strcmp(val, "block") == 0) {
        *dst = PX_STATUS_BLOCK;
        return 1;
    }
    return fail(st, sec, key, allow_ok ? "'%s' is not allow, untrust or block"
                                       : "'%s' is not untrust or block", val);
}

static int profile_key(struct parse_state *st, const char *sec, struct px_profile *p,
                       const char *key, const char *val)
{
    if (strcmp(key, "expired") == 0) {
        return set_cert_action(st, sec, key, val, &p->expired);
    }
    if (strcmp(key, "untrusted_issuer") == 0) {
        return set_cert_action(st, sec, key, val, &p->untrusted_issuer);
    }
    if (strcmp(key, "client_auth") == 0) {
        if (strcmp(val, "bypass") == 0 || strcmp(val, "block") == 0) {
            p->client_auth_block = val[1] == 'l';
            return 1;
        }
        return fail(st, sec, key, "'%s' is not bypass or block", val);
    }
    if (strcmp(key, "min_version") == 0) {
        return set_version(st, sec, key, val, p, &p->min_version);
    }
    if (strcmp(key, "max_version") == 0) {
        return set_version(st, sec, key, val, p, &p->max_version);
    }
    if (strcmp(key, "unsupported") == 0) {
        if (strcmp(val, "bypass") == 0 || strcmp(val, "block") == 0) {
            p->unsupported_block = val[1] == 'l';
            return 1;
        }
        return fail(st, sec, key, "'%s' is not bypass or block", val);
    }
    if (strcmp(key, "ocsp") == 0) {
        static const char *modes[] = {"off", "stapled", "fetch"};
        for (int i = 0; i < 3; i++) {
            if (strcmp(val, modes[i]) == 0) {
                p->ocsp = (enum px_ocsp_mode)i;
                return 1;
            }
        }
        return fail(st, sec, key, "'%s' is not off, stapled or fetch", val);
    }
    if (strcmp(key, "ocsp_timeout_ms") == 0) {
        return set_int(st, sec, key, val, &p->ocsp_timeout_ms, 10, 10000);
    }
    if (strcmp(key, "revoked") == 0) {
        return set_status_action(st, sec, key, val, false, &p->revoked);
    }
    if (strcmp(key, "unknown_status") == 0) {
        return set_status_action(st, sec, key, val, true, &p->unknown_status);
    }
    if (strcmp(key, "status_timeout") == 0) {
        return set_status_action(st, sec, key, val, true, &p->status_timeout);
    }
    return fail(st, sec, key, "unknown key");
}

/* dst / clients: CIDRs separated by commas or spaces, at most PX_RULE_NETS. */
static int set_nets(struct parse_state *st, const char *sec, const char *key, const char *val,
                    bool with_port, struct px_cidr *out, uint8_t *n)
{
    *n = 0;
    const char *p = val;
    for (;;) {
        p += strspn(p, ", \t");
        if (*p == '\0') {
            break;
        }
        size_t l = strcspn(p, ", \t");
        char one[96];
        snprintf(one, sizeof(one), "%.*s", (int)l, p);
        if (*n >= PX_RULE_NETS) {
            return fail(st, sec, key, "at most %d address blocks", PX_RULE_NETS);
        }
        if (px_cidr_parse(one, with_port, &out[*n]) != 0) {
            return fail(st, sec, key, "'%s' is not %s", one,
                        with_port ? "an address block (192.0.2.0/24, [2001:db8::]/32, with an "
                                    "optional :PORT; no host bits past the prefix)"
                                  : "an address block (10.1.0.0/16, [2001:db8::]/32; no port, "
                                    "no host bits past the prefix)");
        }
        (*n)++;
        p += l;
    }
    if (*n == 0) {
        return fail(st, sec, key, "empty (give at least one address block)");
    }
    return 1;
}

static int rule_key(struct parse_state *st, const char *sec, struct px_rule *r, const char *key,
                    const char *val)
{
    if (strcmp(key, "hosts") == 0) {
        char bad[256];
        int rc = px_hosts_parse(val, &r->hosts, bad, sizeof(bad));
        if (rc == PX_E_FULL) {
            return fail(st, sec, key, "too many names (at most %d, %zu bytes)", PX_RULE_HOSTS,
                        sizeof(r->hosts.buf));
        }
        if (rc < 0) {
            return fail(st, sec, key, "'%s' is not a host name, *.domain or .domain", bad);
        }
        if (r->hosts.n == 0) {
            return fail(st, sec, key, "empty (give at least one name)");
        }
        return 1;
    }
    if (strcmp(key, "dst") == 0) {
        return set_nets(st, sec, key, val, true, r->dst, &r->ndst);
    }
    if (strcmp(key, "clients") == 0) {
        return set_nets(st, sec, key, val, false, r->clients, &r->nclients);
    }
    if (strcmp(key, "action") == 0) {
        r->has_action = true;
        return set_action(st, sec, key, val, &r->action);
    }
    if (strcmp(key, "export") == 0) {
        bool on = true;
        int rc = set_bool(st, sec, key, val, &on);
        r->no_export = !on;
        r->export_line = st->line; /* checked against the action once it is known */
        return rc;
    }
    if (strcmp(key, "profile") == 0) {
        r->profile_line = st->line;
        return set_str(st, sec, key, val, r->profile_name, sizeof(r->profile_name));
    }
    return fail(st, sec, key, "unknown key");
}

/* alpn = h2,http/1.1: protocol names (1-255 printable bytes, no comma) into wire form. */
static int set_alpn(struct parse_state *st, const char *sec, const char *key, const char *val,
                    struct px_inbound_cfg *ib)
{
    uint8_t wire[sizeof(ib->alpn_wire)];
    size_t wl = 0;
    const char *p = val;
    for (;;) {
        p += strspn(p, ", \t");
        if (*p == '\0') {
            break;
        }
        size_t l = strcspn(p, ", \t");
        for (size_t i = 0; i < l; i++) {
            if ((unsigned char)p[i] <= 0x20 || (unsigned char)p[i] >= 0x7f) {
                return fail(st, sec, key, "'%.*s' is not a protocol name", (int)l, p);
            }
        }
        if (l > 255 || wl + 1 + l > sizeof(wire)) {
            return fail(st, sec, key, "the list is longer than %zu bytes", sizeof(wire));
        }
        wire[wl++] = (uint8_t)l;
        memcpy(wire + wl, p, l);
        wl += l;
        p += l;
    }
    if (wl == 0) {
        return fail(st, sec, key, "empty (give at least one protocol, e.g. http/1.1)");
    }
    if (!set_str(st, sec, key, val, ib->alpn, sizeof(ib->alpn))) {
        return 0;
    }
    memcpy(ib->alpn_wire, wire, wl);
    ib->alpn_wire_len = (uint8_t)wl;
    return 1;
}

/* An IP:PORT or [IPv6]:PORT literal (no names: a backend is reached without DNS). */
static int set_ip_port(struct parse_state *st, const char *sec, const char *key, const char *val,
                       char *dst, size_t cap)
{
    const char *colon = strrchr(val, ':');
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    const char *h = val;
    size_t hl = colon ? (size_t)(colon - val) : 0;
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    char host[64];
    uint8_t a[16];
    bool ok = colon != NULL && hl > 0 && hl < sizeof(host) && end != colon + 1 && *end == '\0' &&
              port >= 1 && port <= 65535;
    if (ok) {
        memcpy(host, h, hl);
        host[hl] = '\0';
        ok = inet_pton(AF_INET, host, a) == 1 ||
             (h != val && inet_pton(AF_INET6, host, a) == 1);
    }
    if (!ok) {
        return fail(st, sec, key, "'%s' is not IP:PORT or [IPv6]:PORT (an address, not a name)",
                    val);
    }
    return set_str(st, sec, key, val, dst, cap);
}

static int inbound_key(struct parse_state *st, const char *sec, struct px_inbound_cfg *ib,
                       const char *key, const char *val)
{
    if (strcmp(key, "listen") == 0) {
        if (*val == '\0') {
            return fail(st, sec, key, "empty (an inbound listener needs HOST:PORT)");
        }
        return set_addr(st, sec, key, val, ib->listen, sizeof(ib->listen));
    }
    if (strcmp(key, "cert") == 0) {
        return set_str(st, sec, key, val, ib->cert, sizeof(ib->cert));
    }
    if (strcmp(key, "chain") == 0) {
        return set_str(st, sec, key, val, ib->chain, sizeof(ib->chain));
    }
    if (strcmp(key, "key_label") == 0) {
        return set_str(st, sec, key, val, ib->key_label, sizeof(ib->key_label));
    }
    if (strcmp(key, "key_id") == 0) {
        size_t n = strlen(val);
        for (size_t i = 0; i < n; i++) {
            if (!isxdigit((unsigned char)val[i])) {
                return fail(st, sec, key, "'%s' is not hex", val);
            }
        }
        if (n % 2 != 0) {
            return fail(st, sec, key, "odd number of hex digits");
        }
        return set_str(st, sec, key, val, ib->key_id, sizeof(ib->key_id));
    }
    if (strcmp(key, "backend") == 0) {
        return set_ip_port(st, sec, key, val, ib->backend, sizeof(ib->backend));
    }
    if (strcmp(key, "backend_tls") == 0) {
        return set_bool(st, sec, key, val, &ib->backend_tls);
    }
    if (strcmp(key, "backend_ca") == 0) {
        return set_str(st, sec, key, val, ib->backend_ca, sizeof(ib->backend_ca));
    }
    if (strcmp(key, "backend_sni") == 0) {
        return set_str(st, sec, key, val, ib->backend_sni, sizeof(ib->backend_sni));
    }
    if (strcmp(key, "alpn") == 0) {
        return set_alpn(st, sec, key, val, ib);
    }
    return fail(st, sec, key, "unknown key");
}

static int hsm_member_key(struct parse_state *st, const char *sec, struct px_hsm_member_cfg *m,
                          const char *key, const char *val)
{
    if (strcmp(key, "module") == 0) {
        return set_str(st, sec, key, val, m->module, sizeof(m->module));
    }
    if (strcmp(key, "token") == 0) {
        return set_str(st, sec, key, val, m->token, sizeof(m->token));
    }
    if (strcmp(key, "token_serial") == 0) {
        return set_str(st, sec, key, val, m->token_serial, sizeof(m->token_serial));
    }
    if (strcmp(key, "pin_file") == 0) {
        return set_str(st, sec, key, val, m->pin_file, sizeof(m->pin_file));
    }
    if (strcmp(key, "key_label") == 0) {
        return set_str(st, sec, key, val, m->key_label, sizeof(m->key_label));
    }
    if (strcmp(key, "key_id") == 0) {
        size_t n = strlen(val);
        for (size_t i = 0; i < n; i++) {
            if (!isxdigit((unsigned char)val[i])) {
                return fail(st, sec, key, "'%s' is not hex", val);
            }
        }
        if (n % 2 != 0) {
            return fail(st, sec, key, "odd number of hex digits");
        }
        return set_str(st, sec, key, val, m->key_id, sizeof(m->key_id));
    }
    if (strcmp(key, "env") == 0) {
        if (m->n_env >= PX_HSM_MAX_ENV) {
            return fail(st, sec, key, "at most %d env lines per member", PX_HSM_MAX_ENV);
        }
        const char *eq = strchr(val, '=');
        if (eq == NULL || eq == val) {
            return fail(st, sec, key, "'%s' is not NAME=VALUE", val);
        }
        if (!set_str(st, sec, key, val, m->env[m->n_env], sizeof(m->env[0]))) {
            return 0;
        }
        m->n_env++;
        return 1;
    }
    return -1; /* not a member key */
}

static struct px_hsm_member_cfg *member_for(struct parse_state *st, const char *sec)
{
    struct px_cfg *c = st->cfg;
    const char *name = strcmp(sec, "hsm") == 0 ? "hsm" : sec + 4;
    for (int i = 0; i < c->n_members; i++) {
        if (strcmp(c->members[i].name, name) == 0) {
            if (c->members[i].line == 0) {
                c->members[i].line = st->section_line;
            }
            return &c->members[i];
        }
    }
    if (c->n_members >= PX_HSM_MAX_MEMBERS) {
        fail(st, sec, "-", "at most %d HSM members", PX_HSM_MAX_MEMBERS);
        return NULL;
    }
    if (strcmp(name, "hsm") != 0 && c->n_members == 0) {
        /* keep [hsm] as members[0] even when [hsm.X] comes first */
        snprintf(c->members[0].name, sizeof(c->members[0].name), "hsm");
        c->members[0].line = 0; /* 0: no [hsm] header seen (yet) */
        c->n_members = 1;
    }
    if (strcmp(name, "hsm") == 0 && c->n_members > 0 && strcmp(c->members[0].name, "hsm") != 0) {
        PX_BUG("members[0] must be [hsm]");
    }
    struct px_hsm_member_cfg *m = &c->members[c->n_members++];
    memset(m, 0, sizeof(*m));
    if (strlen(name) == 0 || strlen(name) >= sizeof(m->name)) {
        fail(st, sec, "-", "HSM member name must be 1-%zu characters", sizeof(m->name) - 1);
        return NULL;
    }
    snprintf(m->name, sizeof(m->name), "%s", name);
    m->line = st->section_line;
    return m;
}

static int handler(void *user, const char *sec, const char *key, const char *val)
{
    struct parse_state *st = user;
    struct px_cfg *c = st->cfg;

    if (strcmp(sec, "listen") == 0) {
        if (strcmp(key, "explicit") == 0) {
            return set_addr(st, sec, key, val, c->listen_explicit, sizeof(c->listen_explicit));
        }
        if (strcmp(key, "transparent") == 0) {
            return set_addr(st, sec, key, val, c->listen_transparent,
                            sizeof(c->listen_transparent));
        }
        if (strcmp(key, "threads") == 0) {
            return set_int(st, sec, key, val, &c->threads, 0, 256);
        }
        if (strcmp(key, "tproxy") == 0) {
            return set_bool(st, sec, key, val, &c->listen_tproxy);
        }
        if (strcmp(key, "max_connections") == 0) {
            return set_int(st, sec, key, val, &c->listen_max_connections, 0, 10000000);
        }
    } else if (strcmp(sec, "hsm") == 0 || strncmp(sec, "hsm.", 4) == 0) {
        struct px_hsm_member_cfg *m = member_for(st, sec);
        if (m == NULL) {
            return 0;
        }
        int r = hsm_member_key(st, sec, m, key, val);
        if (r >= 0) {
            return r;
        }
        if (strcmp(sec, "hsm") == 0) {
            if (strcmp(key, "workers") == 0) {
                if (strcmp(val, "auto") == 0) {
                    c->hsm_workers = PX_HSM_WORKERS_AUTO;
                    return 1;
                }
                st->workers_line = st->line;
                return set_int(st, sec, key, val, &c->hsm_workers, 1, PX_HSM_WORKERS_LIMIT);
            }
            if (strcmp(key, "workers_min") == 0) {
                st->workers_line = st->line;
                return set_int(st, sec, key, val, &c->hsm_workers_min, 1, PX_HSM_WORKERS_LIMIT);
            }
            if (strcmp(key, "workers_max") == 0) {
                st->workers_line = st->line;
                return set_int(st, sec, key, val, &c->hsm_workers_max, 1, PX_HSM_WORKERS_LIMIT);
            }
            if (strcmp(key, "batch") == 0) {
                return set_int(st, sec, key, val, &c->hsm_batch, 1, 64);
            }
            if (strcmp(key, "sign_timeout_ms") == 0) {
                return set_int(st, sec, key, val, &c->hsm_sign_timeout_ms, 1, 60000);
            }
            if (strcmp(key, "hang_timeout_ms") == 0) {
                return set_int(st, sec, key, val, &c->hsm_hang_timeout_ms, 10, 600000);
            }
            if (strcmp(key, "queue_size") == 0) {
                return set_int(st, sec, key, val, &c->hsm_queue_size, 1, 1 << 20);
            }
            if (strcmp(key, "recovery_backoff_max_ms") == 0) {
                return set_int(st, sec, key, val, &c->recovery_backoff_max_ms, 100, 600000);
            }
            if (strcmp(key, "recovery_retries") == 0) {
                return set_int(st, sec, key, val, &c->recovery_retries, 0, 500);
            }
            if (strcmp(key, "rsa_pss") == 0) {
                return set_bool(st, sec, key, val, &c->rsa_pss);
            }
            if (strcmp(key, "fail_mode") == 0) {
                if (strcmp(val, "closed") == 0) {
                    c->fail_mode = PX_FAIL_CLOSED;
                    return 1;
                }
                if (strcmp(val, "open") == 0) {
                    c->fail_mode = PX_FAIL_OPEN;
                    return 1;
                }
                return fail(st, sec, key, "'%s' is not closed or open", val);
            }
        }
    } else if (strcmp(sec, "ca") == 0) {
        if (strcmp(key, "forward_trust_cert") == 0) {
            return set_str(st, sec, key, val, c->ca_forward_trust_cert,
                           sizeof(c->ca_forward_trust_cert));
        }
        if (strcmp(key, "forward_trust_chain") == 0) {
            return set_str(st, sec, key, val, c->ca_forward_trust_chain,
                           sizeof(c->ca_forward_trust_chain));
        }
        if (strcmp(key, "forward_untrust_cert") == 0) {
            return set_str(st, sec, key, val, c->ca_forward_untrust_cert,
                           sizeof(c->ca_forward_untrust_cert));
        }
        if (strcmp(key, "forward_untrust_key") == 0) {
            return set_str(st, sec, key, val, c->ca_forward_untrust_key,
                           sizeof(c->ca_forward_untrust_key));
        }
        if (strcmp(key, "leaf_max_days") == 0) {
            return set_int(st, sec, key, val, &c->ca_leaf_max_days, 1, 825);
        }
        if (strcmp(key, "reminder_days") == 0) {
            return set_int(st, sec, key, val, &c->ca_reminder_days, 1, 3650);
        }
    } else if (strcmp(sec, "master_key") == 0) {
        if (strcmp(key, "module") == 0 || strcmp(key, "env") == 0 || strcmp(key, "token") == 0 ||
            strcmp(key, "token_serial") == 0 || strcmp(key, "pin_file") == 0 ||
            strcmp(key, "key_label") == 0) {
            snprintf(c->mk_hsm.name, sizeof(c->mk_hsm.name), "master_key");
            return hsm_member_key(st, sec, &c->mk_hsm, key, val);
        }
        if (strcmp(key, "file") == 0) {
            return set_str(st, sec, key, val, c->mk_file, sizeof(c->mk_file));
        }
        if (strcmp(key, "lifetime_days") == 0) {
            return set_int(st, sec, key, val, &c->mk_lifetime_days, 1, 730);
        }
        if (strcmp(key, "reminder_days") == 0) {
            return set_int(st, sec, key, val, &c->mk_reminder_days, 1, 365);
        }
    } else if (strcmp(sec, "cache") == 0) {
        if (strcmp(key, "leaf_pool") == 0) {
            return set_str(st, sec, key, val, c->cache_leaf_pool, sizeof(c->cache_leaf_pool));
        }
        if (strcmp(key, "size") == 0) {
            return set_int(st, sec, key, val, &c->cache_size, 16, 10000000);
        }
        if (strcmp(key, "ttl_s") == 0) {
            return set_int(st, sec, key, val, &c->cache_ttl_s, 1, 86400 * 365);
        }
        if (strcmp(key, "shared") == 0) {
            return set_shared_url(st, sec, key, val, c);
        }
        if (strcmp(key, "shared_password_file") == 0) {
            if (*val != '\0') {
                char pw[512], why[300];
                int r = px_read_secret_file(val, pw, sizeof(pw), why, sizeof(why));
                px_wipe(pw, sizeof(pw));
                if (r < 0) {
                    char *pin = strstr(why, "PIN file"); /* the reader was written for PINs */
                    if (pin != NULL) {
                        memmove(pin, pin + 4, strlen(pin + 4) + 1);
                    }
                    return fail(st, sec, key, "%s", why);
                }
            }
            return set_str(st, sec, key, val, c->cache_shared_password_file,
                           sizeof(c->cache_shared_password_file));
        }
        if (strcmp(key, "shared_timeout_ms") == 0) {
            return set_int(st, sec, key, val, &c->cache_shared_timeout_ms, 1, 10000);
        }
        if (strcmp(key, "shared_lock_ms") == 0) {
            return set_int(st, sec, key, val, &c->cache_shared_lock_ms, 10, 60000);
        }
        if (strcmp(key, "snapshot") == 0) {
            return set_str(st, sec, key, val, c->cache_snapshot, sizeof(c->cache_snapshot));
        }
        if (strcmp(key, "snapshot_interval_s") == 0) {
            return set_int(st, sec, key, val, &c->cache_snapshot_interval_s, 1, 86400);
        }
    } else if (strcmp(sec, "upstream") == 0) {
        if (strcmp(key, "ca_file") == 0) {
            return set_str(st, sec, key, val, c->upstream_ca_file, sizeof(c->upstream_ca_file));
        }
        if (strcmp(key, "verify") == 0) {
            return set_bool(st, sec, key, val, &c->upstream_verify);
        }
        if (strcmp(key, "mark") == 0) {
            char *end = NULL;
            errno = 0;
            unsigned long v = strtoul(val, &end, 0);
            if (errno != 0 || end == val || *end != '\0' || v > UINT32_MAX || val[0] == '-') {
                return fail(st, sec, key, "'%s' is not a 32-bit mark", val);
            }
            c->upstream_mark = (uint32_t)v;
            return 1;
        }
        if (strcmp(key, "session_cache") == 0) {
            return set_int(st, sec, key, val, &c->upstream_session_cache, 0, 1048576);
        }
        if (strcmp(key, "resolve_timeout_ms") == 0) {
            return set_int(st, sec, key, val, &c->resolve_timeout_ms, 100, 60000);
        }
        if (strcmp(key, "dns_cache_max_ttl_s") == 0) {
            return set_int(st, sec, key, val, &c->dns_cache_max_ttl_s, 0, 86400);
        }
        if (strcmp(key, "dns_negative_ttl_s") == 0) {
            return set_int(st, sec, key, val, &c->dns_negative_ttl_s, 0, 3600);
        }
        if (strcmp(key, "connect_timeout_ms") == 0) {
            return set_int(st, sec, key, val, &c->connect_timeout_ms, 100, 120000);
        }
    } else if (strcmp(sec, "policy") == 0) {
        if (strcmp(key, "bypass") == 0) {
            char bad[256];
            int r = px_hosts_parse(val, &c->policy_bypass_hosts, bad, sizeof(bad));
            if (r == PX_E_FULL) {
                return fail(st, sec, key, "too many names (at most %d, %zu bytes)",
                            PX_RULE_HOSTS, sizeof(c->policy_bypass_hosts.buf));
            }
            if (r < 0) {
                return fail(st, sec, key, "'%s' is not a host name, *.domain or .domain", bad);
            }
            return set_str(st, sec, key, val, c->policy_bypass, sizeof(c->policy_bypass));
        }
        if (strcmp(key, "default") == 0) {
            return set_action(st, sec, key, val, &c->policy_default);
        }
        if (strcmp(key, "non_tls") == 0) {
            if (strcmp(val, "tunnel") == 0 || strcmp(val, "block") == 0) {
                c->policy_non_tls = val[0] == 't' ? PX_NON_TLS_TUNNEL : PX_NON_TLS_BLOCK;
                return 1;
            }
            return fail(st, sec, key, "'%s' is not tunnel or block", val);
        }
        if (strcmp(key, "proof_ttl_s") == 0) {
            return set_int(st, sec, key, val, &c->policy_proof_ttl_s, 1, 86400);
        }
        if (strcmp(key, "unproven") == 0) {
            if (strcmp(val, "inspect") == 0 || strcmp(val, "block") == 0) {
                c->policy_unproven_block = val[0] == 'b';
                return 1;
            }
            return fail(st, sec, key, "'%s' is not inspect or block", val);
        }
        if (strcmp(key, "first_byte_ms") == 0) {
            return set_int(st, sec, key, val, &c->policy_first_byte_ms, 0, 60000);
        }
    } else if (strncmp(sec, "rule.", 5) == 0) {
        struct px_rule *r = rule_for(st, sec, false);
        if (r == NULL) {
            return 0; /* its header failed */
        }
        return rule_key(st, sec, r, key, val);
    } else if (strncmp(sec, "profile.", 8) == 0) {
        struct px_profile *p = profile_for(st, sec, false);
        if (p == NULL) {
            return 0;
        }
        return profile_key(st, sec, p, key, val);
    } else if (strncmp(sec, "inbound.", 8) == 0) {
        struct px_inbound_cfg *ib = inbound_for(st, sec, false);
        if (ib == NULL) {
            return 0; /* its header failed */
        }
        return inbound_key(st, sec, ib, key, val);
    } else if (strcmp(sec, "inbound") == 0) {
        if (strcmp(key, "ticket_rotate_s") == 0) {
            return set_int(st, sec, key, val, &c->inbound_ticket_rotate_s, 1, 86400 * 7);
        }
    } else if (strcmp(sec, "exclusions") == 0) {
        if (strcmp(key, "ttl_s") == 0) {
            return set_int(st, sec, key, val, &c->excl_ttl_s, 1, 86400 * 30);
        }
        if (strcmp(key, "pinned_alerts") == 0) {
            return set_int(st, sec, key, val, &c->excl_pinned_alerts, 0, 1000);
        }
        if (strcmp(key, "size") == 0) {
            return set_int(st, sec, key, val, &c->excl_size, 16, 1000000);
        }
    } else if (strcmp(sec, "log") == 0) {
        if (strcmp(key, "level") == 0) {
            if (px_log_level_parse(val, &c->log_level) != 0) {
                return fail(st, sec, key, "'%s' is not error, warn, info or debug", val);
            }
            return 1;
        }
        if (strcmp(key, "access") == 0) {
            return set_str(st, sec, key, val, c->log_access, sizeof(c->log_access));
        }
        if (strcmp(key, "audit") == 0) {
            return set_str(st, sec, key, val, c->log_audit, sizeof(c->log_audit));
        }
        if (strcmp(key, "keylog") == 0) {
            return set_str(st, sec, key, val, c->log_keylog, sizeof(c->log_keylog));
        }
    } else if (strcmp(sec, "export") == 0) {
        if (strcmp(key, "pcap") == 0) {
            return set_str(st, sec, key, val, c->export_pcap, sizeof(c->export_pcap));
        }
        if (strcmp(key, "pcap_rotate_mb") == 0) {
            return set_int(st, sec, key, val, &c->export_rotate_mb, 1, 1 << 20);
        }
        if (strcmp(key, "pcap_rotate_s") == 0) {
            return set_int(st, sec, key, val, &c->export_rotate_s, 1, 86400 * 7);
        }
        if (strcmp(key, "pcap_keep") == 0) {
            return set_int(st, sec, key, val, &c->export_keep, 0, 100000);
        }
        if (strcmp(key, "pcap_listen") == 0) {
            return set_addr(st, sec, key, val, c->export_listen, sizeof(c->export_listen));
        }
        if (strcmp(key, "mirror_if") == 0) {
            if (strlen(val) >= 16) {
                return fail(st, sec, key, "'%s' is longer than an interface name can be", val);
            }
            return set_str(st, sec, key, val, c->export_mirror_if, sizeof(c->export_mirror_if));
        }
        if (strcmp(key, "max_bytes_per_conn") == 0) {
            return set_int(st, sec, key, val, &c->export_max_bytes, 0, INT32_MAX);
        }
        if (strcmp(key, "queue_mb") == 0) {
            return set_int(st, sec, key, val, &c->export_queue_mb, 1, 4096);
        }
    } else if (strcmp(sec, "run") == 0) {
        if (strcmp(key, "user") == 0) {
            return set_str(st, sec, key, val, c->run_user, sizeof(c->run_user));
        }
    } else if (strcmp(sec, "admin") == 0) {
        if (strcmp(key, "socket") == 0) {
            return set_str(st, sec, key, val, c->admin_socket, sizeof(c->admin_socket));
        }
        if (strcmp(key, "metrics") == 0) {
            return set_addr(st, sec, key, val, c->admin_metrics, sizeof(c->admin_metrics));
        }
    } else {
        return fail(st, sec[0] ? sec : "-", key, "unknown section");
    }
    return fail(st, sec, key, "unknown key");
}

void px_cfg_defaults(struct px_cfg *c)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->listen_explicit, sizeof(c->listen_explicit), "127.0.0.1:3128");
    snprintf(c->listen_transparent, sizeof(c->listen_transparent), "127.0.0.1:8443");
    c->threads = 0;
    c->listen_max_connections = 0;
    c->hsm_workers = PX_HSM_WORKERS_AUTO;
    c->hsm_workers_min = 2;
    c->hsm_workers_max = 64;
    c->hsm_batch = 16;
    c->hsm_sign_timeout_ms = 250;
    c->hsm_hang_timeout_ms = 2000;
    c->hsm_queue_size = 4096;
    c->fail_mode = PX_FAIL_CLOSED;
    c->recovery_retries = 0;
    c->recovery_backoff_max_ms = 1000;
    c->mk_lifetime_days = 365;
    c->mk_reminder_days = 30;
    c->ca_leaf_max_days = 30;
    c->ca_reminder_days = 30;
    c->cache_size = 100000;
    c->cache_ttl_s = 86400;
    c->cache_shared_timeout_ms = 5;
    c->cache_shared_lock_ms = 300;
    c->cache_snapshot_interval_s = 300;
    c->export_rotate_mb = 100;
    c->export_rotate_s = 3600;
    c->export_keep = 24;
    c->export_queue_mb = 64;
    snprintf(c->upstream_ca_file, sizeof(c->upstream_ca_file),
             "/etc/ssl/certs/ca-certificates.crt");
    c->upstream_verify = true;
    c->resolve_timeout_ms = 2000;
    c->upstream_session_cache = 1024;
    c->dns_cache_max_ttl_s = 300;
    c->dns_negative_ttl_s = 5;
    c->connect_timeout_ms = 5000;
    c->log_level = PX_LOG_INFO;
    c->policy_default = PX_ACT_INSPECT;
    c->policy_non_tls = PX_NON_TLS_TUNNEL;
    c->policy_first_byte_ms = 500;
    c->policy_proof_ttl_s = 600;
    c->excl_ttl_s = 43200;
    c->excl_pinned_alerts = 1;
    c->excl_size = 10000;
    c->inbound_ticket_rotate_s = 3600;
    c->default_profile = -1;
    px_profile_defaults(&c->builtin_profile);
    snprintf(c->builtin_profile.name, sizeof(c->builtin_profile.name), "built-in");
    snprintf(c->admin_socket, sizeof(c->admin_socket), "var/run/tlsmint.sock");
    snprintf(c->admin_metrics, sizeof(c->admin_metrics), "127.0.0.1:9120");
}

/* Rules: a match key and an action each; profiles named exist ([profile.default] optional). */
static int validate_policy(struct parse_state *st)
{
    struct px_cfg *c = st->cfg;
    c->default_profile = -1;
    for (int i = 0; i < c->n_profiles; i++) {
        struct px_profile *p = &c->profiles[i];
        if (strcmp(p->name, "default") == 0) {
            c->default_profile = i;
        }
        if (p->min_version > p->max_version) {
            char sec[64];
            snprintf(sec, sizeof(sec), "profile.%s", p->name);
            st->line = p->version_line;
            return fail(st, sec, "min_version", "tls1.3 is above max_version tls1.2");
        }
    }
    for (int i = 0; i < c->n_rules; i++) {
        struct px_rule *r = &c->rules[i];
        char sec[64];
        snprintf(sec, sizeof(sec), "rule.%s", r->name);
        st->line = r->line;
        if (r->hosts.n == 0 && r->ndst == 0 && r->nclients == 0) {
            return fail(st, sec, "-", "no match key: a rule needs hosts, dst or clients");
        }
        if (!r->has_action) {
            return fail(st, sec, "action", "missing (inspect, bypass or block)");
        }
        if (r->export_line != 0 && r->action != PX_ACT_INSPECT) {
            /* refused like other keys without effect (backend_ca without backend_tls): only
             * inspected connections are ever exported, so it could only mislead */
            bool bypass = r->action == PX_ACT_BYPASS;
            st->line = r->export_line;
            return fail(st, sec, "export",
                        "has no effect: the rule's action is %s; %s traffic is never exported",
                        bypass ? "bypass" : "block", bypass ? "bypassed" : "blocked");
        }
        r->profile = c->default_profile;
        if (r->profile_name[0] != '\0') {
            r->profile = -2;
            for (int k = 0; k < c->n_profiles; k++) {
                if (strcmp(c->profiles[k].name, r->profile_name) == 0) {
                    r->profile = k;
                }
            }
            if (r->profile == -2) {
                st->line = r->profile_line;
                return fail(st, sec, "profile", "'%s' is not defined (no [profile.%s] section)",
                            r->profile_name, r->profile_name);
            }
        }
    }
    return 1;
}

/* Each inbound listener: an address of its own, a certificate, a key, a backend. */
static int validate_inbound(struct parse_state *st)
{
    struct px_cfg *c = st->cfg;
    for (int i = 0; i < c->n_inbound; i++) {
        struct px_inbound_cfg *ib = &c->inbound[i];
        char sec[64];
        snprintf(sec, sizeof(sec), "inbound.%s", ib->name);
        st->line = ib->line;
        if (ib->listen[0] == '\0') {
            return fail(st, sec, "listen", "missing (HOST:PORT clients connect to)");
        }
        if (ib->cert[0] == '\0') {
            return fail(st, sec, "cert", "missing (the server's certificate, PEM)");
        }
        if (ib->key_label[0] == '\0' && ib->key_id[0] == '\0') {
            return fail(st, sec, "key_label", "missing (label of its private key in the HSM, "
                        "or key_id)");
        }
        if (ib->backend[0] == '\0') {
            return fail(st, sec, "backend", "missing (IP:PORT the decrypted traffic goes to)");
        }
        if (!ib->backend_tls && (ib->backend_ca[0] != '\0' || ib->backend_sni[0] != '\0')) {
            return fail(st, sec, ib->backend_ca[0] ? "backend_ca" : "backend_sni",
                        "set, but backend_tls = no (the backend is plain TCP)");
        }
        const char *others[] = {c->listen_explicit, c->listen_transparent};
        for (int k = 0; k < 2; k++) {
            if (strcmp(others[k], ib->listen) == 0) {
                return fail(st, sec, "listen", "%s is also [listen] %s", ib->listen,
                            k == 0 ? "explicit" : "transparent");
            }
        }
        for (int k = 0; k < i; k++) {
            if (strcmp(c->inbound[k].listen, ib->listen) == 0) {
                return fail(st, sec, "listen", "%s is also [inbound.%s] listen", ib->listen,
                            c->inbound[k].name);
            }
        }
    }
    return 1;
}

static int validate(struct parse_state *st)
{
    struct px_cfg *c = st->cfg;
    if (!validate_policy(st) || !validate_inbound(st)) {
        return 0;
    }
    if (c->hsm_workers_min > c->hsm_workers_max) {
        st->line = st->workers_line;
        return fail(st, "hsm", "workers_min", "%d is above workers_max %d", c->hsm_workers_min,
                    c->hsm_workers_max);
    }
    for (int i = 0; i < c->n_members; i++) {
        struct px_hsm_member_cfg *m = &c->members[i];
        char sec[40];
        snprintf(sec, sizeof(sec), i == 0 ? "hsm" : "hsm.%s", m->name);
        if (i == 0 && m->line == 0) {
            st->line = c->n_members > 1 ? c->members[1].line : 0;
            return fail(st, "hsm", "-", "section missing: [hsm.NAME] members need the primary "
                        "[hsm] section");
        }
        st->line = m->line;
        if (m->module[0] == '\0') {
            return fail(st, sec, "module", "missing (path of the PKCS#11 module)");
        }
        if (m->token[0] == '\0' && m->token_serial[0] == '\0') {
            return fail(st, sec, "token", "missing (token label, or token_serial)");
        }
        if (m->pin_file[0] == '\0') {
            return fail(st, sec, "pin_file", "missing (file holding the user PIN, mode 0600)");
        }
        if (m->key_label[0] == '\0' && m->key_id[0] == '\0') {
            return fail(st, sec, "key_label", "missing (label of the forward-trust key)");
        }
    }
    return 1;
}

/*
 * Debian's libinih reads these at run time: no indented continuation lines (an indented key
 * is a key). Its line buffer stays at 200 bytes whatever ini_max_line says, so longer lines are
 * refused by filter_line with a clear message instead of being split.
 */
static void inih_setup(void)
{
    ini_allow_multiline = false;
}

static int finish(struct parse_state *st, int rc, char *err, size_t errlen)
{
    if (rc == 0 && !st->failed) {
        validate(st);
    }
    /* the first error by line wins: inih reports the first line it rejected */
    if (st->failed && (rc <= 0 || st->fail_line <= rc)) {
        snprintf(err, errlen, "%s", st->err);
        return PX_E_CONFIG;
    }
    if (rc != 0) {
        snprintf(err, errlen, "%s:%d: syntax error (expected [section] or key = value)",
                 st->name, rc);
        return PX_E_CONFIG;
    }
    return 0;
}

int px_cfg_load_string(const char *name, const char *text, struct px_cfg *cfg, char *err,
                       size_t errlen)
{
    struct parse_state st = {.cfg = cfg, .name = name, .str = text};
    px_cfg_defaults(cfg);
    snprintf(cfg->path, sizeof(cfg->path), "%s", name);
    inih_setup();
    int rc = ini_parse_stream(reader_string, &st, handler, &st);
    return finish(&st, rc, err, errlen);
}

int px_cfg_load(const char *path, struct px_cfg *cfg, char *err, size_t errlen)
{
    FILE *fp = fopen(path, "r");
    if (fp == NULL) {
        int e = errno;
        snprintf(err, errlen, "%s: cannot open config file: %s", path, strerror(e));
        return -e;
    }
    struct parse_state st = {.cfg = cfg, .name = path, .fp = fp};
    px_cfg_defaults(cfg);
    snprintf(cfg->path, sizeof(cfg->path), "%s", path);
    inih_setup();
    int rc = ini_parse_stream(reader_file, &st, handler, &st);
    fclose(fp);
    return finish(&st, rc, err, errlen);
}
