/* kubeconfig.h: where the Kubernetes API server is and how to authenticate to it.
 *
 * kubeconfig_load() reads kubeconfig files the way kubectl does ($KUBECONFIG
 * with several files merged, ~/.kube/config, or an explicit path), picks one
 * context (current-context or an override) and flattens it into one struct
 * kubeconfig: the cluster (server, CA, TLS options, proxy), the user
 * (token, token file, client certificate, basic auth, exec plugin) and the
 * namespace. kubeconfig_load_incluster() builds the same struct from a pod's
 * service account. Nothing here talks to the network or runs plugins; see
 * kube_exec.h for exec credential plugins and kube.h for the API client.
 *
 * Errors are sentences that name the file and the key that is wrong, e.g.
 *   ~/.kube/config: context "prod" names user "bob" which is not defined */
#ifndef KB_KUBECONFIG_H
#define KB_KUBECONFIG_H

#include <stddef.h>

/* An `exec` credential plugin (users[].user.exec). */
struct kube_exec_config {
  char *api_version;   /* client.authentication.k8s.io/v1 or v1beta1 */
  char *command;       /* resolved against the kubeconfig dir if relative with '/' */
  char **args;         /* argv[1..], NULL-terminated */
  char **env;          /* "NAME=VALUE" strings, NULL-terminated */
  int provide_cluster_info; /* put the cluster into KUBERNETES_EXEC_INFO */
  char *install_hint;  /* printed when the command is missing, or NULL */
};

/* One resolved context. Every string is owned by the struct; absent ones are
 * NULL. PEM data fields hold decoded bytes (the *-data keys are base64). */
struct kubeconfig {
  char *origin;            /* file that defined the context ("in-cluster" for SA) */
  char *context;           /* context name, NULL for in-cluster */
  char *cluster_name, *user_name;
  char *namespace;         /* override, else context's, else "default" */

  char *server;            /* "https://host:port" (no trailing '/') */
  char *ca_file;           /* absolute path */
  char *ca_pem;            /* certificate-authority-data, decoded */
  int insecure_skip_tls_verify;
  char *tls_server_name;
  char *proxy_url;

  char *token;             /* static bearer token */
  char *token_file;        /* re-read when it changes (rotation) */
  char *client_cert_file, *client_key_file;
  char *client_cert_pem, *client_key_pem; /* client-*-data, decoded */
  char *username, *password;
  struct kube_exec_config *exec; /* NULL unless the user has an exec plugin */
};

struct kubeconfig_opts {
  const char *path;      /* --kubeconfig: only this file; NULL: $KUBECONFIG or ~/.kube/config */
  const char *context;   /* --context, or NULL for current-context */
  const char *namespace; /* -n, or NULL for the context's namespace */
};

/* Load and resolve one context. On success returns 0 and *out (free with
 * kubeconfig_free). On failure returns -1 and writes a sentence naming the
 * file and key to err. With KUBECONFIG set, its ':'-separated files are merged
 * like kubectl merges them: for clusters, users and contexts the first file
 * defining a name wins; current-context comes from the first file setting it;
 * files that do not exist are skipped. Relative paths inside a file are
 * resolved against that file's directory. */
int kubeconfig_load(const struct kubeconfig_opts *opts, struct kubeconfig **out,
                    char *err, size_t errlen);

/* Build the config of a pod's service account: files token, ca.crt and
 * namespace in $KBRIDGE_SA_DIR (default /var/run/secrets/kubernetes.io/
 * serviceaccount), server from KUBERNETES_SERVICE_HOST/_PORT. The token is
 * set as token_file, so that rotated tokens are picked up. ns_override may be
 * NULL. Returns 0, or -1 with err. */
int kubeconfig_load_incluster(const char *ns_override, struct kubeconfig **out,
                              char *err, size_t errlen);

void kubeconfig_free(struct kubeconfig *kc);

/* A path for messages: a leading $HOME replaced by "~". Writes into buf and
 * returns buf. */
const char *kubeconfig_display_path(const char *path, char *buf, size_t buflen);

#endif
