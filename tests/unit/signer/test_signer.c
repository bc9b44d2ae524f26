/* test_signer.c: signer names and who may get a certificate for a route key. */
#include <string.h>

#include "check.h"
#include "signer.h"

static void test_names(void) {
  char ns[64], svc[64];
  CHECK_EQ_INT(signer_parse_name("kbridge.dev/shop.api", ns, sizeof ns, svc, sizeof svc), 0);
  CHECK(strcmp(ns, "shop") == 0 && strcmp(svc, "api") == 0);
  CHECK_EQ_INT(signer_parse_name("kbridge.dev/shop", ns, sizeof ns, svc, sizeof svc), -1);
  CHECK_EQ_INT(signer_parse_name("kbridge.dev/shop.api.x", ns, sizeof ns, svc, sizeof svc), -1);
  CHECK_EQ_INT(signer_parse_name("kbridge.dev/Shop.api", ns, sizeof ns, svc, sizeof svc), -1);
  CHECK_EQ_INT(signer_parse_name("kbridge.dev/.api", ns, sizeof ns, svc, sizeof svc), -1);
  CHECK_EQ_INT(signer_parse_name("example.com/shop.api", ns, sizeof ns, svc, sizeof svc), -1);
  CHECK_EQ_INT(signer_parse_name("kubernetes.io/kube-apiserver-client", ns, sizeof ns, svc,
                                 sizeof svc), -1);
  CHECK_EQ_INT(signer_parse_name(NULL, ns, sizeof ns, svc, sizeof svc), -1);
  char small[4];
  CHECK_EQ_INT(signer_parse_name("kbridge.dev/shop.api", small, sizeof small, svc, sizeof svc), -1);
}

static void test_decide(void) {
  struct signer_holder alice = {"system:serviceaccount:shop:alice", 1000};
  CHECK_EQ_INT(signer_decide(NULL, "bob", 0, 500), SIGNER_GRANT);
  CHECK_EQ_INT(signer_decide(&alice, "system:serviceaccount:shop:alice", 0, 500), SIGNER_GRANT);
  CHECK_EQ_INT(signer_decide(&alice, "bob", 0, 500), SIGNER_DENY_HELD);
  CHECK_EQ_INT(signer_decide(&alice, "bob", 1, 500), SIGNER_GRANT_FORCED);
  CHECK_EQ_INT(signer_decide(&alice, "bob", 0, 1000), SIGNER_GRANT); /* expired */
  struct signer_holder none = {"", 5000};
  CHECK_EQ_INT(signer_decide(&none, "bob", 0, 500), SIGNER_GRANT);
}

static void test_records(void) {
  struct signer_holder h = {"user \"q\" \\ x", 1733000000}, back;
  char js[400];
  CHECK_EQ_INT(signer_holder_format(&h, js, sizeof js), 0);
  CHECK_EQ_INT(signer_holder_parse(js, &back), 0);
  CHECK(strcmp(back.identity, h.identity) == 0);
  CHECK_EQ_INT(back.until, h.until);
  CHECK_EQ_INT(signer_holder_format(&h, js, 10), -1);
  CHECK_EQ_INT(signer_holder_parse("{\"identity\":\"a\"}", &back), -1);
  CHECK_EQ_INT(signer_holder_parse("garbage", &back), -1);
  CHECK_EQ_INT(signer_holder_parse(NULL, &back), -1);
}

int main(void) {
  test_names();
  test_decide();
  test_records();
  return check_done();
}
