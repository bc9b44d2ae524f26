/* test_kube_cluster.c: the API client against a real kube-apiserver (the
 * local cluster of tests/cluster, started by run_cluster_test.sh).
 *
 * usage: test_kube_cluster ADMIN_KUBECONFIG RESTRICTED_KUBECONFIG ADMIN_TOKEN
 *
 * In a namespace of its own: create/get/list(labelSelector)/the three patch
 * kinds (strategic merge checked to merge a Service's ports by key where a
 * merge patch replaces them)/409 AlreadyExists and the update-retry helper on
 * a real conflict/422 and 404 messages/delete with Foreground propagation,
 * blocking and async watches, the 403 message for the restricted user, an
 * exec plugin whose first token the server rejects, token and client-cert
 * contexts, and a TLS connection made from kube_ssl_ctx_new(). */
#include <arpa/inet.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "kube.h"
#include "kubeconfig.h"

#define CHECK_HAS(s, sub)                                                           \
  do {                                                                              \
    const char *hs_ = (s);                                                          \
    CHECK(hs_ && strstr(hs_, (sub)));                                               \
    if (!(hs_ && strstr(hs_, (sub)))) fprintf(stderr, "  got: %s\n  want: %s\n", hs_, (sub)); \
  } while (0)

static const char *admin_cfg, *restricted_cfg, *admin_token;
static char ns[64];
static char dir[256];

static struct kube *client(const char *path, const char *context) {
  struct kubeconfig_opts o = {path, context, NULL};
  struct kubeconfig *kc;
  char err[512];
  if (kubeconfig_load(&o, &kc, err, sizeof err) < 0) {
    fprintf(stderr, "kubeconfig: %s\n", err);
    exit(2);
  }
  struct kube *k = kube_new(kc, err, sizeof err);
  if (!k) {
    fprintf(stderr, "kube_new: %s\n", err);
    exit(2);
  }
  return k;
}

