/* SPDX-License-Identifier: MIT */
/*
 * cli_nft.c - `tlsmint transparent setup|status|teardown`: the firewall rules transparent mode
 * needs, written into nftables (Debian 12's firewall) so nobody writes them by hand.
 * Owns nothing in the kernel but its own table, `inet tlsmint` (IPv4 and IPv6 in one), and,
 * with TPROXY, the policy route that delivers marked packets locally (one `ip rule` and one
 * `ip route ... table N` per family). setup replaces the table in one nft transaction, so
 * running it twice changes nothing; teardown deletes the table and exactly the routes the
 * table's comment says setup added. Runs `nft` and `ip` (in the caller's network namespace).
 * Management command: blocking is fine. Every value that reaches a command line is checked
 * here first (interface names, ports, numbers).
 * Not here: the listener side (dataplane/: SO_ORIGINAL_DST, IP_TRANSPARENT).
 */
#include "cli.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pwd.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define NFT_TABLE "inet tlsmint"

static const char nft_usage[] =
    "usage: tlsmint [-c CONFIG] transparent setup|status|teardown [--mode redirect|tproxy]\n"
    "         [--in-interface IF] [--ports 443,8443] [--exclude-uid U | --exclude-mark M]\n"
    "         [--to-port P] [--tproxy-mark M] [--route-table N] [--dry-run]\n"
    "\n"
    "Writes the nftables rules transparent mode needs into their own table 'inet tlsmint'\n"
    "(IPv4 and IPv6), and nothing outside it except, with TPROXY, the policy route that\n"
    "delivers marked packets locally (ip rule fwmark M lookup N; local routes in table N).\n"
    "  setup     (re)creates the table in one transaction: running it twice changes nothing\n"
    "  status    the table with its counters, and the policy routes; exit 1 when not set up\n"
    "  teardown  removes the table and the policy routes setup added\n"
    "options (setup):\n"
    "  --mode M          redirect (nat REDIRECT, default) or tproxy (default: tproxy when\n"
    "                    [listen] tproxy = yes)\n"
    "  --in-interface IF only traffic arriving on IF (a gateway's LAN side); without it,\n"
    "                    every interface\n"
    "  --ports LIST      destination TCP ports to intercept (default 443)\n"
    "  --exclude-uid U   also intercept this host's own connections (nat output), except\n"
    "                    those of user U (the proxy's user: its upstream connections)\n"
    "  --exclude-mark M  the same, excluding packets with mark M ([upstream] mark; default\n"
    "                    when that is set)\n"
    "  --to-port P       the transparent listener's port (default: from [listen] transparent)\n"
    "  --tproxy-mark M   TPROXY: mark for the policy route (default 0x1)\n"
    "  --route-table N   TPROXY: routing table for local delivery (default 100)\n"
    "  --dry-run         print the nft script instead of loading it\n";

struct nft_opts {
    const char *conf;
    const char *cmd;
    bool tproxy, mode_set, dry_run;
    char iface[16];
    char ports[128];
    long exclude_uid; /* -1: none */
    long long exclude_mark; /* -1: none */
    int to_port;
    unsigned long tproxy_mark;
    int route_table;
};

/* Runs argv (no shell); its output goes to ours unless quiet. Returns its exit status. */
static int run_cmd(char *const argv[], bool quiet)
{
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    if (quiet) {
        posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
        posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
    }
    pid_t pid;
    int r = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (r != 0) {
        fprintf(stderr, "tlsmint transparent: cannot run %s: %s\n", argv[0], strerror(r));
        return -r;
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* Output of a fixed command line (no user input in it) into buf; returns the exit status. */
static int capture(const char *cmdline, char *buf, size_t cap)
{
    FILE *p = popen(cmdline, "r");
    if (p == NULL) {
        return -errno;
    }
    size_t n = fread(buf, 1, cap - 1, p);
    buf[n] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static bool valid_iface(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 15) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (!isalnum((unsigned char)s[i]) && s[i] != '.' && s[i] != '-' && s[i] != '_') {
            return false;
        }
    }
    return true;
}

/* "443,8443" -> "443, 8443" (each 1-65535). */
static bool parse_ports(const char *in, char *out, size_t cap)
{
    char tmp[128];
    snprintf(tmp, sizeof(tmp), "%s", in);
    out[0] = '\0';
    int n = 0;
    for (char *sp = NULL, *t = strtok_r(tmp, ",", &sp); t != NULL; t = strtok_r(NULL, ",", &sp)) {
        char *end = NULL;
        long p = strtol(t, &end, 10);
        if (end == t || *end != '\0' || p < 1 || p > 65535 || n >= 16) {
            return false;
        }
        size_t l = strlen(out);
        snprintf(out + l, cap - l, "%s%ld", n ? ", " : "", p);
        n++;
    }
    return n > 0;
}

static bool parse_num(const char *s, long long max, long long *out)
{
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 0);
    if (errno != 0 || end == s || *end != '\0' || v < 0 || v > max) {
        return false;
    }
    *out = v;
    return true;
}

