#!/usr/bin/env python3
"""A kubelet-like pod port-forward WebSocket server for the portforward unit test.

It plays the API server and the kubelet at once: it answers
  GET [PREFIX]/api/v1/namespaces/NS/pods/POD/portforward?ports=P
with a WebSocket upgrade (subprotocol v4.channel.k8s.io), sends the two port
announcements (channel 0 and 1, 2 bytes little-endian), then relays channel 0
to 127.0.0.1:P as the kubelet relays to the pod's port. A failed dial becomes
the kubelet's error text on channel 1.

What the server does is picked by the pod name (first dash-separated word):
  echo-*       relay (the default for any other name)
  frag-*       relay, but every message is cut into fragments of odd sizes
               (an empty first one, 125/126/65535/65536-byte boundaries), each
               message is preceded by a ping, and the next message waits for
               the matching pong
  abrupt-*     relay; after a failed dial send the error text and drop the
               connection at once (no close frame)
  forbidden-*  403 with a Kubernetes Status (Content-Length body)
  missing-*    404 with a Status in a chunked body
  html-*       200 with an HTML page
  badaccept-*, badproto-*, noproto-*  a 101 with the named flaw
  silent-*     never answer
  close1011-*  after the announcements, close with code 1011
  badport-*    announce the wrong port
  masked-*     send a masked frame
  huge-*       send a frame header declaring 2^40 bytes
Every client frame is checked (masked, channel 0, known opcode); a bad one gets
an error text on channel 1, so the client test fails loudly.

An HTTP CONNECT proxy runs beside it, for pf_target.proxy_url: it wants
"Proxy-Authorization: Basic" of the user "kb user" and password "p@ss:w"
(407 otherwise), refuses a target port 9 with 403, and dials any other
target whose host ends in .invalid at 127.0.0.1 (so a name only the proxy
can resolve shows the connection really went through it). It counts the
CONNECTs it relayed.

Usage: fake_apiserver.py --cert C --key K [--token T] [--prefix /p]
Prints "PORT PROXY-PORT" (127.0.0.1) and serves until stdin closes.
Debugging: with PF_DUMP=PATH in the environment, the bytes relayed to and from
the pod port are appended to PATH.up and PATH.down (test_portforward then
writes its pattern to PATH.pattern for comparison)."""
import argparse
import asyncio
import base64
import hashlib
import json
import os
import ssl
import struct
import sys
import threading
import urllib.parse

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PROTO = "v4.channel.k8s.io"


def status_json(code, reason, message):
    return json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {},
                       "status": "Failure", "message": message, "reason": reason,
                       "code": code}).encode()


def unmask(data, key):
    n = len(data)
    if n == 0:
        return b""
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def frame(opcode, payload, fin=True, mask=False):
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    mbit = 0x80 if mask else 0
    if n < 126:
        hdr = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        hdr = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask:
        key = os.urandom(4)
        return hdr + key + unmask(payload, key)
    return hdr + payload


