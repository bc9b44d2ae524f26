/* connect_takeover.c: step 3 of `kbridge connect`: the Service switched to the
 * agent (and an exclusive takeover's workload scaled to 0), --ingress clones,
 * and the route annotations that tell who is connected. */
#include "connect_internal.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include <cjson/cJSON.h>

#include "agentquery.h"
#include "kube.h"

/* ---- 3. switch ---- */

struct switch_arg {
  struct conn *c;
  const cJSON *expect; /* the selector inspect saw */
  char policy[100];    /* the traffic policies set from Local to Cluster, or "" */
};

static int switch_mutate(cJSON *obj, void *arg, char *err, size_t errlen) {
  struct switch_arg *sa = arg;
  struct conn *c = sa->c;
  cJSON *spec = cJSON_GetObjectItemCaseSensitive(obj, "spec");
  cJSON *sel = cJSON_GetObjectItemCaseSensitive(spec, "selector");
  if (!sel || !cJSON_Compare(sel, sa->expect, 1)) {
    snprintf(err, errlen, "its selector changed while kbridge was preparing (now %s)",
             sel ? conn_selector_string(sel) : "none");
    return -1;
  }
  cJSON *md = cJSON_GetObjectItemCaseSensitive(obj, "metadata");
  cJSON *ann = cJSON_GetObjectItemCaseSensitive(md, "annotations");
  if (!ann) ann = cJSON_AddObjectToObject(md, "annotations");
  char *orig = cJSON_PrintUnformatted(sel);
  char agent_sel[200], since[40], tk[1200];
  snprintf(agent_sel, sizeof agent_sel, "{\"%s\":\"%s\"}", TAKEOVER_LABEL_AGENT, c->svc);
  conn_iso_now(since, sizeof since);
  cJSON *t = cJSON_CreateObject();
  cJSON_AddStringToObject(t, "mode", c->cfg->replace ? "exclusive" : "routing");
  cJSON_AddStringToObject(t, "since", since);
  if (c->takeover_id[0]) cJSON_AddStringToObject(t, "id", c->takeover_id);
  cJSON_AddStringToObject(t, "by", c->by);
  cJSON_AddStringToObject(t, "agent", c->nm.agent);
  cJSON *wl = cJSON_AddObjectToObject(t, "workload");
  cJSON_AddStringToObject(wl, "kind", c->wl_kind);
  cJSON_AddStringToObject(wl, "name", c->wl_name);
  char *ts = cJSON_PrintUnformatted(t);
  snprintf(tk, sizeof tk, "%s", ts ? ts : "{}");
  free(ts);
  cJSON_Delete(t);
  cJSON_DeleteItemFromObjectCaseSensitive(ann, TAKEOVER_ANN_ORIGINAL_SELECTOR);
  cJSON_DeleteItemFromObjectCaseSensitive(ann, TAKEOVER_ANN_AGENT_SELECTOR);
  cJSON_DeleteItemFromObjectCaseSensitive(ann, TAKEOVER_ANN_TAKEOVER);
  cJSON_AddStringToObject(ann, TAKEOVER_ANN_ORIGINAL_SELECTOR, orig ? orig : "{}");
  cJSON_AddStringToObject(ann, TAKEOVER_ANN_AGENT_SELECTOR, agent_sel);
  cJSON_AddStringToObject(ann, TAKEOVER_ANN_TAKEOVER, tk);
  free(orig);
  cJSON_ReplaceItemInObjectCaseSensitive(spec, "selector", cJSON_Parse(agent_sel));
  /* Local traffic policies: the agent's pods serve every node's clients */
  takeover_policy_cluster(obj, sa->policy, sizeof sa->policy);
  if (c->cfg->pause_gitops) c->paused = takeover_gitops_pause(obj);
  return 0;
}

