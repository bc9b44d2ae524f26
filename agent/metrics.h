/* metrics.h: the agent's counters.
 *
 * Counters live in struct metrics inside struct agent; modules bump them
 * directly (single-threaded). Gauges that can be derived (tunnels, routes) are
 * computed when scraped. The page that shows them is status.h. A leaf module:
 * it knows nothing of the rest of the agent. */
#ifndef AGENT_METRICS_H
#define AGENT_METRICS_H

#include <stddef.h>
#include <stdint.h>

enum metrics_error {
  MERR_BAD_REQUEST,        /* 400: malformed request or smuggling shape */
  MERR_HEAD_TOO_LARGE,     /* 431 */
  MERR_HEAD_TIMEOUT,       /* 408 */
  MERR_FALLBACK_UNREACHABLE, /* 502 */
  MERR_FALLBACK_DNS,       /* 503 */
  MERR_ROUTE_FAILED,       /* 502: developer's stream refused / lost */
  MERR_UPSTREAM_CLOSED,    /* upstream closed before a complete response */
  MERR_BAD_RESPONSE,       /* upstream sent an unparsable response */
  MERR_CLIENT_ABORTED,     /* client left mid-request */
  MERR_MAX
};

/* Why a client connection (HTTP, before any splice) ended. */
enum metrics_close {
  MCLOSE_NONE,             /* not decided yet; counted as "done" */
  MCLOSE_DONE,             /* client EOF, Connection: close, HTTP/1.0, close-delimited */
  MCLOSE_IDLE_TIMEOUT,     /* keep-alive idle past --idle-timeout-ms */
  MCLOSE_SEND_TIMEOUT,     /* the client took no bytes for --send-timeout-ms */
  MCLOSE_ERROR_RESPONSE,   /* our own 4xx/5xx answer, then close */
  MCLOSE_UPSTREAM,         /* the upstream failed after the response started */
  MCLOSE_ABORTED,          /* the client left in the middle of a request */
  MCLOSE_CLIENT_ERROR,     /* reset or socket error on the client connection */
  MCLOSE_SHUTDOWN,         /* the agent stopped */
  MCLOSE_MAX
};

struct metrics_route {
  char key[64];
  uint64_t requests;
};

struct metrics {
  uint64_t requests_fallback;
  struct metrics_route *routes; /* per key ever seen; small */
  size_t nroutes, routes_cap;
  uint64_t errors[MERR_MAX];
  uint64_t closes[MCLOSE_MAX]; /* client connections ended, by reason */
  uint64_t bytes_request;  /* client -> upstream, HTTP and raw */
  uint64_t bytes_response; /* upstream -> client */
  uint64_t raw_connections;
  uint64_t upgrades;
  long streams_open;       /* tunnel streams held by the agent */
  long connections_open;   /* client connections */
  long pool_idle;          /* idle upstreams in all pools */
  long tunnels;            /* live tunnel connections */
  uint64_t tunnel_flood_closes; /* tunnels cut off: answers to their frames piled up */
  uint64_t tunnel_read_pauses;  /* times a tunnel was not read: its output was full */
};

/* Count one request routed to key (NULL/"" = fallback). */
void metrics_count_request(struct metrics *m, const char *key);
void metrics_count_error(struct metrics *m, enum metrics_error e);
void metrics_free(struct metrics *m);

#endif
