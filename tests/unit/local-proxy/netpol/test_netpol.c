/* test_netpol.c: local-proxy/netpol.c's planning. Label selectors; no policy
 * means nothing to create; policies that isolate only the original pods give
 * the from-agent policy and a companion for each client's egress, its ports
 * mapped onto the agent; a default-deny gives the agent its own policy (ingress
 * copied with ports mapped, egress copied plus the original pods, DNS and the
 * API server). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "netpol.h"

static cJSON *parse(const char *s) {
  cJSON *j = cJSON_Parse(s);
  if (!j) {
    fprintf(stderr, "bad JSON in the test: %s\n", s);
    exit(1);
  }
  return j;
}

static const char *dump(const cJSON *o) {
  static char buf[4096];
  char *s = cJSON_PrintUnformatted(o);
  snprintf(buf, sizeof buf, "%s", s ? s : "(null)");
  free(s);
  return buf;
}

static const cJSON *find(const cJSON *objs, const char *name) {
  const cJSON *o;
  cJSON_ArrayForEach(o, objs) {
    const char *n = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(o, "metadata"), "name"));
    if (n && strcmp(n, name) == 0) return o;
  }
  return NULL;
}

static const char *spec_of(const cJSON *objs, const char *name) {
  const cJSON *o = find(objs, name);
  return o ? dump(cJSON_GetObjectItemCaseSensitive(o, "spec")) : "(none)";
}

static void test_selects(void) {
  cJSON *l = parse("{\"app\":\"api\",\"tier\":\"back\"}");
  struct { const char *sel; int want; } cases[] = {
      {"{}", 1},
      {"{\"matchLabels\":{\"app\":\"api\"}}", 1},
      {"{\"matchLabels\":{\"app\":\"web\"}}", 0},
      {"{\"matchExpressions\":[{\"key\":\"tier\",\"operator\":\"In\",\"values\":[\"x\",\"back\"]}]}", 1},
      {"{\"matchExpressions\":[{\"key\":\"tier\",\"operator\":\"NotIn\",\"values\":[\"back\"]}]}", 0},
      {"{\"matchExpressions\":[{\"key\":\"zone\",\"operator\":\"NotIn\",\"values\":[\"a\"]}]}", 1},
      {"{\"matchExpressions\":[{\"key\":\"app\",\"operator\":\"Exists\"}]}", 1},
      {"{\"matchExpressions\":[{\"key\":\"app\",\"operator\":\"DoesNotExist\"}]}", 0},
      {"{\"matchExpressions\":[{\"key\":\"app\",\"operator\":\"Bogus\"}]}", 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    cJSON *s = parse(cases[i].sel);
    if (netpol_selects(s, l) != cases[i].want)
      fprintf(stderr, "selector %s: want %d\n", cases[i].sel, cases[i].want);
    CHECK_EQ_INT(netpol_selects(s, l), cases[i].want);
    cJSON_Delete(s);
  }
  CHECK_EQ_INT(netpol_selects(NULL, l), 0);
  cJSON_Delete(l);
}

#define POD_SPEC "{\"containers\":[{\"name\":\"api\",\"ports\":[{\"name\":\"http\",\"containerPort\":8080}]}]}"
#define AGENT_LABELS "{\"kbridge.dev/agent\":\"api\",\"app.kubernetes.io/managed-by\":\"kbridge\",\"kbridge.dev/service\":\"api\"}"

struct fixture {
  cJSON *spec, *orig, *sel, *agent, *ports;
  struct portplan pp;
};

static void setup(struct fixture *f, const char *target) {
  char buf[200], err[300];
  f->spec = parse(POD_SPEC);
  f->orig = parse("[{\"app\":\"api\",\"pod-template-hash\":\"x\"}]");
  f->sel = parse("{\"app\":\"api\"}");
  f->agent = parse(AGENT_LABELS);
  snprintf(buf, sizeof buf, "[{\"name\":\"http\",\"port\":80,\"targetPort\":%s}]", target);
  f->ports = parse(buf);
  const cJSON *specs[] = {f->spec};
  CHECK_EQ_INT(portplan_build(&f->pp, "shop/api", f->ports, specs, 1, err, sizeof err), 0);
}

static void teardown(struct fixture *f) {
  cJSON_Delete(f->spec);
  cJSON_Delete(f->orig);
  cJSON_Delete(f->sel);
  cJSON_Delete(f->agent);
  cJSON_Delete(f->ports);
}

static void plan(struct fixture *f, const char *policies, struct netpol_plan *out) {
  cJSON *pols = parse(policies);
  const cJSON *specs[] = {f->spec};
  struct netpol_input in = {"shop", "api", pols, f->orig, f->sel, f->agent, &f->pp, specs, 1,
                            "10.0.0.1", 6443};
  netpol_plan_build(&in, out);
  cJSON_Delete(pols);
}

#define P(name, spec) "{\"metadata\":{\"name\":\"" name "\",\"namespace\":\"shop\"},\"spec\":" spec "}"

static void test_none(void) {
  struct fixture f;
  struct netpol_plan p;
  setup(&f, "8080");
  plan(&f, "[]", &p);
  CHECK_EQ_INT(cJSON_GetArraySize(p.objs), 0);
  CHECK_EQ_STR(p.summary, "");
  netpol_plan_free(&p);
  /* A policy about other pods only: nothing either. */
  plan(&f, "[" P("web", "{\"podSelector\":{\"matchLabels\":{\"app\":\"web\"}},\"ingress\":[]}") "]", &p);
  CHECK_EQ_INT(cJSON_GetArraySize(p.objs), 0);
  netpol_plan_free(&p);
  teardown(&f);
}

