"""
Starting and stopping the server: in the foreground for the CLI, in a thread for tests.

Startup order matters: the first credentials are fetched before the socket accepts
anything, so no request ever waits for a fetch and no SDK times out on a cold start.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from imds.app import make_app
from imds.config import Config
from imds.errors import SourceError, StartupError
from imds.instance import build_tree
from imds.rotation import Rotator
from imds.sources import CredentialSource, LocalSource
from imds.tokens import TokenSigner


def build_source(config: Config, clock: Callable[[], float]) -> CredentialSource:
    """The credential source the configuration asks for."""
    return LocalSource(config.role_name, config.account_id, config.credential_lifetime, clock)


@dataclass
class Running:
    """A started server: where it listens and the parts tests may drive."""

    runner: web.AppRunner
    url: str
    rotator: Rotator
    signer: TokenSigner
    config: Config

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start(
    config: Config,
    *,
    source: CredentialSource | None = None,
    clock: Callable[[], float] = time.time,
) -> Running:
    """Fetch the first credentials, then bind and start accepting requests."""
    source = source or build_source(config, clock)
    rotator = Rotator(source, refresh_ahead=config.refresh_ahead, clock=clock)
    try:
        await rotator.prime()
    except SourceError as exc:
        raise StartupError(f"could not get the first credentials for role "
                           f"{source.role.name}: {exc}") from exc
    started = dt.datetime.now(dt.UTC)
    tree = build_tree(config, rotator, clock, started)
    signer = TokenSigner(clock)
    app = make_app(config, tree=tree, rotator=rotator, clock=clock, signer=signer,
                   started=started)
    runner = web.AppRunner(app, access_log_format='%a "%r" %s %b %Tf', handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") \
            from exc
    return Running(runner, _url(runner), rotator, signer, config)


def _url(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


async def serve(config: Config) -> None:
    """Run until SIGINT or SIGTERM, printing where the server listens."""
    running = await start(config)
    role = running.rotator.source.role
    print(f"imds: listening on {running.url} (IMDSv2 {config.http_tokens})", flush=True)
    print(f"imds: serving role {role.name} from {running.rotator.source.describe()}",
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        print("imds: shutting down", file=sys.stderr, flush=True)
        await running.stop()


class ServerThread:
    """
    The server on its own event loop in a daemon thread, for synchronous callers (boto3
    tests, the pytest plugin). `start()` returns once the socket accepts connections.
    """

    def __init__(self, config: Config, *, source: CredentialSource | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._source = source
        self._clock = clock
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="imds-server")
        self.running: Running | None = None

    def start(self) -> Running:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            start(self._config, source=self._source, clock=self._clock), self._loop
        )
        self.running = future.result(timeout=30)
        return self.running

    def call(self, coro_fn: Callable[[], object], timeout: float = 30) -> object:
        """Run a coroutine function on the server's loop and return its result."""
        async def wrapper() -> object:
            return await coro_fn()  # type: ignore[misc]

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(timeout)

    def stop(self) -> None:
        if self.running is not None:
            asyncio.run_coroutine_threadsafe(self.running.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()
