/* connect_agent.c: step 2 of `kbridge connect` (connect_run.c has the order):
 * the developer's certificate, and for a fresh takeover the agent's objects
 * (Deployment, ServiceAccount, Role, RoleBinding, Secret, shadow Service,
 * PodDisruptionBudget, NetworkPolicies), then the wait for a Ready agent pod. */
#include "connect_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include <cjson/cJSON.h>

#include "certreq.h"
#include "kube.h"

/* ---- 2. the agent ---- */

int conn_image_ok(const char *s) {
  if (!*s || strlen(s) > 400) return 0;
  for (; *s; s++)
    if (*s <= ' ' || *s == '"' || *s == '\\' || *s == 127) return 0;
  return 1;
}

cJSON *conn_owner_ref(const char *name, const char *uid) {
  char buf[600];
  snprintf(buf, sizeof buf,
           "[{\"apiVersion\":\"apps/v1\",\"kind\":\"Deployment\",\"name\":\"%s\",\"uid\":\"%s\"}]",
           name, uid);
  return cJSON_Parse(buf);
}

static cJSON *labels(const struct conn *c) {
  char buf[300];
  snprintf(buf, sizeof buf, "{\"%s\":\"kbridge\",\"%s\":\"%s\"}", TAKEOVER_LABEL_MANAGED,
           TAKEOVER_LABEL_SERVICE, c->svc);
  return cJSON_Parse(buf);
}

static cJSON *meta(const struct conn *c, const char *name, const char *owner_uid) {
  cJSON *m = cJSON_CreateObject();
  cJSON_AddStringToObject(m, "name", name);
  cJSON_AddStringToObject(m, "namespace", c->ns);
  cJSON_AddItemToObject(m, "labels", labels(c));
  if (c->takeover_id[0]) {
    cJSON *a = cJSON_AddObjectToObject(m, "annotations");
    cJSON_AddStringToObject(a, TAKEOVER_ANN_TAKEOVER_ID, c->takeover_id);
  }
  if (owner_uid)
    cJSON_AddItemToObject(m, "ownerReferences", conn_owner_ref(c->nm.agent, owner_uid));
  return m;
}

