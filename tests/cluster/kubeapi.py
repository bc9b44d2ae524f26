"""A small Kubernetes API client (standard library only) used by the test
node, `up` and the tests.

Kube(server, ca, cert=..., key=..., token=...) talks HTTPS to the API server
with client-certificate or bearer-token authentication. Each thread gets its
own keep-alive connection. request() returns (status, decoded JSON or text);
the helpers raise ApiError for non-2xx answers unless told otherwise.
"""
import http.client
import json
import ssl
import threading
import urllib.parse


class ApiError(Exception):
    def __init__(self, status, body, what=""):
        self.status = status
        self.body = body
        msg = body.get("message") if isinstance(body, dict) else str(body)[:300]
        super().__init__("%s: HTTP %s: %s" % (what, status, msg))


class Kube:
    def __init__(self, server, ca, cert=None, key=None, token=None, timeout=30):
        u = urllib.parse.urlsplit(server)
        self.host = u.hostname
        self.port = u.port or 443
        self.token = token
        self.timeout = timeout
        self.ctx = ssl.create_default_context(cafile=ca)
        if cert:
            self.ctx.load_cert_chain(cert, key)
        self.local = threading.local()

    def connect(self, timeout=None):
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx,
                                           timeout=timeout or self.timeout)

    def headers(self, ctype=None):
        h = {"Accept": "application/json"}
        if self.token:
            h["Authorization"] = "Bearer " + self.token
        if ctype:
            h["Content-Type"] = ctype
        return h

    def request(self, method, path, body=None, ctype="application/json", query=None):
        """One request on this thread's connection; retried once on a
        connection that the server closed in between."""
        if query:
            path += ("&" if "?" in path else "?") + urllib.parse.urlencode(query)
        data = None
        if body is not None:
            data = body if isinstance(body, (bytes, str)) else json.dumps(body)
            if isinstance(data, str):
                data = data.encode()
        for attempt in (0, 1):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = self.connect()
            try:
                conn.request(method, path, body=data,
                             headers=self.headers(ctype if data is not None else None))
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (http.client.HTTPException, OSError):
                conn.close()
                self.local.conn = None
                if attempt:
                    raise
        try:
            obj = json.loads(raw) if raw else None
        except ValueError:
            obj = raw.decode(errors="replace")
        return resp.status, obj

    def _ok(self, method, path, body=None, ctype="application/json", query=None, allow=()):
        st, obj = self.request(method, path, body, ctype, query)
        if 200 <= st < 300 or st in allow:
            return obj if 200 <= st < 300 else None
        raise ApiError(st, obj, "%s %s" % (method, path))

    def get(self, path, allow=(), **query):
        return self._ok("GET", path, query=query or None, allow=allow)

    def create(self, path, body, allow=()):
        return self._ok("POST", path, body, allow=allow)

    def put(self, path, body):
        return self._ok("PUT", path, body)

    def merge_patch(self, path, body, allow=()):
        return self._ok("PATCH", path, body, "application/merge-patch+json", allow=allow)

    def strategic_patch(self, path, body, allow=()):
        return self._ok("PATCH", path, body, "application/strategic-merge-patch+json", allow=allow)

    def delete(self, path, body=None, allow=(404,)):
        return self._ok("DELETE", path, body, allow=allow)

    def watch(self, path, timeout_seconds=60, stop=None, **query):
        """Yield watch events (dicts) from a fresh connection until the server
        ends the watch, an error happens, or stop (threading.Event) is set."""
        query = dict(query, watch="1", timeoutSeconds=str(timeout_seconds))
        full = path + ("&" if "?" in path else "?") + urllib.parse.urlencode(query)
        conn = self.connect(timeout=timeout_seconds + 10)
        try:
            conn.request("GET", full, headers=self.headers())
            resp = conn.getresponse()
            if resp.status != 200:
                raise ApiError(resp.status, resp.read()[:300], "watch " + path)
            while not (stop and stop.is_set()):
                line = resp.readline()
                if not line:
                    return
                line = line.strip()
                if line:
                    yield json.loads(line)
        finally:
            conn.close()
