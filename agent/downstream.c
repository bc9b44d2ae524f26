/* downstream.c: the client connection state machine (see docs/agent.md).
 *
 * A connection starts in SNIFF. If its first bytes look like an HTTP/1.x
 * request line it is served as HTTP (relay.h); otherwise (or if the client
 * says nothing: server-speaks-first protocols) it is spliced raw to the
 * fallback, or with --exclusive to the developer. The connection object, its
 * lifetime and output are client.h. */
#include "downstream.h"

#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "addr.h"
#include "agent.h"
#include "client.h"
#include "log.h"
#include "relay.h"
#include "tunnels.h"
#include "upstream.h"

#define SNIFF_MAX_METHOD 24 /* longer first token: not HTTP */

/* --- raw mode ------------------------------------------------------------------------ */

static void raw_up_event(struct upstream *u, int what, void *arg) {
  struct downstream *ds = arg;
  client_enter(ds);
  if (what & UPSTREAM_EV_CONNECTED) {
    client_hand_to_splice(ds);
  } else if (what & (UPSTREAM_EV_ERROR | UPSTREAM_EV_EOF)) {
    char fb[300];
    metrics_count_error(&ds->ag->stats, u->fail == UPSTREAM_FAIL_DNS ? MERR_FALLBACK_DNS
                                                                       : MERR_FALLBACK_UNREACHABLE);
    log_warn("%s: raw connection: original pods unreachable at %s: %s", ds->peer,
             addr_format(ds->li->fallback, fb, sizeof fb), u->err);
    client_close(ds);
  }
  client_leave(ds);
}

static void go_raw(struct downstream *ds) {
  struct agent *ag = ds->ag;
  evtimer_del(ds->timer);
  bufferevent_disable(ds->bev, EV_READ);
  ag->stats.raw_connections++;
  struct agent_tunnel *at = ag->opt->exclusive ? tunnels_exclusive(ag) : NULL;
  if (at) {
    ds->up = tunnels_open_stream(at, ds->port, ds->peer);
    if (ds->up) {
      log_debug("%s: raw connection to developer %s", ds->peer, at->key);
      client_hand_to_splice(ds);
      return;
    }
  }
  log_debug("%s: raw connection to the fallback", ds->peer);
  ds->state = DS_RAW_CONNECT;
  ds->up = upstream_connect_tcp(ag, ds->li->fallback, NULL, raw_up_event, ds);
  if (!ds->up) client_close(ds);
}

/* First bytes: "TOKEN " where TOKEN is an upper-case method name -> HTTP,
 * except the HTTP/2 connection preface.
 * Returns 1 (HTTP), 0 (raw), -1 (undecided: need more bytes). */
static int sniff(struct evbuffer *in) {
  char buf[SNIFF_MAX_METHOD + 1];
  ev_ssize_t n = evbuffer_copyout(in, buf, sizeof buf);
  for (ev_ssize_t i = 0; i < n; i++) {
    char c = buf[i];
    if (c == ' ') /* "PRI * HTTP/2.0": HTTP/2 prior knowledge (gRPC h2c) is passed raw */
      return i > 0 && !(i == 3 && memcmp(buf, "PRI", 3) == 0);
    if (!((c >= 'A' && c <= 'Z') || c == '-' || c == '_')) return 0;
  }
  return n > SNIFF_MAX_METHOD ? 0 : -1;
}

static void client_read(struct bufferevent *bev, void *arg) {
  struct downstream *ds = arg;
  client_enter(ds);
  struct evbuffer *in = bufferevent_get_input(bev);
  switch (ds->state) {
  case DS_SNIFF: {
    int r = sniff(in);
    if (r == 0) {
      go_raw(ds);
    } else if (r == 1) {
      ds->state = DS_IDLE;
      evtimer_del(ds->timer);
      relay_request(ds);
    }
    break;
  }
  case DS_IDLE:
  case DS_READ_HEAD:
  case DS_FORWARD_BODY:
    splice_read_more(bev, client_share(ds->ag)); /* request bodies: 4 KiB reads otherwise */
    relay_request(ds);
    break;
  case DS_CLOSING:
    evbuffer_drain(in, evbuffer_get_length(in));
    break;
  default:
    break;
  }
  client_leave(ds);
}

