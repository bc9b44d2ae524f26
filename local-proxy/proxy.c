/* proxy.c: `kbridge proxy` (see proxy.h).
 *
 * Objects, all owned by struct proxy and living on one event base:
 *   slot     one tunnel connection to the agent, with its own reconnect backoff
 *   dial     an inbound stream waiting for the TCP connect to the local process;
 *            once connected, stream and socket go to a splice, which owns them
 *   forward  a local listener whose connections become outbound streams
 * Addresses (--agent, --local-host, --forward listen addresses) are resolved once
 * at start-up; a name with several addresses is tried address by address. */
#include "proxy.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pwd.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <openssl/rand.h>

#include "heap.h"
#include "splice.h"
#include "tls.h"
#include "tunnel.h"

#define BACKOFF_MIN_MS 250
#define BACKOFF_MAX_MS 10000
#define STOP_GRACE_MS 2000      /* how long GOAWAYs may take to flush at exit */
#define AGENT_CONNECT_TIMEOUT_S 10
#define LOCAL_CONNECT_TIMEOUT_S 5
#define ACCEPT_PAUSE_MS 1000    /* listener pause after EMFILE and friends */
#define MAX_ADDRS 8

#define CFG_OFF(field) offsetof(struct proxy_config, field)
static const struct opt_def proxy_opts[] = {
    {"agent", OPT_HOSTPORT, CFG_OFF(agent), 0, 1, NULL, NULL, 0, 0,
     "the agent's tunnel address (a port-forward on localhost, a LoadBalancer, ...)"},
    {"tls-dir", OPT_DIR, CFG_OFF(tls_dir), 0, 1, NULL, NULL, 0, 0,
     "directory with ca.crt, KEY.crt and KEY.key (see kbridge certs)"},
    {"route-as", OPT_KEY, CFG_OFF(key), 0, 1, NULL, NULL, 0, 0,
     "your route key; DIR/KEY.crt must be issued for it"},
    {"local-port", OPT_PORT, CFG_OFF(local_port), 0, 1, NULL, NULL, 0, 0,
     "port your local process listens on"},
    {"local-host", OPT_HOST, CFG_OFF(local_host), 0, 0, "127.0.0.1", NULL, 0, 0,
     "host your local process listens on"},
    {"tunnels", OPT_INT, CFG_OFF(tunnels), 0, 0, "1", NULL, 1, 64,
     "parallel tunnel connections to the agent"},
    {"forward", OPT_FORWARD, CFG_OFF(forwards), 0, 0, NULL, NULL, 0, 0,
     "listen on LADDR:LPORT (port 0: any free port) and connect each connection to "
     "HOST:PORT from inside the cluster"},
    {"exclusive", OPT_FLAG, CFG_OFF(exclusive), 0, 0, NULL, NULL, 0, 0,
     "ask for all of the service's traffic, not only requests for your key"},
    {"force", OPT_FLAG, CFG_OFF(force), 0, 0, NULL, NULL, 0, 0,
     "take the route key over even if another identity holds it (the agent logs it and "
     "closes the other holder's tunnels)"},
    {"log-level", OPT_LOGLEVEL, CFG_OFF(log_level), 0, 0, "info", NULL, 0, 0,
     "error, warn, info or debug (logs go to stderr)"},
};

const struct opt_cmd proxy_cmd = {
    "proxy",
    "Connect to a kbridge-agent and serve your route key from a local process.",
    "Requests the agent routes to KEY arrive over mutually authenticated TLS 1.3 tunnels\n"
    "and are passed to --local-host:--local-port. Lost tunnels reconnect with backoff;\n"
    "the agent refusing the key (not the certificate's, held exclusively by someone\n"
    "else) is final: exit status 1. SIGINT/SIGTERM close the tunnels cleanly (status 0).\n"
    "stdout lines: \"forward LADDR:LPORT -> HOST:PORT\" per listener (the real port),\n"
    "then \"ready: route KEY -> HOST:PORT (...)\" once the first tunnel is registered.",
    proxy_opts,
    sizeof proxy_opts / sizeof proxy_opts[0],
};

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
  const struct opt_forward *spec;
  struct evconnlistener *lev;
  struct event *resume;   /* re-enables the listener after an accept error */
  char name[620];         /* "127.0.0.1:40123 -> store.shop:8080" */
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
  struct forward *fwds;
  struct dial *dials;
  struct event *sigint, *sigterm, *stop_timer;
  unsigned rr;          /* round-robin cursor over slots for outbound streams */
  int announced;        /* the "ready:" line was printed */
  int stopping;
  int exit_code;
};

static void slot_connect(struct slot *sl);
static void proxy_stop(struct proxy *px, int code);

/* ---- helpers ---------------------------------------------------------------- */

