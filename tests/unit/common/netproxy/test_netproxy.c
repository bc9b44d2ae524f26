/* test_netproxy.c: which proxy a connection to the API server uses
 * (netproxy_choose: proxy-url, then HTTPS_PROXY/https_proxy, NO_PROXY/no_proxy,
 * loopback), the NO_PROXY forms, proxy URL parsing and Basic credentials. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "netproxy.h"

static void clear_env(void) {
  const char *v[] = {"HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY",
                     "no_proxy"};
  for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) unsetenv(v[i]);
}

/* The choice for an https server host:port, "" for none. */
static char got[512];
static const char *choose(const char *proxy_url, const char *host, int port) {
  const char *src;
  char *p = netproxy_choose(proxy_url, 1, host, port, &src);
  snprintf(got, sizeof got, "%s%s%s", p ? p : "", p ? " from " : "", p ? src : "");
  free(p);
  return got;
}

static void test_choose(void) {
  clear_env();
  CHECK_EQ_STR(choose(NULL, "api.example.com", 6443), "");
  CHECK_EQ_STR(choose("http://p:3128", "api.example.com", 6443), "http://p:3128 from proxy-url");
  setenv("https_proxy", "http://lower:1", 1);
  CHECK_EQ_STR(choose(NULL, "api.example.com", 6443), "http://lower:1 from $https_proxy");
  setenv("HTTPS_PROXY", "upper:3128", 1); /* no scheme: http:// */
  CHECK_EQ_STR(choose(NULL, "api.example.com", 6443), "http://upper:3128 from $HTTPS_PROXY");
  /* proxy-url wins over the environment, and NO_PROXY does not apply to it */
  setenv("NO_PROXY", "example.com", 1);
  CHECK_EQ_STR(choose("http://p:3128", "api.example.com", 6443), "http://p:3128 from proxy-url");
  CHECK_EQ_STR(choose(NULL, "api.example.com", 6443), "");
  CHECK_EQ_STR(choose(NULL, "api.example.org", 6443), "http://upper:3128 from $HTTPS_PROXY");
  unsetenv("NO_PROXY");
  setenv("no_proxy", ".example.org", 1);
  CHECK_EQ_STR(choose(NULL, "api.example.org", 6443), "");
  /* loopback never goes through an environment proxy (as kubectl) */
  CHECK_EQ_STR(choose(NULL, "127.0.0.1", 6443), "");
  CHECK_EQ_STR(choose(NULL, "127.5.0.1", 6443), "");
  CHECK_EQ_STR(choose(NULL, "::1", 6443), "");
  CHECK_EQ_STR(choose(NULL, "LOCALHOST", 6443), "");
  CHECK_EQ_STR(choose(NULL, "10.245.3.1", 6443), "http://upper:3128 from $HTTPS_PROXY");
  CHECK_EQ_STR(choose("http://p:3128", "127.0.0.1", 6443), "http://p:3128 from proxy-url");
  /* an http:// server looks at HTTP_PROXY, not HTTPS_PROXY */
  const char *src;
  char *p = netproxy_choose(NULL, 0, "api.example.com", 8080, &src);
  CHECK(p == NULL);
  free(p);
  setenv("http_proxy", "http://plain:8080", 1);
  p = netproxy_choose(NULL, 0, "api.example.com", 8080, &src);
  CHECK_EQ_STR(p, "http://plain:8080");
  CHECK_EQ_STR(src, "$http_proxy");
  free(p);
  clear_env();
}

