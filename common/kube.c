/* kube.c: the Kubernetes API client behind kube.h.
 *
 * A request is a struct req: URL, headers, body, the response collected in a
 * buffer and a sentence describing it ("patch services "a" in namespace "b"")
 * for error messages. The blocking calls run a req on the client's one easy
 * handle (kept alive between calls, so the TCP+TLS connection is reused); the
 * async calls give each req its own easy handle inside a curl multi handle
 * that libevent drives through CURLMOPT_SOCKETFUNCTION/TIMERFUNCTION. A watch
 * is a req whose write callback splits the stream into lines, each a JSON
 * watch event. Cancelled async requests are only flagged; a "reaper" event
 * removes them from the multi handle outside curl's callbacks. */
#include "kube.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kube_exec.h"
#include "kubeconfig.h"
#include "log.h"
#include "netproxy.h"

#define CONNECT_TIMEOUT_MS 5000L
#define CALL_TIMEOUT_MS 30000L
#define UPDATE_RETRIES 5
#define EXPIRY_MARGIN_S 10
#define MAX_RESPONSE (64u << 20)

struct buf {
  char *p;
  size_t len, cap;
};

enum req_kind {
  REQ_BLOCKING, /* on k->easy, run by run_blocking() */
  REQ_ASYNC,    /* own easy handle in k->multi; done callback */
  REQ_WATCH,    /* own easy handle (blocking or multi); line-delimited events */
};

struct kube_watch;

struct req {
  struct kube *k;
  enum req_kind kind;
  CURL *easy;
  struct curl_slist *hdrs;
  char *method, *path, *query, *ctype, *body; /* path: from the ref, without server */
  char what[512];  /* "patch services "a" in namespace "b"" */
  char act[256];   /* "patch services" */
  char scope[300]; /* " in namespace "b"" or "" */
  struct buf resp;
  char curlerr[CURL_ERROR_SIZE];
  int auth_retried;     /* a 401 already led to fresh credentials */
  unsigned cred_gen;    /* k->cred_gen when the request was set up */
  int cancelled;        /* async: do not call back; reaper frees it */
  struct kube_err *failure; /* async: could not start; reaper reports it */
  kube_done_fn done;    /* REQ_ASYNC */
  void *arg;
  struct kube_watch *watch; /* REQ_WATCH */
  struct req *next, *prev;  /* k->active (async and async watch) */
};

struct kube_call {
  struct req r; /* the handle is the request */
};

struct kube_watch {
  struct kube *k;
  char *path, *selector, *fields, *rv;
  char what[512], act[256], scope[300];
  kube_event_fn cb;
  void *arg;
  struct req *cur;        /* current stream, or NULL while waiting to retry */
  struct event *retry_ev; /* async: reconnect timer */
  int backoff_s;
  int stopped;            /* callback asked to stop / kube_watch_stop */
  int got_event;          /* this stream delivered something (resets backoff) */
  int gone;               /* a 410 arrived in the stream */
  int auth_retried;       /* 401 seen since the last good stream */
  struct kube_watch *next, *prev; /* k->watches (async) */
};

struct sockctx {
  struct event *ev;
  struct kube *k;
};

struct kube {
  struct kubeconfig *kc;
  char *base_url;    /* scheme://tlsname:port/prefix used in URLs */
  char *connect_to;  /* CURLOPT_CONNECT_TO entry when tls-server-name is set */
  char *host;        /* server host, no brackets */
  int port;
  char *proxy;       /* normalized proxy URL every connection goes through, or NULL
                      * (netproxy_choose(): proxy-url, else HTTPS_PROXY unless NO_PROXY) */
  const char *proxy_source; /* "proxy-url", "$HTTPS_PROXY", ... */
  char *ca_pem;
  char *cert_pem, *key_pem; /* static client certificate */
  /* token file state */
  char *file_token;
  struct stat file_st;
  int file_stale;
  /* exec plugin state */
  struct kube_exec_cred exec;
  int exec_valid;
  unsigned cred_gen; /* bumped whenever the credentials change */
  CURL *easy;
  CURLSH *share;
  /* async */
  struct event_base *base;
  CURLM *multi;
  struct event *timer, *reaper;
  struct req *active;          /* async requests and watch streams on the multi */
  struct kube_watch *watches;  /* async watches */
  struct curl_slist *connect_list;
};

/* ---- small helpers ---- */

static char *xstrdup(const char *s) {
  if (!s) return NULL;
  char *p = strdup(s);
  if (!p) abort();
  return p;
}

static void *xcalloc(size_t n, size_t sz) {
  void *p = calloc(n, sz);
  if (!p) abort();
  return p;
}

