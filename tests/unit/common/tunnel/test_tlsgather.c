/* test_tlsgather.c: many TLS records per send() (common/tlsgather.c).
 *
 * A real TLS 1.3 session between two SSL objects over a socketpair; the
 * client's write side is a gather. Checks: every byte arrives in order
 * whatever the source's chain shapes (small control-like chains, records of
 * exactly 16 KiB, chains far above a record); fewer sends than records;
 * partial sends on a tiny socket buffer; and a peer that stops reading:
 * the flush says blocked, the gather never holds more than its capacity and
 * the source is consumed only as far as the socket and the gather take. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <openssl/ssl.h>

#include "check.h"
#include "tls.h"
#include "tlsgather.h"

static SSL_CTX *sctx, *cctx;

struct pair {
  int fd[2];
  SSL *c, *s;
};

static void nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

static int open_pair(struct pair *p, int sndbuf) {
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, p->fd) < 0) return -1;
  if (sndbuf) {
    setsockopt(p->fd[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    setsockopt(p->fd[1], SOL_SOCKET, SO_RCVBUF, &sndbuf, sizeof sndbuf);
  }
  nonblock(p->fd[0]);
  nonblock(p->fd[1]);
  p->c = tls_client_ssl_new(cctx);
  p->s = SSL_new(sctx);
  SSL_set_fd(p->c, p->fd[0]);
  SSL_set_fd(p->s, p->fd[1]);
  SSL_set_connect_state(p->c);
  SSL_set_accept_state(p->s);
  for (int i = 0; i < 1000; i++) {
    int rc = SSL_do_handshake(p->c), rs = SSL_do_handshake(p->s);
    if (rc == 1 && rs == 1) return 0;
  }
  return -1;
}

static void close_pair(struct pair *p) {
  SSL_free(p->c);
  SSL_free(p->s);
  close(p->fd[0]);
  close(p->fd[1]);
}

static uint8_t pat(uint64_t i) { return (uint8_t)(i * 13 + (i >> 11)); }

struct sink {
  uint64_t got;
  int bad;
};

/* Read what the server side has now. */
static void drain_server(struct pair *p, struct sink *k, size_t max) {
  static uint8_t buf[65536];
  size_t n = 0;
  while (n < max) {
    int r = SSL_read(p->s, buf, (int)(max - n < sizeof buf ? max - n : sizeof buf));
    if (r <= 0) break;
    for (int i = 0; i < r; i++) k->bad |= buf[i] != pat(k->got + (uint64_t)i);
    k->got += (uint64_t)r;
    n += (size_t)r;
  }
}

/* Append len pattern bytes starting at *off to src as one chain. */
static void add_chain(struct evbuffer *src, uint64_t *off, size_t len) {
  uint8_t *b = malloc(len);
  for (size_t i = 0; i < len; i++) b[i] = pat(*off + i);
  struct evbuffer *one = evbuffer_new();
  evbuffer_add(one, b, len);
  evbuffer_add_buffer(src, one); /* moved as its own chain(s) */
  evbuffer_free(one);
  free(b);
  *off += len;
}

/* 1. Mixed chain shapes, about 3 MiB; the reader keeps up. */
static void test_shapes(void) {
  struct pair p;
  CHECK_EQ_INT(open_pair(&p, 0), 0);
  struct tls_gather *g = tls_gather_install(p.c, p.fd[0], TLS_GATHER_CAP);
  CHECK(g != NULL);
  struct evbuffer *src = evbuffer_new();
  uint64_t off = 0;
  static const size_t shapes[] = {13, 13, 16384, 9, 16384, 16384, 200000, 1, 4095, 4096, 70000};
  for (int round = 0; round < 10; round++)
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) add_chain(src, &off, shapes[i]);
  struct sink k = {0};
  int blocked, sends_max = 0;
  char err[256];
  for (int i = 0; i < 10000 && (evbuffer_get_length(src) || tls_gather_pending(g)); i++) {
    CHECK_EQ_INT(tls_gather_flush(g, p.c, src, &blocked, err, sizeof err), 0);
    CHECK(tls_gather_pending(g) <= TLS_GATHER_CAP);
    drain_server(&p, &k, SIZE_MAX);
    sends_max = i + 1;
  }
  drain_server(&p, &k, SIZE_MAX);
  CHECK_EQ_INT(evbuffer_get_length(src), 0);
  CHECK_EQ_INT(k.got, off);
  CHECK(!k.bad);
  fprintf(stderr, "shapes: %llu bytes in %d flushes\n", (unsigned long long)off, sends_max);
  evbuffer_free(src);
  close_pair(&p);
}

/* 2. A socket buffer of a few KiB: sends are partial, the rest waits in the
 * gather and goes out in order as the reader makes room. */
