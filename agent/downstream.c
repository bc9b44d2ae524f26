/* downstream.c: the client connection state machine (see docs/agent.md).
 *
 * A connection starts in SNIFF. If its first bytes look like an HTTP/1.x
 * request line it is served as HTTP; otherwise (or if the client says nothing:
 * server-speaks-first protocols) it is spliced raw to the fallback, or with
 * --exclusive to the developer.
 *
 * HTTP: one request at a time. llhttp parses the request; it is paused right
 * after the head (route it, pick an upstream, send the re-serialized head) and
 * right after the message (so pipelined requests stay buffered until the
 * current response is done). Body bytes are forwarded exactly as received,
 * chunk framing included: llhttp only says where the message ends. A second
 * llhttp parses the response from the upstream, again only to find its end; its
 * bytes are relayed raw. When both sides can keep the connection alive the
 * upstream goes back to its pool and the next request is read.
 *
 * Closing safely: every entry point (bufferevent, upstream and timer callbacks)
 * holds ds->busy; ds_close() only marks the connection dead and the outermost
 * entry point frees it on the way out. */
#include "downstream.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <llhttp.h>

#include "addr.h"
#include "agent.h"
#include "forwarded.h"
#include "http_head.h"
#include "log.h"
#include "route.h"
#include "route_table.h"
#include "splice.h"
#include "tunnels.h"
#include "upstream.h"

enum ds_state {
  DS_SNIFF,         /* accepted; waiting up to --sniff-timeout-ms for the first bytes */
  DS_RAW_CONNECT,   /* raw TCP: connecting to the fallback; client bytes wait in input */
  DS_IDLE,          /* HTTP keep-alive between requests; --idle-timeout-ms running */
  DS_READ_HEAD,     /* parsing a request head; --header-timeout-ms running */
  DS_FORWARD_BODY,  /* head sent upstream; relaying the request body as it arrives */
  DS_WAIT_RESPONSE, /* request fully sent; relaying the response; client input buffered */
  DS_UPGRADED,      /* 101 or raw: handed to a splice; this object is going away */
  DS_CLOSING,       /* last bytes queued to the client: flush, half-close, linger, free */
};

static const char *const state_names[] = {"sniff",        "raw-connect",   "idle",
                                          "read-head",    "forward-body",  "wait-response",
                                          "upgraded",     "closing"};

#define LINGER_MS 1000       /* after our last byte: read and discard, then close */
#define MAX_HEADER_FIELDS 256
#define SNIFF_MAX_METHOD 24  /* longer first token: not HTTP */

struct downstream {
  struct agent *ag;
  struct bufferevent *bev;
  struct event *timer;       /* sniff / idle / header / linger, by state */
  struct event *flush_ev;    /* bulk output: one send at the end of the loop turn */
  enum ds_state state;
  uint16_t port;             /* service port the client connected to */
  struct agent_listener *li; /* its listener: fallback address and pool */
  char peer[64];             /* client "ip:port" */
  char client_ip[48];        /* client address alone, for X-Forwarded-For / Forwarded */

  llhttp_t *req;             /* allocated on the first HTTP request */
  llhttp_t *resp;
  struct http_head head;     /* current request head */
  size_t head_bytes;         /* raw bytes of the current head consumed so far */

  struct upstream *up;       /* where the current request goes */
  struct pool *up_pool;      /* its pool: fallback, or the developer tunnel's */
  char route[DNS_LABEL_MAX + 1]; /* the current request's key, "" = fallback */
  struct route_match match;  /* how it was routed: a retry injects the same lines */
  char req_upgrade[128];     /* the request's Upgrade list, if it asked for one */
  char resp_field[16];       /* response parser: the current field name (short ones) */
  char resp_upgrade[128];    /* response parser: the Upgrade header of the response */
  uint8_t method;
  uint8_t close_reason;      /* enum metrics_close, set by the first decision to end */
  unsigned busy;
  TAILQ_ENTRY(downstream) link; /* in ag->clients until freed or handed off */

