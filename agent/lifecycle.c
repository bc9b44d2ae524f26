/* lifecycle.c: the lease (when to put the cluster back) and the restore process.
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
 * The restore is a child process (kbridge-agent-restore, agent/restore_main.c)
 * started with posix_spawn: its stdout and stderr go to one non-blocking pipe
 * the loop reads and logs line by line; end of file on the pipe means it has
 * exited (or is about to), and it is then reaped with waitpid(WNOHANG), polled
 * on a short timer if it has not quite exited yet. Exit status 0 is success;
 * anything else is a failure whose reason is its last output line. */
#include "lifecycle.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "incluster.h"
#include "log.h"
#include "route_table.h"

#define RETRY_FIRST_S 5
#define LOST_MAX 16 /* developers remembered as lost (their CLI may come back) */
#define RETRY_MAX_S 60

enum lc_state {
  LC_WAITING,   /* no developer connected; restore at the deadline (start/loss + lease) */
  LC_GRACE,     /* the last developer left cleanly; restore at the deadline (+ grace) */
  LC_CONNECTED, /* at least one developer connected; no deadline */
  LC_RESTORING, /* the restore process is running */
  LC_RETRY,     /* the last restore failed; the next one starts at the deadline */
  LC_RESTORED,  /* restore succeeded; the agent is stopping */
};
static const char *const state_names[] = {"waiting",   "grace", "connected",
                                          "restoring", "retry", "restored"};

#define RESTORE_PROGRAM "kbridge-agent-restore"
#define REAP_POLL_US 20000 /* waitpid again after this when the pipe ended first */

extern char **environ;

/* A developer whose tunnels were all lost without a GOAWAY: their CLI may be
 * reconnecting, so they keep the whole lease even if others leave cleanly. */
struct lost_dev {
  char key[64];
  double at;
};

struct lifecycle {
  struct event_base *base;
  const struct route_table *routes;
  char ns[256], service[256], takeover_id[64];
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
  char program[512];            /* the restore program's path */

  /* The running restore (state RESTORING), if any. */
  pid_t pid;                    /* > 0 while the child has not been reaped */
  int outfd;                    /* read end of its stdout+stderr pipe, or -1 */
  struct event *out_ev;         /* outfd readable */
  struct event *reap_ev;        /* retry waitpid after the pipe ended */
  struct evbuffer *out;         /* output not yet split into lines */
  char last_line[1024];         /* its last output line: the reason of a failure */
  double started;               /* monotonic */
};

static double mono_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void arm_deadline(struct lifecycle *lc, double when) {
  lc->deadline = when;
  double left = when - mono_now();
  if (left < 0) left = 0;
  struct timeval tv = {(time_t)left, (suseconds_t)((left - (double)(time_t)left) * 1e6)};
  evtimer_add(lc->deadline_ev, &tv);
}

static void out_cb(evutil_socket_t fd, short what, void *arg);
static void try_reap(struct lifecycle *lc);

static void restore_failed(struct lifecycle *lc, const char *why) {
  lc->restores_failed++;
  snprintf(lc->last_error, sizeof lc->last_error, "%s", why);
  lc->retry_s = lc->retry_s ? (lc->retry_s * 2 > RETRY_MAX_S ? RETRY_MAX_S : lc->retry_s * 2)
                            : RETRY_FIRST_S;
  log_err("lease: restore of %s/%s failed after %.2f s: %s; trying again in %ld s", lc->ns,
          lc->service, mono_now() - lc->started, why, lc->retry_s);
  lc->state = LC_RETRY;
  arm_deadline(lc, mono_now() + (double)lc->retry_s);
}

/* Start `PROGRAM --namespace NS --service SVC` with stdin from /dev/null and
 * stdout+stderr into a pipe watched by out_ev, every signal at its default
 * action and unblocked. A start that fails counts as a failed restore. */
