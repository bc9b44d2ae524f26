/* downstream.h: one cluster client's connection to the agent.
 *
 * The connection is sniffed (HTTP/1.x or raw TCP), then either spliced as raw
 * bytes to the fallback (or, with --exclusive, to the developer), or served as
 * HTTP: each request routed on its own, forwarded with its body as received,
 * and its response relayed until it ends. See downstream.c for the state
 * machine and docs/agent.md for the limits and error responses. */
#ifndef AGENT_DOWNSTREAM_H
#define AGENT_DOWNSTREAM_H

#include <stdint.h>

#include <event2/util.h>

#include "pool.h"

struct agent;
struct evconnlistener;
struct hostport;
struct sockaddr;

/* One service port the agent listens on (main.c opens it); its connections are
 * served here. */
struct agent_listener {
  struct agent *ag;
  struct evconnlistener *lev;
  struct evconnlistener *lev2;   /* the IPv4 socket when "[::]" took two (bind.h), or NULL */
  uint16_t port; /* the bound port, told to developers in OPEN frames */
  const struct hostport *fallback; /* where its unrouted traffic goes (--fallback or
                                    * its --port-map entry's) */
  struct pool pool;              /* idle keep-alive connections to that fallback */
};

/* Take over an accepted socket fd from a client at sa, on listener li (its
 * service port, fallback and fallback pool). Returns 0, or -1 (fd closed) when
 * out of memory. */
int downstream_accept(struct agent_listener *li, evutil_socket_t fd, const struct sockaddr *sa);

/* Free every client connection still owned here (at exit; spliced ones belong
 * to their splice). */
void downstream_close_all(struct agent *ag);

#endif
