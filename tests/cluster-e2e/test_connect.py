#!/usr/bin/env python3
"""End-to-end tests of `kbridge connect` and friends against the local test
cluster (tests/cluster), as a user that holds nothing but the Role of
deploy/rbac/developer-role.yaml in namespace shop.

    test_connect.py --kbridge BIN --agent BIN [PART...]

Parts (default: all, in this order):
    badinput   unknown Service, Service without selector, missing namespace, no
               permission, unreachable API server, broken kubeconfig, failing exec
               plugin: clear error, cluster unchanged; a working exec plugin works
    routing    alice connects (ready time printed); from a pod: every URL of the
               ready event with its header and with its Host header, and every
               curl line a text-mode connect prints, reach the developer's local
               server; her header and her subdomain (Host) reach her local
               server, other requests the real api pods; bob connects and gets
               his; frontend -> api with alice's header reaches alice; a key
               held by someone else and --replace while others hold routes are
               refused naming the holder; bob leaves, alice's route stays; alice leaves: Service and Deployment equal what they were
               before, no kbridge object left
    replace    --replace scales api to 0, all traffic to the developer, back to 2
    command    `-- CMD` runs with the original container's env (--env-file too);
               its exit ends the session and restores
    restore    the CLI killed with -9 and the agent deleted: `kbridge restore` puts
               everything back, twice is a no-op; a selector changed meanwhile is
               reported as a conflict and left alone
    agentpod   the agent pod deleted: a new one comes, the CLI reconnects, alice's
               route works again (time printed)
    lease      the CLI killed with -9: the agent restores the cluster by itself
               within its lease (5 s here) + 10 s
    direct     --agent-address: a developer reaches the agent through a NodePort
               (direct TCP + TLS) while another uses the port-forward
    named      a Service with a named targetPort (frontend: 80 -> "http")
    forward    --forward 127.0.0.1:0=store...:8080: the ready event names the local
               port, a GET through it answers from the real store pod, the env has
               STORE_SERVICE_HOST/PORT pointing at the forward
    identity   two developers (two ServiceAccounts): certificates bound to each
               identity (ready event, kbridge list); a request for the other's key
               is denied by the signer, connect refuses it, approving is forbidden;
               no CA key in the namespace, the signer's out of reach; --force
               takes the key over (signer and agent log it), the old holder is
               told and leaves without restoring; the last one out restores
    ingress    --ingress: an Ingress routing shop.example.com/api to api is cloned
               as alice.shop.example.com (labels, annotations, owner), one routing
               elsewhere is not; bob's clone goes when bob leaves, alice's when she
               does; after kill -9, kbridge restore removes the clones, and so
               does the agent's lease restore (through the garbage collector)
    envfile    `kbridge env` of a Deployment whose env takes hostile values
               (line breaks, quotes, $, backslashes, UTF-8) from a ConfigMap and a
               Secret (envFrom, configMapKeyRef, secretKeyRef, fieldRef): every
               --env-format read back by its consumer equals the values byte for
               byte, secrets marked in json, what a format cannot carry left out
               with a warning naming it; reads only (no agent, selector and
               Deployment unchanged); the same while the Service is taken over
    podsecurity  a namespace enforcing Pod Security restricted (the test cluster's
               webhook, tests/cluster/podsecurity.py): a pod or Deployment breaking
               it is refused with the reasons; kbridge's agent pod is reviewed,
               admitted, meets restricted, and alice's route works through it
    volumes    a Deployment with configMap (items, modes, subPath), secret, downwardAPI,
               projected (with a serviceAccountToken), emptyDir and hostPath volumes:
               a command reads $KBRIDGE_VOLUMES, every file equals the cluster's
               object byte for byte with its mode (secrets 0600, directories 0700),
               hostPath is listed with its reason; without the right to ask for
               tokens the refusal is listed, with it the token is accepted by the API
               server for its audience; the temporary directory is gone after exit,
               --volumes-dir is kept; the cluster is restored
    volumerefresh  the projected service account token (expirationSeconds 600) is
               asked again at 80% of its lifetime while connected (about 8 minutes):
               the file holds a new token the API server accepts, replaced whole.
               Not in the default run (the API server's shortest token lifetime is
               10 minutes): `ctest -L long` (cluster.connect_long) runs it; the
               default run checks the refresh schedule in `volumes`

The cluster is $KBRIDGE_E2E_CLUSTER (default kbe2e); it is started (setup + up)
if it is not up, and taken down at the end unless KBRIDGE_E2E_KEEP=1. The test
node runs the agent image from --agent (through <state dir>/images.json); with
KBRIDGE_CLUSTER_NODE=real the cluster has the real node (tests/cluster/realnode)
and the agent and signer run from their images, built from this tree.
Exit 77 (skip) without root or kubectl.
"""
import argparse
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CLUSTER_DIR = os.path.join(REPO, "tests", "cluster")
BACKEND = os.path.join(REPO, "tests", "integration", "backend.py")
sys.path.insert(0, CLUSTER_DIR)
import kbcluster as kc  # noqa: E402

NAME = os.environ.get("KBRIDGE_E2E_CLUSTER", "kbe2e")
NS = "shop"
# The process node runs the agent under test (images.json below); the real node
# (KBRIDGE_CLUSTER_NODE=real, tests/cluster/realnode) runs connect's default
# image, built from this tree by deploy/image/build and loaded on the node.
REAL_NODE = os.environ.get("KBRIDGE_CLUSTER_NODE") == "real"


def _version():
    import re
    with open(os.path.join(REPO, "CMakeLists.txt")) as f:
        return re.search(r"project\(kbridge VERSION ([0-9.]+)", f.read()).group(1)


VERSION = _version()
IMAGE = "ghcr.io/kbridge/agent:" + VERSION if REAL_NODE else "kbridge/agent:e2e"
T0 = time.time()
ARGS = None
TMP = tempfile.mkdtemp(prefix="kbridge-e2e-")
PROCS = []
DEV_TOKEN = []


def say(msg):
    print("[%6.1fs] %s" % (time.time() - T0, msg), flush=True)


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)
    say("ok: " + msg)


def info():
    return kc.read_cluster(NAME)


def kubectl(*args, kubeconfig=None, check_rc=True, input=None):
    kcfg = kubeconfig or info()["admin_kubeconfig"]
    r = subprocess.run(["kubectl", "--kubeconfig", kcfg] + list(args), capture_output=True,
                       text=True, input=input)
    if check_rc and r.returncode != 0:
        raise Fail("kubectl %s: %s" % (" ".join(args), r.stderr.strip()))
    return r


def wait(what, fn, timeout, interval=0.2):
    end = time.time() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.time() > end:
            raise Fail("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(interval)


# ---- the cluster ----

def cluster_up():
    if info() is None:
        say("starting cluster %s (setup + up)" % NAME)
        r = subprocess.run([os.path.join(CLUSTER_DIR, "setup")] + (["--node"] if REAL_NODE else []),
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise Fail("setup failed: %s" % r.stderr[-2000:])
    env = dict(os.environ, KBRIDGE_AGENT_BIN=ARGS.agent)
    r = subprocess.run([os.path.join(CLUSTER_DIR, "up"), "--name", NAME], capture_output=True,
                       text=True, env=env)
    if r.returncode != 0:
        raise Fail("up failed: %s" % r.stderr[-2000:])
    sd = info()["state_dir"]
    with open(os.path.join(sd, "images.json"), "w") as f:
        json.dump({"images": {"kbridge/agent:*": {"entrypoint": [ARGS.agent], "cmd": [],
                                                  "user": 65532},
                              "kbridge/signer:*": {"entrypoint": [signer_bin()], "cmd": [],
                                                   "user": 65532}}}, f)
    install_signer()
    kubectl("apply", "-f", os.path.join(REPO, "deploy", "demo", "shop.yaml"))
    # A Service without a selector, for the bad-input part.
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "manual", "namespace": NS},
        "spec": {"ports": [{"port": 80}]}}))

    def ready():
        pods = json.loads(kubectl("get", "pods", "-n", NS, "-o", "json").stdout)["items"]
        return len(pods) >= 4 and all(
            any(c["type"] == "Ready" and c["status"] == "True"
                for c in p.get("status", {}).get("conditions", []))
            for p in pods if not p["metadata"].get("deletionTimestamp"))
    wait("the demo pods to be ready", ready, 120)
    DEV_TOKEN.append(developer_user())
    say("cluster %s up, demo ready; kbridge runs as a user holding only "
        "deploy/rbac/developer-role.yaml" % NAME)


def signer_bin():
    """kbridge-signer, built beside the agent (build/signer/kbridge-signer)."""
    return getattr(ARGS, "signer", None) or os.path.join(
        os.path.dirname(os.path.dirname(ARGS.agent)), "signer", "kbridge-signer")


SIGNER_NS = "kbridge-system"


def signer_pod():
    pods = json.loads(kubectl("get", "pods", "-n", SIGNER_NS, "-o", "json").stdout)["items"]
    for p in pods:
        if not p["metadata"].get("deletionTimestamp") and \
                p.get("status", {}).get("phase") == "Running":
            return p["metadata"]["name"]
    return None


def install_signer():
    """deploy/signer.yaml as a cluster administrator applies it, with the image of
    the binary under test."""
    with open(os.path.join(REPO, "deploy", "signer.yaml")) as f:
        text = f.read()
    import re
    text, n = re.subn(r"image: \S+signer:\S+",
                      "image: " + ("ghcr.io/kbridge/signer:" + VERSION if REAL_NODE else "kbridge/signer:e2e"), text)
    check(n == 1, "deploy/signer.yaml read (image replaced)")
    kubectl("apply", "-f", "-", input=text)
    wait("kbridge-signer to run", signer_pod, 60)
    with open(os.path.join(REPO, "deploy", "rbac", "developer-csr.yaml")) as f:
        kubectl("apply", "-f", "-", input=f.read())


DEV_KUBECONFIG = os.path.join(TMP, "developer.kubeconfig")
DEV2_KUBECONFIG = os.path.join(TMP, "developer2.kubeconfig")


def developer_user():
    """A ServiceAccount holding only deploy/rbac/developer-role.yaml in NS (and
    deploy/rbac/developer-csr.yaml), and a kubeconfig with its token: the tests
    run kbridge as this user, so the Role documented in docs/rbac.md is proven
    sufficient."""
    return make_developer("kbridge-e2e-dev", DEV_KUBECONFIG)


def make_developer(sa_name, kubeconfig_path):
    # Under its own name: the test cluster's restricted user has a Role called
    # kbridge-developer too, which must stay as it is.
    with open(os.path.join(REPO, "deploy", "rbac", "developer-role.yaml")) as f:
        role = f.read().replace("name: kbridge-developer", "name: kbridge-e2e-developer")
    check("kbridge-e2e-developer" in role, "deploy/rbac/developer-role.yaml read")
    kubectl("apply", "-n", NS, "-f", "-", input=role)
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": sa_name, "namespace": NS}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": sa_name, "namespace": NS},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                         "name": "kbridge-e2e-developer"},
             "subjects": [{"kind": "ServiceAccount", "name": sa_name,
                           "namespace": NS}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": "kbridge-e2e-csr-" + sa_name},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                         "name": "kbridge-developer-csr"},
             "subjects": [{"kind": "ServiceAccount", "name": sa_name,
                           "namespace": NS}]}]}))

    def token():
        sa = json.loads(kubectl("get", "sa", sa_name, "-n", NS, "-o", "json").stdout)
        for ref in sa.get("secrets", []):
            sec = json.loads(kubectl("get", "secret", ref["name"], "-n", NS, "-o", "json").stdout)
            if sec.get("data", {}).get("token"):
                import base64
                return base64.b64decode(sec["data"]["token"]).decode()
        return None
    tok = wait("the developer's token", token, 30)
    with open(info()["restricted_kubeconfig"]) as f:
        text = f.read()
    import re
    text = re.sub(r"token: \S+", "token: " + tok, text)
    with open(kubeconfig_path, "w") as f:
        f.write(text)
    os.chmod(kubeconfig_path, 0o600)
    return tok


