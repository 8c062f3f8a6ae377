"""A small IMDSv2 client over aiohttp for the instance and identity tests, and a blocking
reader of the served credentials for the SDK tests."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from urllib.request import Request, urlopen

import aiohttp

from imds.ec2.wire import TOKEN_HEADER, TTL_HEADER


@dataclass
class Reply:
    status: int
    content_type: str
    body: bytes


@dataclass
class MetadataClient:
    """GETs with a token (fetched once), the way SDKs talk to IMDS."""

    http: aiohttp.ClientSession
    url: str
    _token: str = field(default="", repr=False)

    async def token(self) -> str:
        if not self._token:
            async with self.http.put(self.url + "/latest/api/token",
                                     headers={TTL_HEADER: "21600"}) as response:
                assert 200 == response.status
                self._token = await response.text()
        return self._token

    async def get(self, path: str) -> Reply:
        headers = {TOKEN_HEADER: await self.token()}
        async with self.http.get(self.url + path, headers=headers) as response:
            return Reply(response.status, response.headers.get("Content-Type", ""),
                         await response.read())

    async def body(self, path: str) -> bytes:
        """The body of a path that must exist."""
        reply = await self.get(path)
        assert 200 == reply.status, (path, reply.status)
        return reply.body

    async def text(self, path: str) -> str:
        return (await self.body(path)).decode("utf-8")

    async def listing(self, path: str) -> list[str]:
        return (await self.text(path)).split("\n")


def served_document(url: str) -> dict[str, str]:
    """What imds serves right now, read the way any IMDSv2 client reads it."""
    ttl = {TTL_HEADER: "60"}
    with urlopen(Request(url + "/latest/api/token", method="PUT", headers=ttl)) as r:
        token = r.read().decode()
    base = url + "/latest/meta-data/iam/security-credentials/"
    headers = {TOKEN_HEADER: token}
    with urlopen(Request(base, headers=headers)) as r:
        role = r.read().decode()
    with urlopen(Request(base + role, headers=headers)) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]
