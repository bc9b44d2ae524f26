/* lifecycle.c: the lease (when to put the cluster back) and the restore thread.
 *
 * One state machine, evaluated on every developer change, on a 1 s tick (which
 * also notices departures nobody reported) and when a deadline timer fires:
 *
 *   WAITING --developer registers--> CONNECTED --last one lost--> WAITING (lease)
 *      |                                 |
 *      |                                 +--last one left cleanly--> GRACE
 *      |                                                          (grace)
 *   deadline (lease or grace) --> RESTORING --ok--> RESTORED (agent stops)
 *                                     |  ^
 *                                  failed |
 *                                     v  | deadline (back-off)
 *                                    RETRY
 *
 * The restore thread gets a copy of everything it needs in struct restore_job
 * and touches nothing else; it reports by writing one byte to a pipe the loop
 * watches, and the loop joins it before reading the result. */
#include "lifecycle.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/event.h>

#include "kube.h"
#include "kubeconfig.h"
#include "log.h"
#include "route_table.h"
#include "takeover.h"

#define RETRY_FIRST_S 5
#define LOST_MAX 16 /* developers remembered as lost (their CLI may come back) */
#define RETRY_MAX_S 60
/* How common/tunnel.c words the end of a tunnel whose peer sent GOAWAY. */
#define PEER_GOAWAY_PREFIX "peer closed the tunnel"

enum lc_state {
  LC_WAITING,   /* no developer connected; restore at the deadline (start/loss + lease) */
  LC_GRACE,     /* the last developer left cleanly; restore at the deadline (+ grace) */
  LC_CONNECTED, /* at least one developer connected; no deadline */
  LC_RESTORING, /* the restore thread is running */
  LC_RETRY,     /* the last restore failed; the next one starts at the deadline */
  LC_RESTORED,  /* restore succeeded; the agent is stopping */
};
static const char *const state_names[] = {"waiting",   "grace", "connected",
                                          "restoring", "retry", "restored"};

/* Everything the restore thread reads and writes. */
struct restore_job {
  lifecycle_restore_fn fn;
  char ns[256];
  char service[256];
  int notify_fd;                /* write end of the pipe: one byte when done */
  int rc;                       /* result of fn */
  struct takeover_report rep;
  char err[1024];
  double seconds;               /* how long fn took */
};

/* A developer whose tunnels were all lost without a GOAWAY: their CLI may be
 * reconnecting, so they keep the whole lease even if others leave cleanly. */
struct lost_dev {
  char key[64];
  double at;
};

struct lifecycle {
  struct event_base *base;
  const struct route_table *routes;
  char ns[256], service[256];
  long lease_s, grace_s;
  void (*done)(void *arg);
  void *done_arg;

  enum lc_state state;
  double deadline;              /* monotonic seconds; WAITING, GRACE, RETRY */
  size_t developers;            /* route keys at the last evaluation */
  int clean_leave;              /* the last departure was the developer's GOAWAY */
  char last_key[64];            /* who left last */
  char last_why[256];           /* how their tunnel ended */
  struct lost_dev lost[LOST_MAX];
  size_t nlost;
  char restore_why[128];        /* what started the restore */
  long retry_s;                 /* current back-off */
  unsigned long restores_ok, restores_failed;
  char last_error[1024];        /* of the last failed restore */

  struct event *tick;           /* 1 s, persistent */
  struct event *deadline_ev;    /* one-shot at the deadline */
  struct event *notify_ev;      /* read end of the pipe */
  int pipefd[2];
  pthread_t thread;
  int thread_running;
  struct restore_job job;
};

static double mono_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The default restore: a fresh blocking client from the pod's service account
 * (the token file is read now, so a rotated token is used), then
 * takeover_restore(). Runs in the restore thread. */
static int incluster_restore(const char *ns, const char *service, struct takeover_report *rep,
                             char *err, size_t errlen) {
  struct kubeconfig *kc = NULL;
  if (kubeconfig_load_incluster(ns, &kc, err, errlen) < 0) return -1;
  struct kube *k = kube_new(kc, err, errlen); /* takes kc, also on failure */
  if (!k) return -1;
  int r = takeover_restore(k, ns, service, rep, err, errlen);
  kube_free(k);
  return r;
}