def restricted():
    return DEV_KUBECONFIG


# ---- snapshots: what must be equal after a restore ----

SERVER_SET = ("resourceVersion", "generation", "managedFields", "uid", "creationTimestamp",
              "selfLink")


def normalized(kind, name):
    o = json.loads(kubectl("get", kind, name, "-n", NS, "-o", "json").stdout)
    o.pop("status", None)
    md = o["metadata"]
    for k in SERVER_SET:
        md.pop(k, None)
    ann = {k: v for k, v in md.get("annotations", {}).items()
           if not k.startswith("kubectl.kubernetes.io/")}
    if ann:
        md["annotations"] = ann
    else:
        md.pop("annotations", None)
    return o


def snapshot():
    return {"service": normalized("service", "api"),
            "deployment": normalized("deployment", "api"),
            "manual": normalized("service", "manual")}


def kbridge_objects():
    """kbridge's objects in NS. A terminating pod (deletionTimestamp set) is not
    one: kbridge counts it as gone (selected by nothing, stopped by SIGTERM);
    on the real node the kubelet removes its object seconds later."""
    kinds = ("deployments,replicasets,pods,services,secrets,serviceaccounts,roles,rolebindings,"
             "ingresses.networking.k8s.io,networkpolicies.networking.k8s.io,"
             "poddisruptionbudgets.policy")
    r = kubectl("get", kinds, "-n", NS, "-o", "json")
    items = json.loads(r.stdout)["items"]
    left = []
    for it in items:
        md = it["metadata"]
        if it["kind"] == "Pod" and md.get("deletionTimestamp"):
            continue
        if md.get("labels", {}).get("app.kubernetes.io/managed-by") == "kbridge" or \
                md["name"].startswith("kbridge-agent-") or md["name"].endswith("-kbridge-origin"):
            left.append("%s/%s" % (it["kind"], md["name"]))
    return left


def check_restored(before, what):
    def same():
        return snapshot() == before and not kbridge_objects()
    try:
        # On the real node a terminating agent pod goes when the kubelet is done with it.
        wait("the cluster to equal its state before %s" % what, same, 90 if REAL_NODE else 30)
    except Fail:
        now = snapshot()
        for k in before:
            if now[k] != before[k]:
                say("%s differs:\nbefore %s\nnow    %s" % (k, json.dumps(before[k], sort_keys=True),
                                                         json.dumps(now[k], sort_keys=True)))
        say("kbridge objects left: %s" % kbridge_objects())
        raise
    check(True, "after %s: Service and Deployment equal what they were before, no kbridge "
          "object left" % what)


# ---- processes ----

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def backend(name):
    port = free_port()
    p = subprocess.Popen([sys.executable, BACKEND, "--name", name, "--port", str(port)],
                         stdout=subprocess.PIPE, text=True)
    PROCS.append(p)
    line = p.stdout.readline()
    if not line.startswith("listening"):
        raise Fail("backend %s did not start" % name)
    return p, port


def kb(*args, kubeconfig=None, timeout=60, env=None):
    e = dict(os.environ, KUBECONFIG=kubeconfig or restricted())
    if env:
        e.update(env)
    return subprocess.run([ARGS.kbridge] + list(args), capture_output=True, text=True, env=e,
                          timeout=timeout)


class Session:
    """A running `kbridge connect --output json`: events read line by line."""

    def __init__(self, key, port, *extra, kubeconfig=None, env=None, agent_image=IMAGE):
        """agent_image None: no --agent-image flag (connect's default image)."""
        self.key = key
        e = dict(os.environ, KUBECONFIG=kubeconfig or restricted(), XDG_RUNTIME_DIR=TMP)
        e.update(env or {})
        svc = "api"
        if "--service" in extra:
            i = extra.index("--service")
            svc = extra[i + 1]
            extra = extra[:i] + extra[i + 2:]
        argv = [ARGS.kbridge, "connect", "-n", NS, "--service", svc, "--local-port", str(port),
                "--output", "json"] + (["--agent-image", agent_image] if agent_image else [])
        if "--log-level" not in extra:
            argv += ["--log-level", "info"]
        if "--lease-seconds" not in extra:
            argv += ["--lease-seconds", "3600"]
        if key:
            argv += ["--route-as", key]
        argv += list(extra)
        self.t0 = time.time()
        self.errf = open(os.path.join(TMP, "connect-%s.err" % (key or "x")), "w+")
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.errf, text=True, env=e)
        PROCS.append(self.p)
        self.events = []
        self.q = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.q.put(line)
        self.q.put(None)

    def next_event(self, timeout=60):
        """The next JSON event, or None at the end of the output. Lines are read by
        a thread: select() on a buffered pipe would miss lines already buffered."""
        try:
            line = self.q.get(timeout=timeout)
        except queue.Empty:
            raise Fail("no event from connect %s within %ss" % (self.key, timeout))
        if line is None:
            return None
        ev = json.loads(line)
        self.events.append(ev)
        return ev

    def until(self, kinds, timeout=90):
        while True:
            ev = self.next_event(timeout)
            if ev is None or ev["event"] in kinds:
                return ev

    def ready(self):
        ev = self.until(("ready", "error"))
        if ev is None or ev["event"] != "ready":
            self.errf.seek(0)
            raise Fail("connect %s did not get ready: %s; stderr: %s" % (
                self.key, ev, self.errf.read()[-1500:]))
        return ev

    def stop(self, sig=signal.SIGINT):
        self.p.send_signal(sig)
        ev = self.until(("disconnected",), 60)
        self.p.wait(30)
        return ev

    def stderr(self):
        self.errf.seek(0)
        return self.errf.read()


# ---- requests from inside the cluster ----

PROBE = r'''
import json, socket, sys, time, urllib.parse, urllib.request
out = []
for url, headers in json.loads(sys.argv[1]):
    t = time.time()
    try:
        socket.getaddrinfo(urllib.parse.urlsplit(url).hostname, 80)
    except OSError:
        pass
    dns = time.time() - t
    try:
        r = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5)
        a = json.loads(r.read().decode())
    except Exception as e:
        a = {"error": str(e)}
    a["_dns_s"] = round(dns, 2)
    out.append(a)
print(json.dumps(out))
'''


def frontend_pod():
    pods = json.loads(kubectl("get", "pods", "-n", NS, "-l", "app=frontend", "-o",
                              "json").stdout)["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")][0]["metadata"]["name"]


def probe(reqs, timeout=20):
    """reqs: [(url, {headers})] -> answers (dicts) from the frontend pod's netns.
    A probe stuck longer than timeout (seen rarely: name resolution inside the
    test cluster stalling for about a minute) is reported and run again, twice."""
    for attempt in range(3):
        try:
            r = subprocess.run([os.path.join(CLUSTER_DIR, "pod-exec"), "--name", NAME, NS,
                                frontend_pod(), "--", "python3", "-c", PROBE, json.dumps(reqs)],
                               capture_output=True, text=True, timeout=timeout)
            break
        except subprocess.TimeoutExpired:
            say("probe stuck for %d s (attempt %d); running it again" % (timeout, attempt + 1))
    else:
        raise Fail("probe stuck 3 times")
    if r.returncode != 0:
        raise Fail("probe failed: %s" % r.stderr[-1000:])
    answers = json.loads(r.stdout)
    for a in answers:
        if a.get("_dns_s", 0) > 1:
            say("slow name resolution in the pod: %.1f s" % a["_dns_s"])
    return answers


def served_by(answer):
    """Who answered: the backend.py name, 'api' for the real pods, or the error."""
    if "served_by" in answer:
        return answer["served_by"]
    if "service" in answer:
        return answer["service"]
    return "error: %s" % answer.get("error")


API = "http://api.%s.svc.cluster.local:8080/" % NS


def hdr(key):
    return {"kubernetes-route-as": key}


# ---- parts ----

def part_badinput():
    before = snapshot()
    rk = restricted()
    d = os.path.join(TMP, "kc")
    os.makedirs(d, exist_ok=True)
    with open(rk) as f:
        good = f.read()
    unreachable = os.path.join(d, "unreachable")
    with open(unreachable, "w") as f:
        f.write(good.replace(info()["server"], "https://127.0.0.1:1"))
    broken = os.path.join(d, "broken")
    with open(broken, "w") as f:
        f.write("apiVersion: v1\nclusters: [this is: not: valid\n")
    failing = os.path.join(d, "failing-exec")
    plugin = os.path.join(d, "plugin-fails.sh")
    with open(plugin, "w") as f:
        f.write("#!/bin/sh\necho 'login required: run corp-login first' >&2\nexit 3\n")
    os.chmod(plugin, 0o755)
    good_plugin = os.path.join(d, "plugin-ok.sh")
    dev_token = DEV_TOKEN[0]
    with open(good_plugin, "w") as f:
        f.write("#!/bin/sh\ncat <<EOF\n{\"apiVersion\":\"client.authentication.k8s.io/v1beta1\","
                "\"kind\":\"ExecCredential\",\"status\":{\"token\":\"%s\"}}\nEOF\n" % dev_token)
    os.chmod(good_plugin, 0o755)

    def with_exec(path, cmd):
        import re
        txt = re.sub(r"(\n\s*)token: \S+",
                     r"\1exec:\1  apiVersion: client.authentication.k8s.io/v1beta1\1  command: %s"
                     % cmd, good)
        with open(path, "w") as f:
            f.write(txt)
    with_exec(failing, plugin)
    working = os.path.join(d, "working-exec")
    with_exec(working, good_plugin)

    port = free_port()
    base = ["connect", "--service", "api", "--local-port", str(port), "--agent-image", IMAGE,
            "--route-as", "eve"]
    cases = [
        ("unknown Service", ["connect", "-n", NS, "--service", "nope", "--local-port", str(port)],
         None, ['services "nope"', "not found"]),
        ("Service without selector", ["connect", "-n", NS, "--service", "manual",
                                      "--local-port", str(port)], None, ["no selector"]),
        ("missing namespace", ["connect", "-n", "nowhere"] + base[1:], None,
         ["nowhere"]),
        ("no permission", ["connect", "-n", NS] + base[1:], info()["norbac_kubeconfig"],
         ["forbidden", "services"]),
        ("unreachable API server", ["connect", "-n", NS] + base[1:], unreachable,
         ["cannot reach the API server", "127.0.0.1:1"]),
        ("broken kubeconfig", ["connect", "-n", NS] + base[1:], broken, [broken]),
        ("failing exec plugin", ["connect", "-n", NS] + base[1:], failing,
         ["login required"]),
        ("bad flag", ["connect", "-n", NS, "--service", "api", "--local-port", "x"], None,
         ["--local-port"]),
    ]
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    cases.append(("--forward to a local port in use",
                  ["connect", "-n", NS] + base[1:] +
                  ["--forward", "127.0.0.1:%d=store:8080" % busy.getsockname()[1]], None,
                  ["--forward", "already in use"]))
    for what, argv, kcfg, words in cases:
        r = kb(*argv, kubeconfig=kcfg, env={"XDG_RUNTIME_DIR": TMP})
        msg = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
        check(r.returncode != 0 and all(w.lower() in r.stderr.lower() for w in words),
              "%s: exit %d, %r" % (what, r.returncode, msg[:220]))
    # The same failures as JSON error events: the reason tools act on.
    reasons = {"unknown Service": "not_found", "no permission": "forbidden",
               "unreachable API server": "unreachable", "broken kubeconfig": "kubeconfig",
               "--forward to a local port in use": "port_in_use"}
    for what, argv, kcfg, _ in cases:
        if what not in reasons:
            continue
        r = kb(*(argv + ["--output", "json"]), kubeconfig=kcfg, env={"XDG_RUNTIME_DIR": TMP})
        errs = [json.loads(line) for line in r.stdout.splitlines() if '"event":"error"' in line]
        check(r.returncode != 0 and errs and errs[0].get("reason") == reasons[what] and errs[0].get("message"),
              "%s: error event with reason %s (%s)" % (what, reasons[what], errs[:1]))
    busy.close()
    check(snapshot() == before and not kbridge_objects(),
          "bad input left the cluster unchanged")
    # What an editor lists: every Service with its ports; namespaces (refused
    # to a user with rights in one namespace only, as an error event).
    r = kb("list", "-n", NS, "--all", "--output", "json")
    svcs = {o["service"]: o for o in json.loads(r.stdout)} if r.returncode == 0 else {}
    check({"api", "frontend", "store", "manual"} <= set(svcs)
          and svcs["api"]["ports"] == [{"name": "http", "port": 8080, "targetPort": 8080, "protocol": "TCP"}]
          and svcs["frontend"]["ports"][0]["targetPort"] == "http"
          and svcs["manual"]["selector"] == {} and svcs["api"]["taken_over"] is False,
          "list --all: every Service with its ports and selector (%s)" % sorted(svcs))
    r = kb("namespaces", "--output", "json")
    ev = json.loads(r.stdout.splitlines()[-1]) if r.stdout.strip() else {}
    check(r.returncode == 1 and ev.get("reason") == "forbidden",
          "namespaces as the developer: refused as an error event (%s)" % ev.get("reason"))
    r = kb("namespaces", "--output", "json", kubeconfig=info()["admin_kubeconfig"])
    ns = json.loads(r.stdout) if r.returncode == 0 else {}
    check(NS in ns.get("namespaces", []) and "kube-system" in ns.get("namespaces", []),
          "namespaces as admin: %s" % ns.get("namespaces"))
    # Fails after writes began: an agent image that cannot be pulled is undone.
    t = time.time()
    r = kb("connect", "-n", NS, "--service", "api", "--local-port", str(port), "--agent-image",
           "nosuch/agent:1", env={"XDG_RUNTIME_DIR": TMP})
    check(r.returncode == 1 and "ErrImagePull" in r.stderr and "undoing" in r.stdout,
          "unpullable agent image: reported (%r) and undone in %.1f s" %
          (r.stderr.strip().splitlines()[-1][:160], time.time() - t))
    check_restored(before, "the failed connect")
    r = kb("list", "-n", NS, kubeconfig=working)
    check(r.returncode == 0 and "no service" in r.stdout,
          "a kubeconfig with a working exec plugin: kbridge list works (%s)" % r.stdout.strip())


