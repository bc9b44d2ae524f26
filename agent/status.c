/* status.c: /healthz and /metrics over evhttp.
 *
 * /healthz answers 200 with a line "ok" and then one JSON object: the keys held
 * and their tunnel counts, the identity holding each key, and the leases (the
 * keys held plus those whose tunnels were lost less than a lease ago). /metrics is
 * Prometheus text format 0.0.4, from the counters in metrics.h and gauges
 * computed when scraped. */
#include "status.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/util.h>

#include "addr.h"
#include "agent.h"
#include "bind.h"
#include "lifecycle.h"
#include "log.h"
#include "metrics.h"
#include "route_table.h"
#include "tunnels.h"


/* The names of two enums (metrics.h), one table each: the same shape by nature. */
static const char *const error_names[MERR_MAX] = {
    [MERR_BAD_REQUEST] = "bad_request",
    [MERR_HEAD_TOO_LARGE] = "head_too_large",
    [MERR_HEAD_TIMEOUT] = "head_timeout",
    [MERR_FALLBACK_UNREACHABLE] = "fallback_unreachable",
    [MERR_FALLBACK_DNS] = "fallback_dns",
    [MERR_ROUTE_FAILED] = "route_failed",
    [MERR_UPSTREAM_CLOSED] = "upstream_closed",
    [MERR_BAD_RESPONSE] = "bad_response",
    [MERR_CLIENT_ABORTED] = "client_aborted",
};

static const char *const close_names[MCLOSE_MAX] = {
    [MCLOSE_NONE] = "done", /* folded into "done" below */
    [MCLOSE_DONE] = "done",
    [MCLOSE_IDLE_TIMEOUT] = "idle_timeout",
    [MCLOSE_SEND_TIMEOUT] = "send_timeout",
    [MCLOSE_ERROR_RESPONSE] = "error_response",
    [MCLOSE_UPSTREAM] = "upstream_failed",
    [MCLOSE_ABORTED] = "client_aborted",
    [MCLOSE_CLIENT_ERROR] = "client_error",
    [MCLOSE_SHUTDOWN] = "shutdown",
};


struct key_list {
  struct evbuffer *b;
  int first;
};

static void add_key(const char *key, size_t nconns, void *arg) {
  struct key_list *kl = arg;
  evbuffer_add_printf(kl->b, "%s\"%s\":%zu", kl->first ? "" : ",", key, nconns);
  kl->first = 0;
}

/* "identities": key -> the identity holding it (tunnels.h), JSON-escaped. */
struct id_list {
  struct evbuffer *b;
  struct agent *ag;
  int first;
};

static void add_identity(const char *key, size_t nconns, void *arg) {
  struct id_list *il = arg;
  const char *id = tunnels_key_identity(il->ag, key);
  evbuffer_add_printf(il->b, "%s\"%s\":\"", il->first ? "" : ",", key);
  for (const unsigned char *p = (const unsigned char *)(id ? id : ""); *p; p++) {
    if (*p == '"' || *p == '\\')
      evbuffer_add_printf(il->b, "\\%c", *p);
    else if (*p < 0x20)
      evbuffer_add_printf(il->b, "\\u%04x", *p);
    else
      evbuffer_add(il->b, p, 1);
  }
  evbuffer_add(il->b, "\"", 1);
  il->first = 0;
  (void)nconns;
}

static void healthz(struct evhttp_request *req, void *arg) {
  struct agent *ag = arg;
  struct evbuffer *b = evbuffer_new();
  if (!b) {
    evhttp_send_error(req, 500, "out of memory");
    return;
  }
  struct key_list kl = {b, 1};
  evbuffer_add_printf(b, "ok\n{\"keys\":{");
  route_table_foreach(ag->routes, add_key, &kl);
  struct id_list il = {b, ag, 1};
  evbuffer_add_printf(b, "},\"identities\":{");
  route_table_foreach(ag->routes, add_identity, &il);
  evbuffer_add_printf(b, "},\"exclusive\":%s,\"tunnels\":%ld,\"connections\":%ld",
                      ag->opt->exclusive ? "true" : "false", ag->stats.tunnels,
                      ag->stats.connections_open);
  lifecycle_json(ag->life, b);
  lifecycle_leases_json(ag->life, ag->routes, b);
  evbuffer_add_printf(b, "}\n");
  evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain");
  int down = ag->stopping || ag->draining;
  evhttp_send_reply(req, down ? 503 : 200, ag->stopping ? "Stopping" : ag->draining ? "Draining" : "OK",
                    b);
  evbuffer_free(b);
}

