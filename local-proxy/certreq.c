/* certreq.c: see certreq.h. */
#include "certreq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <openssl/crypto.h>

#include "base64.h"
#include "kube.h"

#define POLL_MS 250

static const char *get_str(const cJSON *o, const char *a, const char *b) {
  return cJSON_GetStringValue(
      cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(o, a), b));
}

/* The condition of type in csr, or NULL. */
static const cJSON *condition(const cJSON *csr, const char *type) {
  const cJSON *c;
  cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(
                            cJSON_GetObjectItemCaseSensitive(csr, "status"), "conditions")) {
    const char *t = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(c, "type"));
    if (t && strcmp(t, type) == 0) return c;
  }
  return NULL;
}

/* Split "CERT\nCA" (PEM blocks) into the first block and the last one. */
static int split_chain(const char *chain, char **leaf, char **ca) {
  static const char end[] = "-----END CERTIFICATE-----";
  const char *e1 = strstr(chain, end);
  if (!e1) return -1;
  e1 += strlen(end);
  const char *last = NULL;
  for (const char *p = strstr(e1, "-----BEGIN CERTIFICATE-----"); p;
       p = strstr(p + 1, "-----BEGIN CERTIFICATE-----"))
    last = p;
  if (!last) return -1;
  *leaf = strndup(chain, (size_t)(e1 - chain));
  *ca = strdup(last);
  if (!*leaf || !*ca) {
    free(*leaf);
    free(*ca);
    return -1;
  }
  return 0;
}

int certreq_obtain(struct kube *k, const char *ns, const char *svc, const char *cn, int server,
                   int force, int timeout_s, struct tls_pem *me, char **ca_pem, char *identity,
                   size_t idlen, int *denied, char *err, size_t errlen) {
  char *csr = NULL, *key = NULL;
  memset(me, 0, sizeof *me);
  *ca_pem = NULL;
  *denied = 0;
  if (idlen) identity[0] = '\0';
  if (tls_csr_new(cn, TLS_KEY_P256, &csr, &key, err, errlen) < 0) return -1;
  char *req64 = base64_encode(csr, strlen(csr));
  free(csr);
  char signer[200], gen[120], name[260] = "";
  snprintf(signer, sizeof signer, "kbridge.dev/%s.%s", ns, svc);
  snprintf(gen, sizeof gen, "kbridge-%.30s-%.30s-%.40s-", ns, svc, cn);
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "apiVersion", "certificates.k8s.io/v1");
  cJSON_AddStringToObject(o, "kind", "CertificateSigningRequest");
  cJSON *md = cJSON_AddObjectToObject(o, "metadata");
  cJSON_AddStringToObject(md, "generateName", gen);
  cJSON *lb = cJSON_AddObjectToObject(md, "labels");
  cJSON_AddStringToObject(lb, "app.kubernetes.io/managed-by", "kbridge");
  if (force) {
    cJSON *an = cJSON_AddObjectToObject(md, "annotations");
    cJSON_AddStringToObject(an, "kbridge.dev/force", "true");
  }
  cJSON *sp = cJSON_AddObjectToObject(o, "spec");
  cJSON_AddStringToObject(sp, "request", req64 ? req64 : "");
  cJSON_AddStringToObject(sp, "signerName", signer);
  cJSON *us = cJSON_AddArrayToObject(sp, "usages");
  cJSON_AddItemToArray(us, cJSON_CreateString("digital signature"));
  cJSON_AddItemToArray(us, cJSON_CreateString(server ? "server auth" : "client auth"));
  free(req64);
  struct kube_ref r = {"certificates.k8s.io/v1", "certificatesigningrequests", NULL, NULL, NULL};
  struct kube_err e;
  cJSON *made = NULL;
  int rc = kube_create(k, &r, o, &made, &e);
  cJSON_Delete(o);
  if (rc < 0) {
    snprintf(err, errlen, "%s", e.msg);
    goto fail;
  }
  snprintf(name, sizeof name, "%s", get_str(made, "metadata", "name") ? get_str(made, "metadata", "name") : "");
  cJSON_Delete(made);
  r.name = name;
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    cJSON *cur = NULL;
    if (kube_get(k, &r, &cur, &e) < 0) {
      snprintf(err, errlen, "%s", e.msg);
      goto fail;
    }
    const cJSON *d = condition(cur, "Denied");
    if (!d) d = condition(cur, "Failed");
    if (d) {
      const char *m = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(d, "message"));
      snprintf(err, errlen, "certificate request %s was denied: %s", name, m ? m : "no reason given");
      *denied = 1;
      cJSON_Delete(cur);
      goto fail;
    }
    const char *c64 = get_str(cur, "status", "certificate");
    if (c64 && *c64) {
      char *chain = base64_decode(c64, NULL), *leaf = NULL;
      cJSON_Delete(cur);
      if (!chain || split_chain(chain, &leaf, ca_pem) < 0) {
        free(chain);
        snprintf(err, errlen, "certificate request %s: the signer's answer is not a certificate "
                 "followed by its CA", name);
        goto fail;
      }
      free(chain);
      me->cert = leaf;
      me->key = key;
      if (idlen && !server && tls_cert_identity(leaf, identity, idlen) < 0) identity[0] = '\0';
      return 0;
    }
    cJSON_Delete(cur);
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec - t0.tv_sec >= timeout_s) {
      snprintf(err, errlen, "no answer to certificate request %s (signer %s) within %d s: is "
               "kbridge-signer running in the cluster (deploy/signer.yaml)?", name, signer,
               timeout_s);
      goto fail;
    }
    struct timespec ts = {0, POLL_MS * 1000000L};
    nanosleep(&ts, NULL);
  }
fail:
  if (key) {
    OPENSSL_cleanse(key, strlen(key));
    free(key);
  }
  return -1;
}
