"""
The fast path's request reader, in memory: every request split at every byte gets the
same answer as the request in one piece, h11-style.

A TCP stream may cut a request anywhere, and a slow or hostile client may send it a byte at
a time. `FastPath.data_received` must come to the same decision whatever the cuts: answer
the same bytes, or hand exactly the same bytes to aiohttp. These tests feed a `FastPath`
through an in-memory transport; the socket tests (test_fastpath.py, test_acceptor.py)
prove the same path over real connections. The corpus has the container credential
requests too (ECS [K-01] [K-02], EKS Pod Identity [K-06]), whose tokens are long.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from imds.containers.ecs import EcsEndpoint
from imds.containers.endpoint import ContainerEndpoints
from imds.containers.podidentity import Cluster, PodIdentityEndpoint
from imds.containers.satoken import Verifier, load_or_create_key, mint
from imds.creds.pool import RoleKey, RotatorPool
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
CLOCK = 1_800_000_000.0
# The ECS full-URI flow's token [K-02] and the task serving the role `app`.
CONTAINER_TOKEN = "splits-container-token-0123456789"
TASK = "task-1"


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
def issuer(tmp_path_factory: pytest.TempPathFactory) -> rsa.RSAPrivateKey:
    """The key the pods' service account tokens are signed with."""
    return load_or_create_key(str(tmp_path_factory.mktemp("issuer")))


def containers(rotator: Rotator, issuer: rsa.RSAPrivateKey) -> ContainerEndpoints:
    """Both container endpoints, serving the one role `app` (task TASK, every pod)."""
    pool = RotatorPool(lambda key: rotator)
    pool.add(RoleKey("app"), rotator)
    ecs = EcsEndpoint(CONTAINER_TOKEN, pool, lambda: CLOCK)
    asyncio.run(ecs.assign(TASK, "app"))
    pods = PodIdentityEndpoint(
        verifier=Verifier.of_key(issuer), associations=None, own_role="app", pool=pool,
        account_of=lambda key: "123456789012",
        cluster=Cluster("c", "arn:aws:eks:us-east-1:123456789012:cluster/c"),
        hosts=frozenset({"127.0.0.1"}), any_address=False, rate=0, clock=lambda: CLOCK)
    return ContainerEndpoints(ecs, pods)


@pytest.fixture(scope="module")
def wire(issuer: rsa.RSAPrivateKey) -> Iterator[Wire]:
    clock = CLOCK
    tree = Directory({"latest": Directory({"meta-data": Directory({
        "ami-id": leaf("ami-0123456789abcdef0"),
        "iam": Directory({"security-credentials": Directory({"app": leaf('{"Code":1}')})}),
    })}, mark_directories=False)}, mark_directories=False)
    source = LocalSource("app", "123456789012", 3600, lambda: clock)
    rotator = Rotator(source, refresh_ahead=300, clock=lambda: clock)
    asyncio.run(rotator.prime())
    rules = Rules(tree=tree, signer=TokenSigner(lambda: clock, key=b"k" * 32),
                  clock=lambda: clock, guard=Guard.of(),
                  containers=containers(rotator, issuer))
    state = State(config=make_config(), rules=rules, rotator=rotator,
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


def container_get(path: str, host: str, authorization: str | None = None) -> bytes:
    auth = "" if authorization is None else f"Authorization: {authorization}\r\n"
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}"
            "User-Agent: Boto3/1.35\r\n\r\n").encode()


def requests(wire: Wire, issuer: rsa.RSAPrivateKey) -> list[tuple[str, bytes]]:
    token = wire.state.rules.signer.issue(21600, CLIENT)
    get = ("GET {} HTTP/1.1\r\nHost: 169.254.169.254\r\n"
           f"X-aws-ec2-metadata-token: {token}\r\nUser-Agent: Boto3/1.35\r\n\r\n")
    pod = mint(issuer, namespace="default", service_account="app", now=CLOCK)
    expired = mint(issuer, namespace="default", service_account="app", now=CLOCK - 7200,
                   lifetime=600)
    ecs = f"/v2/credentials/{TASK}"
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
        ("ecs-full-uri", container_get(ecs, "127.0.0.1:1338", CONTAINER_TOKEN)),
        ("ecs-relative", container_get(ecs, "169.254.170.2")),
        ("ecs-wrong-token", container_get(ecs, "127.0.0.1:1338", CONTAINER_TOKEN + "x")),
        ("ecs-unknown-id", container_get("/v2/credentials/nope", "127.0.0.1",
                                         CONTAINER_TOKEN)),
        ("pod", container_get("/v1/credentials", "169.254.170.23", pod)),
        ("pod-expired", container_get("/v1/credentials", "169.254.170.23", expired)),
        ("pod-other-host", container_get("/v1/credentials", "10.1.2.3", pod)),
        # Handed to aiohttp: a query [K-01], a folded token, a token cut by a bare CR.
        ("ecs-v1-query", container_get(f"/v1/credentials?id={TASK}", "127.0.0.1",
                                       CONTAINER_TOKEN)),
        ("pod-folded-token", container_get("/v1/credentials", "169.254.170.23",
                                           pod[:40] + "\r\n " + pod[40:])),
        ("pod-cr-in-token", container_get("/v1/credentials", "169.254.170.23",
                                          pod[:40] + "\r" + pod[40:])),
    ]