def header_pair(line):
    """'Name: value' -> (Name, value)."""
    name, _, value = line.partition(":")
    return name.strip(), value.strip()


def check_printed_urls(ev, who):
    """Every URL of a ready event works from a pod in the cluster and, with the
    event's route header or Host header, reaches the developer's process."""
    reqs = []
    for u in ev["urls"]:
        reqs.append((u, dict([header_pair(ev["header"])])))
        if ev.get("host_header"):
            reqs.append((u, dict([header_pair(ev["host_header"])])))
    got = [served_by(a) for a in probe(reqs)]
    check(reqs and all(g == who for g in got),
          "every URL of the ready event, with its header, reaches %s from a pod: %s" % (
              who, list(zip([(u, h) for u, h in reqs], got))))


def check_printed_text(port, who):
    """Connect without --output json, with a key of its own and the local port
    of who's server; every URL it prints, requested from a pod (with the -H
    headers of its curl line, if it is in one), must reach who."""
    import re
    import shlex
    key = who.split("-")[0] + "-text"
    e = dict(os.environ, KUBECONFIG=restricted(), XDG_RUNTIME_DIR=TMP)
    p = subprocess.Popen([ARGS.kbridge, "connect", "-n", NS, "--service", "api", "--local-port",
                          str(port), "--route-as", key, "--agent-image", IMAGE],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=e)
    PROCS.append(p)
    lines = []
    for line in p.stdout:
        lines.append(line.rstrip())
        if "stop with Ctrl-C" in line:
            break
    try:
        reqs = []
        for line in lines:
            if "curl " in line:
                argv = shlex.split(line[line.index("curl "):])
                hdrs = dict(header_pair(argv[i + 1]) for i in range(len(argv)) if argv[i] == "-H")
                reqs += [(line.strip(), a, hdrs) for a in argv[1:] if a.startswith("http")]
            else:
                reqs += [(line.strip(), u, {}) for u in re.findall(r"https?://\S+", line)]
        got = [served_by(a) for a in probe([(u, h) for _, u, h in reqs])] if reqs else []
        check(reqs and all(g == who for g in got),
              "every URL connect prints (text) works from a pod and reaches %s: %s" % (
                  who, [(l, g) for (l, _, _), g in zip(reqs, got)]))
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(60)


def part_routing():
    before = snapshot()
    _, pa = backend("alice-local")
    _, pb = backend("bob-local")
    alice = Session("alice", pa)
    ev = alice.ready()
    dt = time.time() - alice.t0
    say("MEASURE connect-to-ready (fresh takeover): %.2f s (CLI says %.2f s)" % (dt, ev["seconds"]))
    check(ev["route"] == "alice" and ev["local_port"] == pa and
          ev["header"] == "kubernetes-route-as: alice" and ev["urls"],
          "ready event: route, header, urls %s" % ev["urls"])
    check_printed_urls(ev, "alice-local")
    check(ev["env"].get("GREETING") == "hello from the shop config" and
          ev["env"].get("API_KEY") == "demo-api-key-not-a-real-secret",
          "ready event carries the original env (configMap and secret refs resolved)")
    ans = probe([(API, hdr("alice")),
                 (API, {"Host": "alice.api.shop.svc.cluster.local"}),
                 (API, {}), (API, {}), (API, hdr("nobody")),
                 (API, {"baggage": "kbridge-route=alice"})])
    who = [served_by(a) for a in ans]
    check(who[0] == "alice-local", "header kubernetes-route-as: alice -> alice's local server")
    check(who[1] == "alice-local", "Host alice.api... (subdomain) -> alice's local server")
    check(who[2] == "api" and who[3] == "api" and who[4] == "api",
          "no key / unknown key -> the real api pods (%s)" % who[2:5])
    check(who[5] == "alice-local", "baggage kbridge-route=alice -> alice's local server")

    bob = Session("bob", pb)
    ev = bob.ready()
    say("MEASURE connect-to-ready (second developer, agent reused): %.2f s" % ev["seconds"])
    check_printed_text(pb, "bob-local")
    ans = probe([(API, hdr("bob")), (API, hdr("alice")), (API, {}),
                 ("http://frontend.%s.svc.cluster.local/" % NS, hdr("alice")),
                 ("http://frontend.%s.svc.cluster.local/" % NS, {})])
    who = [served_by(a) for a in ans]
    check(who[0] == "bob-local" and who[1] == "alice-local" and who[2] == "api",
          "bob's header -> bob, alice's -> alice, none -> api (%s)" % who[:3])
    nxt = ans[3].get("next", {})
    check(served_by(nxt) == "alice-local",
          "frontend -> api with alice's header reaches alice's local api")
    check(served_by(ans[4].get("next", {})) == "api", "frontend -> api without a header: real api")

    r = kb("list", "-n", NS)
    check(r.returncode == 0 and "alice" in r.stdout and "bob" in r.stdout and "routing" in r.stdout,
          "kbridge list shows the takeover and both routes")
    r = kb("status", env={"XDG_RUNTIME_DIR": TMP})
    check(r.returncode == 0 and "alice" in r.stdout and "bob" in r.stdout,
          "kbridge status shows both sessions")

    # A key someone else holds; --replace while others hold routes.
    _, px = backend("mallory-local")
    m = Session("alice", px)
    ev = m.until(("ready", "error", "disconnected"))
    m.p.wait(60)
    check(ev["event"] == "error" and "alice" in ev["message"] and m.p.returncode != 0,
          "a key held by someone else is refused: %r" % ev["message"][:200])
    r = kb("connect", "-n", NS, "--service", "api", "--local-port", str(px), "--replace",
           "--agent-image", IMAGE, env={"XDG_RUNTIME_DIR": TMP})
    check(r.returncode != 0 and "alice" in r.stderr and "bob" in r.stderr,
          "--replace while others hold routes is refused naming them: %r" %
          r.stderr.strip()[-200:])
    check(served_by(probe([(API, hdr("alice"))])[0]) == "alice-local",
          "alice's route unaffected by the refused attempts")

    r = kb("disconnect", "-n", NS, "--service", "api", "--route-as", "bob",
           env={"XDG_RUNTIME_DIR": TMP})
    check(r.returncode == 0, "kbridge disconnect --route-as bob")
    ev = bob.until(("disconnected",))
    check(ev["restored"] is False, "bob left while alice is connected: no restore")
    ans = probe([(API, hdr("alice")), (API, hdr("bob")), (API, {})])
    who = [served_by(a) for a in ans]
    check(who == ["alice-local", "api", "api"],
          "after bob left: alice's route stays, bob's key goes to the api pods (%s)" % who)
    t = time.time()
    ev = alice.stop()
    check(ev["restored"] is True and alice.p.returncode == 0,
          "alice (last) leaves on SIGINT: restored, exit 0 (%.2f s)" % (time.time() - t))
    say("MEASURE disconnect-to-restored (incl. waiting for the GC): %.2f s" % (time.time() - t))
    check_restored(before, "alice and bob")
    ans = probe([(API, hdr("alice")), (API, {})])
    check([served_by(a) for a in ans] == ["api", "api"], "after restore all requests reach api")


def part_replace():
    before = snapshot()
    _, pc = backend("carol-local")
    carol = Session(None, pc, "--replace")
    ev = carol.ready()
    say("MEASURE connect-to-ready (--replace): %.2f s" % ev["seconds"])
    dep = json.loads(kubectl("get", "deployment", "api", "-n", NS, "-o", "json").stdout)
    check(dep["spec"]["replicas"] == 0 and
          dep["metadata"]["annotations"].get("kbridge.dev/original-replicas") == "2",
          "--replace: api scaled to 0, original replicas 2 in the annotation")
    ans = probe([(API, {}), (API, hdr("whoever"))])
    check([served_by(a) for a in ans] == ["carol-local"] * 2,
          "exclusive: every request reaches the developer")
    got = [served_by(a) for a in probe([(u, {}) for u in ev["urls"]])]
    check(ev["urls"] and "host_header" not in ev and got == ["carol-local"] * len(got),
          "exclusive: every URL of the ready event, without a header, reaches the developer "
          "from a pod: %s" % list(zip(ev["urls"], got)))
    ev = carol.stop(signal.SIGTERM)
    check(ev["restored"] is True, "SIGTERM: restored")
    check_restored(before, "--replace")