/* The table as one nft script: deleting and re-creating it in one transaction. */
static void script(const struct nft_opts *o, FILE *f)
{
    char iif[40] = "";
    if (o->iface[0]) {
        snprintf(iif, sizeof(iif), "iifname \"%s\" ", o->iface);
    }
    fprintf(f, "table %s\ndelete table %s\ntable %s {\n", NFT_TABLE, NFT_TABLE, NFT_TABLE);
    fprintf(f, "  comment \"tlsmint transparent: mode=%s to=%d mark=0x%lx table=%d\"\n",
            o->tproxy ? "tproxy" : "redirect", o->to_port, o->tproxy ? o->tproxy_mark : 0,
            o->tproxy ? o->route_table : 0);
    if (o->tproxy) {
        fprintf(f, "  chain prerouting {\n"
                   "    type filter hook prerouting priority mangle; policy accept;\n");
        if (o->exclude_mark >= 0) {
            fprintf(f, "    meta mark 0x%llx counter return\n", o->exclude_mark);
        }
        fprintf(f, "    %stcp dport { %s } counter tproxy to :%d meta mark set 0x%lx accept\n"
                   "  }\n",
                iif, o->ports, o->to_port, o->tproxy_mark);
    } else {
        fprintf(f, "  chain prerouting {\n"
                   "    type nat hook prerouting priority dstnat; policy accept;\n"
                   "    %stcp dport { %s } counter redirect to :%d\n"
                   "  }\n",
                iif, o->ports, o->to_port);
        if (o->exclude_uid >= 0 || o->exclude_mark >= 0) {
            fprintf(f, "  chain output {\n"
                       "    type nat hook output priority -100; policy accept;\n");
            if (o->exclude_uid >= 0) {
                fprintf(f, "    meta skuid %ld counter return\n", o->exclude_uid);
            }
            if (o->exclude_mark >= 0) {
                fprintf(f, "    meta mark 0x%llx counter return\n", o->exclude_mark);
            }
            fprintf(f, "    tcp dport { %s } counter redirect to :%d\n  }\n", o->ports,
                    o->to_port);
        }
    }
    fprintf(f, "}\n");
}

/* mark and table recorded by setup in the table's comment; false when there is no table. */
static bool installed(unsigned long *mark, int *table, bool *tproxy)
{
    char buf[16384];
    if (capture("nft list table " NFT_TABLE " 2>/dev/null", buf, sizeof(buf)) != 0) {
        return false;
    }
    *mark = 0;
    *table = 0;
    *tproxy = false;
    const char *c = strstr(buf, "tlsmint transparent: mode=");
    if (c != NULL) {
        *tproxy = strncmp(c + 26, "tproxy", 6) == 0;
        const char *m = strstr(c, "mark=");
        const char *t = strstr(c, "table=");
        *mark = m ? strtoul(m + 5, NULL, 0) : 0;
        *table = t ? atoi(t + 6) : 0;
    }
    return true;
}