static void buf_add(struct buf *b, const char *d, size_t n) {
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

static void buf_free(struct buf *b) {
  free(b->p);
  memset(b, 0, sizeof *b);
}

static char *read_file(const char *path, char *err, size_t errlen, const char *what) {
  FILE *fp = fopen(path, "rb");
  if (!fp) {
    snprintf(err, errlen, "%s %s: %s", what, path, strerror(errno));
    return NULL;
  }
  struct buf b = {0};
  char tmp[8192];
  size_t n;
  while ((n = fread(tmp, 1, sizeof tmp, fp)) > 0) buf_add(&b, tmp, n);
  fclose(fp);
  if (!b.p) buf_add(&b, "", 0);
  return b.p;
}

static void set_err(struct kube_err *e, long status, const char *reason, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void set_err(struct kube_err *e, long status, const char *reason, const char *fmt, ...) {
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
  buf_add(b, "/", 1);
  buf_add(b, esc, strlen(esc));
  curl_free(esc);
}

/* "/api/v1/namespaces/ns/services/name/sub" */
static char *ref_path(const struct kube_ref *r) {
  struct buf b = {0};
  const char *api = r->api && *r->api ? r->api : "v1";
  const char *slash = strchr(api, '/');
  buf_add(&b, slash ? "/apis" : "/api", slash ? 5 : 4);
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
    buf_add(&b, "/namespaces", 11);
    add_segment(&b, r->namespace);
  }
  add_segment(&b, r->resource);
  if (r->name && *r->name) add_segment(&b, r->name);
  if (r->subresource && *r->subresource) add_segment(&b, r->subresource);
  return b.p;
}

/* "patch deployments.apps "web" in namespace "shop"" in out; optionally
 * "patch deployments.apps" in act and " in namespace "shop"" in scope. */
static void ref_describe(const char *verb, const struct kube_ref *r, char *out, size_t len,
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

static void ref_what(const char *verb, const struct kube_ref *r, char *out, size_t len) {
  ref_describe(verb, r, out, len, NULL, 0, NULL, 0);
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

static int refreshable(const struct kube *k) {
  return k->kc->exec || (!k->kc->token && k->kc->token_file);
}

/* q got a 401. Invalidate the credentials only if q used the current ones:
 * when several requests fail with the same old token, the plugin runs once. */
static void rejected(struct kube *k, const struct req *q) {
  if (q->cred_gen == k->cred_gen) kube_credentials_rejected(k);
}

/* ---- request setup ---- */

static size_t on_body(char *d, size_t sz, size_t n, void *ud) {
  struct req *q = ud;
  if (q->resp.len + sz * n > MAX_RESPONSE) return 0;
  buf_add(&q->resp, d, sz * n);
  return sz * n;
}

static size_t on_watch_data(char *d, size_t sz, size_t n, void *ud);

/* Configure q->easy for q. Returns 0, or -1 with e (credentials failed). */
static int setup(struct req *q, struct kube_err *e) {
  struct kube *k = q->k;
  CURL *c = q->easy;
  const char *token, *cert, *key;
  char cerr[768];
  if (kube_credentials(k, &token, &cert, &key, cerr, sizeof cerr) < 0) {
    set_err(e, 0, "CredentialsFailed", "%s: no credentials: %s", q->what, cerr);
    return -1;
  }
  q->cred_gen = k->cred_gen;
  curl_easy_reset(c);
  struct buf url = {0};
  buf_add(&url, k->base_url, strlen(k->base_url));
  buf_add(&url, q->path, strlen(q->path));
  if (q->query && *q->query) {
    buf_add(&url, "?", 1);
    buf_add(&url, q->query, strlen(q->query));
  }
  curl_easy_setopt(c, CURLOPT_URL, url.p);
  buf_free(&url);
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
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_watch_data);
  } else {
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, CALL_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
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
  buf_free(&q->resp);
  return 0;
}

static struct req *req_new(struct kube *k, enum req_kind kind, const char *method, const char *verb,
                           const struct kube_ref *r, const char *query, const char *ctype,
                           const char *body, size_t size) {
  struct req *q = xcalloc(1, size);
  q->k = k;
  q->kind = kind;
  q->method = xstrdup(method);
  q->path = ref_path(r);
  q->query = xstrdup(query);
  q->ctype = xstrdup(ctype);
  q->body = xstrdup(body);
  ref_describe(verb, r, q->what, sizeof q->what, q->act, sizeof q->act, q->scope, sizeof q->scope);
  return q;
}

static void req_free(struct req *q) {
  if (!q) return;
  if (q->kind != REQ_BLOCKING && q->easy) curl_easy_cleanup(q->easy);
  curl_slist_free_all(q->hdrs);
  free(q->method);
  free(q->path);
  free(q->query);
  free(q->ctype);
  free(q->body);
  buf_free(&q->resp);
  free(q->failure);
  free(q);
}

/* ---- results ---- */

/* Turn a finished transfer into 0 + *out, or -1 + *e. */
static int finish(struct req *q, CURLcode cc, cJSON **out, struct kube_err *e) {
  struct kube *k = q->k;
  if (out) *out = NULL;
  if (cc != CURLE_OK) {
    set_err(e, 0, "", "%s: cannot reach the API server %s: %s%s%s%s", q->what, k->kc->server,
            curl_easy_strerror(cc), q->curlerr[0] ? " (" : "", q->curlerr, q->curlerr[0] ? ")" : "");
    return -1;
  }
  long status = 0;
  curl_easy_getinfo(q->easy, CURLINFO_RESPONSE_CODE, &status);
  cJSON *j = q->resp.p ? cJSON_Parse(q->resp.p) : NULL;
  if (status >= 200 && status < 300) {
    if (!j && q->resp.len > 0) {
      set_err(e, status, "", "%s: the API server %s sent a response that is not JSON", q->what,
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
      set_err(e, status, reason[0] ? reason : "Unauthorized",
              "%s: the API server %s rejected the credentials of %s%s%s%s%s%s (%s)", q->what,
              kc->server, kc->user_name ? "user \"" : "the service account",
              kc->user_name ? kc->user_name : "", kc->user_name ? "\"" : "",
              kc->context ? " of context \"" : "", kc->context ? kc->context : "",
              kc->context ? "\"" : "", msg);
      break;
    case 403:
      set_err(e, status, reason[0] ? reason : "Forbidden",
              "%s: forbidden: %s%s%s lacks the right to %s%s (%s)", q->what,
              kc->user_name ? "user \"" : "the service account", kc->user_name ? kc->user_name : "",
              kc->user_name ? "\"" : "", q->act, q->scope[0] ? q->scope : " at cluster scope", msg);
      break;
    case 404:
      set_err(e, status, reason[0] ? reason : "NotFound", "%s: not found (%s)", q->what, msg);
      break;
    case 409:
      set_err(e, status, reason[0] ? reason : "Conflict", "%s: %s (%s)", q->what,
              strcmp(reason, "AlreadyExists") == 0 ? "already exists" : "conflict", msg);
      break;
    case 410:
      set_err(e, status, reason[0] ? reason : "Expired", "%s: expired (%s)", q->what, msg);
      break;
    case 422:
      set_err(e, status, reason[0] ? reason : "Invalid", "%s: invalid: %s", q->what, msg);
      break;
    default:
      set_err(e, status, reason, "%s: the API server %s answered HTTP %ld%s%s: %s", q->what,
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

static int run_blocking(struct kube *k, struct req *q, cJSON **out, struct kube_err *e) {
  q->easy = k->easy;
  for (int attempt = 1;;) {
    if (setup(q, e) < 0) return -1;
    CURLcode cc = curl_easy_perform(q->easy);
    long status = 0;
    curl_easy_getinfo(q->easy, CURLINFO_RESPONSE_CODE, &status);
    if (cc == CURLE_OK && status == 401 && !q->auth_retried && refreshable(k)) {
      q->auth_retried = 1;
      rejected(k, q);
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
    int rc = finish(q, cc, out, e);
    if (rc < 0 && attempt > 1) {
      size_t l = strlen(e->msg);
      snprintf(e->msg + l, sizeof e->msg - l, " (after %d attempts)", attempt);
    }
    return rc;
  }
}

int kube_request(struct kube *k, const char *method, const char *verb, const struct kube_ref *r,
                 const char *query, const char *content_type, const char *body, cJSON **out,
                 struct kube_err *e) {
  if (out) *out = NULL;
  if (!r || !r->resource || !*r->resource) {
    set_err(e, 0, "", "%s: no resource given", verb);
    return -1;
  }
  struct req *q = req_new(k, REQ_BLOCKING, method, verb, r, query, content_type, body, sizeof *q);
  int rc = run_blocking(k, q, out, e);
  req_free(q);
  return rc;
}

int kube_get(struct kube *k, const struct kube_ref *r, cJSON **out, struct kube_err *e) {
  return kube_request(k, "GET", "get", r, NULL, NULL, NULL, out, e);
}

static void add_param(struct buf *b, const char *name, const char *value) {
  if (!value || !*value) return;
  char *esc = curl_easy_escape(NULL, value, 0);
  if (!esc) abort();
  if (b->len) buf_add(b, "&", 1);
  buf_add(b, name, strlen(name));
  buf_add(b, "=", 1);
  buf_add(b, esc, strlen(esc));
  curl_free(esc);
}

static char *selector_query(const char *sel, const char *extra) {
  struct buf b = {0};
  add_param(&b, "labelSelector", sel);
  if (extra && *extra) {
    if (b.len) buf_add(&b, "&", 1);
    buf_add(&b, extra, strlen(extra));
  }
  return b.p;
}

int kube_list(struct kube *k, const struct kube_ref *r, const char *label_selector, cJSON **out,
              struct kube_err *e) {
  struct kube_ref coll = *r;
  coll.name = NULL;
  char *query = selector_query(label_selector, NULL);
  int rc = kube_request(k, "GET", "list", &coll, query, NULL, NULL, out, e);
  free(query);
  return rc;
}

static int send_obj(struct kube *k, const char *method, const char *verb, const struct kube_ref *r,
                    const cJSON *obj, cJSON **out, struct kube_err *e) {
  char *body = cJSON_PrintUnformatted(obj);
  if (!body) {
    set_err(e, 0, "", "%s: cannot serialize the object", verb);
    return -1;
  }
  int rc = kube_request(k, method, verb, r, NULL, "application/json", body, out, e);
  free(body);
  return rc;
}

int kube_create(struct kube *k, const struct kube_ref *r, const cJSON *obj, cJSON **out,
                struct kube_err *e) {
  if (out) *out = NULL;
  if (!r || !r->resource || !*r->resource) {
    set_err(e, 0, "", "create: no resource given");
    return -1;
  }
  struct kube_ref coll = *r;
  const char *name =
      cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(obj, "metadata"), "name"));
  coll.name = NULL;
  /* The message names the object being created; the URL is the collection. */
  char *body = cJSON_PrintUnformatted(obj);
  if (!body) {
    set_err(e, 0, "", "create %s: cannot serialize the object", r->resource);
    return -1;
  }
  struct req *q = req_new(k, REQ_BLOCKING, "POST", "create", &coll, NULL, "application/json", body,
                          sizeof *q);
  free(body);
  if (name) {
    struct kube_ref named = coll;
    named.name = name;
    ref_what("create", &named, q->what, sizeof q->what);
  }
  int rc = run_blocking(k, q, out, e);
  req_free(q);
  return rc;
}

int kube_replace(struct kube *k, const struct kube_ref *r, const cJSON *obj, cJSON **out,
                 struct kube_err *e) {
  return send_obj(k, "PUT", "update", r, obj, out, e);
}

static const char *patch_ctype(enum kube_patch_type t) {
  switch (t) {
    case KUBE_PATCH_STRATEGIC: return "application/strategic-merge-patch+json";
    case KUBE_PATCH_JSON: return "application/json-patch+json";
    case KUBE_PATCH_MERGE: break;
  }
  return "application/merge-patch+json";
}

int kube_patch(struct kube *k, const struct kube_ref *r, enum kube_patch_type type,
               const char *patch, cJSON **out, struct kube_err *e) {
  return kube_request(k, "PATCH", "patch", r, NULL, patch_ctype(type), patch, out, e);
}

static char *delete_body(const char *propagation) {
  if (!propagation) return NULL;
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "kind", "DeleteOptions");
  cJSON_AddStringToObject(o, "apiVersion", "v1");
  cJSON_AddStringToObject(o, "propagationPolicy", propagation);
  char *s = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  return s;
}

int kube_delete(struct kube *k, const struct kube_ref *r, const char *propagation,
                struct kube_err *e) {
  char *body = delete_body(propagation);
  int rc = kube_request(k, "DELETE", "delete", r, NULL, body ? "application/json" : NULL, body,
                        NULL, e);
  free(body);
  return rc;
}

int kube_update_retry(struct kube *k, const struct kube_ref *r, kube_mutate_fn mutate, void *arg,
                      cJSON **out, struct kube_err *e) {
  if (out) *out = NULL;
  for (int attempt = 1;; attempt++) {
    cJSON *obj;
    if (kube_get(k, r, &obj, e) < 0) return -1;
    char merr[512] = "";
    int m = mutate(obj, arg, merr, sizeof merr);
    if (m != 0) {
      if (m < 0) {
        char what[512];
        ref_what("update", r, what, sizeof what);
        set_err(e, 0, "", "%s: %s", what, merr[0] ? merr : "the change could not be applied");
        cJSON_Delete(obj);
        return -1;
      }
      if (out)
        *out = obj;
      else
        cJSON_Delete(obj);
      return 0;
    }
    int rc = kube_replace(k, r, obj, out, e);
    cJSON_Delete(obj);
    if (rc == 0) return 0;
    if (e->status != 409 || attempt == UPDATE_RETRIES) return -1;
    log_debug("kube: %s: conflict, retrying with a fresh read (%d)", e->msg, attempt);
  }
}

/* ---- watch (shared by blocking and async) ---- */

static void emit_error(struct kube_watch *w, const struct kube_err *e, cJSON *obj) {
  if (w->stopped) return;
  if (w->cb("ERROR", obj, e, w->arg)) w->stopped = 1;
}

/* One line of the watch stream. */
static void watch_line(struct kube_watch *w, const char *line) {
  if (w->stopped || !*line) return;
  cJSON *j = cJSON_Parse(line);
  const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "type"));
  cJSON *obj = cJSON_GetObjectItemCaseSensitive(j, "object");
  if (!type || !cJSON_IsObject(obj)) {
    struct kube_err e;
    set_err(&e, 0, "", "%s: the API server sent a watch event that is not understood: %.100s",
            w->what, line);
    emit_error(w, &e, NULL);
    cJSON_Delete(j);
    return;
  }
  if (strcmp(type, "ERROR") == 0) {
    cJSON *code = cJSON_GetObjectItemCaseSensitive(obj, "code");
    const char *msg = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(obj, "message"));
    if (cJSON_IsNumber(code) && code->valueint == 410) {
      w->gone = 1; /* the stream ends; restart without resourceVersion */
    } else {
      struct kube_err e;
      set_err(&e, cJSON_IsNumber(code) ? code->valueint : 0, "", "%s: %s", w->what,
              msg ? msg : "error event");
      emit_error(w, &e, obj);
    }
    cJSON_Delete(j);
    return;
  }
  const char *rv = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
      cJSON_GetObjectItemCaseSensitive(obj, "metadata"), "resourceVersion"));
  if (rv) {
    free(w->rv);
    w->rv = xstrdup(rv);
  }
  w->got_event = 1;
  if (strcmp(type, "BOOKMARK") != 0 && w->cb(type, obj, NULL, w->arg)) w->stopped = 1;
  cJSON_Delete(j);
}

