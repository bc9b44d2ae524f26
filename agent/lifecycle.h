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
 * Restore = the program kbridge-agent-restore (agent/restore_main.c:
 * takeover_restore() of common/takeover.h with a Kubernetes client built from
 * the pod's service account) run as a child process, so the event loop keeps
 * serving traffic while the API calls run, and the agent itself does not link
 * the Kubernetes client (libcurl and its dependencies would cost it ~4 MB of
 * resident memory). Its output is logged line by line. A failed
 * restore is retried with back-off (5 s doubling to 60 s) until it succeeds;
 * once started, a restore is never called off (the cluster may already be half
 * put back). When it has succeeded, `done` is called from the loop: the agent
 * then stops and exits 0 (takeover_restore deleted its Deployment last, so the
 * pod is going away anyway).
 *
 * Every decision is logged at info level. State for /healthz and /metrics:
 * lifecycle_json() and lifecycle_metrics(). Single-threaded. */
#ifndef AGENT_LIFECYCLE_H
#define AGENT_LIFECYCLE_H

#include <stddef.h>

struct event_base;
struct evbuffer;
struct route_table;
struct lifecycle;

struct lifecycle_config {
  const char *namespace; /* NULL or "": the pod's own (service account namespace file) */
  const char *service;   /* the taken-over Service */
  const char *takeover_id; /* NULL or "": any; else the restore leaves a newer takeover alone */
  long lease_seconds;    /* restore after this long with no developer */
  long grace_seconds;    /* restore this long after the last developer left cleanly */
  /* The restore program, run as PROGRAM --namespace NS --service SVC
   * [--takeover-id ID]: exit 0
   * when restored, else non-zero with the reason as its last output line.
   * NULL: the real one, $KBRIDGE_AGENT_RESTORE if set, else kbridge-agent-restore
   * in the directory of the running executable (/proc/self/exe); the in-cluster
   * configuration is then checked at start. Tests give a fake. */
  const char *restore_program;
};

/* Start watching. routes is the agent's route table (read only, from the
 * loop). done(arg) is called from the loop once a restore has succeeded.
 * Without cfg->restore_program, checks now that the in-cluster configuration is
 * there (service account files, KUBERNETES_SERVICE_HOST) and that the restore
 * program is executable, so a pod without them fails at start with a clear
 * error rather than when the lease runs out. Returns NULL with err. */
struct lifecycle *lifecycle_new(struct event_base *base, const struct route_table *routes,
                                const struct lifecycle_config *cfg, void (*done)(void *arg),
                                void *arg, char *err, size_t errlen);

/* A developer's tunnel for key closed (after its key was taken out of the route
 * table), err being the tunnel's reason (for the log). left: the developer
 * left on purpose (its GOAWAY's code, frame_goaway_is_leave()); if it was the
 * last developer that is a clean leave, else a lost tunnel. Optional: a 1 s
 * tick notices departures too, but cannot tell how they ended (treated as
 * lost). */
void lifecycle_tunnel_closed(struct lifecycle *lc, const char *key, const char *err, int left);

/* Re-evaluate now (a developer registered). Also done every second. */
void lifecycle_check(struct lifecycle *lc);

/* Append ,"lifecycle":{...} members to a JSON object being written to b. */
void lifecycle_json(const struct lifecycle *lc, struct evbuffer *b);
/* Append a ,"leases":{...} member to a JSON object being written to b: every
 * route key with a live lease, which is what a disconnecting developer asks
 * when deciding whether it is the last one. A key with tunnels now:
 * {"tunnels":N}. A key whose tunnels were all lost without a GOAWAY less than
 * --lease-seconds ago (its CLI may be reconnecting: Wi-Fi, laptop lid, API
 * server restart): {"tunnels":0,"lost_seconds":S,"seconds_remaining":R}. lc may
 * be NULL (lease off): then only the keys with tunnels. */
void lifecycle_leases_json(const struct lifecycle *lc, const struct route_table *routes,
                           struct evbuffer *b);
/* Append the Prometheus lines (kbridge_developers, kbridge_lease_seconds_remaining,
 * kbridge_restores_total) to b. lc may be NULL (lease off: only kbridge_developers
 * from routes). */
void lifecycle_metrics(const struct lifecycle *lc, const struct route_table *routes,
                       struct evbuffer *b);

/* Stop the timers; if a restore is running, wait for the process to finish,
 * logging its output (it is what puts the cluster back; the pod's termination
 * grace covers it). */
void lifecycle_free(struct lifecycle *lc);

#endif