static void *restore_main(void *arg) {
  struct restore_job *j = arg;
  double t0 = mono_now();
  memset(&j->rep, 0, sizeof j->rep);
  j->err[0] = 0;
  j->rc = j->fn(j->ns, j->service, &j->rep, j->err, sizeof j->err);
  if (j->rc < 0 && !j->err[0]) snprintf(j->err, sizeof j->err, "restore failed (no reason given)");
  j->seconds = mono_now() - t0;
  char one = 1;
  while (write(j->notify_fd, &one, 1) < 0 && errno == EINTR) {
  }
  return NULL;
}

static void arm_deadline(struct lifecycle *lc, double when) {
  lc->deadline = when;
  double left = when - mono_now();
  if (left < 0) left = 0;
  struct timeval tv = {(time_t)left, (suseconds_t)((left - (double)(time_t)left) * 1e6)};
  evtimer_add(lc->deadline_ev, &tv);
}

static void start_restore(struct lifecycle *lc) {
  lc->state = LC_RESTORING;
  evtimer_del(lc->deadline_ev);
  log_info("lease: restoring service %s/%s (%s)", lc->ns, lc->service, lc->restore_why);
  /* The thread starts with every signal blocked, so SIGTERM/SIGINT keep going
   * to the loop's thread (libevent's handlers) and never interrupt its calls. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int rc = pthread_create(&lc->thread, NULL, restore_main, &lc->job);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) {
    errno = rc;
    /* as a failed restore: try again after the back-off */
    lc->restores_failed++;
    snprintf(lc->last_error, sizeof lc->last_error, "cannot start the restore thread: %s",
             strerror(errno));
    lc->retry_s = lc->retry_s ? (lc->retry_s * 2 > RETRY_MAX_S ? RETRY_MAX_S : lc->retry_s * 2)
                              : RETRY_FIRST_S;
    log_err("lease: %s; trying again in %ld s", lc->last_error, lc->retry_s);
    lc->state = LC_RETRY;
    arm_deadline(lc, mono_now() + (double)lc->retry_s);
    return;
  }
  lc->thread_running = 1;
}

/* Drop lost developers who are back or whose lease is over. */
static void prune_lost(struct lifecycle *lc, double now) {
  size_t j = 0;
  for (size_t i = 0; i < lc->nlost; i++)
    if (route_table_conns(lc->routes, lc->lost[i].key) == 0 &&
        lc->lost[i].at + (double)lc->lease_s > now)
      lc->lost[j++] = lc->lost[i];
  lc->nlost = j;
}

static void remember_lost(struct lifecycle *lc, const char *key, double now) {
  size_t i, oldest = 0;
  for (i = 0; i < lc->nlost; i++) {
    if (!strcmp(lc->lost[i].key, key)) break;
    if (lc->lost[i].at < lc->lost[oldest].at) oldest = i;
  }
  if (i == lc->nlost) {
    if (lc->nlost < LOST_MAX)
      lc->nlost++;
    else
      i = oldest;
  }
  snprintf(lc->lost[i].key, sizeof lc->lost[i].key, "%s", key);
  lc->lost[i].at = now;
}