/* Resolve host:port into out[] (at most MAX_ADDRS). 0, or -1 with err. */
static int resolve(const char *host, int port, int passive, struct resolved *out, size_t *n,
                   char *err, size_t errlen) {
  struct addrinfo hints, *res = NULL;
  char portstr[8];
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : AI_ADDRCONFIG);
  snprintf(portstr, sizeof portstr, "%d", port);
  int rc = getaddrinfo(host, portstr, &hints, &res);
  if (rc == EAI_BADFLAGS || (rc != 0 && !passive)) { /* AI_ADDRCONFIG hides ::1 offline */
    hints.ai_flags = AI_NUMERICSERV;
    rc = getaddrinfo(host, portstr, &hints, &res);
  }
  if (rc != 0) {
    snprintf(err, errlen, "cannot resolve \"%s\": %s", host, gai_strerror(rc));
    return -1;
  }
  *n = 0;
  for (struct addrinfo *ai = res; ai && *n < MAX_ADDRS; ai = ai->ai_next) {
    if (ai->ai_addrlen > sizeof out[0].ss) continue;
    memcpy(&out[*n].ss, ai->ai_addr, ai->ai_addrlen);
    out[*n].len = (socklen_t)ai->ai_addrlen;
    (*n)++;
  }
  freeaddrinfo(res);
  if (*n == 0) {
    snprintf(err, errlen, "\"%s\" has no usable address", host);
    return -1;
  }
  return 0;
}

/* Small writes (one HTTP head, a WINDOW frame) must leave at once: without this,
 * Nagle's algorithm and delayed ACKs add ~40 ms to request/response exchanges. */
