/* takeover.c: putting the cluster back after `kbridge connect` (see takeover.h).
 *
 * takeover_restore() works from what is stored in the cluster: the annotations
 * on the Service (original selector, agent selector, which workload), the
 * annotation on the workload (replicas) and the deterministic names of the
 * kbridge objects. Order, chosen so that a restore cut off at any point can be
 * finished by running it again, and so that the agent can run it on itself:
 *   0. Ingress clones (connect --ingress), found by their labels (the agent
 *      may not list Ingresses: then they go with its Deployment, step 4);
 *   1. the workload's replica count (exclusive mode), found through the
 *      Service's takeover annotation, which is still there at this point;
 *   2. the Service: selector back (unless someone else changed it) and every
 *      kbridge.dev/ annotation removed, in one update; then, when the selector
 *      was put back, wait (at most TAKEOVER_ENDPOINTS_WAIT_S) until the
 *      Service's Endpoints list ready addresses and none of the agent's pods,
 *      then TAKEOVER_PROXY_GRACE_MS more for kube-proxy on the nodes: until
 *      then clients still reach the agent, which needs the shadow Service to
 *      answer unrouted requests;
 *   3. the shadow Service and the Secret;
 *   4. if the agent's Deployment still exists: it is deleted last; its
 *      ServiceAccount, Role and RoleBinding carry an ownerReference to it, so
 *      the garbage collector removes them after it (the agent deleting its own
 *      RoleBinding first would lose the right to finish). If it is already
 *      gone, they are deleted here.
 * Objects are only deleted when they carry app.kubernetes.io/managed-by=kbridge:
 * a Service of the user's that happens to be called <svc>-kbridge-origin is
 * left alone (and reported). */
#include "takeover.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sys/random.h>

#include <cjson/cJSON.h>

#include "kube.h"

int takeover_names(const char *service, struct takeover_names *out) {
  size_t n = strlen(service);
  if (n == 0 || n > TAKEOVER_MAX_SERVICE) return -1;
  snprintf(out->agent, sizeof out->agent, "kbridge-agent-%s", service);
  snprintf(out->secret, sizeof out->secret, "kbridge-agent-%s-tls", service);
  snprintf(out->origin, sizeof out->origin, "%s-kbridge-origin", service);
  return 0;
}

static void say(struct takeover_report *rep, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(struct takeover_report *rep, const char *fmt, ...) {
  size_t l = strlen(rep->text);
  if (l + 2 >= sizeof rep->text) return;
  if (l) rep->text[l++] = '\n';
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(rep->text + l, sizeof rep->text - l, fmt, ap);
  va_end(ap);
}

static cJSON *path2(const cJSON *o, const char *a, const char *b) {
  return cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(o, a), b);
}

const char *takeover_annotation(const cJSON *obj, const char *key) {
  cJSON *ann = path2(obj, "metadata", "annotations");
  return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ann, key));
}

int takeover_is_managed(const cJSON *obj) {
  cJSON *labels = path2(obj, "metadata", "labels");
  const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(labels, TAKEOVER_LABEL_MANAGED));
  return v && strcmp(v, "kbridge") == 0;
}

/* ---- 1. workload replicas ---- */

struct replicas_arg {
  int conflict;
  long original, current;
};

static int replicas_mutate(cJSON *obj, void *arg, char *err, size_t errlen) {
  struct replicas_arg *ra = arg;
  cJSON *ann = path2(obj, "metadata", "annotations");
  const char *orig = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ann, TAKEOVER_ANN_ORIGINAL_REPLICAS));
  ra->conflict = 0;
  ra->original = -1;
  if (orig == NULL) return 1; /* done already, or never scaled */
  char *end;
  long n = strtol(orig, &end, 10);
  if (*orig == '\0' || *end != '\0' || n < 0 || n > 1000000) {
    snprintf(err, errlen, "annotation %s is not a replica count: \"%.40s\"",
             TAKEOVER_ANN_ORIGINAL_REPLICAS, orig);
    return -1;
  }
  ra->original = n;
  cJSON *spec = cJSON_GetObjectItemCaseSensitive(obj, "spec");
  cJSON *rep = cJSON_GetObjectItemCaseSensitive(spec, "replicas");
  ra->current = cJSON_IsNumber(rep) ? (long)rep->valuedouble : 1;
  if (ra->current != 0)
    ra->conflict = 1; /* someone scaled it meanwhile: theirs stands */
  else if (rep)
    cJSON_SetNumberValue(rep, (double)n);
  else
    cJSON_AddNumberToObject(spec, "replicas", (double)n);
  cJSON_DeleteItemFromObjectCaseSensitive(ann, TAKEOVER_ANN_ORIGINAL_REPLICAS);
  return 0;
}

/* kind "Deployment" | "StatefulSet" | "ReplicaSet" -> plural, or NULL. */
const char *takeover_workload_resource(const char *kind) {
  if (kind == NULL) return NULL;
  if (strcmp(kind, "Deployment") == 0) return "deployments";
  if (strcmp(kind, "StatefulSet") == 0) return "statefulsets";
  if (strcmp(kind, "ReplicaSet") == 0) return "replicasets";
  return NULL;
}

