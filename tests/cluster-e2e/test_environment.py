#!/usr/bin/env python3
"""What real clusters put around a takeover (issue 17, items 8, 10, 11, 14),
against the local test cluster, as the restricted developer of test_connect.py
(whose fixture this file reuses).

    test_environment.py --kbridge BIN --agent BIN [--signer BIN] [PART...]

Parts (default: all, in this order):
    admission  a ResourceQuota with no room for another pod refuses the agent pod:
               connect stops within seconds (time printed) with the API server's
               message, error event reason agent_refused, exit 1, cluster as
               before; a LimitRange whose minimum the agent's default request is
               under refuses it too, and --agent-requests within it (from a
               kbridge.yaml) makes it fit; the agent pod flags (imagePullSecrets,
               nodeSelector, tolerations, resources, labels, annotations) are read
               back from the created Deployment and pod
    proxy      HTTPS_PROXY (with user:password) names a CONNECT proxy on
               loopback, and the kubeconfig names the API server by a host only
               that proxy can resolve, so no direct route exists: connect gets
               ready, a request routed to alice from a pod reaches her local
               server through the tunnel, and the proxy saw the tunnel's CONNECT
               (a connection to the API server that stays open); a socks5://
               proxy is refused before any change (exit 2, reason proxy)

The cluster is $KBRIDGE_E2E_CLUSTER (default kbe2e), as for test_connect.py.
"""
import base64
import json
import os
import re
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import test_connect as tc  # noqa: E402

from test_connect import (NS, Fail, Session, backend, check, kb, kubectl, say,  # noqa: E402
                          snapshot, kbridge_objects, served_by, probe, API, hdr, wait)


def services():
    items = json.loads(kubectl("get", "services", "-n", NS, "-o", "json").stdout)["items"]
    return sorted(json.dumps({"n": i["metadata"]["name"], "spec": i["spec"],
                              "rv": i["metadata"]["resourceVersion"]}) for i in items)


def connect_fails(argv, timeout=150):
    """Run connect to its end; (exit code, seconds, error events, stdout steps)."""
    t = time.time()
    r = kb(*(argv + ["--output", "json"]), env={"XDG_RUNTIME_DIR": tc.TMP}, timeout=timeout)
    secs = time.time() - t
    evs = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    errs = [e for e in evs if e["event"] == "error"]
    if not errs:
        say("stderr: %s" % r.stderr[-800:])
    return r.returncode, secs, errs, [e.get("step") for e in evs if e["event"] == "progress"]


def base_argv(key="alice"):
    return ["connect", "-n", NS, "--service", "api", "--local-port", str(tc.free_port()),
            "--agent-image", tc.IMAGE, "--route-as", key, "--lease-seconds", "3600"]


def pods_now():
    items = json.loads(kubectl("get", "pods", "-n", NS, "-o", "json").stdout)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp") and
            p.get("status", {}).get("phase") not in ("Succeeded", "Failed")]


