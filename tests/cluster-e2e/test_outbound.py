#!/usr/bin/env python3
"""The local process in the cluster's network (issue 9): every Service of the
namespace on a loopback address of its own, and the route carried on the
developer's own calls. Against the local test cluster, as the restricted
developer of test_connect.py (whose fixture this file reuses).

    test_outbound.py --kbridge BIN --agent BIN [--signer BIN] [PART...]

Parts (default: all, in this order):
    services   alice connects: the ready event lists every Service of shop (not
               kbridge's own) on a 127.x address with its real ports, the env of
               the local process points at them (STORE_SERVICE_HOST, ...), and a
               GET through each reaches the real pods; a Service created while
               connected gets a listener (event) that reaches its pods, a deleted
               one's listener closes; time from connect to all listeners ready
               printed, then again with 200 more Services in the namespace
    otherns    a Service of another namespace that the pod's env names
               (far.outside.svc.cluster.local, where the developer may read
               Services) gets a listener that reaches its endpoints; one the
               developer may not read, or that does not exist, is skipped
    propagate  alice holds api and store, bob holds store only; alice's local api
               calls store through its listener without any route header of its
               own: a request with alice's key enters frontend -> alice's local
               api -> alice's local store; bob's -> real api -> bob's local
               store; unrouted -> real api -> real store; with --no-propagate,
               alice's api call reaches the real store
    several    one session for api and store (--service twice, a --local-port each):
               both taken over, requests with alice's key reach her two local
               servers, the ready event names the second session; Ctrl-C
               restores both; a second Service that does not exist fails the
               session before anything changes; kill -9 of the CLI: the child
               session restores store by itself
    hosts      --hosts --hosts-file F (a copy with foreign lines, no newline at the
               end): F gets a block mapping every name form of every listener to its
               address, a Service created while connected joins it, leaving puts F
               back byte for byte; after kill -9, `kbridge restore` (no --hosts-file:
               the session recorded F) does; and in a private mount namespace with /etc/hosts bind-mounted
               from a temp file (never the machine's own), the default path is
               written in place and `getent hosts store.shop` answers the listener
    httpproxy  the local HTTP/SOCKS5 proxy of the ready event (HTTP_PROXY in the env):
               http:// requests by each name form of store (store, store.shop,
               store.shop.svc, store.shop.svc.cluster.local) reach the real pods,
               CONNECT and SOCKS5 (by name) too; a name the cluster does not know
               ends the connection and the CLI's log says why

    yamlrefs   alice connects from a directory whose kbridge.yaml holds the session
               (namespace, service, local-port, route-as, a forward list) and env
               overrides with $(services:store), $(services:store:http|8080),
               $(forward:store:8080), $(volumes:config), $(env:...) and $$ (one
               replaced by --env on the command line): the ready event's env has
               the resolved values (the volume's directory holds its files)
               (the container's NEXT_URL replaced) and a GET to the
               $(services:store) and $(forward:...) values reaches the real store;
               bad kbridge.yaml files (an unknown key, an unknown reference kind,
               an unknown Service, also with two Services in the session, a port
               the Service lacks, a forward not given, a volume not mounted) exit 2 with
               file:line and what is expected, the cluster unchanged

The cluster is $KBRIDGE_E2E_CLUSTER (default kbe2e), as for test_connect.py.
"""
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import test_connect as tc  # noqa: E402

from test_connect import (NS, Fail, Session, backend, check, kb, kubectl, say,  # noqa: E402
                          snapshot, check_restored, served_by, probe, hdr, wait)

FRONTEND = "http://frontend.%s.svc.cluster.local/" % NS

# The developer's local api: answers who it is and what store answered, calling
# store at the address its env names (as an app written for Kubernetes does)
# and sending no route header of its own: the route comes from kbridge.
LOCAL_API = r'''
import json, os, sys, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
store = "http://%s:%s/" % (os.environ["STORE_SERVICE_HOST"], os.environ["STORE_SERVICE_PORT"])
class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        try:
            with urllib.request.urlopen(store, timeout=10) as r:
                nxt = json.load(r)
        except Exception as e:
            nxt = {"error": str(e)}
        body = json.dumps({"served_by": sys.argv[2], "next": nxt}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
srv = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
srv.daemon_threads = True
srv.serve_forever()
'''


def shop_services():
    items = json.loads(kubectl("get", "services", "-n", NS, "-o", "json").stdout)["items"]
    return {i["metadata"]["name"]: i for i in items
            if i["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by") != "kbridge"}


