/* kubeconfig.c: load kubeconfig files with libyaml and resolve one context.
 *
 * Each file is loaded as a libyaml document tree and kept until the context is
 * resolved; lookups walk the files in order, so "the first file defining a
 * name wins" falls out of the search order rather than from a merged copy.
 * Only the chosen context, its cluster and its user are validated, like
 * kubectl, so a broken entry elsewhere in a big merged config does not block
 * work. */
#include "kubeconfig.h"

#include <errno.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "base64.h"
#include "incluster.h"

#define MAX_FILES 32

struct kfile {
  char *path;    /* as given */
  char *shown;   /* for messages: $HOME -> ~ */
  char *dir;     /* directory, for relative paths */
  yaml_document_t doc;
  yaml_node_t *root; /* NULL for an empty file */
};

struct loader {
  struct kfile files[MAX_FILES];
  int nfiles;
  char *err;
  size_t errlen;
};

/* An entry found by name: the file it came from and its inner map
 * (the value of "cluster:", "user:" or "context:"). */
struct entry {
  struct kfile *f;
  yaml_node_t *item;  /* the list item (has "name") */
  yaml_node_t *body;  /* inner map, or NULL if absent */
};

static void seterr(struct loader *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void seterr(struct loader *L, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(L->err, L->errlen, fmt, ap);
  va_end(ap);
}

static char *xstrdup(const char *s) {
  if (!s) return NULL;
  char *p = strdup(s);
  if (!p) abort();
  return p;
}

static const char *home_dir(void) {
  const char *h = getenv("HOME");
  if (h && *h) return h;
  struct passwd *pw = getpwuid(getuid());
  return pw ? pw->pw_dir : NULL;
}

const char *kubeconfig_display_path(const char *path, char *buf, size_t buflen) {
  const char *h = home_dir();
  size_t hl = h ? strlen(h) : 0;
  if (h && hl > 1 && strncmp(path, h, hl) == 0 && path[hl] == '/')
    snprintf(buf, buflen, "~%s", path + hl);
  else
    snprintf(buf, buflen, "%s", path);
  return buf;
}

/* ---- YAML tree helpers ---- */

static yaml_node_t *node(struct kfile *f, yaml_node_item_t id) {
  return yaml_document_get_node(&f->doc, id);
}

static const char *scalar_str(yaml_node_t *n) {
  if (!n || n->type != YAML_SCALAR_NODE) return NULL;
  return (const char *)n->data.scalar.value;
}

static yaml_node_t *map_get(struct kfile *f, yaml_node_t *map, const char *key) {
  if (!map || map->type != YAML_MAPPING_NODE) return NULL;
  for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
    const char *k = scalar_str(node(f, p->key));
    if (k && strcmp(k, key) == 0) return node(f, p->value);
  }
  return NULL;
}

static int is_null(yaml_node_t *n) {
  if (!n) return 1;
  if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return 0;
  const char *s = scalar_str(n);
  return strcmp(s, "") == 0 || strcmp(s, "null") == 0 || strcmp(s, "~") == 0;
}

/* Read a string key. Returns 0 with *out (NULL when absent or null), or -1 with
 * an error when the value is a list or map. `what` names the owner in errors. */
static int get_str(struct loader *L, struct kfile *f, yaml_node_t *map, const char *key,
                   const char *what, const char **out) {
  yaml_node_t *v = map_get(f, map, key);
  *out = NULL;
  if (is_null(v)) return 0;
  if (v->type != YAML_SCALAR_NODE) {
    seterr(L, "%s:%lu: %s: %s must be a string", f->shown, (unsigned long)v->start_mark.line + 1,
           what, key);
    return -1;
  }
  *out = scalar_str(v);
  return 0;
}

static int get_bool(struct loader *L, struct kfile *f, yaml_node_t *map, const char *key,
                    const char *what, int *out) {
  const char *s;
  if (get_str(L, f, map, key, what, &s) < 0) return -1;
  *out = 0;
  if (!s) return 0;
  if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE")) {
    *out = 1;
  } else if (strcmp(s, "false") && strcmp(s, "False") && strcmp(s, "FALSE")) {
    seterr(L, "%s: %s: %s must be true or false, not \"%s\"", f->shown, what, key, s);
    return -1;
  }
  return 0;
}

/* ---- files ---- */

