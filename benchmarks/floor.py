"""
The floor of a Python server on this machine: the same pre-rendered bytes for every
request, no HTTP framework, no token check, no lookup.

Not a server anyone should run; run.py measures it beside nginx and imds to show how much
of the gap to nginx is Python itself and how much is imds.

    python benchmarks/floor.py PORT BODY_FILE [close]

Without `close`: an asyncio protocol on uvloop, keep-alive and pipelining allowed (the
floor for imds's fast path on a kept-alive connection). With `close`: a bare accept loop
on a listening socket with TCP_DEFER_ACCEPT that reads each request, writes the bytes and
closes, as imds.http.acceptor does without any of its checks (the floor for new connections).
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import uvloop


def keep_alive(port: int, response: bytes) -> None:
    class Answer(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.pending = b""

        def data_received(self, data: bytes) -> None:
            # One response per complete request head; keep-alive, pipelining allowed.
            self.pending += data
            count = self.pending.count(b"\r\n\r\n")
            if count:
                self.pending = self.pending[self.pending.rindex(b"\r\n\r\n") + 4:]
                self.transport.write(response * count)  # type: ignore[attr-defined]

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Answer, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


def closing(port: int, response: bytes) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)
    listener.listen(4096)
    listener.setblocking(False)

    async def serve() -> None:
        loop = asyncio.get_running_loop()

        def rest(conn: socket.socket) -> None:
            # A request not in yet when accepted (rare with deferred accept).
            try:
                data = conn.recv(65536)
            except BlockingIOError:
                return
            loop.remove_reader(conn.fileno())
            if data:
                conn.send(response)
            conn.close()

        def ready() -> None:
            for _ in range(64):
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    return
                conn.setblocking(False)
                try:
                    data = conn.recv(65536)
                except BlockingIOError:
                    loop.add_reader(conn.fileno(), rest, conn)
                    continue
                if data:
                    conn.send(response)
                conn.close()

        loop.add_reader(listener.fileno(), ready)
        await asyncio.Event().wait()

    uvloop.run(serve())


def main() -> None:
    port, body = int(sys.argv[1]), Path(sys.argv[2]).read_bytes()
    close = sys.argv[3:] == ["close"]
    response = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nServer: EC2ws\r\n"
                b"Content-Length: %d\r\n%s\r\n" % (len(body), b"Connection: close\r\n"
                                                   if close else b"")) + body
    (closing if close else keep_alive)(port, response)


if __name__ == "__main__":
    main()