def get_json(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def services_step(sess):
    """The seconds the "services" progress step took, from the events so far."""
    for ev in sess.events:
        if ev.get("event") == "progress" and ev.get("step") == "services":
            return float(ev["message"].rsplit("(", 1)[1].split(" ")[0])
    raise Fail("no services progress event: %s" % [e.get("step") for e in sess.events])


def extra_service(name, port):
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": NS, "labels": {"kbridge-test": "outbound"}},
            "spec": {"selector": {"app": "store"},
                     "ports": [{"name": "web", "port": port, "targetPort": 8080}]}}


def apply(objs):
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                  "items": objs}))


def part_services():
    before = snapshot()
    svcs = shop_services()
    _, pa = backend("alice-local")
    t = time.time()
    alice = Session("alice", pa)
    ev = alice.ready()
    took = time.time() - t
    listed = {s["name"]: s for s in ev.get("services", [])}
    check(set(listed) == set(svcs),
          "the ready event lists every Service of %s: %s" % (NS, sorted(listed)))
    addrs = [s["address"] for s in listed.values()]
    check(all(a.startswith("127.") and a != "127.0.0.1" for a in addrs) and
          len(set(addrs)) == len(addrs), "each on a loopback address of its own: %s" % addrs)
    for name, s in listed.items():
        want = sorted(p["port"] for p in svcs[name]["spec"]["ports"])
        check(sorted(p["local"] for p in s["ports"]) == want,
              "%s listens on its real ports %s" % (name, want))
    env = ev["env"]
    st = listed["store"]
    check(env.get("STORE_SERVICE_HOST") == st["address"] and
          env.get("STORE_SERVICE_PORT") == "8080" and
          env.get("STORE_PORT_8080_TCP") == "tcp://%s:8080" % st["address"] and
          env.get("FRONTEND_SERVICE_HOST") == listed["frontend"]["address"],
          "the local process's env points at the listeners (STORE_SERVICE_HOST=%s)" %
          env.get("STORE_SERVICE_HOST"))
    a = get_json("http://%s:8080/" % st["address"])
    check(a.get("service") == "store" and a.get("pod", "").startswith("store-"),
          "GET store through its listener answers from the real pod %s" % a.get("pod"))
    fe = listed["frontend"]
    a = get_json("http://%s:%d/" % (fe["address"], fe["ports"][0]["local"]))
    check(a.get("service") == "frontend", "GET frontend through its listener: %s" % a.get("service"))
    say("figure: connect to ready with %d Service listeners: %.2f s (listing and binding %.3f s)" %
        (len(listed), took, services_step(alice)))

    # a Service created while connected gets a listener; deleted, it closes
    apply([extra_service("outbound-extra", 9090)])
    t = time.time()
    new = None
    while new is None and time.time() - t < 30:
        e = alice.next_event(30)
        if e and e.get("step") == "service" and "outbound-extra" in e.get("message", ""):
            new = e
    check(new is not None, "a progress event for the new Service after %.2f s: %s" %
          (time.time() - t, new and new["message"]))
    addr = new["message"].split(" -> ")[1].split(" ")[0]
    # The new Service's cluster IP is served a moment after it is created (the
    # node programs it): a client in the cluster would wait the same.
    def reached():
        try:
            return get_json("http://%s/" % addr, timeout=3).get("service") == "store"
        except Exception:
            return False
    t = time.time()
    wait("the new Service's listener to reach its pods", reached, 20)
    check(True, "the new Service's listener %s reaches its pods (%.2f s)" % (addr, time.time() - t))
    kubectl("delete", "service", "-n", NS, "outbound-extra")

    def closed():
        try:
            urllib.request.urlopen("http://%s/" % addr, timeout=2)
            return False
        except Exception:
            return True
    wait("the deleted Service's listener to close", closed, 30)
    check(True, "the deleted Service's listener is closed")
    ev = alice.stop()
    check(ev["restored"] is True, "alice leaves: restored")
    check(closed(), "no listener left after disconnect")

    # 200 Services more: the time to all listeners ready. Meanwhile a local
    # server holds 0.0.0.0:8080 (store's port) on every address: store gets a
    # free port on its address instead, and its variables say which.
    apply([extra_service("outbound-%03d" % i, 8000 + i) for i in range(200)])
    import socket
    squat = socket.socket()
    squat.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squat.bind(("0.0.0.0", 8080))
    squat.listen(1)
    try:
        t = time.time()
        alice = Session("alice", pa)
        ev = alice.ready()
        took = time.time() - t
        n = len(ev.get("services", []))
        check(n == len(svcs) + 200, "%d Services listed with 200 more in the namespace" % n)
        st = [x for x in ev["services"] if x["name"] == "store"][0]
        lp = st["ports"][0]["local"]
        check(lp != 8080 and ev["env"].get("STORE_SERVICE_PORT") == str(lp) and
              get_json("http://%s:%d/" % (st["address"], lp)).get("service") == "store",
              "0.0.0.0:8080 held by a local server: store listens on %s:%d instead, its "
              "variables say so, and it reaches the pods" % (st["address"], lp))
        squat.close()
        a = get_json("http://%s/" % next(s["address"] + ":8199" for s in ev["services"]
                                          if s["name"] == "outbound-199"))
        check(a.get("service") == "store", "the 200th extra Service's listener reaches its pods")
        say("figure: connect to ready with %d Service listeners: %.2f s (listing and binding "
            "%.3f s)" % (n, took, services_step(alice)))
        ev = alice.stop()
        check(ev["restored"] is True, "alice leaves: restored")
    finally:
        squat.close()
        kubectl("delete", "services", "-n", NS, "-l", "kbridge-test=outbound", "--wait=false")
    check_restored(before, "the services part")