static cJSON *agent_deployment(const struct conn *c) {
  cJSON *d = cJSON_CreateObject();
  cJSON_AddStringToObject(d, "apiVersion", "apps/v1");
  cJSON_AddStringToObject(d, "kind", "Deployment");
  cJSON_AddItemToObject(d, "metadata", meta(c, c->nm.agent, NULL));
  char buf[4096], sysctl[160] = "";
  int low_port = 65536;
  for (int i = 0; i < c->plan.nl; i++)
    if (c->plan.l[i].port < low_port) low_port = c->plan.l[i].port;
  /* A port below 1024: NET_BIND_SERVICE would not help a non-root process
   * under no_new_privs (see deploy/agent-deployment.example.yaml); the
   * namespaced sysctl does, and Pod Security "restricted" allows it. */
  if (low_port < 1024)
    snprintf(sysctl, sizeof sysctl,
             ",\"sysctls\":[{\"name\":\"net.ipv4.ip_unprivileged_port_start\",\"value\":\"%d\"}]",
             low_port);
  snprintf(
      buf, sizeof buf,
      "{\"replicas\":0,\"strategy\":{\"type\":\"RollingUpdate\",\"rollingUpdate\":"
      "{\"maxSurge\":1,\"maxUnavailable\":0}},"
      "\"selector\":{\"matchLabels\":{\"%s\":\"%s\"}},"
      "\"template\":{\"metadata\":{\"labels\":{\"%s\":\"%s\",\"%s\":\"kbridge\",\"%s\":\"%s\"}},"
      "\"spec\":{\"serviceAccountName\":\"%s\",\"automountServiceAccountToken\":true,"
      "\"affinity\":{\"podAntiAffinity\":{\"preferredDuringSchedulingIgnoredDuringExecution\":"
      "[{\"weight\":100,\"podAffinityTerm\":{\"topologyKey\":\"kubernetes.io/hostname\","
      "\"labelSelector\":{\"matchLabels\":{\"%s\":\"%s\"}}}}]}},"
      "\"enableServiceLinks\":false,\"terminationGracePeriodSeconds\":30,"
      "\"securityContext\":{\"runAsNonRoot\":true,\"runAsUser\":%d,\"runAsGroup\":%d,"
      "\"fsGroup\":%d,\"seccompProfile\":{\"type\":\"RuntimeDefault\"}%s},"
      "\"volumes\":[{\"name\":\"tls\",\"secret\":{\"secretName\":\"%s\",\"defaultMode\":288,"
      "\"items\":[{\"key\":\"ca.crt\",\"path\":\"ca.crt\"},{\"key\":\"agent.crt\",\"path\":"
      "\"agent.crt\"},{\"key\":\"agent.key\",\"path\":\"agent.key\"}]}}],"
      "\"containers\":[{\"name\":\"agent\",\"imagePullPolicy\":\"IfNotPresent\","
      "\"securityContext\":{\"allowPrivilegeEscalation\":false,\"readOnlyRootFilesystem\":true,"
      "\"runAsNonRoot\":true,\"capabilities\":{\"drop\":[\"ALL\"]},"
      "\"seccompProfile\":{\"type\":\"RuntimeDefault\"}},"
      "\"readinessProbe\":{\"httpGet\":{\"path\":\"/healthz\",\"port\":%d},"
      "\"periodSeconds\":1,\"failureThreshold\":2},"
      "\"livenessProbe\":{\"tcpSocket\":{\"port\":%d},\"periodSeconds\":10,"
      "\"failureThreshold\":3},"
      "\"volumeMounts\":[{\"name\":\"tls\",\"mountPath\":\"" TLS_MOUNT
      "\",\"readOnly\":true}]"
      "}]}}}",
      TAKEOVER_LABEL_AGENT, c->svc, TAKEOVER_LABEL_AGENT, c->svc, TAKEOVER_LABEL_MANAGED,
      TAKEOVER_LABEL_SERVICE, c->svc, c->nm.agent, TAKEOVER_LABEL_AGENT, c->svc, AGENT_UID,
      AGENT_UID, AGENT_UID, sysctl, c->nm.secret, c->metrics_port, c->metrics_port);
  cJSON *spec = cJSON_Parse(buf);
  cJSON *ctr = cJSON_GetArrayItem(conn_jget(spec, "template.spec.containers"), 0);
  cJSON_AddStringToObject(ctr, "image", c->image);
  cJSON *args = cJSON_AddArrayToObject(ctr, "args");
  cJSON *ports = cJSON_AddArrayToObject(ctr, "ports");
  /* <name>.<ns>.svc, completed by the pod's resolv.conf search list: no
   * cluster domain is assumed (custom domains are not cluster.local). */
  snprintf(buf, sizeof buf, "%s.%s.svc", c->nm.origin, c->ns);
  portplan_agent(&c->plan, buf, args, ports);
  const char *fixed[] = {"--tunnel-listen", NULL, "--tls-dir", TLS_MOUNT, "--metrics", NULL,
                         "--namespace", c->ns, "--service", c->svc, "--lease-seconds", NULL,
                         "--grace-seconds", "5", "--drain-seconds", NULL};
  char tl[32], ml[32], ls[16], ds[16];
  snprintf(tl, sizeof tl, "[::]:%d", c->tunnel_port); /* both families: agent/bind.h */
  snprintf(ml, sizeof ml, "[::]:%d", c->metrics_port);
  snprintf(ls, sizeof ls, "%d", c->cfg->lease_seconds);
  snprintf(ds, sizeof ds, "%d", AGENT_DRAIN_S);
  fixed[1] = tl;
  fixed[5] = ml;
  fixed[11] = ls;
  fixed[15] = ds;
  for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
    cJSON_AddItemToArray(args, cJSON_CreateString(fixed[i]));
  if (c->cfg->replace) cJSON_AddItemToArray(args, cJSON_CreateString("--exclusive"));
  if (c->takeover_id[0]) {
    cJSON_AddItemToArray(args, cJSON_CreateString("--takeover-id"));
    cJSON_AddItemToArray(args, cJSON_CreateString(c->takeover_id));
  }
  cJSON *p = cJSON_CreateObject();
  cJSON_AddStringToObject(p, "name", "kb-tunnel");
  cJSON_AddNumberToObject(p, "containerPort", c->tunnel_port);
  cJSON_AddItemToArray(ports, p);
  p = cJSON_CreateObject();
  cJSON_AddStringToObject(p, "name", "kb-metrics");
  cJSON_AddNumberToObject(p, "containerPort", c->metrics_port);
  cJSON_AddItemToArray(ports, p);
  cJSON_AddItemToObject(d, "spec", spec);
  agentpod_apply(&c->pod, d);
  return d;
}

