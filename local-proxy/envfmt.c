/* envfmt.c: the environment writers (see envfmt.h for each format and what
 * reads it). The quoting rules follow the readers' parsers: python-dotenv's
 * parser.py and npm dotenv's lib/main.js (dotenv), POSIX sh's single quotes
 * (sh), YAML 1.1/1.2 double-quoted scalars and compose's $$ (compose), docker
 * CLI's opts/file.go (docker). */
#include "envfmt.h"

#include <errno.h>
#include <string.h>

static const char *const names[] = {"dotenv", "json", "sh", "compose", "docker"};

int envfmt_parse(const char *word, enum envfmt_format *out) {
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    if (strcmp(word, names[i]) == 0) {
      *out = (enum envfmt_format)i;
      return 0;
    }
  }
  return -1;
}

const char *envfmt_name(enum envfmt_format f) {
  return (size_t)f < sizeof names / sizeof names[0] ? names[f] : "?";
}

/* ---- UTF-8 ---- */

/* The code point at s (one well-formed UTF-8 sequence: no overlong form, no
 * surrogate, at most U+10FFFF) into *cp; its length, or 0 if s does not start
 * with one. */
static size_t utf8_next(const unsigned char *s, unsigned *cp) {
  unsigned c = s[0];
  size_t n;
  unsigned min;
  if (c < 0x80) {
    *cp = c;
    return 1;
  } else if ((c & 0xE0) == 0xC0) {
    n = 2, min = 0x80, c &= 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    n = 3, min = 0x800, c &= 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    n = 4, min = 0x10000, c &= 0x07;
  } else {
    return 0;
  }
  for (size_t i = 1; i < n; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0; /* also stops at the terminating NUL */
    c = (c << 6) | (s[i] & 0x3F);
  }
  if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
  *cp = c;
  return n;
}

static int utf8_valid(const char *s) {
  unsigned cp;
  for (const unsigned char *p = (const unsigned char *)s; *p;) {
    size_t n = utf8_next(p, &cp);
    if (!n) return 0;
    p += n;
  }
  return 1;
}

/* ---- names ---- */

