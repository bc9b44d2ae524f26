/* kube_resources.c: the verbs of the API client (get, list, create, replace,
 * patch, delete, the read-modify-write update_retry), blocking for the CLI
 * and, for the agent, their kube_async_* forms. Each is a request built by
 * kube_transport.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kube_internal.h"
#include "log.h"

#define UPDATE_RETRIES 5

int kube_request(struct kube *k, const char *method, const char *verb, const struct kube_ref *r,
                 const char *query, const char *content_type, const char *body, cJSON **out,
                 struct kube_err *e) {
  if (out) *out = NULL;
  if (!r || !r->resource || !*r->resource) {
    kube_set_err(e, 0, "", "%s: no resource given", verb);
    return -1;
  }
  struct req *q = kube_req_new(k, REQ_BLOCKING, method, verb, r, query, content_type, body, sizeof *q);
  int rc = kube_run_blocking(k, q, out, e);
  kube_req_free(q);
  return rc;
}

int kube_get(struct kube *k, const struct kube_ref *r, cJSON **out, struct kube_err *e) {
  return kube_request(k, "GET", "get", r, NULL, NULL, NULL, out, e);
}

static char *selector_query(const char *sel, const char *extra) {
  struct buf b = {0};
  kube_add_param(&b, "labelSelector", sel);
  if (extra && *extra) {
    if (b.len) kube_buf_add(&b, "&", 1);
    kube_buf_add(&b, extra, strlen(extra));
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
    kube_set_err(e, 0, "", "%s: cannot serialize the object", verb);
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
    kube_set_err(e, 0, "", "create: no resource given");
    return -1;
  }
  struct kube_ref coll = *r;
  const char *name =
      cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(obj, "metadata"), "name"));
  coll.name = NULL;
  /* The message names the object being created; the URL is the collection. */
  char *body = cJSON_PrintUnformatted(obj);
  if (!body) {
    kube_set_err(e, 0, "", "create %s: cannot serialize the object", r->resource);
    return -1;
  }
  struct req *q = kube_req_new(k, REQ_BLOCKING, "POST", "create", &coll, NULL, "application/json", body,
                          sizeof *q);
  free(body);
  if (name) {
    struct kube_ref named = coll;
    named.name = name;
    kube_ref_what("create", &named, q->what, sizeof q->what);
  }
  int rc = kube_run_blocking(k, q, out, e);
  kube_req_free(q);
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
        kube_ref_what("update", r, what, sizeof what);
        kube_set_err(e, 0, "", "%s: %s", what, merr[0] ? merr : "the change could not be applied");
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


/* ---- asynchronous forms ---- */

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

