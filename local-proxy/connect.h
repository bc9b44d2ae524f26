/* connect.h: `kbridge connect`, `restore`, `list`, `status`, `disconnect`: take a
 * Kubernetes Service over through the API, route one developer's requests to
 * their machine, and always put the cluster back (see common/takeover.h for
 * what is changed and how it is undone).
 *
 * Sessions: every running connect writes a session file
 *   $XDG_RUNTIME_DIR/kbridge/sessions/NS.SVC.KEY.json   (else ~/.cache/kbridge/sessions/)
 * with its pid, which `status` lists and `disconnect` signals (SIGTERM). */
#ifndef KB_CONNECT_H
#define KB_CONNECT_H

#include "envrefs.h"
#include "log.h"
#include "optparse.h"

/* Flags shared by every command that talks to the cluster. */
struct kube_flags {
  const char *kubeconfig; /* --kubeconfig */
  const char *context;    /* --context */
  const char *namespace;  /* -n / --namespace */
};

struct connect_config {
  struct kube_flags kf;
  const char *service;      /* --service (its first use) */
  int local_port;           /* --local-port (its first use) */
  /* --service and --local-port given again: more Services in the same
   * session, paired in order (connect_multi.c) */
  struct opt_list more_services;
  int more_ports[OPT_LIST_MAX];
  size_t nmore_ports;
  const char *local_host;   /* --local-host */
  char key[OPT_KEY_SIZE];   /* --route-as ("" = $USER + 4 random characters) */
  int replace;              /* --replace: exclusive mode */
  int force;                /* --force: take the route key over from another identity */
  const char *env_file;     /* --env-file */
  const char *env_format;   /* --env-format: envfmt.h's names (default dotenv) */
  const char *volumes_dir;  /* --volumes-dir (NULL: a temporary directory) */
  int no_volumes;           /* no volumes at all: a further Service's child session
                             * (connect_multi.c; the command gets the first one's) */
  const char *agent_image;  /* --agent-image */
  const char *output;       /* --output: text | json */
  int tunnels;              /* --tunnels */
  int lease_seconds;        /* --lease-seconds (the agent's) */
  int timeout;              /* --timeout: seconds for the agent to become ready */
  struct hostport agent_address; /* --agent-address: direct carrier (port 0: unset) */
  struct opt_forwards forwards;  /* --forward LADDR:LPORT=HOST:PORT, repeatable */
  int no_services;          /* --no-services: no loopback listener per Service */
  int no_propagate;         /* --no-propagate: outbound requests get no route lines */
  struct hostport http_proxy; /* --http-proxy: the local HTTP/SOCKS5 proxy's address */
  int no_http_proxy;        /* --no-http-proxy */
  int hosts;                /* --hosts: the Service listeners' names in a hosts file */
  const char *hosts_file;   /* --hosts-file (default /etc/hosts) */
  int ingress;              /* --ingress: clone the Service's Ingresses for the key */
  int pause_gitops;         /* --pause-gitops: Flux's reconcile=disabled while taken over */
  const char *config;       /* --config: options file (main.c reads it; default ./kbridge.yaml) */
  const struct opt_file *file; /* that file's options, when one was read (main.c sets it):
                                  where a value came from, for errors */
  struct envref_overrides env; /* --env NAME=VALUE and kbridge.yaml's env: (envrefs.h) */
  /* the agent pod (agentpod.h) */
  struct opt_list pull_secrets;  /* --image-pull-secret NAME */
  struct opt_list node_selector; /* --node-selector KEY=VALUE */
  struct opt_list tolerations;   /* --toleration KEY[=VALUE][:EFFECT] */
  const char *agent_requests;    /* --agent-requests cpu=Q,memory=Q */
  const char *agent_limits;      /* --agent-limits cpu=Q,memory=Q */
  struct opt_list agent_labels;  /* --agent-label KEY=VALUE */
  struct opt_list agent_annotations; /* --agent-annotation KEY=VALUE */
  enum log_level log_level; /* --log-level */
  char **cmd;               /* the command after "--", NULL-terminated, or NULL */
};

/* kbridge env */
struct env_config {
  struct kube_flags kf;
  const char *service;      /* --service */
  const char *env_file;     /* --env-file (default: stdout) */
  const char *env_format;   /* --env-format */
  enum log_level log_level; /* --log-level */
};

/* restore, list, status, disconnect */
struct restore_config {
  struct kube_flags kf;
  const char *service;
  const char *output;
  char key[OPT_KEY_SIZE];   /* disconnect --route-as: only that session */
  int timeout;              /* disconnect: seconds to wait for the session to end */
  int all;                  /* list --all: every Service, taken over or not */
  const char *hosts_file;   /* restore --hosts-file: dead sessions' blocks removed */
};

struct kube;
/* Load the kubeconfig (flags, $KUBECONFIG, ~/.kube/config) and make a client.
 * 0, or -1 with err (broken file, unknown context, invalid namespace). */
int connect_kube_open(const struct kube_flags *kf, struct kube **out, char *err, size_t errlen);

struct kube_err;
/* The "reason" word of an error event for a failed API call (unreachable,
 * unauthorized, forbidden, not_found, conflict, api_error): what tools act on. */
const char *connect_kube_reason(const struct kube_err *e);

extern const struct opt_cmd connect_cmd, env_cmd, restore_cmd, list_cmd, status_cmd, disconnect_cmd,
    namespaces_cmd;

/* The default agent image when neither --agent-image nor $KBRIDGE_AGENT_IMAGE
 * is given. */
#define CONNECT_DEFAULT_IMAGE "ghcr.io/kbridge/agent:" KBRIDGE_VERSION

int connect_run(struct connect_config *cfg);
int env_run(struct env_config *cfg);           /* kbridge env (connect_envcmd.c) */
int restore_run(struct restore_config *cfg);   /* kbridge restore */
int list_run(struct restore_config *cfg);      /* kbridge list (service unused) */
int status_run(struct restore_config *cfg);    /* kbridge status (nothing used) */
int disconnect_run(struct restore_config *cfg);/* kbridge disconnect */
int namespaces_run(struct restore_config *cfg);/* kbridge namespaces */

#endif
