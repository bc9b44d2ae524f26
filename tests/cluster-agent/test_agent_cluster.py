#!/usr/bin/env python3
"""kbridge-agent in a real cluster: routing, the lease, and putting the
cluster back by itself (ctest label `cluster`, see CMakeLists.txt here).

    test_agent_cluster.py [--cluster NAME] [--agent BIN] [--kbridge BIN] [SCENARIO...]

Scenarios (default: all, in this order):
    podspec   the example Deployment's pod spec meets Pod Security "restricted"
              (field by field: the 1.20 API server has no Pod Security admission)
    killed    route by header to a developer; kill -9 the developer's proxy; the
              agent restores within lease (10 s) + 10 s
    clean     the developer's proxy stops cleanly (GOAWAY); restored after the
              grace (3 s), well before the lease (30 s)
    conflict  someone changes the Service's selector during the takeover; the
              agent's restore leaves it, reports the conflict, removes the rest
    reconnect kill -9, a new proxy within the lease: no restore; then a clean
              leave restores
    exclusive the workload scaled to 0 (replicas in an annotation), all traffic
              to the developer; kill -9: restored, replicas back to 2
    forbidden the agent's RoleBinding deleted: the restore is refused (403),
              reported in /healthz and /metrics, retried; RoleBinding back:
              restored

The takeover is made by hand here, as `kbridge connect` would (takeover.h):
Secret, ServiceAccount/Role/RoleBinding (deploy/rbac/agent-role.yaml, as is),
the agent Deployment (deploy/agent-deployment.example.yaml with a shorter
lease), the shadow Service api-kbridge-origin, then the annotations and the
selector switch on Service api in namespace shop (deploy/demo/shop.yaml).

The developer: `kbridge proxy` on this machine (the "laptop" side, root
netns) with a local HTTP server, reaching the agent's tunnel port through a
NodePort Service on the node address (a direct carrier, as for an agent
exposed by a NodePort; the test cluster's pods are otherwise unreachable from
here). That NodePort Service is the test's own (label kbridge-test=carrier),
not part of a takeover, and is deleted by the test.

Needs root, kubectl and a running test cluster (the `kbcluster` fixture of
tests/cluster, name $KBRIDGE_TEST_CLUSTER, default ctest); exits 77 otherwise.
"""
import argparse
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "cluster"))
import kbcluster as kc  # noqa: E402

SKIP = 77
NS = "shop"
SVC = "api"
AGENT = "kbridge-agent-api"
SECRET = "kbridge-agent-api-tls"
ORIGIN = "api-kbridge-origin"
CARRIER = "kbridge-test-tunnel"
ORIGINAL_SELECTOR = {"app": "api"}
AGENT_SELECTOR = {"kbridge.dev/agent": "api"}
KEY = "alice"
T0 = time.time()
FIGURES = []


def say(msg):
    print("[%6.1fs] %s" % (time.time() - T0, msg), flush=True)


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)
    say("ok: " + msg)


class Env:
    pass


E = Env()


def kubectl(*args, input=None, check_rc=True, timeout=60):
    p = subprocess.run(["kubectl", "--kubeconfig", E.kubeconfig] + list(args), input=input,
                       capture_output=True, text=True, timeout=timeout)
    if check_rc and p.returncode != 0:
        raise Fail("kubectl %s: %s" % (" ".join(args), p.stderr.strip()))
    return p


def kget(*args):
    p = kubectl("get", "-n", NS, "-o", "json", *args, check_rc=False)
    if p.returncode != 0:
        if "NotFound" in p.stderr or "not found" in p.stderr:
            return None
        raise Fail("kubectl get %s: %s" % (" ".join(args), p.stderr.strip()))
    return json.loads(p.stdout)


def kcreate(obj):
    kubectl("create", "-n", NS, "-f", "-", input=json.dumps(obj))


def managed_labels():
    return {"app.kubernetes.io/managed-by": "kbridge", "kbridge.dev/service": SVC}


def pod_exec(pod, *cmd, timeout=30):
    return subprocess.run([os.path.join(REPO, "tests", "cluster", "pod-exec"), "--name", E.cluster,
                           NS, pod, "--"] + list(cmd), capture_output=True, text=True,
                          timeout=timeout)