static cJSON *parse(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static cJSON *parse(const char *fmt, ...) {
  char buf[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  cJSON *j = cJSON_Parse(buf);
  if (!j) {
    fprintf(stderr, "bad JSON in test: %s\n", buf);
    exit(2);
  }
  return j;
}

static const char *str_at(cJSON *o, const char *a, const char *b) {
  return cJSON_GetStringValue(
      cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(o, a), b));
}

static void test_crud(struct kube *k) {
  struct kube_err e;
  cJSON *out = NULL;
  struct kube_ref cms = {"v1", "configmaps", ns, NULL, NULL};
  cJSON *o = parse("{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"%s\","
                   "\"labels\":{\"app\":\"x\"}},\"data\":{\"a\":\"1\"}}", "cm1");
  CHECK_EQ_INT(kube_create(k, &cms, o, &out, &e), 0);
  CHECK(str_at(out, "metadata", "uid") != NULL);
  cJSON_Delete(out);
  CHECK_EQ_INT(kube_create(k, &cms, o, NULL, &e), -1);
  CHECK_EQ_INT(e.status, 409);
  CHECK_EQ_STR(e.reason, "AlreadyExists");
  printf("409: %s\n", e.msg);
  CHECK_HAS(e.msg, "create configmaps \"cm1\" in namespace");
  CHECK_HAS(e.msg, "already exists");
  cJSON_Delete(o);
  o = parse("{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"%s\","
            "\"labels\":{\"app\":\"y\"}}}", "cm2");
  CHECK_EQ_INT(kube_create(k, &cms, o, NULL, &e), 0);
  cJSON_Delete(o);
  o = parse("{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"%s\"}}", "Bad_Name");
  CHECK_EQ_INT(kube_create(k, &cms, o, NULL, &e), -1);
  CHECK_EQ_INT(e.status, 422);
  printf("422: %s\n", e.msg);
  CHECK_HAS(e.msg, "invalid: ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value");
  cJSON_Delete(o);

  CHECK_EQ_INT(kube_list(k, &cms, "app=x", &out, &e), 0);
  cJSON *items = cJSON_GetObjectItemCaseSensitive(out, "items");
  CHECK_EQ_INT(cJSON_GetArraySize(items), 1);
  CHECK_EQ_STR(str_at(cJSON_GetArrayItem(items, 0), "metadata", "name"), "cm1");
  cJSON_Delete(out);

  struct kube_ref cm1 = {"v1", "configmaps", ns, "cm1", NULL};
  CHECK_EQ_INT(kube_patch(k, &cm1, KUBE_PATCH_MERGE, "{\"data\":{\"b\":\"2\"}}", &out, &e), 0);
  CHECK_EQ_STR(str_at(out, "data", "b"), "2");
  cJSON_Delete(out);
  CHECK_EQ_INT(kube_patch(k, &cm1, KUBE_PATCH_JSON,
                          "[{\"op\":\"replace\",\"path\":\"/data/a\",\"value\":\"9\"}]", &out, &e), 0);
  CHECK_EQ_STR(str_at(out, "data", "a"), "9");
  cJSON_Delete(out);
  CHECK_EQ_INT(kube_patch(k, &cm1, KUBE_PATCH_JSON,
                          "[{\"op\":\"test\",\"path\":\"/data/a\",\"value\":\"0\"}]", NULL, &e), -1);
  printf("json-patch test failure (%ld): %s\n", e.status, e.msg);
  CHECK(e.status == 422 || e.status == 500);
  CHECK_HAS(e.msg, "patch configmaps \"cm1\" in namespace");

  /* strategic merge: Service ports merge by port; a merge patch replaces the list */
  struct kube_ref svcs = {"v1", "services", ns, NULL, NULL};
  o = parse("{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{\"name\":\"%s\"},"
            "\"spec\":{\"selector\":{\"app\":\"x\"},\"ports\":[{\"name\":\"http\",\"port\":80}]}}", "svc1");
  CHECK_EQ_INT(kube_create(k, &svcs, o, NULL, &e), 0);
  cJSON_Delete(o);
  struct kube_ref svc1 = {"v1", "services", ns, "svc1", NULL};
  CHECK_EQ_INT(kube_patch(k, &svc1, KUBE_PATCH_STRATEGIC,
                          "{\"spec\":{\"ports\":[{\"name\":\"metrics\",\"port\":9090}]}}", &out, &e), 0);
  CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(
                   cJSON_GetObjectItemCaseSensitive(out, "spec"), "ports")), 2);
  cJSON_Delete(out);
  CHECK_EQ_INT(kube_patch(k, &svc1, KUBE_PATCH_MERGE,
                          "{\"spec\":{\"ports\":[{\"name\":\"only\",\"port\":8080}]}}", &out, &e), 0);
  CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(
                   cJSON_GetObjectItemCaseSensitive(out, "spec"), "ports")), 1);
  cJSON_Delete(out);

  /* delete with propagationPolicy: Foreground leaves a foregroundDeletion
   * finalizer until the garbage collector is done (or the object is gone) */
  struct kube_ref deps = {"apps/v1", "deployments", ns, NULL, NULL};
  o = parse("{\"apiVersion\":\"apps/v1\",\"kind\":\"Deployment\",\"metadata\":{\"name\":\"%s\"},"
            "\"spec\":{\"replicas\":0,\"selector\":{\"matchLabels\":{\"app\":\"d\"}},\"template\":{"
            "\"metadata\":{\"labels\":{\"app\":\"d\"}},\"spec\":{\"containers\":[{\"name\":\"c\","
            "\"image\":\"busybox\"}]}}}}", "dep1");
  CHECK_EQ_INT(kube_create(k, &deps, o, NULL, &e), 0);
  cJSON_Delete(o);
  struct kube_ref dep1 = {"apps/v1", "deployments", ns, "dep1", NULL};
  CHECK_EQ_INT(kube_delete(k, &dep1, "Foreground", &e), 0);
  if (kube_get(k, &dep1, &out, &e) == 0) {
    char *s = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(out, "metadata"), "finalizers"));
    CHECK(s && strstr(s, "foregroundDeletion"));
    free(s);
    cJSON_Delete(out);
  } else {
    CHECK_EQ_INT(e.status, 404);
  }

  CHECK_EQ_INT(kube_delete(k, &cm1, "Background", &e), 0);
  CHECK_EQ_INT(kube_get(k, &cm1, NULL, &e), -1);
  CHECK_EQ_INT(e.status, 404);
  printf("404: %s\n", e.msg);
  CHECK_HAS(e.msg, "get configmaps \"cm1\" in namespace");
  CHECK_HAS(e.msg, "not found (configmaps \"cm1\" not found)");
}

