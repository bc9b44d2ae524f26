#!/usr/bin/env python3
"""Demo application for kbridge tests: three tiny HTTP services
frontend -> api -> store (plus `echo`), standard library only.

    shop.py ROLE      ROLE in frontend, api, store, echo

Every answer is JSON naming the service, the pod and the version that served
it, the route headers it received, and (frontend, api) the answer of the next
service. The headers `kubernetes-route-as` and `baggage` are forwarded to the
next service unchanged, as a service instrumented for kbridge would.

Environment: PORT (default 8080), POD_NAME (else the hostname), VERSION,
NEXT_URL (frontend: http://api:8080, api: http://store:8080), and for api the
optional GREETING (ConfigMap), API_KEY (Secret) and CONFIG_DIR (a mounted
volume whose files are listed in the answer). GET /healthz answers 200 for
probes; GET /fail-ready makes /healthz answer 503 from then on (tests).
"""
import json
import os
import signal
import socket
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROUTE_HEADERS = ("kubernetes-route-as", "baggage")
DEFAULT_NEXT = {"frontend": "http://api:8080", "api": "http://store:8080"}
STATE = {"healthy": True}


def identity(role):
    return {"service": role, "pod": os.environ.get("POD_NAME") or socket.gethostname(),
            "version": os.environ.get("VERSION", "1")}


def make_handler(role):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "kbridge-demo-" + role

        def log_message(self, fmt, *args):
            if self.path != "/healthz":      # probes every second would drown the log
                sys.stderr.write("%s %s\n" % (role, fmt % args))

        def send_json(self, code, obj):
            body = (json.dumps(obj, indent=1) + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/healthz":
                self.send_json(200 if STATE["healthy"] else 503, {"ok": STATE["healthy"]})
                return
            if self.path == "/fail-ready":
                STATE["healthy"] = False
                self.send_json(200, {"ok": False})
                return
            out = identity(role)
            out["path"] = self.path
            route = {h: self.headers[h] for h in ROUTE_HEADERS if self.headers.get(h) is not None}
            out["route"] = route
            if role == "echo":
                out["method"] = self.command
                out["headers"] = dict(self.headers.items())
            if role == "api":
                out["greeting"] = os.environ.get("GREETING", "")
                out["api_key_set"] = bool(os.environ.get("API_KEY"))
                cdir = os.environ.get("CONFIG_DIR")
                if cdir and os.path.isdir(cdir):
                    out["config_files"] = sorted(f for f in os.listdir(cdir) if not f.startswith("."))
            if role == "store":
                out["items"] = [{"sku": "tea", "stock": 12}, {"sku": "mug", "stock": 3}]
            nxt = os.environ.get("NEXT_URL", DEFAULT_NEXT.get(role, ""))
            code = 200
            if nxt and role in ("frontend", "api"):
                req = urllib.request.Request(nxt.rstrip("/") + "/", headers=route)
                try:
                    with urllib.request.urlopen(req, timeout=5) as r:
                        out["next"] = json.load(r)
                except (urllib.error.URLError, OSError, ValueError) as e:
                    out["next"] = {"error": "%s: %s" % (nxt, e)}
                    code = 502
            self.send_json(code, out)

    return Handler


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in ("frontend", "api", "store", "echo"):
        sys.exit("usage: shop.py frontend|api|store|echo")
    role = sys.argv[1]
    port = int(os.environ.get("PORT", "8080"))
    srv = ThreadingHTTPServer(("0.0.0.0", port), make_handler(role))
    srv.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: (sys.stderr.write("%s: SIGTERM, bye\n" % role), os._exit(0)))
    sys.stderr.write("%s listening on :%d\n" % (role, port))
    sys.stderr.flush()
    srv.serve_forever()


if __name__ == "__main__":
    main()