static void set_nodelay(evutil_socket_t fd) {
  int one = 1;
  if (fd >= 0) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static struct timeval ms_tv(unsigned ms) {
  struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
  return tv;
}

static const char *welcome_status_name(uint8_t status) {
  switch (status) {
  case FRAME_WELCOME_OK: return "ok";
  case FRAME_WELCOME_BAD_VERSION: return "protocol version not supported";
  case FRAME_WELCOME_KEY_MISMATCH: return "key differs from the certificate";
  case FRAME_WELCOME_BAD_KEY: return "invalid key";
  case FRAME_WELCOME_CONFLICT: return "conflict";
  }
  return "unknown status";
}

static int slots_ready(const struct proxy *px) {
  int n = 0;
  for (int i = 0; i < px->cfg->tunnels; i++) n += px->slots[i].state == SLOT_READY;
  return n;
}

/* ---- tunnels ---------------------------------------------------------------- */

/* Schedule the next attempt after the current backoff (with jitter: 50-100 %
 * of it, so many proxies restarted together do not hit the agent in step) and
 * double the backoff up to BACKOFF_MAX_MS. */
static void slot_retry_later(struct slot *sl, const char *why) {
  struct proxy *px = sl->px;
  sl->state = SLOT_WAITING;
  if (px->cfg->hooks && px->cfg->hooks->released) px->cfg->hooks->released(px->cfg->hooks->arg, sl);
  unsigned r = 0;
  RAND_bytes((unsigned char *)&r, sizeof r);
  unsigned delay = sl->backoff_ms / 2 + r % (sl->backoff_ms / 2 + 1);
  log_warn("tunnel %d to %s: %s; reconnecting in %u ms", sl->index, px->agent_name, why, delay);
  sl->backoff_ms = sl->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : sl->backoff_ms * 2;
  struct timeval tv = ms_tv(delay);
  evtimer_add(sl->retry, &tv);
}

static void slot_retry_cb(evutil_socket_t fd, short what, void *arg) {
  struct slot *sl = arg;
  if (!sl->px->stopping) slot_connect(sl);
}

static void on_welcome(struct tunnel *t, const struct frame_welcome *w, void *arg) {
  struct slot *sl = arg;
  struct proxy *px = sl->px;
  if (w->status != FRAME_WELCOME_OK) {
    /* Final: retrying cannot change the certificate or the other holder. */
    log_err("agent %s refused route %s (%s): %s", px->agent_name, px->cfg->key,
            welcome_status_name(w->status), w->message[0] ? w->message : "no reason given");
    fprintf(stderr, "kbridge: the agent refused route \"%s\": %s\n", px->cfg->key,
            w->message[0] ? w->message : welcome_status_name(w->status));
    sl->state = SLOT_CLOSING; /* the tunnel closes by itself after a refusal */
    if (px->cfg->hooks && px->cfg->hooks->welcome)
      px->cfg->hooks->welcome(px->cfg->hooks->arg, 0,
                              w->message[0] ? w->message : welcome_status_name(w->status));
    proxy_stop(px, 1);
    return;
  }
  sl->state = SLOT_READY;
  sl->backoff_ms = BACKOFF_MIN_MS;
  if (px->cfg->hooks && px->cfg->hooks->registered)
    px->cfg->hooks->registered(px->cfg->hooks->arg, sl, w->message);
  int ready = slots_ready(px);
  log_info("tunnel %d to %s: registered route %s%s%s", sl->index, px->agent_name, px->cfg->key,
           w->message[0] ? "; agent says: " : "", w->message);
  if (!px->announced) {
    px->announced = 1;
    if (px->cfg->hooks && px->cfg->hooks->welcome) {
      px->cfg->hooks->welcome(px->cfg->hooks->arg, 1, w->message);
    } else {
      printf("ready: route %s -> %s (%d of %d tunnel%s up)\n", px->cfg->key, px->local_name,
             ready, px->cfg->tunnels, px->cfg->tunnels == 1 ? "" : "s");
      fflush(stdout);
    }
  }
}

static void on_close(struct tunnel *t, const char *err, void *arg) {
  struct slot *sl = arg;
  struct proxy *px = sl->px;
  if (sl->t != t) return;
  int was_ready = sl->state == SLOT_READY;
  const char *cerr = NULL;
  if (px->cfg->hooks && px->cfg->hooks->carrier_error && err)
    cerr = px->cfg->hooks->carrier_error(px->cfg->hooks->arg,
                                         bufferevent_get_underlying(tunnel_carrier(t)));
  char errbuf[600];
  if (cerr) {
    snprintf(errbuf, sizeof errbuf, "%s (%s)", err, cerr);
    err = errbuf;
  }
  sl->t = NULL;
  tunnel_free(t); /* deferred by the tunnel until this callback returns */
  if (px->stopping) {
    sl->state = SLOT_DONE;
    for (int i = 0; i < px->cfg->tunnels; i++)
      if (px->slots[i].t != NULL) return;
    event_base_loopexit(px->base, NULL); /* every tunnel closed: done */
    return;
  }
  char why[700];
  snprintf(why, sizeof why, "%s %s", was_ready ? "lost:" : "could not connect:", err);
  if (strstr(err, "certificate") || strstr(err, "alert")) {
    /* TLS refusals are logged as errors: most likely a --tls-dir of another CA. */
    log_err("tunnel %d to %s: TLS failed (%s); is %s the CA directory of this agent?", sl->index,
            px->agent_name, err, px->cfg->tls_dir);
  }
  slot_retry_later(sl, why);
}

static void on_open(struct tunnel *t, struct tunnel_stream *s, const struct frame_open *o,
                    void *arg);

static void slot_start_tls(struct slot *sl, struct bufferevent *bev);

/* A hook's carrier is open (or failed): TLS on top of it, then the tunnel. */
static void slot_carrier_done(struct bufferevent *carrier, const char *err, void *arg) {
  struct slot *sl = arg;
  struct proxy *px = sl->px;
  sl->pending = NULL;
  if (carrier == NULL) {
    char why[700];
    snprintf(why, sizeof why, "could not connect: %s", err ? err : "carrier failed");
    slot_retry_later(sl, why);
    return;
  }
  if (px->stopping) {
    bufferevent_free(carrier);
    sl->state = SLOT_DONE;
    return;
  }
  SSL *ssl = tls_client_ssl_new(px->ssl);
  struct bufferevent *bev =
      ssl ? bufferevent_openssl_filter_new(px->base, carrier, ssl, BUFFEREVENT_SSL_CONNECTING,
                                           BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS)
          : NULL;
  if (bev == NULL) {
    if (ssl) SSL_free(ssl);
    bufferevent_free(carrier);
    slot_retry_later(sl, "out of memory creating the TLS connection");
    return;
  }
  slot_start_tls(sl, bev);
}

/* Phase 2: TCP is up; put TLS on the socket and start the tunnel (which sends
 * HELLO as soon as the handshake allows). TLS and protocol failures come back
 * through on_close. */
static void slot_start_tunnel(struct slot *sl, evutil_socket_t fd) {
  struct proxy *px = sl->px;
  SSL *ssl = tls_client_ssl_new(px->ssl);
  struct bufferevent *bev =
      ssl ? bufferevent_openssl_socket_new(px->base, fd, ssl, BUFFEREVENT_SSL_CONNECTING,
                                           BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS)
          : NULL;
  if (bev == NULL) {
    if (ssl) SSL_free(ssl);
    evutil_closesocket(fd);
    slot_retry_later(sl, "out of memory creating the TLS connection");
    return;
  }
  slot_start_tls(sl, bev);
}

/* Start the tunnel on bev, a TLS bufferevent (on a socket or on a carrier). */
static void slot_start_tls(struct slot *sl, struct bufferevent *bev) {
  struct proxy *px = sl->px;
  static const struct tunnel_cbs cbs = {NULL, on_welcome, on_open, on_close};
  sl->state = SLOT_CONNECTING;
  sl->t = tunnel_new(px->base, bev, TUNNEL_CLIENT, &px->tcfg, &px->hello, &cbs, sl);
  if (sl->t == NULL) /* the tunnel freed bev */
    slot_retry_later(sl, "out of memory creating the tunnel");
}

/* Phase 1 finished: connected (hand the socket to phase 2) or failed (retry). */
static void slot_tcp_event(struct bufferevent *bev, short what, void *arg) {
  struct slot *sl = arg;
  int e = EVUTIL_SOCKET_ERROR();
  evutil_socket_t fd = bufferevent_getfd(bev);
  sl->tcp = NULL;
  if (what & BEV_EVENT_CONNECTED) {
    bufferevent_free(bev); /* opened without CLOSE_ON_FREE: the socket stays open */
    set_nodelay(fd);
    slot_start_tunnel(sl, fd);
    return;
  }
  bufferevent_free(bev);
  if (fd >= 0) evutil_closesocket(fd);
  char why[300];
  if (what & BEV_EVENT_TIMEOUT)
    snprintf(why, sizeof why, "could not connect: no answer within %d s", AGENT_CONNECT_TIMEOUT_S);
  else
    snprintf(why, sizeof why, "could not connect: %s",
             e ? evutil_socket_error_to_string(e) : "connection failed");
  slot_retry_later(sl, why);
}

/* Start one attempt: a plain TCP connect first, so that "connection refused" and
 * timeouts are reported as such rather than as TLS errors. */
static void slot_connect(struct slot *sl) {
  struct proxy *px = sl->px;
  if (px->cfg->hooks && px->cfg->hooks->open) {
    char err[600] = "";
    sl->state = SLOT_DIALING;
    sl->pending = px->cfg->hooks->open(px->cfg->hooks->arg, px->base, slot_carrier_done, sl, err,
                                       sizeof err);
    if (sl->pending == NULL && err[0] == '\0') { /* nothing to open now */
      sl->state = SLOT_IDLE;
      if (px->cfg->hooks->released) px->cfg->hooks->released(px->cfg->hooks->arg, sl);
      log_debug("tunnel %d: idle (no agent pod needs another tunnel)", sl->index);
      return;
    }
    if (sl->pending == NULL) {
      char why[700];
      snprintf(why, sizeof why, "could not connect: %s", err);
      slot_retry_later(sl, why);
    }
    return;
  }
  const struct resolved *a = &px->agent[sl->attempt++ % px->nagent];
  struct timeval tv = {AGENT_CONNECT_TIMEOUT_S, 0};
  char buf[128];
  sl->tcp = bufferevent_socket_new(px->base, -1, BEV_OPT_DEFER_CALLBACKS);
  if (sl->tcp == NULL) {
    slot_retry_later(sl, "out of memory creating a socket");
    return;
  }
  sl->state = SLOT_DIALING;
  bufferevent_setcb(sl->tcp, NULL, NULL, slot_tcp_event, sl);
  bufferevent_set_timeouts(sl->tcp, NULL, &tv); /* the write timeout bounds the connect */
  log_debug("tunnel %d: connecting to %s", sl->index,
            addr_format_sa((const struct sockaddr *)&a->ss, buf, sizeof buf));
  /* Failures, immediate ones included, arrive in slot_tcp_event (deferred). An
   * immediate failure may have closed the socket already: getfd is then -1. */
  bufferevent_socket_connect(sl->tcp, (const struct sockaddr *)&a->ss, (int)a->len);
}

/* ---- inbound: cluster -> local process ----------------------------------------- */

/* Tell connect (hooks->inbound) about an inbound connection. */
static void inbound_news(struct proxy *px, const char *what, const char *peer, unsigned port,
                         const char *error, size_t in, size_t out, double seconds) {
  if (!px->cfg->hooks || !px->cfg->hooks->inbound) return;
  struct proxy_inbound ev = {what, peer, port, error, in, out, seconds};
  px->cfg->hooks->inbound(px->cfg->hooks->arg, &ev);
}

static double since_s(const struct timespec *t0) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (double)(now.tv_sec - t0->tv_sec) + (double)(now.tv_nsec - t0->tv_nsec) / 1e9;
}

