/* certs.c: the `kbridge certs` subcommands (see certs.h). */
#include "certs.h"

#include <stddef.h>
#include <stdio.h>

#include "tls.h"

#define CFG_OFF(field) offsetof(struct certs_config, field)

static const struct opt_def init_opts[] = {
    {"DIR", OPT_PATH, CFG_OFF(dir), 1, 0, NULL, NULL, 0, 0,
     .help = "directory to create (mode 0700) or reuse"},
    {"ed25519", OPT_FLAG, CFG_OFF(ed25519), 0, 0, NULL, NULL, 0, 0,
     .help = "Ed25519 keys instead of ECDSA P-256"},
    {"force", OPT_FLAG, CFG_OFF(force), 0, 0, NULL, NULL, 0, 0,
     .help = "replace an existing CA (every certificate it issued stops working)"},
};

static const struct opt_def issue_opts[] = {
    {"DIR", OPT_DIR, CFG_OFF(dir), 1, 0, NULL, NULL, 0, 0,
     .help = "a directory made by kbridge certs init (needs ca.crt and ca.key)"},
    {"key", OPT_KEY, CFG_OFF(key), 0, 1, NULL, NULL, 0, 0,
     .help = "the route key the certificate is for (its subject CN)"},
    {"ed25519", OPT_FLAG, CFG_OFF(ed25519), 0, 0, NULL, NULL, 0, 0,
     .help = "an Ed25519 key instead of ECDSA P-256"},
    {"identity", OPT_STRING, CFG_OFF(identity), 0, 0, NULL, "NAME", 0, 0,
     .help = "bind the certificate to this identity (the agent lets only one identity hold a key)"},
};

const struct opt_cmd certs_init_cmd = {
    "certs init",
    "Create a CA and the agent's certificate in DIR.",
    "Writes DIR/ca.crt, DIR/ca.key (the CA, 10 years) and DIR/agent.crt, DIR/agent.key\n"
    "(names kbridge-agent, localhost, 127.0.0.1, ::1). Keys are written with mode 0600.",
    init_opts,
    .nopts = sizeof init_opts / sizeof init_opts[0],
};

const struct opt_cmd certs_issue_cmd = {
    "certs issue",
    "Issue a developer's client certificate for a route key from the CA in DIR.",
    "Writes DIR/KEY.crt and DIR/KEY.key (mode 0600), valid for 365 days; an existing\n"
    "pair for the same key is replaced. The agent accepts the certificate for KEY only.\n"
    "In a cluster, kbridge connect gets its certificate from kbridge-signer instead;\n"
    "this is for an agent run by hand (direct mode) with a CA you keep yourself.",
    issue_opts,
    .nopts = sizeof issue_opts / sizeof issue_opts[0],
};

int certs_init_run(struct certs_config *cfg) {
  char err[600];
  if (tls_dir_init(cfg->dir, cfg->ed25519 ? TLS_KEY_ED25519 : TLS_KEY_P256, cfg->force, err,
                   sizeof err) < 0) {
    fprintf(stderr, "kbridge: certs init: %s\n", err);
    return 1;
  }
  printf("created %s/ca.crt, ca.key, agent.crt, agent.key (%s)\n", cfg->dir,
         cfg->ed25519 ? "Ed25519" : "ECDSA P-256");
  return 0;
}

int certs_issue_run(struct certs_config *cfg) {
  char err[600];
  if (tls_dir_issue_for(cfg->dir, cfg->key, cfg->ed25519 ? TLS_KEY_ED25519 : TLS_KEY_P256,
                        cfg->identity, err, sizeof err) < 0) {
    fprintf(stderr, "kbridge: certs issue: %s\n", err);
    return 1;
  }
  printf("issued %s/%s.crt and %s/%s.key for route key %s\n", cfg->dir, cfg->key, cfg->dir,
         cfg->key, cfg->key);
  return 0;
}
