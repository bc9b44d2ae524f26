#!/usr/bin/env python3
"""test_review16.py: regression tests for the data-plane defects of issue 16
(an outside review; listed with their fixes in docs/security.md).

Each test reproduces what the review saw, on loopback, against the real agent
(and `kbridge proxy` where a developer is involved), and checks the fixed
behaviour:

  1  CONNECT with Content-Length / Transfer-Encoding: 400, nothing reaches the
     backend; a refused CONNECT's upstream is never pooled
  2  a tunnel peer that floods PINGs (before HELLO) or empty DATA on unknown
     streams without reading: cut off, agent RSS bounded, counted in /metrics
  3  clients that never read: bounded memory each, closed by the send timeout,
     closes counted by reason
  4  a 101 to a request that asked for no (or another) upgrade: 502, never spliced
  5  EMFILE on the tunnel listener: back-off (little CPU, few log lines);
     unauthenticated tunnel connections capped and timed out
  6  a retried request keeps its injected route lines
  7  pipelined requests survive the client's half-close
  8  pooled developer streams are not reused across service ports

  python3 test_review16.py --kbridge PATH --agent PATH [unittest args]
"""
import json
import os
import re
import resource
import socket
import ssl
import struct
import sys
import threading
import time
import unittest

import kbtest

KBRIDGE = AGENT = None


# --- a scripted HTTP/1.1 backend that frames requests like RFC 9112 says ---------------

class ScriptBackend:
    """Threaded raw-socket server on 127.0.0.1:0. Every request is logged as
    (conn id, method, path, headers). Paths:
      /slow        answers after 0.3 s
      /bare101     a bare "101 Switching Protocols" (no Upgrade), then logs raw bytes
      /h2c         101 with "Upgrade: h2c", then logs raw bytes
      /ws          101 with "Upgrade: websocket", then echoes
      /drop-next   answers, then closes without answering the next request
      CONNECT      405 (keep-alive), its Content-Length bytes read as a body
      anything     200 with a JSON body: method, path, headers, conn id
    """

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.log = []
        self.raw = {}  # conn id -> bytes received after a 101
        self.lock = threading.Lock()
        self.nconns = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.sock.close()

    def paths(self):
        with self.lock:
            return [r[2] for r in self.log]

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.nconns += 1
                cid = self.nconns
            threading.Thread(target=self._serve, args=(c, cid), daemon=True).start()

    def _serve(self, c, cid):
        f = c.makefile("rb")
        drop_next = False
        try:
            while True:
                line = f.readline()
                if not line:
                    return
                method, path, version = line.decode("latin-1").split()
                headers = {}
                while True:
                    h = f.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, v = h.decode("latin-1").split(":", 1)
                    headers[k.strip().lower()] = v.strip()
                with self.lock:
                    self.log.append((cid, method, path, headers))
                if drop_next:
                    return
                if "content-length" in headers:
                    f.read(int(headers["content-length"]))
                if method == "CONNECT":
                    c.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                    continue
                if path == "/slow":
                    time.sleep(0.3)
                if path in ("/bare101", "/h2c"):
                    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\n" +
                              (b"Upgrade: h2c\r\nConnection: Upgrade\r\n" if path == "/h2c" else b"")
                              + b"\r\n")
                    while True:
                        d = c.recv(65536)
                        if not d:
                            return
                        with self.lock:
                            self.raw[cid] = self.raw.get(cid, b"") + d
                if path == "/ws":
                    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                              b"Connection: Upgrade\r\n\r\n")
                    while True:
                        d = c.recv(65536)
                        if not d:
                            return
                        c.sendall(d)
                if path.startswith("/big/"):
                    n = int(path.split("/")[2])
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
                    chunk = b"x" * 65536
                    while n > 0:
                        c.sendall(chunk[:min(n, len(chunk))])
                        n -= len(chunk)
                    continue
                if path == "/drop-next":
                    drop_next = True
                body = json.dumps({"method": method, "path": path, "headers": headers,
                                   "conn": cid}).encode()
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(body) + body)
        except (OSError, ValueError):
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass


def read_response(f):
    """(status, headers, body) of one response on file f (1xx other than 101 skipped)."""
    while True:
        line = f.readline()
        if not line:
            raise EOFError("connection closed before a response")
        status = int(line.split()[1])
        headers = {}
        while True:
            h = f.readline()
            if h in (b"\r\n", b""):
                break
            k, v = h.decode("latin-1").split(":", 1)
            headers[k.strip().lower()] = v.strip()
        if 100 <= status < 200 and status != 101:
            continue
        break
    body = b""
    if status != 101 and "content-length" in headers:
        body = f.read(int(headers["content-length"]))
    return status, headers, body


