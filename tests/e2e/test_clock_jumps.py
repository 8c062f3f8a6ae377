"""
The wall clock jumping under a running server: a resume from suspend (the monotonic clock
stood still), an NTP step, a clock set back. Expiry is judged by the wall clock, so fresh
keys must follow a jump forward within seconds, and a jump back must not cost fetches.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import aiohttp
import pytest

from imds.creds.rotation import ClockWatch, Rotator
from tests.e2e.test_sts_e2e import ROLE_A, server_env
from tests.http.test_metadata_http import ROLE, fetch, get_token
from tests.http.test_rotation import FlakySource
from tests.support.polling import until
from tests.support.processes import ROOT, clean_env, run_imds, stop_process
from tests.support.sts_support import StsProxy

HOUR = 3600.0

# The default slice of the rotator's sleep (imds.creds.rotation.CLOCK_CHECK) plus scheduling
# slack: "within a few seconds" of a jump, where it used to be the rest of a lifetime.
WITHIN = 5.0


class ShiftedClock:
    """The real wall clock plus an offset a test moves; the monotonic clock stays put."""

    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> float:
        return time.time() + self.shift


@asynccontextmanager
async def running(rotator: Rotator) -> AsyncIterator[None]:
    """The rotator's background loop, for the length of the block."""
    task = asyncio.create_task(rotator.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class TestClockWatch:
    def test_a_jump_is_how_far_the_wall_clock_moved_beyond_the_monotonic_one(self) -> None:
        wall, monotonic = [1_800_000_000.0], [500.0]
        watch = ClockWatch(lambda: wall[0], lambda: monotonic[0])
        steps = [
            (2.0, 2.0),  # both advanced alike
            (3602.0, 2.0),  # an hour suspended: only the wall clock moved
            (2.0, 2.0),  # that jump is reported once
            (-3598.0, 2.0),  # set back an hour
            (2.001, 2.0),  # NTP slewing: not a jump
        ]
        moved = []
        for wall_step, monotonic_step in steps:
            wall[0] += wall_step
            monotonic[0] += monotonic_step
            moved.append(watch.moved())
        assert [0.0, 3600.0, 0.0, -3600.0, 0.0] == pytest.approx(moved)


class TestRotatorAcrossJumps:
    async def test_a_jump_forward_past_expiry_is_refreshed_within_seconds_and_logged(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        clock = ShiftedClock()
        source = FlakySource(lifetime=120, clock=clock)
        rotator = Rotator(source, refresh_ahead=300, clock=clock)
        await rotator.prime()
        async with running(rotator):
            await asyncio.sleep(0.1)  # asleep until 60 s before expiry
            clock.shift += HOUR
            jumped = time.monotonic()
            await until(lambda: rotator.valid(clock()) is not None, 10.0, "fresh credentials")
            took = time.monotonic() - jumped
        assert took < WITHIN
        assert 2 == source.calls
        assert "the wall clock jumped forward by 3600s" in caplog.text
        assert "refreshing now" in caplog.text

    async def test_a_jump_back_of_an_hour_fetches_nothing_and_is_logged(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        clock = ShiftedClock()
        source = FlakySource(lifetime=120, clock=clock)
        rotator = Rotator(source, refresh_ahead=300, clock=clock)
        await rotator.prime()
        async with running(rotator):
            await asyncio.sleep(0.1)
            clock.shift -= HOUR
            await until(lambda: "jumped back" in caplog.text, 10.0, "the warning")
        assert 1 == source.calls
        assert "the wall clock jumped back by 3600s" in caplog.text
        # The keys' expiry is wall-clock time, as SDKs on this host judge it: now an hour
        # further off, and so is their refresh.
        assert rotator.next_refresh_at() - clock() > HOUR

    async def test_a_backoff_is_not_stretched_by_an_hour_when_the_clock_is_set_back(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        clock = ShiftedClock()
        source = FlakySource(lifetime=2, clock=clock)
        rotator = Rotator(source, refresh_ahead=300, clock=clock,
                          backoff_base=1.0, backoff_cap=1.0)
        await rotator.prime()
        source.failing = True
        async with running(rotator):
            # Due a second after the prime; it fails, and the warning comes once the retry
            # is scheduled, 0.5-1 s later.
            await until(lambda: "retrying in" in caplog.text, 5.0, "a failed refresh")
            clock.shift -= HOUR
            failed = source.calls
            source.failing = False
            # The retry keeps its monotonic due time: within the 1 s backoff, not an hour.
            await until(lambda: rotator.history[-1].ok, 3.0, "the retry")
        # One retry after the jump, or two when one slipped in, failing, between the jump
        # and the source's recovery on a loaded machine; never a storm.
        assert source.calls - failed in (1, 2)


# ------------------------------------------------------------ real processes, libfaketime

LIBFAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), None)


class Faketime:
    """
    libfaketime driven from outside: processes started with `env()` read their clock's
    offset from a file on every call, so writing it moves their wall clock at once.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.set("+0")

    def set(self, offset: str) -> None:
        # Renamed into place: a reader never sees a half-written file.
        partial = self.path.with_suffix(".partial")
        partial.write_text(offset + "\n")
        os.replace(partial, self.path)

    def env(self, *, monotonic: bool) -> dict[str, str]:
        """
        With `monotonic=False` the monotonic clock is left alone, as in a suspend. (Python
        3.11's `time.sleep` then fails with EINVAL under libfaketime 0.9.10, which imds
        never calls; moto's server does, so it runs with both clocks moved.)
        """
        env = {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(self.path),
               "FAKETIME_NO_CACHE": "1"}
        if not monotonic:
            env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
        return env


@pytest.fixture
def faketime(tmp_path: Path) -> Faketime:
    if LIBFAKETIME is None:
        pytest.skip("libfaketime is not installed (Debian package faketime; "
                    "scripts/system-deps installs it)")
    return Faketime(tmp_path / "faketime")


MOTO = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
"""


@contextmanager
def moto_process(env: dict[str, str]) -> Iterator[str]:
    """moto in server mode in its own process, so libfaketime can move its clock too."""
    process = subprocess.Popen([sys.executable, "-c", MOTO], env=env, cwd=ROOT, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        port = process.stdout.readline().strip()
        assert port.isdigit(), f"moto did not start: {port!r}"
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()


async def seconds_until_valid(
    http: aiohttp.ClientSession, url: str, role: str, now: Callable[[], float]
) -> float:
    """Poll the role's credentials until they are unexpired at `now()`: how long it took."""
    started = time.monotonic()
    codes: set[str] = set()
    while time.monotonic() - started < 10.0:
        token = await get_token(http, url)
        status, _, body = await fetch(http, url, f"/latest/meta-data/iam/security-credentials/"
                                      f"{role}", token)
        assert 200 == status
        document = json.loads(body)
        codes.add(document["Code"])
        if document["Code"] == "Success":
            expiration = dt.datetime.strptime(document["Expiration"], "%Y-%m-%dT%H:%M:%SZ")
            if expiration.replace(tzinfo=dt.UTC).timestamp() > now():
                return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"no valid credentials 10 s after the jump; served {sorted(codes)}")


@pytest.mark.e2e
class TestServeUnderFaketime:
    async def test_the_local_source_has_valid_keys_seconds_after_an_hours_suspend(
        self, faketime: Faketime, http: aiohttp.ClientSession, tmp_path: Path
    ) -> None:
        env = clean_env(tmp_path / "home", **faketime.env(monotonic=False))
        with run_imds("--credential-lifetime", "120", env=env) as server:
            await seconds_until_valid(http, server.url, ROLE, time.time)
            faketime.set("+3600")
            took = await seconds_until_valid(http, server.url, ROLE, lambda: time.time() + HOUR)
        assert took < WITHIN
        log = "".join(server.stderr)
        assert "the wall clock jumped forward by 3600s" in log

    async def test_sts_mode_has_valid_keys_seconds_after_an_hours_suspend(
        self, faketime: Faketime, http: aiohttp.ClientSession, tmp_path: Path
    ) -> None:
        moto_env = clean_env(tmp_path / "moto-home", **faketime.env(monotonic=True))
        with moto_process(moto_env) as moto_url:
            sts = StsProxy(moto_url).start()
            try:
                env = {**server_env(tmp_path / "home"), **faketime.env(monotonic=False)}
                args = ("--role-arn", ROLE_A, "--sts-endpoint-url", sts.url,
                        "--duration", "900")
                with run_imds(*args, env=env) as server:
                    await seconds_until_valid(http, server.url, "app", time.time)
                    # STS's clock moves too: the hour passed for everyone while this
                    # machine slept.
                    faketime.set("+3600")
                    took = await seconds_until_valid(http, server.url, "app",
                                                     lambda: time.time() + HOUR)
                calls = sts.calls("AssumeRole")
            finally:
                sts.close()
        assert took < WITHIN
        # The prime and one refresh after the jump: no storm.
        assert 2 == len(calls)
        assert "the wall clock jumped forward by 3600s" in "".join(server.stderr)
