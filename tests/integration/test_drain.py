#!/usr/bin/env python3
"""test_drain.py: the agent's drain on SIGTERM (--drain-seconds, agent/main.c;
docs/reliability.md): a pod being deleted keeps serving while the endpoints
and kube-proxy let go of it.

Real kbridge-agent and kbridge proxy over mutual TLS, backend.py as the
original pods and as alice's local process. After SIGTERM with
--drain-seconds 2: for those 2 s new connections are still served, unrouted
and routed (the tunnel stays), /healthz answers 503, a keep-alive connection
is closed after its next response; then the agent exits 0 (within 2 s more).
Without --drain-seconds, the listener is closed at once.

  python3 test_drain.py --kbridge PATH --agent PATH
"""
import http.client
import json
import os
import signal
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kbtest  # noqa: E402

KBRIDGE, AGENT = None, None
DRAIN = 2


def get(port, headers=None, conn=None):
    """(status, JSON body or text) of GET / on a new connection, or on conn."""
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/", headers=dict(headers or {}, Host="api.shop"))
    r = c.getresponse()
    body = r.read()
    if conn is None:
        c.close()
    try:
        return r.status, json.loads(body)
    except ValueError:
        return r.status, body.decode(errors="replace")


def healthz(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/healthz")
    r = c.getresponse()
    r.read()
    c.close()
    return r.status


class Drain(unittest.TestCase):
    def setUp(self):
        self.env = e = kbtest.Env(KBRIDGE, AGENT)
        self.addCleanup(e.close)
        self.tls = e.certs(keys=("alice",))
        self.origin = e.backend("origin")
        self.alice_local = e.backend("alice-local")

    def start(self, extra):
        a = self.env.agent(self.tls, "127.0.0.1:%d" % self.origin.port, extra=extra)
        self.env.proxy(a, self.tls, "alice", self.alice_local.port)
        return a

    def test_serves_while_draining_then_exits(self):
        a = self.start(["--drain-seconds", str(DRAIN)])
        self.assertEqual(get(a.port)[1]["served_by"], "origin")
        self.assertEqual(healthz(a.metrics_port), 200)
        keep = http.client.HTTPConnection("127.0.0.1", a.port, timeout=10)
        self.assertEqual(get(a.port, conn=keep)[1]["served_by"], "origin")
        t0 = time.monotonic()
        os.kill(a.p.pid, signal.SIGTERM)
        time.sleep(0.3)
        served = []
        while time.monotonic() - t0 < DRAIN - 0.4:
            served.append(get(a.port)[1]["served_by"])
            served.append(get(a.port, {"kubernetes-route-as": "alice"})[1]["served_by"])
            time.sleep(0.1)
        self.assertTrue(served and all(w in ("origin", "alice-local") for w in served), served)
        self.assertEqual(served[:2], ["origin", "alice-local"])
        self.assertEqual(healthz(a.metrics_port), 503, "/healthz while draining")
        # the keep-alive connection: answered once more, then closed by the agent
        self.assertEqual(get(a.port, conn=keep)[1]["served_by"], "origin")
        with self.assertRaises((http.client.HTTPException, OSError)):
            get(a.port, conn=keep)
        keep.close()
        a.p.wait(DRAIN + 5)
        took = time.monotonic() - t0
        self.assertEqual(a.p.returncode, 0)
        self.assertTrue(DRAIN - 0.1 <= took <= DRAIN + 3, "exited %.2f s after SIGTERM" % took)
        self.assertIn("draining for %d s" % DRAIN, a.stderr_text())
        print("drain: %d requests served after SIGTERM; exit after %.2f s" % (len(served), took))

    def test_no_drain_stops_at_once(self):
        a = self.start([])
        t0 = time.monotonic()
        os.kill(a.p.pid, signal.SIGTERM)
        a.p.wait(5)
        self.assertLess(time.monotonic() - t0, 2)
        s = socket.socket()
        with self.assertRaises(OSError):
            s.connect(("127.0.0.1", a.port))
        s.close()


if __name__ == "__main__":
    KBRIDGE, AGENT = kbtest.binaries_from_args()
    unittest.main(verbosity=2)
