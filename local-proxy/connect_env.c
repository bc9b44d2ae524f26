/* connect_env.c: the local process's environment: the original container's env
 * (config maps and secrets resolved, the names that came from Secrets
 * remembered), service links for --forward and the Service listeners
 * (connect_services.c), and the env written in a format (envfmt.h) for
 * --env-file and `kbridge env`. */
#include "connect_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>

#include <cjson/cJSON.h>

#include "base64.h"
#include "dnslabel.h"
#include "kube.h"
#include "optfile.h"

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
  const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(conn_jget(o, "data"), key));
  char *out = NULL;
  if (v) out = strcmp(res, "secrets") == 0 ? base64_decode(v, NULL) : strdup(v);
  else *missing = 1;
  cJSON_Delete(o);
  return out;
}

/* name's value now comes from a Secret (secret 1) or not: kept in the set
 * secrets (an array of names), which may be NULL. */
static void mark_secret(cJSON *secrets, const char *name, int secret) {
  if (!secrets) return;
  int i = 0, found = -1;
  const cJSON *it;
  cJSON_ArrayForEach(it, secrets) {
    if (strcmp(it->valuestring, name) == 0) found = i;
    i++;
  }
  if (secret && found < 0) cJSON_AddItemToArray(secrets, cJSON_CreateString(name));
  if (!secret && found >= 0) cJSON_DeleteItemFromArray(secrets, found);
}

