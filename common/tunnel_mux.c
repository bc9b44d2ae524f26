/* tunnel_mux.c: the multiplexer: streams, their scheduling onto the carrier,
 * closing and dying (tunnel_mux.h).
 *
 * Write path: control frames (OPEN, WINDOW, RESET, PING, GOAWAY) go straight into
 * the output. DATA and SHUTDOWN go through a round-robin scheduler: a ring of
 * streams that have queued bytes and send window (or a pending SHUTDOWN),
 * served one DATA_CHUNK at a time while the output is below carrier_high; the
 * carrier's write callback (low watermark carrier_high/2) resumes it. New work
 * schedules a deferred event instead of writing at once, so user writes are
 * batched and never reenter the user.
 *
 * Lifetimes: a stream is "on the wire" (in the id map) until both directions are
 * finished or it is reset; it is "held" until the user calls tunnel_stream_free().
 * Its memory goes when both are over. Every libevent entry point brackets its work
 * with mux_enter()/mux_leave(); frees requested while depth > 0 are deferred to
 * mux_leave(), so any callback may free the stream or the tunnel it was called for. */
#include "tunnel_mux.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/bufferevent_ssl.h>
#include <openssl/ssl.h>

#include "log.h"

static int mux_map_grow(struct tunnel *t);
static int mux_map_add(struct tunnel *t, struct tunnel_stream *s);
static struct tunnel_stream *mux_sched_pop(struct tunnel *t);
static void mux_flush_and_continue(struct tunnel *t);
static void mux_output_drained(struct tunnel *t);

/* Leave a callback frame. At depth 0, free what was deferred. Returns 1 if the
 * tunnel itself was freed (the caller must not touch it). */
int mux_leave(struct tunnel *t) {
  if (--t->depth > 0) return 0;
  while (t->garbage) {
    struct tunnel_stream *s = t->garbage;
    t->garbage = s->gnext;
    s->garbage = 0;
    mux_stream_release(s);
  }
  if (t->free_requested) {
    mux_destroy(t);
    return 1;
  }
  return 0;
}



static int mux_map_grow(struct tunnel *t) {
  size_t n = t->map_size * 2;
  struct tunnel_stream **m = calloc(n, sizeof *m);
  if (!m) return -1;
  struct tunnel_stream **old = t->map;
  size_t oldn = t->map_size;
  t->map = m;
  t->map_size = n;
  for (size_t i = 0; i < oldn; i++) {
    for (struct tunnel_stream *s = old[i], *next; s; s = next) {
      next = s->hnext;
      size_t k = mux_slot(t, s->id);
      s->hnext = m[k];
      m[k] = s;
    }
  }
  free(old);
  return 0;
}

static int mux_map_add(struct tunnel *t, struct tunnel_stream *s) {
  if (t->on_wire >= t->map_size && mux_map_grow(t) < 0) return -1;
  size_t k = mux_slot(t, s->id);
  s->hnext = t->map[k];
  t->map[k] = s;
  s->on_wire = 1;
  t->on_wire++;
  if (s->peer_opened) t->peer_streams++;
  return 0;
}

void mux_map_remove(struct tunnel *t, struct tunnel_stream *s) {
  if (!s->on_wire) return;
  for (struct tunnel_stream **pp = &t->map[mux_slot(t, s->id)]; *pp; pp = &(*pp)->hnext) {
    if (*pp == s) {
      *pp = s->hnext;
      break;
    }
  }
  s->hnext = NULL;
  s->on_wire = 0;
  t->on_wire--;
  if (s->peer_opened) t->peer_streams--;
}



void mux_sched_remove(struct tunnel *t, struct tunnel_stream *s) {
  if (!s->in_sched) return;
  if (s->sprev)
    s->sprev->snext = s->snext;
  else
    t->sched_head = s->snext;
  if (s->snext)
    s->snext->sprev = s->sprev;
  else
    t->sched_tail = s->sprev;
  s->sprev = s->snext = NULL;
  s->in_sched = 0;
}

static struct tunnel_stream *mux_sched_pop(struct tunnel *t) {
  struct tunnel_stream *s = t->sched_head;
  if (s) mux_sched_remove(t, s);
  return s;
}


