/* portplan.c: the agent's listeners and the shadow Service's ports for a
 * Service (see portplan.h for why a named targetPort is never resolved here
 * for good). */
#include "portplan.h"

#include <stdio.h>
#include <string.h>

/* Where the agent listens: every address of the pod, IPv6 and IPv4 (the agent
 * reads "[::]" as both families, agent/bind.h). */
#define LISTEN_ANY "[::]"

static const char *str(const cJSON *o, const char *key) {
  return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, key));
}

int portplan_resolve(const cJSON *spec, const char *name) {
  const cJSON *ctr, *p;
  cJSON_ArrayForEach(ctr, cJSON_GetObjectItemCaseSensitive(spec, "containers")) {
    cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(ctr, "ports")) {
      const char *n = str(p, "name");
      const cJSON *cp = cJSON_GetObjectItemCaseSensitive(p, "containerPort");
      if (n && strcmp(n, name) == 0 && cJSON_IsNumber(cp)) return cp->valueint;
    }
  }
  return -1;
}

static int port_used(const struct portplan *pp, int port) {
  for (int i = 0; i < pp->nl; i++)
    if (pp->l[i].port == port) return 1;
  return 0;
}

/* A numeric targetPort used by any Service port: reserved for its own listener
 * even before that listener is added. */
static int numeric_target(const struct portplan *pp, int port) {
  for (int i = 0; i < pp->nsvc; i++)
    if (!pp->svc[i].tname[0] && pp->svc[i].target == port) return 1;
  return 0;
}

static int free_for_name(const struct portplan *pp, int port) {
  return port >= 1 && port <= 65535 && !port_used(pp, port) && !numeric_target(pp, port);
}

/* The listener for a targetPort (number or name), added when new; -1 when full. */
static int listener_for(struct portplan *pp, const struct portplan_port *q,
                        const cJSON *const *specs, int nspecs) {
  for (int i = 0; i < pp->nl; i++) {
    const struct portplan_listener *l = &pp->l[i];
    if (q->tname[0] ? strcmp(l->tname, q->tname) == 0 : (!l->tname[0] && l->target == q->target))
      return i;
  }
  if (pp->nl == PORTPLAN_MAX) return -1;
  struct portplan_listener *l = &pp->l[pp->nl];
  memset(l, 0, sizeof *l);
  if (!q->tname[0]) {
    l->target = q->target;
    l->port = q->target;
  } else {
    snprintf(l->tname, sizeof l->tname, "%s", q->tname);
    int want = -1;
    for (int i = 0; i < nspecs && want < 0; i++) want = portplan_resolve(specs[i], q->tname);
    if (want < 0) want = q->port; /* nothing selected yet: any port serves */
    /* Free above it, then from 1024 up (a low port needs a sysctl; avoid it). */
    int p = want;
    while (p <= 65535 && !free_for_name(pp, p)) p++;
    if (p > 65535)
      for (p = 1024; p <= 65535 && !free_for_name(pp, p); p++) {
      }
    l->port = p;
  }
  return pp->nl++;
}

