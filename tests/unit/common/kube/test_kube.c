/* test_kube.c: the API client against mock_apiserver.py (HTTPS on 127.0.0.1):
 * CRUD and the three patch kinds, error messages (401/403/404/409/422,
 * unreachable, connect timeout, wrong CA), connection reuse, the 409 retry
 * helper, credentials (client cert files, basic auth, tls-server-name, exec
 * token refresh on 401 and on expiry, exec client cert, token file rotation),
 * blocking and async watches (reconnect, 410 resync, stop inside the callback),
 * async calls in a libevent loop and the SSL_CTX for the port-forward code. */
#include <arpa/inet.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "kube.h"
#include "kubeconfig.h"

static char dir[256];
static int port, mute_port, proxy_port;

#define CHECK_HAS(s, sub)                                                           \
  do {                                                                              \
    const char *hs_ = (s);                                                          \
    CHECK(hs_ && strstr(hs_, (sub)));                                               \
    if (!(hs_ && strstr(hs_, (sub)))) fprintf(stderr, "  got: %s\n  want: %s\n", hs_, (sub)); \
  } while (0)

static const char *p(const char *name) {
  static char bufs[8][512];
  static int i;
  char *b = bufs[i++ % 8];
  snprintf(b, 512, "%s/%s", dir, name);
  return b;
}

static void put(const char *name, const char *text, int mode) {
  FILE *f = fopen(p(name), "w");
  if (!f) exit(2);
  fputs(text, f);
  fclose(f);
  chmod(p(name), (mode_t)mode);
}

