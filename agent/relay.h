/* relay.h: HTTP over a client connection: one request at a time, routed on its
 * own, forwarded with its body as received, its response relayed until it ends.
 *
 * Above client.h (the connection object), below downstream.h (which reads the
 * client and calls in here once the connection is known to speak HTTP). */
#ifndef AGENT_RELAY_H
#define AGENT_RELAY_H

struct downstream;

/* New client bytes (or the first ones): parse and forward what can go now. */
void relay_request(struct downstream *ds);
/* The upstream sent bytes, or the client has room again: relay the response. */
void relay_response(struct downstream *ds);
/* The client half-closed: finish, or count an aborted request. */
void relay_client_eof(struct downstream *ds);

#endif