/* A Kubernetes object with metadata (meta()): apiVersion and kind set. */
static cJSON *simple_object(const struct conn *c, const char *api, const char *kind,
                            const char *name, const char *uid) {
  cJSON *r = cJSON_CreateObject();
  cJSON_AddStringToObject(r, "apiVersion", api);
  cJSON_AddStringToObject(r, "kind", kind);
  cJSON_AddItemToObject(r, "metadata", meta(c, name, uid));
  return r;
}

/* The agent's Role: only what its own restore needs (takeover.c), by name. */
static cJSON *agent_role(const struct conn *c, const char *uid) {
  cJSON *r = simple_object(c, "rbac.authorization.k8s.io/v1", "Role", c->nm.agent, uid);
  char buf[2048], wl[400] = "";
  const char *res = takeover_workload_resource(c->wl_kind);
  if (res)
    snprintf(wl, sizeof wl,
             ",{\"apiGroups\":[\"apps\"],\"resources\":[\"%s\"],\"resourceNames\":[\"%s\"],"
             "\"verbs\":[\"get\",\"update\"]}",
             res, c->wl_name);
  snprintf(
      buf, sizeof buf,
      "[{\"apiGroups\":[\"\"],\"resources\":[\"services\"],\"resourceNames\":[\"%s\"],"
      "\"verbs\":[\"get\",\"update\"]},"
      "{\"apiGroups\":[\"\"],\"resources\":[\"endpoints\"],\"resourceNames\":[\"%s\"],"
      "\"verbs\":[\"get\"]},"
      "{\"apiGroups\":[\"\"],\"resources\":[\"services\"],\"resourceNames\":[\"%s\"],"
      "\"verbs\":[\"get\",\"delete\"]},"
      "{\"apiGroups\":[\"\"],\"resources\":[\"secrets\"],\"resourceNames\":[\"%s\"],"
      "\"verbs\":[\"get\",\"delete\"]},"
      "{\"apiGroups\":[\"\"],\"resources\":[\"serviceaccounts\"],\"resourceNames\":[\"%s\"],"
      "\"verbs\":[\"get\",\"delete\"]},"
      "{\"apiGroups\":[\"rbac.authorization.k8s.io\"],\"resources\":[\"roles\",\"rolebindings\"],"
      "\"resourceNames\":[\"%s\"],\"verbs\":[\"get\",\"delete\"]},"
      "{\"apiGroups\":[\"apps\"],\"resources\":[\"deployments\"],\"resourceNames\":[\"%s\"],"
      "\"verbs\":[\"get\",\"delete\"]}%s]",
      c->svc, c->svc, c->nm.origin, c->nm.secret, c->nm.agent, c->nm.agent, c->nm.agent, wl);
  cJSON_AddItemToObject(r, "rules", cJSON_Parse(buf));
  return r;
}

static cJSON *agent_rolebinding(const struct conn *c, const char *uid) {
  cJSON *r = simple_object(c, "rbac.authorization.k8s.io/v1", "RoleBinding", c->nm.agent, uid);
  char buf[600];
  snprintf(buf, sizeof buf,
           "[{\"kind\":\"ServiceAccount\",\"name\":\"%s\",\"namespace\":\"%s\"}]", c->nm.agent,
           c->ns);
  cJSON_AddItemToObject(r, "subjects", cJSON_Parse(buf));
  snprintf(buf, sizeof buf,
           "{\"apiGroup\":\"rbac.authorization.k8s.io\",\"kind\":\"Role\",\"name\":\"%s\"}",
           c->nm.agent);
  cJSON_AddItemToObject(r, "roleRef", cJSON_Parse(buf));
  return r;
}