static int count_lines(const char *name) {
  FILE *f = fopen(p(name), "r");
  int n = 0, c;
  if (!f) return 0;
  while ((c = fgetc(f)) != EOF) n += c == '\n';
  fclose(f);
  return n;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static pid_t mock_pid;
static int mock_stdin = -1;

static int start_mock(const char *script) {
  int in[2], out[2];
  if (pipe(in) < 0 || pipe(out) < 0) return -1;
  mock_pid = fork();
  if (mock_pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    close(in[1]);
    close(out[0]);
    execlp("python3", "python3", script, dir, (char *)NULL);
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  mock_stdin = in[1];
  FILE *f = fdopen(out[0], "r");
  char line[128];
  if (!fgets(line, sizeof line, f) || sscanf(line, "PORT %d %d %d", &port, &mute_port, &proxy_port) != 3) {
    fprintf(stderr, "mock API server did not start\n");
    return -1;
  }
  fclose(f);
  return 0;
}

static void stop_mock(void) {
  if (mock_stdin >= 0) close(mock_stdin);
  kill(mock_pid, SIGTERM);
  waitpid(mock_pid, NULL, 0);
}

static void write_config(void) {
  char cmd[2048];
  /* base64 of the CA for certificate-authority-data */
  snprintf(cmd, sizeof cmd, "base64 -w0 < '%s' > '%s'", p("ca.crt"), p("ca.b64"));
  if (system(cmd) != 0) exit(2);
  char cab64[8192] = "";
  FILE *f = fopen(p("ca.b64"), "r");
  if (!f || !fgets(cab64, sizeof cab64, f)) exit(2);
  fclose(f);
  put("exec-401.sh",
      "#!/bin/sh\n"
      "d=$(dirname \"$0\")\n"
      "echo run >> \"$d/exec-401.runs\"\n"
      "n=$(wc -l < \"$d/exec-401.runs\")\n"
      "if [ \"$n\" = 1 ]; then t=expired-1; else t=good-$n; fi\n"
      "echo \"{\\\"apiVersion\\\":\\\"client.authentication.k8s.io/v1\\\",\\\"kind\\\":\\\"ExecCredential\\\","
      "\\\"status\\\":{\\\"token\\\":\\\"$t\\\",\\\"expirationTimestamp\\\":\\\"2099-01-01T00:00:00Z\\\"}}\"\n",
      0755);
  put("exec-short.sh",
      "#!/bin/sh\n"
      "d=$(dirname \"$0\")\n"
      "echo run >> \"$d/exec-short.runs\"\n"
      "exp=$(date -u -d @$(( $(date +%s) + 5 )) +%Y-%m-%dT%H:%M:%SZ)\n"
      "echo \"{\\\"apiVersion\\\":\\\"client.authentication.k8s.io/v1beta1\\\",\\\"kind\\\":\\\"ExecCredential\\\","
      "\\\"status\\\":{\\\"token\\\":\\\"good-short\\\",\\\"expirationTimestamp\\\":\\\"$exp\\\"}}\"\n",
      0755);
  put("exec-cert.sh",
      "#!/bin/sh\n"
      "d=$(dirname \"$0\")\n"
      "c=$(awk '{printf \"%s\\\\n\", $0}' \"$d/client.crt\")\n"
      "k=$(awk '{printf \"%s\\\\n\", $0}' \"$d/client.key\")\n"
      "echo \"{\\\"apiVersion\\\":\\\"client.authentication.k8s.io/v1beta1\\\",\\\"kind\\\":\\\"ExecCredential\\\","
      "\\\"status\\\":{\\\"clientCertificateData\\\":\\\"$c\\\",\\\"clientKeyData\\\":\\\"$k\\\"}}\"\n",
      0755);
  put("token", "good-file-1\n", 0600);
  char y[16384];
  snprintf(y, sizeof y,
           "apiVersion: v1\n"
           "current-context: admin\n"
           "clusters:\n"
           "- {name: mock, cluster: {server: 'https://127.0.0.1:%d', certificate-authority: ca.crt}}\n"
           "- {name: mockdata, cluster: {server: 'https://127.0.0.1:%d/', certificate-authority-data: '%s'}}\n"
           "- {name: named, cluster: {server: 'https://127.0.0.1:%d', certificate-authority: ca.crt, "
           "tls-server-name: kube.test}}\n"
           "- {name: misnamed, cluster: {server: 'https://127.0.0.1:%d', certificate-authority: ca.crt, "
           "tls-server-name: wrong.test}}\n"
           "- {name: wrongca, cluster: {server: 'https://127.0.0.1:%d', certificate-authority: client.crt}}\n"
           "- {name: insecure, cluster: {server: 'https://127.0.0.1:%d', insecure-skip-tls-verify: true}}\n"
           "- {name: down, cluster: {server: 'https://127.0.0.1:1'}}\n"
           "- {name: mute, cluster: {server: 'https://127.0.0.1:%d', certificate-authority: ca.crt}}\n"
           "- {name: proxied, cluster: {server: 'https://127.0.0.1:%d', certificate-authority: ca.crt, "
           "proxy-url: 'http://127.0.0.1:%d'}}\n"
           "users:\n"
           "- {name: admin, user: {token: admin}}\n"
           "- {name: r, user: {token: restricted}}\n"
           "- {name: nobody, user: {token: nope}}\n"
           "- {name: cert, user: {client-certificate: client.crt, client-key: client.key}}\n"
           "- {name: basic, user: {username: carol, password: s3cret}}\n"
           "- {name: file, user: {tokenFile: token}}\n"
           "- name: exec401\n"
           "  user: {exec: {apiVersion: client.authentication.k8s.io/v1, command: ./exec-401.sh}}\n"
           "- name: execshort\n"
           "  user: {exec: {apiVersion: client.authentication.k8s.io/v1beta1, command: ./exec-short.sh}}\n"
           "- name: execcert\n"
           "  user: {exec: {apiVersion: client.authentication.k8s.io/v1beta1, command: ./exec-cert.sh}}\n"
           "- name: execmissing\n"
           "  user: {exec: {apiVersion: client.authentication.k8s.io/v1, command: kbridge-missing-plugin, "
           "installHint: 'install it from example.com'}}\n"
           "contexts:\n"
           "- {name: execmissing, context: {cluster: mock, user: execmissing}}\n"
           "- {name: admin, context: {cluster: mock, user: admin, namespace: t}}\n"
           "- {name: restricted, context: {cluster: mock, user: r, namespace: t}}\n"
           "- {name: nobody, context: {cluster: mock, user: nobody}}\n"
           "- {name: cert, context: {cluster: mock, user: cert}}\n"
           "- {name: basic, context: {cluster: mockdata, user: basic}}\n"
           "- {name: file, context: {cluster: mock, user: file}}\n"
           "- {name: exec401, context: {cluster: mock, user: exec401}}\n"
           "- {name: execshort, context: {cluster: mock, user: execshort}}\n"
           "- {name: execcert, context: {cluster: mock, user: execcert}}\n"
           "- {name: named, context: {cluster: named, user: admin}}\n"
           "- {name: misnamed, context: {cluster: misnamed, user: admin}}\n"
           "- {name: wrongca, context: {cluster: wrongca, user: admin}}\n"
           "- {name: insecure, context: {cluster: insecure, user: admin}}\n"
           "- {name: down, context: {cluster: down, user: admin}}\n"
           "- {name: mute, context: {cluster: mute, user: admin}}\n"
           "- {name: proxied, context: {cluster: proxied, user: admin}}\n",
           port, port, cab64, port, port, port, port, mute_port, port, proxy_port);
  put("kubeconfig", y, 0600);
}

static struct kube *client(const char *context) {
  struct kubeconfig_opts o = {p("kubeconfig"), context, NULL};
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

static cJSON *configmap(const char *name, const char *app) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "apiVersion", "v1");
  cJSON_AddStringToObject(o, "kind", "ConfigMap");
  cJSON *md = cJSON_AddObjectToObject(o, "metadata");
  cJSON_AddStringToObject(md, "name", name);
  cJSON *l = cJSON_AddObjectToObject(md, "labels");
  cJSON_AddStringToObject(l, "app", app);
  cJSON *d = cJSON_AddObjectToObject(o, "data");
  cJSON_AddStringToObject(d, "a", "1");
  return o;
}

static const char *data_of(cJSON *o, const char *key) {
  return cJSON_GetStringValue(
      cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(o, "data"), key));
}

static long stat_of(struct kube *k, const char *field, cJSON **whole) {
  /* the mock's statistics: api "debug", resource "stats" -> /api/debug/stats */
  struct kube_ref r = {"debug", "stats", NULL, NULL, NULL};
  cJSON *o = NULL;
  struct kube_err e;
  if (kube_request(k, "GET", "get", &r, NULL, NULL, NULL, &o, &e) < 0) return -1;
  long v = (long)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(o, field));
  if (whole)
    *whole = o;
  else
    cJSON_Delete(o);
  return v;
}

