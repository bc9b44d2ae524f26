"""The kubelet's HTTPS endpoint of the test node (the API server proxies to it):

  GET /portForward/NS/POD?port=P[&port=Q]   WebSocket upgrade, subprotocol
      v4.channel.k8s.io (binary) or v4.base64.channel.k8s.io. For the i-th
      port, channel 2i carries data and 2i+1 errors; every message starts with
      its channel byte; the first message on both channels is the port as
      2 bytes little-endian. The node dials localhost:P inside the pod's
      network namespace. An error text on the error channel ends that port.
  GET /containerLogs/NS/POD/CONTAINER[?tailLines=N]   the container's log
  GET /healthz

The listening socket lives in the node network namespace on the node's
InternalIP; connections are served on threads of the node process. Clients
must present a certificate from the cluster CA (the API server does).
"""
import base64
import hashlib
import os
import socket
import ssl
import struct
import threading
import time
import urllib.parse

import nsutil

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class WsConn:
    """Server side of one WebSocket connection over a (TLS) socket."""

    def __init__(self, sock, rfile):
        self.sock = sock
        self.rfile = rfile
        self.wlock = threading.Lock()
        self.closed = False

    def send(self, opcode, payload):
        hdr = bytearray([0x80 | opcode])
        n = len(payload)
        if n < 126:
            hdr.append(n)
        elif n < 65536:
            hdr.append(126)
            hdr += struct.pack(">H", n)
        else:
            hdr.append(127)
            hdr += struct.pack(">Q", n)
        with self.wlock:
            if self.closed:
                return
            try:
                self.sock.sendall(bytes(hdr) + payload)
            except OSError:
                self.closed = True

    def recv(self):
        """(opcode, payload) of the next complete message, or (None, b'') at EOF."""
        buf, first_op = b"", None
        while True:
            h = self.rfile.read(2)
            if len(h) < 2:
                return None, b""
            fin, op = h[0] & 0x80, h[0] & 0x0F
            masked, n = h[1] & 0x80, h[1] & 0x7F
            if n == 126:
                n = struct.unpack(">H", self.rfile.read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if masked else None
            data = self.rfile.read(n)
            if len(data) < n:
                return None, b""
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data)) if n < 64 else _unmask(data, mask)
            if op >= 8:                   # control frames may come between fragments
                if op == 9:
                    self.send(10, data)
                    continue
                if op == 10:
                    continue
                return op, data
            if first_op is None:
                first_op = op
            buf += data
            if fin:
                return first_op, buf


