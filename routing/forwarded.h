/* forwarded.h: the client's address on every request the agent forwards.
 *
 * The agent is a reverse proxy: the original pods and the developer's process
 * see its connection, not the client's. So each HTTP/1.x request it forwards
 * (to the fallback and to a developer alike) carries:
 *   X-Forwarded-For: <existing values>, CLIENT   (the de-facto standard; the
 *       client's address is appended to what earlier proxies wrote),
 *   Forwarded: <existing elements>, for=CLIENT    (RFC 7239; an IPv6 address
 *       is quoted and bracketed: for="[2001:db8::1]"),
 *   X-Forwarded-Proto: http                       (only when absent: the agent
 *       serves plain HTTP; a value set by an earlier proxy, e.g. a TLS-
 *       terminating Ingress, is kept).
 * Existing X-Forwarded-For or Forwarded lines (several lines are one list, RFC
 * 9110 5.3) are replaced by one merged line each, so a backend that reads only
 * the first line still sees the whole chain. Raw TCP is never touched.
 *
 * Values come from a head that passed http_head_check_request() (no CR, LF or
 * NUL), and CLIENT is a numeric address the agent formatted itself, so the
 * lines cannot inject a field or a message. */
#ifndef KB_FORWARDED_H
#define KB_FORWARDED_H

#include <stddef.h>

struct http_head;

/* The field names forwarded_lines() replaces (a NULL-terminated list), for
 * http_head_write_request_drop(). */
extern const char *const forwarded_replaced[];
#define FORWARDED_NREPLACED 2

/* Bytes forwarded_lines() needs for h at most, the terminating NUL included. */
size_t forwarded_size(const struct http_head *h);

/* Write the lines for a request from client_ip (a numeric IPv4 or IPv6
 * address, without brackets or port) to out, NUL-terminated. Returns the
 * length, or -1 if outlen < forwarded_size(h) or client_ip is not numeric. */
int forwarded_lines(const struct http_head *h, const char *client_ip, char *out, size_t outlen);

#endif
