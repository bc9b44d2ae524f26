/* sessions.c: `kbridge restore`, `list`, `status`, `disconnect` (connect.h);
 * the session files behind the last two are session.c's. */
#include "connect.h"
#include "hostsfile.h"
#include "session.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "agentquery.h"
#include "kube.h"
#include "takeover.h"

static const char *sget(const cJSON *s, const char *k) {
  const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(s, k));
  return v ? v : "?";
}
static int iget(const cJSON *s, const char *k) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(s, k);
  return cJSON_IsNumber(v) ? v->valueint : 0;
}

/* ---- option tables ---- */

#define RC_OFF(field) offsetof(struct restore_config, field)
#define KUBE_FLAGS                                                                          \
  {"namespace", OPT_STRING, RC_OFF(kf.namespace), 0, 0, NULL, "NS", 0, 0,                  \
   .help = "namespace (-n; default: the context's)"},                                       \
  {"kubeconfig", OPT_PATH, RC_OFF(kf.kubeconfig), 0, 0, NULL, NULL, 0, 0,                  \
   .help = "kubeconfig file (default $KUBECONFIG, else ~/.kube/config)"},                   \
  {"context", OPT_STRING, RC_OFF(kf.context), 0, 0, NULL, NULL, 0, 0,                      \
   .help = "kubeconfig context (default: current-context)"},                                \
  {"output", OPT_STRING, RC_OFF(output), 0, 0, "text", "text|json", 0, 0,                  \
   .help = "json: machine-readable output"}

static const struct opt_def restore_opts[] = {
    {"service", OPT_STRING, RC_OFF(service), 0, 1, NULL, "SVC", 0, 0,
     .help = "the Service to restore"},
    {"hosts-file", OPT_STRING, RC_OFF(hosts_file), 0, 0, "/etc/hosts", "PATH", 0, 0,
     .help = "remove from it the names of connect --hosts sessions that are gone (kill -9)"},
    KUBE_FLAGS,
};
const struct opt_cmd restore_cmd = {
    "restore",
    "Put a taken-over Service back from its annotations alone (no agent needed).",
    "Restores the selector (unless someone else changed it: reported as a conflict), the\n"
    "workload's replica count, and deletes the shadow Service and the agent's objects.\n"
    "Running it again, or on a Service never taken over, changes nothing. Exit status 0\n"
    "when done (conflicts included, they are printed), 1 when an API call failed.",
    restore_opts, .nopts = sizeof restore_opts / sizeof restore_opts[0]};

static const struct opt_def list_opts[] = {
    {"all", OPT_FLAG, RC_OFF(all), 0, 0, NULL, NULL, 0, 0,
     .help = "every Service of the namespace, with its ports, not only the taken-over ones"},
    KUBE_FLAGS};
const struct opt_cmd list_cmd = {
    "list", "List the Services of a namespace that are taken over, with their routes.",
    "Read from the cluster (the Services' kbridge.dev/ annotations and the agent pods).\n"
    "With --all, every Service with its ports (what an editor offers to connect to).",
    list_opts, .nopts = sizeof list_opts / sizeof list_opts[0]};

static const struct opt_def namespaces_opts[] = {KUBE_FLAGS};
const struct opt_cmd namespaces_cmd = {
    "namespaces", "List the namespaces of the cluster (needs the right to list them).",
    "The context's own namespace is marked. A user who may not list namespaces gets\n"
    "an error that says so (tools then ask for the namespace by name).",
    namespaces_opts, .nopts = sizeof namespaces_opts / sizeof namespaces_opts[0]};

static const struct opt_def status_opts[] = {
    {"output", OPT_STRING, RC_OFF(output), 0, 0, "text", "text|json", 0, 0,
     .help = "json: machine-readable output"},
};
const struct opt_cmd status_cmd = {
    "status", "List the kbridge connect sessions running on this machine.", NULL, status_opts,
    .nopts = sizeof status_opts / sizeof status_opts[0]};

