/* agentpod.h: what a developer may add to the agent's pod, and why the cluster
 * refused to create it.
 *
 * Real clusters put conditions on pods: a private registry (imagePullSecrets),
 * dedicated nodes (nodeSelector, tolerations), a ResourceQuota or LimitRange
 * (resources), admission policies that want certain labels or annotations
 * (Kyverno, Gatekeeper, OpenShift SCC, Istio's sidecar.istio.io/inject). The
 * connect flags --image-pull-secret, --node-selector, --toleration,
 * --agent-requests, --agent-limits, --agent-label and --agent-annotation (and the
 * same keys in kbridge.yaml) are checked here, all before the first write, and
 * then written into the agent Deployment's pod template.
 *
 * When admission refuses the pod anyway, its ReplicaSet cannot create it and
 * records a ReplicaFailure condition (reason FailedCreate, the API server's
 * message), which the Deployment controller copies onto the Deployment:
 * agentpod_refusal() reads it there, so `connect` stops at once with that
 * message instead of waiting for a pod that will never exist. */
#ifndef KB_AGENTPOD_H
#define KB_AGENTPOD_H

#include <stddef.h>

#include <cjson/cJSON.h>

#include "optparse.h"

/* The flags as given (any may be NULL or empty). */
struct agentpod_flags {
  const struct opt_list *pull_secrets; /* NAME */
  const struct opt_list *node_selector;/* KEY=VALUE */
  const struct opt_list *tolerations;  /* KEY[=VALUE][:EFFECT] */
  const struct opt_list *labels;       /* KEY=VALUE */
  const struct opt_list *annotations;  /* KEY=VALUE */
  const char *requests;                /* cpu=Q,memory=Q,ephemeral-storage=Q */
  const char *limits;
};

/* The agent's default resources (requests cpu 50m, memory 32Mi; limit memory
 * 256Mi), adjusted by the flags. */
#define AGENTPOD_REQ_CPU "50m"
#define AGENTPOD_REQ_MEMORY "32Mi"
#define AGENTPOD_LIMIT_MEMORY "256Mi"

/* The checked result: JSON fragments for the pod template (owned). */
struct agentpod {
  cJSON *pull_secrets;  /* [{"name":...}] or NULL */
  cJSON *node_selector; /* {} or NULL */
  cJSON *tolerations;   /* [...] or NULL */
  cJSON *labels;        /* {} or NULL */
  cJSON *annotations;   /* {} or NULL */
  cJSON *resources;     /* {"requests":{},"limits":{}}, always */
};

/* Check every flag and build ap. Returns 0, or -1 with a one-line err naming
 * the flag, the value and what is expected (ap then holds nothing). */
int agentpod_parse(const struct agentpod_flags *f, struct agentpod *ap, char *err, size_t errlen);
void agentpod_clear(struct agentpod *ap);

/* 1 if the extra labels contain every pair of selector (the Service's original
 * selector): the agent pod would then be selected as one of the original pods. */
int agentpod_selected_by(const struct agentpod *ap, const cJSON *selector);

/* Write ap into the pod template of the Deployment object dep (spec.template):
 * labels and annotations merged into its metadata (ours win: they were refused
 * as flags), the rest into its spec; resources replace the container's. */
void agentpod_apply(const struct agentpod *ap, cJSON *dep);

/* Read a Deployment as returned by the API (or a ReplicaSet: same shape). If
 * its status has a ReplicaFailure condition, the message goes to why and the
 * result is 1 when creation was refused for good (admission: "is forbidden",
 * "is invalid", a denying webhook), 2 when the failure may pass (the message is
 * still worth showing). 0: no failure recorded. */
int agentpod_refusal(const cJSON *dep, char *why, size_t len);

/* Kubernetes syntax checks, exposed for the tests. 1 valid, 0 not. */
int agentpod_label_key_ok(const char *k);   /* [prefix/]name */
int agentpod_label_value_ok(const char *v); /* "" or a name of <= 63 */
int agentpod_quantity(const char *q, double *out); /* "100m", "64Mi", "1e3" */

#endif
