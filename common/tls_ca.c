/* tls_ca.c: the mini CA of tls.h in memory: key generation, certificates,
 * certificate requests and the identities in them, all as PEM strings (the
 * files and the TLS contexts are in tls_ctx.c). Errors carry the OpenSSL
 * error queue rendered as text ("what we did: library: reason"). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "dnslabel.h"

#include "tls_internal.h"

void tls_fail(char *err, size_t errlen, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
  const char *data;
  int flags;
  unsigned long e;
  int first = 1;
  while ((e = ERR_get_error_all(NULL, NULL, NULL, &data, &flags)) != 0) {
    if (n < 0 || (size_t)n >= errlen) continue; /* keep draining */
    const char *lib = ERR_lib_error_string(e), *reason = ERR_reason_error_string(e);
    char reasonbuf[32];
    if (reason == NULL) {
      snprintf(reasonbuf, sizeof reasonbuf, "error %d", ERR_GET_REASON(e));
      reason = reasonbuf;
    }
    int m = snprintf(err + n, errlen - (size_t)n, "%s%s%s%s%s%s", first ? ": " : "; ",
                     lib ? lib : "", lib ? ": " : "", reason,
                     (flags & ERR_TXT_STRING) && data && *data ? " " : "",
                     (flags & ERR_TXT_STRING) && data ? data : "");
    if (m > 0) n += m;
    first = 0;
  }
}

void tls_pem_clear(struct tls_pem *p) {
  if (p == NULL) return;
  if (p->key) {
    OPENSSL_cleanse(p->key, strlen(p->key));
    free(p->key);
  }
  free(p->cert);
  p->cert = NULL;
  p->key = NULL;
}

/* ---- keys and certificates in memory ------------------------------------ */

static EVP_PKEY *keygen(enum tls_key_type type) {
  if (type == TLS_KEY_ED25519) return EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
  return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
}

/* The digest X509_sign() wants for a signing key: none for Ed25519 (the
 * algorithm fixes it), SHA-256 for ECDSA. */
static const EVP_MD *sign_md(EVP_PKEY *key) {
  return EVP_PKEY_get_base_id(key) == EVP_PKEY_ED25519 ? NULL : EVP_sha256();
}

/* Copy a memory BIO's contents into a malloc'd NUL-terminated string. */
static char *bio_to_string(BIO *bio) {
  char *data;
  long len = BIO_get_mem_data(bio, &data);
  if (len < 0) return NULL;
  char *s = malloc((size_t)len + 1);
  if (s == NULL) return NULL;
  memcpy(s, data, (size_t)len);
  s[len] = '\0';
  return s;
}

/* Serialize cert and key into out (both malloc'd). 0 or -1. */
static int to_pem(X509 *cert, EVP_PKEY *key, struct tls_pem *out) {
  BIO *cb = BIO_new(BIO_s_mem()), *kb = BIO_new(BIO_s_secmem());
  int rc = -1;
  if (cb == NULL || kb == NULL) goto done;
  if (!PEM_write_bio_X509(cb, cert) || !PEM_write_bio_PrivateKey(kb, key, NULL, NULL, 0, NULL, NULL))
    goto done;
  out->cert = bio_to_string(cb);
  out->key = bio_to_string(kb);
  if (out->cert == NULL || out->key == NULL) {
    tls_pem_clear(out);
    goto done;
  }
  rc = 0;
done:
  BIO_free(cb);
  BIO_free(kb); /* secure memory: wiped on free */
  return rc;
}

X509 *tls_pem_to_cert(const char *pem) {
  BIO *b = BIO_new_mem_buf(pem, -1);
  X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
  BIO_free(b);
  return x;
}

EVP_PKEY *tls_pem_to_key(const char *pem) {
  BIO *b = BIO_new_mem_buf(pem, -1);
  EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
  BIO_free(b);
  return k;
}

/* Add one extension given in OpenSSL's config syntax ("critical,CA:TRUE"). */
static int add_ext(X509 *cert, X509V3_CTX *ctx, int nid, const char *value) {
  X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
  if (ext == NULL) return -1;
  int ok = X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
  return ok ? 0 : -1;
}

/* Percent-encode identity into a URI after TLS_IDENTITY_URI: bytes other
 * than unreserved characters and ':' '@' become %XX. 0, or -1 if too long. */