static void test_only_original_isolated(void) {
  /* api lets frontend in on "http"; frontend may reach app=api on 8080 (the
   * Service's targetPort is the name "http" = 8080 on the pods). */
  struct fixture f;
  struct netpol_plan p;
  setup(&f, "\"http\"");
  plan(&f, "[" P("api-from-frontend", "{\"podSelector\":{\"matchLabels\":{\"app\":\"api\"}},"
                 "\"ingress\":[{\"from\":[{\"podSelector\":{\"matchLabels\":{\"app\":\"frontend\"}}}],"
                 "\"ports\":[{\"port\":\"http\"}]}]}") ","
           P("frontend-to-api", "{\"podSelector\":{\"matchLabels\":{\"app\":\"frontend\"}},"
             "\"policyTypes\":[\"Egress\"],\"egress\":[{\"to\":[{\"podSelector\":{\"matchLabels\":"
             "{\"app\":\"api\"}}}],\"ports\":[{\"port\":8080}]},{\"to\":[{\"podSelector\":"
             "{\"matchLabels\":{\"app\":\"store\"}}}]}]}") "]", &p);
  CHECK_EQ_INT(cJSON_GetArraySize(p.objs), 2);
  CHECK(find(p.objs, "kbridge-agent-api") == NULL); /* nothing selects the agent */
  CHECK_EQ_STR(spec_of(p.objs, "kbridge-api-from-agent"),
               "{\"podSelector\":{\"matchLabels\":{\"app\":\"api\"}},\"policyTypes\":[\"Ingress\"],"
               "\"ingress\":[{\"from\":[{\"podSelector\":{\"matchLabels\":{\"kbridge.dev/agent\":"
               "\"api\"}}}],\"ports\":[{\"protocol\":\"TCP\",\"port\":\"http\"}]}]}");
  /* 8080 on the pods is "http", which the agent serves on its port 8080. */
  CHECK_EQ_STR(spec_of(p.objs, "kbridge-api-egress-frontend-to-api"),
               "{\"podSelector\":{\"matchLabels\":{\"app\":\"frontend\"}},\"policyTypes\":"
               "[\"Egress\"],\"egress\":[{\"to\":[{\"podSelector\":{\"matchLabels\":"
               "{\"kbridge.dev/agent\":\"api\"}}}],\"ports\":[{\"protocol\":\"TCP\",\"port\":8080}]}]}");
  const cJSON *o = find(p.objs, "kbridge-api-from-agent");
  CHECK_EQ_STR(dump(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(o, "metadata"),
                                                      "labels")),
               "{\"app.kubernetes.io/managed-by\":\"kbridge\",\"kbridge.dev/service\":\"api\"}");
  CHECK(strstr(p.summary, "frontend-to-api") != NULL);
  netpol_plan_free(&p);
  teardown(&f);
}