struct mut {
  struct kube *k;
  int calls;
};

static int mutate(cJSON *obj, void *arg, char *err, size_t errlen) {
  struct mut *m = arg;
  m->calls++;
  if (m->calls == 1) { /* a concurrent writer */
    struct kube_ref r = {"v1", "configmaps", ns, "cm2", NULL};
    struct kube_err e;
    if (kube_patch(m->k, &r, KUBE_PATCH_MERGE, "{\"data\":{\"other\":\"yes\"}}", NULL, &e) < 0)
      fprintf(stderr, "concurrent patch: %s\n", e.msg);
  }
  cJSON *d = cJSON_GetObjectItemCaseSensitive(obj, "data");
  if (!d) d = cJSON_AddObjectToObject(obj, "data");
  cJSON_AddStringToObject(d, "mine", "yes");
  return 0;
}

static void test_conflict(struct kube *k) {
  struct kube_err e;
  struct mut m = {k, 0};
  struct kube_ref r = {"v1", "configmaps", ns, "cm2", NULL};
  cJSON *out = NULL;
  CHECK_EQ_INT(kube_update_retry(k, &r, mutate, &m, &out, &e), 0);
  CHECK_EQ_INT(m.calls, 2);
  CHECK_EQ_STR(str_at(out, "data", "mine"), "yes");
  CHECK_EQ_STR(str_at(out, "data", "other"), "yes");
  /* the stale object itself is refused with 409 Conflict */
  cJSON_GetObjectItemCaseSensitive(out, "metadata");
  cJSON *md = cJSON_GetObjectItemCaseSensitive(out, "metadata");
  cJSON_ReplaceItemInObject(md, "resourceVersion", cJSON_CreateString("1"));
  CHECK_EQ_INT(kube_replace(k, &r, out, NULL, &e), -1);
  CHECK_EQ_INT(e.status, 409);
  printf("409 conflict: %s\n", e.msg);
  CHECK_HAS(e.msg, "update configmaps \"cm2\" in namespace");
  CHECK_HAS(e.msg, "conflict (Operation cannot be fulfilled");
  cJSON_Delete(out);
}

static void test_forbidden(void) {
  struct kube *k = client(restricted_cfg, NULL);
  struct kube_err e;
  struct kube_ref r = {"v1", "configmaps", ns, "cm2", NULL};
  CHECK_EQ_INT(kube_get(k, &r, NULL, &e), -1);
  CHECK_EQ_INT(e.status, 403);
  printf("403: %s\n", e.msg);
  char want[256];
  snprintf(want, sizeof want,
           "forbidden: user \"kbridge-dev\" lacks the right to get configmaps in namespace \"%s\"", ns);
  CHECK_HAS(e.msg, want);
  CHECK_HAS(e.msg, "User \"kbridge-dev\" cannot get resource \"configmaps\"");
  struct kube_ref nss = {"v1", "namespaces", NULL, NULL, NULL};
  CHECK_EQ_INT(kube_list(k, &nss, NULL, NULL, &e), -1);
  CHECK_HAS(e.msg, "lacks the right to list namespaces at cluster scope");
  /* where it has rights, it works */
  struct kube_ref shop = {"v1", "services", kube_namespace(k), NULL, NULL};
  CHECK_EQ_STR(kube_namespace(k), "shop");
  CHECK_EQ_INT(kube_list(k, &shop, NULL, NULL, &e), 0);
  kube_free(k);
}

/* An exec plugin whose first token is wrong: the real server answers 401, the
 * plugin runs again and the second token (the admin token) works. */
