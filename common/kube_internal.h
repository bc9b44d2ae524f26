/* kube_internal.h: what the files of the Kubernetes API client share, and
 * nothing else includes. The client is one struct kube (kube_client.c: its lifetime,
 * credentials and TLS for other connections); a request is a struct req
 * (kube_transport.c: URL, headers, credentials, the answer turned into a
 * result or a sentence, retries, the blocking run); kube_async.c drives
 * requests from libevent through curl's multi socket API; kube_resources.c
 * holds the verbs (get, list, create, replace, patch, delete, update_retry)
 * and kube_watch.c the watches. */
#ifndef KB_KUBE_INTERNAL_H
#define KB_KUBE_INTERNAL_H

#include <curl/curl.h>
#include <event2/event.h>
#include <sys/stat.h>

#include "kube.h"
#include "kube_exec.h"

#define MAX_RESPONSE (64u << 20) /* the most one answer (or watch line) may hold */

struct buf {
  char *p;
  size_t len, cap;
};

enum req_kind {
  REQ_BLOCKING, /* on k->easy, run by kube_run_blocking() */
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

/* ---- kube_transport.c ---- */

/* strdup/calloc that abort when memory runs out (xstrdup(NULL) is NULL). */
char *kube_xstrdup(const char *s);
void *kube_xcalloc(size_t n, size_t sz);
/* Append n bytes to b, keeping it NUL-terminated. */
void kube_buf_add(struct buf *b, const char *d, size_t n);
void kube_buf_free(struct buf *b);
void kube_set_err(struct kube_err *e, long status, const char *reason, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* "/api/v1/namespaces/ns/services/name/sub", each segment percent-encoded. */
char *kube_ref_path(const struct kube_ref *r);
/* "patch deployments.apps "web" in namespace "shop"" in out; optionally
 * "patch deployments.apps" in act and " in namespace "shop"" in scope. */
void kube_ref_describe(const char *verb, const struct kube_ref *r, char *out, size_t len, char *act,
                  size_t actlen, char *scope, size_t scopelen);
void kube_ref_what(const char *verb, const struct kube_ref *r, char *out, size_t len);
/* "&name=value" (value percent-encoded) onto a query; nothing for an empty value. */
void kube_add_param(struct buf *b, const char *name, const char *value);
/* CURLOPT_WRITEFUNCTION of a plain request: collect the answer in q->resp. */
size_t kube_on_body(char *d, size_t sz, size_t n, void *ud);
/* A new request of that kind (size: sizeof struct req, or of a struct that
 * begins with one); the strings are copied. */
struct req *kube_req_new(struct kube *k, enum req_kind kind, const char *method, const char *verb,
                    const struct kube_ref *r, const char *query, const char *ctype,
                    const char *body, size_t size);
void kube_req_free(struct req *q);
/* Configure q->easy for q. Returns 0, or -1 with e (credentials failed). */
int kube_req_setup(struct req *q, struct kube_err *e);
/* Turn a finished transfer into 0 + *out, or -1 + *e. */
int kube_req_finish(struct req *q, CURLcode cc, cJSON **out, struct kube_err *e);
/* Run q on k's easy handle with 401 refresh and retries; 0 + *out or -1 + *e. */
int kube_run_blocking(struct kube *k, struct req *q, cJSON **out, struct kube_err *e);

/* ---- kube_client.c ---- */

/* The credentials can be renewed after a 401 (exec plugin, token file). */
int kube_refreshable(const struct kube *k);
/* q got a 401. Invalidate the credentials only if q used the current ones:
 * when several requests fail with the same old token, the plugin runs once. */
void kube_rejected(struct kube *k, const struct req *q);

/* ---- kube_async.c ---- */

/* Put q on the multi handle. Returns 0 or -1 with e. */
int kube_start_async(struct kube *k, struct req *q, struct kube_err *e);

/* Free q, off the multi handle, and for a watch stream its watch too. */
void kube_req_drop(struct req *q);

/* ---- kube_watch.c ---- */

/* CURLOPT_WRITEFUNCTION of a watch stream: one event per line. */
size_t kube_on_watch_data(char *d, size_t sz, size_t n, void *ud);
/* A watch stream of q->kind REQ_WATCH ended (q is off the multi handle). */
void kube_watch_ended(struct kube_watch *w, struct req *q, CURLcode cc);
/* Unlink w from k->watches and free it. */
void kube_watch_free(struct kube_watch *w);

#endif
