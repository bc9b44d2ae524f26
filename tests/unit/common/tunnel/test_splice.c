/* test_splice.c: splices between sockets and tunnel streams, over loopback TCP.
 *
 *   app socket <-splice-> client stream ==tunnel== server stream <-splice-> TCP 127.0.0.1:port
 *
 * The TCP server is either a streaming echo or a "reply after EOF" server, which
 * answers only once the request's half-close has arrived (so half-close must be
 * propagated both ways without closing the other direction). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "check.h"
#include "log.h"
#include "splice.h"
#include "tunnel.h"

static struct event_base *base;

static double now_s(void) {
  struct timeval tv;
  evutil_gettimeofday(&tv, NULL);
  return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

static int wait_for(const int *flag, int ms) {
  double end = now_s() + ms / 1000.0;
  while (!*flag && now_s() < end) event_base_loop(base, EVLOOP_ONCE);
  return *flag;
}

/* ---- TCP servers ---------------------------------------------------------- */

static int reply_after_eof; /* server mode */

struct srv_conn {
  struct bufferevent *bev;
  struct evbuffer *req;
  int eof;
};

static void srv_write(struct bufferevent *bev, void *arg) {
  struct srv_conn *c = arg;
  if (c->eof && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
    shutdown(bufferevent_getfd(bev), SHUT_WR); /* our half-close, then done */
    evbuffer_free(c->req);
    bufferevent_free(bev);
    free(c);
  }
}

static void srv_read(struct bufferevent *bev, void *arg) {
  struct srv_conn *c = arg;
  struct evbuffer *in = bufferevent_get_input(bev);
  if (reply_after_eof)
    evbuffer_add_buffer(c->req, in);
  else if (evbuffer_get_length(bufferevent_get_output(bev)) < 1u << 20)
    evbuffer_add_buffer(bufferevent_get_output(bev), in);
  else
    bufferevent_disable(bev, EV_READ); /* resumed in srv_drain */
}

static void srv_event(struct bufferevent *bev, short what, void *arg) {
  struct srv_conn *c = arg;
  if (what & BEV_EVENT_EOF && !c->eof) {
    c->eof = 1;
    struct evbuffer *out = bufferevent_get_output(bev);
    if (reply_after_eof) {
      evbuffer_add_printf(out, "got %zu bytes, then your EOF", evbuffer_get_length(c->req));
    } else {
      evbuffer_add_buffer(out, bufferevent_get_input(bev));
    }
    bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
    if (evbuffer_get_length(out) == 0) srv_write(bev, c);
    return;
  }
  if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
    evbuffer_free(c->req);
    bufferevent_free(bev);
    free(c);
  }
}

static void srv_drain(struct bufferevent *bev, void *arg) {
  struct srv_conn *c = arg;
  if (c->eof) {
    srv_write(bev, c);
    return;
  }
  bufferevent_enable(bev, EV_READ);
  srv_read(bev, c);
}

static void srv_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                       int len, void *arg) {
  struct srv_conn *c = calloc(1, sizeof *c);
  c->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
  c->req = evbuffer_new();
  bufferevent_setcb(c->bev, srv_read, srv_drain, srv_event, c);
  bufferevent_setwatermark(c->bev, EV_WRITE, 1u << 19, 0);
  bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

/* ---- the tunnel and the server side's splice ---------------------------------- */

static int srv_port;
static int server_splice_done;
static char server_splice_err[600];

static void server_done(const char *err, size_t a_to_b, size_t b_to_a, void *arg) {
  server_splice_done = 1;
  snprintf(server_splice_err, sizeof server_splice_err, "%s", err ? err : "");
}

/* The "agent": dial the target for each OPEN and splice it to the stream. */
static void on_open(struct tunnel *t, struct tunnel_stream *s, const struct frame_open *o,
                    void *arg) {
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(o->port)};
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  struct bufferevent *bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
  if (bufferevent_socket_connect(bev, (struct sockaddr *)&sin, sizeof sin) < 0) {
    bufferevent_free(bev);
    tunnel_stream_reset(s, FRAME_RESET_REFUSED, "connect failed");
    tunnel_stream_free(s);
    return;
  }
  struct splice_end a = {.stream = s}, b = {.bev = bev};
  splice_new(a, b, server_done, NULL);
}

static const struct tunnel_cbs server_cbs = {NULL, NULL, on_open, NULL};
static const struct tunnel_cbs client_cbs = {NULL, NULL, NULL, NULL};

struct rig {
  struct tunnel *c, *s;
  struct evconnlistener *l;
};

