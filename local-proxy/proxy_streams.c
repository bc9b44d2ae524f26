/* proxy_streams.c: the streams of `kbridge proxy`: inbound (cluster -> the local
 * process: dial it, then splice) and outbound (--forward and proxy_listen()
 * listeners -> streams to HOST:PORT in the cluster, requests given the route
 * by propagate.c). */
#include "proxy_internal.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/bufferevent_ssl.h>
#include <event2/listener.h>

#include "splice.h"
#include "tls.h"

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

void px_link_done(const char *err, size_t a_to_b, size_t b_to_a, void *arg) {
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

void px_dial_free(struct dial *d) {
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
    struct splice_end a = {.bev = bev}, b = {.stream = d->s};
    bufferevent_setcb(bev, NULL, NULL, NULL, NULL);
    bufferevent_set_timeouts(bev, NULL, NULL);
    px_set_nodelay(bufferevent_getfd(bev));
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
    px_dial_free(d);
    if (l == NULL) {
      bufferevent_free(a.bev);
      tunnel_stream_reset(b.stream, FRAME_RESET_INTERNAL, "out of memory");
      tunnel_stream_free(b.stream);
      return;
    }
    splice_new(a, b, px_link_done, l); /* owns both ends now */
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
  px_dial_free(d);
}

/* The stream died while we were still connecting locally. */
static void dial_stream_event(struct tunnel_stream *s, int what, uint32_t code, const char *err,
                              void *arg) {
  struct dial *d = arg;
  if (what & TUNNEL_STREAM_CLOSED) {
    log_debug("stream %u from %s: closed before the local connect finished: %s",
              tunnel_stream_id(s), d->peer, err ? err : "");
    px_dial_free(d);
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
    px_dial_free(d);
    return;
  }
  bufferevent_setcb(d->bev, NULL, NULL, dial_event_cb, d);
  bufferevent_set_timeouts(d->bev, NULL, &tv); /* the write timeout bounds the connect */
  /* Failures, immediate or not, arrive in dial_event_cb (deferred). */
  bufferevent_socket_connect(d->bev, (const struct sockaddr *)&a->ss, (int)a->len);
}

void px_on_open(struct tunnel *t, struct tunnel_stream *s, const struct frame_open *o, void *arg) {
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

struct tunnel *px_pick_tunnel(struct proxy *px) {
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
  struct tunnel *t = px_pick_tunnel(px);
  px_set_nodelay(fd);
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
  struct splice_end a = {.bev = bev}, b = {.stream = s};
  if (!px->cfg->no_propagate) {
    a.filter = propagate_filter(px->cfg->key, fw->name, &px->prop);
    if (!a.filter.fn) log_warn("%s: out of memory: no route propagation", l->what);
  }
  splice_new(a, b, px_link_done, l);
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
  struct timeval tv = px_ms_tv(ACCEPT_PAUSE_MS);
  evtimer_add(fw->resume, &tv);
}

int px_forward_start(struct proxy *px, struct forward *fw, const struct opt_forward *spec,
                     char *err, size_t errlen) {
  struct resolved addrs[MAX_ADDRS];
  size_t n = 0;
  char laddr[300], target[300];
  fw->px = px;
  fw->spec = spec;
  addr_format(&spec->listen, laddr, sizeof laddr);
  addr_format(&spec->target, target, sizeof target);
  if (px_resolve(spec->listen.host, spec->listen.port, 1, addrs, &n, err, errlen) < 0) return -1;
  fw->lev = evconnlistener_new_bind(px->base, fw->http_proxy ? px_http_accept : accept_cb, fw,
                                    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_REUSEABLE,
                                    -1, (const struct sockaddr *)&addrs[0].ss, (int)addrs[0].len);
  if (fw->lev == NULL) {
    int e = errno;
    snprintf(err, errlen, "cannot listen on %s: %s", laddr, strerror(e));
    errno = e;
    return -1;
  }
  fw->resume = evtimer_new(px->base, accept_resume_cb, fw);
  if (fw->resume == NULL) {
    snprintf(err, errlen, "out of memory");
    px_forward_stop(fw);
    errno = ENOMEM;
    return -1;
  }
  evconnlistener_set_error_cb(fw->lev, accept_error_cb);
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(evconnlistener_get_fd(fw->lev), (struct sockaddr *)&ss, &len) == 0)
    addr_format_sa((const struct sockaddr *)&ss, fw->bound, sizeof fw->bound);
  else
    snprintf(fw->bound, sizeof fw->bound, "%s", laddr);
  if (fw->http_proxy)
    snprintf(fw->name, sizeof fw->name, "proxy %s", fw->bound);
  else
    snprintf(fw->name, sizeof fw->name, "%s -> %s", fw->bound, target);
  return 0;
}

void px_forward_stop(struct forward *fw) {
  if (fw->lev) evconnlistener_free(fw->lev);
  if (fw->resume) event_free(fw->resume);
  fw->lev = NULL;
  fw->resume = NULL;
}

static struct forward *listen_any(struct proxy *px, const struct hostport *listen,
                                  const struct hostport *target, int http_proxy, char *bound,
                                  size_t boundlen, char *err, size_t errlen) {
  struct forward *fw = calloc(1, sizeof *fw);
  if (!fw) {
    snprintf(err, errlen, "out of memory");
    errno = ENOMEM;
    return NULL;
  }
  fw->own.listen = *listen;
  if (target) fw->own.target = *target;
  fw->http_proxy = http_proxy;
  if (px_forward_start(px, fw, &fw->own, err, errlen) < 0) {
    int e = errno;
    free(fw);
    errno = e;
    return NULL;
  }
  if (px->stopping) evconnlistener_disable(fw->lev);
  fw->next = px->added;
  if (fw->next) fw->next->prev = fw;
  px->added = fw;
  snprintf(bound, boundlen, "%s", fw->bound);
  return fw;
}

struct forward *proxy_listen(struct proxy *px, const struct hostport *listen,
                             const struct hostport *target, char *bound, size_t boundlen,
                             char *err, size_t errlen) {
  return listen_any(px, listen, target, 0, bound, boundlen, err, errlen);
}

struct forward *proxy_listen_http(struct proxy *px, const struct hostport *listen, char *bound,
                                  size_t boundlen, char *err, size_t errlen) {
  return listen_any(px, listen, NULL, 1, bound, boundlen, err, errlen);
}

void proxy_unlisten(struct proxy *px, struct forward *fw) {
  if (fw->prev)
    fw->prev->next = fw->next;
  else
    px->added = fw->next;
  if (fw->next) fw->next->prev = fw->prev;
  px_forward_stop(fw);
  free(fw);
}
