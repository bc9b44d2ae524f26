/* relay.c: the HTTP relay of a client connection (relay.h).
 *
 * HTTP: one request at a time. llhttp parses the request; it is paused right
 * after the head (route it, pick an upstream, send the re-serialized head) and
 * right after the message (so pipelined requests stay buffered until the
 * current response is done). Body bytes are forwarded exactly as received,
 * chunk framing included: llhttp only says where the message ends. A second
 * llhttp parses the response from the upstream, again only to find its end; its
 * bytes are relayed raw. When both sides can keep the connection alive the
 * upstream goes back to its pool and the next request is read. */
#include "relay.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <llhttp.h>

#include "agent.h"
#include "client.h"
#include "forwarded.h"
#include "http_head.h"
#include "log.h"
#include "route.h"
#include "route_table.h"
#include "splice.h"
#include "tunnels.h"
#include "upstream.h"

#define MAX_HEADER_FIELDS 256

static void up_read(struct upstream *u, void *arg);
static void up_event(struct upstream *u, int what, void *arg);

/* --- llhttp callbacks ------------------------------------------------------------ */

static int req_message_begin(llhttp_t *p) {
  struct downstream *ds = p->data;
  http_head_reset(&ds->head);
  return 0;
}
/* A piece of the head went into ds->head (r: its http_head_add_* result);
 * over a limit the parse stops and the head is answered 431. */
static int head_added(struct downstream *ds, int r) {
  if (r < 0) {
    ds->too_big = 1;
    return HPE_USER;
  }
  return 0;
}
static int req_url(llhttp_t *p, const char *at, size_t len) {
  struct downstream *ds = p->data;
  return head_added(ds, http_head_add_url(&ds->head, at, len));
}
static int req_field(llhttp_t *p, const char *at, size_t len) {
  struct downstream *ds = p->data;
  return head_added(ds, http_head_add_name(&ds->head, at, len));
}
static int req_value(llhttp_t *p, const char *at, size_t len) {
  struct downstream *ds = p->data;
  return head_added(ds, http_head_add_value(&ds->head, at, len));
}
static int req_value_complete(llhttp_t *p) {
  struct downstream *ds = p->data;
  http_head_end_field(&ds->head);
  return 0;
}
static int req_headers_complete(llhttp_t *p) {
  struct downstream *ds = p->data;
  ds->head.method = p->method;
  ds->head.http_major = p->http_major;
  ds->head.http_minor = p->http_minor;
  ds->hdrs_done = 1;
  return HPE_PAUSED; /* route and connect before any body byte moves */
}
static int req_message_complete(llhttp_t *p) {
  struct downstream *ds = p->data;
  ds->msg_done = 1;
  return HPE_PAUSED; /* the next pipelined request waits for this response */
}

/* Like resp_settings below and portforward.c's: llhttp takes a table of
 * callbacks per parser; the shape repeats, the callbacks do not. */
static const llhttp_settings_t req_settings = {
    .on_message_begin = req_message_begin,
    .on_url = req_url,
    .on_header_field = req_field,
    .on_header_value = req_value,
    .on_header_value_complete = req_value_complete,
    .on_headers_complete = req_headers_complete,
    .on_message_complete = req_message_complete,
};

static int resp_headers_complete(llhttp_t *p) {
  struct downstream *ds = p->data;
  int status = p->status_code;
  if (status >= 200 && ds->method == HTTP_HEAD) return 1; /* no body, whatever it says */
  if (ds->method == HTTP_CONNECT && status >= 200 && status < 300) return 2; /* tunnel */
  return 0;
}
static int resp_message_complete(llhttp_t *p) {
  struct downstream *ds = p->data;
  ds->resp_msg_done = 1;
  return HPE_PAUSED;
}

/* The response's Upgrade header is kept (a 101 must name a protocol the request
 * asked for); every other field is only skipped over. */