static void test_partial(void) {
  struct pair p;
  CHECK_EQ_INT(open_pair(&p, 4096), 0);
  struct tls_gather *g = tls_gather_install(p.c, p.fd[0], TLS_GATHER_CAP);
  struct evbuffer *src = evbuffer_new();
  uint64_t off = 0;
  for (int i = 0; i < 64; i++) add_chain(src, &off, 16384);
  struct sink k = {0};
  int blocked, partial = 0;
  char err[256];
  for (int i = 0; i < 100000 && (evbuffer_get_length(src) || tls_gather_pending(g)); i++) {
    CHECK_EQ_INT(tls_gather_flush(g, p.c, src, &blocked, err, sizeof err), 0);
    if (blocked && tls_gather_pending(g) > 0) partial++;
    CHECK(tls_gather_pending(g) <= TLS_GATHER_CAP);
    drain_server(&p, &k, 3000); /* a slow reader */
  }
  drain_server(&p, &k, SIZE_MAX);
  CHECK(partial > 10);
  CHECK_EQ_INT(k.got, off);
  CHECK(!k.bad);
  evbuffer_free(src);
  close_pair(&p);
}

/* 3. A peer that stops reading: memory stays bounded, nothing is lost, and
 * everything arrives once it reads again. */
static void test_stalled_peer(void) {
  struct pair p;
  CHECK_EQ_INT(open_pair(&p, 65536), 0);
  struct tls_gather *g = tls_gather_install(p.c, p.fd[0], TLS_GATHER_CAP);
  struct evbuffer *src = evbuffer_new();
  uint64_t off = 0;
  int blocked = 0;
  char err[256];
  size_t taken_max = 0;
  for (int i = 0; i < 200; i++) { /* 12.5 MiB offered */
    add_chain(src, &off, 65536);
    CHECK_EQ_INT(tls_gather_flush(g, p.c, src, &blocked, err, sizeof err), 0);
    CHECK(tls_gather_pending(g) <= TLS_GATHER_CAP);
    size_t taken = (size_t)off - evbuffer_get_length(src);
    if (taken > taken_max) taken_max = taken;
  }
  CHECK(blocked);
  /* What left the source: the socket buffers (a few hundred KiB at most for
   * a unix socketpair with these sizes), the gather, a record inside OpenSSL. */
  fprintf(stderr, "stalled peer: %zu of %llu bytes taken from the source\n", taken_max,
          (unsigned long long)off);
  CHECK(taken_max < 2u * 1024u * 1024u);
  struct sink k = {0};
  for (int i = 0; i < 100000 && (evbuffer_get_length(src) || tls_gather_pending(g)); i++) {
    drain_server(&p, &k, SIZE_MAX);
    CHECK_EQ_INT(tls_gather_flush(g, p.c, src, &blocked, err, sizeof err), 0);
  }
  drain_server(&p, &k, SIZE_MAX);
  CHECK_EQ_INT(k.got, off);
  CHECK(!k.bad);
  evbuffer_free(src);
  close_pair(&p);
}

/* 4. The peer is gone: the flush reports the socket error. */
static void test_peer_gone(void) {
  struct pair p;
  CHECK_EQ_INT(open_pair(&p, 0), 0);
  struct tls_gather *g = tls_gather_install(p.c, p.fd[0], TLS_GATHER_CAP);
  struct evbuffer *src = evbuffer_new();
  uint64_t off = 0;
  add_chain(src, &off, 100000);
  close(p.fd[1]);
  p.fd[1] = open("/dev/null", O_RDONLY); /* keep close_pair simple */
  int blocked, rc = 0;
  char err[256] = "";
  for (int i = 0; i < 10 && rc == 0; i++) rc = tls_gather_flush(g, p.c, src, &blocked, err, sizeof err);
  CHECK_EQ_INT(rc, -1);
  CHECK(strstr(err, "Broken pipe") != NULL || strstr(err, "reset") != NULL);
  fprintf(stderr, "peer gone: %s\n", err);
  evbuffer_free(src);
  close_pair(&p);
}

int main(void) {
  char err[256];
  struct tls_pem ca = {0}, agent = {0}, alice = {0};
  CHECK_EQ_INT(tls_ca_create("test", TLS_KEY_P256, &ca, err, sizeof err), 0);
  CHECK_EQ_INT(tls_issue(&ca, TLS_AGENT_NAME, 1, TLS_KEY_P256, 1, &agent, err, sizeof err), 0);
  CHECK_EQ_INT(tls_issue(&ca, "alice", 0, TLS_KEY_P256, 1, &alice, err, sizeof err), 0);
  sctx = tls_server_ctx_from_pem(ca.cert, &agent, err, sizeof err);
  cctx = tls_client_ctx_from_pem(ca.cert, &alice, err, sizeof err);
  CHECK(sctx && cctx);
  if (!sctx || !cctx) return check_done();
  test_shapes();
  test_partial();
  test_stalled_peer();
  test_peer_gone();
  SSL_CTX_free(sctx);
  SSL_CTX_free(cctx);
  tls_pem_clear(&ca);
  tls_pem_clear(&agent);
  tls_pem_clear(&alice);
  return check_done();
}