def get(path, host=b"svc", extra=b""):
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + extra + b"\r\n"


def sanitized():
    """Is the agent an ASan build? (Its RSS then says little about its buffers.)"""
    with open(AGENT, "rb") as fh:
        return b"__asan_init" in fh.read()


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metrics(agent):
    s = socket.create_connection(("127.0.0.1", agent.metrics_port), timeout=5)
    s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        data += d
    s.close()
    return data.decode()


def metric(text, name):
    m = re.search(r"^%s (\d+)" % re.escape(name), text, re.M)
    return int(m.group(1)) if m else None


class Base(unittest.TestCase):
    def setUp(self):
        self.env = kbtest.Env(KBRIDGE, AGENT)
        self.backend = ScriptBackend()

    def tearDown(self):
        try:
            for p in self.env.procs:  # agents end cleanly on SIGTERM (and leak-free under ASan)
                if p.name == "agent":
                    rc = p.stop()
                    self.assertNotIn("Sanitizer", p.stderr_text())
                    self.assertEqual(rc, 0, "agent exit status %s on SIGTERM\n%s" % (rc, p.tail()))
        finally:
            self.backend.close()
            self.env.close()

    def agent(self, extra=(), tls=None):
        self.tls = tls or self.env.certs()
        return self.env.agent(self.tls, "127.0.0.1:%d" % self.backend.port, extra=list(extra))

    def connect(self, port, timeout=5):
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        return s, s.makefile("rb")

    def expect_closed(self, s, f):
        s.settimeout(5)
        try:
            self.assertEqual(f.read(), b"", "the agent should close the connection")
        finally:
            f.close()
            s.close()


# --- 1: CONNECT smuggling -------------------------------------------------------------------

class Connect(Base):
    def test_connect_with_content_length_refused(self):
        a = self.agent()
        smuggled = get("/smuggled")
        for framing in (b"Content-Length: %d\r\n" % len(smuggled),
                        b"Transfer-Encoding: chunked\r\n"):
            s, f = self.connect(a.port)
            s.sendall(b"CONNECT svc:443 HTTP/1.1\r\nHost: svc:443\r\n" + framing + b"\r\n" +
                      smuggled + get("/victim"))
            st, h, body = read_response(f)
            self.assertEqual(st, 400, body)
            self.assertIn(b"CONNECT", body)
            self.assertEqual(h.get("connection"), "close")
            self.expect_closed(s, f)
        time.sleep(0.2)
        self.assertEqual(self.backend.paths(), [], "nothing may reach the backend")

    def test_refused_connect_never_pooled(self):
        a = self.agent()
        s, f = self.connect(a.port)
        s.sendall(b"CONNECT svc:443 HTTP/1.1\r\nHost: svc:443\r\n\r\n")
        st, _, _ = read_response(f)
        self.assertEqual(st, 405)
        self.expect_closed(s, f)  # what the client sent after CONNECT is not HTTP we know
        connect_conn = [r[0] for r in self.backend.log if r[1] == "CONNECT"][0]
        s, f = self.connect(a.port)
        s.sendall(get("/victim"))
        st, _, body = read_response(f)
        self.assertEqual(st, 200)
        self.assertNotEqual(json.loads(body)["conn"], connect_conn,
                            "the upstream of a refused CONNECT was reused")
        s.close()


# --- 4: 101 without an upgrade asked for ------------------------------------------------------

class Upgrade(Base):
    def test_bare_101_does_not_take_the_connection(self):
        a = self.agent()
        s, f = self.connect(a.port)
        s.sendall(get("/bare101") + get("/two", extra=b"Authorization: Bearer secret\r\n"))
        st, h, body = read_response(f)
        self.assertEqual(st, 502, body)
        self.assertIn(b"101", body)
        self.expect_closed(s, f)
        time.sleep(0.2)
        raw = b"".join(self.backend.raw.values())
        self.assertNotIn(b"secret", raw, "the next request went to whoever answered 101")
        self.assertEqual(self.backend.paths(), ["/bare101"])

    def test_101_for_another_protocol(self):
        a = self.agent()
        s, f = self.connect(a.port)
        s.sendall(b"GET /h2c HTTP/1.1\r\nHost: svc\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\n\r\n")
        st, _, body = read_response(f)
        self.assertEqual(st, 502, body)
        self.expect_closed(s, f)

    def test_101_asked_for_is_spliced(self):
        a = self.agent()
        s, f = self.connect(a.port)
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: svc\r\nUpgrade: WebSocket\r\n"
                  b"Connection: keep-alive, Upgrade\r\n\r\n")
        st, h, _ = read_response(f)
        self.assertEqual(st, 101)
        s.sendall(b"echo me")
        self.assertEqual(f.read(7), b"echo me")
        s.close()