class Conn:
    def __init__(self, args, reader, writer):
        self.args = args
        self.r = reader
        self.w = writer
        self.pong = asyncio.Event()
        self.pong_payload = b""
        self.closed = False

    async def respond(self, code, reason, body=b"", ctype="application/json", chunked=False):
        head = f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\n"
        if chunked:
            head += "Transfer-Encoding: chunked\r\n\r\n"
            mid = len(body) // 2
            data = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:mid], body[mid:]) if p)
            data += b"0\r\n\r\n"
        else:
            head += f"Content-Length: {len(body)}\r\n\r\n"
            data = body
        self.w.write(head.encode() + data)
        await self.w.drain()

    async def send(self, data):
        if self.closed:
            return
        self.w.write(data)
        await self.w.drain()

    async def error_text(self, text):
        await self.send(frame(2, b"\x01" + text.encode()))

    async def run(self):
        try:
            head = await self.r.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        hdrs = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                hdrs[k.strip().lower()] = v.strip()
        if self.args.token and hdrs.get("authorization") != "Bearer " + self.args.token:
            await self.respond(401, "Unauthorized", status_json(401, "Unauthorized", "Unauthorized"))
            return
        url = urllib.parse.urlsplit(target)
        path = url.path
        if self.args.prefix and path.startswith(self.args.prefix + "/"):
            path = path[len(self.args.prefix):]
        parts = path.split("/")
        # ['', 'api', 'v1', 'namespaces', NS, 'pods', POD, 'portforward']
        if (method != "GET" or len(parts) != 8 or parts[1:4] != ["api", "v1", "namespaces"]
                or parts[5] != "pods" or parts[7] != "portforward"):
            await self.respond(404, "Not Found", status_json(
                404, "NotFound", "the server could not find the requested resource"))
            return
        ns, pod = parts[4], parts[6]
        query = urllib.parse.parse_qs(url.query)
        port = int(query.get("ports", ["0"])[0])
        mode = pod.split("-")[0]
        if mode == "forbidden":
            await self.respond(403, "Forbidden", status_json(
                403, "Forbidden",
                f'pods "{pod}" is forbidden: User "dev" cannot get resource "pods/portforward" '
                f'in API group "" in the namespace "{ns}"'))
            return
        if mode == "missing":
            await self.respond(404, "Not Found", status_json(
                404, "NotFound", f'pods "{pod}" not found'), chunked=True)
            return
        if mode == "html":
            await self.respond(200, "OK", b"<html><body>\n<h1>Welcome</h1>\n</body></html>\n",
                               ctype="text/html")
            return
        if mode == "silent":
            await self.r.read()
            return
        key = hdrs.get("sec-websocket-key", "")
        if (hdrs.get("upgrade", "").lower() != "websocket" or
                "upgrade" not in hdrs.get("connection", "").lower() or
                hdrs.get("sec-websocket-version") != "13" or len(base64.b64decode(key)) != 16 or
                PROTO not in [p.strip() for p in hdrs.get("sec-websocket-protocol", "").split(",")]):
            await self.respond(400, "Bad Request", status_json(400, "BadRequest", "not a v4 WebSocket upgrade"))
            return
        accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
        proto = PROTO
        if mode == "badaccept":
            accept = base64.b64encode(b"x" * 20).decode()
        if mode == "badproto":
            proto = "v4.base64.channel.k8s.io"
        resp = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\n")
        if mode != "noproto":
            resp += f"Sec-WebSocket-Protocol: {proto}\r\n"
        announce = port + 1 if mode == "badport" else port
        pb = struct.pack("<H", announce & 0xFFFF)
        # The answer and both announcements in one write, as the kubelet often does.
        self.w.write((resp + "\r\n").encode() + frame(2, b"\x00" + pb) + frame(2, b"\x01" + pb))
        await self.w.drain()
        if mode == "close1011":
            await self.send(frame(8, struct.pack("!H", 1011) + b"kubelet exploded"))
            await self.read_frames(None)
            return
        if mode == "masked":
            await self.send(frame(2, b"\x00hello", mask=True))
            await self.read_frames(None)
            return
        if mode == "huge":
            await self.send(struct.pack("!BBQ", 0x82, 127, 1 << 40) + b"\x00" * 100)
            await self.read_frames(None)
            return
        try:
            tr, tw = await asyncio.open_connection("127.0.0.1", port)
        except OSError as e:
            await self.error_text(f"error forwarding port {port} to pod {pod}, uid : "
                                  f"dial tcp4 127.0.0.1:{port}: connect: {os.strerror(e.errno).lower()}")
            if mode == "abrupt":
                self.w.transport.abort()
                return
            await self.send(frame(8, struct.pack("!H", 1000)))
            await self.read_frames(None)
            return
        up = asyncio.ensure_future(self.read_frames(tw))
        await self.pump(tr, mode == "frag")
        await self.send(frame(8, struct.pack("!H", 1000)))  # the pod closed: normal close
        try:
            await asyncio.wait_for(up, 10)
        except asyncio.TimeoutError:
            up.cancel()
        tw.close()

    async def pump(self, tr, frag):
        """Pod -> client, as channel-0 messages."""
        n = 0
        while True:
            data = await tr.read(262144)
            if not data:
                return
            payload = b"\x00" + data
            if os.environ.get("PF_DUMP"):
                with open(os.environ["PF_DUMP"] + ".down", "ab") as f:
                    f.write(data)
            if not frag:
                await self.send(frame(2, payload))
                continue
            n += 1
            ping = b"p%d" % n
            self.pong.clear()
            await self.send(frame(9, ping))
            try:
                await asyncio.wait_for(self.pong.wait(), 10)
            except asyncio.TimeoutError:
                await self.error_text("test server: no pong for " + ping.decode())
                return
            if self.pong_payload != ping:
                await self.error_text("test server: pong payload %r for ping %r" % (self.pong_payload, ping))
                return
            cuts = [0, 1, 125, 126, 65535, 65536, 70001]
            pieces, pos, i = [], 0, n % len(cuts)
            while pos < len(payload):
                size = cuts[i % len(cuts)] or 0
                i += 1
                pieces.append(payload[pos:pos + size])
                pos += size
            out = b""
            for j, p in enumerate(pieces):
                out += frame(2 if j == 0 else 0, p, fin=(j == len(pieces) - 1))
                if j == len(pieces) // 2:
                    out += frame(9, b"mid")  # a control frame between fragments
            await self.send(out)

    async def read_frames(self, tw):
        """Client -> pod. Checks every client frame."""
        msg, first = None, True
        try:
            while True:
                h = await self.r.readexactly(2)
                op, n = h[0] & 0x0F, h[1] & 0x7F
                if not h[1] & 0x80:
                    await self.error_text("test server: client frame not masked")
                    return
                if n == 126:
                    n = struct.unpack("!H", await self.r.readexactly(2))[0]
                elif n == 127:
                    n = struct.unpack("!Q", await self.r.readexactly(8))[0]
                key = await self.r.readexactly(4)
                payload = unmask(await self.r.readexactly(n), key)
                if op == 8:
                    if not self.closed:
                        await self.send(frame(8, payload[:2]))
                    self.closed = True
                    return
                if op == 9:
                    await self.send(frame(10, payload))
                    continue
                if op == 10:
                    if payload == b"mid":  # answer to the ping between fragments
                        continue
                    self.pong_payload = payload
                    self.pong.set()
                    continue
                if op not in (0, 2) or not h[0] & 0x80:
                    await self.error_text(f"test server: unexpected client frame opcode {op}")
                    return
                if not payload or payload[0] != 0:
                    await self.error_text("test server: client frame not on channel 0")
                    return
                if tw is not None:
                    if os.environ.get("PF_DUMP"):
                        with open(os.environ["PF_DUMP"] + ".up", "ab") as f:
                            f.write(payload[1:])
                    tw.write(payload[1:])
                    await tw.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if tw is not None and tw.can_write_eof():
                try:
                    tw.write_eof()
                except OSError:
                    pass