static size_t on_watch_data(char *d, size_t sz, size_t n, void *ud) {
  struct req *q = ud;
  struct kube_watch *w = q->watch;
  long status = 0;
  curl_easy_getinfo(q->easy, CURLINFO_RESPONSE_CODE, &status);
  if (status != 200) return on_body(d, sz, n, ud); /* an error Status: keep for finish() */
  if (w->stopped) return 0;
  buf_add(&q->resp, d, sz * n);
  char *start = q->resp.p, *nl;
  while (!w->stopped && (nl = memchr(start, '\n', q->resp.len - (size_t)(start - q->resp.p)))) {
    *nl = 0;
    watch_line(w, start);
    start = nl + 1;
  }
  size_t rest = q->resp.len - (size_t)(start - q->resp.p);
  memmove(q->resp.p, start, rest);
  q->resp.len = rest;
  q->resp.p[rest] = 0;
  if (rest > MAX_RESPONSE) return 0;
  return w->stopped ? 0 : sz * n;
}

static struct req *watch_req(struct kube_watch *w) {
  struct req *q = xcalloc(1, sizeof *q);
  q->k = w->k;
  q->kind = REQ_WATCH;
  q->method = xstrdup("GET");
  q->path = xstrdup(w->path);
  struct buf b = {0};
  buf_add(&b, "watch=1&allowWatchBookmarks=true", 32);
  add_param(&b, "labelSelector", w->selector);
  add_param(&b, "fieldSelector", w->fields);
  add_param(&b, "resourceVersion", w->rv);
  q->query = b.p;
  snprintf(q->what, sizeof q->what, "%s", w->what);
  snprintf(q->act, sizeof q->act, "%s", w->act);
  snprintf(q->scope, sizeof q->scope, "%s", w->scope);
  q->watch = w;
  return q;
}

