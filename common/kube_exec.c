/* kube_exec.c: start an exec credential plugin and parse its ExecCredential.
 *
 * posix_spawnp() reports a missing command as ENOENT directly (glibc), so the
 * installHint can be shown without a fork/exec error pipe. stdout and stderr
 * are read together with poll() so that a chatty stderr cannot block the
 * plugin while we wait on stdout. */
#include "kube_exec.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base64.h"
#include "kubeconfig.h"

extern char **environ;

#define EXEC_TIMEOUT_MS 60000
#define MAX_STDOUT (1 << 20)
#define MAX_STDERR (16 << 10)

void kube_exec_cred_clear(struct kube_exec_cred *c) {
  free(c->token);
  free(c->cert_pem);
  free(c->key_pem);
  memset(c, 0, sizeof *c);
}

int kube_parse_rfc3339(const char *s, time_t *out) {
  struct tm tm;
  memset(&tm, 0, sizeof tm);
  int n = 0;
  if (sscanf(s, "%4d-%2d-%2d%*1[Tt ]%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
             &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) != 6 || n == 0)
    return -1;
  const char *p = s + n;
  if (*p == '.')
    for (p++; *p >= '0' && *p <= '9'; p++) {
    }
  long off = 0;
  if (*p == 'Z' || *p == 'z') {
    p++;
  } else if (*p == '+' || *p == '-') {
    int hh, mm, k = 0;
    if (sscanf(p + 1, "%2d:%2d%n", &hh, &mm, &k) != 2 || k != 5) return -1;
    off = (hh * 3600L + mm * 60L) * (*p == '-' ? -1 : 1);
    p += 6;
  } else {
    return -1;
  }
  if (*p) return -1;
  if (tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 ||
      tm.tm_min > 59 || tm.tm_sec > 60)
    return -1;
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  *out = timegm(&tm) - off;
  return 0;
}

/* The KUBERNETES_EXEC_INFO value. */
static char *exec_info(const struct kubeconfig *kc) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "apiVersion", kc->exec->api_version);
  cJSON_AddStringToObject(o, "kind", "ExecCredential");
  cJSON *spec = cJSON_AddObjectToObject(o, "spec");
  cJSON_AddBoolToObject(spec, "interactive", 0);
  if (kc->exec->provide_cluster_info) {
    cJSON *c = cJSON_AddObjectToObject(spec, "cluster");
    cJSON_AddStringToObject(c, "server", kc->server);
    if (kc->tls_server_name) cJSON_AddStringToObject(c, "tls-server-name", kc->tls_server_name);
    if (kc->insecure_skip_tls_verify) cJSON_AddBoolToObject(c, "insecure-skip-tls-verify", 1);
    if (kc->proxy_url) cJSON_AddStringToObject(c, "proxy-url", kc->proxy_url);
    char *ca = NULL;
    size_t calen = 0;
    if (kc->ca_pem) {
      ca = base64_encode(kc->ca_pem, strlen(kc->ca_pem));
    } else if (kc->ca_file) {
      FILE *fp = fopen(kc->ca_file, "rb");
      if (fp) {
        char buf[65536];
        calen = fread(buf, 1, sizeof buf, fp);
        fclose(fp);
        ca = base64_encode(buf, calen);
      }
    }
    if (ca) cJSON_AddStringToObject(c, "certificate-authority-data", ca);
    free(ca);
  }
  char *s = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  return s;
}

/* Our environment, then the kubeconfig's env (replacing same names), then
 * KUBERNETES_EXEC_INFO. The strings are borrowed except `info`. */
static char **build_env(const struct kubeconfig *kc, char *info) {
  size_t n = 0, m = 0;
  for (char **e = environ; e && *e; e++) n++;
  for (char **e = kc->exec->env; e && *e; e++) m++;
  char **out = calloc(n + m + 2, sizeof(char *));
  if (!out) abort();
  size_t k = 0;
  for (char **e = environ; e && *e; e++) {
    size_t nl = strcspn(*e, "=");
    int replaced = strncmp(*e, "KUBERNETES_EXEC_INFO=", 21) == 0;
    for (char **x = kc->exec->env; x && *x && !replaced; x++)
      replaced = strncmp(*x, *e, nl + 1) == 0;
    if (!replaced) out[k++] = *e;
  }
  for (char **x = kc->exec->env; x && *x; x++) out[k++] = *x;
  out[k++] = info;
  out[k] = NULL;
  return out;
}

