"""
The fast path: the requests every SDK makes, answered without aiohttp's machinery.

An SDK fetching credentials sends three small requests, a new connection each [N-04]:
PUT the token, GET the role list, GET the role's document. aiohttp spends most of each
answer building and tearing down its own request, response and task objects
(docs/benchmarks.md). `Wire.respond` turns a plain request head into the reply's bytes,
asking `imds.ec2.answer.answer` (the function aiohttp's handler calls too). On Linux the accept
loop (imds.http.acceptor) uses it on a connection's first request before the event loop has
the connection; `FastPath`, the protocol every metadata connection the event loop takes
starts with, uses it for every request it reads.

Plain means: one complete HTTP/1.1 GET or PUT with a Host, nothing after its head, a
path of unreserved characters, every header well-formed (imds.http.plainhead) and none that
needs interpreting (a body, `Expect`, `Upgrade`, a repeated name). Anything else, and the
connection is handed to aiohttp for good: its protocol takes the transport and every byte
read so far and answers as if it had had the connection from the start. A head still
arriving is handed over as soon as it can no longer become plain, since aiohttp answers
such a one before it is complete. So each limit and each answer to a malformed request
stays aiohttp's (imds.http.aioserver), faults stay the lab's (imds.lab), and this module only has
to recognise what it may answer, never refuse anything.
"""

from __future__ import annotations

import asyncio
import http
import logging
import time
from email.utils import formatdate
from typing import TYPE_CHECKING, NamedTuple, Protocol, cast

from imds.ec2.answer import Reply, answer
from imds.ec2.tree import Found
from imds.http.app import State
from imds.http.hoplimit import SocketHolder, apply_hop_limit
from imds.http.plainhead import HEAD, Prefix
from imds.logs import ACCESS, log_access

if TYPE_CHECKING:
    from imds.http.observer import Fetched

# Headers that ask for something beyond a plain answer: aiohttp decides what to do.
_INTERPRETED = frozenset({"transfer-encoding", "expect", "upgrade", "te", "trailer"})

_STATUS_LINES = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n" for status in http.HTTPStatus
}

# aiohttp names a closing HTTP/1.1 answer so; a kept-alive one carries no Connection.
_CLOSE = "Connection: close\r\n"


# Answers kept at most; past it the lot is dropped and kept again as asked for. An answer
# is about as long as a credential document, so this bounds the memory to about 1.5 MB.
KEPT_MAX = 1024


class Kept(NamedTuple):
    """A metadata answer, on the wire already, and what says it is still the answer."""

    remote: str
    response: bytes
    found: Found
    # Clock time its TTL header holds until (Reply.until) and the real second it is dated.
    until: float
    second: int
    close: bool
    path: str
    fetched: Fetched


class Adopted(NamedTuple):
    """A connection's start, as the accept loop left it (imds.http.acceptor)."""

    # Bytes read and not answered yet.
    read: bytes = b""
    # The end of an answer the socket did not take at once, and whether to close after it.
    unsent: bytes = b""
    close: bool = False


