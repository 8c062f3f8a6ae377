"""The `Host` check against DNS rebinding and the client allow-list, on real sockets."""

from __future__ import annotations

import aiohttp
import pytest

from imds.config import load
from imds.ec2.guard import Guard, host_name
from imds.errors import ConfigError
from tests.conftest import ServerFactory
from tests.support import rawhttp

TTL = {"X-aws-ec2-metadata-token-ttl-seconds": "60"}


async def put_token(http: aiohttp.ClientSession, url: str, **headers: str) -> int:
    async with http.put(url + "/latest/api/token", headers={**TTL, **headers}) as r:
        return r.status


class TestHostHeader:
    @pytest.mark.parametrize(
        ("header", "expected"),
        [
            ("169.254.169.254", ("169.254.169.254", True)),
            ("169.254.169.254:80", ("169.254.169.254", True)),
            ("[fd00:ec2::254]", ("fd00:ec2::254", True)),
            ("[fd00:ec2::254]:80", ("fd00:ec2::254", True)),
            ("fd00:ec2::254", ("fd00:ec2::254", True)),
            ("LocalHost:1338", ("localhost", False)),
            ("evil.example.", ("evil.example", False)),
            ("169.254.169.254.nip.io", ("169.254.169.254.nip.io", False)),
            ("[fd00:ec2::254]junk", ("[fd00:ec2::254]junk", False)),
            ("169.254.169.254:eighty", ("169.254.169.254:eighty", False)),
        ],
    )
    def test_host_part_and_literal_are_split_out(
        self, header: str, expected: tuple[str, bool]
    ) -> None:
        assert expected == host_name(header)

    @pytest.mark.parametrize(
        "host",
        ["169.254.169.254", "169.254.169.254:80", "[fd00:ec2::254]:80", "127.0.0.1:1338",
         "[::1]:1338", "localhost", "localhost:1338", "10.89.0.1:8080"],
    )
    async def test_addresses_and_localhost_are_served(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession, host: str
    ) -> None:
        server = await imds_factory()
        assert 200 == await put_token(http, server.url, Host=host)

    @pytest.mark.parametrize("host", ["evil.example", "evil.example:1338", "imds",
                                      "169.254.169.254.nip.io", "localhost.evil.example"])
    async def test_a_dns_name_is_refused_with_an_empty_403(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession, host: str
    ) -> None:
        """A rebinding page reaches us under its own name: [N-03] [K-08] 403."""
        server = await imds_factory(http_tokens="optional")
        assert 403 == await put_token(http, server.url, Host=host)
        async with http.get(server.url + "/latest/meta-data/iam/security-credentials/",
                            headers={"Host": host}) as r:
            assert (403, b"") == (r.status, await r.read())
            assert "EC2ws" == r.headers["Server"]

    async def test_an_allowed_name_is_served(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        """A compose service name (`http://imds/`) works once allowed."""
        server = await imds_factory(allow_host="imds")
        assert 200 == await put_token(http, server.url, Host="imds")
        assert 200 == await put_token(http, server.url, Host="IMDS:80")
        assert 403 == await put_token(http, server.url, Host="other")

    async def test_star_turns_the_check_off(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        server = await imds_factory(allow_host="*")
        assert 200 == await put_token(http, server.url, Host="anything.example")

    async def test_a_request_without_host_is_served(self, imds_factory: ServerFactory) -> None:
        """HTTP/1.0 without Host: browsers always send one, so it is no rebinding."""
        server = await imds_factory()
        raw = (b"PUT /latest/api/token HTTP/1.0\r\n"
               b"X-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n")
        response = await rawhttp.send(server.url, raw)
        assert response is not None and 200 == response.status

    async def test_the_server_keeps_serving_after_refusals(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        server = await imds_factory()
        for n in range(50):
            assert 403 == await put_token(http, server.url, Host=f"rebind-{n}.example")
        assert 200 == await put_token(http, server.url)

    def test_caches_stay_bounded(self) -> None:
        guard = Guard.of(allow_clients=["10.0.0.0/8"])
        for n in range(10_000):
            guard.admits(f"name-{n}.example", f"10.0.{n // 256 % 256}.{n % 256}")
        assert len(guard._hosts) <= 4096 and len(guard._clients) <= 4096


class TestClientAllowList:
    async def test_callers_outside_the_networks_get_403(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        server = await imds_factory(allow_client="10.89.0.0/24")
        assert 403 == await put_token(http, server.url)

    async def test_callers_inside_are_served(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        server = await imds_factory(allow_client="127.0.0.0/8")
        assert 200 == await put_token(http, server.url)

    async def test_each_source_address_is_judged_on_its_own(
        self, imds_factory: ServerFactory
    ) -> None:
        """Loopback has a /8: 127.0.0.2 is allowed, 127.0.0.3 is not."""
        server = await imds_factory(allow_client="127.0.0.2/32")
        statuses = []
        for source in ("127.0.0.2", "127.0.0.3"):
            connector = aiohttp.TCPConnector(force_close=True, local_addr=(source, 0))
            async with aiohttp.ClientSession(connector=connector) as http:
                statuses.append(await put_token(http, server.url))
        assert [200, 403] == statuses

    def test_an_ipv4_mapped_caller_is_judged_as_ipv4(self) -> None:
        guard = Guard.of(allow_clients=["10.0.0.0/8"])
        assert guard.admits(None, "::ffff:10.1.2.3")
        assert not guard.admits(None, "::ffff:192.0.2.1")
        assert not guard.admits(None, None)

    def test_networks_are_checked_and_normalised_when_loaded(self) -> None:
        config = load({}, {"IMDS_ALLOW_CLIENT": "10.89.0.7/24; fd00::1"})
        assert ("10.89.0.0/24", "fd00::1/128") == config.allow_client
        with pytest.raises(ConfigError, match="IMDS_ALLOW_CLIENT"):
            load({}, {"IMDS_ALLOW_CLIENT": "10.89.0.0/33"})
        with pytest.raises(ConfigError, match="allow-host"):
            load({"allow_host": ["bad name"]}, {})
