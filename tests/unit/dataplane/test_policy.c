/* SPDX-License-Identifier: MIT */
/*
 * test_policy.c - unit tests for the decryption policy's pieces: address blocks and host
 * patterns (common/px_match.c), the [policy] / [rule.NAME] / [profile.NAME] keys (px_cfg.c)
 * and the decision (dp_policy_decide), with the negative cases: bad blocks, one pattern too
 * many, each config error with its FILE:LINE.
 * Owns a static struct px_cfg reused by every test (each test runs in its own forked child
 * unless CK_FORK=no).
 * Not here: connections (tests/e2e/test_policy.sh).
 */
#include "dp.h"
#include "dp_int.h" /* the exclusion cache is the module's own */
#include "px.h"

#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

Suite *policy_suite(void);

static struct px_cfg g_cfg;
static char g_err[600];

#define HSM_REQ                                                                                    \
    "[hsm]\nmodule = /m.so\ntoken = t\npin_file = /p\nkey_label = k\n" /* lines 1-5 */

static int load(const char *text)
{
    static char full[32768];
    snprintf(full, sizeof(full), "%s%s", HSM_REQ, text);
    g_err[0] = '\0';
    return px_cfg_load_string("t.conf", full, &g_cfg, g_err, sizeof(g_err));
}

static struct sockaddr_storage sa(const char *ip, int port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, ip, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
    } else {
        ck_assert(inet_pton(AF_INET6, ip, &s6->sin6_addr) == 1);
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
    }
    return ss;
}

static const char *decide(const char *host, const char *dst, int port, const char *client)
{
    struct sockaddr_storage d = sa(dst, port), c = sa(client, 40000);
    struct dp_decision r = dp_policy_decide(&g_cfg, host, (struct sockaddr *)&d,
                                            (struct sockaddr *)&c);
    static char out[80];
    snprintf(out, sizeof(out), "%s:%s", r.rule, px_action_name(r.action));
    return out;
}

static bool in(const char *cidr, const char *ip, int port)
{
    struct px_cidr c;
    ck_assert_msg(px_cidr_parse(cidr, true, &c) == 0, "%s", cidr);
    uint8_t a[16];
    int fam = inet_pton(AF_INET, ip, a) == 1 ? 4 : 6;
    if (fam == 6) {
        ck_assert(inet_pton(AF_INET6, ip, a) == 1);
    }
    return px_cidr_match(&c, fam, a, (uint16_t)port);
}

START_TEST(test_cidr_parse)
{
    struct px_cidr c;
    ck_assert_int_eq(px_cidr_parse("192.0.2.0/24", false, &c), 0);
    ck_assert_int_eq(c.family, 4);
    ck_assert_int_eq(c.bits, 24);
    ck_assert_int_eq(c.port, 0);
    ck_assert_int_eq(px_cidr_parse("10.0.0.1", false, &c), 0);
    ck_assert_int_eq(c.bits, 32);
    ck_assert_int_eq(px_cidr_parse("10.0.0.0/8:443", true, &c), 0);
    ck_assert_int_eq(c.port, 443);
    ck_assert_int_eq(px_cidr_parse("[2001:db8::]/32:443", true, &c), 0);
    ck_assert_int_eq(c.family, 6);
    ck_assert_int_eq(c.bits, 32);
    ck_assert_int_eq(c.port, 443);
    ck_assert_int_eq(px_cidr_parse("[::1]:8443", true, &c), 0);
    ck_assert_int_eq(c.bits, 128);
    ck_assert_int_eq(px_cidr_parse("2001:db8::/32", false, &c), 0);
    ck_assert_int_eq(px_cidr_parse("0.0.0.0/0", false, &c), 0);
    ck_assert_int_eq(px_cidr_parse("::/0", false, &c), 0);
    ck_assert_int_eq(px_cidr_parse("10.0.0.0/8:65535", true, &c), 0);
}
END_TEST