static const struct opt_def disconnect_opts[] = {
    {"service", OPT_STRING, RC_OFF(service), 0, 0, NULL, "SVC", 0, 0,
     .help = "end the sessions on this Service (default: all sessions of this machine)"},
    {"namespace", OPT_STRING, RC_OFF(kf.namespace), 0, 0, NULL, "NS", 0, 0,
     .help = "only sessions in this namespace (-n)"},
    {"route-as", OPT_KEY, RC_OFF(key), 0, 0, NULL, NULL, 0, 0,
     .help = "only the session with this key"},
    {"timeout", OPT_INT, RC_OFF(timeout), 0, 0, "60", NULL, 1, 3600,
     .help = "seconds to wait for the sessions to restore and end"},
};
const struct opt_cmd disconnect_cmd = {
    "disconnect", "End kbridge connect sessions on this machine (they restore the cluster).",
    "Sends SIGTERM to the matching sessions and waits until they have ended.", disconnect_opts,
    .nopts = sizeof disconnect_opts / sizeof disconnect_opts[0]};

static int output_json(const struct restore_config *cfg, int *json) {
  *json = cfg->output && strcmp(cfg->output, "json") == 0;
  if (cfg->output && !*json && strcmp(cfg->output, "text") != 0) {
    fprintf(stderr, "kbridge: --output: expected text or json, got \"%s\"\n", cfg->output);
    return -1;
  }
  return 0;
}

/* A failure of list or namespaces: with --output json an error event on stdout
 * (reason as connect's: not_found, forbidden, unauthorized, unreachable,
 * kubeconfig), always the sentence on stderr. */
static void print_error(int json, const char *reason, const char *msg) {
  if (json) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "event", "error");
    cJSON_AddStringToObject(o, "reason", reason);
    cJSON_AddStringToObject(o, "message", msg);
    char *s = cJSON_PrintUnformatted(o);
    printf("%s\n", s);
    free(s);
    cJSON_Delete(o);
  }
  fprintf(stderr, "kbridge: %s\n", msg);
}

/* The opening of list and namespaces: parse --output, open the API client,
 * list `resource` (in the namespace, or cluster-wide when cluster_wide).
 * Returns 0 with *k and *list (the caller frees both), or the exit status (1 or
 * 2) after printing the error. */
static int open_and_list(struct restore_config *cfg, const char *resource, int cluster_wide,
                         int *json, struct kube **k, cJSON **list) {
  char err[1200];
  if (output_json(cfg, json) < 0) return 2;
  log_init("kbridge", LOGL_WARN);
  if (connect_kube_open(&cfg->kf, k, err, sizeof err) < 0) {
    print_error(*json, "kubeconfig", err);
    return 1;
  }
  struct kube_ref r = {"v1", resource, cluster_wide ? NULL : kube_namespace(*k), NULL, NULL};
  struct kube_err e;
  if (kube_list(*k, &r, NULL, list, &e) < 0) {
    print_error(*json, connect_kube_reason(&e), e.msg);
    kube_free(*k);
    return 1;
  }
  return 0;
}

/* The Service's ports as [{"name","port","targetPort","protocol"}] and its
 * selector, for list --all. */
static void add_ports(cJSON *o, const cJSON *svc) {
  cJSON *ports = cJSON_AddArrayToObject(o, "ports");
  const cJSON *spec = cJSON_GetObjectItemCaseSensitive(svc, "spec"), *p;
  cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(spec, "ports")) {
    cJSON *q = cJSON_CreateObject();
    const cJSON *tp = cJSON_GetObjectItemCaseSensitive(p, "targetPort");
    cJSON_AddStringToObject(q, "name", sget(p, "name"));
    cJSON_AddNumberToObject(q, "port", iget(p, "port"));
    if (cJSON_IsString(tp))
      cJSON_AddStringToObject(q, "targetPort", tp->valuestring);
    else
      cJSON_AddNumberToObject(q, "targetPort", cJSON_IsNumber(tp) ? tp->valueint : iget(p, "port"));
    cJSON_AddStringToObject(q, "protocol", *sget(p, "protocol") ? sget(p, "protocol") : "TCP");
    cJSON_AddItemToArray(ports, q);
  }
  cJSON_AddStringToObject(o, "type", *sget(spec, "type") ? sget(spec, "type") : "ClusterIP");
  const cJSON *sel = cJSON_GetObjectItemCaseSensitive(spec, "selector");
  cJSON_AddItemToObject(o, "selector", sel ? cJSON_Duplicate(sel, 1) : cJSON_CreateObject());
}

