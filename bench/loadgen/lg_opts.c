/* SPDX-License-Identifier: MIT */
/*
 * lg_opts.c - command line of tlsmint-bench: --help text, parsing, validation, defaults.
 * Owns the --hosts file contents (one buffer plus a pointer array, freed by lg_opts_fini).
 * Called once from main before any thread starts; the result is read-only afterwards.
 * Invariants: every bad option ends in exactly one line on stderr and a -1 return (the
 * caller exits 2); addresses are resolved here, once, so no worker ever does DNS.
 * Not here: the OpenSSL context (tlsmint_bench.c), anything that runs during the load.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "lg.h"

#define LG_HOSTS_FILE_MAX (64u << 20)

static const char usage_text[] =
    "usage: tlsmint-bench SCENARIO --connect ADDR:PORT [options]\n"
    "\n"
    "A non-blocking TLS load generator (epoll, one loop per thread) for tlsmint or any TLS\n"
    "server: directly, through an explicit proxy (--proxy, HTTP CONNECT), or transparently\n"
    "(connect to the real destination; the redirect to the proxy happens outside).\n"
    "\n"
    "Scenarios:\n"
    "  handshake   a new TCP+TLS connection per request to one host: GET PATH with\n"
    "              'Connection: close', the response is read until the server closes\n"
    "              (default run: --duration 10)\n"
    "  mint        like handshake, but request n uses host name n of a list (--hosts or\n"
    "              --host-pattern/--count), each connecting to the same --connect address\n"
    "              with SNI and Host = that name: every name is visited once (default\n"
    "              --requests = number of names; more requests wrap around the list)\n"
    "  bulk        C connections (--conns, e.g. 1 or 8) each download PATH (default\n"
    "              /big.bin) once, or again and again for --duration; reports MB/s\n"
    "  idle        opens C connections (--conns), and once every attempt is up or failed,\n"
    "              holds the established ones open for --hold seconds (no request is sent),\n"
    "              reports how many are up and how many the peer closed meanwhile\n"
    "  keepalive   C connections (--conns), each sending GET PATH again and again on the\n"
    "              same connection (HTTP/1.1 keep-alive; the response needs a\n"
    "              Content-Length); every response is one request of the report, so\n"
    "              conn_per_s is requests/s (default run: --duration 10)\n"
    "\n"
    "Target:\n"
    "  --connect ADDR:PORT    TCP destination: IPv4, [IPv6] or a name (resolved once at\n"
    "                         start). With --proxy only its PORT is used: the CONNECT line\n"
    "                         carries host:PORT and the proxy resolves host itself.\n"
    "                         Transparent mode needs nothing else: connect to the real\n"
    "                         destination and let iptables/nft redirect it.\n"
    "  --host NAME            host name for SNI, Host:, certificate name check and the CONNECT\n"
    "                         line (default: ADDR of --connect)\n"
    "  --sni NAME             SNI only (default: the host name; IP literals send no SNI)\n"
    "  --no-sni               send no SNI\n"
    "  --path PATH            request path (default / ; bulk: /big.bin)\n"
    "  --proxy HOST:PORT      explicit proxy: send 'CONNECT host:PORT HTTP/1.1', expect 200,\n"
    "                         then TLS through the tunnel\n"
    "  --connect-host HOST    put HOST (e.g. 127.0.0.1) in the CONNECT line instead of the host\n"
    "                         name, so the proxy connects there while SNI carries the name\n"
    "  --hosts FILE           host names, one per line ('#' comments and blank lines skipped)\n"
    "  --host-pattern PAT     host names from a pattern with one %d, e.g. 'h%d.bench.test'\n"
    "  --count N              number of pattern names; %d runs from --first (default 1)\n"
    "  --first K              first pattern index (default 1)\n"
    "\n"
    "Load:\n"
    "  --threads N            worker threads, one epoll loop each (default 2)\n"
    "  --concurrency C, --conns C\n"
    "                         closed loop: connections kept in flight; idle: connections\n"
    "                         to open (default 16; bulk 1; idle 100)\n"
    "  --duration S           stop starting connections after S seconds (fractions allowed)\n"
    "  --requests N           stop after N connections were started\n"
    "                         (with both: whichever comes first; in-flight ones complete)\n"
    "  --rate R               open loop: start R connections per second whatever the answers\n"
    "                         (latency is measured from the scheduled start, so a stalled\n"
    "                         server is not hidden); --concurrency is then unused\n"
    "  --max-inflight N       rate mode: connection table size (default rate x timeout x 1.25\n"
    "                         + 64, at most 60000); a start finding it full counts as 'busy'\n"
    "  --timeout-ms MS        per connection: connect, CONNECT and TLS handshake must finish\n"
    "                         within MS; after that, MS without any received byte (default\n"
    "                         5000). Errors and timeouts never stop the run.\n"
    "  --hold S               idle: seconds to hold the connections after all are up (default 10)\n"
    "\n"
    "TLS:\n"
    "  --cafile FILE          trust anchors for the server chain (default: system store);\n"
    "                         the chain and the host name are verified unless --insecure\n"
    "  --insecure             do not verify\n"
    "  --resume               handshake/mint: each thread offers the session (ticket) of its\n"
    "                         last good connection, so handshakes after the first resume;\n"
    "                         the report counts them ('resumed')\n"
    "  --tls 1.2|1.3          pin the protocol version (default: 1.2 or 1.3)\n"
    "  --alpn h2|http/1.1     offer this ALPN protocol. Requests are HTTP/1.1 only: when h2 is\n"
    "                         negotiated the connection ends after the handshake (counted ok)\n"
    "  --ciphersuites LIST    TLS 1.3 suites offered, in order (default, as browsers and h2load:\n"
    "                         TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:\n"
    "                         TLS_CHACHA20_POLY1305_SHA256). OpenSSL's own default puts\n"
    "                         AES-256-GCM first, which costs a server that follows the\n"
    "                         client's order (nginx by default) about 15 % more per byte.\n"
    "                         The report counts the suites negotiated ('cipher').\n"
    "\n"
    "Output:\n"
    "  -q, --quiet            no progress line (by default one line per second on stderr:\n"
    "                         ok total and rate, failures by kind, connections in flight,\n"
    "                         handshake p50/p99 of that second, MB/s received)\n"
    "  --json                 print one JSON object at the end instead of the text report\n"
    "  --timeline FILE.csv    one row per 100 ms bucket, written as the run goes (1 s behind):\n"
    "                         t_s,attempted,ok,failed,failed_connect,failed_proxy,failed_tls,\n"
    "                         failed_verify,failed_http,failed_timeout,failed_busy,hs_p50_ms,\n"
    "                         hs_p99_ms,intercepted,bypassed. Attempts count in the bucket\n"
    "                         where they start, outcomes and handshake latencies where they\n"
    "                         end; hs_* is 'nan' in a bucket without handshakes.\n"
    "  --issuer-stats         classify each completed handshake by the issuer CN of the leaf\n"
    "                         it saw: containing 'forward-trust' = intercepted, anything else\n"
    "                         = bypassed (passed through, e.g. fail-open). Without it the two\n"
    "                         timeline columns stay 0. To see bypassed leaves with verification\n"
    "                         on, give a --cafile holding both the proxy CA and the origin root.\n"
    "  --pid PID[,PID...]     repeatable: CPU time (utime+stime, incl. reaped children) used\n"
    "                         during the run by these processes and all their descendants\n"
    "                         (from /proc), CPU ms per ok connection, CPU s per GB received;\n"
    "                         summed VmHWM and VmRSS at the end and the highest summed VmRSS\n"
    "                         seen once a second. idle: taken at the end of the hold, while\n"
    "                         every connection is still up.\n"
    "  -h, --help             this text;  --version  the version\n"
    "\n"
    "Errors are counted by kind: connect, proxy (CONNECT not answered 200), tls (handshake),\n"
    "verify (chain or name), http (status not 2xx, short body, I/O error), timeout, busy.\n"
    "Latencies: connect = TCP connect; handshake = TCP connect start to TLS handshake done,\n"
    "including the CONNECT exchange; request = TCP connect start to the response's end.\n"
    "MB = 10^6 bytes. Memory is fixed at start (one connection table per thread), so long\n"
    "runs do not grow. SIGINT/SIGTERM: stop starting, let running connections finish and\n"
    "report (idle: end the hold); a second one aborts them.\n"
    "Exit status: 0 the run completed (even with failed connections), 1 could not run (out\n"
    "of memory, no thread), 2 bad options or unusable values (unreadable --cafile, no such\n"
    "--pid, not enough file descriptors).\n"
    "\n"
    "Examples:\n"
    "  tlsmint-bench handshake --connect 127.0.0.1:9443 --host localhost --cafile root.pem\n"
    "  tlsmint-bench mint --proxy 127.0.0.1:3128 --connect 127.0.0.1:9443 --connect-host\n"
    "      127.0.0.1 --host-pattern 'h%d.bench.test' --count 200 --cafile forward-trust.pem\n"
    "  tlsmint-bench bulk --conns 8 --connect 127.0.0.1:9443 --host h1.bench.test --insecure\n"
    "  tlsmint-bench handshake --rate 200 --duration 60 --timeline out.csv --issuer-stats ...\n";

enum {
    OPT_CONNECT = 256,
    OPT_HOST,
    OPT_SNI,
    OPT_NO_SNI,
    OPT_PATH,
    OPT_PROXY,
    OPT_CONNECT_HOST,
    OPT_HOSTS,
    OPT_HOST_PATTERN,
    OPT_COUNT,
    OPT_FIRST,
    OPT_THREADS,
    OPT_CONCURRENCY,
    OPT_DURATION,
    OPT_REQUESTS,
    OPT_RATE,
    OPT_MAX_INFLIGHT,
    OPT_TIMEOUT,
    OPT_HOLD,
    OPT_CAFILE,
    OPT_INSECURE,
    OPT_RESUME,
    OPT_TLS,
    OPT_ALPN,
    OPT_CIPHERSUITES,
    OPT_JSON,
    OPT_TIMELINE,
    OPT_ISSUER_STATS,
    OPT_PID,
    OPT_VERSION,
};

static const struct option long_opts[] = {
    {"connect", required_argument, NULL, OPT_CONNECT},
    {"host", required_argument, NULL, OPT_HOST},
    {"sni", required_argument, NULL, OPT_SNI},
    {"no-sni", no_argument, NULL, OPT_NO_SNI},
    {"path", required_argument, NULL, OPT_PATH},
    {"proxy", required_argument, NULL, OPT_PROXY},
    {"connect-host", required_argument, NULL, OPT_CONNECT_HOST},
    {"hosts", required_argument, NULL, OPT_HOSTS},
    {"host-pattern", required_argument, NULL, OPT_HOST_PATTERN},
    {"count", required_argument, NULL, OPT_COUNT},
    {"first", required_argument, NULL, OPT_FIRST},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"concurrency", required_argument, NULL, OPT_CONCURRENCY},
    {"conns", required_argument, NULL, OPT_CONCURRENCY},
    {"duration", required_argument, NULL, OPT_DURATION},
    {"requests", required_argument, NULL, OPT_REQUESTS},
    {"rate", required_argument, NULL, OPT_RATE},
    {"max-inflight", required_argument, NULL, OPT_MAX_INFLIGHT},
    {"timeout-ms", required_argument, NULL, OPT_TIMEOUT},
    {"hold", required_argument, NULL, OPT_HOLD},
    {"cafile", required_argument, NULL, OPT_CAFILE},
    {"insecure", no_argument, NULL, OPT_INSECURE},
    {"resume", no_argument, NULL, OPT_RESUME},
    {"tls", required_argument, NULL, OPT_TLS},
    {"alpn", required_argument, NULL, OPT_ALPN},
    {"ciphersuites", required_argument, NULL, OPT_CIPHERSUITES},
    {"quiet", no_argument, NULL, 'q'},
    {"json", no_argument, NULL, OPT_JSON},
    {"timeline", required_argument, NULL, OPT_TIMELINE},
    {"issuer-stats", no_argument, NULL, OPT_ISSUER_STATS},
    {"pid", required_argument, NULL, OPT_PID},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, OPT_VERSION},
    {NULL, 0, NULL, 0},
};

static int opt_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Prints "tlsmint-bench: <message>" as one line; returns -1 for the caller to pass up. */
static int opt_fail(const char *fmt, ...)
{
    va_list ap;

    fputs("tlsmint-bench: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs(" (see --help)\n", stderr);
    return -1;
}

/* Whole-string unsigned integer in [lo, hi]. */
static int parse_u64(const char *opt, const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end = NULL;
    unsigned long long v;

    if (s[0] == '\0' || s[0] == '-' || s[0] == '+') {
        return opt_fail("%s: not a number: '%s'", opt, s);
    }
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0') {
        return opt_fail("%s: not a number: '%s'", opt, s);
    }
    if (v < lo || v > hi) {
        return opt_fail("%s: %s is out of range %llu..%llu", opt, s, (unsigned long long)lo,
                        (unsigned long long)hi);
    }
    *out = v;
    return 0;
}

