/* main.c: the kbridge command line: find the subcommand, parse its flags with its
 * option table (optparse.h), run it.
 *
 * Exit status: 0 success, 1 the command failed, 2 the command line was wrong
 * (with a one-line error on stderr naming the flag and what it expects). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/crypto.h>

#include "certs.h"
#include "connect.h"
#include "log.h"
#include "optfile.h"
#include "proxy.h"

/* Read for the options of a command that has a --config flag, when present in
 * the current directory. */
#define CONFIG_FILE "kbridge.yaml"

static int run_proxy(void *cfg) {
  struct proxy_config *pc = cfg;
  log_init("kbridge", pc->log_level);
  return proxy_run(pc);
}
static int run_certs_init(void *cfg) { return certs_init_run(cfg); }
static int run_certs_issue(void *cfg) { return certs_issue_run(cfg); }
static int run_connect(void *cfg) { return connect_run(cfg); }
static int run_env(void *cfg) { return env_run(cfg); }
static int run_restore(void *cfg) { return restore_run(cfg); }
static int run_list(void *cfg) { return list_run(cfg); }
static int run_status(void *cfg) { return status_run(cfg); }
static int run_disconnect(void *cfg) { return disconnect_run(cfg); }
static int run_namespaces(void *cfg) { return namespaces_run(cfg); }