static int load_file(struct loader *L, const char *path) {
  if (L->nfiles == MAX_FILES) {
    seterr(L, "too many kubeconfig files (more than %d)", MAX_FILES);
    return -1;
  }
  struct kfile *f = &L->files[L->nfiles];
  memset(f, 0, sizeof *f);
  char buf[4096];
  f->path = xstrdup(path);
  f->shown = xstrdup(kubeconfig_display_path(path, buf, sizeof buf));
  const char *slash = strrchr(path, '/');
  if (slash)
    f->dir = strndup(path, slash == path ? 1 : (size_t)(slash - path));
  else
    f->dir = getcwd(NULL, 0);
  if (!f->dir) abort();

  FILE *fp = fopen(path, "rb");
  if (!fp) {
    seterr(L, "%s: %s", f->shown, strerror(errno));
    free(f->path), free(f->shown), free(f->dir);
    return -1;
  }
  yaml_parser_t p;
  yaml_parser_initialize(&p);
  yaml_parser_set_input_file(&p, fp);
  int ok = yaml_parser_load(&p, &f->doc);
  if (!ok) {
    seterr(L, "%s:%lu:%lu: invalid YAML: %s%s%s", f->shown, (unsigned long)p.problem_mark.line + 1,
           (unsigned long)p.problem_mark.column + 1, p.problem ? p.problem : "parse error",
           p.context ? " " : "", p.context ? p.context : "");
    yaml_parser_delete(&p);
    fclose(fp);
    free(f->path), free(f->shown), free(f->dir);
    return -1;
  }
  yaml_parser_delete(&p);
  fclose(fp);
  L->nfiles++;
  f->root = yaml_document_get_root_node(&f->doc);
  if (f->root && is_null(f->root)) f->root = NULL;
  if (f->root && f->root->type != YAML_MAPPING_NODE) {
    seterr(L, "%s:%lu: the top level must be a map (apiVersion, clusters, users, contexts, ...)",
           f->shown, (unsigned long)f->root->start_mark.line + 1);
    return -1;
  }
  return 0;
}

static void loader_free(struct loader *L) {
  for (int i = 0; i < L->nfiles; i++) {
    yaml_document_delete(&L->files[i].doc);
    free(L->files[i].path);
    free(L->files[i].shown);
    free(L->files[i].dir);
  }
}

/* Find the list entry `name` in section `section` ("clusters", "users",
 * "contexts"), first file first. Returns 1 found, 0 not found, -1 on a
 * malformed section (err set). */
static int find_entry(struct loader *L, const char *section, const char *inner, const char *name,
                      struct entry *out) {
  for (int i = 0; i < L->nfiles; i++) {
    struct kfile *f = &L->files[i];
    yaml_node_t *list = map_get(f, f->root, section);
    if (is_null(list)) continue;
    if (list->type != YAML_SEQUENCE_NODE) {
      seterr(L, "%s:%lu: %s must be a list", f->shown, (unsigned long)list->start_mark.line + 1,
             section);
      return -1;
    }
    for (yaml_node_item_t *it = list->data.sequence.items.start; it < list->data.sequence.items.top;
         it++) {
      yaml_node_t *item = node(f, *it);
      if (!item || item->type != YAML_MAPPING_NODE) {
        seterr(L, "%s:%lu: each entry of %s must be a map with name and %s", f->shown,
               (unsigned long)(item ? item->start_mark.line + 1 : 0), section, inner);
        return -1;
      }
      const char *n = scalar_str(map_get(f, item, "name"));
      if (n && strcmp(n, name) == 0) {
        out->f = f;
        out->item = item;
        out->body = map_get(f, item, inner);
        if (is_null(out->body)) out->body = NULL;
        if (out->body && out->body->type != YAML_MAPPING_NODE) {
          seterr(L, "%s:%lu: %s \"%s\": %s must be a map", f->shown,
                 (unsigned long)out->body->start_mark.line + 1, inner, name, inner);
          return -1;
        }
        return 1;
      }
    }
  }
  return 0;
}

/* Names defined in a section, for "not defined" errors: "a, b, c". */
static void list_names(struct loader *L, const char *section, char *buf, size_t len) {
  size_t used = 0;
  buf[0] = 0;
  for (int i = 0; i < L->nfiles; i++) {
    struct kfile *f = &L->files[i];
    yaml_node_t *list = map_get(f, f->root, section);
    if (!list || list->type != YAML_SEQUENCE_NODE) continue;
    for (yaml_node_item_t *it = list->data.sequence.items.start; it < list->data.sequence.items.top;
         it++) {
      const char *n = scalar_str(map_get(f, node(f, *it), "name"));
      if (!n) continue;
      int w = snprintf(buf + used, len - used, "%s%s", used ? ", " : "", n);
      if (w < 0 || (size_t)w >= len - used) return;
      used += (size_t)w;
    }
  }
}

