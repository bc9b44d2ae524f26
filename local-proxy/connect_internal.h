/* connect_internal.h: what the parts of `kbridge connect` share (private to
 * local-proxy/connect*.c): the session's state (struct conn), its output and
 * the steps each part offers. The order of the run is in connect_run.c. */
#ifndef KB_CONNECT_INTERNAL_H
#define KB_CONNECT_INTERNAL_H

#include "connect.h"

#include <signal.h>
#include <stddef.h>
#include <sys/types.h>

#include <cjson/cJSON.h>

#include "agentpod.h"
#include "envfmt.h"
#include "netpol.h"
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

struct port {
  char name[64];    /* the Service port's name ("" if none) */
  int port;         /* Service port */
  int target;       /* the agent's port serving it (portplan.h) */
  char tname[64];   /* targetPort's name when named */
  char proto[8];
};

/* connect_services.c: a Service of the namespace, listening on a loopback
 * address of its own. */
#define SVC_MAX_PORTS 16
struct forward;
struct event_base;
struct kube_watch;
struct svc_port {
  char pname[64];      /* the Service port's name, or "" */
  unsigned port;       /* the Service's port */
  unsigned target;     /* the port connected to in the cluster */
  unsigned local;      /* the port listened on (port, unless it was not allowed) */
  struct forward *fw;  /* proxy_listen()'s */
};
struct svc_fwd {
  char name[64];
  char ns[64];         /* its namespace: the session's, or one the env names */
  char addr[16];       /* 127.1.0.3 */
  char target[256];    /* cluster IP, NAME.NS.svc (headless) or the external name */
  int nports;
  struct svc_port p[SVC_MAX_PORTS];
  struct proxy *px;
  struct svc_fwd *next;
};

struct conn {
  struct connect_config *cfg;
  int json;
  int quiet;               /* progress only to the log (kbridge env: stdout is the env) */
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
  char http_proxy[300];    /* the local HTTP/SOCKS5 proxy's address, or "" */
  struct multi *multi;     /* the other Services' sessions (connect_multi.c), or NULL */
  struct svc_fwd *svcs;    /* the namespace's Services, listening on loopback */
  size_t nsvcs;
  unsigned next_addr;      /* the next loopback address to try (connect_services.c) */
  struct kube *kw;         /* a second API client, in the event loop: the watch */
  struct kube_watch *svc_watch;
  int hosts_written;       /* --hosts: our block is in the hosts file */
  cJSON *env, *env_secrets; /* the container's env, resolved by conn_services_start (or NULL) */
  double agent_seen;       /* when an agent pod was last seen ready (now_s) */
  int agent_lost;          /* no agent pod ready for AGENT_LOST_S: restore, end */
  struct conn_volumes *vol; /* the pod's volumes as local files (connect_volumes.c) */
};

/* Set by the SIGINT/SIGTERM handler while the blocking setup runs. */
extern volatile sig_atomic_t conn_interrupted;

/* connect_run.c */
/* Inspect's reads, shared with `kbridge env` (connect_envcmd.c); each reports its
 * failure (conn_fail) and returns -1, else 0. */
/* The kubeconfig (connect_kube_open) into c->k and its namespace into c->ns. */
int conn_open(struct conn *c, const struct kube_flags *kf);
/* Service c->svc of c->ns into c->service. */
int conn_read_service(struct conn *c);
/* The Service's selector into c->orig_selector; -1 when it has none. */
int conn_selector(struct conn *c);
/* The pods the selector picks (c->orig_pods) and their workloads (c->wls);
 * the first workload's kind, name and pod spec (c->pod_template, NULL when
 * no pod is selected). */
int conn_selected_workloads(struct conn *c);
/* A taken-over Service: the workload its takeover record names (c->wl_kind,
 * c->wl_name) and that workload's pod spec into c->pod_template (left NULL
 * for bare pods or when it cannot be read, which is logged). Never fails. */
