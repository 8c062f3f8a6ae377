"""
The fast path's request reader, in memory: every request split at every byte gets the
same answer as the request in one piece, h11-style.

A TCP stream may cut a request anywhere, and a slow or hostile client may send it a byte at
a time. `FastPath.data_received` must come to the same decision whatever the cuts: answer
the same bytes, or hand exactly the same bytes to aiohttp. These tests feed a `FastPath`
through an in-memory transport; the socket tests (test_fastpath.py, test_acceptor.py)
prove the same path over real connections.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from imds.creds.rotation import Rotator
from imds.creds.sources.local import LocalSource
from imds.ec2 import wire as p
from imds.ec2.answer import Rules
from imds.ec2.guard import Guard
from imds.ec2.tokens import TokenSigner
from imds.ec2.tree import Directory, leaf
from imds.http.aioserver import Limits
from imds.http.app import State
from imds.http.fastpath import FastPath, Wire
from tests.conftest import make_config

CLIENT = "10.0.0.7"


class RecordingSocket:
    """The socket options a connection set: an IPv4 socket that is only a record."""

    family = socket.AF_INET

    def __init__(self) -> None:
        self.options: list[tuple[int, int, int]] = []

    def setsockopt(self, level: int, name: int, value: int) -> None:
        self.options.append((level, name, value))


class MemoryTransport:
    """The bytes a connection wrote and whether it closed: a transport with no network."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.socket = RecordingSocket()

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self.socket
        return (CLIENT, 40000) if name == "peername" else default

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


@dataclass
class MemoryOwner:
    """The server side a fast-path connection reports to (imds.http.fastpath.Owner)."""

    loop: asyncio.AbstractEventLoop
    wire: Wire
    limits: Limits = field(default_factory=Limits)
    handed: list[bytes] = field(default_factory=list)

    def track(self, connection: FastPath) -> None: ...

    def untrack(self, connection: FastPath) -> None: ...

    def hand_over(self, fast: FastPath, transport: asyncio.Transport, data: bytes) -> None:
        self.handed.append(data)


@dataclass(frozen=True)
class Outcome:
    """What one connection did with what it was sent."""

    written: bytes
    closed: bool
    # What aiohttp was given: the bytes handed over, then whatever came after them.
    handed: tuple[bytes, ...]


_DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")
# A token's nonce is new each time; its length and alphabet are what is compared.
_TOKEN = re.compile(rb"(Content-Length: 56\r\n.*?\r\n\r\n)[A-Za-z0-9_=-]{56}", re.S)


@pytest.fixture(scope="module")
def wire() -> Iterator[Wire]:
    clock = 1_800_000_000.0
    tree = Directory({"latest": Directory({"meta-data": Directory({
        "ami-id": leaf("ami-0123456789abcdef0"),
        "iam": Directory({"security-credentials": Directory({"app": leaf('{"Code":1}')})}),
    })}, mark_directories=False)}, mark_directories=False)
    rules = Rules(tree=tree, signer=TokenSigner(lambda: clock, key=b"k" * 32),
                  clock=lambda: clock, guard=Guard.of())
    source = LocalSource("app", "123456789012", 3600, lambda: clock)
    state = State(config=make_config(), rules=rules,
                  rotator=Rotator(source, refresh_ahead=300, clock=lambda: clock),
                  common_headers={"Server": p.SERVER_NAME, "Accept-Ranges": "none"})
    yield Wire(state, max_headers=64)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def connect(loop: asyncio.AbstractEventLoop,
            wire: Wire) -> tuple[MemoryOwner, FastPath, MemoryTransport]:
    """A new fast-path connection on an in-memory transport."""
    owner = MemoryOwner(loop, wire)
    connection = FastPath(owner, wire)
    transport = MemoryTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    return owner, connection, transport


def feed(loop: asyncio.AbstractEventLoop, wire: Wire, pieces: list[bytes]) -> Outcome:
    """Send `pieces` one after another on a new connection; what came of them."""
    wire.kept.clear()  # a kept answer is the same bytes; start each run alike anyway
    owner, connection, transport = connect(loop, wire)
    # Once handed over, the connection's later bytes go to aiohttp's protocol directly.
    to_aiohttp = bytearray()
    for piece in pieces:
        if owner.handed:
            to_aiohttp += piece
        elif not transport.closed:
            connection.data_received(piece)
    handed = (b"".join(owner.handed) + bytes(to_aiohttp),) if owner.handed else ()
    written = _DATE.sub(b"\r\nDate: -\r\n", bytes(transport.written))
    return Outcome(_TOKEN.sub(rb"\1<token>", written), transport.closed, handed)


