/* options.c: the agent's flags as a table of {name, type, default, help}.
 *
 * Each entry says where its value lives in struct agent_options (an offset), how
 * to parse it, and what it means. Parsing, defaults and --help all come from the
 * same table, so a new flag is one line. */
#include "options.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dnslabel.h"

enum opt_type {
  OPT_ADDR_LIST, /* HOST:PORT[,HOST:PORT...], port 0 allowed */
  OPT_ADDR,      /* HOST:PORT, port 0 allowed */
  OPT_ADDR_DIAL, /* HOST:PORT, port must be > 0 */
  OPT_STRING,
  OPT_HEADER,    /* an HTTP field name (token chars) */
  OPT_FLAG,
  OPT_LONG,      /* positive integer */
  OPT_LOGLEVEL,
  OPT_PORT_MAP,  /* LISTEN:PORT=FALLBACK:PORT, repeatable: appends to listen[] */
  OPT_LABEL,     /* a DNS label (Kubernetes object name) */
};

struct opt_def {
  const char *name;
  enum opt_type type;
  size_t off;      /* offset of the value in struct agent_options */
  size_t size;     /* for strings: buffer size */
  size_t set_off;  /* offset of an "is set" int, or (size_t)-1 */
  int required;
  const char *def; /* default, parsed like a command-line value; NULL = none */
  long min, max;   /* OPT_LONG bounds */
  const char *help;
};

#define OFF(f) offsetof(struct agent_options, f)
#define SZ(f) sizeof(((struct agent_options *)0)->f)
#define NOSET ((size_t)-1)