cJSON *conn_resolve_env(struct conn *c, cJSON **secretsp) {
  cJSON *env = cJSON_CreateObject();
  cJSON *secrets = secretsp ? cJSON_CreateArray() : NULL;
  if (secretsp) *secretsp = secrets;
  const cJSON *ctr = cJSON_GetArrayItem(conn_jget(c->pod_template, "containers"), 0);
  if (!ctr) return env;
  const cJSON *ef;
  cJSON_ArrayForEach(ef, cJSON_GetObjectItemCaseSensitive(ctr, "envFrom")) {
    const char *prefix = conn_jstr(ef, "prefix") ? conn_jstr(ef, "prefix") : "";
    int secret = conn_jget(ef, "secretRef") != NULL;
    const char *name = conn_jstr(ef, secret ? "secretRef.name" : "configMapRef.name");
    if (!name) continue;
    struct kube_ref r = {"v1", secret ? "secrets" : "configmaps", c->ns, name, NULL};
    struct kube_err e;
    cJSON *o = NULL;
    if (kube_get(c->k, &r, &o, &e) < 0) {
      log_warn("env: %s", e.msg);
      continue;
    }
    const cJSON *kv;
    cJSON_ArrayForEach(kv, conn_jget(o, "data")) {
      char n[300];
      snprintf(n, sizeof n, "%s%s", prefix, kv->string);
      char *v = secret ? base64_decode(kv->valuestring, NULL) : strdup(kv->valuestring);
      cJSON_DeleteItemFromObjectCaseSensitive(env, n);
      cJSON_AddStringToObject(env, n, v ? v : "");
      mark_secret(secrets, n, secret);
      free(v);
    }
    cJSON_Delete(o);
  }
  const cJSON *ev;
  cJSON_ArrayForEach(ev, cJSON_GetObjectItemCaseSensitive(ctr, "env")) {
    const char *name = conn_jstr(ev, "name");
    if (!name) continue;
    char *val = NULL;
    int missing = 0, secret = 0;
    if (conn_jstr(ev, "value")) {
      val = strdup(conn_jstr(ev, "value"));
    } else if (conn_jget(ev, "valueFrom.configMapKeyRef")) {
      val = lookup_ref(c, "configmaps", conn_jstr(ev, "valueFrom.configMapKeyRef.name"),
                       conn_jstr(ev, "valueFrom.configMapKeyRef.key"), &missing);
    } else if (conn_jget(ev, "valueFrom.secretKeyRef")) {
      secret = 1;
      val = lookup_ref(c, "secrets", conn_jstr(ev, "valueFrom.secretKeyRef.name"),
                       conn_jstr(ev, "valueFrom.secretKeyRef.key"), &missing);
    } else if (conn_jstr(ev, "valueFrom.fieldRef.fieldPath")) {
      const char *fp = conn_jstr(ev, "valueFrom.fieldRef.fieldPath");
      if (strcmp(fp, "metadata.namespace") == 0) val = strdup(c->ns);
      else if (strcmp(fp, "metadata.name") == 0) val = strdup("kbridge-local");
      else missing = 1;
    } else {
      missing = 1;
    }
    if (val) {
      cJSON_DeleteItemFromObjectCaseSensitive(env, name);
      cJSON_AddStringToObject(env, name, val);
      mark_secret(secrets, name, secret);
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
    out[i] = in[i] == '-'                     ? '_'
             : (in[i] >= 'a' && in[i] <= 'z') ? (char)(in[i] - 'a' + 'A')
                                              : in[i];
  out[i] = '\0';
}

static void env_default(cJSON *env, const char *name, const char *value) {
  /* As in the pod: a variable the container sets itself wins over a link. */
  if (!cJSON_GetObjectItemCaseSensitive(env, name)) cJSON_AddStringToObject(env, name, value);
}

void conn_service_link(cJSON *env, const char *svc, const char *host, int first,
                       const char *pname, int svc_port, unsigned local) {
  char sn[80], pn[80], name[300], val[400], lp[8], la[300];
  struct hostport hp;
  memset(&hp, 0, sizeof hp);
  snprintf(hp.host, sizeof hp.host, "%s", host);
  hp.port = (int)local;
  addr_format(&hp, la, sizeof la); /* brackets around an IPv6 host */
  link_name(svc, sn, sizeof sn);
  snprintf(lp, sizeof lp, "%u", local);
  snprintf(name, sizeof name, "%s_SERVICE_HOST", sn);
  env_default(env, name, host);
  if (first) {
    snprintf(name, sizeof name, "%s_SERVICE_PORT", sn);
    env_default(env, name, lp);
    snprintf(name, sizeof name, "%s_PORT", sn);
    snprintf(val, sizeof val, "tcp://%s", la);
    env_default(env, name, val);
  }
  if (pname && *pname) {
    link_name(pname, pn, sizeof pn);
    snprintf(name, sizeof name, "%s_SERVICE_PORT_%s", sn, pn);
    env_default(env, name, lp);
  }
  snprintf(name, sizeof name, "%s_PORT_%d_TCP", sn, svc_port);
  snprintf(val, sizeof val, "tcp://%s", la);
  env_default(env, name, val);
  snprintf(name, sizeof name, "%s_PORT_%d_TCP_PROTO", sn, svc_port);
  env_default(env, name, "tcp");
  snprintf(name, sizeof name, "%s_PORT_%d_TCP_PORT", sn, svc_port);
  env_default(env, name, lp);
  snprintf(name, sizeof name, "%s_PORT_%d_TCP_ADDR", sn, svc_port);
  env_default(env, name, host);
}

void conn_forward_service_links(struct conn *c, cJSON *env) {
  const cJSON *esl = conn_jget(c->pod_template, "enableServiceLinks");
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
    const cJSON *p, *ports = conn_jget(s, "spec.ports");
    int first = 1, found = 0;
    cJSON_ArrayForEach(p, ports) {
      const cJSON *port = cJSON_GetObjectItemCaseSensitive(p, "port");
      const char *proto = conn_jstr(p, "protocol") ? conn_jstr(p, "protocol") : "TCP";
      if (cJSON_IsNumber(port) && port->valueint == f->target.port && strcmp(proto, "TCP") == 0) {
        found = 1;
        conn_service_link(env, svc, local.host, first, conn_jstr(p, "name"), port->valueint,
                          (unsigned)local.port);
      }
      first = 0;
    }
    if (!found)
      log_info("--forward to %s:%u: service %s has no TCP port %u, no service links",
               f->target.host, (unsigned)f->target.port, svc, (unsigned)f->target.port);
    cJSON_Delete(s);
  }
}

static void note_var(void *arg, const char *name, const char *msg, int left_out) {
  enum envfmt_format *f = arg;
  if (left_out)
    log_warn("--env-format %s: variable %s left out: %s", envfmt_name(*f), name, msg);
  else
    log_warn("--env-format %s: variable %s: %s", envfmt_name(*f), name, msg);
}

int conn_write_env(struct conn *c, const cJSON *env, const cJSON *secrets, enum envfmt_format f,
                   const char *path) {
  size_t n = (size_t)cJSON_GetArraySize(env), i = 0;
  struct envfmt_var *vars = calloc(n ? n : 1, sizeof *vars);
  if (!vars) {
    conn_fail(c, "out of memory");
    return -1;
  }
  const cJSON *kv, *s;
  cJSON_ArrayForEach(kv, env) {
    vars[i].name = kv->string;
    vars[i].value = cJSON_GetStringValue(kv) ? kv->valuestring : "";
    cJSON_ArrayForEach(s, secrets) if (strcmp(s->valuestring, kv->string) == 0) vars[i].secret = 1;
    i++;
  }
  FILE *out = stdout;
  int fd = -1;
  if (path) {
    /* Secrets go in there: created 0600, never readable by others for a moment. */
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    out = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!out) {
      conn_fail(c, "--env-file %s: %s", path, strerror(errno));
      if (fd >= 0) close(fd);
      free(vars);
      return -1;
    }
    fchmod(fd, 0600); /* an existing file keeps its mode with O_CREAT */
  }
  int rc = envfmt_write(f, out, vars, n, note_var, &f);
  int err = errno;
  free(vars);
  if (path && fclose(out) != 0 && rc >= 0) {
    rc = -1;
    err = errno;
  }
  if (rc < 0) {
    conn_fail(c, "%s%s: %s", path ? "--env-file " : "writing the environment to stdout",
              path ? path : "", strerror(err));
    return -1;
  }
  return 0;
}

