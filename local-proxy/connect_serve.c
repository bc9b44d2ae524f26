/* connect_serve.c: step 4 of `kbridge connect`: the tunnels (proxy.c's hooks:
 * which agent pod each tunnel goes to), the re-sync guard, the command after
 * "--", and the ready event. */
#include "connect_internal.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>

#include <cjson/cJSON.h>

#include "kube.h"
#include "portforward.h"
#include "proxy.h"

/* ---- 4. tunnels (hooks for proxy.c) ---- */

struct pf_open {
  struct conn *c;
  struct pf_connecting *h;
  proxy_carrier_done done;
  void *slot;
};

static void pf_ready(struct bufferevent *carrier, const char *err, int status, void *arg) {
  struct pf_open *po = arg;
  struct conn *c = po->c;
  proxy_carrier_done done = po->done;
  void *slot = po->slot;
  free(po);
  if (!carrier) snprintf(c->tunnel_err, sizeof c->tunnel_err, "%s", err ? err : "?");
  done(carrier, err, slot);
  /* Not allowed to port-forward: retrying cannot help. */
  if (!carrier && (status == 401 || status == 403 || status == 407) && !c->ready_announced &&
      c->px) {
    conn_fail(c, "cannot open a tunnel: %s", err ? err : "forbidden");
    proxy_shutdown(c->px, 1);
  }
}

/* No tunnel registered within --timeout: give up (and restore). */
static void tunnel_timeout_cb(evutil_socket_t fd, short what, void *arg) {
  struct conn *c = arg;
  (void)fd;
  (void)what;
  if (c->ready_announced) return;
  conn_fail(c, "no tunnel to the agent came up within %d s%s%s", c->cfg->timeout,
       c->tunnel_err[0] ? "; last error: " : "", c->tunnel_err);
  proxy_shutdown(c->px, 1);
}

static void agent_gone_cb(evutil_socket_t fd, short what, void *arg) {
  struct conn *c = arg;
  (void)fd;
  (void)what;
  conn_fail(c, "the agent of %s/%s is gone: the takeover was ended elsewhere (kbridge restore, or "
       "the agent's lease)", c->ns, c->svc);
  proxy_shutdown(c->px, 1);
}

/* Can a tunnel go to this agent pod: running, its container started, not
 * being deleted? (Ready or about to be: a tunnel opened before the pod turns
 * ready is there for the first request the Service sends it.) */
static int pod_tunnelable(const cJSON *pod) {
  if (conn_jget(pod, "metadata.deletionTimestamp")) return 0;
  const char *phase = conn_jstr(pod, "status.phase");
  if (!phase || strcmp(phase, "Running") != 0) return 0;
  const cJSON *cs;
  int n = 0;
  cJSON_ArrayForEach(cs, conn_jget(pod, "status.containerStatuses")) {
    if (!conn_jget(cs, "state.running")) return 0;
    n++;
  }
  return n > 0;
}

/* How many tunnel slots are open (or opening) to pod. */
static int slots_on(const struct conn *c, const char *pod) {
  int n = 0;
  for (int i = 0; i < MAX_SLOTS; i++) n += c->slots[i].slot && !strcmp(c->slots[i].pod, pod);
  return n;
}

/* The agent pod that needs a tunnel most: the fewest of ours (below --tunnels),
 * ready ones first. NULL if every one has its share. */
static const cJSON *pod_wanting(const struct conn *c, const cJSON *list) {
  const cJSON *pod, *best = NULL;
  int best_n = 0, best_ready = 0;
  cJSON_ArrayForEach(pod, conn_jget(list, "items")) {
    const char *name = conn_jstr(pod, "metadata.name");
    if (!name || !pod_tunnelable(pod)) continue;
    int n = slots_on(c, name), ready = conn_pod_ready(pod);
    if (n >= c->per_pod) continue;
    if (!best || n < best_n || (n == best_n && ready && !best_ready)) {
      best = pod;
      best_n = n;
      best_ready = ready;
    }
  }
  return best;
}

/* A tunnel slot opens: to the agent pod that needs one most (slots are
 * --tunnels per pod; spare slots stay idle until the re-sync guard sees a pod
 * that lacks its tunnels and kicks them). */
