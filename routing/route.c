/* route.c: the route key of a request head, and the lines that carry a
 * subdomain route on to the next hop (see route.h and docs/routing.md,
 * "Route keys").
 *
 * Runs for every request, so it works in place: one pass over the fields
 * finds the route header, baggage and Host lines; values are parsed where they
 * lie in the head's buffer and a candidate key is copied (lowercased, at most 63
 * bytes) into a stack buffer only for validation. Nothing is allocated. */
#include "route.h"

#include <llhttp.h>
#include <stdio.h>
#include <string.h>

#include "http_head.h"
#include "route_table.h"

/* W3C Baggage limits (https://www.w3.org/TR/baggage/#limits): a propagated
 * baggage header holds at most 180 list-members and 8192 bytes. */
#define BAGGAGE_MAX_BYTES 8192
#define BAGGAGE_MAX_MEMBERS 180

void route_config_default(struct route_config *cfg) {
  memset(cfg, 0, sizeof(*cfg));
  memcpy(cfg->header, "kubernetes-route-as", sizeof("kubernetes-route-as"));
  memcpy(cfg->baggage_member, "kbridge-route", sizeof("kbridge-route"));
}

const char *route_source_name(enum route_source s) {
  switch (s) {
  case ROUTE_HEADER: return "header";
  case ROUTE_BAGGAGE: return "baggage";
  case ROUTE_SUBDOMAIN: return "subdomain";
  case ROUTE_NONE: break;
  }
  return "none";
}

static int is_ows(char c) { return c == ' ' || c == '\t'; }

static char lower(char c) { return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c; }

static const char *trim(const char *s, size_t *len) {
  size_t n = *len;
  while (n && is_ows(*s)) s++, n--;
  while (n && is_ows(s[n - 1])) n--;
  *len = n;
  return s;
}

/* Case-insensitive equality of s[0..n) and the NUL-terminated lowercase lit. */
static int ieq_lit(const char *s, size_t n, const char *lit) {
  size_t i = 0;
  for (; i < n; i++)
    if (lit[i] == '\0' || lower(s[i]) != lit[i]) return 0;
  return lit[i] == '\0';
}

/* Copy s[0..n) lowercased into key (DNS_LABEL_MAX + 1 bytes) and validate it.
 * Returns 1 for a valid key, else 0. */
static int take_key(const char *s, size_t n, char *key) {
  if (n == 0 || n > DNS_LABEL_MAX) return 0;
  for (size_t i = 0; i < n; i++) key[i] = lower(s[i]);
  key[n] = '\0';
  return dns_label_valid(key, n);
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  c = lower(c);
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

/* Percent-decode s[0..n) (W3C baggage values) into key, lowercased, and
 * validate it. Returns 1 for a valid key, else 0 (bad escape, too long). */
static int take_key_pct(const char *s, size_t n, char *key) {
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (c == '%') {
      int hi, lo;
      if (n - i < 3 || (hi = hexval(s[i + 1])) < 0 || (lo = hexval(s[i + 2])) < 0) return 0;
      c = (char)(hi * 16 + lo);
      i += 2;
    }
    if (k == DNS_LABEL_MAX) return 0;
    key[k++] = lower(c);
  }
  key[k] = '\0';
  return dns_label_valid(key, k);
}

/* The running verdict of one rule over all its occurrences. */
struct vote {
  int state; /* 0 nothing valid seen, 1 one key (possibly repeated), 2 disagreement */
  char key[DNS_LABEL_MAX + 1];
};

static void vote_add(struct vote *v, const char *key) {
  if (v->state == 0) {
    memcpy(v->key, key, strlen(key) + 1);
    v->state = 1;
  } else if (v->state == 1 && strcmp(v->key, key) != 0) {
    v->state = 2;
  }
}

/* Route header value: a comma-separated list (several lines may have been
 * combined by an intermediary); each element that is a valid key votes. */
static void scan_route_header(const char *v, size_t len, struct vote *vote) {
  char key[DNS_LABEL_MAX + 1];
  size_t i = 0;
  while (i <= len) {
    size_t j = i;
    while (j < len && v[j] != ',') j++;
    size_t n = j - i;
    const char *e = trim(v + i, &n);
    if (take_key(e, n, key)) vote_add(vote, key);
    i = j + 1;
  }
}

/* Visit the list-members of one baggage value: fn(member, len, arg) for each
 * non-empty member, trimmed of OWS. */
static void baggage_members(const char *v, size_t len,
                            void (*fn)(const char *m, size_t n, void *arg), void *arg) {
  size_t i = 0;
  while (i < len) {
    size_t j = i;
    while (j < len && v[j] != ',') j++;
    size_t n = j - i;
    const char *m = trim(v + i, &n);
    if (n) fn(m, n, arg);
    i = j + 1;
  }
}

