"""
The accept loop (imds.http.acceptor): a whole plain request that is in when its connection is
accepted is answered and closed there; every other connection is adopted by the event
loop with what was read and written so far, and gets the answer it would have had.

Real sockets to servers started as the CLI starts them; `answered` and `adopted` are the
accept loop's own counts of which way each connection went.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket

import pytest

from imds.config.endpoints import Endpoint
from imds.errors import StartupError
from imds.http import acceptor
from imds.http.listen import start_sites
from imds.server import Running, start
from tests.conftest import ServerFactory, make_config
from tests.http.test_fastpath import (
    CREDENTIALS,
    HOST,
    ROLE,
    address,
    comparable,
    escaped,
    exchange,
    header,
    new_token,
    read_response,
    request,
    status_of,
)

pytestmark = pytest.mark.skipif(not acceptor.SUPPORTED, reason="deferred accept is Linux's")


def acceptors(running: Running) -> list[acceptor.Acceptor]:
    found = [a for site in running.runner.sites
             if isinstance(site, acceptor.AcceptorSite)
             for a in site._server.acceptors]  # type: ignore[union-attr]
    assert found, "no accept loop: the server should listen through imds.http.acceptor"
    return found


def ways(running: Running) -> tuple[int, int]:
    """(answered in the accept loop, adopted by the event loop), over all listeners."""
    found = acceptors(running)
    return sum(a.answered for a in found), sum(a.adopted for a in found)


def get(path: str, token: str, *fields: str) -> bytes:
    return request("GET", path, f"Host: {HOST}", f"X-aws-ec2-metadata-token: {token}",
                   *fields)


class TestAnsweredWhereAccepted:
    async def test_the_sdk_sequence_is_answered_without_the_event_loop(
        self, imds: Running
    ) -> None:
        token = await new_token(imds)
        [listing] = await exchange(imds, get("/latest/meta-data/iam/security-credentials/",
                                             token))
        [document] = await exchange(imds, get(CREDENTIALS, token))
        assert listing.endswith(b"\r\n\r\n" + ROLE.encode())
        assert b'"Code" : "Success"' in document
        assert header(document, "Connection") == "close"
        assert (3, 0) == ways(imds)

    async def test_the_bytes_are_aiohttps_for_the_same_request(self, imds: Running) -> None:
        token = await new_token(imds)
        [mine] = await exchange(imds, get(CREDENTIALS, token))
        [theirs] = await exchange(imds, get(escaped(CREDENTIALS), token))
        assert comparable(mine) == comparable(theirs)
        # The escaped one needed aiohttp, so the event loop had it.
        assert (2, 1) == ways(imds)

    async def test_an_error_answer_is_given_there_too(self, imds: Running) -> None:
        [answer] = await exchange(imds, request("GET", CREDENTIALS, f"Host: {HOST}"))
        assert 401 == status_of(answer)
        assert (1, 0) == ways(imds)


class TestAdopted:
    async def test_a_head_still_arriving_is_answered_once_complete(
        self, imds: Running
    ) -> None:
        token = await new_token(imds)
        whole = get(CREDENTIALS, token)
        reader, writer = await asyncio.open_connection(*address(imds))
        try:
            writer.write(whole[:20])
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.write(whole[20:])
            answer = await asyncio.wait_for(read_response(reader), 5)
        finally:
            writer.close()
        assert 200 == status_of(answer)
        assert (1, 1) == ways(imds)

    async def test_a_request_with_a_body_gets_aiohttps_refusal(self, imds: Running) -> None:
        token = await new_token(imds)
        [answer] = await exchange(imds, get(CREDENTIALS, token, "Content-Length: 3")
                                  + b"abc")
        assert 400 == status_of(answer)
        assert (1, 1) == ways(imds)

    async def test_a_kept_alive_connection_is_adopted_after_its_first_answer(
        self, imds_factory: ServerFactory
    ) -> None:
        running = await imds_factory(connection_close="false")
        token = await new_token(running)
        one = get(CREDENTIALS, token)
        host, port = address(running)
        reader, writer = await asyncio.open_connection(host, port)
        try:
            answers = []
            for _ in range(3):
                writer.write(one)
                answers.append(await asyncio.wait_for(read_response(reader), 5))
        finally:
            writer.close()
        assert [200, 200, 200] == [status_of(a) for a in answers]
        assert all(header(a, "Connection") is None for a in answers)
        # The token PUT closes (its socket carries the hop limit); the GETs share one
        # connection, adopted after the first.
        assert (1, 1) == ways(running)

    async def test_an_answer_the_socket_cannot_take_whole_is_finished_by_the_loop(
        self, imds_factory: ServerFactory
    ) -> None:
        user_data = bytes(range(256)) * 64  # 16 KB, EC2's most [U-01]
        running = await imds_factory(user_data=user_data.hex()[:16384],
                                     http_tokens="optional")
        expected = user_data.hex()[:16384].encode()
        # Accepted sockets take the listener's buffer sizes: the smallest Linux allows
        # (about 4.5 KB) cannot hold 16 KB, and a client that is not reading yet does not
        # take it off the socket either.
        for one in acceptors(running):
            one.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        client.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_connect(client, address(running))
            await loop.sock_sendall(client, request("GET", "/latest/user-data",
                                                    f"Host: {HOST}"))
            await asyncio.sleep(0.3)
            received = b""
            while chunk := await asyncio.wait_for(loop.sock_recv(client, 65536), 5):
                received += chunk
        finally:
            client.close()
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert expected == body
        assert (0, 1) == ways(running)


class TestListening:
    async def test_stopping_the_server_frees_its_port(self) -> None:
        running = await start(make_config())
        port = address(running)[1]
        await running.stop()
        with socket.socket() as again:
            again.bind(("127.0.0.1", port))

    async def test_an_address_that_never_appears_fails_and_leaves_no_site(
        self, imds: Running
    ) -> None:
        """192.0.2.1 (TEST-NET-1) is on no interface: bind only, nothing is sent."""
        before = set(imds.runner.sites)
        with pytest.raises(StartupError, match=r"192\.0\.2\.1:80"):
            await start_sites(imds.runner.site, (Endpoint("192.0.2.1", 80),),
                              address_wait=0.3)
        assert before == set(imds.runner.sites)
        token = await new_token(imds)
        [answer] = await exchange(imds, get(CREDENTIALS, token))
        assert 200 == status_of(answer)

    async def test_a_client_that_leaves_without_asking_costs_nothing(
        self, imds: Running
    ) -> None:
        for _ in range(20):
            _, writer = await asyncio.open_connection(*address(imds))
            writer.write(b"GET /lat")
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        token = await new_token(imds)
        [answer] = await exchange(imds, get(CREDENTIALS, token))
        assert 200 == status_of(answer)


class TestInternalError:
    async def test_a_bug_costs_its_own_connection_only_and_logs_no_request_bytes(
        self, imds: Running, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A stand-in bug (the reply raises) for one request; the next is served."""
        token = await new_token(imds)
        wire = acceptors(imds)[0]._wire
        real = wire.respond

        def broken(data: bytes, *args: object) -> object:
            monkeypatch.setattr(wire, "respond", real)
            raise ValueError(data.decode())

        monkeypatch.setattr(wire, "respond", broken)
        reader, writer = await asyncio.open_connection(*address(imds))
        try:
            writer.write(get(CREDENTIALS, token))
            assert b"" == await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()
        [after] = await exchange(imds, get(CREDENTIALS, token))
        assert 200 == status_of(after)
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and "ValueError" in errors[0]
        assert token not in caplog.text


