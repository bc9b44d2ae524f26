/* portforward_dial.c: the dial of the pod port-forward carrier (see
 * portforward.h). A struct pf_connecting runs TCP to the API server (each
 * address of its name in turn; through an HTTP CONNECT proxy when there is
 * one), then TLS, then the WebSocket upgrade (portforward_upgrade.c); a
 * checked 101 turns the connection into the carrier of
 * portforward_carrier.c. */
#include "portforward.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <openssl/x509v3.h>

#include "addr.h"
#include "log.h"
#include "netproxy.h"
#include "portforward_internal.h"

#define PF_ADDR_TIMEOUT_MS 3000 /* per address while more addresses remain */


/* ------------------------------------------------------------------------ */
/* Dial: TCP + TLS + the upgrade request and its answer                       */
/* ------------------------------------------------------------------------ */

static void dial_free(struct pf_connecting *d) {
  if (d->dns_req) evdns_getaddrinfo_cancel(d->dns_req); /* resolved() ignores the cancel */
  if (d->ai_list) evutil_freeaddrinfo(d->ai_list);
  if (d->conn_ev) event_free(d->conn_ev);
  if (d->fd >= 0) evutil_closesocket(d->fd);
  if (d->ssl) SSL_free(d->ssl);
  if (d->api) bufferevent_free(d->api);
  if (d->timer) event_free(d->timer);
  free(d->prefix);
  if (d->preq) {
    OPENSSL_cleanse(d->preq, d->preq_len);
    free(d->preq);
  }
  netproxy_clear(&d->proxy);
  if (d->token) {
    OPENSSL_cleanse(d->token, strlen(d->token));
    free(d->token);
  }
  free(d->body);
  free(d);
}

void pf_connect_cancel(struct pf_connecting *c) {
  if (c) dial_free(c);
}

