/* pool.h: idle keep-alive upstreams per destination, ready for the next request.
 *
 * One pool for the fallback, one per developer tunnel. A pooled upstream is
 * watched while idle: any byte or EOF from its server means it cannot be reused,
 * and it is dropped at once. Entries older than --pool-idle-ms are dropped by
 * pool_sweep() (called every second). LIFO reuse keeps the warm ones warm. */
#ifndef AGENT_POOL_H
#define AGENT_POOL_H

#include <stddef.h>
#include <sys/queue.h>

struct upstream;
struct agent;

struct pool {
  struct agent *ag;
  TAILQ_HEAD(upstream_q, upstream) idle; /* head = most recently returned */
  size_t n;
};

void pool_init(struct pool *p, struct agent *ag);
/* Take the most recently returned idle upstream, or NULL. The caller owns it and
 * must set its callbacks. */
struct upstream *pool_get(struct pool *p);
/* Give u back for reuse (the caller gives up ownership). Frees it instead when the
 * pool is full or reuse is off. */
void pool_put(struct pool *p, struct upstream *u);
/* Drop entries idle for longer than max_idle_ms. */
void pool_sweep(struct pool *p, long max_idle_ms);
/* Drop everything. */
void pool_clear(struct pool *p);

#endif
