"""
The fast path and aiohttp give the same answer to the same bytes.

Which path a request takes depends on its shape and on the faults injected at the time
(imds.http.fastpath), so where the two differ, the same client works and then stops working.
A default server and a `--fast-path false` one are sent the same raw requests over real
sockets, and what comes back must be the same: status line, headers, body, and whether
the server ends the connection or leaves it open. The corpus is a table of SDK-like
requests crossed with the ways a request can be odd, a few raw oddities, and requests
hypothesis builds or mutates. The table has the container credential requests too (ECS's
full-URI and relative flows, Pod Identity [K-01] [K-02] [K-06]), with right, wrong,
missing, expired and garbage tokens and the Hosts they come with. It goes to two pairs of
servers: the default (EC2 closes every connection [N-04]) and one keeping connections alive
(answers without `Connection: close`, hand-overs between requests, pipelining).

Both servers of a pair run on one frozen clock, so what the clock decides (the remaining
TTL a token-bearing answer carries [A-07], credential timestamps) is the same on both;
what is masked is only the wall-clock `Date` and `Last-Modified` and the random bytes of
tokens and credentials. No difference is allowed for.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imds.containers.satoken import load_or_create_key, mint
from imds.server import Running, ServerThread
from tests.conftest import make_config
from tests.http.test_fuzz import HEADER_NAMES, HEADER_VALUES, METHODS, PATHS

ROLE = "imds-local-role"
CREDENTIALS = f"/latest/meta-data/iam/security-credentials/{ROLE}"
HOST = "Host: 169.254.169.254"
TTL = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN = "X-aws-ec2-metadata-token: {token}"
# The container endpoints' [K-02]: the servers' full-URI token, a task besides the default
# one (`{task}`, the server's own role), and Pod Identity's Host.
CONTAINER_TOKEN = "parity-container-token-0123456789"
TASK = "web"
POD_HOST = "Host: 169.254.170.23"

# Seconds without a byte after which a connection counts as left open: every answer
# comes at once, so this only has to outlast a busy machine.
QUIET = 1.5
# Connections in flight at once while the table is sent (most of the kept-alive pair's
# wait out QUIET, so the table's time is about their count over this, times QUIET).
PARALLEL = 200
# Between the pieces of a request sent in pieces.
PAUSE = 0.05


@dataclass(frozen=True)
class Case:
    """
    Raw bytes to send, in pieces a pause apart, and whether to half-close after. `{name}`
    in them stands for a server's value (`Pair.values`): `{token}` an IMDS token of its
    own, `{port}` its port, `{task}`, `{ecs}`, `{pod}`... the container endpoints'.
    """

    id: str
    pieces: tuple[bytes, ...]
    half_close: bool = False

    def filled(self, values: dict[str, str]) -> Case:
        pieces = []
        for piece in self.pieces:
            for name, value in values.items():
                piece = piece.replace(b"{%s}" % name.encode(), value.encode())
            pieces.append(piece)
        return replace(self, pieces=tuple(pieces))


@dataclass(frozen=True)
class Seen:
    """What came back on one connection, masked, and how the connection ended."""

    answer: bytes
    # "closed" by the server (a FIN or a reset: to a client both end the exchange), or
    # left "open".
    ending: str


# What both servers of a pair saw, by pair and case id.
Answers = dict[tuple[str, str], tuple[Seen, Seen]]


@dataclass
class Pair:
    fast: Running
    aiohttp: Running
    # What `{name}` stands for in a case sent to each server, by its URL (Case.filled).
    values: dict[str, dict[str, str]] = field(default_factory=dict)


# ---------------------------------------------------------------------- the wire


def port_of(running: Running) -> int:
    return int(running.url.rsplit(":", 1)[1])


async def converse(port: int, case: Case) -> tuple[bytes, str]:
    """Send `case` on a new connection; everything read, and how the connection ended."""
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        # A plain socket, not a StreamReader: after a reset that one raises at once and
        # drops what it had read, while the answer came before the reset.
        for n, piece in enumerate(case.pieces):
            if n:
                await asyncio.sleep(PAUSE)
            with contextlib.suppress(ConnectionError):
                await loop.sock_sendall(sock, piece)
        if case.half_close:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        data = bytearray()
        while True:
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), QUIET)
            except TimeoutError:
                return bytes(data), "open"
            except ConnectionError:
                return bytes(data), "closed"
            if not chunk:
                return bytes(data), "closed"
            data += chunk


# What rightly differs between two servers: wall-clock dates, and random bytes.
_MASKS = [
    (re.compile(rb"\r\nDate: [^\r]*"), rb"\r\nDate: (date)"),
    (re.compile(rb"\r\nLast-Modified: [^\r]*"), rb"\r\nLast-Modified: (started)"),
    # The identity document's launch time: each server's own start [D-05], and the two
    # of a pair may start in different seconds.
    (re.compile(rb'"pendingTime" : "[^"]*"'), rb'"pendingTime" : "(started)"'),
    # A token [T-07] (imds.ec2.tokens: 56 characters, `AQAEA` first).
    (re.compile(rb"AQAEA[A-Za-z0-9_-]{49}=="), rb"(token)"),
    (re.compile(rb'"(AccessKeyId|SecretAccessKey|Token)" : "[^"]*"'), rb'"\1" : "(random)"'),
    # The container endpoints' documents: compact JSON [K-04] [K-07].
    (re.compile(rb'"(AccessKeyId|SecretAccessKey|Token)":"[^"]*"'), rb'"\1":"(random)"'),
]


def mask(answer: bytes) -> bytes:
    for pattern, replacement in _MASKS:
        answer = pattern.sub(replacement, answer)
    return answer


async def both(pair: Pair, case: Case, limit: asyncio.Semaphore) -> tuple[Seen, Seen]:
    """`case` sent to both servers of `pair` at once, each with a token of its own."""

    async def one(running: Running) -> Seen:
        async with limit:
            data, ending = await converse(port_of(running),
                                          case.filled(pair.values[running.url]))
        return Seen(mask(data), ending)

    fast, slow = await asyncio.gather(one(pair.fast), one(pair.aiohttp))
    return fast, slow


async def issue_token(running: Running) -> str:
    put = (f"PUT /latest/api/token HTTP/1.1\r\n{HOST}\r\n{TTL}: 21600\r\n"
           "Connection: close\r\n\r\n").encode()
    data, _ = await converse(port_of(running), Case("token", (put,)))
    assert data.startswith(b"HTTP/1.1 200 "), data
    return data.rpartition(b"\r\n\r\n")[2].decode()


# ---------------------------------------------------------------------- the corpus

# Requests an SDK or a person sends (spec §12), by name; `{token}` is a valid token.
BASES: dict[str, list[str]] = {
    "token-put": ["PUT /latest/api/token HTTP/1.1", HOST, f"{TTL}: 21600"],
    "token-put-go": ["PUT /latest/api/token HTTP/1.1", HOST, f"{TTL.lower()}: 300",
                     "User-Agent: aws-sdk-go-v2", "Accept-Encoding: gzip"],
    "token-ttl-0": ["PUT /latest/api/token HTTP/1.1", HOST, f"{TTL}: 0"],
    "token-ttl-big": ["PUT /latest/api/token HTTP/1.1", HOST, f"{TTL}: 21601"],
    "token-ttl-text": ["PUT /latest/api/token HTTP/1.1", HOST, f"{TTL}: 6h"],
    "token-no-ttl": ["PUT /latest/api/token HTTP/1.1", HOST],
    "token-forwarded": ["PUT /latest/api/token HTTP/1.1", HOST, f"{TTL}: 60",
                        "X-Forwarded-For: 10.0.0.1"],
    "token-get": ["GET /latest/api/token HTTP/1.1", HOST],
    "token-options": ["OPTIONS /latest/api/token HTTP/1.1", HOST],
    "token-slash": ["PUT /latest/api/token/ HTTP/1.1", HOST, f"{TTL}: 60"],
    "token-versioned": ["PUT /2021-03-23/api/token HTTP/1.1", HOST, f"{TTL}: 60"],
    "role-list": ["GET /latest/meta-data/iam/security-credentials/ HTTP/1.1", HOST, TOKEN],
    "credentials": [f"GET {CREDENTIALS} HTTP/1.1", HOST, TOKEN,
                    "User-Agent: Botocore/1.43.67", "Accept: */*"],
    "credentials-no-token": [f"GET {CREDENTIALS} HTTP/1.1", HOST],
    "credentials-bad-token": [f"GET {CREDENTIALS} HTTP/1.1", HOST,
                              "X-aws-ec2-metadata-token: " + "A" * 56],
    "credentials-forwarded": [f"GET {CREDENTIALS} HTTP/1.1", HOST, TOKEN,
                              "X-Forwarded-For: 10.0.0.1"],
    "head": ["HEAD /latest/meta-data/ami-id HTTP/1.1", HOST, TOKEN],
    "listing": ["GET /latest/meta-data/ HTTP/1.1", HOST, TOKEN],
    "root": ["GET / HTTP/1.1", HOST, TOKEN],
    "directory-no-slash": ["GET /latest/meta-data/iam HTTP/1.1", HOST, TOKEN],
    "leaf-slash": ["GET /latest/meta-data/placement/availability-zone/ HTTP/1.1", HOST,
                   TOKEN],
    "versioned": ["GET /2009-04-04/meta-data/instance-id HTTP/1.1", HOST, TOKEN],
    "identity": ["GET /latest/dynamic/instance-identity/document HTTP/1.1", HOST, TOKEN],
    "user-data": ["GET /latest/user-data HTTP/1.1", HOST, TOKEN],
    "unknown": ["GET /latest/meta-data/nothing-here HTTP/1.1", HOST, TOKEN],
    "post": ["POST /latest/meta-data/ HTTP/1.1", HOST, TOKEN],
    "delete": ["DELETE /latest/api/token HTTP/1.1", HOST],
    # ECS task credentials: the full-URI flow (the token in Authorization, Host the
    # loopback URI's) and the relative one (Host ECS's address, no token) [K-01] [K-02].
    "ecs": ["GET /v2/credentials/{task} HTTP/1.1", "Host: 127.0.0.1:{port}",
            "Authorization: {ecs}", "User-Agent: Botocore/1.43.67", "Accept: */*"],
    "ecs-relative": [f"GET /v2/credentials/{TASK} HTTP/1.1", "Host: 169.254.170.2"],
    "ecs-no-token": ["GET /v2/credentials/{task} HTTP/1.1", "Host: 127.0.0.1:{port}"],
    "ecs-wrong-token": ["GET /v2/credentials/{task} HTTP/1.1", "Host: 127.0.0.1:{port}",
                        "Authorization: {ecs}x"],
    "ecs-unknown-id": ["GET /v2/credentials/no-such-task HTTP/1.1", "Host: 127.0.0.1:{port}",
                       "Authorization: {ecs}"],
    "ecs-no-id": ["GET /v2/credentials/ HTTP/1.1", "Host: 127.0.0.1:{port}",
                  "Authorization: {ecs}"],
    "ecs-v1": ["GET /v1/credentials?id={task} HTTP/1.1", "Host: 127.0.0.1:{port}",
               "Authorization: {ecs}"],
    # EKS Pod Identity: a service account JWT, at the agent's address or imds's own.
    "pod": ["GET /v1/credentials HTTP/1.1", POD_HOST, "Authorization: {pod}",
            "User-Agent: aws-sdk-go-v2/1.30"],
    "pod-loopback": ["GET /v1/credentials HTTP/1.1", "Host: 127.0.0.1:{port}",
                     "Authorization: {pod}"],
    "pod-v6": ["GET /v1/credentials HTTP/1.1", "Host: [fd00:ec2::23]", "Authorization: {pod}"],
    "pod-expired": ["GET /v1/credentials HTTP/1.1", POD_HOST, "Authorization: {pod-expired}"],
    "pod-garbage": ["GET /v1/credentials HTTP/1.1", POD_HOST, "Authorization: not.a-jwt"],
    "pod-no-token": ["GET /v1/credentials HTTP/1.1", POD_HOST],
    "pod-other-host": ["GET /v1/credentials HTTP/1.1", "Host: 10.1.2.3",
                       "Authorization: {pod}"],
    "pod-put": ["PUT /v1/credentials HTTP/1.1", POD_HOST, "Authorization: {pod}"],
}

Edit = Callable[[list[str]], list[str]]


def _unchanged(lines: list[str]) -> list[str]:
    return lines


def _host(value: str | None) -> Edit:
    def edit(lines: list[str]) -> list[str]:
        rest = [line for line in lines[1:] if not line.startswith("Host:")]
        return [lines[0], *([f"Host: {value}"] if value is not None else []), *rest]
    return edit


def _request_line(change: Callable[[str, str, str], str]) -> Edit:
    def edit(lines: list[str]) -> list[str]:
        method, target, version = lines[0].split(" ")
        return [change(method, target, version), *lines[1:]]
    return edit


def _target(change: Callable[[str], str]) -> Edit:
    return _request_line(lambda m, t, v: f"{m} {change(t)} {v}")


def _version(version: str) -> Edit:
    return _request_line(lambda m, t, v: f"{m} {t} {version}")


def _upper_names(lines: list[str]) -> list[str]:
    return [lines[0], *(f"{name.upper()}:{value}"
                        for name, _, value in (f.partition(":") for f in lines[1:]))]


def _add(*fields: str) -> Edit:
    return lambda lines: [*lines, *fields]


def _both(first: Edit, second: Edit) -> Edit:
    return lambda lines: second(first(lines))


@dataclass(frozen=True)
class Variant:
    """A way to make a request odd: its lines changed, then how they go on the wire."""

    id: str
    edit: Edit = _unchanged
    # Line ending of each line, and of the blank line ending the head.
    eol: bytes = b"\r\n"
    end: bytes = b"\r\n"
    # After the head: a body, garbage, or (None) the same request again.
    tail: bytes | None = b""
    half_close: bool = False
    pieces: int = 1


VARIANTS = [
    Variant("as-sent"),
    Variant("half-close", half_close=True),
    Variant("in-pieces", pieces=3),
    # (a) Bare LF line ends: aiohttp answers 400 at once; so must the fast path.
    Variant("bare-lf", eol=b"\n", end=b"\n"),
    Variant("bare-lf-half-close", eol=b"\n", end=b"\n", half_close=True),
    Variant("bare-lf-last", end=b"\n"),
    Variant("bare-lf-in-pieces", eol=b"\n", end=b"\n", pieces=3),
    Variant("bare-cr", eol=b"\r", end=b"\r"),
    # (b) HTTP/1.1 needs a Host (RFC 9112 §3.2); HTTP/1.0 does not.
    Variant("no-host", _host(None)),
    Variant("no-host-half-close", _host(None), half_close=True),
    Variant("empty-host", _host("")),
    Variant("host-with-port", _host("169.254.169.254:80")),
    Variant("host-localhost", _host("localhost:1338")),
    Variant("host-rebinding", _host("attacker.example")),
    Variant("two-hosts", _add(HOST)),
    Variant("http-1.0", _version("HTTP/1.0")),
    Variant("http-1.0-no-host", _both(_version("HTTP/1.0"), _host(None))),
    Variant("http-0.9", _request_line(lambda m, t, v: f"{m} {t}")),
    Variant("http-2.0", _version("HTTP/2.0")),
    Variant("http-1.2", _version("HTTP/1.2")),
    Variant("http-lower", _version("http/1.1")),
    Variant("version-trailing-space", _version("HTTP/1.1 ")),
    Variant("repeated-last-field", lambda lines: [*lines, lines[-1]]),
    Variant("folded", _add("X-Folded: a", " b")),
    Variant("nul-in-value", _add("X-Nul: a\x00b")),
    Variant("control-in-value", _add("X-Ctl: a\x01b")),
    Variant("del-in-value", _add("X-Del: a\x7fb")),
    Variant("obs-text-value", _add("X-Text: caf\xe9")),
    Variant("tab-and-spaces", _add("X-Spaces:\t a b \t")),
    Variant("no-space-after-colon", _add("X-Tight:a")),
    Variant("space-before-colon", _add("X-Space : a")),
    Variant("empty-name", _add(": a")),
    Variant("no-colon", _add("X-No-Colon")),
    Variant("upper-names", _upper_names),
    Variant("long-value", _add("X-Long: " + "a" * 9000)),
    Variant("many-fields", _add(*(f"X-Field-{n}: {n}" for n in range(70)))),
    Variant("absolute-form", _target(lambda t: "http://169.254.169.254" + t)),
    Variant("percent-encoded", _target(lambda t: t.replace("a", "%61", 1))),
    Variant("percent-slash", _target(lambda t: t.replace("/", "%2F", 2))),
    Variant("query", _target(lambda t: t + "?x=1")),
    Variant("fragment", _target(lambda t: t + "#frag")),
    Variant("dot-segment", _target(lambda t: "/latest/../" + t.lstrip("/"))),
    Variant("double-slash", _target(lambda t: "/" + t)),
    Variant("space-in-target", _target(lambda t: t + " x")),
    Variant("lower-method", _request_line(lambda m, t, v: f"{m.lower()} {t} {v}")),
    Variant("double-space", _request_line(lambda m, t, v: f"{m}  {t} {v}")),
    Variant("expect", _add("Expect: 100-continue", "Content-Length: 5")),
    Variant("length-0", _add("Content-Length: 0")),
    Variant("length-00", _add("Content-Length: 00")),
    Variant("body", _add("Content-Length: 5"), tail=b"hello"),
    Variant("body-half-close", _add("Content-Length: 5"), tail=b"hello", half_close=True),
    Variant("short-body", _add("Content-Length: 5"), tail=b"he", half_close=True),
    Variant("bad-length", _add("Content-Length: five")),
    Variant("two-lengths", _add("Content-Length: 0", "Content-Length: 0")),
    Variant("chunked", _add("Transfer-Encoding: chunked"), tail=b"0\r\n\r\n"),
    Variant("chunked-and-length", _add("Transfer-Encoding: chunked", "Content-Length: 5"),
            tail=b"0\r\n\r\n"),
    Variant("connection-close", _add("Connection: close")),
    Variant("connection-keep-alive", _add("Connection: keep-alive")),
    Variant("connection-other", _add("Connection: TE")),
    Variant("upgrade-websocket", _add("Connection: Upgrade", "Upgrade: websocket")),
    Variant("upgrade-h2c", _add("Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c",
                                "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA")),
    Variant("te-trailers", _add("TE: trailers")),
    Variant("pipelined", tail=None),
    Variant("pipelined-half-close", tail=None, half_close=True),
    Variant("pipelined-in-pieces", tail=None, pieces=2),
    Variant("garbage-after", tail=b"\x00\xff garbage"),
    # A head never finished: both wait for the rest (or close, on a half-close).
    Variant("unterminated", end=b""),
    Variant("unterminated-half-close", end=b"", half_close=True),
    # One that can no longer become a request: aiohttp answers before the head ends.
    Variant("unterminated-bad-name", _add("Bad Name: x"), end=b""),
    Variant("unterminated-bad-name-in-pieces", _add("Bad Name: x"), end=b"", pieces=4),
]


def build(name: str, base: list[str], variant: Variant) -> Case:
    head = variant.eol.join(line.encode("latin-1") for line in variant.edit(base))
    raw = head + variant.eol + variant.end
    raw += raw if variant.tail is None else variant.tail
    step = -(-len(raw) // variant.pieces)
    pieces = tuple(raw[i:i + step] for i in range(0, len(raw), step))
    return Case(f"{name}/{variant.id}", pieces, variant.half_close)


# Requests that are no request at all, and odd targets.
RAW = [
    Case("tls-client-hello", (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(32),)),
    Case("h2-preface", (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",)),
    Case("http-0.9-simple", (b"GET /latest/meta-data/\r\n",)),
    Case("blank-lines-first", (f"\r\n\r\nGET /latest/meta-data/ HTTP/1.1\r\n{HOST}\r\n"
                               f"{TOKEN}\r\n\r\n".encode(),)),
    Case("spaces", (b"   \r\n\r\n",)),
    Case("only-blank-line", (b"\r\n\r\n",)),
    Case("asterisk", (f"OPTIONS * HTTP/1.1\r\n{HOST}\r\n\r\n".encode(),)),
    Case("connect", (f"CONNECT 169.254.169.254:80 HTTP/1.1\r\n{HOST}:80\r\n\r\n".encode(),)),
    Case("first-bytes-one-at-a-time", (
        *(bytes([b]) for b in b"GET /latest/"),
        f"meta-data/ HTTP/1.1\r\n{HOST}\r\n{TOKEN}\r\n\r\n".encode())),
]

TABLE = [build(name, base, variant)
         for (name, base), variant in itertools.product(BASES.items(), VARIANTS)] + RAW


# ---------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Pair]]:
    """A default server and a `--fast-path false` one, twice: closing every connection
    as EC2 does, and keeping them alive."""
    frozen = float(int(time.time()))
    # The session's state directory (conftest.clean_aws_env sets it per test, after a
    # module fixture runs), never the user's.
    state_dir = str(Path(tmp_path_factory.getbasetemp()) / "imds-state")
    threads: list[ServerThread] = []

    def run(**settings: str) -> Running:
        thread = ServerThread(make_config(state_dir=state_dir, container_token=CONTAINER_TOKEN,
                                          ecs_task=[f"{TASK}=web-role"], **settings),
                              clock=lambda: frozen)
        threads.append(thread)
        return thread.start()

    made = {
        "closing": Pair(run(), run(fast_path="false")),
        "kept-alive": Pair(run(connection_close="false"),
                           run(connection_close="false", fast_path="false")),
    }

    # The servers share the state directory, so its issuer key signs for them all; on
    # their frozen clock one token is valid, the other expired an hour ago.
    key = load_or_create_key(state_dir)
    pods = {"pod": mint(key, namespace="default", service_account="app",
                        pod_name="app-0", now=frozen),
            "pod-expired": mint(key, namespace="default", service_account="app",
                                now=frozen - 7200, lifetime=600)}

    async def tokens() -> None:
        for pair in made.values():
            for running in (pair.fast, pair.aiohttp):
                pair.values[running.url] = {
                    "token": await issue_token(running), "port": str(port_of(running)),
                    "task": running.ecs_task, "ecs": CONTAINER_TOKEN, **pods}

    try:
        asyncio.run(tokens())
        yield made
    finally:
        for thread in reversed(threads):
            thread.stop()


@pytest.fixture(scope="module")
def table_answers(pairs: dict[str, Pair]) -> Answers:
    """Every table case sent to both servers of both pairs, many connections at once."""

    async def run() -> Answers:
        limit = asyncio.Semaphore(PARALLEL)
        keys = [(name, case) for name in pairs for case in TABLE]
        seen = await asyncio.gather(*(both(pairs[name], case, limit) for name, case in keys))
        return {(name, case.id): answers
                for (name, case), answers in zip(keys, seen, strict=True)}

    return asyncio.run(run())


# The table by variant (each across every base and both pairs), and the raw cases.
GROUPS = {variant.id: [c for c in TABLE if c.id.endswith(f"/{variant.id}")]
          for variant in VARIANTS} | {"raw": RAW}


class TestSameAnswerOnBothPaths:
    @pytest.mark.parametrize("group", list(GROUPS))
    def test_a_table_request_gets_the_same_answer(
        self, table_answers: Answers, group: str
    ) -> None:
        differences = {
            (pair, case.id): answers
            for pair in ("closing", "kept-alive") for case in GROUPS[group]
            if (answers := table_answers[(pair, case.id)])[0] != answers[1]
        }
        assert {} == differences

    def test_the_fast_path_answers_much_of_the_table(self, pairs: dict[str, Pair],
                                                     table_answers: Answers) -> None:
        """The agreement is not vacuous: the default server's fast path took part."""
        lab = pairs["closing"].fast.lab
        assert lab is not None
        assert lab.fast_answered + lab.fast_kept > 300


