#!/usr/bin/env python3
"""Write the seed corpus for fuzz_frame into tests/fuzz/corpus/frame/.

Frames are built here from docs/protocol.md, independently of common/frame.c, so
the seeds double as a check that the spec and the C code agree. Each seed is one
role byte (0: the tunnel under test is the SERVER, 1: the CLIENT) followed by what
the peer sends. Run: python3 tests/fuzz/gen_frame_corpus.py
"""
import os
import struct

HELLO, WELCOME, OPEN, DATA, SHUTDOWN, RESET, WINDOW, PING, GOAWAY = range(1, 10)


def frame(ftype, stream, payload=b"", flags=0):
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, ftype, flags, stream) + payload


def s8(b):
    return bytes([len(b)]) + b


def s16(b):
    return struct.pack(">H", len(b)) + b


def hello(key=b"alice", window=262144, version=1, flags=0, label=b"seed"):
    return frame(HELLO, 0, struct.pack(">BBI", version, flags, window) + s8(key) + s8(label))


def welcome(status=0, window=4096, msg=b"ok"):
    return frame(WELCOME, 0, struct.pack(">BBI", 1, status, window) + s16(msg))


def open_(stream, kind=2, port=80, peer=b"127.0.0.1:5000", host=b"web"):
    return frame(OPEN, stream, struct.pack(">BH", kind, port) + s8(peer) + s8(host))


def data(stream, body):
    return frame(DATA, stream, body)


def reason(ftype, stream, code, text):
    return frame(ftype, stream, struct.pack(">I", code) + s16(text))


def window(stream, inc):
    return frame(WINDOW, stream, struct.pack(">I", inc))


def ping(ack=False):
    return frame(PING, 0, b"\x01\x02\x03\x04\x05\x06\x07\x08", 1 if ack else 0)


SERVER, CLIENT = b"\x00", b"\x01"

seeds = {
    "hello": SERVER + hello(),
    "hello_open_data_shutdown": SERVER + hello() + open_(1) + data(1, b"GET / HTTP/1.1\r\n\r\n")
    + frame(SHUTDOWN, 1),
    "hello_window_overrun": SERVER + hello() + open_(1) + data(1, b"a" * 3000) + data(1, b"b" * 3000),
    "hello_server_opens": SERVER + hello() + open_(1, port=2) + window(2, 100) + window(1, 5)
    + reason(RESET, 2, 1, b"bye"),
    "hello_ping_goaway": SERVER + hello() + ping() + ping(True) + reason(GOAWAY, 0, 1, b"done"),
    "hello_refused": SERVER + hello(key=b"xray"),
    "hello_bad_version": SERVER + hello(version=7),
    "hello_bad_key": SERVER + hello(key=b"Bad.Key"),
    "hello_wrong_parity": SERVER + hello() + open_(2),
    "hello_free_in_open": SERVER + hello() + open_(1, port=3) + data(1, b"x"),
    "hello_refuse_open": SERVER + hello() + open_(1, port=1) + data(1, b"late"),
    "hello_many_streams": SERVER + hello() + b"".join(open_(i) + data(i, b"hi") for i in range(1, 24, 2)),
    "hello_unknown_streams": SERVER + hello() + data(9, b"?") + frame(SHUTDOWN, 11) + window(13, 1)
    + reason(RESET, 15, 2, b""),
    "hello_unknown_type": SERVER + hello() + frame(200, 0, b"future") + ping(),
    "hello_echo_eof": SERVER + hello() + open_(3) + open_(5) + data(3, b"ping") + data(5, b"x" * 100)
    + frame(SHUTDOWN, 3) + frame(SHUTDOWN, 5),
    "data_before_hello": SERVER + data(1, b"x"),
    # issue 16 defect 2: answers asked for and never read (cut off: "enhance your calm")
    "ping_flood_before_hello": SERVER + ping() * 1100,
    "hello_empty_data_flood": SERVER + hello() + b"".join(data(1001 + 2 * (i % 7), b"")
                                                         for i in range(1100)),
    "too_long": SERVER + b"\x01\x00\x01\x04\x00\x00\x00\x00\x01",
    "client_welcome_inbound": CLIENT + welcome() + open_(2, kind=1, port=8080, host=b"")
    + data(2, b"request") + window(1, 1000) + data(1, b"resp") + frame(SHUTDOWN, 2),
    "client_welcome_refused": CLIENT + welcome(status=4, window=0, msg=b"key taken"),
    "client_welcome_then_reset": CLIENT + welcome() + reason(RESET, 1, 4, b"connection refused to web:80"),
    # bare payloads for the decoders
    "payload_hello": b"\x01\x00\x00\x04\x00\x00\x05alice\x04seed",
    "payload_open": b"\x02\x00\x50\x0e127.0.0.1:5000\x03web",
    "payload_reason": b"\x00\x00\x00\x03\x00\x05hello",
    "payload_window": b"\x00\x01\x00\x00",
}

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "frame")
os.makedirs(out, exist_ok=True)
for name, blob in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(blob)
print(f"{len(seeds)} seeds in {out}")