static cJSON *shadow_service(const struct conn *c, const char *uid) {
  cJSON *s = simple_object(c, "v1", "Service", c->nm.origin, uid);
  cJSON *spec = cJSON_AddObjectToObject(s, "spec");
  cJSON_AddItemToObject(spec, "selector", cJSON_Duplicate(c->orig_selector, 1));
  /* Each port's targetPort as the Service has it: a name is resolved per pod by
   * the endpoints controller (stable and canary may differ), never here. */
  cJSON_AddItemToObject(spec, "ports", portplan_shadow_ports(&c->plan));
  return s;
}

static int create(struct conn *c, const char *api, const char *res, cJSON *obj, cJSON **out) {
  struct kube_ref r = {api, res, c->ns, NULL, NULL};
  struct kube_err e;
  int rc = kube_create(c->k, &r, obj, out, &e);
  cJSON_Delete(obj);
  if (rc < 0) conn_fail_kube(c, &e);
  return rc;
}

/* Why the agent pod is not ready, when it is hopeless (image cannot be pulled,
 * crash loop, bad config): a sentence into why and 1; 0 while it may still come. */
static int pod_hopeless(const cJSON *pod, char *why, size_t len) {
  const cJSON *cs;
  cJSON_ArrayForEach(cs, conn_jget(pod, "status.containerStatuses")) {
    const char *reason = conn_jstr(cs, "state.waiting.reason");
    const char *msg = conn_jstr(cs, "state.waiting.message");
    if (!reason) continue;
    if (strcmp(reason, "ErrImagePull") == 0 || strcmp(reason, "ImagePullBackOff") == 0 ||
        strcmp(reason, "InvalidImageName") == 0 || strcmp(reason, "CrashLoopBackOff") == 0 ||
        strcmp(reason, "CreateContainerConfigError") == 0 ||
        strcmp(reason, "CreateContainerError") == 0) {
      const char *last = conn_jstr(cs, "lastState.terminated.reason");
      const cJSON *code = conn_jget(cs, "lastState.terminated.exitCode");
      snprintf(why, len, "agent pod %s: %s%s%s%s%s", conn_jstr(pod, "metadata.name"), reason,
               msg ? ": " : "", msg ? msg : "", last ? "; last exit: " : "", last ? last : "");
      if (cJSON_IsNumber(code)) {
        size_t l = strlen(why);
        snprintf(why + l, len - l, " (code %d)", code->valueint);
      }
      return 1;
    }
  }
  return 0;
}

int conn_pod_ready(const cJSON *pod) {
  if (conn_jget(pod, "metadata.deletionTimestamp")) return 0;
  const char *phase = conn_jstr(pod, "status.phase");
  if (!phase || strcmp(phase, "Running") != 0) return 0;
  const cJSON *cond;
  cJSON_ArrayForEach(cond, conn_jget(pod, "status.conditions")) {
    const char *t = conn_jstr(cond, "type"), *s = conn_jstr(cond, "status");
    if (t && s && strcmp(t, "Ready") == 0) return strcmp(s, "True") == 0;
  }
  return 0;
}

cJSON *conn_agent_pods(struct conn *c, char *why, size_t whylen) {
  char sel[200];
  snprintf(sel, sizeof sel, "%s=%s", TAKEOVER_LABEL_AGENT, c->svc);
  struct kube_ref r = {"v1", "pods", c->ns, NULL, NULL};
  struct kube_err e;
  cJSON *list = NULL;
  if (kube_list(c->k, &r, sel, &list, &e) < 0) {
    snprintf(why, whylen, "%s", e.msg);
    return NULL;
  }
  return list;
}

/* Find a Ready agent pod; name into out. 0, 1 (none ready yet), -1 (err). */
static int ready_agent_pod(struct conn *c, char *out, size_t len, char *why, size_t whylen,
                           int *hopeless) {
  cJSON *list = conn_agent_pods(c, why, whylen);
  if (!list) return -1;
  const cJSON *pod;
  int rc = 1;
  if (hopeless) *hopeless = 0;
  snprintf(why, whylen, "no agent pod yet");
  cJSON_ArrayForEach(pod, conn_jget(list, "items")) {
    if (conn_pod_ready(pod)) {
      snprintf(out, len, "%s", conn_jstr(pod, "metadata.name"));
      rc = 0;
      break;
    }
    if (conn_jget(pod, "metadata.deletionTimestamp")) continue;
    if (pod_hopeless(pod, why, whylen)) {
      if (hopeless) *hopeless = 1;
    } else {
      snprintf(why, whylen, "agent pod %s is %s", conn_jstr(pod, "metadata.name"),
               conn_jstr(pod, "status.phase") ? conn_jstr(pod, "status.phase") : "pending");
    }
  }
  cJSON_Delete(list);
  return rc;
}