static int restore_workload(struct kube *k, const char *ns, cJSON *takeover,
                            struct takeover_report *rep, char *err, size_t errlen) {
  cJSON *wl = cJSON_GetObjectItemCaseSensitive(takeover, "workload");
  const char *kind = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(wl, "kind"));
  const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(wl, "name"));
  const char *res = takeover_workload_resource(kind);
  if (res == NULL || name == NULL) return 0; /* bare pods, or nothing recorded */
  struct kube_ref r = {"apps/v1", res, ns, name, NULL};
  struct replicas_arg ra = {0, -1, 0};
  struct kube_err e;
  if (kube_update_retry(k, &r, replicas_mutate, &ra, NULL, &e) < 0) {
    if (e.status == 404) return 0; /* the workload is gone: nothing to scale */
    snprintf(err, errlen, "%s", e.msg);
    return -1;
  }
  if (ra.original < 0) return 0;
  if (ra.conflict) {
    rep->conflicts++;
    say(rep, "%s %s/%s: left at %ld replicas (someone scaled it while it was taken over; it "
        "had %ld before)", kind, ns, name, ra.current, ra.original);
  } else {
    rep->changed++;
    say(rep, "%s %s/%s: scaled back to %ld replicas", kind, ns, name, ra.original);
  }
  return 0;
}

/* ---- 2. the Service ---- */

/* The "id" of a TAKEOVER_ANN_TAKEOVER value, into out ("" if none). */
static void takeover_id_of(const char *tk, char *out, size_t outlen) {
  cJSON *t = tk ? cJSON_Parse(tk) : NULL;
  const char *id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(t, "id"));
  snprintf(out, outlen, "%s", id ? id : "");
  cJSON_Delete(t);
}

struct service_arg {
  int had_takeover;   /* some kbridge.dev/ annotation was there */
  int conflict;       /* selector changed by someone else */
  int restored;       /* selector set back */
  int unmerged;       /* conflict, but our key was removed from a merged selector */
  char original[512]; /* the original selector, as stored */
  char current[512];  /* the selector found, when in conflict */
  char policy[200];   /* traffic policies put back, or "" */
  int unpaused;       /* Flux's reconcile annotation removed (--pause-gitops) */
  const char *id;     /* in: restore only this takeover (NULL: any) */
  int newer;          /* out: taken over by another takeover meanwhile, left alone */
};


enum takeover_sel takeover_selector_state(const cJSON *sel, const cJSON *mine,
                                          const cJSON *orig) {
  if (!cJSON_IsObject(sel) || !cJSON_IsObject(mine)) return TAKEOVER_SEL_OTHER;
  if (cJSON_Compare(sel, mine, 1)) return TAKEOVER_SEL_AGENT;
  if (orig && cJSON_Compare(sel, orig, 1)) return TAKEOVER_SEL_ORIGINAL;
  const cJSON *m;
  int n = 0;
  cJSON_ArrayForEach(m, mine) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(sel, m->string);
    if (!v || !cJSON_Compare(v, m, 1)) return TAKEOVER_SEL_OTHER;
    n++;
  }
  return n > 0 && cJSON_GetArraySize(sel) > n ? TAKEOVER_SEL_MERGED : TAKEOVER_SEL_OTHER;
}

cJSON *takeover_selector_unmerge(const cJSON *sel, const cJSON *mine) {
  cJSON *out = cJSON_CreateObject();
  const cJSON *it;
  cJSON_ArrayForEach(it, sel) {
    if (cJSON_GetObjectItemCaseSensitive(mine, it->string)) continue;
    cJSON_AddItemToObject(out, it->string, cJSON_Duplicate(it, 1));
  }
  return out;
}

static const char *const policy_fields[] = {"internalTrafficPolicy", "externalTrafficPolicy"};

static void append(char *out, size_t len, const char *sep, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void append(char *out, size_t len, const char *sep, const char *fmt, ...) {
  size_t l = strlen(out);
  if (l && l + strlen(sep) < len) {
    memcpy(out + l, sep, strlen(sep) + 1);
    l += strlen(sep);
  }
  va_list ap;
  va_start(ap, fmt);
  if (l < len) vsnprintf(out + l, len - l, fmt, ap);
  va_end(ap);
}

static cJSON *annotations_of(cJSON *obj) {
  cJSON *md = cJSON_GetObjectItemCaseSensitive(obj, "metadata");
  if (!md) md = cJSON_AddObjectToObject(obj, "metadata");
  cJSON *ann = cJSON_GetObjectItemCaseSensitive(md, "annotations");
  if (!ann) ann = cJSON_AddObjectToObject(md, "annotations");
  return ann;
}

int takeover_policy_cluster(cJSON *svc, char *what, size_t whatlen) {
  cJSON *spec = cJSON_GetObjectItemCaseSensitive(svc, "spec");
  int n = 0;
  if (whatlen) what[0] = 0;
  for (size_t i = 0; i < 2; i++) {
    const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(spec, policy_fields[i]));
    n += v && strcmp(v, "Local") == 0;
  }
  if (n == 0) return 0;
  cJSON *ann = annotations_of(svc);
  cJSON *rec = NULL;
  const char *old = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ann, TAKEOVER_ANN_ORIGINAL_POLICY));
  if (old) rec = cJSON_Parse(old);
  if (!cJSON_IsObject(rec)) {
    cJSON_Delete(rec);
    rec = cJSON_CreateObject();
  }
  for (size_t i = 0; i < 2; i++) {
    cJSON *f = cJSON_GetObjectItemCaseSensitive(spec, policy_fields[i]);
    const char *v = cJSON_GetStringValue(f);
    if (!v || strcmp(v, "Local") != 0) continue;
    if (!cJSON_GetObjectItemCaseSensitive(rec, policy_fields[i]))
      cJSON_AddStringToObject(rec, policy_fields[i], "Local");
    cJSON_SetValuestring(f, "Cluster");
    if (whatlen) append(what, whatlen, " and ", "%s", policy_fields[i]);
  }
  cJSON *hc = cJSON_GetObjectItemCaseSensitive(spec, "healthCheckNodePort");
  if (hc) {
    if (cJSON_IsNumber(hc) && hc->valuedouble > 0 &&
        !cJSON_GetObjectItemCaseSensitive(rec, "healthCheckNodePort"))
      cJSON_AddNumberToObject(rec, "healthCheckNodePort", hc->valuedouble);
    cJSON_DeleteItemFromObjectCaseSensitive(spec, "healthCheckNodePort");
  }
  char *js = cJSON_PrintUnformatted(rec);
  cJSON_Delete(rec);
  cJSON_DeleteItemFromObjectCaseSensitive(ann, TAKEOVER_ANN_ORIGINAL_POLICY);
  cJSON_AddStringToObject(ann, TAKEOVER_ANN_ORIGINAL_POLICY, js ? js : "{}");
  free(js);
  return n;
}

