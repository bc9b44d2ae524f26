/* signer.h: the decisions of kbridge-signer (signer/main.c), apart from its
 * Kubernetes I/O so they can be tested alone.
 *
 * kbridge-signer signs the certificatesigningrequests whose signerName is
 * "kbridge.dev/<namespace>.<service>": one CA per taken-over Service, kept in
 * the signer's own namespace where developers have no rights. A request with
 * CN "kbridge-agent" asks for the agent's server certificate; any other CN is
 * a route key and asks for a developer's client certificate, bound to the
 * requester (spec.username, set by the API server). See docs/security.md. */
#ifndef KB_SIGNER_H
#define KB_SIGNER_H

#include <stddef.h>

#define SIGNER_PREFIX "kbridge.dev/"
/* The annotation a requester sets on its CSR to take over a key held by
 * another identity (kbridge connect --force). */
#define SIGNER_ANN_FORCE "kbridge.dev/force"

/* "kbridge.dev/shop.api" -> ns "shop", svc "api" (both DNS labels). 0, or -1
 * when the name is not a kbridge signer name. */
int signer_parse_name(const char *signer_name, char *ns, size_t nslen, char *svc, size_t svclen);

/* Who holds a route key of one Service: the identity its last certificate was
 * issued to, and until when that certificate is valid (Unix seconds). */
struct signer_holder {
  char identity[256];
  long long until;
};

enum signer_verdict {
  SIGNER_GRANT,        /* free, expired, or held by the same identity */
  SIGNER_GRANT_FORCED, /* held by another identity, taken over with force */
  SIGNER_DENY_HELD,    /* held by another identity, no force */
};

/* May identity get a certificate for a key whose holder is cur (NULL: none)? */
enum signer_verdict signer_decide(const struct signer_holder *cur, const char *identity, int force,
                                  long long now);

/* A holder record as stored (JSON {"identity":..,"until":N}) and back. 0/-1. */
int signer_holder_parse(const char *json, struct signer_holder *out);
int signer_holder_format(const struct signer_holder *h, char *out, size_t outlen);

#endif
