#!/usr/bin/env python3
"""End-to-end tests of the local test cluster (registered with CTest by
tests/cluster/CMakeLists.txt, label `cluster`).

    test_cluster.py up          setup (cached) + up --name $CLUSTER (fixture setup)
    test_cluster.py demo        apply deploy/demo, all pods Running+Ready in time
    test_cluster.py services    ClusterIP load balancing, DNS, header forwarding,
                                in-pod API access through the kubernetes Service
    test_cluster.py portforward WebSocket port-forward through the API server
    test_cluster.py rbac        restricted user: allowed and refused operations
    test_cluster.py lifecycle   scaling, pod replacement, readiness, selector patch,
                                image pull errors, restarts
    test_cluster.py features    env/valueFrom, volumes, securityContext, exec probes,
                                grace period, liveness restarts
    test_cluster.py netpol      NetworkPolicy enforcement: ingress/egress, pod and
                                namespace selectors, ipBlock, named ports, DNS
    test_cluster.py second      a second cluster at the same time; its down
                                leaves the first alone
    test_cluster.py down        down + nothing left behind (fixture cleanup)
    test_cluster.py all         up, every test, down

Exit 77 (CTest SKIP_RETURN_CODE) when kubectl or root is missing. The cluster
name is $KBRIDGE_TEST_CLUSTER (default ctest).
"""
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import kbcluster as kc  # noqa: E402
import wsclient  # noqa: E402
from kubeapi import Kube  # noqa: E402

NAME = os.environ.get("KBRIDGE_TEST_CLUSTER", "ctest")
SKIP = 77
DEMO = os.path.join(kc.REPO, "deploy", "demo", "shop.yaml")
T0 = time.time()


def say(msg):
    print("[%6.1fs] %s" % (time.time() - T0, msg), flush=True)


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)
    say("ok: " + msg)


def info():
    i = kc.read_cluster(NAME)
    if not i:
        raise Fail("cluster %s is not up (run: %s/up --name %s)" % (NAME, HERE, NAME))
    return i


def kubectl(*args, kubeconfig=None, check_rc=True, input=None):
    kcfg = kubeconfig or info()["admin_kubeconfig"]
    r = subprocess.run(["kubectl", "--kubeconfig", kcfg] + list(args), capture_output=True, text=True,
                       input=input)
    if check_rc and r.returncode != 0:
        raise Fail("kubectl %s: %s" % (" ".join(args), r.stderr.strip()))
    return r


def admin():
    i = info()
    return Kube(i["server"], i["ca"], cert=i["admin_cert"], key=i["admin_key"])


def wait(what, fn, timeout, interval=0.2):
    t = time.time()
    last = None
    while time.time() - t < timeout:
        try:
            r = fn()
            if r:
                dt = time.time() - t
                say("%s after %.1fs (bound %ds)" % (what, dt, timeout))
                return r
        except Fail as e:
            last = e
        time.sleep(interval)
    raise Fail("timed out after %ds waiting for %s (%s)" % (timeout, what, last))


def pods(ns, selector=None):
    q = {"labelSelector": selector} if selector else {}
    return admin().get("/api/v1/namespaces/%s/pods" % ns, **q)["items"]


