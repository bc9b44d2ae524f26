"""The kubelet's HTTPS endpoint of the test node (the API server proxies to it):

  GET /portForward/NS/POD?port=P[&port=Q]   WebSocket upgrade, subprotocol
      v4.channel.k8s.io (binary) or v4.base64.channel.k8s.io. For the i-th
      port, channel 2i carries data and 2i+1 errors; every message starts with
      its channel byte; the first message on both channels is the port as
      2 bytes little-endian. The node dials localhost:P inside the pod's
      network namespace. An error text on the error channel ends that port.
  GET /exec/NS/POD/CONTAINER?command=..&input=1&output=1&error=1[&tty=1]
      WebSocket upgrade, subprotocol v5.channel.k8s.io or v4.channel.k8s.io
      (what `kubectl exec` speaks over WebSocket): channel 0 stdin, 1 stdout,
      2 stderr, 3 the final metav1.Status as JSON, 4 terminal resize,
      255 (v5) end of stdin. The command runs with nsenter in the container's
      network, mount and UTS namespaces, as the container's user.
  GET /containerLogs/NS/POD/CONTAINER[?tailLines=N][&follow=true]
  GET /healthz

The listening socket lives in the node network namespace on the node's
InternalIP; each connection is served by one thread of the node process.
Clients must present a certificate from the cluster CA (the API server does).

A port-forward connection is pumped by a single thread with select() over the
TLS socket and the target sockets (an OpenSSL connection must not be read and
written from two threads at once), with per-direction buffers and
backpressure: a side is not read while the buffer toward the other side is
above HIGH_WATER.
"""
import base64
import hashlib
import os
import select
import socket
import ssl
import struct
import threading
import time
import urllib.parse

import nsutil

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HIGH_WATER = 1 << 20
MAX_HEAD = 64 * 1024


