/* kube.h: a small Kubernetes API client (libcurl + cJSON).
 *
 * One struct kube per API server: it owns the resolved kubeconfig, the
 * credentials (static, token file re-read on change, exec plugin output cached
 * until its expiry and refreshed after a 401), one curl easy handle reused for
 * the blocking calls (so their connection is kept alive) and, once attached to
 * a libevent base, a curl multi handle driven by libevent through the multi
 * socket API for the asynchronous calls.
 *
 * Objects are named by a struct kube_ref (API group/version, plural resource,
 * namespace, name). Every failure fills a struct kube_err whose msg is a
 * sentence naming what was attempted and why it failed, e.g.
 *   get deployments.apps "web" in namespace "shop": not found (...)
 *   patch services "api" in namespace "shop": forbidden: the account cannot
 *     patch services in namespace "shop" (User "dev" cannot patch ...)
 *   list pods in namespace "x": cannot reach the API server
 *     https://10.0.0.1:6443: Timeout was reached (Connection timed out ...)
 *
 * The blocking calls are for the CLI; the kube_async_* calls for code running
 * in an event loop (the agent). Neither is thread-safe: use one struct kube
 * from one thread. */
#ifndef KB_KUBE_H
#define KB_KUBE_H

#include <cjson/cJSON.h>
#include <openssl/ssl.h>
#include <stddef.h>

struct kubeconfig;
struct event_base;
struct kube;

/* An object or collection in the API. `api` is "v1" for the core group, else
 * "group/version" ("apps/v1"). namespace NULL: cluster-scoped (or all
 * namespaces for a list); name NULL: the collection; subresource e.g. "scale".
 * The strings are only read during the call. */
struct kube_ref {
  const char *api;
  const char *resource;
  const char *namespace;
  const char *name;
  const char *subresource;
};

/* Why a call failed. status is the HTTP status, 0 when no response came. */
struct kube_err {
  long status;
  char reason[64];  /* Status.reason ("NotFound", "Forbidden", "Conflict", ...) or "" */
  char msg[1024];   /* the sentence for the user */
};

enum kube_patch_type {
  KUBE_PATCH_MERGE,     /* application/merge-patch+json (RFC 7386) */
  KUBE_PATCH_STRATEGIC, /* application/strategic-merge-patch+json (built-in types only) */
  KUBE_PATCH_JSON,      /* application/json-patch+json (RFC 6902, a JSON array) */
};

/* Create a client for kc, which it takes over (also on failure). Loads the CA
 * and client certificate files now, so a wrong path is reported here. Runs no
 * exec plugin yet (that happens on the first request). Returns NULL with err. */
struct kube *kube_new(struct kubeconfig *kc, char *err, size_t errlen);

/* Cancel all outstanding asynchronous calls and watches (without calling their
 * callbacks) and free everything. Not from inside a kube callback. */
void kube_free(struct kube *k);

const struct kubeconfig *kube_config(const struct kube *k);
/* The namespace chosen by -n / the context / "default". */
const char *kube_namespace(const struct kube *k);

/* ---- blocking calls (CLI) ----
 * Each returns 0 on success with *out (when out is not NULL) set to the parsed
 * response, owned by the caller (cJSON_Delete); or -1 with *e filled.
 * Connection timeout 5 s, whole call 30 s. */

int kube_get(struct kube *k, const struct kube_ref *r, cJSON **out, struct kube_err *e);
/* label_selector may be NULL ("app=web,tier!=db" otherwise). */
int kube_list(struct kube *k, const struct kube_ref *r, const char *label_selector, cJSON **out,
              struct kube_err *e);
/* POST obj to the collection r (r->name is ignored). */
int kube_create(struct kube *k, const struct kube_ref *r, const cJSON *obj, cJSON **out,
                struct kube_err *e);
/* PUT obj (which carries metadata.resourceVersion: a stale one gives 409). */
int kube_replace(struct kube *k, const struct kube_ref *r, const cJSON *obj, cJSON **out,
                 struct kube_err *e);
/* PATCH with the patch document text `patch` of the given type. */
int kube_patch(struct kube *k, const struct kube_ref *r, enum kube_patch_type type,
               const char *patch, cJSON **out, struct kube_err *e);
/* DELETE; propagation is NULL or "Foreground", "Background", "Orphan". */
int kube_delete(struct kube *k, const struct kube_ref *r, const char *propagation,
                struct kube_err *e);

/* Read-modify-write with optimistic concurrency: GET r, call mutate(obj) to
 * change it in place, PUT it; on 409 Conflict start again with a fresh GET, up
 * to 5 times. mutate returns 0 to write the object, 1 when nothing needs to
 * change (the call then succeeds without writing and *out is the object read),
 * -1 to give up (its err text becomes e->msg). */
typedef int (*kube_mutate_fn)(cJSON *obj, void *arg, char *err, size_t errlen);
int kube_update_retry(struct kube *k, const struct kube_ref *r, kube_mutate_fn mutate, void *arg,
                      cJSON **out, struct kube_err *e);

/* Any request: method "GET"/"POST"/..., verb for messages ("get", "scale"...),
 * query without '?' (or NULL), body and its content type (or NULL). */
int kube_request(struct kube *k, const char *method, const char *verb, const struct kube_ref *r,
                 const char *query, const char *content_type, const char *body, cJSON **out,
                 struct kube_err *e);

/* A watch event. type is "ADDED", "MODIFIED", "DELETED" with obj the object
 * (borrowed: valid during the call), "RESYNC" when the resourceVersion was too
 * old (410 Gone) and the watch restarts from now, replaying current objects as
 * ADDED, or "ERROR" with e set (the watch goes on retrying; obj may be a
 * Status). Return nonzero to stop the watch. */