/* ---- --env and kbridge.yaml's env: overrides ---- */

/* Where override i was given: "kbridge.yaml:7: env API_URL" or "--env API_URL". */
static void override_where(const struct conn *c, size_t i, char *out, size_t len) {
  const struct envref_overrides *o = &c->cfg->env;
  int line = opt_file_line(c->cfg->file, o->v[i].entry);
  if (line > 0)
    snprintf(out, len, "%s:%d: env %.*s", c->cfg->file->path, line, (int)o->v[i].namelen,
             o->v[i].entry);
  else
    snprintf(out, len, "--env %.*s", (int)o->v[i].namelen, o->v[i].entry);
}

/* "a, b, c" of the names of a list's items (at most len). */
static void list_names(const cJSON *items, const char *path, char *out, size_t len) {
  const cJSON *it;
  size_t o = 0;
  out[0] = '\0';
  cJSON_ArrayForEach(it, items) {
    const char *n = conn_jstr(it, path);
    if (!n || o >= len) continue;
    int w = snprintf(out + o, len - o, "%s%s", o ? ", " : "", n);
    if (w < 0 || (size_t)w >= len - o) {
      snprintf(out + (len > 5 ? len - 5 : 0), len > 5 ? 5 : len, "...");
      break;
    }
    o += (size_t)w;
  }
  if (!out[0]) snprintf(out, len, "none");
}

/* The Service port a reference names in a plan: its index, or -1. */
static int ref_port(const struct svc_fwd *s, const struct envref *r) {
  if (!r->port[0]) return 0;
  for (int i = 0; i < s->nports; i++)
    if (r->portnum ? s->p[i].port == (unsigned)r->portnum : strcmp(s->p[i].pname, r->port) == 0)
      return i;
  return -1;
}

static void plan_ports(const struct svc_fwd *s, char *out, size_t len) {
  size_t o = 0;
  out[0] = '\0';
  for (int i = 0; i < s->nports && o < len; i++) {
    int w = snprintf(out + o, len - o, "%s%u%s%s%s", i ? ", " : "", s->p[i].port,
                     s->p[i].pname[0] ? " (" : "", s->p[i].pname, s->p[i].pname[0] ? ")" : "");
    if (w < 0) break;
    o += (size_t)w;
  }
}

/* The --forward whose target a reference names: its index, or -1. */
static int ref_forward(const struct conn *c, const struct envref *r) {
  for (size_t i = 0; i < c->cfg->forwards.n; i++) {
    const struct opt_forward *f = &c->cfg->forwards.v[i];
    if (strcasecmp(f->target.host, r->name) == 0 && f->target.port == r->portnum) return (int)i;
  }
  return -1;
}

