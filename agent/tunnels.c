/* tunnels.c: accept developers' TLS tunnels, register their keys, dial their
 * outbound streams.
 *
 * Life of a tunnel: TCP accept -> TLS 1.3 handshake (client certificate from the
 * service CA required) -> HELLO -> on_hello checks (CN == key, key valid,
 * exclusive rules, the key not held by another identity unless HELLO says
 * force) -> route_table_add -> INBOUND streams carry requests ->
 * on_close: route_table_remove, drop pooled streams; requests in flight see
 * their streams CLOSED (TUNNEL_LOST) and answer 502 or cut the client. */
#include "tunnels.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/ssl.h>

#include "addr.h"
#include "agent.h"
#include "bind.h"
#include "dnslabel.h"
#include "lifecycle.h"
#include "log.h"
#include "route_table.h"
#include "splice.h"
#include "tls.h"
#include "tunnel.h"
#include "upstream.h"

void agent_tunnel_ref(struct agent_tunnel *at) { at->refs++; }

#define TUNNEL_ACCEPT_BACKOFF_MS 1000
#define TUNNEL_ERROR_LOG_MS 10000 /* other accept errors: one log line per 10 s at most */

/* The tunnel listener accepts unless out of descriptors (a back-off second)
 * or --max-pending-tunnels connections are still before their HELLO. */
static void update_tunnel_listener(struct agent *ag) {
  if (!ag->tunnel_lev) return;
  struct evconnlistener *levs[2] = {ag->tunnel_lev, ag->tunnel_lev2};
  for (int i = 0; i < 2 && levs[i]; i++) {
    if (ag->tunnel_paused_fd || ag->tunnel_paused_cap)
      evconnlistener_disable(levs[i]);
    else
      evconnlistener_enable(levs[i]);
  }
}

/* A tunnel connection left the pending state (HELLO accepted, or closed). */
static void pending_done(struct agent_tunnel *at) {
  struct agent *ag = at->ag;
  if (!at->pending) return;
  at->pending = 0;
  ag->tunnels_pending--;
  if (ag->tunnel_paused_cap && ag->tunnels_pending < (size_t)ag->opt->max_pending_tunnels) {
    ag->tunnel_paused_cap = 0;
    log_info("tunnel listener: below %ld pending connections again; accepting",
             ag->opt->max_pending_tunnels);
    update_tunnel_listener(ag);
  }
}

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void tunnels_pools_sweep(struct agent_tunnel *at, long max_idle_ms) {
  for (size_t i = 0; i < AGENT_MAX_LISTEN; i++) pool_sweep(&at->pools[i], max_idle_ms);
}

void tunnels_pools_clear(struct agent_tunnel *at) {
  for (size_t i = 0; i < AGENT_MAX_LISTEN; i++) pool_clear(&at->pools[i]);
}

void agent_tunnel_unref(struct agent_tunnel *at) {
  if (--at->refs == 0) free(at);
}

struct upstream *tunnels_open_stream(struct agent_tunnel *at, uint16_t port, const char *peer) {
  struct upstream *u = upstream_open_stream(at->ag, at->t, port, peer);
  if (!u) return NULL;
  u->at = at;
  u->at_release = agent_tunnel_unref;
  agent_tunnel_ref(at);
  return u;
}

struct agent_tunnel *tunnels_exclusive(struct agent *ag) {
  if (!ag->excl_key[0]) return NULL;
  return route_table_pick(ag->routes, ag->excl_key);
}

/* --- outbound streams: the developer's process dials a cluster address ---------- */

struct outbound {
  struct agent *ag;
  struct tunnel_stream *s;
  struct upstream *u;
  char target[300];
};

static void outbound_stream_event(struct tunnel_stream *s, int what, uint32_t code,
                                  const char *err, void *arg) {
  struct outbound *ob = arg;
  if (what & TUNNEL_STREAM_CLOSED) { /* developer gave up before we connected */
    log_debug("outbound to %s: stream closed while dialing: %s", ob->target, err ? err : "");
    upstream_free(ob->u);
    tunnel_stream_free(ob->s);
    ob->ag->stats.streams_open--;
    free(ob);
  }
}

