/* tunnel.h: many byte streams over one connection, with per-stream flow control.
 *
 * A tunnel runs the frame protocol (frame.h, docs/protocol.md) over a carrier:
 * any connected bufferevent (TLS over TCP today; TLS over the API server's
 * port-forward WebSocket later). The tunnel never looks below the bufferevent, so
 * carriers plug in without touching the framing.
 *
 * Roles: the developer side is the CLIENT (sends HELLO, opens odd stream ids, i.e.
 * outbound streams); the agent is the SERVER (answers WELCOME, opens even ids,
 * i.e. inbound streams).
 *
 * Flow control: each side grants the other an initial window per stream (in
 * HELLO/WELCOME). A sender never sends DATA beyond the window; the receiver grants
 * more (WINDOW frames) only as the stream's user drains tunnel_stream_input().
 * So a slow reader stops exactly its own stream and nothing is ever dropped:
 * bytes wait in the sender's per-stream queue and the sender's user sees
 * tunnel_stream_pending() grow and stops reading its source (backpressure).
 * Streams with data and window are served round-robin, a chunk at a time, while
 * the carrier's output stays below its high-water mark.
 *
 * Control output is bounded too: frames that answer the peer's (PING ACK, RESET
 * for an unknown stream or a refused OPEN) go straight to the carrier, so the
 * carrier is not read while its output is above 4 * carrier_high (1 MiB),
 * and a peer with more than 1024 such answers waiting unsent in it is cut
 * off (GOAWAY PROTOCOL "enhance your calm: ...", stats flood_closed).
 *
 * Liveness: the tunnel sends PING every ping_interval; if nothing at all is
 * received for dead_after, the tunnel is declared dead (err "peer silent ...").
 *
 * Ownership: the tunnel owns the carrier bufferevent and frees it. Streams are
 * owned by their user once opened/accepted; the user must call
 * tunnel_stream_free() exactly once. A stream whose tunnel died stays a valid
 * object (it reports CLOSED) until then. Freeing a tunnel or a stream from inside
 * any of its callbacks is allowed (the free is deferred until the callback
 * returns). */
#ifndef KB_TUNNEL_H
#define KB_TUNNEL_H

#include <stddef.h>
#include <stdint.h>

#include "frame.h"

struct event_base;
struct bufferevent;
struct evbuffer;
struct tunnel;
struct tunnel_stream;

enum tunnel_role { TUNNEL_CLIENT, TUNNEL_SERVER };

struct tunnel_config {
  uint32_t stream_window;    /* initial per-stream receive window; default 256 KiB */
  uint32_t max_streams;      /* streams the peer may open at once; default 4096 */
  unsigned ping_interval_ms; /* default 5000 */
  unsigned dead_after_ms;    /* default 15000 */
  size_t carrier_high;       /* stop scheduling when carrier output exceeds; default 256 KiB */
  unsigned handshake_timeout_ms; /* TLS (if any) + HELLO/WELCOME must finish; default 10000 */
};
/* Fill cfg with the defaults above. */
void tunnel_config_default(struct tunnel_config *cfg);

struct tunnel_cbs {
  /* SERVER only: a HELLO arrived. Decide: return FRAME_WELCOME_OK to accept, or a
   * failure status with a message in msg (msglen bytes); the tunnel then sends
   * WELCOME with that status and closes. */
  int (*on_hello)(struct tunnel *t, const struct frame_hello *hello, char *msg, size_t msglen,
                  void *arg);
  /* CLIENT only: WELCOME arrived. status != OK means refused; the tunnel will
   * then close (on_close follows). */
  void (*on_welcome)(struct tunnel *t, const struct frame_welcome *w, void *arg);
  /* The peer opened a stream. The user takes ownership: it must either call
   * tunnel_stream_setcb() (and later tunnel_stream_free()), or
   * tunnel_stream_reset() + tunnel_stream_free() to refuse it. */
  void (*on_open)(struct tunnel *t, struct tunnel_stream *s, const struct frame_open *o,
                  void *arg);
  /* The tunnel is dead (carrier error/EOF, protocol error, peer silent, GOAWAY,
   * or refused WELCOME). err says why. Every stream still alive gets CLOSED with
   * FRAME_RESET_TUNNEL_LOST first. After this returns the user must call
   * tunnel_free() (may be done inside this callback). */
  void (*on_close)(struct tunnel *t, const char *err, void *arg);
};

/* Create a tunnel over carrier (already connecting or connected; for TLS the
 * handshake may still be running). A CLIENT sends `hello` at once; a SERVER waits
 * for one. Returns NULL on allocation failure (carrier is then freed). */
struct tunnel *tunnel_new(struct event_base *base, struct bufferevent *carrier,
                          enum tunnel_role role, const struct tunnel_config *cfg,
                          const struct frame_hello *hello, const struct tunnel_cbs *cbs,
                          void *arg);
