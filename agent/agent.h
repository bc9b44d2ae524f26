/* agent.h: the agent's shared context, passed to every module.
 *
 * One struct agent per process: the event base, the DNS resolver, the parsed
 * options, the route table, the counters. Modules get a pointer to it; nothing
 * else is global (besides the log level).
 *
 * The bottom of the agent's layers (docs/agent.md "Modules"): it includes only
 * the leaves (options, metrics) and routing/, and names the higher modules'
 * structs only as pointers. Where the context must reach up (the service
 * listeners when the --max-conns cap changes), it calls a function main.c sets. */
#ifndef AGENT_AGENT_H
#define AGENT_AGENT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include "metrics.h"
#include "options.h"
#include "route.h"

struct event_base;
struct evdns_base;
struct evbuffer;
struct event;
struct evconnlistener;
struct route_table;
struct ssl_ctx_st;
struct agent_tunnel;
struct evhttp;
struct downstream;
struct lifecycle;
struct agent_listener;

/* Write watermarks used on every forwarding path: stop reading the source when
 * the destination has more than AGENT_HIGH_WATER bytes queued, resume when it is
 * back to AGENT_LOW_WATER. */
#define AGENT_HIGH_WATER (256u * 1024u)
#define AGENT_LOW_WATER (64u * 1024u)

struct agent {
  struct event_base *base;
  struct evdns_base *dns;
  const struct agent_options *opt;
  struct route_config rcfg;
  struct route_table *routes;     /* key -> struct agent_tunnel * */
  struct ssl_ctx_st *ssl;         /* tunnel server context (SSL_CTX) */
  struct metrics stats;
  TAILQ_HEAD(, agent_tunnel) tunnels; /* every live tunnel, registered or not */
  TAILQ_HEAD(ds_list, downstream) clients; /* HTTP/sniffing client connections */
  TAILQ_HEAD(sp_list, agent_splice) splices; /* live raw pipes (raw, upgraded, outbound) */
  struct evbuffer *scratch;       /* temporary buffer for one call; always left empty */

  struct agent_listener *listeners; /* [AGENT_MAX_LISTEN], owned by main.c (downstream.h) */
  size_t nlisteners;
  /* Called (by agent_conn_opened/closed) when accept_paused_cap changed: main.c
   * turns the service listeners off or on. */
  void (*accepting_changed)(struct agent *ag);
  int accept_paused_cap;          /* listeners off: --max-conns reached */
  int accept_paused_fd;           /* listeners off: EMFILE/ENFILE back-off */
  struct event *accept_backoff;   /* re-enables after the EMFILE back-off */
  struct event *sweep;            /* 1 s tick: expire idle pooled upstreams */
  struct evconnlistener *tunnel_lev;
  struct evconnlistener *tunnel_lev2; /* the IPv4 socket when "[::]" took two, or NULL */
  size_t tunnels_pending;         /* tunnel connections not past TLS + HELLO yet */
  int tunnel_paused_cap;          /* tunnel listener off: --max-pending-tunnels reached */
  int tunnel_paused_fd;           /* tunnel listener off: EMFILE/ENFILE back-off */
  struct event *tunnel_backoff;   /* re-enables the tunnel listener after the back-off */
  uint64_t tunnel_accept_errors;  /* accept() failures on the tunnel port */
  uint64_t tunnel_errors_logged_at_ms; /* the last "accept failed" log line (rate limit) */
  uint64_t tunnel_errors_unlogged;
  struct evhttp *metrics_http;

  /* --exclusive: the one key allowed, and since when (held while any of its
   * tunnels is registered). */
  char excl_key[DNS_LABEL_MAX + 1];
  char excl_since[32];
  int stopping;
  /* SIGTERM with --drain-seconds: still serving (tunnels, routes, listeners)
   * while the endpoints let go of the pod; /healthz answers 503 and client
   * connections close after their current response. stopping follows. */
  int draining;
  struct event *drain_timer;
  struct event *exit_poll;        /* stopping: exit once no client connection is left */
  double stop_deadline;           /* monotonic: exit by then in any case */
  struct lifecycle *life;         /* the lease (--service), or NULL */
};

/* A client connection was accepted / ended (raw, HTTP or upgraded). Keeps
 * stats.connections_open and the --max-conns cap. */
void agent_conn_opened(struct agent *ag);
void agent_conn_closed(struct agent *ag);

/* Join a and b with a splice (splice.h) the agent keeps track of, so it can be
 * aborted at exit. kind says what to count when it ends: a client connection
 * (bytes + connections_open) or an outbound stream (streams_open). Returns 0, or
 * -1 if the splice could not start. */
enum agent_splice_kind { AGENT_SPLICE_CLIENT, AGENT_SPLICE_OUTBOUND };
struct splice_end;
int agent_splice(struct agent *ag, struct splice_end a, struct splice_end b,
                 enum agent_splice_kind kind);
void agent_splices_abort(struct agent *ag);

#endif
