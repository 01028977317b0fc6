/* SPDX-License-Identifier: MIT */
/*
 * test_cfg.c - unit tests for the INI configuration parser (px_cfg.c).
 * Owns one static struct px_cfg and error buffer, reused by every test (tests run one at a
 * time, each in its own forked child unless CK_FORK=no).
 * Invariants checked: accepted values land in the right fields, absent keys keep their
 * px_cfg_defaults value, every rejection is one line "NAME:LINE: [section] key: reason".
 * Not here: what the values mean at run time, and the secret (PIN) file reader (test_secret.c).
 */
#include "px.h"

#include <check.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

Suite *cfg_suite(void);

static struct px_cfg g_cfg;
static char g_err[512];

/* The four keys every [hsm] member needs; five lines, so a section appended after it starts
 * at line 6 and its first key is line 7. */
#define HSM_REQ                                                                                    \
    "[hsm]\n"                                                                                      \
    "module = /usr/lib/softhsm/libsofthsm2.so\n"                                                   \
    "token = tlsmint\n"                                                                            \
    "pin_file = var/hsm/pin\n"                                                                     \
    "key_label = forward-trust\n"

/* The example from DESIGN.md, verbatim. */
static const char design_example[] =
    "[listen]\n"
    "explicit    = 127.0.0.1:3128     ; HTTP CONNECT proxy; empty = off\n"
    "transparent = 127.0.0.1:8443     ; REDIRECT/TPROXY target; empty = off\n"
    "threads     = 0                  ; 0 = one loop per core\n"
    "\n"
    "[hsm]\n"
    "module          = /usr/lib/softhsm/libsofthsm2.so\n"
    "token           = tlsmint\n"
    "pin_file        = var/hsm/pin\n"
    "key_label       = forward-trust\n"
    "workers         = 2\n"
    "batch           = 16\n"
    "sign_timeout_ms = 250\n"
    "fail_mode       = closed         ; closed | open\n"
    "recovery_retries = 0             ; 0-500, 0 = keep retrying\n"
    "\n"
    "[upstream]\n"
    "ca_file = /etc/ssl/certs/ca-certificates.crt\n"
    "verify  = yes\n"
    "mark    = 0                      ; SO_MARK on upstream sockets (transparent loops)\n"
    "\n"
    "[admin]\n"
    "socket  = var/run/tlsmint.sock\n"
    "metrics = 127.0.0.1:9120\n";

/* Every section and key, none at its default, with comments and an HA member. */
static const char full_cfg[] =
    "; tlsmint test configuration\n"
    "# hash comments too\n"
    "[listen]\n"
    "explicit    = 10.0.0.1:3129      ; HTTP CONNECT proxy\n"
    "transparent = [::1]:8444         ; REDIRECT/TPROXY target\n"
    "threads     = 4                  ; four loops\n"
    "\n"
    "[hsm]\n"
    "module          = /usr/lib/softhsm/libsofthsm2.so ; primary\n"
    "token           = tlsmint\n"
    "pin_file        = var/hsm/pin\n"
    "key_label       = forward-trust\n"
    "workers         = 3\n"
    "batch           = 32\n"
    "sign_timeout_ms = 500\n"
    "hang_timeout_ms = 3000\n"
    "queue_size      = 1024\n"
    "fail_mode       = open           ; closed | open\n"
    "recovery_retries = 7             ; 0-500, 0 = keep retrying\n"
    "rsa_pss         = yes\n"
    "env             = SOFTHSM2_CONF=/etc/softhsm2.conf\n"
    "env             = P11_KIT_SERVER_ADDRESS=unix:path=/run/p11-kit/hsm.sock ; remote\n"
    "\n"
    "[hsm.backup]\n"
    "module    = /usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so ; network HSM\n"
    "token     = backup-token\n"
    "pin_file  = var/hsm/backup-pin\n"
    "key_label = forward-trust-2\n"
    "env       = P11_KIT_SERVER_ADDRESS=unix:path=/run/backup.sock\n"
    "\n"
    "[ca]\n"
    "forward_trust_cert   = var/ca/forward-trust.pem\n"
    "forward_trust_chain  = var/ca/chain.pem\n"
    "forward_untrust_cert = var/ca/untrust.pem\n"
    "forward_untrust_key  = var/ca/untrust.key\n"
    "leaf_max_days        = 14\n"
    "\n"
    "[cache]\n"
    "size  = 5000\n"
    "ttl_s = 3600\n"
    "\n"
    "[upstream]\n"
    "ca_file = /etc/pki/bundle.pem\n"
    "verify  = no\n"
    "mark    = 0x2a                   ; SO_MARK\n"
    "resolve_timeout_ms = 1500\n"
    "dns_cache_max_ttl_s = 60\n"
    "dns_negative_ttl_s = 2\n"
    "connect_timeout_ms = 3000\n"
    "\n"
    "[policy]\n"
    "bypass = *.bank.example, pay.example\n"
    "\n"
    "[log]\n"
    "level  = debug\n"
    "access = var/log/access.jsonl\n"
    "\n"
    "[admin]\n"
    "socket  = var/run/admin.sock\n"
    "metrics = 0.0.0.0:9121\n";

static int load(const char *text)
{
    memset(g_err, 0, sizeof(g_err));
    return px_cfg_load_string("t.conf", text, &g_cfg, g_err, sizeof(g_err));
}

/* Loads text, which must fail with a message starting with prefix (file, line, section and
 * key) and whose remainder contains reason. */
static void expect_err(const char *text, const char *prefix, const char *reason)
{
    int r = load(text);
    ck_assert_msg(r == PX_E_CONFIG, "expected PX_E_CONFIG, got %d for:\n%s", r, text);
    ck_assert_msg(strncmp(g_err, prefix, strlen(prefix)) == 0,
                  "error '%s' does not start with '%s'", g_err, prefix);
    ck_assert_msg(strstr(g_err + strlen(prefix), reason) != NULL, "error '%s' does not say '%s'",
                  g_err, reason);
    ck_assert_msg(strchr(g_err, '\n') == NULL, "error '%s' is more than one line", g_err);
}

static void expect_ok(const char *text)
{
    int r = load(text);
    ck_assert_msg(r == 0, "expected success, got %d '%s' for:\n%s", r, g_err, text);
}

/* [inbound.NAME]: the example, defaults, required keys, bad values with their line. */
#define INB "[inbound.web]\nlisten = 127.0.0.1:8444\ncert = web.pem\nkey_label = inbound-web\n" \
            "backend = 10.0.0.5:8080\n"
