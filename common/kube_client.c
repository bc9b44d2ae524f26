/* kube_client.c: the Kubernetes API client's lifetime (kube_new, kube_free), its
 * credentials (static, token file re-read on change, exec plugin output cached
 * until its expiry) and TLS for the connections it does not make itself (the
 * port-forward WebSocket). The requests are in kube_transport.c, the event
 * loop driver in kube_async.c, the verbs in kube_resources.c and the watches
 * in kube_watch.c; kube_internal.h is what they share. */
#include "kube.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kube_internal.h"
#include "kubeconfig.h"
#include "log.h"
#include "netproxy.h"

#define EXPIRY_MARGIN_S 10

static char *read_file(const char *path, char *err, size_t errlen, const char *what) {
  FILE *fp = fopen(path, "rb");
  if (!fp) {
    snprintf(err, errlen, "%s %s: %s", what, path, strerror(errno));
    return NULL;
  }
  struct buf b = {0};
  char tmp[8192];
  size_t n;
  while ((n = fread(tmp, 1, sizeof tmp, fp)) > 0) kube_buf_add(&b, tmp, n);
  fclose(fp);
  if (!b.p) kube_buf_add(&b, "", 0);
  return b.p;
}

/* ---- credentials ---- */

static int token_file_current(struct kube *k, char *err, size_t errlen) {
  struct stat st;
  const char *path = k->kc->token_file;
  if (stat(path, &st) < 0) {
    if (k->file_token) return 0; /* keep the last token while the file is swapped */
    snprintf(err, errlen, "tokenFile %s: %s", path, strerror(errno));
    return -1;
  }
  if (k->file_token && !k->file_stale && st.st_ino == k->file_st.st_ino &&
      st.st_mtim.tv_sec == k->file_st.st_mtim.tv_sec &&
      st.st_mtim.tv_nsec == k->file_st.st_mtim.tv_nsec && st.st_size == k->file_st.st_size)
    return 0;
  char *t = read_file(path, err, errlen, "tokenFile");
  if (!t) return k->file_token ? 0 : -1;
  size_t l = strlen(t);
  while (l > 0 && (t[l - 1] == '\n' || t[l - 1] == '\r' || t[l - 1] == ' ')) t[--l] = 0;
  if (!*t) {
    free(t);
    snprintf(err, errlen, "tokenFile %s is empty", path);
    return -1;
  }
  free(k->file_token);
  k->file_token = t;
  k->file_st = st;
  k->file_stale = 0;
  k->cred_gen++;
  return 0;
}

int kube_credentials(struct kube *k, const char **token, const char **cert_pem,
                     const char **key_pem, char *err, size_t errlen) {
  const struct kubeconfig *kc = k->kc;
  *token = NULL;
  *cert_pem = k->cert_pem;
  *key_pem = k->key_pem;
  if (kc->exec) {
    time_t now = time(NULL);
    if (k->exec_valid && k->exec.expiry && now + EXPIRY_MARGIN_S >= k->exec.expiry)
      k->exec_valid = 0;
    if (!k->exec_valid) {
      struct kube_exec_cred c;
      if (kube_exec_run(kc, &c, err, errlen) < 0) return -1;
      kube_exec_cred_clear(&k->exec);
      k->exec = c;
      k->exec_valid = 1;
      k->cred_gen++;
      log_debug("kube: exec plugin %s gave a %s%s", kc->exec->command,
                c.token ? "token" : "client certificate", c.expiry ? " with expiry" : "");
    }
    if (k->exec.token) *token = k->exec.token;
    if (k->exec.cert_pem) {
      *cert_pem = k->exec.cert_pem;
      *key_pem = k->exec.key_pem;
    }
    if (*token || k->exec.cert_pem) return 0;
  }
  if (kc->token) {
    *token = kc->token;
  } else if (kc->token_file) {
    if (token_file_current(k, err, errlen) < 0) return -1;
    *token = k->file_token;
  }
  return 0;
}

void kube_credentials_rejected(struct kube *k) {
  k->exec_valid = 0;
  k->file_stale = 1;
}

int kube_refreshable(const struct kube *k) {
  return k->kc->exec || (!k->kc->token && k->kc->token_file);
}

/* q got a 401. Invalidate the credentials only if q used the current ones:
 * when several requests fail with the same old token, the plugin runs once. */
void kube_rejected(struct kube *k, const struct req *q) {
  if (q->cred_gen == k->cred_gen) kube_credentials_rejected(k);
}

/* ---- client ---- */

