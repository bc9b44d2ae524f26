/* client.c: a client connection's lifetime and output (client.h).
 *
 * Closing safely: every entry point holds ds->busy; client_close() only marks
 * the connection dead and the outermost entry point frees it on the way out. */
#include "client.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "agent.h"
#include "http_head.h"
#include "log.h"
#include "splice.h"
#include "upstream.h"

#define LINGER_MS 1000 /* after our last byte: read and discard, then close */

const char *const client_state_names[] = {"sniff",     "raw-connect", "idle",     "read-head",
                                          "forward-body", "wait-response", "upgraded", "closing"};

/* --- lifetime ------------------------------------------------------------------ */

void client_enter(struct downstream *ds) { ds->busy++; }

/* The outermost entry point writes what it queued for the client itself. */
void client_leave(struct downstream *ds) {
  if (ds->busy == 1 && !ds->dead && !ds->handed_off) client_flush(ds);
  if (--ds->busy == 0 && ds->dead) client_free(ds);
}

/* Remember why the connection ends (the first reason given wins). */
void client_close_reason(struct downstream *ds, enum metrics_close r) {
  if (!ds->close_reason) ds->close_reason = (uint8_t)r;
}

/* Response buffering per connection: the --buffer-budget shared by the open
 * connections, between 4 and 32 KiB. Used for the client's output (upstream
 * reads pause above it), the upstream's input and the client's input, so a
 * client that never reads holds a few of these, not 512 KiB, and the total
 * stays near the budget however many connect. */
size_t client_share(const struct agent *ag) {
  long conns = ag->stats.connections_open > 0 ? ag->stats.connections_open : 1;
  size_t share = (size_t)ag->opt->buffer_budget / (size_t)conns;
  if (share < 4096) share = 4096;
  if (share > 32768) share = 32768;
  return share;
}

void client_close(struct downstream *ds) {
  ds->dead = 1;
  if (ds->busy == 0) client_free(ds);
}

void client_free(struct downstream *ds) {
  if (!ds->handed_off) TAILQ_REMOVE(&ds->ag->clients, ds, link);
  if (ds->timer) event_free(ds->timer);
  if (ds->flush_ev) event_free(ds->flush_ev);
  if (ds->up) upstream_free(ds->up);
  if (ds->bev && !ds->handed_off) bufferevent_free(ds->bev);
  if (ds->head_init) http_head_free(&ds->head);
  free(ds->req);
  free(ds->resp);
  if (!ds->handed_off) {
    ds->ag->stats.closes[ds->close_reason]++;
    agent_conn_closed(ds->ag);
  }
  free(ds);
}

void client_set_timer(struct downstream *ds, long ms) {
  struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
  evtimer_add(ds->timer, &tv);
}

/* Stop serving: queue nothing more, flush what is queued, then half-close and
 * linger (read and discard) so the client sees our last bytes rather than a
 * reset caused by unread request bytes. */
void client_start_closing(struct downstream *ds) {
  if (ds->up) {
    upstream_free(ds->up);
    ds->up = NULL;
  }
  ds->state = DS_CLOSING;
  evtimer_del(ds->timer);
  bufferevent_disable(ds->bev, EV_READ);
  if (evbuffer_get_length(bufferevent_get_output(ds->bev)) == 0) {
    shutdown(bufferevent_getfd(ds->bev), SHUT_WR);
    struct evbuffer *in = bufferevent_get_input(ds->bev);
    evbuffer_drain(in, evbuffer_get_length(in));
    bufferevent_enable(ds->bev, EV_READ);
    client_set_timer(ds, LINGER_MS);
  } else {
    /* client_write() continues when the output is flushed; a client that
     * takes nothing meets the send timeout (here and on the bufferevent) */
    client_set_timer(ds, ds->ag->opt->send_timeout_ms);
  }
}

/* Answer with an error of our own and close. If the response already started
 * there is no way to say anything: the connection is cut (never a hang). */
void client_respond_error(struct downstream *ds, int status, const char *reason,
                          enum metrics_error merr, const char *fmt, ...) {
  char body[700];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(body, sizeof body, fmt, ap);
  va_end(ap);
  metrics_count_error(&ds->ag->stats, merr);
  if (ds->resp_started) {
    log_warn("%s: %s (response already started: closing the connection)", ds->peer, body);
    client_close_reason(ds, MCLOSE_UPSTREAM);
    client_close(ds);
    return;
  }
  client_close_reason(ds, MCLOSE_ERROR_RESPONSE);
  log_warn("%s: %d %s", ds->peer, status, body);
  evbuffer_add_printf(
      bufferevent_get_output(ds->bev),
      "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
      "Content-Length: %zu\r\nConnection: close\r\n\r\n%s\n",
      status, reason, strlen(body) + 1, body);
  ds->resp_started = 1;
  client_start_closing(ds);
}

/* --- handing a connection to a splice -------------------------------------------- */

