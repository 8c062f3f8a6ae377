"""Several listening endpoints at once [N-01], and the token response's hop limit [N-05].

The effect of the hop limit on a routed network is shown in tests/e2e/test_netns.py; here are
the socket option itself and the connection handling around it.
"""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from aiohttp import web

from imds.config import load
from imds.config.endpoints import Endpoint, parse_endpoint
from imds.errors import ConfigError, StartupError
from imds.http.hoplimit import limit_hops
from imds.http.listen import start_sites
from tests.conftest import ServerFactory

TTL = {"X-aws-ec2-metadata-token-ttl-seconds": "60"}


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TestEndpointSyntax:
    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("169.254.169.254:80", Endpoint("169.254.169.254", 80)),
            ("169.254.169.254", Endpoint("169.254.169.254", None)),
            ("[fd00:ec2::254]:80", Endpoint("fd00:ec2::254", 80)),
            ("[fd00:ec2::254]", Endpoint("fd00:ec2::254", None)),
            ("fd00:ec2::254", Endpoint("fd00:ec2::254", None)),
            ("[FD00:EC2:0::254]:80", Endpoint("fd00:ec2::254", 80)),
            ("LocalHost:1338", Endpoint("localhost", 1338)),
            ("0.0.0.0:0", Endpoint("0.0.0.0", 0)),
        ],
    )
    def test_accepted_forms(self, raw: str, expected: Endpoint) -> None:
        assert expected == parse_endpoint(raw)

    @pytest.mark.parametrize("raw", ["169.254.169.254:99999", "[fd00:ec2::254", "[nope]:80",
                                     "fd00:ec2::254:80:x", "host name", ":80", "1.2.3.4:-1"])
    def test_rejected_forms(self, raw: str) -> None:
        with pytest.raises(ValueError, match="expected"):
            parse_endpoint(raw)

    def test_str_brackets_ipv6_for_urls_and_banners(self) -> None:
        assert "[fd00:ec2::254]:80" == str(Endpoint("fd00:ec2::254", 80))
        assert "http://169.254.169.254:80" == Endpoint("169.254.169.254", 80).url()

    def test_a_missing_port_comes_from_the_port_setting(self) -> None:
        config = load({"listen": ["169.254.169.254", "[fd00:ec2::254]:81"], "port": "80"}, {})
        assert (Endpoint("169.254.169.254", 80), Endpoint("fd00:ec2::254", 81)) == config.listen

    def test_the_variable_takes_several_separated_by_semicolons(self) -> None:
        config = load({}, {"IMDS_LISTEN": "169.254.169.254:80; [fd00:ec2::254]:80"})
        assert ["169.254.169.254:80", "[fd00:ec2::254]:80"] == [str(e) for e in config.listen]

    def test_a_bad_entry_names_the_setting(self) -> None:
        with pytest.raises(ConfigError, match="--listen"):
            load({"listen": ["169.254.169.254:http"]}, {})


class TestSeveralEndpoints:
    async def test_every_endpoint_serves(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        listen = ["127.0.0.1:0", "127.0.0.2:0"]
        if has_ipv6_loopback():
            listen.append("[::1]:0")
        server = await imds_factory(listen=listen)
        assert len(listen) == len(server.urls)
        for url in server.urls:
            async with http.put(url + "/latest/api/token", headers=TTL) as r:
                assert 200 == r.status, url

    async def test_one_endpoint_in_use_fails_startup_and_releases_the_others(
        self, imds_factory: ServerFactory
    ) -> None:
        free = free_port()
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            taken = busy.getsockname()[1]
            with pytest.raises(StartupError, match=f"127.0.0.1:{taken}"):
                await imds_factory(listen=[f"127.0.0.1:{free}", f"127.0.0.1:{taken}"])
        with socket.socket() as again:
            again.bind(("127.0.0.1", free))  # the first endpoint was closed again

    async def test_an_address_that_never_appears_fails_after_the_wait(self) -> None:
        """192.0.2.1 (TEST-NET-1) is on no interface: bind only, nothing is sent."""
        runner = web.AppRunner(web.Application())
        await runner.setup()
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(StartupError, match=r"192\.0\.2\.1:80"):
                await start_sites(lambda host, port: web.TCPSite(runner, host, port),
                                  (Endpoint("192.0.2.1", 80),), address_wait=0.5)
            assert 0.4 < loop.time() - started < 5
            assert [] == list(runner.sites)
        finally:
            await runner.cleanup()


class TestHopLimit:
    @pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
    async def test_limit_hops_sets_the_ttl_of_the_accepted_socket(self, family: int) -> None:
        if family == socket.AF_INET6 and not has_ipv6_loopback():
            pytest.skip("no IPv6 loopback")
        host = "127.0.0.1" if family == socket.AF_INET else "::1"
        level, option = ((socket.IPPROTO_IP, socket.IP_TTL) if family == socket.AF_INET
                         else (socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS))
        seen: list[int] = []

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert limit_hops(writer.transport, 3)
            seen.append(writer.get_extra_info("socket").getsockopt(level, option))
            writer.close()

        server = await asyncio.start_server(accepted, host, 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection(host, port)
            await reader.read()
            writer.close()
        assert [3] == seen

    def test_limit_hops_without_a_socket_does_nothing(self) -> None:
        assert not limit_hops(None, 1)

    @pytest.mark.parametrize("bad", ["0", "65", "two"])
    def test_the_limit_is_1_to_64_as_on_ec2(self, bad: str) -> None:
        with pytest.raises(ConfigError, match="--hop-limit"):
            load({"hop_limit": bad}, {})
        assert 1 == load({}, {}).hop_limit

    async def test_the_token_response_closes_even_a_kept_alive_connection(
        self, imds_factory: ServerFactory
    ) -> None:
        """The socket keeps the small TTL, so no later response may share it."""
        server = await imds_factory(connection_close="false")
        async with aiohttp.ClientSession() as http:
            async with http.get(server.url + "/latest/meta-data/") as r:
                assert "close" != r.headers.get("Connection", "").lower()
            async with http.put(server.url + "/latest/api/token", headers=TTL) as r:
                assert 200 == r.status
                assert "close" == r.headers["Connection"].lower()


async def test_without_listen_the_server_uses_host_and_port(
    imds_factory: ServerFactory,
) -> None:
    server = await imds_factory()
    assert [server.url] == server.urls
    assert server.url.startswith("http://127.0.0.1:")
