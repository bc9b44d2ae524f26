/* janitor.c: see janitor.h. */
#include "janitor.h"

#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "kube.h"
#include "log.h"
#include "takeover.h"

int janitor_agent_ready(const cJSON *deployment) {
  const cJSON *st = cJSON_GetObjectItemCaseSensitive(deployment, "status");
  const cJSON *r = cJSON_GetObjectItemCaseSensitive(st, "readyReplicas");
  return cJSON_IsNumber(r) && r->valuedouble >= 1;
}

int janitor_note(struct janitor *j, const char *ns, const char *svc, int ready, double now,
                 double *down_for) {
  struct janitor_entry *en = NULL;
  for (size_t i = 0; i < j->n && !en; i++)
    if (!strcmp(j->e[i].ns, ns) && !strcmp(j->e[i].svc, svc)) en = &j->e[i];
  if (!en) {
    if (j->n == JANITOR_MAX) {
      if (down_for) *down_for = 0;
      return 0; /* remembered next time there is room */
    }
    en = &j->e[j->n++];
    memset(en, 0, sizeof *en);
    snprintf(en->ns, sizeof en->ns, "%s", ns);
    snprintf(en->svc, sizeof en->svc, "%s", svc);
  }
  en->seen = 1;
  if (ready) {
    en->down_since = 0;
    if (down_for) *down_for = 0;
    return 0;
  }
  if (en->down_since == 0) en->down_since = now;
  double d = now - en->down_since;
  if (down_for) *down_for = d;
  return d >= (double)j->after_s;
}

void janitor_sweep(struct janitor *j) {
  size_t k = 0;
  for (size_t i = 0; i < j->n; i++)
    if (j->e[i].seen) {
      j->e[k] = j->e[i];
      j->e[k++].seen = 0;
    }
  j->n = k;
}

static void restore(struct janitor *j, const char *ns, const char *svc, double down) {
  struct takeover_report rep;
  char err[1200];
  log_info("janitor: service %s/%s: its agent has had no ready pod for %.0f s and no developer "
           "restored it: restoring", ns, svc, down);
  if (takeover_restore_flags(j->k, ns, svc, TAKEOVER_RESTORE_GC, &rep, err, sizeof err) < 0) {
    j->restores_failed++;
    log_err("janitor: restore of %s/%s failed: %s (next round tries again)", ns, svc, err);
    return;
  }
  j->restores_ok++;
  char *save = NULL;
  for (char *line = strtok_r(rep.text, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
    log_info("janitor: %s", line);
}

void janitor_round(struct janitor *j, double now) {
  struct kube_ref r = {"v1", "services", NULL, NULL, NULL};
  struct kube_err e;
  cJSON *list = NULL;
  if (kube_list(j->k, &r, NULL, &list, &e) < 0) {
    log_warn("janitor: cannot list services: %s", e.msg);
    cJSON_Delete(list);
    return; /* nothing forgotten: the next round goes on from here */
  }
  const cJSON *svc;
  cJSON_ArrayForEach(svc, cJSON_GetObjectItemCaseSensitive(list, "items")) {
    if (!takeover_annotation(svc, TAKEOVER_ANN_TAKEOVER)) continue;
    const cJSON *md = cJSON_GetObjectItemCaseSensitive(svc, "metadata");
    const char *ns = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(md, "namespace"));
    const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(md, "name"));
    struct takeover_names nm;
    if (!ns || !name || takeover_names(name, &nm) < 0) continue;
    struct kube_ref dr = {"apps/v1", "deployments", ns, nm.agent, NULL};
    cJSON *d = NULL;
    int ready;
    if (kube_get(j->k, &dr, &d, &e) == 0) {
      ready = janitor_agent_ready(d);
    } else if (e.status == 404) {
      ready = 0;
    } else {
      log_warn("janitor: %s", e.msg);
      ready = 1; /* unknown: do not count it as down */
    }
    cJSON_Delete(d);
    double down = 0;
    int was_down = 0;
    for (size_t i = 0; i < j->n; i++)
      if (!strcmp(j->e[i].ns, ns) && !strcmp(j->e[i].svc, name)) was_down = j->e[i].down_since > 0;
    if (janitor_note(j, ns, name, ready, now, &down)) {
      restore(j, ns, name, down);
    } else if (!ready && !was_down) {
      log_info("janitor: service %s/%s is taken over but its agent %s has no ready pod; "
               "restoring it in %ld s unless one comes back", ns, name, nm.agent, j->after_s);
    }
  }
  cJSON_Delete(list);
  janitor_sweep(j);
}
