/* test_frame.c: round trips of every frame type through the codec, the exact
 * bytes of a HELLO and a DATA frame (as in docs/protocol.md), and a table of
 * malformed payloads that every decoder must refuse. */
#include <stdint.h>
#include <string.h>

#include <event2/buffer.h>

#include "check.h"
#include "frame.h"

/* Pull one whole frame out of buf: header into h, payload into p (cap bytes). */
static int take_frame(struct evbuffer *buf, struct frame_header *h, uint8_t *p, size_t cap) {
  uint8_t hdr[FRAME_HEADER_LEN];
  if (evbuffer_remove(buf, hdr, sizeof hdr) != (int)sizeof hdr) return -1;
  if (frame_header_decode(hdr, h) < 0 || h->length > cap) return -1;
  if (evbuffer_remove(buf, p, h->length) != (int)h->length) return -1;
  return 0;
}

static void test_header(void) {
  uint8_t b[FRAME_HEADER_LEN];
  struct frame_header h = {FRAME_MAX_PAYLOAD, FRAME_DATA, 0x5a, 0xdeadbeef}, g;
  frame_header_encode(b, &h);
  CHECK_EQ_INT(frame_header_decode(b, &g), 0);
  CHECK_EQ_INT(g.length, FRAME_MAX_PAYLOAD);
  CHECK_EQ_INT(g.type, FRAME_DATA);
  CHECK_EQ_INT(g.flags, 0x5a);
  CHECK_EQ_INT(g.stream, 0xdeadbeef);
  h.length = FRAME_MAX_PAYLOAD + 1;
  frame_header_encode(b, &h);
  CHECK_EQ_INT(frame_header_decode(b, &g), -1);
}

static void test_hello_bytes(void) {
  struct evbuffer *b = evbuffer_new();
  struct frame_hello h = {.version = 1, .flags = FRAME_HELLO_EXCLUSIVE, .window = 262144};
  strcpy(h.key, "alice");
  strcpy(h.label, "a@b");
  CHECK_EQ_INT(frame_put_hello(b, &h), 0);
  static const uint8_t want[] = {0x00, 0x00, 0x10, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
                                 0x01, 0x01, 0x00, 0x04, 0x00, 0x00, 0x05, 'a',  'l',
                                 'i',  'c',  'e',  0x03, 'a',  '@',  'b'};
  CHECK_EQ_INT(evbuffer_get_length(b), sizeof want);
  CHECK(memcmp(evbuffer_pullup(b, -1), want, sizeof want) == 0);
  struct frame_header fh;
  uint8_t p[1024];
  struct frame_hello g;
  CHECK_EQ_INT(take_frame(b, &fh, p, sizeof p), 0);
  CHECK_EQ_INT(fh.type, FRAME_HELLO);
  CHECK_EQ_INT(frame_hello_decode(p, fh.length, &g), 0);
  CHECK_EQ_INT(g.version, 1);
  CHECK_EQ_INT(g.flags, FRAME_HELLO_EXCLUSIVE);
  CHECK_EQ_INT(g.window, 262144);
  CHECK_EQ_STR(g.key, "alice");
  CHECK_EQ_STR(g.label, "a@b");
  evbuffer_free(b);
}

