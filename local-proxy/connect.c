/* connect.c: `kbridge connect` (see connect.h).
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
#include <fcntl.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netdb.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "agentpod.h"
#include "agentquery.h"
#include "certreq.h"
#include "dnslabel.h"
#include "kube.h"
#include "kubeconfig.h"
#include "portforward.h"
#include "netpol.h"
#include "portplan.h"
#include "proxy.h"
#include "session.h"
#include "takeover.h"
#include "tls.h"
#include "workloads.h"

#define TLS_MOUNT "/etc/kbridge/tls"
#define AGENT_UID 65532
#define MAX_PORTS 16
/* Re-sync guard: the Service's selector is read every GUARD_PERIOD_MS; a
 * re-apply that merged or replaced it is repaired at once, and the takeover
 * re-established at most GUARD_RETAKES times in GUARD_WINDOW_S seconds; one more
 * revert within that window ends the session (see the user guide, "On a real
 * cluster"). */
#define GUARD_PERIOD_MS 1000
#define GUARD_RETAKES 3
#define GUARD_WINDOW_S 600.0
/* The agent (docs/reliability.md): AGENT_REPLICAS pods, spread over nodes when
 * the scheduler can, a PodDisruptionBudget keeping one of them, rolling
 * updates that start a new pod before stopping an old one, and a drain of
 * AGENT_DRAIN_S on SIGTERM; the CLI keeps --tunnels tunnels to every running
 * agent pod (AGENT_SLOTS_PER_TUNNEL times --tunnels slots cover the pods of a
 * rolling update and those still draining). With no ready agent pod for
 * AGENT_LOST_S, the session restores the Service and ends. */
#define AGENT_REPLICAS 2
#define AGENT_DRAIN_S 5
#define AGENT_SLOTS_PER_TUNNEL 4
#define AGENT_LOST_S 15.0
#define MAX_SLOTS 64

extern char **environ;

#define CFG_OFF(field) offsetof(struct connect_config, field)
static const struct opt_def connect_opts[] = {
    {"namespace", OPT_STRING, CFG_OFF(kf.namespace), 0, 0, NULL, "NS", 0, 0,
     "namespace of the Service (-n; default: the context's)"},
    {"service", OPT_STRING, CFG_OFF(service), 0, 1, NULL, "SVC", 0, 0,
     "the Service to take over"},
    {"local-port", OPT_PORT, CFG_OFF(local_port), 0, 1, NULL, NULL, 0, 0,
     "port your local process listens on"},
    {"local-host", OPT_HOST, CFG_OFF(local_host), 0, 0, "127.0.0.1", NULL, 0, 0,
     "host your local process listens on"},
    {"route-as", OPT_KEY, CFG_OFF(key), 0, 0, NULL, NULL, 0, 0,
     "your route key (default: your user name and 4 random characters)"},
    {"replace", OPT_FLAG, CFG_OFF(replace), 0, 0, NULL, NULL, 0, 0,
     "exclusive mode: all of the Service's traffic to you, its workload scaled to 0"},
    {"force", OPT_FLAG, CFG_OFF(force), 0, 0, NULL, NULL, 0, 0,
     "take the route key over even if another identity holds it (logged by the signer and "
     "the agent; the other developer's tunnels are closed)"},
    {"env-file", OPT_PATH, CFG_OFF(env_file), 0, 0, NULL, NULL, 0, 0,
     "write the original container's environment here (KEY=VALUE lines)"},
    {"agent-image", OPT_STRING, CFG_OFF(agent_image), 0, 0, NULL, "IMAGE", 0, 0,
     "agent image (default $KBRIDGE_AGENT_IMAGE, else " CONNECT_DEFAULT_IMAGE ")"},
    {"output", OPT_STRING, CFG_OFF(output), 0, 0, "text", "text|json", 0, 0,
     "json: one JSON event per line on stdout"},
    {"tunnels", OPT_INT, CFG_OFF(tunnels), 0, 0, "2", NULL, 1, 16,
     "parallel tunnel connections to each agent pod"},
    {"lease-seconds", OPT_INT, CFG_OFF(lease_seconds), 0, 0, "60", NULL, 5, 86400,
     "the agent restores the cluster after this long without any developer"},
    {"timeout", OPT_INT, CFG_OFF(timeout), 0, 0, "120", NULL, 5, 3600,
     "seconds to wait for the agent pod to become ready"},
    {"agent-address", OPT_HOSTPORT, CFG_OFF(agent_address), 0, 0, NULL, NULL, 0, 0,
     "reach the agent's tunnel port directly here (a LoadBalancer or NodePort in front of it) "
     "instead of through the API server's port-forward"},
    {"forward", OPT_FORWARD, CFG_OFF(forwards), 0, 0, NULL, NULL, 0, 0,
     "listen on LADDR:LPORT (port 0: any free port) and connect each connection to "
     "HOST:PORT from inside the cluster, through the agent (repeatable)"},
    {"ingress", OPT_FLAG, CFG_OFF(ingress), 0, 0, NULL, NULL, 0, 0,
     "clone each Ingress routing to the Service with every host H as KEY.H (a browser URL "
     "for your route); the clones are removed when you leave"},
    {"pause-gitops", OPT_FLAG, CFG_OFF(pause_gitops), 0, 0, NULL, NULL, 0, 0,
     "while taken over, annotate the Service " TAKEOVER_FLUX_RECONCILE "=disabled so Flux "
     "leaves it alone; removed on restore (an annotation already there is left as it is)"},
    {"image-pull-secret", OPT_LIST, CFG_OFF(pull_secrets), 0, 0, NULL, "NAME", 0, 0,
     "the agent pod's imagePullSecrets: a Secret of the namespace for a private registry"},
    {"node-selector", OPT_LIST, CFG_OFF(node_selector), 0, 0, NULL, "KEY=VALUE", 0, 0,
     "run the agent pod only on nodes with this label"},
    {"toleration", OPT_LIST, CFG_OFF(tolerations), 0, 0, NULL, "KEY[=VALUE][:EFFECT]", 0, 0,
     "let the agent pod run on nodes with this taint (as kubectl taint writes it; no VALUE: "
     "any value, no EFFECT: any effect)"},
    {"agent-requests", OPT_STRING, CFG_OFF(agent_requests), 0, 0, NULL, "cpu=Q,memory=Q", 0, 0,
     "the agent container's resource requests (default cpu=" AGENTPOD_REQ_CPU
     ",memory=" AGENTPOD_REQ_MEMORY "; also ephemeral-storage)"},
    {"agent-limits", OPT_STRING, CFG_OFF(agent_limits), 0, 0, NULL, "cpu=Q,memory=Q", 0, 0,
     "the agent container's resource limits (default memory=" AGENTPOD_LIMIT_MEMORY ")"},
    {"agent-label", OPT_LIST, CFG_OFF(agent_labels), 0, 0, NULL, "KEY=VALUE", 0, 0,
     "an extra label on the agent pod (policies that require labels; not kbridge.dev/*)"},
    {"agent-annotation", OPT_LIST, CFG_OFF(agent_annotations), 0, 0, NULL, "KEY=VALUE", 0, 0,
     "an extra annotation on the agent pod (e.g. sidecar.istio.io/inject=false)"},
    {"config", OPT_PATH, CFG_OFF(config), 0, 0, NULL, NULL, 0, 0,
     "read options from this YAML file: keys are these flags' names without --, the command "
     "line wins (default: kbridge.yaml in the current directory, if there is one)"},
    {"kubeconfig", OPT_PATH, CFG_OFF(kf.kubeconfig), 0, 0, NULL, NULL, 0, 0,
     "kubeconfig file (default $KUBECONFIG, else ~/.kube/config)"},
    {"context", OPT_STRING, CFG_OFF(kf.context), 0, 0, NULL, NULL, 0, 0,
     "kubeconfig context (default: current-context)"},
    {"log-level", OPT_LOGLEVEL, CFG_OFF(log_level), 0, 0, "warn", NULL, 0, 0,
     "error, warn, info or debug (logs go to stderr)"},
};

const struct opt_cmd connect_cmd = {
    "connect",
    "Take over a Service in the cluster and route your requests to a local process.",
    "Creates (or reuses) the kbridge agent for the Service, switches the Service to it\n"
    "and tunnels requests carrying your route key (header kubernetes-route-as: KEY,\n"
    "baggage kbridge-route=KEY, or Host KEY.<anything>) to --local-host:--local-port;\n"
    "everything else still reaches the original pods. With --replace all traffic is\n"
    "yours and the workload is scaled to 0. Stays until SIGINT/SIGTERM, `kbridge\n"
    "disconnect`, or the end of the command given after \"--\" (run with the\n"
    "original container's environment); the last developer to leave restores the\n"
    "cluster. Usage: kbridge connect -n NS --service SVC --local-port P [-- CMD ARGS...]",
    connect_opts,
    sizeof connect_opts / sizeof connect_opts[0],
};

/* Set from a signal handler while the blocking setup and teardown run (the
 * event loop's own signal events take over while tunnels are up). */
static volatile sig_atomic_t interrupted;
static void on_interrupt(int sig) {
  (void)sig;
  interrupted = 1;
}

struct port {
  char name[64];    /* the Service port's name ("" if none) */
  int port;         /* Service port */
  int target;       /* the agent's port serving it (portplan.h) */
  char tname[64];   /* targetPort's name when named */
  char proto[8];
};

struct conn {
  struct connect_config *cfg;
  int json;
  struct kube *k;
  const char *ns;
  const char *svc;
  struct takeover_names nm;
  char image[512];
  /* what inspect found */
  cJSON *service;          /* the Service as read */
  cJSON *orig_selector;    /* borrowed from service */
  char wl_kind[32], wl_name[256];
  cJSON *pod_template;     /* a pod spec of the workload (owned), or NULL */
  struct workloads wls;    /* every workload behind the selector (the first is wl_*) */
  struct portplan plan;    /* the agent's listeners and the shadow Service's ports */
  struct port ports[MAX_PORTS];
  int nports;
  int tunnel_port, metrics_port;
  /* state */
  int created;             /* we started a fresh takeover: undo on failure */
  char takeover_id[20];    /* of the fresh takeover we started (takeover.h), or "" */
  int fresh;
  int routed;              /* our route annotation is on the Service */
  char by[200];            /* user@host */
  struct tls_pem ca, me;   /* ca: the CA certificate only (ca.key stays NULL) */
  char identity[256];      /* the Kubernetes identity our certificate is bound to */
  SSL_CTX *api_ssl;        /* to the API server, for port-forwards */
  SSL_CTX *tun_ssl;        /* the tunnel's client context */
  struct proxy *px;
  struct event *sigchld;
  struct event *tunnel_timer;  /* --timeout for the first registration */
  struct event *guard_timer;   /* looks at the Service's selector every second */
  double retakes[GUARD_RETAKES]; /* when the takeover was last re-established */
  int nretakes;
  char guard_seen[512];        /* the last unexpected selector reported */
  int gone_reported;           /* the agent Deployment disappeared */
  char tunnel_err[700];        /* the last carrier failure */
  pid_t child;
  int child_status;
  int ready_announced;
  char session_path[512];
  char holders[600];       /* other route keys, when leaving */
  char annotated[2048];    /* ",bob,carol,": others' live route annotations (set_route) */
  int annotated_known;     /* annotated was read from the Service */
  char fwd_bound[OPT_FORWARDS_MAX][300]; /* --forward i listens here (real port) */
  int cloned;              /* --ingress: clones of our key may exist */
  cJSON *ingress_urls;     /* ["http://alice.shop.example.com/", ...] (owned) */
  double t0;
  const char *reason;      /* the next error event's "reason" (see fail), or NULL */
  struct agentpod pod;     /* the developer's additions to the agent pod */
  cJSON *orig_pods;        /* the pods the selector picked at inspect (a list's items) */
  int paused;              /* --pause-gitops: we set Flux's reconcile annotation */
  struct netpol_plan np;   /* NetworkPolicies to create with the agent (netpol.h) */
  /* Which agent pod each tunnel slot (proxy.c) is opened to, or "" */
  struct {
    void *slot;
    char pod[256];
  } slots[MAX_SLOTS];
  int per_pod;             /* tunnels wanted to each agent pod (--tunnels) */
  double agent_seen;       /* when an agent pod was last seen ready (now_s) */
  int agent_lost;          /* no agent pod ready for AGENT_LOST_S: restore, end */
};

/* ---- output ---- */

static double now_s(void) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

static void emit_json(cJSON *o) {
  char *s = cJSON_PrintUnformatted(o);
  if (s) {
    printf("%s\n", s);
    fflush(stdout);
    free(s);
  }
  cJSON_Delete(o);
}