/* ---- stream lifetime ------------------------------------------------------------ */


/* Free the memory if both the wire and the user are done with the stream;
 * deferred while the tunnel is inside a callback. */
void mux_stream_release(struct tunnel_stream *s) {
  if (s->on_wire || !s->user_freed || s->garbage) return;
  struct tunnel *t = s->t;
  if (t && t->depth > 0) {
    s->garbage = 1;
    s->gnext = t->garbage;
    t->garbage = s;
    return;
  }
  if (t) mux_sched_remove(t, s);
  if (t && s->in_all) {
    if (s->aprev)
      s->aprev->anext = s->anext;
    else
      t->all = s->anext;
    if (s->anext) s->anext->aprev = s->aprev;
  }
  evbuffer_free(s->in);
  evbuffer_free(s->out);
  free(s);
}

/* The stream leaves the wire (done both ways or reset): no more frames for it. */
void mux_stream_detach(struct tunnel_stream *s) {
  struct tunnel *t = s->t;
  if (t) {
    mux_map_remove(t, s);
    mux_sched_remove(t, s);
  }
  mux_stream_release(s);
}

struct tunnel_stream *mux_stream_new(struct tunnel *t, uint32_t id, int peer_opened) {
  struct tunnel_stream *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->t = t;
  s->id = id;
  s->peer_opened = peer_opened ? 1 : 0;
  s->in = evbuffer_new();
  s->out = evbuffer_new();
  if (!s->in || !s->out || mux_map_add(t, s) < 0) {
    if (s->in) evbuffer_free(s->in);
    if (s->out) evbuffer_free(s->out);
    free(s);
    return NULL;
  }
  s->send_window = t->peer_window;
  s->recv_window = t->cfg.stream_window;
  evbuffer_add_cb(s->in, mux_stream_in_cb, s);
  s->anext = t->all;
  if (t->all) t->all->aprev = s;
  t->all = s;
  s->in_all = 1;
  t->stats.streams_opened++;
  return s;
}

/* Mark closed, drop queued output and tell the user (unless it already let go).
 * The caller holds the tunnel's depth, so s stays valid across the callback. */
void mux_stream_close_notify(struct tunnel_stream *s, uint32_t code, const char *err) {
  s->closed = 1;
  evbuffer_drain(s->out, evbuffer_get_length(s->out));
  if (!s->user_freed && s->ev) s->ev(s, TUNNEL_STREAM_CLOSED, code, err, s->arg);
}

/* Reset a live stream from our side: RESET frame, then off the wire. */
void mux_stream_reset_send(struct tunnel_stream *s, uint32_t code, const char *reason) {
  struct tunnel *t = s->t;
  s->closed = 1;
  evbuffer_drain(s->out, evbuffer_get_length(s->out));
  if (t && s->on_wire) {
    frame_put_reset(mux_out(t), s->id, code, reason);
    t->stats.frames_out++;
    t->stats.streams_reset++;
  }
  mux_stream_detach(s);
}

/* Both directions finished cleanly? Then the stream leaves the wire. */
void mux_stream_check_done(struct tunnel_stream *s) {
  if (s->on_wire && s->shut_sent && s->remote_eof && evbuffer_get_length(s->out) == 0)
    mux_stream_detach(s);
}

/* The user drained its input: grant the bytes back once a quarter of the window
 * has been consumed, so the peer never waits on small updates. */
void mux_stream_in_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg) {
  struct tunnel_stream *s = arg;
  if (info->n_deleted == 0) return;
  struct tunnel *t = s->t;
  if (!t || !s->on_wire || s->closed || s->remote_eof || t->state == TS_DEAD) return;
  s->consumed += (uint32_t)info->n_deleted;
  if (s->consumed >= t->cfg.stream_window / 4) {
    uint32_t grant = s->consumed;
    s->recv_window += grant;
    s->consumed = 0;
    t->stats.frames_out++;
    mux_enter(t); /* the write may run carrier callbacks synchronously (TLS) */
    frame_put_window(mux_out(t), s->id, grant);
    mux_leave(t);
  }
}

/* ---- dying ------------------------------------------------------------------------ */