static void test_crud(void) {
  struct kube *k = client("admin");
  struct kube_err e;
  cJSON *out = NULL;
  CHECK_EQ_STR(kube_namespace(k), "t");
  struct kube_ref cms = {"v1", "configmaps", "t", NULL, NULL};
  cJSON *o = configmap("cm1", "x");
  CHECK_EQ_INT(kube_create(k, &cms, o, &out, &e), 0);
  CHECK(out && cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(out, "metadata"), "resourceVersion"));
  cJSON_Delete(out);
  CHECK_EQ_INT(kube_create(k, &cms, o, NULL, &e), -1);
  CHECK_EQ_INT(e.status, 409);
  CHECK_EQ_STR(e.reason, "AlreadyExists");
  CHECK_HAS(e.msg, "create configmaps \"cm1\" in namespace \"t\": already exists (configmaps \"cm1\" already exists)");
  cJSON_Delete(o);
  o = configmap("cm2", "y");
  CHECK_EQ_INT(kube_create(k, &cms, o, NULL, &e), 0);
  cJSON_Delete(o);
  o = configmap("Bad_Name", "y");
  CHECK_EQ_INT(kube_create(k, &cms, o, NULL, &e), -1);
  CHECK_EQ_INT(e.status, 422);
  CHECK_HAS(e.msg, "create configmaps \"Bad_Name\" in namespace \"t\": invalid: configmaps \"Bad_Name\" is invalid: metadata.name");
  cJSON_Delete(o);

  CHECK_EQ_INT(kube_list(k, &cms, "app=x", &out, &e), 0);
  cJSON *items = cJSON_GetObjectItemCaseSensitive(out, "items");
  CHECK_EQ_INT(cJSON_GetArraySize(items), 1);
  cJSON_Delete(out);
  CHECK_EQ_INT(kube_list(k, &cms, NULL, &out, &e), 0);
  CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(out, "items")), 2);
  cJSON_Delete(out);

  struct kube_ref cm1 = {"v1", "configmaps", "t", "cm1", NULL};
  CHECK_EQ_INT(kube_patch(k, &cm1, KUBE_PATCH_MERGE, "{\"data\":{\"b\":\"2\"}}", &out, &e), 0);
  CHECK_EQ_STR(data_of(out, "b"), "2");
  cJSON_Delete(out);
  CHECK_EQ_INT(kube_patch(k, &cm1, KUBE_PATCH_STRATEGIC, "{\"data\":{\"c\":\"3\"}}", &out, &e), 0);
  CHECK_EQ_STR(data_of(out, "c"), "3");
  cJSON_Delete(out);
  CHECK_EQ_INT(kube_patch(k, &cm1, KUBE_PATCH_JSON,
                          "[{\"op\":\"replace\",\"path\":\"/data/a\",\"value\":\"9\"}]", &out, &e), 0);
  CHECK_EQ_STR(data_of(out, "a"), "9");
  CHECK_EQ_STR(data_of(out, "b"), "2");
  cJSON_Delete(out);
  CHECK_EQ_INT(kube_patch(k, &cm1, KUBE_PATCH_JSON,
                          "[{\"op\":\"test\",\"path\":\"/data/a\",\"value\":\"0\"}]", &out, &e), -1);
  CHECK_EQ_INT(e.status, 422);
  CHECK_HAS(e.msg, "patch configmaps \"cm1\" in namespace \"t\": invalid: patch: test failed at /data/a");

  CHECK_EQ_INT(kube_get(k, &cm1, &out, &e), 0);
  CHECK_EQ_STR(data_of(out, "a"), "9");
  cJSON_Delete(out);

  CHECK_EQ_INT(kube_delete(k, &cm1, "Foreground", &e), 0);
  cJSON *stats = NULL;
  stat_of(k, "requests", &stats);
  CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
                   cJSON_GetObjectItemCaseSensitive(stats, "last_delete"), "propagationPolicy")),
               "Foreground");
  cJSON_Delete(stats);
  CHECK_EQ_INT(kube_get(k, &cm1, &out, &e), -1);
  CHECK(out == NULL);
  CHECK_EQ_INT(e.status, 404);
  CHECK_EQ_STR(e.msg, "get configmaps \"cm1\" in namespace \"t\": not found (configmaps \"cm1\" not found)");
  /* a name with '/' stays one path segment */
  struct kube_ref odd = {"v1", "configmaps", "t", "../secrets/x", NULL};
  CHECK_EQ_INT(kube_get(k, &odd, NULL, &e), -1);
  CHECK_EQ_INT(e.status, 404);
  CHECK_HAS(e.msg, "get configmaps \"../secrets/x\" in namespace \"t\": not found");
  struct kube_ref none = {"v1", NULL, "t", NULL, NULL};
  CHECK_EQ_INT(kube_get(k, &none, NULL, &e), -1);
  CHECK_EQ_STR(e.msg, "get: no resource given");
  struct kube_ref dep = {"apps/v1", "deployments", "t", "web", NULL};
  CHECK_EQ_INT(kube_delete(k, &dep, NULL, &e), -1);
  CHECK_HAS(e.msg, "delete deployments.apps \"web\" in namespace \"t\": not found");

  /* connection reuse: 20 calls, at most one new connection */
  long before = stat_of(k, "connections", NULL);
  for (int i = 0; i < 20; i++) kube_list(k, &cms, NULL, NULL, &e);
  long after = stat_of(k, "connections", NULL);
  CHECK(before > 0 && after - before <= 0);
  if (after - before > 0) fprintf(stderr, "connections %ld -> %ld\n", before, after);
  kube_free(k);
}

struct mut {
  struct kube *k;
  int calls;
};

