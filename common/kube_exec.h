/* kube_exec.h: run a kubeconfig `exec` credential plugin (client-go's
 * "client.authentication.k8s.io" protocol, v1 and v1beta1).
 *
 * The plugin is started with the user's args and env added to ours, stdin
 * on /dev/null (we never run it interactively) and KUBERNETES_EXEC_INFO set to
 * an ExecCredential JSON whose spec carries the cluster when the kubeconfig
 * says provideClusterInfo. It must print an ExecCredential whose status holds a
 * token or a client certificate and key, and may give an expirationTimestamp.
 * Caching and refresh on 401 are done by the caller (kube_client.c). */
#ifndef KB_KUBE_EXEC_H
#define KB_KUBE_EXEC_H

#include <stddef.h>
#include <time.h>

struct kubeconfig;

struct kube_exec_cred {
  char *token;            /* status.token, or NULL */
  char *cert_pem;         /* status.clientCertificateData, or NULL */
  char *key_pem;          /* status.clientKeyData, or NULL */
  time_t expiry;          /* status.expirationTimestamp, 0 when none given */
};

/* Run kc->exec (which must be set) and parse what it prints. Blocks until the
 * plugin exits (at most 60 s, then it is killed). Returns 0 with *out filled
 * (free with kube_exec_cred_clear), or -1 with err: a missing command gives the
 * installHint, a failing one its exit status and stderr, bad output says what
 * is wrong with it. */
int kube_exec_run(const struct kubeconfig *kc, struct kube_exec_cred *out, char *err,
                  size_t errlen);

void kube_exec_cred_clear(struct kube_exec_cred *c);

/* Parse an RFC 3339 time ("2026-01-02T03:04:05Z", fractions and offsets
 * allowed). Returns 0 with *out, or -1. */
int kube_parse_rfc3339(const char *s, time_t *out);

#endif
