/* tunnel_demux.h: the tunnel's read side: frames from the carrier to the
 * streams and the handshake (HELLO/WELCOME), the carrier's read and event
 * callbacks. Above tunnel_mux.h (it answers, resets and closes through it);
 * tunnel_conn.c installs these callbacks. Not for users (tunnel.h). */
#ifndef KB_TUNNEL_DEMUX_H
#define KB_TUNNEL_DEMUX_H

#include <event2/util.h>

struct bufferevent;

#define CARRIER_RBUF (64u * 1024u) /* OpenSSL's read buffer with read-ahead (tunnel_new) */

void demux_carrier_read_cb(struct bufferevent *bev, void *arg);
void demux_carrier_event_cb(struct bufferevent *bev, short what, void *arg);
/* reread_ev: parse what OpenSSL buffered when the socket no longer signals it. */
void demux_reread_cb(evutil_socket_t fd, short what, void *arg);

#endif