class Wire:
    """
    What every fast-path connection shares: the app's state, replies as bytes (header for
    header what aiohttp sends for the same `Reply`), and the answers kept for requests
    that come again byte for byte.

    Keeping answers is what makes a repeated request cheap: an SDK that holds on to its
    token (Go v2 and Rust cache it for its lifetime [T-17] [S-GO-01]) sends the same bytes
    for each credential refresh, and an app polling metadata the same for each poll.
    A kept answer is sent again only while all of it would be the same if worked out
    anew: same client, same second in its Date, same TTL header, the tree still leading
    to the same body (`Found.unchanged`), and no fault injected.
    """

    def __init__(self, state: State, max_headers: int) -> None:
        self.state = state
        # More header fields than this and aiohttp answers (imds.http.aioserver.Limits).
        self.max_headers = max_headers
        # aiohttp writes the content type first, then the app's headers in order.
        self._common = "".join(f"{name}: {value}\r\n"
                               for name, value in state.common_headers.items())
        self._date = ""
        self.second = -1
        self.kept: dict[bytes, Kept] = {}

    def date(self) -> str:
        # every answer is dated; the string changes once a second.
        second = int(time.time())
        if second != self.second:
            self._date = formatdate(second, usegmt=True)
            self.second = second
        return self._date

    def encode(self, reply: Reply, close: bool) -> bytes:
        extra = "".join(f"{name}: {value}\r\n" for name, value in reply.headers)
        body = reply.body
        head = (f"{_STATUS_LINES[reply.status]}Content-Type: {reply.content_type}\r\n"
                f"{self._common}{extra}Content-Length: {len(body)}\r\n"
                f"Date: {self.date()}\r\n{_CLOSE if close else ''}\r\n")
        return head.encode("latin-1") + body

    def respond(self, data: bytes, remote: str,
                transport: SocketHolder | None) -> tuple[bytes, bool] | None:
        """
        The bytes answering `data`, one complete request head from `remote`, and whether
        the connection closes after them; None when aiohttp must answer it. `transport`
        gives the socket the hop limit is set on (imds.http.hoplimit).
        """
        lab = self.state.lab
        if lab is not None and lab.intercepts:
            # Faults are applied around aiohttp's handler only (imds.lab.lab.Lab.wrap).
            return None
        kept = self.recall(data, remote)
        if kept is None:
            return self._answer(data, remote, transport)
        if lab is not None:
            lab.answered(kept.path, 200, remote, kept.fetched, True)
        if ACCESS.isEnabledFor(logging.DEBUG):
            log_access(remote, "GET", kept.path, 200, len(kept.found.body), 0.0)
        return kept.response, kept.close

    def _answer(self, data: bytes, remote: str,
                transport: SocketHolder | None) -> tuple[bytes, bool] | None:
        """`respond` for a request worked out anew: None unless it is plain."""
        match = HEAD.fullmatch(data)
        if match is None:
            return None
        headers: dict[str, str] = {}
        fields = match[3].decode("ascii").split("\r\n")
        fields.pop()  # the empty string after the last field's CRLF
        if len(fields) > self.max_headers:
            return None
        for field in fields:
            name, _, value = field.partition(":")
            key = name.lower()
            if key in headers or key in _INTERPRETED:
                return None
            headers[key] = value.strip(" \t")
        if "host" not in headers:
            # RFC 9112 §3.2: an HTTP/1.1 request without Host gets 400. aiohttp gives it
            # (its parser refuses the request); every SDK sends Host, and EC2's answer
            # is not known otherwise (spec §1), so both paths give aiohttp's 400.
            return None
        close = False
        length = headers.get("content-length")
        if length is not None and length != "0":
            return None
        connection = headers.get("connection")
        if connection is not None:
            connection = connection.lower()
            if connection == "close":
                close = True
            elif connection != "keep-alive":
                return None
        started = time.perf_counter()
        state = self.state
        method = match[1].decode("ascii")
        path = match[2].decode("ascii")
        reply = answer(state.rules, method, path, headers.get, remote)
        if reply.wait is not None:
            # Only aiohttp's handler can wait (imds.http.app.handle).
            return None
        # [N-05] the hop limit stays on the socket, so its connection carries nothing more.
        hops_limited = apply_hop_limit(reply.hop_limit, transport)
        close = close or reply.close or hops_limited or state.config.connection_close
        response = self.encode(reply, close)
        lab = state.lab
        fetched = None
        if lab is not None:
            fetched = lab.fetched(path, reply.status, reply.body, headers.get)
            lab.answered(path, reply.status, remote, fetched, False)
        if reply.found is not None and method == "GET":
            self.keep(data, Kept(remote, response, reply.found, reply.until, self.second,
                                 close, path, fetched))
        if ACCESS.isEnabledFor(logging.DEBUG):
            log_access(remote, method, path, reply.status, len(reply.body),
                       time.perf_counter() - started)
        return response, close

    def keep(self, request: bytes, kept: Kept) -> None:
        table = self.kept
        if len(table) >= KEPT_MAX:
            table.clear()
        table[request] = kept

    def recall(self, request: bytes, remote: str) -> Kept | None:
        """The kept answer to `request` from `remote`, if it is still the answer."""
        kept = self.kept.get(request)
        if (kept is None or kept.remote != remote or self.state.rules.clock() >= kept.until
                or int(time.time()) != kept.second or not kept.found.unchanged()):
            return None
        return kept


class OwnerLimits(Protocol):
    """The limits a fast-path connection keeps (imds.http.aioserver.Limits)."""

    @property
    def idle_timeout(self) -> float: ...

    @property
    def max_header_size(self) -> int: ...


