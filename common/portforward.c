/* portforward.c: the pod port-forward carrier (see portforward.h).
 *
 * Two halves. The dial (struct pf_connecting) runs TCP + TLS to the API server,
 * sends the WebSocket upgrade, and reads the answer with llhttp: a 101 is checked
 * (Upgrade, Connection, Sec-WebSocket-Accept, subprotocol), anything else is read
 * to its end so the Kubernetes Status message in the body can be shown. The
 * carrier (struct pf_carrier) is the context of a bufferevent_filter over the
 * API-server TLS bufferevent: rx_filter() decodes server frames as a stream,
 * tx_filter() frames and masks what the user writes.
 *
 * Ends of stream are raised on the carrier with bufferevent_trigger_event(...,
 * BEV_TRIG_DEFER_CALLBACKS), never synchronously from inside a filter, so the
 * user may free the carrier in its event callback. EOF/ERROR coming from the
 * API-server connection itself are held back until the bytes received before
 * them are decoded: bufferevent_openssl can report EOF before it commits the last
 * record it read, and the kubelet's error text is exactly such a last record.
 * For that the carrier wraps the three callbacks the filter set on the
 * underlying bufferevent (read with bufferevent_getcb(), forwarded unchanged). */
#include "portforward.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <llhttp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "addr.h"
#include "log.h"
#include "netproxy.h"

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define HEAD_MAX 16384       /* largest response head we read */
#define BODY_MAX 65536       /* largest error body we keep (the rest is read and dropped) */
#define ERRTEXT_MAX 1024     /* largest kubelet error text we keep */
#define CARRIER_MAGIC 0x6b627066u
#define PF_ADDR_TIMEOUT_MS 3000 /* per address while more addresses remain */

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

static void describe_api_error(struct bufferevent *api, int sockerr, char *out, size_t len);

