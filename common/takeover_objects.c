/* takeover_objects.c: the rules on single objects that connect and the
 * restore (takeover.c) share, none of which talks to the API server: the
 * names of kbridge's objects, its labels and annotations, the selector states
 * and their unmerge, the traffic policies and the GitOps pause kept in
 * annotations, the Endpoints counts, the Ingress clone and takeover ids (see
 * takeover.h). */
#include "takeover.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/random.h>

#include <cjson/cJSON.h>

int takeover_names(const char *service, struct takeover_names *out) {
  size_t n = strlen(service);
  if (n == 0 || n > TAKEOVER_MAX_SERVICE) return -1;
  snprintf(out->agent, sizeof out->agent, "kbridge-agent-%s", service);
  snprintf(out->secret, sizeof out->secret, "kbridge-agent-%s-tls", service);
  snprintf(out->origin, sizeof out->origin, "%s-kbridge-origin", service);
  return 0;
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

/* kind "Deployment" | "StatefulSet" | "ReplicaSet" -> plural, or NULL. */
const char *takeover_workload_resource(const char *kind) {
  if (kind == NULL) return NULL;
  if (strcmp(kind, "Deployment") == 0) return "deployments";
  if (strcmp(kind, "StatefulSet") == 0) return "statefulsets";
  if (strcmp(kind, "ReplicaSet") == 0) return "replicasets";
  return NULL;
}
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
int takeover_new_id(char *out, size_t outlen) {
  unsigned char b[8];
  if (outlen < 2 * sizeof b + 1 || getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) return -1;
  for (size_t i = 0; i < sizeof b; i++) snprintf(out + 2 * i, 3, "%02x", b[i]);
  return 0;
}