START_TEST(test_cfg_inbound)
{
    expect_ok(HSM_REQ "[inbound]\nticket_rotate_s = 60\n"
                      "[inbound.web]\n"
                      "listen      = 0.0.0.0:443          ; any number of [inbound.NAME] sections\n"
                      "cert        = /etc/tlsmint/web.pem\n"
                      "chain       = /etc/tlsmint/web-chain.pem\n"
                      "key_label   = inbound-web\n"
                      "backend     = 10.0.0.5:8080\n"
                      "backend_tls = no\n"
                      "backend_ca  =\n"
                      "backend_sni =\n"
                      "alpn        = h2,http/1.1\n"
                      "[inbound.api]\nlisten = [::1]:8443\ncert = a.pem\nkey_id = 0a0b\n"
                      "backend = [2001:db8::5]:443\nbackend_tls = yes\nbackend_ca = ca.pem\n"
                      "backend_sni = api.internal\n");
    ck_assert_int_eq(g_cfg.n_inbound, 2);
    ck_assert_int_eq(g_cfg.inbound_ticket_rotate_s, 60);
    const struct px_inbound_cfg *w = &g_cfg.inbound[0], *a = &g_cfg.inbound[1];
    ck_assert_str_eq(w->name, "web");
    ck_assert_int_eq(w->line, 8);
    ck_assert_str_eq(w->listen, "0.0.0.0:443");
    ck_assert_str_eq(w->chain, "/etc/tlsmint/web-chain.pem");
    ck_assert_str_eq(w->key_label, "inbound-web");
    ck_assert_str_eq(w->backend, "10.0.0.5:8080");
    ck_assert(!w->backend_tls);
    ck_assert_int_eq(w->alpn_wire_len, 12);
    ck_assert_mem_eq(w->alpn_wire, "\x02h2\x08http/1.1", 12);
    ck_assert_str_eq(a->name, "api");
    ck_assert_str_eq(a->key_id, "0a0b");
    ck_assert(a->backend_tls);
    ck_assert_str_eq(a->backend_sni, "api.internal");
    /* defaults */
    expect_ok(HSM_REQ INB);
    ck_assert_int_eq(g_cfg.inbound_ticket_rotate_s, 3600);
    ck_assert_str_eq(g_cfg.inbound[0].alpn, "http/1.1");
    ck_assert_int_eq(g_cfg.inbound[0].alpn_wire_len, 9);
    /* required keys: the error names the section header's line */
    expect_err(HSM_REQ "[inbound.web]\ncert = c\nkey_label = k\nbackend = 10.0.0.1:1\n",
               "t.conf:6: [inbound.web] listen: ", "missing");
    expect_err(HSM_REQ "[inbound.web]\nlisten = 127.0.0.1:1\nkey_label = k\nbackend = 10.0.0.1:1\n",
               "t.conf:6: [inbound.web] cert: ", "missing");
    expect_err(HSM_REQ "[inbound.web]\nlisten = 127.0.0.1:1\ncert = c\nbackend = 10.0.0.1:1\n",
               "t.conf:6: [inbound.web] key_label: ", "missing");
    expect_err(HSM_REQ "[inbound.web]\nlisten = 127.0.0.1:1\ncert = c\nkey_label = k\n",
               "t.conf:6: [inbound.web] backend: ", "missing");
    /* bad values: their own line */
    expect_err(HSM_REQ INB "backend = web.internal:80\n", "t.conf:11: [inbound.web] backend: ",
               "is not IP:PORT");
    expect_err(HSM_REQ INB "backend = 10.0.0.5\n", "t.conf:11: [inbound.web] backend: ",
               "is not IP:PORT");
    expect_err(HSM_REQ INB "backend = ::1:80\n", "t.conf:11: [inbound.web] backend: ",
               "is not IP:PORT");
    expect_err(HSM_REQ INB "listen = nowhere\n", "t.conf:11: [inbound.web] listen: ",
               "is not HOST:PORT");
    expect_err(HSM_REQ INB "listen =\n", "t.conf:11: [inbound.web] listen: ", "empty");
    expect_err(HSM_REQ INB "backend_tls = maybe\n", "t.conf:11: [inbound.web] backend_tls: ",
               "is not yes or no");
    expect_err(HSM_REQ INB "alpn = ,\n", "t.conf:11: [inbound.web] alpn: ", "empty");
    expect_err(HSM_REQ INB "alpn = h2,http/\x01\n", "t.conf:11: [inbound.web] alpn: ",
               "is not a protocol name");
    expect_err(HSM_REQ INB "key_id = 0g\n", "t.conf:11: [inbound.web] key_id: ", "not hex");
    expect_err(HSM_REQ INB "colour = red\n", "t.conf:11: [inbound.web] colour: ", "unknown key");
    expect_err(HSM_REQ INB "backend_ca = ca.pem\n", "t.conf:6: [inbound.web] backend_ca: ",
               "backend_tls = no");
    expect_err(HSM_REQ "[inbound]\nticket_rotate_s = 0\n", "t.conf:7: [inbound] ticket_rotate_s: ",
               "out of range");
    expect_err(HSM_REQ "[inbound.w b]\n", "t.conf:6: [inbound.w b] -: ", "name must be");
    /* one address per listener */
    expect_err(HSM_REQ INB "[inbound.two]\nlisten = 127.0.0.1:8444\ncert = c\nkey_label = k\n"
                           "backend = 10.0.0.1:1\n",
               "t.conf:11: [inbound.two] listen: ", "also [inbound.web] listen");
    expect_err(HSM_REQ "[listen]\nexplicit = 127.0.0.1:8444\n" INB,
               "t.conf:8: [inbound.web] listen: ", "also [listen] explicit");
}
END_TEST

/* export on a rule: only inspected traffic is ever exported, so on a bypass or block rule the
 * key would have no effect, and is refused (on its own line, whatever the order of the keys). */
START_TEST(test_cfg_rule_export)
{
    expect_ok(HSM_REQ "[rule.bank]\nhosts = .bank.example\naction = inspect\nexport = no\n"
                      "[rule.lab]\nexport = yes\nhosts = lab.example\naction = inspect\n"
                      "[rule.pay]\nhosts = pay.example\naction = bypass\n");
    ck_assert_int_eq(g_cfg.n_rules, 3);
    ck_assert(g_cfg.rules[0].no_export);
    ck_assert(!g_cfg.rules[1].no_export);
    ck_assert(!g_cfg.rules[2].no_export);
    expect_err(HSM_REQ "[rule.pay]\nhosts = pay.example\naction = bypass\nexport = no\n",
               "t.conf:9: [rule.pay] export: ",
               "has no effect: the rule's action is bypass; bypassed traffic is never exported");
    expect_err(HSM_REQ "[rule.pay]\nhosts = pay.example\nexport = no\naction = bypass\n",
               "t.conf:8: [rule.pay] export: ", "the rule's action is bypass");
    expect_err(HSM_REQ "[rule.ads]\nhosts = ads.example\naction = block\nexport = no\n",
               "t.conf:9: [rule.ads] export: ",
               "has no effect: the rule's action is block; blocked traffic is never exported");
    expect_err(HSM_REQ "[rule.pay]\nhosts = pay.example\naction = bypass\nexport = yes\n",
               "t.conf:9: [rule.pay] export: ", "has no effect");
    /* the first of two rules that say it wins; a bad value is still a bad value */
    expect_err(HSM_REQ "[rule.a]\nhosts = a.example\naction = block\nexport = no\n"
                       "[rule.b]\nhosts = b.example\naction = bypass\nexport = no\n",
               "t.conf:9: [rule.a] export: ", "action is block");
    expect_err(HSM_REQ "[rule.pay]\nhosts = pay.example\naction = bypass\nexport = never\n",
               "t.conf:9: [rule.pay] export: ", "is not yes or no");
}
END_TEST