static int resp_message_begin(llhttp_t *p) {
  struct downstream *ds = p->data;
  ds->resp_upgrade[0] = 0;
  ds->resp_field[0] = 0;
  ds->resp_field_long = 0;
  ds->resp_in_upgrade = 0;
  ds->resp_upgrade_long = 0;
  return 0;
}
static int resp_field(llhttp_t *p, const char *at, size_t len) {
  struct downstream *ds = p->data;
  size_t have = strlen(ds->resp_field);
  if (have + len >= sizeof ds->resp_field) {
    ds->resp_field_long = 1;
    return 0;
  }
  memcpy(ds->resp_field + have, at, len);
  ds->resp_field[have + len] = 0;
  return 0;
}
static int resp_field_complete(llhttp_t *p) {
  struct downstream *ds = p->data;
  ds->resp_in_upgrade = !ds->resp_field_long && strcasecmp(ds->resp_field, "upgrade") == 0;
  ds->resp_field[0] = 0;
  ds->resp_field_long = 0;
  if (ds->resp_in_upgrade && ds->resp_upgrade[0]) /* a second Upgrade line: one list */
    strncat(ds->resp_upgrade, ",", sizeof ds->resp_upgrade - strlen(ds->resp_upgrade) - 1);
  return 0;
}
static int resp_value(llhttp_t *p, const char *at, size_t len) {
  struct downstream *ds = p->data;
  if (!ds->resp_in_upgrade) return 0;
  size_t have = strlen(ds->resp_upgrade);
  size_t room = sizeof ds->resp_upgrade - 1 - have;
  if (len > room) { /* a list this long matches nothing we asked for */
    ds->resp_upgrade_long = 1;
    len = room;
  }
  memcpy(ds->resp_upgrade + have, at, len);
  ds->resp_upgrade[have + len] = 0;
  return 0;
}
static int resp_value_complete(llhttp_t *p) {
  struct downstream *ds = p->data;
  ds->resp_in_upgrade = 0;
  return 0;
}

static const llhttp_settings_t resp_settings = {
    .on_message_begin = resp_message_begin,
    .on_header_field = resp_field,
    .on_header_field_complete = resp_field_complete,
    .on_header_value = resp_value,
    .on_header_value_complete = resp_value_complete,
    .on_headers_complete = resp_headers_complete,
    .on_message_complete = resp_message_complete,
};

/* Responses are parsed only to find where they end; odd bytes in a header value
 * of a real server's answer must not turn it into a 502 (requests stay strict). */
static void init_resp_parser(struct downstream *ds) {
  llhttp_init(ds->resp, HTTP_RESPONSE, &resp_settings);
  llhttp_set_lenient_headers(ds->resp, 1);
  ds->resp->data = ds;
}

/* --- HTTP: requests -------------------------------------------------------------- */

/* The upstream failed before answering: say why, in the client's terms. */
static void upstream_failed(struct downstream *ds, struct upstream *u, const char *what) {
  char fb[300];
  if (!ds->route[0]) {
    addr_format(ds->li->fallback, fb, sizeof fb);
    if (u->fail == UPSTREAM_FAIL_DNS)
      client_respond_error(
          ds, 503, "Service Unavailable", MERR_FALLBACK_DNS,
          "kbridge: original pods unreachable at %s: no address resolves (%s)",
          fb, u->err);
    else if (u->fail == UPSTREAM_FAIL_CONNECT)
      client_respond_error(ds, 502, "Bad Gateway", MERR_FALLBACK_UNREACHABLE,
                           "kbridge: original pods unreachable at %s: %s", fb,
                           u->err);
    else
      client_respond_error(ds, 502, "Bad Gateway", MERR_UPSTREAM_CLOSED,
                           "kbridge: original pods at %s: %s", fb, what);
    return;
  }
  const char *cause;
  switch (u->fail) {
  case UPSTREAM_FAIL_REFUSED: cause = "developer's local service refused the connection"; break;
  case UPSTREAM_FAIL_TIMEOUT: cause = "developer's local service did not answer in time"; break;
  case UPSTREAM_FAIL_LOST: cause = "developer's tunnel was lost"; break;
  case UPSTREAM_FAIL_RESET: cause = "the developer's side reset the stream"; break;
  default: cause = NULL; break;
  }
  if (cause)
    client_respond_error(ds, 502, "Bad Gateway", MERR_ROUTE_FAILED,
                         "kbridge: route \"%s\": %s (%s)", ds->route, cause,
                         u->err);
  else
    client_respond_error(ds, 502, "Bad Gateway", MERR_ROUTE_FAILED,
                         "kbridge: route \"%s\": %s", ds->route, what);
}

