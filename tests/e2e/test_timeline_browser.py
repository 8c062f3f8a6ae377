"""
The live timeline page in a real headless Chromium (Debian's `chromium`), driven over the
DevTools protocol with aiohttp's websocket client: no browser download, no extra package.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from imds.server import Running
from tests.conftest import ServerFactory
from tests.support.labutil import CREDENTIALS, ControlAPI, get, token

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                       "(scripts/system-deps installs it when it can run apt-get)"),
]

# What this machine's network allows: no background fetches to Google, a fresh profile.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         "--remote-debugging-port=0", "--window-size=1200,800")
# Null-safe: the page may still be loading when the test first looks.
KEY_TEXT = "document.querySelector('#current-key')?.textContent"


class Page:
    """One page of a Chromium started for the test, spoken to over CDP."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        await self._ws.send_json({"id": call_id, "method": method, "params": params})
        while True:
            message = await asyncio.wait_for(self._ws.receive_json(), 10)
            if message.get("id") == call_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message["result"]  # type: ignore[no-any-return]

    async def js(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def until(self, expression: str, check: Callable[[Any], bool],
                    timeout: float = 10.0) -> Any:
        """Poll `expression` until `check` holds: the page updates itself, we only look."""
        deadline = asyncio.get_running_loop().time() + timeout
        value = None
        while asyncio.get_running_loop().time() < deadline:
            value = await self.js(expression)
            if check(value):
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"{expression} stayed {value!r}")


@contextlib.asynccontextmanager
async def chromium(url: str, profile: Path) -> AsyncIterator[Page]:
    assert CHROMIUM is not None
    process = await asyncio.create_subprocess_exec(
        CHROMIUM, *FLAGS, f"--user-data-dir={profile}", url,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("chromium did not open its DevTools port in 30 s")
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as r:
                targets = await r.json()
            page = next(t for t in targets if t["type"] == "page")
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                yield Page(ws)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


@pytest.fixture
async def lab(imds_factory: ServerFactory, http: aiohttp.ClientSession) -> ControlAPI:
    return ControlAPI(http, await imds_factory())


def hint(running: Running) -> str:
    assert running.rotator.current is not None
    return running.rotator.current.credentials.key_hint


class TestTimelinePage:
    async def test_shows_the_current_key_and_moves_after_a_rotation(
        self, lab: ControlAPI, http: aiohttp.ClientSession, tmp_path: Path
    ) -> None:
        first = hint(lab.running)
        tok = await token(http, lab.running.url)
        await get(http, lab.running.url, CREDENTIALS, tok)
        async with chromium(f"{lab.url}/#token={lab.token}", tmp_path / "profile") as page:
            shown = await page.until(KEY_TEXT,
                                     lambda v: v == first)
            assert first == shown
            # The token left the address bar (it is kept in sessionStorage).
            assert "" == await page.js("location.hash")
            assert 1 == await page.js("document.querySelectorAll('rect.generation').length")
            assert 1 <= await page.js("document.querySelectorAll('circle.fetch').length")

            rotated = await lab.ok("POST", "/api/rotate")
            await lab.fault(kind="status", status=503, duration=60)
            # No reload: the page polls and redraws by itself.
            await page.until(KEY_TEXT,
                             lambda v: v == rotated["key"])
            assert rotated["key"] != first
            keys = await page.until(
                "[...document.querySelectorAll('rect.generation')].map(r => r.dataset.key)",
                lambda v: v is not None and len(v) == 2)
            assert [first, rotated["key"]] == keys
            assert "status" == await page.until(
                "document.querySelector('g.fault')?.dataset.kind", lambda v: v is not None)
            assert "503" in await page.js("document.querySelector('#faults').textContent")

    async def test_without_the_token_the_page_asks_for_it(
        self, lab: ControlAPI, tmp_path: Path
    ) -> None:
        async with chromium(f"{lab.url}/", tmp_path / "profile") as page:
            await page.until("document.querySelector('#conn')?.textContent",
                             lambda v: v == "token needed")
            assert False is await page.js("document.querySelector('#auth').hidden")
            assert "—" == await page.js(KEY_TEXT)
            # Typing the token in: the page goes live.
            await page.js(f"document.querySelector('#token-input').value = "
                          f"{json.dumps(lab.token)}; document.querySelector('#auth')"
                          ".requestSubmit(); true")
            await page.until(KEY_TEXT,
                             lambda v: v == hint(lab.running))

    async def test_the_rotate_button_rotates(self, lab: ControlAPI, tmp_path: Path) -> None:
        first = hint(lab.running)
        async with chromium(f"{lab.url}/#token={lab.token}", tmp_path / "profile") as page:
            await page.until(KEY_TEXT,
                             lambda v: v == first)
            await page.js("document.querySelector('button[data-action=rotate]').click(); true")
            shown = await page.until(KEY_TEXT,
                                     lambda v: v != first)
        assert hint(lab.running) == shown
        assert 2 == len(lab.running.rotator.history)