START_TEST(test_cfg_design_example)
{
    expect_ok(design_example);
    ck_assert_str_eq(g_cfg.path, "t.conf");
    ck_assert_str_eq(g_cfg.listen_explicit, "127.0.0.1:3128");
    ck_assert_str_eq(g_cfg.listen_transparent, "127.0.0.1:8443");
    ck_assert_int_eq(g_cfg.threads, 0);
    ck_assert_int_eq(g_cfg.n_members, 1);
    ck_assert_str_eq(g_cfg.members[0].name, "hsm");
    ck_assert_str_eq(g_cfg.members[0].module, "/usr/lib/softhsm/libsofthsm2.so");
    ck_assert_str_eq(g_cfg.members[0].token, "tlsmint");
    ck_assert_str_eq(g_cfg.members[0].pin_file, "var/hsm/pin");
    ck_assert_str_eq(g_cfg.members[0].key_label, "forward-trust");
    ck_assert_int_eq(g_cfg.members[0].n_env, 0);
    ck_assert_int_eq(g_cfg.hsm_workers, 2);
    ck_assert_int_eq(g_cfg.hsm_workers_min, 2);
    ck_assert_int_eq(g_cfg.hsm_workers_max, 64);
    ck_assert_int_eq(g_cfg.hsm_batch, 16);
    ck_assert_int_eq(g_cfg.hsm_sign_timeout_ms, 250);
    ck_assert_int_eq(g_cfg.fail_mode, PX_FAIL_CLOSED);
    ck_assert_int_eq(g_cfg.recovery_retries, 0);
    ck_assert_str_eq(g_cfg.upstream_ca_file, "/etc/ssl/certs/ca-certificates.crt");
    ck_assert(g_cfg.upstream_verify);
    ck_assert_uint_eq(g_cfg.upstream_mark, 0);
    ck_assert_str_eq(g_cfg.admin_socket, "var/run/tlsmint.sock");
    ck_assert_str_eq(g_cfg.admin_metrics, "127.0.0.1:9120");
}
END_TEST

START_TEST(test_cfg_full)
{
    expect_ok(full_cfg);
    ck_assert_str_eq(g_cfg.listen_explicit, "10.0.0.1:3129");
    ck_assert_str_eq(g_cfg.listen_transparent, "[::1]:8444");
    ck_assert_int_eq(g_cfg.threads, 4);

    ck_assert_int_eq(g_cfg.n_members, 2);
    const struct px_hsm_member_cfg *p = &g_cfg.members[0];
    ck_assert_str_eq(p->name, "hsm");
    ck_assert_str_eq(p->module, "/usr/lib/softhsm/libsofthsm2.so");
    ck_assert_str_eq(p->token, "tlsmint");
    ck_assert_str_eq(p->token_serial, "");
    ck_assert_str_eq(p->pin_file, "var/hsm/pin");
    ck_assert_str_eq(p->key_label, "forward-trust");
    ck_assert_str_eq(p->key_id, "");
    ck_assert_int_eq(p->n_env, 2);
    ck_assert_str_eq(p->env[0], "SOFTHSM2_CONF=/etc/softhsm2.conf");
    ck_assert_str_eq(p->env[1], "P11_KIT_SERVER_ADDRESS=unix:path=/run/p11-kit/hsm.sock");

    const struct px_hsm_member_cfg *b = &g_cfg.members[1];
    ck_assert_str_eq(b->name, "backup");
    ck_assert_str_eq(b->module, "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so");
    ck_assert_str_eq(b->token, "backup-token");
    ck_assert_str_eq(b->pin_file, "var/hsm/backup-pin");
    ck_assert_str_eq(b->key_label, "forward-trust-2");
    ck_assert_int_eq(b->n_env, 1);
    ck_assert_str_eq(b->env[0], "P11_KIT_SERVER_ADDRESS=unix:path=/run/backup.sock");

    ck_assert_int_eq(g_cfg.hsm_workers, 3);
    ck_assert_int_eq(g_cfg.hsm_batch, 32);
    ck_assert_int_eq(g_cfg.hsm_sign_timeout_ms, 500);
    ck_assert_int_eq(g_cfg.hsm_hang_timeout_ms, 3000);
    ck_assert_int_eq(g_cfg.hsm_queue_size, 1024);
    ck_assert_int_eq(g_cfg.fail_mode, PX_FAIL_OPEN);
    ck_assert_int_eq(g_cfg.recovery_retries, 7);
    ck_assert(g_cfg.rsa_pss);

    ck_assert_str_eq(g_cfg.ca_forward_trust_cert, "var/ca/forward-trust.pem");
    ck_assert_str_eq(g_cfg.ca_forward_trust_chain, "var/ca/chain.pem");
    ck_assert_str_eq(g_cfg.ca_forward_untrust_cert, "var/ca/untrust.pem");
    ck_assert_str_eq(g_cfg.ca_forward_untrust_key, "var/ca/untrust.key");
    ck_assert_int_eq(g_cfg.ca_leaf_max_days, 14);
    ck_assert_int_eq(g_cfg.cache_size, 5000);
    ck_assert_int_eq(g_cfg.cache_ttl_s, 3600);
    ck_assert_str_eq(g_cfg.upstream_ca_file, "/etc/pki/bundle.pem");
    ck_assert(!g_cfg.upstream_verify);
    ck_assert_uint_eq(g_cfg.upstream_mark, 42);
    ck_assert_int_eq(g_cfg.resolve_timeout_ms, 1500);
    ck_assert_int_eq(g_cfg.dns_cache_max_ttl_s, 60);
    ck_assert_int_eq(g_cfg.dns_negative_ttl_s, 2);
    ck_assert_int_eq(g_cfg.connect_timeout_ms, 3000);
    ck_assert_str_eq(g_cfg.policy_bypass, "*.bank.example, pay.example");
    ck_assert_int_eq(g_cfg.log_level, PX_LOG_DEBUG);
    ck_assert_str_eq(g_cfg.log_access, "var/log/access.jsonl");
    ck_assert_str_eq(g_cfg.admin_socket, "var/run/admin.sock");
    ck_assert_str_eq(g_cfg.admin_metrics, "0.0.0.0:9121");
}
END_TEST