/* Is tok (case-insensitive) one of the comma-separated elements of list[0..len)?
 * Elements are trimmed of spaces and tabs. */
static int list_has(const char *list, size_t len, const char *tok, size_t toklen) {
  size_t i = 0;
  while (i < len) {
    size_t j = i;
    while (j < len && list[j] != ',') j++;
    size_t a = i, b = j;
    while (a < b && (list[a] == ' ' || list[a] == '\t')) a++;
    while (b > a && (list[b - 1] == ' ' || list[b - 1] == '\t')) b--;
    if (b - a == toklen && toklen && strncasecmp(list + a, tok, toklen) == 0) return 1;
    i = j + 1;
  }
  return 0;
}

/* Did the request ask for a protocol switch (Upgrade, and "upgrade" in a
 * Connection header)? Keeps its Upgrade list in ds->req_upgrade for the check
 * of a 101 (upgrade_allowed). */
static void note_upgrade_request(struct downstream *ds) {
  size_t n = 0, vlen;
  const char *v;
  int conn_upgrade = 0;
  ds->req_wants_upgrade = 0;
  ds->req_upgrade[0] = 0;
  for (size_t i = 0; (v = http_head_get(&ds->head, "connection", i, &vlen)); i++)
    if (list_has(v, vlen, "upgrade", 7)) conn_upgrade = 1;
  if (!conn_upgrade) return;
  for (size_t i = 0; (v = http_head_get(&ds->head, "upgrade", i, &vlen)); i++) {
    if (n + vlen + 2 > sizeof ds->req_upgrade) return; /* too long to be honest: no upgrade */
    if (n) ds->req_upgrade[n++] = ',';
    memcpy(ds->req_upgrade + n, v, vlen);
    n += vlen;
    ds->req_upgrade[n] = 0;
  }
  ds->req_wants_upgrade = n > 0;
}

/* A 101 takes the client connection over (a raw splice to this upstream):
 * allowed only when the request asked for an upgrade and every protocol the
 * response names is one the request offered (RFC 9110 7.8). A bare 101 to a
 * plain request would hand the connection, and the client's next requests
 * with their credentials, to whoever answered it. CONNECT switches on 2xx,
 * never on 101. */
static int upgrade_allowed(const struct downstream *ds) {
  if (ds->method == HTTP_CONNECT || !ds->req_wants_upgrade || !ds->resp_upgrade[0] ||
      ds->resp_upgrade_long)
    return 0;
  const char *r = ds->resp_upgrade;
  size_t len = strlen(r), i = 0, named = 0;
  while (i < len) {
    size_t j = i;
    while (j < len && r[j] != ',') j++;
    size_t a = i, b = j;
    while (a < b && (r[a] == ' ' || r[a] == '\t')) a++;
    while (b > a && (r[b - 1] == ' ' || r[b - 1] == '\t')) b--;
    if (b > a) {
      if (!list_has(ds->req_upgrade, strlen(ds->req_upgrade), r + a, b - a)) return 0;
      named++;
    }
    i = j + 1;
  }
  return named > 0;
}

/* Pick the upstream for the current head: a developer's tunnel stream if the
 * route key is held, else the fallback. Pooled idle ones first. */