static struct kube_watch *watch_new(struct kube *k, const struct kube_ref *r, const char *sel,
                                    const char *rv, kube_event_fn cb, void *arg) {
  struct kube_watch *w = xcalloc(1, sizeof *w);
  w->k = k;
  struct kube_ref coll = *r;
  coll.name = NULL; /* one object: its collection with a field selector on the name */
  w->path = ref_path(&coll);
  if (r->name && *r->name) {
    size_t n = strlen(r->name) + 16;
    w->fields = malloc(n);
    if (!w->fields) abort();
    snprintf(w->fields, n, "metadata.name=%s", r->name);
  }
  w->selector = xstrdup(sel && *sel ? sel : NULL);
  w->rv = xstrdup(rv && *rv ? rv : NULL);
  ref_describe("watch", r, w->what, sizeof w->what, w->act, sizeof w->act, w->scope,
               sizeof w->scope);
  w->cb = cb;
  w->arg = arg;
  w->backoff_s = 1;
  return w;
}

static void watch_free(struct kube_watch *w) {
  struct kube *k = w->k;
  if (w->prev)
    w->prev->next = w->next;
  else if (k->watches == w)
    k->watches = w->next;
  if (w->next) w->next->prev = w->prev;
  if (w->retry_ev) event_free(w->retry_ev);
  free(w->path);
  free(w->selector);
  free(w->fields);
  free(w->rv);
  free(w);
}