/* No agent pod exists: did admission refuse to create it? The ReplicaSet's
 * ReplicaFailure condition (FailedCreate, with the API server's message) is
 * copied onto the Deployment, which we may read (agentpod.h). A refusal for
 * good ends the run (1, error reported); a passing failure is added to why. */
static int agent_refused(struct conn *c, char *why, size_t whylen) {
  struct kube_ref r = {"apps/v1", "deployments", c->ns, c->nm.agent, NULL};
  struct kube_err e;
  cJSON *d = NULL;
  char msg[1000];
  if (kube_get(c->k, &r, &d, &e) < 0) return 0; /* the next look will tell */
  int how = agentpod_refusal(d, msg, sizeof msg);
  cJSON_Delete(d);
  if (how == 2) snprintf(why, whylen, "no agent pod yet: %s", msg);
  if (how != 1) return 0;
  const char *hint =
      strstr(msg, "quota") ? "the namespace's ResourceQuota has no room for it: ask for more, or "
                             "make the agent fit with --agent-requests/--agent-limits"
      : strstr(msg, "LimitRange") || strstr(msg, "maximum") || strstr(msg, "minimum")
          ? "a LimitRange bounds the pods of the namespace: set --agent-requests/--agent-limits "
            "within it"
          : "an admission policy refused it: --agent-label, --agent-annotation, --node-selector, "
            "--toleration, --image-pull-secret and the resources flags adapt the agent pod";
  c->reason = "agent_refused";
  conn_fail(c, "the cluster refused to create the agent pod: \"%s\" (%s; see the user guide, "
       "\"Admission refuses the agent pod\")", msg, hint);
  return 1;
}

int conn_wait_agent_ready(struct conn *c) {
  double deadline = conn_now_s() + c->cfg->timeout;
  char pod[256], why[1200];
  int hopeless = 0, hopeless_seen = 0;
  for (;;) {
    int rc = ready_agent_pod(c, pod, sizeof pod, why, sizeof why, &hopeless);
    if (rc == 0) {
      conn_progress(c, "agent-ready", "agent pod %s is ready", pod);
      return 0;
    }
    if (rc < 0) {
      conn_fail(c, "%s", why);
      return -1;
    }
    if (rc == 1 && strcmp(why, "no agent pod yet") == 0 && agent_refused(c, why, sizeof why))
      return -1;
    /* An image pull error is reported at once; give a crash two looks. */
    if (hopeless && (strstr(why, "Image") || strstr(why, "Config") || ++hopeless_seen >= 2)) {
      conn_fail(c, "the agent did not start: %s", why);
      return -1;
    }
    if (conn_interrupted) {
      conn_fail(c, "interrupted while waiting for the agent");
      return -1;
    }
    if (conn_now_s() > deadline) {
      conn_fail(c, "the agent was not ready within %d s: %s", c->cfg->timeout, why);
      return -1;
    }
    usleep(250 * 1000);
  }
}

int conn_client_cert(struct conn *c) {
  char err[1200];
  int denied = 0;
  char *ca = NULL;
  conn_progress(
      c, "certificate", "asking kbridge-signer for a client certificate for route key \"%s\"%s",
      c->cfg->key, c->cfg->force ? " (--force: taking it over from whoever holds it)" : "");
  if (certreq_obtain(c->k, c->ns, c->svc, c->cfg->key, 0, c->cfg->force, 60, &c->me, &ca,
                     c->identity, sizeof c->identity, &denied, err, sizeof err) < 0) {
    if (denied && strstr(err, "is held by")) c->reason = "route_held";
    if (!denied && strstr(err, "forbidden")) {
      c->reason = "forbidden";
      conn_fail(c, "%s (kbridge needs the ClusterRole of deploy/rbac/developer-csr.yaml to ask for "
           "certificates: docs/rbac.md)", err);
      return -1;
    }
    conn_fail(c, "%s", err);
    return -1;
  }
  c->ca.cert = ca;
  conn_progress(c, "certificate", "client certificate for route key \"%s\" issued to %s",
                c->cfg->key, c->identity[0] ? c->identity : "(no identity)");
  return 0;
}

