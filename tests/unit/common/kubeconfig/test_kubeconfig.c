/* test_kubeconfig.c: kubeconfig parsing, merging and errors, with files
 * written to a temporary directory. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "incluster.h"
#include "kubeconfig.h"

static char dir[256];

static const char *p(const char *name) {
  static char bufs[4][512];
  static int i;
  char *b = bufs[i++ % 4];
  snprintf(b, 512, "%s/%s", dir, name);
  return b;
}

static void put(const char *name, const char *text) {
  FILE *f = fopen(p(name), "w");
  if (!f) {
    perror(name);
    exit(2);
  }
  fputs(text, f);
  fclose(f);
}

#define CHECK_HAS(s, sub)                                                          \
  do {                                                                             \
    const char *hs_ = (s);                                                         \
    CHECK(hs_ && strstr(hs_, (sub)));                                              \
    if (!(hs_ && strstr(hs_, (sub)))) fprintf(stderr, "  got: %s\n  want: %s\n", hs_, (sub)); \
  } while (0)

/* Load with the given path/context/namespace; returns NULL and fills err on error. */
static struct kubeconfig *load(const char *path, const char *ctx, const char *ns, char *err) {
  struct kubeconfig_opts o = {path, ctx, ns};
  struct kubeconfig *kc = NULL;
  err[0] = 0;
  if (kubeconfig_load(&o, &kc, err, 512) < 0) return NULL;
  return kc;
}

static const char *FULL =
    "apiVersion: v1\n"
    "kind: Config\n"
    "current-context: dev\n"
    "clusters:\n"
    "- name: c1\n"
    "  cluster:\n"
    "    server: https://10.1.2.3:6443/\n"
    "    certificate-authority: certs/ca.crt\n"
    "    tls-server-name: api.internal\n"
    "    proxy-url: http://proxy:3128\n"
    "- name: c2\n"
    "  cluster:\n"
    "    server: \"[::1]:7443\"\n"
    "    certificate-authority-data: LS0tLS1CRUdJTiBDRVJU\n" /* "-----BEGIN CERT" */
    "    insecure-skip-tls-verify: true\n"
    "users:\n"
    "- name: alice\n"
    "  user:\n"
    "    token: tok123\n"
    "- name: bob\n"
    "  user:\n"
    "    tokenFile: tokens/bob\n"
    "    client-certificate: /abs/bob.crt\n"
    "    client-key: keys/bob.key\n"
    "- name: carol\n"
    "  user:\n"
    "    client-certificate-data: aGVsbG8=\n"  /* hello */
    "    client-key-data: d29ybGQ\n"           /* world, no padding */
    "    username: carol\n"
    "    password: s3cret\n"
    "- name: dave\n"
    "  user:\n"
    "    exec:\n"
    "      apiVersion: client.authentication.k8s.io/v1beta1\n"
    "      command: ./bin/get-token\n"
    "      args: [--cluster, c2]\n"
    "      env:\n"
    "      - name: FOO\n"
    "        value: bar\n"
    "      provideClusterInfo: true\n"
    "      installHint: install get-token from example.com\n"
    "      interactiveMode: Never\n"
    "contexts:\n"
    "- name: dev\n"
    "  context: {cluster: c1, user: alice, namespace: shop}\n"
    "- name: ops\n"
    "  context: {cluster: c1, user: bob}\n"
    "- name: v6\n"
    "  context: {cluster: c2, user: carol, namespace: x}\n"
    "- name: ex\n"
    "  context: {cluster: c2, user: dave}\n"
    "- name: anon\n"
    "  context: {cluster: c2}\n"
    "- name: prod\n"
    "  context: {cluster: c1, user: bob2}\n"
    "- name: nocluster\n"
    "  context: {cluster: zzz, user: alice}\n";