/* ---- values ---- */

/* Absolute path: `p` resolved against the directory of the file defining it. */
static char *resolve_path(struct kfile *f, const char *p) {
  if (!p) return NULL;
  if (p[0] == '/') return xstrdup(p);
  size_t n = strlen(f->dir) + strlen(p) + 2;
  char *r = malloc(n);
  if (!r) abort();
  snprintf(r, n, "%s/%s", f->dir, p);
  return r;
}

static int get_path(struct loader *L, struct entry *e, const char *key, const char *what,
                    char **out) {
  const char *s;
  if (get_str(L, e->f, e->body, key, what, &s) < 0) return -1;
  *out = resolve_path(e->f, s);
  return 0;
}

static int get_b64(struct loader *L, struct entry *e, const char *key, const char *what,
                   char **out) {
  const char *s;
  *out = NULL;
  if (get_str(L, e->f, e->body, key, what, &s) < 0) return -1;
  if (!s) return 0;
  *out = base64_decode(s, NULL);
  if (!*out) {
    seterr(L, "%s: %s: %s is not valid base64", e->f->shown, what, key);
    return -1;
  }
  return 0;
}

/* x's list `key` into *seq and its length into *n (NULL and 0 when absent).
 * Anything but a list: -1 with "<file>:<line>: <w>: <key> must be <shape>". */
static int get_list(struct loader *L, struct kfile *f, yaml_node_t *x, const char *key,
                    const char *w, const char *shape, yaml_node_t **seq, size_t *n) {
  *seq = map_get(f, x, key);
  *n = 0;
  if (is_null(*seq)) return 0;
  if ((*seq)->type != YAML_SEQUENCE_NODE) {
    seterr(L, "%s:%lu: %s: %s must be %s", f->shown, (unsigned long)(*seq)->start_mark.line + 1, w,
           key, shape);
    return -1;
  }
  *n = (size_t)((*seq)->data.sequence.items.top - (*seq)->data.sequence.items.start);
  return 0;
}

static int load_exec(struct loader *L, struct entry *u, const char *what, yaml_node_t *x,
                     struct kube_exec_config **out) {
  struct kfile *f = u->f;
  if (x->type != YAML_MAPPING_NODE) {
    seterr(L, "%s:%lu: %s: exec must be a map", f->shown, (unsigned long)x->start_mark.line + 1,
           what);
    return -1;
  }
  struct kube_exec_config *e = calloc(1, sizeof *e);
  if (!e) abort();
  *out = e;
  char w[320];
  snprintf(w, sizeof w, "%s: exec", what);
  const char *s;
  if (get_str(L, f, x, "apiVersion", w, &s) < 0) return -1;
  if (!s) {
    seterr(L, "%s: %s: apiVersion is missing (client.authentication.k8s.io/v1 or v1beta1)",
           f->shown, w);
    return -1;
  }
  if (strcmp(s, "client.authentication.k8s.io/v1") &&
      strcmp(s, "client.authentication.k8s.io/v1beta1")) {
    seterr(L,
           "%s: %s: apiVersion \"%s\" is not supported (client.authentication.k8s.io/v1 or v1beta1)",
           f->shown, w, s);
    return -1;
  }
  e->api_version = xstrdup(s);
  if (get_str(L, f, x, "command", w, &s) < 0) return -1;
  if (!s || !*s) {
    seterr(L, "%s: %s: command is missing", f->shown, w);
    return -1;
  }
  e->command = (strchr(s, '/') && s[0] != '/') ? resolve_path(f, s) : xstrdup(s);
  if (get_str(L, f, x, "installHint", w, &s) < 0) return -1;
  e->install_hint = xstrdup(s);
  if (get_bool(L, f, x, "provideClusterInfo", w, &e->provide_cluster_info) < 0) return -1;
  if (get_str(L, f, x, "interactiveMode", w, &s) < 0) return -1;
  if (s && strcmp(s, "Never") && strcmp(s, "IfAvailable") && strcmp(s, "Always")) {
    seterr(L, "%s: %s: interactiveMode must be Never, IfAvailable or Always, not \"%s\"", f->shown,
           w, s);
    return -1;
  }
  /* interactiveMode: we never give the plugin a terminal (stdin is /dev/null),
   * which is what Never means; IfAvailable works the same way. Always cannot be
   * honoured and is reported by the plugin itself if it needs a terminal. */

  yaml_node_t *args;
  size_t na;
  if (get_list(L, f, x, "args", w, "a list of strings", &args, &na) < 0) return -1;
  e->args = calloc(na + 1, sizeof(char *));
  if (!e->args) abort();
  for (size_t i = 0; i < na; i++) {
    const char *a = scalar_str(node(f, args->data.sequence.items.start[i]));
    if (!a) {
      seterr(L, "%s: %s: args[%zu] must be a string", f->shown, w, i);
      return -1;
    }
    e->args[i] = xstrdup(a);
  }

  yaml_node_t *env;
  size_t ne;
  if (get_list(L, f, x, "env", w, "a list of {name, value}", &env, &ne) < 0) return -1;
  /* the args loop's shape (duplicates), but an item is a {name, value} map */
  e->env = calloc(ne + 1, sizeof(char *));
  if (!e->env) abort();
  for (size_t i = 0; i < ne; i++) {
    yaml_node_t *it = node(f, env->data.sequence.items.start[i]);
    const char *n = scalar_str(map_get(f, it, "name"));
    const char *v = scalar_str(map_get(f, it, "value"));
    if (!n || !*n || strchr(n, '=')) {
      seterr(L, "%s: %s: env[%zu] needs a name (without '=')", f->shown, w, i);
      return -1;
    }
    size_t len = strlen(n) + (v ? strlen(v) : 0) + 2;
    e->env[i] = malloc(len);
    if (!e->env[i]) abort();
    snprintf(e->env[i], len, "%s=%s", n, v ? v : "");
  }
  return 0;
}

