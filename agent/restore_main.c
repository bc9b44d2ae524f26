/* restore_main.c: kbridge-agent-restore, the agent's restore as a process of
 * its own.
 *
 * The agent (agent/lifecycle.c) starts this program when its lease runs out,
 * so that only this short-lived process links the Kubernetes client (libcurl
 * and its many dependencies, libyaml, cJSON) and the agent's resident memory
 * stays small while it serves traffic. It builds the in-cluster client from the
 * pod's service account, runs takeover_restore_id() (common/takeover.h) for
 * --service in --namespace (and --takeover-id, the agent's), prints the report
 * on stdout and exits 0; on failure it prints the reason on stderr (one line,
 * the last) and exits 1; bad flags (the common option parser, optparse.h)
 * exit 2. */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <curl/curl.h>

#include "kube.h"
#include "kubeconfig.h"
#include "optparse.h"
#include "takeover.h"

struct restore_options {
  char namespace[64], service[64], takeover_id[64];
};

#define OFF(f) offsetof(struct restore_options, f)
#define SZ(f) sizeof(((struct restore_options *)0)->f)
static const struct opt_def restore_opts[] = {
    {"namespace", OPT_LABEL, OFF(namespace), 0, 0, NULL, "NS", 0, 0,
     "the Service's namespace (default: the pod's)", .size = SZ(namespace)},
    {"service", OPT_LABEL, OFF(service), 0, 1, NULL, "NAME", 0, 0,
     "the Service taken over by kbridge", .size = SZ(service)},
    {"takeover-id", OPT_LABEL, OFF(takeover_id), 0, 0, NULL, "ID", 0, 0,
     "only that takeover: a newer one (taken over again since) is left alone",
     .size = SZ(takeover_id)},
};
static const struct opt_cmd restore_cmd = {
    "",
    "Put a Service taken over by kbridge back as it was.",
    "Run by kbridge-agent when its lease runs out, with the pod's service account.",
    restore_opts,
    sizeof restore_opts / sizeof restore_opts[0],
    .prog = "kbridge-agent-restore",
};

int main(int argc, char **argv) {
  struct restore_options o;
  char err[1024] = "";
  memset(&o, 0, sizeof o);
  switch (opt_parse(&restore_cmd, argc - 1, argv + 1, &o, err, sizeof err)) {
  case 0: break;
  case 1: opt_help(&restore_cmd, stdout); return 0;
  default: fprintf(stderr, "kbridge-agent-restore: %s\n", err); return 2;
  }
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    fprintf(stderr, "kbridge-agent-restore: cannot initialise libcurl\n");
    return 1;
  }
  struct kubeconfig *kc = NULL;
  if (kubeconfig_load_incluster(o.namespace[0] ? o.namespace : NULL, &kc, err, sizeof err) < 0) {
    fprintf(stderr, "in-cluster Kubernetes configuration: %s\n", err);
    return 1;
  }
  snprintf(o.namespace, sizeof o.namespace, "%s", kc->namespace ? kc->namespace : "default");
  struct kube *k = kube_new(kc, err, sizeof err); /* takes kc, also on failure */
  if (!k) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  struct takeover_report rep;
  memset(&rep, 0, sizeof rep);
  int r = takeover_restore_id(k, o.namespace, o.service, o.takeover_id, &rep, err, sizeof err);
  kube_free(k);
  curl_global_cleanup();
  fputs(rep.text, stdout);
  if (rep.text[0] && rep.text[strlen(rep.text) - 1] != '\n') putchar('\n');
  if (r < 0) {
    fflush(stdout);
    fprintf(stderr, "%s\n", err[0] ? err : "restore failed (no reason given)");
    return 1;
  }
  if (rep.conflicts)
    printf("%d conflict(s): changes made by someone else were left alone (see above)\n",
           rep.conflicts);
  printf("service %s/%s restored: %d object(s) changed, %d conflict(s)\n", o.namespace, o.service,
         rep.changed, rep.conflicts);
  return 0;
}