def ready(p):
    return (p.get("status", {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
            and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", [])))


def pod_exec(ns, pod, *cmd, timeout=30):
    r = subprocess.run([os.path.join(HERE, "pod-exec"), "--name", NAME, ns, pod, "--"] + list(cmd),
                       capture_output=True, text=True, timeout=timeout)
    return r


GET_SCRIPT = r"""
import json, sys, urllib.request
url, hdrs = sys.argv[1], json.loads(sys.argv[2])
try:
    with urllib.request.urlopen(urllib.request.Request(url, headers=hdrs), timeout=5) as r:
        print(r.read().decode())
except Exception as e:
    print(json.dumps({"error": str(e)}))
"""


def http_from_pod(ns, pod, url, headers=None):
    r = pod_exec(ns, pod, "python3", "-c", GET_SCRIPT, url, json.dumps(headers or {}))
    try:
        return json.loads(r.stdout)
    except ValueError:
        raise Fail("GET %s from %s/%s: %r %r" % (url, ns, pod, r.stdout[-300:], r.stderr[-300:]))


def ensure_demo():
    kubectl("apply", "-f", DEMO)

    def all_ready():
        ps = pods("shop")
        want = {"frontend": 1, "api": 2, "store": 1}
        got = {}
        for p in ps:
            if ready(p):
                app = p["metadata"].get("labels", {}).get("app")
                got[app] = got.get(app, 0) + 1
        return all(got.get(k) == v for k, v in want.items()) and \
            all(ready(p) for p in ps if p["metadata"].get("labels", {}).get("app") in want)
    return wait("demo pods Running+Ready", all_ready, 120)


def one_pod(app):
    ps = [p for p in pods("shop", "app=" + app) if ready(p)]
    if not ps:
        raise Fail("no ready %s pod" % app)
    return ps[0]["metadata"]["name"]


# ------------------------------------------------------------------ tests ---
def t_up():
    r = subprocess.run([os.path.join(HERE, "setup")], capture_output=False)
    if r.returncode != 0:
        raise Fail("setup failed")
    t = time.time()
    r = subprocess.run([os.path.join(HERE, "up"), "--name", NAME], stdout=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise Fail("up failed")
    say("up took %.1fs" % (time.time() - t))
    path = r.stdout.strip().splitlines()[-1]
    check(os.path.exists(path) and path == info()["admin_kubeconfig"], "up prints the admin kubeconfig last: " + path)
    kcfg = open(path).read()
    for k in ("certificate-authority-data", "client-certificate-data", "client-key-data", "token:", "namespace:"):
        check(k in kcfg, "admin kubeconfig has " + k)
    out = kubectl("get", "nodes", "-o", "json").stdout
    node = json.loads(out)["items"][0]
    conds = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    check(conds.get("Ready") == "True", "node Ready")
    check(kubectl("--context", NAME + "-token", "get", "ns").returncode == 0, "token user of admin kubeconfig works")
    t = time.time()
    r = subprocess.run([os.path.join(HERE, "up"), "--name", NAME], stdout=subprocess.PIPE, text=True)
    # Idempotent, not timed: `up` of another cluster holds the global start lock
    # for as long as its start takes (CI saw 16.9 s on a busy machine).
    check(r.returncode == 0 and r.stdout.strip().splitlines()[-1] == path,
          "up again is idempotent (%.1fs)" % (time.time() - t))


def t_demo():
    kubectl("delete", "namespace", "shop-scratch", "--ignore-not-found", "--wait=false")
    t = time.time()
    ensure_demo()
    dt = time.time() - t
    say("MEASURED demo pods ready: %.1fs" % dt)
    check(dt < 120, "all demo pods Running+Ready within 120s")
    p = admin().get("/api/v1/namespaces/shop/pods/" + one_pod("api"))
    cs = p["status"]["containerStatuses"][0]
    check(cs["ready"] and "running" in cs["state"] and cs["restartCount"] == 0,
          "api containerStatus running, ready, restartCount 0")
    check(p["status"]["podIP"].startswith("10.244.%d." % info()["index"]), "pod IP in the pod CIDR: " + p["status"]["podIP"])
    logs = kubectl("logs", "-n", "shop", p["metadata"]["name"]).stdout
    check("listening on :8080" in logs, "kubectl logs works through the node")


def t_services():
    ensure_demo()
    fe = one_pod("frontend")
    seen = set()
    for _ in range(30):
        r = http_from_pod("shop", fe, "http://api.shop.svc.cluster.local:8080/")
        check_keys = r.get("service") == "api"
        if not check_keys:
            raise Fail("api answer: %r" % r)
        seen.add(r["pod"])
        if len(seen) == 2:
            break
    api_pods = {p["metadata"]["name"] for p in pods("shop", "app=api") if ready(p)}
    check(seen == api_pods, "api.shop.svc.cluster.local reaches both api replicas %s" % sorted(seen))
    r = http_from_pod("shop", fe, "http://frontend.shop/", {"kubernetes-route-as": "alice",
                                                              "baggage": "kbridge-route=alice,x=1"})
    check(r.get("service") == "frontend" and r["next"].get("service") == "api" and
          r["next"]["next"].get("service") == "store", "http://frontend.shop reaches api and store")
    check(r["next"]["next"]["route"] == {"kubernetes-route-as": "alice", "baggage": "kbridge-route=alice,x=1"},
          "route headers forwarded frontend -> api -> store")
    check(r["next"]["greeting"] == "hello from the shop config" and r["next"]["api_key_set"] and
          "settings.json" in r["next"].get("config_files", []),
          "api got ConfigMap env, Secret envFrom and the ConfigMap volume")
    r = http_from_pod("shop", fe, "http://api:8080/")
    check(r.get("service") == "api", "short name api resolves through the search path")
    # a headless Service resolves to the ready endpoint addresses
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "api-headless", "namespace": "shop"},
        "spec": {"clusterIP": "None", "selector": {"app": "api"}, "ports": [{"port": 8080}]}}))
    want = sorted(p["status"]["podIP"] for p in pods("shop", "app=api") if ready(p))

    def headless():
        r = pod_exec("shop", fe, "python3", "-c", "import socket;print(sorted({a[4][0] for a in socket.getaddrinfo('api-headless', 8080, proto=6)}))")
        return r.stdout.strip() == str(want)
    wait("headless Service resolves to %s" % want, headless, 10)
    kubectl("delete", "service", "-n", "shop", "api-headless")
    # The root namespace (the CLI side) must not reach pods or ClusterIPs: it has
    # no route to them (its default route leads off the machine, so no traffic is
    # sent there), and even with a route through the node the node drops it.
    i = info()
    svc_ip = admin().get("/api/v1/namespaces/shop/services/api")["spec"]["clusterIP"]
    pod_ip = admin().get("/api/v1/namespaces/shop/pods/" + fe)["status"]["podIP"]
    for ip in (svc_ip, pod_ip):
        r = subprocess.run(["ip", "route", "get", ip], capture_output=True, text=True).stdout
        check(i["host_veth"] not in r, "root netns has no route to %s via the node link" % ip)
    subprocess.run(["ip", "route", "add", i["net"]["pod_cidr"], "via", i["net"]["node_ip"]], check=True)
    subprocess.run(["ip", "route", "add", i["net"]["service_cidr"], "via", i["net"]["node_ip"]], check=True)
    try:
        for ip in (svc_ip, pod_ip):
            r = subprocess.run(["python3", "-c", "import socket,sys; socket.create_connection((sys.argv[1], 8080), 2)", ip],
                               capture_output=True)
            check(r.returncode != 0, "even with a route, root netns cannot connect to %s:8080" % ip)
    finally:
        subprocess.run(["ip", "route", "del", i["net"]["pod_cidr"]])
        subprocess.run(["ip", "route", "del", i["net"]["service_cidr"]])
    # A NodePort Service is reachable from the root netns on the node address
    # (the way a direct tunnel address would be exposed), ClusterIPs still are not.
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "api-nodeport", "namespace": "shop"},
        "spec": {"type": "NodePort", "selector": {"app": "api"}, "ports": [{"port": 8080, "targetPort": 8080}]}}))
    np = admin().get("/api/v1/namespaces/shop/services/api-nodeport")["spec"]["ports"][0]["nodePort"]

    def via_nodeport():
        import urllib.request
        try:
            with urllib.request.urlopen("http://%s:%d/" % (i["net"]["node_ip"], np), timeout=3) as r:
                return json.load(r).get("service") == "api"
        except OSError:
            return False
    wait("NodePort %d on the node address answers from the root netns" % np, via_nodeport, 10)
    kubectl("delete", "service", "-n", "shop", "api-nodeport")
    # In-pod API access: KUBERNETES_SERVICE_HOST, SA token and ca.crt, real TLS.
    script = r"""
import json, os, ssl, urllib.request, urllib.error
d = "/var/run/secrets/kubernetes.io/serviceaccount"
tok = open(d + "/token").read(); ns = open(d + "/namespace").read()
ctx = ssl.create_default_context(cafile=d + "/ca.crt")
out = {"ns": ns}
for name, url in (("env", "https://%s:%s/api" % (os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"])),
                  ("dns", "https://kubernetes.default.svc/api"),
                  ("svcs", "https://kubernetes.default.svc.cluster.local/api/v1/namespaces/shop/services")):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": "Bearer " + tok}), context=ctx, timeout=5) as r:
            out[name] = r.status
    except urllib.error.HTTPError as e:
        out[name] = e.code; out[name + "_msg"] = json.load(e).get("message")
    except Exception as e:
        out[name] = str(e)
print("RESULT " + json.dumps(out))
"""
    kubectl("delete", "pod", "-n", "shop", "apicheck", "--ignore-not-found", "--grace-period=0")
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "apicheck", "namespace": "shop"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "kbridge-demo/sh:1",
                                                           "command": ["python3", "-c", script]}]}}))
    wait("apicheck pod Succeeded", lambda: admin().get("/api/v1/namespaces/shop/pods/apicheck")["status"].get("phase")
         in ("Succeeded", "Failed"), 60)
    out = kubectl("logs", "-n", "shop", "apicheck").stdout
    res = json.loads(out.split("RESULT ", 1)[1]) if "RESULT " in out else {}
    check(res.get("env") == 200 and res.get("dns") == 200,
          "pod reaches the API server via KUBERNETES_SERVICE_HOST and kubernetes.default.svc with the SA token and CA: %r" % res)
    check(res.get("svcs") == 403 and "system:serviceaccount:shop:default" in res.get("svcs_msg", ""),
          "API server identifies the pod as its service account (403 without a Role)")
    kubectl("delete", "pod", "-n", "shop", "apicheck", "--wait=true")


