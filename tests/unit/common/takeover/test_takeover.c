/* test_takeover.c: takeover_ingress_clone(), the Ingress a developer's --ingress
 * gets: which Ingresses are cloned, how hosts, tls and annotations are carried
 * over, and what is refused with a reason; takeover_selector_state() and
 * takeover_selector_unmerge(), what restore and connect's re-sync guard decide
 * on (a selector merged by a re-apply is recognised and loses only our key);
 * takeover_policy_cluster() and takeover_policy_restore(), the Local traffic
 * policies set to Cluster for a takeover and put back exactly;
 * takeover_gitops_pause()/_unpause() (--pause-gitops: set only when absent,
 * removed by restore only when kbridge set it). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "check.h"
#include "takeover.h"

static cJSON *jpath(cJSON *o, const char *a, const char *b) {
  cJSON *x = cJSON_GetObjectItemCaseSensitive(o, a);
  return b ? cJSON_GetObjectItemCaseSensitive(x, b) : x;
}

static const char *SHOP =
    "{\"apiVersion\":\"networking.k8s.io/v1\",\"kind\":\"Ingress\","
    "\"metadata\":{\"name\":\"shop\",\"namespace\":\"shop\",\"uid\":\"u1\",\"resourceVersion\":\"7\","
    "\"annotations\":{\"nginx.ingress.kubernetes.io/rewrite-target\":\"/\","
    "\"cert-manager.io/cluster-issuer\":\"le\","
    "\"kubectl.kubernetes.io/last-applied-configuration\":\"{}\"}},"
    "\"spec\":{\"ingressClassName\":\"nginx\","
    "\"defaultBackend\":{\"service\":{\"name\":\"frontend\",\"port\":{\"number\":80}}},"
    "\"tls\":[{\"hosts\":[\"shop.example.com\",\"*.example.com\"],\"secretName\":\"shop-tls\"}],"
    "\"rules\":[{\"host\":\"shop.example.com\",\"http\":{\"paths\":["
    "{\"path\":\"/api\",\"pathType\":\"Prefix\",\"backend\":{\"service\":{\"name\":\"api\",\"port\":{\"number\":8080}}}},"
    "{\"path\":\"/\",\"pathType\":\"Prefix\",\"backend\":{\"service\":{\"name\":\"frontend\",\"port\":{\"number\":80}}}}]}},"
    "{\"host\":\"*.example.com\",\"http\":{\"paths\":[{\"path\":\"/\",\"pathType\":\"Prefix\","
    "\"backend\":{\"service\":{\"name\":\"api\",\"port\":{\"number\":8080}}}}]}},"
    "{\"http\":{\"paths\":[{\"path\":\"/x\",\"pathType\":\"Prefix\","
    "\"backend\":{\"service\":{\"name\":\"api\",\"port\":{\"number\":8080}}}}]}}]}}";

static void test_clone(void) {
  cJSON *ing = cJSON_Parse(SHOP);
  char err[400] = "x";
  cJSON *c = takeover_ingress_clone(ing, "api", "alice", err, sizeof err);
  CHECK(c != NULL);
  if (!c) return;
  CHECK_EQ_STR(cJSON_GetStringValue(jpath(c, "apiVersion", NULL)), "networking.k8s.io/v1");
  cJSON *md = jpath(c, "metadata", NULL);
  CHECK_EQ_STR(cJSON_GetStringValue(jpath(md, "name", NULL)), "shop-kbridge-alice");
  CHECK_EQ_STR(cJSON_GetStringValue(jpath(md, "namespace", NULL)), "shop");
  CHECK(jpath(md, "uid", NULL) == NULL && jpath(md, "resourceVersion", NULL) == NULL);
  CHECK_EQ_STR(cJSON_GetStringValue(jpath(md, "labels", TAKEOVER_LABEL_MANAGED)), "kbridge");
  CHECK_EQ_STR(cJSON_GetStringValue(jpath(md, "labels", TAKEOVER_LABEL_SERVICE)), "api");
  CHECK_EQ_STR(cJSON_GetStringValue(jpath(md, "annotations", TAKEOVER_ANN_ROUTE_KEY)), "alice");
  CHECK_EQ_STR(cJSON_GetStringValue(jpath(md, "annotations", TAKEOVER_ANN_CLONE_OF)), "shop");
  CHECK_EQ_STR(cJSON_GetStringValue(jpath(md, "annotations", "nginx.ingress.kubernetes.io/rewrite-target")), "/");
  CHECK(jpath(md, "annotations", "cert-manager.io/cluster-issuer") == NULL);
  CHECK(jpath(md, "annotations", "kubectl.kubernetes.io/last-applied-configuration") == NULL);
  cJSON *spec = jpath(c, "spec", NULL);
  CHECK_EQ_STR(cJSON_GetStringValue(jpath(spec, "ingressClassName", NULL)), "nginx");
  CHECK(jpath(spec, "defaultBackend", NULL) == NULL);
  cJSON *rules = jpath(spec, "rules", NULL);
  CHECK_EQ_INT(cJSON_GetArraySize(rules), 1); /* wildcard and host-less rules left out */
  cJSON *r0 = cJSON_GetArrayItem(rules, 0);
  CHECK_EQ_STR(cJSON_GetStringValue(jpath(r0, "host", NULL)), "alice.shop.example.com");
  CHECK(cJSON_Compare(jpath(r0, "http", NULL),
                      jpath(cJSON_GetArrayItem(jpath(jpath(ing, "spec", NULL), "rules", NULL), 0), "http", NULL),
                      1));
  cJSON *tls = jpath(spec, "tls", NULL);
  CHECK_EQ_INT(cJSON_GetArraySize(tls), 1);
  cJSON *t0 = cJSON_GetArrayItem(tls, 0);
  CHECK_EQ_INT(cJSON_GetArraySize(jpath(t0, "hosts", NULL)), 1);
  CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetArrayItem(jpath(t0, "hosts", NULL), 0)),
               "alice.shop.example.com");
  CHECK_EQ_STR(cJSON_GetStringValue(jpath(t0, "secretName", NULL)), "shop-tls");
  cJSON_Delete(c);

  /* Another Service's Ingress: not cloned, nothing to say. */
  strcpy(err, "x");
  CHECK(takeover_ingress_clone(ing, "store", "alice", err, sizeof err) == NULL);
  CHECK_EQ_STR(err, "");
  /* frontend: routed to by a rule with a host (and the default backend). */
  c = takeover_ingress_clone(ing, "frontend", "bob", err, sizeof err);
  CHECK(c != NULL);
  cJSON_Delete(c);

  /* A clone is never cloned again. */
  cJSON *labels = cJSON_AddObjectToObject(jpath(ing, "metadata", NULL), "labels");
  cJSON_AddStringToObject(labels, TAKEOVER_LABEL_MANAGED, "kbridge");
  strcpy(err, "x");
  CHECK(takeover_ingress_clone(ing, "api", "alice", err, sizeof err) == NULL);
  CHECK_EQ_STR(err, "");
  cJSON_Delete(ing);
}

