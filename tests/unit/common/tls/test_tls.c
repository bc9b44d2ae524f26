/* test_tls.c: the mini CA and the mTLS contexts of common/tls.c.
 *
 * Certificates are checked with X509_verify_cert against the issuing CA (and
 * against a foreign CA, which must fail); the directory functions are checked for
 * file modes and refusal to overwrite; handshakes run for real between two SSL
 * objects over a socketpair, for P-256 and Ed25519, including the refusals: a
 * client of another CA, no client certificate, a client certificate presented as
 * the agent's, and TLS 1.2. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "check.h"
#include "tls.h"

static char err[512];

static X509 *cert_of(const char *pem) {
  BIO *b = BIO_new_mem_buf(pem, -1);
  X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);
  BIO_free(b);
  return x;
}

/* X509_verify_cert of leaf against ca with the given purpose; the verify code. */
static int verify(const char *ca_pem, const char *leaf_pem, int purpose) {
  X509 *ca = cert_of(ca_pem), *leaf = cert_of(leaf_pem);
  X509_STORE *store = X509_STORE_new();
  X509_STORE_CTX *ctx = X509_STORE_CTX_new();
  X509_STORE_add_cert(store, ca);
  X509_STORE_CTX_init(ctx, store, leaf, NULL);
  X509_STORE_CTX_set_purpose(ctx, purpose);
  int rc = X509_verify_cert(ctx) == 1 ? X509_V_OK : X509_STORE_CTX_get_error(ctx);
  X509_STORE_CTX_free(ctx);
  X509_STORE_free(store);
  X509_free(ca);
  X509_free(leaf);
  return rc;
}

static void test_ca_and_issue(enum tls_key_type type) {
  struct tls_pem ca, other, agent, alice;
  CHECK_EQ_INT(tls_ca_create("shop", type, &ca, err, sizeof err), 0);
  CHECK_EQ_INT(tls_ca_create("elsewhere", type, &other, err, sizeof err), 0);
  CHECK(ca.cert && strstr(ca.cert, "BEGIN CERTIFICATE"));
  CHECK(ca.key && strstr(ca.key, "PRIVATE KEY"));
  CHECK_EQ_INT(tls_issue(&ca, TLS_AGENT_NAME, 1, type, 30, &agent, err, sizeof err), 0);
  CHECK_EQ_INT(tls_issue(&ca, "alice", 0, type, 30, &alice, err, sizeof err), 0);

  X509 *x = cert_of(ca.cert);
  CHECK(x != NULL && X509_check_ca(x) == 1);
  char cn[128] = "";
  X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof cn);
  CHECK_EQ_STR(cn, "kbridge CA shop");
  EVP_PKEY *pub = X509_get0_pubkey(x);
  CHECK_EQ_INT(EVP_PKEY_get_base_id(pub), type == TLS_KEY_ED25519 ? EVP_PKEY_ED25519 : EVP_PKEY_EC);
  X509_free(x);

  /* The agent certificate: CA:FALSE, serverAuth, the name and loopback SANs. */
  x = cert_of(agent.cert);
  CHECK(x != NULL && X509_check_ca(x) == 0);
  CHECK_EQ_INT(X509_check_host(x, TLS_AGENT_NAME, 0, 0, NULL), 1);
  CHECK_EQ_INT(X509_check_host(x, "localhost", 0, 0, NULL), 1);
  CHECK_EQ_INT(X509_check_ip_asc(x, "127.0.0.1", 0), 1);
  CHECK_EQ_INT(X509_check_ip_asc(x, "::1", 0), 1);
  CHECK_EQ_INT(X509_check_host(x, "evil.example", 0, 0, NULL), 0);
  CHECK((X509_get_extended_key_usage(x) & XKU_SSL_SERVER) != 0);
  CHECK((X509_get_extended_key_usage(x) & XKU_SSL_CLIENT) == 0);
  CHECK(X509_get0_subject_key_id(x) != NULL && X509_get0_authority_key_id(x) != NULL);
  const ASN1_INTEGER *serial = X509_get0_serialNumber(x);
  CHECK(serial != NULL && ASN1_STRING_length(serial) == 16);
  X509_free(x);

  x = cert_of(alice.cert);
  X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof cn);
  CHECK_EQ_STR(cn, "alice");
  CHECK((X509_get_extended_key_usage(x) & XKU_SSL_CLIENT) != 0);
  CHECK((X509_get_extended_key_usage(x) & XKU_SSL_SERVER) == 0);
  X509_free(x);

  /* Chains: good with the issuing CA and the right purpose; bad otherwise. */
  CHECK_EQ_INT(verify(ca.cert, agent.cert, X509_PURPOSE_SSL_SERVER), X509_V_OK);
  CHECK_EQ_INT(verify(ca.cert, alice.cert, X509_PURPOSE_SSL_CLIENT), X509_V_OK);
  CHECK(verify(ca.cert, alice.cert, X509_PURPOSE_SSL_SERVER) != X509_V_OK);
  CHECK(verify(other.cert, alice.cert, X509_PURPOSE_SSL_CLIENT) != X509_V_OK);
  CHECK(verify(other.cert, agent.cert, X509_PURPOSE_SSL_SERVER) != X509_V_OK);

  /* Issuing with a CA whose key does not match its certificate fails clearly. */
  struct tls_pem mixed = {ca.cert, other.key}, out;
  CHECK_EQ_INT(tls_issue(&mixed, "bob", 0, type, 30, &out, err, sizeof err), -1);
  CHECK(strstr(err, "does not belong") != NULL);
  struct tls_pem garbage = {"not a pem", "nope"};
  CHECK_EQ_INT(tls_issue(&garbage, "bob", 0, type, 30, &out, err, sizeof err), -1);
  CHECK(strstr(err, "reading the CA certificate") != NULL);
  CHECK_EQ_INT(tls_issue(&ca, "", 0, type, 30, &out, err, sizeof err), -1);
  CHECK_EQ_INT(tls_issue(&ca, "bob", 0, type, 0, &out, err, sizeof err), -1);

  tls_pem_clear(&ca);
  tls_pem_clear(&other);
  tls_pem_clear(&agent);
  tls_pem_clear(&alice);
  CHECK(ca.cert == NULL && ca.key == NULL);
}

