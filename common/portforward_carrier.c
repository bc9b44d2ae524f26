/* portforward_carrier.c: the carrier of a pod port-forward (see
 * portforward.h), the WebSocket codec of v4.channel.k8s.io as a bufferevent
 * filter. The carrier (struct pf_carrier) is the context of a
 * bufferevent_filter over the API-server TLS bufferevent: rx_filter() decodes
 * server frames as a stream, tx_filter() frames and masks what the user writes.
 *
 * Ends of stream are raised on the carrier with bufferevent_trigger_event(...,
 * BEV_TRIG_DEFER_CALLBACKS), never synchronously from inside a filter, so the
 * user may free the carrier in its event callback. EOF/ERROR coming from the
 * API-server connection itself are held back until the bytes received before
 * them are decoded: bufferevent_openssl can report EOF before it commits the last
 * record it read, and the kubelet's error text is exactly such a last record.
 * For that the carrier wraps the three callbacks the filter set on the
 * underlying bufferevent (read with bufferevent_getcb(), forwarded unchanged).
 * portforward_dial.c dials the connection it wraps. */
#include "portforward.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "log.h"
#include "portforward_internal.h"

#define ERRTEXT_MAX 1024     /* largest kubelet error text we keep */
#define CARRIER_MAGIC 0x6b627066u

/* ------------------------------------------------------------------------ */
/* Carrier: the WebSocket framing filter                                      */
/* ------------------------------------------------------------------------ */

enum rx_state {
  RX_HEADER,  /* between frames: waiting for a complete frame header */
  RX_PAYLOAD, /* inside a data frame: payload_left bytes of it still to come */
  RX_DONE,    /* the stream has ended (EOF/ERROR raised); input is discarded */
};

struct pf_carrier {
  uint32_t magic;
  struct bufferevent *bev; /* the filter: what the user holds */
  struct bufferevent *api; /* the TLS connection to the API server, under bev */
  char what[336];          /* "pod NS/POD port P", for messages */
  uint16_t port;
  size_t max_frame;

  /* Callbacks bufferevent_filter_new() put on api, called from our wrappers. */
  bufferevent_data_cb f_read, f_write;
  bufferevent_event_cb f_event;
  void *f_arg;
  short api_end;          /* EOF/ERROR seen on api, not yet raised (0: none) */
  char api_end_msg[300];  /* its description */

  enum rx_state rx;
  uint64_t payload_left;  /* RX_PAYLOAD: bytes of the current frame to come */
  int frame_fin;          /* the current frame ends its message */
  int in_message;         /* a data message has started and not yet ended */
  int need_channel;       /* the next payload byte of the message is its channel */
  int channel;            /* channel of the current message: 0 data, 1 error */
  uint8_t port_got[2];    /* bytes of the port announcement seen, per channel */
  uint8_t port_le[2][2];  /* the announcements */
  char errtext[ERRTEXT_MAX];
  size_t errtext_len;
  int errtext_any;        /* bytes arrived on the error channel */

  int starved;            /* rx_filter last stopped for want of input (not for room) */
  size_t rx_high;         /* the carrier's input never holds more than this */
  int rx_blocked;         /* input full: reading from api is disabled until drained */
  struct evbuffer_cb_entry *drain_cb; /* on the carrier's input */

  char err[1400]; /* why the stream ended, for pf_carrier_error(); "" if clean */
  int close_sent; /* we sent a close frame: nothing more may be sent */
  uint8_t keys[256];      /* random bytes for masking keys */
  size_t keys_used;
  struct pf_stats stats;
};

/* XOR n bytes of src with the 4-byte key into dst, starting at key byte phase.
 * Eight bytes per step: the key repeated twice is one 64-bit word, and since 8
 * is a multiple of 4 the phase is the same for every word. */