static void test_refusals(void) {
  char err[400];
  /* Routes to api only through a host-less rule: nothing to rewrite, said so. */
  cJSON *ing = cJSON_Parse(
      "{\"metadata\":{\"name\":\"any\"},\"spec\":{\"rules\":[{\"http\":{\"paths\":[{\"path\":\"/\","
      "\"pathType\":\"Prefix\",\"backend\":{\"service\":{\"name\":\"api\",\"port\":{\"number\":80}}}}]}}]}}");
  err[0] = '\0';
  CHECK(takeover_ingress_clone(ing, "api", "alice", err, sizeof err) == NULL);
  CHECK(strstr(err, "without a host") != NULL);
  cJSON_Delete(ing);
  /* Default backend only. */
  ing = cJSON_Parse("{\"metadata\":{\"name\":\"d\"},\"spec\":{\"defaultBackend\":{\"service\":"
                    "{\"name\":\"api\",\"port\":{\"number\":80}}}}}");
  err[0] = '\0';
  CHECK(takeover_ingress_clone(ing, "api", "alice", err, sizeof err) == NULL);
  CHECK(err[0] != '\0');
  cJSON_Delete(ing);
  /* A host that would exceed 253 characters with the key: rule left out. */
  char host[260], buf[1200];
  memset(host, 'a', 250);
  host[250] = '\0';
  for (int i = 60; i < 250; i += 61) host[i] = '.';
  snprintf(buf, sizeof buf,
           "{\"metadata\":{\"name\":\"long\"},\"spec\":{\"rules\":[{\"host\":\"%s\",\"http\":{\"paths\":"
           "[{\"path\":\"/\",\"pathType\":\"Prefix\",\"backend\":{\"service\":{\"name\":\"api\","
           "\"port\":{\"number\":80}}}}]}}]}}",
           host);
  ing = cJSON_Parse(buf);
  CHECK(ing != NULL);
  err[0] = '\0';
  CHECK(takeover_ingress_clone(ing, "api", "alice", err, sizeof err) == NULL);
  CHECK(err[0] != '\0');
  cJSON_Delete(ing);
  /* No name: refused with a reason, not a crash. */
  ing = cJSON_Parse("{\"spec\":{}}");
  err[0] = '\0';
  CHECK(takeover_ingress_clone(ing, "api", "alice", err, sizeof err) == NULL);
  CHECK(err[0] != '\0');
  cJSON_Delete(ing);
}