static void test_exec(void) {
  char path[512], cfg[512], y[4096];
  snprintf(path, sizeof path, "%s/plugin.sh", dir);
  FILE *f = fopen(path, "w");
  fprintf(f,
          "#!/bin/sh\n"
          "echo run >> \"%s/runs\"\n"
          "if [ $(wc -l < \"%s/runs\") = 1 ]; then t=wrong; else t=%s; fi\n"
          "echo \"{\\\"apiVersion\\\":\\\"client.authentication.k8s.io/v1\\\",\\\"kind\\\":\\\"ExecCredential\\\","
          "\\\"status\\\":{\\\"token\\\":\\\"$t\\\"}}\"\n",
          dir, dir, admin_token);
  fclose(f);
  chmod(path, 0755);
  /* the cluster of the admin kubeconfig, a user with the plugin */
  struct kubeconfig_opts o = {admin_cfg, NULL, NULL};
  struct kubeconfig *kc;
  char err[512];
  if (kubeconfig_load(&o, &kc, err, sizeof err) < 0) exit(2);
  snprintf(cfg, sizeof cfg, "%s/exec.kubeconfig", dir);
  snprintf(y, sizeof y,
           "current-context: e\n"
           "clusters: [{name: c, cluster: {server: '%s', certificate-authority: '%s/ca.crt'}}]\n"
           "users: [{name: u, user: {exec: {apiVersion: client.authentication.k8s.io/v1, command: '%s'}}}]\n"
           "contexts: [{name: e, context: {cluster: c, user: u, namespace: '%s'}}]\n",
           kc->server, dir, path, ns);
  f = fopen(cfg, "w");
  fputs(y, f);
  fclose(f);
  char capath[512];
  snprintf(capath, sizeof capath, "%s/ca.crt", dir);
  f = fopen(capath, "w");
  fputs(kc->ca_pem, f);
  fclose(f);
  kubeconfig_free(kc);

  struct kube *k = client(cfg, NULL);
  struct kube_err e;
  struct kube_ref r = {"v1", "configmaps", ns, "cm2", NULL};
  int rc = kube_get(k, &r, NULL, &e);
  CHECK_EQ_INT(rc, 0);
  if (rc) fprintf(stderr, "exec: %s\n", e.msg);
  char runs[512];
  snprintf(runs, sizeof runs, "%s/runs", dir);
  int n = 0, c;
  f = fopen(runs, "r");
  while (f && (c = fgetc(f)) != EOF) n += c == '\n';
  if (f) fclose(f);
  CHECK_EQ_INT(n, 2);
  kube_free(k);
}

struct wstate {
  struct kube *k;
  char seen[256];
};

static int on_event(const char *type, cJSON *obj, const struct kube_err *e, void *arg) {
  struct wstate *w = arg;
  size_t l = strlen(w->seen);
  snprintf(w->seen + l, sizeof w->seen - l, "%s%s", l ? " " : "", type);
  if (e) return 1;
  struct kube_ref r = {"v1", "configmaps", ns, "w1", NULL};
  struct kube_err e2;
  if (strcmp(type, "ADDED") == 0) kube_patch(w->k, &r, KUBE_PATCH_MERGE, "{\"data\":{\"x\":\"1\"}}", NULL, &e2);
  if (strcmp(type, "MODIFIED") == 0) kube_delete(w->k, &r, NULL, &e2);
  return strcmp(type, "DELETED") == 0;
}

static void test_watch(struct kube *k) {
  struct kube_err e;
  struct kube_ref coll = {"v1", "configmaps", ns, NULL, NULL};
  cJSON *o = parse("{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"%s\","
                   "\"labels\":{\"watch\":\"me\"}}}", "w1");
  CHECK_EQ_INT(kube_create(k, &coll, o, NULL, &e), 0);
  cJSON_Delete(o);
  struct wstate w = {k, ""};
  CHECK_EQ_INT(kube_watch(k, &coll, "watch=me", NULL, on_event, &w, &e), 0);
  CHECK_EQ_STR(w.seen, "ADDED MODIFIED DELETED");
}

/* async: a watch and create/patch/delete in one libevent loop */
struct astate {
  struct kube *k;
  struct event_base *base;
  struct kube_watch *w;
  char seen[256], errors[1100];
  int step;
};

static void on_done(cJSON *obj, const struct kube_err *e, void *arg);

static void step(struct astate *a) {
  struct kube_ref coll = {"v1", "configmaps", ns, NULL, NULL};
  struct kube_ref r = {"v1", "configmaps", ns, "a1", NULL};
  a->step++;
  if (a->step == 1) {
    cJSON *o = parse("{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"%s\","
                     "\"labels\":{\"async\":\"yes\"}}}", "a1");
    kube_async_create(a->k, &coll, o, on_done, a);
    cJSON_Delete(o);
  } else if (a->step == 2) {
    kube_async_patch(a->k, &r, KUBE_PATCH_STRATEGIC, "{\"data\":{\"s\":\"1\"}}", on_done, a);
  } else if (a->step == 3) {
    kube_async_delete(a->k, &r, "Background", on_done, a);
  }
}