/* Whole-string positive finite number up to hi. */
static int parse_pos_double(const char *opt, const char *s, double hi, double *out)
{
    char *end = NULL;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v > 0.0) || v > hi) {
        return opt_fail("%s: not a positive number up to %g: '%s'", opt, hi, s);
    }
    *out = v;
    return 0;
}

/*
 * Splits HOST:PORT or [V6]:PORT into host (copied into host, at most hlen) and port.
 */
static int split_hostport(const char *opt, const char *s, char *host, size_t hlen, uint16_t *port)
{
    const char *colon;
    const char *hs = s;
    size_t hl;
    uint64_t p = 0;

    if (s[0] == '[') {
        const char *rb = strchr(s, ']');

        if (rb == NULL || rb[1] != ':') {
            return opt_fail("%s: expected [IPV6]:PORT, got '%s'", opt, s);
        }
        hs = s + 1;
        hl = (size_t)(rb - hs);
        colon = rb + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL) {
            return opt_fail("%s: expected HOST:PORT, got '%s'", opt, s);
        }
        hl = (size_t)(colon - s);
        if (memchr(s, ':', hl) != NULL) {
            return opt_fail("%s: IPv6 addresses need brackets: '%s'", opt, s);
        }
    }
    if (hl == 0 || hl >= hlen) {
        return opt_fail("%s: bad host in '%s'", opt, s);
    }
    memcpy(host, hs, hl);
    host[hl] = '\0';
    if (parse_u64(opt, colon + 1, 1, 65535, &p) < 0) {
        return -1;
    }
    *port = (uint16_t)p;
    return 0;
}