def first_lines(table_answers: Answers, pair: str, case: str,
                ) -> set[tuple[tuple[bytes, ...], str]]:
    """The status lines each server of `pair` sent for a table case, and how it ended."""
    return {(tuple(re.findall(rb"HTTP/1\.[01] \d\d\d [^\r]*", seen.answer)), seen.ending)
            for seen in table_answers[(pair, case)]}


class TestWhatBothPathsAnswer:
    """The three answers issue 13 found differing, as both paths now give them."""

    @pytest.mark.parametrize("case", ["credentials/bare-lf", "credentials/bare-lf-last",
                                      "credentials/bare-lf-in-pieces", "token-put/bare-cr"])
    def test_bare_line_ends_get_400_at_once(self, table_answers: Answers, case: str) -> None:
        """Answered within QUIET, not at the idle timeout: nobody waits 5 s."""
        assert {((b"HTTP/1.0 400 Bad Request",), "closed")} == first_lines(
            table_answers, "closing", case)

    def test_http_1_1_without_host_gets_400(self, table_answers: Answers) -> None:
        """RFC 9112 §3.2; every SDK sends Host."""
        assert {((b"HTTP/1.0 400 Bad Request",), "closed")} == first_lines(
            table_answers, "closing", "credentials/no-host")
        assert {((b"HTTP/1.0 200 OK",), "closed")} == first_lines(
            table_answers, "closing", "credentials/http-1.0-no-host")

    @pytest.mark.parametrize("pair, case, answers", [
        ("closing", "credentials/half-close", (b"HTTP/1.1 200 OK",)),
        ("kept-alive", "token-put/half-close", (b"HTTP/1.1 200 OK",)),
        ("kept-alive", "credentials/pipelined-half-close", (b"HTTP/1.1 200 OK",) * 2),
        ("kept-alive", "credentials/body-half-close", (b"HTTP/1.1 400 Bad Request",)),
    ])
    def test_a_client_that_half_closes_is_answered_then_closed(
        self, table_answers: Answers, pair: str, case: str, answers: tuple[bytes, ...]
    ) -> None:
        assert {(answers, "closed")} == first_lines(table_answers, pair, case)