static void trim(char *s) {
  size_t l = strlen(s);
  while (l > 0 && (s[l - 1] == '\n' || s[l - 1] == '\r' || s[l - 1] == ' ')) s[--l] = 0;
}

/* Read both pipes until EOF or timeout. Returns 0, or -1 on timeout. */
static int drain(int outfd, int errfd, char *out, size_t outcap, size_t *outlen, char *errb,
                 size_t errcap) {
  size_t el = 0;
  *outlen = 0;
  struct pollfd p[2] = {{outfd, POLLIN, 0}, {errfd, POLLIN, 0}};
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  while (p[0].fd >= 0 || p[1].fd >= 0) {
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long left = EXEC_TIMEOUT_MS - ((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
    if (left <= 0) return -1;
    int r = poll(p, 2, (int)left);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -1;
    for (int i = 0; i < 2; i++) {
      if (p[i].fd < 0 || !p[i].revents) continue;
      char tmp[4096];
      ssize_t n = read(p[i].fd, tmp, sizeof tmp);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        p[i].fd = -1;
        continue;
      }
      char *dst = i == 0 ? out : errb;
      size_t cap = i == 0 ? outcap : errcap, *len = i == 0 ? outlen : &el;
      size_t take = (size_t)n < cap - 1 - *len ? (size_t)n : cap - 1 - *len;
      memcpy(dst + *len, tmp, take);
      *len += take;
    }
  }
  out[*outlen] = 0;
  errb[el] = 0;
  return 0;
}

static int parse_output(const struct kubeconfig *kc, const char *cmd, const char *text,
                        struct kube_exec_cred *out, char *err, size_t errlen) {
  cJSON *j = cJSON_Parse(text);
  if (!j || !cJSON_IsObject(j)) {
    snprintf(err, errlen, "exec plugin \"%s\" did not print an ExecCredential JSON object", cmd);
    cJSON_Delete(j);
    return -1;
  }
  int rc = -1;
  const char *kind = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "kind"));
  const char *ver = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "apiVersion"));
  cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "status");
  if (!kind || strcmp(kind, "ExecCredential")) {
    snprintf(err, errlen, "exec plugin \"%s\" printed kind \"%s\", expected ExecCredential", cmd,
             kind ? kind : "");
    goto done;
  }
  if (!ver || strcmp(ver, kc->exec->api_version)) {
    snprintf(err, errlen, "exec plugin \"%s\" printed apiVersion \"%s\", the kubeconfig asks for %s",
             cmd, ver ? ver : "", kc->exec->api_version);
    goto done;
  }
  if (!cJSON_IsObject(st)) {
    snprintf(err, errlen, "exec plugin \"%s\" printed an ExecCredential without status", cmd);
    goto done;
  }
  const char *tok = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(st, "token"));
  const char *crt = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(st, "clientCertificateData"));
  const char *key = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(st, "clientKeyData"));
  const char *exp = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(st, "expirationTimestamp"));
  if ((crt && *crt) != (key && *key)) {
    snprintf(err, errlen, "exec plugin \"%s\": status has %s without %s", cmd,
             crt ? "clientCertificateData" : "clientKeyData",
             crt ? "clientKeyData" : "clientCertificateData");
    goto done;
  }
  if (!(tok && *tok) && !(crt && *crt)) {
    snprintf(err, errlen, "exec plugin \"%s\": status has neither token nor clientCertificateData",
             cmd);
    goto done;
  }
  time_t expiry = 0;
  if (exp && kube_parse_rfc3339(exp, &expiry) < 0) {
    snprintf(err, errlen, "exec plugin \"%s\": status.expirationTimestamp \"%s\" is not RFC 3339",
             cmd, exp);
    goto done;
  }
  memset(out, 0, sizeof *out);
  out->token = tok && *tok ? strdup(tok) : NULL;
  out->cert_pem = crt && *crt ? strdup(crt) : NULL;
  out->key_pem = key && *key ? strdup(key) : NULL;
  out->expiry = expiry;
  rc = 0;