static void *hook_open(void *arg, struct event_base *base, proxy_carrier_done done, void *slot,
                       char *err, size_t errlen) {
  struct conn *c = arg;
  char pod[256], why[1200];
  cJSON *list = conn_agent_pods(c, why, sizeof why);
  if (!list) {
    snprintf(err, errlen, "%s", why);
    return NULL;
  }
  const cJSON *want = pod_wanting(c, list);
  int any = 0;
  const cJSON *p;
  cJSON_ArrayForEach(p, conn_jget(list, "items")) any |= pod_tunnelable(p);
  if (want) snprintf(pod, sizeof pod, "%s", conn_jstr(want, "metadata.name"));
  cJSON_Delete(list);
  if (!want) {
    err[0] = '\0'; /* idle until the guard kicks it */
    if (any) return NULL;
    log_info("tunnel: no running agent pod of %s/%s (yet)", c->ns, c->svc);
    /* No pod: being replaced, or the takeover is over? */
    struct kube_ref dr = {"apps/v1", "deployments", c->ns, c->nm.agent, NULL};
    struct kube_err e;
    cJSON *d = NULL;
    if (kube_get(c->k, &dr, &d, &e) < 0 && e.status == 404 && !c->gone_reported) {
      struct timeval now = {0, 0};
      c->gone_reported = 1; /* shut down from the loop, not from inside proxy.c's call */
      event_base_once(base, -1, EV_TIMEOUT, agent_gone_cb, c, &now);
    }
    cJSON_Delete(d);
    return NULL;
  }
  int idx = -1;
  for (int i = 0; i < MAX_SLOTS && idx < 0; i++)
    if (c->slots[i].slot == slot) idx = i;
  for (int i = 0; i < MAX_SLOTS && idx < 0; i++)
    if (!c->slots[i].slot) idx = i;
  if (idx >= 0) {
    c->slots[idx].slot = slot;
    snprintf(c->slots[idx].pod, sizeof c->slots[idx].pod, "%s", pod);
  }
  const char *token = NULL, *cert = NULL, *key = NULL;
  if (kube_credentials(c->k, &token, &cert, &key, err, errlen) < 0) return NULL;
  struct pf_open *po = calloc(1, sizeof *po);
  if (!po) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  struct pf_target t;
  memset(&t, 0, sizeof t);
  t.server_url = kube_server_url(c->k);
  t.ssl_ctx = c->api_ssl;
  t.tls_server_name = kube_tls_name(c->k);
  t.proxy_url = kube_proxy(c->k);
  t.bearer_token = token;
  t.ns = c->ns;
  t.pod = pod;
  t.port = (uint16_t)c->tunnel_port;
  po->c = c;
  po->done = done;
  po->slot = slot;
  log_info("tunnel: port-forward to pod %s/%s port %d", c->ns, pod, c->tunnel_port);
  po->h = pf_connect(base, NULL, &t, pf_ready, po, err, errlen);
  if (!po->h) {
    free(po);
    return NULL;
  }
  return po;
}

/* A slot's tunnel registered; the agent's greeting names its pod ("pod
 * NAME"). With --agent-address this is how we learn which pod a tunnel
 * reached (through the port-forward hook_open chose it already). */
static void hook_registered(void *arg, void *slot, const char *message) {
  struct conn *c = arg;
  if (!message || strncmp(message, "pod ", 4) != 0) return;
  int idx = -1;
  for (int i = 0; i < MAX_SLOTS && idx < 0; i++)
    if (c->slots[i].slot == slot) idx = i;
  for (int i = 0; i < MAX_SLOTS && idx < 0; i++)
    if (!c->slots[i].slot) idx = i;
  if (idx < 0) return;
  c->slots[idx].slot = slot;
  snprintf(c->slots[idx].pod, sizeof c->slots[idx].pod, "%s", message + 4);
}

/* --agent-address: the address picks the agent pod of each tunnel. A ready
 * pod with fewer than --tunnels of ours gets one more by redialing a tunnel
 * of a pod that has more than its share (one per look, so the redials do not
 * pile up). */
static void direct_rebalance(struct conn *c, const cJSON *list) {
  const cJSON *p, *q;
  cJSON_ArrayForEach(p, conn_jget(list, "items")) {
    const char *name = conn_jstr(p, "metadata.name");
    if (!name || !conn_pod_ready(p) || slots_on(c, name) >= c->per_pod) continue;
    for (int i = 0; i < MAX_SLOTS; i++) {
      if (!c->slots[i].slot || slots_on(c, c->slots[i].pod) <= c->per_pod) continue;
      int known = 0; /* a greeting that names no agent pod (not a pod's hostname) */
      cJSON_ArrayForEach(q, conn_jget(list, "items")) {
        const char *n = conn_jstr(q, "metadata.name");
        known |= n && !strcmp(n, c->slots[i].pod);
      }
      if (!known) continue;
      log_info("tunnel: agent pod %s has %d of our %d tunnels; redialing one of pod %s's", name,
               slots_on(c, name), c->per_pod, c->slots[i].pod);
      proxy_redial(c->px, c->slots[i].slot);
      return;
    }
  }
}

