/* fuzz_request_head.c: libFuzzer driver for request-head parsing (llhttp into
 * an http_head, plus the smuggling checks), route extraction and injection.
 *
 * Besides "no crash, no sanitizer report", it checks properties:
 *  - feeding llhttp the same bytes in small pieces (as across reads) builds the
 *    same head as one complete parse;
 *  - a decided route key is a valid DNS label, and a subdomain key is held;
 *  - the forwarded head (route_inject + forwarded_lines, as the agent writes
 *    it with http_head_write_request_drop) parses again, completely, with one
 *    X-Forwarded-For and one Forwarded line, and routes to the same key: by the
 *    same rule when nothing was injected, by any rule after a subdomain
 *    injection.
 * A violated property aborts, so libFuzzer reports it with the input. */
#include <event2/buffer.h>
#include <llhttp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dnslabel.h"
#include "forwarded.h"
#include "http_head.h"
#include "route.h"
#include "route_table.h"

#define HEAD_LIMIT 16384
#define MAX_FIELDS 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what) {
  fprintf(stderr, "property violated: %s\n", what);
  abort();
}

static int cb_url(llhttp_t *p, const char *at, size_t n) {
  return http_head_add_url(p->data, at, n) ? HPE_USER : 0;
}
static int cb_name(llhttp_t *p, const char *at, size_t n) {
  return http_head_add_name(p->data, at, n) ? HPE_USER : 0;
}
static int cb_value(llhttp_t *p, const char *at, size_t n) {
  return http_head_add_value(p->data, at, n) ? HPE_USER : 0;
}
static int cb_value_done(llhttp_t *p) {
  http_head_end_field(p->data);
  return 0;
}
static int cb_headers_done(llhttp_t *p) {
  struct http_head *h = p->data;
  h->method = p->method;
  h->http_major = p->http_major;
  h->http_minor = p->http_minor;
  return HPE_PAUSED;
}

/* Parse buf[0..len) feeding llhttp pieces of 1..7 bytes; 1 if the head
 * completed. */
static int parse_pieces(const char *buf, size_t len, struct http_head *h) {
  llhttp_settings_t s;
  llhttp_t p;
  llhttp_settings_init(&s);
  s.on_url = cb_url;
  s.on_header_field = cb_name;
  s.on_header_value = cb_value;
  s.on_header_value_complete = cb_value_done;
  s.on_headers_complete = cb_headers_done;
  llhttp_init(&p, HTTP_REQUEST, &s);
  p.data = h;
  http_head_reset(h);
  size_t off = 0, step = 1;
  while (off < len) {
    size_t n = len - off < step ? len - off : step;
    llhttp_errno_t e = llhttp_execute(&p, buf + off, n);
    if (e == HPE_PAUSED) return 1;
    if (e != HPE_OK) return 0;
    off += n;
    step = step % 7 + 1;
  }
  return 0;
}

static int same_head(const struct http_head *a, const struct http_head *b) {
  if (a->nfields != b->nfields || a->url_len != b->url_len || a->method != b->method ||
      memcmp(a->buf + a->url_off, b->buf + b->url_off, a->url_len) != 0)
    return 0;
  for (size_t i = 0; i < a->nfields; i++) {
    const struct http_field *x = &a->fields[i], *y = &b->fields[i];
    if (x->name_len != y->name_len || x->value_len != y->value_len ||
        memcmp(a->buf + x->name_off, b->buf + y->name_off, x->name_len) != 0 ||
        memcmp(a->buf + x->value_off, b->buf + y->value_off, x->value_len) != 0)
      return 0;
  }
  return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static struct route_table *rt;
  static struct route_config cfg;
  static struct http_head h, h2, h3;
  static struct evbuffer *out;
  static char extra[ROUTE_INJECT_MAX + 2 * HEAD_LIMIT + 512];
  static int conn;
  if (!rt) {
    rt = route_table_new();
    const char *keys[] = {"alice", "bob", "10", "dev-1", "a"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) route_table_add(rt, keys[i], &conn);
    route_config_default(&cfg);
    http_head_init(&h, HEAD_LIMIT, MAX_FIELDS);
    http_head_init(&h2, 2 * HEAD_LIMIT + ROUTE_INJECT_MAX + 512, MAX_FIELDS + 5);
    http_head_init(&h3, HEAD_LIMIT, MAX_FIELDS);
    out = evbuffer_new();
  }
  const char *buf = (const char *)data, *err = NULL;
  long r = http_head_parse_request(buf, size, &h, &err);
  if (r < 0 && !err) fail("rejection without an error message");
  if (r <= 0) return 0;
  if ((size_t)r > size) fail("consumed more than the input");

  if (!parse_pieces(buf, (size_t)r, &h3) || !same_head(&h, &h3))
    fail("piecewise parse differs from the whole parse");

  struct route_match m, m2;
  route_decide(&cfg, &h, rt, &m);
  if (m.source != ROUTE_NONE && !dns_label_valid(m.key, strlen(m.key))) fail("invalid key");
  if (m.source == ROUTE_NONE && m.key[0]) fail("key without a route");
  if (m.source == ROUTE_SUBDOMAIN && !route_table_has(rt, m.key, strlen(m.key)))
    fail("subdomain key nobody holds");

  int rep = 0;
  int n = route_inject(&cfg, &h, &m, extra, sizeof(extra), &rep);
  if (n < 0 || (size_t)n != strlen(extra)) fail("route_inject length");
  if (m.source != ROUTE_SUBDOMAIN && (n != 0 || rep)) fail("injection without a subdomain route");

  /* a small buffer: -1, or a consistent shorter answer */
  char small[200];
  int rep_small = 0;
  size_t small_len = 1 + (size ? data[size - 1] : 0) % sizeof(small);
  int ns = route_inject(&cfg, &h, &m, small, small_len, &rep_small);
  if (ns >= 0 && ((size_t)ns >= small_len || (size_t)ns != strlen(small) ||
                  (rep_small && !strstr(small, "baggage: "))))
    fail("route_inject with a small buffer");

  size_t rlen = strlen(extra);
  if (forwarded_size(&h) > sizeof(extra) - rlen) fail("forwarded_size too large");
  if (forwarded_lines(&h, size & 1 ? "fd00::5" : "10.0.0.5", extra + rlen, sizeof(extra) - rlen) < 0)
    fail("forwarded_lines failed");
  const char *drop[] = {"x-forwarded-for", "forwarded", rep ? "baggage" : NULL, NULL};
  evbuffer_drain(out, evbuffer_get_length(out));
  if (http_head_write_request_drop(&h, drop, extra, out) != 0) fail("write_request failed");
  size_t wlen = evbuffer_get_length(out);
  const char *w = (const char *)evbuffer_pullup(out, -1);
  long r2 = http_head_parse_request(w, wlen, &h2, &err);
  if (r2 != (long)wlen) {
    fprintf(stderr, "reparse: %ld of %zu: %s\n%.*s", r2, wlen, r2 < 0 ? err : "", (int)wlen, w);
    fail("forwarded head does not parse");
  }
  if (http_head_count(&h2, "x-forwarded-for") != 1 || http_head_count(&h2, "forwarded") != 1)
    fail("forwarded head without exactly one X-Forwarded-For and Forwarded");
  route_decide(&cfg, &h2, rt, &m2);
  if (strcmp(m.key, m2.key) != 0) fail("forwarded head routes elsewhere");
  if (m.source != ROUTE_SUBDOMAIN && m.source != m2.source) fail("forwarded head changes rule");
  return 0;
}
