/* upstream.c: TCP connections and tunnel streams behind one interface.
 *
 * TCP connects resolve with evdns (names) or at once (literals), then connect()
 * a non-blocking socket ourselves, so the errno of a refused connection is
 * known exactly (libevent loses it on an immediate refusal), and hand the
 * connecting socket to a bufferevent. Every failure is reported through the
 * event callback from the event loop, never from inside the constructor. */
#include "upstream.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>

#include "addr.h"
#include "agent.h"
#include "log.h"
#include "splice.h"
#include "tunnel.h"

/* Report what to the user as the last thing done with u (the user may free u). */
static void notify(struct upstream *u, int what) {
  if (u->ev) u->ev(u, what, u->arg);
}

static void fail_later(struct upstream *u, enum upstream_fail f, const char *why) {
  u->fail = f;
  snprintf(u->err, sizeof u->err, "%s", why);
  event_active(u->defer, EV_TIMEOUT, 0);
}

static void defer_cb(evutil_socket_t fd, short what, void *arg) {
  struct upstream *u = arg;
  notify(u, UPSTREAM_EV_ERROR);
}

/* --- TCP -------------------------------------------------------------------- */

static void tcp_read(struct bufferevent *bev, void *arg) {
  struct upstream *u = arg;
  if (u->rd) splice_read_more(bev, u->read_max); /* 4 KiB reads otherwise */
  if (u->rd) u->rd(u, u->arg);
}

/* libevent wrote: once the output is empty, back to direct writes (see
 * upstream_write), then tell the user there is room. */