/* Resolves host:port once (numeric or DNS) into ss. */
static int resolve(const char *opt, const char *host, uint16_t port, struct sockaddr_storage *ss,
                   socklen_t *sslen)
{
    struct addrinfo hints;
    struct addrinfo *res = NULL;
    char pbuf[8];
    int rc;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    snprintf(pbuf, sizeof(pbuf), "%u", (unsigned)port);
    rc = getaddrinfo(host, pbuf, &hints, &res);
    if (rc != 0 || res == NULL) {
        return opt_fail("%s: cannot resolve '%s': %s", opt, host, gai_strerror(rc));
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *sslen = (socklen_t)res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

/* A host name we put on the wire: no spaces, controls or bytes that break a header line. */
static bool name_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n >= LG_NAME_MAX - 16) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];

        if (ch <= ' ' || ch >= 0x7f || ch == '/' || ch == '%') {
            return false;
        }
    }
    return true;
}

/* Reads --hosts: one name per line into one buffer; bounded by LG_HOSTS_FILE_MAX. */
static int load_hosts(struct lg_opts *o)
{
    FILE *f = fopen(o->hosts_file, "r");
    long len;
    size_t n = 0;
    size_t cap = 0;
    char *p;

    if (f == NULL) {
        return opt_fail("--hosts: cannot open '%s': %s", o->hosts_file, strerror(errno));
    }
    if (fseek(f, 0, SEEK_END) != 0 || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0 ||
        (unsigned long)len > LG_HOSTS_FILE_MAX) {
        fclose(f);
        return opt_fail("--hosts: '%s' is not a regular file up to 64 MiB", o->hosts_file);
    }
    o->hosts_buf = malloc((size_t)len + 1);
    if (o->hosts_buf == NULL) {
        fclose(f);
        return opt_fail("--hosts: out of memory");
    }
    if (fread(o->hosts_buf, 1, (size_t)len, f) != (size_t)len) {
        fclose(f);
        return opt_fail("--hosts: read error on '%s'", o->hosts_file);
    }
    fclose(f);
    o->hosts_buf[len] = '\0';

    p = o->hosts_buf;
    while (*p != '\0') {
        char *eol = strchr(p, '\n');
        char *next = eol != NULL ? eol + 1 : p + strlen(p);
        char *e;

        if (eol != NULL) {
            *eol = '\0';
        }
        while (*p == ' ' || *p == '\t') {
            p++;
        }
        e = p + strlen(p);
        while (e > p && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r')) {
            *--e = '\0';
        }
        if (*p != '\0' && *p != '#') {
            if (!name_ok(p)) {
                return opt_fail("--hosts: '%s': bad host name '%.40s'", o->hosts_file, p);
            }
            if (n == cap) {
                size_t ncap = cap == 0 ? 1024 : cap * 2;
                const char **nh = realloc(o->hosts, ncap * sizeof(*nh));

                if (nh == NULL) {
                    return opt_fail("--hosts: out of memory");
                }
                o->hosts = nh;
                cap = ncap;
            }
            o->hosts[n++] = p;
        }
        p = next;
    }
    if (n == 0) {
        return opt_fail("--hosts: '%s' has no host names", o->hosts_file);
    }
    if (n > UINT32_MAX) {
        return opt_fail("--hosts: too many names");
    }
    o->nhosts = (uint32_t)n;
    return 0;
}