static void test_default_deny(void) {
  struct fixture f;
  struct netpol_plan p;
  setup(&f, "8080");
  plan(&f, "[" P("deny", "{\"podSelector\":{},\"policyTypes\":[\"Ingress\",\"Egress\"]}") ","
           P("api-in", "{\"podSelector\":{\"matchLabels\":{\"app\":\"api\"}},\"ingress\":["
             "{\"from\":[{\"namespaceSelector\":{}}],\"ports\":[{\"port\":\"http\"}]},"
             "{\"ports\":[{\"port\":9999}]}]}") ","
           P("api-out", "{\"podSelector\":{\"matchLabels\":{\"app\":\"api\"}},\"policyTypes\":"
             "[\"Egress\"],\"egress\":[{\"to\":[{\"podSelector\":{\"matchLabels\":{\"app\":"
             "\"store\"}}}]}]}") "]", &p);
  /* The agent's own; api isolated for ingress: from-agent; "deny" has no egress
   * rules, "api-out" names store only: no companion. */
  CHECK_EQ_INT(cJSON_GetArraySize(p.objs), 2);
  /* Ingress: the "http" rule mapped to the agent's 8080; the 9999 rule lets nothing
   * the agent serves through and is dropped. Egress: api's rule, then the
   * original pods, DNS, the API server. */
  CHECK_EQ_STR(spec_of(p.objs, "kbridge-agent-api"),
               "{\"podSelector\":{\"matchLabels\":{\"kbridge.dev/agent\":\"api\"}},"
               "\"policyTypes\":[\"Ingress\",\"Egress\"],"
               "\"ingress\":[{\"from\":[{\"namespaceSelector\":{}}],\"ports\":[{\"protocol\":"
               "\"TCP\",\"port\":8080}]}],"
               "\"egress\":[{\"to\":[{\"podSelector\":{\"matchLabels\":{\"app\":\"store\"}}}]},"
               "{\"to\":[{\"podSelector\":{\"matchLabels\":{\"app\":\"api\"}}}],\"ports\":"
               "[{\"protocol\":\"TCP\",\"port\":8080}]},"
               "{\"ports\":[{\"protocol\":\"UDP\",\"port\":53},{\"protocol\":\"TCP\",\"port\":53}]},"
               "{\"to\":[{\"ipBlock\":{\"cidr\":\"10.0.0.1/32\"}}],\"ports\":[{\"protocol\":"
               "\"TCP\",\"port\":6443}]}]}");
  netpol_plan_free(&p);
  /* Only a default-deny for ingress: the original pods allow nothing in, so
   * neither does the agent; its egress is not isolated. */
  plan(&f, "[" P("deny", "{\"podSelector\":{}}") "]", &p);
  CHECK_EQ_STR(spec_of(p.objs, "kbridge-agent-api"),
               "{\"podSelector\":{\"matchLabels\":{\"kbridge.dev/agent\":\"api\"}},"
               "\"policyTypes\":[\"Ingress\"],\"ingress\":[]}");
  netpol_plan_free(&p);
  /* Egress denied to everything but the original pods are free to go out: so is the agent. */
  plan(&f, "[" P("deny-out", "{\"podSelector\":{\"matchLabels\":{\"kbridge.dev/agent\":\"api\"}},"
                 "\"policyTypes\":[\"Egress\"]}") "]", &p);
  CHECK_EQ_STR(spec_of(p.objs, "kbridge-agent-api"),
               "{\"podSelector\":{\"matchLabels\":{\"kbridge.dev/agent\":\"api\"}},"
               "\"policyTypes\":[\"Egress\"],\"egress\":[{}]}");
  netpol_plan_free(&p);
  teardown(&f);
}

int main(void) {
  test_selects();
  test_none();
  test_only_original_isolated();
  test_default_deny();
  return check_done();
}