/* Every stream loses its tunnel: live ones get CLOSED(TUNNEL_LOST, err). The
 * streams are unlinked one at a time before their callback runs, so a callback
 * may free any stream (or call tunnel_free). */
void mux_orphan_streams(struct tunnel *t, const char *err) {
  char why[600];
  snprintf(why, sizeof why, "tunnel lost: %s", err);
  while (t->all) {
    struct tunnel_stream *s = t->all;
    t->all = s->anext;
    if (t->all) t->all->aprev = NULL;
    s->aprev = s->anext = NULL;
    s->in_all = 0;
    int live = s->on_wire && !s->closed;
    mux_map_remove(t, s);
    mux_sched_remove(t, s);
    if (s->garbage) continue; /* already on the garbage list; freed by mux_leave() */
    s->t = NULL;
    if (live) {
      s->closed = 1;
      evbuffer_drain(s->out, evbuffer_get_length(s->out));
      if (!s->user_freed && s->ev) {
        s->ev(s, TUNNEL_STREAM_CLOSED, FRAME_RESET_TUNNEL_LOST, why, s->arg);
        continue; /* s may be gone now */
      }
    }
    mux_stream_release(s);
  }
}

/* No more timers, scheduling or carrier events. */
void mux_stop_everything(struct tunnel *t) {
  if (t->sched_ev) event_del(t->sched_ev);
  if (t->reread_ev) event_del(t->reread_ev);
  if (t->flush_ev) event_del(t->flush_ev);
  if (t->wr_ev) event_del(t->wr_ev);
  t->flush_queued = 0;
  t->wr_blocked = 0;
  if (t->ping_ev) event_del(t->ping_ev);
  if (t->dead_ev) event_del(t->dead_ev);
  if (t->hs_ev) event_del(t->hs_ev);
  t->sched_queued = 0;
  if (t->carrier) bufferevent_disable(t->carrier, EV_READ | EV_WRITE);
}

/* The tunnel is dead: stop, orphan streams, then on_close. Call only with the
 * depth held (from an entry point). */
void mux_die(struct tunnel *t, const char *fmt, ...) {
  if (t->state == TS_DEAD) return;
  char err[600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, sizeof err, fmt, ap);
  va_end(ap);
  t->state = TS_DEAD;
  mux_stop_everything(t);
  log_debug("tunnel %p dead: %s", (void *)t, err);
  mux_orphan_streams(t, err);
  if (t->cbs.on_close && !t->free_requested) t->cbs.on_close(t, err, t->arg);
}

/* Stop reading and scheduling, let the output (ending with a GOAWAY or refusing
 * WELCOME) drain, then die with reason. A peer that never reads is cut off by
 * the dead timer. */
void mux_start_closing(struct tunnel *t, const char *reason) {
  if (t->state == TS_DEAD || t->state == TS_CLOSING) return;
  t->state = TS_CLOSING;
  snprintf(t->closing_reason, sizeof t->closing_reason, "%s", reason);
  bufferevent_disable(t->carrier, EV_READ);
  if (mux_out_len(t) == 0) {
    mux_die(t, "%s", t->closing_reason);
    return;
  }
  if (t->wbuf) {
    mux_queue_flush(t); /* the flush dies once everything is sent */
    return;
  }
  bufferevent_setwatermark(t->carrier, EV_WRITE, 0, 0);
  bufferevent_enable(t->carrier, EV_WRITE);
}

/* A connection-level protocol violation: GOAWAY(PROTOCOL), flush, die. */
void mux_protocol_error(struct tunnel *t, const char *what) {
  char why[600];
  frame_put_goaway(mux_out(t), FRAME_RESET_PROTOCOL, what);
  t->stats.frames_out++;
  snprintf(why, sizeof why, "protocol error: %s", what);
  mux_start_closing(t, why);
}

/* The carrier's output is FIFO: an answer queued when out_drained + length
 * was E has been handed to the socket (or TLS) once out_drained >= E. */
void mux_carrier_out_cb(struct evbuffer *b, const struct evbuffer_cb_info *info, void *arg) {
  struct tunnel *t = arg;
  t->out_drained += info->n_deleted;
  if (info->n_added && t->wbuf) mux_queue_flush(t);
}

