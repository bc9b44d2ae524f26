/* tunnel_mux.h: the tunnel's insides, shared by its three files (not for users:
 * they include tunnel.h).
 *
 * The multiplexer's state (struct tunnel, struct tunnel_stream), and what the
 * read side (tunnel_demux.c) and the public calls (tunnel_conn.c) build on:
 * the reentrancy guard, the output (the carrier's, or wbuf with direct writes),
 * the id map, the round-robin scheduler and the writes it makes, the streams'
 * lifetime, closing and dying. The lowest of the three: it calls nothing in
 * them; what happens on the wire below the carrier is the carrier's business.
 * The small helpers on the data path are inline here. */
#ifndef KB_TUNNEL_MUX_H
#define KB_TUNNEL_MUX_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <sys/time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "frame.h"
#include "tlsgather.h"
#include "tunnel.h"

#define CONTROL_MAX 1024          /* largest non-DATA payload we accept */
#define WINDOW_LIMIT 0x7fffffffu  /* no window may exceed 2^31-1 */
/* Payload per DATA frame we send: header + payload = 16384 bytes, the largest
 * TLS record, so a full frame (built contiguous by frame_put_data_buffer) is
 * exactly one record and one write() on a TLS carrier. */
#define DATA_CHUNK (16384u - FRAME_HEADER_LEN)
/* Frames the peer makes us answer (PING ACK, RESET for an unknown stream or a
 * refused OPEN): at most this many may wait unsent in the carrier's output at
 * once (counted exactly: see mux_carrier_out_cb). A peer that keeps asking for
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
  unsigned in_read : 1, reread : 1; /* demux_carrier_read_cb running / called again meanwhile */
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

/* Where frames are written: wbuf with direct writes, else the carrier's output. */
static inline struct evbuffer *mux_out(struct tunnel *t) {
  return t->wbuf ? t->wbuf : bufferevent_get_output(t->carrier);
}

/* Bytes written and not yet handed to the socket (or the carrier's filter). */
static inline size_t mux_out_len(struct tunnel *t) {
  return evbuffer_get_length(mux_out(t)) + (t->gather ? tls_gather_pending(t->gather) : 0);
}

static inline uint64_t mux_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static inline struct timeval mux_ms_tv(uint64_t ms) {
  struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
  return tv;
}

/* ---- reentrancy guard ---------------------------------------------------- */

static inline void mux_enter(struct tunnel *t) { t->depth++; }

/* ---- id map --------------------------------------------------------------- */

static inline size_t mux_slot(const struct tunnel *t, uint32_t id) {
  uint32_t h = id * 2654435761u;
  return (h ^ (h >> 15)) & (t->map_size - 1);
}

static inline struct tunnel_stream *mux_map_find(const struct tunnel *t, uint32_t id) {
  for (struct tunnel_stream *s = t->map[mux_slot(t, id)]; s; s = s->hnext)
    if (s->id == id) return s;
  return NULL;
}

/* ---- scheduler queue: served from the head, re-queued at the tail (round robin) */

static inline int mux_sched_eligible(const struct tunnel_stream *s) {
  if (!s->on_wire || s->closed) return 0;
  size_t out = evbuffer_get_length(s->out);
  if (out > 0) return s->send_window > 0;
  return s->shut_req && !s->shut_sent;
}

static inline void mux_sched_push(struct tunnel *t, struct tunnel_stream *s) {
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

/* Ask for a scheduler run from the event loop (batched, never reentrant). */
static inline void mux_kick(struct tunnel *t) {
  if (t->sched_queued || t->state == TS_DEAD) return;
  t->sched_queued = 1;
  event_active(t->sched_ev, EV_WRITE, 0);
}

/* Each one's contract is at its definition in tunnel_mux.c. */
int mux_leave(struct tunnel *t);
void mux_map_remove(struct tunnel *t, struct tunnel_stream *s);
void mux_sched_remove(struct tunnel *t, struct tunnel_stream *s);
void mux_stream_release(struct tunnel_stream *s);
void mux_stream_detach(struct tunnel_stream *s);
struct tunnel_stream *mux_stream_new(struct tunnel *t, uint32_t id, int peer_opened);
void mux_stream_close_notify(struct tunnel_stream *s, uint32_t code, const char *err);
void mux_stream_reset_send(struct tunnel_stream *s, uint32_t code, const char *reason);
void mux_stream_check_done(struct tunnel_stream *s);
void mux_stream_in_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg);
void mux_orphan_streams(struct tunnel *t, const char *err);
void mux_stop_everything(struct tunnel *t);
void mux_die(struct tunnel *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void mux_start_closing(struct tunnel *t, const char *reason);
void mux_protocol_error(struct tunnel *t, const char *what);
void mux_carrier_out_cb(struct evbuffer *b, const struct evbuffer_cb_info *info, void *arg);
void mux_count_reply(struct tunnel *t);
void mux_flood_close(struct tunnel *t, const char *what);
void mux_pause_read(struct tunnel *t);
void mux_run_scheduler(struct tunnel *t);
void mux_sched_cb(evutil_socket_t fd, short what, void *arg);
void mux_queue_flush(struct tunnel *t);
int mux_direct_flush(struct tunnel *t, int *blocked, char *err, size_t errlen);
void mux_flush_cb(evutil_socket_t fd, short what, void *arg);
void mux_wr_cb(evutil_socket_t fd, short what, void *arg);
void mux_carrier_write_cb(struct bufferevent *bev, void *arg);
void mux_destroy(struct tunnel *t);

#endif