# --- 7: half-close with pipelined requests ------------------------------------------------------

class HalfClose(Base):
    def test_pipelined_requests_survive_half_close(self):
        a = self.agent()
        s, f = self.connect(a.port)
        s.sendall(get("/slow") + get("/second"))
        s.shutdown(socket.SHUT_WR)
        st1, _, b1 = read_response(f)
        st2, _, b2 = read_response(f)
        self.assertEqual((st1, json.loads(b1)["path"]), (200, "/slow"))
        self.assertEqual((st2, json.loads(b2)["path"]), (200, "/second"))
        self.expect_closed(s, f)

    def test_half_close_inside_a_request_still_aborts(self):
        a = self.agent()
        s, f = self.connect(a.port)
        s.sendall(get("/slow") + b"GET /partial HTTP/1.1\r\nHo")
        s.shutdown(socket.SHUT_WR)
        st1, _, b1 = read_response(f)
        self.assertEqual(json.loads(b1)["path"], "/slow")
        self.expect_closed(s, f)
        self.assertEqual(self.backend.paths(), ["/slow"])


# --- 2: a tunnel peer that asks for answers and never reads them --------------------------------

def frame(ftype, stream, payload=b"", flags=0):
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, ftype, flags, stream) + payload


def hello_frame(key):
    return frame(1, 0, struct.pack(">BBI", 1, 0, 262144) + bytes([len(key)]) + key +
                 bytes([4]) + b"test")


def tls_tunnel(agent, tls, key="alice", rcvbuf=4096):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(os.path.join(tls, "ca.crt"))
    ctx.load_cert_chain(os.path.join(tls, key + ".crt"), os.path.join(tls, key + ".key"))
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: small window
    raw.connect(("127.0.0.1", agent.tunnel_port))
    return ctx.wrap_socket(raw)


def flood(agent, tls, prefix, unit, seconds=2.5):
    """Send prefix, then unit repeated as fast as possible for `seconds`, never
    reading. Returns (peak agent RSS in KiB, bytes sent, cut off by the agent?)."""
    s = tls_tunnel(agent, tls)
    s.settimeout(0.5)
    block = unit * (65536 // len(unit))
    peak = [rss_kib(agent.p.pid)]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(agent.p.pid))
            time.sleep(0.02)
    threading.Thread(target=sample, daemon=True).start()
    sent, cut = 0, False
    deadline = time.monotonic() + seconds
    try:
        s.sendall(prefix)
        while time.monotonic() < deadline:
            s.sendall(block)
            sent += len(block)
    except socket.timeout:
        pass  # the agent stopped reading
    except (OSError, ssl.SSLError):
        cut = True
    done.set()
    time.sleep(0.05)
    s.close()
    return peak[0], sent, cut


class TunnelFlood(Base):
    def check(self, name, prefix, unit):
        a = self.agent()
        time.sleep(0.3)
        base = rss_kib(a.p.pid)
        peak, sent, cut = flood(a, self.tls, prefix, unit)
        time.sleep(0.3)
        m = metrics(a)
        print("\n  %s: %.1f MB sent without reading; agent RSS %d -> peak %d KiB; cut off: %s; "
              "flood closes %s" % (name, sent / 1e6, base, peak, cut,
                                   metric(m, "kbridge_tunnel_flood_closes_total")),
              file=sys.stderr)
        self.assertLess(peak - base, 24 * 1024, "control replies piled up in the agent")
        self.assertEqual(metric(m, "kbridge_tunnel_flood_closes_total"), 1)
        self.assertIn("enhance your calm", a.stderr_text())
        # the agent still takes tunnels and requests
        self.env.proxy(a, self.tls, "alice", self.backend.port)
        s, f = self.connect(a.port)
        s.sendall(get("/after", extra=b"kubernetes-route-as: alice\r\n"))
        self.assertEqual(read_response(f)[0], 200)
        s.close()

    def test_ping_flood_before_hello(self):
        self.check("PING flood before HELLO", b"", frame(8, 0, b"12345678"))

    def test_empty_data_flood_on_unknown_streams(self):
        self.check("empty DATA flood", hello_frame(b"alice"), frame(4, 1001))


# --- 3: clients that never read -----------------------------------------------------------