def part_otherns():
    env = [{"name": "FAR_URL", "value": "http://far.outside.svc.cluster.local:9000/x"},
           {"name": "DENIED", "value": "db.kube-system.svc:5432"},
           {"name": "MISSING", "value": "nope.outside.svc"}]
    kubectl("set", "env", "deployment/store", "-n", NS,
            *["%s=%s" % (e["name"], e["value"]) for e in env])
    try:
        kubectl("rollout", "status", "deployment/store", "-n", NS, "--timeout=120s")
        pods = json.loads(kubectl("get", "pods", "-n", NS, "-l", "app=store", "-o",
                                  "json").stdout)["items"]
        ip = [p for p in pods if not p["metadata"].get("deletionTimestamp")][0]["status"]["podIP"]
        far = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "outside"}},
               {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "far", "namespace": "outside"},
                "spec": {"ports": [{"name": "web", "port": 9000, "targetPort": 8080}]}},
               {"apiVersion": "v1", "kind": "Endpoints",
                "metadata": {"name": "far", "namespace": "outside"},
                "subsets": [{"addresses": [{"ip": ip}],
                             "ports": [{"name": "web", "port": 8080}]}]},
               {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "read-services", "namespace": "outside"},
                "rules": [{"apiGroups": [""], "resources": ["services"], "verbs": ["get"]}]},
               {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "read-services", "namespace": "outside"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                            "name": "read-services"},
                "subjects": [{"kind": "ServiceAccount", "name": "kbridge-e2e-dev",
                              "namespace": NS}]}]
        wait("namespace outside of an earlier run to go",
             lambda: kubectl("get", "namespace", "outside", check_rc=False).returncode != 0, 90)
        apply(far[:1])
        apply(far[1:])
        store_before = tc.normalized("service", "store")
        _, ps = backend("alice-local-store")
        alice = Session("alice", ps, "--service", "store")
        ev = alice.ready()
        other = [x for x in ev.get("services", []) if x.get("namespace") == "outside"]
        check(len(other) == 1 and other[0]["name"] == "far" and
              other[0]["ports"][0]["local"] == 9000,
              "far.outside (named in the env) listens on its real port: %s" % other)
        check(not [x for x in ev["services"] if x.get("namespace") == "kube-system"],
              "a Service the developer may not read (db.kube-system) is skipped")
        check("FAR_SERVICE_HOST" not in ev["env"],
              "no link variables for another namespace's Service (a pod gets none)")
        a = get_json("http://%s:9000/y" % other[0]["address"])
        check(a.get("service") == "store" and a.get("path") == "/y",
              "GET through far's listener reaches its endpoint (the store pod)")
        ev = alice.stop()
        check(ev["restored"] is True and tc.normalized("service", "store") == store_before,
              "alice leaves: store restored")
    finally:
        kubectl("set", "env", "deployment/store", "-n", NS, *["%s-" % e["name"] for e in env],
                check_rc=False)
        kubectl("delete", "namespace", "outside", "--wait=false", check_rc=False)
        kubectl("rollout", "status", "deployment/store", "-n", NS, "--timeout=120s",
                check_rc=False)