/* ip [-6] rule/route for TPROXY: add (idempotent) or delete. Returns what changed. */
static int policy_route(bool add, int family, unsigned long mark, int table)
{
    char fl[4], rules[8192], mk[32], tb[16], cmd[128];
    snprintf(fl, sizeof(fl), "-%d", family);
    snprintf(mk, sizeof(mk), "0x%lx/0x%lx", mark, mark);
    snprintf(tb, sizeof(tb), "%d", table);
    snprintf(cmd, sizeof(cmd), "ip -%d rule show 2>/dev/null", family);
    if (capture(cmd, rules, sizeof(rules)) != 0) {
        return -1;
    }
    char want[96];
    snprintf(want, sizeof(want), "fwmark %s lookup %d", mk, table);
    bool have = strstr(rules, want) != NULL;
    const char *dst = family == 4 ? "0.0.0.0/0" : "::/0";
    int changed = 0;
    if (add && !have) {
        char *r[] = {"ip", fl, "rule", "add", "fwmark", mk, "lookup", tb, NULL};
        if (run_cmd(r, false) != 0) {
            return -1;
        }
        changed = 1;
    } else if (!add && have) {
        char *r[] = {"ip", fl, "rule", "del", "fwmark", mk, "lookup", tb, NULL};
        changed = run_cmd(r, false) == 0;
    }
    snprintf(cmd, sizeof(cmd), "ip -%d route show table %d 2>/dev/null", family, table);
    char routes[4096] = "";
    capture(cmd, routes, sizeof(routes));
    bool have_route = strstr(routes, "local") != NULL;
    if (add && !have_route) {
        char *r[] = {"ip", fl, "route", "add", "local", (char *)dst, "dev", "lo", "table", tb,
                     NULL};
        if (run_cmd(r, false) != 0) {
            if (!have) { /* leave nothing half-made */
                char *d[] = {"ip", fl, "rule", "del", "fwmark", mk, "lookup", tb, NULL};
                run_cmd(d, true);
            }
            return -1;
        }
        changed = 1;
    } else if (!add && have_route) {
        char *r[] = {"ip", fl, "route", "del", "local", (char *)dst, "dev", "lo", "table", tb,
                     NULL};
        changed |= run_cmd(r, true) == 0;
    }
    return changed;
}

static int do_setup(struct nft_opts *o)
{
    char path[] = "/tmp/tlsmint-nft-XXXXXX";
    FILE *f = NULL;
    if (o->dry_run) {
        script(o, stdout);
        return 0;
    }
    int fd = mkstemp(path);
    if (fd < 0 || (f = fdopen(fd, "w")) == NULL) {
        fprintf(stderr, "tlsmint transparent: cannot write a temporary file: %s\n",
                strerror(errno));
        return 1;
    }
    script(o, f);
    fclose(f);
    char *argv[] = {"nft", "-f", path, NULL};
    int r = run_cmd(argv, false);
    unlink(path);
    if (r != 0) {
        fprintf(stderr, "tlsmint transparent: nft refused the rules (is nftables installed, "
                        "are you root, does the kernel have nf_tables%s?)\n",
                o->tproxy ? " and nft_tproxy" : "");
        return 1;
    }
    char excl[64] = "";
    if (o->exclude_uid >= 0) {
        snprintf(excl, sizeof(excl), ", this host's own except uid %ld", o->exclude_uid);
    } else if (o->exclude_mark >= 0) {
        snprintf(excl, sizeof(excl), ", this host's own except mark 0x%llx", o->exclude_mark);
    }
    printf("nftables: table %s: TCP port(s) %s arriving on %s%s %s to port %d (IPv4 and "
           "IPv6)\n",
           NFT_TABLE, o->ports, o->iface[0] ? o->iface : "any interface", excl,
           o->tproxy ? "diverted with TPROXY" : "redirected", o->to_port);
    if (o->tproxy) {
        int v4 = policy_route(true, 4, o->tproxy_mark, o->route_table);
        int v6 = policy_route(true, 6, o->tproxy_mark, o->route_table);
        if (v4 < 0) {
            fprintf(stderr, "tlsmint transparent: cannot add the IPv4 policy route\n");
            return 1;
        }
        printf("policy routing: 'ip rule add fwmark 0x%lx/0x%lx lookup %d' and 'ip route add "
               "local 0.0.0.0/0 dev lo table %d' %s; IPv6 (::/0) %s\n",
               o->tproxy_mark, o->tproxy_mark, o->route_table, o->route_table,
               v4 ? "added" : "already present",
               v6 < 0 ? "not available" : v6 ? "added" : "already present");
    }
    return 0;
}