static struct upstream *pick_upstream(struct downstream *ds, int fresh) {
  struct agent *ag = ds->ag;
  struct agent_tunnel *at = NULL;
  if (ds->route[0]) at = route_table_pick(ag->routes, ds->route);
  if (at) {
    ds->up_pool = &at->pools[ds->li - ag->listeners]; /* streams name their port */
    struct upstream *u = fresh ? NULL : pool_get(ds->up_pool);
    if (!u) u = tunnels_open_stream(at, ds->port, ds->peer);
    if (u) upstream_setcb(u, up_read, up_event, ds);
    return u;
  }
  ds->route[0] = 0;
  ds->up_pool = &ds->li->pool;
  struct upstream *u = fresh ? NULL : pool_get(&ds->li->pool);
  if (u)
    upstream_setcb(u, up_read, up_event, ds);
  else
    u = upstream_connect_tcp(ag, ds->li->fallback, up_read, up_event, ds);
  if (u) upstream_set_read_max(u, client_share(ag));
  return u;
}

/* Serialize the head to u, with the route lines when routed by subdomain and
 * the client's address (forwarded.h) always: to the original pods and to a
 * developer alike. */
static int send_head(struct downstream *ds, struct upstream *u, const struct route_match *m) {
  struct agent *ag = ds->ag;
  char small[2048], route_lines[1024];
  int replace_baggage = 0;
  route_lines[0] = 0;
  if (m && m->source == ROUTE_SUBDOMAIN &&
      route_inject(&ag->rcfg, &ds->head, m, route_lines, sizeof route_lines, &replace_baggage) < 0)
    route_lines[0] = 0;
  size_t rlen = strlen(route_lines), need = rlen + forwarded_size(&ds->head);
  char *extra = need <= sizeof small ? small : malloc(need); /* long existing X-Forwarded-For */
  if (!extra) return -1;
  memcpy(extra, route_lines, rlen);
  if (forwarded_lines(&ds->head, ds->client_ip, extra + rlen, need - rlen) < 0)
    extra[rlen] = 0; /* not an IP client (cannot happen for TCP): nothing to say */
  const char *drop[FORWARDED_NREPLACED + 2];
  size_t nd = 0;
  for (; forwarded_replaced[nd]; nd++) drop[nd] = forwarded_replaced[nd];
  if (extra[rlen] == 0) nd = 0; /* no merged lines: keep the originals */
  if (replace_baggage) drop[nd++] = "baggage";
  drop[nd] = NULL;
  struct evbuffer *tmp = ag->scratch;
  int r = http_head_write_request_drop(&ds->head, drop, extra[0] ? extra : NULL, tmp);
  if (extra != small) free(extra);
  size_t n = evbuffer_get_length(tmp);
  if (r == 0) {
    ag->stats.bytes_request += n;
    r = upstream_write(u, tmp, n);
  }
  evbuffer_drain(tmp, evbuffer_get_length(tmp));
  return r;
}

