/* envrefs.c: environment overrides and their references (see envrefs.h). */
#include "envrefs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "addr.h"
#include "dnslabel.h"

#define KINDS "services, forward, volumes or env"

/* A growing output string; on allocation failure ok becomes 0. */
struct sbuf {
  char *s;
  size_t len, cap;
  int ok;
};

static void sb_put(struct sbuf *b, const char *s, size_t n) {
  if (!b->ok) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + n + 1) cap *= 2;
    char *ns = realloc(b->s, cap);
    if (!ns) {
      b->ok = 0;
      return;
    }
    b->s = ns;
    b->cap = cap;
  }
  memcpy(b->s + b->len, s, n);
  b->len += n;
  b->s[b->len] = '\0';
}

/* A port written as a number 1-65535: the number, else 0. */
static int port_number(const char *s) {
  long n = 0;
  if (!*s || strlen(s) > 5) return 0;
  for (const char *p = s; *p; p++) {
    if (*p < '0' || *p > '9') return 0;
    n = n * 10 + (*p - '0');
  }
  return n >= 1 && n <= 65535 ? (int)n : 0;
}

/* A Service port's name as Kubernetes allows it: a-z, 0-9 and '-', with a
 * letter (so that it is never read as a number), at most 15. */
static int port_name(const char *s) {
  size_t n = strlen(s);
  return n <= 15 && dns_label_valid(s, n) && strpbrk(s, "abcdefghijklmnopqrstuvwxyz") != NULL;
}

/* The reference text[0..len) ("$(" ... ")") into r. 0, or -1 with why (what
 * is expected). */
static int parse_ref(const char *text, size_t len, struct envref *r, char *why, size_t whylen) {
  const char *body = text + 2;
  size_t blen = len - 3;
  const char *colon = memchr(body, ':', blen);
  memset(r, 0, sizeof *r);
  r->text = text;
  r->textlen = len;
  if (!colon) {
    snprintf(why, whylen, "expected $(KIND:NAME) with KIND one of " KINDS);
    return -1;
  }
  size_t klen = (size_t)(colon - body);
  const char *args = colon + 1;
  size_t alen = blen - klen - 1;
  char a[300];
  if (alen >= sizeof a) {
    snprintf(why, whylen, "too long (at most %zu characters after the kind)", sizeof a - 1);
    return -1;
  }
  memcpy(a, args, alen);
  a[alen] = '\0';
  if (klen == 8 && memcmp(body, "services", 8) == 0) {
    r->kind = ENVREF_SERVICES;
    char *c2 = strchr(a, ':');
    if (c2) *c2 = '\0';
    const char *port = c2 ? c2 + 1 : "";
    if (!dns_label_valid(a, strlen(a))) {
      snprintf(why, whylen, "expected $(services:NAME) or $(services:NAME:PORT) with NAME a "
               "Service name (a-z, 0-9 and '-'), got \"%s\"", a);
      return -1;
    }
    if (c2 && (strlen(port) >= sizeof r->port ||
               (!port_number(port) && !port_name(port)))) {
      snprintf(why, whylen, "expected $(services:NAME:PORT) with PORT a port number 1-65535 or "
               "a port name, got \"%s\"", port);
      return -1;
    }
    snprintf(r->name, sizeof r->name, "%.255s", a); /* a DNS label: short */
    snprintf(r->port, sizeof r->port, "%s", port);
    r->portnum = port_number(port);
    return 0;
  }
  if (klen == 7 && memcmp(body, "forward", 7) == 0) {
    struct hostport hp;
    char aerr[300];
    r->kind = ENVREF_FORWARD;
    if (addr_parse(a, 0, &hp, aerr, sizeof aerr) < 0) {
      snprintf(why, whylen, "expected $(forward:HOST:PORT), the target of a --forward (%s)", aerr);
      return -1;
    }
    snprintf(r->name, sizeof r->name, "%s", hp.host);
    snprintf(r->port, sizeof r->port, "%u", (unsigned)hp.port);
    r->portnum = hp.port;
    return 0;
  }
  if (klen == 7 && memcmp(body, "volumes", 7) == 0) {
    r->kind = ENVREF_VOLUMES;
    if (!dns_label_valid(a, strlen(a))) {
      snprintf(why, whylen, "expected $(volumes:NAME) with NAME a volume of the pod (a-z, 0-9 "
               "and '-'), got \"%s\"", a);
      return -1;
    }
    snprintf(r->name, sizeof r->name, "%.255s", a); /* a DNS label: short */
    return 0;
  }
  if (klen == 3 && memcmp(body, "env", 3) == 0) {
    r->kind = ENVREF_ENV;
    int ok = alen > 0;
    for (size_t i = 0; i < alen && ok; i++) ok = a[i] > ' ' && a[i] < 127 && a[i] != '=';
    if (!ok) {
      snprintf(why, whylen, "expected $(env:NAME) with NAME a variable name, got \"%s\"", a);
      return -1;
    }
    snprintf(r->name, sizeof r->name, "%.255s", a);
    return 0;
  }
  snprintf(why, whylen, "unknown reference kind \"%.*s\" (expected " KINDS ")", (int)klen, body);
  return -1;
}

