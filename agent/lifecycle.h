/* lifecycle.h: the agent puts the cluster back by itself when its developers
 * are gone (the "lease").
 *
 * Enabled by --service (in the cluster, with the pod's service account). The
 * agent watches how many developers (route keys) are connected:
 *   - the last developer leaves cleanly (its tunnels ended with a GOAWAY from
 *     the developer's side: `kbridge connect` stopping) -> after --grace-seconds
 *     without a developer coming back, restore;
 *   - no developer at all for --lease-seconds (none connected since start, or
 *     the last tunnel was lost without a GOAWAY: CLI killed, laptop asleep,
 *     network gone) -> restore.
 * A developer (re)connecting before the deadline cancels it. A developer whose
 * tunnels were lost keeps the whole lease even when another one then leaves
 * cleanly (their CLI may be reconnecting).
 *
 * Restore = takeover_restore() (common/takeover.h) run in a thread of its own,
 * with its own blocking Kubernetes client built from the pod's service account,
 * so the event loop keeps serving traffic while the API calls run. A failed
 * restore is retried with back-off (5 s doubling to 60 s) until it succeeds;
 * once started, a restore is never called off (the cluster may already be half
 * put back). When it has succeeded, `done` is called from the loop: the agent
 * then stops and exits 0 (takeover_restore deleted its Deployment last, so the
 * pod is going away anyway).
 *
 * Every decision is logged at info level. State for /healthz and /metrics:
 * lifecycle_json() and lifecycle_metrics(). Single-threaded apart from the
 * restore thread, which touches only its own job struct. */
#ifndef AGENT_LIFECYCLE_H
#define AGENT_LIFECYCLE_H

#include <stddef.h>

struct event_base;
struct evbuffer;
struct route_table;
struct lifecycle;
struct takeover_report;

/* The restore function (takeover_restore, or a fake in tests). It runs in the
 * restore thread. Returns 0 (report filled) or -1 with err. */
typedef int (*lifecycle_restore_fn)(const char *ns, const char *service,
                                    struct takeover_report *rep, char *err, size_t errlen);

struct lifecycle_config {
  const char *namespace; /* NULL or "": the pod's own (service account namespace file) */
  const char *service;   /* the taken-over Service */
  long lease_seconds;    /* restore after this long with no developer */
  long grace_seconds;    /* restore this long after the last developer left cleanly */
  lifecycle_restore_fn restore; /* NULL: in-cluster client + takeover_restore() */
};

/* Start watching. routes is the agent's route table (read only, from the
 * loop). done(arg) is called from the loop once a restore has succeeded.
 * Checks now that the in-cluster configuration loads (service account files,
 * KUBERNETES_SERVICE_HOST), so a pod without them fails at start with a clear
 * error rather than when the lease runs out. Returns NULL with err. */
struct lifecycle *lifecycle_new(struct event_base *base, const struct route_table *routes,
                                const struct lifecycle_config *cfg, void (*done)(void *arg),
                                void *arg, char *err, size_t errlen);

/* A developer's tunnel for key closed (after its key was taken out of the route
 * table), err being the tunnel's reason. If it was the last developer, err
 * tells a clean leave (the peer's GOAWAY) from a lost tunnel. Optional: a 1 s
 * tick notices departures too, but cannot tell how they ended (treated as
 * lost). */
void lifecycle_tunnel_closed(struct lifecycle *lc, const char *key, const char *err);

/* Re-evaluate now (a developer registered). Also done every second. */
void lifecycle_check(struct lifecycle *lc);

/* Append ,"lifecycle":{...} members to a JSON object being written to b. */
void lifecycle_json(const struct lifecycle *lc, struct evbuffer *b);
/* Append the Prometheus lines (kbridge_developers, kbridge_lease_seconds_remaining,
 * kbridge_restores_total) to b. lc may be NULL (lease off: only kbridge_developers
 * from routes). */
void lifecycle_metrics(const struct lifecycle *lc, const struct route_table *routes,
                       struct evbuffer *b);

/* Stop the timer; if a restore is running, wait for it to finish (it is what
 * puts the cluster back; the pod's termination grace covers it). */
void lifecycle_free(struct lifecycle *lc);

#endif
