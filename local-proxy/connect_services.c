/* connect_services.c: every Service of the namespace reachable from the local
 * process, as from inside the pod.
 *
 * On connect, each Service of the namespace (not kbridge's own) gets a
 * loopback address of its own, 127.1.X.Y, listening on the Service's real
 * ports: Linux routes all of 127.0.0.0/8 to lo, so no root and no setup are
 * needed, and two Services with the same port do not collide. A port below
 * 1024 that a non-root user may not bind gets a free port on the same address
 * instead; an address another session holds is skipped. Each listener's
 * connections become outbound streams through the agent to the Service's
 * cluster IP (a headless Service: its DNS name; ExternalName: the external
 * name), with the route lines of propagate.c. The local process gets the
 * Service's env variables (STORE_SERVICE_HOST, STORE_PORT_8080_TCP, ...)
 * pointing at them. A watch on the namespace's Services (its own API client in
 * the event loop) adds listeners for Services created later, moves those whose
 * cluster IP or ports changed and closes those deleted. */
#include "connect_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "dnslabel.h"
#include "hostsfile.h"
#include "kube.h"
#include "proxy.h"
#include "session.h"

#define ADDR_TRIES 256      /* addresses tried for one Service before giving up */
#define ADDR_SPACE 64000    /* 127.1.0.1 .. 127.250.255.250 */

/* The i-th loopback address of ours: 127.1.0.1, 127.1.0.2, ... (no .0, no .255). */
static void nth_addr(unsigned i, char *out, size_t len) {
  i %= ADDR_SPACE;
  snprintf(out, len, "127.%u.%u.%u", 1 + i / (250 * 256), (i / 250) % 256, 1 + i % 250);
}

static void svc_close(struct svc_fwd *s) {
  for (int i = 0; i < s->nports; i++)
    if (s->p[i].fw) proxy_unlisten(s->px, s->p[i].fw);
  s->nports = 0;
}

static void svc_unlink_free(struct conn *c, struct svc_fwd *s) {
  struct svc_fwd **pp = &c->svcs;
  while (*pp && *pp != s) pp = &(*pp)->next;
  if (*pp) *pp = s->next;
  svc_close(s);
  free(s);
  c->nsvcs--;
}

static struct svc_fwd *svc_find(struct conn *c, const char *ns, const char *name) {
  for (struct svc_fwd *s = c->svcs; s; s = s->next)
    if (strcmp(s->name, name) == 0 && strcmp(s->ns, ns) == 0) return s;
  return NULL;
}

int conn_service_plan(struct conn *c, const cJSON *svc, struct svc_fwd *s, const char **why) {
  const char *name = conn_jstr(svc, "metadata.name");
  const char *ns = conn_jstr(svc, "metadata.namespace") ? conn_jstr(svc, "metadata.namespace")
                                                          : c->ns;
  const char *type = conn_jstr(svc, "spec.type");
  const char *ip = conn_jstr(svc, "spec.clusterIP");
  if (!name || strlen(name) >= sizeof s->name) {
    *why = "no name";
    return -1;
  }
  snprintf(s->name, sizeof s->name, "%s", name);
  snprintf(s->ns, sizeof s->ns, "%s", ns);
  int headless = ip && strcmp(ip, "None") == 0;
  if (type && strcmp(type, "ExternalName") == 0) {
    const char *ext = conn_jstr(svc, "spec.externalName");
    if (!ext || !*ext) {
      *why = "ExternalName without a name";
      return -1;
    }
    snprintf(s->target, sizeof s->target, "%s", ext);
  } else if (headless || !ip || !*ip) {
    /* resolved by the agent's resolver, whatever the cluster domain */
    snprintf(s->target, sizeof s->target, "%s.%s.svc", name, ns);
  } else {
    snprintf(s->target, sizeof s->target, "%s", ip);
  }
  s->nports = 0;
  const cJSON *p;
  cJSON_ArrayForEach(p, conn_jget(svc, "spec.ports")) {
    const char *proto = conn_jstr(p, "protocol");
    const cJSON *port = cJSON_GetObjectItemCaseSensitive(p, "port");
    const cJSON *tp = cJSON_GetObjectItemCaseSensitive(p, "targetPort");
    if ((proto && strcmp(proto, "TCP") != 0) || !cJSON_IsNumber(port) || port->valueint <= 0 ||
        port->valueint > 65535 || s->nports >= SVC_MAX_PORTS)
      continue;
    struct svc_port *sp = &s->p[s->nports++];
    memset(sp, 0, sizeof *sp);
    sp->port = (unsigned)port->valueint;
    /* A headless Service's name resolves to pod addresses: connect to the
     * pods' port (targetPort when it is a number). */
    sp->target = headless && cJSON_IsNumber(tp) && tp->valueint > 0 ? (unsigned)tp->valueint
                                                                     : sp->port;
    snprintf(sp->pname, sizeof sp->pname, "%s", conn_jstr(p, "name") ? conn_jstr(p, "name") : "");
  }
  if (s->nports == 0) {
    *why = "no TCP port";
    return -1;
  }
  return 0;
}

