/* portforward.h: a byte stream to one port of a pod, through the Kubernetes API
 * server's port-forward WebSocket (the tunnel's default carrier).
 *
 * pf_connect() dials the API server (each address of its name in turn until a
 * TCP connect succeeds, then TLS verified with the caller's SSL_CTX), sends
 *   GET PREFIX/api/v1/namespaces/NS/pods/POD/portforward?ports=PORT
 * as a WebSocket upgrade with subprotocol v4.channel.k8s.io (and a bearer token
 * if one is given), checks the 101 answer, and hands back a bufferevent that
 * reads and writes the raw bytes of the pod's port. The WebSocket framing is a
 * bufferevent_filter over the API-server TLS bufferevent:
 *   - input: server frames are decoded as a stream (a frame's payload is never
 *     buffered whole), the channel byte and the two 2-byte port announcements are
 *     stripped, channel 0 bytes go to the carrier's input, channel 1 bytes are the
 *     kubelet's error text. Pings are answered with pongs; close frames with a
 *     close frame. Fragmented messages, 7/16/64-bit lengths are handled; a
 *     declared payload above max_frame is a protocol error.
 *   - output: bytes written to the carrier are sent as masked binary frames
 *     (fresh random key per frame) whose payload starts with channel byte 0.
 * The tunnel then runs its own TLS on top:
 *   bufferevent_openssl_filter_new(base, carrier, ssl, BUFFEREVENT_SSL_CONNECTING,
 *                                  BEV_OPT_CLOSE_ON_FREE)
 *
 * Events on the carrier (its event callback, as for any bufferevent). The
 * carrier's callbacks are deferred (BEV_OPT_DEFER_CALLBACKS): an openssl filter
 * on top would otherwise be re-entered from inside its own SSL_write(), which
 * crashes OpenSSL 3. Every end is raised once, after all data before it:
 *   BEV_EVENT_EOF|READING    the server closed the WebSocket normally (close code
 *                            1000/1001 or none; pf_carrier_error() is NULL), or
 *                            the connection ended without a close frame
 *                            (pf_carrier_error() says so).
 *   BEV_EVENT_ERROR|READING  the kubelet sent an error on the error channel (e.g.
 *                            "error from the kubelet: ... dial tcp4
 *                            127.0.0.1:5000: connect: connection refused"), the
 *                            server closed with an error code, the server broke
 *                            the WebSocket protocol, the connection was cut in
 *                            the middle of a frame, or the API-server connection
 *                            failed (TLS alert, reset). pf_carrier_error() says
 *                            which, in words.
 * After an EOF/ERROR nothing more is read.
 *
 * Reading: keep EV_READ enabled. To pause, just leave bytes in the input: the
 * carrier never holds more than PF_DEFAULT_HIGH bytes there (or a read high
 * watermark, if one is set lower), reading from the API server stops while it
 * is full, and resumes by itself when the reader drains. (With EV_READ disabled,
 * bytes already read from the API server wait there until the next network
 * read; and a read high watermark on this deferred bufferevent makes libevent
 * re-run the read callback every loop turn while the input stays above it.)
 *
 * Backpressure: the input filter never puts more than the room below
 * PF_DEFAULT_HIGH into the carrier's input (a frame's payload is moved in
 * pieces); the carrier has a write high watermark of PF_DEFAULT_HIGH (a
 * bufferevent_openssl filter on top stops writing there), and the output filter
 * stops when the API-server connection's output holds PF_DEFAULT_HIGH bytes (it
 * may exceed that by at most one frame, PF_MAX_OUT_FRAME + 8 bytes).
 *
 * Half-close: the port-forward protocol has no way to close only the sending
 * direction, so there is none here. bufferevent_flush(carrier, EV_WRITE,
 * BEV_FINISHED) sends a close frame after the pending bytes; freeing the carrier
 * just closes the connection (the tunnel's TLS close_notify above says "done").
 *
 * Proxies: with pf_target.proxy_url (an http:// proxy) the TCP connection goes
 * to the proxy, which is asked "CONNECT host:port" of the API server (with
 * Basic Proxy-Authorization if the URL has credentials); TLS to the API server
 * starts after its 2xx answer. Any other answer fails the dial with the
 * proxy's status line, naming the proxy (without its credentials).
 *
 * Not supported: plain http:// servers (kubectl proxy), https:// and SOCKS
 * proxies (refused by pf_connect() and pf_proxy_check() with the reason), the
 * base64 subprotocol, several ports per connection. */
#ifndef KB_PORTFORWARD_H
#define KB_PORTFORWARD_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

struct event_base;
struct evdns_base;
struct bufferevent;
struct pf_connecting;

#define PF_SUBPROTOCOL "v4.channel.k8s.io"
#define PF_DEFAULT_HIGH (256 * 1024)       /* bound of the carrier's input; write high marks */
#define PF_MAX_OUT_FRAME 65535             /* largest payload of a frame we send: channel
                                            * byte + 65534 data bytes, a 16-bit length */
#define PF_DEFAULT_MAX_FRAME (16u << 20)   /* largest payload accepted from the server */
#define PF_DEFAULT_TIMEOUT_MS 30000        /* connect + TLS + upgrade answer */

/* Where to connect. Strings are copied by pf_connect(); the SSL_CTX is
 * referenced (SSL_new) and must outlive the call only. */