static void test_fields(void) {
  char err[512], full[512];
  put("full.yaml", FULL);
  snprintf(full, sizeof full, "%s", p("full.yaml"));
  struct kubeconfig *kc = load(full, NULL, NULL, err);
  CHECK(kc != NULL);
  if (!kc) {
    fprintf(stderr, "%s\n", err);
    return;
  }
  CHECK_EQ_STR(kc->context, "dev");
  CHECK_EQ_STR(kc->server, "https://10.1.2.3:6443");
  CHECK_EQ_STR(kc->ca_file, p("certs/ca.crt"));
  CHECK_EQ_STR(kc->tls_server_name, "api.internal");
  CHECK_EQ_STR(kc->proxy_url, "http://proxy:3128");
  CHECK_EQ_INT(kc->insecure_skip_tls_verify, 0);
  CHECK_EQ_STR(kc->token, "tok123");
  CHECK_EQ_STR(kc->namespace, "shop");
  CHECK_EQ_STR(kc->origin, full);
  CHECK(kc->exec == NULL && kc->ca_pem == NULL);
  kubeconfig_free(kc);

  kc = load(full, "dev", "other", err); /* -n wins over the context's namespace */
  CHECK(kc && strcmp(kc->namespace, "other") == 0);
  kubeconfig_free(kc);

  kc = load(full, "ops", NULL, err);
  CHECK(kc != NULL);
  if (kc) {
    CHECK_EQ_STR(kc->namespace, "default");
    CHECK_EQ_STR(kc->token_file, p("tokens/bob"));
    CHECK_EQ_STR(kc->client_cert_file, "/abs/bob.crt");
    CHECK_EQ_STR(kc->client_key_file, p("keys/bob.key"));
    CHECK(kc->token == NULL);
  }
  kubeconfig_free(kc);

  kc = load(full, "v6", NULL, err);
  CHECK(kc != NULL);
  if (kc) {
    CHECK_EQ_STR(kc->server, "https://[::1]:7443"); /* scheme added like kubectl */
    CHECK_EQ_STR(kc->ca_pem, "-----BEGIN CERT");
    CHECK_EQ_INT(kc->insecure_skip_tls_verify, 1);
    CHECK_EQ_STR(kc->client_cert_pem, "hello");
    CHECK_EQ_STR(kc->client_key_pem, "world");
    CHECK_EQ_STR(kc->username, "carol");
    CHECK_EQ_STR(kc->password, "s3cret");
    CHECK_EQ_STR(kc->namespace, "x");
  }
  kubeconfig_free(kc);

  kc = load(full, "ex", NULL, err);
  CHECK(kc && kc->exec);
  if (kc && kc->exec) {
    struct kube_exec_config *x = kc->exec;
    CHECK_EQ_STR(x->api_version, "client.authentication.k8s.io/v1beta1");
    CHECK_EQ_STR(x->command, p("./bin/get-token"));
    CHECK_EQ_STR(x->args[0], "--cluster");
    CHECK_EQ_STR(x->args[1], "c2");
    CHECK(x->args[2] == NULL);
    CHECK_EQ_STR(x->env[0], "FOO=bar");
    CHECK(x->env[1] == NULL);
    CHECK_EQ_INT(x->provide_cluster_info, 1);
    CHECK_EQ_STR(x->install_hint, "install get-token from example.com");
  }
  kubeconfig_free(kc);

  kc = load(full, "anon", NULL, err); /* a context without user: no credentials */
  CHECK(kc && kc->user_name == NULL && kc->token == NULL);
  kubeconfig_free(kc);

  CHECK(load(full, "prod", NULL, err) == NULL);
  CHECK_HAS(err, "full.yaml: context \"prod\" names user \"bob2\" which is not defined");
  CHECK(load(full, "nocluster", NULL, err) == NULL);
  CHECK_HAS(err, "context \"nocluster\" names cluster \"zzz\" which is not defined");
  CHECK(load(full, "nope", NULL, err) == NULL);
  CHECK_HAS(err, "context \"nope\" (from --context) is not defined");
  CHECK_HAS(err, "dev, ops, v6");
}

/* Two files and a missing one in KUBECONFIG: first definition wins,
 * current-context from the first file setting it, relative paths against the
 * file that defines the entry. */