def part_command():
    before = snapshot()
    port = free_port()
    envf = os.path.join(TMP, "api.env")
    script = ("import os, subprocess, sys, time; "
              "p = subprocess.Popen([sys.executable, %r, '--name', 'cmd-local', '--port', "
              "os.environ['LOCAL_PORT']]); "
              "open(%r, 'w').write(os.environ.get('GREETING', '') + '|' + "
              "os.environ.get('API_KEY', '')); "
              "[time.sleep(0.1) for _ in range(600) if not os.path.exists(%r)]; p.terminate()"
              % (BACKEND, os.path.join(TMP, "seen-env"), os.path.join(TMP, "stop-command")))
    s = Session("cmd", port, "--env-file", envf, "--", "sh", "-c",
                "LOCAL_PORT=%d exec %s -c \"$0\"" % (port, sys.executable), script)
    s.ready()
    t = time.time()
    seen = []

    def routed():
        t1 = time.time()
        seen.append(served_by(probe([(API, hdr("cmd"))], timeout=10)[0]))
        seen[-1] += " (%.1f s)" % (time.time() - t1)
        if len(seen) == 5 and not seen[-1].startswith("cmd-local"):
            diag()
        return seen[-1].startswith("cmd-local")

    def diag():
        ep = json.loads(kubectl("get", "endpoints", "api", "-n", NS, "-o", "json").stdout)
        sv = json.loads(kubectl("get", "service", "api", "-n", NS, "-o", "json").stdout)
        say("DIAG service selector %s, endpoints %s" % (
            sv["spec"].get("selector"),
            [a["ip"] for ss in ep.get("subsets", []) for a in ss.get("addresses", [])]))
        nat = subprocess.run(["ip", "netns", "exec", info()["node_netns"], "iptables-save", "-t",
                              "nat"], capture_output=True, text=True).stdout
        say("DIAG node nat rules with 8080: %s" % [l for l in nat.splitlines() if "8080" in l])
    try:
        wait("the command's server to answer through the route", routed, 20, 0.3)
        say("MEASURE ready -> the command's server answers through the route: %.2f s (%s)" %
            (time.time() - t, ", ".join(seen)))
    except Fail:
        say("tries: %s" % seen)
        say("connect stderr: %s" % s.stderr()[-6000:])
        say("probe: %s" % probe([(API, hdr("cmd"))]))
        say(kubectl("get", "pods", "-n", NS, "-o", "wide").stdout)
        for p in agent_pods():
            say(kubectl("logs", "-n", NS, p["metadata"]["name"], check_rc=False).stdout[-3000:])
        raise
    check(True, "the command after -- serves the route")
    with open(envf) as f:
        env = f.read()
    check("GREETING='hello from the shop config'" in env and "API_KEY='demo-api-key" in env,
          "--env-file has the original container's env (dotenv)")
    with open(os.path.join(TMP, "seen-env")) as f:
        check(f.read() == "hello from the shop config|demo-api-key-not-a-real-secret",
              "the command ran with the original container's env")
    open(os.path.join(TMP, "stop-command"), "w").close()
    ev = s.until(("disconnected",), 60)
    s.p.wait(30)
    if not (ev["restored"] is True and s.p.returncode == 0):
        say("connect stderr: %s" % s.stderr()[-3000:])
    check(ev["restored"] is True and s.p.returncode == 0,
          "the command's exit ended the session and restored (exit %d)" % s.p.returncode)
    check_restored(before, "the command")


def part_restore():
    before = snapshot()
    _, pd = backend("dave-local")
    dave = Session("dave", pd)
    dave.ready()
    dave.p.kill()
    dave.p.wait()
    kubectl("delete", "deployment", "kbridge-agent-api", "-n", NS, "--wait=false")
    say("CLI killed with -9 and the agent deleted")
    sel = json.loads(kubectl("get", "service", "api", "-n", NS, "-o", "json").stdout)["spec"]["selector"]
    check(sel == {"kbridge.dev/agent": "api"}, "the Service still points at the agent")
    r = kb("restore", "-n", NS, "--service", "api")
    check(r.returncode == 0 and "selector restored" in r.stdout,
          "kbridge restore: %s" % r.stdout.strip().replace("\n", "; "))
    check_restored(before, "kbridge restore")
    r = kb("restore", "-n", NS, "--service", "api")
    check(r.returncode == 0 and "nothing to restore" in r.stdout,
          "kbridge restore again: %s" % r.stdout.strip())

    # Someone changes the selector while it is taken over: restore reports it.
    dave = Session("dave", pd)
    dave.ready()
    dave.p.kill()
    dave.p.wait()
    kubectl("patch", "service", "api", "-n", NS, "--type", "json", "-p",
            '[{"op":"replace","path":"/spec/selector","value":{"app":"api","tier":"new"}}]')
    r = kb("restore", "-n", NS, "--service", "api", "--output", "json")
    out = json.loads(r.stdout)
    sel = json.loads(kubectl("get", "service", "api", "-n", NS, "-o", "json").stdout)["spec"]["selector"]
    check(r.returncode == 0 and out["conflicts"] >= 1 and "changed by someone else" in out["report"]
          and sel == {"app": "api", "tier": "new"},
          "a selector changed meanwhile is left alone and reported: %r" % out["report"][:160])
    wait("no kbridge objects", lambda: not kbridge_objects(), 30)
    kubectl("patch", "service", "api", "-n", NS, "--type", "json", "-p",
            '[{"op":"replace","path":"/spec/selector","value":{"app":"api"}}]')
    check(snapshot() == before, "selector put back by hand for the next parts")


def agent_pods():
    pods = json.loads(kubectl("get", "pods", "-n", NS, "-l", "kbridge.dev/agent=api", "-o",
                              "json").stdout)["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def part_agentpod():
    before = snapshot()
    _, pa = backend("alice-local")
    alice = Session("alice", pa)
    alice.ready()
    old = agent_pods()[0]["metadata"]["name"]
    t = time.time()
    kubectl("delete", "pod", old, "-n", NS, "--wait=false")
    say("agent pod %s deleted" % old)

    def routed_again():
        pods = agent_pods()
        if not pods or pods[0]["metadata"]["name"] == old:
            return False
        return served_by(probe([(API, hdr("alice"))])[0]) == "alice-local"
    wait("alice's route through the new agent pod", routed_again, 60, 0.5)
    say("MEASURE agent pod deleted -> route works again through the new pod: %.2f s" %
        (time.time() - t))
    check(served_by(probe([(API, {})])[0]) == "api", "unrouted requests reach api again")
    ev = alice.stop()
    check(ev["restored"] is True, "alice leaves: restored")
    check_restored(before, "the agent pod replacement")


def part_lease():
    before = snapshot()
    _, pa = backend("alice-local")
    lease = 5
    # With a command running: it must not keep the tunnels open after kbridge dies.
    alice = Session("alice", pa, "--lease-seconds", str(lease), "--", "sleep", "300")
    alice.ready()
    ev = alice.until(("progress",))
    while ev and ev.get("step") != "command-started":
        ev = alice.until(("progress",))
    import re
    child = int(re.search(r"pid (\d+)", ev["message"]).group(1))
    alice.p.kill()
    alice.p.wait()
    t = time.time()
    say("CLI killed with -9 (agent lease %d s); its command (pid %d) still runs" % (lease, child))
    check_restored(before, "kill -9 of the CLI (the agent's lease)")
    dt = time.time() - t
    say("MEASURE kill -9 -> cluster restored by the agent: %.2f s (lease %d s)" % (dt, lease))
    check(dt <= lease + 10, "restored within lease + 10 s")
    os.kill(child, signal.SIGKILL)


def agent_token():
    """A token of the agent's service account, as its pods get one (TokenRequest)."""
    req = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
           "spec": {"expirationSeconds": 600}}
    r = kubectl("create", "--raw", "/api/v1/namespaces/%s/serviceaccounts/kbridge-agent-api/token"
                % NS, "-f", "-", input=json.dumps(req))
    return json.loads(r.stdout)["status"]["token"]


def restore_as_agent(takeover_id):
    """kbridge-agent-restore as the agent's lease runs it, with the agent's
    service account (its token, namespace and the cluster CA in a directory)."""
    d = tempfile.mkdtemp(dir=TMP)
    for name, text in (("token", agent_token()), ("namespace", NS),
                       ("ca.crt", open(info()["ca"]).read())):
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    host, port = info()["server"].split("//")[1].rsplit(":", 1)
    e = dict(os.environ, KBRIDGE_SA_DIR=d, KUBERNETES_SERVICE_HOST=host,
             KUBERNETES_SERVICE_PORT=port)
    prog = os.path.join(os.path.dirname(ARGS.agent), "kbridge-agent-restore")
    return subprocess.run([prog, "--namespace", NS, "--service", "api", "--takeover-id",
                           takeover_id], capture_output=True, text=True, env=e, timeout=60)


def part_stale():
    """An agent whose takeover ended (lease over) while a new takeover of the
    same Service started runs its restore late (a retry, a slow drain): the
    newer takeover, whose objects have the same names, is left alone. Found by
    CI: the second agent pod of a lease-ended takeover undid the next one."""
    before = snapshot()
    _, pa = backend("alice-local")
    alice = Session("alice", pa)
    alice.ready()
    svc = json.loads(kubectl("get", "service", "api", "-n", NS, "-o", "json").stdout)
    tid = json.loads(svc["metadata"]["annotations"]["kbridge.dev/takeover"]).get("id", "")
    dep = json.loads(kubectl("get", "deployment", "kbridge-agent-api", "-n", NS, "-o",
                             "json").stdout)
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    check(len(tid) == 16 and dep["metadata"]["annotations"].get("kbridge.dev/takeover-id") == tid
          and args[args.index("--takeover-id") + 1] == tid,
          "the takeover has an id (%s), on the Service, the agent's Deployment and its args" % tid)
    taken = normalized("service", "api")
    old = "0" * 16 if tid != "0" * 16 else "1" * 16
    r = restore_as_agent(old)
    check(r.returncode == 0 and "left alone" in r.stdout,
          "the restore of an ended takeover, as its agent: exit %d, %r" %
          (r.returncode, (r.stdout + r.stderr).strip().splitlines()[:1]))
    check(normalized("service", "api") == taken and
          served_by(probe([(API, hdr("alice"))])[0]) == "alice-local",
          "the newer takeover is untouched and alice's route works")
    r = restore_as_agent(tid)
    check(r.returncode == 0 and "selector restored" in r.stdout,
          "the restore of the takeover itself (its own id) restores: %r" %
          (r.stdout.strip().splitlines()[:1],))
    alice.p.kill()
    alice.p.wait()
    check_restored(before, "the agent's own restore")


def part_direct():
    before = snapshot()
    _, pa = backend("alice-local")
    _, pc = backend("carol-direct")
    alice = Session("alice", pa)
    alice.ready()
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "agent-direct", "namespace": NS},
        "spec": {"type": "NodePort", "selector": {"kbridge.dev/agent": "api"},
                 "ports": [{"port": 7443, "targetPort": 7443}]}}))
    svc = json.loads(kubectl("get", "service", "agent-direct", "-n", NS, "-o", "json").stdout)
    addr = "%s:%d" % (info()["net"]["node_ip"], svc["spec"]["ports"][0]["nodePort"])
    carol = Session("carol", pc, "--agent-address", addr)
    ev = carol.ready()
    say("MEASURE connect-to-ready (direct carrier to %s, agent reused): %.2f s" % (addr, ev["seconds"]))
    who = [served_by(a) for a in probe([(API, hdr("carol")), (API, hdr("alice")), (API, {})])]
    check(who == ["carol-direct", "alice-local", "api"],
          "--agent-address (NodePort): carol's route over the direct carrier, alice's over the "
          "port-forward (%s)" % who)
    ev = carol.stop()
    check(ev["restored"] is False, "carol leaves, alice stays")
    ev = alice.stop()
    check(ev["restored"] is True, "alice leaves: restored")
    kubectl("delete", "service", "agent-direct", "-n", NS)
    check_restored(before, "the direct carrier")


