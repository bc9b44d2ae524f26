/* tls_ctx.c: the CA directory of tls.h (PEM files read and written) and the
 * mutual TLS 1.3 contexts of the tunnel made from it or from PEM text; the
 * peer's name; OpenSSL errors as text. Key files are created 0600 under a
 * temporary name with O_EXCL and renamed into place, so a key is never
 * readable by others, not even for a moment, and a crash never leaves half a
 * key behind. */
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

#define PEM_FILE_MAX (64 * 1024)

/* ---- files ---------------------------------------------------------------- */

/* mkdir -p with mode 0700 for every directory it creates. */
static int make_dirs(const char *dir, char *err, size_t errlen) {
  char path[PATH_MAX];
  size_t len = strlen(dir);
  if (len == 0 || len >= sizeof path) {
    snprintf(err, errlen, "directory name is empty or too long");
    return -1;
  }
  memcpy(path, dir, len + 1);
  for (char *p = path + 1;; p++) {
    if (*p == '/' || *p == '\0') {
      char c = *p;
      *p = '\0';
      if (mkdir(path, 0700) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "creating %s: %s", path, strerror(errno));
        return -1;
      }
      *p = c;
      if (c == '\0') break;
    }
  }
  struct stat st;
  if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
    snprintf(err, errlen, "%s is not a directory", dir);
    return -1;
  }
  return 0;
}

static int join(char *out, size_t outlen, const char *dir, const char *name, const char *ext,
                char *err, size_t errlen) {
  int n = snprintf(out, outlen, "%s/%s%s", dir, name, ext);
  if (n < 0 || (size_t)n >= outlen) {
    snprintf(err, errlen, "path too long: %s/%s%s", dir, name, ext);
    return -1;
  }
  return 0;
}

/* Write data to path atomically with the given mode: a fresh temporary file
 * (O_EXCL, mode set before any byte is written), fsync, rename over path. */
static int write_file(const char *path, const char *data, mode_t mode, char *err, size_t errlen) {
  char tmp[PATH_MAX + 32];
  snprintf(tmp, sizeof tmp, "%s.tmp%ld", path, (long)getpid());
  unlink(tmp); /* a leftover of a crashed run with the same pid */
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
  if (fd < 0) {
    snprintf(err, errlen, "creating %s: %s", tmp, strerror(errno));
    return -1;
  }
  size_t len = strlen(data), off = 0;
  if (fchmod(fd, mode) < 0) goto tls_fail; /* the umask may have taken bits away, never add */
  while (off < len) {
    ssize_t w = write(fd, data + off, len - off);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) goto tls_fail;
    off += (size_t)w;
  }
  if (fsync(fd) < 0) goto tls_fail;
  if (close(fd) < 0) {
    fd = -1;
    goto tls_fail;
  }
  fd = -1;
  if (rename(tmp, path) < 0) goto tls_fail;
  return 0;
tls_fail:
  snprintf(err, errlen, "writing %s: %s", path, strerror(errno));
  if (fd >= 0) close(fd);
  unlink(tmp);
  return -1;
}

/* Read a whole (small) file into a malloc'd NUL-terminated string. */
static char *read_file(const char *path, char *err, size_t errlen) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    snprintf(err, errlen, "reading %s: %s", path, strerror(errno));
    return NULL;
  }
  char *buf = malloc(PEM_FILE_MAX + 1);
  size_t len = 0;
  if (buf == NULL) {
    snprintf(err, errlen, "reading %s: out of memory", path);
    close(fd);
    return NULL;
  }
  for (;;) {
    ssize_t r = read(fd, buf + len, PEM_FILE_MAX - len);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      snprintf(err, errlen, "reading %s: %s", path, strerror(errno));
      goto tls_fail;
    }
    if (r == 0) break;
    len += (size_t)r;
    if (len == PEM_FILE_MAX) {
      snprintf(err, errlen, "reading %s: larger than %d bytes, not a PEM file", path, PEM_FILE_MAX);
      goto tls_fail;
    }
  }
  close(fd);
  buf[len] = '\0';
  return buf;
tls_fail:
  OPENSSL_cleanse(buf, len);
  free(buf);
  close(fd);
  return NULL;
}

/* Read DIR/NAME.crt and DIR/NAME.key into out. */
static int read_pair(const char *dir, const char *name, struct tls_pem *out, char *err,
                     size_t errlen) {
  char path[PATH_MAX];
  memset(out, 0, sizeof *out);
  if (join(path, sizeof path, dir, name, ".crt", err, errlen) < 0 ||
      (out->cert = read_file(path, err, errlen)) == NULL)
    return -1;
  if (join(path, sizeof path, dir, name, ".key", err, errlen) < 0 ||
      (out->key = read_file(path, err, errlen)) == NULL) {
    tls_pem_clear(out);
    return -1;
  }
  return 0;
}