/* Splits the pattern at its one %d; %% is a literal percent sign on either side. */
static int split_pattern(struct lg_opts *o)
{
    const char *s = o->host_pattern;
    char *dst = o->pat_pre;
    size_t dl = 0;
    int seen = 0;

    for (; *s != '\0'; s++) {
        if (*s == '%') {
            if (s[1] == '%') {
                s++;
            } else if (s[1] == 'd' && seen == 0) {
                seen = 1;
                dst[dl] = '\0';
                dst = o->pat_suf;
                dl = 0;
                s++;
                continue;
            } else {
                return opt_fail("--host-pattern: needs exactly one %%d and no other %% "
                                "conversion: '%s'",
                                o->host_pattern);
            }
        }
        if (dl + 1 >= LG_NAME_MAX - 24) {
            return opt_fail("--host-pattern: too long");
        }
        dst[dl++] = *s;
    }
    dst[dl] = '\0';
    if (seen == 0) {
        return opt_fail("--host-pattern: needs exactly one %%d: '%s'", o->host_pattern);
    }
    return 0;
}

/* Accepts 123 or 123,456 (repeatable option). */
static int parse_pids(struct lg_opts *o, const char *arg)
{
    char buf[256];
    char *save = NULL;
    char *tok;

    if (strlen(arg) >= sizeof(buf)) {
        return opt_fail("--pid: list too long");
    }
    strcpy(buf, arg);
    for (tok = strtok_r(buf, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
        uint64_t v = 0;

        if (parse_u64("--pid", tok, 1, INT_MAX, &v) < 0) {
            return -1;
        }
        if (o->npids == LG_MAX_PIDS) {
            return opt_fail("--pid: at most %d pids", LG_MAX_PIDS);
        }
        o->pids[o->npids++] = (int)v;
    }
    if (o->npids == 0) {
        return opt_fail("--pid: no pid in '%s'", arg);
    }
    return 0;
}

static int set_scenario(struct lg_opts *o, const char *s)
{
    static const struct {
        const char *name;
        enum lg_scenario sc;
    } names[] = {
        {"handshake", LG_SC_HANDSHAKE},
        {"mint", LG_SC_MINT},
        {"bulk", LG_SC_BULK},
        {"idle", LG_SC_IDLE},
        {"keepalive", LG_SC_KEEPALIVE},
    };

    if (o->scenario != 0) {
        return opt_fail("one scenario only, got '%s' after '%s'", s, o->scenario_name);
    }
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcmp(s, names[i].name) == 0) {
            o->scenario = names[i].sc;
            o->scenario_name = names[i].name;
            return 0;
        }
    }
    return opt_fail("unknown scenario '%s' (handshake, mint, bulk, idle, keepalive)", s);
}