static void rig_up(struct rig *r) {
  int fd[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, fd) < 0) abort();
  evutil_make_socket_nonblocking(fd[0]);
  evutil_make_socket_nonblocking(fd[1]);
  struct frame_hello h = {.version = 1, .window = 1, .key = "splice"};
  r->c = tunnel_new(base, bufferevent_socket_new(base, fd[0], BEV_OPT_CLOSE_ON_FREE),
                    TUNNEL_CLIENT, NULL, &h, &client_cbs, NULL);
  r->s = tunnel_new(base, bufferevent_socket_new(base, fd[1], BEV_OPT_CLOSE_ON_FREE),
                    TUNNEL_SERVER, NULL, NULL, &server_cbs, NULL);
  struct sockaddr_in sin = {.sin_family = AF_INET};
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  r->l = evconnlistener_new_bind(base, srv_accept, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
                                 16, (struct sockaddr *)&sin, sizeof sin);
  socklen_t len = sizeof sin;
  getsockname(evconnlistener_get_fd(r->l), (struct sockaddr *)&sin, &len);
  srv_port = ntohs(sin.sin_port);
  int ready = 0;
  for (int i = 0; i < 1000 && !ready; i++) {
    event_base_loop(base, EVLOOP_ONCE);
    ready = tunnel_ready(r->c);
  }
  CHECK(ready);
}

static void rig_down(struct rig *r) {
  tunnel_free(r->c);
  tunnel_free(r->s);
  evconnlistener_free(r->l);
}

/* ---- the application side: writes a pattern, reads back and verifies ---------- */

struct app {
  struct bufferevent *bev;
  uint64_t total, sent, recvd;
  int bad, eof, splice_done, shut_after_send;
  char splice_err[600];
  size_t a_to_b, b_to_a;
  struct evbuffer *got;
};

static uint8_t pat(uint64_t i) { return (uint8_t)((i * 131 + (i >> 11)) % 253); }

static void app_fill(struct app *ap) {
  static uint8_t buf[65536];
  struct evbuffer *out = bufferevent_get_output(ap->bev);
  while (ap->sent < ap->total && evbuffer_get_length(out) < 512 * 1024) {
    size_t n = ap->total - ap->sent < sizeof buf ? (size_t)(ap->total - ap->sent) : sizeof buf;
    for (size_t i = 0; i < n; i++) buf[i] = pat(ap->sent + i);
    evbuffer_add(out, buf, n);
    ap->sent += n;
  }
  if (ap->sent == ap->total && ap->shut_after_send == 1 && evbuffer_get_length(out) == 0) {
    shutdown(bufferevent_getfd(ap->bev), SHUT_WR);
    ap->shut_after_send = 2;
  }
}

static void app_read(struct bufferevent *bev, void *arg) {
  struct app *ap = arg;
  struct evbuffer *in = bufferevent_get_input(bev);
  if (ap->got) {
    evbuffer_add_buffer(ap->got, in);
    return;
  }
  static uint8_t buf[65536];
  int n;
  while ((n = evbuffer_remove(in, buf, sizeof buf)) > 0) {
    for (int i = 0; i < n; i++) ap->bad |= buf[i] != pat(ap->recvd + (uint64_t)i);
    ap->recvd += (uint64_t)n;
  }
}

static void app_write(struct bufferevent *bev, void *arg) { app_fill(arg); }

static void app_event(struct bufferevent *bev, short what, void *arg) {
  struct app *ap = arg;
  if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) ap->eof = 1;
}

static void client_done(const char *err, size_t a_to_b, size_t b_to_a, void *arg) {
  struct app *ap = arg;
  ap->splice_done = 1;
  ap->a_to_b = a_to_b;
  ap->b_to_a = b_to_a;
  snprintf(ap->splice_err, sizeof ap->splice_err, "%s", err ? err : "");
}

/* Open a stream to the TCP server and splice it with one end of a socketpair; the
 * other end becomes the app's bufferevent. */
static void app_connect(struct rig *r, struct app *ap) {
  int fd[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, fd) < 0) abort();
  evutil_make_socket_nonblocking(fd[0]);
  evutil_make_socket_nonblocking(fd[1]);
  struct frame_open o = {.kind = FRAME_OPEN_OUTBOUND, .port = (uint16_t)srv_port,
                         .target_host = "127.0.0.1"};
  struct tunnel_stream *s = tunnel_stream_open(r->c, &o);
  CHECK(s != NULL);
  struct bufferevent *near = bufferevent_socket_new(base, fd[1], BEV_OPT_CLOSE_ON_FREE);
  /* bytes the app wrote before the splice existed must be forwarded too */
  if (write(fd[0], "", 0) < 0) abort();
  struct splice_end a = {.bev = near}, b = {.stream = s};
  CHECK(splice_new(a, b, client_done, ap) != NULL);
  ap->bev = bufferevent_socket_new(base, fd[0], BEV_OPT_CLOSE_ON_FREE);
  bufferevent_setcb(ap->bev, app_read, app_write, app_event, ap);
  bufferevent_setwatermark(ap->bev, EV_WRITE, 256 * 1024, 0);
  bufferevent_enable(ap->bev, EV_READ | EV_WRITE);
}

