#!/usr/bin/env python3
"""The VS Code extension end to end, in a real VS Code (code-server) driven
through a real browser (Debian's chromium, by playwright-core), against the
local test cluster with the demo shop, as the restricted developer user.

    test_vscode.py --kbridge BIN --agent BIN --vsix FILE [--out DIR]

This harness owns the cluster (its own, "kbvsc"), code-server and the verdict
on the cluster's state; vscode-ext/e2e/ui.mjs owns the editor and the browser.
They talk over ui.mjs's stdin/stdout, one JSON object a line: ui.mjs asks
({"cmd": ...}) and this answers ({"ok": true, ...} or {"ok": false, "error":
...}). Commands: wait_port, send (a request from the frontend pod, in the
background), result (its answer), taken (a Service selects the agent),
unchanged (api's Service and Deployment equal the snapshot before, store's
selector is its own, no kbridge object). What is tested is in ui.mjs's docstring.

Screenshots and timings go to --out (default tests/vscode/out under the build
dir's cwd). Tools are installed by vscode-ext/e2e/setup-tools; when that fails
the test fails with its reason. Exit 77 (skip) only without root or kubectl.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
EXT = os.path.join(REPO, "vscode-ext")
os.environ.setdefault("KBRIDGE_E2E_CLUSTER", "kbvsc")
sys.path.insert(0, os.path.join(REPO, "tests", "cluster-e2e"))
import test_connect as tc  # noqa: E402  (the cluster fixture, probes and snapshots)

say, Fail, check = tc.say, tc.Fail, tc.check


PROBE = tc.PROBE.replace("timeout=5", "timeout=120")
check(PROBE != tc.PROBE, "the probe's timeout is raised (a request waits at a breakpoint)")


def probe(headers, timeout):
    """One GET of the api Service from the frontend pod, allowed to wait (a
    breakpoint holds it): the answer as a dict."""
    r = subprocess.run([os.path.join(tc.CLUSTER_DIR, "pod-exec"), "--name", tc.NAME, tc.NS,
                        tc.frontend_pod(), "--", "python3", "-c", PROBE,
                        json.dumps([(tc.API, headers)])],
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise Fail("probe failed: %s" % r.stderr[-1000:])
    return json.loads(r.stdout)[0]


def tools():
    r = subprocess.run([os.path.join(EXT, "e2e", "setup-tools")], capture_output=True, text=True)
    if r.returncode != 0:
        raise Fail("the editor test's tools could not be installed: %s" % r.stderr[-2000:])
    out = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    for k in ("NODE24", "CODE_SERVER", "CHROMIUM"):
        if not out.get(k) or not os.path.exists(out[k]):
            raise Fail("setup-tools did not provide %s (%r)" % (k, out.get(k)))
    return out


def workspace(tmp):
    """The multi-root workspace: folders shop-api and shop-store and the
    .code-workspace file naming them."""
    ws = os.path.join(tmp, "ws")
    shutil.copytree(os.path.join(EXT, "e2e", "workspace"), ws)
    return ws


def start_code_server(t, tmp, vsix, kbridge, kubeconfig):
    ud = os.path.join(tmp, "user-data")
    exts = os.path.join(tmp, "extensions")
    os.makedirs(os.path.join(ud, "User"))
    os.makedirs(os.path.join(ud, "Machine"))
    settings = {
        "security.workspace.trust.enabled": False,
        "workbench.startupEditor": "none",
        "workbench.tips.enabled": False,
        "extensions.autoCheckUpdates": False,
        "extensions.autoUpdate": False,
        "telemetry.telemetryLevel": "off",
        "update.mode": "none",
        "chat.disableAIFeatures": True,
        "workbench.secondarySideBar.defaultVisibility": "hidden",
        "kbridge.path": kbridge,
        "kbridge.kubeconfig": kubeconfig,
        "kbridge.agentImage": tc.IMAGE,
    }
    # The user's settings, and the same as the remote machine's (the extension
    # host of code-server is "remote"; machine-overridable settings may come
    # from either).
    for where in ("User", "Machine"):
        with open(os.path.join(ud, where, "settings.json"), "w") as f:
            json.dump(settings, f, indent=2)
    env = dict(os.environ, PATH=os.path.dirname(t["NODE24"]) + ":" + os.environ["PATH"])
    r = subprocess.run([t["NODE24"], t["CODE_SERVER"], "--extensions-dir", exts,
                        "--user-data-dir", ud, "--install-extension", vsix],
                       capture_output=True, text=True, env=env, timeout=300)
    installed = [d for d in os.listdir(exts) if d.startswith("kbridge.kbridge-")] if os.path.isdir(exts) else []
    check(r.returncode == 0 and installed,
          "the .vsix installs into code-server (%s)" % (installed or r.stderr[-500:]))
    port = tc.free_port()
    log = open(os.path.join(tmp, "code-server.log"), "w")
    p = subprocess.Popen([t["NODE24"], t["CODE_SERVER"], "--auth", "none", "--bind-addr",
                          "127.0.0.1:%d" % port, "--user-data-dir", ud, "--extensions-dir", exts,
                          "--disable-telemetry", "--disable-update-check",
                          "--disable-workspace-trust"],
                         stdout=log, stderr=subprocess.STDOUT, env=env)
    tc.PROCS.append(p)

    def up():
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return True
        except OSError:
            return p.poll() is not None
    tc.wait("code-server to listen", up, 60)
    if p.poll() is not None:
        raise Fail("code-server exited: %s" % open(log.name).read()[-2000:])
    return "http://127.0.0.1:%d" % port, os.path.join(ud, "User")


class Harness:
    """Answers ui.mjs's questions about the cluster."""

    def __init__(self, before):
        self.before = before
        self.pending = {}

    def handle(self, req):
        cmd = req.get("cmd")
        if cmd == "wait_port":
            tc.wait("the debugged process to listen on %d" % req["port"],
                    lambda: self._connects(req["port"]), req.get("timeout", 60))
            return {}
        if cmd == "send":
            box = {}

            def run():
                try:
                    box["answer"] = probe(req.get("headers", {}), req.get("timeout", 90) + 30)
                except Exception as e:
                    box["answer"] = {"error": str(e)}
                box["t"] = time.time()
            th = threading.Thread(target=run, daemon=True)
            th.start()
            self.pending[req["id"]] = (th, box)
            return {}
        if cmd == "result":
            th, box = self.pending.pop(req["id"])
            th.join(req.get("timeout", 90))
            if th.is_alive():
                raise Fail("request %s got no answer within %ss" % (req["id"], req.get("timeout", 90)))
            return {"answer": box["answer"], "served_by": tc.served_by(box["answer"]),
                    "t": box["t"]}
        if cmd == "taken":
            svc = req.get("service", "api")
            sel = json.loads(tc.kubectl("get", "service", svc, "-n", tc.NS, "-o",
                                        "jsonpath={.spec.selector}").stdout or "{}")
            return {"selector": sel, "taken": "kbridge.dev/agent" in sel}
        if cmd == "unchanged":
            tc.check_restored(self.before, req.get("what", "the editor's session"))
            store = json.loads(tc.kubectl("get", "service", "store", "-n", tc.NS, "-o",
                                          "jsonpath={.spec.selector}").stdout or "{}")
            if store != {"app": "store"}:
                raise Fail("service store selects %s, not its pods" % store)
            return {}
        raise Fail("unknown command from ui.mjs: %r" % cmd)

    @staticmethod
    def _connects(port):
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return True
        except OSError:
            return False


