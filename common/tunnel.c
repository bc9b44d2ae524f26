/* tunnel.c: the frame protocol's state machine over one carrier bufferevent.
 *
 * Read path: frames are parsed straight from the carrier's input evbuffer; only
 * the 9 header bytes are copied out, DATA payloads are moved whole into the
 * stream's input with evbuffer_remove_buffer(), and control payloads (<= 1 KiB)
 * are copied into a scratch buffer owned by the tunnel. No per-frame malloc.
 *
 * Write path: control frames (OPEN, WINDOW, RESET, PING, GOAWAY) go straight into
 * the carrier's output. DATA and SHUTDOWN go through a round-robin scheduler: a
 * ring of streams that have queued bytes and send window (or a pending
 * SHUTDOWN), served one DATA_CHUNK at a time while the carrier's output is
 * below carrier_high; the carrier's write callback (low watermark carrier_high/2)
 * resumes it. New work schedules a deferred event instead of writing at once, so
 * user writes are batched and never reenter the user.
 *
 * Lifetimes: a stream is "on the wire" (in the id map) until both directions are
 * finished or it is reset; it is "held" until the user calls tunnel_stream_free().
 * Its memory goes when both are over. Every libevent entry point brackets its work
 * with enter()/leave(); frees requested while depth > 0 are deferred to leave(),
 * so any callback may free the stream or the tunnel it was called for. */
#include "tunnel.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "log.h"
#include "tlsgather.h"

#define CONTROL_MAX 1024          /* largest non-DATA payload we accept */
#define WINDOW_LIMIT 0x7fffffffu  /* no window may exceed 2^31-1 */
/* Payload per DATA frame we send: header + payload = 16384 bytes, the largest
 * TLS record, so a full frame (built contiguous by frame_put_data_buffer) is
 * exactly one record and one write() on a TLS carrier. */
#define DATA_CHUNK (16384u - FRAME_HEADER_LEN)
/* Frames the peer makes us answer (PING ACK, RESET for an unknown stream or a
 * refused OPEN): at most this many may wait unsent in the carrier's output at
 * once (counted exactly: see carrier_out_cb). A peer that keeps asking for
 * answers it does not read is cut off (the "enhance your calm" of HTTP/2:
 * CVE-2019-9512/9514). A well-behaved peer has a handful waiting: a PING per
 * interval, a RESET per DATA frame in flight on a stream we reset. */
#define REPLIES_MAX 1024
/* The carrier is not read while its output holds more than this many times
 * carrier_high (1 MiB by default): the scheduler stops at carrier_high, so
 * what is above it is control frames, and reading more would only queue more
 * of them. Generous on purpose: WINDOW frames of thousands of busy streams
 * must fit below it, or two busy ends could each wait for the other to read
 * (the dead timer would then end the tunnel after dead_after). */
#define READ_PAUSE_FACTOR 4u

enum tunnel_state {
  TS_HANDSHAKE, /* CLIENT: HELLO sent, waiting for WELCOME; SERVER: waiting for HELLO */
  TS_READY,     /* streams may be opened and carried */
  TS_CLOSING,   /* GOAWAY (or a refusing WELCOME) queued; dies when output drains */
  TS_DEAD,      /* on_close delivered (or tunnel_free called); nothing more happens */
};

struct tunnel_stream {
  struct tunnel *t;                  /* NULL once the tunnel is gone */
  uint32_t id;
  struct tunnel_stream *hnext;       /* id map chain */
  struct tunnel_stream *sprev, *snext; /* scheduler queue (FIFO) */
  struct tunnel_stream *aprev, *anext; /* all streams of the tunnel */
  struct tunnel_stream *gnext;       /* deferred-free list */
  struct evbuffer *in, *out;
  int64_t send_window;   /* bytes we may still send */
  uint32_t recv_window;  /* bytes the peer may still send */
  uint32_t consumed;     /* drained by the user, not yet granted back */
  unsigned on_wire : 1;  /* in the id map */
  unsigned in_sched : 1;
  unsigned shut_req : 1; /* user asked for half-close */
  unsigned shut_sent : 1;
  unsigned remote_eof : 1;
  unsigned closed : 1;   /* reset (either side) or tunnel lost */
  unsigned user_freed : 1;
  unsigned above_high : 1;
  unsigned garbage : 1;
  unsigned peer_opened : 1;
  unsigned in_all : 1;   /* linked in t->all */
  tunnel_stream_read_cb rd;
  tunnel_stream_event_cb ev;
  void *arg;
};

struct tunnel {
  struct event_base *base;
  struct bufferevent *carrier;
  enum tunnel_role role;
  enum tunnel_state state;
  struct tunnel_config cfg;
  struct tunnel_cbs cbs;
  void *arg;
  struct frame_hello hello; /* CLIENT: ours; SERVER: the peer's */
  uint32_t peer_window;     /* initial send window per stream, from the peer */
  uint32_t next_id;         /* next id we open */
  uint32_t last_peer_id;    /* highest id the peer opened */
  struct tunnel_stream **map;
  size_t map_size, on_wire, peer_streams;
  struct tunnel_stream *all;
  struct tunnel_stream *sched_head, *sched_tail;
  struct tunnel_stream *garbage;
  struct event *sched_ev, *ping_ev, *dead_ev, *hs_ev;
  struct event *reread_ev;  /* read-ahead: OpenSSL holds records the socket no longer signals */
  /* Direct writes (a TLS carrier on a socket, see tls_gather_*): frames go to
   * wbuf instead of the carrier's output, flush_ev (activated when wbuf gets
   * bytes) encrypts them into the gather buffer at the end of the loop turn
   * and sends it with one send() per TLS_GATHER_MAX bytes; wr_ev waits for
   * the socket only when it did not take everything. */
  struct evbuffer *wbuf;
  struct tls_gather *gather;
  struct event *flush_ev, *wr_ev;
  uint64_t last_rx_ms, ping_seq;
  char closing_reason[600]; /* TS_CLOSING: what on_close will say */
  uint32_t peer_goaway_code; /* the code of the peer's GOAWAY, if peer_goaway */
  int depth;
  unsigned free_requested : 1;
  unsigned peer_goaway : 1;         /* the peer sent GOAWAY (its code: peer_goaway_code) */
  unsigned sched_queued : 1;
  unsigned in_sched : 1;
  unsigned in_read : 1, reread : 1; /* carrier_read_cb running / called again meanwhile */
  unsigned read_wm : 1;             /* a read low watermark is set */
  unsigned read_ahead : 1;          /* TLS socket carrier with OpenSSL read-ahead on */
  unsigned read_paused : 1;         /* output above READ_PAUSE_FACTOR * carrier_high */
  unsigned reply_overflow : 1;      /* more than REPLIES_MAX answers unsent: cut off */
  unsigned flush_queued : 1;        /* direct: flush_ev is active */
  unsigned wr_blocked : 1;          /* direct: the socket is full, wr_ev armed */
  uint64_t out_drained;             /* bytes taken from the carrier's output so far */
  struct evbuffer_cb_entry *out_cb; /* counts them */
  unsigned reply_head, reply_n;     /* ring of the unsent answers' end offsets */
  uint64_t reply_end[REPLIES_MAX];  /* (out_drained + output length when queued) */
  struct tunnel_stats stats;
  uint8_t scratch[CONTROL_MAX];
};