static void test_data_bytes(void) {
  struct evbuffer *b = evbuffer_new(), *src = evbuffer_new();
  CHECK_EQ_INT(frame_put_data(b, 3, "hi", 2), 0);
  static const uint8_t want[] = {0, 0, 2, 4, 0, 0, 0, 0, 3, 'h', 'i'};
  CHECK_EQ_INT(evbuffer_get_length(b), sizeof want);
  CHECK(memcmp(evbuffer_pullup(b, -1), want, sizeof want) == 0);
  evbuffer_drain(b, sizeof want);

  /* The WINDOW and RESET examples of docs/protocol.md section 12. */
  static const uint8_t win[] = {0, 0, 4, 7, 0, 0, 0, 0, 3, 0, 1, 0, 0};
  CHECK_EQ_INT(frame_put_window(b, 3, 65536), 0);
  CHECK_EQ_INT(evbuffer_get_length(b), sizeof win);
  CHECK(memcmp(evbuffer_pullup(b, -1), win, sizeof win) == 0);
  evbuffer_drain(b, sizeof win);
  static const uint8_t rst[] = {0, 0, 8, 6, 0, 0, 0, 0, 2, 0, 0, 0, 4, 0, 2, 'n', 'o'};
  CHECK_EQ_INT(frame_put_reset(b, 2, FRAME_RESET_REFUSED, "no"), 0);
  CHECK_EQ_INT(evbuffer_get_length(b), sizeof rst);
  CHECK(memcmp(evbuffer_pullup(b, -1), rst, sizeof rst) == 0);
  evbuffer_drain(b, sizeof rst);

  /* frame_put_data_buffer moves exactly len bytes and leaves the rest. */
  static uint8_t big[40000];
  for (size_t i = 0; i < sizeof big; i++) big[i] = (uint8_t)(i * 7);
  evbuffer_add(src, big, sizeof big);
  CHECK_EQ_INT(frame_put_data_buffer(b, 8, src, FRAME_DATA_CHUNK), 0);
  CHECK_EQ_INT(evbuffer_get_length(src), sizeof big - FRAME_DATA_CHUNK);
  struct frame_header fh;
  static uint8_t p[FRAME_MAX_PAYLOAD];
  CHECK_EQ_INT(take_frame(b, &fh, p, sizeof p), 0);
  CHECK_EQ_INT(fh.type, FRAME_DATA);
  CHECK_EQ_INT(fh.stream, 8);
  CHECK_EQ_INT(fh.length, FRAME_DATA_CHUNK);
  CHECK(memcmp(p, big, FRAME_DATA_CHUNK) == 0);
  CHECK_EQ_INT(frame_put_data_buffer(b, 8, src, sizeof big), -1); /* more than src has */
  CHECK_EQ_INT(frame_put_data(b, 8, big, FRAME_MAX_PAYLOAD + 1), -1);
  evbuffer_free(b);
  evbuffer_free(src);
}

