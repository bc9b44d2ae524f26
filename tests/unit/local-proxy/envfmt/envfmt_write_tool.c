/* envfmt_write_tool.c: `envfmt_write_tool FORMAT < RECORDS`: envfmt_write()
 * of the variables in RECORDS (NAME \0 VALUE \0 SECRET(0|1) \0, repeated) to
 * stdout; each variable left out or noted goes to stderr as
 * "left-out NAME" / "note NAME", one per line. Exit 0, or 2 for a bad format
 * or input. For tests/integration/test_envfmt.py. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envfmt.h"

static void note(void *arg, const char *name, const char *msg, int left_out) {
  (void)arg;
  fprintf(stderr, "%s %s\t%s\n", left_out ? "left-out" : "note", name, msg);
}

int main(int argc, char **argv) {
  enum envfmt_format f;
  if (argc != 2 || envfmt_parse(argv[1], &f) < 0) {
    fprintf(stderr, "usage: envfmt_write_tool " ENVFMT_CHOICES " < records\n");
    return 2;
  }
  size_t cap = 1 << 16, len = 0;
  char *buf = malloc(cap);
  for (size_t r; buf && (r = fread(buf + len, 1, cap - len, stdin)) > 0;) {
    len += r;
    if (len == cap) buf = realloc(buf, cap *= 2);
  }
  if (!buf) return 2;
  size_t n = 0, nv = 0;
  struct envfmt_var *v = NULL;
  for (size_t i = 0; i < len; n++) {
    const char *field = buf + i;
    size_t fl = strnlen(field, len - i);
    if (i + fl >= len) {
      fprintf(stderr, "envfmt_write_tool: a record field lacks its NUL\n");
      return 2;
    }
    i += fl + 1;
    if (n % 3 == 0) {
      v = realloc(v, (nv + 1) * sizeof *v);
      v[nv].name = field;
    } else if (n % 3 == 1) {
      v[nv].value = field;
    } else {
      v[nv++].secret = strcmp(field, "1") == 0;
    }
  }
  if (n % 3) {
    fprintf(stderr, "envfmt_write_tool: incomplete record\n");
    return 2;
  }
  int rc = envfmt_write(f, stdout, v, nv, note, NULL);
  free(v);
  free(buf);
  return rc < 0 ? 1 : 0;
}