static void mask_copy(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t key[4],
                      size_t phase) {
  uint8_t k8[8];
  uint64_t m;
  size_t i = 0;
  for (int j = 0; j < 8; j++) k8[j] = key[(phase + (size_t)j) & 3];
  memcpy(&m, k8, 8);
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy(&w, src + i, 8);
    w ^= m;
    memcpy(dst + i, &w, 8);
  }
  for (; i < n; i++) dst[i] = src[i] ^ key[(phase + i) & 3];
}

static int next_key(struct pf_carrier *c, uint8_t key[4]) {
  if (c->keys_used + 4 > sizeof(c->keys)) {
    if (RAND_bytes(c->keys, sizeof(c->keys)) != 1) return -1;
    c->keys_used = 0;
  }
  memcpy(key, c->keys + c->keys_used, 4);
  c->keys_used += 4;
  return 0;
}

/* Size of a client frame header for a payload of len bytes (mask included). */
static size_t tx_header_len(size_t len) { return len < 126 ? 6 : len < 65536 ? 8 : 14; }

static void tx_header(uint8_t *p, int opcode, size_t len, const uint8_t key[4]) {
  size_t i = 2;
  p[0] = (uint8_t)(0x80 | opcode);
  if (len < 126) {
    p[1] = (uint8_t)(0x80 | len);
  } else if (len < 65536) {
    p[1] = 0x80 | 126;
    p[2] = (uint8_t)(len >> 8);
    p[3] = (uint8_t)len;
    i = 4;
  } else {
    p[1] = 0x80 | 127;
    for (int j = 0; j < 8; j++) p[2 + j] = (uint8_t)((uint64_t)len >> (56 - 8 * j));
    i = 10;
  }
  memcpy(p + i, key, 4);
}

/* Send one control frame (close/pong) with a payload of at most 125 bytes,
 * straight into the API-server output (frames are whole there, so a control
 * frame can go between any two data frames). 0 or -1. */
static int tx_control(struct pf_carrier *c, struct evbuffer *dst, int opcode,
                      const uint8_t *payload, size_t len) {
  uint8_t frame[6 + 125], key[4];
  if (len > 125 || next_key(c, key) < 0) return -1;
  tx_header(frame, opcode, len, key);
  mask_copy(frame + 6, payload, len, key, 0);
  c->stats.frames_out++;
  return evbuffer_add(dst, frame, 6 + len);
}

static void tx_close(struct pf_carrier *c, struct evbuffer *dst, uint16_t code) {
  uint8_t p[2] = {(uint8_t)(code >> 8), (uint8_t)code};
  if (c->close_sent) return;
  c->close_sent = 1;
  tx_control(c, dst, 0x8, p, code ? 2 : 0);
}

/* End the stream once: keep the reason, stop reading from the API server, and
 * raise `what` on the carrier from the event loop (deferred). */
static void finish(struct pf_carrier *c, short what, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void finish(struct pf_carrier *c, short what, const char *fmt, ...) {
  if (c->rx == RX_DONE) return;
  c->rx = RX_DONE;
  if (fmt) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof(c->err), fmt, ap);
    va_end(ap);
    log_info("port-forward %s: %s", c->what, c->err);
  } else {
    log_debug("port-forward %s: closed by the server", c->what);
  }
  bufferevent_disable(c->api, EV_READ);
  bufferevent_trigger_event(c->bev, (short)(what | BEV_EVENT_READING), BEV_TRIG_DEFER_CALLBACKS);
}

/* The API-server connection ended (api_end) and everything before it has been
 * decoded: raise it. A frame cut in the middle is an error. */
static void finish_from_api(struct pf_carrier *c, size_t undecoded) {
  if (c->api_end & BEV_EVENT_ERROR)
    finish(c, BEV_EVENT_ERROR, "connection to the API server failed: %s", c->api_end_msg);
  else if (undecoded > 0 || c->rx == RX_PAYLOAD)
    finish(c, BEV_EVENT_ERROR, "the API server closed the connection in the middle of a frame");
  else
    finish(c, BEV_EVENT_EOF, "the API server closed the connection without a WebSocket close");
}