/* The selector states connect's re-sync guard and restore act on. */
static void test_selector_state(void) {
  cJSON *mine = cJSON_Parse("{\"kbridge.dev/agent\":\"api\"}");
  cJSON *orig = cJSON_Parse("{\"app\":\"api\"}");
  struct {
    const char *sel;
    enum takeover_sel want;
    const char *unmerged;
  } cases[] = {
      {"{\"kbridge.dev/agent\":\"api\"}", TAKEOVER_SEL_AGENT, NULL},
      {"{\"app\":\"api\"}", TAKEOVER_SEL_ORIGINAL, NULL},
      /* kubectl apply, server-side apply, Helm 3: the manifest's keys added */
      {"{\"app\":\"api\",\"kbridge.dev/agent\":\"api\"}", TAKEOVER_SEL_MERGED, "{\"app\":\"api\"}"},
      {"{\"kbridge.dev/agent\":\"api\",\"app\":\"api\",\"tier\":\"v2\"}", TAKEOVER_SEL_MERGED,
       "{\"app\":\"api\",\"tier\":\"v2\"}"},
      /* someone else's selector, or our key with another value: not ours */
      {"{\"app\":\"api\",\"tier\":\"v2\"}", TAKEOVER_SEL_OTHER, NULL},
      {"{\"app\":\"api\",\"kbridge.dev/agent\":\"web\"}", TAKEOVER_SEL_OTHER, NULL},
      {"{}", TAKEOVER_SEL_OTHER, NULL},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    cJSON *sel = cJSON_Parse(cases[i].sel);
    CHECK_EQ_INT((int)takeover_selector_state(sel, mine, orig), (int)cases[i].want);
    if (cases[i].unmerged) {
      cJSON *un = takeover_selector_unmerge(sel, mine), *want = cJSON_Parse(cases[i].unmerged);
      CHECK(cJSON_Compare(un, want, 1));
      cJSON_Delete(un);
      cJSON_Delete(want);
    }
    cJSON_Delete(sel);
  }
  CHECK_EQ_INT((int)takeover_selector_state(NULL, mine, orig), (int)TAKEOVER_SEL_OTHER);
  /* no original recorded: never taken for ORIGINAL */
  cJSON *sel = cJSON_Parse("{\"app\":\"api\"}");
  CHECK_EQ_INT((int)takeover_selector_state(sel, mine, NULL), (int)TAKEOVER_SEL_OTHER);
  cJSON_Delete(sel);
  cJSON_Delete(mine);
  cJSON_Delete(orig);
}

/* The spec and annotations of a Service after cluster then restore equal the
 * ones before, apart from our annotation (restore removes every kbridge.dev/
 * annotation afterwards). */