static void evaluate(struct lifecycle *lc) {
  double now = mono_now();
  size_t n = route_table_keys(lc->routes);
  prune_lost(lc, now); /* a lost developer who is back is not lost any more */
  switch (lc->state) {
  case LC_RESTORING:
  case LC_RESTORED:
    if (n > lc->developers)
      log_info("lease: a developer connected while the restore runs; the restore goes on "
               "(the agent stops when it is done)");
    lc->developers = n;
    return;
  case LC_RETRY:
    lc->developers = n;
    if (now >= lc->deadline) {
      snprintf(lc->restore_why, sizeof lc->restore_why, "retry after a failed restore");
      start_restore(lc);
    }
    return;
  case LC_WAITING:
  case LC_GRACE:
  case LC_CONNECTED:
    break;
  }
  if (n > 0) {
    if (lc->state != LC_CONNECTED) {
      log_info("lease: %zu developer(s) connected; %s", n,
               lc->state == LC_GRACE ? "restore called off" : "lease stopped");
      lc->state = LC_CONNECTED;
      evtimer_del(lc->deadline_ev);
    } else if (n != lc->developers) {
      log_info("lease: %zu developer(s) connected", n);
    }
    lc->developers = n;
    lc->clean_leave = 0;
    return;
  }
  lc->developers = 0;
  if (lc->state == LC_CONNECTED) {
    const char *who = lc->last_key[0] ? lc->last_key : "?";
    const struct lost_dev *ld = NULL; /* the lost developer whose lease ends last */
    for (size_t i = 0; i < lc->nlost; i++)
      if (!ld || lc->lost[i].at > ld->at) ld = &lc->lost[i];
    long g = lc->grace_s < lc->lease_s ? lc->grace_s : lc->lease_s;
    if (lc->clean_leave && ld && ld->at + (double)lc->lease_s > now + (double)g) {
      lc->state = LC_WAITING;
      arm_deadline(lc, ld->at + (double)lc->lease_s);
      log_info("lease: the last developer (%s) left (%s), but %s's tunnel was lost %.0f s ago "
               "and may come back: restoring %s/%s in %.0f s unless one connects",
               who, lc->last_why[0] ? lc->last_why : "GOAWAY", ld->key, now - ld->at, lc->ns,
               lc->service, lc->deadline - now);
    } else if (lc->clean_leave) {
      lc->state = LC_GRACE;
      arm_deadline(lc, now + (double)g);
      log_info("lease: the last developer (%s) left (%s); restoring %s/%s in %ld s unless one "
               "connects",
               who, lc->last_why[0] ? lc->last_why : "GOAWAY", lc->ns, lc->service, g);
    } else {
      lc->state = LC_WAITING;
      arm_deadline(lc, now + (double)lc->lease_s);
      log_info("lease: no developer connected (the last one, %s, was lost: %s); restoring %s/%s "
               "in %ld s unless one connects",
               who, lc->last_why[0] ? lc->last_why : "tunnel gone", lc->ns, lc->service,
               lc->lease_s);
    }
    lc->clean_leave = 0;
  }
  if (now >= lc->deadline) {
    if (lc->state == LC_GRACE)
      snprintf(lc->restore_why, sizeof lc->restore_why,
               "the last developer left and none came back within %ld s", lc->grace_s);
    else
      snprintf(lc->restore_why, sizeof lc->restore_why,
               "lease expired: no developer connected for %ld s", lc->lease_s);
    start_restore(lc);
  }
}

static void tick_cb(evutil_socket_t fd, short what, void *arg) { evaluate(arg); }
/* libevent's timer may fire a little before our clock reaches the deadline
 * (its time is cached and coarser): then arm it again for the rest. */
static void deadline_cb(evutil_socket_t fd, short what, void *arg) {
  struct lifecycle *lc = arg;
  evaluate(lc);
  if ((lc->state == LC_WAITING || lc->state == LC_GRACE || lc->state == LC_RETRY) &&
      !evtimer_pending(lc->deadline_ev, NULL))
    arm_deadline(lc, lc->deadline);
}

