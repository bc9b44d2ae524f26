/* agentpod.c: the developer's additions to the agent pod, checked before the
 * first write, and the reason admission refused the pod (see agentpod.h). */
#include "agentpod.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- syntax ---- */

/* A DNS subdomain (RFC 1123, lowercase): what Kubernetes names objects and
 * label prefixes with. */
static int subdomain_ok(const char *s, size_t n) {
  if (n == 0 || n > 253) return 0;
  size_t lab = 0;
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    if (ch == '.') {
      if (lab == 0 || s[i - 1] == '-') return 0;
      lab = 0;
      continue;
    }
    if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-')) return 0;
    if (lab == 0 && ch == '-') return 0;
    if (++lab > 63) return 0;
  }
  return s[n - 1] != '-' && s[n - 1] != '.';
}

/* A label name or value: <= 63 of [A-Za-z0-9-_.], alphanumeric at both ends. */
static int name_ok(const char *s, size_t n) {
  if (n == 0 || n > 63) return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (!isalnum(ch) && ch != '-' && ch != '_' && ch != '.') return 0;
  }
  return isalnum((unsigned char)s[0]) && isalnum((unsigned char)s[n - 1]);
}

int agentpod_label_key_ok(const char *k) {
  const char *slash = strchr(k, '/');
  if (!slash) return name_ok(k, strlen(k));
  return subdomain_ok(k, (size_t)(slash - k)) && name_ok(slash + 1, strlen(slash + 1));
}

int agentpod_label_value_ok(const char *v) {
  return *v == '\0' || name_ok(v, strlen(v));
}

int agentpod_quantity(const char *q, double *out) {
  static const struct {
    const char *sfx;
    double mul;
  } sfx[] = {{"Ki", 1024.0}, {"Mi", 1048576.0}, {"Gi", 1073741824.0}, {"Ti", 1099511627776.0},
             {"Pi", 1125899906842624.0}, {"Ei", 1152921504606846976.0}, {"n", 1e-9},
             {"u", 1e-6}, {"m", 1e-3}, {"k", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12},
             {"P", 1e15}, {"E", 1e18}, {"", 1.0}};
  const char *p = q;
  int digits = 0;
  while (*p >= '0' && *p <= '9') p++, digits++;
  if (*p == '.') {
    p++;
    while (*p >= '0' && *p <= '9') p++, digits++;
  }
  if (digits == 0 || strlen(q) > 40) return 0;
  double mul = 0;
  if ((*p == 'e' || *p == 'E') && p[1]) { /* decimal exponent: 1e3 */
    const char *x = p + 1;
    if (*x == '+' || *x == '-') x++;
    if (!*x) return 0;
    for (const char *y = x; *y; y++)
      if (*y < '0' || *y > '9') return 0;
    char buf[48];
    snprintf(buf, sizeof buf, "1%s", p);
    mul = strtod(buf, NULL);
  } else {
    for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++)
      if (strcmp(p, sfx[i].sfx) == 0) {
        mul = sfx[i].mul;
        break;
      }
    if (mul == 0) return 0;
  }
  char num[48];
  snprintf(num, sizeof num, "%.*s", (int)(p - q), q);
  if (out) *out = strtod(num, NULL) * mul;
  return 1;
}

/* Labels and annotations kbridge itself sets and reads: not the developer's. */
static int reserved_key(const char *k) {
  return strncmp(k, "kbridge.dev/", 12) == 0 || strcmp(k, "app.kubernetes.io/managed-by") == 0;
}

/* "K=V" into obj. flag: for errors; label_value: V must be a label value;
 * reserved_ok: kbridge's own keys allowed (a node's labels are not ours). */