static void progress(struct conn *c, const char *step, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void progress(struct conn *c, const char *step, const char *fmt, ...) {
  char msg[1200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (c->json) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "event", "progress");
    cJSON_AddStringToObject(o, "step", step);
    cJSON_AddStringToObject(o, "message", msg);
    cJSON_AddNumberToObject(o, "elapsed", now_s() - c->t0);
    emit_json(o);
    log_info("%s", msg); /* stderr keeps the story too (logs, tests) */
  } else {
    printf("[%5.1fs] %s\n", now_s() - c->t0, msg);
    fflush(stdout);
  }
}

static void fail(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct conn *c, const char *fmt, ...) {
  char msg[2000];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (c->json) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "event", "error");
    cJSON_AddStringToObject(o, "reason", c->reason ? c->reason : "failed");
    cJSON_AddStringToObject(o, "message", msg);
    emit_json(o);
  }
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

/* fail() with the message and reason of a failed API call. */
static void fail_kube(struct conn *c, const struct kube_err *e) {
  c->reason = connect_kube_reason(e);
  fail(c, "%s", e->msg);
}

/* ---- small JSON helpers ---- */

static cJSON *jget(const cJSON *o, const char *path) {
  /* "a.b.c" */
  char buf[200];
  snprintf(buf, sizeof buf, "%s", path);
  const cJSON *cur = o;
  for (char *save = NULL, *p = strtok_r(buf, ".", &save); p && cur; p = strtok_r(NULL, ".", &save))
    cur = cJSON_GetObjectItemCaseSensitive(cur, p);
  return (cJSON *)(uintptr_t)cur;
}
static const char *jstr(const cJSON *o, const char *path) {
  return cJSON_GetStringValue(jget(o, path));
}

/* Base64 (Secret data) into a fresh NUL-terminated buffer; NULL if invalid. */
static char *b64dec(const char *in, size_t *outlen) {
  size_t n = strlen(in);
  if (n % 4) return NULL;
  unsigned char *out = malloc(n / 4 * 3 + 1);
  if (!out) return NULL;
  int m = n ? EVP_DecodeBlock(out, (const unsigned char *)in, (int)n) : 0;
  if (m < 0) {
    free(out);
    return NULL;
  }
  if (n >= 1 && in[n - 1] == '=') m--;
  if (n >= 2 && in[n - 2] == '=') m--;
  out[m] = '\0';
  if (outlen) *outlen = (size_t)m;
  return (char *)out;
}

/* ---- 1. inspect ---- */