class TestContainerRequestsOnBothPaths:
    """The container endpoints' answers, as both paths give them, and who answered."""

    @pytest.mark.parametrize("base, status", [
        ("ecs", b"200 OK"), ("ecs-relative", b"200 OK"), ("ecs-v1", b"200 OK"),
        ("ecs-no-token", b"401 Unauthorized"), ("ecs-wrong-token", b"403 Forbidden"),
        ("ecs-unknown-id", b"400 Bad Request"), ("ecs-no-id", b"400 Bad Request"),
        ("pod", b"200 OK"), ("pod-loopback", b"200 OK"), ("pod-v6", b"200 OK"),
        ("pod-expired", b"400 Bad Request"), ("pod-garbage", b"400 Bad Request"),
        ("pod-no-token", b"400 Bad Request"), ("pod-other-host", b"403 Forbidden"),
        ("pod-put", b"405 Method Not Allowed"),
    ])
    def test_each_gets_the_agents_status_and_no_5xx(
        self, table_answers: Answers, base: str, status: bytes
    ) -> None:
        """The agreement above is about real answers: [K-05] [K-08] and the 200s."""
        for pair in ("closing", "kept-alive"):
            assert {((b"HTTP/1.1 " + status,), "closed" if pair == "closing" else "open")} \
                == first_lines(table_answers, pair, f"{base}/as-sent"), pair
        for case in TABLE:
            if case.id.startswith(f"{base}/"):
                for pair in ("closing", "kept-alive"):
                    seen = table_answers[(pair, case.id)][0].answer
                    assert not re.search(rb"HTTP/1\.[01] 5\d\d", seen), (pair, case.id)

    @pytest.mark.parametrize("pair_name", ["closing", "kept-alive"])
    @pytest.mark.parametrize("base", ["ecs", "ecs-relative", "pod", "pod-loopback"])
    def test_the_fast_path_answers_and_keeps_them(self, pairs: dict[str, Pair],
                                                  pair_name: str, base: str) -> None:
        """
        An SDK's request three times over: on new connections (the accept loop answers
        each where it accepts it), or on one kept-alive connection, each after the answer
        to the one before (the accept loop answers the first, the fast-path protocol the
        others). The fast path answers every one and sends a kept answer again within the
        second, each answer aiohttp's byte for byte.
        """
        pair = pairs[pair_name]
        lab = pair.fast.lab
        assert lab is not None
        case = build(base, BASES[base], VARIANTS[0])

        async def run(running: Running) -> list[Seen]:
            request = case.filled(pair.values[running.url]).pieces[0]
            if pair_name == "closing":
                return [Seen(mask(data), ending) for data, ending in
                        [await converse(port_of(running), Case(case.id, (request,)))
                         for _ in range(3)]]
            return [await in_turn(port_of(running), request, 3)]

        before = (lab.fast_answered, lab.fast_kept, lab.handovers)
        fast = asyncio.run(run(pair.fast))
        answered, kept, handed = (lab.fast_answered - before[0], lab.fast_kept - before[1],
                                  lab.handovers - before[2])
        assert asyncio.run(run(pair.aiohttp)) == fast
        assert 3 == sum(seen.answer.count(b"HTTP/1.1 200 OK\r\n") for seen in fast)
        # One second boundary at most between three quick requests: one kept at least.
        assert (3, 0) == (answered + kept, handed)
        assert kept >= 1