class Owner(Protocol):
    """
    What a fast-path connection, or the accept loop, needs of the server that owns it
    (imds.http.aioserver.CappedServer): a protocol, so that the server may import this
    module and not the other way round.
    """

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def limits(self) -> OwnerLimits: ...

    @property
    def wire(self) -> Wire | None: ...

    def track(self, connection: FastPath) -> None: ...

    def untrack(self, connection: FastPath) -> None: ...

    def hand_over(self, fast: FastPath, transport: asyncio.Transport, data: bytes) -> None: ...


class FastPath(asyncio.Protocol):
    """One metadata connection, until it asks for something only aiohttp answers."""

    __slots__ = (
        "_buffer",
        "_first",
        "_loop",
        "_prefix",
        "_remote",
        "_server",
        "_transport",
        "_wire",
        "deadline",
    )

    def __init__(self, server: Owner, wire: Wire, first: Adopted | None = None,
                 ) -> None:
        self._server = server
        self._wire = wire
        # What the accept loop (imds.http.acceptor) did on this connection before the event
        # loop had it; taken up as soon as the connection is made.
        self._first = first
        self._transport: asyncio.Transport | None = None
        self._remote = ""
        self._buffer: bytearray | None = None
        # Whether the head in `_buffer` may still become a plain one (imds.http.plainhead).
        self._prefix: Prefix | None = None
        self._loop = server.loop
        # The idle timeout (imds.http.aioserver.Limits): a complete request must arrive by this loop
        # time, counted from the connection opening or the last answer. The server's sweep
        # closes connections past it (one timer for all, not one per connection).
        self.deadline = 0.0

    # A fast-path connection is never in the middle of an answer: it writes each one
    # within the callback that read the request. The connection cap may close it.
    idle = True

    def force_close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def evict(self) -> None:
        # The connection cap wants the descriptor back (imds.http.aioserver.CappedServer): a close
        # would wait for a client that does not read to take what is unsent.
        if self._transport is not None:
            self._transport.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not asyncio.Transport subclasses).
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        # What aiohttp's request.remote is: the address alone, no port.
        self._remote = peer[0] if isinstance(peer, tuple | list) and peer else ""
        self.deadline = self._loop.time() + self._server.limits.idle_timeout
        self._server.track(self)
        first = self._first
        if first is not None:
            self._first = None
            if first.unsent:
                self._send(first.unsent, first.close)
            if first.read:
                self.data_received(first.read)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.untrack(self)
        self._transport = None

    def pause_writing(self) -> None:
        # A client that sends requests without reading the answers is not read from
        # until it catches up.
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        limits = self._server.limits
        buffer = self._buffer
        if buffer is None:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                prefix = self._prefix = Prefix()
                if len(data) > limits.max_header_size or not prefix.extends(data):
                    # aiohttp's limits decide what a head this long gets, and aiohttp
                    # answers one that cannot be plain at once (bare LF, a NUL, ...).
                    self._hand_over(data)
                else:
                    self._buffer = bytearray(data)
                return
        else:
            # A head arriving in pieces: each piece is searched once (from three bytes
            # back, where the blank line may begin), so trickling costs linear time.
            start = max(0, len(buffer) - 3)
            buffer += data
            end = buffer.find(b"\r\n\r\n", start)
            if end < 0:
                started = self._prefix
                assert started is not None  # made with the buffer
                if len(buffer) > limits.max_header_size or not started.extends(buffer):
                    self._buffer = None
                    self._hand_over(bytes(buffer))
                return
            self._buffer = None
            data = bytes(buffer)
        if end + 4 != len(data) or end > limits.max_header_size:
            # A body, a pipelined request, or a head near the limits.
            self._hand_over(data)
            return
        reply = self._wire.respond(data, self._remote, self._transport)
        if reply is None:
            self._hand_over(data)
        else:
            self._send(*reply)

    def _send(self, response: bytes, close: bool) -> None:
        transport = self._transport
        assert transport is not None
        transport.write(response)
        if close:
            transport.close()
        else:
            self.deadline = self._loop.time() + self._server.limits.idle_timeout

    def _hand_over(self, data: bytes) -> None:
        transport = self._transport
        self._transport = None
        if transport is not None:
            lab = self._wire.state.lab
            if lab is not None:
                lab.handed_over()
            self._server.hand_over(self, transport, data)