/* Absent keys keep both the value px_cfg_defaults gives and the documented one. */
START_TEST(test_cfg_defaults)
{
    struct px_cfg *d = malloc(sizeof(*d));
    ck_assert_ptr_nonnull(d);
    memset(d, 0x5a, sizeof(*d));
    px_cfg_defaults(d);
    ck_assert_int_eq(d->n_members, 0);
    ck_assert_str_eq(d->listen_explicit, "127.0.0.1:3128");
    ck_assert_str_eq(d->listen_transparent, "127.0.0.1:8443");
    ck_assert_int_eq(d->threads, 0);
    ck_assert_int_eq(d->listen_max_connections, 0);
    ck_assert_int_eq(d->hsm_workers, PX_HSM_WORKERS_AUTO);
    ck_assert_int_eq(d->hsm_workers_min, 2);
    ck_assert_int_eq(d->hsm_workers_max, 64);
    ck_assert_int_eq(d->hsm_batch, 16);
    ck_assert_int_eq(d->hsm_sign_timeout_ms, 250);
    ck_assert_int_eq(d->fail_mode, PX_FAIL_CLOSED);
    ck_assert_int_eq(d->recovery_retries, 0);
    ck_assert_str_eq(d->upstream_ca_file, "/etc/ssl/certs/ca-certificates.crt");
    ck_assert(d->upstream_verify);
    ck_assert_uint_eq(d->upstream_mark, 0);
    ck_assert_int_eq(d->resolve_timeout_ms, 2000);
    ck_assert_int_eq(d->upstream_session_cache, 1024);
    ck_assert_int_eq(d->dns_cache_max_ttl_s, 300);
    ck_assert_int_eq(d->dns_negative_ttl_s, 5);
    ck_assert_int_eq(d->connect_timeout_ms, 5000);
    ck_assert_int_eq(d->log_level, PX_LOG_INFO);
    ck_assert_str_eq(d->admin_socket, "var/run/tlsmint.sock");
    ck_assert_str_eq(d->admin_metrics, "127.0.0.1:9120");
    ck_assert_str_eq(d->policy_bypass, "");
    ck_assert_str_eq(d->log_access, "");

    /* a previous load must not leak into the next one */
    expect_ok(full_cfg);
    expect_ok(HSM_REQ);
    ck_assert_int_eq(g_cfg.n_members, 1);
    ck_assert_int_eq(g_cfg.members[0].n_env, 0);
    ck_assert_str_eq(g_cfg.listen_explicit, d->listen_explicit);
    ck_assert_str_eq(g_cfg.listen_transparent, d->listen_transparent);
    ck_assert_int_eq(g_cfg.threads, d->threads);
    ck_assert_int_eq(g_cfg.hsm_workers, d->hsm_workers);
    ck_assert_int_eq(g_cfg.hsm_workers_min, d->hsm_workers_min);
    ck_assert_int_eq(g_cfg.hsm_workers_max, d->hsm_workers_max);
    ck_assert_int_eq(g_cfg.hsm_batch, d->hsm_batch);
    ck_assert_int_eq(g_cfg.hsm_sign_timeout_ms, d->hsm_sign_timeout_ms);
    ck_assert_int_eq(g_cfg.hsm_hang_timeout_ms, d->hsm_hang_timeout_ms);
    ck_assert_int_eq(g_cfg.hsm_queue_size, d->hsm_queue_size);
    ck_assert_int_eq(g_cfg.fail_mode, d->fail_mode);
    ck_assert_int_eq(g_cfg.recovery_retries, d->recovery_retries);
    ck_assert(g_cfg.rsa_pss == d->rsa_pss);
    ck_assert_str_eq(g_cfg.ca_forward_trust_cert, d->ca_forward_trust_cert);
    ck_assert_int_eq(g_cfg.ca_leaf_max_days, d->ca_leaf_max_days);
    ck_assert_int_eq(g_cfg.ca_reminder_days, 30);
    ck_assert_int_eq(g_cfg.cache_size, d->cache_size);
    ck_assert_int_eq(g_cfg.cache_ttl_s, d->cache_ttl_s);
    ck_assert_str_eq(g_cfg.upstream_ca_file, d->upstream_ca_file);
    ck_assert(g_cfg.upstream_verify == d->upstream_verify);
    ck_assert_uint_eq(g_cfg.upstream_mark, d->upstream_mark);
    ck_assert_int_eq(g_cfg.resolve_timeout_ms, d->resolve_timeout_ms);
    ck_assert_int_eq(g_cfg.dns_cache_max_ttl_s, d->dns_cache_max_ttl_s);
    ck_assert_int_eq(g_cfg.dns_negative_ttl_s, d->dns_negative_ttl_s);
    ck_assert_int_eq(g_cfg.connect_timeout_ms, d->connect_timeout_ms);
    ck_assert_str_eq(g_cfg.policy_bypass, d->policy_bypass);
    ck_assert_int_eq(g_cfg.log_level, d->log_level);
    ck_assert_str_eq(g_cfg.log_access, d->log_access);
    ck_assert_str_eq(g_cfg.admin_socket, d->admin_socket);
    ck_assert_str_eq(g_cfg.admin_metrics, d->admin_metrics);
    free(d);
}
END_TEST

START_TEST(test_cfg_unknown_section)
{
    expect_err("[listen]\n"
               "threads = 1\n"
               "\n"
               "[bogus]\n"
               "foo = 1\n",
               "t.conf:4: [bogus] -: ", "unknown section");
    /* an unknown section without keys is an error too, at its header */
    expect_err("[listen]\n"
               "[bogus]\n",
               "t.conf:2: [bogus] -: ", "unknown section");
    /* an over-long line is an error, not two lines */
    char longline[5000];
    snprintf(longline, sizeof(longline), "[listen]\n; %04500d\nthreads = 1\n", 0);
    expect_err(longline, "t.conf:2: [-] -: ", "line longer than");
    /* a key before any section header */
    expect_err("; top\n"
               "threads = 1\n",
               "t.conf:2: [-] threads: ", "unknown section");
}
END_TEST

START_TEST(test_cfg_error_order_and_places)
{
    /* the first error by line wins, syntax or value */
    expect_err("garbage\n[listen]\nthreads = x\n", "t.conf:1: syntax error", "expected");
    expect_err("[listen]\nthreads = x\ngarbage\n", "t.conf:2: [listen] threads: ",
               "not an integer");
    /* HA members are named by their full section, at their header's line */
    expect_err(HSM_REQ "\n[hsm.backup]\n\nmodule = /x.so\ntoken = t\npin_file = /p\n",
               "t.conf:7: [hsm.backup] key_label: ", "missing");
    /* [hsm] itself: missing keys are reported at its header line */
    expect_err("[listen]\n\n[hsm]\n\nmodule = /x.so\n", "t.conf:3: [hsm] token: ", "missing");
    /* members without the primary [hsm] */
    expect_err("[hsm.backup]\nmodule = /x.so\ntoken = t\npin_file = /p\nkey_label = k\n",
               "t.conf:1: [hsm] -: ", "need the primary [hsm] section");
    /* indented lines are keys of their own, not continuations of the previous value */
    ck_assert_int_eq(load(HSM_REQ "[listen]\nexplicit = 127.0.0.1:1\n  threads = 3\n"), 0);
    ck_assert_str_eq(g_cfg.listen_explicit, "127.0.0.1:1");
    ck_assert_int_eq(g_cfg.threads, 3);
    /* inih reads at most 199 characters a line: longer ones are refused, never split */
    char text[1024], path[251];
    memset(path, 'p', 250);
    path[0] = '/';
    path[250] = '\0';
    snprintf(text, sizeof(text), HSM_REQ "[upstream]\nca_file = %s\n", path);
    expect_err(text, "t.conf:7: [-] -: ", "line longer than 197 characters");
    path[180] = '\0';
    snprintf(text, sizeof(text), HSM_REQ "[upstream]\nca_file = %s\n", path);
    ck_assert_int_eq(load(text), 0);
    ck_assert_str_eq(g_cfg.upstream_ca_file, path);
}
END_TEST

START_TEST(test_cfg_unknown_key)
{
    expect_err("[listen]\n"
               "threads = 1\n"
               "thread = 2\n",
               "t.conf:3: [listen] thread: ", "unknown key");
    /* shared [hsm] settings are not member keys */
    expect_err(HSM_REQ "[hsm.backup]\n"
                       "workers = 2\n",
               "t.conf:7: [hsm.backup] workers: ", "unknown key");
    expect_err(HSM_REQ "[admin]\n"
                       "socket = a\n"
                       "Socket = b\n",
               "t.conf:8: [admin] Socket: ", "unknown key");
}
END_TEST

/* workers = auto (the default) or a fixed count; auto's bounds must be in order. */
START_TEST(test_cfg_workers_auto)
{
    expect_ok(HSM_REQ "workers = 8\nworkers = auto\nworkers_min = 4\nworkers_max = 32\n");
    ck_assert_int_eq(g_cfg.hsm_workers, PX_HSM_WORKERS_AUTO);
    ck_assert_int_eq(g_cfg.hsm_workers_min, 4);
    ck_assert_int_eq(g_cfg.hsm_workers_max, 32);
    expect_ok(HSM_REQ "workers = 8\n");
    ck_assert_int_eq(g_cfg.hsm_workers, 8);
    expect_err(HSM_REQ "workers = Auto\n", "t.conf:6: [hsm] workers: ", "'Auto' is not an integer");
    expect_err(HSM_REQ "workers_min = 10\nworkers_max = 4\n", "t.conf:7: [hsm] workers_min: ",
               "10 is above workers_max 4");
    expect_err(HSM_REQ "workers_max = 1\n", "t.conf:6: [hsm] workers_min: ",
               "2 is above workers_max 1");
}
END_TEST

