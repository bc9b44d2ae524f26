/* main.c: kbridge-agent: parse flags, set up listeners, run the event loop.
 *
 * Startup prints the bound addresses on stdout, one per line ("listen A:P",
 * "tunnel-listen A:P", "metrics A:P"), then "ready"; tests and the CLI parse
 * these. Logs go to stderr. SIGINT/SIGTERM: with --drain-seconds N, first keep
 * serving N seconds (the pod is being deleted: the Service's endpoints and
 * kube-proxy let go of it meanwhile, so no client is sent to a closed port;
 * /healthz answers 503, client connections close after their response); then
 * stop accepting, GOAWAY every tunnel, and exit 0 once the client connections
 * are done (at most STOP_WAIT_MS after a drain, 200 ms without one). A second
 * signal skips what is left of the drain; a third exits at once. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/ssl.h>

#include "addr.h"
#include "agent.h"
#include "bind.h"
#include "client.h"
#include "downstream.h"
#include "lifecycle.h"
#include "heap.h"
#include "log.h"
#include "metrics.h"
#include "status.h"
#include "options.h"
#include "route_table.h"
#include "splice.h"
#include "tunnel.h"
#include "tls.h"
#include "tunnels.h"

#define ACCEPT_BACKOFF_MS 1000
#define STOP_WAIT_MS 2000 /* after a drain: how long open client connections may finish */
#define EXIT_POLL_MS 50

static void update_listeners(struct agent *ag) {
  int on = !ag->accept_paused_cap && !ag->accept_paused_fd && !ag->stopping;
  for (size_t i = 0; i < ag->nlisteners; i++) {
    struct agent_listener *li = &ag->listeners[i];
    if (on) {
      evconnlistener_enable(li->lev);
      if (li->lev2) evconnlistener_enable(li->lev2);
    } else {
      evconnlistener_disable(li->lev);
      if (li->lev2) evconnlistener_disable(li->lev2);
    }
  }
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                      int socklen, void *arg) {
  struct agent_listener *li = arg;
  downstream_accept(li, fd, sa);
}

static void backoff_done(evutil_socket_t fd, short what, void *arg) {
  struct agent *ag = arg;
  ag->accept_paused_fd = 0;
  update_listeners(ag);
}

/* accept() failed. Out of descriptors: stop accepting for a second (the
 * pending connections wait in the backlog) instead of spinning. */
static void accept_error_cb(struct evconnlistener *l, void *arg) {
  struct agent_listener *li = arg;
  struct agent *ag = li->ag;
  int e = EVUTIL_SOCKET_ERROR();
  if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
    if (!ag->accept_paused_fd) {
      log_warn("accept: %s; pausing accepts for %d ms", strerror(e), ACCEPT_BACKOFF_MS);
      ag->accept_paused_fd = 1;
      update_listeners(ag);
      struct timeval tv = {ACCEPT_BACKOFF_MS / 1000, (ACCEPT_BACKOFF_MS % 1000) * 1000};
      evtimer_add(ag->accept_backoff, &tv);
    }
    return;
  }
  log_warn("accept on port %u: %s", li->port, strerror(e));
}

static void sweep_cb(evutil_socket_t fd, short what, void *arg) {
  struct agent *ag = arg;
  for (size_t i = 0; i < ag->nlisteners; i++)
    pool_sweep(&ag->listeners[i].pool, ag->opt->pool_idle_ms);
  struct agent_tunnel *at;
  TAILQ_FOREACH(at, &ag->tunnels, link) tunnels_pools_sweep(at, ag->opt->pool_idle_ms);
}

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Stopping: exit once no client connection is open, or at the deadline. */
static void exit_poll_cb(evutil_socket_t fd, short what, void *arg) {
  struct agent *ag = arg;
  if (ag->stats.connections_open > 0 && mono_s() < ag->stop_deadline) {
    struct timeval tv = {0, EXIT_POLL_MS * 1000};
    evtimer_add(ag->exit_poll, &tv);
    return;
  }
  if (ag->stats.connections_open > 0)
    log_warn("stopping with %ld client connection(s) still open", ag->stats.connections_open);
  event_base_loopexit(ag->base, NULL);
}

/* Stop accepting, GOAWAY every tunnel, and end the loop once the client
 * connections are done: at most wait_ms (at least 200 ms, for the GOAWAY
 * frames to leave). */
static void stop_now(struct agent *ag, long wait_ms) {
  ag->draining = 0;
  ag->stopping = 1;
  if (ag->drain_timer) evtimer_del(ag->drain_timer);
  update_listeners(ag);
  tunnels_shutdown(ag);
  for (size_t i = 0; i < ag->nlisteners; i++) pool_clear(&ag->listeners[i].pool);
  struct timeval tv = {0, 200 * 1000}; /* let GOAWAY frames leave */
  ag->stop_deadline = mono_s() + (double)wait_ms / 1000.0;
  if (wait_ms > 200 && ag->exit_poll)
    evtimer_add(ag->exit_poll, &tv);
  else
    event_base_loopexit(ag->base, &tv);
}

