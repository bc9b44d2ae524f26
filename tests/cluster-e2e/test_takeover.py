#!/usr/bin/env python3
"""Takeovers on Services shaped like those of real clusters (issue 17), against
the local test cluster, as the restricted developer of test_connect.py (whose
fixture, snapshots and probes this file reuses).

    test_takeover.py --kbridge BIN --agent BIN [--signer BIN] [PART...]

Parts (default: all, in this order):
    gitops     during a takeover, `kubectl apply -f deploy/demo/shop.yaml` and
               `kubectl apply --server-side --force-conflicts --field-manager=flux`
               merge the manifest's selector with the agent's: the session puts the
               real pods back and takes over again within seconds (unrouted-request
               failures during each re-apply printed, bounded); a revert beyond the
               re-takeover budget ends the session with an error event (reason
               service_changed) and the cluster is restored; with the CLI killed,
               `kbridge restore` of a merged selector restores the original
    longkey    a route key of 63 characters is refused before anything changes
               (its annotation name would be too long), exit 2
    headless   a headless Service (clusterIP None, as in front of a StatefulSet) is
               refused with the reason, exit 2, cluster untouched
    domain     the agent reaches the shadow Service by <name>.<ns>.svc, not by a
               hard-coded cluster.local name; unrouted requests still answered
    canary     Service `multi` (80 -> named targetPort "http") in front of two
               Deployments, stable (http=8080) and canary (http=8081): inspect names
               both, unrouted requests during the takeover reach both with no
               failure (count printed), --replace is refused naming both (exit 2)
    dual       Service `dual` maps 8080 -> 8080 and 80 -> "http" (=8080 in the api
               pods): both ports answer during the takeover, routed and unrouted
    affinity   Service `echo` (pods that echo their request headers) with
               sessionAffinity ClientIP: during the takeover unrouted and routed
               requests are answered and carry the client's address (as the
               agent sees it: the test cluster masquerades Service traffic to
               the node bridge address) in X-Forwarded-For and Forwarded, an
               existing X-Forwarded-For appended to; the shadow Service has no affinity
               (the agent is its only client); afterwards the Service, its
               sessionAffinity and timeout included, equals what it was
    netpol     a default-deny namespace (NetworkPolicies for DNS and the shop's own
               paths): unrouted and routed requests pass during the takeover
               (failures counted), kbridge's own policies exist while connected and
               are gone after disconnect and after the agent's lease restore (CLI
               killed); without the right to create NetworkPolicies connect is
               refused (exit 2, reason forbidden, cluster untouched)
    policy     Service `local` (LoadBalancer, externalTrafficPolicy Local, so it
               has a healthCheckNodePort): during the takeover the policy is
               Cluster (the agent's two pods serve every node), unrouted and routed
               requests answered; a patch back to Local is undone by the session;
               after disconnect, after `kbridge restore` of a session killed
               with -9, and after the agent's own restore when its lease runs out,
               the Service's spec equals what it was, healthCheckNodePort
               included. (The test cluster's API server, 1.20, has no
               internalTrafficPolicy field; that one is covered by unit.takeover.)
    pausegitops connect --pause-gitops: the Service carries
               kustomize.toolkit.fluxcd.io/reconcile=disabled while connected and
               loses it on disconnect, on `kbridge restore` and on the agent's
               lease restore; one that was there before is left, during and after
    restorewait  with the node's Service rules 1.5 s behind the API (as kube-proxy
               on a busy cluster), unrouted requests from a pod in a loop while
               alice disconnects (3 rounds) and while `kbridge restore` undoes a
               takeover whose CLI was killed: failures counted; restore keeps the
               agent and the shadow Service until the Endpoints show the original
               pods and 2 s more (the restored event says so); at most 1 failure
               per round
    lostpeer   bob and then alice leave: alice restores. alice and bob
               connected; bob's CLI stopped (SIGSTOP) until the
               agent has dropped his tunnels (its 15 s silence detector), his
               lease still running: alice disconnects and the Service stays taken
               over (her disconnected event says restored false, naming bob);
               unrouted requests still answered; bob's route works again once he
               is resumed (SIGCONT). Again with bob never coming back: the agent
               restores when his lease ends (time after his loss printed)
    disrupt    one unrouted and one routed (alice) request every 0.1 s from the
               frontend pod while one agent pod is deleted (3 tries), then
               evicted through the Eviction API as kubectl drain does (3
               tries): failures counted (none allowed), the session survives;
               a second eviction right after the first is refused by the
               agent's PodDisruptionBudget (HTTP 429)
    agentgone  the agent cannot come back (node cordoned, both agent pods
               deleted): with the CLI running, it gives the Service back after
               15 s and ends (reason agent_lost); with the CLI killed -9,
               kbridge-signer's janitor does it (30 s + a 5 s round); seconds
               to the Service's selector back printed and bounded

The cluster is $KBRIDGE_E2E_CLUSTER (default kbe2e), as for test_connect.py.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import test_connect as tc  # noqa: E402

from test_connect import (NS, Fail, Session, backend, check, check_restored, kb,  # noqa: E402
                          kubectl, say, served_by, snapshot, probe, API, hdr, wait,
                          kbridge_objects)

SHOP = os.path.join(tc.REPO, "deploy", "demo", "shop.yaml")

# Unrouted requests (no key) to api from the frontend pod, one every 0.1 s for
# DURATION seconds; prints "go" after the first answer, then one JSON list of
# [seconds since start, ok] at the end.
LOOP = r'''
import json, sys, time, urllib.request
url, duration = sys.argv[1], float(sys.argv[2])
t0 = time.time(); out = []
while time.time() - t0 < duration:
    t = time.time()
    try:
        r = urllib.request.urlopen(url, timeout=1)
        ok = "service" in json.loads(r.read().decode())
    except Exception:
        ok = False
    out.append([round(t - t0, 2), ok])
    if len(out) == 1:
        print("go", flush=True)
    time.sleep(max(0, 0.1 - (time.time() - t)))
print(json.dumps(out), flush=True)
'''


def selector(name="api"):
    return json.loads(kubectl("get", "service", name, "-n", NS, "-o", "json").stdout)["spec"].get(
        "selector")


def wait_step(sess, steps, timeout=30):
    """The next progress event whose step is in steps, or an error event."""
    end = time.time() + timeout
    while True:
        ev = sess.next_event(max(0.1, end - time.time()))
        if ev is None:
            raise Fail("connect ended while waiting for %s" % (steps,))
        if ev["event"] == "error" or (ev["event"] == "progress" and ev.get("step") in steps):
            return ev


# The api Service of deploy/demo/shop.yaml as Flux renders it for a server-side
# apply. The API server 1.20 refuses server-side apply of ports without a
# protocol ("associative list with keys has an element that omits key field
# protocol"), so it is spelt out here.
SSA_API = json.dumps({
    "apiVersion": "v1", "kind": "Service", "metadata": {"name": "api", "namespace": NS},
    "spec": {"selector": {"app": "api"},
             "ports": [{"name": "http", "port": 8080, "targetPort": 8080, "protocol": "TCP"}]}})


def reapply_under_load(argv, duration=9.0, at=2.0, stdin=None):
    """Run the unrouted-request loop in the frontend pod, re-apply the manifest
    `at` seconds in; returns (failures, total, failures in the last 3 s)."""
    p = subprocess.Popen([os.path.join(tc.CLUSTER_DIR, "pod-exec"), "--name", tc.NAME, NS,
                          tc.frontend_pod(), "--", "python3", "-c", LOOP, API, str(duration)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tc.PROCS.append(p)
    if p.stdout.readline().strip() != "go":
        raise Fail("request loop did not start: %s" % p.stderr.read()[-500:])
    time.sleep(at)
    r = kubectl(*argv, input=stdin)
    say("%s: %s" % (" ".join(argv[:4]), r.stdout.strip().replace("\n", "; ")))
    out, err = p.communicate(timeout=duration + 30)
    res = json.loads(out.strip().splitlines()[-1])
    fails = [t for t, ok in res if not ok]
    late = [t for t in fails if t > duration - 3]
    return len(fails), len(res), len(late), fails


def part_gitops():
    before = snapshot()
    _, pa = backend("alice")
    alice = Session("alice", pa)
    alice.ready()
    agent_sel = {"kbridge.dev/agent": "api"}
    check(selector() == agent_sel, "api taken over: selector %s" % selector())
    figures = []
    applies = [("kubectl apply", ["apply", "-f", SHOP], None),
               ("server-side apply as flux", ["apply", "--server-side", "--force-conflicts",
                                              "--field-manager=flux", "-f", "-"], SSA_API)]
    for what, argv, stdin in applies:
        nfail, total, late, fails = reapply_under_load(argv, stdin=stdin)
        figures.append((what, nfail, total))
        say("%s during the takeover: %d of %d unrouted requests failed (at %s s)" % (
            what, nfail, total, fails[:3] + (["..."] if len(fails) > 3 else [])))
        ev = wait_step(alice, ("retake",))
        check(ev["event"] == "progress" and alice.events[-2].get("step") == "selector-reverted",
              "%s: the session reported the revert (%s) and took over again" % (
                  what, alice.events[-2].get("message", "")[:150]))
        sel = selector()
        check(sel == agent_sel, "%s: the Service selects the agent again (%s)" % (what, sel))
        check(late == 0, "%s: no unrouted request failed in the last 3 s of the loop" % what)
        check(nfail <= 25, "%s: at most 25 unrouted requests failed (%d)" % (what, nfail))
        a = probe([(API, hdr("alice")), (API, {})])
        check([served_by(x) for x in a] == ["alice", "api"],
              "%s: alice's route and the real pods answer again (%s)" % (
                  what, [served_by(x) for x in a]))
    # The budget: 3 re-takeovers in 10 minutes; the 4th revert ends the session.
    kubectl("apply", "-f", SHOP)
    ev = wait_step(alice, ("retake",))
    check(ev["event"] == "progress", "third revert: taken over again (%s)" % ev.get("message"))
    t = time.time()
    kubectl("apply", "-f", SHOP)
    ev = wait_step(alice, ("__none__",))
    check(ev.get("reason") == "service_changed" and "reverted" in ev.get("message", ""),
          "fourth revert within 10 minutes ends the session in %.1f s: %s" % (
              time.time() - t, ev.get("message", "")[:160]))
    ev = alice.until(("disconnected",), 60)
    alice.p.wait(30)
    check(ev and ev.get("restored") is True and alice.p.returncode == 1,
          "the session restored the cluster and exited 1")
    check_restored(before, "a takeover ended by repeated re-applies")

    # The CLI gone (kill -9): the merged selector is repaired by restore.
    alice = Session("alice", pa)
    alice.ready()
    alice.p.kill()
    alice.p.wait()
    kubectl("apply", "-f", SHOP)
    merged = selector()
    check(merged == {"app": "api", "kbridge.dev/agent": "api"},
          "with no session left, a re-apply merges the selectors: %s" % merged)
    r = kb("restore", "-n", NS, "--service", "api")
    check(r.returncode == 0 and "selector restored to" in r.stdout and "left as" not in r.stdout,
          "kbridge restore recognises the merged selector as ours: %s" % r.stdout.strip()[:200])
    check_restored(before, "restore of a merged selector")
    for what, n, total in figures:
        say("FIGURE unrouted failures during %s: %d of %d" % (what, n, total))


def refused(argv, words, reason, what, timeout=40):
    """connect with argv must exit 2 with an error event of reason, the cluster
    untouched."""
    # The agent pods of an earlier part may still be finishing their drain.
    wait("no kbridge object left by an earlier part", lambda: not kbridge_objects(), 30)
    before = snapshot()
    db = json.loads(kubectl("get", "services", "-n", NS, "-o", "json").stdout)["items"]
    try:
        r = kb(*(argv + ["--output", "json"]), env={"XDG_RUNTIME_DIR": tc.TMP}, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Fail("%s: connect was still running after %d s (it took the Service over)" % (
            what, timeout))
    errs = [json.loads(x) for x in r.stdout.splitlines() if '"event":"error"' in x]
    progress = [json.loads(x).get("step") for x in r.stdout.splitlines() if '"progress"' in x]
    msg = errs[0]["message"] if errs else r.stderr.strip()[-300:]
    check(r.returncode == 2 and errs and errs[0].get("reason") == reason and
          all(w in msg for w in words),
          "%s: exit %d, reason %s: %s" % (what, r.returncode, errs[0].get("reason") if errs else None,
                                          msg[:200]))
    check(not {"create-agent", "switch-selector", "undo"} & set(progress),
          "%s: refused before the first write (steps %s)" % (what, progress))
    after = json.loads(kubectl("get", "services", "-n", NS, "-o", "json").stdout)["items"]
    strip = lambda items: sorted(json.dumps({"n": i["metadata"]["name"], "spec": i["spec"],
                                             "rv": i["metadata"]["resourceVersion"]})
                                 for i in items)
    check(snapshot() == before and not kbridge_objects() and strip(db) == strip(after),
          "%s: cluster untouched (every Service as it was, no kbridge object)" % what)


def part_longkey():
    port = tc.free_port()
    base = ["connect", "-n", NS, "--service", "api", "--local-port", str(port),
            "--agent-image", tc.IMAGE, "--route-as"]
    refused(base + ["k" * 63], ["--route-as", "63 characters", "at most 57"], "bad_flag",
            "a 63-character route key")
    refused(base + ["k" * 58], ["--route-as", "58 characters"], "bad_flag",
            "a 58-character route key")
    # The longest key that fits works end to end.
    _, pk = backend("longkey")
    key = "k" * 57
    s = Session(key, pk)
    s.ready()
    a = probe([(API, hdr(key))])
    check(served_by(a[0]) == "longkey", "a 57-character route key connects and routes")
    before_stop = selector()
    ev = s.stop()
    check(before_stop == {"kbridge.dev/agent": "api"} and ev.get("restored") is True,
          "and restores on disconnect")


def part_headless():
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "db", "namespace": NS},
        "spec": {"clusterIP": "None", "selector": {"app": "api"},
                 "ports": [{"name": "http", "port": 8080}]}}))
    try:
        port = tc.free_port()
        refused(["connect", "-n", NS, "--service", "db", "--local-port", str(port),
                 "--agent-image", tc.IMAGE, "--route-as", "alice"],
                ["headless", "clusterIP: None", "ClusterIP Service"], "unsupported",
                "a headless Service")
        check(selector("db") == {"app": "api"}, "the headless Service still selects its pods")
    finally:
        kubectl("delete", "service", "db", "-n", NS, "--wait=false")


def part_domain():
    _, pa = backend("alice")
    s = Session("alice", pa)
    s.ready()
    dep = json.loads(kubectl("get", "deployment", "kbridge-agent-api", "-n", NS, "-o",
                             "json").stdout)
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    fb = [a for a in args if "kbridge-origin" in a]
    check(fb == ["api-kbridge-origin.shop.svc:8080"] and not any("cluster.local" in a for a in args),
          "the agent reaches the shadow Service by <name>.<ns>.svc, no cluster domain assumed "
          "(%s)" % fb)
    a = probe([(API, {}), (API, hdr("alice")), (API, {})])
    check([served_by(x) for x in a] == ["api", "alice", "api"],
          "unrouted requests reach the real pods through that name (%s)" % [served_by(x) for x in a])
    ev = s.stop()
    check(ev.get("restored") is True, "restored on disconnect")


# Unrouted requests from the frontend pod, THREADS at a time (so the agent opens
# several upstream connections, each balanced anew by the shadow Service), COUNT
# in all; prints one JSON list of the answers' "version" or "error: ...".
SPREAD = r'''
import json, sys, threading, urllib.request
url, count, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out, lock = [], threading.Lock()
def run(n):
    for _ in range(n):
        try:
            r = urllib.request.urlopen(url, timeout=5)
            v = json.loads(r.read().decode()).get("version", "?")
        except Exception as e:
            v = "error: %s" % e
        with lock:
            out.append(v)
ts = [threading.Thread(target=run, args=(count // threads,)) for _ in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps(out))
'''


def spread(url, count=48, threads=8):
    r = subprocess.run([os.path.join(tc.CLUSTER_DIR, "pod-exec"), "--name", tc.NAME, NS,
                        tc.frontend_pod(), "--", "python3", "-c", SPREAD, url, str(count),
                        str(threads)], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise Fail("request loop failed: %s" % r.stderr[-800:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def api_deployment(name, port, labels):
    """A Deployment of the demo api whose container port "http" is port."""
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [{
                         "name": "api", "image": "kbridge-demo/api:1",
                         "ports": [{"name": "http", "containerPort": port}],
                         "env": [{"name": "PORT", "value": str(port)},
                                 {"name": "VERSION", "value": name}],
                         "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"},
                                            "periodSeconds": 1}}]}}}}


def pods_ready(selector, n):
    def ready():
        pods = json.loads(kubectl("get", "pods", "-n", NS, "-l", selector, "-o",
                                  "json").stdout)["items"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        return len(live) == n and all(
            any(c["type"] == "Ready" and c["status"] == "True"
                for c in p.get("status", {}).get("conditions", [])) for p in live)
    wait("%d ready pod(s) with %s" % (n, selector), ready, 120)


def normalized_service(name):
    s = json.loads(kubectl("get", "service", name, "-n", NS, "-o", "json").stdout)
    return {"selector": s["spec"].get("selector"), "ports": s["spec"]["ports"],
            "annotations": {k: v for k, v in s["metadata"].get("annotations", {}).items()
                            if not k.startswith("kubectl.kubernetes.io/")}}


def part_canary():
    objs = [api_deployment("stable", 8080, {"app": "multi", "track": "stable"}),
            api_deployment("canary", 8081, {"app": "multi", "track": "canary"}),
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "multi", "namespace": NS},
             "spec": {"selector": {"app": "multi"},
                      "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}}]
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                  "items": objs}))
    try:
        pods_ready("app=multi", 2)
        url = "http://multi.%s.svc.cluster.local/" % NS
        before = normalized_service("multi")
        # Ready pods reach kube-proxy through the EndpointSlice a moment later
        # on the real node: the precondition may take a few tries.
        tries = []
        wait("multi:80 to reach stable and canary", lambda: tries.append(spread(url)) or
             sorted(set(tries[-1])) == ["canary", "stable"], 30, 0.5)
        got = tries[-1]
        check(sorted(set(got)) == ["canary", "stable"],
              "before the takeover, multi:80 reaches stable and canary (%d requests, try %d)"
              % (len(got), len(tries)))
        _, pa = backend("alice")
        s = Session("alice", pa, "--service", "multi")
        s.ready()
        got = spread(url)
        fails = [v for v in got if v not in ("stable", "canary")]
        say("FIGURE canary: %d of %d unrouted requests failed during the takeover (%s)" % (
            len(fails), len(got), sorted(set(fails))[:2]))
        insp = [e.get("message", "") for e in s.events
                if e.get("event") == "progress" and e.get("step") == "inspect"]
        check(any("Deployment stable" in m and "Deployment canary" in m for m in insp),
              "inspect names both workloads: %s" % (insp[-1][:200] if insp else None))
        check(not fails, "no unrouted request failed during the takeover")
        check(sorted(set(got)) == ["canary", "stable"],
              "unrouted requests reached stable and canary, each on its own http port (%d/%d)" %
              (got.count("stable"), got.count("canary")))
        a = probe([(url, hdr("alice"))])
        check(served_by(a[0]) == "alice", "alice's requests to multi:80 reach her")
        ev = s.stop()
        check(ev.get("restored") is True, "restored on disconnect")
        wait("multi restored", lambda: normalized_service("multi") == before and
             not kbridge_objects(), 30)
        check(True, "Service multi equals what it was before, no kbridge object left")
        # --replace would scale one workload and leave the other serving.
        port = tc.free_port()
        refused(["connect", "-n", NS, "--service", "multi", "--local-port", str(port),
                 "--agent-image", tc.IMAGE, "--replace"],
                ["--replace", "Deployment stable", "Deployment canary"], "unsupported",
                "--replace on a Service in front of two workloads")
    finally:
        kubectl("delete", "service,deployment", "multi", "stable", "canary", "-n", NS,
                "--wait=false", check_rc=False)


def part_dual():
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "dual", "namespace": NS},
        "spec": {"selector": {"app": "api"},
                 "ports": [{"name": "direct", "port": 8080, "targetPort": 8080},
                           {"name": "web", "port": 80, "targetPort": "http"}]}}))
    try:
        before = normalized_service("dual")
        u80 = "http://dual.%s.svc.cluster.local/" % NS
        u8080 = "http://dual.%s.svc.cluster.local:8080/" % NS
        _, pa = backend("alice")
        s = Session("alice", pa, "--service", "dual")
        s.ready()
        who = [served_by(a) for a in probe([(u80, {}), (u80, hdr("alice")), (u8080, {}),
                                            (u8080, hdr("alice"))])]
        say("FIGURE dual during the takeover: 80 -> %s, 8080 -> %s" % (who[:2], who[2:]))
        check(who == ["api", "alice", "api", "alice"],
              "during the takeover both ports answer: 80 (named http) and 8080 (%s)" % who)
        ev = s.stop()
        check(ev.get("restored") is True, "restored on disconnect")
        wait("dual restored", lambda: normalized_service("dual") == before and
             not kbridge_objects(), 30)
        check(True, "Service dual equals what it was before, no kbridge object left")
    finally:
        kubectl("delete", "service", "dual", "-n", NS, "--wait=false", check_rc=False)


def echo_objects(name, service_spec):
    """A Deployment of the header-echoing demo app and a Service `name` for it."""
    labels = {"app": name}
    dep = api_deployment(name, 8080, labels)
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = "kbridge-demo/echo:1"
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
           "spec": dict({"selector": labels,
                         "ports": [{"name": "http", "port": 8080, "targetPort": "http"}]},
                        **service_spec)}
    return {"apiVersion": "v1", "kind": "List", "items": [dep, svc]}


def service_spec(name):
    """The Service's spec and annotations, without the fields the API server
    fills in or bumps."""
    s = json.loads(kubectl("get", "service", name, "-n", NS, "-o", "json").stdout)
    return {"spec": s["spec"],
            "annotations": {k: v for k, v in s["metadata"].get("annotations", {}).items()
                            if not k.startswith("kubectl.kubernetes.io/")}}


def pod_ip(name):
    return json.loads(kubectl("get", "pod", name, "-n", NS, "-o", "json").stdout)["status"]["podIP"]


def part_affinity():
    kubectl("apply", "-f", "-", input=json.dumps(echo_objects("echo", {
        "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 1800}}})))
    try:
        pods_ready("app=echo", 1)
        url = "http://echo.%s.svc:8080/" % NS
        before = service_spec("echo")
        # The process node masquerades all Service traffic (docs/test-cluster.md):
        # the agent's peer is the node bridge address, x.y.z.1 of the client pod's
        # subnet, not the pod itself. kube-proxy on the real node does not: the
        # peer is the client pod. That peer is what the agent must report.
        client = pod_ip(tc.frontend_pod())
        if not tc.REAL_NODE:
            client = client.rsplit(".", 1)[0] + ".1"
        _, pa = backend("alice")
        s = Session("alice", pa, "--service", "echo")
        s.ready()
        shadow = json.loads(kubectl("get", "service", "echo-kbridge-origin", "-n", NS, "-o",
                                    "json").stdout)["spec"]
        check(shadow.get("sessionAffinity", "None") == "None",
              "the shadow Service has no session affinity (its only client is the agent): %s" %
              shadow.get("sessionAffinity"))
        a = probe([(url, {}), (url, hdr("alice")), (url, {"X-Forwarded-For": "203.0.113.7"})])
        who = [served_by(x) for x in a]
        check(who == ["echo", "alice", "echo"],
              "during the takeover unrouted and routed requests are answered (%s)" % who)
        h = [{k.lower(): v for k, v in x.get("headers", {}).items()} for x in a]
        say("FIGURE headers at the original pod: X-Forwarded-For %r, Forwarded %r" % (
            h[0].get("x-forwarded-for"), h[0].get("forwarded")))
        check(h[0].get("x-forwarded-for") == client and h[0].get("forwarded") == "for=" + client
              and h[0].get("x-forwarded-proto") == "http",
              "the original pod sees the agent's client %s (the node bridge on the process node, "
              "which masquerades; the client pod itself on the real node) in X-Forwarded-For and "
              "Forwarded" % client)
        check(h[1].get("x-forwarded-for") == client,
              "alice's process sees the client too (%s)" % h[1].get("x-forwarded-for"))
        check(h[2].get("x-forwarded-for") == "203.0.113.7, " + client,
              "an existing X-Forwarded-For is appended to (%s)" % h[2].get("x-forwarded-for"))
        ev = s.stop()
        check(ev.get("restored") is True, "restored on disconnect")
        wait("echo restored", lambda: service_spec("echo") == before and
             not kbridge_objects(), 30)
        check(True, "Service echo equals what it was before, sessionAffinity ClientIP and its "
              "timeout included; no kbridge object left")
    finally:
        kubectl("delete", "service,deployment", "echo", "-n", NS, "--wait=false",
                check_rc=False)


def netpol(name, spec):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": NS}, "spec": spec}


def app(a):
    return {"podSelector": {"matchLabels": {"app": a}}}


# A default-deny namespace as a platform team would write it: nothing in or out,
# DNS for everyone, and exactly the shop's own paths (frontend -> api:http -> store).
SHOP_POLICIES = [
    netpol("default-deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    netpol("allow-dns", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
        "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}]}),
    netpol("api-from-frontend", dict(app("api"), ingress=[{"from": [app("frontend")],
                                                             "ports": [{"port": "http"}]}])),
    netpol("frontend-to-api", dict(app("frontend"), policyTypes=["Egress"],
                                   egress=[{"to": [app("api")], "ports": [{"port": 8080}]}])),
    netpol("api-to-store", dict(app("api"), policyTypes=["Egress"],
                                egress=[{"to": [app("store")], "ports": [{"port": 8080}]}])),
    netpol("store-from-api", dict(app("store"), ingress=[{"from": [app("api")]}])),
]


def netpols():
    return sorted(p["metadata"]["name"] for p in json.loads(kubectl(
        "get", "networkpolicies", "-n", NS, "-o", "json").stdout)["items"])


def unrouted_loop(duration=5.0):
    """(failures, total) of unrouted requests from the frontend, one per 0.1 s."""
    r = subprocess.run([os.path.join(tc.CLUSTER_DIR, "pod-exec"), "--name", tc.NAME, NS,
                        tc.frontend_pod(), "--", "python3", "-c", LOOP, API, str(duration)],
                       capture_output=True, text=True, timeout=duration + 60)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    return len([1 for _, ok in res if not ok]), len(res)


def part_netpol():
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                  "items": SHOP_POLICIES}))
    theirs = netpols()
    try:
        def shop_works():
            return served_by(probe([(API, {})])[0]) == "api"
        wait("the shop to answer under its policies", shop_works, 20)
        check(True, "default-deny namespace: frontend -> api works through the shop's own policies")
        before = snapshot()
        _, pa = backend("alice")
        lease = 6
        alice = Session("alice", pa, "--lease-seconds", str(lease))
        alice.ready()
        steps = [e.get("message", "") for e in alice.events
                 if e.get("event") == "progress" and e.get("step") == "netpol"]
        say("connect said: %s" % (steps[:2],))
        nfail, total = unrouted_loop()
        routed = [served_by(a) for a in probe([(API, hdr("alice"))] * 5)]
        rfail = len([w for w in routed if w != "alice"])
        say("FIGURE netpol: unrouted %d of %d failed, routed %d of %d failed (%s)" % (
            nfail, total, rfail, len(routed), sorted(set(routed))))
        check(nfail == 0 and rfail == 0,
              "in the default-deny namespace, unrouted and routed requests pass during the takeover")
        mine = sorted(set(netpols()) - set(theirs))
        check("kbridge-agent-api" in mine and any(m.startswith("kbridge-api-egress-") for m in mine),
              "kbridge added its own policies: %s" % mine)
        pol = json.loads(kubectl("get", "networkpolicy", "kbridge-agent-api", "-n", NS, "-o",
                                 "json").stdout)
        check(pol["metadata"]["labels"].get("app.kubernetes.io/managed-by") == "kbridge" and
              pol["spec"]["podSelector"] == {"matchLabels": {"kbridge.dev/agent": "api"}},
              "the agent's policy selects only the agent pod")
        ev = alice.stop()
        check(ev.get("restored") is True, "restored on disconnect")
        wait("kbridge's policies gone", lambda: netpols() == theirs, 30)
        check_restored(before, "a takeover in a default-deny namespace")

        # The agent's own restore needs the API server: kill -9 the CLI, the lease runs out.
        alice = Session("alice", pa, "--lease-seconds", str(lease))
        alice.ready()
        alice.p.kill()
        alice.p.wait()
        t = time.time()
        check_restored(before, "kill -9 of the CLI in a default-deny namespace (the agent's lease)")
        wait("kbridge's policies gone", lambda: netpols() == theirs, 30)
        say("FIGURE netpol: the agent restored the cluster %.1f s after kill -9 (lease %d s)" % (
            time.time() - t, lease))

        # Without the right to create NetworkPolicies, or to read them: refused,
        # nothing changed.
        role = json.loads(kubectl("get", "role", "kbridge-e2e-developer", "-n", NS, "-o",
                                  "json").stdout)
        for k in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
            role["metadata"].pop(k, None)
        port = tc.free_port()
        argv = ["connect", "-n", NS, "--service", "api", "--local-port", str(port),
                "--agent-image", tc.IMAGE, "--route-as", "alice"]
        try:
            for verbs, words, what in (
                    (["get", "list"], ["NetworkPolicies", "may not create networkpolicies",
                                       "kbridge-agent-api", "developer-role.yaml"],
                     "no right to create NetworkPolicies in a namespace whose policies isolate api"),
                    ([], ["may not list networkpolicies", "developer-role.yaml"],
                     "no right to list NetworkPolicies")):
                cut = json.loads(json.dumps(role))
                cut["rules"] = [r for r in cut["rules"] if "networkpolicies" not in r.get("resources", [])]
                if verbs:
                    cut["rules"].append({"apiGroups": ["networking.k8s.io"],
                                         "resources": ["networkpolicies"], "verbs": verbs})
                kubectl("replace", "-f", "-", input=json.dumps(cut))
                refused(argv, words, "forbidden", what)
        finally:
            kubectl("replace", "-f", "-", input=json.dumps(role))
    finally:
        kubectl("delete", "networkpolicy", "-n", NS, "--ignore-not-found",
                *[p["metadata"]["name"] for p in SHOP_POLICIES], check_rc=False)


def part_policy():
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "local", "namespace": NS},
           "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                    "internalTrafficPolicy": "Local", "selector": {"app": "api"},
                    "ports": [{"name": "http", "port": 8080, "targetPort": 8080}]}}
    # --validate=false: kubectl 1.20's schema does not know internalTrafficPolicy;
    # an API server that has it (1.21+) stores it, 1.20 drops it.
    kubectl("apply", "--validate=false", "-f", "-", input=json.dumps(svc))
    try:
        before = service_spec("local")
        spec = before["spec"]
        say("Service local as stored: externalTrafficPolicy %s, internalTrafficPolicy %s, "
            "healthCheckNodePort %s" % (spec.get("externalTrafficPolicy"),
                                        spec.get("internalTrafficPolicy", "(no such field)"),
                                        spec.get("healthCheckNodePort")))
        check(spec.get("externalTrafficPolicy") == "Local" and spec.get("healthCheckNodePort"),
              "Service local has externalTrafficPolicy Local and a healthCheckNodePort")
        url = "http://local.%s.svc:8080/" % NS
        _, pa = backend("alice")
        s = Session("alice", pa, "--service", "local")
        s.ready()
        ev = [e for e in s.events if e.get("step") == "traffic-policy"]
        check(ev and "externalTrafficPolicy" in ev[0].get("message", ""),
              "connect said so: %s" % (ev[0].get("message", "")[:160] if ev else None))
        now = service_spec("local")
        check(now["spec"].get("externalTrafficPolicy") == "Cluster",
              "during the takeover externalTrafficPolicy is Cluster (%s)" %
              now["spec"].get("externalTrafficPolicy"))
        who = [served_by(a) for a in probe([(url, {}), (url, hdr("alice"))])]
        check(who == ["api", "alice"], "unrouted and routed requests answered (%s)" % who)
        # someone sets Local again meanwhile: the session undoes it
        kubectl("patch", "service", "local", "-n", NS, "-p",
                json.dumps({"spec": {"externalTrafficPolicy": "Local"}}))
        t = time.time()
        wait("the session to set Cluster again", lambda: service_spec("local")["spec"].get(
            "externalTrafficPolicy") == "Cluster", 20)
        check(True, "a patch back to Local was undone by the session in %.1f s" % (time.time() - t))
        ev = s.stop()
        check(ev.get("restored") is True, "restored on disconnect")
        wait("local restored", lambda: service_spec("local") == before and not kbridge_objects(), 30)
        check(True, "Service local equals what it was before (externalTrafficPolicy Local, "
              "healthCheckNodePort %s); no kbridge object left" % spec.get("healthCheckNodePort"))
        # the CLI killed: kbridge restore puts the policy back too
        s = Session("alice", pa, "--service", "local")
        s.ready()
        s.p.kill()
        s.p.wait()
        check(service_spec("local")["spec"].get("externalTrafficPolicy") == "Cluster",
              "taken over again, Cluster; connect killed with -9")
        r = kb("restore", "-n", NS, "--service", "local")
        check(r.returncode == 0 and "externalTrafficPolicy Local" in r.stdout,
              "kbridge restore says it put the policy back: %s" % r.stdout.strip()[-200:])
        wait("local restored", lambda: service_spec("local") == before and not kbridge_objects(), 30)
        check(True, "after kbridge restore, Service local equals what it was before")
        # the CLI killed and nobody restores: the agent does when its lease runs out
        lease = 6
        s = Session("alice", pa, "--service", "local", "--lease-seconds", str(lease))
        s.ready()
        s.p.kill()
        s.p.wait()
        t = time.time()
        check(service_spec("local")["spec"].get("externalTrafficPolicy") == "Cluster",
              "taken over again (lease %d s), Cluster; connect killed with -9" % lease)
        wait("the agent's lease restore", lambda: service_spec("local") == before and
             not kbridge_objects(), 60)
        check(True, "the agent's own restore, %.1f s after kill -9, left Service local equal to "
              "what it was before" % (time.time() - t))
    finally:
        kubectl("delete", "service", "local", "-n", NS, "--wait=false", check_rc=False)


FLUX = "kustomize.toolkit.fluxcd.io/reconcile"


def api_annotations():
    return json.loads(kubectl("get", "service", "api", "-n", NS, "-o", "json").stdout)[
        "metadata"].get("annotations", {})


def part_pausegitops():
    _, pa = backend("alice")
    before = snapshot()
    # Set by kbridge: there while connected, gone after each kind of restore.
    for how in ("disconnect", "kbridge restore", "the agent's lease"):
        alice = Session("alice", pa, "--pause-gitops", "--lease-seconds", "6")
        alice.ready()
        ann = api_annotations()
        check(ann.get(FLUX) == "disabled" and ann.get("kbridge.dev/paused-gitops") == FLUX,
              "%s: during the session the Service carries %s=disabled, recorded as kbridge's" % (
                  how, FLUX))
        if how == "disconnect":
            ev = alice.stop()
            check(ev.get("restored") is True, "restored on disconnect")
        else:
            alice.p.kill()
            alice.p.wait()
            if how == "kbridge restore":
                r = kb("restore", "-n", NS, "--service", "api")
                check(r.returncode == 0 and FLUX in r.stdout,
                      "kbridge restore says it removed the annotation: %s" % r.stdout.strip()[-160:])
        check_restored(before, "a --pause-gitops session ended by %s" % how)
        check(FLUX not in api_annotations(), "%s: %s is gone" % (how, FLUX))
    # Already there (someone paused Flux): left as it is, during and after.
    kubectl("annotate", "service", "api", "-n", NS, FLUX + "=disabled")
    try:
        before = snapshot()
        alice = Session("alice", pa, "--pause-gitops")
        alice.ready()
        msgs = [e.get("message", "") for e in alice.events if e.get("step") == "pause-gitops"]
        ann = api_annotations()
        check(ann.get(FLUX) == "disabled" and "kbridge.dev/paused-gitops" not in ann,
              "a %s set before is not recorded as kbridge's (%s)" % (FLUX, msgs[:1]))
        ev = alice.stop()
        check(ev.get("restored") is True, "restored on disconnect")
        check_restored(before, "a --pause-gitops session on a Service Flux was already paused for")
        check(api_annotations().get(FLUX) == "disabled", "the annotation set before survives")
    finally:
        kubectl("annotate", "service", "api", "-n", NS, FLUX + "-", check_rc=False)


def undo_under_load(undo, duration=8.0, at=2.0):
    """The unrouted-request loop in the frontend pod; undo() runs `at` seconds
    in. Returns (failures, total, failure times, what undo returned)."""
    p = subprocess.Popen([os.path.join(tc.CLUSTER_DIR, "pod-exec"), "--name", tc.NAME, NS,
                          tc.frontend_pod(), "--", "python3", "-c", LOOP, API, str(duration)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tc.PROCS.append(p)
    if p.stdout.readline().strip() != "go":
        raise Fail("request loop did not start: %s" % p.stderr.read()[-500:])
    time.sleep(at)
    ret = undo()
    out, err = p.communicate(timeout=duration + 60)
    res = json.loads(out.strip().splitlines()[-1])
    fails = [t for t, ok in res if not ok]
    return len(fails), len(res), fails, ret


def part_restorewait():
    # The test node's Service rules follow the API 1.5 s late, as kube-proxy
    # does on a busy cluster (without it this fast node hides the window).
    lag = os.path.join(tc.info()["state_dir"], "proxy-lag")
    with open(lag, "w") as f:
        f.write("1.5")
    try:
        restorewait()
    finally:
        os.unlink(lag)


def restorewait():
    before = snapshot()
    figures = []
    for rnd in range(3):
        _, pa = backend("alice-rw%d" % rnd)
        alice = Session("alice", pa)
        alice.ready()

        def leave():
            alice.stop()
            return [e.get("message", "") for e in alice.events
                    if e.get("event") == "progress" and e.get("step") == "restored"]
        nfail, total, fails, msgs = undo_under_load(leave)
        figures.append(nfail)
        say("disconnect %d: %d of %d unrouted requests failed %s; %s" % (
            rnd + 1, nfail, total, fails[:4], " | ".join(m.replace("\n", "; ") for m in msgs)))
        check(any("endpoints shop/api: the original pods" in m for m in msgs),
              "restore waited for the Endpoints to show the original pods")
        check_restored(before, "disconnect round %d" % (rnd + 1))
    say("MEASURE unrouted failures during disconnect: %s (of ~80 requests each)" % figures)
    check(max(figures) <= 1, "at most 1 unrouted failure per disconnect (%s)" % figures)

    # kbridge restore after the CLI died
    _, pa = backend("alice-rw-kill")
    alice = Session("alice", pa)
    alice.ready()
    alice.p.kill()
    alice.p.wait(10)

    def restore():
        return kb("restore", "-n", NS, "--service", "api")
    nfail, total, fails, r = undo_under_load(restore)
    say("kbridge restore: %d of %d unrouted requests failed %s; %s" % (
        nfail, total, fails[:4], r.stdout.strip().replace("\n", "; ")))
    check(r.returncode == 0 and "endpoints shop/api: the original pods" in r.stdout,
          "kbridge restore waited for the Endpoints")
    check(nfail <= 1, "at most 1 unrouted failure during kbridge restore (%d)" % nfail)
    check_restored(before, "kbridge restore")


def agent_keys():
    """The keys the agent has live tunnels for (kbridge list), or None."""
    r = kb("list", "-n", NS, "--output", "json")
    if r.returncode != 0:
        return None
    for o in json.loads(r.stdout):
        if o.get("service") == "api":
            return o.get("connected")
    return None


def bob_dropped(t0):
    """Wait until the agent has dropped the tunnels of the stopped bob."""
    wait("the agent to drop bob's tunnels", lambda: (agent_keys() or {}).get("bob", 0) == 0 and
         (agent_keys() or {}).get("alice", 0) > 0, 60, 1)
    say("the agent dropped bob's tunnels %.1f s after SIGSTOP" % (time.time() - t0))


def taken_over():
    return "kbridge.dev/agent" in (selector() or {})


def part_lostpeer():
    before = snapshot()
    lease = 40
    _, pa = backend("alice-lp")
    _, pb = backend("bob-lp")
    # 0. bob leaves on purpose, then alice: she is the last one out and restores
    # (however the agent saw bob's tunnels end).
    alice = Session("alice", pa, "--lease-seconds", str(lease))
    alice.ready()
    bob = Session("bob", pb, "--lease-seconds", str(lease))
    bob.ready()
    ev = bob.stop()
    check(ev.get("restored") is False, "bob left first: no restore")
    ev = alice.stop()
    msgs = [e.get("message", "") for e in alice.events if e.get("step") == "others-remain"]
    check(ev.get("restored") is True, "alice, the last one out after bob left, restored "
          "(restored %s, said %s)" % (ev.get("restored"), msgs[:1]))
    check_restored(before, "bob and then alice leaving")

    alice = Session("alice", pa, "--lease-seconds", str(lease))
    alice.ready()
    bob = Session("bob", pb, "--lease-seconds", str(lease))
    bob.ready()
    who = [served_by(a) for a in probe([(API, hdr("alice")), (API, hdr("bob")), (API, {})])]
    check(who == ["alice-lp", "bob-lp", "api"], "both routes work (%s)" % who)
    try:
        # 1. bob's tunnels lost for a while (Wi-Fi gone), alice leaves, bob comes back.
        os.kill(bob.p.pid, signal.SIGSTOP)
        bob_dropped(time.time())
        r = kb("list", "-n", NS, "--output", "json")
        routes = {ro["key"]: ro for o in json.loads(r.stdout) if o["service"] == "api"
                  for ro in o["routes"]}
        rb = routes.get("bob", {})
        check(rb.get("connected") is False and rb.get("lease_seconds_remaining", 0) > 0,
              "kbridge list: bob not connected, his lease still running (%s s left)" %
              rb.get("lease_seconds_remaining"))
        ev = alice.stop()
        msgs = [e.get("message", "") for e in alice.events if e.get("step") == "others-remain"]
        check(ev.get("restored") is False and taken_over(),
              "alice left while bob's lease runs: restored %s, Service selector %s, said %s" % (
                  ev.get("restored"), selector(), msgs[:1]))
        check(msgs and "bob" in msgs[0], "alice was told bob is still there: %s" % msgs[0][:160])
        time.sleep(3)
        check(taken_over() and served_by(probe([(API, {})])[0]) == "api",
              "3 s later still taken over; unrouted requests answered by the api pods")
        t = time.time()
        os.kill(bob.p.pid, signal.SIGCONT)
        wait("bob's route to work again", lambda: served_by(
            probe([(API, hdr("bob"))])[0]) == "bob-lp", 60, 0.5)
        say("MEASURE bob resumed -> his route works again: %.1f s" % (time.time() - t))
        check(bob.p.poll() is None, "bob's session goes on")

        # 2. the same, and bob never comes back: the agent's lease restores.
        alice = Session("alice", pa, "--lease-seconds", str(lease))
        alice.ready()
        os.kill(bob.p.pid, signal.SIGSTOP)
        t = time.time()
        bob_dropped(t)
        lost = time.time()
        ev = alice.stop()
        check(ev.get("restored") is False and taken_over(),
              "alice left again while bob's lease runs: the takeover stays")
        wait("the agent's lease restore", lambda: not taken_over(), lease + 40, 1)
        say("MEASURE bob never came back: the agent restored %.1f s after it dropped his "
            "tunnels (lease %d s)" % (time.time() - lost, lease))
        check_restored(before, "bob's lease running out")
    finally:
        if bob.p.poll() is None:  # SIGKILL ends a stopped process too
            bob.p.kill()
            bob.p.wait(10)


# Requests to api from the frontend pod, one every 0.1 s for DURATION seconds,
# with the route header KEY when given ("" for none): prints "go" after the
# first answer, then one JSON list of [seconds since start, who answered
# (served_by or service) or "fail: why"].
WHO_LOOP = r"""
import json, sys, time, urllib.request
url, duration, key = sys.argv[1], float(sys.argv[2]), sys.argv[3]
t0 = time.time(); out = []
while time.time() - t0 < duration:
    t = time.time()
    try:
        req = urllib.request.Request(url, headers={"kubernetes-route-as": key} if key else {})
        a = json.loads(urllib.request.urlopen(req, timeout=2).read().decode())
        who = a.get("served_by") or a.get("service") or "fail: no name"
    except Exception as e:
        who = "fail: %s" % e
    out.append([round(t - t0, 2), who])
    if len(out) == 1:
        print("go", flush=True)
    time.sleep(max(0, 0.1 - (time.time() - t)))
