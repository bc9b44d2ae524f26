/* tunnel_demux.c: the tunnel's read side (tunnel_demux.h).
 *
 * Read path: frames are parsed straight from the carrier's input evbuffer; only
 * the 9 header bytes are copied out, DATA payloads are moved whole into the
 * stream's input with evbuffer_remove_buffer(), and control payloads (<= 1 KiB)
 * are copied into a scratch buffer owned by the tunnel. No per-frame malloc. */
#include "tunnel_demux.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "log.h"
#include "tunnel_mux.h"

/* ---- read path ---------------------------------------------------------------------------- */

static void handle_hello(struct tunnel *t, const uint8_t *p, size_t n) {
  struct frame_welcome w = {.version = FRAME_PROTOCOL_VERSION, .status = FRAME_WELCOME_OK};
  struct evbuffer *cout = mux_out(t);
  if (t->role != TUNNEL_SERVER || t->state != TS_HANDSHAKE) {
    mux_protocol_error(t, "unexpected HELLO");
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
    mux_start_closing(t, why);
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
    mux_protocol_error(t, "unexpected WELCOME");
    return;
  }
  if (frame_welcome_decode(p, n, &w) < 0) {
    mux_protocol_error(t, "malformed WELCOME");
    return;
  }
  event_del(t->hs_ev);
  if (w.status == FRAME_WELCOME_OK) {
    t->peer_window = w.window;
    t->state = TS_READY;
  }
  if (t->cbs.on_welcome) t->cbs.on_welcome(t, &w, t->arg);
  if (t->state == TS_DEAD || w.status == FRAME_WELCOME_OK) return;
  mux_die(t, "refused by agent (status %u): %s", w.status, w.message);
}

