#!/usr/bin/env python3
"""The test cluster's real node, started by `tests/cluster/up --node real` as
`realnode.py <cluster.json>` in place of the process node (tests/cluster/node):

- containerd 1.6 (Debian) with its CRI plugin, runc, overlayfs; root, state and
  socket under <state dir>/realnode; the images of build-images imported into
  its k8s.io namespace under the references pods name;
- the kubelet 1.20.2 (built by `setup --node`) on containerd's CRI socket,
  cgroupfs driver under the cgroup /kbridge-<name>, registering the Node with
  the node certificate; its HTTPS server (logs, exec, port-forward) on the node
  address, port 10250, which the API server reaches over the cluster's link;
- CNI: Debian's bridge plugin on kbbr0 (the bridge `up` made) with host-local
  IPAM over the cluster's pod CIDR, hairpin on, pod traffic leaving the node
  masqueraded;
- kube-proxy 1.20.2 in iptables mode;
- cluster DNS: the suite's own resolver (dnsmasq on the bridge address, a node
  service, not a pod) fed from the API's Services and Endpoints, as on the
  process node (node/proxy.py Dns).

kubelet, kube-proxy, containerd and dnsmasq run in the node network namespace
(nsenter --net only: they share the host's mount namespace, so the kubelet's
volume mounts are the ones containerd sees). Only pods and the node netns see
pod and Service addresses; from the root namespace only the API server's link
leads in, and new connections from it are dropped unless a NodePort rule
DNATed them (chain KBRIDGE-ISOLATE), as on the process node.

cleanup(state_dir) undoes everything the node made outside its state dir and
netns (containers, mounts, pod netns, cgroups, pod logs, shim sockets); `down`
calls it through kbcluster.teardown.
"""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "node"))
sys.path.insert(0, os.path.dirname(HERE))
from kubeapi import Kube  # noqa: E402
from proxy import Dns, dns_hosts  # noqa: E402
import kbcluster as kc  # noqa: E402

NODE_BIN = os.path.join(kc.CACHE, "k8s-" + kc.K8S_VERSION, "node-bin")
KUBELET_PORT = 10250
CGROUP_ROOT = "/sys/fs/cgroup"