def t_portforward():
    ensure_demo()
    i = info()
    pod = one_pod("api")
    req = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    for who, tok in (("admin token", i["tokens"]["admin"]), ("restricted user", i["tokens"]["restricted"])):
        t = time.time()
        ports, data, err = wsclient.port_forward(i["server"], i["ca"], "shop", pod, 8080, req, token=tok)
        check(ports == {0: 8080, 1: 8080}, "%s: port header on data and error channel" % who)
        check(data.startswith(b"HTTP/1.") and ('"pod": "%s"' % pod).encode() in data,
              "%s: port-forward through the API server answered by %s (%.2fs)" % (who, pod, time.time() - t))
    ports, data, err = wsclient.port_forward(i["server"], i["ca"], "shop", pod, 8080, req,
                                             cert=i["admin_cert"], key=i["admin_key"])
    check(pod.encode() in data, "client certificate user: port-forward works")
    try:
        wsclient.port_forward(i["server"], i["ca"], "shop", pod, 8080, req, token=i["tokens"]["norbac"])
        raise Fail("user without RBAC got through")
    except wsclient.PortForwardError as e:
        check(e.status == 403, "user without RBAC is refused with 403")
    try:
        wsclient.port_forward(i["server"], i["ca"], "default", "nope", 8080, req, token=i["tokens"]["restricted"])
        raise Fail("restricted user got a port-forward in namespace default")
    except wsclient.PortForwardError as e:
        check(e.status == 403, "restricted user refused port-forward in another namespace (403)")
    # The kubelet port is on the node address (reachable from the root netns like a
    # real node's), but without a cluster-CA client certificate it refuses.
    import socket
    import ssl
    node = admin().get("/api/v1/nodes/" + i["node_name"])
    kport = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
    ctx = ssl.create_default_context(cafile=i["ca"])
    ctx.check_hostname = False
    try:
        with ctx.wrap_socket(socket.create_connection((i["net"]["node_ip"], kport), 5)) as ks:
            ks.sendall(("GET /portForward/shop/%s?port=8080 HTTP/1.1\r\nHost: x\r\n\r\n" % pod).encode())
            got = ks.recv(100)
    except (ssl.SSLError, OSError) as e:
        got = b""
        say("kubelet refused: %s" % e)
    check(not got.startswith(b"HTTP"), "kubelet endpoint refuses callers without a client certificate")
    ports, data, err = wsclient.port_forward(i["server"], i["ca"], "shop", pod, 9, req, token=i["tokens"]["admin"])
    check(not data and "9" in err, "closed port: error channel says so (%r)" % err[:80])
    # Bulk data both ways and parallel streams: an echo server that echoes N bytes, then closes.
    echo = ("import socket, struct, threading\n"
            "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "s.bind(('0.0.0.0', 9000)); s.listen(16)\n"
            "def serve(c):\n"
            "    f = c.makefile('rb'); n = struct.unpack('>Q', f.read(8))[0]\n"
            "    while n > 0:\n"
            "        d = f.read1(min(n, 65536))\n"
            "        if not d: break\n"
            "        c.sendall(d); n -= len(d)\n"
            "    c.close()\n"
            "print('echo ready', flush=True)\n"
            "while True:\n"
            "    c, _ = s.accept(); threading.Thread(target=serve, args=(c,)).start()\n")
    kubectl("delete", "pod", "-n", "shop", "echo", "--ignore-not-found", "--grace-period=0")
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "echo", "namespace": "shop"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "echo", "image": "kbridge-demo/sh:1", "command": ["python3", "-c", echo],
            "readinessProbe": {"tcpSocket": {"port": 9000}, "periodSeconds": 1}}]}}))
    wait("echo pod ready", lambda: ready(admin().get("/api/v1/namespaces/shop/pods/echo")), 30)
    blob = os.urandom(8 * 1024 * 1024)
    t = time.time()
    ports, data, err = wsclient.port_forward(i["server"], i["ca"], "shop", "echo", 9000,
                                             struct.pack(">Q", len(blob)) + blob, token=i["tokens"]["restricted"],
                                             timeout=60)
    dt = time.time() - t
    check(data == blob, "8 MiB echoed intact through API server + node port-forward (%.2fs, %.1f MB/s)"
          % (dt, 2 * 8 / dt))
    results = {}

    def one(n):
        b = os.urandom(100000 + n)
        _, d, _ = wsclient.port_forward(i["server"], i["ca"], "shop", "echo", 9000, struct.pack(">Q", len(b)) + b,
                                        token=i["tokens"]["admin"], timeout=60)
        results[n] = d == b
    ts = [threading.Thread(target=one, args=(n,)) for n in range(8)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    check(len(results) == 8 and all(results.values()), "8 parallel port-forward streams all echoed intact")
    kubectl("delete", "pod", "-n", "shop", "echo", "--wait=true")


def t_rbac():
    i = info()
    rk = i["restricted_kubeconfig"]

    def can(verb, res, *rest):
        args = [verb, res] + list(rest)
        if "/" in res:   # kubectl reads TYPE/NAME; a subresource needs --subresource
            r, sub = res.split("/", 1)
            args = [verb, r, "--subresource=" + sub] + list(rest)
        r = kubectl("auth", "can-i", *args, kubeconfig=rk, check_rc=False)
        return r.stdout.strip() == "yes"
    allowed = [("get", "pods"), ("create", "pods/portforward"), ("get", "pods/portforward"),
               ("patch", "services"), ("create", "deployments.apps"), ("delete", "replicasets.apps"),
               ("create", "secrets"), ("create", "serviceaccounts"), ("create", "roles.rbac.authorization.k8s.io"),
               ("create", "rolebindings.rbac.authorization.k8s.io"), ("update", "configmaps"),
               ("list", "events"), ("create", "ingresses.networking.k8s.io"), ("watch", "endpoints")]
    for verb, res in allowed:
        check(can(verb, res, "-n", "shop"), "restricted user may %s %s in shop" % (verb, res))
    refused = [("create", "pods", "-n", "shop"), ("delete", "pods", "-n", "shop"), ("get", "pods", "-n", "default"),
               ("list", "secrets", "-n", "kube-system"), ("list", "nodes"), ("create", "namespaces"),
               ("create", "clusterroles"), ("patch", "services", "-n", "default")]
    for args in refused:
        check(not can(*args), "restricted user may not %s" % " ".join(args))
    r = kubectl("get", "nodes", kubeconfig=rk, check_rc=False)
    check(r.returncode != 0 and "forbidden" in r.stderr.lower(), "restricted: kubectl get nodes is forbidden")
    r = kubectl("get", "pods", "-n", "kube-system", kubeconfig=rk, check_rc=False)
    check(r.returncode != 0 and "forbidden" in r.stderr.lower(), "restricted: other namespaces are forbidden")
    r = kubectl("get", "pods", kubeconfig=rk, check_rc=False)
    check(r.returncode == 0, "restricted: kubectl get pods in its namespace works")
    # It can create the agent's Role (no escalation beyond its own rights).
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "kbridge-test-agent", "namespace": "shop"},
            "rules": [{"apiGroups": [""], "resources": ["services", "endpoints"], "verbs": ["get", "list", "watch"]},
                      {"apiGroups": [""], "resources": ["services"], "verbs": ["patch", "update"]}]}
    r = kubectl("apply", "-f", "-", kubeconfig=rk, input=json.dumps(role), check_rc=False)
    check(r.returncode == 0, "restricted: can create a Role within its rights: %s" % r.stderr.strip())
    kubectl("delete", "role", "-n", "shop", "kbridge-test-agent", kubeconfig=rk)
    role["rules"].append({"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]})
    role["rules"][0]["resources"] = ["pods/exec"]
    role["rules"][0]["verbs"] = ["create"]
    r = kubectl("apply", "-f", "-", kubeconfig=rk, input=json.dumps(role), check_rc=False)
    check(r.returncode != 0, "restricted: cannot create a Role granting more than it has")


def ready_api_pods():
    return sorted(p["metadata"]["name"] for p in pods("shop", "app=api") if ready(p))


def serving_pods(fe, url, n):
    seen = set()
    for _ in range(n):
        r = http_from_pod("shop", fe, url)
        seen.add((r.get("service"), r.get("pod")))
    return seen


def t_lifecycle():
    ensure_demo()
    k = admin()
    fe = one_pod("frontend")
    # scaling up and down
    kubectl("scale", "-n", "shop", "deployment/api", "--replicas=3")
    wait("3 api pods ready", lambda: len(ready_api_pods()) == 3, 60)
    names = set(ready_api_pods())

    def three_serve():
        return {p for s, p in serving_pods(fe, "http://api:8080/", 12)} == names
    wait("traffic reaches all 3 api pods", three_serve, 30, interval=0)
    kubectl("scale", "-n", "shop", "deployment/api", "--replicas=2")
    wait("scaled back to 2 api pods (extra pod deleted)", lambda: len(pods("shop", "app=api")) == 2 and
         len(ready_api_pods()) == 2, 60)
    # deleting a pod: graceful stop, object removed by the node, replaced
    victim = ready_api_pods()[0]
    uid = k.get("/api/v1/namespaces/shop/pods/" + victim)["metadata"]["uid"]
    t = time.time()
    kubectl("delete", "pod", "-n", "shop", victim, "--wait=true", "--timeout=60s")
    say("MEASURED pod deletion (SIGTERM, object gone): %.1fs" % (time.time() - t))
    check(k.get("/api/v1/namespaces/shop/pods/" + victim, allow=(404,)) is None, "deleted pod object is gone")
    check(kc.pod_netns_prefix(NAME) + uid.replace("-", "")[:12] not in kc.netns_list(), "its netns is gone")
    wait("replacement api pod ready", lambda: len(ready_api_pods()) == 2 and victim not in ready_api_pods(), 60)
    # readiness: an unready pod leaves the endpoints
    a, b = ready_api_pods()
    r = pod_exec("shop", fe, "python3", "-c", "import urllib.request,sys;urllib.request.urlopen('http://%s:8080/fail-ready' % sys.argv[1])",
                 k.get("/api/v1/namespaces/shop/pods/" + a)["status"]["podIP"])
    check(r.returncode == 0, "made %s fail its readiness probe" % a)
    wait("%s not ready, out of the endpoints" % a, lambda: a not in ready_api_pods() and all(
        x["targetRef"]["name"] != a for s in k.get("/api/v1/namespaces/shop/endpoints/api").get("subsets", [])
        for x in s.get("addresses", [])), 20)
    check({p for s, p in serving_pods(fe, "http://api:8080/", 10)} == {b}, "traffic only reaches the ready pod " + b)
    kubectl("delete", "pod", "-n", "shop", a, "--wait=true")
    wait("api back to 2 ready pods", lambda: len(ready_api_pods()) == 2, 60)
    # patching a Service selector: traffic follows
    t = time.time()
    kubectl("patch", "service", "-n", "shop", "api", "-p", '{"spec":{"selector":{"app":"store"}}}')
    wait("api Service answered by store after selector patch", lambda: {s for s, p in serving_pods(fe, "http://api:8080/", 4)} == {"store"}, 10, interval=0)
    say("MEASURED selector switch effective after %.1fs" % (time.time() - t))
    kubectl("patch", "service", "-n", "shop", "api", "-p", '{"spec":{"selector":{"app":"api"}}}')
    wait("api Service answered by api again", lambda: {s for s, p in serving_pods(fe, "http://api:8080/", 4)} == {"api"}, 10, interval=0)
    # scale to 0 (kbridge's exclusive mode): no endpoints -> refused at once, not a hang
    kubectl("scale", "-n", "shop", "deployment/api", "--replicas=0")
    wait("api scaled to 0 (pods gone)", lambda: not pods("shop", "app=api"), 60)

    def refused_fast():
        t = time.time()
        r = http_from_pod("shop", fe, "http://api:8080/")
        return "error" in r and time.time() - t < 3 and ("refused" in r["error"].lower() or "unreachable" in r["error"].lower())
    wait("Service without endpoints refuses connections at once", refused_fast, 10)
    kubectl("scale", "-n", "shop", "deployment/api", "--replicas=2")
    wait("api back to 2 ready pods", lambda: len(ready_api_pods()) == 2, 60)
    # rolling update: new pods with the new env replace the old ones
    kubectl("set", "env", "-n", "shop", "deployment/api", "VERSION=2")
    r = kubectl("rollout", "status", "-n", "shop", "deployment/api", "--timeout=90s")
    check({r["version"] for r in (http_from_pod("shop", fe, "http://api:8080/") for _ in range(6))} == {"2"},
          "rolling update done, all answers from version 2")
    kubectl("set", "env", "-n", "shop", "deployment/api", "VERSION=1")
    kubectl("rollout", "status", "-n", "shop", "deployment/api", "--timeout=90s")
    wait("api back to 2 ready pods of version 1", lambda: len(ready_api_pods()) == 2 and len(pods("shop", "app=api")) == 2, 60)
    # unknown image and the agent image without a binary: ErrImagePull/ImagePullBackOff
    for pname, image in (("badimage", "example.com/no/such-image:1"), ("agentmissing", "kbridge/agent:0.0.1")):
        kubectl("delete", "pod", "-n", "shop", pname, "--ignore-not-found", "--grace-period=0")
        kubectl("run", "-n", "shop", pname, "--image", image, "--restart=Never")

        def waiting_reason():
            p = k.get("/api/v1/namespaces/shop/pods/" + pname)
            st = (p["status"].get("containerStatuses") or [{}])[0].get("state", {})
            return st.get("waiting", {}).get("reason") in ("ErrImagePull", "ImagePullBackOff") and \
                p["status"]["phase"] == "Pending"
        env = dict(os.environ)
        if pname == "agentmissing" and os.path.exists(os.path.join(kc.REPO, "build/agent/kbridge-agent")):
            say("skip agentmissing: an agent binary exists")
            kubectl("delete", "pod", "-n", "shop", pname, "--grace-period=0")
            continue
        wait("%s (%s) shows ErrImagePull/ImagePullBackOff" % (pname, image), waiting_reason, 20)
        kubectl("delete", "pod", "-n", "shop", pname, "--wait=true")
    # restarts: a container that exits is restarted and counted
    kubectl("delete", "pod", "-n", "shop", "crasher", "--ignore-not-found", "--grace-period=0")
    kubectl("run", "-n", "shop", "crasher", "--image", "kbridge-demo/sh:1", "--restart=Always", "--command", "--",
            "/bin/sh", "-c", "echo started; sleep 0.5; exit 3")

    def restarted():
        p = k.get("/api/v1/namespaces/shop/pods/crasher")
        cs = (p["status"].get("containerStatuses") or [{}])[0]
        return cs.get("restartCount", 0) >= 2 and cs.get("lastState", {}).get("terminated", {}).get("exitCode") == 3
    wait("crashing container restarted twice with exit code 3 recorded", restarted, 30)
    kubectl("delete", "pod", "-n", "shop", "crasher", "--wait=true")

FEATURE_SCRIPT = r"""
import json, os, socket, time
out = {"uid": os.getuid(), "gid": os.getgid(), "cwd": os.getcwd(), "hostname": socket.gethostname(), "env": {}, "files": {}}
for k in ("POD_NAME", "POD_NS", "POD_UID", "NODE", "POD_IP", "HOST_IP", "APP_LABEL", "SA", "MEM_MI", "CPU_M",
          "GREETING", "KEY", "MISSING", "CFG_GREETING", "EXPANDED", "KUBERNETES_SERVICE_HOST",
          "KUBERNETES_SERVICE_PORT", "API_SERVICE_HOST", "API_SERVICE_PORT_HTTP", "API_PORT", "HOME"):
    out["env"][k] = os.environ.get(k)
for f in ("/etc/cfg/greeting.txt", "/etc/sec/key", "/etc/pod/labels", "/etc/pod/name", "/etc/proj/namespace",
          "/etc/proj/ca.crt", "/etc/proj/token", "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
          "/var/run/secrets/kubernetes.io/serviceaccount/token", "/etc/single/settings.json"):
    try:
        out["files"][f] = open(f).read()
    except Exception as e:
        out["files"][f] = "ERR " + type(e).__name__
try:
    open("/kbridge-rootfs-write-test", "w")
    out["rootfs_writable"] = True
except OSError as e:
    out["rootfs_writable"] = e.strerror
open("/scratch/ready", "w").close()
out["scratch_ok"] = os.path.exists("/scratch/ready")
print("RESULT " + json.dumps(out), flush=True)
time.sleep(600)
"""


def t_features():
    """env/envFrom/valueFrom, volumes of every kind, securityContext, exec probe,
    grace period, liveness restarts."""
    ensure_demo()
    k = admin()
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "features", "namespace": "shop", "labels": {"app": "features", "tier": "test"},
                     "annotations": {"note": "hello"}},
        "spec": {
            "securityContext": {"runAsUser": 1000, "runAsNonRoot": True, "fsGroup": 2000},
            "containers": [{
                "name": "c", "image": "kbridge-demo/sh:1", "workingDir": "/scratch",
                "command": ["python3", "-c", FEATURE_SCRIPT],
                "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}, "requests": {"cpu": "250m"}},
                "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False},
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                    {"name": "APP_LABEL", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                    {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                    {"name": "CPU_M", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
                    {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "shop-config", "key": "GREETING"}}},
                    {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "shop-secret", "key": "API_KEY"}}},
                    {"name": "MISSING", "valueFrom": {"secretKeyRef": {"name": "shop-secret", "key": "nope", "optional": True}}},
                    {"name": "EXPANDED", "value": "pod=$(POD_NAME) ns=$(POD_NS) keep=$$(X)"}],
                "envFrom": [{"prefix": "CFG_", "configMapRef": {"name": "shop-config"}}],
                "volumeMounts": [
                    {"name": "cfg", "mountPath": "/etc/cfg", "readOnly": True},
                    {"name": "sec", "mountPath": "/etc/sec"},
                    {"name": "pod", "mountPath": "/etc/pod"},
                    {"name": "proj", "mountPath": "/etc/proj"},
                    {"name": "scratch", "mountPath": "/scratch"},
                    {"name": "whole", "mountPath": "/etc/single/settings.json", "subPath": "settings.json"}],
                "readinessProbe": {"exec": {"command": ["test", "-f", "/scratch/ready"]}, "periodSeconds": 1},
            }],
            "volumes": [
                {"name": "cfg", "configMap": {"name": "shop-config", "items": [{"key": "GREETING", "path": "greeting.txt"}]}},
                {"name": "sec", "secret": {"secretName": "shop-secret", "defaultMode": 0o440,
                                           "items": [{"key": "API_KEY", "path": "key"}]}},
                {"name": "pod", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                                                          {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
                {"name": "proj", "projected": {"sources": [
                    {"serviceAccountToken": {"path": "token", "audience": "kbridge-test", "expirationSeconds": 3600}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}},
                {"name": "scratch", "emptyDir": {}},
                {"name": "whole", "configMap": {"name": "shop-config"}}]}}
    kubectl("delete", "pod", "-n", "shop", "features", "--ignore-not-found", "--grace-period=0")
    kubectl("apply", "-f", "-", input=json.dumps(pod))
    wait("features pod Ready (exec readiness probe inside the container's mounts)",
         lambda: ready(k.get("/api/v1/namespaces/shop/pods/features")), 30)
    p = k.get("/api/v1/namespaces/shop/pods/features")
    out = kubectl("logs", "-n", "shop", "features").stdout
    res = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
    e, f = res["env"], res["files"]
    check(res["uid"] == 1000 and res["gid"] == 1000, "runAsUser/runAsGroup applied (uid %s)" % res["uid"])
    check(res["rootfs_writable"] is not True, "readOnlyRootFilesystem: / is read-only (%s)" % res["rootfs_writable"])
    check(res["scratch_ok"] and res["cwd"] == "/scratch", "emptyDir writable, workingDir applied")
    check(res["hostname"] == "features", "hostname is the pod name")
    check(e["POD_NAME"] == "features" and e["POD_NS"] == "shop" and e["POD_UID"] == p["metadata"]["uid"] and
          e["NODE"] == info()["node_name"] and e["POD_IP"] == p["status"]["podIP"] and
          e["HOST_IP"] == info()["net"]["node_ip"] and e["APP_LABEL"] == "features" and e["SA"] == "default",
          "fieldRef env vars")
    check(e["MEM_MI"] == "64" and e["CPU_M"] == "250", "resourceFieldRef env vars (%s, %s)" % (e["MEM_MI"], e["CPU_M"]))
    check(e["GREETING"] == "hello from the shop config" and e["KEY"] == "demo-api-key-not-a-real-secret" and
          e["MISSING"] is None and e["CFG_GREETING"] == "hello from the shop config", "configMap/secret refs, envFrom prefix")
    check(e["EXPANDED"] == "pod=features ns=shop keep=$(X)", "$(VAR) expansion: %r" % e["EXPANDED"])
    svc = k.get("/api/v1/namespaces/shop/services/api")["spec"]["clusterIP"]
    check(e["KUBERNETES_SERVICE_HOST"] == info()["net"]["kubernetes_ip"] and e["KUBERNETES_SERVICE_PORT"] == "443" and
          e["API_SERVICE_HOST"] == svc and e["API_SERVICE_PORT_HTTP"] == "8080" and e["API_PORT"] == "tcp://%s:8080" % svc,
          "service link env vars")
    check(f["/etc/cfg/greeting.txt"] == "hello from the shop config" and f["/etc/sec/key"] == "demo-api-key-not-a-real-secret",
          "configMap and secret (mode 0440, readable through fsGroup) volumes with items")
    check('app="features"' in f["/etc/pod/labels"] and f["/etc/pod/name"] == "features", "downwardAPI volume")
    check(f["/etc/proj/namespace"] == "shop" and "BEGIN CERTIFICATE" in f["/etc/proj/ca.crt"] and
          f["/etc/proj/token"].count(".") == 2, "projected volume: token, kube-root-ca.crt, downwardAPI")
    check(f["/var/run/secrets/kubernetes.io/serviceaccount/namespace"] == "shop" and
          f["/var/run/secrets/kubernetes.io/serviceaccount/token"].count(".") == 2,
          "service account token automounted at /var/run/secrets/kubernetes.io/serviceaccount")
    check('"currency"' in f["/etc/single/settings.json"], "subPath mount of one file")
    r = subprocess.run([os.path.join(HERE, "pod-exec"), "--name", NAME, "-c", "c", "shop", "features", "--",
                        "cat", "/etc/pod/name"], capture_output=True, text=True)
    check(r.returncode == 0 and r.stdout == "features", "pod-exec -c sees the container's volumes")
    # TokenRequest token: valid for the API server (audience is checked: kbridge-test is not an API audience)
    tok = f["/var/run/secrets/kubernetes.io/serviceaccount/token"]
    st, body = Kube(info()["server"], info()["ca"], token=tok).request("GET", "/api")
    check(st == 200, "automounted token authenticates to the API server")
    # runAsNonRoot with a root image user is refused like kubelet does
    bad = json.loads(json.dumps(pod))
    bad["metadata"]["name"] = "nonroot-refused"
    bad["spec"]["securityContext"] = {"runAsNonRoot": True}
    bad["spec"]["containers"][0]["readinessProbe"] = None
    kubectl("delete", "pod", "-n", "shop", "nonroot-refused", "--ignore-not-found", "--grace-period=0")
    kubectl("apply", "-f", "-", input=json.dumps(bad))

    def refused():
        cs = (k.get("/api/v1/namespaces/shop/pods/nonroot-refused")["status"].get("containerStatuses") or [{}])[0]
        return cs.get("state", {}).get("waiting", {}).get("reason") == "CreateContainerConfigError"
    wait("runAsNonRoot + root image -> CreateContainerConfigError", refused, 20)
    kubectl("delete", "pod", "-n", "shop", "nonroot-refused", "features", "--wait=true")
    # grace period: a process ignoring SIGTERM is killed after terminationGracePeriodSeconds
    kubectl("delete", "pod", "-n", "shop", "stubborn", "--ignore-not-found", "--grace-period=0")
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "stubborn", "namespace": "shop"},
        "spec": {"terminationGracePeriodSeconds": 3, "containers": [{
            "name": "c", "image": "kbridge-demo/sh:1",
            "command": ["python3", "-c", "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)"]}]}}))
    wait("stubborn pod running", lambda: k.get("/api/v1/namespaces/shop/pods/stubborn")["status"].get("phase") == "Running", 20)
    time.sleep(0.5)
    t = time.time()
    kubectl("delete", "pod", "-n", "shop", "stubborn", "--wait=true", "--timeout=30s")
    dt = time.time() - t
    check(2.5 <= dt <= 10, "SIGTERM ignored: killed after the 3 s grace period (%.1fs)" % dt)
    # liveness: a failing exec liveness probe restarts the container
    kubectl("delete", "pod", "-n", "shop", "unlively", "--ignore-not-found", "--grace-period=0")
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unlively", "namespace": "shop"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "c", "image": "kbridge-demo/sh:1", "command": ["/bin/sh", "-c", "sleep 600"],
            "livenessProbe": {"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 2}}]}}))

    def restarted():
        cs = (k.get("/api/v1/namespaces/shop/pods/unlively")["status"].get("containerStatuses") or [{}])[0]
        return cs.get("restartCount", 0) >= 1
    wait("failing liveness probe restarts the container", restarted, 30)
    kubectl("delete", "pod", "-n", "shop", "unlively", "--wait=true")
    # init containers run first, to completion, sharing volumes
    kubectl("delete", "pod", "-n", "shop", "initdemo", "--ignore-not-found", "--grace-period=0")
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "initdemo", "namespace": "shop"},
        "spec": {"restartPolicy": "Never", "volumes": [{"name": "w", "emptyDir": {}}],
                 "initContainers": [{"name": "init", "image": "busybox:1", "volumeMounts": [{"name": "w", "mountPath": "/w"}],
                                     "command": ["/bin/sh", "-c", "echo from-init > /w/msg"]}],
                 "containers": [{"name": "main", "image": "busybox:1", "volumeMounts": [{"name": "w", "mountPath": "/w"}],
                                 "command": ["/bin/sh", "-c", "cat /w/msg"]}]}}))
    wait("init container pod Succeeded", lambda: k.get("/api/v1/namespaces/shop/pods/initdemo")["status"].get("phase") == "Succeeded", 30)
    check(kubectl("logs", "-n", "shop", "initdemo", "-c", "main").stdout.strip() == "from-init",
          "init container ran first and shared its emptyDir")
    kubectl("delete", "pod", "-n", "shop", "initdemo", "--wait=true")

    # kubectl exec (WebSocket v5/v4 through the API server to the node); kubectl
    # before 1.30 (e.g. Debian's kubernetes-client 1.20) speaks SPDY, which the
    # node does not.
    if kubectl_minor() < 30:
        say("skip kubectl exec checks: kubectl 1.%d uses SPDY for exec" % kubectl_minor())
        return
    kubectl("apply", "-f", "-", input=json.dumps(pod))
    wait("features pod Ready again", lambda: ready(k.get("/api/v1/namespaces/shop/pods/features")), 30)
    r = kubectl("exec", "-n", "shop", "features", "--", "sh", "-c", "cat /etc/pod/name; id -u; echo oops >&2; exit 7",
                check_rc=False)
    check(r.stdout == "features1000\n" and "oops" in r.stderr and r.returncode == 7,
          "kubectl exec: stdout, stderr, exit code (%d), runs as the container user" % r.returncode)
    blob = "".join(chr(97 + (i * 7) % 26) for i in range(100000))
    r = kubectl("exec", "-i", "-n", "shop", "features", "--", "cat", input=blob, check_rc=False)
    check(r.returncode == 0 and r.stdout == blob, "kubectl exec -i: 100 kB of stdin echoed back")
    kubectl("delete", "pod", "-n", "shop", "features", "--wait=true")