/* Queue accounting for a frame that answers one of the peer's (see
 * REPLIES_MAX): forget the answers already sent, remember this one. */
void mux_count_reply(struct tunnel *t) {
  t->stats.frames_out++;
  while (t->reply_n && t->reply_end[t->reply_head] <= t->out_drained) {
    t->reply_head = (t->reply_head + 1) % REPLIES_MAX;
    t->reply_n--;
  }
  if (t->reply_n == REPLIES_MAX) {
    t->reply_overflow = 1; /* the read loop cuts the peer off */
    return;
  }
  t->reply_end[(t->reply_head + t->reply_n) % REPLIES_MAX] =
      t->out_drained + evbuffer_get_length(mux_out(t));
  t->reply_n++;
}

/* The peer makes us queue answers it does not read: a GOAWAY it will probably
 * never see, and the tunnel dies at once (waiting for the output to drain is
 * what it would exploit). */
void mux_flood_close(struct tunnel *t, const char *what) {
  char why[300];
  snprintf(why, sizeof why, "enhance your calm: %s", what);
  frame_put_goaway(mux_out(t), FRAME_RESET_PROTOCOL, why);
  t->stats.frames_out++;
  t->stats.flood_closed = 1;
  log_warn("tunnel: peer cut off: %s", why);
  mux_die(t, "protocol error: %s", why);
}

/* Stop reading the carrier until its output drains (mux_carrier_write_cb). */
void mux_pause_read(struct tunnel *t) {
  if (t->read_paused) return;
  t->read_paused = 1;
  t->stats.reads_paused++;
  bufferevent_disable(t->carrier, EV_READ);
  log_debug("tunnel %p: output at %zu bytes: not reading until it drains", (void *)t,
            mux_out_len(t));
}

/* ---- write path ------------------------------------------------------------------------ */

/* Serve streams round-robin while the carrier has room. Fires WRITABLE when a
 * stream's queue falls to its low mark after having been above its high mark. */
void mux_run_scheduler(struct tunnel *t) {
  if (t->in_sched || t->state != TS_READY) return;
  t->in_sched = 1;
  struct evbuffer *cout = mux_out(t);
  size_t high = t->cfg.stream_window;
  while (t->sched_head && mux_out_len(t) < t->cfg.carrier_high &&
         t->state == TS_READY) {
    struct tunnel_stream *s = mux_sched_pop(t);
    size_t len = evbuffer_get_length(s->out);
    if (len > 0 && s->send_window > 0) {
      size_t n = len < DATA_CHUNK ? len : DATA_CHUNK;
      if ((int64_t)n > s->send_window) n = (size_t)s->send_window;
      if (frame_put_data_buffer(cout, s->id, s->out, n) < 0) {
        t->in_sched = 0;
        mux_die(t, "out of memory writing to the carrier");
        return;
      }
      s->send_window -= (int64_t)n;
      t->stats.bytes_out += n;
      t->stats.frames_out++;
      len -= n;
    }
    if (len == 0 && s->shut_req && !s->shut_sent) {
      frame_put_shutdown(cout, s->id);
      t->stats.frames_out++;
      s->shut_sent = 1;
    }
    if (mux_sched_eligible(s)) mux_sched_push(t, s);
    if (s->above_high && len <= high / 2) {
      s->above_high = 0;
      if (!s->user_freed && !s->closed && s->ev) s->ev(s, TUNNEL_STREAM_WRITABLE, 0, NULL, s->arg);
    }
    if (t->state != TS_DEAD) mux_stream_check_done(s);
  }
  t->in_sched = 0;
}

void mux_sched_cb(evutil_socket_t fd, short what, void *arg) {
  struct tunnel *t = arg;
  mux_enter(t);
  t->sched_queued = 0;
  mux_run_scheduler(t);
  mux_leave(t);
}

/* ---- direct writes (a TLS carrier on a socket) ---------------------------------------- */

/* Ask for a flush at the end of this loop turn (once, however many frames are
 * written meanwhile). Not while the socket is full: wr_ev comes then. */
void mux_queue_flush(struct tunnel *t) {
  if (t->flush_queued || t->wr_blocked || t->state == TS_DEAD || !t->flush_ev) return;
  t->flush_queued = 1;
  event_active(t->flush_ev, EV_WRITE, 0);
}