def part_admission():
    # 1. A ResourceQuota with no room for one more pod.
    before, svcs = snapshot(), services()
    n = len(pods_now())
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": "e2e-no-room", "namespace": NS},
        "spec": {"hard": {"pods": str(n)}}}))
    try:
        wait("the quota to be counted", lambda: json.loads(kubectl(
            "get", "resourcequota", "e2e-no-room", "-n", NS, "-o", "json").stdout).get(
                "status", {}).get("used", {}).get("pods") == str(n), 60)
        rc, secs, errs, steps = connect_fails(base_argv())
        msg = errs[0]["message"] if errs else ""
        say("quota: connect ended after %.1f s (--timeout 120): exit %d, %s" % (secs, rc, msg[:300]))
        check(rc == 1 and errs and errs[0].get("reason") == "agent_refused" and
              "exceeded quota: e2e-no-room" in msg and "refused to create the agent pod" in msg,
              "a ResourceQuota refusing the agent pod: exit 1, reason agent_refused, the API "
              "server's message quoted")
        check(secs < 30, "stopped at once, not after --timeout (%.1f s)" % secs)
        check("create-agent" in steps, "it had started creating the agent (steps %s)" % steps)
        wait("the cluster as before the refused connect",
             lambda: snapshot() == before and not kbridge_objects(), 30)
        check(services() == svcs,
              "cluster as before: Service and Deployment equal, no kbridge object, the same "
              "Services")
    finally:
        kubectl("delete", "resourcequota", "e2e-no-room", "-n", NS, "--ignore-not-found")

    # 2. A LimitRange whose minimum is above the agent's default memory request.
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "LimitRange",
        "metadata": {"name": "e2e-min", "namespace": NS},
        "spec": {"limits": [{"type": "Container", "min": {"memory": "48Mi"}}]}}))
    try:
        rc, secs, errs, steps = connect_fails(base_argv())
        msg = errs[0]["message"] if errs else ""
        say("limitrange: connect ended after %.1f s: exit %d, %s" % (secs, rc, msg[:300]))
        check(rc == 1 and errs and errs[0].get("reason") == "agent_refused" and
              "minimum memory usage per Container is 48Mi" in msg and "--agent-requests" in msg,
              "a LimitRange refusing the agent pod: reason agent_refused, its message and the "
              "flag that helps")
        check(secs < 30, "stopped at once (%.1f s)" % secs)
        wait("the cluster as before", lambda: snapshot() == before and not kbridge_objects(), 30)
        check(True, "cluster as before")

        # 3. Every agent pod option, some from a kbridge.yaml, the rest as flags.
        cfg = os.path.join(tc.TMP, "kbridge.yaml")
        with open(cfg, "w") as f:
            f.write("# the project's kbridge settings\n"
                    "agent-requests: {cpu: 60m, memory: 64Mi}\n"
                    "agent-limits: cpu=200m,memory=128Mi\n"
                    "agent-label:\n  team: payments\n  cost-center: dev\n"
                    "agent-annotation:\n  - sidecar.istio.io/inject=false\n")
        _, port = backend("alice")
        s = Session("alice", port, "--config", cfg, "--image-pull-secret", "regcred",
                    "--node-selector", "kubernetes.io/os=linux",
                    "--node-selector", "kbridge.dev/test-node=true",
                    "--toleration", "dedicated=dev:NoSchedule", "--toleration", "spot")
        s.ready()
        dep = json.loads(kubectl("get", "deployment", "kbridge-agent-api", "-n", NS, "-o",
                                 "json").stdout)
        tmpl = dep["spec"]["template"]
        spec = tmpl["spec"]
        ctr = spec["containers"][0]
        say("agent pod template: %s" % json.dumps({
            "labels": tmpl["metadata"].get("labels"),
            "annotations": tmpl["metadata"].get("annotations"),
            "imagePullSecrets": spec.get("imagePullSecrets"),
            "nodeSelector": spec.get("nodeSelector"), "tolerations": spec.get("tolerations"),
            "resources": ctr.get("resources")}))
        check(ctr["resources"] == {"requests": {"cpu": "60m", "memory": "64Mi"},
                                   "limits": {"cpu": "200m", "memory": "128Mi"}},
              "resources from kbridge.yaml in the Deployment")
        check(tmpl["metadata"]["labels"].get("team") == "payments" and
              tmpl["metadata"]["labels"].get("cost-center") == "dev" and
              tmpl["metadata"]["labels"].get("kbridge.dev/agent") == "api",
              "extra labels beside kbridge's")
        check(tmpl["metadata"].get("annotations", {}).get("sidecar.istio.io/inject") == "false",
              "extra annotation")
        check(spec.get("imagePullSecrets") == [{"name": "regcred"}], "imagePullSecrets")
        check(spec.get("nodeSelector") == {"kubernetes.io/os": "linux",
                                           "kbridge.dev/test-node": "true"}, "nodeSelector")
        check(spec.get("tolerations") == [
            {"key": "dedicated", "operator": "Equal", "value": "dev", "effect": "NoSchedule"},
            {"key": "spot", "operator": "Exists"}], "tolerations")
        pods = [p for p in pods_now() if p["metadata"]["labels"].get("kbridge.dev/agent") == "api"]
        check(pods and pods[0]["metadata"]["labels"].get("team") == "payments" and
              pods[0]["spec"]["containers"][0]["resources"]["requests"]["memory"] == "64Mi",
              "the running agent pod carries them (admitted by the LimitRange)")
        a = probe([(API, {}), (API, hdr("alice"))])
        check([served_by(x) for x in a] == ["api", "alice"], "and routes (%s)" % [
            served_by(x) for x in a])
        ev = s.stop()
        check(ev.get("restored") is True, "restored on disconnect")
        wait("the cluster as before", lambda: snapshot() == before and not kbridge_objects(), 30)
        check(True, "cluster as before")
    finally:
        kubectl("delete", "limitrange", "e2e-min", "-n", NS, "--ignore-not-found")


