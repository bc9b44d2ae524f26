#!/usr/bin/env python3
"""kbridge test node: a stand-in for kubelet + kube-proxy + cluster DNS,
started by tests/cluster/up as `kbnode.py <cluster.json>`.

- registers the Node (Ready, capacity, InternalIP, kubelet port), removes the
  not-ready taint the API server puts on new nodes, renews its Lease in
  kube-node-lease every few seconds and refreshes the Ready condition;
- watches pods bound to it and runs one PodWorker (pods.py) per pod;
- watches Services and Endpoints and keeps the iptables rules and DNS of the
  node network namespace in line (proxy.py); with NetworkPolicies, pods and
  namespaces, the policy rules of the same table (netpol.py);
- serves the kubelet HTTPS endpoint for port-forward and logs
  (kubelet_server.py).

Runs in the root network namespace (like kubelet on a host); the pods, the
bridge and the service rules live in the node network namespace.
"""
import json
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kubeapi import Kube  # noqa: E402
import pods  # noqa: E402
import netpol  # noqa: E402
import proxy  # noqa: E402
from kubelet_server import KubeletServer  # noqa: E402

log = pods.log
now = pods.now


class Trigger(threading.Thread):
    """Watches `path` and sets `event` on every change (and on (re)connect);
    the consumer re-lists. Keeps watching across errors."""

    def __init__(self, kube, path, event, query=None):
        super().__init__(daemon=True, name="watch " + path)
        self.kube, self.path, self.event, self.query = kube, path, event, query or {}

    def run(self):
        while True:
            try:
                self.event.set()
                for _ in self.kube.watch(self.path, timeout_seconds=60, **self.query):
                    self.event.set()
            except Exception as e:  # noqa: BLE001
                log("watch %s: %s" % (self.path, e))
                time.sleep(1)