static void outbound_up_event(struct upstream *u, int what, void *arg) {
  struct outbound *ob = arg;
  struct agent *ag = ob->ag;
  if (what & UPSTREAM_EV_CONNECTED) {
    log_debug("outbound to %s connected", ob->target);
    tunnel_stream_setcb(ob->s, NULL, NULL, NULL);
    struct splice_end a = {.stream = ob->s};
    struct splice_end b = upstream_release(u);
    free(ob);
    if (agent_splice(ag, a, b, AGENT_SPLICE_OUTBOUND) < 0) ag->stats.streams_open--;
    return;
  }
  if (what & (UPSTREAM_EV_ERROR | UPSTREAM_EV_EOF)) {
    char why[600];
    snprintf(why, sizeof why, "%s to %s", u->err[0] ? u->err : "connection closed", ob->target);
    log_info("outbound stream: %s", why);
    uint32_t code = FRAME_RESET_REFUSED;
    if (strstr(u->err, "timed out")) code = FRAME_RESET_TIMEOUT;
    tunnel_stream_reset(ob->s, code, why);
    tunnel_stream_free(ob->s);
    upstream_free(u);
    ag->stats.streams_open--;
    free(ob);
  }
}

static void open_outbound(struct agent *ag, struct agent_tunnel *at, struct tunnel_stream *s,
                          const struct frame_open *o) {
  struct hostport hp;
  memset(&hp, 0, sizeof hp);
  snprintf(hp.host, sizeof hp.host, "%s", o->target_host);
  hp.port = o->port;
  struct outbound *ob = calloc(1, sizeof *ob);
  if (!ob || !hp.host[0] || hp.port == 0) {
    tunnel_stream_reset(s, ob ? FRAME_RESET_REFUSED : FRAME_RESET_INTERNAL,
                        ob ? "bad outbound target" : "out of memory");
    tunnel_stream_free(s);
    free(ob);
    return;
  }
  ob->ag = ag;
  ob->s = s;
  addr_format(&hp, ob->target, sizeof ob->target);
  ag->stats.streams_open++;
  log_debug("developer %s: outbound stream to %s", at->key, ob->target);
  tunnel_stream_setcb(s, NULL, outbound_stream_event, ob);
  ob->u = upstream_connect_tcp(ag, &hp, NULL, outbound_up_event, ob);
  if (!ob->u) {
    tunnel_stream_reset(s, FRAME_RESET_INTERNAL, "out of memory");
    tunnel_stream_free(s);
    ag->stats.streams_open--;
    free(ob);
  }
}

/* --- tunnel callbacks ----------------------------------------------------------- */

const char *tunnels_key_identity(struct agent *ag, const char *key) {
  struct agent_tunnel *o;
  TAILQ_FOREACH(o, &ag->tunnels, link) {
    if (o->registered && strcmp(o->key, key) == 0) return o->identity;
  }
  return NULL;
}

/* HELLO for key from identity id: another identity's tunnels holding key are
 * taken out of the route table at once and sent GOAWAY (their proxies then
 * reconnect and are refused, which tells their users). */
static void evict_holders(struct agent *ag, const char *key, const char *id, const char *by) {
  struct agent_tunnel *o;
  char why[600];
  snprintf(why, sizeof why, "route key %s taken over with --force by %s", key, by);
  TAILQ_FOREACH(o, &ag->tunnels, link) {
    if (!o->registered || strcmp(o->key, key) != 0 || strcmp(o->identity, id) == 0) continue;
    route_table_remove(ag->routes, o->key, o);
    o->registered = 0;
    tunnels_pools_clear(o);
    if (o->t) tunnel_goaway(o->t, FRAME_RESET_CANCEL, why);
  }
}