static int do_teardown(void)
{
    unsigned long mark;
    int table;
    bool tproxy;
    if (!installed(&mark, &table, &tproxy)) {
        printf("nftables: no table %s: nothing to remove\n", NFT_TABLE);
        return 0;
    }
    char *argv[] = {"nft", "delete", "table", "inet", "tlsmint", NULL};
    if (run_cmd(argv, false) != 0) {
        fprintf(stderr, "tlsmint transparent: nft could not delete table %s\n", NFT_TABLE);
        return 1;
    }
    printf("nftables: table %s removed\n", NFT_TABLE);
    if (tproxy && mark != 0 && table != 0) {
        int v4 = policy_route(false, 4, mark, table);
        int v6 = policy_route(false, 6, mark, table);
        printf("policy routing: fwmark 0x%lx lookup %d and table %d's local route %s (IPv4), "
               "%s (IPv6)\n",
               mark, table, table, v4 > 0 ? "removed" : "were not there",
               v6 > 0 ? "removed" : "were not there");
    }
    return 0;
}

static int do_status(void)
{
    unsigned long mark;
    int table;
    bool tproxy;
    if (!installed(&mark, &table, &tproxy)) {
        printf("nftables: no table %s (tlsmint transparent setup makes it)\n", NFT_TABLE);
        return 1;
    }
    fflush(stdout);
    char *argv[] = {"nft", "list", "table", "inet", "tlsmint", NULL};
    int r = run_cmd(argv, false);
    if (tproxy) {
        char cmd[128], out[4096];
        printf("policy routing (TPROXY mark 0x%lx, table %d):\n", mark, table);
        for (int fam = 4; fam <= 6; fam += 2) {
            snprintf(cmd, sizeof(cmd), "ip -%d rule show 2>/dev/null | grep 'lookup %d'", fam,
                     table);
            capture(cmd, out, sizeof(out));
            printf("  IPv%d rule:  %s", fam, out[0] ? out : "(missing)\n");
            snprintf(cmd, sizeof(cmd), "ip -%d route show table %d 2>/dev/null", fam, table);
            capture(cmd, out, sizeof(out));
            printf("  IPv%d route: %s", fam, out[0] ? out : "(missing)\n");
        }
    }
    return r == 0 ? 0 : 1;
}

