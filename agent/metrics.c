/* metrics.c: the agent's counters (metrics.h). Modules bump the fields of
 * struct metrics directly; the per-key request counts grow here. The page that
 * shows them is status.c. */
#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void metrics_count_request(struct metrics *m, const char *key) {
  if (!key || !*key) {
    m->requests_fallback++;
    return;
  }
  for (size_t i = 0; i < m->nroutes; i++)
    if (!strcmp(m->routes[i].key, key)) {
      m->routes[i].requests++;
      return;
    }
  if (m->nroutes == m->routes_cap) {
    size_t cap = m->routes_cap ? m->routes_cap * 2 : 8;
    struct metrics_route *r = realloc(m->routes, cap * sizeof *r);
    if (!r) return; /* a lost count, not a crash */
    m->routes = r;
    m->routes_cap = cap;
  }
  snprintf(m->routes[m->nroutes].key, sizeof m->routes[m->nroutes].key, "%s", key);
  m->routes[m->nroutes++].requests = 1;
}

void metrics_count_error(struct metrics *m, enum metrics_error e) {
  if (e < MERR_MAX) m->errors[e]++;
}

void metrics_free(struct metrics *m) {
  free(m->routes);
  m->routes = NULL;
  m->nroutes = m->routes_cap = 0;
}
