/* kube_watch.c: watches, blocking (kube_watch, for the CLI) and in the event
 * loop (kube_async_watch, for the agent). A watch is a request whose write
 * callback splits the stream into lines, each a JSON watch event; when the
 * server ends the stream it reconnects from the last resourceVersion seen,
 * and after a 410 it starts again from now ("RESYNC"). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kube_internal.h"
#include "log.h"

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
    kube_set_err(&e, 0, "", "%s: the API server sent a watch event that is not understood: %.100s",
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
      kube_set_err(&e, cJSON_IsNumber(code) ? code->valueint : 0, "", "%s: %s", w->what,
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
    w->rv = kube_xstrdup(rv);
  }
  w->got_event = 1;
  if (strcmp(type, "BOOKMARK") != 0 && w->cb(type, obj, NULL, w->arg)) w->stopped = 1;
  cJSON_Delete(j);
}

size_t kube_on_watch_data(char *d, size_t sz, size_t n, void *ud) {
  struct req *q = ud;
  struct kube_watch *w = q->watch;
  long status = 0;
  curl_easy_getinfo(q->easy, CURLINFO_RESPONSE_CODE, &status);
  if (status != 200) return kube_on_body(d, sz, n, ud); /* an error Status: keep for kube_req_finish() */
  if (w->stopped) return 0;
  kube_buf_add(&q->resp, d, sz * n);
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

static struct req *kube_watch_req(struct kube_watch *w) {
  struct req *q = kube_xcalloc(1, sizeof *q);
  q->k = w->k;
  q->kind = REQ_WATCH;
  q->method = kube_xstrdup("GET");
  q->path = kube_xstrdup(w->path);
  struct buf b = {0};
  kube_buf_add(&b, "watch=1&allowWatchBookmarks=true", 32);
  kube_add_param(&b, "labelSelector", w->selector);
  kube_add_param(&b, "fieldSelector", w->fields);
  kube_add_param(&b, "resourceVersion", w->rv);
  q->query = b.p;
  snprintf(q->what, sizeof q->what, "%s", w->what);
  snprintf(q->act, sizeof q->act, "%s", w->act);
  snprintf(q->scope, sizeof q->scope, "%s", w->scope);
  q->watch = w;
  return q;
}

static struct kube_watch *kube_watch_new(struct kube *k, const struct kube_ref *r, const char *sel,
                                    const char *rv, kube_event_fn cb, void *arg) {
  struct kube_watch *w = kube_xcalloc(1, sizeof *w);
  w->k = k;
  struct kube_ref coll = *r;
  coll.name = NULL; /* one object: its collection with a field selector on the name */
  w->path = kube_ref_path(&coll);
  if (r->name && *r->name) {
    size_t n = strlen(r->name) + 16;
    w->fields = malloc(n);
    if (!w->fields) abort();
    snprintf(w->fields, n, "metadata.name=%s", r->name);
  }
  w->selector = kube_xstrdup(sel && *sel ? sel : NULL);
  w->rv = kube_xstrdup(rv && *rv ? rv : NULL);
  kube_ref_describe("watch", r, w->what, sizeof w->what, w->act, sizeof w->act, w->scope,
               sizeof w->scope);
  w->cb = cb;
  w->arg = arg;
  w->backoff_s = 1;
  return w;
}

void kube_watch_free(struct kube_watch *w) {
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
    kube_set_err(e, 0, "", "watch: no resource given");
    return -1;
  }
  struct kube_watch *w = kube_watch_new(k, r, label_selector, resource_version, cb, arg);
  CURL *easy = curl_easy_init();
  int rc = -1;
  if (!easy) {
    kube_set_err(e, 0, "", "%s: cannot create a curl handle", w->what);
    goto out;
  }
  for (;;) {
    struct req *q = kube_watch_req(w);
    q->easy = easy;
    q->kind = REQ_WATCH;
    if (kube_req_setup(q, e) < 0) {
      q->easy = NULL;
      kube_req_free(q);
      goto out;
    }
    CURLcode cc = curl_easy_perform(easy);
    long status = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
    if (w->stopped) {
      q->easy = NULL;
      kube_req_free(q);
      rc = 0;
      goto out;
    }
    int again = 0;
    if (cc == CURLE_OK && status == 200) {
      again = 1; /* the server closed the stream: go on from the last rv */
      w->auth_retried = 0;
      if (!w->got_event) sleep(1); /* an empty stream: do not spin */
      w->got_event = 0;
    } else if (cc == CURLE_OK && status == 401 && !w->auth_retried && kube_refreshable(k)) {
      kube_rejected(k, q);
      w->auth_retried = 1;
      again = 1;
    } else if (cc == CURLE_OK && status == 410) {
      w->gone = 1;
    } else {
      kube_req_finish(q, cc, NULL, e);
    }
    if (w->gone) {
      w->gone = 0;
      free(w->rv);
      w->rv = NULL;
      again = 1;
      if (cb("RESYNC", NULL, NULL, arg)) w->stopped = 1;
    }
    q->easy = NULL;
    kube_req_free(q);
    if (w->stopped) {
      rc = 0;
      goto out;
    }
    if (!again) goto out;
  }
out:
  if (easy) curl_easy_cleanup(easy);
  kube_watch_free(w);
  return rc;
}

static void watch_restart(struct kube_watch *w, int delay_s);

static void on_watch_retry(evutil_socket_t fd, short what, void *arg) {
  struct kube_watch *w = arg;
  struct kube_err e;
  struct req *q = kube_watch_req(w);
  if (kube_start_async(w->k, q, &e) < 0) {
    kube_req_free(q);
    emit_error(w, &e, NULL);
    if (w->stopped) {
      kube_watch_free(w);
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
void kube_watch_ended(struct kube_watch *w, struct req *q, CURLcode cc) {
  struct kube *k = w->k;
  long status = 0;
  curl_easy_getinfo(q->easy, CURLINFO_RESPONSE_CODE, &status);
  int delay = 0;
  if (!w->stopped) {
    if (cc == CURLE_OK && status == 200) {
      delay = w->got_event ? 0 : 1; /* normal end of stream: reconnect at once */
      w->auth_retried = 0;
    } else if (cc == CURLE_OK && status == 401 && kube_refreshable(k) && !w->auth_retried) {
      kube_rejected(k, q);
      w->auth_retried = 1;
    } else if (cc == CURLE_OK && status == 410) {
      w->gone = 1;
    } else {
      struct kube_err e;
      kube_req_finish(q, cc, NULL, &e);
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
  kube_req_free(q);
  w->cur = NULL;
  if (w->stopped) {
    kube_watch_free(w);
    return;
  }
  watch_restart(w, delay);
}

struct kube_watch *kube_async_watch(struct kube *k, const struct kube_ref *r,
                                    const char *label_selector, const char *resource_version,
                                    kube_event_fn cb, void *arg) {
  if (!k->multi || !r || !r->resource || !*r->resource) {
    log_err("kube: async watch %s", k->multi ? "without a resource" : "before kube_attach");
    return NULL;
  }
  struct kube_watch *w = kube_watch_new(k, r, label_selector, resource_version, cb, arg);
  w->next = k->watches;
  if (k->watches) k->watches->prev = w;
  k->watches = w;
  w->retry_ev = evtimer_new(k->base, on_watch_retry, w);
  if (!w->retry_ev) {
    kube_watch_free(w);
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
     * kube_watch_ended or on_watch_retry the timer is not pending, and they free
     * the watch when the callback returns.) */
    kube_watch_free(w);
  }
}

