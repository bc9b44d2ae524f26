/* test_tunnel_tls.c: the tunnel over its real carrier, mutual TLS 1.3
 * (bufferevent_openssl over a socketpair), with certificates from common/tls.
 *
 * Checks that the frame layer is unaware of TLS (an 8 MB echo works), that the
 * server can bind the HELLO key to the certificate CN, and that a TLS failure
 * (client certificate from another CA) reaches on_close with OpenSSL's reason. */
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/ssl.h>

#include "check.h"
#include "log.h"
#include "tls.h"
#include "tunnel.h"

static struct event_base *base;

static double now_s(void) {
  struct timeval tv;
  evutil_gettimeofday(&tv, NULL);
  return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

static void wait_for(const int *flag, int ms) {
  double end = now_s() + ms / 1000.0;
  while (!*flag && now_s() < end) {
    struct timeval tv = {0, 2000};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
  }
}

struct side {
  struct tunnel *t;
  int welcomed, status, closed;
  char err[600];
};

/* The agent's rule: the HELLO key must be the certificate's CN. */
static int on_hello(struct tunnel *t, const struct frame_hello *h, char *msg, size_t len,
                    void *arg) {
  char cn[128];
  SSL *ssl = bufferevent_openssl_get_ssl(tunnel_carrier(t));
  if (!ssl || tls_peer_cn(ssl, cn, sizeof cn) < 0) {
    snprintf(msg, len, "no client certificate");
    return FRAME_WELCOME_KEY_MISMATCH;
  }
  if (strcmp(cn, h->key) != 0) {
    snprintf(msg, len, "key %s is not your certificate's (%s)", h->key, cn);
    return FRAME_WELCOME_KEY_MISMATCH;
  }
  return FRAME_WELCOME_OK;
}

static void on_welcome(struct tunnel *t, const struct frame_welcome *w, void *arg) {
  struct side *sd = arg;
  sd->welcomed = 1;
  sd->status = w->status;
}

static void echo_read(struct tunnel_stream *s, void *arg) {
  tunnel_stream_write_buffer(s, tunnel_stream_input(s));
}

static void echo_event(struct tunnel_stream *s, int what, uint32_t code, const char *err,
                       void *arg) {
  if (what & TUNNEL_STREAM_EOF) tunnel_stream_shutdown(s);
  if (what & (TUNNEL_STREAM_EOF | TUNNEL_STREAM_CLOSED)) tunnel_stream_free(s);
}

static void on_open(struct tunnel *t, struct tunnel_stream *s, const struct frame_open *o,
                    void *arg) {
  tunnel_stream_setcb(s, echo_read, echo_event, NULL);
}

static void on_close(struct tunnel *t, const char *err, void *arg) {
  struct side *sd = arg;
  sd->closed = 1;
  snprintf(sd->err, sizeof sd->err, "%s", err);
}

static const struct tunnel_cbs cbs = {on_hello, on_welcome, on_open, on_close};

struct client_stream {
  uint64_t got;
  int bad, eof;
};

static uint8_t pat(uint64_t i) { return (uint8_t)(i * 7 + (i >> 9)); }

static void cs_read(struct tunnel_stream *s, void *arg) {
  struct client_stream *c = arg;
  uint8_t buf[16384];
  int n;
  while ((n = evbuffer_remove(tunnel_stream_input(s), buf, sizeof buf)) > 0) {
    for (int i = 0; i < n; i++) c->bad |= buf[i] != pat(c->got + (uint64_t)i);
    c->got += (uint64_t)n;
  }
}

static void cs_event(struct tunnel_stream *s, int what, uint32_t code, const char *err,
                     void *arg) {
  struct client_stream *c = arg;
  if (what & (TUNNEL_STREAM_EOF | TUNNEL_STREAM_CLOSED)) c->eof = 1;
}

static void connect_tls_buf(SSL_CTX *sctx, SSL_CTX *cctx, const char *key, struct side *c,
                            struct side *s, int sockbuf) {
  int fd[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, fd) < 0) abort();
  for (int i = 0; sockbuf && i < 2; i++) { /* small: most sends are partial */
    setsockopt(fd[i], SOL_SOCKET, SO_SNDBUF, &sockbuf, sizeof sockbuf);
    setsockopt(fd[i], SOL_SOCKET, SO_RCVBUF, &sockbuf, sizeof sockbuf);
  }
  evutil_make_socket_nonblocking(fd[0]);
  evutil_make_socket_nonblocking(fd[1]);
  struct bufferevent *cb = bufferevent_openssl_socket_new(
      base, fd[0], tls_client_ssl_new(cctx), BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
  struct bufferevent *sb = bufferevent_openssl_socket_new(
      base, fd[1], SSL_new(sctx), BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
  struct frame_hello h = {.version = FRAME_PROTOCOL_VERSION, .window = 1};
  snprintf(h.key, sizeof h.key, "%s", key);
  c->t = tunnel_new(base, cb, TUNNEL_CLIENT, NULL, &h, &cbs, c);
  s->t = tunnel_new(base, sb, TUNNEL_SERVER, NULL, NULL, &cbs, s);
}

static void connect_tls(SSL_CTX *sctx, SSL_CTX *cctx, const char *key, struct side *c,
                        struct side *s) {
  connect_tls_buf(sctx, cctx, key, c, s, 0);
}

/* An echo of total bytes on one stream; checks every byte came back in order. */
static void echo_check(struct side *c, uint64_t total) {
  struct frame_open o = {.kind = FRAME_OPEN_OUTBOUND, .port = 1, .target_host = "echo"};
  struct tunnel_stream *st = tunnel_stream_open(c->t, &o);
  CHECK(st != NULL);
  if (!st) return;
  struct client_stream cs = {0};
  tunnel_stream_setcb(st, cs_read, cs_event, &cs);
  uint64_t sent = 0;
  static uint8_t buf[65536];
  double end = now_s() + 60;
  while (!cs.eof && now_s() < end) {
    while (sent < total && tunnel_stream_pending(st) < tunnel_stream_high(st)) {
      for (size_t i = 0; i < sizeof buf; i++) buf[i] = pat(sent + i);
      tunnel_stream_write(st, buf, sizeof buf);
      sent += sizeof buf;
      if (sent == total) tunnel_stream_shutdown(st);
    }
    event_base_loop(base, EVLOOP_ONCE);
  }
  CHECK(cs.eof);
  CHECK_EQ_INT(cs.got, total);
  CHECK(!cs.bad);
  tunnel_stream_free(st);
}

int main(void) {
  log_init("test_tunnel_tls", LOGL_ERROR);
  signal(SIGPIPE, SIG_IGN); /* as the programs do: a closed peer is an error, not a signal */
  base = event_base_new();
  char err[256];
  struct tls_pem ca = {0}, agent = {0}, alice = {0}, other_ca = {0}, mallory = {0};
  CHECK_EQ_INT(tls_ca_create("test", TLS_KEY_P256, &ca, err, sizeof err), 0);
  CHECK_EQ_INT(tls_issue(&ca, TLS_AGENT_NAME, 1, TLS_KEY_P256, 1, &agent, err, sizeof err), 0);
  CHECK_EQ_INT(tls_issue(&ca, "alice", 0, TLS_KEY_P256, 1, &alice, err, sizeof err), 0);
  CHECK_EQ_INT(tls_ca_create("other", TLS_KEY_P256, &other_ca, err, sizeof err), 0);
  CHECK_EQ_INT(tls_issue(&other_ca, "mallory", 0, TLS_KEY_P256, 1, &mallory, err, sizeof err), 0);
  SSL_CTX *sctx = tls_server_ctx_from_pem(ca.cert, &agent, err, sizeof err);
  SSL_CTX *cctx = tls_client_ctx_from_pem(ca.cert, &alice, err, sizeof err);
  SSL_CTX *mctx = tls_client_ctx_from_pem(ca.cert, &mallory, err, sizeof err);
  CHECK(sctx && cctx && mctx);
  if (!sctx || !cctx || !mctx) return check_done();

  /* 1. alice, with her own key: an 8 MB echo over TLS. */
  struct side c = {0}, s = {0};
  connect_tls(sctx, cctx, "alice", &c, &s);
  wait_for(&c.welcomed, 5000);
  CHECK_EQ_INT(c.status, FRAME_WELCOME_OK);
  struct frame_open o = {.kind = FRAME_OPEN_OUTBOUND, .port = 1, .target_host = "echo"};
  struct tunnel_stream *st = tunnel_stream_open(c.t, &o);
  CHECK(st != NULL);
  struct client_stream cs = {0};
  tunnel_stream_setcb(st, cs_read, cs_event, &cs);
  const uint64_t total = 8u << 20;
  uint64_t sent = 0;
  static uint8_t buf[65536];
  double end = now_s() + 30;
  while (!cs.eof && now_s() < end) {
    while (sent < total && tunnel_stream_pending(st) < tunnel_stream_high(st)) {
      for (size_t i = 0; i < sizeof buf; i++) buf[i] = pat(sent + i);
      tunnel_stream_write(st, buf, sizeof buf);
      sent += sizeof buf;
      if (sent == total) tunnel_stream_shutdown(st);
    }
    event_base_loop(base, EVLOOP_ONCE);
  }
  CHECK(cs.eof);
  CHECK_EQ_INT(cs.got, total);
  CHECK(!cs.bad);
  tunnel_stream_free(st);
  tunnel_free(c.t);
  tunnel_free(s.t);

  /* 2. alice asking for bob's key: refused with KEY_MISMATCH. */
  struct side c2 = {0}, s2 = {0};
  connect_tls(sctx, cctx, "bob", &c2, &s2);
  wait_for(&c2.closed, 5000);
  CHECK_EQ_INT(c2.status, FRAME_WELCOME_KEY_MISMATCH);
  CHECK(strstr(c2.err, "not your certificate's (alice)") != NULL);
  tunnel_free(c2.t);
  tunnel_free(s2.t);

  /* 3. a certificate from another CA: the server's on_close names the TLS error. */
  struct side c3 = {0}, s3 = {0};
  connect_tls(sctx, mctx, "mallory", &c3, &s3);
  wait_for(&s3.closed, 5000);
  wait_for(&c3.closed, 5000);
  CHECK(s3.closed);
  CHECK(strstr(s3.err, "TLS error") != NULL);
  CHECK(strstr(s3.err, "certificate") != NULL);
  CHECK(c3.closed);
  printf("server side of a foreign certificate: %s\nclient side: %s\n", s3.err, c3.err);
  tunnel_free(c3.t);
  tunnel_free(s3.t);

  /* 4. 4 KiB socket buffers both ways: the tunnel's direct TLS writes are
   * mostly partial sends; the 8 MB echo still comes back whole and in order. */
  struct side c4 = {0}, s4 = {0};
  connect_tls_buf(sctx, cctx, "alice", &c4, &s4, 4096);
  wait_for(&c4.welcomed, 5000);
  CHECK_EQ_INT(c4.status, FRAME_WELCOME_OK);
  echo_check(&c4, 8u << 20);
  CHECK(!c4.closed && !s4.closed);
  tunnel_free(c4.t);
  tunnel_free(s4.t);

  for (int i = 0; i < 5; i++) event_base_loop(base, EVLOOP_NONBLOCK);
  SSL_CTX_free(sctx);
  SSL_CTX_free(cctx);
  SSL_CTX_free(mctx);
  tls_pem_clear(&ca);
  tls_pem_clear(&agent);
  tls_pem_clear(&alice);
  tls_pem_clear(&other_ca);
  tls_pem_clear(&mallory);
  event_base_free(base);
  return check_done();
}
