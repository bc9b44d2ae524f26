/* fuzz_frame.c: libFuzzer driver for the tunnel's frame decoding and state machine.
 *
 * Each input is used twice:
 *  1. as one payload for every payload decoder (a decoded value must re-encode and
 *     decode to the same value), and the first 9 bytes for the header decoder;
 *  2. as the byte stream a peer sends to a tunnel over a bufferevent pair. The
 *     first byte picks the role under test (even: SERVER, odd: CLIENT) and the
 *     rest arrives in two writes, so frames split across reads are exercised.
 *     Accepted streams are drained, written to, half-closed and freed from inside
 *     their callbacks, so the whole stream lifecycle runs under ASan.
 *
 * Build: cmake -DKBRIDGE_FUZZ=ON -DCMAKE_C_COMPILER=clang; run with
 *   fuzz_frame -dict=tests/fuzz/frame.dict CORPUS tests/fuzz/corpus/frame */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "frame.h"
#include "log.h"
#include "tunnel.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct event_base *base;

static void die_if(int cond) {
  if (cond) abort(); /* a codec inconsistency: let the fuzzer report it */
}

static void fuzz_decoders(const uint8_t *p, size_t n) {
  struct evbuffer *b = evbuffer_new();
  uint8_t again[FRAME_HEADER_LEN + 1024];
  struct frame_header h;
  if (n >= FRAME_HEADER_LEN && frame_header_decode(p, &h) == 0) {
    uint8_t enc[FRAME_HEADER_LEN];
    frame_header_encode(enc, &h);
    die_if(memcmp(enc, p, FRAME_HEADER_LEN) != 0);
  }
  /* Re-encode what decoded and check the payload bytes are identical: every
   * accepted payload has exactly one encoding. */
#define ROUND_TRIP(put)                                                       \
  do {                                                                        \
    evbuffer_drain(b, evbuffer_get_length(b));                                \
    die_if(put < 0);                                                          \
    size_t len_ = evbuffer_get_length(b);                                     \
    die_if(len_ != FRAME_HEADER_LEN + n || len_ > sizeof again);              \
    evbuffer_copyout(b, again, len_);                                         \
    die_if(memcmp(again + FRAME_HEADER_LEN, p, n) != 0);                      \
  } while (0)
  struct frame_hello hello;
  if (frame_hello_decode(p, n, &hello) == 0) ROUND_TRIP(frame_put_hello(b, &hello));
  struct frame_welcome w;
  if (frame_welcome_decode(p, n, &w) == 0) ROUND_TRIP(frame_put_welcome(b, &w));
  struct frame_open o;
  if (frame_open_decode(p, n, &o) == 0) ROUND_TRIP(frame_put_open(b, 1, &o));
  struct frame_reason r;
  if (frame_reason_decode(p, n, &r) == 0) ROUND_TRIP(frame_put_reset(b, 1, r.code, r.text));
  uint32_t inc;
  if (frame_window_decode(p, n, &inc) == 0) ROUND_TRIP(frame_put_window(b, 1, inc));
  evbuffer_free(b);
}

/* ---- the state machine ---------------------------------------------------- */

#define MAX_HELD 64
struct run {
  struct tunnel *t;
  struct tunnel_stream *held[MAX_HELD];
  int nheld, closed;
};

static void hold(struct run *r, struct tunnel_stream *s) {
  if (r->nheld < MAX_HELD)
    r->held[r->nheld++] = s;
  else
    tunnel_stream_free(s);
}

static void forget(struct run *r, struct tunnel_stream *s) {
  for (int i = 0; i < r->nheld; i++)
    if (r->held[i] == s) r->held[i] = r->held[--r->nheld];
}

static void st_read(struct tunnel_stream *s, void *arg) {
  struct evbuffer *in = tunnel_stream_input(s);
  size_t n = evbuffer_get_length(in);
  switch (tunnel_stream_id(s) % 4) {
    case 0: evbuffer_drain(in, n); break;                 /* consume all: windows */
    case 1: evbuffer_drain(in, n / 2); break;             /* consume some */
    case 2: tunnel_stream_write_buffer(s, in); break;     /* echo */
    default: break;                                       /* stall */
  }
}

