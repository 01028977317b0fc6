/* SPDX-License-Identifier: MIT */
/*
 * test_addr.c - unit tests for the IP:PORT literals of dataplane/dp_addr.c, which the explicit
 * listener's CONNECT target, the inbound listen and backend addresses and PCAP-over-IP go
 * through.
 * Invariants checked: IPv4 and bracketed IPv6 parse to the address and port given; a bracket
 * that does not close right before the port, a port that is not all digits or past 65535, and
 * a host that is no address literal are refused (nothing is guessed); printing gives back the
 * literal.
 * Not here: name resolution (test_resolve.c).
 */
#include "dp_int.h"

#include <arpa/inet.h>
#include <check.h>
#include <string.h>

Suite *addr_suite(void);

START_TEST(test_addr_good)
{
    static const struct {
        const char *in, *out;
        int port;
    } cases[] = {
        {"127.0.0.1:443", "127.0.0.1:443", 443},
        {"10.1.2.3:0", "10.1.2.3:0", 0},
        {"[::1]:8443", "[::1]:8443", 8443},
        {"[2001:db8::7]:65535", "[2001:db8::7]:65535", 65535},
        {"::1:443", "[::1]:443", 443}, /* unbracketed: the last colon starts the port */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct sockaddr_storage ss;
        socklen_t len = 0;
        int port = -1;
        ck_assert_msg(dp_addr_parse(cases[i].in, &ss, &len, &port) == 0, "%s", cases[i].in);
        ck_assert_int_eq(port, cases[i].port);
        char out[80];
        dp_addr_str(&ss, out, sizeof(out));
        ck_assert_str_eq(out, cases[i].out);
    }
}
END_TEST

START_TEST(test_addr_refused)
{
    static const char *bad[] = {
        "[::1:443",     /* unclosed: was read as "::", every address */
        "[:443",        /* empty after the bracket */
        "[]:443",       /* empty brackets */
        "[::1]x:443",   /* something between the bracket and the port */
        "127.0.0.1:",   /* no port */
        "127.0.0.1:44x", /* atoi took 44 */
        "127.0.0.1:70000", /* atoi took it, htons made it 4464 */
        "127.0.0.1:-1",
        "127.0.0.1",    /* no colon */
        "example.com:443", /* a name, not a literal */
        "999.0.0.1:443",
        ":443",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct sockaddr_storage ss;
        socklen_t len = 0;
        int port = -1;
        ck_assert_msg(dp_addr_parse(bad[i], &ss, &len, &port) != 0, "accepted '%s'", bad[i]);
    }
}
END_TEST

Suite *addr_suite(void)
{
    Suite *s = suite_create("addr");
    TCase *tc = tcase_create("parse");
    tcase_add_test(tc, test_addr_good);
    tcase_add_test(tc, test_addr_refused);
    suite_add_tcase(s, tc);
    return s;
}
