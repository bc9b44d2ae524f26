/* options.c: the agent's flags as a table of {name, type, default, help}.
 *
 * Each entry says where its value lives in struct agent_options (an offset), how
 * to parse it, and what it means. Parsing, defaults, errors and --help come from
 * the common option parser (optparse.h), so a new flag is one line and its
 * errors read like the CLI's. The agent's own syntaxes (--listen's list,
 * --port-map, --route-header) are OPT_CUSTOM callbacks here; the checks between
 * flags (agent_check) run after the values are in. */
#include "options.h"

#include <stdio.h>
#include <string.h>

#include "optparse.h"

#define OFF(f) offsetof(struct agent_options, f)
#define SZ(f) sizeof(((struct agent_options *)0)->f)
#define GIVEN(f) OPT_GIVEN(struct agent_options, f)

/* --listen HOST:PORT[,HOST:PORT...]: appends to listen[] (--port-map entries may
 * come first); port 0 allowed. */
static int parse_addr_list(const struct opt_def *d, const char *v, void *cfg, char *why,
                           size_t whylen) {
  struct agent_options *o = cfg;
  char aerr[300];
  (void)d;
  for (const char *p = v;;) {
    const char *comma = strchr(p, ',');
    size_t n = comma ? (size_t)(comma - p) : strlen(p);
    char one[300];
    if (n == 0 || n >= sizeof one) {
      snprintf(why, whylen, "expected ADDR:PORT[,ADDR:PORT...], got \"%s\"", v);
      return -1;
    }
    if (o->nlisten == AGENT_MAX_LISTEN) {
      snprintf(why, whylen, "more than %d addresses", AGENT_MAX_LISTEN);
      return -1;
    }
    memcpy(one, p, n);
    one[n] = 0;
    if (addr_parse(one, 1, &o->listen[o->nlisten], aerr, sizeof aerr) < 0) {
      snprintf(why, whylen, "expected ADDR:PORT[,ADDR:PORT...], got \"%s\" (%s)", v, aerr);
      return -1;
    }
    o->nlisten++;
    if (!comma) return 0;
    p = comma + 1;
  }
}

/* --port-map LISTEN:PORT=FALLBACK:PORT: one more listening address with its own
 * fallback. */
static int parse_port_map(const struct opt_def *d, const char *v, void *cfg, char *why,
                          size_t whylen) {
  struct agent_options *o = cfg;
  const char *eq = strchr(v, '=');
  char lis[300], aerr[300];
  (void)d;
  if (!eq || eq == v || !eq[1] || (size_t)(eq - v) >= sizeof lis) {
    snprintf(why, whylen, "expected ADDR:PORT=HOST:PORT, got \"%s\" (%s)", v,
             !eq ? "missing '='" : "empty or too long side");
    return -1;
  }
  if (o->nlisten == AGENT_MAX_LISTEN) {
    snprintf(why, whylen, "more than %d listening addresses in all", AGENT_MAX_LISTEN);
    return -1;
  }
  memcpy(lis, v, (size_t)(eq - v));
  lis[eq - v] = 0;
  if (addr_parse(lis, 1, &o->listen[o->nlisten], aerr, sizeof aerr) < 0) {
    snprintf(why, whylen, "expected ADDR:PORT=HOST:PORT, got \"%s\" (listen address %s)", v,
             aerr);
    return -1;
  }
  if (addr_parse(eq + 1, 0, &o->listen_fallback[o->nlisten], aerr, sizeof aerr) < 0) {
    snprintf(why, whylen, "expected ADDR:PORT=HOST:PORT, got \"%s\" (fallback %s)", v, aerr);
    return -1;
  }
  o->nlisten++;
  return 0;
}

