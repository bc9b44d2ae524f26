/* test_portplan.c: local-proxy/portplan.c. A named targetPort stays a name on
 * the shadow Service (so stable and canary pods each resolve it), a numeric and
 * a named targetPort on the same container port get a listener each (the name
 * is kept), the agent's ports and args match, bad Services are refused. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "portplan.h"

static cJSON *parse(const char *s) {
  cJSON *j = cJSON_Parse(s);
  if (!j) {
    fprintf(stderr, "bad JSON in the test: %s\n", s);
    exit(1);
  }
  return j;
}

/* Compact JSON of o, for comparisons (static buffer). */
static const char *dump(const cJSON *o) {
  static char buf[2048];
  char *s = cJSON_PrintUnformatted(o);
  snprintf(buf, sizeof buf, "%s", s ? s : "(null)");
  free(s);
  return buf;
}

#define STABLE "{\"containers\":[{\"name\":\"api\",\"ports\":[{\"name\":\"http\",\"containerPort\":8080}]}]}"
#define CANARY "{\"containers\":[{\"name\":\"api\",\"ports\":[{\"name\":\"http\",\"containerPort\":8081}]}]}"

static void test_canary(void) {
  /* One Service port 80 -> "http"; stable says http=8080, canary 8081. */
  cJSON *ports = parse("[{\"name\":\"web\",\"port\":80,\"targetPort\":\"http\"}]");
  cJSON *st = parse(STABLE), *ca = parse(CANARY);
  const cJSON *specs[] = {st, ca};
  struct portplan pp;
  char err[512];
  CHECK_EQ_INT(portplan_build(&pp, "shop/multi", ports, specs, 2, err, sizeof err), 0);
  CHECK_EQ_INT(pp.nl, 1);
  CHECK_EQ_INT(pp.l[0].port, 8080); /* the first workload's number, free */
  CHECK_EQ_STR(pp.l[0].tname, "http");
  CHECK_EQ_INT(pp.svc[0].listen, 8080);
  /* The shadow Service carries the name: each pod resolves it itself. */
  cJSON *sh = portplan_shadow_ports(&pp);
  CHECK_EQ_STR(dump(sh), "[{\"name\":\"p8080\",\"port\":8080,\"targetPort\":\"http\"}]");
  cJSON_Delete(sh);
  cJSON *args = cJSON_CreateArray(), *cports = cJSON_CreateArray();
  portplan_agent(&pp, "multi-kbridge-origin.shop.svc", args, cports);
  CHECK_EQ_STR(dump(args), "[\"--listen\",\"[::]:8080\",\"--fallback\","
                           "\"multi-kbridge-origin.shop.svc:8080\"]");
  CHECK_EQ_STR(dump(cports), "[{\"name\":\"http\",\"containerPort\":8080}]");
  cJSON_Delete(args);
  cJSON_Delete(cports);
  /* Canary first: the agent's number follows it; the shadow still says "http". */
  const cJSON *rev[] = {ca, st};
  CHECK_EQ_INT(portplan_build(&pp, "shop/multi", ports, rev, 2, err, sizeof err), 0);
  CHECK_EQ_INT(pp.l[0].port, 8081);
  sh = portplan_shadow_ports(&pp);
  CHECK_EQ_STR(dump(sh), "[{\"name\":\"p8081\",\"port\":8081,\"targetPort\":\"http\"}]");
  cJSON_Delete(sh);
  cJSON_Delete(ports);
  cJSON_Delete(st);
  cJSON_Delete(ca);
}

