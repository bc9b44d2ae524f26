/* options.h: the command-line option tables of the kbridge CLI.
 *
 * Each subcommand declares its flags in one table (name, type, where the value
 * goes in the command's config struct, default, help). One parser serves every
 * table and checks every value by its type, so a bad flag always gets the same
 * kind of one-line error naming the flag and what was expected:
 *
 *   --local-port: expected a port 1-65535, got "abc"
 *
 * and `--help` text is generated from the same table. Defaults are written as
 * text and go through the same parser as user input, so the help shows exactly
 * what is applied. */
#ifndef KB_OPTIONS_H
#define KB_OPTIONS_H

#include <stddef.h>
#include <stdio.h>

#include "addr.h"

enum opt_type {          /* and the C type stored at the option's offset: */
  OPT_FLAG,              /* int, set to 1; takes no value */
  OPT_STRING,            /* const char * (points into argv or the default) */
  OPT_PATH,              /* const char *, any non-empty path */
  OPT_DIR,               /* const char *, must be an existing directory */
  OPT_HOST,              /* const char *, a host name or IP literal, no port */
  OPT_PORT,              /* int, 1-65535 */
  OPT_HOSTPORT,          /* struct hostport, port 1-65535 */
  OPT_KEY,               /* char[OPT_KEY_SIZE], a route key (DNS label) */
  OPT_INT,               /* int within [min, max] */
  OPT_LOGLEVEL,          /* enum log_level */
  OPT_FORWARD,           /* struct opt_forwards; repeatable: each use appends */
};

#define OPT_KEY_SIZE 64
#define OPT_FORWARDS_MAX 32

/* --forward LADDR:LPORT=HOST:PORT: listen locally, reach HOST:PORT in the cluster. */
struct opt_forward {
  struct hostport listen; /* port 0 = any free port */
  struct hostport target;
};
struct opt_forwards {
  struct opt_forward v[OPT_FORWARDS_MAX];
  size_t n;
};

struct opt_def {
  const char *name;    /* long flag without "--", or the positional's name ("DIR") */
  enum opt_type type;
  size_t offset;       /* offsetof(config struct, field) */
  int positional;      /* 1: a bare argument, in table order, always required */
  int required;        /* a flag that must be given */
  const char *def;     /* default as text; NULL: none (field keeps its zero value) */
  const char *metavar; /* "HOST:PORT" in the help; NULL: from the type */
  int min, max;        /* OPT_INT range */
  const char *help;
};

struct opt_cmd {
  const char *name;     /* "proxy", "certs init" */
  const char *summary;  /* one line for `kbridge help` */
  const char *details;  /* paragraph(s) for `kbridge NAME --help`; may be NULL */
  const struct opt_def *opts;
  size_t nopts;
};

/* Parse argv[0..argc) (the words after the subcommand name) into cfg, which must
 * be zeroed by the caller. Defaults are applied first, then the arguments.
 * Returns 0 on success, 1 if --help/-h was given (nothing else is checked), or
 * -1 with a one-line reason in err that names the flag. */
int opt_parse(const struct opt_cmd *cmd, int argc, char **argv, void *cfg, char *err,
              size_t errlen);

/* The usage line, details and the option list, generated from the table. */
void opt_help(const struct opt_cmd *cmd, FILE *out);

#endif