/* Cross-option checks and defaults, after every option has been seen. */
static int finish(struct lg_opts *o, bool have_conc, bool have_threads)
{
    char phost[LG_NAME_MAX];
    uint16_t pport = 0;

    if (o->scenario == 0) {
        return opt_fail("missing SCENARIO (handshake, mint, bulk, idle)");
    }
    if (o->connect_arg == NULL) {
        return opt_fail("missing --connect ADDR:PORT");
    }
    if (split_hostport("--connect", o->connect_arg, o->connect_host, sizeof(o->connect_host),
                       &o->port) < 0) {
        return -1;
    }
    if (o->proxy_arg != NULL) {
        if (split_hostport("--proxy", o->proxy_arg, phost, sizeof(phost), &pport) < 0 ||
            resolve("--proxy", phost, pport, &o->proxy, &o->proxy_len) < 0) {
            return -1;
        }
    } else {
        if (o->connect_line_host != NULL) {
            return opt_fail("--connect-host needs --proxy");
        }
        if (resolve("--connect", o->connect_host, o->port, &o->target, &o->target_len) < 0) {
            return -1;
        }
    }
    if (o->connect_line_host != NULL && !name_ok(o->connect_line_host)) {
        return opt_fail("--connect-host: bad host '%s'", o->connect_line_host);
    }
    if (o->host == NULL) {
        o->host = o->connect_host;
    }
    if (!name_ok(o->host)) {
        return opt_fail("--host: bad host name '%s'", o->host);
    }
    if (o->sni != NULL && (o->no_sni || !name_ok(o->sni))) {
        return opt_fail(
            o->no_sni ? "--sni and --no-sni exclude each other" : "--sni: bad name '%s'", o->sni);
    }
    if (o->path == NULL) {
        o->path = o->scenario == LG_SC_BULK ? "/big.bin" : "/";
    }
    if (o->path[0] != '/' || strlen(o->path) > 512 || strpbrk(o->path, " \r\n\t") != NULL) {
        return opt_fail("--path: must start with '/', no spaces, at most 512 bytes");
    }

    /* names */
    if (o->hosts_file != NULL && o->host_pattern != NULL) {
        return opt_fail("--hosts and --host-pattern exclude each other");
    }
    if (o->host_pattern != NULL) {
        if (o->count == 0) {
            return opt_fail("--host-pattern needs --count N");
        }
        if (split_pattern(o) < 0) {
            return -1;
        }
        if (o->first + o->count - 1 > (uint64_t)INT_MAX) {
            return opt_fail("--first + --count must stay below %d", INT_MAX);
        }
    } else if (o->count != 0 || o->first != 1) {
        return opt_fail("--count and --first need --host-pattern");
    }
    if (o->hosts_file != NULL && load_hosts(o) < 0) {
        return -1;
    }
    if (o->scenario == LG_SC_MINT && o->hosts_file == NULL && o->host_pattern == NULL) {
        return opt_fail("mint needs --hosts FILE or --host-pattern PAT --count N");
    }

    /* load */
    if (!have_conc) {
        o->concurrency = o->scenario == LG_SC_BULK ? 1 : o->scenario == LG_SC_IDLE ? 100 : 16;
    }
    if (o->scenario == LG_SC_KEEPALIVE && o->rate > 0.0) {
        return opt_fail("keepalive is a closed loop: --conns, not --rate");
    }
    if (o->rate > 0.0 && have_conc && o->scenario != LG_SC_IDLE) {
        return opt_fail("--rate (open loop) and --concurrency (closed loop) exclude each other");
    }
    if (o->max_inflight != 0 && o->rate == 0.0) {
        return opt_fail("--max-inflight needs --rate");
    }
    if (o->scenario == LG_SC_IDLE) {
        if (o->duration_s > 0.0 || o->requests != 0) {
            return opt_fail("idle takes --conns and --hold, not --duration or --requests");
        }
        if (o->hold_s == 0.0) {
            o->hold_s = 10.0;
        }
        o->requests = o->concurrency;
    } else if (o->hold_s != 0.0) {
        return opt_fail("--hold is for the idle scenario");
    }
    if (o->duration_s == 0.0 && o->requests == 0) {
        if (o->scenario == LG_SC_MINT) {
            o->requests = o->nhosts != 0 ? o->nhosts : o->count;
        } else if (o->scenario == LG_SC_BULK && o->rate == 0.0) {
            o->requests = o->concurrency;
        } else {
            o->duration_s = 10.0;
        }
    }
    if (o->rate > 0.0) {
        if (o->max_inflight == 0) {
            double m = o->rate * (o->timeout_ms / 1000.0) * 1.25 + 64.0;
            o->max_inflight = m > 60000.0 ? 60000u : (unsigned)m;
        }
        if (o->scenario == LG_SC_IDLE && o->max_inflight < o->concurrency) {
            o->max_inflight = o->concurrency;
        }
    }
    if (!have_threads) {
        o->threads = 2;
    }
    if (o->rate == 0.0 && o->threads > o->concurrency) {
        o->threads = o->concurrency;
    }
    if (o->requests != 0 && o->threads > o->requests) {
        o->threads = (unsigned)o->requests;
    }
    if (o->cafile != NULL && o->insecure) {
        return opt_fail("--cafile and --insecure exclude each other");
    }
    return 0;
}

