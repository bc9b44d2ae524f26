/* tunnel_conn.c: the tunnel's public calls (tunnel.h): a tunnel's life (new,
 * free, GOAWAY), its timers (PING, the dead timer, the handshake timeout) and
 * the calls users make on streams. The top of the tunnel's files: it wires the
 * carrier's callbacks to the read side (tunnel_demux.h) and the write side
 * (tunnel_mux.h). */
#include "tunnel.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/ssl.h>

#include "log.h"
#include "tunnel_demux.h"
#include "tunnel_mux.h"

void tunnel_config_default(struct tunnel_config *cfg) {
  cfg->stream_window = 256u * 1024u;
  cfg->max_streams = 4096;
  cfg->ping_interval_ms = 5000;
  cfg->dead_after_ms = 15000;
  cfg->carrier_high = 256u * 1024u;
  cfg->handshake_timeout_ms = 10000;
}

/* ---- timers -------------------------------------------------------------------------------------- */

static void ping_cb(evutil_socket_t fd, short what, void *arg) {
  struct tunnel *t = arg;
  mux_enter(t);
  if (t->state == TS_READY || t->state == TS_HANDSHAKE) {
    uint8_t op[8];
    uint64_t seq = ++t->ping_seq;
    for (int i = 0; i < 8; i++) op[i] = (uint8_t)(seq >> (56 - 8 * i));
    frame_put_ping(mux_out(t), 0, op);
    t->stats.frames_out++;
  }
  mux_leave(t);
}

/* Fires dead_after after the last read; re-armed for the rest if bytes came since. */
static void dead_cb(evutil_socket_t fd, short what, void *arg) {
  struct tunnel *t = arg;
  mux_enter(t);
  uint64_t idle = mux_now_ms() - t->last_rx_ms;
  if (t->state == TS_CLOSING && idle >= t->cfg.dead_after_ms) {
    mux_die(t, "%s (the peer did not read the GOAWAY)", t->closing_reason);
  } else if (idle >= t->cfg.dead_after_ms && t->read_paused) {
    mux_die(t, "peer did not read for %llu s", (unsigned long long)(idle + 500) / 1000);
  } else if (idle >= t->cfg.dead_after_ms) {
    mux_die(t, "peer silent for %llu s", (unsigned long long)(idle + 500) / 1000);
  } else {
    struct timeval tv = mux_ms_tv(t->cfg.dead_after_ms - idle);
    event_add(t->dead_ev, &tv);
  }
  mux_leave(t);
}

static void hs_cb(evutil_socket_t fd, short what, void *arg) {
  struct tunnel *t = arg;
  mux_enter(t);
  if (t->state == TS_HANDSHAKE)
    mux_die(t, "no %s within %u ms", t->role == TUNNEL_SERVER ? "HELLO" : "WELCOME",
               t->cfg.handshake_timeout_ms);
  mux_leave(t);
}

/* ---- public: tunnel -------------------------------------------------------------------------------- */

