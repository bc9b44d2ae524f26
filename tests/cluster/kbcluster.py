"""Shared definitions for the local test cluster scripts (up, down, pod-exec,
tests): where a cluster named NAME keeps its state, which addresses it uses,
and small process helpers.

Layout of one cluster (index I, 1..250, allocated at `up`, unique among the
clusters that exist at the same time):

  state dir       /tmp/kbridge-cluster-NAME  (override root: KBRIDGE_CLUSTER_ROOT)
  node netns      kb-NAME-node               (bridge kbbr0 10.244.I.1/24, host0 10.245.I.2)
  pod netns       kb-NAME-p-<uid8>           (eth0 10.244.I.N/24)
  root veth       kbh<I>  10.245.I.1/30      (the API server binds here)
  pod CIDR        10.244.I.0/24
  service CIDR    10.96.I.0/24  (kubernetes = .1, kube-dns = .10)
"""
import fcntl
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
K8S_VERSION = "1.20.2"
CACHE = os.environ.get("KBRIDGE_CACHE") or os.path.join(
    os.path.expanduser("~"), ".cache", "kbridge")
BIN_DIR = os.path.join(CACHE, "k8s-" + K8S_VERSION, "bin")
STATE_ROOT = os.environ.get("KBRIDGE_CLUSTER_ROOT", "/tmp")
MARK_ENV = "KBRIDGE_CLUSTER_MARK"


def valid_name(name):
    import re
    return bool(re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?", name))


def state_dir(name):
    return os.path.join(STATE_ROOT, "kbridge-cluster-" + name)


def node_netns(name):
    return "kb-%s-node" % name


def pod_netns_prefix(name):
    return "kb-%s-p-" % name


def host_veth(index):
    return "kbh%d" % index


def net_for(index):
    """All addresses of cluster number `index`."""
    return {
        "index": index,
        "pod_cidr": "10.244.%d.0/24" % index,
        "bridge_ip": "10.244.%d.1" % index,
        "service_cidr": "10.96.%d.0/24" % index,
        "kubernetes_ip": "10.96.%d.1" % index,
        "dns_ip": "10.96.%d.10" % index,
        "host_ip": "10.245.%d.1" % index,      # root side of the link, API server
        "node_ip": "10.245.%d.2" % index,      # node netns side, kubelet
        "link_prefix": 30,
    }


class Lock:
    """flock on the state root directory itself, so two `up`/`down` runs do
    not pick the same index, and no lock file is left behind."""

    def __enter__(self):
        os.makedirs(STATE_ROOT, exist_ok=True)
        self.fd = os.open(STATE_ROOT, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *a):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def used_indexes():
    used = set()
    for f in glob.glob(os.path.join(STATE_ROOT, "kbridge-cluster-*", "index")):
        try:
            used.add(int(open(f).read().strip()))
        except (OSError, ValueError):
            pass
    return used


def netns_list():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def link_exists(dev):
    return subprocess.run(["ip", "link", "show", dev], capture_output=True).returncode == 0


def free_port(host="127.0.0.1"):
    """A TCP port nobody listens on now (bind port 0 and read it back)."""
    s = socket.socket()
    s.bind((host, 0))
    p = s.getsockname()[1]
    s.close()
    return p


def read_cluster(name):
    """cluster.json written by `up`, or None."""
    try:
        with open(os.path.join(state_dir(name), "cluster.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def marked_pids(mark):
    """Processes whose environment carries MARK_ENV=mark (everything `up`
    started: etcd, control plane, node, dnsmasq)."""
    want = ("%s=%s" % (MARK_ENV, mark)).encode()
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open("/proc/%s/environ" % d, "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if want in env:
            pids.append(int(d))
    return pids


def netns_pids(ns):
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    return [int(x) for x in out.split() if x.isdigit()]


def kill_pids(pids, grace=5.0):
    """SIGTERM, wait up to `grace` seconds, then SIGKILL what is left."""
    pids = [p for p in pids if p != os.getpid()]
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace
    while time.time() < deadline and any(pid_alive(p) and not zombie(p) for p in pids):
        time.sleep(0.1)
    for p in pids:
        if pid_alive(p) and not zombie(p):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


def zombie(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def teardown(name, sd):
    nodens = node_netns(name)
    prefix = pod_netns_prefix(name)
    namespaces = [ns for ns in netns_list() if ns == nodens or ns.startswith(prefix)]

    # 1. the node first (it would otherwise restart containers), then the rest.
    pids = []
    try:
        mark = open(os.path.join(sd, "mark")).read().strip()
        pids += marked_pids(mark)
    except OSError:
        mark = None
    piddir = os.path.join(sd, "pids")
    if os.path.isdir(piddir):
        for f in os.listdir(piddir):
            try:
                pid = int(open(os.path.join(piddir, f)).read())
            except (OSError, ValueError):
                continue
            # Only a pid that still carries our marker (pids get reused).
            if mark and pid in marked_pids(mark):
                pids.append(pid)
    node_pid = None
    try:
        node_pid = int(open(os.path.join(piddir, "node")).read())
    except (OSError, ValueError):
        pass
    if node_pid in pids:
        kill_pids([node_pid], grace=3)
    if os.path.isdir(os.path.join(sd, "realnode")):
        # The real node (realnode/node.py): containers, mounts, pod netns,
        # cgroups and pod logs live outside the state dir and the node netns.
        import sys
        sys.path.insert(0, os.path.join(HERE, "realnode"))
        import realnode
        realnode.cleanup(sd, name, net_for(int(open(os.path.join(sd, "index")).read())))
    for ns in namespaces:
        pids += netns_pids(ns)
    kill_pids(sorted(set(pids)), grace=1)  # the API server drains for >5 s otherwise
    for ns in namespaces:  # anything started in between
        kill_pids(netns_pids(ns), grace=1)

    # 2. network namespaces, the root veth, /etc/netns entries.
    for ns in namespaces:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(os.path.join("/etc/netns", ns), ignore_errors=True)
    for ent in (os.listdir("/etc/netns") if os.path.isdir("/etc/netns") else []):
        if ent == nodens or ent.startswith(prefix):
            shutil.rmtree(os.path.join("/etc/netns", ent), ignore_errors=True)
    try:
        os.rmdir("/etc/netns")      # only if empty (ip netns exec needs no such dir)
    except OSError:
        pass
    try:
        index = int(open(os.path.join(sd, "index")).read())
        hv = host_veth(index)
        if link_exists(hv):
            subprocess.run(["ip", "link", "del", hv], capture_output=True)
    except (OSError, ValueError):
        pass

    # 3. mount-point directories the node had to create on the host (deepest first).
    created = os.path.join(sd, "created-dirs")
    if os.path.exists(created):
        dirs = set(open(created).read().split("\n")) - {""}
        # Another cluster running at the same time may use the same mount points.
        others = set()
        for f in glob.glob(os.path.join(STATE_ROOT, "kbridge-cluster-*", "*-dirs")):
            if os.path.dirname(f) != sd:
                others |= set(open(f).read().split("\n"))
        dirs = sorted(dirs - others, key=len, reverse=True)
        for d in dirs:
            try:
                if os.path.isdir(d) and not os.path.islink(d):
                    os.rmdir(d)           # only when empty
                elif os.path.isfile(d) and os.path.getsize(d) == 0:
                    os.unlink(d)          # an empty file made as a subPath mount point
            except OSError:
                pass

    # 4. the state dir.
    shutil.rmtree(sd, ignore_errors=True)