def run_ui(t, url, ws, out, harness, user_dir):
    env = dict(os.environ, KB_URL=url, KB_WS=ws, KB_OUT=out, KB_CHROMIUM=t["CHROMIUM"],
               KB_LOCAL_PORT=str(tc.free_port()), KB_LOCAL_PORT2=str(tc.free_port()),
               KB_USER_DIR=user_dir,
               NODE_PATH=os.path.join(EXT, "node_modules"))
    p = subprocess.Popen(["node", os.path.join(EXT, "e2e", "ui.mjs")], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=env, cwd=EXT)
    tc.PROCS.append(p)
    result = None
    for line in p.stdout:
        line = line.strip()
        if not line.startswith("{"):
            print(line, flush=True)
            continue
        req = json.loads(line)
        if req.get("cmd") == "done":
            result = req
            continue
        try:
            ans = dict(ok=True, **harness.handle(req))
        except Exception as e:  # told to ui.mjs, which fails the run with it
            ans = {"ok": False, "error": str(e)}
        p.stdin.write(json.dumps(ans) + "\n")
        p.stdin.flush()
    rc = p.wait()
    if rc != 0 or result is None:
        raise Fail("the editor test (ui.mjs) failed, exit %s; screenshots in %s" % (rc, out))
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kbridge", required=True)
    ap.add_argument("--agent", required=True)
    ap.add_argument("--vsix", required=True)
    ap.add_argument("--out", default=os.path.abspath("vscode-e2e-out"))
    a = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("kubectl"):
        print("skipped: needs root (network namespaces of the test cluster) and kubectl")
        return 77
    tc.ARGS = argparse.Namespace(kbridge=os.path.abspath(a.kbridge), agent=os.path.abspath(a.agent))
    os.makedirs(a.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="kbridge-vscode-")
    rc = 0
    try:
        if not os.path.exists(a.vsix):
            raise Fail("no .vsix at %s (npm run package in vscode-ext)" % a.vsix)
        t = tools()
        tc.cluster_up()
        before = tc.snapshot()
        url, user_dir = start_code_server(t, tmp, os.path.abspath(a.vsix), tc.ARGS.kbridge, tc.restricted())
        ws = workspace(tmp)
        result = run_ui(t, url, ws, a.out, Harness(before), user_dir)
        say("timings: %s" % json.dumps(result.get("timings")))
        with open(os.path.join(a.out, "result.json"), "w") as f:
            json.dump(result, f, indent=2)
        tc.check_restored(before, "the editor test")
    except Fail as e:
        say("FAIL: %s" % e)
        rc = 1
    finally:
        for p in tc.PROCS:
            if p.poll() is None:
                p.kill()
        try:
            if tc.info():
                for svc in ("api", "store"):
                    tc.kb("restore", "-n", tc.NS, "--service", svc,
                          kubeconfig=tc.info()["admin_kubeconfig"])
        except Exception as e:
            say("cleanup restore failed: %s" % e)
        if os.environ.get("KBRIDGE_E2E_KEEP") != "1" and tc.info():
            subprocess.run([os.path.join(tc.CLUSTER_DIR, "down"), "--name", tc.NAME],
                           capture_output=True)
        if rc == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            say("kept %s (code-server.log, workspace)" % tmp)
        shutil.rmtree(tc.TMP, ignore_errors=True)
    say("PASS" if rc == 0 else "FAILED")
    return rc


if __name__ == "__main__":
    sys.exit(main())