/* First call: someone else changes the object meanwhile (-> 409 on our PUT). */
static int mutate(cJSON *obj, void *arg, char *err, size_t errlen) {
  struct mut *m = arg;
  m->calls++;
  if (m->calls == 1) {
    struct kube_ref r = {"v1", "configmaps", "t", "cm2", NULL};
    struct kube_err e;
    kube_patch(m->k, &r, KUBE_PATCH_MERGE, "{\"data\":{\"other\":\"yes\"}}", NULL, &e);
  }
  cJSON *d = cJSON_GetObjectItemCaseSensitive(obj, "data");
  cJSON_AddStringToObject(d, "mine", "yes");
  return 0;
}

static int mutate_fail(cJSON *obj, void *arg, char *err, size_t errlen) {
  snprintf(err, errlen, "the object has no port 80");
  return -1;
}

static void test_update_retry(void) {
  struct kube *k = client("admin");
  struct kube_err e;
  struct mut m = {k, 0};
  struct kube_ref r = {"v1", "configmaps", "t", "cm2", NULL};
  cJSON *out = NULL;
  CHECK_EQ_INT(kube_update_retry(k, &r, mutate, &m, &out, &e), 0);
  CHECK_EQ_INT(m.calls, 2);
  CHECK_EQ_STR(data_of(out, "mine"), "yes");
  CHECK_EQ_STR(data_of(out, "other"), "yes");
  cJSON_Delete(out);
  CHECK_EQ_INT(kube_update_retry(k, &r, mutate_fail, NULL, NULL, &e), -1);
  CHECK_EQ_STR(e.msg, "update configmaps \"cm2\" in namespace \"t\": the object has no port 80");
  /* a plain PUT with a stale resourceVersion is a 409 */
  cJSON *o = configmap("cm2", "y");
  cJSON_AddStringToObject(cJSON_GetObjectItemCaseSensitive(o, "metadata"), "resourceVersion", "1");
  CHECK_EQ_INT(kube_replace(k, &r, o, NULL, &e), -1);
  CHECK_EQ_INT(e.status, 409);
  CHECK_HAS(e.msg, "update configmaps \"cm2\" in namespace \"t\": conflict (Operation cannot be fulfilled");
  cJSON_Delete(o);
  kube_free(k);
}

static void test_errors(void) {
  struct kube_err e;
  struct kube_ref r = {"v1", "configmaps", "t", "cm2", NULL};
  struct kube *k = client("restricted");
  CHECK_EQ_INT(kube_get(k, &r, NULL, &e), -1);
  CHECK_EQ_INT(e.status, 403);
  CHECK_EQ_STR(e.reason, "Forbidden");
  CHECK_HAS(e.msg, "get configmaps \"cm2\" in namespace \"t\": forbidden: user \"r\" lacks the right to "
                   "get configmaps in namespace \"t\" (configmaps \"cm2\" is forbidden: User "
                   "\"restricted\" cannot get resource");
  struct kube_ref deps = {"apps/v1", "deployments", "t", NULL, NULL};
  CHECK_EQ_INT(kube_list(k, &deps, NULL, NULL, &e), -1);
  CHECK_HAS(e.msg, "lacks the right to list deployments.apps in namespace \"t\"");
  kube_free(k);

  k = client("nobody");
  CHECK_EQ_INT(kube_get(k, &r, NULL, &e), -1);
  CHECK_EQ_INT(e.status, 401);
  CHECK_HAS(e.msg, "rejected the credentials of user \"nobody\" of context \"nobody\"");
  kube_free(k);

  k = client("down");
  double t0 = now_s();
  CHECK_EQ_INT(kube_get(k, &r, NULL, &e), -1);
  CHECK_EQ_INT(e.status, 0);
  CHECK_HAS(e.msg, "get configmaps \"cm2\" in namespace \"t\": cannot reach the API server https://127.0.0.1:1: Couldn't connect to server");
  CHECK_HAS(e.msg, "(after 4 attempts)"); /* a refused connection is tried again, briefly */
  CHECK(now_s() - t0 < 5); /* at most 1.75 s of waiting */
  kube_free(k);

  k = client("mute");
  t0 = now_s();
  CHECK_EQ_INT(kube_get(k, &r, NULL, &e), -1);
  double dt = now_s() - t0;
  CHECK(dt > 4.5 && dt < 7.5);
  printf("connect timeout after %.1f s: %s\n", dt, e.msg);
  CHECK_HAS(e.msg, "cannot reach the API server https://127.0.0.1:");
  CHECK_HAS(e.msg, "Timeout was reached");
  kube_free(k);

  k = client("wrongca");
  CHECK_EQ_INT(kube_get(k, &r, NULL, &e), -1);
  CHECK_HAS(e.msg, "cannot reach the API server https://127.0.0.1:");
  CHECK_HAS(e.msg, "certificate");
  kube_free(k);

  k = client("misnamed");
  CHECK_EQ_INT(kube_get(k, &r, NULL, &e), -1);
  CHECK_HAS(e.msg, "wrong.test");
  kube_free(k);

  /* a CA file that does not exist is reported when the client is made */
  put("bad-ca.yaml",
      "current-context: c\nclusters: [{name: k, cluster: {server: 'https://127.0.0.1:1', "
      "certificate-authority: nope/ca.crt}}]\ncontexts: [{name: c, context: {cluster: k}}]\n",
      0600);
  struct kubeconfig_opts o = {p("bad-ca.yaml"), NULL, NULL};
  struct kubeconfig *kc;
  char err[512];
  CHECK_EQ_INT(kubeconfig_load(&o, &kc, err, sizeof err), 0);
  CHECK(kube_new(kc, err, sizeof err) == NULL);
  CHECK_HAS(err, "cluster \"k\": certificate-authority ");
  CHECK_HAS(err, "nope/ca.crt: No such file or directory");
}