static void drain_done_cb(evutil_socket_t fd, short what, void *arg) {
  struct agent *ag = arg;
  log_info("drain over after %ld s: stopping (no new connections, tunnels told GOAWAY)",
           ag->opt->drain_seconds);
  stop_now(ag, STOP_WAIT_MS);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg) {
  struct agent *ag = arg;
  if (ag->stopping) {
    log_warn("another signal: exiting now");
    event_base_loopbreak(ag->base);
    return;
  }
  if (ag->draining) {
    log_info("signal %d while draining: stopping now", (int)sig);
    stop_now(ag, STOP_WAIT_MS);
    return;
  }
  if (ag->opt->drain_seconds > 0 && ag->drain_timer) {
    log_info("signal %d: draining for %ld s (still serving; /healthz answers 503) before stopping",
             (int)sig, ag->opt->drain_seconds);
    ag->draining = 1;
    struct timeval tv = {(time_t)ag->opt->drain_seconds, 0};
    evtimer_add(ag->drain_timer, &tv);
    return;
  }
  log_info("signal %d: stopping (no new connections, tunnels told GOAWAY)", (int)sig);
  stop_now(ag, 0);
}

/* The lease ran out and the cluster is back (lifecycle.h): stop as on SIGTERM,
 * without a drain (the restore waited for the endpoints already). */
static void restored_cb(void *arg) {
  struct agent *ag = arg;
  if (ag->stopping) return;
  log_info("stopping: the Service is restored");
  stop_now(ag, 0);
}

static int listen_service(struct agent *ag, const struct hostport *hp,
                          const struct hostport *fallback, char *err, size_t errlen) {
  char a[300], how[300], why[300];
  int fds[BIND_MAX_FDS];
  int n = bind_listen(hp, 1024, fds, how, sizeof how, why, sizeof why);
  if (n < 0) {
    snprintf(err, errlen, "--listen %s: %s", addr_format(hp, a, sizeof a), why);
    return -1;
  }
  struct agent_listener *li = &ag->listeners[ag->nlisteners];
  li->ag = ag;
  li->fallback = fallback;
  pool_init(&li->pool, ag);
  const unsigned flags = LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC;
  li->lev = evconnlistener_new(ag->base, accept_cb, li, flags, 0, fds[0]); /* 0: listening */
  if (!li->lev) close(fds[0]);
  if (n > 1) {
    li->lev2 = li->lev ? evconnlistener_new(ag->base, accept_cb, li, flags, 0, fds[1]) : NULL;
    if (!li->lev2) close(fds[1]);
  }
  if (!li->lev || (n > 1 && !li->lev2)) {
    snprintf(err, errlen, "--listen %s: out of memory", addr_format(hp, a, sizeof a));
    return -1;
  }
  evconnlistener_set_error_cb(li->lev, accept_error_cb);
  if (li->lev2) evconnlistener_set_error_cb(li->lev2, accept_error_cb);
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  getsockname(fds[0], (struct sockaddr *)&ss, &sl);
  li->port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                      : ntohs(((struct sockaddr_in *)&ss)->sin_port);
  printf("listen %s\n", addr_format_sa((struct sockaddr *)&ss, a, sizeof a));
  log_info("port %s: listening on %s", a, how);
  ag->nlisteners++;
  return 0;
}