/* A slot's tunnel (or attempt) ended: it holds no agent pod any more. */
static void hook_released(void *arg, void *slot) {
  struct conn *c = arg;
  for (int i = 0; i < MAX_SLOTS; i++)
    if (c->slots[i].slot == slot) {
      c->slots[i].slot = NULL;
      c->slots[i].pod[0] = '\0';
    }
}

static void hook_cancel(void *arg, void *handle) {
  struct pf_open *po = handle;
  (void)arg;
  pf_connect_cancel(po->h);
  free(po);
}

static const char *hook_carrier_error(void *arg, struct bufferevent *carrier) {
  (void)arg;
  return carrier ? pf_carrier_error(carrier) : NULL;
}

static void sigchld_cb(evutil_socket_t fd, short what, void *arg) {
  struct conn *c = arg;
  int st;
  (void)fd;
  (void)what;
  if (c->child > 0 && waitpid(c->child, &st, WNOHANG) == c->child) {
    c->child = -1;
    c->child_status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    conn_progress(c, "command-exited", "the command exited with status %d", c->child_status);
    proxy_shutdown(c->px, 0);
  }
}

/* ---- the re-sync guard ---- */

struct guard_arg {
  const cJSON *mine, *orig;
  int retake;                /* 1: set the agent selector when the original is there */
  enum takeover_sel found;   /* what was there */
  char now[512];             /* the selector written or left */
};

/* Repair (retake 0) or re-establish (retake 1) the takeover's selector. A
 * merged selector loses our keys; the original gets the agent selector back
 * only when retake is set; anything else is someone else's and stays. */
static int guard_mutate(cJSON *obj, void *arg, char *err, size_t errlen) {
  struct guard_arg *ga = arg;
  (void)err;
  (void)errlen;
  cJSON *spec = cJSON_GetObjectItemCaseSensitive(obj, "spec");
  cJSON *sel = cJSON_GetObjectItemCaseSensitive(spec, "selector");
  ga->found = takeover_selector_state(sel, ga->mine, ga->orig);
  cJSON *next = NULL;
  if (ga->found == TAKEOVER_SEL_MERGED) next = takeover_selector_unmerge(sel, ga->mine);
  else if (ga->found == TAKEOVER_SEL_ORIGINAL && ga->retake) next = cJSON_Duplicate(ga->mine, 1);
  char *p = cJSON_PrintUnformatted(next ? next : sel);
  snprintf(ga->now, sizeof ga->now, "%s", p ? p : "none");
  free(p);
  if (!next) return 1;
  if (sel) cJSON_ReplaceItemInObjectCaseSensitive(spec, "selector", next);
  else cJSON_AddItemToObject(spec, "selector", next);
  if (ga->retake) takeover_policy_cluster(obj, NULL, 0); /* a re-apply may have set Local */
  return 0;
}

/* Taken over, but a traffic policy is Local again (a re-apply or a patch):
 * Cluster again, the annotation keeps the original. Returns 1 when changed. */
static int policy_mutate(cJSON *obj, void *arg, char *err, size_t errlen) {
  (void)err;
  (void)errlen;
  return takeover_policy_cluster(obj, arg, 100) ? 0 : 1;
}

static void guard_policy(struct conn *c, const cJSON *svc) {
  const char *ip = conn_jstr(svc, "spec.internalTrafficPolicy");
  const char *ep = conn_jstr(svc, "spec.externalTrafficPolicy");
  if (!(ip && strcmp(ip, "Local") == 0) && !(ep && strcmp(ep, "Local") == 0)) return;
  struct kube_ref r = {"v1", "services", c->ns, c->svc, NULL};
  struct kube_err e;
  char what[100] = "";
  if (kube_update_retry(c->k, &r, policy_mutate, what, NULL, &e) < 0) {
    log_warn("re-sync guard: cannot set the traffic policy to Cluster again: %s", e.msg);
    return;
  }
  if (what[0])
    conn_progress(c, "traffic-policy",
                  "service %s/%s: %s became Local while taken over (a re-apply?); "
                  "set to Cluster again, put back at restore",
                  c->ns, c->svc, what);
}