static void exec_free(struct kube_exec_config *e) {
  if (!e) return;
  free(e->api_version);
  free(e->command);
  free(e->install_hint);
  for (char **p = e->args; p && *p; p++) free(*p);
  for (char **p = e->env; p && *p; p++) free(*p);
  free(e->args);
  free(e->env);
  free(e);
}

void kubeconfig_free(struct kubeconfig *kc) {
  if (!kc) return;
  free(kc->origin);
  free(kc->context);
  free(kc->cluster_name);
  free(kc->user_name);
  free(kc->namespace);
  free(kc->server);
  free(kc->ca_file);
  free(kc->ca_pem);
  free(kc->tls_server_name);
  free(kc->proxy_url);
  free(kc->token);
  free(kc->token_file);
  free(kc->client_cert_file);
  free(kc->client_key_file);
  free(kc->client_cert_pem);
  free(kc->client_key_pem);
  free(kc->username);
  free(kc->password);
  exec_free(kc->exec);
  free(kc);
}

/* ---- resolution ---- */

static int resolve_cluster(struct loader *L, struct entry *c, struct kubeconfig *kc) {
  char what[300];
  snprintf(what, sizeof what, "cluster \"%s\"", kc->cluster_name);
  if (!c->body) {
    seterr(L, "%s: %s has no cluster section (server, certificate-authority, ...)", c->f->shown,
           what);
    return -1;
  }
  const char *s;
  if (get_str(L, c->f, c->body, "server", what, &s) < 0) return -1;
  if (!s || !*s) {
    seterr(L, "%s: %s has no server", c->f->shown, what);
    return -1;
  }
  if (strncmp(s, "https://", 8) && strncmp(s, "http://", 7)) {
    if (strstr(s, "://")) {
      seterr(L, "%s: %s: server \"%s\" must be an https:// or http:// URL", c->f->shown, what, s);
      return -1;
    }
    size_t n = strlen(s) + 9;
    kc->server = malloc(n);
    if (!kc->server) abort();
    snprintf(kc->server, n, "https://%s", s);
  } else {
    kc->server = xstrdup(s);
  }
  size_t sl = strlen(kc->server);
  while (sl > 0 && kc->server[sl - 1] == '/') kc->server[--sl] = 0;
  if (get_path(L, c, "certificate-authority", what, &kc->ca_file) < 0) return -1;
  if (get_b64(L, c, "certificate-authority-data", what, &kc->ca_pem) < 0) return -1;
  if (get_bool(L, c->f, c->body, "insecure-skip-tls-verify", what, &kc->insecure_skip_tls_verify) < 0)
    return -1;
  if (get_str(L, c->f, c->body, "tls-server-name", what, &s) < 0) return -1;
  kc->tls_server_name = xstrdup(s);
  if (get_str(L, c->f, c->body, "proxy-url", what, &s) < 0) return -1;
  kc->proxy_url = xstrdup(s);
  return 0;
}