PROXY_AUTH = "Basic " + base64.b64encode(b"kb user:p@ss:w").decode()


async def proxy_handle(reader, writer):
    """One CONNECT: check the credentials, dial, relay both ways."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        hdrs = {}
        for ln in lines[1:]:
            if ":" in ln:
                k, v = ln.split(":", 1)
                hdrs[k.strip().lower()] = v.strip()
        if len(parts) != 3 or parts[0] != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            return
        if hdrs.get("proxy-authorization") != PROXY_AUTH:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                         b"Proxy-Authenticate: Basic realm=\"test\"\r\n"
                         b"Content-Length: 0\r\n\r\n")
            return
        host, port = parts[1].rsplit(":", 1)
        host = host.strip("[]")
        if port == "9":
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        if host.endswith(".invalid"):
            host = "127.0.0.1"
        ur, uw = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(r, w):
            try:
                while True:
                    d = await r.read(65536)
                    if not d:
                        break
                    w.write(d)
                    await w.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                try:
                    w.close()
                except Exception:
                    pass
        await asyncio.gather(pipe(reader, uw), pipe(ur, writer))
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--token")
    ap.add_argument("--prefix", default="")
    args = ap.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)

    async def handle(reader, writer):
        try:
            await Conn(args, reader, writer).run()
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx, limit=1 << 20)
    proxy = await asyncio.start_server(proxy_handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], proxy.sockets[0].getsockname()[1], flush=True)

    def wait_stdin():
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=wait_stdin, daemon=True).start()
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
