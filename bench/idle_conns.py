#!/usr/bin/env python3
"""Open many keep-alive connections through a proxy, one request each, then idle.

bench/run uses this to measure the memory a proxy holds per idle keep-alive
connection: it reads the proxy's RSS, starts this client, waits for the `idle`
line, reads the RSS again, then closes our stdin to let the client finish.

    idle_conns.py HOST PORT COUNT KEY [--hold SECONDS]

Each connection sends `GET /dev/small.txt` with `kubernetes-route-as: KEY`, reads
the whole response and checks that the developer backend answered (status 200,
`X-Bench-Backend: developer`). Then the connection stays open and silent.
Prints `idle OK FAILED` once every connection has been tried, then waits until
stdin is closed (or --hold seconds pass, default 120) and closes everything.
Exit status 0 only if every connection succeeded.
"""

import argparse
import asyncio
import sys

CONCURRENT_OPENS = 100  # connections being opened at the same time
STEP_TIMEOUT = 20.0     # seconds for one connection's connect + request + response


async def open_one(host, port, request, opened, sem):
    """Open one connection, do one request; on success append (reader, writer)."""
    async with sem:
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), STEP_TIMEOUT)
            writer.write(request)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP_TIMEOUT)
            lines = head.decode("latin-1").split("\r\n")
            status = lines[0].split(" ")
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "-1"))
            if length < 0:
                raise ValueError("response without Content-Length")
            await asyncio.wait_for(reader.readexactly(length), STEP_TIMEOUT)
            if len(status) < 2 or status[1] != "200":
                raise ValueError("status " + lines[0])
            if headers.get("x-bench-backend") != "developer":
                raise ValueError("answered by backend %r" % headers.get("x-bench-backend"))
            opened.append((reader, writer))
            return None
        except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
            if writer is not None:
                writer.close()
            return str(e) or type(e).__name__


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("count", type=int)
    ap.add_argument("key")
    ap.add_argument("--hold", type=float, default=120.0,
                    help="seconds to stay idle at most (default 120)")
    a = ap.parse_args()

    request = ("GET /dev/small.txt HTTP/1.1\r\nHost: %s:%d\r\n"
               "kubernetes-route-as: %s\r\n\r\n" % (a.host, a.port, a.key)).encode()
    opened = []
    sem = asyncio.Semaphore(CONCURRENT_OPENS)
    results = await asyncio.gather(
        *(open_one(a.host, a.port, request, opened, sem) for _ in range(a.count)))
    errors = [r for r in results if r is not None]
    if errors:
        print("first error: %s" % errors[0], file=sys.stderr)
    print("idle %d %d" % (len(opened), len(errors)), flush=True)

    # Idle until bench/run closes our stdin (or the hold time is over).
    loop = asyncio.get_running_loop()
    stdin_closed = asyncio.Event()

    def on_stdin():
        if not sys.stdin.buffer.raw.read(4096):
            stdin_closed.set()
            loop.remove_reader(sys.stdin.fileno())

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    try:
        await asyncio.wait_for(stdin_closed.wait(), a.hold)
    except asyncio.TimeoutError:
        loop.remove_reader(sys.stdin.fileno())
    # Connections the proxy closed while idle show up as EOF on their reader.
    dropped = sum(1 for r, _ in opened if r.at_eof())
    for _, w in opened:
        w.close()
    print("closed %d dropped-while-idle %d" % (len(opened), dropped), flush=True)
    return 0 if not errors and dropped == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
