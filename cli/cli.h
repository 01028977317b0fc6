/* SPDX-License-Identifier: MIT */
/*
 * cli.h - the tlsmint program's subcommands (private to cli/).
 * Each returns the process exit status and prints one clear line on stderr on failure.
 */
#ifndef CLI_H
#define CLI_H

#include <openssl/x509.h>

#include "hsm.h"

int cli_init(int argc, char **argv);
int cli_hsm_status(int argc, char **argv);
int cli_run(int argc, char **argv);
int cli_mint(int argc, char **argv);

/* Path of the running tlsmint binary (for spawning signers). */
const char *cli_self_exe(void);
/* Loads -c CONFIG (default ./var/tlsmint.conf); prints the error and returns non-zero on failure. */
int cli_load_config(const char *path, struct px_cfg *cfg);


#endif