static void wrap_event(struct bufferevent *api, short what, void *arg) {
  struct pf_carrier *c = arg;
  if (c->rx == RX_DONE) return; /* already raised; swallow the connection's own end */
  if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
    if (!c->api_end) {
      c->api_end = what & BEV_EVENT_ERROR ? BEV_EVENT_ERROR : BEV_EVENT_EOF;
      describe_api_error(api, EVUTIL_SOCKET_ERROR(), c->api_end_msg, sizeof(c->api_end_msg));
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

/* ------------------------------------------------------------------------ */
/* Dial: TCP + TLS + the upgrade request and its answer                       */
/* ------------------------------------------------------------------------ */

enum dial_state {
  DIAL_START,      /* scheduled: the connect starts from the loop, never inside pf_connect() */
  DIAL_RESOLVING,  /* looking up the API server's host name */
  DIAL_TCP,        /* TCP connect to one of its addresses (the next one if it fails);
                    * with a proxy: the proxy's name and addresses */
  DIAL_PROXY,      /* CONNECT sent to the proxy (conn_ev: writing, then reading the answer) */
  DIAL_TLS,        /* TLS handshake with the API server */
  DIAL_HEAD,       /* upgrade request sent; waiting for the whole answer head */
  DIAL_BODY,       /* a non-101 answer: reading its body for the Status message */
};

struct pf_connecting {
  struct event_base *base;
  struct evdns_base *dns;
  struct bufferevent *api;
  struct event *timer; /* first the start, then the deadline */
  enum dial_state state;
  SSL *ssl;            /* for the API-server TLS, until the TCP connect succeeds */
  struct evdns_getaddrinfo_request *dns_req; /* DIAL_RESOLVING with a dns base */
  struct evutil_addrinfo *ai_list, *ai_next; /* the addresses, the next to try */
  evutil_socket_t fd;  /* DIAL_TCP: the socket being connected, else -1 */
  struct event *conn_ev; /* DIAL_TCP: writable (connected or failed) or timeout */
  char addr[80];       /* the address being tried, "ip:port" */
  char last_err[200];  /* why the last address failed */
  int n_tried;
  pf_ready_cb cb;
  void *arg;

  char host[256];   /* from the URL, without brackets */
  uint16_t hport;
  int use_proxy;     /* connect through proxy (HTTP CONNECT) */
  struct netproxy proxy;
  char *preq;        /* DIAL_PROXY: the CONNECT request, sent from preq_off */
  size_t preq_len, preq_off;
  char presp[HEAD_MAX + 1]; /* DIAL_PROXY: the proxy's answer so far */
  size_t presp_len;
  char *prefix;     /* URL path without trailing '/', may be "" */
  char *token;      /* or NULL */
  char ns[64], pod[254];
  uint16_t port;
  unsigned timeout_ms;
  size_t max_frame;
  char what[400];   /* "port-forward to pod NS/POD port P" */
  char key[32];     /* Sec-WebSocket-Key sent */

  llhttp_t parser;
  int status;
  char reason[64];
  size_t reason_len;
  char hfield[40];  /* current header name (longer names are of no interest) */
  size_t hfield_len;
  char hvalue[256]; /* current header value, truncated */
  size_t hvalue_len;
  char upgrade[64], connection[128], accept[64], protocol[64];
  int have_protocol;
  char *body;
  size_t body_len;
  int body_done;
  char err[2048];
};

static void dial_free(struct pf_connecting *d) {
  if (d->dns_req) evdns_getaddrinfo_cancel(d->dns_req); /* resolved() ignores the cancel */
  if (d->ai_list) evutil_freeaddrinfo(d->ai_list);
  if (d->conn_ev) event_free(d->conn_ev);
  if (d->fd >= 0) evutil_closesocket(d->fd);
  if (d->ssl) SSL_free(d->ssl);
  if (d->api) bufferevent_free(d->api);
  if (d->timer) event_free(d->timer);
  free(d->prefix);
  if (d->preq) {
    OPENSSL_cleanse(d->preq, d->preq_len);
    free(d->preq);
  }
  netproxy_clear(&d->proxy);
  if (d->token) {
    OPENSSL_cleanse(d->token, strlen(d->token));
    free(d->token);
  }
  free(d->body);
  free(d);
}

void pf_connect_cancel(struct pf_connecting *c) {
  if (c) dial_free(c);
}

/* Report failure to the user and free everything. */
static void dial_fail(struct pf_connecting *d, int http_status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void dial_fail(struct pf_connecting *d, int http_status, const char *fmt, ...) {
  va_list ap;
  int n = snprintf(d->err, sizeof(d->err), "%s: ", d->what);
  va_start(ap, fmt);
  vsnprintf(d->err + n, sizeof(d->err) - (size_t)n, fmt, ap);
  va_end(ap);
  pf_ready_cb cb = d->cb;
  void *arg = d->arg;
  /* The api connection goes first: nothing of it may call us during cb. */
  if (d->api) {
    bufferevent_free(d->api);
    d->api = NULL;
  }
  cb(NULL, d->err, http_status, arg);
  dial_free(d);
}

static void describe_api_error(struct bufferevent *api, int sockerr, char *out, size_t len) {
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

static void dial_timeout(evutil_socket_t fd, short what, void *arg) {
  struct pf_connecting *d = arg;
  (void)fd;
  (void)what;
  dial_fail(d, 0, "timed out after %u ms %s", d->timeout_ms,
            d->state == DIAL_RESOLVING && d->use_proxy ? "resolving the proxy's host name"
            : d->state == DIAL_RESOLVING ? "resolving the API server's host name"
            : d->state == DIAL_TCP && d->use_proxy ? "connecting to the proxy"
            : d->state == DIAL_TCP     ? "connecting to the API server"
            : d->state == DIAL_PROXY   ? "waiting for the proxy to answer CONNECT"
            : d->state == DIAL_TLS     ? "in the TLS handshake with the API server"
            : d->state == DIAL_HEAD     ? "waiting for the API server to answer the upgrade"
                                        : "reading the API server's error answer");
}

/* --- llhttp callbacks for the answer --- */

static int on_status(llhttp_t *p, const char *at, size_t len) {
  struct pf_connecting *d = p->data;
  size_t n = sizeof(d->reason) - 1 - d->reason_len;
  if (n > len) n = len;
  memcpy(d->reason + d->reason_len, at, n);
  d->reason_len += n;
  d->reason[d->reason_len] = '\0';
  return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  struct pf_connecting *d = p->data;
  size_t n = sizeof(d->hfield) - 1 - d->hfield_len;
  if (n > len) n = len;
  memcpy(d->hfield + d->hfield_len, at, n);
  d->hfield_len += n;
  d->hfield[d->hfield_len] = '\0';
  return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  struct pf_connecting *d = p->data;
  size_t n = sizeof(d->hvalue) - 1 - d->hvalue_len;
  if (n > len) n = len;
  memcpy(d->hvalue + d->hvalue_len, at, n);
  d->hvalue_len += n;
  d->hvalue[d->hvalue_len] = '\0';
  return 0;
}

/* Copy v into dst, truncated to dstlen - 1 bytes. */
static void keep(char *dst, size_t dstlen, const char *v) {
  size_t n = strlen(v);
  if (n >= dstlen) n = dstlen - 1;
  memcpy(dst, v, n);
  dst[n] = '\0';
}

static int on_header_value_complete(llhttp_t *p) {
  struct pf_connecting *d = p->data;
  if (strcasecmp(d->hfield, "upgrade") == 0) {
    keep(d->upgrade, sizeof(d->upgrade), d->hvalue);
  } else if (strcasecmp(d->hfield, "connection") == 0) {
    keep(d->connection, sizeof(d->connection), d->hvalue);
  } else if (strcasecmp(d->hfield, "sec-websocket-accept") == 0) {
    keep(d->accept, sizeof(d->accept), d->hvalue);
  } else if (strcasecmp(d->hfield, "sec-websocket-protocol") == 0) {
    keep(d->protocol, sizeof(d->protocol), d->hvalue);
    d->have_protocol = 1;
  }
  d->hfield_len = d->hvalue_len = 0;
  d->hfield[0] = d->hvalue[0] = '\0';
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  struct pf_connecting *d = p->data;
  size_t n = BODY_MAX - d->body_len;
  if (n > len) n = len;
  if (n == 0) return 0;
  if (!d->body && !(d->body = malloc(BODY_MAX + 1))) return -1;
  memcpy(d->body + d->body_len, at, n);
  d->body_len += n;
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  struct pf_connecting *d = p->data;
  d->body_done = 1;
  return HPE_PAUSED;
}

static const llhttp_settings_t answer_settings = {
    .on_status = on_status,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* Is `token` one of the comma-separated tokens of list (case-insensitive)? */
static int has_token(const char *list, const char *token) {
  size_t tl = strlen(token);
  const char *s = list;
  while (*s) {
    while (*s == ' ' || *s == '\t' || *s == ',') s++;
    const char *e = s;
    while (*e && *e != ',') e++;
    const char *t = e;
    while (t > s && (t[-1] == ' ' || t[-1] == '\t')) t--;
    if ((size_t)(t - s) == tl && strncasecmp(s, token, tl) == 0) return 1;
    s = e;
  }
  return 0;
}

/* The answer was not 101: make the user's error from the Status in its body. */
static void fail_http(struct pf_connecting *d) {
  char snippet[320];
  const char *msg = NULL;
  cJSON *j = NULL;
  if (d->body_len) {
    d->body[d->body_len] = '\0';
    j = cJSON_Parse(d->body);
    cJSON *m = j ? cJSON_GetObjectItemCaseSensitive(j, "message") : NULL;
    if (cJSON_IsString(m) && m->valuestring[0]) msg = m->valuestring;
    if (!msg) { /* not a Status: show the start of the body, one line */
      size_t n = 0;
      for (size_t i = 0; i < d->body_len && n < sizeof(snippet) - 4; i++) {
        unsigned char ch = (unsigned char)d->body[i];
        if (ch < 0x20 || ch == 0x7f) ch = ' ';
        if (ch == ' ' && (n == 0 || snippet[n - 1] == ' ')) continue;
        snippet[n++] = (char)ch;
      }
      if (n == sizeof(snippet) - 4) memcpy(snippet + n, "...", 3), n += 3;
      snippet[n] = '\0';
      if (n) msg = snippet;
    }
  }
  const char *hint = "";
  if (d->status >= 200 && d->status < 300)
    hint = " (a WebSocket upgrade was expected: is this really the API server?)";
  dial_fail(d, d->status, "HTTP %d%s%s%s%s%s", d->status, d->reason[0] ? " " : "", d->reason,
            msg ? ": " : "", msg ? msg : "", hint);
  cJSON_Delete(j);
}

/* Feed what is in api's input to the parser of a non-101 answer's body. */
static void read_body(struct pf_connecting *d) {
  struct evbuffer *in = bufferevent_get_input(d->api);
  while (!d->body_done && evbuffer_get_length(in) > 0) {
    struct evbuffer_iovec v;
    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1) break;
    enum llhttp_errno e = llhttp_execute(&d->parser, v.iov_base, v.iov_len);
    evbuffer_drain(in, v.iov_len);
    if (e != HPE_OK && e != HPE_PAUSED) {
      d->body_done = 1; /* a broken body: report what we have */
      break;
    }
  }
  if (d->body_done) fail_http(d);
}

static void become_carrier(struct pf_connecting *d);

static void dial_read(struct bufferevent *api, void *arg) {
  struct pf_connecting *d = arg;
  struct evbuffer *in = bufferevent_get_input(api);
  if (d->state == DIAL_BODY) {
    read_body(d);
    return;
  }
  if (d->state != DIAL_HEAD) return;
  struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
  if (end.pos < 0) {
    if (evbuffer_get_length(in) > HEAD_MAX)
      dial_fail(d, 0, "the API server's answer head is longer than %d bytes", HEAD_MAX);
    return;
  }
  size_t hl = (size_t)end.pos + 4;
  if (hl > HEAD_MAX) {
    dial_fail(d, 0, "the API server's answer head is longer than %d bytes", HEAD_MAX);
    return;
  }
  const char *head = (const char *)evbuffer_pullup(in, (ev_ssize_t)hl);
  llhttp_init(&d->parser, HTTP_RESPONSE, &answer_settings);
  d->parser.data = d;
  enum llhttp_errno e = llhttp_execute(&d->parser, head, hl);
  evbuffer_drain(in, hl);
  if (e != HPE_OK && e != HPE_PAUSED_UPGRADE && e != HPE_PAUSED) {
    dial_fail(d, 0, "the API server's answer is not valid HTTP: %s",
              llhttp_get_error_reason(&d->parser));
    return;
  }
  d->status = d->parser.status_code;
  if (d->status != 101) {
    d->state = DIAL_BODY;
    if (d->body_done) fail_http(d); /* no body at all */
    else read_body(d);
    return;
  }
  char want[32];
  pf_ws_accept(d->key, want, sizeof(want));
  if (strcasecmp(d->upgrade, "websocket") != 0 || !has_token(d->connection, "upgrade"))
    dial_fail(d, 101, "the API server switched protocols, but not to WebSocket (Upgrade: %s, "
              "Connection: %s)", d->upgrade, d->connection);
  else if (strcmp(d->accept, want) != 0)
    dial_fail(d, 101, "the API server's Sec-WebSocket-Accept \"%s\" does not match our key "
              "(expected \"%s\")", d->accept, want);
  else if (!d->have_protocol)
    dial_fail(d, 101, "the API server chose no WebSocket subprotocol; " PF_SUBPROTOCOL
              " is needed (Kubernetes too old?)");
  else if (strcmp(d->protocol, PF_SUBPROTOCOL) != 0)
    dial_fail(d, 101, "the API server chose subprotocol \"%s\" instead of " PF_SUBPROTOCOL,
              d->protocol);
  else
    become_carrier(d);
}

static void send_upgrade(struct pf_connecting *d) {
  uint8_t raw[16];
  if (RAND_bytes(raw, sizeof(raw)) != 1) {
    dial_fail(d, 0, "no random bytes for the WebSocket key");
    return;
  }
  EVP_EncodeBlock((unsigned char *)d->key, raw, sizeof(raw));
  struct evbuffer *out = bufferevent_get_output(d->api);
  int v6 = strchr(d->host, ':') != NULL;
  evbuffer_add_printf(out,
                      "GET %s/api/v1/namespaces/%s/pods/%s/portforward?ports=%u HTTP/1.1\r\n"
                      "Host: %s%s%s:%u\r\n"
                      "User-Agent: kbridge/" KBRIDGE_VERSION "\r\n"
                      "Upgrade: websocket\r\n"
                      "Connection: Upgrade\r\n"
                      "Sec-WebSocket-Key: %s\r\n"
                      "Sec-WebSocket-Version: 13\r\n"
                      "Sec-WebSocket-Protocol: " PF_SUBPROTOCOL "\r\n",
                      d->prefix, d->ns, d->pod, (unsigned)d->port, v6 ? "[" : "", d->host,
                      v6 ? "]" : "", (unsigned)d->hport, d->key);
  if (d->token) evbuffer_add_printf(out, "Authorization: Bearer %s\r\n", d->token);
  evbuffer_add(out, "\r\n", 2);
  d->state = DIAL_HEAD;
}

static void dial_event(struct bufferevent *api, short what, void *arg) {
  struct pf_connecting *d = arg;
  if (what & BEV_EVENT_CONNECTED) {
    send_upgrade(d);
    return;
  }
  if (d->state == DIAL_BODY && (what & BEV_EVENT_EOF)) { /* body ends with the connection */
    llhttp_finish(&d->parser);
    fail_http(d);
    return;
  }
  char why[300];
  describe_api_error(api, EVUTIL_SOCKET_ERROR(), why, sizeof(why));
  if (d->state == DIAL_TLS)
    dial_fail(d, 0, "TLS with the API server %s:%u (%s) failed: %s", d->host,
              (unsigned)d->hport, d->addr, why);
  else
    dial_fail(d, 0, "the API server closed the connection before answering the upgrade: %s",
              why);
}

/* TCP connected: TLS on the socket, then the upgrade (dial_event CONNECTED). */
static void start_tls(struct pf_connecting *d, evutil_socket_t fd) {
  d->api = bufferevent_openssl_socket_new(d->base, fd, d->ssl, BUFFEREVENT_SSL_CONNECTING,
                                          BEV_OPT_CLOSE_ON_FREE);
  if (!d->api) {
    evutil_closesocket(fd);
    dial_fail(d, 0, "cannot create the API server connection");
    return;
  }
  d->ssl = NULL; /* owned by d->api */
  d->state = DIAL_TLS;
  bufferevent_openssl_set_allow_dirty_shutdown(d->api, 1);
  bufferevent_setcb(d->api, dial_read, NULL, dial_event, d);
  bufferevent_enable(d->api, EV_READ | EV_WRITE);
}

static void try_next_address(struct pf_connecting *d);

/* --- through an HTTP proxy: CONNECT, then TLS as if connected directly --- */

static void proxy_io(evutil_socket_t fd, short what, void *arg);

static int proxy_wait(struct pf_connecting *d, short what) {
  if (d->conn_ev) event_free(d->conn_ev);
  d->conn_ev = event_new(d->base, d->fd, what | EV_PERSIST, proxy_io, d);
  return d->conn_ev && event_add(d->conn_ev, NULL) == 0 ? 0 : -1;
}

/* The proxy's answer head is complete (n bytes, more may follow): a 2xx hands
 * the socket to TLS, anything else fails naming the proxy. */
static void proxy_answer(struct pf_connecting *d, size_t head_len) {
  int v6 = strchr(d->host, ':') != NULL;
  char line[200];
  size_t ll = strcspn(d->presp, "\r\n");
  if (ll >= sizeof line) ll = sizeof line - 1;
  for (size_t i = 0; i < ll; i++) {
    unsigned char ch = (unsigned char)d->presp[i];
    line[i] = ch < 0x20 || ch == 0x7f ? ' ' : (char)ch;
  }
  line[ll] = '\0';
  int status = 0;
  if (ll < 12 || strncmp(line, "HTTP/1.", 7) != 0 || sscanf(line + 8, " %3d", &status) != 1) {
    dial_fail(d, 0, "the proxy %s did not answer CONNECT %s%s%s:%u with HTTP (\"%s\")",
              d->proxy.shown, v6 ? "[" : "", d->host, v6 ? "]" : "", (unsigned)d->hport, line);
    return;
  }
  if (status < 200 || status > 299) {
    const char *reason = line + 8;
    while (*reason == ' ') reason++;
    dial_fail(d, status == 407 ? 407 : 0,
              "the proxy %s refused CONNECT %s%s%s:%u: HTTP %s%s", d->proxy.shown,
              v6 ? "[" : "", d->host, v6 ? "]" : "", (unsigned)d->hport, reason,
              status == 407 ? (d->proxy.user ? " (the user and password in the proxy URL "
                                                "were refused)"
                                             : " (put user:password@ in the proxy URL)")
                            : "");
    return;
  }
  if (d->presp_len > head_len) {
    dial_fail(d, 0, "the proxy %s sent %zu bytes after its CONNECT answer, before TLS began",
              d->proxy.shown, d->presp_len - head_len);
    return;
  }
  log_debug("%s: proxy %s: %s", d->what, d->proxy.shown, line);
  evutil_socket_t fd = d->fd;
  event_free(d->conn_ev);
  d->conn_ev = NULL;
  d->fd = -1;
  start_tls(d, fd);
}

static void proxy_io(evutil_socket_t fd, short what, void *arg) {
  struct pf_connecting *d = arg;
  (void)what;
  if (d->preq_off < d->preq_len) {
    ssize_t n = send(fd, d->preq + d->preq_off, d->preq_len - d->preq_off, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    if (n < 0) {
      dial_fail(d, 0, "sending CONNECT to the proxy %s (%s) failed: %s", d->proxy.shown, d->addr,
                strerror(errno));
      return;
    }
    d->preq_off += (size_t)n;
    if (d->preq_off == d->preq_len && proxy_wait(d, EV_READ) < 0)
      dial_fail(d, 0, "out of memory");
    return;
  }
  ssize_t n = recv(fd, d->presp + d->presp_len, HEAD_MAX - d->presp_len, 0);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
  if (n <= 0) {
    dial_fail(d, 0, "the proxy %s (%s) closed the connection before answering CONNECT%s%s",
              d->proxy.shown, d->addr, n < 0 ? ": " : "", n < 0 ? strerror(errno) : "");
    return;
  }
  d->presp_len += (size_t)n;
  d->presp[d->presp_len] = '\0';
  char *end = strstr(d->presp, "\r\n\r\n");
  if (end) {
    proxy_answer(d, (size_t)(end - d->presp) + 4);
    return;
  }
  if (d->presp_len >= HEAD_MAX)
    dial_fail(d, 0, "the proxy %s's answer head is longer than %d bytes", d->proxy.shown,
              HEAD_MAX);
}

/* TCP connected to the proxy: send CONNECT host:port. */
static void proxy_start(struct pf_connecting *d, evutil_socket_t fd) {
  char auth[700];
  int v6 = strchr(d->host, ':') != NULL;
  d->fd = fd;
  d->state = DIAL_PROXY;
  if (netproxy_basic_auth(&d->proxy, auth, sizeof auth) < 0) {
    dial_fail(d, 0, "the user and password in the proxy URL %s are too long", d->proxy.shown);
    return;
  }
  size_t n = strlen(d->host) + strlen(auth) * 2 + 256;
  if (!(d->preq = malloc(n))) {
    dial_fail(d, 0, "out of memory");
    return;
  }
  int len = snprintf(d->preq, n,
                     "CONNECT %s%s%s:%u HTTP/1.1\r\nHost: %s%s%s:%u\r\n"
                     "User-Agent: kbridge/" KBRIDGE_VERSION "\r\n%s%s%s\r\n",
                     v6 ? "[" : "", d->host, v6 ? "]" : "", (unsigned)d->hport, v6 ? "[" : "",
                     d->host, v6 ? "]" : "", (unsigned)d->hport,
                     auth[0] ? "Proxy-Authorization: " : "", auth, auth[0] ? "\r\n" : "");
  OPENSSL_cleanse(auth, sizeof auth);
  d->preq_len = (size_t)len;
  d->preq_off = 0;
  if (proxy_wait(d, EV_WRITE) < 0) dial_fail(d, 0, "out of memory");
}

static void tcp_done(evutil_socket_t fd, short what, void *arg) {
  struct pf_connecting *d = arg;
  int err = 0;
  socklen_t len = sizeof(err);
  event_free(d->conn_ev);
  d->conn_ev = NULL;
  d->fd = -1;
  if (what & EV_TIMEOUT)
    err = ETIMEDOUT;
  else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
    err = errno;
  if (err) {
    snprintf(d->last_err, sizeof(d->last_err), "%s: %s", d->addr,
             evutil_socket_error_to_string(err));
    evutil_closesocket(fd);
    try_next_address(d);
    return;
  }
  if (d->use_proxy)
    proxy_start(d, fd);
  else
    start_tls(d, fd);
}

/* Connect to the next address of the list; when none is left, fail with the
 * last reason. An address gets PF_ADDR_TIMEOUT_MS while others remain (so a
 * blackholed IPv6 address does not eat the whole timeout). */
static void try_next_address(struct pf_connecting *d) {
  while (d->ai_next) {
    struct evutil_addrinfo *ai = d->ai_next;
    d->ai_next = ai->ai_next;
    if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) continue;
    addr_format_sa(ai->ai_addr, d->addr, sizeof(d->addr));
    d->n_tried++;
    evutil_socket_t fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      snprintf(d->last_err, sizeof(d->last_err), "%s: %s", d->addr, strerror(errno));
      continue;
    }
    int one = 1; /* small frames (interactive requests) must not wait for Nagle */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, ai->ai_addr, (socklen_t)ai->ai_addrlen) == 0 || errno == EINPROGRESS) {
      struct timeval tv = {PF_ADDR_TIMEOUT_MS / 1000, (PF_ADDR_TIMEOUT_MS % 1000) * 1000};
      d->fd = fd;
      d->state = DIAL_TCP;
      d->conn_ev = event_new(d->base, fd, EV_WRITE, tcp_done, d);
      if (!d->conn_ev || event_add(d->conn_ev, d->ai_next ? &tv : NULL) < 0) {
        dial_fail(d, 0, "out of memory");
        return;
      }
      return;
    }
    snprintf(d->last_err, sizeof(d->last_err), "%s: %s", d->addr,
             evutil_socket_error_to_string(errno));
    evutil_closesocket(fd);
  }
  if (d->use_proxy)
    dial_fail(d, 0, "cannot connect to the proxy %s (for the API server %s:%u): %s",
              d->proxy.shown, d->host, (unsigned)d->hport,
              d->n_tried ? d->last_err : "no IPv4/IPv6 address");
  else if (d->n_tried > 1)
    dial_fail(d, 0, "cannot connect to the API server %s:%u (%d addresses tried; last %s)",
              d->host, (unsigned)d->hport, d->n_tried, d->last_err);
  else
    dial_fail(d, 0, "cannot connect to the API server %s:%u (%s)", d->host, (unsigned)d->hport,
              d->n_tried ? d->last_err : "no IPv4/IPv6 address");
}

static void resolved(int result, struct evutil_addrinfo *res, void *arg) {
  struct pf_connecting *d = arg;
  if (result == EVUTIL_EAI_CANCEL) return; /* dial_free() is cancelling the lookup */
  d->dns_req = NULL;
  if (result != 0) {
    if (d->use_proxy)
      dial_fail(d, 0, "cannot resolve the proxy %s: %s", d->proxy.shown,
                evutil_gai_strerror(result));
    else
      dial_fail(d, 0, "cannot resolve the API server host \"%s\": %s", d->host,
                evutil_gai_strerror(result));
    return;
  }
  d->ai_list = d->ai_next = res;
  try_next_address(d);
}

static void dial_start(evutil_socket_t fd, short what, void *arg) {
  struct pf_connecting *d = arg;
  struct timeval tv = {(time_t)(d->timeout_ms / 1000), (suseconds_t)(d->timeout_ms % 1000) * 1000};
  struct evutil_addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                                  .ai_protocol = IPPROTO_TCP};
  char port[8];
  (void)fd;
  (void)what;
  event_free(d->timer);
  d->timer = evtimer_new(d->base, dial_timeout, d);
  if (!d->timer || evtimer_add(d->timer, &tv) < 0) {
    dial_fail(d, 0, "out of memory");
    return;
  }
  /* Through a proxy only the proxy's name is resolved here; the API server's
   * name goes to the proxy in the CONNECT line, as curl does. */
  const char *host = d->use_proxy ? d->proxy.host : d->host;
  snprintf(port, sizeof(port), "%u", (unsigned)(d->use_proxy ? d->proxy.port : d->hport));
  d->state = DIAL_RESOLVING;
  if (d->dns) {
    /* May answer at once (IP literal, hosts file): resolved() then runs inside
     * this call and d may be gone when it returns NULL. */
    struct evdns_getaddrinfo_request *req =
        evdns_getaddrinfo(d->dns, host, port, &hints, resolved, d);
    if (req) d->dns_req = req;
    return;
  }
  struct evutil_addrinfo *res = NULL;
  int rc = evutil_getaddrinfo(host, port, &hints, &res); /* blocking, as documented */
  resolved(rc, rc == 0 ? res : NULL, d);
}