async def in_turn(port: int, request: bytes, times: int) -> Seen:
    """
    `request` sent `times` on one connection, each once the answer to the one before has
    come whole (so none arrives pipelined, whatever the machine's load), then a half-close.
    """
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        data = bytearray()
        for sent in range(1, times + 1):
            await loop.sock_sendall(sock, request)
            while answers_in(bytes(data)) < sent:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), QUIET)
                if not chunk:
                    return Seen(mask(bytes(data)), "closed")
                data += chunk
        sock.shutdown(socket.SHUT_WR)
        try:
            rest = await asyncio.wait_for(loop.sock_recv(sock, 65536), QUIET)
        except TimeoutError:
            return Seen(mask(bytes(data)), "open")
        return Seen(mask(bytes(data + rest)), "closed" if not rest else "more")


def answers_in(data: bytes) -> int:
    """How many whole answers (head and Content-Length bytes of body) `data` holds."""
    count = at = 0
    while (end := data.find(b"\r\n\r\n", at)) >= 0:
        length = re.search(rb"\r\nContent-Length: (\d+)", data[at:end])
        at = end + 4 + (int(length[1]) if length else 0)
        if at > len(data):
            break
        count += 1
    return count


# ---------------------------------------------------------------------- hypothesis

LINE_ENDS = st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r"])
# Bytes near the edges of what the fast path takes.
EDGY = st.sampled_from([b"\r", b"\n", b"\r\n", b"\t", b" ", b"\x00", b":", b"/", b".", b"%",
                        b"?", b"#", b"\x7f", b"\xe9", b"a", b"-", b"\r\n\r\n", b"\r\n "])