START_TEST(test_cidr_negative)
{
    struct px_cidr c;
    static const char *bad[] = {
        "",              "192.0.2.1/24",   "192.0.2.0/33",     "[::]/129",     "10.0.0.0/8:0",
        ":443",          "10.0.0.0/8:65536", "256.1.1.1",      "10.0.0.0/8:443x", "[10.0.0.1]",
        "10.0.0.0/",     "10.0.0.0/8/9",   "[2001:db8::/32",   "2001:db8::1/64", "10.0.0.0/-1",
        "10.0.0.0/08x",  "example.com",    "10.0.0.0 /8",      "[::1]:",        "10.0.0.1:443:1",
        "10.0.0.0/8:123456",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ck_assert_msg(px_cidr_parse(bad[i], true, &c) == PX_E_INVAL, "'%s' accepted", bad[i]);
    }
    /* a port where none is allowed (clients) */
    ck_assert_int_eq(px_cidr_parse("10.0.0.0/8:443", false, &c), PX_E_INVAL);
    ck_assert_int_eq(px_cidr_parse("[::1]:443", false, &c), PX_E_INVAL);
    /* 81 bytes: one more than the parser takes */
    char longv[82];
    memset(longv, '1', 81);
    longv[81] = '\0';
    ck_assert_int_eq(px_cidr_parse(longv, true, &c), PX_E_INVAL);
}
END_TEST

START_TEST(test_cidr_match)
{
    ck_assert(in("192.0.2.0/24", "192.0.2.5", 443));
    ck_assert(!in("192.0.2.0/24", "192.0.3.1", 443));
    ck_assert(in("10.0.2.0/23", "10.0.3.255", 1));
    ck_assert(!in("10.0.2.0/23", "10.0.4.0", 1));
    ck_assert(in("0.0.0.0/0", "203.0.113.9", 1));
    ck_assert(!in("0.0.0.0/0", "2001:db8::1", 1)); /* families do not mix */
    ck_assert(in("10.0.0.0/8:443", "10.9.9.9", 443));
    ck_assert(!in("10.0.0.0/8:443", "10.9.9.9", 8443));
    ck_assert(in("[2001:db8::]/32:443", "2001:db8:ffff::1", 443));
    ck_assert(!in("[2001:db8::]/32:443", "2001:db9::1", 443));
    ck_assert(in("[2001:db8::]/33", "2001:db8:7fff::1", 9));
    ck_assert(!in("[2001:db8::]/33", "2001:db8:8000::1", 9));
    ck_assert(in("127.0.0.1", "127.0.0.1", 9));
    ck_assert(!in("127.0.0.1", "127.0.0.2", 9));
}
END_TEST

START_TEST(test_hosts)
{
    struct px_hosts h;
    char bad[64];
    ck_assert_int_eq(px_hosts_parse("*.Bank.example, .health.example pay.example 127.0.0.1", &h,
                                    bad, sizeof(bad)),
                     0);
    ck_assert_int_eq(h.n, 4);
    ck_assert(px_hosts_match(&h, "bank.example"));
    ck_assert(px_hosts_match(&h, "www.BANK.example"));
    ck_assert(px_hosts_match(&h, "a.b.bank.example."));
    ck_assert(!px_hosts_match(&h, "xbank.example"));
    ck_assert(!px_hosts_match(&h, "bank.example.evil"));
    ck_assert(px_hosts_match(&h, "health.example"));
    ck_assert(px_hosts_match(&h, "x.health.example"));
    ck_assert(px_hosts_match(&h, "PAY.example"));
    ck_assert(!px_hosts_match(&h, "www.pay.example")); /* an exact name is only that name */
    ck_assert(px_hosts_match(&h, "127.0.0.1"));
    ck_assert(!px_hosts_match(&h, ""));
    char huge[300];
    memset(huge, 'a', sizeof(huge) - 1);
    huge[sizeof(huge) - 1] = '\0';
    ck_assert(!px_hosts_match(&h, huge));
}
END_TEST