/* 101 checked: wrap api in the framing filter and hand it over. */
static void become_carrier(struct pf_connecting *d) {
  char what[336];
  snprintf(what, sizeof(what), "pod %s/%s port %u", d->ns, d->pod, (unsigned)d->port);
  struct bufferevent *bev = pf_carrier_new(d->api, d->port, d->max_frame, what);
  if (!bev) {
    dial_fail(d, 101, "out of memory");
    return;
  }
  d->api = NULL; /* owned by the carrier now */
  log_debug("port-forward %s: WebSocket open", what);
  pf_ready_cb cb = d->cb;
  void *arg = d->arg;
  dial_free(d);
  cb(bev, NULL, 101, arg);
}

/* --- target validation --- */

static int valid_subdomain(const char *s, size_t max) {
  size_t n = strlen(s);
  if (n == 0 || n > max) return 0;
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    int alnum = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9');
    if (!alnum && ch != '-' && ch != '.') return 0;
    if ((i == 0 || i == n - 1) && !alnum) return 0;
    if (ch == '.' && (s[i - 1] == '.' || s[i - 1] == '-' || s[i + 1] == '-')) return 0;
  }
  return 1;
}

static int valid_label(const char *s) { return valid_subdomain(s, 63) && !strchr(s, '.'); }