static int kv_into(const char *flag, const char *item, int label_value, int reserved_ok,
                   cJSON *obj, char *err, size_t errlen) {
  const char *eq = strchr(item, '=');
  char key[320];
  if (!eq || (size_t)(eq - item) >= sizeof key) {
    snprintf(err, errlen, "--%s: expected KEY=VALUE, got \"%s\"", flag, item);
    return -1;
  }
  snprintf(key, sizeof key, "%.*s", (int)(eq - item), item);
  if (!agentpod_label_key_ok(key)) {
    snprintf(err, errlen, "--%s: \"%s\" is not a valid key (an optional DNS prefix and '/', then "
             "1-63 of letters, digits, '-', '_', '.', starting and ending alphanumeric)", flag, key);
    return -1;
  }
  if (!reserved_ok && reserved_key(key)) {
    snprintf(err, errlen, "--%s: \"%s\" is kbridge's own key; choose another", flag, key);
    return -1;
  }
  if (label_value && !agentpod_label_value_ok(eq + 1)) {
    snprintf(err, errlen, "--%s: \"%s\" is not a valid label value for %s (at most 63 of letters, "
             "digits, '-', '_', '.', starting and ending alphanumeric)", flag, eq + 1, key);
    return -1;
  }
  if (!label_value && strlen(eq + 1) > 65536) {
    snprintf(err, errlen, "--%s: the value of %s is too long", flag, key);
    return -1;
  }
  if (cJSON_GetObjectItemCaseSensitive(obj, key)) {
    snprintf(err, errlen, "--%s: %s given twice", flag, key);
    return -1;
  }
  cJSON_AddStringToObject(obj, key, eq + 1);
  return 0;
}

static cJSON *kv_list(const char *flag, const struct opt_list *l, int label_value, char *err,
                      size_t errlen, int *bad) {
  if (!l || l->n == 0) return NULL;
  cJSON *o = cJSON_CreateObject();
  for (size_t i = 0; i < l->n; i++)
    if (kv_into(flag, l->v[i], label_value, strcmp(flag, "node-selector") == 0, o, err,
                errlen) < 0) {
      cJSON_Delete(o);
      *bad = 1;
      return NULL;
    }
  return o;
}

/* KEY[=VALUE][:EFFECT] */
static cJSON *toleration(const char *item, char *err, size_t errlen) {
  char key[320], value[80] = "", effect[32] = "";
  const char *colon = strrchr(item, ':');
  size_t klen = colon ? (size_t)(colon - item) : strlen(item);
  const char *eq = memchr(item, '=', klen);
  if (colon) snprintf(effect, sizeof effect, "%s", colon + 1);
  if (eq) {
    snprintf(value, sizeof value, "%.*s", (int)(klen - (size_t)(eq - item) - 1), eq + 1);
    klen = (size_t)(eq - item);
  }
  if (klen >= sizeof key) klen = sizeof key - 1;
  snprintf(key, sizeof key, "%.*s", (int)klen, item);
  const char *why = NULL;
  if (!agentpod_label_key_ok(key))
    why = "the key is not a valid taint key";
  else if (eq && !agentpod_label_value_ok(value))
    why = "the value is not a valid taint value";
  else if (colon && strcmp(effect, "NoSchedule") != 0 && strcmp(effect, "PreferNoSchedule") != 0 &&
           strcmp(effect, "NoExecute") != 0)
    why = "the effect must be NoSchedule, PreferNoSchedule or NoExecute";
  if (why) {
    snprintf(err, errlen, "--toleration: expected KEY[=VALUE][:EFFECT] (as in the taint), got "
             "\"%s\": %s", item, why);
    return NULL;
  }
  cJSON *t = cJSON_CreateObject();
  cJSON_AddStringToObject(t, "key", key);
  cJSON_AddStringToObject(t, "operator", eq ? "Equal" : "Exists");
  if (eq) cJSON_AddStringToObject(t, "value", value);
  if (colon) cJSON_AddStringToObject(t, "effect", effect);
  return t;
}

/* "cpu=Q,memory=Q" into obj (replacing what is there). */
static int resources_into(const char *flag, const char *spec, cJSON *obj, char *err,
                          size_t errlen) {
  char buf[600];
  if (strlen(spec) >= sizeof buf) {
    snprintf(err, errlen, "--%s: too long", flag);
    return -1;
  }
  snprintf(buf, sizeof buf, "%s", spec);
  char *save = NULL;
  int n = 0;
  for (char *it = strtok_r(buf, ",", &save); it; it = strtok_r(NULL, ",", &save), n++) {
    char *eq = strchr(it, '=');
    if (eq) *eq = '\0';
    const char *name = it, *q = eq ? eq + 1 : "";
    if (strcmp(name, "cpu") != 0 && strcmp(name, "memory") != 0 &&
        strcmp(name, "ephemeral-storage") != 0) {
      snprintf(err, errlen, "--%s: expected cpu=Q,memory=Q,ephemeral-storage=Q (any of them), got "
               "\"%s\"", flag, spec);
      return -1;
    }
    if (!agentpod_quantity(q, NULL)) {
      snprintf(err, errlen, "--%s: %s: \"%s\" is not a Kubernetes quantity (such as 100m, 0.5, "
               "64Mi, 1Gi)", flag, name, q);
      return -1;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(obj, name);
    cJSON_AddStringToObject(obj, name, q);
  }
  if (n == 0) {
    snprintf(err, errlen, "--%s: expected cpu=Q,memory=Q,ephemeral-storage=Q, got \"%s\"", flag,
             spec);
    return -1;
  }
  return 0;
}

static double qty(const cJSON *o, const char *name) {
  double d = -1;
  const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, name));
  if (s) agentpod_quantity(s, &d);
  return d;
}

