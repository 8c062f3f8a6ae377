"""Helpers for the rotation lab tests: the control API over a real socket."""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from imds.server import Running
from tests.http.test_metadata_http import ROLE, TOKEN, TTL

CREDENTIALS = f"/latest/meta-data/iam/security-credentials/{ROLE}"


class ControlAPI:
    """The control API of one server, spoken over HTTP with its bearer token."""

    def __init__(self, http: aiohttp.ClientSession, running: Running) -> None:
        assert running.control is not None
        self.http = http
        self.url = running.control.url
        self.token = running.control.token
        self.running = running

    async def call(self, method: str, path: str, body: Any = None,
                   token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token if token is None else token}"}
        async with self.http.request(method, self.url + path, json=body,
                                     headers=headers) as r:
            if r.content_type == "application/json":
                return r.status, await r.json()
            return r.status, await r.text()

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, data = await self.call(method, path, body)
        assert status in (200, 201), (status, data)
        return data

    async def fault(self, **spec: Any) -> dict[str, Any]:
        return await self.ok("POST", "/api/faults", spec)  # type: ignore[no-any-return]

    async def status(self) -> dict[str, Any]:
        return await self.ok("GET", "/api/status")  # type: ignore[no-any-return]


async def token(http: aiohttp.ClientSession, url: str) -> str:
    async with http.put(url + "/latest/api/token", headers={TTL: "21600"}) as r:
        assert 200 == r.status
        return await r.text()


async def get(http: aiohttp.ClientSession, url: str, path: str,
              tok: str | None = None) -> tuple[int, bytes]:
    headers = {TOKEN: tok} if tok else {}
    async with http.get(url + path, headers=headers) as r:
        return r.status, await r.read()


def timed() -> float:
    return time.perf_counter()
