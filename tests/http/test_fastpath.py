"""
The fast path (imds.http.fastpath): plain requests answered ahead of aiohttp with the bytes
aiohttp would send, everything else handed to aiohttp, answers kept only while right.

Requests go over real sockets to servers started as the CLI starts them. A request is
sent to aiohttp on the same server by spelling one character of its path as a percent
escape: aiohttp decodes it to the same path, and the fast path hands anything with `%`
over, so the two answers can be compared byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Any

import pytest

from imds.http.aioserver import CappedServer
from imds.http.fastpath import KEPT_MAX
from imds.lab import metrics
from imds.lab.faultspec import FaultSpec
from imds.server import Running
from tests.conftest import ServerFactory
from tests.support.polling import just_after_a_second_turns

ROLE = "imds-local-role"
CREDENTIALS = f"/latest/meta-data/iam/security-credentials/{ROLE}"
HOST = "169.254.169.254"


def address(running: Running) -> tuple[str, int]:
    host, port = running.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def exchange(running: Running, request: bytes, *, answers: int = 1,
                   local: str | None = None) -> list[bytes]:
    """
    Send `request` verbatim on one new connection and read `answers` whole responses
    (answers to HEAD without their bodies).
    """
    host, port = address(running)
    reader, writer = await asyncio.open_connection(
        host, port, local_addr=(local, 0) if local else None)
    try:
        writer.write(request)
        await writer.drain()
        bodies = not request.startswith(b"HEAD ")
        return [await asyncio.wait_for(read_response(reader, bodies), 5)
                for _ in range(answers)]
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader, body: bool = True) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    if not body:
        return head
    found = re.search(rb"\r\nContent-Length: (\d+)\r\n", head)
    length = int(found[1]) if found else 0
    return head + await reader.readexactly(length)


def request(method: str, path: str, *fields: str, version: str = "HTTP/1.1") -> bytes:
    return ("\r\n".join([f"{method} {path} {version}", *fields]) + "\r\n\r\n").encode("latin-1")


def escaped(path: str) -> str:
    """The same path for aiohttp, but with a `%` the fast path hands over: `latest`'s t."""
    assert "/latest" in path
    return path.replace("/latest", "/lates%74", 1)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def header(response: bytes, name: str) -> str | None:
    found = re.search(rb"\r\n" + name.encode() + rb": ([^\r]*)\r\n", response)
    return found[1].decode() if found else None


def comparable(response: bytes) -> bytes:
    """A response with what may rightly differ between two answers masked: the date, and
    a freshly issued token."""
    response = re.sub(rb"\r\nDate: [^\r]*", b"\r\nDate: (date)", response)
    return re.sub(rb"\r\n\r\n[A-Za-z0-9_-]{54}==$", b"\r\n\r\n(token)", response)


def counts(running: Running) -> tuple[int, int, int]:
    lab = running.lab
    assert lab is not None
    return lab.fast_answered, lab.fast_kept, lab.handovers


async def new_token(running: Running, ttl: int = 21600, *, local: str | None = None) -> str:
    put = request("PUT", "/latest/api/token", f"Host: {HOST}",
                  f"X-aws-ec2-metadata-token-ttl-seconds: {ttl}")
    [answer] = await exchange(running, put, local=local)
    assert status_of(answer) == 200
    return answer.rpartition(b"\r\n\r\n")[2].decode()