/* A complete control frame (FIN, payload <= 125) of `len` bytes is at the head
 * of src after a header of hlen bytes: consume and act on it. */
static void rx_control(struct pf_carrier *c, struct evbuffer *src, int opcode, size_t hlen,
                       size_t len) {
  uint8_t payload[125];
  evbuffer_drain(src, hlen);
  evbuffer_remove(src, payload, len);
  struct evbuffer *out = bufferevent_get_output(c->api);
  if (opcode == 0x9) { /* ping: answer with a pong carrying the same payload */
    if (!c->close_sent) tx_control(c, out, 0xA, payload, len);
    c->stats.pings++;
  } else if (opcode == 0x8) { /* close: answer it, then end */
    unsigned code = len >= 2 ? (unsigned)payload[0] << 8 | payload[1] : 0;
    char reason[126];
    size_t rl = len > 2 ? len - 2 : 0;
    for (size_t i = 0; i < rl; i++)
      reason[i] = payload[2 + i] >= 0x20 && payload[2 + i] < 0x7f ? (char)payload[2 + i] : '?';
    reason[rl] = '\0';
    tx_close(c, out, (uint16_t)code);
    if (code == 0 || code == 1000 || code == 1001)
      finish(c, BEV_EVENT_EOF, NULL);
    else
      finish(c, BEV_EVENT_ERROR, "the server closed the WebSocket with code %u%s%s", code,
             rl ? ": " : "", reason);
  }
  /* pong (0xA): nothing to do, we send no pings */
}

/* Try to take one frame header from src. Returns 1 if something was consumed,
 * 0 if more bytes are needed, -1 if the stream ended (protocol error). */
static int rx_header(struct pf_carrier *c, struct evbuffer *src) {
  uint8_t h[14];
  size_t avail = evbuffer_get_length(src);
  if (avail < 2) return 0;
  evbuffer_copyout(src, h, avail < 14 ? avail : 14);
  int fin = h[0] & 0x80, opcode = h[0] & 0x0f, masked = h[1] & 0x80;
  size_t hlen = 2;
  uint64_t len = h[1] & 0x7f;
  if (len == 126) hlen = 4;
  else if (len == 127) hlen = 10;
  if (masked) hlen += 4;
  if (avail < hlen) return 0;
  if (len == 126) {
    len = (uint64_t)h[2] << 8 | h[3];
  } else if (len == 127) {
    len = 0;
    for (int i = 0; i < 8; i++) len = len << 8 | h[2 + i];
  }
  if (h[0] & 0x70) {
    finish(c, BEV_EVENT_ERROR, "WebSocket protocol error: reserved bits set in a frame");
    return -1;
  }
  if (masked) {
    finish(c, BEV_EVENT_ERROR, "WebSocket protocol error: the server masked a frame");
    return -1;
  }
  if (opcode >= 0x8) {
    if (opcode > 0xA) {
      finish(c, BEV_EVENT_ERROR, "WebSocket protocol error: unknown control opcode %d", opcode);
      return -1;
    }
    if (!fin || len > 125) {
      finish(c, BEV_EVENT_ERROR,
             "WebSocket protocol error: control frame fragmented or longer than 125 bytes");
      return -1;
    }
    if (avail < hlen + len) return 0;
    c->stats.frames_in++;
    rx_control(c, src, opcode, hlen, (size_t)len);
    return c->rx == RX_DONE ? -1 : 1;
  }
  if (opcode == 0x0) {
    if (!c->in_message) {
      finish(c, BEV_EVENT_ERROR, "WebSocket protocol error: continuation without a message");
      return -1;
    }
  } else if (opcode == 0x1 || opcode == 0x2) {
    /* v4.channel.k8s.io sends binary; a text frame would carry the same bytes */
    if (c->in_message) {
      finish(c, BEV_EVENT_ERROR,
             "WebSocket protocol error: new message inside a fragmented message");
      return -1;
    }
    c->in_message = 1;
    c->need_channel = 1;
    c->channel = 0;
  } else {
    finish(c, BEV_EVENT_ERROR, "WebSocket protocol error: unknown opcode %d", opcode);
    return -1;
  }
  if (len > c->max_frame) {
    finish(c, BEV_EVENT_ERROR, "WebSocket frame of %llu bytes exceeds the limit of %zu",
           (unsigned long long)len, c->max_frame);
    return -1;
  }
  evbuffer_drain(src, hlen);
  c->stats.frames_in++;
  c->payload_left = len;
  c->frame_fin = fin != 0;
  c->rx = RX_PAYLOAD;
  return 1;
}

