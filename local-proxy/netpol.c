/* netpol.c: the agent under the namespace's NetworkPolicies (see netpol.h). */
#include "netpol.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kube.h"

static const cJSON *get(const cJSON *o, const char *k) {
  return cJSON_GetObjectItemCaseSensitive(o, k);
}

static const char *str(const cJSON *o, const char *k) {
  return cJSON_GetStringValue(get(o, k));
}

static int in_values(const cJSON *vals, const char *v) {
  const cJSON *it;
  cJSON_ArrayForEach(it, vals) {
    if (cJSON_IsString(it) && v && strcmp(it->valuestring, v) == 0) return 1;
  }
  return 0;
}

int netpol_selects(const cJSON *sel, const cJSON *labels) {
  if (!cJSON_IsObject(sel)) return 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, get(sel, "matchLabels")) {
    const char *v = str(labels, it->string);
    if (!v || !cJSON_IsString(it) || strcmp(v, it->valuestring) != 0) return 0;
  }
  cJSON_ArrayForEach(it, get(sel, "matchExpressions")) {
    const char *key = str(it, "key"), *op = str(it, "operator");
    const char *v = key ? str(labels, key) : NULL;
    const cJSON *vals = get(it, "values");
    if (!op) return 0;
    if (strcmp(op, "In") == 0) {
      if (!v || !in_values(vals, v)) return 0;
    } else if (strcmp(op, "NotIn") == 0) {
      if (v && in_values(vals, v)) return 0;
    } else if (strcmp(op, "Exists") == 0) {
      if (!v) return 0;
    } else if (strcmp(op, "DoesNotExist") == 0) {
      if (v) return 0;
    } else {
      return 0;
    }
  }
  return 1;
}

/* policyTypes, or the API's default: Ingress, plus Egress when egress rules exist. */
static int has_type(const cJSON *pol, const char *type) {
  const cJSON *spec = get(pol, "spec"), *t = get(spec, "policyTypes");
  if (cJSON_GetArraySize(t) > 0) return in_values(t, type);
  if (strcmp(type, "Ingress") == 0) return 1;
  return cJSON_GetArraySize(get(spec, "egress")) > 0;
}

static int selects_any(const cJSON *sel, const cJSON *label_sets) {
  const cJSON *l;
  cJSON_ArrayForEach(l, label_sets) {
    if (netpol_selects(sel, l)) return 1;
  }
  return 0;
}

static int pol_selects(const cJSON *pol, const cJSON *labels) {
  const cJSON *ps = get(get(pol, "spec"), "podSelector");
  return netpol_selects(ps ? ps : NULL, labels);
}

/* Does an egress peer (not an ipBlock) select pods among label_sets of namespace ns?
 * A namespaceSelector is matched against the one label every namespace has from
 * Kubernetes 1.21 on (namespaces cannot be read with a namespace's rights). */
static int peer_selects(const cJSON *peer, const char *ns, const cJSON *label_sets) {
  if (get(peer, "ipBlock")) return 0;
  const cJSON *nss = get(peer, "namespaceSelector"), *ps = get(peer, "podSelector");
  if (nss) {
    cJSON *nl = cJSON_CreateObject();
    cJSON_AddStringToObject(nl, "kubernetes.io/metadata.name", ns);
    int ok = netpol_selects(nss, nl);
    cJSON_Delete(nl);
    if (!ok) return 0;
  }
  if (!ps) return 1;
  return selects_any(ps, label_sets);
}

static int resolves_to(const struct netpol_input *in, const char *name, int port) {
  for (int i = 0; i < in->nspecs; i++)
    if (portplan_resolve(in->specs[i], name) == port) return 1;
  return 0;
}

/* A rule's ports (on the original pods) as the agent's ports: each listener
 * serving a port the rule names. NULL when the rule has no ports (any port);
 * an empty array when none of them is served by the agent. */
