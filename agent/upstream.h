/* upstream.h: where a request goes, behind one small interface.
 *
 * An upstream is either a TCP connection (to the fallback, or an outbound
 * target) or a tunnel stream to a developer. The HTTP code talks to both the same
 * way: write bytes, look at pending output (for backpressure), read the input
 * buffer, get events. A pooled upstream is an idle one kept for the next request
 * (pool.h).
 *
 * Callbacks: read (new bytes in upstream_input()), and event with one of the
 * UPSTREAM_EV_* values. For UPSTREAM_EV_ERROR, u->fail and u->err say why.
 * Freeing the upstream from inside its callbacks is allowed. */
#ifndef AGENT_UPSTREAM_H
#define AGENT_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include "splice.h"

struct agent;
struct agent_tunnel;
struct bufferevent;
struct evbuffer;
struct event;
struct hostport;
struct pool;
struct tunnel;
struct tunnel_stream;
struct evdns_getaddrinfo_request;

enum upstream_kind { UPSTREAM_TCP, UPSTREAM_STREAM };

#define UPSTREAM_EV_CONNECTED 0x01 /* TCP connect completed (streams are ready at once) */
#define UPSTREAM_EV_EOF 0x02       /* the server finished sending */
#define UPSTREAM_EV_WRITABLE 0x04  /* pending output fell to the low mark */
#define UPSTREAM_EV_ERROR 0x08     /* failed; see fail/err */

enum upstream_fail {
  UPSTREAM_OK = 0,
  UPSTREAM_FAIL_DNS,      /* no address resolves */
  UPSTREAM_FAIL_CONNECT,  /* connect refused / unreachable / timed out */
  UPSTREAM_FAIL_IO,       /* error on an established connection */
  UPSTREAM_FAIL_REFUSED,  /* stream reset REFUSED: developer's local service refused */
  UPSTREAM_FAIL_TIMEOUT,  /* stream reset TIMEOUT */
  UPSTREAM_FAIL_LOST,     /* tunnel under the stream died */
  UPSTREAM_FAIL_RESET,    /* stream reset, other reasons */
};

struct upstream;
typedef void (*upstream_read_cb)(struct upstream *u, void *arg);
typedef void (*upstream_event_cb)(struct upstream *u, int what, void *arg);

struct upstream {
  enum upstream_kind kind;
  struct agent *ag;
  struct bufferevent *bev;           /* TCP */
  struct tunnel_stream *stream;      /* STREAM */
  /* STREAM opened by tunnels_open_stream(): its tunnel, held until the upstream
   * is freed, then given back with at_release (tunnels.h; NULL otherwise). */
  struct agent_tunnel *at;
  void (*at_release)(struct agent_tunnel *at);
  struct evdns_getaddrinfo_request *dns_req; /* TCP, while resolving */
  struct event *defer;               /* delivers connect failures outside the caller */
  int resolving;                     /* TCP: waiting for the address */
  size_t read_max;                   /* TCP: input kept from the server at most (about) */
  int connected;
  int reused;                        /* came out of a pool */
  enum upstream_fail fail;
  char err[256];                     /* human-readable cause of the failure */
  upstream_read_cb rd;
  upstream_event_cb ev;
  void *arg;
  /* pool bookkeeping */
  TAILQ_ENTRY(upstream) link;
  struct pool *pool;                 /* non-NULL while idle in a pool */
  uint64_t idle_since_ms;
};

/* Start a TCP connection to hp (a name is resolved with evdns). Never reports a
 * failure from inside this call: callbacks run later. Returns NULL only when out
 * of memory. */
struct upstream *upstream_connect_tcp(struct agent *ag, const struct hostport *hp,
                                      upstream_read_cb rd, upstream_event_cb ev, void *arg);
/* Open an INBOUND stream on tunnel t (NULL: dead) for a client of service port
 * `port`, peer "ip:port". Returns NULL if the tunnel is not ready or is closing.
 * The agent opens them through tunnels_open_stream(), which holds the tunnel. */
struct upstream *upstream_open_stream(struct agent *ag, struct tunnel *t, uint16_t port,
                                      const char *peer);
void upstream_setcb(struct upstream *u, upstream_read_cb rd, upstream_event_cb ev, void *arg);

struct evbuffer *upstream_input(struct upstream *u);
/* Move n bytes from src to the upstream. 0, or -1 if the upstream cannot take
 * them (closed). */
int upstream_write(struct upstream *u, struct evbuffer *src, size_t n);
size_t upstream_pending(const struct upstream *u);
/* Above this much pending output, stop feeding the upstream until WRITABLE. */
size_t upstream_high(const struct upstream *u);
/* Stop / resume reading from the server (TCP: the socket; streams rely on flow
 * control, so only the callback is held back by the caller). */
void upstream_pause_read(struct upstream *u, int paused);
/* TCP: buffer at most about max bytes read from the server (a read high-water
 * mark; the HTTP relay sets its per-connection share, see client_share()).
 * Streams are bounded by their flow-control window instead. */
void upstream_set_read_max(struct upstream *u, size_t max);
void upstream_free(struct upstream *u);
/* Give up the endpoint for a splice; u is freed. */
struct splice_end upstream_release(struct upstream *u);

#endif