  unsigned dead : 1;         /* ds_close() called; freed when busy drops to 0 */
  unsigned flush_queued : 1; /* flush_ev is active */
  unsigned handed_off : 1;   /* bev belongs to a splice now */
  unsigned head_init : 1;
  unsigned too_big : 1;      /* the head hit a limit inside a parser callback */
  unsigned hdrs_done : 1;    /* request parser paused at the end of the head */
  unsigned msg_done : 1;     /* request parser paused at the end of the message */
  unsigned req_paused : 1;   /* request parser needs llhttp_resume() */
  unsigned req_done : 1;     /* the whole request went upstream */
  unsigned req_has_body : 1;
  unsigned req_keepalive : 1;
  unsigned resp_msg_done : 1;   /* response parser paused at the end of a message */
  unsigned resp_started : 1;    /* bytes of the final response went to the client */
  unsigned up_eof : 1;          /* upstream finished sending */
  unsigned client_eof : 1;      /* client half-closed */
  unsigned wait_up_drain : 1;   /* client reads off: upstream output above high mark */
  unsigned wait_client_drain : 1; /* upstream reads off: client output above high mark */
  unsigned retried : 1;         /* the request was re-sent once on a fresh upstream */
  unsigned req_wants_upgrade : 1; /* Upgrade + Connection: upgrade (101 allowed) */
  unsigned resp_in_upgrade : 1; /* response parser: inside an Upgrade field's value */
  unsigned resp_field_long : 1; /* response parser: field name longer than resp_field */
  unsigned resp_upgrade_long : 1; /* response parser: Upgrade list did not fit: refused */
};

static void ds_free(struct downstream *ds);
static void client_flush(struct downstream *ds);
static void process_request(struct downstream *ds);
static void process_response(struct downstream *ds);
static void up_read(struct upstream *u, void *arg);
static void up_event(struct upstream *u, int what, void *arg);

/* --- lifetime ------------------------------------------------------------------ */

static void ds_enter(struct downstream *ds) { ds->busy++; }

/* The outermost entry point writes what it queued for the client itself. */
static void ds_leave(struct downstream *ds) {
  if (ds->busy == 1 && !ds->dead && !ds->handed_off) client_flush(ds);
  if (--ds->busy == 0 && ds->dead) ds_free(ds);
}

/* Remember why the connection ends (the first reason given wins). */
static void close_reason(struct downstream *ds, enum metrics_close r) {
  if (!ds->close_reason) ds->close_reason = (uint8_t)r;
}

/* Response buffering per connection: the --buffer-budget shared by the open
 * connections, between 4 and 32 KiB. Used for the client's output (upstream
 * reads pause above it), the upstream's input and the client's input, so a
 * client that never reads holds a few of these, not 512 KiB, and the total
 * stays near the budget however many connect. */
static size_t conn_share(const struct agent *ag) {
  long conns = ag->stats.connections_open > 0 ? ag->stats.connections_open : 1;
  size_t share = (size_t)ag->opt->buffer_budget / (size_t)conns;
  if (share < 4096) share = 4096;
  if (share > 32768) share = 32768;
  return share;
}

static void ds_close(struct downstream *ds) {
  ds->dead = 1;
  if (ds->busy == 0) ds_free(ds);
}

static void ds_free(struct downstream *ds) {
  if (!ds->handed_off) TAILQ_REMOVE(&ds->ag->clients, ds, link);
  if (ds->timer) event_free(ds->timer);
  if (ds->flush_ev) event_free(ds->flush_ev);
  if (ds->up) upstream_free(ds->up);
  if (ds->bev && !ds->handed_off) bufferevent_free(ds->bev);
  if (ds->head_init) http_head_free(&ds->head);
  free(ds->req);
  free(ds->resp);
  if (!ds->handed_off) {
    ds->ag->stats.closes[ds->close_reason]++;
    agent_conn_closed(ds->ag);
  }
  free(ds);
}

