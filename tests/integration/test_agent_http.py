#!/usr/bin/env python3
"""test_agent_http.py: HTTP/1.1 semantics of kbridge-agent with only a fallback.

No tunnel is involved: every request goes to the fallback, a small raw-socket
HTTP server defined here (so each response shape is exact: 103, 204/304 without
a body, close-delimited, chunked, 101 then an echo). Each test talks to the
agent over plain sockets and checks bytes, order and connection handling.

  python3 test_agent_http.py --agent PATH [--kbridge PATH] [unittest args]
"""
import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

AGENT = None
KBRIDGE = None


# --- a fallback server with exact control over response shapes ----------------------

class Conn:
    """A socket with room for per-connection flags."""

    def __init__(self, sock):
        self.sock = sock
        self.drop_next = False

    def __getattr__(self, name):
        return getattr(self.sock, name)


class Backend:
    """Threaded HTTP/1.1 server on 127.0.0.1:0. Knows these paths:
    /              JSON: method, path, headers, body length and sha256, conn id
    /hints         103 Early Hints, then the JSON answer
    /status/N      status N; no body for 204/304, else 'status N'
    /chunked       a chunked response of three chunks
    /eof           a response delimited by closing the connection
    /ws            101 Switching Protocols, then echo every byte
    HEAD on any    the headers of GET (Content-Length included), no body
    An `Expect: 100-continue` request gets `100 Continue` before its body is read.
    """

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.conns = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns += 1
                cid = self.conns
            threading.Thread(target=self._serve, args=(Conn(c), cid), daemon=True).start()

    def close(self):
        self.sock.close()

    def _serve(self, c, cid):
        f = c.makefile("rb")
        try:
            while self._one(c, f, cid):
                pass
        except (OSError, ValueError):
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass

    def _one(self, c, f, cid):
        line = f.readline()
        if not line:
            return False
        if getattr(c, "drop_next", False):
            return False  # a keep-alive timeout racing the next request: close, no answer
        method, path, version = line.decode("latin-1").split()
        headers = {}
        while True:
            h = f.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            k, v = h.decode("latin-1").split(":", 1)
            headers[k.strip().lower()] = v.strip()
        if headers.get("expect", "").lower() == "100-continue":
            c.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size = int(f.readline().split(b";")[0], 16)
                if size == 0:
                    while f.readline() not in (b"\r\n", b""):
                        pass
                    break
                body += f.read(size)
                f.readline()
        elif "content-length" in headers:
            body = f.read(int(headers["content-length"]))
        conn_hdr = headers.get("connection", "").lower()
        keep = (version == "HTTP/1.1" and "close" not in conn_hdr) or \
               (version == "HTTP/1.0" and "keep-alive" in conn_hdr)
        head_only = method == "HEAD"

        def send(status, hdrs, payload, keep_alive=keep):
            out = "HTTP/1.1 %s\r\n" % status
            for k, v in hdrs:
                out += "%s: %s\r\n" % (k, v)
            out += "X-Conn: %d\r\n" % cid
            if not keep_alive:
                out += "Connection: close\r\n"
            out += "\r\n"
            c.sendall(out.encode() + (b"" if head_only else payload))
            return keep_alive

        if path == "/ws" and headers.get("upgrade", "").lower() == "websocket":
            c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\n\r\nhello-from-upstream;")
            while True:
                d = c.recv(65536)
                if not d:
                    return False
                c.sendall(d)
        if path.startswith("/status/"):
            code = int(path.split("/")[2])
            if code in (204, 304):
                return send("%d X" % code, [], b"")
            p = ("status %d" % code).encode()
            return send("%d X" % code, [("Content-Length", len(p))], p)
        if path == "/chunked":
            p = b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"
            return send("200 OK", [("Transfer-Encoding", "chunked")], p)
        if path == "/eof":
            send("200 OK", [], b"until-the-end" * 100, keep_alive=False)
            return False
        if path == "/odd-header":  # sloppy but common: control bytes in a value
            c.sendall(b"HTTP/1.1 200 OK\r\nX-Odd: a\x01b\x7fc\r\nContent-Length: 2\r\n\r\nok")
            return True
        if path == "/drop-next":  # answer, then drop the connection at the next request
            c.drop_next = True
        if path == "/hints":
            c.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        p = json.dumps({"method": method, "path": path, "headers": headers,
                        "body_len": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                        "conn": cid}).encode()
        return send("200 OK", [("Content-Type", "application/json"),
                               ("Content-Length", len(p))], p)


