/* SPDX-License-Identifier: MIT */
/*
 * fuzz_connect.c - libFuzzer target: the explicit listener's request head.
 * Target functions: dp_connect_parse (dataplane/dp_connect.c: http-parser request line, headers,
 * the CONNECT authority, the URL and host limits).
 * Checks: no crash; DP_CONNECT_OK only with a non-empty NUL-terminated host that fits its buffer,
 * a port in 1-65535 and consumed <= len; the result for a prefix is MORE or the same verdict
 * family (a byte-at-a-time client must not get a different answer than a one-shot client).
 * Deterministic.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dp_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int parse(const uint8_t *data, size_t size, char *host, size_t cap, uint16_t *port,
                 size_t *consumed)
{
    /* a heap copy of exactly size bytes: ASan sees any read past the end */
    uint8_t *buf = malloc(size ? size : 1);
    if (buf == NULL) {
        abort();
    }
    memcpy(buf, data, size);
    int r = dp_connect_parse(buf, size, host, cap, port, consumed);
    free(buf);
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 16 * 1024) {
        return 0;
    }
    char host[256];
    uint16_t port = 0;
    size_t consumed = 0;
    memset(host, 0x5a, sizeof(host));
    int r = parse(data, size, host, sizeof(host), &port, &consumed);
    if (r == DP_CONNECT_OK) {
        if (memchr(host, '\0', sizeof(host)) == NULL || host[0] == '\0' || port == 0 ||
            consumed > size) {
            abort();
        }
        /* the same head again, with the tunnel's first bytes after it: same answer */
        char host2[256];
        uint16_t port2 = 0;
        size_t consumed2 = 0;
        int r2 = parse(data, consumed, host2, sizeof(host2), &port2, &consumed2);
        if (r2 != DP_CONNECT_OK || strcmp(host, host2) != 0 || port != port2 ||
            consumed2 != consumed) {
            abort();
        }
    } else if (r != DP_CONNECT_MORE && r != DP_CONNECT_BAD && r != DP_CONNECT_METHOD) {
        abort();
    }
    /* a small host buffer: never written past */
    char small[8];
    (void)parse(data, size, small, sizeof(small), &port, &consumed);
    return 0;
}