print(json.dumps(out), flush=True)
"""


def who_loop(key, duration):
    p = subprocess.Popen([os.path.join(tc.CLUSTER_DIR, "pod-exec"), "--name", tc.NAME, NS,
                          tc.frontend_pod(), "--", "python3", "-c", WHO_LOOP, API, str(duration),
                          key], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tc.PROCS.append(p)
    if p.stdout.readline().strip() != "go":
        raise Fail("request loop did not start: %s" % p.stderr.read()[-500:])
    return p


def loop_result(p, duration):
    out, _ = p.communicate(timeout=duration + 60)
    return json.loads(out.strip().splitlines()[-1])


def agent_pods(svc="api"):
    """The agent pods of svc not being deleted: [(name, ready)]."""
    items = json.loads(kubectl("get", "pods", "-n", NS, "-l", "kbridge.dev/agent=" + svc, "-o",
                               "json").stdout)["items"]
    return [(p["metadata"]["name"],
             any(c["type"] == "Ready" and c["status"] == "True"
                 for c in p.get("status", {}).get("conditions", [])))
            for p in items if not p["metadata"].get("deletionTimestamp")]


def evict(pod):
    """POST an Eviction for pod (as kubectl drain does): (HTTP status, message)."""
    import ssl
    import urllib.error
    import urllib.request
    i = tc.info()
    ctx = ssl.create_default_context(cafile=i["ca"])
    ctx.load_cert_chain(i["admin_cert"], i["admin_key"])
    body = json.dumps({"apiVersion": "policy/v1beta1", "kind": "Eviction",
                       "metadata": {"name": pod, "namespace": NS}}).encode()
    req = urllib.request.Request("%s/api/v1/namespaces/%s/pods/%s/eviction" % (
        i["server"], NS, pod), data=body, method="POST",
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, ""
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode() or "{}").get("message", "")


def steady(want):
    """Every agent pod ready, `want` of them, for 3 s (the CLI's tunnels follow)."""
    wait("%d ready agent pods" % want,
         lambda: len(agent_pods()) == want and all(r for _, r in agent_pods()), 90, 0.5)
    time.sleep(3)


def disrupt_round(how, key, duration=12.0, at=2.0):
    """Unrouted requests (and routed ones for key) in two loops while one agent
    pod is deleted (how "delete") or evicted ("evict") `at` s in. Returns
    (unrouted failures, unrouted total, routed answers by who, eviction status)."""
    pods = agent_pods()
    un = who_loop("", duration)
    ro = who_loop(key, duration)
    time.sleep(at)
    victim = pods[0][0]
    status = None
    if how == "delete":
        kubectl("delete", "pod", victim, "-n", NS, "--wait=false")
    else:
        status, msg = evict(victim)
        say("eviction of %s: HTTP %s %s" % (victim, status, msg))
    u = loop_result(un, duration)
    r = loop_result(ro, duration)
    ufails = [(t, w) for t, w in u if w.startswith("fail")]
    whos = {}
    for t, w in r:
        w = "fail" if w.startswith("fail") else w
        whos[w] = whos.get(w, 0) + 1
    say("%s %s: unrouted %d of %d failed %s; routed (%s): %s" % (
        how, victim, len(ufails), len(u), ufails[:4], key, whos))
    return len(ufails), len(u), whos, status


def part_disrupt():
    """Agent pod replaced (deleted, evicted) under load: the Service keeps its
    endpoints; the PodDisruptionBudget holds a second eviction."""
    before = snapshot()
    _, pa = backend("alice-disrupt")
    alice = Session("alice", pa)
    alice.ready()
    want = json.loads(kubectl("get", "deployment", "kbridge-agent-api", "-n", NS, "-o",
                              "json").stdout)["spec"]["replicas"]
    say("the agent's deployment has %d replica(s)" % want)
    figures = {"delete": [], "evict": []}
    routed = {"delete": [], "evict": []}
    for how in ("delete", "evict"):
        for rnd in range(3):
            steady(want)
            nf, total, whos, status = disrupt_round(how, "alice")
            figures[how].append("%d/%d" % (nf, total))
            routed[how].append(whos)
            if how == "evict":
                check(status in (200, 201), "eviction of one agent pod allowed (HTTP %s)" % status)
    say("MEASURE unrouted failures during an agent pod deletion: %s" % figures["delete"])
    say("MEASURE unrouted failures during an agent pod eviction: %s" % figures["evict"])
    say("MEASURE routed requests during deletion %s, eviction %s" % (routed["delete"],
                                                                    routed["evict"]))
    check(alice.p.poll() is None, "the session survived every replacement")
    fails = [int(f.split("/")[0]) for f in figures["delete"] + figures["evict"]]
    check(max(fails) == 0, "no unrouted request failed while an agent pod was replaced (%s)" %
          (figures,))
    rfails = sum(w.get("fail", 0) for w in routed["delete"] + routed["evict"])
    check(rfails == 0, "no routed request failed while an agent pod was replaced")
    # The PodDisruptionBudget: with one agent pod not ready, a second eviction
    # is refused (HTTP 429), so a drain cannot take both.
    steady(want)
    pods = agent_pods()
    check(len(pods) >= 2, "two agent pods to evict (%s)" % pods)
    status, msg = evict(pods[0][0])
    check(status in (200, 201), "first eviction allowed")
    status, msg = evict(pods[1][0])
    say("second eviction at once: HTTP %s %s" % (status, msg))
    check(status == 429, "a second eviction while the first pod is replaced is refused by the "
          "PodDisruptionBudget (HTTP %s)" % status)
    alice.stop()
    check_restored(before, "disconnect after the disruptions")



def agents_gone():
    """The node cordoned (new pods unschedulable), then every agent pod deleted:
    the agent cannot come back. Returns seconds from the agent pods' deletion to
    the Service selecting the api pods again."""
    node = tc.info()["node_name"]
    kubectl("cordon", node)
    try:
        # From before the first delete: the agent's clocks may start while a
        # kubectl delete is still returning (seen: 14.3 s against 15).
        t0 = time.time()
        for name, _ in agent_pods():
            kubectl("delete", "pod", name, "-n", NS, "--wait=false")
        say("node %s cordoned, agent pods deleted; replacements: %s" % (
            node, kubectl("get", "pods", "-n", NS, "-l", "kbridge.dev/agent=api", "--no-headers",
                          check_rc=False).stdout.strip().replace("\n", "; ")))

        def back():
            return selector() == {"app": "api"}
        wait("the Service to select the api pods again", back, 120, 0.5)
        dt = time.time() - t0
        return dt
    finally:
        kubectl("uncordon", node)


def part_agentgone():
    """The agent cannot come back. CLI alive: it gives the Service back after
    15 s without a ready agent pod and ends (reason agent_lost). CLI killed -9:
    kbridge-signer's janitor does it (default --janitor-seconds 30, rounds
    every 5 s)."""
    before = snapshot()
    # 1. the CLI alive
    _, pa = backend("alice-gone")
    alice = Session("alice", pa)
    alice.ready()
    dt = agents_gone()
    ev = alice.until(("error",), 60)
    say("CLI alive: Service back after %.1f s; event %s" % (dt, ev))
    check(ev is not None and ev.get("reason") == "agent_lost",
          "the session ended with reason agent_lost")
    alice.until(("disconnected",), 60)
    alice.p.wait(30)
    # The CLI counts its 15 s from the last guard look that saw a ready pod, up to
    # one guard period (1 s) before the delete (CI: 14.97 s against a bound of 15).
    check(14 <= dt <= 15 + 17, "the CLI gave the Service back %.1f s after the agent pods went "
          "(bound: 15 s - 1 s guard period .. 15 s + 2 s guard + the restore's wait of at most "
          "12 s + 3 s)" % dt)
    check_restored(before, "the CLI's restore of a lost agent")
    figures = {"cli": round(dt, 1)}
    # 2. the CLI killed with -9: the janitor in kbridge-signer
    _, pa = backend("alice-gone2")
    alice = Session("alice", pa)
    alice.ready()
    alice.p.kill()
    alice.p.wait(10)
    dt = agents_gone()
    say("CLI killed: Service back after %.1f s" % dt)
    slog = kubectl("logs", "-n", tc.SIGNER_NS, tc.signer_pod()).stdout
    say("signer log: %s" % " | ".join(l for l in slog.splitlines() if "janitor" in l)[-1500:])
    check("janitor: service shop/api: its agent has had no ready pod" in slog,
          "kbridge-signer's janitor restored the Service")
    check(30 <= dt <= 30 + 5 + 12 + 3, "the janitor gave the Service back %.1f s after the agent "
          "pods went (bound: 30 s + a 5 s round + the restore's wait of at most 12 s + 3 s)" % dt)
    check_restored(before, "the janitor's restore")
    figures["janitor"] = round(dt, 1)
    say("MEASURE seconds from the agent pods gone (unschedulable) to the Service back: %s" %
        figures)


PARTS = {"gitops": part_gitops, "longkey": part_longkey, "headless": part_headless,
         "domain": part_domain, "canary": part_canary, "dual": part_dual,
         "affinity": part_affinity, "netpol": part_netpol, "policy": part_policy,
         "pausegitops": part_pausegitops, "restorewait": part_restorewait,
         "lostpeer": part_lostpeer, "disrupt": part_disrupt, "agentgone": part_agentgone}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kbridge", required=True)
    ap.add_argument("--agent", required=True)
    ap.add_argument("--signer", help="kbridge-signer (default: beside the agent's build dir)")
    ap.add_argument("parts", nargs="*")
    args = ap.parse_args()
    if args.signer:
        args.signer = os.path.abspath(args.signer)
    tc.ARGS = args
    if os.geteuid() != 0 or not shutil.which("kubectl"):
        print("skipped: needs root and kubectl")
        return 77
    args.kbridge = os.path.abspath(args.kbridge)
    args.agent = os.path.abspath(args.agent)
    parts = args.parts or list(PARTS)
    rc = 0
    try:
        tc.cluster_up()
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
        try:
            if tc.info():
                for s in ("api", "db", "multi", "dual", "echo", "local"):
                    kb("restore", "-n", NS, "--service", s,
                       kubeconfig=tc.info()["admin_kubeconfig"])
        except Exception as e:
            say("cleanup restore failed: %s" % e)
        if os.environ.get("KBRIDGE_E2E_KEEP") != "1" and tc.info():
            subprocess.run([os.path.join(tc.CLUSTER_DIR, "down"), "--name", tc.NAME],
                           capture_output=True)
        shutil.rmtree(tc.TMP, ignore_errors=True)
    say("PASS" if rc == 0 else "FAILED")
    return rc


if __name__ == "__main__":
    sys.exit(main())
