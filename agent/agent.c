/* agent.c: the context's own bookkeeping: client connections counted against
 * --max-conns, and the splices the agent keeps so it can abort them at exit.
 *
 * The lowest agent module above the leaves (options, metrics, bind, lifecycle):
 * it knows no other agent module. Where it must reach the top (the service
 * listeners, owned by main.c), it calls ag->accepting_changed. */
#include "agent.h"

#include <stdlib.h>
#include <string.h>

#include <event2/bufferevent.h>

#include "log.h"
#include "splice.h"
#include "tunnel.h"

void agent_conn_opened(struct agent *ag) {
  if (++ag->stats.connections_open >= ag->opt->max_conns && !ag->accept_paused_cap) {
    log_warn("--max-conns %ld reached: accepting paused", ag->opt->max_conns);
    ag->accept_paused_cap = 1;
    ag->accepting_changed(ag);
  }
}

void agent_conn_closed(struct agent *ag) {
  if (--ag->stats.connections_open < ag->opt->max_conns && ag->accept_paused_cap) {
    ag->accept_paused_cap = 0;
    ag->accepting_changed(ag);
  }
}

struct agent_splice {
  struct agent *ag;
  struct splice *sp;
  enum agent_splice_kind kind;
  TAILQ_ENTRY(agent_splice) link;
};

static void splice_done(const char *err, size_t a_to_b, size_t b_to_a, void *arg) {
  struct agent_splice *as = arg;
  struct agent *ag = as->ag;
  TAILQ_REMOVE(&ag->splices, as, link);
  if (as->kind == AGENT_SPLICE_CLIENT) {
    if (err && strstr(err, "side a: timed out")) { /* the client's send timeout */
      ag->stats.closes[MCLOSE_SEND_TIMEOUT]++;
      log_info("raw/upgraded connection closed: the client took no bytes for %ld ms",
               ag->opt->send_timeout_ms);
    }
    ag->stats.bytes_request += a_to_b;
    ag->stats.bytes_response += b_to_a;
    agent_conn_closed(ag);
  } else {
    ag->stats.streams_open--;
  }
  if (err) log_debug("spliced connection ended: %s", err);
  free(as);
}

int agent_splice(struct agent *ag, struct splice_end a, struct splice_end b,
                 enum agent_splice_kind kind) {
  struct agent_splice *as = calloc(1, sizeof *as);
  if (!as) {
    /* splice_new() would own and free the ends; without memory, free them here */
    if (a.bev) bufferevent_free(a.bev);
    if (a.stream) tunnel_stream_free(a.stream);
    if (b.bev) bufferevent_free(b.bev);
    if (b.stream) tunnel_stream_free(b.stream);
    return -1;
  }
  as->ag = ag;
  as->kind = kind;
  TAILQ_INSERT_TAIL(&ag->splices, as, link);
  as->sp = splice_new(a, b, splice_done, as);
  if (!as->sp) {
    TAILQ_REMOVE(&ag->splices, as, link);
    free(as);
    return -1;
  }
  return 0;
}

void agent_splices_abort(struct agent *ag) {
  struct agent_splice *as;
  while ((as = TAILQ_FIRST(&ag->splices))) splice_abort(as->sp, "agent exiting");
}