static void stream_release(struct tunnel_stream *s);
static void queue_flush(struct tunnel *t);

/* Where frames are written: wbuf with direct writes, else the carrier's output. */
static struct evbuffer *tout(struct tunnel *t) {
  return t->wbuf ? t->wbuf : bufferevent_get_output(t->carrier);
}

/* Bytes written and not yet handed to the socket (or the carrier's filter). */
static size_t out_len(struct tunnel *t) {
  return evbuffer_get_length(tout(t)) + (t->gather ? tls_gather_pending(t->gather) : 0);
}

static void tunnel_die(struct tunnel *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tunnel_destroy(struct tunnel *t);

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static struct timeval ms_tv(uint64_t ms) {
  struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
  return tv;
}

void tunnel_config_default(struct tunnel_config *cfg) {
  cfg->stream_window = 256u * 1024u;
  cfg->max_streams = 4096;
  cfg->ping_interval_ms = 5000;
  cfg->dead_after_ms = 15000;
  cfg->carrier_high = 256u * 1024u;
  cfg->handshake_timeout_ms = 10000;
}

/* ---- reentrancy guard ---------------------------------------------------- */

static void enter(struct tunnel *t) { t->depth++; }

/* Leave a callback frame. At depth 0, free what was deferred. Returns 1 if the
 * tunnel itself was freed (the caller must not touch it). */
static int leave(struct tunnel *t) {
  if (--t->depth > 0) return 0;
  while (t->garbage) {
    struct tunnel_stream *s = t->garbage;
    t->garbage = s->gnext;
    s->garbage = 0;
    stream_release(s);
  }
  if (t->free_requested) {
    tunnel_destroy(t);
    return 1;
  }
  return 0;
}

/* ---- id map --------------------------------------------------------------- */

static size_t slot(const struct tunnel *t, uint32_t id) {
  uint32_t h = id * 2654435761u;
  return (h ^ (h >> 15)) & (t->map_size - 1);
}

static struct tunnel_stream *map_find(const struct tunnel *t, uint32_t id) {
  for (struct tunnel_stream *s = t->map[slot(t, id)]; s; s = s->hnext)
    if (s->id == id) return s;
  return NULL;
}

static int map_grow(struct tunnel *t) {
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
      size_t k = slot(t, s->id);
      s->hnext = m[k];
      m[k] = s;
    }
  }
  free(old);
  return 0;
}

static int map_add(struct tunnel *t, struct tunnel_stream *s) {
  if (t->on_wire >= t->map_size && map_grow(t) < 0) return -1;
  size_t k = slot(t, s->id);
  s->hnext = t->map[k];
  t->map[k] = s;
  s->on_wire = 1;
  t->on_wire++;
  if (s->peer_opened) t->peer_streams++;
  return 0;
}