struct tunnel *tunnel_new(struct event_base *base, struct bufferevent *carrier,
                          enum tunnel_role role, const struct tunnel_config *cfg,
                          const struct frame_hello *hello, const struct tunnel_cbs *cbs,
                          void *arg) {
  struct tunnel *t = calloc(1, sizeof *t);
  if (!t) {
    bufferevent_free(carrier);
    return NULL;
  }
  t->base = base;
  t->carrier = carrier;
  t->role = role;
  t->state = TS_HANDSHAKE;
  if (cfg)
    t->cfg = *cfg;
  else
    tunnel_config_default(&t->cfg);
  if (t->cfg.stream_window == 0 || t->cfg.stream_window > WINDOW_LIMIT)
    t->cfg.stream_window = 256u * 1024u;
  if (t->cfg.carrier_high < 2 * (FRAME_DATA_CHUNK + FRAME_HEADER_LEN))
    t->cfg.carrier_high = 2 * (FRAME_DATA_CHUNK + FRAME_HEADER_LEN);
  if (cbs) t->cbs = *cbs;
  t->arg = arg;
  t->next_id = role == TUNNEL_CLIENT ? 1 : 2;
  t->map_size = 64;
  t->map = calloc(t->map_size, sizeof *t->map);
  t->sched_ev = event_new(base, -1, 0, mux_sched_cb, t);
  t->ping_ev = event_new(base, -1, EV_PERSIST, ping_cb, t);
  t->dead_ev = event_new(base, -1, 0, dead_cb, t);
  t->hs_ev = event_new(base, -1, 0, hs_cb, t);
  t->reread_ev = event_new(base, -1, 0, demux_reread_cb, t);
  if (!t->map || !t->sched_ev || !t->ping_ev || !t->dead_ev || !t->hs_ev || !t->reread_ev)
    goto fail;
  /* A TLS carrier on a socket: let OpenSSL read up to CARRIER_RBUF bytes per
   * read() (without it: two reads per record, its 5-byte header, then its
   * body). carrier_read_more() drains OpenSSL until it would block, and the
   * read callback runs without a low-water mark, so nothing stays inside
   * OpenSSL unannounced (see also reread_ev). */
  SSL *ssl = bufferevent_openssl_get_ssl(carrier);
  if (ssl && !bufferevent_get_underlying(carrier)) {
    SSL_set_default_read_buffer_len(ssl, CARRIER_RBUF);
    SSL_set_read_ahead(ssl, 1);
    t->read_ahead = 1;
    /* Direct writes, see struct tunnel: the carrier's own output stays
     * empty, so libevent never writes (nor arms EV_WRITE) for us. */
    t->wbuf = evbuffer_new();
    t->flush_ev = event_new(base, -1, 0, mux_flush_cb, t);
    t->wr_ev = event_new(base, bufferevent_getfd(carrier), EV_WRITE, mux_wr_cb, t);
    if (!t->wbuf || !t->flush_ev || !t->wr_ev) goto fail;
  }
  if (role == TUNNEL_CLIENT) {
    if (!hello) goto fail;
    t->hello = *hello;
    t->hello.version = FRAME_PROTOCOL_VERSION;
    t->hello.window = t->cfg.stream_window; /* the window we grant is our config's */
    if (frame_put_hello(mux_out(t), &t->hello) < 0) goto fail;
    t->stats.frames_out++;
  }
  t->last_rx_ms = mux_now_ms();
  t->out_cb = evbuffer_add_cb(mux_out(t), mux_carrier_out_cb, t);
  if (!t->out_cb) goto fail;
  bufferevent_setcb(carrier, demux_carrier_read_cb, mux_carrier_write_cb, demux_carrier_event_cb, t);
  bufferevent_setwatermark(carrier, EV_WRITE, t->cfg.carrier_high / 2, 0);
  bufferevent_set_max_single_read(carrier, 256 * 1024);
  bufferevent_set_max_single_write(carrier, 256 * 1024);
  bufferevent_enable(carrier, EV_READ | EV_WRITE);
  if (t->cfg.handshake_timeout_ms == 0) t->cfg.handshake_timeout_ms = 10000;
  struct timeval hs = mux_ms_tv(t->cfg.handshake_timeout_ms), ping = mux_ms_tv(t->cfg.ping_interval_ms),
                 dead = mux_ms_tv(t->cfg.dead_after_ms);
  event_add(t->hs_ev, &hs);
  if (t->cfg.ping_interval_ms) event_add(t->ping_ev, &ping);
  if (t->cfg.dead_after_ms) event_add(t->dead_ev, &dead);
  return t;
fail:
  t->state = TS_DEAD;
  mux_destroy(t);
  return NULL;
}

/* Best effort, never blocking: hand a plain socket carrier's output (ending with
 * our GOAWAY) to the kernel before the carrier is freed. The bufferevent keeps
 * the start of its output frozen (no drain, no copyout), so the bytes are peeked
 * and sent as they are. Only if everything fits in 16 chains, so the GOAWAY is
 * sent whole or not at all. (A TLS carrier on a socket writes directly, see
 * tunnel_free; a TLS filter, over the port-forward, needs the event loop: there
 * the GOAWAY is usually lost.) */
static void flush_now(struct bufferevent *bev) {
  struct evbuffer *out = bufferevent_get_output(bev);
  evutil_socket_t fd = bufferevent_getfd(bev);
  struct evbuffer_iovec v[16];
  if (fd < 0 || bufferevent_openssl_get_ssl(bev)) return;
  int n = evbuffer_peek(out, -1, NULL, v, 16);
  if (n <= 0 || n > 16) return;
  struct iovec iov[16];
  for (int i = 0; i < n; i++) {
    iov[i].iov_base = v[i].iov_base;
    iov[i].iov_len = v[i].iov_len;
  }
  struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)n};
  if (sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
    log_debug("tunnel: final flush: %s", strerror(errno));
}

void tunnel_free(struct tunnel *t) {
  if (!t || t->free_requested) return;
  t->free_requested = 1;
  mux_enter(t);
  if (t->state != TS_DEAD) {
    if (t->state == TS_READY || t->state == TS_HANDSHAKE) {
      struct evbuffer *out = mux_out(t);
      frame_put_goaway(out, FRAME_RESET_CANCEL, "tunnel closed");
      if (t->wbuf) { /* once, never waiting: as libevent's TLS write would have */
        int blocked;
        char err[300];
        if (mux_direct_flush(t, &blocked, err, sizeof err) < 0)
          log_debug("tunnel: final flush: %s", err);
      } else {
        flush_now(t->carrier);
      }
    }
    t->state = TS_DEAD;
    mux_stop_everything(t);
  }
  mux_orphan_streams(t, "tunnel closed locally");
  mux_leave(t); /* destroys now, or when the outermost callback returns */
}

void tunnel_goaway(struct tunnel *t, uint32_t code, const char *reason) {
  if (t->state == TS_DEAD || t->state == TS_CLOSING) return;
  char why[600];
  frame_put_goaway(mux_out(t), code, reason);
  t->stats.frames_out++;
  snprintf(why, sizeof why, "closed locally (GOAWAY %s): %s", frame_reset_name(code),
           reason ? reason : "");
  mux_enter(t);
  mux_start_closing(t, why);
  mux_leave(t);
}