# The container endpoints' targets, Hosts and Authorization values (`{...}`: Case.filled).
# `%77eb` is TASK spelt so that aiohttp decodes it and the fast path hands it over.
CONTAINER_TARGETS = ["/v2/credentials/{task}", f"/v2/credentials/{TASK}",
                     "/v2/credentials/nope", "/v2/credentials/", "/v1/credentials",
                     "/v1/credentials?id={task}", "/v1/credentials?id=", "/v2/credentials/%77eb"]
HOSTS = st.sampled_from([HOST] * 4 + [
    "Host: 169.254.170.2", POD_HOST, "Host: [fd00:ec2::23]", "Host: 127.0.0.1:{port}",
    "Host: localhost:{port}", "Host: 10.1.2.3", "Host: evil.example"])
AUTHORIZATIONS = st.one_of(
    st.sampled_from(["{ecs}", "{pod}", "{pod-expired}", "{ecs}x", "Bearer {ecs}", "",
                     "not.a-jwt"]),
    HEADER_VALUES)


@st.composite
def built(draw: st.DrawFn) -> Case:
    """A request put together from parts, mostly well-formed."""
    method = draw(st.one_of(st.sampled_from(["GET", "PUT", "HEAD"]), METHODS))
    target = draw(st.one_of(st.sampled_from(
        [CREDENTIALS, "/latest/api/token", "/latest/meta-data/", "/latest/meta-data/ami-id"]),
        st.sampled_from(CONTAINER_TARGETS), PATHS))
    version = draw(st.sampled_from(["HTTP/1.1"] * 4 + ["HTTP/1.0", "HTTP/2.0", "http/1.1"]))
    fields = []
    if draw(st.integers(0, 3)):
        fields.append(draw(HOSTS))
    if draw(st.booleans()):
        fields.append(TOKEN)
    if draw(st.booleans()):
        fields.append("Authorization: " + draw(AUTHORIZATIONS))
    if method.upper() == "PUT" or draw(st.booleans()):
        ttl = draw(st.one_of(st.integers(-5, 30000).map(str), HEADER_VALUES))
        fields.append(f"{TTL}: {ttl}")
    extra = draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=3))
    fields = draw(st.permutations([*fields, *(f"{name}: {value}" for name, value in extra)]))
    eol = draw(LINE_ENDS)
    raw = eol.join(line.encode("utf-8") for line in [f"{method} {target} {version}", *fields])
    raw += eol + draw(LINE_ENDS)
    return Case("built", (raw,), half_close=draw(st.booleans()))


