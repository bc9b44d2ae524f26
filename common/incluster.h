/* incluster.h: the one check that this process runs in a pod with a usable
 * service account, shared by the Kubernetes client (kubeconfig_load_incluster)
 * and the agent (which refuses to start without one, so that its restore can
 * run when the lease ends). It links nothing but libc: the agent does not link
 * the Kubernetes client.
 *
 * What is checked: $KUBERNETES_SERVICE_HOST and $KUBERNETES_SERVICE_PORT are
 * set, and the files token and ca.crt in the service account directory
 * ($KBRIDGE_SA_DIR, else /var/run/secrets/kubernetes.io/serviceaccount) are
 * readable. The namespace file is read when it is there. */
#ifndef KB_INCLUSTER_H
#define KB_INCLUSTER_H

#include <stddef.h>

#define INCLUSTER_SA_DIR_DEFAULT "/var/run/secrets/kubernetes.io/serviceaccount"

struct incluster {
  const char *host, *port; /* the environment's values (borrowed), NULL when unset */
  char token_path[4096];   /* <dir>/token, readable */
  char ca_path[4096];      /* <dir>/ca.crt, readable */
  char namespace[256];     /* first word of <dir>/namespace, "" if absent or empty */
};

/* Fill sa. Returns 0, or -1 with one sentence in err:
 *   not running in a pod: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set
 *   service account token /path/token: No such file or directory
 *   service account ca.crt /path/ca.crt: Permission denied
 * sa->host is NULL after the first of these (nothing of the service account
 * was looked at), set after the others. */
int incluster_check(struct incluster *sa, char *err, size_t errlen);

#endif