/* End the session with an error event of reason service_changed. */
static void guard_end(struct conn *c, const char *msg) {
  c->reason = "service_changed";
  conn_fail(c, "%s", msg);
  proxy_shutdown(c->px, 1);
}

/* Every GUARD_PERIOD_MS, the agent's pods: a running pod without its
 * --tunnels tunnels of ours gets them (idle slots kicked), so that each agent
 * pod can route our key; no ready pod for AGENT_LOST_S (the pods cannot come
 * back: unschedulable, image gone) ends the session, which restores the
 * Service (c->agent_lost). Returns 1 when the session is ending. */
static int guard_agents(struct conn *c) {
  char why[1200];
  cJSON *list = conn_agent_pods(c, why, sizeof why);
  if (!list) {
    log_debug("re-sync guard: agent pods: %s", why);
    return 0;
  }
  const cJSON *p;
  int ready = 0;
  cJSON_ArrayForEach(p, conn_jget(list, "items")) ready += conn_pod_ready(p);
  double t = conn_now_s();
  if (ready) c->agent_seen = t;
  if (!c->cfg->agent_address.port && pod_wanting(c, list)) proxy_kick(c->px);
  if (c->cfg->agent_address.port) direct_rebalance(c, list);
  cJSON_Delete(list);
  if (ready || t - c->agent_seen < AGENT_LOST_S || c->gone_reported) return 0;
  c->agent_lost = 1;
  c->reason = "agent_lost";
  conn_fail(c,
            "no agent pod of %s/%s has been ready for %.0f s (they cannot come back: see `kubectl "
            "describe pods -n %s -l %s=%s`); the Service goes back to its own pods and the session "
            "ends",
            c->ns, c->svc, t - c->agent_seen, c->ns, TAKEOVER_LABEL_AGENT, c->svc);
  proxy_shutdown(c->px, 1);
  return 1;
}

/* Every GUARD_PERIOD_MS: is the Service still taken over as we left it? A
 * blocking GET (one small object; the loop already makes blocking calls when
 * tunnels open), so a re-apply is seen within about a second. Then the agent
 * pods (guard_agents). */
