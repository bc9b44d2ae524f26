/* test_lifecycle.c: when the agent decides to restore, measured on a real event
 * loop with a fake restore program (a shell script written at start; the
 * posix_spawn, the output pipe and the reaping are the real ones).
 *
 * Each case scripts developer arrivals and departures on timers, runs the loop
 * until the restore is done (or a time limit), and checks when it happened:
 * lease from start, grace after a clean leave (GOAWAY), lease after a lost
 * tunnel, a reconnect calling the grace off, a departure only the 1 s tick
 * sees, and a failing restore reported in /healthz and /metrics. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "check.h"
#include "lifecycle.h"
#include "log.h"
#include "route_table.h"

#define CLEAN "peer closed the tunnel (CANCEL): developer proxy stopping"
#define LOST "carrier error: connection reset by peer"
/* A GOAWAY's code decides, not its text (the agent's tunnels.c passes
 * frame_goaway_is_leave(code) as `left`): a leave whose reason reads like
 * nothing in particular, and an error GOAWAY worded like the old clean one. */
#define LEAVE_OTHER_TEXT "peer sent GOAWAY LEAVE: see you tomorrow"
#define ERROR_GOAWAY "peer closed the tunnel (PROTOCOL): OPEN with a stream id of the wrong parity"

/* The fake restore program: counts its runs in $FAKE_CALLS (one line each);
 * with $FAKE_FAIL set it fails the way kbridge-agent-restore does (reason on
 * stderr, exit 1). */
static const char fake_script[] =
    "#!/bin/sh\n"
    "echo \"$*\" >> \"$FAKE_CALLS\"\n"
    "if [ -n \"$FAKE_FAIL\" ]; then echo 'GET ...: 403' ; echo 'boom: the API server said no' >&2; exit 1; fi\n"
    "echo \"service $2/$4: selector restored\"\n";
static char fake_program[256], fake_calls_file[256];

static void make_fake(void) {
  char dir[] = "/tmp/test_lifecycle.XXXXXX";
  CHECK(mkdtemp(dir) != NULL);
  snprintf(fake_program, sizeof fake_program, "%s/fake-restore", dir);
  snprintf(fake_calls_file, sizeof fake_calls_file, "%s/calls", dir);
  FILE *f = fopen(fake_program, "w");
  CHECK(f != NULL);
  fputs(fake_script, f);
  fclose(f);
  chmod(fake_program, 0755);
  setenv("FAKE_CALLS", fake_calls_file, 1);
}

/* Runs of the fake since the last call (the count file is then emptied). */
static int fake_calls(void) {
  FILE *f = fopen(fake_calls_file, "r");
  int n = 0, c;
  if (f) {
    while ((c = fgetc(f)) != EOF) n += c == '\n';
    fclose(f);
  }
  unlink(fake_calls_file);
  return n;
}

