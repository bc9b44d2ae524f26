/* connect_multi.c: several Services in one session (--service given more
 * than once, each with its own --local-port).
 *
 * The first Service is this process's session, with the command, the env,
 * the Service listeners and the HTTP proxy: one set of outbound paths. Every
 * other Service is taken over by a child process: connect_run() again,
 * forked before anything that fork() must not share exists (no API client,
 * TLS context or event loop yet), with that Service and port, JSON output to a
 * pipe and no outbound listeners of its own. The parent waits until every
 * child is ready (or stops them all if one fails: each restores its own
 * Service), forwards their events (JSON: {"event":"session","service":S,
 * "data":EVENT}), and at the end sends them SIGINT and waits
 * for their restores. A child gets SIGTERM when the parent dies (kill -9
 * included), which is a normal leave for it. Each child's session is an
 * ordinary one: `kbridge status`, `disconnect` and `restore` see it by its
 * Service. */
#include "connect_internal.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>

struct multi_child {
  pid_t pid;
  int fd;                 /* its JSON events, or -1 after EOF */
  char svc[64];
  int port;
  char buf[16384];        /* a partial line */
  size_t len;
  cJSON *ready;           /* its ready event (owned) */
  char error[600];        /* its last error event's message */
  int ended;              /* its output ended */
  struct event *ev;       /* reading it from the loop, while the session runs */
};

struct multi {
  struct multi_child *ch;
  size_t n;
};

/* The child: the same connect, for service/port only. Never returns. */
static void child_run(struct connect_config *cfg, const char *service, int port, int out,
                      pid_t parent) {
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() != parent) _exit(1); /* the parent died before prctl */
  dup2(out, STDOUT_FILENO);
  close(out);
  struct connect_config one = *cfg;
  one.service = service;
  one.local_port = port;
  one.more_services.n = 0;
  one.nmore_ports = 0;
  one.cmd = NULL;
  one.env_file = NULL;
  one.no_volumes = 1;
  one.forwards.n = 0;
  one.env.n = 0; /* no process, no env file: the overrides are the parent's */
  one.no_services = 1;
  one.no_http_proxy = 1;
  one.output = "json";
  fflush(stderr);
  _exit(connect_run(&one));
}

/* One line of a child's output: keep what the parent needs, show it. */
static void child_line(struct conn *c, struct multi_child *k, const char *line) {
  cJSON *ev = cJSON_Parse(line);
  const char *kind = conn_jstr(ev, "event");
  if (!kind) {
    cJSON_Delete(ev);
    return;
  }
  if (strcmp(kind, "ready") == 0 && !k->ready) {
    k->ready = cJSON_Duplicate(ev, 1);
  } else if (strcmp(kind, "error") == 0) {
    snprintf(k->error, sizeof k->error, "%s", conn_jstr(ev, "message") ? conn_jstr(ev, "message") : "failed");
  }
  if (strcmp(kind, "connection") != 0) { /* the connection log stays the child's */
    if (c->json) { /* wrapped: its "ready" is not the session's */
      cJSON *o = cJSON_CreateObject();
      cJSON_AddStringToObject(o, "event", "session");
      cJSON_AddStringToObject(o, "service", k->svc);
      cJSON_AddItemToObject(o, "data", ev);
      conn_emit_json(o);
      return;
    }
    const char *msg = conn_jstr(ev, "message");
    if (strcmp(kind, "disconnected") == 0)
      printf("[%5.1fs] %s: disconnected%s\n", conn_now_s() - c->t0, k->svc,
             cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(ev, "restored")) ? ", restored" : "");
    else if (strcmp(kind, "ready") == 0)
      printf("[%5.1fs] %s: ready: route %s -> %s:%d\n", conn_now_s() - c->t0, k->svc, c->cfg->key,
             c->cfg->local_host, k->port);
    else if (msg)
      printf("[%5.1fs] %s: %s%s\n", conn_now_s() - c->t0, k->svc,
             strcmp(kind, "error") == 0 ? "error: " : "", msg);
    fflush(stdout);
  }
  cJSON_Delete(ev);
}

/* Read what k has now (blocking until something comes if wait). 0, or -1 at
 * the end of its output. */
static int child_read(struct conn *c, struct multi_child *k) {
  if (k->fd < 0) return -1;
  ssize_t r = read(k->fd, k->buf + k->len, sizeof k->buf - 1 - k->len);
  if (r < 0 && (errno == EINTR || errno == EAGAIN)) return 0;
  if (r <= 0) {
    close(k->fd);
    k->fd = -1;
    k->ended = 1;
    return -1;
  }
  k->len += (size_t)r;
  k->buf[k->len] = '\0';
  char *start = k->buf, *nl;
  while ((nl = strchr(start, '\n')) != NULL) {
    *nl = '\0';
    child_line(c, k, start);
    start = nl + 1;
  }
  k->len = strlen(start);
  memmove(k->buf, start, k->len);
  if (k->len == sizeof k->buf - 1) k->len = 0; /* a line longer than this: dropped */
  return 0;
}