static void tcp_write(struct bufferevent *bev, void *arg) {
  struct upstream *u = arg;
  if (u->connected && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
    bufferevent_disable(bev, EV_WRITE);
  if (u->connected) notify(u, UPSTREAM_EV_WRITABLE);
}

static void tcp_event(struct bufferevent *bev, short what, void *arg) {
  struct upstream *u = arg;
  int e = EVUTIL_SOCKET_ERROR();
  if (what & BEV_EVENT_CONNECTED) {
    u->connected = 1;
    bufferevent_set_timeouts(bev, NULL, NULL);
    int one = 1;
    setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
      bufferevent_disable(bev, EV_WRITE); /* direct writes from now on (upstream_write) */
    notify(u, UPSTREAM_EV_CONNECTED);
    return;
  }
  if (what & BEV_EVENT_EOF) {
    notify(u, UPSTREAM_EV_EOF);
    return;
  }
  if (!u->connected) {
    u->fail = UPSTREAM_FAIL_CONNECT;
    if (what & BEV_EVENT_TIMEOUT) {
      snprintf(u->err, sizeof u->err, "connection timed out");
    } else {
      int soerr = 0;
      socklen_t len = sizeof soerr;
      if (getsockopt(bufferevent_getfd(bev), SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 && soerr)
        e = soerr;
      snprintf(u->err, sizeof u->err, "%s", e ? strerror(e) : "connection failed");
    }
  } else {
    u->fail = UPSTREAM_FAIL_IO;
    snprintf(u->err, sizeof u->err, "%s",
             (what & BEV_EVENT_TIMEOUT) ? "timed out" : (e ? strerror(e) : "connection error"));
  }
  notify(u, UPSTREAM_EV_ERROR);
}

static void resolved(int result, struct evutil_addrinfo *res, void *arg) {
  struct upstream *u = arg;
  u->dns_req = NULL;
  u->resolving = 0;
  if (result == EVUTIL_EAI_CANCEL) { /* upstream_free() while resolving: finish the free */
    if (res) evutil_freeaddrinfo(res);
    bufferevent_free(u->bev);
    event_free(u->defer);
    free(u);
    return;
  }
  if (result != 0 || !res) {
    fail_later(u, UPSTREAM_FAIL_DNS, evutil_gai_strerror(result));
    if (res) evutil_freeaddrinfo(res);
    return;
  }
  int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    fail_later(u, UPSTREAM_FAIL_CONNECT, strerror(errno));
    evutil_freeaddrinfo(res);
    return;
  }
  int r = connect(fd, res->ai_addr, res->ai_addrlen);
  int e = errno;
  evutil_freeaddrinfo(res);
  if (r < 0 && e != EINPROGRESS) {
    close(fd);
    fail_later(u, UPSTREAM_FAIL_CONNECT, strerror(e));
    return;
  }
  /* fd is already connecting: libevent waits for writability and reports
   * CONNECTED or ERROR. Bytes written before this are in the output buffer. */
  bufferevent_setfd(u->bev, fd);
  struct timeval tv = {u->ag->opt->connect_timeout_ms / 1000,
                       (u->ag->opt->connect_timeout_ms % 1000) * 1000};
  bufferevent_set_timeouts(u->bev, NULL, &tv);
  if (bufferevent_socket_connect(u->bev, NULL, 0) < 0) {
    fail_later(u, UPSTREAM_FAIL_CONNECT, "connect failed");
    return;
  }
  bufferevent_enable(u->bev, EV_READ | EV_WRITE);
}

struct upstream *upstream_connect_tcp(struct agent *ag, const struct hostport *hp,
                                      upstream_read_cb rd, upstream_event_cb ev, void *arg) {
  struct upstream *u = calloc(1, sizeof *u);
  if (!u) return NULL;
  u->kind = UPSTREAM_TCP;
  u->ag = ag;
  u->rd = rd;
  u->ev = ev;
  u->arg = arg;
  u->defer = event_new(ag->base, -1, 0, defer_cb, u);
  u->bev = bufferevent_socket_new(ag->base, -1, BEV_OPT_CLOSE_ON_FREE);
  if (!u->defer || !u->bev) {
    if (u->defer) event_free(u->defer);
    if (u->bev) bufferevent_free(u->bev);
    free(u);
    return NULL;
  }
  u->read_max = AGENT_HIGH_WATER;
  bufferevent_setcb(u->bev, tcp_read, tcp_write, tcp_event, u);
  bufferevent_setwatermark(u->bev, EV_WRITE, AGENT_LOW_WATER, 0);
  bufferevent_set_max_single_write(u->bev, AGENT_HIGH_WATER); /* default: 16 KiB */
  struct evutil_addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_protocol = IPPROTO_TCP;
  hints.ai_flags = EVUTIL_AI_ADDRCONFIG;
  char port[8];
  snprintf(port, sizeof port, "%u", hp->port);
  /* May call resolved() before returning (literals, /etc/hosts). */
  u->resolving = 1;
  struct evdns_getaddrinfo_request *req =
      evdns_getaddrinfo(ag->dns, hp->host, port, &hints, resolved, u);
  if (u->resolving) u->dns_req = req;
  return u;
}

/* --- tunnel streams ----------------------------------------------------------- */

static void stream_read(struct tunnel_stream *s, void *arg) {
  struct upstream *u = arg;
  if (u->rd) u->rd(u, u->arg);
}

static void stream_event(struct tunnel_stream *s, int what, uint32_t code, const char *err,
                         void *arg) {
  struct upstream *u = arg;
  if (what & TUNNEL_STREAM_CLOSED) {
    switch (code) {
    case FRAME_RESET_REFUSED: u->fail = UPSTREAM_FAIL_REFUSED; break;
    case FRAME_RESET_TIMEOUT: u->fail = UPSTREAM_FAIL_TIMEOUT; break;
    case FRAME_RESET_TUNNEL_LOST: u->fail = UPSTREAM_FAIL_LOST; break;
    default: u->fail = UPSTREAM_FAIL_RESET; break;
    }
    snprintf(u->err, sizeof u->err, "%s", err ? err : frame_reset_name(code));
    notify(u, UPSTREAM_EV_ERROR);
  } else if (what & TUNNEL_STREAM_EOF) {
    notify(u, UPSTREAM_EV_EOF);
  } else if (what & TUNNEL_STREAM_WRITABLE) {
    notify(u, UPSTREAM_EV_WRITABLE);
  }
}

struct upstream *upstream_open_stream(struct agent *ag, struct tunnel *t, uint16_t port,
                                      const char *peer) {
  if (!t) return NULL;
  struct frame_open o;
  memset(&o, 0, sizeof o);
  o.kind = FRAME_OPEN_INBOUND;
  o.port = port;
  snprintf(o.peer, sizeof o.peer, "%s", peer ? peer : "");
  struct upstream *u = calloc(1, sizeof *u);
  if (!u) return NULL;
  u->defer = event_new(ag->base, -1, 0, defer_cb, u);
  u->stream = u->defer ? tunnel_stream_open(t, &o) : NULL;
  if (!u->stream) {
    if (u->defer) event_free(u->defer);
    free(u);
    return NULL;
  }
  u->kind = UPSTREAM_STREAM;
  u->ag = ag;
  u->connected = 1;
  ag->stats.streams_open++;
  tunnel_stream_setcb(u->stream, stream_read, stream_event, u);
  return u;
}

void upstream_setcb(struct upstream *u, upstream_read_cb rd, upstream_event_cb ev, void *arg) {
  u->rd = rd;
  u->ev = ev;
  u->arg = arg;
}

struct evbuffer *upstream_input(struct upstream *u) {
  if (u->kind == UPSTREAM_STREAM) return tunnel_stream_input(u->stream);
  return bufferevent_get_input(u->bev);
}

int upstream_write(struct upstream *u, struct evbuffer *src, size_t n) {
  if (n == 0) return 0;
  if (u->kind == UPSTREAM_TCP) {
    /* Connected and nothing queued (EV_WRITE off): send at once; only what the
     * socket does not take goes through libevent. */
    if (evbuffer_remove_buffer(src, bufferevent_get_output(u->bev), n) != (int)n) return -1;
    if (u->connected && !(bufferevent_get_enabled(u->bev) & EV_WRITE) &&
        splice_write_now(u->bev) > 0)
      bufferevent_enable(u->bev, EV_WRITE);
    return 0;
  }
  if (evbuffer_get_length(src) == n) return tunnel_stream_write_buffer(u->stream, src);
  struct evbuffer *tmp = u->ag->scratch;
  if (evbuffer_remove_buffer(src, tmp, n) != (int)n) {
    evbuffer_drain(tmp, evbuffer_get_length(tmp));
    return -1;
  }
  int r = tunnel_stream_write_buffer(u->stream, tmp);
  evbuffer_drain(tmp, evbuffer_get_length(tmp));
  return r;
}

size_t upstream_pending(const struct upstream *u) {
  if (u->kind == UPSTREAM_STREAM) return tunnel_stream_pending(u->stream);
  return evbuffer_get_length(bufferevent_get_output(u->bev));
}

size_t upstream_high(const struct upstream *u) {
  return u->kind == UPSTREAM_STREAM ? tunnel_stream_high(u->stream) : AGENT_HIGH_WATER;
}

void upstream_pause_read(struct upstream *u, int paused) {
  if (u->kind == UPSTREAM_TCP && u->connected) {
    if (paused)
      bufferevent_disable(u->bev, EV_READ);
    else
      bufferevent_enable(u->bev, EV_READ);
  }
}

void upstream_set_read_max(struct upstream *u, size_t max) {
  if (u->kind != UPSTREAM_TCP || u->read_max == max) return;
  u->read_max = max;
  bufferevent_setwatermark(u->bev, EV_READ, 0, max);
}

static void release_common(struct upstream *u) {
  if (u->kind == UPSTREAM_STREAM) {
    u->ag->stats.streams_open--;
    if (u->at) u->at_release(u->at);
  }
  event_free(u->defer);
  free(u);
}

void upstream_free(struct upstream *u) {
  if (!u) return;
  if (u->dns_req) { /* resolved() finishes the free when the cancel arrives */
    u->rd = NULL;
    u->ev = NULL;
    struct evdns_getaddrinfo_request *req = u->dns_req;
    u->dns_req = NULL;
    evdns_getaddrinfo_cancel(req);
    return;
  }
  if (u->bev) bufferevent_free(u->bev);
  if (u->stream) tunnel_stream_free(u->stream);
  release_common(u);
}

struct splice_end upstream_release(struct upstream *u) {
  struct splice_end e = {.bev = u->bev, .stream = u->stream};
  if (u->bev) bufferevent_setcb(u->bev, NULL, NULL, NULL, NULL);
  if (u->stream) tunnel_stream_setcb(u->stream, NULL, NULL, NULL);
  release_common(u);
  return e;
}
