/* optparse.c: one parser and one help generator for every command's option
 * table (see optparse.h). */
#include "optparse.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "dnslabel.h"
#include "log.h"

const char *opt_metavar(const struct opt_def *o) {
  if (o->metavar) return o->metavar;
  switch (o->type) {
  case OPT_FLAG: return "";
  case OPT_STRING: return "TEXT";
  case OPT_PATH: return "PATH";
  case OPT_DIR: return "DIR";
  case OPT_HOST: return "HOST";
  case OPT_PORT: return "PORT";
  case OPT_HOSTPORT: return "HOST:PORT";
  case OPT_KEY: return "KEY";
  case OPT_INT: return "N";
  case OPT_LOGLEVEL: return "LEVEL";
  case OPT_FORWARD: return "LADDR:LPORT=HOST:PORT";
  case OPT_LIST: return "VALUE";
  case OPT_LONG: return "N";
  case OPT_ADDR: return "ADDR:PORT";
  case OPT_BUF: return "TEXT";
  case OPT_LABEL: return "NAME";
  case OPT_CUSTOM: return "VALUE";
  }
  return "VALUE";
}

/* "--name" for flags, "NAME" for positionals: how errors refer to an option. */
static const char *label(const struct opt_def *o, char *buf, size_t len) {
  snprintf(buf, len, o->positional ? "%s" : "--%s", o->name);
  return buf;
}

/* How the command is typed: "kbridge proxy", "kbridge-agent". */
static const char *invocation(const struct opt_cmd *cmd, char *buf, size_t len) {
  const char *prog = cmd->prog ? cmd->prog : "kbridge";
  snprintf(buf, len, "%s%s%s", prog, cmd->name[0] ? " " : "", cmd->name);
  return buf;
}

/* addr_parse() errors start with "'INPUT': "; we quote the input ourselves. */
static const char *addr_reason(const char *s, const char *aerr) {
  size_t n = strlen(s);
  if (aerr[0] == '\'' && strncmp(aerr + 1, s, n) == 0 && strncmp(aerr + 1 + n, "': ", 3) == 0)
    return aerr + n + 4;
  return aerr;
}

