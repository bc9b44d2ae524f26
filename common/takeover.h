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
 *   NetworkPolicy   kbridge-agent-<svc>, kbridge-<svc>-from-agent, kbridge-<svc>-egress-<policy>
 *                                                only in a namespace whose policies isolate the
 *                                                agent or the Service's pods (local-proxy/netpol.h);
 *                                                owned by the agent's Deployment
 * Annotations on the taken-over Service:
 *   kbridge.dev/original-selector   JSON of the selector before the takeover
 *   kbridge.dev/agent-selector      JSON of the selector kbridge put there
 *   kbridge.dev/takeover            JSON: {"mode","since","by","agent","workload"}
 *                                   (workload: {"kind","name"}; kind "Pods" for bare pods)
 *   kbridge.dev/route-<key>         JSON: {"by","since","pid","host"} one per connected
 *                                   developer, removed at disconnect (for kbridge list)
 *   kbridge.dev/original-traffic-policy  JSON, only when a policy was Local:
 *                                   {"internalTrafficPolicy":"Local",
 *                                    "externalTrafficPolicy":"Local","healthCheckNodePort":N}
 *                                   (the fields that were set), see takeover_policy_cluster()
 *   kbridge.dev/paused-gitops       "kustomize.toolkit.fluxcd.io/reconcile": connect
 *                                   --pause-gitops set that annotation to "disabled"
 *                                   (it was absent); restore removes both
 * Restore removes every kbridge.dev/ annotation from the Service.
 * Annotation on the workload (exclusive mode only):
 *   kbridge.dev/original-replicas   the replica count before scaling to 0
 * Ingress clones (connect --ingress; networking.k8s.io/v1, owned by the agent's
 * Deployment so that the garbage collector removes them with it):
 *   Ingress         <ingress>-kbridge-<key>      a copy of an Ingress routing to the
 *                                                Service, every host H as <key>.H;
 *                                                annotations kbridge.dev/route-key and
 *                                                kbridge.dev/clone-of (the original)
 *
 * Restore never overwrites someone else's change: if the Service's selector is no
 * longer the agent selector, it leaves the selector alone and reports a conflict
 * (the kbridge objects are still removed). Two exceptions, both ours: a selector
 * already put back to the original counts as restored, and a selector that
 * holds the agent selector's keys plus others (a re-apply of the manifest merged
 * them; it matches no pod) has our keys removed (restored when what is left is
 * the original, else a conflict with their selector kept without our keys). Every step is idempotent: an object
 * already gone, or an annotation already removed, counts as done. */
#ifndef KB_TAKEOVER_H
#define KB_TAKEOVER_H

#include <stddef.h>

struct kube;

#define TAKEOVER_ANN_ORIGINAL_SELECTOR "kbridge.dev/original-selector"
#define TAKEOVER_ANN_AGENT_SELECTOR "kbridge.dev/agent-selector"
#define TAKEOVER_ANN_TAKEOVER "kbridge.dev/takeover"
/* On every object connect creates: the takeover it belongs to (the "id" of
 * the Service's TAKEOVER_ANN_TAKEOVER), so that the restore of an agent whose
 * takeover has ended never removes a newer takeover's objects of the same name. */
#define TAKEOVER_ANN_TAKEOVER_ID "kbridge.dev/takeover-id"
#define TAKEOVER_ANN_ORIGINAL_REPLICAS "kbridge.dev/original-replicas"
#define TAKEOVER_LABEL_MANAGED "app.kubernetes.io/managed-by"
#define TAKEOVER_LABEL_SERVICE "kbridge.dev/service"
#define TAKEOVER_LABEL_AGENT "kbridge.dev/agent"
#define TAKEOVER_ANN_ROUTE_KEY "kbridge.dev/route-key"
#define TAKEOVER_ANN_CLONE_OF "kbridge.dev/clone-of"
#define TAKEOVER_ANN_ORIGINAL_POLICY "kbridge.dev/original-traffic-policy"

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
 * stopped before it has finished. While it exists, its ServiceAccount, Role and
 * RoleBinding are left to the garbage collector (they carry an ownerReference
 * to it, set by connect): an agent deleting its own RoleBinding would lose the
 * right to delete the rest. Once it is gone they are deleted directly.
 * After putting the selector back it waits (TAKEOVER_ENDPOINTS_WAIT_S at most)
 * until the Service's Endpoints show the original pods, then
 * TAKEOVER_PROXY_GRACE_MS for kube-proxy, so that clients are never sent to an
 * agent already gone; the report says how long, or that it gave up.
 * Returns 0 (report filled), or -1 with err set when an API call failed in a way
 * that left work undone (running it again will finish it). */
int takeover_restore(struct kube *k, const char *ns, const char *service,
                     struct takeover_report *rep, char *err, size_t errlen);