int conn_pause_mutate(cJSON *obj, void *arg, char *err, size_t errlen) {
  struct conn *c = arg;
  (void)err;
  (void)errlen;
  if (!takeover_annotation(obj, TAKEOVER_ANN_TAKEOVER)) return 1;
  c->paused = takeover_gitops_pause(obj);
  return c->paused ? 0 : 1;
}

void conn_pause_report(struct conn *c) {
  if (!c->cfg->pause_gitops) return;
  if (c->paused)
    conn_progress(c, "pause-gitops", "service %s/%s: %s=disabled while taken over (removed on "
             "restore)", c->ns, c->svc, TAKEOVER_FLUX_RECONCILE);
  else
    conn_progress(c, "pause-gitops", "service %s/%s already carries %s; left as it is", c->ns,
             c->svc, TAKEOVER_FLUX_RECONCILE);
}

struct scale_arg {
  long was;
};

static int scale_mutate(cJSON *obj, void *arg, char *err, size_t errlen) {
  struct scale_arg *sa = arg;
  (void)err;
  (void)errlen;
  cJSON *md = cJSON_GetObjectItemCaseSensitive(obj, "metadata");
  cJSON *ann = cJSON_GetObjectItemCaseSensitive(md, "annotations");
  if (!ann) ann = cJSON_AddObjectToObject(md, "annotations");
  cJSON *spec = cJSON_GetObjectItemCaseSensitive(obj, "spec");
  cJSON *rep = cJSON_GetObjectItemCaseSensitive(spec, "replicas");
  sa->was = cJSON_IsNumber(rep) ? (long)rep->valuedouble : 1;
  if (cJSON_GetObjectItemCaseSensitive(ann, TAKEOVER_ANN_ORIGINAL_REPLICAS)) return 1;
  char n[24];
  snprintf(n, sizeof n, "%ld", sa->was);
  cJSON_AddStringToObject(ann, TAKEOVER_ANN_ORIGINAL_REPLICAS, n);
  if (rep)
    cJSON_SetNumberValue(rep, 0);
  else
    cJSON_AddNumberToObject(spec, "replicas", 0);
  return 0;
}

void conn_wait_taken(struct conn *c) {
  struct kube_ref r = {"v1", "endpoints", c->ns, c->svc, NULL};
  double t0 = conn_now_s();
  int agent = 0, other = 0;
  for (;;) {
    struct kube_err e;
    cJSON *ep = NULL;
    if (kube_get(c->k, &r, &ep, &e) < 0) {
      conn_progress(c, "endpoints", "endpoints %s/%s: not waited for (%s)", c->ns, c->svc,
               e.status == 403 ? "no right to read them; re-apply deploy/rbac/developer-role.yaml"
                               : e.msg);
      return;
    }
    int ok = takeover_endpoints_taken(ep, c->svc, &agent, &other);
    cJSON_Delete(ep);
    if (ok) {
      conn_progress(c, "endpoints",
                    "endpoints %s/%s: the agent only after %.1f s; %.1f s more for "
                    "kube-proxy",
                    c->ns, c->svc, conn_now_s() - t0, TAKEOVER_PROXY_GRACE_TAKE_MS / 1000.0);
      usleep(TAKEOVER_PROXY_GRACE_TAKE_MS * 1000);
      return;
    }
    if (conn_now_s() - t0 >= TAKEOVER_ENDPOINTS_WAIT_S) {
      conn_progress(c, "endpoints", "endpoints %s/%s: still %d other address%s and %d ready agent "
               "address%s after %d s; going on (routed requests may reach the real pods until "
               "they follow)", c->ns, c->svc, other, other == 1 ? "" : "es", agent,
               agent == 1 ? "" : "es", TAKEOVER_ENDPOINTS_WAIT_S);
      return;
    }
    usleep(200 * 1000);
  }
}