/* Report failure to the user and free everything. */
void pf_dial_fail(struct pf_connecting *d, int http_status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void pf_dial_fail(struct pf_connecting *d, int http_status, const char *fmt, ...) {
  va_list ap;
  int n = snprintf(d->err, sizeof(d->err), "%s: ", d->what);
  va_start(ap, fmt);
  vsnprintf(d->err + n, sizeof(d->err) - (size_t)n, fmt, ap);
  va_end(ap);
  pf_ready_cb cb = d->cb;
  void *arg = d->arg;
  /* The api connection goes first: nothing of it may call us during cb. */
  if (d->api) {
    bufferevent_free(d->api);
    d->api = NULL;
  }
  cb(NULL, d->err, http_status, arg);
  dial_free(d);
}

static void dial_timeout(evutil_socket_t fd, short what, void *arg) {
  struct pf_connecting *d = arg;
  (void)fd;
  (void)what;
  pf_dial_fail(d, 0, "timed out after %u ms %s", d->timeout_ms,
            d->state == DIAL_RESOLVING && d->use_proxy ? "resolving the proxy's host name"
            : d->state == DIAL_RESOLVING ? "resolving the API server's host name"
            : d->state == DIAL_TCP && d->use_proxy ? "connecting to the proxy"
            : d->state == DIAL_TCP     ? "connecting to the API server"
            : d->state == DIAL_PROXY   ? "waiting for the proxy to answer CONNECT"
            : d->state == DIAL_TLS     ? "in the TLS handshake with the API server"
            : d->state == DIAL_HEAD     ? "waiting for the API server to answer the upgrade"
                                        : "reading the API server's error answer");
}

static void dial_event(struct bufferevent *api, short what, void *arg) {
  struct pf_connecting *d = arg;
  if (what & BEV_EVENT_CONNECTED) {
    pf_send_upgrade(d);
    return;
  }
  if (d->state == DIAL_BODY && (what & BEV_EVENT_EOF)) { /* body ends with the connection */
    llhttp_finish(&d->parser);
    pf_fail_http(d);
    return;
  }
  char why[300];
  pf_describe_api_error(api, EVUTIL_SOCKET_ERROR(), why, sizeof(why));
  if (d->state == DIAL_TLS)
    pf_dial_fail(d, 0, "TLS with the API server %s:%u (%s) failed: %s", d->host,
              (unsigned)d->hport, d->addr, why);
  else
    pf_dial_fail(d, 0, "the API server closed the connection before answering the upgrade: %s",
              why);
}

/* TCP connected: TLS on the socket, then the upgrade (dial_event CONNECTED). */
static void start_tls(struct pf_connecting *d, evutil_socket_t fd) {
  d->api = bufferevent_openssl_socket_new(d->base, fd, d->ssl, BUFFEREVENT_SSL_CONNECTING,
                                          BEV_OPT_CLOSE_ON_FREE);
  if (!d->api) {
    evutil_closesocket(fd);
    pf_dial_fail(d, 0, "cannot create the API server connection");
    return;
  }
  d->ssl = NULL; /* owned by d->api */
  d->state = DIAL_TLS;
  bufferevent_openssl_set_allow_dirty_shutdown(d->api, 1);
  bufferevent_setcb(d->api, pf_dial_read, NULL, dial_event, d);
  bufferevent_enable(d->api, EV_READ | EV_WRITE);
}

static void try_next_address(struct pf_connecting *d);

/* --- through an HTTP proxy: CONNECT, then TLS as if connected directly --- */

static void proxy_io(evutil_socket_t fd, short what, void *arg);

static int proxy_wait(struct pf_connecting *d, short what) {
  if (d->conn_ev) event_free(d->conn_ev);
  d->conn_ev = event_new(d->base, d->fd, what | EV_PERSIST, proxy_io, d);
  return d->conn_ev && event_add(d->conn_ev, NULL) == 0 ? 0 : -1;
}

/* The proxy's answer head is complete (n bytes, more may follow): a 2xx hands
 * the socket to TLS, anything else fails naming the proxy. */
static void proxy_answer(struct pf_connecting *d, size_t head_len) {
  int v6 = strchr(d->host, ':') != NULL;
  char line[200];
  size_t ll = strcspn(d->presp, "\r\n");
  if (ll >= sizeof line) ll = sizeof line - 1;
  for (size_t i = 0; i < ll; i++) {
    unsigned char ch = (unsigned char)d->presp[i];
    line[i] = ch < 0x20 || ch == 0x7f ? ' ' : (char)ch;
  }
  line[ll] = '\0';
  int status = 0;
  if (ll < 12 || strncmp(line, "HTTP/1.", 7) != 0 || sscanf(line + 8, " %3d", &status) != 1) {
    pf_dial_fail(d, 0, "the proxy %s did not answer CONNECT %s%s%s:%u with HTTP (\"%s\")",
              d->proxy.shown, v6 ? "[" : "", d->host, v6 ? "]" : "", (unsigned)d->hport, line);
    return;
  }
  if (status < 200 || status > 299) {
    const char *reason = line + 8;
    while (*reason == ' ') reason++;
    pf_dial_fail(d, status == 407 ? 407 : 0,
              "the proxy %s refused CONNECT %s%s%s:%u: HTTP %s%s", d->proxy.shown,
              v6 ? "[" : "", d->host, v6 ? "]" : "", (unsigned)d->hport, reason,
              status == 407 ? (d->proxy.user ? " (the user and password in the proxy URL "
                                                "were refused)"
                                             : " (put user:password@ in the proxy URL)")
                            : "");
    return;
  }
  if (d->presp_len > head_len) {
    pf_dial_fail(d, 0, "the proxy %s sent %zu bytes after its CONNECT answer, before TLS began",
              d->proxy.shown, d->presp_len - head_len);
    return;
  }
  log_debug("%s: proxy %s: %s", d->what, d->proxy.shown, line);
  evutil_socket_t fd = d->fd;
  event_free(d->conn_ev);
  d->conn_ev = NULL;
  d->fd = -1;
  start_tls(d, fd);
}

static void proxy_io(evutil_socket_t fd, short what, void *arg) {
  struct pf_connecting *d = arg;
  (void)what;
  if (d->preq_off < d->preq_len) {
    ssize_t n = send(fd, d->preq + d->preq_off, d->preq_len - d->preq_off, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    if (n < 0) {
      pf_dial_fail(d, 0, "sending CONNECT to the proxy %s (%s) failed: %s", d->proxy.shown, d->addr,
                strerror(errno));
      return;
    }
    d->preq_off += (size_t)n;
    if (d->preq_off == d->preq_len && proxy_wait(d, EV_READ) < 0)
      pf_dial_fail(d, 0, "out of memory");
    return;
  }
  ssize_t n = recv(fd, d->presp + d->presp_len, HEAD_MAX - d->presp_len, 0);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
  if (n <= 0) {
    pf_dial_fail(d, 0, "the proxy %s (%s) closed the connection before answering CONNECT%s%s",
              d->proxy.shown, d->addr, n < 0 ? ": " : "", n < 0 ? strerror(errno) : "");
    return;
  }
  d->presp_len += (size_t)n;
  d->presp[d->presp_len] = '\0';
  char *end = strstr(d->presp, "\r\n\r\n");
  if (end) {
    proxy_answer(d, (size_t)(end - d->presp) + 4);
    return;
  }
  if (d->presp_len >= HEAD_MAX)
    pf_dial_fail(d, 0, "the proxy %s's answer head is longer than %d bytes", d->proxy.shown,
              HEAD_MAX);
}

/* TCP connected to the proxy: send CONNECT host:port. */
static void proxy_start(struct pf_connecting *d, evutil_socket_t fd) {
  char auth[700];
  int v6 = strchr(d->host, ':') != NULL;
  d->fd = fd;
  d->state = DIAL_PROXY;
  if (netproxy_basic_auth(&d->proxy, auth, sizeof auth) < 0) {
    pf_dial_fail(d, 0, "the user and password in the proxy URL %s are too long", d->proxy.shown);
    return;
  }
  size_t n = strlen(d->host) + strlen(auth) * 2 + 256;
  if (!(d->preq = malloc(n))) {
    pf_dial_fail(d, 0, "out of memory");
    return;
  }
  int len = snprintf(d->preq, n,
                     "CONNECT %s%s%s:%u HTTP/1.1\r\nHost: %s%s%s:%u\r\n"
                     "User-Agent: kbridge/" KBRIDGE_VERSION "\r\n%s%s%s\r\n",
                     v6 ? "[" : "", d->host, v6 ? "]" : "", (unsigned)d->hport, v6 ? "[" : "",
                     d->host, v6 ? "]" : "", (unsigned)d->hport,
                     auth[0] ? "Proxy-Authorization: " : "", auth, auth[0] ? "\r\n" : "");
  OPENSSL_cleanse(auth, sizeof auth);
  d->preq_len = (size_t)len;
  d->preq_off = 0;
  if (proxy_wait(d, EV_WRITE) < 0) pf_dial_fail(d, 0, "out of memory");
}

static void tcp_done(evutil_socket_t fd, short what, void *arg) {
  struct pf_connecting *d = arg;
  int err = 0;
  socklen_t len = sizeof(err);
  event_free(d->conn_ev);
  d->conn_ev = NULL;
  d->fd = -1;
  if (what & EV_TIMEOUT)
    err = ETIMEDOUT;
  else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
    err = errno;
  if (err) {
    snprintf(d->last_err, sizeof(d->last_err), "%s: %s", d->addr,
             evutil_socket_error_to_string(err));
    evutil_closesocket(fd);
    try_next_address(d);
    return;
  }
  if (d->use_proxy)
    proxy_start(d, fd);
  else
    start_tls(d, fd);
}

/* Connect to the next address of the list; when none is left, fail with the
 * last reason. An address gets PF_ADDR_TIMEOUT_MS while others remain (so a
 * blackholed IPv6 address does not eat the whole timeout). */
static void try_next_address(struct pf_connecting *d) {
  while (d->ai_next) {
    struct evutil_addrinfo *ai = d->ai_next;
    d->ai_next = ai->ai_next;
    if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) continue;
    addr_format_sa(ai->ai_addr, d->addr, sizeof(d->addr));
    d->n_tried++;
    evutil_socket_t fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      snprintf(d->last_err, sizeof(d->last_err), "%s: %s", d->addr, strerror(errno));
      continue;
    }
    int one = 1; /* small frames (interactive requests) must not wait for Nagle */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, ai->ai_addr, (socklen_t)ai->ai_addrlen) == 0 || errno == EINPROGRESS) {
      struct timeval tv = {PF_ADDR_TIMEOUT_MS / 1000, (PF_ADDR_TIMEOUT_MS % 1000) * 1000};
      d->fd = fd;
      d->state = DIAL_TCP;
      d->conn_ev = event_new(d->base, fd, EV_WRITE, tcp_done, d);
      if (!d->conn_ev || event_add(d->conn_ev, d->ai_next ? &tv : NULL) < 0) {
        pf_dial_fail(d, 0, "out of memory");
        return;
      }
      return;
    }
    snprintf(d->last_err, sizeof(d->last_err), "%s: %s", d->addr,
             evutil_socket_error_to_string(errno));
    evutil_closesocket(fd);
  }
  if (d->use_proxy)
    pf_dial_fail(d, 0, "cannot connect to the proxy %s (for the API server %s:%u): %s",
              d->proxy.shown, d->host, (unsigned)d->hport,
              d->n_tried ? d->last_err : "no IPv4/IPv6 address");
  else if (d->n_tried > 1)
    pf_dial_fail(d, 0, "cannot connect to the API server %s:%u (%d addresses tried; last %s)",
              d->host, (unsigned)d->hport, d->n_tried, d->last_err);
  else
    pf_dial_fail(d, 0, "cannot connect to the API server %s:%u (%s)", d->host, (unsigned)d->hport,
              d->n_tried ? d->last_err : "no IPv4/IPv6 address");
}

