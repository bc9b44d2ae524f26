/* frame.c: encoder and decoders for the tunnel's wire format (frame.h).
 *
 * Payload layouts are specified in docs/protocol.md; in short, integers are big
 * endian and strings are length-prefixed (u8 for keys, labels, peers and hosts,
 * u16 for messages and reasons), never NUL-terminated and never containing NUL.
 * Every decoder consumes the payload exactly: a short payload, a string that
 * runs past the end, or bytes left over is malformed (-1). Encoders build the
 * payload in a small stack buffer and append header + payload with one call;
 * DATA frames are built in place in the output buffer, header and payload in one
 * contiguous extent. */
#include "frame.h"

#include <string.h>

#include <event2/buffer.h>

#include "dnslabel.h"

/* Largest control payload we ever build: WELCOME/RESET with a 511-byte text. */
#define CONTROL_MAX 1024

static void put_u16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}

static void put_u24(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 16);
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)v;
}

static void put_u32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

static uint32_t get_u32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* A bounds-checked reader over one payload. Any overrun sets bad; callers check
 * once at the end (together with "everything consumed"). */
struct reader {
  const uint8_t *p;
  size_t n, off;
  int bad;
};

static uint8_t rd_u8(struct reader *r) {
  if (r->bad || r->n - r->off < 1) {
    r->bad = 1;
    return 0;
  }
  return r->p[r->off++];
}

static uint16_t rd_u16(struct reader *r) {
  if (r->bad || r->n - r->off < 2) {
    r->bad = 1;
    return 0;
  }
  uint16_t v = (uint16_t)(r->p[r->off] << 8 | r->p[r->off + 1]);
  r->off += 2;
  return v;
}

static uint32_t rd_u32(struct reader *r) {
  if (r->bad || r->n - r->off < 4) {
    r->bad = 1;
    return 0;
  }
  uint32_t v = get_u32(r->p + r->off);
  r->off += 4;
  return v;
}

/* Read a string of len bytes into out (capacity cap, including the NUL). A string
 * that does not fit, runs past the payload or contains a NUL byte is malformed. */
static void rd_str(struct reader *r, size_t len, char *out, size_t cap) {
  if (r->bad || len >= cap || r->n - r->off < len || memchr(r->p + r->off, 0, len)) {
    r->bad = 1;
    out[0] = '\0';
    return;
  }
  memcpy(out, r->p + r->off, len);
  out[len] = '\0';
  r->off += len;
}

static int rd_done(const struct reader *r) { return !r->bad && r->off == r->n ? 0 : -1; }

/* A bounded writer into a stack buffer; overflow sets bad. */
struct writer {
  uint8_t buf[FRAME_HEADER_LEN + CONTROL_MAX];
  size_t off;
  int bad;
};

static void wr_u8(struct writer *w, uint8_t v) {
  if (w->off + 1 > sizeof w->buf) {
    w->bad = 1;
    return;
  }
  w->buf[w->off++] = v;
}

static void wr_u16(struct writer *w, uint16_t v) {
  if (w->off + 2 > sizeof w->buf) {
    w->bad = 1;
    return;
  }
  put_u16(w->buf + w->off, v);
  w->off += 2;
}

static void wr_u32(struct writer *w, uint32_t v) {
  if (w->off + 4 > sizeof w->buf) {
    w->bad = 1;
    return;
  }
  put_u32(w->buf + w->off, v);
  w->off += 4;
}

/* Length-prefixed string: prefix of 1 or 2 bytes, at most max bytes. */
static void wr_str(struct writer *w, const char *s, int prefix16, size_t max) {
  size_t len = s ? strlen(s) : 0;
  if (len > max) {
    w->bad = 1;
    return;
  }
  if (prefix16)
    wr_u16(w, (uint16_t)len);
  else
    wr_u8(w, (uint8_t)len);
  if (w->bad || w->off + len > sizeof w->buf) {
    w->bad = 1;
    return;
  }
  memcpy(w->buf + w->off, s, len);
  w->off += len;
}