int kube_watch(struct kube *k, const struct kube_ref *r, const char *label_selector,
               const char *resource_version, kube_event_fn cb, void *arg, struct kube_err *e) {
  if (!r || !r->resource || !*r->resource) {
    set_err(e, 0, "", "watch: no resource given");
    return -1;
  }
  struct kube_watch *w = watch_new(k, r, label_selector, resource_version, cb, arg);
  CURL *easy = curl_easy_init();
  int rc = -1;
  if (!easy) {
    set_err(e, 0, "", "%s: cannot create a curl handle", w->what);
    goto out;
  }
  for (;;) {
    struct req *q = watch_req(w);
    q->easy = easy;
    q->kind = REQ_WATCH;
    if (setup(q, e) < 0) {
      q->easy = NULL;
      req_free(q);
      goto out;
    }
    CURLcode cc = curl_easy_perform(easy);
    long status = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
    if (w->stopped) {
      q->easy = NULL;
      req_free(q);
      rc = 0;
      goto out;
    }
    int again = 0;
    if (cc == CURLE_OK && status == 200) {
      again = 1; /* the server closed the stream: go on from the last rv */
      w->auth_retried = 0;
      if (!w->got_event) sleep(1); /* an empty stream: do not spin */
      w->got_event = 0;
    } else if (cc == CURLE_OK && status == 401 && !w->auth_retried && refreshable(k)) {
      rejected(k, q);
      w->auth_retried = 1;
      again = 1;
    } else if (cc == CURLE_OK && status == 410) {
      w->gone = 1;
    } else {
      finish(q, cc, NULL, e);
    }
    if (w->gone) {
      w->gone = 0;
      free(w->rv);
      w->rv = NULL;
      again = 1;
      if (cb("RESYNC", NULL, NULL, arg)) w->stopped = 1;
    }
    q->easy = NULL;
    req_free(q);
    if (w->stopped) {
      rc = 0;
      goto out;
    }
    if (!again) goto out;
  }
out:
  if (easy) curl_easy_cleanup(easy);
  watch_free(w);
  return rc;
}