int conn_switch_service(struct conn *c) {
  struct kube_ref r = {"v1", "services", c->ns, c->svc, NULL};
  struct kube_err e;
  struct switch_arg sa = {c, c->orig_selector, ""};
  if (kube_update_retry(c->k, &r, switch_mutate, &sa, NULL, &e) < 0) {
    conn_fail_kube(c, &e);
    return -1;
  }
  conn_progress(c, "switch-selector", "service %s/%s now selects the agent (was %s)", c->ns, c->svc,
           conn_selector_string(c->orig_selector));
  if (sa.policy[0])
    conn_progress(c, "traffic-policy",
                  "service %s/%s: %s set from Local to Cluster while taken over "
                  "(the agent's two pods serve the clients of every node; with Local those on "
                  "other nodes would lose the Service); put back at restore",
                  c->ns, c->svc, sa.policy);
  conn_pause_report(c);
  if (c->cfg->replace) {
    const char *res = takeover_workload_resource(c->wl_kind);
    if (res == NULL) {
      conn_progress(c, "scale-workload", "%s %s cannot be scaled; its pods keep running but get no "
               "traffic", c->wl_kind, c->wl_name);
      return 0;
    }
    struct kube_ref w = {"apps/v1", res, c->ns, c->wl_name, NULL};
    struct scale_arg sc = {0};
    if (kube_update_retry(c->k, &w, scale_mutate, &sc, NULL, &e) < 0) {
      conn_fail_kube(c, &e);
      return -1;
    }
    conn_progress(c, "scale-workload", "%s %s scaled from %ld to 0 replicas", c->wl_kind,
                  c->wl_name, sc.was);
  }
  return 0;
}

/* ---- --ingress: clones of the Service's Ingresses for our key ---- */

/* The browser URL of a cloned rule: https if the clone lists the host under
 * tls, the path of the first path that goes to our Service. */
static void clone_urls(struct conn *c, const cJSON *clone) {
  const cJSON *rule, *p, *t, *h;
  cJSON_ArrayForEach(rule, conn_jget(clone, "spec.rules")) {
    const char *host = conn_jstr(rule, "host"), *path = NULL;
    if (!host) continue;
    cJSON_ArrayForEach(p, conn_jget(rule, "http.paths")) {
      const char *n = conn_jstr(p, "backend.service.name");
      if (n && strcmp(n, c->svc) == 0) {
        path = conn_jstr(p, "path");
        break;
      }
    }
    if (!path) continue; /* a host of the Ingress that goes elsewhere */
    int tls = 0;
    cJSON_ArrayForEach(t, conn_jget(clone, "spec.tls")) {
      cJSON_ArrayForEach(h, cJSON_GetObjectItemCaseSensitive(t, "hosts")) {
        if (cJSON_GetStringValue(h) && strcmp(h->valuestring, host) == 0) tls = 1;
      }
    }
    char u[600];
    snprintf(u, sizeof u, "%s://%s%s", tls ? "https" : "http", host, path[0] == '/' ? path : "/");
    cJSON_AddItemToArray(c->ingress_urls, cJSON_CreateString(u));
  }
}