static void set_timer(struct downstream *ds, long ms) {
  struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
  evtimer_add(ds->timer, &tv);
}

/* Stop serving: queue nothing more, flush what is queued, then half-close and
 * linger (read and discard) so the client sees our last bytes rather than a
 * reset caused by unread request bytes. */
static void start_closing(struct downstream *ds) {
  if (ds->up) {
    upstream_free(ds->up);
    ds->up = NULL;
  }
  ds->state = DS_CLOSING;
  evtimer_del(ds->timer);
  bufferevent_disable(ds->bev, EV_READ);
  if (evbuffer_get_length(bufferevent_get_output(ds->bev)) == 0) {
    shutdown(bufferevent_getfd(ds->bev), SHUT_WR);
    struct evbuffer *in = bufferevent_get_input(ds->bev);
    evbuffer_drain(in, evbuffer_get_length(in));
    bufferevent_enable(ds->bev, EV_READ);
    set_timer(ds, LINGER_MS);
  } else {
    /* client_write() continues when the output is flushed; a client that
     * takes nothing meets the send timeout (here and on the bufferevent) */
    set_timer(ds, ds->ag->opt->send_timeout_ms);
  }
}

/* Answer with an error of our own and close. If the response already started
 * there is no way to say anything: the connection is cut (never a hang). */
