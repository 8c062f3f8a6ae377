"""
Debug logging never carries a secret: representative traffic (SDK fetches, rotations,
bad and expired tokens, malformed requests that quote a token, request bodies) against
`imds serve --log-level debug` and against an in-process server with every logger at
DEBUG, then a search of everything logged.

Beyond the values seen on the wire, the search uses shapes no log line may contain: a full
access key id, a session token's opening, an IMDS token.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import aiohttp
import boto3
import pytest

from imds.logs import JsonFormatter
from imds.server import Running
from tests.conftest import ServerFactory
from tests.support import rawhttp
from tests.support.processes import clean_env, run_imds
from tests.support.sts_support import BASE_KEY_ID, BASE_SECRET

TTL = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN = "X-aws-ec2-metadata-token"
CREDENTIALS = "/latest/meta-data/iam/security-credentials/"

# Shapes of secrets, whatever their value: a full temporary or long-term key id (logs may
# show the last four characters only), the opening of every session token LocalSource
# mints and of real STS tokens, an IMDS token as imds issues them [T-07].
SHAPES = {
    "access key id": re.compile(r"\b(ASIA|AKIA)[A-Z0-9]{16}\b"),
    "session token": re.compile(r"IQoJb3JpZ2lu"),
    "IMDS token": re.compile(r"AQAEA[A-Za-z0-9_-]{49}=="),
}


class Secrets:
    """Every secret value the traffic saw, to be searched for in the logs."""

    def __init__(self) -> None:
        self.values: set[str] = set()

    def document(self, body: bytes) -> None:
        doc = json.loads(body)
        self.values.update({doc["SecretAccessKey"], doc["Token"], doc["AccessKeyId"]})

    def add(self, *values: str) -> None:
        self.values.update(v for v in values if len(v) >= 8)

    def leaks(self, text: str) -> list[str]:
        found = [f"value {v[:6]}…" for v in self.values if v in text]
        found += [f"{name}: {m.group(0)[:8]}…" for name, pattern in SHAPES.items()
                  for m in pattern.finditer(text)]
        return found


async def traffic(url: str, secrets: Secrets, *, rotations: Callable[[], int]) -> None:
    """What the suite sends, in miniature: good SDK traffic and every kind of bad input."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def put(ttl: str = "21600", **headers: str) -> str:
            async with http.put(url + "/latest/api/token", headers={TTL: ttl, **headers}) as r:
                return await r.text()

        async def get(path: str, token: str | None, **headers: str) -> tuple[int, bytes]:
            if token is not None:
                headers[TOKEN] = token
            async with http.get(url + path, headers=headers) as r:
                return r.status, await r.read()

        token = await put()
        secrets.add(token)
        short = await put("1")
        secrets.add(short)
        seen = rotations()
        deadline = time.monotonic() + 10
        # Keep fetching until a rotation has happened (the short lifetime forces one), so
        # rotation log lines are in the output alongside the documents they replaced.
        while True:
            _, role = await get(CREDENTIALS, token)
            status, body = await get(CREDENTIALS + role.decode(), token)
            assert 200 == status
            secrets.document(body)
            if rotations() > seen or time.monotonic() > deadline:
                break
            await _sleep(0.2)
        assert rotations() > seen, "no rotation happened during the traffic"
        await get("/latest/meta-data/nope", token)
        await get(f"/latest/meta-data/{token}", token)  # pasted into the path by mistake
        await get("/latest/dynamic/instance-identity/document", token)
        await get(CREDENTIALS, None)
        await get(CREDENTIALS, token[:-3] + "abc")
        await get(CREDENTIALS, token, **{"X-Forwarded-For": "10.0.0.1"})
        await put(**{"X-Forwarded-For": "10.0.0.1"})
        await put("0")
        await get(CREDENTIALS, short)  # expired by now
        async with http.head(url + CREDENTIALS, headers={TOKEN: token}) as r:
            assert 200 == r.status
    # Requests no polite client sends, each carrying a token where a parser error or a
    # traceback could quote it.
    for raw in (
        f"GET {CREDENTIALS} HTTP/1.1\r\n{TOKEN}: {token}\x00\r\n\r\n".encode(),
        f"GET {CREDENTIALS} HTTP/1.1\r\nX-Long: {token * 200}\r\n\r\n".encode(),
        f"GET /{token} HTTP/1.1\r\nBad Header: {token}\r\n\r\n".encode(),
        f"GET {CREDENTIALS}{token} HTTP/9.9\r\n\r\n".encode(),
        rawhttp.request("PUT", "/latest/api/token", {TTL: "60", "Content-Length": "56"},
                        token.encode()),
        rawhttp.request("GET", CREDENTIALS, {TOKEN: token, "Transfer-Encoding": "chunked"},
                        f"38\r\n{token}\r\n0\r\n\r\n".encode()),
    ):
        await rawhttp.send(url, raw)


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