static int identity_uri(const char *identity, char *out, size_t outlen) {
  static const char hex[] = "0123456789ABCDEF";
  size_t n = strlen(TLS_IDENTITY_URI);
  if (n >= outlen) return -1;
  memcpy(out, TLS_IDENTITY_URI, n);
  for (const unsigned char *p = (const unsigned char *)identity; *p; p++) {
    int plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                strchr("-._~:@", *p) != NULL;
    if (n + (plain ? 1 : 3) >= outlen) return -1;
    if (plain) {
      out[n++] = (char)*p;
    } else {
      out[n++] = '%';
      out[n++] = hex[*p >> 4];
      out[n++] = hex[*p & 15];
    }
  }
  out[n] = '\0';
  return 0;
}

/* Add the subjectAltName URI that binds a client certificate to the
 * Kubernetes identity that asked for it (see tls.h). */
static int add_identity(X509 *x, const char *identity) {
  char uri[TLS_IDENTITY_MAX * 3 + 32];
  if (!*identity || strlen(identity) > TLS_IDENTITY_MAX ||
      identity_uri(identity, uri, sizeof uri) < 0)
    return -1;
  GENERAL_NAMES *names = GENERAL_NAMES_new();
  GENERAL_NAME *gn = GENERAL_NAME_new();
  ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
  int rc = -1;
  if (!names || !gn || !ia5 || !ASN1_STRING_set(ia5, uri, (int)strlen(uri))) goto done;
  GENERAL_NAME_set0_value(gn, GEN_URI, ia5);
  ia5 = NULL;
  if (!sk_GENERAL_NAME_push(names, gn)) goto done;
  gn = NULL;
  if (X509_add1_ext_i2d(x, NID_subject_alt_name, names, 0, X509V3_ADD_DEFAULT) == 1) rc = 0;
done:
  ASN1_IA5STRING_free(ia5);
  GENERAL_NAME_free(gn);
  GENERAL_NAMES_free(names);
  return rc;
}

/* Build and sign a certificate for `key` with subject CN=cn.
 * issuer/issuer_key NULL: self-signed CA. Otherwise a leaf signed by the issuer;
 * server selects the agent profile (serverAuth + SAN) or the client profile. */
