#!/usr/bin/env python3
"""test_forwarded.py: the client's address reaches the original pods and the
developer (issue 17 item 9, routing/forwarded.h).

Real kbridge-agent, real kbridge proxy over mutual TLS, the echoing backend.py
as the original pods and as alice's local process. Each request's headers, as
the backend received them, are checked: X-Forwarded-For and Forwarded name the
client (appended to what an earlier proxy wrote), X-Forwarded-Proto is http
unless already set. Raw TCP passes byte for byte.

  python3 test_forwarded.py --kbridge PATH --agent PATH
"""
import http.client
import json
import os
import socket
import sys
import threading
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


def request(port, headers=(), host="127.0.0.1", path="/"):
    """GET with headers given as (name, value) pairs, repeats allowed; the
    backend's JSON (its headers: the last line of a repeated name)."""
    c = http.client.HTTPConnection(host, port, timeout=30)
    c.putrequest("GET", path, skip_host=True)
    c.putheader("Host", "api.shop")
    for k, v in headers:
        c.putheader(k, v)
    c.endheaders()
    r = c.getresponse()
    body = r.read()
    c.close()
    if r.status != 200:
        raise AssertionError("status %d: %r" % (r.status, body[:300]))
    return json.loads(body)


class Forwarded(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.env = e = kbtest.Env(KBRIDGE, AGENT)
        try:
            cls.tls = e.certs(keys=("alice",))
            cls.origin = e.backend("origin")
            cls.alice_local = e.backend("alice-local")
            cls.agent = e.agent(cls.tls, "127.0.0.1:%d" % cls.origin.port)
            cls.alice = e.proxy(cls.agent, cls.tls, "alice", cls.alice_local.port)
        except Exception:
            e.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.env.close()

    def check_client(self, h, xff, fwd, proto="http"):
        self.assertEqual(h.get("x-forwarded-for"), xff, h)
        self.assertEqual(h.get("forwarded"), fwd, h)
        self.assertEqual(h.get("x-forwarded-proto"), proto, h)

    def test_fallback_sees_the_client(self):
        info = request(self.agent.port)
        self.assertEqual(info["served_by"], "origin")
        self.check_client(info["headers"], "127.0.0.1", "for=127.0.0.1")

    def test_developer_sees_the_client(self):
        info = request(self.agent.port, [("kubernetes-route-as", "alice")])
        self.assertEqual(info["served_by"], "alice-local")
        self.check_client(info["headers"], "127.0.0.1", "for=127.0.0.1")

    def test_existing_values_are_appended_to(self):
        info = request(self.agent.port, [("X-Forwarded-For", "203.0.113.7"),
                                         ("Forwarded", 'for=203.0.113.7;proto=https'),
                                         ("X-Forwarded-Proto", "https")])
        self.check_client(info["headers"], "203.0.113.7, 127.0.0.1",
                          "for=203.0.113.7;proto=https, for=127.0.0.1", proto="https")

    def test_several_lines_become_one_list(self):
        # a backend that reads one line (here: the last) still sees the whole chain
        info = request(self.agent.port, [("kubernetes-route-as", "alice"),
                                         ("x-forwarded-for", "198.51.100.1, 198.51.100.2"),
                                         ("X-Forwarded-For", "203.0.113.9")])
        self.assertEqual(info["served_by"], "alice-local")
        self.assertEqual(info["headers"]["x-forwarded-for"],
                         "198.51.100.1, 198.51.100.2, 203.0.113.9, 127.0.0.1")

    def test_every_request_of_a_keepalive_connection(self):
        c = http.client.HTTPConnection("127.0.0.1", self.agent.port, timeout=30)
        for i in range(3):
            c.request("GET", "/", headers={"X-Forwarded-For": "10.0.0.%d" % i})
            r = c.getresponse()
            h = json.loads(r.read())["headers"]
            self.assertEqual(h["x-forwarded-for"], "10.0.0.%d, 127.0.0.1" % i)
        c.close()

    @unittest.skipUnless(has_ipv6_loopback(), "this machine has no IPv6 loopback (::1)")
    def test_ipv6_client_is_quoted_and_bracketed(self):
        agent = self.env.start("agent6", [AGENT, "--listen", "[::1]:0", "--fallback",
                                          "127.0.0.1:%d" % self.origin.port,
                                          "--tunnel-listen", "127.0.0.1:0", "--tls-dir", self.tls])
        port = int(agent.wait_line(r"^listen \[::1\]:(\d+)").group(1))
        agent.wait_line(r"^ready")
        info = request(port, host="::1")
        self.check_client(info["headers"], "::1", 'for="[::1]"')

    def test_raw_tcp_is_not_touched(self):
        echo = socket.socket()
        echo.bind(("127.0.0.1", 0))
        echo.listen(4)

        def serve():
            c, _ = echo.accept()
            while True:
                b = c.recv(65536)
                if not b:
                    break
                c.sendall(b)
            c.close()
        threading.Thread(target=serve, daemon=True).start()
        agent = self.env.start("agent-raw", [AGENT, "--listen", "127.0.0.1:0", "--fallback",
                                             "127.0.0.1:%d" % echo.getsockname()[1],
                                             "--tunnel-listen", "127.0.0.1:0",
                                             "--tls-dir", self.tls])
        port = int(agent.wait_line(r"^listen 127\.0\.0\.1:(\d+)").group(1))
        agent.wait_line(r"^ready")
        # not an HTTP/1.x request line: spliced raw, nothing added
        payload = b"\x16\x03\x01\x00\x05hello\r\nX-Forwarded-For: no\r\n\r\n"
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            b = s.recv(65536)
            if not b:
                break
            got += b
        s.close()
        echo.close()
        self.assertEqual(got, payload)


if __name__ == "__main__":
    KBRIDGE, AGENT = kbtest.binaries_from_args()
    unittest.main(verbosity=2)
