/* addr.c: see addr.h. */
#include "addr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

int addr_parse(const char *s, int allow_port0, struct hostport *out, char *err, size_t errlen) {
  const char *host = s, *colon;
  size_t hostlen;
  if (s == NULL || *s == '\0') {
    snprintf(err, errlen, "empty address, expected HOST:PORT");
    return -1;
  }
  if (*s == '[') {
    const char *close = strchr(s, ']');
    if (close == NULL || close[1] != ':') {
      snprintf(err, errlen, "'%s': IPv6 address must look like [::1]:PORT", s);
      return -1;
    }
    host = s + 1;
    hostlen = (size_t)(close - host);
    colon = close + 1;
  } else {
    colon = strrchr(s, ':');
    if (colon == NULL) {
      snprintf(err, errlen, "'%s': missing ':PORT'", s);
      return -1;
    }
    if (memchr(s, ':', (size_t)(colon - s)) != NULL) {
      snprintf(err, errlen, "'%s': put IPv6 addresses in brackets, e.g. [::1]:8080", s);
      return -1;
    }
    hostlen = (size_t)(colon - s);
  }
  if (hostlen == 0 || hostlen >= sizeof out->host) {
    snprintf(err, errlen, "'%s': host is empty or too long", s);
    return -1;
  }
  char *end;
  const char *p = colon + 1;
  if (*p < '0' || *p > '9') {
    snprintf(err, errlen, "'%s': port is not a number", s);
    return -1;
  }
  unsigned long port = strtoul(p, &end, 10);
  if (*end != '\0' || port > 65535 || (port == 0 && !allow_port0)) {
    snprintf(err, errlen, "'%s': port must be 1-65535", s);
    return -1;
  }
  memcpy(out->host, host, hostlen);
  out->host[hostlen] = '\0';
  out->port = (uint16_t)port;
  return 0;
}

char *addr_format(const struct hostport *hp, char *buf, size_t len) {
  if (strchr(hp->host, ':') != NULL)
    snprintf(buf, len, "[%s]:%u", hp->host, hp->port);
  else
    snprintf(buf, len, "%s:%u", hp->host, hp->port);
  return buf;
}

char *addr_ip_sa(const struct sockaddr *sa, char *buf, size_t len) {
  char ip[INET6_ADDRSTRLEN] = "?";
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
    inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
  } else if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
    if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) /* an IPv4 client of a dual-stack socket */
      inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], ip, sizeof ip);
    else
      inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
  }
  snprintf(buf, len, "%s", ip);
  return buf;
}

char *addr_format_sa(const struct sockaddr *sa, char *buf, size_t len) {
  char ip[INET6_ADDRSTRLEN];
  addr_ip_sa(sa, ip, sizeof ip);
  if (sa->sa_family == AF_INET)
    snprintf(buf, len, "%s:%u", ip, ntohs(((const struct sockaddr_in *)(const void *)sa)->sin_port));
  else if (sa->sa_family == AF_INET6)
    snprintf(buf, len, strchr(ip, ':') ? "[%s]:%u" : "%s:%u", ip,
             ntohs(((const struct sockaddr_in6 *)(const void *)sa)->sin6_port));
  else
    snprintf(buf, len, "unix");
  return buf;
}