static int mode_of(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? (int)(st.st_mode & 0777) : -1;
}

static char *slurp(const char *path) {
  FILE *f = fopen(path, "r");
  static char buf[8192];
  if (f == NULL) return NULL;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  buf[n] = '\0';
  fclose(f);
  return buf;
}

/* ---- handshakes over a socketpair ----------------------------------------- */

struct hs {
  int server_ok, client_ok; /* handshake finished on that side */
  int data_ok;              /* a byte went each way after the handshake */
  char server_saw[128], client_saw[128];
  char matched[128]; /* the name the client matched in the agent certificate */
};

/* Run the handshake between a server and a client SSL to completion or failure,
 * then try to move one byte each way (a TLS 1.3 client finishes before the
 * server has checked its certificate; a refusal shows on its first read). */
static struct hs handshake(SSL_CTX *sctx, SSL_CTX *cctx, int set_host) {
  struct hs r = {0};
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) return r;
  fcntl(sv[0], F_SETFL, O_NONBLOCK);
  fcntl(sv[1], F_SETFL, O_NONBLOCK);
  SSL *s = SSL_new(sctx), *c = set_host ? tls_client_ssl_new(cctx) : SSL_new(cctx);
  SSL_set_fd(s, sv[0]);
  SSL_set_fd(c, sv[1]);
  int sdone = 0, cdone = 0, sfail = 0, cfail = 0;
  for (int i = 0; i < 100 && !(sdone && cdone) && !sfail && !cfail; i++) {
    if (!cdone) {
      int rc = SSL_connect(c);
      if (rc == 1)
        cdone = 1;
      else if (SSL_get_error(c, rc) != SSL_ERROR_WANT_READ && SSL_get_error(c, rc) != SSL_ERROR_WANT_WRITE)
        cfail = 1;
    }
    if (!sdone) {
      int rc = SSL_accept(s);
      if (rc == 1)
        sdone = 1;
      else if (SSL_get_error(s, rc) != SSL_ERROR_WANT_READ && SSL_get_error(s, rc) != SSL_ERROR_WANT_WRITE)
        sfail = 1;
    }
  }
  ERR_clear_error();
  r.server_ok = sdone;
  r.client_ok = cdone;
  if (sdone && cdone) {
    char b = 0;
    int got = 0;
    SSL_write(c, "c", 1);
    SSL_write(s, "s", 1);
    for (int i = 0; i < 20 && got < 2; i++) {
      if (SSL_read(s, &b, 1) == 1 && b == 'c') got++;
      if (SSL_read(c, &b, 1) == 1 && b == 's') got++;
    }
    r.data_ok = got == 2;
    tls_peer_cn(s, r.server_saw, sizeof r.server_saw);
    tls_peer_cn(c, r.client_saw, sizeof r.client_saw);
    const char *m = SSL_get0_peername(c);
    snprintf(r.matched, sizeof r.matched, "%s", m ? m : "");
  }
  ERR_clear_error();
  SSL_free(s);
  SSL_free(c);
  close(sv[0]);
  close(sv[1]);
  return r;
}