/* Subcommands: the words that select them, their table, their config. */
static struct proxy_config proxy_cfg;
static struct certs_config certs_cfg;
static struct connect_config connect_cfg;
static struct env_config env_cfg;
static struct restore_config restore_cfg;
static const struct command {
  const char *word1, *word2; /* "certs" "init"; word2 NULL for one-word commands */
  const struct opt_cmd *opts;
  void *cfg;
  size_t cfgsize;
  int (*run)(void *cfg);
} commands[] = {
    {"proxy", NULL, &proxy_cmd, &proxy_cfg, sizeof proxy_cfg, run_proxy},
    {"certs", "init", &certs_init_cmd, &certs_cfg, sizeof certs_cfg, run_certs_init},
    {"certs", "issue", &certs_issue_cmd, &certs_cfg, sizeof certs_cfg, run_certs_issue},
    {"connect", NULL, &connect_cmd, &connect_cfg, sizeof connect_cfg, run_connect},
    {"env", NULL, &env_cmd, &env_cfg, sizeof env_cfg, run_env},
    {"restore", NULL, &restore_cmd, &restore_cfg, sizeof restore_cfg, run_restore},
    {"list", NULL, &list_cmd, &restore_cfg, sizeof restore_cfg, run_list},
    {"status", NULL, &status_cmd, &restore_cfg, sizeof restore_cfg, run_status},
    {"disconnect", NULL, &disconnect_cmd, &restore_cfg, sizeof restore_cfg, run_disconnect},
    {"namespaces", NULL, &namespaces_cmd, &restore_cfg, sizeof restore_cfg, run_namespaces},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static void version(void) {
  printf("kbridge %s (OpenSSL %s, libevent %s)\n", KBRIDGE_VERSION,
         OpenSSL_version(OPENSSL_VERSION_STRING), event_get_version());
}

static void usage(FILE *out) {
  fprintf(out, "usage: kbridge COMMAND [flags]\n\ncommands:\n");
  for (size_t i = 0; i < NCOMMANDS; i++)
    fprintf(out, "  %-14s %s\n", commands[i].opts->name, commands[i].opts->summary);
  fprintf(out, "  %-14s %s\n", "version", "Print the version.");
  fprintf(out, "  %-14s %s\n", "help [COMMAND]", "Show this help, or a command's flags.");
  fprintf(out, "\nRun `kbridge COMMAND --help` for a command's flags.\n");
}

/* Match argv[0..] against a command's words; returns how many words matched
 * (0 if not this command). */
static int match(const struct command *c, int argc, char **argv) {
  if (argc < 1 || strcmp(argv[0], c->word1) != 0) return 0;
  if (c->word2 == NULL) return 1;
  return argc >= 2 && strcmp(argv[1], c->word2) == 0 ? 2 : 0;
}

int main(int argc, char **argv) {
  char err[700];
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  const char *w = argv[1];
  if (strcmp(w, "version") == 0 || strcmp(w, "--version") == 0) {
    if (argc > 2) {
      fprintf(stderr, "kbridge: version: unexpected argument \"%s\"\n", argv[2]);
      return 2;
    }
    version();
    return 0;
  }
  if (strcmp(w, "help") == 0 || strcmp(w, "--help") == 0 || strcmp(w, "-h") == 0) {
    if (argc == 2) {
      usage(stdout);
      return 0;
    }
    for (size_t i = 0; i < NCOMMANDS; i++) {
      if (match(&commands[i], argc - 2, argv + 2)) {
        opt_help(commands[i].opts, stdout);
        return 0;
      }
    }
    int shown = 0; /* "help certs": every "certs ..." command */
    for (size_t i = 0; argc == 3 && i < NCOMMANDS; i++) {
      if (commands[i].word2 && strcmp(argv[2], commands[i].word1) == 0) {
        if (shown++) printf("\n");
        opt_help(commands[i].opts, stdout);
      }
    }
    if (shown) return 0;
    fprintf(stderr, "kbridge: help: unknown command \"%s\" (try kbridge help)\n", argv[2]);
    return 2;
  }
  for (size_t i = 0; i < NCOMMANDS; i++) {
    const struct command *c = &commands[i];
    int used = match(c, argc - 1, argv + 1);
    if (used == 0) continue;
    memset(c->cfg, 0, c->cfgsize);
    /* kubectl habits: "-n NS" is --namespace; for connect, what follows "--" is
     * the command to run, not arguments of ours. */
    int nargs = argc - 1 - used;
    char **args = argv + 1 + used;
    for (int j = 0; j < nargs; j++) {
      if (strcmp(args[j], "--") == 0 && c->cfg == (void *)&connect_cfg) {
        connect_cfg.cmd = j + 1 < nargs ? args + j + 1 : NULL;
        nargs = j;
        break;
      }
      if (strcmp(args[j], "-n") == 0) args[j] = (char *)(uintptr_t)"--namespace";
    }
    /* A command with a --config flag (connect) also reads its options from that
     * file, else from ./kbridge.yaml when there is one; the command line wins. */
    struct opt_file file;
    int have_file = 0;
    const char *cfgpath = NULL;
    int explicit_cfg = 0;
    for (size_t k = 0; k < c->opts->nopts; k++)
      if (strcmp(c->opts->opts[k].name, "config") == 0) cfgpath = CONFIG_FILE;
    for (int j = 0; cfgpath && j < nargs; j++) {
      if (strcmp(args[j], "--config") == 0 && j + 1 < nargs) cfgpath = args[j + 1];
      else if (strncmp(args[j], "--config=", 9) == 0) cfgpath = args[j] + 9;
      else continue;
      explicit_cfg = 1;
    }
    if (cfgpath && (explicit_cfg || access(CONFIG_FILE, F_OK) == 0)) {
      int h = 0;
      for (int j = 0; j < nargs; j++) h |= strcmp(args[j], "--help") == 0 || strcmp(args[j], "-h") == 0;
      if (!h) {
        if (access(cfgpath, R_OK) < 0) {
          fprintf(stderr, "kbridge: --config: %s: %s\n", cfgpath, strerror(errno));
          return 2;
        }
        if (opt_file_load(c->opts, cfgpath, &file, err, sizeof err) < 0) {
          fprintf(stderr, "kbridge: %s\n", err);
          return 2;
        }
        have_file = 1;
      }
    }
    int rc = opt_parse_with(c->opts, have_file ? &file : NULL, nargs, args, c->cfg, err, sizeof err);
    if (rc < 0 || rc == 1) {
      if (have_file) opt_file_free(&file);
    }
    if (rc == 1) {
      opt_help(c->opts, stdout);
      return 0;
    }
    if (rc < 0) {
      fprintf(stderr, "kbridge: %s\n", err);
      return 2;
    }
    /* connect names the file and line of a kbridge.yaml value in its later errors */
    if (c->cfg == (void *)&connect_cfg) connect_cfg.file = have_file ? &file : NULL;
    rc = c->run(c->cfg);
    if (have_file) opt_file_free(&file);
    return rc;
  }
  if (strcmp(w, "certs") == 0 && argc == 3 &&
      (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0)) {
    opt_help(&certs_init_cmd, stdout);
    printf("\n");
    opt_help(&certs_issue_cmd, stdout);
    return 0;
  }
  if (strcmp(w, "certs") == 0)
    fprintf(stderr, "kbridge: certs: expected init or issue, got %s%s%s (see kbridge help)\n",
            argc > 2 ? "\"" : "", argc > 2 ? argv[2] : "nothing", argc > 2 ? "\"" : "");
  else
    fprintf(stderr, "kbridge: unknown command \"%s\" (see kbridge help)\n", w);
  return 2;
}