/* The head is complete (parser paused after it): check it, route it, send it. */
static void begin_forward(struct downstream *ds) {
  struct agent *ag = ds->ag;
  const char *why = NULL;
  evtimer_del(ds->timer);
  if (http_head_check_request(&ds->head, &why) < 0) {
    client_respond_error(ds, 400, "Bad Request", MERR_BAD_REQUEST,
                         "kbridge: bad request: %s",
                         why ? why : "malformed head");
    return;
  }
  ds->method = llhttp_get_method(ds->req);
  note_upgrade_request(ds);
  ds->req_has_body = (ds->req->flags & F_CHUNKED) || ds->req->content_length > 0;
  ds->req_done = 0;
  ds->retried = 0;
  ds->resp_started = 0;
  ds->up_eof = 0;

  struct route_match m;
  memset(&m, 0, sizeof m);
  if (ag->opt->exclusive) {
    struct agent_tunnel *at = tunnels_exclusive(ag);
    if (at) {
      snprintf(m.key, sizeof m.key, "%s", at->key);
      m.source = ROUTE_HEADER; /* exclusive: every request is theirs */
    }
  } else {
    route_decide(&ag->rcfg, &ds->head, ag->routes, &m);
  }
  snprintf(ds->route, sizeof ds->route, "%s", m.source != ROUTE_NONE ? m.key : "");
  ds->match = m;
  struct upstream *u = pick_upstream(ds, 0);
  if (!u) {
    if (ds->route[0])
      client_respond_error(
          ds, 502, "Bad Gateway", MERR_ROUTE_FAILED,
          "kbridge: route \"%s\": developer's tunnel is closing", ds->route);
    else
      client_respond_error(ds, 503, "Service Unavailable",
                           MERR_FALLBACK_UNREACHABLE, "kbridge: out of memory");
    return;
  }
  ds->up = u;
  metrics_count_request(&ag->stats, ds->route[0] ? ds->route : NULL);
  if (log_level_current >= LOGL_DEBUG) {
    const char *who = ds->route[0] && u->at && u->at->identity[0] ? u->at->identity : "";
    log_debug("%s: %s %.*s -> %s%s%s%s (%s)", ds->peer, llhttp_method_name(ds->method),
              (int)ds->head.url_len, ds->head.buf + ds->head.url_off,
              ds->route[0] ? ds->route : "fallback", who[0] ? " [" : "", who, who[0] ? "]" : "",
              route_source_name(m.source));
  }
  if (send_head(ds, u, &m) < 0) {
    upstream_failed(ds, u, "refused the request head");
    return;
  }
  if (!ds->resp) {
    ds->resp = malloc(sizeof *ds->resp);
    if (!ds->resp) {
      client_respond_error(ds, 503, "Service Unavailable", MERR_BAD_RESPONSE,
                           "kbridge: out of memory");
      return;
    }
  }
  init_resp_parser(ds);
  ds->state = DS_FORWARD_BODY;
}

/* The last byte of the request went upstream: further client input (a
 * pipelined request) stays buffered until the response is complete. Reading
 * stays enabled (disabling and re-enabling it cost two epoll_ctl per request);
 * the client's read high-water mark bounds what is buffered meanwhile. */
static void request_complete(struct downstream *ds) {
  ds->req_done = 1;
  ds->req_keepalive = llhttp_should_keep_alive(ds->req) != 0;
  ds->state = DS_WAIT_RESPONSE;
}

/* llhttp said the request is malformed (or a limit hit inside a callback). */
static void request_error(struct downstream *ds, llhttp_errno_t e) {
  if (ds->too_big || (e == HPE_USER && ds->state == DS_READ_HEAD)) {
    client_respond_error(ds, 431, "Request Header Fields Too Large",
                         MERR_HEAD_TOO_LARGE,
                         "kbridge: request head larger than %ld bytes",
                         ds->ag->opt->max_header_bytes);
    return;
  }
  const char *reason = llhttp_get_error_reason(ds->req);
  client_respond_error(ds, 400, "Bad Request", MERR_BAD_REQUEST,
                       "kbridge: bad request: %s",
                       reason ? reason : llhttp_errno_name(e));
}

/* Parse and forward client bytes: the head (consumed into ds->head), then the
 * body (moved raw to the upstream), stopping at the end of one request. */