static void test_handshakes(enum tls_key_type type) {
  struct tls_pem ca, other, agent, alice, mallory, fake_agent;
  tls_ca_create("hs", type, &ca, err, sizeof err);
  tls_ca_create("other", type, &other, err, sizeof err);
  tls_issue(&ca, TLS_AGENT_NAME, 1, type, 1, &agent, err, sizeof err);
  tls_issue(&ca, "alice", 0, type, 1, &alice, err, sizeof err);
  tls_issue(&other, "mallory", 0, type, 1, &mallory, err, sizeof err);
  tls_issue(&other, TLS_AGENT_NAME, 1, type, 1, &fake_agent, err, sizeof err);

  SSL_CTX *sctx = tls_server_ctx_from_pem(ca.cert, &agent, err, sizeof err);
  SSL_CTX *cctx = tls_client_ctx_from_pem(ca.cert, &alice, err, sizeof err);
  CHECK(sctx != NULL && cctx != NULL);

  /* The good case: both sides see each other's verified name. */
  struct hs r = handshake(sctx, cctx, 1);
  CHECK(r.server_ok && r.client_ok && r.data_ok);
  CHECK_EQ_STR(r.server_saw, "alice");
  CHECK_EQ_STR(r.client_saw, TLS_AGENT_NAME);
  CHECK_EQ_STR(r.matched, TLS_AGENT_NAME); /* the name was checked, not just the chain */

  /* A client certificate from another CA is refused by the agent. */
  SSL_CTX *bad = tls_client_ctx_from_pem(other.cert, &mallory, err, sizeof err);
  SSL_CTX *mctx = tls_client_ctx_from_pem(ca.cert, &mallory, err, sizeof err);
  r = handshake(sctx, mctx, 1);
  CHECK(!r.server_ok && !r.data_ok);
  SSL_CTX_free(mctx);

  /* An agent certificate from another CA is refused by the client. */
  SSL_CTX *fctx = tls_server_ctx_from_pem(other.cert, &fake_agent, err, sizeof err);
  r = handshake(fctx, cctx, 1);
  CHECK(!r.client_ok && !r.data_ok);
  SSL_CTX_free(fctx);
  SSL_CTX_free(bad);

  /* A developer certificate presented as the agent's: right CA, wrong name and
   * usage. */
  SSL_CTX *dctx = tls_server_ctx_from_pem(ca.cert, &alice, err, sizeof err);
  r = handshake(dctx, cctx, 1);
  CHECK(!r.client_ok && !r.data_ok);
  SSL_CTX_free(dctx);

  /* A client without a certificate. */
  SSL_CTX *anon = SSL_CTX_new(TLS_client_method());
  SSL_CTX_set_verify(anon, SSL_VERIFY_NONE, NULL);
  r = handshake(sctx, anon, 0);
  CHECK(!r.server_ok && !r.data_ok);
  SSL_CTX_free(anon);

  /* A TLS 1.2-only client, even with a good certificate. */
  SSL_CTX *old = tls_client_ctx_from_pem(ca.cert, &alice, err, sizeof err);
  SSL_CTX_set_min_proto_version(old, TLS1_2_VERSION);
  SSL_CTX_set_max_proto_version(old, TLS1_2_VERSION);
  r = handshake(sctx, old, 1);
  CHECK(!r.server_ok && !r.client_ok);
  SSL_CTX_free(old);

  /* No peer, no name. */
  SSL *lone = SSL_new(sctx);
  char cn[64];
  CHECK_EQ_INT(tls_peer_cn(lone, cn, sizeof cn), -1);
  SSL_free(lone);

  /* Contexts refuse a key that is not the certificate's. */
  struct tls_pem wrong = {alice.cert, mallory.key};
  CHECK(tls_client_ctx_from_pem(ca.cert, &wrong, err, sizeof err) == NULL);
  CHECK(strstr(err, "loading the client certificate") != NULL);

  SSL_CTX_free(sctx);
  SSL_CTX_free(cctx);
  tls_pem_clear(&ca);
  tls_pem_clear(&other);
  tls_pem_clear(&agent);
  tls_pem_clear(&alice);
  tls_pem_clear(&mallory);
  tls_pem_clear(&fake_agent);
}