/* How many requests the mock saw for "METHOD /path" of a flaky object. */
static long flaky_count(struct kube *k, const char *key) {
  cJSON *st = NULL;
  if (stat_of(k, "requests", &st) < 0) return -1;
  const cJSON *n = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(st, "flaky"), key);
  long v = cJSON_IsNumber(n) ? (long)n->valuedouble : 0;
  cJSON_Delete(st);
  return v;
}

/* Blocking calls retry 429 (any method, Retry-After honoured), 5xx (idempotent
 * methods only) and refused connections, at most 4 attempts. */
static void test_retry(void) {
  struct kube *k = client("admin");
  struct kube_err e;
  cJSON *out = NULL;
  struct kube_ref cms = {"v1", "configmaps", "t", NULL, NULL};
  const char *names[] = {"busy-1", "fail5-2", "fail5-1"};
  for (size_t i = 0; i < 3; i++) {
    cJSON *o = configmap(names[i], "v");
    CHECK_EQ_INT(kube_create(k, &cms, o, NULL, &e), 0);
    cJSON_Delete(o);
  }
  /* 429 with Retry-After: 1, then 200: one wait of about a second. */
  struct kube_ref r = {"v1", "configmaps", "t", "busy-1", NULL};
  double t0 = now_s();
  CHECK_EQ_INT(kube_get(k, &r, &out, &e), 0);
  double dt = now_s() - t0;
  CHECK(out && data_of(out, "a") && strcmp(data_of(out, "a"), "1") == 0);
  cJSON_Delete(out);
  printf("429 (Retry-After: 1) then 200 after %.2f s\n", dt);
  CHECK(dt > 0.9 && dt < 5);
  CHECK_EQ_INT(flaky_count(k, "GET /api/v1/namespaces/t/configmaps/busy-1"), 2);
  /* 503 twice, then 200: back-off without Retry-After (GET is idempotent). */
  struct kube_ref f2 = {"v1", "configmaps", "t", "fail5-2", NULL};
  t0 = now_s();
  CHECK_EQ_INT(kube_get(k, &f2, NULL, &e), 0);
  dt = now_s() - t0;
  printf("503, 503, then 200 after %.2f s\n", dt);
  CHECK(dt > 0.3 && dt < 4); /* waits 125-250 + 250-500 ms; the rest is a busy machine */
  CHECK_EQ_INT(flaky_count(k, "GET /api/v1/namespaces/t/configmaps/fail5-2"), 3);
  /* A PATCH is not retried on 503: it may have been applied. */
  struct kube_ref f1 = {"v1", "configmaps", "t", "fail5-1", NULL};
  CHECK_EQ_INT(kube_patch(k, &f1, KUBE_PATCH_MERGE, "{\"data\":{\"value\":\"w\"}}", NULL, &e), -1);
  CHECK_EQ_INT(e.status, 503);
  CHECK_EQ_INT(flaky_count(k, "PATCH /api/v1/namespaces/t/configmaps/fail5-1"), 1);
  /* ... but a 429 is (the server did not execute it). */
  struct kube_ref b2 = {"v1", "configmaps", "t", "busy-1", NULL};
  CHECK_EQ_INT(kube_patch(k, &b2, KUBE_PATCH_MERGE, "{\"data\":{\"value\":\"w\"}}", NULL, &e), 0);
  CHECK_EQ_INT(flaky_count(k, "PATCH /api/v1/namespaces/t/configmaps/busy-1"), 2);
  /* Always busy: bounded, 4 attempts, the last answer reported. */
  struct kube_ref ab = {"v1", "configmaps", "t", "always-busy", NULL};
  t0 = now_s();
  CHECK_EQ_INT(kube_get(k, &ab, NULL, &e), -1);
  dt = now_s() - t0;
  CHECK_EQ_INT(e.status, 429);
  CHECK_HAS(e.msg, "(after 4 attempts)");
  CHECK_EQ_INT(flaky_count(k, "GET /api/v1/namespaces/t/configmaps/always-busy"), 4);
  printf("always 429: gave up after 4 attempts, %.2f s\n", dt);
  CHECK(dt < 5); /* at most 1.75 s of waiting */
  kube_free(k);
}