/* Check value v by o's type and store it in cfg. 0, or -1 with err. */
static int set_value(const struct opt_def *o, const char *v, void *cfg, char *err,
                     size_t errlen) {
  char *field = (char *)cfg + o->offset;
  char lb[80], aerr[300];
  label(o, lb, sizeof lb);
  switch (o->type) {
  case OPT_FLAG:
    *(int *)(void *)field = 1;
    return 0;
  case OPT_STRING:
  case OPT_PATH:
    if (*v == '\0') {
      snprintf(err, errlen, "%s: expected a %s, got \"\"", lb,
               o->type == OPT_PATH ? "path" : "non-empty value");
      return -1;
    }
    *(const char **)(void *)field = v;
    return 0;
  case OPT_DIR: {
    struct stat st;
    const char *why = NULL;
    if (*v == '\0')
      why = "empty";
    else if (stat(v, &st) < 0)
      why = strerror(errno);
    else if (!S_ISDIR(st.st_mode))
      why = "not a directory";
    if (why) {
      snprintf(err, errlen, "%s: expected a directory, got \"%s\" (%s)", lb, v, why);
      return -1;
    }
    *(const char **)(void *)field = v;
    return 0;
  }
  case OPT_HOST: {
    size_t n = strlen(v);
    if (n == 0 || n > 255 || strpbrk(v, " \t\r\n/[]") != NULL) {
      snprintf(err, errlen, "%s: expected a host name or IP address, got \"%s\"", lb, v);
      return -1;
    }
    *(const char **)(void *)field = v;
    return 0;
  }
  case OPT_PORT:
  case OPT_INT:
  case OPT_LONG: {
    long min = o->type == OPT_PORT ? 1 : o->type == OPT_INT ? o->min : o->lmin;
    long max = o->type == OPT_PORT ? 65535 : o->type == OPT_INT ? o->max : o->lmax;
    char *end;
    errno = 0;
    long n = (*v >= '0' && *v <= '9') ? strtol(v, &end, 10) : -1;
    if (n < 0 || errno != 0 || *end != '\0' || n < min || n > max) {
      snprintf(err, errlen, "%s: expected %s %ld-%ld, got \"%s\"", lb,
               o->type == OPT_PORT ? "a port" : "a number", min, max, v);
      return -1;
    }
    if (o->type == OPT_LONG) *(long *)(void *)field = n;
    else *(int *)(void *)field = (int)n;
    return 0;
  }
  case OPT_HOSTPORT:
  case OPT_ADDR:
    if (addr_parse(v, o->type == OPT_ADDR, (struct hostport *)(void *)field, aerr, sizeof aerr) <
        0) {
      snprintf(err, errlen, "%s: expected %s, got \"%s\" (%s)", lb,
               o->type == OPT_ADDR ? "ADDR:PORT" : "HOST:PORT", v, addr_reason(v, aerr));
      return -1;
    }
    return 0;
  case OPT_BUF:
    if (*v == '\0' || strlen(v) >= o->size) {
      if (*v == '\0')
        snprintf(err, errlen, "%s: expected a non-empty value, got \"\"", lb);
      else
        snprintf(err, errlen, "%s: expected at most %zu characters, got %zu", lb, o->size - 1,
                 strlen(v));
      return -1;
    }
    memcpy(field, v, strlen(v) + 1);
    return 0;
  case OPT_LABEL:
    if (strlen(v) >= o->size || !dns_label_valid(v, strlen(v))) {
      snprintf(err, errlen,
               "%s: expected a Kubernetes name (1-%zu of a-z, 0-9 and '-', not starting or "
               "ending with '-'), got \"%s\"",
               lb, o->size - 1 < DNS_LABEL_MAX ? o->size - 1 : (size_t)DNS_LABEL_MAX, v);
      return -1;
    }
    memcpy(field, v, strlen(v) + 1);
    return 0;
  case OPT_CUSTOM: {
    char why[600] = "no parser for this option (a bug in the table)";
    if (o->parse == NULL || o->parse(o, v, cfg, why, sizeof why) < 0) {
      snprintf(err, errlen, "%s: %s", lb, why);
      return -1;
    }
    return 0;
  }
  case OPT_KEY:
    if (strlen(v) >= OPT_KEY_SIZE || !dns_label_valid(v, strlen(v))) {
      snprintf(err, errlen,
               "%s: expected a route key (1-63 of a-z, 0-9 and '-', not starting or ending "
               "with '-'), got \"%s\"",
               lb, v);
      return -1;
    }
    memcpy(field, v, strlen(v) + 1);
    return 0;
  case OPT_LOGLEVEL:
    if (log_level_parse(v, (enum log_level *)(void *)field) < 0) {
      snprintf(err, errlen, "%s: expected error, warn, info or debug, got \"%s\"", lb, v);
      return -1;
    }
    return 0;
  case OPT_FORWARD: {
    struct opt_forwards *fw = (struct opt_forwards *)(void *)field;
    const char *eq = strchr(v, '=');
    char left[300];
    if (fw->n == OPT_FORWARDS_MAX) {
      snprintf(err, errlen, "%s: at most %d forwards", lb, OPT_FORWARDS_MAX);
      return -1;
    }
    if (eq == NULL || (size_t)(eq - v) >= sizeof left) {
      snprintf(err, errlen, "%s: expected LADDR:LPORT=HOST:PORT, got \"%s\" (missing '=')", lb, v);
      return -1;
    }
    memcpy(left, v, (size_t)(eq - v));
    left[eq - v] = '\0';
    struct opt_forward *f = &fw->v[fw->n];
    if (addr_parse(left, 1, &f->listen, aerr, sizeof aerr) < 0) {
      snprintf(err, errlen, "%s: expected LADDR:LPORT=HOST:PORT, got \"%s\" (listen address %s)",
               lb, v, addr_reason(left, aerr));
      return -1;
    }
    if (addr_parse(eq + 1, 0, &f->target, aerr, sizeof aerr) < 0) {
      snprintf(err, errlen, "%s: expected LADDR:LPORT=HOST:PORT, got \"%s\" (target %s)", lb, v,
               addr_reason(eq + 1, aerr));
      return -1;
    }
    fw->n++;
    return 0;
  }
  case OPT_LIST: {
    struct opt_list *l = (struct opt_list *)(void *)field;
    if (*v == '\0') {
      snprintf(err, errlen, "%s: expected %s, got \"\"", lb, opt_metavar(o));
      return -1;
    }
    if (l->n == OPT_LIST_MAX) {
      snprintf(err, errlen, "%s: given more than %d times", lb, OPT_LIST_MAX);
      return -1;
    }
    l->v[l->n++] = v;
    return 0;
  }
  }
  snprintf(err, errlen, "%s: unknown option type", lb);
  return -1;
}