static cJSON *map_ports(const struct netpol_input *in, const cJSON *ports) {
  if (cJSON_GetArraySize(ports) == 0) return NULL;
  cJSON *out = cJSON_CreateArray();
  const cJSON *p;
  cJSON_ArrayForEach(p, ports) {
    const char *proto = str(p, "protocol");
    const cJSON *v = get(p, "port");
    if (!v) { /* every port of that protocol */
      cJSON_AddItemToArray(out, cJSON_Duplicate(p, 1));
      continue;
    }
    if (proto && strcmp(proto, "TCP") != 0) continue; /* the agent serves TCP */
    for (int i = 0; i < in->plan->nl; i++) {
      const struct portplan_listener *l = &in->plan->l[i];
      int hit;
      if (cJSON_IsNumber(v))
        hit = (l->target && l->target == v->valueint) ||
              (l->tname[0] && resolves_to(in, l->tname, v->valueint));
      else if (cJSON_IsString(v))
        hit = (l->tname[0] && strcmp(l->tname, v->valuestring) == 0) ||
              (l->target && resolves_to(in, v->valuestring, l->target));
      else
        hit = 0;
      if (!hit) continue;
      cJSON *q = cJSON_CreateObject();
      cJSON_AddStringToObject(q, "protocol", "TCP");
      cJSON_AddNumberToObject(q, "port", l->port);
      cJSON_AddItemToArray(out, q);
    }
  }
  return out;
}

/* A copy of rule whose ports are mapped onto the agent, or NULL when it lets
 * nothing through to the agent. */
static cJSON *mapped_rule(const struct netpol_input *in, const cJSON *rule) {
  cJSON *ports = map_ports(in, get(rule, "ports"));
  if (ports && cJSON_GetArraySize(ports) == 0) {
    cJSON_Delete(ports);
    return NULL;
  }
  cJSON *r = cJSON_Duplicate(rule, 1);
  cJSON_DeleteItemFromObjectCaseSensitive(r, "ports");
  if (ports) cJSON_AddItemToObject(r, "ports", ports);
  return r;
}

/* The rules of direction type ("Ingress" or "Egress") of every policy that
 * selects one of the original pods' label sets (orig), onto out: ingress rules
 * with their ports mapped to the agent's (mapped_rule; a rule with no port the
 * agent serves is left out), egress rules as they are. Returns how many. */
static int copy_rules(const struct netpol_input *in, const cJSON *orig, const char *type,
                      cJSON *out) {
  int ingress = strcmp(type, "Ingress") == 0, n = 0;
  const cJSON *pol;
  cJSON_ArrayForEach(pol, in->policies) {
    if (!has_type(pol, type) || !selects_any(get(get(pol, "spec"), "podSelector"), orig))
      continue;
    const cJSON *rule;
    cJSON_ArrayForEach(rule, get(get(pol, "spec"), ingress ? "ingress" : "egress")) {
      cJSON *m = ingress ? mapped_rule(in, rule) : cJSON_Duplicate(rule, 1);
      if (m) {
        cJSON_AddItemToArray(out, m);
        n++;
      }
    }
  }
  return n;
}

static cJSON *agent_selector(const char *svc) {
  cJSON *s = cJSON_CreateObject();
  cJSON *ml = cJSON_AddObjectToObject(s, "matchLabels");
  cJSON_AddStringToObject(ml, "kbridge.dev/agent", svc);
  return s;
}

static cJSON *policy(const struct netpol_input *in, const char *name) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "apiVersion", "networking.k8s.io/v1");
  cJSON_AddStringToObject(o, "kind", "NetworkPolicy");
  cJSON *md = cJSON_AddObjectToObject(o, "metadata");
  cJSON_AddStringToObject(md, "name", name);
  cJSON_AddStringToObject(md, "namespace", in->ns);
  cJSON *l = cJSON_AddObjectToObject(md, "labels");
  cJSON_AddStringToObject(l, "app.kubernetes.io/managed-by", "kbridge");
  cJSON_AddStringToObject(l, "kbridge.dev/service", in->svc);
  cJSON_AddObjectToObject(o, "spec");
  return o;
}