def local_api(key):
    """A free port and the path of LOCAL_API, for a session of key."""
    port = tc.free_port()
    path = os.path.join(tc.TMP, "local_api.py")
    with open(path, "w") as f:
        f.write(LOCAL_API)
    return port, path


def chain(answer):
    """Who served each hop: frontend -> api -> store."""
    out = []
    while answer:
        out.append(served_by(answer))
        answer = answer.get("next")
    return out


def part_propagate():
    before = snapshot()
    _, ps_alice = backend("alice-local-store")
    _, ps_bob = backend("bob-local-store")
    store_a = Session("alice", ps_alice, "--service", "store")
    store_a.ready()
    store_b = Session("bob", ps_bob, "--service", "store")
    store_b.ready()
    port, path = local_api("alice")
    api_a = Session("alice", port, "--", sys.executable, path, str(port), "alice-local-api")
    api_a.ready()
    wait("alice's local api to listen", lambda: _listening(port), 20)
    ans = probe([(FRONTEND, hdr("alice")), (FRONTEND, hdr("bob")), (FRONTEND, {})])
    got = [chain(a) for a in ans]
    say("chains: %s" % got)
    check(got[0] == ["frontend", "alice-local-api", "alice-local-store"],
          "alice's request: frontend -> alice's local api -> (route propagated by kbridge) "
          "alice's local store")
    check(got[1] == ["frontend", "api", "bob-local-store"],
          "bob's request: frontend -> real api -> bob's local store")
    check(got[2] == ["frontend", "api", "store"], "unrouted: frontend -> real api -> real store")
    ev = api_a.stop()
    check(ev is not None, "alice's api session ends")
    api_a = Session("alice", port, "--no-propagate", "--", sys.executable, path, str(port),
                    "alice-local-api")
    api_a.ready()
    wait("alice's local api to listen", lambda: _listening(port), 20)
    got = chain(probe([(FRONTEND, hdr("alice"))])[0])
    check(got == ["frontend", "alice-local-api", "store"],
          "--no-propagate: alice's local api's call reaches the real store (%s)" % got)
    for s in (api_a, store_b, store_a):
        s.stop()
    check_restored(before, "the propagate part")


