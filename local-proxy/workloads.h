/* workloads.h: the workloads behind a Service's selector.
 *
 * A Service may select pods of several workloads: a stable and a canary
 * Deployment, two versions during a blue/green switch, a Deployment plus a bare
 * pod. Connect needs all of them: each one's pod template says what a named
 * targetPort means on its pods (portplan.h), inspect names every one, and
 * --replace may only scale a Service that has one workload (connect_run.c). */
#ifndef LOCAL_PROXY_WORKLOADS_H
#define LOCAL_PROXY_WORKLOADS_H

#include <stddef.h>

#include <cjson/cJSON.h>

struct kube;
struct kube_err;

#define WORKLOADS_MAX 8

struct workload {
  char kind[32];   /* "Deployment", "StatefulSet", "ReplicaSet", "DaemonSet", ...;
                    * "Pods" for pods no controller owns */
  char name[256];  /* "" for "Pods" */
  int pods;        /* how many of the selected pods are its */
  cJSON *spec;     /* its pod template's spec (the pod's own for "Pods"), owned */
};

struct workloads {
  struct workload w[WORKLOADS_MAX];
  int n;
  int more;        /* workloads beyond WORKLOADS_MAX, counted but not kept */
};

/* Find the workload of every pod in pods (a PodList's items), following the
 * controller ownerReference (a ReplicaSet up to its Deployment), and read each
 * workload's pod template once. Returns 0, or -1 with e filled by the failing
 * API call; out is then freed. */
int workloads_find(struct kube *k, const char *ns, const cJSON *pods, struct workloads *out,
                   struct kube_err *e);

/* "Deployment stable (2 pods), Deployment canary (1 pod)" into buf. */
char *workloads_describe(const struct workloads *ws, char *buf, size_t len);

void workloads_free(struct workloads *ws);

#endif
