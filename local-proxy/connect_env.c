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
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>

#include <cjson/cJSON.h>

#include "base64.h"
#include "dnslabel.h"
#include "kube.h"

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