static void map_remove(struct tunnel *t, struct tunnel_stream *s) {
  if (!s->on_wire) return;
  for (struct tunnel_stream **pp = &t->map[slot(t, s->id)]; *pp; pp = &(*pp)->hnext) {
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

/* ---- scheduler queue: served from the head, re-queued at the tail (round robin) */

static int sched_eligible(const struct tunnel_stream *s) {
  if (!s->on_wire || s->closed) return 0;
  size_t out = evbuffer_get_length(s->out);
  if (out > 0) return s->send_window > 0;
  return s->shut_req && !s->shut_sent;
}

static void sched_push(struct tunnel *t, struct tunnel_stream *s) {
  if (s->in_sched) return;
  s->in_sched = 1;
  s->snext = NULL;
  s->sprev = t->sched_tail;
  if (t->sched_tail)
    t->sched_tail->snext = s;
  else
    t->sched_head = s;
  t->sched_tail = s;
}

static void sched_remove(struct tunnel *t, struct tunnel_stream *s) {
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

static struct tunnel_stream *sched_pop(struct tunnel *t) {
  struct tunnel_stream *s = t->sched_head;
  if (s) sched_remove(t, s);
  return s;
}

/* Ask for a scheduler run from the event loop (batched, never reentrant). */
static void kick(struct tunnel *t) {
  if (t->sched_queued || t->state == TS_DEAD) return;
  t->sched_queued = 1;
  event_active(t->sched_ev, EV_WRITE, 0);
}

/* ---- stream lifetime ------------------------------------------------------------ */

static void stream_in_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg);

/* Free the memory if both the wire and the user are done with the stream;
 * deferred while the tunnel is inside a callback. */
static void stream_release(struct tunnel_stream *s) {
  if (s->on_wire || !s->user_freed || s->garbage) return;
  struct tunnel *t = s->t;
  if (t && t->depth > 0) {
    s->garbage = 1;
    s->gnext = t->garbage;
    t->garbage = s;
    return;
  }
  if (t) sched_remove(t, s);
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
static void stream_detach(struct tunnel_stream *s) {
  struct tunnel *t = s->t;
  if (t) {
    map_remove(t, s);
    sched_remove(t, s);
  }
  stream_release(s);
}

static struct tunnel_stream *stream_new(struct tunnel *t, uint32_t id, int peer_opened) {
  struct tunnel_stream *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->t = t;
  s->id = id;
  s->peer_opened = peer_opened ? 1 : 0;
  s->in = evbuffer_new();
  s->out = evbuffer_new();
  if (!s->in || !s->out || map_add(t, s) < 0) {
    if (s->in) evbuffer_free(s->in);
    if (s->out) evbuffer_free(s->out);
    free(s);
    return NULL;
  }
  s->send_window = t->peer_window;
  s->recv_window = t->cfg.stream_window;
  evbuffer_add_cb(s->in, stream_in_cb, s);
  s->anext = t->all;
  if (t->all) t->all->aprev = s;
  t->all = s;
  s->in_all = 1;
  t->stats.streams_opened++;
  return s;
}

/* Mark closed, drop queued output and tell the user (unless it already let go).
 * The caller holds the tunnel's depth, so s stays valid across the callback. */
static void stream_close_notify(struct tunnel_stream *s, uint32_t code, const char *err) {
  s->closed = 1;
  evbuffer_drain(s->out, evbuffer_get_length(s->out));
  if (!s->user_freed && s->ev) s->ev(s, TUNNEL_STREAM_CLOSED, code, err, s->arg);
}

/* Reset a live stream from our side: RESET frame, then off the wire. */
static void stream_reset_send(struct tunnel_stream *s, uint32_t code, const char *reason) {
  struct tunnel *t = s->t;
  s->closed = 1;
  evbuffer_drain(s->out, evbuffer_get_length(s->out));
  if (t && s->on_wire) {
    frame_put_reset(tout(t), s->id, code, reason);
    t->stats.frames_out++;
    t->stats.streams_reset++;
  }
  stream_detach(s);
}

/* Both directions finished cleanly? Then the stream leaves the wire. */
static void stream_check_done(struct tunnel_stream *s) {
  if (s->on_wire && s->shut_sent && s->remote_eof && evbuffer_get_length(s->out) == 0)
    stream_detach(s);
}

/* The user drained its input: grant the bytes back once a quarter of the window
 * has been consumed, so the peer never waits on small updates. */
static void stream_in_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg) {
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
    enter(t); /* the write may run carrier callbacks synchronously (TLS) */
    frame_put_window(tout(t), s->id, grant);
    leave(t);
  }
}

/* ---- dying ------------------------------------------------------------------------ */

/* Every stream loses its tunnel: live ones get CLOSED(TUNNEL_LOST, err). The
 * streams are unlinked one at a time before their callback runs, so a callback
 * may free any stream (or call tunnel_free). */
static void orphan_streams(struct tunnel *t, const char *err) {
  char why[600];
  snprintf(why, sizeof why, "tunnel lost: %s", err);
  while (t->all) {
    struct tunnel_stream *s = t->all;
    t->all = s->anext;
    if (t->all) t->all->aprev = NULL;
    s->aprev = s->anext = NULL;
    s->in_all = 0;
    int live = s->on_wire && !s->closed;
    map_remove(t, s);
    sched_remove(t, s);
    if (s->garbage) continue; /* already on the garbage list; freed by leave() */
    s->t = NULL;
    if (live) {
      s->closed = 1;
      evbuffer_drain(s->out, evbuffer_get_length(s->out));
      if (!s->user_freed && s->ev) {
        s->ev(s, TUNNEL_STREAM_CLOSED, FRAME_RESET_TUNNEL_LOST, why, s->arg);
        continue; /* s may be gone now */
      }
    }
    stream_release(s);
  }
}

/* No more timers, scheduling or carrier events. */
static void stop_everything(struct tunnel *t) {
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
static void tunnel_die(struct tunnel *t, const char *fmt, ...) {
  if (t->state == TS_DEAD) return;
  char err[600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, sizeof err, fmt, ap);
  va_end(ap);
  t->state = TS_DEAD;
  stop_everything(t);
  log_debug("tunnel %p dead: %s", (void *)t, err);
  orphan_streams(t, err);
  if (t->cbs.on_close && !t->free_requested) t->cbs.on_close(t, err, t->arg);
}

/* Stop reading and scheduling, let the output (ending with a GOAWAY or refusing
 * WELCOME) drain, then die with reason. A peer that never reads is cut off by
 * the dead timer. */
static void start_closing(struct tunnel *t, const char *reason) {
  if (t->state == TS_DEAD || t->state == TS_CLOSING) return;
  t->state = TS_CLOSING;
  snprintf(t->closing_reason, sizeof t->closing_reason, "%s", reason);
  bufferevent_disable(t->carrier, EV_READ);
  if (out_len(t) == 0) {
    tunnel_die(t, "%s", t->closing_reason);
    return;
  }
  if (t->wbuf) {
    queue_flush(t); /* the flush dies once everything is sent */
    return;
  }
  bufferevent_setwatermark(t->carrier, EV_WRITE, 0, 0);
  bufferevent_enable(t->carrier, EV_WRITE);
}

/* A connection-level protocol violation: GOAWAY(PROTOCOL), flush, die. */
static void protocol_error(struct tunnel *t, const char *what) {
  char why[600];
  frame_put_goaway(tout(t), FRAME_RESET_PROTOCOL, what);
  t->stats.frames_out++;
  snprintf(why, sizeof why, "protocol error: %s", what);
  start_closing(t, why);
}

/* The carrier's output is FIFO: an answer queued when out_drained + length
 * was E has been handed to the socket (or TLS) once out_drained >= E. */
static void carrier_out_cb(struct evbuffer *b, const struct evbuffer_cb_info *info, void *arg) {
  struct tunnel *t = arg;
  t->out_drained += info->n_deleted;
  if (info->n_added && t->wbuf) queue_flush(t);
}

/* Queue accounting for a frame that answers one of the peer's (see
 * REPLIES_MAX): forget the answers already sent, remember this one. */
static void count_reply(struct tunnel *t) {
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
      t->out_drained + evbuffer_get_length(tout(t));
  t->reply_n++;
}

/* The peer makes us queue answers it does not read: a GOAWAY it will probably
 * never see, and the tunnel dies at once (waiting for the output to drain is
 * what it would exploit). */
static void flood_close(struct tunnel *t, const char *what) {
  char why[300];
  snprintf(why, sizeof why, "enhance your calm: %s", what);
  frame_put_goaway(tout(t), FRAME_RESET_PROTOCOL, why);
  t->stats.frames_out++;
  t->stats.flood_closed = 1;
  log_warn("tunnel: peer cut off: %s", why);
  tunnel_die(t, "protocol error: %s", why);
}

/* Stop reading the carrier until its output drains (carrier_write_cb). */
static void pause_read(struct tunnel *t) {
  if (t->read_paused) return;
  t->read_paused = 1;
  t->stats.reads_paused++;
  bufferevent_disable(t->carrier, EV_READ);
  log_debug("tunnel %p: output at %zu bytes: not reading until it drains", (void *)t,
            out_len(t));
}

/* ---- write path ------------------------------------------------------------------------ */

/* Serve streams round-robin while the carrier has room. Fires WRITABLE when a
 * stream's queue falls to its low mark after having been above its high mark. */
static void run_scheduler(struct tunnel *t) {
  if (t->in_sched || t->state != TS_READY) return;
  t->in_sched = 1;
  struct evbuffer *cout = tout(t);
  size_t high = t->cfg.stream_window;
  while (t->sched_head && out_len(t) < t->cfg.carrier_high &&
         t->state == TS_READY) {
    struct tunnel_stream *s = sched_pop(t);
    size_t len = evbuffer_get_length(s->out);
    if (len > 0 && s->send_window > 0) {
      size_t n = len < DATA_CHUNK ? len : DATA_CHUNK;
      if ((int64_t)n > s->send_window) n = (size_t)s->send_window;
      if (frame_put_data_buffer(cout, s->id, s->out, n) < 0) {
        t->in_sched = 0;
        tunnel_die(t, "out of memory writing to the carrier");
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
    if (sched_eligible(s)) sched_push(t, s);
    if (s->above_high && len <= high / 2) {
      s->above_high = 0;
      if (!s->user_freed && !s->closed && s->ev) s->ev(s, TUNNEL_STREAM_WRITABLE, 0, NULL, s->arg);
    }
    if (t->state != TS_DEAD) stream_check_done(s);
  }
  t->in_sched = 0;
}

static void sched_cb(evutil_socket_t fd, short what, void *arg) {
  struct tunnel *t = arg;
  enter(t);
  t->sched_queued = 0;
  run_scheduler(t);
  leave(t);
}

/* ---- direct writes (a TLS carrier on a socket) ---------------------------------------- */

/* Ask for a flush at the end of this loop turn (once, however many frames are
 * written meanwhile). Not while the socket is full: wr_ev comes then. */
static void queue_flush(struct tunnel *t) {
  if (t->flush_queued || t->wr_blocked || t->state == TS_DEAD || !t->flush_ev) return;
  t->flush_queued = 1;
  event_active(t->flush_ev, EV_WRITE, 0);
}

/* Encrypt and send what wbuf holds (once the handshake is done: the gather
 * replaces the socket BIO then). Returns 0 (blocked or not), -1 with err. */
static int direct_flush(struct tunnel *t, int *blocked, char *err, size_t errlen) {
  SSL *ssl = bufferevent_openssl_get_ssl(t->carrier);
  *blocked = 0;
  if (!ssl || !SSL_is_init_finished(ssl)) return 0; /* carrier_event_cb comes back */
  if (!t->gather) {
    t->gather = tls_gather_install(ssl, bufferevent_getfd(t->carrier), TLS_GATHER_CAP);
    if (!t->gather) {
      snprintf(err, errlen, "out of memory");
      return -1;
    }
  }
  return tls_gather_flush(t->gather, ssl, t->wbuf, blocked, err, errlen);
}

static void output_drained(struct tunnel *t);

/* Send, then what libevent's write callback did (called with the depth held). */
static void flush_and_continue(struct tunnel *t) {
  int blocked;
  char err[300];
  if (t->state == TS_DEAD) {
  } else if (direct_flush(t, &blocked, err, sizeof err) < 0) {
    tunnel_die(t, "carrier error: %s", err);
  } else {
    if (blocked) {
      t->wr_blocked = 1;
      event_add(t->wr_ev, NULL);
    }
    if (out_len(t) <= t->cfg.carrier_high / 2) output_drained(t);
  }
}

static void flush_cb(evutil_socket_t fd, short what, void *arg) {
  struct tunnel *t = arg;
  enter(t);
  t->flush_queued = 0;
  if (!t->wr_blocked) flush_and_continue(t);
  leave(t);
}

static void wr_cb(evutil_socket_t fd, short what, void *arg) {
  struct tunnel *t = arg;
  enter(t);
  t->wr_blocked = 0;
  flush_and_continue(t);
  leave(t);
}

/* Called when the output drained to the low mark (carrier_high / 2): the peer
 * reads, so its answers are no longer piling up, and a paused read resumes
 * (what is already buffered is parsed from the loop, see reread_ev). */
static void output_drained(struct tunnel *t) {
  if (t->state == TS_CLOSING) {
    if (out_len(t) == 0) tunnel_die(t, "%s", t->closing_reason);
  } else if (t->state != TS_DEAD) {
    if (t->read_paused && (t->state == TS_READY || t->state == TS_HANDSHAKE)) {
      t->read_paused = 0;
      bufferevent_enable(t->carrier, EV_READ);
      event_active(t->reread_ev, EV_READ, 0);
    }
    run_scheduler(t);
  }
}

static void carrier_write_cb(struct bufferevent *bev, void *arg) {
  struct tunnel *t = arg;
  enter(t);
  output_drained(t);
  leave(t);
}

/* ---- read path ---------------------------------------------------------------------------- */

static void handle_hello(struct tunnel *t, const uint8_t *p, size_t n) {
  struct frame_welcome w = {.version = FRAME_PROTOCOL_VERSION, .status = FRAME_WELCOME_OK};
  struct evbuffer *cout = tout(t);
  if (t->role != TUNNEL_SERVER || t->state != TS_HANDSHAKE) {
    protocol_error(t, "unexpected HELLO");
    return;
  }
  event_del(t->hs_ev);
  if (n < 1 || p[0] != FRAME_PROTOCOL_VERSION) {
    w.status = FRAME_WELCOME_BAD_VERSION;
    snprintf(w.message, sizeof w.message, "protocol version %u not supported (want %u)",
             n ? p[0] : 0u, FRAME_PROTOCOL_VERSION);
  } else if (frame_hello_decode(p, n, &t->hello) < 0) {
    w.status = FRAME_WELCOME_BAD_KEY;
    snprintf(w.message, sizeof w.message,
             "malformed HELLO (the key must be a DNS label: 1-63 of [a-z0-9-])");
  } else if (t->cbs.on_hello) {
    w.status = (uint8_t)t->cbs.on_hello(t, &t->hello, w.message, sizeof w.message, t->arg);
    if (t->state == TS_DEAD) return; /* freed from on_hello */
  }
  if (w.status != FRAME_WELCOME_OK) {
    frame_put_welcome(cout, &w);
    t->stats.frames_out++;
    log_info("tunnel: refused HELLO (status %u): %s", w.status, w.message);
    char why[600];
    snprintf(why, sizeof why, "refused HELLO (status %u): %s", w.status, w.message);
    start_closing(t, why);
    return;
  }
  w.window = t->cfg.stream_window;
  t->peer_window = t->hello.window;
  frame_put_welcome(cout, &w);
  t->stats.frames_out++;
  t->state = TS_READY;
}

static void handle_welcome(struct tunnel *t, const uint8_t *p, size_t n) {
  struct frame_welcome w;
  if (t->role != TUNNEL_CLIENT || t->state != TS_HANDSHAKE) {
    protocol_error(t, "unexpected WELCOME");
    return;
  }
  if (frame_welcome_decode(p, n, &w) < 0) {
    protocol_error(t, "malformed WELCOME");
    return;
  }
  event_del(t->hs_ev);
  if (w.status == FRAME_WELCOME_OK) {
    t->peer_window = w.window;
    t->state = TS_READY;
  }
  if (t->cbs.on_welcome) t->cbs.on_welcome(t, &w, t->arg);
  if (t->state == TS_DEAD || w.status == FRAME_WELCOME_OK) return;
  tunnel_die(t, "refused by agent (status %u): %s", w.status, w.message);
}

static void handle_open(struct tunnel *t, uint32_t id, const uint8_t *p, size_t n) {
  struct evbuffer *cout = tout(t);
  struct frame_open o;
  uint32_t parity = t->role == TUNNEL_CLIENT ? 0 : 1; /* ids the peer opens */
  if (t->state != TS_READY && t->state != TS_CLOSING) {
    protocol_error(t, "OPEN before the handshake completed");
    return;
  }
  if (id == 0 || (id & 1) != parity || id <= t->last_peer_id) {
    protocol_error(t, "OPEN with a stream id of the wrong parity or not increasing");
    return;
  }
  t->last_peer_id = id;
  const char *refuse = NULL;
  uint32_t code = FRAME_RESET_REFUSED;
  if (frame_open_decode(p, n, &o) < 0) {
    refuse = "malformed OPEN";
    code = FRAME_RESET_PROTOCOL;
  } else if (t->state != TS_READY) {
    refuse = "tunnel is closing";
  } else if (t->peer_streams >= t->cfg.max_streams) {
    refuse = "too many streams";
    code = FRAME_RESET_INTERNAL;
  } else if (!t->cbs.on_open) {
    refuse = "this side accepts no streams";
  }
  struct tunnel_stream *s = refuse ? NULL : stream_new(t, id, 1);
  if (!s) {
    if (!refuse) {
      refuse = "out of memory";
      code = FRAME_RESET_INTERNAL;
    }
    frame_put_reset(cout, id, code, refuse);
    count_reply(t);
    t->stats.streams_reset++;
    return;
  }
  t->cbs.on_open(t, s, &o, t->arg);
}

/* A DATA frame: the payload (len bytes, still in `in`) is moved to the stream's
 * input, or discarded. Exceeding the window resets the stream. */
static void handle_data(struct tunnel *t, uint32_t id, struct evbuffer *in, uint32_t len) {
  struct tunnel_stream *s = id ? map_find(t, id) : NULL;
  struct evbuffer *cout = tout(t);
  if (!s || s->closed) {
    evbuffer_drain(in, len);
    if (id == 0) {
      protocol_error(t, "DATA on stream 0");
      return;
    }
    frame_put_reset(cout, id, FRAME_RESET_CANCEL, "unknown stream");
    count_reply(t);
    return;
  }
  if (s->remote_eof) {
    evbuffer_drain(in, len);
    stream_reset_send(s, FRAME_RESET_PROTOCOL, "DATA after SHUTDOWN");
    stream_close_notify(s, FRAME_RESET_PROTOCOL, "peer sent DATA after SHUTDOWN");
    return;
  }
  if (len > s->recv_window) {
    evbuffer_drain(in, len);
    char why[128];
    snprintf(why, sizeof why, "peer sent %u bytes with a window of %u", len, s->recv_window);
    stream_reset_send(s, FRAME_RESET_FLOW_CONTROL, why);
    stream_close_notify(s, FRAME_RESET_FLOW_CONTROL, why);
    return;
  }
  s->recv_window -= len;
  t->stats.bytes_in += len;
  if (len == 0) return;
  evbuffer_remove_buffer(in, s->in, len);
  if (s->user_freed) {
    evbuffer_drain(s->in, len); /* nobody will read; credit it back */
  } else if (s->rd) {
    s->rd(s, s->arg);
  }
}

static void handle_shutdown(struct tunnel *t, uint32_t id) {
  struct tunnel_stream *s = id ? map_find(t, id) : NULL;
  if (!s || s->closed) {
    if (id == 0) {
      protocol_error(t, "SHUTDOWN on stream 0");
      return;
    }
    frame_put_reset(tout(t), id, FRAME_RESET_CANCEL, "unknown stream");
    count_reply(t);
    return;
  }
  if (s->remote_eof) return;
  s->remote_eof = 1;
  if (!s->user_freed && s->ev) s->ev(s, TUNNEL_STREAM_EOF, 0, NULL, s->arg);
  if (t->state != TS_DEAD && s->on_wire) stream_check_done(s);
}

static void handle_reset(struct tunnel *t, uint32_t id, const uint8_t *p, size_t n) {
  struct frame_reason r;
  if (frame_reason_decode(p, n, &r) < 0) {
    protocol_error(t, "malformed RESET");
    return;
  }
  struct tunnel_stream *s = id ? map_find(t, id) : NULL;
  if (!s) return; /* unknown or already finished: ignored */
  t->stats.streams_reset++;
  char why[600];
  if (r.text[0])
    snprintf(why, sizeof why, "%s", r.text);
  else
    snprintf(why, sizeof why, "reset by peer (%s)", frame_reset_name(r.code));
  s->closed = 1;
  map_remove(t, s);
  sched_remove(t, s);
  stream_close_notify(s, r.code, why);
  stream_release(s);
}

static void handle_window(struct tunnel *t, uint32_t id, const uint8_t *p, size_t n) {
  uint32_t inc;
  if (frame_window_decode(p, n, &inc) < 0) {
    protocol_error(t, "malformed WINDOW");
    return;
  }
  struct tunnel_stream *s = id ? map_find(t, id) : NULL;
  if (!s || s->closed) return;
  if (s->send_window + inc > (int64_t)WINDOW_LIMIT) {
    stream_reset_send(s, FRAME_RESET_FLOW_CONTROL, "window grown past 2^31-1");
    stream_close_notify(s, FRAME_RESET_FLOW_CONTROL, "peer grew the window past 2^31-1");
    return;
  }
  s->send_window += inc;
  if (sched_eligible(s)) {
    sched_push(t, s);
    kick(t);
  }
}

static void handle_frame(struct tunnel *t, const struct frame_header *h, struct evbuffer *in) {
  t->stats.frames_in++;
  if (h->type == FRAME_DATA) {
    if (t->state == TS_HANDSHAKE) {
      evbuffer_drain(in, h->length);
      protocol_error(t, "DATA before the handshake completed");
      return;
    }
    handle_data(t, h->stream, in, h->length);
    return;
  }
  if (h->length > CONTROL_MAX) {
    evbuffer_drain(in, h->length);
    if (h->type >= FRAME_HELLO && h->type <= FRAME_GOAWAY) protocol_error(t, "control frame too long");
    return; /* unknown types are ignored, whatever their size */
  }
  uint8_t *p = t->scratch;
  evbuffer_remove(in, p, h->length);
  size_t n = h->length;
  if (t->state == TS_HANDSHAKE && h->type != FRAME_HELLO && h->type != FRAME_WELCOME &&
      h->type != FRAME_PING && h->type != FRAME_GOAWAY) {
    protocol_error(t, "frame before the handshake completed");
    return;
  }
  int stream0 = h->type == FRAME_HELLO || h->type == FRAME_WELCOME || h->type == FRAME_PING ||
                h->type == FRAME_GOAWAY;
  if (stream0 && h->stream != 0) {
    protocol_error(t, "connection frame on a non-zero stream");
    return;
  }
  switch (h->type) {
    case FRAME_HELLO: handle_hello(t, p, n); break;
    case FRAME_WELCOME: handle_welcome(t, p, n); break;
    case FRAME_OPEN: handle_open(t, h->stream, p, n); break;
    case FRAME_SHUTDOWN:
      if (n != 0)
        protocol_error(t, "SHUTDOWN with a payload");
      else
        handle_shutdown(t, h->stream);
      break;
    case FRAME_RESET: handle_reset(t, h->stream, p, n); break;
    case FRAME_WINDOW: handle_window(t, h->stream, p, n); break;
    case FRAME_PING:
      if (n != 8) {
        protocol_error(t, "PING payload is not 8 bytes");
      } else if (!(h->flags & FRAME_FLAG_ACK)) {
        frame_put_ping(tout(t), FRAME_FLAG_ACK, p);
        count_reply(t);
      }
      break;
    case FRAME_GOAWAY: {
      struct frame_reason r;
      if (frame_reason_decode(p, n, &r) < 0) {
        protocol_error(t, "malformed GOAWAY");
        break;
      }
      t->peer_goaway = 1;
      t->peer_goaway_code = r.code;
      tunnel_die(t, "peer closed the tunnel (%s): %s", frame_reset_name(r.code),
                   r.text[0] ? r.text : "no reason given");
      break;
    }
    default: break; /* unknown frame types are ignored (docs/protocol.md) */
  }
}

/* libevent 2.1's TLS bufferevent on a socket reads one TLS record (<= 16 KiB)
 * per readiness event: a bulk transfer costs an epoll_wait, the carrier's read
 * callback and the stream's consumer (with their event re-arming) per record.
 * Read up to CARRIER_READ_MORE further bytes here, a record per SSL_read, until
 * OpenSSL would block; what is left stays in the socket (records are read
 * whole, nothing stays buffered inside OpenSSL), so the next readiness event
 * finds it. Returns 0, or -1 with err set at EOF or an error (the caller
 * parses what was read first, then dies with err). Filters (a TLS bufferevent over another
 * bufferevent) are left to libevent. */
#define CARRIER_READ_MORE (256u * 1024u)
#define CARRIER_RBUF (64u * 1024u) /* OpenSSL's read buffer with read-ahead */
#define TLS_RECORD_MAX 16384

static int carrier_read_more(struct tunnel *t, struct bufferevent *bev, char *err, size_t errlen) {
  SSL *ssl = bufferevent_openssl_get_ssl(bev);
  if (!ssl || bufferevent_get_underlying(bev) || !(bufferevent_get_enabled(bev) & EV_READ)) return 0;
  struct evbuffer *in = bufferevent_get_input(bev);
  size_t got = 0;
  while (got < CARRIER_READ_MORE) {
    struct evbuffer_iovec v;
    if (evbuffer_reserve_space(in, TLS_RECORD_MAX, &v, 1) != 1) return 0;
    ERR_clear_error();
    errno = 0;
    int r = SSL_read(ssl, v.iov_base, (int)(v.iov_len < INT32_MAX ? v.iov_len : INT32_MAX));
    int sys_errno = errno;
    if (r <= 0) {
      int e = SSL_get_error(ssl, r);
      evbuffer_commit_space(in, &v, 0);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
      unsigned long ssl_err = ERR_get_error();
      if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && !ssl_err && sys_errno == 0)) {
        snprintf(err, errlen, "carrier closed by peer");
      } else if (ssl_err) {
        char buf[256];
        ERR_error_string_n(ssl_err, buf, sizeof buf);
        snprintf(err, errlen, "carrier error: TLS error: %s", buf);
      } else {
        snprintf(err, errlen, "carrier error: %s", strerror(sys_errno));
      }
      ERR_clear_error();
      return -1;
    }
    v.iov_len = (size_t)r;
    evbuffer_commit_space(in, &v, 1);
    got += (size_t)r;
  }
  /* Stopped at the bound: with read-ahead, records may wait inside OpenSSL
   * where no socket event will announce them; come back from the loop. */
  if (t->read_ahead && SSL_has_pending(ssl)) event_active(t->reread_ev, EV_READ, 0);
  return 0;
}

/* Parse every whole frame in the carrier's input. A nested call (a carrier that
 * runs callbacks synchronously, e.g. TLS writing while we handle a frame) only
 * flags that more input arrived; the outer call's loop picks it up. */
static void carrier_read_cb(struct bufferevent *bev, void *arg) {
  struct tunnel *t = arg;
  struct evbuffer *in = bufferevent_get_input(bev);
  if (t->in_read) {
    t->reread = 1;
    return;
  }
  enter(t);
  t->in_read = 1;
  t->last_rx_ms = now_ms();
  size_t want = 0; /* > 0: waiting for a frame of this many bytes */
  char gone[300] = "";
  int lost = (t->state == TS_READY || t->state == TS_HANDSHAKE) && !t->read_paused &&
             carrier_read_more(t, bev, gone, sizeof gone) < 0;
  do {
    t->reread = 0;
    while (t->state == TS_READY || t->state == TS_HANDSHAKE) {
      size_t have = evbuffer_get_length(in);
      if (have < FRAME_HEADER_LEN) break;
      if (t->reply_overflow) {
        char what[160];
        snprintf(what, sizeof what, "more than %d answers to its frames (PING, RESET) queued "
                 "while it does not read", REPLIES_MAX);
        flood_close(t, what);
        break;
      }
      if (out_len(t) > READ_PAUSE_FACTOR * t->cfg.carrier_high) {
        pause_read(t); /* the rest stays in the input; carrier_write_cb resumes */
        break;
      }
      uint8_t hb[FRAME_HEADER_LEN];
      struct frame_header h;
      evbuffer_copyout(in, hb, sizeof hb);
      if (frame_header_decode(hb, &h) < 0) {
        protocol_error(t, "frame longer than 65536 bytes");
        break;
      }
      if (have < FRAME_HEADER_LEN + (size_t)h.length) {
        want = FRAME_HEADER_LEN + (size_t)h.length;
        break;
      }
      evbuffer_drain(in, FRAME_HEADER_LEN);
      handle_frame(t, &h, in);
    }
    if (t->state == TS_READY && t->sched_head) run_scheduler(t);
  } while (t->reread && t->state != TS_DEAD && !want && !t->read_paused);
  if (lost && t->state != TS_DEAD) {
    tunnel_die(t, "%s", gone);
  } else if (t->state != TS_DEAD && !t->read_ahead) {
    /* Wake up only when the whole pending frame is there. (Not with
     * read-ahead: the rest of the frame may already be inside OpenSSL, and
     * libevent would never call us for it.) */
    if (want || t->read_wm) bufferevent_setwatermark(bev, EV_READ, want, 0);
    t->read_wm = want > 0;
  }
  if (t->gather && tls_gather_pending(t->gather) > 0) queue_flush(t); /* written by SSL_read */
  t->in_read = 0;
  leave(t);
}

static void reread_cb(evutil_socket_t fd, short what, void *arg) {
  struct tunnel *t = arg;
  carrier_read_cb(t->carrier, t);
}

static void carrier_event_cb(struct bufferevent *bev, short what, void *arg) {
  struct tunnel *t = arg;
  if (what & BEV_EVENT_CONNECTED) {
    /* With read-ahead the handshake may have pulled the peer's first frames
     * (HELLO sent right after its Finished) into OpenSSL: no socket event
     * will say so. */
    if (t->read_ahead && SSL_has_pending(bufferevent_openssl_get_ssl(bev)))
      event_active(t->reread_ev, EV_READ, 0);
    if (t->wbuf && out_len(t) > 0) queue_flush(t); /* HELLO or WELCOME waiting */
    return;
  }
  enter(t);
  char err[300] = "";
  unsigned long ssl_err = bufferevent_get_openssl_error(bev);
  if (ssl_err) {
    char buf[256];
    ERR_error_string_n(ssl_err, buf, sizeof buf);
    snprintf(err, sizeof err, "TLS error: %s", buf);
    while (bufferevent_get_openssl_error(bev)) {
    }
  }
  if (t->state == TS_CLOSING) {
    tunnel_die(t, "%s", t->closing_reason);
  } else if (what & BEV_EVENT_EOF) {
    tunnel_die(t, "carrier closed by peer%s%s", err[0] ? ": " : "", err);
  } else if (what & BEV_EVENT_ERROR) {
    int e = EVUTIL_SOCKET_ERROR();
    if (err[0])
      tunnel_die(t, "carrier error: %s", err);
    else
      tunnel_die(t, "carrier error: %s", e ? evutil_socket_error_to_string(e) : "unknown");
  } else if (what & BEV_EVENT_TIMEOUT) {
    tunnel_die(t, "carrier timed out");
  }
  leave(t);
}

/* ---- timers -------------------------------------------------------------------------------------- */

static void ping_cb(evutil_socket_t fd, short what, void *arg) {
  struct tunnel *t = arg;
  enter(t);
  if (t->state == TS_READY || t->state == TS_HANDSHAKE) {
    uint8_t op[8];
    uint64_t seq = ++t->ping_seq;
    for (int i = 0; i < 8; i++) op[i] = (uint8_t)(seq >> (56 - 8 * i));
    frame_put_ping(tout(t), 0, op);
    t->stats.frames_out++;
  }
  leave(t);
}

/* Fires dead_after after the last read; re-armed for the rest if bytes came since. */
static void dead_cb(evutil_socket_t fd, short what, void *arg) {
  struct tunnel *t = arg;
  enter(t);
  uint64_t idle = now_ms() - t->last_rx_ms;
  if (t->state == TS_CLOSING && idle >= t->cfg.dead_after_ms) {
    tunnel_die(t, "%s (the peer did not read the GOAWAY)", t->closing_reason);
  } else if (idle >= t->cfg.dead_after_ms && t->read_paused) {
    tunnel_die(t, "peer did not read for %llu s", (unsigned long long)(idle + 500) / 1000);
  } else if (idle >= t->cfg.dead_after_ms) {
    tunnel_die(t, "peer silent for %llu s", (unsigned long long)(idle + 500) / 1000);
  } else {
    struct timeval tv = ms_tv(t->cfg.dead_after_ms - idle);
    event_add(t->dead_ev, &tv);
  }
  leave(t);
}

static void hs_cb(evutil_socket_t fd, short what, void *arg) {
  struct tunnel *t = arg;
  enter(t);
  if (t->state == TS_HANDSHAKE)
    tunnel_die(t, "no %s within %u ms", t->role == TUNNEL_SERVER ? "HELLO" : "WELCOME",
               t->cfg.handshake_timeout_ms);
  leave(t);
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
  t->sched_ev = event_new(base, -1, 0, sched_cb, t);
  t->ping_ev = event_new(base, -1, EV_PERSIST, ping_cb, t);
  t->dead_ev = event_new(base, -1, 0, dead_cb, t);
  t->hs_ev = event_new(base, -1, 0, hs_cb, t);
  t->reread_ev = event_new(base, -1, 0, reread_cb, t);
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
    t->flush_ev = event_new(base, -1, 0, flush_cb, t);
    t->wr_ev = event_new(base, bufferevent_getfd(carrier), EV_WRITE, wr_cb, t);
    if (!t->wbuf || !t->flush_ev || !t->wr_ev) goto fail;
  }
  if (role == TUNNEL_CLIENT) {
    if (!hello) goto fail;
    t->hello = *hello;
    t->hello.version = FRAME_PROTOCOL_VERSION;
    t->hello.window = t->cfg.stream_window; /* the window we grant is our config's */
    if (frame_put_hello(tout(t), &t->hello) < 0) goto fail;
    t->stats.frames_out++;
  }
  t->last_rx_ms = now_ms();
  t->out_cb = evbuffer_add_cb(tout(t), carrier_out_cb, t);
  if (!t->out_cb) goto fail;
  bufferevent_setcb(carrier, carrier_read_cb, carrier_write_cb, carrier_event_cb, t);
  bufferevent_setwatermark(carrier, EV_WRITE, t->cfg.carrier_high / 2, 0);
  bufferevent_set_max_single_read(carrier, 256 * 1024);
  bufferevent_set_max_single_write(carrier, 256 * 1024);
  bufferevent_enable(carrier, EV_READ | EV_WRITE);
  if (t->cfg.handshake_timeout_ms == 0) t->cfg.handshake_timeout_ms = 10000;
  struct timeval hs = ms_tv(t->cfg.handshake_timeout_ms), ping = ms_tv(t->cfg.ping_interval_ms),
                 dead = ms_tv(t->cfg.dead_after_ms);
  event_add(t->hs_ev, &hs);
  if (t->cfg.ping_interval_ms) event_add(t->ping_ev, &ping);
  if (t->cfg.dead_after_ms) event_add(t->dead_ev, &dead);
  return t;
fail:
  t->state = TS_DEAD;
  tunnel_destroy(t);
  return NULL;
}

/* Release everything: streams lose their tunnel, the carrier is freed. */
static void tunnel_destroy(struct tunnel *t) {
  orphan_streams(t, "tunnel freed");
  while (t->garbage) { /* only reachable if destroy runs with garbage pending */
    struct tunnel_stream *s = t->garbage;
    t->garbage = s->gnext;
    s->garbage = 0;
    s->t = NULL;
    stream_release(s);
  }
  if (t->sched_ev) event_free(t->sched_ev);
  if (t->reread_ev) event_free(t->reread_ev);
  if (t->ping_ev) event_free(t->ping_ev);
  if (t->dead_ev) event_free(t->dead_ev);
  if (t->hs_ev) event_free(t->hs_ev);
  if (t->carrier && t->out_cb) evbuffer_remove_cb_entry(tout(t), t->out_cb);
  if (t->flush_ev) event_free(t->flush_ev);
  if (t->wr_ev) event_free(t->wr_ev);
  if (t->wbuf) evbuffer_free(t->wbuf);
  if (t->carrier) bufferevent_free(t->carrier);
  free(t->map);
  free(t);
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
  enter(t);
  if (t->state != TS_DEAD) {
    if (t->state == TS_READY || t->state == TS_HANDSHAKE) {
      struct evbuffer *out = tout(t);
      frame_put_goaway(out, FRAME_RESET_CANCEL, "tunnel closed");
      if (t->wbuf) { /* once, never waiting: as libevent's TLS write would have */
        int blocked;
        char err[300];
        if (direct_flush(t, &blocked, err, sizeof err) < 0)
          log_debug("tunnel: final flush: %s", err);
      } else {
        flush_now(t->carrier);
      }
    }
    t->state = TS_DEAD;
    stop_everything(t);
  }
  orphan_streams(t, "tunnel closed locally");
  leave(t); /* destroys now, or when the outermost callback returns */
}

void tunnel_goaway(struct tunnel *t, uint32_t code, const char *reason) {
  if (t->state == TS_DEAD || t->state == TS_CLOSING) return;
  char why[600];
  frame_put_goaway(tout(t), code, reason);
  t->stats.frames_out++;
  snprintf(why, sizeof why, "closed locally (GOAWAY %s): %s", frame_reset_name(code),
           reason ? reason : "");
  enter(t);
  start_closing(t, why);
  leave(t);
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
  struct tunnel_stream *s = stream_new(t, t->next_id, 0);
  if (!s) return NULL;
  t->next_id += 2;
  enter(t);
  if (frame_put_open(tout(t), s->id, o) < 0) {
    s->user_freed = 1; /* never seen by the peer or the user */
    s->closed = 1;
    t->stats.streams_opened--;
    stream_detach(s);
    s = NULL;
  } else {
    t->stats.frames_out++;
  }
  if (s && t->state == TS_DEAD) { /* a synchronous carrier error killed the tunnel */
    s->user_freed = 1;
    stream_release(s);
    s = NULL;
  }
  leave(t);
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
  if (sched_eligible(s)) {
    sched_push(s->t, s);
    kick(s->t);
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
  if (sched_eligible(s)) {
    sched_push(s->t, s);
    kick(s->t);
  }
}

void tunnel_stream_reset(struct tunnel_stream *s, uint32_t code, const char *reason) {
  if (s->closed || !s->on_wire || !s->t) {
    s->closed = 1;
    return;
  }
  struct tunnel *t = s->t;
  enter(t);
  stream_reset_send(s, code, reason);
  leave(t);
}

void tunnel_stream_free(struct tunnel_stream *s) {
  if (!s || s->user_freed) return;
  s->user_freed = 1;
  s->rd = NULL;
  s->ev = NULL;
  evbuffer_remove_cb(s->in, stream_in_cb, s);
  if (s->on_wire && !s->closed && !(s->shut_req && s->remote_eof)) {
    struct tunnel *t = s->t;
    enter(t);
    stream_reset_send(s, FRAME_RESET_CANCEL, "stream closed");
    leave(t); /* the stream is released here or by the outer callback's leave */
    return;
  }
  if (s->on_wire) evbuffer_drain(s->in, evbuffer_get_length(s->in));
  stream_release(s);
}

uint32_t tunnel_stream_id(const struct tunnel_stream *s) { return s->id; }
struct tunnel *tunnel_stream_tunnel(const struct tunnel_stream *s) { return s->t; }
int tunnel_stream_closed(const struct tunnel_stream *s) { return s->closed; }
int tunnel_stream_eof(const struct tunnel_stream *s) { return s->remote_eof; }
