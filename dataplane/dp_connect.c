/* SPDX-License-Identifier: MIT */
/*
 * dp_connect.c - the explicit proxy's request head: `CONNECT host:port HTTP/1.1` parsed with
 * http-parser (Debian's libhttp-parser), never by string scanning.
 * Owns nothing; pure function, called on loop threads.
 * Invariants: host is the authority from the request line only (a Host header is ignored);
 * ports 1-65535; head bounded by the caller's buffer.
 */
#include "dp_int.h"

#include <http_parser.h>
#include <string.h>

struct pstate {
    char url[512];
    size_t url_len;
    bool url_overflow;
    bool done;
};

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct pstate *st = p->data;
    if (st->url_len + len >= sizeof(st->url)) {
        st->url_overflow = true;
        return 1;
    }
    memcpy(st->url + st->url_len, at, len);
    st->url_len += len;
    st->url[st->url_len] = '\0';
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    struct pstate *st = p->data;
    st->done = true;
    return 0;
}

int dp_connect_parse(const uint8_t *buf, size_t len, char *host, size_t hostcap, uint16_t *port,
                     size_t *consumed)
{
    http_parser_settings settings;
    http_parser_settings_init(&settings);
    settings.on_url = on_url;
    settings.on_headers_complete = on_headers_complete;
    http_parser p;
    http_parser_init(&p, HTTP_REQUEST);
    struct pstate st = {0};
    p.data = &st;
    size_t n = http_parser_execute(&p, &settings, (const char *)buf, len);
    if (st.url_overflow) {
        return DP_CONNECT_BAD;
    }
    if (!st.done) {
        enum http_errno e = HTTP_PARSER_ERRNO(&p);
        if (e != HPE_OK && e != HPE_PAUSED) {
            return DP_CONNECT_BAD;
        }
        return DP_CONNECT_MORE;
    }
    if (p.method != HTTP_CONNECT) {
        return DP_CONNECT_METHOD;
    }
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(st.url, st.url_len, 1, &u) != 0 || !(u.field_set & (1 << UF_HOST)) ||
        !(u.field_set & (1 << UF_PORT))) {
        return DP_CONNECT_BAD;
    }
    size_t hl = u.field_data[UF_HOST].len;
    if (hl == 0 || hl >= hostcap || u.port == 0) {
        return DP_CONNECT_BAD;
    }
    memcpy(host, st.url + u.field_data[UF_HOST].off, hl);
    host[hl] = '\0';
    *port = u.port;
    /* CONNECT is an upgrade for http-parser: it stops right after the header block */
    *consumed = n;
    return DP_CONNECT_OK;
}