class Clock:
    """Wall time plus an offset a test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


# Requests an SDK or a user sends, by what they should get. `{token}` is a valid token.
PLAIN: list[Any] = [
    pytest.param("PUT", "/latest/api/token", ["X-aws-ec2-metadata-token-ttl-seconds: 60"],
                 200, id="token"),
    pytest.param("PUT", "/latest/api/token", ["X-aws-ec2-metadata-token-ttl-seconds: 0"],
                 400, id="token-ttl-0"),
    pytest.param("PUT", "/latest/api/token", [], 400, id="token-no-ttl"),
    pytest.param("PUT", "/latest/api/token", ["Content-Length: 0",
                 "X-aws-ec2-metadata-token-ttl-seconds: 21600"], 200, id="token-length-0"),
    pytest.param("PUT", "/latest/api/token", ["X-aws-ec2-metadata-token-ttl-seconds: 60",
                 "X-Forwarded-For: 10.0.0.1"], 403, id="token-forwarded"),
    pytest.param("GET", "/latest/api/token", [], 405, id="token-get"),
    pytest.param("PUT", "/latest/api/token/", [], 403, id="token-slash"),
    pytest.param("GET", "/latest/meta-data/", ["X-aws-ec2-metadata-token: {token}"], 200,
                 id="listing"),
    pytest.param("GET", "/latest/meta-data/iam/security-credentials/",
                 ["X-aws-ec2-metadata-token: {token}"], 200, id="role-list"),
    pytest.param("GET", CREDENTIALS, ["X-aws-ec2-metadata-token: {token}"], 200,
                 id="credentials"),
    pytest.param("GET", CREDENTIALS, ["x-AWS-ec2-METADATA-token:   {token}  "], 200,
                 id="credentials-odd-case-and-spaces"),
    pytest.param("GET", "/latest//meta-data//ami-id/", ["X-aws-ec2-metadata-token: {token}"],
                 200, id="double-slashes"),
    pytest.param("GET", "/latest/dynamic/instance-identity/document",
                 ["X-aws-ec2-metadata-token: {token}"], 200, id="identity-document"),
    pytest.param("GET", "/latest/meta-data/nothing-here",
                 ["X-aws-ec2-metadata-token: {token}"], 404, id="not-found"),
    pytest.param("GET", CREDENTIALS, [], 401, id="no-token"),
    pytest.param("GET", CREDENTIALS, ["X-aws-ec2-metadata-token: " + "A" * 56], 401,
                 id="forged-token"),
    pytest.param("GET", CREDENTIALS, ["X-aws-ec2-metadata-token: {token}",
                 "X-Forwarded-For: 10.0.0.1"], 403, id="forwarded"),
    pytest.param("PUT", "/latest/meta-data/", [], 405, id="put-metadata"),
]


class TestSameBytesAsAiohttp:
    @pytest.mark.parametrize("method, path, fields, status", PLAIN)
    async def test_a_plain_request_gets_what_aiohttp_sends_for_it(
        self, imds: Running, method: str, path: str, fields: list[str], status: int
    ) -> None:
        token = await new_token(imds)
        fields = [f"Host: {HOST}", *(f.format(token=token) for f in fields)]
        before = counts(imds)
        [fast] = await exchange(imds, request(method, path, *fields))
        [slow] = await exchange(imds, request(method, escaped(path), *fields))
        answered, _, handed_over = counts(imds)
        assert (answered - before[0], handed_over - before[2]) == (1, 1)
        assert status_of(fast) == status
        assert comparable(fast) == comparable(slow)

    @pytest.mark.parametrize("fields, closes", [
        pytest.param([], False, id="kept-alive"),
        pytest.param(["Connection: keep-alive"], False, id="keep-alive-asked"),
        pytest.param(["Connection: close"], True, id="close-asked"),
    ])
    async def test_keep_alive_is_answered_as_aiohttp_does(
        self, imds_factory: ServerFactory, fields: list[str], closes: bool
    ) -> None:
        running = await imds_factory(connection_close="false", http_tokens="optional",
                                     user_data="#!/bin/sh\necho hi\n")
        for path in ("/latest/meta-data/ami-id", "/latest/user-data"):
            [fast] = await exchange(running, request("GET", path, f"Host: {HOST}", *fields))
            [slow] = await exchange(running, request("GET", escaped(path), f"Host: {HOST}",
                                                     *fields))
            assert comparable(fast) == comparable(slow)
            assert (header(fast, "Connection") == "close") is closes
        assert header(fast, "Content-Type") == "application/octet-stream"

    async def test_a_refused_host_is_refused_on_the_fast_path_too(self, imds: Running) -> None:
        fields = ["Host: attacker.example", "X-aws-ec2-metadata-token-ttl-seconds: 60"]
        [fast] = await exchange(imds, request("PUT", "/latest/api/token", *fields))
        [slow] = await exchange(imds, request("PUT", escaped("/latest/api/token"), *fields))
        assert status_of(fast) == 403
        assert comparable(fast) == comparable(slow)

    async def test_with_fast_path_false_aiohttp_answers_everything(
        self, imds_factory: ServerFactory
    ) -> None:
        running = await imds_factory(fast_path="false")
        server = running.runner.server
        assert isinstance(server, CappedServer) and server.wire is None
        token = await new_token(running)
        [answer] = await exchange(running, request(
            "GET", CREDENTIALS, f"Host: {HOST}", f"X-aws-ec2-metadata-token: {token}"))
        assert status_of(answer) == 200
        assert counts(running) == (0, 0, 0)


class TestHandOver:
    """What the fast path does not answer goes to aiohttp whole, and the server serves on."""

    @pytest.mark.parametrize("raw, statuses", [
        pytest.param(b"HEAD /latest/meta-data/ami-id HTTP/1.1\r\n{host}{auth}\r\n", [200],
                     id="head"),
        pytest.param(b"GET /latest/meta-data/ami-id HTTP/1.0\r\n{host}{auth}\r\n", [200],
                     id="http-1.0"),
        pytest.param(b"GET /latest/meta-data/ami-id?x=1 HTTP/1.1\r\n{host}{auth}\r\n", [200],
                     id="query"),
        pytest.param(b"GET /latest/meta-data/ami-id HTTP/1.1\r\n{host}{auth}"
                     b"Content-Length: 3\r\n\r\nabc", [400], id="body"),
        pytest.param(b"PUT /latest/api/token HTTP/1.1\r\n{host}"
                     b"X-aws-ec2-metadata-token-ttl-seconds: 60\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", [400], id="chunked"),
        pytest.param(b"PUT /latest/api/token HTTP/1.1\r\n{host}"
                     b"X-aws-ec2-metadata-token-ttl-seconds: 60\r\n"
                     b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n", [417], id="expect"),
        pytest.param(b"GET /latest/meta-data/ami-id HTTP/1.1\r\n{host}{auth}{auth}\r\n", [200],
                     id="repeated-header"),
        pytest.param(b"GET /latest/meta-data/ami-id HTTP/1.1\r\n{host}{auth}"
                     b"X-Odd: caf\xc3\xa9\r\n\r\n", [200], id="non-ascii-value"),
        pytest.param(b"GET /latest/meta-data/ami-id HTTP/1.1\r\n{host}{auth}"
                     b"X-Folded: a\r\n b\r\n\r\n", [400], id="obs-fold"),
        pytest.param(b"GET /latest/meta-data/../meta-data/ami-id HTTP/1.1\r\n{host}{auth}\r\n",
                     [404], id="dot-segment"),
        pytest.param(b"POST /latest/api/token HTTP/1.1\r\n{host}\r\n", [405], id="post"),
        pytest.param(b"GET /latest/meta-data/ami-id HTTP/1.1\r\n{host}{auth}\r\n"
                     b"GET /latest/meta-data/instance-id HTTP/1.1\r\n{host}{auth}"
                     b"Connection: close\r\n\r\n", [200, 200], id="pipelined"),
    ])
    async def test_an_odd_request_is_answered_by_aiohttp(
        self, imds_factory: ServerFactory, raw: bytes, statuses: list[int]
    ) -> None:
        running = await imds_factory(connection_close="false")
        token = await new_token(running)
        raw = raw.replace(b"{host}", f"Host: {HOST}\r\n".encode()).replace(
            b"{auth}", f"X-aws-ec2-metadata-token: {token}\r\n".encode())
        before = counts(running)
        answers = await exchange(running, raw, answers=len(statuses))
        assert [status_of(a) for a in answers] == statuses
        assert counts(running)[2] == before[2] + 1
        # Whatever came before, the next plain request is the fast path's again.
        [after] = await exchange(running, request(
            "GET", CREDENTIALS, f"Host: {HOST}", f"X-aws-ec2-metadata-token: {token}"))
        assert status_of(after) == 200
        assert counts(running)[0] == before[0] + 1

    async def test_a_kept_alive_connection_is_handed_over_between_requests(
        self, imds_factory: ServerFactory
    ) -> None:
        """Fast path, then aiohttp on the same connection: answers stay in order."""
        running = await imds_factory(connection_close="false", http_tokens="optional")
        host, port = address(running)
        reader, writer = await asyncio.open_connection(host, port)
        try:
            got = []
            for line in (b"GET /latest/meta-data/ami-id HTTP/1.1",
                         b"HEAD /latest/meta-data/instance-id HTTP/1.1",
                         b"GET /latest/meta-data/instance-type HTTP/1.1"):
                writer.write(line + f"\r\nHost: {HOST}\r\n\r\n".encode())
                got.append(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5))
                if not line.startswith(b"HEAD"):
                    length = int(header(got[-1], "Content-Length") or 0)
                    got[-1] += await reader.readexactly(length)
        finally:
            writer.close()
        assert [status_of(g) for g in got] == [200, 200, 200]
        assert got[0].rpartition(b"\r\n\r\n")[2].startswith(b"ami-")
        assert counts(running)[::2] == (1, 1)

    async def test_a_head_trickled_a_byte_at_a_time_is_still_answered(
        self, imds: Running
    ) -> None:
        token = await new_token(imds)
        raw = request("GET", CREDENTIALS, f"Host: {HOST}", f"X-aws-ec2-metadata-token: {token}")
        host, port = address(imds)
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for byte in raw:
                writer.write(bytes([byte]))
                await writer.drain()
            answer = await asyncio.wait_for(read_response(reader), 5)
        finally:
            writer.close()
        assert status_of(answer) == 200
        assert counts(imds)[2] == 0


class TestKeptAnswers:
    async def test_a_repeated_request_is_sent_the_kept_answer(self, imds: Running) -> None:
        # A kept answer lasts until its Date or TTL header would change: within a second.
        await just_after_a_second_turns()
        token = await new_token(imds)
        raw = request("GET", CREDENTIALS, f"Host: {HOST}", f"X-aws-ec2-metadata-token: {token}")
        first, second = [(await exchange(imds, raw))[0] for _ in range(2)]
        assert comparable(first) == comparable(second)
        assert counts(imds)[1] >= 1

    async def test_a_rotation_shows_on_the_very_next_identical_request(
        self, imds: Running
    ) -> None:
        token = await new_token(imds)
        raw = request("GET", CREDENTIALS, f"Host: {HOST}", f"X-aws-ec2-metadata-token: {token}")
        [before] = await exchange(imds, raw)
        [again] = await exchange(imds, raw)
        await imds.rotator.rotate_now()
        [after] = await exchange(imds, raw)
        key = re.compile(rb'"AccessKeyId" : "(\w+)"')
        assert key.search(before)[1] == key.search(again)[1] != key.search(after)[1]  # type: ignore[index]

    async def test_an_injected_fault_applies_to_a_request_answered_before(
        self, imds: Running
    ) -> None:
        assert imds.lab is not None
        token = await new_token(imds)
        raw = request("GET", CREDENTIALS, f"Host: {HOST}", f"X-aws-ec2-metadata-token: {token}")
        await exchange(imds, raw)
        await exchange(imds, raw)
        imds.lab.add_fault(FaultSpec(kind="status", status=503, paths=(CREDENTIALS,)))
        [faulted] = await exchange(imds, raw)
        imds.lab.faults.clear()
        [healed] = await exchange(imds, raw)
        assert (status_of(faulted), status_of(healed)) == (503, 200)

    async def test_the_ttl_header_counts_down_and_the_token_expires(
        self, imds_factory: ServerFactory
    ) -> None:
        clock = Clock()
        running = await imds_factory(clock=clock)
        token = await new_token(running, ttl=5)
        raw = request("GET", CREDENTIALS, f"Host: {HOST}", f"X-aws-ec2-metadata-token: {token}")
        ttls = []
        for _ in range(3):
            [answer] = await exchange(running, raw)
            ttls.append(header(answer, "X-Aws-Ec2-Metadata-Token-Ttl-Seconds"))
            clock.offset += 1.0
        clock.offset += 2.5
        [expired] = await exchange(running, raw)
        assert ttls == ["5", "4", "3"]
        assert status_of(expired) == 401

    async def test_a_kept_answer_is_never_sent_to_another_client(
        self, imds: Running
    ) -> None:
        """Tokens are bound to the caller's address [T-08]; so are kept answers."""
        token = await new_token(imds, local="127.0.0.1")
        raw = request("GET", CREDENTIALS, f"Host: {HOST}", f"X-aws-ec2-metadata-token: {token}")
        [mine] = await exchange(imds, raw, local="127.0.0.1")
        [theirs] = await exchange(imds, raw, local="127.0.0.2")
        [mine_again] = await exchange(imds, raw, local="127.0.0.1")
        assert [status_of(a) for a in (mine, theirs, mine_again)] == [200, 401, 200]

    async def test_kept_answers_are_bounded(self, imds_factory: ServerFactory) -> None:
        running = await imds_factory(http_tokens="optional")
        server = running.runner.server
        assert isinstance(server, CappedServer) and server.wire is not None
        for n in range(KEPT_MAX + 10):
            await exchange(running, request("GET", "/latest/meta-data/ami-id", f"Host: {HOST}",
                                            f"X-Request: {n}"))
        assert 0 < len(server.wire.kept) <= KEPT_MAX

    async def test_kept_answers_count_as_credential_fetches(self, imds: Running) -> None:
        assert imds.lab is not None
        await just_after_a_second_turns()
        token = await new_token(imds)
        raw = request("GET", CREDENTIALS, f"Host: {HOST}", f"X-aws-ec2-metadata-token: {token}")
        for _ in range(5):
            await exchange(imds, raw)
        assert imds.lab.credential_fetches == 5
        assert [f.role for f in list(imds.lab.fetches)[-5:]] == [ROLE] * 5
        text = metrics.render(imds.lab).decode()
        assert 'imds_fast_path_total{outcome="answered"} 2.0' in text  # the PUT and one GET
        assert 'imds_fast_path_total{outcome="kept"} 4.0' in text


class TestIdle:
    async def test_a_connection_that_keeps_asking_outlives_the_idle_timeout(
        self, imds_factory: ServerFactory
    ) -> None:
        running = await imds_factory(idle_timeout=1, connection_close="false",
                                     http_tokens="optional")
        host, port = address(running)
        reader, writer = await asyncio.open_connection(host, port)
        began = time.monotonic()
        statuses = []
        try:
            # Six requests 0.4 s apart: well past the 1 s timeout in all.
            for _ in range(6):
                sent = time.monotonic()
                writer.write(request("GET", "/latest/meta-data/ami-id", f"Host: {HOST}"))
                statuses.append(status_of(await asyncio.wait_for(read_response(reader), 5)))
                await asyncio.sleep(0.4)
            lived = time.monotonic() - began
            # Then silence: the sweep closes it a little after the timeout, counted from
            # the last answer (which came after `sent`).
            assert b"" == await asyncio.wait_for(reader.read(), 5)
            closed_after = time.monotonic() - sent
        finally:
            writer.close()
        assert lived > 2.0 and statuses == [200] * 6
        assert 1.0 <= closed_after < 3.0