static void resolved(int result, struct evutil_addrinfo *res, void *arg) {
  struct pf_connecting *d = arg;
  if (result == EVUTIL_EAI_CANCEL) return; /* dial_free() is cancelling the lookup */
  d->dns_req = NULL;
  if (result != 0) {
    if (d->use_proxy)
      pf_dial_fail(d, 0, "cannot resolve the proxy %s: %s", d->proxy.shown,
                evutil_gai_strerror(result));
    else
      pf_dial_fail(d, 0, "cannot resolve the API server host \"%s\": %s", d->host,
                evutil_gai_strerror(result));
    return;
  }
  d->ai_list = d->ai_next = res;
  try_next_address(d);
}

static void dial_start(evutil_socket_t fd, short what, void *arg) {
  struct pf_connecting *d = arg;
  struct timeval tv = {(time_t)(d->timeout_ms / 1000), (suseconds_t)(d->timeout_ms % 1000) * 1000};
  struct evutil_addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                                  .ai_protocol = IPPROTO_TCP};
  char port[8];
  (void)fd;
  (void)what;
  event_free(d->timer);
  d->timer = evtimer_new(d->base, dial_timeout, d);
  if (!d->timer || evtimer_add(d->timer, &tv) < 0) {
    pf_dial_fail(d, 0, "out of memory");
    return;
  }
  /* Through a proxy only the proxy's name is resolved here; the API server's
   * name goes to the proxy in the CONNECT line, as curl does. */
  const char *host = d->use_proxy ? d->proxy.host : d->host;
  snprintf(port, sizeof(port), "%u", (unsigned)(d->use_proxy ? d->proxy.port : d->hport));
  d->state = DIAL_RESOLVING;
  if (d->dns) {
    /* May answer at once (IP literal, hosts file): resolved() then runs inside
     * this call and d may be gone when it returns NULL. */
    struct evdns_getaddrinfo_request *req =
        evdns_getaddrinfo(d->dns, host, port, &hints, resolved, d);
    if (req) d->dns_req = req;
    return;
  }
  struct evutil_addrinfo *res = NULL;
  int rc = evutil_getaddrinfo(host, port, &hints, &res); /* blocking, as documented */
  resolved(rc, rc == 0 ? res : NULL, d);
}

