/* test_agentpod.c: local-proxy/agentpod.c: every flag checked with a one-line
 * error naming it; what is accepted lands in the pod template of a Deployment;
 * the ReplicaFailure condition read as a refusal for good or a passing one. */
#include <stdlib.h>
#include <string.h>

#include "agentpod.h"
#include "check.h"

static struct opt_list L(const char *a, const char *b) {
  struct opt_list l = {{a, b}, 0};
  l.n = (size_t)(a != NULL) + (size_t)(b != NULL);
  return l;
}

static char err[700];

/* agentpod_parse with only this flag set; expect an error holding frag. */
static void bad(struct agentpod_flags f, const char *frag) {
  struct agentpod ap;
  err[0] = '\0';
  CHECK_EQ_INT(agentpod_parse(&f, &ap, err, sizeof err), -1);
  CHECK(strstr(err, frag) != NULL && strchr(err, '\n') == NULL);
  if (!strstr(err, frag)) fprintf(stderr, "  want \"%s\" in: %s\n", frag, err);
  CHECK(ap.resources == NULL && ap.labels == NULL);
}

static const char *path_str(const cJSON *o, const char *a, const char *b, const char *c) {
  const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, a);
  if (b) x = cJSON_GetObjectItemCaseSensitive(x, b);
  if (c) x = cJSON_GetObjectItemCaseSensitive(x, c);
  return cJSON_GetStringValue(x);
}

