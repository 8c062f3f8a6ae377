"""
Stopping on a signal, well within the time a container engine allows.

`imds serve` stops the same way on SIGTERM (`docker stop`, systemd, `kill`), SIGINT
(Ctrl-C) and SIGHUP (its terminal closed; there is no configuration to reload, so a
reload signal would have nothing to do): the listeners close at once, requests in
progress get `GRACE` seconds to finish, whatever is still running is then cut off, and
the process exits 0. A second signal cuts the grace short.

What may still be running then: a request held by a `latency` fault (up to five
minutes), or a control API `rotate` waiting for a fetch from an STS that does not
answer. The fetch itself is never waited for: it runs in a daemon thread that is left
behind at exit (imds.creds.sources.sts).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.web_server import Server

log = logging.getLogger("imds.server")

T = TypeVar("T")

# Seconds requests in progress get once a stop signal arrives. Docker's default stop
# timeout is 10 s (then SIGKILL), Kubernetes' 30 s; a metadata request takes
# milliseconds, and one still unanswered after 3 s has outlived every SDK's timeout
# (botocore 1 s [S-PY-06], JS 1 s [S-JS-04], Go 500 ms to the headers [S-GO-04]).
GRACE = 3.0

# Stopping is all a signal can ask of imds: SIGHUP is the terminal going away.
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Signals:
    """The stop signals, on the running loop: the first sets `stop`, any later one `hurry`."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.hurry = asyncio.Event()

    def install(self) -> Signals:
        """
        Handle the signals from now on. The handlers stay until the loop closes (asyncio
        removes them then), so a signal during the last of the shutdown only hurries it.
        """
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, self._received, sig)
        return self

    def _received(self, sig: signal.Signals) -> None:
        if not self.stop.is_set():
            log.info("%s: shutting down; requests in progress get %gs (signal again to stop "
                     "at once)", sig.name, GRACE)
            self.stop.set()
        elif not self.hurry.is_set():
            log.warning("%s again: stopping at once", sig.name)
            self.hurry.set()

    async def unless_stopped(self, work: Awaitable[T]) -> T | None:
        """
        The result of `work`, unless a stop signal comes first: then `work` is cancelled
        and None returned (a start waiting on a slow STS stops as promptly as a server).
        """
        task = asyncio.ensure_future(work)
        stopped = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        finally:
            stopped.cancel()
        if task.done():
            return task.result()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this coroutine was cancelled too, not only `work`
        return None


async def close(runners: Sequence[web.BaseRunner], hurry: asyncio.Event | None = None) -> None:
    """
    Clean up `runners` together. Their listeners close at once; requests in progress get
    `GRACE` seconds, or until `hurry` is set, and are then cut off.

    aiohttp alone would wait its `shutdown_timeout` for a handler, then as long again
    after asking it to stop (a handler that is sleeping does not notice), so each runner
    is also given `GRACE` as that timeout: the bound if the cut-off ever missed one.
    """
    servers = [runner.server for runner in runners]
    closing = asyncio.gather(*(runner.cleanup() for runner in runners))
    hurried = asyncio.ensure_future((hurry or asyncio.Event()).wait())
    waiting: set[asyncio.Future[Any]] = {closing, hurried}
    try:
        await asyncio.wait(waiting, timeout=GRACE, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hurried.cancel()
    if not closing.done():
        for server in servers:
            if server is not None:
                cut_off(server)
    await closing


def cut_off(server: Server) -> None:
    """Abort every connection of `server`, cancelling the handlers still answering."""
    # aiohttp lets a handler run on after its client has gone (handler_cancellation is
    # off by default); from now on a lost connection cancels its handler.
    server.handler_cancellation = True
    for connection in server.connections:
        transport = connection.transport
        if transport is not None:
            # abort, not close: close waits for unsent data a stalled client never reads.
            transport.abort()