/* 101 checked: wrap api in the framing filter and hand it over. */
void pf_become_carrier(struct pf_connecting *d) {
  char what[336];
  snprintf(what, sizeof(what), "pod %s/%s port %u", d->ns, d->pod, (unsigned)d->port);
  struct bufferevent *bev = pf_carrier_new(d->api, d->port, d->max_frame, what);
  if (!bev) {
    pf_dial_fail(d, 101, "out of memory");
    return;
  }
  d->api = NULL; /* owned by the carrier now */
  log_debug("port-forward %s: WebSocket open", what);
  pf_ready_cb cb = d->cb;
  void *arg = d->arg;
  dial_free(d);
  cb(bev, NULL, 101, arg);
}

/* --- target validation --- */

static int valid_subdomain(const char *s, size_t max) {
  size_t n = strlen(s);
  if (n == 0 || n > max) return 0;
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    int alnum = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9');
    if (!alnum && ch != '-' && ch != '.') return 0;
    if ((i == 0 || i == n - 1) && !alnum) return 0;
    if (ch == '.' && (s[i - 1] == '.' || s[i - 1] == '-' || s[i + 1] == '-')) return 0;
  }
  return 1;
}

static int valid_label(const char *s) { return valid_subdomain(s, 63) && !strchr(s, '.'); }

