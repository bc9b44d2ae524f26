/* main.c: kbridge-signer, the one cluster-side party that holds kbridge's CA
 * keys (see signer.h for what it signs, docs/security.md for why it exists).
 *
 * It runs in its own namespace (deploy/signer.yaml: kbridge-system), where no
 * developer has rights, and loops: list the certificatesigningrequests, and
 * for every pending one whose signerName is kbridge.dev/<ns>.<svc>:
 *   1. read the request (PKCS#10, valid self-signature, one CN);
 *   2. ask the API server (SubjectAccessReview) whether the requester
 *      (spec.username/groups/uid/extra, which the API server filled in and
 *      nobody can forge) may use the agent: create pods/portforward in <ns>
 *      for a developer's certificate; create deployments there for the
 *      agent's own certificate (CN kbridge-agent);
 *   3. for a developer's certificate: the route key (the CN) must not be held
 *      by another identity (holders: a ConfigMap in the signer's namespace;
 *      a key is held while the last certificate issued for it is valid),
 *      unless the request carries the annotation kbridge.dev/force: "true"
 *      (kbridge connect --force), which is logged;
 *   4. approve (condition Approved) or deny (Denied, with the reason the
 *      CLI shows), then sign with the Service's CA (a Secret in the signer's
 *      namespace, made on first use) and write status.certificate: the
 *      certificate followed by the CA certificate.
 * Polling (every --interval-ms) rather than a watch: the requests are few and
 * this keeps one blocking client. Every JANITOR_ROUND_S the janitor
 * (janitor.h) also looks for taken-over Services whose agent has had no ready
 * pod for --janitor-seconds, and restores them. Exit: SIGTERM/SIGINT; errors
 * are logged and retried on the next round. */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <openssl/crypto.h>

#include "base64.h"
#include "dnslabel.h"
#include "janitor.h"
#include "kube.h"
#include "kubeconfig.h"
#include "log.h"
#include "signer.h"
#include "tls.h"

#define HOLDERS_CM "kbridge-signer-holders"
#define JANITOR_ROUND_S 5

struct signer {
  struct kube *k;
  char ns[64];              /* the signer's own namespace */
  long client_seconds;      /* validity of a developer's certificate */
  long agent_seconds;       /* validity of the agent's certificate */
};

static volatile sig_atomic_t stop;
static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

static const char *jstr(const cJSON *o, const char *path) {
  char buf[128];
  snprintf(buf, sizeof buf, "%s", path);
  const cJSON *cur = o;
  for (char *save = NULL, *tok = strtok_r(buf, ".", &save); tok && cur;
       tok = strtok_r(NULL, ".", &save))
    cur = cJSON_GetObjectItemCaseSensitive(cur, tok);
  return cJSON_GetStringValue(cur);
}

/* base64 of PEM text: NULL when it is not base64 or holds a NUL byte. */
static char *pem_from_base64(const char *in) {
  size_t n;
  char *out = base64_decode(in, &n);
  if (out && memchr(out, 0, n)) { /* PEM text only */
    free(out);
    return NULL;
  }
  return out;
}

static int has_condition(const cJSON *csr, const char *type) {
  const cJSON *c;
  cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(
                            cJSON_GetObjectItemCaseSensitive(csr, "status"), "conditions")) {
    const char *t = jstr(c, "type");
    if (t && strcmp(t, type) == 0) return 1;
  }
  return 0;
}

static int has_usage(const cJSON *csr, const char *usage) {
  const cJSON *u;
  cJSON_ArrayForEach(u, cJSON_GetObjectItemCaseSensitive(
                            cJSON_GetObjectItemCaseSensitive(csr, "spec"), "usages")) {
    if (cJSON_IsString(u) && strcmp(u->valuestring, usage) == 0) return 1;
  }
  return 0;
}

/* ---- the CA of one Service ---- */