static void test_credentials(void) {
  struct kube_err e;
  struct kube_ref r = {"v1", "configmaps", "t", "cm2", NULL};
  const char *ctxs[] = {"cert", "basic", "named", "insecure", "execcert", "file"};
  for (size_t i = 0; i < sizeof ctxs / sizeof ctxs[0]; i++) {
    struct kube *k = client(ctxs[i]);
    int rc = kube_get(k, &r, NULL, &e);
    CHECK_EQ_INT(rc, 0);
    if (rc) fprintf(stderr, "context %s: %s\n", ctxs[i], e.msg);
    kube_free(k);
  }
  struct kube *k;

  /* proxy-url: the request goes through the CONNECT proxy */
  k = client("admin");
  long proxied = stat_of(k, "proxied", NULL);
  kube_free(k);
  k = client("proxied");
  CHECK_EQ_INT(kube_get(k, &r, NULL, &e), 0);
  CHECK_EQ_INT(stat_of(k, "proxied", NULL), proxied + 1);
  kube_free(k);

  /* exec: first token is rejected (401) -> plugin runs again -> success;
   * then the cached token is used. */
  k = client("exec401");
  CHECK_EQ_INT(kube_get(k, &r, NULL, &e), 0);
  CHECK_EQ_INT(count_lines("exec-401.runs"), 2);
  CHECK_EQ_INT(kube_get(k, &r, NULL, &e), 0);
  CHECK_EQ_INT(count_lines("exec-401.runs"), 2);
  kube_free(k);

  /* exec: a token expiring within the safety margin is refreshed each time */
  k = client("execshort");
  CHECK_EQ_INT(kube_get(k, &r, NULL, &e), 0);
  CHECK_EQ_INT(kube_get(k, &r, NULL, &e), 0);
  CHECK_EQ_INT(count_lines("exec-short.runs"), 2);
  kube_free(k);

  /* token file rotation */
  k = client("file");
  CHECK_EQ_INT(kube_get(k, &r, NULL, &e), 0);
  put("token", "expired-now-and-longer\n", 0600);
  CHECK_EQ_INT(kube_get(k, &r, NULL, &e), -1);
  CHECK_EQ_INT(e.status, 401);
  put("token.new", "good-file-2\n", 0600);
  if (rename(p("token.new"), p("token")) != 0) perror("rename");
  CHECK_EQ_INT(kube_get(k, &r, NULL, &e), 0);
  const char *tok, *cert, *key;
  char err[256];
  CHECK_EQ_INT(kube_credentials(k, &tok, &cert, &key, err, sizeof err), 0);
  CHECK_EQ_STR(tok, "good-file-2");
  kube_free(k);
}

struct wstate {
  struct kube *k;
  char seen[512];
  int n;
};

static int on_event_blocking(const char *type, cJSON *obj, const struct kube_err *e, void *arg) {
  struct wstate *w = arg;
  const char *name = obj ? cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
                               cJSON_GetObjectItemCaseSensitive(obj, "metadata"), "name"))
                         : NULL;
  size_t l = strlen(w->seen);
  snprintf(w->seen + l, sizeof w->seen - l, "%s%s:%s", l ? " " : "", type, name ? name : "-");
  struct kube_ref r = {"v1", "configmaps", "w", "w1", NULL};
  struct kube_err e2;
  w->n++;
  if (e) return 1;
  if (strcmp(type, "ADDED") == 0 && name && strcmp(name, "w1") == 0) {
    kube_patch(w->k, &r, KUBE_PATCH_MERGE, "{\"data\":{\"x\":\"1\"}}", NULL, &e2);
  } else if (strcmp(type, "MODIFIED") == 0) {
    usleep(1800 * 1000); /* let the mock end the stream: the watch must reconnect */
    kube_delete(w->k, &r, NULL, &e2);
  } else if (strcmp(type, "DELETED") == 0) {
    return 1;
  }
  return 0;
}

static int on_event_resync(const char *type, cJSON *obj, const struct kube_err *e, void *arg) {
  struct wstate *w = arg;
  size_t l = strlen(w->seen);
  snprintf(w->seen + l, sizeof w->seen - l, "%s%s", l ? " " : "", type);
  return strcmp(type, "ADDED") == 0;
}

static void test_watch_blocking(void) {
  struct kube *k = client("admin");
  struct kube_err e;
  struct kube_ref coll = {"v1", "configmaps", "w", NULL, NULL};
  cJSON *o = configmap("w1", "x");
  CHECK_EQ_INT(kube_create(k, &coll, o, NULL, &e), 0);
  cJSON_Delete(o);
  struct wstate w = {k, "", 0};
  CHECK_EQ_INT(kube_watch(k, &coll, "app=x", NULL, on_event_blocking, &w, &e), 0);
  CHECK_EQ_STR(w.seen, "ADDED:w1 MODIFIED:w1 DELETED:w1");

  /* a resourceVersion older than the server keeps -> RESYNC, then a fresh list */
  o = configmap("w2", "x");
  CHECK_EQ_INT(kube_create(k, &coll, o, NULL, &e), 0);
  cJSON_Delete(o);
  struct wstate w2 = {k, "", 0};
  CHECK_EQ_INT(kube_watch(k, &coll, NULL, "1", on_event_resync, &w2, &e), 0);
  CHECK_EQ_STR(w2.seen, "RESYNC ADDED");

  /* a watch the account may not do */
  kube_free(k);
  k = client("restricted");
  CHECK_EQ_INT(kube_watch(k, &coll, NULL, NULL, on_event_resync, &w2, &e), -1);
  CHECK_EQ_INT(e.status, 403);
  CHECK_HAS(e.msg, "watch configmaps in namespace \"w\": forbidden: user \"r\" lacks the right to watch configmaps in namespace \"w\"");
  kube_free(k);
}

/* ---- async ---- */

struct astate {
  struct kube *k;
  struct event_base *base;
  struct kube_watch *w;
  char seen[512];
  char errors[1024];
  int step;
  int cancelled_called;
  int got404;
  struct event *later;
};

static void note(char *buf, size_t len, const char *s) {
  size_t l = strlen(buf);
  snprintf(buf + l, len - l, "%s%s", l ? " " : "", s);
}

static void on_cancelled(cJSON *obj, const struct kube_err *e, void *arg) {
  struct astate *a = arg;
  a->cancelled_called = 1;
}

static void on_get404(cJSON *obj, const struct kube_err *e, void *arg) {
  struct astate *a = arg;
  a->got404 = e && e->status == 404;
  if (e) note(a->errors, sizeof a->errors, e->msg);
}