/* Is port held on every address (a listener on 0.0.0.0 or [::])? An address
 * nobody uses answers: 127.255.255.254 is outside the range nth_addr gives. */
static int taken_everywhere(unsigned port) {
  struct sockaddr_in sin;
  memset(&sin, 0, sizeof sin);
  sin.sin_family = AF_INET;
  sin.sin_port = htons((uint16_t)port);
  sin.sin_addr.s_addr = htonl(0x7ffffffeu);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
  if (fd < 0) return 0;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  int busy = bind(fd, (struct sockaddr *)&sin, sizeof sin) < 0 && errno == EADDRINUSE;
  close(fd);
  errno = EADDRINUSE;
  return busy;
}

/* Listen for every port of s on one address of ours. 0, or -1 with err. */
static int svc_listen(struct conn *c, struct svc_fwd *s, char *err, size_t errlen) {
  for (int tries = 0; tries < ADDR_TRIES; tries++) {
    nth_addr(c->next_addr++, s->addr, sizeof s->addr);
    int i, busy = 0;
    for (i = 0; i < s->nports; i++) {
      struct svc_port *sp = &s->p[i];
      struct hostport l, t;
      char bound[300];
      memset(&l, 0, sizeof l);
      memset(&t, 0, sizeof t);
      snprintf(l.host, sizeof l.host, "%s", s->addr);
      l.port = (int)sp->port;
      snprintf(t.host, sizeof t.host, "%s", s->target);
      t.port = (int)sp->target;
      sp->fw = proxy_listen(c->px, &l, &t, bound, sizeof bound, err, errlen);
      /* Any port instead: below 1024 and not root, or a local server holds
       * the port on every address (0.0.0.0:8080): no address of ours gets it. */
      if (!sp->fw && (errno == EACCES || (errno == EADDRINUSE && taken_everywhere(sp->port)))) {
        log_info("service %s: port %u cannot be listened on here (%s); a free port instead",
                 s->name, sp->port, errno == EACCES ? "below 1024 and not root"
                                                    : "a local server holds it on all addresses");
        l.port = 0;
        sp->fw = proxy_listen(c->px, &l, &t, bound, sizeof bound, err, errlen);
      }
      if (!sp->fw) {
        busy = errno == EADDRINUSE;
        break;
      }
      const char *colon = strrchr(bound, ':');
      sp->local = colon ? (unsigned)atoi(colon + 1) : sp->port;
    }
    if (i == s->nports) return 0;
    int n = i;
    for (i = 0; i < n; i++) {
      proxy_unlisten(c->px, s->p[i].fw);
      s->p[i].fw = NULL;
    }
    if (!busy) return -1; /* not a collision with another session: trying on won't help */
  }
  snprintf(err, errlen, "no free loopback address after %d tries", ADDR_TRIES);
  return -1;
}

/* Add, move or keep the listeners of svc (a Service object). */
static void svc_update(struct conn *c, const cJSON *svc, int announce) {
  const char *name = conn_jstr(svc, "metadata.name");
  const char *ns = conn_jstr(svc, "metadata.namespace") ? conn_jstr(svc, "metadata.namespace")
                                                          : c->ns;
  if (!name || takeover_is_managed(svc)) return; /* kbridge's shadow Services */
  struct svc_fwd plan, *old = svc_find(c, ns, name);
  const char *why = NULL;
  memset(&plan, 0, sizeof plan);
  if (conn_service_plan(c, svc, &plan, &why) < 0) {
    if (old) svc_unlink_free(c, old);
    log_debug("service %s: no local listener (%s)", name, why);
    return;
  }
  if (old && strcmp(old->target, plan.target) == 0 && old->nports == plan.nports) {
    int same = 1;
    for (int i = 0; i < plan.nports && same; i++)
      same = old->p[i].port == plan.p[i].port && old->p[i].target == plan.p[i].target;
    if (same) return;
  }
  if (old) svc_unlink_free(c, old);
  struct svc_fwd *s = malloc(sizeof *s);
  if (!s) return;
  *s = plan;
  s->px = c->px;
  char err[400];
  if (svc_listen(c, s, err, sizeof err) < 0) {
    log_warn("service %s: no local listener: %s", name, err);
    free(s);
    return;
  }
  s->next = c->svcs;
  c->svcs = s;
  c->nsvcs++;
  if (announce) {
    char ports[200] = "";
    size_t o = 0;
    for (int i = 0; i < s->nports && o < sizeof ports; i++)
      o += (size_t)snprintf(ports + o, sizeof ports - o, "%s%u", i ? "," : "", s->p[i].local);
    conn_progress(c, "service", "service %s -> %s:%s (created while connected)", s->name, s->addr,
                  ports);
  }
}

