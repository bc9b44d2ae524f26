/* certs.h: `kbridge certs init` and `kbridge certs issue`, thin commands over the
 * mini CA of common/tls.h. */
#ifndef KB_CERTS_H
#define KB_CERTS_H

#include "optparse.h"

struct certs_config {
  const char *dir;        /* DIR (positional) */
  char key[OPT_KEY_SIZE]; /* issue: --key */
  int ed25519;            /* --ed25519: Ed25519 keys instead of ECDSA P-256 */
  int force;              /* init: --force replaces an existing CA */
  const char *identity;   /* issue: --identity, the name the certificate is bound to */
};

extern const struct opt_cmd certs_init_cmd, certs_issue_cmd;

/* Run the command; prints what was written on stdout, errors on stderr.
 * Returns the exit status (0 or 1). */
int certs_init_run(struct certs_config *cfg);
int certs_issue_run(struct certs_config *cfg);

#endif