int conn_clone_ingresses(struct conn *c) {
  struct kube_err e;
  struct takeover_report rep;
  char err[1200];
  memset(&rep, 0, sizeof rep);
  c->ingress_urls = cJSON_CreateArray();
  struct kube_ref dr = {"apps/v1", "deployments", c->ns, c->nm.agent, NULL};
  cJSON *d = NULL;
  if (kube_get(c->k, &dr, &d, &e) < 0) {
    conn_fail(c, "--ingress: %s", e.msg);
    return -1;
  }
  char uid[100];
  snprintf(uid, sizeof uid, "%s", conn_jstr(d, "metadata.uid") ? conn_jstr(d, "metadata.uid") : "");
  cJSON_Delete(d);
  c->cloned = 1;
  if (takeover_remove_ingress_clones(c->k, c->ns, c->svc, c->cfg->key, &rep, err, sizeof err) < 0) {
    conn_fail(c, "--ingress: %s", err);
    return -1;
  }
  if (rep.text[0]) conn_progress(c, "ingress", "clones left by an earlier session: %s", rep.text);
  struct kube_ref r = {"networking.k8s.io/v1", "ingresses", c->ns, NULL, NULL};
  cJSON *list = NULL;
  if (kube_list(c->k, &r, NULL, &list, &e) < 0) {
    conn_fail(c, "--ingress: %s", e.msg);
    return -1;
  }
  int made = 0, rc = 0;
  const cJSON *ing;
  cJSON_ArrayForEach(ing, conn_jget(list, "items")) {
    cJSON *clone = takeover_ingress_clone(ing, c->svc, c->cfg->key, err, sizeof err);
    if (!clone) {
      if (err[0]) conn_progress(c, "ingress", "%s", err);
      continue;
    }
    cJSON_AddItemToObject(conn_jget(clone, "metadata"), "ownerReferences",
                          conn_owner_ref(c->nm.agent, uid));
    cJSON *out = NULL;
    if (kube_create(c->k, &r, clone, &out, &e) < 0) {
      conn_fail(c, "--ingress: %s%s", e.msg,
           e.status == 409 ? " (an Ingress of that name exists and is not kbridge's clone)" : "");
      cJSON_Delete(clone);
      rc = -1;
      break;
    }
    size_t before = (size_t)cJSON_GetArraySize(c->ingress_urls);
    clone_urls(c, out);
    char hosts[600] = "";
    for (size_t i = before; i < (size_t)cJSON_GetArraySize(c->ingress_urls); i++) {
      size_t l = strlen(hosts);
      snprintf(hosts + l, sizeof hosts - l, "%s%s", l ? ", " : "",
               cJSON_GetArrayItem(c->ingress_urls, (int)i)->valuestring);
    }
    conn_progress(c, "ingress", "ingress %s/%s cloned as %s: %s", c->ns,
                  conn_jstr(ing, "metadata.name"), conn_jstr(clone, "metadata.name"),
                  hosts[0] ? hosts : "(no host routes to the service)");
    made++;
    cJSON_Delete(out);
    cJSON_Delete(clone);
  }
  cJSON_Delete(list);
  if (rc == 0 && made == 0)
    conn_progress(c, "ingress",
                  "--ingress: no Ingress in namespace %s routes to service %s (with a "
                  "host): nothing cloned",
                  c->ns, c->svc);
  return rc;
}

void conn_unclone_ingresses(struct conn *c) {
  struct takeover_report rep;
  char err[1200];
  if (!c->cloned) return;
  memset(&rep, 0, sizeof rep);
  if (takeover_remove_ingress_clones(c->k, c->ns, c->svc, c->cfg->key, &rep, err, sizeof err) < 0)
    conn_fail(c,
              "removing your ingress clones: %s (they go when the takeover ends: `kbridge restore "
              "-n %s --service %s`)",
              err, c->ns, c->svc);
  else if (rep.text[0])
    conn_progress(c, "ingress-removed", "%s", rep.text);
  c->cloned = 0;
}

/* ---- route annotations: who is connected (for list and "am I the last") ---- */

struct route_arg {
  struct conn *c;
  int add;       /* 1: add ours; 0: remove ours */
  int others;    /* remaining live routes of others */
  char holders[600];
};

static int route_live(const char *value, const char *myhost) {
  cJSON *v = cJSON_Parse(value);
  const char *host = conn_jstr(v, "host");
  const cJSON *pid = conn_jget(v, "pid");
  int live = 1;
  /* Same machine and the pid is gone: a CLI that died without a word. */
  if (host && myhost && strcmp(host, myhost) == 0 && cJSON_IsNumber(pid) &&
      kill((pid_t)pid->valueint, 0) < 0 && errno == ESRCH)
    live = 0;
  cJSON_Delete(v);
  return live;
}

