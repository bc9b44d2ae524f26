/* envfmt.h: a container's environment written in the formats other tools read
 * (`kbridge connect --env-file`, `kbridge env`). Each writer quotes values so
 * that the consumer named below reads back exactly the bytes it was given:
 *
 *   dotenv   NAME='value' lines, for python-dotenv and npm's dotenv (what
 *            `dotenv run`, `load_dotenv()` and `require('dotenv').config()` read).
 *            Each value takes the first form both parsers read back the same:
 *            single quotes (nothing unescaped; not for a ', a carriage return,
 *            \\ or a final \), double quotes with \n and \r for line breaks
 *            (the only escapes both know; not for a " or a backslash that
 *            python-dotenv would unescape), unquoted (no blank at either end,
 *            no '#', no line break); a value with a line break tries double
 *            quotes first. A value no form can carry (e.g. ' and " together
 *            with a '#' or a line break) is left out. python-dotenv's default
 *            interpolation replaces ${NAME} in any form: such values are
 *            written with a note.
 *   json     {"env": {NAME: value, ...}, "secrets": [NAME, ...]}: the names
 *            whose value came from a Secret (secretKeyRef or envFrom secretRef).
 *   sh       export NAME='value' lines for `. FILE` in any POSIX shell (a ' in
 *            the value is written '\''); values are bytes, never interpreted.
 *   compose  an `environment:` mapping for a service of a compose file: names
 *            and values as YAML double-quoted scalars (escapes for controls and
 *            YAML's line breaks), every $ doubled as compose's interpolation
 *            wants.
 *   docker   NAME=value lines as `docker run --env-file` reads them: no quoting
 *            at all, so a value with a line feed, one ending in a carriage
 *            return (Go's line scanner drops it) or a line of 64 KiB or more is
 *            left out.
 *
 * Names the format cannot carry (sh: letters, digits, _ not starting with a
 * digit; dotenv: letters, digits, _ . -; docker: printable ASCII without
 * '=' not starting with '#') are left out too, and every format except sh
 * leaves out a value that is not UTF-8. Whatever is left out is reported
 * through the note callback, by name, with the reason; the rest is written.
 * Pure: no I/O beyond the FILE given, no allocation. */
#ifndef KB_ENVFMT_H
#define KB_ENVFMT_H

#include <stddef.h>
#include <stdio.h>

enum envfmt_format { ENVFMT_DOTENV, ENVFMT_JSON, ENVFMT_SH, ENVFMT_COMPOSE, ENVFMT_DOCKER };

/* For help texts and error messages. */
#define ENVFMT_CHOICES "dotenv|json|sh|compose|docker"

/* "dotenv" ... "docker" into *out: 0, or -1 for any other word. */
int envfmt_parse(const char *word, enum envfmt_format *out);
const char *envfmt_name(enum envfmt_format f);

struct envfmt_var {
  const char *name;
  const char *value;
  int secret; /* the value came from a Secret (json marks it) */
};

/* Called for a variable left out (left_out 1) or written with a caveat
 * (left_out 0); msg says why, without the name. */
typedef void (*envfmt_note_fn)(void *arg, const char *name, const char *msg, int left_out);

/* Why the variable cannot be written in format f, or NULL if it can. */
const char *envfmt_refusal(enum envfmt_format f, const char *name, const char *value);

/* Write vars[0..n) in format f to out, in that order. note (may be NULL) hears
 * of each variable left out or written with a caveat. Returns how many were
 * left out, or -1 when writing to out failed (errno set). */
int envfmt_write(enum envfmt_format f, FILE *out, const struct envfmt_var *vars, size_t n,
                 envfmt_note_fn note, void *arg);

#endif