/* Split the server URL into host, port and path prefix. */
static int parse_server(struct kube *k, char *err, size_t errlen) {
  const char *url = k->kc->server;
  int https = strncmp(url, "https://", 8) == 0;
  const char *p = url + (https ? 8 : 7);
  const char *hend, *rest;
  if (*p == '[') {
    hend = strchr(p, ']');
    if (!hend) goto bad;
    k->host = strndup(p + 1, (size_t)(hend - p - 1));
    rest = hend + 1;
  } else {
    size_t n = strcspn(p, ":/");
    k->host = strndup(p, n);
    rest = p + n;
  }
  if (!k->host || !*k->host) goto bad;
  k->port = https ? 443 : 80;
  if (*rest == ':') {
    char *end;
    long port = strtol(rest + 1, &end, 10);
    if (end == rest + 1 || port <= 0 || port > 65535 || (*end && *end != '/')) goto bad;
    k->port = (int)port;
    rest = end;
  }
  const char *prefix = rest; /* "" or "/something" */
  const char *name = k->kc->tls_server_name ? k->kc->tls_server_name : NULL;
  int v6 = strchr(k->host, ':') != NULL;
  size_t n = strlen(k->host) + strlen(prefix) + (name ? strlen(name) : 0) + 32;
  k->base_url = malloc(n);
  if (!k->base_url) abort();
  if (name) {
    /* Address the server by its TLS name (SNI and verification) and tell
     * curl where that name really is. */
    snprintf(k->base_url, n, "%s://%s:%d%s", https ? "https" : "http", name, k->port, prefix);
    k->connect_to = malloc(n + strlen(k->host));
    if (!k->connect_to) abort();
    snprintf(k->connect_to, n + strlen(k->host), "%s:%d:%s%s%s:%d", name, k->port, v6 ? "[" : "",
             k->host, v6 ? "]" : "", k->port);
    k->connect_list = curl_slist_append(NULL, k->connect_to);
  } else {
    snprintf(k->base_url, n, "%s://%s%s%s:%d%s", https ? "https" : "http", v6 ? "[" : "", k->host,
             v6 ? "]" : "", k->port, prefix);
  }
  size_t bl = strlen(k->base_url);
  while (bl > 0 && k->base_url[bl - 1] == '/') k->base_url[--bl] = 0;
  return 0;
bad:
  snprintf(err, errlen, "%s: cluster \"%s\": server \"%s\" is not a valid URL", k->kc->origin,
           k->kc->cluster_name ? k->kc->cluster_name : "", url);
  return -1;
}

/* *out = the PEM given inline (data), else read from file (what names it in
 * errors), else left NULL. 0, or -1 with err. */
static int pem_of(const char *data, const char *file, const char *what, char **out, char *err,
                  size_t errlen) {
  if (data)
    *out = kube_xstrdup(data);
  else if (file && !(*out = read_file(file, err, errlen, what)))
    return -1;
  return 0;
}

struct kube *kube_new(struct kubeconfig *kc, char *err, size_t errlen) {
  static int curl_ready;
  if (!curl_ready) {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
      snprintf(err, errlen, "cannot initialise libcurl");
      kubeconfig_free(kc);
      return NULL;
    }
    curl_ready = 1;
  }
  struct kube *k = kube_xcalloc(1, sizeof *k);
  k->kc = kc;
  char what[350];
  if (parse_server(k, err, errlen) < 0) goto fail;
  {
    char *chosen = netproxy_choose(kc->proxy_url, strncmp(kc->server, "http://", 7) != 0,
                                   k->host, k->port, &k->proxy_source);
    if (chosen) {
      struct netproxy np;
      char perr[400];
      int prc = netproxy_parse(chosen, &np, perr, sizeof perr);
      free(chosen);
      if (prc < 0) {
        if (strcmp(k->proxy_source, "proxy-url") == 0)
          snprintf(err, errlen, "%s: cluster \"%s\": proxy-url: %s", kc->origin,
                   kc->cluster_name ? kc->cluster_name : "", perr);
        else
          snprintf(err, errlen, "%s: %s; fix it, or add the API server's host to $NO_PROXY",
                   k->proxy_source, perr);
        goto fail;
      }
      k->proxy = np.url;
      np.url = NULL;
      netproxy_clear(&np);
    }
  }
  snprintf(what, sizeof what, "cluster \"%s\": certificate-authority",
           kc->cluster_name ? kc->cluster_name : "in-cluster");
  if (pem_of(kc->ca_pem, kc->ca_file, what, &k->ca_pem, err, errlen) < 0) goto fail;
  snprintf(what, sizeof what, "user \"%s\": client-certificate",
           kc->user_name ? kc->user_name : "");
  if (pem_of(kc->client_cert_pem, kc->client_cert_file, what, &k->cert_pem, err, errlen) < 0)
    goto fail;
  snprintf(what, sizeof what, "user \"%s\": client-key", kc->user_name ? kc->user_name : "");
  if (pem_of(kc->client_key_pem, kc->client_key_file, what, &k->key_pem, err, errlen) < 0)
    goto fail;
  if (kc->token_file && !kc->token && !kc->exec) {
    if (token_file_current(k, err, errlen) < 0) goto fail;
  }
  k->easy = curl_easy_init();
  k->share = curl_share_init();
  if (!k->easy || !k->share) {
    snprintf(err, errlen, "cannot create curl handles");
    goto fail;
  }
  curl_share_setopt(k->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
  curl_share_setopt(k->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
  return k;
fail:
  kube_free(k);
  return NULL;
}

void kube_free(struct kube *k) {
  if (!k) return;
  struct req *q = k->active, *next;
  for (; q; q = next) {
    next = q->next;
    curl_multi_remove_handle(k->multi, q->easy);
    kube_req_drop(q);
  }
  while (k->watches) kube_watch_free(k->watches); /* those waiting to retry */
  if (k->multi) curl_multi_cleanup(k->multi);
  if (k->timer) event_free(k->timer);
  if (k->reaper) event_free(k->reaper);
  if (k->easy) curl_easy_cleanup(k->easy);
  if (k->share) curl_share_cleanup(k->share);
  curl_slist_free_all(k->connect_list);
  kube_exec_cred_clear(&k->exec);
  /* field by field like kubeconfig_free() (duplicates): the two structs' fields differ */
  free(k->base_url);
  free(k->connect_to);
  free(k->proxy);
  free(k->host);
  free(k->ca_pem);
  free(k->cert_pem);
  free(k->key_pem);
  free(k->file_token);
  kubeconfig_free(k->kc);
  free(k);
}

const struct kubeconfig *kube_config(const struct kube *k) { return k->kc; }
const char *kube_namespace(const struct kube *k) { return k->kc->namespace; }
const char *kube_server_url(const struct kube *k) { return k->kc->server; }
const char *kube_server_host(const struct kube *k) { return k->host; }
int kube_server_port(const struct kube *k) { return k->port; }
const char *kube_proxy(const struct kube *k) { return k->proxy; }
const char *kube_proxy_source(const struct kube *k) { return k->proxy ? k->proxy_source : NULL; }
const char *kube_ca_pem(const struct kube *k) { return k->ca_pem; }
const char *kube_tls_name(const struct kube *k) {
  return k->kc->tls_server_name ? k->kc->tls_server_name : k->host;
}

/* ---- TLS for other connections ---- */

static int add_pem_certs(X509_STORE *st, const char *pem) {
  BIO *b = BIO_new_mem_buf(pem, -1);
  int n = 0;
  X509 *x;
  while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL))) {
    if (X509_STORE_add_cert(st, x) == 1) n++;
    X509_free(x);
  }
  ERR_clear_error();
  BIO_free(b);
  return n;
}

