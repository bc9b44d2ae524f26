/* Unit tests of local-proxy/envrefs.c: the reference syntax, its errors, the
 * expansion through a resolver, and the override list's order and checks. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "envrefs.h"

/* A resolver with a fixed world: Service store (ports 8080 "http" and 9090
 * "metrics"), a forward to db:5432, volume config, variable HOME. It records
 * the last reference it was given. */
static struct envref last;
static int calls;
static int resolve(void *arg, const struct envref *r, char *out, size_t len, char *why,
                   size_t whylen) {
  (void)arg;
  last = *r;
  calls++;
  switch (r->kind) {
  case ENVREF_SERVICES:
    if (strcmp(r->name, "store") != 0) break;
    if (!r->port[0] || r->portnum == 8080 || strcmp(r->port, "http") == 0) {
      snprintf(out, len, "127.1.0.2:8080");
      return 0;
    }
    if (r->portnum == 9090 || strcmp(r->port, "metrics") == 0) {
      snprintf(out, len, "127.1.0.2:9090");
      return 0;
    }
    snprintf(why, whylen, "Service store has no TCP port %s", r->port);
    return -1;
  case ENVREF_FORWARD:
    if (strcmp(r->name, "db") == 0 && r->portnum == 5432) {
      snprintf(out, len, "127.0.0.1:41000");
      return 0;
    }
    if (strcmp(r->name, "::1") == 0 && r->portnum == 80) {
      snprintf(out, len, "[::1]:41001");
      return 0;
    }
    break;
  case ENVREF_VOLUMES:
    if (strcmp(r->name, "config") == 0) {
      snprintf(out, len, "/tmp/v/etc/config");
      return 0;
    }
    break;
  case ENVREF_ENV:
    snprintf(out, len, "%s", strcmp(r->name, "HOME") == 0 ? "/home/a" : "");
    return 0;
  }
  snprintf(why, whylen, "no such thing as \"%s\"", r->name);
  return -1;
}

/* value expanded with resolve, or NULL (err set). */
static char got[2000], err[1200];
static const char *expand(const char *value) {
  char *out = NULL;
  err[0] = '\0';
  if (envref_expand(value, resolve, NULL, &out, err, sizeof err) < 0) return NULL;
  snprintf(got, sizeof got, "%s", out);
  free(out);
  return got;
}

/* value fails with an error containing want (syntax only, no resolver). */
static int syntax_error(const char *value, const char *want) {
  err[0] = '\0';
  int rc = envref_expand(value, NULL, NULL, NULL, err, sizeof err);
  if (rc == 0 || !strstr(err, want)) {
    fprintf(stderr, "  %s -> rc %d, err \"%s\" (wanted \"%s\")\n", value, rc, err, want);
    return 0;
  }
  return 1;
}