int cli_transparent(int argc, char **argv)
{
    static const struct option lo[] = {
        {"mode", required_argument, NULL, 'm'},   {"in-interface", required_argument, NULL, 'i'},
        {"ports", required_argument, NULL, 'p'},  {"exclude-uid", required_argument, NULL, 'u'},
        {"exclude-mark", required_argument, NULL, 'k'},
        {"to-port", required_argument, NULL, 't'}, {"tproxy-mark", required_argument, NULL, 'M'},
        {"route-table", required_argument, NULL, 'T'}, {"dry-run", no_argument, NULL, 'n'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0}};
    struct nft_opts o = {.conf = "./var/tlsmint.conf", .exclude_uid = -1, .exclude_mark = -1,
                         .tproxy_mark = 1, .route_table = 100};
    snprintf(o.ports, sizeof(o.ports), "443");
    bool conf_given = false;
    long long v;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", lo, NULL)) != -1) {
        switch (c) {
        case 'c':
            o.conf = optarg;
            conf_given = true;
            break;
        case 'm':
            if (strcmp(optarg, "redirect") != 0 && strcmp(optarg, "tproxy") != 0) {
                fprintf(stderr, "tlsmint transparent: --mode '%s': redirect or tproxy\n", optarg);
                return 2;
            }
            o.tproxy = strcmp(optarg, "tproxy") == 0;
            o.mode_set = true;
            break;
        case 'i':
            if (!valid_iface(optarg)) {
                fprintf(stderr, "tlsmint transparent: --in-interface '%s' is not an interface "
                                "name\n", optarg);
                return 2;
            }
            snprintf(o.iface, sizeof(o.iface), "%s", optarg);
            break;
        case 'p':
            if (!parse_ports(optarg, o.ports, sizeof(o.ports))) {
                fprintf(stderr, "tlsmint transparent: --ports '%s': comma-separated TCP ports "
                                "(1-65535, at most 16)\n", optarg);
                return 2;
            }
            break;
        case 'u': {
            struct passwd *pw = getpwnam(optarg);
            if (pw != NULL) {
                o.exclude_uid = (long)pw->pw_uid;
            } else if (parse_num(optarg, 0xfffffffe, &v)) {
                o.exclude_uid = (long)v;
            } else {
                fprintf(stderr, "tlsmint transparent: --exclude-uid '%s': no such user\n",
                        optarg);
                return 2;
            }
            break;
        }
        case 'k':
            if (!parse_num(optarg, 0xffffffffll, &v)) {
                fprintf(stderr, "tlsmint transparent: --exclude-mark '%s' is not a 32-bit mark\n",
                        optarg);
                return 2;
            }
            o.exclude_mark = v;
            break;
        case 't':
            if (!parse_num(optarg, 65535, &v) || v == 0) {
                fprintf(stderr, "tlsmint transparent: --to-port '%s' is not a port\n", optarg);
                return 2;
            }
            o.to_port = (int)v;
            break;
        case 'M':
            if (!parse_num(optarg, 0xffffffffll, &v) || v == 0) {
                fprintf(stderr, "tlsmint transparent: --tproxy-mark '%s' is not a non-zero "
                                "mark\n", optarg);
                return 2;
            }
            o.tproxy_mark = (unsigned long)v;
            break;
        case 'T':
            if (!parse_num(optarg, 0x7fffffff, &v) || v == 0 || v == 253 || v == 254 ||
                v == 255) {
                fprintf(stderr, "tlsmint transparent: --route-table '%s': a table number other "
                                "than 0, 253, 254, 255\n", optarg);
                return 2;
            }
            o.route_table = (int)v;
            break;
        case 'n':
            o.dry_run = true;
            break;
        case 'h':
            return cli_usage(nft_usage, 0);
        default:
            return cli_usage(nft_usage, 2);
        }
    }
    if (optind + 1 != argc) {
        return cli_usage(nft_usage, 2);
    }
    o.cmd = argv[optind];
    if (o.exclude_uid >= 0 && o.exclude_mark >= 0) {
        fprintf(stderr, "tlsmint transparent: --exclude-uid or --exclude-mark, not both\n");
        return 2;
    }
    if (strcmp(o.cmd, "status") == 0) {
        return do_status();
    }
    if (strcmp(o.cmd, "teardown") == 0) {
        return do_teardown();
    }
    if (strcmp(o.cmd, "setup") != 0) {
        fprintf(stderr, "tlsmint transparent: unknown command '%s' (setup, status, teardown)\n",
                o.cmd);
        return 2;
    }
    /* defaults from the configuration: the listener's port, TPROXY, the upstream mark */
    static struct px_cfg cfg;
    char err[600];
    bool have_cfg = px_cfg_load(o.conf, &cfg, err, sizeof(err)) == 0;
    if (!have_cfg && (conf_given || o.to_port == 0)) {
        fprintf(stderr, "tlsmint transparent: %s%s\n", err,
                o.to_port == 0 ? " (or give --to-port)" : "");
        return 1;
    }
    if (have_cfg && o.to_port == 0) {
        const char *colon = strrchr(cfg.listen_transparent, ':');
        o.to_port = colon != NULL ? atoi(colon + 1) : 0;
        if (o.to_port <= 0) {
            fprintf(stderr, "tlsmint transparent: %s has no [listen] transparent port: set it, "
                            "or give --to-port\n", o.conf);
            return 1;
        }
    }
    if (have_cfg && !o.mode_set) {
        o.tproxy = cfg.listen_tproxy;
    }
    if (have_cfg && o.exclude_uid < 0 && o.exclude_mark < 0 && cfg.upstream_mark != 0) {
        o.exclude_mark = cfg.upstream_mark;
    }
    if (o.tproxy && o.exclude_uid >= 0) {
        fprintf(stderr, "tlsmint transparent: --exclude-uid needs --mode redirect (TPROXY only "
                        "sees traffic from other hosts)\n");
        return 2;
    }
    return do_setup(&o);
}