typedef int (*kube_event_fn)(const char *type, cJSON *obj, const struct kube_err *e, void *arg);

/* Blocking watch of the collection r (r->name set: that one object). Starts
 * at resource_version (NULL: now, listing current objects as ADDED), and when
 * the server ends the stream reconnects from the last resourceVersion seen.
 * Returns 0 when the callback asked to stop, -1 with *e on an error (the
 * blocking watch does not retry errors; the CLI decides). */
int kube_watch(struct kube *k, const struct kube_ref *r, const char *label_selector,
               const char *resource_version, kube_event_fn cb, void *arg, struct kube_err *e);

/* ---- asynchronous calls (agent, inside a libevent loop) ---- */

/* Drive async calls from base. Call once; returns 0 or -1 (err). */
int kube_attach(struct kube *k, struct event_base *base, char *err, size_t errlen);

/* Completion of an async call: obj is the response (borrowed, freed after the
 * callback returns) and e NULL on success; on failure obj is NULL and e set. */
typedef void (*kube_done_fn)(cJSON *obj, const struct kube_err *e, void *arg);
struct kube_call;

/* Start a request; the arguments are as for kube_request and copied. Returns a
 * handle valid until the callback has run (or kube_call_cancel). The callback
 * always runs later from the loop, never inside this call, also when the
 * request cannot even start (e.g. the exec plugin failed). NULL only when k
 * is not attached (programming error; nothing is called). An exec plugin, if
 * one must be (re)run, runs synchronously here. */
struct kube_call *kube_async_request(struct kube *k, const char *method, const char *verb,
                                     const struct kube_ref *r, const char *query,
                                     const char *content_type, const char *body, kube_done_fn cb,
                                     void *arg);
struct kube_call *kube_async_get(struct kube *k, const struct kube_ref *r, kube_done_fn cb,
                                 void *arg);
struct kube_call *kube_async_patch(struct kube *k, const struct kube_ref *r,
                                   enum kube_patch_type type, const char *patch, kube_done_fn cb,
                                   void *arg);
struct kube_call *kube_async_create(struct kube *k, const struct kube_ref *r, const cJSON *obj,
                                    kube_done_fn cb, void *arg);
struct kube_call *kube_async_delete(struct kube *k, const struct kube_ref *r,
                                    const char *propagation, kube_done_fn cb, void *arg);
/* The callback of c will not be called; c is invalid afterwards. */
void kube_call_cancel(struct kube_call *c);

/* Watch in the event loop, as kube_watch, but errors are reported as "ERROR"
 * events and retried with backoff (1 s doubling to 30 s) and stream ends are
 * reconnected. Returns a handle, or NULL (not attached). The callback returning
 * nonzero stops it like kube_watch_stop. */
struct kube_watch;
struct kube_watch *kube_async_watch(struct kube *k, const struct kube_ref *r,
                                    const char *label_selector, const char *resource_version,
                                    kube_event_fn cb, void *arg);
/* Stop and free; safe inside the watch's own callback. */
void kube_watch_stop(struct kube_watch *w);

/* ---- for code that opens its own TLS connection to the API server
 * (the port-forward WebSocket) ---- */

/* The server URL, e.g. "https://10.0.0.1:6443" (may have a path prefix). */
const char *kube_server_url(const struct kube *k);
/* Where to connect: host (no brackets for IPv6) and port of the server URL. */
const char *kube_server_host(const struct kube *k);
int kube_server_port(const struct kube *k);
/* The name to send as SNI and verify in the certificate: tls-server-name if
 * set, else the server host. */
const char *kube_tls_name(const struct kube *k);
/* CA bundle PEM from the kubeconfig, or NULL (system CAs). */
const char *kube_ca_pem(const struct kube *k);
/* The proxy every connection to the API server goes through, decided once in
 * kube_new() by netproxy_choose() (the kubeconfig's proxy-url, else
 * $HTTPS_PROXY/$https_proxy unless $NO_PROXY/$no_proxy matches the server or
 * it is loopback): a normalized URL "scheme://[userinfo@]host:port", or NULL
 * for a direct connection. libcurl gets exactly this (and does not read the
 * environment itself); pass it as pf_target.proxy_url. kube_proxy_source()
 * says where it came from ("proxy-url", "$HTTPS_PROXY", ...), NULL if none. */
const char *kube_proxy(const struct kube *k);
const char *kube_proxy_source(const struct kube *k);

/* The current credentials, refreshed if needed (exec plugin expired or
 * invalidated, token file changed). *token: bearer token or NULL; *cert_pem /
 * *key_pem: client certificate or NULL. All borrowed, valid until the next
 * call into k. Returns 0 or -1 with err (e.g. the exec plugin failed). */
int kube_credentials(struct kube *k, const char **token, const char **cert_pem,
                     const char **key_pem, char *err, size_t errlen);
/* Tell k that the server answered 401 to the current credentials: the exec
 * plugin runs again and the token file is re-read on the next use. */
void kube_credentials_rejected(struct kube *k);

/* A TLS client context with the kubeconfig's CA (or the system CAs), peer
 * verification (unless insecure-skip-tls-verify) and the current client
 * certificate. Returns NULL with err. Caller frees with SSL_CTX_free. */
SSL_CTX *kube_ssl_ctx_new(struct kube *k, char *err, size_t errlen);
/* Prepare a new SSL from that context: SNI and host name (or IP) checking
 * against kube_tls_name(). Returns 0 or -1. */
int kube_ssl_prepare(const struct kube *k, SSL *ssl);

#endif
