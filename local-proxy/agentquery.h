/* agentquery.h: ask a running agent who is connected, through the API server.
 *
 * GET /healthz on the agent pod's metrics port over a pod port-forward (the
 * same carrier as the tunnels, without TLS: the metrics port is plain HTTP
 * inside the pod). The answer is "ok\n" and a JSON object
 *   {"keys":{"alice":2,...},"exclusive":false,"tunnels":3,"connections":0}
 * where each key counts its registered tunnels. */
#ifndef KB_AGENTQUERY_H
#define KB_AGENTQUERY_H

#include <stddef.h>

struct kube;
struct cJSON;

/* Find the Ready pods labelled kbridge.dev/agent=<service> and the container
 * port named kb-metrics of the agent Deployment, fetch /healthz of each, and
 * return in *out (caller frees with cJSON_Delete) their answers merged: every
 * agent pod routes over its own tunnels (docs/reliability.md), so a key counts
 * as connected when any pod has its tunnels ("keys" and the counters summed,
 * "identities" joined, "exclusive" if any says so; a key's "leases" entry
 * held with the tunnels summed when any pod has its tunnels, else the lost
 * lease that ends last; "lifecycle" is the first pod's). A pod that does not answer is left out. Blocks up to about 5 s per
 * pod. Returns 0, or -1 with err (no ready pod, or none answered). */
int agent_healthz(struct kube *k, const char *ns, const char *service, struct cJSON **out,
                  char *err, size_t errlen);

#endif
