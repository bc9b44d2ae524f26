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
import struct
import threading
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


def _read_exact(f, n):
    b = f.read(n)
    if len(b) < n:
        raise EOFError
    return b


def _read_frame(f):
    h = _read_exact(f, 2)
    op, n = h[0] & 0x0F, h[1] & 0x7F
    if n == 126:
        n = struct.unpack(">H", _read_exact(f, 2))[0]
    elif n == 127:
        n = struct.unpack(">Q", _read_exact(f, 8))[0]
    if h[1] & 0x80:
        _read_exact(f, 4)     # servers do not mask; tolerate it anyway
    return op, _read_exact(f, n)


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
    f = s.makefile("rb")
    status_line = f.readline().decode()
    headers = {}
    while True:
        line = f.readline().decode().rstrip("\r\n")
        if not line:
            break
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    code = int(status_line.split()[1])
    if code != 101:
        n = int(headers.get("content-length", "0") or 0)
        body = f.read(n).decode(errors="replace") if n else ""
        s.close()
        raise PortForwardError(code, body)
    want = base64.b64encode(hashlib.sha1((wkey + GUID).encode()).digest()).decode()
    if headers.get("sec-websocket-accept") != want:
        raise PortForwardError(code, "bad Sec-WebSocket-Accept")
    if headers.get("sec-websocket-protocol") != "v4.channel.k8s.io":
        raise PortForwardError(code, "subprotocol %r" % headers.get("sec-websocket-protocol"))
    ports, data, err = {}, b"", ""
    try:
        # The port header on both channels first.
        while len(ports) < 2:
            op, m = _read_frame(f)
            if op == 2 and m:
                ports[m[0]] = struct.unpack("<H", m[1:3])[0]
        # Send from a thread while reading, so a large payload to an echoing
        # peer cannot deadlock on full buffers; 64 KiB per message.
        def sender():
            try:
                for off in range(0, len(payload), 65536):
                    s.sendall(_frame(2, b"\x00" + payload[off:off + 65536]))
            except OSError:
                pass
        threading.Thread(target=sender, daemon=True).start()
        while True:
            op, m = _read_frame(f)
            if op == 8:
                break
            if op in (1, 2) and m:
                if m[0] == 0:
                    data += m[1:]
                elif m[0] == 1:
                    err += m[1:].decode(errors="replace")
    except (EOFError, OSError):
        pass
    finally:
        try:
            s.sendall(_frame(8, struct.pack(">H", 1000)))
        except OSError:
            pass
        s.close()
    return ports, data, err