CONNECT_SCRIPT = r"""
import json, socket, sys
out = []
for host, port in json.loads(sys.argv[1]):
    try:
        socket.create_connection((host, port), 3).close(); out.append(True)
    except Exception as e:
        out.append(str(e)[:60])
print(json.dumps(out))
"""


def reach(ns, pod, targets):
    """[True or the error] for each (host, port), connecting from pod."""
    r = pod_exec(ns, pod, "python3", "-c", CONNECT_SCRIPT, json.dumps(targets), timeout=60)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise Fail("connect from %s/%s: %r %r" % (ns, pod, r.stdout[-300:], r.stderr[-300:]))


def policy(name, ns, spec):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def t_netpol():
    """NetworkPolicy enforced by the node (node/netpol.py): ingress and egress,
    podSelector, namespaceSelector, ipBlock with except, numbered and named ports,
    the DNS pseudo-pod; everything open again once the policies are gone."""
    ensure_demo()
    i = info()
    fe, st = one_pod("frontend"), one_pod("store")
    api_ip = [p["status"]["podIP"] for p in pods("shop", "app=api") if ready(p)][0]
    api = ("api.shop.svc.cluster.local", 8080)
    apiserver = ("kubernetes.default.svc.cluster.local", 443)
    kubectl("create", "namespace", "np-other", check_rc=False)
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client", "namespace": "np-other",
                                                        "labels": {"role": "client"}},
        "spec": {"containers": [{"name": "c", "image": "kbridge-demo/sh:1",
                                 "command": ["sleep", "3600"]}]}}))
    wait("np-other/client Running", lambda: ready(admin().get("/api/v1/namespaces/np-other/pods/client")), 60)
    names = []

    def apply(*pols):
        kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(pols)}))
        names.extend((p["metadata"]["namespace"], p["metadata"]["name"]) for p in pols)

    def expect(ns, pod, targets, want, what, timeout=15):
        last = []

        def ok():
            last[:] = reach(ns, pod, targets)
            return [x is True for x in last] == want
        try:
            wait(what, ok, timeout, interval=0.3)
        except Fail:
            raise Fail("%s: got %s, want %s" % (what, last, want))
        check(True, "%s (%s)" % (what, ["open" if x else "denied" for x in want]))

    try:
        expect("shop", fe, [api, (api_ip, 8080)], [True, True], "no policy: frontend reaches api")
        t = time.time()
        apply(policy("default-deny", "shop", {"podSelector": {}, "policyTypes": ["Ingress"]}))
        expect("shop", fe, [api, (api_ip, 8080)], [False, False],
               "default-deny ingress: frontend -> api (Service and pod IP) refused")
        say("policy in force %.1f s after kubectl apply" % (time.time() - t))
        apply(policy("api-from-frontend", "shop", {
            "podSelector": {"matchLabels": {"app": "api"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "frontend"}}}],
                         "ports": [{"port": "http"}]}]}))
        expect("shop", fe, [api, (api_ip, 8080)], [True, True],
               "allow from app=frontend on the named port http: frontend reaches api")
        expect("shop", st, [api], [False], "store (not app=frontend) still refused by api")
        expect("np-other", "client", [api], [False], "a pod of another namespace refused by api")
        apply(policy("api-from-np-other", "shop", {
            "podSelector": {"matchLabels": {"app": "api"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": "np-other"}}, "podSelector": {
                "matchExpressions": [{"key": "role", "operator": "In", "values": ["client"]}]}}],
                "ports": [{"port": 8080, "protocol": "TCP"}]}]}))
        expect("np-other", "client", [api], [True],
               "namespaceSelector + podSelector (matchExpressions) on port 8080: np-other/client reaches api")
        # Egress of the frontend: nothing, then DNS (the kube-dns pseudo-pod), api, the API server.
        # (store's ingress open again, so a refusal below is the frontend's egress.)
        kubectl("delete", "networkpolicy", "default-deny", "-n", "shop")
        expect("shop", fe, [("store.shop.svc.cluster.local", 8080)], [True], "default-deny deleted: store open")
        apply(policy("fe-egress", "shop", {"podSelector": {"matchLabels": {"app": "frontend"}},
                                           "policyTypes": ["Egress"]}))
        expect("shop", fe, [(api_ip, 8080), api], [False, False],
               "default-deny egress of frontend: neither api's pod IP nor DNS")
        apply(policy("fe-egress-allow", "shop", {
            "podSelector": {"matchLabels": {"app": "frontend"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                        "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
                       {"to": [{"podSelector": {"matchLabels": {"app": "api"}}}]},
                       {"to": [{"ipBlock": {"cidr": i["net"]["host_ip"] + "/32"}}]}]}))
        expect("shop", fe, [api, (api_ip, 8080), apiserver, ("store.shop.svc.cluster.local", 8080)],
               [True, True, True, False],
               "egress allows DNS, app=api and the API server by ipBlock; store refused")
        apply(policy("fe-egress-allow", "shop", {
            "podSelector": {"matchLabels": {"app": "frontend"}}, "policyTypes": ["Egress"],
            "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]},
                       {"to": [{"ipBlock": {"cidr": i["net"]["pod_cidr"],
                                            "except": [api_ip + "/32"]}}]}]}))
        expect("shop", fe, [(api_ip, 8080), ("store.shop.svc.cluster.local", 8080), apiserver],
               [False, True, False], "ipBlock pod CIDR except one api pod: that pod refused, store open, "
               "API server (outside the block) refused")
    finally:
        for ns, n in sorted(set(names)):
            kubectl("delete", "networkpolicy", n, "-n", ns, "--ignore-not-found", check_rc=False)
    expect("shop", fe, [api, (api_ip, 8080), apiserver], [True, True, True],
           "policies deleted: everything open again")
    kubectl("delete", "namespace", "np-other", "--wait=true", "--timeout=60s", check_rc=False)