def _unmask(data, mask):
    """XOR with the 4-byte mask, done on big integers (fast in pure Python)."""
    if not data:
        return b""
    full = (mask * (len(data) // 4 + 1))[:len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(full, "big")).to_bytes(len(data), "big")


def parse_frame(buf):
    """One WebSocket frame from the front of buf (bytearray): (fin, opcode,
    payload, consumed), or None when buf does not hold a whole frame yet."""
    if len(buf) < 2:
        return None
    fin, op = buf[0] & 0x80, buf[0] & 0x0F
    masked, n = buf[1] & 0x80, buf[1] & 0x7F
    pos = 2
    if n == 126:
        if len(buf) < 4:
            return None
        n = struct.unpack(">H", bytes(buf[2:4]))[0]
        pos = 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n = struct.unpack(">Q", bytes(buf[2:10]))[0]
        pos = 10
    mask = None
    if masked:
        if len(buf) < pos + 4:
            return None
        mask = bytes(buf[pos:pos + 4])
        pos += 4
    if len(buf) < pos + n:
        return None
    payload = bytes(buf[pos:pos + n])
    if mask:
        payload = _unmask(payload, mask)
    return bool(fin), op, payload, pos + n


def frame(opcode, payload):
    """A server-to-client (unmasked) frame."""
    n = len(payload)
    hdr = bytearray([0x80 | opcode])
    if n < 126:
        hdr.append(n)
    elif n < 65536:
        hdr.append(126)
        hdr += struct.pack(">H", n)
    else:
        hdr.append(127)
        hdr += struct.pack(">Q", n)
    return bytes(hdr) + payload


def linger_close(sock, timeout=2.0):
    """Send FIN after all queued data, read (and drop) what the peer still
    sends until it closes, then close: closing with unread input would send an
    RST, which can make the peer discard data it has not read yet."""
    try:
        sock.setblocking(True)
        sock.settimeout(timeout)
        sock.shutdown(socket.SHUT_WR)
        end = time.time() + timeout
        while time.time() < end:
            if not sock.recv(65536):
                break
    except (OSError, ValueError):
        pass
    try:
        sock.close()
    except OSError:
        pass


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
        sock = None
        try:
            raw.settimeout(30)
            sock = self.ctx.wrap_socket(raw, server_side=True)
            buf = bytearray()
            while b"\r\n\r\n" not in buf:
                d = sock.recv(16384)
                if not d or len(buf) > MAX_HEAD:
                    return
                buf += d
            head, _, rest = bytes(buf).partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for h in lines[1:]:
                k, _, v = h.partition(":")
                headers[k.strip().lower()] = v.strip()
            parts = lines[0].split()
            if len(parts) < 2:
                return
            method, target = parts[0], parts[1]
            u = urllib.parse.urlsplit(target)
            q = urllib.parse.parse_qs(u.query)
            path = [urllib.parse.unquote(p) for p in u.path.split("/") if p]
            sock.settimeout(None)
            if path[:1] == ["healthz"]:
                self.reply(sock, 200, b"ok")
            elif path[:1] == ["portForward"] and len(path) == 3:
                self.port_forward(sock, rest, headers, path[1], path[2], q)
            elif path[:1] == ["exec"] and len(path) == 4:
                self.exec_ws(sock, rest, headers, path[1], path[2], path[3], q)
            elif path[:1] == ["containerLogs"] and len(path) == 4 and method == "GET":
                self.logs(sock, path[1], path[2], path[3], q)
            else:
                self.reply(sock, 404, b"not found: " + u.path.encode())
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            if sock is not None:
                linger_close(sock)
            else:
                try:
                    raw.close()
                except OSError:
                    pass

    @staticmethod
    def reply(sock, code, body, ctype="text/plain"):
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error"}.get(code, "")
        sock.sendall(("HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                      % (code, reason, ctype, len(body))).encode() + body)

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

    def port_forward(self, sock, leftover, headers, ns, pod, q):
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
        b64 = proto.startswith("v4.base64")
        out = bytearray(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         "Sec-WebSocket-Accept: %s\r\nSec-WebSocket-Protocol: %s\r\n\r\n" % (accept, proto)).encode())

        def data_msg(ch, data):
            if b64:
                return frame(1, (chr(ord("0") + ch)).encode() + base64.b64encode(data))
            return frame(2, bytes([ch]) + data)

        for i, port in enumerate(ports):
            out += data_msg(2 * i, struct.pack("<H", port))
            out += data_msg(2 * i + 1, struct.pack("<H", port))
        targets = {}
        for i, port in enumerate(ports):
            try:
                targets[i] = nsutil.in_netns(w.podns, socket.create_connection, ("127.0.0.1", port), 5)
            except OSError as e:
                out += data_msg(2 * i + 1, ("error forwarding port %d to pod %s, uid : %s" % (port, pod, e)).encode())
        if not targets:
            out += frame(8, struct.pack(">H", 1000))
            sock.sendall(bytes(out))
            return
        self.pump(sock, bytearray(leftover), out, targets, b64, data_msg)

    def pump(self, sock, inbuf, wsout, targets, b64, data_msg):
        """Move bytes between the WebSocket (sock) and the target sockets until
        every target has closed (then a close frame goes out) or the client
        closed. Single-threaded; see the module comment."""
        sock.setblocking(False)
        for t in targets.values():
            t.setblocking(False)
        tout = {i: bytearray() for i in targets}
        t_eof = set()          # target sent EOF
        t_dead = set()         # target failed; drop what goes to it
        t_shut = set()         # we sent EOF to the target
        client_done = False    # client sent close or EOF
        closing = False        # close frame queued
        frag = None            # (opcode, bytearray) of a fragmented message
        while True:
            if closing and not wsout:
                break
            if client_done:
                for i, t in targets.items():
                    if i not in t_shut and (not tout[i] or i in t_dead):
                        t_shut.add(i)
                        try:
                            t.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
                if len(t_shut) == len(targets):
                    break
            rl, wl = [], []
            if not client_done and all(len(b) < HIGH_WATER for b in tout.values()):
                rl.append(sock)
            if not closing and len(wsout) < HIGH_WATER:
                rl += [t for i, t in targets.items() if i not in t_eof]
            if wsout:
                wl.append(sock)
            wl += [t for i, t in targets.items() if tout[i] and i not in t_dead]
            pending = sock in rl and sock.pending() > 0
            if not rl and not wl:
                break
            r, wr, _ = select.select(rl, wl, [], 0 if pending else 30)
            if pending and sock not in r:
                r.append(sock)
            if sock in r:
                try:
                    d = sock.recv(65536)
                    if not d:
                        client_done = True
                    inbuf += d
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
                except OSError:
                    client_done = True
                    wsout.clear()
                while True:
                    fr = parse_frame(inbuf)
                    if fr is None:
                        break
                    fin, op, payload, used = fr
                    del inbuf[:used]
                    if op == 9:
                        wsout += frame(10, payload)
                        continue
                    if op == 10:
                        continue
                    if op == 8:
                        client_done = True
                        if not closing:
                            wsout += frame(8, payload[:2] or struct.pack(">H", 1000))
                            closing = True
                        continue
                    if op == 0 and frag is not None:
                        frag[1].extend(payload)
                        if not fin:
                            continue
                        op, payload = frag[0], bytes(frag[1])
                        frag = None
                    elif not fin:
                        frag = (op, bytearray(payload))
                        continue
                    if not payload:
                        continue
                    if b64:
                        ch, data = payload[0] - ord("0"), base64.b64decode(payload[1:])
                    else:
                        ch, data = payload[0], payload[1:]
                    if ch % 2 == 0 and ch // 2 in targets and ch // 2 not in t_dead and data:
                        tout[ch // 2] += data
            for i, t in list(targets.items()):
                if t in r:
                    try:
                        d = t.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        d = b""
                    if d:
                        wsout += data_msg(2 * i, d)
                    else:
                        t_eof.add(i)
                        if len(t_eof) == len(targets) and not closing:
                            wsout += frame(8, struct.pack(">H", 1000))
                            closing = True
                if t in wr and tout[i]:
                    try:
                        n = t.send(tout[i])
                        del tout[i][:n]
                    except BlockingIOError:
                        pass
                    except OSError:
                        t_dead.add(i)
                        tout[i].clear()
            if sock in wr and wsout:
                try:
                    n = sock.send(wsout[:16384])
                    del wsout[:n]
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    pass
                except OSError:
                    wsout.clear()
                    client_done = True
                    closing = True
        for t in targets.values():
            try:
                t.close()
            except OSError:
                pass


    def exec_ws(self, sock, leftover, headers, ns, pod, ctr, q):
        """`kubectl exec` over WebSocket (see the module comment)."""
        import fcntl
        import json
        import pty
        import subprocess
        import termios
        w = self.node.find_pod(ns, pod)
        c = None if w is None else next((x for x in w.ctrs if x.name == ctr), None)
        proc = None if c is None else c.proc
        if proc is None or proc.poll() is not None:
            self.reply(sock, 404, ("container %s not running in pod %s/%s" % (ctr, ns, pod)).encode())
            return
        offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        proto = next((p for p in ("v5.channel.k8s.io", "v4.channel.k8s.io") if p in offered), None)
        if "websocket" not in headers.get("upgrade", "").lower() or proto is None:
            self.reply(sock, 400, b"WebSocket with subprotocol v5.channel.k8s.io or v4.channel.k8s.io required")
            return
        cmd = q.get("command", [])
        if not cmd:
            self.reply(sock, 400, b"command required")
            return
        flag = lambda *names: any(q.get(n, ["0"])[0] in ("1", "true") for n in names)  # noqa: E731
        want_in, want_out, want_err, tty = flag("input", "stdin"), flag("output", "stdout"), \
            flag("error", "stderr"), flag("tty")
        accept = base64.b64encode(hashlib.sha1((headers.get("sec-websocket-key", "") + WS_GUID).encode())
                                  .digest()).decode()
        sock.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Accept: %s\r\nSec-WebSocket-Protocol: %s\r\n\r\n" % (accept, proto)).encode())
        from pods import nsenter_argv
        argv = nsenter_argv(proc.pid, c) + cmd
        env = dict(getattr(c, "env", {}) or {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"})
        master = None
        try:
            if tty:
                master, slave = pty.openpty()
                p = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
                                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
                os.close(slave)
                outs = {master: 1}
                stdin_fd = master
            else:
                p = subprocess.Popen(argv, stdin=subprocess.PIPE if want_in else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE if want_out else subprocess.DEVNULL,
                                     stderr=subprocess.PIPE if want_err else subprocess.DEVNULL, env=env)
                outs = {}
                if p.stdout:
                    outs[p.stdout.fileno()] = 1
                if p.stderr:
                    outs[p.stderr.fileno()] = 2
                stdin_fd = p.stdin.fileno() if p.stdin else None
        except OSError as e:
            sock.sendall(frame(2, b"\x03" + json.dumps({"metadata": {}, "status": "Failure",
                                                          "message": str(e)}).encode()))
            return
        sock.setblocking(False)
        inbuf, wsout, inq = bytearray(leftover), bytearray(), bytearray()
        stdin_open = stdin_fd is not None
        stdin_eof = False
        client_done = False
        while outs or (wsout and not client_done):
            rl = list(outs) if len(wsout) < HIGH_WATER else []
            if not client_done and len(inq) < HIGH_WATER:
                rl.append(sock)
            wl = ([sock] if wsout and not client_done else []) + ([stdin_fd] if inq and stdin_open else [])
            pending = sock in rl and sock.pending() > 0
            r, wr, _ = select.select(rl, wl, [], 0 if pending else 30)
            if pending and sock not in r:
                r.append(sock)
            if sock in r:
                try:
                    d = sock.recv(65536)
                    if not d:
                        client_done = True
                    inbuf += d
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
                except OSError:
                    client_done = True
                while True:
                    fr = parse_frame(inbuf)
                    if fr is None:
                        break
                    _, op, payload, used = fr
                    del inbuf[:used]
                    if op == 8:
                        client_done = True
                    elif op == 9:
                        wsout += frame(10, payload)
                    elif op in (1, 2) and payload:
                        ch, data = payload[0], payload[1:]
                        if ch == 0 and stdin_open:
                            inq += data
                        elif ch == 4 and tty:
                            try:
                                size = json.loads(data)
                                fcntl.ioctl(master, termios.TIOCSWINSZ,
                                            struct.pack("HHHH", size.get("Height", 24), size.get("Width", 80), 0, 0))
                            except (ValueError, OSError):
                                pass
                        elif ch == 255 and data[:1] == b"\x00" and stdin_open and not tty:
                            stdin_eof = True         # v5: client closed stdin
            if stdin_open and stdin_fd in wr and inq:
                try:
                    n = os.write(stdin_fd, inq)
                    del inq[:n]
                except OSError:
                    inq.clear()
            if stdin_eof and stdin_open and not inq:
                p.stdin.close()
                stdin_open = False
            for fd in list(outs):
                if fd in r:
                    try:
                        d = os.read(fd, 65536)
                    except OSError:
                        d = b""
                    if d:
                        wsout += frame(2, bytes([outs[fd]]) + d)
                    else:
                        del outs[fd]
            if sock in wr and wsout:
                try:
                    n = sock.send(wsout[:16384])
                    del wsout[:n]
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    pass
                except OSError:
                    client_done = True
            if client_done and p.poll() is None and not outs:
                break
        if client_done and p.poll() is None:
            p.kill()
        if p.stdin and stdin_open:
            try:
                p.stdin.close()
            except OSError:
                pass
        code = p.wait()
        if master is not None:
            os.close(master)
        if code == 0:
            status = {"metadata": {}, "status": "Success"}
        else:
            status = {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                      "message": "command terminated with non-zero exit code: exit status %d" % code,
                      "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}
        wsout += frame(2, b"\x03" + json.dumps(status).encode()) + frame(8, struct.pack(">H", 1000))
        sock.setblocking(True)
        try:
            sock.sendall(bytes(wsout))
        except OSError:
            pass