int takeover_policy_restore(cJSON *svc, char *what, size_t whatlen) {
  if (whatlen) what[0] = 0;
  const char *s = takeover_annotation(svc, TAKEOVER_ANN_ORIGINAL_POLICY);
  if (!s) return 0;
  cJSON *rec = cJSON_Parse(s);
  if (!cJSON_IsObject(rec)) {
    cJSON_Delete(rec);
    return -1;
  }
  cJSON *spec = cJSON_GetObjectItemCaseSensitive(svc, "spec");
  if (!spec) spec = cJSON_AddObjectToObject(svc, "spec");
  int done = 0;
  for (size_t i = 0; i < 2; i++) {
    const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(rec, policy_fields[i]));
    if (!v) continue;
    cJSON_DeleteItemFromObjectCaseSensitive(spec, policy_fields[i]);
    cJSON_AddStringToObject(spec, policy_fields[i], v);
    if (whatlen) append(what, whatlen, ", ", "%s %s", policy_fields[i], v);
    done = 1;
  }
  cJSON *hc = cJSON_GetObjectItemCaseSensitive(rec, "healthCheckNodePort");
  if (cJSON_IsNumber(hc)) {
    cJSON_DeleteItemFromObjectCaseSensitive(spec, "healthCheckNodePort");
    cJSON_AddNumberToObject(spec, "healthCheckNodePort", hc->valuedouble);
    if (whatlen) append(what, whatlen, ", ", "healthCheckNodePort %d", hc->valueint);
    done = 1;
  }
  cJSON_Delete(rec);
  return done;
}

static cJSON *annotations(cJSON *obj, int create) {
  cJSON *md = cJSON_GetObjectItemCaseSensitive(obj, "metadata");
  if (!md && create) md = cJSON_AddObjectToObject(obj, "metadata");
  cJSON *ann = cJSON_GetObjectItemCaseSensitive(md, "annotations");
  if (!ann && create && md) ann = cJSON_AddObjectToObject(md, "annotations");
  return ann;
}

int takeover_gitops_pause(cJSON *svc) {
  cJSON *ann = annotations(svc, 1);
  if (!ann || cJSON_GetObjectItemCaseSensitive(ann, TAKEOVER_FLUX_RECONCILE)) return 0;
  cJSON_AddStringToObject(ann, TAKEOVER_FLUX_RECONCILE, "disabled");
  cJSON_DeleteItemFromObjectCaseSensitive(ann, TAKEOVER_ANN_PAUSED_GITOPS);
  cJSON_AddStringToObject(ann, TAKEOVER_ANN_PAUSED_GITOPS, TAKEOVER_FLUX_RECONCILE);
  return 1;
}

int takeover_gitops_unpause(cJSON *svc) {
  cJSON *ann = annotations(svc, 0);
  const char *rec = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ann, TAKEOVER_ANN_PAUSED_GITOPS));
  if (!rec || strcmp(rec, TAKEOVER_FLUX_RECONCILE) != 0) return 0;
  const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ann, TAKEOVER_FLUX_RECONCILE));
  if (!v || strcmp(v, "disabled") != 0) return 0; /* changed since: theirs now */
  cJSON_DeleteItemFromObjectCaseSensitive(ann, TAKEOVER_FLUX_RECONCILE);
  return 1;
}

