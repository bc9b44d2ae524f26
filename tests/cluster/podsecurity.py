#!/usr/bin/env python3
"""Pod Security "restricted" for the test cluster's 1.20 API server, which has
no Pod Security admission (it came in 1.22): the checks of the Pod Security
Standards' baseline and restricted levels, as a validating admission webhook.

`up` starts it (`podsecurity.py serve HOST PORT CERT KEY`) on the API server's
address and registers a ValidatingWebhookConfiguration for pods (CREATE,
UPDATE) in namespaces labelled `pod-security.kubernetes.io/enforce=restricted`,
failurePolicy Fail. Every pod created there, the ones the ReplicaSet controller
makes for kbridge's agent Deployment included, passes through violations();
a pod with any violation is refused with the list, as the real admission
plugin does (the ReplicaSet then records FailedCreate).

`podsecurity.py check FILE.json` prints the violations of one pod (or pod
template) spec; the tests use violations() directly.
"""
import json
import os
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Pod Security Standards, restricted (which includes baseline).
ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                   "persistentVolumeClaim", "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
                "net.ipv4.ping_group_range"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t"}


def violations(spec):
    """The ways a pod spec breaks Pod Security restricted, as short sentences
    (empty: it passes)."""
    out = []
    psc = spec.get("securityContext") or {}
    containers = [("container", c) for c in spec.get("containers") or []] + \
                 [("initContainer", c) for c in spec.get("initContainers") or []] + \
                 [("ephemeralContainer", c) for c in spec.get("ephemeralContainers") or []]
    for k in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(k):
            out.append("%s=true" % k)
    for v in spec.get("volumes") or []:
        kinds = set(v) - {"name"}
        bad = kinds - ALLOWED_VOLUMES
        if bad:
            out.append("volume %r of type %s" % (v.get("name"), ",".join(sorted(bad))))
    for s in psc.get("sysctls") or []:
        if s.get("name") not in SAFE_SYSCTLS:
            out.append("sysctl %s" % s.get("name"))
    if (psc.get("seLinuxOptions") or {}).get("type", "") not in SELINUX_TYPES:
        out.append("pod seLinuxOptions type %s" % psc["seLinuxOptions"]["type"])
    if psc.get("runAsUser") == 0:
        out.append("pod runAsUser=0")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        out.append("pod seccompProfile %s" % pod_seccomp)
    for kind, c in containers:
        name = "%s %r" % (kind, c.get("name"))
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append("%s: privileged" % name)
        if any(p.get("hostPort") for p in c.get("ports") or []):
            out.append("%s: hostPort" % name)
        if sc.get("procMount", "Default") != "Default":
            out.append("%s: procMount %s" % (name, sc["procMount"]))
        if (sc.get("seLinuxOptions") or {}).get("type", "") not in SELINUX_TYPES:
            out.append("%s: seLinuxOptions type %s" % (name, sc["seLinuxOptions"]["type"]))
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append("%s: allowPrivilegeEscalation != false" % name)
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append("%s: capabilities.drop does not include ALL" % name)
        added = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            out.append("%s: capabilities.add %s" % (name, ",".join(sorted(added))))
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            out.append("%s: runAsNonRoot != true" % name)
        if sc.get("runAsUser") == 0:
            out.append("%s: runAsUser=0" % name)
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append("%s: seccompProfile %s (RuntimeDefault or Localhost needed)" % (name, seccomp or "unset"))
    return out


def review(body):
    """AdmissionReview (v1) in, AdmissionReview out."""
    req = body["request"]
    obj = req.get("object") or {}
    bad = violations(obj.get("spec") or {})
    resp = {"uid": req["uid"], "allowed": not bad}
    if bad:
        resp["status"] = {"code": 403, "reason": "Forbidden",
                          "message": 'violates PodSecurity "restricted:latest": ' + "; ".join(bad)}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        try:
            out = json.dumps(review(json.loads(self.rfile.read(n)))).encode()
            code = 200
        except (ValueError, KeyError, TypeError) as e:
            out, code = ("bad AdmissionReview: %s" % e).encode(), 400
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, fmt, *args):
        sys.stderr.write("podsecurity: " + (fmt % args) + "\n")


def serve(host, port, cert, key):
    srv = ThreadingHTTPServer((host, port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print("podsecurity webhook on https://%s:%d/validate" % (host, port), flush=True)
    srv.serve_forever()


def webhook_config(host, port, ca_pem_b64):
    return {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "pod-security-restricted"},
        "webhooks": [{
            "name": "restricted.podsecurity.kbridge-test.local",
            "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
            "timeoutSeconds": 5,
            "clientConfig": {"url": "https://%s:%d/validate" % (host, port),
                             "caBundle": ca_pem_b64},
            "namespaceSelector": {"matchLabels": {"pod-security.kubernetes.io/enforce": "restricted"}},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                       "resources": ["pods"], "scope": "Namespaced"}]}]}


def main():
    if len(sys.argv) == 6 and sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    elif len(sys.argv) == 3 and sys.argv[1] == "check":
        obj = json.load(open(sys.argv[2]))
        spec = obj.get("spec", obj)
        spec = (spec.get("template") or {}).get("spec", spec)
        bad = violations(spec)
        print("\n".join(bad) if bad else "restricted: ok")
        sys.exit(1 if bad else 0)
    else:
        sys.exit("usage: podsecurity.py serve HOST PORT CERT KEY | check POD.json")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