static void test_merge(void) {
  char err[512];
  mkdir(p("b"), 0700);
  put("a.yaml",
      "clusters:\n"
      "- name: shared\n"
      "  cluster: {server: https://a.example:443}\n"
      "users:\n"
      "- name: u\n"
      "  user: {token: from-a}\n"
      "contexts:\n"
      "- name: c\n"
      "  context: {cluster: shared, user: u, namespace: na}\n");
  put("b/b.yaml",
      "current-context: c\n"
      "clusters:\n"
      "- name: shared\n"
      "  cluster: {server: https://b.example:443}\n"
      "- name: onlyb\n"
      "  cluster: {server: https://onlyb:6443, certificate-authority: ca.pem}\n"
      "users:\n"
      "- name: u\n"
      "  user: {token: from-b}\n"
      "contexts:\n"
      "- name: c\n"
      "  context: {cluster: onlyb, user: u}\n"
      "- name: d\n"
      "  context: {cluster: onlyb, user: u}\n");
  put("c.yaml", "current-context: d\n");
  char env[2048];
  snprintf(env, sizeof env, "%s:%s::%s:%s", p("missing.yaml"), p("a.yaml"), p("b/b.yaml"), p("c.yaml"));
  setenv("KUBECONFIG", env, 1);
  struct kubeconfig *kc = load(NULL, NULL, NULL, err);
  CHECK(kc != NULL);
  if (kc) {
    CHECK_EQ_STR(kc->context, "c");                      /* from b (a sets none), not c's "d" */
    CHECK_EQ_STR(kc->server, "https://a.example:443");   /* context c from a -> shared from a */
    CHECK_EQ_STR(kc->token, "from-a");
    CHECK_EQ_STR(kc->namespace, "na");
  }
  kubeconfig_free(kc);
  kc = load(NULL, "d", NULL, err);
  CHECK(kc != NULL);
  if (kc) {
    CHECK_EQ_STR(kc->server, "https://onlyb:6443");
    CHECK_EQ_STR(kc->ca_file, p("b/ca.pem")); /* relative to b's directory */
    CHECK_EQ_STR(kc->token, "from-a");        /* user u: a wins */
  }
  kubeconfig_free(kc);

  /* reversed order: b's definitions win */
  snprintf(env, sizeof env, "%s:%s", p("b/b.yaml"), p("a.yaml"));
  setenv("KUBECONFIG", env, 1);
  kc = load(NULL, NULL, NULL, err);
  CHECK(kc && strcmp(kc->server, "https://onlyb:6443") == 0 && strcmp(kc->token, "from-b") == 0);
  kubeconfig_free(kc);

  /* --kubeconfig ignores KUBECONFIG */
  kc = load(p("a.yaml"), "c", NULL, err);
  CHECK(kc && strcmp(kc->server, "https://a.example:443") == 0);
  kubeconfig_free(kc);
  CHECK(load(p("a.yaml"), NULL, NULL, err) == NULL);
  CHECK_HAS(err, "a.yaml: no current-context is set; choose one with --context (defined: c)");

  snprintf(env, sizeof env, "%s:%s", p("missing1"), p("missing2"));
  setenv("KUBECONFIG", env, 1);
  CHECK(load(NULL, NULL, NULL, err) == NULL);
  CHECK_HAS(err, "none of the files in KUBECONFIG=");
  unsetenv("KUBECONFIG");
}

/* ~/.kube/config and the exact message of the issue. */
static void test_home(void) {
  char err[512], home[512];
  snprintf(home, sizeof home, "%s/home", dir);
  mkdir(home, 0700);
  setenv("HOME", home, 1);
  unsetenv("KUBECONFIG");
  CHECK(load(NULL, NULL, NULL, err) == NULL);
  CHECK_HAS(err, "~/.kube/config does not exist");
  mkdir(p("home/.kube"), 0700);
  put("home/.kube/config",
      "current-context: prod\n"
      "clusters: [{name: c, cluster: {server: 'https://k:6443'}}]\n"
      "contexts: [{name: prod, context: {cluster: c, user: bob}}]\n");
  CHECK(load(NULL, NULL, NULL, err) == NULL);
  CHECK_EQ_STR(err, "~/.kube/config: context \"prod\" names user \"bob\" which is not defined");
}

struct bad_case {
  const char *yaml;
  const char *want; /* substring of the error */
};