def log(msg):
    print("[realnode %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def paths(sd):
    rn = os.path.join(sd, "realnode")
    return {
        "dir": rn,
        "containerd_root": os.path.join(rn, "containerd", "root"),
        "containerd_state": os.path.join(rn, "containerd", "state"),
        "sock": os.path.join(rn, "containerd.sock"),
        "containerd_conf": os.path.join(rn, "containerd.toml"),
        "cni_conf": os.path.join(rn, "cni", "net.d"),
        "cni_data": os.path.join(rn, "cni", "ipam"),
        "kubelet_root": os.path.join(rn, "kubelet"),
        "kubelet_conf": os.path.join(rn, "kubelet.yaml"),
        "proxy_conf": os.path.join(rn, "kube-proxy.yaml"),
        "kubeconfig": os.path.join(rn, "node.kubeconfig"),
        "resolv": os.path.join(rn, "resolv.conf"),
        "images": os.path.join(rn, "images.txt"),
    }


def cgroup_name(name):
    return "kbridge-" + name


def ctr(p, *args, check=True, timeout=120):
    r = subprocess.run(["ctr", "--address", p["sock"], "--namespace", "k8s.io"] + list(args),
                       capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError("ctr %s: %s" % (" ".join(args), r.stderr.strip()))
    return r


class RealNode:
    def __init__(self, cfg):
        self.cfg = cfg
        self.name = cfg["name"]
        self.sd = cfg["state_dir"]
        self.net = cfg["net"]
        self.node_name = cfg["node_name"]
        self.netns_path = "/var/run/netns/" + cfg["node_netns"]
        self.p = paths(self.sd)
        self.mark = open(os.path.join(self.sd, "mark")).read().strip()
        self.procs = {}
        self.stopping = False
        self.kube = Kube(cfg["server"], cfg["ca"], cert=cfg["node_cert"], key=cfg["node_key"])
        self.dns = Dns(self.sd, cfg["node_netns"], self.net["bridge_ip"])

    # ---- processes
    def start(self, name, argv):
        env = dict(os.environ)
        env[kc.MARK_ENV] = self.mark
        env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        logf = open(os.path.join(self.sd, "logs", name + ".log"), "ab")
        proc = subprocess.Popen(["nsenter", "--net=" + self.netns_path] + argv, stdout=logf,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, cwd=self.p["dir"])
        logf.close()
        with open(os.path.join(self.sd, "pids", name), "w") as f:
            f.write(str(proc.pid))
        self.procs[name] = proc
        return proc

    def in_node(self, *argv, check=True, input=None):
        r = subprocess.run(["nsenter", "--net=" + self.netns_path] + list(argv),
                           capture_output=True, text=True, input=input)
        if check and r.returncode != 0:
            raise RuntimeError("%s: %s" % (" ".join(argv), r.stderr.strip()))
        return r

    # ---- configuration files
    def write_configs(self, pause_ref):
        p, net, cfg = self.p, self.net, self.cfg
        for d in ("containerd_root", "containerd_state", "cni_conf", "cni_data", "kubelet_root"):
            os.makedirs(p[d], exist_ok=True)
        with open(p["containerd_conf"], "w") as f:
            f.write("""version = 2
root = "%(root)s"
state = "%(state)s"
[grpc]
  address = "%(sock)s"
[ttrpc]
  address = "%(sock)s.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "%(pause)s"
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "%(cni)s"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
""" % {"root": p["containerd_root"], "state": p["containerd_state"], "sock": p["sock"],
                "pause": pause_ref, "cni": p["cni_conf"]})
        with open(os.path.join(p["cni_conf"], "10-kbridge.conflist"), "w") as f:
            json.dump({"cniVersion": "0.4.0", "name": "kbridge-" + self.name, "plugins": [
                {"type": "bridge", "bridge": "kbbr0", "isGateway": True, "ipMasq": True,
                 "hairpinMode": True,
                 "ipam": {"type": "host-local", "dataDir": p["cni_data"],
                          "ranges": [[{"subnet": net["pod_cidr"], "gateway": net["bridge_ip"],
                                       "rangeStart": net["pod_cidr"].rsplit(".", 1)[0] + ".10"}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": True}}]}, f, indent=1)
        # Pods with dnsPolicy Default get this (not the host's resolvers).
        with open(p["resolv"], "w") as f:
            f.write("nameserver %s\n" % net["bridge_ip"])
        server = cfg["server"]
        with open(p["kubeconfig"], "w") as f:
            f.write("""apiVersion: v1
kind: Config
clusters:
- name: %(name)s
  cluster: {server: "%(server)s", certificate-authority: "%(ca)s"}
users:
- name: node
  user: {client-certificate: "%(cert)s", client-key: "%(key)s"}
contexts:
- name: node
  context: {cluster: %(name)s, user: node}
current-context: node
""" % {"name": self.name, "server": server, "ca": cfg["ca"], "cert": cfg["node_cert"],
                "key": cfg["node_key"]})
        os.chmod(p["kubeconfig"], 0o600)
        with open(p["kubelet_conf"], "w") as f:
            json.dump({
                "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
                "address": net["node_ip"], "port": KUBELET_PORT, "readOnlyPort": 0,
                "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
                "tlsCertFile": cfg["kubelet_cert"], "tlsPrivateKeyFile": cfg["kubelet_key"],
                "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                                   "x509": {"clientCAFile": cfg["ca"]}},
                # Only the API server (client certificate of our CA) reaches the
                # kubelet, over the cluster's own link.
                "authorization": {"mode": "AlwaysAllow"},
                "cgroupDriver": "cgroupfs", "cgroupRoot": "/" + cgroup_name(self.name),
                "failSwapOn": False, "clusterDomain": "cluster.local",
                "clusterDNS": [net["dns_ip"]], "resolvConf": p["resolv"],
                "serializeImagePulls": False,
                "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
                "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                                 "imagefs.available": "1%"},
                "nodeStatusUpdateFrequency": "4s", "syncFrequency": "10s",
                "fileCheckFrequency": "10s", "httpCheckFrequency": "10s",
                "volumeStatsAggPeriod": "0s",
            }, f, indent=1)
        with open(p["proxy_conf"], "w") as f:
            json.dump({
                "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
                "clientConnection": {"kubeconfig": p["kubeconfig"]},
                "mode": "iptables", "clusterCIDR": net["pod_cidr"], "hostnameOverride": self.node_name,
                "bindAddress": net["node_ip"], "healthzBindAddress": "127.0.0.1:10256",
                "metricsBindAddress": "127.0.0.1:10249",
                "nodePortAddresses": [net["node_ip"] + "/32"],
                "iptables": {"syncPeriod": "30s", "minSyncPeriod": "0s"},
                # conntrack limits are host-wide: leave them as they are.
                "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                              "tcpCloseWaitTimeout": "0s"},
            }, f, indent=1)

    def make_cgroups(self):
        made = []
        for ctl in sorted(os.listdir(CGROUP_ROOT)):
            base = os.path.join(CGROUP_ROOT, ctl)
            if ctl == "unified" or not os.path.isdir(base) or os.path.islink(base):
                continue
            d = os.path.join(base, cgroup_name(self.name))
            os.makedirs(d, exist_ok=True)
            if ctl == "cpuset":
                for fn in ("cpuset.cpus", "cpuset.mems"):
                    with open(os.path.join(base, fn)) as src, open(os.path.join(d, fn), "w") as dst:
                        dst.write(src.read())
            made.append(d)
        return made

    def isolate(self):
        """As on the process node: nothing from the root netns reaches a pod
        unless it answers a pod's connection or a NodePort rule DNATed it."""
        rules = "\n".join([
            "*filter", ":KBRIDGE-ISOLATE - [0:0]",
            "-A KBRIDGE-ISOLATE -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
            "-A KBRIDGE-ISOLATE -m conntrack --ctstate DNAT -j RETURN",
            "-A KBRIDGE-ISOLATE -j DROP",
            "-I FORWARD 1 -i host0 -j KBRIDGE-ISOLATE", "COMMIT", ""])
        self.in_node("iptables-restore", "--noflush", input=rules)

    # ---- run
    def build_images(self):
        """[(docker-archive, reference)] from build-images (cached by inputs)."""
        r = subprocess.run([os.path.join(HERE, "build-images")], capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit("realnode: build-images failed:\n" + r.stderr[-3000:])
        return [tuple(line.split()) for line in r.stdout.splitlines() if line.strip()]

    def import_images(self, images):
        t = time.time()
        for archive, ref in images:
            ctr(self.p, "images", "import", archive)
            if not ctr(self.p, "images", "ls", "-q", "name==" + ref, check=False).stdout.strip():
                raise SystemExit("realnode: importing %s did not give %s" % (archive, ref))
        log("%d images imported in %.1fs" % (len(images), time.time() - t))
        with open(self.p["images"], "w") as f:
            f.write("".join("%s\n" % ref for _, ref in images))

    def run(self):
        signal.signal(signal.SIGTERM, self.shutdown)
        signal.signal(signal.SIGINT, self.shutdown)
        for b in ("kubelet", "kube-proxy"):
            if not os.access(os.path.join(NODE_BIN, b), os.X_OK):
                raise SystemExit("realnode: %s missing in %s; run tests/cluster/setup --node" % (b, NODE_BIN))
        self.make_cgroups()
        t0 = time.time()
        images = self.build_images()
        log("images ready in %.1fs" % (time.time() - t0))
        pause = next(ref for _, ref in images if "/pause:" in ref)
        self.write_configs(pause)
        t0 = time.time()
        self.start("containerd", ["containerd", "--config", self.p["containerd_conf"]])
        deadline = time.time() + 30
        while ctr(self.p, "version", check=False).returncode != 0:
            if time.time() > deadline or self.procs["containerd"].poll() is not None:
                raise SystemExit("realnode: containerd did not come up; see logs/containerd.log")
            time.sleep(0.2)
        log("containerd up in %.1fs" % (time.time() - t0))
        self.import_images(images)
        self.isolate()
        self.dns.start()
        threading.Thread(target=self.dns_loop, daemon=True, name="dns").start()
        self.start("kube-proxy", [os.path.join(NODE_BIN, "kube-proxy"), "--config", self.p["proxy_conf"],
                                  "--v=1"])
        self.start("kubelet", [
            os.path.join(NODE_BIN, "kubelet"), "--config", self.p["kubelet_conf"],
            "--kubeconfig", self.p["kubeconfig"], "--container-runtime=remote",
            "--container-runtime-endpoint=unix://" + self.p["sock"],
            "--root-dir", self.p["kubelet_root"], "--hostname-override", self.node_name,
            "--node-ip", self.net["node_ip"], "--pod-infra-container-image", pause,
            "--runtime-request-timeout=5m", "--v=1"])
        log("kubelet and kube-proxy started %.1fs after containerd" % (time.time() - t0))
        while not self.stopping:
            for name, proc in list(self.procs.items()):
                if proc.poll() is not None and not self.stopping:
                    log("%s exited with %s; the node stops (see logs/%s.log)" % (name, proc.returncode, name))
                    self.shutdown()
            time.sleep(1)

    def dns_loop(self):
        """Services and Endpoints -> the resolver's hosts file, on every change."""
        ev = threading.Event()

        def watch(path):
            while True:
                try:
                    ev.set()
                    for _ in self.kube.watch(path, timeout_seconds=60):
                        ev.set()
                except Exception as e:  # noqa: BLE001
                    log("watch %s: %s" % (path, e))
                    time.sleep(1)
        for path in ("/api/v1/services", "/api/v1/endpoints"):
            threading.Thread(target=watch, args=(path,), daemon=True).start()
        while True:
            ev.wait(5)
            ev.clear()
            try:
                svcs = self.kube.get("/api/v1/services")["items"]
                eps = self.kube.get("/api/v1/endpoints")["items"]
                self.dns.check()
                self.dns.write(dns_hosts(svcs, eps))
            except Exception as e:  # noqa: BLE001
                log("dns sync: %s" % e)
                time.sleep(1)

    def shutdown(self, *_):
        if self.stopping:
            return
        self.stopping = True
        log("stopping")
        try:
            cleanup(self.sd, self.name, self.net)
        finally:
            os._exit(0)


# ---- clean-up (also called by `down` when the node process is gone) -------------------------

def _kill_cgroup(name):
    """SIGKILL every process of the node's cgroup tree (the containers)."""
    base = os.path.join(CGROUP_ROOT, "pids", cgroup_name(name))
    for _ in range(20):
        pids = set()
        for procs in glob.glob(os.path.join(base, "**", "cgroup.procs"), recursive=True):
            try:
                pids |= {int(x) for x in open(procs).read().split()}
            except OSError:
                pass
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def _rm_cgroups(name):
    for ctl in os.listdir(CGROUP_ROOT):
        top = os.path.join(CGROUP_ROOT, ctl, cgroup_name(name))
        if not os.path.isdir(top):
            continue
        dirs = sorted((d for d, _, _ in os.walk(top)), key=len, reverse=True)
        for d in dirs:
            for _ in range(20):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)


def _unmount_under(prefix):
    out = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True).stdout
    targets = [t.replace("\\x20", " ") for t in out.splitlines() if t == prefix or t.startswith(prefix + "/")]
    for t in sorted(targets, key=len, reverse=True):
        subprocess.run(["umount", "-l", t], capture_output=True)


def _pod_netns(p, pod_prefix):
    """containerd's pod netns (/var/run/netns/cni-*) of this node: those its
    containers name (read while containerd runs; a sandbox whose network was
    already torn down has an empty netns, found only this way), and those
    holding an address of this cluster."""
    found = set()
    ids = subprocess.run(["ctr", "--address", p["sock"], "--namespace", "k8s.io", "containers", "ls", "-q"],
                         capture_output=True, text=True, timeout=30).stdout.split()
    for cid in ids:
        r = subprocess.run(["ctr", "--address", p["sock"], "--namespace", "k8s.io", "containers", "info", cid],
                           capture_output=True, text=True, timeout=30)
        try:
            spaces = json.loads(r.stdout)["Spec"]["linux"]["namespaces"]
        except (ValueError, KeyError, TypeError):
            continue
        for n in spaces:
            path = n.get("path") or ""
            if n.get("type") == "network" and path.startswith("/var/run/netns/cni-"):
                found.add(os.path.basename(path))
    for path in glob.glob("/var/run/netns/cni-*"):
        ns = os.path.basename(path)
        out = subprocess.run(["ip", "-n", ns, "-4", "-o", "addr"], capture_output=True, text=True).stdout
        if (" %s." % pod_prefix) in out:
            found.add(ns)
    return sorted(found)


def cleanup(sd, name, net):
    """Everything the real node made outside <sd> and its netns, then <sd>/realnode."""
    p = paths(sd)
    if not os.path.isdir(p["dir"]):
        return
    mark = None
    try:
        mark = open(os.path.join(sd, "mark")).read().strip()
    except OSError:
        pass
    # 1. the kubelet first (it would start containers again), kube-proxy, dnsmasq.
    for n in ("kubelet", "kube-proxy"):
        try:
            pid = int(open(os.path.join(sd, "pids", n)).read())
            if mark and pid in kc.marked_pids(mark):
                kc.kill_pids([pid], grace=2)
        except (OSError, ValueError):
            pass
    pod_uids = [os.path.basename(d) for d in glob.glob(os.path.join(p["kubelet_root"], "pods", "*"))]
    pod_prefix = net["pod_cidr"].rsplit(".", 1)[0]
    pod_ns = _pod_netns(p, pod_prefix)
    # 2. the containers, then containerd and its shims (they carry the mark).
    _kill_cgroup(name)
    if mark:
        kc.kill_pids([pid for pid in kc.marked_pids(mark) if pid != os.getpid()], grace=3)
    # 3. mounts (overlay roots, sandbox shm, the kubelet's tmpfs volumes), pod netns.
    _unmount_under(p["dir"])
    for ns in pod_ns:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    _rm_cgroups(name)
    # 4. pod logs (the kubelet 1.20 writes them under /var/log/pods, fixed).
    for uid in pod_uids:
        for d in glob.glob("/var/log/pods/*_%s" % uid):
            shutil.rmtree(d, ignore_errors=True)
    for link in glob.glob("/var/log/containers/*.log"):
        if os.path.islink(link) and not os.path.exists(link):
            os.unlink(link)
    # 5. runc's state of the killed containers (runc root of containerd's k8s.io namespace).
    for st in glob.glob("/run/containerd/runc/k8s.io/*/state.json"):
        try:
            if ("/%s/" % cgroup_name(name)) in open(st).read():
                shutil.rmtree(os.path.dirname(st), ignore_errors=True)
        except OSError:
            pass
    # 6. shim sockets of dead shims (a SIGKILLed shim leaves its socket behind).
    listening = subprocess.run(["ss", "-xlH"], capture_output=True, text=True).stdout
    for sock in glob.glob("/run/containerd/s/*"):
        if sock not in listening:
            try:
                os.unlink(sock)
            except OSError:
                pass
    for d in ("/run/containerd/s", "/run/containerd/runc/k8s.io", "/run/containerd/runc", "/run/containerd"):
        try:
            os.rmdir(d)
        except OSError:
            pass
    shutil.rmtree(p["dir"], ignore_errors=True)


def main():
    cfg = json.load(open(sys.argv[1]))
    RealNode(cfg).run()


if __name__ == "__main__":
    main()
