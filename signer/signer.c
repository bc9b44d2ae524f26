/* signer.c: see signer.h. */
#include "signer.h"

#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "dnslabel.h"

int signer_parse_name(const char *signer_name, char *ns, size_t nslen, char *svc, size_t svclen) {
  size_t pl = strlen(SIGNER_PREFIX);
  if (!signer_name || strncmp(signer_name, SIGNER_PREFIX, pl) != 0) return -1;
  const char *rest = signer_name + pl, *dot = strchr(rest, '.');
  if (!dot) return -1;
  size_t nl = (size_t)(dot - rest), sl = strlen(dot + 1);
  if (!dns_label_valid(rest, nl) || !dns_label_valid(dot + 1, sl) || nl >= nslen || sl >= svclen)
    return -1;
  memcpy(ns, rest, nl);
  ns[nl] = '\0';
  memcpy(svc, dot + 1, sl + 1);
  return 0;
}

enum signer_verdict signer_decide(const struct signer_holder *cur, const char *identity, int force,
                                  long long now) {
  if (!cur || !cur->identity[0] || cur->until <= now || strcmp(cur->identity, identity) == 0)
    return SIGNER_GRANT;
  return force ? SIGNER_GRANT_FORCED : SIGNER_DENY_HELD;
}

int signer_holder_parse(const char *json, struct signer_holder *out) {
  memset(out, 0, sizeof *out);
  cJSON *j = json ? cJSON_Parse(json) : NULL;
  const char *id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "identity"));
  const cJSON *u = cJSON_GetObjectItemCaseSensitive(j, "until");
  int rc = -1;
  if (id && strlen(id) < sizeof out->identity && cJSON_IsNumber(u)) {
    snprintf(out->identity, sizeof out->identity, "%s", id);
    out->until = (long long)u->valuedouble;
    rc = 0;
  }
  cJSON_Delete(j);
  return rc;
}

int signer_holder_format(const struct signer_holder *h, char *out, size_t outlen) {
  cJSON *j = cJSON_CreateObject();
  cJSON_AddStringToObject(j, "identity", h->identity);
  cJSON_AddNumberToObject(j, "until", (double)h->until);
  char *s = cJSON_PrintUnformatted(j);
  cJSON_Delete(j);
  int rc = s && strlen(s) < outlen ? 0 : -1;
  if (rc == 0) memcpy(out, s, strlen(s) + 1);
  cJSON_free(s);
  return rc;
}
