/* test_kube_exec.c: exec credential plugins, with small shell scripts as
 * plugins: v1 and v1beta1 output, expiry, environment and cluster info,
 * failures (stderr in the message), a missing command (installHint). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "check.h"
#include "kube_exec.h"
#include "kubeconfig.h"

static char dir[256];

static const char *p(const char *name) {
  static char bufs[4][512];
  static int i;
  char *b = bufs[i++ % 4];
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

#define CHECK_HAS(s, sub)                                                           \
  do {                                                                              \
    const char *hs_ = (s);                                                          \
    CHECK(hs_ && strstr(hs_, (sub)));                                               \
    if (!(hs_ && strstr(hs_, (sub)))) fprintf(stderr, "  got: %s\n  want: %s\n", hs_, (sub)); \
  } while (0)

/* A kubeconfig whose user runs `command` (relative to dir) with api version v. */
static struct kubeconfig *config(const char *command, const char *v, const char *extra) {
  char y[2048];
  snprintf(y, sizeof y,
           "current-context: c\n"
           "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443', "
           "certificate-authority-data: 'Q0FEQVRB', tls-server-name: api.test}}]\n"
           "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
           "users:\n"
           "- name: u\n"
           "  user:\n"
           "    exec:\n"
           "      apiVersion: client.authentication.k8s.io/%s\n"
           "      command: %s\n"
           "      installHint: 'get it with: apt install the-plugin'\n"
           "%s",
           v, command, extra ? extra : "");
  put("kubeconfig", y, 0600);
  struct kubeconfig_opts o = {p("kubeconfig"), NULL, NULL};
  struct kubeconfig *kc = NULL;
  char err[512];
  if (kubeconfig_load(&o, &kc, err, sizeof err) < 0) fprintf(stderr, "config: %s\n", err);
  return kc;
}

static int run(struct kubeconfig *kc, struct kube_exec_cred *c, char *err) {
  memset(c, 0, sizeof *c);
  err[0] = 0;
  return kube_exec_run(kc, c, err, 1024);
}

static void test_token_v1(void) {
  char err[1024];
  struct kube_exec_cred c;
  put("tok.sh",
      "#!/bin/sh\n"
      "echo \"$@|$GREETING|$KUBERNETES_EXEC_INFO\" > \"$(dirname \"$0\")/seen\"\n"
      "cat <<JSON\n"
      "{\"apiVersion\": \"client.authentication.k8s.io/v1\", \"kind\": \"ExecCredential\",\n"
      " \"status\": {\"token\": \"tok-v1\", \"expirationTimestamp\": \"2030-01-02T03:04:05Z\"}}\n"
      "JSON\n",
      0755);
  struct kubeconfig *kc = config("./tok.sh", "v1",
                                 "      args: [one, 'two words']\n"
                                 "      env: [{name: GREETING, value: hello}]\n"
                                 "      provideClusterInfo: true\n"
                                 "      interactiveMode: Never\n");
  CHECK(kc != NULL);
  if (!kc) return;
  CHECK_EQ_INT(run(kc, &c, err), 0);
  CHECK_EQ_STR(c.token, "tok-v1");
  CHECK(c.cert_pem == NULL);
  CHECK_EQ_INT(c.expiry, 1893553445); /* 2030-01-02T03:04:05Z */
  kube_exec_cred_clear(&c);
  FILE *f = fopen(p("seen"), "r");
  char seen[2048] = "";
  if (f) {
    if (!fgets(seen, sizeof seen, f)) seen[0] = 0;
    fclose(f);
  }
  CHECK_HAS(seen, "one two words|hello|");
  CHECK_HAS(seen, "\"kind\":\"ExecCredential\"");
  CHECK_HAS(seen, "\"apiVersion\":\"client.authentication.k8s.io/v1\"");
  CHECK_HAS(seen, "\"interactive\":false");
  CHECK_HAS(seen, "\"server\":\"https://127.0.0.1:6443\"");
  CHECK_HAS(seen, "\"tls-server-name\":\"api.test\"");
  CHECK_HAS(seen, "\"certificate-authority-data\":\"Q0FEQVRB\"");
  kubeconfig_free(kc);

  /* without provideClusterInfo the spec has no cluster */
  kc = config("./tok.sh", "v1", NULL);
  CHECK_EQ_INT(run(kc, &c, err), 0);
  kube_exec_cred_clear(&c);
  f = fopen(p("seen"), "r");
  if (f) {
    if (!fgets(seen, sizeof seen, f)) seen[0] = 0;
    fclose(f);
  }
  CHECK(strstr(seen, "\"cluster\"") == NULL);
  CHECK_HAS(seen, "\"interactive\":false");
  kubeconfig_free(kc);
}