static int service_mutate(cJSON *obj, void *arg, char *err, size_t errlen) {
  struct service_arg *sa = arg;
  cJSON *ann = path2(obj, "metadata", "annotations");
  const char *id = sa->id;
  memset(sa, 0, sizeof *sa);
  sa->id = id;
  cJSON *a;
  cJSON_ArrayForEach(a, ann) {
    if (strncmp(a->string, "kbridge.dev/", 12) == 0) sa->had_takeover = 1;
  }
  if (!sa->had_takeover) return 1;
  if (id) {
    char now[64];
    takeover_id_of(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ann, TAKEOVER_ANN_TAKEOVER)),
                   now, sizeof now);
    if (now[0] && strcmp(now, id) != 0) {
      sa->newer = 1;
      return 1;
    }
  }
  const char *orig = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ann, TAKEOVER_ANN_ORIGINAL_SELECTOR));
  const char *mine = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ann, TAKEOVER_ANN_AGENT_SELECTOR));
  cJSON *spec = cJSON_GetObjectItemCaseSensitive(obj, "spec");
  cJSON *sel = cJSON_GetObjectItemCaseSensitive(spec, "selector");
  if (orig && mine) {
    cJSON *oj = cJSON_Parse(orig), *mj = cJSON_Parse(mine);
    snprintf(sa->original, sizeof sa->original, "%s", orig);
    if (!cJSON_IsObject(oj) || !cJSON_IsObject(mj)) {
      cJSON_Delete(oj);
      cJSON_Delete(mj);
      snprintf(err, errlen, "annotation %s or %s is not a JSON object",
               TAKEOVER_ANN_ORIGINAL_SELECTOR, TAKEOVER_ANN_AGENT_SELECTOR);
      return -1;
    }
    enum takeover_sel st = takeover_selector_state(sel, mj, oj);
    if (st == TAKEOVER_SEL_AGENT) {
      cJSON_ReplaceItemInObjectCaseSensitive(spec, "selector", oj);
      sa->restored = 1;
    } else if (sel == NULL && cJSON_GetArraySize(mj) == 0) {
      cJSON_AddItemToObject(spec, "selector", oj);
      sa->restored = 1;
    } else if (st == TAKEOVER_SEL_ORIGINAL) {
      cJSON_Delete(oj); /* put back already (by a session that saw a re-apply) */
      sa->restored = 1;
    } else if (st == TAKEOVER_SEL_MERGED) {
      /* A re-apply merged the manifest's selector with ours ({"app":"api",
       * "kbridge.dev/agent":"api"} matches no pod): our keys go, theirs stay. */
      cJSON *un = takeover_selector_unmerge(sel, mj);
      if (cJSON_Compare(un, oj, 1)) {
        sa->restored = 1;
      } else {
        char *cur = cJSON_PrintUnformatted(un);
        snprintf(sa->current, sizeof sa->current, "%s", cur ? cur : "?");
        free(cur);
        sa->conflict = 1;
        sa->unmerged = 1;
      }
      cJSON_ReplaceItemInObjectCaseSensitive(spec, "selector", un);
      cJSON_Delete(oj);
    } else {
      char *cur = sel ? cJSON_PrintUnformatted(sel) : NULL;
      snprintf(sa->current, sizeof sa->current, "%s", cur ? cur : "none");
      free(cur);
      cJSON_Delete(oj);
      sa->conflict = 1;
    }
    cJSON_Delete(mj);
  }
  /* The traffic policies set to Cluster for the takeover, back as they were
   * (whatever became of the selector: they are ours). */
  if (takeover_policy_restore(obj, sa->policy, sizeof sa->policy) < 0) {
    snprintf(err, errlen, "annotation %s is not a JSON object", TAKEOVER_ANN_ORIGINAL_POLICY);
    return -1;
  }
  /* Flux's switch, when kbridge set it (--pause-gitops), then every annotation
   * of ours (takeover record, selectors, routes, that record). */
  sa->unpaused = takeover_gitops_unpause(obj);
  for (cJSON *it = ann ? ann->child : NULL; it;) {
    cJSON *next = it->next;
    if (strncmp(it->string, "kbridge.dev/", 12) == 0) cJSON_Delete(cJSON_DetachItemViaPointer(ann, it));
    it = next;
  }
  return 0;
}

/* ---- 2b: endpoints ---- */

/* Counts the addresses of the Endpoints object: ready and not-ready ones of
 * agent pods (kbridge-agent-<service>-...) and of other pods. */
static void endpoints_count(const cJSON *endpoints, const char *service, int other[2],
                            int agent[2]) {
  char prefix[96];
  snprintf(prefix, sizeof prefix, "kbridge-agent-%s-", service);
  size_t pl = strlen(prefix);
  other[0] = other[1] = agent[0] = agent[1] = 0;
  const cJSON *subset;
  cJSON_ArrayForEach(subset, cJSON_GetObjectItemCaseSensitive(endpoints, "subsets")) {
    for (int pass = 0; pass < 2; pass++) { /* 0: ready, 1: not ready */
      const cJSON *a;
      cJSON_ArrayForEach(a, cJSON_GetObjectItemCaseSensitive(
                                subset, pass == 0 ? "addresses" : "notReadyAddresses")) {
        const cJSON *ref = cJSON_GetObjectItemCaseSensitive(a, "targetRef");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(ref, "name");
        if (cJSON_IsString(name) && strncmp(name->valuestring, prefix, pl) == 0)
          agent[pass]++;
        else
          other[pass]++;
      }
    }
  }
}

/* The counts of one side (`want`) against the other (`rest`), each {ready,
 * not ready}: true when want has a ready address and rest none at all. */
static int only(const int want[2], const int rest[2], int *n_want, int *n_rest) {
  if (n_want) *n_want = want[0];
  if (n_rest) *n_rest = rest[0] + rest[1];
  return want[0] > 0 && rest[0] + rest[1] == 0;
}

int takeover_endpoints_switched(const cJSON *endpoints, const char *service, int *n_ready,
                                int *n_agent) {
  int other[2], agent[2];
  endpoints_count(endpoints, service, other, agent);
  return only(other, agent, n_ready, n_agent);
}

int takeover_endpoints_taken(const cJSON *endpoints, const char *service, int *n_agent,
                             int *n_other) {
  int other[2], agent[2];
  endpoints_count(endpoints, service, other, agent);
  return only(agent, other, n_agent, n_other);
}

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* After the selector went back: keep the agent (and the shadow Service it
 * forwards unrouted requests to) until the Endpoints show the original pods,
 * or TAKEOVER_ENDPOINTS_WAIT_S passed. Never fails: what happened is said in
 * the report. */