/* takeover_restore() for a caller with fewer rights (kbridge-signer's janitor,
 * signer/janitor.h): with TAKEOVER_RESTORE_GC, what the agent's Deployment owns
 * (shadow Service, Secret, RBAC objects, policies, clones) is left to the
 * garbage collector, so no right on Secrets or RBAC objects is needed; the
 * leftovers of an agent already deleted are then reported, not removed. */
#define TAKEOVER_RESTORE_GC 1
int takeover_restore_flags(struct kube *k, const char *ns, const char *service, int flags,
                           struct takeover_report *rep, char *err, size_t errlen);

/* takeover_restore() of one takeover only (the agent's lease; id from its
 * --takeover-id): when the Service is taken over by another takeover (its
 * TAKEOVER_ANN_TAKEOVER "id" differs), or is not taken over and the agent's
 * Deployment belongs to another (its TAKEOVER_ANN_TAKEOVER_ID differs), that
 * newer takeover has replaced this one: nothing is touched, the report says so,
 * and 0 is returned. Objects of a takeover older than ids (no id) count as this
 * one's. Leftovers carrying another id are never deleted. */
int takeover_restore_id(struct kube *k, const char *ns, const char *service, const char *id,
                        struct takeover_report *rep, char *err, size_t errlen);

/* A fresh takeover id (16 lowercase hex digits from the OS's random source)
 * into out (at least 17 bytes). 0, or -1 if the OS gave no random bytes. */
int takeover_new_id(char *out, size_t outlen);

/* How long takeover_restore() waits, after putting the selector back, for the
 * Service's Endpoints to show the original pods before it deletes the shadow
 * Service and the agent (which keep serving meanwhile). */
#define TAKEOVER_ENDPOINTS_WAIT_S 10
/* Then, once they do, how long the agent is kept for kube-proxy on every node
 * to follow the Endpoints (its default minimum sync period is 1 s; not
 * observable through the API). */
#define TAKEOVER_PROXY_GRACE_MS 2000

/* Do the Endpoints object ep (v1) of service show the switch back: at least one
 * ready address and no address (ready or not) of an agent pod (a pod named
 * kbridge-agent-<service>-...)? 1 or 0; the counts of ready non-agent
 * addresses and of agent addresses into *n_ready, *n_agent (may be NULL). */
struct cJSON;
int takeover_endpoints_switched(const struct cJSON *ep, const char *service, int *n_ready,
                                int *n_agent);

/* The other way, after the switch to the agent: do the Endpoints show the
 * takeover, at least one ready agent address and no address (ready or not) of
 * another pod? 1 or 0; the counts of ready agent addresses and of the others'
 * into *n_agent, *n_other (may be NULL). connect waits for it before `ready`
 * (at most TAKEOVER_ENDPOINTS_WAIT_S), then TAKEOVER_PROXY_GRACE_TAKE_MS. */
int takeover_endpoints_taken(const struct cJSON *ep, const char *service, int *n_agent,
                             int *n_other);
/* kube-proxy's allowance after the Endpoints show the agent: its default
 * minimum sync period (1 s). Shorter than the restore's: a request that comes
 * early is only a developer's routed request answered by the real pods, never
 * an outage. */
#define TAKEOVER_PROXY_GRACE_TAKE_MS 1000

/* Delete the Ingress clones of ns/service made for route key (NULL: for every
 * key); takeover_restore() calls it with NULL before anything else is deleted.
 * Without the right to list Ingresses (the agent's own Role has none), the
 * clones are left to the garbage collector (they are owned by the agent's
 * Deployment) and that is reported. 0 (rep filled, appended to), or -1 with err. */
int takeover_remove_ingress_clones(struct kube *k, const char *ns, const char *service,
                                   const char *key, struct takeover_report *rep, char *err,
                                   size_t errlen);

/* ---- helpers shared with the apply side (kbridge connect) ---- */

struct cJSON;

/* The longest Service name that can be taken over: "<svc>-kbridge-origin" must
 * still be a Service name (63 characters). */
#define TAKEOVER_MAX_SERVICE 48

/* How a taken-over Service's selector sel stands, given the agent selector
 * kbridge put there (mine) and the one before the takeover (orig, may be NULL):
 *   AGENT     sel is mine: the takeover is in place;
 *   ORIGINAL  sel is orig: put back (by restore, or by a session after a re-apply);
 *   MERGED    sel holds every key of mine plus others: a `kubectl apply`, Helm or
 *             GitOps re-sync merged the manifest's selector with ours; it matches
 *             no pod (the agent pods carry none of the manifest's labels);
 *   OTHER     anything else: someone replaced it, theirs stands.
 * MERGED is never left in place: takeover_selector_unmerge() gives sel without
 * mine's keys (the manifest's selector), what restore and connect write back. */
enum takeover_sel { TAKEOVER_SEL_AGENT, TAKEOVER_SEL_ORIGINAL, TAKEOVER_SEL_MERGED, TAKEOVER_SEL_OTHER };
enum takeover_sel takeover_selector_state(const struct cJSON *sel, const struct cJSON *mine,
                                          const struct cJSON *orig);