/* The CA of ns/svc from its Secret, made (and stored) on first use. */
static int service_ca(struct signer *s, const char *ns, const char *svc, struct tls_pem *ca,
                      char *err, size_t errlen) {
  char name[200];
  snprintf(name, sizeof name, "kbridge-ca.%s.%s", ns, svc);
  struct kube_ref r = {"v1", "secrets", s->ns, name, NULL};
  struct kube_err e;
  memset(ca, 0, sizeof *ca);
  for (int attempt = 0; attempt < 2; attempt++) {
    cJSON *sec = NULL;
    if (kube_get(s->k, &r, &sec, &e) == 0) {
      const cJSON *data = cJSON_GetObjectItemCaseSensitive(sec, "data");
      const char *c, *k;
      c = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(data, "ca.crt"));
      k = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(data, "ca.key"));
      ca->cert = c ? pem_from_base64(c) : NULL;
      ca->key = k ? pem_from_base64(k) : NULL;
      cJSON_Delete(sec);
      if (!ca->cert || !ca->key) {
        tls_pem_clear(ca);
        snprintf(err, errlen, "secret %s/%s lacks ca.crt or ca.key", s->ns, name);
        return -1;
      }
      return 0;
    }
    if (e.status != 404) {
      snprintf(err, errlen, "%s", e.msg);
      return -1;
    }
    char cn[140];
    snprintf(cn, sizeof cn, "%s/%s", ns, svc);
    if (tls_ca_create(cn, TLS_KEY_P256, ca, err, errlen) < 0) return -1;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "apiVersion", "v1");
    cJSON_AddStringToObject(o, "kind", "Secret");
    cJSON *md = cJSON_AddObjectToObject(o, "metadata");
    cJSON_AddStringToObject(md, "name", name);
    cJSON_AddStringToObject(md, "namespace", s->ns);
    cJSON *lb = cJSON_AddObjectToObject(md, "labels");
    cJSON_AddStringToObject(lb, "app.kubernetes.io/managed-by", "kbridge");
    cJSON_AddStringToObject(o, "type", "Opaque");
    cJSON *sd = cJSON_AddObjectToObject(o, "stringData");
    cJSON_AddStringToObject(sd, "ca.crt", ca->cert);
    cJSON_AddStringToObject(sd, "ca.key", ca->key);
    int rc = kube_create(s->k, &r, o, NULL, &e);
    /* the key's copy inside the JSON tree */
    cJSON *kv = cJSON_GetObjectItemCaseSensitive(sd, "ca.key");
    OPENSSL_cleanse(kv->valuestring, strlen(kv->valuestring));
    cJSON_Delete(o);
    if (rc == 0) {
      log_info("made the CA of %s/%s (secret %s/%s)", ns, svc, s->ns, name);
      return 0;
    }
    tls_pem_clear(ca);
    if (e.status != 409) { /* 409: made by an earlier round meanwhile: read it */
      snprintf(err, errlen, "%s", e.msg);
      return -1;
    }
  }
  snprintf(err, errlen, "secret %s/%s: cannot read or create it", s->ns, name);
  return -1;
}

/* ---- the requester's rights ---- */

/* May the requester of csr do verb on group/resource[/subresource] in ns?
 * 1 yes, 0 no, -1 the review failed (err). */
static int review(struct signer *s, const cJSON *csr, const char *ns, const char *verb,
                  const char *group, const char *resource, const char *subresource, char *err,
                  size_t errlen) {
  const cJSON *spec = cJSON_GetObjectItemCaseSensitive(csr, "spec");
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "apiVersion", "authorization.k8s.io/v1");
  cJSON_AddStringToObject(o, "kind", "SubjectAccessReview");
  cJSON *sp = cJSON_AddObjectToObject(o, "spec");
  cJSON_AddStringToObject(sp, "user", jstr(spec, "username") ? jstr(spec, "username") : "");
  const char *uid = jstr(spec, "uid");
  if (uid) cJSON_AddStringToObject(sp, "uid", uid);
  const cJSON *g = cJSON_GetObjectItemCaseSensitive(spec, "groups");
  if (g) cJSON_AddItemToObject(sp, "groups", cJSON_Duplicate(g, 1));
  const cJSON *x = cJSON_GetObjectItemCaseSensitive(spec, "extra");
  if (x) cJSON_AddItemToObject(sp, "extra", cJSON_Duplicate(x, 1));
  cJSON *ra = cJSON_AddObjectToObject(sp, "resourceAttributes");
  cJSON_AddStringToObject(ra, "namespace", ns);
  cJSON_AddStringToObject(ra, "verb", verb);
  cJSON_AddStringToObject(ra, "group", group);
  cJSON_AddStringToObject(ra, "resource", resource);
  if (subresource) cJSON_AddStringToObject(ra, "subresource", subresource);
  struct kube_ref r = {"authorization.k8s.io/v1", "subjectaccessreviews", NULL, NULL, NULL};
  struct kube_err e;
  cJSON *out = NULL;
  int rc = kube_create(s->k, &r, o, &out, &e);
  cJSON_Delete(o);
  if (rc < 0) {
    snprintf(err, errlen, "%s", e.msg);
    return -1;
  }
  const cJSON *allowed = cJSON_GetObjectItemCaseSensitive(
      cJSON_GetObjectItemCaseSensitive(out, "status"), "allowed");
  rc = cJSON_IsTrue(allowed);
  cJSON_Delete(out);
  return rc;
}

