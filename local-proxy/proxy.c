/* proxy.c: `kbridge proxy` (see proxy.h): the tunnels to the agent and the run;
 * the streams they carry are proxy_streams.c's, the shared state proxy_internal.h.
 *
 * Objects, all owned by struct proxy and living on one event base:
 *   slot     one tunnel connection to the agent, with its own reconnect backoff
 *   dial     an inbound stream waiting for the TCP connect to the local process;
 *            once connected, stream and socket go to a splice, which owns them
 *   forward  a local listener whose connections become outbound streams
 * Addresses (--agent, --local-host, --forward listen addresses) are resolved once
 * at start-up; a name with several addresses is tried address by address. */
#include "proxy.h"
#include "proxy_internal.h"

#include <netinet/tcp.h>
#include <pwd.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/bufferevent_ssl.h>
#include <event2/listener.h>
#include <openssl/rand.h>

#include "heap.h"
#include "tls.h"

#define CFG_OFF(field) offsetof(struct proxy_config, field)
static const struct opt_def proxy_opts[] = {
    {"agent", OPT_HOSTPORT, CFG_OFF(agent), 0, 1, NULL, NULL, 0, 0,
     .help = "the agent's tunnel address (a port-forward on localhost, a LoadBalancer, ...)"},
    {"tls-dir", OPT_DIR, CFG_OFF(tls_dir), 0, 1, NULL, NULL, 0, 0,
     .help = "directory with ca.crt, KEY.crt and KEY.key (see kbridge certs)"},
    {"route-as", OPT_KEY, CFG_OFF(key), 0, 1, NULL, NULL, 0, 0,
     .help = "your route key; DIR/KEY.crt must be issued for it"},
    {"local-port", OPT_PORT, CFG_OFF(local_port), 0, 1, NULL, NULL, 0, 0,
     .help = "port your local process listens on"},
    {"local-host", OPT_HOST, CFG_OFF(local_host), 0, 0, "127.0.0.1", NULL, 0, 0,
     .help = "host your local process listens on"},
    {"tunnels", OPT_INT, CFG_OFF(tunnels), 0, 0, "1", NULL, 1, 64,
     .help = "parallel tunnel connections to the agent"},
    {"forward", OPT_FORWARD, CFG_OFF(forwards), 0, 0, NULL, NULL, 0, 0,
     .help = "listen on LADDR:LPORT (port 0: any free port) and connect each connection to "
             "HOST:PORT from inside the cluster"},
    {"exclusive", OPT_FLAG, CFG_OFF(exclusive), 0, 0, NULL, NULL, 0, 0,
     .help = "ask for all of the service's traffic, not only requests for your key"},
    {"http-proxy", OPT_ADDR, CFG_OFF(http_proxy), 0, 0, NULL, NULL, 0, 0,
     .help = "listen on LADDR:LPORT (port 0: any free port) as an HTTP (CONNECT and http:// "
             "URLs) and SOCKS5 proxy whose targets are dialled from inside the cluster"},
    {"no-propagate", OPT_FLAG, CFG_OFF(no_propagate), 0, 0, NULL, NULL, 0, 0,
     .help = "do not add your route (kubernetes-route-as and a baggage member) to the HTTP "
             "requests your process sends through --forward listeners"},
    {"force", OPT_FLAG, CFG_OFF(force), 0, 0, NULL, NULL, 0, 0,
     .help = "take the route key over even if another identity holds it (the agent logs it and "
             "closes the other holder's tunnels)"},
    {"log-level", OPT_LOGLEVEL, CFG_OFF(log_level), 0, 0, "info", NULL, 0, 0,
     .help = "error, warn, info or debug (logs go to stderr)"},
};

const struct opt_cmd proxy_cmd = {
    "proxy",
    "Connect to a kbridge-agent and serve your route key from a local process.",
    "Requests the agent routes to KEY arrive over mutually authenticated TLS 1.3 tunnels\n"
    "and are passed to --local-host:--local-port. Lost tunnels reconnect with backoff;\n"
    "the agent refusing the key (not the certificate's, held exclusively by someone\n"
    "else) is final: exit status 1. SIGINT/SIGTERM close the tunnels cleanly (status 0).\n"
    "stdout lines: \"forward LADDR:LPORT -> HOST:PORT\" per listener (the real port),\n"
    "\"proxy LADDR:LPORT\" for --http-proxy,\n"
    "then \"ready: route KEY -> HOST:PORT (...)\" once the first tunnel is registered.",
    proxy_opts,
    .nopts = sizeof proxy_opts / sizeof proxy_opts[0],
};

static void slot_connect(struct slot *sl);
static void proxy_stop(struct proxy *px, int code);

/* ---- helpers ---------------------------------------------------------------- */

int px_resolve(const char *host, int port, int passive, struct resolved *out, size_t *n, char *err,
               size_t errlen) {
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

void px_set_nodelay(evutil_socket_t fd) {
  int one = 1;
  if (fd >= 0) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

struct timeval px_ms_tv(unsigned ms) {
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
  struct timeval tv = px_ms_tv(delay);
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
  static const struct tunnel_cbs cbs = {NULL, on_welcome, px_on_open, on_close};
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
    px_set_nodelay(fd);
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
  for (struct forward *fw = px->added; fw; fw = fw->next)
    if (fw->lev) evconnlistener_disable(fw->lev);
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
        tunnel_goaway(sl->t, FRAME_RESET_LEAVE, code ? "developer proxy giving up" : "developer proxy stopping");
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
  struct timeval tv = px_ms_tv(STOP_GRACE_MS);
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
      px_resolve(cfg->agent.host, cfg->agent.port, 0, px.agent, &px.nagent, err, sizeof err) < 0) {
    log_err("--agent: %s", err);
    return 1;
  }
  if (px_resolve(cfg->local_host, cfg->local_port, 0, px.local, &px.nlocal, err, sizeof err) < 0) {
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
    char target[300];
    struct forward *fw = &px.fwds[i];
    if (px_forward_start(&px, fw, &cfg->forwards.v[i], err, sizeof err) < 0) {
      log_err("--forward %s: %s", addr_format(&cfg->forwards.v[i].target, target, sizeof target),
              err);
      px.exit_code = 1;
      goto out;
    }
    if (cfg->hooks && cfg->hooks->forward_bound) {
      cfg->hooks->forward_bound(cfg->hooks->arg, i, fw->bound);
    } else {
      printf("forward %s\n", fw->name);
      fflush(stdout);
    }
  }
  if (cfg->http_proxy.host[0]) {
    char bound[300];
    if (!proxy_listen_http(&px, &cfg->http_proxy, bound, sizeof bound, err, sizeof err)) {
      log_err("--http-proxy: %s", err);
      px.exit_code = 1;
      goto out;
    }
    if (!(cfg->hooks && cfg->hooks->forward_bound)) {
      printf("proxy %s\n", bound);
      fflush(stdout);
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
  if (cfg->hooks && cfg->hooks->stopped && px.base) cfg->hooks->stopped(cfg->hooks->arg, &px);
  /* Tear down in dependency order; freeing tunnels ends their streams, whose
   * splices then free their sockets on the next loop pass. */
  while (px.dials) px_dial_free(px.dials);
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
  for (size_t i = 0; px.fwds && i < cfg->forwards.n; i++) px_forward_stop(&px.fwds[i]);
  while (px.added) proxy_unlisten(&px, px.added);
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