static void port_item(cJSON *ports, const char *proto, const cJSON *port) {
  cJSON *p = cJSON_CreateObject();
  cJSON_AddStringToObject(p, "protocol", proto);
  cJSON_AddItemToObject(p, "port", cJSON_Duplicate(port, 1));
  cJSON_AddItemToArray(ports, p);
}

/* rule.ports: the original pods' target ports (by name where named), TCP. */
static void target_ports(const struct netpol_input *in, cJSON *rule) {
  cJSON *ports = cJSON_AddArrayToObject(rule, "ports");
  for (int i = 0; i < in->plan->nl; i++) {
    const struct portplan_listener *l = &in->plan->l[i];
    cJSON *v = l->tname[0] ? cJSON_CreateString(l->tname) : cJSON_CreateNumber(l->target);
    port_item(ports, "TCP", v);
    cJSON_Delete(v);
  }
}

/* The agent's own egress needs: the original pods on their target ports, DNS,
 * the API server. */
static void agent_extras(const struct netpol_input *in, cJSON *egress) {
  cJSON *r = cJSON_CreateObject(), *to = cJSON_AddArrayToObject(r, "to"), *peer = cJSON_CreateObject();
  cJSON *ps = cJSON_AddObjectToObject(peer, "podSelector");
  cJSON_AddItemToObject(ps, "matchLabels", cJSON_Duplicate(in->orig_selector, 1));
  cJSON_AddItemToArray(to, peer);
  target_ports(in, r);
  cJSON_AddItemToArray(egress, r);
  r = cJSON_CreateObject();
  cJSON *ports = cJSON_AddArrayToObject(r, "ports");
  cJSON *dns = cJSON_CreateNumber(53);
  port_item(ports, "UDP", dns);
  port_item(ports, "TCP", dns);
  cJSON_Delete(dns);
  cJSON_AddItemToArray(egress, r);
  if (in->api_ip && in->api_port > 0) {
    char cidr[64];
    snprintf(cidr, sizeof cidr, "%s/%d", in->api_ip, strchr(in->api_ip, ':') ? 128 : 32);
    r = cJSON_CreateObject();
    to = cJSON_AddArrayToObject(r, "to");
    peer = cJSON_CreateObject();
    cJSON_AddStringToObject(cJSON_AddObjectToObject(peer, "ipBlock"), "cidr", cidr);
    cJSON_AddItemToArray(to, peer);
    ports = cJSON_AddArrayToObject(r, "ports");
    cJSON *ap = cJSON_CreateNumber(in->api_port);
    port_item(ports, "TCP", ap);
    cJSON_Delete(ap);
    cJSON_AddItemToArray(egress, r);
  }
}