static void link_done(const char *err, size_t a_to_b, size_t b_to_a, void *arg) {
  struct link *l = arg;
  /* a is the local socket, b the tunnel stream: b_to_a came from the cluster. */
  if (l->inbound && !l->px->stopping)
    inbound_news(l->px, "closed", l->peer, l->port, err, b_to_a, a_to_b, since_s(&l->t0));
  if (err && !l->px->stopping) /* at exit every idle pooled stream ends this way */
    log_info("%s: ended: %s (%zu bytes out, %zu in)", l->what, err, a_to_b, b_to_a);
  else
    log_debug("%s: done%s%s (%zu bytes out, %zu in)", l->what, err ? ": " : "", err ? err : "",
              a_to_b, b_to_a);
  free(l);
}

static void dial_free(struct dial *d) {
  if (d->prev)
    d->prev->next = d->next;
  else
    d->px->dials = d->next;
  if (d->next) d->next->prev = d->prev;
  if (d->bev) bufferevent_free(d->bev);
  if (d->s) tunnel_stream_free(d->s);
  free(d);
}

static void dial_try(struct dial *d);

static void dial_event_cb(struct bufferevent *bev, short what, void *arg) {
  struct dial *d = arg;
  struct proxy *px = d->px;
  char addr[128];
  addr_format_sa((const struct sockaddr *)&px->local[d->addr].ss, addr, sizeof addr);
  if (what & BEV_EVENT_CONNECTED) {
    struct link *l = malloc(sizeof *l);
    struct splice_end a = {bev, NULL}, b = {NULL, d->s};
    bufferevent_setcb(bev, NULL, NULL, NULL, NULL);
    bufferevent_set_timeouts(bev, NULL, NULL);
    set_nodelay(bufferevent_getfd(bev));
    if (l) {
      memset(l, 0, sizeof *l);
      l->px = px;
      snprintf(l->what, sizeof l->what, "stream %u from %s to %s", tunnel_stream_id(d->s), d->peer,
               addr);
      l->inbound = 1;
      snprintf(l->peer, sizeof l->peer, "%s", d->peer);
      l->port = d->port;
      clock_gettime(CLOCK_MONOTONIC, &l->t0);
    }
    log_debug("stream %u from %s: connected to %s", tunnel_stream_id(d->s), d->peer, addr);
    d->bev = NULL;
    d->s = NULL;
    dial_free(d);
    if (l == NULL) {
      bufferevent_free(a.bev);
      tunnel_stream_reset(b.stream, FRAME_RESET_INTERNAL, "out of memory");
      tunnel_stream_free(b.stream);
      return;
    }
    splice_new(a, b, link_done, l); /* owns both ends now */
    return;
  }
  int e = EVUTIL_SOCKET_ERROR();
  int timeout = (what & BEV_EVENT_TIMEOUT) != 0;
  bufferevent_free(d->bev);
  d->bev = NULL;
  if (d->addr + 1 < px->nlocal) { /* "localhost": ::1 refused, try 127.0.0.1 */
    log_debug("stream %u: %s: %s, trying the next address", tunnel_stream_id(d->s), addr,
              timeout ? "timed out" : evutil_socket_error_to_string(e));
    d->addr++;
    dial_try(d);
    return;
  }
  char reason[400];
  if (timeout)
    snprintf(reason, sizeof reason, "connect to %s timed out after %d s: is your local process "
             "running?", px->local_name, LOCAL_CONNECT_TIMEOUT_S);
  else if (e == ECONNREFUSED)
    snprintf(reason, sizeof reason, "connection refused to %s: is your local process running?",
             px->local_name);
  else
    snprintf(reason, sizeof reason, "cannot connect to %s: %s", px->local_name,
             evutil_socket_error_to_string(e));
  log_warn("request from %s for route %s: %s", d->peer, px->cfg->key, reason);
  inbound_news(px, "failed", d->peer, d->port, reason, 0, 0, 0);
  tunnel_stream_reset(d->s, timeout ? FRAME_RESET_TIMEOUT : FRAME_RESET_REFUSED, reason);
  dial_free(d);
}