static void test_dual(void) {
  /* 8080 -> 8080 and 80 -> "http" (= 8080): two listeners, the name kept. */
  cJSON *ports = parse("[{\"name\":\"direct\",\"port\":8080,\"targetPort\":8080},"
                       "{\"name\":\"web\",\"port\":80,\"targetPort\":\"http\"}]");
  cJSON *st = parse(STABLE);
  const cJSON *specs[] = {st};
  struct portplan pp;
  char err[512];
  CHECK_EQ_INT(portplan_build(&pp, "shop/dual", ports, specs, 1, err, sizeof err), 0);
  CHECK_EQ_INT(pp.nl, 2);
  CHECK_EQ_INT(pp.svc[0].listen, 8080);
  CHECK_EQ_INT(pp.svc[1].listen, 8081); /* 8080 is the numeric one's */
  cJSON *args = cJSON_CreateArray(), *cports = cJSON_CreateArray();
  portplan_agent(&pp, "dual-kbridge-origin.shop.svc", args, cports);
  CHECK_EQ_STR(dump(args), "[\"--port-map\",\"[::]:8080=dual-kbridge-origin.shop.svc:8080\","
                           "\"--port-map\",\"[::]:8081=dual-kbridge-origin.shop.svc:8081\"]");
  CHECK_EQ_STR(dump(cports), "[{\"containerPort\":8080},{\"name\":\"http\",\"containerPort\":8081}]");
  cJSON *sh = portplan_shadow_ports(&pp);
  CHECK_EQ_STR(dump(sh), "[{\"name\":\"p8080\",\"port\":8080,\"targetPort\":8080},"
                         "{\"name\":\"p8081\",\"port\":8081,\"targetPort\":\"http\"}]");
  cJSON_Delete(sh);
  cJSON_Delete(args);
  cJSON_Delete(cports);
  cJSON_Delete(ports);
  /* Two Service ports with the same numeric target share one listener; a
   * numeric target declared later still wins its number over a name. */
  ports = parse("[{\"port\":80,\"targetPort\":\"http\"},{\"port\":8080,\"targetPort\":8080},"
                "{\"port\":9000,\"targetPort\":8080},{\"port\":81,\"targetPort\":\"http\"}]");
  CHECK_EQ_INT(portplan_build(&pp, "shop/x", ports, specs, 1, err, sizeof err), 0);
  CHECK_EQ_INT(pp.nl, 2);
  CHECK_EQ_INT(pp.svc[0].listen, 8081);
  CHECK_EQ_INT(pp.svc[1].listen, 8080);
  CHECK_EQ_INT(pp.svc[2].listen, 8080);
  CHECK_EQ_INT(pp.svc[3].listen, 8081);
  cJSON_Delete(ports);
  cJSON_Delete(st);
}

static void test_own_ports(void) {
  /* A Service on 7443 and 9090: the tunnel and metrics ports move away. */
  cJSON *ports = parse("[{\"port\":7443},{\"port\":9090,\"targetPort\":9090}]");
  struct portplan pp;
  char err[512];
  CHECK_EQ_INT(portplan_build(&pp, "shop/t", ports, NULL, 0, err, sizeof err), 0);
  CHECK_EQ_INT(pp.svc[0].listen, 7443); /* no targetPort: the port itself */
  CHECK_EQ_INT(pp.tunnel_port, 17443);
  CHECK_EQ_INT(pp.metrics_port, 19090);
  cJSON_Delete(ports);
  /* No pods selected yet: a name is served on the Service's port number. */
  ports = parse("[{\"port\":80,\"targetPort\":\"http\"}]");
  CHECK_EQ_INT(portplan_build(&pp, "shop/t", ports, NULL, 0, err, sizeof err), 0);
  CHECK_EQ_INT(pp.l[0].port, 80);
  CHECK_EQ_STR(pp.l[0].tname, "http");
  cJSON_Delete(ports);
}

static void test_refused(void) {
  cJSON *st = parse(STABLE);
  const cJSON *specs[] = {st};
  struct portplan pp;
  char err[512];
  cJSON *ports = parse("[{\"port\":80,\"targetPort\":\"grpc\"}]");
  CHECK_EQ_INT(portplan_build(&pp, "shop/a", ports, specs, 1, err, sizeof err), -1);
  CHECK(strstr(err, "shop/a port 80") && strstr(err, "\"grpc\"") &&
        strstr(err, "names no container port"));
  cJSON_Delete(ports);
  ports = parse("[{\"port\":53,\"protocol\":\"UDP\"}]");
  CHECK_EQ_INT(portplan_build(&pp, "shop/dns", ports, specs, 1, err, sizeof err), -1);
  CHECK(strstr(err, "port 53 is UDP") && strstr(err, "TCP only"));
  cJSON_Delete(ports);
  ports = parse("[]");
  CHECK_EQ_INT(portplan_build(&pp, "shop/none", ports, specs, 1, err, sizeof err), -1);
  CHECK(strstr(err, "has no ports") != NULL);
  cJSON_Delete(ports);
  cJSON_Delete(st);
}

int main(void) {
  test_canary();
  test_dual();
  test_own_ports();
  test_refused();
  return check_done();
}