class RawEcho:
    """Raw TCP server: optional banner first (server-speaks-first), then echo."""

    def __init__(self, banner=b""):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.banner = banner
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            if self.banner:
                c.sendall(self.banner)
            while True:
                d = c.recv(65536)
                if not d:
                    break
                c.sendall(d)
        except OSError:
            pass
        c.close()

    def close(self):
        self.sock.close()


# --- client side -------------------------------------------------------------------

def read_response(f, method="GET"):
    """Read one response from file f. Returns (status, headers, body, interim) where
    interim lists the 1xx statuses seen before the final one."""
    interim = []
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
            interim.append(status)
            continue
        break
    body = b""
    if method == "HEAD" or status in (204, 304, 101):
        pass
    elif "chunked" in headers.get("transfer-encoding", ""):
        while True:
            size = int(f.readline().split(b";")[0], 16)
            if size == 0:
                f.readline()
                break
            body += f.read(size)
            f.readline()
    elif "content-length" in headers:
        body = f.read(int(headers["content-length"]))
    else:
        body = f.read()
    return status, headers, body, interim


def make_tls_dir(d):
    """ca.crt + agent.crt/key: with `kbridge certs init` when it works, else openssl."""
    if KBRIDGE and os.path.exists(KBRIDGE):
        r = subprocess.run([KBRIDGE, "certs", "init", d], capture_output=True)
        if r.returncode == 0:
            return d
    os.makedirs(d, exist_ok=True)

    def ossl(*a):
        subprocess.run(["openssl"] + list(a), check=True, capture_output=True, cwd=d)
    ossl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key")
    ossl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=kbridge CA test", "-days", "2",
         "-out", "ca.crt")
    ossl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "agent.key")
    ossl("req", "-new", "-key", "agent.key", "-subj", "/CN=kbridge-agent", "-out", "agent.csr")
    ossl("x509", "-req", "-in", "agent.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
         "-CAcreateserial", "-days", "2", "-out", "agent.crt")
    return d