struct pf_target {
  const char *server_url;      /* "https://host[:port][/prefix]", port 443 if absent;
                                * host may be a name, IPv4 or [IPv6] */
  SSL_CTX *ssl_ctx;            /* client context: verifies the API server (the caller
                                * sets SSL_VERIFY_PEER and the cluster CA, or not for
                                * insecure-skip-tls-verify) and holds the client
                                * certificate/key if the kubeconfig has one */
  const char *tls_server_name; /* name to verify and send as SNI; NULL: the URL host
                                * (an IP host is checked against IP SANs, no SNI) */
  const char *bearer_token;    /* "Authorization: Bearer ..." or NULL */
  const char *ns;              /* namespace (DNS label) */
  const char *pod;             /* pod name (DNS subdomain) */
  uint16_t port;               /* pod port, 1..65535 */
  const char *proxy_url;       /* NULL: connect directly; else an http:// proxy that
                                * the connection goes through with HTTP CONNECT
                                * (credentials in the URL: Basic Proxy-Authorization);
                                * other schemes are refused (pf_proxy_check()).
                                * Give it kube_proxy(): the API calls' own choice */
  unsigned timeout_ms;         /* 0: PF_DEFAULT_TIMEOUT_MS */
  size_t max_frame;            /* 0: PF_DEFAULT_MAX_FRAME */
};

/* Called exactly once per successful pf_connect() (never for a cancelled one).
 * Success: carrier != NULL, err == NULL, http_status == 101. The caller owns the
 *   carrier (bufferevent_free() closes everything) and must set its callbacks
 *   and enable EV_READ (the openssl filter on top does that). Bytes the server
 *   sent right after the 101 are decoded once the carrier is read-enabled.
 * Failure: carrier == NULL and err says what went wrong, for the user, e.g.
 *   "port-forward to pod shop/api-7d9 port 5000: HTTP 403 Forbidden: pods
 *   \"api-7d9\" is forbidden: User \"dev\" cannot get resource
 *   \"pods/portforward\" in API group \"\" in the namespace \"shop\"";
 *   http_status is the HTTP status if an HTTP answer came (401, 403, 404, ...),
 *   else 0 (DNS, TCP, TLS, timeout). err is valid during the call only.
 * The pf_connecting handle is invalid from the moment this is called. */
typedef void (*pf_ready_cb)(struct bufferevent *carrier, const char *err, int http_status,
                            void *arg);

/* Start connecting. dns may be NULL (blocking getaddrinfo). Returns a handle for
 * pf_connect_cancel(), or NULL with the reason in err (errlen bytes) when the
 * target is invalid (bad URL, namespace/pod name, port, token with control
 * characters, no ssl_ctx) or on allocation failure; cb is then never called. */
struct pf_connecting *pf_connect(struct event_base *base, struct evdns_base *dns,
                                 const struct pf_target *t, pf_ready_cb cb, void *arg,
                                 char *err, size_t errlen);

/* Can the carrier go through this proxy URL? 0, or -1 with a message for the
 * user in err (a bad URL, or a scheme other than http://). For callers that
 * check before changing anything (kbridge connect). NULL is fine (direct). */
int pf_proxy_check(const char *proxy_url, char *err, size_t errlen);

/* Abort a connect in progress: everything is freed and cb is never called. Must
 * not be called once cb has been called (the handle is gone then). */
void pf_connect_cancel(struct pf_connecting *c);

/* Make a carrier over conn, a connection on which the port-forward WebSocket is
 * already open (101 received; bytes after it may already be in conn's input).
 * pf_connect() uses it; it is exported for other ways of opening the WebSocket
 * and for tests and fuzzing (conn may be any bufferevent, e.g. one end of a
 * bufferevent_pair). port is the pod port the server must announce; max_frame 0
 * means PF_DEFAULT_MAX_FRAME; what names the stream in messages ("pod NS/POD
 * port P"). The carrier takes conn over (its callbacks, watermarks) and frees it
 * when freed. Returns NULL on allocation failure (conn is then untouched but its
 * callbacks are cleared). */
struct bufferevent *pf_carrier_new(struct bufferevent *conn, uint16_t port, size_t max_frame,
                                   const char *what);

/* Why the carrier reported EOF/ERROR, in words: the kubelet's error-channel
 * text, the server's close code and reason, the protocol violation, or the
 * API-server connection's TLS/socket error. NULL while the stream is alive,
 * after a normal WebSocket close, or if carrier is not a bufferevent made by
 * pf_connect()/pf_carrier_new(). Valid while the carrier lives; the tunnel above reaches it
 * from its on_close callback with
 *   pf_carrier_error(bufferevent_get_underlying(tunnel_carrier(t)))
 * (tunnel.c's own err then only says "carrier error"). */
const char *pf_carrier_error(struct bufferevent *carrier);

/* Counters of one carrier, for logs and tests. Returns 0, or -1 if bev is not a
 * carrier made by pf_connect(). */
struct pf_stats {
  uint64_t frames_in, frames_out; /* WebSocket frames received / sent (all opcodes) */
  uint64_t bytes_in, bytes_out;   /* channel-0 payload bytes delivered / sent */
  uint64_t pings;                 /* pings answered */
};
int pf_carrier_stats(struct bufferevent *carrier, struct pf_stats *out);

/* The Sec-WebSocket-Accept value for a Sec-WebSocket-Key (RFC 6455 4.2.2):
 * base64(SHA-1(key + GUID)), NUL-terminated into out (>= 29 bytes). Exposed for
 * tests. Returns 0, or -1 if out is too small. */
int pf_ws_accept(const char *key, char *out, size_t outlen);

#endif
