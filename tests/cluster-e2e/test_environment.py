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

The cluster is $KBRIDGE_E2E_CLUSTER (default kbe2e), as for test_connect.py.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
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


PARTS = {"admission": part_admission}


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
                kb("restore", "-n", NS, "--service", "api",
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