static void process_request_bytes(struct downstream *ds) {
  struct evbuffer *in = bufferevent_get_input(ds->bev);
  for (;;) {
    if (ds->dead) return;
    if (ds->state != DS_IDLE && ds->state != DS_READ_HEAD && ds->state != DS_FORWARD_BODY)
      return;
    if (ds->state == DS_FORWARD_BODY && upstream_pending(ds->up) > upstream_high(ds->up)) {
      ds->wait_up_drain = 1; /* resumed by up_event(WRITABLE) */
      bufferevent_disable(ds->bev, EV_READ);
      return;
    }
    size_t avail = evbuffer_get_length(in);
    if (avail == 0 && !ds->req_paused) return;
    if (ds->state == DS_IDLE) {
      if (avail == 0) return;
      if (!ds->req) {
        ds->req = malloc(sizeof *ds->req);
        if (!ds->req) {
          client_close(ds);
          return;
        }
        llhttp_init(ds->req, HTTP_REQUEST, &req_settings);
        ds->req->data = ds;
      }
      if (!ds->head_init) {
        http_head_init(&ds->head, (size_t)ds->ag->opt->max_header_bytes, MAX_HEADER_FIELDS);
        ds->head_init = 1;
      }
      ds->state = DS_READ_HEAD;
      ds->head_bytes = 0;
      ds->too_big = 0;
      client_set_timer(ds, ds->ag->opt->header_timeout_ms);
    }
    const char *data = "";
    size_t len = 0;
    struct evbuffer_iovec v;
    if (avail && evbuffer_peek(in, -1, NULL, &v, 1) >= 1) {
      data = v.iov_base;
      len = v.iov_len;
    }
    if (ds->req_paused) {
      llhttp_resume(ds->req);
      ds->req_paused = 0;
    }
    ds->hdrs_done = ds->msg_done = 0;
    llhttp_errno_t e = llhttp_execute(ds->req, data, len);
    size_t used = len;
    if (e != HPE_OK) {
      const char *pos = llhttp_get_error_pos(ds->req);
      used = pos && pos >= data && pos <= data + len ? (size_t)(pos - data) : 0;
    }
    if (e == HPE_PAUSED_UPGRADE) {
      /* the previous request asked for an upgrade that the response declined:
       * keep parsing HTTP */
      llhttp_resume_after_upgrade(ds->req);
      evbuffer_drain(in, used);
      continue;
    }
    if (e != HPE_OK && e != HPE_PAUSED) {
      request_error(ds, e);
      return;
    }
    if (ds->state == DS_READ_HEAD) {
      http_head_scan_raw(&ds->head, data, used);
      ds->head_bytes += used;
      evbuffer_drain(in, used);
      if (ds->head_bytes > (size_t)ds->ag->opt->max_header_bytes) {
        request_error(ds, HPE_USER);
        return;
      }
      if (e == HPE_PAUSED && ds->hdrs_done) {
        ds->req_paused = 1;
        begin_forward(ds);
      }
      continue;
    }
    /* DS_FORWARD_BODY */
    if (used) {
      ds->ag->stats.bytes_request += used;
      if (upstream_write(ds->up, in, used) < 0) {
        upstream_failed(ds, ds->up, "stopped taking the request body");
        return;
      }
    }
    if (e == HPE_PAUSED) {
      ds->req_paused = 1;
      if (ds->msg_done) {
        request_complete(ds);
        return;
      }
    } else if (len == 0) {
      return;
    }
  }
}

/* The client half-closed earlier: its input ends with what is buffered. The
 * requests received before the EOF are served in order (a half-close ends the
 * input, not the requests already sent); what is left decides. */
void relay_client_eof(struct downstream *ds) {
  if (!ds->client_eof || ds->dead) return;
  int more = evbuffer_get_length(bufferevent_get_input(ds->bev)) > 0 || ds->wait_up_drain;
  if (more) return;
  if (ds->state == DS_IDLE) {
    client_start_closing(ds); /* every request answered */
  } else if (ds->state == DS_READ_HEAD || ds->state == DS_FORWARD_BODY) {
    metrics_count_error(&ds->ag->stats, MERR_CLIENT_ABORTED);
    log_debug("%s: client closed in the middle of a request (%s)", ds->peer,
              client_state_names[ds->state]);
    client_close_reason(ds, MCLOSE_ABORTED);
    client_start_closing(ds); /* the answers already queued still go out */
  }
}

void relay_request(struct downstream *ds) {
  process_request_bytes(ds);
  relay_client_eof(ds);
}

/* --- HTTP: responses ------------------------------------------------------------- */

/* Ready for the next request on this connection (pipelined bytes may wait). */
static void next_request(struct downstream *ds) {
  ds->state = DS_IDLE;
  ds->route[0] = 0;
  ds->resp_started = 0;
  ds->req_done = 0;
  if (ds->head_init && ds->head.cap > 4096) { /* idle connections stay small */
    http_head_free(&ds->head);
    ds->head_init = 0;
  }
  client_set_timer(ds, ds->ag->opt->idle_timeout_ms);
  if (!ds->client_eof)
    bufferevent_enable(ds->bev, EV_READ);
  relay_request(ds);
}

