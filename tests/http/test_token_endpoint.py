"""`PUT /latest/api/token` answers exactly as EC2 does [T-*]."""

from __future__ import annotations

import aiohttp
import pytest

from imds.ec2.wire import BAD_REQUEST_BODY, METHOD_NOT_ALLOWED_BODY
from imds.server import Running
from tests.support import rawhttp

TTL = "X-aws-ec2-metadata-token-ttl-seconds"


class TestTokenIssue:
    @pytest.mark.parametrize("ttl", ["1", "300", "21600"])
    async def test_valid_ttl_gets_a_token_and_the_ttl_back(
        self, imds: Running, http: aiohttp.ClientSession, ttl: str
    ) -> None:
        """[T-05] [T-06] 200 text/plain token body, granted TTL echoed in the header."""
        async with http.put(imds.url + "/latest/api/token", headers={TTL: ttl}) as r:
            body = await r.read()
            assert 200 == r.status
            assert "text/plain" == r.headers["Content-Type"]
            assert ttl == r.headers["X-Aws-Ec2-Metadata-Token-Ttl-Seconds"]
            assert "EC2ws" == r.headers["Server"]
            assert 56 == len(body)
            assert not body.endswith(b"\n")

    async def test_lowercase_header_name_is_accepted(
        self, imds: Running, http: aiohttp.ClientSession
    ) -> None:
        """[T-15] the SDKs send the header in lower case."""
        async with http.put(imds.url + "/latest/api/token",
                            headers={TTL.lower(): "21600"}) as r:
            assert 200 == r.status

    @pytest.mark.parametrize(
        "headers",
        [
            pytest.param({}, id="missing"),
            pytest.param({TTL: "0"}, id="zero"),
            pytest.param({TTL: "21601"}, id="too-long"),
            pytest.param({TTL: "-5"}, id="negative"),
            pytest.param({TTL: "abc"}, id="not-a-number"),
            pytest.param({TTL: "60.5"}, id="fraction"),
        ],
    )
    async def test_bad_ttl_is_400(
        self, imds: Running, http: aiohttp.ClientSession, headers: dict[str, str]
    ) -> None:
        """[T-03] [T-04]"""
        async with http.put(imds.url + "/latest/api/token", headers=headers) as r:
            assert 400 == r.status
            assert BAD_REQUEST_BODY == await r.read()

    async def test_x_forwarded_for_is_403(
        self, imds: Running, http: aiohttp.ClientSession
    ) -> None:
        """[T-09] the SSRF defence: PUTs relayed by a proxy are refused."""
        headers = {TTL: "21600", "X-Forwarded-For": "10.0.0.1"}
        async with http.put(imds.url + "/latest/api/token", headers=headers) as r:
            assert 403 == r.status
            assert b"" == await r.read()

    @pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "PATCH", "HEAD"])
    async def test_other_methods_are_405_with_allow(
        self, imds: Running, http: aiohttp.ClientSession, method: str
    ) -> None:
        """[T-11]"""
        async with http.request(method, imds.url + "/latest/api/token",
                                headers={TTL: "21600"}) as r:
            assert 405 == r.status
            assert "OPTIONS, PUT" == r.headers["Allow"]
            if method != "HEAD":
                assert METHOD_NOT_ALLOWED_BODY == await r.read()

    @pytest.mark.parametrize("path", ["/latest/api/token/", "/2021-03-23/api/token"])
    async def test_put_to_a_near_miss_token_path_is_403(
        self, imds: Running, http: aiohttp.ClientSession, path: str
    ) -> None:
        """[T-12] trailing slash and [T-13] dated prefix: 403, empty body."""
        async with http.put(imds.url + path, headers={TTL: "21600"}) as r:
            assert 403 == r.status
            assert b"" == await r.read()

    async def test_expect_100_continue_is_417(self, imds: Running) -> None:
        """[T-14] EC2 refuses to wait for a body."""
        response = await rawhttp.send(imds.url, rawhttp.request(
            "PUT", "/latest/api/token",
            {TTL: "21600", "Expect": "100-continue", "Content-Length": "5"}))
        assert response is not None
        assert 417 == response.status

    async def test_request_body_is_refused(self, imds: Running) -> None:
        response = await rawhttp.send(imds.url, rawhttp.request(
            "PUT", "/latest/api/token", {TTL: "21600", "Content-Length": "5"}, b"hello"))
        assert response is not None
        assert 400 == response.status

    async def test_issuing_a_token_does_not_invalidate_earlier_ones(
        self, imds: Running, http: aiohttp.ClientSession
    ) -> None:
        """[T-08] [T-17] SDKs fetch a token per call; all of them stay valid."""
        tokens = []
        for _ in range(20):
            async with http.put(imds.url + "/latest/api/token", headers={TTL: "60"}) as r:
                tokens.append(await r.text())
        for token in tokens:
            async with http.get(imds.url + "/latest/meta-data/instance-id",
                                headers={"X-aws-ec2-metadata-token": token}) as r:
                assert 200 == r.status
