"""One rotation per role (imds.creds.pool): shared first fetches, failures held, pods capped."""

from __future__ import annotations

import asyncio
import time

import pytest

from imds.creds import pool as pool_module
from imds.creds.model import Credentials
from imds.creds.pool import RoleKey, RotatorPool
from imds.creds.rotation import Rotator
from imds.creds.sources import LocalSource
from imds.creds.sources.base import RoleIdentity
from imds.errors import SourceError


class Counted:
    """A local source that counts its fetches, and can be made to fail."""

    def __init__(self, name: str) -> None:
        self.inner = LocalSource(name, "123456789012", 3600, time.time)
        self.fetches = 0
        self.failing = False

    @property
    def role(self) -> RoleIdentity:
        return self.inner.role

    def describe(self) -> str:
        return "counted"

    async def fetch(self) -> Credentials:
        self.fetches += 1
        await asyncio.sleep(0.01)  # long enough for concurrent callers to meet
        if self.failing:
            raise SourceError("simulated")
        return await self.inner.fetch()


def make_pool(sources: dict[RoleKey, Counted]) -> RotatorPool:
    def make(key: RoleKey) -> Rotator:
        source = sources.setdefault(key, Counted(key.role))
        return Rotator(source, refresh_ahead=300, clock=time.time)

    return RotatorPool(make)


async def test_concurrent_first_requests_share_one_fetch() -> None:
    sources: dict[RoleKey, Counted] = {}
    pool = make_pool(sources)
    key = RoleKey("app")
    rotators = await asyncio.gather(*(pool.ensure(key) for _ in range(20)))
    assert all(r is rotators[0] for r in rotators)
    assert 1 == sources[key].fetches
    assert pool.get(key) is rotators[0]


async def test_a_failed_first_fetch_is_answered_from_memory_for_a_while(
        monkeypatch: pytest.MonkeyPatch) -> None:
    key = RoleKey("app")
    failing = Counted("app")
    failing.failing = True
    pool = make_pool({key: failing})
    for _ in range(3):
        with pytest.raises(SourceError):
            await pool.ensure(key)
    # An SDK's three attempts [K-10] cost one fetch.
    assert 1 == failing.fetches
    assert "simulated" == pool.failure(key)
    monkeypatch.setattr(pool_module, "FAILURE_HOLD", 0.0)
    failing.failing = False
    assert await pool.ensure(key) is pool.get(key)
    assert pool.failure(key) is None


async def test_per_pod_sessions_beyond_the_cap_stop_the_oldest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "TAGGED_MAX", 2)
    pool = make_pool({})
    own = RoleKey("own")
    await pool.ensure(own)
    pool.start()
    pods = [RoleKey("arn:aws:iam::111122223333:role/app", (("kubernetes-pod-uid", str(i)),))
            for i in range(3)]
    for key in pods:
        await pool.ensure(key)
    assert pool.get(pods[0]) is None
    assert pool.get(pods[1]) is not None and pool.get(pods[2]) is not None
    # Untagged roles are never evicted.
    assert pool.get(own) is not None
    await pool.stop()