static int is_alpha(int c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
static int is_digit(int c) { return c >= '0' && c <= '9'; }

static int sh_name(const char *n) {
  if (!is_alpha(*n) && *n != '_') return 0;
  for (; *n; n++)
    if (!is_alpha(*n) && !is_digit(*n) && *n != '_') return 0;
  return 1;
}

/* npm dotenv's [\w.-]+ (python-dotenv takes more: [^=#\s]+). */
static int dotenv_name(const char *n) {
  if (!*n) return 0;
  for (; *n; n++)
    if (!is_alpha(*n) && !is_digit(*n) && *n != '_' && *n != '.' && *n != '-') return 0;
  return 1;
}

/* docker: the text before the first '=', no blanks, and a line starting with
 * '#' is a comment; kept to printable ASCII. */
static int docker_name(const char *n) {
  if (!*n || *n == '#') return 0;
  for (; *n; n++)
    if (*n <= ' ' || *n >= 0x7F || *n == '=') return 0;
  return 1;
}

/* json, compose: any UTF-8 text without controls or '=' (compose: no '$',
 * whose meaning in a key is not documented). */
static int text_name(const char *n, int dollar_ok) {
  if (!*n || !utf8_valid(n)) return 0;
  for (; *n; n++)
    if ((unsigned char)*n < 0x20 || *n == 0x7F || *n == '=' || (*n == '$' && !dollar_ok)) return 0;
  return 1;
}

/* ---- dotenv ---- */

enum dotenv_form { DOTENV_NONE, DOTENV_SINGLE, DOTENV_DOUBLE, DOTENV_BARE };

/* Single quotes: nothing unescaped by npm, python-dotenv unescapes \\ and \'.
 * So: no ', no \\, no final \ (it would escape the closing quote), and no
 * carriage return (both readers turn it into a line feed). */
static int dotenv_single_ok(const char *v) {
  size_t l = strlen(v);
  return !strchr(v, '\'') && !strchr(v, '\r') && !strstr(v, "\\\\") && !(l && v[l - 1] == '\\');
}

/* Double quotes: npm unescapes only \n and \r, python-dotenv also \\ \' \" \a
 * \b \f \t \v; a backslash before any other character stays in both. So: no ",
 * and a backslash only before a character neither unescapes (not last, not
 * before a line break, which is written \n or \r). */
static int dotenv_double_ok(const char *v) {
  if (strchr(v, '"')) return 0;
  for (const char *p = strchr(v, '\\'); p; p = strchr(p + 1, '\\'))
    if (p[1] == '\0' || strchr("\\'\"abfnrtv\n\r", p[1])) return 0;
  return 1;
}

/* Unquoted: both readers trim blanks around it, cut it at a line break and
 * at '#' (npm: any, python-dotenv: after a blank), and a leading quote starts
 * a quoted value. */
static int dotenv_bare_ok(const char *v) {
  size_t l = strlen(v);
  if (l == 0) return 0;
  unsigned char a = (unsigned char)v[0], z = (unsigned char)v[l - 1];
  if (a <= ' ' || a >= 0x7F || z <= ' ' || z >= 0x7F) return 0; /* no trimmable end */
  if (a == '\'' || a == '"' || a == '`') return 0;
  return !strpbrk(v, "#\r\n");
}

static enum dotenv_form dotenv_form(const char *v) {
  if (strpbrk(v, "\r\n")) {
    if (dotenv_double_ok(v)) return DOTENV_DOUBLE;
    if (dotenv_single_ok(v)) return DOTENV_SINGLE;
    return DOTENV_NONE;
  }
  if (dotenv_single_ok(v)) return DOTENV_SINGLE;
  if (dotenv_double_ok(v)) return DOTENV_DOUBLE;
  if (dotenv_bare_ok(v)) return DOTENV_BARE;
  return DOTENV_NONE;
}

/* python-dotenv's interpolation: ${NAME} or ${NAME:-default}. */
static int dotenv_interpolated(const char *v) {
  const char *p = strstr(v, "${");
  return p && strchr(p + 2, '}');
}

static void dotenv_value(FILE *out, const char *v) {
  switch (dotenv_form(v)) {
  case DOTENV_SINGLE:
    fprintf(out, "'%s'", v);
    break;
  case DOTENV_DOUBLE:
    fputc('"', out);
    for (; *v; v++) {
      if (*v == '\n') fputs("\\n", out);
      else if (*v == '\r') fputs("\\r", out);
      else fputc(*v, out);
    }
    fputc('"', out);
    break;
  default:
    fputs(v, out);
    break;
  }
}

/* ---- sh ---- */

static void sh_value(FILE *out, const char *v) {
  fputc('\'', out);
  for (; *v; v++) {
    if (*v == '\'') fputs("'\\''", out);
    else fputc(*v, out);
  }
  fputc('\'', out);
}

/* ---- json ---- */

static void json_string(FILE *out, const char *s) {
  fputc('"', out);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    switch (*p) {
    case '"': fputs("\\\"", out); break;
    case '\\': fputs("\\\\", out); break;
    case '\n': fputs("\\n", out); break;
    case '\r': fputs("\\r", out); break;
    case '\t': fputs("\\t", out); break;
    case '\b': fputs("\\b", out); break;
    case '\f': fputs("\\f", out); break;
    default:
      if (*p < 0x20) fprintf(out, "\\u%04x", *p);
      else fputc(*p, out); /* UTF-8 as it is (checked before) */
    }
  }
  fputc('"', out);
}

/* ---- compose (YAML double-quoted) ---- */

static void yaml_string(FILE *out, const char *s, int double_dollar) {
  fputc('"', out);
  for (const unsigned char *p = (const unsigned char *)s; *p;) {
    unsigned cp;
    size_t n = utf8_next(p, &cp);
    if (n == 0) { /* not reached: checked before */
      p++;
      continue;
    }
    switch (cp) {
    case '"': fputs("\\\"", out); break;
    case '\\': fputs("\\\\", out); break;
    case '\n': fputs("\\n", out); break;
    case '\r': fputs("\\r", out); break;
    case '\t': fputs("\\t", out); break;
    case '$': fputs(double_dollar ? "$$" : "$", out); break;
    default:
      /* Controls, DEL and the C1 block are not printable in YAML; U+0085,
       * U+2028 and U+2029 are line breaks in YAML 1.1; U+FEFF is a byte order
       * mark; U+FFFE and U+FFFF are not printable. */
      if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F)) fprintf(out, "\\x%02X", cp);
      else if (cp == 0x2028 || cp == 0x2029 || cp == 0xFEFF || cp == 0xFFFE || cp == 0xFFFF)
        fprintf(out, "\\u%04X", cp);
      else fwrite(p, 1, n, out);
    }
    p += n;
  }
  fputc('"', out);
}

/* ---- docker ---- */

/* docker CLI reads the file with bufio.Scanner: a line of 64 KiB (its buffer,
 * with the line feed) or more fails the whole file. */
