/* netproxy.h: which proxy a connection to the API server goes through, and the
 * parts of a proxy URL.
 *
 * One decision, used by both kinds of connection kbridge makes to the API
 * server: libcurl's API calls (kube_transport.c hands curl the result and turns curl's
 * own environment lookup off) and the port-forward carrier of the tunnel
 * (portforward_dial.c, HTTP CONNECT). It follows kubectl (client-go, Go's
 * net/http):
 *   - the kubeconfig cluster's `proxy-url`, if set, for every request
 *     (NO_PROXY is not consulted, as in client-go);
 *   - else, for an https:// server, $HTTPS_PROXY, then $https_proxy (for an
 *     http:// server $HTTP_PROXY, then $http_proxy); a value without a scheme
 *     means http://;
 *   - an environment proxy is not used for a host matched by $NO_PROXY (then
 *     $no_proxy), nor for "localhost" and loopback addresses.
 * $NO_PROXY is a comma-separated list: "*" (every host), an IP address, a CIDR
 * block ("10.0.0.0/8", matched against IP hosts), or a domain with an optional
 * ":port": "example.com" matches example.com and its subdomains,
 * ".example.com" and "*.example.com" only the subdomains. */
#ifndef KB_NETPROXY_H
#define KB_NETPROXY_H

#include <stddef.h>
#include <stdint.h>

/* A parsed proxy URL. user/pass are percent-decoded (NULL: none). url is the
 * normalized form "scheme://[userinfo@]host:port" (the port always written,
 * so that libcurl and the carrier use the same default), shown the same
 * without the userinfo, for messages. */
struct netproxy {
  char scheme[16]; /* lowercase: http, https, socks4, socks4a, socks5, socks5h */
  char host[256];  /* without brackets */
  uint16_t port;   /* default: 80 http, 443 https, 1080 socks */
  char *user, *pass;
  char *url;
  char shown[300];
};

/* The proxy URL for a connection to an API server at host:port (host without
 * brackets), https or not, as described above: a malloc'd copy of proxy_url
 * (the kubeconfig's, may be NULL) or of the environment's value, or NULL for a
 * direct connection. *source (if not NULL) is set to "proxy-url",
 * "$HTTPS_PROXY", ... or NULL. */
char *netproxy_choose(const char *proxy_url, int https, const char *host, int port,
                      const char **source);

/* Does the $NO_PROXY-style list match host:port? 1 or 0. */
int netproxy_no_proxy_match(const char *list, const char *host, int port);

/* Parse a proxy URL into p (zeroed first). Returns 0, or -1 with the reason in
 * err (which names the URL without its credentials). Free with netproxy_clear(). */
int netproxy_parse(const char *url, struct netproxy *p, char *err, size_t errlen);
void netproxy_clear(struct netproxy *p);

/* "Basic base64(user:pass)" for a Proxy-Authorization header into out.
 * Returns 0, 1 if p has no user (out empty), or -1 if out is too small. */
int netproxy_basic_auth(const struct netproxy *p, char *out, size_t outlen);

#endif
