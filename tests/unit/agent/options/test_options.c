/* test_options.c: the agent's flag table: defaults, every type, and that each
 * bad value is refused with a message naming the flag. */
#include <string.h>

#include "check.h"
#include "options.h"

#define ARGC(a) ((int)(sizeof(a) / sizeof(a[0])))

static char *base[] = {"kbridge-agent", "--listen", "127.0.0.1:0,[::1]:8080", "--fallback",
                             "orig.ns.svc:80", "--tunnel-listen", "0.0.0.0:7443", "--tls-dir",
                             "/tls"};

/* Parse base + extra; return the result and leave the message in err. */
static enum options_result parse(char **extra, int nextra, struct agent_options *o,
                                 char *err, size_t errlen) {
  char *argv[64];
  int argc = 0;
  for (int i = 0; i < ARGC(base); i++) argv[argc++] = base[i];
  for (int i = 0; i < nextra; i++) argv[argc++] = extra[i];
  err[0] = 0;
  return options_parse(argc, argv, o, err, errlen);
}

static void expect_error(char *flag, char *value, const char *needle) {
  static struct agent_options o;
  char err[512];
  char *extra[] = {flag, value};
  int n = value ? 2 : 1;
  CHECK_EQ_INT(parse(extra, n, &o, err, sizeof err), OPTIONS_ERROR);
  if (!strstr(err, needle)) {
    fprintf(stderr, "  error for %s %s was: %s\n", flag, value ? value : "", err);
    CHECK(0);
  }
}

int main(void) {
  static struct agent_options o;
  char err[512];

  /* defaults */
  CHECK_EQ_INT(parse(NULL, 0, &o, err, sizeof err), OPTIONS_OK);
  CHECK_EQ_INT(o.nlisten, 2);
  CHECK_EQ_STR(o.listen[0].host, "127.0.0.1");
  CHECK_EQ_INT(o.listen[0].port, 0);
  CHECK_EQ_STR(o.listen[1].host, "::1");
  CHECK_EQ_INT(o.listen[1].port, 8080);
  CHECK_EQ_STR(o.fallback.host, "orig.ns.svc");
  CHECK_EQ_INT(o.fallback.port, 80);
  CHECK_EQ_STR(o.tls_dir, "/tls");
  CHECK_EQ_STR(o.route_header, "kubernetes-route-as");
  CHECK_EQ_INT(o.max_header_bytes, 32768);
  CHECK_EQ_INT(o.header_timeout_ms, 10000);
  CHECK_EQ_INT(o.idle_timeout_ms, 60000);
  CHECK_EQ_INT(o.sniff_timeout_ms, 500);
  CHECK_EQ_INT(o.exclusive, 0);
  CHECK_EQ_INT(o.have_metrics, 0);
  CHECK_EQ_INT(o.log_level, LOGL_INFO);
  /* issue 16: send timeout, buffer budget, pending-tunnel cap and handshake time */
  CHECK_EQ_INT(o.send_timeout_ms, 60000);
  CHECK_EQ_INT(o.buffer_budget, 33554432);
  CHECK_EQ_INT(o.max_pending_tunnels, 64);
  CHECK_EQ_INT(o.tunnel_handshake_timeout_ms, 10000);

  /* every type, both spellings */
  char *all[] = {"--exclusive", "--route-header=x-route", "--metrics", "127.0.0.1:0",
                       "--log-level", "debug", "--max-header-bytes", "1024",
                       "--header-timeout-ms=50", "--max-conns", "7"};
  CHECK_EQ_INT(parse(all, ARGC(all), &o, err, sizeof err), OPTIONS_OK);
  CHECK_EQ_INT(o.exclusive, 1);
  CHECK_EQ_STR(o.route_header, "x-route");
  CHECK_EQ_INT(o.have_metrics, 1);
  CHECK_EQ_INT(o.log_level, LOGL_DEBUG);
  CHECK_EQ_INT(o.max_header_bytes, 1024);
  CHECK_EQ_INT(o.header_timeout_ms, 50);
  CHECK_EQ_INT(o.max_conns, 7);

  /* bad values name their flag */
  expect_error("--max-conns", "0", "--max-conns");
  expect_error("--max-conns", "12abc", "--max-conns");
  expect_error("--send-timeout-ms", "0", "--send-timeout-ms");
  expect_error("--buffer-budget", "100", "--buffer-budget");
  expect_error("--max-pending-tunnels", "0", "--max-pending-tunnels");
  expect_error("--idle-timeout-ms", "-5", "--idle-timeout-ms");
  expect_error("--log-level", "loud", "--log-level");
  expect_error("--metrics", "nohost", "--metrics");
  expect_error("--route-header", "bad header", "--route-header");
  expect_error("--exclusive=1", NULL, "--exclusive");
  expect_error("--bogus", NULL, "--bogus");
  expect_error("--listen", "1.2.3.4:1", "--listen: given more than once");
  expect_error("--max-header-bytes", NULL, "--max-header-bytes: expected N, got nothing");
  expect_error("positional", NULL, "positional");

  /* a required flag missing */
  char *argv[] = {"kbridge-agent", "--listen", "127.0.0.1:0"};
  CHECK_EQ_INT(options_parse(ARGC(argv), argv, &o, err, sizeof err), OPTIONS_ERROR);
  CHECK(strstr(err, "--fallback") != NULL);

  /* --fallback needs a real port */
  char *argv2[] = {"kbridge-agent", "--listen", "127.0.0.1:0", "--fallback", "h:0",
                         "--tunnel-listen", "127.0.0.1:0", "--tls-dir", "/t"};
  CHECK_EQ_INT(options_parse(ARGC(argv2), argv2, &o, err, sizeof err), OPTIONS_ERROR);
  CHECK(strstr(err, "--fallback") != NULL);
  return check_done();
}