static void wait_endpoints(struct kube *k, const char *ns, const char *service,
                           struct takeover_report *rep) {
  struct kube_ref r = {"v1", "endpoints", ns, service, NULL};
  double t0 = mono_s();
  int ready = 0, agent = 0;
  for (;;) {
    struct kube_err e;
    cJSON *ep = NULL;
    if (kube_get(k, &r, &ep, &e) < 0) {
      if (e.status == 404 && mono_s() - t0 < TAKEOVER_ENDPOINTS_WAIT_S) {
        ready = agent = 0; /* not (re)made yet */
      } else {
        say(rep, "endpoints %s/%s: not waited for (%s)", ns, service,
            e.status == 403 ? "no right to read them; re-apply deploy/rbac/developer-role.yaml"
                            : e.msg);
        return;
      }
    } else {
      int ok = takeover_endpoints_switched(ep, service, &ready, &agent);
      cJSON_Delete(ep);
      if (ok) {
        say(rep, "endpoints %s/%s: the original pods (%d ready address%s) after %.1f s; agent "
            "kept %.1f s more for kube-proxy", ns, service, ready, ready == 1 ? "" : "es",
            mono_s() - t0, TAKEOVER_PROXY_GRACE_MS / 1000.0);
        struct timespec g = {TAKEOVER_PROXY_GRACE_MS / 1000,
                             (long)(TAKEOVER_PROXY_GRACE_MS % 1000) * 1000000L};
        nanosleep(&g, NULL);
        return;
      }
    }
    if (mono_s() - t0 >= TAKEOVER_ENDPOINTS_WAIT_S) {
      say(rep, "endpoints %s/%s: still %s after %d s; going on (clients may see refused "
          "connections until they follow)", ns, service,
          agent ? "list the agent" : "without a ready pod", TAKEOVER_ENDPOINTS_WAIT_S);
      return;
    }
    struct timespec ts = {0, 200 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
}

/* Do the Service's Endpoints list an agent pod now? 0 when they cannot be read. */
static int endpoints_list_agent(struct kube *k, const char *ns, const char *service) {
  struct kube_ref r = {"v1", "endpoints", ns, service, NULL};
  struct kube_err e;
  cJSON *ep = NULL;
  int ready = 0, agent = 0;
  if (kube_get(k, &r, &ep, &e) < 0) return 0;
  takeover_endpoints_switched(ep, service, &ready, &agent);
  cJSON_Delete(ep);
  return agent > 0;
}

/* ---- 3, 4: objects ---- */

/* Delete one object if it is ours. Returns 0 (deleted, gone, or not ours:
 * reported), or -1 with err. */
static int delete_managed(struct kube *k, const char *api, const char *res, const char *kind,
                          const char *ns, const char *name, const char *id,
                          struct takeover_report *rep, char *err, size_t errlen) {
  struct kube_ref r = {api, res, ns, name, NULL};
  struct kube_err e;
  cJSON *obj = NULL;
  if (kube_get(k, &r, &obj, &e) < 0) {
    if (e.status == 404) return 0;
    snprintf(err, errlen, "%s", e.msg);
    return -1;
  }
  int ours = takeover_is_managed(obj);
  const char *oid = takeover_annotation(obj, TAKEOVER_ANN_TAKEOVER_ID);
  int newer = id && oid && strcmp(oid, id) != 0;
  if (newer)
    say(rep, "%s %s/%s: belongs to takeover %s, not %s (ended), left alone", kind, ns, name, oid,
        id);
  cJSON_Delete(obj);
  if (newer) return 0;
  if (!ours) {
    rep->conflicts++;
    say(rep, "%s %s/%s: not labelled %s=kbridge, left alone", kind, ns, name,
        TAKEOVER_LABEL_MANAGED);
    return 0;
  }
  if (kube_delete(k, &r, "Background", &e) < 0 && e.status != 404) {
    snprintf(err, errlen, "%s", e.msg);
    return -1;
  }
  rep->changed++;
  say(rep, "%s %s/%s: deleted", kind, ns, name);
  return 0;
}

/* List the objects of r that kbridge made for service (found by their
 * labels): kube_list()'s 0 with *list, or -1 with e. */
static int list_managed(struct kube *k, const struct kube_ref *r, const char *service,
                        cJSON **list, struct kube_err *e) {
  char sel[300];
  snprintf(sel, sizeof sel, "%s=kbridge,%s=%s", TAKEOVER_LABEL_MANAGED, TAKEOVER_LABEL_SERVICE,
           service);
  return kube_list(k, r, sel, list, e);
}

/* The NetworkPolicies connect created for the agent (local-proxy/netpol.h),
 * found by their labels. They are owned by the agent's Deployment, so the
 * garbage collector removes them with it; this is for an agent already gone.
 * Without the right to list them (older RBAC) nothing is done. */
static int delete_policies(struct kube *k, const char *ns, const char *service, const char *id,
                           struct takeover_report *rep, char *err, size_t errlen) {
  struct kube_ref r = {"networking.k8s.io/v1", "networkpolicies", ns, NULL, NULL};
  struct kube_err e;
  cJSON *list = NULL;
  if (list_managed(k, &r, service, &list, &e) < 0) {
    if (e.status == 403 || e.status == 404) return 0;
    snprintf(err, errlen, "%s", e.msg);
    return -1;
  }
  const cJSON *it;
  int rc = 0;
  cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(list, "items")) {
    const char *name = cJSON_GetStringValue(path2(it, "metadata", "name"));
    if (name && delete_managed(k, "networking.k8s.io/v1", "networkpolicies", "networkpolicy", ns,
                               name, id, rep, err, errlen) < 0) {
      rc = -1;
      break;
    }
  }
  cJSON_Delete(list);
  return rc;
}

/* ---- Ingress clones ---- */

static int routes_to(const cJSON *backend, const char *service) {
  const char *n = cJSON_GetStringValue(path2(backend, "service", "name"));
  return n && strcmp(n, service) == 0;
}

static int ingress_routes_to(const cJSON *ing, const char *service) {
  const cJSON *spec = cJSON_GetObjectItemCaseSensitive(ing, "spec"), *rule, *p;
  if (routes_to(cJSON_GetObjectItemCaseSensitive(spec, "defaultBackend"), service)) return 1;
  cJSON_ArrayForEach(rule, cJSON_GetObjectItemCaseSensitive(spec, "rules")) {
    cJSON_ArrayForEach(p, path2(rule, "http", "paths")) {
      if (routes_to(cJSON_GetObjectItemCaseSensitive(p, "backend"), service)) return 1;
    }
  }
  return 0;
}

/* "<key>.<host>" into out; 0, or -1 when host is empty, a wildcard or the
 * result is longer than a DNS name may be. */
static int key_host(const char *key, const char *host, char *out, size_t len) {
  if (!host || !*host || host[0] == '*') return -1;
  int n = snprintf(out, len, "%s.%s", key, host);
  return n < 0 || (size_t)n >= len || n > 253 ? -1 : 0;
}

cJSON *takeover_ingress_clone(const cJSON *ing, const char *service, const char *key, char *err,
                              size_t errlen) {
  const char *name = cJSON_GetStringValue(path2(ing, "metadata", "name"));
  const char *ns = cJSON_GetStringValue(path2(ing, "metadata", "namespace"));
  const cJSON *spec = cJSON_GetObjectItemCaseSensitive(ing, "spec");
  char buf[300];
  if (!name) {
    snprintf(err, errlen, "an Ingress without a name");
    return NULL;
  }
  if (takeover_is_managed(ing) || !ingress_routes_to(ing, service)) {
    if (errlen) err[0] = '\0';
    return NULL;
  }
  int n = snprintf(buf, sizeof buf, "%s-kbridge-%s", name, key);
  if (n < 0 || n > 253) {
    snprintf(err, errlen, "ingress %s: the clone's name %s-kbridge-%s would be longer than 253 "
             "characters", name, name, key);
    return NULL;
  }
  cJSON *c = cJSON_CreateObject();
  cJSON_AddStringToObject(c, "apiVersion", "networking.k8s.io/v1");
  cJSON_AddStringToObject(c, "kind", "Ingress");
  cJSON *md = cJSON_AddObjectToObject(c, "metadata");
  cJSON_AddStringToObject(md, "name", buf);
  if (ns) cJSON_AddStringToObject(md, "namespace", ns);
  cJSON *labels = cJSON_AddObjectToObject(md, "labels");
  cJSON_AddStringToObject(labels, TAKEOVER_LABEL_MANAGED, "kbridge");
  cJSON_AddStringToObject(labels, TAKEOVER_LABEL_SERVICE, service);
  cJSON *ann = cJSON_AddObjectToObject(md, "annotations");
  const cJSON *a;
  cJSON_ArrayForEach(a, path2(ing, "metadata", "annotations")) {
    if (!cJSON_IsString(a) || strcmp(a->string, "kubectl.kubernetes.io/last-applied-configuration") == 0 ||
        strncmp(a->string, "cert-manager.io/", 16) == 0 || strncmp(a->string, "kbridge.dev/", 12) == 0)
      continue;
    cJSON_AddStringToObject(ann, a->string, a->valuestring);
  }
  cJSON_AddStringToObject(ann, TAKEOVER_ANN_ROUTE_KEY, key);
  cJSON_AddStringToObject(ann, TAKEOVER_ANN_CLONE_OF, name);
  cJSON *cs = cJSON_AddObjectToObject(c, "spec");
  const char *cls = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(spec, "ingressClassName"));
  if (cls) cJSON_AddStringToObject(cs, "ingressClassName", cls);
  cJSON *rules = cJSON_AddArrayToObject(cs, "rules");
  const cJSON *rule;
  cJSON_ArrayForEach(rule, cJSON_GetObjectItemCaseSensitive(spec, "rules")) {
    const char *h = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(rule, "host"));
    if (key_host(key, h, buf, sizeof buf) < 0) continue;
    cJSON *r = cJSON_Duplicate(rule, 1);
    cJSON_ReplaceItemInObjectCaseSensitive(r, "host", cJSON_CreateString(buf));
    cJSON_AddItemToArray(rules, r);
  }
  if (cJSON_GetArraySize(rules) == 0) {
    snprintf(err, errlen, "ingress %s routes to %s only through rules without a host (or "
             "wildcard hosts, or its default backend): nothing to rewrite; requests to it with "
             "Host %s.<its host> reach your route already", name, service, key);
    cJSON_Delete(c);
    return NULL;
  }
  const cJSON *t;
  cJSON *tls = NULL;
  cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(spec, "tls")) {
    cJSON *nt = cJSON_CreateObject(), *hosts = cJSON_AddArrayToObject(nt, "hosts");
    const cJSON *h;
    cJSON_ArrayForEach(h, cJSON_GetObjectItemCaseSensitive(t, "hosts")) {
      if (key_host(key, cJSON_GetStringValue(h), buf, sizeof buf) == 0)
        cJSON_AddItemToArray(hosts, cJSON_CreateString(buf));
    }
    const char *sec = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(t, "secretName"));
    if (sec) cJSON_AddStringToObject(nt, "secretName", sec);
    if (cJSON_GetArraySize(hosts) == 0) {
      cJSON_Delete(nt);
      continue;
    }
    if (!tls) tls = cJSON_AddArrayToObject(cs, "tls");
    cJSON_AddItemToArray(tls, nt);
  }
  return c;
}

