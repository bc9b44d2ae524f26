/* envrefs.h: environment overrides for `kbridge connect` (--env NAME=VALUE and
 * kbridge.yaml's env: mapping) and the references their values may hold.
 *
 * A value is literal text with references in it:
 *   $(services:NAME)        host:port of Service NAME's local listener (its first port)
 *   $(services:NAME:PORT)   the same for the Service port PORT (a number or a port name)
 *   $(forward:HOST:PORT)    the local address of the --forward whose target is HOST:PORT
 *   $(volumes:NAME)         the local directory where volume NAME is materialised
 *   $(env:NAME)             variable NAME of the environment as built so far
 *   $$                      a literal '$'
 * Any other '$' is an error, so a value written for a shell ("${HOME}") is
 * refused instead of passed on unexpanded. This module parses and expands; what
 * a reference stands for is asked of a callback (connect_env.c), so the same
 * walk checks the syntax when the options are read, checks the names against
 * the cluster before anything is changed, and expands once the listeners
 * exist. Pure: libc and addr.c only. */
#ifndef KB_ENVREFS_H
#define KB_ENVREFS_H

#include <stddef.h>

enum envref_kind {
  ENVREF_SERVICES, /* name: the Service; port: "" (its first port), a number or a name */
  ENVREF_FORWARD,  /* name: HOST (no brackets); portnum: PORT */
  ENVREF_VOLUMES,  /* name: the volume */
  ENVREF_ENV,      /* name: the variable */
};

struct envref {
  enum envref_kind kind;
  char name[256];
  char port[64];   /* services: as written ("" when none); forward: the number as text */
  int portnum;     /* the port when it is a number, else 0 */
  const char *text; /* the reference as written, "$(...)" (points into the value) */
  size_t textlen;
};

/* What ref stands for, into out[0..len). 0, or -1 with why (a sentence that
 * names the missing thing and what exists). */
typedef int (*envref_fn)(void *arg, const struct envref *ref, char *out, size_t len, char *why,
                         size_t whylen);

/* Walk value: each reference is parsed and given to fn (NULL: syntax only).
 * With out not NULL, *out gets the expanded value (malloc'd). Returns 0, or -1
 * with err: "$(servics:x): unknown reference kind \"servics\" (expected services,
 * forward, volumes or env)", or fn's why after the reference. */
int envref_expand(const char *value, envref_fn fn, void *arg, char **out, char *err,
                  size_t errlen);

/* The overrides, in the order given; a name given again replaces the earlier
 * value in place (the command line's --env comes after kbridge.yaml's). */
#define ENVREF_MAX 128
struct envref_overrides {
  struct {
    const char *entry; /* "NAME=VALUE", not copied (argv or the options file) */
    size_t namelen;
  } v[ENVREF_MAX];
  size_t n;
};

/* Add entry "NAME=VALUE" after checking it: NAME non-empty printable ASCII
 * without '=', VALUE's references well formed. 0, or -1 with why. */
int envref_add(struct envref_overrides *o, const char *entry, char *why, size_t whylen);

/* Does any override refer to kind? 1 or 0. */
int envref_uses(const struct envref_overrides *o, enum envref_kind kind);

#endif
