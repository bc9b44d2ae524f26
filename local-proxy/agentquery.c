/* agentquery.c: /healthz of the agent through a pod port-forward (see
 * agentquery.h). A private event base runs just for this one exchange. */
#include "agentquery.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "kube.h"
#include "portforward.h"
#include "takeover.h"

#define QUERY_TIMEOUT_MS 5000
#define MAX_ANSWER 65536
#define MAX_PODS 8 /* agent pods asked (2, 3 during a rolling update) */

struct query {
  struct event_base *base;
  struct bufferevent *carrier;
  struct pf_connecting *connecting; /* until q_ready */
  struct evbuffer *answer;
  char err[600];
  int done;
};

static void q_read(struct bufferevent *bev, void *arg) {
  struct query *q = arg;
  evbuffer_add_buffer(q->answer, bufferevent_get_input(bev));
  if (evbuffer_get_length(q->answer) > MAX_ANSWER) {
    snprintf(q->err, sizeof q->err, "agent /healthz answer larger than %d bytes", MAX_ANSWER);
    event_base_loopexit(q->base, NULL);
  }
}

static void q_event(struct bufferevent *bev, short what, void *arg) {
  struct query *q = arg;
  if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
    q_read(bev, q);
    const char *why = pf_carrier_error(bev);
    if (why && evbuffer_get_length(q->answer) == 0)
      snprintf(q->err, sizeof q->err, "%s", why);
    q->done = 1;
    event_base_loopexit(q->base, NULL);
  }
}

static void q_ready(struct bufferevent *carrier, const char *err, int status, void *arg) {
  struct query *q = arg;
  (void)status;
  q->connecting = NULL;
  if (!carrier) {
    snprintf(q->err, sizeof q->err, "%s", err ? err : "port-forward failed");
    event_base_loopexit(q->base, NULL);
    return;
  }
  q->carrier = carrier;
  bufferevent_setcb(carrier, q_read, NULL, q_event, q);
  bufferevent_enable(carrier, EV_READ | EV_WRITE);
  evbuffer_add_printf(bufferevent_get_output(carrier),
                      "GET /healthz HTTP/1.0\r\nHost: kbridge-agent\r\n\r\n");
}

/* The Ready agent pods (at most MAX_PODS, names into pods[]) and the
 * kb-metrics port. The number of pods (>= 1), or -1 with err. */
static int find_pods(struct kube *k, const char *ns, const char *service, char pods[][256],
                     int *port, char *err, size_t errlen) {
  struct takeover_names nm;
  struct kube_err e;
  if (takeover_names(service, &nm) < 0) {
    snprintf(err, errlen, "service name \"%s\" too long", service);
    return -1;
  }
  struct kube_ref dr = {"apps/v1", "deployments", ns, nm.agent, NULL};
  cJSON *d = NULL;
  if (kube_get(k, &dr, &d, &e) < 0) {
    snprintf(err, errlen, "%s", e.msg);
    return -1;
  }
  *port = 0;
  cJSON *c0 = cJSON_GetArrayItem(
      cJSON_GetObjectItemCaseSensitive(
          cJSON_GetObjectItemCaseSensitive(
              cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(d, "spec"),
                                               "template"),
              "spec"),
          "containers"),
      0);
  const cJSON *p;
  cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(c0, "ports")) {
    const char *n = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(p, "name"));
    const cJSON *cp = cJSON_GetObjectItemCaseSensitive(p, "containerPort");
    if (n && strcmp(n, "kb-metrics") == 0 && cJSON_IsNumber(cp)) *port = cp->valueint;
  }
  cJSON_Delete(d);
  if (!*port) {
    snprintf(err, errlen, "deployment %s/%s has no kb-metrics port", ns, nm.agent);
    return -1;
  }
  char sel[200];
  snprintf(sel, sizeof sel, "%s=%s", TAKEOVER_LABEL_AGENT, service);
  struct kube_ref pr = {"v1", "pods", ns, NULL, NULL};
  cJSON *list = NULL;
  if (kube_list(k, &pr, sel, &list, &e) < 0) {
    snprintf(err, errlen, "%s", e.msg);
    return -1;
  }
  int n = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(list, "items")) {
    cJSON *md = cJSON_GetObjectItemCaseSensitive(it, "metadata");
    const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(md, "name"));
    if (!name || cJSON_GetObjectItemCaseSensitive(md, "deletionTimestamp")) continue;
    const cJSON *cond;
    int ready = 0;
    cJSON_ArrayForEach(cond, cJSON_GetObjectItemCaseSensitive(
                                 cJSON_GetObjectItemCaseSensitive(it, "status"), "conditions")) {
      const char *t = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cond, "type"));
      const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cond, "status"));
      if (t && s && strcmp(t, "Ready") == 0 && strcmp(s, "True") == 0) ready = 1;
    }
    if (ready && n < MAX_PODS) snprintf(pods[n++], 256, "%s", name);
  }
  cJSON_Delete(list);
  if (n == 0) {
    snprintf(err, errlen, "no ready agent pod for service %s/%s", ns, service);
    return -1;
  }
  return n;
}

