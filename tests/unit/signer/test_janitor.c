/* test_janitor.c: the janitor's bookkeeping (signer/janitor.h): when a
 * taken-over Service whose agent has no ready pod is due for a restore. */
#include <string.h>

#include <cjson/cJSON.h>

#include "check.h"
#include "janitor.h"

static struct janitor j; /* large: not on the stack */

static void test_ready(void) {
  cJSON *d = cJSON_Parse("{\"status\":{\"replicas\":2,\"readyReplicas\":1}}");
  CHECK_EQ_INT(janitor_agent_ready(d), 1);
  cJSON_Delete(d);
  d = cJSON_Parse("{\"status\":{\"replicas\":2,\"readyReplicas\":0}}");
  CHECK_EQ_INT(janitor_agent_ready(d), 0);
  cJSON_Delete(d);
  d = cJSON_Parse("{\"status\":{\"replicas\":2}}"); /* the API omits 0 */
  CHECK_EQ_INT(janitor_agent_ready(d), 0);
  cJSON_Delete(d);
  CHECK_EQ_INT(janitor_agent_ready(NULL), 0); /* no Deployment */
}

static void test_note(void) {
  memset(&j, 0, sizeof j);
  j.after_s = 30;
  double down = -1;
  /* ready: never due */
  CHECK(j.n == 0);
  CHECK_EQ_INT(janitor_note(&j, "shop", "api", 1, 100, &down), 0);
  CHECK(down == 0);
  janitor_sweep(&j);
  /* down from 105: due at 135, not before */
  CHECK_EQ_INT(janitor_note(&j, "shop", "api", 0, 105, &down), 0);
  janitor_sweep(&j);
  CHECK_EQ_INT(janitor_note(&j, "shop", "api", 0, 134.9, &down), 0);
  CHECK(down > 29.8 && down < 30);
  janitor_sweep(&j);
  /* another Service is counted on its own */
  CHECK_EQ_INT(janitor_note(&j, "other", "api", 0, 135, &down), 0);
  CHECK_EQ_INT(janitor_note(&j, "shop", "api", 0, 135, &down), 1);
  CHECK(down == 30);
  janitor_sweep(&j);
  CHECK_EQ_INT(j.n, 2);
  /* a ready look starts the count again */
  CHECK_EQ_INT(janitor_note(&j, "shop", "api", 1, 140, &down), 0);
  CHECK_EQ_INT(janitor_note(&j, "other", "api", 0, 140, &down), 0);
  janitor_sweep(&j);
  CHECK_EQ_INT(janitor_note(&j, "shop", "api", 0, 145, &down), 0);
  CHECK_EQ_INT(janitor_note(&j, "other", "api", 0, 145, &down), 0);
  janitor_sweep(&j);
  CHECK_EQ_INT(janitor_note(&j, "shop", "api", 0, 170, &down), 0);
  CHECK_EQ_INT(janitor_note(&j, "other", "api", 0, 170, &down), 1);
  janitor_sweep(&j);
  /* a Service not seen in a round (restored, no longer taken over) is forgotten:
   * taken over again later, it gets the whole time again */
  CHECK_EQ_INT(janitor_note(&j, "other", "api", 0, 175, &down), 1);
  janitor_sweep(&j);
  janitor_sweep(&j); /* a round without "other" */
  CHECK_EQ_INT(j.n, 0);
  CHECK_EQ_INT(janitor_note(&j, "other", "api", 0, 300, &down), 0);
  CHECK(down == 0);
}

int main(void) {
  test_ready();
  test_note();
  return check_done();
}
