/* status.h: the agent's /healthz and /metrics endpoint.
 *
 * A tiny evhttp server: /healthz for the readiness probe and the CLI (keys held,
 * identities, leases), /metrics in Prometheus text format from the counters in
 * metrics.h. It reads the context, the route table, the tunnels and the lease;
 * nothing calls back into it. */
#ifndef AGENT_STATUS_H
#define AGENT_STATUS_H

#include <stddef.h>

struct agent;
struct hostport;

/* Serve /healthz and /metrics on hp. The bound address goes to bound (for the
 * "metrics ADDR:PORT" line). 0, or -1 with err. */
int status_serve(struct agent *ag, const struct hostport *hp, char *bound, size_t boundlen,
                 char *err, size_t errlen);
void status_stop(struct agent *ag);

#endif