static void wr_begin(struct writer *w) {
  w->off = FRAME_HEADER_LEN;
  w->bad = 0;
}

/* Fill in the header for the payload written so far and append the frame. */
static int wr_finish(struct writer *w, struct evbuffer *out, uint8_t type, uint8_t flags,
                     uint32_t stream) {
  if (w->bad) return -1;
  struct frame_header h = {(uint32_t)(w->off - FRAME_HEADER_LEN), type, flags, stream};
  frame_header_encode(w->buf, &h);
  return evbuffer_add(out, w->buf, w->off);
}

int frame_header_decode(const uint8_t *buf, struct frame_header *out) {
  out->length = (uint32_t)buf[0] << 16 | (uint32_t)buf[1] << 8 | buf[2];
  out->type = buf[3];
  out->flags = buf[4];
  out->stream = get_u32(buf + 5);
  return out->length > FRAME_MAX_PAYLOAD ? -1 : 0;
}

void frame_header_encode(uint8_t *buf, const struct frame_header *h) {
  put_u24(buf, h->length);
  buf[3] = h->type;
  buf[4] = h->flags;
  put_u32(buf + 5, h->stream);
}

/* HELLO: version u8, flags u8, window u32, key (u8 len), label (u8 len). */
int frame_hello_decode(const uint8_t *p, size_t n, struct frame_hello *out) {
  struct reader r = {p, n, 0, 0};
  memset(out, 0, sizeof *out);
  out->version = rd_u8(&r);
  out->flags = rd_u8(&r);
  out->window = rd_u32(&r);
  size_t klen = rd_u8(&r);
  rd_str(&r, klen, out->key, sizeof out->key);
  size_t llen = rd_u8(&r);
  rd_str(&r, llen, out->label, sizeof out->label);
  if (rd_done(&r) < 0) return -1;
  if (out->window == 0 || out->window > 0x7fffffffu) return -1;
  if (!dns_label_valid(out->key, klen)) return -1;
  return 0;
}

int frame_put_hello(struct evbuffer *out, const struct frame_hello *h) {
  struct writer w;
  wr_begin(&w);
  wr_u8(&w, h->version);
  wr_u8(&w, h->flags);
  wr_u32(&w, h->window);
  wr_str(&w, h->key, 0, FRAME_KEY_MAX);
  wr_str(&w, h->label, 0, sizeof h->label - 1);
  return wr_finish(&w, out, FRAME_HELLO, 0, 0);
}

/* WELCOME: version u8, status u8, window u32, message (u16 len, <= 511). */
int frame_welcome_decode(const uint8_t *p, size_t n, struct frame_welcome *out) {
  struct reader r = {p, n, 0, 0};
  memset(out, 0, sizeof *out);
  out->version = rd_u8(&r);
  out->status = rd_u8(&r);
  out->window = rd_u32(&r);
  size_t mlen = rd_u16(&r);
  rd_str(&r, mlen, out->message, sizeof out->message);
  if (rd_done(&r) < 0) return -1;
  if (out->status == FRAME_WELCOME_OK && (out->window == 0 || out->window > 0x7fffffffu))
    return -1;
  return 0;
}

/* The shape of frame_put_hello: each message writes its own fields in wire
 * order through the shared writer; nothing more to share. */
int frame_put_welcome(struct evbuffer *out, const struct frame_welcome *wl) {
  struct writer w;
  wr_begin(&w);
  wr_u8(&w, wl->version);
  wr_u8(&w, wl->status);
  wr_u32(&w, wl->window);
  wr_str(&w, wl->message, 1, sizeof wl->message - 1);
  return wr_finish(&w, out, FRAME_WELCOME, 0, 0);
}

/* OPEN: kind u8, port u16, peer (u8 len, <= 63), target_host (u8 len, <= 255).
 * An OUTBOUND open must name a host and a non-zero port. */