/* The current data frame is fully consumed. */
static void rx_frame_done(struct pf_carrier *c) {
  c->rx = RX_HEADER;
  if (!c->frame_fin) return;
  c->in_message = 0;
  if (c->channel == 1 && c->errtext_any) {
    /* The kubelet reports e.g. a refused dial in the pod; the stream is over. */
    finish(c, BEV_EVENT_ERROR, "error from the kubelet: %.*s", (int)c->errtext_len, c->errtext);
  }
}

/* Consume payload bytes of the current data frame. Returns the number of
 * channel-0 bytes put into dst (at most room), and sets *progress if anything
 * at all was consumed. */
static size_t rx_payload(struct pf_carrier *c, struct evbuffer *src, struct evbuffer *dst,
                         size_t room, int *progress) {
  size_t avail = evbuffer_get_length(src);
  size_t left = c->payload_left > avail ? avail : (size_t)c->payload_left;
  if (left == 0) return 0;
  if (c->need_channel) {
    uint8_t ch;
    evbuffer_remove(src, &ch, 1);
    c->payload_left--;
    *progress = 1;
    if (ch > 1) {
      finish(c, BEV_EVENT_ERROR,
             "port-forward protocol error: data on channel %u (one port has channels 0 and 1)",
             ch);
      return 0;
    }
    c->channel = ch;
    c->need_channel = 0;
    return 0;
  }
  int ch = c->channel;
  if (c->port_got[ch] < 2) { /* the port announcement, 2 bytes little-endian */
    size_t n = 2 - c->port_got[ch];
    if (n > left) n = left;
    evbuffer_remove(src, c->port_le[ch] + c->port_got[ch], n);
    c->port_got[ch] = (uint8_t)(c->port_got[ch] + n);
    c->payload_left -= n;
    *progress = 1;
    if (c->port_got[ch] == 2) {
      unsigned p = c->port_le[ch][0] | (unsigned)c->port_le[ch][1] << 8;
      if (p != c->port)
        finish(c, BEV_EVENT_ERROR, "port-forward protocol error: the server announced port %u on "
               "channel %d, expected %u", p, ch, (unsigned)c->port);
    }
    return 0;
  }
  if (ch == 1) { /* error text: keep the first ERRTEXT_MAX bytes */
    size_t keep = sizeof(c->errtext) - c->errtext_len;
    if (keep > left) keep = left;
    evbuffer_remove(src, c->errtext + c->errtext_len, keep);
    for (size_t i = c->errtext_len; i < c->errtext_len + keep; i++)
      if ((unsigned char)c->errtext[i] < 0x20 || c->errtext[i] == 0x7f) c->errtext[i] = ' ';
    c->errtext_len += keep;
    evbuffer_drain(src, left - keep);
    c->payload_left -= left;
    c->errtext_any = 1;
    *progress = 1;
    return 0;
  }
  size_t n = left < room ? left : room;
  if (n == 0) return 0;
  evbuffer_remove_buffer(src, dst, n);
  c->payload_left -= n;
  c->stats.bytes_in += n;
  *progress = 1;
  return n;
}