static void test_dirs(void) {
  char tmpl[] = "/tmp/kbtls.XXXXXX", path[600], dir[256];
  CHECK(mkdtemp(tmpl) != NULL);
  snprintf(dir, sizeof dir, "%s/certs/shop", tmpl); /* parents are created */
  mode_t old = umask(0);                            /* the modes must not rely on a umask */
  CHECK_EQ_INT(tls_dir_init(dir, TLS_KEY_P256, 0, err, sizeof err), 0);
  umask(old);
  CHECK_EQ_INT(mode_of(dir), 0700);
  snprintf(path, sizeof path, "%s/ca.key", dir);
  CHECK_EQ_INT(mode_of(path), 0600);
  snprintf(path, sizeof path, "%s/agent.key", dir);
  CHECK_EQ_INT(mode_of(path), 0600);
  snprintf(path, sizeof path, "%s/agent.crt", dir);
  CHECK_EQ_INT(mode_of(path), 0644);
  snprintf(path, sizeof path, "%s/ca.crt", dir);
  char before[8192];
  snprintf(before, sizeof before, "%s", slurp(path) ? slurp(path) : "");
  CHECK(strstr(before, "BEGIN CERTIFICATE") != NULL);

  /* A second init refuses to replace the CA; --force does replace it. */
  CHECK_EQ_INT(tls_dir_init(dir, TLS_KEY_P256, 0, err, sizeof err), -1);
  CHECK(strstr(err, "already exists") != NULL && strstr(err, "--force") != NULL);
  CHECK_EQ_STR(slurp(path), before);
  CHECK_EQ_INT(tls_dir_init(dir, TLS_KEY_ED25519, 1, err, sizeof err), 0);
  CHECK(slurp(path) && strcmp(slurp(path), before) != 0);

  CHECK_EQ_INT(tls_dir_issue(dir, "alice", TLS_KEY_P256, err, sizeof err), 0);
  snprintf(path, sizeof path, "%s/alice.key", dir);
  CHECK_EQ_INT(mode_of(path), 0600);
  CHECK_EQ_INT(tls_dir_issue(dir, "Alice", TLS_KEY_P256, err, sizeof err), -1);
  CHECK(strstr(err, "not a valid route key") != NULL);
  CHECK_EQ_INT(tls_dir_issue(dir, "-x", TLS_KEY_P256, err, sizeof err), -1);
  CHECK_EQ_INT(tls_dir_issue(dir, "agent", TLS_KEY_P256, err, sizeof err), -1);
  CHECK(strstr(err, "reserved") != NULL);
  CHECK_EQ_INT(tls_dir_issue(tmpl, "alice", TLS_KEY_P256, err, sizeof err), -1);
  CHECK(strstr(err, "ca.crt") != NULL && strstr(err, "No such file") != NULL);

  /* The dir contexts handshake with each other (Ed25519 CA, P-256 client). */
  SSL_CTX *s = tls_server_ctx_from_dir(dir, err, sizeof err);
  SSL_CTX *c = tls_client_ctx_from_dir(dir, "alice", err, sizeof err);
  CHECK(s != NULL && c != NULL);
  struct hs r = handshake(s, c, 1);
  CHECK(r.data_ok);
  CHECK_EQ_STR(r.server_saw, "alice");
  SSL_CTX_free(s);
  SSL_CTX_free(c);
  CHECK(tls_client_ctx_from_dir(dir, "bob", err, sizeof err) == NULL);
  CHECK(strstr(err, "bob.crt") != NULL);
  CHECK(tls_server_ctx_from_dir(tmpl, err, sizeof err) == NULL);

  /* Clean up. */
  const char *files[] = {"ca.crt", "ca.key", "agent.crt", "agent.key", "alice.crt", "alice.key"};
  for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
    snprintf(path, sizeof path, "%s/%s", dir, files[i]);
    CHECK_EQ_INT(unlink(path), 0);
  }
  CHECK_EQ_INT(rmdir(dir), 0); /* also proves no temporary file was left */
  snprintf(path, sizeof path, "%s/certs", tmpl);
  rmdir(path);
  rmdir(tmpl);
}