/* The final response has been relayed completely. */
static void response_complete(struct downstream *ds) {
  struct upstream *u = ds->up;
  int up_ka = llhttp_should_keep_alive(ds->resp) != 0;
  /* A CONNECT that got no 2xx (a 2xx became a splice): the server may frame
   * what follows it in its own way, and the client may have sent tunnel bytes
   * after it. Neither connection is reused. */
  int refused_connect = ds->method == HTTP_CONNECT;
  ds->up = NULL;
  if (up_ka && ds->req_done && !ds->up_eof && !refused_connect)
    pool_put(ds->up_pool, u);
  else
    upstream_free(u);
  if (!ds->req_done || !ds->req_keepalive || !up_ka || refused_connect || ds->ag->stopping ||
      ds->ag->draining) {
    client_start_closing(ds);
    return;
  }
  next_request(ds);
}

/* Re-send a body-less request on a fresh connection: a pooled upstream was
 * closed by its server just as we reused it (a race every keep-alive proxy
 * has). Returns 1 if retried. */
static int maybe_retry(struct downstream *ds) {
  struct upstream *old = ds->up;
  if (!old->reused || ds->retried || ds->resp_started || ds->req_has_body || !ds->req_done)
    return 0;
  struct upstream *u = pick_upstream(ds, 1);
  if (!u) return 0;
  log_debug("%s: pooled upstream closed under us (%s); retrying once", ds->peer,
            old->err[0] ? old->err : "EOF");
  upstream_free(old);
  ds->up = u;
  ds->retried = 1;
  ds->up_eof = 0;
  init_resp_parser(ds);
  if (send_head(ds, u, &ds->match) < 0) { /* the same route lines as the first try */
    upstream_failed(ds, u, "refused the request head");
    return 1;
  }
  return 1;
}

/* The upstream has no more bytes: finish a close-delimited response, or fail. */
static void upstream_finished(struct downstream *ds) {
  if (ds->resp_started && llhttp_message_needs_eof(ds->resp)) {
    ds->resp_msg_done = 0;
    llhttp_errno_t e = llhttp_finish(ds->resp);
    if ((e == HPE_OK || e == HPE_PAUSED) && ds->resp_msg_done) {
      response_complete(ds);
      return;
    }
  }
  if (!ds->resp_started) {
    if (maybe_retry(ds)) return;
    upstream_failed(ds, ds->up, "closed the connection before responding");
    return;
  }
  metrics_count_error(&ds->ag->stats, MERR_UPSTREAM_CLOSED);
  log_warn("%s: %s closed the connection in the middle of the response; closing the client",
           ds->peer, ds->route[0] ? ds->route : "fallback");
  client_close_reason(ds, MCLOSE_UPSTREAM);
  client_close(ds);
}

/* Relay upstream bytes to the client, parsing only to find where the response
 * ends. Stops while the client's output is above the high mark. */