def requests(wire: Wire) -> list[tuple[str, bytes]]:
    token = wire.state.rules.signer.issue(21600, CLIENT)
    get = ("GET {} HTTP/1.1\r\nHost: 169.254.169.254\r\n"
           f"X-aws-ec2-metadata-token: {token}\r\nUser-Agent: Boto3/1.35\r\n\r\n")
    return [
        ("token-put", b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n"
                      b"X-aws-ec2-metadata-token-ttl-seconds: 21600\r\n"
                      b"Content-Length: 0\r\n\r\n"),
        ("role-list", get.format("/latest/meta-data/iam/security-credentials/").encode()),
        ("role-document",
         get.format("/latest/meta-data/iam/security-credentials/app").encode()),
        ("unknown-path", get.format("/latest/meta-data/nope").encode()),
        ("no-token", b"GET /latest/meta-data/ami-id HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"),
        ("keep-alive", get.format("/latest/meta-data/ami-id").replace(
            "\r\n\r\n", "\r\nConnection: keep-alive\r\n\r\n").encode()),
        # Handed to aiohttp whole, however they arrive.
        ("expect-continue", b"PUT /latest/api/token HTTP/1.1\r\nHost: x\r\n"
                            b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\n"),
        ("chunked", b"PUT /latest/api/token HTTP/1.1\r\nHost: x\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("with-a-body", b"PUT /latest/api/token HTTP/1.1\r\nHost: x\r\n"
                        b"Content-Length: 2\r\n\r\nab"),
        ("percent-encoded", get.format("/latest/meta-data/ami%2Did").encode()),
        ("http-1.0", b"GET /latest/meta-data/ami-id HTTP/1.0\r\n\r\n"),
        ("repeated-header", b"PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nHost: y\r\n"
                            b"X-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n"),
    ]


# Not here: two pipelined requests. Sent together they go to aiohttp; cut between them, the
# first is answered and the connection closes [N-04], and either is right.


def splits(request: bytes) -> Iterator[list[bytes]]:
    for at in range(1, len(request)):
        yield [request[:at], request[at:]]


class TestEverySplit:
    def test_the_corpus_covers_both_outcomes(self, loop: asyncio.AbstractEventLoop,
                                             wire: Wire) -> None:
        """Some requests are answered here and some handed over: both sides are tested."""
        outcomes = [feed(loop, wire, [raw]) for _, raw in requests(wire)]
        assert any(o.written and not o.handed for o in outcomes)
        assert any(o.handed and not o.written for o in outcomes)

    def test_a_request_split_anywhere_gets_the_same_outcome(
        self, loop: asyncio.AbstractEventLoop, wire: Wire
    ) -> None:
        """Two pieces, cut at every byte: the same answer, or the same bytes handed over."""
        for name, raw in requests(wire):
            whole = feed(loop, wire, [raw])
            for pieces in splits(raw):
                assert whole == feed(loop, wire, pieces), (name, len(pieces[0]))

    def test_a_request_a_byte_at_a_time_gets_the_same_outcome(
        self, loop: asyncio.AbstractEventLoop, wire: Wire
    ) -> None:
        """A trickling client is answered as if it had sent the request at once."""
        for name, raw in requests(wire):
            whole = feed(loop, wire, [raw])
            assert whole == feed(loop, wire, [raw[i:i + 1] for i in range(len(raw))]), name

    def test_whatever_is_handed_over_is_the_whole_request(
        self, loop: asyncio.AbstractEventLoop, wire: Wire
    ) -> None:
        """aiohttp gets every byte of the request, none lost and none twice."""
        for name, raw in requests(wire):
            outcome = feed(loop, wire, [raw])
            if outcome.handed:
                assert (raw,) == outcome.handed, name

    def test_an_answered_request_gets_ec2s_status(self, loop: asyncio.AbstractEventLoop,
                                                  wire: Wire) -> None:
        """The SDK's three requests, answered on the fast path, status for status."""
        statuses = {name: feed(loop, wire, [raw]).written.split(b"\r\n", 1)[0]
                    for name, raw in requests(wire)}
        assert b"HTTP/1.1 200 OK" == statuses["token-put"]
        assert b"HTTP/1.1 200 OK" == statuses["role-list"]
        assert b"HTTP/1.1 200 OK" == statuses["role-document"]
        assert b"HTTP/1.1 404 Not Found" == statuses["unknown-path"]
        assert b"HTTP/1.1 401 Unauthorized" == statuses["no-token"]


class TestHopLimit:
    def test_the_token_leaves_with_the_hop_limit_and_the_connection_closes(
        self, loop: asyncio.AbstractEventLoop, wire: Wire
    ) -> None:
        """[N-05] the token answer's socket gets IP_TTL 1, whatever closes the connection."""
        _, connection, transport = connect(loop, wire)
        connection.data_received(requests(wire)[0][1])
        assert transport.written.startswith(b"HTTP/1.1 200 OK")
        assert [(socket.IPPROTO_IP, socket.IP_TTL, 1)] == transport.socket.options
        assert transport.closed

    def test_other_answers_leave_the_socket_as_it_is(
        self, loop: asyncio.AbstractEventLoop, wire: Wire
    ) -> None:
        """Only the token answer is limited: metadata answers may cross any number of hops."""
        _, connection, transport = connect(loop, wire)
        connection.data_received(requests(wire)[1][1])
        assert transport.written.startswith(b"HTTP/1.1 200 OK")
        assert [] == transport.socket.options