static X509 *make_cert(const char *cn, EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key,
                       int server, long seconds, const char *identity) {
  X509 *x = X509_new();
  X509_NAME *name = X509_NAME_new();
  BIGNUM *bn = BN_new();
  unsigned char serial[16];
  int is_ca = issuer == NULL;
  if (x == NULL || name == NULL || bn == NULL) goto tls_fail;

  /* A random positive 128-bit serial: unique without keeping a counter. */
  if (RAND_bytes(serial, sizeof serial) != 1) goto tls_fail;
  serial[0] &= 0x7f;
  serial[0] |= 0x01; /* never a leading zero byte: keeps the DER encoding 16 bytes */
  if (!BN_bin2bn(serial, sizeof serial, bn)) goto tls_fail;
  if (!X509_set_version(x, X509_VERSION_3) || !BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)))
    goto tls_fail;
  /* Backdate an hour: clocks of laptops and clusters disagree a little. */
  if (!X509_gmtime_adj(X509_getm_notBefore(x), -3600) ||
      !X509_time_adj_ex(X509_getm_notAfter(x), 0, seconds, NULL))
    goto tls_fail;
  if (!X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0) ||
      !X509_set_subject_name(x, name) ||
      !X509_set_issuer_name(x, is_ca ? name : X509_get_subject_name(issuer)) ||
      !X509_set_pubkey(x, key))
    goto tls_fail;

  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, is_ca ? x : issuer, x, NULL, NULL, 0);
  if (add_ext(x, &ctx, NID_subject_key_identifier, "hash") < 0 ||
      add_ext(x, &ctx, NID_authority_key_identifier, "keyid:always") < 0)
    goto tls_fail;
  if (is_ca) {
    if (add_ext(x, &ctx, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") < 0 ||
        add_ext(x, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign") < 0)
      goto tls_fail;
  } else {
    if (add_ext(x, &ctx, NID_basic_constraints, "critical,CA:FALSE") < 0 ||
        add_ext(x, &ctx, NID_key_usage, "critical,digitalSignature") < 0 ||
        add_ext(x, &ctx, NID_ext_key_usage, server ? "serverAuth" : "clientAuth") < 0)
      goto tls_fail;
    if (server && add_ext(x, &ctx, NID_subject_alt_name,
                          "DNS:" TLS_AGENT_NAME ",DNS:localhost,IP:127.0.0.1,IP:::1") < 0)
      goto tls_fail;
    if (!server && identity && add_identity(x, identity) < 0) goto tls_fail;
  }
  EVP_PKEY *signer = is_ca ? key : issuer_key;
  if (X509_sign(x, signer, sign_md(signer)) <= 0) goto tls_fail;
  X509_NAME_free(name);
  BN_free(bn);
  return x;
tls_fail:
  X509_free(x);
  X509_NAME_free(name);
  BN_free(bn);
  return NULL;
}

int tls_ca_create(const char *name, enum tls_key_type type, struct tls_pem *ca, char *err,
                  size_t errlen) {
  char cn[128];
  memset(ca, 0, sizeof *ca);
  snprintf(cn, sizeof cn, "kbridge CA %.53s", name && *name ? name : "default"); /* CN <= 64 */
  EVP_PKEY *key = keygen(type);
  if (key == NULL) {
    tls_fail(err, errlen, "generating the CA key");
    return -1;
  }
  X509 *x = make_cert(cn, key, NULL, NULL, 0, CA_DAYS * 86400L, NULL);
  int rc = -1;
  if (x == NULL)
    tls_fail(err, errlen, "building the CA certificate");
  else if (to_pem(x, key, ca) < 0)
    tls_fail(err, errlen, "encoding the CA as PEM");
  else
    rc = 0;
  X509_free(x);
  EVP_PKEY_free(key);
  return rc;
}

int tls_issue(const struct tls_pem *ca, const char *cn, int server, enum tls_key_type type,
              int days, struct tls_pem *out, char *err, size_t errlen) {
  return tls_issue_for(ca, cn, server, type, days, NULL, out, err, errlen);
}

int tls_issue_for(const struct tls_pem *ca, const char *cn, int server, enum tls_key_type type,
                  int days, const char *identity, struct tls_pem *out, char *err,
                  size_t errlen) {
  memset(out, 0, sizeof *out);
  if (cn == NULL || *cn == '\0' || strlen(cn) > 64) { /* X.509 ub-common-name */
    snprintf(err, errlen, "certificate name must be 1-64 characters");
    return -1;
  }
  if (days <= 0) {
    snprintf(err, errlen, "validity must be at least one day, got %d", days);
    return -1;
  }
  X509 *cacert = ca && ca->cert ? tls_pem_to_cert(ca->cert) : NULL;
  EVP_PKEY *cakey = ca && ca->key ? tls_pem_to_key(ca->key) : NULL;
  EVP_PKEY *key = NULL;
  X509 *x = NULL;
  int rc = -1;
  if (cacert == NULL || cakey == NULL) {
    tls_fail(err, errlen, "reading the CA %s", cacert == NULL ? "certificate" : "key");
    goto done;
  }
  if (X509_check_private_key(cacert, cakey) != 1) {
    tls_fail(err, errlen, "the CA key does not belong to the CA certificate");
    goto done;
  }
  if ((key = keygen(type)) == NULL) {
    tls_fail(err, errlen, "generating a key");
    goto done;
  }
  if (identity && (!*identity || strlen(identity) > TLS_IDENTITY_MAX)) {
    tls_fail(err, errlen, "identity must be 1-%d bytes", TLS_IDENTITY_MAX);
    goto done;
  }
  if ((x = make_cert(cn, key, cacert, cakey, server, days * 86400L, identity)) == NULL) {
    tls_fail(err, errlen, "building the certificate for \"%s\"", cn);
    goto done;
  }
  if (to_pem(x, key, out) < 0) {
    tls_fail(err, errlen, "encoding the certificate as PEM");
    goto done;
  }
  rc = 0;
done:
  X509_free(x);
  X509_free(cacert);
  EVP_PKEY_free(key);
  EVP_PKEY_free(cakey);
  return rc;
}

/* ---- certificate signing requests (PKCS#10) --------------------------------- */

int tls_csr_new(const char *cn, enum tls_key_type type, char **csr_pem, char **key_pem,
                char *err, size_t errlen) {
  *csr_pem = *key_pem = NULL;
  if (cn == NULL || *cn == '\0' || strlen(cn) > 64) {
    snprintf(err, errlen, "certificate name must be 1-64 characters");
    return -1;
  }
  EVP_PKEY *key = keygen(type);
  X509_REQ *req = X509_REQ_new();
  X509_NAME *name = X509_NAME_new();
  BIO *rb = BIO_new(BIO_s_mem()), *kb = BIO_new(BIO_s_secmem());
  int rc = -1;
  if (!key || !req || !name || !rb || !kb) {
    tls_fail(err, errlen, "making a key and a certificate request");
    goto done;
  }
  if (!X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0) ||
      !X509_REQ_set_version(req, 0) || !X509_REQ_set_subject_name(req, name) ||
      !X509_REQ_set_pubkey(req, key) || X509_REQ_sign(req, key, sign_md(key)) <= 0 ||
      !PEM_write_bio_X509_REQ(rb, req) ||
      !PEM_write_bio_PrivateKey(kb, key, NULL, NULL, 0, NULL, NULL)) {
    tls_fail(err, errlen, "building the certificate request for \"%s\"", cn);
    goto done;
  }
  *csr_pem = bio_to_string(rb);
  *key_pem = bio_to_string(kb);
  if (!*csr_pem || !*key_pem) {
    free(*csr_pem);
    if (*key_pem) OPENSSL_cleanse(*key_pem, strlen(*key_pem));
    free(*key_pem);
    *csr_pem = *key_pem = NULL;
    snprintf(err, errlen, "out of memory");
    goto done;
  }
  rc = 0;
done: /* like tls_issue_for()'s end in shape (duplicates): each builder frees its own objects */
  EVP_PKEY_free(key);
  X509_REQ_free(req);
  X509_NAME_free(name);
  BIO_free(rb);
  BIO_free(kb);
  return rc;
}

/* Parse csr_pem and check its self-signature; its public key into *pub
 * (caller frees) when pub is not NULL; its single CN into cn. */
static int csr_read(const char *csr_pem, char *cn, size_t cnlen, EVP_PKEY **pub, char *err,
                    size_t errlen) {
  BIO *b = BIO_new_mem_buf(csr_pem, -1);
  X509_REQ *req = b ? PEM_read_bio_X509_REQ(b, NULL, NULL, NULL) : NULL;
  BIO_free(b);
  EVP_PKEY *k = req ? X509_REQ_get_pubkey(req) : NULL;
  int rc = -1;
  if (!req || !k) {
    tls_fail(err, errlen, "the request is not a PEM certificate request");
    goto done;
  }
  int kt = EVP_PKEY_get_base_id(k);
  if (kt != EVP_PKEY_EC && kt != EVP_PKEY_ED25519) {
    snprintf(err, errlen, "the request's key is neither ECDSA nor Ed25519");
    goto done;
  }
  if (X509_REQ_verify(req, k) != 1) {
    tls_fail(err, errlen, "the request's signature does not verify");
    goto done;
  }
  X509_NAME *subj = X509_REQ_get_subject_name(req);
  int idx = X509_NAME_get_index_by_NID(subj, NID_commonName, -1);
  if (idx < 0 || X509_NAME_get_index_by_NID(subj, NID_commonName, idx) >= 0 ||
      X509_NAME_entry_count(subj) != 1) {
    snprintf(err, errlen, "the request's subject must be exactly one CN");
    goto done;
  }
  unsigned char *utf8 = NULL;
  int len = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, idx)));
  if (len < 0 || (size_t)len >= cnlen || memchr(utf8, '\0', (size_t)len)) {
    OPENSSL_free(utf8);
    snprintf(err, errlen, "the request's CN is too long");
    goto done;
  }
  memcpy(cn, utf8, (size_t)len);
  cn[len] = '\0';
  OPENSSL_free(utf8);
  if (pub) {
    *pub = k;
    k = NULL;
  }
  rc = 0;
