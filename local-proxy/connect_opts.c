/* connect_opts.c: the command line of `kbridge connect`: its option table (a
 * kbridge.yaml holds the same keys, common/optfile.c) and the parsers of the
 * options that are more than a type: --service and --local-port given again
 * for more Services, --env overrides. */
#include "connect_internal.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CFG_OFF(field) offsetof(struct connect_config, field)

/* --service and --local-port: the first use is the session's own Service;
 * each further one adds a Service (connect_multi.c). */
static int parse_service(const struct opt_def *o, const char *v, void *cfgp, char *why,
                         size_t whylen) {
  struct connect_config *cfg = cfgp;
  if (!*v) {
    snprintf(why, whylen, "expected a Service name, got \"\"");
    return -1;
  }
  if (!cfg->service) {
    cfg->service = strdup(v);
    return cfg->service ? 0 : -1;
  }
  if (cfg->more_services.n == OPT_LIST_MAX) {
    snprintf(why, whylen, "at most %d Services in one session", OPT_LIST_MAX + 1);
    return -1;
  }
  cfg->more_services.v[cfg->more_services.n] = strdup(v);
  return cfg->more_services.v[cfg->more_services.n++] ? 0 : -1;
}

static int parse_local_port(const struct opt_def *o, const char *v, void *cfgp, char *why,
                            size_t whylen) {
  struct connect_config *cfg = cfgp;
  char *end = NULL;
  long p = strtol(v, &end, 10);
  if (!*v || *end || p < 1 || p > 65535) {
    snprintf(why, whylen, "expected a port 1-65535, got \"%s\"", v);
    return -1;
  }
  if (!cfg->local_port) {
    cfg->local_port = (int)p;
  } else if (cfg->nmore_ports == OPT_LIST_MAX) {
    snprintf(why, whylen, "at most %d in one session", OPT_LIST_MAX + 1);
    return -1;
  } else {
    cfg->more_ports[cfg->nmore_ports++] = (int)p;
  }
  return 0;
}

/* --env NAME=VALUE: checked and kept in order (envrefs.h). */
static int parse_env(const struct opt_def *o, const char *v, void *cfg, char *why, size_t whylen) {
  return envref_add((struct envref_overrides *)(void *)((char *)cfg + o->offset), v, why, whylen);
}

