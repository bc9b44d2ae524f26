/* tunnels.h: developers' TLS tunnels, seen from the agent.
 *
 * A TLS 1.3 listener (client certificates from the service CA only). Each
 * accepted connection becomes a tunnel (TUNNEL_SERVER). Its HELLO is accepted
 * when the key equals the certificate's CN, is a valid label, and (--exclusive)
 * nobody else holds the service; then the key is added to the route table and
 * requests for it flow as INBOUND streams. OUTBOUND streams opened by the
 * developer are dialed here and spliced.
 *
 * An agent_tunnel outlives its tunnel while upstream streams still point to it
 * (a reference count), so a request finishing after the tunnel died never
 * touches freed memory. */
#ifndef AGENT_TUNNELS_H
#define AGENT_TUNNELS_H

#include <stddef.h>
#include <sys/queue.h>

#include "options.h"
#include "pool.h"

struct agent;
struct tunnel;
struct hostport;
struct upstream;

struct agent_tunnel {
  struct agent *ag;
  struct tunnel *t;        /* NULL once the tunnel is dead */
  char key[64];            /* registered route key; "" before HELLO */
  char peer[64];           /* remote address of the TLS connection */
  /* The Kubernetes identity the client certificate was issued to
   * (tls_peer_identity), or "" for a certificate without one (`kbridge certs
   * issue` in direct mode). A key is held by one identity at a time. */
  char identity[256];
  int registered;          /* in the route table */
  int pending;             /* counted in ag->tunnels_pending (before HELLO accepted) */
  int refs;                /* the list entry + upstreams using it */
  /* Idle INBOUND streams for keep-alive reuse, one pool per service listener
   * (index as in ag->listeners): a stream's OPEN told the developer which port
   * the client connected to, so it only serves that port again. */
  struct pool pools[AGENT_MAX_LISTEN];
  TAILQ_ENTRY(agent_tunnel) link;
};

/* Listen on hp for tunnels; bound address into bound. 0, or -1 with err. */
int tunnels_listen(struct agent *ag, const struct hostport *hp, char *bound, size_t boundlen,
                   char *err, size_t errlen);
/* --exclusive: the tunnel of the one developer holding the service, or NULL. */
struct agent_tunnel *tunnels_exclusive(struct agent *ag);
void agent_tunnel_ref(struct agent_tunnel *at);
void agent_tunnel_unref(struct agent_tunnel *at);
/* Open an INBOUND stream on at for a client of service port `port`, peer
 * "ip:port" (upstream_open_stream); the upstream holds at until it is freed.
 * NULL if the tunnel is dead, not ready or closing. */
struct upstream *tunnels_open_stream(struct agent_tunnel *at, uint16_t port, const char *peer);
/* Expire idle pooled streams older than max_idle_ms / drop them all. */
void tunnels_pools_sweep(struct agent_tunnel *at, long max_idle_ms);
void tunnels_pools_clear(struct agent_tunnel *at);
/* The identity holding key now ("" if none or unbound); NULL if nobody holds key. */
const char *tunnels_key_identity(struct agent *ag, const char *key);
/* Shutdown: stop accepting, GOAWAY every tunnel. */
void tunnels_shutdown(struct agent *ag);
/* At exit: free every tunnel without callbacks. */
void tunnels_free_all(struct agent *ag);

#endif