def kubectl_minor():
    r = subprocess.run(["kubectl", "version", "--client", "-o", "json"], capture_output=True, text=True)
    try:
        return int("".join(ch for ch in json.loads(r.stdout)["clientVersion"]["minor"] if ch.isdigit()))
    except (ValueError, KeyError):
        return 0


def t_second():
    """A second cluster next to the first: own index, CIDRs, ports; its down
    leaves the first untouched."""
    ensure_demo()
    other = NAME + "-b"
    t = time.time()
    r = subprocess.run([os.path.join(HERE, "up"), "--name", other], stdout=subprocess.PIPE, text=True)
    check(r.returncode == 0, "second cluster %s up in %.1fs" % (other, time.time() - t))
    try:
        a, b = info(), kc.read_cluster(other)
        check(a["index"] != b["index"] and a["net"]["pod_cidr"] != b["net"]["pod_cidr"] and
              a["api_port"] != b["api_port"], "distinct index (%d, %d), pod CIDR and API port" % (a["index"], b["index"]))
        kb = b["admin_kubeconfig"]
        kubectl("apply", "-f", DEMO, kubeconfig=kb)
        kb_api = Kube(b["server"], b["ca"], cert=b["admin_cert"], key=b["admin_key"])
        wait("demo pods ready in the second cluster", lambda: len([p for p in kb_api.get("/api/v1/namespaces/shop/pods")["items"]
                                                                  if ready(p)]) == 4, 120)
        fe_b = next(p["metadata"]["name"] for p in kb_api.get("/api/v1/namespaces/shop/pods", labelSelector="app=frontend")["items"])
        r = subprocess.run([os.path.join(HERE, "pod-exec"), "--name", other, "shop", fe_b, "--", "python3", "-c", GET_SCRIPT,
                            "http://frontend.shop/", "{}"], capture_output=True, text=True)
        ans = json.loads(r.stdout)
        check(ans.get("next", {}).get("next", {}).get("service") == "store" and
              ans["pod"] == fe_b, "second cluster serves its own demo")
    finally:
        subprocess.run([os.path.join(HERE, "down"), "--name", other])
    check(not [n for n in kc.netns_list() if n.startswith("kb-%s-" % other)], "second cluster's namespaces gone")
    r = http_from_pod("shop", one_pod("frontend"), "http://frontend.shop/")
    check(r.get("next", {}).get("next", {}).get("service") == "store", "first cluster unaffected by the second one's down")