static void guard_cb(evutil_socket_t fd, short what, void *arg) {
  struct conn *c = arg;
  (void)fd;
  (void)what;
  conn_volumes_tick(c);
  if (c->agent_lost || guard_agents(c)) return;
  struct kube_ref r = {"v1", "services", c->ns, c->svc, NULL};
  struct kube_err e;
  cJSON *svc = NULL;
  if (kube_get(c->k, &r, &svc, &e) < 0) {
    if (e.status == 404) {
      char m[300];
      snprintf(m, sizeof m, "service %s/%s was deleted while taken over; the session ends", c->ns,
               c->svc);
      guard_end(c, m);
      return;
    }
    log_debug("re-sync guard: %s", e.msg); /* the API server hiccuped: next tick */
    return;
  }
  const char *mine_s = takeover_annotation(svc, TAKEOVER_ANN_AGENT_SELECTOR);
  const char *orig_s = takeover_annotation(svc, TAKEOVER_ANN_ORIGINAL_SELECTOR);
  cJSON *mine = mine_s ? cJSON_Parse(mine_s) : NULL, *orig = orig_s ? cJSON_Parse(orig_s) : NULL;
  const cJSON *sel = conn_jget(svc, "spec.selector");
  enum takeover_sel st = mine ? takeover_selector_state(sel, mine, orig) : TAKEOVER_SEL_AGENT;
  /* No annotations: the takeover was ended elsewhere (restore, lease); the
   * tunnels notice the agent going. */
  if (st == TAKEOVER_SEL_AGENT) {
    if (mine) guard_policy(c, svc);
    goto done;
  }
  char *cur = sel ? cJSON_PrintUnformatted(sel) : NULL;
  char seen[512];
  snprintf(seen, sizeof seen, "%s", cur ? cur : "none");
  free(cur);
  struct guard_arg ga = {mine, orig, 0, TAKEOVER_SEL_AGENT, ""};
  if (st == TAKEOVER_SEL_MERGED) {
    /* First the Service back to real pods, whatever happens next. */
    if (kube_update_retry(c->k, &r, guard_mutate, &ga, NULL, &e) < 0) {
      log_warn("re-sync guard: cannot repair the selector %s: %s", seen, e.msg);
      goto done;
    }
    conn_progress(c, "selector-reverted",
                  "service %s/%s: its selector became %s (a re-apply of its "
                  "manifest merged it with kbridge's, matching no pod); set to %s",
                  c->ns, c->svc, seen, ga.now);
    cJSON *now = cJSON_Parse(ga.now);
    st = takeover_selector_state(now, mine, orig);
    cJSON_Delete(now);
  } else if (strcmp(seen, c->guard_seen) != 0) {
    conn_progress(c, "selector-reverted", "service %s/%s: its selector became %s", c->ns, c->svc,
                  seen);
  }
  snprintf(c->guard_seen, sizeof c->guard_seen, "%s", seen);
  char m[1200];
  if (st != TAKEOVER_SEL_ORIGINAL) {
    snprintf(m, sizeof m, "service %s/%s: its selector was replaced with %s by someone else while "
             "taken over; theirs stands and the session ends", c->ns, c->svc,
             ga.now[0] ? ga.now : seen);
    guard_end(c, m);
    goto done;
  }
  /* The original selector is back: take over again, a bounded number of times. */
  double t = conn_now_s();
  int recent = 0;
  for (int i = 0; i < c->nretakes; i++) recent += t - c->retakes[i] < GUARD_WINDOW_S;
  if (recent >= GUARD_RETAKES) {
    snprintf(m, sizeof m, "service %s/%s: its selector was reverted %d times in %.0f minutes (a "
             "GitOps controller, Helm or kubectl apply keeps re-applying its manifest: pause it "
             "for this Service, see \"On a real cluster\" in the user guide); the Service "
             "selects its own pods again and the session ends", c->ns, c->svc, GUARD_RETAKES + 1,
             GUARD_WINDOW_S / 60);
    guard_end(c, m);
    goto done;
  }
  ga.retake = 1;
  if (kube_update_retry(c->k, &r, guard_mutate, &ga, NULL, &e) < 0) {
    log_warn("re-sync guard: cannot take the Service over again: %s", e.msg);
    goto done;
  }
  if (c->nretakes == GUARD_RETAKES) {
    memmove(c->retakes, c->retakes + 1, sizeof c->retakes[0] * (GUARD_RETAKES - 1));
    c->nretakes--;
  }
  c->retakes[c->nretakes++] = t;
  c->guard_seen[0] = '\0';
  conn_progress(c, "retake", "service %s/%s selects the agent again (%d of %d re-takeovers in %.0f "
           "minutes)", c->ns, c->svc, recent + 1, GUARD_RETAKES, GUARD_WINDOW_S / 60);
done:
  cJSON_Delete(mine);
  cJSON_Delete(orig);
  cJSON_Delete(svc);
}

static void hook_started(void *arg, struct proxy *px, struct event_base *base) {
  struct conn *c = arg;
  c->px = px;
  c->agent_seen = conn_now_s();
  c->tunnel_timer = evtimer_new(base, tunnel_timeout_cb, c);
  if (c->tunnel_timer) {
    struct timeval tv = {c->cfg->timeout, 0};
    evtimer_add(c->tunnel_timer, &tv);
  }
  c->guard_timer = event_new(base, -1, EV_PERSIST, guard_cb, c);
  if (c->guard_timer) {
    struct timeval tv = {GUARD_PERIOD_MS / 1000, (GUARD_PERIOD_MS % 1000) * 1000};
    event_add(c->guard_timer, &tv);
  }
  if (c->cfg->cmd) {
    c->sigchld = evsignal_new(base, SIGCHLD, sigchld_cb, c);
    if (c->sigchld) event_add(c->sigchld, NULL);
  }
  conn_services_start(c, base);
  conn_multi_watch(c, base);
  if (!c->cfg->no_http_proxy) {
    char err[400];
    if (!proxy_listen_http(px, &c->cfg->http_proxy, c->http_proxy, sizeof c->http_proxy, err,
                           sizeof err)) {
      log_warn("--http-proxy: %s; your process gets no proxy", err);
      c->http_proxy[0] = '\0';
    }
  }
}

/* The proxy variables for the local process, pointing at our HTTP/SOCKS5
 * proxy. They replace the container's own: a proxy named there is a cluster
 * address this machine cannot reach, and ours dials from inside the cluster. */
