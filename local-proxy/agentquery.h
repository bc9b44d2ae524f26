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

/* Find a Ready pod labelled kbridge.dev/agent=<service> and the container port
 * named kb-metrics of the agent Deployment, fetch /healthz, and return the JSON
 * object in *out (caller frees with cJSON_Delete). Blocks up to about 5 s.
 * Returns 0, or -1 with err (no ready pod, port-forward refused, bad answer). */
int agent_healthz(struct kube *k, const char *ns, const char *service, struct cJSON **out,
                  char *err, size_t errlen);

#endif
