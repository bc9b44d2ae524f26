"""NetworkPolicy on the test node (what a policy-enforcing CNI plugin such as
Calico does on a real node): networking.k8s.io/v1 NetworkPolicies turned into
iptables filter rules of the node network namespace, where every packet
between pods passes (pod to pod over the bridge through br_netfilter, pod to
Service after the DNAT, pod to the API server out of host0, pod to the node's
DNS server in INPUT).

Semantics (those of the Kubernetes API documentation):
- a pod is isolated for ingress (egress) when some policy of its namespace
  selects it (podSelector) and has Ingress (Egress) in policyTypes; policyTypes
  defaults to Ingress, plus Egress when the policy has egress rules;
- an isolated pod accepts (sends) a new connection only when some rule of a
  policy selecting it allows it: peers podSelector (the policy's namespace),
  namespaceSelector, both together, ipBlock (cidr with except); ports by
  number or by name (resolved against the destination pod's container ports),
  protocol TCP (default), UDP or SCTP; no peers = any peer, no ports = any port;
- replies of allowed connections pass (conntrack ESTABLISHED,RELATED), and a
  connection needs both the sender's egress and the receiver's ingress;
- labelSelector: matchLabels and matchExpressions (In, NotIn, Exists,
  DoesNotExist); every namespace also carries kubernetes.io/metadata.name=<name>
  (as from Kubernetes 1.21 on; the API server here is 1.20);
- the cluster DNS (dnsmasq at the node bridge address) counts as a pod
  `kube-dns` of kube-system labelled k8s-app=kube-dns with ports dns 53/UDP and
  dns-tcp 53/TCP, so the usual "allow DNS" policies work;
- what is denied is REJECTed (TCP reset / ICMP port unreachable), not dropped,
  so tests fail fast; real plugins usually drop.
Not enforced: endPort (not in the 1.20 API), traffic a pod sends to itself
through its own IP (never leaves its netns), the kubelet's probes and
port-forward (dialled inside the pod netns, as on a real node they come from
the host and are allowed).

rules() returns the filter-table lines (chains and rules) that proxy.py puts
into the same iptables-restore as the Service rules.
"""
import hashlib
import ipaddress

MARK = "0x20000"


def _chain(prefix, key):
    return prefix + hashlib.sha256(key.encode()).hexdigest()[:16].upper()