/* "https://host[:port][/prefix]" into d. 0 or -1 + err. */
static int parse_url(struct pf_connecting *d, const char *url, char *err, size_t errlen) {
  const char *s = url, *hb, *he, *p;
  if (strncasecmp(s, "https://", 8) != 0) {
    snprintf(err, errlen, "API server URL \"%s\": only https:// is supported", url);
    return -1;
  }
  s += 8;
  if (memchr(s, '@', strcspn(s, "/?#"))) {
    snprintf(err, errlen, "API server URL \"%s\": user info in the URL is not supported", url);
    return -1;
  }
  if (*s == '[') {
    hb = s + 1;
    he = strchr(hb, ']');
    if (!he) {
      snprintf(err, errlen, "API server URL \"%s\": unclosed '[' in the host", url);
      return -1;
    }
    p = he + 1;
  } else {
    hb = s;
    he = hb + strcspn(hb, ":/?#");
    p = he;
  }
  if (he == hb || (size_t)(he - hb) >= sizeof(d->host)) {
    snprintf(err, errlen, "API server URL \"%s\": missing or too long host", url);
    return -1;
  }
  memcpy(d->host, hb, (size_t)(he - hb));
  d->host[he - hb] = '\0';
  d->hport = 443;
  if (*p == ':') {
    char *e;
    unsigned long v = strtoul(p + 1, &e, 10);
    if (e == p + 1 || v == 0 || v > 65535 || (*e && *e != '/')) {
      snprintf(err, errlen, "API server URL \"%s\": bad port", url);
      return -1;
    }
    d->hport = (uint16_t)v;
    p = e;
  }
  if (*p && *p != '/') {
    snprintf(err, errlen, "API server URL \"%s\": unexpected \"%s\" after the host", url, p);
    return -1;
  }
  size_t pl = strlen(p);
  while (pl > 0 && p[pl - 1] == '/') pl--;
  for (size_t i = 0; i < pl; i++) {
    unsigned char ch = (unsigned char)p[i];
    if (ch <= 0x20 || ch >= 0x7f || ch == '?' || ch == '#') {
      snprintf(err, errlen, "API server URL \"%s\": the path may not contain spaces, control "
               "characters, '?' or '#'", url);
      return -1;
    }
  }
  if (!(d->prefix = strndup(p, pl))) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  return 0;
}