/* ---- route key holders ---- */

struct hold_arg {
  const char *field;        /* "<ns>.<svc>.<key>" */
  const char *identity;
  int force;
  long long now, until;
  enum signer_verdict verdict;
  struct signer_holder prev;
};

static int hold_mutate(cJSON *cm, void *arg, char *err, size_t errlen) {
  struct hold_arg *h = arg;
  cJSON *data = cJSON_GetObjectItemCaseSensitive(cm, "data");
  if (!cJSON_IsObject(data)) {
    cJSON_DeleteItemFromObjectCaseSensitive(cm, "data");
    data = cJSON_AddObjectToObject(cm, "data");
  }
  const char *cur = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(data, h->field));
  int known = cur && signer_holder_parse(cur, &h->prev) == 0;
  h->verdict = signer_decide(known ? &h->prev : NULL, h->identity, h->force, h->now);
  if (h->verdict == SIGNER_DENY_HELD) return 1; /* nothing to write */
  struct signer_holder nh;
  memset(&nh, 0, sizeof nh);
  snprintf(nh.identity, sizeof nh.identity, "%s", h->identity);
  nh.until = h->until;
  char js[400];
  if (signer_holder_format(&nh, js, sizeof js) < 0) {
    snprintf(err, errlen, "identity too long");
    return -1;
  }
  /* Drop records that expired, so the ConfigMap does not grow forever. */
  for (cJSON *it = data->child, *next; it; it = next) {
    next = it->next;
    struct signer_holder old;
    if (!cJSON_IsString(it) || signer_holder_parse(it->valuestring, &old) < 0 || old.until <= h->now)
      cJSON_Delete(cJSON_DetachItemViaPointer(data, it));
  }
  cJSON_DeleteItemFromObjectCaseSensitive(data, h->field);
  cJSON_AddStringToObject(data, h->field, js);
  return 0;
}

/* Record identity as the holder of key, or say who holds it. Returns the
 * verdict (prev: the holder before), or -1 with err. */
static int hold(struct signer *s, const char *ns, const char *svc, const char *key,
                const char *identity, int force, struct signer_holder *prev, char *err,
                size_t errlen) {
  char field[200];
  snprintf(field, sizeof field, "%s.%s.%s", ns, svc, key);
  struct hold_arg h = {field, identity, force, (long long)time(NULL),
                       (long long)time(NULL) + s->client_seconds, SIGNER_GRANT, {"", 0}};
  struct kube_ref r = {"v1", "configmaps", s->ns, HOLDERS_CM, NULL};
  struct kube_err e;
  for (int attempt = 0; attempt < 2; attempt++) {
    if (kube_update_retry(s->k, &r, hold_mutate, &h, NULL, &e) == 0) {
      *prev = h.prev;
      return (int)h.verdict;
    }
    if (e.status != 404 || attempt) break;
    cJSON *o = cJSON_CreateObject(); /* first use: an empty ConfigMap, then again */
    cJSON_AddStringToObject(o, "apiVersion", "v1");
    cJSON_AddStringToObject(o, "kind", "ConfigMap");
    cJSON *md = cJSON_AddObjectToObject(o, "metadata");
    cJSON_AddStringToObject(md, "name", HOLDERS_CM);
    cJSON_AddStringToObject(md, "namespace", s->ns);
    int rc = kube_create(s->k, &r, o, NULL, &e);
    cJSON_Delete(o);
    if (rc < 0 && e.status != 409) break;
  }
  snprintf(err, errlen, "%s", e.msg);
  return -1;
}

/* ---- answering a request ---- */

static void set_condition(cJSON *csr, const char *type, const char *reason, const char *msg) {
  cJSON *st = cJSON_GetObjectItemCaseSensitive(csr, "status");
  if (!st) st = cJSON_AddObjectToObject(csr, "status");
  cJSON *conds = cJSON_GetObjectItemCaseSensitive(st, "conditions");
  if (!cJSON_IsArray(conds)) {
    cJSON_DeleteItemFromObjectCaseSensitive(st, "conditions");
    conds = cJSON_AddArrayToObject(st, "conditions");
  }
  cJSON *c = cJSON_CreateObject();
  cJSON_AddStringToObject(c, "type", type);
  cJSON_AddStringToObject(c, "status", "True");
  cJSON_AddStringToObject(c, "reason", reason);
  cJSON_AddStringToObject(c, "message", msg);
  cJSON_AddItemToArray(conds, c);
}