int frame_open_decode(const uint8_t *p, size_t n, struct frame_open *out) {
  struct reader r = {p, n, 0, 0};
  memset(out, 0, sizeof *out);
  out->kind = rd_u8(&r);
  out->port = rd_u16(&r);
  size_t plen = rd_u8(&r);
  rd_str(&r, plen, out->peer, sizeof out->peer);
  size_t hlen = rd_u8(&r);
  rd_str(&r, hlen, out->target_host, sizeof out->target_host);
  if (rd_done(&r) < 0) return -1;
  if (out->kind != FRAME_OPEN_INBOUND && out->kind != FRAME_OPEN_OUTBOUND) return -1;
  if (out->kind == FRAME_OPEN_OUTBOUND && (hlen == 0 || out->port == 0)) return -1;
  return 0;
}

int frame_put_open(struct evbuffer *out, uint32_t stream, const struct frame_open *o) {
  struct writer w;
  wr_begin(&w);
  wr_u8(&w, o->kind);
  wr_u16(&w, o->port);
  wr_str(&w, o->peer, 0, sizeof o->peer - 1);
  wr_str(&w, o->target_host, 0, sizeof o->target_host - 1);
  return wr_finish(&w, out, FRAME_OPEN, 0, stream);
}

/* RESET and GOAWAY: code u32, text (u16 len, <= 511). */
int frame_reason_decode(const uint8_t *p, size_t n, struct frame_reason *out) {
  struct reader r = {p, n, 0, 0};
  memset(out, 0, sizeof *out);
  out->code = rd_u32(&r);
  size_t tlen = rd_u16(&r);
  rd_str(&r, tlen, out->text, sizeof out->text);
  return rd_done(&r);
}

/* Reasons are informative: an over-long one is cut (at a byte boundary that
 * keeps UTF-8 sequences whole) rather than failing the RESET or GOAWAY. */
static int put_reason(struct evbuffer *out, uint8_t type, uint32_t stream, uint32_t code,
                      const char *reason) {
  struct writer w;
  size_t len = reason ? strlen(reason) : 0;
  const size_t max = sizeof ((struct frame_reason *)0)->text - 1;
  if (len > max) {
    len = max;
    while (len > 0 && ((uint8_t)reason[len] & 0xc0) == 0x80) len--;
  }
  wr_begin(&w);
  wr_u32(&w, code);
  wr_u16(&w, (uint16_t)len);
  if (len) memcpy(w.buf + w.off, reason, len);
  w.off += len;
  return wr_finish(&w, out, type, 0, stream);
}

int frame_put_reset(struct evbuffer *out, uint32_t stream, uint32_t code, const char *reason) {
  return put_reason(out, FRAME_RESET, stream, code, reason);
}

int frame_put_goaway(struct evbuffer *out, uint32_t code, const char *reason) {
  return put_reason(out, FRAME_GOAWAY, 0, code, reason);
}

/* WINDOW: increment u32, 1 .. 2^31-1. */
int frame_window_decode(const uint8_t *p, size_t n, uint32_t *increment) {
  if (n != 4) return -1;
  uint32_t v = get_u32(p);
  if (v == 0 || v > 0x7fffffffu) return -1;
  *increment = v;
  return 0;
}

int frame_put_window(struct evbuffer *out, uint32_t stream, uint32_t increment) {
  uint8_t buf[FRAME_HEADER_LEN + 4];
  struct frame_header h = {4, FRAME_WINDOW, 0, stream};
  frame_header_encode(buf, &h);
  put_u32(buf + FRAME_HEADER_LEN, increment);
  return evbuffer_add(out, buf, sizeof buf);
}

int frame_put_data(struct evbuffer *out, uint32_t stream, const void *data, size_t len) {
  if (len > FRAME_MAX_PAYLOAD) return -1;
  uint8_t hdr[FRAME_HEADER_LEN];
  struct frame_header h = {(uint32_t)len, FRAME_DATA, 0, stream};
  frame_header_encode(hdr, &h);
  if (evbuffer_add(out, hdr, sizeof hdr) < 0) return -1;
  return len ? evbuffer_add(out, data, len) : 0;
}

