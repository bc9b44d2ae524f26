/* options.h: the agent's command line, as one declarative table.
 *
 * Every flag has a type, a default and a help line (options.c). Parsing checks
 * every value and reports the first bad one by name; main() prints the message
 * and exits 2. Nothing here does I/O beyond --help/--version output. */
#ifndef AGENT_OPTIONS_H
#define AGENT_OPTIONS_H

#include <stddef.h>

#include "addr.h"
#include "log.h"

#define AGENT_MAX_LISTEN 16

struct agent_options {
  struct hostport listen[AGENT_MAX_LISTEN]; /* --listen, comma-separated */
  size_t nlisten;
  struct hostport fallback;                 /* --fallback HOST:PORT (a name is fine) */
  struct hostport tunnel_listen;            /* --tunnel-listen */
  char tls_dir[4096];                       /* --tls-dir: ca.crt, agent.crt, agent.key */
  int exclusive;                            /* --exclusive: all traffic to one developer */
  char route_header[64];                    /* --route-header, default kubernetes-route-as */
  struct hostport metrics;                  /* --metrics (optional) */
  int have_metrics;
  enum log_level log_level;                 /* --log-level */
  long max_header_bytes;                    /* --max-header-bytes, default 32768 */
  long header_timeout_ms;                   /* --header-timeout-ms, default 10000 */
  long idle_timeout_ms;                     /* --idle-timeout-ms, default 60000 */
  long max_conns;                           /* --max-conns, default 10000 */
  long sniff_timeout_ms;                    /* --sniff-timeout-ms, default 500 */
  long connect_timeout_ms;                  /* --connect-timeout-ms, default 5000 */
  long pool_idle_ms;                        /* --pool-idle-ms, default 4000 */
  long pool_max;                            /* --pool-max, default 10000 per destination */
  long send_timeout_ms;                     /* --send-timeout-ms, default 60000 */
  long buffer_budget;                       /* --buffer-budget, default 32 MiB */
  long max_pending_tunnels;                 /* --max-pending-tunnels, default 64 */
  long tunnel_handshake_timeout_ms;         /* --tunnel-handshake-timeout-ms, default 10000 */
  /* Per-port fallback: listen_fallback[i] is where unrouted traffic of listen[i]
   * goes: its own for a --port-map LISTEN=FALLBACK entry, else --fallback. */
  struct hostport listen_fallback[AGENT_MAX_LISTEN];
  int have_fallback;                        /* --fallback given */
  /* In the cluster (lifecycle.h): enabled by --service. */
  char namespace[64];                       /* --namespace, default the pod's */
  char service[64];                         /* --service: restore this Service when the lease ends */
  char takeover_id[64];                     /* --takeover-id: restore only this takeover ("": any) */
  long lease_seconds;                       /* --lease-seconds, default 60 */
  long grace_seconds;                       /* --grace-seconds, default 5 */
  long drain_seconds;                       /* --drain-seconds, default 0 (stop at once) */
};

enum options_result { OPTIONS_OK = 0, OPTIONS_EXIT_OK = 1, OPTIONS_ERROR = 2 };

/* Parse argv into o (defaults first). On OPTIONS_ERROR a one-line message naming
 * the flag is in err. OPTIONS_EXIT_OK means --help or --version was printed. */
enum options_result options_parse(int argc, char **argv, struct agent_options *o, char *err,
                                  size_t errlen);

#endif