/* PUT csr to its approval subresource with a new condition; *out: the answer. */
static int decide(struct signer *s, const cJSON *csr, const char *type, const char *reason,
                  const char *msg, cJSON **out) {
  const char *name = jstr(csr, "metadata.name");
  cJSON *o = cJSON_Duplicate(csr, 1);
  set_condition(o, type, reason, msg);
  struct kube_ref r = {"certificates.k8s.io/v1", "certificatesigningrequests", NULL, name,
                       "approval"};
  struct kube_err e;
  int rc = kube_replace(s->k, &r, o, out, &e);
  cJSON_Delete(o);
  if (rc < 0) log_warn("csr %s: cannot set %s: %s", name, type, e.msg);
  return rc;
}

static void deny(struct signer *s, const cJSON *csr, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void deny(struct signer *s, const cJSON *csr, const char *fmt, ...) {
  char msg[900];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  log_warn("csr %s from %s denied: %s", jstr(csr, "metadata.name"), jstr(csr, "spec.username"),
           msg);
  decide(s, csr, "Denied", "KbridgeSignerDenied", msg, NULL);
}

/* Sign an approved csr and write status.certificate (certificate + CA). */
static void sign(struct signer *s, const cJSON *csr, const char *ns, const char *svc) {
  const char *name = jstr(csr, "metadata.name");
  const char *req64 = jstr(csr, "spec.request");
  char *req = req64 ? pem_from_base64(req64) : NULL;
  char err[1100], cn[80];
  struct tls_pem ca = {NULL, NULL};
  char *cert = NULL;
  if (!req || tls_csr_cn(req, cn, sizeof cn, err, sizeof err) < 0) {
    log_warn("csr %s: approved but unreadable: %s", name, req ? err : "bad base64");
    free(req);
    return;
  }
  int server = strcmp(cn, TLS_AGENT_NAME) == 0;
  const char *user = jstr(csr, "spec.username");
  if (service_ca(s, ns, svc, &ca, err, sizeof err) < 0 ||
      tls_sign_csr(&ca, req, server, server ? NULL : user,
                   server ? s->agent_seconds : s->client_seconds, &cert, err, sizeof err) < 0) {
    log_warn("csr %s: cannot sign: %s", name, err);
    tls_pem_clear(&ca);
    free(req);
    return;
  }
  size_t n = strlen(cert) + strlen(ca.cert) + 1;
  char *chain = malloc(n);
  if (chain) snprintf(chain, n, "%s%s", cert, ca.cert);
  char *b64 = chain ? base64_encode(chain, strlen(chain)) : NULL;
  if (b64) {
    cJSON *o = cJSON_Duplicate(csr, 1);
    cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "status");
    if (!st) st = cJSON_AddObjectToObject(o, "status");
    cJSON_DeleteItemFromObjectCaseSensitive(st, "certificate");
    cJSON_AddStringToObject(st, "certificate", b64);
    struct kube_ref r = {"certificates.k8s.io/v1", "certificatesigningrequests", NULL, name,
                         "status"};
    struct kube_err e;
    if (kube_replace(s->k, &r, o, NULL, &e) < 0)
      log_warn("csr %s: cannot write the certificate: %s", name, e.msg);
    else
      log_info("csr %s: signed %s certificate \"%s\" for %s/%s, identity %s, valid %ld h", name,
               server ? "agent" : "client", cn, ns, svc, user ? user : "?",
               (server ? s->agent_seconds : s->client_seconds) / 3600);
    cJSON_Delete(o);
  }
  free(b64);
  free(chain);
  free(cert);
  free(req);
  tls_pem_clear(&ca);
}