static int on_hello(struct tunnel *t, const struct frame_hello *hello, char *msg, size_t msglen,
                    void *arg) {
  struct agent_tunnel *at = arg;
  struct agent *ag = at->ag;
  char cn[256];
  SSL *ssl = bufferevent_openssl_get_ssl(tunnel_carrier(t));
  if (!ssl || tls_peer_cn(ssl, cn, sizeof cn) < 0) {
    snprintf(msg, msglen, "no verified client certificate");
    return FRAME_WELCOME_KEY_MISMATCH;
  }
  if (!dns_label_valid(hello->key, strlen(hello->key))) {
    snprintf(msg, msglen, "route key \"%s\" is not a DNS label (a-z, 0-9, '-', <= 63)",
             hello->key);
    return FRAME_WELCOME_BAD_KEY;
  }
  if (strcmp(cn, hello->key) != 0) {
    snprintf(msg, msglen, "route key \"%s\" differs from the certificate's subject \"%s\"",
             hello->key, cn);
    log_warn("tunnel from %s refused: key %s, certificate %s", at->peer, hello->key, cn);
    return FRAME_WELCOME_KEY_MISMATCH;
  }
  char id[TLS_IDENTITY_MAX + 1];
  if (tls_peer_identity(ssl, id, sizeof id) < 0) {
    snprintf(msg, msglen, "the certificate's identity is malformed");
    log_warn("tunnel from %s (%s) refused: malformed identity in the certificate", at->peer,
             hello->key);
    return FRAME_WELCOME_KEY_MISMATCH;
  }
  const char *holder = tunnels_key_identity(ag, hello->key);
  int forced = 0;
  if (holder && strcmp(holder, id) != 0) {
    if (!(hello->flags & FRAME_HELLO_FORCE)) {
      snprintf(msg, msglen, "route key \"%s\" is held by %s; kbridge connect --force takes it "
               "over", hello->key, holder[0] ? holder : "a certificate without identity");
      log_warn("tunnel from %s refused: route key %s is held by %s, not %s", at->peer,
               hello->key, holder[0] ? holder : "(no identity)", id[0] ? id : "(no identity)");
      return FRAME_WELCOME_CONFLICT;
    }
    forced = 1; /* logged below, once the other checks passed */
  }
  if (ag->opt->exclusive && ag->excl_key[0] && strcmp(ag->excl_key, hello->key) != 0 &&
      route_table_conns(ag->routes, ag->excl_key) > 0) {
    snprintf(msg, msglen, "route held by %s since %s (exclusive mode)", ag->excl_key,
             ag->excl_since);
    log_warn("tunnel from %s (%s) refused: service held by %s", at->peer, hello->key,
             ag->excl_key);
    return FRAME_WELCOME_CONFLICT;
  }
  if (forced) {
    log_warn("FORCE: route key %s taken over by %s from %s (tunnel from %s, %s)", hello->key,
             id[0] ? id : "(no identity)", holder[0] ? holder : "(no identity)", at->peer,
             hello->label);
    evict_holders(ag, hello->key, id, id[0] ? id : "(no identity)");
  }
  if (route_table_add(ag->routes, hello->key, at) < 0) {
    snprintf(msg, msglen, "cannot register route key (out of memory)");
    return FRAME_WELCOME_CONFLICT;
  }
  snprintf(at->key, sizeof at->key, "%s", hello->key);
  snprintf(at->identity, sizeof at->identity, "%s", id);
  at->registered = 1;
  pending_done(at);
  if (ag->opt->exclusive && strcmp(ag->excl_key, hello->key) != 0) {
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    snprintf(ag->excl_key, sizeof ag->excl_key, "%s", hello->key);
    strftime(ag->excl_since, sizeof ag->excl_since, "%Y-%m-%dT%H:%M:%SZ", &tm);
  }
  log_info("developer %s [%s] connected from %s (%s); %zu tunnel(s) for this key", hello->key,
           id[0] ? id : "no identity", at->peer, hello->label,
           route_table_conns(ag->routes, hello->key));
  lifecycle_check(ag->life);
  /* The greeting names this agent (in a cluster: its pod), so a CLI whose
   * tunnels reach the agents through one address can tell which one it got
   * (docs/reliability.md). */
  char host[256] = "";
  if (gethostname(host, sizeof host - 1) == 0 && host[0])
    snprintf(msg, msglen, "pod %s", host);
  return FRAME_WELCOME_OK;
}

static void on_open(struct tunnel *t, struct tunnel_stream *s, const struct frame_open *o,
                    void *arg) {
  struct agent_tunnel *at = arg;
  if (o->kind != FRAME_OPEN_OUTBOUND) {
    tunnel_stream_reset(s, FRAME_RESET_PROTOCOL, "the agent accepts only outbound streams");
    tunnel_stream_free(s);
    return;
  }
  open_outbound(at->ag, at, s, o);
}