int takeover_remove_ingress_clones(struct kube *k, const char *ns, const char *service,
                                   const char *key, struct takeover_report *rep, char *err,
                                   size_t errlen) {
  struct kube_ref r = {"networking.k8s.io/v1", "ingresses", ns, NULL, NULL};
  struct kube_err e;
  cJSON *list = NULL;
  if (list_managed(k, &r, service, &list, &e) < 0) {
    if (e.status == 403 || e.status == 404) {
      /* No right to list them (the agent), or no Ingress API: clones, if any,
       * go with the agent's Deployment. */
      if (!key) say(rep, "ingress clones of %s/%s: not listed (%s); if any, they are removed "
                    "with the agent's deployment (garbage collector)", ns, service,
                    e.status == 403 ? "no right to list ingresses" : "no Ingress API");
      return 0;
    }
    snprintf(err, errlen, "%s", e.msg);
    return -1;
  }
  /* Not delete_policies()' loop (duplicates): a clone is picked by its route key from
   * the list itself and deleted without delete_managed()'s second read. */
  const cJSON *it;
  int rc = 0;
  cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(list, "items")) {
    const char *name = cJSON_GetStringValue(path2(it, "metadata", "name"));
    const char *k2 = takeover_annotation(it, TAKEOVER_ANN_ROUTE_KEY);
    if (!name || !takeover_is_managed(it) || (key && (!k2 || strcmp(k2, key) != 0))) continue;
    struct kube_ref d = {"networking.k8s.io/v1", "ingresses", ns, name, NULL};
    if (kube_delete(k, &d, "Background", &e) < 0 && e.status != 404) {
      snprintf(err, errlen, "%s", e.msg);
      rc = -1;
      break;
    }
    rep->changed++;
    say(rep, "ingress %s/%s: deleted", ns, name);
  }
  cJSON_Delete(list);
  return rc;
}