static void handle(struct signer *s, const cJSON *csr) {
  const char *name = jstr(csr, "metadata.name");
  const char *signer_name = jstr(csr, "spec.signerName");
  char ns[64], svc[64];
  if (!name || !signer_name || strncmp(signer_name, SIGNER_PREFIX, strlen(SIGNER_PREFIX)) != 0)
    return; /* not ours */
  if (has_condition(csr, "Denied") || has_condition(csr, "Failed")) return;
  if (signer_parse_name(signer_name, ns, sizeof ns, svc, sizeof svc) < 0) {
    if (!has_condition(csr, "Approved"))
      deny(s, csr, "signer name %s is not kbridge.dev/<namespace>.<service>", signer_name);
    return;
  }
  if (has_condition(csr, "Approved")) {
    /* Approved by us in an earlier round whose signing failed, or by an
     * administrator by hand (kubectl certificate approve): sign. */
    if (!jstr(csr, "status.certificate")) sign(s, csr, ns, svc);
    return;
  }
  const char *user = jstr(csr, "spec.username");
  const char *req64 = jstr(csr, "spec.request");
  char *req = req64 ? pem_from_base64(req64) : NULL;
  char err[1100], cn[80];
  if (!user || !*user) {
    free(req);
    deny(s, csr, "no requester recorded");
    return;
  }
  if (!req || tls_csr_cn(req, cn, sizeof cn, err, sizeof err) < 0) {
    free(req);
    deny(s, csr, "%s", req ? err : "spec.request is not base64 PEM");
    return;
  }
  free(req);
  int server = strcmp(cn, TLS_AGENT_NAME) == 0;
  if (!server && !dns_label_valid(cn, strlen(cn))) {
    deny(s, csr, "CN \"%s\" is neither kbridge-agent nor a route key (a DNS label)", cn);
    return;
  }
  if (!has_usage(csr, server ? "server auth" : "client auth")) {
    deny(s, csr, "a %s certificate needs the usage \"%s\"", server ? "server" : "client",
         server ? "server auth" : "client auth");
    return;
  }
  int ok = server ? review(s, csr, ns, "create", "apps", "deployments", NULL, err, sizeof err)
                  : review(s, csr, ns, "create", "", "pods", "portforward", err, sizeof err);
  if (ok < 0) {
    log_warn("csr %s: access review failed (will retry): %s", name, err);
    return;
  }
  if (!ok) {
    deny(s, csr, "%s may not %s in namespace %s", user,
         server ? "create deployments (run the agent)" : "create pods/portforward (reach the agent)",
         ns);
    return;
  }
  char msg[700];
  if (!server) {
    /* (not jstr: the annotation's name has dots) */
    const cJSON *anns = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(csr, "metadata"), "annotations");
    const char *f = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(anns, SIGNER_ANN_FORCE));
    int force = f && strcmp(f, "true") == 0;
    struct signer_holder prev;
    int v = hold(s, ns, svc, cn, user, force, &prev, err, sizeof err);
    if (v < 0) {
      log_warn("csr %s: cannot record the holder (will retry): %s", name, err);
      return;
    }
    if (v == SIGNER_DENY_HELD) {
      char until[40];
      time_t t = (time_t)prev.until;
      struct tm tm;
      gmtime_r(&t, &tm);
      strftime(until, sizeof until, "%Y-%m-%dT%H:%M:%SZ", &tm);
      deny(s, csr, "route key \"%s\" of %s/%s is held by %s (until %s); kbridge connect --force "
           "takes it over", cn, ns, svc, prev.identity, until);
      return;
    }
    if (v == SIGNER_GRANT_FORCED)
      log_warn("FORCE: csr %s: %s takes route key \"%s\" of %s/%s over from %s", name, user, cn,
               ns, svc, prev.identity);
    snprintf(msg, sizeof msg, "%s may reach the agent of %s/%s; route key \"%s\"%s%s", user, ns,
             svc, cn, v == SIGNER_GRANT_FORCED ? " taken over with --force from " : "",
             v == SIGNER_GRANT_FORCED ? prev.identity : "");
  } else {
    snprintf(msg, sizeof msg, "%s may run the agent of %s/%s", user, ns, svc);
  }
  cJSON *approved = NULL;
  if (decide(s, csr, "Approved", "KbridgeSignerApproved", msg, &approved) < 0) return;
  log_info("csr %s approved: %s", name, msg);
  sign(s, approved ? approved : csr, ns, svc);
  cJSON_Delete(approved);
}

static const char usage[] =
    "usage: kbridge-signer [--namespace NS] [--kubeconfig FILE] [--client-hours H]\n"
    "                      [--agent-hours H] [--interval-ms MS] [--janitor-seconds S]\n"
    "                      [--log-level LEVEL]\n"
    "Approve and sign kbridge's certificatesigningrequests (signer names\n"
    "kbridge.dev/<namespace>.<service>). Runs in the cluster with its service account\n"
    "(NS: default the pod's), or with --kubeconfig. Defaults: client certificates 12 h,\n"
    "the agent's 720 h, a look every 1000 ms, log level info.\n"
    "Janitor: a taken-over Service whose agent has had no ready pod for S seconds\n"
    "(default 30; looked at every 5 s; 0: off) is given back to its own pods.\n";