static void on_step(cJSON *obj, const struct kube_err *e, void *arg);

static void next_step(evutil_socket_t fd, short what, void *arg) {
  struct astate *a = arg;
  struct kube_ref r = {"v1", "configmaps", "a", "a1", NULL};
  struct kube_ref coll = {"v1", "configmaps", "a", NULL, NULL};
  a->step++;
  if (a->step == 1) {
    cJSON *o = configmap("a1", "x");
    CHECK(kube_async_create(a->k, &coll, o, on_step, a) != NULL);
    cJSON_Delete(o);
    struct kube_ref missing = {"v1", "configmaps", "a", "missing", NULL};
    CHECK(kube_async_get(a->k, &missing, on_get404, a) != NULL);
    struct kube_call *c = kube_async_get(a->k, &missing, on_cancelled, a);
    kube_call_cancel(c);
  } else if (a->step == 2) {
    CHECK(kube_async_patch(a->k, &r, KUBE_PATCH_MERGE, "{\"data\":{\"s\":\"2\"}}", on_step, a) != NULL);
  } else if (a->step == 3) {
    CHECK(kube_async_patch(a->k, &r, KUBE_PATCH_JSON,
                           "[{\"op\":\"add\",\"path\":\"/data/t\",\"value\":\"3\"}]", on_step, a) != NULL);
  } else if (a->step == 4) {
    CHECK(kube_async_delete(a->k, &r, "Background", on_step, a) != NULL);
  }
}

static void on_step(cJSON *obj, const struct kube_err *e, void *arg) {
  struct astate *a = arg;
  if (e) {
    note(a->errors, sizeof a->errors, e->msg);
    event_base_loopexit(a->base, NULL);
    return;
  }
  /* step 2 waits past the mock's 1.5 s stream end: the watch must reconnect */
  struct timeval tv = {a->step == 2 ? 2 : 0, 100000};
  evtimer_add(a->later, &tv);
}

static int on_async_event(const char *type, cJSON *obj, const struct kube_err *e, void *arg) {
  struct astate *a = arg;
  if (e) {
    note(a->errors, sizeof a->errors, e->msg);
    return 0;
  }
  note(a->seen, sizeof a->seen, type);
  if (strcmp(type, "DELETED") == 0) {
    kube_watch_stop(a->w); /* inside its own callback */
    a->w = NULL;
    event_base_loopexit(a->base, NULL);
  }
  return 0;
}

static int on_forbidden_event(const char *type, cJSON *obj, const struct kube_err *e, void *arg) {
  struct astate *a = arg;
  if (e) note(a->errors, sizeof a->errors, e->msg);
  return 1; /* stop by return value */
}

static void test_async(void) {
  struct astate a;
  memset(&a, 0, sizeof a);
  a.base = event_base_new();
  unlink(p("exec-401.runs")); /* the plugin's first token is rejected again */
  a.k = client("exec401");     /* so: exec refresh on 401 from inside the loop */
  char err[256];
  CHECK_EQ_INT(kube_attach(a.k, a.base, err, sizeof err), 0);
  struct kube_ref coll = {"v1", "configmaps", "a", NULL, NULL};
  a.w = kube_async_watch(a.k, &coll, "app=x", NULL, on_async_event, &a);
  CHECK(a.w != NULL);
  a.later = evtimer_new(a.base, next_step, &a);
  struct timeval tv = {0, 300000};
  evtimer_add(a.later, &tv);
  struct timeval limit = {20, 0};
  event_base_loopexit(a.base, &limit);
  double t0 = now_s();
  event_base_dispatch(a.base);
  printf("async sequence took %.1f s; events: %s\n", now_s() - t0, a.seen);
  CHECK_EQ_STR(a.seen, "ADDED MODIFIED MODIFIED DELETED");
  CHECK_EQ_STR(a.errors, "get configmaps \"missing\" in namespace \"a\": not found (configmaps \"missing\" not found)");
  CHECK_EQ_INT(a.got404, 1);
  CHECK_EQ_INT(a.cancelled_called, 0);
  CHECK_EQ_INT(a.step, 4);
  CHECK_EQ_INT(count_lines("exec-401.runs"), 2);

  /* a forbidden watch reports ERROR and stops when the callback says so */
  struct kube *r = client("restricted");
  CHECK_EQ_INT(kube_attach(r, a.base, err, sizeof err), 0);
  a.errors[0] = 0;
  CHECK(kube_async_watch(r, &coll, NULL, NULL, on_forbidden_event, &a) != NULL);
  struct timeval two = {2, 0};
  event_base_loopexit(a.base, &two);
  event_base_dispatch(a.base);
  CHECK_HAS(a.errors, "forbidden: user \"r\" lacks the right to watch configmaps in namespace \"a\"");
  /* freeing with a watch still running cancels it */
  kube_async_watch(r, &coll, NULL, NULL, on_forbidden_event, &a);
  kube_free(r);
  if (a.w) kube_watch_stop(a.w);
  event_free(a.later);
  kube_free(a.k);
  event_base_free(a.base);
}

static void on_failed(cJSON *obj, const struct kube_err *e, void *arg) {
  char *msg = arg;
  snprintf(msg, 1100, "%s", e ? e->msg : "no error");
}

/* A request that cannot start (the exec plugin is missing) is reported
 * through its callback, later, from the loop. */