def selector_matches(sel, labels):
    """A metav1.LabelSelector against a label dict. None = matches nothing
    (an absent selector); {} = matches everything."""
    if sel is None:
        return False
    labels = labels or {}
    for k, v in (sel.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in sel.get("matchExpressions") or []:
        k, op, vals = e.get("key"), e.get("operator"), e.get("values") or []
        if op == "In" and labels.get(k) not in vals:
            return False
        if op == "NotIn" and k in labels and labels[k] in vals:
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True


class Pod:
    def __init__(self, ns, name, labels, ip, ports):
        self.ns, self.name, self.labels, self.ip = ns, name, labels or {}, ip
        self.ports = ports   # {(name, proto): number}


def pods_from(items, dns_ip):
    out = []
    for p in items:
        ip = (p.get("status") or {}).get("podIP")
        if not ip or (p.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        ports = {}
        for c in (p.get("spec") or {}).get("containers") or []:
            for cp in c.get("ports") or []:
                if cp.get("name"):
                    ports[(cp["name"], cp.get("protocol", "TCP"))] = cp["containerPort"]
        out.append(Pod(p["metadata"]["namespace"], p["metadata"]["name"], p["metadata"].get("labels"),
                       ip, ports))
    out.append(Pod("kube-system", "kube-dns", {"k8s-app": "kube-dns"}, dns_ip,
                   {("dns", "UDP"): 53, ("dns-tcp", "TCP"): 53}))
    return out


def ns_labels(namespaces):
    out = {}
    for n in namespaces:
        name = n["metadata"]["name"]
        labels = dict(n["metadata"].get("labels") or {})
        labels.setdefault("kubernetes.io/metadata.name", name)
        out[name] = labels
    return out


def policy_types(pol):
    spec = pol.get("spec") or {}
    t = spec.get("policyTypes")
    if t:
        return set(t)
    return {"Ingress", "Egress"} if spec.get("egress") else {"Ingress"}


def peer_matches(peer, pol_ns, pod, nsl):
    """Does a NetworkPolicyPeer (not ipBlock) select pod?"""
    ps, nss = peer.get("podSelector"), peer.get("namespaceSelector")
    if nss is not None:
        if not selector_matches(nss, nsl.get(pod.ns, {"kubernetes.io/metadata.name": pod.ns})):
            return False
    elif pod.ns != pol_ns:
        return False
    return selector_matches(ps, pod.labels) if ps is not None else True


def port_specs(ports, target_pods):
    """[(proto, number or None)] for a rule's ports against the pods on the far
    side (for named ports): None = any port. [] means the rule allows nothing
    (a named port no pod has)."""
    if not ports:
        return [("all", None, None)]
    out = []
    for p in ports:
        proto = p.get("protocol", "TCP")
        port = p.get("port")
        if port is None:
            out.append((proto, None, None))
        elif isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
            out.append((proto, int(port), None))
        else:
            for tp in target_pods:
                n = tp.ports.get((port, proto))
                if n:
                    out.append((proto, n, tp.ip))
    return out


def _port_match(proto, num):
    if proto == "all":
        return ""
    p = proto.lower()
    return "-p %s" % p + (" -m %s --dport %d" % (p, num) if num else "")


def rules(policies, pod_items, namespaces, dns_ip, node_ip=None):
    """Filter-table lines: chain declarations first (':NAME - [0:0]'), then
    rules, all under the chains KB-NETPOL (FORWARD) and KB-NETPOL-IN (INPUT)."""
    pods = pods_from(pod_items, dns_ip)
    nsl = ns_labels(namespaces)
    chains = [":KB-NETPOL - [0:0]", ":KB-NETPOL-IN - [0:0]"]
    body = ["-A KB-NETPOL -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            "-A KB-NETPOL-IN -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"]
    by_ns = {}
    for pol in policies:
        by_ns.setdefault(pol["metadata"]["namespace"], []).append(pol)
    real = [p for p in pods if p.name != "kube-dns" or p.ns != "kube-system" or p.ip != dns_ip]
    for pod in sorted(real, key=lambda p: (p.ns, p.name)):
        pols = [q for q in by_ns.get(pod.ns, [])
                if selector_matches((q.get("spec") or {}).get("podSelector", {}), pod.labels)]
        for direction in ("Ingress", "Egress"):
            sel = [q for q in pols if direction in policy_types(q)]
            if not sel:
                continue
            ch = _chain("KB-NP%s-" % direction[0], "%s/%s/%s" % (pod.ns, pod.name, direction))
            chains.append(":%s - [0:0]" % ch)
            me = "-s" if direction == "Egress" else "-d"
            far = "-d" if direction == "Egress" else "-s"
            comment = "-m comment --comment %s/%s:%s" % (pod.ns, pod.name, direction.lower())
            body.append("-A KB-NETPOL %s %s/32 %s -j %s" % (me, pod.ip, comment, ch))
            if direction == "Egress":
                body.append("-A KB-NETPOL-IN %s %s/32 %s -j %s" % (me, pod.ip, comment, ch))
            body.append("-A %s -j MARK --set-xmark 0x0/%s" % (ch, MARK))
            nb = 0
            for q in sel:
                key = "ingress" if direction == "Ingress" else "egress"
                qns = q["metadata"]["namespace"]
                for r in (q.get("spec") or {}).get(key) or []:
                    peers = r.get("from" if direction == "Ingress" else "to")
                    # Targets for named ports: the destination pod(s).
                    if direction == "Ingress":
                        targets = [pod]
                    else:
                        targets = None  # computed per peer below
                    if not peers:
                        tp = targets if targets is not None else pods
                        for proto, num, dip in port_specs(r.get("ports"), tp):
                            d = (" -d %s/32" % dip) if dip and direction == "Egress" else ""
                            body.append(("-A %s%s %s -j RETURN" % (ch, d, _port_match(proto, num))).replace("  ", " "))
                        continue
                    for peer in peers:
                        ib = peer.get("ipBlock")
                        if ib:
                            try:
                                net = ipaddress.ip_network(ib["cidr"], strict=False)
                            except (KeyError, ValueError):
                                continue
                            if net.version != 4:
                                continue
                            inside = [p for p in pods if ipaddress.ip_address(p.ip) in net]
                            tp = targets if targets is not None else inside
                            excepts = [e for e in ib.get("except") or []]
                            for proto, num, dip in port_specs(r.get("ports"), tp):
                                addr = dip if (dip and direction == "Egress") else str(net)
                                pm = _port_match(proto, num)
                                if excepts:
                                    nb += 1
                                    sub = _chain("KB-NPB-", "%s/%d" % (ch, nb))
                                    chains.append(":%s - [0:0]" % sub)
                                    for e in excepts:
                                        body.append("-A %s %s %s -j RETURN" % (sub, far, e))
                                    body.append("-A %s -j MARK --set-xmark %s/%s" % (sub, MARK, MARK))
                                    body.append(("-A %s %s %s %s -j %s" % (ch, far, addr, pm, sub)).replace("  ", " "))
                                    body.append("-A %s -m mark --mark %s/%s -j RETURN" % (ch, MARK, MARK))
                                else:
                                    body.append(("-A %s %s %s %s -j RETURN" % (ch, far, addr, pm)).replace("  ", " "))
                            continue
                        matched = [p for p in pods if peer_matches(peer, qns, p, nsl)]
                        tp = targets if targets is not None else matched
                        for proto, num, dip in port_specs(r.get("ports"), tp):
                            pm = _port_match(proto, num)
                            for p in matched:
                                if dip and direction == "Egress" and dip != p.ip:
                                    continue
                                body.append(("-A %s %s %s/32 %s -j RETURN" % (ch, far, p.ip, pm)).replace("  ", " "))
            body.append("-A %s %s -j REJECT" % (ch, "-m comment --comment denied-by-networkpolicy"))
    return chains, body