static void client_event(struct bufferevent *bev, short what, void *arg) {
  struct downstream *ds = arg;
  client_enter(ds);
  if (what & BEV_EVENT_EOF) {
    ds->client_eof = 1;
    switch (ds->state) {
    case DS_SNIFF:
      if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
        go_raw(ds); /* a few bytes then EOF: let the fallback decide */
      else
        client_close(ds);
      break;
    case DS_READ_HEAD:
    case DS_FORWARD_BODY:
      relay_client_eof(ds); /* aborted, unless buffered bytes wait for the upstream */
      break;
    case DS_WAIT_RESPONSE:
      break; /* half-close after a full request: finish the responses, then close */
    case DS_IDLE:
      client_start_closing(ds); /* flush the last response first */
      break;
    default:
      client_close(ds);
      break;
    }
  } else if (what & BEV_EVENT_TIMEOUT) {
    log_info("%s: client took no bytes for %ld ms (%zu queued, %s): closing", ds->peer,
             ds->ag->opt->send_timeout_ms, evbuffer_get_length(bufferevent_get_output(bev)),
             client_state_names[ds->state]);
    client_close_reason(ds, MCLOSE_SEND_TIMEOUT);
    client_close(ds);
  } else if (what & BEV_EVENT_ERROR) {
    log_debug("%s: client connection error in %s: %s", ds->peer,
              client_state_names[ds->state],
              evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
    client_close_reason(ds, MCLOSE_CLIENT_ERROR);
    client_close(ds);
  }
  client_leave(ds);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg) {
  struct downstream *ds = arg;
  client_enter(ds);
  switch (ds->state) {
  case DS_SNIFF:
    go_raw(ds); /* silent client: a server-speaks-first protocol */
    break;
  case DS_READ_HEAD:
    client_respond_error(ds, 408, "Request Timeout", MERR_HEAD_TIMEOUT,
                         "kbridge: request head not received within %ld ms",
                         ds->ag->opt->header_timeout_ms);
    break;
  case DS_IDLE:
    log_debug("%s: idle keep-alive connection closed", ds->peer);
    client_close_reason(ds, MCLOSE_IDLE_TIMEOUT);
    client_close(ds);
    break;
  case DS_CLOSING:
    if (evbuffer_get_length(bufferevent_get_output(ds->bev)) > 0) {
      log_info("%s: closing connection: client took no bytes for %ld ms", ds->peer,
               ds->ag->opt->send_timeout_ms);
      client_close_reason(ds, MCLOSE_SEND_TIMEOUT);
    }
    client_close(ds);
    break;
  default:
    client_close(ds);
    break;
  }
  client_leave(ds);
}

int downstream_accept(struct agent_listener *li, evutil_socket_t fd, const struct sockaddr *sa) {
  struct agent *ag = li->ag;
  struct downstream *ds = calloc(1, sizeof *ds);
  if (ds) {
    ds->bev = bufferevent_socket_new(ag->base, fd, BEV_OPT_CLOSE_ON_FREE);
    ds->timer = evtimer_new(ag->base, timer_cb, ds);
  }
  if (!ds || !ds->bev || !ds->timer) {
    if (ds && ds->bev)
      bufferevent_free(ds->bev);
    else
      evutil_closesocket(fd);
    if (ds && ds->timer) event_free(ds->timer);
    free(ds);
    log_err("out of memory accepting a connection");
    return -1;
  }
  ds->ag = ag;
  ds->port = li->port;
  ds->li = li;
  ds->state = DS_SNIFF;
  ds->resume_response = relay_response;
  addr_format_sa(sa, ds->peer, sizeof ds->peer);
  addr_ip_sa(sa, ds->client_ip, sizeof ds->client_ip);
  agent_conn_opened(ag);
  TAILQ_INSERT_TAIL(&ag->clients, ds, link);
  int one = 1; /* responses are relayed as they come: no Nagle delay on them */
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  bufferevent_setcb(ds->bev, client_read, client_write, client_event, ds);
  /* Input beyond the high mark is not read (pipelined bytes while a response
   * is relayed, or a body faster than the upstream takes it). */
  size_t share = client_share(ag);
  bufferevent_setwatermark(ds->bev, EV_WRITE, share / 4, 0); /* client_write resumes there */
  bufferevent_setwatermark(ds->bev, EV_READ, 0, share);
  bufferevent_set_max_single_write(ds->bev, AGENT_HIGH_WATER); /* default: 16 KiB per write */
  /* Send timeout: libevent's write timeout runs only while EV_WRITE is on,
   * i.e. while bytes wait for the client (client_flush), and restarts at
   * every write that makes progress. */
  struct timeval st = {ag->opt->send_timeout_ms / 1000, (ag->opt->send_timeout_ms % 1000) * 1000};
  bufferevent_set_timeouts(ds->bev, NULL, &st);
  bufferevent_enable(ds->bev, EV_READ); /* EV_WRITE: see client_flush() */
  client_set_timer(ds, ag->opt->sniff_timeout_ms);
  return 0;
}

void downstream_close_all(struct agent *ag) {
  struct downstream *ds;
  while ((ds = TAILQ_FIRST(&ag->clients))) {
    client_close_reason(ds, MCLOSE_SHUTDOWN);
    client_free(ds);
  }
}