static void respond_error(struct downstream *ds, int status, const char *reason,
                          enum metrics_error merr, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void respond_error(struct downstream *ds, int status, const char *reason,
                          enum metrics_error merr, const char *fmt, ...) {
  char body[700];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(body, sizeof body, fmt, ap);
  va_end(ap);
  metrics_count_error(&ds->ag->stats, merr);
  if (ds->resp_started) {
    log_warn("%s: %s (response already started: closing the connection)", ds->peer, body);
    close_reason(ds, MCLOSE_UPSTREAM);
    ds_close(ds);
    return;
  }
  close_reason(ds, MCLOSE_ERROR_RESPONSE);
  log_warn("%s: %d %s", ds->peer, status, body);
  evbuffer_add_printf(bufferevent_get_output(ds->bev),
                      "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                      "Content-Length: %zu\r\nConnection: close\r\n\r\n%s\n",
                      status, reason, strlen(body) + 1, body);
  ds->resp_started = 1;
  start_closing(ds);
}

/* --- llhttp callbacks ------------------------------------------------------------ */

static int req_message_begin(llhttp_t *p) {
  struct downstream *ds = p->data;
  http_head_reset(&ds->head);
  return 0;
}
static int req_url(llhttp_t *p, const char *at, size_t len) {
  struct downstream *ds = p->data;
  if (http_head_add_url(&ds->head, at, len) < 0) {
    ds->too_big = 1;
    return HPE_USER;
  }
  return 0;
}
static int req_field(llhttp_t *p, const char *at, size_t len) {
  struct downstream *ds = p->data;
  if (http_head_add_name(&ds->head, at, len) < 0) {
    ds->too_big = 1;
    return HPE_USER;
  }
  return 0;
}
static int req_value(llhttp_t *p, const char *at, size_t len) {
  struct downstream *ds = p->data;
  if (http_head_add_value(&ds->head, at, len) < 0) {
    ds->too_big = 1;
    return HPE_USER;
  }
  return 0;
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

/* --- handing a connection to a splice -------------------------------------------- */

/* Client and upstream become one raw byte pipe (raw mode, or after a 101).
 * Bytes already buffered on either side are forwarded by the splice. */
static void hand_to_splice(struct downstream *ds) {
  struct upstream *u = ds->up;
  ds->up = NULL;
  evtimer_del(ds->timer);
  bufferevent_setcb(ds->bev, NULL, NULL, NULL, NULL);
  bufferevent_setwatermark(ds->bev, EV_WRITE, 0, 0);
  /* The send timeout stays: a splice turns EV_WRITE on only while bytes wait
   * for the client, so a raw or upgraded client that stops reading is cut
   * after --send-timeout-ms too ("side a: timed out", counted in main.c). */
  struct splice_end a = {ds->bev, NULL};
  struct splice_end b = upstream_release(u);
  ds->handed_off = 1;
  TAILQ_REMOVE(&ds->ag->clients, ds, link);
  ds->state = DS_UPGRADED;
  if (agent_splice(ds->ag, a, b, AGENT_SPLICE_CLIENT) < 0) {
    log_err("%s: cannot start a splice (out of memory)", ds->peer);
    agent_conn_closed(ds->ag);
  }
  ds_close(ds);
}

/* --- raw mode ------------------------------------------------------------------------ */

static void raw_up_event(struct upstream *u, int what, void *arg) {
  struct downstream *ds = arg;
  ds_enter(ds);
  if (what & UPSTREAM_EV_CONNECTED) {
    hand_to_splice(ds);
  } else if (what & (UPSTREAM_EV_ERROR | UPSTREAM_EV_EOF)) {
    char fb[300];
    metrics_count_error(&ds->ag->stats, u->fail == UPSTREAM_FAIL_DNS ? MERR_FALLBACK_DNS
                                                                       : MERR_FALLBACK_UNREACHABLE);
    log_warn("%s: raw connection: original pods unreachable at %s: %s", ds->peer,
             addr_format(ds->li->fallback, fb, sizeof fb), u->err);
    ds_close(ds);
  }
  ds_leave(ds);
}

static void go_raw(struct downstream *ds) {
  struct agent *ag = ds->ag;
  evtimer_del(ds->timer);
  bufferevent_disable(ds->bev, EV_READ);
  ag->stats.raw_connections++;
  struct agent_tunnel *at = ag->opt->exclusive ? tunnels_exclusive(ag) : NULL;
  if (at) {
    ds->up = tunnels_open_stream(at, ds->port, ds->peer);
    if (ds->up) {
      log_debug("%s: raw connection to developer %s", ds->peer, at->key);
      hand_to_splice(ds);
      return;
    }
  }
  log_debug("%s: raw connection to the fallback", ds->peer);
  ds->state = DS_RAW_CONNECT;
  ds->up = upstream_connect_tcp(ag, ds->li->fallback, NULL, raw_up_event, ds);
  if (!ds->up) ds_close(ds);
}

/* First bytes: "TOKEN " where TOKEN is an upper-case method name -> HTTP,
 * except the HTTP/2 connection preface.
 * Returns 1 (HTTP), 0 (raw), -1 (undecided: need more bytes). */
static int sniff(struct evbuffer *in) {
  char buf[SNIFF_MAX_METHOD + 1];
  ev_ssize_t n = evbuffer_copyout(in, buf, sizeof buf);
  for (ev_ssize_t i = 0; i < n; i++) {
    char c = buf[i];
    if (c == ' ') /* "PRI * HTTP/2.0": HTTP/2 prior knowledge (gRPC h2c) is passed raw */
      return i > 0 && !(i == 3 && memcmp(buf, "PRI", 3) == 0);
    if (!((c >= 'A' && c <= 'Z') || c == '-' || c == '_')) return 0;
  }
  return n > SNIFF_MAX_METHOD ? 0 : -1;
}

/* --- HTTP: requests -------------------------------------------------------------- */

/* The upstream failed before answering: say why, in the client's terms. */
static void upstream_failed(struct downstream *ds, struct upstream *u, const char *what) {
  char fb[300];
  if (!ds->route[0]) {
    addr_format(ds->li->fallback, fb, sizeof fb);
    if (u->fail == UPSTREAM_FAIL_DNS)
      respond_error(ds, 503, "Service Unavailable", MERR_FALLBACK_DNS,
                    "kbridge: original pods unreachable at %s: no address resolves (%s)", fb,
                    u->err);
    else if (u->fail == UPSTREAM_FAIL_CONNECT)
      respond_error(ds, 502, "Bad Gateway", MERR_FALLBACK_UNREACHABLE,
                    "kbridge: original pods unreachable at %s: %s", fb, u->err);
    else
      respond_error(ds, 502, "Bad Gateway", MERR_UPSTREAM_CLOSED,
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
    respond_error(ds, 502, "Bad Gateway", MERR_ROUTE_FAILED, "kbridge: route \"%s\": %s (%s)",
                  ds->route, cause, u->err);
  else
    respond_error(ds, 502, "Bad Gateway", MERR_ROUTE_FAILED, "kbridge: route \"%s\": %s",
                  ds->route, what);
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
  if (u) upstream_set_read_max(u, conn_share(ag));
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
    respond_error(ds, 400, "Bad Request", MERR_BAD_REQUEST, "kbridge: bad request: %s",
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
      respond_error(ds, 502, "Bad Gateway", MERR_ROUTE_FAILED,
                    "kbridge: route \"%s\": developer's tunnel is closing", ds->route);
    else
      respond_error(ds, 503, "Service Unavailable", MERR_FALLBACK_UNREACHABLE,
                    "kbridge: out of memory");
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
      respond_error(ds, 503, "Service Unavailable", MERR_BAD_RESPONSE, "kbridge: out of memory");
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
    respond_error(ds, 431, "Request Header Fields Too Large", MERR_HEAD_TOO_LARGE,
                  "kbridge: request head larger than %ld bytes", ds->ag->opt->max_header_bytes);
    return;
  }
  const char *reason = llhttp_get_error_reason(ds->req);
  respond_error(ds, 400, "Bad Request", MERR_BAD_REQUEST, "kbridge: bad request: %s",
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
          ds_close(ds);
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
      set_timer(ds, ds->ag->opt->header_timeout_ms);
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
static void after_client_eof(struct downstream *ds) {
  if (!ds->client_eof || ds->dead) return;
  int more = evbuffer_get_length(bufferevent_get_input(ds->bev)) > 0 || ds->wait_up_drain;
  if (more) return;
  if (ds->state == DS_IDLE) {
    start_closing(ds); /* every request answered */
  } else if (ds->state == DS_READ_HEAD || ds->state == DS_FORWARD_BODY) {
    metrics_count_error(&ds->ag->stats, MERR_CLIENT_ABORTED);
    log_debug("%s: client closed in the middle of a request (%s)", ds->peer,
              state_names[ds->state]);
    close_reason(ds, MCLOSE_ABORTED);
    start_closing(ds); /* the answers already queued still go out */
  }
}

static void process_request(struct downstream *ds) {
  process_request_bytes(ds);
  after_client_eof(ds);
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
  set_timer(ds, ds->ag->opt->idle_timeout_ms);
  if (!ds->client_eof) bufferevent_enable(ds->bev, EV_READ);
  process_request(ds);
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
    start_closing(ds);
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
  close_reason(ds, MCLOSE_UPSTREAM);
  ds_close(ds);
}

/* Relay upstream bytes to the client, parsing only to find where the response
 * ends. Stops while the client's output is above the high mark. */
static void process_response(struct downstream *ds) {
  while (!ds->dead && ds->up) {
    struct evbuffer *in = upstream_input(ds->up);
    struct evbuffer *out = bufferevent_get_output(ds->bev);
    if (evbuffer_get_length(in) == 0) break;
    if (ds->state != DS_FORWARD_BODY && ds->state != DS_WAIT_RESPONSE) return;
    size_t share = conn_share(ds->ag), queued = evbuffer_get_length(out);
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
        respond_error(ds, 502, "Bad Gateway", MERR_BAD_RESPONSE,
                      "kbridge: %s%s%s sent a malformed response: %s",
                      ds->route[0] ? "route \"" : "original pods",
                      ds->route[0] ? ds->route : "", ds->route[0] ? "\"" : "",
                      r ? r : llhttp_errno_name(e));
      } else {
        metrics_count_error(&ds->ag->stats, MERR_BAD_RESPONSE);
        log_warn("%s: malformed response after it started: %s; closing", ds->peer,
                 r ? r : llhttp_errno_name(e));
        close_reason(ds, MCLOSE_UPSTREAM);
        ds_close(ds);
      }
      return;
    }
    int switching = e == HPE_PAUSED_UPGRADE ||
                    (e == HPE_PAUSED && ds->resp_msg_done && llhttp_get_status_code(ds->resp) == 101);
    if (switching && llhttp_get_status_code(ds->resp) == 101 && !upgrade_allowed(ds)) {
      respond_error(ds, 502, "Bad Gateway", MERR_BAD_RESPONSE,
                    "kbridge: %s%s%s answered 101 Switching Protocols (Upgrade: %s) to a request "
                    "that did not ask for %s",
                    ds->route[0] ? "route \"" : "original pods", ds->route[0] ? ds->route : "",
                    ds->route[0] ? "\"" : "", ds->resp_upgrade[0] ? ds->resp_upgrade : "none",
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
        hand_to_splice(ds);
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
  ds_enter(ds);
  if (!ds->wait_client_drain) process_response(ds);
  ds_leave(ds);
}

static void up_event(struct upstream *u, int what, void *arg) {
  struct downstream *ds = arg;
  ds_enter(ds);
  if (what & UPSTREAM_EV_WRITABLE) {
    /* The upstream decides when it is writable again (a TCP upstream at its
     * write low-water mark, a tunnel stream at half its window): resume then;
     * process_request() re-checks the high mark. */
    if (ds->wait_up_drain) {
      ds->wait_up_drain = 0;
      bufferevent_enable(ds->bev, EV_READ);
      process_request(ds);
    }
  } else if (what & UPSTREAM_EV_EOF) {
    ds->up_eof = 1;
    if (!ds->wait_client_drain) process_response(ds);
  } else if (what & UPSTREAM_EV_ERROR) {
    if (!maybe_retry(ds)) {
      char why[300];
      snprintf(why, sizeof why, "connection failed: %s", u->err);
      upstream_failed(ds, u, why);
    }
  }
  ds_leave(ds);
}

/* --- client bufferevent callbacks -------------------------------------------------- */

/* Writing to the client: the bufferevent's EV_WRITE stays disabled while its
 * output is empty, and the outermost entry point (ds_leave) sends what was
 * queued with one sendmsg() (splice_write_now). Only what the socket does not take at once goes
 * through libevent (EV_WRITE enabled until the output is empty again, see
 * client_write). Letting libevent write everything armed and disarmed EV_WRITE
 * around every response: two epoll_ctl and a loop turn per request. Bulk
 * output (SPLICE_WRITE_NOW_MAX and more: a response body arriving a DATA frame
 * per callback) is sent once at the end of the loop turn (client_flush_later),
 * not through libevent's EV_WRITE on the next turn. */
static void client_flush_later(evutil_socket_t fd, short what, void *arg);

static void client_flush(struct downstream *ds) {
  for (;;) {
    struct evbuffer *out = bufferevent_get_output(ds->bev);
    size_t len = evbuffer_get_length(out);
    if (len == 0 || (bufferevent_get_enabled(ds->bev) & EV_WRITE)) return;
    if (len >= SPLICE_WRITE_NOW_MAX && ds->state != DS_CLOSING) {
      if (!ds->flush_ev)
        ds->flush_ev = event_new(ds->ag->base, -1, 0, client_flush_later, ds);
      if (!ds->flush_ev) {
        bufferevent_enable(ds->bev, EV_WRITE); /* out of memory: libevent writes */
      } else if (!ds->flush_queued) {
        ds->flush_queued = 1;
        event_active(ds->flush_ev, EV_WRITE, 0);
      }
      return;
    }
    if (splice_write_now(ds->bev) > 0) {
      bufferevent_enable(ds->bev, EV_WRITE); /* the rest, or the error, through libevent */
      return;
    }
    if (ds->state == DS_CLOSING) {
      start_closing(ds);
      return;
    }
    if (!ds->wait_client_drain) return;
    ds->wait_client_drain = 0; /* room again: relay more of the response */
    if (ds->up) upstream_pause_read(ds->up, 0);
    process_response(ds);
    if (ds->dead || ds->handed_off) return;
  }
}

static void client_read(struct bufferevent *bev, void *arg) {
  struct downstream *ds = arg;
  ds_enter(ds);
  struct evbuffer *in = bufferevent_get_input(bev);
  switch (ds->state) {
  case DS_SNIFF: {
    int r = sniff(in);
    if (r == 0) {
      go_raw(ds);
    } else if (r == 1) {
      ds->state = DS_IDLE;
      evtimer_del(ds->timer);
      process_request(ds);
    }
    break;
  }
  case DS_IDLE:
  case DS_READ_HEAD:
  case DS_FORWARD_BODY:
    splice_read_more(bev, conn_share(ds->ag)); /* request bodies: 4 KiB reads otherwise */
    process_request(ds);
    break;
  case DS_CLOSING:
    evbuffer_drain(in, evbuffer_get_length(in));
    break;
  default:
    break;
  }
  ds_leave(ds);
}

/* The end of the loop turn that queued bulk output: one sendmsg() of all of
 * it; EV_WRITE only for what the socket did not take. Then as client_write. */
static void client_flush_later(evutil_socket_t fd, short what, void *arg) {
  struct downstream *ds = arg;
  ds_enter(ds);
  ds->flush_queued = 0;
  if (!ds->dead && !ds->handed_off && !(bufferevent_get_enabled(ds->bev) & EV_WRITE)) {
    if (splice_write_now(ds->bev) > 0) {
      bufferevent_enable(ds->bev, EV_WRITE);
    } else if (ds->state == DS_CLOSING) {
      start_closing(ds);
    } else if (ds->wait_client_drain) {
      ds->wait_client_drain = 0; /* room again: relay more of the response */
      if (ds->up) upstream_pause_read(ds->up, 0);
      process_response(ds);
    }
  }
  ds_leave(ds);
}

/* libevent wrote (EV_WRITE enabled by client_flush): at the low mark, resume a
 * paused response; once empty, back to direct writes. */
static void client_write(struct bufferevent *bev, void *arg) {
  struct downstream *ds = arg;
  ds_enter(ds);
  int empty = evbuffer_get_length(bufferevent_get_output(bev)) == 0;
  if (empty) bufferevent_disable(bev, EV_WRITE);
  if (ds->state == DS_CLOSING) {
    if (empty) start_closing(ds);
  } else if (ds->wait_client_drain) {
    ds->wait_client_drain = 0;
    if (ds->up) upstream_pause_read(ds->up, 0);
    process_response(ds);
  }
  ds_leave(ds);
}

static void client_event(struct bufferevent *bev, short what, void *arg) {
  struct downstream *ds = arg;
  ds_enter(ds);
  if (what & BEV_EVENT_EOF) {
    ds->client_eof = 1;
    switch (ds->state) {
    case DS_SNIFF:
      if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
        go_raw(ds); /* a few bytes then EOF: let the fallback decide */
      else
        ds_close(ds);
      break;
    case DS_READ_HEAD:
    case DS_FORWARD_BODY:
      after_client_eof(ds); /* aborted, unless buffered bytes wait for the upstream */
      break;
    case DS_WAIT_RESPONSE:
      break; /* half-close after a full request: finish the responses, then close */
    case DS_IDLE:
      start_closing(ds); /* flush the last response first */
      break;
    default:
      ds_close(ds);
      break;
    }
  } else if (what & BEV_EVENT_TIMEOUT) {
    log_info("%s: client took no bytes for %ld ms (%zu queued, %s): closing", ds->peer,
             ds->ag->opt->send_timeout_ms, evbuffer_get_length(bufferevent_get_output(bev)),
             state_names[ds->state]);
    close_reason(ds, MCLOSE_SEND_TIMEOUT);
    ds_close(ds);
  } else if (what & BEV_EVENT_ERROR) {
    log_debug("%s: client connection error in %s: %s", ds->peer, state_names[ds->state],
              evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
    close_reason(ds, MCLOSE_CLIENT_ERROR);
    ds_close(ds);
  }
  ds_leave(ds);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg) {
  struct downstream *ds = arg;
  ds_enter(ds);
  switch (ds->state) {
  case DS_SNIFF:
    go_raw(ds); /* silent client: a server-speaks-first protocol */
    break;
  case DS_READ_HEAD:
    respond_error(ds, 408, "Request Timeout", MERR_HEAD_TIMEOUT,
                  "kbridge: request head not received within %ld ms",
                  ds->ag->opt->header_timeout_ms);
    break;
  case DS_IDLE:
    log_debug("%s: idle keep-alive connection closed", ds->peer);
    close_reason(ds, MCLOSE_IDLE_TIMEOUT);
    ds_close(ds);
    break;
  case DS_CLOSING:
    if (evbuffer_get_length(bufferevent_get_output(ds->bev)) > 0) {
      log_info("%s: closing connection: client took no bytes for %ld ms", ds->peer,
               ds->ag->opt->send_timeout_ms);
      close_reason(ds, MCLOSE_SEND_TIMEOUT);
    }
    ds_close(ds);
    break;
  default:
    ds_close(ds);
    break;
  }
  ds_leave(ds);
}

int downstream_accept(struct agent_listener *li, evutil_socket_t fd, const struct sockaddr *sa) {
  struct agent *ag = li->ag;
  struct downstream *ds = calloc(1, sizeof *ds);
  if (ds) {
    ds->bev = bufferevent_socket_new(ag->base, fd, BEV_OPT_CLOSE_ON_FREE);
    ds->timer = evtimer_new(ag->base, timer_cb, ds);
  }
  if (!ds || !ds->bev || !ds->timer) {
    if (ds && ds->bev)
      bufferevent_free(ds->bev);
    else
      evutil_closesocket(fd);
    if (ds && ds->timer) event_free(ds->timer);
    free(ds);
    log_err("out of memory accepting a connection");
    return -1;
  }
  ds->ag = ag;
  ds->port = li->port;
  ds->li = li;
  ds->state = DS_SNIFF;
  addr_format_sa(sa, ds->peer, sizeof ds->peer);
  addr_ip_sa(sa, ds->client_ip, sizeof ds->client_ip);
  agent_conn_opened(ag);
  TAILQ_INSERT_TAIL(&ag->clients, ds, link);
  int one = 1; /* responses are relayed as they come: no Nagle delay on them */
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  bufferevent_setcb(ds->bev, client_read, client_write, client_event, ds);
  /* Input beyond the high mark is not read (pipelined bytes while a response
   * is relayed, or a body faster than the upstream takes it). */
  size_t share = conn_share(ag);
  bufferevent_setwatermark(ds->bev, EV_WRITE, share / 4, 0); /* client_write resumes there */
  bufferevent_setwatermark(ds->bev, EV_READ, 0, share);
  bufferevent_set_max_single_write(ds->bev, AGENT_HIGH_WATER); /* default: 16 KiB per write */
  /* Send timeout: libevent's write timeout runs only while EV_WRITE is on,
   * i.e. while bytes wait for the client (client_flush), and restarts at
   * every write that makes progress. */
  struct timeval st = {ag->opt->send_timeout_ms / 1000, (ag->opt->send_timeout_ms % 1000) * 1000};
  bufferevent_set_timeouts(ds->bev, NULL, &st);
  bufferevent_enable(ds->bev, EV_READ); /* EV_WRITE: see client_flush() */
  set_timer(ds, ag->opt->sniff_timeout_ms);
  return 0;
}

void downstream_close_all(struct agent *ag) {
  struct downstream *ds;
  while ((ds = TAILQ_FIRST(&ag->clients))) {
    close_reason(ds, MCLOSE_SHUTDOWN);
    ds_free(ds);
  }
}
