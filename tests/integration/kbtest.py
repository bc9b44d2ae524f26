"""kbtest.py: start and stop the real binaries for integration tests.

Processes write their stdout lines into a queue read by a thread, so a test can
wait for "ready" (or any line) with a deadline instead of sleeping. stderr goes to
a file per process; when a test fails, tail() shows it. Everything started is
killed at the end (SIGTERM, then SIGKILL), whatever happened.
"""
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _die_with_parent():
    """Child side of fork: get SIGKILL when the test runner dies (a ctest timeout,
    ^C), so no agent, proxy or backend outlives the test that started it."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Proc:
    def __init__(self, name, argv, workdir, env=None):
        self.name = name
        self.argv = argv
        self.errpath = os.path.join(workdir, name + ".stderr")
        self.err = open(self.errpath, "wb")
        self.lines = queue.Queue()
        self.seen = []
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.err,
                                  stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                  preexec_fn=_die_with_parent)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for raw in self.p.stdout:
            self.lines.put(raw.decode(errors="replace").rstrip("\n"))
        self.lines.put(None)

    def wait_line(self, pattern, timeout=15.0):
        """Return the re.Match of the first stdout line (new or already seen) matching pattern."""
        rx = re.compile(pattern)
        for line in self.seen:
            m = rx.search(line)
            if m:
                return m
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("%s: no line matching %r within %.0fs\n%s" %
                                   (self.name, pattern, timeout, self.tail()))
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.lines.put(None)
                raise RuntimeError("%s exited (%s) before printing %r\n%s" %
                                   (self.name, self.p.poll(), pattern, self.tail()))
            self.seen.append(line)
            m = rx.search(line)
            if m:
                return m

    def tail(self, n=40):
        self.err.flush()
        try:
            with open(self.errpath, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return ""
        return "--- %s stderr (last %d lines) ---\n%s" % (self.name, n, "\n".join(lines[-n:]))

    def stderr_text(self):
        self.err.flush()
        with open(self.errpath, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout=5.0):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        return self.p.returncode

    def kill9(self):
        return self.stop(signal.SIGKILL)


class Env:
    """A scratch directory plus the processes started in it."""

    def __init__(self, kbridge, agent):
        self.kbridge = kbridge
        self.agent_bin = agent
        self.dir = tempfile.mkdtemp(prefix="kbtest-")
        self.procs = []

    def start(self, name, argv, env=None):
        p = Proc(name, argv, self.dir, env)
        self.procs.append(p)
        return p

    def backend(self, name):
        p = self.start("backend-" + name,
                       [sys.executable, os.path.join(HERE, "backend.py"), "--name", name])
        p.port = int(p.wait_line(r"^listening (\d+)").group(1))
        return p

    def certs(self, sub="tls", keys=("alice", "bob")):
        d = os.path.join(self.dir, sub)
        run([self.kbridge, "certs", "init", d])
        for k in keys:
            run([self.kbridge, "certs", "issue", d, "--key", k])
        return d

    def agent(self, tls_dir, fallback, extra=(), name="agent"):
        p = self.start(name, [self.agent_bin, "--listen", "127.0.0.1:0",
                              "--fallback", fallback, "--tunnel-listen", "127.0.0.1:0",
                              "--tls-dir", tls_dir, "--metrics", "127.0.0.1:0"] + list(extra))
        p.port = int(p.wait_line(r"^listen 127\.0\.0\.1:(\d+)").group(1))
        p.tunnel_port = int(p.wait_line(r"^tunnel-listen 127\.0\.0\.1:(\d+)").group(1))
        p.metrics_port = int(p.wait_line(r"^metrics 127\.0\.0\.1:(\d+)").group(1))
        p.wait_line(r"^ready")
        return p

    def proxy(self, agent, tls_dir, key, local_port, extra=(), wait=True, name=None):
        p = self.start(name or ("proxy-" + key),
                       [self.kbridge, "proxy", "--agent", "127.0.0.1:%d" % agent.tunnel_port,
                        "--tls-dir", tls_dir, "--route-as", key,
                        "--local-port", str(local_port)] + list(extra))
        if wait:
            p.wait_line(r"^ready")
        return p

    def close(self):
        for p in reversed(self.procs):
            p.stop()
        for p in self.procs:
            p.err.close()
            if p.p.stdout:
                p.p.stdout.close()
        if os.environ.get("KBTEST_KEEP"):
            print("kept", self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def run(argv, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)
    if r.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(argv), r.returncode, r.stderr))
    return r


def binaries_from_args():
    """--kbridge PATH --agent PATH from argv (removed from it, so unittest sees the rest)."""
    import argparse
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--kbridge", default=os.environ.get("KBRIDGE_BIN"))
    ap.add_argument("--agent", default=os.environ.get("KBRIDGE_AGENT_BIN"))
    a, rest = ap.parse_known_args()
    sys.argv[1:] = rest
    if not a.kbridge or not a.agent:
        sys.exit("usage: %s --kbridge PATH --agent PATH [unittest args]" % sys.argv[0])
    return a.kbridge, a.agent