int main(int argc, char **argv) {
  static struct agent_options opt;
  char err[1024];
  enum options_result pr = options_parse(argc, argv, &opt, err, sizeof err);
  if (pr == OPTIONS_EXIT_OK) return 0;
  if (pr == OPTIONS_ERROR) {
    fprintf(stderr, "kbridge-agent: %s\n", err);
    return 2;
  }
  log_init("kbridge-agent", opt.log_level);
  signal(SIGPIPE, SIG_IGN);

  struct agent ag;
  memset(&ag, 0, sizeof ag);
  struct agent_listener listeners[AGENT_MAX_LISTEN];
  memset(listeners, 0, sizeof listeners);
  ag.listeners = listeners;
  ag.accepting_changed = update_listeners;
  ag.opt = &opt;
  TAILQ_INIT(&ag.tunnels);
  TAILQ_INIT(&ag.clients);
  TAILQ_INIT(&ag.splices);
  route_config_default(&ag.rcfg);
  snprintf(ag.rcfg.header, sizeof ag.rcfg.header, "%s", opt.route_header);
  int rc = 1;

  heap_keep_buffers(); /* bulk buffers reused, not faulted in again per transfer */
  struct event_config *ecfg = event_config_new();
  /* epoll: an EV_WRITE (or EV_READ) turned on and off again within one loop
   * turn costs no epoll_ctl (we dup() no sockets, the flag's one caveat). */
  if (ecfg) event_config_set_flag(ecfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
  ag.base = ecfg ? event_base_new_with_config(ecfg) : NULL;
  if (ecfg) event_config_free(ecfg);
  ag.routes = route_table_new();
  ag.scratch = evbuffer_new();
  if (!ag.base || !ag.routes || !ag.scratch) {
    log_err("out of memory at startup");
    return 1;
  }
  /* The lease first: a pod without a usable service account fails here, before
   * anything else is set up. */
  if (opt.service[0]) {
    struct lifecycle_config lcfg = {opt.namespace, opt.service, opt.takeover_id,
                                    opt.lease_seconds, opt.grace_seconds, NULL};
    ag.life = lifecycle_new(ag.base, ag.routes, &lcfg, restored_cb, &ag, err, sizeof err);
    if (!ag.life) {
      fprintf(stderr, "kbridge-agent: --service %s: %s\n", opt.service, err);
      route_table_free(ag.routes);
      evbuffer_free(ag.scratch);
      event_base_free(ag.base);
      return 2;
    }
  }
  /* Resolver: the system's nameservers when there are any, /etc/hosts always. */
  ag.dns = evdns_base_new(ag.base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
  if (!ag.dns) {
    log_warn("no usable /etc/resolv.conf; only literal addresses and /etc/hosts resolve");
    ag.dns = evdns_base_new(ag.base, 0);
    if (ag.dns) evdns_base_load_hosts(ag.dns, NULL);
  }
  if (!ag.dns) {
    log_err("cannot create a DNS resolver");
    return 1;
  }

  SSL_CTX *ssl = tls_server_ctx_from_dir(opt.tls_dir, err, sizeof err);
  if (!ssl) {
    fprintf(stderr, "kbridge-agent: --tls-dir %s: %s\n", opt.tls_dir, err);
    return 2;
  }
  ag.ssl = (struct ssl_ctx_st *)ssl;

  for (size_t i = 0; i < opt.nlisten; i++)
    if (listen_service(&ag, &opt.listen[i], &opt.listen_fallback[i], err, sizeof err) < 0) {
      fprintf(stderr, "kbridge-agent: %s\n", err);
      return 2;
    }
  char bound[300];
  if (tunnels_listen(&ag, &opt.tunnel_listen, bound, sizeof bound, err, sizeof err) < 0) {
    fprintf(stderr, "kbridge-agent: %s\n", err);
    return 2;
  }
  printf("tunnel-listen %s\n", bound);
  if (opt.have_metrics) {
    if (status_serve(&ag, &opt.metrics, bound, sizeof bound, err, sizeof err) < 0) {
      fprintf(stderr, "kbridge-agent: %s\n", err);
      return 2;
    }
    printf("metrics %s\n", bound);
  }

  ag.accept_backoff = evtimer_new(ag.base, backoff_done, &ag);
  ag.sweep = event_new(ag.base, -1, EV_PERSIST, sweep_cb, &ag);
  ag.drain_timer = evtimer_new(ag.base, drain_done_cb, &ag);
  ag.exit_poll = evtimer_new(ag.base, exit_poll_cb, &ag);
  struct event *sigint = evsignal_new(ag.base, SIGINT, signal_cb, &ag);
  struct event *sigterm = evsignal_new(ag.base, SIGTERM, signal_cb, &ag);
  if (!ag.accept_backoff || !ag.sweep || !ag.drain_timer || !ag.exit_poll || !sigint || !sigterm) {
    log_err("out of memory at startup");
    return 1;
  }
  struct timeval sec = {1, 0};
  event_add(ag.sweep, &sec);
  event_add(sigint, NULL);
  event_add(sigterm, NULL);

  char fb[300], la[300];
  for (size_t i = 0; i < opt.nlisten; i++)
    log_info("port %s: unrouted traffic to %s", addr_format(&opt.listen[i], la, sizeof la),
             addr_format(&opt.listen_fallback[i], fb, sizeof fb));
  log_info("serving %zu port(s); %s mode", opt.nlisten, opt.exclusive ? "exclusive" : "routing");
  printf("ready\n");
  fflush(stdout);

  if (event_base_dispatch(ag.base) < 0)
    log_err("event loop failed");
  else
    rc = 0;

  /* Orderly teardown so sanitizers see what is still owned. */
  lifecycle_free(ag.life); /* waits for a restore that is running */
  for (size_t i = 0; i < ag.nlisteners; i++) {
    evconnlistener_free(ag.listeners[i].lev);
    if (ag.listeners[i].lev2) evconnlistener_free(ag.listeners[i].lev2);
  }
  downstream_close_all(&ag);
  agent_splices_abort(&ag);
  if (ag.tunnel_lev) evconnlistener_free(ag.tunnel_lev);
  if (ag.tunnel_lev2) evconnlistener_free(ag.tunnel_lev2);
  tunnels_free_all(&ag);
  for (size_t i = 0; i < ag.nlisteners; i++) pool_clear(&ag.listeners[i].pool);
  status_stop(&ag);
  event_free(sigint);
  event_free(sigterm);
  event_free(ag.sweep);
  event_free(ag.drain_timer);
  event_free(ag.exit_poll);
  event_free(ag.accept_backoff);
  metrics_free(&ag.stats);
  route_table_free(ag.routes);
  SSL_CTX_free(ssl);
  evbuffer_free(ag.scratch);
  evdns_base_free(ag.dns, 0);
  event_base_free(ag.base);
  log_info("stopped");
  return rc;
}
