/* test_route.c: route_decide over a large table of request heads (each rule,
 * precedence, ambiguity, case, ports, trailing dots, IP literals, nip.io names,
 * absolute-form targets, invalid and hostile values), and route_inject. */
#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>

#include "http_head.h"
#include "route.h"
#include "route_table.h"
#include "unit/check.h"

#define K63 "abcdefghij" "abcdefghij" "abcdefghij" "abcdefghij" "abcdefghij" "abcdefghij" "abc"
#define K64 K63 "d"

struct decide_case {
  const char *line;    /* request line without CRLF */
  const char *headers; /* complete header lines */
  enum route_source src;
  const char *key;
};

static const struct decide_case cases[] = {
    /* 1. the route header */
    {"GET / HTTP/1.1", "Host: x\r\nkubernetes-route-as: alice\r\n", ROUTE_HEADER, "alice"},
    {"GET / HTTP/1.1", "Host: x\r\nKubernetes-Route-As: alice\r\n", ROUTE_HEADER, "alice"},
    {"GET / HTTP/1.1", "Host: x\r\nKUBERNETES-ROUTE-AS: ALICE\r\n", ROUTE_HEADER, "alice"},
    {"GET / HTTP/1.1", "Host: x\r\nkubernetes-route-as: \t alice \t \r\n", ROUTE_HEADER, "alice"},
    {"GET / HTTP/1.1", "kubernetes-route-as: carol\r\n", ROUTE_HEADER, "carol"}, /* unheld */
    {"GET / HTTP/1.1", "kubernetes-route-as: dev-1\r\n", ROUTE_HEADER, "dev-1"},
    {"GET / HTTP/1.1", "kubernetes-route-as: " K63 "\r\n", ROUTE_HEADER, K63},
    {"GET / HTTP/1.1", "kubernetes-route-as: " K64 "\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "kubernetes-route-as: al_ice\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "kubernetes-route-as: -alice\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "kubernetes-route-as: alice-\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "kubernetes-route-as: al ice\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "kubernetes-route-as: alice.bob\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "kubernetes-route-as:\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "kubernetes-route-as:    \r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "kubernetes-route-as: al\xc3\xa9" "ce\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "kubernetes-route-as: alice\xff\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "kubernetes-route-as: \"alice\"\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "kubernetes-route-as-x: alice\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "x-kubernetes-route-as: alice\r\n", ROUTE_NONE, ""},
    /* several route headers: agreeing is fine, disagreeing is ambiguous */
    {"GET / HTTP/1.1", "kubernetes-route-as: alice\r\nkubernetes-route-as: ALICE\r\n", ROUTE_HEADER,
     "alice"},
    {"GET / HTTP/1.1", "kubernetes-route-as: alice\r\nkubernetes-route-as: bob\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "kubernetes-route-as: alice, bob\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "kubernetes-route-as: alice, alice\r\n", ROUTE_HEADER, "alice"},
    {"GET / HTTP/1.1", "kubernetes-route-as: alice,\r\n", ROUTE_HEADER, "alice"},
    {"GET / HTTP/1.1", "kubernetes-route-as: ,,alice,,\r\n", ROUTE_HEADER, "alice"},
    /* an invalid value is ignored, the valid one counts */
    {"GET / HTTP/1.1", "kubernetes-route-as: al!ce\r\nkubernetes-route-as: bob\r\n", ROUTE_HEADER,
     "bob"},
    /* 2. baggage */
    {"GET / HTTP/1.1", "baggage: kbridge-route=alice\r\n", ROUTE_BAGGAGE, "alice"},
    {"GET / HTTP/1.1", "Baggage: kbridge-route=Alice\r\n", ROUTE_BAGGAGE, "alice"},
    {"GET / HTTP/1.1", "baggage: userId=sergey,kbridge-route=bob;ttl=3;x,serverNode=DF28\r\n",
     ROUTE_BAGGAGE, "bob"},
    {"GET / HTTP/1.1", "baggage:  a=1 ,\t kbridge-route \t= \tbob \t; p ,b=2\r\n", ROUTE_BAGGAGE,
     "bob"},
    {"GET / HTTP/1.1", "baggage: kbridge-route=%61lice\r\n", ROUTE_BAGGAGE, "alice"},
    {"GET / HTTP/1.1", "baggage: kbridge-route=%41LICE\r\n", ROUTE_BAGGAGE, "alice"},
    {"GET / HTTP/1.1", "baggage: kbridge-route=dev%2d1\r\n", ROUTE_BAGGAGE, "dev-1"},
    {"GET / HTTP/1.1", "baggage: kbridge-route=%2Dalice\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "baggage: kbridge-route=al%zzice\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "baggage: kbridge-route=alice%6\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "baggage: kbridge-route=alice%\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "baggage: kbridge-route=alice%20\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "baggage: kbridge-route=al%00ice\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "baggage: kbridge-route=\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "baggage: kbridge-route\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "baggage: kbridge-route;alice\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "baggage: kbridge-route=;x=alice\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "baggage: kbridge-routex=alice\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "baggage: xkbridge-route=alice\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "baggage: KBRIDGE-ROUTE=alice\r\n", ROUTE_BAGGAGE, "alice"},
    {"GET / HTTP/1.1", "baggage: kbridge-route=" K63 "\r\n", ROUTE_BAGGAGE, K63},
    {"GET / HTTP/1.1", "baggage: kbridge-route=" K64 "\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "baggage: ,, ,kbridge-route=alice,,\r\n", ROUTE_BAGGAGE, "alice"},
    {"GET / HTTP/1.1", "baggage:\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "baggage: a=1\r\nbaggage: kbridge-route=bob\r\n", ROUTE_BAGGAGE, "bob"},
    {"GET / HTTP/1.1", "baggage: kbridge-route=bob\r\nbaggage: kbridge-route=alice\r\n", ROUTE_NONE,
     ""},
    {"GET / HTTP/1.1", "baggage: kbridge-route=bob,kbridge-route=alice\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "baggage: kbridge-route=bob,kbridge-route=%62ob\r\n", ROUTE_BAGGAGE, "bob"},
    {"GET / HTTP/1.1", "baggage: kbridge-route=b_d,kbridge-route=bob\r\n", ROUTE_BAGGAGE, "bob"},
    /* precedence: header > baggage > subdomain; ambiguity falls through */
    {"GET / HTTP/1.1", "kubernetes-route-as: alice\r\nbaggage: kbridge-route=bob\r\n", ROUTE_HEADER,
     "alice"},
    {"GET / HTTP/1.1", "baggage: kbridge-route=bob\r\nkubernetes-route-as: alice\r\n", ROUTE_HEADER,
     "alice"},
    {"GET / HTTP/1.1",
     "kubernetes-route-as: alice\r\nkubernetes-route-as: bob\r\nbaggage: kbridge-route=carol\r\n",
     ROUTE_BAGGAGE, "carol"},
    {"GET / HTTP/1.1", "kubernetes-route-as: a_b\r\nbaggage: kbridge-route=carol\r\n",
     ROUTE_BAGGAGE, "carol"},
    {"GET / HTTP/1.1", "Host: alice.shop.example.com\r\nkubernetes-route-as: bob\r\n", ROUTE_HEADER,
     "bob"},
    {"GET / HTTP/1.1", "Host: alice.shop.example.com\r\nbaggage: kbridge-route=bob\r\n",
     ROUTE_BAGGAGE, "bob"},
    {"GET / HTTP/1.1",
     "Host: alice.shop.example.com\r\nkubernetes-route-as: bob\r\nkubernetes-route-as: carol\r\n",
     ROUTE_SUBDOMAIN, "alice"},
    {"GET / HTTP/1.1", "Host: alice.shop.example.com\r\nkubernetes-route-as: x_x\r\n",
     ROUTE_SUBDOMAIN, "alice"},
    {"GET / HTTP/1.1", "Host: alice.shop.example.com\r\nbaggage: kbridge-route=a,kbridge-route=b\r\n",
     ROUTE_SUBDOMAIN, "alice"},
    /* 3. subdomain */
    {"GET / HTTP/1.1", "Host: alice.shop.example.com\r\n", ROUTE_SUBDOMAIN, "alice"},
    {"GET / HTTP/1.1", "Host: ALICE.Shop.Example.COM\r\n", ROUTE_SUBDOMAIN, "alice"},
    {"GET / HTTP/1.1", "Host: alice.shop.example.com:8080\r\n", ROUTE_SUBDOMAIN, "alice"},
    {"GET / HTTP/1.1", "Host: alice.shop.example.com.\r\n", ROUTE_SUBDOMAIN, "alice"},
    {"GET / HTTP/1.1", "Host: alice.shop.example.com.:80\r\n", ROUTE_SUBDOMAIN, "alice"},
    {"GET / HTTP/1.1", "Host: alice.shop.example.com:\r\n", ROUTE_SUBDOMAIN, "alice"},
    {"GET / HTTP/1.1", "Host:   alice.shop.example.com  \r\n", ROUTE_SUBDOMAIN, "alice"},
    {"GET / HTTP/1.1", "Host: alice.api.dev.svc.cluster.local\r\n", ROUTE_SUBDOMAIN, "alice"},
    {"GET / HTTP/1.1", "Host: alice.10.0.0.5.nip.io\r\n", ROUTE_SUBDOMAIN, "alice"},
    {"GET / HTTP/1.1", "Host: alice.10.0.0.5.nip.io:31080\r\n", ROUTE_SUBDOMAIN, "alice"},
    {"GET / HTTP/1.1", "Host: dev-1.example.com\r\n", ROUTE_SUBDOMAIN, "dev-1"},
    {"GET / HTTP/1.1", "Host: a.b\r\n", ROUTE_SUBDOMAIN, "a"},
    {"GET / HTTP/1.1", "Host: alice.123\r\n", ROUTE_SUBDOMAIN, "alice"},
    {"GET / HTTP/1.1", "Host: carol.shop.example.com\r\n", ROUTE_NONE, ""}, /* nobody holds it */
    {"GET / HTTP/1.1", "Host: shop.example.com\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "Host: alice\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "Host: alice.\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "Host: alice:8080\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "Host: alice..example.com\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "Host: .alice.example.com\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "Host: alice.example.com..\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "Host: al_ice.example.com\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "Host: alice.exa mple.com\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "Host: alice.example.com:80x\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "Host: alice.example.com:80:80\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "Host: alice.example.com/x\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "Host: user@alice.example.com\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "Host: alice\xff.example.com\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "Host: " K64 ".example.com\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "Host: [::1]:8080\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "Host: [::1]\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "Host: [alice::1]\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "Host: ::1\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "Host: 10.0.0.5\r\n", ROUTE_NONE, ""}, /* "10" is held: still an IP */
    {"GET / HTTP/1.1", "Host: 10.0.0.5:8080\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "Host: 10.0.0.5.\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "Host: 10.1\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "Host: 10.0.0.5.6\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.1", "Host: 10.0.0.5.nip.io\r\n", ROUTE_SUBDOMAIN, "10"}, /* a name, see docs */
    {"GET / HTTP/1.1", "Host:\r\n", ROUTE_NONE, ""},
    {"GET / HTTP/1.0", "", ROUTE_NONE, ""},
    /* absolute-form: the target's authority overrides Host (RFC 9112 3.2.2) */
    {"GET http://alice.shop.example.com/x HTTP/1.1", "Host: shop.example.com\r\n", ROUTE_SUBDOMAIN,
     "alice"},
    {"GET http://shop.example.com/ HTTP/1.1", "Host: alice.shop.example.com\r\n", ROUTE_NONE, ""},
    {"GET http://u:p@bob.example.com:8080/x?y HTTP/1.1", "Host: bob.example.com:8080\r\n",
     ROUTE_SUBDOMAIN, "bob"},
    {"GET HTTP://BOB.example.com HTTP/1.1", "Host: x\r\n", ROUTE_SUBDOMAIN, "bob"},
    {"GET https://bob.example.com?q=alice.x.y HTTP/1.1", "", ROUTE_SUBDOMAIN, "bob"},
    {"GET http://[::1]:80/ HTTP/1.1", "Host: alice.example.com\r\n", ROUTE_NONE, ""},
    {"GET http://10.0.0.5/ HTTP/1.1", "Host: alice.example.com\r\n", ROUTE_NONE, ""},
    {"GET http://alice.example.com/ HTTP/1.1", "kubernetes-route-as: bob\r\n", ROUTE_HEADER, "bob"},
    {"CONNECT bob.example.com:443 HTTP/1.1", "Host: bob.example.com:443\r\n", ROUTE_SUBDOMAIN, "bob"},
    {"CONNECT 10.0.0.5:443 HTTP/1.1", "Host: 10.0.0.5:443\r\n", ROUTE_NONE, ""},
    {"OPTIONS * HTTP/1.1", "Host: alice.example.com\r\n", ROUTE_SUBDOMAIN, "alice"},
    {"GET /alice.example.com HTTP/1.1", "Host: example.com\r\n", ROUTE_NONE, ""},
};

static struct route_table *make_table(void) {
  static int conn;
  struct route_table *rt = route_table_new();
  const char *keys[] = {"alice", "bob", "10", "dev-1", "a", K63};
  for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) route_table_add(rt, keys[i], &conn);
  return rt;
}

static int parse(const char *line, const char *headers, struct http_head *h) {
  static char req[32768];
  snprintf(req, sizeof(req), "%s\r\n%s\r\n", line, headers);
  const char *err = NULL;
  long r = http_head_parse_request(req, strlen(req), h, &err);
  if (r <= 0) fprintf(stderr, "cannot parse [%.100s] [%.200s]: %s\n", line, headers, err ? err : "incomplete");
  return r > 0 ? 0 : -1;
}

static void test_decide_table(void) {
  struct route_config cfg;
  struct route_table *rt = make_table();
  struct http_head h;
  route_config_default(&cfg);
  http_head_init(&h, 16384, 64);
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    const struct decide_case *c = &cases[i];
    struct route_match m;
    memset(&m, 0x55, sizeof(m));
    CHECK_EQ_INT(parse(c->line, c->headers, &h), 0);
    route_decide(&cfg, &h, rt, &m);
    if (m.source != c->src || strcmp(m.key, c->key) != 0)
      fprintf(stderr, "case %zu [%s] [%s]: got %s \"%s\", want %s \"%s\"\n", i, c->line, c->headers,
              route_source_name(m.source), m.key, route_source_name(c->src), c->key);
    CHECK_EQ_INT(m.source, c->src);
    CHECK_EQ_STR(m.key, c->key);
  }
  /* without a table the subdomain rule never matches; the others still do */
  struct route_match m;
  parse("GET / HTTP/1.1", "Host: alice.shop.example.com\r\n", &h);
  route_decide(&cfg, &h, NULL, &m);
  CHECK_EQ_INT(m.source, ROUTE_NONE);
  CHECK_EQ_STR(m.key, "");
  parse("GET / HTTP/1.1", "Host: alice.shop.example.com\r\nbaggage: kbridge-route=bob\r\n", &h);
  route_decide(&cfg, &h, NULL, &m);
  CHECK_EQ_INT(m.source, ROUTE_BAGGAGE);
  /* the subdomain rule follows the table as keys come and go */
  parse("GET / HTTP/1.1", "Host: carol.shop.example.com\r\n", &h);
  route_decide(&cfg, &h, rt, &m);
  CHECK_EQ_INT(m.source, ROUTE_NONE);
  int c2;
  route_table_add(rt, "carol", &c2);
  route_decide(&cfg, &h, rt, &m);
  CHECK_EQ_INT(m.source, ROUTE_SUBDOMAIN);
  CHECK_EQ_STR(m.key, "carol");
  route_table_remove(rt, "carol", &c2);
  route_decide(&cfg, &h, rt, &m);
  CHECK_EQ_INT(m.source, ROUTE_NONE);
  http_head_free(&h);
  route_table_free(rt);
  printf("%zu route_decide cases\n", sizeof(cases) / sizeof(cases[0]));
}

static void test_config_names(void) {
  struct route_config cfg;
  struct http_head h;
  struct route_match m;
  route_config_default(&cfg);
  CHECK_EQ_STR(cfg.header, "kubernetes-route-as");
  CHECK_EQ_STR(cfg.baggage_member, "kbridge-route");
  snprintf(cfg.header, sizeof(cfg.header), "X-Dev-Route");
  snprintf(cfg.baggage_member, sizeof(cfg.baggage_member), "devroute");
  http_head_init(&h, 4096, 32);
  parse("GET / HTTP/1.1", "kubernetes-route-as: alice\r\nx-dev-route: bob\r\n", &h);
  route_decide(&cfg, &h, NULL, &m);
  CHECK_EQ_INT(m.source, ROUTE_HEADER);
  CHECK_EQ_STR(m.key, "bob");
  parse("GET / HTTP/1.1", "kubernetes-route-as: alice\r\nbaggage: kbridge-route=x,devroute=bob\r\n",
        &h);
  route_decide(&cfg, &h, NULL, &m);
  CHECK_EQ_INT(m.source, ROUTE_BAGGAGE);
  CHECK_EQ_STR(m.key, "bob");

  struct route_table *rt = make_table();
  char out[ROUTE_INJECT_MAX];
  int rep = -1;
  parse("GET / HTTP/1.1", "Host: alice.x.y\r\nbaggage: devroute=a_b\r\n", &h);
  route_decide(&cfg, &h, rt, &m);
  CHECK_EQ_INT(m.source, ROUTE_SUBDOMAIN);
  int n = route_inject(&cfg, &h, &m, out, sizeof(out), &rep);
  CHECK_EQ_STR(out, "X-Dev-Route: alice\r\nbaggage: devroute=alice\r\n");
  CHECK_EQ_INT(n, (int)strlen(out));
  CHECK_EQ_INT(rep, 1);
  route_table_free(rt);
  http_head_free(&h);
}

struct inject_case {
  const char *headers;
  const char *want;
  int replace;
};

static void test_inject(void) {
  static const struct inject_case ic[] = {
      {"Host: alice.x.y\r\n", "kubernetes-route-as: alice\r\nbaggage: kbridge-route=alice\r\n", 0},
      {"Host: alice.x.y\r\nbaggage: a=1, b=2;p=q\r\nbaggage: c=%20\r\n",
       "kubernetes-route-as: alice\r\nbaggage: a=1,b=2;p=q,c=%20,kbridge-route=alice\r\n", 1},
      {"Host: alice.x.y\r\nbaggage:\r\n",
       "kubernetes-route-as: alice\r\nbaggage: kbridge-route=alice\r\n", 1},
      {"Host: alice.x.y\r\nbaggage: kbridge-route=x_y;p, k=v\r\n",
       "kubernetes-route-as: alice\r\nbaggage: k=v,kbridge-route=alice\r\n", 1},
      {"Host: alice.x.y\r\nkubernetes-route-as: NOT VALID\r\n",
       "baggage: kbridge-route=alice\r\n", 0},
      {"Host: alice.x.y\r\nkubernetes-route-as: bob\r\nkubernetes-route-as: carol\r\nbaggage: z=1\r\n",
       "baggage: z=1,kbridge-route=alice\r\n", 1},
  };
  struct route_config cfg;
  struct route_table *rt = make_table();
  struct http_head h;
  struct route_match m;
  char out[ROUTE_INJECT_MAX];
  int rep;
  route_config_default(&cfg);
  http_head_init(&h, 64 * 1024, 512);
  for (size_t i = 0; i < sizeof(ic) / sizeof(ic[0]); i++) {
    CHECK_EQ_INT(parse("GET / HTTP/1.1", ic[i].headers, &h), 0);
    route_decide(&cfg, &h, rt, &m);
    CHECK_EQ_INT(m.source, ROUTE_SUBDOMAIN);
    rep = -1;
    int n = route_inject(&cfg, &h, &m, out, sizeof(out), &rep);
    CHECK_EQ_STR(out, ic[i].want);
    CHECK_EQ_INT(n, (int)strlen(ic[i].want));
    CHECK_EQ_INT(rep, ic[i].replace);
  }

  /* not routed by subdomain: nothing to add */
  parse("GET / HTTP/1.1", "Host: alice.x.y\r\nkubernetes-route-as: bob\r\n", &h);
  route_decide(&cfg, &h, rt, &m);
  rep = -1;
  CHECK_EQ_INT(route_inject(&cfg, &h, &m, out, sizeof(out), &rep), 0);
  CHECK_EQ_STR(out, "");
  CHECK_EQ_INT(rep, 0);

  /* small buffers: -1 if the route header does not fit; baggage dropped if it alone does not */
  parse("GET / HTTP/1.1", "Host: alice.x.y\r\nbaggage: a=1\r\n", &h);
  route_decide(&cfg, &h, rt, &m);
  CHECK_EQ_INT(route_inject(&cfg, &h, &m, out, 10, &rep), -1);
  CHECK_EQ_INT(route_inject(&cfg, &h, &m, out, 0, &rep), -1);
  CHECK_EQ_INT(route_inject(&cfg, &h, &m, out, 29, &rep), 28);
  CHECK_EQ_STR(out, "kubernetes-route-as: alice\r\n");
  CHECK_EQ_INT(rep, 0);
  CHECK_EQ_INT(route_inject(&cfg, &h, &m, out, 40, &rep), 28);
  CHECK_EQ_STR(out, "kubernetes-route-as: alice\r\n");
  CHECK_EQ_INT(rep, 0);
  CHECK_EQ_INT(route_inject(&cfg, &h, &m, out, 28, &rep), -1);

  /* W3C limits: 8192 bytes of value, 180 members; past them the baggage stays as it was */
  static char hdrs[20000];
  char *p = hdrs;
  p += sprintf(p, "Host: alice.x.y\r\nbaggage: k=");
  memset(p, 'v', 8160);
  p += 8160;
  p += sprintf(p, "\r\n");
  parse("GET / HTTP/1.1", hdrs, &h);
  route_decide(&cfg, &h, rt, &m);
  CHECK_EQ_INT(m.source, ROUTE_SUBDOMAIN);
  /* 8162 + 20 bytes <= 8192: fits */
  CHECK_EQ_INT(route_inject(&cfg, &h, &m, out, sizeof(out), &rep), 28 + 9 + 8182 + 2);
  CHECK(strncmp(out, "kubernetes-route-as: alice\r\nbaggage: k=vvv", 42) == 0);
  CHECK_EQ_STR(out + strlen(out) - 22, ",kbridge-route=alice\r\n");
  CHECK_EQ_INT(rep, 1);
  p = hdrs;
  p += sprintf(p, "Host: alice.x.y\r\nbaggage: k=");
  memset(p, 'v', 8175);
  p += 8175;
  p += sprintf(p, "\r\n");
  parse("GET / HTTP/1.1", hdrs, &h);
  route_decide(&cfg, &h, rt, &m);
  route_inject(&cfg, &h, &m, out, sizeof(out), &rep);
  CHECK_EQ_STR(out, "kubernetes-route-as: alice\r\n");
  CHECK_EQ_INT(rep, 0);
  p = hdrs;
  p += sprintf(p, "Host: alice.x.y\r\nbaggage: m0=0");
  for (int i = 1; i < 180; i++) p += sprintf(p, ",m%d=%d", i, i);
  p += sprintf(p, "\r\n");
  parse("GET / HTTP/1.1", hdrs, &h);
  route_decide(&cfg, &h, rt, &m);
  route_inject(&cfg, &h, &m, out, sizeof(out), &rep);
  CHECK_EQ_STR(out, "kubernetes-route-as: alice\r\n");
  CHECK_EQ_INT(rep, 0);

  route_table_free(rt);
  http_head_free(&h);
}

/* The whole path: parse, decide, inject, write with the old baggage skipped;
 * the forwarded head routes to the same key by header at the next hop. */
static void test_round_trip(void) {
  struct route_config cfg;
  struct route_table *rt = make_table();
  struct http_head h, h2;
  struct route_match m, m2;
  char extra[ROUTE_INJECT_MAX];
  int rep;
  route_config_default(&cfg);
  http_head_init(&h, 16384, 64);
  http_head_init(&h2, 16384, 64);
  parse("POST /orders?id=7 HTTP/1.1",
        "Host: Alice.shop.example.com:8080\r\nbaggage: u=1\r\nContent-Length: 2\r\n"
        "Baggage: v=2;p\r\n",
        &h);
  route_decide(&cfg, &h, rt, &m);
  CHECK_EQ_INT(route_inject(&cfg, &h, &m, extra, sizeof(extra), &rep) > 0, 1);
  struct evbuffer *b = evbuffer_new();
  CHECK_EQ_INT(http_head_write_request_skip(&h, rep ? "baggage" : NULL, extra, b), 0);
  size_t n = evbuffer_get_length(b);
  char *s = malloc(n + 1);
  evbuffer_remove(b, s, n);
  s[n] = '\0';
  CHECK_EQ_STR(s, "POST /orders?id=7 HTTP/1.1\r\nHost: Alice.shop.example.com:8080\r\n"
                  "Content-Length: 2\r\nkubernetes-route-as: alice\r\n"
                  "baggage: u=1,v=2;p,kbridge-route=alice\r\n\r\n");
  const char *err = NULL;
  CHECK_EQ_INT(http_head_parse_request(s, n, &h2, &err), (long)n);
  route_decide(&cfg, &h2, NULL, &m2);
  CHECK_EQ_INT(m2.source, ROUTE_HEADER);
  CHECK_EQ_STR(m2.key, "alice");
  free(s);
  evbuffer_free(b);
  http_head_free(&h);
  http_head_free(&h2);
  route_table_free(rt);
}

static void test_names(void) {
  CHECK_EQ_STR(route_source_name(ROUTE_NONE), "none");
  CHECK_EQ_STR(route_source_name(ROUTE_HEADER), "header");
  CHECK_EQ_STR(route_source_name(ROUTE_BAGGAGE), "baggage");
  CHECK_EQ_STR(route_source_name(ROUTE_SUBDOMAIN), "subdomain");
}

int main(void) {
  test_decide_table();
  test_config_names();
  test_inject();
  test_round_trip();
  test_names();
  return check_done();
}
