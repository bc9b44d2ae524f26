/* optparse.h: declarative option tables and their one parser, for the kbridge
 * CLI's subcommands and for kbridge-agent.
 *
 * Each command declares its flags in one table (name, type, where the value
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
 * is the command's whole --help. A syntax of one program's own (the agent's
 * --port-map) is an OPT_CUSTOM option whose callback lives with that program's
 * table. Options from a YAML file: optfile.h. */
#ifndef KB_OPTPARSE_H
#define KB_OPTPARSE_H

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
  OPT_LONG,              /* long within [lmin, lmax] */
  OPT_ADDR,              /* struct hostport, port 0-65535 (0: any free port), to listen on */
  OPT_BUF,               /* char[size], a non-empty string copied in */
  OPT_LABEL,             /* char[size], a DNS label: a Kubernetes object name */
  OPT_CUSTOM,            /* whatever parse() stores; repeatable if repeat */
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

struct opt_def;

/* An OPT_CUSTOM option's parser: check v and store it in cfg (the whole config
 * struct; o->offset and o->size are there for it to use). Returns 0, or -1 with
 * why set to the error after "--name: ", in the parser's style:
 * `expected A=B, got "v" (missing '=')`. Also called for the default. */
typedef int (*opt_custom_fn)(const struct opt_def *o, const char *v, void *cfg, char *why,
                             size_t whylen);

/* For opt_def.given: where the int that says "given" lives (0 means none, so
 * the offset is stored plus one). */
#define OPT_GIVEN(type, field) (offsetof(type, field) + 1)

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
  /* Fields below are zero in tables that do not need them. */
  long lmin, lmax;     /* OPT_LONG range */
  size_t size;         /* OPT_BUF, OPT_LABEL: sizeof the char array at offset */
  size_t given;        /* OPT_GIVEN(): an int set to 1 when the option is given (not
                          when its default is applied); 0: none */
  opt_custom_fn parse; /* OPT_CUSTOM */
  int repeat;          /* OPT_CUSTOM: may be given more than once, each use passed
                          to parse() */
};

struct opt_cmd {
  const char *name;     /* "proxy", "certs init" */
  const char *summary;  /* one line for `kbridge help` */
  const char *details;  /* paragraph(s) for `kbridge NAME --help`; may be NULL */
  const struct opt_def *opts;
  size_t nopts;
  /* Fields below are zero in the CLI's subcommand tables. */
  const char *prog;     /* the program when not "kbridge" ("kbridge-agent"); name is
                           then "" for a program without subcommands */
  /* Checks between options, run once every value is in and before a missing
   * required option is reported (so a command line that lacks a whole mode gets
   * that said first). 0, or -1 with a one-line err naming the options. */
  int (*check)(void *cfg, char *err, size_t errlen);
};

/* Parse argv[0..argc) (the words after the subcommand name, or after the
 * program's name) into cfg, which must be zeroed by the caller. Defaults are
 * applied first, then the arguments, then cmd->check, then required options.
 * Returns 0 on success, 1 if --help/-h was given (nothing else is checked), or
 * -1 with a one-line reason in err that names the flag. */
int opt_parse(const struct opt_cmd *cmd, int argc, char **argv, void *cfg, char *err,
              size_t errlen);

/* Options from a file (optfile.h): an argument vector for opt_parse_with(). */
struct opt_file {
  char **argv;
  int *line;       /* the file's line of each argv[i] (for errors) */
  int argc;
  const char *path;
};

/* opt_parse() with the options of a file (may be NULL) applied before argv, and
 * overridden by argv. Errors about a file value name the file. */
int opt_parse_with(const struct opt_cmd *cmd, const struct opt_file *file, int argc, char **argv,
                   void *cfg, char *err, size_t errlen);

/* The usage line, details and the option list, generated from the table. */
void opt_help(const struct opt_cmd *cmd, FILE *out);

/* For optfile.c: the flag (not positional) named name[0..len), or NULL; the
 * value's placeholder in help and errors ("HOST:PORT"); whether the option may
 * be given more than once. */
const struct opt_def *opt_find(const struct opt_cmd *cmd, const char *name, size_t len);
const char *opt_metavar(const struct opt_def *o);
int opt_repeatable(const struct opt_def *o);

#endif
