/* netpol.h: the agent under the namespace's NetworkPolicies.
 *
 * The agent pod carries only kbridge's labels. In a namespace whose policies
 * isolate pods (a default-deny), nothing may reach it and it may reach nothing,
 * while its probes (from the node) still pass, so the takeover would cut the
 * Service off. Before the first write, connect reads the namespace's policies
 * and plans NetworkPolicies of its own, created with the agent (owned by its
 * Deployment, so they go with it, on restore and on undo):
 *
 *   kbridge-agent-<svc>            selects the agent pod (kbridge.dev/agent=<svc>),
 *                                  only when some policy isolates the agent:
 *       ingress  what the policies selecting the original pods let in, with
 *                their ports mapped onto the agent's listeners (everything
 *                when no policy isolates the original pods for ingress);
 *       egress   what they let out, plus the original pods on their target
 *                ports (unrouted traffic), DNS (port 53, UDP and TCP) and the
 *                API server (the agent's own restore); everything when no
 *                policy isolates the original pods for egress.
 *   kbridge-<svc>-from-agent       selects the original pods (the Service's
 *                                  selector) when a policy isolates them for
 *                                  ingress: the agent may reach them on their
 *                                  target ports (unrouted traffic).
 *   kbridge-<svc>-egress-<policy>  one per policy of the namespace whose egress
 *                                  rules name the original pods (clients of the
 *                                  Service): the same pods may also reach the
 *                                  agent on the mapped ports.
 *
 * Policies in other namespaces cannot be read with a namespace's rights: a
 * client there whose own egress policy names the original pods by label does
 * not reach the agent (docs/user-guide.md, On a real cluster). */
#ifndef LOCAL_PROXY_NETPOL_H
#define LOCAL_PROXY_NETPOL_H

#include <stddef.h>

#include <cjson/cJSON.h>

#include "portplan.h"

struct kube;
struct kube_err;

/* Does a metav1.LabelSelector (matchLabels, matchExpressions) select labels?
 * NULL selects nothing, {} everything. */
int netpol_selects(const cJSON *selector, const cJSON *labels);

/* What the plan is made from (all borrowed). */
struct netpol_input {
  const char *ns, *svc;
  const cJSON *policies;      /* the namespace's NetworkPolicies (a list's items) */
  const cJSON *orig_labels;   /* array of the original pods' label objects (may be empty) */
  const cJSON *orig_selector; /* the Service's selector */
  const cJSON *agent_labels;  /* the agent pod's labels */
  const struct portplan *plan;
  const cJSON *const *specs;  /* pod specs of the workloads (named ports) */
  int nspecs;
  const char *api_ip;         /* the API server's endpoint for the agent, or NULL */
  int api_port;
};

struct netpol_plan {
  cJSON *objs;        /* array of NetworkPolicy objects to create (no ownerReferences yet) */
  char summary[700];  /* one sentence for the progress event, "" when nothing is needed */
};

/* Plan the policies (pure). objs is an empty array when the namespace's
 * policies isolate neither the agent nor a client of the Service. */
void netpol_plan_build(const struct netpol_input *in, struct netpol_plan *out);
void netpol_plan_free(struct netpol_plan *p);

/* connect's inspect step (reads only): list the namespace's policies, find
 * the API server's address (the kubernetes Endpoints when readable, else the
 * kubeconfig's server when it is an IP address), plan, and try every object
 * with a server-side dry run. Returns 0 (plan filled; warn gets a sentence
 * when something could not be checked), 1 when listing the policies, or
 * creating the needed ones, is forbidden (err says what to grant; nothing was
 * written), -1 with err on another failure. */
int netpol_inspect(struct kube *k, struct netpol_input *in, struct netpol_plan *out,
                   char *warn, size_t warnlen, char *err, size_t errlen);

/* Create the planned objects, each owned by the agent's Deployment (uid).
 * Returns 0, or -1 with e (objects already created go with the Deployment). */
int netpol_create(struct kube *k, const char *ns, const char *agent, const char *uid,
                  const struct netpol_plan *p, struct kube_err *e);

#endif
