/* http_head.c: storage, lookup, checks and re-serialization of one HTTP/1.x
 * head (see http_head.h).
 *
 * All bytes live in one growable buffer (url, then each field's name and value
 * back to back) with an array of offsets beside it; both are kept across
 * http_head_reset(), so a keep-alive connection stops allocating after its
 * first few requests. Offsets rather than pointers, because the buffer moves
 * when it grows. */
#include "http_head.h"

#include <event2/buffer.h>
#include <llhttp.h>
#include <stdlib.h>
#include <string.h>

void http_head_init(struct http_head *h, size_t limit, size_t max_fields) {
  memset(h, 0, sizeof(*h));
  h->limit = limit;
  h->max_fields = max_fields;
  h->last_was_value = 1;
}

void http_head_reset(struct http_head *h) {
  h->len = 0;
  h->nfields = 0;
  h->url_off = h->url_len = 0;
  h->method = 0;
  h->status = 0;
  h->http_major = h->http_minor = 0;
  h->last_was_value = 1;
  h->raw_lf = 0;
  h->obs_fold = 0;
}

void http_head_free(struct http_head *h) {
  free(h->buf);
  free(h->fields);
  h->buf = NULL;
  h->fields = NULL;
  h->cap = h->fields_cap = 0;
  http_head_reset(h);
}

/* Append len bytes to the buffer, growing it (doubling, capped at the limit). */
static int append(struct http_head *h, const char *at, size_t len) {
  if (len > h->limit - h->len) return -1;
  if (h->len + len > h->cap) {
    size_t cap = h->cap ? h->cap : 1024;
    while (cap < h->len + len) cap *= 2;
    if (cap > h->limit) cap = h->limit;
    char *b = realloc(h->buf, cap);
    if (!b) return -1;
    h->buf = b;
    h->cap = cap;
  }
  if (len) memcpy(h->buf + h->len, at, len);
  h->len += len;
  return 0;
}

int http_head_add_url(struct http_head *h, const char *at, size_t len) {
  if (h->nfields) return -1; /* the url precedes every field */
  if (h->url_len == 0) h->url_off = (uint32_t)h->len;
  if (append(h, at, len) < 0) return -1;
  h->url_len += (uint32_t)len;
  return 0;
}

int http_head_add_name(struct http_head *h, const char *at, size_t len) {
  if (h->last_was_value) { /* a new field starts */
    if (h->nfields == h->max_fields) return -1;
    if (h->nfields == h->fields_cap) {
      size_t cap = h->fields_cap ? h->fields_cap * 2 : 32;
      if (cap > h->max_fields) cap = h->max_fields;
      struct http_field *f = realloc(h->fields, cap * sizeof(*f));
      if (!f) return -1;
      h->fields = f;
      h->fields_cap = cap;
    }
    struct http_field *f = &h->fields[h->nfields++];
    f->name_off = f->value_off = (uint32_t)h->len;
    f->name_len = f->value_len = 0;
    h->last_was_value = 0;
  }
  struct http_field *f = &h->fields[h->nfields - 1];
  if (append(h, at, len) < 0) return -1;
  f->name_len += (uint32_t)len;
  f->value_off = (uint32_t)h->len;
  return 0;
}

int http_head_add_value(struct http_head *h, const char *at, size_t len) {
  if (h->nfields == 0) return -1; /* a value without a name */
  struct http_field *f = &h->fields[h->nfields - 1];
  if (append(h, at, len) < 0) return -1;
  f->value_len += (uint32_t)len;
  h->last_was_value = 1;
  return 0;
}

void http_head_end_field(struct http_head *h) { h->last_was_value = 1; }

/* ASCII case-insensitive equality of a[0..n) and b[0..n). */
static int ieq(const char *a, const char *b, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];
    if (x >= 'A' && x <= 'Z') x += 32;
    if (y >= 'A' && y <= 'Z') y += 32;
    if (x != y) return 0;
  }
  return 1;
}

int http_head_field_is(const struct http_head *h, size_t i, const char *name, size_t name_len) {
  const struct http_field *f = &h->fields[i];
  return f->name_len == name_len && ieq(h->buf + f->name_off, name, name_len);
}

const char *http_head_get(const struct http_head *h, const char *name, size_t n, size_t *len) {
  size_t nl = strlen(name);
  for (size_t i = 0; i < h->nfields; i++) {
    if (!http_head_field_is(h, i, name, nl)) continue;
    if (n-- == 0) {
      if (len) *len = h->fields[i].value_len;
      return h->buf + h->fields[i].value_off;
    }
  }
  return NULL;
}

size_t http_head_count(const struct http_head *h, const char *name) {
  size_t nl = strlen(name), c = 0;
  for (size_t i = 0; i < h->nfields; i++) c += (size_t)http_head_field_is(h, i, name, nl);
  return c;
}

int http_head_write_request(const struct http_head *h, const char *extra, struct evbuffer *out) {
  return http_head_write_request_skip(h, NULL, extra, out);
}