/* ---- async: curl multi socket API in libevent ---- */

static void check_done(struct kube *k);

static void on_socket_event(evutil_socket_t fd, short what, void *arg) {
  struct kube *k = arg;
  int flags = (what & EV_READ ? CURL_CSELECT_IN : 0) | (what & EV_WRITE ? CURL_CSELECT_OUT : 0);
  int running;
  curl_multi_socket_action(k->multi, fd, flags, &running);
  check_done(k);
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
  struct kube *k = arg;
  int running;
  curl_multi_socket_action(k->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done(k);
}

/* CURLMOPT_SOCKETFUNCTION: curl tells which events it wants on a socket. */
static int sock_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *sockp) {
  struct kube *k = userp;
  struct sockctx *sc = sockp;
  if (what == CURL_POLL_REMOVE) {
    if (sc) {
      event_free(sc->ev);
      free(sc);
    }
    curl_multi_assign(k->multi, s, NULL);
    return 0;
  }
  short ev = EV_PERSIST | (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);
  if (!sc) {
    sc = xcalloc(1, sizeof *sc);
    sc->k = k;
    curl_multi_assign(k->multi, s, sc);
  } else {
    event_free(sc->ev);
  }
  sc->ev = event_new(k->base, s, ev, on_socket_event, k);
  if (!sc->ev || event_add(sc->ev, NULL) < 0) {
    log_err("kube: cannot watch socket %d in the event loop", (int)s);
    return -1;
  }
  return 0;
}

/* CURLMOPT_TIMERFUNCTION: one timer for the whole multi handle. */
static int timer_cb(CURLM *multi, long timeout_ms, void *userp) {
  struct kube *k = userp;
  if (timeout_ms < 0) {
    evtimer_del(k->timer);
    return 0;
  }
  struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  return evtimer_add(k->timer, &tv) < 0 ? -1 : 0;
}

static void active_add(struct kube *k, struct req *q) {
  q->prev = NULL;
  q->next = k->active;
  if (k->active) k->active->prev = q;
  k->active = q;
}

static void active_del(struct kube *k, struct req *q) {
  if (q->prev)
    q->prev->next = q->next;
  else if (k->active == q)
    k->active = q->next;
  if (q->next) q->next->prev = q->prev;
  q->next = q->prev = NULL;
}

/* Put q on the multi handle. Returns 0 or -1 with e. */
static int start_async(struct kube *k, struct req *q, struct kube_err *e) {
  if (!q->easy) q->easy = curl_easy_init();
  if (!q->easy) {
    set_err(e, 0, "", "%s: cannot create a curl handle", q->what);
    return -1;
  }
  if (setup(q, e) < 0) return -1;
  if (curl_multi_add_handle(k->multi, q->easy) != CURLM_OK) {
    set_err(e, 0, "", "%s: cannot start the transfer", q->what);
    return -1;
  }
  active_add(k, q);
  return 0;
}

static void watch_restart(struct kube_watch *w, int delay_s);

static void on_watch_retry(evutil_socket_t fd, short what, void *arg) {
  struct kube_watch *w = arg;
  struct kube_err e;
  struct req *q = watch_req(w);
  if (start_async(w->k, q, &e) < 0) {
    req_free(q);
    emit_error(w, &e, NULL);
    if (w->stopped) {
      watch_free(w);
      return;
    }
    watch_restart(w, w->backoff_s);
    w->backoff_s = w->backoff_s * 2 > 30 ? 30 : w->backoff_s * 2;
    return;
  }
  w->cur = q;
}

static void watch_restart(struct kube_watch *w, int delay_s) {
  w->cur = NULL;
  struct timeval tv = {delay_s, 0};
  evtimer_add(w->retry_ev, &tv);
}