def _unmask(data, mask):
    """XOR with the 4-byte mask, done on big integers (fast in pure Python)."""
    full = (mask * (len(data) // 4 + 1))[:len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(full, "big")).to_bytes(len(data), "big")


class KubeletServer:
    def __init__(self, node, cert, key, client_ca):
        self.node = node
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        # Like a kubelet with --client-ca-file: only callers with a certificate
        # from the cluster CA (the API server's kubelet client) get in, so the
        # root namespace cannot bypass the API server's RBAC through this port.
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx.load_verify_locations(client_ca)
        self.lsock = nsutil.in_netns(node.node_netns, self._listen, node.net["node_ip"])
        self.port = self.lsock.getsockname()[1]

    @staticmethod
    def _listen(ip):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, 0))
        s.listen(64)
        return s

    def serve_forever(self):
        while True:
            conn, _ = self.lsock.accept()
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, raw):
        try:
            raw.settimeout(30)
            sock = self.ctx.wrap_socket(raw, server_side=True)
            rfile = sock.makefile("rb")
            line = rfile.readline(8192).decode("latin-1").rstrip("\r\n")
            headers = {}
            while True:
                h = rfile.readline(8192).decode("latin-1").rstrip("\r\n")
                if not h:
                    break
                k, _, v = h.partition(":")
                headers[k.strip().lower()] = v.strip()
            parts = line.split()
            if len(parts) < 2:
                sock.close()
                return
            method, target = parts[0], parts[1]
            u = urllib.parse.urlsplit(target)
            q = urllib.parse.parse_qs(u.query)
            path = [urllib.parse.unquote(p) for p in u.path.split("/") if p]
            sock.settimeout(None)
            if path[:1] == ["healthz"]:
                self.reply(sock, 200, b"ok")
            elif path[:1] == ["portForward"] and len(path) == 3:
                self.port_forward(sock, rfile, headers, path[1], path[2], q)
            elif path[:1] == ["containerLogs"] and len(path) == 4 and method == "GET":
                self.logs(sock, path[1], path[2], path[3], q)
            else:
                self.reply(sock, 404, b"not found: " + u.path.encode())
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            try:
                raw.close()
            except OSError:
                pass

    @staticmethod
    def reply(sock, code, body, ctype="text/plain"):
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error"}.get(code, "")
        sock.sendall(("HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                      % (code, reason, ctype, len(body))).encode() + body)
        sock.close()

    def logs(self, sock, ns, pod, ctr, q):
        """The container's log file; tailLines=N; follow=true streams what is
        appended until the pod is gone or the caller hangs up."""
        w = self.node.find_pod(ns, pod)
        f = os.path.join(self.node.state_dir, "logs", "%s_%s_%s.log" % (ns, pod, ctr))
        if w is None or not os.path.exists(f):
            self.reply(sock, 404, b"container not found")
            return
        data = open(f, "rb").read()
        if "tailLines" in q:
            n = int(q["tailLines"][0])
            data = b"".join(data.splitlines(True)[-n:]) if n > 0 else b""
        if q.get("follow", ["false"])[0] not in ("true", "1"):
            self.reply(sock, 200, data)
            return
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n" + data)
        pos = os.path.getsize(f)
        while self.node.find_pod(ns, pod) is not None:
            try:
                size = os.path.getsize(f)
            except OSError:
                break
            if size > pos:
                with open(f, "rb") as fh:
                    fh.seek(pos)
                    chunk = fh.read(size - pos)
                pos += len(chunk)
                sock.sendall(chunk)
            else:
                time.sleep(0.3)
        sock.close()

    def port_forward(self, sock, rfile, headers, ns, pod, q):
        w = self.node.find_pod(ns, pod)
        if w is None:
            self.reply(sock, 404, ("pod %s/%s not found on this node" % (ns, pod)).encode())
            return
        ports = []
        for p in q.get("port", []) + q.get("ports", []):
            ports += [int(x) for x in p.split(",") if x]
        if "websocket" not in headers.get("upgrade", "").lower():
            self.reply(sock, 400, b"only WebSocket port forwarding is supported by the test node")
            return
        if not ports:
            self.reply(sock, 400, b"query parameter \"port\" is required")
            return
        offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        proto = next((p for p in ("v4.channel.k8s.io", "v4.base64.channel.k8s.io") if p in offered), None)
        if proto is None:
            self.reply(sock, 400, b"subprotocol v4.channel.k8s.io or v4.base64.channel.k8s.io required")
            return
        accept = base64.b64encode(hashlib.sha1((headers.get("sec-websocket-key", "") + WS_GUID).encode())
                                  .digest()).decode()
        sock.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Accept: %s\r\nSec-WebSocket-Protocol: %s\r\n\r\n" % (accept, proto)).encode())
        ws = WsConn(sock, rfile)
        b64 = proto.startswith("v4.base64")

        def send(ch, data):
            if b64:
                ws.send(1, (chr(ord("0") + ch)).encode() + base64.b64encode(data))
            else:
                ws.send(2, bytes([ch]) + data)

        targets = {}
        alive = {"n": 0}
        lock = threading.Lock()

        def pump(i, t):
            try:
                while True:
                    d = t.recv(65536)
                    if not d or ws.closed:
                        break
                    send(2 * i, d)
            except OSError:
                pass
            t.close()
            with lock:
                alive["n"] -= 1
                last = alive["n"] <= 0
            if last:
                ws.send(8, struct.pack(">H", 1000))
                with ws.wlock:
                    ws.closed = True
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        for i, port in enumerate(ports):
            send(2 * i, struct.pack("<H", port))
            send(2 * i + 1, struct.pack("<H", port))
        for i, port in enumerate(ports):
            try:
                t = nsutil.in_netns(w.podns, socket.create_connection, ("127.0.0.1", port), 5)
            except OSError as e:
                send(2 * i + 1, ("error forwarding port %d to pod %s, uid : %s" % (port, pod, e)).encode())
                continue
            targets[i] = t
        alive["n"] = len(targets)
        if not targets:
            ws.send(8, struct.pack(">H", 1000))
            sock.close()
            return
        for i, t in targets.items():
            threading.Thread(target=pump, args=(i, t), daemon=True).start()
        try:
            while True:
                op, data = ws.recv()
                if op is None or op == 8:
                    break
                if b64:
                    if not data:
                        continue
                    ch, data = data[0] - ord("0"), base64.b64decode(data[1:])
                else:
                    if not data:
                        continue
                    ch, data = data[0], data[1:]
                t = targets.get(ch // 2)
                if t is not None and ch % 2 == 0 and data:
                    t.sendall(data)
        except OSError:
            pass
        finally:
            for t in targets.values():
                try:
                    t.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