START_TEST(test_cfg_bad_integer)
{
    expect_err(HSM_REQ "workers = two\n", "t.conf:6: [hsm] workers: ", "'two' is not an integer");
    expect_err(HSM_REQ "batch = 12abc\n", "t.conf:6: [hsm] batch: ", "'12abc' is not an integer");
    expect_err("[listen]\nthreads =\n", "t.conf:2: [listen] threads: ", "is not an integer");
    expect_err("[cache]\nsize = 1.5\n", "t.conf:2: [cache] size: ", "is not an integer");
    /* overflows long: must not wrap into range */
    expect_err("[cache]\nttl_s = 99999999999999999999999\n",
               "t.conf:2: [cache] ttl_s: ", "is not an integer");
}
END_TEST

struct int_case {
    const char *sec;
    const char *key;
    const char *val;
    int ok;
    size_t off; /* field in struct px_cfg */
    int want;
};

static const struct int_case int_cases[] = {
    {"hsm", "workers", "0", 0, 0, 0},
    {"hsm", "workers", "1", 1, offsetof(struct px_cfg, hsm_workers), 1},
    {"hsm", "workers", "64", 1, offsetof(struct px_cfg, hsm_workers), 64},
    {"hsm", "workers", "65", 0, 0, 0},
    {"hsm", "workers_min", "0", 0, 0, 0},
    {"hsm", "workers_min", "1", 1, offsetof(struct px_cfg, hsm_workers_min), 1},
    {"hsm", "workers_min", "65", 0, 0, 0},
    {"hsm", "workers_max", "0", 0, 0, 0},
    {"hsm", "workers_max", "64", 1, offsetof(struct px_cfg, hsm_workers_max), 64},
    {"hsm", "workers_max", "65", 0, 0, 0},
    {"hsm", "recovery_retries", "-1", 0, 0, 0},
    {"hsm", "recovery_retries", "500", 1, offsetof(struct px_cfg, recovery_retries), 500},
    {"hsm", "recovery_retries", "501", 0, 0, 0},
    {"hsm", "batch", "0", 0, 0, 0},
    {"hsm", "batch", "64", 1, offsetof(struct px_cfg, hsm_batch), 64},
    {"hsm", "batch", "65", 0, 0, 0},
    {"hsm", "sign_timeout_ms", "0", 0, 0, 0},
    {"hsm", "sign_timeout_ms", "60000", 1, offsetof(struct px_cfg, hsm_sign_timeout_ms), 60000},
    {"hsm", "sign_timeout_ms", "60001", 0, 0, 0},
    {"hsm", "hang_timeout_ms", "9", 0, 0, 0},
    {"hsm", "hang_timeout_ms", "10", 1, offsetof(struct px_cfg, hsm_hang_timeout_ms), 10},
    {"hsm", "queue_size", "0", 0, 0, 0},
    {"hsm", "queue_size", "1048576", 1, offsetof(struct px_cfg, hsm_queue_size), 1048576},
    {"hsm", "queue_size", "1048577", 0, 0, 0},
    {"listen", "threads", "-1", 0, 0, 0},
    {"listen", "threads", "256", 1, offsetof(struct px_cfg, threads), 256},
    {"listen", "threads", "257", 0, 0, 0},
    {"ca", "leaf_max_days", "0", 0, 0, 0},
    {"ca", "leaf_max_days", "825", 1, offsetof(struct px_cfg, ca_leaf_max_days), 825},
    {"ca", "leaf_max_days", "826", 0, 0, 0},
    {"ca", "reminder_days", "0", 0, 0, 0},
    {"ca", "reminder_days", "3650", 1, offsetof(struct px_cfg, ca_reminder_days), 3650},
    {"ca", "reminder_days", "3651", 0, 0, 0},
    {"listen", "max_connections", "-1", 0, 0, 0},
    {"listen", "max_connections", "0", 1, offsetof(struct px_cfg, listen_max_connections), 0},
    {"listen", "max_connections", "10000000", 1, offsetof(struct px_cfg, listen_max_connections),
     10000000},
    {"listen", "max_connections", "10000001", 0, 0, 0},
    {"cache", "size", "15", 0, 0, 0},
    {"cache", "size", "16", 1, offsetof(struct px_cfg, cache_size), 16},
    {"cache", "ttl_s", "0", 0, 0, 0},
    {"cache", "ttl_s", "31536000", 1, offsetof(struct px_cfg, cache_ttl_s), 31536000},
    {"cache", "ttl_s", "31536001", 0, 0, 0},
    {"upstream", "resolve_timeout_ms", "99", 0, 0, 0},
    {"upstream", "resolve_timeout_ms", "100", 1, offsetof(struct px_cfg, resolve_timeout_ms), 100},
    {"upstream", "resolve_timeout_ms", "60000", 1, offsetof(struct px_cfg, resolve_timeout_ms),
     60000},
    {"upstream", "resolve_timeout_ms", "60001", 0, 0, 0},
    {"upstream", "dns_cache_max_ttl_s", "-1", 0, 0, 0},
    {"upstream", "dns_cache_max_ttl_s", "0", 1, offsetof(struct px_cfg, dns_cache_max_ttl_s), 0},
    {"upstream", "dns_cache_max_ttl_s", "86400", 1, offsetof(struct px_cfg, dns_cache_max_ttl_s),
     86400},
    {"upstream", "dns_cache_max_ttl_s", "86401", 0, 0, 0},
    {"upstream", "dns_negative_ttl_s", "-1", 0, 0, 0},
    {"upstream", "dns_negative_ttl_s", "3600", 1, offsetof(struct px_cfg, dns_negative_ttl_s),
     3600},
    {"upstream", "dns_negative_ttl_s", "3601", 0, 0, 0},
    {"upstream", "connect_timeout_ms", "99", 0, 0, 0},
    {"upstream", "connect_timeout_ms", "120000", 1, offsetof(struct px_cfg, connect_timeout_ms),
     120000},
    {"upstream", "connect_timeout_ms", "120001", 0, 0, 0},
    {"upstream", "session_cache", "-1", 0, 0, 0},
    {"upstream", "session_cache", "0", 1, offsetof(struct px_cfg, upstream_session_cache), 0},
    {"upstream", "session_cache", "1048576", 1, offsetof(struct px_cfg, upstream_session_cache),
     1048576},
    {"upstream", "session_cache", "1048577", 0, 0, 0},
};

START_TEST(test_cfg_int_range)
{
    const struct int_case *c = &int_cases[_i];
    char text[512];
    char prefix[128];
    snprintf(text, sizeof(text), HSM_REQ "[%s]\n%s = %s\n", c->sec, c->key, c->val);
    if (c->ok) {
        expect_ok(text);
        int got;
        memcpy(&got, (const char *)&g_cfg + c->off, sizeof(got));
        ck_assert_msg(got == c->want, "[%s] %s = %s stored %d", c->sec, c->key, c->val, got);
    } else {
        snprintf(prefix, sizeof(prefix), "t.conf:7: [%s] %s: ", c->sec, c->key);
        expect_err(text, prefix, "out of range");
    }
}
END_TEST

START_TEST(test_cfg_fail_mode)
{
    expect_ok(HSM_REQ "fail_mode = open\n");
    ck_assert_int_eq(g_cfg.fail_mode, PX_FAIL_OPEN);
    expect_ok(HSM_REQ "fail_mode = closed\n");
    ck_assert_int_eq(g_cfg.fail_mode, PX_FAIL_CLOSED);
    expect_err(HSM_REQ "fail_mode = half\n",
               "t.conf:6: [hsm] fail_mode: ", "'half' is not closed or open");
    expect_err(HSM_REQ "fail_mode = Open\n",
               "t.conf:6: [hsm] fail_mode: ", "is not closed or open");
}
END_TEST

