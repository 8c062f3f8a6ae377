"""
Keeping one role's credentials fresh, off the request path.

The rotator fetches the first credentials before the server accepts a request, then a
background task replaces them `refresh_ahead` seconds before they expire [L-01]. Requests
only ever read `Rotator.current`: an attribute, never a lock, never a fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from imds.creds.model import Rendered
from imds.creds.sources.base import CredentialSource
from imds.errors import SourceError

log = logging.getLogger("imds.rotation")

# The least time between fetches when credentials arrive already due to be replaced
# (`Rotator.next_refresh_at`): a 1 s lifetime then costs about three fetches a second.
REFETCH_MIN = 0.25


@dataclass(frozen=True, slots=True)
class RotationEvent:
    """One attempt to fetch credentials, kept for status pages and tests."""

    at: float
    ok: bool
    key_hint: str = ""
    expires_at: float = 0.0
    error: str = ""


def effective_ahead(refresh_ahead: float, lifetime: float) -> float:
    """
    How long before expiry to switch to new credentials.

    EC2 promises at least five minutes [L-01]. Demonstrations use lifetimes of a minute or
    less, where five minutes would mean refreshing constantly, so the window never exceeds
    half the lifetime: each generation is served alone for at least half its life.
    """
    return max(0.0, min(refresh_ahead, lifetime / 2))


class Rotator:
    """Owns the current credentials of one role and refreshes them, one fetch at a time."""

    def __init__(
        self,
        source: CredentialSource,
        *,
        refresh_ahead: float,
        clock: Callable[[], float],
        backoff_base: float = 1.0,
        backoff_cap: float = 30.0,
        history: int = 100,
    ) -> None:
        self.source = source
        self.refresh_ahead = refresh_ahead
        self._clock = clock
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._current: Rendered | None = None
        self._inflight: asyncio.Future[Rendered] | None = None
        self._wake = asyncio.Event()
        self._failures = 0
        self._retry_at: float | None = None
        # When the current credentials arrived, by `clock`.
        self._arrived = 0.0
        self.fetches = 0
        self.history: deque[RotationEvent] = deque(maxlen=history)
        self.listeners: list[Callable[[RotationEvent], None]] = []

    @property
    def current(self) -> Rendered | None:
        """The newest credentials, possibly expired; None only before `prime()`."""
        return self._current

    def valid(self, now: float) -> Rendered | None:
        """The current credentials if they have not expired at `now`."""
        current = self._current
        if current is None or now >= current.expires_at:
            return None
        return current

    def next_refresh_at(self) -> float:
        if self._retry_at is not None:
            return self._retry_at
        current = self._current
        if current is None:
            return self._clock()
        ahead = effective_ahead(self.refresh_ahead, current.credentials.lifetime)
        due = current.expires_at - ahead
        if due > self._arrived:
            return due
        # They arrived already due: a 1 s lifetime, which whole-second stamps [C-09] cut
        # short, or a clock ahead of the source's. Refreshing at once would fetch again
        # and again (a busy loop, or a storm of AssumeRole calls), so refresh halfway
        # through what is left, not sooner than REFETCH_MIN and no later than expiry.
        # Credentials that arrived expired are retried with backoff instead (`run`).
        left = current.expires_at - self._arrived
        return min(current.expires_at, self._arrived + max(REFETCH_MIN, left / 2))

    async def prime(self) -> Rendered:
        """Fetch the first credentials; a failure propagates so startup can report it."""
        return await self.refresh()

    async def refresh(self) -> Rendered:
        """
        Fetch new credentials now, joining a fetch already under way.

        Single flight: however many callers arrive while a fetch is running, the source is
        called once and all of them get its result (kiam's future-per-role).
        """
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch())
            self._inflight.add_done_callback(self._clear_inflight)
        return await asyncio.shield(self._inflight)

    def _clear_inflight(self, future: asyncio.Future[Rendered]) -> None:
        self._inflight = None
        # Retrieve the exception so an unawaited failure is not reported as lost.
        if not future.cancelled():
            future.exception()

    async def _fetch(self) -> Rendered:
        self.fetches += 1
        started = self._clock()
        try:
            creds = await self.source.fetch()
        except SourceError as exc:
            self._record(RotationEvent(at=started, ok=False, error=str(exc)))
            raise
        rendered = Rendered.of(creds, self.source.role.account_id)
        self._arrived = self._clock()
        self._current = rendered
        self._record(
            RotationEvent(
                at=started,
                ok=True,
                key_hint=creds.key_hint,
                expires_at=rendered.expires_at,
            )
        )
        log.info(
            "rotated credentials for role %s: key %s valid until %s",
            self.source.role.name,
            creds.key_hint,
            creds.expiration.isoformat(),
        )
        return rendered

    def _record(self, event: RotationEvent) -> None:
        self.history.append(event)
        for listener in self.listeners:
            listener(event)

    def poke(self) -> None:
        """Wake the background loop to reconsider its schedule (after a settings change)."""
        self._wake.set()

    async def rotate_now(self) -> Rendered:
        """Replace the credentials immediately (control API, tests)."""
        rendered = await self.refresh()
        self._failures = 0
        self._retry_at = None
        self.poke()
        return rendered

    async def run(self) -> None:
        """The background loop: sleep until the next refresh is due, refresh, repeat."""
        while True:
            await self._sleep_until(self.next_refresh_at())
            if self._clock() < self.next_refresh_at():
                continue  # woken early to reschedule
            try:
                rendered = await self.refresh()
            except SourceError as exc:
                self._failures += 1
                delay = self._backoff(self._failures)
                self._retry_at = self._clock() + delay
                current = self._current
                left = current.expires_at - self._clock() if current else 0.0
                log.warning(
                    "refresh %d for role %s failed (%s); serving current credentials "
                    "(%.0fs left), retrying in %.1fs",
                    self._failures,
                    self.source.role.name,
                    exc,
                    max(0.0, left),
                    delay,
                )
            else:
                if rendered.expires_at > self._arrived:
                    self._failures = 0
                    self._retry_at = None
                else:
                    self._expired_on_arrival(rendered)

    def _expired_on_arrival(self, rendered: Rendered) -> None:
        # STS answers with a duration from its own clock, so this means our clock is
        # ahead of it by more than the lifetime. Fetching again at once would not help.
        self._failures += 1
        delay = self._backoff(self._failures)
        self._retry_at = self._clock() + delay
        log.warning(
            "credentials for role %s expired before they arrived (expiration %s); is this "
            "machine's clock right? retrying in %.1fs",
            self.source.role.name,
            rendered.credentials.expiration.isoformat(),
            delay,
        )

    def _backoff(self, failures: int) -> float:
        # Exponential backoff with jitter; the cap keeps recovery prompt once STS returns.
        delay = min(self._backoff_cap, self._backoff_base * 2 ** (failures - 1))
        return random.uniform(delay / 2, delay)  # noqa: S311 - jitter, not a secret

    async def _sleep_until(self, deadline: float) -> None:
        timeout = max(0.0, deadline - self._clock())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()