SSL_CTX *kube_ssl_ctx_new(struct kube *k, char *err, size_t errlen) {
  const char *token, *cert, *key;
  if (kube_credentials(k, &token, &cert, &key, err, errlen) < 0) return NULL;
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx) {
    snprintf(err, errlen, "cannot create a TLS context");
    return NULL;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  if (k->kc->insecure_skip_tls_verify) {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (k->ca_pem) {
      if (add_pem_certs(SSL_CTX_get_cert_store(ctx), k->ca_pem) == 0) {
        snprintf(err, errlen, "cluster \"%s\": the certificate authority holds no PEM certificate",
                 k->kc->cluster_name ? k->kc->cluster_name : "");
        SSL_CTX_free(ctx);
        return NULL;
      }
    } else {
      SSL_CTX_set_default_verify_paths(ctx);
    }
  }
  if (cert && key) {
    BIO *cb = BIO_new_mem_buf(cert, -1), *kb = BIO_new_mem_buf(key, -1);
    X509 *x = PEM_read_bio_X509(cb, NULL, NULL, NULL);
    EVP_PKEY *pk = PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL);
    int ok = x && pk && SSL_CTX_use_certificate(ctx, x) == 1 && SSL_CTX_use_PrivateKey(ctx, pk) == 1;
    /* further certificates in the PEM are the chain */
    X509 *extra;
    while (ok && (extra = PEM_read_bio_X509(cb, NULL, NULL, NULL)))
      if (SSL_CTX_add_extra_chain_cert(ctx, extra) != 1) X509_free(extra);
    ERR_clear_error();
    X509_free(x);
    EVP_PKEY_free(pk);
    BIO_free(cb);
    BIO_free(kb);
    if (!ok) {
      snprintf(err, errlen, "user \"%s\": the client certificate and key do not load or do not match",
               k->kc->user_name ? k->kc->user_name : "");
      SSL_CTX_free(ctx);
      return NULL;
    }
  }
  return ctx;
}

int kube_ssl_prepare(const struct kube *k, SSL *ssl) {
  const char *name = kube_tls_name(k);
  unsigned char tmp[16];
  int is_ip = inet_pton(AF_INET, name, tmp) == 1 || inet_pton(AF_INET6, name, tmp) == 1;
  char sni[256]; /* the OpenSSL macro casts away const */
  if (snprintf(sni, sizeof sni, "%s", name) >= (int)sizeof sni) return -1;
  if (!is_ip && SSL_set_tlsext_host_name(ssl, sni) != 1) return -1;
  if (k->kc->insecure_skip_tls_verify) return 0;
  X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
  if (is_ip) return X509_VERIFY_PARAM_set1_ip_asc(vp, name) == 1 ? 0 : -1;
  X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  return X509_VERIFY_PARAM_set1_host(vp, name, 0) == 1 ? 0 : -1;
}