static void test_async_failure(void) {
  struct event_base *base = event_base_new();
  struct kube *k = client("execmissing");
  char err[256], msg[1100] = "";
  CHECK_EQ_INT(kube_attach(k, base, err, sizeof err), 0);
  struct kube_ref r = {"v1", "configmaps", "t", "x", NULL};
  CHECK(kube_async_get(k, &r, on_failed, msg) != NULL);
  CHECK_EQ_STR(msg, "");
  event_base_loop(base, EVLOOP_NONBLOCK);
  CHECK_HAS(msg, "get configmaps \"x\" in namespace \"t\": no credentials: exec plugin "
                 "\"kbridge-missing-plugin\" (user \"execmissing\") was not found: install it from example.com");
  /* cancelled before the loop runs: never called */
  msg[0] = 0;
  kube_call_cancel(kube_async_get(k, &r, on_failed, msg));
  event_base_loop(base, EVLOOP_NONBLOCK);
  CHECK_EQ_STR(msg, "");
  kube_free(k);
  event_base_free(base);
}

/* In-cluster config (service account files) against the mock, with rotation. */
static void test_incluster(void) {
  char sa[512], cmd[1200], err[512], portstr[16];
  snprintf(sa, sizeof sa, "%s/sa", dir);
  mkdir(sa, 0700);
  snprintf(cmd, sizeof cmd, "cp '%s' '%s/ca.crt'", p("ca.crt"), sa);
  if (system(cmd) != 0) return;
  put("sa/token", "good-sa-1", 0600);
  put("sa/namespace", "t", 0600);
  setenv("KBRIDGE_SA_DIR", sa, 1);
  setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1", 1);
  snprintf(portstr, sizeof portstr, "%d", port);
  setenv("KUBERNETES_SERVICE_PORT", portstr, 1);
  struct kubeconfig *kc;
  CHECK_EQ_INT(kubeconfig_load_incluster(NULL, &kc, err, sizeof err), 0);
  struct kube *k = kube_new(kc, err, sizeof err);
  CHECK(k != NULL);
  if (!k) return;
  struct kube_err e;
  struct kube_ref r = {"v1", "configmaps", kube_namespace(k), NULL, NULL};
  CHECK_EQ_INT(kube_list(k, &r, NULL, NULL, &e), 0);
  /* kubelet swaps the token through a symlink: write a new file, rename */
  put("sa/token.new", "expired-sa", 0600);
  if (rename(p("sa/token.new"), p("sa/token")) != 0) perror("rename");
  CHECK_EQ_INT(kube_list(k, &r, NULL, NULL, &e), -1);
  CHECK_HAS(e.msg, "rejected the credentials of the service account");
  put("sa/token.new", "good-sa-2", 0600);
  if (rename(p("sa/token.new"), p("sa/token")) != 0) perror("rename");
  CHECK_EQ_INT(kube_list(k, &r, NULL, NULL, &e), 0);
  kube_free(k);
  unsetenv("KBRIDGE_SA_DIR");
  unsetenv("KUBERNETES_SERVICE_HOST");
  unsetenv("KUBERNETES_SERVICE_PORT");
}

/* The port-forward code's path: its own TLS connection with our credentials. */
static void test_ssl_ctx(const char *context) {
  struct kube *k = client(context);
  char err[256];
  SSL_CTX *ctx = kube_ssl_ctx_new(k, err, sizeof err);
  CHECK(ctx != NULL);
  if (!ctx) {
    fprintf(stderr, "%s\n", err);
    kube_free(k);
    return;
  }
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)kube_server_port(k));
  inet_pton(AF_INET, kube_server_host(k), &sa.sin_addr);
  CHECK_EQ_INT(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  SSL *ssl = SSL_new(ctx);
  CHECK_EQ_INT(kube_ssl_prepare(k, ssl), 0);
  SSL_set_fd(ssl, fd);
  int ok = SSL_connect(ssl) == 1;
  CHECK(ok);
  if (ok) {
    const char *tok, *cert, *key;
    CHECK_EQ_INT(kube_credentials(k, &tok, &cert, &key, err, sizeof err), 0);
    char req[512];
    snprintf(req, sizeof req,
             "GET /api/v1/namespaces/t/configmaps HTTP/1.1\r\nHost: x\r\n%s%s%sConnection: close\r\n\r\n",
             tok ? "Authorization: Bearer " : "", tok ? tok : "", tok ? "\r\n" : "");
    SSL_write(ssl, req, (int)strlen(req));
    char resp[64] = "";
    int n = SSL_read(ssl, resp, sizeof resp - 1);
    if (n > 0) resp[n] = 0;
    CHECK_HAS(resp, "HTTP/1.1 200");
  }
  SSL_free(ssl);
  close(fd);
  SSL_CTX_free(ctx);
  kube_free(k);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_kube mock_apiserver.py\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  snprintf(dir, sizeof dir, "/tmp/kb-kube-XXXXXX");
  if (!mkdtemp(dir)) return 2;
  unsetenv("KUBECONFIG");
  unsetenv("https_proxy");
  unsetenv("HTTPS_PROXY");
  if (start_mock(argv[1]) < 0) return 2;
  write_config();
  test_crud();
  test_update_retry();
  test_errors();
  test_retry();
  test_credentials();
  test_watch_blocking();
  test_async();
  test_async_failure();
  test_incluster();
  test_ssl_ctx("admin");
  test_ssl_ctx("named");
  test_ssl_ctx("cert");
  stop_mock();
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
  return check_done();
}