void relay_response(struct downstream *ds) {
  while (!ds->dead && ds->up) {
    struct evbuffer *in = upstream_input(ds->up);
    struct evbuffer *out = bufferevent_get_output(ds->bev);
    if (evbuffer_get_length(in) == 0) break;
    if (ds->state != DS_FORWARD_BODY && ds->state != DS_WAIT_RESPONSE) return;
    size_t share = client_share(ds->ag), queued = evbuffer_get_length(out);
    if (queued > share) {
      ds->wait_client_drain = 1; /* resumed by client_write() */
      upstream_pause_read(ds->up, 1);
      return;
    }
    struct evbuffer_iovec v;
    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1) break;
    const char *data = v.iov_base;
    size_t len = v.iov_len;
    if (len > share - queued + 4096) len = share - queued + 4096; /* output stays near share */
    ds->resp_msg_done = 0;
    llhttp_errno_t e = llhttp_execute(ds->resp, data, len);
    size_t used = len;
    if (e != HPE_OK) {
      const char *pos = llhttp_get_error_pos(ds->resp);
      used = pos && pos >= data && pos <= data + len ? (size_t)(pos - data) : 0;
    }
    if (e != HPE_OK && e != HPE_PAUSED && e != HPE_PAUSED_UPGRADE) {
      const char *r = llhttp_get_error_reason(ds->resp);
      if (!ds->resp_started) {
        client_respond_error(ds, 502, "Bad Gateway", MERR_BAD_RESPONSE,
                             "kbridge: %s%s%s sent a malformed response: %s",
                             ds->route[0] ? "route \"" : "original pods",
                             ds->route[0] ? ds->route : "",
                             ds->route[0] ? "\"" : "",
                             r ? r : llhttp_errno_name(e));
      } else {
        metrics_count_error(&ds->ag->stats, MERR_BAD_RESPONSE);
        log_warn("%s: malformed response after it started: %s; closing", ds->peer,
                 r ? r : llhttp_errno_name(e));
        client_close_reason(ds, MCLOSE_UPSTREAM);
        client_close(ds);
      }
      return;
    }
    int switching = e == HPE_PAUSED_UPGRADE ||
                    (e == HPE_PAUSED && ds->resp_msg_done && llhttp_get_status_code(ds->resp) == 101);
    if (switching && llhttp_get_status_code(ds->resp) == 101 && !upgrade_allowed(ds)) {
      client_respond_error(
          ds, 502, "Bad Gateway", MERR_BAD_RESPONSE,
          "kbridge: %s%s%s answered 101 Switching Protocols (Upgrade: %s) to a "
          "request "
          "that did not ask for %s",
          ds->route[0] ? "route \"" : "original pods",
          ds->route[0] ? ds->route : "", ds->route[0] ? "\"" : "",
          ds->resp_upgrade[0] ? ds->resp_upgrade : "none",
          ds->req_wants_upgrade ? "that protocol" : "an upgrade");
      return;
    }
    if (used) {
      evbuffer_remove_buffer(in, out, used);
      ds->ag->stats.bytes_response += used;
      ds->resp_started = 1;
    }
    if (e == HPE_PAUSED_UPGRADE || (e == HPE_PAUSED && ds->resp_msg_done)) {
      int status = llhttp_get_status_code(ds->resp);
      if (e == HPE_PAUSED) llhttp_resume(ds->resp);
      if (status == 101 || e == HPE_PAUSED_UPGRADE) {
        ds->ag->stats.upgrades++;
        log_debug("%s: upgraded (%d); now a raw tunnel to %s", ds->peer, status,
                  ds->route[0] ? ds->route : "fallback");
        client_hand_to_splice(ds);
        return;
      }
      if (status < 200) { /* 100 Continue, 103 Early Hints: the real one follows */
        ds->resp_started = 0;
        continue;
      }
      response_complete(ds);
      return;
    }
  }
  if (!ds->dead && ds->up && ds->up_eof && evbuffer_get_length(upstream_input(ds->up)) == 0)
    upstream_finished(ds);
}

static void up_read(struct upstream *u, void *arg) {
  struct downstream *ds = arg;
  client_enter(ds);
  if (!ds->wait_client_drain) relay_response(ds);
  client_leave(ds);
}

static void up_event(struct upstream *u, int what, void *arg) {
  struct downstream *ds = arg;
  client_enter(ds);
  if (what & UPSTREAM_EV_WRITABLE) {
    /* The upstream decides when it is writable again (a TCP upstream at its
     * write low-water mark, a tunnel stream at half its window): resume then;
     * relay_request() re-checks the high mark. */
    if (ds->wait_up_drain) {
      ds->wait_up_drain = 0;
      bufferevent_enable(ds->bev, EV_READ);
      relay_request(ds);
    }
  } else if (what & UPSTREAM_EV_EOF) {
    ds->up_eof = 1;
    if (!ds->wait_client_drain) relay_response(ds);
  } else if (what & UPSTREAM_EV_ERROR) {
    if (!maybe_retry(ds)) {
      char why[300];
      snprintf(why, sizeof why, "connection failed: %s", u->err);
      upstream_failed(ds, u, why);
    }
  }
  client_leave(ds);
}