struct refctx {
  struct conn *c;
  int cluster;          /* check: the names against the cluster too */
  int resolve;          /* 1: the values (when the env is built), 0: only check */
  cJSON *services;      /* check: the Services of the namespace (a list's items) */
  cJSON *env;           /* resolve: the env so far */
  const char *where;    /* resolve: for warnings */
};

static int ref_cb(void *arg, const struct envref *r, char *out, size_t len, char *why,
                  size_t whylen) {
  struct refctx *x = arg;
  struct conn *c = x->c;
  char names[600];
  snprintf(out, len, "x");
  switch (r->kind) {
  case ENVREF_SERVICES: {
    if (c->cfg->no_services) {
      snprintf(why, whylen, "--no-services is given, so Services get no local listener (leave "
               "--no-services out, or --forward HOST:PORT and use $(forward:HOST:PORT))");
      return -1;
    }
    if (x->resolve) {
      const struct svc_fwd *s = c->svcs;
      /* the session's namespace: listeners for other namespaces' Services have the same
         short names */
      while (s && (strcmp(s->name, r->name) != 0 || strcmp(s->ns, c->ns) != 0)) s = s->next;
      int i = s ? ref_port(s, r) : -1;
      if (i < 0) {
        snprintf(why, whylen, "Service %s has no local listener%s%s now", r->name,
                 r->port[0] ? " for port " : "", r->port);
        return -1;
      }
      snprintf(out, len, "%s:%u", s->addr, s->p[i].local);
      return 0;
    }
    if (!x->cluster) return 0;
    const cJSON *it, *found = NULL;
    cJSON_ArrayForEach(it, x->services) {
      const char *n = conn_jstr(it, "metadata.name");
      if (n && strcmp(n, r->name) == 0) found = it;
    }
    if (!found) {
      list_names(x->services, "metadata.name", names, sizeof names);
      snprintf(why, whylen, "no Service \"%s\" in namespace %s (its Services: %s)", r->name,
               c->ns, names);
      return -1;
    }
    struct svc_fwd plan;
    const char *pwhy = NULL;
    memset(&plan, 0, sizeof plan);
    if (takeover_is_managed(found) || conn_service_plan(c, found, &plan, &pwhy) < 0) {
      snprintf(why, whylen, "Service %s gets no local listener (%s)", r->name,
               pwhy ? pwhy : "it is kbridge's own");
      return -1;
    }
    if (ref_port(&plan, r) < 0) {
      plan_ports(&plan, names, sizeof names);
      snprintf(why, whylen, "Service %s has no TCP port %s (its ports: %s)", r->name, r->port,
               names);
      return -1;
    }
    return 0;
  }
  case ENVREF_FORWARD: {
    int i = ref_forward(c, r);
    if (i < 0) {
      size_t o = 0;
      names[0] = '\0';
      for (size_t k = 0; k < c->cfg->forwards.n && o < sizeof names; k++) {
        char t[300];
        int w = snprintf(names + o, sizeof names - o, "%s%s", k ? ", " : "",
                         addr_format(&c->cfg->forwards.v[k].target, t, sizeof t));
        if (w < 0) break;
        o += (size_t)w;
      }
      snprintf(why, whylen, "no --forward to %s:%d (%s%s)", r->name, r->portnum,
               names[0] ? "forwards to: " : "no --forward is given", names);
      return -1;
    }
    if (!x->resolve) return 0;
    struct hostport local;
    char aerr[300];
    if (!c->fwd_bound[i][0] || addr_parse(c->fwd_bound[i], 0, &local, aerr, sizeof aerr) < 0) {
      snprintf(why, whylen, "the --forward to %s:%d is not listening", r->name, r->portnum);
      return -1;
    }
    if (strcmp(local.host, "0.0.0.0") == 0) snprintf(local.host, sizeof local.host, "127.0.0.1");
    if (strcmp(local.host, "::") == 0) snprintf(local.host, sizeof local.host, "::1");
    addr_format(&local, out, len);
    return 0;
  }
  case ENVREF_VOLUMES:
    /* the pod spec is known once inspect has read it */
    if (!x->resolve && !x->cluster) return 0;
    return conn_volume_dir(c, r->name, out, len, why, whylen);
  case ENVREF_ENV:
    if (!x->resolve) return 0;
    {
      const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(x->env, r->name));
      if (!v) log_warn("%s: $(env:%s): no such variable; it expands to \"\"", x->where, r->name);
      snprintf(out, len, "%s", v ? v : "");
    }
    return 0;
  }
  snprintf(why, whylen, "unknown reference kind");
  return -1;
}