/* A watch stream ended (q is off the multi handle). */
static void watch_ended(struct kube_watch *w, struct req *q, CURLcode cc) {
  struct kube *k = w->k;
  long status = 0;
  curl_easy_getinfo(q->easy, CURLINFO_RESPONSE_CODE, &status);
  int delay = 0;
  if (!w->stopped) {
    if (cc == CURLE_OK && status == 200) {
      delay = w->got_event ? 0 : 1; /* normal end of stream: reconnect at once */
      w->auth_retried = 0;
    } else if (cc == CURLE_OK && status == 401 && refreshable(k) && !w->auth_retried) {
      rejected(k, q);
      w->auth_retried = 1;
    } else if (cc == CURLE_OK && status == 410) {
      w->gone = 1;
    } else {
      struct kube_err e;
      finish(q, cc, NULL, &e);
      emit_error(w, &e, NULL);
      delay = w->backoff_s;
      w->backoff_s = w->backoff_s * 2 > 30 ? 30 : w->backoff_s * 2;
    }
    if (w->got_event) w->backoff_s = 1;
    w->got_event = 0;
    if (w->gone && !w->stopped) {
      w->gone = 0;
      free(w->rv);
      w->rv = NULL;
      if (w->cb("RESYNC", NULL, NULL, w->arg)) w->stopped = 1;
    }
  }
  req_free(q);
  w->cur = NULL;
  if (w->stopped) {
    watch_free(w);
    return;
  }
  watch_restart(w, delay);
}

static void check_done(struct kube *k) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(k->multi, &left))) {
    if (m->msg != CURLMSG_DONE) continue;
    struct req *q = NULL;
    CURLcode cc = m->data.result;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&q);
    curl_multi_remove_handle(k->multi, m->easy_handle);
    active_del(k, q);
    if (q->kind == REQ_WATCH) {
      watch_ended(q->watch, q, cc);
      continue;
    }
    if (q->cancelled) {
      req_free(q);
      continue;
    }
    long status = 0;
    curl_easy_getinfo(q->easy, CURLINFO_RESPONSE_CODE, &status);
    struct kube_err e;
    if (cc == CURLE_OK && status == 401 && !q->auth_retried && refreshable(k)) {
      q->auth_retried = 1;
      rejected(k, q);
      if (start_async(k, q, &e) == 0) continue;
      q->done(NULL, &e, q->arg);
      req_free(q);
      continue;
    }
    cJSON *obj = NULL;
    if (finish(q, cc, &obj, &e) == 0)
      q->done(obj, NULL, q->arg);
    else
      q->done(NULL, &e, q->arg);
    cJSON_Delete(obj);
    req_free(q);
  }
}

/* Remove cancelled requests and stopped watches, outside curl's callbacks,
 * and report requests that could not be started. */
static void on_reap(evutil_socket_t fd, short what, void *arg) {
  struct kube *k = arg;
  struct req *q = k->active, *next;
  for (; q; q = next) {
    next = q->next;
    if (q->failure) { /* never on the multi handle */
      active_del(k, q);
      if (!q->cancelled) q->done(NULL, q->failure, q->arg);
      req_free(q);
      continue;
    }
    int dead = q->kind == REQ_WATCH ? q->watch->stopped : q->cancelled;
    if (!dead) continue;
    curl_multi_remove_handle(k->multi, q->easy);
    active_del(k, q);
    if (q->kind == REQ_WATCH) {
      struct kube_watch *w = q->watch;
      req_free(q);
      watch_free(w);
    } else {
      req_free(q);
    }
  }
}