static int resolve_user(struct loader *L, struct entry *u, struct kubeconfig *kc) {
  char what[300];
  snprintf(what, sizeof what, "user \"%s\"", kc->user_name);
  if (!u->body) return 0; /* a user with no credentials: anonymous */
  const char *s;
  if (get_str(L, u->f, u->body, "token", what, &s) < 0) return -1;
  kc->token = xstrdup(s);
  if (get_path(L, u, "tokenFile", what, &kc->token_file) < 0) return -1;
  if (get_path(L, u, "client-certificate", what, &kc->client_cert_file) < 0) return -1;
  if (get_path(L, u, "client-key", what, &kc->client_key_file) < 0) return -1;
  if (get_b64(L, u, "client-certificate-data", what, &kc->client_cert_pem) < 0) return -1;
  if (get_b64(L, u, "client-key-data", what, &kc->client_key_pem) < 0) return -1;
  int has_cert = kc->client_cert_file || kc->client_cert_pem;
  int has_key = kc->client_key_file || kc->client_key_pem;
  if (has_cert != has_key) {
    seterr(L, "%s: %s has a %s but no %s", u->f->shown, what,
           has_cert ? "client certificate" : "client key",
           has_cert ? "client-key or client-key-data" : "client-certificate or client-certificate-data");
    return -1;
  }
  if (get_str(L, u->f, u->body, "username", what, &s) < 0) return -1;
  kc->username = xstrdup(s);
  if (get_str(L, u->f, u->body, "password", what, &s) < 0) return -1;
  kc->password = xstrdup(s);
  yaml_node_t *x = map_get(u->f, u->body, "exec");
  if (!is_null(x) && load_exec(L, u, what, x, &kc->exec) < 0) return -1;
  if (!is_null(map_get(u->f, u->body, "auth-provider"))) {
    if (!kc->token && !kc->token_file && !kc->exec && !has_cert) {
      seterr(L, "%s: %s uses auth-provider, which kbridge does not support; use an exec plugin",
             u->f->shown, what);
      return -1;
    }
  }
  return 0;
}

static int resolve(struct loader *L, const struct kubeconfig_opts *o, const char *source,
                   struct kubeconfig **out) {
  const char *ctx = o && o->context && *o->context ? o->context : NULL;
  if (!ctx) {
    for (int i = 0; i < L->nfiles && !ctx; i++) {
      const char *s = scalar_str(map_get(&L->files[i], L->files[i].root, "current-context"));
      if (s && *s) ctx = s;
    }
  }
  char names[512];
  if (!ctx) {
    list_names(L, "contexts", names, sizeof names);
    seterr(L, "%s: no current-context is set; choose one with --context%s%s%s", source,
           names[0] ? " (defined: " : "", names, names[0] ? ")" : "");
    return -1;
  }
  struct entry ce, cl, us;
  int r = find_entry(L, "contexts", "context", ctx, &ce);
  if (r < 0) return -1;
  if (r == 0) {
    list_names(L, "contexts", names, sizeof names);
    seterr(L, "%s: context \"%s\"%s is not defined%s%s%s", source, ctx,
           o && o->context && *o->context ? " (from --context)" : " (current-context)",
           names[0] ? " (defined: " : "", names, names[0] ? ")" : "");
    return -1;
  }
  if (!ce.body) {
    seterr(L, "%s: context \"%s\" has no context section (cluster, user, namespace)", ce.f->shown, ctx);
    return -1;
  }
  struct kubeconfig *kc = calloc(1, sizeof *kc);
  if (!kc) abort();
  kc->origin = xstrdup(ce.f->path);
  kc->context = xstrdup(ctx);
  char what[300];
  snprintf(what, sizeof what, "context \"%s\"", ctx);
  const char *cluster, *user, *ns;
  if (get_str(L, ce.f, ce.body, "cluster", what, &cluster) < 0 ||
      get_str(L, ce.f, ce.body, "user", what, &user) < 0 ||
      get_str(L, ce.f, ce.body, "namespace", what, &ns) < 0)
    goto fail;
  if (!cluster || !*cluster) {
    seterr(L, "%s: context \"%s\" names no cluster", ce.f->shown, ctx);
    goto fail;
  }
  kc->cluster_name = xstrdup(cluster);
  if ((r = find_entry(L, "clusters", "cluster", cluster, &cl)) < 0) goto fail;
  if (r == 0) {
    seterr(L, "%s: context \"%s\" names cluster \"%s\" which is not defined", ce.f->shown, ctx,
           cluster);
    goto fail;
  }
  if (resolve_cluster(L, &cl, kc) < 0) goto fail;
  if (user && *user) {
    kc->user_name = xstrdup(user);
    if ((r = find_entry(L, "users", "user", user, &us)) < 0) goto fail;
    if (r == 0) {
      seterr(L, "%s: context \"%s\" names user \"%s\" which is not defined", ce.f->shown, ctx, user);
      goto fail;
    }
    if (resolve_user(L, &us, kc) < 0) goto fail;
  }
  if (o && o->namespace && *o->namespace) ns = o->namespace;
  kc->namespace = xstrdup(ns && *ns ? ns : "default");
  *out = kc;
  return 0;
fail:
  kubeconfig_free(kc);
  return -1;
}

