"""Services on the test node (what kube-proxy and CoreDNS do in a real
cluster), all inside the node network namespace:

- iptables nat rules: a ClusterIP:port is DNATed to one of the ready
  endpoints, picked with `-m statistic --mode random` (like kube-proxy's
  iptables mode); every DNATed connection leaving through the bridge or the
  host link is masqueraded (so pod-to-self and pod-to-pod through a Service
  work without br_netfilter, and the API server sees the node address).
- filter rules: nothing from the root namespace (host0) is forwarded to pods
  unless it answers a connection a pod opened, or it was DNATed by a
  NodePort rule (node address:nodePort -> ready endpoints, as on a node).
- NetworkPolicy (netpol.py): chains KB-NETPOL (FORWARD, before the
  Service filter rules) and KB-NETPOL-IN (INPUT from the bridge) of the same
  filter table.
- dnsmasq on the bridge address answers <svc>.<ns>.svc.cluster.local from a
  hosts file this module rewrites (SIGHUP on change); the kube-dns Service
  (ClusterIP .10) points at it. Headless Services resolve to their ready
  endpoint addresses.

sync() rebuilds everything from a list of Services and Endpoints and applies
it only when it changed; the node calls it on every watch event.
"""
import hashlib
import os
import signal
import subprocess
import sys
import time


def chain_name(key):
    return "KB-SVC-" + hashlib.sha256(key.encode()).hexdigest()[:16].upper()


def dns_hosts(services, endpoints):
    """The hosts file dnsmasq serves: <svc>.<ns>.svc.cluster.local -> the
    ClusterIP, or the ready endpoint addresses of a headless Service."""
    eps = {(e["metadata"]["namespace"], e["metadata"]["name"]): e for e in endpoints}
    hosts = []
    for s in sorted(services, key=lambda s: (s["metadata"]["namespace"], s["metadata"]["name"])):
        ns, name = s["metadata"]["namespace"], s["metadata"]["name"]
        fqdn = "%s.%s.svc.cluster.local" % (name, ns)
        ip = s["spec"].get("clusterIP")
        if ip and ip != "None":
            hosts.append("%s\t%s" % (ip, fqdn))
        elif ip == "None":
            ep = eps.get((ns, name), {})
            addrs = sorted({a["ip"] for ss in ep.get("subsets") or [] for a in ss.get("addresses") or []})
            hosts += ["%s\t%s" % (a, fqdn) for a in addrs]
    return "\n".join(hosts) + "\n"


class Dns:
    """dnsmasq on the bridge address of the node netns, answering from a hosts
    file (state dir dns/hosts) that write() replaces (SIGHUP on change)."""

    def __init__(self, state_dir, node_netns, bridge_ip):
        self.state_dir, self.node_netns, self.bridge_ip = state_dir, node_netns, bridge_ip
        self.hosts_file = os.path.join(state_dir, "dns", "hosts")
        self.applied = None
        self.proc = None
        self.started = 0.0

    def start(self):
        os.makedirs(os.path.dirname(self.hosts_file), exist_ok=True)
        open(self.hosts_file, "a").close()
        logf = open(os.path.join(self.state_dir, "logs", "dnsmasq.log"), "ab")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.node_netns, "dnsmasq", "--keep-in-foreground",
             "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--addn-hosts=" + self.hosts_file,
             "--listen-address=" + self.bridge_ip, "--bind-interfaces", "--except-interface=lo",
             "--local=/cluster.local/", "--domain-needed", "--cache-size=0", "--user=root",
             "--pid-file=", "--log-facility=-"],
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.started = time.monotonic()
        logf.close()

    def check(self):
        if self.proc and self.proc.poll() is not None:
            sys.stderr.write("dnsmasq exited (%s); restarting\n" % self.proc.returncode)
            time.sleep(1)
            self.start()
            self.applied = None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()

    def write(self, text):
        if text == self.applied:
            return
        tmp = self.hosts_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.hosts_file)
        if self.proc and self.proc.poll() is None:
            # A SIGHUP before dnsmasq has set its handler would end it.
            time.sleep(max(0.0, self.started + 1.0 - time.monotonic()))
            # the dnsmasq pid is a child of `ip netns exec` which exec'd, so it is the same pid
            os.kill(self.proc.pid, signal.SIGHUP)
        self.applied = text