const struct opt_def *opt_find(const struct opt_cmd *cmd, const char *name, size_t len) {
  for (size_t i = 0; i < cmd->nopts; i++) {
    const struct opt_def *o = &cmd->opts[i];
    if (!o->positional && strlen(o->name) == len && strncmp(o->name, name, len) == 0) return o;
  }
  return NULL;
}

int opt_repeatable(const struct opt_def *o) {
  return o->type == OPT_FORWARD || o->type == OPT_LIST || (o->type == OPT_CUSTOM && o->repeat);
}

static void mark_given(const struct opt_def *o, void *cfg) {
  if (o->given) *(int *)(void *)((char *)cfg + o->given - 1) = 1;
}

/* One source of arguments. seen[i]: 0 not given, 1 given by the file, 2 given
 * on the command line. A command-line flag replaces the file's value; within one
 * source only repeatable flags may come twice. file: NULL for the command line;
 * then positionals are allowed. */
static int parse_source(const struct opt_cmd *cmd, const struct opt_file *file, int argc,
                        char **argv, void *cfg, unsigned char *seen, char *err, size_t errlen) {
  unsigned char src = file ? 1 : 2;
  char lb[80], where[300] = "", inv[120];
  invocation(cmd, inv, sizeof inv);
  size_t next_pos = 0; /* index among positionals */
  int only_positionals = 0;
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    if (file) snprintf(where, sizeof where, "%s:%d: ", file->path, file->line[i]);
    if (!file && !only_positionals && strcmp(a, "--") == 0) {
      only_positionals = 1;
      continue;
    }
    if (!only_positionals && a[0] == '-' && a[1] != '\0') {
      const char *name = a + (a[1] == '-' ? 2 : 1);
      const char *eq = strchr(name, '=');
      size_t len = eq ? (size_t)(eq - name) : strlen(name);
      const struct opt_def *o = a[1] == '-' ? opt_find(cmd, name, len) : NULL;
      if (o == NULL) {
        snprintf(err, errlen, "%.*s: unknown flag for `%s` (see %s --help)",
                 (int)(eq ? (size_t)(eq - a) : strlen(a)), a, inv, inv);
        return -1;
      }
      size_t idx = (size_t)(o - cmd->opts);
      label(o, lb, sizeof lb);
      if (seen[idx] == src && !opt_repeatable(o)) {
        snprintf(err, errlen, "%s%s: given more than once", where, lb);
        return -1;
      }
      if (seen[idx] == 1 && src == 2 && opt_repeatable(o) && o->type != OPT_CUSTOM) {
        /* the command line's list replaces the file's (an OPT_CUSTOM list cannot be
           emptied here: it adds to the file's) */
        char *field = (char *)cfg + o->offset;
        if (o->type == OPT_LIST) ((struct opt_list *)(void *)field)->n = 0;
        else ((struct opt_forwards *)(void *)field)->n = 0;
      }
      seen[idx] = src;
      if (o->type == OPT_FLAG) {
        if (eq) {
          snprintf(err, errlen, "%s: takes no value, got \"%s\"", lb, eq + 1);
          return -1;
        }
        set_value(o, "", cfg, err, errlen);
        mark_given(o, cfg);
        continue;
      }
      const char *v = eq ? eq + 1 : NULL;
      if (v == NULL) {
        if (i + 1 >= argc) {
          snprintf(err, errlen, "%s: expected %s, got nothing", lb, opt_metavar(o));
          return -1;
        }
        v = argv[++i];
      }
      if (set_value(o, v, cfg, err, errlen) < 0) {
        if (file) { /* name the file and line in front of set_value's error */
          char e2[700];
          snprintf(e2, sizeof e2, "%s", err);
          snprintf(err, errlen, "%s%s", where, e2);
        }
        return -1;
      }
      mark_given(o, cfg);
      continue;
    }
    /* A positional argument. */
    const struct opt_def *o = NULL;
    for (size_t k = 0, p = 0; !file && k < cmd->nopts; k++) {
      if (!cmd->opts[k].positional) continue;
      if (p++ == next_pos) {
        o = &cmd->opts[k];
        seen[k] = 1;
        break;
      }
    }
    if (o == NULL) {
      snprintf(err, errlen, "unexpected argument \"%s\" for `%s` (see %s --help)", a, inv, inv);
      return -1;
    }
    next_pos++;
    if (set_value(o, a, cfg, err, errlen) < 0) return -1;
  }
  return 0;
}

