/* restore_main.c: kbridge-agent-restore, the agent's restore as a process of
 * its own.
 *
 * The agent (agent/lifecycle.c) starts this program when its lease runs out,
 * so that only this short-lived process links the Kubernetes client (libcurl
 * and its many dependencies, libyaml, cJSON) and the agent's resident memory
 * stays small while it serves traffic. It builds the in-cluster client from the
 * pod's service account, runs takeover_restore_id() (common/takeover.h) for
 * --service in --namespace (and --takeover-id, the agent's), prints the report on stdout and exits 0; on failure
 * it prints the reason on stderr (one line, the last) and exits 1; bad flags
 * exit 2. */
#include <stdio.h>
#include <string.h>

#include <curl/curl.h>

#include "dnslabel.h"
#include "kube.h"
#include "kubeconfig.h"
#include "takeover.h"

static const char usage[] =
    "usage: kbridge-agent-restore [--namespace NS] --service NAME [--takeover-id ID]\n"
    "Put the Service NAME (taken over by kbridge) back as it was, with the pod's service\n"
    "account; run by kbridge-agent when its lease runs out. NS: default the pod's.\n"
    "ID: only that takeover; a newer one (taken over again since) is left alone.\n";

/* Take the value of --name (as "--name V" or "--name=V") at argv[*i] into out
 * (a Kubernetes name). Returns 1 if argv[*i] is that flag, 0 if not, -1 with a
 * message on stderr if its value is missing or invalid. Like local-proxy/options.c's
 * route-key check in shape: this program links no option table (only the
 * Kubernetes client); the shared option table parser (issue 12) can take it in. */
static int flag_label(int argc, char **argv, int *i, const char *name, char *out, size_t outlen) {
  const char *a = argv[*i];
  size_t n = strlen(name);
  if (strncmp(a, "--", 2) != 0 || strncmp(a + 2, name, n) != 0) return 0;
  const char *v;
  if (a[2 + n] == '=') {
    v = a + 3 + n;
  } else if (a[2 + n] == 0) {
    if (*i + 1 >= argc) {
      fprintf(stderr, "kbridge-agent-restore: --%s needs a value\n", name);
      return -1;
    }
    v = argv[++*i];
  } else {
    return 0;
  }
  if (!dns_label_valid(v, strlen(v)) || strlen(v) >= outlen) {
    fprintf(stderr,
            "kbridge-agent-restore: --%s: '%s' is not a Kubernetes name (a-z, 0-9, '-', at most "
            "63)\n",
            name, v);
    return -1;
  }
  memcpy(out, v, strlen(v) + 1);
  return 1;
}

int main(int argc, char **argv) {
  char ns[64] = "", service[64] = "", id[64] = "";
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      fputs(usage, stdout);
      return 0;
    }
    int r = flag_label(argc, argv, &i, "namespace", ns, sizeof ns);
    if (r == 0) r = flag_label(argc, argv, &i, "service", service, sizeof service);
    if (r == 0) r = flag_label(argc, argv, &i, "takeover-id", id, sizeof id);
    if (r < 0) return 2;
    if (r == 0) {
      fprintf(stderr, "kbridge-agent-restore: unknown argument '%s'\n%s", argv[i], usage);
      return 2;
    }
  }
  if (!service[0]) {
    fprintf(stderr, "kbridge-agent-restore: --service is required\n%s", usage);
    return 2;
  }

  char err[1024] = "";
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    fprintf(stderr, "kbridge-agent-restore: cannot initialise libcurl\n");
    return 1;
  }
  struct kubeconfig *kc = NULL;
  if (kubeconfig_load_incluster(ns[0] ? ns : NULL, &kc, err, sizeof err) < 0) {
    fprintf(stderr, "in-cluster Kubernetes configuration: %s\n", err);
    return 1;
  }
  snprintf(ns, sizeof ns, "%s", kc->namespace ? kc->namespace : "default");
  struct kube *k = kube_new(kc, err, sizeof err); /* takes kc, also on failure */
  if (!k) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  struct takeover_report rep;
  memset(&rep, 0, sizeof rep);
  int r = takeover_restore_id(k, ns, service, id, &rep, err, sizeof err);
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
  printf("service %s/%s restored: %d object(s) changed, %d conflict(s)\n", ns, service,
         rep.changed, rep.conflicts);
  return 0;
}
