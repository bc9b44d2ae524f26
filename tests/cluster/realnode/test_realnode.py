#!/usr/bin/env python3
"""The test cluster's real node (tests/cluster/realnode): kubelet 1.20.2 on
containerd and runc, the CNI bridge, kube-proxy in iptables mode, every pod a
container of an image built here, kbridge's agent from the image users build
with deploy/image/build.

  test_realnode.py --kbridge K --agent A [--signer S] [PART...]

Parts:
  node     the Node is the kubelet's (containerd runtime, v1.20.2); the demo pods
           are containers; kube-proxy's chains serve the Services; `kubectl logs`
           and `kubectl exec` (exit code, stdin) go through the kubelet
  agent    `kbridge connect` with no --agent-image and no KBRIDGE_AGENT_IMAGE, as
           the developer holding deploy/rbac/developer-role.yaml: the agent pod
           runs ghcr.io/kbridge/agent:VERSION from the node's store; runc enforces
           its restrictions (the agent's process: uid/gid 65532, no capabilities,
           no_new_privs, seccomp filter, read-only root); alice's requests reach
           her local server through the kubelet's port-forward; restore
  swap     the selector swap under live traffic: a steady stream of new
           connections from a pod loses nothing across the takeover and the
           restore; a keep-alive connection opened before the takeover stays on
           the pod kube-proxy gave it (conntrack), as docs/architecture.md says
  down     `down` leaves no container, mount, cgroup, pod netns, runc state,
           shim socket, pod log or root-netns iptables rule behind

Own cluster ($KBRIDGE_E2E_CLUSTER, default kbreal), started with the real node
and taken down at the end (KBRIDGE_E2E_KEEP=1 keeps it).
"""
import json
import os
import subprocess
import sys
import time

os.environ["KBRIDGE_CLUSTER_NODE"] = "real"
os.environ.setdefault("KBRIDGE_E2E_CLUSTER", "kbreal")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "cluster-e2e"))
import test_connect as tc  # noqa: E402

NS = tc.NS
say, check, Fail, kubectl = tc.say, tc.check, tc.Fail, tc.kubectl


def sock():
    return os.path.join(tc.info()["state_dir"], "realnode", "containerd.sock")