static const struct opt_def opt_table[] = {
  {"listen", OPT_ADDR_LIST, OFF(listen), 0, NOSET, 0, NULL, 0, 0,
   "ADDR:PORT[,...]  service ports to serve (port 0: pick one, printed on stdout); "
   "needs --fallback"},
  {"fallback", OPT_ADDR_DIAL, OFF(fallback), 0, OFF(have_fallback), 0, NULL, 0, 0,
   "HOST:PORT  the original pods (shadow Service); unrouted traffic of --listen ports goes here"},
  {"port-map", OPT_PORT_MAP, 0, 0, NOSET, 0, NULL, 0, 0,
   "ADDR:PORT=HOST:PORT  serve ADDR:PORT, its unrouted traffic to HOST:PORT (repeatable; one "
   "per Service port)"},
  {"tunnel-listen", OPT_ADDR, OFF(tunnel_listen), 0, NOSET, 1, NULL, 0, 0,
   "ADDR:PORT  where developers' TLS tunnels connect"},
  {"tls-dir", OPT_STRING, OFF(tls_dir), SZ(tls_dir), NOSET, 1, NULL, 0, 0,
   "DIR  holds ca.crt, agent.crt, agent.key"},
  {"exclusive", OPT_FLAG, OFF(exclusive), 0, NOSET, 0, NULL, 0, 0,
   "all traffic (HTTP and raw) to the one connected developer"},
  {"route-header", OPT_HEADER, OFF(route_header), SZ(route_header), NOSET, 0,
   "kubernetes-route-as", 0, 0, "NAME  request header carrying the route key"},
  {"metrics", OPT_ADDR, OFF(metrics), 0, OFF(have_metrics), 0, NULL, 0, 0,
   "ADDR:PORT  /healthz and /metrics (Prometheus)"},
  {"log-level", OPT_LOGLEVEL, OFF(log_level), 0, NOSET, 0, "info", 0, 0,
   "error|warn|info|debug"},
  {"max-header-bytes", OPT_LONG, OFF(max_header_bytes), 0, NOSET, 0, "32768", 256, 1L << 24,
   "N  largest request head accepted (bigger: 431)"},
  {"header-timeout-ms", OPT_LONG, OFF(header_timeout_ms), 0, NOSET, 0, "10000", 1, 86400000,
   "N  time allowed to send a request head once it started (then 408)"},
  {"idle-timeout-ms", OPT_LONG, OFF(idle_timeout_ms), 0, NOSET, 0, "60000", 1, 86400000,
   "N  idle keep-alive client connections are closed after this"},
  {"max-conns", OPT_LONG, OFF(max_conns), 0, NOSET, 0, "10000", 1, 10000000,
   "N  client connections at once; accepting pauses at the cap"},
  {"sniff-timeout-ms", OPT_LONG, OFF(sniff_timeout_ms), 0, NOSET, 0, "500", 1, 600000,
   "N  wait this long for a client's first bytes before treating it as raw TCP"},
  {"connect-timeout-ms", OPT_LONG, OFF(connect_timeout_ms), 0, NOSET, 0, "5000", 1, 600000,
   "N  timeout for connecting to the fallback and to outbound targets"},
  {"pool-idle-ms", OPT_LONG, OFF(pool_idle_ms), 0, NOSET, 0, "4000", 1, 3600000,
   "N  idle upstream connections kept this long for reuse"},
  {"pool-max", OPT_LONG, OFF(pool_max), 0, NOSET, 0, "10000", 0, 1000000,
   "N  idle upstream connections kept per destination (0: no reuse); --pool-idle-ms trims"},
  {"send-timeout-ms", OPT_LONG, OFF(send_timeout_ms), 0, NOSET, 0, "60000", 1, 86400000,
   "N  a client that takes none of the bytes queued for it for this long is closed"},
  {"buffer-budget", OPT_LONG, OFF(buffer_budget), 0, NOSET, 0, "33554432", 65536, 1L << 40,
   "N  bytes of response buffering shared by all client connections (each gets budget / "
   "connections, 4-32 KiB, for its output and as much for its upstream's input)"},
  {"max-pending-tunnels", OPT_LONG, OFF(max_pending_tunnels), 0, NOSET, 0, "64", 1, 100000,
   "N  tunnel connections not yet past TLS + HELLO at once; the tunnel listener pauses at the "
   "cap"},
  {"tunnel-handshake-timeout-ms", OPT_LONG, OFF(tunnel_handshake_timeout_ms), 0, NOSET, 0,
   "10000", 100, 600000, "N  a tunnel connection must finish TLS and HELLO within this"},
  {"service", OPT_LABEL, OFF(service), SZ(service), NOSET, 0, NULL, 0, 0,
   "NAME  in the cluster: the taken-over Service; restore it when the lease ends"},
  {"takeover-id", OPT_LABEL, OFF(takeover_id), SZ(takeover_id), NOSET, 0, NULL, 0, 0,
   "ID  the takeover this agent was created for (kbridge connect sets it): the lease's restore "
   "leaves the Service alone once it is taken over again by a newer takeover"},
  {"namespace", OPT_LABEL, OFF(namespace), SZ(namespace), NOSET, 0, NULL, 0, 0,
   "NS  namespace of --service (default: the pod's, from its service account)"},
  {"lease-seconds", OPT_LONG, OFF(lease_seconds), 0, NOSET, 0, "60", 1, 86400,
   "N  restore after this long with no developer connected"},
  {"grace-seconds", OPT_LONG, OFF(grace_seconds), 0, NOSET, 0, "5", 0, 3600,
   "N  restore this long after the last developer left cleanly"},
  {"drain-seconds", OPT_LONG, OFF(drain_seconds), 0, NOSET, 0, "0", 0, 3600,
   "N  on SIGTERM keep serving this long (/healthz answers 503, keep-alive connections close "
   "after their response) while the Service's endpoints and kube-proxy let go of the pod; then "
   "stop"},
};
#define NOPTS (sizeof opt_table / sizeof opt_table[0])

static void usage(FILE *f) {
  fprintf(f, "usage: kbridge-agent [options]\n");
  for (size_t i = 0; i < NOPTS; i++) {
    const struct opt_def *d = &opt_table[i];
    fprintf(f, "  --%-20s %s%s%s%s%s\n", d->name, d->help, d->required ? " (required)" : "",
            d->def ? " [default " : "", d->def ? d->def : "", d->def ? "]" : "");
  }
  fprintf(f, "  --%-20s %s\n  --%-20s %s\n", "help", "this text", "version", "print the version");
}