/* ---- restore ---- */

/* A dead connect --hosts session's file: the blocks of gone sessions out. */
static int restore_hosts_one(const char *file, void *arg) {
  (void)arg;
  char err[600];
  if (access(file, R_OK) < 0) return 0; /* the file itself is gone: nothing to do */
  if (hosts_update(file, "", 0, NULL, session_pid_running, err, sizeof err) == 0) return 0;
  fprintf(stderr, "kbridge: hosts file of a crashed connect --hosts: %s (run kbridge restore "
                  "as a user who may write it)\n", err);
  return -1;
}

int restore_run(struct restore_config *cfg) {
  struct kube *k = NULL;
  char err[1200];
  int json;
  if (output_json(cfg, &json) < 0) return 2;
  log_init("kbridge", LOGL_WARN);
  if (connect_kube_open(&cfg->kf, &k, err, sizeof err) < 0) {
    fprintf(stderr, "kbridge: %s\n", err);
    return 1;
  }
  const char *ns = kube_namespace(k);
  struct takeover_report rep;
  int rc = takeover_restore(k, ns, cfg->service, &rep, err, sizeof err);
  if (json) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "event", rc == 0 ? "restored" : "error");
    cJSON_AddStringToObject(o, "namespace", ns);
    cJSON_AddStringToObject(o, "service", cfg->service);
    if (rc < 0) cJSON_AddStringToObject(o, "message", err);
    cJSON_AddNumberToObject(o, "changed", rep.changed);
    cJSON_AddNumberToObject(o, "conflicts", rep.conflicts);
    cJSON_AddStringToObject(o, "report", rep.text);
    char *s = cJSON_PrintUnformatted(o);
    printf("%s\n", s);
    free(s);
    cJSON_Delete(o);
  } else {
    if (rep.text[0]) printf("%s\n", rep.text);
    if (rc < 0)
      fprintf(stderr, "kbridge: restore of %s/%s stopped: %s (run it again to finish)\n", ns,
              cfg->service, err);
    else if (rep.changed == 0 && rep.conflicts == 0)
      printf("service %s/%s: nothing to restore\n", ns, cfg->service);
    else
      printf("service %s/%s: restored%s\n", ns, cfg->service,
             rep.conflicts ? " (with conflicts, see above)" : "");
  }
  kube_free(k);
  /* connect --hosts sessions that died (kill -9) left their names behind:
   * their blocks go (a file with none is not written), in --hosts-file and in
   * every file such a session recorded (session.h). */
  if (cfg->hosts_file && access(cfg->hosts_file, R_OK) == 0 &&
      hosts_update(cfg->hosts_file, "", 0, NULL, session_pid_running, err, sizeof err) < 0)
    fprintf(stderr, "kbridge: --hosts-file: %s\n", err);
  session_hosts_dead(restore_hosts_one, NULL);
  return rc < 0 ? 1 : 0;
}

/* ---- list ---- */

