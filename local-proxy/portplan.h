/* portplan.h: the ports an agent serves for a Service, and how each reaches
 * the original pods.
 *
 * A Service port's targetPort is either a number or the name of a container
 * port. Kubernetes resolves a name per pod (the endpoints controller reads each
 * pod's own spec), so one Service may send "http" to 8080 on its stable pods
 * and to 8081 on its canary pods. The plan keeps that: the agent gets one
 * listener per distinct targetPort (a number stays that number; a name gets a
 * port of the agent's own, declared on the agent's container under that name),
 * and the shadow Service gets one port per listener, numbered like the
 * listener, whose targetPort is the original targetPort unchanged. The agent
 * dials the shadow Service on its listener's own port, and the endpoints
 * controller does the per-pod resolution as it did before the takeover.
 *
 * A numeric and a named targetPort naming the same container port (8080 and
 * "http"=8080) are two listeners, so the name is never lost. */
#ifndef LOCAL_PROXY_PORTPLAN_H
#define LOCAL_PROXY_PORTPLAN_H

#include <stddef.h>

#include <cjson/cJSON.h>

#define PORTPLAN_MAX 16

struct portplan_port {   /* one port of the Service */
  char name[64];         /* the Service port's name ("" if none) */
  int port;              /* the Service's port */
  int target;            /* numeric targetPort, or 0 when named */
  char tname[64];        /* named targetPort, or "" */
  int listen;            /* the agent's port that serves it */
};

struct portplan_listener { /* one port of the agent, one port of the shadow Service */
  int port;              /* agent containerPort == shadow Service port */
  int target;            /* the original numeric targetPort, or 0 */
  char tname[64];        /* the original named targetPort, or "" */
};

struct portplan {
  struct portplan_port svc[PORTPLAN_MAX];
  int nsvc;
  struct portplan_listener l[PORTPLAN_MAX];
  int nl;
  int tunnel_port, metrics_port; /* the agent's own, clear of every listener */
};

/* The containerPort named name in a pod spec, or -1. */
int portplan_resolve(const cJSON *pod_spec, const char *name);

/* Plan for the Service ports `ports` (the Service's spec.ports) given the pod
 * specs of the workloads behind its selector (nspecs may be 0: nothing selected
 * yet). A named targetPort that some workload declares keeps, when it is free,
 * the number the first such workload gives it (what users see in logs); else
 * the next free port above it. A name no workload declares is refused when
 * there are workloads (the Service could not have worked). Returns 0, or -1
 * with a sentence in err naming the Service port and what to do; svc names the
 * Service in messages. */
int portplan_build(struct portplan *pp, const char *svc, const cJSON *ports,
                   const cJSON *const *specs, int nspecs, char *err, size_t errlen);

/* Fill the agent container's args (listen/fallback pairs to the shadow
 * Service `origin_host`, e.g. "api-kbridge-origin.shop.svc") and ports. */
void portplan_agent(const struct portplan *pp, const char *origin_host, cJSON *args,
                    cJSON *ports);

/* The shadow Service's spec.ports. */
cJSON *portplan_shadow_ports(const struct portplan *pp);

#endif
