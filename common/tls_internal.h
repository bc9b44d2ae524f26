/* tls_internal.h: what the two files behind tls.h share: tls_ca.c (keys,
 * certificates, requests and identities in memory) and tls_ctx.c (the PEM
 * files and the TLS 1.3 contexts). Nothing else includes it. */
#ifndef KB_TLS_INTERNAL_H
#define KB_TLS_INTERNAL_H

#include <stddef.h>

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "tls.h"

#define CA_DAYS 3650     /* the CA and the agent certificate: 10 years */
#define CLIENT_DAYS 365  /* developer certificates from tls_dir_issue() */

/* Format msg into err, then append the OpenSSL error queue (oldest first, the
 * root cause usually comes first) and clear the queue. */
void tls_fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* A certificate or key from PEM text, or NULL. */
X509 *tls_pem_to_cert(const char *pem);
EVP_PKEY *tls_pem_to_key(const char *pem);
/* The peer's certificate if it was verified, else NULL; out emptied first. */
X509 *tls_verified_peer(SSL *ssl, char *out, size_t outlen);

#endif