class Agent:
    def __init__(self, tls_dir, fallback, extra=(), max_fds=None):
        self.errf = tempfile.NamedTemporaryFile(prefix="agent-", suffix=".stderr", delete=False)
        self.p = subprocess.Popen([AGENT, "--listen", "127.0.0.1:0", "--fallback", fallback,
                                   "--tunnel-listen", "127.0.0.1:0", "--tls-dir", tls_dir,
                                   "--metrics", "127.0.0.1:0"] + list(extra),
                                  stdout=subprocess.PIPE, stderr=self.errf, text=True,
                                  preexec_fn=(lambda: resource.setrlimit(
                                      resource.RLIMIT_NOFILE, (max_fds, max_fds)))
                                  if max_fds else None)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError("agent exited: " + self.stderr())
            m = re.match(r"listen 127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
            m = re.match(r"metrics 127\.0\.0\.1:(\d+)", line)
            if m:
                self.metrics_port = int(m.group(1))
            if line.strip() == "ready":
                return
        raise RuntimeError("agent not ready")

    def stderr(self):
        with open(self.errf.name, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self):
        self.p.terminate()
        rc = self.p.wait(10)
        os.unlink(self.errf.name)
        return rc

    def connect(self, timeout=5):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        return s, s.makefile("rb")

    def metrics(self):
        s = socket.create_connection(("127.0.0.1", self.metrics_port), timeout=5)
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
        s.close()
        return data.decode()


def get(path, extra=b"", host=b"svc"):
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + extra + b"\r\n"


class AgentHTTP(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="kbagent-")
        cls.tls = make_tls_dir(os.path.join(cls.tmp, "tls"))
        cls.backend = Backend()
        cls.agent = Agent(cls.tls, "127.0.0.1:%d" % cls.backend.port,
                          ["--header-timeout-ms", "400", "--max-header-bytes", "8192",
                           "--sniff-timeout-ms", "300"])

    @classmethod
    def tearDownClass(cls):
        rc = cls.agent.stop()
        cls.backend.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        assert rc == 0, "agent exit status %d on SIGTERM" % rc

    def expect_closed(self, s, f):
        s.settimeout(5)
        try:
            self.assertEqual(f.read(), b"", "agent should close the connection")
        finally:
            f.close()
            s.close()

    # -- keep-alive, routing per request, pipelining ------------------------------------

    def test_keepalive_many_requests_one_upstream(self):
        s, f = self.agent.connect()
        t0 = time.monotonic()
        conns = set()
        n = 200
        for i in range(n):
            key = [b"alice", b"bob", b""][i % 3]
            extra = b"kubernetes-route-as: " + key + b"\r\n" if key else b""
            s.sendall(get("/?i=%d" % i, extra))
            st, h, body, _ = read_response(f)
            self.assertEqual(st, 200)
            j = json.loads(body)
            self.assertEqual(j["path"], "/?i=%d" % i)
            conns.add(j["conn"])
        dt = time.monotonic() - t0
        s.close()
        print("\n  %d keep-alive requests (alternating route keys, none held): %.1f ms each, "
              "%d upstream connection(s)" % (n, dt * 1000 / n, len(conns)))
        self.assertLessEqual(len(conns), 2)

    def test_pipelined_requests_answered_in_order(self):
        s, f = self.agent.connect()
        reqs = get("/p1") + get("/status/204") + \
            b"POST /p3 HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n\r\nhello" + get("/p4")
        s.sendall(reqs)
        st, _, b1, _ = read_response(f)
        self.assertEqual(json.loads(b1)["path"], "/p1")
        st, _, b2, _ = read_response(f)
        self.assertEqual((st, b2), (204, b""))
        st, _, b3, _ = read_response(f)
        j = json.loads(b3)
        self.assertEqual((j["path"], j["body_len"]), ("/p3", 5))
        st, _, b4, _ = read_response(f)
        self.assertEqual(json.loads(b4)["path"], "/p4")
        s.close()

    # -- bodies --------------------------------------------------------------------------

    def test_chunked_request_body_forwarded_intact(self):
        s, f = self.agent.connect()
        data = os.urandom(300000)
        chunks = b""
        for i in range(0, len(data), 70000):
            part = data[i:i + 70000]
            chunks += b"%x;name=v\r\n" % len(part) + part + b"\r\n"
        chunks += b"0\r\nX-Trailer: t\r\n\r\n"
        s.sendall(b"POST /up HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
        st, _, body, _ = read_response(f)
        j = json.loads(body)
        self.assertEqual(j["body_len"], len(data))
        self.assertEqual(j["sha256"], hashlib.sha256(data).hexdigest())
        s.sendall(get("/after"))
        self.assertEqual(json.loads(read_response(f)[2])["path"], "/after")
        s.close()

    def test_large_content_length_body(self):
        s, f = self.agent.connect(timeout=30)
        data = os.urandom(8 << 20)
        t0 = time.monotonic()
        s.sendall(b"POST /big HTTP/1.1\r\nHost: svc\r\nContent-Length: %d\r\n\r\n" % len(data) +
                  data)
        j = json.loads(read_response(f)[2])
        dt = time.monotonic() - t0
        self.assertEqual(j["sha256"], hashlib.sha256(data).hexdigest())
        print("\n  8 MiB upload through the agent: %.0f ms" % (dt * 1000))
        s.close()

    def test_pooled_upstream_closed_under_us_is_retried(self):
        s, f = self.agent.connect()
        s.sendall(get("/drop-next"))
        first = json.loads(read_response(f)[2])["conn"]
        s.sendall(get("/again"))  # the pooled connection will be closed without an answer
        st, _, body, _ = read_response(f)
        self.assertEqual(st, 200)
        self.assertNotEqual(json.loads(body)["conn"], first)
        s.close()

    def test_sloppy_response_header_relayed(self):
        s, f = self.agent.connect()
        s.sendall(get("/odd-header"))
        st, h, body, _ = read_response(f)
        self.assertEqual((st, body, h["x-odd"]), (200, b"ok", "a\x01b\x7fc"))
        s.close()

    def test_chunked_response_relayed_raw(self):
        s, f = self.agent.connect()
        s.sendall(get("/chunked"))
        st, h, body, _ = read_response(f)
        self.assertEqual(body, b"hello world")
        s.sendall(get("/x"))
        self.assertEqual(read_response(f)[0], 200)
        s.close()

    def test_expect_100_continue(self):
        s, f = self.agent.connect()
        s.sendall(b"POST /e HTTP/1.1\r\nHost: svc\r\nContent-Length: 4\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        line = f.readline()
        self.assertIn(b" 100 ", line)
        self.assertEqual(f.readline(), b"\r\n")
        s.sendall(b"abcd")
        st, _, body, _ = read_response(f)
        self.assertEqual((st, json.loads(body)["body_len"]), (200, 4))
        s.close()

    def test_head_has_no_body(self):
        s, f = self.agent.connect()
        s.sendall(b"HEAD /h HTTP/1.1\r\nHost: svc\r\n\r\n")
        st, h, body, _ = read_response(f, "HEAD")
        self.assertEqual(st, 200)
        self.assertGreater(int(h["content-length"]), 0)
        s.sendall(get("/after-head"))  # the agent must not wait for a HEAD body
        self.assertEqual(json.loads(read_response(f)[2])["path"], "/after-head")
        s.close()

    def test_204_and_304_without_body(self):
        s, f = self.agent.connect()
        for code in (204, 304, 204):
            s.sendall(get("/status/%d" % code))
            st, _, body, _ = read_response(f)
            self.assertEqual((st, body), (code, b""))
        s.sendall(get("/status/404"))
        self.assertEqual(read_response(f)[:3:2], (404, b"status 404"))
        s.close()

    def test_103_early_hints_forwarded(self):
        s, f = self.agent.connect()
        s.sendall(get("/hints"))
        st, _, body, interim = read_response(f)
        self.assertEqual((st, interim), (200, [103]))
        s.sendall(get("/after"))
        self.assertEqual(read_response(f)[0], 200)
        s.close()

    def test_close_delimited_response(self):
        s, f = self.agent.connect()
        s.sendall(get("/eof"))
        st, h, body, _ = read_response(f)
        self.assertEqual(body, b"until-the-end" * 100)
        self.expect_closed(s, f)

    # -- connection management ------------------------------------------------------------

    def test_connection_close_request(self):
        s, f = self.agent.connect()
        s.sendall(get("/c", b"Connection: close\r\n") + get("/never"))
        st, h, body, _ = read_response(f)
        self.assertEqual(json.loads(body)["path"], "/c")
        self.expect_closed(s, f)

    def test_http10_without_keepalive(self):
        s, f = self.agent.connect()
        s.sendall(b"GET /old HTTP/1.0\r\nHost: svc\r\n\r\n")
        st, h, body, _ = read_response(f)
        self.assertEqual(json.loads(body)["path"], "/old")
        self.expect_closed(s, f)

    def test_half_close_after_request(self):
        s, f = self.agent.connect()
        s.sendall(get("/half"))
        s.shutdown(socket.SHUT_WR)
        st, h, body, _ = read_response(f)
        self.assertEqual(json.loads(body)["path"], "/half")
        self.expect_closed(s, f)

    def test_websocket_upgrade_becomes_raw_tunnel(self):
        s, f = self.agent.connect()
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: svc\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Key: x\r\n"
                  b"Sec-WebSocket-Version: 13\r\n\r\nearly-bytes;")
        st, h, _, _ = read_response(f)
        self.assertEqual(st, 101)
        want = b"hello-from-upstream;early-bytes;"
        self.assertEqual(f.read(len(want)), want)
        payload = os.urandom(200000)
        threading.Thread(target=s.sendall, args=(payload,), daemon=True).start()
        self.assertEqual(f.read(len(payload)), payload)
        s.close()

    def test_upgrade_declined_stays_http(self):
        s, f = self.agent.connect()
        s.sendall(b"GET /not-ws HTTP/1.1\r\nHost: svc\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\n\r\n")
        st, h, body, _ = read_response(f)
        self.assertEqual((st, json.loads(body)["path"]), (200, "/not-ws"))
        s.sendall(get("/next"))  # the connection goes on as HTTP
        self.assertEqual(json.loads(read_response(f)[2])["path"], "/next")
        s.close()

    # -- malformed and hostile requests --------------------------------------------------

    def bad(self, raw, code):
        s, f = self.agent.connect()
        s.sendall(raw)
        st, h, body, _ = read_response(f)
        self.assertEqual(st, code, body)
        self.assertEqual(h.get("connection"), "close")
        self.assertTrue(body.startswith(b"kbridge: "), body)
        self.expect_closed(s, f)
        return body

    def test_smuggling_cl_and_te(self):
        self.bad(b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 4\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400)

    def test_smuggling_two_content_lengths(self):
        self.bad(b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 4\r\n"
                 b"Content-Length: 5\r\n\r\nabcde", 400)

    def test_bad_chunk_size(self):
        self.bad(b"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"zz\r\nabc\r\n0\r\n\r\n", 400)

    def test_bad_header_bytes(self):
        self.bad(b"GET / HTTP/1.1\r\nHost: svc\r\nX-Bad\x01: v\r\n\r\n", 400)

    def test_space_before_colon(self):
        self.bad(b"GET / HTTP/1.1\r\nHost: svc\r\nContent-Length : 5\r\n\r\nabcde", 400)

    def test_two_hosts(self):
        self.bad(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400)

    def test_te_not_chunked_last(self):
        self.bad(b"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400)

    def test_obs_fold_refused(self):
        body = self.bad(b"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: gzip\r\n"
                        b" ,chunked\r\n\r\n0\r\n\r\n", 400)
        self.assertIn(b"folding", body)

    def test_obs_fold_split_across_reads_refused(self):
        s, f = self.agent.connect()
        s.sendall(b"GET / HTTP/1.1\r\nHost: svc\r\nX-A: 1\r\n")
        time.sleep(0.1)  # the agent reads the head in two pieces: "\r\n" | " b"
        s.sendall(b" b\r\n\r\n")
        st, h, body, _ = read_response(f)
        self.assertEqual(st, 400, body)
        self.assertIn(b"folding", body)
        self.expect_closed(s, f)

    def test_oversize_head_431(self):
        self.bad(get("/", b"X-Big: " + b"a" * 10000 + b"\r\n"), 431)

    def test_stalled_head_408(self):
        s, f = self.agent.connect()
        t0 = time.monotonic()
        s.sendall(b"GET / HTTP/1.1\r\nHost: sv")
        st, h, body, _ = read_response(f)
        dt = time.monotonic() - t0
        print("\n  stalled head answered %d after %.0f ms (--header-timeout-ms 400)" %
              (st, dt * 1000))
        self.assertEqual(st, 408)
        self.assertGreaterEqual(dt, 0.35)
        self.expect_closed(s, f)

    # -- raw and metrics --------------------------------------------------------------------

    def test_metrics_count_requests_and_errors(self):
        s, f = self.agent.connect()
        s.sendall(get("/m"))
        read_response(f)
        s.close()
        m = self.agent.metrics()
        self.assertRegex(m, r'kbridge_requests_total\{route="fallback"\} [1-9]')
        self.assertIn("kbridge_connections_open", m)
        self.assertIn("kbridge_upstream_pool_idle", m)


class AgentEdges(unittest.TestCase):
    """Agents with other fallbacks: down, a name, raw TCP servers; idle timeout."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="kbagent-")
        cls.tls = make_tls_dir(os.path.join(cls.tmp, "tls"))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_fallback_down_502(self):
        s0 = socket.socket()
        s0.bind(("127.0.0.1", 0))
        port = s0.getsockname()[1]
        s0.close()  # nothing listens there now
        a = Agent(self.tls, "127.0.0.1:%d" % port)
        try:
            s, f = a.connect()
            s.sendall(get("/"))
            st, h, body, _ = read_response(f)
            print("\n  fallback down: %d %r" % (st, body))
            self.assertEqual(st, 502)
            self.assertIn(b"original pods unreachable at 127.0.0.1:%d" % port, body)
            self.assertIn(b"refused", body.lower())
        finally:
            self.assertEqual(a.stop(), 0)

    def test_fallback_by_name_and_idle_timeout(self):
        b = Backend()
        a = Agent(self.tls, "localhost:%d" % b.port, ["--idle-timeout-ms", "300"])
        try:
            s, f = a.connect()
            s.sendall(get("/n"))
            self.assertEqual(json.loads(read_response(f)[2])["path"], "/n")
            t0 = time.monotonic()
            s.settimeout(5)
            self.assertEqual(f.read(), b"")
            dt = time.monotonic() - t0
            print("\n  idle keep-alive connection closed after %.0f ms (--idle-timeout-ms 300)"
                  % (dt * 1000))
            self.assertGreaterEqual(dt, 0.25)
        finally:
            self.assertEqual(a.stop(), 0)
            b.close()

    def test_raw_tcp_client_speaks_first(self):
        e = RawEcho()
        a = Agent(self.tls, "127.0.0.1:%d" % e.port)
        try:
            s, f = a.connect()
            msg = b"\x16\x03\x01 not http at all\n"
            s.sendall(msg)
            self.assertEqual(f.read(len(msg)), msg)
        finally:
            self.assertEqual(a.stop(), 0)
            e.close()

    def test_http2_prior_knowledge_is_raw(self):
        e = RawEcho()
        a = Agent(self.tls, "127.0.0.1:%d" % e.port)
        try:
            s, f = a.connect()
            preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"
            s.sendall(preface)
            self.assertEqual(f.read(len(preface)), preface)
            f.close()
            s.close()
        finally:
            self.assertEqual(a.stop(), 0)
            e.close()

    def test_raw_tcp_server_speaks_first(self):
        e = RawEcho(banner=b"220 smtp ready\r\n")
        a = Agent(self.tls, "127.0.0.1:%d" % e.port, ["--sniff-timeout-ms", "200"])
        try:
            s, f = a.connect()
            t0 = time.monotonic()
            self.assertEqual(f.readline(), b"220 smtp ready\r\n")
            print("\n  server-speaks-first banner after %.0f ms (--sniff-timeout-ms 200)" %
                  ((time.monotonic() - t0) * 1000))
            s.sendall(b"HELO x\r\n")
            self.assertEqual(f.readline(), b"HELO x\r\n")
        finally:
            self.assertEqual(a.stop(), 0)
            e.close()

    def test_max_conns_pauses_accepting(self):
        b = Backend()
        a = Agent(self.tls, "127.0.0.1:%d" % b.port, ["--max-conns", "2"])
        try:
            held = []
            for i in range(2):
                s, f = a.connect()
                s.sendall(get("/held%d" % i))
                self.assertEqual(read_response(f)[0], 200)
                held.append((s, f))
            s3 = socket.create_connection(("127.0.0.1", a.port), timeout=1)
            s3.sendall(get("/third"))  # the kernel backlog takes it; the agent does not
            with self.assertRaises(socket.timeout):
                s3.recv(1)
            held[0][1].close()
            held[0][0].close()  # below the cap again: the third is accepted and served
            s3.settimeout(5)
            f3 = s3.makefile("rb")
            st, _, body, _ = read_response(f3)
            self.assertEqual(json.loads(body)["path"], "/third")
            for s, f in [held[1], (s3, f3)]:
                f.close()
                s.close()
        finally:
            self.assertEqual(a.stop(), 0)
            b.close()

    def test_out_of_descriptors_backs_off_and_recovers(self):
        b = Backend()
        a = Agent(self.tls, "127.0.0.1:%d" % b.port, ["--sniff-timeout-ms", "5000"], max_fds=40)
        try:
            silent = [socket.create_connection(("127.0.0.1", a.port)) for _ in range(60)]
            time.sleep(1.2)
            self.assertIsNone(a.p.poll(), "agent died on EMFILE")
            self.assertIn("pausing accepts", a.stderr())
            for s in silent:
                s.close()
            time.sleep(1.5)  # the back-off ends; the agent accepts again
            s, f = a.connect()
            s.sendall(get("/after-emfile"))
            self.assertEqual(json.loads(read_response(f)[2])["path"], "/after-emfile")
            f.close()
            s.close()
            print("\n  60 connections against 40 descriptors: accept paused, then served again")
        finally:
            self.assertEqual(a.stop(), 0)
            b.close()

    def test_bad_flags_exit_2(self):
        for argv in (["--max-conns", "zero"], ["--listen", "nohost"], ["--bogus"],
                     ["--log-level", "loud"]):
            r = subprocess.run([AGENT] + argv, capture_output=True, text=True)
            self.assertEqual(r.returncode, 2, argv)
            self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
            self.assertIn(argv[0], r.stderr)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--agent", default=os.environ.get("KBRIDGE_AGENT_BIN"))
    ap.add_argument("--kbridge", default=os.environ.get("KBRIDGE_BIN"))
    a, rest = ap.parse_known_args()
    if not a.agent:
        sys.exit("usage: test_agent_http.py --agent PATH [--kbridge PATH] [unittest args]")
    AGENT, KBRIDGE = a.agent, a.kbridge
    sys.argv[1:] = rest
    unittest.main(verbosity=2)