class ConnectProxy:
    """An HTTP CONNECT proxy on loopback wanting Basic credentials. Names ending
    in .invalid are dialled at `real_host` (only this proxy can reach them).
    Counts CONNECTs and tracks how long each relayed connection stays open."""

    def __init__(self, real_host, user, password):
        self.real_host = real_host
        self.auth = "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()
        self.lock = threading.Lock()
        self.connects = []       # (target, opened at)
        self.open_now = 0
        self.refused = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        head = b""
        while b"\r\n\r\n" not in head:
            d = c.recv(4096)
            if not d:
                return c.close()
            head += d
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        auth = [ln.split(":", 1)[1].strip() for ln in lines[1:]
                if ln.lower().startswith("proxy-authorization:")]
        if len(parts) < 2 or parts[0] != "CONNECT" or auth != [self.auth]:
            with self.lock:
                self.refused += 1
            c.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                      b"Content-Length: 0\r\n\r\n")
            return c.close()
        host, port = parts[1].rsplit(":", 1)
        host = host.strip("[]")
        try:
            u = socket.create_connection((self.real_host if host.endswith(".invalid") else host,
                                          int(port)), timeout=10)
            u.settimeout(None)
        except OSError as e:
            c.sendall(("HTTP/1.1 502 Bad Gateway\r\n\r\n%s" % e).encode())
            return c.close()
        with self.lock:
            self.connects.append((parts[1], time.time()))
            self.open_now += 1
        c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        done = threading.Event()

        def pipe(a, b):
            try:
                while True:
                    d = a.recv(65536)
                    if not d:
                        break
                    b.sendall(d)
            except OSError:
                pass
            for x in (a, b):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            if done.is_set():
                with self.lock:
                    self.open_now -= 1
            done.set()
        threading.Thread(target=pipe, args=(u, c), daemon=True).start()
        pipe(c, u)

    def close(self):
        self.sock.close()


def part_proxy():
    host = tc.info()["net"]["host_ip"]
    with open(tc.DEV_KUBECONFIG) as f:
        text = f.read()
    server = re.search(r"server: (https://\S+)", text).group(1)
    port = server.rsplit(":", 1)[1]
    only = "https://kbridge-e2e-apiserver.invalid:%s" % port
    # The name resolves nowhere but in the proxy; the certificate is checked
    # against a name it carries.
    text = text.replace("server: %s" % server,
                        "server: %s\n    tls-server-name: kubernetes.default.svc" % only)
    kcfg = os.path.join(tc.TMP, "only-via-proxy.kubeconfig")
    with open(kcfg, "w") as f:
        f.write(text)
    os.chmod(kcfg, 0o600)
    px = ConnectProxy(host, "kb dev", "p@ss:w")
    env = {"HTTPS_PROXY": "http://kb%%20dev:p%%40ss%%3Aw@127.0.0.1:%d" % px.port,
           "NO_PROXY": "example.com,192.168.0.0/16"}  # matches neither the API server nor its name
    before = snapshot()
    try:
        _, pa = backend("alice-proxied")
        s = tc.Session("alice", pa, "--timeout", "40", kubeconfig=kcfg, env=env)
        ev = s.until(("ready", "error"), 120)
        if ev is None or ev["event"] != "ready":
            raise Fail("connect through the proxy did not get ready: %s; stderr: %s" % (
                ev, s.stderr()[-1500:]))
        check(True, "connect through HTTPS_PROXY got ready in %.1f s (API server reachable only "
              "through the proxy)" % ev["seconds"])
        who = [served_by(a) for a in probe([(API, hdr("alice")), (API, {})])]
        check(who == ["alice-proxied", "api"],
              "from a pod: alice's header -> her local server through the tunnel, no header -> "
              "the real pods (%s)" % who)
        with px.lock:
            targets = sorted(set(t for t, _ in px.connects))
            n, still = len(px.connects), px.open_now
        check(targets == ["kbridge-e2e-apiserver.invalid:%s" % port] and px.refused == 0,
              "the proxy relayed %d CONNECTs, all to the API server (%s), none refused" %
              (n, targets))
        check(still >= 1, "%d relayed connection(s) still open: the tunnel's carrier" % still)
        s.stop()
        tc.check_restored(before, "a session through a proxy")
        # A proxy the tunnel cannot use: refused before anything is written.
        r = kb(*(base_argv() + ["--output", "json"]), kubeconfig=kcfg,
               env={"HTTPS_PROXY": "socks5://127.0.0.1:1080", "XDG_RUNTIME_DIR": tc.TMP})
        evs = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
        errs = [e for e in evs if e["event"] == "error"]
        msg = errs[0]["message"] if errs else r.stderr
        say("socks5: exit %d: %s" % (r.returncode, msg))
        check(r.returncode == 2 and errs and errs[0].get("reason") == "proxy" and
              "socks5://127.0.0.1:1080" in msg and "only http://" in msg and
              "$HTTPS_PROXY" in msg, "a socks5:// proxy is refused with the reason, exit 2")
        check(snapshot() == before and not kbridge_objects(), "cluster untouched by the refusal")
    finally:
        px.close()


PARTS = {"admission": part_admission, "proxy": part_proxy}


def cleanup():
    kb("restore", "-n", NS, "--service", "api", kubeconfig=tc.info()["admin_kubeconfig"])


def main():
    return tc.run_main(PARTS, cleanup)


if __name__ == "__main__":
    sys.exit(main())