START_TEST(test_hosts_negative)
{
    struct px_hosts h;
    char bad[64];
    ck_assert_int_eq(px_hosts_parse("ok.example a/b", &h, bad, sizeof(bad)), PX_E_INVAL);
    ck_assert_str_eq(bad, "a/b");
    ck_assert_int_eq(px_hosts_parse("*", &h, bad, sizeof(bad)), PX_E_INVAL);
    ck_assert_int_eq(px_hosts_parse("*foo.example", &h, bad, sizeof(bad)), PX_E_INVAL);
    ck_assert_int_eq(px_hosts_parse(".", &h, bad, sizeof(bad)), PX_E_INVAL);
    ck_assert_int_eq(px_hosts_parse("a<b", &h, bad, sizeof(bad)), PX_E_INVAL);
    /* 64 patterns fit (the buffer holds 200 bytes: 64 one-letter names take 128), 65 do not */
    char list[400] = "";
    for (int i = 0; i < PX_RULE_HOSTS; i++) {
        strcat(list, "a ");
    }
    ck_assert_int_eq(px_hosts_parse(list, &h, bad, sizeof(bad)), 0);
    ck_assert_int_eq(h.n, PX_RULE_HOSTS);
    strcat(list, "b");
    ck_assert_int_eq(px_hosts_parse(list, &h, bad, sizeof(bad)), PX_E_FULL);
    /* 200 bytes of names: 199 fit the buffer (with their NULs), one more does not */
    char names[300];
    memset(names, 'x', 198);
    names[198] = '\0'; /* 198 + NUL = 199 */
    ck_assert_int_eq(px_hosts_parse(names, &h, bad, sizeof(bad)), 0);
    memset(names, 'x', 199);
    names[199] = '\0';
    ck_assert_int_eq(px_hosts_parse(names, &h, bad, sizeof(bad)), 0);
    memset(names, 'x', 200);
    names[200] = '\0';
    ck_assert_int_eq(px_hosts_parse(names, &h, bad, sizeof(bad)), PX_E_FULL);
}
END_TEST

START_TEST(test_rules_order_and_keys)
{
    ck_assert_msg(load("[policy]\n"
                       "default = inspect\n"
                       "bypass = bypass.example\n"
                       "[rule.clients]\n"
                       "clients = 10.1.0.0/16\n"
                       "hosts = .corp.example\n"
                       "action = block\n"
                       "[rule.bank]\n"
                       "hosts = *.bank.example, bypass.example\n"
                       "action = bypass\n"
                       "[rule.net]\n"
                       "dst = 192.0.2.0/24, [2001:db8::]/32:443\n"
                       "action = block\n"
                       "[rule.all-corp]\n"
                       "hosts = .corp.example\n"
                       "action = inspect\n") == 0,
                  "%s", g_err);
    ck_assert_int_eq(g_cfg.n_rules, 4);
    ck_assert_str_eq(g_cfg.rules[0].name, "clients");
    ck_assert_str_eq(g_cfg.rules[3].name, "all-corp");
    /* the bypass list comes first, even before a rule naming the same host */
    ck_assert_str_eq(decide("bypass.example", "192.0.2.1", 443, "10.1.2.3"), "bypass:bypass");
    /* every key of a rule must match: clients AND hosts */
    ck_assert_str_eq(decide("www.corp.example", "198.51.100.1", 443, "10.1.2.3"),
                     "clients:block");
    ck_assert_str_eq(decide("www.corp.example", "198.51.100.1", 443, "10.2.2.3"),
                     "all-corp:inspect");
    /* first match in file order: bank (bypass) before net (block) */
    ck_assert_str_eq(decide("www.bank.example", "192.0.2.1", 443, "10.2.2.3"), "bank:bypass");
    ck_assert_str_eq(decide("other.example", "192.0.2.1", 80, "10.2.2.3"), "net:block");
    ck_assert_str_eq(decide("other.example", "2001:db8::5", 443, "10.2.2.3"), "net:block");
    ck_assert_str_eq(decide("other.example", "2001:db8::5", 8443, "10.2.2.3"),
                     "default:inspect");
    ck_assert_str_eq(decide("other.example", "198.51.100.1", 443, "10.2.2.3"),
                     "default:inspect");
    /* no name: host rules never match; IPv4-mapped clients count as IPv4 */
    ck_assert_str_eq(decide("", "198.51.100.1", 443, "::ffff:10.1.9.9"), "default:inspect");
    ck_assert_str_eq(decide(NULL, "192.0.2.77", 443, "::ffff:10.1.9.9"), "net:block");
    ck_assert_str_eq(decide("x.corp.example", "198.51.100.1", 443, "::ffff:10.1.9.9"),
                     "clients:block");
}
END_TEST

