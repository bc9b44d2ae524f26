#!/usr/bin/env python3
"""A small stand-in for the Kubernetes API server, for the kube client unit
tests (tests/unit/common/kube/test_kube.c). HTTPS on 127.0.0.1 with a CA it makes
itself, HTTP/1.1 keep-alive, and the parts of the API the client uses:

  GET/POST  /api/v1/namespaces/NS/RES and /apis/G/V/namespaces/NS/RES
  GET/PUT/PATCH/DELETE .../RES/NAME   (PUT checks resourceVersion -> 409)
  ?labelSelector=a=b,c=d   ?watch=1&resourceVersion=N&fieldSelector=metadata.name=X
  PATCH: merge-patch, json-patch (add/replace/remove/test), strategic-merge
         (treated as a merge patch here; the real server is tested in the
         cluster test)
  errors as Status objects: 401, 403, 404, 409, 410, 422

Authentication: bearer tokens "admin" and "good-*" are admins; "restricted"
may only touch namespace "allowed"; "expired-*" and anything else get 401; a
client certificate signed by the CA authenticates as its CN (admin rights).
Watches end after 1.5 s so that the client's reconnect is exercised.

Usage: mock_apiserver.py DIR  -> writes DIR/ca.crt, DIR/client.crt/.key,
prints "PORT <api> <mute> <proxy>" on stdout when listening (mute: accepts
TCP and never answers; proxy: an HTTP CONNECT proxy). GET /api/debug/stats gives
{"connections": N, "last_delete": {...}, "requests": N}.
"""
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DIR = sys.argv[1]
LOCK = threading.Condition()
STORE = {}      # (collection path, name) -> object
EVENTS = []     # (rv, collection path, type, object)
STATE = {"rv": 100, "connections": 0, "requests": 0, "last_delete": None, "oldest_rv": 100}
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, capture_output=True)


def make_pki():
    p = lambda n: os.path.join(DIR, n)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", p("ca.key"), "-out", p("ca.crt"), "-days", "2", "-subj", "/CN=mock-ca",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    for name, cn, ext in (("server", "mock-apiserver",
                           "subjectAltName=IP:127.0.0.1,DNS:kube.test,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
                          ("client", "cert-user", "extendedKeyUsage=clientAuth\n")):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", p(name + ".key"), "-out", p(name + ".csr"), "-subj", "/CN=" + cn)
        with open(p(name + ".ext"), "w") as f:
            f.write(ext)
        openssl("x509", "-req", "-in", p(name + ".csr"), "-CA", p("ca.crt"), "-CAkey", p("ca.key"),
                "-CAcreateserial", "-out", p(name + ".crt"), "-days", "2", "-extfile", p(name + ".ext"))


def status(code, reason, message, name=None, kind=None):
    d = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
         "message": message, "reason": reason, "code": code}
    if name or kind:
        d["details"] = {k: v for k, v in (("name", name), ("kind", kind)) if v}
    return code, d


def merge_patch(target, patch):
    if not isinstance(patch, dict):
        return patch
    if not isinstance(target, dict):
        target = {}
    out = dict(target)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def json_patch(doc, ops):
    import copy
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last = parts[-1]
        if op["op"] in ("add", "replace"):
            if isinstance(parent, list):
                i = len(parent) if last == "-" else int(last)
                if op["op"] == "add":
                    parent.insert(i, op["value"])
                else:
                    parent[i] = op["value"]
            else:
                if op["op"] == "replace" and last not in parent:
                    raise ValueError("replace of missing path " + op["path"])
                parent[last] = op["value"]
        elif op["op"] == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        elif op["op"] == "test":
            cur = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if cur != op["value"]:
                raise ValueError("test failed at " + op["path"])
        else:
            raise ValueError("unsupported op " + op["op"])
    return doc


def bump(coll, typ, obj):
    """Record a change (LOCK held): new resourceVersion, event, wake watchers."""
    STATE["rv"] += 1
    obj.setdefault("metadata", {})["resourceVersion"] = str(STATE["rv"])
    EVENTS.append((STATE["rv"], coll, typ, json.loads(json.dumps(obj))))
    if len(EVENTS) > 50:
        del EVENTS[0]
        STATE["oldest_rv"] = EVENTS[0][0] - 1
    LOCK.notify_all()


