"""A small IMDSv2 client over aiohttp for the instance and identity tests."""

from __future__ import annotations

from dataclasses import dataclass, field

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