def _listening(port):
    import socket
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def part_httpproxy():
    import socket
    before = snapshot()
    _, pa = backend("alice-local")
    alice = Session("alice", pa)
    ev = alice.ready()
    addr = ev.get("http_proxy", "")
    check(addr.startswith("127.0.0.1:") and ev["env"].get("HTTP_PROXY") == "http://" + addr and
          ev["env"].get("ALL_PROXY") == "socks5h://" + addr and
          "localhost" in ev["env"].get("NO_PROXY", ""),
          "the ready event names the proxy %s and the env points at it" % addr)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": "http://" + addr}))
    for name in ("store", "store." + NS, "store.%s.svc" % NS, "store.%s.svc.cluster.local" % NS):
        t = time.time()
        with opener.open("http://%s:8080/x" % name, timeout=15) as r:
            a = json.loads(r.read())
        check(a.get("service") == "store" and a.get("path") == "/x",
              "http://%s:8080/x through the proxy answers from the real pod %s (%.2f s)" %
              (name, a.get("pod"), time.time() - t))
    host, port = addr.rsplit(":", 1)

    def get_through(sock):
        f = sock.makefile("rb")
        sock.sendall(b"GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
        data = f.read()
        try:
            return json.loads(data.split(b"\r\n\r\n", 1)[1])
        except (ValueError, IndexError):
            say("unexpected answer: %r" % data[:300])
            return {}
    s = socket.create_connection((host, int(port)), timeout=15)
    s.sendall(b"CONNECT api.%s:8080 HTTP/1.1\r\n\r\n" % NS.encode())
    line = b""
    while not line.endswith(b"\r\n\r\n"):
        line += s.recv(1)
    check(line.startswith(b"HTTP/1.1 200"), "CONNECT api.%s:8080: %r" % (NS, line[:30]))
    a = get_through(s)
    check(served_by(a) == "alice-local",
          "a request inside the CONNECT tunnel to api got alice's route: her local server")
    s.close()
    s = socket.create_connection((host, int(port)), timeout=15)
    s.sendall(b"\x05\x01\x00")
    check(s.recv(2) == b"\x05\x00", "SOCKS5 greeting")
    s.sendall(b"\x05\x01\x00\x03\x08frontend\x00\x50")
    check(s.recv(10)[:2] == b"\x05\x00", "SOCKS5 CONNECT frontend:80")
    a = get_through(s)
    check(a.get("service") == "frontend", "a request through SOCKS5 reaches the real frontend")
    s.close()
    s = socket.create_connection((host, int(port)), timeout=15)
    s.sendall(b"CONNECT nosuch.%s.svc.cluster.local:80 HTTP/1.1\r\n\r\n" % NS.encode())
    f = s.makefile("rb")
    f.readline()
    f.readline()
    t = time.time()
    rest = f.read()
    check(rest == b"", "an unknown name: the connection ends (%.2f s)" % (time.time() - t))
    s.close()
    wait("the CLI's log to say why", lambda: "nosuch.%s.svc.cluster.local" % NS in alice.stderr(), 20)
    why = [x for x in alice.stderr().splitlines() if "nosuch" in x]
    check(True, "the log says why: %s" % why[-1][-160:])
    ev = alice.stop()
    check(ev["restored"] is True, "alice leaves: restored")
    check_restored(before, "the httpproxy part")


def part_several():
    import signal
    before = snapshot()
    store_before = tc.normalized("service", "store")

    def versions():
        """The resourceVersions of api's and store's Services: any takeover changes them."""
        return kubectl("get", "service", "api", "store", "-n", NS, "-o",
                       "jsonpath={.items[*].metadata.resourceVersion}").stdout.split()
    rv_before = versions()
    _, pa = backend("alice-local-api")
    _, ps = backend("alice-local-store")
    alice = Session("alice", pa, "--service", "api", "--service", "store", "--local-port", str(ps))
    ev = alice.ready()
    more = ev.get("sessions", [])
    check(len(more) == 1 and more[0]["service"] == "store" and more[0]["local_port"] == ps,
          "the ready event names the second session: %s" % more)
    ans = probe([("http://api.%s.svc.cluster.local:8080/" % NS, hdr("alice")),
                 ("http://store.%s.svc.cluster.local:8080/" % NS, hdr("alice")),
                 ("http://store.%s.svc.cluster.local:8080/" % NS, {})])
    got = [served_by(a) for a in ans]
    check(got == ["alice-local-api", "alice-local-store", "store"],
          "alice's key reaches her local api and her local store, others the real store: %s" % got)
    st = kb("status", env={"XDG_RUNTIME_DIR": tc.TMP})
    rows = [x.split()[:2] for x in st.stdout.splitlines()[1:]]
    check(st.returncode == 0 and [NS, "store"] in rows and [NS, "api"] in rows,
          "kbridge status lists both sessions: %s" % st.stdout.strip().replace("\n", " | "))
    ev = alice.stop()
    check(ev["restored"] is True, "Ctrl-C: the session ends, restored")
    wait("store to be restored too", lambda: tc.normalized("service", "store") == store_before, 30)
    check_restored(before, "the several part")
    check(True, "store is as it was")

    # a second Service that does not exist: nothing changes
    s2 = Session("alice", pa, "--service", "api", "--service", "nosuch", "--local-port", str(ps))
    ev = s2.until(("ready", "error"))
    check(ev and ev["event"] == "error" and "nosuch" in ev["message"],
          "a second Service that does not exist: %s" % (ev and ev.get("message")))
    s2.p.wait(60)
    check(s2.p.returncode == 1, "exit 1")
    check_restored(before, "a failed second Service")

    # kill -9 of the CLI: the child session (store) leaves and restores by itself
    alice = Session("alice", pa, "--service", "api", "--service", "store", "--local-port", str(ps))
    alice.ready()
    alice.p.send_signal(signal.SIGKILL)
    t = time.time()
    wait("store to be restored by its own session", lambda: tc.normalized("service", "store") ==
         store_before, 60)
    check(True, "kill -9: store restored by its session in %.1f s" % (time.time() - t))
    kb("restore", "-n", NS, "--service", "api")
    check_restored(before, "kill -9 of a two-Service session and kbridge restore of api")


class DirSession(Session):
    """`kbridge connect --output json` run in directory cwd: everything else comes
    from cwd/kbridge.yaml (and extra)."""

    def __init__(self, key, cwd, *extra):
        self.key = key
        e = dict(os.environ, KUBECONFIG=tc.restricted(), XDG_RUNTIME_DIR=tc.TMP)
        self.t0 = time.time()
        self.errf = open(os.path.join(tc.TMP, "connect-%s-dir.err" % key), "w+")
        self.p = subprocess.Popen([tc.ARGS.kbridge, "connect", "--output", "json"] + list(extra),
                                  cwd=cwd, stdout=subprocess.PIPE, stderr=self.errf, text=True,
                                  env=e)
        tc.PROCS.append(self.p)
        self.events = []
        self.q = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()


SESSION_YAML = """# the session's settings: what would be flags
namespace: %(ns)s
service: api
local-port: %(port)d
route-as: alice
agent-image: %(image)s
lease-seconds: 3600
log-level: info
forward:
  - 127.0.0.1:0=store:8080
"""


def part_yamlrefs():
    before = snapshot()
    _, pa = backend("alice-local")
    work = tempfile.mkdtemp(prefix="kbridge-yaml-", dir=tc.TMP)
    head = SESSION_YAML % {"ns": NS, "port": pa, "image": tc.IMAGE}
    nhead = head.count("\n")
    with open(os.path.join(work, "kbridge.yaml"), "w") as f:
        f.write(head + """env:
  NEXT_URL: http://$(services:store)
  STORE_HTTP: $(services:store:http)
  STORE_8080: $(services:store:8080)
  STORE_FWD: $(forward:store:8080)
  STORE_AGAIN: $(env:STORE_HTTP)/x
  LINK_HOST: $(env:STORE_SERVICE_HOST)
  PRICE: 5$$ (from the file)
  SHOP_CONFIG: $(volumes:config)
""")
    pods = json.loads(kubectl("get", "deployment", "api", "-n", NS, "-o", "json").stdout)
    ctr_env = pods["spec"]["template"]["spec"]["containers"][0]["env"]
    check(any(v["name"] == "NEXT_URL" for v in ctr_env), "api's container sets NEXT_URL itself")
    alice = DirSession("alice", work, "--env", "PRICE=6$$")
    ev = alice.ready()
    check(ev["route"] == "alice" and ev["local_port"] == pa and
          ev["forwards"] and ev["forwards"][0]["target"] == "store:8080",
          "service, local-port, route-as and the forward list came from kbridge.yaml (route %s, "
          "local port %d, forwards %s)" % (ev["route"], ev["local_port"], ev["forwards"]))
    env = ev["env"]
    st = next(s for s in ev["services"] if s["name"] == "store")
    store = "%s:%d" % (st["address"], st["ports"][0]["local"])
    fwd = ev["forwards"][0]["listen"]
    say("env: %s" % {k: env.get(k) for k in ("NEXT_URL", "STORE_HTTP", "STORE_8080", "STORE_FWD",
                                              "STORE_AGAIN", "LINK_HOST", "PRICE")})
    check(env.get("NEXT_URL") == "http://" + store,
          "$(services:store): the container's NEXT_URL replaced by http://%s" % store)
    check(env.get("STORE_HTTP") == store and env.get("STORE_8080") == store,
          "$(services:store:http) and $(services:store:8080): %s" % store)
    check(env.get("STORE_FWD") == fwd and fwd.startswith("127.0.0.1:"),
          "$(forward:store:8080): the forward's local address %s" % fwd)
    check(env.get("STORE_AGAIN") == store + "/x", "$(env:STORE_HTTP)/x: an override above it")
    check(env.get("LINK_HOST") == env.get("STORE_SERVICE_HOST") and env.get("LINK_HOST"),
          "$(env:STORE_SERVICE_HOST): the service link's value %s" % env.get("LINK_HOST"))
    check(env.get("PRICE") == "6$", "--env PRICE=6$$ on the command line wins over the file's")
    vdir = env.get("SHOP_CONFIG", "")
    check(vdir == env.get("KBRIDGE_VOLUMES", "?") + "/etc/shop",
          "$(volumes:config): the volumes directory and the mountPath /etc/shop: %s" % vdir)
    cm = json.loads(kubectl("get", "configmap", "shop-config", "-n", NS, "-o", "json").stdout)
    files = {k: open(os.path.join(vdir, k)).read() for k in cm["data"]
             if os.path.isfile(os.path.join(vdir, k))}
    check(files == cm["data"], "the directory holds the ConfigMap's files, byte for byte (%s)" %
          sorted(files))
    a = get_json(env["NEXT_URL"] + "/")
    check(a.get("service") == "store" and a.get("pod", "").startswith("store-"),
          "GET the $(services:store) value reaches the real store (pod %s)" % a.get("pod"))
    a = get_json("http://%s/" % env["STORE_FWD"])
    check(a.get("service") == "store", "GET the $(forward:store:8080) value reaches the real store")
    ev = alice.stop()
    check(ev["restored"] is True, "alice leaves: restored")
    check_restored(before, "the yamlrefs session")

    # bad files: exit 2 before anything in the cluster changes, with file:line
    store_before = tc.normalized("service", "store")

    def versions():
        """The resourceVersions of api's and store's Services: any takeover changes them."""
        return kubectl("get", "service", "api", "store", "-n", NS, "-o",
                       "jsonpath={.items[*].metadata.resourceVersion}").stdout.split()
    rv_before = versions()
    n = nhead + 3  # the line of the second env entry (B)
    bad = [
        ("an unknown key", head.replace("forward:", "forwad:"),
         'kbridge.yaml:%d: "forwad" is not an option of `kbridge connect`' % (nhead - 1)),
        ("an unknown reference kind", head + "env:\n  A: x\n  B: http://$(service:store)\n",
         'kbridge.yaml:%d: --env: B: $(service:store): unknown reference kind "service" '
         '(expected services, forward, volumes or env)' % n),
        ("an unknown Service", head + "env:\n  A: x\n  B: http://$(services:nosuch)\n",
         'kbridge.yaml:%d: env B: $(services:nosuch): no Service "nosuch" in namespace %s '
         '(its Services: ' % (n, NS)),
        ("a port the Service lacks", head + "env:\n  A: x\n  B: $(services:store:grpc)\n",
         'kbridge.yaml:%d: env B: $(services:store:grpc): Service store has no TCP port grpc '
         '(its ports: 8080 (http))' % n),
        ("a forward not given", head + "env:\n  A: x\n  B: $(forward:api:8080)\n",
         'kbridge.yaml:%d: env B: $(forward:api:8080): no --forward to api:8080 (forwards to: '
         'store:8080)' % n),
        ("an unknown Service, with two Services in the session (checked before store's "
         "session starts)",
         head.replace("service: api\n", "service: [api, store]\n").replace(
             "local-port: %d\n" % pa, "local-port: [%d, %d]\n" % (pa, tc.free_port())) +
         "env:\n  A: x\n  B: http://$(services:nosuch)\n",
         'kbridge.yaml:%d: env B: $(services:nosuch): no Service "nosuch"' % n),
        ("a volume the container does not mount", head + "env:\n  A: x\n  B: $(volumes:cfg)/x\n",
         'kbridge.yaml:%d: env B: $(volumes:cfg): the container mounts no volume "cfg" (its '
         'mounts: config, secret)' % n),
    ]
    for what, text, want in bad:
        with open(os.path.join(work, "kbridge.yaml"), "w") as f:
            f.write(text)
        t = time.time()
        r = subprocess.run([tc.ARGS.kbridge, "connect"], cwd=work, capture_output=True,
                           text=True, timeout=60,
                           env=dict(os.environ, KUBECONFIG=tc.restricted(),
                                    XDG_RUNTIME_DIR=tc.TMP))
        err = r.stderr.strip()
        check(r.returncode == 2 and want in err and len(err.splitlines()) == 1,
              "%s: exit %d in %.2f s: %s" % (what, r.returncode, time.time() - t, err))
        check(snapshot() == before and not tc.kbridge_objects() and
              tc.normalized("service", "store") == store_before and versions() == rv_before,
              "%s: the cluster is unchanged (api and store never written: resourceVersions %s)" %
              (what, " ".join(rv_before)))
    shutil.rmtree(work, ignore_errors=True)



def hosts_map(text):
    m = {}
    for line in text.splitlines():
        f = line.split("#", 1)[0].split()
        for name in f[1:]:
            m.setdefault(name, f[0])
    return m


def part_hosts():
    import hashlib
    import signal
    before = snapshot()
    machine_hosts = hashlib.sha256(open("/etc/hosts", "rb").read()).hexdigest()
    orig = b"127.0.0.1 localhost\n10.9.9.9 foreign.example # keep me"
    path = os.path.join(tc.TMP, "hosts")
    with open(path, "wb") as f:
        f.write(orig)
    _, pa = backend("alice-local")
    alice = Session("alice", pa, "--hosts", "--hosts-file", path)
    ev = alice.ready()
    text = open(path).read()
    m = hosts_map(text)
    want = {}
    for x in ev["services"]:
        for n in (x["name"], "%s.%s" % (x["name"], NS), "%s.%s.svc" % (x["name"], NS),
                  "%s.%s.svc.cluster.local" % (x["name"], NS)):
            want[n] = x["address"]
    check(all(m.get(k) == v for k, v in want.items()) and len(want) >= 16,
          "the hosts file maps every name form of %d Services to its listener" % len(ev["services"]))
    check(text.startswith(orig.decode()) and m.get("foreign.example") == "10.9.9.9",
          "the lines that were there are kept, first")
    apply([extra_service("outbound-hosts", 9091)])
    wait("the new Service in the hosts file",
         lambda: "outbound-hosts.%s.svc.cluster.local" % NS in open(path).read(), 30)
    check(True, "a Service created while connected joins the block")
    kubectl("delete", "service", "-n", NS, "outbound-hosts")
    ev = alice.stop()
    check(ev["restored"] is True and open(path, "rb").read() == orig,
          "leaving puts the hosts file back byte for byte")
    sdir = os.path.join(tc.TMP, "kbridge", "sessions")
    records = lambda: [n for n in os.listdir(sdir) if n.startswith("hosts.")]
    check(records() == [], "leaving drops the session's record of the hosts file")
    alice = Session("alice", pa, "--hosts", "--hosts-file", path)
    alice.ready()
    alice.p.send_signal(signal.SIGKILL)
    alice.p.wait(10)
    check("# kbridge begin" in open(path).read(), "kill -9: the block is left behind")
    r = kb("restore", "-n", NS, "--service", "api", env={"XDG_RUNTIME_DIR": tc.TMP})
    check(r.returncode == 0 and open(path, "rb").read() == orig,
          "kbridge restore (no --hosts-file: the session's record names F) puts it back byte "
          "for byte")
    check(records() == [], "and drops the dead session's record")
    check_restored(before, "the hosts part")

    # the default path, /etc/hosts, in a mount namespace of its own
    fake = os.path.join(tc.TMP, "etc-hosts")
    with open(fake, "wb") as f:
        f.write(b"127.0.0.1 localhost\n")
    argv = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', fake,
            tc.ARGS.kbridge, "connect", "-n", NS, "--service", "api", "--local-port", str(pa),
            "--output", "json", "--agent-image", tc.IMAGE, "--route-as", "alice",
            "--lease-seconds", "3600", "--hosts"]
    env = dict(os.environ, KUBECONFIG=tc.restricted(), XDG_RUNTIME_DIR=tc.TMP)
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         env=env)
    tc.PROCS.append(p)
    ready = None
    for line in p.stdout:
        e = json.loads(line)
        if e["event"] in ("ready", "error"):
            ready = e
            break
    check(ready and ready["event"] == "ready", "connect --hosts in its own mount namespace: %s" %
          (ready and ready.get("message", "ready")))
    store = [x["address"] for x in ready["services"] if x["name"] == "store"][0]
    g = subprocess.run(["nsenter", "-t", str(p.pid), "-m", "getent", "hosts", "store." + NS],
                       capture_output=True, text=True)
    check(g.returncode == 0 and g.stdout.split()[0] == store,
          "getent hosts store.%s in that namespace: %s" % (NS, g.stdout.strip()))
    p.send_signal(signal.SIGINT)
    p.wait(60)
    check(open(fake, "rb").read() == b"127.0.0.1 localhost\n",
          "after leaving, that /etc/hosts is as it was")
    check(hashlib.sha256(open("/etc/hosts", "rb").read()).hexdigest() == machine_hosts,
          "the machine's own /etc/hosts was never touched")
    check_restored(before, "the hosts part in a mount namespace")



PARTS = {"services": part_services, "otherns": part_otherns, "propagate": part_propagate,
         "several": part_several, "hosts": part_hosts, "httpproxy": part_httpproxy,
         "yamlrefs": part_yamlrefs}


def cleanup():
    for svc in ("api", "store"):
        kb("restore", "-n", NS, "--service", svc, kubeconfig=tc.info()["admin_kubeconfig"])
    kubectl("delete", "services", "-n", NS, "-l", "kbridge-test=outbound", "--wait=false",
            check_rc=False)


def main():
    return tc.run_main(PARTS, cleanup)


if __name__ == "__main__":
    sys.exit(main())