static int is_tchar(int c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         (c && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* --route-header NAME: an HTTP field name (RFC 9110 token) into a char[d->size]. */
static int parse_header(const struct opt_def *d, const char *v, void *cfg, char *why,
                        size_t whylen) {
  size_t n = strlen(v);
  int ok = n > 0 && n < d->size;
  for (const char *c = v; ok && *c; c++) ok = is_tchar((unsigned char)*c);
  if (!ok) {
    snprintf(why, whylen,
             "expected an HTTP field name (1-%zu of letters, digits and !#$%%&'*+-.^_`|~), got "
             "\"%s\"",
             d->size - 1, v);
    return -1;
  }
  memcpy((char *)cfg + d->offset, v, n + 1);
  return 0;
}

static const struct opt_def opt_table[] = {
    {.name = "listen", .type = OPT_CUSTOM, .parse = parse_addr_list, .metavar = "ADDR:PORT[,...]",
     .help = "service ports to serve (port 0: pick one, printed on stdout); needs --fallback"},
    {.name = "fallback", .type = OPT_HOSTPORT, .offset = OFF(fallback), .given = GIVEN(have_fallback),
     .help = "the original pods (shadow Service); unrouted traffic of --listen ports goes here"},
    {.name = "port-map", .type = OPT_CUSTOM, .parse = parse_port_map, .repeat = 1,
     .metavar = "ADDR:PORT=HOST:PORT",
     .help = "serve ADDR:PORT, its unrouted traffic to HOST:PORT (one per Service port)"},
    {.name = "tunnel-listen", .type = OPT_ADDR, .offset = OFF(tunnel_listen), .required = 1,
     .help = "where developers' TLS tunnels connect"},
    {.name = "tls-dir", .type = OPT_BUF, .offset = OFF(tls_dir), .size = SZ(tls_dir), .required = 1,
     .metavar = "DIR", .help = "holds ca.crt, agent.crt, agent.key"},
    {.name = "exclusive", .type = OPT_FLAG, .offset = OFF(exclusive),
     .help = "all traffic (HTTP and raw) to the one connected developer"},
    {.name = "route-header", .type = OPT_CUSTOM, .parse = parse_header, .offset = OFF(route_header),
     .size = SZ(route_header), .def = "kubernetes-route-as", .metavar = "NAME",
     .help = "request header carrying the route key"},
    {.name = "metrics", .type = OPT_ADDR, .offset = OFF(metrics), .given = GIVEN(have_metrics),
     .help = "/healthz and /metrics (Prometheus)"},
    {.name = "log-level", .type = OPT_LOGLEVEL, .offset = OFF(log_level), .def = "info",
     .metavar = "error|warn|info|debug", .help = "what to log"},
    {.name = "max-header-bytes", .type = OPT_LONG, .offset = OFF(max_header_bytes), .def = "32768",
     .lmin = 256, .lmax = 1L << 24, .help = "largest request head accepted (bigger: 431)"},
    {.name = "header-timeout-ms", .type = OPT_LONG, .offset = OFF(header_timeout_ms),
     .def = "10000", .lmin = 1, .lmax = 86400000,
     .help = "time allowed to send a request head once it started (then 408)"},
    {.name = "idle-timeout-ms", .type = OPT_LONG, .offset = OFF(idle_timeout_ms), .def = "60000",
     .lmin = 1, .lmax = 86400000, .help = "idle keep-alive client connections are closed after this"},
    {.name = "max-conns", .type = OPT_LONG, .offset = OFF(max_conns), .def = "10000", .lmin = 1,
     .lmax = 10000000, .help = "client connections at once; accepting pauses at the cap"},
    {.name = "sniff-timeout-ms", .type = OPT_LONG, .offset = OFF(sniff_timeout_ms), .def = "500",
     .lmin = 1, .lmax = 600000,
     .help = "wait this long for a client's first bytes before treating it as raw TCP"},
    {.name = "connect-timeout-ms", .type = OPT_LONG, .offset = OFF(connect_timeout_ms),
     .def = "5000", .lmin = 1, .lmax = 600000,
     .help = "timeout for connecting to the fallback and to outbound targets"},
    {.name = "pool-idle-ms", .type = OPT_LONG, .offset = OFF(pool_idle_ms), .def = "4000",
     .lmin = 1, .lmax = 3600000, .help = "idle upstream connections kept this long for reuse"},
    {.name = "pool-max", .type = OPT_LONG, .offset = OFF(pool_max), .def = "10000", .lmin = 0,
     .lmax = 1000000,
     .help = "idle upstream connections kept per destination (0: no reuse); --pool-idle-ms trims"},
    {.name = "send-timeout-ms", .type = OPT_LONG, .offset = OFF(send_timeout_ms), .def = "60000",
     .lmin = 1, .lmax = 86400000,
     .help = "a client that takes none of the bytes queued for it for this long is closed"},
    {.name = "buffer-budget", .type = OPT_LONG, .offset = OFF(buffer_budget), .def = "33554432",
     .lmin = 65536, .lmax = 1L << 40,
     .help = "bytes of response buffering shared by all client connections (each gets budget / "
             "connections, 4-32 KiB, for its output and as much for its upstream's input)"},
    {.name = "max-pending-tunnels", .type = OPT_LONG, .offset = OFF(max_pending_tunnels),
     .def = "64", .lmin = 1, .lmax = 100000,
     .help = "tunnel connections not yet past TLS + HELLO at once; the tunnel listener pauses at "
             "the cap"},
    {.name = "tunnel-handshake-timeout-ms", .type = OPT_LONG,
     .offset = OFF(tunnel_handshake_timeout_ms), .def = "10000", .lmin = 100, .lmax = 600000,
     .help = "a tunnel connection must finish TLS and HELLO within this"},
    {.name = "service", .type = OPT_LABEL, .offset = OFF(service), .size = SZ(service),
     .help = "in the cluster: the taken-over Service; restore it when the lease ends"},
    {.name = "takeover-id", .type = OPT_LABEL, .offset = OFF(takeover_id), .size = SZ(takeover_id),
     .metavar = "ID",
     .help = "the takeover this agent was created for (kbridge connect sets it): the lease's "
             "restore leaves the Service alone once it is taken over again by a newer takeover"},
    {.name = "namespace", .type = OPT_LABEL, .offset = OFF(namespace), .size = SZ(namespace),
     .metavar = "NS", .help = "namespace of --service (default: the pod's, from its service account)"},
    {.name = "lease-seconds", .type = OPT_LONG, .offset = OFF(lease_seconds), .def = "60",
     .lmin = 1, .lmax = 86400, .help = "restore after this long with no developer connected"},
    {.name = "grace-seconds", .type = OPT_LONG, .offset = OFF(grace_seconds), .def = "5",
     .lmin = 0, .lmax = 3600, .help = "restore this long after the last developer left cleanly"},
    {.name = "drain-seconds", .type = OPT_LONG, .offset = OFF(drain_seconds), .def = "0",
     .lmin = 0, .lmax = 3600,
     .help = "on SIGTERM keep serving this long (/healthz answers 503, keep-alive connections "
             "close after their response) while the Service's endpoints and kube-proxy let go of "
             "the pod; then stop"},
};

/* The checks between flags, after every value is in (optparse's cmd->check).
 * Ports to serve come from --listen (all sharing --fallback) and --port-map
 * (each its own fallback); --listen entries are those without one yet. */
static int agent_check(void *cfg, char *err, size_t errlen) {
  struct agent_options *o = cfg;
  int plain = 0;
  for (size_t i = 0; i < o->nlisten; i++)
    if (o->listen_fallback[i].port == 0) {
      plain = 1;
      o->listen_fallback[i] = o->fallback;
    }
  if (o->nlisten == 0) {
    snprintf(err, errlen, "--listen or --port-map is required (see kbridge-agent --help)");
    return -1;
  }
  if (plain && !o->have_fallback) {
    snprintf(err, errlen, "--fallback is required with --listen (see kbridge-agent --help)");
    return -1;
  }
  if (!plain && o->have_fallback) {
    snprintf(err, errlen, "--fallback is only for --listen ports; --port-map names its own");
    return -1;
  }
  if (o->namespace[0] && !o->service[0]) {
    snprintf(err, errlen, "--namespace is only used with --service");
    return -1;
  }
  return 0;
}

static const struct opt_cmd agent_cmd = {
    .name = "",
    .prog = "kbridge-agent",
    .summary = "The in-cluster side of kbridge.",
    .details = "Serves a Service's ports: requests that carry a developer's route key go down\n"
               "that developer's tunnel, the rest to the original pods (--fallback, --port-map).\n"
               "kbridge-agent --version prints the version.",
    .opts = opt_table,
    .nopts = sizeof opt_table / sizeof opt_table[0],
    .check = agent_check,
};

enum options_result options_parse(int argc, char **argv, struct agent_options *o, char *err,
                                  size_t errlen) {
  memset(o, 0, sizeof *o);
  for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++)
    if (strcmp(argv[i], "--version") == 0) {
      printf("kbridge-agent %s\n", KBRIDGE_VERSION);
      return OPTIONS_EXIT_OK;
    }
  switch (opt_parse(&agent_cmd, argc - 1, argv + 1, o, err, errlen)) {
  case 0: return OPTIONS_OK;
  case 1: opt_help(&agent_cmd, stdout); return OPTIONS_EXIT_OK;
  default: return OPTIONS_ERROR;
  }
}