static void proxy_env(struct conn *c, cJSON *env) {
  if (!c->http_proxy[0]) return;
  char http[340], socks[340];
  snprintf(http, sizeof http, "http://%s", c->http_proxy);
  snprintf(socks, sizeof socks, "socks5h://%s", c->http_proxy);
  const char *vars[][2] = {{"HTTP_PROXY", http}, {"http_proxy", http},   {"HTTPS_PROXY", http},
                           {"https_proxy", http}, {"ALL_PROXY", socks}, {"all_proxy", socks},
                           {"NO_PROXY", "localhost,127.0.0.1,::1"},
                           {"no_proxy", "localhost,127.0.0.1,::1"}};
  for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
    const char *old = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(env, vars[i][0]));
    if (old && strcmp(old, vars[i][1]) != 0)
      log_info("env %s: the container's \"%s\" replaced by kbridge's proxy", vars[i][0], old);
    cJSON_DeleteItemFromObjectCaseSensitive(env, vars[i][0]);
    cJSON_AddStringToObject(env, vars[i][0], vars[i][1]);
  }
}

static void hook_stopped(void *arg, struct proxy *px) {
  struct conn *c = arg;
  conn_services_stop(c); /* the watch lives in the loop's base, freed next */
  conn_multi_unwatch(c);
}

static void start_child(struct conn *c, const cJSON *env) {
  pid_t pid = fork();
  if (pid < 0) {
    conn_fail(c, "cannot start %s: %s", c->cfg->cmd[0], strerror(errno));
    proxy_shutdown(c->px, 1);
    return;
  }
  if (pid == 0) {
    const cJSON *kv;
    cJSON_ArrayForEach(kv, env) setenv(kv->string, kv->valuestring, 1);
    setenv("KBRIDGE_ROUTE_KEY", c->cfg->key, 1);
    signal(SIGPIPE, SIG_DFL);
    /* The JSON event stream on stdout stays ours: the command's output goes
     * to stderr. */
    if (c->json) dup2(STDERR_FILENO, STDOUT_FILENO);
    /* Our sockets (tunnels, API server) must not live on in the command: a
     * command outliving a killed kbridge would keep the tunnels open and the
     * agent's lease would never run out. */
    close_range(3, ~0U, 0);
    execvp(c->cfg->cmd[0], c->cfg->cmd);
    fprintf(stderr, "kbridge: cannot run %s: %s\n", c->cfg->cmd[0], strerror(errno));
    _exit(127);
  }
  c->child = pid;
  conn_progress(c, "command-started", "started %s (pid %ld)", c->cfg->cmd[0], (long)pid);
}

static void hook_forward_bound(void *arg, size_t index, const char *bound) {
  struct conn *c = arg;
  char target[300];
  if (index >= OPT_FORWARDS_MAX) return;
  snprintf(c->fwd_bound[index], sizeof c->fwd_bound[index], "%s", bound);
  conn_progress(c, "forward", "forward %s -> %s (connections go out from the agent's pod)", bound,
           addr_format(&c->cfg->forwards.v[index].target, target, sizeof target));
}

/* The connection log: one "connection" event per cluster connection that
 * reached (or failed to reach) the local process. Text output logs only the
 * failures (on stderr, through proxy.c). */
static void hook_inbound(void *arg, const struct proxy_inbound *ev) {
  struct conn *c = arg;
  if (!c->json) return;
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "event", "connection");
  cJSON_AddStringToObject(o, "state", ev->what);
  cJSON_AddStringToObject(o, "peer", ev->peer);
  cJSON_AddNumberToObject(o, "port", ev->port);
  cJSON_AddNumberToObject(o, "local_port", c->cfg->local_port);
  if (ev->error) cJSON_AddStringToObject(o, "error", ev->error);
  if (strcmp(ev->what, "closed") == 0) {
    cJSON_AddNumberToObject(o, "bytes_in", (double)ev->bytes_in);
    cJSON_AddNumberToObject(o, "bytes_out", (double)ev->bytes_out);
    cJSON_AddNumberToObject(o, "seconds", ev->seconds);
  }
  cJSON_AddNumberToObject(o, "elapsed", conn_now_s() - c->t0);
  conn_emit_json(o);
}

