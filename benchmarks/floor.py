"""
The floor of a Python server on this machine: an asyncio protocol on uvloop that answers
every request with the same pre-rendered bytes, no HTTP framework, no token check.

Not a server anyone should run; run.py measures it beside nginx and imds to show how much
of the gap to nginx is Python itself and how much is the HTTP stack above it.

    python benchmarks/floor.py PORT BODY_FILE [close]

With `close` it closes each connection after its response, as imds does by default.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import uvloop


def main() -> None:
    port, body = int(sys.argv[1]), Path(sys.argv[2]).read_bytes()
    close = sys.argv[3:] == ["close"]
    response = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nServer: EC2ws\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)) + body

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
                if close:
                    self.transport.close()

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Answer, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


if __name__ == "__main__":
    main()