static void test_round_trips(void) {
  struct evbuffer *b = evbuffer_new();
  struct frame_header fh;
  uint8_t p[2048];

  struct frame_welcome w = {.version = 1, .status = FRAME_WELCOME_OK, .window = 65536}, wg;
  strcpy(w.message, "welcome, alice");
  CHECK_EQ_INT(frame_put_welcome(b, &w), 0);
  CHECK_EQ_INT(take_frame(b, &fh, p, sizeof p), 0);
  CHECK_EQ_INT(fh.type, FRAME_WELCOME);
  CHECK_EQ_INT(frame_welcome_decode(p, fh.length, &wg), 0);
  CHECK_EQ_INT(wg.window, 65536);
  CHECK_EQ_STR(wg.message, "welcome, alice");

  memset(w.message, 'm', sizeof w.message - 1); /* longest message: 511 bytes */
  w.message[sizeof w.message - 1] = '\0';
  CHECK_EQ_INT(frame_put_welcome(b, &w), 0);
  CHECK_EQ_INT(take_frame(b, &fh, p, sizeof p), 0);
  CHECK_EQ_INT(frame_welcome_decode(p, fh.length, &wg), 0);
  CHECK_EQ_INT(strlen(wg.message), 511);

  struct frame_open o = {.kind = FRAME_OPEN_OUTBOUND, .port = 5432}, og;
  strcpy(o.peer, "127.0.0.1:40000");
  strcpy(o.target_host, "db.default.svc.cluster.local");
  CHECK_EQ_INT(frame_put_open(b, 7, &o), 0);
  CHECK_EQ_INT(take_frame(b, &fh, p, sizeof p), 0);
  CHECK_EQ_INT(fh.type, FRAME_OPEN);
  CHECK_EQ_INT(fh.stream, 7);
  CHECK_EQ_INT(frame_open_decode(p, fh.length, &og), 0);
  CHECK_EQ_INT(og.kind, FRAME_OPEN_OUTBOUND);
  CHECK_EQ_INT(og.port, 5432);
  CHECK_EQ_STR(og.peer, "127.0.0.1:40000");
  CHECK_EQ_STR(og.target_host, "db.default.svc.cluster.local");

  struct frame_reason rg;
  CHECK_EQ_INT(frame_put_reset(b, 9, FRAME_RESET_REFUSED, "connection refused to x:1"), 0);
  CHECK_EQ_INT(take_frame(b, &fh, p, sizeof p), 0);
  CHECK_EQ_INT(fh.type, FRAME_RESET);
  CHECK_EQ_INT(fh.stream, 9);
  CHECK_EQ_INT(frame_reason_decode(p, fh.length, &rg), 0);
  CHECK_EQ_INT(rg.code, FRAME_RESET_REFUSED);
  CHECK_EQ_STR(rg.text, "connection refused to x:1");

  char longr[2000];
  memset(longr, 'r', sizeof longr - 1);
  longr[sizeof longr - 1] = '\0';
  CHECK_EQ_INT(frame_put_goaway(b, FRAME_RESET_PROTOCOL, longr), 0); /* cut to 511 */
  CHECK_EQ_INT(take_frame(b, &fh, p, sizeof p), 0);
  CHECK_EQ_INT(fh.type, FRAME_GOAWAY);
  CHECK_EQ_INT(fh.stream, 0);
  CHECK_EQ_INT(frame_reason_decode(p, fh.length, &rg), 0);
  CHECK_EQ_INT(strlen(rg.text), 511);
  CHECK_EQ_INT(frame_put_reset(b, 1, FRAME_RESET_CANCEL, NULL), 0);
  CHECK_EQ_INT(take_frame(b, &fh, p, sizeof p), 0);
  CHECK_EQ_INT(frame_reason_decode(p, fh.length, &rg), 0);
  CHECK_EQ_STR(rg.text, "");

  uint32_t inc = 0;
  CHECK_EQ_INT(frame_put_window(b, 11, 123456), 0);
  CHECK_EQ_INT(take_frame(b, &fh, p, sizeof p), 0);
  CHECK_EQ_INT(fh.type, FRAME_WINDOW);
  CHECK_EQ_INT(frame_window_decode(p, fh.length, &inc), 0);
  CHECK_EQ_INT(inc, 123456);

  CHECK_EQ_INT(frame_put_shutdown(b, 13), 0);
  CHECK_EQ_INT(take_frame(b, &fh, p, sizeof p), 0);
  CHECK_EQ_INT(fh.type, FRAME_SHUTDOWN);
  CHECK_EQ_INT(fh.length, 0);
  CHECK_EQ_INT(fh.stream, 13);

  const uint8_t op[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  CHECK_EQ_INT(frame_put_ping(b, FRAME_FLAG_ACK, op), 0);
  CHECK_EQ_INT(take_frame(b, &fh, p, sizeof p), 0);
  CHECK_EQ_INT(fh.type, FRAME_PING);
  CHECK_EQ_INT(fh.flags, FRAME_FLAG_ACK);
  CHECK_EQ_INT(fh.length, 8);
  CHECK(memcmp(p, op, 8) == 0);
  CHECK_EQ_INT(evbuffer_get_length(b), 0);

  /* Encoders refuse strings that do not fit the wire format. */
  struct frame_hello h = {.version = 1, .window = 1};
  memset(h.key, 'a', sizeof h.key - 1);
  h.key[sizeof h.key - 1] = '\0';
  CHECK_EQ_INT(frame_put_hello(b, &h), 0); /* 63 is the maximum and fits */
  evbuffer_drain(b, evbuffer_get_length(b));

  CHECK_EQ_STR(frame_type_name(FRAME_GOAWAY), "GOAWAY");
  CHECK_EQ_STR(frame_type_name(200), "UNKNOWN");
  CHECK_EQ_STR(frame_reset_name(FRAME_RESET_FLOW_CONTROL), "FLOW_CONTROL");
  CHECK_EQ_STR(frame_reset_name(FRAME_RESET_LEAVE), "LEAVE");
  evbuffer_free(b);
}

/* A GOAWAY's code says whether the sender left on purpose (the agent's lease). */
static void test_goaway_leave(void) {
  CHECK_EQ_INT(frame_goaway_is_leave(FRAME_RESET_LEAVE), 1);
  CHECK_EQ_INT(frame_goaway_is_leave(FRAME_RESET_CANCEL), 1); /* CLIs before LEAVE */
  CHECK_EQ_INT(frame_goaway_is_leave(0), 1);                  /* unknown: as CANCEL */
  CHECK_EQ_INT(frame_goaway_is_leave(4242), 1);
  CHECK_EQ_INT(frame_goaway_is_leave(FRAME_RESET_PROTOCOL), 0);
  CHECK_EQ_INT(frame_goaway_is_leave(FRAME_RESET_FLOW_CONTROL), 0);
  CHECK_EQ_INT(frame_goaway_is_leave(FRAME_RESET_REFUSED), 0);
  CHECK_EQ_INT(frame_goaway_is_leave(FRAME_RESET_TIMEOUT), 0);
  CHECK_EQ_INT(frame_goaway_is_leave(FRAME_RESET_INTERNAL), 0);
  CHECK_EQ_INT(frame_goaway_is_leave(FRAME_RESET_TUNNEL_LOST), 0);
}

/* Malformed payloads: each must be refused by its decoder. */
struct bad {
  const char *what;
  int type;
  const char *bytes;
  size_t len;
};
#define B(s) s, sizeof s - 1

static const struct bad bad_table[] = {
  {"hello empty", FRAME_HELLO, B("")},
  {"hello short window", FRAME_HELLO, B("\x01\x00\x00\x01")},
  {"hello zero window", FRAME_HELLO, B("\x01\x00\x00\x00\x00\x00\x01" "a" "\x00")},
  {"hello window >2^31", FRAME_HELLO, B("\x01\x00\x80\x00\x00\x00\x01" "a" "\x00")},
  {"hello key runs past end", FRAME_HELLO, B("\x01\x00\x00\x01\x00\x00\x09" "abc")},
  {"hello empty key", FRAME_HELLO, B("\x01\x00\x00\x01\x00\x00\x00\x00")},
  {"hello uppercase key", FRAME_HELLO, B("\x01\x00\x00\x01\x00\x00\x03" "aBc" "\x00")},
  {"hello key with dot", FRAME_HELLO, B("\x01\x00\x00\x01\x00\x00\x03" "a.c" "\x00")},
  {"hello key leading dash", FRAME_HELLO, B("\x01\x00\x00\x01\x00\x00\x02" "-a" "\x00")},
  {"hello key with NUL", FRAME_HELLO, B("\x01\x00\x00\x01\x00\x00\x02" "a\x00" "\x00")},
  {"hello key 64 long", FRAME_HELLO,
   B("\x01\x00\x00\x01\x00\x00\x40"
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
     "\x00")},
  {"hello missing label length", FRAME_HELLO, B("\x01\x00\x00\x01\x00\x00\x01" "a")},
  {"hello trailing byte", FRAME_HELLO, B("\x01\x00\x00\x01\x00\x00\x01" "a" "\x00\x00")},
  {"welcome short", FRAME_WELCOME, B("\x01\x00\x00\x01\x00")},
  {"welcome ok zero window", FRAME_WELCOME, B("\x01\x00\x00\x00\x00\x00\x00\x00")},
  {"welcome message past end", FRAME_WELCOME, B("\x01\x00\x00\x01\x00\x00\x00\x05" "ab")},
  {"welcome message 512", FRAME_WELCOME, B("\x01\x04\x00\x00\x00\x00\x02\x00")},
  {"open bad kind", FRAME_OPEN, B("\x07\x00\x50\x00\x00")},
  {"open kind zero", FRAME_OPEN, B("\x00\x00\x50\x00\x00")},
  {"open outbound no host", FRAME_OPEN, B("\x02\x00\x50\x00\x00")},
  {"open outbound port 0", FRAME_OPEN, B("\x02\x00\x00\x00\x01" "h")},
  {"open peer 64", FRAME_OPEN,
   B("\x01\x00\x50\x40"
     "1111111111111111111111111111111111111111111111111111111111111111"
     "\x00")},
  {"open truncated", FRAME_OPEN, B("\x01\x00")},
  {"open trailing", FRAME_OPEN, B("\x01\x00\x50\x00\x00\x00")},
  {"reason short", FRAME_RESET, B("\x00\x00\x01")},
  {"reason text past end", FRAME_RESET, B("\x00\x00\x00\x01\x00\x03" "ab")},
  {"reason text 512", FRAME_RESET, B("\x00\x00\x00\x01\x02\x00")},
  {"reason trailing", FRAME_RESET, B("\x00\x00\x00\x01\x00\x00" "x")},
  {"window zero", FRAME_WINDOW, B("\x00\x00\x00\x00")},
  {"window 2^31", FRAME_WINDOW, B("\x80\x00\x00\x00")},
  {"window short", FRAME_WINDOW, B("\x00\x01")},
  {"window long", FRAME_WINDOW, B("\x00\x00\x00\x01\x00")},
};

static int decode_any(int type, const uint8_t *p, size_t n) {
  struct frame_hello h;
  struct frame_welcome w;
  struct frame_open o;
  struct frame_reason r;
  uint32_t inc;
  switch (type) {
    case FRAME_HELLO: return frame_hello_decode(p, n, &h);
    case FRAME_WELCOME: return frame_welcome_decode(p, n, &w);
    case FRAME_OPEN: return frame_open_decode(p, n, &o);
    case FRAME_RESET: return frame_reason_decode(p, n, &r);
    case FRAME_WINDOW: return frame_window_decode(p, n, &inc);
  }
  return 0;
}

static void test_malformed(void) {
  for (size_t i = 0; i < sizeof bad_table / sizeof bad_table[0]; i++) {
    const struct bad *b = &bad_table[i];
    int rc = decode_any(b->type, (const uint8_t *)b->bytes, b->len);
    if (rc != -1) fprintf(stderr, "malformed case accepted: %s\n", b->what);
    CHECK_EQ_INT(rc, -1);
  }
  /* Sanity: the table's shapes are right, the minimal valid forms decode. */
  CHECK_EQ_INT(decode_any(FRAME_HELLO, (const uint8_t *)"\x01\x00\x00\x01\x00\x00\x01" "a" "\x00", 9), 0);
  CHECK_EQ_INT(decode_any(FRAME_OPEN, (const uint8_t *)"\x01\x00\x50\x00\x00", 5), 0);
  CHECK_EQ_INT(decode_any(FRAME_RESET, (const uint8_t *)"\x00\x00\x00\x01\x00\x00", 6), 0);
  CHECK_EQ_INT(decode_any(FRAME_WELCOME, (const uint8_t *)"\x01\x04\x00\x00\x00\x00\x00\x00", 8), 0);
  /* Every truncation of a valid HELLO is refused. */
  struct evbuffer *b = evbuffer_new();
  struct frame_hello h = {.version = 1, .window = 1000};
  strcpy(h.key, "bob");
  strcpy(h.label, "label");
  frame_put_hello(b, &h);
  size_t n = evbuffer_get_length(b) - FRAME_HEADER_LEN;
  const uint8_t *p = evbuffer_pullup(b, -1) + FRAME_HEADER_LEN;
  int refused = 0;
  for (size_t k = 0; k < n; k++) refused += decode_any(FRAME_HELLO, p, k) == -1;
  CHECK_EQ_INT(refused, n);
  CHECK_EQ_INT(decode_any(FRAME_HELLO, p, n), 0);
  evbuffer_free(b);
}

int main(void) {
  test_header();
  test_hello_bytes();
  test_data_bytes();
  test_round_trips();
  test_malformed();
  test_goaway_leave();
  return check_done();
}
