"""
Limits over real sockets: what aiohttp cannot parse gets EC2's 400, bodies are refused,
idle and trickling clients are cut off, and a crowd of idle connections cannot keep a new
client from being served (imds.http.aioserver).
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from imds.ec2.wire import BAD_REQUEST_BODY
from imds.errors import ConfigError
from imds.http import acceptor
from imds.http.aioserver import CappedServer
from imds.server import Running
from tests.conftest import ServerFactory, make_config
from tests.support import rawhttp
from tests.support.polling import until
from tests.support.processes import clean_env, run_imds

TTL = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN = "X-aws-ec2-metadata-token"
ROLE = "imds-local-role"
# botocore's default timeout [S-PY-06]: "promptly" means an SDK would not give up.
SDK_TIMEOUT = 1.0
HOST = b"Host: 169.254.169.254\r\n"


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


async def sdk_fetch(url: str) -> bytes:
    """
    botocore's three requests [S-PY-05], each on its own connection; the document. Each
    must be answered within botocore's timeout, which is per request [S-PY-06].
    """

    async def send(method: str, path: str, headers: dict[str, str]) -> rawhttp.RawResponse:
        began = time.monotonic()
        answer = await rawhttp.send(url, rawhttp.request(method, path, headers))
        took = time.monotonic() - began
        assert answer is not None
        assert took < SDK_TIMEOUT, f"{method} {path} took {took:.2f}s"
        return answer

    put = await send("PUT", "/latest/api/token", {TTL: "21600"})
    assert 200 == put.status
    token = {TOKEN: put.body.decode()}
    listing = await send("GET", "/latest/meta-data/iam/security-credentials/", token)
    assert ROLE.encode() == listing.body
    document = await send("GET", f"/latest/meta-data/iam/security-credentials/{ROLE}", token)
    assert 200 == document.status
    return document.body


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server sends until it closes; fails if it keeps the line open."""
    received = b""
    async with asyncio.timeout(seconds):
        while chunk := await reader.read(4096):
            received += chunk
    return received


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def open_idle(url: str, count: int, first: bytes = b"") -> list[Connection]:
    """
    `count` connections that send `first` and nothing more. Silent ones (no `first`) stay
    with the kernel for about a second before the server sees them (imds.http.acceptor).
    """
    host, port = address(url)
    connections = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection(host, port)
        if first:
            writer.write(first)
        connections.append((reader, writer))
    return connections


def evicted(server: Running) -> int:
    capped = server.runner.server
    assert isinstance(capped, CappedServer)
    return capped.evicted


def close_all(connections: list[Connection]) -> None:
    for _, writer in connections:
        writer.close()


async def still_open(reader: asyncio.StreamReader) -> bool:
    try:
        async with asyncio.timeout(0.2):
            return await reader.read(1) != b""
    except TimeoutError:
        return True