class TestOutOfDescriptors:
    async def test_it_pauses_accepting_then_serves_who_waited(
        self, imds: Running, caplog: pytest.LogCaptureFixture
    ) -> None:
        """
        accept(2) fails with EMFILE while the open-file limit is full: the connection waits
        in the backlog, the accept loop retries a second later, and it is answered.
        """
        token = await new_token(imds)
        loop = asyncio.get_running_loop()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        try:
            # New descriptors take the lowest free number below the limit: with the limit
            # at the second-lowest free number, the client's socket takes the only one.
            lowest, next_lowest = os.dup(0), os.dup(0)
            os.close(lowest)
            os.close(next_lowest)
            resource.setrlimit(resource.RLIMIT_NOFILE, (next_lowest, hard))
            client = socket.socket()
            client.setblocking(False)
            await loop.sock_connect(client, address(imds))
            await loop.sock_sendall(client, get(CREDENTIALS, token))
            deadline = loop.time() + 5
            while "cannot accept connections" not in caplog.text and loop.time() < deadline:
                await asyncio.sleep(0.05)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        try:
            received = b""
            while chunk := await asyncio.wait_for(loop.sock_recv(client, 65536), 5):
                received += chunk
        finally:
            client.close()
        assert "cannot accept connections for now" in caplog.text
        assert 200 == status_of(received)