/* The stream died while we were still connecting locally. */
static void dial_stream_event(struct tunnel_stream *s, int what, uint32_t code, const char *err,
                              void *arg) {
  struct dial *d = arg;
  if (what & TUNNEL_STREAM_CLOSED) {
    log_debug("stream %u from %s: closed before the local connect finished: %s",
              tunnel_stream_id(s), d->peer, err ? err : "");
    dial_free(d);
  }
  /* EOF and WRITABLE are state the splice reads when it takes the stream. */
}

static void dial_stream_read(struct tunnel_stream *s, void *arg) {
  /* Bytes wait in the stream's input (bounded by its window) for the splice. */
}

static void dial_try(struct dial *d) {
  struct proxy *px = d->px;
  const struct resolved *a = &px->local[d->addr];
  struct timeval tv = {LOCAL_CONNECT_TIMEOUT_S, 0};
  d->bev = bufferevent_socket_new(px->base, -1, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
  if (d->bev == NULL) {
    tunnel_stream_reset(d->s, FRAME_RESET_INTERNAL, "out of memory");
    dial_free(d);
    return;
  }
  bufferevent_setcb(d->bev, NULL, NULL, dial_event_cb, d);
  bufferevent_set_timeouts(d->bev, NULL, &tv); /* the write timeout bounds the connect */
  /* Failures, immediate or not, arrive in dial_event_cb (deferred). */
  bufferevent_socket_connect(d->bev, (const struct sockaddr *)&a->ss, (int)a->len);
}

static void on_open(struct tunnel *t, struct tunnel_stream *s, const struct frame_open *o,
                    void *arg) {
  struct slot *sl = arg;
  struct proxy *px = sl->px;
  if (o->kind != FRAME_OPEN_INBOUND || px->stopping) {
    tunnel_stream_reset(s, FRAME_RESET_REFUSED,
                        px->stopping ? "developer proxy is shutting down"
                                     : "the developer side accepts only inbound streams");
    tunnel_stream_free(s);
    return;
  }
  struct dial *d = calloc(1, sizeof *d);
  if (d == NULL) {
    tunnel_stream_reset(s, FRAME_RESET_INTERNAL, "out of memory");
    tunnel_stream_free(s);
    return;
  }
  d->px = px;
  d->s = s;
  snprintf(d->peer, sizeof d->peer, "%s", o->peer[0] ? o->peer : "?");
  d->port = o->port;
  inbound_news(px, "open", d->peer, d->port, NULL, 0, 0, 0);
  d->next = px->dials;
  if (px->dials) px->dials->prev = d;
  px->dials = d;
  log_debug("stream %u: inbound from %s (service port %u)", tunnel_stream_id(s), d->peer, o->port);
  tunnel_stream_setcb(s, dial_stream_read, dial_stream_event, d);
  dial_try(d);
}

/* ---- outbound: local process -> cluster ----------------------------------------- */

static struct tunnel *pick_tunnel(struct proxy *px) {
  int n = px->cfg->tunnels;
  for (int i = 0; i < n; i++) {
    struct slot *sl = &px->slots[(px->rr + (unsigned)i) % (unsigned)n];
    if (sl->state == SLOT_READY && sl->t && tunnel_ready(sl->t)) {
      px->rr = (px->rr + (unsigned)i + 1) % (unsigned)n;
      return sl->t;
    }
  }
  return NULL;
}

static void accept_cb(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg) {
  struct forward *fw = arg;
  struct proxy *px = fw->px;
  char peer[64];
  addr_format_sa(sa, peer, sizeof peer);
  struct tunnel *t = pick_tunnel(px);
  set_nodelay(fd);
  if (t == NULL) {
    log_warn("forward %s: no tunnel to the agent is up; closing the connection from %s",
             fw->name, peer);
    evutil_closesocket(fd);
    return;
  }
  struct frame_open o;
  memset(&o, 0, sizeof o);
  o.kind = FRAME_OPEN_OUTBOUND;
  o.port = fw->spec->target.port;
  snprintf(o.peer, sizeof o.peer, "%s", peer);
  snprintf(o.target_host, sizeof o.target_host, "%s", fw->spec->target.host);
  struct tunnel_stream *s = tunnel_stream_open(t, &o);
  struct bufferevent *bev =
      s ? bufferevent_socket_new(px->base, fd, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS)
        : NULL;
  struct link *l = bev ? calloc(1, sizeof *l) : NULL;
  if (l == NULL) {
    log_warn("forward %s: cannot open a stream for %s", fw->name, peer);
    if (bev)
      bufferevent_free(bev);
    else
      evutil_closesocket(fd);
    if (s) {
      tunnel_stream_reset(s, FRAME_RESET_INTERNAL, "out of memory");
      tunnel_stream_free(s);
    }
    return;
  }
  l->px = px;
  snprintf(l->what, sizeof l->what, "forward %s: connection from %s (stream %u)", fw->name, peer,
           tunnel_stream_id(s));
  log_debug("%s: opened", l->what);
  struct splice_end a = {bev, NULL}, b = {NULL, s};
  splice_new(a, b, link_done, l);
}

static void accept_resume_cb(evutil_socket_t fd, short what, void *arg) {
  struct forward *fw = arg;
  evconnlistener_enable(fw->lev);
}

/* accept() failed (EMFILE, ENFILE, ENOBUFS...): pause the listener for a second
 * instead of spinning on a connection we cannot take. */
static void accept_error_cb(struct evconnlistener *lev, void *arg) {
  struct forward *fw = arg;
  int e = EVUTIL_SOCKET_ERROR();
  log_warn("forward %s: accept failed: %s; pausing for %d ms", fw->name,
           evutil_socket_error_to_string(e), ACCEPT_PAUSE_MS);
  evconnlistener_disable(lev);
  struct timeval tv = ms_tv(ACCEPT_PAUSE_MS);
  evtimer_add(fw->resume, &tv);
}

static int forward_start(struct proxy *px, struct forward *fw, const struct opt_forward *spec) {
  struct resolved addrs[MAX_ADDRS];
  size_t n = 0;
  char err[400], laddr[300], target[300];
  fw->px = px;
  fw->spec = spec;
  addr_format(&spec->listen, laddr, sizeof laddr);
  addr_format(&spec->target, target, sizeof target);
  if (resolve(spec->listen.host, spec->listen.port, 1, addrs, &n, err, sizeof err) < 0) {
    log_err("--forward %s=%s: %s", laddr, target, err);
    return -1;
  }
  fw->lev = evconnlistener_new_bind(px->base, accept_cb, fw,
                                    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_REUSEABLE,
                                    -1, (const struct sockaddr *)&addrs[0].ss, (int)addrs[0].len);
  if (fw->lev == NULL) {
    log_err("--forward %s=%s: cannot listen on %s: %s", laddr, target, laddr,
            evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
    return -1;
  }
  fw->resume = evtimer_new(px->base, accept_resume_cb, fw);
  if (fw->resume == NULL) return -1;
  evconnlistener_set_error_cb(fw->lev, accept_error_cb);
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  char bound[300];
  if (getsockname(evconnlistener_get_fd(fw->lev), (struct sockaddr *)&ss, &len) == 0)
    addr_format_sa((const struct sockaddr *)&ss, bound, sizeof bound);
  else
    snprintf(bound, sizeof bound, "%s", laddr);
  snprintf(fw->name, sizeof fw->name, "%s -> %s", bound, target);
  if (px->cfg->hooks && px->cfg->hooks->forward_bound) {
    px->cfg->hooks->forward_bound(px->cfg->hooks->arg, (size_t)(fw - px->fwds), bound);
  } else {
    printf("forward %s\n", fw->name);
    fflush(stdout);
  }
  return 0;
}

/* ---- start and stop ------------------------------------------------------------ */

static void stop_timeout_cb(evutil_socket_t fd, short what, void *arg) {
  struct proxy *px = arg;
  log_warn("tunnels did not close within %d ms; exiting anyway", STOP_GRACE_MS);
  event_base_loopexit(px->base, NULL);
}

/* Begin the end: no new connections, GOAWAY on every tunnel; the loop exits when
 * all tunnels have closed or after STOP_GRACE_MS. code is the exit status. */
static void proxy_stop(struct proxy *px, int code) {
  if (code > px->exit_code) px->exit_code = code;
  if (px->stopping) return;
  px->stopping = 1;
  for (size_t i = 0; i < px->cfg->forwards.n; i++)
    if (px->fwds[i].lev) evconnlistener_disable(px->fwds[i].lev);
  int open = 0;
  for (int i = 0; i < px->cfg->tunnels; i++) {
    struct slot *sl = &px->slots[i];
    evtimer_del(sl->retry);
    if (sl->pending) {
      px->cfg->hooks->cancel(px->cfg->hooks->arg, sl->pending);
      sl->pending = NULL;
    }
    if (sl->tcp) {
      evutil_socket_t fd = bufferevent_getfd(sl->tcp);
      bufferevent_free(sl->tcp);
      if (fd >= 0) evutil_closesocket(fd);
      sl->tcp = NULL;
    }
    if (sl->t) {
      if (sl->state != SLOT_CLOSING)
        tunnel_goaway(sl->t, FRAME_RESET_CANCEL, code ? "developer proxy giving up" : "developer proxy stopping");
      sl->state = SLOT_CLOSING;
      open++;
    } else {
      sl->state = SLOT_DONE;
    }
  }
  if (open == 0) {
    event_base_loopexit(px->base, NULL);
    return;
  }
  struct timeval tv = ms_tv(STOP_GRACE_MS);
  evtimer_add(px->stop_timer, &tv);
}

void proxy_shutdown(struct proxy *px, int code) { proxy_stop(px, code); }

void proxy_redial(struct proxy *px, void *slot) {
  struct slot *sl = slot;
  if (px->stopping || sl->state != SLOT_READY || !sl->t) return;
  log_info("tunnel %d: reconnecting to reach another agent pod", sl->index);
  tunnel_goaway(sl->t, FRAME_RESET_CANCEL, "developer proxy moving to another agent pod");
}

void proxy_kick(struct proxy *px) {
  if (px->stopping) return;
  for (int i = 0; i < px->cfg->tunnels; i++)
    if (px->slots[i].state == SLOT_IDLE) slot_connect(&px->slots[i]);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg) {
  struct proxy *px = arg;
  if (px->stopping) {
    log_info("second signal: exiting now");
    event_base_loopexit(px->base, NULL);
    return;
  }
  log_info("%s: closing the tunnels", sig == SIGINT ? "SIGINT" : "SIGTERM");
  proxy_stop(px, 0);
}

/* "user@host pid N": who holds the route, as the agent will show it. */
static void make_label(char *out, size_t len) {
  char host[128] = "?";
  const char *user = getenv("USER");
  struct passwd *pw = user ? NULL : getpwuid(getuid());
  if (user == NULL) user = pw ? pw->pw_name : "?";
  gethostname(host, sizeof host - 1);
  host[sizeof host - 1] = '\0';
  snprintf(out, len, "%.60s@%.120s pid %ld", user, host, (long)getpid());
}

int proxy_run(struct proxy_config *cfg) {
  struct proxy px;
  char err[600];
  memset(&px, 0, sizeof px);
  px.cfg = cfg;
  signal(SIGPIPE, SIG_IGN);

  if (cfg->agent_label)
    snprintf(px.agent_name, sizeof px.agent_name, "%s", cfg->agent_label);
  else
    snprintf(px.agent_name, sizeof px.agent_name, "%s", addr_format(&cfg->agent, err, sizeof err));
  {
    struct hostport lh;
    snprintf(lh.host, sizeof lh.host, "%s", cfg->local_host);
    lh.port = (uint16_t)cfg->local_port;
    addr_format(&lh, px.local_name, sizeof px.local_name);
  }
  if ((cfg->hooks == NULL || cfg->hooks->open == NULL) &&
      resolve(cfg->agent.host, cfg->agent.port, 0, px.agent, &px.nagent, err, sizeof err) < 0) {
    log_err("--agent: %s", err);
    return 1;
  }
  if (resolve(cfg->local_host, cfg->local_port, 0, px.local, &px.nlocal, err, sizeof err) < 0) {
    log_err("--local-host: %s", err);
    return 1;
  }
  if (cfg->ssl_ctx) {
    px.ssl = cfg->ssl_ctx;
    SSL_CTX_up_ref(px.ssl);
  } else {
    px.ssl = tls_client_ctx_from_dir(cfg->tls_dir, cfg->key, err, sizeof err);
  }
  if (px.ssl == NULL) {
    log_err("--tls-dir: %s (certificates for a key are made with: kbridge certs issue %s --key %s)",
            err, cfg->tls_dir, cfg->key);
    return 1;
  }

  heap_keep_buffers(); /* bulk buffers reused, not faulted in again per transfer */
  struct event_config *ecfg = event_config_new();
  /* As the agent's: on and off within a loop turn costs no epoll_ctl. */
  if (ecfg) event_config_set_flag(ecfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
  px.base = ecfg ? event_base_new_with_config(ecfg) : NULL;
  if (ecfg) event_config_free(ecfg);
  px.slots = calloc((size_t)cfg->tunnels, sizeof *px.slots);
  px.fwds = calloc(cfg->forwards.n ? cfg->forwards.n : 1, sizeof *px.fwds);
  if (px.base == NULL || px.slots == NULL || px.fwds == NULL) {
    log_err("out of memory");
    px.exit_code = 1;
    goto out;
  }
  tunnel_config_default(&px.tcfg);
  px.hello.version = FRAME_PROTOCOL_VERSION;
  px.hello.flags = (uint8_t)((cfg->exclusive ? FRAME_HELLO_EXCLUSIVE : 0) |
                             (cfg->force ? FRAME_HELLO_FORCE : 0));
  px.hello.window = px.tcfg.stream_window;
  snprintf(px.hello.key, sizeof px.hello.key, "%s", cfg->key);
  make_label(px.hello.label, sizeof px.hello.label);

  for (size_t i = 0; i < cfg->forwards.n; i++) {
    if (forward_start(&px, &px.fwds[i], &cfg->forwards.v[i]) < 0) {
      px.exit_code = 1;
      goto out;
    }
  }
  px.sigint = evsignal_new(px.base, SIGINT, signal_cb, &px);
  px.sigterm = evsignal_new(px.base, SIGTERM, signal_cb, &px);
  px.stop_timer = evtimer_new(px.base, stop_timeout_cb, &px);
  if (!px.sigint || !px.sigterm || !px.stop_timer || event_add(px.sigint, NULL) < 0 ||
      event_add(px.sigterm, NULL) < 0) {
    log_err("cannot set up signal handling");
    px.exit_code = 1;
    goto out;
  }
  if (cfg->hooks && cfg->hooks->started) cfg->hooks->started(cfg->hooks->arg, &px, px.base);
  log_info("route %s -> %s via agent %s, %d tunnel%s%s (%s)", cfg->key, px.local_name,
           px.agent_name, cfg->tunnels, cfg->tunnels == 1 ? "" : "s",
           cfg->exclusive ? ", exclusive" : "", px.hello.label);
  for (int i = 0; i < cfg->tunnels; i++) {
    struct slot *sl = &px.slots[i];
    sl->px = &px;
    sl->index = i + 1;
    sl->backoff_ms = BACKOFF_MIN_MS;
    sl->attempt = (unsigned)i; /* spread the tunnels over the agent's addresses */
    sl->retry = evtimer_new(px.base, slot_retry_cb, sl);
    if (sl->retry == NULL) {
      log_err("out of memory");
      px.exit_code = 1;
      goto out;
    }
    slot_connect(sl);
  }

  event_base_dispatch(px.base);
  if (px.exit_code == 0 && !px.stopping) px.exit_code = 1; /* the loop ran dry: a bug */

out:
  /* Tear down in dependency order; freeing tunnels ends their streams, whose
   * splices then free their sockets on the next loop pass. */
  while (px.dials) dial_free(px.dials);
  for (int i = 0; px.slots && i < cfg->tunnels; i++) {
    if (px.slots[i].pending) cfg->hooks->cancel(cfg->hooks->arg, px.slots[i].pending);
    if (px.slots[i].tcp) {
      evutil_socket_t fd = bufferevent_getfd(px.slots[i].tcp);
      bufferevent_free(px.slots[i].tcp);
      if (fd >= 0) evutil_closesocket(fd);
    }
    if (px.slots[i].t) tunnel_free(px.slots[i].t);
    if (px.slots[i].retry) event_free(px.slots[i].retry);
  }
  for (size_t i = 0; px.fwds && i < cfg->forwards.n; i++) {
    if (px.fwds[i].lev) evconnlistener_free(px.fwds[i].lev);
    if (px.fwds[i].resume) event_free(px.fwds[i].resume);
  }
  if (px.base) event_base_loop(px.base, EVLOOP_NONBLOCK);
  if (px.sigint) event_free(px.sigint);
  if (px.sigterm) event_free(px.sigterm);
  if (px.stop_timer) event_free(px.stop_timer);
  free(px.slots);
  free(px.fwds);
  if (px.base) event_base_free(px.base);
  SSL_CTX_free(px.ssl);
  return px.exit_code;
}
