/* janitor.h: kbridge-signer's janitor: gives a taken-over Service back to its
 * own pods when its agent is gone for good and no developer's CLI is left to
 * do it (docs/reliability.md).
 *
 * The agent restores the Service itself when its developers are gone (its
 * lease), and `kbridge connect` restores it when the agent's pods stay
 * unready. Neither helps when both are gone: the CLI killed and the agent
 * pods unable to come back (unschedulable, image no longer pullable, nodes
 * lost). The janitor runs in kbridge-signer, which an administrator installs
 * once per cluster: every round it lists the Services of all namespaces, and
 * for each one carrying kbridge.dev/takeover it reads the agent's Deployment
 * (kbridge-agent-<svc>). A Service whose agent has had no ready pod (or no
 * Deployment) at every round for after_s seconds is restored with
 * takeover_restore_flags(TAKEOVER_RESTORE_GC): selector and workload back,
 * then the agent's Deployment deleted; what it owns goes with it (garbage
 * collector), so the janitor needs no right on Secrets or RBAC objects.
 *
 * The bookkeeping (janitor_note, janitor_sweep, janitor_agent_ready) is pure,
 * for tests/unit/signer; janitor_round does the API calls. Single-threaded. */
#ifndef KB_JANITOR_H
#define KB_JANITOR_H

#include <stddef.h>

struct kube;
struct cJSON;

#define JANITOR_MAX 512 /* taken-over Services remembered at once */

struct janitor_entry {
  char ns[64];
  char svc[64];
  double down_since; /* first round that found its agent without a ready pod; 0: ready */
  int seen;          /* noted in the current round */
};

struct janitor {
  struct kube *k;    /* borrowed */
  long after_s;      /* restore after this long without a ready agent pod */
  struct janitor_entry e[JANITOR_MAX];
  size_t n;
  unsigned long restores_ok, restores_failed;
};

/* Does this Deployment (apps/v1, as read) have a ready pod? NULL (no
 * Deployment) is 0. */
int janitor_agent_ready(const struct cJSON *deployment);

/* Note that ns/svc is taken over and whether its agent has a ready pod, at
 * now (seconds, any monotonic clock). Returns 1 when it has had none for
 * after_s seconds (since the first round that saw it so), else 0; *down_for
 * (may be NULL) gets how long. */
int janitor_note(struct janitor *j, const char *ns, const char *svc, int ready, double now,
                 double *down_for);

/* End of a round: forget the Services not noted in it (no longer taken over),
 * and start the next round. */
void janitor_sweep(struct janitor *j);

/* One round of API calls at now: list, note, restore. Errors are logged; the
 * next round tries again. */
void janitor_round(struct janitor *j, double now);

#endif