/* Requests must not exceed limits. A default on our side yields to what the
 * developer set: a limit below our default request lowers the request, a
 * request above our default limit raises the limit. */
static int resources(const struct agentpod_flags *f, cJSON **out, char *err, size_t errlen) {
  cJSON *req = cJSON_CreateObject(), *lim = cJSON_CreateObject();
  cJSON *ureq = cJSON_CreateObject(), *ulim = cJSON_CreateObject();
  cJSON *r = cJSON_CreateObject();
  cJSON_AddItemToObject(r, "requests", req);
  cJSON_AddItemToObject(r, "limits", lim);
  *out = NULL;
  int rc = -1;
  if ((f->requests && resources_into("agent-requests", f->requests, ureq, err, errlen) < 0) ||
      (f->limits && resources_into("agent-limits", f->limits, ulim, err, errlen) < 0))
    goto done;
  static const char *names[] = {"cpu", "memory", "ephemeral-storage"};
  static const char *dreq[] = {AGENTPOD_REQ_CPU, AGENTPOD_REQ_MEMORY, NULL};
  static const char *dlim[] = {NULL, AGENTPOD_LIMIT_MEMORY, NULL};
  for (int i = 0; i < 3; i++) {
    const char *n = names[i];
    const cJSON *ur = cJSON_GetObjectItemCaseSensitive(ureq, n);
    const cJSON *ul = cJSON_GetObjectItemCaseSensitive(ulim, n);
    if (ur && ul && qty(ureq, n) > qty(ulim, n)) {
      snprintf(err, errlen, "--agent-requests: %s=%s is more than --agent-limits %s=%s", n,
               ur->valuestring, n, ul->valuestring);
      goto done;
    }
    const char *rv = ur ? ur->valuestring : dreq[i];
    const char *lv = ul ? ul->valuestring : dlim[i];
    if (rv && lv) {
      double dr = -1, dl = -1;
      agentpod_quantity(rv, &dr);
      agentpod_quantity(lv, &dl);
      if (dr > dl) {
        if (!ur) rv = lv; /* our default request yields to their limit */
        else lv = rv;     /* our default limit yields to their request */
      }
    }
    if (rv) cJSON_AddStringToObject(req, n, rv);
    if (lv) cJSON_AddStringToObject(lim, n, lv);
  }
  *out = r;
  r = NULL;
  rc = 0;
done:
  cJSON_Delete(r);
  cJSON_Delete(ureq);
  cJSON_Delete(ulim);
  return rc;
}

int agentpod_parse(const struct agentpod_flags *f, struct agentpod *ap, char *err, size_t errlen) {
  memset(ap, 0, sizeof *ap);
  int bad = 0;
  if (f->pull_secrets && f->pull_secrets->n) {
    ap->pull_secrets = cJSON_CreateArray();
    for (size_t i = 0; i < f->pull_secrets->n; i++) {
      const char *s = f->pull_secrets->v[i];
      if (!subdomain_ok(s, strlen(s))) {
        snprintf(err, errlen, "--image-pull-secret: expected the name of a Secret in the namespace "
                 "(lowercase letters, digits, '-' and '.'), got \"%s\"", s);
        goto fail;
      }
      cJSON *o = cJSON_CreateObject();
      cJSON_AddStringToObject(o, "name", s);
      cJSON_AddItemToArray(ap->pull_secrets, o);
    }
  }
  ap->node_selector = kv_list("node-selector", f->node_selector, 1, err, errlen, &bad);
  if (bad) goto fail;
  ap->labels = kv_list("agent-label", f->labels, 1, err, errlen, &bad);
  if (bad) goto fail;
  ap->annotations = kv_list("agent-annotation", f->annotations, 0, err, errlen, &bad);
  if (bad) goto fail;
  if (f->tolerations && f->tolerations->n) {
    ap->tolerations = cJSON_CreateArray();
    for (size_t i = 0; i < f->tolerations->n; i++) {
      cJSON *t = toleration(f->tolerations->v[i], err, errlen);
      if (!t) goto fail;
      cJSON_AddItemToArray(ap->tolerations, t);
    }
  }
  if (resources(f, &ap->resources, err, errlen) < 0) goto fail;
  return 0;
fail:
  agentpod_clear(ap);
  return -1;
}