def ctr(*args):
    r = subprocess.run(["ctr", "--address", sock(), "--namespace", "k8s.io"] + list(args),
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise Fail("ctr %s: %s" % (" ".join(args), r.stderr.strip()))
    return r.stdout


def task_pid(container_id):
    for line in ctr("tasks", "ls").splitlines()[1:]:
        f = line.split()
        if f and f[0] == container_id:
            return int(f[1])
    raise Fail("no task for container %s" % container_id)


def in_node(*argv):
    return subprocess.run(["ip", "netns", "exec", tc.info()["node_netns"]] + list(argv),
                          capture_output=True, text=True)


# ---- parts ----

def part_node():
    node = json.loads(kubectl("get", "node", tc.info()["node_name"], "-o", "json").stdout)
    ni = node["status"]["nodeInfo"]
    check(ni["containerRuntimeVersion"].startswith("containerd://") and ni["kubeletVersion"] == "v1.20.2",
          "the Node is the kubelet's: %s, kubelet %s" % (ni["containerRuntimeVersion"], ni["kubeletVersion"]))
    pods = json.loads(kubectl("get", "pods", "-n", NS, "-o", "json").stdout)["items"]
    ids = [c["containerID"] for p in pods for c in p["status"].get("containerStatuses", [])]
    check(len(ids) >= 4 and all(i.startswith("containerd://") for i in ids),
          "the %d demo containers are containerd's" % len(ids))
    running = {line.split()[0] for line in ctr("tasks", "ls").splitlines()[1:] if "RUNNING" in line}
    check(all(i.split("://")[1] in running for i in ids), "each has a running runc task")
    rules = in_node("iptables-save", "-t", "nat").stdout
    check('"shop/api:http cluster IP"' in rules and "KUBE-SVC-" in rules,
          "kube-proxy's iptables chains serve shop/api")
    fe = tc.frontend_pod()
    logs = kubectl("logs", "-n", NS, fe).stdout
    check("frontend listening" in logs, "kubectl logs through the kubelet: %r" % logs.strip()[:60])
    r = kubectl("exec", "-n", NS, fe, "--", "sh", "-c", "id -u; exit 3", check_rc=False)
    check(r.returncode == 3 and r.stdout.strip() == "0", "kubectl exec: stdout %r, exit code %d" %
          (r.stdout.strip(), r.returncode))
    r = kubectl("exec", "-i", "-n", NS, fe, "--", "cat", input="through stdin\n", check_rc=False)
    check(r.stdout == "through stdin\n", "kubectl exec -i carries stdin")
    a = tc.probe([("http://frontend.%s/" % NS, {})])[0]
    check(a.get("service") == "frontend" and "api" in json.dumps(a),
          "frontend -> api -> store through cluster DNS and kube-proxy")


def proc_status(pid):
    st = {}
    for line in open("/proc/%d/status" % pid):
        k, _, v = line.partition(":")
        st[k] = v.strip()
    return st


def part_agent():
    before = tc.snapshot()
    _, pa = tc.backend("alice-local")
    env = {k: v for k, v in os.environ.items() if k != "KBRIDGE_AGENT_IMAGE"}
    t = time.time()
    alice = tc.Session("alice", pa, agent_image=None, env=env)
    alice.ready()
    say("MEASURE connect-to-ready on the real node, default image: %.2f s" % (time.time() - t))
    pod = tc.agent_pods()[0]
    c = pod["spec"]["containers"][0]
    check(c["image"] == "ghcr.io/kbridge/agent:" + tc.VERSION and c.get("imagePullPolicy") == "IfNotPresent",
          "the agent pod runs connect's default image %s (IfNotPresent: the node's copy)" % c["image"])
    st = pod["status"]["containerStatuses"][0]
    check(st["imageID"].startswith("sha256:") or "@sha256:" in st["imageID"],
          "the kubelet reports the image's digest: %s" % st["imageID"][:40])
    pid = task_pid(st["containerID"].split("://")[1])
    ps = proc_status(pid)
    check(ps["Uid"].split() == ["65532"] * 4 and ps["Gid"].split() == ["65532"] * 4,
          "the agent process runs as uid/gid 65532 (Uid %s)" % ps["Uid"])
    check(all(int(ps[k], 16) == 0 for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")),
          "no capabilities at all (CapEff %s, CapBnd %s)" % (ps["CapEff"], ps["CapBnd"]))
    check(ps["NoNewPrivs"] == "1" and ps["Seccomp"] == "2",
          "no_new_privs set and a seccomp filter in force (RuntimeDefault)")
    root = next(line.split() for line in open("/proc/%d/mountinfo" % pid) if line.split()[4] == "/")
    check("ro" in root[5].split(","), "its root filesystem is mounted read-only (%s)" % root[5])
    exe = os.readlink("/proc/%d/exe" % pid)
    check(exe == "/usr/local/bin/kbridge-agent", "the program is the image's %s" % exe)
    for key, want in (("alice", "alice-local"), (None, "api")):
        a = tc.probe([(tc.API, tc.hdr(key) if key else {})])[0]
        check(tc.served_by(a) == want, "%s -> %s through the real node" % (key or "no key", want))
    t = time.time()
    ev = alice.stop()
    check(ev["restored"] is True and alice.p.returncode == 0, "alice leaves: restored, exit %d (%.1f s)"
          % (alice.p.returncode, time.time() - t))
    say("MEASURE disconnect to restored on the real node: %.1f s" % (time.time() - t))
    tc.check_restored(before, "a session on the real node")


LOOP = r'''
import http.client, json, sys, threading, time
host, dur = sys.argv[1], float(sys.argv[2])
end = time.time() + dur
fresh, kept = [], []
def new_connections():
    while time.time() < end:
        t = time.time()
        c = http.client.HTTPConnection(host, 8080, timeout=5)
        try:
            c.request("GET", "/")
            a = json.loads(c.getresponse().read().decode())
            fresh.append([round(t, 2), a.get("served_by") or a.get("service")])
        except Exception as e:
            fresh.append([round(t, 2), "error: %r" % e])
        finally:
            c.close()
        time.sleep(0.05)
def keep_alive():
    c = http.client.HTTPConnection(host, 8080, timeout=5)
    while time.time() < end:
        t = time.time()
        try:
            c.request("GET", "/", headers={"kubernetes-route-as": "alice"})
            a = json.loads(c.getresponse().read().decode())
            kept.append([round(t, 2), a.get("served_by") or a.get("service")])
        except Exception as e:
            kept.append([round(t, 2), "error: %r" % e])
            break
        time.sleep(0.2)
ts = [threading.Thread(target=new_connections), threading.Thread(target=keep_alive)]
[t.start() for t in ts]
[t.join() for t in ts]
print(json.dumps({"fresh": fresh, "kept": kept}))
'''


def part_swap():
    before = tc.snapshot()
    _, pa = tc.backend("alice-local")
    dur = 45.0
    loop = subprocess.Popen([os.path.join(tc.CLUSTER_DIR, "pod-exec"), "--name", tc.NAME, NS, tc.frontend_pod(),
                             "--", "python3", "-c", LOOP, "api.%s" % NS, str(dur)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tc.PROCS.append(loop)
    t0 = time.time()
    time.sleep(4)
    alice = tc.Session("alice", pa)
    alice.ready()
    t_switch = time.time()
    say("taken over %.1f s into the stream" % (t_switch - t0))
    routed = tc.probe([(tc.API, tc.hdr("alice"))])[0]
    check(tc.served_by(routed) == "alice-local", "a new connection with alice's key reaches her")
    time.sleep(8)
    ev = alice.stop()
    check(ev["restored"] is True, "alice leaves: restored")
    t_restored = time.time()
    say("restored %.1f s into the stream" % (t_restored - t0))
    out, err = loop.communicate(timeout=dur + 60)
    if loop.returncode != 0:
        raise Fail("the request loop failed: %s" % err[-1500:])
    res = json.loads(out)
    fresh, kept = res["fresh"], res["kept"]
    errors = [r for r in fresh if str(r[1]).startswith("error")]
    during = [r for r in fresh if r[0] >= t_switch and r[0] < t_restored - 1]
    say("MEASURE unrouted requests on new connections across takeover and restore: %d sent, %d failed"
        % (len(fresh), len(errors)))
    check(len(fresh) > 100 and not errors, "no request lost across the swap and the restore (%d of %d failed%s)"
          % (len(errors), len(fresh), ": %s" % errors[:3] if errors else ""))
    check(during and all(r[1] == "api" for r in during), "unrouted requests during the takeover reach the real pods")
    kept_during = [r for r in kept if t_switch + 1 < r[0] < t_restored - 1]
    check(kept_during and all(r[1] == "api" for r in kept_during),
          "a keep-alive connection opened before the takeover stays on its pod: %d requests with alice's key "
          "during the takeover answered by %s (conntrack keeps the DNAT it had)"
          % (len(kept_during), sorted({r[1] for r in kept_during})))
    tc.check_restored(before, "the swap under traffic")


def leftovers(name, sd, net, before_netns=()):
    """What the real node could leave outside its state dir."""
    left = []
    prefix = net["pod_cidr"].rsplit(".", 1)[0]
    for ns in tc.kc.netns_list():
        if ns in before_netns:
            left.append("pod netns " + ns)
            continue
        if ns.startswith("cni-"):
            out = subprocess.run(["ip", "-n", ns, "-4", "-o", "addr"], capture_output=True, text=True).stdout
            if " %s." % prefix in out:
                left.append("pod netns " + ns)
        if ns == tc.kc.node_netns(name):
            left.append("node netns " + ns)
    mounts = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True).stdout
    left += ["mount " + m for m in mounts.splitlines() if m.startswith(sd)]
    left += ["cgroup " + d for d in
             (os.path.join("/sys/fs/cgroup", c, "kbridge-" + name) for c in os.listdir("/sys/fs/cgroup"))
             if os.path.isdir(d)]
    for st in subprocess.run(["sh", "-c", "ls /run/containerd/runc/k8s.io/*/state.json 2>/dev/null"],
                             capture_output=True, text=True).stdout.split():
        if "/kbridge-%s/" % name in open(st).read():
            left.append("runc state " + st)
    want = ("%s=%s" % (tc.kc.MARK_ENV, open(os.path.join(sd, "mark")).read().strip())) if os.path.exists(
        os.path.join(sd, "mark")) else None
    if want:
        left += ["process %d" % p for p in tc.kc.marked_pids(want.split("=", 1)[1])]
    return left


def part_down():
    i = tc.info()
    name, sd, net = i["name"], i["state_dir"], i["net"]
    mark = open(os.path.join(sd, "mark")).read().strip()
    pod_uids = [p["metadata"]["uid"] for p in
                json.loads(kubectl("get", "pods", "-A", "-o", "json").stdout)["items"]]
    root_rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    strip = lambda t: "\n".join(x for x in t.splitlines() if not x.startswith("#") and not x.startswith(":"))  # noqa
    ours = lambda: [d for d in (os.listdir("/var/log/pods") if os.path.isdir("/var/log/pods") else [])  # noqa
                    if any(d.endswith("_" + u) for u in pod_uids)]
    mounts = [m for m in subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True,
                                        text=True).stdout.splitlines() if m.startswith(sd)]
    check(len(ours()) >= 4 and len(mounts) >= 4,
          "before down: %d pods' logs under /var/log/pods, %d mounts under the state dir" % (len(ours()), len(mounts)))
    # containerd's pod netns while the node runs (an emptied one has no address
    # left to recognise it by after down).
    cni = set()
    for line in ctr("containers", "ls", "-q").split():
        spec = json.loads(ctr("containers", "info", line))["Spec"]
        cni |= {os.path.basename(n["path"]) for n in spec["linux"]["namespaces"]
                if n["type"] == "network" and n.get("path", "").startswith("/var/run/netns/cni-")}
    check(cni, "%d pod netns of containerd before down" % len(cni))
    t = time.time()
    r = subprocess.run([os.path.join(tc.CLUSTER_DIR, "down"), "--name", name], capture_output=True, text=True)
    check(r.returncode == 0, "down (%.1f s)" % (time.time() - t))
    left = leftovers(name, sd, net, cni)
    left += ["process %d" % p for p in tc.kc.marked_pids(mark)]
    left += ["pod log " + d for d in ours()]
    left += ["state dir"] if os.path.exists(sd) else []
    check(not left, "nothing left behind: %s" % (left or "no container, mount, cgroup, netns, runc state, "
                                                 "process, pod log"))
    after = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    check(strip(after) == strip(root_rules), "the root netns's iptables rules are as before")


PARTS = {"node": part_node, "agent": part_agent, "swap": part_swap, "down": part_down}


def main():
    import argparse
    import shutil
    ap = argparse.ArgumentParser()
    ap.add_argument("--kbridge", required=True)
    ap.add_argument("--agent", required=True)
    ap.add_argument("--signer")
    ap.add_argument("parts", nargs="*")
    tc.ARGS = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("kubectl"):
        print("skipped: needs root and kubectl")
        return 77
    for f in ("kbridge", "agent", "signer"):
        if getattr(tc.ARGS, f):
            setattr(tc.ARGS, f, os.path.abspath(getattr(tc.ARGS, f)))
    parts = tc.ARGS.parts or list(PARTS)
    rc = 0
    try:
        t = time.time()
        tc.cluster_up()
        say("MEASURE real node cluster up + demo ready: %.1f s" % (time.time() - t))
        for p in parts:
            say("== %s" % p)
            PARTS[p]()
    except Fail as e:
        say("FAIL: %s" % e)
        rc = 1
    finally:
        for p in tc.PROCS:
            if p.poll() is None:
                p.kill()
        if os.environ.get("KBRIDGE_E2E_KEEP") != "1" and tc.info():
            subprocess.run([os.path.join(tc.CLUSTER_DIR, "down"), "--name", tc.NAME], capture_output=True)
        shutil.rmtree(tc.TMP, ignore_errors=True)
    say("PASS" if rc == 0 else "FAILED")
    return rc


if __name__ == "__main__":
    sys.exit(main())
