"""
Descriptor pressure: under a lowered open-file limit (RLIMIT_NOFILE), a flood of idle
connections on either port keeps neither port from serving a new SDK client, and the
control listener holds few connections, and none for long (imds.http.descriptors,
imds.http.acceptor, imds.lab.control).

`imds serve` runs as its own process with `ulimit -n` lowered, with and without uvloop
(the CLI has no switch for the event loop: tests.support.processes.WITHOUT_UVLOOP hides uvloop),
and every connection is a real loopback socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import re
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
import pytest

from imds.lab.control import CONTROL_LIMITS
from imds.server import Running
from tests.conftest import ServerFactory
from tests.e2e.test_limits import (
    Connection,
    address,
    close_all,
    many_files,  # noqa: F401  (a fixture, used by name)
    sdk_fetch,
    still_open,
)
from tests.support.labutil import ControlAPI
from tests.support.polling import until
from tests.support.processes import WITHOUT_UVLOOP, clean_env, run_imds

UVLOOP = ("-m", "imds")
HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None
needs_uvloop = pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop is not installed")

# How long probes go on once the flood starts: the flood's silent connections reach the
# server a second or two after they connect (deferred accept, imds.http.acceptor).
PROBE_FOR = 4.0
# A server that says what went wrong once says it in far less; one that logs each failed
# accept wrote 84 MB in 10 s.
QUIET = 20_000
TOKEN = "t" * 64


@contextlib.asynccontextmanager
async def flooding(url: str, count: int) -> AsyncIterator[tuple[asyncio.Task[None],
                                                                list[Connection]]]:
    """
    `count` idle connections to `url`, opened one after another in the background (the
    task) into the list; on leaving, however it is left, every one of them is closed.
    """
    opened: list[Connection] = []

    async def open_all() -> None:
        host, port = address(url)
        for _ in range(count):
            opened.append(await asyncio.open_connection(host, port))

    task = asyncio.create_task(open_all())
    try:
        yield task, opened
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        close_all(opened)


async def probe_during(url: str, flood: asyncio.Task[None]) -> int:
    """SDK fetches from `url` one after another for PROBE_FOR seconds; how many there were."""
    done = 0
    began = time.monotonic()
    while time.monotonic() < began + PROBE_FOR or not flood.done():
        assert time.monotonic() < began + 30, "the flood did not connect within 30 s"
        # Each of the three requests within botocore's timeout (tests.e2e.test_limits).
        assert b'"Code" : "Success"' in await sdk_fetch(url)
        done += 1
        await asyncio.sleep(0.05)
    return done


def control_url(banner: Sequence[str]) -> str:
    for line in banner:
        match = re.search(r"control API, /metrics and timeline on (http://\S+?)/ ", line)
        if match:
            return match.group(1)
    raise AssertionError(f"no control URL in {banner}")


@pytest.mark.usefixtures("many_files")
class TestIdleFloodOnTheMetadataPort:
    @pytest.mark.parametrize(
        ("flags", "launch"),
        [
            pytest.param((), UVLOOP, id="fast-path", marks=needs_uvloop),
            pytest.param((), WITHOUT_UVLOOP, id="fast-path-asyncio"),
            pytest.param(("--fast-path", "false"), UVLOOP, id="aiohttp", marks=needs_uvloop),
            pytest.param(("--fast-path", "false"), WITHOUT_UVLOOP, id="aiohttp-asyncio"),
        ],
    )
    async def test_new_clients_are_served_promptly_throughout_and_stderr_stays_quiet(
        self, empty_home: Path, flags: Sequence[str], launch: Sequence[str]
    ) -> None:
        """
        `ulimit -n 1024` and 2,500 idle connections: the accept loop never takes more than
        the cap and its headroom hold, so it never runs out of descriptors and never stops
        accepting; before, it paused a second at a time (probes timed out) and, without
        uvloop and the fast path, asyncio logged a traceback per failed accept.
        """
        count = 2500
        with run_imds(*flags, env=clean_env(empty_home), launch=launch,
                      open_files=1024) as server:
            async with flooding(server.url, count) as (flood, idle):
                probes = await probe_during(server.url, flood)
                await flood
                # The flood did press on the cap: most of it was closed to make room.
                await until(lambda: sum(reader.at_eof() for reader, _ in idle) >= count - 1024,
                            10.0, "the idlest connections to be closed")
                assert b'"Code" : "Success"' in await sdk_fetch(server.url)
        stderr = "".join(server.stderr)
        assert probes >= 10
        assert "Traceback" not in stderr
        assert len(stderr) < QUIET, stderr[:2000]


@pytest.mark.usefixtures("many_files")
class TestIdleFloodOnTheControlPort:
    @pytest.mark.parametrize(
        "launch",
        [
            pytest.param(UVLOOP, id="uvloop", marks=needs_uvloop),
            pytest.param(WITHOUT_UVLOOP, id="asyncio"),
        ],
    )
    async def test_it_does_not_starve_the_metadata_port(
        self, empty_home: Path, launch: Sequence[str], http: aiohttp.ClientSession
    ) -> None:
        """
        `ulimit -n 2048` and 2,100 idle connections to the control port, no token: every
        metadata request is still answered promptly, and so is the control API's owner.
        Before, both listeners drew on one table and the control port took it all.
        """
        count = 2100
        with run_imds("--control-token", TOKEN, env=clean_env(empty_home), launch=launch,
                      open_files=2048) as server:
            control = control_url(server.banner)
            async with flooding(control, count) as (flood, idle):
                await probe_during(server.url, flood)
                await flood
                async with asyncio.timeout(2.0):
                    async with http.get(control + "/api/status",
                                        headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                        status = r.status
                closed = sum(reader.at_eof() for reader, _ in idle)
        assert 200 == status
        assert closed >= count - 2 * CONTROL_LIMITS.max_connections
        assert len("".join(server.stderr)) < QUIET


class TestControlListenerLimits:
    async def test_over_its_cap_the_idlest_connections_make_room(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        """The control port keeps 32 connections, not one per client that asks."""
        running = await imds_factory()
        lab = ControlAPI(http, running)
        async with flooding(lab.url, 100) as (flood, idle):
            await flood
            await until(lambda: sum(reader.at_eof() for reader, _ in idle)
                        >= 100 - CONTROL_LIMITS.max_connections, 5.0,
                        "the idlest control connections to be closed")
            oldest_open = await still_open(idle[0][0])
            newest_open = await still_open(idle[-1][0])
            # The newcomer is never the one closed: the API still answers its owner.
            status, _ = await lab.call("GET", "/api/status")
        assert (False, True) == (oldest_open, newest_open)
        assert 200 == status

    async def test_a_silent_connection_is_closed_after_its_idle_timeout(
        self, imds: Running
    ) -> None:
        assert imds.control is not None
        reader, writer = await asyncio.open_connection(*address(imds.control.url))
        began = time.monotonic()
        try:
            async with asyncio.timeout(CONTROL_LIMITS.idle_timeout + 3):
                assert b"" == await reader.read()
        finally:
            writer.close()
        took = time.monotonic() - began
        assert CONTROL_LIMITS.idle_timeout - 0.5 <= took < CONTROL_LIMITS.idle_timeout + 3