/* Is member m[0..n) (key OWS "=" ...) keyed name? Sets *val and *vlen to its value
 * without properties, trimmed. */
static int member_is(const char *m, size_t n, const char *name, const char **val, size_t *vlen) {
  size_t eq = 0;
  while (eq < n && m[eq] != '=' && m[eq] != ';') eq++;
  if (eq == n || m[eq] != '=') return 0;
  size_t kl = eq;
  const char *k = trim(m, &kl);
  if (!ieq_lit(k, kl, name)) return 0;
  size_t end = eq + 1;
  while (end < n && m[end] != ';') end++;
  *vlen = end - eq - 1;
  *val = trim(m + eq + 1, vlen);
  return 1;
}

struct baggage_scan {
  const char *name;
  struct vote *vote;
};

static void baggage_vote(const char *m, size_t n, void *arg) {
  struct baggage_scan *s = arg;
  const char *val;
  size_t vlen;
  char key[DNS_LABEL_MAX + 1];
  if (member_is(m, n, s->name, &val, &vlen) && take_key_pct(val, vlen, key))
    vote_add(s->vote, key);
}

/* Lowercase config names once per call (they are short). */
static void lower_copy(char *dst, const char *src, size_t cap) {
  size_t i = 0;
  for (; src[i] && i + 1 < cap; i++) dst[i] = lower(src[i]);
  dst[i] = '\0';
}

/* The authority of an absolute-form target ("scheme://authority/path"), or of
 * the authority-form target of CONNECT. Returns 1 and sets *a and *alen, else 0. */
static int target_authority(const struct http_head *h, const char **a, size_t *alen) {
  const char *u = h->buf + h->url_off;
  size_t n = h->url_len;
  if (n == 0 || u[0] == '/' || (n == 1 && u[0] == '*')) return 0;
  size_t i = 0;
  while (i < n && ((u[i] >= 'a' && u[i] <= 'z') || (u[i] >= 'A' && u[i] <= 'Z') ||
                   (i > 0 && ((u[i] >= '0' && u[i] <= '9') || u[i] == '+' || u[i] == '-' ||
                              u[i] == '.'))))
    i++;
  size_t start;
  if (i > 0 && n - i >= 3 && memcmp(u + i, "://", 3) == 0)
    start = i + 3;
  else if (h->method == HTTP_CONNECT)
    start = 0;
  else
    return 0;
  size_t end = start;
  while (end < n && u[end] != '/' && u[end] != '?' && u[end] != '#') end++;
  for (size_t k = end; k > start; k--) /* drop userinfo, up to the last '@' */
    if (u[k - 1] == '@') {
      start = k;
      break;
    }
  *a = u + start;
  *alen = end - start;
  return 1;
}

/* The first label of host (an authority: host[:port]) when it may be a
 * subdomain route: a host name of two or more labels, not an IP literal.
 * Returns 1 and writes the lowercased label to key, else 0. */
static int host_first_label(const char *host, size_t len, char *key) {
  host = trim(host, &len);
  if (len == 0 || host[0] == '[') return 0; /* IPv6 literal */
  size_t colon = len;
  for (size_t i = 0; i < len; i++)
    if (host[i] == ':') {
      colon = i;
      break;
    }
  for (size_t i = colon + 1; i < len; i++)
    if (host[i] < '0' || host[i] > '9') return 0; /* not a port */
  len = colon;
  if (len && host[len - 1] == '.') len--;
  size_t labels = 0, numeric = 0, first_len = 0, lab = 0;
  int all_digits = 1;
  for (size_t i = 0; i <= len; i++) {
    char c = i < len ? host[i] : '.';
    if (c == '.') {
      if (lab == 0) return 0; /* empty label */
      if (labels == 0) first_len = lab;
      labels++;
      numeric += (size_t)all_digits;
      lab = 0;
      all_digits = 1;
      continue;
    }
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '-' || c == '_'))
      return 0;
    if (c < '0' || c > '9') all_digits = 0;
    lab++;
  }
  if (labels < 2 || numeric == labels) return 0; /* one label, or an IPv4 literal */
  return take_key(host, first_len, key);
}

