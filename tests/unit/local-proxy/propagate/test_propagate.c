/* test_propagate.c: unit tests of the outbound route propagation filter.
 *
 * Every case is run whole and cut into pieces of 1..7 bytes (as reads bring
 * them), with and without end of input after the last piece: the output must
 * be the same, byte for byte, each time. */
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "check.h"
#include "propagate.h"

#define ROUTE "kubernetes-route-as: alice\r\nbaggage: kbridge-route=alice\r\n"

/* Run the filter over in[0..len) cut into pieces (step 0: whole), then with
 * end of input; returns the output (malloc'd, NUL-terminated), *outlen. */
static char *run(const char *in, size_t len, size_t step, struct propagate_stats *st,
                 size_t *outlen) {
  struct splice_filter f = propagate_filter("alice", "test", st);
  struct evbuffer *src = evbuffer_new(), *dst = evbuffer_new();
  const char *err = NULL;
  size_t off = 0, k = 0;
  while (off < len) {
    size_t n = step ? (k++ % step) + 1 : len;
    if (n > len - off) n = len - off;
    evbuffer_add(src, in + off, n);
    off += n;
    CHECK_EQ_INT(f.fn(f.ctx, src, dst, 0, &err), 0);
  }
  CHECK_EQ_INT(f.fn(f.ctx, src, dst, 1, &err), 0);
  CHECK_EQ_INT(evbuffer_get_length(src), 0); /* at the end, nothing is held back */
  *outlen = evbuffer_get_length(dst);
  char *out = malloc(*outlen + 1);
  evbuffer_remove(dst, out, *outlen);
  out[*outlen] = 0;
  f.free_fn(f.ctx);
  evbuffer_free(src);
  evbuffer_free(dst);
  return out;
}

/* in becomes want, whole and in pieces of every size 1..7. */
static void expect(const char *in, size_t inlen, const char *want, size_t wantlen) {
  for (size_t step = 0; step <= 7; step++) {
    size_t n;
    char *got = run(in, inlen, step, NULL, &n);
    int same = n == wantlen && memcmp(got, want, n) == 0;
    if (!same)
      fprintf(stderr, "step %zu:\n--- in\n%.*s\n--- want\n%.*s\n--- got\n%.*s\n", step, (int)inlen,
              in, (int)wantlen, want, (int)n, got);
    CHECK(same);
    free(got);
  }
}
#define EXPECT(in, want) expect(in, sizeof(in) - 1, want, sizeof(want) - 1)

static void test_requests(void) {
  /* a plain GET gets both lines before its blank line */
  EXPECT("GET /x HTTP/1.1\r\nHost: store\r\n\r\n",
         "GET /x HTTP/1.1\r\nHost: store\r\n" ROUTE "\r\n");
  /* keep-alive, pipelined: each request on its own; a Content-Length body and a
   * chunked body that look like heads are bodies, left alone */
  EXPECT("POST /a HTTP/1.1\r\nHost: s\r\nContent-Length: 20\r\n\r\nGET /no HTTP/1.1\r\n\r\n"
         "POST /b HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n"
         "14\r\nGET /no HTTP/1.1\r\n\r\n\r\n0\r\n\r\n"
         "GET /c HTTP/1.1\r\nHost: s\r\n\r\n",
         "POST /a HTTP/1.1\r\nHost: s\r\nContent-Length: 20\r\n" ROUTE "\r\nGET /no HTTP/1.1\r\n\r\n"
         "POST /b HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n" ROUTE "\r\n"
         "14\r\nGET /no HTTP/1.1\r\n\r\n\r\n0\r\n\r\n"
         "GET /c HTTP/1.1\r\nHost: s\r\n" ROUTE "\r\n");
  /* HTTP/1.0 and a head with no fields */
  EXPECT("GET / HTTP/1.0\r\n\r\n", "GET / HTTP/1.0\r\n" ROUTE "\r\n");
  /* a request that names a route itself, whichever key, is left alone */
  EXPECT("GET / HTTP/1.1\r\nKubernetes-Route-As: bob\r\n\r\n",
         "GET / HTTP/1.1\r\nKubernetes-Route-As: bob\r\n\r\n");
  EXPECT("GET / HTTP/1.1\r\nkubernetes-route-as: alice\r\n\r\n",
         "GET / HTTP/1.1\r\nkubernetes-route-as: alice\r\n\r\n");
  EXPECT("GET / HTTP/1.1\r\nbaggage: a=1,kbridge-route=bob\r\n\r\n",
         "GET / HTTP/1.1\r\nbaggage: a=1,kbridge-route=bob\r\n\r\n");
  /* an invalid value is still the app's header: no second one that disagrees */
  EXPECT("GET / HTTP/1.1\r\nkubernetes-route-as: Not_A_Key\r\n\r\n",
         "GET / HTTP/1.1\r\nkubernetes-route-as: Not_A_Key\r\n\r\n");
  /* other baggage members are kept, ours joins their line (the head is written
   * out again: fields in order, the baggage line last) */
  EXPECT("GET / HTTP/1.1\r\nbaggage: userId=7,tenant=x\r\nHost: s\r\nBaggage: b=2\r\n\r\n",
         "GET / HTTP/1.1\r\nHost: s\r\nkubernetes-route-as: alice\r\n"
         "baggage: userId=7,tenant=x,b=2,kbridge-route=alice\r\n\r\n");
}

