/* connect_run.c: `kbridge connect` (see connect.h): the steps in order (the parts
 * are connect_agent.c, connect_takeover.c, connect_env.c, connect_services.c,
 * connect_serve.c, connect_multi.c and connect_leave.c; the command line is
 * connect_opts.c; their shared state is connect_internal.h).
 *
 * The run, in order; every read and check comes before the first write, and
 * once something was written, any failure puts the cluster back with
 * takeover_restore() before exiting:
 *   1. inspect   Service, selector, pods, owning workload, target ports (named
 *                ones resolved against the pod template)
 *   2. agent     this developer's client certificate (CN = route key) is asked
 *                of kbridge-signer (certreq.h: a CertificateSigningRequest;
 *                the signer binds it to our Kubernetes identity, or denies it
 *                when another identity holds the key and --force is not given).
 *                A fresh takeover then gets the agent's certificate the same
 *                way, creates the agent Deployment (0 replicas),
 *                then its ServiceAccount, Role, RoleBinding, Secret (the CA
 *                certificate + the agent's certificate and key; never a CA key)
 *                and, in routing mode, the shadow
 *                Service and the PodDisruptionBudget, all owned by the
 *                Deployment; then scales it to AGENT_REPLICAS and waits for a
 *                pod to be Ready (image pull errors and the like end the wait
 *                with the pod's reason). An existing takeover is reused.
 *   3. switch    the Service's selector goes to the agent pods, the original
 *                selector and the takeover record into annotations (only after
 *                the agent is Ready: the Service never points at nothing);
 *                exclusive mode then scales the workload to 0.
 *   4. tunnels   proxy.c runs the tunnels with that certificate, each carried by a
 *                port-forward to an agent pod: --tunnels to every running one
 *                (hook_open picks the pod; a replaced pod's are found again).
 *                Meanwhile the re-sync guard reads the Service every second: a
 *                selector merged by a re-apply of its manifest loses our key at
 *                once (real pods again), then the takeover is re-established,
 *                at most GUARD_RETAKES times in GUARD_WINDOW_S; a further
 *                revert, a replaced selector or a deleted Service ends the
 *                session. It also lists the agent pods: one lacking our
 *                tunnels gets them; none ready for AGENT_LOST_S ends the
 *                session with the Service restored.
 *   5. leave     on SIGINT/SIGTERM, `kbridge disconnect` (SIGTERM) or the end of
 *                the command after "--": GOAWAY, remove our route annotation,
 *                and when no other developer holds a route, restore the cluster
 *                and wait until the agent is gone.
 * Output: progress lines (text), or with --output json one JSON object per line:
 * {"event":"progress"|"ready"|"error"|"disconnected",...}. */
#include "connect.h"

#include <errno.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <cjson/cJSON.h>

#include "connect_internal.h"

#include <event2/event.h>
#include <openssl/rand.h>

#include "dnslabel.h"
#include "kube.h"
#include "kubeconfig.h"
#include "portforward.h"
#include "session.h"

/* Set from a signal handler while the blocking setup and teardown run (the
 * event loop's own signal events take over while tunnels are up). */
volatile sig_atomic_t conn_interrupted;
static void on_interrupt(int sig) {
  (void)sig;
  conn_interrupted = 1;
}

/* ---- output ---- */

double conn_now_s(void) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

void conn_emit_json(cJSON *o) {
  char *s = cJSON_PrintUnformatted(o);
  if (s) {
    printf("%s\n", s);
    fflush(stdout);
    free(s);
  }
  cJSON_Delete(o);
}

/* {"event":EVENT,KEY:VALUE,"message":MSG[,"elapsed":S]} (elapsed < 0: none). */
static void emit_event(const char *event, const char *key, const char *value, const char *msg,
                       double elapsed) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "event", event);
  cJSON_AddStringToObject(o, key, value);
  cJSON_AddStringToObject(o, "message", msg);
  if (elapsed >= 0) cJSON_AddNumberToObject(o, "elapsed", elapsed);
  conn_emit_json(o);
}

