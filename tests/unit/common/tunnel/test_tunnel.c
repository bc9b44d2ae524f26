/* test_tunnel.c: the tunnel state machine over a real socketpair carrier.
 *
 * Two tunnels (CLIENT and SERVER) run in one event base; some tests replace one
 * side by a raw socket driven with the frame codec, to play a misbehaving peer
 * (window overrun, silence, garbage). */
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "check.h"
#include "log.h"
#include "tunnel.h"

static struct event_base *base;

/* ---- harness -------------------------------------------------------------- */

struct side {
  struct tunnel *t;
  int welcomed, welcome_status, closed, hello_status;
  char close_err[600];
  struct tunnel_stream *accepted[64];
  int naccepted;
  struct frame_open last_open;
  int free_on_open, free_tunnel_on_close, free_tunnel_on_open;
  void (*on_open_hook)(struct side *sd, struct tunnel_stream *s);
};

static int cb_hello(struct tunnel *t, const struct frame_hello *h, char *msg, size_t len,
                    void *arg) {
  struct side *sd = arg;
  if (sd->hello_status) snprintf(msg, len, "key %s is taken", h->key);
  return sd->hello_status;
}

static void cb_welcome(struct tunnel *t, const struct frame_welcome *w, void *arg) {
  struct side *sd = arg;
  sd->welcomed = 1;
  sd->welcome_status = w->status;
}

static void cb_open(struct tunnel *t, struct tunnel_stream *s, const struct frame_open *o,
                    void *arg) {
  struct side *sd = arg;
  sd->last_open = *o;
  if (sd->free_tunnel_on_open) {
    tunnel_stream_free(s);
    tunnel_free(t);
    sd->t = NULL;
    return;
  }
  if (sd->on_open_hook) {
    sd->on_open_hook(sd, s);
    return;
  }
  if (sd->naccepted < 64) sd->accepted[sd->naccepted++] = s;
}

static void cb_close(struct tunnel *t, const char *err, void *arg) {
  struct side *sd = arg;
  sd->closed++;
  snprintf(sd->close_err, sizeof sd->close_err, "%s", err);
  if (sd->free_tunnel_on_close) {
    tunnel_free(t);
    sd->t = NULL;
  }
}

static const struct tunnel_cbs cbs = {cb_hello, cb_welcome, cb_open, cb_close};

static void socket_pair(int fd[2]) {
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, fd) < 0) abort();
  evutil_make_socket_nonblocking(fd[0]);
  evutil_make_socket_nonblocking(fd[1]);
}

static struct bufferevent *bev_on(int fd) {
  return bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
}

static struct frame_hello hello_for(const char *key) {
  struct frame_hello h = {.version = FRAME_PROTOCOL_VERSION, .window = 1};
  snprintf(h.key, sizeof h.key, "%s", key);
  snprintf(h.label, sizeof h.label, "test pid %d", (int)getpid());
  return h;
}