@pytest.fixture
def many_files() -> None:
    """Room for a thousand connections at both ends, in one process (RLIMIT_NOFILE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4096
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


class TestMalformedRequests:
    @pytest.mark.parametrize(
        "raw",
        [
            pytest.param(b"GARBAGE\r\n\r\n", id="no-request-line"),
            pytest.param(b"GET /latest/meta-data/ HTTP/9.9\r\n" + HOST + b"\r\n", id="version"),
            pytest.param(b"GET /latest/meta-data/ HTTP/1.1\r\nBad Header: x\r\n\r\n",
                         id="space-in-name"),
            pytest.param(b"GET /latest/meta-data/ HTTP/1.1\r\n" + HOST + b"Host: b\r\n\r\n",
                         id="two-hosts"),
            pytest.param(b"GET /latest/meta-data/ HTTP/1.1\r\nX: a\x00b\r\n\r\n", id="nul"),
            pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32) + b"\r\n\r\n",
                         id="tls-hello"),
            pytest.param(b"GET /latest/meta-data/ HTTP/1.1\r\nContent-Length: 1\r\n"
                         b"Content-Length: 2\r\n\r\nab", id="two-lengths"),
        ],
    )
    async def test_unparseable_request_gets_ec2s_400_and_the_server_serves_on(
        self, imds: Running, raw: bytes
    ) -> None:
        """[R-10] EC2's page and `Server: EC2ws`, not aiohttp's; then business as usual."""
        response = await rawhttp.send(imds.url, raw)
        assert response is not None
        assert 400 == response.status
        assert "EC2ws" == response.headers["server"]
        assert "close" == response.headers["connection"]
        assert BAD_REQUEST_BODY == response.body
        assert b'"Code" : "Success"' in await sdk_fetch(imds.url)

    @pytest.mark.parametrize(
        "raw",
        [
            pytest.param(b"CONNECT 169.254.169.254:80 HTTP/1.1\r\n" + HOST + b"\r\n",
                         id="connect"),
            pytest.param(b"OPTIONS * HTTP/1.1\r\n" + HOST + b"\r\n", id="asterisk"),
            # HTTP/1.0 keep-alive: aiohttp's own 404 here kept the connection open.
            pytest.param(b"CONNECT / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                         id="connect-keep-alive"),
        ],
    )
    async def test_a_target_that_is_no_path_gets_an_ec2_answer_and_a_close(
        self, imds: Running, raw: bytes
    ) -> None:
        """Found by tests/http/test_fuzz.py: aiohttp's router answered these with its own page."""
        host, port = address(imds.url)
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(raw)
            received = await closed_within(reader, SDK_TIMEOUT)
        finally:
            writer.close()
        head = received.split(b"\r\n\r\n", 1)[0]
        assert int(head.split(b" ", 2)[1]) in (400, 404)
        assert b"\r\nServer: EC2ws\r\n" in head
        assert b'"Code" : "Success"' in await sdk_fetch(imds.url)

    async def test_header_value_up_to_the_limit_is_served_and_one_byte_more_is_400(
        self, imds_factory: ServerFactory
    ) -> None:
        server = await imds_factory(max_header_size=1024, http_tokens="optional")
        fits = rawhttp.request("GET", "/latest/meta-data/ami-id", {"X-Filler": "a" * 1024})
        too_long = rawhttp.request("GET", "/latest/meta-data/ami-id", {"X-Filler": "a" * 1025})
        ok = await rawhttp.send(server.url, fits)
        refused = await rawhttp.send(server.url, too_long)
        assert ok is not None and 200 == ok.status
        assert refused is not None and (400, "EC2ws") == (refused.status,
                                                          refused.headers["server"])

    async def test_overlong_request_line_is_400(self, imds_factory: ServerFactory) -> None:
        server = await imds_factory(max_header_size=1024)
        response = await rawhttp.send(server.url, rawhttp.request(
            "GET", "/latest/meta-data/" + "a" * 2000))
        assert response is not None
        assert (400, BAD_REQUEST_BODY) == (response.status, response.body)

    async def test_header_count_limit(self, imds_factory: ServerFactory) -> None:
        server = await imds_factory(max_headers=10, http_tokens="optional")
        # rawhttp adds Host and Connection: 8 more make 10, 9 more make 11.
        fits = {f"X-{i}": "1" for i in range(8)}
        ok = await rawhttp.send(server.url, rawhttp.request("GET", "/latest/", fits))
        refused = await rawhttp.send(server.url, rawhttp.request(
            "GET", "/latest/", {**fits, "X-extra": "1"}))
        assert ok is not None and 200 == ok.status
        assert refused is not None and 400 == refused.status

    def test_limits_are_checked_when_loaded(self) -> None:
        for setting in ({"max_connections": "0"}, {"idle_timeout": "0"},
                        {"max_header_size": "10"}, {"max_headers": "0"}):
            with pytest.raises(ConfigError, match=next(iter(setting)).replace("_", "-")):
                make_config(**setting)


class TestBodies:
    @pytest.mark.parametrize(
        ("headers", "body"),
        [
            pytest.param({"Content-Length": "5"}, b"hello", id="content-length"),
            pytest.param({"Transfer-Encoding": "chunked"}, b"5\r\nhello\r\n0\r\n\r\n",
                         id="chunked"),
        ],
    )
    async def test_a_get_with_a_body_is_400(
        self, imds: Running, headers: dict[str, str], body: bytes
    ) -> None:
        response = await rawhttp.send(imds.url, rawhttp.request(
            "GET", "/latest/meta-data/", headers, body))
        assert response is not None
        assert (400, BAD_REQUEST_BODY) == (response.status, response.body)

    async def test_an_empty_content_length_is_no_body(self, imds_factory: ServerFactory) -> None:
        server = await imds_factory(http_tokens="optional")
        response = await rawhttp.send(server.url, rawhttp.request(
            "GET", "/latest/meta-data/ami-id", {"Content-Length": "0"}))
        assert response is not None and 200 == response.status

    async def test_an_announced_body_is_refused_before_it_arrives(self, imds: Running) -> None:
        """A client announcing a megabyte and sending nothing is answered and cut off."""
        host, port = address(imds.url)
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(b"PUT /latest/api/token HTTP/1.1\r\n" + HOST +
                         b"X-aws-ec2-metadata-token-ttl-seconds: 60\r\n"
                         b"Content-Length: 1000000\r\n\r\n")
            received = await closed_within(reader, SDK_TIMEOUT)
        finally:
            writer.close()
        assert received.startswith(b"HTTP/1.1 400 ")