static int route_mutate(cJSON *obj, void *arg, char *err, size_t errlen) {
  struct route_arg *ra = arg;
  struct conn *c = ra->c;
  (void)err;
  (void)errlen;
  cJSON *md = cJSON_GetObjectItemCaseSensitive(obj, "metadata");
  cJSON *ann = cJSON_GetObjectItemCaseSensitive(md, "annotations");
  if (!ann) ann = cJSON_AddObjectToObject(md, "annotations");
  char mine[128], host[128] = "";
  snprintf(mine, sizeof mine, "kbridge.dev/route-%s", c->cfg->key);
  gethostname(host, sizeof host - 1);
  ra->others = 0;
  ra->holders[0] = '\0';
  snprintf(c->annotated, sizeof c->annotated, ",");
  c->annotated_known = 1;
  if (!cJSON_GetObjectItemCaseSensitive(ann, TAKEOVER_ANN_TAKEOVER) && ra->add) return 1;
  cJSON *it;
  cJSON_ArrayForEach(it, ann) {
    if (strncmp(it->string, "kbridge.dev/route-", 18) != 0 || strcmp(it->string, mine) == 0)
      continue;
    if (cJSON_IsString(it) && route_live(it->valuestring, host)) {
      ra->others++;
      size_t l = strlen(ra->holders);
      snprintf(ra->holders + l, sizeof ra->holders - l, "%s%s", l ? ", " : "", it->string + 18);
      l = strlen(c->annotated);
      snprintf(c->annotated + l, sizeof c->annotated - l, "%s,", it->string + 18);
    }
  }
  /* Our key taken over with --force by another identity: the annotation is
   * theirs now; leave it, and count them as staying. */
  const char *cur = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ann, mine));
  cJSON *cv = cur ? cJSON_Parse(cur) : NULL;
  const char *cid = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cv, "identity"));
  int theirs = !ra->add && cid && *cid && strcmp(cid, c->identity) != 0;
  cJSON_Delete(cv);
  if (theirs) {
    ra->others++;
    size_t l = strlen(ra->holders);
    snprintf(ra->holders + l, sizeof ra->holders - l, "%s%s", l ? ", " : "", c->cfg->key);
    return 1;
  }
  cJSON_DeleteItemFromObjectCaseSensitive(ann, mine);
  if (ra->add) {
    char since[40], v[1000];
    conn_iso_now(since, sizeof since);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "by", c->by);
    if (c->identity[0]) cJSON_AddStringToObject(o, "identity", c->identity);
    cJSON_AddStringToObject(o, "since", since);
    cJSON_AddStringToObject(o, "host", host);
    cJSON_AddNumberToObject(o, "pid", (double)getpid());
    char *s = cJSON_PrintUnformatted(o);
    snprintf(v, sizeof v, "%s", s ? s : "{}");
    free(s);
    cJSON_Delete(o);
    cJSON_AddStringToObject(ann, mine, v);
  }
  return 0;
}

