"""Namespace helpers for the test node: run a function with the calling
thread inside a named network namespace (setns(2) on a short-lived thread, so
the node's own threads never change namespace), and create/delete pod network
namespaces wired to the node bridge."""
import ctypes
import os
import shutil
import subprocess
import threading

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(ns, fn, *args):
    """Run fn(*args) on a new thread that has joined /run/netns/<ns>; return
    its result or raise its exception. Sockets made there stay in that netns."""
    box = {}

    def body():
        try:
            fd = os.open("/run/netns/" + ns, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, "setns(%s): %s" % (ns, os.strerror(e)))
            finally:
                os.close(fd)
            box["r"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["e"] = e
    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box.get("r")


def sh(*cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(cmd), r.stderr.strip()))
    return r.stdout


def create_pod_netns(nodens, podns, veth, ip, gw, hostname, dns_ip, search, hosts_extra=""):
    """netns podns with eth0 = ip/24 (peer `veth` on the node's bridge kbbr0,
    hairpin on so a pod reaches itself through a Service), default route via gw,
    and /etc/netns/podns/{resolv.conf,hosts} for `ip netns exec`."""
    delete_pod_netns(nodens, podns, veth)
    sh("ip", "netns", "add", podns)
    sh("ip", "-n", nodens, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", podns)
    subprocess.run(["ip", "-n", nodens, "neigh", "flush", "to", ip], capture_output=True)
    sh("ip", "-n", nodens, "link", "set", veth, "master", "kbbr0", "up")
    sh("bridge", "-n", nodens, "link", "set", "dev", veth, "hairpin", "on")
    sh("ip", "-n", podns, "link", "set", "lo", "up")
    sh("ip", "-n", podns, "addr", "add", ip + "/24", "dev", "eth0")
    sh("ip", "-n", podns, "link", "set", "eth0", "up")
    sh("ip", "-n", podns, "route", "add", "default", "via", gw)
    etc = os.path.join("/etc/netns", podns)
    os.makedirs(etc, exist_ok=True)
    with open(os.path.join(etc, "resolv.conf"), "w") as f:
        f.write("search %s\nnameserver %s\noptions ndots:5\n" % (" ".join(search), dns_ip))
    with open(os.path.join(etc, "hosts"), "w") as f:
        f.write("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                "%s\t%s\n%s" % (ip, hostname, hosts_extra))


def delete_pod_netns(nodens, podns, veth):
    subprocess.run(["ip", "netns", "del", podns], capture_output=True)
    subprocess.run(["ip", "-n", nodens, "link", "del", veth], capture_output=True)
    shutil.rmtree(os.path.join("/etc/netns", podns), ignore_errors=True)


def netns_pids(ns):
    r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return [int(x) for x in r.stdout.split() if x.isdigit()]