def labels_match(obj, sel):
    if not sel:
        return True
    labels = obj.get("metadata", {}).get("labels", {}) or {}
    for term in sel.split(","):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k.rstrip("=")) != v:
                return False
        elif labels.get(term) is None:
            return False
    return True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def setup(self):
        super().setup()
        with LOCK:
            STATE["connections"] += 1

    def send_json(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def user(self):
        cert = self.connection.getpeercert() if hasattr(self.connection, "getpeercert") else None
        if cert:
            for rdn in cert.get("subject", ()):
                for k, v in rdn:
                    if k == "commonName":
                        return v, "admin"
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            t = auth[7:]
            if t == "admin" or t.startswith("good-"):
                return "admin", "admin"
            if t == "restricted":
                return "restricted", "restricted"
        if auth.startswith("Basic "):
            import base64
            if base64.b64decode(auth[6:]) == b"carol:s3cret":
                return "carol", "admin"
        return None, None

    def handle_any(self, method):
        with LOCK:
            STATE["requests"] += 1
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        if url.path == "/api/debug/stats":
            with LOCK:
                return self.send_json(200, {"connections": STATE["connections"],
                                            "requests": STATE["requests"],
                                            "proxied": STATE.get("proxied", 0),
                                            "flaky": STATE.get("flaky", {}),
                                            "last_delete": STATE["last_delete"]})
        user, role = self.user()
        if not user:
            return self.send_json(*status(401, "Unauthorized", "Unauthorized"))
        m = re.match(r"^/(api/v1|apis/[^/]+/[^/]+)(?:/namespaces/([^/]+))?/([^/]+)(?:/([^/]+))?$", url.path)
        if not m:
            return self.send_json(*status(404, "NotFound", "the server could not find the requested resource"))
        gv, ns, res, name = m.groups()
        # Retry tests: objects named busy-N answer 429 (Retry-After: 1) to the
        # first N requests on their path, fail5-N 503 without Retry-After, and
        # always-busy always 429 (Retry-After: 0); the counts per method+path
        # are in /api/debug/stats under "flaky".
        fm = re.match(r"^(busy|fail5)-(\d+)$", name or "")
        if fm or name == "always-busy":
            key = "%s %s" % (method, url.path)
            with LOCK:
                seen = STATE.setdefault("flaky", {})
                seen[key] = seen.get(key, 0) + 1
                n = seen[key]
            if name == "always-busy" or (fm.group(1) == "busy" and n <= int(fm.group(2))):
                body = json.dumps(status(429, "TooManyRequests", "too many requests, please try again later")[1]).encode()
                self.send_response(429)
                self.send_header("Retry-After", "0" if name == "always-busy" else "1")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if fm.group(1) == "fail5" and n <= int(fm.group(2)):
                return self.send_json(*status(503, "ServiceUnavailable", "etcdserver: leader changed"))
        coll = "/%s/%s/%s" % (gv, ns or "", res)
        group = gv.split("/")[1] if gv.startswith("apis/") else ""
        verb = {"GET": "get" if name else ("watch" if q.get("watch") else "list"), "POST": "create",
                "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
        if role == "restricted" and ns != "allowed":
            what = ('%s "%s"' % (res, name)) if name else res
            return self.send_json(*status(
                403, "Forbidden",
                '%s is forbidden: User "%s" cannot %s resource "%s" in API group "%s" in the namespace "%s"'
                % (what, user, verb, res, group, ns), name=name, kind=res))
        if verb == "watch":
            return self.watch(coll, q)
        with LOCK:
            if method == "GET" and not name:
                items = [o for (c, _), o in sorted(STORE.items()) if c == coll and labels_match(o, q.get("labelSelector"))]
                return self.send_json(200, {"kind": "List", "apiVersion": "v1",
                                            "metadata": {"resourceVersion": str(STATE["rv"])}, "items": items})
            if method == "POST":
                try:
                    obj = json.loads(body)
                except ValueError:
                    return self.send_json(*status(400, "BadRequest", "invalid JSON"))
                nm = obj.get("metadata", {}).get("name", "")
                if not NAME_RE.match(nm):
                    return self.send_json(*status(
                        422, "Invalid", '%s "%s" is invalid: metadata.name: Invalid value: "%s": a lowercase '
                        "RFC 1123 label must consist of lower case alphanumeric characters or '-'" % (res, nm, nm),
                        name=nm, kind=res))
                if (coll, nm) in STORE:
                    return self.send_json(*status(409, "AlreadyExists", '%s "%s" already exists' % (res, nm),
                                                  name=nm, kind=res))
                obj["metadata"]["namespace"] = ns
                obj["metadata"]["uid"] = "uid-%d" % STATE["rv"]
                bump(coll, "ADDED", obj)
                STORE[(coll, nm)] = obj
                return self.send_json(201, obj)
            cur = STORE.get((coll, name))
            if cur is None:
                return self.send_json(*status(404, "NotFound", '%s "%s" not found' % (res, name),
                                              name=name, kind=res))
            if method == "GET":
                return self.send_json(200, cur)
            if method == "DELETE":
                STATE["last_delete"] = json.loads(body) if body else None
                del STORE[(coll, name)]
                bump(coll, "DELETED", cur)
                return self.send_json(200, {"kind": "Status", "status": "Success",
                                            "details": {"name": name, "kind": res}})
            if method == "PUT":
                obj = json.loads(body)
                if obj.get("metadata", {}).get("resourceVersion") != cur["metadata"]["resourceVersion"]:
                    return self.send_json(*status(
                        409, "Conflict", 'Operation cannot be fulfilled on %s "%s": the object has been '
                        "modified; please apply your changes to the latest version and try again" % (res, name),
                        name=name, kind=res))
                bump(coll, "MODIFIED", obj)
                STORE[(coll, name)] = obj
                return self.send_json(200, obj)
            if method == "PATCH":
                ct = self.headers.get("Content-Type", "")
                try:
                    patch = json.loads(body)
                    if ct == "application/json-patch+json":
                        obj = json_patch(cur, patch)
                    elif ct in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                        obj = merge_patch(cur, patch)
                    else:
                        return self.send_json(*status(415, "UnsupportedMediaType", "unsupported " + ct))
                except (ValueError, KeyError, IndexError, TypeError) as e:
                    return self.send_json(*status(422, "Invalid", "patch: %s" % e))
                bump(coll, "MODIFIED", obj)
                STORE[(coll, name)] = obj
                return self.send_json(200, obj)
        return self.send_json(*status(405, "MethodNotAllowed", "no"))

    def watch(self, coll, q):
        fs = q.get("fieldSelector", "")
        only = fs.split("=", 1)[1] if fs.startswith("metadata.name=") else None
        sel = q.get("labelSelector")

        def wanted(o):
            return labels_match(o, sel) and (only is None or o["metadata"]["name"] == only)

        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def send(typ, obj):
            line = (json.dumps({"type": typ, "object": obj}) + "\n").encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()

        rv = q.get("resourceVersion")
        with LOCK:
            if rv and int(rv) < STATE["oldest_rv"]:
                send("ERROR", status(410, "Expired", "too old resource version: %s (%d)" % (rv, STATE["oldest_rv"]))[1])
                self.wfile.write(b"0\r\n\r\n")
                return
            if not rv:
                for (c, _), o in sorted(STORE.items()):
                    if c == coll and wanted(o):
                        send("ADDED", o)
                last = STATE["rv"]
            else:
                last = int(rv)
            deadline = time.time() + 1.5
            while True:
                for erv, c, typ, o in EVENTS:
                    if erv > last and c == coll and wanted(o):
                        send(typ, o)
                last = STATE["rv"]
                left = deadline - time.time()
                if left <= 0:
                    break
                LOCK.wait(left)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_PUT(self):
        self.handle_any("PUT")

    def do_PATCH(self):
        self.handle_any("PATCH")

    def do_DELETE(self):
        self.handle_any("DELETE")


def connect_proxy(lsock):
    """A minimal HTTP CONNECT proxy (for proxy-url): one thread per tunnel."""
    def pipe(a, b):
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                b.sendall(d)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def serve(c):
        head = b""
        while b"\r\n\r\n" not in head:
            d = c.recv(4096)
            if not d:
                return c.close()
            head += d
        parts = head.split(b"\r\n")[0].split()
        if len(parts) < 2 or parts[0] != b"CONNECT":
            c.sendall(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            return c.close()
        host, port = parts[1].decode().rsplit(":", 1)
        with LOCK:
            STATE["proxied"] = STATE.get("proxied", 0) + 1
        u = socket.create_connection((host.strip("[]"), int(port)))
        c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        threading.Thread(target=pipe, args=(u, c), daemon=True).start()
        pipe(c, u)

    while True:
        c, _ = lsock.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


def main():
    make_pki()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(DIR, "server.crt"), os.path.join(DIR, "server.key"))
    ctx.load_verify_locations(os.path.join(DIR, "ca.crt"))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    class Server(ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            if not isinstance(sys.exc_info()[1], (OSError, ssl.SSLError)):
                super().handle_error(request, client_address)  # a client going away is normal

    srv = Server(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    # A listener that accepts TCP and never answers (connect-timeout test).
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(16)
    proxy = socket.socket()
    proxy.bind(("127.0.0.1", 0))
    proxy.listen(16)
    threading.Thread(target=connect_proxy, args=(proxy,), daemon=True).start()
    print("PORT %d %d %d" % (srv.server_address[1], mute.getsockname()[1], proxy.getsockname()[1]),
          flush=True)
    # Exit when the test (our parent) closes stdin.
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
    srv.serve_forever()


if __name__ == "__main__":
    main()
