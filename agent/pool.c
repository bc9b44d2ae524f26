/* pool.c: idle upstreams, most recently used first.
 *
 * While an upstream sits in a pool its callbacks point here: a byte, an EOF or an
 * error from the server means the connection cannot carry another request
 * (servers close idle keep-alive connections whenever they like), so it is
 * dropped on the spot. */
#include "pool.h"

#include <time.h>

#include <event2/buffer.h>

#include "agent.h"
#include "log.h"
#include "tunnel.h"
#include "upstream.h"

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void pool_init(struct pool *p, struct agent *ag) {
  p->ag = ag;
  TAILQ_INIT(&p->idle);
  p->n = 0;
}

static void unlink_idle(struct pool *p, struct upstream *u) {
  TAILQ_REMOVE(&p->idle, u, link);
  p->n--;
  p->ag->stats.pool_idle--;
  u->pool = NULL;
}

static void idle_read(struct upstream *u, void *arg) {
  struct pool *p = arg;
  log_debug("pooled upstream sent %zu unexpected bytes; dropped",
            evbuffer_get_length(upstream_input(u)));
  unlink_idle(p, u);
  upstream_free(u);
}

static void idle_event(struct upstream *u, int what, void *arg) {
  struct pool *p = arg;
  if (what & UPSTREAM_EV_WRITABLE) return;
  unlink_idle(p, u);
  upstream_free(u);
}

struct upstream *pool_get(struct pool *p) {
  struct upstream *u = TAILQ_FIRST(&p->idle);
  if (!u) return NULL;
  unlink_idle(p, u);
  upstream_setcb(u, NULL, NULL, NULL);
  u->reused = 1;
  return u;
}

void pool_put(struct pool *p, struct upstream *u) {
  int dead_stream = u->kind == UPSTREAM_STREAM &&
                    (!tunnel_stream_tunnel(u->stream) || tunnel_stream_closed(u->stream) || tunnel_stream_eof(u->stream));
  if ((long)p->n >= p->ag->opt->pool_max || p->ag->stopping || !u->connected || dead_stream ||
      evbuffer_get_length(upstream_input(u)) > 0) {
    upstream_free(u);
    return;
  }
  upstream_pause_read(u, 0);
  upstream_setcb(u, idle_read, idle_event, p);
  u->pool = p;
  u->idle_since_ms = now_ms();
  TAILQ_INSERT_HEAD(&p->idle, u, link);
  p->n++;
  p->ag->stats.pool_idle++;
}

void pool_sweep(struct pool *p, long max_idle_ms) {
  uint64_t now = now_ms();
  struct upstream *u;
  while ((u = TAILQ_LAST(&p->idle, upstream_q)) && now - u->idle_since_ms > (uint64_t)max_idle_ms) {
    unlink_idle(p, u);
    upstream_free(u);
  }
}

void pool_clear(struct pool *p) {
  struct upstream *u;
  while ((u = TAILQ_FIRST(&p->idle))) {
    unlink_idle(p, u);
    upstream_free(u);
  }
}