static void on_close(struct tunnel *t, const char *err, void *arg) {
  struct agent_tunnel *at = arg;
  struct agent *ag = at->ag;
  struct tunnel_stats ts;
  tunnel_get_stats(t, &ts);
  ag->stats.tunnel_flood_closes += ts.flood_closed;
  ag->stats.tunnel_read_pauses += ts.reads_paused;
  if (at->registered) {
    route_table_remove(ag->routes, at->key, at);
    at->registered = 0;
    size_t left = route_table_conns(ag->routes, at->key);
    log_info("developer %s: tunnel from %s closed (%s); %zu tunnel(s) left for this key", at->key,
             at->peer, err ? err : "closed", left);
    if (left == 0 && !strcmp(ag->excl_key, at->key)) ag->excl_key[0] = 0;
    uint32_t code;
    int leave = tunnel_peer_goaway(t, &code) && frame_goaway_is_leave(code);
    lifecycle_tunnel_closed(ag->life, at->key, err, leave);
  } else {
    log_info("tunnel from %s closed before registering: %s", at->peer, err ? err : "closed");
  }
  pending_done(at);
  tunnels_pools_clear(at);
  TAILQ_REMOVE(&ag->tunnels, at, link);
  ag->stats.tunnels--;
  at->t = NULL;
  tunnel_free(t);
  agent_tunnel_unref(at); /* the list's reference */
}

static void tunnel_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                          int socklen, void *arg) {
  struct agent *ag = arg;
  int one = 1; /* many small frames (WINDOW, PING, short responses): no Nagle */
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct agent_tunnel *at = calloc(1, sizeof *at);
  SSL *ssl = at ? SSL_new((SSL_CTX *)ag->ssl) : NULL;
  struct bufferevent *bev =
      ssl ? bufferevent_openssl_socket_new(ag->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                           BEV_OPT_CLOSE_ON_FREE)
          : NULL;
  if (!bev) {
    if (ssl) SSL_free(ssl);
    evutil_closesocket(fd);
    free(at);
    log_err("out of memory accepting a tunnel");
    return;
  }
  at->ag = ag;
  at->refs = 1;
  addr_format_sa(sa, at->peer, sizeof at->peer);
  for (size_t i = 0; i < AGENT_MAX_LISTEN; i++) pool_init(&at->pools[i], ag);
  struct tunnel_config cfg;
  tunnel_config_default(&cfg);
  cfg.handshake_timeout_ms = (unsigned)ag->opt->tunnel_handshake_timeout_ms;
  static const struct tunnel_cbs cbs = {.on_hello = on_hello, .on_open = on_open,
                                        .on_close = on_close};
  at->t = tunnel_new(ag->base, bev, TUNNEL_SERVER, &cfg, NULL, &cbs, at);
  if (!at->t) {
    free(at);
    log_err("out of memory creating a tunnel");
    return;
  }
  TAILQ_INSERT_TAIL(&ag->tunnels, at, link);
  ag->stats.tunnels++;
  at->pending = 1;
  ag->tunnels_pending++;
  log_debug("tunnel connection from %s", at->peer);
  if (ag->tunnels_pending >= (size_t)ag->opt->max_pending_tunnels && !ag->tunnel_paused_cap) {
    /* Unauthenticated connections cost a descriptor and a TLS state each and
     * count against nothing else: at the cap the rest wait in the backlog
     * until these finish their HELLO or time out (--tunnel-handshake-timeout-ms). */
    log_warn("tunnel listener: %zu connections before HELLO (--max-pending-tunnels); pausing "
             "tunnel accepts", ag->tunnels_pending);
    ag->tunnel_paused_cap = 1;
    update_tunnel_listener(ag);
  }
}

/* The tunnel listener's back-off has the shape of main.c's for the service
 * listeners, with its own flags, counter and rate-limited log: two short
 * call sites, not worth a shared listener-set type. */
static void tunnel_backoff_done(evutil_socket_t fd, short what, void *arg) {
  struct agent *ag = arg;
  ag->tunnel_paused_fd = 0;
  update_tunnel_listener(ag);
}

/* accept() failed on the tunnel port. Out of descriptors (or memory): stop
 * accepting for a second, as the service listeners do; the connection stays
 * in the backlog, so retrying at once would fail again at full speed. Other
 * errors are logged at most once per 10 s, with the number left unlogged. */