/* Hostname (or IP) verification and SNI on the API-server SSL. */
static int set_peer_name(SSL *ssl, const char *name) {
  unsigned char tmp[16];
  if (inet_pton(AF_INET, name, tmp) == 1 || inet_pton(AF_INET6, name, tmp) == 1)
    return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) == 1 ? 0 : -1;
  if (SSL_set1_host(ssl, name) != 1) return -1;
  char sni[256]; /* the macro casts away const */
  if (snprintf(sni, sizeof(sni), "%s", name) >= (int)sizeof(sni)) return -1;
  return SSL_set_tlsext_host_name(ssl, sni) == 1 ? 0 : -1;
}

struct pf_connecting *pf_connect(struct event_base *base, struct evdns_base *dns,
                                 const struct pf_target *t, pf_ready_cb cb, void *arg,
                                 char *err, size_t errlen) {
  struct pf_connecting *d = calloc(1, sizeof(*d));
  SSL *ssl = NULL;
  if (!d) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  d->base = base;
  d->dns = dns;
  d->fd = -1;
  d->cb = cb;
  d->arg = arg;
  if (!t->server_url || parse_url(d, t->server_url, err, errlen) < 0) {
    if (!t->server_url) snprintf(err, errlen, "no API server URL");
    goto fail;
  }
  if (!t->ssl_ctx) {
    snprintf(err, errlen, "no TLS context for the API server");
    goto fail;
  }
  if (t->proxy_url) {
    if (pf_proxy_check(t->proxy_url, err, errlen) < 0 ||
        netproxy_parse(t->proxy_url, &d->proxy, err, errlen) < 0)
      goto fail;
    d->use_proxy = 1;
  }
  if (!t->ns || !valid_label(t->ns)) {
    snprintf(err, errlen, "invalid namespace \"%s\" (a DNS label: [a-z0-9-], at most 63)",
             t->ns ? t->ns : "");
    goto fail;
  }
  if (!t->pod || !valid_subdomain(t->pod, 253)) {
    snprintf(err, errlen, "invalid pod name \"%s\" (a DNS subdomain: [a-z0-9.-], at most 253)",
             t->pod ? t->pod : "");
    goto fail;
  }
  if (t->port == 0) {
    snprintf(err, errlen, "invalid pod port 0");
    goto fail;
  }
  if (t->bearer_token) {
    for (const char *q = t->bearer_token; *q; q++) {
      if ((unsigned char)*q < 0x20 || *q == 0x7f) {
        snprintf(err, errlen, "the bearer token contains control characters");
        goto fail;
      }
    }
    if (!t->bearer_token[0]) {
      snprintf(err, errlen, "the bearer token is empty");
      goto fail;
    }
    if (!(d->token = strdup(t->bearer_token))) {
      snprintf(err, errlen, "out of memory");
      goto fail;
    }
  }
  snprintf(d->ns, sizeof(d->ns), "%s", t->ns);
  snprintf(d->pod, sizeof(d->pod), "%s", t->pod);
  d->port = t->port;
  d->timeout_ms = t->timeout_ms ? t->timeout_ms : PF_DEFAULT_TIMEOUT_MS;
  d->max_frame = t->max_frame ? t->max_frame : PF_DEFAULT_MAX_FRAME;
  snprintf(d->what, sizeof(d->what), "port-forward to pod %s/%s port %u", d->ns, d->pod,
           (unsigned)d->port);

  ssl = SSL_new(t->ssl_ctx);
  if (!ssl) {
    snprintf(err, errlen, "cannot create a TLS session for the API server");
    goto fail;
  }
  const char *name = t->tls_server_name && t->tls_server_name[0] ? t->tls_server_name : d->host;
  if (set_peer_name(ssl, name) < 0 ||
      SSL_set_alpn_protos(ssl, (const unsigned char *)"\x08http/1.1", 9) != 0) {
    snprintf(err, errlen, "cannot set the API server name \"%s\" on the TLS session", name);
    goto fail;
  }
  d->ssl = ssl;
  ssl = NULL; /* owned by d */
  /* Start from the loop, so that cb never runs inside this call. */
  d->state = DIAL_START;
  d->timer = evtimer_new(base, dial_start, d);
  struct timeval now = {0, 0};
  if (!d->timer || evtimer_add(d->timer, &now) < 0) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  return d;
fail:
  if (ssl) SSL_free(ssl);
  dial_free(d);
  return NULL;
}

