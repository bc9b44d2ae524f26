/* proxy.h: `kbridge proxy`, the developer side of the tunnel.
 *
 * Keeps N mutually authenticated TLS tunnels to the agent, each registered with
 * the developer's route key. Streams the agent opens (cluster requests for the
 * key) are spliced to the developer's local process; local --forward listeners
 * open streams the other way, to addresses inside the cluster. Lost tunnels are
 * reconnected with exponential backoff; a permanent refusal by the agent (key
 * not in the certificate, invalid key, service held exclusively by someone
 * else) ends the program with status 1.
 *
 * stdout carries machine-readable lines (tests and tools wait for them):
 *   forward 127.0.0.1:40123 -> store.shop:8080     once per listener, actual port
 *   ready: route alice -> 127.0.0.1:5000 (1 of 2 tunnels up)   first registration
 * Everything else is logged on stderr. */
#ifndef KB_PROXY_H
#define KB_PROXY_H

#include "log.h"
#include "optparse.h"

struct proxy;
struct event_base;
struct bufferevent;
typedef struct ssl_ctx_st SSL_CTX;

/* One inbound connection's news, for proxy_hooks.inbound. */
struct proxy_inbound {
  const char *what;   /* "open", "failed" or "closed" */
  const char *peer;   /* the cluster client, "10.0.0.5:43210" */
  unsigned port;      /* the Service port it came in on */
  const char *error;  /* "failed": why; "closed": why, or NULL for a clean end */
  size_t bytes_in;    /* "closed": bytes from the cluster client to the local process */
  size_t bytes_out;   /* "closed": bytes back to the cluster client */
  double seconds;     /* "closed": how long it lasted */
};

/* How `kbridge connect` runs the same tunnels over another carrier (the pod
 * port-forward): all NULL for `kbridge proxy`. */
typedef void (*proxy_carrier_done)(struct bufferevent *carrier, const char *err, void *slot);
struct proxy_hooks {
  void *arg;
  /* Start opening a carrier to the agent's tunnel port (NULL: a direct TCP
   * connection to cfg->agent, as kbridge proxy). done(carrier, NULL, slot)
   * or done(NULL, err, slot) is called exactly once, later, unless cancelled.
   * Returns a handle for cancel, or NULL with err (then done is not called):
   * the slot tries again after its back-off; NULL with err "" means no
   * tunnel is wanted now: the slot stays idle until proxy_kick(). */
  void *(*open)(void *arg, struct event_base *base, proxy_carrier_done done, void *slot,
                char *err, size_t errlen);
  void (*cancel)(void *arg, void *handle);
  /* Why a carrier ended, in words, or NULL (called from the tunnel's close). */
  const char *(*carrier_error)(void *arg, struct bufferevent *carrier);
  /* The loop is about to run: the caller may add its own events to base and
   * later call proxy_shutdown(px, code). */
  void (*started)(void *arg, struct proxy *px, struct event_base *base);
  /* The first registration (ok 1) or a final refusal (ok 0), with the agent's
   * message. */
  void (*welcome)(void *arg, int ok, const char *message);
  /* Forward number index (cfg->forwards.v[index]) listens on bound ("127.0.0.1:
   * 40123": the real port), before the loop runs. When set, proxy.c prints no
   * "forward" line (connect reports forwards in its own output). May be NULL. */
  void (*forward_bound)(void *arg, size_t index, const char *bound);
  /* A connection from the cluster for the developer's route: what is "open"
   * (the agent opened a stream), "failed" (the local process could not be
   * reached; error says why) or "closed" (the splice ended; bytes counted).
   * For connect's connection log. May be NULL. */
  void (*inbound)(void *arg, const struct proxy_inbound *ev);
  /* The slot that open() was given has no carrier any more (its tunnel or
   * the attempt ended; it waits for its back-off, or is idle). May be NULL. */
  void (*released)(void *arg, void *slot);
  /* The slot's tunnel registered (WELCOME OK); message is the agent's greeting
   * ("pod NAME"). May be NULL. */
  void (*registered)(void *arg, void *slot, const char *message);
  /* The loop has ended; the base and the proxy_listen() listeners are still
   * there (free what you added to the base now). May be NULL. */
  void (*stopped)(void *arg, struct proxy *px);
};

struct proxy_config {
  struct hostport agent;    /* --agent */
  const char *tls_dir;      /* --tls-dir: ca.crt, KEY.crt, KEY.key */
  char key[OPT_KEY_SIZE];   /* --route-as */
  int local_port;           /* --local-port */
  const char *local_host;   /* --local-host */
  int tunnels;              /* --tunnels */
  struct opt_forwards forwards;
  int exclusive;            /* --exclusive: ask for all of the service's traffic */
  int no_propagate;         /* --no-propagate: outbound requests get no route lines */
  struct hostport http_proxy; /* --http-proxy: the HTTP/SOCKS5 proxy's address (host "": none) */
  int force;                /* HELLO with FRAME_HELLO_FORCE: take the key over */
  enum log_level log_level; /* --log-level */
  /* connect only: */
  const struct proxy_hooks *hooks; /* carrier other than TCP to --agent */
  SSL_CTX *ssl_ctx;         /* client TLS context (borrowed); tls_dir unused */
  const char *agent_label;  /* names the agent in logs */
};

extern const struct opt_cmd proxy_cmd; /* the option table of `kbridge proxy` */

/* Run until SIGINT/SIGTERM (returns 0) or a fatal error (logs it, returns 1). */
int proxy_run(struct proxy_config *cfg);

/* Close the tunnels (GOAWAY) and end proxy_run with status code; from a hook's
 * event in the loop. */
void proxy_shutdown(struct proxy *px, int code);

/* Start every idle tunnel slot now (each calls hooks->open again, which may
 * leave it idle); from a hook's event in the loop. */
void proxy_kick(struct proxy *px);

/* A listener added while the proxy runs (kbridge connect's service
 * listeners): its connections become outbound streams to target, like a
 * --forward's, with the route lines of propagate.h unless --no-propagate.
 * listen's port 0 picks a free port; bound gets the address with the real
 * port. Returns a handle, or NULL with err (errno EADDRINUSE when the
 * address is taken: the caller may try another). From the loop (a hook). */
struct forward;
struct forward *proxy_listen(struct proxy *px, const struct hostport *listen,
                             const struct hostport *target, char *bound, size_t boundlen,
                             char *err, size_t errlen);
/* An HTTP proxy (CONNECT, and absolute-form http:// requests) and a SOCKS5
 * proxy (CONNECT, no authentication) on one port, listen: the target named
 * by each connection is dialled by the agent from inside the cluster, so
 * cluster names (store, store.shop, store.shop.svc.cluster.local, an
 * ExternalName) resolve there; a loopback target (127.0.0.0/8, ::1,
 * localhost) is dialled here (the Service listeners, the local process).
 * Requests get the route lines as on a listener (propagate.h). Returns a
 * handle for proxy_unlisten, or NULL with err. From the loop (a hook). */
struct forward *proxy_listen_http(struct proxy *px, const struct hostport *listen, char *bound,
                                  size_t boundlen, char *err, size_t errlen);
/* Close a proxy_listen() listener and free it; its open connections go on. */
void proxy_unlisten(struct proxy *px, struct forward *fw);

/* Close the registered tunnel of slot (GOAWAY) so that it connects again,
 * after its short back-off: through a Service address it may reach another
 * agent pod. Streams still open on it are cut. */
void proxy_redial(struct proxy *px, void *slot);

#endif