def part_named():
    """frontend's Service maps port 80 to the named targetPort "http" (8080)."""
    before = {"frontend": normalized("service", "frontend"),
              "deployment": normalized("deployment", "frontend")}
    _, pf = backend("frontend-local")
    s = Session("erin", pf, "--service", "frontend")
    ev = s.ready()
    dep = json.loads(kubectl("get", "deployment", "kbridge-agent-frontend", "-n", NS, "-o",
                             "json").stdout)
    ports = dep["spec"]["template"]["spec"]["containers"][0]["ports"]
    check({"name": "http", "containerPort": 8080} in [{k: p[k] for k in ("name", "containerPort")}
                                                     for p in ports if "name" in p],
          "the agent's container port mirrors the named targetPort http=8080")
    fe = "http://frontend.%s.svc.cluster.local/" % NS
    who = [served_by(a) for a in probe([(fe, hdr("erin")), (fe, {})])]
    check(who == ["frontend-local", "frontend"],
          "named targetPort: erin's requests to frontend:80 reach her, others the real frontend "
          "(%s)" % who)
    ev = s.stop()
    check(ev["restored"] is True, "restored")
    wait("frontend restored", lambda: {"frontend": normalized("service", "frontend"),
                                       "deployment": normalized("deployment", "frontend")}
         == before and not kbridge_objects(), 30)
    check(True, "frontend Service and Deployment equal what they were before")


def part_forward():
    before = snapshot()
    _, pa = backend("alice-local")
    target = "store.%s.svc.cluster.local:8080" % NS
    alice = Session("alice", pa, "--forward", "127.0.0.1:0=" + target)
    ev = alice.ready()
    fw = ev.get("forwards", [])
    check(len(fw) == 1 and fw[0]["target"] == target and fw[0]["listen"].startswith("127.0.0.1:")
          and not fw[0]["listen"].endswith(":0"),
          "ready event names the forward with its real local port: %s" % fw)
    lport = int(fw[0]["listen"].rsplit(":", 1)[1])
    import urllib.request
    t = time.time()
    ans = json.loads(urllib.request.urlopen("http://127.0.0.1:%d/" % lport, timeout=10).read())
    check(ans.get("service") == "store" and ans.get("pod", "").startswith("store-"),
          "GET through the local forward port answers from the real store pod %s (%.2f s)" %
          (ans.get("pod"), time.time() - t))
    # Several in parallel through the same forward (outbound streams over the tunnels).
    results = []

    def get():
        try:
            results.append(json.loads(urllib.request.urlopen(
                "http://127.0.0.1:%d/" % lport, timeout=10).read()).get("service"))
        except Exception as e:  # reported below
            results.append(str(e))
    ts = [threading.Thread(target=get) for _ in range(8)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    check(results == ["store"] * 8, "8 parallel requests through the forward: %s" % results)
    env = ev["env"]
    check(env.get("STORE_SERVICE_HOST") == "127.0.0.1" and
          env.get("STORE_SERVICE_PORT") == str(lport) and
          env.get("STORE_SERVICE_PORT_HTTP") == str(lport) and
          env.get("STORE_PORT_8080_TCP") == "tcp://127.0.0.1:%d" % lport,
          "env: store's service links point at the forward (a --forward wins over the "
          "Service's own listener)")
    api = [x for x in ev.get("services", []) if x["name"] == "api"]
    check(api and env.get("API_SERVICE_HOST") == api[0]["address"],
          "env: api's service links point at its listener %s" % (api and api[0]["address"]))
    ev = alice.stop()
    check(ev["restored"] is True, "alice leaves: restored")
    try:
        urllib.request.urlopen("http://127.0.0.1:%d/" % lport, timeout=3)
        closed = False
    except Exception:
        closed = True
    check(closed, "the forward's port is closed after disconnect")
    check_restored(before, "the forward")


def ingresses(selector=None):
    args = ["get", "ingresses.networking.k8s.io", "-n", NS, "-o", "json"]
    if selector:
        args += ["-l", selector]
    return {i["metadata"]["name"]: i for i in json.loads(kubectl(*args).stdout)["items"]}


def part_ingress():
    before = snapshot()
    def ing(name, host, paths):
        return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": name, "namespace": NS,
                             "annotations": {"example.com/team": "shop"}},
                "spec": {"rules": [{"host": host, "http": {"paths": [
                    {"path": p, "pathType": "Prefix",
                     "backend": {"service": {"name": svc, "port": {"number": port}}}}
                    for p, svc, port in paths]}}]}}
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        ing("shop", "shop.example.com", [("/api", "api", 8080), ("/", "frontend", 80)]),
        ing("stock", "stock.example.com", [("/", "store", 8080)])]}))
    originals = ingresses()
    _, pa = backend("alice-local")
    _, pb = backend("bob-local")
    alice = Session("alice", pa, "--ingress")
    ev = alice.ready()
    check(ev.get("ingress_urls") == ["http://alice.shop.example.com/api"],
          "ready event: ingress URL %s" % ev.get("ingress_urls"))
    clones = ingresses("app.kubernetes.io/managed-by=kbridge")
    check(list(clones) == ["shop-kbridge-alice"],
          "one clone, of the Ingress routing to api (not of the one routing to store): %s" %
          list(clones))
    c = clones["shop-kbridge-alice"]
    md = c["metadata"]
    check([r["host"] for r in c["spec"]["rules"]] == ["alice.shop.example.com"] and
          c["spec"]["rules"][0]["http"] == originals["shop"]["spec"]["rules"][0]["http"],
          "clone: host alice.shop.example.com, the same paths")
    check(md["labels"].get("kbridge.dev/service") == "api" and
          md["annotations"].get("kbridge.dev/route-key") == "alice" and
          md["annotations"].get("kbridge.dev/clone-of") == "shop" and
          md["annotations"].get("example.com/team") == "shop" and
          [o["name"] for o in md.get("ownerReferences", [])] == ["kbridge-agent-api"],
          "clone: labels, route-key and clone-of annotations, the original's annotations, "
          "owned by the agent's Deployment")
    check(served_by(probe([(API, {"Host": "alice.shop.example.com"})])[0]) == "alice-local",
          "a request as the ingress controller would send it (Host alice.shop.example.com) "
          "reaches alice")
    bob = Session("bob", pb, "--ingress")
    bob.ready()
    check(sorted(ingresses("app.kubernetes.io/managed-by=kbridge")) ==
          ["shop-kbridge-alice", "shop-kbridge-bob"], "bob gets his clone too")
    ev = bob.stop()
    check(ev["restored"] is False and
          list(ingresses("app.kubernetes.io/managed-by=kbridge")) == ["shop-kbridge-alice"],
          "bob leaves: his clone is deleted, alice's stays")
    ev = alice.stop()
    check(ev["restored"] is True and not ingresses("app.kubernetes.io/managed-by=kbridge"),
          "alice leaves: restored, her clone deleted")
    check(ingresses() == originals, "the original Ingresses are untouched")
    check_restored(before, "--ingress")

    alice = Session("alice", pa, "--ingress")
    alice.ready()
    alice.p.kill()
    alice.p.wait()
    r = kb("restore", "-n", NS, "--service", "api")
    check(r.returncode == 0 and "ingress %s/shop-kbridge-alice: deleted" % NS in r.stdout,
          "after kill -9: kbridge restore deletes the clone")
    check_restored(before, "kill -9 and kbridge restore with a clone")

    # The agent restoring by itself (lease) may not list Ingresses: the clone
    # goes with its Deployment (ownerReference, garbage collector).
    alice = Session("alice", pa, "--ingress", "--lease-seconds", "5")
    alice.ready()
    check("shop-kbridge-alice" in ingresses(), "clone made again")
    alice.p.kill()
    alice.p.wait()
    check_restored(before, "kill -9 and the agent's lease with a clone")
    kubectl("delete", "ingresses.networking.k8s.io", "shop", "stock", "-n", NS)


def csr_for(key, kubeconfig, force=False):
    """Create a CertificateSigningRequest for route key `key` as the user of
    kubeconfig (openssl makes the key and request); return its name."""
    d = tempfile.mkdtemp(dir=TMP)
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=" + key,
                    "-keyout", os.path.join(d, "k"), "-out", os.path.join(d, "r")],
                   check=True, capture_output=True)
    import base64
    with open(os.path.join(d, "r"), "rb") as f:
        req = base64.b64encode(f.read()).decode()
    md = {"generateName": "e2e-%s-" % key}
    if force:
        md["annotations"] = {"kbridge.dev/force": "true"}
    r = kubectl("create", "-o", "json", "-f", "-", kubeconfig=kubeconfig, input=json.dumps({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": md,
        "spec": {"request": req, "signerName": "kbridge.dev/%s.api" % NS,
                 "usages": ["digital signature", "client auth"]}}))
    return json.loads(r.stdout)["metadata"]["name"]


def csr_outcome(name, kubeconfig):
    """("Approved"|"Denied", message) once the signer decided."""
    def decided():
        o = json.loads(kubectl("get", "csr", name, "-o", "json", kubeconfig=kubeconfig).stdout)
        for c in o.get("status", {}).get("conditions", []):
            if c["type"] == "Denied" or (c["type"] == "Approved" and
                                         o["status"].get("certificate")):
                return (c["type"], c.get("message", ""))
        return None
    return wait("the signer's answer to %s" % name, decided, 30)