static void test_policy(void) {
  const char *before =
      "{\"metadata\":{\"name\":\"api\",\"annotations\":{\"team\":\"a\"}},"
      "\"spec\":{\"type\":\"LoadBalancer\",\"selector\":{\"app\":\"api\"},"
      "\"internalTrafficPolicy\":\"Local\",\"externalTrafficPolicy\":\"Local\","
      "\"healthCheckNodePort\":31234}}";
  cJSON *svc = cJSON_Parse(before), *orig = cJSON_Parse(before);
  char what[100];
  CHECK_EQ_INT(takeover_policy_cluster(svc, what, sizeof what), 2);
  CHECK_EQ_STR(what, "internalTrafficPolicy and externalTrafficPolicy");
  cJSON *spec = jpath(svc, "spec", NULL);
  CHECK_EQ_STR(cJSON_GetStringValue(jpath(spec, "internalTrafficPolicy", NULL)), "Cluster");
  CHECK_EQ_STR(cJSON_GetStringValue(jpath(spec, "externalTrafficPolicy", NULL)), "Cluster");
  CHECK(jpath(spec, "healthCheckNodePort", NULL) == NULL); /* only Local LoadBalancers have one */
  char ann[200] = "?"; /* a copy: the annotation is rewritten below */
  if (takeover_annotation(svc, TAKEOVER_ANN_ORIGINAL_POLICY))
    snprintf(ann, sizeof ann, "%s", takeover_annotation(svc, TAKEOVER_ANN_ORIGINAL_POLICY));
  cJSON *rec = cJSON_Parse(ann);
  cJSON *want = cJSON_Parse("{\"internalTrafficPolicy\":\"Local\",\"externalTrafficPolicy\":"
                            "\"Local\",\"healthCheckNodePort\":31234}");
  CHECK(rec && cJSON_Compare(rec, want, 1));
  cJSON_Delete(rec);
  cJSON_Delete(want);
  /* again (a retake after a re-apply set Local back): the original record stays */
  cJSON_ReplaceItemInObjectCaseSensitive(spec, "externalTrafficPolicy", cJSON_CreateString("Local"));
  CHECK_EQ_INT(takeover_policy_cluster(svc, NULL, 0), 1);
  CHECK_EQ_STR(takeover_annotation(svc, TAKEOVER_ANN_ORIGINAL_POLICY), ann);
  CHECK_EQ_INT(takeover_policy_cluster(svc, what, sizeof what), 0); /* nothing Local: untouched */
  CHECK_EQ_INT(takeover_policy_restore(svc, what, sizeof what), 1);
  CHECK_EQ_STR(what, "internalTrafficPolicy Local, externalTrafficPolicy Local, "
                     "healthCheckNodePort 31234");
  cJSON_DeleteItemFromObjectCaseSensitive(jpath(svc, "metadata", "annotations"),
                                          TAKEOVER_ANN_ORIGINAL_POLICY);
  CHECK(cJSON_Compare(svc, orig, 1));
  cJSON_Delete(svc);
  cJSON_Delete(orig);

  /* Cluster (or no field, as on Kubernetes before 1.21): nothing done or recorded */
  svc = cJSON_Parse("{\"metadata\":{},\"spec\":{\"externalTrafficPolicy\":\"Cluster\"}}");
  orig = cJSON_Duplicate(svc, 1);
  CHECK_EQ_INT(takeover_policy_cluster(svc, what, sizeof what), 0);
  CHECK_EQ_INT(takeover_policy_restore(svc, what, sizeof what), 0);
  CHECK(cJSON_Compare(svc, orig, 1));
  cJSON_Delete(svc);
  cJSON_Delete(orig);
  /* only externalTrafficPolicy, a NodePort Service (no health check port) */
  svc = cJSON_Parse("{\"spec\":{\"type\":\"NodePort\",\"externalTrafficPolicy\":\"Local\"}}");
  orig = cJSON_Duplicate(svc, 1);
  CHECK_EQ_INT(takeover_policy_cluster(svc, what, sizeof what), 1);
  CHECK_EQ_STR(what, "externalTrafficPolicy");
  CHECK_EQ_STR(takeover_annotation(svc, TAKEOVER_ANN_ORIGINAL_POLICY),
               "{\"externalTrafficPolicy\":\"Local\"}");
  CHECK_EQ_INT(takeover_policy_restore(svc, what, sizeof what), 1);
  cJSON_Delete(cJSON_DetachItemFromObjectCaseSensitive(svc, "metadata"));
  CHECK(cJSON_Compare(svc, orig, 1));
  cJSON_Delete(svc);
  cJSON_Delete(orig);
  /* a damaged annotation: refused, the Service untouched */
  svc = cJSON_Parse("{\"metadata\":{\"annotations\":{\"kbridge.dev/original-traffic-policy\":"
                    "\"nope\"}},\"spec\":{\"externalTrafficPolicy\":\"Cluster\"}}");
  orig = cJSON_Duplicate(svc, 1);
  CHECK_EQ_INT(takeover_policy_restore(svc, what, sizeof what), -1);
  CHECK(cJSON_Compare(svc, orig, 1));
  cJSON_Delete(svc);
  cJSON_Delete(orig);
}