int main(int argc, char **argv) {
  struct signer s;
  memset(&s, 0, sizeof s);
  s.client_seconds = 12 * 3600;
  s.agent_seconds = 720 * 3600;
  long interval_ms = 1000, janitor_s = 30;
  const char *nsopt = NULL, *kcpath = NULL;
  enum log_level level = LOGL_INFO;
  /* Flags come in pairs (--name value): each turn of the loop takes two. */
  for (int i = 1; i < argc; i += 2) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      fputs(usage, stdout);
      return 0;
    }
    if (!v) {
      fprintf(stderr, "kbridge-signer: %s needs a value (or is unknown)\n%s", a, usage);
      return 2;
    }
    char *end = NULL;
    long n = strtol(v, &end, 10);
    int num_ok = end && *end == 0 && n > 0 && n < 100000;
    if (!strcmp(a, "--namespace") && dns_label_valid(v, strlen(v))) {
      nsopt = v;
    } else if (!strcmp(a, "--kubeconfig")) {
      kcpath = v;
    } else if (!strcmp(a, "--client-hours") && num_ok) {
      s.client_seconds = n * 3600;
    } else if (!strcmp(a, "--agent-hours") && num_ok) {
      s.agent_seconds = n * 3600;
    } else if (!strcmp(a, "--interval-ms") && num_ok) {
      interval_ms = n;
    } else if (!strcmp(a, "--janitor-seconds") && (num_ok || !strcmp(v, "0"))) {
      janitor_s = num_ok ? n : 0;
    } else if (!strcmp(a, "--log-level") && log_level_parse(v, &level) == 0) {
    } else {
      fprintf(stderr, "kbridge-signer: bad argument %s %s\n%s", a, v, usage);
      return 2;
    }
  }
  log_init("kbridge-signer", level);
  char err[1024];
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    log_err("cannot initialise libcurl");
    return 1;
  }
  struct kubeconfig *kc = NULL;
  int rc;
  if (kcpath) {
    struct kubeconfig_opts o = {kcpath, NULL, nsopt};
    rc = kubeconfig_load(&o, &kc, err, sizeof err);
  } else {
    rc = kubeconfig_load_incluster(nsopt, &kc, err, sizeof err);
  }
  if (rc < 0) {
    log_err("Kubernetes configuration: %s", err);
    return 1;
  }
  snprintf(s.ns, sizeof s.ns, "%s", kc->namespace ? kc->namespace : "default");
  s.k = kube_new(kc, err, sizeof err);
  if (!s.k) {
    log_err("%s", err);
    return 1;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  log_info("signing kbridge.dev/* certificate requests; CAs and holders in namespace %s", s.ns);
  static struct janitor jan; /* large: not on the stack */
  jan.k = s.k;
  jan.after_s = janitor_s;
  if (janitor_s)
    log_info("janitor: restoring taken-over services whose agent has had no ready pod for %ld s "
             "(looked at every %d s)", janitor_s, JANITOR_ROUND_S);
  else
    log_info("janitor: off (--janitor-seconds 0)");
  double last_round = 0;
  char last_err[1024] = "";
  while (!stop) {
    struct timespec mt;
    clock_gettime(CLOCK_MONOTONIC, &mt);
    double now = (double)mt.tv_sec + (double)mt.tv_nsec / 1e9;
    if (janitor_s && now - last_round >= JANITOR_ROUND_S) {
      last_round = now;
      janitor_round(&jan, now);
    }
    struct kube_ref r = {"certificates.k8s.io/v1", "certificatesigningrequests", NULL, NULL, NULL};
    struct kube_err e;
    cJSON *list = NULL;
    if (kube_list(s.k, &r, NULL, &list, &e) < 0) {
      if (strcmp(last_err, e.msg) != 0) log_warn("%s", e.msg); /* once, not every round */
      snprintf(last_err, sizeof last_err, "%s", e.msg);
    } else {
      last_err[0] = 0;
      const cJSON *it;
      cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(list, "items")) handle(&s, it);
    }
    cJSON_Delete(list);
    struct timespec ts = {interval_ms / 1000, (interval_ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
  }
  log_info("stopping");
  kube_free(s.k);
  curl_global_cleanup();
  return 0;
}