/* "https://host[:port][/prefix]" into d. 0 or -1 + err. */
static int parse_url(struct pf_connecting *d, const char *url, char *err, size_t errlen) {
  const char *s = url, *hb, *he, *p;
  if (strncasecmp(s, "https://", 8) != 0) {
    snprintf(err, errlen, "API server URL \"%s\": only https:// is supported", url);
    return -1;
  }
  s += 8;
  if (memchr(s, '@', strcspn(s, "/?#"))) {
    snprintf(err, errlen, "API server URL \"%s\": user info in the URL is not supported", url);
    return -1;
  }
  if (*s == '[') {
    hb = s + 1;
    he = strchr(hb, ']');
    if (!he) {
      snprintf(err, errlen, "API server URL \"%s\": unclosed '[' in the host", url);
      return -1;
    }
    p = he + 1;
  } else {
    hb = s;
    he = hb + strcspn(hb, ":/?#");
    p = he;
  }
  if (he == hb || (size_t)(he - hb) >= sizeof(d->host)) {
    snprintf(err, errlen, "API server URL \"%s\": missing or too long host", url);
    return -1;
  }
  memcpy(d->host, hb, (size_t)(he - hb));
  d->host[he - hb] = '\0';
  d->hport = 443;
  if (*p == ':') {
    char *e;
    unsigned long v = strtoul(p + 1, &e, 10);
    if (e == p + 1 || v == 0 || v > 65535 || (*e && *e != '/')) {
      snprintf(err, errlen, "API server URL \"%s\": bad port", url);
      return -1;
    }
    d->hport = (uint16_t)v;
    p = e;
  }
  if (*p && *p != '/') {
    snprintf(err, errlen, "API server URL \"%s\": unexpected \"%s\" after the host", url, p);
    return -1;
  }
  size_t pl = strlen(p);
  while (pl > 0 && p[pl - 1] == '/') pl--;
  for (size_t i = 0; i < pl; i++) {
    unsigned char ch = (unsigned char)p[i];
    if (ch <= 0x20 || ch >= 0x7f || ch == '?' || ch == '#') {
      snprintf(err, errlen, "API server URL \"%s\": the path may not contain spaces, control "
               "characters, '?' or '#'", url);
      return -1;
    }
  }
  if (!(d->prefix = strndup(p, pl))) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  return 0;
}

/* Hostname (or IP) verification and SNI on the API-server SSL. */
static int set_peer_name(SSL *ssl, const char *name) {
  unsigned char tmp[16];
  if (inet_pton(AF_INET, name, tmp) == 1 || inet_pton(AF_INET6, name, tmp) == 1)
    return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) == 1 ? 0 : -1;
  if (SSL_set1_host(ssl, name) != 1) return -1;
  char sni[256]; /* the macro casts away const */
  if (snprintf(sni, sizeof(sni), "%s", name) >= (int)sizeof(sni)) return -1;
  return SSL_set_tlsext_host_name(ssl, sni) == 1 ? 0 : -1;
}