static void handle_open(struct tunnel *t, uint32_t id, const uint8_t *p, size_t n) {
  struct evbuffer *cout = mux_out(t);
  struct frame_open o;
  uint32_t parity = t->role == TUNNEL_CLIENT ? 0 : 1; /* ids the peer opens */
  if (t->state != TS_READY && t->state != TS_CLOSING) {
    mux_protocol_error(t, "OPEN before the handshake completed");
    return;
  }
  if (id == 0 || (id & 1) != parity || id <= t->last_peer_id) {
    mux_protocol_error(t, "OPEN with a stream id of the wrong parity or not increasing");
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
  struct tunnel_stream *s = refuse ? NULL : mux_stream_new(t, id, 1);
  if (!s) {
    if (!refuse) {
      refuse = "out of memory";
      code = FRAME_RESET_INTERNAL;
    }
    frame_put_reset(cout, id, code, refuse);
    mux_count_reply(t);
    t->stats.streams_reset++;
    return;
  }
  t->cbs.on_open(t, s, &o, t->arg);
}

/* A DATA frame: the payload (len bytes, still in `in`) is moved to the stream's
 * input, or discarded. Exceeding the window resets the stream. */
static void handle_data(struct tunnel *t, uint32_t id, struct evbuffer *in, uint32_t len) {
  struct tunnel_stream *s = id ? mux_map_find(t, id) : NULL;
  struct evbuffer *cout = mux_out(t);
  if (!s || s->closed) {
    evbuffer_drain(in, len);
    if (id == 0) {
      mux_protocol_error(t, "DATA on stream 0");
      return;
    }
    frame_put_reset(cout, id, FRAME_RESET_CANCEL, "unknown stream");
    mux_count_reply(t);
    return;
  }
  if (s->remote_eof) {
    evbuffer_drain(in, len);
    mux_stream_reset_send(s, FRAME_RESET_PROTOCOL, "DATA after SHUTDOWN");
    mux_stream_close_notify(s, FRAME_RESET_PROTOCOL, "peer sent DATA after SHUTDOWN");
    return;
  }
  if (len > s->recv_window) {
    evbuffer_drain(in, len);
    char why[128];
    snprintf(why, sizeof why, "peer sent %u bytes with a window of %u", len, s->recv_window);
    mux_stream_reset_send(s, FRAME_RESET_FLOW_CONTROL, why);
    mux_stream_close_notify(s, FRAME_RESET_FLOW_CONTROL, why);
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
  struct tunnel_stream *s = id ? mux_map_find(t, id) : NULL;
  if (!s || s->closed) {
    if (id == 0) {
      mux_protocol_error(t, "SHUTDOWN on stream 0");
      return;
    }
    frame_put_reset(mux_out(t), id, FRAME_RESET_CANCEL, "unknown stream");
    mux_count_reply(t);
    return;
  }
  if (s->remote_eof) return;
  s->remote_eof = 1;
  if (!s->user_freed && s->ev) s->ev(s, TUNNEL_STREAM_EOF, 0, NULL, s->arg);
  if (t->state != TS_DEAD && s->on_wire) mux_stream_check_done(s);
}

static void handle_reset(struct tunnel *t, uint32_t id, const uint8_t *p, size_t n) {
  struct frame_reason r;
  if (frame_reason_decode(p, n, &r) < 0) {
    mux_protocol_error(t, "malformed RESET");
    return;
  }
  struct tunnel_stream *s = id ? mux_map_find(t, id) : NULL;
  if (!s) return; /* unknown or already finished: ignored */
  t->stats.streams_reset++;
  char why[600];
  if (r.text[0])
    snprintf(why, sizeof why, "%s", r.text);
  else
    snprintf(why, sizeof why, "reset by peer (%s)", frame_reset_name(r.code));
  s->closed = 1;
  mux_map_remove(t, s);
  mux_sched_remove(t, s);
  mux_stream_close_notify(s, r.code, why);
  mux_stream_release(s);
}

static void handle_window(struct tunnel *t, uint32_t id, const uint8_t *p, size_t n) {
  uint32_t inc;
  if (frame_window_decode(p, n, &inc) < 0) {
    mux_protocol_error(t, "malformed WINDOW");
    return;
  }
  struct tunnel_stream *s = id ? mux_map_find(t, id) : NULL;
  if (!s || s->closed) return;
  if (s->send_window + inc > (int64_t)WINDOW_LIMIT) {
    mux_stream_reset_send(s, FRAME_RESET_FLOW_CONTROL, "window grown past 2^31-1");
    mux_stream_close_notify(s, FRAME_RESET_FLOW_CONTROL, "peer grew the window past 2^31-1");
    return;
  }
  s->send_window += inc;
  if (mux_sched_eligible(s)) {
    mux_sched_push(t, s);
    mux_kick(t);
  }
}

static void handle_frame(struct tunnel *t, const struct frame_header *h, struct evbuffer *in) {
  t->stats.frames_in++;
  if (h->type == FRAME_DATA) {
    if (t->state == TS_HANDSHAKE) {
      evbuffer_drain(in, h->length);
      mux_protocol_error(t, "DATA before the handshake completed");
      return;
    }
    handle_data(t, h->stream, in, h->length);
    return;
  }
  if (h->length > CONTROL_MAX) {
    evbuffer_drain(in, h->length);
    if (h->type >= FRAME_HELLO && h->type <= FRAME_GOAWAY) mux_protocol_error(t, "control frame too long");
    return; /* unknown types are ignored, whatever their size */
  }
  uint8_t *p = t->scratch;
  evbuffer_remove(in, p, h->length);
  size_t n = h->length;
  if (t->state == TS_HANDSHAKE && h->type != FRAME_HELLO && h->type != FRAME_WELCOME &&
      h->type != FRAME_PING && h->type != FRAME_GOAWAY) {
    mux_protocol_error(t, "frame before the handshake completed");
    return;
  }
  int stream0 = h->type == FRAME_HELLO || h->type == FRAME_WELCOME || h->type == FRAME_PING ||
                h->type == FRAME_GOAWAY;
  if (stream0 && h->stream != 0) {
    mux_protocol_error(t, "connection frame on a non-zero stream");
    return;
  }
  switch (h->type) {
    case FRAME_HELLO: handle_hello(t, p, n); break;
    case FRAME_WELCOME: handle_welcome(t, p, n); break;
    case FRAME_OPEN: handle_open(t, h->stream, p, n); break;
    case FRAME_SHUTDOWN:
      if (n != 0)
        mux_protocol_error(t, "SHUTDOWN with a payload");
      else
        handle_shutdown(t, h->stream);
      break;
    case FRAME_RESET: handle_reset(t, h->stream, p, n); break;
    case FRAME_WINDOW: handle_window(t, h->stream, p, n); break;
    case FRAME_PING:
      if (n != 8) {
        mux_protocol_error(t, "PING payload is not 8 bytes");
      } else if (!(h->flags & FRAME_FLAG_ACK)) {
        frame_put_ping(mux_out(t), FRAME_FLAG_ACK, p);
        mux_count_reply(t);
      }
      break;
    case FRAME_GOAWAY: {
      struct frame_reason r;
      if (frame_reason_decode(p, n, &r) < 0) {
        mux_protocol_error(t, "malformed GOAWAY");
        break;
      }
      t->peer_goaway = 1;
      t->peer_goaway_code = r.code;
      mux_die(t, "peer closed the tunnel (%s): %s", frame_reset_name(r.code),
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
void demux_carrier_read_cb(struct bufferevent *bev, void *arg) {
  struct tunnel *t = arg;
  struct evbuffer *in = bufferevent_get_input(bev);
  if (t->in_read) {
    t->reread = 1;
    return;
  }
  mux_enter(t);
  t->in_read = 1;
  t->last_rx_ms = mux_now_ms();
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
        mux_flood_close(t, what);
        break;
      }
      if (mux_out_len(t) > READ_PAUSE_FACTOR * t->cfg.carrier_high) {
        mux_pause_read(t); /* the rest stays in the input; mux_carrier_write_cb resumes */
        break;
      }
      uint8_t hb[FRAME_HEADER_LEN];
      struct frame_header h;
      evbuffer_copyout(in, hb, sizeof hb);
      if (frame_header_decode(hb, &h) < 0) {
        mux_protocol_error(t, "frame longer than 65536 bytes");
        break;
      }
      if (have < FRAME_HEADER_LEN + (size_t)h.length) {
        want = FRAME_HEADER_LEN + (size_t)h.length;
        break;
      }
      evbuffer_drain(in, FRAME_HEADER_LEN);
      handle_frame(t, &h, in);
    }
    if (t->state == TS_READY && t->sched_head) mux_run_scheduler(t);
  } while (t->reread && t->state != TS_DEAD && !want && !t->read_paused);
  if (lost && t->state != TS_DEAD) {
    mux_die(t, "%s", gone);
  } else if (t->state != TS_DEAD && !t->read_ahead) {
    /* Wake up only when the whole pending frame is there. (Not with
     * read-ahead: the rest of the frame may already be inside OpenSSL, and
     * libevent would never call us for it.) */
    if (want || t->read_wm) bufferevent_setwatermark(bev, EV_READ, want, 0);
    t->read_wm = want > 0;
  }
  if (t->gather && tls_gather_pending(t->gather) > 0) mux_queue_flush(t); /* written by SSL_read */
  t->in_read = 0;
  mux_leave(t);
}

void demux_reread_cb(evutil_socket_t fd, short what, void *arg) {
  struct tunnel *t = arg;
  demux_carrier_read_cb(t->carrier, t);
}

void demux_carrier_event_cb(struct bufferevent *bev, short what, void *arg) {
  struct tunnel *t = arg;
  if (what & BEV_EVENT_CONNECTED) {
    /* With read-ahead the handshake may have pulled the peer's first frames
     * (HELLO sent right after its Finished) into OpenSSL: no socket event
     * will say so. */
    if (t->read_ahead && SSL_has_pending(bufferevent_openssl_get_ssl(bev)))
      event_active(t->reread_ev, EV_READ, 0);
    if (t->wbuf && mux_out_len(t) > 0) mux_queue_flush(t); /* HELLO or WELCOME waiting */
    return;
  }
  mux_enter(t);
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
    mux_die(t, "%s", t->closing_reason);
  } else if (what & BEV_EVENT_EOF) {
    mux_die(t, "carrier closed by peer%s%s", err[0] ? ": " : "", err);
  } else if (what & BEV_EVENT_ERROR) {
    int e = EVUTIL_SOCKET_ERROR();
    if (err[0])
      mux_die(t, "carrier error: %s", err);
    else
      mux_die(t, "carrier error: %s", e ? evutil_socket_error_to_string(e) : "unknown");
  } else if (what & BEV_EVENT_TIMEOUT) {
    mux_die(t, "carrier timed out");
  }
  mux_leave(t);
}