static void test_expand(void) {
  CHECK_EQ_STR(expand(""), "");
  CHECK_EQ_STR(expand("plain text, no refs"), "plain text, no refs");
  CHECK_EQ_STR(expand("http://$(services:store)/v1"), "http://127.1.0.2:8080/v1");
  CHECK_EQ_INT(last.kind, ENVREF_SERVICES);
  CHECK_EQ_STR(last.port, "");
  CHECK_EQ_STR(expand("$(services:store:9090)"), "127.1.0.2:9090");
  CHECK_EQ_INT(last.portnum, 9090);
  CHECK_EQ_STR(expand("$(services:store:metrics)"), "127.1.0.2:9090");
  CHECK_EQ_STR(last.port, "metrics");
  CHECK_EQ_INT(last.portnum, 0);
  CHECK_EQ_STR(expand("postgres://u@$(forward:db:5432)/x"), "postgres://u@127.0.0.1:41000/x");
  CHECK_EQ_INT(last.kind, ENVREF_FORWARD);
  CHECK_EQ_STR(last.name, "db");
  CHECK_EQ_STR(expand("$(forward:[::1]:80)"), "[::1]:41001");
  CHECK_EQ_STR(last.name, "::1");
  CHECK_EQ_STR(expand("$(volumes:config)/app.yaml"), "/tmp/v/etc/config/app.yaml");
  CHECK_EQ_STR(expand("$(env:HOME)/bin:$(env:NOPE)"), "/home/a/bin:");
  CHECK_EQ_INT(last.kind, ENVREF_ENV);
  /* $$ is a '$', and what follows it is not a reference */
  CHECK_EQ_STR(expand("pa$$word"), "pa$word");
  CHECK_EQ_STR(expand("$$(services:store)"), "$(services:store)");
  CHECK_EQ_STR(expand("$$$(services:store)$$"), "$127.1.0.2:8080$");
  /* several in one value, adjacent */
  CHECK_EQ_STR(expand("$(services:store)$(forward:db:5432)"), "127.1.0.2:8080127.0.0.1:41000");
  /* the reference as written is passed along */
  expand("x $(volumes:config) y");
  CHECK_EQ_INT(last.textlen, strlen("$(volumes:config)"));
  CHECK(strncmp(last.text, "$(volumes:config)", last.textlen) == 0);
  /* the resolver's refusal, after the reference */
  CHECK(expand("a $(services:shop) b") == NULL);
  CHECK_EQ_STR(err, "$(services:shop): no such thing as \"shop\"");
  CHECK(expand("$(services:store:grpc)") == NULL);
  CHECK_EQ_STR(err, "$(services:store:grpc): Service store has no TCP port grpc");
  CHECK(expand("$(forward:db:5433)") == NULL);
  CHECK(strstr(err, "$(forward:db:5433): ") == err);
  /* a value longer than the resolver's buffer pieces: kept whole */
  char big[1500];
  memset(big, 'a', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  CHECK_EQ_INT(strlen(expand(big)), sizeof big - 1);
}

static void test_syntax(void) {
  calls = 0;
  CHECK(envref_expand("$(services:store) $(env:A)", NULL, NULL, NULL, err, sizeof err) == 0);
  CHECK_EQ_INT(calls, 0); /* no resolver: syntax only */
  CHECK(syntax_error("$(servics:store)", "$(servics:store): unknown reference kind \"servics\" "
                                         "(expected services, forward, volumes or env)"));
  CHECK(syntax_error("$(SERVICES:store)", "unknown reference kind \"SERVICES\""));
  CHECK(syntax_error("$(store)", "$(store): expected $(KIND:NAME)"));
  CHECK(syntax_error("$()", "expected $(KIND:NAME)"));
  CHECK(syntax_error("$(:x)", "unknown reference kind \"\""));
  CHECK(syntax_error("x $(services:store", "a reference not closed"));
  CHECK(syntax_error("$(services:a $(env:B)", "a reference not closed"));
  CHECK(syntax_error("${HOME}", "\"${\" at offset 0: a '$' starts a reference"));
  CHECK(syntax_error("cost: 5$", "at offset 7"));
  CHECK(syntax_error("a$b", "write $$ for a '$' itself"));
  CHECK(syntax_error("$(services:)", "with NAME a Service name"));
  CHECK(syntax_error("$(services:Store)", "got \"Store\""));
  CHECK(syntax_error("$(services:store.shop)", "got \"store.shop\""));
  CHECK(syntax_error("$(services:store:)", "with PORT a port number 1-65535 or a port name"));
  CHECK(syntax_error("$(services:store:0)", "got \"0\""));
  CHECK(syntax_error("$(services:store:70000)", "got \"70000\""));
  CHECK(syntax_error("$(services:store:http:x)", "got \"http:x\""));
  CHECK(syntax_error("$(forward:store)", "expected $(forward:HOST:PORT)"));
  CHECK(syntax_error("$(forward:store:0)", "expected $(forward:HOST:PORT)"));
  CHECK(syntax_error("$(forward::80)", "expected $(forward:HOST:PORT)"));
  CHECK(syntax_error("$(volumes:)", "with NAME a volume of the pod"));
  CHECK(syntax_error("$(volumes:a/b)", "got \"a/b\""));
  CHECK(syntax_error("$(env:)", "expected $(env:NAME)"));
  CHECK(syntax_error("$(env:A B)", "expected $(env:NAME)"));
  CHECK(syntax_error("$(env:A=B)", "expected $(env:NAME)"));
  char longref[400];
  snprintf(longref, sizeof longref, "$(env:%0350d)", 0);
  CHECK(syntax_error(longref, "too long"));
  /* the parsed parts */
  CHECK(expand("$(services:a-b:8080)") == NULL);
  CHECK_EQ_INT(last.kind, ENVREF_SERVICES);
  CHECK_EQ_STR(last.name, "a-b");
  CHECK_EQ_STR(last.port, "8080");
  CHECK_EQ_INT(last.portnum, 8080);
}

static void test_overrides(void) {
  struct envref_overrides o;
  char why[1200];
  memset(&o, 0, sizeof o);
  CHECK(envref_add(&o, "A=1", why, sizeof why) == 0);
  CHECK(envref_add(&o, "B=$(services:store)", why, sizeof why) == 0);
  CHECK(envref_add(&o, "C=", why, sizeof why) == 0);       /* an empty value */
  CHECK(envref_add(&o, "D=x=y", why, sizeof why) == 0);    /* '=' in the value */
  CHECK_EQ_INT(o.n, 4);
  CHECK_EQ_INT(o.v[3].namelen, 1);
  /* a name again: replaced in place (the command line after the file) */
  CHECK(envref_add(&o, "A=2", why, sizeof why) == 0);
  CHECK_EQ_INT(o.n, 4);
  CHECK_EQ_STR(o.v[0].entry, "A=2");
  CHECK(envref_add(&o, "AB=3", why, sizeof why) == 0); /* a longer name is another name */
  CHECK_EQ_INT(o.n, 5);
  CHECK(envref_uses(&o, ENVREF_SERVICES));
  CHECK(!envref_uses(&o, ENVREF_FORWARD));
  CHECK(!envref_uses(&o, ENVREF_VOLUMES));
  /* refusals leave the list as it was */
  CHECK(envref_add(&o, "A", why, sizeof why) < 0);
  CHECK_EQ_STR(why, "expected NAME=VALUE, got \"A\" (missing '=')");
  CHECK(envref_add(&o, "=x", why, sizeof why) < 0);
  CHECK(strstr(why, "(no NAME)") != NULL);
  CHECK(envref_add(&o, "MY VAR=x", why, sizeof why) < 0);
  CHECK(strstr(why, "got \"MY VAR\"") != NULL);
  CHECK(envref_add(&o, "E=$(volume:config)", why, sizeof why) < 0);
  CHECK_EQ_STR(why, "E: $(volume:config): unknown reference kind \"volume\" (expected services, "
                    "forward, volumes or env)");
  CHECK(envref_add(&o, "A=$HOME", why, sizeof why) < 0);
  CHECK_EQ_STR(o.v[0].entry, "A=2");
  CHECK_EQ_INT(o.n, 5);
  static char entries[ENVREF_MAX][16];
  for (int i = 0; i < ENVREF_MAX; i++) snprintf(entries[i], sizeof entries[i], "V%d=x", i);
  int rc = 0;
  for (int i = 0; i < ENVREF_MAX && rc == 0; i++) rc = envref_add(&o, entries[i], why, sizeof why);
  CHECK(rc < 0);
  CHECK(strstr(why, "at most 128 variables") != NULL);
  CHECK_EQ_INT(o.n, ENVREF_MAX);
  CHECK(envref_uses(&o, ENVREF_SERVICES));
}

int main(void) {
  test_expand();
  test_syntax();
  test_overrides();
  return check_done();
}