static void test_errors(void) {
  static const struct bad_case cases[] = {
      {"clusters:\n- name: c\n  cluster: {server: x\n", "bad.yaml:4:1: invalid YAML"},
      {"current-context: c\nclusters:\n  - name: c\n    cluster:\n      server: [a\n",
       "bad.yaml:6:1: invalid YAML"},
      {"just a string\n", "bad.yaml:1: the top level must be a map"},
      {"current-context: c\ncontexts: {c: 1}\n", "bad.yaml:2: contexts must be a list"},
      {"current-context: c\ncontexts: [{name: c, context: {user: u}}]\n",
       "context \"c\" names no cluster"},
      {"current-context: c\ncontexts: [{name: c}]\n", "context \"c\" has no context section"},
      {"current-context: c\nclusters: [{name: k, cluster: {insecure-skip-tls-verify: true}}]\n"
       "contexts: [{name: c, context: {cluster: k}}]\n",
       "cluster \"k\" has no server"},
      {"current-context: c\nclusters: [{name: k, cluster: {server: 'ftp://x'}}]\n"
       "contexts: [{name: c, context: {cluster: k}}]\n",
       "server \"ftp://x\" must be an https:// or http:// URL"},
      {"current-context: c\nclusters: [{name: k, cluster: {server: 'https://x', "
       "certificate-authority-data: 'not base64!'}}]\ncontexts: [{name: c, context: {cluster: k}}]\n",
       "cluster \"k\": certificate-authority-data is not valid base64"},
      {"current-context: c\nclusters: [{name: k, cluster: {server: 'https://x', "
       "insecure-skip-tls-verify: perhaps}}]\ncontexts: [{name: c, context: {cluster: k}}]\n",
       "insecure-skip-tls-verify must be true or false"},
      {"current-context: c\nclusters: [{name: k, cluster: {server: [a, b]}}]\n"
       "contexts: [{name: c, context: {cluster: k}}]\n",
       "bad.yaml:2: cluster \"k\": server must be a string"},
      {"current-context: c\nclusters: [{name: k, cluster: {server: 'https://x'}}]\n"
       "users: [{name: u, user: {client-certificate: a.crt}}]\n"
       "contexts: [{name: c, context: {cluster: k, user: u}}]\n",
       "user \"u\" has a client certificate but no client-key"},
      {"current-context: c\nclusters: [{name: k, cluster: {server: 'https://x'}}]\n"
       "users: [{name: u, user: {exec: {apiVersion: client.authentication.k8s.io/v1alpha1, "
       "command: x}}}]\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n",
       "apiVersion \"client.authentication.k8s.io/v1alpha1\" is not supported"},
      {"current-context: c\nclusters: [{name: k, cluster: {server: 'https://x'}}]\n"
       "users: [{name: u, user: {exec: {apiVersion: client.authentication.k8s.io/v1}}}]\n"
       "contexts: [{name: c, context: {cluster: k, user: u}}]\n",
       "user \"u\": exec: command is missing"},
      {"current-context: c\nclusters: [{name: k, cluster: {server: 'https://x'}}]\n"
       "users: [{name: u, user: {auth-provider: {name: gcp}}}]\n"
       "contexts: [{name: c, context: {cluster: k, user: u}}]\n",
       "uses auth-provider"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char err[512];
    put("bad.yaml", cases[i].yaml);
    struct kubeconfig *kc = load(p("bad.yaml"), NULL, NULL, err);
    CHECK(kc == NULL);
    kubeconfig_free(kc);
    if (!strstr(err, cases[i].want)) fprintf(stderr, "case %zu:\n", i);
    CHECK_HAS(err, cases[i].want);
    CHECK_HAS(err, p("bad.yaml")); /* every message names the file */
  }
  char err[512];
  CHECK(load(p("does-not-exist.yaml"), NULL, NULL, err) == NULL);
  CHECK_HAS(err, "does-not-exist.yaml: No such file or directory");
  put("empty.yaml", "");
  CHECK(load(p("empty.yaml"), NULL, NULL, err) == NULL);
  CHECK_HAS(err, "no current-context is set");
}

static void test_incluster(void) {
  char err[512];
  struct kubeconfig *kc;
  mkdir(p("sa"), 0700);
  setenv("KBRIDGE_SA_DIR", p("sa"), 1);
  unsetenv("KUBERNETES_SERVICE_HOST");
  CHECK(kubeconfig_load_incluster(NULL, &kc, err, sizeof err) < 0);
  CHECK_HAS(err, "KUBERNETES_SERVICE_HOST");
  setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1", 1);
  setenv("KUBERNETES_SERVICE_PORT", "443", 1);
  CHECK(kubeconfig_load_incluster(NULL, &kc, err, sizeof err) < 0);
  CHECK_HAS(err, "sa/token");
  put("sa/token", "abc\n");
  put("sa/ca.crt", "PEM");
  put("sa/namespace", "team-a\n");
  CHECK(kubeconfig_load_incluster(NULL, &kc, err, sizeof err) == 0);
  if (kc) {
    CHECK_EQ_STR(kc->server, "https://10.96.0.1:443");
    CHECK_EQ_STR(kc->token_file, p("sa/token"));
    CHECK_EQ_STR(kc->ca_file, p("sa/ca.crt"));
    CHECK_EQ_STR(kc->namespace, "team-a");
    kubeconfig_free(kc);
  }
  setenv("KUBERNETES_SERVICE_HOST", "fd00::1", 1);
  CHECK(kubeconfig_load_incluster("ns2", &kc, err, sizeof err) == 0);
  if (kc) {
    CHECK_EQ_STR(kc->server, "https://[fd00::1]:443");
    CHECK_EQ_STR(kc->namespace, "ns2");
    kubeconfig_free(kc);
  }
  unsetenv("KUBERNETES_SERVICE_HOST");
  unsetenv("KBRIDGE_SA_DIR");
}

/* The one service account check (common/incluster.c) the client and the agent
 * share: the agent's messages word for word, the namespace's first word. */
static void test_incluster_check(void) {
  char err[512];
  struct incluster sa;
  mkdir(p("sa2"), 0700);
  setenv("KBRIDGE_SA_DIR", p("sa2"), 1);
  unsetenv("KUBERNETES_SERVICE_HOST");
  setenv("KUBERNETES_SERVICE_PORT", "443", 1);
  CHECK(incluster_check(&sa, err, sizeof err) < 0);
  CHECK_EQ_STR(err, "not running in a pod: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT "
                    "are not set");
  CHECK(sa.host == NULL);
  setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1", 1);
  char want[1024];
  snprintf(want, sizeof want, "service account token %s: No such file or directory", p("sa2/token"));
  CHECK(incluster_check(&sa, err, sizeof err) < 0);
  CHECK_EQ_STR(err, want);
  put("sa2/token", "abc\n");
  snprintf(want, sizeof want, "service account ca.crt %s: No such file or directory",
           p("sa2/ca.crt"));
  CHECK(incluster_check(&sa, err, sizeof err) < 0);
  CHECK_EQ_STR(err, want);
  struct kubeconfig *kc;
  CHECK(kubeconfig_load_incluster(NULL, &kc, err, sizeof err) < 0);
  CHECK_HAS(err, "in-cluster config: service account ca.crt ");
  put("sa2/ca.crt", "PEM");
  CHECK(incluster_check(&sa, err, sizeof err) == 0);
  CHECK_EQ_STR(sa.host, "10.96.0.1");
  CHECK_EQ_STR(sa.port, "443");
  CHECK_EQ_STR(sa.token_path, p("sa2/token"));
  CHECK_EQ_STR(sa.ca_path, p("sa2/ca.crt"));
  CHECK_EQ_STR(sa.namespace, "");
  put("sa2/namespace", "team-b\r\n");
  CHECK(incluster_check(&sa, err, sizeof err) == 0);
  CHECK_EQ_STR(sa.namespace, "team-b");
  unsetenv("KUBERNETES_SERVICE_HOST");
  unsetenv("KUBERNETES_SERVICE_PORT");
  unsetenv("KBRIDGE_SA_DIR");
}

int main(void) {
  snprintf(dir, sizeof dir, "/tmp/kb-kubeconfig-XXXXXX");
  if (!mkdtemp(dir)) return 2;
  unsetenv("KUBECONFIG");
  test_fields();
  test_merge();
  test_home();
  test_errors();
  test_incluster();
  test_incluster_check();
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "cleanup of %s failed\n", dir);
  return check_done();
}
