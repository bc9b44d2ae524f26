/* connect_leave.c: step 5 of `kbridge connect`: our route annotation removed,
 * and the last developer on the Service restores the cluster (takeover.h) and
 * waits until the agent is gone; also the undo of a connect that failed. */
#include "connect_internal.h"

#include <stdio.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "kube.h"

/* ---- 5. leave ---- */

int conn_wait_gone(struct conn *c, int seconds) {
  double deadline = conn_now_s() + seconds;
  const struct kube_ref refs[] = {
      {"apps/v1", "deployments", c->ns, c->nm.agent, NULL},
      {"rbac.authorization.k8s.io/v1", "rolebindings", c->ns, c->nm.agent, NULL},
      {"rbac.authorization.k8s.io/v1", "roles", c->ns, c->nm.agent, NULL},
      {"v1", "serviceaccounts", c->ns, c->nm.agent, NULL},
  };
  for (;;) {
    int left = 0;
    struct kube_err e;
    for (size_t i = 0; i < sizeof refs / sizeof refs[0]; i++) {
      cJSON *d = NULL;
      if (kube_get(c->k, &refs[i], &d, &e) == 0) left++;
      else if (e.status != 404) return -1;
      cJSON_Delete(d);
    }
    char why[1100]; /* room for a kube_err message */
    cJSON *pods = conn_agent_pods(c, why, sizeof why);
    if (!pods) return -1;
    const cJSON *pod;
    cJSON_ArrayForEach(pod, conn_jget(pods, "items")) {
      if (!conn_jget(conn_jget(pod, "metadata"), "deletionTimestamp")) left++;
    }
    cJSON_Delete(pods);
    if (left == 0) return 0;
    if (conn_now_s() > deadline) return -1;
    usleep(250 * 1000);
  }
}

int conn_undo(struct conn *c, const char *why) {
  struct takeover_report rep;
  char err[1200];
  conn_progress(c, "undo", "undoing the takeover (%s)", why);
  if (takeover_restore(c->k, c->ns, c->svc, &rep, err, sizeof err) < 0) {
    conn_fail(c, "restore failed: %s; run `kbridge restore -n %s --service %s`", err, c->ns,
              c->svc);
    return -1;
  }
  if (rep.text[0]) conn_progress(c, "restored", "%s", rep.text);
  return 0;
}

int conn_leave_session(struct conn *c, int rc, int others) {
  int last = 1;
  conn_unclone_ingresses(c);
  if (c->routed) {
    if (conn_set_route(c, 0, &others) < 0) others = 0;
    /* The agent knows best who is still there (annotations of sessions
     * that died elsewhere stay behind): every developer with a live lease,
     * tunnels up or not. */
    char names[600];
    int live = conn_agent_other_keys(c, names, sizeof names);
    if (live >= 0) {
      others = live;
      snprintf(c->holders, sizeof c->holders, "%s", names);
    }
    if (c->agent_lost) others = 0; /* nobody can be served: give the Service back */
    if (others)
      conn_progress(c, "others-remain", "other developers still hold the service: %s; the "
               "takeover stays", c->holders);
    last = others == 0;
  }
  int restored = 0;
  if (last) {
    conn_progress(c, "restore", "last developer on %s/%s: restoring the cluster", c->ns, c->svc);
    if (conn_undo(c, "disconnect") == 0 && conn_wait_gone(c, 30) == 0) restored = 1;
  }
  if (c->json) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "event", "disconnected");
    cJSON_AddBoolToObject(o, "restored", restored);
    conn_emit_json(o);
  } else {
    printf("disconnected%s\n", restored ? "; the cluster is restored"
                               : last   ? "; restore did not finish"
                                        : "");
  }
  if (last && !restored && rc == 0) rc = 1;
    return rc;
}