/* Close (GOAWAY if possible, flush best-effort is not waited for) and free. Every
 * live stream gets CLOSED(TUNNEL_LOST) before this returns. */
void tunnel_free(struct tunnel *t);
/* Send GOAWAY with reason and close after the output drains; on_close follows. */
void tunnel_goaway(struct tunnel *t, uint32_t code, const char *reason);

/* True once HELLO/WELCOME completed successfully. */
int tunnel_ready(const struct tunnel *t);
/* 1 if the tunnel ended because the peer sent GOAWAY (its code in *code), else 0.
 * Meant for on_close: frame_goaway_is_leave(code) tells a peer that left on
 * purpose from one that closed on an error; the text is for people only. */
int tunnel_peer_goaway(const struct tunnel *t, uint32_t *code);
const struct frame_hello *tunnel_peer_hello(const struct tunnel *t); /* SERVER: the HELLO */
struct bufferevent *tunnel_carrier(struct tunnel *t);
size_t tunnel_stream_count(const struct tunnel *t);
void tunnel_set_arg(struct tunnel *t, void *arg);

/* Open a stream to the peer. CLIENT opens outbound, SERVER inbound. Returns NULL
 * if the tunnel is not ready or closing. The caller owns the stream. */
struct tunnel_stream *tunnel_stream_open(struct tunnel *t, const struct frame_open *o);

/* Stream events, given to the event callback: */
#define TUNNEL_STREAM_EOF 0x01      /* peer sent SHUTDOWN: input ends after what is buffered */
#define TUNNEL_STREAM_WRITABLE 0x02 /* pending output fell to or below the low mark */
#define TUNNEL_STREAM_CLOSED 0x04   /* reset by peer or tunnel lost; err says why */

/* read_cb: new bytes were appended to tunnel_stream_input(s). The user drains
 *   (evbuffer_remove / evbuffer_remove_buffer / evbuffer_drain); every drained
 *   byte is credited back to the peer automatically.
 * event_cb: one of the TUNNEL_STREAM_* events; err is NULL except for CLOSED,
 *   where it is a human-readable cause (e.g. "connection refused to
 *   localhost:5000", "tunnel lost: peer silent for 15 s") and code the reset code. */
typedef void (*tunnel_stream_read_cb)(struct tunnel_stream *s, void *arg);
typedef void (*tunnel_stream_event_cb)(struct tunnel_stream *s, int what, uint32_t code,
                                       const char *err, void *arg);
void tunnel_stream_setcb(struct tunnel_stream *s, tunnel_stream_read_cb rd,
                         tunnel_stream_event_cb ev, void *arg);

struct evbuffer *tunnel_stream_input(struct tunnel_stream *s);
/* Queue bytes to send. Never drops: bytes wait until the window allows. Returns
 * 0, or -1 if the stream is closed or already shut down for writing. */
int tunnel_stream_write(struct tunnel_stream *s, const void *data, size_t len);
int tunnel_stream_write_buffer(struct tunnel_stream *s, struct evbuffer *src); /* moves all of src */
/* Bytes queued but not yet handed to the carrier. Users stop reading their source
 * while this is above tunnel_stream_high() and resume on WRITABLE. */
size_t tunnel_stream_pending(const struct tunnel_stream *s);
size_t tunnel_stream_high(const struct tunnel_stream *s);
/* Half-close: SHUTDOWN is sent after the queued bytes. */
void tunnel_stream_shutdown(struct tunnel_stream *s);
/* Abort both directions: queued bytes are discarded, RESET(code, reason) sent. */
void tunnel_stream_reset(struct tunnel_stream *s, uint32_t code, const char *reason);
/* Release the user's hold. A stream that is neither closed nor fully shut down is
 * reset with FRAME_RESET_CANCEL. Queued output of a shut-down stream is still
 * sent. */
void tunnel_stream_free(struct tunnel_stream *s);

uint32_t tunnel_stream_id(const struct tunnel_stream *s);
struct tunnel *tunnel_stream_tunnel(const struct tunnel_stream *s); /* NULL after tunnel death */
int tunnel_stream_closed(const struct tunnel_stream *s);
int tunnel_stream_eof(const struct tunnel_stream *s);

/* Counters for metrics. */
struct tunnel_stats {
  uint64_t bytes_in, bytes_out; /* DATA payload bytes */
  uint64_t frames_in, frames_out;
  uint64_t streams_opened, streams_reset;
  uint64_t reads_paused; /* times reading stopped: output above 4 * carrier_high */
  uint64_t flood_closed; /* 1: cut off for not reading the answers it asked for */
};
void tunnel_get_stats(const struct tunnel *t, struct tunnel_stats *out);

#endif