def part_identity():
    """Two developers (two ServiceAccounts, each with only the developer Role and
    the CSR ClusterRole): certificates bound to each identity, neither can get or
    use a certificate for the other's key, --force takes a key over and is
    logged, neither can read a CA key, kbridge list names the identities."""
    before = snapshot()
    make_developer("kbridge-e2e-dev2", DEV2_KUBECONFIG)
    id1 = "system:serviceaccount:%s:kbridge-e2e-dev" % NS
    id2 = "system:serviceaccount:%s:kbridge-e2e-dev2" % NS
    _, p1 = backend("dev1-local")
    _, p2 = backend("dev2-local")
    one = Session("ida", p1)
    ev = one.ready()
    check(ev.get("identity") == id1, "dev1's certificate is bound to %s" % ev.get("identity"))
    two = Session("idb", p2, kubeconfig=DEV2_KUBECONFIG)
    ev = two.ready()
    check(ev.get("identity") == id2, "dev2's certificate is bound to %s" % ev.get("identity"))
    a = probe([(API, hdr("ida")), (API, hdr("idb")), (API, {})])
    check([served_by(x) for x in a] == ["dev1-local", "dev2-local", "api"],
          "each developer gets their own route: %s" % [served_by(x) for x in a])

    # kbridge list shows who holds which key (from the agent, i.e. the certificates)
    for who, kc_ in (("dev1", restricted()), ("dev2", DEV2_KUBECONFIG)):
        r = kb("list", "-n", NS, "--output", "json", kubeconfig=kc_)
        svc = [o for o in json.loads(r.stdout) if o["service"] == "api"][0]
        ids = {ro["key"]: ro.get("identity") for ro in svc["routes"]}
        check(ids.get("ida") == id1 and ids.get("idb") == id2,
              "kbridge list (as %s) names the identities: %s" % (who, ids))
    r = kb("list", "-n", NS)
    check(id1 in r.stdout and id2 in r.stdout, "kbridge list (text) names both identities")

    # dev2 cannot obtain a certificate for dev1's key: the signer denies it
    name = csr_for("ida", DEV2_KUBECONFIG)
    verdict, msg = csr_outcome(name, DEV2_KUBECONFIG)
    check(verdict == "Denied" and ("held by " + id1) in msg,
          "dev2's request for dev1's key is denied: %s" % msg)
    # ... nor approve a request itself
    o = json.loads(kubectl("get", "csr", name, "-o", "json", kubeconfig=DEV2_KUBECONFIG).stdout)
    o["status"]["conditions"] = [{"type": "Approved", "status": "True", "reason": "e2e",
                                  "message": "self-approved"}]
    r = kubectl("replace", "--raw",
                "/apis/certificates.k8s.io/v1/certificatesigningrequests/%s/approval" % name,
                "-f", "-", kubeconfig=DEV2_KUBECONFIG, check_rc=False, input=json.dumps(o))
    check(r.returncode != 0 and "forbidden" in r.stderr.lower(),
          "dev2 cannot approve a certificate request: %s" % r.stderr.strip()[-150:])
    # ... and connect refuses to join dev1's key (held, no --force)
    r = kb("connect", "-n", NS, "--service", "api", "--local-port", str(p2), "--route-as", "ida",
           "--agent-image", IMAGE, kubeconfig=DEV2_KUBECONFIG, env={"XDG_RUNTIME_DIR": TMP})
    check(r.returncode != 0 and "already held" in r.stderr and "--force" in r.stderr,
          "dev2's connect for dev1's key is refused: %s" % r.stderr.strip().splitlines()[-1][:200])
    # dev1 may renew its own key
    name = csr_for("ida", restricted())
    verdict, msg = csr_outcome(name, restricted())
    check(verdict == "Approved", "dev1 may get another certificate for its own key: %s" % msg)

    # Neither can read a CA key: none in the Service's namespace, and the
    # signer's namespace is out of reach.
    for who, kc_ in (("dev1", restricted()), ("dev2", DEV2_KUBECONFIG)):
        sec = json.loads(kubectl("get", "secret", "kbridge-agent-api-tls", "-n", NS, "-o", "json",
                                 kubeconfig=kc_).stdout)
        check(sorted(sec["data"]) == ["agent.crt", "agent.key", "ca.crt"],
              "%s: the agent's Secret holds no CA key (%s)" % (who, sorted(sec["data"])))
        r = kubectl("get", "secrets", "-n", SIGNER_NS, kubeconfig=kc_, check_rc=False)
        check(r.returncode != 0 and "forbidden" in r.stderr.lower(),
              "%s cannot list the signer's Secrets" % who)
        r = kubectl("get", "secret", "kbridge-ca.%s.api" % NS, "-n", SIGNER_NS, kubeconfig=kc_,
                    check_rc=False)
        check(r.returncode != 0 and "forbidden" in r.stderr.lower(),
              "%s cannot read the CA key (kbridge-ca.%s.api)" % (who, NS))
        r = kubectl("auth", "can-i", "create", "pods", "-n", SIGNER_NS, kubeconfig=kc_,
                    check_rc=False)
        check(r.stdout.strip() == "no", "%s cannot run pods in %s" % (who, SIGNER_NS))
    ca = json.loads(kubectl("get", "secret", "kbridge-ca.%s.api" % NS, "-n", SIGNER_NS, "-o",
                            "json").stdout)
    check("ca.key" in ca["data"], "the CA key exists, in the signer's namespace only")

    # --force: dev2 takes "ida" over; logged by the signer and the agent; dev1
    # is told and leaves without restoring (dev2 is still there).
    three = Session("ida", p2, "--force", kubeconfig=DEV2_KUBECONFIG)
    ev = three.ready()
    check(ev.get("identity") == id2, "dev2 took ida over with --force")
    a = probe([(API, hdr("ida")), (API, hdr("idb"))])
    check([served_by(x) for x in a] == ["dev2-local", "dev2-local"],
          "ida now reaches dev2: %s" % [served_by(x) for x in a])
    try:
        one.p.wait(30)
    except subprocess.TimeoutExpired:
        raise Fail("dev1's connect still runs after losing its key")
    check(one.p.returncode != 0 and ("held by " + id2) in one.stderr(),
          "dev1's connect ends, told who holds its key now: %s" %
          [l for l in one.stderr().splitlines() if "held by" in l][-1:])
    slog = kubectl("logs", "-n", SIGNER_NS, signer_pod()).stdout
    check(("FORCE" in slog and id2 + ' takes route key "ida"' in slog and ("from " + id1) in slog),
          "the signer logged the forced takeover")
    agent = [p for p in agent_pods()][0]["metadata"]["name"]
    alog = kubectl("logs", "-n", NS, agent).stdout + kubectl("logs", "-n", NS, agent).stderr
    check("FORCE: route key ida taken over by %s from %s" % (id2, id1) in alog,
          "the agent logged the forced takeover")
    r = kb("list", "-n", NS, "--output", "json")
    svc = [o for o in json.loads(r.stdout) if o["service"] == "api"][0]
    check(svc["identities"].get("ida") == id2, "kbridge list: ida is held by dev2 now")
    a = probe([(API, hdr("ida"))])
    check(served_by(a[0]) == "dev2-local", "the takeover stayed after dev1 left")
    three.stop()
    two.stop()
    check_restored(before, "two developers and a forced takeover")



SECURE_NS = "secure"


def secure_api(restricted_ok):
    """The demo's api alone in SECURE_NS, its pod spec meeting Pod Security
    restricted or not."""
    sc = {"runAsNonRoot": True, "runAsUser": 65532, "allowPrivilegeEscalation": False,
          "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    c = {"name": "api", "image": "kbridge-demo/api:1", "ports": [{"name": "http", "containerPort": 8080}],
         "env": [{"name": "PORT", "value": "8080"}],
         "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1}}
    if restricted_ok:
        c["securityContext"] = sc
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "api" if restricted_ok else "api-loose", "namespace": SECURE_NS},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "api"}},
                     "template": {"metadata": {"labels": {"app": "api"}}, "spec": {"containers": [c]}}}}


def part_podsecurity():
    """The test cluster checks Pod Security restricted (tests/cluster/podsecurity.py,
    a validating webhook, the 1.20 API server has no Pod Security admission) for
    every pod created in a namespace labelled for it: a pod spec breaking it is
    refused with the reasons; kbridge's agent pod passes and works there."""
    sys.path.insert(0, CLUSTER_DIR)
    import podsecurity
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": SECURE_NS, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}))
    bad = secure_api(False)
    want = ["allowPrivilegeEscalation", "runAsNonRoot", "seccompProfile", "capabilities.drop"]
    found = podsecurity.violations(bad["spec"]["template"]["spec"])
    check(all(any(w in v for v in found) for w in want), "the checker finds %s" % found)
    check(podsecurity.violations(secure_api(True)["spec"]["template"]["spec"]) == [],
          "the checker passes the restricted spec")
    r = kubectl("run", "loose", "-n", SECURE_NS, "--image=kbridge-demo/api:1", "--restart=Never",
                check_rc=False)
    check(r.returncode != 0 and 'violates PodSecurity "restricted:latest"' in r.stderr and
          "runAsNonRoot" in r.stderr, "a pod breaking restricted is refused: %s" % r.stderr.strip()[:160])
    kubectl("apply", "-f", "-", input=json.dumps(bad))
    time.sleep(2)
    rs = json.loads(kubectl("get", "replicasets", "-n", SECURE_NS, "-o", "json").stdout)["items"]
    refused = [c for x in rs for c in x.get("status", {}).get("conditions", []) if c["type"] == "ReplicaFailure"]
    check(refused and "violates PodSecurity" in refused[0]["message"],
          "a Deployment breaking it gets no pod: ReplicaFailure %s" % (refused[0]["message"][:100] if refused else None))
    kubectl("delete", "deployment", "api-loose", "-n", SECURE_NS)
    kubectl("apply", "-f", "-", input=json.dumps(secure_api(True)))
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "api", "namespace": SECURE_NS},
        "spec": {"selector": {"app": "api"}, "ports": [{"name": "http", "port": 8080, "targetPort": 8080}]}}))
    kubectl("rollout", "status", "deployment/api", "-n", SECURE_NS, "--timeout=120s")
    reviews = lambda: open(os.path.join(info()["state_dir"], "logs", "podsecurity.log")).read().count("POST")  # noqa
    n0 = reviews()
    _, pa = backend("alice-secure")
    e = dict(os.environ, KUBECONFIG=info()["admin_kubeconfig"], XDG_RUNTIME_DIR=TMP)
    argv = [ARGS.kbridge, "connect", "-n", SECURE_NS, "--service", "api", "--local-port", str(pa),
            "--route-as", "alice", "--output", "json"] + (["--agent-image", IMAGE] if not REAL_NODE else [])
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)
    PROCS.append(p)
    while True:
        line = p.stdout.readline()
        ev = json.loads(line) if line else {"event": "exit", "stderr": p.stderr.read()[-1500:]}
        if ev["event"] in ("ready", "error", "exit"):
            break
    check(ev["event"] == "ready", "kbridge connect in the restricted namespace: ready (%s)" % ev)
    pods = json.loads(kubectl("get", "pods", "-n", SECURE_NS, "-l", "kbridge.dev/agent=api", "-o",
                              "json").stdout)["items"]
    check(pods and reviews() > n0, "the agent pod was reviewed by the checker and admitted (%d reviews)"
          % (reviews() - n0))
    check(podsecurity.violations(pods[0]["spec"]) == [], "the agent pod's spec as created meets restricted")
    a = probe([("http://api.%s.svc.cluster.local:8080/" % SECURE_NS, hdr("alice"))])[0]
    check(served_by(a) == "alice-secure", "alice's request reaches her local server through it")
    p.send_signal(signal.SIGINT)
    p.wait(60)
    check(p.returncode == 0, "disconnect: exit 0")
    kubectl("delete", "namespace", SECURE_NS, "--wait=false")

# ---- kbridge env ----

ENV_CM = {"MULTI": "line1\nline2\n", "QUOTES": "it's \"quoted\"",
          "DOLLAR": "$HOME ${HOME} $(id) $$ `id`", "BACKSLASH": "C:\\new\\table \\\\server",
          "UNICODE": "h\u00e9llo \u20ac \U0001F600 \u4e2d\u6587", "HASH": "# not a comment",
          "SPACES": "  padded  ", "EMPTY": "", "NOFORM": "it's \"x\"\n#y", "my.key": "dotted",
          "CRLF": "a\r\nb\r"}
ENV_SECRET = {"PASSWORD": "p@ss'w\"rd$1\\x", "TOKEN": "overridden by env",
              "PEM": "-----BEGIN KEY-----\nMIIB+/=\n-----END KEY-----\n"}


def envapi_objects():
    import base64
    labels = {"app": "envapi"}
    return {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "envfmt-cm", "namespace": NS}, "data": ENV_CM},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "envfmt-secret", "namespace": NS},
         "data": {k: base64.b64encode(v.encode()).decode() for k, v in ENV_SECRET.items()}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "envapi", "namespace": NS, "labels": labels},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": {"containers": [{
                      "name": "api", "image": "kbridge-demo/api:1",
                      "ports": [{"name": "http", "containerPort": 8080}],
                      "envFrom": [{"configMapRef": {"name": "envfmt-cm"}, "prefix": "CM_"},
                                  {"secretRef": {"name": "envfmt-secret"}}],
                      "env": [{"name": "PORT", "value": "8080"},
                              {"name": "PLAIN", "value": "a \"b\" 'c' \\d $x"},
                              {"name": "NS_NAME", "valueFrom": {"fieldRef": {
                                  "fieldPath": "metadata.namespace"}}},
                              {"name": "DB_PASS", "valueFrom": {"secretKeyRef": {
                                  "name": "envfmt-secret", "key": "PASSWORD"}}},
                              {"name": "GREETING", "valueFrom": {"configMapKeyRef": {
                                  "name": "envfmt-cm", "key": "MULTI"}}},
                              {"name": "TOKEN", "value": "public"}]}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "envapi", "namespace": NS},
         "spec": {"selector": labels, "ports": [{"name": "http", "port": 8080,
                                                 "targetPort": 8080}]}}]}