def non_reading_clients(agent, n, path="/big/10000000"):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", agent.port))
        s.sendall(get(path))
        socks.append(s)
    return socks


def settled_rss(pid, limit=10):
    last, stable = -1, 0
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and stable < 3:
        time.sleep(0.4)
        r = rss_kib(pid)
        stable = stable + 1 if abs(r - last) < 64 else 0
        last = r
    return rss_kib(pid)


class NonReading(Base):
    def test_memory_per_non_reading_client_is_small(self):
        a = self.agent()
        time.sleep(0.3)
        base = rss_kib(a.p.pid)
        n = 100
        socks = non_reading_clients(a, n)
        rss = settled_rss(a.p.pid)
        per = (rss - base) / n
        print("\n  %d clients asking for 10 MB and never reading: %.0f KiB each (agent %d -> %d KiB)"
              % (n, per, base, rss), file=sys.stderr)
        if not sanitized():  # ASan's quarantine and shadow memory make RSS meaningless
            self.assertLess(per, 160, "a non-reading client holds too much")
        for s in socks:
            s.close()

    def test_send_timeout_closes_and_counts(self):
        a = self.agent(["--send-timeout-ms", "500"])
        socks = non_reading_clients(a, 3)
        t0 = time.monotonic()
        deadline = t0 + 10
        closes = 0
        while time.monotonic() < deadline:
            m = metrics(a)
            closes = int(re.search(r'kbridge_client_closes_total\{reason="send_timeout"\} (\d+)',
                                   m).group(1))
            if closes == 3:
                break
            time.sleep(0.1)
        dt = time.monotonic() - t0
        print("\n  3 non-reading clients closed by --send-timeout-ms 500 after %.1f s" % dt,
              file=sys.stderr)
        self.assertEqual(closes, 3)
        self.assertEqual(metric(m, "kbridge_connections_open"), 0)
        self.assertIn("took no bytes", a.stderr_text())
        for s in socks:
            s.close()
        # a reading client with a slow response is not affected
        s, f = self.connect(a.port)
        s.sendall(get("/slow"))
        self.assertEqual(read_response(f)[0], 200)
        s.close()


class NonReadingUpgraded(Base):
    def test_send_timeout_covers_upgraded_connections(self):
        a = self.agent(["--send-timeout-ms", "500"])
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", a.port))
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: svc\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\n\r\n")
        s.settimeout(0.2)
        sent = 0
        t0 = time.monotonic()
        try:  # the backend echoes; we never read, so the agent's output to us fills
            while time.monotonic() - t0 < 8:
                try:
                    sent += s.send(b"x" * 65536)
                except socket.timeout:
                    pass
                if metric(metrics(a).replace('{reason="send_timeout"}', "_st"),
                          "kbridge_client_closes_total_st"):
                    break
        except OSError:
            pass  # reset by the agent
        m = metrics(a)
        self.assertIn('kbridge_client_closes_total{reason="send_timeout"} 1', m)
        self.assertEqual(metric(m, "kbridge_connections_open"), 0)
        s.close()


# --- 5: the tunnel listener out of descriptors; unauthenticated tunnel connections --------------