/* Input filter: src is the API-server input, dst the carrier's input. Decodes as
 * many frames as there are, putting at most `limit` bytes into dst (limit < 0:
 * no limit). Returns BEV_OK if bytes went into dst, BEV_NEED_MORE otherwise (so
 * libevent does not call again without new input). */
static enum bufferevent_filter_result rx_filter(struct evbuffer *src, struct evbuffer *dst,
                                                ev_ssize_t limit,
                                                enum bufferevent_flush_mode mode, void *arg) {
  struct pf_carrier *c = arg;
  size_t have = evbuffer_get_length(dst);
  size_t max = have >= c->rx_high ? 0 : c->rx_high - have, produced = 0;
  int starved = 0;
  (void)mode;
  if (limit >= 0 && (size_t)limit < max) max = (size_t)limit; /* a user's read high mark */
  while (!starved) {
    int progress = 0;
    if (c->rx == RX_DONE) {
      evbuffer_drain(src, evbuffer_get_length(src));
      return produced ? BEV_OK : BEV_NEED_MORE;
    }
    if (c->rx == RX_HEADER) {
      if (rx_header(c, src) == 0) starved = 1;
      continue;
    }
    if (c->payload_left == 0) {
      rx_frame_done(c);
      continue;
    }
    produced += rx_payload(c, src, dst, max - produced, &progress);
    if (!progress) {
      if (evbuffer_get_length(src) == 0) starved = 1;
      else break; /* dst is full: wait for the reader to drain it */
    }
  }
  c->starved = starved;
  if (!starved && c->rx != RX_DONE && evbuffer_get_length(dst) >= c->rx_high && !c->rx_blocked) {
    /* Full: stop reading from the API server until the reader drains (not
     * libevent's read watermark: on a deferred bufferevent that re-runs the read
     * callback on every loop turn while the reader holds the bytes). */
    c->rx_blocked = 1;
    bufferevent_disable(c->api, EV_READ);
  }
  /* Everything that arrived before the API-server connection ended is decoded. */
  if (c->api_end && starved) finish_from_api(c, evbuffer_get_length(src));
  return produced ? BEV_OK : BEV_NEED_MORE;
}

/* Output filter: src is the carrier's output, dst the API-server output. Sends
 * src as masked binary frames on channel 0 while dst holds less than `limit`
 * more bytes (limit < 0: all). In BEV_FINISHED mode a close frame follows. */
static enum bufferevent_filter_result tx_filter(struct evbuffer *src, struct evbuffer *dst,
                                                ev_ssize_t limit,
                                                enum bufferevent_flush_mode mode, void *arg) {
  struct pf_carrier *c = arg;
  size_t made = 0, max = limit < 0 ? SIZE_MAX : (size_t)limit;
  size_t len;
  if (c->close_sent) { /* after a close frame nothing may follow */
    evbuffer_drain(src, evbuffer_get_length(src));
    return BEV_NEED_MORE;
  }
  while ((len = evbuffer_get_length(src)) > 0 && made < max) {
    size_t n = len < PF_MAX_OUT_FRAME - 1 ? len : PF_MAX_OUT_FRAME - 1; /* + channel byte */
    size_t plen = n + 1, hl = tx_header_len(plen);
    struct evbuffer_iovec v;
    uint8_t key[4];
    if (next_key(c, key) < 0) {
      finish(c, BEV_EVENT_ERROR, "no random bytes for WebSocket masking keys");
      return BEV_ERROR;
    }
    if (evbuffer_reserve_space(dst, (ev_ssize_t)(hl + plen), &v, 1) < 1 ||
        v.iov_len < hl + plen) {
      finish(c, BEV_EVENT_ERROR, "out of memory framing %zu bytes", n);
      return BEV_ERROR;
    }
    uint8_t *p = v.iov_base;
    tx_header(p, 0x2, plen, key);
    p += hl;
    *p++ = key[0]; /* channel 0, masked */
    /* Copy the bytes into the frame, then mask them in place. */
    evbuffer_remove(src, p, n);
    mask_copy(p, p, n, key, 1);
    v.iov_len = hl + plen;
    evbuffer_commit_space(dst, &v, 1);
    made += hl + plen;
    c->stats.frames_out++;
    c->stats.bytes_out += n;
  }
  if (mode == BEV_FINISHED && evbuffer_get_length(src) == 0) {
    tx_close(c, dst, 1000);
    made++;
  }
  return made ? BEV_OK : BEV_NEED_MORE;
}