int http_head_write_request_skip(const struct http_head *h, const char *skip, const char *extra,
                                 struct evbuffer *out) {
  const char *drop[2] = {skip, NULL};
  return http_head_write_request_drop(h, skip ? drop : NULL, extra, out);
}

/* Is field i named one of drop[] (NULL-terminated; drop itself may be NULL)? */
static int dropped(const struct http_head *h, size_t i, const char *const *drop) {
  for (; drop && *drop; drop++)
    if (http_head_field_is(h, i, *drop, strlen(*drop))) return 1;
  return 0;
}

/* Serialize into one contiguous reservation: the size is known in advance, so
 * this is one evbuffer operation and no intermediate copy. */
int http_head_write_request_drop(const struct http_head *h, const char *const *drop,
                                 const char *extra, struct evbuffer *out) {
  const char *method = llhttp_method_name((llhttp_method_t)h->method);
  size_t mlen = strlen(method), elen = extra ? strlen(extra) : 0;
  if (h->http_major > 9 || h->http_minor > 9 || h->url_len == 0) return -1;
  size_t total = mlen + 1 + h->url_len + sizeof(" HTTP/x.y\r\n") - 1 + elen + 2;
  for (size_t i = 0; i < h->nfields; i++) {
    if (dropped(h, i, drop)) continue;
    total += h->fields[i].name_len + 2 + h->fields[i].value_len + 2;
  }
  struct evbuffer_iovec v;
  if (evbuffer_reserve_space(out, (ev_ssize_t)total, &v, 1) != 1) return -1;
  char *p = v.iov_base;
  memcpy(p, method, mlen);
  p += mlen;
  *p++ = ' ';
  memcpy(p, h->buf + h->url_off, h->url_len);
  p += h->url_len;
  memcpy(p, " HTTP/", 6);
  p += 6;
  *p++ = (char)('0' + h->http_major);
  *p++ = '.';
  *p++ = (char)('0' + h->http_minor);
  *p++ = '\r';
  *p++ = '\n';
  for (size_t i = 0; i < h->nfields; i++) {
    const struct http_field *f = &h->fields[i];
    if (dropped(h, i, drop)) continue;
    memcpy(p, h->buf + f->name_off, f->name_len);
    p += f->name_len;
    *p++ = ':';
    *p++ = ' ';
    memcpy(p, h->buf + f->value_off, f->value_len);
    p += f->value_len;
    *p++ = '\r';
    *p++ = '\n';
  }
  if (elen) memcpy(p, extra, elen);
  p += elen;
  *p++ = '\r';
  *p++ = '\n';
  v.iov_len = total;
  return evbuffer_commit_space(out, &v, 1);
}

/* Strip leading and trailing spaces and tabs from s[0..*len). */
static const char *trim(const char *s, size_t *len) {
  size_t n = *len;
  while (n && (*s == ' ' || *s == '\t')) s++, n--;
  while (n && (s[n - 1] == ' ' || s[n - 1] == '\t')) n--;
  *len = n;
  return s;
}

/* RFC 9110 token: one or more tchar. */
static int is_token(const char *s, size_t len) {
  static const char extra[] = "!#$%&'*+-.^_`|~";
  if (len == 0) return 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          (c && strchr(extra, c))))
      return 0;
  }
  return 1;
}

/* Walk one Transfer-Encoding line's codings, continuing *chunked (1 when the
 * last coding so far is "chunked") across lines. Every coding must be a bare
 * token and "chunked" may only come last: anything else is refused, since a
 * parser that reads such a list differently (or an obs-fold llhttp joined
 * into it) is how bodies get smuggled. Empty list elements are skipped
 * (RFC 9110 5.6.1) before chunked, refused after it. Returns 0 or -1. (The
 * loop is the shape of route.c's baggage_members(); kept apart because the
 * rules for empty elements here are the smuggling defence.) */
static int te_scan(const char *v, size_t len, int *chunked) {
  size_t i = 0;
  while (i <= len) { /* <=: "a," has an empty element after the comma */
    size_t j = i;
    while (j < len && v[j] != ',') j++;
    size_t n = j - i;
    const char *c = trim(v + i, &n);
    i = j + 1;
    /* An empty element after chunked is refused too: llhttp reads
     * "chunked ,,," (an obs-fold it joined) as not ending in chunked once
     * the agent writes the line out again (found by the fuzzer). */
    if (n == 0 && !*chunked) continue;
    if (*chunked || !is_token(c, n)) return -1;
    *chunked = n == 7 && ieq(c, "chunked", 7);
  }
  return 0;
}

void http_head_scan_raw(struct http_head *h, const char *data, size_t len) {
  for (size_t i = 0; i < len && !h->obs_fold; i++) {
    if (h->raw_lf && (data[i] == ' ' || data[i] == '\t')) h->obs_fold = 1;
    h->raw_lf = data[i] == '\n';
  }
}