static void on_done(cJSON *obj, const struct kube_err *e, void *arg) {
  struct astate *a = arg;
  if (e) {
    snprintf(a->errors, sizeof a->errors, "%s", e->msg);
    event_base_loopexit(a->base, NULL);
    return;
  }
  step(a);
}

static int on_async_event(const char *type, cJSON *obj, const struct kube_err *e, void *arg) {
  struct astate *a = arg;
  size_t l = strlen(a->seen);
  snprintf(a->seen + l, sizeof a->seen - l, "%s%s", l ? " " : "", type);
  if (e) snprintf(a->errors, sizeof a->errors, "%s", e->msg);
  if (strcmp(type, "DELETED") == 0) event_base_loopexit(a->base, NULL);
  return strcmp(type, "DELETED") == 0;
}

static void start_steps(evutil_socket_t fd, short what, void *arg) { step(arg); }

static void test_async(void) {
  struct astate a;
  memset(&a, 0, sizeof a);
  a.base = event_base_new();
  a.k = client(admin_cfg, "kube-client-test-token");
  char err[256];
  CHECK_EQ_INT(kube_attach(a.k, a.base, err, sizeof err), 0);
  struct kube_ref coll = {"v1", "configmaps", ns, NULL, NULL};
  a.w = kube_async_watch(a.k, &coll, "async=yes", NULL, on_async_event, &a);
  struct timeval half = {0, 500000}, limit = {20, 0};
  event_base_once(a.base, -1, EV_TIMEOUT, start_steps, &a, &half);
  event_base_loopexit(a.base, &limit);
  event_base_dispatch(a.base);
  CHECK_EQ_STR(a.seen, "ADDED MODIFIED DELETED");
  CHECK_EQ_STR(a.errors, "");
  kube_free(a.k);
  event_base_free(a.base);
}

static void test_ssl(struct kube *k) {
  char err[256];
  SSL_CTX *ctx = kube_ssl_ctx_new(k, err, sizeof err);
  CHECK(ctx != NULL);
  if (!ctx) return;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)kube_server_port(k));
  inet_pton(AF_INET, kube_server_host(k), &sa.sin_addr);
  CHECK_EQ_INT(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  SSL *ssl = SSL_new(ctx);
  CHECK_EQ_INT(kube_ssl_prepare(k, ssl), 0);
  SSL_set_fd(ssl, fd);
  CHECK_EQ_INT(SSL_connect(ssl), 1);
  const char *req = "GET /api/v1/namespaces HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n";
  SSL_write(ssl, req, (int)strlen(req));
  char resp[64] = "";
  int n = SSL_read(ssl, resp, sizeof resp - 1);
  if (n > 0) resp[n] = 0;
  CHECK_HAS(resp, "HTTP/1.1 200"); /* admin client certificate from the kubeconfig */
  SSL_free(ssl);
  close(fd);
  SSL_CTX_free(ctx);
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: test_kube_cluster ADMIN_KUBECONFIG RESTRICTED_KUBECONFIG ADMIN_TOKEN\n");
    return 2;
  }
  admin_cfg = argv[1];
  restricted_cfg = argv[2];
  admin_token = argv[3];
  unsetenv("KUBECONFIG");
  snprintf(dir, sizeof dir, "/tmp/kb-kube-cluster-XXXXXX");
  if (!mkdtemp(dir)) return 2;
  snprintf(ns, sizeof ns, "kube-client-%d", (int)getpid());
  struct kube *k = client(admin_cfg, NULL); /* client certificate context */
  struct kube_err e;
  struct kube_ref nss = {"v1", "namespaces", NULL, NULL, NULL};
  cJSON *o = parse("{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"%s\"}}", ns);
  if (kube_create(k, &nss, o, NULL, &e) < 0) {
    fprintf(stderr, "create namespace: %s\n", e.msg);
    return 1;
  }
  cJSON_Delete(o);
  test_crud(k);
  test_conflict(k);
  test_forbidden();
  test_exec();
  test_watch(k);
  test_async();
  test_ssl(k);
  struct kube_ref me = {"v1", "namespaces", NULL, ns, NULL};
  CHECK_EQ_INT(kube_delete(k, &me, "Background", &e), 0);
  kube_free(k);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
  return check_done();
}
