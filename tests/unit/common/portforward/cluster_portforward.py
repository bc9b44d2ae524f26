#!/usr/bin/env python3
"""The port-forward carrier against the real API server of the local test
cluster (tests/cluster, label `cluster`).

Starts an echo pod `pf-echo` in the restricted namespace (shop), then runs
`test_portforward --cluster ...`, which reaches the pod's port through
kube-apiserver 1.20.2 and the test node's kubelet with the C carrier: 20 MB both
ways with the admin token, 2 MB with the admin client certificate and with the
restricted user's token; TLS on top of the carrier (as the tunnel runs it) to a
TLS echo in the pod; the kubelet's error for a closed port; 403 for a user
without RBAC, 404 for a missing pod, 401 for a bad token, a TLS refusal for an
untrusted API server CA. The pod is deleted afterwards.

Usage: cluster_portforward.py PATH/test_portforward
The cluster name is $KBRIDGE_TEST_CLUSTER (default ctest). Exit 77 (skip) when
not root or the cluster is not up."""
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "cluster"))
import kbcluster as kc  # noqa: E402
from kubeapi import Kube  # noqa: E402

SKIP = 77
POD = "pf-echo"
PORT = 9100
TLS_PORT = 9443
# A plain echo on PORT and a TLS echo on TLS_PORT (cert/key paths in argv).
ECHO = (
    "import socket, ssl, sys, threading\n"
    "def serve(c):\n"
    "    try:\n"
    "        while True:\n"
    "            d = c.recv(262144)\n"
    "            if not d: break\n"
    "            c.sendall(d)\n"
    "    except OSError: pass\n"
    "    c.close()\n"
    "def listen(port, ctx):\n"
    "    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "    s.bind(('', port)); s.listen(16)\n"
    "    while True:\n"
    "        c, _ = s.accept()\n"
    "        if ctx:\n"
    "            try: c = ctx.wrap_socket(c, server_side=True)\n"
    "            except (OSError, ssl.SSLError): c.close(); continue\n"
    "        threading.Thread(target=serve, args=(c,), daemon=True).start()\n"
    "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(sys.argv[1], sys.argv[2])\n"
    "threading.Thread(target=listen, args=(%d, ctx), daemon=True).start()\n"
    "listen(%d, None)\n" % (TLS_PORT, PORT))


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    name = os.environ.get("KBRIDGE_TEST_CLUSTER", "ctest")
    if os.geteuid() != 0:
        print("skip: the test cluster needs root")
        return SKIP
    i = kc.read_cluster(name)
    if not i:
        print("skip: cluster %s is not up (tests/cluster/up --name %s)" % (name, name))
        return SKIP
    ns = i["restricted_namespace"]
    k = Kube(i["server"], i["ca"], cert=i["admin_cert"], key=i["admin_key"])
    path = "/api/v1/namespaces/%s/pods/%s" % (ns, POD)
    k.delete(path, body={"gracePeriodSeconds": 0})
    t = time.time()
    while time.time() - t < 30:
        try:
            k.get(path)
            time.sleep(0.2)
        except Exception:
            break
    tmp = tempfile.mkdtemp(prefix="kb-pf-cluster-")
    os.chmod(tmp, 0o755)
    crt, key = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", key, "-out", crt], check=True, capture_output=True)
    os.chmod(key, 0o644)  # read by the pod's process; a throwaway key
    k.create("/api/v1/namespaces/%s/pods" % ns, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": POD, "namespace": ns},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "echo", "image": "kbridge-demo/sh:1", "command": ["python3", "-c", ECHO, crt, key],
            "readinessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 1}}]}})
    try:
        t = time.time()
        while True:
            p = k.get(path)
            conds = p.get("status", {}).get("conditions", [])
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                break
            if time.time() - t > 60:
                print("FAIL: pod %s/%s not ready after 60 s: %s" % (ns, POD, p.get("status")))
                return 1
            time.sleep(0.2)
        print("pod %s/%s ready after %.1f s" % (ns, POD, time.time() - t), flush=True)
        tok = i["tokens"]
        r = subprocess.run([sys.argv[1], "--cluster", i["server"], i["ca"], i["admin_cert"],
                            i["admin_key"], tok["admin"], tok["restricted"], tok["norbac"], ns, POD,
                            str(PORT), crt, str(TLS_PORT)], timeout=300)
        return r.returncode
    finally:
        k.delete(path, body={"gracePeriodSeconds": 0})
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
