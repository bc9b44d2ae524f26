#!/usr/bin/env python3
"""test_dualstack.py: the agent's listeners answer over IPv6 and IPv4 (issue 17
item 16, agent/bind.h).

The agent is started with the addresses `kbridge connect` gives it in the
cluster ("[::]:PORT" for the service port, the tunnel and /healthz), then
reached over ::1 and over 127.0.0.1 on each: an HTTP request through the
service port (the original pods see the client's address), /healthz on the
metrics port, and a developer tunnel over IPv6 carrying a routed request.
Both ways the agent binds "[::]": one dual-stack socket, and two sockets (the
test hook KBRIDGE_TEST_NO_DUALSTACK=1 as if the kernel refused one).

As root, the test runs in a network namespace of its own with
net.ipv6.bindv6only=1 (as some distributions and hardened nodes set it), where
a "[::]" socket left at the kernel's default takes IPv6 only: the agent must
ask for dual-stack itself.

  python3 test_dualstack.py --kbridge PATH --agent PATH
"""
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kbtest  # noqa: E402

KBRIDGE, AGENT = None, None


def has_ipv6_loopback():
    try:
        s = socket.socket(socket.AF_INET6)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


def get(host, port, path="/", headers=None):
    c = http.client.HTTPConnection(host, port, timeout=20)
    c.request("GET", path, headers=headers or {})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


class DualStack(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not has_ipv6_loopback():
            raise unittest.SkipTest("this machine has no IPv6 loopback (::1)")
        cls.env = e = kbtest.Env(KBRIDGE, AGENT)
        try:
            cls.tls = e.certs(keys=("alice",))
            cls.origin = e.backend("origin")
            cls.alice_local = e.backend("alice-local")
        except Exception:
            e.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.env.close()

    def start_agent(self, name, env=None):
        a = self.env.start(name, [AGENT, "--listen", "[::]:0", "--fallback",
                                  "127.0.0.1:%d" % self.origin.port, "--tunnel-listen", "[::]:0",
                                  "--metrics", "[::]:0", "--tls-dir", self.tls],
                           env=dict(os.environ, **(env or {})))
        a.port = int(a.wait_line(r"^listen \[::\]:(\d+)").group(1))
        a.tunnel_port = int(a.wait_line(r"^tunnel-listen \[::\]:(\d+)").group(1))
        a.metrics_port = int(a.wait_line(r"^metrics \[::\]:(\d+)").group(1))
        a.wait_line(r"^ready")
        return a

    def check_both_families(self, agent, how):
        for host, client in (("127.0.0.1", "127.0.0.1"), ("::1", "::1")):
            try:
                st, body = get(host, agent.port)
            except OSError as e:
                self.fail("service port over %s: %s" % (host, e))
            self.assertEqual(st, 200, "service port over %s: %r" % (host, body[:200]))
            info = json.loads(body)
            self.assertEqual(info["served_by"], "origin")
            self.assertEqual(info["headers"].get("x-forwarded-for"), client)
            st, body = get(host, agent.metrics_port, "/healthz")
            self.assertEqual(st, 200, "/healthz over %s: %r" % (host, body[:200]))
            socket.create_connection((host, agent.tunnel_port), timeout=10).close()
        # a developer's tunnel over IPv6, a routed request over IPv4
        proxy = self.env.start("proxy-" + agent.name,
                               [KBRIDGE, "proxy", "--agent", "[::1]:%d" % agent.tunnel_port,
                                "--tls-dir", self.tls, "--route-as", "alice",
                                "--local-port", str(self.alice_local.port)])
        proxy.wait_line(r"^ready")
        st, body = get("127.0.0.1", agent.port, headers={"kubernetes-route-as": "alice"})
        self.assertEqual((st, json.loads(body)["served_by"]), (200, "alice-local"))
        proxy.stop()
        log = agent.stderr_text()
        for what in ("port [::]:%d" % agent.port, "tunnel-listen", "metrics"):
            self.assertTrue(any(what in l and how in l for l in log.splitlines()),
                            "no log line naming %r with %r:\n%s" % (what, how, log))

    def test_one_dual_stack_socket(self):
        a = self.start_agent("agent-dual")
        self.check_both_families(a, "one dual-stack socket")
        a.stop()

    def test_two_sockets_when_dual_stack_is_refused(self):
        a = self.start_agent("agent-two", {"KBRIDGE_TEST_NO_DUALSTACK": "1"})
        self.check_both_families(a, "two sockets")
        a.stop()

    def test_explicit_ipv4_stays_ipv4(self):
        a = self.env.start("agent-v4", [AGENT, "--listen", "0.0.0.0:0", "--fallback",
                                        "127.0.0.1:%d" % self.origin.port,
                                        "--tunnel-listen", "127.0.0.1:0", "--tls-dir", self.tls])
        port = int(a.wait_line(r"^listen 0\.0\.0\.0:(\d+)").group(1))
        a.wait_line(r"^ready")
        self.assertEqual(get("127.0.0.1", port)[0], 200)
        with self.assertRaises(OSError):
            socket.create_connection(("::1", port), timeout=5).close()
        a.stop()


def in_own_netns():
    """Re-run this file in a new network namespace with bindv6only=1 (root
    only); returns only when already inside, or when that is not possible."""
    if os.environ.get("KBTEST_NETNS") or os.geteuid() != 0 or not shutil.which("unshare"):
        return
    env = dict(os.environ, KBTEST_NETNS=os.readlink("/proc/self/ns/net"))  # the one we leave
    r = subprocess.run(["unshare", "--net", "--", sys.executable] + sys.argv, env=env)
    sys.exit(r.returncode)


def netns_setup():
    if not os.environ.get("KBTEST_NETNS"):
        print("not root (or no unshare): running in this network namespace, "
              "net.ipv6.bindv6only as the host has it", file=sys.stderr)
        return
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    names = [l.split(":")[1].strip() for l in links.splitlines() if ":" in l]
    if os.readlink("/proc/self/ns/net") == os.environ["KBTEST_NETNS"] or names != ["lo"]:
        sys.exit("KBTEST_NETNS set outside a fresh network namespace (links: %s): refusing to "
                 "change net.ipv6.bindv6only there" % names)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with open("/proc/sys/net/ipv6/bindv6only", "w") as f:
        f.write("1")
    print("in a network namespace of its own, net.ipv6.bindv6only=1", file=sys.stderr)


if __name__ == "__main__":
    in_own_netns()
    KBRIDGE, AGENT = kbtest.binaries_from_args()
    netns_setup()
    unittest.main(verbosity=2)