int conn_env_refs_check(struct conn *c, int cluster) {
  const struct envref_overrides *o = &c->cfg->env;
  struct refctx x = {c, cluster, 0, NULL, NULL, NULL};
  char where[400], err[1200];
  int rc = 0;
  if (o->n == 0) return 0;
  if (cluster && !c->cfg->no_services && envref_uses(o, ENVREF_SERVICES)) {
    struct kube_ref r = {"v1", "services", c->ns, NULL, NULL};
    struct kube_err e;
    cJSON *list = NULL;
    if (kube_list(c->k, &r, NULL, &list, &e) < 0) {
      c->reason = connect_kube_reason(&e);
      conn_fail(c, "the env overrides name Services, which cannot be listed: %s", e.msg);
      return -1;
    }
    x.services = cJSON_DetachItemFromObjectCaseSensitive(list, "items");
    cJSON_Delete(list);
  }
  for (size_t i = 0; i < o->n && rc == 0; i++) {
    if (envref_expand(o->v[i].entry + o->v[i].namelen + 1, ref_cb, &x, NULL, err, sizeof err) <
        0) {
      override_where(c, i, where, sizeof where);
      c->reason = "bad_flag";
      conn_fail(c, "%s: %s", where, err);
      rc = -1;
    }
  }
  cJSON_Delete(x.services);
  return rc;
}

int conn_env_refs_precheck(struct conn *c) {
  if (c->cfg->env.n == 0) return 0;
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) return 0; /* the real inspect checks it all the same, later */
  if (pid == 0) {
    int out = dup(STDOUT_FILENO), err = dup(STDERR_FILENO);
    int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (out < 0 || err < 0 || null < 0) _exit(0);
    dup2(null, STDOUT_FILENO); /* the reads' failures are the real inspect's to report */
    dup2(null, STDERR_FILENO);
    c->quiet = 1;
    int ok = conn_open(c, &c->cfg->kf) == 0 && conn_read_service(c) == 0;
    if (ok && takeover_annotation(c->service, TAKEOVER_ANN_TAKEOVER))
      conn_takeover_template(c);
    else if (ok)
      ok = conn_selector(c) == 0 && conn_selected_workloads(c) == 0;
    fflush(stdout);
    fflush(stderr);
    if (!ok) _exit(0);
    dup2(out, STDOUT_FILENO);
    dup2(err, STDERR_FILENO);
    c->quiet = 0;
    int rc = conn_env_refs_check(c, 1);
    fflush(stdout);
    fflush(stderr);
    _exit(rc < 0 ? 2 : 0);
  }
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(st) && WEXITSTATUS(st) == 2 ? -1 : 0;
}

void conn_env_overrides(struct conn *c, cJSON *env) {
  const struct envref_overrides *o = &c->cfg->env;
  char where[400], err[1200], name[300];
  for (size_t i = 0; i < o->n; i++) {
    override_where(c, i, where, sizeof where);
    struct refctx x = {c, 1, 1, NULL, env, where};
    char *val = NULL;
    if (envref_expand(o->v[i].entry + o->v[i].namelen + 1, ref_cb, &x, &val, err, sizeof err) <
        0) {
      log_warn("%s: %s; the variable is left as it was", where, err);
      continue;
    }
    snprintf(name, sizeof name, "%.*s", (int)o->v[i].namelen, o->v[i].entry);
    cJSON_DeleteItemFromObjectCaseSensitive(env, name);
    cJSON_AddStringToObject(env, name, val);
    log_info("%s: set (%zu bytes)", where, strlen(val)); /* values may be secrets */
    free(val);
  }
}
