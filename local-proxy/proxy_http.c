/* proxy_http.c: the local HTTP and SOCKS5 proxy of `kbridge connect`
 * (proxy_listen_http in proxy.h).
 *
 * One port speaks both: a connection whose first byte is 5 is SOCKS5 (RFC
 * 1928, CONNECT without authentication, names resolved by us: socks5h), any
 * other an HTTP/1.x request to a proxy: CONNECT host:port (a tunnel, HTTPS),
 * or an absolute-form http:// request, forwarded once in origin form with
 * "Connection: close" (each connection carries one request, so one connection
 * never mixes targets). The target is reached like a listener's: an outbound
 * stream the agent dials from inside the cluster, or a plain connection for a
 * loopback address. Until the target is chosen the connection is ours (a
 * head or handshake within HANDSHAKE_TIMEOUT_S); then it is a splice.
 *
 * There is no "connected" answer in the tunnel protocol: CONNECT and SOCKS
 * are answered as soon as the stream is open, and a target the agent cannot
 * reach (an unknown name, a refused port) closes the connection; the log
 * says why (the stream's reset reason, "outbound stream: ... to NAME"). */
#include "proxy_internal.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>
#include <llhttp.h>

#include "http_head.h"
#include "route.h"
#include "splice.h"

#define HANDSHAKE_TIMEOUT_S 30
#define HEAD_MAX (64 * 1024)

enum pc_state { PC_START, PC_SOCKS_HELLO, PC_SOCKS_REQUEST, PC_HTTP_HEAD, PC_LOCAL_DIAL };
enum pc_kind { PC_SOCKS, PC_CONNECT, PC_HTTP };

struct pconn {
  struct proxy *px;
  struct forward *fw;
  struct bufferevent *bev;   /* the client */
  struct bufferevent *local; /* PC_LOCAL_DIAL: the loopback target being connected */
  enum pc_state state;
  enum pc_kind kind;
  struct http_head head;
  int head_init;
  struct hostport target;
  struct evbuffer *first;    /* PC_HTTP: the rewritten head, for the target first */
  char peer[64];
};

static void pc_free(struct pconn *pc) {
  if (pc->bev) bufferevent_free(pc->bev);
  if (pc->local) bufferevent_free(pc->local);
  if (pc->first) evbuffer_free(pc->first);
  if (pc->head_init) http_head_free(&pc->head);
  free(pc);
}

/* An answer to the client, then close once it is written. */
static void close_after_write(struct bufferevent *bev, short what, void *arg) {
  bufferevent_free(bev);
}
static void drained(struct bufferevent *bev, void *arg) {
  if (evbuffer_get_length(bufferevent_get_output(bev)) == 0) bufferevent_free(bev);
}
static void pc_refuse(struct pconn *pc, const char *answer, size_t len, const char *why) {
  log_info("%s: connection from %s refused: %s", pc->fw->name, pc->peer, why);
  struct bufferevent *bev = pc->bev;
  pc->bev = NULL;
  pc_free(pc);
  bufferevent_disable(bev, EV_READ);
  bufferevent_setcb(bev, NULL, drained, close_after_write, NULL);
  bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
  if (len == 0 || bufferevent_write(bev, answer, len) < 0) bufferevent_free(bev);
}
static void pc_refuse_http(struct pconn *pc, int code, const char *reason, const char *why) {
  char body[400], buf[800];
  int bl = snprintf(body, sizeof body, "kbridge: proxy: %s\n", why);
  int n = snprintf(buf, sizeof buf,
                   "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                   "Connection: close\r\n\r\n%s",
                   code, reason, bl, body);
  pc_refuse(pc, buf, n > 0 && (size_t)n < sizeof buf ? (size_t)n : 0, why);
}
static void pc_refuse_socks(struct pconn *pc, unsigned char rep, const char *why) {
  unsigned char r[10] = {5, rep, 0, 1, 0, 0, 0, 0, 0, 0};
  pc_refuse(pc, (const char *)r, sizeof r, why);
}
static void pc_refuse_kind(struct pconn *pc, const char *why) {
  if (pc->kind == PC_SOCKS)
    pc_refuse_socks(pc, 4 /* host unreachable */, why);
  else
    pc_refuse_http(pc, 502, "Bad Gateway", why);
}

