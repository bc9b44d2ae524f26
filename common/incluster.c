/* incluster.c: the pod's service account (see incluster.h). */
#include "incluster.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* out = dir/name; it must be readable. 0, or -1 with err. */
static int sa_file(const char *dir, const char *name, char *out, size_t outlen, char *err,
                   size_t errlen) {
  snprintf(out, outlen, "%s/%s", dir, name);
  if (access(out, R_OK) == 0) return 0;
  snprintf(err, errlen, "service account %s %s: %s", name, out, strerror(errno));
  return -1;
}

int incluster_check(struct incluster *sa, char *err, size_t errlen) {
  memset(sa, 0, sizeof *sa);
  const char *host = getenv("KUBERNETES_SERVICE_HOST");
  const char *port = getenv("KUBERNETES_SERVICE_PORT");
  if (!host || !*host || !port || !*port) {
    snprintf(err, errlen,
             "not running in a pod: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set");
    return -1;
  }
  sa->host = host;
  sa->port = port;
  const char *dir = getenv("KBRIDGE_SA_DIR");
  if (!dir || !*dir) dir = INCLUSTER_SA_DIR_DEFAULT;
  if (sa_file(dir, "token", sa->token_path, sizeof sa->token_path, err, errlen) < 0 ||
      sa_file(dir, "ca.crt", sa->ca_path, sizeof sa->ca_path, err, errlen) < 0)
    return -1;
  char path[4096];
  snprintf(path, sizeof path, "%s/namespace", dir);
  FILE *f = fopen(path, "r");
  if (f) {
    if (!fgets(sa->namespace, sizeof sa->namespace, f)) sa->namespace[0] = 0;
    fclose(f);
  }
  sa->namespace[strcspn(sa->namespace, "\r\n ")] = 0;
  return 0;
}