static void start_restore(struct lifecycle *lc) {
  lc->state = LC_RESTORING;
  evtimer_del(lc->deadline_ev);
  lc->started = mono_now();
  lc->last_line[0] = 0;
  evbuffer_drain(lc->out, evbuffer_get_length(lc->out));
  log_info("lease: restoring service %s/%s (%s): running %s", lc->ns, lc->service,
           lc->restore_why, lc->program);
  char why[1024];
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) {
    snprintf(why, sizeof why, "cannot start %s: pipe: %s", lc->program, strerror(errno));
    restore_failed(lc, why);
    return;
  }
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t at;
  posix_spawn_file_actions_init(&fa);
  posix_spawnattr_init(&at);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, p[1], 1); /* dup2 clears FD_CLOEXEC */
  posix_spawn_file_actions_adddup2(&fa, p[1], 2);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&at, &none);
  posix_spawnattr_setsigdefault(&at, &all); /* SIGPIPE is ignored in the agent */
  posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  char *argv[] = {(char *)RESTORE_PROGRAM, (char *)"--namespace", lc->ns, (char *)"--service",
                  lc->service, (char *)"--takeover-id", lc->takeover_id, NULL};
  if (!lc->takeover_id[0]) argv[5] = NULL;
  pid_t pid;
  int rc = posix_spawn(&pid, lc->program, &fa, &at, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&at);
  close(p[1]);
  if (rc != 0) {
    close(p[0]);
    snprintf(why, sizeof why, "cannot start %s: %s", lc->program, strerror(rc));
    restore_failed(lc, why);
    return;
  }
  fcntl(p[0], F_SETFL, O_NONBLOCK);
  lc->pid = pid;
  lc->outfd = p[0];
  lc->out_ev = event_new(lc->base, p[0], EV_READ | EV_PERSIST, out_cb, lc);
  if (lc->out_ev) event_add(lc->out_ev, NULL);
  else try_reap(lc); /* out of memory: no output logged, still reaped */
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

/* Log the complete lines in lc->out (all of it if final), keeping the last. */
static void log_lines(struct lifecycle *lc, int final) {
  char *line;
  size_t n;
  while ((line = evbuffer_readln(lc->out, &n, EVBUFFER_EOL_LF)) != NULL) {
    log_info("restore: %s", line);
    snprintf(lc->last_line, sizeof lc->last_line, "%s", line);
    free(line);
  }
  n = evbuffer_get_length(lc->out);
  if (final && n) {
    char rest[1024];
    if (n >= sizeof rest) n = sizeof rest - 1;
    evbuffer_remove(lc->out, rest, n);
    rest[n] = 0;
    log_info("restore: %s", rest);
    snprintf(lc->last_line, sizeof lc->last_line, "%s", rest);
    evbuffer_drain(lc->out, evbuffer_get_length(lc->out));
  }
}

/* The child's output: log it; at end of file it has exited (or is about to). */
static void out_cb(evutil_socket_t fd, short what, void *arg) {
  struct lifecycle *lc = arg;
  for (;;) {
    int r = evbuffer_read(lc->out, fd, 4096);
    if (r > 0) {
      log_lines(lc, 0);
      continue;
    }
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
    break; /* end of file, or a read error: either way no more output */
  }
  log_lines(lc, 1);
  event_free(lc->out_ev);
  lc->out_ev = NULL;
  close(lc->outfd);
  lc->outfd = -1;
  try_reap(lc);
}

static void reap_cb(evutil_socket_t fd, short what, void *arg) { try_reap(arg); }

/* Collect the child's exit status without blocking (again shortly if it has
 * not exited yet), then act on it. */
static void try_reap(struct lifecycle *lc) {
  int st;
  pid_t r;
  while ((r = waitpid(lc->pid, &st, WNOHANG)) < 0 && errno == EINTR) {
  }
  if (r == 0) {
    struct timeval tv = {0, REAP_POLL_US};
    evtimer_add(lc->reap_ev, &tv);
    return;
  }
  lc->pid = 0;
  if (lc->outfd >= 0 && !lc->out_ev) { /* its watcher could not be allocated */
    close(lc->outfd);
    lc->outfd = -1;
  }
  char why[1200];
  if (r < 0)
    snprintf(why, sizeof why, "waitpid: %s", strerror(errno));
  else if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
    why[0] = 0;
  else if (WIFEXITED(st))
    snprintf(why, sizeof why, "%s", lc->last_line[0] ? lc->last_line : "exited with status 1");
  else
    snprintf(why, sizeof why, "%s killed by signal %d", RESTORE_PROGRAM,
             WIFSIGNALED(st) ? WTERMSIG(st) : 0);
  if (r > 0 && WIFEXITED(st) && WEXITSTATUS(st) != 0 && WEXITSTATUS(st) != 1)
    snprintf(why + strlen(why), sizeof why - strlen(why), " (exit status %d)", WEXITSTATUS(st));
  if (why[0]) {
    restore_failed(lc, why);
    return;
  }
  lc->restores_ok++;
  lc->state = LC_RESTORED;
  log_info("lease: service %s/%s restored in %.2f s; the agent stops", lc->ns, lc->service,
           mono_now() - lc->started);
  if (lc->done) lc->done(lc->done_arg);
}

