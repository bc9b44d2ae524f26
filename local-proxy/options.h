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
 * what is applied. Tables look alike (the duplicates tool pairs them by shape)
 * and flags such as --local-port are written in each command's table: a table
 * is the command's whole --help. */
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
  OPT_LIST,              /* struct opt_list of non-empty strings; repeatable: each
                            use appends (checked by the command, which knows the
                            syntax: KEY=VALUE, names, ...) */
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

#define OPT_LIST_MAX 32
struct opt_list {
  const char *v[OPT_LIST_MAX];
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

/* Options from a file: the YAML mapping at path, whose keys are the command's
 * flag names without "--" and whose values are what the flag takes: a scalar; for
 * a flag without value, true or false; for a repeatable flag a sequence, or a
 * mapping {K: V} standing for the values "K=V". A flag given on the command line
 * replaces the file's value (a repeatable flag: the whole list). Result: an
 * argument vector (--name value ...) for opt_parse_with(), owned by *out, freed
 * with opt_file_free(). Returns 0, or -1 with a one-line err naming the file, the
 * line and the key (an unknown key, a value of the wrong shape, a YAML error). */
struct opt_file {
  char **argv;
  int *line;       /* the file's line of each argv[i] (for errors) */
  int argc;
  const char *path;
};
int opt_file_load(const struct opt_cmd *cmd, const char *path, struct opt_file *out, char *err,
                  size_t errlen);
void opt_file_free(struct opt_file *f);

/* opt_parse() with the options of a file (may be NULL) applied before argv, and
 * overridden by argv. Errors about a file value name the file. */
int opt_parse_with(const struct opt_cmd *cmd, const struct opt_file *file, int argc, char **argv,
                   void *cfg, char *err, size_t errlen);

/* The usage line, details and the option list, generated from the table. */
void opt_help(const struct opt_cmd *cmd, FILE *out);

#endif