class Proxy:
    def __init__(self, node):
        self.node = node
        self.net = node.net
        self.applied_rules = None
        self.dns = Dns(node.state_dir, node.node_netns, self.net["bridge_ip"])

    def start_dns(self):
        self.dns.start()

    def check_dns(self):
        self.dns.check()

    def stop(self):
        self.dns.stop()

    def sync(self, services, endpoints, netpol=None):
        """netpol: (chains, rules) of the filter table from netpol.rules(), or None."""
        np_chains, np_rules = netpol or ([], [])
        eps = {(e["metadata"]["namespace"], e["metadata"]["name"]): e for e in endpoints}
        nat = [":KB-SERVICES - [0:0]", ":KB-POSTROUTING - [0:0]"]
        body = []
        for s in sorted(services, key=lambda s: (s["metadata"]["namespace"], s["metadata"]["name"])):
            ns, name = s["metadata"]["namespace"], s["metadata"]["name"]
            ip = s["spec"].get("clusterIP")
            ep = eps.get((ns, name), {})
            if not ip or ip == "None":
                continue
            for sp in s["spec"].get("ports") or []:
                proto = sp.get("protocol", "TCP")
                if proto not in ("TCP", "UDP"):
                    continue
                targets = []
                for ss in ep.get("subsets") or []:
                    port = next((p["port"] for p in ss.get("ports") or []
                                 if p.get("name", "") == sp.get("name", "") and p.get("protocol", "TCP") == proto),
                                None)
                    if port is None:
                        continue
                    targets += ["%s:%d" % (a["ip"], port) for a in ss.get("addresses") or []]
                targets.sort()
                p = proto.lower()
                if not targets:
                    # No ready endpoint: refuse at once, as kube-proxy does.
                    body.append(("filter", "-A KB-FORWARD -d %s/32 -p %s -m %s --dport %d -j REJECT"
                                 % (ip, p, p, sp["port"])))
                    body.append(("filter", "-A KB-INPUT -d %s/32 -p %s -m %s --dport %d -j REJECT"
                                 % (ip, p, p, sp["port"])))
                    continue
                ch = chain_name("%s/%s/%s/%s" % (ns, name, sp["port"], proto))
                nat.append(":%s - [0:0]" % ch)
                body.append(("nat", "-A KB-SERVICES -d %s/32 -p %s -m %s --dport %d -m comment --comment %s -j %s"
                             % (ip, p, p, sp["port"], "%s/%s:%s" % (ns, name, sp.get("name") or sp["port"]), ch)))
                if sp.get("nodePort") and s["spec"].get("type") in ("NodePort", "LoadBalancer"):
                    # NodePort on the node address: the one way in from the root netns
                    # besides the API server, as on a real node.
                    body.append(("nat", "-A KB-SERVICES -d %s/32 -p %s -m %s --dport %d -m comment --comment %s "
                                 "-j MARK --or-mark 0x4000" % (self.net["node_ip"], p, p, sp["nodePort"],
                                                               "%s/%s:nodePort" % (ns, name))))
                    body.append(("nat", "-A KB-SERVICES -d %s/32 -p %s -m %s --dport %d -j %s"
                                 % (self.net["node_ip"], p, p, sp["nodePort"], ch)))
                n = len(targets)
                for i, t in enumerate(targets):
                    stat = ("-m statistic --mode random --probability %.10f " % (1.0 / (n - i))) if i < n - 1 else ""
                    body.append(("nat", "-A %s %s-p %s -j DNAT --to-destination %s" % (ch, stat, p, t)))
        rules = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
                 ":POSTROUTING ACCEPT [0:0]"] + nat + [
            "-A PREROUTING -j KB-SERVICES", "-A OUTPUT -j KB-SERVICES", "-A POSTROUTING -j KB-POSTROUTING",
            "-A KB-POSTROUTING -m conntrack --ctstate DNAT -j MASQUERADE",
            "-A KB-POSTROUTING -s %s -o host0 -j MASQUERADE" % self.net["pod_cidr"]]
        rules += [r for t, r in body if t == "nat"] + ["COMMIT", "*filter", ":INPUT ACCEPT [0:0]",
                                                         ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
                                                         ":KB-FORWARD - [0:0]", ":KB-INPUT - [0:0]"] + np_chains + (
                                                         ["-A FORWARD -j KB-NETPOL",
                                                          "-A INPUT -i kbbr0 -j KB-NETPOL-IN"] if np_chains else []) + [
                                                         "-A FORWARD -j KB-FORWARD", "-A INPUT -j KB-INPUT",
                                                         "-A KB-FORWARD -i host0 -m conntrack --ctstate "
                                                         "ESTABLISHED,RELATED -j ACCEPT",
                                                         "-A KB-FORWARD -i host0 -m mark --mark 0x4000/0x4000 "
                                                         "-m comment --comment nodeport -j ACCEPT",
                                                         "-A KB-FORWARD -i host0 -j DROP"]
        rules += [r for t, r in body if t == "filter"] + np_rules + ["COMMIT"]
        text = "\n".join(rules) + "\n"
        if text != self.applied_rules:
            r = subprocess.run(["ip", "netns", "exec", self.node.node_netns, "iptables-restore"],
                               input=text, capture_output=True, text=True)
            if r.returncode != 0:
                sys.stderr.write("iptables-restore failed: %s\n%s" % (r.stderr, text))
            else:
                self.applied_rules = text
                # Connections to a backend that is gone would hang; drop their conntrack entries
                # is not possible without conntrack(8); new connections use the new rules.
        self.dns.write(dns_hosts(services, endpoints))