void conn_takeover_template(struct conn *c);
double conn_now_s(void);
/* Print o as one line on stdout (--output json) and free it. */
void conn_emit_json(cJSON *o);
/* A progress line (text) or {"event":"progress","step":...} (json). */
void conn_progress(struct conn *c, const char *step, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The error: an error event with c->reason (json; then reset), and
 * "kbridge: MESSAGE" on stderr. */
void conn_fail(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* conn_fail() with the message and reason of a failed API call. */
void conn_fail_kube(struct conn *c, const struct kube_err *e);
/* o's member at a dotted path ("spec.template.spec"), or NULL. */
cJSON *conn_jget(const cJSON *o, const char *path);
/* The string at a dotted path, or NULL. */
const char *conn_jstr(const cJSON *o, const char *path);
/* The time now as 2026-11-26T07:00:00Z. */
void conn_iso_now(char *out, size_t len);
/* A selector as "app=api,tier=web" (static buffer). */
char *conn_selector_string(const cJSON *sel);

/* connect_agent.c */
/* Image references never contain these; they would break the JSON we build. */
int conn_image_ok(const char *s);
/* ownerReferences naming the agent's Deployment (name, uid). */
cJSON *conn_owner_ref(const char *name, const char *uid);
/* 1 if the pod's Ready condition is True. */
int conn_pod_ready(const cJSON *pod);
/* The agent pods (a list's items), or NULL with why. */
cJSON *conn_agent_pods(struct conn *c, char *why, size_t whylen);
/* Wait (--timeout) until an agent pod is Ready; a pod that cannot start
 * (image pull, admission, crash loop) ends the wait with its reason. 0 or -1
 * (reported). */
int conn_wait_agent_ready(struct conn *c);
/* Our client certificate from kbridge-signer (certreq.h), before anything is
 * written: a request denied because another identity holds the key ends the
 * run here, with the signer's reason. */
int conn_client_cert(struct conn *c);
/* The namespace's NetworkPolicies (netpol.h): plan the agent's own, checked
 * with a dry run; reads only. 0, or after conn_fail(): -2 when reading the policies
 * or creating the needed ones is forbidden (reason "forbidden"), -1 otherwise. */
int conn_netpol_step(struct conn *c);
/* A fresh takeover's objects: the agent's certificate, the Deployment (its
 * takeover id), then what it owns; scaled to AGENT_REPLICAS. 0 or -1 (reported;
 * the caller undoes). */
int conn_create_agent(struct conn *c);

/* connect_takeover.c */
/* --pause-gitops when joining a takeover: only while it is one. */
int conn_pause_mutate(cJSON *obj, void *arg, char *err, size_t errlen);
/* Say what --pause-gitops did. */
void conn_pause_report(struct conn *c);
/* After the switch: wait until the Service's Endpoints show only the agent
 * (bounded; never fails, says what happened), then kube-proxy's allowance, so
 * that a request sent right after `ready` with the route key reaches the
 * developer and not the real pods. Found on the test cluster's real node,
 * where kube-proxy follows the Endpoints in its own time. */
void conn_wait_taken(struct conn *c);
/* The Service's selector to the agent, the original and the takeover
 * record into annotations; exclusive mode then scales the workload to 0.
 * 0 or -1 (reported). */
int conn_switch_service(struct conn *c);
/* Clone every Ingress of the namespace that routes to the Service (see
 * takeover_ingress_clone), owned by the agent's Deployment. Clones of our key
 * left by an earlier session are replaced. 0, or -1 (reported). */
int conn_clone_ingresses(struct conn *c);
/* Remove the clones of our key (leaving, or a failed connect). */
void conn_unclone_ingresses(struct conn *c);
/* Is our key held by another session? The agent knows who is connected now
 * (/healthz); if it cannot be asked, a live route annotation of another
 * session counts. Returns 0 (free) or -1 (reported). */
int conn_key_held(struct conn *c);
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
int conn_agent_other_keys(struct conn *c, char *names, size_t len);
/* Add (add=1) or remove our route annotation on the Service; others gets
 * how many other live annotations it carries. 0 or -1 (reported). */
int conn_set_route(struct conn *c, int add, int *others);

/* connect_env.c */
/* env object {NAME: VALUE} of the workload's first container, resolved as the
 * kubelet does: envFrom (configMapRef, secretRef, with prefix) first, then env
 * (value, configMapKeyRef, secretKeyRef, fieldRef metadata.namespace and
 * metadata.name), a later name replacing an earlier one. When secrets is not
 * NULL it gets a new array of the names whose final value came from a Secret. */
cJSON *conn_resolve_env(struct conn *c, cJSON **secrets);
/* For every forward whose target is a Service port of our namespace, the
 * service link variables Kubernetes gives the original container
 * (STORE_SERVICE_HOST, STORE_SERVICE_PORT[_NAME], STORE_PORT,
 * STORE_PORT_8080_TCP[_PROTO|_PORT|_ADDR]) with the forward's local address
 * instead of the cluster IP, so a process that finds its peers through them
 * reaches them through the tunnel. Only forwarded ports get variables (the
 * cluster IPs of the others cannot be reached from here), and none when the
 * pod spec turns service links off. */
void conn_forward_service_links(struct conn *c, cJSON *env);
/* env in format f (envfmt.h) to path, created or truncated with mode 0600,
 * or to stdout when path is NULL; secrets (names, may be NULL) are marked
 * where the format can. Variables the format cannot carry are left out with a
 * warning each naming them. 0, or -1 when the file cannot be written
 * (reported). */
int conn_write_env(struct conn *c, const cJSON *env, const cJSON *secrets, enum envfmt_format f,
                   const char *path);
/* --env and kbridge.yaml's env: (envrefs.h). Checked before the cluster is
 * changed: with cluster 0 what the flags alone decide (--no-services, the
 * --forward targets, volumes at all), with cluster 1 also the names against
 * what inspect read (a Service of the namespace and its port, a volume the
 * container mounts; the Services are listed here). An error names the file
 * and line (or --env), the variable and what is expected; returns -1
 * (reported), else 0. */
int conn_env_refs_check(struct conn *c, int cluster);
/* With more Services (connect_multi.c), whose sessions change the cluster
 * before this one's inspect: conn_env_refs_check(c, 1) ahead of them, in a
 * child process (nothing fork() must not share may exist in this one yet) that
 * does the reads it needs; reads that fail there are left to the real inspect
 * to report. 0, or -1 (reported). */
int conn_env_refs_precheck(struct conn *c);
/* The overrides applied to env in order, their references resolved against
 * the listeners, forwards and volumes now open ($(env:NAME): env as it is at
 * that point). One that cannot be resolved now (a listener that failed) is
 * left out with a warning. */
void conn_env_overrides(struct conn *c, cJSON *env);
/* The service-link variables of one port of Service svc listening on
 * host:local (first: its first port, which also sets SVC_SERVICE_PORT and
 * SVC_PORT). A variable env has already is kept, as in a pod. */
void conn_service_link(cJSON *env, const char *svc, const char *host, int first,
                       const char *pname, int svc_port, unsigned local);

/* connect_multi.c: the other Services of the session, in child processes */
struct multi;
/* Fork a session per further --service and wait until all are ready. 0, or
 * -1 (reported; the children are stopped by conn_multi_stop). */
int conn_multi_start(struct conn *c);
/* Read the children's events from the loop while the session runs; and stop. */
void conn_multi_watch(struct conn *c, struct event_base *base);
void conn_multi_unwatch(struct conn *c);
/* [{"service","local_port","pid","urls"}] of the other Services (new). */
cJSON *conn_multi_json(const struct conn *c);
/* SIGINT to every child, wait for their leave (each restores its Service). */
void conn_multi_stop(struct conn *c);

/* connect_services.c */
/* List the namespace's Services, listen for each (c->px is set), and watch
 * for more. Problems are logged; the session goes on without them. */
int conn_services_start(struct conn *c, struct event_base *base);
/* What a Service's listeners connect to: fills s->name, target and the
 * ports (p[].port, p[].target, p[].pname); no listener is opened. 0, or -1
 * when the Service has nothing to listen for (why says what). */
int conn_service_plan(struct conn *c, const cJSON *svc, struct svc_fwd *s, const char **why);
/* Close the listeners and the watch. */
void conn_services_stop(struct conn *c);
/* The service-link variables of every listening Service. */
void conn_services_env(struct conn *c, cJSON *env);
/* [{"name","address","target","ports":[{"port","local","name"}]}] (new). */
cJSON *conn_services_json(const struct conn *c);

/* connect_volumes.c */
/* The directory for the pod's volumes: --volumes-dir (made if missing), else a
 * fresh 0700 one under $TMPDIR. Before anything is written to the cluster.
 * 0 or -1 (reported). */
int conn_volumes_open(struct conn *c);
/* The first container's volumeMounts as files below it (each reported; kinds
 * not materialised listed with the reason), KBRIDGE_VOLUMES in env. */
void conn_volumes_write(struct conn *c, cJSON *env);
/* From the re-sync guard's tick: service account tokens due for refresh. */
void conn_volumes_tick(struct conn *c);
/* The end: a directory connect made is removed with everything in it. */
void conn_volumes_close(struct conn *c);
/* Where volume name (of the first container's mounts, its first mount) is
 * materialised: the volumes directory and its mountPath, into out; known
 * before it is written (the directory is opened before inspect). 0, or -1 with
 * why: not mounted by the container (the mounts listed), a kind not
 * materialised (persistentVolumeClaim, ...), no pod spec known. Before the
 * directory is opened (a check), out gets the path relative to it. */
int conn_volume_dir(struct conn *c, const char *name, char *out, size_t len, char *why,
                    size_t whylen);

/* connect_serve.c */
/* Run the tunnels until the session ends (proxy.c's loop with our hooks);
 * then put the blocking setup's signal handler sa back and stop the command if
 * it still runs. The exit status: proxy_run()'s, or the command's when it
 * ended the session. */
int conn_serve(struct conn *c, const struct sigaction *sa);

/* connect_leave.c */
/* Wait until the agent and everything the garbage collector removes after it
 * (ServiceAccount, Role, RoleBinding) are gone and its pods are gone or
 * terminating. A terminating agent pod is selected by nothing and stops on
 * SIGTERM; removing it is the kubelet's work, which on a real node takes seconds
 * (tens under load), so it is not waited for. 0, or -1 after seconds. */
int conn_wait_gone(struct conn *c, int seconds);
int conn_undo(struct conn *c, const char *why);
/* 5. leave: GOAWAY is proxy.c's; here our route annotation goes, and the last
 * developer on the Service restores the cluster and waits until the agent is
 * gone. others: developers the Service's annotations still named. Returns rc,
 * or 1 when the restore this session owed did not finish. */
int conn_leave_session(struct conn *c, int rc, int others);

#endif