static void hook_welcome(void *arg, int ok, const char *message) {
  struct conn *c = arg;
  if (!ok) {
    conn_fail(c, "the agent refused route \"%s\": %s", c->cfg->key, message);
    return;
  }
  if (c->ready_announced) return;
  c->ready_announced = 1;
  double dt = conn_now_s() - c->t0;
  /* What a client in the cluster can use to reach you: the Service's own name
   * (<svc>.<ns>.svc resolves from every namespace through the pods' search
   * path, whatever the cluster domain) with your route header, or with a Host
   * whose first label is your key. No URL with your key in its host name: no
   * DNS record exists for alice.api.shop.svc.cluster.local; a name per
   * developer that resolves is what the --ingress clones give. */
  char host[300], hdr[120], hosthdr[200];
  snprintf(host, sizeof host, "%s.%s.svc", c->svc, c->ns);
  snprintf(hdr, sizeof hdr, "kubernetes-route-as: %s", c->cfg->key);
  snprintf(hosthdr, sizeof hosthdr, "Host: %s.%s", c->cfg->key, c->svc);
  cJSON *secrets = c->env_secrets, *env = c->env; /* resolved at start, or now */
  c->env = c->env_secrets = NULL;
  if (!env) env = conn_resolve_env(c, &secrets);
  conn_forward_service_links(c, env); /* --forward first: named by hand, they win */
  conn_services_env(c, env);
  proxy_env(c, env);
  conn_volumes_write(c, env);
  conn_env_overrides(c, env); /* --env, kbridge.yaml's env: last, over everything */
  cJSON *fwds = cJSON_CreateArray();
  for (size_t i = 0; i < c->cfg->forwards.n; i++) {
    char target[300];
    cJSON *f = cJSON_CreateObject();
    cJSON_AddStringToObject(f, "listen", c->fwd_bound[i]);
    cJSON_AddStringToObject(f, "target",
                            addr_format(&c->cfg->forwards.v[i].target, target, sizeof target));
    cJSON_AddItemToArray(fwds, f);
  }
  enum envfmt_format ef = ENVFMT_DOTENV;
  envfmt_parse(c->cfg->env_format, &ef); /* checked by connect_run() */
  if (c->cfg->env_file && conn_write_env(c, env, secrets, ef, c->cfg->env_file) == 0)
    conn_progress(c, "env-file", "environment of the original container written to %s (%s)",
                  c->cfg->env_file, envfmt_name(ef));
  cJSON_Delete(secrets);
  cJSON *urls = cJSON_CreateArray();
  for (int i = 0; i < c->nports; i++) {
    char u[600];
    snprintf(u, sizeof u, "http://%s:%d/", host, c->ports[i].port);
    cJSON_AddItemToArray(urls, cJSON_CreateString(u));
  }
  if (c->json) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "event", "ready");
    cJSON_AddStringToObject(o, "route", c->cfg->key);
    cJSON_AddStringToObject(o, "identity", c->identity);
    cJSON_AddStringToObject(o, "mode", c->cfg->replace ? "exclusive" : "routing");
    cJSON_AddItemToObject(o, "urls", cJSON_Duplicate(urls, 1));
    cJSON_AddStringToObject(o, "header", hdr);
    if (!c->cfg->replace) cJSON_AddStringToObject(o, "host_header", hosthdr);
    cJSON_AddNumberToObject(o, "local_port", c->cfg->local_port);
    cJSON_AddItemToObject(o, "forwards", cJSON_Duplicate(fwds, 1));
    cJSON_AddItemToObject(o, "services", conn_services_json(c));
    if (c->http_proxy[0]) cJSON_AddStringToObject(o, "http_proxy", c->http_proxy);
    if (c->multi) cJSON_AddItemToObject(o, "sessions", conn_multi_json(c));
    if (c->ingress_urls)
      cJSON_AddItemToObject(o, "ingress_urls", cJSON_Duplicate(c->ingress_urls, 1));
    cJSON_AddItemToObject(o, "env", cJSON_Duplicate(env, 1));
    cJSON_AddNumberToObject(o, "seconds", dt);
    if (message && *message) cJSON_AddStringToObject(o, "agent", message);
    conn_emit_json(o);
  } else {
    printf("ready in %.2f s: route %s -> %s:%d%s (certificate bound to %s)\n", dt, c->cfg->key,
           c->cfg->local_host, c->cfg->local_port,
           c->cfg->replace ? " (exclusive: all traffic)" : "",
           c->identity[0] ? c->identity : "no identity");
    if (!c->cfg->replace) {
      printf("  header:    curl -H '%s' http://%s:%d/\n", hdr, host, c->ports[0].port);
      printf("  host:      curl -H '%s' http://%s:%d/\n", hosthdr, host, c->ports[0].port);
    } else {
      printf("  service:   curl http://%s:%d/\n", host, c->ports[0].port);
    }
    const cJSON *f;
    cJSON_ArrayForEach(f, c->ingress_urls) printf("  ingress:   %s\n", f->valuestring);
    cJSON_ArrayForEach(f, fwds)
      printf("  forward:   %s -> %s (from inside the cluster)\n", conn_jstr(f, "listen"),
             conn_jstr(f, "target"));
    if (c->http_proxy[0])
      /* no URL: every URL this block prints works from a pod */
      printf("  proxy:     %s, your process's HTTP_PROXY and ALL_PROXY (HTTP and SOCKS5; names "
             "resolve in the cluster)\n", c->http_proxy);
    if (c->multi) {
      cJSON *more = conn_multi_json(c), *m;
      cJSON_ArrayForEach(m, more)
        printf("  also:      %s -> %s:%d (route %s, its own session, pid %d)\n",
               conn_jstr(m, "service"), c->cfg->local_host,
               (int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(m, "local_port")),
               c->cfg->key, (int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(m, "pid")));
      cJSON_Delete(more);
    }
    int shown = 0;
    for (const struct svc_fwd *s = c->svcs; s; s = s->next) {
      if (shown++ == 8) {
        printf("  service:   ... %zu more (--output json lists them)\n", c->nsvcs - 8);
        break;
      }
      printf("  service:   %s%s%s -> %s:%u%s\n", s->name, strcmp(s->ns, c->ns) ? "." : "",
             strcmp(s->ns, c->ns) ? s->ns : "", s->addr, s->p[0].local,
             s->nports > 1 ? " (and more ports)" : "");
    }
    printf("  stop with Ctrl-C or: kbridge disconnect -n %s --service %s\n", c->ns, c->svc);
    fflush(stdout);
  }
  cJSON_Delete(urls);
  cJSON_Delete(fwds);
  if (c->cfg->cmd) start_child(c, env);
  cJSON_Delete(env);
}