int conn_netpol_step(struct conn *c) {
  cJSON *dep = agent_deployment(c);
  cJSON *labels = cJSON_CreateArray();
  const cJSON *p;
  cJSON_ArrayForEach(p, conn_jget(c->orig_pods, "items")) {
    const cJSON *l = conn_jget(p, "metadata.labels");
    if (cJSON_IsObject(l)) cJSON_AddItemToArray(labels, cJSON_Duplicate(l, 1));
  }
  const cJSON *specs[WORKLOADS_MAX];
  int nspecs = 0;
  for (int i = 0; i < c->wls.n; i++)
    if (c->wls.w[i].spec) specs[nspecs++] = c->wls.w[i].spec;
  struct netpol_input in = {c->ns,
                            c->svc,
                            NULL,
                            labels,
                            c->orig_selector,
                            conn_jget(dep, "spec.template.metadata.labels"),
                            &c->plan,
                            specs,
                            nspecs,
                            NULL,
                            0};
  char warn[600], err[1600];
  int rc = netpol_inspect(c->k, &in, &c->np, warn, sizeof warn, err, sizeof err);
  cJSON_Delete(labels);
  cJSON_Delete(dep);
  if (rc != 0) {
    if (rc == 1) c->reason = "forbidden";
    conn_fail(c, "%s", err);
    return rc == 1 ? -2 : -1;
  }
  if (warn[0]) {
    log_warn("%s", warn);
    conn_progress(c, "netpol", "%s", warn);
  } else if (c->np.summary[0]) {
    conn_progress(c, "netpol", "namespace %s has NetworkPolicies; will create: %s", c->ns,
             c->np.summary);
  }
  return 0;
}

/* The agent's PodDisruptionBudget (minAvailable 1), owned by its Deployment:
 * a drain or an eviction takes one agent pod at a time, and only while the
 * other is ready. policy/v1 where the API server has it (1.21 and later; 1.25
 * has no other), else policy/v1beta1. Without the right to create one the
 * takeover goes on and says so (two replicas still cover a deleted pod; a
 * drain is then not held back). 0, or -1 (reported). */
static int create_pdb(struct conn *c, const char *uid) {
  static const char *const apis[] = {"policy/v1", "policy/v1beta1"};
  struct kube_err e;
  memset(&e, 0, sizeof e);
  for (size_t i = 0; i < sizeof apis / sizeof apis[0]; i++) {
    cJSON *pdb = simple_object(c, apis[i], "PodDisruptionBudget", c->nm.agent, uid);
    cJSON *spec = cJSON_AddObjectToObject(pdb, "spec");
    cJSON_AddNumberToObject(spec, "minAvailable", 1);
    cJSON *ml = cJSON_AddObjectToObject(cJSON_AddObjectToObject(spec, "selector"), "matchLabels");
    cJSON_AddStringToObject(ml, TAKEOVER_LABEL_AGENT, c->svc);
    struct kube_ref r = {apis[i], "poddisruptionbudgets", c->ns, NULL, NULL};
    int rc = kube_create(c->k, &r, pdb, NULL, &e);
    cJSON_Delete(pdb);
    if (rc == 0) {
      conn_progress(c, "disruption-budget",
                    "poddisruptionbudget %s (%s): at least 1 of the %d agent "
                    "pods stays through drains and evictions",
                    c->nm.agent, apis[i], AGENT_REPLICAS);
      return 0;
    }
    if (e.status != 404) break; /* 404: no such API version here, try the older one */
  }
  if (e.status == 403) {
    log_warn("%s", e.msg);
    conn_progress(c, "disruption-budget", "no poddisruptionbudget for the agent: not allowed to "
             "create one in namespace %s (deploy/rbac/developer-role.yaml has the rule); a drain "
             "may then evict both agent pods at once", c->ns);
    return 0;
  }
  conn_fail_kube(c, &e);
  return -1;
}