START_TEST(test_cfg_bool)
{
    static const char *const yes[] = {"yes", "true", "1", "on"};
    static const char *const no[] = {"no", "false", "0", "off"};
    char text[128];
    for (size_t i = 0; i < 4; i++) {
        snprintf(text, sizeof(text), "[upstream]\nverify = %s\n", no[i]);
        expect_ok(text);
        ck_assert_msg(!g_cfg.upstream_verify, "verify = %s", no[i]);
        snprintf(text, sizeof(text), "[upstream]\nverify = no\nverify = %s\n", yes[i]);
        expect_ok(text);
        ck_assert_msg(g_cfg.upstream_verify, "verify = %s", yes[i]);
    }
    expect_err("[upstream]\nverify = maybe\n",
               "t.conf:2: [upstream] verify: ", "'maybe' is not yes or no");
    expect_err(HSM_REQ "rsa_pss = 2\n", "t.conf:6: [hsm] rsa_pss: ", "'2' is not yes or no");
}
END_TEST

struct addr_case {
    const char *sec;
    const char *key;
    const char *val;
    int ok;
};

static const struct addr_case addr_cases[] = {
    {"listen", "explicit", "127.0.0.1", 0},
    {"listen", "explicit", "127.0.0.1:70000", 0},
    {"listen", "explicit", "127.0.0.1:65536", 0},
    {"listen", "explicit", "127.0.0.1:0", 0},
    {"listen", "explicit", ":3128", 0},
    {"listen", "explicit", "localhost:", 0},
    {"listen", "explicit", "localhost:80x", 0},
    {"listen", "explicit", "127.0.0.1:65535", 1},
    {"listen", "explicit", "localhost:1", 1},
    {"listen", "explicit", "[::1]:3128", 1},
    {"listen", "explicit", "", 1},
    {"listen", "transparent", "0.0.0.0", 0},
    {"listen", "transparent", "0.0.0.0:8443", 1},
    {"admin", "metrics", "9120", 0},
    {"admin", "metrics", "127.0.0.1:9121", 1},
};

START_TEST(test_cfg_address)
{
    const struct addr_case *c = &addr_cases[_i];
    char text[256];
    char prefix[128];
    snprintf(text, sizeof(text), "[%s]\n%s = %s\n", c->sec, c->key, c->val);
    if (c->ok) {
        expect_ok(text);
        const char *got = strcmp(c->key, "explicit") == 0      ? g_cfg.listen_explicit
                          : strcmp(c->key, "transparent") == 0 ? g_cfg.listen_transparent
                                                               : g_cfg.admin_metrics;
        ck_assert_str_eq(got, c->val);
    } else {
        snprintf(prefix, sizeof(prefix), "t.conf:2: [%s] %s: ", c->sec, c->key);
        expect_err(text, prefix, "is not HOST:PORT");
    }
}
END_TEST

/* [cache] shared: the URL forms, what they parse into, and the FILE:LINE errors. */
START_TEST(test_cfg_shared)
{
    expect_ok("[cache]\nshared = redis://10.0.0.5:6380/3\n");
    ck_assert_str_eq(g_cfg.cache_shared_host, "10.0.0.5");
    ck_assert_int_eq(g_cfg.cache_shared_port, 6380);
    ck_assert_int_eq(g_cfg.cache_shared_db, 3);
    ck_assert_int_eq(g_cfg.cache_shared_timeout_ms, 5);
    ck_assert_int_eq(g_cfg.cache_shared_lock_ms, 300);
    ck_assert_int_eq(g_cfg.cache_snapshot_interval_s, 300);
    expect_ok("[cache]\nshared = redis://redis.example:6379\n");
    ck_assert_str_eq(g_cfg.cache_shared_host, "redis.example");
    ck_assert_int_eq(g_cfg.cache_shared_db, 0);
    expect_ok("[cache]\nshared = redis://[::1]:6379/0\n");
    ck_assert_str_eq(g_cfg.cache_shared_host, "::1");
    expect_ok("[cache]\nshared = unix:/run/redis/redis.sock\n");
    ck_assert_str_eq(g_cfg.cache_shared_unix, "/run/redis/redis.sock");
    ck_assert_str_eq(g_cfg.cache_shared_host, "");
    expect_ok("[cache]\nshared = unix:/run/r.sock?db=2\nsnapshot = /var/lib/t/c.snap\n"
              "snapshot_interval_s = 60\nshared_timeout_ms = 20\nshared_lock_ms = 1000\n");
    ck_assert_int_eq(g_cfg.cache_shared_db, 2);
    ck_assert_str_eq(g_cfg.cache_snapshot, "/var/lib/t/c.snap");
    expect_ok("[cache]\nshared =\n");
    ck_assert_str_eq(g_cfg.cache_shared, "");
    static const char *bad[] = {"redis://127.0.0.1/0", "redis://:6379", "redis://h:0",
                                "redis://h:65536", "redis://h:6379x", "http://h:6379",
                                "unix:relative.sock", "unix:/r.sock?db=x", "redis://u:p@h:6379",
                                /* brackets: unclosed, empty, not right before the port */
                                "redis://[:1565", "redis://[]:6379", "redis://[::1:6379",
                                "redis://[::1]x:6379"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char text[128];
        snprintf(text, sizeof(text), "[cache]\n\nshared = %s\n", bad[i]);
        expect_err(text, "t.conf:3: [cache] shared: ", "is not redis://HOST:PORT/DB");
    }
    expect_err("[cache]\nshared = redis://h:6379/16\n", "t.conf:2: [cache] shared: ", "0-15");
    expect_err("[cache]\nshared_timeout_ms = 0\n", "t.conf:2: [cache] shared_timeout_ms: ",
               "out of range");
    expect_err("[cache]\nshared_password_file = /nonexistent/pw\n",
               "t.conf:2: [cache] shared_password_file: ", "cannot open");
}
END_TEST

/* An empty listener address turns it off, also with a trailing comment. */
START_TEST(test_cfg_explicit_off)
{
    expect_ok("[listen]\nexplicit =\n");
    ck_assert_str_eq(g_cfg.listen_explicit, "");
    ck_assert_str_eq(g_cfg.listen_transparent, "127.0.0.1:8443");
    expect_ok("[listen]\nexplicit = ; off\ntransparent =\n");
    ck_assert_str_eq(g_cfg.listen_explicit, "");
    ck_assert_str_eq(g_cfg.listen_transparent, "");
}
END_TEST

/* "write 101 into 100": the longest value a field holds is accepted, one more byte is not. */
struct len_case {
    const char *sec;
    const char *key;
    size_t len;
    int ok;
    size_t off; /* char array in struct px_cfg */
};

#define MEMBER0(f) (offsetof(struct px_cfg, members) + offsetof(struct px_hsm_member_cfg, f))

static const struct len_case len_cases[] = {
    {"hsm", "token", 32, 1, MEMBER0(token)},
    {"hsm", "token", 33, 0, 0},
    {"hsm", "token_serial", 16, 1, MEMBER0(token_serial)},
    {"hsm", "token_serial", 17, 0, 0},
    {"hsm", "key_label", 63, 1, MEMBER0(key_label)},
    {"hsm", "key_label", 64, 0, 0},
    {"hsm", "key_id", 62, 1, MEMBER0(key_id)},
    {"hsm", "key_id", 64, 0, 0},
    {"listen", "explicit", 127, 1, offsetof(struct px_cfg, listen_explicit)},
    {"listen", "explicit", 128, 0, 0},
    {"admin", "metrics", 127, 1, offsetof(struct px_cfg, admin_metrics)},
    {"admin", "metrics", 128, 0, 0},
};