/* The filter's callbacks on api, wrapped (see the top of this file). */
static int still_ours(struct bufferevent *api, struct pf_carrier *c) {
  void *arg = NULL;
  bufferevent_getcb(api, NULL, NULL, NULL, &arg);
  return arg == c; /* freeing the carrier clears api's callbacks */
}

static void wrap_read(struct bufferevent *api, void *arg) {
  struct pf_carrier *c = arg;
  if (c->rx_blocked && c->rx != RX_DONE &&
      evbuffer_get_length(bufferevent_get_input(c->bev)) < c->rx_high) {
    c->rx_blocked = 0; /* the reader drained (input_drained sent us here) */
    bufferevent_enable(api, EV_READ);
  }
  c->f_read(api, c->f_arg);
  if (!still_ours(api, c)) return;
  /* The API-server connection ended with nothing left to decode, but the
   * filter did not run (the carrier's input was at its high mark): end now. */
  if (c->api_end && c->rx != RX_DONE && evbuffer_get_length(bufferevent_get_input(api)) == 0)
    finish_from_api(c, 0);
}

/* The reader drained the carrier's input. If rx_filter stopped for lack of room,
 * decode on from the loop (wrap_read): the bytes still in api's input would
 * otherwise wait for the next network read, which may never come, and reading
 * from api is re-enabled there if it was stopped. */