/* GET /healthz of one pod: its JSON object into *out. 0, or -1 with err. */
static int query_pod(struct kube *k, SSL_CTX *ssl, const char *token, const char *ns,
                     const char *pod, int port, cJSON **out, char *err, size_t errlen) {
  struct query q;
  memset(&q, 0, sizeof q);
  q.base = event_base_new();
  q.answer = evbuffer_new();
  int rc = -1;
  if (!q.base || !q.answer) {
    snprintf(err, errlen, "out of memory");
    goto out;
  }
  struct pf_target t;
  memset(&t, 0, sizeof t);
  t.server_url = kube_server_url(k);
  t.ssl_ctx = ssl;
  t.tls_server_name = kube_tls_name(k);
  t.proxy_url = kube_proxy(k);
  t.bearer_token = token;
  t.ns = ns;
  t.pod = pod;
  t.port = (uint16_t)port;
  t.timeout_ms = QUERY_TIMEOUT_MS;
  q.connecting = pf_connect(q.base, NULL, &t, q_ready, &q, err, errlen);
  if (!q.connecting) goto out;
  struct timeval tv = {QUERY_TIMEOUT_MS / 1000 + 1, 0};
  event_base_loopexit(q.base, &tv);
  event_base_dispatch(q.base);
  if (q.err[0]) {
    snprintf(err, errlen, "agent %.63s/%.253s /healthz: %.400s", ns, pod, q.err);
    goto out;
  }
  if (!q.done) {
    snprintf(err, errlen, "agent %.63s/%.253s /healthz: no answer within %d ms", ns, pod,
             QUERY_TIMEOUT_MS);
    goto out;
  }
  evbuffer_add(q.answer, "", 1);
  const char *txt = (const char *)evbuffer_pullup(q.answer, -1);
  const char *body = strstr(txt, "\r\n\r\n");
  const char *json = body ? strchr(body, '{') : NULL;
  *out = json ? cJSON_Parse(json) : NULL;
  if (!*out) {
    snprintf(err, errlen, "agent %.63s/%.253s /healthz: unexpected answer \"%.80s\"", ns, pod, txt);
    goto out;
  }
  rc = 0;
out:
  if (q.connecting) pf_connect_cancel(q.connecting);
  if (q.carrier) bufferevent_free(q.carrier);
  if (q.answer) evbuffer_free(q.answer);
  if (q.base) event_base_free(q.base);
  return rc;
}

/* One key's lease from two agents ({"tunnels":N} or {"tunnels":0,
 * "lost_seconds":S,"seconds_remaining":R}): tunnels on either pod make it
 * held with the sum; lost on both, the one that ends later. */
