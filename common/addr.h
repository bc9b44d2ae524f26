/* addr.h: "HOST:PORT" parsing shared by every command-line flag that takes an
 * address. HOST may be a name, an IPv4 address or a bracketed IPv6 literal
 * ("[::1]:8080"). */
#ifndef KB_ADDR_H
#define KB_ADDR_H

#include <stddef.h>
#include <stdint.h>

struct hostport {
  char host[256]; /* without brackets; never empty after a successful parse */
  uint16_t port;  /* 0 is allowed only when addr_parse() is told so */
};

/* Parse s into out. allow_port0 lets "127.0.0.1:0" through (listen on any port).
 * Returns 0, or -1 with a human-readable reason in err (errlen bytes). */
int addr_parse(const char *s, int allow_port0, struct hostport *out, char *err, size_t errlen);

/* Format as "host:port" or "[v6]:port" into buf. Returns buf. */
char *addr_format(const struct hostport *hp, char *buf, size_t len);

/* Format a socket address (AF_INET/AF_INET6) as "ip:port" or "[v6]:port". An
 * IPv4-mapped IPv6 address (an IPv4 client of a dual-stack socket) is shown as
 * IPv4. Returns buf. */
struct sockaddr;
char *addr_format_sa(const struct sockaddr *sa, char *buf, size_t len);
/* The numeric address alone ("10.0.0.5", "fd00::5"; IPv4-mapped shown as
 * IPv4; "?" for other families). Returns buf. */
char *addr_ip_sa(const struct sockaddr *sa, char *buf, size_t len);

#endif