@st.composite
def mutated(draw: st.DrawFn) -> Case:
    """An SDK-like request with a byte or two changed, perhaps sent in two pieces."""
    raw = bytearray(("\r\n".join(draw(st.sampled_from(list(BASES.values())))) + "\r\n\r\n")
                    .encode())
    for _ in range(draw(st.integers(1, 2))):
        at = draw(st.integers(0, len(raw) - 1))
        how = draw(st.sampled_from(["insert", "replace", "delete"]))
        edge = b"" if how == "delete" else draw(EDGY)
        raw[at:at + (0 if how == "insert" else 1)] = edge
    split = draw(st.integers(0, len(raw)))
    pieces = tuple(p for p in (bytes(raw[:split]), bytes(raw[split:])) if p)
    return Case("mutated", pieces, half_close=draw(st.booleans()))


class TestSameAnswerToAnyRequest:
    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(case=st.one_of(built(), mutated()))
    def test_a_generated_request_gets_the_same_answer(
        self, pairs: dict[str, Pair], case: Case
    ) -> None:
        # A kept-alive connection stays open after each answer unless the client
        # half-closes, and waiting that out each time would take too long.
        names = ["closing", "kept-alive"] if case.half_close else ["closing"]

        async def run() -> list[tuple[Seen, Seen]]:
            limit = asyncio.Semaphore(4)
            return await asyncio.gather(*(both(pairs[name], case, limit) for name in names))

        for fast, aiohttp in asyncio.run(run()):
            assert aiohttp == fast