int opt_parse_with(const struct opt_cmd *cmd, const struct opt_file *file, int argc, char **argv,
                   void *cfg, char *err, size_t errlen) {
  unsigned char seen[64] = {0}; /* per table index: 0, 1 from the file, 2 from argv */
  char lb[80];
  if (cmd->nopts > sizeof seen) {
    snprintf(err, errlen, "%s: option table too large", cmd->name);
    return -1;
  }
  for (int i = 0; i < argc; i++)
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) return 1;
    else if (strcmp(argv[i], "--") == 0) break;

  for (size_t i = 0; i < cmd->nopts; i++) {
    const struct opt_def *o = &cmd->opts[i];
    if (o->def && set_value(o, o->def, cfg, err, errlen) < 0) return -1; /* a bug in the table */
  }
  if (file && parse_source(cmd, file, file->argc, file->argv, cfg, seen, err, errlen) < 0)
    return -1;
  if (parse_source(cmd, NULL, argc, argv, cfg, seen, err, errlen) < 0) return -1;
  if (cmd->check && cmd->check(cfg, err, errlen) < 0) return -1;

  for (size_t i = 0; i < cmd->nopts; i++) {
    const struct opt_def *o = &cmd->opts[i];
    if ((o->required || o->positional) && !seen[i]) {
      snprintf(err, errlen, "%s: required, expected %s (%s)", label(o, lb, sizeof lb),
               o->positional ? o->name : opt_metavar(o), o->help);
      return -1;
    }
  }
  return 0;
}

int opt_parse(const struct opt_cmd *cmd, int argc, char **argv, void *cfg, char *err,
              size_t errlen) {
  return opt_parse_with(cmd, NULL, argc, argv, cfg, err, errlen);
}

/* "  LEFT   text..." with the text wrapped at 79 columns under its own column. */
static void print_wrapped(FILE *out, const char *left, const char *text) {
  enum { COL = 28, WIDTH = 79 };
  int col;
  if (strlen(left) + 3 > COL) {
    fprintf(out, "  %s\n%*s", left, COL, "");
  } else {
    fprintf(out, "  %-*s", COL - 2, left);
  }
  col = COL;
  while (*text) {
    size_t w = strcspn(text, " ");
    if (col > COL && col + 1 + (int)w > WIDTH) {
      fprintf(out, "\n%*s", COL, "");
      col = COL;
    } else if (col > COL) {
      fputc(' ', out);
      col++;
    }
    fprintf(out, "%.*s", (int)w, text);
    col += (int)w;
    text += w;
    while (*text == ' ') text++;
  }
  fputc('\n', out);
}

void opt_help(const struct opt_cmd *cmd, FILE *out) {
  char inv[120];
  fprintf(out, "usage: %s", invocation(cmd, inv, sizeof inv));
  int optional = 0;
  for (size_t i = 0; i < cmd->nopts; i++) {
    const struct opt_def *o = &cmd->opts[i];
    if (o->positional)
      fprintf(out, " %s", o->name);
    else if (o->required)
      fprintf(out, " --%s %s", o->name, opt_metavar(o));
    else
      optional = 1;
  }
  fprintf(out, "%s\n\n%s\n", optional ? " [options]" : "", cmd->summary);
  if (cmd->details) fprintf(out, "\n%s\n", cmd->details);
  fprintf(out, "\n");
  for (size_t i = 0; i < cmd->nopts; i++) {
    const struct opt_def *o = &cmd->opts[i];
    char left[80], text[600];
    if (o->positional)
      snprintf(left, sizeof left, "%s", o->name);
    else
      snprintf(left, sizeof left, "--%s%s%s", o->name, o->type == OPT_FLAG ? "" : " ", opt_metavar(o));
    snprintf(text, sizeof text, "%s%s%s%s%s", o->help, o->required ? " (required)" : "",
             o->def ? " (default " : "", o->def ? o->def : "", o->def ? ")" : "");
    if (opt_repeatable(o)) snprintf(text + strlen(text), sizeof text - strlen(text), " (repeatable)");
    print_wrapped(out, left, text);
  }
  print_wrapped(out, "-h, --help", "show this help");
}
