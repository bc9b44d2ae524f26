/* kube_transport.c: one request to the API server. A struct req carries the
 * URL, headers, body, the answer collected in a buffer and a sentence naming
 * what it does ("patch services "a" in namespace "b"") for error messages.
 * kube_req_setup() puts the current credentials, CA, proxy and timeouts on a curl easy
 * handle; kube_req_finish() turns the answer into a result or that sentence; the
 * blocking run retries what may be retried on the client's one easy handle
 * (kept alive between calls, so the TCP+TLS connection is reused). */
#include <errno.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kube_internal.h"
#include "kubeconfig.h"
#include "log.h"

#define CONNECT_TIMEOUT_MS 5000L
#define CALL_TIMEOUT_MS 30000L

/* ---- small helpers ---- */

char *kube_xstrdup(const char *s) {
  if (!s) return NULL;
  char *p = strdup(s);
  if (!p) abort();
  return p;
}

void *kube_xcalloc(size_t n, size_t sz) {
  void *p = calloc(n, sz);
  if (!p) abort();
  return p;
}

void kube_buf_add(struct buf *b, const char *d, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n + 1) cap *= 2;
    b->p = realloc(b->p, cap);
    if (!b->p) abort();
    b->cap = cap;
  }
  memcpy(b->p + b->len, d, n);
  b->len += n;
  b->p[b->len] = 0;
}

void kube_buf_free(struct buf *b) {
  free(b->p);
  memset(b, 0, sizeof *b);
}

void kube_set_err(struct kube_err *e, long status, const char *reason, const char *fmt, ...) {
  if (!e) return;
  e->status = status;
  snprintf(e->reason, sizeof e->reason, "%s", reason ? reason : "");
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->msg, sizeof e->msg, fmt, ap);
  va_end(ap);
}

/* "/" + one path segment, percent-encoded (a name with '/' or '?' from the
 * user cannot change which URL is requested). */
static void add_segment(struct buf *b, const char *seg) {
  char *esc = curl_easy_escape(NULL, seg, 0);
  if (!esc) abort();
  kube_buf_add(b, "/", 1);
  kube_buf_add(b, esc, strlen(esc));
  curl_free(esc);
}

/* "/api/v1/namespaces/ns/services/name/sub" */
char *kube_ref_path(const struct kube_ref *r) {
  struct buf b = {0};
  const char *api = r->api && *r->api ? r->api : "v1";
  const char *slash = strchr(api, '/');
  kube_buf_add(&b, slash ? "/apis" : "/api", slash ? 5 : 4);
  if (slash) {
    char *group = strndup(api, (size_t)(slash - api));
    if (!group) abort();
    add_segment(&b, group);
    free(group);
    add_segment(&b, slash + 1);
  } else {
    add_segment(&b, api);
  }
  if (r->namespace && *r->namespace) {
    kube_buf_add(&b, "/namespaces", 11);
    add_segment(&b, r->namespace);
  }
  add_segment(&b, r->resource);
  if (r->name && *r->name) add_segment(&b, r->name);
  if (r->subresource && *r->subresource) add_segment(&b, r->subresource);
  return b.p;
}

/* "patch deployments.apps "web" in namespace "shop"" in out; optionally
 * "patch deployments.apps" in act and " in namespace "shop"" in scope. */
void kube_ref_describe(const char *verb, const struct kube_ref *r, char *out, size_t len,
                         char *act, size_t actlen, char *scope, size_t scopelen) {
  const char *api = r->api ? r->api : "v1";
  const char *slash = strchr(api, '/');
  char res[200];
  if (slash)
    snprintf(res, sizeof res, "%s.%.*s", r->resource, (int)(slash - api), api);
  else
    snprintf(res, sizeof res, "%s", r->resource);
  char name[300] = "", ns[300] = "";
  if (r->name && *r->name) snprintf(name, sizeof name, " \"%s\"", r->name);
  if (r->namespace && *r->namespace) snprintf(ns, sizeof ns, " in namespace \"%s\"", r->namespace);
  const char *sub = r->subresource && *r->subresource ? r->subresource : NULL;
  snprintf(out, len, "%s %s%s%s%s%s", verb, res, sub ? "/" : "", sub ? sub : "", name, ns);
  if (act) snprintf(act, actlen, "%s %s%s%s", verb, res, sub ? "/" : "", sub ? sub : "");
  if (scope) snprintf(scope, scopelen, "%s", ns);
}

void kube_ref_what(const char *verb, const struct kube_ref *r, char *out, size_t len) {
  kube_ref_describe(verb, r, out, len, NULL, 0, NULL, 0);
}