int kubeconfig_load(const struct kubeconfig_opts *o, struct kubeconfig **out, char *err,
                    size_t errlen) {
  struct loader L;
  memset(&L, 0, sizeof L);
  L.err = err;
  L.errlen = errlen;
  *out = NULL;
  char source[1024];
  int rc = -1;
  const char *env = getenv("KUBECONFIG");
  if (o && o->path && *o->path) {
    if (load_file(&L, o->path) < 0) goto done;
    snprintf(source, sizeof source, "%s", L.files[0].shown);
  } else if (env && *env) {
    char *copy = xstrdup(env), *save = NULL;
    size_t used = 0;
    source[0] = 0;
    for (char *p = strtok_r(copy, ":", &save); p; p = strtok_r(NULL, ":", &save)) {
      int dup = 0;
      for (int i = 0; i < L.nfiles; i++) dup |= strcmp(L.files[i].path, p) == 0;
      if (dup || access(p, F_OK) != 0) continue; /* kubectl skips missing files */
      if (load_file(&L, p) < 0) {
        free(copy);
        goto done;
      }
      int w = snprintf(source + used, sizeof source - used, "%s%s", used ? ":" : "",
                       L.files[L.nfiles - 1].shown);
      if (w > 0 && (size_t)w < sizeof source - used) used += (size_t)w;
    }
    free(copy);
    if (L.nfiles == 0) {
      seterr(&L, "no kubeconfig: none of the files in KUBECONFIG=%s exists", env);
      goto done;
    }
  } else {
    const char *h = home_dir();
    if (!h) {
      seterr(&L, "no kubeconfig: HOME is not set; pass --kubeconfig");
      goto done;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/.kube/config", h);
    if (access(path, F_OK) != 0) {
      seterr(&L, "no kubeconfig: ~/.kube/config does not exist; set KUBECONFIG or pass --kubeconfig");
      goto done;
    }
    if (load_file(&L, path) < 0) goto done;
    snprintf(source, sizeof source, "%s", L.files[0].shown);
  }
  rc = resolve(&L, o, source, out);
done:
  loader_free(&L);
  return rc;
}

int kubeconfig_load_incluster(const char *ns_override, struct kubeconfig **out, char *err,
                              size_t errlen) {
  *out = NULL;
  struct incluster sa;
  char why[8400];
  if (incluster_check(&sa, why, sizeof why) < 0) {
    snprintf(err, errlen, "%s%s", sa.host ? "in-cluster config: " : "", why);
    return -1;
  }
  struct kubeconfig *kc = calloc(1, sizeof *kc);
  if (!kc) abort();
  kc->origin = xstrdup("in-cluster");
  kc->token_file = xstrdup(sa.token_path);
  kc->ca_file = xstrdup(sa.ca_path);
  size_t n = strlen(sa.host) + strlen(sa.port) + 16;
  kc->server = malloc(n);
  if (!kc->server) abort();
  if (strchr(sa.host, ':'))
    snprintf(kc->server, n, "https://[%s]:%s", sa.host, sa.port);
  else
    snprintf(kc->server, n, "https://%s:%s", sa.host, sa.port);
  if (ns_override && *ns_override)
    kc->namespace = xstrdup(ns_override);
  else
    kc->namespace = xstrdup(sa.namespace[0] ? sa.namespace : "default");
  *out = kc;
  return 0;
}