done:
  EVP_PKEY_free(k);
  X509_REQ_free(req);
  return rc;
}

int tls_csr_cn(const char *csr_pem, char *cn, size_t cnlen, char *err, size_t errlen) {
  return csr_read(csr_pem, cn, cnlen, NULL, err, errlen);
}

int tls_sign_csr(const struct tls_pem *ca, const char *csr_pem, int server, const char *identity,
                 long seconds, char **cert_pem, char *err, size_t errlen) {
  char cn[65];
  *cert_pem = NULL;
  EVP_PKEY *pub = NULL;
  if (csr_read(csr_pem, cn, sizeof cn, &pub, err, errlen) < 0) return -1;
  X509 *cacert = ca && ca->cert ? tls_pem_to_cert(ca->cert) : NULL;
  EVP_PKEY *cakey = ca && ca->key ? tls_pem_to_key(ca->key) : NULL;
  X509 *x = NULL;
  BIO *b = NULL;
  int rc = -1;
  if (!cacert || !cakey || X509_check_private_key(cacert, cakey) != 1) {
    tls_fail(err, errlen, "reading the CA");
    goto done;
  }
  if (seconds <= 0 || (identity && (!*identity || strlen(identity) > TLS_IDENTITY_MAX))) {
    snprintf(err, errlen, "bad validity or identity");
    goto done;
  }
  if ((x = make_cert(cn, pub, cacert, cakey, server, seconds, identity)) == NULL ||
      (b = BIO_new(BIO_s_mem())) == NULL || !PEM_write_bio_X509(b, x) ||
      (*cert_pem = bio_to_string(b)) == NULL) {
    tls_fail(err, errlen, "signing the certificate for \"%s\"", cn);
    goto done;
  }
  rc = 0;
done: /* like tls_issue_for()'s end in shape (duplicates): each builder frees its own objects */
  BIO_free(b);
  X509_free(x);
  X509_free(cacert);
  EVP_PKEY_free(cakey);
  EVP_PKEY_free(pub);
  return rc;
}

