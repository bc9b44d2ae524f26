/* propagate.h: the developer's own outbound HTTP/1.x requests keep the route.
 *
 * When alice's local api calls `store` through one of kbridge's outbound
 * listeners, the call must carry her route so that a route she (or a colleague)
 * holds on `store` is honoured, exactly as if the request had gone through the
 * real api pod and the app propagated the header. This is a splice filter on
 * the local side of each outbound stream: a request head that names no route
 * of its own gets two lines before its blank line,
 *
 *   kubernetes-route-as: alice
 *   baggage: kbridge-route=alice
 *
 * (a second baggage line is the same list as one more member on the first, RFC
 * 9110 5.3; members the app set are kept). A head that names a route already,
 * by the header or a baggage member, whichever key, is left alone. Requests are
 * parsed with llhttp, one at a time on keep-alive connections, pipelined or not;
 * bodies (Content-Length or chunked) pass unchanged. After an upgrade or CONNECT
 * (WebSocket, a tunnel through an HTTP proxy), after bytes that are not an
 * HTTP/1.x request (TLS, HTTP/2, a database protocol), after a head over
 * PROPAGATE_HEAD_MAX, and for what is left when the connection ends inside a
 * head, every byte passes unchanged: the filter never drops or reorders bytes. */
#ifndef KB_PROPAGATE_H
#define KB_PROPAGATE_H

#include <stdint.h>

#include "splice.h"

#define PROPAGATE_HEAD_MAX (64 * 1024)

/* Counters of one proxy, shared by its filters (single-threaded). */
struct propagate_stats {
  uint64_t requests; /* request heads seen */
  uint64_t injected; /* ... that got the route */
  uint64_t own;      /* ... that named a route already (left alone) */
  uint64_t raw;      /* connections passed through unparsed from some point on */
};

/* A filter for one outbound connection (what: names it in logs, e.g.
 * "forward 127.1.0.3:8080 -> store.shop"). key must be a valid route key.
 * stats may be NULL. Returns a filter whose fn is NULL when out of memory. */
struct splice_filter propagate_filter(const char *key, const char *what,
                                      struct propagate_stats *stats);

#endif