/* Client and upstream become one raw byte pipe (raw mode, or after a 101).
 * Bytes already buffered on either side are forwarded by the splice. */
void client_hand_to_splice(struct downstream *ds) {
  struct upstream *u = ds->up;
  ds->up = NULL;
  evtimer_del(ds->timer);
  bufferevent_setcb(ds->bev, NULL, NULL, NULL, NULL);
  bufferevent_setwatermark(ds->bev, EV_WRITE, 0, 0);
  /* The send timeout stays: a splice turns EV_WRITE on only while bytes wait
   * for the client, so a raw or upgraded client that stops reading is cut
   * after --send-timeout-ms too ("side a: timed out", counted in main.c). */
  struct splice_end a = {.bev = ds->bev};
  struct splice_end b = upstream_release(u);
  ds->handed_off = 1;
  TAILQ_REMOVE(&ds->ag->clients, ds, link);
  ds->state = DS_UPGRADED;
  if (agent_splice(ds->ag, a, b, AGENT_SPLICE_CLIENT) < 0) {
    log_err("%s: cannot start a splice (out of memory)", ds->peer);
    agent_conn_closed(ds->ag);
  }
  client_close(ds);
}

/* --- client bufferevent callbacks -------------------------------------------------- */

/* Writing to the client: the bufferevent's EV_WRITE stays disabled while its
 * output is empty, and the outermost entry point (client_leave) sends what was
 * queued with one sendmsg() (splice_write_now). Only what the socket does not take at once goes
 * through libevent (EV_WRITE enabled until the output is empty again, see
 * client_write). Letting libevent write everything armed and disarmed EV_WRITE
 * around every response: two epoll_ctl and a loop turn per request. Bulk
 * output (SPLICE_WRITE_NOW_MAX and more: a response body arriving a DATA frame
 * per callback) is sent once at the end of the loop turn (client_flush_later),
 * not through libevent's EV_WRITE on the next turn. */
static void client_flush_later(evutil_socket_t fd, short what, void *arg);

void client_flush(struct downstream *ds) {
  for (;;) {
    struct evbuffer *out = bufferevent_get_output(ds->bev);
    size_t len = evbuffer_get_length(out);
    if (len == 0 || (bufferevent_get_enabled(ds->bev) & EV_WRITE)) return;
    if (len >= SPLICE_WRITE_NOW_MAX && ds->state != DS_CLOSING) {
      if (!ds->flush_ev)
        ds->flush_ev = event_new(ds->ag->base, -1, 0, client_flush_later, ds);
      if (!ds->flush_ev) {
        bufferevent_enable(ds->bev, EV_WRITE); /* out of memory: libevent writes */
      } else if (!ds->flush_queued) {
        ds->flush_queued = 1;
        event_active(ds->flush_ev, EV_WRITE, 0);
      }
      return;
    }
    if (splice_write_now(ds->bev) > 0) {
      bufferevent_enable(ds->bev, EV_WRITE); /* the rest, or the error, through libevent */
      return;
    }
    if (ds->state == DS_CLOSING) {
      client_start_closing(ds);
      return;
    }
    if (!ds->wait_client_drain) return;
    ds->wait_client_drain = 0; /* room again: relay more of the response */
    if (ds->up) upstream_pause_read(ds->up, 0);
    ds->resume_response(ds);
    if (ds->dead || ds->handed_off) return;
  }
}

/* The end of the loop turn that queued bulk output: one sendmsg() of all of
 * it; EV_WRITE only for what the socket did not take. Then as client_write. */
static void client_flush_later(evutil_socket_t fd, short what, void *arg) {
  struct downstream *ds = arg;
  client_enter(ds);
  ds->flush_queued = 0;
  if (!ds->dead && !ds->handed_off && !(bufferevent_get_enabled(ds->bev) & EV_WRITE)) {
    if (splice_write_now(ds->bev) > 0) {
      bufferevent_enable(ds->bev, EV_WRITE);
    } else if (ds->state == DS_CLOSING) {
      client_start_closing(ds);
    } else if (ds->wait_client_drain) {
      ds->wait_client_drain = 0; /* room again: relay more of the response */
      if (ds->up) upstream_pause_read(ds->up, 0);
      ds->resume_response(ds);
    }
  }
  client_leave(ds);
}

/* libevent wrote (EV_WRITE enabled by client_flush): at the low mark, resume a
 * paused response; once empty, back to direct writes. */
void client_write(struct bufferevent *bev, void *arg) {
  struct downstream *ds = arg;
  client_enter(ds);
  int empty = evbuffer_get_length(bufferevent_get_output(bev)) == 0;
  if (empty) bufferevent_disable(bev, EV_WRITE);
  if (ds->state == DS_CLOSING) {
    if (empty) client_start_closing(ds);
  } else if (ds->wait_client_drain) {
    ds->wait_client_drain = 0;
    if (ds->up) upstream_pause_read(ds->up, 0);
    ds->resume_response(ds);
  }
  client_leave(ds);
}
