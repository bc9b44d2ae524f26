/* client.h: one client connection as an object: its state, lifetime and output.
 *
 * struct downstream and the helpers every part of the connection's code uses:
 * entering and leaving a callback (closing inside one is safe), closing
 * reasons, timers, the flush-then-half-close-then-linger ending, error
 * responses of our own, writing to the client, handing both ends to a splice.
 * The lowest of the three client modules (client < relay < downstream): the
 * HTTP relay (relay.h) and the connection's entry points (downstream.h) build
 * on it. Where the output drains it calls up through ds->resume_response. */
#ifndef AGENT_CLIENT_H
#define AGENT_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include <llhttp.h>

#include "dnslabel.h"
#include "http_head.h"
#include "metrics.h"
#include "pool.h"
#include "route.h"

struct agent;
struct bufferevent;
struct event;
struct evconnlistener;
struct hostport;
struct upstream;

/* One service port the agent listens on (main.c opens it); its connections are
 * served here. */
struct agent_listener {
  struct agent *ag;
  struct evconnlistener *lev;
  struct evconnlistener *lev2;   /* the IPv4 socket when "[::]" took two (bind.h), or NULL */
  uint16_t port; /* the bound port, told to developers in OPEN frames */
  const struct hostport *fallback; /* where its unrouted traffic goes (--fallback or
                                    * its --port-map entry's) */
  struct pool pool;              /* idle keep-alive connections to that fallback */
};

enum ds_state {
  DS_SNIFF,         /* accepted; waiting up to --sniff-timeout-ms for the first bytes */
  DS_RAW_CONNECT,   /* raw TCP: connecting to the fallback; client bytes wait in input */
  DS_IDLE,          /* HTTP keep-alive between requests; --idle-timeout-ms running */
  DS_READ_HEAD,     /* parsing a request head; --header-timeout-ms running */
  DS_FORWARD_BODY,  /* head sent upstream; relaying the request body as it arrives */
  DS_WAIT_RESPONSE, /* request fully sent; relaying the response; client input buffered */
  DS_UPGRADED,      /* 101 or raw: handed to a splice; this object is going away */
  DS_CLOSING,       /* last bytes queued to the client: flush, half-close, linger, free */
};

extern const char *const client_state_names[]; /* by enum ds_state, for logs */

struct downstream {
  struct agent *ag;
  struct bufferevent *bev;
  struct event *timer;       /* sniff / idle / header / linger, by state */
  struct event *flush_ev;    /* bulk output: one send at the end of the loop turn */
  enum ds_state state;
  uint16_t port;             /* service port the client connected to */
  struct agent_listener *li; /* its listener: fallback address and pool */
  char peer[64];             /* client "ip:port" */
  char client_ip[48];        /* client address alone, for X-Forwarded-For / Forwarded */

  llhttp_t *req;             /* allocated on the first HTTP request */
  llhttp_t *resp;
  struct http_head head;     /* current request head */
  size_t head_bytes;         /* raw bytes of the current head consumed so far */

  struct upstream *up;       /* where the current request goes */
  struct pool *up_pool;      /* its pool: fallback, or the developer tunnel's */
  char route[DNS_LABEL_MAX + 1]; /* the current request's key, "" = fallback */
  struct route_match match;  /* how it was routed: a retry injects the same lines */
  char req_upgrade[128];     /* the request's Upgrade list, if it asked for one */
  char resp_field[16];       /* response parser: the current field name (short ones) */
  char resp_upgrade[128];    /* response parser: the Upgrade header of the response */
  uint8_t method;
  uint8_t close_reason;      /* enum metrics_close, set by the first decision to end */
  unsigned busy;
  /* relay_response(): the client took its output down to the low mark, relay
   * more of the response (client.c calls up through this). */
  void (*resume_response)(struct downstream *ds);
  TAILQ_ENTRY(downstream) link; /* in ag->clients until freed or handed off */

  unsigned dead : 1;         /* client_close() called; freed when busy drops to 0 */
  unsigned flush_queued : 1; /* flush_ev is active */
  unsigned handed_off : 1;   /* bev belongs to a splice now */
  unsigned head_init : 1;
  unsigned too_big : 1;      /* the head hit a limit inside a parser callback */
  unsigned hdrs_done : 1;    /* request parser paused at the end of the head */
  unsigned msg_done : 1;     /* request parser paused at the end of the message */
  unsigned req_paused : 1;   /* request parser needs llhttp_resume() */
  unsigned req_done : 1;     /* the whole request went upstream */
  unsigned req_has_body : 1;
  unsigned req_keepalive : 1;
  unsigned resp_msg_done : 1;   /* response parser paused at the end of a message */
  unsigned resp_started : 1;    /* bytes of the final response went to the client */
  unsigned up_eof : 1;          /* upstream finished sending */
  unsigned client_eof : 1;      /* client half-closed */
  unsigned wait_up_drain : 1;   /* client reads off: upstream output above high mark */
  unsigned wait_client_drain : 1; /* upstream reads off: client output above high mark */
  unsigned retried : 1;         /* the request was re-sent once on a fresh upstream */
  unsigned req_wants_upgrade : 1; /* Upgrade + Connection: upgrade (101 allowed) */
  unsigned resp_in_upgrade : 1; /* response parser: inside an Upgrade field's value */
  unsigned resp_field_long : 1; /* response parser: field name longer than resp_field */
  unsigned resp_upgrade_long : 1; /* response parser: Upgrade list did not fit: refused */
};

/* Every entry point (bufferevent, upstream and timer callbacks) is bracketed by
 * client_enter/client_leave; the outermost leave writes what was queued for
 * the client and frees the connection if client_close() was called inside. */
void client_enter(struct downstream *ds);
void client_leave(struct downstream *ds);
/* Remember why the connection ends (the first reason given wins). */
void client_close_reason(struct downstream *ds, enum metrics_close r);
/* The per-connection buffer share of --buffer-budget (4..32 KiB). */
size_t client_share(const struct agent *ag);
/* Mark dead; freed at once, or by the outermost client_leave(). */
void client_close(struct downstream *ds);
void client_free(struct downstream *ds);
void client_set_timer(struct downstream *ds, long ms);
/* Queue nothing more: flush, half-close, linger, free. */
void client_start_closing(struct downstream *ds);
/* Answer with an error of our own and close (cut if the response started). */
void client_respond_error(struct downstream *ds, int status, const char *reason,
                          enum metrics_error merr, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Client and ds->up become one raw byte pipe (raw mode, or after a 101). */
void client_hand_to_splice(struct downstream *ds);
/* Send what is queued for the client now (see client.c). */
void client_flush(struct downstream *ds);
/* The client bufferevent's write callback (downstream_accept sets it). */
void client_write(struct bufferevent *bev, void *arg);

#endif