static void input_drained(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg) {
  struct pf_carrier *c = arg;
  (void)buf;
  if (info->n_deleted == 0 || c->starved || c->rx == RX_DONE) return;
  c->starved = 1; /* one nudge per stop */
  bufferevent_trigger(c->api, EV_READ, BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
}

static void wrap_write(struct bufferevent *api, void *arg) {
  struct pf_carrier *c = arg;
  c->f_write(api, c->f_arg);
}

/* Why api ended, in a few words: DNS, the certificate, TLS, the socket. */
void pf_describe_api_error(struct bufferevent *api, int sockerr, char *out, size_t len) {
  SSL *ssl = bufferevent_openssl_get_ssl(api);
  long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
  int dnserr = bufferevent_socket_get_dns_error(api);
  unsigned long e, tls = 0;
  /* libevent queues both OpenSSL error codes and bare SSL_get_error() values
   * (SSL_ERROR_SYSCALL = 5, ...); only the former say something. Keep the first. */
  while ((e = bufferevent_get_openssl_error(api)) != 0)
    if (!tls && ERR_GET_LIB(e) != 0) tls = e;
  if (dnserr) {
    snprintf(out, len, "cannot resolve the host name: %s", evutil_gai_strerror(dnserr));
  } else if (v != X509_V_OK) {
    snprintf(out, len, "TLS: the API server's certificate was refused: %s",
             X509_verify_cert_error_string(v));
  } else if (tls) {
    const char *r = ERR_reason_error_string(tls);
    char buf[256];
    if (!r) {
      ERR_error_string_n(tls, buf, sizeof(buf));
      r = buf;
    }
    snprintf(out, len, "TLS: %s", r);
  } else if (sockerr) {
    snprintf(out, len, "%s", evutil_socket_error_to_string(sockerr));
  } else {
    snprintf(out, len, "connection closed");
  }
}


static void wrap_event(struct bufferevent *api, short what, void *arg) {
  struct pf_carrier *c = arg;
  if (c->rx == RX_DONE) return; /* already raised; swallow the connection's own end */
  if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
    if (!c->api_end) {
      c->api_end = what & BEV_EVENT_ERROR ? BEV_EVENT_ERROR : BEV_EVENT_EOF;
      pf_describe_api_error(api, EVUTIL_SOCKET_ERROR(), c->api_end_msg, sizeof(c->api_end_msg));
    }
    /* Decode what came before it first (it may not even be committed to api's
     * input yet): run the read path once more from the loop; rx_filter raises
     * the end when it has nothing left to decode. */
    bufferevent_trigger(api, EV_READ, BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
    return;
  }
  c->f_event(api, what, c->f_arg);
}

static void carrier_free(void *arg) {
  struct pf_carrier *c = arg;
  if (c->drain_cb) evbuffer_remove_cb_entry(bufferevent_get_input(c->bev), c->drain_cb);
  c->magic = 0;
  free(c);
}

struct bufferevent *pf_carrier_new(struct bufferevent *conn, uint16_t port, size_t max_frame,
                                   const char *what) {
  struct pf_carrier *c = calloc(1, sizeof(*c));
  if (!c) return NULL;
  c->magic = CARRIER_MAGIC;
  c->api = conn;
  c->port = port;
  c->max_frame = max_frame ? max_frame : PF_DEFAULT_MAX_FRAME;
  c->keys_used = sizeof(c->keys);
  c->starved = 1;
  c->rx_high = PF_DEFAULT_HIGH;
  snprintf(c->what, sizeof(c->what), "%s", what ? what : "carrier");
  bufferevent_setcb(conn, NULL, NULL, NULL, NULL);
  /* Deferred callbacks: an openssl filter on top writes into the carrier from
   * inside SSL_write(); run synchronously, the filter's write callback would
   * re-enter that SSL (OpenSSL 3 then crashes on a half-popped BIO chain). */
  struct bufferevent *bev = bufferevent_filter_new(
      conn, rx_filter, tx_filter, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS, carrier_free, c);
  if (!bev) {
    free(c);
    return NULL;
  }
  c->bev = bev;
  bufferevent_getcb(conn, &c->f_read, &c->f_write, &c->f_event, &c->f_arg);
  bufferevent_setcb(conn, wrap_read, wrap_write, wrap_event, c);
  bufferevent_setwatermark(conn, EV_WRITE, PF_DEFAULT_HIGH / 2, PF_DEFAULT_HIGH);
  bufferevent_setwatermark(bev, EV_WRITE, 0, PF_DEFAULT_HIGH);
  c->drain_cb = evbuffer_add_cb(bufferevent_get_input(bev), input_drained, c);
  /* Frames already read (e.g. with the 101) are decoded from the loop, once the
   * user has set the carrier's callbacks and enabled reading. */
  if (evbuffer_get_length(bufferevent_get_input(conn)) > 0)
    bufferevent_trigger(conn, EV_READ, BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
  return bev;
}

/* The carrier behind bev: only pf_carrier_new() puts wrap_read on the
 * connection under a filter, with the carrier as its argument. */
static struct pf_carrier *carrier_of(struct bufferevent *bev) {
  bufferevent_data_cb rd = NULL;
  void *arg = NULL;
  struct bufferevent *conn = bev ? bufferevent_get_underlying(bev) : NULL;
  if (!conn) return NULL;
  bufferevent_getcb(conn, &rd, NULL, NULL, &arg);
  struct pf_carrier *c = arg;
  return rd == wrap_read && c && c->magic == CARRIER_MAGIC && c->bev == bev ? c : NULL;
}

const char *pf_carrier_error(struct bufferevent *carrier) {
  struct pf_carrier *c = carrier_of(carrier);
  return c && c->err[0] ? c->err : NULL;
}

int pf_carrier_stats(struct bufferevent *carrier, struct pf_stats *out) {
  struct pf_carrier *c = carrier_of(carrier);
  if (!c) return -1;
  *out = c->stats;
  return 0;
}