void netpol_plan_build(const struct netpol_input *in, struct netpol_plan *out) {
  memset(out, 0, sizeof *out);
  out->objs = cJSON_CreateArray();
  cJSON *orig = cJSON_Duplicate(in->orig_labels, 1);
  if (!cJSON_IsArray(orig)) {
    cJSON_Delete(orig);
    orig = cJSON_CreateArray();
  }
  if (cJSON_GetArraySize(orig) == 0) /* no pod yet: they carry at least the selector */
    cJSON_AddItemToArray(orig, cJSON_Duplicate(in->orig_selector, 1));
  int agent_in = 0, agent_eg = 0, orig_in = 0, orig_eg = 0;
  const cJSON *pol;
  cJSON_ArrayForEach(pol, in->policies) {
    int in_t = has_type(pol, "Ingress"), eg_t = has_type(pol, "Egress");
    if (pol_selects(pol, in->agent_labels)) {
      agent_in |= in_t;
      agent_eg |= eg_t;
    }
    const cJSON *l;
    cJSON_ArrayForEach(l, orig) {
      if (!pol_selects(pol, l)) continue;
      orig_in |= in_t;
      orig_eg |= eg_t;
    }
  }
  size_t sl = 0;
  if (agent_in || agent_eg) {
    char name[300];
    snprintf(name, sizeof name, "kbridge-agent-%s", in->svc);
    cJSON *o = policy(in, name), *spec = cJSON_GetObjectItemCaseSensitive(o, "spec");
    cJSON_AddItemToObject(spec, "podSelector", agent_selector(in->svc));
    cJSON *types = cJSON_AddArrayToObject(spec, "policyTypes");
    int ncopied = 0;
    if (agent_in) {
      cJSON_AddItemToArray(types, cJSON_CreateString("Ingress"));
      cJSON *ing = cJSON_AddArrayToObject(spec, "ingress");
      if (!orig_in)
        cJSON_AddItemToArray(ing, cJSON_CreateObject());
      else
        ncopied += copy_rules(in, orig, "Ingress", ing);
    }
    if (agent_eg) {
      cJSON_AddItemToArray(types, cJSON_CreateString("Egress"));
      cJSON *eg = cJSON_AddArrayToObject(spec, "egress");
      if (!orig_eg) {
        cJSON_AddItemToArray(eg, cJSON_CreateObject());
      } else {
        ncopied += copy_rules(in, orig, "Egress", eg);
        agent_extras(in, eg);
      }
    }
    cJSON_AddItemToArray(out->objs, o);
    sl += (size_t)snprintf(out->summary + sl, sizeof out->summary - sl,
                           "networkpolicy %s lets the agent do what the original pods may "
                           "(%d rule%s copied%s%s)", name, ncopied, ncopied == 1 ? "" : "s",
                           agent_eg && orig_eg ? ", plus the original pods, DNS" : "",
                           agent_eg && orig_eg ? (in->api_ip ? " and the API server" : "") : "");
  }
  /* The original pods isolated for ingress: they must let the agent in (unrouted
   * traffic), on their target ports. */
  if (orig_in) {
    char name[300];
    snprintf(name, sizeof name, "kbridge-%s-from-agent", in->svc);
    cJSON *o = policy(in, name), *spec = cJSON_GetObjectItemCaseSensitive(o, "spec");
    cJSON_AddItemToObject(cJSON_AddObjectToObject(spec, "podSelector"), "matchLabels",
                          cJSON_Duplicate(in->orig_selector, 1));
    cJSON_AddItemToArray(cJSON_AddArrayToObject(spec, "policyTypes"), cJSON_CreateString("Ingress"));
    cJSON *r = cJSON_CreateObject(), *from = cJSON_AddArrayToObject(r, "from"), *p = cJSON_CreateObject();
    cJSON_AddItemToObject(p, "podSelector", agent_selector(in->svc));
    cJSON_AddItemToArray(from, p);
    target_ports(in, r);
    cJSON_AddItemToArray(cJSON_AddArrayToObject(spec, "ingress"), r);
    cJSON_AddItemToArray(out->objs, o);
    sl += (size_t)snprintf(out->summary + sl, sizeof out->summary - sl,
                           "%snetworkpolicy %s lets the agent reach the original pods", sl ? "; " : "",
                           name);
  }
  /* Clients: policies whose egress names the original pods (and not the agent). */
  int nclients = 0;
  char clients[300] = "";
  cJSON_ArrayForEach(pol, in->policies) {
    if (!has_type(pol, "Egress")) continue;
    const char *pname = str(get(pol, "metadata"), "name");
    cJSON *rules = cJSON_CreateArray();
    const cJSON *rule;
    cJSON_ArrayForEach(rule, get(get(pol, "spec"), "egress")) {
      const cJSON *peer;
      int hit = 0;
      cJSON_ArrayForEach(peer, get(rule, "to")) {
        if (peer_selects(peer, in->ns, orig)) hit = 1;
      }
      if (!hit) continue;
      /* The agent's labels: does the peer already cover it? */
      int covers_agent = 0;
      cJSON *al = cJSON_CreateArray();
      cJSON_AddItemToArray(al, cJSON_Duplicate(in->agent_labels, 1));
      cJSON_ArrayForEach(peer, get(rule, "to")) {
        if (peer_selects(peer, in->ns, al)) covers_agent = 1;
      }
      cJSON_Delete(al);
      if (covers_agent) continue;
      cJSON *ports = map_ports(in, get(rule, "ports"));
      if (ports && cJSON_GetArraySize(ports) == 0) {
        cJSON_Delete(ports);
        continue;
      }
      cJSON *r = cJSON_CreateObject(), *to = cJSON_AddArrayToObject(r, "to"), *p = cJSON_CreateObject();
      cJSON_AddItemToObject(p, "podSelector", agent_selector(in->svc));
      cJSON_AddItemToArray(to, p);
      if (ports) cJSON_AddItemToObject(r, "ports", ports);
      cJSON_AddItemToArray(rules, r);
    }
    if (cJSON_GetArraySize(rules) == 0 || !pname) {
      cJSON_Delete(rules);
      continue;
    }
    char name[300];
    snprintf(name, sizeof name, "kbridge-%s-egress-%.200s", in->svc, pname);
    if (strlen(name) > 253) name[253] = '\0';
    cJSON *o = policy(in, name), *spec = cJSON_GetObjectItemCaseSensitive(o, "spec");
    const cJSON *ps = get(get(pol, "spec"), "podSelector");
    cJSON_AddItemToObject(spec, "podSelector", ps ? cJSON_Duplicate(ps, 1) : cJSON_CreateObject());
    cJSON *types = cJSON_AddArrayToObject(spec, "policyTypes");
    cJSON_AddItemToArray(types, cJSON_CreateString("Egress"));
    cJSON_AddItemToObject(spec, "egress", rules);
    cJSON_AddItemToArray(out->objs, o);
    size_t cl = strlen(clients);
    if (cl < sizeof clients - 80)
      snprintf(clients + cl, sizeof clients - cl, "%s%s", nclients ? ", " : "", pname);
    nclients++;
  }
  if (nclients && sl < sizeof out->summary)
    snprintf(out->summary + sl, sizeof out->summary - sl,
             "%spods allowed to reach the original pods by polic%s %s may reach the agent too",
             sl ? "; " : "", nclients == 1 ? "y" : "ies", clients);
  cJSON_Delete(orig);
}

