"""Metadata requests: auth modes [A-*], the tree [N-*, R-*, M-*], credentials [C-*]."""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import pytest

from imds.ec2.wire import NOT_FOUND_BODY, VERSIONS
from imds.server import Running
from tests.conftest import ServerFactory
from tests.support import rawhttp

TOKEN = "X-aws-ec2-metadata-token"
TTL = "X-aws-ec2-metadata-token-ttl-seconds"
ROLE = "imds-local-role"


async def get_token(http: aiohttp.ClientSession, url: str, ttl: int = 21600) -> str:
    async with http.put(url + "/latest/api/token", headers={TTL: str(ttl)}) as r:
        assert 200 == r.status
        return await r.text()


async def fetch(
    http: aiohttp.ClientSession, url: str, path: str, token: str | None = None,
    method: str = "GET", **headers: str,
) -> tuple[int, dict[str, str], bytes]:
    if token is not None:
        headers[TOKEN] = token
    async with http.request(method, url + path, headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


@pytest.fixture
async def token(imds: Running, http: aiohttp.ClientSession) -> str:
    return await get_token(http, imds.url)


class TestAuth:
    async def test_required_mode_refuses_a_tokenless_get_with_an_empty_401(
        self, imds: Running, http: aiohttp.ClientSession
    ) -> None:
        """[A-03]"""
        status, headers, body = await fetch(http, imds.url, "/latest/meta-data/")
        assert (401, b"") == (status, body)
        assert "text/plain" == headers["Content-Type"]

    async def test_optional_mode_serves_a_tokenless_get(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        """[A-02] IMDSv1."""
        server = await imds_factory(http_tokens="optional")
        status, headers, body = await fetch(http, server.url, "/latest/meta-data/instance-id")
        assert 200 == status
        assert body.startswith(b"i-")
        # undocumented for v1; no token, so no remaining lifetime to report.
        assert "X-Aws-Ec2-Metadata-Token-Ttl-Seconds" not in headers

    @pytest.mark.parametrize("mode", ["required", "optional"])
    async def test_invalid_token_is_401_in_either_mode(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession, mode: str
    ) -> None:
        """[A-04] Go and JS re-enable IMDSv2 on a 401, which implies this in optional mode."""
        server = await imds_factory(http_tokens=mode)
        status, _, body = await fetch(http, server.url, "/latest/meta-data/", token="bogus")
        assert (401, b"") == (status, body)

    async def test_expired_token_is_401(
        self, imds: Running, http: aiohttp.ClientSession
    ) -> None:
        token = await get_token(http, imds.url, ttl=1)
        assert 200 == (await fetch(http, imds.url, "/latest/meta-data/", token))[0]
        await asyncio.sleep(1.05)
        assert 401 == (await fetch(http, imds.url, "/latest/meta-data/", token))[0]

    async def test_token_bearing_response_reports_remaining_ttl(
        self, imds: Running, http: aiohttp.ClientSession
    ) -> None:
        """[A-07] 21600 just after issue, counting down."""
        token = await get_token(http, imds.url, ttl=21600)
        _, headers, _ = await fetch(http, imds.url, "/latest/meta-data/ami-id", token)
        assert int(headers["X-Aws-Ec2-Metadata-Token-Ttl-Seconds"]) in (21599, 21600)

    async def test_token_with_x_forwarded_for_is_403(
        self, imds: Running, http: aiohttp.ClientSession
    ) -> None:
        """[T-10]"""
        token = await get_token(http, imds.url)
        status, _, body = await fetch(http, imds.url, "/latest/meta-data/", token,
                                      **{"X-Forwarded-For": "10.1.1.1"})
        assert (403, b"") == (status, body)

    async def test_token_works_on_dated_version_prefixes(
        self, imds: Running, http: aiohttp.ClientSession
    ) -> None:
        """[T-20]"""
        token = await get_token(http, imds.url)
        status, _, body = await fetch(http, imds.url, "/2009-04-04/meta-data/instance-id", token)
        assert 200 == status
        assert body.startswith(b"i-")


class TestTree:
    async def test_root_lists_the_versions_bare(
        self, imds: Running, http: aiohttp.ClientSession, token: str
    ) -> None:
        """[N-06] one a line, `latest` last, no final newline."""
        _, _, body = await fetch(http, imds.url, "/", token)
        assert "\n".join(VERSIONS).encode() == body

    async def test_latest_lists_dynamic_and_meta_data(
        self, imds: Running, http: aiohttp.ClientSession, token: str
    ) -> None:
        """[N-07] user-data only when present."""
        _, _, body = await fetch(http, imds.url, "/latest/", token)
        assert b"dynamic\nmeta-data" == body

    async def test_meta_data_listing_is_sorted_dirs_slashed_no_final_newline(
        self, imds: Running, http: aiohttp.ClientSession, token: str
    ) -> None:
        """[R-05] [M-01]"""
        status, headers, body = await fetch(http, imds.url, "/latest/meta-data/", token)
        assert 200 == status
        assert "text/plain" == headers["Content-Type"]
        lines = body.decode().split("\n")
        assert not body.endswith(b"\n")
        assert sorted(lines) == lines
        for item in ("ami-id", "instance-id", "instance-type", "hostname", "local-hostname",
                     "local-ipv4", "mac", "placement/", "iam/", "network/", "services/"):
            assert item in lines

    @pytest.mark.parametrize("path", ["/latest/meta-data/placement/availability-zone",
                                      "/latest/meta-data/placement/availability-zone/"])
    async def test_leaf_answers_with_or_without_trailing_slash(
        self, imds: Running, http: aiohttp.ClientSession, token: str, path: str
    ) -> None:
        """[R-08] botocore's region fetcher asks with the slash."""
        assert (200, b"us-east-1a") == (await fetch(http, imds.url, path, token))[::2]

    @pytest.mark.parametrize("path", ["/latest/meta-data/placement",
                                      "/latest/meta-data/placement/"])
    async def test_directory_lists_with_or_without_trailing_slash(
        self, imds: Running, http: aiohttp.ClientSession, token: str, path: str
    ) -> None:
        """[R-07]"""
        _, _, body = await fetch(http, imds.url, path, token)
        assert b"availability-zone\navailability-zone-id\nregion" == body

    @pytest.mark.parametrize(
        "path, pattern",
        [
            ("ami-id", r"ami-[0-9a-f]{17}"),
            ("instance-id", r"i-[0-9a-f]{17}"),
            ("instance-type", r"m5\.large"),
            ("hostname", r"ip-172-31-16-10\.ec2\.internal"),
            ("local-hostname", r"ip-172-31-16-10\.ec2\.internal"),
            ("local-ipv4", r"172\.31\.16\.10"),
            ("mac", r"([0-9a-f]{2}:){5}[0-9a-f]{2}"),
            ("placement/region", r"us-east-1"),
            ("placement/availability-zone-id", r"use1-az1"),
            ("services/partition", r"aws"),
            ("services/domain", r"amazonaws\.com"),
            ("instance-action", r"none"),
        ],
    )
    async def test_instance_basics_are_realistic(
        self, imds: Running, http: aiohttp.ClientSession, token: str, path: str, pattern: str
    ) -> None:
        """[M-02] [M-03] values have no trailing newline [R-03]."""
        status, _, body = await fetch(http, imds.url, "/latest/meta-data/" + path, token)
        assert 200 == status
        assert re.fullmatch(pattern, body.decode()), body

    @pytest.mark.parametrize(
        "path",
        ["/latest/meta-data/nope", "/latest/meta-data/placement/nope/", "/nope",
         "/latest/meta-data/ami-id/extra", "/latest/user-data", "/2099-01-01/meta-data/"],
    )
    async def test_unknown_path_is_404_with_ec2s_body(
        self, imds: Running, http: aiohttp.ClientSession, token: str, path: str
    ) -> None:
        """[R-06]"""
        status, headers, body = await fetch(http, imds.url, path, token)
        assert (404, NOT_FOUND_BODY) == (status, body)
        assert "text/plain" == headers["Content-Type"]

    async def test_head_answers_headers_without_body(
        self, imds: Running, http: aiohttp.ClientSession, token: str
    ) -> None:
        """[T-18]"""
        status, headers, body = await fetch(http, imds.url, "/latest/meta-data/ami-id", token,
                                            method="HEAD")
        assert (200, b"") == (status, body)
        assert "21" == headers["Content-Length"]

    @pytest.mark.parametrize("method", ["POST", "DELETE", "PUT", "PATCH"])
    async def test_other_methods_on_metadata_are_405(
        self, imds: Running, http: aiohttp.ClientSession, token: str, method: str
    ) -> None:
        """[Q-02] undocumented: 405 naming GET and HEAD."""
        status, headers, _ = await fetch(http, imds.url, "/latest/meta-data/", token,
                                         method=method)
        assert 405 == status
        assert "GET, HEAD" == headers["Allow"]

    async def test_every_response_looks_like_ec2s(
        self, imds: Running, http: aiohttp.ClientSession, token: str
    ) -> None:
        """[N-04] [R-02]"""
        _, headers, _ = await fetch(http, imds.url, "/latest/meta-data/ami-id", token)
        assert "EC2ws" == headers["Server"]
        assert "close" == headers["Connection"]
        assert "none" == headers["Accept-Ranges"]
        assert headers["Last-Modified"].endswith("GMT")


class TestCredentials:
    async def test_role_listing_is_the_bare_role_name(
        self, imds: Running, http: aiohttp.ClientSession, token: str
    ) -> None:
        """[R-04] [C-02] botocore uses the raw body as the role name."""
        _, _, body = await fetch(http, imds.url, "/latest/meta-data/iam/security-credentials/",
                                 token)
        assert ROLE.encode() == body

    async def test_credentials_document_is_byte_compatible_with_ec2(
        self, imds: Running, http: aiohttp.ClientSession, token: str
    ) -> None:
        """[C-03] field names and order, spacing, formats, no trailing newline."""
        status, headers, body = await fetch(
            http, imds.url, f"/latest/meta-data/iam/security-credentials/{ROLE}", token)
        assert 200 == status
        assert "text/plain" == headers["Content-Type"]
        text = body.decode()
        pattern = (
            r'\{\n'
            r'  "Code" : "Success",\n'
            r'  "LastUpdated" : "(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)",\n'
            r'  "Type" : "AWS-HMAC",\n'
            r'  "AccessKeyId" : "ASIA[A-Z2-7]{16}",\n'
            r'  "SecretAccessKey" : "[A-Za-z0-9/+]{40}",\n'
            r'  "Token" : "[A-Za-z0-9/+=]{200,}",\n'
            r'  "Expiration" : "(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)"\n'
            r'\}'
        )
        match = re.fullmatch(pattern, text)
        assert match, text[:300]
        document = json.loads(text)
        current = imds.rotator.current
        assert current is not None
        assert current.credentials.access_key_id == document["AccessKeyId"]

    async def test_iam_info_names_the_instance_profile(
        self, imds: Running, http: aiohttp.ClientSession, token: str
    ) -> None:
        """[C-01]"""
        _, _, body = await fetch(http, imds.url, "/latest/meta-data/iam/info", token)
        assert re.fullmatch(
            r'\{\n  "Code" : "Success",\n  "LastUpdated" : "[0-9TZ:-]{20}",\n'
            r'  "InstanceProfileArn" : "arn:aws:iam::123456789012:instance-profile/'
            r'imds-local-role",\n  "InstanceProfileId" : "AIPA[A-Z2-7]{17}"\n\}',
            body.decode(),
        ), body

    async def test_unknown_role_is_404(
        self, imds: Running, http: aiohttp.ClientSession, token: str
    ) -> None:
        """[C-04]"""
        status, _, body = await fetch(
            http, imds.url, "/latest/meta-data/iam/security-credentials/other-role", token)
        assert (404, NOT_FOUND_BODY) == (status, body)

    async def test_role_name_setting_is_served(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        server = await imds_factory(role_name="app-role")
        token = await get_token(http, server.url)
        _, _, body = await fetch(http, server.url,
                                 "/latest/meta-data/iam/security-credentials/", token)
        assert b"app-role" == body


class TestBadInput:
    @pytest.mark.parametrize(
        "raw",
        [
            pytest.param(b"GARBAGE\r\n\r\n", id="not-http"),
            pytest.param(b"GET /latest/meta-data/ HTTP/9.9\r\nHost: x\r\n\r\n", id="bad-version"),
            pytest.param(b"GET /latest/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n", id="non-utf8-path"),
            pytest.param(b"GET /latest/meta-data/ HTTP/1.1\r\nBad Header\r\n\r\n",
                         id="malformed-header"),
            pytest.param(b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", id="overlong-path"),
            pytest.param(b"GET /latest/ HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
                         id="overlong-header"),
        ],
    )
    async def test_malformed_request_gets_4xx_and_server_keeps_serving(
        self, imds: Running, http: aiohttp.ClientSession, raw: bytes
    ) -> None:
        response = await rawhttp.send(imds.url, raw)
        assert response is None or 400 <= response.status < 500
        token = await get_token(http, imds.url)
        assert 200 == (await fetch(http, imds.url, "/latest/meta-data/", token))[0]