START_TEST(test_default_and_profiles)
{
    ck_assert_msg(load("[policy]\ndefault = block\n"
                       "[rule.ok]\nhosts = ok.example\naction = inspect\nprofile = strict\n"
                       "[rule.plain]\nhosts = plain.example\naction = inspect\n"
                       "[profile.strict]\nexpired = block\n"
                       "[profile.default]\nuntrusted_issuer = block\n") == 0,
                  "%s", g_err);
    ck_assert_str_eq(decide("nope.example", "192.0.2.1", 443, "10.0.0.1"), "default:block");
    struct sockaddr_storage d = sa("192.0.2.1", 443);
    struct dp_decision r = dp_policy_decide(&g_cfg, "ok.example", (struct sockaddr *)&d, NULL);
    ck_assert_int_eq(r.index, 0);
    ck_assert_str_eq(g_cfg.profiles[r.profile].name, "strict");
    ck_assert_int_eq(g_cfg.profiles[r.profile].expired, PX_CERT_BLOCK);
    ck_assert_int_eq(g_cfg.profiles[r.profile].untrusted_issuer, PX_CERT_UNTRUST);
    /* a rule without a profile gets [profile.default], and so does [policy] default */
    r = dp_policy_decide(&g_cfg, "plain.example", (struct sockaddr *)&d, NULL);
    ck_assert_str_eq(g_cfg.profiles[r.profile].name, "default");
    r = dp_policy_decide(&g_cfg, "nope.example", (struct sockaddr *)&d, NULL);
    ck_assert_str_eq(g_cfg.profiles[r.profile].name, "default");
    ck_assert_int_eq(r.index, DP_RULE_DEFAULT);
    /* without [profile.default]: the built-in one (-1) */
    ck_assert(load("[rule.a]\nhosts = a.example\naction = inspect\n") == 0);
    r = dp_policy_decide(&g_cfg, "a.example", (struct sockaddr *)&d, NULL);
    ck_assert_int_eq(r.profile, -1);
    ck_assert_int_eq(g_cfg.policy_default, PX_ACT_INSPECT);
    ck_assert_int_eq(g_cfg.policy_non_tls, PX_NON_TLS_TUNNEL);
    ck_assert_int_eq(g_cfg.policy_first_byte_ms, 500);
    ck_assert(load("[policy]\nnon_tls = block\nfirst_byte_ms = 0\n") == 0);
    ck_assert_int_eq(g_cfg.policy_non_tls, PX_NON_TLS_BLOCK);
    ck_assert_int_eq(g_cfg.policy_first_byte_ms, 0);
    ck_assert_int_eq(g_cfg.excl_pinned_alerts, 1);
}
END_TEST

/* The profile keys of versions and revocation: the documented defaults (built-in profile and
 * every [profile.NAME] before its keys), and each key's values. */