static int is_tchar(int c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         (c && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* Parse one value into o according to d. 0, or -1 with err set. */
static int set_value(const struct opt_def *d, const char *v, struct agent_options *o, char *err,
                     size_t errlen) {
  char *base = (char *)o;
  char why[300];
  switch (d->type) {
  case OPT_ADDR_LIST: { /* appends: --port-map entries may come first */
    const char *p = v;
    for (;;) {
      const char *comma = strchr(p, ',');
      size_t n = comma ? (size_t)(comma - p) : strlen(p);
      char one[300];
      if (n == 0 || n >= sizeof one) {
        snprintf(err, errlen, "--%s: bad address list '%s'", d->name, v);
        return -1;
      }
      if (o->nlisten == AGENT_MAX_LISTEN) {
        snprintf(err, errlen, "--%s: more than %d addresses", d->name, AGENT_MAX_LISTEN);
        return -1;
      }
      memcpy(one, p, n);
      one[n] = 0;
      if (addr_parse(one, 1, &o->listen[o->nlisten], why, sizeof why) < 0) {
        snprintf(err, errlen, "--%s: '%s': %s", d->name, one, why);
        return -1;
      }
      o->nlisten++;
      if (!comma) break;
      p = comma + 1;
    }
    return 0;
  }
  case OPT_ADDR:
  case OPT_ADDR_DIAL:
    if (addr_parse(v, d->type == OPT_ADDR, (struct hostport *)(base + d->off), why, sizeof why) <
        0) {
      snprintf(err, errlen, "--%s: '%s': %s", d->name, v, why);
      return -1;
    }
    return 0;
  case OPT_HEADER:
    for (const char *c = v; *c; c++)
      if (!is_tchar((unsigned char)*c)) {
        snprintf(err, errlen, "--%s: '%s' is not an HTTP field name", d->name, v);
        return -1;
      }
    /* fall through */
  case OPT_STRING:
    if (!*v || strlen(v) >= d->size) {
      snprintf(err, errlen, "--%s: value %s", d->name, *v ? "too long" : "is empty");
      return -1;
    }
    memcpy(base + d->off, v, strlen(v) + 1);
    return 0;
  case OPT_FLAG:
    *(int *)(base + d->off) = 1;
    return 0;
  case OPT_LONG: {
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || end == v || *end || n < d->min || n > d->max) {
      snprintf(err, errlen, "--%s: '%s' is not an integer in [%ld, %ld]", d->name, v, d->min,
               d->max);
      return -1;
    }
    *(long *)(base + d->off) = n;
    return 0;
  }
  case OPT_LOGLEVEL:
    if (log_level_parse(v, (enum log_level *)(base + d->off)) < 0) {
      snprintf(err, errlen, "--%s: '%s' is not one of error, warn, info, debug", d->name, v);
      return -1;
    }
    return 0;
  case OPT_PORT_MAP: {
    const char *eq = strchr(v, '=');
    char lis[300];
    if (!eq || eq == v || !eq[1] || (size_t)(eq - v) >= sizeof lis) {
      snprintf(err, errlen, "--%s: '%s' is not LISTENADDR:PORT=FALLBACKHOST:PORT", d->name, v);
      return -1;
    }
    if (o->nlisten == AGENT_MAX_LISTEN) {
      snprintf(err, errlen, "--%s: more than %d listening addresses in all", d->name,
               AGENT_MAX_LISTEN);
      return -1;
    }
    memcpy(lis, v, (size_t)(eq - v));
    lis[eq - v] = 0;
    if (addr_parse(lis, 1, &o->listen[o->nlisten], why, sizeof why) < 0) {
      snprintf(err, errlen, "--%s: listen address %s", d->name, why);
      return -1;
    }
    if (addr_parse(eq + 1, 0, &o->listen_fallback[o->nlisten], why, sizeof why) < 0) {
      snprintf(err, errlen, "--%s: fallback %s", d->name, why);
      return -1;
    }
    o->nlisten++;
    return 0;
  }
  case OPT_LABEL:
    if (!dns_label_valid(v, strlen(v))) {
      snprintf(err, errlen, "--%s: '%s' is not a Kubernetes name (a-z, 0-9, '-', at most 63)",
               d->name, v);
      return -1;
    }
    memcpy(base + d->off, v, strlen(v) + 1);
    return 0;
  }
  return -1;
}

enum options_result options_parse(int argc, char **argv, struct agent_options *o, char *err,
                                  size_t errlen) {
  int seen[NOPTS] = {0};
  memset(o, 0, sizeof *o);
  for (size_t i = 0; i < NOPTS; i++)
    if (opt_table[i].def && set_value(&opt_table[i], opt_table[i].def, o, err, errlen) < 0)
      return OPTIONS_ERROR; /* a bad default is a bug; say so rather than crash */

  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return OPTIONS_EXIT_OK;
    }
    if (!strcmp(a, "--version")) {
      printf("kbridge-agent %s\n", KBRIDGE_VERSION);
      return OPTIONS_EXIT_OK;
    }
    if (strncmp(a, "--", 2) != 0) {
      snprintf(err, errlen, "unexpected argument '%s' (options start with --)", a);
      return OPTIONS_ERROR;
    }
    const char *name = a + 2, *eq = strchr(name, '=');
    size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
    size_t k;
    for (k = 0; k < NOPTS; k++)
      if (strlen(opt_table[k].name) == nlen && !strncmp(opt_table[k].name, name, nlen)) break;
    if (k == NOPTS) {
      snprintf(err, errlen, "unknown option '--%.*s' (see --help)", (int)nlen, name);
      return OPTIONS_ERROR;
    }
    const struct opt_def *d = &opt_table[k];
    const char *v;
    if (d->type == OPT_FLAG) {
      if (eq) {
        snprintf(err, errlen, "--%s takes no value", d->name);
        return OPTIONS_ERROR;
      }
      v = "";
    } else if (eq) {
      v = eq + 1;
    } else if (i + 1 < argc) {
      v = argv[++i];
    } else {
      snprintf(err, errlen, "--%s needs a value", d->name);
      return OPTIONS_ERROR;
    }
    if (seen[k] && d->type != OPT_FLAG && d->type != OPT_PORT_MAP) {
      snprintf(err, errlen, "--%s given twice", d->name);
      return OPTIONS_ERROR;
    }
    seen[k] = 1;
    if (set_value(d, v, o, err, errlen) < 0) return OPTIONS_ERROR;
    if (d->set_off != NOSET) *(int *)((char *)o + d->set_off) = 1;
  }
  /* Ports to serve come from --listen (all sharing --fallback) and --port-map
   * (each its own fallback); --listen entries are those without one yet. */
  int plain = 0;
  for (size_t i = 0; i < o->nlisten; i++)
    if (o->listen_fallback[i].port == 0) {
      plain = 1;
      o->listen_fallback[i] = o->fallback;
    }
  if (o->nlisten == 0) {
    snprintf(err, errlen, "--listen or --port-map is required (see --help)");
    return OPTIONS_ERROR;
  }
  if (plain && !o->have_fallback) {
    snprintf(err, errlen, "--fallback is required with --listen (see --help)");
    return OPTIONS_ERROR;
  }
  if (!plain && o->have_fallback) {
    snprintf(err, errlen, "--fallback is only for --listen ports; --port-map names its own");
    return OPTIONS_ERROR;
  }
  if (o->namespace[0] && !o->service[0]) {
    snprintf(err, errlen, "--namespace is only used with --service");
    return OPTIONS_ERROR;
  }
  for (size_t k = 0; k < NOPTS; k++)
    if (opt_table[k].required && !seen[k]) {
      snprintf(err, errlen, "--%s is required (see --help)", opt_table[k].name);
      return OPTIONS_ERROR;
    }
  return OPTIONS_OK;
}