# Not here: two pipelined requests. Sent together they go to aiohttp; cut between them, the
# first is answered and the connection closes [N-04], and either is right.


def splits(request: bytes) -> Iterator[list[bytes]]:
    for at in range(1, len(request)):
        yield [request[:at], request[at:]]


class TestEverySplit:
    def test_the_corpus_covers_both_outcomes(self, loop: asyncio.AbstractEventLoop,
                                             wire: Wire, issuer: rsa.RSAPrivateKey) -> None:
        """Some requests are answered here and some handed over: both sides are tested."""
        outcomes = [feed(loop, wire, [raw]) for _, raw in requests(wire, issuer)]
        assert any(o.written and not o.handed for o in outcomes)
        assert any(o.handed and not o.written for o in outcomes)

    def test_a_request_split_anywhere_gets_the_same_outcome(
        self, loop: asyncio.AbstractEventLoop, wire: Wire, issuer: rsa.RSAPrivateKey
    ) -> None:
        """Two pieces, cut at every byte: the same answer, or the same bytes handed over."""
        for name, raw in requests(wire, issuer):
            whole = feed(loop, wire, [raw])
            for pieces in splits(raw):
                assert whole == feed(loop, wire, pieces), (name, len(pieces[0]))

    def test_a_request_a_byte_at_a_time_gets_the_same_outcome(
        self, loop: asyncio.AbstractEventLoop, wire: Wire, issuer: rsa.RSAPrivateKey
    ) -> None:
        """A trickling client is answered as if it had sent the request at once."""
        for name, raw in requests(wire, issuer):
            whole = feed(loop, wire, [raw])
            assert whole == feed(loop, wire, [raw[i:i + 1] for i in range(len(raw))]), name

    def test_whatever_is_handed_over_is_the_whole_request(
        self, loop: asyncio.AbstractEventLoop, wire: Wire, issuer: rsa.RSAPrivateKey
    ) -> None:
        """aiohttp gets every byte of the request, none lost and none twice."""
        for name, raw in requests(wire, issuer):
            outcome = feed(loop, wire, [raw])
            if outcome.handed:
                assert (raw,) == outcome.handed, name

    def test_an_answered_request_gets_ec2s_status(self, loop: asyncio.AbstractEventLoop,
                                                  wire: Wire, issuer: rsa.RSAPrivateKey,
                                                  ) -> None:
        """The SDK's three requests, answered on the fast path, status for status."""
        statuses = {name: feed(loop, wire, [raw]).written.split(b"\r\n", 1)[0]
                    for name, raw in requests(wire, issuer)}
        assert b"HTTP/1.1 200 OK" == statuses["token-put"]
        assert b"HTTP/1.1 200 OK" == statuses["role-list"]
        assert b"HTTP/1.1 200 OK" == statuses["role-document"]
        assert b"HTTP/1.1 404 Not Found" == statuses["unknown-path"]
        assert b"HTTP/1.1 401 Unauthorized" == statuses["no-token"]
        # The container endpoints' [K-05] [K-08], answered here too.
        assert b"HTTP/1.1 200 OK" == statuses["ecs-full-uri"]
        assert b"HTTP/1.1 200 OK" == statuses["ecs-relative"]
        assert b"HTTP/1.1 403 Forbidden" == statuses["ecs-wrong-token"]
        assert b"HTTP/1.1 400 Bad Request" == statuses["ecs-unknown-id"]
        assert b"HTTP/1.1 200 OK" == statuses["pod"]
        assert b"HTTP/1.1 400 Bad Request" == statuses["pod-expired"]
        assert b"HTTP/1.1 403 Forbidden" == statuses["pod-other-host"]
        for handed in ("ecs-v1-query", "pod-folded-token", "pod-cr-in-token"):
            assert b"" == statuses[handed], handed


class TestHopLimit:
    def test_the_token_leaves_with_the_hop_limit_and_the_connection_closes(
        self, loop: asyncio.AbstractEventLoop, wire: Wire, issuer: rsa.RSAPrivateKey
    ) -> None:
        """[N-05] the token answer's socket gets IP_TTL 1, whatever closes the connection."""
        _, connection, transport = connect(loop, wire)
        connection.data_received(requests(wire, issuer)[0][1])
        assert transport.written.startswith(b"HTTP/1.1 200 OK")
        assert [(socket.IPPROTO_IP, socket.IP_TTL, 1)] == transport.socket.options
        assert transport.closed

    def test_other_answers_leave_the_socket_as_it_is(
        self, loop: asyncio.AbstractEventLoop, wire: Wire, issuer: rsa.RSAPrivateKey
    ) -> None:
        """Only the token answer is limited: metadata answers may cross any number of hops."""
        _, connection, transport = connect(loop, wire)
        connection.data_received(requests(wire, issuer)[1][1])
        assert transport.written.startswith(b"HTTP/1.1 200 OK")
        assert [] == transport.socket.options