static void test_echo_large(void) {
  struct rig r;
  reply_after_eof = 0;
  server_splice_done = 0;
  rig_up(&r);
  struct app ap = {.total = 64ull << 20, .shut_after_send = 1};
  app_connect(&r, &ap);
  double t0 = now_s();
  app_fill(&ap);
  wait_for(&ap.eof, 60000);
  double dt = now_s() - t0;
  CHECK(ap.eof);
  CHECK_EQ_INT(ap.recvd, ap.total);
  CHECK(!ap.bad);
  wait_for(&ap.splice_done, 5000);
  wait_for(&server_splice_done, 5000);
  CHECK_EQ_STR(ap.splice_err, "");
  CHECK_EQ_STR(server_splice_err, "");
  CHECK_EQ_INT(ap.a_to_b, ap.total);
  CHECK_EQ_INT(ap.b_to_a, ap.total);
  printf("echo of %llu MB through splice+tunnel+splice: %.2f s (%.0f MB/s each way)\n",
         (unsigned long long)(ap.total >> 20), dt, (double)(ap.total >> 20) / dt);
  CHECK_EQ_INT(tunnel_stream_count(r.c), 0);
  CHECK_EQ_INT(tunnel_stream_count(r.s), 0);
  bufferevent_free(ap.bev);
  rig_down(&r);
}

static void test_half_close_reply_after_eof(void) {
  struct rig r;
  reply_after_eof = 1;
  server_splice_done = 0;
  rig_up(&r);
  struct app ap = {.total = 300000, .shut_after_send = 1};
  ap.got = evbuffer_new();
  app_connect(&r, &ap);
  app_fill(&ap);
  wait_for(&ap.eof, 10000);
  const char *want = "got 300000 bytes, then your EOF";
  CHECK_EQ_INT(evbuffer_get_length(ap.got), strlen(want));
  CHECK(evbuffer_get_length(ap.got) == strlen(want) &&
        memcmp(evbuffer_pullup(ap.got, -1), want, strlen(want)) == 0);
  wait_for(&ap.splice_done, 5000);
  CHECK_EQ_STR(ap.splice_err, "");
  CHECK_EQ_INT(ap.a_to_b, 300000);
  CHECK_EQ_INT(ap.b_to_a, strlen(want));
  evbuffer_free(ap.got);
  bufferevent_free(ap.bev);
  rig_down(&r);
}

/* A refused dial resets the stream; the client's splice ends with the reason and
 * closes the app's socket. */
static void test_reset_ends_splice(void) {
  struct rig r;
  rig_up(&r);
  struct app ap = {.total = 0};
  int saved = srv_port;
  srv_port = 1; /* nothing listens on port 1 */
  app_connect(&r, &ap);
  srv_port = saved;
  wait_for(&ap.splice_done, 5000);
  CHECK(ap.splice_done);
  CHECK(strlen(ap.splice_err) > 0);
  wait_for(&ap.eof, 5000);
  CHECK(ap.eof);
  bufferevent_free(ap.bev);
  rig_down(&r);
}

/* bufferevent <-> bufferevent, with bytes already waiting in one input. */
static void test_bev_bev(void) {
  int p[2], q[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, p) < 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, q) < 0)
    abort();
  for (int i = 0; i < 2; i++) {
    evutil_make_socket_nonblocking(p[i]);
    evutil_make_socket_nonblocking(q[i]);
  }
  if (write(p[0], "early", 5) != 5) abort();
  shutdown(p[0], SHUT_WR);
  struct bufferevent *a = bufferevent_socket_new(base, p[1], BEV_OPT_CLOSE_ON_FREE);
  struct bufferevent *b = bufferevent_socket_new(base, q[1], BEV_OPT_CLOSE_ON_FREE);
  bufferevent_enable(a, EV_READ);
  event_base_loop(base, EVLOOP_NONBLOCK); /* "early" lands in a's input */
  struct app ap = {0};
  struct splice_end ea = {.bev = a}, eb = {.bev = b};
  CHECK(splice_new(ea, eb, client_done, &ap) != NULL);
  char buf[16] = {0};
  for (int i = 0; i < 1000 && !ap.splice_done; i++) event_base_loop(base, EVLOOP_NONBLOCK);
  ssize_t n = read(q[0], buf, sizeof buf);
  CHECK_EQ_INT(n, 5);
  CHECK(memcmp(buf, "early", 5) == 0);
  CHECK_EQ_INT(read(q[0], buf, sizeof buf), 0); /* b's write side was shut */
  if (write(q[0], "back", 4) != 4) abort();
  shutdown(q[0], SHUT_WR);
  wait_for(&ap.splice_done, 2000);
  CHECK_EQ_STR(ap.splice_err, "");
  CHECK_EQ_INT(read(p[0], buf, sizeof buf), 4);
  CHECK_EQ_INT(ap.a_to_b, 5);
  CHECK_EQ_INT(ap.b_to_a, 4);
  close(p[0]);
  close(q[0]);
}