int http_head_check_request(const struct http_head *h, const char **err) {
  if (h->http_major != 1 || h->http_minor > 1) {
    *err = "HTTP version is not 1.0 or 1.1";
    return -1;
  }
  if (h->obs_fold) {
    *err = "obsolete line folding (a header line starts with a space or tab)";
    return -1;
  }
  const char *cl = NULL;
  size_t cl_len = 0, ncl = 0, nte = 0, nhost = 0;
  int te_chunked = 0;
  for (size_t i = 0; i < h->nfields; i++) {
    const struct http_field *f = &h->fields[i];
    const char *v = h->buf + f->value_off;
    for (size_t k = 0; k < f->value_len; k++) {
      unsigned char c = (unsigned char)v[k];
      if (c == '\r' || c == '\n' || c == '\0') {
        *err = "header value with CR, LF or NUL (obsolete line folding?)";
        return -1;
      }
    }
    if (!is_token(h->buf + f->name_off, f->name_len)) {
      *err = "header name is not a token (space before the colon?)";
      return -1;
    }
    if (http_head_field_is(h, i, "content-length", 14)) {
      size_t n = f->value_len;
      const char *t = trim(v, &n);
      if (n == 0) {
        *err = "empty Content-Length";
        return -1;
      }
      for (size_t k = 0; k < n; k++)
        if (t[k] < '0' || t[k] > '9') {
          *err = "Content-Length is not a number";
          return -1;
        }
      if (ncl++ && (n != cl_len || memcmp(t, cl, n) != 0)) {
        *err = "several Content-Length headers that differ";
        return -1;
      }
      cl = t;
      cl_len = n;
    } else if (http_head_field_is(h, i, "transfer-encoding", 17)) {
      nte++;
      if (te_scan(v, f->value_len, &te_chunked) < 0) {
        *err = "Transfer-Encoding with a coding after chunked, or one that is not a token";
        return -1;
      }
    } else if (http_head_field_is(h, i, "host", 4)) {
      nhost++;
    }
  }
  if (nte && ncl) {
    *err = "both Transfer-Encoding and Content-Length";
    return -1;
  }
  /* CONNECT has no content (RFC 9110 9.3.6). A proxy that treats it as
   * bodiless while the server reads Content-Length bytes after it (as a body
   * of its error answer) parses a different request stream than the server:
   * the bytes become a smuggled request on one side only. */
  if (h->method == HTTP_CONNECT && (nte || ncl)) {
    *err = "CONNECT with Content-Length or Transfer-Encoding";
    return -1;
  }
  if (nte && !te_chunked) {
    *err = "Transfer-Encoding of a request does not end in chunked";
    return -1;
  }
  if (nte && h->http_major == 1 && h->http_minor == 0) {
    *err = "Transfer-Encoding in an HTTP/1.0 request";
    return -1;
  }
  if (nhost > 1) {
    *err = "more than one Host header";
    return -1;
  }
  return 0;
}

/* llhttp callbacks of http_head_parse_request: the parser's data is the head. */
static int on_url(llhttp_t *p, const char *at, size_t len) {
  return http_head_add_url(p->data, at, len) < 0 ? HPE_USER : 0;
}
static int on_field(llhttp_t *p, const char *at, size_t len) {
  return http_head_add_name(p->data, at, len) < 0 ? HPE_USER : 0;
}
static int on_value(llhttp_t *p, const char *at, size_t len) {
  return http_head_add_value(p->data, at, len) < 0 ? HPE_USER : 0;
}
static int on_value_complete(llhttp_t *p) {
  http_head_end_field(p->data);
  return 0;
}
static int on_headers_complete(llhttp_t *p) {
  struct http_head *h = p->data;
  h->method = p->method;
  h->http_major = p->http_major;
  h->http_minor = p->http_minor;
  return HPE_PAUSED; /* stop right after the head */
}

long http_head_parse_request(const char *buf, size_t len, struct http_head *h, const char **err) {
  llhttp_settings_t s;
  llhttp_t p;
  llhttp_settings_init(&s);
  s.on_url = on_url;
  s.on_header_field = on_field;
  s.on_header_value = on_value;
  s.on_header_value_complete = on_value_complete;
  s.on_headers_complete = on_headers_complete;
  llhttp_init(&p, HTTP_REQUEST, &s);
  p.data = h;
  http_head_reset(h);
  llhttp_errno_t e = llhttp_execute(&p, buf, len);
  if (e == HPE_OK) return 0; /* consumed everything, head not complete yet */
  if (e != HPE_PAUSED) {
    *err = e == HPE_USER ? "request head too large" : llhttp_get_error_reason(&p);
    if (!*err) *err = llhttp_errno_name(e);
    return -1;
  }
  long used = (long)(llhttp_get_error_pos(&p) - buf);
  http_head_scan_raw(h, buf, (size_t)used);
  if (http_head_check_request(h, err) < 0) return -1;
  return used;
}