int conn_multi_start(struct conn *c) {
  struct connect_config *cfg = c->cfg;
  struct multi *m = calloc(1, sizeof *m);
  if (!m || !(m->ch = calloc(cfg->more_services.n, sizeof *m->ch))) {
    free(m);
    conn_fail(c, "out of memory");
    return -1;
  }
  c->multi = m;
  fflush(stdout);
  fflush(stderr);
  for (size_t i = 0; i < cfg->more_services.n; i++) {
    struct multi_child *k = &m->ch[m->n];
    int p[2];
    if (pipe(p) < 0) {
      conn_fail(c, "cannot start the session of %s: %s", cfg->more_services.v[i], strerror(errno));
      return -1;
    }
    snprintf(k->svc, sizeof k->svc, "%s", cfg->more_services.v[i]);
    k->port = cfg->more_ports[i];
    pid_t parent = getpid();
    k->pid = fork();
    if (k->pid < 0) {
      close(p[0]);
      close(p[1]);
      conn_fail(c, "cannot start the session of %s: %s", k->svc, strerror(errno));
      return -1;
    }
    if (k->pid == 0) {
      close(p[0]);
      for (size_t j = 0; j < m->n; j++) close(m->ch[j].fd);
      child_run(cfg, cfg->more_services.v[i], k->port, p[1], parent);
    }
    close(p[1]);
    k->fd = p[0];
    m->n++;
    conn_progress(c, "session", "%s: taking it over in its own session (pid %ld), local port %d",
                  k->svc, (long)k->pid, k->port);
  }
  /* Until every child is ready or one has failed. Each has its own --timeout. */
  for (;;) {
    size_t ready = 0, failed = 0;
    struct pollfd pf[OPT_LIST_MAX];
    nfds_t np = 0;
    for (size_t i = 0; i < m->n; i++) {
      struct multi_child *k = &m->ch[i];
      if (k->ready) ready++;
      else if (k->ended) failed++;
      else pf[np++] = (struct pollfd){.fd = k->fd, .events = POLLIN};
    }
    if (failed) {
      for (size_t i = 0; i < m->n; i++)
        if (m->ch[i].ended && !m->ch[i].ready)
          conn_fail(c, "the session of %s failed: %s", m->ch[i].svc,
                    m->ch[i].error[0] ? m->ch[i].error : "it ended before it was ready");
      return -1;
    }
    if (ready == m->n) return 0;
    if (conn_interrupted) {
      conn_fail(c, "interrupted while the other Services were being taken over");
      return -1;
    }
    if (poll(pf, np, 1000) < 0 && errno != EINTR) return -1;
    for (nfds_t j = 0; j < np; j++)
      if (pf[j].revents)
        for (size_t i = 0; i < m->n; i++)
          if (m->ch[i].fd == pf[j].fd) child_read(c, &m->ch[i]);
  }
}

static void child_cb(evutil_socket_t fd, short what, void *arg) {
  struct conn *c = arg;
  struct multi *m = c->multi;
  for (size_t i = 0; i < m->n; i++) {
    struct multi_child *k = &m->ch[i];
    if (k->fd != fd) continue;
    if (child_read(c, k) < 0) {
      log_warn("the session of %s ended%s%s; the other Services stay taken over", k->svc,
               k->error[0] ? ": " : "", k->error);
      event_free(k->ev);
      k->ev = NULL;
    }
  }
}

void conn_multi_watch(struct conn *c, struct event_base *base) {
  struct multi *m = c->multi;
  for (size_t i = 0; m && i < m->n; i++) {
    struct multi_child *k = &m->ch[i];
    if (k->fd < 0) continue;
    k->ev = event_new(base, k->fd, EV_READ | EV_PERSIST, child_cb, c);
    if (k->ev) event_add(k->ev, NULL);
  }
}

void conn_multi_unwatch(struct conn *c) {
  struct multi *m = c->multi;
  for (size_t i = 0; m && i < m->n; i++)
    if (m->ch[i].ev) {
      event_free(m->ch[i].ev);
      m->ch[i].ev = NULL;
    }
}

cJSON *conn_multi_json(const struct conn *c) {
  cJSON *arr = cJSON_CreateArray();
  const struct multi *m = c->multi;
  for (size_t i = 0; m && i < m->n; i++) {
    const struct multi_child *k = &m->ch[i];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "service", k->svc);
    cJSON_AddNumberToObject(o, "local_port", k->port);
    cJSON_AddNumberToObject(o, "pid", k->pid);
    if (k->ready && conn_jget(k->ready, "urls"))
      cJSON_AddItemToObject(o, "urls", cJSON_Duplicate(conn_jget(k->ready, "urls"), 1));
    cJSON_AddItemToArray(arr, o);
  }
  return arr;
}

void conn_multi_stop(struct conn *c) {
  struct multi *m = c->multi;
  if (!m) return;
  conn_multi_unwatch(c);
  for (size_t i = 0; i < m->n; i++)
    if (!m->ch[i].ended) kill(m->ch[i].pid, SIGINT);
  /* Their leave and restore, as they report it. Each bounds its own. */
  for (size_t i = 0; i < m->n; i++) {
    struct multi_child *k = &m->ch[i];
    while (child_read(c, k) == 0) {
    }
    int st;
    while (waitpid(k->pid, &st, 0) < 0 && errno == EINTR) {
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) != 0 && k->ready)
      log_warn("the session of %s ended with status %d", k->svc, WEXITSTATUS(st));
    cJSON_Delete(k->ready);
  }
  free(m->ch);
  free(m);
  c->multi = NULL;
}