void route_decide(const struct route_config *cfg, const struct http_head *head,
                  const struct route_table *table, struct route_match *out) {
  char hname[sizeof(cfg->header)], bname[sizeof(cfg->baggage_member)];
  lower_copy(hname, cfg->header, sizeof(hname));
  lower_copy(bname, cfg->baggage_member, sizeof(bname));
  size_t hlen = strlen(hname);
  struct vote hv = {0}, bv = {0};
  struct baggage_scan bs = {bname, &bv};
  const char *host = NULL;
  size_t host_len = 0, nhost = 0;

  out->source = ROUTE_NONE;
  out->key[0] = '\0';
  for (size_t i = 0; i < head->nfields; i++) {
    const struct http_field *f = &head->fields[i];
    const char *name = head->buf + f->name_off, *v = head->buf + f->value_off;
    if (f->name_len == hlen && ieq_lit(name, hlen, hname)) {
      scan_route_header(v, f->value_len, &hv);
    } else if (ieq_lit(name, f->name_len, "baggage")) {
      baggage_members(v, f->value_len, baggage_vote, &bs);
    } else if (ieq_lit(name, f->name_len, "host")) {
      host = v;
      host_len = f->value_len;
      nhost++;
    }
  }
  if (hv.state == 1) {
    out->source = ROUTE_HEADER;
    memcpy(out->key, hv.key, sizeof(out->key));
    return;
  }
  if (bv.state == 1) {
    out->source = ROUTE_BAGGAGE;
    memcpy(out->key, bv.key, sizeof(out->key));
    return;
  }
  if (!table) return;
  /* RFC 9112 3.2.2: an absolute-form target's authority overrides Host. */
  const char *a;
  size_t alen;
  if (target_authority(head, &a, &alen)) {
    host = a;
    host_len = alen;
  } else if (nhost != 1) {
    return;
  }
  char key[DNS_LABEL_MAX + 1];
  if (host_first_label(host, host_len, key) && route_table_has(table, key, strlen(key))) {
    out->source = ROUTE_SUBDOMAIN;
    memcpy(out->key, key, sizeof(out->key));
  }
}

/* Building the merged baggage value: the existing members except ours, then
 * ours. */
struct baggage_out {
  const char *name;
  char *p, *end; /* write position and limit in the caller's buffer */
  size_t members;
  int overflow;
};

static void put(struct baggage_out *o, const char *s, size_t n) {
  if ((size_t)(o->end - o->p) < n) {
    o->overflow = 1;
    return;
  }
  memcpy(o->p, s, n);
  o->p += n;
}

static void baggage_keep(const char *m, size_t n, void *arg) {
  struct baggage_out *o = arg;
  const char *val;
  size_t vlen;
  if (member_is(m, n, o->name, &val, &vlen)) return; /* replaced by ours */
  if (o->members++) put(o, ",", 1);
  put(o, m, n);
}

int route_inject(const struct route_config *cfg, const struct http_head *head,
                 const struct route_match *m, char *out, size_t outlen, int *replace_baggage) {
  *replace_baggage = 0;
  if (outlen == 0) return -1;
  out[0] = '\0';
  if (m->source != ROUTE_SUBDOMAIN) return 0;
  size_t klen = strlen(m->key);
  char *p = out, *end = out + outlen - 1; /* keep room for the NUL */
  if (http_head_count(head, cfg->header) == 0) {
    int n = snprintf(p, (size_t)(end - p) + 1, "%s: %s\r\n", cfg->header, m->key);
    if (n < 0 || n > end - p) return -1;
    p += n;
  }
  char bname[sizeof(cfg->baggage_member)];
  lower_copy(bname, cfg->baggage_member, sizeof(bname));
  size_t nbag = 0;
  static const char prefix[] = "baggage: ";
  size_t plen = sizeof(prefix) - 1;
  if ((size_t)(end - p) < plen) return (int)(p - out); /* no room for baggage */
  struct baggage_out o = {bname, p + plen, end, 0, 0};
  /* The value may use at most BAGGAGE_MAX_BYTES (+ CRLF); past that we skip it. */
  if ((size_t)(o.end - o.p) > BAGGAGE_MAX_BYTES + 2) o.end = o.p + BAGGAGE_MAX_BYTES + 2;
  for (size_t i = 0; i < head->nfields; i++) {
    const struct http_field *f = &head->fields[i];
    if (!ieq_lit(head->buf + f->name_off, f->name_len, "baggage")) continue;
    nbag++;
    baggage_members(head->buf + f->value_off, f->value_len, baggage_keep, &o);
  }
  if (o.members++) put(&o, ",", 1);
  put(&o, cfg->baggage_member, strlen(cfg->baggage_member));
  put(&o, "=", 1);
  put(&o, m->key, klen);
  put(&o, "\r\n", 2);
  if (o.overflow || o.members > BAGGAGE_MAX_MEMBERS) {
    /* Over the W3C limits (or the caller's buffer): keep the original baggage
     * lines untouched and carry the route in the header line only. */
    *p = '\0';
    return (int)(p - out);
  }
  memcpy(p, prefix, plen);
  p = o.p;
  *p = '\0';
  *replace_baggage = nbag > 0;
  return (int)(p - out);
}
