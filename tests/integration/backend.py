#!/usr/bin/env python3
"""backend.py: a small HTTP/1.1 server standing in for a service in tests and the demo.

Every answer says who served it (the --name given), so a test can tell whether a
request reached the developer's local process or the original pods, and it echoes
the request headers it received, so header injection can be checked.

  GET  /                 JSON {"served_by": NAME, "path": ..., "headers": {...}}
  GET  /bytes/N          N pseudo-random bytes (deterministic, seed = N), streamed
  POST /upload           reads the body (Content-Length or chunked), answers its sha256
  GET  /ws               WebSocket upgrade, then echoes every frame back
  GET  /status/CODE      an empty answer with that status (204, 304, ...)

It prints "listening PORT" on stdout once bound (port 0 picks a free one).
"""
import argparse
import base64
import hashlib
import json
import socket
import socketserver
import struct
import sys
from http.server import BaseHTTPRequestHandler

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def pattern_bytes(n, chunk=65536):
    """Yield n deterministic bytes in chunks: the same for the server and the test."""
    block = hashlib.sha256(str(n).encode()).digest() * (chunk // 32)
    left = n
    while left > 0:
        k = min(left, chunk)
        yield block[:k]
        left -= k


def pattern_sha256(n):
    h = hashlib.sha256()
    for b in pattern_bytes(n):
        h.update(b)
    return h.hexdigest()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kbtest-backend"
    disable_nagle_algorithm = True  # answers go out in two writes: no 40 ms Nagle stall

    def log_message(self, fmt, *args):
        pass

    def _json(self, code, obj, extra=None):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Served-By", self.server.name)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _info(self):
        return {"served_by": self.server.name, "method": self.command, "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()}}

    def _read_body(self):
        h = hashlib.sha256()
        total = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                left = size
                while left:
                    b = self.rfile.read(min(left, 65536))
                    if not b:
                        raise ConnectionError("body cut short")
                    h.update(b)
                    total += len(b)
                    left -= len(b)
                self.rfile.readline(8)
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                b = self.rfile.read(min(left, 262144))
                if not b:
                    raise ConnectionError("body cut short")
                h.update(b)
                total += len(b)
                left -= len(b)
        return total, h.hexdigest()

    def do_GET(self):
        if self.path.startswith("/bytes/"):
            n = int(self.path.split("/")[2])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.send_header("X-Served-By", self.server.name)
            self.end_headers()
            if self.command != "HEAD":
                for b in pattern_bytes(n):
                    self.wfile.write(b)
            return
        if self.path.startswith("/status/"):
            code = int(self.path.split("/")[2])
            self.send_response(code)
            self.send_header("X-Served-By", self.server.name)
            if code not in (204, 304):
                self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path == "/ws":
            return self._websocket()
        self._json(200, self._info())

    do_HEAD = do_GET

    def do_POST(self):
        n, digest = self._read_body()
        info = self._info()
        info.update({"bytes": n, "sha256": digest})
        self._json(200, info)

    do_PUT = do_POST

    def _websocket(self):
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.send_header("X-Served-By", self.server.name)
        self.end_headers()
        self.wfile.flush()
        while True:
            try:
                opcode, payload = ws_read(self.rfile)
            except (ConnectionError, struct.error):
                return
            if opcode == 8:
                ws_write(self.wfile, 8, payload, mask=False)
                return
            ws_write(self.wfile, opcode, payload, mask=False)
            self.wfile.flush()


def ws_read(f):
    """Read one WebSocket frame; returns (opcode, payload). Unmasks if masked."""
    h = f.read(2)
    if len(h) < 2:
        raise ConnectionError("eof")
    opcode = h[0] & 0x0F
    masked = h[1] & 0x80
    n = h[1] & 0x7F
    if n == 126:
        n = struct.unpack(">H", f.read(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", f.read(8))[0]
    mask = f.read(4) if masked else b""
    data = b""
    while len(data) < n:
        b = f.read(n - len(data))
        if not b:
            raise ConnectionError("eof")
        data += b
    if masked:
        data = bytes(c ^ mask[i % 4] for i, c in enumerate(data))
    return opcode, data


def ws_write(f, opcode, payload, mask=True):
    head = bytes([0x80 | opcode])
    m = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + struct.pack(">H", n)
    else:
        head += bytes([m | 127]) + struct.pack(">Q", n)
    if mask:
        key = b"\x01\x02\x03\x04"
        payload = bytes(c ^ key[i % 4] for i, c in enumerate(payload))
        head += key
    f.write(head + payload)


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1")
    a = ap.parse_args()
    srv = Server((a.host, a.port), Handler)
    srv.name = a.name
    print("listening", srv.server_address[1], flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