static void test_cert_v1beta1(void) {
  char err[1024];
  struct kube_exec_cred c;
  put("cert.sh",
      "#!/bin/sh\n"
      "printf '{\"apiVersion\":\"client.authentication.k8s.io/v1beta1\",\"kind\":\"ExecCredential\","
      "\"status\":{\"clientCertificateData\":\"-----BEGIN CERTIFICATE-----\\\\nAAA\\\\n\","
      "\"clientKeyData\":\"-----BEGIN PRIVATE KEY-----\\\\nBBB\\\\n\","
      "\"expirationTimestamp\":\"2030-01-02T04:04:05.123+01:00\"}}'\n",
      0755);
  struct kubeconfig *kc = config("./cert.sh", "v1beta1", NULL);
  CHECK_EQ_INT(run(kc, &c, err), 0);
  if (err[0]) fprintf(stderr, "%s\n", err);
  CHECK(c.token == NULL);
  CHECK_EQ_STR(c.cert_pem, "-----BEGIN CERTIFICATE-----\nAAA\n");
  CHECK_EQ_STR(c.key_pem, "-----BEGIN PRIVATE KEY-----\nBBB\n");
  CHECK_EQ_INT(c.expiry, 1893553445);
  kube_exec_cred_clear(&c);
  kubeconfig_free(kc);
}

struct bad {
  const char *script, *version, *want;
};

static void test_failures(void) {
  static const struct bad cases[] = {
      {"#!/bin/sh\necho 'getting token...'\necho 'boom: no credentials for you' >&2\nexit 3\n", "v1",
       "exec plugin \"" /* path follows */},
      {"#!/bin/sh\necho 'not json'\n", "v1", "did not print an ExecCredential JSON object"},
      {"#!/bin/sh\necho '{\"apiVersion\":\"client.authentication.k8s.io/v1beta1\",\"kind\":\"ExecCredential\","
       "\"status\":{\"token\":\"x\"}}'\n",
       "v1", "printed apiVersion \"client.authentication.k8s.io/v1beta1\", the kubeconfig asks for "
             "client.authentication.k8s.io/v1"},
      {"#!/bin/sh\necho '{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\","
       "\"status\":{}}'\n",
       "v1", "status has neither token nor clientCertificateData"},
      {"#!/bin/sh\necho '{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\","
       "\"status\":{\"token\":\"t\",\"expirationTimestamp\":\"tomorrow\"}}'\n",
       "v1", "expirationTimestamp \"tomorrow\" is not RFC 3339"},
      {"#!/bin/sh\necho '{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\","
       "\"status\":{\"clientCertificateData\":\"c\"}}'\n",
       "v1", "status has clientCertificateData without clientKeyData"},
      {"#!/bin/sh\nkill -9 $$\n", "v1", "was killed by signal 9"},
  };
  char err[1024];
  struct kube_exec_cred c;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    put("bad.sh", cases[i].script, 0755);
    struct kubeconfig *kc = config("./bad.sh", cases[i].version, NULL);
    CHECK_EQ_INT(run(kc, &c, err), -1);
    CHECK_HAS(err, cases[i].want);
    if (i == 0) {
      CHECK_HAS(err, "failed with exit status 3: boom: no credentials for you");
    }
    kubeconfig_free(kc);
  }

  /* missing command: the installHint is in the message */
  struct kubeconfig *kc = config("kbridge-no-such-plugin", "v1", NULL);
  CHECK_EQ_INT(run(kc, &c, err), -1);
  CHECK_HAS(err, "exec plugin \"kbridge-no-such-plugin\" (user \"u\") was not found: get it with: apt "
                 "install the-plugin");
  kubeconfig_free(kc);
  /* not executable */
  put("noexec.sh", "#!/bin/sh\n", 0644);
  kc = config("./noexec.sh", "v1", NULL);
  CHECK_EQ_INT(run(kc, &c, err), -1);
  CHECK_HAS(err, "could not be started: Permission denied");
  kubeconfig_free(kc);
}

static void test_rfc3339(void) {
  time_t t;
  CHECK_EQ_INT(kube_parse_rfc3339("1970-01-01T00:00:00Z", &t), 0);
  CHECK_EQ_INT(t, 0);
  CHECK_EQ_INT(kube_parse_rfc3339("2030-01-02T03:04:05.999999Z", &t), 0);
  CHECK_EQ_INT(t, 1893553445);
  CHECK_EQ_INT(kube_parse_rfc3339("2030-01-01T22:04:05-05:00", &t), 0);
  CHECK_EQ_INT(t, 1893553445);
  CHECK_EQ_INT(kube_parse_rfc3339("2030-01-02 03:04:05", &t), -1);
  CHECK_EQ_INT(kube_parse_rfc3339("2030-13-02T03:04:05Z", &t), -1);
  CHECK_EQ_INT(kube_parse_rfc3339("2030-01-02T03:04:05Zjunk", &t), -1);
  CHECK_EQ_INT(kube_parse_rfc3339("", &t), -1);
}

int main(void) {
  snprintf(dir, sizeof dir, "/tmp/kb-kube-exec-XXXXXX");
  if (!mkdtemp(dir)) return 2;
  test_token_v1();
  test_cert_v1beta1();
  test_failures();
  test_rfc3339();
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
  return check_done();
}
