/* proxy.h: `kbridge proxy`, the developer side of the tunnel.
 *
 * Keeps N mutually authenticated TLS tunnels to the agent, each registered with
 * the developer's route key. Streams the agent opens (cluster requests for the
 * key) are spliced to the developer's local process; local --forward listeners
 * open streams the other way, to addresses inside the cluster. Lost tunnels are
 * reconnected with exponential backoff; a permanent refusal by the agent (key
 * not in the certificate, invalid key, service held exclusively by someone
 * else) ends the program with status 1.
 *
 * stdout carries machine-readable lines (tests and tools wait for them):
 *   forward 127.0.0.1:40123 -> store.shop:8080     once per listener, actual port
 *   ready: route alice -> 127.0.0.1:5000 (1 of 2 tunnels up)   first registration
 * Everything else is logged on stderr. */
#ifndef KB_PROXY_H
#define KB_PROXY_H

#include "log.h"
#include "options.h"

struct proxy_config {
  struct hostport agent;    /* --agent */
  const char *tls_dir;      /* --tls-dir: ca.crt, KEY.crt, KEY.key */
  char key[OPT_KEY_SIZE];   /* --route-as */
  int local_port;           /* --local-port */
  const char *local_host;   /* --local-host */
  int tunnels;              /* --tunnels */
  struct opt_forwards forwards;
  int exclusive;            /* --exclusive: ask for all of the service's traffic */
  enum log_level log_level; /* --log-level */
};

extern const struct opt_cmd proxy_cmd; /* the option table of `kbridge proxy` */

/* Run until SIGINT/SIGTERM (returns 0) or a fatal error (logs it, returns 1). */
int proxy_run(struct proxy_config *cfg);

#endif