static void test_no_proxy(void) {
  struct {
    const char *list, *host;
    int port, want;
  } c[] = {
      {"*", "anything.example", 443, 1},
      {"example.com", "example.com", 443, 1},
      {"example.com", "api.example.com", 443, 1},
      {"example.com", "API.Example.COM.", 443, 1},
      {"example.com", "badexample.com", 443, 0},
      {".example.com", "example.com", 443, 0},
      {".example.com", "api.example.com", 443, 1},
      {"*.example.com", "api.example.com", 443, 1},
      {"*.example.com", "example.com", 443, 0},
      {"a.test, example.com:6443", "api.example.com", 6443, 1},
      {"example.com:6443", "api.example.com", 443, 0},
      {" 10.0.0.0/8 ,x", "10.245.3.1", 6443, 1},
      {"10.0.0.0/16", "10.245.3.1", 6443, 0},
      {"10.0.0.0/8", "api.example.com", 6443, 0},
      {"10.245.3.1", "10.245.3.1", 6443, 1},
      {"10.245.3.1:6443", "10.245.3.1", 6443, 1},
      {"10.245.3.1:443", "10.245.3.1", 6443, 0},
      {"10.245.3.2", "10.245.3.1", 6443, 0},
      {"fd00::/8", "fd00::5", 6443, 1},
      {"[fd00::5]:6443", "fd00::5", 6443, 1},
      {"fd00::5", "FD00:0::5", 6443, 1},
      {"", "example.com", 443, 0},
      {",,", "example.com", 443, 0},
  };
  for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
    int r = netproxy_no_proxy_match(c[i].list, c[i].host, c[i].port);
    CHECK_EQ_INT(r, c[i].want);
    if (r != c[i].want)
      fprintf(stderr, "NO_PROXY=\"%s\" host %s:%d\n", c[i].list, c[i].host, c[i].port);
  }
}

static void test_parse(void) {
  struct netproxy p;
  char err[300];
  CHECK_EQ_INT(netproxy_parse("http://proxy.corp:3128", &p, err, sizeof err), 0);
  CHECK_EQ_STR(p.scheme, "http");
  CHECK_EQ_STR(p.host, "proxy.corp");
  CHECK_EQ_INT(p.port, 3128);
  CHECK(p.user == NULL && p.pass == NULL);
  CHECK_EQ_STR(p.url, "http://proxy.corp:3128");
  CHECK_EQ_INT(netproxy_basic_auth(&p, err, sizeof err), 1);
  netproxy_clear(&p);

  CHECK_EQ_INT(netproxy_parse("HTTP://al%40ice:p%3Ass@[fd00::1]/", &p, err, sizeof err), 0);
  CHECK_EQ_STR(p.scheme, "http");
  CHECK_EQ_STR(p.host, "fd00::1");
  CHECK_EQ_INT(p.port, 80); /* written out, so curl and the carrier agree */
  CHECK_EQ_STR(p.user, "al@ice");
  CHECK_EQ_STR(p.pass, "p:ss");
  CHECK_EQ_STR(p.url, "http://al%40ice:p%3Ass@[fd00::1]:80");
  CHECK_EQ_STR(p.shown, "http://[fd00::1]:80");
  CHECK_EQ_INT(netproxy_basic_auth(&p, err, sizeof err), 0);
  CHECK_EQ_STR(err, "Basic YWxAaWNlOnA6c3M="); /* base64("al@ice:p:ss") */
  netproxy_clear(&p);

  CHECK_EQ_INT(netproxy_parse("socks5://u@s:1", &p, err, sizeof err), 0);
  CHECK_EQ_STR(p.scheme, "socks5");
  CHECK_EQ_STR(p.user, "u");
  CHECK(p.pass == NULL);
  CHECK_EQ_INT(netproxy_basic_auth(&p, err, sizeof err), 0);
  CHECK_EQ_STR(err, "Basic dTo=");
  netproxy_clear(&p);
  CHECK_EQ_INT(netproxy_parse("socks5://s", &p, err, sizeof err), 0);
  CHECK_EQ_INT(p.port, 1080);
  netproxy_clear(&p);

  const char *bad[][2] = {{"proxy:3128", "no scheme"},
                          {"http://", "bad host"},
                          {"http://h:0", "bad host"},
                          {"http://h:70000", "bad host"},
                          {"http://h:12x", "bad host"},
                          {"http://[::1", "bad host"},
                          {"http://h:1/path", "a path after the host"},
                          {"http://u:%zz@h:1", "bad %-escape"}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    err[0] = 0;
    CHECK_EQ_INT(netproxy_parse(bad[i][0], &p, err, sizeof err), -1);
    CHECK(strstr(err, bad[i][1]) != NULL);
    CHECK(strstr(err, "%zz") == NULL); /* credentials are never in a message */
    if (!strstr(err, bad[i][1])) fprintf(stderr, "%s: %s\n", bad[i][0], err);
  }
}

int main(void) {
  test_choose();
  test_no_proxy();
  test_parse();
  return check_done();
}