static void st_event(struct tunnel_stream *s, int what, uint32_t code, const char *err,
                     void *arg) {
  struct run *r = arg;
  if (what & TUNNEL_STREAM_EOF) tunnel_stream_shutdown(s);
  if (what & TUNNEL_STREAM_CLOSED || (what & TUNNEL_STREAM_EOF && tunnel_stream_id(s) % 3 == 0)) {
    forget(r, s);
    tunnel_stream_free(s); /* inside the callback */
  }
}

static int on_hello(struct tunnel *t, const struct frame_hello *h, char *msg, size_t len,
                    void *arg) {
  if (h->key[0] == 'x') {
    strcpy(msg, "refused");
    return FRAME_WELCOME_CONFLICT;
  }
  return FRAME_WELCOME_OK;
}

static void on_open(struct tunnel *t, struct tunnel_stream *s, const struct frame_open *o,
                    void *arg) {
  struct run *r = arg;
  if (o->port == 1) { /* refuse */
    tunnel_stream_reset(s, FRAME_RESET_REFUSED, "refused by the fuzzer");
    tunnel_stream_free(s);
    return;
  }
  tunnel_stream_setcb(s, st_read, st_event, r);
  tunnel_stream_write(s, "hello", 5);
  hold(r, s);
  if (o->port == 2) { /* open one of our own too */
    struct frame_open mine = {.kind = FRAME_OPEN_INBOUND, .port = 9};
    struct tunnel_stream *m = tunnel_stream_open(t, &mine);
    if (m) {
      tunnel_stream_setcb(m, st_read, st_event, r);
      tunnel_stream_write(m, "x", 1);
      hold(r, m);
    }
  }
  if (o->port == 3) { /* free the whole tunnel from inside a callback */
    tunnel_free(t);
    r->t = NULL;
  }
}

static void on_close(struct tunnel *t, const char *err, void *arg) {
  struct run *r = arg;
  r->closed = 1;
}

static void fuzz_tunnel(const uint8_t *p, size_t n) {
  if (n < 1) return;
  int client = p[0] & 1;
  p++;
  n--;
  struct bufferevent *pair[2];
  if (bufferevent_pair_new(base, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS, pair) < 0)
    return;
  struct run r = {0};
  struct tunnel_cbs cbs = {on_hello, NULL, on_open, on_close};
  struct tunnel_config cfg;
  tunnel_config_default(&cfg);
  cfg.stream_window = 4096; /* small, so window overruns are reachable */
  cfg.max_streams = 8;
  struct frame_hello h = {.version = FRAME_PROTOCOL_VERSION, .window = 1, .key = "fuzz"};
  r.t = tunnel_new(base, pair[0], client ? TUNNEL_CLIENT : TUNNEL_SERVER, &cfg, &h, &cbs, &r);
  if (!r.t) {
    bufferevent_free(pair[1]);
    return;
  }
  size_t half = n / 2;
  bufferevent_write(pair[1], p, half);
  for (int i = 0; i < 4; i++) event_base_loop(base, EVLOOP_NONBLOCK);
  if (client && r.t && tunnel_ready(r.t)) {
    struct frame_open o = {.kind = FRAME_OPEN_OUTBOUND, .port = 80, .target_host = "h"};
    struct tunnel_stream *s = tunnel_stream_open(r.t, &o);
    if (s) {
      tunnel_stream_setcb(s, st_read, st_event, &r);
      tunnel_stream_write(s, "GET", 3);
      hold(&r, s);
    }
  }
  bufferevent_write(pair[1], p + half, n - half);
  for (int i = 0; i < 8; i++) event_base_loop(base, EVLOOP_NONBLOCK);
  /* Free in both orders: streams first for even sizes, tunnel first for odd. */
  if (n & 1) {
    if (r.t) tunnel_free(r.t);
    r.t = NULL;
  }
  while (r.nheld > 0) tunnel_stream_free(r.held[--r.nheld]);
  if (r.t) tunnel_free(r.t);
  bufferevent_free(pair[1]);
  for (int i = 0; i < 2; i++) event_base_loop(base, EVLOOP_NONBLOCK);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!base) {
    log_init("fuzz_frame", LOGL_ERROR);
    base = event_base_new();
  }
  fuzz_decoders(data, size);
  fuzz_tunnel(data, size);
  return 0;
}
