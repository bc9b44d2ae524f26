/* test_portforward.c: the pod port-forward carrier against fake_apiserver.py.
 *
 * The test makes a throwaway server certificate with the openssl CLI, starts
 * the fake API server/kubelet (Python, TLS, on 127.0.0.1:0), and runs its "pod
 * ports" in this process: an echo server, a server that says hello and closes,
 * and a TLS echo server (for TLS on top of the carrier, as the tunnel does).
 *
 * Checks: byte-exact framing over a bufferevent pair (pf_carrier_new; split
 * port announcement, empty first fragment, ping between fragments, 7/16/64-bit
 * lengths, the client's frame format and masks, close, fragmented error text,
 * the input bound, truncation, max_frame) and the framing's throughput alone;
 * through the fake server: 20 MB both ways with position-exact comparison and an
 * FNV-1a checksum; fragmented messages with pings and a pong-waiting server; a
 * reader that stalls (the carrier's input stays at its bound and the data below
 * stays small, then everything arrives); TLS on top; a normal close; the
 * kubelet's error text (with a close frame, and with the connection dropped
 * right after it); refusals (401, 403, 404 chunked, 200 HTML), bad 101 answers,
 * protocol violations (masked frame, huge frame, wrong port, close 1011), TLS
 * refusals, a silent server (timeout), a refused TCP connect, a name with a
 * refused first address, cancel, invalid targets, the RFC 6455 accept example.
 *
 * Built with PF_TUNNEL_TEST (test_portforward_tunnel) it runs the tunnel over
 * TLS over the carrier instead. With --cluster it runs against a real API
 * server (cluster_portforward.py).
 *
 * Usage: test_portforward PATH/fake_apiserver.py */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "check.h"
#include "log.h"
#include "portforward.h"
#ifdef PF_TUNNEL_TEST
#include "tunnel.h"
#endif

#define PATTERN_LEN 1048573u /* prime: a lost or doubled byte shifts everything after it */

static struct event_base *base;
static unsigned char *pattern;
static char tmpdir[64];
static char api_url[128], api_url_prefix[160];
static uint16_t api_port, proxy_port, echo_port, hello_port, tls_echo_port, closed_port;
/* What dial() uses unless told otherwise: the fake server, or a real cluster. */
static const char *g_url = api_url, *g_ns = "shop", *g_token = "s3cret-token";
static uint16_t g_refusal_port; /* port used by the refusal tests */
static SSL_CTX *g_inner_ctx;      /* TLS on top of the carrier; NULL: ctx_ok */
static SSL_CTX *ctx_ok, *ctx_other, *srv_ctx;
static pid_t server_pid;
static struct evconnlistener *listeners[4];
static int n_listeners;
static int server_stdin = -1, server_stdout = -1;

/* ---------------- pod ports, in this process ---------------- */

static void echo_read(struct bufferevent *bev, void *arg) {
  (void)arg;
  evbuffer_add_buffer(bufferevent_get_output(bev), bufferevent_get_input(bev));
  if (evbuffer_get_length(bufferevent_get_output(bev)) > (1u << 20))
    bufferevent_disable(bev, EV_READ);
}

static void echo_write(struct bufferevent *bev, void *arg) {
  (void)arg;
  bufferevent_enable(bev, EV_READ);
}

static void echo_event(struct bufferevent *bev, short what, void *arg) {
  (void)arg;
  if (what & BEV_EVENT_CONNECTED) return; /* TLS handshake done */
  bufferevent_free(bev);
}

static void hello_write(struct bufferevent *bev, void *arg) {
  (void)arg;
  if (evbuffer_get_length(bufferevent_get_output(bev)) == 0) bufferevent_free(bev);
}

static void accept_echo(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len,
                        void *arg) {
  (void)l;
  (void)sa;
  (void)len;
  struct bufferevent *bev;
  if (arg == srv_ctx)
    bev = bufferevent_openssl_socket_new(base, fd, SSL_new(srv_ctx), BUFFEREVENT_SSL_ACCEPTING,
                                         BEV_OPT_CLOSE_ON_FREE);
  else
    bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
  bufferevent_setwatermark(bev, EV_WRITE, 256 * 1024, 0);
  bufferevent_setcb(bev, echo_read, echo_write, echo_event, NULL);
  bufferevent_enable(bev, EV_READ | EV_WRITE);
}

static void accept_hello(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                         int len, void *arg) {
  (void)l;
  (void)sa;
  (void)len;
  (void)arg;
  struct bufferevent *bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
  bufferevent_setcb(bev, NULL, hello_write, echo_event, NULL);
  bufferevent_enable(bev, EV_WRITE);
  evbuffer_add_printf(bufferevent_get_output(bev), "hello from the pod\n");
}

static uint16_t listen_on(evconnlistener_cb cb, void *arg) {
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  struct evconnlistener *l =
      evconnlistener_new_bind(base, cb, arg, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 64,
                              (struct sockaddr *)&sin, sizeof(sin));
  if (!l) {
    perror("listen");
    exit(2);
  }
  socklen_t sl = sizeof(sin);
  getsockname(evconnlistener_get_fd(l), (struct sockaddr *)&sin, &sl);
  listeners[n_listeners++] = l;
  return ntohs(sin.sin_port);
}

static uint16_t unused_port(void) {
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t sl = sizeof(sin);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  bind(fd, (struct sockaddr *)&sin, sizeof(sin));
  getsockname(fd, (struct sockaddr *)&sin, &sl);
  close(fd);
  return ntohs(sin.sin_port);
}

/* ---------------- setup: certificates and the fake server ---------------- */

static void run(const char *cmd) {
  if (system(cmd) != 0) {
    fprintf(stderr, "command failed: %s\n", cmd);
    exit(2);
  }
}

static SSL_CTX *client_ctx(const char *ca) {
  SSL_CTX *c = SSL_CTX_new(TLS_client_method());
  SSL_CTX_set_verify(c, SSL_VERIFY_PEER, NULL);
  if (SSL_CTX_load_verify_locations(c, ca, NULL) != 1) {
    fprintf(stderr, "cannot load %s\n", ca);
    exit(2);
  }
  return c;
}