int list_run(struct restore_config *cfg) {
  struct kube *k = NULL;
  char err[1200];
  int json;
  cJSON *list = NULL;
  int rc = open_and_list(cfg, "services", 0, &json, &k, &list);
  if (rc) return rc;
  const char *ns = kube_namespace(k);
  struct kube_err e;
  cJSON *out = cJSON_CreateArray();
  const cJSON *svc;
  cJSON_ArrayForEach(svc, cJSON_GetObjectItemCaseSensitive(list, "items")) {
    const char *tk = takeover_annotation(svc, TAKEOVER_ANN_TAKEOVER);
    const char *name = cJSON_GetStringValue(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(svc, "metadata"), "name"));
    if (!tk && !cfg->all) continue;
    if (!tk) { /* --all: a Service nobody has taken over */
      cJSON *o = cJSON_CreateObject();
      cJSON_AddStringToObject(o, "service", name ? name : "?");
      cJSON_AddBoolToObject(o, "taken_over", 0);
      add_ports(o, svc);
      cJSON_AddItemToArray(out, o);
      continue;
    }
    cJSON *t = cJSON_Parse(tk);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "service", name ? name : "?");
    cJSON_AddBoolToObject(o, "taken_over", 1);
    if (cfg->all) add_ports(o, svc);
    cJSON_AddStringToObject(o, "mode", sget(t, "mode"));
    cJSON_AddStringToObject(o, "since", sget(t, "since"));
    cJSON_AddStringToObject(o, "by", sget(t, "by"));
    cJSON_AddStringToObject(o, "agent", sget(t, "agent"));
    const char *orig = takeover_annotation(svc, TAKEOVER_ANN_ORIGINAL_SELECTOR);
    cJSON_AddStringToObject(o, "original_selector", orig ? orig : "");
    cJSON *routes = cJSON_AddArrayToObject(o, "routes");
    const cJSON *a;
    cJSON_ArrayForEach(a, cJSON_GetObjectItemCaseSensitive(
                              cJSON_GetObjectItemCaseSensitive(svc, "metadata"), "annotations")) {
      if (strncmp(a->string, "kbridge.dev/route-", 18) != 0 || !cJSON_IsString(a)) continue;
      cJSON *v = cJSON_Parse(a->valuestring);
      cJSON *ro = cJSON_CreateObject();
      cJSON_AddStringToObject(ro, "key", a->string + 18);
      cJSON_AddStringToObject(ro, "by", sget(v, "by"));
      cJSON_AddStringToObject(ro, "since", sget(v, "since"));
      cJSON_AddItemToArray(routes, ro);
      cJSON_Delete(v);
    }
    /* Agent pods and their readiness. */
    char sel[200];
    snprintf(sel, sizeof sel, "%s=%s", TAKEOVER_LABEL_AGENT, name ? name : "");
    struct kube_ref pr = {"v1", "pods", ns, NULL, NULL};
    cJSON *pods = NULL;
    int ready = 0, npods = 0;
    if (kube_list(k, &pr, sel, &pods, &e) == 0) {
      const cJSON *p;
      cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(pods, "items")) {
        npods++;
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(
                                  cJSON_GetObjectItemCaseSensitive(p, "status"), "conditions")) {
          if (strcmp(sget(c, "type"), "Ready") == 0 && strcmp(sget(c, "status"), "True") == 0)
            ready++;
        }
      }
    }
    cJSON_Delete(pods);
    cJSON_AddNumberToObject(o, "agent_pods", npods);
    cJSON_AddNumberToObject(o, "agent_ready", ready);
    /* Who is connected right now, from the agent itself (if it answers). */
    cJSON *h = NULL;
    if (ready && agent_healthz(k, ns, name ? name : "", &h, err, sizeof err) == 0) {
      cJSON *keys = cJSON_DetachItemFromObjectCaseSensitive(h, "keys");
      cJSON *ids = cJSON_DetachItemFromObjectCaseSensitive(h, "identities");
      cJSON *leases = cJSON_DetachItemFromObjectCaseSensitive(h, "leases");
      cJSON_AddItemToObject(o, "connected", keys ? keys : cJSON_CreateObject());
      cJSON_AddItemToObject(o, "identities", ids ? ids : cJSON_CreateObject());
      if (leases) cJSON_AddItemToObject(o, "leases", leases);
      const cJSON *ro;
      cJSON_ArrayForEach(ro, routes) {
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(keys, sget(ro, "key"));
        cJSON_AddBoolToObject((cJSON *)(uintptr_t)ro, "connected", cJSON_IsNumber(n) && n->valueint > 0);
        /* Tunnels lost, lease still running: the agent keeps the route for
         * the developer's CLI to come back. */
        const cJSON *left = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(leases, sget(ro, "key")), "seconds_remaining");
        if (cJSON_IsNumber(left))
          cJSON_AddNumberToObject((cJSON *)(uintptr_t)ro, "lease_seconds_remaining",
                                  left->valuedouble);
        /* Who holds the key, from the certificates the agent verified (the
         * annotation's "by" is what the CLI says about itself). */
        const char *id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ids, sget(ro, "key")));
        if (id) cJSON_AddStringToObject((cJSON *)(uintptr_t)ro, "identity", id);
      }
      cJSON_Delete(h);
    } else if (ready) {
      cJSON_AddStringToObject(o, "agent_error", err);
    }
    cJSON_AddItemToArray(out, o);
    cJSON_Delete(t);
  }
  if (json) {
    char *s = cJSON_PrintUnformatted(out);
    printf("%s\n", s);
    free(s);
  } else if (cJSON_GetArraySize(out) == 0) {
    printf(cfg->all ? "no service in namespace %s\n" : "no service in namespace %s is taken over\n",
           ns);
  } else {
    const cJSON *o;
    printf("%-24s %-9s %-21s %-24s %-6s %s\n", "SERVICE", "MODE", "SINCE", "BY", "AGENT",
           "ROUTES");
    cJSON_ArrayForEach(o, out) {
      char routes[2000] = "", agent[32];
      const cJSON *ro;
      cJSON_ArrayForEach(ro, cJSON_GetObjectItemCaseSensitive(o, "routes")) {
        size_t l = strlen(routes);
        const cJSON *conn = cJSON_GetObjectItemCaseSensitive(ro, "connected");
        const char *id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ro, "identity"));
        if (!id) id = "";
        const cJSON *left = cJSON_GetObjectItemCaseSensitive(ro, "lease_seconds_remaining");
        char state[80] = "";
        if (cJSON_IsFalse(conn) && cJSON_IsNumber(left))
          snprintf(state, sizeof state, ", tunnel lost, lease ends in %.0f s", left->valuedouble);
        else if (cJSON_IsFalse(conn))
          snprintf(state, sizeof state, ", not connected now");
        snprintf(routes + l, sizeof routes - l, "%s%s (%s%s%s since %s%s)", l ? ", " : "",
                 sget(ro, "key"), id[0] ? id : "", id[0] ? ", " : "", sget(ro, "by"),
                 sget(ro, "since"), state);
      }
      if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "taken_over"))) {
        printf("%-24s %-9s %-21s %-24s %-6s %s\n", sget(o, "service"), "-", "-", "-", "-", "-");
        continue;
      }
      snprintf(agent, sizeof agent, "%d/%d", iget(o, "agent_ready"), iget(o, "agent_pods"));
      printf("%-24s %-9s %-21s %-24s %-6s %s\n", sget(o, "service"), sget(o, "mode"),
             sget(o, "since"), sget(o, "by"), agent, routes[0] ? routes : "-");
    }
  }
  cJSON_Delete(out);
  cJSON_Delete(list);
  kube_free(k);
  return 0;
}

