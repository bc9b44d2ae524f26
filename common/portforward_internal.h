/* portforward_internal.h: what the dial of the port-forward carrier
 * (portforward_dial.c: TCP, HTTP CONNECT proxy, TLS) shares with the WebSocket
 * upgrade it sends and reads (portforward_upgrade.c). Nothing else includes it. */
#ifndef KB_PORTFORWARD_INTERNAL_H
#define KB_PORTFORWARD_INTERNAL_H

#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/util.h>
#include <llhttp.h>
#include <openssl/ssl.h>

#include "netproxy.h"
#include "portforward.h"

#define HEAD_MAX 16384       /* largest response head we read */

enum dial_state {
  DIAL_START,      /* scheduled: the connect starts from the loop, never inside pf_connect() */
  DIAL_RESOLVING,  /* looking up the API server's host name */
  DIAL_TCP,        /* TCP connect to one of its addresses (the next one if it fails);
                    * with a proxy: the proxy's name and addresses */
  DIAL_PROXY,      /* CONNECT sent to the proxy (conn_ev: writing, then reading the answer) */
  DIAL_TLS,        /* TLS handshake with the API server */
  DIAL_HEAD,       /* upgrade request sent; waiting for the whole answer head */
  DIAL_BODY,       /* a non-101 answer: reading its body for the Status message */
};

struct pf_connecting {
  struct event_base *base;
  struct evdns_base *dns;
  struct bufferevent *api;
  struct event *timer; /* first the start, then the deadline */
  enum dial_state state;
  SSL *ssl;            /* for the API-server TLS, until the TCP connect succeeds */
  struct evdns_getaddrinfo_request *dns_req; /* DIAL_RESOLVING with a dns base */
  struct evutil_addrinfo *ai_list, *ai_next; /* the addresses, the next to try */
  evutil_socket_t fd;  /* DIAL_TCP: the socket being connected, else -1 */
  struct event *conn_ev; /* DIAL_TCP: writable (connected or failed) or timeout */
  char addr[80];       /* the address being tried, "ip:port" */
  char last_err[200];  /* why the last address failed */
  int n_tried;
  pf_ready_cb cb;
  void *arg;

  char host[256];   /* from the URL, without brackets */
  uint16_t hport;
  int use_proxy;     /* connect through proxy (HTTP CONNECT) */
  struct netproxy proxy;
  char *preq;        /* DIAL_PROXY: the CONNECT request, sent from preq_off */
  size_t preq_len, preq_off;
  char presp[HEAD_MAX + 1]; /* DIAL_PROXY: the proxy's answer so far */
  size_t presp_len;
  char *prefix;     /* URL path without trailing '/', may be "" */
  char *token;      /* or NULL */
  char ns[64], pod[254];
  uint16_t port;
  unsigned timeout_ms;
  size_t max_frame;
  char what[400];   /* "port-forward to pod NS/POD port P" */
  char key[32];     /* Sec-WebSocket-Key sent */

  llhttp_t parser;
  int status;
  char reason[64];
  size_t reason_len;
  char hfield[40];  /* current header name (longer names are of no interest) */
  size_t hfield_len;
  char hvalue[256]; /* current header value, truncated */
  size_t hvalue_len;
  char upgrade[64], connection[128], accept[64], protocol[64];
  int have_protocol;
  char *body;
  size_t body_len;
  int body_done;
  char err[2048];
};

/* portforward_carrier.c: why api ended, in a few words (DNS, the
 * certificate, TLS, the socket) into out. */
void pf_describe_api_error(struct bufferevent *api, int sockerr, char *out, size_t len);
/* portforward_dial.c: report failure to the user and free everything. */
void pf_dial_fail(struct pf_connecting *d, int http_status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* portforward_dial.c: 101 checked: wrap api in the framing filter and hand it over. */
void pf_become_carrier(struct pf_connecting *d);

/* portforward_upgrade.c: send the upgrade request (TLS is up); DIAL_HEAD. */
void pf_send_upgrade(struct pf_connecting *d);
/* portforward_upgrade.c: read callback of api in DIAL_HEAD/DIAL_BODY. */
void pf_dial_read(struct bufferevent *api, void *arg);
/* portforward_upgrade.c: the answer was not 101: make the user's error from
 * the Status in its body (dial_fail). */
void pf_fail_http(struct pf_connecting *d);

#endif