static void setup(const char *script) {
  char cmd[1024], a[200], b[200];
  snprintf(tmpdir, sizeof(tmpdir), "/tmp/kb-pf-test-XXXXXX");
  if (!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    exit(2);
  }
#define GEN                                                                                  \
  "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "          \
  "-subj /CN=%s -addext subjectAltName=%s -keyout %s/%s.key -out %s/%s.crt 2>/dev/null"
  snprintf(cmd, sizeof(cmd), GEN, "localhost", "DNS:localhost,IP:127.0.0.1", tmpdir, "srv", tmpdir,
           "srv");
  run(cmd);
  snprintf(cmd, sizeof(cmd), GEN, "other", "DNS:other", tmpdir, "other", tmpdir, "other");
  run(cmd);
  snprintf(a, sizeof(a), "%s/srv.crt", tmpdir);
  snprintf(b, sizeof(b), "%s/srv.key", tmpdir);
  ctx_ok = client_ctx(a);
  snprintf(cmd, sizeof(cmd), "%s/other.crt", tmpdir);
  ctx_other = client_ctx(cmd);
  srv_ctx = SSL_CTX_new(TLS_server_method());
  if (SSL_CTX_use_certificate_file(srv_ctx, a, SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_use_PrivateKey_file(srv_ctx, b, SSL_FILETYPE_PEM) != 1) {
    fprintf(stderr, "cannot load the server certificate\n");
    exit(2);
  }

  int in[2], out[2];
  if (pipe(in) < 0 || pipe(out) < 0) exit(2);
  server_pid = fork();
  if (server_pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    close(in[1]);
    close(out[0]);
    execlp("python3", "python3", script, "--cert", a, "--key", b, "--token", "s3cret-token",
           "--prefix", "/k8s/clusters/c1", (char *)NULL);
    perror("python3");
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  server_stdin = in[1];
  char line[32] = {0};
  ssize_t n = 0, got;
  while (n < (ssize_t)sizeof(line) - 1 && !memchr(line, '\n', (size_t)n) &&
         (got = read(out[0], line + n, sizeof(line) - 1 - (size_t)n)) > 0)
    n += got; /* the whole first line: "PORT PROXY-PORT\n" */
  server_stdout = out[0];
  if (n <= 0 || atoi(line) <= 0) {
    fprintf(stderr, "the fake API server did not start\n");
    exit(2);
  }
  api_port = (uint16_t)atoi(line);
  unsigned pp = 0;
  if (sscanf(line, "%*u %u", &pp) != 1 || pp == 0 || pp > 65535) {
    fprintf(stderr, "the fake API server did not say its proxy port\n");
    exit(2);
  }
  proxy_port = (uint16_t)pp;
  snprintf(api_url, sizeof(api_url), "https://localhost:%u", api_port);
  snprintf(api_url_prefix, sizeof(api_url_prefix), "https://127.0.0.1:%u/k8s/clusters/c1/",
           api_port);

  pattern = malloc(PATTERN_LEN);
  srand(12345);
  for (size_t i = 0; i < PATTERN_LEN; i++) pattern[i] = (unsigned char)(rand() >> 7);
  if (getenv("PF_DUMP")) {
    char f[256];
    snprintf(f, sizeof(f), "%s.pattern", getenv("PF_DUMP"));
    FILE *fp = fopen(f, "wb");
    fwrite(pattern, 1, PATTERN_LEN, fp);
    fclose(fp);
  }
  echo_port = listen_on(accept_echo, NULL);
  hello_port = listen_on(accept_hello, NULL);
  tls_echo_port = listen_on(accept_echo, srv_ctx);
  closed_port = unused_port();
}

static void teardown(void) {
  close(server_stdin); /* the server exits when its stdin closes */
  close(server_stdout);
  int st;
  waitpid(server_pid, &st, 0);
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
}

/* ---------------- connecting ---------------- */

struct dial_result {
  int done;
  struct bufferevent *bev;
  char err[2048];
  int status;
};

static void on_ready(struct bufferevent *bev, const char *err, int status, void *arg) {
  struct dial_result *r = arg;
  r->done = 1;
  r->bev = bev;
  r->status = status;
  snprintf(r->err, sizeof(r->err), "%s", err ? err : "");
  event_base_loopbreak(base);
}

static void watchdog(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  *(int *)arg = 1;
  event_base_loopbreak(base);
}

/* Run the loop until *flag or the watchdog (seconds). Returns 0, or -1 on timeout. */
static int loop_until(int *flag, int seconds) {
  int fired = 0;
  struct event *wd = evtimer_new(base, watchdog, &fired);
  struct timeval tv = {seconds, 0};
  evtimer_add(wd, &tv);
  while (!*flag && !fired) event_base_loop(base, EVLOOP_ONCE);
  event_free(wd);
  return *flag ? 0 : -1;
}

struct opts {
  struct evdns_base *dns;
  const char *url;
  SSL_CTX *ctx;
  const char *sni;
  const char *token;
  unsigned timeout_ms;
  const char *proxy;
};

static struct bufferevent *dial(const char *pod, uint16_t port, const struct opts *o,
                                struct dial_result *r) {
  struct pf_target t = {
      .server_url = o && o->url ? o->url : g_url,
      .ssl_ctx = o && o->ctx ? o->ctx : ctx_ok,
      .tls_server_name = o ? o->sni : NULL,
      .bearer_token = o && o->token ? (o->token[0] ? o->token : NULL) : g_token,
      .ns = g_ns,
      .pod = pod,
      .port = port,
      .timeout_ms = o ? o->timeout_ms : 0,
      .proxy_url = o ? o->proxy : NULL,
  };
  char err[256];
  memset(r, 0, sizeof(*r));
  struct pf_connecting *c =
      pf_connect(base, o ? o->dns : NULL, &t, on_ready, r, err, sizeof(err));
  if (!c) {
    snprintf(r->err, sizeof(r->err), "pf_connect: %s", err);
    return NULL;
  }
  if (loop_until(&r->done, 20) < 0) {
    pf_connect_cancel(c);
    snprintf(r->err, sizeof(r->err), "no answer from pf_connect in 20 s");
    return NULL;
  }
  return r->bev;
}

/* ---------------- a session over the carrier ---------------- */

struct sess {
  struct bufferevent *bev;     /* what we read and write: the carrier or TLS over it */
  struct bufferevent *carrier;
  struct evbuffer *got;        /* small tests: everything read */
  int bulk;
  uint64_t total, sent, recvd;
  uint64_t fnv_sent, fnv_recv;
  int mismatch;
  int stalled;
  size_t max_in, max_api_in;
  short end;
  char enderr[1500];
  int done;
};

static uint64_t fnv(uint64_t h, const unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

static void fill(struct sess *s) {
  struct evbuffer *out = bufferevent_get_output(s->bev);
  while (s->sent < s->total && evbuffer_get_length(out) < 512 * 1024) {
    size_t off = (size_t)(s->sent % PATTERN_LEN);
    size_t n = PATTERN_LEN - off;
    if (n > 65536) n = 65536;
    if (n > s->total - s->sent) n = (size_t)(s->total - s->sent);
    /* Count first: adding runs the carrier's filter, which may call sess_write
     * (and so fill) again before evbuffer_add returns. */
    s->fnv_sent = fnv(s->fnv_sent, pattern + off, n);
    s->sent += n;
    evbuffer_add(out, pattern + off, n);
  }
}

static void consume(struct sess *s) {
  struct evbuffer *in = bufferevent_get_input(s->bev);
  size_t len;
  while ((len = evbuffer_get_length(in)) > 0) {
    struct evbuffer_iovec v;
    evbuffer_peek(in, -1, NULL, &v, 1);
    size_t n = v.iov_len;
    size_t off = (size_t)(s->recvd % PATTERN_LEN);
    if (n > PATTERN_LEN - off) n = PATTERN_LEN - off;
    if (memcmp(v.iov_base, pattern + off, n) != 0 && !s->mismatch) {
      s->mismatch = 1;
      size_t k = 0;
      while (((const unsigned char *)v.iov_base)[k] == pattern[off + k]) k++;
      fprintf(stderr, "data mismatch at offset %llu:", (unsigned long long)(s->recvd + k));
      for (size_t j = k; j < k + 8 && j < n; j++)
        fprintf(stderr, " %02x/%02x", ((const unsigned char *)v.iov_base)[j], pattern[off + j]);
      fprintf(stderr, "\n");
    }
    s->fnv_recv = fnv(s->fnv_recv, v.iov_base, n);
    s->recvd += n;
    evbuffer_drain(in, n);
  }
  if (s->recvd >= s->total && s->sent >= s->total) {
    s->done = 1;
    event_base_loopbreak(base);
  }
}

static void sess_read(struct bufferevent *bev, void *arg) {
  struct sess *s = arg;
  struct evbuffer *in = bufferevent_get_input(bev);
  if (!s->bulk) {
    evbuffer_add_buffer(s->got, in);
    return;
  }
  if (evbuffer_get_length(in) > s->max_in) s->max_in = evbuffer_get_length(in);
  struct bufferevent *u = bufferevent_get_underlying(s->carrier);
  if (u && evbuffer_get_length(bufferevent_get_input(u)) > s->max_api_in)
    s->max_api_in = evbuffer_get_length(bufferevent_get_input(u));
  if (!s->stalled) consume(s);
}

static void sess_write(struct bufferevent *bev, void *arg) {
  (void)bev;
  struct sess *s = arg;
  if (s->bulk) fill(s);
}

static void sess_event(struct bufferevent *bev, short what, void *arg) {
  struct sess *s = arg;
  (void)bev;
  if (what & BEV_EVENT_CONNECTED) return; /* TLS on top: handshake done */
  s->end = what;
  const char *e = pf_carrier_error(s->carrier);
  snprintf(s->enderr, sizeof(s->enderr), "%s", e ? e : "");
  s->done = 1;
  event_base_loopbreak(base);
}

static void sess_start(struct sess *s, struct bufferevent *carrier, SSL *tls_on_top) {
  memset(s, 0, sizeof(*s));
  s->carrier = carrier;
  s->bev = carrier;
  s->got = evbuffer_new();
  s->fnv_sent = s->fnv_recv = 14695981039346656037ull;
  if (tls_on_top)
    s->bev = bufferevent_openssl_filter_new(base, carrier, tls_on_top, BUFFEREVENT_SSL_CONNECTING,
                                            BEV_OPT_CLOSE_ON_FREE);
  bufferevent_setcb(s->bev, sess_read, sess_write, sess_event, s);
  bufferevent_enable(s->bev, EV_READ | EV_WRITE);
}

static void sess_free(struct sess *s) {
  bufferevent_free(s->bev);
  evbuffer_free(s->got);
}

static double cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec / 1e6;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Echo `total` bytes through a carrier to pod `pod`: all must come back. */
static void bulk(const char *name, const char *pod, uint16_t port, uint64_t total, int tls,
                 const struct opts *o) {
  struct dial_result r;
  struct sess s;
  struct bufferevent *c = dial(pod, port, o, &r);
  CHECK(c != NULL);
  if (!c) {
    fprintf(stderr, "%s: %s\n", name, r.err);
    return;
  }
  CHECK_EQ_INT(r.status, 101);
  SSL *ssl = NULL;
  if (tls) {
    ssl = SSL_new(g_inner_ctx ? g_inner_ctx : ctx_ok);
    SSL_set1_host(ssl, "localhost");
  }
  sess_start(&s, c, ssl);
  s.bulk = 1;
  s.total = total;
  double t0 = now_s(), c0 = cpu_s();
  fill(&s);
  int rc = loop_until(&s.done, 120);
  double dt = now_s() - t0, cpu = cpu_s() - c0;
  CHECK_EQ_INT(rc, 0);
  CHECK_EQ_INT(s.end, 0);
  if (s.end) fprintf(stderr, "%s: ended early: %s\n", name, s.enderr);
  CHECK_EQ_INT(s.recvd, total);
  CHECK_EQ_INT(s.mismatch, 0);
  CHECK(s.fnv_sent == s.fnv_recv);
  struct pf_stats st;
  CHECK_EQ_INT(pf_carrier_stats(c, &st), 0);
  CHECK_EQ_INT(st.bytes_out, tls ? st.bytes_out : total);
  CHECK(st.bytes_in >= total);
  printf("%s: %.1f MB each way in %.2f s (%.0f MB/s each way; this process %.2f CPU s, "
         "%.1f CPU s per GB moved), frames in %llu out %llu, pings %llu, fnv %016llx\n",
         name, total / 1e6, dt, total / 1e6 / dt, cpu, cpu / (2.0 * total / 1e9),
         (unsigned long long)st.frames_in,
         (unsigned long long)st.frames_out, (unsigned long long)st.pings,
         (unsigned long long)s.fnv_recv);
  if (strncmp(pod, "frag", 4) == 0) CHECK(st.pings > 0);
  sess_free(&s);
}

/* Connect, read until the stream ends; returns the session's end flags and text. */
static void expect_end(const char *name, const char *pod, uint16_t port, short want,
                       const char *want_data, const char *want_err) {
  struct dial_result r;
  struct sess s;
  struct bufferevent *c = dial(pod, port, NULL, &r);
  CHECK(c != NULL);
  if (!c) {
    fprintf(stderr, "%s: %s\n", name, r.err);
    return;
  }
  sess_start(&s, c, NULL);
  CHECK_EQ_INT(loop_until(&s.done, 20), 0);
  CHECK(s.end & want);
  CHECK(s.end & BEV_EVENT_READING);
  size_t n = evbuffer_get_length(s.got);
  char *data = calloc(1, n + 1);
  evbuffer_remove(s.got, data, n);
  if (want_data) CHECK_EQ_STR(data, want_data);
  if (want_err) {
    CHECK(strstr(s.enderr, want_err) != NULL);
    if (!strstr(s.enderr, want_err)) fprintf(stderr, "%s: error was \"%s\"\n", name, s.enderr);
  } else {
    CHECK_EQ_STR(s.enderr, "");
  }
  printf("%s: %s%s%s\n", name, s.end & BEV_EVENT_ERROR ? "ERROR" : "EOF",
         s.enderr[0] ? ": " : "", s.enderr);
  free(data);
  sess_free(&s);
}

static char g_last_err[2048]; /* the last refusal's message */

static void expect_refusal(const char *name, const char *pod, const struct opts *o,
                           int want_status, const char *want1, const char *want2) {
  struct dial_result r;
  struct bufferevent *c = dial(pod, g_refusal_port, o, &r);
  CHECK(c == NULL);
  if (c) bufferevent_free(c);
  CHECK_EQ_INT(r.status, want_status);
  CHECK(strstr(r.err, want1) != NULL);
  if (want2) CHECK(strstr(r.err, want2) != NULL);
  printf("%s: [%d] %s\n", name, r.status, r.err);
  snprintf(g_last_err, sizeof(g_last_err), "%s", r.err);
}

/* A reader that stops draining for a while: the carrier's input must stop at its
 * high mark, the API-server connection below must stay small, and after the
 * reader resumes every byte must arrive. */
static void stall_resume(evutil_socket_t fd, short what, void *arg) {
  struct sess *s = arg;
  (void)fd;
  (void)what;
  s->stalled = 0;
  consume(s);
}

static void test_stalled_reader(void) {
  struct dial_result r;
  struct sess s;
  struct bufferevent *c = dial("echo-stall", echo_port, NULL, &r);
  CHECK(c != NULL);
  if (!c) return;
  sess_start(&s, c, NULL);
  s.bulk = 1;
  s.total = 8u << 20;
  s.stalled = 1;
  fill(&s);
  struct event *t = evtimer_new(base, stall_resume, &s);
  struct timeval tv = {1, 500000};
  evtimer_add(t, &tv);
  CHECK_EQ_INT(loop_until(&s.done, 60), 0);
  event_free(t);
  CHECK_EQ_INT(s.recvd, s.total);
  CHECK_EQ_INT(s.mismatch, 0);
  CHECK(s.max_in <= PF_DEFAULT_HIGH);
  CHECK(s.max_api_in <= 1024 * 1024);
  printf("stalled reader: carrier input peaked at %zu bytes (high mark %d), API-server input at "
         "%zu; all %llu bytes arrived after the stall\n",
         s.max_in, PF_DEFAULT_HIGH, s.max_api_in, (unsigned long long)s.recvd);
  sess_free(&s);
}

/* ---------------- framing, byte-exact, over a bufferevent pair ---------------- *
 * pf_carrier_new() over one end of a pair; the test plays the server on the
 * other end with hand-made frames and decodes what the client sends. */

struct pairt {
  struct bufferevent *peer; /* the server's end */
  struct sess s;
};

static void pair_open(struct pairt *p, size_t max_frame) {
  struct bufferevent *pair[2];
  bufferevent_pair_new(base, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS, pair);
  struct bufferevent *c = pf_carrier_new(pair[0], 5000, max_frame, "pod t/p port 5000");
  CHECK(c != NULL);
  sess_start(&p->s, c, NULL);
  p->peer = pair[1];
  bufferevent_enable(p->peer, EV_READ | EV_WRITE);
}

static void pair_close(struct pairt *p) {
  sess_free(&p->s);
  bufferevent_free(p->peer);
}

/* A server frame (never masked). */
static void sframe(struct pairt *p, int b0, const void *payload, size_t len) {
  uint8_t h[10];
  size_t hl = 2;
  h[0] = (uint8_t)b0;
  if (len < 126) {
    h[1] = (uint8_t)len;
  } else if (len < 65536) {
    h[1] = 126, h[2] = (uint8_t)(len >> 8), h[3] = (uint8_t)len, hl = 4;
  } else {
    h[1] = 127, hl = 10;
    for (int i = 0; i < 8; i++) h[2 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
  }
  evbuffer_add(bufferevent_get_output(p->peer), h, hl);
  evbuffer_add(bufferevent_get_output(p->peer), payload, len);
}

/* One binary message: channel byte + len bytes of data. */
static void sdata(struct pairt *p, uint8_t ch, const void *data, size_t len) {
  uint8_t *m = malloc(len + 1);
  m[0] = ch;
  memcpy(m + 1, data, len);
  sframe(p, 0x82, m, len + 1);
  free(m);
}

static void announce(struct pairt *p) {
  sframe(p, 0x82, "\x00\x88\x13", 3); /* 5000 little-endian on channel 0 ... */
  sframe(p, 0x82, "\x01\x88\x13", 3); /* ... and on channel 1 */
}

static void spin(void) { /* run the loop until nothing is left to do */
  for (int i = 0; i < 50; i++) event_base_loop(base, EVLOOP_NONBLOCK);
}

/* Decode one client frame from the peer's input. Returns the opcode (-1 if
 * none complete), the unmasked payload in out (len in *n), its key in key. */
static int cframe(struct pairt *p, uint8_t *out, size_t cap, size_t *n, uint8_t key[4],
                  int *fin) {
  struct evbuffer *in = bufferevent_get_input(p->peer);
  uint8_t h[14];
  size_t avail = evbuffer_get_length(in);
  if (avail < 2) return -1;
  evbuffer_copyout(in, h, avail < 14 ? avail : 14);
  CHECK(h[1] & 0x80); /* masked */
  uint64_t len = h[1] & 0x7f;
  size_t hl = 2;
  if (len == 126) len = (uint64_t)h[2] << 8 | h[3], hl = 4;
  else if (len == 127) {
    len = 0;
    for (int i = 0; i < 8; i++) len = len << 8 | h[2 + i];
    hl = 10;
  }
  if (avail < hl + 4 + len || len > cap) return -1;
  memcpy(key, h + hl, 4);
  evbuffer_drain(in, hl + 4);
  evbuffer_remove(in, out, (size_t)len);
  for (size_t i = 0; i < len; i++) out[i] ^= key[i & 3];
  *n = (size_t)len;
  *fin = (h[0] & 0x80) != 0;
  return h[0] & 0x0f;
}

static void test_framing(void) {
  static uint8_t big[200000], out[70000];
  struct pairt p;
  size_t n;
  uint8_t key[4], key2[4];
  int fin;

  /* The port announcement split over two messages, then data. */
  pair_open(&p, 0);
  sframe(&p, 0x82, "\x00\x88", 2);
  sframe(&p, 0x82, "\x00\x13" "abc", 5);
  sframe(&p, 0x82, "\x01\x88\x13", 3);
  spin();
  CHECK_EQ_INT(evbuffer_get_length(p.s.got), 3);
  CHECK_EQ_INT(p.s.end, 0);

  /* A fragmented message whose first fragment is empty, a ping between the
   * fragments; then 16- and 64-bit lengths. */
  sframe(&p, 0x02, "", 0);
  sframe(&p, 0x00, "\x00hel", 4);
  sframe(&p, 0x89, "pi", 2);
  sframe(&p, 0x80, "lo", 2);
  for (size_t i = 0; i < sizeof(big); i++) big[i] = (uint8_t)(i * 7);
  big[0] = 0;
  sframe(&p, 0x82, big, 301);
  sframe(&p, 0x82, big, 70001);
  spin();
  CHECK_EQ_INT(evbuffer_get_length(p.s.got), 3 + 5 + 300 + 70000);
  uint8_t *g = evbuffer_pullup(p.s.got, -1);
  CHECK(memcmp(g, "abchello", 8) == 0);
  CHECK(memcmp(g + 8, big + 1, 300) == 0 && memcmp(g + 308, big + 1, 70000) == 0);
  CHECK_EQ_INT(cframe(&p, out, sizeof(out), &n, key, &fin), 0xA); /* the pong */
  CHECK(n == 2 && memcmp(out, "pi", 2) == 0 && fin);

  /* What the client sends: masked binary frames, channel 0, a fresh key per frame,
   * at most 65534 data bytes each (16-bit length), then a close frame. */
  bufferevent_write(p.s.bev, "xyz", 3);
  bufferevent_write(p.s.bev, big, 100000);
  bufferevent_flush(p.s.bev, EV_WRITE, BEV_FINISHED);
  spin();
  CHECK_EQ_INT(cframe(&p, out, sizeof(out), &n, key, &fin), 0x2);
  CHECK(fin && n == 4 && memcmp(out, "\x00xyz", 4) == 0);
  CHECK_EQ_INT(cframe(&p, out, sizeof(out), &n, key2, &fin), 0x2);
  CHECK(fin && n == 65535 && out[0] == 0 && memcmp(out + 1, big, 65534) == 0);
  CHECK(memcmp(key, key2, 4) != 0);
  CHECK_EQ_INT(cframe(&p, out, sizeof(out), &n, key, &fin), 0x2);
  CHECK(n == 100000 - 65534 + 1 && memcmp(out + 1, big + 65534, n - 1) == 0);
  CHECK_EQ_INT(cframe(&p, out, sizeof(out), &n, key, &fin), 0x8);
  CHECK(n == 2 && out[0] == 0x03 && out[1] == 0xe8); /* 1000 */

  /* Normal close from the server: answered, EOF, no error text. */
  sframe(&p, 0x88, "\x03\xe8", 2);
  spin();
  CHECK(p.s.end & BEV_EVENT_EOF);
  CHECK(pf_carrier_error(p.s.carrier) == NULL);
  pair_close(&p);

  /* An error text in two fragments on channel 1 ends the stream with it. */
  pair_open(&p, 0);
  announce(&p);
  sframe(&p, 0x02, "\x01" "dial tcp4 ", 11);
  sframe(&p, 0x80, "127.0.0.1:5000: refused", 23);
  spin();
  CHECK(p.s.end & BEV_EVENT_ERROR);
  CHECK_EQ_STR(p.s.enderr, "error from the kubelet: dial tcp4 127.0.0.1:5000: refused");
  pair_close(&p);

  /* A reader that stops draining: the carrier's input stops at PF_DEFAULT_HIGH
   * (the rest waits below), and everything arrives once it drains again. */
  pair_open(&p, 0);
  p.s.bulk = 1, p.s.stalled = 1, p.s.total = 3 * 200000, p.s.sent = p.s.total;
  announce(&p);
  for (int i = 0; i < 3; i++) sdata(&p, 0, pattern + i * 200000, 200000);
  spin();
  CHECK_EQ_INT(evbuffer_get_length(bufferevent_get_input(p.s.bev)), PF_DEFAULT_HIGH);
  CHECK(p.s.max_in <= PF_DEFAULT_HIGH);
  p.s.stalled = 0;
  for (int i = 0; i < 100 && !p.s.done; i++) {
    consume(&p.s);
    event_base_loop(base, EVLOOP_NONBLOCK);
  }
  CHECK_EQ_INT(p.s.recvd, p.s.total);
  CHECK_EQ_INT(p.s.mismatch, 0);
  pair_close(&p);

  /* The connection ends in the middle of a frame. */
  pair_open(&p, 0);
  announce(&p);
  evbuffer_add(bufferevent_get_output(p.peer), "\x82\x7e\x01\x00\x00partial", 12);
  spin();
  bufferevent_flush(p.peer, EV_WRITE, BEV_FINISHED); /* a pair's way to say EOF */
  spin();
  bufferevent_free(p.peer);
  p.peer = NULL;
  CHECK(p.s.end & BEV_EVENT_ERROR);
  CHECK(strstr(p.s.enderr, "in the middle of a frame") != NULL);
  CHECK_EQ_INT(evbuffer_get_length(p.s.got), 7);
  sess_free(&p.s);

  /* max_frame: a frame above it is refused before any of it is read. */
  pair_open(&p, 1000);
  announce(&p);
  sframe(&p, 0x82, big, 1001);
  spin();
  CHECK(strstr(p.s.enderr, "1001 bytes exceeds the limit of 1000") != NULL);
  pair_close(&p);
  printf("framing: port split, empty first fragment, ping between fragments, 7/16/64-bit "
         "lengths, client frame format, close, error text, high mark, truncation, max_frame\n");
}

/* The framing alone (no TLS, no network): a pair, a server end that writes
 * 256 KiB frames as fast as the carrier takes them, and a client that writes
 * as fast as the server end drains. Prints throughput; checks the counts. */
struct bench {
  uint64_t n;
};

static void bench_read(struct bufferevent *bev, void *arg) {
  struct bench *b = arg;
  struct evbuffer *in = bufferevent_get_input(bev);
  b->n += evbuffer_get_length(in);
  evbuffer_drain(in, evbuffer_get_length(in));
}

static void test_pair_throughput(void) {
  const size_t fl = 256 * 1024;
  const uint64_t total = 256u << 20;
  struct pairt p;
  struct bench down = {0}, up = {0};
  pair_open(&p, 0);
  announce(&p);
  spin();
  bufferevent_setcb(p.s.bev, bench_read, NULL, NULL, &down);
  bufferevent_setcb(p.peer, bench_read, NULL, NULL, &up);
  uint8_t *f = malloc(fl + 11);
  f[0] = 0x82, f[1] = 127;
  for (int i = 0; i < 8; i++) f[2 + i] = (uint8_t)((uint64_t)(fl + 1) >> (56 - 8 * i));
  f[10] = 0;
  memcpy(f + 11, pattern, fl);
  double t0 = now_s(), c0 = cpu_s();
  uint64_t sent = 0;
  while (down.n < total) {
    while (sent < total && evbuffer_get_length(bufferevent_get_output(p.peer)) < (1u << 20)) {
      evbuffer_add(bufferevent_get_output(p.peer), f, fl + 11);
      sent += fl;
    }
    event_base_loop(base, EVLOOP_NONBLOCK);
  }
  double dt_down = now_s() - t0, cpu_down = cpu_s() - c0;
  CHECK_EQ_INT(down.n, total);
  t0 = now_s(), c0 = cpu_s();
  struct pf_stats st0, st;
  pf_carrier_stats(p.s.bev, &st0);
  /* every frame costs 8 header bytes + the channel byte at most (16-bit length) */
  uint64_t wire_min = total + (total / (PF_MAX_OUT_FRAME - 1)) * 9;
  sent = 0;
  while (up.n < wire_min) {
    while (sent < total && evbuffer_get_length(bufferevent_get_output(p.s.bev)) < (1u << 20)) {
      bufferevent_write(p.s.bev, pattern, fl);
      sent += fl;
    }
    event_base_loop(base, EVLOOP_NONBLOCK);
  }
  double dt_up = now_s() - t0, cpu_up = cpu_s() - c0;
  spin();
  pf_carrier_stats(p.s.bev, &st);
  CHECK_EQ_INT(st.bytes_out - st0.bytes_out, total);
  uint64_t nf = st.frames_out - st0.frames_out; /* headers of 6 or 8 bytes + channel byte */
  CHECK(up.n >= total + nf * 7 && up.n <= total + nf * 9);
  printf("framing alone over a bufferevent pair: decode %.0f MB/s (%.2f CPU s for %llu MB), "
         "encode+mask %.0f MB/s (%.2f CPU s)\n",
         total / 1e6 / dt_down, cpu_down, (unsigned long long)(total >> 20), total / 1e6 / dt_up,
         cpu_up);
  free(f);
  pair_close(&p);
}

static void test_cancel(void) {
  struct dial_result r;
  memset(&r, 0, sizeof(r));
  struct pf_target t = {.server_url = api_url, .ssl_ctx = ctx_ok, .ns = "shop",
                        .pod = "echo-x", .port = echo_port};
  char err[256];
  struct pf_connecting *c = pf_connect(base, NULL, &t, on_ready, &r, err, sizeof(err));
  CHECK(c != NULL);
  pf_connect_cancel(c);
  int never = 0;
  loop_until(&never, 1);
  CHECK_EQ_INT(r.done, 0);
  /* Cancelled while waiting for the answer (connected, TLS done, request sent). */
  t.pod = "silent-x";
  t.bearer_token = "s3cret-token";
  c = pf_connect(base, NULL, &t, on_ready, &r, err, sizeof(err));
  CHECK(c != NULL);
  loop_until(&never, 1);
  CHECK_EQ_INT(r.done, 0);
  pf_connect_cancel(c);
  loop_until(&never, 1);
  CHECK_EQ_INT(r.done, 0);
}

static void test_invalid(void) {
  struct pf_target good = {.server_url = api_url, .ssl_ctx = ctx_ok, .ns = "shop",
                           .pod = "web-1.x", .port = 80};
  struct {
    const char *field, *value, *want;
  } cases[] = {
      {"url", "http://localhost:6443", "only https://"},
      {"url", "https://", "missing or too long host"},
      {"url", "https://[::1:6443", "unclosed"},
      {"url", "https://h:99999", "bad port"},
      {"url", "https://h:6443/a b", "path may not contain"},
      {"url", "https://user:pw@h:6443", "user info"},
      {"ns", "Shop", "invalid namespace"},
      {"ns", "a.b", "invalid namespace"},
      {"pod", "web/../x", "invalid pod name"},
      {"pod", "", "invalid pod name"},
      {"token", "abc\r\nX-Evil: 1", "control characters"},
      {"port", "0", "invalid pod port"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    struct pf_target t = good;
    char err[256] = "";
    if (!strcmp(cases[i].field, "url")) t.server_url = cases[i].value;
    if (!strcmp(cases[i].field, "ns")) t.ns = cases[i].value;
    if (!strcmp(cases[i].field, "pod")) t.pod = cases[i].value;
    if (!strcmp(cases[i].field, "token")) t.bearer_token = cases[i].value;
    if (!strcmp(cases[i].field, "port")) t.port = 0;
    struct pf_connecting *c = pf_connect(base, NULL, &t, on_ready, NULL, err, sizeof(err));
    CHECK(c == NULL);
    if (c) pf_connect_cancel(c);
    CHECK(strstr(err, cases[i].want) != NULL);
    if (!strstr(err, cases[i].want)) fprintf(stderr, "invalid %s: got \"%s\"\n", cases[i].field, err);
  }
  struct pf_target t = good;
  t.ssl_ctx = NULL;
  char err[256];
  CHECK(pf_connect(base, NULL, &t, on_ready, NULL, err, sizeof(err)) == NULL);
  /* a URL with IPv6 host, port and prefix parses */
  t = good;
  t.server_url = "https://[::1]:6443/some/prefix/";
  struct pf_connecting *c = pf_connect(base, NULL, &t, on_ready, NULL, err, sizeof(err));
  CHECK(c != NULL);
  pf_connect_cancel(c);
}

/* Through the fake's HTTP CONNECT proxy. The API server's name ends in
 * .invalid: only the proxy can reach it, so a stream that works went through
 * the proxy. */
static void test_proxy(void) {
  char url[96], px[160], nocreds[96], wrong[160], refuse[96];
  snprintf(url, sizeof(url), "https://api.only-via-proxy.invalid:%u", api_port);
  snprintf(px, sizeof(px), "http://kb%%20user:p%%40ss%%3Aw@127.0.0.1:%u", proxy_port);
  snprintf(nocreds, sizeof(nocreds), "http://127.0.0.1:%u", proxy_port);
  snprintf(wrong, sizeof(wrong), "http://kb%%20user:nope@127.0.0.1:%u/", proxy_port);
  struct opts via = {.url = url, .sni = "localhost", .proxy = px};
  bulk("through an HTTP CONNECT proxy (Basic auth)", "echo-proxy", echo_port, 1u << 20, 0, &via);
  bulk("TLS on top, through the proxy", "echo-proxy-tls", tls_echo_port, 1u << 20, 1, &via);
  struct opts direct = {.url = url, .sni = "localhost"};
  expect_refusal("the same name without the proxy", "echo-x", &direct, 0, "cannot resolve", NULL);
  struct opts anon = {.url = url, .sni = "localhost", .proxy = nocreds};
  char want[128];
  snprintf(want, sizeof(want), "the proxy http://127.0.0.1:%u refused CONNECT", proxy_port);
  expect_refusal("proxy wants credentials", "echo-x", &anon, 407, want,
                 "407 Proxy Authentication Required (put user:password@ in the proxy URL)");
  struct opts bad = {.url = url, .sni = "localhost", .proxy = wrong};
  expect_refusal("proxy refuses the password", "echo-x", &bad, 407, want, "were refused");
  CHECK(strstr(g_last_err, "nope") == NULL); /* the password is never shown */
  snprintf(refuse, sizeof(refuse), "https://api.only-via-proxy.invalid:9");
  struct opts denied = {.url = refuse, .sni = "localhost", .proxy = px};
  expect_refusal("proxy forbids the target", "echo-x", &denied, 0,
                 "refused CONNECT api.only-via-proxy.invalid:9: HTTP 403 Forbidden", NULL);
  CHECK(strstr(g_last_err, "p@ss") == NULL && strstr(g_last_err, "p%40ss") == NULL);
  char down[64];
  snprintf(down, sizeof(down), "http://127.0.0.1:%u", closed_port);
  struct opts pdown = {.url = url, .sni = "localhost", .proxy = down};
  expect_refusal("proxy down", "echo-x", &pdown, 0, "cannot connect to the proxy http://127.0.0.1:",
                 "Connection refused");
  /* Schemes the carrier cannot use: refused at once, by pf_proxy_check() too. */
  const char *unsupported[][2] = {{"socks5://127.0.0.1:1080", "not SOCKS"},
                                  {"https://proxy.example:3128", "not TLS to the proxy"},
                                  {"proxy.example:3128", "no scheme"},
                                  {"http://:3128", "bad host"}};
  for (size_t i = 0; i < sizeof(unsupported) / sizeof(unsupported[0]); i++) {
    struct pf_target t = {.server_url = url, .ssl_ctx = ctx_ok, .ns = "shop", .pod = "echo-x",
                          .port = echo_port, .proxy_url = unsupported[i][0]};
    char err[512] = "", err2[512] = "";
    struct pf_connecting *c = pf_connect(base, NULL, &t, on_ready, NULL, err, sizeof(err));
    CHECK(c == NULL);
    if (c) pf_connect_cancel(c);
    CHECK(strstr(err, unsupported[i][1]) != NULL);
    CHECK_EQ_INT(pf_proxy_check(unsupported[i][0], err2, sizeof(err2)), -1);
    CHECK_EQ_STR(err, err2);
    printf("proxy %s: %s\n", unsupported[i][0], err);
  }
  CHECK_EQ_INT(pf_proxy_check(NULL, want, sizeof(want)), 0);
  CHECK_EQ_INT(pf_proxy_check(px, want, sizeof(want)), 0);
}

#ifdef PF_TUNNEL_TEST
/* ---------------- the tunnel over TLS over the carrier ---------------- *
 * Built only into test_portforward_tunnel (links kb_tunnel as well): the
 * developer side runs tunnel_new(CLIENT) on bufferevent_openssl_filter_new() over
 * the carrier, exactly as kbridge connect will; the "pod" runs an agent-like
 * TUNNEL_SERVER on a TLS socket that echoes every stream. */

#define TUN_STREAMS 4
#define TUN_BYTES (3u << 20)

struct tstream {
  struct tunnel_stream *s;
  uint64_t sent, recvd;
  int mismatch, done;
};

struct tclient {
  struct tunnel *t;
  struct tstream st[TUN_STREAMS];
  int welcomed, closed, ndone, finished;
  char close_err[600], carrier_err[1500];
};

static void srv_echo(struct tunnel_stream *s) {
  /* Echo while our own queue toward the peer is below its high mark: bytes left
   * in the input are not credited back, so the peer stops (flow control). When
   * the peer has shut down and everything is echoed, shut down and let go. */
  if (tunnel_stream_pending(s) <= tunnel_stream_high(s))
    tunnel_stream_write_buffer(s, tunnel_stream_input(s));
  if (tunnel_stream_eof(s) && evbuffer_get_length(tunnel_stream_input(s)) == 0) {
    tunnel_stream_shutdown(s);
    tunnel_stream_free(s);
  }
}

static void srv_read(struct tunnel_stream *s, void *arg) {
  (void)arg;
  srv_echo(s);
}

static void srv_event(struct tunnel_stream *s, int what, uint32_t code, const char *err,
                      void *arg) {
  (void)code;
  (void)err;
  (void)arg;
  if (what & TUNNEL_STREAM_CLOSED)
    tunnel_stream_free(s);
  else
    srv_echo(s); /* WRITABLE or EOF */
}

static int srv_hello(struct tunnel *t, const struct frame_hello *h, char *msg, size_t len,
                     void *arg) {
  (void)t;
  (void)h;
  (void)msg;
  (void)len;
  (void)arg;
  return FRAME_WELCOME_OK;
}

static void srv_open(struct tunnel *t, struct tunnel_stream *s, const struct frame_open *o,
                     void *arg) {
  (void)t;
  (void)o;
  (void)arg;
  tunnel_stream_setcb(s, srv_read, srv_event, NULL);
}

static void srv_close(struct tunnel *t, const char *err, void *arg) {
  (void)err;
  (void)arg;
  tunnel_free(t);
}

static const struct tunnel_cbs srv_cbs = {.on_hello = srv_hello, .on_open = srv_open,
                                          .on_close = srv_close};

static void accept_tunnel(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                          int len, void *arg) {
  (void)l;
  (void)sa;
  (void)len;
  (void)arg;
  struct bufferevent *bev = bufferevent_openssl_socket_new(
      base, fd, SSL_new(srv_ctx), BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
  tunnel_new(base, bev, TUNNEL_SERVER, NULL, NULL, &srv_cbs, NULL);
}

static void cli_fill(struct tstream *ts) {
  while (ts->sent < TUN_BYTES && tunnel_stream_pending(ts->s) <= tunnel_stream_high(ts->s)) {
    size_t off = (size_t)(ts->sent % PATTERN_LEN), n = PATTERN_LEN - off;
    if (n > 32768) n = 32768;
    if (n > TUN_BYTES - ts->sent) n = (size_t)(TUN_BYTES - ts->sent);
    ts->sent += n;
    tunnel_stream_write(ts->s, pattern + off, n);
  }
  if (ts->sent == TUN_BYTES) {
    ts->sent++; /* once */
    tunnel_stream_shutdown(ts->s);
  }
}

static void cli_read(struct tunnel_stream *s, void *arg) {
  struct tstream *ts = arg;
  struct evbuffer *in = tunnel_stream_input(s);
  size_t len;
  while ((len = evbuffer_get_length(in)) > 0) {
    struct evbuffer_iovec v;
    evbuffer_peek(in, -1, NULL, &v, 1);
    size_t off = (size_t)(ts->recvd % PATTERN_LEN), n = v.iov_len;
    if (n > PATTERN_LEN - off) n = PATTERN_LEN - off;
    if (memcmp(v.iov_base, pattern + off, n) != 0) ts->mismatch = 1;
    ts->recvd += n;
    evbuffer_drain(in, n);
  }
}

static void cli_event(struct tunnel_stream *s, int what, uint32_t code, const char *err,
                      void *arg) {
  struct tstream *ts = arg;
  (void)code;
  (void)err;
  if (what & TUNNEL_STREAM_WRITABLE) cli_fill(ts);
  if (what & (TUNNEL_STREAM_EOF | TUNNEL_STREAM_CLOSED)) {
    ts->done = 1;
    tunnel_stream_free(s);
    ts->s = NULL;
    event_base_loopbreak(base);
  }
}

static void cli_welcome(struct tunnel *t, const struct frame_welcome *w, void *arg) {
  struct tclient *c = arg;
  static const struct frame_open out = {.kind = FRAME_OPEN_OUTBOUND, .port = 80,
                                        .peer = "127.0.0.1:1", .target_host = "echo"};
  if (w->status != FRAME_WELCOME_OK) return;
  c->welcomed = 1;
  for (int i = 0; i < TUN_STREAMS; i++) {
    c->st[i].s = tunnel_stream_open(t, &out);
    tunnel_stream_setcb(c->st[i].s, cli_read, cli_event, &c->st[i]);
    cli_fill(&c->st[i]);
  }
}

static void cli_close(struct tunnel *t, const char *err, void *arg) {
  struct tclient *c = arg;
  /* The documented way to the carrier's own reason: */
  const char *ce = pf_carrier_error(bufferevent_get_underlying(tunnel_carrier(t)));
  snprintf(c->close_err, sizeof(c->close_err), "%s", err ? err : "");
  snprintf(c->carrier_err, sizeof(c->carrier_err), "%s", ce ? ce : "");
  c->closed = 1;
  event_base_loopbreak(base);
}

static const struct tunnel_cbs cli_cbs = {.on_welcome = cli_welcome, .on_close = cli_close};

static struct tunnel *tunnel_over_carrier(const char *pod, uint16_t port, struct tclient *c) {
  struct dial_result r;
  struct bufferevent *carrier = dial(pod, port, NULL, &r);
  CHECK(carrier != NULL);
  if (!carrier) {
    fprintf(stderr, "%s\n", r.err);
    return NULL;
  }
  SSL *ssl = SSL_new(ctx_ok);
  SSL_set1_host(ssl, "localhost");
  struct bufferevent *tls = bufferevent_openssl_filter_new(base, carrier, ssl,
                                                           BUFFEREVENT_SSL_CONNECTING,
                                                           BEV_OPT_CLOSE_ON_FREE);
  struct frame_hello h = {.version = 1, .window = 256 * 1024};
  snprintf(h.key, sizeof(h.key), "alice");
  snprintf(h.label, sizeof(h.label), "test_portforward_tunnel");
  return tunnel_new(base, tls, TUNNEL_CLIENT, NULL, &h, &cli_cbs, c);
}

static void test_tunnel_on_carrier(uint16_t tunnel_port) {
  struct tclient c;
  memset(&c, 0, sizeof(c));
  double t0 = now_s(), c0 = cpu_s();
  c.t = tunnel_over_carrier("echo-tunnel", tunnel_port, &c);
  if (!c.t) return;
  int fired = 0;
  struct event *wd = evtimer_new(base, watchdog, &fired);
  struct timeval tv = {120, 0};
  evtimer_add(wd, &tv);
  for (;;) {
    int done = 0;
    for (int i = 0; i < TUN_STREAMS; i++) done += c.st[i].done;
    if (done == TUN_STREAMS || c.closed || fired) break;
    event_base_loop(base, EVLOOP_ONCE);
  }
  event_free(wd);
  double dt = now_s() - t0, cpu = cpu_s() - c0;
  CHECK(c.welcomed);
  CHECK_EQ_INT(c.closed, 0);
  if (c.closed) fprintf(stderr, "tunnel closed: %s / carrier: %s\n", c.close_err, c.carrier_err);
  for (int i = 0; i < TUN_STREAMS; i++) {
    CHECK_EQ_INT(c.st[i].recvd, TUN_BYTES);
    CHECK_EQ_INT(c.st[i].mismatch, 0);
  }
  printf("tunnel over TLS over the carrier: %d streams x %.1f MB echoed in %.2f s "
         "(%.0f MB/s each way, this process incl. the agent side %.2f CPU s)\n",
         TUN_STREAMS, TUN_BYTES / 1e6, dt, TUN_STREAMS * TUN_BYTES / 1e6 / dt, cpu);
  if (!c.closed) tunnel_free(c.t);

  /* The pod port is closed: the tunnel dies, and the kubelet's words are there. */
  memset(&c, 0, sizeof(c));
  c.t = tunnel_over_carrier("echo-tunnel-refused", closed_port, &c);
  if (!c.t) return;
  CHECK_EQ_INT(loop_until(&c.closed, 20), 0);
  CHECK(strstr(c.carrier_err, "error from the kubelet") != NULL);
  CHECK(strstr(c.carrier_err, "connection refused") != NULL);
  printf("tunnel over the carrier, pod port closed: tunnel says \"%s\"; carrier says \"%s\"\n",
         c.close_err, c.carrier_err);
  tunnel_free(c.t);
}
#endif

/* Against a real API server (cluster_portforward.py passes the arguments):
 * POD runs an echo server on PORT in namespace NS, and optionally a TLS echo
 * server on TLS-PORT whose certificate TLS-CA verifies (name "localhost"). */
static int cluster_mode(char **a, const char *tls_ca, uint16_t tls_port) {
  const char *url = a[0], *ca = a[1], *cert = a[2], *key = a[3], *admin = a[4],
             *restricted = a[5], *norbac = a[6], *ns = a[7], *pod = a[8];
  uint16_t port = (uint16_t)atoi(a[9]);
  g_url = url;
  g_ns = ns;
  g_token = admin;
  g_refusal_port = port;
  ctx_ok = client_ctx(ca);
  ctx_other = SSL_CTX_new(TLS_client_method()); /* trusts no CA at all */
  SSL_CTX_set_verify(ctx_other, SSL_VERIFY_PEER, NULL);
  SSL_CTX *ctx_cert = client_ctx(ca);
  if (SSL_CTX_use_certificate_file(ctx_cert, cert, SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx_cert, key, SSL_FILETYPE_PEM) != 1) {
    fprintf(stderr, "cannot load the client certificate %s\n", cert);
    return 2;
  }
  pattern = malloc(PATTERN_LEN);
  srand(777);
  for (size_t i = 0; i < PATTERN_LEN; i++) pattern[i] = (unsigned char)(rand() >> 7);

  bulk("cluster, admin token", pod, port, 20u << 20, 0, NULL);
  struct opts by_cert = {.ctx = ctx_cert, .token = ""};
  bulk("cluster, admin client certificate", pod, port, 2u << 20, 0, &by_cert);
  struct opts by_restricted = {.token = restricted};
  bulk("cluster, restricted user", pod, port, 2u << 20, 0, &by_restricted);
  if (tls_ca) { /* TLS on top, as the tunnel runs it, through the real API server */
    g_inner_ctx = client_ctx(tls_ca);
    bulk("cluster, TLS on top of the carrier", pod, tls_port, 8u << 20, 1, NULL);
    SSL_CTX_free(g_inner_ctx);
    g_inner_ctx = NULL;
  }
  expect_end("cluster, closed port in the pod", pod, 9, BEV_EVENT_ERROR, "",
             "error from the kubelet");
  struct opts by_norbac = {.token = norbac};
  expect_refusal("cluster, user without RBAC", pod, &by_norbac, 403, "HTTP 403 Forbidden: ",
                 "pods/portforward");
  expect_refusal("cluster, no such pod", "no-such-pod", NULL, 404, "HTTP 404 Not Found: ",
                 "not found");
  struct opts bad_token = {.token = "not-a-token"};
  expect_refusal("cluster, bad token", pod, &bad_token, 401, "HTTP 401 Unauthorized", NULL);
  struct opts untrusted = {.ctx = ctx_other};
  expect_refusal("cluster, API server CA not trusted", pod, &untrusted, 0, "certificate", NULL);

  int never = 0;
  loop_until(&never, 1);
  SSL_CTX_free(ctx_ok);
  SSL_CTX_free(ctx_other);
  SSL_CTX_free(ctx_cert);
  free(pattern);
  event_base_free(base);
  return check_done();
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  setvbuf(stdout, NULL, _IOLBF, 0);
  log_init("test_portforward", getenv("KB_DEBUG") ? LOGL_DEBUG : LOGL_WARN);
  base = event_base_new();
  if (argc == 12 && strcmp(argv[1], "--cluster") == 0) return cluster_mode(argv + 2, NULL, 0);
  if (argc == 14 && strcmp(argv[1], "--cluster") == 0)
    return cluster_mode(argv + 2, argv[12], (uint16_t)atoi(argv[13]));
  if (argc != 2) {
    fprintf(stderr, "usage: %s fake_apiserver.py\n"
                    "       %s --cluster URL CA CERT KEY ADMIN-TOKEN RESTRICTED-TOKEN "
                    "NORBAC-TOKEN NS POD PORT [TLS-CA TLS-PORT]\n", argv[0], argv[0]);
    return 2;
  }
  setup(argv[1]);
  g_refusal_port = echo_port;
#ifdef PF_TUNNEL_TEST
  test_tunnel_on_carrier(listen_on(accept_tunnel, NULL));
  int idle = 0;
  loop_until(&idle, 1);
  for (int i = 0; i < n_listeners; i++) evconnlistener_free(listeners[i]);
  teardown();
  SSL_CTX_free(ctx_ok);
  SSL_CTX_free(ctx_other);
  SSL_CTX_free(srv_ctx);
  free(pattern);
  event_base_free(base);
  return check_done();
#endif

  char acc[32];
  CHECK_EQ_INT(pf_ws_accept("dGhlIHNhbXBsZSBub25jZQ==", acc, sizeof(acc)), 0);
  CHECK_EQ_STR(acc, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="); /* RFC 6455 section 1.3 */
  CHECK(pf_carrier_error(NULL) == NULL);
  test_invalid();
  test_cancel();
  test_framing();
  test_pair_throughput();

  bulk("echo 20 MB", "echo-big", echo_port, 20u << 20, 0, NULL);
  struct opts prefixed = {.url = api_url_prefix};
  bulk("echo via URL prefix + IP host", "echo-prefix", echo_port, 1u << 20, 0, &prefixed);
  bulk("fragmented + pings", "frag-1", echo_port, 3u << 20, 0, NULL);
  bulk("TLS on top", "echo-tls", tls_echo_port, 8u << 20, 1, NULL);
  test_stalled_reader();

  expect_end("pod closes", "echo-hello", hello_port, BEV_EVENT_EOF, "hello from the pod\n", NULL);
  expect_end("dial refused in pod", "echo-refused", closed_port, BEV_EVENT_ERROR, "",
             "error from the kubelet: error forwarding port");
  expect_end("dial refused, connection dropped", "abrupt-1", closed_port, BEV_EVENT_ERROR, "",
             "connection refused");
  expect_end("close 1011", "close1011-x", echo_port, BEV_EVENT_ERROR, "",
             "closed the WebSocket with code 1011: kubelet exploded");
  expect_end("wrong port announced", "badport-x", echo_port, BEV_EVENT_ERROR, "",
             "announced port");
  expect_end("masked server frame", "masked-x", echo_port, BEV_EVENT_ERROR, "",
             "the server masked a frame");
  expect_end("huge frame", "huge-x", echo_port, BEV_EVENT_ERROR, "", "exceeds the limit");

  expect_refusal("403", "forbidden-api-7d9", NULL, 403, "HTTP 403 Forbidden: pods \"forbidden-api-7d9\" is forbidden: User \"dev\" cannot get resource \"pods/portforward\"",
                 "port-forward to pod shop/forbidden-api-7d9 port");
  expect_refusal("404 chunked", "missing-x", NULL, 404, "HTTP 404 Not Found: pods \"missing-x\" not found", NULL);
  struct opts notoken = {.token = ""};
  expect_refusal("401", "echo-x", &notoken, 401, "HTTP 401 Unauthorized: Unauthorized", NULL);
  expect_refusal("200 html", "html-x", NULL, 200, "HTTP 200 OK: <html><body> <h1>Welcome", "really the API server");
  expect_refusal("bad accept", "badaccept-x", NULL, 101, "Sec-WebSocket-Accept", NULL);
  expect_refusal("bad subprotocol", "badproto-x", NULL, 101, "chose subprotocol \"v4.base64.channel.k8s.io\"", NULL);
  expect_refusal("no subprotocol", "noproto-x", NULL, 101, "no WebSocket subprotocol", NULL);
  struct opts quick = {.timeout_ms = 500};
  expect_refusal("silent server", "silent-x", &quick, 0, "timed out after 500 ms waiting for the API server to answer", NULL);
  struct opts other = {.ctx = ctx_other};
  expect_refusal("unknown CA", "echo-x", &other, 0, "certificate", "TLS with the API server localhost");
  struct opts sni = {.sni = "api.example.com"};
  expect_refusal("name mismatch", "echo-x", &sni, 0, "certificate", NULL);
  char refused_url[64];
  snprintf(refused_url, sizeof(refused_url), "https://127.0.0.1:%u", closed_port);
  struct opts refused = {.url = refused_url};
  expect_refusal("API server down", "echo-x", &refused, 0, "Connection refused", NULL);
  struct opts nxdomain = {.url = "https://no-such-host.invalid:6443"};
  expect_refusal("unknown host", "echo-x", &nxdomain, 0, "cannot resolve", NULL);

  /* A name with several addresses: the refused ones are skipped. The names come
   * from a hosts file given to an evdns base (asynchronous resolution). */
  char hosts[128], urlbuf[128];
  snprintf(hosts, sizeof(hosts), "%s/hosts", tmpdir);
  FILE *hf = fopen(hosts, "w");
  fprintf(hf, "127.0.0.2 pf-multi.test\n127.0.0.1 pf-multi.test\n"
              "127.0.0.2 pf-down.test\n127.0.0.3 pf-down.test\n");
  fclose(hf);
  struct evdns_base *dns = evdns_base_new(base, 0);
  CHECK_EQ_INT(evdns_base_load_hosts(dns, hosts), 0);
  snprintf(urlbuf, sizeof(urlbuf), "https://pf-multi.test:%u", api_port);
  struct opts multi = {.dns = dns, .url = urlbuf, .sni = "localhost"};
  bulk("second address of a name", "echo-multi", echo_port, 1u << 20, 0, &multi);
  snprintf(urlbuf, sizeof(urlbuf), "https://pf-down.test:%u", api_port);
  struct opts down = {.dns = dns, .url = urlbuf, .sni = "localhost"};
  expect_refusal("all addresses refused", "echo-x", &down, 0, "2 addresses tried; last 127.0.0.3:",
                 "Connection refused");
  evdns_base_free(dns, 0);
  test_proxy();

  int never = 0;
  loop_until(&never, 1); /* let the pod-side connections see their ends */
  for (int i = 0; i < n_listeners; i++) evconnlistener_free(listeners[i]);
  teardown();
  SSL_CTX_free(ctx_ok);
  SSL_CTX_free(ctx_other);
  SSL_CTX_free(srv_ctx);
  free(pattern);
  event_base_free(base);
  return check_done();
}