/* ---- namespaces ---- */

int namespaces_run(struct restore_config *cfg) {
  struct kube *k = NULL;
  int json;
  cJSON *list = NULL;
  int rc = open_and_list(cfg, "namespaces", 1, &json, &k, &list);
  if (rc) return rc;
  const char *mine = kube_namespace(k);
  cJSON *out = cJSON_CreateObject();
  cJSON_AddStringToObject(out, "current", mine);
  cJSON *names = cJSON_AddArrayToObject(out, "namespaces");
  const cJSON *it;
  cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(list, "items")) {
    const char *n = cJSON_GetStringValue(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(it, "metadata"), "name"));
    if (n) cJSON_AddItemToArray(names, cJSON_CreateString(n));
  }
  if (json) {
    char *s = cJSON_PrintUnformatted(out);
    printf("%s\n", s);
    free(s);
  } else {
    cJSON_ArrayForEach(it, names)
      printf("%s%s\n", it->valuestring, strcmp(it->valuestring, mine) == 0 ? " (current)" : "");
  }
  cJSON_Delete(out);
  cJSON_Delete(list);
  kube_free(k);
  return 0;
}

/* ---- status ---- */

static void status_one(const cJSON *s, const char *path, void *arg) {
  cJSON *arr = arg;
  (void)path;
  cJSON_AddItemToArray(arr, cJSON_Duplicate(s, 1));
}