/* --hosts: this session's block in the hosts file, from the listeners now
 * (NULL body when leaving). Blocks of sessions that are gone go too. */
static void hosts_write(struct conn *c, int leaving) {
  if (!c->cfg->hosts) return;
  char *body = NULL;
  size_t len = 0;
  FILE *f = leaving ? NULL : open_memstream(&body, &len);
  for (const struct svc_fwd *s = c->svcs; f && s; s = s->next) {
    fprintf(f, "%s", s->addr);
    if (strcmp(s->ns, c->ns) == 0) fprintf(f, " %s", s->name);
    fprintf(f, " %s.%s %s.%s.svc %s.%s.svc.cluster.local\n", s->name, s->ns, s->name, s->ns,
            s->name, s->ns);
  }
  if (f) fclose(f);
  char id[200], err[600];
  snprintf(id, sizeof id, "%s/%s", c->ns, c->svc);
  /* restore finds the file by this record after a kill -9: written first */
  if (!leaving && !c->hosts_written) session_hosts_record(c->cfg->hosts_file);
  if (hosts_update(c->cfg->hosts_file, id, getpid(), body ? body : "", session_pid_running, err,
                   sizeof err) < 0)
    log_warn("--hosts: %s", err);
  else if (leaving)
    session_hosts_unrecord();
  else if (!c->hosts_written++)
    conn_progress(c, "hosts", "%zu Services' names in %s (removed when you leave)", c->nsvcs,
                  c->cfg->hosts_file);
  free(body);
}

static int svc_event(const char *type, cJSON *obj, const struct kube_err *e, void *arg) {
  struct conn *c = arg;
  if (strcmp(type, "ADDED") == 0 || strcmp(type, "MODIFIED") == 0) {
    svc_update(c, obj, 1);
    hosts_write(c, 0);
  } else if (strcmp(type, "DELETED") == 0) {
    const char *name = conn_jstr(obj, "metadata.name");
    struct svc_fwd *s = svc_find(c, c->ns, name ? name : "");
    if (s) {
      log_info("service %s deleted: its listeners on %s are closed", s->name, s->addr);
      svc_unlink_free(c, s);
      hosts_write(c, 0);
    }
  } else if (strcmp(type, "ERROR") == 0 && e) {
    if (e->status == 401 || e->status == 403) {
      log_warn("cannot watch the Services of %s (%s): Services created while connected get no "
               "listener (the Role needs watch on services: deploy/rbac/developer-role.yaml)",
               c->ns, e->msg);
      c->svc_watch = NULL;
      return 1; /* stops the watch; retrying cannot help */
    }
    log_warn("watching the services of %s: %s (retrying)", c->ns, e->msg);
  }
  return 0;
}

static int label_char(char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-';
}

/* A Service of another namespace that the container's env names
 * (http://store.other.svc.cluster.local:8080, store.other.svc:8080): a
 * listener too, as the pod reaches it. No link variables (a pod gets those
 * only for its own namespace); useful with --hosts and by address. */
static void other_service(struct conn *c, const char *name, const char *ns) {
  if (strcmp(ns, c->ns) == 0 || svc_find(c, ns, name)) return;
  struct kube_ref r = {"v1", "services", ns, name, NULL};
  struct kube_err e;
  cJSON *svc = NULL;
  if (kube_get(c->k, &r, &svc, &e) < 0) {
    log_info("service %s/%s (named in the env): no listener: %s", ns, name, e.msg);
    return;
  }
  svc_update(c, svc, 0);
  cJSON_Delete(svc);
}

