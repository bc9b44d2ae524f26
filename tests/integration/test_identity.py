#!/usr/bin/env python3
"""Route keys bound to identities (docs/security.md), with the real agent and
proxy on loopback: certificates from `kbridge certs issue --identity`, as
kbridge-signer issues them in a cluster.

  - the agent records the identity at HELLO: /healthz names it, its log and its
    (debug) request log show it;
  - a second identity presenting a valid certificate for the same key is refused,
    naming the holder; the holder keeps the route;
  - with --force it takes the key over: the agent logs FORCE, the old holder's
    tunnels get GOAWAY and its proxy, refused on reconnect, exits; requests go to
    the new holder;
  - the same identity may open more tunnels for its key (round-robin).

  python3 test_identity.py --kbridge BIN --agent BIN
"""
import json
import os
import shutil
import sys
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kbtest  # noqa: E402
from test_dataplane import served_by  # noqa: E402

KBRIDGE, AGENT = None, None
ALICE = "system:serviceaccount:shop:alice"
BOB = "user bob@example.com"  # spaces and '@': percent-encoded in the certificate


def healthz(agent):
    with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % agent.metrics_port, timeout=10) as r:
        text = r.read().decode()
    return json.loads(text.split("\n", 1)[1])


def wait_for(what, fn, timeout=15):
    end = time.time() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.time() > end:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.1)


class Identity(unittest.TestCase):
    def setUp(self):
        self.env = e = kbtest.Env(KBRIDGE, AGENT)
        self.tls = os.path.join(e.dir, "tls")
        kbtest.run([KBRIDGE, "certs", "init", self.tls])
        # one key, two identities: each in a directory of its own
        self.dirs = {}
        for who, ident in (("alice", ALICE), ("bob", BOB)):
            kbtest.run([KBRIDGE, "certs", "issue", self.tls, "--key", "shared", "--identity", ident])
            d = os.path.join(e.dir, who)
            os.mkdir(d, 0o700)
            for f in ("ca.crt", "shared.crt", "shared.key"):
                shutil.copy(os.path.join(self.tls, f), os.path.join(d, f))
            self.dirs[who] = d
        self.origin = e.backend("origin")
        self.alice_local = e.backend("alice-local")
        self.bob_local = e.backend("bob-local")
        self.agent = e.agent(self.tls, "127.0.0.1:%d" % self.origin.port,
                             extra=["--log-level", "debug"])

    def tearDown(self):
        self.env.close()

    def route(self):
        return served_by(self.agent.port, headers={"kubernetes-route-as": "shared"})["served_by"]

    def test_identity_recorded_and_other_identity_refused(self):
        e = self.env
        e.proxy(self.agent, self.dirs["alice"], "shared", self.alice_local.port, name="p-alice")
        self.assertEqual(healthz(self.agent)["identities"], {"shared": ALICE})
        self.assertEqual(self.route(), "alice-local")
        log = self.agent.stderr_text()
        self.assertIn("developer shared [%s] connected" % ALICE, log)
        wait_for("the request log line", lambda: "-> shared [%s] (header)" % ALICE
                 in self.agent.stderr_text())
        # bob holds a valid certificate for the same key, from the same CA
        p = e.proxy(self.agent, self.dirs["bob"], "shared", self.bob_local.port, wait=False,
                    name="p-bob")
        rc = p.p.wait(15)
        self.assertNotEqual(rc, 0)
        self.assertIn("held by " + ALICE, p.stderr_text())
        self.assertIn("--force", p.stderr_text())
        self.assertEqual(self.route(), "alice-local")
        self.assertEqual(healthz(self.agent)["identities"], {"shared": ALICE})
        self.assertIn("refused: route key shared is held by %s, not %s" % (ALICE, BOB),
                      self.agent.stderr_text())

    def test_force_takes_over_and_is_logged(self):
        e = self.env
        pa = e.proxy(self.agent, self.dirs["alice"], "shared", self.alice_local.port,
                     name="p-alice")
        self.assertEqual(self.route(), "alice-local")
        e.proxy(self.agent, self.dirs["bob"], "shared", self.bob_local.port,
                extra=["--force"], name="p-bob")
        self.assertIn("FORCE: route key shared taken over by %s from %s" % (BOB, ALICE),
                      self.agent.stderr_text())
        self.assertEqual(healthz(self.agent)["identities"], {"shared": BOB})
        self.assertEqual(self.route(), "bob-local")
        # alice's proxy got GOAWAY, reconnected, was refused: it ends and says why
        rc = pa.p.wait(20)
        self.assertNotEqual(rc, 0)
        self.assertIn("held by " + BOB, pa.stderr_text())
        self.assertEqual(self.route(), "bob-local")
        self.assertEqual(healthz(self.agent)["keys"], {"shared": 1})

    def test_same_identity_joins(self):
        e = self.env
        e.proxy(self.agent, self.dirs["alice"], "shared", self.alice_local.port, name="p-a1")
        e.proxy(self.agent, self.dirs["alice"], "shared", self.alice_local.port, name="p-a2")
        h = healthz(self.agent)
        self.assertEqual(h["keys"], {"shared": 2})
        self.assertEqual(h["identities"], {"shared": ALICE})


if __name__ == "__main__":
    import faulthandler
    faulthandler.dump_traceback_later(int(os.environ.get("KBTEST_HANG_DUMP", "600")), exit=True)
    KBRIDGE, AGENT = kbtest.binaries_from_args()
    import test_dataplane
    test_dataplane.KBRIDGE, test_dataplane.AGENT = KBRIDGE, AGENT
    unittest.main(verbosity=2)
