/* tls.h: mutual TLS 1.3 for the tunnel, and the small CA that backs it.
 *
 * Files in a TLS directory:
 *   ca.crt, ca.key          the per-service CA (ca.key only where certs are issued)
 *   agent.crt, agent.key    the agent's server certificate, subject/SAN "kbridge-agent"
 *   KEY.crt, KEY.key        a developer's client certificate; subject CN = route key
 * Private keys are written 0600. Keys are ECDSA P-256 (default) or Ed25519.
 *
 * The agent accepts only client certificates signed by ca.crt; the client accepts
 * only an agent certificate signed by ca.crt and naming "kbridge-agent", whatever
 * address it was reached at (localhost through a port-forward, a LoadBalancer IP).
 *
 * The PEM functions work in memory so the same code can later store the CA in a
 * Kubernetes Secret; the dir functions are thin wrappers over them. */
#ifndef KB_TLS_H
#define KB_TLS_H

#include <stddef.h>
#include <openssl/ssl.h>

#define TLS_AGENT_NAME "kbridge-agent"

enum tls_key_type { TLS_KEY_P256 = 0, TLS_KEY_ED25519 = 1 };

struct tls_pem {      /* a certificate and its private key, both PEM, NUL-terminated */
  char *cert;
  char *key;
};
void tls_pem_clear(struct tls_pem *p); /* frees and zeroes (key bytes are wiped) */

/* Make a new self-signed CA (CN "kbridge CA <name>", 10 years). 0 or -1 + err. */
int tls_ca_create(const char *name, enum tls_key_type type, struct tls_pem *ca, char *err,
                  size_t errlen);
/* Issue a leaf signed by ca. server=1: agent cert, CN and SAN DNS "kbridge-agent"
 * (+ "localhost", IP 127.0.0.1), serverAuth; server=0: client cert, CN = key,
 * clientAuth. 0 or -1 + err. */
int tls_issue(const struct tls_pem *ca, const char *cn, int server, enum tls_key_type type,
              int days, struct tls_pem *out, char *err, size_t errlen);

/* A developer's certificate may carry the Kubernetes identity (user name) it
 * was issued to, as a subjectAltName URI TLS_IDENTITY_URI + the name with
 * bytes other than [A-Za-z0-9-._~:@] percent-encoded. The agent records it at
 * HELLO (who holds a key) and names it in its logs and /healthz. */
#define TLS_IDENTITY_URI "kbridge-identity:"
#define TLS_IDENTITY_MAX 253

/* As tls_issue; identity (NULL: none) goes into a client certificate. */
int tls_issue_for(const struct tls_pem *ca, const char *cn, int server, enum tls_key_type type,
                  int days, const char *identity, struct tls_pem *out, char *err,
                  size_t errlen);

/* A new private key and a PKCS#10 request for it with subject CN = cn, both
 * PEM (malloc'd; free the key with OPENSSL_cleanse + free). 0 or -1 + err. */
int tls_csr_new(const char *cn, enum tls_key_type type, char **csr_pem, char **key_pem,
                char *err, size_t errlen);
/* Check a request (PEM, ECDSA or Ed25519 key, valid self-signature, subject
 * exactly one CN) and copy its CN into cn. 0 or -1 + err. */
int tls_csr_cn(const char *csr_pem, char *cn, size_t cnlen, char *err, size_t errlen);
/* Sign the request with ca: its CN and public key, valid for `seconds` (from an
 * hour ago, for clock skew); server/client profile as tls_issue; identity
 * (NULL: none) as above. *cert_pem is malloc'd. 0 or -1 + err. */
int tls_sign_csr(const struct tls_pem *ca, const char *csr_pem, int server, const char *identity,
                 long seconds, char **cert_pem, char *err, size_t errlen);
/* The identity of the verified peer certificate / of a PEM certificate into
 * out: 1, 0 when it carries none, -1 when malformed or too long (out ""). */
int tls_peer_identity(SSL *ssl, char *out, size_t outlen);
int tls_cert_identity(const char *cert_pem, char *out, size_t outlen);

/* `kbridge certs init DIR`: ca + agent cert into DIR (created 0700). Refuses to
 * overwrite an existing ca.key unless force. */
int tls_dir_init(const char *dir, enum tls_key_type type, int force, char *err, size_t errlen);
/* `kbridge certs issue DIR --key KEY`: DIR/KEY.crt + DIR/KEY.key from DIR/ca.*. */
int tls_dir_issue(const char *dir, const char *key, enum tls_key_type type, char *err,
                  size_t errlen);
/* The same, bound to identity (NULL: none): `kbridge certs issue --identity`. */
int tls_dir_issue_for(const char *dir, const char *key, enum tls_key_type type,
                      const char *identity, char *err, size_t errlen);

/* TLS 1.3 only, peer certificate required and verified against ca.crt. */
SSL_CTX *tls_server_ctx_from_dir(const char *dir, char *err, size_t errlen);
SSL_CTX *tls_client_ctx_from_dir(const char *dir, const char *key, char *err, size_t errlen);
SSL_CTX *tls_server_ctx_from_pem(const char *ca_pem, const struct tls_pem *own, char *err,
                                 size_t errlen);
SSL_CTX *tls_client_ctx_from_pem(const char *ca_pem, const struct tls_pem *own, char *err,
                                 size_t errlen);
/* Make a client SSL for one connection that verifies the agent name. NULL on error. */
SSL *tls_client_ssl_new(SSL_CTX *ctx);

/* The verified peer certificate's subject CN into out. 0, or -1 if none/too long. */
int tls_peer_cn(SSL *ssl, char *out, size_t outlen);

/* Why a TLS connection failed, for a log line: code is an OpenSSL error code
 * (e.g. from bufferevent_get_openssl_error(), 0 if none); when certificate
 * verification failed, ssl's verify result is added ("certificate verify failed:
 * unable to get local issuer certificate"). ssl may be NULL. Returns out. */
char *tls_describe_error(SSL *ssl, unsigned long code, char *out, size_t outlen);

#endif
