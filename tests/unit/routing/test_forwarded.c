/* test_forwarded.c: the X-Forwarded-For / Forwarded / X-Forwarded-Proto lines
 * (routing/forwarded.h) and the forwarded head they make, which must parse and
 * pass the smuggling checks again. */
#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>

#include "forwarded.h"
#include "http_head.h"
#include "unit/check.h"

static char out[4096];

static const char *lines(const char *req, const char *ip) {
  struct http_head h;
  const char *err = NULL;
  http_head_init(&h, 8192, 64);
  if (http_head_parse_request(req, strlen(req), &h, &err) <= 0) {
    http_head_free(&h);
    return "(parse failed)";
  }
  int n = forwarded_lines(&h, ip, out, sizeof out);
  CHECK(n < 0 || (size_t)n == strlen(out));
  CHECK(forwarded_size(&h) > strlen(out));
  http_head_free(&h);
  return n < 0 ? "(-1)" : out;
}

static void test_lines(void) {
  CHECK_EQ_STR(lines("GET / HTTP/1.1\r\nHost: a\r\n\r\n", "10.1.2.3"),
               "X-Forwarded-For: 10.1.2.3\r\nForwarded: for=10.1.2.3\r\n"
               "X-Forwarded-Proto: http\r\n");
  CHECK_EQ_STR(lines("GET / HTTP/1.1\r\nHost: a\r\n\r\n", "fd00::5"),
               "X-Forwarded-For: fd00::5\r\nForwarded: for=\"[fd00::5]\"\r\n"
               "X-Forwarded-Proto: http\r\n");
  /* appended to; several lines become one list; an existing proto is kept */
  CHECK_EQ_STR(lines("GET / HTTP/1.1\r\nx-forwarded-for: 1.1.1.1\r\nHost: a\r\n"
                     "X-Forwarded-For:  2.2.2.2, \r\nFORWARDED: for=1.1.1.1;proto=https\r\n"
                     "x-forwarded-proto: https\r\n\r\n",
                     "10.1.2.3"),
               "X-Forwarded-For: 1.1.1.1, 2.2.2.2, 10.1.2.3\r\n"
               "Forwarded: for=1.1.1.1;proto=https, for=10.1.2.3\r\n");
  /* empty values are skipped */
  CHECK_EQ_STR(lines("GET / HTTP/1.1\r\nX-Forwarded-For:\r\nHost: a\r\n\r\n", "10.1.2.3"),
               "X-Forwarded-For: 10.1.2.3\r\nForwarded: for=10.1.2.3\r\n"
               "X-Forwarded-Proto: http\r\n");
  /* only numeric addresses are written */
  CHECK_EQ_STR(lines("GET / HTTP/1.1\r\nHost: a\r\n\r\n", "x\r\nEvil: 1"), "(-1)");
  CHECK_EQ_STR(lines("GET / HTTP/1.1\r\nHost: a\r\n\r\n", ""), "(-1)");
}

static void test_small_buffer(void) {
  struct http_head h;
  const char *err;
  const char *req = "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n";
  http_head_init(&h, 8192, 64);
  CHECK(http_head_parse_request(req, strlen(req), &h, &err) > 0);
  size_t need = forwarded_size(&h);
  CHECK_EQ_INT(forwarded_lines(&h, "10.1.2.3", out, need - 1), -1);
  CHECK(forwarded_lines(&h, "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", out, need) > 0);
  http_head_free(&h);
}

/* The forwarded head (originals dropped, merged lines added) parses again,
 * passes the checks, and holds exactly one of each line. */
static void test_forwarded_head_reparses(void) {
  struct http_head h, h2;
  const char *err = NULL;
  const char *req = "POST /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\n"
                    "Content-Length: 3\r\nforwarded: for=1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n\r\n";
  http_head_init(&h, 8192, 64);
  http_head_init(&h2, 8192, 64);
  CHECK(http_head_parse_request(req, strlen(req), &h, &err) > 0);
  CHECK(forwarded_lines(&h, "::ffff:10.0.0.1", out, sizeof out) > 0);
  struct evbuffer *b = evbuffer_new();
  CHECK_EQ_INT(http_head_write_request_drop(&h, forwarded_replaced, out, b), 0);
  size_t n = evbuffer_get_length(b);
  const char *w = (const char *)evbuffer_pullup(b, -1);
  CHECK_EQ_INT(http_head_parse_request(w, n, &h2, &err), (long)n);
  CHECK_EQ_INT(http_head_count(&h2, "x-forwarded-for"), 1);
  CHECK_EQ_INT(http_head_count(&h2, "forwarded"), 1);
  CHECK_EQ_INT(http_head_count(&h2, "content-length"), 1);
  size_t len;
  const char *v = http_head_get(&h2, "x-forwarded-for", 0, &len);
  CHECK(v && len == strlen("1.1.1.1, 2.2.2.2, ::ffff:10.0.0.1") &&
        memcmp(v, "1.1.1.1, 2.2.2.2, ::ffff:10.0.0.1", len) == 0);
  evbuffer_free(b);
  http_head_free(&h);
  http_head_free(&h2);
}

int main(void) {
  test_lines();
  test_small_buffer();
  test_forwarded_head_reparses();
  return check_done();
}
