/* SPDX-License-Identifier: MIT */
/*
 * fuzz_dp.h - the dataplane world the TLS fuzz targets run in: one loop without a ring, one
 * generation made by the real dp_tls_ctx_init and dp_policy_load from a real config, and
 * connections made by dp_conn_new with no sockets (fd -1), so the stage functions run as on a
 * loop thread but no I/O is ever armed. Both sides' bytes go through the memory BIOs.
 */
#ifndef FUZZ_DP_H
#define FUZZ_DP_H

#include "dp_int.h"

/* [policy] bypass of the world: the python seed's SNI and rsa.example are bypassed */
#define FZ_DP_BYPASS "py.fuzz.example, .rsa.example, *.bank.example"

/* Makes the world once; upstream_ca is the [upstream] ca_file (NULL: the system bundle). */
void fz_dp_init(const char *upstream_ca);
/* A new transparent connection to 192.0.2.10:443 whose upstream is already "connected". */
struct dp_conn *fz_dp_conn(void);
/* Ends c the way a loop would if it went away: abort, release (access-log line included). */
void fz_dp_end(struct dp_conn *c);
/* The leaf the leaf stage would install (EC or RSA as c->keykind asks), and the move to the
 * client handshake, as dp_leaf.c does once certcache answers. */
void fz_dp_give_leaf(struct dp_conn *c);

#endif