int conn_create_agent(struct conn *c) {
  char err[1200];
  struct tls_pem agent = {NULL, NULL};
  char *agent_ca = NULL, noid[8];
  int denied;
  if (certreq_obtain(c->k, c->ns, c->svc, TLS_AGENT_NAME, 1, 0, 60, &agent, &agent_ca, noid,
                     sizeof noid, &denied, err, sizeof err) < 0) {
    conn_fail(c, "the agent's certificate: %s", err);
    return -1;
  }
  if (strcmp(agent_ca, c->ca.cert) != 0) { /* one signer, one CA per Service */
    free(agent_ca);
    tls_pem_clear(&agent);
    conn_fail(c, "the agent's certificate and yours come from different CAs; try again");
    return -1;
  }
  free(agent_ca);
  conn_progress(c, "create-agent", "creating the agent: deployment %s (image %s)", c->nm.agent,
           c->image);
  if (takeover_new_id(c->takeover_id, sizeof c->takeover_id) < 0) {
    tls_pem_clear(&agent);
    conn_fail(c, "no random bytes for the takeover id: %s", strerror(errno));
    return -1;
  }
  cJSON *dep = NULL, *want = agent_deployment(c);
  struct kube_ref dr = {"apps/v1", "deployments", c->ns, NULL, NULL};
  struct kube_err de;
  int drc = kube_create(c->k, &dr, want, &dep, &de);
  cJSON_Delete(want);
  if (drc < 0) {
    /* Nothing of ours exists (an AlreadyExists is someone else's agent). */
    if (de.status == 409)
      conn_fail(c, "another kbridge connect is taking over %s/%s at this moment (deployment %s was "
           "just created by it); try again in a few seconds to join it", c->ns, c->svc,
           c->nm.agent);
    else
      conn_fail(c, "%s", de.msg);
    tls_pem_clear(&agent);
    return -1;
  }
  c->created = 1;
  char uid[100];
  snprintf(uid, sizeof uid, "%s",
           conn_jstr(dep, "metadata.uid") ? conn_jstr(dep, "metadata.uid") : "");
  cJSON_Delete(dep);

  cJSON *sec = simple_object(c, "v1", "Secret", c->nm.secret, uid);
  cJSON_AddStringToObject(sec, "type", "Opaque");
  cJSON *sd = cJSON_AddObjectToObject(sec, "stringData");
  cJSON_AddStringToObject(sd, "ca.crt", c->ca.cert);
  cJSON_AddStringToObject(sd, "agent.crt", agent.cert);
  cJSON_AddStringToObject(sd, "agent.key", agent.key);
  tls_pem_clear(&agent);
  if (create(c, "v1", "serviceaccounts", simple_object(c, "v1", "ServiceAccount", c->nm.agent, uid),
             NULL) < 0 ||
      create(c, "rbac.authorization.k8s.io/v1", "roles", agent_role(c, uid), NULL) < 0 ||
      create(c, "rbac.authorization.k8s.io/v1", "rolebindings", agent_rolebinding(c, uid), NULL) <
          0 ||
      create(c, "v1", "secrets", sec, NULL) < 0)
    return -1;
  if (cJSON_GetArraySize(c->np.objs) > 0) {
    struct kube_err ne;
    if (netpol_create(c->k, c->ns, c->nm.agent, uid, &c->np, &ne) < 0) {
      conn_fail_kube(c, &ne);
      return -1;
    }
    conn_progress(c, "netpol", "%s", c->np.summary);
  }
  if (!c->cfg->replace) {
    if (create(c, "v1", "services", shadow_service(c, uid), NULL) < 0) return -1;
    conn_progress(c, "shadow-service", "shadow service %s selects the original pods (%s)",
             c->nm.origin, conn_selector_string(c->orig_selector));
  }
  if (create_pdb(c, uid) < 0) return -1;
  struct kube_ref r = {"apps/v1", "deployments", c->ns, c->nm.agent, NULL};
  struct kube_err e;
  char scale[64];
  snprintf(scale, sizeof scale, "{\"spec\":{\"replicas\":%d}}", AGENT_REPLICAS);
  if (kube_patch(c->k, &r, KUBE_PATCH_MERGE, scale, NULL, &e) < 0) {
    conn_fail_kube(c, &e);
    return -1;
  }
  conn_progress(c, "wait-agent", "waiting for the agent pod to be ready (up to %d s)",
                c->cfg->timeout);
  return 0;
}
