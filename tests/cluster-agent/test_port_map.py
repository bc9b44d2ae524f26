#!/usr/bin/env python3
"""The agent's per-port fallbacks and its in-cluster flags, on loopback (ctest
`agent_port_map`, label integration; no cluster needed).

    test_port_map.py --kbridge PATH --agent PATH

--port-map LISTEN=FALLBACK gives every service port its own fallback (the
shadow Service's matching port): requests on each port reach that port's
backend, also over keep-alive connections (one upstream pool per port), and a
developer's route works on any port. --listen/--fallback still work beside
--port-map. Bad combinations are refused with a message naming the flag;
--service outside a pod (no service account) refuses to start.
"""
import http.client
import json
import os
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))
import kbtest  # noqa: E402

KBRIDGE, AGENT = kbtest.binaries_from_args()


def get(port, path="/", headers=None, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path, headers=headers or {})
    r = c.getresponse()
    body = r.read()
    if conn is None:
        c.close()
    return r.status, json.loads(body) if body.startswith(b"{") else body


class PortMap(unittest.TestCase):
    def setUp(self):
        self.env = kbtest.Env(KBRIDGE, AGENT)

    def tearDown(self):
        self.env.close()

    def start_agent(self, args):
        e = self.env
        p = e.start("agent", [AGENT, "--tunnel-listen", "127.0.0.1:0", "--tls-dir", self.tls,
                              "--metrics", "127.0.0.1:0"] + args)
        ports = []
        while True:
            m = p.wait_line(r"^(listen 127\.0\.0\.1:(\d+)|tunnel-listen 127\.0\.0\.1:(\d+))")
            p.seen.remove(m.string)  # consume it, so the next wait sees the next line
            if m.group(3):
                p.tunnel_port = int(m.group(3))
                break
            ports.append(int(m.group(2)))
        p.metrics_port = int(p.wait_line(r"^metrics 127\.0\.0\.1:(\d+)").group(1))
        p.wait_line(r"^ready")
        return p, ports

    def test_each_port_its_own_fallback(self):
        e = self.env
        self.tls = e.certs()
        a, b, c = e.backend("A"), e.backend("B"), e.backend("C")
        agent, ports = self.start_agent([
            "--port-map", "127.0.0.1:0=127.0.0.1:%d" % a.port,
            "--listen", "127.0.0.1:0", "--fallback", "localhost:%d" % c.port,
            "--port-map", "127.0.0.1:0=localhost:%d" % b.port])
        self.assertEqual(len(ports), 3)
        # flag order is listener order: port-map A, listen (-> C), port-map B
        want = {ports[0]: "A", ports[1]: "C", ports[2]: "B"}
        for port, name in want.items():
            st, body = get(port, "/x")
            self.assertEqual((st, body["served_by"]), (200, name), "port %d" % port)
        # keep-alive on two ports at once, interleaved: pooled upstreams never cross
        conns = {p: http.client.HTTPConnection("127.0.0.1", p, timeout=10) for p in want}
        for i in range(20):
            for port, name in want.items():
                st, body = get(port, "/k%d" % i, conn=conns[port])
                self.assertEqual(body["served_by"], name)
        for c_ in conns.values():
            c_.close()
        # fresh connections reuse the pools (idle upstreams of each port)
        for i in range(10):
            for port, name in want.items():
                self.assertEqual(get(port)[1]["served_by"], name)

        # a developer's key is routed on every port; the rest stays per port
        local = e.backend("LOCAL")
        e.proxy(agent, self.tls, "alice", local.port)
        for port, name in want.items():
            self.assertEqual(get(port, headers={"kubernetes-route-as": "alice"})[1]["served_by"],
                             "LOCAL")
            self.assertEqual(get(port, headers={"kubernetes-route-as": "bob"})[1]["served_by"],
                             name)
        # without --service: no lease, but the developer count is there
        h = http.client.HTTPConnection("127.0.0.1", agent.metrics_port, timeout=5)
        h.request("GET", "/healthz")
        text = h.getresponse().read().decode()
        self.assertNotIn("lifecycle", text)
        h.request("GET", "/metrics")
        m = h.getresponse().read().decode()
        self.assertIn("kbridge_developers 1\n", m)
        self.assertNotIn("kbridge_lease_seconds_remaining", m)
        h.close()

    def test_bad_flags(self):
        self.tls = self.env.certs(keys=())
        base = [AGENT, "--tunnel-listen", "127.0.0.1:0", "--tls-dir", self.tls]
        cases = [
            (["--port-map", "127.0.0.1:0"],
             '--port-map: expected ADDR:PORT=HOST:PORT, got "127.0.0.1:0" (missing \'=\')'),
            (["--port-map", "127.0.0.1:0=db:0"],
             '--port-map: expected ADDR:PORT=HOST:PORT, got "127.0.0.1:0=db:0" (fallback '),
            (["--port-map", "127.0.0.1:x=db:80"],
             '--port-map: expected ADDR:PORT=HOST:PORT, got "127.0.0.1:x=db:80" (listen address '),
            (["--port-map", "127.0.0.1:0=db:80", "--fallback", "x:1"],
             "--fallback is only for --listen ports"),
            (["--listen", "127.0.0.1:0"], "--fallback is required with --listen"),
            ([], "--listen or --port-map is required"),
            (["--listen", "127.0.0.1:0", "--fallback", "x:1", "--service", "Api"],
             '--service: expected a Kubernetes name (1-63 of a-z, 0-9 and \'-\', not starting or '
             'ending with \'-\'), got "Api"'),
            (["--listen", "127.0.0.1:0", "--fallback", "x:1", "--namespace", "shop"],
             "--namespace is only used with --service"),
            (["--listen", "127.0.0.1:0", "--fallback", "x:1", "--service", "api",
              "--lease-seconds", "0"], '--lease-seconds: expected a number 1-86400, got "0"'),
        ]
        for extra, msg in cases:
            r = subprocess.run(base + extra, capture_output=True, text=True, timeout=10)
            self.assertEqual(r.returncode, 2, (extra, r.stderr))
            self.assertIn(msg, r.stderr, extra)
        # 17 listening addresses are too many
        many = []
        for i in range(17):
            many += ["--port-map", "127.0.0.1:0=db:%d" % (i + 1)]
        r = subprocess.run(base + many, capture_output=True, text=True, timeout=10)
        self.assertEqual(r.returncode, 2)
        self.assertIn("more than 16", r.stderr)

    def test_service_needs_a_service_account(self):
        self.tls = self.env.certs(keys=())
        env = dict(os.environ, KBRIDGE_SA_DIR=os.path.join(self.env.dir, "no-such-dir"))
        env.pop("KUBERNETES_SERVICE_HOST", None)
        r = subprocess.run([AGENT, "--listen", "127.0.0.1:0", "--fallback", "127.0.0.1:9",
                            "--tunnel-listen", "127.0.0.1:0", "--tls-dir", self.tls,
                            "--service", "api"], capture_output=True, text=True, timeout=10,
                           env=env)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("--service api: in-cluster Kubernetes configuration", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