int kube_attach(struct kube *k, struct event_base *base, char *err, size_t errlen) {
  if (k->multi) {
    snprintf(err, errlen, "kube client already attached to an event loop");
    return -1;
  }
  k->base = base;
  k->multi = curl_multi_init();
  k->timer = evtimer_new(base, on_timer, k);
  k->reaper = event_new(base, -1, 0, on_reap, k);
  if (!k->multi || !k->timer || !k->reaper) {
    snprintf(err, errlen, "cannot set up the asynchronous kube client");
    return -1;
  }
  curl_multi_setopt(k->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
  curl_multi_setopt(k->multi, CURLMOPT_SOCKETDATA, k);
  curl_multi_setopt(k->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
  curl_multi_setopt(k->multi, CURLMOPT_TIMERDATA, k);
  return 0;
}

struct kube_call *kube_async_request(struct kube *k, const char *method, const char *verb,
                                     const struct kube_ref *r, const char *query,
                                     const char *content_type, const char *body, kube_done_fn cb,
                                     void *arg) {
  if (!k->multi || !r || !r->resource || !*r->resource) {
    log_err("kube: async %s %s", verb, k->multi ? "without a resource" : "before kube_attach");
    return NULL;
  }
  struct kube_call *c =
      (struct kube_call *)req_new(k, REQ_ASYNC, method, verb, r, query, content_type, body,
                                  sizeof(struct kube_call));
  struct req *q = &c->r;
  q->done = cb;
  q->arg = arg;
  struct kube_err e;
  if (start_async(k, q, &e) < 0) {
    /* Report it like any failure, from the loop (never inside this call). */
    q->failure = malloc(sizeof e);
    if (!q->failure) abort();
    *q->failure = e;
    active_add(k, q);
    event_active(k->reaper, 0, 0);
  }
  return c;
}

struct kube_call *kube_async_get(struct kube *k, const struct kube_ref *r, kube_done_fn cb,
                                 void *arg) {
  return kube_async_request(k, "GET", "get", r, NULL, NULL, NULL, cb, arg);
}

struct kube_call *kube_async_patch(struct kube *k, const struct kube_ref *r,
                                   enum kube_patch_type type, const char *patch, kube_done_fn cb,
                                   void *arg) {
  return kube_async_request(k, "PATCH", "patch", r, NULL, patch_ctype(type), patch, cb, arg);
}

struct kube_call *kube_async_create(struct kube *k, const struct kube_ref *r, const cJSON *obj,
                                    kube_done_fn cb, void *arg) {
  char *body = cJSON_PrintUnformatted(obj);
  if (!body) return NULL;
  struct kube_ref coll = *r;
  coll.name = NULL;
  struct kube_call *c =
      kube_async_request(k, "POST", "create", &coll, NULL, "application/json", body, cb, arg);
  free(body);
  return c;
}

struct kube_call *kube_async_delete(struct kube *k, const struct kube_ref *r,
                                    const char *propagation, kube_done_fn cb, void *arg) {
  char *body = delete_body(propagation);
  struct kube_call *c = kube_async_request(k, "DELETE", "delete", r, NULL,
                                           body ? "application/json" : NULL, body, cb, arg);
  free(body);
  return c;
}

void kube_call_cancel(struct kube_call *c) {
  if (!c) return;
  c->r.cancelled = 1;
  event_active(c->r.k->reaper, 0, 0);
}

struct kube_watch *kube_async_watch(struct kube *k, const struct kube_ref *r,
                                    const char *label_selector, const char *resource_version,
                                    kube_event_fn cb, void *arg) {
  if (!k->multi || !r || !r->resource || !*r->resource) {
    log_err("kube: async watch %s", k->multi ? "without a resource" : "before kube_attach");
    return NULL;
  }
  struct kube_watch *w = watch_new(k, r, label_selector, resource_version, cb, arg);
  w->next = k->watches;
  if (k->watches) k->watches->prev = w;
  k->watches = w;
  w->retry_ev = evtimer_new(k->base, on_watch_retry, w);
  if (!w->retry_ev) {
    watch_free(w);
    return NULL;
  }
  watch_restart(w, 0); /* start from the loop: the callback never runs inside this call */
  return w;
}

void kube_watch_stop(struct kube_watch *w) {
  if (!w || w->stopped) return;
  w->stopped = 1;
  if (w->cur) {
    event_active(w->k->reaper, 0, 0);
  } else if (evtimer_pending(w->retry_ev, NULL)) {
    /* Waiting to retry, not inside a callback: free now. (Inside a callback of
     * watch_ended or on_watch_retry the timer is not pending, and they free
     * the watch when the callback returns.) */
    watch_free(w);
  }
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
  struct kube *k = xcalloc(1, sizeof *k);
  k->kc = kc;
  char what[300];
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
  if (kc->ca_pem) {
    k->ca_pem = xstrdup(kc->ca_pem);
  } else if (kc->ca_file) {
    snprintf(what, sizeof what, "cluster \"%s\": certificate-authority",
             kc->cluster_name ? kc->cluster_name : "in-cluster");
    if (!(k->ca_pem = read_file(kc->ca_file, err, errlen, what))) goto fail;
  }
  snprintf(what, sizeof what, "user \"%s\":", kc->user_name ? kc->user_name : "");
  if (kc->client_cert_pem) {
    k->cert_pem = xstrdup(kc->client_cert_pem);
  } else if (kc->client_cert_file) {
    char w[350];
    snprintf(w, sizeof w, "%s client-certificate", what);
    if (!(k->cert_pem = read_file(kc->client_cert_file, err, errlen, w))) goto fail;
  }
  if (kc->client_key_pem) {
    k->key_pem = xstrdup(kc->client_key_pem);
  } else if (kc->client_key_file) {
    char w[350];
    snprintf(w, sizeof w, "%s client-key", what);
    if (!(k->key_pem = read_file(kc->client_key_file, err, errlen, w))) goto fail;
  }
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
    if (q->kind == REQ_WATCH) {
      struct kube_watch *w = q->watch;
      req_free(q);
      watch_free(w);
    } else {
      req_free(q);
    }
  }
  while (k->watches) watch_free(k->watches); /* those waiting to retry */
  if (k->multi) curl_multi_cleanup(k->multi);
  if (k->timer) event_free(k->timer);
  if (k->reaper) event_free(k->reaper);
  if (k->easy) curl_easy_cleanup(k->easy);
  if (k->share) curl_share_cleanup(k->share);
  curl_slist_free_all(k->connect_list);
  kube_exec_cred_clear(&k->exec);
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