START_TEST(test_profile_versions_ocsp)
{
    ck_assert_msg(load("[profile.strict]\nmin_version = tls1.3\nunsupported = block\n"
                       "ocsp = fetch\nocsp_timeout_ms = 250\nrevoked = untrust\n"
                       "unknown_status = block\nstatus_timeout = untrust\n"
                       "[profile.staple]\nocsp = stapled\nmax_version = tls1.2\n") == 0,
                  "%s", g_err);
    const struct px_profile *b = px_cfg_profile(&g_cfg, -1);
    ck_assert_str_eq(b->name, "built-in");
    ck_assert_int_eq(b->min_version, 0x0303);
    ck_assert_int_eq(b->max_version, 0x0304);
    ck_assert(!b->unsupported_block);
    ck_assert_int_eq(b->ocsp, PX_OCSP_OFF);
    ck_assert_int_eq(b->ocsp_timeout_ms, 500);
    ck_assert_int_eq(b->revoked, PX_STATUS_BLOCK);
    ck_assert_int_eq(b->unknown_status, PX_STATUS_ALLOW);
    ck_assert_int_eq(b->status_timeout, PX_STATUS_ALLOW);
    const struct px_profile *s = px_cfg_profile(&g_cfg, 0);
    ck_assert_str_eq(s->name, "strict");
    ck_assert_int_eq(s->min_version, 0x0304);
    ck_assert_int_eq(s->max_version, 0x0304);
    ck_assert(s->unsupported_block);
    ck_assert_int_eq(s->ocsp, PX_OCSP_FETCH);
    ck_assert_int_eq(s->ocsp_timeout_ms, 250);
    ck_assert_int_eq(s->revoked, PX_STATUS_UNTRUST);
    ck_assert_int_eq(s->unknown_status, PX_STATUS_BLOCK);
    ck_assert_int_eq(s->status_timeout, PX_STATUS_UNTRUST);
    const struct px_profile *t = px_cfg_profile(&g_cfg, 1);
    ck_assert_int_eq(t->ocsp, PX_OCSP_STAPLED);
    ck_assert_int_eq(t->min_version, 0x0303);
    ck_assert_int_eq(t->max_version, 0x0303);
    ck_assert_int_eq(t->revoked, PX_STATUS_BLOCK); /* untouched keys keep their defaults */
    ck_assert_int_eq(t->ocsp_timeout_ms, 500);
}
END_TEST

/* The OCSP answer's HTTP layer (dp_ocsp_http_body), with its negative cases. */
START_TEST(test_ocsp_http)
{
    const uint8_t *body;
    size_t bl;
    static const char ok[] = "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabc";
    ck_assert_int_eq(dp_ocsp_http_body((const uint8_t *)ok, sizeof(ok) - 1, &body, &bl), 0);
    ck_assert_int_eq(bl, 3);
    ck_assert(memcmp(body, "abc", 3) == 0);
    static const char eof[] = "HTTP/1.0 200 OK\r\nContent-Type: application/ocsp-response\r\n\r\nxyz1";
    ck_assert_int_eq(dp_ocsp_http_body((const uint8_t *)eof, sizeof(eof) - 1, &body, &bl), 0);
    ck_assert_int_eq(bl, 4); /* the body ends at EOF */
    static const char *bad[] = {
        "HTTP/1.0 404 Not Found\r\nContent-Length: 3\r\n\r\nabc",    /* not 200 */
        "HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nabc",           /* short body */
        "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",              /* empty */
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n1\r\nb\r\n0\r\n\r\n",
        "SSH-2.0-OpenSSH\r\n",                                          /* no HTTP at all */
        "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n",                    /* head cut short */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ck_assert_msg(dp_ocsp_http_body((const uint8_t *)bad[i], strlen(bad[i]), &body, &bl) ==
                          PX_E_INVAL,
                      "case %zu accepted", i);
    }
    /* anything but a DER OCSPResponse is refused by the verifier too */
    int64_t next = 1;
    ck_assert_int_eq(dp_ocsp_verify((const uint8_t *)"abc", 3, NULL, NULL, NULL, NULL, 0, &next),
                     PX_E_INVAL);
    ck_assert_int_eq(next, 0);
}
END_TEST

