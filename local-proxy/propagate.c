/* propagate.c: route propagation on outbound requests (propagate.h).
 *
 * The filter keeps the bytes of an unfinished request head in the splice's
 * input (fed counts those llhttp has seen) and moves them out, with the route
 * lines added, once llhttp pauses after the head. Body bytes move as llhttp
 * consumes them; llhttp pauses again at the end of each message, so the next
 * head starts at the front of the input. */
#include "propagate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <llhttp.h>

#include "http_head.h"
#include "log.h"
#include "route.h"

#define MAX_FIELDS 256

enum mode { MODE_HEAD, MODE_BODY, MODE_RAW };

struct prop {
  llhttp_t parser;
  struct http_head head;
  struct route_config rc;
  enum mode mode;
  size_t fed;           /* MODE_HEAD: bytes at the front of the input llhttp has seen */
  int hdrs_done, msg_done;
  int told_other;       /* "the app names another route" logged for this connection */
  char lines[320];      /* the two lines added to a head */
  char key[64];
  char what[200];
  struct propagate_stats *st;
  struct propagate_stats none;
};

static int on_message_begin(llhttp_t *p) {
  struct prop *pp = p->data;
  http_head_reset(&pp->head);
  return 0;
}
static int on_url(llhttp_t *p, const char *at, size_t len) {
  struct prop *pp = p->data;
  return http_head_add_url(&pp->head, at, len) < 0 ? HPE_USER : 0;
}
static int on_field(llhttp_t *p, const char *at, size_t len) {
  struct prop *pp = p->data;
  return http_head_add_name(&pp->head, at, len) < 0 ? HPE_USER : 0;
}
static int on_value(llhttp_t *p, const char *at, size_t len) {
  struct prop *pp = p->data;
  return http_head_add_value(&pp->head, at, len) < 0 ? HPE_USER : 0;
}
static int on_value_complete(llhttp_t *p) {
  struct prop *pp = p->data;
  http_head_end_field(&pp->head);
  return 0;
}
static int on_headers_complete(llhttp_t *p) {
  struct prop *pp = p->data;
  pp->head.method = p->method;
  pp->head.http_major = p->http_major;
  pp->head.http_minor = p->http_minor;
  pp->hdrs_done = 1;
  return HPE_PAUSED; /* the head goes out, with our lines, before any body byte */
}
static int on_message_complete(llhttp_t *p) {
  struct prop *pp = p->data;
  pp->msg_done = 1;
  return HPE_PAUSED; /* the next head starts at the front of the input */
}

/* The callbacks have the shape of agent/relay.c's req_* (llhttp spans into an
 * http_head): each owner keeps its own, since what they pause on and what the
 * pauses mean differ (the agent routes and connects; this only rewrites). */
static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_field,
    .on_header_value = on_value,
    .on_header_value_complete = on_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_message_complete = on_message_complete,
};

/* From here on every byte passes unchanged. */
static void go_raw(struct prop *pp, const char *why) {
  if (pp->mode != MODE_RAW) {
    pp->st->raw++;
    log_debug("%s: no route propagation on the rest of this connection: %s", pp->what, why);
  }
  pp->mode = MODE_RAW;
}

/* The head is the first hl bytes of in: move it to out, with the route lines
 * before its blank line unless it names a route itself. */
static void emit_head(struct prop *pp, struct evbuffer *in, struct evbuffer *out, size_t hl) {
  pp->st->requests++;
  struct route_match m;
  route_decide(&pp->rc, &pp->head, NULL, &m);
  int named = m.source != ROUTE_NONE || http_head_count(&pp->head, pp->rc.header) > 0;
  if (named) {
    pp->st->own++;
    if (m.source != ROUTE_NONE && strcmp(m.key, pp->key) != 0 && !pp->told_other) {
      pp->told_other = 1;
      log_info("%s: the request names route \"%s\" itself (by %s); left alone", pp->what, m.key,
               route_source_name(m.source));
    }
    evbuffer_remove_buffer(in, out, hl);
    return;
  }
  pp->st->injected++;
  if (http_head_count(&pp->head, "baggage") > 0) {
    /* Our member joins the app's baggage line (one line: not every server
     * joins repeated ones): the head is written out again, as the agent does
     * for a request routed by subdomain, the app's members kept in order. */
    struct route_match ours = {.source = ROUTE_SUBDOMAIN};
    snprintf(ours.key, sizeof ours.key, "%s", pp->key);
    int replace = 0;
    char extra[ROUTE_INJECT_MAX];
    if (route_inject(&pp->rc, &pp->head, &ours, extra, sizeof extra, &replace) >= 0) {
      const char *drop[] = {replace ? "baggage" : NULL, NULL};
      if (http_head_write_request_drop(&pp->head, drop, extra, out) == 0) {
        evbuffer_drain(in, hl);
        return;
      }
    }
  }
  /* The blank line: "\r\n", or a bare "\n" where llhttp allowed one. */
  char tail[2] = {0, 0};
  struct evbuffer_ptr at;
  size_t before = hl - 1;
  if (hl >= 2 && evbuffer_ptr_set(in, &at, hl - 2, EVBUFFER_PTR_SET) == 0 &&
      evbuffer_copyout_from(in, &at, tail, 2) == 2 && tail[0] == '\r' && tail[1] == '\n')
    before = hl - 2;
  evbuffer_remove_buffer(in, out, before);
  evbuffer_add(out, pp->lines, strlen(pp->lines));
  evbuffer_remove_buffer(in, out, hl - before);
}