/* A new object (caller owns it): sel without the keys of mine. */
struct cJSON *takeover_selector_unmerge(const struct cJSON *sel, const struct cJSON *mine);

/* Traffic policies (issue 17 item 8). With internalTrafficPolicy or
 * externalTrafficPolicy Local, a client is served only by endpoints on its own
 * node; the agent is one pod on one node, so clients on every other node would
 * lose the Service. For the takeover each Local policy becomes Cluster, and is
 * put back exactly by every restore (CLI, `kbridge restore`, the agent's lease).
 *
 * takeover_policy_cluster(): in the Service object svc (as read, about to be
 * written back), set each Local policy to Cluster and record what was there in
 * annotation TAKEOVER_ANN_ORIGINAL_POLICY (with spec.healthCheckNodePort, which
 * only Local LoadBalancer Services have and which is dropped with it, so that
 * the restore asks for the same port again). An annotation already there is
 * kept (it holds the original of an earlier call of the same takeover) and
 * only completed. Returns the number of policies changed (0: none was Local);
 * what gets "externalTrafficPolicy" / "internalTrafficPolicy and
 * externalTrafficPolicy" for a message. */
int takeover_policy_cluster(struct cJSON *svc, char *what, size_t whatlen);
/* Put back into svc what the annotation recorded (the annotation itself stays,
 * restore removes every kbridge.dev/ annotation). Returns 1 if something was
 * put back (what: "externalTrafficPolicy Local, healthCheckNodePort 31234"), 0
 * if nothing was recorded, -1 if the annotation is not a JSON object (svc
 * unchanged). */
int takeover_policy_restore(struct cJSON *svc, char *what, size_t whatlen);

/* connect --pause-gitops: Flux's per-object switch, set on the Service while it
 * is taken over. kbridge records that it set it (TAKEOVER_ANN_PAUSED_GITOPS,
 * whose value is the annotation's name) so that every restore removes it; an
 * annotation that was there before is never touched.
 * takeover_gitops_pause(svc): sets it and the record in metadata.annotations
 * when it is absent; returns 1 when it did, 0 when it was already there (ours
 * or someone else's: left as it is).
 * takeover_gitops_unpause(svc): when the record is there and the annotation
 * still says "disabled", removes the annotation (the record itself goes with
 * the other kbridge.dev/ annotations); returns 1 when it removed it. */
#define TAKEOVER_FLUX_RECONCILE "kustomize.toolkit.fluxcd.io/reconcile"
#define TAKEOVER_ANN_PAUSED_GITOPS "kbridge.dev/paused-gitops"
int takeover_gitops_pause(struct cJSON *svc);
int takeover_gitops_unpause(struct cJSON *svc);

/* The longest route key connect accepts: the annotation kbridge.dev/route-<key>
 * must have a name part ("route-<key>") of at most 63 characters. Checked
 * before the first write (a key of 58-63 characters, a valid DNS label, used to
 * be refused by the API server only after the Service was switched). */
#define TAKEOVER_MAX_ROUTE_KEY 57

/* The names of the kbridge objects of a Service. */
struct takeover_names {
  char agent[80];  /* kbridge-agent-<svc>: Deployment, ServiceAccount, Role, RoleBinding */
  char secret[88]; /* kbridge-agent-<svc>-tls */
  char origin[80]; /* <svc>-kbridge-origin: the shadow Service */
};
/* 0, or -1 when service is empty or longer than TAKEOVER_MAX_SERVICE. */
int takeover_names(const char *service, struct takeover_names *out);

/* metadata.annotations[key] of obj as a string, or NULL. Borrowed from obj. */
const char *takeover_annotation(const struct cJSON *obj, const char *key);
/* 1 if obj carries app.kubernetes.io/managed-by=kbridge. */
int takeover_is_managed(const struct cJSON *obj);
/* "Deployment"/"StatefulSet"/"ReplicaSet" -> its apps/v1 plural; else NULL. */
const char *takeover_workload_resource(const char *kind);

/* The clone of Ingress ing (as read, networking.k8s.io/v1) for route key:
 * name <ingress>-kbridge-<key>, labels managed-by=kbridge and
 * kbridge.dev/service=service, the two clone annotations plus the original's
 * annotations (except kubectl's last-applied-configuration and cert-manager.io/:
 * a clone must never make a certificate into the original's Secret), its
 * ingressClassName, every rule with a host H as <key>.H with all its paths,
 * spec.tls hosts rewritten the same way (same Secrets), no defaultBackend.
 * Rules without a host and wildcard hosts are left out: they already match
 * <key>.<anything>. Returns the new object (the caller owns it), or NULL: with
 * err "" when ing does not route to service or is a clone made by kbridge
 * (nothing to say), else with why in err (no rule with a host to rewrite, a
 * name too long). */
struct cJSON *takeover_ingress_clone(const struct cJSON *ing, const char *service,
                                     const char *key, char *err, size_t errlen);

#endif
