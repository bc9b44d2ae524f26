/* proxy_internal.h: what the parts of `kbridge proxy` share (private to local-proxy/proxy*.c):
 * struct proxy and the objects it owns (proxy.c has the overview). */
#ifndef KB_PROXY_INTERNAL_H
#define KB_PROXY_INTERNAL_H

#include "proxy.h"

#include <sys/socket.h>
#include <time.h>

#include <event2/util.h>
#include "propagate.h"
#include "tunnel.h"

#define BACKOFF_MIN_MS 250
#define BACKOFF_MAX_MS 10000
#define STOP_GRACE_MS 2000      /* how long GOAWAYs may take to flush at exit */
#define AGENT_CONNECT_TIMEOUT_S 10
#define LOCAL_CONNECT_TIMEOUT_S 5
#define ACCEPT_PAUSE_MS 1000    /* listener pause after EMFILE and friends */
#define MAX_ADDRS 8

struct resolved {
  struct sockaddr_storage ss;
  socklen_t len;
};

struct proxy;

enum slot_state {
  SLOT_WAITING,    /* no tunnel; the backoff timer starts the next attempt */
  SLOT_DIALING,    /* TCP connect under way (tcp set, no tunnel yet) */
  SLOT_CONNECTING, /* TLS handshake + HELLO under way in the tunnel; no WELCOME yet */
  SLOT_READY,      /* registered: carries streams both ways */
  SLOT_CLOSING,    /* shutting down: GOAWAY sent, waiting for on_close */
  SLOT_DONE,       /* no tunnel and none will be made */
  SLOT_IDLE,       /* no tunnel wanted now (the open hook said so); proxy_kick() retries */
};

struct slot {
  struct proxy *px;
  int index;             /* 1-based, for logs */
  enum slot_state state;
  struct tunnel *t;
  struct bufferevent *tcp; /* SLOT_DIALING: the plain socket being connected */
  void *pending;         /* SLOT_DIALING with hooks: the carrier being opened */
  struct event *retry;   /* backoff timer */
  unsigned backoff_ms;   /* next delay; BACKOFF_MIN_MS after a registration */
  unsigned attempt;      /* picks the agent address, round-robin */
};

/* An inbound stream waiting for its local connection. */
struct dial {
  struct proxy *px;
  struct tunnel_stream *s;
  struct bufferevent *bev;
  size_t addr;            /* index into px->local, the address being tried */
  char peer[64];          /* the cluster client, for logs */
  unsigned port;          /* the Service port it came in on */
  struct dial *prev, *next;
};

struct forward {
  struct proxy *px;
  const struct opt_forward *spec; /* a --forward's, or &own */
  struct evconnlistener *lev;
  struct event *resume;   /* re-enables the listener after an accept error */
  char name[620];         /* "127.0.0.1:40123 -> store.shop:8080" */
  char bound[300];        /* the address it listens on, with the real port */
  struct opt_forward own; /* proxy_listen()'s: the spec, owned */
  int http_proxy;         /* proxy_listen_http()'s: an HTTP/SOCKS5 proxy, spec->target unused */
  struct forward *prev, *next; /* proxy_listen()'s, in px->added */
};

/* What a finished splice logs. */
struct link {
  struct proxy *px;
  char what[800];
  int inbound;            /* a cluster connection to the local process (hooks->inbound) */
  char peer[64];
  unsigned port;
  struct timespec t0;
};

struct proxy {
  struct event_base *base;
  struct proxy_config *cfg;
  SSL_CTX *ssl;
  struct tunnel_config tcfg;
  struct frame_hello hello;
  struct resolved agent[MAX_ADDRS], local[MAX_ADDRS];
  size_t nagent, nlocal;
  char agent_name[300], local_name[300];
  struct slot *slots;
  struct forward *fwds;  /* cfg->forwards.n, one per --forward */
  struct forward *added; /* proxy_listen()'s */
  struct propagate_stats prop;
  struct dial *dials;
  struct event *sigint, *sigterm, *stop_timer;
  unsigned rr;          /* round-robin cursor over slots for outbound streams */
  int announced;        /* the "ready:" line was printed */
  int stopping;
  int exit_code;
};

/* proxy.c */
/* Resolve host:port into out[] (at most MAX_ADDRS). 0, or -1 with err. */
int px_resolve(const char *host, int port, int passive, struct resolved *out, size_t *n, char *err,
               size_t errlen);
/* Small writes (one HTTP head, a WINDOW frame) must leave at once: without this,
 * Nagle's algorithm and delayed ACKs add ~40 ms to request/response exchanges. */
void px_set_nodelay(evutil_socket_t fd);
/* ms milliseconds as a struct timeval. */
struct timeval px_ms_tv(unsigned ms);

/* proxy_streams.c */
/* The agent opened an inbound stream (a cluster connection for our key): dial
 * the local process, then splice the two (the tunnel's on_open callback). */
void px_on_open(struct tunnel *t, struct tunnel_stream *s, const struct frame_open *o, void *arg);
/* Unlink d from its proxy and free it with its socket and stream. */
void px_dial_free(struct dial *d);
/* Listen for spec (a --forward, or proxy_listen's); its connections become
 * outbound streams. Sets fw->bound and fw->name. 0, or -1 with err (errno
 * as the failed call left it: EADDRINUSE when the address is taken). */
int px_forward_start(struct proxy *px, struct forward *fw, const struct opt_forward *spec,
                     char *err, size_t errlen);
/* Close fw's listener (connections already accepted go on). */
void px_forward_stop(struct forward *fw);
/* A registered tunnel for an outbound stream, round robin; NULL if none. */
struct tunnel *px_pick_tunnel(struct proxy *px);
/* A splice's done callback for a struct link (arg, freed): logs its end. */
void px_link_done(const char *err, size_t a_to_b, size_t b_to_a, void *arg);

/* proxy_http.c */
/* The HTTP/SOCKS5 proxy's accept callback (fw->http_proxy set). */
void px_http_accept(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
                    int salen, void *arg);

#endif