static void cleanup_fake(void) {
  unlink(fake_calls_file);
  unlink(fake_program);
  char *slash = strrchr(fake_program, '/');
  *slash = 0;
  rmdir(fake_program);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

enum step_kind {
  STEP_REGISTER,
  STEP_CLOSE_CLEAN,
  STEP_CLOSE_LOST,
  STEP_REMOVE_SILENTLY,
  STEP_CLOSE_LEAVE_OTHER_TEXT, /* left = 1, a reason without the old wording */
  STEP_CLOSE_ERROR_GOAWAY,     /* left = 0, the old wording with an error code */
};
struct step {
  int at_ms;
  enum step_kind kind;
  const char *key; /* NULL: "alice"; the pointer doubles as the tunnel's identity */
};

struct run {
  struct event_base *base;
  struct route_table *routes;
  struct lifecycle *lc;
  double t0, done_at;
};

struct step_ev {
  struct run *r;
  struct step s;
  struct event *ev;
};

static void step_cb(evutil_socket_t fd, short what, void *arg) {
  struct step_ev *se = arg;
  struct run *r = se->r;
  const char *key = se->s.key ? se->s.key : "alice";
  void *conn = (void *)(uintptr_t)key;
  switch (se->s.kind) {
  case STEP_REGISTER:
    route_table_add(r->routes, key, conn);
    lifecycle_check(r->lc);
    break;
  case STEP_CLOSE_CLEAN:
  case STEP_CLOSE_LOST:
    route_table_remove(r->routes, key, conn);
    lifecycle_tunnel_closed(r->lc, key, se->s.kind == STEP_CLOSE_CLEAN ? CLEAN : LOST,
                            se->s.kind == STEP_CLOSE_CLEAN);
    break;
  case STEP_CLOSE_LEAVE_OTHER_TEXT:
    route_table_remove(r->routes, key, conn);
    lifecycle_tunnel_closed(r->lc, key, LEAVE_OTHER_TEXT, 1);
    break;
  case STEP_CLOSE_ERROR_GOAWAY:
    route_table_remove(r->routes, key, conn);
    lifecycle_tunnel_closed(r->lc, key, ERROR_GOAWAY, 0);
    break;
  case STEP_REMOVE_SILENTLY:
    route_table_remove(r->routes, key, conn);
    break;
  }
}

static void done_cb(void *arg) {
  struct run *r = arg;
  r->done_at = now_s() - r->t0;
  event_base_loopexit(r->base, NULL);
}

/* Run one case; returns the seconds until the restore was done, or -1 if it was
 * not done within limit_s. healthz/metrics (if not NULL) get the state at the end. */
static double run_case(const char *name, long lease, long grace, const struct step *steps,
                       size_t nsteps, double limit_s, struct evbuffer *healthz,
                       struct evbuffer *metrics) {
  struct run r;
  memset(&r, 0, sizeof r);
  r.base = event_base_new();
  r.routes = route_table_new();
  r.done_at = -1;
  struct lifecycle_config cfg = {"shop", "api", NULL, lease, grace, fake_program};
  char err[256];
  r.t0 = now_s();
  r.lc = lifecycle_new(r.base, r.routes, &cfg, done_cb, &r, err, sizeof err);
  CHECK(r.lc != NULL);
  struct step_ev *se = calloc(nsteps ? nsteps : 1, sizeof *se);
  for (size_t i = 0; i < nsteps; i++) {
    se[i].r = &r;
    se[i].s = steps[i];
    se[i].ev = evtimer_new(r.base, step_cb, &se[i]);
    struct timeval tv = {steps[i].at_ms / 1000, (steps[i].at_ms % 1000) * 1000};
    evtimer_add(se[i].ev, &tv);
  }
  struct timeval lim = {(time_t)limit_s, (suseconds_t)((limit_s - (double)(time_t)limit_s) * 1e6)};
  event_base_loopexit(r.base, &lim);
  event_base_dispatch(r.base);
  if (healthz) {
    lifecycle_json(r.lc, healthz);
    lifecycle_leases_json(r.lc, r.routes, healthz);
  }
  if (metrics) lifecycle_metrics(r.lc, r.routes, metrics);
  lifecycle_free(r.lc);
  for (size_t i = 0; i < nsteps; i++) event_free(se[i].ev);
  free(se);
  route_table_free(r.routes);
  event_base_free(r.base);
  if (r.done_at >= 0)
    printf("%-44s restore done at %.2f s\n", name, r.done_at);
  else
    printf("%-44s no restore within %.1f s\n", name, limit_s);
  return r.done_at;
}

static int contains(struct evbuffer *b, const char *s) {
  size_t n = evbuffer_get_length(b);
  char *p = malloc(n + 1);
  evbuffer_copyout(b, p, n);
  p[n] = 0;
  int found = strstr(p, s) != NULL;
  if (!found) fprintf(stderr, "expected \"%s\" in:\n%s\n", s, p);
  free(p);
  return found;
}

static int lacks(struct evbuffer *b, const char *s) {
  return evbuffer_search(b, s, strlen(s), NULL).pos < 0;
}

int main(void) {
  log_init("test_lifecycle", LOGL_WARN);
  make_fake();
  double t;

  /* nobody ever connects: the lease runs from the start */
  t = run_case("no developer: lease 1 s", 1, 5, NULL, 0, 3, NULL, NULL);
  CHECK(t >= 0.95 && t < 1.6);
  CHECK_EQ_INT(fake_calls(), 1);

  /* the developer leaves with a GOAWAY: grace, not lease */
  const struct step clean[] = {{100, STEP_REGISTER, NULL}, {300, STEP_CLOSE_CLEAN, NULL}};
  t = run_case("clean leave at 0.3 s: grace 1 s (lease 3 s)", 3, 1, clean, 2, 5, NULL, NULL);
  CHECK(t >= 1.25 && t < 1.9);

  /* the tunnel is lost (kill -9, network): the whole lease */
  const struct step lost[] = {{100, STEP_REGISTER, NULL}, {300, STEP_CLOSE_LOST, NULL}};
  t = run_case("lost at 0.3 s: lease 2 s (grace 1 s)", 2, 1, lost, 2, 5, NULL, NULL);
  CHECK(t >= 2.25 && t < 2.9);

  /* the leave is the GOAWAY's code (LEAVE), whatever its text says: grace */
  const struct step leave[] = {{100, STEP_REGISTER, NULL}, {300, STEP_CLOSE_LEAVE_OTHER_TEXT, NULL}};
  t = run_case("GOAWAY LEAVE, other text: grace 1 s (lease 3 s)", 3, 1, leave, 2, 5, NULL, NULL);
  CHECK(t >= 1.25 && t < 1.9);

  /* a GOAWAY with an error code is no leave, however worded: the lease */
  const struct step errg[] = {{100, STEP_REGISTER, NULL}, {300, STEP_CLOSE_ERROR_GOAWAY, NULL}};
  t = run_case("GOAWAY PROTOCOL: lease 2 s (grace 1 s)", 2, 1, errg, 2, 5, NULL, NULL);
  CHECK(t >= 2.25 && t < 2.9);

  /* a developer coming back within the grace calls the restore off */
  const struct step back[] = {{100, STEP_REGISTER, NULL}, {300, STEP_CLOSE_CLEAN, NULL}, {800, STEP_REGISTER, NULL}};
  struct evbuffer *h = evbuffer_new(), *m = evbuffer_new();
  fake_calls();
  t = run_case("clean leave, back within the grace", 3, 1, back, 3, 2.5, h, m);
  CHECK(t < 0);
  CHECK_EQ_INT(fake_calls(), 0);
  CHECK(contains(h, "\"state\":\"connected\""));
  CHECK(contains(h, "\"developers\":1"));
  CHECK(contains(m, "kbridge_developers 1\n"));
  CHECK(contains(m, "kbridge_lease_seconds_remaining 3.0\n"));
  evbuffer_drain(h, evbuffer_get_length(h));
  evbuffer_drain(m, evbuffer_get_length(m));

  /* bob is lost, then alice leaves cleanly: bob keeps his lease */
  const struct step two[] = {{100, STEP_REGISTER, NULL},
                             {100, STEP_REGISTER, "bob"},
                             {200, STEP_CLOSE_LOST, "bob"},
                             {400, STEP_CLOSE_CLEAN, NULL}};
  t = run_case("bob lost, alice leaves: bob's lease 2 s", 2, 1, two, 4, 4, NULL, NULL);
  CHECK(t >= 2.15 && t < 2.8);
  /* ... but not when bob came back and left cleanly too */
  const struct step back2[] = {{100, STEP_REGISTER, NULL},   {100, STEP_REGISTER, "bob"},
                               {200, STEP_CLOSE_LOST, "bob"}, {300, STEP_REGISTER, "bob"},
                               {400, STEP_CLOSE_CLEAN, "bob"}, {450, STEP_CLOSE_CLEAN, NULL}};
  t = run_case("bob lost, back, both leave: grace 1 s", 3, 1, back2, 6, 4, NULL, NULL);
  CHECK(t >= 1.4 && t < 2.0);

  /* /healthz leases: bob lost while alice stays keeps his lease (what a
   * disconnecting alice counts), and loses it when it ends */
  const struct step lease_lost[] = {{100, STEP_REGISTER, NULL},
                                    {100, STEP_REGISTER, "bob"},
                                    {200, STEP_CLOSE_LOST, "bob"}};
  t = run_case("bob lost, alice stays: bob's lease in /healthz", 2, 1, lease_lost, 3, 0.7, h, NULL);
  CHECK(t < 0);
  CHECK(contains(h, "\"leases\":{"));
  CHECK(contains(h, "\"alice\":{\"tunnels\":1}"));
  /* lost 0.5 s before the end of the run, 1.5 s of the lease left */
  CHECK(contains(h, "\"bob\":{\"tunnels\":0,\"lost_seconds\":0."));
  CHECK(contains(h, ",\"seconds_remaining\":1."));
  evbuffer_drain(h, evbuffer_get_length(h));
  t = run_case("bob lost, alice stays: lease over", 1, 1, lease_lost, 3, 1.6, h, NULL);
  CHECK(t < 0);
  CHECK(contains(h, "\"leases\":{\"alice\":{\"tunnels\":1}}"));
  evbuffer_drain(h, evbuffer_get_length(h));
  /* bob lost and back: one entry, with his tunnels */
  const struct step lease_back[] = {{100, STEP_REGISTER, NULL},
                                    {100, STEP_REGISTER, "bob"},
                                    {200, STEP_CLOSE_LOST, "bob"},
                                    {300, STEP_REGISTER, "bob"}};
  t = run_case("bob lost and back: one lease entry", 2, 1, lease_back, 4, 0.5, h, NULL);
  CHECK(contains(h, "\"alice\":{\"tunnels\":1}"));
  CHECK(contains(h, "\"bob\":{\"tunnels\":1}"));
  CHECK(lacks(h, "lost_seconds"));
  evbuffer_drain(h, evbuffer_get_length(h));

  /* a departure nobody reported (no hook): the 1 s tick notices, lease applies */
  const struct step silent[] = {{100, STEP_REGISTER, NULL}, {300, STEP_REMOVE_SILENTLY, NULL}};
  t = run_case("unreported departure: tick + lease 1 s", 1, 0, silent, 2, 4, NULL, NULL);
  CHECK(t >= 1.25 && t < 2.6);

  /* a failing restore: reported, retried later (5 s back-off, not waited for) */
  setenv("FAKE_FAIL", "1", 1);
  fake_calls();
  t = run_case("failing restore", 1, 1, NULL, 0, 1.6, h, m);
  CHECK(t < 0);
  CHECK_EQ_INT(fake_calls(), 1);
  CHECK(contains(h, "\"state\":\"retry\""));
  CHECK(contains(h, "\"last_error\":\"boom: the API server said no\""));
  CHECK(contains(h, "\"restores_failed\":1"));
  CHECK(contains(m, "kbridge_restores_total{result=\"failed\"} 1\n"));
  CHECK(contains(m, "kbridge_developers 0\n"));
  evbuffer_free(h);
  evbuffer_free(m);
  cleanup_fake();
  return check_done();
}