GET_SNIPPET = r"""
import sys, urllib.request, json
req = urllib.request.Request(sys.argv[1], headers=json.loads(sys.argv[2]))
try:
    with urllib.request.urlopen(req, timeout=8) as r:
        print(r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode())
except Exception as e:
    print(0); print(repr(e))
"""


def http_from_client(url, headers=None):
    """GET url from inside the frontend pod: (status, body)."""
    p = pod_exec(E.client_pod, "python3", "-c", GET_SNIPPET, url, json.dumps(headers or {}))
    lines = p.stdout.split("\n", 1)
    try:
        return int(lines[0]), (lines[1] if len(lines) > 1 else "")
    except ValueError:
        return 0, p.stdout + p.stderr


def wait_for(what, fn, timeout, interval=0.25):
    end = time.time() + timeout
    last = None
    while time.time() < end:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise Fail("%s: not within %.0f s (last: %r)" % (what, timeout, last))


# --- the developer's side: a local server and kbridge proxy ---------------------


class LocalServer:
    """The developer's local copy of the api: answers who it is."""

    def __init__(self):
        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                body = json.dumps({"service": "api", "pod": "LOCAL-" + KEY, "path": self.path,
                                   "route": self.headers.get("kubernetes-route-as")}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


def _die_with_parent():
    """In the child: SIGKILL when this test dies, so a failed scenario never leaves
    a developer proxy running."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Developer:
    """kbridge proxy for KEY, through the NodePort carrier."""

    def __init__(self, local_port):
        self.log = open(os.path.join(E.tmp, "proxy-%d.log" % int(time.time() * 1000)), "w+")
        self.p = subprocess.Popen(
            [E.kbridge, "proxy", "--agent", "%s:%d" % (E.node_ip, E.node_port), "--tls-dir",
             E.certs, "--route-as", KEY, "--local-port", str(local_port)],
            stdout=subprocess.PIPE, stderr=self.log, text=True, preexec_fn=_die_with_parent)
        end = time.time() + 20
        while time.time() < end:
            line = self.p.stdout.readline()
            if not line:
                break
            if line.startswith("ready:"):
                say("developer proxy: " + line.strip())
                return
        self.p.kill()
        self.log.seek(0)
        raise Fail("kbridge proxy did not get ready: %s" % self.log.read()[-2000:])

    def kill9(self):
        self.p.send_signal(signal.SIGKILL)
        self.p.wait()

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise Fail("kbridge proxy did not stop on SIGTERM")


# --- the takeover, by hand -----------------------------------------------------------


class AgentLog:
    """The agent container's log, as the test node writes it
    (<state dir>/logs/NS_POD_CONTAINER.log, kept after the pod is gone, unlike
    what `kubectl logs -f` manages to stream before the pod is deleted)."""

    def __init__(self, pod):
        self.path = os.path.join(E.state_dir, "logs", "%s_%s_agent.log" % (NS, pod))

    @property
    def lines(self):
        try:
            with open(self.path, errors="replace") as f:
                return f.read().splitlines()
        except OSError:
            return []

    def text(self):
        return "\n".join(self.lines)

    def close(self):
        pass


def agent_deployment(lease, grace, exclusive=False):
    """The example Deployment, lease and grace set for the test."""
    p = kubectl("create", "--dry-run=client", "-o", "json", "-f",
                os.path.join(REPO, "deploy", "agent-deployment.example.yaml"))
    dep = json.loads(p.stdout)
    dep["spec"]["replicas"] = 1  # these tests follow one agent pod's lease
    c = dep["spec"]["template"]["spec"]["containers"][0]
    args = [a for a in c["args"] if not a.startswith(("--lease-seconds", "--grace-seconds"))]
    c["args"] = args + ["--lease-seconds=%d" % lease, "--grace-seconds=%d" % grace,
                        "--log-level=info"] + (["--exclusive"] if exclusive else [])
    return dep


def take_over(lease, grace, exclusive=False):
    """Do what kbridge connect does, in its order; return the agent pod's name.
    Routing mode: a shadow Service; exclusive: the workload scaled to 0, its
    replicas kept in an annotation."""
    say("take over %s/%s by hand (%s mode, lease %d s, grace %d s)" %
        (NS, SVC, "exclusive" if exclusive else "routing", lease, grace))
    files = {}
    for f in ("ca.crt", "ca.key", "agent.crt", "agent.key"):
        with open(os.path.join(E.certs, f), "rb") as fh:
            files[f] = base64.b64encode(fh.read()).decode()
    kcreate({"apiVersion": "v1", "kind": "Secret",
             "metadata": {"name": SECRET, "labels": managed_labels()}, "data": files})
    kubectl("apply", "-f", os.path.join(REPO, "deploy", "rbac", "agent-role.yaml"))
    for k in ("serviceaccount", "role", "rolebinding"):
        kubectl("label", "-n", NS, "--overwrite", k, AGENT, "app.kubernetes.io/managed-by=kbridge")
    if exclusive:
        replicas = kget("deployment", "api")["spec"]["replicas"]
        kubectl("patch", "-n", NS, "deployment", "api", "--type", "merge", "-p", json.dumps(
            {"metadata": {"annotations": {"kbridge.dev/original-replicas": str(replicas)}},
             "spec": {"replicas": 0}}))
    else:
        kcreate({"apiVersion": "v1", "kind": "Service",
                 "metadata": {"name": ORIGIN, "labels": managed_labels()},
                 "spec": {"selector": ORIGINAL_SELECTOR,
                          "ports": [{"name": "http", "port": 8080, "targetPort": 8080}]}})
    kcreate(agent_deployment(lease, grace, exclusive))
    dep = kget("deployment", AGENT)
    owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": AGENT,
             "uid": dep["metadata"]["uid"]}
    for k in ("serviceaccount", "role", "rolebinding"):
        kubectl("patch", "-n", NS, k, AGENT, "--type", "merge", "-p",
                json.dumps({"metadata": {"ownerReferences": [owner]}}))
    # the test's carrier to the tunnel port (not part of a takeover)
    kcreate({"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": CARRIER, "labels": {"kbridge-test": "carrier"}},
             "spec": {"type": "NodePort", "selector": AGENT_SELECTOR,
                      "ports": [{"name": "tunnel", "port": 7443, "targetPort": 7443}]}})
    E.node_port = kget("service", CARRIER)["spec"]["ports"][0]["nodePort"]
    t = time.time()
    kubectl("wait", "-n", NS, "--for=condition=Ready", "pod", "-l", "kbridge.dev/agent=api",
            "--timeout=90s", timeout=100)
    pods = [p for p in kget("pods", "-l", "kbridge.dev/agent=api")["items"]
            if not p["metadata"].get("deletionTimestamp")]
    pod = pods[0]["metadata"]["name"]
    say("agent pod %s Ready after %.1f s" % (pod, time.time() - t))
    patch = {"metadata": {"annotations": {
        "kbridge.dev/original-selector": json.dumps(ORIGINAL_SELECTOR, separators=(",", ":")),
        "kbridge.dev/agent-selector": json.dumps(AGENT_SELECTOR, separators=(",", ":")),
        "kbridge.dev/takeover": json.dumps({"mode": "exclusive" if exclusive else "routing",
                                            "since": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "by": "test_agent_cluster", "agent": AGENT,
            "workload": {"kind": "Deployment", "name": "api"}})}},
        "spec": {"selector": {"app": None, "kbridge.dev/agent": "api"}}}
    kubectl("patch", "-n", NS, "service", SVC, "--type", "merge", "-p", json.dumps(patch))
    return pod


def leftovers():
    p = kubectl("get", "-n", NS, "--ignore-not-found", "-o", "name",
                "service/" + ORIGIN, "secret/" + SECRET, "deployment/" + AGENT,
                "serviceaccount/" + AGENT, "role/" + AGENT, "rolebinding/" + AGENT,
                check_rc=False)
    return p.stdout.split()


def kbridge_annotations(svc):
    return [k for k in (svc["metadata"].get("annotations") or {}) if k.startswith("kbridge.dev/")]


def wait_restored(t0, limit, expect_selector):
    """Poll until the Service has expect_selector and no kbridge annotation, and
    every kbridge object is gone. Returns (seconds to selector, seconds to all)."""
    t_sel = None
    while time.time() - t0 < limit:
        svc = kget("service", SVC)
        if t_sel is None and svc["spec"].get("selector") == expect_selector and \
                not kbridge_annotations(svc):
            t_sel = time.time() - t0
            say("Service selector is %s again, annotations gone, after %.1f s" %
                (json.dumps(expect_selector), t_sel))
        if t_sel is not None:
            left = leftovers()
            if not left:
                t_all = time.time() - t0
                say("every kbridge object gone after %.1f s" % t_all)
                return t_sel, t_all
        time.sleep(0.25)
    svc = kget("service", SVC)
    raise Fail("not restored within %.0f s: selector %s, annotations %s, left %s" %
               (limit, svc["spec"].get("selector"), kbridge_annotations(svc), leftovers()))


def cleanup():
    """Leave shop as deploy/demo has it, whatever a failed scenario left."""
    kubectl("delete", "-n", NS, "--ignore-not-found", "--wait=false", "service/" + CARRIER,
            "service/" + ORIGIN, "secret/" + SECRET, "deployment/" + AGENT,
            "serviceaccount/" + AGENT, "role/" + AGENT, "rolebinding/" + AGENT, check_rc=False)
    svc = kget("service", SVC)
    if svc:
        ann = {k: None for k in kbridge_annotations(svc)}
        sel = {k: None for k in svc["spec"].get("selector") or {}}
        sel.update(ORIGINAL_SELECTOR)
        kubectl("patch", "-n", NS, "service", SVC, "--type", "merge", "-p",
                json.dumps({"metadata": {"annotations": ann or None}, "spec": {"selector": sel}}),
                check_rc=False)
    dep = kget("deployment", "api")
    ann = (dep["metadata"].get("annotations") or {}).get("kbridge.dev/original-replicas")
    if ann or dep["spec"]["replicas"] != 2:
        kubectl("patch", "-n", NS, "deployment", "api", "--type", "merge", "-p", json.dumps(
            {"metadata": {"annotations": {"kbridge.dev/original-replicas": None}},
             "spec": {"replicas": 2}}), check_rc=False)
    end = time.time() + 60
    while time.time() < end and kget("pods", "-l", "kbridge.dev/agent=api")["items"]:
        time.sleep(0.5)
    kubectl("wait", "-n", NS, "--for=condition=Ready", "pod", "-l", "app=api", "--timeout=60s",
            timeout=70, check_rc=False)


def routed_and_fallback():
    """From the client pod: alice's header reaches the local server, no header
    reaches the real api pods (through the agent and the shadow Service)."""
    url = "http://api.shop.svc.cluster.local:8080/hello"

    def routed():
        st, body = http_from_client(url, {"kubernetes-route-as": KEY})
        return (st, body) if st == 200 and "LOCAL-" + KEY in body else None

    st, body = wait_for("a request with alice's header reaches the developer", routed, 20)
    check(True, "header kubernetes-route-as: %s -> developer's local server (%s)" %
          (KEY, body.strip()[:80]))
    st, body = http_from_client(url, {"baggage": "kbridge-route=%s" % KEY})
    check(st == 200 and "LOCAL-" + KEY in body, "baggage kbridge-route=%s -> developer" % KEY)
    st, body = http_from_client(url)
    check(st == 200 and '"pod": "api-' in body and "LOCAL" not in body,
          "no route header -> the original api pods through %s (%s)" % (ORIGIN, body[:60]))
    st, body = http_from_client(url, {"kubernetes-route-as": "bob"})
    check(st == 200 and "LOCAL" not in body, "key nobody holds (bob) -> the original pods")


def agent_health(pod):
    ip = kget("pod", pod)["status"]["podIP"]
    st, body = http_from_client("http://%s:9090/healthz" % ip)
    if st != 200:
        return None
    return json.loads(body.split("\n", 1)[1])


def agent_metrics(pod):
    ip = kget("pod", pod)["status"]["podIP"]
    return http_from_client("http://%s:9090/metrics" % ip)[1]


# --- scenarios -----------------------------------------------------------------------


def scenario_podspec():
    dep = agent_deployment(60, 5)
    spec = dep["spec"]["template"]["spec"]
    psc = spec.get("securityContext", {})
    check(not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")),
          "no host namespaces")
    for v in spec.get("volumes", []):
        kinds = set(v) - {"name"}
        check(kinds <= {"secret", "configMap", "projected", "emptyDir", "downwardAPI"},
              "volume %s is of an allowed type (%s)" % (v["name"], ",".join(kinds)))
        items = [i["key"] for i in v.get("secret", {}).get("items", [])]
        check("ca.key" not in items, "the CA key is not mounted into the agent")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
          "pod seccompProfile RuntimeDefault")
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        check(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false")
        check(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities drop ALL")
        check(set(sc.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"},
              "no capability added beyond NET_BIND_SERVICE")
        check(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, "runAsNonRoot")
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        check(uid not in (None, 0), "runAsUser %s (not root)" % uid)
        check(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
        check(not any(p.get("hostPort") for p in c.get("ports", [])), "no hostPort")


def scenario_killed():
    local = LocalServer()
    pod = take_over(lease=10, grace=3)
    log = AgentLog(pod)
    try:
        dev = Developer(local.port)
        routed_and_fallback()
        h = agent_health(pod)
        check(h and h["lifecycle"]["state"] == "connected" and h["lifecycle"]["developers"] == 1,
              "healthz: lifecycle state connected, 1 developer (%s)" % json.dumps(h["lifecycle"]))
        m = agent_metrics(pod)
        check("kbridge_developers 1" in m and "kbridge_lease_seconds_remaining 10.0" in m,
              "metrics: kbridge_developers 1, kbridge_lease_seconds_remaining 10.0")
        t0 = time.time()
        dev.kill9()
        say("kill -9 of the developer's proxy")
        time.sleep(1.5)
        h = agent_health(pod)
        check(h and h["lifecycle"]["state"] == "waiting" and
              h["lifecycle"]["seconds_remaining"] <= 10,
              "healthz after the kill: waiting, %.1f s of the lease left" %
              h["lifecycle"]["seconds_remaining"])
        t_sel, t_all = wait_restored(t0, 10 + 10 + 30, ORIGINAL_SELECTOR)
        check(t_sel <= 10 + 10, "selector restored %.1f s after kill -9 (lease 10 s + 10 s)" % t_sel)
        FIGURES.append(("kill -9, lease 10 s: selector back", t_sel))
        FIGURES.append(("kill -9, lease 10 s: every kbridge object gone", t_all))
        st, body = http_from_client("http://api.shop.svc.cluster.local:8080/",
                                    {"kubernetes-route-as": KEY})
        check(st == 200 and '"pod": "api-' in body, "after the restore the api pods answer again")
        check("lease expired" in log.text(), "agent log says why: lease expired")
    finally:
        log.close()
        local.close()
        say("agent log:\n  " + "\n  ".join(log.lines[-25:]))


def scenario_clean():
    local = LocalServer()
    pod = take_over(lease=30, grace=3)
    log = AgentLog(pod)
    try:
        dev = Developer(local.port)
        routed_and_fallback()
        t0 = time.time()
        dev.stop()
        say("developer's proxy stopped with SIGTERM (GOAWAY)")
        t_sel, t_all = wait_restored(t0, 30, ORIGINAL_SELECTOR)
        check(t_sel < 3 + 5, "restored %.1f s after a clean leave (grace 3 s; lease 30 s)" % t_sel)
        FIGURES.append(("clean leave, grace 3 s: selector back", t_sel))
        FIGURES.append(("clean leave, grace 3 s: every kbridge object gone", t_all))
        check("left (peer closed the tunnel" in log.text(),
              "agent log: the last developer left cleanly")
    finally:
        log.close()
        local.close()
        say("agent log:\n  " + "\n  ".join(log.lines[-20:]))


def scenario_conflict():
    local = LocalServer()
    pod = take_over(lease=30, grace=3)
    log = AgentLog(pod)
    theirs = {"app": "api", "owner": "someone-else"}
    try:
        dev = Developer(local.port)
        kubectl("patch", "-n", NS, "service", SVC, "--type", "json", "-p",
                json.dumps([{"op": "replace", "path": "/spec/selector", "value": theirs}]))
        say("someone else set the selector to %s" % json.dumps(theirs))
        t0 = time.time()
        dev.stop()
        t_sel, t_all = wait_restored(t0, 30, theirs)
        FIGURES.append(("conflict: restore done (selector left alone)", t_all))
        svc = kget("service", SVC)
        check(svc["spec"]["selector"] == theirs, "the other person's selector was left as it is")
        wait_for("the agent logs the conflict", lambda: "conflict" in log.text(), 10)
        line = [ln for ln in log.lines if "selector left as" in ln]
        check(bool(line), "agent log reports the conflict: %s" % (line[0][-160:] if line else ""))
    finally:
        log.close()
        local.close()
        say("agent log:\n  " + "\n  ".join(log.lines[-12:]))
        kubectl("patch", "-n", NS, "service", SVC, "--type", "json", "-p",
                json.dumps([{"op": "replace", "path": "/spec/selector",
                             "value": ORIGINAL_SELECTOR}]), check_rc=False)


def scenario_reconnect():
    local = LocalServer()
    pod = take_over(lease=10, grace=3)
    log = AgentLog(pod)
    try:
        dev = Developer(local.port)
        dev.kill9()
        say("kill -9 of the developer's proxy; a new one connects 4 s later")
        time.sleep(4)
        dev = Developer(local.port)
        time.sleep(10)
        svc = kget("service", SVC)
        check(svc["spec"]["selector"] == AGENT_SELECTOR and kget("deployment", AGENT),
              "14 s after the kill (lease 10 s) the takeover is still in place")
        h = agent_health(pod)
        check(h["lifecycle"]["state"] == "connected", "healthz: connected again")
        st, body = http_from_client("http://api.shop.svc.cluster.local:8080/",
                                    {"kubernetes-route-as": KEY})
        check(st == 200 and "LOCAL-" + KEY in body, "routed to the developer again")
        t0 = time.time()
        dev.stop()
        t_sel, t_all = wait_restored(t0, 30, ORIGINAL_SELECTOR)
        FIGURES.append(("reconnected, then clean leave (grace 3 s): selector back", t_sel))
        check("lease stopped" in log.text() and "restore called off" not in log.text(),
              "agent log: the lease was stopped by the reconnect")
    finally:
        local.close()


def scenario_exclusive():
    local = LocalServer()
    pod = take_over(lease=10, grace=3, exclusive=True)
    log = AgentLog(pod)
    try:
        wait_for("the api pods are gone (scaled to 0)",
                 lambda: not [p for p in kget("pods", "-l", "app=api")["items"]
                              if not p["metadata"].get("deletionTimestamp")], 60)
        dev = Developer(local.port)

        def all_to_dev():
            st, body = http_from_client("http://api.shop.svc.cluster.local:8080/x")
            return st == 200 and "LOCAL-" + KEY in body

        wait_for("a request without any route header reaches the developer (exclusive)",
                 all_to_dev, 20)
        check(True, "exclusive: a request without route header reaches the developer")
        t0 = time.time()
        dev.kill9()
        say("kill -9 of the developer's proxy")
        wait_restored(t0, 10 + 10 + 30, ORIGINAL_SELECTOR)
        dep = kget("deployment", "api")
        check(dep["spec"]["replicas"] == 2 and "kbridge.dev/original-replicas" not in
              (dep["metadata"].get("annotations") or {}),
              "deployment api scaled back to 2 replicas, annotation removed")
        kubectl("wait", "-n", NS, "--for=condition=Ready", "pod", "-l", "app=api",
                "--timeout=60s", timeout=70)
        t_ready = time.time() - t0
        FIGURES.append(("exclusive, kill -9, lease 10 s: api pods Ready again", t_ready))
        check("scaled back to 2 replicas" in log.text(), "agent log: scaled back to 2 replicas")
    finally:
        local.close()


def scenario_forbidden():
    local = LocalServer()
    pod = take_over(lease=30, grace=2)
    log = AgentLog(pod)
    try:
        dev = Developer(local.port)
        kubectl("delete", "-n", NS, "rolebinding", AGENT)
        say("the agent's RoleBinding deleted: its restore will be refused")
        t0 = time.time()
        dev.stop()

        def retrying():
            h = agent_health(pod)
            lc = h and h["lifecycle"]
            return lc if lc and lc["state"] == "retry" and lc["last_error"] else None

        lc = wait_for("healthz reports the failed restore", retrying, 20)
        check("forbidden" in lc["last_error"] and lc["restores_failed"] >= 1,
              "healthz: state retry, last_error %r" % lc["last_error"][:150])
        check(kget("service", SVC)["spec"]["selector"] == AGENT_SELECTOR,
              "the takeover is still in place (nothing half done)")
        m = agent_metrics(pod)
        check('kbridge_restores_total{result="failed"} 1' in m, "metrics count the failure")
        kubectl("apply", "-f", os.path.join(REPO, "deploy", "rbac", "agent-role.yaml"))
        dep = kget("deployment", AGENT)
        kubectl("patch", "-n", NS, "rolebinding", AGENT, "--type", "merge", "-p", json.dumps(
            {"metadata": {"labels": managed_labels(), "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "Deployment", "name": AGENT,
                "uid": dep["metadata"]["uid"]}]}}))
        t1 = time.time()
        say("RoleBinding back")
        t_sel, t_all = wait_restored(t1, 30, ORIGINAL_SELECTOR)
        FIGURES.append(("restore refused (403), RoleBinding back: selector back after", t_sel))
        check("trying again in 5 s" in log.text(), "agent log: the failure and the retry")
    finally:
        local.close()


SCENARIOS = {"podspec": scenario_podspec, "killed": scenario_killed, "clean": scenario_clean,
             "conflict": scenario_conflict, "reconnect": scenario_reconnect,
             "exclusive": scenario_exclusive, "forbidden": scenario_forbidden}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cluster", default=os.environ.get("KBRIDGE_TEST_CLUSTER", "ctest"))
    ap.add_argument("--agent", default=os.environ.get("KBRIDGE_AGENT_BIN"))
    ap.add_argument("--kbridge", default=os.environ.get("KBRIDGE_CLI_BIN"))
    ap.add_argument("scenarios", nargs="*")
    a = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("kubectl"):
        print("needs root and kubectl: skipped")
        return SKIP
    info = kc.read_cluster(a.cluster)
    if not info:
        print("test cluster %r is not up (tests/cluster/up --name %s): skipped" %
              (a.cluster, a.cluster))
        return SKIP
    for what, path in (("--agent", a.agent), ("--kbridge", a.kbridge)):
        if not path or not os.access(path, os.X_OK):
            print("%s: no executable given (%r)" % (what, path))
            return 1
    E.cluster = a.cluster
    E.kubeconfig = info["admin_kubeconfig"]
    E.state_dir = info["state_dir"]
    E.node_ip = info["net"]["node_ip"]
    E.agent = os.path.abspath(a.agent)
    E.kbridge = os.path.abspath(a.kbridge)
    E.tmp = tempfile.mkdtemp(prefix="kb-agent-cluster-")
    os.chmod(E.tmp, 0o755)
    # the agent image runs the binary under test (read at every container start)
    with open(os.path.join(info["state_dir"], "images.json"), "w") as f:
        json.dump({"images": {"kbridge/agent:*": {"entrypoint": [E.agent], "cmd": [],
                                                  "user": 65532}}}, f)
    E.certs = os.path.join(E.tmp, "certs")
    for cmd in (["certs", "init", E.certs], ["certs", "issue", E.certs, "--key", KEY]):
        p = subprocess.run([E.kbridge] + cmd, capture_output=True, text=True)
        if p.returncode != 0:
            print("kbridge %s: %s" % (" ".join(cmd), p.stderr))
            return 1
    names = a.scenarios or list(SCENARIOS)
    failed = []
    try:
        kubectl("apply", "-f", os.path.join(REPO, "deploy", "demo", "shop.yaml"))
        kubectl("wait", "-n", NS, "--for=condition=Ready", "pod", "-l", "app in (api,frontend)",
                "--timeout=120s", timeout=130)
        E.client_pod = [p["metadata"]["name"] for p in kget("pods", "-l", "app=frontend")["items"]
                        if not p["metadata"].get("deletionTimestamp")][0]
        before = kget("service", SVC)
        for n in names:
            say("=== %s" % n)
            try:
                cleanup()
                SCENARIOS[n]()
            except (Fail, subprocess.TimeoutExpired) as e:
                say("FAIL %s: %s" % (n, e))
                failed.append(n)
        cleanup()
        after = kget("service", SVC)
        check(after["spec"]["selector"] == before["spec"]["selector"] and
              not kbridge_annotations(after), "shop/api is as before the tests")
    except Fail as e:
        say("FAIL: %s" % e)
        failed.append("setup")
    finally:
        shutil.rmtree(E.tmp, ignore_errors=True)
    if FIGURES:
        print("\nmeasured restore times:")
        for what, sec in FIGURES:
            print("  %-60s %5.1f s" % (what, sec))
    print("%d passed, %d failed" % (len(names) - len([f for f in failed if f in names]),
                                    len(failed)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