/* The identity URI of x, decoded into out: 1, 0 if it has none, -1 if it is
 * malformed or too long. */
static int cert_identity(X509 *x, char *out, size_t outlen) {
  out[0] = '\0';
  GENERAL_NAMES *names = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
  if (!names) return 0;
  int rc = 0;
  size_t pl = strlen(TLS_IDENTITY_URI);
  for (int i = 0; i < sk_GENERAL_NAME_num(names) && rc == 0; i++) {
    const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
    if (gn->type != GEN_URI) continue;
    const char *u = (const char *)ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier);
    size_t ul = (size_t)ASN1_STRING_length(gn->d.uniformResourceIdentifier);
    if (ul < pl || memcmp(u, TLS_IDENTITY_URI, pl) != 0) continue;
    size_t n = 0;
    rc = 1;
    for (size_t j = pl; j < ul; j++) {
      int c = (unsigned char)u[j];
      if (c == '%') {
        if (j + 2 >= ul) {
          rc = -1;
          break;
        }
        char h[3] = {u[j + 1], u[j + 2], 0};
        char *end;
        c = (int)strtol(h, &end, 16);
        if (*end || c == 0) {
          rc = -1;
          break;
        }
        j += 2;
      }
      if (n + 1 >= outlen) {
        rc = -1;
        break;
      }
      out[n++] = (char)c;
    }
    out[n] = '\0';
    if (rc == 1 && n == 0) rc = -1;
  }
  GENERAL_NAMES_free(names);
  if (rc < 0) out[0] = '\0';
  return rc;
}

X509 *tls_verified_peer(SSL *ssl, char *out, size_t outlen) {
  if (ssl == NULL || outlen == 0) return NULL;
  out[0] = '\0';
  X509 *peer = SSL_get0_peer_certificate(ssl);
  return peer != NULL && SSL_get_verify_result(ssl) == X509_V_OK ? peer : NULL;
}

int tls_peer_identity(SSL *ssl, char *out, size_t outlen) {
  X509 *peer = tls_verified_peer(ssl, out, outlen);
  if (peer == NULL) return -1;
  return cert_identity(peer, out, outlen);
}

int tls_cert_identity(const char *cert_pem, char *out, size_t outlen) {
  X509 *x = tls_pem_to_cert(cert_pem);
  if (!x) return -1;
  int rc = cert_identity(x, out, outlen);
  X509_free(x);
  return rc;
}