static void metrics_page(struct evhttp_request *req, void *arg) {
  struct agent *ag = arg;
  const struct metrics *m = &ag->stats;
  struct evbuffer *b = evbuffer_new();
  if (!b) {
    evhttp_send_error(req, 500, "out of memory");
    return;
  }
  evbuffer_add_printf(b, "# HELP kbridge_requests_total HTTP requests by route.\n"
                         "# TYPE kbridge_requests_total counter\n"
                         "kbridge_requests_total{route=\"fallback\"} %llu\n",
                      (unsigned long long)m->requests_fallback);
  for (size_t i = 0; i < m->nroutes; i++)
    evbuffer_add_printf(b, "kbridge_requests_total{route=\"%s\"} %llu\n", m->routes[i].key,
                        (unsigned long long)m->routes[i].requests);
  evbuffer_add_printf(b, "# HELP kbridge_request_errors_total Requests answered with an error "
                         "or cut, by reason.\n# TYPE kbridge_request_errors_total counter\n");
  for (int i = 0; i < MERR_MAX; i++)
    evbuffer_add_printf(b, "kbridge_request_errors_total{reason=\"%s\"} %llu\n", error_names[i],
                        (unsigned long long)m->errors[i]);
  evbuffer_add_printf(
      b,
      "# HELP kbridge_bytes_total Bytes relayed.\n# TYPE kbridge_bytes_total counter\n"
      "kbridge_bytes_total{direction=\"request\"} %llu\n"
      "kbridge_bytes_total{direction=\"response\"} %llu\n"
      "# HELP kbridge_raw_connections_total Connections served as raw TCP.\n"
      "# TYPE kbridge_raw_connections_total counter\nkbridge_raw_connections_total %llu\n"
      "# HELP kbridge_upgrades_total Connections upgraded (101).\n"
      "# TYPE kbridge_upgrades_total counter\nkbridge_upgrades_total %llu\n"
      "# HELP kbridge_tunnels Live tunnel connections.\n# TYPE kbridge_tunnels gauge\n"
      "kbridge_tunnels %ld\n"
      "# HELP kbridge_routes Route keys held.\n# TYPE kbridge_routes gauge\nkbridge_routes %zu\n"
      "# HELP kbridge_streams_open Tunnel streams in use by the agent.\n"
      "# TYPE kbridge_streams_open gauge\nkbridge_streams_open %ld\n"
      "# HELP kbridge_connections_open Client connections.\n"
      "# TYPE kbridge_connections_open gauge\nkbridge_connections_open %ld\n"
      "# HELP kbridge_upstream_pool_idle Idle pooled upstream connections.\n"
      "# TYPE kbridge_upstream_pool_idle gauge\nkbridge_upstream_pool_idle %ld\n",
      (unsigned long long)m->bytes_request, (unsigned long long)m->bytes_response,
      (unsigned long long)m->raw_connections, (unsigned long long)m->upgrades, m->tunnels,
      route_table_keys(ag->routes), m->streams_open, m->connections_open, m->pool_idle);
  evbuffer_add_printf(b, "# HELP kbridge_client_closes_total Client connections ended, by "
                         "reason (raw and upgraded ones only for send_timeout).\n# TYPE kbridge_client_closes_total counter\n");
  for (int i = MCLOSE_DONE; i < MCLOSE_MAX; i++)
    evbuffer_add_printf(b, "kbridge_client_closes_total{reason=\"%s\"} %llu\n", close_names[i],
                        (unsigned long long)(m->closes[i] + (i == MCLOSE_DONE ? m->closes[0] : 0)));
  evbuffer_add_printf(
      b,
      "# HELP kbridge_tunnel_flood_closes_total Tunnels cut off because the answers to their "
      "frames (PING, RESET) piled up unread.\n"
      "# TYPE kbridge_tunnel_flood_closes_total counter\nkbridge_tunnel_flood_closes_total %llu\n"
      "# HELP kbridge_tunnel_read_pauses_total Times a tunnel was not read because its output "
      "was full (counted when the tunnel ends).\n"
      "# TYPE kbridge_tunnel_read_pauses_total counter\nkbridge_tunnel_read_pauses_total %llu\n"
      "# HELP kbridge_tunnels_pending Tunnel connections before an accepted HELLO.\n"
      "# TYPE kbridge_tunnels_pending gauge\nkbridge_tunnels_pending %zu\n"
      "# HELP kbridge_tunnel_accept_errors_total accept() failures on the tunnel port.\n"
      "# TYPE kbridge_tunnel_accept_errors_total counter\nkbridge_tunnel_accept_errors_total %llu\n",
      (unsigned long long)m->tunnel_flood_closes, (unsigned long long)m->tunnel_read_pauses,
      ag->tunnels_pending, (unsigned long long)ag->tunnel_accept_errors);
  lifecycle_metrics(ag->life, ag->routes, b);
  evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                    "text/plain; version=0.0.4");
  evhttp_send_reply(req, 200, "OK", b);
  evbuffer_free(b);
}

static void not_found(struct evhttp_request *req, void *arg) {
  evhttp_send_error(req, 404, "try /healthz or /metrics");
}

int status_serve(struct agent *ag, const struct hostport *hp, char *bound, size_t boundlen,
                  char *err, size_t errlen) {
  struct evhttp *http = evhttp_new(ag->base);
  if (!http) {
    snprintf(err, errlen, "--metrics: out of memory");
    return -1;
  }
  evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
  evhttp_set_cb(http, "/healthz", healthz, ag);
  evhttp_set_cb(http, "/metrics", metrics_page, ag);
  evhttp_set_gencb(http, not_found, ag);
  char a[300], how[300], why[300];
  int fds[BIND_MAX_FDS];
  int n = bind_listen(hp, 128, fds, how, sizeof how, why, sizeof why);
  if (n < 0) {
    snprintf(err, errlen, "--metrics %s: cannot listen: %s", addr_format(hp, a, sizeof a), why);
    evhttp_free(http);
    return -1;
  }
  for (int i = 0; i < n; i++) {
    if (!evhttp_accept_socket_with_handle(http, fds[i])) {
      snprintf(err, errlen, "--metrics %s: out of memory", addr_format(hp, a, sizeof a));
      for (int j = i; j < n; j++) close(fds[j]);
      evhttp_free(http);
      return -1;
    }
  }
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  getsockname(fds[0], (struct sockaddr *)&ss, &sl);
  addr_format_sa((struct sockaddr *)&ss, bound, boundlen);
  log_info("metrics %s: listening on %s", bound, how);
  ag->metrics_http = http;
  return 0;
}

void status_stop(struct agent *ag) {
  if (ag->metrics_http) evhttp_free(ag->metrics_http);
  ag->metrics_http = NULL;
}