static int prop_fn(void *ctx, struct evbuffer *in, struct evbuffer *out, int eof,
                   const char **err) {
  struct prop *pp = ctx;
  (void)err; /* the filter never fails: what it cannot parse passes unchanged */
  for (;;) {
    if (pp->mode == MODE_RAW) {
      evbuffer_remove_buffer(in, out, evbuffer_get_length(in));
      return 0;
    }
    size_t len = evbuffer_get_length(in);
    size_t off = pp->mode == MODE_HEAD ? pp->fed : 0;
    const char *data = "";
    size_t n = 0;
    if (off < len) {
      struct evbuffer_ptr at;
      struct evbuffer_iovec v;
      if (evbuffer_ptr_set(in, &at, off, EVBUFFER_PTR_SET) < 0 ||
          evbuffer_peek(in, -1, &at, &v, 1) < 1) {
        go_raw(pp, "cannot read the input");
        continue;
      }
      data = v.iov_base;
      n = v.iov_len;
    } else if (pp->mode == MODE_HEAD) {
      if (!eof) return 0; /* the rest of the head is still to come */
      if (len > 0) go_raw(pp, "the connection ended inside a request head");
      else return 0;
      continue;
    }
    pp->hdrs_done = pp->msg_done = 0;
    llhttp_errno_t e = llhttp_execute(&pp->parser, data, n);
    size_t used = n;
    if (e != HPE_OK) {
      const char *pos = llhttp_get_error_pos(&pp->parser);
      used = pos && pos >= data && pos <= data + n ? (size_t)(pos - data) : 0;
    }
    if (e != HPE_OK && e != HPE_PAUSED) {
      /* HPE_PAUSED_UPGRADE: an upgrade or CONNECT, whose answer we do not
       * see; anything else: not (or no longer) HTTP/1.x, or a head too large. */
      if (pp->mode == MODE_BODY) evbuffer_remove_buffer(in, out, used);
      go_raw(pp, e == HPE_PAUSED_UPGRADE ? "upgrade or CONNECT"
                 : e == HPE_USER         ? "request head over the limit"
                                         : llhttp_errno_name(e));
      continue;
    }
    if (pp->mode == MODE_HEAD) {
      pp->fed += used;
      if (pp->hdrs_done) {
        emit_head(pp, in, out, pp->fed);
        pp->fed = 0;
        pp->mode = MODE_BODY;
        llhttp_resume(&pp->parser);
      }
      continue;
    }
    evbuffer_remove_buffer(in, out, used); /* MODE_BODY */
    if (pp->msg_done) {
      llhttp_resume(&pp->parser);
      pp->mode = MODE_HEAD;
      if (pp->parser.upgrade) go_raw(pp, "upgrade or CONNECT");
      continue;
    }
    if (n == 0) return 0; /* all of the input is moved */
  }
}

static void prop_free(void *ctx) {
  struct prop *pp = ctx;
  http_head_free(&pp->head);
  free(pp);
}

struct splice_filter propagate_filter(const char *key, const char *what,
                                      struct propagate_stats *stats) {
  struct splice_filter f = {NULL, NULL, NULL};
  struct prop *pp = calloc(1, sizeof *pp);
  if (!pp) return f;
  snprintf(pp->key, sizeof pp->key, "%s", key);
  snprintf(pp->what, sizeof pp->what, "%s", what);
  route_config_default(&pp->rc);
  snprintf(pp->lines, sizeof pp->lines, "%s: %s\r\nbaggage: %s=%s\r\n", pp->rc.header, key,
           pp->rc.baggage_member, key);
  pp->st = stats ? stats : &pp->none;
  http_head_init(&pp->head, PROPAGATE_HEAD_MAX, MAX_FIELDS);
  llhttp_init(&pp->parser, HTTP_REQUEST, &settings);
  pp->parser.data = pp;
  pp->mode = MODE_HEAD;
  f.fn = prop_fn;
  f.free_fn = prop_free;
  f.ctx = pp;
  return f;
}