static void tunnel_accept_error(struct evconnlistener *l, void *arg) {
  struct agent *ag = arg;
  int e = EVUTIL_SOCKET_ERROR();
  ag->tunnel_accept_errors++;
  if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
    if (!ag->tunnel_paused_fd) {
      log_warn("tunnel listener: accept failed: %s; pausing tunnel accepts for %d ms",
               strerror(e), TUNNEL_ACCEPT_BACKOFF_MS);
      ag->tunnel_paused_fd = 1;
      update_tunnel_listener(ag);
      struct timeval tv = {TUNNEL_ACCEPT_BACKOFF_MS / 1000, (TUNNEL_ACCEPT_BACKOFF_MS % 1000) * 1000};
      evtimer_add(ag->tunnel_backoff, &tv);
    }
    return;
  }
  uint64_t now = mono_ms();
  if (ag->tunnel_errors_logged_at_ms && now - ag->tunnel_errors_logged_at_ms < TUNNEL_ERROR_LOG_MS) {
    ag->tunnel_errors_unlogged++;
    return;
  }
  log_warn("tunnel listener: accept failed: %s (%llu more not logged in the last %d s)",
           evutil_socket_error_to_string(e), (unsigned long long)ag->tunnel_errors_unlogged,
           TUNNEL_ERROR_LOG_MS / 1000);
  ag->tunnel_errors_logged_at_ms = now;
  ag->tunnel_errors_unlogged = 0;
}

int tunnels_listen(struct agent *ag, const struct hostport *hp, char *bound, size_t boundlen,
                   char *err, size_t errlen) {
  char how[300], why[300], a[300];
  int fds[BIND_MAX_FDS];
  int n = bind_listen(hp, 128, fds, how, sizeof how, why, sizeof why);
  if (n < 0) {
    snprintf(err, errlen, "--tunnel-listen %s: %s", addr_format(hp, a, sizeof a), why);
    return -1;
  }
  const unsigned flags = LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC;
  ag->tunnel_lev = evconnlistener_new(ag->base, tunnel_accept, ag, flags, 0, fds[0]);
  if (!ag->tunnel_lev) close(fds[0]);
  if (n > 1) {
    ag->tunnel_lev2 = ag->tunnel_lev ? evconnlistener_new(ag->base, tunnel_accept, ag, flags, 0,
                                                          fds[1])
                                     : NULL;
    if (!ag->tunnel_lev2) close(fds[1]);
  }
  ag->tunnel_backoff = evtimer_new(ag->base, tunnel_backoff_done, ag);
  if (!ag->tunnel_lev || (n > 1 && !ag->tunnel_lev2) || !ag->tunnel_backoff) {
    snprintf(err, errlen, "--tunnel-listen: out of memory");
    return -1;
  }
  evconnlistener_set_error_cb(ag->tunnel_lev, tunnel_accept_error);
  if (ag->tunnel_lev2) evconnlistener_set_error_cb(ag->tunnel_lev2, tunnel_accept_error);
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  getsockname(fds[0], (struct sockaddr *)&ss, &sl);
  addr_format_sa((struct sockaddr *)&ss, bound, boundlen);
  log_info("tunnel-listen %s: listening on %s", bound, how);
  return 0;
}

void tunnels_shutdown(struct agent *ag) {
  /* free-and-forget of each handle, the shape of any teardown (splice.c's too) */
  if (ag->tunnel_lev2) {
    evconnlistener_free(ag->tunnel_lev2);
    ag->tunnel_lev2 = NULL;
  }
  if (ag->tunnel_lev) {
    evconnlistener_free(ag->tunnel_lev);
    ag->tunnel_lev = NULL;
  }
  if (ag->tunnel_backoff) {
    event_free(ag->tunnel_backoff);
    ag->tunnel_backoff = NULL;
  }
  struct agent_tunnel *at;
  TAILQ_FOREACH(at, &ag->tunnels, link) {
    if (at->t) tunnel_goaway(at->t, 0, "agent shutting down");
  }
}

void tunnels_free_all(struct agent *ag) {
  if (ag->tunnel_backoff) {
    event_free(ag->tunnel_backoff);
    ag->tunnel_backoff = NULL;
  }
  struct agent_tunnel *at;
  while ((at = TAILQ_FIRST(&ag->tunnels))) {
    TAILQ_REMOVE(&ag->tunnels, at, link);
    pending_done(at);
    tunnels_pools_clear(at);
    if (at->registered) route_table_remove(ag->routes, at->key, at);
    at->registered = 0;
    struct tunnel *t = at->t;
    at->t = NULL;
    if (t) tunnel_free(t);
    ag->stats.tunnels--;
    agent_tunnel_unref(at);
  }
}