int tunnel_ready(const struct tunnel *t) { return t->state == TS_READY; }

int tunnel_peer_goaway(const struct tunnel *t, uint32_t *code) {
  if (t->peer_goaway && code) *code = t->peer_goaway_code;
  return t->peer_goaway;
}

const struct frame_hello *tunnel_peer_hello(const struct tunnel *t) {
  return t->role == TUNNEL_SERVER && t->state != TS_HANDSHAKE ? &t->hello : NULL;
}

struct bufferevent *tunnel_carrier(struct tunnel *t) { return t->carrier; }
size_t tunnel_stream_count(const struct tunnel *t) { return t->on_wire; }
void tunnel_set_arg(struct tunnel *t, void *arg) { t->arg = arg; }
void tunnel_get_stats(const struct tunnel *t, struct tunnel_stats *out) { *out = t->stats; }

/* ---- public: streams ----------------------------------------------------------------------------- */

struct tunnel_stream *tunnel_stream_open(struct tunnel *t, const struct frame_open *o) {
  if (t->state != TS_READY || t->next_id > WINDOW_LIMIT) return NULL;
  struct tunnel_stream *s = mux_stream_new(t, t->next_id, 0);
  if (!s) return NULL;
  t->next_id += 2;
  mux_enter(t);
  if (frame_put_open(mux_out(t), s->id, o) < 0) {
    s->user_freed = 1; /* never seen by the peer or the user */
    s->closed = 1;
    t->stats.streams_opened--;
    mux_stream_detach(s);
    s = NULL;
  } else {
    t->stats.frames_out++;
  }
  if (s && t->state == TS_DEAD) { /* a synchronous carrier error killed the tunnel */
    s->user_freed = 1;
    mux_stream_release(s);
    s = NULL;
  }
  mux_leave(t);
  return s;
}

void tunnel_stream_setcb(struct tunnel_stream *s, tunnel_stream_read_cb rd,
                         tunnel_stream_event_cb ev, void *arg) {
  s->rd = rd;
  s->ev = ev;
  s->arg = arg;
}

struct evbuffer *tunnel_stream_input(struct tunnel_stream *s) { return s->in; }

static int can_write(const struct tunnel_stream *s) {
  return s->t && s->on_wire && !s->closed && !s->shut_req && s->t->state == TS_READY;
}

static void after_write(struct tunnel_stream *s) {
  if (evbuffer_get_length(s->out) > s->t->cfg.stream_window) s->above_high = 1;
  if (mux_sched_eligible(s)) {
    mux_sched_push(s->t, s);
    mux_kick(s->t);
  }
}

int tunnel_stream_write(struct tunnel_stream *s, const void *data, size_t len) {
  if (!can_write(s)) return -1;
  if (len && evbuffer_add(s->out, data, len) < 0) return -1;
  after_write(s);
  return 0;
}

int tunnel_stream_write_buffer(struct tunnel_stream *s, struct evbuffer *src) {
  if (!can_write(s)) return -1;
  if (evbuffer_add_buffer(s->out, src) < 0) return -1;
  after_write(s);
  return 0;
}

size_t tunnel_stream_pending(const struct tunnel_stream *s) { return evbuffer_get_length(s->out); }

size_t tunnel_stream_high(const struct tunnel_stream *s) {
  return s->t ? s->t->cfg.stream_window : 256u * 1024u;
}

void tunnel_stream_shutdown(struct tunnel_stream *s) {
  if (s->shut_req || s->closed || !s->t || !s->on_wire) return;
  s->shut_req = 1;
  if (mux_sched_eligible(s)) {
    mux_sched_push(s->t, s);
    mux_kick(s->t);
  }
}

void tunnel_stream_reset(struct tunnel_stream *s, uint32_t code, const char *reason) {
  if (s->closed || !s->on_wire || !s->t) {
    s->closed = 1;
    return;
  }
  struct tunnel *t = s->t;
  mux_enter(t);
  mux_stream_reset_send(s, code, reason);
  mux_leave(t);
}

void tunnel_stream_free(struct tunnel_stream *s) {
  if (!s || s->user_freed) return;
  s->user_freed = 1;
  s->rd = NULL;
  s->ev = NULL;
  evbuffer_remove_cb(s->in, mux_stream_in_cb, s);
  if (s->on_wire && !s->closed && !(s->shut_req && s->remote_eof)) {
    struct tunnel *t = s->t;
    mux_enter(t);
    mux_stream_reset_send(s, FRAME_RESET_CANCEL, "stream closed");
    mux_leave(t); /* the stream is released here or by the outer callback's mux_leave */
    return;
  }
  if (s->on_wire) evbuffer_drain(s->in, evbuffer_get_length(s->in));
  mux_stream_release(s);
}

uint32_t tunnel_stream_id(const struct tunnel_stream *s) { return s->id; }
struct tunnel *tunnel_stream_tunnel(const struct tunnel_stream *s) { return s->t; }
int tunnel_stream_closed(const struct tunnel_stream *s) { return s->closed; }
int tunnel_stream_eof(const struct tunnel_stream *s) { return s->remote_eof; }
