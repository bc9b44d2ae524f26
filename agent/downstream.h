/* downstream.h: one cluster client's connection to the agent: its entry points.
 *
 * The connection is sniffed (HTTP/1.x or raw TCP), then either spliced as raw
 * bytes to the fallback (or, with --exclusive, to the developer), or served as
 * HTTP: each request routed on its own, forwarded with its body as received,
 * and its response relayed until it ends (relay.h). The top of the three
 * client modules: client.h (the connection object) < relay.h < this. See
 * docs/agent.md for the state machine, the limits and error responses. */
#ifndef AGENT_DOWNSTREAM_H
#define AGENT_DOWNSTREAM_H

#include <stdint.h>

#include <event2/util.h>

struct agent;
struct agent_listener;
struct sockaddr;

/* Take over an accepted socket fd from a client at sa, on listener li (its
 * service port, fallback and fallback pool). Returns 0, or -1 (fd closed) when
 * out of memory. */
int downstream_accept(struct agent_listener *li, evutil_socket_t fd, const struct sockaddr *sa);

/* Free every client connection still owned here (at exit; spliced ones belong
 * to their splice). */
void downstream_close_all(struct agent *ag);

#endif