static void test_passthrough(void) {
  /* WebSocket: the head gets the route, the frames after it pass unchanged,
   * also bytes that look like a request */
  EXPECT("GET /ws HTTP/1.1\r\nHost: s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
         "\x81\x05hello GET / HTTP/1.1\r\n\r\n",
         "GET /ws HTTP/1.1\r\nHost: s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" ROUTE
         "\r\n\x81\x05hello GET / HTTP/1.1\r\n\r\n");
  /* CONNECT: a tunnel after the head */
  EXPECT("CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\nGET / HTTP/1.1\r\n\r\n",
         "CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n" ROUTE "\r\nGET / HTTP/1.1\r\n\r\n");
  /* not HTTP/1.x: TLS, HTTP/2 prior knowledge, a database's binary greeting */
  static const char tls[] = "\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00GET / HTTP/1.1\r\n\r\n";
  expect(tls, sizeof tls - 1, tls, sizeof tls - 1);
  EXPECT("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04");
  static const char pg[] = "\0\0\0\x08\x04\xd2\x16\x2f";
  expect(pg, sizeof pg - 1, pg, sizeof pg - 1);
  /* the connection ends inside a head: what came is passed on as it was */
  EXPECT("GET / HTTP/1.1\r\nHost: s\r\n", "GET / HTTP/1.1\r\nHost: s\r\n");
  /* after a good request, garbage: the request got its route, the rest passes */
  EXPECT("GET / HTTP/1.1\r\n\r\n\x16\x03zz", "GET / HTTP/1.1\r\n" ROUTE "\r\n\x16\x03zz");
}

static void test_big_head_and_stats(void) {
  size_t big = PROPAGATE_HEAD_MAX + 100;
  char *in = malloc(big + 64);
  int n = snprintf(in, 64, "GET / HTTP/1.1\r\nX: ");
  memset(in + n, 'a', big);
  memcpy(in + n + big, "\r\n\r\n", 4);
  size_t inlen = (size_t)n + big + 4;
  struct propagate_stats st = {0};
  size_t outlen;
  char *out = run(in, inlen, 0, &st, &outlen);
  CHECK(outlen == inlen && memcmp(in, out, inlen) == 0); /* too big: unchanged, nothing lost */
  CHECK_EQ_INT(st.raw, 1);
  CHECK_EQ_INT(st.injected, 0);
  free(out);
  free(in);

  memset(&st, 0, sizeof st);
  static const char two[] = "GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nkubernetes-route-as: bob\r\n\r\n";
  out = run(two, sizeof two - 1, 3, &st, &outlen);
  CHECK_EQ_INT(st.requests, 2);
  CHECK_EQ_INT(st.injected, 1);
  CHECK_EQ_INT(st.own, 1);
  CHECK_EQ_INT(st.raw, 0);
  free(out);
}

/* Without end of input, a head cut short is held back (not passed on half
 * rewritten), and body bytes are passed on as they come. */
static void test_holds_only_heads(void) {
  struct splice_filter f = propagate_filter("alice", "test", NULL);
  struct evbuffer *src = evbuffer_new(), *dst = evbuffer_new();
  const char *err = NULL;
  static const char head[] = "POST / HTTP/1.1\r\nContent-Length: 10\r\n";
  evbuffer_add(src, head, strlen(head));
  CHECK_EQ_INT(f.fn(f.ctx, src, dst, 0, &err), 0);
  CHECK_EQ_INT(evbuffer_get_length(dst), 0);
  CHECK_EQ_INT(evbuffer_get_length(src), strlen(head));
  evbuffer_add(src, "\r\n12345", 7);
  CHECK_EQ_INT(f.fn(f.ctx, src, dst, 0, &err), 0);
  CHECK_EQ_INT(evbuffer_get_length(src), 0);
  CHECK_EQ_INT(evbuffer_get_length(dst), strlen(head) + 7 + strlen(ROUTE));
  f.free_fn(f.ctx);
  evbuffer_free(src);
  evbuffer_free(dst);
}

int main(void) {
  test_requests();
  test_passthrough();
  test_big_head_and_stats();
  test_holds_only_heads();
  return check_done();
}