int main(void) {
  /* syntax helpers */
  CHECK(agentpod_label_key_ok("team"));
  CHECK(agentpod_label_key_ok("example.com/team"));
  CHECK(agentpod_label_key_ok("sidecar.istio.io/inject"));
  CHECK(!agentpod_label_key_ok("-team"));
  CHECK(!agentpod_label_key_ok("Example.com/team"));
  CHECK(!agentpod_label_key_ok("a/b/c"));
  CHECK(!agentpod_label_key_ok(""));
  CHECK(agentpod_label_value_ok(""));
  CHECK(!agentpod_label_value_ok("a b"));
  double d = 0;
  CHECK(agentpod_quantity("100m", &d) && d > 0.0999 && d < 0.1001);
  CHECK(agentpod_quantity("64Mi", &d) && d == 64.0 * 1048576);
  CHECK(agentpod_quantity("1e3", &d) && d == 1000.0);
  CHECK(agentpod_quantity("0.5", &d) && d == 0.5);
  CHECK(!agentpod_quantity("1x", &d));
  CHECK(!agentpod_quantity("m", &d));
  CHECK(!agentpod_quantity("", &d));
  CHECK(!agentpod_quantity("-1", &d));

  /* bad flags, each named */
  struct opt_list l;
  struct agentpod_flags f;
  l = L("Bad_Name", NULL);
  bad((struct agentpod_flags){.pull_secrets = &l}, "--image-pull-secret: expected the name");
  l = L("disk", NULL);
  bad((struct agentpod_flags){.node_selector = &l}, "--node-selector: expected KEY=VALUE, got \"disk\"");
  l = L("disk=s s d", NULL);
  bad((struct agentpod_flags){.node_selector = &l}, "not a valid label value");
  l = L("a=1", "a=2");
  bad((struct agentpod_flags){.labels = &l}, "a given twice");
  l = L("kbridge.dev/agent=x", NULL);
  bad((struct agentpod_flags){.labels = &l}, "kbridge's own key");
  l = L("app.kubernetes.io/managed-by=me", NULL);
  bad((struct agentpod_flags){.annotations = &l}, "--agent-annotation: \"app.kubernetes.io/managed-by\" is kbridge's own key");
  l = L("dedicated=dev:NoWay", NULL);
  bad((struct agentpod_flags){.tolerations = &l}, "--toleration: expected KEY[=VALUE][:EFFECT]");
  l = L("=x:NoSchedule", NULL);
  bad((struct agentpod_flags){.tolerations = &l}, "not a valid taint key");
  bad((struct agentpod_flags){.requests = "cpu"}, "--agent-requests: cpu: \"\" is not a Kubernetes quantity");
  bad((struct agentpod_flags){.limits = "gpu=1"}, "--agent-limits: expected cpu=Q");
  bad((struct agentpod_flags){.requests = "cpu=2", .limits = "cpu=1"},
      "--agent-requests: cpu=2 is more than --agent-limits cpu=1");

  /* defaults only */
  struct agentpod ap;
  memset(&f, 0, sizeof f);
  CHECK_EQ_INT(agentpod_parse(&f, &ap, err, sizeof err), 0);
  CHECK_EQ_STR(path_str(ap.resources, "requests", "cpu", NULL), "50m");
  CHECK_EQ_STR(path_str(ap.resources, "requests", "memory", NULL), "32Mi");
  CHECK_EQ_STR(path_str(ap.resources, "limits", "memory", NULL), "256Mi");
  CHECK(path_str(ap.resources, "limits", "cpu", NULL) == NULL);
  agentpod_clear(&ap);

  /* our defaults yield: a lower memory limit lowers the default request, a
   * higher request raises the default limit */
  f.limits = "cpu=100m,memory=16Mi";
  CHECK_EQ_INT(agentpod_parse(&f, &ap, err, sizeof err), 0);
  CHECK_EQ_STR(path_str(ap.resources, "requests", "memory", NULL), "16Mi");
  CHECK_EQ_STR(path_str(ap.resources, "requests", "cpu", NULL), "50m");
  CHECK_EQ_STR(path_str(ap.resources, "limits", "cpu", NULL), "100m");
  agentpod_clear(&ap);
  memset(&f, 0, sizeof f);
  f.requests = "memory=1Gi";
  CHECK_EQ_INT(agentpod_parse(&f, &ap, err, sizeof err), 0);
  CHECK_EQ_STR(path_str(ap.resources, "limits", "memory", NULL), "1Gi");
  agentpod_clear(&ap);

  /* everything, written into a Deployment */
  struct opt_list ps = L("regcred", NULL), ns = L("disk=ssd", "kubernetes.io/os=linux"),
                  tol = L("dedicated=dev:NoSchedule", "spot"), lab = L("team=payments", "app=api"),
                  ann = L("sidecar.istio.io/inject=false", "note=a b, c");
  struct agentpod_flags all = {&ps, &ns, &tol, &lab, &ann, "cpu=100m", "cpu=500m,memory=128Mi"};
  CHECK_EQ_INT(agentpod_parse(&all, &ap, err, sizeof err), 0);
  cJSON *dep = cJSON_Parse(
      "{\"spec\":{\"template\":{\"metadata\":{\"labels\":{\"kbridge.dev/agent\":\"api\"}},"
      "\"spec\":{\"containers\":[{\"name\":\"agent\",\"resources\":{\"limits\":{\"cpu\":\"9\"}}}]}}}}");
  agentpod_apply(&ap, dep);
  const cJSON *tmpl = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(dep, "spec"), "template");
  const cJSON *spec = cJSON_GetObjectItemCaseSensitive(tmpl, "spec");
  CHECK_EQ_STR(path_str(tmpl, "metadata", "labels", "team"), "payments");
  CHECK_EQ_STR(path_str(tmpl, "metadata", "labels", "kbridge.dev/agent"), "api");
  CHECK_EQ_STR(path_str(tmpl, "metadata", "annotations", "sidecar.istio.io/inject"), "false");
  CHECK_EQ_STR(path_str(tmpl, "metadata", "annotations", "note"), "a b, c");
  CHECK_EQ_STR(path_str(spec, "nodeSelector", "disk", NULL), "ssd");
  CHECK_EQ_STR(path_str(spec, "nodeSelector", "kubernetes.io/os", NULL), "linux");
  CHECK_EQ_STR(path_str(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(spec, "imagePullSecrets"), 0), "name", NULL, NULL), "regcred");
  const cJSON *t0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(spec, "tolerations"), 0);
  const cJSON *t1 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(spec, "tolerations"), 1);
  CHECK_EQ_STR(path_str(t0, "key", NULL, NULL), "dedicated");
  CHECK_EQ_STR(path_str(t0, "operator", NULL, NULL), "Equal");
  CHECK_EQ_STR(path_str(t0, "value", NULL, NULL), "dev");
  CHECK_EQ_STR(path_str(t0, "effect", NULL, NULL), "NoSchedule");
  CHECK_EQ_STR(path_str(t1, "key", NULL, NULL), "spot");
  CHECK_EQ_STR(path_str(t1, "operator", NULL, NULL), "Exists");
  CHECK(cJSON_GetObjectItemCaseSensitive(t1, "effect") == NULL);
  const cJSON *ctr = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(spec, "containers"), 0);
  CHECK_EQ_STR(path_str(ctr, "resources", "limits", "cpu"), "500m");
  CHECK_EQ_STR(path_str(ctr, "resources", "limits", "memory"), "128Mi");
  CHECK_EQ_STR(path_str(ctr, "resources", "requests", "cpu"), "100m");

  /* labels holding the whole original selector would put the agent behind it */
  cJSON *sel = cJSON_Parse("{\"app\":\"api\"}");
  CHECK(agentpod_selected_by(&ap, sel));
  cJSON_Delete(sel);
  sel = cJSON_Parse("{\"app\":\"api\",\"tier\":\"web\"}");
  CHECK(!agentpod_selected_by(&ap, sel));
  cJSON_Delete(sel);
  cJSON_Delete(dep);
  agentpod_clear(&ap);

  /* ReplicaFailure: a refusal for good, a passing one, none */
  char why[600];
  cJSON *quota = cJSON_Parse(
      "{\"status\":{\"conditions\":[{\"type\":\"Progressing\",\"status\":\"True\"},"
      "{\"type\":\"ReplicaFailure\",\"status\":\"True\",\"reason\":\"FailedCreate\","
      "\"message\":\"pods \\\"kbridge-agent-api-5f-x\\\" is forbidden: exceeded quota: q, "
      "requested: pods=1, used: pods=1, limited: pods=1\"}]}}");
  CHECK_EQ_INT(agentpod_refusal(quota, why, sizeof why), 1);
  CHECK(strstr(why, "exceeded quota: q") != NULL);
  cJSON_Delete(quota);
  cJSON *hook = cJSON_Parse(
      "{\"status\":{\"conditions\":[{\"type\":\"ReplicaFailure\",\"status\":\"True\","
      "\"message\":\"admission webhook \\\"validate.kyverno.svc\\\" denied the request: "
      "label team is required\"}]}}");
  CHECK_EQ_INT(agentpod_refusal(hook, why, sizeof why), 1);
  cJSON_Delete(hook);
  cJSON *unk = cJSON_Parse(
      "{\"status\":{\"conditions\":[{\"type\":\"ReplicaFailure\",\"status\":\"True\","
      "\"message\":\"pods \\\"x\\\" is forbidden: status unknown for quota: q\"}]}}");
  CHECK_EQ_INT(agentpod_refusal(unk, why, sizeof why), 2);
  cJSON_Delete(unk);
  cJSON *ok = cJSON_Parse("{\"status\":{\"conditions\":[{\"type\":\"Available\",\"status\":\"True\"}]}}");
  CHECK_EQ_INT(agentpod_refusal(ok, why, sizeof why), 0);
  cJSON_Delete(ok);
  return check_done();
}
