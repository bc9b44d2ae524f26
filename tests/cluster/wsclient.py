"""A minimal WebSocket client for the Kubernetes pod port-forward endpoint
(standard library only), as kbridge's CLI will use it:

    GET /api/v1/namespaces/NS/pods/POD/portforward?ports=P
    Upgrade: websocket, Sec-WebSocket-Protocol: v4.channel.k8s.io

After the 101 answer the server sends the port (2 bytes, little-endian) on the
data channel 0 and the error channel 1; then channel-0 messages carry the
stream both ways. port_forward() opens that, sends `payload`, and returns what
came back until the far side closed.
"""
import base64
import hashlib
import os
import socket
import ssl
import select
import struct
import time
import urllib.parse

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class PortForwardError(Exception):
    def __init__(self, status, body):
        self.status = status
        self.body = body
        super().__init__("HTTP %s: %s" % (status, body[:300]))


def _frame(opcode, payload):
    mask = os.urandom(4)
    n = len(payload)
    hdr = bytearray([0x80 | opcode])
    if n < 126:
        hdr.append(0x80 | n)
    elif n < 65536:
        hdr.append(0x80 | 126)
        hdr += struct.pack(">H", n)
    else:
        hdr.append(0x80 | 127)
        hdr += struct.pack(">Q", n)
    full = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(full, "big")).to_bytes(n, "big") if n else b""
    return bytes(hdr) + mask + masked


def port_forward(server, ca, ns, pod, port, payload, token=None, cert=None, key=None, timeout=15):
    """Returns (first_port_frames, data_bytes, error_text). Raises
    PortForwardError when the upgrade is refused (e.g. 403)."""
    u = urllib.parse.urlsplit(server)
    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    raw = socket.create_connection((u.hostname, u.port or 443), timeout=timeout)
    s = ctx.wrap_socket(raw, server_hostname=u.hostname)
    wkey = base64.b64encode(os.urandom(16)).decode()
    req = ("GET /api/v1/namespaces/%s/pods/%s/portforward?ports=%d HTTP/1.1\r\n"
           "Host: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
           "Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n" % (ns, pod, port, u.netloc, wkey))
    if token:
        req += "Authorization: Bearer %s\r\n" % token
    s.sendall((req + "\r\n").encode())
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            raise PortForwardError(0, "connection closed before the answer")
        buf += d
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    code = int(lines[0].split()[1])
    if code != 101:
        n = int(headers.get("content-length", "0") or 0)
        body = bytearray(rest)
        s.settimeout(5)
        try:
            while len(body) < n:
                d = s.recv(65536)
                if not d:
                    break
                body += d
        except OSError:
            pass
        s.close()
        raise PortForwardError(code, body.decode(errors="replace"))
    want = base64.b64encode(hashlib.sha1((wkey + GUID).encode()).digest()).decode()
    if headers.get("sec-websocket-accept") != want:
        raise PortForwardError(code, "bad Sec-WebSocket-Accept")
    if headers.get("sec-websocket-protocol") != "v4.channel.k8s.io":
        raise PortForwardError(code, "subprotocol %r" % headers.get("sec-websocket-protocol"))
    # One thread drives the TLS socket (OpenSSL connections must not be read
    # and written from two threads at once): select() loop, payload sent in
    # 64 KiB messages while answers are read, so an echoing peer cannot
    # deadlock on full buffers.
    ports, data, err = {}, bytearray(), ""
    inbuf = bytearray(rest)
    out = bytearray()
    todo = memoryview(payload)
    sent_all = False
    s.setblocking(False)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            closed = False
            while True:
                fr = _parse(inbuf)
                if fr is None:
                    break
                op, m = fr
                if op == 8:
                    closed = True
                    break
                if op in (1, 2) and m:
                    if len(ports) < 2 and len(m) >= 3 and m[0] not in ports:
                        ports[m[0]] = struct.unpack("<H", m[1:3])[0]
                    elif m[0] == 0:
                        data += m[1:]
                    elif m[0] == 1:
                        err += m[1:].decode(errors="replace")
            if closed:
                break
            if len(ports) >= 2 and not sent_all and len(out) < (1 << 20):
                chunk = todo[:65536]
                todo = todo[65536:]
                out += _frame(2, b"\x00" + bytes(chunk))
                sent_all = len(todo) == 0
            rl, wl = [s], [s] if out else []
            if s.pending():
                r, w = [s], []
            else:
                r, w, _ = select.select(rl, wl, [], 1)
            if s in w and out:
                try:
                    n = s.send(out[:16384])
                    del out[:n]
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
            if s in r:
                try:
                    d = s.recv(65536)
                    if not d:
                        break
                    inbuf += d
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    continue
    except OSError:
        pass
    finally:
        try:
            s.setblocking(True)
            s.sendall(_frame(8, struct.pack(">H", 1000)))
        except OSError:
            pass
        s.close()
    return ports, bytes(data), err


def _parse(buf):
    """(opcode, payload) of a whole frame at the front of buf, consumed; or None."""
    if len(buf) < 2:
        return None
    op, n, pos = buf[0] & 0x0F, buf[1] & 0x7F, 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, pos = struct.unpack(">H", bytes(buf[2:4]))[0], 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, pos = struct.unpack(">Q", bytes(buf[2:10]))[0], 10
    if buf[1] & 0x80:
        pos += 4          # servers do not mask; skip a mask anyway
    if len(buf) < pos + n:
        return None
    m = bytes(buf[pos:pos + n])
    del buf[:pos + n]
    return op, m