class TunnelListener(Base):
    def start_agent(self, extra=(), prefix=()):
        self.tls = self.env.certs()
        p = self.env.start("agent", list(prefix) + [
            AGENT, "--listen", "127.0.0.1:0", "--fallback", "127.0.0.1:%d" % self.backend.port,
            "--tunnel-listen", "127.0.0.1:0", "--tls-dir", self.tls, "--metrics", "127.0.0.1:0"]
            + list(extra))
        p.port = int(p.wait_line(r"^listen 127\.0\.0\.1:(\d+)").group(1))
        p.tunnel_port = int(p.wait_line(r"^tunnel-listen 127\.0\.0\.1:(\d+)").group(1))
        p.metrics_port = int(p.wait_line(r"^metrics 127\.0\.0\.1:(\d+)").group(1))
        p.wait_line(r"^ready")
        return p

    def served_by_alice(self, a):
        s, f = self.connect(a.port)
        s.sendall(get("/a", extra=b"kubernetes-route-as: alice\r\n"))
        self.assertEqual(read_response(f)[0], 200)
        s.close()

    def test_emfile_on_tunnel_port_backs_off(self):
        a = self.start_agent(prefix=["prlimit", "--nofile=40"])
        time.sleep(0.2)
        c0 = cpu_seconds(a.p.pid)
        socks = [socket.create_connection(("127.0.0.1", a.tunnel_port)) for _ in range(60)]
        time.sleep(2)
        cpu = cpu_seconds(a.p.pid) - c0
        log = a.stderr_text()
        print("\n  --nofile=40, 60 plain connects to the tunnel port: %.2f s CPU in 2 s, "
              "%d accept-failed lines" % (cpu, log.count("accept failed")), file=sys.stderr)
        self.assertLess(cpu, 0.5, "the tunnel listener spins on EMFILE")
        self.assertLess(log.count("accept failed"), 10)
        self.assertIn("pausing tunnel accepts", log)
        for s in socks:
            s.close()
        self.env.proxy(a, self.tls, "alice", self.backend.port)  # accepted again
        self.served_by_alice(a)
        self.assertGreaterEqual(metric(metrics(a), "kbridge_tunnel_accept_errors_total"), 1)

    def test_pending_tunnels_capped_and_timed_out(self):
        a = self.start_agent(["--max-pending-tunnels", "4", "--tunnel-handshake-timeout-ms", "500"])
        socks = [socket.create_connection(("127.0.0.1", a.tunnel_port)) for _ in range(10)]
        time.sleep(0.2)
        m = metrics(a)
        self.assertLessEqual(metric(m, "kbridge_tunnels"), 4, "pending tunnels are not capped")
        self.assertEqual(metric(m, "kbridge_tunnels_pending"), 4)
        self.assertIn("pausing tunnel accepts", a.stderr_text())
        # silent ones are closed by the handshake timeout, and the others get their turn
        t0 = time.monotonic()
        closed = 0
        for s in socks:
            s.settimeout(5)
            try:
                closed += s.recv(1) == b""
            except ConnectionResetError:
                closed += 1
            except socket.timeout:
                pass
            s.close()
        print("\n  10 silent tunnel connections, cap 4, timeout 500 ms: %d closed by the agent "
              "within %.1f s" % (closed, time.monotonic() - t0), file=sys.stderr)
        self.assertEqual(closed, 10)
        self.assertIn("no HELLO within 500 ms", a.stderr_text())
        self.env.proxy(a, self.tls, "alice", self.backend.port)
        self.served_by_alice(a)


# --- 6 and 8: through a developer's tunnel ------------------------------------------------------

class Developer(Base):
    def test_retry_keeps_route_lines(self):
        a = self.agent()
        self.env.proxy(a, self.tls, "alice", self.backend.port)
        s, f = self.connect(a.port)
        s.sendall(get("/drop-next", host=b"alice.svc.shop"))
        st, _, b = read_response(f)
        self.assertEqual(json.loads(b)["headers"].get("kubernetes-route-as"), "alice")
        # the pooled stream's local connection is closed when this arrives: retried
        s.sendall(get("/again", host=b"alice.svc.shop"))
        st, _, b = read_response(f)
        j = json.loads(b)
        self.assertEqual((st, j["path"]), (200, "/again"))
        self.assertEqual(j["headers"].get("kubernetes-route-as"), "alice",
                         "the retried request lost its route lines")
        self.assertIn("kbridge-route=alice", j["headers"].get("baggage", ""))
        s.close()

    def test_pooled_streams_keyed_by_port(self):
        tls = self.env.certs()
        p = self.env.start("agent", [AGENT, "--listen", "127.0.0.1:0,127.0.0.1:0",
                                     "--fallback", "127.0.0.1:%d" % self.backend.port,
                                     "--tunnel-listen", "127.0.0.1:0", "--tls-dir", tls,
                                     "--metrics", "127.0.0.1:0"])
        ports = []
        while len(ports) < 2:
            line = p.wait_line(r"^listen 127\.0\.0\.1:(\d+)")
            ports.append(int(line.group(1)))
            p.seen.remove(line.string)
        p.tunnel_port = int(p.wait_line(r"^tunnel-listen 127\.0\.0\.1:(\d+)").group(1))
        p.wait_line(r"^ready")
        self.env.proxy(p, tls, "alice", self.backend.port)

        def conn_of(port):
            s, f = self.connect(port)
            s.sendall(get("/p", extra=b"kubernetes-route-as: alice\r\n"))
            st, _, b = read_response(f)
            s.close()
            f.close()
            self.assertEqual(st, 200)
            return json.loads(b)["conn"]

        first = conn_of(ports[0])
        time.sleep(0.1)  # the stream is back in the pool
        other = conn_of(ports[1])
        self.assertNotEqual(other, first, "a stream opened for one port served another")
        time.sleep(0.1)
        self.assertEqual(conn_of(ports[0]), first, "pooling per port should still reuse")


if __name__ == "__main__":
    KBRIDGE, AGENT = kbtest.binaries_from_args()
    unittest.main(verbosity=2)