void conn_progress(struct conn *c, const char *step, const char *fmt, ...) {
  char msg[1200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (c->quiet) {
    log_info("%s", msg);
  } else if (c->json) {
    emit_event("progress", "step", step, msg, conn_now_s() - c->t0);
    log_info("%s", msg); /* stderr keeps the story too (logs, tests) */
  } else {
    printf("[%5.1fs] %s\n", conn_now_s() - c->t0, msg);
    fflush(stdout);
  }
}

void conn_fail(struct conn *c, const char *fmt, ...) {
  char msg[2000];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (c->json) emit_event("error", "reason", c->reason ? c->reason : "failed", msg, -1);
  c->reason = NULL;
  fprintf(stderr, "kbridge: %s\n", msg);
}

/* The error event's "reason" for a failed API call: a word tools can act on. */
const char *connect_kube_reason(const struct kube_err *e) {
  switch (e->status) {
  case 0: return "unreachable"; /* no HTTP answer: DNS, TCP, TLS, credentials plugin */
  case 401: return "unauthorized";
  case 403: return "forbidden";
  case 404: return "not_found";
  case 409: return "conflict";
  default: return "api_error";
  }
}

void conn_fail_kube(struct conn *c, const struct kube_err *e) {
  c->reason = connect_kube_reason(e);
  conn_fail(c, "%s", e->msg);
}

/* ---- small JSON helpers ---- */

cJSON *conn_jget(const cJSON *o, const char *path) {
  /* "a.b.c" */
  char buf[200];
  snprintf(buf, sizeof buf, "%s", path);
  const cJSON *cur = o;
  for (char *save = NULL, *p = strtok_r(buf, ".", &save); p && cur; p = strtok_r(NULL, ".", &save))
    cur = cJSON_GetObjectItemCaseSensitive(cur, p);
  return (cJSON *)(uintptr_t)cur;
}
const char *conn_jstr(const cJSON *o, const char *path) {
  return cJSON_GetStringValue(conn_jget(o, path));
}

/* ---- 1. inspect ---- */

void conn_iso_now(char *out, size_t len) {
  time_t t = time(NULL);
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

char *conn_selector_string(const cJSON *sel) {
  static char buf[1024];
  buf[0] = '\0';
  const cJSON *it;
  cJSON_ArrayForEach(it, sel) {
    size_t l = strlen(buf);
    snprintf(buf + l, sizeof buf - l, "%s%s=%s", l ? "," : "", it->string,
             cJSON_GetStringValue(it) ? cJSON_GetStringValue(it) : "");
  }
  return buf;
}

int conn_open(struct conn *c, const struct kube_flags *kf) {
  char err[1200];
  if (connect_kube_open(kf, &c->k, err, sizeof err) < 0) {
    c->reason = "kubeconfig";
    conn_fail(c, "%s", err);
    return -1;
  }
  c->ns = kube_namespace(c->k);
  return 0;
}

int conn_read_service(struct conn *c) {
  conn_progress(c, "inspect", "reading service %s/%s", c->ns, c->svc);
  struct kube_ref sref = {"v1", "services", c->ns, c->svc, NULL};
  struct kube_err e;
  if (kube_get(c->k, &sref, &c->service, &e) < 0) {
    conn_fail_kube(c, &e);
    return -1;
  }
  return 0;
}

void conn_takeover_template(struct conn *c) {
  cJSON *t = cJSON_Parse(takeover_annotation(c->service, TAKEOVER_ANN_TAKEOVER));
  snprintf(c->wl_kind, sizeof c->wl_kind, "%s",
           conn_jstr(t, "workload.kind") ? conn_jstr(t, "workload.kind") : "Pods");
  snprintf(c->wl_name, sizeof c->wl_name, "%s",
           conn_jstr(t, "workload.name") ? conn_jstr(t, "workload.name") : "");
  cJSON_Delete(t);
  const char *res = takeover_workload_resource(c->wl_kind);
  if (res) {
    struct kube_ref r = {"apps/v1", res, c->ns, c->wl_name, NULL};
    struct kube_err e;
    cJSON *w = NULL;
    if (kube_get(c->k, &r, &w, &e) == 0)
      c->pod_template = cJSON_Duplicate(conn_jget(w, "spec.template.spec"), 1);
    else
      log_info("reading %s %s: %s", c->wl_kind, c->wl_name, e.msg);
    cJSON_Delete(w);
  }
}

int conn_selector(struct conn *c) {
  c->orig_selector = conn_jget(c->service, "spec.selector");
  if (!cJSON_IsObject(c->orig_selector) || cJSON_GetArraySize(c->orig_selector) == 0) {
    conn_fail(c, "service %s/%s has no selector: kbridge works only with Services that select "
         "pods (this one has manually managed endpoints)", c->ns, c->svc);
    return -1;
  }
  return 0;
}

int conn_selected_workloads(struct conn *c) {
  struct kube_ref pr = {"v1", "pods", c->ns, NULL, NULL};
  struct kube_err e;
  char sel[1100];
  snprintf(sel, sizeof sel, "%s", conn_selector_string(c->orig_selector));
  if (kube_list(c->k, &pr, sel, &c->orig_pods, &e) < 0) {
    conn_fail_kube(c, &e);
    return -1;
  }
  if (workloads_find(c->k, c->ns, conn_jget(c->orig_pods, "items"), &c->wls, &e) < 0) {
    conn_fail_kube(c, &e);
    return -1;
  }
  snprintf(c->wl_kind, sizeof c->wl_kind, "Pods");
  c->wl_name[0] = '\0';
  if (c->wls.n > 0) {
    snprintf(c->wl_kind, sizeof c->wl_kind, "%s", c->wls.w[0].kind);
    snprintf(c->wl_name, sizeof c->wl_name, "%s", c->wls.w[0].name);
    c->pod_template = cJSON_Duplicate(c->wls.w[0].spec, 1);
  }
  return 0;
}

static int inspect_ports(struct conn *c) {
  const cJSON *specs[WORKLOADS_MAX];
  char what[600], err[800];
  for (int i = 0; i < c->wls.n; i++) specs[i] = c->wls.w[i].spec;
  snprintf(what, sizeof what, "%s/%s", c->ns, c->svc);
  if (portplan_build(&c->plan, what, conn_jget(c->service, "spec.ports"), specs, c->wls.n, err,
                     sizeof err) < 0) {
    conn_fail(c, "%s", err);
    return -1;
  }
  c->nports = c->plan.nsvc < MAX_PORTS ? c->plan.nsvc : MAX_PORTS;
  for (int i = 0; i < c->nports; i++) {
    const struct portplan_port *q = &c->plan.svc[i];
    struct port *d = &c->ports[i];
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "%s", q->name);
    snprintf(d->tname, sizeof d->tname, "%s", q->tname);
    snprintf(d->proto, sizeof d->proto, "TCP");
    d->port = q->port;
    d->target = q->listen;
  }
  c->tunnel_port = c->plan.tunnel_port;
  c->metrics_port = c->plan.metrics_port;
  return 0;
}

/* ---- the run ---- */

static void default_key(char *out, size_t len) {
  const char *user = getenv("USER");
  struct passwd *pw = user ? NULL : getpwuid(getuid());
  if (!user && pw) user = pw->pw_name;
  char base[40] = "";
  size_t n = 0;
  for (const char *p = user ? user : "dev"; *p && n < 30; p++) {
    char ch = *p >= 'A' && *p <= 'Z' ? (char)(*p - 'A' + 'a') : *p;
    if ((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9')) base[n++] = ch;
    else if (n && base[n - 1] != '-') base[n++] = '-';
  }
  while (n && base[n - 1] == '-') n--;
  base[n] = '\0';
  if (!n) snprintf(base, sizeof base, "dev");
  unsigned char r[4];
  RAND_bytes(r, sizeof r);
  const char *al = "abcdefghijklmnopqrstuvwxyz0123456789";
  snprintf(out, len, "%s-%c%c%c%c", base, al[r[0] % 36], al[r[1] % 36], al[r[2] % 36],
           al[r[3] % 36]);
}

int connect_kube_open(const struct kube_flags *kf, struct kube **out, char *err, size_t errlen) {
  struct kubeconfig_opts ko = {kf->kubeconfig, kf->context, kf->namespace};
  struct kubeconfig *kc = NULL;
  if (kubeconfig_load(&ko, &kc, err, errlen) < 0) return -1;
  *out = kube_new(kc, err, errlen);
  if (!*out) return -1;
  const char *ns = kube_namespace(*out);
  if (!dns_label_valid(ns, strlen(ns))) {
    snprintf(err, errlen, "namespace \"%s\" is not a valid namespace name", ns);
    kube_free(*out);
    *out = NULL;
    return -1;
  }
  return 0;
}

/* Can every --forward listen address be bound? Checked before the cluster is
 * touched, so a port in use or an address not on this machine fails with no
 * change to undo (proxy.c binds them for real later; port 0 always binds).
 * 0, or -1 (reported). */
static int bindable(struct conn *c, const struct hostport *hp, const char *flag) {
  struct addrinfo hints, *res = NULL;
  char port[8], a[300];
  memset(&hints, 0, sizeof hints);
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  snprintf(port, sizeof port, "%u", (unsigned)hp->port);
  addr_format(hp, a, sizeof a);
  int rc = getaddrinfo(hp->host, port, &hints, &res);
  if (rc != 0 || !res) {
    conn_fail(c, "%s %s: cannot resolve \"%s\": %s", flag, a, hp->host, gai_strerror(rc));
    return -1;
  }
  int fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, 0), one = 1;
  int ok = fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0 &&
           bind(fd, res->ai_addr, res->ai_addrlen) == 0;
  int err = errno;
  if (fd >= 0) close(fd);
  freeaddrinfo(res);
  if (!ok) {
    c->reason = err == EADDRINUSE ? "port_in_use" : "bad_flag";
    conn_fail(c, "%s %s: cannot listen there: %s", flag, a, strerror(err));
    return -1;
  }
  return 0;
}

static int forwards_bindable(struct conn *c) {
  for (size_t i = 0; i < c->cfg->forwards.n; i++)
    if (bindable(c, &c->cfg->forwards.v[i].listen, "--forward") < 0) return -1;
  if (!c->cfg->no_http_proxy && c->cfg->http_proxy.host[0] &&
      bindable(c, &c->cfg->http_proxy, "--http-proxy") < 0)
    return -1;
  return 0;
}

int connect_run(struct connect_config *cfg) {
  struct conn cc, *c = &cc;
  char err[1200];
  int rc = 1;
  memset(c, 0, sizeof *c);
  c->cfg = cfg;
  c->t0 = conn_now_s();
  c->child = -1;
  c->child_status = -1;
  c->svc = cfg->service;
  if (strcmp(cfg->output, "json") == 0) {
    c->json = 1;
  } else if (strcmp(cfg->output, "text") != 0) {
    fprintf(stderr, "kbridge: --output: expected text or json, got \"%s\"\n", cfg->output);
    return 2;
  }
  log_init("kbridge", cfg->log_level);
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_interrupt;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);

  if (!dns_label_valid(c->svc, strlen(c->svc)) || takeover_names(c->svc, &c->nm) < 0) {
    c->reason = "bad_flag";
    conn_fail(c, "--service: expected a Service name (a DNS label of at most %d characters), got "
         "\"%s\"", TAKEOVER_MAX_SERVICE, c->svc);
    return 2;
  }
  if (cfg->key[0] == '\0') default_key(cfg->key, sizeof cfg->key);
  if (strlen(cfg->key) > TAKEOVER_MAX_ROUTE_KEY) {
    c->reason = "bad_flag";
    conn_fail(
        c,
        "--route-as: \"%s\" has %zu characters; a route key for connect may have at most %d "
        "(it is part of the annotation name kbridge.dev/route-KEY, which Kubernetes limits to 63 "
        "after the prefix)",
        cfg->key, strlen(cfg->key), TAKEOVER_MAX_ROUTE_KEY);
    return 2;
  }
  {
    enum envfmt_format ef;
    if (envfmt_parse(cfg->env_format, &ef) < 0) {
      c->reason = "bad_flag";
      conn_fail(c, "--env-format: expected one of " ENVFMT_CHOICES ", got \"%s\"",
                cfg->env_format);
      return 2;
    }
  }
  if (cfg->more_services.n != cfg->nmore_ports) {
    c->reason = "bad_flag";
    conn_fail(c, "each --service needs its own --local-port, in the same order (%zu Services, "
                 "%zu ports)", cfg->more_services.n + 1, cfg->nmore_ports + 1);
    return 2;
  }
  for (size_t i = 0; i < cfg->more_services.n; i++) {
    const char *m = cfg->more_services.v[i];
    int dup = strcmp(m, cfg->service) == 0;
    for (size_t j = 0; j < i && !dup; j++) dup = strcmp(m, cfg->more_services.v[j]) == 0;
    if (!dns_label_valid(m, strlen(m)) || dup) {
      c->reason = "bad_flag";
      conn_fail(c, "--service: \"%s\" %s", m,
                dup ? "is given twice" : "is not a Service name (a DNS label)");
      return 2;
    }
  }
  if (forwards_bindable(c) < 0) return 2;
  if (conn_env_refs_check(c, 0) < 0) return 2;
  if (cfg->hosts && (cfg->no_services || access(cfg->hosts_file, R_OK | W_OK) < 0)) {
    c->reason = "bad_flag";
    if (cfg->no_services)
      conn_fail(c, "--hosts names the Service listeners, which --no-services turns off");
    else
      conn_fail(c, "--hosts: %s is not writable (%s): run as root, or give --hosts-file a file "
                   "you may write", cfg->hosts_file, strerror(errno));
    return 2;
  }
  const char *img = cfg->agent_image ? cfg->agent_image : getenv("KBRIDGE_AGENT_IMAGE");
  snprintf(c->image, sizeof c->image, "%s", img && *img ? img : CONNECT_DEFAULT_IMAGE);
  if (!conn_image_ok(c->image)) {
    c->reason = "bad_flag";
    conn_fail(c, "--agent-image: \"%s\" is not an image reference", c->image);
    return 2;
  }
  {
    struct agentpod_flags pf = {&cfg->pull_secrets, &cfg->node_selector, &cfg->tolerations,
                                &cfg->agent_labels, &cfg->agent_annotations, cfg->agent_requests,
                                cfg->agent_limits};
    if (agentpod_parse(&pf, &c->pod, err, sizeof err) < 0) {
      c->reason = "bad_flag";
      conn_fail(c, "%s", err);
      return 2;
    }
  }
  {
    char host[128] = "?";
    const char *user = getenv("USER");
    struct passwd *pw = user ? NULL : getpwuid(getuid());
    if (!user && pw) user = pw->pw_name;
    gethostname(host, sizeof host - 1);
    snprintf(c->by, sizeof c->by, "%.60s@%.120s", user ? user : "?", host);
  }

  /* 0. more Services: a session each, in child processes, before anything of
   * ours (curl, OpenSSL, the event loop) exists to be shared by fork() */
  if (cfg->more_services.n && conn_env_refs_precheck(c) < 0) return 2;
  if (cfg->more_services.n && conn_multi_start(c) < 0) return conn_interrupted ? 130 : 1;

  /* 1. inspect: reads only */
  if (conn_open(c, &cfg->kf) < 0) goto out;
  /* The tunnels go through the API calls' proxy: refuse one they cannot use
   * before anything is written. */
  if (!cfg->agent_address.port && pf_proxy_check(kube_proxy(c->k), err, sizeof err) < 0) {
    c->reason = "proxy";
    conn_fail(c, "%s (from %s)", err, kube_proxy_source(c->k));
    rc = 2;
    goto out;
  }
  if (conn_volumes_open(c) < 0) {
    rc = 2;
    goto out;
  }
  struct kube_err e;
  if (conn_read_service(c) < 0) goto out;
  const char *tk = takeover_annotation(c->service, TAKEOVER_ANN_TAKEOVER);
  if (tk) {
    /* Already taken over: reuse its agent. */
    cJSON *t = cJSON_Parse(tk);
    const char *mode = conn_jstr(t, "mode"), *by = conn_jstr(t, "by");
    int excl = mode && strcmp(mode, "exclusive") == 0;
    char holders[600] = "";
    const cJSON *it;
    cJSON_ArrayForEach(it, conn_jget(c->service, "metadata.annotations")) {
      if (strncmp(it->string, "kbridge.dev/route-", 18) != 0) continue;
      size_t l = strlen(holders);
      cJSON *v = cJSON_Parse(cJSON_GetStringValue(it) ? it->valuestring : "{}");
      snprintf(holders + l, sizeof holders - l, "%s%s (%s)", l ? ", " : "", it->string + 18,
               conn_jstr(v, "by") ? conn_jstr(v, "by") : "?");
      cJSON_Delete(v);
    }
    if (excl || cfg->replace) {
      conn_fail(c, "service %s/%s is already taken over in %s mode by %s (routes held: %s); %s",
                c->ns, c->svc, mode ? mode : "?", by ? by : "?", holders[0] ? holders : "none",
                cfg->replace ? "--replace needs the service to itself" : "it is held exclusively");
      cJSON_Delete(t);
      goto out;
    }
    cJSON_Delete(t);
    conn_takeover_template(c);
    if (conn_env_refs_check(c, 1) < 0) {
      rc = 2;
      goto out;
    }
    /* The agent's ports come from its Deployment. */
    struct kube_ref dr = {"apps/v1", "deployments", c->ns, c->nm.agent, NULL};
    cJSON *d = NULL;
    if (kube_get(c->k, &dr, &d, &e) < 0) {
      conn_fail(c,
                "service %s/%s is marked as taken over but its agent is missing (%s); run `kbridge "
                "restore -n %s --service %s` first",
                c->ns, c->svc, e.msg, c->ns, c->svc);
      goto out;
    }
    const cJSON *p;
    cJSON_ArrayForEach(
        p,
        conn_jget(cJSON_GetArrayItem(conn_jget(d, "spec.template.spec.containers"), 0), "ports")) {
      const char *n = conn_jstr(p, "name");
      const cJSON *cp = cJSON_GetObjectItemCaseSensitive(p, "containerPort");
      if (n && cJSON_IsNumber(cp) && strcmp(n, "kb-tunnel") == 0) c->tunnel_port = cp->valueint;
    }
    cJSON_Delete(d);
    cJSON_ArrayForEach(p, conn_jget(c->service, "spec.ports")) {
      if (c->nports == MAX_PORTS) break;
      const cJSON *port = cJSON_GetObjectItemCaseSensitive(p, "port");
      c->ports[c->nports++].port = cJSON_IsNumber(port) ? port->valueint : 0;
    }
    if (!c->tunnel_port) {
      conn_fail(c, "deployment %s/%s has no kb-tunnel port", c->ns, c->nm.agent);
      goto out;
    }
    if (cfg->pull_secrets.n || cfg->node_selector.n || cfg->tolerations.n || cfg->agent_labels.n ||
        cfg->agent_annotations.n || cfg->agent_requests || cfg->agent_limits)
      log_warn("the agent of %s/%s exists already: the agent pod flags apply when it is created, "
               "not to the running agent", c->ns, c->svc);
    conn_progress(c, "reuse-agent",
                  "service %s/%s is already taken over (by %s%s%s): reusing agent %s", c->ns,
                  c->svc, c->by[0] ? "" : "", holders[0] ? holders : "nobody connected now", "",
                  c->nm.agent);
    if (conn_wait_agent_ready(c) < 0) goto out;
    if (conn_key_held(c) < 0) goto out;
    if (conn_client_cert(c) < 0) goto out;
    if (cfg->pause_gitops) {
      struct kube_ref r = {"v1", "services", c->ns, c->svc, NULL};
      if (kube_update_retry(c->k, &r, conn_pause_mutate, c, NULL, &e) < 0) {
        conn_fail_kube(c, &e);
        goto out;
      }
      conn_pause_report(c);
    }
  } else {
    if (conn_selector(c) < 0) goto out;
    if (agentpod_selected_by(&c->pod, c->orig_selector)) {
      c->reason = "bad_flag";
      conn_fail(c,
                "--agent-label: the labels given include the whole selector of service %s/%s (%s): "
                "the agent pod would count as one of the original pods; leave one of them out",
                c->ns, c->svc, conn_selector_string(c->orig_selector));
      rc = 2;
      goto out;
    }
    const char *type = conn_jstr(c->service, "spec.type");
    if (type && strcmp(type, "ExternalName") == 0) {
      conn_fail(c, "service %s/%s is an ExternalName service: nothing to take over", c->ns, c->svc);
      goto out;
    }
    const char *cip = conn_jstr(c->service, "spec.clusterIP");
    if (cip && strcmp(cip, "None") == 0) {
      /* Its DNS name lists the pods themselves, and each pod of a StatefulSet
       * has its own name under it (db-0.db.NS.svc): with the agent selected
       * those names stop resolving and peer discovery breaks. */
      c->reason = "unsupported";
      conn_fail(c, "service %s/%s is headless (clusterIP: None): its DNS names are the pods' own "
           "(for a StatefulSet, <pod>.%s.%s.svc), and a takeover would replace them with the "
           "agent's; take over a ClusterIP Service in front of the same pods instead", c->ns,
           c->svc, c->svc, c->ns);
      rc = 2;
      goto out;
    }
    /* Leftovers of an earlier takeover that was not restored. */
    struct kube_ref dr = {"apps/v1", "deployments", c->ns, c->nm.agent, NULL};
    cJSON *d = NULL;
    if (kube_get(c->k, &dr, &d, &e) == 0) {
      cJSON_Delete(d);
      conn_fail(c, "deployment %s/%s exists but service %s is not taken over (yet): either another "
           "kbridge connect is starting right now (try again in a few seconds), or these are "
           "leftovers of an earlier takeover (`kbridge restore -n %s --service %s` removes them)",
           c->ns, c->nm.agent, c->svc, c->ns, c->svc);
      goto out;
    } else if (e.status != 404) {
      conn_fail_kube(c, &e);
      goto out;
    }
    if (conn_selected_workloads(c) < 0) goto out;
    int npods = cJSON_GetArraySize(conn_jget(c->orig_pods, "items"));
    if (inspect_ports(c) < 0) goto out;
    char plist[600] = "", wlist[1200];
    for (int i = 0; i < c->nports; i++) {
      size_t l = strlen(plist);
      if (c->ports[i].tname[0])
        snprintf(plist + l, sizeof plist - l, "%s%d->%s (per pod; agent port %d)", i ? ", " : "",
                 c->ports[i].port, c->ports[i].tname, c->ports[i].target);
      else
        snprintf(plist + l, sizeof plist - l, "%s%d->%d", i ? ", " : "", c->ports[i].port,
                 c->ports[i].target);
    }
    workloads_describe(&c->wls, wlist, sizeof wlist);
    conn_progress(c, "inspect", "service %s/%s selects %s (%d pod%s: %s); ports %s", c->ns, c->svc,
             conn_selector_string(c->orig_selector), npods, npods == 1 ? "" : "s",
             c->wls.n ? wlist : "none yet", plist);
    if (conn_env_refs_check(c, 1) < 0) {
      rc = 2;
      goto out;
    }
    if (cfg->replace && (c->wls.n > 1 || c->wls.more)) {
      /* Scaling one would leave the others serving and consuming; scaling all
       * would need a restore record per workload. Refused, nothing changed. */
      c->reason = "unsupported";
      conn_fail(
          c,
          "--replace: service %s/%s selects pods of several workloads (%s); --replace scales "
          "one workload to 0 and the others would keep taking traffic and work. Connect without "
          "--replace (--route-as KEY: unrouted traffic keeps reaching all of them), or scale "
          "the others to 0 yourself first",
          c->ns, c->svc, wlist);
      rc = 2;
      goto out;
    }
    if (cfg->replace && npods > 0 && !takeover_workload_resource(c->wl_kind) &&
        strcmp(c->wl_kind, "Pods") != 0) {
      conn_fail(c, "--replace: the pods belong to %s %s, which kbridge cannot scale to 0",
                c->wl_kind, c->wl_name);
      goto out;
    }
    int nrc = conn_netpol_step(c);
    if (nrc < 0) {
      if (nrc == -2) rc = 2;
      goto out;
    }
    if (conn_client_cert(c) < 0) goto out;
    c->fresh = 1;
    /* 2. agent — from here on, failures undo */
    if (conn_create_agent(c) < 0 || conn_wait_agent_ready(c) < 0) goto undo_out;
    /* 3. switch */
    if (conn_switch_service(c) < 0) goto undo_out;
    conn_wait_taken(c);
  }

  /* 4. tunnels */
  {
    if ((c->tun_ssl = tls_client_ctx_from_pem(c->ca.cert, &c->me, err, sizeof err)) == NULL) {
      conn_fail(c, "cannot use your client certificate: %s", err);
      goto undo_out;
    }
    c->api_ssl = kube_ssl_ctx_new(c->k, err, sizeof err);
    if (!c->api_ssl) {
      conn_fail(c, "%s", err);
      goto undo_out;
    }
  }
  int others = 0;
  if (conn_set_route(c, 1, &others) < 0) goto undo_out;
  c->routed = 1;
  if (cfg->ingress && conn_clone_ingresses(c) < 0) goto undo_out;
  session_write(c->ns, c->svc, cfg->key, cfg->local_port, c->session_path, sizeof c->session_path);
  if (cfg->agent_address.port) {
    char a[300];
    conn_progress(c, "tunnels", "opening %d tunnel%s to the agent at %s", cfg->tunnels,
             cfg->tunnels == 1 ? "" : "s", addr_format(&cfg->agent_address, a, sizeof a));
  } else {
    conn_progress(c, "tunnels", "opening %d tunnel%s to the agent through the API server",
             cfg->tunnels, cfg->tunnels == 1 ? "" : "s");
  }
  if (conn_interrupted) goto leave;
  rc = conn_serve(c, &sa);

leave:
  rc = conn_leave_session(c, rc, others);
  goto out;

undo_out:
  conn_unclone_ingresses(c);
  if (c->routed) {
    int left = 0;
    conn_set_route(c, 0, &left);
  }
  if (c->fresh && c->created) {
    conn_undo(c, "connect failed");
    conn_wait_gone(c, 30);
  }
  rc = 1;
out:
  conn_multi_stop(c);
  if (c->session_path[0]) unlink(c->session_path);
  conn_volumes_close(c);
  cJSON_Delete(c->service);
  cJSON_Delete(c->pod_template);
  workloads_free(&c->wls);
  cJSON_Delete(c->ingress_urls);
  tls_pem_clear(&c->ca);
  tls_pem_clear(&c->me);
  if (c->api_ssl) SSL_CTX_free(c->api_ssl);
  if (c->tun_ssl) SSL_CTX_free(c->tun_ssl);
  if (c->k) kube_free(c->k);
  agentpod_clear(&c->pod);
  cJSON_Delete(c->orig_pods);
  netpol_plan_free(&c->np);
  return rc;
}