void kube_add_param(struct buf *b, const char *name, const char *value) {
  if (!value || !*value) return;
  char *esc = curl_easy_escape(NULL, value, 0);
  if (!esc) abort();
  if (b->len) kube_buf_add(b, "&", 1);
  kube_buf_add(b, name, strlen(name));
  kube_buf_add(b, "=", 1);
  kube_buf_add(b, esc, strlen(esc));
  curl_free(esc);
}

/* ---- request setup ---- */

size_t kube_on_body(char *d, size_t sz, size_t n, void *ud) {
  struct req *q = ud;
  if (q->resp.len + sz * n > MAX_RESPONSE) return 0;
  kube_buf_add(&q->resp, d, sz * n);
  return sz * n;
}


/* Configure q->easy for q. Returns 0, or -1 with e (credentials failed). */
int kube_req_setup(struct req *q, struct kube_err *e) {
  struct kube *k = q->k;
  CURL *c = q->easy;
  const char *token, *cert, *key;
  char cerr[768];
  if (kube_credentials(k, &token, &cert, &key, cerr, sizeof cerr) < 0) {
    kube_set_err(e, 0, "CredentialsFailed", "%s: no credentials: %s", q->what, cerr);
    return -1;
  }
  q->cred_gen = k->cred_gen;
  curl_easy_reset(c);
  struct buf url = {0};
  kube_buf_add(&url, k->base_url, strlen(k->base_url));
  kube_buf_add(&url, q->path, strlen(q->path));
  if (q->query && *q->query) {
    kube_buf_add(&url, "?", 1);
    kube_buf_add(&url, q->query, strlen(q->query));
  }
  curl_easy_setopt(c, CURLOPT_URL, url.p);
  kube_buf_free(&url);
  /* CURLOPT_NOSIGNAL stays 0: the resolver is threaded (no alarm()), and so
   * libcurl ignores SIGPIPE while it writes to a connection the server closed. */
  curl_easy_setopt(c, CURLOPT_SHARE, k->share);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, q->curlerr);
  q->curlerr[0] = 0;
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, CONNECT_TIMEOUT_MS);
  curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(c, CURLOPT_TCP_KEEPIDLE, 30L);
  curl_easy_setopt(c, CURLOPT_TCP_KEEPINTVL, 10L);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https,http");
  curl_easy_setopt(c, CURLOPT_USERAGENT, "kbridge/" KBRIDGE_VERSION);
  curl_easy_setopt(c, CURLOPT_PRIVATE, q);
  if (q->kind == REQ_WATCH) {
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, kube_on_watch_data);
  } else {
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, CALL_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, kube_on_body);
  }
  curl_easy_setopt(c, CURLOPT_WRITEDATA, q);
  if (k->connect_list) curl_easy_setopt(c, CURLOPT_CONNECT_TO, k->connect_list);
  /* The proxy was decided once (kube_new); curl must not look at the
   * environment itself, or API calls and the tunnel could go different ways. */
  curl_easy_setopt(c, CURLOPT_PROXY, k->proxy ? k->proxy : "");
  curl_easy_setopt(c, CURLOPT_NOPROXY, "");
  if (k->kc->insecure_skip_tls_verify) {
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
  } else if (k->ca_pem) {
    struct curl_blob b = {k->ca_pem, strlen(k->ca_pem), CURL_BLOB_COPY};
    curl_easy_setopt(c, CURLOPT_CAINFO_BLOB, &b);
  }
  if (cert && key) {
    struct curl_blob cb = {(void *)(uintptr_t)cert, strlen(cert), CURL_BLOB_COPY};
    struct curl_blob kb = {(void *)(uintptr_t)key, strlen(key), CURL_BLOB_COPY};
    curl_easy_setopt(c, CURLOPT_SSLCERT_BLOB, &cb);
    curl_easy_setopt(c, CURLOPT_SSLCERTTYPE, "PEM");
    curl_easy_setopt(c, CURLOPT_SSLKEY_BLOB, &kb);
    curl_easy_setopt(c, CURLOPT_SSLKEYTYPE, "PEM");
  }
  if (!token && k->kc->username) {
    curl_easy_setopt(c, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
    curl_easy_setopt(c, CURLOPT_USERNAME, k->kc->username);
    curl_easy_setopt(c, CURLOPT_PASSWORD, k->kc->password ? k->kc->password : "");
  }
  curl_slist_free_all(q->hdrs);
  q->hdrs = curl_slist_append(NULL, "Accept: application/json");
  if (token) {
    size_t n = strlen(token) + 32;
    char *h = malloc(n);
    if (!h) abort();
    snprintf(h, n, "Authorization: Bearer %s", token);
    q->hdrs = curl_slist_append(q->hdrs, h);
    free(h);
  }
  if (q->ctype) {
    char h[128];
    snprintf(h, sizeof h, "Content-Type: %s", q->ctype);
    q->hdrs = curl_slist_append(q->hdrs, h);
  }
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, q->hdrs);
  if (q->body) {
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, q->body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(q->body));
  } else {
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
  }
  if (strcmp(q->method, "GET") != 0) curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, q->method);
  kube_buf_free(&q->resp);
  return 0;
}

