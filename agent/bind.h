/* bind.h: listening sockets for the agent's ports, in every address family the
 * pod has.
 *
 * Clusters are IPv4, IPv6 single-stack or dual-stack; the agent must answer the
 * readiness probe and Service traffic in whichever the cluster uses. The
 * wildcard "[::]" (what `kbridge connect` gives the agent for each port) means
 * "every address, both families":
 *   1. one IPv6 socket with IPV6_V6ONLY off, which takes IPv4 clients too (as
 *      IPv4-mapped addresses): the normal case on Linux;
 *   2. if the kernel refuses IPV6_V6ONLY off: two sockets, [::] (IPv6 only)
 *      and 0.0.0.0, on the same port;
 *   3. if the host has no IPv6 at all (no AF_INET6 sockets, or [::] cannot be
 *      bound): 0.0.0.0 alone.
 * Which one was used is described in *how, for the log. Any other host
 * ("0.0.0.0", "127.0.0.1", "[::1]", a name) is one socket on the first address
 * it resolves to, as before.
 *
 * The test hook KBRIDGE_TEST_NO_DUALSTACK=1 in the environment makes step 1
 * fail as if the kernel refused it, so tests reach step 2 on Linux. */
#ifndef KB_AGENT_BIND_H
#define KB_AGENT_BIND_H

#include <stddef.h>

#include "addr.h"

#define BIND_MAX_FDS 2

/* Bind and listen (non-blocking, close-on-exec, SO_REUSEADDR) for hp. Fills
 * fds[0..n) and returns n (1 or 2), or -1 with err set (nothing left open).
 * how: a sentence for the log, e.g. "[::]:8080, one dual-stack socket (IPv6
 * and IPv4)". */
int bind_listen(const struct hostport *hp, int backlog, int fds[BIND_MAX_FDS], char *how,
                size_t howlen, char *err, size_t errlen);

#endif