static int is_loopback(const char *host) {
  struct in_addr a4;
  struct in6_addr a6;
  if (strcmp(host, "localhost") == 0) return 1;
  if (inet_pton(AF_INET, host, &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
  if (inet_pton(AF_INET6, host, &a6) == 1) return IN6_IS_ADDR_LOOPBACK(&a6);
  return 0;
}

/* The target is reached through b: answer the client, send what goes first,
 * and splice. */
static void pc_splice(struct pconn *pc, struct splice_end b) {
  struct proxy *px = pc->px;
  struct link *l = calloc(1, sizeof *l);
  char tgt[300];
  addr_format(&pc->target, tgt, sizeof tgt);
  if (pc->kind == PC_SOCKS) {
    static const unsigned char ok[10] = {5, 0, 0, 1, 0, 0, 0, 0, 0, 0};
    bufferevent_write(pc->bev, ok, sizeof ok);
  } else if (pc->kind == PC_CONNECT) {
    static const char ok[] = "HTTP/1.1 200 Connection established\r\n\r\n";
    bufferevent_write(pc->bev, ok, sizeof ok - 1);
  }
  if (pc->first) {
    if (b.bev)
      bufferevent_write_buffer(b.bev, pc->first);
    else
      tunnel_stream_write_buffer(b.stream, pc->first);
  }
  struct splice_end a = {.bev = pc->bev};
  /* A CONNECT or SOCKS tunnel may carry plain HTTP: its requests get the
   * route lines like a listener's. A forwarded http:// request got them in
   * its rewritten head; what follows is its body. */
  if (!px->cfg->no_propagate && pc->kind != PC_HTTP) {
    char what[400];
    snprintf(what, sizeof what, "%.100s -> %.280s", pc->fw->name, tgt);
    a.filter = propagate_filter(px->cfg->key, what, &px->prop);
  }
  if (l) {
    l->px = px;
    snprintf(l->what, sizeof l->what, "%.100s: %s from %.64s to %.280s", pc->fw->name,
             pc->kind == PC_SOCKS ? "SOCKS5" : pc->kind == PC_CONNECT ? "CONNECT" : "request",
             pc->peer, tgt);
    log_debug("%s: opened", l->what);
  }
  bufferevent_setcb(pc->bev, NULL, NULL, NULL, NULL);
  bufferevent_set_timeouts(pc->bev, NULL, NULL);
  pc->bev = NULL;
  if (pc->local) { /* b.bev is pc->local */
    bufferevent_setcb(pc->local, NULL, NULL, NULL, NULL);
    bufferevent_set_timeouts(pc->local, NULL, NULL);
    pc->local = NULL;
  }
  pc_free(pc);
  if (!l) {
    splice_new(a, b, NULL, NULL); /* out of memory: it ends at once or runs unlogged */
    return;
  }
  splice_new(a, b, px_link_done, l);
}

static void local_event(struct bufferevent *bev, short what, void *arg) {
  struct pconn *pc = arg;
  if (what & BEV_EVENT_CONNECTED) {
    px_set_nodelay(bufferevent_getfd(bev));
    struct splice_end b = {.bev = bev};
    pc_splice(pc, b);
    return;
  }
  char why[400], tgt[300];
  snprintf(why, sizeof why, "cannot connect to %s: %s", addr_format(&pc->target, tgt, sizeof tgt),
           evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
  pc_refuse_kind(pc, why);
}

/* The target is known (pc->target): dial it. */
static void pc_go(struct pconn *pc) {
  struct proxy *px = pc->px;
  bufferevent_disable(pc->bev, EV_READ); /* the splice reads what comes next */
  if (is_loopback(pc->target.host)) {
    struct resolved addrs[MAX_ADDRS];
    size_t n = 0;
    char err[300];
    const char *host = strcmp(pc->target.host, "localhost") == 0 ? "127.0.0.1" : pc->target.host;
    if (px_resolve(host, pc->target.port, 0, addrs, &n, err, sizeof err) < 0) {
      pc_refuse_kind(pc, err);
      return;
    }
    pc->local = bufferevent_socket_new(px->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!pc->local) {
      pc_refuse_kind(pc, "out of memory");
      return;
    }
    bufferevent_setcb(pc->local, NULL, NULL, local_event, pc);
    pc->state = PC_LOCAL_DIAL;
    if (bufferevent_socket_connect(pc->local, (struct sockaddr *)&addrs[0].ss, (int)addrs[0].len) <
        0) {
      pc_refuse_kind(pc, "cannot connect");
    }
    return;
  }
  struct tunnel *t = px_pick_tunnel(px);
  if (!t) {
    if (pc->kind == PC_SOCKS)
      pc_refuse_socks(pc, 1, "no tunnel to the agent is up");
    else
      pc_refuse_http(pc, 503, "Service Unavailable", "no tunnel to the agent is up");
    return;
  }
  struct frame_open o;
  memset(&o, 0, sizeof o);
  o.kind = FRAME_OPEN_OUTBOUND;
  o.port = (uint16_t)pc->target.port;
  snprintf(o.peer, sizeof o.peer, "%s", pc->peer);
  snprintf(o.target_host, sizeof o.target_host, "%s", pc->target.host);
  struct tunnel_stream *s = tunnel_stream_open(t, &o);
  if (!s) {
    pc_refuse_kind(pc, "cannot open a stream to the agent");
    return;
  }
  struct splice_end b = {.stream = s};
  pc_splice(pc, b);
}

/* ---- SOCKS5 ---- */

/* Steps: 1 when done (pc handed on or freed), 0 after progress, -1 when
 * more bytes are needed. */
static int socks_step(struct pconn *pc, struct evbuffer *in) {
  unsigned char b[4 + 1 + 255 + 2];
  size_t len = evbuffer_get_length(in);
  if (pc->state == PC_SOCKS_HELLO) {
    if (len < 2) return -1;
    evbuffer_copyout(in, b, 2);
    size_t need = 2 + (size_t)b[1];
    if (len < need) return -1;
    evbuffer_copyout(in, b, need);
    evbuffer_drain(in, need);
    if (memchr(b + 2, 0, b[1]) == NULL) {
      static const unsigned char no[2] = {5, 0xff};
      pc_refuse(pc, (const char *)no, 2, "SOCKS5 without the no-authentication method");
      return 1;
    }
    static const unsigned char yes[2] = {5, 0};
    bufferevent_write(pc->bev, yes, 2);
    pc->state = PC_SOCKS_REQUEST;
    return 0;
  }
  if (len < 5) return -1;
  evbuffer_copyout(in, b, 5);
  size_t need = b[3] == 1 ? 10 : b[3] == 4 ? 22 : b[3] == 3 ? 7 + (size_t)b[4] : 0;
  if (b[0] != 5 || need == 0) {
    pc_refuse_socks(pc, 8, "SOCKS5 request with an unknown address type");
    return 1;
  }
  if (len < need) return -1;
  evbuffer_copyout(in, b, need);
  evbuffer_drain(in, need);
  if (b[1] != 1) {
    pc_refuse_socks(pc, 7, "SOCKS5 command other than CONNECT");
    return 1;
  }
  memset(&pc->target, 0, sizeof pc->target);
  if (b[3] == 1)
    inet_ntop(AF_INET, b + 4, pc->target.host, sizeof pc->target.host);
  else if (b[3] == 4)
    inet_ntop(AF_INET6, b + 4, pc->target.host, sizeof pc->target.host);
  else
    snprintf(pc->target.host, sizeof pc->target.host, "%.*s", (int)b[4], (const char *)b + 5);
  pc->target.port = (b[need - 2] << 8) | b[need - 1];
  if (!pc->target.host[0] || pc->target.port == 0) {
    pc_refuse_socks(pc, 8, "SOCKS5 request without a host or port");
    return 1;
  }
  pc_go(pc);
  return 1;
}

/* ---- HTTP ---- */

/* "http://host[:port]/path" -> pc->target and the path's offset in url
 * (len when there is none). -1 if it is not such a URL. */
static int parse_absolute(const char *url, size_t len, struct hostport *hp, size_t *path_off) {
  if (len < 8 || strncasecmp(url, "http://", 7) != 0) return -1;
  size_t i = 7, end = 7;
  while (end < len && url[end] != '/' && url[end] != '?' && url[end] != '#') end++;
  char auth[300];
  if (end - i == 0 || end - i >= sizeof auth || memchr(url + i, '@', end - i)) return -1;
  memcpy(auth, url + i, end - i);
  auth[end - i] = 0;
  char err[200];
  if (addr_parse(auth, 80, hp, err, sizeof err) < 0 || hp->port == 0) return -1;
  *path_off = end;
  return 0;
}

/* The request again, for the origin: origin-form target, no proxy fields,
 * "Connection: close", the route lines unless it names a route or propagation
 * is off. */
static int rewrite_head(struct pconn *pc, size_t path_off) {
  const struct http_head *h = &pc->head;
  struct evbuffer *out = pc->first = evbuffer_new();
  if (!out) return -1;
  const char *url = h->buf + h->url_off;
  size_t plen = h->url_len - path_off;
  evbuffer_add_printf(out, "%s %s%.*s HTTP/%u.%u\r\n", llhttp_method_name(h->method),
                      plen && url[path_off] == '/' ? "" : "/", (int)plen, url + path_off,
                      h->http_major, h->http_minor);
  int has_host = 0;
  for (size_t i = 0; i < h->nfields; i++) {
    const struct http_field *f = &h->fields[i];
    if (http_head_field_is(h, i, "proxy-connection", 16) ||
        http_head_field_is(h, i, "proxy-authorization", 19) ||
        http_head_field_is(h, i, "connection", 10) || http_head_field_is(h, i, "keep-alive", 10))
      continue;
    has_host |= http_head_field_is(h, i, "host", 4);
    evbuffer_add_printf(out, "%.*s: %.*s\r\n", (int)f->name_len, h->buf + f->name_off,
                        (int)f->value_len, h->buf + f->value_off);
  }
  if (!has_host) {
    char a[300];
    evbuffer_add_printf(out, "Host: %s\r\n", addr_format(&pc->target, a, sizeof a));
  }
  struct route_config rc;
  struct route_match m;
  route_config_default(&rc);
  route_decide(&rc, h, NULL, &m);
  if (!pc->px->cfg->no_propagate && m.source == ROUTE_NONE && http_head_count(h, rc.header) == 0 &&
      http_head_count(h, "baggage") == 0) {
    evbuffer_add_printf(out, "%s: %s\r\nbaggage: %s=%s\r\n", rc.header, pc->px->cfg->key,
                        rc.baggage_member, pc->px->cfg->key);
    pc->px->prop.injected++;
  }
  pc->px->prop.requests++;
  evbuffer_add_printf(out, "Connection: close\r\n\r\n");
  return 0;
}

static int http_step(struct pconn *pc, struct evbuffer *in) {
  size_t len = evbuffer_get_length(in);
  const char *err = NULL;
  if (!pc->head_init) {
    http_head_init(&pc->head, HEAD_MAX, 256);
    pc->head_init = 1;
  }
  const char *buf = (const char *)evbuffer_pullup(in, -1);
  long r = http_head_parse_request(buf, len, &pc->head, &err);
  if (r == 0) {
    if (len <= HEAD_MAX) return -1;
    pc_refuse_http(pc, 431, "Request Header Fields Too Large", "head too large");
    return 1;
  }
  if (r < 0) {
    pc_refuse_http(pc, 400, "Bad Request", err ? err : "not an HTTP/1.x request");
    return 1;
  }
  const struct http_head *h = &pc->head;
  memset(&pc->target, 0, sizeof pc->target);
  if (h->method == HTTP_CONNECT) {
    char auth[300], e2[200];
    snprintf(auth, sizeof auth, "%.*s", (int)h->url_len, h->buf + h->url_off);
    if (addr_parse(auth, 0, &pc->target, e2, sizeof e2) < 0 || pc->target.port == 0) {
      pc_refuse_http(pc, 400, "Bad Request", "CONNECT needs host:port");
      return 1;
    }
    pc->kind = PC_CONNECT;
  } else {
    size_t path_off;
    if (parse_absolute(h->buf + h->url_off, h->url_len, &pc->target, &path_off) < 0) {
      pc_refuse_http(pc, 400, "Bad Request",
                     "a proxy request needs an absolute http:// URL (or CONNECT host:port)");
      return 1;
    }
    pc->kind = PC_HTTP;
    if (rewrite_head(pc, path_off) < 0) {
      pc_refuse_http(pc, 500, "Internal Server Error", "out of memory");
      return 1;
    }
  }
  evbuffer_drain(in, (size_t)r);
  pc_go(pc);
  return 1;
}

static void pc_read(struct bufferevent *bev, void *arg) {
  struct pconn *pc = arg;
  struct evbuffer *in = bufferevent_get_input(bev);
  if (pc->state == PC_START) {
    unsigned char first;
    if (evbuffer_copyout(in, &first, 1) < 1) return;
    pc->state = first == 5 ? PC_SOCKS_HELLO : PC_HTTP_HEAD;
    pc->kind = first == 5 ? PC_SOCKS : PC_HTTP;
  }
  for (;;) {
    int r = pc->state == PC_HTTP_HEAD ? http_step(pc, in) : socks_step(pc, in);
    if (r != 0) return; /* handed on, freed, or waiting for more bytes */
  }
}

static void pc_event(struct bufferevent *bev, short what, void *arg) {
  struct pconn *pc = arg;
  log_debug("%s: connection from %s ended before its target was chosen%s", pc->fw->name, pc->peer,
            (what & BEV_EVENT_TIMEOUT) ? " (timed out)" : "");
  pc_free(pc);
}

void px_http_accept(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa, int salen,
                    void *arg) {
  struct forward *fw = arg;
  struct pconn *pc = calloc(1, sizeof *pc);
  struct bufferevent *bev =
      pc ? bufferevent_socket_new(fw->px->base, fd, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS)
         : NULL;
  if (!bev) {
    free(pc);
    evutil_closesocket(fd);
    log_warn("%s: out of memory", fw->name);
    return;
  }
  px_set_nodelay(fd);
  pc->px = fw->px;
  pc->fw = fw;
  pc->bev = bev;
  addr_format_sa(sa, pc->peer, sizeof pc->peer);
  struct timeval tv = {HANDSHAKE_TIMEOUT_S, 0};
  bufferevent_set_timeouts(bev, &tv, NULL);
  bufferevent_setcb(bev, pc_read, NULL, pc_event, pc);
  bufferevent_enable(bev, EV_READ);
}