def envapi_expected():
    """(env {name: bytes}, secret names) as the kubelet would give them."""
    env = {"CM_" + k: v.encode() for k, v in ENV_CM.items()}
    env.update({k: v.encode() for k, v in ENV_SECRET.items()})
    env.update({"PORT": b"8080", "PLAIN": "a \"b\" 'c' \\d $x".encode(), "NS_NAME": NS.encode(),
                "DB_PASS": ENV_SECRET["PASSWORD"].encode(), "GREETING": ENV_CM["MULTI"].encode(),
                "TOKEN": b"public"})
    return env, {"PASSWORD", "PEM", "DB_PASS"}


ENV_NAMES = set(envapi_expected()[0])


def envapi_state():
    svc = normalized("service", "envapi")
    return {"service": svc, "deployment": normalized("deployment", "envapi"),
            "selector": svc["spec"].get("selector")}


def left_out(stderr, fmt):
    """The names `kbridge env` warned it left out."""
    import re
    return set(re.findall(r"--env-format %s: variable (\S+) left out" % fmt, stderr))


def read_format(fmt, path):
    """The file read back by the format's consumer: {name: bytes}."""
    sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
    import test_envfmt as tef
    with open(path, "rb") as f:
        data = f.read()
    if fmt == "json":
        doc = json.loads(data)
        return {k: v.encode() for k, v in doc["env"].items()}, doc["secrets"]
    if fmt == "sh":
        r = subprocess.run(["sh", "-c", '. "$1" && env -0', "sh", path], capture_output=True,
                           env={"PATH": os.environ["PATH"]})
        if r.returncode != 0:
            raise Fail("sh cannot source the sh format: %s" % r.stderr.decode())
        out = dict(i.split(b"=", 1) for i in r.stdout.split(b"\0") if b"=" in i)
        return {k.decode(): v for k, v in out.items() if k.decode() in ENV_NAMES}, None
    if fmt == "dotenv":
        py = tef.python_with_dotenv()
        if not py:
            raise Fail("python-dotenv is not installed (scripts/install-deps --test)")
        r = subprocess.run([py, "-c", tef.PY_DOTENV, path], capture_output=True, text=True)
        return {k: v.encode() for k, v in json.loads(r.stdout)["False"].items()}, None
    if fmt == "compose":
        import yaml
        return {k: v.replace("$$", "$").encode()
                for k, v in yaml.safe_load(data.decode())["environment"].items()}, None
    return tef.docker_read(data), None


def part_envfile():
    kubectl("apply", "-f", "-", input=json.dumps(envapi_objects()))

    def pod():
        items = json.loads(kubectl("get", "pods", "-n", NS, "-l", "app=envapi", "-o",
                                   "json").stdout)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]
    wait("a pod of envapi", pod, 60)
    before = envapi_state()
    want, secrets = envapi_expected()
    cannot = {"dotenv": {"CM_NOFORM"}, "json": set(), "sh": {"CM_my.key"}, "compose": set(),
              "docker": {"CM_MULTI", "CM_NOFORM", "CM_CRLF", "PEM", "GREETING"}}
    try:
        for fmt in ("dotenv", "json", "sh", "compose", "docker"):
            path = os.path.join(TMP, "envapi." + fmt)
            t = time.time()
            r = kb("env", "-n", NS, "--service", "envapi", "--env-format", fmt, "--env-file", path)
            dt = time.time() - t
            check(r.returncode == 0 and r.stdout == "",
                  "kbridge env --env-format %s --env-file: exit 0 in %.2f s (%s)" % (
                      fmt, dt, r.stderr.strip()[-300:]))
            check(os.stat(path).st_mode & 0o777 == 0o600, "%s: the file has mode 0600" % fmt)
            got, sec = read_format(fmt, path)
            check(left_out(r.stderr, fmt) == cannot[fmt],
                  "%s: the variables it cannot carry are left out with a warning naming each: %s"
                  % (fmt, sorted(cannot[fmt])))
            exp = {k: v for k, v in want.items() if k not in cannot[fmt]}
            diff = sorted(k for k in set(exp) | set(got) if exp.get(k) != got.get(k))
            for k in diff[:5]:
                say("%s %s: wanted %r, read %r" % (fmt, k, exp.get(k), got.get(k)))
            check(not diff, "%s read back byte for byte: %d variables" % (fmt, len(exp)))
            if fmt == "json":
                check(sorted(sec) == sorted(secrets) and len(sec) == len(set(sec)),
                      "json marks the secrets (secretKeyRef, envFrom secretRef; not a name "
                      "the env overrides): %s" % sec)
        r = kb("env", "-n", NS, "--service", "envapi")
        with open(os.path.join(TMP, "envapi.dotenv")) as f:
            check(r.returncode == 0 and r.stdout == f.read(),
                  "kbridge env with no flags prints the dotenv format on stdout")
        r = kb("env", "-n", NS, "--service", "nosuch")
        check(r.returncode == 1 and "nosuch" in r.stderr and r.stdout == "",
              "kbridge env of an unknown Service: exit 1, the error names it (%s)" %
              r.stderr.strip())
        r = kb("env", "-n", NS, "--service", "manual")
        check(r.returncode == 1 and "no selector" in r.stderr,
              "kbridge env of a Service without selector: exit 1 (%s)" % r.stderr.strip())
        check(envapi_state() == before and not kbridge_objects(),
              "kbridge env changed nothing: no agent, selector %s and Deployment unchanged"
              % before["selector"])
        # While api is taken over its selector names the agent: env still gives the
        # workload's (the takeover record names it).
        api_env = kb("env", "-n", NS, "--service", "api", "--env-format", "json")
        check(api_env.returncode == 0, "kbridge env of api: exit 0")
        _, pa = backend("env-local")
        s = Session("envkey", pa)
        s.ready()
        r = kb("env", "-n", NS, "--service", "api", "--env-format", "json")
        check(r.returncode == 0 and json.loads(r.stdout) == json.loads(api_env.stdout) and
              "demo-api-key" in r.stdout,
              "kbridge env of api while taken over: the same environment (its workload's)")
        ev = s.stop()
        check(ev["restored"] is True, "the session leaves: restored")
    finally:
        kubectl("delete", "-f", "-", "--wait=false", input=json.dumps(envapi_objects()),
                check_rc=False)


# ---- volumes ----

VOL_READER = r"""
import base64, json, os, stat, sys
root = os.environ["KBRIDGE_VOLUMES"]
out = {"root": root, "root_mode": stat.S_IMODE(os.stat(root).st_mode), "files": {}, "dirs": {}}
for d, dirs, files in os.walk(root):
    for n in dirs:
        p = os.path.join(d, n)
        out["dirs"][os.path.relpath(p, root)] = stat.S_IMODE(os.lstat(p).st_mode)
    for n in files:
        p = os.path.join(d, n)
        with open(p, "rb") as f:
            data = f.read()
        out["files"][os.path.relpath(p, root)] = {
            "mode": stat.S_IMODE(os.lstat(p).st_mode), "data": base64.b64encode(data).decode()}
with open(sys.argv[1], "w") as f:
    json.dump(out, f)
"""

VOL_OBJECTS = [
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "vol-config", "namespace": NS},
     "data": {"app.conf": "port=8080\nname=\"vol\" $HOME\n", "level": "debug", "other": "x"},
     "binaryData": {"blob": "AAEC/w=="}},
    {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "vol-secret", "namespace": NS},
     "data": {"password": "czNjcjN0CnR3byBsaW5lcw==", "user": "YWRtaW4="}},
    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "vol-sa", "namespace": NS}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "vol", "namespace": NS},
     "spec": {"selector": {"app": "vol"}, "ports": [{"name": "http", "port": 8080,
                                                     "targetPort": 8080}]}},
    {"apiVersion": "apps/v1", "kind": "Deployment",
     "metadata": {"name": "vol", "namespace": NS, "labels": {"app": "vol"}},
     "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "vol"}},
              "template": {
                  "metadata": {"labels": {"app": "vol", "tier": "web"}},
                  "spec": {
                      "serviceAccountName": "vol-sa",
                      "containers": [{
                          "name": "vol", "image": "kbridge-demo/echo:1",
                          "env": [{"name": "PORT", "value": "8080"}],
                          "ports": [{"name": "http", "containerPort": 8080}],
                          "volumeMounts": [
                              {"name": "config", "mountPath": "/etc/vol/config"},
                              {"name": "config", "mountPath": "/etc/app.conf",
                               "subPath": "conf/app.conf"},
                              {"name": "secret", "mountPath": "/etc/vol/secret"},
                              {"name": "pod", "mountPath": "/etc/vol/pod"},
                              {"name": "all", "mountPath": "/var/run/secrets/vol"},
                              {"name": "cache", "mountPath": "/cache"},
                              {"name": "host", "mountPath": "/host"}]}],
                      "volumes": [
                          {"name": "config", "configMap": {
                              "name": "vol-config", "defaultMode": 0o604,
                              "items": [{"key": "app.conf", "path": "conf/app.conf",
                                         "mode": 0o640},
                                        {"key": "level", "path": "level"},
                                        {"key": "blob", "path": "bin/blob"}]}},
                          {"name": "secret", "secret": {"secretName": "vol-secret"}},
                          {"name": "pod", "downwardAPI": {"items": [
                              {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                              {"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}},
                              {"path": "tier", "mode": 0o400,
                               "fieldRef": {"fieldPath": "metadata.labels['tier']"}}]}},
                          {"name": "all", "projected": {"defaultMode": 0o644, "sources": [
                              {"configMap": {"name": "vol-config",
                                             "items": [{"key": "level", "path": "cm/level"}]}},
                              {"secret": {"name": "vol-secret",
                                          "items": [{"key": "user", "path": "user"}]}},
                              {"serviceAccountToken": {"audience": "vol-test",
                                                       "expirationSeconds": 600,
                                                       "path": "token"}}]}},
                          {"name": "cache", "emptyDir": {}},
                          {"name": "host", "hostPath": {"path": "/tmp"}}]}}}},
]


def vol_snapshot():
    return {"service": normalized("service", "vol"), "deployment": normalized("deployment", "vol")}


def vol_run(port, key, out, *extra, env=None):
    """connect to vol with a command that lists $KBRIDGE_VOLUMES into out; returns the ready
    event, every event and the exit status once the command ended the session."""
    s = Session(key, port, "--service", "vol", *extra, "--", sys.executable, "-c", VOL_READER,
                out, env=env)
    ready = s.ready()
    ev = s.until(("disconnected",), 90)
    s.p.wait(30)
    if not (ev and ev.get("restored") is True and s.p.returncode == 0):
        say("connect stderr: %s" % s.stderr()[-3000:])
    check(ev and ev.get("restored") is True and s.p.returncode == 0,
          "%s: the command's exit ended the session and restored (exit %d)" % (key, s.p.returncode))
    with open(out) as f:
        return ready, s.events, json.load(f)


def vol_setup():
    """The vol Deployment and its objects; returns its ready pod."""
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                   "items": VOL_OBJECTS}))

    def vol_pod():
        pods = json.loads(kubectl("get", "pods", "-n", NS, "-l", "app=vol", "-o",
                                  "json").stdout)["items"]
        pods = [p for p in pods if not p["metadata"].get("deletionTimestamp") and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p.get("status", {}).get("conditions", []))]
        return pods[0] if len(pods) == 1 else None
    return wait("the vol pod to be ready", vol_pod, 60)


def vol_teardown():
    kubectl("delete", "-n", NS, "deployment/vol", "service/vol", "configmap/vol-config",
            "secret/vol-secret", "serviceaccount/vol-sa", check_rc=False)


