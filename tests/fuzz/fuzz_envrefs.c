/* fuzz_envrefs.c: --env values (local-proxy/envrefs.c) on arbitrary bytes: a
 * value from kbridge.yaml or the command line must give an error, never a
 * crash. Checked on the way: syntax-only and resolving walks agree on
 * success unless the resolver refused; a value without '$' expands to itself;
 * every '$' of a value that expanded was either "$$" or a reference. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envrefs.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int refused;

/* Fixed values; a Service named "no" is refused, as an unknown one would be. */
static int resolve(void *arg, const struct envref *r, char *out, size_t len, char *why,
                   size_t whylen) {
  (void)arg;
  if (strcmp(r->name, "no") == 0) {
    refused = 1;
    snprintf(why, whylen, "no such thing");
    return -1;
  }
  if (r->textlen < 4 || r->text[0] != '$' || r->text[1] != '(' || r->text[r->textlen - 1] != ')')
    abort();
  snprintf(out, len, "<%d:%s:%s>", (int)r->kind, r->name, r->port);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *v = malloc(size + 1);
  if (!v) return 0;
  memcpy(v, data, size);
  v[size] = '\0';
  char err[1200], *out = NULL;
  int syntax = envref_expand(v, NULL, NULL, NULL, err, sizeof err);
  refused = 0;
  int full = envref_expand(v, resolve, NULL, &out, err, sizeof err);
  if (full == 0 && syntax != 0) abort();
  if (syntax == 0 && full != 0 && !refused) abort();
  if (full == 0 && !strchr(v, '$') && strcmp(out, v) != 0) abort();
  free(out);
  struct envref_overrides o;
  memset(&o, 0, sizeof o);
  if (envref_add(&o, v, err, sizeof err) == 0 && (o.n != 1 || v[o.v[0].namelen] != '=')) abort();
  envref_uses(&o, ENVREF_SERVICES);
  free(v);
  return 0;
}
