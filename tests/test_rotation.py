"""The rotator: first credentials before serving, background refresh, single flight, outages."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time

import aiohttp
import pytest

from imds.credentials import Credentials
from imds.errors import SourceError
from imds.rotation import Rotator, effective_ahead
from imds.sources import LocalSource, RoleIdentity
from tests.conftest import ServerFactory
from tests.test_metadata_http import ROLE, fetch, get_token


class FlakySource:
    """A real LocalSource behind a switch that makes fetches fail, and a fetch delay."""

    def __init__(self, lifetime: float, delay: float = 0.0) -> None:
        self.inner = LocalSource(ROLE, "123456789012", lifetime, time.time)
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
            await asyncio.sleep(1.3)  # due at expiry - 1 s
            second = rotator.current
            assert second is not None and second is not first
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
            await asyncio.sleep(1.6)
            assert source.calls >= 3  # prime + several retries
            assert rotator.current is first
            source.failing = False
            await asyncio.sleep(0.4)
            assert rotator.current is not first
            assert rotator.history[-1].ok
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

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
        await asyncio.sleep(1.2)
        token = await get_token(http, server.url)
        path = f"/latest/meta-data/iam/security-credentials/{ROLE}"
        status, _, body = await fetch(http, server.url, path, token)
        assert 200 == status
        document = json.loads(body)
        assert "AssumeRoleUnauthorizedAccess" == document["Code"]
        assert f"EC2 cannot assume the role {ROLE}." in document["Message"]
        assert "AccessKeyId" not in document
        source.failing = False
        await asyncio.sleep(0.5)
        status, _, body = await fetch(http, server.url, path, token)
        assert "Success" == json.loads(body)["Code"]