int envref_expand(const char *value, envref_fn fn, void *arg, char **out, char *err,
                  size_t errlen) {
  struct sbuf b = {NULL, 0, 0, 1};
  char why[700], val[1024];
  const char *p = value;
  sb_put(&b, "", 0);
  while (*p) {
    const char *d = strchr(p, '$');
    if (!d) {
      sb_put(&b, p, strlen(p));
      break;
    }
    sb_put(&b, p, (size_t)(d - p));
    if (d[1] == '$') {
      sb_put(&b, "$", 1);
      p = d + 2;
      continue;
    }
    if (d[1] != '(') {
      snprintf(err, errlen, "\"$%.*s\" at offset %zu: a '$' starts a reference $(KIND:NAME) (KIND "
               "one of " KINDS "); write $$ for a '$' itself",
               d[1] ? 1 : 0, d + 1, (size_t)(d - value));
      goto fail;
    }
    const char *close = strchr(d + 2, ')');
    const char *open = strstr(d + 2, "$(");
    if (!close || (open && open < close)) {
      snprintf(err, errlen, "\"%.40s\" at offset %zu: a reference not closed: expected "
               "$(KIND:NAME) with a ')'", d, (size_t)(d - value));
      goto fail;
    }
    size_t len = (size_t)(close - d) + 1;
    struct envref r;
    if (parse_ref(d, len, &r, why, sizeof why) < 0) {
      snprintf(err, errlen, "%.*s: %s", (int)len, d, why);
      goto fail;
    }
    if (fn) {
      val[0] = '\0';
      if (fn(arg, &r, val, sizeof val, why, sizeof why) < 0) {
        snprintf(err, errlen, "%.*s: %s", (int)len, d, why);
        goto fail;
      }
      sb_put(&b, val, strlen(val));
    }
    p = close + 1;
  }
  if (!b.ok) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  if (out) *out = b.s;
  else free(b.s);
  return 0;
fail:
  free(b.s);
  return -1;
}

int envref_add(struct envref_overrides *o, const char *entry, char *why, size_t whylen) {
  const char *eq = strchr(entry, '=');
  if (!eq || eq == entry) {
    snprintf(why, whylen, "expected NAME=VALUE, got \"%s\"%s", entry,
             eq ? " (no NAME)" : " (missing '=')");
    return -1;
  }
  size_t n = (size_t)(eq - entry);
  for (size_t i = 0; i < n; i++)
    if (entry[i] <= ' ' || entry[i] >= 127) {
      snprintf(why, whylen, "expected NAME=VALUE with NAME of printable characters (no space), "
               "got \"%.*s\"", (int)n, entry);
      return -1;
    }
  char err[900];
  if (envref_expand(eq + 1, NULL, NULL, NULL, err, sizeof err) < 0) {
    snprintf(why, whylen, "%.*s: %s", (int)n, entry, err);
    return -1;
  }
  for (size_t i = 0; i < o->n; i++)
    if (o->v[i].namelen == n && memcmp(o->v[i].entry, entry, n) == 0) {
      o->v[i].entry = entry;
      return 0;
    }
  if (o->n == ENVREF_MAX) {
    snprintf(why, whylen, "at most %d variables", ENVREF_MAX);
    return -1;
  }
  o->v[o->n].entry = entry;
  o->v[o->n].namelen = n;
  o->n++;
  return 0;
}

static int uses_cb(void *arg, const struct envref *r, char *out, size_t len, char *why,
                   size_t whylen) {
  (void)out;
  (void)len;
  (void)why;
  (void)whylen;
  int *want = arg;
  if ((int)r->kind == want[0]) want[1] = 1;
  return 0;
}

int envref_uses(const struct envref_overrides *o, enum envref_kind kind) {
  int want[2] = {(int)kind, 0};
  char err[900];
  for (size_t i = 0; i < o->n; i++)
    envref_expand(o->v[i].entry + o->v[i].namelen + 1, uses_cb, want, NULL, err, sizeof err);
  return want[1];
}