/* Write out as DIR/NAME.crt (0644) and DIR/NAME.key (0600). */
static int write_pair(const char *dir, const char *name, const struct tls_pem *pem, char *err,
                      size_t errlen) {
  char path[PATH_MAX];
  if (join(path, sizeof path, dir, name, ".key", err, errlen) < 0 ||
      write_file(path, pem->key, 0600, err, errlen) < 0)
    return -1;
  if (join(path, sizeof path, dir, name, ".crt", err, errlen) < 0 ||
      write_file(path, pem->cert, 0644, err, errlen) < 0)
    return -1;
  return 0;
}

int tls_dir_init(const char *dir, enum tls_key_type type, int force, char *err, size_t errlen) {
  char path[PATH_MAX];
  struct stat st;
  if (make_dirs(dir, err, errlen) < 0 || join(path, sizeof path, dir, "ca", ".key", err, errlen) < 0)
    return -1;
  if (!force && lstat(path, &st) == 0) {
    snprintf(err, errlen,
             "%s already exists; use --force to replace the CA "
             "(every certificate it issued stops working)",
             path);
    return -1;
  }
  /* The CA is named after the directory, which usually names the service. */
  const char *base = strrchr(dir, '/');
  char name[64];
  snprintf(name, sizeof name, "%s", base && base[1] ? base + 1 : dir);
  struct tls_pem ca, agent;
  if (tls_ca_create(name, type, &ca, err, errlen) < 0) return -1;
  int rc = -1;
  if (tls_issue(&ca, TLS_AGENT_NAME, 1, type, CA_DAYS, &agent, err, errlen) == 0) {
    rc = write_pair(dir, "ca", &ca, err, errlen) == 0 &&
                 write_pair(dir, "agent", &agent, err, errlen) == 0
             ? 0
             : -1;
    tls_pem_clear(&agent);
  }
  tls_pem_clear(&ca);
  return rc;
}

int tls_dir_issue(const char *dir, const char *key, enum tls_key_type type, char *err,
                  size_t errlen) {
  return tls_dir_issue_for(dir, key, type, NULL, err, errlen);
}

int tls_dir_issue_for(const char *dir, const char *key, enum tls_key_type type,
                      const char *identity, char *err, size_t errlen) {
  if (key == NULL || !dns_label_valid(key, strlen(key))) {
    snprintf(err, errlen,
             "\"%s\" is not a valid route key (1-63 of a-z, 0-9, '-', not starting or ending "
             "with '-')",
             key ? key : "");
    return -1;
  }
  if (strcmp(key, "ca") == 0 || strcmp(key, "agent") == 0) {
    snprintf(err, errlen, "\"%s\" is reserved: %s/%s.crt is not a developer certificate", key,
             dir, key);
    return -1;
  }
  struct tls_pem ca, leaf;
  if (read_pair(dir, "ca", &ca, err, errlen) < 0) return -1;
  int rc = -1;
  if (tls_issue_for(&ca, key, 0, type, CLIENT_DAYS, identity, &leaf, err, errlen) == 0) {
    rc = write_pair(dir, key, &leaf, err, errlen);
    tls_pem_clear(&leaf);
  }
  tls_pem_clear(&ca);
  return rc;
}

/* ---- contexts ------------------------------------------------------------- */

/* A TLS 1.3-only context that trusts exactly ca_pem and presents own. */
static SSL_CTX *ctx_new(int server, const char *ca_pem, const struct tls_pem *own, char *err,
                        size_t errlen) {
  SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  X509 *ca = NULL, *cert = NULL;
  EVP_PKEY *key = NULL;
  if (ctx == NULL) {
    tls_fail(err, errlen, "creating the TLS context");
    return NULL;
  }
  if (!SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) ||
      !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION)) {
    tls_fail(err, errlen, "restricting the TLS context to TLS 1.3");
    goto tls_fail;
  }
  if (ca_pem == NULL || (ca = tls_pem_to_cert(ca_pem)) == NULL) {
    tls_fail(err, errlen, "reading the CA certificate");
    goto tls_fail;
  }
  if (!X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), ca)) {
    tls_fail(err, errlen, "trusting the CA certificate");
    goto tls_fail;
  }
  if (own == NULL || own->cert == NULL || (cert = tls_pem_to_cert(own->cert)) == NULL) {
    tls_fail(err, errlen, "reading the %s certificate", server ? "agent" : "client");
    goto tls_fail;
  }
  if (own->key == NULL || (key = tls_pem_to_key(own->key)) == NULL) {
    tls_fail(err, errlen, "reading the %s key", server ? "agent" : "client");
    goto tls_fail;
  }
  if (SSL_CTX_use_certificate(ctx, cert) != 1 || SSL_CTX_use_PrivateKey(ctx, key) != 1 ||
      SSL_CTX_check_private_key(ctx) != 1) {
    tls_fail(err, errlen, "loading the %s certificate and key", server ? "agent" : "client");
    goto tls_fail;
  }
  /* Only a certificate directly signed by the CA: leaf + CA, nothing deeper. */
  SSL_CTX_set_verify_depth(ctx, 1);
  if (server) {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    if (!SSL_CTX_add_client_CA(ctx, ca)) { /* tells clients which CA we want */
      tls_fail(err, errlen, "advertising the CA");
      goto tls_fail;
    }
    /* Tunnels are long-lived; resumption tickets would only cost bytes. */
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  }
  X509_free(ca);
  X509_free(cert);
  EVP_PKEY_free(key);
  return ctx;