int conn_serve(struct conn *c, const struct sigaction *sa) {
  struct connect_config *cfg = c->cfg;
  int rc;
  static const struct proxy_hooks hooks = {NULL,          hook_open,     hook_cancel,
                                           hook_carrier_error, hook_started, hook_welcome,
                                           hook_forward_bound, hook_inbound, hook_released,
                                           hook_registered, hook_stopped};
  struct proxy_hooks h = hooks;
  h.arg = c;
  int direct = cfg->agent_address.port != 0;
  if (direct) { /* proxy.c dials TCP itself; only the events are ours */
    h.open = NULL;
    h.cancel = NULL;
    h.carrier_error = NULL;
  }
  struct proxy_config pc;
  char label[300];
  memset(&pc, 0, sizeof pc);
  snprintf(pc.key, sizeof pc.key, "%s", cfg->key);
  pc.local_port = cfg->local_port;
  pc.local_host = cfg->local_host;
  /* --tunnels to every agent pod: through the port-forward hook_open
   * chooses the pod; through --agent-address the address does, and the
   * guard redials tunnels until every ready pod has its share
   * (direct_rebalance). */
  c->per_pod = cfg->tunnels;
  pc.tunnels = cfg->tunnels * AGENT_SLOTS_PER_TUNNEL;
  if (pc.tunnels > MAX_SLOTS) pc.tunnels = MAX_SLOTS;
  pc.exclusive = cfg->replace;
  pc.force = cfg->force;
  pc.forwards = cfg->forwards;
  pc.no_propagate = cfg->no_propagate;
  pc.log_level = cfg->log_level;
  pc.hooks = &h;
  pc.ssl_ctx = c->tun_ssl;
  if (direct) {
    char a[300];
    pc.agent = cfg->agent_address;
    snprintf(label, sizeof label, "%.63s/%.79s at %.120s", c->ns, c->nm.agent,
             addr_format(&cfg->agent_address, a, sizeof a));
  } else {
    snprintf(label, sizeof label, "%.63s/%.79s (port-forward)", c->ns, c->nm.agent);
  }
  pc.agent_label = label;
  rc = proxy_run(&pc);
  if (c->sigchld) event_free(c->sigchld);
  c->sigchld = NULL;
  if (c->tunnel_timer) event_free(c->tunnel_timer);
  c->tunnel_timer = NULL;
  if (c->guard_timer) event_free(c->guard_timer);
  c->guard_timer = NULL;
  sigaction(SIGINT, sa, NULL); /* libevent restored the defaults */
  sigaction(SIGTERM, sa, NULL);
  if (c->child > 0) { /* we are leaving before the command: stop it */
    kill(c->child, SIGTERM);
    int st;
    waitpid(c->child, &st, 0);
  } else if (cfg->cmd && c->child_status >= 0 && c->ready_announced) {
    rc = c->child_status;
  }
    return rc;
}