struct req *kube_req_new(struct kube *k, enum req_kind kind, const char *method, const char *verb,
                           const struct kube_ref *r, const char *query, const char *ctype,
                           const char *body, size_t size) {
  struct req *q = kube_xcalloc(1, size);
  q->k = k;
  q->kind = kind;
  q->method = kube_xstrdup(method);
  q->path = kube_ref_path(r);
  q->query = kube_xstrdup(query);
  q->ctype = kube_xstrdup(ctype);
  q->body = kube_xstrdup(body);
  kube_ref_describe(verb, r, q->what, sizeof q->what, q->act, sizeof q->act, q->scope, sizeof q->scope);
  return q;
}

void kube_req_free(struct req *q) {
  if (!q) return;
  if (q->kind != REQ_BLOCKING && q->easy) curl_easy_cleanup(q->easy);
  curl_slist_free_all(q->hdrs);
  free(q->method);
  free(q->path);
  free(q->query);
  free(q->ctype);
  free(q->body);
  kube_buf_free(&q->resp);
  free(q->failure);
  free(q);
}

/* ---- results ---- */

/* Turn a finished transfer into 0 + *out, or -1 + *e. */
int kube_req_finish(struct req *q, CURLcode cc, cJSON **out, struct kube_err *e) {
  struct kube *k = q->k;
  if (out) *out = NULL;
  if (cc != CURLE_OK) {
    kube_set_err(e, 0, "", "%s: cannot reach the API server %s: %s%s%s%s", q->what, k->kc->server,
            curl_easy_strerror(cc), q->curlerr[0] ? " (" : "", q->curlerr, q->curlerr[0] ? ")" : "");
    return -1;
  }
  long status = 0;
  curl_easy_getinfo(q->easy, CURLINFO_RESPONSE_CODE, &status);
  cJSON *j = q->resp.p ? cJSON_Parse(q->resp.p) : NULL;
  if (status >= 200 && status < 300) {
    if (!j && q->resp.len > 0) {
      kube_set_err(e, status, "", "%s: the API server %s sent a response that is not JSON", q->what,
              k->kc->server);
      return -1;
    }
    if (out)
      *out = j;
    else
      cJSON_Delete(j);
    return 0;
  }
  /* A Status object: message, reason, details. */
  const char *msg = NULL, *reason = "";
  if (j && cJSON_IsObject(j)) {
    msg = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "message"));
    const char *r = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "reason"));
    if (r) reason = r;
  }
  char raw[200] = "";
  if (!msg && q->resp.p) {
    snprintf(raw, sizeof raw, "%.150s", q->resp.p);
    for (char *p = raw; *p; p++)
      if (*p == '\n' || *p == '\r') *p = ' ';
    msg = raw;
  }
  if (!msg || !*msg) msg = "no details";
  /* details.causes may say more than message (e.g. field errors) */
  char full[900];
  snprintf(full, sizeof full, "%s", msg);
  cJSON *causes = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "details"), "causes");
  cJSON *cause;
  cJSON_ArrayForEach(cause, causes) {
    const char *cm = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cause, "message"));
    const char *cf = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cause, "field"));
    if (!cm || strstr(full, cm)) continue;
    size_t l = strlen(full);
    snprintf(full + l, sizeof full - l, "; %s%s%s", cf ? cf : "", cf ? ": " : "", cm);
  }
  msg = full;
  const struct kubeconfig *kc = k->kc;
  switch (status) {
    case 401:
      kube_set_err(e, status, reason[0] ? reason : "Unauthorized",
              "%s: the API server %s rejected the credentials of %s%s%s%s%s%s (%s)", q->what,
              kc->server, kc->user_name ? "user \"" : "the service account",
              kc->user_name ? kc->user_name : "", kc->user_name ? "\"" : "",
              kc->context ? " of context \"" : "", kc->context ? kc->context : "",
              kc->context ? "\"" : "", msg);
      break;
    case 403:
      kube_set_err(e, status, reason[0] ? reason : "Forbidden",
              "%s: forbidden: %s%s%s lacks the right to %s%s (%s)", q->what,
              kc->user_name ? "user \"" : "the service account", kc->user_name ? kc->user_name : "",
              kc->user_name ? "\"" : "", q->act, q->scope[0] ? q->scope : " at cluster scope", msg);
      break;
    case 404:
      kube_set_err(e, status, reason[0] ? reason : "NotFound", "%s: not found (%s)", q->what, msg);
      break;
    case 409:
      kube_set_err(e, status, reason[0] ? reason : "Conflict", "%s: %s (%s)", q->what,
              strcmp(reason, "AlreadyExists") == 0 ? "already exists" : "conflict", msg);
      break;
    case 410:
      kube_set_err(e, status, reason[0] ? reason : "Expired", "%s: expired (%s)", q->what, msg);
      break;
    case 422:
      kube_set_err(e, status, reason[0] ? reason : "Invalid", "%s: invalid: %s", q->what, msg);
      break;
    default:
      kube_set_err(e, status, reason, "%s: the API server %s answered HTTP %ld%s%s: %s", q->what,
              kc->server, status, reason[0] ? " " : "", reason, msg);
  }
  cJSON_Delete(j);
  return -1;
}

