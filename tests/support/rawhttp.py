"""A minimal HTTP/1.1 client over a raw socket, for requests no polite client would send."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


async def send(url: str, request: bytes, timeout: float = 5.0,
               source: str | None = None) -> RawResponse | None:
    """
    Send `request` verbatim to the server at `url`, from the loopback address `source` if
    given; None if it closed without answering.
    """
    parts = urlsplit(url)
    local = (source, 0) if source is not None else None
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port,
                                                   local_addr=local)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(_read_response(reader), timeout)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
    if not data:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(status, headers, body)


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    """Read one response: headers, then Content-Length bytes (or to EOF without one)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        return exc.partial
    length = None
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length is None:
        return head + await reader.read()
    return head + await reader.readexactly(length)


def request(method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 169.254.169.254", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@contextmanager
def untouched_listener() -> Iterator[str]:
    """A loopback listener nothing may connect to: yields its URL, then checks it was not."""
    with socket.create_server(("127.0.0.1", 0)) as trap:
        yield f"http://127.0.0.1:{trap.getsockname()[1]}"
        trap.setblocking(False)
        with pytest.raises(BlockingIOError):  # nobody connected
            trap.accept()[0].close()
