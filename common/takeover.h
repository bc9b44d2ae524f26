/* takeover.h: what `kbridge connect` changes in the cluster, and how it is undone.
 *
 * Everything needed to undo a takeover is stored in the cluster itself, on the
 * objects it changed, so that whichever side survives (the CLI, `kbridge
 * restore` on another machine, or the agent after its lease expires) can put the
 * cluster back from the annotations alone.
 *
 * Objects (namespace of the Service, all labelled
 * app.kubernetes.io/managed-by=kbridge and kbridge.dev/service=<svc>):
 *   Deployment      kbridge-agent-<svc>          the agent, pods labelled kbridge.dev/agent=<svc>
 *   ServiceAccount  kbridge-agent-<svc>
 *   Role/RoleBinding kbridge-agent-<svc>         only what the agent's restore needs
 *   Secret          kbridge-agent-<svc>-tls      ca.crt, ca.key, agent.crt, agent.key
 *   Service         <svc>-kbridge-origin         routing mode: selects the original pods
 * Annotations on the taken-over Service:
 *   kbridge.dev/original-selector   JSON of the selector before the takeover
 *   kbridge.dev/agent-selector      JSON of the selector kbridge put there
 *   kbridge.dev/takeover            JSON: {"mode","since","by","agent","workload"}
 * Annotation on the workload (exclusive mode only):
 *   kbridge.dev/original-replicas   the replica count before scaling to 0
 *
 * Restore never overwrites someone else's change: if the Service's selector is no
 * longer the agent selector, it leaves the selector alone and reports a conflict
 * (the kbridge objects are still removed). Every step is idempotent: an object
 * already gone, or an annotation already removed, counts as done. */
#ifndef KB_TAKEOVER_H
#define KB_TAKEOVER_H

#include <stddef.h>

struct kube;

#define TAKEOVER_ANN_ORIGINAL_SELECTOR "kbridge.dev/original-selector"
#define TAKEOVER_ANN_AGENT_SELECTOR "kbridge.dev/agent-selector"
#define TAKEOVER_ANN_TAKEOVER "kbridge.dev/takeover"
#define TAKEOVER_ANN_ORIGINAL_REPLICAS "kbridge.dev/original-replicas"
#define TAKEOVER_LABEL_MANAGED "app.kubernetes.io/managed-by"
#define TAKEOVER_LABEL_SERVICE "kbridge.dev/service"
#define TAKEOVER_LABEL_AGENT "kbridge.dev/agent"

/* What restore did, for the caller to print. Lines are "\n"-separated, human
 * readable ("service shop/api: selector restored to {\"app\":\"api\"}"). */
struct takeover_report {
  char text[4096];
  int conflicts; /* things left alone because someone else changed them */
  int changed;   /* objects changed or deleted by this call */
};

/* Put the cluster back for ns/service from the annotations alone: restore the
 * selector (unless it was changed by someone else: conflict), delete the shadow
 * Service, restore the workload's replicas (exclusive mode), delete the agent's
 * Deployment, Secret, RBAC objects and ServiceAccount, and remove the
 * annotations. Idempotent: running it again, or on a Service never taken over,
 * changes nothing and returns 0.
 * The agent's Deployment is deleted last, so an agent restoring itself is not
 * stopped before it has finished.
 * Returns 0 (report filled), or -1 with err set when an API call failed in a way
 * that left work undone (running it again will finish it). */
int takeover_restore(struct kube *k, const char *ns, const char *service,
                     struct takeover_report *rep, char *err, size_t errlen);

#endif