class TestTimeouts:
    async def test_a_silent_connection_is_closed_after_the_idle_timeout(
        self, imds_factory: ServerFactory
    ) -> None:
        server = await imds_factory(idle_timeout=1)
        reader, writer = await asyncio.open_connection(*address(server.url))
        began = time.monotonic()
        try:
            assert b"" == await closed_within(reader, 5)
        finally:
            writer.close()
        # The timeout, plus up to the sweep's period (imds.http.aioserver) and, on Linux, the
        # second or two the kernel holds a silent connection back (imds.http.acceptor).
        assert 0.9 <= time.monotonic() - began < 3.5

    async def test_trickled_headers_do_not_extend_the_deadline(
        self, imds_factory: ServerFactory
    ) -> None:
        """Slowloris: a byte every 100 ms keeps no connection open past the timeout."""
        server = await imds_factory(idle_timeout=1)
        reader, writer = await asyncio.open_connection(*address(server.url))
        head = b"GET /latest/meta-data/ HTTP/1.1\r\nX-Slow: " + b"a" * 1000

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for byte in head:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.1)

        dripping = asyncio.create_task(trickle())
        began = time.monotonic()
        try:
            received = await closed_within(reader, 3)
        finally:
            dripping.cancel()
            writer.close()
        assert b"" == received
        assert time.monotonic() - began < 2.5

    async def test_a_kept_alive_connection_idles_out(self, imds_factory: ServerFactory) -> None:
        server = await imds_factory(idle_timeout=1, connection_close="false",
                                    http_tokens="optional")
        reader, writer = await asyncio.open_connection(*address(server.url))
        try:
            writer.write(b"GET /latest/meta-data/ami-id HTTP/1.1\r\n" + HOST + b"\r\n")
            received = await closed_within(reader, 3)
        finally:
            writer.close()
        assert received.startswith(b"HTTP/1.1 200 OK")
        assert b"Connection: close" not in received


class TestConnectionCap:
    async def test_a_thousand_idle_connections_do_not_delay_a_new_client(
        self, many_files: None, empty_home: Path
    ) -> None:
        """The default settings, `imds serve` as a separate process, real sockets."""
        with run_imds(env=clean_env(empty_home)) as server:
            idle = await open_idle(server.url, 1000)
            try:
                document = await sdk_fetch(server.url)
                # Under the default cap nothing was closed to make room.
                assert await still_open(idle[0][0])
            finally:
                close_all(idle)
        assert b'"Code" : "Success"' in document

    async def test_a_burst_of_a_thousand_connects_is_accepted_within_an_sdk_timeout(
        self, many_files: None, empty_home: Path
    ) -> None:
        """
        A fleet of containers starting at once: the accept queue holds them all. With
        aiohttp's default backlog (128) the kernel drops the rest's SYNs, and each dropped
        client waits a one-second retransmit, botocore's whole timeout.
        """
        with run_imds(env=clean_env(empty_home)) as server:
            host, port = address(server.url)

            async def connect() -> float:
                began = time.monotonic()
                _, writer = await asyncio.open_connection(host, port)
                took = time.monotonic() - began
                writer.close()
                return took

            took = await asyncio.gather(*(connect() for _ in range(1000)))
        assert max(took) < SDK_TIMEOUT

    async def test_over_the_cap_the_longest_idle_connections_make_room(
        self, imds_factory: ServerFactory, many_files: None
    ) -> None:
        server = await imds_factory(max_connections=100)
        # One byte of a request each, so the server holds them all at once (a silent
        # connection is the kernel's until its deferral ends: the test below).
        idle = await open_idle(server.url, 1000, first=b"G")
        try:
            document = await sdk_fetch(server.url)
            oldest_closed = not await still_open(idle[0][0])
            newest_open = await still_open(idle[-1][0])
        finally:
            close_all(idle)
        assert b'"Code" : "Success"' in document
        assert oldest_closed
        assert newest_open
        assert 900 <= evicted(server)

    @pytest.mark.skipif(not acceptor.SUPPORTED, reason="deferred accept is Linux's")
    async def test_silent_connections_wait_in_the_kernel_then_make_room_like_the_rest(
        self, imds_factory: ServerFactory, many_files: None
    ) -> None:
        """
        TCP_DEFER_ACCEPT (imds.http.acceptor): a connection that sends nothing costs the server
        nothing for about a second; then it is handed over and the cap applies to it.
        """
        server = await imds_factory(max_connections=100)
        idle = await open_idle(server.url, 300)
        try:
            await sdk_fetch(server.url)
            held_back = evicted(server)
            await until(lambda: evicted(server) >= 200, 10.0, "200 evictions")
            # The evicted are these silent ones (the kernel hands them over in no set
            # order, so not necessarily the first opened): 200 of them see the close.
            await until(lambda: sum(reader.at_eof() for reader, _ in idle) >= 200, 5.0,
                        "200 of the silent connections to be closed")
        finally:
            close_all(idle)
        assert 0 == held_back

    async def test_trickling_clients_over_the_cap_do_not_delay_a_new_client(
        self, imds_factory: ServerFactory, many_files: None
    ) -> None:
        server = await imds_factory(max_connections=50)
        slow = await open_idle(server.url, 300)
        for _, writer in slow:
            writer.write(b"GET /latest/meta-data/ HTTP/1.1\r\nX-Slow: a")
        try:
            await sdk_fetch(server.url)
        finally:
            close_all(slow)

    async def test_the_newcomer_is_never_the_one_closed(
        self, imds_factory: ServerFactory
    ) -> None:
        """With room for one, each new client still gets its answer."""
        server = await imds_factory(max_connections=1)
        for _ in range(3):
            assert b'"Code" : "Success"' in await sdk_fetch(server.url)