static const char *ann_json(cJSON *svc) {
  static char buf[600];
  char *t = cJSON_PrintUnformatted(jpath(jpath(svc, "metadata", NULL), "annotations", NULL));
  snprintf(buf, sizeof buf, "%s", t ? t : "null");
  free(t);
  return buf;
}

/* --pause-gitops: Flux's reconcile annotation set only when absent, recorded,
 * and removed by restore only when recorded and still "disabled". */
static void test_gitops_pause(void) {
  cJSON *svc = cJSON_Parse("{\"metadata\":{\"name\":\"api\"}}");
  CHECK_EQ_INT(takeover_gitops_pause(svc), 1);
  CHECK_EQ_STR(ann_json(svc), "{\"kustomize.toolkit.fluxcd.io/reconcile\":\"disabled\","
                              "\"kbridge.dev/paused-gitops\":\"kustomize.toolkit.fluxcd.io/reconcile\"}");
  CHECK_EQ_INT(takeover_gitops_pause(svc), 0); /* again: already there */
  CHECK_EQ_INT(takeover_gitops_unpause(svc), 1);
  CHECK_EQ_STR(ann_json(svc), "{\"kbridge.dev/paused-gitops\":\"kustomize.toolkit.fluxcd.io/reconcile\"}");
  CHECK_EQ_INT(takeover_gitops_unpause(svc), 0);
  cJSON_Delete(svc);
  /* Someone paused Flux before: kbridge neither records nor removes it. */
  svc = cJSON_Parse("{\"metadata\":{\"annotations\":{\"kustomize.toolkit.fluxcd.io/reconcile\":"
                    "\"disabled\",\"team\":\"a\"}}}");
  CHECK_EQ_INT(takeover_gitops_pause(svc), 0);
  CHECK_EQ_INT(takeover_gitops_unpause(svc), 0);
  CHECK_EQ_STR(ann_json(svc), "{\"kustomize.toolkit.fluxcd.io/reconcile\":\"disabled\",\"team\":\"a\"}");
  cJSON_Delete(svc);
  /* Recorded, but changed since (someone re-enabled it): theirs now. */
  svc = cJSON_Parse("{\"metadata\":{\"annotations\":{\"kustomize.toolkit.fluxcd.io/reconcile\":"
                    "\"enabled\",\"kbridge.dev/paused-gitops\":\"kustomize.toolkit.fluxcd.io/reconcile\"}}}");
  CHECK_EQ_INT(takeover_gitops_unpause(svc), 0);
  CHECK(strstr(ann_json(svc), "\"enabled\"") != NULL);
  cJSON_Delete(svc);
  /* A record naming something else is not acted on. */
  svc = cJSON_Parse("{\"metadata\":{\"annotations\":{\"kustomize.toolkit.fluxcd.io/reconcile\":"
                    "\"disabled\",\"kbridge.dev/paused-gitops\":\"other\"}}}");
  CHECK_EQ_INT(takeover_gitops_unpause(svc), 0);
  cJSON_Delete(svc);
}

/* When restore may let the agent go: the Endpoints show ready original pods
 * and no agent pod. */