/* Header and payload are built contiguous, in one reserved extent of out: the
 * TLS bufferevent calls SSL_write once per evbuffer chain, so a header in a chain
 * of its own would become a TLS record (and a write()) of its own. Copying the
 * payload (<= 16 KiB in practice) costs far less than that record. */
int frame_put_data_buffer(struct evbuffer *out, uint32_t stream, struct evbuffer *src,
                          size_t len) {
  if (len > FRAME_MAX_PAYLOAD || len > evbuffer_get_length(src)) return -1;
  struct frame_header h = {(uint32_t)len, FRAME_DATA, 0, stream};
  struct evbuffer_iovec v;
  if (evbuffer_reserve_space(out, (ev_ssize_t)(FRAME_HEADER_LEN + len), &v, 1) != 1 ||
      v.iov_len < FRAME_HEADER_LEN + len)
    return -1;
  uint8_t *p = v.iov_base;
  frame_header_encode(p, &h);
  if (len && evbuffer_remove(src, p + FRAME_HEADER_LEN, len) != (int)len) {
    evbuffer_commit_space(out, &v, 0);
    return -1;
  }
  v.iov_len = FRAME_HEADER_LEN + len;
  return evbuffer_commit_space(out, &v, 1);
}

int frame_put_shutdown(struct evbuffer *out, uint32_t stream) {
  uint8_t hdr[FRAME_HEADER_LEN];
  struct frame_header h = {0, FRAME_SHUTDOWN, 0, stream};
  frame_header_encode(hdr, &h);
  return evbuffer_add(out, hdr, sizeof hdr);
}

int frame_put_ping(struct evbuffer *out, uint8_t flags, const uint8_t opaque[8]) {
  uint8_t buf[FRAME_HEADER_LEN + 8];
  struct frame_header h = {8, FRAME_PING, flags, 0};
  frame_header_encode(buf, &h);
  memcpy(buf + FRAME_HEADER_LEN, opaque, 8);
  return evbuffer_add(out, buf, sizeof buf);
}

const char *frame_type_name(uint8_t type) {
  switch (type) {
    case FRAME_HELLO: return "HELLO";
    case FRAME_WELCOME: return "WELCOME";
    case FRAME_OPEN: return "OPEN";
    case FRAME_DATA: return "DATA";
    case FRAME_SHUTDOWN: return "SHUTDOWN";
    case FRAME_RESET: return "RESET";
    case FRAME_WINDOW: return "WINDOW";
    case FRAME_PING: return "PING";
    case FRAME_GOAWAY: return "GOAWAY";
    default: return "UNKNOWN";
  }
}

const char *frame_reset_name(uint32_t code) {
  switch (code) {
    case FRAME_RESET_CANCEL: return "CANCEL";
    case FRAME_RESET_PROTOCOL: return "PROTOCOL";
    case FRAME_RESET_FLOW_CONTROL: return "FLOW_CONTROL";
    case FRAME_RESET_REFUSED: return "REFUSED";
    case FRAME_RESET_TIMEOUT: return "TIMEOUT";
    case FRAME_RESET_INTERNAL: return "INTERNAL";
    case FRAME_RESET_TUNNEL_LOST: return "TUNNEL_LOST";
    case FRAME_RESET_LEAVE: return "LEAVE";
    default: return "UNKNOWN";
  }
}

int frame_goaway_is_leave(uint32_t code) {
  switch (code) {
    case FRAME_RESET_PROTOCOL:
    case FRAME_RESET_FLOW_CONTROL:
    case FRAME_RESET_REFUSED:
    case FRAME_RESET_TIMEOUT:
    case FRAME_RESET_INTERNAL:
    case FRAME_RESET_TUNNEL_LOST: return 0;
    default: return 1;
  }
}
