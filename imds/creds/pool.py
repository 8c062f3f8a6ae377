"""
Every rotator of one server, by the role it serves: one rotation per role, whichever
endpoints serve it (IMDS, a role map, ECS task ids, Pod Identity associations).

A role is a key: the role name or ARN, plus the session tags of the session it stands for.
Untagged roles are built at startup and live as long as the server. Tagged ones are EKS Pod
Identity sessions of STS-backed roles, one per pod [K-08] (EKS attaches the pod's name and
uid as session tags); they are started on a pod's first request, at most once at a time
(`ensure`), and the least recently started is stopped when there are too many.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from imds.creds.rotation import Rotator
from imds.errors import SourceError

log = logging.getLogger("imds.rotation")

Tags = tuple[tuple[str, str], ...]

# Tagged (per-pod) sessions kept at most; a node runs about a hundred pods.
TAGGED_MAX = 256
# How long a failed first fetch is answered from memory before STS is asked again, so that
# an SDK's retries [K-10] cost one AssumeRole, not one each.
FAILURE_HOLD = 5.0


class RoleKey(NamedTuple):
    role: str
    tags: Tags = ()


class RotatorPool:
    """The rotators of one server; `get` is the request path's one dict lookup."""

    def __init__(self, make: Callable[[RoleKey], Rotator], *,
                 started: Callable[[RoleKey, Rotator], None] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._make = make
        self._started = started
        self._monotonic = monotonic
        self._rotators: dict[RoleKey, Rotator] = {}
        self._pending: dict[RoleKey, asyncio.Future[Rotator]] = {}
        self._failed: dict[RoleKey, tuple[float, SourceError]] = {}
        self._tasks: dict[RoleKey, asyncio.Task[None]] = {}
        self._running = False

    def get(self, key: RoleKey) -> Rotator | None:
        return self._rotators.get(key)

    def failure(self, key: RoleKey) -> str | None:
        """Why the last first fetch for `key` failed, while that is remembered."""
        failed = self._failed.get(key)
        if failed is None or self._monotonic() - failed[0] >= FAILURE_HOLD:
            return None
        return str(failed[1])

    def rotators(self) -> dict[RoleKey, Rotator]:
        return dict(self._rotators)

    def add(self, key: RoleKey, rotator: Rotator) -> None:
        """Adopt a rotator primed already (the server's own)."""
        self._rotators[key] = rotator
        self._adopted(key, rotator)

    async def ensure(self, key: RoleKey) -> Rotator:
        """
        The rotator for `key`, made and primed on first use; concurrent callers share one
        first fetch. Raises SourceError when it fails (remembered for FAILURE_HOLD).
        """
        rotator = self._rotators.get(key)
        if rotator is not None:
            return rotator
        failed = self._failed.get(key)
        if failed is not None and self._monotonic() - failed[0] < FAILURE_HOLD:
            raise failed[1]
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._pending[key] = pending
            try:
                rotator = self._make(key)
                await rotator.prime()
            except SourceError as exc:
                self._failed[key] = (self._monotonic(), exc)
                pending.set_exception(exc)
                pending.exception()  # retrieved: no "never retrieved" warning
                raise
            finally:
                del self._pending[key]
            self._failed.pop(key, None)
            self._rotators[key] = rotator
            self._adopted(key, rotator)
            pending.set_result(rotator)
            return rotator
        return await asyncio.shield(pending)

    def _adopted(self, key: RoleKey, rotator: Rotator) -> None:
        if self._started is not None:
            self._started(key, rotator)
        if self._running:
            self._start(key, rotator)
        if key.tags:
            tagged = [k for k in self._rotators if k.tags]
            for old in tagged[:max(0, len(tagged) - TAGGED_MAX)]:
                self._retire(old)

    def _start(self, key: RoleKey, rotator: Rotator) -> None:
        if key not in self._tasks:
            self._tasks[key] = asyncio.get_running_loop().create_task(
                rotator.run(), name=f"imds-rotation-{key.role}")

    def _retire(self, key: RoleKey) -> None:
        self._rotators.pop(key, None)
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()
        log.info("stopped the rotation of role %s for a pod not seen lately", key.role)

    def start(self) -> None:
        """Run every rotation in the background, and each one added later."""
        self._running = True
        for key, rotator in self._rotators.items():
            self._start(key, rotator)

    async def stop(self) -> None:
        self._running = False
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
