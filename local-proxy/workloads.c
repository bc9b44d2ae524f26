/* workloads.c: from the selected pods to their workloads (see workloads.h). */
#include "workloads.h"

#include <stdio.h>
#include <string.h>

#include "kube.h"
#include "takeover.h"

static const char *str(const cJSON *o, const char *key) {
  return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, key));
}

static const cJSON *controller(const cJSON *obj) {
  const cJSON *ref;
  cJSON_ArrayForEach(ref, cJSON_GetObjectItemCaseSensitive(
                              cJSON_GetObjectItemCaseSensitive(obj, "metadata"), "ownerReferences"))
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(ref, "controller")) && str(ref, "kind") &&
        str(ref, "name"))
      return ref;
  return NULL;
}

static struct workload *lookup(struct workloads *ws, const char *kind, const char *name) {
  for (int i = 0; i < ws->n; i++)
    if (strcmp(ws->w[i].kind, kind) == 0 && strcmp(ws->w[i].name, name) == 0) return &ws->w[i];
  return NULL;
}

/* The ReplicaSets seen so far and the workload each belongs to, so a
 * Deployment's pods cost one ReplicaSet read per ReplicaSet, not per pod. */
struct rs_seen {
  char rs[256];
  char kind[32], name[256];
};

int workloads_find(struct kube *k, const char *ns, const cJSON *pods, struct workloads *out,
                   struct kube_err *e) {
  memset(out, 0, sizeof *out);
  struct rs_seen seen[16];
  int nseen = 0;
  const cJSON *pod;
  cJSON_ArrayForEach(pod, pods) {
    char kind[32] = "Pods", name[256] = "";
    const cJSON *ref = controller(pod);
    if (ref && strcmp(str(ref, "kind"), "ReplicaSet") == 0) {
      const char *rs = str(ref, "name");
      int i;
      for (i = 0; i < nseen && strcmp(seen[i].rs, rs) != 0; i++) {
      }
      if (i == nseen) {
        struct rs_seen s;
        snprintf(s.rs, sizeof s.rs, "%s", rs);
        snprintf(s.kind, sizeof s.kind, "ReplicaSet");
        snprintf(s.name, sizeof s.name, "%s", rs);
        struct kube_ref r = {"apps/v1", "replicasets", ns, rs, NULL};
        cJSON *obj = NULL;
        if (kube_get(k, &r, &obj, e) < 0) {
          workloads_free(out);
          return -1;
        }
        const cJSON *up = controller(obj);
        if (up && strcmp(str(up, "kind"), "Deployment") == 0) {
          snprintf(s.kind, sizeof s.kind, "Deployment");
          snprintf(s.name, sizeof s.name, "%s", str(up, "name"));
        }
        cJSON_Delete(obj);
        if (nseen < (int)(sizeof seen / sizeof seen[0])) seen[nseen++] = s;
        snprintf(kind, sizeof kind, "%s", s.kind);
        snprintf(name, sizeof name, "%s", s.name);
      } else {
        snprintf(kind, sizeof kind, "%s", seen[i].kind);
        snprintf(name, sizeof name, "%s", seen[i].name);
      }
    } else if (ref) { /* StatefulSet, DaemonSet, Job...: the owner itself */
      snprintf(kind, sizeof kind, "%s", str(ref, "kind"));
      snprintf(name, sizeof name, "%s", str(ref, "name"));
    }
    struct workload *w = lookup(out, kind, name);
    if (w) {
      w->pods++;
      continue;
    }
    if (out->n == WORKLOADS_MAX) {
      out->more++;
      continue;
    }
    w = &out->w[out->n++];
    snprintf(w->kind, sizeof w->kind, "%s", kind);
    snprintf(w->name, sizeof w->name, "%s", name);
    w->pods = 1;
    /* The template of a workload kbridge can read; else this pod's spec. */
    const char *res = takeover_workload_resource(kind);
    if (res) {
      struct kube_ref r = {"apps/v1", res, ns, name, NULL};
      cJSON *obj = NULL;
      if (kube_get(k, &r, &obj, e) < 0) {
        workloads_free(out);
        return -1;
      }
      cJSON *tmpl = cJSON_GetObjectItemCaseSensitive(
          cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(obj, "spec"),
                                           "template"), "spec");
      w->spec = cJSON_Duplicate(tmpl, 1);
      cJSON_Delete(obj);
    } else {
      w->spec = cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(pod, "spec"), 1);
    }
  }
  return 0;
}

char *workloads_describe(const struct workloads *ws, char *buf, size_t len) {
  buf[0] = '\0';
  for (int i = 0; i < ws->n; i++) {
    size_t l = strlen(buf);
    const struct workload *w = &ws->w[i];
    snprintf(buf + l, len - l, "%s%s%s%s (%d pod%s)", i ? ", " : "", w->kind, w->name[0] ? " " : "",
             w->name, w->pods, w->pods == 1 ? "" : "s");
  }
  if (ws->more) {
    size_t l = strlen(buf);
    snprintf(buf + l, len - l, " and %d more", ws->more);
  }
  return buf;
}

void workloads_free(struct workloads *ws) {
  for (int i = 0; i < ws->n; i++) cJSON_Delete(ws->w[i].spec);
  memset(ws, 0, sizeof *ws);
}