int pf_proxy_check(const char *proxy_url, char *err, size_t errlen) {
  struct netproxy p;
  if (!proxy_url) return 0;
  if (netproxy_parse(proxy_url, &p, err, errlen) < 0) return -1;
  int rc = 0;
  if (strcmp(p.scheme, "http") != 0) {
    snprintf(err, errlen, "the proxy %s cannot carry the port-forward tunnel: only http:// "
             "proxies (HTTP CONNECT) are supported for it%s; use an http:// proxy URL, put the "
             "API server's host in $NO_PROXY if it is reachable directly, or use "
             "--agent-address", p.shown,
             strncmp(p.scheme, "socks", 5) == 0 ? ", not SOCKS"
             : strcmp(p.scheme, "https") == 0   ? ", not TLS to the proxy (https://)"
                                                : "");
    rc = -1;
  }
  netproxy_clear(&p);
  return rc;
}

int pf_ws_accept(const char *key, char *out, size_t outlen) {
  unsigned char md[20];
  char buf[128];
  if (outlen < 29) return -1;
  int n = snprintf(buf, sizeof(buf), "%s" WS_GUID, key);
  if (n < 0 || (size_t)n >= sizeof(buf)) n = 0; /* a key that long cannot match anyway */
  EVP_Digest(buf, (size_t)n, md, NULL, EVP_sha1(), NULL);
  EVP_EncodeBlock((unsigned char *)out, md, sizeof(md));
  return 0;
}