static const struct opt_def connect_opts[] = {
    {"namespace", OPT_STRING, CFG_OFF(kf.namespace), 0, 0, NULL, "NS", 0, 0,
     .help = "namespace of the Service (-n; default: the context's)"},
    {"service", OPT_CUSTOM, CFG_OFF(service), 0, 1, NULL, "SVC", 0, 0,
     .help = "the Service to take over; again for more Services in the same session, each with "
             "its own --local-port, in the same order",
     .parse = parse_service, .repeat = 1},
    {"local-port", OPT_CUSTOM, CFG_OFF(local_port), 0, 1, NULL, "PORT", 0, 0,
     .help = "port your local process listens on (one per --service)", .parse = parse_local_port,
     .repeat = 1},
    {"local-host", OPT_HOST, CFG_OFF(local_host), 0, 0, "127.0.0.1", NULL, 0, 0,
     .help = "host your local process listens on"},
    {"route-as", OPT_KEY, CFG_OFF(key), 0, 0, NULL, NULL, 0, 0,
     .help = "your route key (default: your user name and 4 random characters)"},
    {"replace", OPT_FLAG, CFG_OFF(replace), 0, 0, NULL, NULL, 0, 0,
     .help = "exclusive mode: all of the Service's traffic to you, its workload scaled to 0"},
    {"force", OPT_FLAG, CFG_OFF(force), 0, 0, NULL, NULL, 0, 0,
     .help = "take the route key over even if another identity holds it (logged by the signer and "
             "the agent; the other developer's tunnels are closed)"},
    {"env-file", OPT_PATH, CFG_OFF(env_file), 0, 0, NULL, NULL, 0, 0,
     .help = "write the original container's environment to this file (mode 0600) when ready"},
    {"env-format", OPT_STRING, CFG_OFF(env_format), 0, 0, "dotenv", ENVFMT_CHOICES, 0, 0,
     .help = "the --env-file's format: dotenv (python-dotenv, npm dotenv), json (secrets "
             "marked), sh (export lines for `. FILE`), compose (an environment: mapping), "
             "docker (docker run --env-file)"},
    {"volumes-dir", OPT_PATH, CFG_OFF(volumes_dir), 0, 0, NULL, NULL, 0, 0,
     .help = "write the original container's configMap, secret, downwardAPI, projected and "
             "emptyDir volumes here, at their mount paths (default: a temporary directory removed "
             "at the end); $KBRIDGE_VOLUMES names it"},
    {"env", OPT_CUSTOM, CFG_OFF(env), 0, 0, NULL, "NAME=VALUE", 0, 0,
     .help = "set NAME in your process's environment, over the container's; VALUE may hold "
             "$(services:SVC[:PORT]), $(forward:HOST:PORT), $(volumes:NAME), $(env:NAME) and $$ "
             "for a '$' (kbridge.yaml: an env: mapping)",
     .parse = parse_env, .repeat = 1},
    {"agent-image", OPT_STRING, CFG_OFF(agent_image), 0, 0, NULL, "IMAGE", 0, 0,
     .help = "agent image (default $KBRIDGE_AGENT_IMAGE, else " CONNECT_DEFAULT_IMAGE ")"},
    {"output", OPT_STRING, CFG_OFF(output), 0, 0, "text", "text|json", 0, 0,
     .help = "json: one JSON event per line on stdout"},
    {"tunnels", OPT_INT, CFG_OFF(tunnels), 0, 0, "2", NULL, 1, 16,
     .help = "parallel tunnel connections to each agent pod"},
    {"lease-seconds", OPT_INT, CFG_OFF(lease_seconds), 0, 0, "60", NULL, 5, 86400,
     .help = "the agent restores the cluster after this long without any developer"},
    {"timeout", OPT_INT, CFG_OFF(timeout), 0, 0, "120", NULL, 5, 3600,
     .help = "seconds to wait for the agent pod to become ready"},
    {"agent-address", OPT_HOSTPORT, CFG_OFF(agent_address), 0, 0, NULL, NULL, 0, 0,
     .help = "reach the agent's tunnel port directly here (a LoadBalancer or NodePort in front "
             "of it) instead of through the API server's port-forward"},
    {"forward", OPT_FORWARD, CFG_OFF(forwards), 0, 0, NULL, NULL, 0, 0,
     .help = "listen on LADDR:LPORT (port 0: any free port) and connect each connection to "
             "HOST:PORT from inside the cluster, through the agent (repeatable)"},
    {"no-services", OPT_FLAG, CFG_OFF(no_services), 0, 0, NULL, NULL, 0, 0,
     .help = "do not give every Service of the namespace a local listener (by default each gets "
             "127.1.X.Y with its own ports, and your process its SVC_SERVICE_HOST variables)"},
    {"http-proxy", OPT_ADDR, CFG_OFF(http_proxy), 0, 0, "127.0.0.1:0", NULL, 0, 0,
     .help = "the local HTTP and SOCKS5 proxy your process gets as HTTP_PROXY, HTTPS_PROXY and "
             "ALL_PROXY: names resolve in the cluster (port 0: any free port)"},
    {"no-http-proxy", OPT_FLAG, CFG_OFF(no_http_proxy), 0, 0, NULL, NULL, 0, 0,
     .help = "no local HTTP/SOCKS5 proxy, and no *_PROXY variables for your process"},
    {"hosts", OPT_FLAG, CFG_OFF(hosts), 0, 0, NULL, NULL, 0, 0,
     .help = "write the Service listeners' names (NAME, NAME.NS, NAME.NS.svc, "
             "NAME.NS.svc.cluster.local) into a hosts file while connected (root, or a writable "
             "--hosts-file)"},
    {"hosts-file", OPT_STRING, CFG_OFF(hosts_file), 0, 0, "/etc/hosts", "PATH", 0, 0,
     .help = "the hosts file of --hosts"},
    {"no-propagate", OPT_FLAG, CFG_OFF(no_propagate), 0, 0, NULL, NULL, 0, 0,
     .help = "do not add your route (kubernetes-route-as and a baggage member) to the HTTP "
             "requests your process sends through kbridge's listeners"},
    {"ingress", OPT_FLAG, CFG_OFF(ingress), 0, 0, NULL, NULL, 0, 0,
     .help = "clone each Ingress routing to the Service with every host H as KEY.H (a browser URL "
             "for your route); the clones are removed when you leave"},
    {"pause-gitops", OPT_FLAG, CFG_OFF(pause_gitops), 0, 0, NULL, NULL, 0, 0,
     .help = "while taken over, annotate the Service " TAKEOVER_FLUX_RECONCILE "=disabled so Flux "
             "leaves it alone; removed on restore (an annotation already there is left as it is)"},
    {"image-pull-secret", OPT_LIST, CFG_OFF(pull_secrets), 0, 0, NULL, "NAME", 0, 0,
     .help = "the agent pod's imagePullSecrets: a Secret of the namespace for a private registry"},
    {"node-selector", OPT_LIST, CFG_OFF(node_selector), 0, 0, NULL, "KEY=VALUE", 0, 0,
     .help = "run the agent pod only on nodes with this label"},
    {"toleration", OPT_LIST, CFG_OFF(tolerations), 0, 0, NULL, "KEY[=VALUE][:EFFECT]", 0, 0,
     .help = "let the agent pod run on nodes with this taint (as kubectl taint writes it; no "
             "VALUE: any value, no EFFECT: any effect)"},
    {"agent-requests", OPT_STRING, CFG_OFF(agent_requests), 0, 0, NULL, "cpu=Q,memory=Q", 0, 0,
     .help = "the agent container's resource requests (default cpu=" AGENTPOD_REQ_CPU
             ",memory=" AGENTPOD_REQ_MEMORY "; also ephemeral-storage)"},
    {"agent-limits", OPT_STRING, CFG_OFF(agent_limits), 0, 0, NULL, "cpu=Q,memory=Q", 0, 0,
     .help = "the agent container's resource limits (default memory=" AGENTPOD_LIMIT_MEMORY ")"},
    {"agent-label", OPT_LIST, CFG_OFF(agent_labels), 0, 0, NULL, "KEY=VALUE", 0, 0,
     .help = "an extra label on the agent pod (policies that require labels; not kbridge.dev/*)"},
    {"agent-annotation", OPT_LIST, CFG_OFF(agent_annotations), 0, 0, NULL, "KEY=VALUE", 0, 0,
     .help = "an extra annotation on the agent pod (e.g. sidecar.istio.io/inject=false)"},
    {"config", OPT_PATH, CFG_OFF(config), 0, 0, NULL, NULL, 0, 0,
     .help = "read options from this YAML file: keys are these flags' names without --, the "
             "command line wins (default: kbridge.yaml in the current directory, if there is "
             "one)"},
    {"kubeconfig", OPT_PATH, CFG_OFF(kf.kubeconfig), 0, 0, NULL, NULL, 0, 0,
     .help = "kubeconfig file (default $KUBECONFIG, else ~/.kube/config)"},
    {"context", OPT_STRING, CFG_OFF(kf.context), 0, 0, NULL, NULL, 0, 0,
     .help = "kubeconfig context (default: current-context)"},
    {"log-level", OPT_LOGLEVEL, CFG_OFF(log_level), 0, 0, "warn", NULL, 0, 0,
     .help = "error, warn, info or debug (logs go to stderr)"},
};

const struct opt_cmd connect_cmd = {
    "connect",
    "Take over a Service in the cluster and route your requests to a local process.",
    "Creates (or reuses) the kbridge agent for the Service, switches the Service to it\n"
    "and tunnels requests carrying your route key (header kubernetes-route-as: KEY,\n"
    "baggage kbridge-route=KEY, or Host KEY.<anything>) to --local-host:--local-port;\n"
    "everything else still reaches the original pods. With --replace all traffic is\n"
    "yours and the workload is scaled to 0. Stays until SIGINT/SIGTERM, `kbridge\n"
    "disconnect`, or the end of the command given after \"--\" (run with the\n"
    "original container's environment); the last developer to leave restores the\n"
    "cluster. Usage: kbridge connect -n NS --service SVC --local-port P [-- CMD ARGS...]",
    connect_opts,
    .nopts = sizeof connect_opts / sizeof connect_opts[0],
};
