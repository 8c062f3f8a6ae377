"""The rotator: first credentials before serving, background refresh, single flight, outages."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Callable
from itertools import pairwise

import aiohttp
import pytest

from imds.creds.model import Credentials
from imds.creds.rotation import REFETCH_MIN, Rotator, effective_ahead
from imds.creds.sources import LocalSource, RoleIdentity
from imds.errors import SourceError
from tests.conftest import ServerFactory
from tests.http.test_metadata_http import ROLE, fetch, get_token
from tests.support.polling import until


class FlakySource:
    """A real LocalSource behind a switch that makes fetches fail, and a fetch delay."""

    def __init__(self, lifetime: float, delay: float = 0.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.inner = LocalSource(ROLE, "123456789012", lifetime, clock)
        self.failing = False
        self.delay = delay
        self.calls = 0

    @property
    def role(self) -> RoleIdentity:
        return self.inner.role

    def describe(self) -> str:
        return "flaky local source"

    async def fetch(self) -> Credentials:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.failing:
            raise SourceError("source switched off by the test")
        return await self.inner.fetch()


async def run_for(rotator: Rotator, seconds: float) -> None:
    """Run the rotator's background loop for `seconds`, then stop it."""
    task = asyncio.create_task(rotator.run())
    try:
        await asyncio.sleep(seconds)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class TestEffectiveAhead:
    @pytest.mark.parametrize(
        "ahead, lifetime, expected",
        [(300, 21600, 300), (300, 3600, 300), (300, 60, 30), (300, 4, 2), (10, 60, 10),
         (0, 60, 0)],
    )
    def test_window_is_the_setting_capped_at_half_the_lifetime(
        self, ahead: float, lifetime: float, expected: float
    ) -> None:
        assert expected == effective_ahead(ahead, lifetime)