int status_run(struct restore_config *cfg) {
  int json;
  if (output_json(cfg, &json) < 0) return 2;
  cJSON *arr = cJSON_CreateArray();
  session_each(status_one, arr);
  if (json) {
    char *s = cJSON_PrintUnformatted(arr);
    printf("%s\n", s);
    free(s);
  } else if (cJSON_GetArraySize(arr) == 0) {
    printf("no kbridge connect session on this machine\n");
  } else {
    printf("%-12s %-20s %-20s %-6s %-8s %s\n", "NAMESPACE", "SERVICE", "ROUTE", "PORT", "PID",
           "SINCE");
    const cJSON *s;
    cJSON_ArrayForEach(s, arr)
      printf("%-12s %-20s %-20s %-6d %-8d %s\n", sget(s, "namespace"), sget(s, "service"),
             sget(s, "key"), iget(s, "local_port"), iget(s, "pid"), sget(s, "since"));
  }
  cJSON_Delete(arr);
  return 0;
}

/* ---- disconnect ---- */

struct dc {
  const struct restore_config *cfg;
  pid_t pids[64];
  int n;
};

static void disconnect_one(const cJSON *s, const char *path, void *arg) {
  struct dc *d = arg;
  (void)path;
  const struct restore_config *cfg = d->cfg;
  if (cfg->service && strcmp(cfg->service, sget(s, "service")) != 0) return;
  if (cfg->kf.namespace && strcmp(cfg->kf.namespace, sget(s, "namespace")) != 0) return;
  if (cfg->key[0] && strcmp(cfg->key, sget(s, "key")) != 0) return;
  if (d->n == 64) return;
  pid_t pid = (pid_t)iget(s, "pid");
  if (kill(pid, SIGTERM) == 0) {
    printf("disconnecting %s/%s route %s (pid %ld)\n", sget(s, "namespace"), sget(s, "service"),
           sget(s, "key"), (long)pid);
    d->pids[d->n++] = pid;
  } else {
    fprintf(stderr, "kbridge: cannot signal pid %ld: %s\n", (long)pid, strerror(errno));
  }
}

int disconnect_run(struct restore_config *cfg) {
  struct dc d;
  memset(&d, 0, sizeof d);
  d.cfg = cfg;
  session_each(disconnect_one, &d);
  fflush(stdout);
  if (d.n == 0) {
    fprintf(stderr, "kbridge: no matching kbridge connect session on this machine (see kbridge "
            "status)\n");
    return 1;
  }
  for (int waited = 0; waited < cfg->timeout * 10; waited++) {
    int alive = 0;
    for (int i = 0; i < d.n; i++) alive += session_pid_running(d.pids[i]);
    if (!alive) {
      printf("disconnected\n");
      return 0;
    }
    usleep(100 * 1000);
  }
  fprintf(stderr, "kbridge: sessions still running after %d s\n", cfg->timeout);
  return 1;
}