void netpol_plan_free(struct netpol_plan *p) {
  cJSON_Delete(p->objs);
  p->objs = NULL;
}

static int ip_literal(const char *s) {
  unsigned char buf[16];
  return s && (inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1);
}

int netpol_inspect(struct kube *k, struct netpol_input *in, struct netpol_plan *out,
                   char *warn, size_t warnlen, char *err, size_t errlen) {
  struct kube_ref r = {"networking.k8s.io/v1", "networkpolicies", in->ns, NULL, NULL};
  struct kube_err e;
  cJSON *list = NULL;
  memset(out, 0, sizeof *out);
  out->objs = cJSON_CreateArray();
  warn[0] = '\0';
  if (kube_list(k, &r, NULL, &list, &e) < 0) {
    if (e.status == 403) {
      /* Without them kbridge cannot tell whether the takeover would cut the
       * Service off (a default-deny namespace): refused, nothing written. */
      snprintf(err, errlen, "kbridge must read the NetworkPolicies of %s before taking a Service "
               "over (in a namespace that denies by default the agent would be cut off and the "
               "Service with it), but you may not list networkpolicies there (%s); ask for the "
               "rights of deploy/rbac/developer-role.yaml (networkpolicies: get, list, create, "
               "delete)", in->ns, e.msg);
      return 1;
    }
    snprintf(err, errlen, "%s", e.msg);
    return -1;
  }
  const cJSON *items = get(list, "items");
  if (cJSON_GetArraySize(items) == 0) {
    cJSON_Delete(list);
    return 0;
  }
  /* The API server as the agent reaches it: the kubernetes Service's endpoint. */
  char ip[64] = "";
  int port = 0;
  struct kube_ref er = {"v1", "endpoints", "default", "kubernetes", NULL};
  cJSON *ep = NULL;
  if (kube_get(k, &er, &ep, &e) == 0) {
    const cJSON *ss = cJSON_GetArrayItem(get(ep, "subsets"), 0);
    const char *a = str(cJSON_GetArrayItem(get(ss, "addresses"), 0), "ip");
    const cJSON *p = get(cJSON_GetArrayItem(get(ss, "ports"), 0), "port");
    if (a && cJSON_IsNumber(p)) {
      snprintf(ip, sizeof ip, "%s", a);
      port = p->valueint;
    }
  }
  cJSON_Delete(ep);
  if (!ip[0] && ip_literal(kube_server_host(k))) {
    snprintf(ip, sizeof ip, "%s", kube_server_host(k));
    port = kube_server_port(k);
  }
  in->policies = items;
  in->api_ip = ip[0] ? ip : NULL;
  in->api_port = port;
  cJSON_Delete(out->objs);
  netpol_plan_build(in, out);
  in->policies = NULL;
  in->api_ip = NULL;
  cJSON_Delete(list);
  const cJSON *o;
  int agent_eg = 0;
  cJSON_ArrayForEach(o, out->objs) {
    const char *n = str(get(o, "metadata"), "name");
    if (n && strncmp(n, "kbridge-agent-", 14) == 0 && get(get(o, "spec"), "egress")) agent_eg = 1;
    struct kube_ref cr = {"networking.k8s.io/v1", "networkpolicies", in->ns, NULL, NULL};
    char *body = cJSON_PrintUnformatted(o);
    int rc = kube_request(k, "POST", "create", &cr, "dryRun=All", "application/json", body, NULL, &e);
    free(body);
    if (rc < 0) {
      if (e.status == 403) {
        snprintf(err, errlen, "NetworkPolicies in %s isolate the Service's pods or the agent, and "
                 "the agent needs a NetworkPolicy of its own (%s), but you may not create "
                 "networkpolicies there (%s); ask for the rights of "
                 "deploy/rbac/developer-role.yaml (networkpolicies: get, list, create, delete)",
                 in->ns, n ? n : "?", e.msg);
        return 1;
      }
      snprintf(err, errlen, "networkpolicy %s (dry run): %s", n ? n : "?", e.msg);
      return -1;
    }
  }
  if (agent_eg && !ip[0] && !warn[0])
    snprintf(warn, warnlen, "the API server's address inside the cluster is unknown (the "
             "kubernetes Endpoints are not readable and the kubeconfig names a host, %s): the "
             "agent's policy does not open egress to it, so the agent cannot restore the Service "
             "by itself if this CLI dies; `kbridge restore` still works", kube_server_host(k));
  return 0;
}

int netpol_create(struct kube *k, const char *ns, const char *agent, const char *uid,
                  const struct netpol_plan *p, struct kube_err *e) {
  const cJSON *o;
  cJSON_ArrayForEach(o, p->objs) {
    cJSON *c = cJSON_Duplicate(o, 1);
    cJSON *refs = cJSON_AddArrayToObject(cJSON_GetObjectItemCaseSensitive(c, "metadata"),
                                         "ownerReferences");
    cJSON *ref = cJSON_CreateObject();
    cJSON_AddStringToObject(ref, "apiVersion", "apps/v1");
    cJSON_AddStringToObject(ref, "kind", "Deployment");
    cJSON_AddStringToObject(ref, "name", agent);
    cJSON_AddStringToObject(ref, "uid", uid);
    cJSON_AddItemToArray(refs, ref);
    struct kube_ref r = {"networking.k8s.io/v1", "networkpolicies", ns, NULL, NULL};
    int rc = kube_create(k, &r, c, NULL, e);
    cJSON_Delete(c);
    if (rc < 0) return -1;
  }
  return 0;
}