static int restore(struct kube *k, const char *ns, const char *service, int flags,
                   const char *id, struct takeover_report *rep, char *err, size_t errlen);

int takeover_restore(struct kube *k, const char *ns, const char *service,
                     struct takeover_report *rep, char *err, size_t errlen) {
  return takeover_restore_flags(k, ns, service, 0, rep, err, errlen);
}

int takeover_restore_flags(struct kube *k, const char *ns, const char *service, int flags,
                           struct takeover_report *rep, char *err, size_t errlen) {
  return restore(k, ns, service, flags, NULL, rep, err, errlen);
}

int takeover_restore_id(struct kube *k, const char *ns, const char *service, const char *id,
                        struct takeover_report *rep, char *err, size_t errlen) {
  return restore(k, ns, service, 0, id && *id ? id : NULL, rep, err, errlen);
}

static int restore(struct kube *k, const char *ns, const char *service, int flags,
                   const char *id, struct takeover_report *rep, char *err, size_t errlen) {
  struct takeover_names nm;
  memset(rep, 0, sizeof *rep);
  if (takeover_names(service, &nm) < 0) {
    snprintf(err, errlen, "service name \"%s\": expected 1-%d characters", service,
             TAKEOVER_MAX_SERVICE);
    return -1;
  }
  struct kube_ref sref = {"v1", "services", ns, service, NULL};
  struct kube_err e;
  cJSON *svc = NULL;
  if (kube_get(k, &sref, &svc, &e) < 0) {
    if (e.status != 404) {
      snprintf(err, errlen, "%s", e.msg);
      return -1;
    }
    svc = NULL; /* the Service is gone: still remove our objects */
  }

  /* Only this takeover's restore: a newer one owns the Service (or, between
   * its first steps, the agent's Deployment) and is left alone. */
  if (id) {
    char now[64];
    takeover_id_of(svc ? takeover_annotation(svc, TAKEOVER_ANN_TAKEOVER) : NULL, now, sizeof now);
    if (now[0] && strcmp(now, id) != 0) {
      say(rep, "service %s/%s: taken over again (takeover %s) since takeover %s ended: left alone",
          ns, service, now, id);
      cJSON_Delete(svc);
      return 0;
    }
    struct kube_ref d = {"apps/v1", "deployments", ns, nm.agent, NULL};
    cJSON *dep = NULL;
    if (kube_get(k, &d, &dep, &e) < 0 && e.status != 404) {
      snprintf(err, errlen, "%s", e.msg);
      cJSON_Delete(svc);
      return -1;
    }
    const char *did = dep ? takeover_annotation(dep, TAKEOVER_ANN_TAKEOVER_ID) : NULL;
    int newer = did && strcmp(did, id) != 0;
    if (newer)
      say(rep, "deployment %s/%s: belongs to takeover %s, which is starting, not to %s (ended): "
          "left alone", ns, nm.agent, did, id);
    cJSON_Delete(dep);
    if (newer) {
      cJSON_Delete(svc);
      return 0;
    }
  }

  /* 0. Ingress clones: the Ingresses they copy keep working without them */
  if (takeover_remove_ingress_clones(k, ns, service, NULL, rep, err, errlen) < 0) {
    cJSON_Delete(svc);
    return -1;
  }

  /* 1. workload */
  const char *tk = svc ? takeover_annotation(svc, TAKEOVER_ANN_TAKEOVER) : NULL;
  cJSON *takeover = tk ? cJSON_Parse(tk) : NULL;
  int rc = 0;
  if (takeover) rc = restore_workload(k, ns, takeover, rep, err, errlen);
  cJSON_Delete(takeover);
  cJSON_Delete(svc);
  if (rc < 0) return -1;

  /* 2. the Service */
  struct service_arg sa;
  int plain = 0; /* the Service exists and is not (or no longer) taken over */
  memset(&sa, 0, sizeof sa);
  sa.id = id;
  if (kube_update_retry(k, &sref, service_mutate, &sa, NULL, &e) < 0) {
    if (e.status != 404) {
      snprintf(err, errlen, "%s", e.msg);
      return -1;
    }
  } else if (sa.newer) {
    say(rep, "service %s/%s: taken over again by another takeover since %s ended: left alone", ns,
        service, id);
    return 0;
  } else if (!sa.had_takeover) {
    plain = 1;
  } else if (sa.had_takeover) {
    rep->changed++;
    if (sa.restored) {
      say(rep, "service %s/%s: selector restored to %s", ns, service, sa.original);
      wait_endpoints(k, ns, service, rep);
    }
    else if (sa.conflict) {
      rep->conflicts++;
      say(rep, "service %s/%s: selector left as %s: it was changed by someone else while taken "
          "over%s (the selector before the takeover was %s)", ns, service, sa.current,
          sa.unmerged ? "; kbridge's key removed from it" : "", sa.original);
    } else {
      say(rep, "service %s/%s: kbridge annotations removed", ns, service);
    }
    if (sa.policy[0]) say(rep, "service %s/%s: %s restored", ns, service, sa.policy);
    if (sa.unpaused)
      say(rep, "service %s/%s: %s annotation removed (set by --pause-gitops)", ns, service,
          TAKEOVER_FLUX_RECONCILE);
  }

  /* Is the agent still there? */
  struct kube_ref dref = {"apps/v1", "deployments", ns, nm.agent, NULL};
  cJSON *dep = NULL;
  int agent_exists = 0;
  if (kube_get(k, &dref, &dep, &e) == 0) {
    agent_exists = takeover_is_managed(dep);
    cJSON_Delete(dep);
  } else if (e.status != 404) {
    snprintf(err, errlen, "%s", e.msg);
    return -1;
  }
  /* Someone else put the selector back a moment ago (the other agent's
   * lease, the CLI, kbridge-signer): the agent pods may still be the
   * Service's endpoints, so the same wait before they go. */
  if (plain && agent_exists && endpoints_list_agent(k, ns, service))
    wait_endpoints(k, ns, service, rep);

  /* 3. shadow Service, Secret (with TAKEOVER_RESTORE_GC: left to the garbage
   * collector, as they are owned by the agent's Deployment) */
  int gc = (flags & TAKEOVER_RESTORE_GC) != 0;
  if (gc && agent_exists)
    say(rep, "service %s/%s, secret %s/%s: removed with the deployment (garbage collector)", ns,
        nm.origin, ns, nm.secret);
  else if (!gc && (delete_managed(k, "v1", "services", "service", ns, nm.origin, id, rep, err, errlen) < 0 ||
                   delete_managed(k, "v1", "secrets", "secret", ns, nm.secret, id, rep, err, errlen) < 0))
    return -1;

  /* 4. the agent, last */
  if (!agent_exists && gc) {
    say(rep, "leftovers of %s/%s's agent (if any: its secret, serviceaccount, role, "
        "rolebinding, networkpolicies) are not removed here; `kbridge restore -n %s --service %s` "
        "removes them", ns, service, ns, service);
  } else if (!agent_exists) {
    /* Leftovers of an agent deleted earlier (or never created). */
    if (delete_policies(k, ns, service, id, rep, err, errlen) < 0 ||
        delete_managed(k, "rbac.authorization.k8s.io/v1", "rolebindings", "rolebinding", ns,
                       nm.agent, id, rep, err, errlen) < 0 ||
        delete_managed(k, "rbac.authorization.k8s.io/v1", "roles", "role", ns, nm.agent, id, rep,
                       err, errlen) < 0 ||
        delete_managed(k, "v1", "serviceaccounts", "serviceaccount", ns, nm.agent, id, rep, err,
                       errlen) < 0)
      return -1;
  }
  if (delete_managed(k, "apps/v1", "deployments", "deployment", ns, nm.agent, id, rep, err, errlen) < 0)
    return -1;
  if (agent_exists)
    say(rep, "serviceaccount, role and rolebinding %s/%s (and kbridge's networkpolicies, if any): "
        "removed with the deployment (garbage collector)", ns, nm.agent);
  return 0;
}

int takeover_new_id(char *out, size_t outlen) {
  unsigned char b[8];
  if (outlen < 2 * sizeof b + 1 || getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) return -1;
  for (size_t i = 0; i < sizeof b; i++) snprintf(out + 2 * i, 3, "%02x", b[i]);
  return 0;
}