class Node:
    def __init__(self, cfg):
        self.cfg = cfg
        self.name = cfg["node_name"]
        self.state_dir = cfg["state_dir"]
        self.net = cfg["net"]
        self.node_netns = cfg["node_netns"]
        self.pod_netns_prefix = "kb-%s-p-" % cfg["name"]
        self.kube = Kube(cfg["server"], cfg["ca"], cert=cfg["node_cert"], key=cfg["node_key"])
        self.workers = {}
        self.done = set()
        self.wlock = threading.Lock()
        self.ips = {}
        self.next_ip = 0
        self.iplock = threading.Lock()
        self.capacity = {"cpu": str(os.cpu_count() or 2), "memory": "16Gi", "pods": "110",
                         "ephemeral-storage": "50Gi"}
        self.allocatable = dict(self.capacity)
        self.pod_event = threading.Event()
        self.svc_event = threading.Event()
        self.proxy = proxy.Proxy(self)

    # ---- ip allocation
    def alloc_ip(self, uid):
        base = self.net["bridge_ip"].rsplit(".", 1)[0]
        with self.iplock:
            if uid in self.ips:
                return self.ips[uid]
            used = set(self.ips.values())
            # Round robin, so a fresh pod does not get the address of one just
            # deleted (neighbour caches would still hold the old MAC).
            for k in range(253):
                i = 2 + (self.next_ip + k) % 253
                ip = "%s.%d" % (base, i)
                if ip not in used:
                    self.ips[uid] = ip
                    self.next_ip = i - 1
                    return ip
        raise RuntimeError("pod CIDR exhausted")

    def free_ip(self, uid):
        with self.iplock:
            self.ips.pop(uid, None)

    def forget(self, uid):
        with self.wlock:
            self.workers.pop(uid, None)
            self.done.add(uid)      # a list taken before the deletion must not revive it

    def find_pod(self, ns, name):
        """The worker of pod ns/name; a pod of the same name still shutting
        down only when there is no newer one."""
        with self.wlock:
            ws = [w for w in self.workers.values() if w.ns == ns and w.name == name and not w.gone]
        ws.sort(key=lambda w: bool(w.pod["metadata"].get("deletionTimestamp")))
        return ws[0] if ws else None

    # ---- events
    def event(self, pod, etype, reason, msg):
        md = pod["metadata"]
        ts = now()
        body = {"metadata": {"generateName": md["name"] + ".", "namespace": md["namespace"]},
                "involvedObject": {"kind": "Pod", "namespace": md["namespace"], "name": md["name"],
                                   "uid": md["uid"], "apiVersion": "v1"},
                "reason": reason, "message": msg[:1000], "type": etype,
                "source": {"component": "kubelet", "host": self.name},
                "firstTimestamp": ts, "lastTimestamp": ts, "count": 1, "reportingComponent": "kubelet",
                "reportingInstance": self.name}
        try:
            self.kube.create("/api/v1/namespaces/%s/events" % md["namespace"], body)
        except Exception as e:  # noqa: BLE001 - events are best effort
            log("event: %s" % e)

    # ---- node object
    def node_status(self):
        t = now()
        conds = [{"type": c, "status": "False", "reason": "Kubelet" + r, "message": m,
                  "lastHeartbeatTime": t, "lastTransitionTime": self.started}
                 for c, r, m in (("MemoryPressure", "HasSufficientMemory", "kubelet has sufficient memory"),
                                 ("DiskPressure", "HasNoDiskPressure", "kubelet has no disk pressure"),
                                 ("PIDPressure", "HasSufficientPID", "kubelet has sufficient PID"))]
        conds.append({"type": "Ready", "status": "True", "reason": "KubeletReady",
                      "message": "kbridge test node is posting ready status", "lastHeartbeatTime": t,
                      "lastTransitionTime": self.started})
        return {"conditions": conds,
                "addresses": [{"type": "InternalIP", "address": self.net["node_ip"]},
                              {"type": "Hostname", "address": self.name}],
                "capacity": self.capacity, "allocatable": self.allocatable,
                "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet.port}},
                "nodeInfo": {"machineID": "kbridge", "systemUUID": "kbridge", "bootID": self.cfg["mark"],
                             "kernelVersion": os.uname().release, "osImage": "kbridge test node",
                             "containerRuntimeVersion": "kbridge-test-node://1", "kubeletVersion": "v1.20.2",
                             "kubeProxyVersion": "v1.20.2", "operatingSystem": "linux",
                             "architecture": "amd64"}}

    def register(self):
        self.started = now()
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.name, "labels": {
                    "kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                    "beta.kubernetes.io/arch": "amd64", "kbridge.dev/test-node": "true"}},
                "spec": {"podCIDR": self.net["pod_cidr"], "podCIDRs": [self.net["pod_cidr"]]}}
        self.kube.create("/api/v1/nodes", body, allow=(409,))
        self.kube.merge_patch("/api/v1/nodes/%s/status" % self.name, {"status": self.node_status()})
        # The API server taints new nodes not-ready; a node lifecycle controller would lift it.
        self.kube.merge_patch("/api/v1/nodes/" + self.name, {"spec": {"taints": None}})
        log("node %s registered, kubelet port %d" % (self.name, self.kubelet.port))

    def heartbeat(self):
        lease_path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/" + self.name
        last_status = 0
        while True:
            try:
                t = now().replace("Z", ".000000Z")
                lease = self.kube.get(lease_path, allow=(404,))
                spec = {"holderIdentity": self.name, "leaseDurationSeconds": 40, "renewTime": t}
                if lease is None:
                    node = self.kube.get("/api/v1/nodes/" + self.name)
                    self.kube.create("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
                        "metadata": {"name": self.name, "namespace": "kube-node-lease",
                                     "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": self.name,
                                                          "uid": node["metadata"]["uid"]}]},
                        "spec": spec}, allow=(409,))
                else:
                    self.kube.merge_patch(lease_path, {"spec": spec})
                if time.time() - last_status > 20:
                    self.kube.merge_patch("/api/v1/nodes/%s/status" % self.name, {"status": self.node_status()})
                    last_status = time.time()
                self.proxy.check_dns()
            except Exception as e:  # noqa: BLE001
                log("heartbeat: %s" % e)
            time.sleep(5)

    # ---- loops
    def pod_loop(self):
        while True:
            self.pod_event.wait(2)
            self.pod_event.clear()
            try:
                items = self.kube.get("/api/v1/pods", fieldSelector="spec.nodeName=" + self.name)["items"]
            except Exception as e:  # noqa: BLE001
                log("list pods: %s" % e)
                time.sleep(1)
                continue
            seen = set()
            for p in items:
                uid = p["metadata"]["uid"]
                seen.add(uid)
                with self.wlock:
                    if uid in self.done:
                        continue
                    w = self.workers.get(uid)
                    if w is None:
                        if p.get("status", {}).get("phase") in ("Succeeded", "Failed") and \
                                not p["metadata"].get("deletionTimestamp"):
                            continue   # finished before this node started
                        if p["metadata"].get("deletionTimestamp"):
                            # Being deleted and never started here: finalize at once.
                            self.done.add(uid)
                            self.kube.delete("/api/v1/namespaces/%s/pods/%s" % (p["metadata"]["namespace"],
                                                                                 p["metadata"]["name"]),
                                             {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                                              "preconditions": {"uid": uid}}, allow=(404, 409))
                            continue
                        w = self.workers[uid] = pods.PodWorker(self, p)
                        w.start()
                        continue
                w.update(p)
            with self.wlock:
                gone = [w for uid, w in self.workers.items() if uid not in seen]
            for w in gone:
                w.vanish()

    def proxy_lag(self):
        """Seconds written in <state dir>/proxy-lag (absent: 0): how long
        Service rules lag behind the API, as kube-proxy does on a big cluster.
        Tests write it at run time (test_takeover.py restorewait)."""
        try:
            with open(os.path.join(self.state_dir, "proxy-lag")) as f:
                return max(0.0, min(30.0, float(f.read().strip() or 0)))
        except (OSError, ValueError):
            return 0.0

    def svc_loop(self):
        while True:
            self.svc_event.wait(5)
            self.svc_event.clear()
            lag = self.proxy_lag()
            if lag:
                time.sleep(lag)
            try:
                svcs = self.kube.get("/api/v1/services")["items"]
                eps = self.kube.get("/api/v1/endpoints")["items"]
                pols = self.kube.get("/apis/networking.k8s.io/v1/networkpolicies")["items"]
                np = None
                if pols:
                    np = netpol.rules(pols, self.kube.get("/api/v1/pods")["items"],
                                      self.kube.get("/api/v1/namespaces")["items"],
                                      self.net["bridge_ip"])
                self.proxy.sync(svcs, eps, np)
            except Exception as e:  # noqa: BLE001
                log("services sync: %s" % e)
                time.sleep(1)

    def shutdown(self, *_):
        log("node stopping")
        self.proxy.stop()
        with self.wlock:
            ws = list(self.workers.values())
        for w in ws:
            for c in w.inits + w.ctrs:
                if c.proc is not None and c.proc.poll() is None:
                    try:
                        os.killpg(c.proc.pid, signal.SIGKILL)
                    except OSError:
                        pass
        os._exit(0)

    def run(self):
        signal.signal(signal.SIGTERM, self.shutdown)
        signal.signal(signal.SIGINT, self.shutdown)
        self.kubelet = KubeletServer(self, self.cfg["kubelet_cert"], self.cfg["kubelet_key"], self.cfg["ca"])
        threading.Thread(target=self.kubelet.serve_forever, daemon=True, name="kubelet-server").start()
        self.proxy.start_dns()
        self.register()
        threading.Thread(target=self.heartbeat, daemon=True, name="heartbeat").start()
        Trigger(self.kube, "/api/v1/services", self.svc_event).start()
        Trigger(self.kube, "/api/v1/endpoints", self.svc_event).start()
        # NetworkPolicy rules depend on policies, pod labels and IPs, namespace labels.
        Trigger(self.kube, "/apis/networking.k8s.io/v1/networkpolicies", self.svc_event).start()
        Trigger(self.kube, "/api/v1/pods", self.svc_event).start()
        Trigger(self.kube, "/api/v1/namespaces", self.svc_event).start()
        Trigger(self.kube, "/api/v1/pods", self.pod_event, {"fieldSelector": "spec.nodeName=" + self.name}).start()
        threading.Thread(target=self.svc_loop, daemon=True, name="services").start()
        self.pod_loop()


def main():
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    Node(cfg).run()


if __name__ == "__main__":
    main()