def vol_grant_token(grant):
    """The e2e developer may (or no longer may) ask for vol-sa's tokens: create on
    serviceaccounts/token for that one account, as docs/rbac.md shows."""
    if not grant:
        kubectl("delete", "-n", NS, "role,rolebinding", "vol-token", check_rc=False)
        return
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "vol-token", "namespace": NS},
         "rules": [{"apiGroups": [""], "resources": ["serviceaccounts/token"],
                    "resourceNames": ["vol-sa"], "verbs": ["create"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "vol-token", "namespace": NS},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": "vol-token"},
         "subjects": [{"kind": "ServiceAccount", "name": "kbridge-e2e-dev",
                       "namespace": NS}]}]}))


def token_review(tok, audience):
    """(authenticated, username, audiences) the API server says of tok."""
    review = json.loads(kubectl("create", "-o", "json", "-f", "-", input=json.dumps({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": tok, "audiences": [audience]}})).stdout)
    st = review.get("status", {})
    return st.get("authenticated"), st.get("user", {}).get("username"), st.get("audiences")


def part_volumes():
    import base64
    pod = vol_setup()
    before = vol_snapshot()
    cm = json.loads(kubectl("get", "configmap", "vol-config", "-n", NS, "-o", "json").stdout)
    sec = json.loads(kubectl("get", "secret", "vol-secret", "-n", NS, "-o", "json").stdout)
    cmv = {k: v.encode() for k, v in cm["data"].items()}
    cmv.update({k: base64.b64decode(v) for k, v in cm["binaryData"].items()})
    secv = {k: base64.b64decode(v) for k, v in sec["data"].items()}
    labels = "\n".join('%s="%s"' % (k, v) for k, v in sorted(pod["metadata"]["labels"].items()))
    want = {  # path below the volumes directory -> (bytes, mode)
        "etc/vol/config/conf/app.conf": (cmv["app.conf"], 0o640),
        "etc/vol/config/level": (cmv["level"], 0o604),
        "etc/vol/config/bin/blob": (cmv["blob"], 0o604),
        "etc/app.conf": (cmv["app.conf"], 0o640),
        "etc/vol/secret/password": (secv["password"], 0o600),
        "etc/vol/secret/user": (secv["user"], 0o600),
        "etc/vol/pod/labels": (labels.encode(), 0o644),
        "etc/vol/pod/ns": (NS.encode(), 0o644),
        "etc/vol/pod/tier": (b"web", 0o400),
        "var/run/secrets/vol/cm/level": (cmv["level"], 0o644),
        "var/run/secrets/vol/user": (secv["user"], 0o600),
    }

    def compare(got, who):
        files = {k: (base64.b64decode(v["data"]), v["mode"]) for k, v in got["files"].items()}
        for path, (data, mode) in sorted(want.items()):
            check(path in files and files[path][0] == data and files[path][1] == mode,
                  "%s: %s equals the cluster's object byte for byte (%d bytes), mode %o" % (
                      who, path, len(data), mode))
        extra = set(files) - set(want) - {"var/run/secrets/vol/token"}
        check(not extra, "%s: no other file (%s)" % (who, sorted(extra)))
        check(got["dirs"].get("cache") == 0o700 and not any(
            k.startswith("cache/") for k in list(files) + list(got["dirs"])),
              "%s: emptyDir cache is an empty 0700 directory" % who)
        check(all(m == 0o700 for m in got["dirs"].values()),
              "%s: every directory is 0700 (%s)" % (who, sorted(set(got["dirs"].values()))))
        check("host" not in got["dirs"] and not any(k.startswith("host/") for k in files),
              "%s: the hostPath volume is not materialised" % who)
        return files

    def listed(events, who):
        steps = [(e.get("step"), e.get("message", "")) for e in events
                 if e.get("event") == "progress"]
        host = [m for st, m in steps if st == "volume-skipped" and "volume host (hostPath)" in m]
        check(host and "node" in host[0], "%s: the hostPath volume is listed with its reason: %s"
              % (who, host))
        return steps

    # 1. the developer may not ask for tokens: everything else, the refusal listed
    port = free_port()
    tmpdir = os.path.join(TMP, "voltmp")
    os.makedirs(tmpdir, exist_ok=True)
    ready, events, got = vol_run(port, "vol1", os.path.join(TMP, "vol1.json"),
                                 env={"TMPDIR": tmpdir})
    root = ready["env"].get("KBRIDGE_VOLUMES", "")
    check(root.startswith(tmpdir + "/kbridge-volumes-") and got["root"] == root and
          got["root_mode"] == 0o700,
          "KBRIDGE_VOLUMES in the ready event and the command's env: a 0700 directory in $TMPDIR "
          "(%s)" % root)
    files = compare(got, "no token rights")
    check("var/run/secrets/vol/token" not in files, "no token file without the right to ask")
    steps = listed(events, "no token rights")
    refused = [m for st, m in steps if st == "volume-skipped" and "403" in m and "token" in m]
    check(refused, "the refused token is listed: %s" % refused[:1])
    check(not os.path.exists(root) and os.listdir(tmpdir) == [],
          "the temporary volumes directory is gone after exit")
    wait("vol's Service and Deployment as before, no kbridge object left",
         lambda: vol_snapshot() == before and not kbridge_objects(), 30)
    check(True, "vol: Service and Deployment as before, no kbridge object left")

    # 2. with create on serviceaccounts/token for the pod's account: the token, checked by
    # the API server (TokenReview) for its audience; --volumes-dir is kept, --env-file names it
    vol_grant_token(True)
    vdir = os.path.join(TMP, "vols")
    envf = os.path.join(TMP, "vol.env")
    try:
        ready, events, got = vol_run(free_port(), "vol2", os.path.join(TMP, "vol2.json"),
                                     "--volumes-dir", vdir, "--env-file", envf,
                                     "--env-format", "json")
    finally:
        vol_grant_token(False)
    check(got["root"] == os.path.realpath(vdir) and ready["env"]["KBRIDGE_VOLUMES"] == got["root"],
          "--volumes-dir: KBRIDGE_VOLUMES names it")
    with open(envf) as f:
        doc = json.load(f)
    check(doc["env"].get("KBRIDGE_VOLUMES") == got["root"] and
          "KBRIDGE_VOLUMES" not in doc["secrets"],
          "--env-file (json) has KBRIDGE_VOLUMES, not marked secret")
    files = compare(got, "token rights")
    tok = files.get("var/run/secrets/vol/token")
    check(tok is not None and tok[1] == 0o600, "the token file is there, mode 0600")
    auth, user, auds = token_review(tok[0].decode(), "vol-test")
    check(auth is True and user == "system:serviceaccount:%s:vol-sa" % NS and auds == ["vol-test"],
          "the API server accepts the token for audience vol-test as %s" % user)
    steps = listed(events, "token rights")
    sched = [m for st_, m in steps if st_ == "volume-token"]
    import re
    m = re.search(r"asked again in (\d+) s", sched[0]) if sched else None
    check(m and 470 <= int(m.group(1)) <= 480,
          "the token is asked again at 80%% of its 600 s: %s" % sched)
    check(os.path.isdir(vdir) and os.path.exists(os.path.join(vdir, "etc/vol/secret/password")),
          "--volumes-dir is kept after exit")
    wait("vol's Service and Deployment as before, no kbridge object left",
         lambda: vol_snapshot() == before and not kbridge_objects(), 30)
    check(True, "vol: Service and Deployment as before, no kbridge object left")
    vol_teardown()


def part_volumerefresh():
    vol_setup()
    before = vol_snapshot()
    vol_grant_token(True)
    vdir = os.path.join(TMP, "vols-refresh")
    path = os.path.join(vdir, "var/run/secrets/vol/token")
    try:
        s = Session("volr", free_port(), "--service", "vol", "--volumes-dir", vdir)
        s.ready()
        with open(path) as f:
            tok1 = f.read()
        ino1 = os.stat(path).st_ino
        t = time.time()
        # 80% of expirationSeconds 600, on the re-sync guard's 1 s tick
        while True:
            ev = s.next_event(600)
            if ev is None or (ev.get("step") == "volume-token" and "refreshed" in ev["message"]):
                break
        waited = time.time() - t
        check(ev is not None, "the token was refreshed while connected: %s (%.0f s after ready)"
              % (ev and ev["message"], waited))
        check(470 <= waited <= 490, "the refresh came at 80%% of the token's 600 s (%.0f s)"
              % waited)
        with open(path) as f:
            tok2 = f.read()
        st = os.stat(path)
        check(tok2 != tok1 and st.st_ino != ino1 and (st.st_mode & 0o777) == 0o600,
              "the token file holds a new token, replaced whole (a new inode), mode 0600")
        auth, user, _ = token_review(tok2, "vol-test")
        check(auth is True and user == "system:serviceaccount:%s:vol-sa" % NS,
              "the API server accepts the new token")
        ev = s.stop()
        check(ev["restored"] is True, "volr leaves: restored")
    finally:
        vol_grant_token(False)
    wait("vol's Service and Deployment as before, no kbridge object left",
         lambda: vol_snapshot() == before and not kbridge_objects(), 30)
    check(True, "vol: Service and Deployment as before, no kbridge object left")
    vol_teardown()


PARTS = {"badinput": part_badinput, "routing": part_routing, "replace": part_replace,
         "command": part_command, "restore": part_restore, "agentpod": part_agentpod,
         "lease": part_lease, "stale": part_stale, "direct": part_direct, "named": part_named,
         "forward": part_forward, "ingress": part_ingress, "identity": part_identity,
         "envfile": part_envfile, "podsecurity": part_podsecurity, "volumes": part_volumes,
         "volumerefresh": part_volumerefresh}
LONG_PARTS = ("volumerefresh",)  # only when named (ctest -L long)


def run_main(parts_table, cleanup, default_parts=None):
    """The main of a cluster-e2e script that reuses this fixture: parse
    --kbridge/--agent/--signer and PART..., skip (77) without root or kubectl,
    bring the cluster up, run the parts in order, and whatever happened kill
    what was started, call cleanup() (restores), take the cluster down (unless
    KBRIDGE_E2E_KEEP=1) and remove TMP. Returns the exit status."""
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--kbridge", required=True)
    ap.add_argument("--agent", required=True)
    ap.add_argument("--signer", help="kbridge-signer (default: beside the agent's build dir)")
    ap.add_argument("parts", nargs="*")
    ARGS = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("kubectl"):
        print("skipped: needs root and kubectl")
        return 77
    for a in ("kbridge", "agent", "signer"):
        if getattr(ARGS, a):
            setattr(ARGS, a, os.path.abspath(getattr(ARGS, a)))
    parts = ARGS.parts or default_parts or list(parts_table)
    rc = 0
    try:
        cluster_up()
        for p in parts:
            say("== %s" % p)
            parts_table[p]()
    except Fail as e:
        say("FAIL: %s" % e)
        rc = 1
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.kill()
        try:
            if info():
                cleanup()
        except Exception as e:
            say("cleanup failed: %s" % e)
        if os.environ.get("KBRIDGE_E2E_KEEP") != "1" and info():
            subprocess.run([os.path.join(CLUSTER_DIR, "down"), "--name", NAME],
                           capture_output=True)
        shutil.rmtree(TMP, ignore_errors=True)
    say("PASS" if rc == 0 else "FAILED")
    return rc


def main():
    def cleanup():
        kb("restore", "-n", NS, "--service", "api", kubeconfig=info()["admin_kubeconfig"])
    return run_main(PARTS, cleanup, [p for p in PARTS if p not in LONG_PARTS])


if __name__ == "__main__":
    sys.exit(main())