static double now_s(void) {
  struct timeval tv;
  evutil_gettimeofday(&tv, NULL);
  return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

/* Run the loop until *flag is non-zero or ms pass. */
static int wait_for_at(const int *flag, int ms, int line) {
  double end = now_s() + ms / 1000.0;
  while (!*flag && now_s() < end) {
    struct timeval tv = {0, 1000};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
  }
  if (!*flag && line) fprintf(stderr, "line %d: wait timed out after %d ms\n", line, ms);
  return *flag;
}
#define wait_for(flag, ms) wait_for_at((flag), (ms), __LINE__)

static void spin(int ms) {
  int never = 0;
  wait_for_at(&never, ms, 0);
}

static void connect_pair(struct side *c, struct side *s, const struct tunnel_config *ccfg,
                         const struct tunnel_config *scfg) {
  int fd[2];
  socket_pair(fd);
  struct frame_hello h = hello_for("alice");
  c->t = tunnel_new(base, bev_on(fd[0]), TUNNEL_CLIENT, ccfg, &h, &cbs, c);
  s->t = tunnel_new(base, bev_on(fd[1]), TUNNEL_SERVER, scfg, NULL, &cbs, s);
  wait_for(&c->welcomed, 2000);
}

static void free_pair(struct side *c, struct side *s) {
  if (c->t) tunnel_free(c->t);
  if (s->t) tunnel_free(s->t);
  c->t = s->t = NULL;
}

static const struct frame_open outbound = {.kind = FRAME_OPEN_OUTBOUND, .port = 80,
                                           .peer = "127.0.0.1:5555", .target_host = "web"};
static const struct frame_open inbound = {.kind = FRAME_OPEN_INBOUND, .port = 8080,
                                          .peer = "10.0.0.9:41000"};

/* A stream user that records everything. */
struct rec {
  struct evbuffer *got;
  int eof, closed, writable, reads;
  uint32_t code;
  char err[600];
  int stall;        /* do not drain */
  int free_on_read; /* tunnel_stream_free from inside read_cb */
  int free_on_closed;
  struct tunnel_stream *s;
};

static void rec_read(struct tunnel_stream *s, void *arg) {
  struct rec *r = arg;
  r->reads++;
  if (r->free_on_read) {
    tunnel_stream_free(s);
    r->s = NULL;
    return;
  }
  if (!r->stall) evbuffer_remove_buffer(tunnel_stream_input(s), r->got, SIZE_MAX);
}

static void rec_event(struct tunnel_stream *s, int what, uint32_t code, const char *err,
                      void *arg) {
  struct rec *r = arg;
  if (what & TUNNEL_STREAM_EOF) r->eof = 1;
  if (what & TUNNEL_STREAM_WRITABLE) r->writable++;
  if (what & TUNNEL_STREAM_CLOSED) {
    r->closed = 1;
    r->code = code;
    snprintf(r->err, sizeof r->err, "%s", err ? err : "");
    if (r->free_on_closed) {
      tunnel_stream_free(s);
      r->s = NULL;
    }
  }
}

static void rec_init(struct rec *r, struct tunnel_stream *s) {
  memset(r, 0, sizeof *r);
  r->got = evbuffer_new();
  r->s = s;
  if (s) tunnel_stream_setcb(s, rec_read, rec_event, r);
}

static void rec_clear(struct rec *r) {
  if (r->s) tunnel_stream_free(r->s);
  evbuffer_free(r->got);
}

static int got_is(struct rec *r, const char *want) {
  size_t n = strlen(want);
  return evbuffer_get_length(r->got) == n && memcmp(evbuffer_pullup(r->got, -1), want, n) == 0;
}

/* ---- tests ---------------------------------------------------------------------------- */

static void test_handshake(void) {
  struct side c = {0}, s = {0};
  connect_pair(&c, &s, NULL, NULL);
  CHECK(c.welcomed);
  CHECK_EQ_INT(c.welcome_status, FRAME_WELCOME_OK);
  CHECK(tunnel_ready(c.t));
  CHECK(tunnel_ready(s.t));
  CHECK(tunnel_peer_hello(s.t) != NULL);
  CHECK_EQ_STR(tunnel_peer_hello(s.t)->key, "alice");
  CHECK_EQ_INT(tunnel_peer_hello(s.t)->window, 256 * 1024); /* from the client's config */
  free_pair(&c, &s);

  /* A refused HELLO: the client learns the status and message, both sides close. */
  struct side c2 = {0}, s2 = {0};
  s2.hello_status = FRAME_WELCOME_CONFLICT;
  connect_pair(&c2, &s2, NULL, NULL);
  wait_for(&c2.closed, 2000);
  wait_for(&s2.closed, 2000);
  CHECK_EQ_INT(c2.welcome_status, FRAME_WELCOME_CONFLICT);
  CHECK(c2.closed == 1);
  CHECK(strstr(c2.close_err, "key alice is taken") != NULL);
  CHECK(s2.closed == 1);
  CHECK(!tunnel_ready(c2.t));
  CHECK(tunnel_stream_open(c2.t, &outbound) == NULL);
  free_pair(&c2, &s2);
}

static void test_open_data_shutdown(void) {
  struct side c = {0}, s = {0};
  connect_pair(&c, &s, NULL, NULL);

  /* client -> server (odd id), both half-closes */
  struct tunnel_stream *cs = tunnel_stream_open(c.t, &outbound);
  CHECK(cs != NULL);
  CHECK_EQ_INT(tunnel_stream_id(cs), 1);
  struct rec cr, sr;
  rec_init(&cr, cs);
  CHECK_EQ_INT(tunnel_stream_write(cs, "hello ", 6), 0);
  CHECK_EQ_INT(tunnel_stream_write(cs, "server", 6), 0);
  tunnel_stream_shutdown(cs);
  CHECK_EQ_INT(tunnel_stream_write(cs, "late", 4), -1); /* shut down for writing */
  int one = 0;
  for (int i = 0; i < 2000 && !one; i++) {
    spin(1);
    one = s.naccepted == 1;
  }
  CHECK_EQ_INT(s.naccepted, 1);
  CHECK_EQ_INT(s.last_open.kind, FRAME_OPEN_OUTBOUND);
  CHECK_EQ_STR(s.last_open.target_host, "web");
  CHECK_EQ_INT(s.last_open.port, 80);
  rec_init(&sr, s.accepted[0]);
  evbuffer_remove_buffer(tunnel_stream_input(sr.s), sr.got, SIZE_MAX); /* bytes before setcb */
  for (int i = 0; i < 2000 && !tunnel_stream_eof(sr.s); i++) spin(1); /* EOF may predate setcb */
  evbuffer_remove_buffer(tunnel_stream_input(sr.s), sr.got, SIZE_MAX);
  CHECK(got_is(&sr, "hello server"));
  CHECK(tunnel_stream_eof(sr.s));
  CHECK_EQ_INT(tunnel_stream_count(s.t), 1); /* server has not shut down yet */
  CHECK_EQ_INT(tunnel_stream_write(sr.s, "HELLO CLIENT", 12), 0);
  tunnel_stream_shutdown(sr.s);
  wait_for(&cr.eof, 2000);
  CHECK(got_is(&cr, "HELLO CLIENT"));
  spin(5);
  CHECK_EQ_INT(tunnel_stream_count(c.t), 0);
  CHECK_EQ_INT(tunnel_stream_count(s.t), 0);
  CHECK(!cr.closed && !sr.closed);
  rec_clear(&cr);
  rec_clear(&sr);

  /* server -> client (even id) */
  s.naccepted = c.naccepted = 0;
  struct tunnel_stream *ss = tunnel_stream_open(s.t, &inbound);
  CHECK(ss != NULL);
  CHECK_EQ_INT(tunnel_stream_id(ss), 2);
  rec_init(&sr, ss);
  tunnel_stream_write(ss, "GET / HTTP/1.1\r\n\r\n", 18);
  int got = 0;
  for (int i = 0; i < 2000 && !got; i++) {
    spin(1);
    got = c.naccepted == 1;
  }
  CHECK_EQ_INT(c.last_open.kind, FRAME_OPEN_INBOUND);
  CHECK_EQ_STR(c.last_open.peer, "10.0.0.9:41000");
  rec_init(&cr, c.accepted[0]);
  spin(20);
  evbuffer_remove_buffer(tunnel_stream_input(cr.s), cr.got, SIZE_MAX);
  CHECK(got_is(&cr, "GET / HTTP/1.1\r\n\r\n"));
  /* client resets with a reason: the server sees CLOSED with code and text */
  tunnel_stream_reset(cr.s, FRAME_RESET_REFUSED, "connection refused to localhost:5000");
  CHECK(tunnel_stream_closed(cr.s));
  CHECK_EQ_INT(tunnel_stream_write(cr.s, "x", 1), -1);
  wait_for(&sr.closed, 2000);
  CHECK_EQ_INT(sr.code, FRAME_RESET_REFUSED);
  CHECK_EQ_STR(sr.err, "connection refused to localhost:5000");
  CHECK_EQ_INT(tunnel_stream_count(s.t), 0);
  rec_clear(&cr);
  rec_clear(&sr);

  /* server resets a client-opened stream */
  cs = tunnel_stream_open(c.t, &outbound);
  rec_init(&cr, cs);
  got = 0;
  s.naccepted = 0;
  for (int i = 0; i < 2000 && !got; i++) {
    spin(1);
    got = s.naccepted == 1;
  }
  tunnel_stream_reset(s.accepted[0], FRAME_RESET_TIMEOUT, "dial timed out");
  tunnel_stream_free(s.accepted[0]);
  wait_for(&cr.closed, 2000);
  CHECK_EQ_INT(cr.code, FRAME_RESET_TIMEOUT);
  CHECK_EQ_STR(cr.err, "dial timed out");
  rec_clear(&cr);

  /* freeing an open stream resets it with CANCEL */
  cs = tunnel_stream_open(c.t, &outbound);
  s.naccepted = 0;
  got = 0;
  for (int i = 0; i < 2000 && !got; i++) {
    spin(1);
    got = s.naccepted == 1;
  }
  rec_init(&sr, s.accepted[0]);
  tunnel_stream_free(cs);
  wait_for(&sr.closed, 2000);
  CHECK_EQ_INT(sr.code, FRAME_RESET_CANCEL);
  rec_clear(&sr);

  struct tunnel_stats st;
  tunnel_get_stats(c.t, &st);
  CHECK(st.streams_opened >= 2);
  CHECK(st.bytes_out == 12);
  CHECK(st.bytes_in == 12 + 18);
  free_pair(&c, &s);
}

/* A byte pattern that makes misordering or loss visible. */
static uint8_t pat(uint64_t i, uint8_t seed) { return (uint8_t)((i * 31 + (i >> 13) + seed) % 251); }

static void fill(struct tunnel_stream *s, uint64_t *off, uint64_t total, uint8_t seed) {
  static uint8_t buf[65536];
  while (*off < total && tunnel_stream_pending(s) <= tunnel_stream_high(s)) {
    size_t n = total - *off < sizeof buf ? (size_t)(total - *off) : sizeof buf;
    for (size_t i = 0; i < n; i++) buf[i] = pat(*off + i, seed);
    CHECK_EQ_INT(tunnel_stream_write(s, buf, n), 0);
    *off += n;
  }
}

/* Drain and verify, counting bytes. */
static int verify(struct evbuffer *in, uint64_t *off, uint8_t seed) {
  int bad = 0;
  static uint8_t buf[65536];
  int n;
  while ((n = evbuffer_remove(in, buf, sizeof buf)) > 0) {
    for (int i = 0; i < n; i++) bad |= buf[i] != pat(*off + (uint64_t)i, seed);
    *off += (uint64_t)n;
  }
  return bad;
}

static void test_flow_control(void) {
  struct side c = {0}, s = {0};
  struct tunnel_config cfg;
  tunnel_config_default(&cfg);
  cfg.stream_window = 65536;
  connect_pair(&c, &s, &cfg, &cfg);
  struct tunnel_stream *cs = tunnel_stream_open(c.t, &outbound);
  struct rec cr;
  rec_init(&cr, cs);
  const uint64_t total = 1u << 20;
  uint64_t off = 0;
  fill(cs, &off, total, 1);
  fill(cs, &off, total, 1); /* refuses to grow past high: caller-side backpressure */
  CHECK(tunnel_stream_pending(cs) > 65536);
  CHECK(off < total);
  spin(100);
  CHECK_EQ_INT(s.naccepted, 1);
  struct rec sr;
  rec_init(&sr, s.accepted[0]);
  sr.stall = 1;
  spin(100);
  /* The reader never drained: exactly one window arrived, the rest waits. */
  CHECK_EQ_INT(evbuffer_get_length(tunnel_stream_input(sr.s)), 65536);
  CHECK_EQ_INT(tunnel_stream_pending(cs), off - 65536);
  CHECK_EQ_INT(cr.writable, 0);
  /* Draining grants windows back; the writer hears WRITABLE and refills. */
  sr.stall = 0;
  uint64_t roff = 0;
  int bad = 0;
  for (int i = 0; i < 5000 && roff < total; i++) {
    evbuffer_remove_buffer(tunnel_stream_input(sr.s), sr.got, SIZE_MAX);
    bad |= verify(sr.got, &roff, 1); /* rec_read also moves the input into got */
    if (cr.writable || tunnel_stream_pending(cs) <= 65536 / 2) fill(cs, &off, total, 1);
    if (off == total) tunnel_stream_shutdown(cs);
    spin(1);
  }
  CHECK(!bad);
  CHECK_EQ_INT(roff, total);
  CHECK(cr.writable > 0);
  wait_for(&sr.eof, 1000);
  CHECK(sr.eof);
  rec_clear(&cr);
  rec_clear(&sr);
  free_pair(&c, &s);
}

/* One stream's reader stalls with a full window while another stream on the same
 * tunnel moves 50 MB; then the stalled one resumes and gets every byte. */
static void test_stalled_stream_does_not_block_others(void) {
  struct side c = {0}, s = {0};
  connect_pair(&c, &s, NULL, NULL);
  struct tunnel_stream *a = tunnel_stream_open(c.t, &outbound);
  struct tunnel_stream *b = tunnel_stream_open(c.t, &outbound);
  struct rec ar, br;
  rec_init(&ar, a);
  rec_init(&br, b);
  const uint64_t a_total = 2u << 20, b_total = 50u << 20;
  uint64_t a_off = 0, b_off = 0, a_rx = 0, b_rx = 0;
  fill(a, &a_off, a_total, 7);
  int ok = 0;
  for (int i = 0; i < 2000 && !ok; i++) {
    spin(1);
    ok = s.naccepted == 2;
  }
  CHECK_EQ_INT(s.naccepted, 2);
  struct tunnel_stream *sa = s.accepted[0], *sb = s.accepted[1];
  int bad = 0;
  for (int i = 0; i < 200000 && b_rx < b_total; i++) {
    fill(b, &b_off, b_total, 9);
    fill(a, &a_off, a_total, 7); /* stalled: pending stays above high */
    event_base_loop(base, EVLOOP_ONCE);
    bad |= verify(tunnel_stream_input(sb), &b_rx, 9);
  }
  CHECK_EQ_INT(b_rx, b_total);
  CHECK(!bad);
  CHECK_EQ_INT(evbuffer_get_length(tunnel_stream_input(sa)), 256 * 1024); /* one window */
  CHECK(tunnel_stream_pending(a) > 0);
  for (int i = 0; i < 100000 && a_rx < a_total; i++) {
    fill(a, &a_off, a_total, 7);
    event_base_loop(base, EVLOOP_ONCE);
    bad |= verify(tunnel_stream_input(sa), &a_rx, 7);
  }
  CHECK_EQ_INT(a_rx, a_total);
  CHECK(!bad);
  ar.s = br.s = NULL;
  tunnel_stream_free(a);
  tunnel_stream_free(b);
  tunnel_stream_free(sa);
  tunnel_stream_free(sb);
  rec_clear(&ar);
  rec_clear(&br);
  free_pair(&c, &s);
}

static void test_many_streams_and_limit(void) {
  struct side c = {0}, s = {0};
  struct tunnel_config scfg;
  tunnel_config_default(&scfg);
  scfg.max_streams = 50;
  connect_pair(&c, &s, NULL, &scfg);
  enum { N = 60 };
  struct tunnel_stream *st[N];
  struct rec r[N];
  for (int i = 0; i < N; i++) {
    st[i] = tunnel_stream_open(c.t, &outbound);
    rec_init(&r[i], st[i]);
    tunnel_stream_write(st[i], "x", 1);
  }
  spin(200);
  int refused = 0, alive = 0;
  for (int i = 0; i < N; i++) {
    if (r[i].closed) {
      refused++;
      CHECK_EQ_INT(r[i].code, FRAME_RESET_INTERNAL);
      CHECK_EQ_STR(r[i].err, "too many streams");
    } else {
      alive++;
    }
  }
  CHECK_EQ_INT(refused, N - 50);
  CHECK_EQ_INT(tunnel_stream_count(s.t), 50);
  for (int i = 0; i < N; i++) rec_clear(&r[i]);
  spin(100);
  CHECK_EQ_INT(tunnel_stream_count(s.t), 0);
  CHECK_EQ_INT(tunnel_stream_count(c.t), 0);
  for (int i = 0; i < s.naccepted; i++) tunnel_stream_free(s.accepted[i]);
  free_pair(&c, &s);
}

/* Echo server for the many-streams test: on_open installs an echo. */
static void echo_read(struct tunnel_stream *s, void *arg) {
  tunnel_stream_write_buffer(s, tunnel_stream_input(s));
}
static void echo_event(struct tunnel_stream *s, int what, uint32_t code, const char *err,
                       void *arg) {
  if (what & TUNNEL_STREAM_EOF) tunnel_stream_shutdown(s);
  if (what & (TUNNEL_STREAM_EOF | TUNNEL_STREAM_CLOSED)) tunnel_stream_free(s); /* in callback */
}
static void echo_hook(struct side *sd, struct tunnel_stream *s) {
  tunnel_stream_setcb(s, echo_read, echo_event, NULL);
}

static void test_many_echo_streams(void) {
  struct side c = {0}, s = {0};
  s.on_open_hook = echo_hook;
  connect_pair(&c, &s, NULL, NULL);
  enum { N = 1000 };
  static struct rec r[N];
  char msg[64];
  for (int i = 0; i < N; i++) {
    rec_init(&r[i], tunnel_stream_open(c.t, &outbound));
    snprintf(msg, sizeof msg, "stream %d says hi", i);
    tunnel_stream_write(r[i].s, msg, strlen(msg));
    tunnel_stream_shutdown(r[i].s);
  }
  int done = 0;
  for (int k = 0; k < 5000 && done < N; k++) {
    spin(1);
    done = 0;
    for (int i = 0; i < N; i++) done += r[i].eof;
  }
  CHECK_EQ_INT(done, N);
  int good = 0;
  for (int i = 0; i < N; i++) {
    snprintf(msg, sizeof msg, "stream %d says hi", i);
    good += got_is(&r[i], msg);
    rec_clear(&r[i]);
  }
  CHECK_EQ_INT(good, N);
  spin(20);
  CHECK_EQ_INT(tunnel_stream_count(c.t), 0);
  CHECK_EQ_INT(tunnel_stream_count(s.t), 0);
  free_pair(&c, &s);
}

/* A raw peer: the other end of a socketpair, driven with the codec. */
static void raw_send(int fd, struct evbuffer *b) {
  while (evbuffer_get_length(b) > 0) {
    int n = evbuffer_write(b, fd);
    if (n <= 0) spin(1);
  }
}

/* Read frames arriving on fd for up to ms; returns the first of type want (payload in p). */
static int raw_expect(int fd, struct evbuffer *acc, uint8_t want, struct frame_header *h,
                      uint8_t *p, int ms) {
  for (int i = 0; i < ms; i++) {
    spin(1);
    while (evbuffer_read(acc, fd, 65536) > 0) {
    }
    while (evbuffer_get_length(acc) >= FRAME_HEADER_LEN) {
      uint8_t hb[FRAME_HEADER_LEN];
      evbuffer_copyout(acc, hb, sizeof hb);
      if (frame_header_decode(hb, h) < 0) return 0;
      if (evbuffer_get_length(acc) < FRAME_HEADER_LEN + h->length) break;
      evbuffer_drain(acc, FRAME_HEADER_LEN);
      evbuffer_remove(acc, p, h->length);
      if (h->type == want) return 1;
    }
  }
  return 0;
}

static void test_window_violation_and_unknown_streams(void) {
  struct side s = {0};
  struct tunnel_config cfg;
  tunnel_config_default(&cfg);
  cfg.stream_window = 1000;
  int fd[2];
  socket_pair(fd);
  s.t = tunnel_new(base, bev_on(fd[1]), TUNNEL_SERVER, &cfg, NULL, &cbs, &s);
  struct evbuffer *b = evbuffer_new(), *acc = evbuffer_new();
  struct frame_hello h = hello_for("bob");
  h.window = 5000;
  frame_put_hello(b, &h);
  raw_send(fd[0], b);
  struct frame_header fh;
  static uint8_t p[FRAME_MAX_PAYLOAD];
  struct frame_welcome w;
  CHECK(raw_expect(fd[0], acc, FRAME_WELCOME, &fh, p, 1000));
  CHECK_EQ_INT(frame_welcome_decode(p, fh.length, &w), 0);
  CHECK_EQ_INT(w.status, FRAME_WELCOME_OK);
  CHECK_EQ_INT(w.window, 1000);

  /* 600 + 600 bytes on a 1000-byte window: the second DATA overruns. */
  static uint8_t data[600];
  frame_put_open(b, 1, &outbound);
  frame_put_data(b, 1, data, sizeof data);
  frame_put_data(b, 1, data, sizeof data);
  raw_send(fd[0], b);
  CHECK(raw_expect(fd[0], acc, FRAME_RESET, &fh, p, 1000));
  struct frame_reason r;
  CHECK_EQ_INT(fh.stream, 1);
  CHECK_EQ_INT(frame_reason_decode(p, fh.length, &r), 0);
  CHECK_EQ_INT(r.code, FRAME_RESET_FLOW_CONTROL);
  CHECK(strstr(r.text, "window") != NULL);
  CHECK_EQ_INT(s.naccepted, 1);
  struct rec sr;
  rec_init(&sr, s.accepted[0]);
  spin(5);
  CHECK(tunnel_stream_closed(sr.s));
  CHECK_EQ_INT(tunnel_stream_count(s.t), 0);
  CHECK_EQ_INT(evbuffer_get_length(tunnel_stream_input(sr.s)), 600); /* first DATA kept */
  rec_clear(&sr);

  /* Unknown streams: WINDOW and RESET are ignored, DATA and SHUTDOWN get RESET. */
  frame_put_window(b, 99, 100);
  frame_put_reset(b, 99, FRAME_RESET_CANCEL, "whatever");
  frame_put_data(b, 97, "zz", 2);
  raw_send(fd[0], b);
  CHECK(raw_expect(fd[0], acc, FRAME_RESET, &fh, p, 1000));
  CHECK_EQ_INT(fh.stream, 97);
  frame_put_shutdown(b, 95);
  raw_send(fd[0], b);
  CHECK(raw_expect(fd[0], acc, FRAME_RESET, &fh, p, 1000));
  CHECK_EQ_INT(fh.stream, 95);
  CHECK_EQ_INT(s.closed, 0);

  /* PING is answered with the same opaque bytes and ACK. */
  const uint8_t op[8] = {9, 8, 7, 6, 5, 4, 3, 2};
  frame_put_ping(b, 0, op);
  raw_send(fd[0], b);
  int pong = 0;
  for (int i = 0; i < 5 && !pong; i++) {
    CHECK(raw_expect(fd[0], acc, FRAME_PING, &fh, p, 1000));
    pong = (fh.flags & FRAME_FLAG_ACK) && memcmp(p, op, 8) == 0;
  }
  CHECK(pong);

  /* OPEN with the wrong parity is a connection error: GOAWAY(PROTOCOL), on_close. */
  frame_put_open(b, 4, &outbound);
  raw_send(fd[0], b);
  CHECK(raw_expect(fd[0], acc, FRAME_GOAWAY, &fh, p, 1000));
  CHECK_EQ_INT(frame_reason_decode(p, fh.length, &r), 0);
  CHECK_EQ_INT(r.code, FRAME_RESET_PROTOCOL);
  wait_for(&s.closed, 1000);
  CHECK(strstr(s.close_err, "protocol error") != NULL);
  tunnel_free(s.t);
  close(fd[0]);
  evbuffer_free(b);
  evbuffer_free(acc);
}

/* Issue 16 defect 2: a peer that asks for answers (PING, DATA on unknown
 * streams) faster than it reads them is cut off instead of growing our output
 * without bound; a few hundred answered ones are fine. */
static void test_control_reply_flood(void) {
  struct side s = {0};
  int fd[2];
  socket_pair(fd);
  s.t = tunnel_new(base, bev_on(fd[1]), TUNNEL_SERVER, NULL, NULL, &cbs, &s);
  struct evbuffer *b = evbuffer_new(), *acc = evbuffer_new();
  struct frame_header fh;
  static uint8_t p[FRAME_MAX_PAYLOAD];
  const uint8_t op[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  for (int i = 0; i < 200; i++) frame_put_ping(b, 0, op); /* before HELLO: allowed */
  raw_send(fd[0], b);
  for (int i = 0; i < 200; i++) CHECK(raw_expect(fd[0], acc, FRAME_PING, &fh, p, 1000));
  CHECK_EQ_INT(s.closed, 0);
  /* a peer that reads its answers may ask for many more than 1024 in all */
  struct frame_hello h = hello_for("bob");
  frame_put_hello(b, &h);
  raw_send(fd[0], b);
  CHECK(raw_expect(fd[0], acc, FRAME_WELCOME, &fh, p, 1000));
  for (int round = 0; round < 4; round++) {
    for (int i = 0; i < 900; i++) frame_put_ping(b, 0, op);
    raw_send(fd[0], b);
    int got = 0;
    for (int ms = 0; ms < 2000 && got < 900; ms++) { /* count the answers as they come */
      spin(1);
      while (evbuffer_read(acc, fd[0], 65536) > 0) {
      }
      while (evbuffer_get_length(acc) >= FRAME_HEADER_LEN) {
        uint8_t hb[FRAME_HEADER_LEN];
        evbuffer_copyout(acc, hb, sizeof hb);
        if (frame_header_decode(hb, &fh) < 0 ||
            evbuffer_get_length(acc) < FRAME_HEADER_LEN + fh.length)
          break;
        evbuffer_drain(acc, FRAME_HEADER_LEN + fh.length);
        got += fh.type == FRAME_PING && (fh.flags & FRAME_FLAG_ACK);
      }
    }
    CHECK_EQ_INT(got, 900);
  }
  CHECK_EQ_INT(s.closed, 0);

  for (int i = 0; i < 5000; i++) frame_put_data(b, 1001 + 2 * (uint32_t)(i % 10), "", 0);
  raw_send(fd[0], b);
  wait_for(&s.closed, 2000);
  CHECK(strstr(s.close_err, "enhance your calm") != NULL);
  struct tunnel_stats st;
  tunnel_get_stats(s.t, &st);
  CHECK_EQ_INT((int)st.flood_closed, 1);
  tunnel_free(s.t);
  close(fd[0]);
  evbuffer_free(b);
  evbuffer_free(acc);
}

/* Issue 16 defect 2, the other half: while the carrier's output is far above
 * its high mark (here: OPEN frames the peer does not read), the peer's frames
 * are not read at all; once the peer drains it, reading resumes and what was
 * waiting (a PING) is answered. */
static void test_read_pause_when_output_full(void) {
  struct side s = {0};
  int fd[2];
  socket_pair(fd);
  int small = 4096;
  setsockopt(fd[1], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
  setsockopt(fd[0], SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  struct tunnel_config cfg;
  tunnel_config_default(&cfg);
  cfg.carrier_high = 64u * 1024u; /* reading pauses above 4 times this */
  s.t = tunnel_new(base, bev_on(fd[1]), TUNNEL_SERVER, &cfg, NULL, &cbs, &s);
  struct evbuffer *b = evbuffer_new(), *acc = evbuffer_new();
  struct frame_header fh;
  static uint8_t p[FRAME_MAX_PAYLOAD];
  struct frame_hello h = hello_for("bob");
  frame_put_hello(b, &h);
  raw_send(fd[0], b);
  CHECK(raw_expect(fd[0], acc, FRAME_WELCOME, &fh, p, 1000));

  static struct tunnel_stream *opened[20000];
  size_t n = 0;
  struct evbuffer *cout = bufferevent_get_output(tunnel_carrier(s.t));
  while (evbuffer_get_length(cout) < 300u * 1024u && n < 20000) {
    opened[n] = tunnel_stream_open(s.t, &inbound);
    CHECK(opened[n] != NULL);
    if (!opened[n]) break;
    n++;
  }
  spin(20);
  const uint8_t op[8] = {7, 7, 7, 7, 7, 7, 7, 7};
  frame_put_ping(b, 0, op);
  raw_send(fd[0], b);
  spin(50);
  struct tunnel_stats st;
  tunnel_get_stats(s.t, &st);
  CHECK_EQ_INT((int)st.reads_paused, 1);
  CHECK(evbuffer_get_length(cout) > 256u * 1024u); /* it was not drained */

  int pong = 0;
  for (int i = 0; i < 20 && !pong; i++) /* the peer reads: OPENs, then the answer */
    if (raw_expect(fd[0], acc, FRAME_PING, &fh, p, 500))
      pong = (fh.flags & FRAME_FLAG_ACK) && memcmp(p, op, 8) == 0;
  CHECK(pong);
  CHECK_EQ_INT(s.closed, 0);
  for (size_t i = 0; i < n; i++) tunnel_stream_free(opened[i]);
  tunnel_free(s.t);
  close(fd[0]);
  evbuffer_free(b);
  evbuffer_free(acc);
}

static void test_garbage_and_bad_hello(void) {
  /* An over-long frame header from the peer. */
  struct side s = {0};
  int fd[2];
  socket_pair(fd);
  s.t = tunnel_new(base, bev_on(fd[1]), TUNNEL_SERVER, NULL, NULL, &cbs, &s);
  if (write(fd[0], "\xff\xff\xff\x01\x00\x00\x00\x00\x00", 9) != 9) abort();
  wait_for(&s.closed, 1000);
  CHECK(strstr(s.close_err, "longer than 65536") != NULL);
  tunnel_free(s.t);
  close(fd[0]);

  /* A HELLO whose key is not a DNS label gets WELCOME(BAD_KEY). */
  struct side s2 = {0};
  socket_pair(fd);
  s2.t = tunnel_new(base, bev_on(fd[1]), TUNNEL_SERVER, NULL, NULL, &cbs, &s2);
  struct evbuffer *b = evbuffer_new(), *acc = evbuffer_new();
  struct frame_hello h = hello_for("Not_A_Label");
  frame_put_hello(b, &h);
  raw_send(fd[0], b);
  struct frame_header fh;
  uint8_t p[2048];
  struct frame_welcome w;
  CHECK(raw_expect(fd[0], acc, FRAME_WELCOME, &fh, p, 1000));
  CHECK_EQ_INT(frame_welcome_decode(p, fh.length, &w), 0);
  CHECK_EQ_INT(w.status, FRAME_WELCOME_BAD_KEY);
  wait_for(&s2.closed, 1000);
  CHECK(strstr(s2.close_err, "refused HELLO") != NULL);
  tunnel_free(s2.t);
  close(fd[0]);

  /* A peer that closes the carrier: on_close names EOF, streams get TUNNEL_LOST. */
  struct side c3 = {0}, s3 = {0};
  connect_pair(&c3, &s3, NULL, NULL);
  struct rec cr;
  rec_init(&cr, tunnel_stream_open(c3.t, &outbound));
  spin(10);
  tunnel_free(s3.t);
  s3.t = NULL;
  wait_for(&c3.closed, 1000);
  CHECK(strstr(c3.close_err, "peer closed the tunnel (CANCEL): tunnel closed") != NULL);
  CHECK(cr.closed);
  CHECK_EQ_INT(cr.code, FRAME_RESET_TUNNEL_LOST);
  CHECK(strstr(cr.err, "tunnel lost") != NULL);
  CHECK(tunnel_stream_tunnel(cr.s) == NULL);
  CHECK(tunnel_stream_closed(cr.s));
  for (int i = 0; i < s3.naccepted; i++) tunnel_stream_free(s3.accepted[i]);
  rec_clear(&cr); /* a stream outlives its tunnel until freed */
  free_pair(&c3, &s3);
  evbuffer_free(b);
  evbuffer_free(acc);
}

static void test_silent_peer(void) {
  struct side c = {0};
  struct tunnel_config cfg;
  tunnel_config_default(&cfg);
  cfg.ping_interval_ms = 50;
  cfg.dead_after_ms = 300;
  int fd[2];
  socket_pair(fd);
  struct frame_hello h = hello_for("carol");
  c.t = tunnel_new(base, bev_on(fd[0]), TUNNEL_CLIENT, &cfg, &h, &cbs, &c);
  c.free_tunnel_on_close = 1;
  wait_for(&c.closed, 2000);
  CHECK_EQ_INT(c.closed, 1);
  CHECK(strstr(c.close_err, "peer silent for") != NULL);
  CHECK(c.t == NULL);
  /* The silent peer did receive HELLO and PINGs. */
  struct evbuffer *acc = evbuffer_new();
  while (evbuffer_read(acc, fd[1], 65536) > 0) {
  }
  CHECK(evbuffer_get_length(acc) > 2 * (FRAME_HEADER_LEN + 8));
  evbuffer_free(acc);
  close(fd[1]);

  /* A live peer that answers PINGs keeps the tunnel up past dead_after. */
  struct side c2 = {0}, s2 = {0};
  connect_pair(&c2, &s2, &cfg, &cfg);
  spin(700);
  CHECK_EQ_INT(c2.closed, 0);
  CHECK_EQ_INT(s2.closed, 0);
  free_pair(&c2, &s2);
}

/* Frees from inside every kind of callback. Run under ASan to make this count. */
static void test_free_inside_callbacks(void) {
  /* Tunnel freed inside on_open. */
  struct side c = {0}, s = {0};
  s.free_tunnel_on_open = 1;
  connect_pair(&c, &s, NULL, NULL);
  struct rec cr;
  rec_init(&cr, tunnel_stream_open(c.t, &outbound));
  tunnel_stream_write(cr.s, "abc", 3);
  c.free_tunnel_on_close = 1;
  wait_for(&c.closed, 2000);
  CHECK(s.t == NULL);
  CHECK(c.t == NULL);
  CHECK(cr.closed);
  rec_clear(&cr);

  /* Stream freed inside read_cb while more DATA frames for it are queued. */
  struct side c2 = {0}, s2 = {0};
  connect_pair(&c2, &s2, NULL, NULL);
  struct tunnel_stream *cs = tunnel_stream_open(c2.t, &outbound);
  static uint8_t big[200000];
  tunnel_stream_write(cs, big, sizeof big);
  int ok = 0;
  for (int i = 0; i < 1000 && !ok; i++) {
    spin(1);
    ok = s2.naccepted == 1;
  }
  struct rec sr;
  rec_init(&sr, s2.accepted[0]);
  sr.free_on_read = 1;
  struct rec cr2;
  rec_init(&cr2, cs);
  tunnel_stream_write(cs, "more", 4); /* a read_cb now runs, and frees */
  wait_for(&cr2.closed, 2000);
  CHECK_EQ_INT(cr2.code, FRAME_RESET_CANCEL);
  rec_clear(&sr);
  rec_clear(&cr2);

  /* Stream freed inside CLOSED, and the tunnel freed inside a stream's CLOSED. */
  struct tunnel_stream *a = tunnel_stream_open(c2.t, &outbound);
  struct tunnel_stream *b = tunnel_stream_open(c2.t, &outbound);
  struct rec ar, br;
  rec_init(&ar, a);
  rec_init(&br, b);
  ar.free_on_closed = br.free_on_closed = 1;
  c2.free_tunnel_on_close = 1;
  spin(10);
  tunnel_free(s2.t);
  s2.t = NULL;
  wait_for(&c2.closed, 2000);
  CHECK(ar.closed && br.closed);
  CHECK(ar.s == NULL && br.s == NULL);
  CHECK(c2.t == NULL);
  for (int i = 1; i < s2.naccepted; i++) tunnel_stream_free(s2.accepted[i]); /* [0] freed in read_cb */
  rec_clear(&ar);
  rec_clear(&br);

  /* tunnel_free() called directly while streams are live: they get CLOSED first. */
  struct side c3 = {0}, s3 = {0};
  connect_pair(&c3, &s3, NULL, NULL);
  struct rec r3;
  rec_init(&r3, tunnel_stream_open(c3.t, &outbound));
  tunnel_free(c3.t);
  c3.t = NULL;
  CHECK(r3.closed);
  CHECK_EQ_INT(r3.code, FRAME_RESET_TUNNEL_LOST);
  rec_clear(&r3);
  spin(10);
  for (int i = 0; i < s3.naccepted; i++) tunnel_stream_free(s3.accepted[i]);
  free_pair(&c3, &s3);
}

static void test_goaway(void) {
  struct side c = {0}, s = {0};
  connect_pair(&c, &s, NULL, NULL);
  tunnel_goaway(s.t, FRAME_RESET_CANCEL, "agent shutting down");
  CHECK(tunnel_stream_open(s.t, &inbound) == NULL);
  wait_for(&c.closed, 1000);
  wait_for(&s.closed, 1000);
  CHECK(strstr(c.close_err, "agent shutting down") != NULL);
  CHECK(strstr(s.close_err, "agent shutting down") != NULL);
  free_pair(&c, &s);
}

/* The receiver of a GOAWAY learns its code, not only its text: a LEAVE worded
 * any way is a leave, an error GOAWAY worded like the old clean one is not. */
static void test_goaway_code(void) {
  struct side c = {0}, s = {0};
  uint32_t code = 99;
  connect_pair(&c, &s, NULL, NULL);
  CHECK_EQ_INT(tunnel_peer_goaway(s.t, &code), 0);
  tunnel_goaway(c.t, FRAME_RESET_LEAVE, "see you tomorrow");
  wait_for(&s.closed, 1000);
  CHECK_EQ_INT(tunnel_peer_goaway(s.t, &code), 1);
  CHECK_EQ_INT(code, FRAME_RESET_LEAVE);
  CHECK_EQ_INT(frame_goaway_is_leave(code), 1);
  CHECK_EQ_INT(tunnel_peer_goaway(c.t, NULL), 0); /* the sender did not receive one */
  wait_for(&c.closed, 1000);
  free_pair(&c, &s);

  struct side c2 = {0}, s2 = {0};
  connect_pair(&c2, &s2, NULL, NULL);
  tunnel_goaway(c2.t, FRAME_RESET_PROTOCOL, "developer proxy stopping");
  wait_for(&s2.closed, 1000);
  CHECK(strstr(s2.close_err, "peer closed the tunnel") != NULL);
  CHECK_EQ_INT(tunnel_peer_goaway(s2.t, &code), 1);
  CHECK_EQ_INT(code, FRAME_RESET_PROTOCOL);
  CHECK_EQ_INT(frame_goaway_is_leave(code), 0);
  wait_for(&c2.closed, 1000);
  free_pair(&c2, &s2);
}

#define RUN(f)                                                                \
  do {                                                                        \
    struct timeval t0_, t1_;                                                  \
    evutil_gettimeofday(&t0_, NULL);                                          \
    f();                                                                      \
    evutil_gettimeofday(&t1_, NULL);                                          \
    printf("%-45s %6.3f s\n", #f,                                             \
           (double)(t1_.tv_sec - t0_.tv_sec) + (t1_.tv_usec - t0_.tv_usec) / 1e6); \
  } while (0)

/* A carrier that runs callbacks synchronously: a bufferevent pair without
 * BEV_OPT_DEFER_CALLBACKS. Writing a frame runs the peer's read callback at once,
 * which may answer straight into ours: the nesting guards must hold. */
static void test_synchronous_carrier(void) {
  struct bufferevent *pair[2];
  CHECK_EQ_INT(bufferevent_pair_new(base, BEV_OPT_CLOSE_ON_FREE, pair), 0);
  struct side c = {0}, s = {0};
  s.on_open_hook = echo_hook;
  struct frame_hello h = hello_for("sync");
  c.t = tunnel_new(base, pair[0], TUNNEL_CLIENT, NULL, &h, &cbs, &c);
  s.t = tunnel_new(base, pair[1], TUNNEL_SERVER, NULL, NULL, &cbs, &s);
  wait_for(&c.welcomed, 2000);
  CHECK(tunnel_ready(c.t));
  enum { N = 20 };
  struct rec r[N];
  static uint8_t blob[300000];
  for (size_t i = 0; i < sizeof blob; i++) blob[i] = (uint8_t)(i % 239);
  for (int i = 0; i < N; i++) {
    rec_init(&r[i], tunnel_stream_open(c.t, &outbound));
    tunnel_stream_write(r[i].s, blob, sizeof blob);
    tunnel_stream_shutdown(r[i].s);
  }
  int done = 0;
  for (int k = 0; k < 5000 && done < N; k++) {
    spin(1);
    done = 0;
    for (int i = 0; i < N; i++) done += r[i].eof;
  }
  CHECK_EQ_INT(done, N);
  int good = 0;
  for (int i = 0; i < N; i++) {
    good += evbuffer_get_length(r[i].got) == sizeof blob &&
            memcmp(evbuffer_pullup(r[i].got, -1), blob, sizeof blob) == 0;
    rec_clear(&r[i]);
  }
  CHECK_EQ_INT(good, N);
  /* and a reset plus a tunnel free while the peer answers synchronously */
  struct rec x;
  rec_init(&x, tunnel_stream_open(c.t, &outbound));
  tunnel_stream_write(x.s, "abc", 3);
  spin(5);
  tunnel_stream_reset(x.s, FRAME_RESET_CANCEL, "bye");
  rec_clear(&x);
  spin(5);
  free_pair(&c, &s);
  spin(5);
}

int main(void) {
  log_init("test_tunnel", LOGL_WARN);
  signal(SIGPIPE, SIG_IGN); /* as the programs do: a closed peer is an error, not a signal */
  base = event_base_new();
  RUN(test_handshake);
  RUN(test_open_data_shutdown);
  RUN(test_flow_control);
  RUN(test_stalled_stream_does_not_block_others);
  RUN(test_many_streams_and_limit);
  RUN(test_many_echo_streams);
  RUN(test_window_violation_and_unknown_streams);
  RUN(test_control_reply_flood);
  RUN(test_read_pause_when_output_full);
  RUN(test_garbage_and_bad_hello);
  RUN(test_silent_peer);
  RUN(test_free_inside_callbacks);
  RUN(test_goaway);
  RUN(test_goaway_code);
  RUN(test_synchronous_carrier);
  event_base_free(base);
  return check_done();
}
