/* SPDX-License-Identifier: MIT */
/*
 * px_match.c - the pieces a policy rule is made of: address blocks (CIDR with an optional
 * port) and host-name patterns, parsed once with the configuration and matched on every new
 * connection.
 * Owns nothing: parsing fills caller-provided structs, matching only reads them.
 * Threads: parsing on the thread that loads a config; matching on any thread (read-only data).
 * Invariants: a parsed px_cidr has no host bits set beyond its prefix; host patterns are stored
 * lowercased, so a match costs one lowercase copy of the name and memcmp per pattern.
 * Not here: which rule wins (dataplane/dp_policy.c), the config keys (px_cfg.c).
 */
#include "px.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *px_action_name(enum px_action a)
{
    switch (a) {
    case PX_ACT_INSPECT:
        return "inspect";
    case PX_ACT_BYPASS:
        return "bypass";
    case PX_ACT_BLOCK:
        return "block";
    case PX_ACT_TUNNEL:
        return "tunnel";
    }
    return "?";
}

/* "N" with 0 <= N <= hi and nothing else; -1 otherwise. */
static long small_num(const char *s, size_t n, long lo, long hi)
{
    if (n == 0 || n > 5) {
        return -1;
    }
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i])) {
            return -1;
        }
        v = v * 10 + (s[i] - '0');
    }
    return v >= lo && v <= hi ? v : -1;
}

int px_cidr_parse(const char *s, bool with_port, struct px_cidr *out)
{
    PX_ENSURE_REF(s);
    PX_ENSURE_REF(out);
    memset(out, 0, sizeof(*out));
    char addr[64];
    const char *rest;
    size_t sl = strlen(s);
    PX_ENSURE(sl > 0 && sl < 80, PX_E_INVAL);
    if (s[0] == '[') {
        const char *e = strchr(s, ']');
        PX_ENSURE(e != NULL && (size_t)(e - s - 1) < sizeof(addr), PX_E_INVAL);
        memcpy(addr, s + 1, (size_t)(e - s - 1));
        addr[e - s - 1] = '\0';
        rest = e + 1;
        PX_ENSURE(strchr(addr, ':') != NULL, PX_E_INVAL); /* brackets are for IPv6 */
    } else {
        /* IPv4 (may have :port), or bare IPv6 (two colons or more: no port) */
        const char *c1 = strchr(s, ':');
        bool v6 = c1 != NULL && strchr(c1 + 1, ':') != NULL;
        size_t n = v6 ? strcspn(s, "/") : strcspn(s, "/:");
        PX_ENSURE(n > 0 && n < sizeof(addr), PX_E_INVAL);
        memcpy(addr, s, n);
        addr[n] = '\0';
        rest = s + n;
    }
    if (inet_pton(AF_INET, addr, out->addr) == 1) {
        out->family = 4;
        out->bits = 32;
    } else if (inet_pton(AF_INET6, addr, out->addr) == 1) {
        out->family = 6;
        out->bits = 128;
    } else {
        return PX_E_INVAL;
    }
    if (*rest == '/') {
        size_t n = strcspn(rest + 1, ":");
        long b = small_num(rest + 1, n, 0, out->family == 4 ? 32 : 128);
        PX_ENSURE(b >= 0, PX_E_INVAL);
        out->bits = (uint8_t)b;
        rest += 1 + n;
    }
    if (*rest == ':') {
        PX_ENSURE(with_port, PX_E_INVAL);
        long p = small_num(rest + 1, strlen(rest + 1), 1, 65535);
        PX_ENSURE(p > 0, PX_E_INVAL);
        out->port = (uint16_t)p;
        rest += strlen(rest);
    }
    PX_ENSURE(*rest == '\0', PX_E_INVAL);
    /* host bits beyond the prefix are a typo more often than not: refuse them */
    int len = out->family == 4 ? 4 : 16;
    for (int i = 0; i < len; i++) {
        int keep = (int)out->bits - i * 8;
        uint8_t mask = keep >= 8 ? 0xff : keep <= 0 ? 0 : (uint8_t)(0xff << (8 - keep));
        PX_ENSURE((out->addr[i] & (uint8_t)~mask) == 0, PX_E_INVAL);
    }
    return 0;
}

bool px_cidr_match(const struct px_cidr *c, int family, const uint8_t *addr, uint16_t port)
{
    if (c->family != family || (c->port != 0 && c->port != port)) {
        return false;
    }
    int full = c->bits / 8, part = c->bits % 8;
    if (memcmp(c->addr, addr, (size_t)full) != 0) {
        return false;
    }
    if (part == 0) {
        return true;
    }
    uint8_t mask = (uint8_t)(0xff << (8 - part));
    return (addr[full] & mask) == c->addr[full];
}

int px_host_lower(const char *host, char out[256])
{
    size_t hl = 0;
    for (; host[hl] != '\0'; hl++) {
        if (hl >= 255) {
            return -1;
        }
        char ch = host[hl];
        out[hl] = ch >= 'A' && ch <= 'Z' ? (char)(ch + ('a' - 'A')) : ch;
    }
    if (hl > 1 && out[hl - 1] == '.') {
        hl--; /* "example.com." is example.com */
    }
    out[hl] = '\0';
    return (int)hl;
}

bool px_hosts_match(const struct px_hosts *h, const char *host)
{
    char low[256];
    int n = px_host_lower(host, low);
    return n >= 0 && px_hosts_match_lower(h, low, (size_t)n);
}

bool px_hosts_match_lower(const struct px_hosts *h, const char *low, size_t hl)
{
    for (int i = 0; i < h->n; i++) {
        const char *p = h->buf + h->off[i];
        size_t pl = h->len[i];
        if (!h->suffix[i]) {
            if (pl == hl && memcmp(p, low, hl) == 0) {
                return true;
            }
            continue;
        }
        /* ".domain": the domain itself, or a name ending in ".domain" */
        if ((hl > pl && memcmp(low + hl - pl, p, pl) == 0) ||
            (hl == pl - 1 && memcmp(low, p + 1, hl) == 0)) {
            return true;
        }
    }
    return false;
}

int px_hosts_parse(const char *list, struct px_hosts *out, char *bad, size_t badcap)
{
    memset(out, 0, sizeof(*out));
    size_t w = 0;
    const char *p = list;
    for (;;) {
        p += strspn(p, ", \t");
        if (*p == '\0') {
            return 0;
        }
        size_t n = strcspn(p, ", \t");
        snprintf(bad, badcap, "%.*s", (int)n, p);
        const char *q = p;
        size_t qn = n;
        bool suffix = false;
        if (qn >= 2 && q[0] == '*' && q[1] == '.') {
            q++;
            qn--;
        }
        if (q[0] == '.') {
            suffix = true;
            PX_ENSURE(qn >= 2, PX_E_INVAL);
        }
        for (size_t i = 0; i < qn; i++) {
            unsigned char ch = (unsigned char)q[i];
            PX_ENSURE(isalnum(ch) || ch == '-' || ch == '.' || ch == '_' || ch == ':', PX_E_INVAL);
        }
        PX_ENSURE(qn <= 253 && out->n < PX_RULE_HOSTS && w + qn + 1 <= sizeof(out->buf),
                  PX_E_FULL);
        out->off[out->n] = (uint8_t)w;
        out->len[out->n] = (uint8_t)qn;
        out->suffix[out->n] = suffix;
        for (size_t i = 0; i < qn; i++) {
            out->buf[w++] = (char)tolower((unsigned char)q[i]);
        }
        out->buf[w++] = '\0';
        out->n++;
        p += n;
    }
}
