"""
A counting, breakable HTTP proxy in front of the test STS server (moto in server mode).

It forwards every request unchanged and records what reached "STS": the action, its
parameters and the access key id that signed it. It can also stop listening (connection
refused, as when STS is unreachable) and listen again on the same port, answer with
STS-shaped error documents, or hold requests unanswered (STS hung).

Why errors come from the proxy: moto does not evaluate trust policies or throttle, so it
never answers AccessDenied or Throttling to AssumeRole. The proxy answers exactly what STS
sends in those cases (the query-protocol `ErrorResponse` XML with the real codes and
statuses), over a real socket, so botocore parses it as it would parse AWS's.
"""

from __future__ import annotations

import asyncio
import re
import threading
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

import aiohttp
from aiohttp import web

# Made-up base keys, readable as such, for the tests that sign requests to moto. They are
# not a secret and nothing real accepts them; tests that set them also send any call that
# misses the test endpoints to a closed loopback port.
BASE_KEY_ID = "AKIAIMDSTESTBASE7KEY"
BASE_SECRET = "imdsTestBaseSecretNotReal/0123456789abcdef"

_SKIP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection",
                           "accept-encoding", "keep-alive"})
_KEY_ID = re.compile(r"Credential=([A-Z0-9]+)/")
_RESPONSE_KEY_ID = re.compile(r"<AccessKeyId>([^<]+)</AccessKeyId>")


@dataclass(frozen=True)
class Call:
    """One request that reached the proxy."""

    action: str
    params: dict[str, str]
    # The access key id in the SigV4 Authorization header: who signed the call.
    signed_by: str
    status: int
    # The access key id STS handed out in its answer, if any.
    issued_key_id: str = ""


@dataclass(frozen=True)
class Failure:
    status: int
    code: str
    message: str
    # Only requests with these parameters fail (e.g. one RoleArn of a chain).
    when: tuple[tuple[str, str], ...] = ()

    def matches(self, params: dict[str, str]) -> bool:
        return all(params.get(key) == value for key, value in self.when)


def sts_error(status: int, code: str, message: str) -> bytes:
    """An STS (query protocol) error document, as AWS sends it."""
    kind = "Receiver" if status >= 500 else "Sender"
    return (
        '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">\n'
        f"  <Error>\n    <Type>{kind}</Type>\n    <Code>{escape(code)}</Code>\n"
        f"    <Message>{escape(message)}</Message>\n  </Error>\n"
        f"  <RequestId>{uuid.uuid4()}</RequestId>\n</ErrorResponse>\n"
    ).encode()


class StsProxy:
    """The proxy on its own event loop thread, so sync and async tests can both drive it."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="sts-proxy")
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self._failures: dict[str, Failure] = {}
        # Actions held unanswered until `heal()`, and how many requests are held now.
        self._hung: set[str] = set()
        self._held = 0
        self._release: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._client: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -------------------------------------------------------------- control (any thread)

    def start(self) -> StsProxy:
        self._thread.start()
        self._run(self._start())
        return self

    def down(self) -> None:
        """Stop listening: new connections are refused until `up()`."""
        self._run(self._stop_site())

    def up(self) -> None:
        """Listen again, on the same port."""
        self._run(self._start_site())

    def fail(self, action: str, status: int, code: str, message: str, **when: str) -> None:
        """Answer `action` requests (with parameters `when`) with this STS error until `heal()`."""
        with self._lock:
            self._failures[action] = Failure(status, code, message, tuple(when.items()))

    def hang(self, action: str) -> None:
        """Hold `action` requests unanswered (accepted, read, never answered) until `heal()`."""
        with self._lock:
            self._hung.add(action)

    def held(self) -> int:
        """How many requests are being held unanswered now."""
        with self._lock:
            return self._held

    def heal(self) -> None:
        with self._lock:
            self._failures.clear()
            self._hung.clear()
        self._run(self._release_held())

    def calls(self, action: str | None = None, *, ok: bool | None = None) -> list[Call]:
        with self._lock:
            found = [c for c in self._calls if action is None or c.action == action]
        if ok is not None:
            found = [c for c in found if (c.status == 200) == ok]
        return found

    def close(self) -> None:
        self.heal()
        self._run(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(15)

    # -------------------------------------------------------------- on the proxy's loop

    async def _start(self) -> None:
        self._release = asyncio.Event()
        self._client = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await self._start_site()

    async def _start_site(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()
        if not self.port:
            self.port = self._runner.addresses[0][1]

    async def _stop_site(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def _release_held(self) -> None:
        assert self._release is not None
        self._release.set()
        self._release = asyncio.Event()

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._client is not None:
            await self._client.close()

    async def _hold(self) -> None:
        release = self._release
        assert release is not None
        with self._lock:
            self._held += 1
        try:
            await release.wait()
        finally:
            with self._lock:
                self._held -= 1

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        params = dict(urllib.parse.parse_qsl(request.query_string))
        if request.method == "POST":
            params.update(urllib.parse.parse_qsl(body.decode("utf-8", "replace")))
        action = params.get("Action", "")
        match = _KEY_ID.search(request.headers.get("Authorization", ""))
        signed_by = match.group(1) if match else ""
        with self._lock:
            failure = self._failures.get(action)
            hung = action in self._hung
        if hung:
            await self._hold()
        if failure is not None and failure.matches(params):
            status, data = failure.status, sts_error(failure.status, failure.code,
                                                     failure.message)
            content_type = "text/xml"
        else:
            assert self._client is not None
            headers = {k: v for k, v in request.headers.items()
                       if k.lower() not in _SKIP_HEADERS}
            async with self._client.request(request.method, self.upstream + request.path_qs,
                                            headers=headers, data=body) as upstream:
                status, data = upstream.status, await upstream.read()
                content_type = upstream.headers.get("Content-Type", "text/xml")
        issued = _RESPONSE_KEY_ID.search(data.decode("utf-8", "replace"))
        call = Call(action, params, signed_by, status, issued.group(1) if issued else "")
        with self._lock:
            self._calls.append(call)
        response = web.Response(status=status, body=data,
                                headers={"Content-Type": content_type})
        # No keep-alive: when the proxy stops listening, STS must really be unreachable,
        # not still answering on a pooled connection.
        response.force_close()
        return response