def boto3_fetch(url: str, monkeypatch: pytest.MonkeyPatch, secrets: Secrets) -> None:
    """The real SDK's default chain, as the suite's SDK tests drive it."""
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", url)
    credentials = boto3.Session().get_credentials()
    assert credentials is not None and "iam-role" == credentials.method
    frozen = credentials.get_frozen_credentials()
    secrets.add(frozen.access_key, frozen.secret_key, frozen.token or "")


def formatted(records: Iterable[logging.LogRecord]) -> str:
    """The records as both of imds's formats print them."""
    text, json_lines = logging.Formatter("%(name)s %(message)s"), JsonFormatter()
    lines = []
    for record in records:
        lines.append(text.format(record))
        lines.append(json_lines.format(record))
    return "\n".join(lines)


class TestDebugLogs:
    async def test_in_process_debug_logs_hold_no_secret(
        self, imds_factory: ServerFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        server: Running = await imds_factory(credential_lifetime=2, refresh_ahead=1)
        secrets = Secrets()
        await traffic(server.url, secrets,
                      rotations=lambda: sum(e.ok for e in server.rotator.history))
        assert any("rotated credentials" in r.getMessage() for r in caplog.records)
        assert any(r.name == "imds.httpd" for r in caplog.records)
        assert [] == secrets.leaks(formatted(caplog.records))

    def test_serve_at_debug_level_logs_no_secret(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        secrets = Secrets()
        args = ("--log-level", "debug", "--credential-lifetime", "2", "--refresh-ahead", "1")
        with run_imds(*args, env=clean_env(tmp_path)) as server:
            import asyncio

            def rotations() -> int:
                return sum("rotated credentials" in line for line in server.stderr)

            asyncio.run(traffic(server.url, secrets, rotations=rotations))
            boto3_fetch(server.url, monkeypatch, secrets)
        logged = "".join(server.stderr)
        assert "DEBUG" in logged
        assert [] == secrets.leaks(logged)

    def test_sts_backed_serve_logs_neither_base_nor_served_credentials(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_url: str
    ) -> None:
        secrets = Secrets()
        secrets.add(BASE_KEY_ID, BASE_SECRET)
        env = clean_env(tmp_path, AWS_ACCESS_KEY_ID=BASE_KEY_ID,
                        AWS_SECRET_ACCESS_KEY=BASE_SECRET,
                        HTTPS_PROXY="http://127.0.0.1:9")
        args = ("--log-level", "debug", "--role-arn", "arn:aws:iam::111122223333:role/logs",
                "--sts-endpoint-url", moto_url)
        with run_imds(*args, env=env) as server:
            boto3_fetch(server.url, monkeypatch, secrets)
            import asyncio

            async def fetch() -> None:
                async with aiohttp.ClientSession() as http:
                    async with http.put(server.url + "/latest/api/token",
                                        headers={TTL: "60"}) as r:
                        token = await r.text()
                    secrets.add(token)
                    async with http.get(server.url + CREDENTIALS, headers={TOKEN: token}) as r:
                        role = await r.text()
                    async with http.get(server.url + CREDENTIALS + role,
                                        headers={TOKEN: token}) as r:
                        secrets.document(await r.read())

            asyncio.run(fetch())
        logged = "".join(server.stderr)
        assert "DEBUG" in logged
        assert [] == secrets.leaks(logged)