static void merge_lease(cJSON *leases, cJSON *have, const cJSON *other) {
  const cJSON *ht = cJSON_GetObjectItemCaseSensitive(have, "tunnels");
  const cJSON *ot = cJSON_GetObjectItemCaseSensitive(other, "tunnels");
  double h = cJSON_IsNumber(ht) ? ht->valuedouble : 0, o = cJSON_IsNumber(ot) ? ot->valuedouble : 0;
  if (h > 0 || o > 0) {
    cJSON *n = cJSON_CreateObject();
    cJSON_AddNumberToObject(n, "tunnels", h + o);
    cJSON_ReplaceItemInObjectCaseSensitive(leases, have->string, n);
    return;
  }
  const cJSON *hr = cJSON_GetObjectItemCaseSensitive(have, "seconds_remaining");
  const cJSON *orr = cJSON_GetObjectItemCaseSensitive(other, "seconds_remaining");
  if (cJSON_IsNumber(orr) && (!cJSON_IsNumber(hr) || orr->valuedouble > hr->valuedouble))
    cJSON_ReplaceItemInObjectCaseSensitive(leases, have->string, cJSON_Duplicate(other, 1));
}

/* Add b's answer to the merged one in a: keys' tunnels and the counters
 * summed, identities and the exclusive flag joined, leases as merge_lease. */
static void merge(cJSON *a, const cJSON *b) {
  static const char *const objs[] = {"keys", "identities"};
  for (size_t i = 0; i < 2; i++) {
    cJSON *ao = cJSON_GetObjectItemCaseSensitive(a, objs[i]);
    if (!ao) ao = cJSON_AddObjectToObject(a, objs[i]);
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(b, objs[i])) {
      cJSON *have = cJSON_GetObjectItemCaseSensitive(ao, it->string);
      if (!have)
        cJSON_AddItemToObject(ao, it->string, cJSON_Duplicate(it, 1));
      else if (cJSON_IsNumber(have) && cJSON_IsNumber(it))
        cJSON_SetNumberValue(have, have->valuedouble + it->valuedouble);
    }
  }
  static const char *const sums[] = {"tunnels", "connections"};
  for (size_t i = 0; i < 2; i++) {
    cJSON *an = cJSON_GetObjectItemCaseSensitive(a, sums[i]);
    const cJSON *bn = cJSON_GetObjectItemCaseSensitive(b, sums[i]);
    if (cJSON_IsNumber(an) && cJSON_IsNumber(bn))
      cJSON_SetNumberValue(an, an->valuedouble + bn->valuedouble);
  }
  const cJSON *bl = cJSON_GetObjectItemCaseSensitive(b, "leases");
  cJSON *al = cJSON_GetObjectItemCaseSensitive(a, "leases");
  if (bl && !al) al = cJSON_AddObjectToObject(a, "leases");
  const cJSON *it;
  cJSON_ArrayForEach(it, bl) {
    cJSON *have = cJSON_GetObjectItemCaseSensitive(al, it->string);
    if (!have)
      cJSON_AddItemToObject(al, it->string, cJSON_Duplicate(it, 1));
    else
      merge_lease(al, have, it);
  }
  if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(b, "exclusive")))
    cJSON_ReplaceItemInObjectCaseSensitive(a, "exclusive", cJSON_CreateTrue());
}

int agent_healthz(struct kube *k, const char *ns, const char *service, struct cJSON **out,
                  char *err, size_t errlen) {
  char pods[MAX_PODS][256];
  int port;
  *out = NULL;
  int n = find_pods(k, ns, service, pods, &port, err, errlen);
  if (n < 0) return -1;
  const char *token = NULL, *cert = NULL, *key = NULL;
  if (kube_credentials(k, &token, &cert, &key, err, errlen) < 0) return -1;
  SSL_CTX *ssl = kube_ssl_ctx_new(k, err, errlen);
  if (!ssl) return -1;
  for (int i = 0; i < n; i++) {
    cJSON *one = NULL;
    char why[800];
    if (query_pod(k, ssl, token, ns, pods[i], port, &one, why, sizeof why) < 0) {
      snprintf(err, errlen, "%s", why); /* the others may answer */
      continue;
    }
    if (!*out)
      *out = one;
    else {
      merge(*out, one);
      cJSON_Delete(one);
    }
  }
  SSL_CTX_free(ssl);
  return *out ? 0 : -1;
}
