/* kube_async.c: the API client inside a libevent loop. Each async request
 * has its own easy handle inside one curl multi handle that libevent drives
 * through CURLMOPT_SOCKETFUNCTION/TIMERFUNCTION. Cancelled requests and
 * stopped watches are only flagged; a "reaper" event removes them from the
 * multi handle outside curl's callbacks. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kube_internal.h"
#include "log.h"

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
    sc = kube_xcalloc(1, sizeof *sc);
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
int kube_start_async(struct kube *k, struct req *q, struct kube_err *e) {
  if (!q->easy) q->easy = curl_easy_init();
  if (!q->easy) {
    kube_set_err(e, 0, "", "%s: cannot create a curl handle", q->what);
    return -1;
  }
  if (kube_req_setup(q, e) < 0) return -1;
  if (curl_multi_add_handle(k->multi, q->easy) != CURLM_OK) {
    kube_set_err(e, 0, "", "%s: cannot start the transfer", q->what);
    return -1;
  }
  active_add(k, q);
  return 0;
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
      kube_watch_ended(q->watch, q, cc);
      continue;
    }
    if (q->cancelled) {
      kube_req_free(q);
      continue;
    }
    long status = 0;
    curl_easy_getinfo(q->easy, CURLINFO_RESPONSE_CODE, &status);
    struct kube_err e;
    if (cc == CURLE_OK && status == 401 && !q->auth_retried && kube_refreshable(k)) {
      q->auth_retried = 1;
      kube_rejected(k, q);
      if (kube_start_async(k, q, &e) == 0) continue;
      q->done(NULL, &e, q->arg);
      kube_req_free(q);
      continue;
    }
    cJSON *obj = NULL;
    if (kube_req_finish(q, cc, &obj, &e) == 0)
      q->done(obj, NULL, q->arg);
    else
      q->done(NULL, &e, q->arg);
    cJSON_Delete(obj);
    kube_req_free(q);
  }
}

void kube_req_drop(struct req *q) {
  if (q->kind == REQ_WATCH) {
    struct kube_watch *w = q->watch;
    kube_req_free(q);
    kube_watch_free(w);
  } else {
    kube_req_free(q);
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
      kube_req_free(q);
      continue;
    }
    int dead = q->kind == REQ_WATCH ? q->watch->stopped : q->cancelled;
    if (!dead) continue;
    curl_multi_remove_handle(k->multi, q->easy);
    active_del(k, q);
    kube_req_drop(q);
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
      (struct kube_call *)kube_req_new(k, REQ_ASYNC, method, verb, r, query, content_type, body,
                                  sizeof(struct kube_call));
  struct req *q = &c->r;
  q->done = cb;
  q->arg = arg;
  struct kube_err e;
  if (kube_start_async(k, q, &e) < 0) {
    /* Report it like any failure, from the loop (never inside this call). */
    q->failure = malloc(sizeof e);
    if (!q->failure) abort();
    *q->failure = e;
    active_add(k, q);
    event_active(k->reaper, 0, 0);
  }
  return c;
}

void kube_call_cancel(struct kube_call *c) {
  if (!c) return;
  c->r.cancelled = 1;
  event_active(c->r.k->reaper, 0, 0);
}