int lg_opts_parse(struct lg_opts *o, int argc, char **argv)
{
    bool have_conc = false;
    bool have_threads = false;
    uint64_t v = 0;
    int c;

    memset(o, 0, sizeof(*o));
    o->timeout_ms = 5000;
    o->ciphersuites = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
    o->first = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":qh", long_opts, NULL)) != -1) {
        switch (c) {
        case OPT_CONNECT:
            o->connect_arg = optarg;
            break;
        case OPT_HOST:
            o->host = optarg;
            break;
        case OPT_SNI:
            o->sni = optarg;
            break;
        case OPT_NO_SNI:
            o->no_sni = true;
            break;
        case OPT_PATH:
            o->path = optarg;
            break;
        case OPT_PROXY:
            o->proxy_arg = optarg;
            break;
        case OPT_CONNECT_HOST:
            o->connect_line_host = optarg;
            break;
        case OPT_HOSTS:
            o->hosts_file = optarg;
            break;
        case OPT_HOST_PATTERN:
            o->host_pattern = optarg;
            break;
        case OPT_COUNT:
            if (parse_u64("--count", optarg, 1, INT_MAX, &o->count) < 0) {
                return -1;
            }
            break;
        case OPT_FIRST:
            if (parse_u64("--first", optarg, 0, INT_MAX, &o->first) < 0) {
                return -1;
            }
            break;
        case OPT_THREADS:
            if (parse_u64("--threads", optarg, 1, 256, &v) < 0) {
                return -1;
            }
            o->threads = (unsigned)v;
            have_threads = true;
            break;
        case OPT_CONCURRENCY:
            if (parse_u64("--concurrency", optarg, 1, 1000000, &v) < 0) {
                return -1;
            }
            o->concurrency = (unsigned)v;
            have_conc = true;
            break;
        case OPT_DURATION:
            if (parse_pos_double("--duration", optarg, 86400.0 * 7, &o->duration_s) < 0) {
                return -1;
            }
            break;
        case OPT_REQUESTS:
            if (parse_u64("--requests", optarg, 1, UINT64_MAX / 4, &o->requests) < 0) {
                return -1;
            }
            break;
        case OPT_RATE:
            if (parse_pos_double("--rate", optarg, 1e7, &o->rate) < 0) {
                return -1;
            }
            break;
        case OPT_MAX_INFLIGHT:
            if (parse_u64("--max-inflight", optarg, 1, 1000000, &v) < 0) {
                return -1;
            }
            o->max_inflight = (unsigned)v;
            break;
        case OPT_TIMEOUT:
            if (parse_u64("--timeout-ms", optarg, 1, 3600000, &v) < 0) {
                return -1;
            }
            o->timeout_ms = (unsigned)v;
            break;
        case OPT_HOLD:
            if (parse_pos_double("--hold", optarg, 86400.0, &o->hold_s) < 0) {
                return -1;
            }
            break;
        case OPT_CAFILE:
            o->cafile = optarg;
            break;
        case OPT_INSECURE:
            o->insecure = true;
            break;
        case OPT_RESUME:
            o->resume = true;
            break;
        case OPT_TLS:
            if (strcmp(optarg, "1.2") == 0) {
                o->tls_version = TLS1_2_VERSION;
            } else if (strcmp(optarg, "1.3") == 0) {
                o->tls_version = TLS1_3_VERSION;
            } else {
                return opt_fail("--tls: expected 1.2 or 1.3, got '%s'", optarg);
            }
            break;
        case OPT_ALPN:
            if (strcmp(optarg, "h2") != 0 && strcmp(optarg, "http/1.1") != 0) {
                return opt_fail("--alpn: expected h2 or http/1.1, got '%s'", optarg);
            }
            o->alpn = optarg;
            break;
        case OPT_CIPHERSUITES:
            o->ciphersuites = optarg;
            break;
        case 'q':
            o->quiet = true;
            break;
        case OPT_JSON:
            o->json = true;
            break;
        case OPT_TIMELINE:
            o->timeline_path = optarg;
            break;
        case OPT_ISSUER_STATS:
            o->issuer_stats = true;
            break;
        case OPT_PID:
            if (parse_pids(o, optarg) < 0) {
                return -1;
            }
            break;
        case 'h':
            fputs(usage_text, stdout);
            return 1;
        case OPT_VERSION:
            printf("tlsmint-bench %s\n", TLSMINT_VERSION);
            return 1;
        case ':':
            return opt_fail("option '%s' needs a value", argv[optind - 1]);
        default:
            if (optopt != 0 && optopt < 256) {
                return opt_fail("unknown option '-%c'", optopt);
            }
            return opt_fail("unknown option '%s'", argv[optind - 1]);
        }
    }
    /* GNU getopt moved the operands (the scenario) behind the options */
    while (optind < argc) {
        if (set_scenario(o, argv[optind]) < 0) {
            return -1;
        }
        optind++;
    }
    return finish(o, have_conc, have_threads);
}

void lg_opts_fini(struct lg_opts *o)
{
    free(o->hosts);
    free(o->hosts_buf);
    o->hosts = NULL;
    o->hosts_buf = NULL;
}

void lg_opts_host_name(const struct lg_opts *o, uint64_t n, char *buf, size_t len)
{
    if (o->nhosts != 0) {
        snprintf(buf, len, "%s", o->hosts[n % o->nhosts]);
    } else if (o->host_pattern != NULL) {
        snprintf(buf, len, "%s%llu%s", o->pat_pre, (unsigned long long)(o->first + n % o->count),
                 o->pat_suf);
    } else {
        snprintf(buf, len, "%s", o->host);
    }
}