def t_down():
    i = kc.read_cluster(NAME)
    made = set()
    if i and os.path.exists(os.path.join(i["state_dir"], "created-dirs")):
        made = set(open(os.path.join(i["state_dir"], "created-dirs")).read().split()) - {""}
    r = subprocess.run([os.path.join(HERE, "down"), "--name", NAME])
    check(r.returncode == 0, "down exits 0")
    left = [ns for ns in kc.netns_list() if ns.startswith("kb-%s-" % NAME)]
    check(not left, "no network namespaces left (%s)" % left)
    check(not os.path.exists(kc.state_dir(NAME)), "state dir removed")
    if i:
        check(not kc.link_exists(i["host_veth"]), "root veth %s removed" % i["host_veth"])
        check(not kc.marked_pids(i["mark"]), "no processes of the cluster left")
        ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
        check(i["state_dir"] not in ps, "no process refers to the state dir")
    check(not [e for e in os.listdir("/etc/netns") if e.startswith("kb-%s-" % NAME)] if os.path.isdir("/etc/netns") else True,
          "no /etc/netns entries left")
    others = set()
    for f in kc.glob.glob(os.path.join(kc.STATE_ROOT, "kbridge-cluster-*", "*-dirs")):
        others |= set(open(f).read().split())
    # Kept: what another running cluster lists, and the parents of what it
    # lists (they cannot be empty while it runs).
    left = [d for d in made if os.path.exists(d) and d not in others
            and not any(o.startswith(d.rstrip("/") + "/") for o in others)]
    check(not left, "mount point dirs made for pods removed (%d made, %d kept for other running clusters, left: %s)"
          % (len(made), len(made & others), left))
    r = subprocess.run([os.path.join(HERE, "down"), "--name", NAME])
    check(r.returncode == 0, "down again is a no-op")


TESTS = {"up": t_up, "demo": t_demo, "services": t_services, "portforward": t_portforward, "rbac": t_rbac,
         "lifecycle": t_lifecycle, "features": t_features, "netpol": t_netpol, "second": t_second,
         "down": t_down}


def main():
    if len(sys.argv) != 2 or (sys.argv[1] not in TESTS and sys.argv[1] != "all"):
        sys.exit("usage: test_cluster.py %s|all" % "|".join(TESTS))
    if not shutil.which("kubectl"):
        print("SKIP: kubectl not found on PATH; the cluster tests need it")
        sys.exit(SKIP)
    if os.geteuid() != 0:
        print("SKIP: the cluster tests need root (network namespaces)")
        sys.exit(SKIP)
    names = list(TESTS) if sys.argv[1] == "all" else [sys.argv[1]]
    try:
        for n in names:
            say("=== %s" % n)
            TESTS[n]()
    except Fail as e:
        say("FAIL: %s" % e)
        if sys.argv[1] == "all":
            t_down()
        sys.exit(1)
    say("PASS %s" % " ".join(names))


if __name__ == "__main__":
    random.seed()
    main()