/* Every NAME.NS.svc[.DOMAIN] in v. */
static void scan_value(struct conn *c, const char *v) {
  for (const char *p = strstr(v, ".svc"); p; p = strstr(p + 4, ".svc")) {
    if (label_char(p[4])) continue; /* ".svcx": not the svc label */
    const char *ns0 = p;
    while (ns0 > v && label_char(ns0[-1])) ns0--;
    if (ns0 == p || ns0 - v < 2 || ns0[-1] != '.') continue;
    const char *n1 = ns0 - 1, *n0 = n1;
    while (n0 > v && label_char(n0[-1])) n0--;
    char name[64], ns[64];
    if (n0 == n1 || (size_t)(n1 - n0) >= sizeof name || (size_t)(p - ns0) >= sizeof ns) continue;
    snprintf(name, sizeof name, "%.*s", (int)(n1 - n0), n0);
    snprintf(ns, sizeof ns, "%.*s", (int)(p - ns0), ns0);
    if (dns_label_valid(name, strlen(name)) && dns_label_valid(ns, strlen(ns)))
      other_service(c, name, ns);
  }
}

int conn_services_start(struct conn *c, struct event_base *base) {
  if (c->cfg->no_services) return 0;
  double t0 = conn_now_s();
  struct kube_ref r = {"v1", "services", c->ns, NULL, NULL};
  struct kube_err e;
  cJSON *list = NULL;
  if (kube_list(c->k, &r, NULL, &list, &e) < 0) {
    log_warn("services of %s: %s; no service listeners (--forward still works)", c->ns, e.msg);
    return 0;
  }
  const cJSON *item;
  cJSON_ArrayForEach(item, conn_jget(list, "items")) svc_update(c, item, 0);
  char rv[64];
  snprintf(rv, sizeof rv, "%s",
           conn_jstr(list, "metadata.resourceVersion") ? conn_jstr(list, "metadata.resourceVersion")
                                                       : "");
  cJSON_Delete(list);
  /* Resolved once: the env built for the process at ready takes it over. */
  c->env = conn_resolve_env(c, &c->env_secrets);
  const cJSON *kv;
  cJSON_ArrayForEach(kv, c->env) scan_value(c, kv->valuestring);
  conn_progress(c, "services", "%zu services of %s listen on 127.x loopback addresses (%.2f s)",
                c->nsvcs, c->ns, conn_now_s() - t0);
  hosts_write(c, 0);
  char err[400];
  if (connect_kube_open(&c->cfg->kf, &c->kw, err, sizeof err) < 0 ||
      kube_attach(c->kw, base, err, sizeof err) < 0) {
    log_warn("services created while connected get no listener: %s", err);
    return 0;
  }
  c->svc_watch = kube_async_watch(c->kw, &r, NULL, rv[0] ? rv : NULL, svc_event, c);
  return 0;
}

void conn_services_stop(struct conn *c) {
  if (c->svc_watch) kube_watch_stop(c->svc_watch);
  c->svc_watch = NULL;
  if (c->hosts_written) hosts_write(c, 1);
  while (c->svcs) svc_unlink_free(c, c->svcs);
  cJSON_Delete(c->env); /* never ready: not taken over by the welcome */
  cJSON_Delete(c->env_secrets);
  c->env = c->env_secrets = NULL;
  if (c->kw) kube_free(c->kw);
  c->kw = NULL;
}

void conn_services_env(struct conn *c, cJSON *env) {
  if (cJSON_IsFalse(conn_jget(c->pod_template, "enableServiceLinks"))) return;
  for (const struct svc_fwd *s = c->svcs; s; s = s->next)
    for (int i = 0; i < s->nports && strcmp(s->ns, c->ns) == 0; i++)
      conn_service_link(env, s->name, s->addr, i == 0, s->p[i].pname, (int)s->p[i].port,
                        s->p[i].local);
}

cJSON *conn_services_json(const struct conn *c) {
  cJSON *arr = cJSON_CreateArray();
  for (const struct svc_fwd *s = c->svcs; s; s = s->next) {
    cJSON *o = cJSON_CreateObject(), *ports = cJSON_CreateArray();
    cJSON_AddStringToObject(o, "name", s->name);
    cJSON_AddStringToObject(o, "namespace", s->ns);
    cJSON_AddStringToObject(o, "address", s->addr);
    cJSON_AddStringToObject(o, "target", s->target);
    for (int i = 0; i < s->nports; i++) {
      cJSON *p = cJSON_CreateObject();
      cJSON_AddNumberToObject(p, "port", s->p[i].port);
      cJSON_AddNumberToObject(p, "local", s->p[i].local);
      if (s->p[i].pname[0]) cJSON_AddStringToObject(p, "name", s->p[i].pname);
      cJSON_AddItemToArray(ports, p);
    }
    cJSON_AddItemToObject(o, "ports", ports);
    cJSON_AddItemToArray(arr, o);
  }
  return arr;
}