static void test_endpoints_switched(void) {
#define A(name, ip) "{\"ip\":\"" ip "\",\"targetRef\":{\"kind\":\"Pod\",\"name\":\"" name "\"}}"
  struct {
    const char *ep;
    int want, ready, agent;
  } cases[] = {
      /* still the agent: the endpoints controller has not caught up */
      {"{\"subsets\":[{\"addresses\":[" A("kbridge-agent-api-7c9-x2", "10.244.0.9") "]}]}", 0, 0, 1},
      /* both for a moment */
      {"{\"subsets\":[{\"addresses\":[" A("api-5d8-a", "10.244.0.4") "," A("kbridge-agent-api-7c9-x2", "10.244.0.9") "]}]}", 0, 1, 1},
      /* the agent not ready any more, but listed */
      {"{\"subsets\":[{\"addresses\":[" A("api-5d8-a", "10.244.0.4") "],\"notReadyAddresses\":[" A("kbridge-agent-api-7c9-x2", "10.244.0.9") "]}]}", 0, 1, 1},
      /* switched */
      {"{\"subsets\":[{\"addresses\":[" A("api-5d8-a", "10.244.0.4") "," A("api-5d8-b", "10.244.0.5") "]}]}", 1, 2, 0},
      /* several subsets (ports), original pods in each */
      {"{\"subsets\":[{\"addresses\":[" A("api-5d8-a", "10.244.0.4") "]},{\"addresses\":[" A("api-5d8-b", "10.244.0.5") "]}]}", 1, 2, 0},
      /* a pod of another Service's agent is not ours */
      {"{\"subsets\":[{\"addresses\":[" A("kbridge-agent-apiv2-1-x", "10.244.0.6") "]}]}", 1, 1, 0},
      /* nothing ready yet (exclusive mode scaling back), or no subsets at all */
      {"{\"subsets\":[{\"notReadyAddresses\":[" A("api-5d8-a", "10.244.0.4") "]}]}", 0, 0, 0},
      {"{\"metadata\":{\"name\":\"api\"}}", 0, 0, 0},
      /* an address without targetRef (a manual Endpoints) counts as not the agent */
      {"{\"subsets\":[{\"addresses\":[{\"ip\":\"10.0.0.1\"}]}]}", 1, 1, 0},
  };
#undef A
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    cJSON *ep = cJSON_Parse(cases[i].ep);
    CHECK(ep != NULL);
    int ready = -1, agent = -1;
    CHECK_EQ_INT(takeover_endpoints_switched(ep, "api", &ready, &agent), cases[i].want);
    CHECK_EQ_INT(ready, cases[i].ready);
    CHECK_EQ_INT(agent, cases[i].agent);
    cJSON_Delete(ep);
  }
}

/* When connect may say ready: the Endpoints show a ready agent pod and no
 * other pod. */
static void test_endpoints_taken(void) {
#define A(name, ip) "{\"ip\":\"" ip "\",\"targetRef\":{\"kind\":\"Pod\",\"name\":\"" name "\"}}"
  struct {
    const char *ep;
    int want, agent, other;
  } cases[] = {
      /* still the original pods */
      {"{\"subsets\":[{\"addresses\":[" A("api-5d8-a", "10.244.0.4") "]}]}", 0, 0, 1},
      /* both for a moment */
      {"{\"subsets\":[{\"addresses\":[" A("api-5d8-a", "10.244.0.4") "," A("kbridge-agent-api-7c9-x2", "10.244.0.9") "]}]}", 0, 1, 1},
      /* an original pod still listed, not ready */
      {"{\"subsets\":[{\"addresses\":[" A("kbridge-agent-api-7c9-x2", "10.244.0.9") "],\"notReadyAddresses\":[" A("api-5d8-a", "10.244.0.4") "]}]}", 0, 1, 1},
      /* taken */
      {"{\"subsets\":[{\"addresses\":[" A("kbridge-agent-api-7c9-x2", "10.244.0.9") "]}]}", 1, 1, 0},
      /* two agent pods, several subsets (ports) */
      {"{\"subsets\":[{\"addresses\":[" A("kbridge-agent-api-7c9-x2", "10.244.0.9") "]},{\"addresses\":[" A("kbridge-agent-api-7c9-y3", "10.244.0.10") "]}]}", 1, 2, 0},
      /* the agent listed but not ready */
      {"{\"subsets\":[{\"notReadyAddresses\":[" A("kbridge-agent-api-7c9-x2", "10.244.0.9") "]}]}", 0, 0, 0},
      /* another Service's agent is not ours */
      {"{\"subsets\":[{\"addresses\":[" A("kbridge-agent-apiv2-1-x", "10.244.0.6") "]}]}", 0, 0, 1},
      /* no subsets at all */
      {"{\"metadata\":{\"name\":\"api\"}}", 0, 0, 0},
  };
#undef A
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    cJSON *ep = cJSON_Parse(cases[i].ep);
    CHECK(ep != NULL);
    int agent = -1, other = -1;
    CHECK_EQ_INT(takeover_endpoints_taken(ep, "api", &agent, &other), cases[i].want);
    CHECK_EQ_INT(agent, cases[i].agent);
    CHECK_EQ_INT(other, cases[i].other);
    cJSON_Delete(ep);
  }
}

int main(void) {
  test_endpoints_taken();
  test_gitops_pause();
  test_clone();
  test_refusals();
  test_selector_state();
  test_policy();
  test_endpoints_switched();
  return check_done();
}