/* Bulk output to a plain socket goes out in the loop turn that read it, with
 * one send and without arming EV_WRITE (the end-of-turn flush); then, with a
 * peer that stops reading, what the splice holds stays bounded and every byte
 * arrives in order once it reads again. */
static void test_bulk_flush_and_stalled_peer(void) {
  int p[2], q[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, p) < 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, q) < 0)
    abort();
  for (int i = 0; i < 2; i++) {
    evutil_make_socket_nonblocking(p[i]);
    evutil_make_socket_nonblocking(q[i]);
  }
  struct bufferevent *a = bufferevent_socket_new(base, p[1], BEV_OPT_CLOSE_ON_FREE);
  struct bufferevent *b = bufferevent_socket_new(base, q[1], BEV_OPT_CLOSE_ON_FREE);
  struct app ap = {0};
  struct splice_end ea = {.bev = a}, eb = {.bev = b};
  CHECK(splice_new(ea, eb, client_done, &ap) != NULL);
  static uint8_t buf[65536];
  uint64_t wrote = 0, got = 0;
  int bad = 0;
  /* a first small exchange: libevent writes it (a new bufferevent has EV_WRITE
   * on), and the splice turns EV_WRITE off once the output is empty */
  for (size_t i = 0; i < sizeof buf; i++) buf[i] = pat(wrote + i);
  CHECK_EQ_INT(write(p[0], buf, 100), 100);
  wrote = 100;
  for (int i = 0; i < 100 && got < wrote; i++) {
    event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    ssize_t r = recv(q[0], buf, sizeof buf, MSG_DONTWAIT);
    if (r > 0) got += (uint64_t)r;
  }
  CHECK_EQ_INT(got, 100);
  for (size_t i = 0; i < sizeof buf; i++) buf[i] = pat(wrote + i);
  CHECK_EQ_INT(write(p[0], buf, 32768), 32768);
  wrote += 32768;
  event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK); /* one turn: read, relay, flush */
  ssize_t n = recv(q[0], buf, sizeof buf, MSG_DONTWAIT);
  CHECK_EQ_INT(n, 32768); /* already sent in that turn */
  CHECK(!(bufferevent_get_enabled(b) & EV_WRITE));
  for (ssize_t i = 0; i < n; i++) bad |= buf[i] != pat(got + (uint64_t)i);
  got += n > 0 ? (uint64_t)n : 0;

  /* the peer stops reading: 16 MiB offered */
  size_t held_max = 0;
  for (int turn = 0; turn < 4000 && wrote < (16u << 20); turn++) {
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = pat(wrote + i);
    ssize_t w = write(p[0], buf, sizeof buf);
    if (w > 0) wrote += (uint64_t)w;
    event_base_loop(base, EVLOOP_NONBLOCK);
    size_t held = evbuffer_get_length(bufferevent_get_input(a)) +
                  evbuffer_get_length(bufferevent_get_output(b));
    if (held > held_max) held_max = held;
  }
  fprintf(stderr, "stalled peer: the splice held at most %zu bytes of %llu written\n", held_max,
          (unsigned long long)wrote);
  CHECK(held_max <= 2 * SPLICE_HIGH_WATER + 65536);
  shutdown(p[0], SHUT_WR);
  double end = now_s() + 20;
  while (now_s() < end && !ap.splice_done) { /* reads again: all of it, in order */
    event_base_loop(base, EVLOOP_NONBLOCK);
    while ((n = recv(q[0], buf, sizeof buf, MSG_DONTWAIT)) > 0) {
      for (ssize_t i = 0; i < n; i++) bad |= buf[i] != pat(got + (uint64_t)i);
      got += (uint64_t)n;
    }
    if (n == 0) shutdown(q[0], SHUT_WR); /* EOF came through: finish the other way */
  }
  CHECK(ap.splice_done);
  CHECK_EQ_INT(got, wrote);
  CHECK(!bad);
  close(p[0]);
  close(q[0]);
}

int main(void) {
  log_init("test_splice", LOGL_WARN);
  signal(SIGPIPE, SIG_IGN); /* as the programs do: a closed peer is an error, not a signal */
  base = event_base_new();
  test_echo_large();
  test_half_close_reply_after_eof();
  test_reset_ends_splice();
  test_bev_bev();
  test_bulk_flush_and_stalled_peer();
  event_base_free(base);
  return check_done();
}