/* Learn the pod's namespace (if ns is empty) and check the service account
 * files the restore program will need, so a pod without them fails at start.
 * 0, or -1 with err. */
static int check_incluster(char *ns, size_t nslen, char *err, size_t errlen) {
  struct incluster sa;
  if (incluster_check(&sa, err, errlen) < 0) return -1;
  if (!ns[0]) snprintf(ns, nslen, "%s", sa.namespace[0] ? sa.namespace : "default");
  log_info("lease: restores will use the pod's service account (API server %s:%s, namespace %s)",
           sa.host, sa.port, ns);
  return 0;
}

/* The restore program: $KBRIDGE_AGENT_RESTORE, else kbridge-agent-restore in
 * the directory of this executable. 0, or -1 with err. */
static int find_program(char *out, size_t outlen, char *err, size_t errlen) {
  const char *env = getenv("KBRIDGE_AGENT_RESTORE");
  if (env && *env) {
    snprintf(out, outlen, "%s", env);
  } else {
    char self[480];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n < 0) {
      snprintf(err, errlen, "cannot find %s: /proc/self/exe: %s", RESTORE_PROGRAM,
               strerror(errno));
      return -1;
    }
    self[n] = 0;
    char *slash = strrchr(self, '/');
    if (slash) *slash = 0;
    snprintf(out, outlen, "%s/%s", slash ? self : ".", RESTORE_PROGRAM);
  }
  if (access(out, X_OK) != 0) {
    snprintf(err, errlen, "restore program %s: %s", out, strerror(errno));
    return -1;
  }
  return 0;
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
  char program[512];
  if (cfg->restore_program) {
    snprintf(program, sizeof program, "%s", cfg->restore_program);
    if (!ns[0]) snprintf(ns, sizeof ns, "default");
  } else {
    /* Fail now, not when the lease runs out, if the pod has no usable
     * service account or the restore program is missing. */
    char why[768];
    if (find_program(program, sizeof program, err, errlen) < 0) return NULL;
    if (check_incluster(ns, sizeof ns, why, sizeof why) < 0) {
      snprintf(err, errlen, "in-cluster Kubernetes configuration: %s", why);
      return NULL;
    }
  }

  struct lifecycle *lc = calloc(1, sizeof *lc);
  if (!lc) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  lc->outfd = -1;
  lc->base = base;
  lc->routes = routes;
  snprintf(lc->ns, sizeof lc->ns, "%s", ns);
  snprintf(lc->service, sizeof lc->service, "%s", cfg->service);
  snprintf(lc->takeover_id, sizeof lc->takeover_id, "%s", cfg->takeover_id ? cfg->takeover_id : "");
  lc->lease_s = cfg->lease_seconds;
  lc->grace_s = cfg->grace_seconds;
  lc->done = done;
  lc->done_arg = arg;
  snprintf(lc->program, sizeof lc->program, "%s", program);
  lc->tick = event_new(base, -1, EV_PERSIST, tick_cb, lc);
  lc->deadline_ev = evtimer_new(base, deadline_cb, lc);
  lc->reap_ev = evtimer_new(base, reap_cb, lc);
  lc->out = evbuffer_new();
  if (!lc->tick || !lc->deadline_ev || !lc->reap_ev || !lc->out) {
    snprintf(err, errlen, "out of memory");
    lifecycle_free(lc);
    return NULL;
  }
  struct timeval sec = {1, 0};
  event_add(lc->tick, &sec);

  lc->state = LC_WAITING;
  arm_deadline(lc, mono_now() + (double)lc->lease_s);
  log_info("lease: looking after service %s/%s: restore when no developer has been connected "
           "for %ld s, or %ld s after the last one leaves; none connected yet",
           lc->ns, lc->service, lc->lease_s, lc->grace_s < lc->lease_s ? lc->grace_s : lc->lease_s);
  return lc;
}