/* The restore thread finished: join it, then act on its result. */
static void notify_cb(evutil_socket_t fd, short what, void *arg) {
  struct lifecycle *lc = arg;
  char buf[16];
  while (read(fd, buf, sizeof buf) > 0) {
  }
  if (!lc->thread_running) return;
  pthread_join(lc->thread, NULL);
  lc->thread_running = 0;
  struct restore_job *j = &lc->job;
  if (j->rc == 0) {
    lc->restores_ok++;
    lc->state = LC_RESTORED;
    char *save = NULL;
    for (char *line = strtok_r(j->rep.text, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
      log_info("restore: %s", line);
    if (j->rep.conflicts)
      log_warn("restore: %d conflict(s): changes made by someone else were left alone (see "
               "above)",
               j->rep.conflicts);
    log_info("lease: service %s/%s restored in %.2f s (%d object(s) changed, %d conflict(s)); "
             "the agent stops",
             lc->ns, lc->service, j->seconds, j->rep.changed, j->rep.conflicts);
    if (lc->done) lc->done(lc->done_arg);
    return;
  }
  lc->restores_failed++;
  snprintf(lc->last_error, sizeof lc->last_error, "%s", j->err);
  lc->retry_s = lc->retry_s ? (lc->retry_s * 2 > RETRY_MAX_S ? RETRY_MAX_S : lc->retry_s * 2)
                            : RETRY_FIRST_S;
  log_err("lease: restore of %s/%s failed after %.2f s: %s; trying again in %ld s", lc->ns,
          lc->service, j->seconds, j->err, lc->retry_s);
  lc->state = LC_RETRY;
  arm_deadline(lc, mono_now() + (double)lc->retry_s);
}

struct lifecycle *lifecycle_new(struct event_base *base, const struct route_table *routes,
                                const struct lifecycle_config *cfg, void (*done)(void *arg),
                                void *arg, char *err, size_t errlen) {
  if (!cfg->service || !*cfg->service) {
    snprintf(err, errlen, "no service named");
    return NULL;
  }
  char ns[256];
  snprintf(ns, sizeof ns, "%s", cfg->namespace ? cfg->namespace : "");
  if (!cfg->restore) {
    /* Fail now, not when the lease runs out, if the pod has no usable
     * service account; and learn the pod's namespace if none was given. */
    struct kubeconfig *kc = NULL;
    char why[768];
    if (kubeconfig_load_incluster(ns[0] ? ns : NULL, &kc, why, sizeof why) < 0) {
      snprintf(err, errlen, "in-cluster Kubernetes configuration: %s", why);
      return NULL;
    }
    snprintf(ns, sizeof ns, "%s", kc->namespace ? kc->namespace : "default");
    log_info("lease: restores will use the pod's service account (API server %s, namespace %s)",
             kc->server ? kc->server : "?", ns);
    kubeconfig_free(kc);
    /* libcurl's global init is not for a second thread to do while this one
     * runs OpenSSL: do it here, once, before any restore thread exists. */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
      snprintf(err, errlen, "cannot initialise libcurl");
      return NULL;
    }
  } else if (!ns[0]) {
    snprintf(ns, sizeof ns, "default");
  }

  struct lifecycle *lc = calloc(1, sizeof *lc);
  if (!lc) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  lc->pipefd[0] = lc->pipefd[1] = -1;
  lc->base = base;
  lc->routes = routes;
  snprintf(lc->ns, sizeof lc->ns, "%s", ns);
  snprintf(lc->service, sizeof lc->service, "%s", cfg->service);
  lc->lease_s = cfg->lease_seconds;
  lc->grace_s = cfg->grace_seconds;
  lc->done = done;
  lc->done_arg = arg;
  lc->job.fn = cfg->restore ? cfg->restore : incluster_restore;
  snprintf(lc->job.ns, sizeof lc->job.ns, "%s", lc->ns);
  snprintf(lc->job.service, sizeof lc->job.service, "%s", lc->service);

  if (pipe2(lc->pipefd, O_CLOEXEC | O_NONBLOCK) < 0) {
    snprintf(err, errlen, "pipe: %s", strerror(errno));
    lifecycle_free(lc);
    return NULL;
  }
  lc->job.notify_fd = lc->pipefd[1];
  lc->tick = event_new(base, -1, EV_PERSIST, tick_cb, lc);
  lc->deadline_ev = evtimer_new(base, deadline_cb, lc);
  lc->notify_ev = event_new(base, lc->pipefd[0], EV_READ | EV_PERSIST, notify_cb, lc);
  if (!lc->tick || !lc->deadline_ev || !lc->notify_ev) {
    snprintf(err, errlen, "out of memory");
    lifecycle_free(lc);
    return NULL;
  }
  struct timeval sec = {1, 0};
  event_add(lc->tick, &sec);
  event_add(lc->notify_ev, NULL);

  lc->state = LC_WAITING;
  arm_deadline(lc, mono_now() + (double)lc->lease_s);
  log_info("lease: looking after service %s/%s: restore when no developer has been connected "
           "for %ld s, or %ld s after the last one leaves; none connected yet",
           lc->ns, lc->service, lc->lease_s, lc->grace_s < lc->lease_s ? lc->grace_s : lc->lease_s);
  return lc;
}

void lifecycle_tunnel_closed(struct lifecycle *lc, const char *key, const char *err) {
  if (!lc) return;
  int clean = err && !strncmp(err, PEER_GOAWAY_PREFIX, strlen(PEER_GOAWAY_PREFIX));
  if (key && route_table_conns(lc->routes, key) == 0) {
    if (!clean) {
      remember_lost(lc, key, mono_now());
    } else { /* came back and left for good: not waited for any more */
      for (size_t i = 0; i < lc->nlost; i++)
        if (!strcmp(lc->lost[i].key, key)) lc->lost[i] = lc->lost[--lc->nlost];
    }
  }
  if (route_table_keys(lc->routes) == 0) {
    snprintf(lc->last_key, sizeof lc->last_key, "%s", key ? key : "");
    snprintf(lc->last_why, sizeof lc->last_why, "%s", err ? err : "closed");
    lc->clean_leave = clean;
  }
  evaluate(lc);
}

void lifecycle_check(struct lifecycle *lc) {
  if (lc) evaluate(lc);
}

static double remaining(const struct lifecycle *lc) {
  switch (lc->state) {
  case LC_CONNECTED: return (double)lc->lease_s;
  case LC_WAITING:
  case LC_GRACE:
  case LC_RETRY: {
    double left = lc->deadline - mono_now();
    return left > 0 ? left : 0;
  }
  case LC_RESTORING:
  case LC_RESTORED: break;
  }
  return 0;
}

void lifecycle_json(const struct lifecycle *lc, struct evbuffer *b) {
  if (!lc) return;
  cJSON *o = cJSON_CreateObject();
  if (!o) return;
  cJSON_AddStringToObject(o, "namespace", lc->ns);
  cJSON_AddStringToObject(o, "service", lc->service);
  cJSON_AddStringToObject(o, "state", state_names[lc->state]);
  cJSON_AddNumberToObject(o, "developers", (double)route_table_keys(lc->routes));
  cJSON_AddNumberToObject(o, "lease_seconds", (double)lc->lease_s);
  cJSON_AddNumberToObject(o, "grace_seconds", (double)lc->grace_s);
  cJSON_AddNumberToObject(o, "seconds_remaining", (double)(long)(remaining(lc) * 10) / 10);
  cJSON_AddNumberToObject(o, "restores_failed", (double)lc->restores_failed);
  if (lc->last_error[0])
    cJSON_AddStringToObject(o, "last_error", lc->last_error);
  else
    cJSON_AddNullToObject(o, "last_error");
  char *s = cJSON_PrintUnformatted(o);
  if (s) evbuffer_add_printf(b, ",\"lifecycle\":%s", s);
  free(s);
  cJSON_Delete(o);
}

void lifecycle_metrics(const struct lifecycle *lc, const struct route_table *routes,
                       struct evbuffer *b) {
  evbuffer_add_printf(b,
                      "# HELP kbridge_developers Developers (route keys) connected.\n"
                      "# TYPE kbridge_developers gauge\nkbridge_developers %zu\n",
                      route_table_keys(routes));
  if (!lc) return;
  evbuffer_add_printf(
      b,
      "# HELP kbridge_lease_seconds_remaining Seconds until the agent restores the Service "
      "unless a developer connects (the whole lease while one is connected, 0 while "
      "restoring).\n"
      "# TYPE kbridge_lease_seconds_remaining gauge\nkbridge_lease_seconds_remaining %.1f\n"
      "# HELP kbridge_restores_total Restores run by the agent, by result.\n"
      "# TYPE kbridge_restores_total counter\n"
      "kbridge_restores_total{result=\"ok\"} %lu\nkbridge_restores_total{result=\"failed\"} %lu\n",
      remaining(lc), lc->restores_ok, lc->restores_failed);
}

void lifecycle_free(struct lifecycle *lc) {
  if (!lc) return;
  if (lc->thread_running) {
    log_info("lease: waiting for the running restore of %s/%s to finish", lc->ns, lc->service);
    pthread_join(lc->thread, NULL);
    lc->thread_running = 0;
    if (lc->job.rc == 0)
      log_info("lease: service %s/%s restored in %.2f s", lc->ns, lc->service, lc->job.seconds);
    else
      log_err("lease: restore of %s/%s failed: %s", lc->ns, lc->service, lc->job.err);
  }
  if (lc->tick) event_free(lc->tick);
  if (lc->deadline_ev) event_free(lc->deadline_ev);
  if (lc->notify_ev) event_free(lc->notify_ev);
  if (lc->pipefd[0] >= 0) close(lc->pipefd[0]);
  if (lc->pipefd[1] >= 0) close(lc->pipefd[1]);
  free(lc);
}