START_TEST(test_cfg_too_long)
{
    const struct len_case *c = &len_cases[_i];
    char val[160];
    char text[512];
    char prefix[128];
    ck_assert_uint_lt(c->len, sizeof(val));
    if (strcmp(c->sec, "hsm") == 0) {
        memset(val, strcmp(c->key, "key_id") == 0 ? 'a' : 'T', c->len);
        val[c->len] = '\0';
    } else {
        /* a valid HOST:PORT of exactly len bytes */
        memset(val, 'h', c->len - 5);
        memcpy(val + c->len - 5, ":3128", 6);
    }
    ck_assert_uint_eq(strlen(val), c->len);
    snprintf(text, sizeof(text), HSM_REQ "[%s]\n%s = %s\n", c->sec, c->key, val);
    if (c->ok) {
        expect_ok(text);
        ck_assert_str_eq((const char *)&g_cfg + c->off, val);
    } else {
        snprintf(prefix, sizeof(prefix), "t.conf:7: [%s] %s: ", c->sec, c->key);
        expect_err(text, prefix, "value too long");
    }
}
END_TEST

START_TEST(test_cfg_member_name_len)
{
    char name[40];
    char text[512];
    memset(name, 'n', 31);
    name[31] = '\0';
    snprintf(text, sizeof(text),
             HSM_REQ "[hsm.%s]\n"
                     "module = m\ntoken = t\npin_file = p\n"
                     "key_label = k\n",
             name);
    expect_ok(text);
    ck_assert_int_eq(g_cfg.n_members, 2);
    ck_assert_str_eq(g_cfg.members[1].name, name);

    char prefix[64];
    memset(name, 'n', 32);
    name[32] = '\0';
    snprintf(text, sizeof(text),
             HSM_REQ "[hsm.%s]\n"
                     "module = m\ntoken = t\npin_file = p\n"
                     "key_label = k\n",
             name);
    snprintf(prefix, sizeof(prefix), "t.conf:");
    expect_err(text, prefix, "HSM member name must be 1-31 characters");
    ck_assert_ptr_nonnull(strstr(g_err, name));

    expect_err(HSM_REQ "[hsm.]\nmodule = m\n", "t.conf:", "HSM member name must be");
}
END_TEST

struct missing_case {
    const char *key;
    const char *text;
};

static const struct missing_case missing_cases[] = {
    {"module", "[hsm]\ntoken = t\npin_file = p\nkey_label = k\n"},
    {"token", "[hsm]\nmodule = m\npin_file = p\nkey_label = k\n"},
    {"pin_file", "[hsm]\nmodule = m\ntoken = t\nkey_label = k\n"},
    {"key_label", "[hsm]\nmodule = m\ntoken = t\npin_file = p\n"},
};

/* The line number of these messages is not checked: see the report (it names the first key
 * of the section, not the section header that struct px_hsm_member_cfg.line documents). */
START_TEST(test_cfg_missing_required)
{
    const struct missing_case *c = &missing_cases[_i];
    char want[64];
    snprintf(want, sizeof(want), "[hsm] %s: missing", c->key);
    expect_err(c->text, "t.conf:", want);

    /* the same key missing in an HA member is also an error */
    char text[512];
    snprintf(text, sizeof(text), HSM_REQ "[hsm.backup]\n%s", c->text + strlen("[hsm]\n"));
    snprintf(want, sizeof(want), " %s: missing", c->key);
    expect_err(text, "t.conf:", want);
}
END_TEST

/* token_serial stands in for token, key_id for key_label. */
START_TEST(test_cfg_alternatives)
{
    expect_ok("[hsm]\nmodule = m\ntoken_serial = 0123456789abcdef\npin_file = p\n"
              "key_id = 0A1b\n");
    ck_assert_str_eq(g_cfg.members[0].token, "");
    ck_assert_str_eq(g_cfg.members[0].token_serial, "0123456789abcdef");
    ck_assert_str_eq(g_cfg.members[0].key_label, "");
    ck_assert_str_eq(g_cfg.members[0].key_id, "0A1b");
    expect_err(HSM_REQ "key_id = 0g\n", "t.conf:6: [hsm] key_id: ", "'0g' is not hex");
    expect_err(HSM_REQ "key_id = abc\n", "t.conf:6: [hsm] key_id: ", "odd number of hex digits");
}
END_TEST

/* [hsm.X] before [hsm] still leaves [hsm] as members[0]. */
START_TEST(test_cfg_member_order)
{
    expect_ok("[hsm.backup]\nmodule = b.so\ntoken = bt\npin_file = bp\nkey_label = bk\n"
              "[hsm]\nmodule = a.so\ntoken = at\npin_file = ap\nkey_label = ak\n"
              "[hsm.backup]\nenv = A=1\n");
    ck_assert_int_eq(g_cfg.n_members, 2);
    ck_assert_str_eq(g_cfg.members[0].name, "hsm");
    ck_assert_str_eq(g_cfg.members[0].module, "a.so");
    ck_assert_str_eq(g_cfg.members[0].token, "at");
    ck_assert_str_eq(g_cfg.members[1].name, "backup");
    ck_assert_str_eq(g_cfg.members[1].module, "b.so");
    ck_assert_str_eq(g_cfg.members[1].key_label, "bk");
    ck_assert_int_eq(g_cfg.members[1].n_env, 1);
    ck_assert_str_eq(g_cfg.members[1].env[0], "A=1");
}
END_TEST

static void append_members(char *text, size_t cap, int n)
{
    size_t off = strlen(text);
    for (int i = 1; i <= n; i++) {
        int w = snprintf(text + off, cap - off,
                         "[hsm.m%02d]\nmodule = m\ntoken = t\npin_file = p\nkey_label = k\n", i);
        ck_assert(w > 0 && (size_t)w < cap - off);
        off += (size_t)w;
    }
}

START_TEST(test_cfg_max_members)
{
    char text[4096];
    snprintf(text, sizeof(text), HSM_REQ);
    append_members(text, sizeof(text), PX_HSM_MAX_MEMBERS - 1);
    expect_ok(text);
    ck_assert_int_eq(g_cfg.n_members, PX_HSM_MAX_MEMBERS);
    ck_assert_str_eq(g_cfg.members[PX_HSM_MAX_MEMBERS - 1].name, "m15");

    snprintf(text, sizeof(text), HSM_REQ);
    append_members(text, sizeof(text), PX_HSM_MAX_MEMBERS);
    expect_err(text, "t.conf:", "[hsm.m16] -: at most 16 HSM members");
}
END_TEST

START_TEST(test_cfg_env)
{
    char text[1024];
    snprintf(text, sizeof(text), HSM_REQ);
    for (int i = 0; i < PX_HSM_MAX_ENV; i++) {
        size_t off = strlen(text);
        snprintf(text + off, sizeof(text) - off, "env = V%d=%d\n", i, i * 10);
    }
    expect_ok(text);
    ck_assert_int_eq(g_cfg.members[0].n_env, PX_HSM_MAX_ENV);
    ck_assert_str_eq(g_cfg.members[0].env[0], "V0=0");
    ck_assert_str_eq(g_cfg.members[0].env[7], "V7=70");

    size_t off = strlen(text);
    snprintf(text + off, sizeof(text) - off, "env = ONE=TOO_MANY\n");
    expect_err(text, "t.conf:14: [hsm] env: ", "at most 8 env lines");

    expect_err(HSM_REQ "env = NOEQUALS\n", "t.conf:6: [hsm] env: ", "'NOEQUALS' is not NAME=VALUE");
    expect_err(HSM_REQ "env = =value\n", "t.conf:6: [hsm] env: ", "is not NAME=VALUE");
}
END_TEST