void agentpod_clear(struct agentpod *ap) {
  cJSON_Delete(ap->pull_secrets);
  cJSON_Delete(ap->node_selector);
  cJSON_Delete(ap->tolerations);
  cJSON_Delete(ap->labels);
  cJSON_Delete(ap->annotations);
  cJSON_Delete(ap->resources);
  memset(ap, 0, sizeof *ap);
}

int agentpod_selected_by(const struct agentpod *ap, const cJSON *selector) {
  if (!ap->labels || !cJSON_IsObject(selector) || cJSON_GetArraySize(selector) == 0) return 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, selector) {
    const cJSON *mine = cJSON_GetObjectItemCaseSensitive(ap->labels, it->string);
    if (!mine || !cJSON_IsString(it) || strcmp(mine->valuestring, it->valuestring) != 0) return 0;
  }
  return 1;
}

/* Add each member of from to to, unless to has it already. */
static void merge_missing(cJSON *to, const cJSON *from) {
  const cJSON *it;
  cJSON_ArrayForEach(it, from) {
    if (!cJSON_GetObjectItemCaseSensitive(to, it->string))
      cJSON_AddItemToObject(to, it->string, cJSON_Duplicate(it, 1));
  }
}

static cJSON *child(cJSON *o, const char *name) {
  cJSON *c = cJSON_GetObjectItemCaseSensitive(o, name);
  if (!c) c = cJSON_AddObjectToObject(o, name);
  return c;
}

void agentpod_apply(const struct agentpod *ap, cJSON *dep) {
  cJSON *tmpl = child(child(dep, "spec"), "template");
  cJSON *md = child(tmpl, "metadata"), *spec = child(tmpl, "spec");
  if (ap->labels) merge_missing(child(md, "labels"), ap->labels);
  if (ap->annotations) merge_missing(child(md, "annotations"), ap->annotations);
  if (ap->pull_secrets)
    cJSON_AddItemToObject(spec, "imagePullSecrets", cJSON_Duplicate(ap->pull_secrets, 1));
  if (ap->node_selector)
    cJSON_AddItemToObject(spec, "nodeSelector", cJSON_Duplicate(ap->node_selector, 1));
  if (ap->tolerations)
    cJSON_AddItemToObject(spec, "tolerations", cJSON_Duplicate(ap->tolerations, 1));
  cJSON *ctr;
  cJSON_ArrayForEach(ctr, cJSON_GetObjectItemCaseSensitive(spec, "containers")) {
    if (!ap->resources) break;
    cJSON_DeleteItemFromObjectCaseSensitive(ctr, "resources");
    cJSON_AddItemToObject(ctr, "resources", cJSON_Duplicate(ap->resources, 1));
  }
}

int agentpod_refusal(const cJSON *dep, char *why, size_t len) {
  const cJSON *conds = cJSON_GetObjectItemCaseSensitive(
      cJSON_GetObjectItemCaseSensitive(dep, "status"), "conditions");
  const cJSON *c;
  cJSON_ArrayForEach(c, conds) {
    const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(c, "type"));
    const char *st = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(c, "status"));
    const char *msg = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(c, "message"));
    if (!type || !st || strcmp(type, "ReplicaFailure") != 0 || strcmp(st, "True") != 0) continue;
    snprintf(why, len, "%s", msg ? msg : "the pod could not be created");
    if (!msg) return 2;
    /* A quota the API server has not counted yet is retried by the controller. */
    if (strstr(msg, "status unknown for quota")) return 2;
    if (strstr(msg, " is forbidden: ") || strstr(msg, " is invalid: ") ||
        strstr(msg, "admission webhook") || strstr(msg, "denied the request"))
      return 1;
    return 2;
  }
  return 0;
}