tls_fail:
  X509_free(ca);
  X509_free(cert);
  EVP_PKEY_free(key);
  SSL_CTX_free(ctx);
  return NULL;
}

SSL_CTX *tls_server_ctx_from_pem(const char *ca_pem, const struct tls_pem *own, char *err,
                                 size_t errlen) {
  return ctx_new(1, ca_pem, own, err, errlen);
}

SSL_CTX *tls_client_ctx_from_pem(const char *ca_pem, const struct tls_pem *own, char *err,
                                 size_t errlen) {
  return ctx_new(0, ca_pem, own, err, errlen);
}

/* Load DIR/ca.crt and DIR/NAME.{crt,key} and build the context. */
static SSL_CTX *ctx_from_dir(int server, const char *dir, const char *name, char *err,
                             size_t errlen) {
  char path[PATH_MAX];
  struct tls_pem own;
  if (join(path, sizeof path, dir, "ca", ".crt", err, errlen) < 0) return NULL;
  char *ca = read_file(path, err, errlen);
  if (ca == NULL) return NULL;
  SSL_CTX *ctx = NULL;
  if (read_pair(dir, name, &own, err, errlen) == 0) {
    char why[384];
    ctx = ctx_new(server, ca, &own, why, sizeof why);
    if (ctx == NULL) snprintf(err, errlen, "%s/%s.*: %s", dir, name, why);
    tls_pem_clear(&own);
  }
  free(ca);
  return ctx;
}

SSL_CTX *tls_server_ctx_from_dir(const char *dir, char *err, size_t errlen) {
  return ctx_from_dir(1, dir, "agent", err, errlen);
}

SSL_CTX *tls_client_ctx_from_dir(const char *dir, const char *key, char *err, size_t errlen) {
  if (key == NULL || !dns_label_valid(key, strlen(key))) {
    snprintf(err, errlen, "\"%s\" is not a valid route key", key ? key : "");
    return NULL;
  }
  return ctx_from_dir(0, dir, key, err, errlen);
}

SSL *tls_client_ssl_new(SSL_CTX *ctx) {
  SSL *ssl = SSL_new(ctx);
  if (ssl == NULL) return NULL;
  /* Verify the agent's name, not the address we dialed (a port-forward on
   * localhost, a load balancer IP): the certificate says "kbridge-agent". */
  if (SSL_set1_host(ssl, TLS_AGENT_NAME) != 1 ||
      SSL_set_tlsext_host_name(ssl, TLS_AGENT_NAME) != 1) {
    SSL_free(ssl);
    return NULL;
  }
  SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  return ssl;
}

int tls_peer_cn(SSL *ssl, char *out, size_t outlen) {
  X509 *peer = tls_verified_peer(ssl, out, outlen);
  if (peer == NULL) return -1;
  X509_NAME *subj = X509_get_subject_name(peer);
  int idx = X509_NAME_get_index_by_NID(subj, NID_commonName, -1);
  if (idx < 0 || X509_NAME_get_index_by_NID(subj, NID_commonName, idx) >= 0)
    return -1; /* none, or ambiguous (two CNs) */
  unsigned char *utf8 = NULL;
  int len = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, idx)));
  int rc = -1;
  if (len >= 0 && (size_t)len < outlen && memchr(utf8, '\0', (size_t)len) == NULL) {
    memcpy(out, utf8, (size_t)len);
    out[len] = '\0';
    rc = 0;
  }
  OPENSSL_free(utf8);
  return rc;
}

char *tls_describe_error(SSL *ssl, unsigned long code, char *out, size_t outlen) {
  const char *reason = code ? ERR_reason_error_string(code) : NULL;
  long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
  if (code && reason == NULL) reason = "TLS error";
  if (vr != X509_V_OK && ERR_GET_REASON(code) == SSL_R_CERTIFICATE_VERIFY_FAILED)
    snprintf(out, outlen, "%s: %s", reason, X509_verify_cert_error_string(vr));
  else if (reason)
    snprintf(out, outlen, "%s", reason);
  else if (vr != X509_V_OK)
    snprintf(out, outlen, "certificate verify failed: %s", X509_verify_cert_error_string(vr));
  else
    snprintf(out, outlen, "TLS connection failed");
  return out;
}