START_TEST(test_cfg_mark_and_level)
{
    expect_ok("[upstream]\nmark = 4294967295\n");
    ck_assert_uint_eq(g_cfg.upstream_mark, UINT32_MAX);
    expect_ok("[upstream]\nmark = 0x10\n");
    ck_assert_uint_eq(g_cfg.upstream_mark, 16);
    expect_err("[upstream]\nmark = 4294967296\n",
               "t.conf:2: [upstream] mark: ", "is not a 32-bit mark");
    expect_err("[upstream]\nmark = -1\n", "t.conf:2: [upstream] mark: ", "is not a 32-bit mark");
    expect_err("[upstream]\nmark = seven\n", "t.conf:2: [upstream] mark: ", "is not a 32-bit mark");

    expect_ok("[log]\nlevel = warn\n");
    ck_assert_int_eq(g_cfg.log_level, PX_LOG_WARN);
    expect_ok("[log]\nlevel = error\n");
    ck_assert_int_eq(g_cfg.log_level, PX_LOG_ERROR);
    expect_err("[log]\nlevel = verbose\n", "t.conf:2: [log] level: ", "'verbose' is not error");
}
END_TEST

START_TEST(test_cfg_control_char)
{
    expect_err(HSM_REQ "token = a\tb\n", "t.conf:6: [hsm] token: ", "control character");
}
END_TEST

START_TEST(test_cfg_syntax_error)
{
    expect_err("[listen]\n"
               "threads = 1\n"
               "; comment\n"
               "garbage without equals\n"
               "threads = 2\n",
               "t.conf:4: ", "syntax error");
    expect_err("[listen]\n"
               "threads = 1\n"
               "\n"
               "\n"
               "[admin\n",
               "t.conf:5: ", "syntax error");
    /* Windows line endings count lines the same way */
    expect_err("[listen]\r\nthreads = 1\r\nnope\r\n", "t.conf:3: ", "syntax error");
}
END_TEST

/* The first of two value errors is the one reported. */
START_TEST(test_cfg_first_error_wins)
{
    expect_err("[listen]\n"
               "threads = x\n"
               "[hsm]\n"
               "workers = 0\n",
               "t.conf:2: [listen] threads: ", "is not an integer");
}
END_TEST

/* Writes text to a fresh mkstemp file under /tmp; path receives its name. */
static void write_tmp(char *path, size_t cap, const char *text)
{
    snprintf(path, cap, "/tmp/test_cfg.XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    size_t n = strlen(text);
    ck_assert_int_eq(write(fd, text, n), (ssize_t)n);
    ck_assert_int_eq(close(fd), 0);
}

START_TEST(test_cfg_load_file)
{
    char path[64];
    write_tmp(path, sizeof(path), full_cfg);
    int r = px_cfg_load(path, &g_cfg, g_err, sizeof(g_err));
    unlink(path);
    ck_assert_msg(r == 0, "px_cfg_load: %d %s", r, g_err);
    ck_assert_str_eq(g_cfg.path, path);
    ck_assert_int_eq(g_cfg.n_members, 2);
    ck_assert_str_eq(g_cfg.members[1].token, "backup-token");
    ck_assert_int_eq(g_cfg.members[0].n_env, 2);
    ck_assert_int_eq(g_cfg.recovery_retries, 7);
    ck_assert_str_eq(g_cfg.admin_metrics, "0.0.0.0:9121");

    /* errors name the file's path and the line in it */
    write_tmp(path, sizeof(path), "; comment\n[listen]\nthreads = 300\n");
    r = px_cfg_load(path, &g_cfg, g_err, sizeof(g_err));
    unlink(path);
    ck_assert_int_eq(r, PX_E_CONFIG);
    char prefix[128];
    snprintf(prefix, sizeof(prefix), "%s:3: [listen] threads: ", path);
    ck_assert_msg(strncmp(g_err, prefix, strlen(prefix)) == 0, "'%s' vs '%s'", g_err, prefix);
    ck_assert_ptr_nonnull(strstr(g_err, "out of range"));

    write_tmp(path, sizeof(path), "[listen]\nthreads = 1\n\nno equals here\n");
    r = px_cfg_load(path, &g_cfg, g_err, sizeof(g_err));
    unlink(path);
    ck_assert_int_eq(r, PX_E_CONFIG);
    snprintf(prefix, sizeof(prefix), "%s:4: syntax error", path);
    ck_assert_msg(strncmp(g_err, prefix, strlen(prefix)) == 0, "'%s' vs '%s'", g_err, prefix);
}
END_TEST

START_TEST(test_cfg_load_missing)
{
    char path[64];
    write_tmp(path, sizeof(path), "");
    unlink(path);
    int r = px_cfg_load(path, &g_cfg, g_err, sizeof(g_err));
    ck_assert_int_eq(r, -ENOENT);
    ck_assert_msg(strncmp(g_err, path, strlen(path)) == 0, "'%s' does not name %s", g_err, path);
    ck_assert_ptr_nonnull(strstr(g_err, strerror(ENOENT)));
}
END_TEST

/* A tiny err buffer truncates the message instead of overflowing. */
START_TEST(test_cfg_small_errbuf)
{
    char small[8];
    memset(small, 'x', sizeof(small));
    int r = px_cfg_load_string("t.conf", "[nope]\na = b\n", &g_cfg, small, sizeof(small));
    ck_assert_int_eq(r, PX_E_CONFIG);
    ck_assert_str_eq(small, "t.conf:");
}
END_TEST

Suite *cfg_suite(void)
{
    Suite *s = suite_create("cfg");

    TCase *tc = tcase_create("valid");
    tcase_add_test(tc, test_cfg_design_example);
    tcase_add_test(tc, test_cfg_full);
    tcase_add_test(tc, test_cfg_defaults);
    tcase_add_test(tc, test_cfg_explicit_off);
    tcase_add_test(tc, test_cfg_alternatives);
    tcase_add_test(tc, test_cfg_member_order);
    tcase_add_test(tc, test_cfg_env);
    tcase_add_test(tc, test_cfg_mark_and_level);
    suite_add_tcase(s, tc);

    tc = tcase_create("errors");
    tcase_add_test(tc, test_cfg_unknown_section);
    tcase_add_test(tc, test_cfg_unknown_key);
    tcase_add_test(tc, test_cfg_error_order_and_places);
    tcase_add_test(tc, test_cfg_workers_auto);
    tcase_add_test(tc, test_cfg_bad_integer);
    tcase_add_loop_test(tc, test_cfg_int_range, 0, (int)(sizeof(int_cases) / sizeof(int_cases[0])));
    tcase_add_test(tc, test_cfg_fail_mode);
    tcase_add_test(tc, test_cfg_bool);
    tcase_add_loop_test(tc, test_cfg_address, 0, (int)(sizeof(addr_cases) / sizeof(addr_cases[0])));
    tcase_add_loop_test(tc, test_cfg_too_long, 0, (int)(sizeof(len_cases) / sizeof(len_cases[0])));
    tcase_add_test(tc, test_cfg_member_name_len);
    tcase_add_loop_test(tc, test_cfg_missing_required, 0,
                        (int)(sizeof(missing_cases) / sizeof(missing_cases[0])));
    tcase_add_test(tc, test_cfg_max_members);
    tcase_add_test(tc, test_cfg_control_char);
    tcase_add_test(tc, test_cfg_shared);
    tcase_add_test(tc, test_cfg_syntax_error);
    tcase_add_test(tc, test_cfg_first_error_wins);
    tcase_add_test(tc, test_cfg_small_errbuf);
    tcase_add_test(tc, test_cfg_inbound);
    tcase_add_test(tc, test_cfg_rule_export);
    suite_add_tcase(s, tc);

    tc = tcase_create("file");
    tcase_add_test(tc, test_cfg_load_file);
    tcase_add_test(tc, test_cfg_load_missing);
    suite_add_tcase(s, tc);

    return s;
}
