/* connect_envcmd.c: `kbridge env`: the environment `kbridge connect` would give the
 * local process (the Service's workload's first container, ConfigMaps and
 * Secrets resolved), printed in a format of envfmt.h, without connecting.
 *
 * Reads only: the Service, the pods its selector picks and their workload (or,
 * for a Service taken over, the workload its takeover record names), and the
 * ConfigMaps and Secrets the container refers to. It shares connect's inspect
 * reads (connect_run.c) and env resolution (connect_env.c); nothing is created
 * or changed in the cluster. */
#include "connect.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "connect_internal.h"
#include "dnslabel.h"
#include "kube.h"
#include "workloads.h"

#define ENV_OFF(field) offsetof(struct env_config, field)
static const struct opt_def env_opts[] = {
    {"namespace", OPT_STRING, ENV_OFF(kf.namespace), 0, 0, NULL, "NS", 0, 0,
     .help = "namespace of the Service (-n; default: the context's)"},
    {"service", OPT_STRING, ENV_OFF(service), 0, 1, NULL, "SVC", 0, 0,
     .help = "the Service whose workload's environment to print"},
    {"env-format", OPT_STRING, ENV_OFF(env_format), 0, 0, "dotenv", ENVFMT_CHOICES, 0, 0,
     .help = "dotenv (python-dotenv, npm dotenv), json (secrets marked), sh (export lines for "
             "`. FILE`), compose (an environment: mapping), docker (docker run --env-file)"},
    {"env-file", OPT_PATH, ENV_OFF(env_file), 0, 0, NULL, NULL, 0, 0,
     .help = "write to this file (created with mode 0600) instead of stdout"},
    {"kubeconfig", OPT_PATH, ENV_OFF(kf.kubeconfig), 0, 0, NULL, NULL, 0, 0,
     .help = "kubeconfig file (default $KUBECONFIG, else ~/.kube/config)"},
    {"context", OPT_STRING, ENV_OFF(kf.context), 0, 0, NULL, NULL, 0, 0,
     .help = "kubeconfig context (default: current-context)"},
    {"log-level", OPT_LOGLEVEL, ENV_OFF(log_level), 0, 0, "warn", NULL, 0, 0,
     .help = "error, warn, info or debug (logs go to stderr)"},
};

const struct opt_cmd env_cmd = {
    "env",
    "Print the environment a Service's pods get, without connecting.",
    "Resolves the env of the first container of the Service's workload as `kbridge\n"
    "connect` does for the local process (envFrom, configMapKeyRef, secretKeyRef,\n"
    "fieldRef) and prints it on stdout, or writes it to --env-file. Reads only:\n"
    "no agent, nothing in the cluster changes. A variable the format cannot carry\n"
    "is left out with a warning naming it. Usage: kbridge env -n NS --service SVC",
    env_opts,
    .nopts = sizeof env_opts / sizeof env_opts[0],
};

int env_run(struct env_config *cfg) {
  struct connect_config cc; /* the parts of connect used here read none of its flags */
  struct conn conn, *c = &conn;
  enum envfmt_format f;
  int rc = 1;
  memset(&cc, 0, sizeof cc);
  memset(c, 0, sizeof *c);
  cc.kf = cfg->kf;
  c->cfg = &cc;
  c->quiet = 1;
  c->svc = cfg->service;
  c->t0 = conn_now_s();
  log_init("kbridge", cfg->log_level);
  if (envfmt_parse(cfg->env_format, &f) < 0) {
    conn_fail(c, "--env-format: expected one of " ENVFMT_CHOICES ", got \"%s\"", cfg->env_format);
    return 2;
  }
  if (!dns_label_valid(c->svc, strlen(c->svc))) {
    conn_fail(c, "--service: expected a Service name (a DNS label), got \"%s\"", c->svc);
    return 2;
  }
  if (conn_open(c, &cfg->kf) < 0) return 1;
  if (conn_read_service(c) < 0) goto out;
  if (takeover_annotation(c->service, TAKEOVER_ANN_TAKEOVER)) {
    /* Its selector names the agent now: the record names the workload. */
    conn_takeover_template(c);
  } else {
    if (conn_selector(c) < 0) goto out;
    if (conn_selected_workloads(c) < 0) goto out;
  }
  if (!c->pod_template) {
    conn_fail(c,
              "service %s/%s: no pod template to read the environment from (%s; a workload "
              "scaled to 0 has no pods for the selector to find)",
              c->ns, c->svc,
              c->wl_name[0] ? "its workload could not be read" : "its selector picks no pod");
    goto out;
  }
  if (c->wls.n > 1 || c->wls.more) {
    char wl[1200];
    log_warn("service %s/%s selects pods of several workloads (%s): the environment is %s %s's, "
             "as connect gives it", c->ns, c->svc, workloads_describe(&c->wls, wl, sizeof wl),
             c->wl_kind, c->wl_name);
  }
  cJSON *secrets = NULL, *env = conn_resolve_env(c, &secrets);
  rc = conn_write_env(c, env, secrets, f, cfg->env_file) < 0 ? 1 : 0;
  cJSON_Delete(env);
  cJSON_Delete(secrets);
out:
  cJSON_Delete(c->service);
  cJSON_Delete(c->pod_template);
  cJSON_Delete(c->orig_pods);
  workloads_free(&c->wls);
  kube_free(c->k);
  return rc;
}