static void iso_now(char *out, size_t len) {
  time_t t = time(NULL);
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static char *selector_string(const cJSON *sel) {
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

/* The workloads behind the selector (workloads.h); the first one is the one
 * whose env the developer gets and which --replace scales. */
static int find_workloads(struct conn *c, const cJSON *pods) {
  struct kube_err e;
  if (workloads_find(c->k, c->ns, pods, &c->wls, &e) < 0) {
    fail_kube(c, &e);
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
  if (portplan_build(&c->plan, what, jget(c->service, "spec.ports"), specs, c->wls.n, err,
                     sizeof err) < 0) {
    fail(c, "%s", err);
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

/* ---- 2. the agent ---- */

/* Image references never contain these; they would break the JSON we build. */
static int image_ok(const char *s) {
  if (!*s || strlen(s) > 400) return 0;
  for (; *s; s++)
    if (*s <= ' ' || *s == '"' || *s == '\\' || *s == 127) return 0;
  return 1;
}

static cJSON *owner_ref(const char *name, const char *uid) {
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
  if (owner_uid) cJSON_AddItemToObject(m, "ownerReferences", owner_ref(c->nm.agent, owner_uid));
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
  snprintf(buf, sizeof buf,
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
           "\"volumeMounts\":[{\"name\":\"tls\",\"mountPath\":\"" TLS_MOUNT "\",\"readOnly\":true}]"
           "}]}}}",
           TAKEOVER_LABEL_AGENT, c->svc, TAKEOVER_LABEL_AGENT, c->svc, TAKEOVER_LABEL_MANAGED,
           TAKEOVER_LABEL_SERVICE, c->svc, c->nm.agent, TAKEOVER_LABEL_AGENT, c->svc, AGENT_UID,
           AGENT_UID, AGENT_UID, sysctl,
           c->nm.secret, c->metrics_port, c->metrics_port);
  cJSON *spec = cJSON_Parse(buf);
  cJSON *ctr = cJSON_GetArrayItem(jget(spec, "template.spec.containers"), 0);
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

/* The agent's Role: only what its own restore needs (takeover.c), by name. */
static cJSON *agent_role(const struct conn *c, const char *uid) {
  cJSON *r = cJSON_CreateObject();
  cJSON_AddStringToObject(r, "apiVersion", "rbac.authorization.k8s.io/v1");
  cJSON_AddStringToObject(r, "kind", "Role");
  cJSON_AddItemToObject(r, "metadata", meta(c, c->nm.agent, uid));
  char buf[2048], wl[400] = "";
  const char *res = takeover_workload_resource(c->wl_kind);
  if (res)
    snprintf(wl, sizeof wl,
             ",{\"apiGroups\":[\"apps\"],\"resources\":[\"%s\"],\"resourceNames\":[\"%s\"],"
             "\"verbs\":[\"get\",\"update\"]}",
             res, c->wl_name);
  snprintf(buf, sizeof buf,
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
  cJSON *r = cJSON_CreateObject();
  cJSON_AddStringToObject(r, "apiVersion", "rbac.authorization.k8s.io/v1");
  cJSON_AddStringToObject(r, "kind", "RoleBinding");
  cJSON_AddItemToObject(r, "metadata", meta(c, c->nm.agent, uid));
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

static cJSON *simple_object(const struct conn *c, const char *api, const char *kind,
                            const char *name, const char *uid) {
  cJSON *r = cJSON_CreateObject();
  cJSON_AddStringToObject(r, "apiVersion", api);
  cJSON_AddStringToObject(r, "kind", kind);
  cJSON_AddItemToObject(r, "metadata", meta(c, name, uid));
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
  if (rc < 0) fail_kube(c, &e);
  return rc;
}

/* Why the agent pod is not ready, when it is hopeless (image cannot be pulled,
 * crash loop, bad config): a sentence into why and 1; 0 while it may still come. */
static int pod_hopeless(const cJSON *pod, char *why, size_t len) {
  const cJSON *cs;
  cJSON_ArrayForEach(cs, jget(pod, "status.containerStatuses")) {
    const char *reason = jstr(cs, "state.waiting.reason");
    const char *msg = jstr(cs, "state.waiting.message");
    if (!reason) continue;
    if (strcmp(reason, "ErrImagePull") == 0 || strcmp(reason, "ImagePullBackOff") == 0 ||
        strcmp(reason, "InvalidImageName") == 0 || strcmp(reason, "CrashLoopBackOff") == 0 ||
        strcmp(reason, "CreateContainerConfigError") == 0 ||
        strcmp(reason, "CreateContainerError") == 0) {
      const char *last = jstr(cs, "lastState.terminated.reason");
      const cJSON *code = jget(cs, "lastState.terminated.exitCode");
      snprintf(why, len, "agent pod %s: %s%s%s%s%s", jstr(pod, "metadata.name"), reason,
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

static int pod_ready(const cJSON *pod) {
  if (jget(pod, "metadata.deletionTimestamp")) return 0;
  const char *phase = jstr(pod, "status.phase");
  if (!phase || strcmp(phase, "Running") != 0) return 0;
  const cJSON *cond;
  cJSON_ArrayForEach(cond, jget(pod, "status.conditions")) {
    const char *t = jstr(cond, "type"), *s = jstr(cond, "status");
    if (t && s && strcmp(t, "Ready") == 0) return strcmp(s, "True") == 0;
  }
  return 0;
}

/* The agent pods (a list's items), or NULL with why. */
static cJSON *agent_pods(struct conn *c, char *why, size_t whylen) {
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
  cJSON *list = agent_pods(c, why, whylen);
  if (!list) return -1;
  const cJSON *pod;
  int rc = 1;
  if (hopeless) *hopeless = 0;
  snprintf(why, whylen, "no agent pod yet");
  cJSON_ArrayForEach(pod, jget(list, "items")) {
    if (pod_ready(pod)) {
      snprintf(out, len, "%s", jstr(pod, "metadata.name"));
      rc = 0;
      break;
    }
    if (jget(pod, "metadata.deletionTimestamp")) continue;
    if (pod_hopeless(pod, why, whylen)) {
      if (hopeless) *hopeless = 1;
    } else {
      snprintf(why, whylen, "agent pod %s is %s", jstr(pod, "metadata.name"),
               jstr(pod, "status.phase") ? jstr(pod, "status.phase") : "pending");
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
  fail(c, "the cluster refused to create the agent pod: \"%s\" (%s; see the user guide, "
       "\"Admission refuses the agent pod\")", msg, hint);
  return 1;
}

static int wait_agent_ready(struct conn *c) {
  double deadline = now_s() + c->cfg->timeout;
  char pod[256], why[1200];
  int hopeless = 0, hopeless_seen = 0;
  for (;;) {
    int rc = ready_agent_pod(c, pod, sizeof pod, why, sizeof why, &hopeless);
    if (rc == 0) {
      progress(c, "agent-ready", "agent pod %s is ready", pod);
      return 0;
    }
    if (rc < 0) {
      fail(c, "%s", why);
      return -1;
    }
    if (rc == 1 && strcmp(why, "no agent pod yet") == 0 && agent_refused(c, why, sizeof why))
      return -1;
    /* An image pull error is reported at once; give a crash two looks. */
    if (hopeless && (strstr(why, "Image") || strstr(why, "Config") || ++hopeless_seen >= 2)) {
      fail(c, "the agent did not start: %s", why);
      return -1;
    }
    if (interrupted) {
      fail(c, "interrupted while waiting for the agent");
      return -1;
    }
    if (now_s() > deadline) {
      fail(c, "the agent was not ready within %d s: %s", c->cfg->timeout, why);
      return -1;
    }
    usleep(250 * 1000);
  }
}

/* Our client certificate from kbridge-signer (certreq.h), before anything is
 * written: a request denied because another identity holds the key ends the
 * run here, with the signer's reason. */
static int client_cert(struct conn *c) {
  char err[1200];
  int denied = 0;
  char *ca = NULL;
  progress(c, "certificate", "asking kbridge-signer for a client certificate for route key \"%s\"%s",
           c->cfg->key, c->cfg->force ? " (--force: taking it over from whoever holds it)" : "");
  if (certreq_obtain(c->k, c->ns, c->svc, c->cfg->key, 0, c->cfg->force, 60, &c->me, &ca,
                     c->identity, sizeof c->identity, &denied, err, sizeof err) < 0) {
    if (denied && strstr(err, "is held by")) c->reason = "route_held";
    if (!denied && strstr(err, "forbidden")) {
      c->reason = "forbidden";
      fail(c, "%s (kbridge needs the ClusterRole of deploy/rbac/developer-csr.yaml to ask for "
           "certificates: docs/rbac.md)", err);
      return -1;
    }
    fail(c, "%s", err);
    return -1;
  }
  c->ca.cert = ca;
  progress(c, "certificate", "client certificate for route key \"%s\" issued to %s", c->cfg->key,
           c->identity[0] ? c->identity : "(no identity)");
  return 0;
}

/* The namespace's NetworkPolicies (netpol.h): plan the agent's own, checked
 * with a dry run; reads only. 0, or after fail(): -2 when reading the policies
 * or creating the needed ones is forbidden (reason "forbidden"), -1 otherwise. */
static int netpol_step(struct conn *c) {
  cJSON *dep = agent_deployment(c);
  cJSON *labels = cJSON_CreateArray();
  const cJSON *p;
  cJSON_ArrayForEach(p, jget(c->orig_pods, "items")) {
    const cJSON *l = jget(p, "metadata.labels");
    if (cJSON_IsObject(l)) cJSON_AddItemToArray(labels, cJSON_Duplicate(l, 1));
  }
  const cJSON *specs[WORKLOADS_MAX];
  int nspecs = 0;
  for (int i = 0; i < c->wls.n; i++)
    if (c->wls.w[i].spec) specs[nspecs++] = c->wls.w[i].spec;
  struct netpol_input in = {c->ns, c->svc, NULL, labels, c->orig_selector,
                            jget(dep, "spec.template.metadata.labels"), &c->plan, specs, nspecs,
                            NULL, 0};
  char warn[600], err[1600];
  int rc = netpol_inspect(c->k, &in, &c->np, warn, sizeof warn, err, sizeof err);
  cJSON_Delete(labels);
  cJSON_Delete(dep);
  if (rc != 0) {
    if (rc == 1) c->reason = "forbidden";
    fail(c, "%s", err);
    return rc == 1 ? -2 : -1;
  }
  if (warn[0]) {
    log_warn("%s", warn);
    progress(c, "netpol", "%s", warn);
  } else if (c->np.summary[0]) {
    progress(c, "netpol", "namespace %s has NetworkPolicies; will create: %s", c->ns,
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
      progress(c, "disruption-budget", "poddisruptionbudget %s (%s): at least 1 of the %d agent "
               "pods stays through drains and evictions", c->nm.agent, apis[i], AGENT_REPLICAS);
      return 0;
    }
    if (e.status != 404) break; /* 404: no such API version here, try the older one */
  }
  if (e.status == 403) {
    log_warn("%s", e.msg);
    progress(c, "disruption-budget", "no poddisruptionbudget for the agent: not allowed to "
             "create one in namespace %s (deploy/rbac/developer-role.yaml has the rule); a drain "
             "may then evict both agent pods at once", c->ns);
    return 0;
  }
  fail_kube(c, &e);
  return -1;
}

static int create_agent(struct conn *c) {
  char err[1200];
  struct tls_pem agent = {NULL, NULL};
  char *agent_ca = NULL, noid[8];
  int denied;
  if (certreq_obtain(c->k, c->ns, c->svc, TLS_AGENT_NAME, 1, 0, 60, &agent, &agent_ca, noid,
                     sizeof noid, &denied, err, sizeof err) < 0) {
    fail(c, "the agent's certificate: %s", err);
    return -1;
  }
  if (strcmp(agent_ca, c->ca.cert) != 0) { /* one signer, one CA per Service */
    free(agent_ca);
    tls_pem_clear(&agent);
    fail(c, "the agent's certificate and yours come from different CAs; try again");
    return -1;
  }
  free(agent_ca);
  progress(c, "create-agent", "creating the agent: deployment %s (image %s)", c->nm.agent,
           c->image);
  if (takeover_new_id(c->takeover_id, sizeof c->takeover_id) < 0) {
    tls_pem_clear(&agent);
    fail(c, "no random bytes for the takeover id: %s", strerror(errno));
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
      fail(c, "another kbridge connect is taking over %s/%s at this moment (deployment %s was "
           "just created by it); try again in a few seconds to join it", c->ns, c->svc,
           c->nm.agent);
    else
      fail(c, "%s", de.msg);
    tls_pem_clear(&agent);
    return -1;
  }
  c->created = 1;
  char uid[100];
  snprintf(uid, sizeof uid, "%s", jstr(dep, "metadata.uid") ? jstr(dep, "metadata.uid") : "");
  cJSON_Delete(dep);

  cJSON *sec = simple_object(c, "v1", "Secret", c->nm.secret, uid);
  cJSON_AddStringToObject(sec, "type", "Opaque");
  cJSON *sd = cJSON_AddObjectToObject(sec, "stringData");
  cJSON_AddStringToObject(sd, "ca.crt", c->ca.cert);
  cJSON_AddStringToObject(sd, "agent.crt", agent.cert);
  cJSON_AddStringToObject(sd, "agent.key", agent.key);
  tls_pem_clear(&agent);
  if (create(c, "v1", "serviceaccounts",
             simple_object(c, "v1", "ServiceAccount", c->nm.agent, uid), NULL) < 0 ||
      create(c, "rbac.authorization.k8s.io/v1", "roles", agent_role(c, uid), NULL) < 0 ||
      create(c, "rbac.authorization.k8s.io/v1", "rolebindings", agent_rolebinding(c, uid), NULL) < 0 ||
      create(c, "v1", "secrets", sec, NULL) < 0)
    return -1;
  if (cJSON_GetArraySize(c->np.objs) > 0) {
    struct kube_err ne;
    if (netpol_create(c->k, c->ns, c->nm.agent, uid, &c->np, &ne) < 0) {
      fail_kube(c, &ne);
      return -1;
    }
    progress(c, "netpol", "%s", c->np.summary);
  }
  if (!c->cfg->replace) {
    if (create(c, "v1", "services", shadow_service(c, uid), NULL) < 0) return -1;
    progress(c, "shadow-service", "shadow service %s selects the original pods (%s)",
             c->nm.origin, selector_string(c->orig_selector));
  }
  if (create_pdb(c, uid) < 0) return -1;
  struct kube_ref r = {"apps/v1", "deployments", c->ns, c->nm.agent, NULL};
  struct kube_err e;
  char scale[64];
  snprintf(scale, sizeof scale, "{\"spec\":{\"replicas\":%d}}", AGENT_REPLICAS);
  if (kube_patch(c->k, &r, KUBE_PATCH_MERGE, scale, NULL, &e) < 0) {
    fail_kube(c, &e);
    return -1;
  }
  progress(c, "wait-agent", "waiting for the agent pod to be ready (up to %d s)", c->cfg->timeout);
  return 0;
}

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
             sel ? selector_string(sel) : "none");
    return -1;
  }
  cJSON *md = cJSON_GetObjectItemCaseSensitive(obj, "metadata");
  cJSON *ann = cJSON_GetObjectItemCaseSensitive(md, "annotations");
  if (!ann) ann = cJSON_AddObjectToObject(md, "annotations");
  char *orig = cJSON_PrintUnformatted(sel);
  char agent_sel[200], since[40], tk[1200];
  snprintf(agent_sel, sizeof agent_sel, "{\"%s\":\"%s\"}", TAKEOVER_LABEL_AGENT, c->svc);
  iso_now(since, sizeof since);
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

/* --pause-gitops when joining a takeover: only while it is one. */
static int pause_mutate(cJSON *obj, void *arg, char *err, size_t errlen) {
  struct conn *c = arg;
  (void)err;
  (void)errlen;
  if (!takeover_annotation(obj, TAKEOVER_ANN_TAKEOVER)) return 1;
  c->paused = takeover_gitops_pause(obj);
  return c->paused ? 0 : 1;
}

static void pause_report(struct conn *c) {
  if (!c->cfg->pause_gitops) return;
  if (c->paused)
    progress(c, "pause-gitops", "service %s/%s: %s=disabled while taken over (removed on "
             "restore)", c->ns, c->svc, TAKEOVER_FLUX_RECONCILE);
  else
    progress(c, "pause-gitops", "service %s/%s already carries %s; left as it is", c->ns,
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

/* After the switch: wait until the Service's Endpoints show only the agent
 * (bounded; never fails, says what happened), then kube-proxy's allowance, so
 * that a request sent right after `ready` with the route key reaches the
 * developer and not the real pods. Found on the test cluster's real node,
 * where kube-proxy follows the Endpoints in its own time. */
static void wait_taken(struct conn *c) {
  struct kube_ref r = {"v1", "endpoints", c->ns, c->svc, NULL};
  double t0 = now_s();
  int agent = 0, other = 0;
  for (;;) {
    struct kube_err e;
    cJSON *ep = NULL;
    if (kube_get(c->k, &r, &ep, &e) < 0) {
      progress(c, "endpoints", "endpoints %s/%s: not waited for (%s)", c->ns, c->svc,
               e.status == 403 ? "no right to read them; re-apply deploy/rbac/developer-role.yaml"
                               : e.msg);
      return;
    }
    int ok = takeover_endpoints_taken(ep, c->svc, &agent, &other);
    cJSON_Delete(ep);
    if (ok) {
      progress(c, "endpoints", "endpoints %s/%s: the agent only after %.1f s; %.1f s more for "
               "kube-proxy", c->ns, c->svc, now_s() - t0, TAKEOVER_PROXY_GRACE_TAKE_MS / 1000.0);
      usleep(TAKEOVER_PROXY_GRACE_TAKE_MS * 1000);
      return;
    }
    if (now_s() - t0 >= TAKEOVER_ENDPOINTS_WAIT_S) {
      progress(c, "endpoints", "endpoints %s/%s: still %d other address%s and %d ready agent "
               "address%s after %d s; going on (routed requests may reach the real pods until "
               "they follow)", c->ns, c->svc, other, other == 1 ? "" : "es", agent,
               agent == 1 ? "" : "es", TAKEOVER_ENDPOINTS_WAIT_S);
      return;
    }
    usleep(200 * 1000);
  }
}

static int switch_service(struct conn *c) {
  struct kube_ref r = {"v1", "services", c->ns, c->svc, NULL};
  struct kube_err e;
  struct switch_arg sa = {c, c->orig_selector, ""};
  if (kube_update_retry(c->k, &r, switch_mutate, &sa, NULL, &e) < 0) {
    fail_kube(c, &e);
    return -1;
  }
  progress(c, "switch-selector", "service %s/%s now selects the agent (was %s)", c->ns, c->svc,
           selector_string(c->orig_selector));
  if (sa.policy[0])
    progress(c, "traffic-policy", "service %s/%s: %s set from Local to Cluster while taken over "
             "(the agent's two pods serve the clients of every node; with Local those on "
             "other nodes would lose the Service); put back at restore", c->ns, c->svc, sa.policy);
  pause_report(c);
  if (c->cfg->replace) {
    const char *res = takeover_workload_resource(c->wl_kind);
    if (res == NULL) {
      progress(c, "scale-workload", "%s %s cannot be scaled; its pods keep running but get no "
               "traffic", c->wl_kind, c->wl_name);
      return 0;
    }
    struct kube_ref w = {"apps/v1", res, c->ns, c->wl_name, NULL};
    struct scale_arg sc = {0};
    if (kube_update_retry(c->k, &w, scale_mutate, &sc, NULL, &e) < 0) {
      fail_kube(c, &e);
      return -1;
    }
    progress(c, "scale-workload", "%s %s scaled from %ld to 0 replicas", c->wl_kind, c->wl_name,
             sc.was);
  }
  return 0;
}

/* ---- --ingress: clones of the Service's Ingresses for our key ---- */

/* The browser URL of a cloned rule: https if the clone lists the host under
 * tls, the path of the first path that goes to our Service. */
static void clone_urls(struct conn *c, const cJSON *clone) {
  const cJSON *rule, *p, *t, *h;
  cJSON_ArrayForEach(rule, jget(clone, "spec.rules")) {
    const char *host = jstr(rule, "host"), *path = NULL;
    if (!host) continue;
    cJSON_ArrayForEach(p, jget(rule, "http.paths")) {
      const char *n = jstr(p, "backend.service.name");
      if (n && strcmp(n, c->svc) == 0) {
        path = jstr(p, "path");
        break;
      }
    }
    if (!path) continue; /* a host of the Ingress that goes elsewhere */
    int tls = 0;
    cJSON_ArrayForEach(t, jget(clone, "spec.tls")) {
      cJSON_ArrayForEach(h, cJSON_GetObjectItemCaseSensitive(t, "hosts")) {
        if (cJSON_GetStringValue(h) && strcmp(h->valuestring, host) == 0) tls = 1;
      }
    }
    char u[600];
    snprintf(u, sizeof u, "%s://%s%s", tls ? "https" : "http", host, path[0] == '/' ? path : "/");
    cJSON_AddItemToArray(c->ingress_urls, cJSON_CreateString(u));
  }
}

/* Clone every Ingress of the namespace that routes to the Service (see
 * takeover_ingress_clone), owned by the agent's Deployment. Clones of our key
 * left by an earlier session are replaced. 0, or -1 (reported). */
static int clone_ingresses(struct conn *c) {
  struct kube_err e;
  struct takeover_report rep;
  char err[1200];
  memset(&rep, 0, sizeof rep);
  c->ingress_urls = cJSON_CreateArray();
  struct kube_ref dr = {"apps/v1", "deployments", c->ns, c->nm.agent, NULL};
  cJSON *d = NULL;
  if (kube_get(c->k, &dr, &d, &e) < 0) {
    fail(c, "--ingress: %s", e.msg);
    return -1;
  }
  char uid[100];
  snprintf(uid, sizeof uid, "%s", jstr(d, "metadata.uid") ? jstr(d, "metadata.uid") : "");
  cJSON_Delete(d);
  c->cloned = 1;
  if (takeover_remove_ingress_clones(c->k, c->ns, c->svc, c->cfg->key, &rep, err, sizeof err) < 0) {
    fail(c, "--ingress: %s", err);
    return -1;
  }
  if (rep.text[0]) progress(c, "ingress", "clones left by an earlier session: %s", rep.text);
  struct kube_ref r = {"networking.k8s.io/v1", "ingresses", c->ns, NULL, NULL};
  cJSON *list = NULL;
  if (kube_list(c->k, &r, NULL, &list, &e) < 0) {
    fail(c, "--ingress: %s", e.msg);
    return -1;
  }
  int made = 0, rc = 0;
  const cJSON *ing;
  cJSON_ArrayForEach(ing, jget(list, "items")) {
    cJSON *clone = takeover_ingress_clone(ing, c->svc, c->cfg->key, err, sizeof err);
    if (!clone) {
      if (err[0]) progress(c, "ingress", "%s", err);
      continue;
    }
    cJSON_AddItemToObject(jget(clone, "metadata"), "ownerReferences", owner_ref(c->nm.agent, uid));
    cJSON *out = NULL;
    if (kube_create(c->k, &r, clone, &out, &e) < 0) {
      fail(c, "--ingress: %s%s", e.msg,
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
    progress(c, "ingress", "ingress %s/%s cloned as %s: %s", c->ns, jstr(ing, "metadata.name"),
             jstr(clone, "metadata.name"), hosts[0] ? hosts : "(no host routes to the service)");
    made++;
    cJSON_Delete(out);
    cJSON_Delete(clone);
  }
  cJSON_Delete(list);
  if (rc == 0 && made == 0)
    progress(c, "ingress", "--ingress: no Ingress in namespace %s routes to service %s (with a "
             "host): nothing cloned", c->ns, c->svc);
  return rc;
}

/* Remove the clones of our key (leaving, or a failed connect). */
static void unclone_ingresses(struct conn *c) {
  struct takeover_report rep;
  char err[1200];
  if (!c->cloned) return;
  memset(&rep, 0, sizeof rep);
  if (takeover_remove_ingress_clones(c->k, c->ns, c->svc, c->cfg->key, &rep, err, sizeof err) < 0)
    fail(c, "removing your ingress clones: %s (they go when the takeover ends: `kbridge restore "
         "-n %s --service %s`)", err, c->ns, c->svc);
  else if (rep.text[0])
    progress(c, "ingress-removed", "%s", rep.text);
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
  const char *host = jstr(v, "host");
  const cJSON *pid = jget(v, "pid");
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
    iso_now(since, sizeof since);
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

/* Is our key held by another session? The agent knows who is connected now
 * (/healthz); if it cannot be asked, a live route annotation of another
 * session counts. Returns 0 (free) or -1 (reported). */
static int key_held(struct conn *c) {
  char err[800], ann[120], host[128] = "";
  cJSON *h = NULL;
  snprintf(ann, sizeof ann, "kbridge.dev/route-%s", c->cfg->key);
  const char *v = takeover_annotation(c->service, ann);
  cJSON *vj = v ? cJSON_Parse(v) : NULL;
  char who[400];
  snprintf(who, sizeof who, "%s%s%s", jstr(vj, "by") ? jstr(vj, "by") : "someone",
           jstr(vj, "since") ? " since " : "", jstr(vj, "since") ? jstr(vj, "since") : "");
  int held = 0;
  if (jstr(vj, "identity")) /* the identity its certificate names, when recorded */
    snprintf(who, sizeof who, "%s%s%s", jstr(vj, "identity"), jstr(vj, "since") ? " since " : "",
             jstr(vj, "since") ? jstr(vj, "since") : "");
  if (agent_healthz(c->k, c->ns, c->svc, &h, err, sizeof err) == 0) {
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(jget(h, "keys"), c->cfg->key);
    held = cJSON_IsNumber(n) && n->valueint > 0;
    const char *id = cJSON_GetStringValue(
        cJSON_GetObjectItemCaseSensitive(jget(h, "identities"), c->cfg->key));
    if (held && id && *id) snprintf(who, sizeof who, "%s", id); /* the agent knows best */
  } else {
    log_warn("cannot ask the agent who is connected (%s); going by the annotations", err);
    gethostname(host, sizeof host - 1);
    held = v && route_live(v, host);
  }
  cJSON_Delete(h);
  cJSON_Delete(vj);
  if (held && c->cfg->force) {
    progress(c, "force", "route key \"%s\" is held on %s/%s by %s: --force takes it over",
             c->cfg->key, c->ns, c->svc, who);
    held = 0;
  }
  if (held) {
    c->reason = "route_held";
    fail(c, "route key \"%s\" is already held on %s/%s by %s; choose another --route-as (or "
         "take it over with --force, which is logged)", c->cfg->key, c->ns, c->svc, who);
    return -1;
  }
  return 0;
}

/* How many other developers hold a lease on the agent now (-1 if it cannot be
 * asked): those with tunnels, and those whose tunnels were lost less than a
 * lease ago, whose CLI may be reconnecting (a Wi-Fi drop, a laptop lid): the
 * agent keeps their route and restores by itself when the lease ends, so
 * leaving the takeover to it is right, and restoring now would end their
 * session under them. But only while their route annotation is still on the
 * Service (set_route read them just before): a developer who left on purpose
 * removed theirs, and the agent cannot always tell a leave from a loss (the
 * GOAWAY of a closing tunnel can be lost in the port-forward). names gets "bob,
 * carol (tunnel lost 12 s ago, lease ends in 48 s)". An agent older than the
 * "leases" member: the keys with tunnels. */
static int agent_other_keys(struct conn *c, char *names, size_t len) {
  char err[800];
  cJSON *h = NULL;
  names[0] = '\0';
  if (agent_healthz(c->k, c->ns, c->svc, &h, err, sizeof err) < 0) {
    log_info("cannot ask the agent who is connected: %s", err);
    return -1;
  }
  const cJSON *leases = jget(h, "leases");
  const cJSON *list = leases ? leases : jget(h, "keys");
  int n = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, list) {
    const cJSON *tn = leases ? cJSON_GetObjectItemCaseSensitive(it, "tunnels") : it;
    int tunnels = cJSON_IsNumber(tn) ? tn->valueint : 0;
    /* our own key counts when another identity holds it now (--force) */
    const char *id = cJSON_GetStringValue(
        cJSON_GetObjectItemCaseSensitive(jget(h, "identities"), it->string));
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

static int set_route(struct conn *c, int add, int *others) {
  struct kube_ref r = {"v1", "services", c->ns, c->svc, NULL};
  struct kube_err e;
  struct route_arg ra = {c, add, 0, ""};
  if (kube_update_retry(c->k, &r, route_mutate, &ra, NULL, &e) < 0) {
    if (e.status == 404 && !add) {
      *others = 0;
      return 0;
    }
    fail_kube(c, &e);
    return -1;
  }
  *others = ra.others;
  snprintf(c->holders, sizeof c->holders, "%s", ra.holders);
  return 0;
}

/* ---- env of the original container ---- */

static char *lookup_ref(struct conn *c, const char *res, const char *name, const char *key,
                        int *missing) {
  struct kube_ref r = {"v1", res, c->ns, name, NULL};
  struct kube_err e;
  cJSON *o = NULL;
  *missing = 0;
  if (kube_get(c->k, &r, &o, &e) < 0) {
    *missing = 1;
    log_warn("env: %s", e.msg);
    return NULL;
  }
  const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(jget(o, "data"), key));
  char *out = NULL;
  if (v) out = strcmp(res, "secrets") == 0 ? b64dec(v, NULL) : strdup(v);
  else *missing = 1;
  cJSON_Delete(o);
  return out;
}

/* env object {NAME: VALUE} of the workload's first container. */
static cJSON *resolve_env(struct conn *c) {
  cJSON *env = cJSON_CreateObject();
  const cJSON *ctr = cJSON_GetArrayItem(jget(c->pod_template, "containers"), 0);
  if (!ctr) return env;
  const cJSON *ef;
  cJSON_ArrayForEach(ef, cJSON_GetObjectItemCaseSensitive(ctr, "envFrom")) {
    const char *prefix = jstr(ef, "prefix") ? jstr(ef, "prefix") : "";
    int secret = jget(ef, "secretRef") != NULL;
    const char *name = jstr(ef, secret ? "secretRef.name" : "configMapRef.name");
    if (!name) continue;
    struct kube_ref r = {"v1", secret ? "secrets" : "configmaps", c->ns, name, NULL};
    struct kube_err e;
    cJSON *o = NULL;
    if (kube_get(c->k, &r, &o, &e) < 0) {
      log_warn("env: %s", e.msg);
      continue;
    }
    const cJSON *kv;
    cJSON_ArrayForEach(kv, jget(o, "data")) {
      char n[300];
      snprintf(n, sizeof n, "%s%s", prefix, kv->string);
      char *v = secret ? b64dec(kv->valuestring, NULL) : strdup(kv->valuestring);
      cJSON_DeleteItemFromObjectCaseSensitive(env, n);
      cJSON_AddStringToObject(env, n, v ? v : "");
      free(v);
    }
    cJSON_Delete(o);
  }
  const cJSON *ev;
  cJSON_ArrayForEach(ev, cJSON_GetObjectItemCaseSensitive(ctr, "env")) {
    const char *name = jstr(ev, "name");
    if (!name) continue;
    char *val = NULL;
    int missing = 0;
    if (jstr(ev, "value")) {
      val = strdup(jstr(ev, "value"));
    } else if (jget(ev, "valueFrom.configMapKeyRef")) {
      val = lookup_ref(c, "configmaps", jstr(ev, "valueFrom.configMapKeyRef.name"),
                       jstr(ev, "valueFrom.configMapKeyRef.key"), &missing);
    } else if (jget(ev, "valueFrom.secretKeyRef")) {
      val = lookup_ref(c, "secrets", jstr(ev, "valueFrom.secretKeyRef.name"),
                       jstr(ev, "valueFrom.secretKeyRef.key"), &missing);
    } else if (jstr(ev, "valueFrom.fieldRef.fieldPath")) {
      const char *fp = jstr(ev, "valueFrom.fieldRef.fieldPath");
      if (strcmp(fp, "metadata.namespace") == 0) val = strdup(c->ns);
      else if (strcmp(fp, "metadata.name") == 0) val = strdup("kbridge-local");
      else missing = 1;
    } else {
      missing = 1;
    }
    if (val) {
      cJSON_DeleteItemFromObjectCaseSensitive(env, name);
      cJSON_AddStringToObject(env, name, val);
      free(val);
    } else if (missing) {
      log_info("env %s: not resolved locally", name);
    }
  }
  return env;
}

/* ---- --forward: service links pointing at the forwards ---- */

/* The Service of our namespace that a forward target names ("store",
 * "store.shop", "store.shop.svc", "store.shop.svc.cluster.local") into svc;
 * 0, or -1 for any other host (another namespace, an IP, an outside name). */
static int forward_service(const struct conn *c, const char *host, char *svc, size_t len) {
  const char *dot = strchr(host, '.');
  size_t n = dot ? (size_t)(dot - host) : strlen(host);
  if (n == 0 || n >= len || !dns_label_valid(host, n)) return -1;
  if (dot) {
    const char *rest = dot + 1;
    size_t nl = strlen(c->ns);
    if (strncmp(rest, c->ns, nl) != 0) return -1;
    rest += nl;
    if (*rest != '\0' && strcmp(rest, ".svc") != 0 && strncmp(rest, ".svc.", 5) != 0) return -1;
  }
  memcpy(svc, host, n);
  svc[n] = '\0';
  return 0;
}

/* NAME for the link variables of a Service or port name: upper case, '-' -> '_'. */
static void link_name(const char *in, char *out, size_t len) {
  size_t i = 0;
  for (; in[i] && i + 1 < len; i++)
    out[i] = in[i] == '-' ? '_' : (in[i] >= 'a' && in[i] <= 'z') ? (char)(in[i] - 'a' + 'A') : in[i];
  out[i] = '\0';
}

static void env_default(cJSON *env, const char *name, const char *value) {
  /* As in the pod: a variable the container sets itself wins over a link. */
  if (!cJSON_GetObjectItemCaseSensitive(env, name)) cJSON_AddStringToObject(env, name, value);
}

/* For every forward whose target is a Service port of our namespace, the
 * service link variables Kubernetes gives the original container
 * (STORE_SERVICE_HOST, STORE_SERVICE_PORT[_NAME], STORE_PORT,
 * STORE_PORT_8080_TCP[_PROTO|_PORT|_ADDR]) with the forward's local address
 * instead of the cluster IP, so a process that finds its peers through them
 * reaches them through the tunnel. Only forwarded ports get variables (the
 * cluster IPs of the others cannot be reached from here), and none when the
 * pod spec turns service links off. */
static void forward_service_links(struct conn *c, cJSON *env) {
  const cJSON *esl = jget(c->pod_template, "enableServiceLinks");
  if (cJSON_IsFalse(esl)) return;
  for (size_t i = 0; i < c->cfg->forwards.n; i++) {
    const struct opt_forward *f = &c->cfg->forwards.v[i];
    char svc[64], err[200];
    struct hostport local;
    if (forward_service(c, f->target.host, svc, sizeof svc) < 0 || !c->fwd_bound[i][0] ||
        addr_parse(c->fwd_bound[i], 0, &local, err, sizeof err) < 0)
      continue;
    if (strcmp(local.host, "0.0.0.0") == 0) snprintf(local.host, sizeof local.host, "127.0.0.1");
    if (strcmp(local.host, "::") == 0) snprintf(local.host, sizeof local.host, "::1");
    struct kube_ref r = {"v1", "services", c->ns, svc, NULL};
    struct kube_err e;
    cJSON *s = NULL;
    if (kube_get(c->k, &r, &s, &e) < 0) {
      log_info("--forward to %s: no service links (%s)", f->target.host, e.msg);
      continue;
    }
    const cJSON *p, *ports = jget(s, "spec.ports");
    int first = 1, found = 0;
    char sn[80], pn[80], name[300], val[400], lp[8], la[300];
    link_name(svc, sn, sizeof sn);
    snprintf(lp, sizeof lp, "%u", (unsigned)local.port);
    struct hostport lhp = local;
    addr_format(&lhp, la, sizeof la); /* brackets around an IPv6 host */
    cJSON_ArrayForEach(p, ports) {
      const cJSON *port = cJSON_GetObjectItemCaseSensitive(p, "port");
      const char *proto = jstr(p, "protocol") ? jstr(p, "protocol") : "TCP";
      if (cJSON_IsNumber(port) && port->valueint == f->target.port && strcmp(proto, "TCP") == 0) {
        found = 1;
        snprintf(name, sizeof name, "%s_SERVICE_HOST", sn);
        env_default(env, name, local.host);
        if (first) {
          snprintf(name, sizeof name, "%s_SERVICE_PORT", sn);
          env_default(env, name, lp);
          snprintf(name, sizeof name, "%s_PORT", sn);
          snprintf(val, sizeof val, "tcp://%s", la);
          env_default(env, name, val);
        }
        if (jstr(p, "name") && *jstr(p, "name")) {
          link_name(jstr(p, "name"), pn, sizeof pn);
          snprintf(name, sizeof name, "%s_SERVICE_PORT_%s", sn, pn);
          env_default(env, name, lp);
        }
        snprintf(name, sizeof name, "%s_PORT_%d_TCP", sn, port->valueint);
        snprintf(val, sizeof val, "tcp://%s", la);
        env_default(env, name, val);
        snprintf(name, sizeof name, "%s_PORT_%d_TCP_PROTO", sn, port->valueint);
        env_default(env, name, "tcp");
        snprintf(name, sizeof name, "%s_PORT_%d_TCP_PORT", sn, port->valueint);
        env_default(env, name, lp);
        snprintf(name, sizeof name, "%s_PORT_%d_TCP_ADDR", sn, port->valueint);
        env_default(env, name, local.host);
      }
      first = 0;
    }
    if (!found)
      log_info("--forward to %s:%u: service %s has no TCP port %u, no service links",
               f->target.host, (unsigned)f->target.port, svc, (unsigned)f->target.port);
    cJSON_Delete(s);
  }
}

static int write_env_file(struct conn *c, const cJSON *env) {
  /* Secrets go in there: created 0600, never readable by others for a moment. */
  int fd = open(c->cfg->env_file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
  if (!f) {
    fail(c, "--env-file %s: %s", c->cfg->env_file, strerror(errno));
    if (fd >= 0) close(fd);
    return -1;
  }
  fchmod(fd, 0600); /* an existing file keeps its mode with O_CREAT */
  const cJSON *kv;
  cJSON_ArrayForEach(kv, env) {
    fprintf(f, "%s=", kv->string);
    for (const char *p = kv->valuestring; *p; p++) {
      if (*p == '\n') fputs("\\n", f);
      else fputc(*p, f);
    }
    fputc('\n', f);
  }
  fclose(f);
  return 0;
}

/* ---- 4. tunnels (hooks for proxy.c) ---- */

struct pf_open {
  struct conn *c;
  struct pf_connecting *h;
  proxy_carrier_done done;
  void *slot;
};

static void pf_ready(struct bufferevent *carrier, const char *err, int status, void *arg) {
  struct pf_open *po = arg;
  struct conn *c = po->c;
  proxy_carrier_done done = po->done;
  void *slot = po->slot;
  free(po);
  if (!carrier) snprintf(c->tunnel_err, sizeof c->tunnel_err, "%s", err ? err : "?");
  done(carrier, err, slot);
  /* Not allowed to port-forward: retrying cannot help. */
  if (!carrier && (status == 401 || status == 403 || status == 407) && !c->ready_announced && c->px) {
    fail(c, "cannot open a tunnel: %s", err ? err : "forbidden");
    proxy_shutdown(c->px, 1);
  }
}

/* No tunnel registered within --timeout: give up (and restore). */
static void tunnel_timeout_cb(evutil_socket_t fd, short what, void *arg) {
  struct conn *c = arg;
  (void)fd;
  (void)what;
  if (c->ready_announced) return;
  fail(c, "no tunnel to the agent came up within %d s%s%s", c->cfg->timeout,
       c->tunnel_err[0] ? "; last error: " : "", c->tunnel_err);
  proxy_shutdown(c->px, 1);
}

static void agent_gone_cb(evutil_socket_t fd, short what, void *arg) {
  struct conn *c = arg;
  (void)fd;
  (void)what;
  fail(c, "the agent of %s/%s is gone: the takeover was ended elsewhere (kbridge restore, or "
       "the agent's lease)", c->ns, c->svc);
  proxy_shutdown(c->px, 1);
}

/* Can a tunnel go to this agent pod: running, its container started, not
 * being deleted? (Ready or about to be: a tunnel opened before the pod turns
 * ready is there for the first request the Service sends it.) */
static int pod_tunnelable(const cJSON *pod) {
  if (jget(pod, "metadata.deletionTimestamp")) return 0;
  const char *phase = jstr(pod, "status.phase");
  if (!phase || strcmp(phase, "Running") != 0) return 0;
  const cJSON *cs;
  int n = 0;
  cJSON_ArrayForEach(cs, jget(pod, "status.containerStatuses")) {
    if (!jget(cs, "state.running")) return 0;
    n++;
  }
  return n > 0;
}

/* How many tunnel slots are open (or opening) to pod. */
static int slots_on(const struct conn *c, const char *pod) {
  int n = 0;
  for (int i = 0; i < MAX_SLOTS; i++) n += c->slots[i].slot && !strcmp(c->slots[i].pod, pod);
  return n;
}

/* The agent pod that needs a tunnel most: the fewest of ours (below --tunnels),
 * ready ones first. NULL if every one has its share. */
static const cJSON *pod_wanting(const struct conn *c, const cJSON *list) {
  const cJSON *pod, *best = NULL;
  int best_n = 0, best_ready = 0;
  cJSON_ArrayForEach(pod, jget(list, "items")) {
    const char *name = jstr(pod, "metadata.name");
    if (!name || !pod_tunnelable(pod)) continue;
    int n = slots_on(c, name), ready = pod_ready(pod);
    if (n >= c->per_pod) continue;
    if (!best || n < best_n || (n == best_n && ready && !best_ready)) {
      best = pod;
      best_n = n;
      best_ready = ready;
    }
  }
  return best;
}

/* A tunnel slot opens: to the agent pod that needs one most (slots are
 * --tunnels per pod; spare slots stay idle until the re-sync guard sees a pod
 * that lacks its tunnels and kicks them). */
static void *hook_open(void *arg, struct event_base *base, proxy_carrier_done done, void *slot,
                       char *err, size_t errlen) {
  struct conn *c = arg;
  char pod[256], why[1200];
  cJSON *list = agent_pods(c, why, sizeof why);
  if (!list) {
    snprintf(err, errlen, "%s", why);
    return NULL;
  }
  const cJSON *want = pod_wanting(c, list);
  int any = 0;
  const cJSON *p;
  cJSON_ArrayForEach(p, jget(list, "items")) any |= pod_tunnelable(p);
  if (want) snprintf(pod, sizeof pod, "%s", jstr(want, "metadata.name"));
  cJSON_Delete(list);
  if (!want) {
    err[0] = '\0'; /* idle until the guard kicks it */
    if (any) return NULL;
    log_info("tunnel: no running agent pod of %s/%s (yet)", c->ns, c->svc);
    /* No pod: being replaced, or the takeover is over? */
    struct kube_ref dr = {"apps/v1", "deployments", c->ns, c->nm.agent, NULL};
    struct kube_err e;
    cJSON *d = NULL;
    if (kube_get(c->k, &dr, &d, &e) < 0 && e.status == 404 && !c->gone_reported) {
      struct timeval now = {0, 0};
      c->gone_reported = 1; /* shut down from the loop, not from inside proxy.c's call */
      event_base_once(base, -1, EV_TIMEOUT, agent_gone_cb, c, &now);
    }
    cJSON_Delete(d);
    return NULL;
  }
  int idx = -1;
  for (int i = 0; i < MAX_SLOTS && idx < 0; i++)
    if (c->slots[i].slot == slot) idx = i;
  for (int i = 0; i < MAX_SLOTS && idx < 0; i++)
    if (!c->slots[i].slot) idx = i;
  if (idx >= 0) {
    c->slots[idx].slot = slot;
    snprintf(c->slots[idx].pod, sizeof c->slots[idx].pod, "%s", pod);
  }
  const char *token = NULL, *cert = NULL, *key = NULL;
  if (kube_credentials(c->k, &token, &cert, &key, err, errlen) < 0) return NULL;
  struct pf_open *po = calloc(1, sizeof *po);
  if (!po) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  struct pf_target t;
  memset(&t, 0, sizeof t);
  t.server_url = kube_server_url(c->k);
  t.ssl_ctx = c->api_ssl;
  t.tls_server_name = kube_tls_name(c->k);
  t.proxy_url = kube_proxy(c->k);
  t.bearer_token = token;
  t.ns = c->ns;
  t.pod = pod;
  t.port = (uint16_t)c->tunnel_port;
  po->c = c;
  po->done = done;
  po->slot = slot;
  log_info("tunnel: port-forward to pod %s/%s port %d", c->ns, pod, c->tunnel_port);
  po->h = pf_connect(base, NULL, &t, pf_ready, po, err, errlen);
  if (!po->h) {
    free(po);
    return NULL;
  }
  return po;
}

/* A slot's tunnel registered; the agent's greeting names its pod ("pod
 * NAME"). With --agent-address this is how we learn which pod a tunnel
 * reached (through the port-forward hook_open chose it already). */
static void hook_registered(void *arg, void *slot, const char *message) {
  struct conn *c = arg;
  if (!message || strncmp(message, "pod ", 4) != 0) return;
  int idx = -1;
  for (int i = 0; i < MAX_SLOTS && idx < 0; i++)
    if (c->slots[i].slot == slot) idx = i;
  for (int i = 0; i < MAX_SLOTS && idx < 0; i++)
    if (!c->slots[i].slot) idx = i;
  if (idx < 0) return;
  c->slots[idx].slot = slot;
  snprintf(c->slots[idx].pod, sizeof c->slots[idx].pod, "%s", message + 4);
}

/* --agent-address: the address picks the agent pod of each tunnel. A ready
 * pod with fewer than --tunnels of ours gets one more by redialing a tunnel
 * of a pod that has more than its share (one per look, so the redials do not
 * pile up). */
static void direct_rebalance(struct conn *c, const cJSON *list) {
  const cJSON *p, *q;
  cJSON_ArrayForEach(p, jget(list, "items")) {
    const char *name = jstr(p, "metadata.name");
    if (!name || !pod_ready(p) || slots_on(c, name) >= c->per_pod) continue;
    for (int i = 0; i < MAX_SLOTS; i++) {
      if (!c->slots[i].slot || slots_on(c, c->slots[i].pod) <= c->per_pod) continue;
      int known = 0; /* a greeting that names no agent pod (not a pod's hostname) */
      cJSON_ArrayForEach(q, jget(list, "items")) {
        const char *n = jstr(q, "metadata.name");
        known |= n && !strcmp(n, c->slots[i].pod);
      }
      if (!known) continue;
      log_info("tunnel: agent pod %s has %d of our %d tunnels; redialing one of pod %s's", name,
               slots_on(c, name), c->per_pod, c->slots[i].pod);
      proxy_redial(c->px, c->slots[i].slot);
      return;
    }
  }
}

/* A slot's tunnel (or attempt) ended: it holds no agent pod any more. */
static void hook_released(void *arg, void *slot) {
  struct conn *c = arg;
  for (int i = 0; i < MAX_SLOTS; i++)
    if (c->slots[i].slot == slot) {
      c->slots[i].slot = NULL;
      c->slots[i].pod[0] = '\0';
    }
}

static void hook_cancel(void *arg, void *handle) {
  struct pf_open *po = handle;
  (void)arg;
  pf_connect_cancel(po->h);
  free(po);
}

static const char *hook_carrier_error(void *arg, struct bufferevent *carrier) {
  (void)arg;
  return carrier ? pf_carrier_error(carrier) : NULL;
}

static void sigchld_cb(evutil_socket_t fd, short what, void *arg) {
  struct conn *c = arg;
  int st;
  (void)fd;
  (void)what;
  if (c->child > 0 && waitpid(c->child, &st, WNOHANG) == c->child) {
    c->child = -1;
    c->child_status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    progress(c, "command-exited", "the command exited with status %d", c->child_status);
    proxy_shutdown(c->px, 0);
  }
}

/* ---- the re-sync guard ---- */

struct guard_arg {
  const cJSON *mine, *orig;
  int retake;                /* 1: set the agent selector when the original is there */
  enum takeover_sel found;   /* what was there */
  char now[512];             /* the selector written or left */
};

/* Repair (retake 0) or re-establish (retake 1) the takeover's selector. A
 * merged selector loses our keys; the original gets the agent selector back
 * only when retake is set; anything else is someone else's and stays. */
static int guard_mutate(cJSON *obj, void *arg, char *err, size_t errlen) {
  struct guard_arg *ga = arg;
  (void)err;
  (void)errlen;
  cJSON *spec = cJSON_GetObjectItemCaseSensitive(obj, "spec");
  cJSON *sel = cJSON_GetObjectItemCaseSensitive(spec, "selector");
  ga->found = takeover_selector_state(sel, ga->mine, ga->orig);
  cJSON *next = NULL;
  if (ga->found == TAKEOVER_SEL_MERGED) next = takeover_selector_unmerge(sel, ga->mine);
  else if (ga->found == TAKEOVER_SEL_ORIGINAL && ga->retake) next = cJSON_Duplicate(ga->mine, 1);
  char *p = cJSON_PrintUnformatted(next ? next : sel);
  snprintf(ga->now, sizeof ga->now, "%s", p ? p : "none");
  free(p);
  if (!next) return 1;
  if (sel) cJSON_ReplaceItemInObjectCaseSensitive(spec, "selector", next);
  else cJSON_AddItemToObject(spec, "selector", next);
  if (ga->retake) takeover_policy_cluster(obj, NULL, 0); /* a re-apply may have set Local */
  return 0;
}

/* Taken over, but a traffic policy is Local again (a re-apply or a patch):
 * Cluster again, the annotation keeps the original. Returns 1 when changed. */
static int policy_mutate(cJSON *obj, void *arg, char *err, size_t errlen) {
  (void)err;
  (void)errlen;
  return takeover_policy_cluster(obj, arg, 100) ? 0 : 1;
}

static void guard_policy(struct conn *c, const cJSON *svc) {
  const char *ip = jstr(svc, "spec.internalTrafficPolicy");
  const char *ep = jstr(svc, "spec.externalTrafficPolicy");
  if (!(ip && strcmp(ip, "Local") == 0) && !(ep && strcmp(ep, "Local") == 0)) return;
  struct kube_ref r = {"v1", "services", c->ns, c->svc, NULL};
  struct kube_err e;
  char what[100] = "";
  if (kube_update_retry(c->k, &r, policy_mutate, what, NULL, &e) < 0) {
    log_warn("re-sync guard: cannot set the traffic policy to Cluster again: %s", e.msg);
    return;
  }
  if (what[0])
    progress(c, "traffic-policy", "service %s/%s: %s became Local while taken over (a re-apply?); "
             "set to Cluster again, put back at restore", c->ns, c->svc, what);
}

/* End the session with an error event of reason service_changed. */
static void guard_end(struct conn *c, const char *msg) {
  c->reason = "service_changed";
  fail(c, "%s", msg);
  proxy_shutdown(c->px, 1);
}

/* Every GUARD_PERIOD_MS, the agent's pods: a running pod without its
 * --tunnels tunnels of ours gets them (idle slots kicked), so that each agent
 * pod can route our key; no ready pod for AGENT_LOST_S (the pods cannot come
 * back: unschedulable, image gone) ends the session, which restores the
 * Service (c->agent_lost). Returns 1 when the session is ending. */
static int guard_agents(struct conn *c) {
  char why[1200];
  cJSON *list = agent_pods(c, why, sizeof why);
  if (!list) {
    log_debug("re-sync guard: agent pods: %s", why);
    return 0;
  }
  const cJSON *p;
  int ready = 0;
  cJSON_ArrayForEach(p, jget(list, "items")) ready += pod_ready(p);
  double t = now_s();
  if (ready) c->agent_seen = t;
  if (!c->cfg->agent_address.port && pod_wanting(c, list)) proxy_kick(c->px);
  if (c->cfg->agent_address.port) direct_rebalance(c, list);
  cJSON_Delete(list);
  if (ready || t - c->agent_seen < AGENT_LOST_S || c->gone_reported) return 0;
  c->agent_lost = 1;
  c->reason = "agent_lost";
  fail(c, "no agent pod of %s/%s has been ready for %.0f s (they cannot come back: see `kubectl "
       "describe pods -n %s -l %s=%s`); the Service goes back to its own pods and the session "
       "ends", c->ns, c->svc, t - c->agent_seen, c->ns, TAKEOVER_LABEL_AGENT, c->svc);
  proxy_shutdown(c->px, 1);
  return 1;
}

/* Every GUARD_PERIOD_MS: is the Service still taken over as we left it? A
 * blocking GET (one small object; the loop already makes blocking calls when
 * tunnels open), so a re-apply is seen within about a second. Then the agent
 * pods (guard_agents). */
static void guard_cb(evutil_socket_t fd, short what, void *arg) {
  struct conn *c = arg;
  (void)fd;
  (void)what;
  if (c->agent_lost || guard_agents(c)) return;
  struct kube_ref r = {"v1", "services", c->ns, c->svc, NULL};
  struct kube_err e;
  cJSON *svc = NULL;
  if (kube_get(c->k, &r, &svc, &e) < 0) {
    if (e.status == 404) {
      char m[300];
      snprintf(m, sizeof m, "service %s/%s was deleted while taken over; the session ends", c->ns,
               c->svc);
      guard_end(c, m);
      return;
    }
    log_debug("re-sync guard: %s", e.msg); /* the API server hiccuped: next tick */
    return;
  }
  const char *mine_s = takeover_annotation(svc, TAKEOVER_ANN_AGENT_SELECTOR);
  const char *orig_s = takeover_annotation(svc, TAKEOVER_ANN_ORIGINAL_SELECTOR);
  cJSON *mine = mine_s ? cJSON_Parse(mine_s) : NULL, *orig = orig_s ? cJSON_Parse(orig_s) : NULL;
  const cJSON *sel = jget(svc, "spec.selector");
  enum takeover_sel st = mine ? takeover_selector_state(sel, mine, orig) : TAKEOVER_SEL_AGENT;
  /* No annotations: the takeover was ended elsewhere (restore, lease); the
   * tunnels notice the agent going. */
  if (st == TAKEOVER_SEL_AGENT) {
    if (mine) guard_policy(c, svc);
    goto done;
  }
  char *cur = sel ? cJSON_PrintUnformatted(sel) : NULL;
  char seen[512];
  snprintf(seen, sizeof seen, "%s", cur ? cur : "none");
  free(cur);
  struct guard_arg ga = {mine, orig, 0, TAKEOVER_SEL_AGENT, ""};
  if (st == TAKEOVER_SEL_MERGED) {
    /* First the Service back to real pods, whatever happens next. */
    if (kube_update_retry(c->k, &r, guard_mutate, &ga, NULL, &e) < 0) {
      log_warn("re-sync guard: cannot repair the selector %s: %s", seen, e.msg);
      goto done;
    }
    progress(c, "selector-reverted", "service %s/%s: its selector became %s (a re-apply of its "
             "manifest merged it with kbridge's, matching no pod); set to %s", c->ns, c->svc,
             seen, ga.now);
    cJSON *now = cJSON_Parse(ga.now);
    st = takeover_selector_state(now, mine, orig);
    cJSON_Delete(now);
  } else if (strcmp(seen, c->guard_seen) != 0) {
    progress(c, "selector-reverted", "service %s/%s: its selector became %s", c->ns, c->svc, seen);
  }
  snprintf(c->guard_seen, sizeof c->guard_seen, "%s", seen);
  char m[1200];
  if (st != TAKEOVER_SEL_ORIGINAL) {
    snprintf(m, sizeof m, "service %s/%s: its selector was replaced with %s by someone else while "
             "taken over; theirs stands and the session ends", c->ns, c->svc,
             ga.now[0] ? ga.now : seen);
    guard_end(c, m);
    goto done;
  }
  /* The original selector is back: take over again, a bounded number of times. */
  double t = now_s();
  int recent = 0;
  for (int i = 0; i < c->nretakes; i++) recent += t - c->retakes[i] < GUARD_WINDOW_S;
  if (recent >= GUARD_RETAKES) {
    snprintf(m, sizeof m, "service %s/%s: its selector was reverted %d times in %.0f minutes (a "
             "GitOps controller, Helm or kubectl apply keeps re-applying its manifest: pause it "
             "for this Service, see \"On a real cluster\" in the user guide); the Service "
             "selects its own pods again and the session ends", c->ns, c->svc, GUARD_RETAKES + 1,
             GUARD_WINDOW_S / 60);
    guard_end(c, m);
    goto done;
  }
  ga.retake = 1;
  if (kube_update_retry(c->k, &r, guard_mutate, &ga, NULL, &e) < 0) {
    log_warn("re-sync guard: cannot take the Service over again: %s", e.msg);
    goto done;
  }
  if (c->nretakes == GUARD_RETAKES) {
    memmove(c->retakes, c->retakes + 1, sizeof c->retakes[0] * (GUARD_RETAKES - 1));
    c->nretakes--;
  }
  c->retakes[c->nretakes++] = t;
  c->guard_seen[0] = '\0';
  progress(c, "retake", "service %s/%s selects the agent again (%d of %d re-takeovers in %.0f "
           "minutes)", c->ns, c->svc, recent + 1, GUARD_RETAKES, GUARD_WINDOW_S / 60);
done:
  cJSON_Delete(mine);
  cJSON_Delete(orig);
  cJSON_Delete(svc);
}

static void hook_started(void *arg, struct proxy *px, struct event_base *base) {
  struct conn *c = arg;
  c->px = px;
  c->agent_seen = now_s();
  c->tunnel_timer = evtimer_new(base, tunnel_timeout_cb, c);
  if (c->tunnel_timer) {
    struct timeval tv = {c->cfg->timeout, 0};
    evtimer_add(c->tunnel_timer, &tv);
  }
  c->guard_timer = event_new(base, -1, EV_PERSIST, guard_cb, c);
  if (c->guard_timer) {
    struct timeval tv = {GUARD_PERIOD_MS / 1000, (GUARD_PERIOD_MS % 1000) * 1000};
    event_add(c->guard_timer, &tv);
  }
  if (c->cfg->cmd) {
    c->sigchld = evsignal_new(base, SIGCHLD, sigchld_cb, c);
    if (c->sigchld) event_add(c->sigchld, NULL);
  }
}

static void start_child(struct conn *c, const cJSON *env) {
  pid_t pid = fork();
  if (pid < 0) {
    fail(c, "cannot start %s: %s", c->cfg->cmd[0], strerror(errno));
    proxy_shutdown(c->px, 1);
    return;
  }
  if (pid == 0) {
    const cJSON *kv;
    cJSON_ArrayForEach(kv, env) setenv(kv->string, kv->valuestring, 1);
    setenv("KBRIDGE_ROUTE_KEY", c->cfg->key, 1);
    signal(SIGPIPE, SIG_DFL);
    /* The JSON event stream on stdout stays ours: the command's output goes
     * to stderr. */
    if (c->json) dup2(STDERR_FILENO, STDOUT_FILENO);
    /* Our sockets (tunnels, API server) must not live on in the command: a
     * command outliving a killed kbridge would keep the tunnels open and the
     * agent's lease would never run out. */
    close_range(3, ~0U, 0);
    execvp(c->cfg->cmd[0], c->cfg->cmd);
    fprintf(stderr, "kbridge: cannot run %s: %s\n", c->cfg->cmd[0], strerror(errno));
    _exit(127);
  }
  c->child = pid;
  progress(c, "command-started", "started %s (pid %ld)", c->cfg->cmd[0], (long)pid);
}

static void hook_forward_bound(void *arg, size_t index, const char *bound) {
  struct conn *c = arg;
  char target[300];
  if (index >= OPT_FORWARDS_MAX) return;
  snprintf(c->fwd_bound[index], sizeof c->fwd_bound[index], "%s", bound);
  progress(c, "forward", "forward %s -> %s (connections go out from the agent's pod)", bound,
           addr_format(&c->cfg->forwards.v[index].target, target, sizeof target));
}

/* The connection log: one "connection" event per cluster connection that
 * reached (or failed to reach) the local process. Text output logs only the
 * failures (on stderr, through proxy.c). */
static void hook_inbound(void *arg, const struct proxy_inbound *ev) {
  struct conn *c = arg;
  if (!c->json) return;
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "event", "connection");
  cJSON_AddStringToObject(o, "state", ev->what);
  cJSON_AddStringToObject(o, "peer", ev->peer);
  cJSON_AddNumberToObject(o, "port", ev->port);
  cJSON_AddNumberToObject(o, "local_port", c->cfg->local_port);
  if (ev->error) cJSON_AddStringToObject(o, "error", ev->error);
  if (strcmp(ev->what, "closed") == 0) {
    cJSON_AddNumberToObject(o, "bytes_in", (double)ev->bytes_in);
    cJSON_AddNumberToObject(o, "bytes_out", (double)ev->bytes_out);
    cJSON_AddNumberToObject(o, "seconds", ev->seconds);
  }
  cJSON_AddNumberToObject(o, "elapsed", now_s() - c->t0);
  emit_json(o);
}

static void hook_welcome(void *arg, int ok, const char *message) {
  struct conn *c = arg;
  if (!ok) {
    fail(c, "the agent refused route \"%s\": %s", c->cfg->key, message);
    return;
  }
  if (c->ready_announced) return;
  c->ready_announced = 1;
  double dt = now_s() - c->t0;
  /* What a client in the cluster can use to reach you: the Service's own name
   * (<svc>.<ns>.svc resolves from every namespace through the pods' search
   * path, whatever the cluster domain) with your route header, or with a Host
   * whose first label is your key. No URL with your key in its host name: no
   * DNS record exists for alice.api.shop.svc.cluster.local; a name per
   * developer that resolves is what the --ingress clones give. */
  char host[300], hdr[120], hosthdr[200];
  snprintf(host, sizeof host, "%s.%s.svc", c->svc, c->ns);
  snprintf(hdr, sizeof hdr, "kubernetes-route-as: %s", c->cfg->key);
  snprintf(hosthdr, sizeof hosthdr, "Host: %s.%s", c->cfg->key, c->svc);
  cJSON *env = resolve_env(c);
  forward_service_links(c, env);
  cJSON *fwds = cJSON_CreateArray();
  for (size_t i = 0; i < c->cfg->forwards.n; i++) {
    char target[300];
    cJSON *f = cJSON_CreateObject();
    cJSON_AddStringToObject(f, "listen", c->fwd_bound[i]);
    cJSON_AddStringToObject(f, "target",
                            addr_format(&c->cfg->forwards.v[i].target, target, sizeof target));
    cJSON_AddItemToArray(fwds, f);
  }
  if (c->cfg->env_file && write_env_file(c, env) == 0)
    progress(c, "env-file", "environment of the original container written to %s",
             c->cfg->env_file);
  cJSON *urls = cJSON_CreateArray();
  for (int i = 0; i < c->nports; i++) {
    char u[600];
    snprintf(u, sizeof u, "http://%s:%d/", host, c->ports[i].port);
    cJSON_AddItemToArray(urls, cJSON_CreateString(u));
  }
  if (c->json) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "event", "ready");
    cJSON_AddStringToObject(o, "route", c->cfg->key);
    cJSON_AddStringToObject(o, "identity", c->identity);
    cJSON_AddStringToObject(o, "mode", c->cfg->replace ? "exclusive" : "routing");
    cJSON_AddItemToObject(o, "urls", cJSON_Duplicate(urls, 1));
    cJSON_AddStringToObject(o, "header", hdr);
    if (!c->cfg->replace) cJSON_AddStringToObject(o, "host_header", hosthdr);
    cJSON_AddNumberToObject(o, "local_port", c->cfg->local_port);
    cJSON_AddItemToObject(o, "forwards", cJSON_Duplicate(fwds, 1));
    if (c->ingress_urls) cJSON_AddItemToObject(o, "ingress_urls", cJSON_Duplicate(c->ingress_urls, 1));
    cJSON_AddItemToObject(o, "env", cJSON_Duplicate(env, 1));
    cJSON_AddNumberToObject(o, "seconds", dt);
    if (message && *message) cJSON_AddStringToObject(o, "agent", message);
    emit_json(o);
  } else {
    printf("ready in %.2f s: route %s -> %s:%d%s (certificate bound to %s)\n", dt, c->cfg->key,
           c->cfg->local_host, c->cfg->local_port,
           c->cfg->replace ? " (exclusive: all traffic)" : "",
           c->identity[0] ? c->identity : "no identity");
    if (!c->cfg->replace) {
      printf("  header:    curl -H '%s' http://%s:%d/\n", hdr, host, c->ports[0].port);
      printf("  host:      curl -H '%s' http://%s:%d/\n", hosthdr, host, c->ports[0].port);
    } else {
      printf("  service:   curl http://%s:%d/\n", host, c->ports[0].port);
    }
    const cJSON *f;
    cJSON_ArrayForEach(f, c->ingress_urls) printf("  ingress:   %s\n", f->valuestring);
    cJSON_ArrayForEach(f, fwds)
      printf("  forward:   %s -> %s (from inside the cluster)\n", jstr(f, "listen"),
             jstr(f, "target"));
    printf("  stop with Ctrl-C or: kbridge disconnect -n %s --service %s\n", c->ns, c->svc);
    fflush(stdout);
  }
  cJSON_Delete(urls);
  cJSON_Delete(fwds);
  if (c->cfg->cmd) start_child(c, env);
  cJSON_Delete(env);
}

/* Run the tunnels until the session ends (proxy.c's loop with our hooks);
 * then put the blocking setup's signal handler sa back and stop the command if
 * it still runs. The exit status: proxy_run()'s, or the command's when it
 * ended the session. */
static int serve(struct conn *c, const struct sigaction *sa) {
  struct connect_config *cfg = c->cfg;
  int rc;
  static const struct proxy_hooks hooks = {NULL,          hook_open,     hook_cancel,
                                           hook_carrier_error, hook_started, hook_welcome,
                                           hook_forward_bound, hook_inbound, hook_released,
                                           hook_registered};
  struct proxy_hooks h = hooks;
  h.arg = c;
  int direct = cfg->agent_address.port != 0;
  if (direct) { /* proxy.c dials TCP itself; only the events are ours */
    h.open = NULL;
    h.cancel = NULL;
    h.carrier_error = NULL;
  }
  struct proxy_config pc;
  char label[300];
  memset(&pc, 0, sizeof pc);
  snprintf(pc.key, sizeof pc.key, "%s", cfg->key);
  pc.local_port = cfg->local_port;
  pc.local_host = cfg->local_host;
  /* --tunnels to every agent pod: through the port-forward hook_open
   * chooses the pod; through --agent-address the address does, and the
   * guard redials tunnels until every ready pod has its share
   * (direct_rebalance). */
  c->per_pod = cfg->tunnels;
  pc.tunnels = cfg->tunnels * AGENT_SLOTS_PER_TUNNEL;
  if (pc.tunnels > MAX_SLOTS) pc.tunnels = MAX_SLOTS;
  pc.exclusive = cfg->replace;
  pc.force = cfg->force;
  pc.forwards = cfg->forwards;
  pc.log_level = cfg->log_level;
  pc.hooks = &h;
  pc.ssl_ctx = c->tun_ssl;
  if (direct) {
    char a[300];
    pc.agent = cfg->agent_address;
    snprintf(label, sizeof label, "%.63s/%.79s at %.120s", c->ns, c->nm.agent,
             addr_format(&cfg->agent_address, a, sizeof a));
  } else {
    snprintf(label, sizeof label, "%.63s/%.79s (port-forward)", c->ns, c->nm.agent);
  }
  pc.agent_label = label;
  rc = proxy_run(&pc);
  if (c->sigchld) event_free(c->sigchld);
  c->sigchld = NULL;
  if (c->tunnel_timer) event_free(c->tunnel_timer);
  c->tunnel_timer = NULL;
  if (c->guard_timer) event_free(c->guard_timer);
  c->guard_timer = NULL;
  sigaction(SIGINT, sa, NULL); /* libevent restored the defaults */
  sigaction(SIGTERM, sa, NULL);
  if (c->child > 0) { /* we are leaving before the command: stop it */
    kill(c->child, SIGTERM);
    int st;
    waitpid(c->child, &st, 0);
  } else if (cfg->cmd && c->child_status >= 0 && c->ready_announced) {
    rc = c->child_status;
  }
    return rc;
}

/* ---- 5. leave ---- */

/* Wait until the agent and everything the garbage collector removes after it
 * (ServiceAccount, Role, RoleBinding) are gone and its pods are gone or
 * terminating. A terminating agent pod is selected by nothing and stops on
 * SIGTERM; removing it is the kubelet's work, which on a real node takes seconds
 * (tens under load), so it is not waited for. 0, or -1 after seconds. */
static int wait_gone(struct conn *c, int seconds) {
  double deadline = now_s() + seconds;
  const struct kube_ref refs[] = {
      {"apps/v1", "deployments", c->ns, c->nm.agent, NULL},
      {"rbac.authorization.k8s.io/v1", "rolebindings", c->ns, c->nm.agent, NULL},
      {"rbac.authorization.k8s.io/v1", "roles", c->ns, c->nm.agent, NULL},
      {"v1", "serviceaccounts", c->ns, c->nm.agent, NULL},
  };
  for (;;) {
    int left = 0;
    struct kube_err e;
    for (size_t i = 0; i < sizeof refs / sizeof refs[0]; i++) {
      cJSON *d = NULL;
      if (kube_get(c->k, &refs[i], &d, &e) == 0) left++;
      else if (e.status != 404) return -1;
      cJSON_Delete(d);
    }
    char why[1100]; /* room for a kube_err message */
    cJSON *pods = agent_pods(c, why, sizeof why);
    if (!pods) return -1;
    const cJSON *pod;
    cJSON_ArrayForEach(pod, jget(pods, "items")) {
      if (!jget(jget(pod, "metadata"), "deletionTimestamp")) left++;
    }
    cJSON_Delete(pods);
    if (left == 0) return 0;
    if (now_s() > deadline) return -1;
    usleep(250 * 1000);
  }
}

static int undo(struct conn *c, const char *why) {
  struct takeover_report rep;
  char err[1200];
  progress(c, "undo", "undoing the takeover (%s)", why);
  if (takeover_restore(c->k, c->ns, c->svc, &rep, err, sizeof err) < 0) {
    fail(c, "restore failed: %s; run `kbridge restore -n %s --service %s`", err, c->ns, c->svc);
    return -1;
  }
  if (rep.text[0]) progress(c, "restored", "%s", rep.text);
  return 0;
}

/* 5. leave: GOAWAY is proxy.c's; here our route annotation goes, and the last
 * developer on the Service restores the cluster and waits until the agent is
 * gone. others: developers the Service's annotations still named. Returns rc,
 * or 1 when the restore this session owed did not finish. */
static int leave_session(struct conn *c, int rc, int others) {
  int last = 1;
  unclone_ingresses(c);
  if (c->routed) {
    if (set_route(c, 0, &others) < 0) others = 0;
    /* The agent knows best who is still there (annotations of sessions
     * that died elsewhere stay behind): every developer with a live lease,
     * tunnels up or not. */
    char names[600];
    int live = agent_other_keys(c, names, sizeof names);
    if (live >= 0) {
      others = live;
      snprintf(c->holders, sizeof c->holders, "%s", names);
    }
    if (c->agent_lost) others = 0; /* nobody can be served: give the Service back */
    if (others)
      progress(c, "others-remain", "other developers still hold the service: %s; the "
               "takeover stays", c->holders);
    last = others == 0;
  }
  int restored = 0;
  if (last) {
    progress(c, "restore", "last developer on %s/%s: restoring the cluster", c->ns, c->svc);
    if (undo(c, "disconnect") == 0 && wait_gone(c, 30) == 0) restored = 1;
  }
  if (c->json) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "event", "disconnected");
    cJSON_AddBoolToObject(o, "restored", restored);
    emit_json(o);
  } else {
    printf("disconnected%s\n", restored ? "; the cluster is restored" : last ? "; restore did not finish" : "");
  }
  if (last && !restored && rc == 0) rc = 1;
    return rc;
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
static int forwards_bindable(struct conn *c) {
  for (size_t i = 0; i < c->cfg->forwards.n; i++) {
    const struct opt_forward *f = &c->cfg->forwards.v[i];
    struct addrinfo hints, *res = NULL;
    char port[8], a[300];
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    snprintf(port, sizeof port, "%u", (unsigned)f->listen.port);
    addr_format(&f->listen, a, sizeof a);
    int rc = getaddrinfo(f->listen.host, port, &hints, &res);
    if (rc != 0 || !res) {
      fail(c, "--forward %s: cannot resolve \"%s\": %s", a, f->listen.host, gai_strerror(rc));
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
      fail(c, "--forward %s: cannot listen there: %s", a, strerror(err));
      return -1;
    }
  }
  return 0;
}

int connect_run(struct connect_config *cfg) {
  struct conn cc, *c = &cc;
  char err[1200];
  int rc = 1;
  memset(c, 0, sizeof *c);
  c->cfg = cfg;
  c->t0 = now_s();
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
    fail(c, "--service: expected a Service name (a DNS label of at most %d characters), got "
         "\"%s\"", TAKEOVER_MAX_SERVICE, c->svc);
    return 2;
  }
  if (cfg->key[0] == '\0') default_key(cfg->key, sizeof cfg->key);
  if (strlen(cfg->key) > TAKEOVER_MAX_ROUTE_KEY) {
    c->reason = "bad_flag";
    fail(c, "--route-as: \"%s\" has %zu characters; a route key for connect may have at most %d "
         "(it is part of the annotation name kbridge.dev/route-KEY, which Kubernetes limits to 63 "
         "after the prefix)", cfg->key, strlen(cfg->key), TAKEOVER_MAX_ROUTE_KEY);
    return 2;
  }
  if (forwards_bindable(c) < 0) return 2;
  const char *img = cfg->agent_image ? cfg->agent_image : getenv("KBRIDGE_AGENT_IMAGE");
  snprintf(c->image, sizeof c->image, "%s", img && *img ? img : CONNECT_DEFAULT_IMAGE);
  if (!image_ok(c->image)) {
    c->reason = "bad_flag";
    fail(c, "--agent-image: \"%s\" is not an image reference", c->image);
    return 2;
  }
  {
    struct agentpod_flags pf = {&cfg->pull_secrets, &cfg->node_selector, &cfg->tolerations,
                                &cfg->agent_labels, &cfg->agent_annotations, cfg->agent_requests,
                                cfg->agent_limits};
    if (agentpod_parse(&pf, &c->pod, err, sizeof err) < 0) {
      c->reason = "bad_flag";
      fail(c, "%s", err);
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

  /* 1. inspect: reads only */
  if (connect_kube_open(&cfg->kf, &c->k, err, sizeof err) < 0) {
    c->reason = "kubeconfig";
    fail(c, "%s", err);
    return 1;
  }
  /* The tunnels go through the API calls' proxy: refuse one they cannot use
   * before anything is written. */
  if (!cfg->agent_address.port && pf_proxy_check(kube_proxy(c->k), err, sizeof err) < 0) {
    c->reason = "proxy";
    fail(c, "%s (from %s)", err, kube_proxy_source(c->k));
    return 2;
  }
  c->ns = kube_namespace(c->k);
  progress(c, "inspect", "reading service %s/%s", c->ns, c->svc);
  struct kube_ref sref = {"v1", "services", c->ns, c->svc, NULL};
  struct kube_err e;
  if (kube_get(c->k, &sref, &c->service, &e) < 0) {
    fail_kube(c, &e);
    goto out;
  }
  const char *tk = takeover_annotation(c->service, TAKEOVER_ANN_TAKEOVER);
  if (tk) {
    /* Already taken over: reuse its agent. */
    cJSON *t = cJSON_Parse(tk);
    const char *mode = jstr(t, "mode"), *by = jstr(t, "by");
    int excl = mode && strcmp(mode, "exclusive") == 0;
    snprintf(c->wl_kind, sizeof c->wl_kind, "%s", jstr(t, "workload.kind") ? jstr(t, "workload.kind") : "Pods");
    snprintf(c->wl_name, sizeof c->wl_name, "%s", jstr(t, "workload.name") ? jstr(t, "workload.name") : "");
    char holders[600] = "";
    const cJSON *it;
    cJSON_ArrayForEach(it, jget(c->service, "metadata.annotations")) {
      if (strncmp(it->string, "kbridge.dev/route-", 18) != 0) continue;
      size_t l = strlen(holders);
      cJSON *v = cJSON_Parse(cJSON_GetStringValue(it) ? it->valuestring : "{}");
      snprintf(holders + l, sizeof holders - l, "%s%s (%s)", l ? ", " : "", it->string + 18,
               jstr(v, "by") ? jstr(v, "by") : "?");
      cJSON_Delete(v);
    }
    if (excl || cfg->replace) {
      fail(c, "service %s/%s is already taken over in %s mode by %s (routes held: %s); %s", c->ns,
           c->svc, mode ? mode : "?", by ? by : "?", holders[0] ? holders : "none",
           cfg->replace ? "--replace needs the service to itself"
                        : "it is held exclusively");
      cJSON_Delete(t);
      goto out;
    }
    cJSON_Delete(t);
    const char *res = takeover_workload_resource(c->wl_kind);
    if (res) {
      struct kube_ref r = {"apps/v1", res, c->ns, c->wl_name, NULL};
      cJSON *w = NULL;
      if (kube_get(c->k, &r, &w, &e) == 0) c->pod_template = cJSON_Duplicate(jget(w, "spec.template.spec"), 1);
      cJSON_Delete(w);
    }
    /* The agent's ports come from its Deployment. */
    struct kube_ref dr = {"apps/v1", "deployments", c->ns, c->nm.agent, NULL};
    cJSON *d = NULL;
    if (kube_get(c->k, &dr, &d, &e) < 0) {
      fail(c, "service %s/%s is marked as taken over but its agent is missing (%s); run `kbridge "
           "restore -n %s --service %s` first", c->ns, c->svc, e.msg, c->ns, c->svc);
      goto out;
    }
    const cJSON *p;
    cJSON_ArrayForEach(p, jget(cJSON_GetArrayItem(jget(d, "spec.template.spec.containers"), 0), "ports")) {
      const char *n = jstr(p, "name");
      const cJSON *cp = cJSON_GetObjectItemCaseSensitive(p, "containerPort");
      if (n && cJSON_IsNumber(cp) && strcmp(n, "kb-tunnel") == 0) c->tunnel_port = cp->valueint;
    }
    cJSON_Delete(d);
    cJSON_ArrayForEach(p, jget(c->service, "spec.ports")) {
      if (c->nports == MAX_PORTS) break;
      const cJSON *port = cJSON_GetObjectItemCaseSensitive(p, "port");
      c->ports[c->nports++].port = cJSON_IsNumber(port) ? port->valueint : 0;
    }
    if (!c->tunnel_port) {
      fail(c, "deployment %s/%s has no kb-tunnel port", c->ns, c->nm.agent);
      goto out;
    }
    if (cfg->pull_secrets.n || cfg->node_selector.n || cfg->tolerations.n || cfg->agent_labels.n ||
        cfg->agent_annotations.n || cfg->agent_requests || cfg->agent_limits)
      log_warn("the agent of %s/%s exists already: the agent pod flags apply when it is created, "
               "not to the running agent", c->ns, c->svc);
    progress(c, "reuse-agent", "service %s/%s is already taken over (by %s%s%s): reusing agent %s",
             c->ns, c->svc, c->by[0] ? "" : "", holders[0] ? holders : "nobody connected now", "",
             c->nm.agent);
    if (wait_agent_ready(c) < 0) goto out;
    if (key_held(c) < 0) goto out;
    if (client_cert(c) < 0) goto out;
    if (cfg->pause_gitops) {
      struct kube_ref r = {"v1", "services", c->ns, c->svc, NULL};
      if (kube_update_retry(c->k, &r, pause_mutate, c, NULL, &e) < 0) {
        fail_kube(c, &e);
        goto out;
      }
      pause_report(c);
    }
  } else {
    c->orig_selector = jget(c->service, "spec.selector");
    if (!cJSON_IsObject(c->orig_selector) || cJSON_GetArraySize(c->orig_selector) == 0) {
      fail(c, "service %s/%s has no selector: kbridge can only take over Services that select "
           "pods (this one has manually managed endpoints)", c->ns, c->svc);
      goto out;
    }
    if (agentpod_selected_by(&c->pod, c->orig_selector)) {
      c->reason = "bad_flag";
      fail(c, "--agent-label: the labels given include the whole selector of service %s/%s (%s): "
           "the agent pod would count as one of the original pods; leave one of them out",
           c->ns, c->svc, selector_string(c->orig_selector));
      rc = 2;
      goto out;
    }
    const char *type = jstr(c->service, "spec.type");
    if (type && strcmp(type, "ExternalName") == 0) {
      fail(c, "service %s/%s is an ExternalName service: nothing to take over", c->ns, c->svc);
      goto out;
    }
    const char *cip = jstr(c->service, "spec.clusterIP");
    if (cip && strcmp(cip, "None") == 0) {
      /* Its DNS name lists the pods themselves, and each pod of a StatefulSet
       * has its own name under it (db-0.db.NS.svc): with the agent selected
       * those names stop resolving and peer discovery breaks. */
      c->reason = "unsupported";
      fail(c, "service %s/%s is headless (clusterIP: None): its DNS names are the pods' own "
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
      fail(c, "deployment %s/%s exists but service %s is not taken over (yet): either another "
           "kbridge connect is starting right now (try again in a few seconds), or these are "
           "leftovers of an earlier takeover (`kbridge restore -n %s --service %s` removes them)",
           c->ns, c->nm.agent, c->svc, c->ns, c->svc);
      goto out;
    } else if (e.status != 404) {
      fail_kube(c, &e);
      goto out;
    }
    struct kube_ref pr = {"v1", "pods", c->ns, NULL, NULL};
    cJSON *pods = NULL;
    char sel[1100];
    snprintf(sel, sizeof sel, "%s", selector_string(c->orig_selector));
    if (kube_list(c->k, &pr, sel, &pods, &e) < 0) {
      fail_kube(c, &e);
      goto out;
    }
    int npods = cJSON_GetArraySize(jget(pods, "items"));
    c->orig_pods = pods;
    if (find_workloads(c, jget(pods, "items")) < 0) goto out;
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
    progress(c, "inspect", "service %s/%s selects %s (%d pod%s: %s); ports %s", c->ns, c->svc,
             selector_string(c->orig_selector), npods, npods == 1 ? "" : "s",
             c->wls.n ? wlist : "none yet", plist);
    if (cfg->replace && (c->wls.n > 1 || c->wls.more)) {
      /* Scaling one would leave the others serving and consuming; scaling all
       * would need a restore record per workload. Refused, nothing changed. */
      c->reason = "unsupported";
      fail(c, "--replace: service %s/%s selects pods of several workloads (%s); --replace scales "
           "one workload to 0 and the others would keep taking traffic and work. Connect without "
           "--replace (--route-as KEY: unrouted traffic keeps reaching all of them), or scale "
           "the others to 0 yourself first", c->ns, c->svc, wlist);
      rc = 2;
      goto out;
    }
    if (cfg->replace && npods > 0 && !takeover_workload_resource(c->wl_kind) &&
        strcmp(c->wl_kind, "Pods") != 0) {
      fail(c, "--replace: the pods belong to %s %s, which kbridge cannot scale to 0", c->wl_kind,
           c->wl_name);
      goto out;
    }
    int nrc = netpol_step(c);
    if (nrc < 0) {
      if (nrc == -2) rc = 2;
      goto out;
    }
    if (client_cert(c) < 0) goto out;
    c->fresh = 1;
    /* 2. agent — from here on, failures undo */
    if (create_agent(c) < 0 || wait_agent_ready(c) < 0) goto undo_out;
    /* 3. switch */
    if (switch_service(c) < 0) goto undo_out;
    wait_taken(c);
  }

  /* 4. tunnels */
  {
    if ((c->tun_ssl = tls_client_ctx_from_pem(c->ca.cert, &c->me, err, sizeof err)) == NULL) {
      fail(c, "cannot use your client certificate: %s", err);
      goto undo_out;
    }
    c->api_ssl = kube_ssl_ctx_new(c->k, err, sizeof err);
    if (!c->api_ssl) {
      fail(c, "%s", err);
      goto undo_out;
    }
  }
  int others = 0;
  if (set_route(c, 1, &others) < 0) goto undo_out;
  c->routed = 1;
  if (cfg->ingress && clone_ingresses(c) < 0) goto undo_out;
  session_write(c->ns, c->svc, cfg->key, cfg->local_port, c->session_path, sizeof c->session_path);
  if (cfg->agent_address.port) {
    char a[300];
    progress(c, "tunnels", "opening %d tunnel%s to the agent at %s", cfg->tunnels,
             cfg->tunnels == 1 ? "" : "s", addr_format(&cfg->agent_address, a, sizeof a));
  } else {
    progress(c, "tunnels", "opening %d tunnel%s to the agent through the API server",
             cfg->tunnels, cfg->tunnels == 1 ? "" : "s");
  }
  if (interrupted) goto leave;
  rc = serve(c, &sa);

leave:
  rc = leave_session(c, rc, others);
  goto out;

undo_out:
  unclone_ingresses(c);
  if (c->routed) {
    int left = 0;
    set_route(c, 0, &left);
  }
  if (c->fresh && c->created) {
    undo(c, "connect failed");
    wait_gone(c, 30);
  }
  rc = 1;
out:
  if (c->session_path[0]) unlink(c->session_path);
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