START_TEST(test_config_errors)
{
    /* HSM_REQ is lines 1-5: the text below starts at line 6 */
    static const struct {
        const char *text, *want;
    } cases[] = {
        {"[rule.a]\nhosts = a.example\naction = allow\n",
         "t.conf:8: [rule.a] action: 'allow' is not inspect, bypass or block"},
        {"[rule.a]\ndst = 192.0.2.1/24\naction = block\n",
         "t.conf:7: [rule.a] dst: '192.0.2.1/24' is not an address block"},
        {"[rule.a]\nclients = 10.0.0.0/8:443\naction = block\n",
         "t.conf:7: [rule.a] clients: '10.0.0.0/8:443' is not an address block"},
        {"[rule.a]\nhosts = a.example\naction = inspect\nprofile = strict\n",
         "t.conf:9: [rule.a] profile: 'strict' is not defined (no [profile.strict] section)"},
        {"[rule.a]\naction = block\n",
         "t.conf:6: [rule.a] -: no match key: a rule needs hosts, dst or clients"},
        {"[policy]\ndefault = inspect\n[rule.empty]\n", "t.conf:8: [rule.empty] -: no match key"},
        {"[rule.a]\nhosts = a.example\n", "t.conf:6: [rule.a] action: missing"},
        {"[rule.a]\nhosts = a.example\naction = block\nport = 443\n",
         "t.conf:9: [rule.a] port: unknown key"},
        {"[rule.bypass]\nhosts = a.example\naction = block\n",
         "t.conf:6: [rule.bypass] -: rule name"},
        {"[rule.a b]\nhosts = a.example\naction = block\n", "t.conf:6: [rule.a b] -: rule name"},
        {"[policy]\ndefault = allow\n", "t.conf:7: [policy] default: 'allow' is not inspect"},
        {"[policy]\nbypass = a.example, b/c\n", "t.conf:7: [policy] bypass: 'b/c' is not a host"},
        {"[profile.p]\nexpired = allow\n", "t.conf:7: [profile.p] expired: 'allow' is not untrust"},
        {"[profile.p]\nocsp_nope = 1\n", "t.conf:7: [profile.p] ocsp_nope: unknown key"},
        {"[rule.a]\nhosts = a.example\naction = block\ndst = \n", "t.conf:9: [rule.a] dst: empty"},
        {"[exclusions]\nttl_s = 0\n", "t.conf:7: [exclusions] ttl_s: 0 is out of range"},
        {"[exclusions]\npinned_alerts = -1\n",
         "t.conf:7: [exclusions] pinned_alerts: -1 is out of range 0-1000"},
        {"[exclusions]\npinned_alerts = x\n",
         "t.conf:7: [exclusions] pinned_alerts: 'x' is not an integer"},
        {"[exclusions]\nsize = 15\n", "t.conf:7: [exclusions] size: 15 is out of range 16-"},
        {"[profile.p]\nclient_auth = allow\n",
         "t.conf:7: [profile.p] client_auth: 'allow' is not bypass or block"},
        {"[policy]\nunproven = bypass\n",
         "t.conf:7: [policy] unproven: 'bypass' is not inspect or block"},
        {"[policy]\nproof_ttl_s = 0\n",
         "t.conf:7: [policy] proof_ttl_s: 0 is out of range 1-86400"},
        {"[policy]\nnon_tls = maybe\n",
         "t.conf:7: [policy] non_tls: 'maybe' is not tunnel or block"},
        {"[policy]\nfirst_byte_ms = 60001\n",
         "t.conf:7: [policy] first_byte_ms: 60001 is out of range 0-60000"},
        {"[profile.p]\nmin_version = tls1.1\n",
         "t.conf:7: [profile.p] min_version: 'tls1.1' is not tls1.2 or tls1.3"},
        {"[profile.p]\nmax_version = TLSv1.3\n",
         "t.conf:7: [profile.p] max_version: 'TLSv1.3' is not tls1.2 or tls1.3"},
        {"[profile.p]\nmin_version = tls1.3\nmax_version = tls1.2\n",
         "t.conf:8: [profile.p] min_version: tls1.3 is above max_version tls1.2"},
        {"[profile.p]\nunsupported = allow\n",
         "t.conf:7: [profile.p] unsupported: 'allow' is not bypass or block"},
        {"[profile.p]\nocsp = on\n",
         "t.conf:7: [profile.p] ocsp: 'on' is not off, stapled or fetch"},
        {"[profile.p]\nocsp_timeout_ms = 5\n",
         "t.conf:7: [profile.p] ocsp_timeout_ms: 5 is out of range 10-10000"},
        {"[profile.p]\nrevoked = allow\n",
         "t.conf:7: [profile.p] revoked: 'allow' is not untrust or block"},
        {"[profile.p]\nunknown_status = ignore\n",
         "t.conf:7: [profile.p] unknown_status: 'ignore' is not allow, untrust or block"},
        {"[profile.p]\nstatus_timeout = wait\n",
         "t.conf:7: [profile.p] status_timeout: 'wait' is not allow, untrust or block"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ck_assert_msg(load(cases[i].text) == PX_E_CONFIG, "case %zu accepted", i);
        ck_assert_msg(strncmp(g_err, cases[i].want, strlen(cases[i].want)) == 0,
                      "case %zu: got '%s', want '%s...'", i, g_err, cases[i].want);
    }
    /* 256 rules fit, 257 do not */
    static char big[300 * 48];
    size_t n = 0;
    for (int i = 0; i <= PX_RULES_MAX; i++) {
        n += (size_t)snprintf(big + n, sizeof(big) - n,
                              "[rule.r%d]\nhosts = h%d\naction = bypass\n", i, i);
        if (i == PX_RULES_MAX - 1) {
            ck_assert_msg(load(big) == 0, "%s", g_err);
            ck_assert_int_eq(g_cfg.n_rules, PX_RULES_MAX);
        }
    }
    ck_assert_int_eq(load(big), PX_E_CONFIG);
    ck_assert_msg(strstr(g_err, "[rule.r256] -: at most 256 rules") != NULL, "%s", g_err);
}
END_TEST

START_TEST(test_exclusions)
{
    ck_assert(load("[exclusions]\nttl_s = 60\npinned_alerts = 2\nsize = 100\n"
                   "[profile.default]\nclient_auth = block\n") == 0);
    ck_assert_int_eq(g_cfg.excl_ttl_s, 60);
    ck_assert_int_eq(g_cfg.excl_pinned_alerts, 2);
    ck_assert(g_cfg.profiles[g_cfg.default_profile].client_auth_block);
    struct dp_excl *x = dp_excl_new(100);
    ck_assert(x != NULL);
    ck_assert_int_eq(dp_excl_lookup(x, "a.example", 443), DP_EXCL_NONE);
    dp_excl_add(x, "a.example", 443, DP_EXCL_CLIENT_AUTH, 60);
    ck_assert_int_eq(dp_excl_lookup(x, "a.example", 443), DP_EXCL_CLIENT_AUTH);
    ck_assert_int_eq(dp_excl_lookup(x, "a.example", 8443), DP_EXCL_NONE); /* port is key */
    /* pinned: the second event excludes (threshold 2) */
    ck_assert(!dp_excl_pinned_event(x, "p.example", 443, 2, 60));
    ck_assert_int_eq(dp_excl_lookup(x, "p.example", 443), DP_EXCL_NONE);
    ck_assert(dp_excl_pinned_event(x, "p.example", 443, 2, 60));
    ck_assert_int_eq(dp_excl_lookup(x, "p.example", 443), DP_EXCL_PINNED);
    struct dp_excl_info info[200];
    ck_assert_int_eq(dp_excl_list(x, info, 200), 2);
    ck_assert_str_eq(info[0].host, "p.example"); /* most recently used first */
    ck_assert_int_eq(info[0].hits, 1);
    /* bounded: 101 hosts into 100 entries drops the least recently used (a.example is
     * looked up on the way, so it stays) */
    for (int i = 0; i < 101; i++) {
        char h[32];
        snprintf(h, sizeof(h), "h%d.example", i);
        dp_excl_add(x, h, 443, DP_EXCL_CLIENT_AUTH, 60);
        ck_assert_int_eq(dp_excl_lookup(x, "a.example", 443), DP_EXCL_CLIENT_AUTH);
    }
    ck_assert_int_eq(dp_excl_list(x, info, 200), 100);
    ck_assert_int_eq(dp_excl_lookup(x, "h0.example", 443), DP_EXCL_NONE);
    ck_assert_int_eq(dp_excl_lookup(x, "h100.example", 443), DP_EXCL_CLIENT_AUTH);
    uint64_t n, added[DP_EXCL_REASONS];
    dp_excl_stats(x, &n, added);
    ck_assert_int_eq(n, 100);
    ck_assert_int_eq(added[DP_EXCL_CLIENT_AUTH], 102);
    ck_assert_int_eq(added[DP_EXCL_PINNED], 1);
    ck_assert_int_eq(dp_excl_clear(x, "h100.example"), 1);
    ck_assert_int_eq(dp_excl_clear(x, "nope.example"), 0);
    ck_assert_int_eq(dp_excl_clear(x, NULL), 99);
    ck_assert_int_eq(dp_excl_list(x, info, 200), 0);
    /* expiry: a 1 s entry is gone after 1 s */
    dp_excl_add(x, "short.example", 443, DP_EXCL_CLIENT_AUTH, 1);
    ck_assert_int_eq(dp_excl_lookup(x, "short.example", 443), DP_EXCL_CLIENT_AUTH);
    struct timespec ts = {1, 100000000};
    nanosleep(&ts, NULL);
    ck_assert_int_eq(dp_excl_lookup(x, "short.example", 443), DP_EXCL_NONE);
    dp_excl_free(x);
}
END_TEST

/* export = no on a rule: its connections are kept out of the export (dp_export_begin) */
START_TEST(test_rule_export)
{
    ck_assert_msg(load("[rule.bank]\nhosts = .bank.example\naction = inspect\nexport = no\n"
                       "[rule.corp]\nhosts = corp.example\naction = inspect\nexport = yes\n"
                       "[rule.lab]\nhosts = lab.example\naction = inspect\n") == 0,
                  "%s", g_err);
    struct sockaddr_storage d = sa("192.0.2.1", 443);
    struct dp_decision r = dp_policy_decide(&g_cfg, "www.bank.example", (struct sockaddr *)&d, NULL);
    ck_assert_str_eq(r.rule, "bank");
    ck_assert(r.no_export);
    r = dp_policy_decide(&g_cfg, "corp.example", (struct sockaddr *)&d, NULL);
    ck_assert(!r.no_export);
    r = dp_policy_decide(&g_cfg, "lab.example", (struct sockaddr *)&d, NULL); /* default: yes */
    ck_assert(!r.no_export);
    r = dp_policy_decide(&g_cfg, "other.example", (struct sockaddr *)&d, NULL);
    ck_assert_int_eq(r.index, DP_RULE_DEFAULT);
    ck_assert(!r.no_export);
    ck_assert_int_eq(load("[rule.a]\nhosts = a.example\naction = inspect\nexport = never\n"),
                     PX_E_CONFIG);
    ck_assert_msg(strstr(g_err, "t.conf:9: [rule.a] export: 'never' is not yes or no") != NULL,
                  "%s", g_err);
}
END_TEST

Suite *policy_suite(void)
{
    Suite *s = suite_create("policy");
    TCase *tc = tcase_create("policy");
    tcase_add_test(tc, test_cidr_parse);
    tcase_add_test(tc, test_cidr_negative);
    tcase_add_test(tc, test_cidr_match);
    tcase_add_test(tc, test_hosts);
    tcase_add_test(tc, test_hosts_negative);
    tcase_add_test(tc, test_rules_order_and_keys);
    tcase_add_test(tc, test_default_and_profiles);
    tcase_add_test(tc, test_config_errors);
    tcase_add_test(tc, test_profile_versions_ocsp);
    tcase_add_test(tc, test_ocsp_http);
    tcase_add_test(tc, test_exclusions);
    tcase_add_test(tc, test_rule_export);
    suite_add_tcase(s, tc);
    return s;
}