#define DOCKER_MAX_LINE (64 * 1024 - 1)

/* ---- all formats ---- */

const char *envfmt_refusal(enum envfmt_format f, const char *name, const char *value) {
  switch (f) {
  case ENVFMT_SH:
    if (!sh_name(name))
      return "not a shell variable name (letters, digits and _, not starting with a digit)";
    return NULL;
  case ENVFMT_DOTENV:
    if (!dotenv_name(name)) return "not a dotenv name (letters, digits, _ . and -)";
    if (!utf8_valid(value)) return "the value is not UTF-8 text (use --env-format sh)";
    if (dotenv_form(value) == DOTENV_NONE)
      return "no dotenv quoting reads this value back the same in python-dotenv and npm "
             "dotenv (it has ' and \" or \\ together with a line break or '#'); use "
             "--env-format json or sh";
    return NULL;
  case ENVFMT_JSON:
    if (!text_name(name, 1)) return "not a name JSON readers can take (UTF-8, no controls or =)";
    if (!utf8_valid(value)) return "the value is not UTF-8 text (use --env-format sh)";
    return NULL;
  case ENVFMT_COMPOSE:
    if (!text_name(name, 0)) return "not a compose variable name (UTF-8, no controls, = or $)";
    if (!utf8_valid(value)) return "the value is not UTF-8 text (use --env-format sh)";
    return NULL;
  case ENVFMT_DOCKER: {
    if (!docker_name(name))
      return "not a docker env-file name (printable ASCII without blanks or =, not starting "
             "with #)";
    size_t l = strlen(value);
    if (strchr(value, '\n'))
      return "the value has a line feed, which docker's env-file cannot carry (use "
             "--env-format json, sh or compose)";
    if (l && value[l - 1] == '\r')
      return "the value ends with a carriage return, which docker drops (use --env-format "
             "json, sh or compose)";
    if (!utf8_valid(value)) return "the value is not UTF-8 text, which docker refuses";
    if (strlen(name) + 1 + l >= DOCKER_MAX_LINE)
      return "the line would reach 64 KiB, docker's limit for an env-file line";
    return NULL;
  }
  }
  return "unknown format";
}

int envfmt_write(enum envfmt_format f, FILE *out, const struct envfmt_var *vars, size_t n,
                 envfmt_note_fn note, void *arg) {
  int left = 0, first = 1;
  if (f == ENVFMT_JSON) fputs("{\n  \"env\": {", out);
  if (f == ENVFMT_COMPOSE) fputs("environment:", out);
  for (size_t i = 0; i < n; i++) {
    const struct envfmt_var *v = &vars[i];
    const char *why = envfmt_refusal(f, v->name, v->value);
    if (why) {
      left++;
      if (note) note(arg, v->name, why, 1);
      continue;
    }
    switch (f) {
    case ENVFMT_DOTENV:
      if (dotenv_interpolated(v->value) && note)
        note(arg, v->name,
             "the value has ${...}, which python-dotenv replaces unless read with "
             "interpolate=False (npm dotenv keeps it)",
             0);
      fprintf(out, "%s=", v->name);
      dotenv_value(out, v->value);
      fputc('\n', out);
      break;
    case ENVFMT_SH:
      fprintf(out, "export %s=", v->name);
      sh_value(out, v->value);
      fputc('\n', out);
      break;
    case ENVFMT_JSON:
      fputs(first ? "\n    " : ",\n    ", out);
      json_string(out, v->name);
      fputs(": ", out);
      json_string(out, v->value);
      break;
    case ENVFMT_COMPOSE:
      fputs("\n  ", out);
      yaml_string(out, v->name, 0);
      fputs(": ", out);
      yaml_string(out, v->value, 1);
      break;
    case ENVFMT_DOCKER:
      fprintf(out, "%s=%s\n", v->name, v->value);
      break;
    }
    first = 0;
  }
  if (f == ENVFMT_JSON) {
    fputs(first ? "},\n  \"secrets\": [" : "\n  },\n  \"secrets\": [", out);
    int k = 0;
    for (size_t i = 0; i < n; i++) {
      if (!vars[i].secret || envfmt_refusal(f, vars[i].name, vars[i].value)) continue;
      fputs(k++ ? ", " : "", out);
      json_string(out, vars[i].name);
    }
    fputs("]\n}\n", out);
  }
  if (f == ENVFMT_COMPOSE) fputs(first ? " {}\n" : "\n", out);
  if (fflush(out) != 0 || ferror(out)) {
    if (!errno) errno = EIO;
    return -1;
  }
  return left;
}