done:
  cJSON_Delete(j);
  return rc;
}

int kube_exec_run(const struct kubeconfig *kc, struct kube_exec_cred *out, char *err,
                  size_t errlen) {
  const struct kube_exec_config *x = kc->exec;
  const char *cmd = x->command;
  size_t na = 0;
  while (x->args && x->args[na]) na++;
  char **argv = calloc(na + 2, sizeof(char *));
  if (!argv) abort();
  argv[0] = (char *)(uintptr_t)cmd; /* posix_spawn's argv is not const */
  for (size_t i = 0; i < na; i++) argv[i + 1] = x->args[i];

  char *json = exec_info(kc);
  size_t il = strlen(json) + sizeof "KUBERNETES_EXEC_INFO=";
  char *info = malloc(il);
  if (!info) abort();
  snprintf(info, il, "KUBERNETES_EXEC_INFO=%s", json);
  free(json);
  char **envp = build_env(kc, info);

  int po[2] = {-1, -1}, pe[2] = {-1, -1}, rc = -1;
  char *obuf = NULL;
  if (pipe2(po, O_CLOEXEC) < 0 || pipe2(pe, O_CLOEXEC) < 0) {
    snprintf(err, errlen, "exec plugin \"%s\": pipe: %s", cmd, strerror(errno));
    goto done;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, po[1], 1);
  posix_spawn_file_actions_adddup2(&fa, pe[1], 2);
  pid_t pid;
  int e = posix_spawnp(&pid, cmd, &fa, NULL, argv, envp);
  posix_spawn_file_actions_destroy(&fa);
  close(po[1]);
  close(pe[1]);
  po[1] = pe[1] = -1;
  if (e != 0) {
    if (e == ENOENT)
      snprintf(err, errlen, "exec plugin \"%s\" (user \"%s\") was not found%s%s", cmd,
               kc->user_name ? kc->user_name : "", x->install_hint ? ": " : "",
               x->install_hint ? x->install_hint : "");
    else
      snprintf(err, errlen, "exec plugin \"%s\" (user \"%s\") could not be started: %s", cmd,
               kc->user_name ? kc->user_name : "", strerror(e));
    goto done;
  }
  obuf = malloc(MAX_STDOUT);
  char ebuf[MAX_STDERR];
  size_t olen;
  if (!obuf) abort();
  int timed_out = drain(po[0], pe[0], obuf, MAX_STDOUT, &olen, ebuf, sizeof ebuf) < 0;
  if (timed_out) kill(pid, SIGKILL);
  int status;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  trim(ebuf);
  if (timed_out) {
    snprintf(err, errlen, "exec plugin \"%s\" did not finish within %d s", cmd,
             EXEC_TIMEOUT_MS / 1000);
  } else if (WIFEXITED(status) && WEXITSTATUS(status) != 0) {
    snprintf(err, errlen, "exec plugin \"%s\" failed with exit status %d%s%s", cmd,
             WEXITSTATUS(status), ebuf[0] ? ": " : "", ebuf);
  } else if (WIFSIGNALED(status)) {
    snprintf(err, errlen, "exec plugin \"%s\" was killed by signal %d%s%s", cmd, WTERMSIG(status),
             ebuf[0] ? ": " : "", ebuf);
  } else {
    rc = parse_output(kc, cmd, obuf, out, err, errlen);
  }
done:
  for (int i = 0; i < 2; i++) {
    if (po[i] >= 0) close(po[i]);
    if (pe[i] >= 0) close(pe[i]);
  }
  free(obuf);
  free(argv);
  free(envp);
  free(info);
  return rc;
}
