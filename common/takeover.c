/* takeover.c: putting the cluster back after `kbridge connect` (see takeover.h);
 * the rules on single objects it shares with connect are in takeover_objects.c.
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

#include <cjson/cJSON.h>

#include "kube.h"

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