int conn_key_held(struct conn *c) {
  char err[800], ann[120], host[128] = "";
  cJSON *h = NULL;
  snprintf(ann, sizeof ann, "kbridge.dev/route-%s", c->cfg->key);
  const char *v = takeover_annotation(c->service, ann);
  cJSON *vj = v ? cJSON_Parse(v) : NULL;
  char who[400];
  snprintf(who, sizeof who, "%s%s%s", conn_jstr(vj, "by") ? conn_jstr(vj, "by") : "someone",
           conn_jstr(vj, "since") ? " since " : "",
           conn_jstr(vj, "since") ? conn_jstr(vj, "since") : "");
  int held = 0;
  if (conn_jstr(vj, "identity")) /* the identity its certificate names, when recorded */
    snprintf(who, sizeof who, "%s%s%s", conn_jstr(vj, "identity"),
             conn_jstr(vj, "since") ? " since " : "",
             conn_jstr(vj, "since") ? conn_jstr(vj, "since") : "");
  if (agent_healthz(c->k, c->ns, c->svc, &h, err, sizeof err) == 0) {
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(conn_jget(h, "keys"), c->cfg->key);
    held = cJSON_IsNumber(n) && n->valueint > 0;
    const char *id = cJSON_GetStringValue(
        cJSON_GetObjectItemCaseSensitive(conn_jget(h, "identities"), c->cfg->key));
    if (held && id && *id) snprintf(who, sizeof who, "%s", id); /* the agent knows best */
  } else {
    log_warn("cannot ask the agent who is connected (%s); going by the annotations", err);
    gethostname(host, sizeof host - 1);
    held = v && route_live(v, host);
  }
  cJSON_Delete(h);
  cJSON_Delete(vj);
  if (held && c->cfg->force) {
    conn_progress(c, "force", "route key \"%s\" is held on %s/%s by %s: --force takes it over",
             c->cfg->key, c->ns, c->svc, who);
    held = 0;
  }
  if (held) {
    c->reason = "route_held";
    conn_fail(c, "route key \"%s\" is already held on %s/%s by %s; choose another --route-as (or "
         "take it over with --force, which is logged)", c->cfg->key, c->ns, c->svc, who);
    return -1;
  }
  return 0;
}

int conn_agent_other_keys(struct conn *c, char *names, size_t len) {
  char err[800];
  cJSON *h = NULL;
  names[0] = '\0';
  if (agent_healthz(c->k, c->ns, c->svc, &h, err, sizeof err) < 0) {
    log_info("cannot ask the agent who is connected: %s", err);
    return -1;
  }
  const cJSON *leases = conn_jget(h, "leases");
  const cJSON *list = leases ? leases : conn_jget(h, "keys");
  int n = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, list) {
    const cJSON *tn = leases ? cJSON_GetObjectItemCaseSensitive(it, "tunnels") : it;
    int tunnels = cJSON_IsNumber(tn) ? tn->valueint : 0;
    /* our own key counts when another identity holds it now (--force) */
    const char *id = cJSON_GetStringValue(
        cJSON_GetObjectItemCaseSensitive(conn_jget(h, "identities"), it->string));
    int ours = strcmp(it->string, c->cfg->key) == 0 && !(id && strcmp(id, c->identity) != 0);
    if (ours || (!leases && tunnels <= 0)) continue;
    char mark[80];
    snprintf(mark, sizeof mark, ",%s,", it->string);
    if (tunnels <= 0 && c->annotated_known && !strstr(c->annotated, mark)) continue; /* left */
    size_t l = strlen(names);
    const cJSON *lost = cJSON_GetObjectItemCaseSensitive(it, "lost_seconds");
    const cJSON *left = cJSON_GetObjectItemCaseSensitive(it, "seconds_remaining");
    if (tunnels <= 0 && cJSON_IsNumber(lost) && cJSON_IsNumber(left))
      snprintf(names + l, len - l, "%s%s (tunnel lost %.0f s ago, lease ends in %.0f s)",
               l ? ", " : "", it->string, lost->valuedouble, left->valuedouble);
    else
      snprintf(names + l, len - l, "%s%s", l ? ", " : "", it->string);
    n++;
  }
  cJSON_Delete(h);
  return n;
}

int conn_set_route(struct conn *c, int add, int *others) {
  struct kube_ref r = {"v1", "services", c->ns, c->svc, NULL};
  struct kube_err e;
  struct route_arg ra = {c, add, 0, ""};
  if (kube_update_retry(c->k, &r, route_mutate, &ra, NULL, &e) < 0) {
    if (e.status == 404 && !add) {
      *others = 0;
      return 0;
    }
    conn_fail_kube(c, &e);
    return -1;
  }
  *others = ra.others;
  snprintf(c->holders, sizeof c->holders, "%s", ra.holders);
  return 0;
}
