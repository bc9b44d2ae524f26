/* certreq.h: a certificate from kbridge-signer through the Kubernetes
 * certificates.k8s.io/v1 API (see signer/signer.h and docs/security.md).
 *
 * The CLI makes a key and a PKCS#10 request (CN = the route key, or
 * "kbridge-agent" for the agent's own certificate) and creates a
 * CertificateSigningRequest with signerName kbridge.dev/<ns>.<svc>. The API
 * server records who asked (spec.username); kbridge-signer checks that
 * requester, approves or denies, and writes the certificate followed by the
 * Service's CA certificate. The private key never leaves this process. */
#ifndef KB_CERTREQ_H
#define KB_CERTREQ_H

#include <stddef.h>

#include "tls.h"

struct kube;

/* Obtain a certificate for cn (server: the agent profile) from the signer of
 * ns/svc, waiting up to timeout_s. force: annotate the request kbridge.dev/force
 * (take a route key over from another identity). On success 0, *me = our
 * certificate + key, *ca_pem = the CA certificate (malloc'd), identity = the
 * identity the certificate names ("" for the agent's). On failure -1 with err:
 * the signer's reason when it denied the request; *denied set to 1 then. */
int certreq_obtain(struct kube *k, const char *ns, const char *svc, const char *cn, int server,
                   int force, int timeout_s, struct tls_pem *me, char **ca_pem, char *identity,
                   size_t idlen, int *denied, char *err, size_t errlen);

#endif