/* ---- blocking ---- */

/* Retrying (blocking calls): a call is tried at most RETRY_ATTEMPTS times.
 *   429 Too Many Requests (API Priority and Fairness, max-in-flight): any
 *       method; the server did not execute the request.
 *   5xx and transport errors (reset, nothing received, send/receive failed):
 *       GET, PUT, DELETE only (idempotent; a PUT carries its resourceVersion, so
 *       a repeated one that already happened gets a 409, which the callers'
 *       read-modify-write loop handles, and a repeated DELETE a 404).
 *   A refused connection: any method (nothing was sent).
 * Not retried: timeouts (the call already waited its full time), TLS and
 * credential failures, every other status. The wait is the server's
 * Retry-After when it sends one (capped at RETRY_AFTER_MAX_S), else 250 ms
 * doubling, each randomized to 50-100 %. */
#define RETRY_ATTEMPTS 4
#define RETRY_BASE_MS 250
#define RETRY_AFTER_MAX_S 10

static int idempotent(const char *method) {
  return strcmp(method, "GET") == 0 || strcmp(method, "PUT") == 0 ||
         strcmp(method, "DELETE") == 0 || strcmp(method, "HEAD") == 0;
}

/* How long to wait before trying q again (ms), or -1: do not retry. */
static long retry_delay(const struct req *q, CURLcode cc, long status, int attempt) {
  if (attempt >= RETRY_ATTEMPTS) return -1;
  int again;
  if (cc != CURLE_OK)
    again = cc == CURLE_COULDNT_CONNECT ||
            (idempotent(q->method) && (cc == CURLE_GOT_NOTHING || cc == CURLE_SEND_ERROR ||
                                       cc == CURLE_RECV_ERROR || cc == CURLE_PARTIAL_FILE));
  else
    again = status == 429 || (status >= 500 && status <= 599 && idempotent(q->method));
  if (!again) return -1;
  curl_off_t ra = 0; /* 0: no Retry-After (or "0"): our own back-off */
  if (cc == CURLE_OK && curl_easy_getinfo(q->easy, CURLINFO_RETRY_AFTER, &ra) == CURLE_OK && ra > 0)
    return (long)(ra > RETRY_AFTER_MAX_S ? RETRY_AFTER_MAX_S : ra) * 1000L;
  long base = (long)RETRY_BASE_MS << (attempt - 1);
  unsigned r = 0;
  if (RAND_bytes((unsigned char *)&r, sizeof r) != 1) r = (unsigned)rand();
  return base / 2 + (long)(r % (unsigned)(base / 2 + 1));
}

int kube_run_blocking(struct kube *k, struct req *q, cJSON **out, struct kube_err *e) {
  q->easy = k->easy;
  for (int attempt = 1;;) {
    if (kube_req_setup(q, e) < 0) return -1;
    CURLcode cc = curl_easy_perform(q->easy);
    long status = 0;
    curl_easy_getinfo(q->easy, CURLINFO_RESPONSE_CODE, &status);
    if (cc == CURLE_OK && status == 401 && !q->auth_retried && kube_refreshable(k)) {
      q->auth_retried = 1;
      kube_rejected(k, q);
      continue;
    }
    long ms = retry_delay(q, cc, status, attempt);
    if (ms >= 0) {
      log_debug("%s: %s; trying again in %ld ms (attempt %d of %d)", q->what,
                cc != CURLE_OK ? curl_easy_strerror(cc) : "the API server is busy", ms,
                attempt + 1, RETRY_ATTEMPTS);
      struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
      while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
      }
      attempt++;
      continue;
    }
    int rc = kube_req_finish(q, cc, out, e);
    if (rc < 0 && attempt > 1) {
      size_t l = strlen(e->msg);
      snprintf(e->msg + l, sizeof e->msg - l, " (after %d attempts)", attempt);
    }
    return rc;
  }
}