int portplan_build(struct portplan *pp, const char *svc, const cJSON *ports,
                   const cJSON *const *specs, int nspecs, char *err, size_t errlen) {
  memset(pp, 0, sizeof *pp);
  const cJSON *p;
  cJSON_ArrayForEach(p, ports) {
    if (pp->nsvc == PORTPLAN_MAX) {
      snprintf(err, errlen, "service %s has more than %d ports; kbridge serves at most %d", svc,
               PORTPLAN_MAX, PORTPLAN_MAX);
      return -1;
    }
    struct portplan_port *q = &pp->svc[pp->nsvc++];
    snprintf(q->name, sizeof q->name, "%s", str(p, "name") ? str(p, "name") : "");
    const char *proto = str(p, "protocol") ? str(p, "protocol") : "TCP";
    const cJSON *port = cJSON_GetObjectItemCaseSensitive(p, "port");
    const cJSON *tp = cJSON_GetObjectItemCaseSensitive(p, "targetPort");
    q->port = cJSON_IsNumber(port) ? port->valueint : 0;
    if (strcmp(proto, "TCP") != 0) {
      snprintf(err, errlen, "service %s port %d is %s: kbridge carries TCP only", svc, q->port,
               proto);
      return -1;
    }
    if (cJSON_IsString(tp)) {
      snprintf(q->tname, sizeof q->tname, "%s", tp->valuestring);
      int found = nspecs == 0;
      for (int i = 0; i < nspecs && !found; i++) found = portplan_resolve(specs[i], q->tname) > 0;
      if (!found) {
        snprintf(err, errlen, "service %s port %d: targetPort \"%s\" names no container port of "
                 "the workload%s behind its selector, so the Service cannot work as it is; fix "
                 "the Service or the pod template first", svc, q->port, q->tname,
                 nspecs == 1 ? "" : "s");
        return -1;
      }
    } else {
      q->target = cJSON_IsNumber(tp) ? tp->valueint : q->port;
    }
  }
  if (pp->nsvc == 0) {
    snprintf(err, errlen, "service %s has no ports", svc);
    return -1;
  }
  for (int i = 0; i < pp->nsvc; i++) {
    int li = listener_for(pp, &pp->svc[i], specs, nspecs);
    if (li < 0) {
      snprintf(err, errlen, "service %s has more than %d distinct target ports", svc,
               PORTPLAN_MAX);
      return -1;
    }
    pp->svc[i].listen = pp->l[li].port;
  }
  /* The agent's own ports must not collide with the service's. */
  static const int cand_t[] = {7443, 17443, 27443}, cand_m[] = {9090, 19090, 29090};
  for (int i = 0; i < 3 && !pp->tunnel_port; i++)
    if (!port_used(pp, cand_t[i])) pp->tunnel_port = cand_t[i];
  for (int i = 0; i < 3 && !pp->metrics_port; i++)
    if (!port_used(pp, cand_m[i])) pp->metrics_port = cand_m[i];
  return 0;
}

void portplan_agent(const struct portplan *pp, const char *origin_host, cJSON *args,
                    cJSON *ports) {
  char buf[600];
  for (int i = 0; i < pp->nl; i++) {
    const struct portplan_listener *l = &pp->l[i];
    /* One port: --listen + --fallback; several: one --port-map each. Either
     * way the listener's unrouted traffic goes to the shadow Service's port of
     * the same number, whose targetPort is the original one. */
    if (pp->nl == 1) {
      snprintf(buf, sizeof buf, LISTEN_ANY ":%d", l->port);
      cJSON_AddItemToArray(args, cJSON_CreateString("--listen"));
      cJSON_AddItemToArray(args, cJSON_CreateString(buf));
      snprintf(buf, sizeof buf, "%s:%d", origin_host, l->port);
      cJSON_AddItemToArray(args, cJSON_CreateString("--fallback"));
    } else {
      snprintf(buf, sizeof buf, LISTEN_ANY ":%d=%s:%d", l->port, origin_host, l->port);
      cJSON_AddItemToArray(args, cJSON_CreateString("--port-map"));
    }
    cJSON_AddItemToArray(args, cJSON_CreateString(buf));
    cJSON *p = cJSON_CreateObject();
    /* Named like the original container port, so the Service's named
     * targetPort resolves to this listener on the agent pod. */
    if (l->tname[0]) cJSON_AddStringToObject(p, "name", l->tname);
    cJSON_AddNumberToObject(p, "containerPort", l->port);
    cJSON_AddItemToArray(ports, p);
  }
}

cJSON *portplan_shadow_ports(const struct portplan *pp) {
  cJSON *ports = cJSON_CreateArray();
  for (int i = 0; i < pp->nl; i++) {
    const struct portplan_listener *l = &pp->l[i];
    cJSON *p = cJSON_CreateObject();
    char name[32];
    snprintf(name, sizeof name, "p%d", l->port);
    cJSON_AddStringToObject(p, "name", name);
    cJSON_AddNumberToObject(p, "port", l->port);
    if (l->tname[0])
      cJSON_AddStringToObject(p, "targetPort", l->tname); /* resolved per pod */
    else
      cJSON_AddNumberToObject(p, "targetPort", l->target);
    cJSON_AddItemToArray(ports, p);
  }
  return ports;
}
