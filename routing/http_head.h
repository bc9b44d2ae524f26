/* http_head.h: one HTTP/1.x request or response head, as parsed by llhttp.
 *
 * The agent feeds llhttp's on_url / on_status / on_header_field /
 * on_header_value spans into an http_head as they arrive (a span may come in
 * several pieces across reads). The head keeps its own copy of the bytes, so
 * the read buffer can be released. It enforces a size limit (exceeding it is the
 * caller's 431), and re-serializes the head for forwarding, with headers added.
 *
 * Field names are kept as received; lookups are case-insensitive. */
#ifndef KB_HTTP_HEAD_H
#define KB_HTTP_HEAD_H

#include <stddef.h>
#include <stdint.h>

struct evbuffer;

struct http_field {
  uint32_t name_off, name_len;
  uint32_t value_off, value_len;
};

struct http_head {
  char *buf; /* url (or reason), then names and values, back to back */
  size_t len, cap, limit;
  struct http_field *fields;
  size_t nfields, fields_cap, max_fields;
  uint32_t url_off, url_len;     /* request target, or reason phrase for responses */
  int method;                    /* llhttp_method_t, requests */
  int status;                    /* responses */
  unsigned http_major, http_minor;
  int last_was_value;            /* parser state: next name starts a new field */
  int raw_lf;                    /* http_head_scan_raw: the last byte seen was LF */
  int obs_fold;                  /* a line of the head starts with SP or HT */
};

/* limit: max bytes of url+names+values; max_fields: max header lines. */
void http_head_init(struct http_head *h, size_t limit, size_t max_fields);
void http_head_reset(struct http_head *h); /* ready for the next message; keeps memory */
void http_head_free(struct http_head *h);

/* Append a piece of the url / reason, a field name, a field value. Return 0, or
 * -1 when the limit (bytes or fields) would be exceeded. */
int http_head_add_url(struct http_head *h, const char *at, size_t len);
int http_head_add_name(struct http_head *h, const char *at, size_t len);
int http_head_add_value(struct http_head *h, const char *at, size_t len);
/* Mark the current field complete (wire llhttp's on_header_value_complete here):
 * the next http_head_add_name() starts a new field even when the value was empty
 * and no http_head_add_value() call came for it. */
void http_head_end_field(struct http_head *h);
/* Note the raw bytes of the head data[0..len), in the order fed to llhttp
 * (several calls for a head that arrives in pieces; call it after the
 * llhttp_execute that reset the head). A line starting with a space or tab is
 * obsolete line folding: llhttp 8 joins it into the value before it, where a
 * parser behind us may read the lines apart, so http_head_check_request()
 * refuses the head. */
void http_head_scan_raw(struct http_head *h, const char *data, size_t len);

/* Case-insensitive lookup of the n-th field named name (n from 0). Returns the
 * value (not NUL-terminated) and its length in *len, or NULL. */
const char *http_head_get(const struct http_head *h, const char *name, size_t n, size_t *len);
size_t http_head_count(const struct http_head *h, const char *name);
/* Is field i (0 <= i < nfields) named name[0..name_len), case-insensitively? */
int http_head_field_is(const struct http_head *h, size_t i, const char *name, size_t name_len);

/* Serialize a request head: "METHOD target HTTP/x.y\r\n" + fields + extra lines
 * + "\r\n" appended to out. extra is NULL or a block of complete "Name: value\r\n"
 * lines. Returns 0 or -1. */
int http_head_write_request(const struct http_head *h, const char *extra, struct evbuffer *out);
/* The same, leaving out every field named skip (case-insensitive; NULL skips
 * nothing). For route_inject()'s replace_baggage: pass "baggage" and the extra
 * lines that carry the merged baggage header. */
int http_head_write_request_skip(const struct http_head *h, const char *skip, const char *extra,
                                 struct evbuffer *out);
/* The same, leaving out every field named like one of drop[] (a NULL-terminated
 * array of names, or NULL): the agent drops the baggage lines route_inject()
 * merged and the X-Forwarded-For / Forwarded lines forwarded_lines() merged. */
int http_head_write_request_drop(const struct http_head *h, const char *const *drop,
                                 const char *extra, struct evbuffer *out);

/* Request smuggling checks llhttp 8.1 does not make itself (call after the
 * headers are complete; http_head_parse_request() calls it). Rejects: an HTTP
 * version other than 1.0 and 1.1; a field name that is not a token (llhttp 8.1
 * accepts "Name : value", RFC 9112 says reject); several
 * Content-Length lines that differ, or one that is not a plain number;
 * Transfer-Encoding together with Content-Length; a Transfer-Encoding (all its
 * lines as one list) whose last coding is not "chunked", that has "chunked"
 * anywhere else, or a coding that is not a bare token; Transfer-Encoding in
 * HTTP/1.0; more than one Host; CONNECT with Content-Length or
 * Transfer-Encoding (its content is undefined: servers disagree on it);
 * a field value holding CR, LF or NUL (obsolete line folding). Returns 0, or -1
 * with *err naming the problem (the caller answers 400 and closes). */
int http_head_check_request(const struct http_head *h, const char **err);

/* Parse a complete request head from buf with llhttp (for tests and fuzzing;
 * the agent parses incrementally). Returns the number of bytes of the head
 * consumed (> 0), 0 if incomplete, -1 if malformed (err set). */
long http_head_parse_request(const char *buf, size_t len, struct http_head *h, const char **err);

#endif
