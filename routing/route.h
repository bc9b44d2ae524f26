/* route.h: which developer does this request belong to?
 *
 * The rules (docs/architecture.md, "Route keys"), checked in this order:
 *   1. the route header (default "kubernetes-route-as") whose value is a key;
 *   2. the W3C `baggage` header member `kbridge-route=KEY`;
 *   3. the Host header (port, trailing dot ignored; IPv6 literals never match)
 *      has two or more labels and its first label is a key someone holds now.
 * Values that are not valid keys (dns_label_valid) are ignored, never trusted.
 * Two route headers that disagree, or two baggage members that disagree: the
 * request is not routed by that rule (ambiguous; falls to the next rule and,
 * finally, to the original pods). A header and a subdomain that disagree: the
 * header wins. Header names are case-insensitive; header values and hosts are
 * lowercased before matching.
 *
 * When a request is routed by subdomain, route_inject() produces the lines to add
 * so services that propagate headers keep the route: the route header (if absent)
 * and a baggage member (appended to an existing baggage header's members, which
 * are kept). */
#ifndef KB_ROUTE_H
#define KB_ROUTE_H

#include <stddef.h>

#include "dnslabel.h"

struct http_head;
struct route_table;

enum route_source { ROUTE_NONE = 0, ROUTE_HEADER, ROUTE_BAGGAGE, ROUTE_SUBDOMAIN };

struct route_config {
  char header[64];         /* route header name; default "kubernetes-route-as" */
  char baggage_member[64]; /* default "kbridge-route" */
};
void route_config_default(struct route_config *cfg);

struct route_match {
  enum route_source source;
  char key[DNS_LABEL_MAX + 1]; /* "" when source == ROUTE_NONE */
};

/* Decide the route of one request head. table is consulted for the subdomain
 * rule only (a first label nobody holds is not a route); it may be NULL (then the
 * subdomain rule never matches). Header and baggage keys are returned even when
 * nobody holds them; the caller falls back when route_table_pick() finds none. */
void route_decide(const struct route_config *cfg, const struct http_head *head,
                  const struct route_table *table, struct route_match *out);

/* Lines to add when forwarding a request routed as m (only for
 * ROUTE_SUBDOMAIN; empty otherwise). Writes complete "Name: value\r\n" lines to
 * out (NUL-terminated) and, when the request already has a baggage header, sets
 * *replace_baggage = 1: the caller must drop the original baggage lines, since
 * the written line carries their members plus ours (see
 * http_head_write_request_skip()). Existing members named like ours are
 * dropped, all others are kept in order. If the merged baggage value would pass
 * the W3C limits (8192 bytes, 180 members) or not fit in out, no baggage line is
 * written and the original lines stay (*replace_baggage = 0); the route header
 * line is still written. Returns the length, or -1 if outlen is too small even
 * for the route header line; with outlen >= ROUTE_INJECT_MAX it never fails. */
#define ROUTE_INJECT_MAX (8192 + 512)
int route_inject(const struct route_config *cfg, const struct http_head *head,
                 const struct route_match *m, char *out, size_t outlen, int *replace_baggage);

const char *route_source_name(enum route_source s);

#endif