static void test_describe(void) {
  char buf[256];
  CHECK_EQ_STR(tls_describe_error(NULL, 0, buf, sizeof buf), "TLS connection failed");
  unsigned long code = ERR_PACK(ERR_LIB_SSL, 0, SSL_R_CERTIFICATE_VERIFY_FAILED);
  CHECK(strstr(tls_describe_error(NULL, code, buf, sizeof buf), "certificate verify failed") != NULL);
}

/* Requests and signing, as kbridge connect and kbridge-signer use them: the
 * certificate keeps the request's CN and key, carries the identity (decoded
 * back exactly, odd bytes included), and a forged request is refused. */
static void test_csr_and_identity(void) {
  char cn[80], id[300];
  struct tls_pem ca;
  CHECK_EQ_INT(tls_ca_create("shop/api", TLS_KEY_P256, &ca, err, sizeof err), 0);
  char *csr = NULL, *key = NULL, *cert = NULL;
  CHECK_EQ_INT(tls_csr_new("alice", TLS_KEY_P256, &csr, &key, err, sizeof err), 0);
  CHECK_EQ_INT(tls_csr_cn(csr, cn, sizeof cn, err, sizeof err), 0);
  CHECK(strcmp(cn, "alice") == 0);
  const char *who = "user \"Bob\" <bob@example.com> 100%";
  CHECK_EQ_INT(tls_sign_csr(&ca, csr, 0, who, 3600, &cert, err, sizeof err), 0);
  CHECK_EQ_INT(tls_cert_identity(cert, id, sizeof id), 1);
  CHECK(strcmp(id, who) == 0);
  /* the certificate works with the request's key, against the CA */
  struct tls_pem me = {cert, key};
  SSL_CTX *cctx = tls_client_ctx_from_pem(ca.cert, &me, err, sizeof err);
  CHECK(cctx != NULL);
  if (cctx) SSL_CTX_free(cctx);
  /* too small a buffer: -1, not a truncated name */
  CHECK_EQ_INT(tls_cert_identity(cert, id, 8), -1);
  free(cert);
  cert = NULL;
  /* without identity (the agent's certificate) */
  CHECK_EQ_INT(tls_sign_csr(&ca, csr, 1, NULL, 3600, &cert, err, sizeof err), 0);
  CHECK_EQ_INT(tls_cert_identity(cert, id, sizeof id), 0);
  free(cert);
  cert = NULL;
  /* a request whose signature does not match: refused */
  char *bad = strdup(csr);
  char *mid = strstr(bad, "\n") + 40;
  *mid = *mid == 'A' ? 'B' : 'A';
  CHECK_EQ_INT(tls_csr_cn(bad, cn, sizeof cn, err, sizeof err), -1);
  CHECK_EQ_INT(tls_sign_csr(&ca, bad, 0, "x", 3600, &cert, err, sizeof err), -1);
  CHECK(cert == NULL);
  free(bad);
  CHECK_EQ_INT(tls_csr_cn("not a request", cn, sizeof cn, err, sizeof err), -1);
  free(csr);
  free(key);
  /* tls_issue_for: the same identity, through the direct-mode path */
  struct tls_pem leaf;
  CHECK_EQ_INT(tls_issue_for(&ca, "bob", 0, TLS_KEY_ED25519, 1, "system:serviceaccount:shop:b",
                             &leaf, err, sizeof err), 0);
  CHECK_EQ_INT(tls_cert_identity(leaf.cert, id, sizeof id), 1);
  CHECK(strcmp(id, "system:serviceaccount:shop:b") == 0);
  tls_pem_clear(&leaf);
  CHECK_EQ_INT(tls_issue_for(&ca, "bob", 0, TLS_KEY_P256, 1, "", &leaf, err, sizeof err), -1);
  tls_pem_clear(&ca);
}

int main(void) {
  test_csr_and_identity();
  test_ca_and_issue(TLS_KEY_P256);
  test_ca_and_issue(TLS_KEY_ED25519);
  test_handshakes(TLS_KEY_P256);
  test_handshakes(TLS_KEY_ED25519);
  test_dirs();
  test_describe();
  return check_done();
}