/* Encrypt and send what wbuf holds (once the handshake is done: the gather
 * replaces the socket BIO then). Returns 0 (blocked or not), -1 with err. */
int mux_direct_flush(struct tunnel *t, int *blocked, char *err, size_t errlen) {
  SSL *ssl = bufferevent_openssl_get_ssl(t->carrier);
  *blocked = 0;
  if (!ssl || !SSL_is_init_finished(ssl)) return 0; /* demux_carrier_event_cb comes back */
  if (!t->gather) {
    t->gather = tls_gather_install(ssl, bufferevent_getfd(t->carrier), TLS_GATHER_CAP);
    if (!t->gather) {
      snprintf(err, errlen, "out of memory");
      return -1;
    }
  }
  return tls_gather_flush(t->gather, ssl, t->wbuf, blocked, err, errlen);
}


/* Send, then what libevent's write callback did (called with the depth held). */
static void mux_flush_and_continue(struct tunnel *t) {
  int blocked;
  char err[300];
  if (t->state == TS_DEAD) {
  } else if (mux_direct_flush(t, &blocked, err, sizeof err) < 0) {
    mux_die(t, "carrier error: %s", err);
  } else {
    if (blocked) {
      t->wr_blocked = 1;
      event_add(t->wr_ev, NULL);
    }
    if (mux_out_len(t) <= t->cfg.carrier_high / 2) mux_output_drained(t);
  }
}

void mux_flush_cb(evutil_socket_t fd, short what, void *arg) {
  struct tunnel *t = arg;
  mux_enter(t);
  t->flush_queued = 0;
  if (!t->wr_blocked) mux_flush_and_continue(t);
  mux_leave(t);
}

/* An entry point like mux_sched_cb and mux_flush_cb: guard, clear its own
 * flag, work; the repeated shape is the guard (mux_enter/mux_leave). */
void mux_wr_cb(evutil_socket_t fd, short what, void *arg) {
  struct tunnel *t = arg;
  mux_enter(t);
  t->wr_blocked = 0;
  mux_flush_and_continue(t);
  mux_leave(t);
}

/* Called when the output drained to the low mark (carrier_high / 2): the peer
 * reads, so its answers are no longer piling up, and a paused read resumes
 * (what is already buffered is parsed from the loop, see reread_ev). */
static void mux_output_drained(struct tunnel *t) {
  if (t->state == TS_CLOSING) {
    if (mux_out_len(t) == 0) mux_die(t, "%s", t->closing_reason);
  } else if (t->state != TS_DEAD) {
    if (t->read_paused && (t->state == TS_READY || t->state == TS_HANDSHAKE)) {
      t->read_paused = 0;
      bufferevent_enable(t->carrier, EV_READ);
      event_active(t->reread_ev, EV_READ, 0);
    }
    mux_run_scheduler(t);
  }
}

void mux_carrier_write_cb(struct bufferevent *bev, void *arg) {
  struct tunnel *t = arg;
  mux_enter(t);
  mux_output_drained(t);
  mux_leave(t);
}

/* Release everything: streams lose their tunnel, the carrier is freed. */
void mux_destroy(struct tunnel *t) {
  mux_orphan_streams(t, "tunnel freed");
  while (t->garbage) { /* only reachable if destroy runs with garbage pending */
    struct tunnel_stream *s = t->garbage;
    t->garbage = s->gnext;
    s->garbage = 0;
    s->t = NULL;
    mux_stream_release(s);
  }
  if (t->sched_ev) event_free(t->sched_ev);
  if (t->reread_ev) event_free(t->reread_ev);
  if (t->ping_ev) event_free(t->ping_ev);
  if (t->dead_ev) event_free(t->dead_ev);
  if (t->hs_ev) event_free(t->hs_ev);
  if (t->carrier && t->out_cb) evbuffer_remove_cb_entry(mux_out(t), t->out_cb);
  if (t->flush_ev) event_free(t->flush_ev);
  if (t->wr_ev) event_free(t->wr_ev);
  if (t->wbuf) evbuffer_free(t->wbuf);
  if (t->carrier) bufferevent_free(t->carrier);
  free(t->map);
  free(t);
}
