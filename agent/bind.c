/* bind.c: see bind.h. */
#include "bind.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* A listening socket on sa. v6only: -1 leaves IPV6_V6ONLY as the kernel's
 * default, 0 or 1 sets it (failure to set it: -2, errno kept). Returns the fd,
 * or -1 (errno kept). */
static int open_listen(const struct sockaddr *sa, socklen_t salen, int v6only, int backlog) {
  int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (sa->sa_family == AF_INET6 && v6only >= 0) {
    int off = v6only == 0 && getenv("KBRIDGE_TEST_NO_DUALSTACK") ? -1 : 0;
    if (off < 0 || setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only) < 0) {
      int e = off < 0 ? ENOPROTOOPT : errno;
      close(fd);
      errno = e;
      return -2;
    }
  }
  if (bind(fd, sa, salen) < 0 || listen(fd, backlog) < 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

static unsigned bound_port(int fd) {
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0) return 0;
  return ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                  : ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* "[::]": both families, as bind.h says. */
static int bind_any(uint16_t port, int backlog, int fds[BIND_MAX_FDS], char *how, size_t howlen,
                    char *err, size_t errlen) {
  struct sockaddr_in6 s6;
  struct sockaddr_in s4;
  memset(&s6, 0, sizeof s6);
  s6.sin6_family = AF_INET6;
  s6.sin6_addr = in6addr_any;
  s6.sin6_port = htons(port);
  memset(&s4, 0, sizeof s4);
  s4.sin_family = AF_INET;
  s4.sin_addr.s_addr = htonl(INADDR_ANY);
  s4.sin_port = htons(port);

  int fd = open_listen((struct sockaddr *)&s6, sizeof s6, 0, backlog);
  if (fd >= 0) {
    snprintf(how, howlen, "[::]:%u, one dual-stack socket (IPv6 and IPv4)", bound_port(fd));
    fds[0] = fd;
    return 1;
  }
  int e = errno;
  if (fd == -2) { /* IPv6 works, IPV6_V6ONLY off does not: two sockets */
    fd = open_listen((struct sockaddr *)&s6, sizeof s6, 1, backlog);
    if (fd < 0) {
      snprintf(err, errlen, "[::]:%u: %s", port, strerror(errno));
      return -1;
    }
    s4.sin_port = htons((uint16_t)bound_port(fd)); /* port 0: the same one for IPv4 */
    int fd4 = open_listen((struct sockaddr *)&s4, sizeof s4, -1, backlog);
    if (fd4 < 0) {
      snprintf(err, errlen, "0.0.0.0:%u: %s", ntohs(s4.sin_port), strerror(errno));
      close(fd);
      return -1;
    }
    snprintf(how, howlen,
             "[::]:%u and 0.0.0.0:%u, two sockets (the kernel refused a dual-stack socket: %s)",
             bound_port(fd), bound_port(fd4), strerror(e));
    fds[0] = fd;
    fds[1] = fd4;
    return 2;
  }
  if (e == EAFNOSUPPORT || e == EADDRNOTAVAIL || e == EPROTONOSUPPORT) { /* no IPv6 here */
    fd = open_listen((struct sockaddr *)&s4, sizeof s4, -1, backlog);
    if (fd < 0) {
      snprintf(err, errlen, "0.0.0.0:%u: %s", port, strerror(errno));
      return -1;
    }
    snprintf(how, howlen, "0.0.0.0:%u, IPv4 only (this host has no IPv6: %s)", bound_port(fd),
             strerror(e));
    fds[0] = fd;
    return 1;
  }
  snprintf(err, errlen, "[::]:%u: %s", port, strerror(e));
  return -1;
}

int bind_listen(const struct hostport *hp, int backlog, int fds[BIND_MAX_FDS], char *how,
                size_t howlen, char *err, size_t errlen) {
  if (strcmp(hp->host, "::") == 0) return bind_any(hp->port, backlog, fds, how, howlen, err, errlen);
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  char port[8];
  snprintf(port, sizeof port, "%u", hp->port);
  int r = getaddrinfo(hp->host, port, &hints, &res);
  if (r != 0) {
    snprintf(err, errlen, "%s: %s", hp->host, gai_strerror(r));
    return -1;
  }
  int fd = open_listen(res->ai_addr, res->ai_addrlen, -1, backlog);
  int e = errno;
  freeaddrinfo(res);
  if (fd < 0) {
    snprintf(err, errlen, "%s", strerror(e));
    return -1;
  }
  snprintf(how, howlen, "one socket on that address");
  fds[0] = fd;
  return 1;
}