class TestRotator:
    async def test_concurrent_refreshes_share_one_fetch(self) -> None:
        source = FlakySource(lifetime=3600, delay=0.05)
        rotator = Rotator(source, refresh_ahead=300, clock=time.time)
        results = await asyncio.gather(*(rotator.refresh() for _ in range(100)))
        assert 1 == source.calls
        assert 1 == len({id(r) for r in results})

    async def test_failed_refresh_keeps_current_credentials(self) -> None:
        source = FlakySource(lifetime=3600)
        rotator = Rotator(source, refresh_ahead=300, clock=time.time)
        first = await rotator.prime()
        source.failing = True
        with pytest.raises(SourceError):
            await rotator.refresh()
        assert first is rotator.current
        assert not rotator.history[-1].ok

    async def test_background_loop_rotates_before_expiry(self) -> None:
        source = FlakySource(lifetime=2)
        rotator = Rotator(source, refresh_ahead=300, clock=time.time)
        first = await rotator.prime()
        task = asyncio.create_task(rotator.run())
        try:
            # Due at expiry - 1 s, which is within a second of the prime.
            await until(lambda: rotator.current is not first, 5.0, "a rotation")
            second = rotator.current
            assert second is not None
            assert second.credentials.access_key_id != first.credentials.access_key_id
            # [L-01] the new set was in place before the old one expired.
            assert rotator.history[1].at < first.expires_at
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def test_loop_retries_with_backoff_and_recovers(self) -> None:
        source = FlakySource(lifetime=2)
        rotator = Rotator(source, refresh_ahead=1, clock=time.time,
                          backoff_base=0.1, backoff_cap=0.2)
        first = await rotator.prime()
        source.failing = True
        task = asyncio.create_task(rotator.run())
        try:
            await until(lambda: source.calls >= 4, 5.0, "the prime and three retries")
            assert rotator.current is first
            assert not any(event.ok for event in list(rotator.history)[1:])
            source.failing = False
            # Retries come at most 0.2 s apart.
            await until(lambda: rotator.current is not first, 3.0, "recovery")
            assert rotator.history[-1].ok
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    @pytest.mark.parametrize(
        "lifetime, arrived, expected",
        [
            (3600, 0.0, 3300.0),  # the usual case: refresh_ahead before expiry
            (1, 0.2, 0.5),  # 1 s, early in the issue second: half the lifetime ahead
            (1, 0.6, 0.6 + REFETCH_MIN),  # already due: not sooner than REFETCH_MIN
            (1, 0.9, 1.0),  # ... and never later than expiry
            (900, 700.0, 800.0),  # a clock 700 s ahead: halfway through what is left
        ],
    )
    async def test_credentials_that_arrive_due_are_refreshed_before_expiry_not_at_once(
        self, lifetime: int, arrived: float, expected: float
    ) -> None:
        # The source issues at a whole second T [C-09]; they arrive `arrived` later.
        issued = 1_800_000_000
        source = LocalSource(ROLE, "123456789012", lifetime, lambda: issued)
        rotator = Rotator(source, refresh_ahead=300, clock=lambda: issued + arrived)
        await rotator.prime()
        assert rotator.next_refresh_at() - issued == pytest.approx(expected, abs=1e-6)

    async def test_a_one_second_lifetime_is_not_a_busy_loop_and_has_no_lapse(self) -> None:
        source = FlakySource(lifetime=1)
        rotator = Rotator(source, refresh_ahead=300, clock=time.time)
        await rotator.prime()
        await run_for(rotator, 2.5)
        # Each set's expiry, and when the first fetch that brought it began.
        began: dict[float, float] = {}
        for event in rotator.history:
            began.setdefault(event.expires_at, event.at)
        expiries = sorted(began)
        assert len(expiries) >= 3
        # About three fetches a second (it was thousands)...
        assert source.calls <= 12
        # ... and each set was replaced as it expired, not up to a backoff later.
        lapses = [began[new] - old for old, new in pairwise(expiries)]
        assert max(lapses) < 0.3

    async def test_credentials_expired_on_arrival_back_off_and_blame_the_clock(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        source = FlakySource(lifetime=900)
        rotator = Rotator(source, refresh_ahead=300, clock=lambda: time.time() + 3600,
                          backoff_base=0.1, backoff_cap=0.4)
        await rotator.prime()
        await run_for(rotator, 1.0)
        # Retried with backoff (0.05-0.1 s, doubling to 0.2-0.4 s), not fetched in a loop.
        assert 3 <= source.calls <= 10
        assert rotator.valid(time.time() + 3600) is None
        assert "expired before they arrived" in caplog.text
        assert "clock" in caplog.text

    async def test_naive_datetimes_are_rejected(self) -> None:
        now = dt.datetime(2026, 1, 1)
        with pytest.raises(ValueError, match="timezone-aware"):
            Credentials("ASIAX", "s", "t", expiration=now, issued=now)


class TestRotationOverHttp:
    async def test_served_key_changes_at_rotation_and_old_one_was_not_expired(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        server = await imds_factory(credential_lifetime=2, refresh_ahead=300)
        path = f"/latest/meta-data/iam/security-credentials/{ROLE}"
        seen: dict[str, str] = {}
        deadline = asyncio.get_running_loop().time() + 3.5
        while asyncio.get_running_loop().time() < deadline:
            token = await get_token(http, server.url)
            status, _, body = await fetch(http, server.url, path, token)
            assert 200 == status
            document = json.loads(body)
            assert "Success" == document["Code"]
            expiration = dt.datetime.strptime(document["Expiration"], "%Y-%m-%dT%H:%M:%SZ")
            # Never hand out credentials that have already expired.
            assert expiration.replace(tzinfo=dt.UTC) > dt.datetime.now(dt.UTC)
            seen.setdefault(document["AccessKeyId"], document["Expiration"])
            await asyncio.sleep(0.1)
        assert len(seen) >= 3

    async def test_no_valid_credentials_serves_ec2s_cannot_assume_document(
        self, imds_factory: ServerFactory, http: aiohttp.ClientSession
    ) -> None:
        """[C-06] the source failed past expiry: 200, Code/Message, no keys; then recovery."""
        source = FlakySource(lifetime=1)
        server = await imds_factory(source=source)
        server.rotator._backoff_base = 0.1
        server.rotator._backoff_cap = 0.2
        source.failing = True
        token = await get_token(http, server.url)
        path = f"/latest/meta-data/iam/security-credentials/{ROLE}"

        async def poll(code: str, within: float) -> dict[str, str]:
            # Until the answer changes, not a fixed sleep: a slow machine only makes
            # the test longer.
            deadline = time.monotonic() + within
            while True:
                status, _, body = await fetch(http, server.url, path, token)
                assert 200 == status
                document: dict[str, str] = json.loads(body)
                if document["Code"] == code or time.monotonic() > deadline:
                    return document
                await asyncio.sleep(0.05)

        # The first keys lapse within a second (whole-second stamps [C-09]).
        document = await poll("AssumeRoleUnauthorizedAccess", within=3.0)
        assert "AssumeRoleUnauthorizedAccess" == document["Code"]
        assert f"EC2 cannot assume the role {ROLE}." in document["Message"]
        assert "AccessKeyId" not in document
        source.failing = False
        # Retries come at most 0.2 s apart.
        document = await poll("Success", within=3.0)
        assert "Success" == document["Code"]
        assert document["AccessKeyId"].startswith("ASIA")
