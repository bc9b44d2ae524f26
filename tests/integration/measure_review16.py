#!/usr/bin/env python3
"""measure_review16.py: the measurements of issue 16 for defects 2, 3 and 5,
repeatable (not a test; numbers go to docs/security.md).

  python3 measure_review16.py --kbridge PATH --agent PATH flood
      agent RSS under a 2.5 s empty-DATA flood and a PING flood before HELLO,
      from a TLS peer with a 4 KiB receive buffer that never reads
  python3 measure_review16.py --kbridge PATH --agent PATH nonreading N [N...]
      agent RSS per client for N clients that ask for 10 MB and never read
      (4 KiB receive buffers), agent at its defaults
  python3 measure_review16.py --kbridge PATH --agent PATH emfile
      agent under prlimit --nofile=40: CPU used in 3 s after 60 plain connects
      to the tunnel port, and "accept failed" log lines
"""
import os
import socket
import subprocess
import sys
import time

import kbtest
import test_review16 as t16


def start_agent(env, backend, extra=(), prefix=()):
    start_agent.n = getattr(start_agent, "n", 0) + 1
    tls = env.certs(sub="tls%d" % start_agent.n)
    p = env.start("agent", list(prefix) + [
        env.agent_bin, "--listen", "127.0.0.1:0", "--fallback", "127.0.0.1:%d" % backend.port,
        "--tunnel-listen", "127.0.0.1:0", "--tls-dir", tls, "--metrics", "127.0.0.1:0"]
        + list(extra))
    p.port = int(p.wait_line(r"^listen 127\.0\.0\.1:(\d+)").group(1))
    p.tunnel_port = int(p.wait_line(r"^tunnel-listen 127\.0\.0\.1:(\d+)").group(1))
    p.metrics_port = int(p.wait_line(r"^metrics 127\.0\.0\.1:(\d+)").group(1))
    p.wait_line(r"^ready")
    return p, tls


def flood(env):
    for name, prefix, unit in (
            ("empty-DATA flood", t16.hello_frame(b"alice"), t16.frame(4, 1001)),
            ("PING flood before HELLO", b"", t16.frame(8, 0, b"12345678"))):
        b = t16.ScriptBackend()
        a, tls = start_agent(env, b)
        time.sleep(0.3)
        base = t16.rss_kib(a.p.pid)
        peak, sent, cut = t16.flood(a, tls, prefix, unit)
        m = t16.metrics(a)
        print("%s: %.1f MB sent in 2.5 s without reading; agent RSS %d KiB before, peak %d KiB; "
              "cut off by the agent: %s; kbridge_tunnel_flood_closes_total %s" %
              (name, sent / 1e6, base, peak, cut,
               t16.metric(m, "kbridge_tunnel_flood_closes_total")))
        a.stop()
        b.close()


def nonreading(env, n):
    b = t16.ScriptBackend()
    a, _ = start_agent(env, b, extra=os.environ.get("MEASURE_AGENT_FLAGS", "").split())
    time.sleep(0.3)
    base = t16.rss_kib(a.p.pid)
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", a.port))
        s.sendall(t16.get("/big/10000000"))
        socks.append(s)
    last, stable = -1, 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and stable < 4:  # settle: RSS unchanged for 2 s
        time.sleep(0.5)
        r = t16.rss_kib(a.p.pid)
        stable = stable + 1 if abs(r - last) < 64 else 0
        last = r
    rss = t16.rss_kib(a.p.pid)
    print("%d non-reading clients: agent RSS %d KiB idle, %d KiB with them: %.1f MB, "
          "%.0f KiB per client" % (n, base, rss, rss / 1024.0, (rss - base) / n))
    for s in socks:
        s.close()
    a.stop()
    b.close()


def emfile(env):
    b = t16.ScriptBackend()
    a, _ = start_agent(env, b, prefix=["prlimit", "--nofile=40"])
    time.sleep(0.3)
    c0 = t16.cpu_seconds(a.p.pid)
    socks = [socket.create_connection(("127.0.0.1", a.tunnel_port)) for _ in range(60)]
    time.sleep(3)
    cpu = t16.cpu_seconds(a.p.pid) - c0
    log = a.stderr_text()
    print("prlimit --nofile=40, 60 plain connects to the tunnel port: agent CPU %.2f s in 3 s; "
          "%d \"accept failed\" lines, %d \"pausing\" lines" %
          (cpu, log.count("accept failed"), log.count("pausing")))
    for s in socks:
        s.close()
    a.stop()
    b.close()


def main():
    kb, agent = kbtest.binaries_from_args()
    env = kbtest.Env(kb, agent)
    try:
        what = sys.argv[1]
        if what == "flood":
            flood(env)
        elif what == "nonreading":
            for n in sys.argv[2:]:
                nonreading(env, int(n))
        elif what == "emfile":
            emfile(env)
        else:
            sys.exit(__doc__)
    finally:
        env.close()


if __name__ == "__main__":
    main()