void lifecycle_tunnel_closed(struct lifecycle *lc, const char *key, const char *err,
                             int left) {
  if (!lc) return;
  int clean = left;
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

/* Append s to b as a JSON string. */
static void json_str(struct evbuffer *b, const char *s) {
  evbuffer_add(b, "\"", 1);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\')
      evbuffer_add_printf(b, "\\%c", *p);
    else if (*p < 0x20)
      evbuffer_add_printf(b, "\\u%04x", *p);
    else
      evbuffer_add(b, p, 1);
  }
  evbuffer_add(b, "\"", 1);
}

void lifecycle_json(const struct lifecycle *lc, struct evbuffer *b) {
  if (!lc) return;
  evbuffer_add_printf(b, ",\"lifecycle\":{\"namespace\":");
  json_str(b, lc->ns);
  evbuffer_add_printf(b, ",\"service\":");
  json_str(b, lc->service);
  evbuffer_add_printf(b, ",\"state\":\"%s\",\"developers\":%zu,\"lease_seconds\":%ld,"
                      "\"grace_seconds\":%ld,\"seconds_remaining\":%.1f,"
                      "\"restores_failed\":%lu,\"last_error\":",
                      state_names[lc->state], route_table_keys(lc->routes), lc->lease_s,
                      lc->grace_s, (double)(long)(remaining(lc) * 10) / 10, lc->restores_failed);
  if (lc->last_error[0])
    json_str(b, lc->last_error);
  else
    evbuffer_add(b, "null", 4);
  evbuffer_add(b, "}", 1);
}

struct lease_list {
  struct evbuffer *b;
  int first;
};

static void add_lease(const char *key, size_t nconns, void *arg) {
  struct lease_list *ll = arg;
  if (!ll->first) evbuffer_add(ll->b, ",", 1);
  json_str(ll->b, key);
  evbuffer_add_printf(ll->b, ":{\"tunnels\":%zu}", nconns);
  ll->first = 0;
}

void lifecycle_leases_json(const struct lifecycle *lc, const struct route_table *routes,
                           struct evbuffer *b) {
  struct lease_list ll = {b, 1};
  evbuffer_add_printf(b, ",\"leases\":{");
  route_table_foreach(routes, add_lease, &ll);
  double now = mono_now();
  for (size_t i = 0; lc && i < lc->nlost; i++) {
    const struct lost_dev *ld = &lc->lost[i];
    double left = ld->at + (double)lc->lease_s - now;
    /* back (listed above), or the lease is over (the tick prunes it soon) */
    if (route_table_conns(routes, ld->key) > 0 || left <= 0) continue;
    if (!ll.first) evbuffer_add(b, ",", 1);
    json_str(b, ld->key);
    evbuffer_add_printf(b, ":{\"tunnels\":0,\"lost_seconds\":%.1f,\"seconds_remaining\":%.1f}",
                        now - ld->at, left);
    ll.first = 0;
  }
  evbuffer_add(b, "}", 1);
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
  if (lc->pid > 0) {
    /* Blocking here is fine: the agent is stopping, and the restore is what
     * puts the cluster back. */
    log_info("lease: waiting for the running restore of %s/%s to finish", lc->ns, lc->service);
    if (lc->outfd >= 0) {
      fcntl(lc->outfd, F_SETFL, 0);
      while (evbuffer_read(lc->out, lc->outfd, 4096) > 0) log_lines(lc, 0);
      log_lines(lc, 1);
    }
    int st = 0;
    pid_t w;
    while ((w = waitpid(lc->pid, &st, 0)) < 0 && errno == EINTR) {
    }
    if (w > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0)
      log_info("lease: service %s/%s restored in %.2f s", lc->ns, lc->service,
               mono_now() - lc->started);
    else
      log_err("lease: restore of %s/%s failed: %s", lc->ns, lc->service,
              lc->last_line[0] ? lc->last_line : "no reason given");
  }
  if (lc->tick) event_free(lc->tick);
  if (lc->deadline_ev) event_free(lc->deadline_ev);
  if (lc->reap_ev) event_free(lc->reap_ev);
  if (lc->out_ev) event_free(lc->out_ev);
  if (lc->outfd >= 0) close(lc->outfd);
  if (lc->out) evbuffer_free(lc->out);
  free(lc);
}