struct pf_connecting *pf_connect(struct event_base *base, struct evdns_base *dns,
                                 const struct pf_target *t, pf_ready_cb cb, void *arg,
                                 char *err, size_t errlen) {
  struct pf_connecting *d = calloc(1, sizeof(*d));
  SSL *ssl = NULL;
  if (!d) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  d->base = base;
  d->dns = dns;
  d->fd = -1;
  d->cb = cb;
  d->arg = arg;
  if (!t->server_url || parse_url(d, t->server_url, err, errlen) < 0) {
    if (!t->server_url) snprintf(err, errlen, "no API server URL");
    goto fail;
  }
  if (!t->ssl_ctx) {
    snprintf(err, errlen, "no TLS context for the API server");
    goto fail;
  }
  if (t->proxy_url) {
    if (pf_proxy_check(t->proxy_url, err, errlen) < 0 ||
        netproxy_parse(t->proxy_url, &d->proxy, err, errlen) < 0)
      goto fail;
    d->use_proxy = 1;
  }
  if (!t->ns || !valid_label(t->ns)) {
    snprintf(err, errlen, "invalid namespace \"%s\" (a DNS label: [a-z0-9-], at most 63)",
             t->ns ? t->ns : "");
    goto fail;
  }
  if (!t->pod || !valid_subdomain(t->pod, 253)) {
    snprintf(err, errlen, "invalid pod name \"%s\" (a DNS subdomain: [a-z0-9.-], at most 253)",
             t->pod ? t->pod : "");
    goto fail;
  }
  if (t->port == 0) {
    snprintf(err, errlen, "invalid pod port 0");
    goto fail;
  }
  if (t->bearer_token) {
    for (const char *q = t->bearer_token; *q; q++) {
      if ((unsigned char)*q < 0x20 || *q == 0x7f) {
        snprintf(err, errlen, "the bearer token contains control characters");
        goto fail;
      }
    }
    if (!t->bearer_token[0]) {
      snprintf(err, errlen, "the bearer token is empty");
      goto fail;
    }
    if (!(d->token = strdup(t->bearer_token))) {
      snprintf(err, errlen, "out of memory");
      goto fail;
    }
  }
  snprintf(d->ns, sizeof(d->ns), "%s", t->ns);
  snprintf(d->pod, sizeof(d->pod), "%s", t->pod);
  d->port = t->port;
  d->timeout_ms = t->timeout_ms ? t->timeout_ms : PF_DEFAULT_TIMEOUT_MS;
  d->max_frame = t->max_frame ? t->max_frame : PF_DEFAULT_MAX_FRAME;
  snprintf(d->what, sizeof(d->what), "port-forward to pod %s/%s port %u", d->ns, d->pod,
           (unsigned)d->port);

  ssl = SSL_new(t->ssl_ctx);
  if (!ssl) {
    snprintf(err, errlen, "cannot create a TLS session for the API server");
    goto fail;
  }
  const char *name = t->tls_server_name && t->tls_server_name[0] ? t->tls_server_name : d->host;
  if (set_peer_name(ssl, name) < 0 ||
      SSL_set_alpn_protos(ssl, (const unsigned char *)"\x08http/1.1", 9) != 0) {
    snprintf(err, errlen, "cannot set the API server name \"%s\" on the TLS session", name);
    goto fail;
  }
  d->ssl = ssl;
  ssl = NULL; /* owned by d */
  /* Start from the loop, so that cb never runs inside this call. */
  d->state = DIAL_START;
  d->timer = evtimer_new(base, dial_start, d);
  struct timeval now = {0, 0};
  if (!d->timer || evtimer_add(d->timer, &now) < 0) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  return d;
fail:
  if (ssl) SSL_free(ssl);
  dial_free(d);
  return NULL;
}

int pf_proxy_check(const char *proxy_url, char *err, size_t errlen) {
  struct netproxy p;
  if (!proxy_url) return 0;
  if (netproxy_parse(proxy_url, &p, err, errlen) < 0) return -1;
  int rc = 0;
  if (strcmp(p.scheme, "http") != 0) {
    snprintf(err, errlen, "the proxy %s cannot carry the port-forward tunnel: only http:// "
             "proxies (HTTP CONNECT) are supported for it%s; use an http:// proxy URL, put the "
             "API server's host in $NO_PROXY if it is reachable directly, or use "
             "--agent-address", p.shown,
             strncmp(p.scheme, "socks", 5) == 0 ? ", not SOCKS"
             : strcmp(p.scheme, "https") == 0   ? ", not TLS to the proxy (https://)"
                                                : "");
    rc = -1;
  }
  netproxy_clear(&p);
  return rc;
}
