"""
Keeping one role's credentials fresh, off the request path.

The rotator fetches the first credentials before the server accepts a request, then a
background task replaces them `refresh_ahead` seconds before they expire [L-01]. Requests
only ever read `Rotator.current`: an attribute, never a lock, never a fetch.

Expiry is wall-clock time, but the background task sleeps on the monotonic clock, which
stands still while the machine is suspended and ignores clock steps. It therefore sleeps in
slices of at most `CLOCK_CHECK` seconds and re-plans against the wall clock after each
(`ClockWatch`), so a jump is noticed within seconds, not after the rest of a lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
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

# The longest the background loop sleeps before it looks at the wall clock again: a resume
# from suspend or a clock step is acted on within this long (a wake-up costs two clock reads).
CLOCK_CHECK = 2.0

# A difference below this between how far the wall and the monotonic clock advanced is
# scheduling noise or NTP slewing (at most 0.5 ms a second), not a jump.
CLOCK_JUMP_MIN = 1.0


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


class ClockWatch:
    """
    Notices the wall clock jumping against the monotonic clock.

    Between two checks both clocks advance alike, unless the machine was suspended (the
    monotonic clock stood still) or the wall clock was stepped (NTP, `date -s`, a VM
    restored from a snapshot). The difference is how far the wall clock jumped.
    """

    def __init__(self, wall: Callable[[], float], monotonic: Callable[[], float]) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._offset = self._read()

    def _read(self) -> float:
        return self._wall() - self._monotonic()

    def moved(self) -> float:
        """
        Seconds the wall clock jumped since the last call, forward if positive; 0.0 for
        less than `CLOCK_JUMP_MIN`. Each call starts a new interval, so slow slewing never
        adds up to a jump.
        """
        offset = self._read()
        moved, self._offset = offset - self._offset, offset
        return moved if abs(moved) >= CLOCK_JUMP_MIN else 0.0


class Rotator:
    """Owns the current credentials of one role and refreshes them, one fetch at a time."""

    def __init__(
        self,
        source: CredentialSource,
        *,
        refresh_ahead: float,
        clock: Callable[[], float],
        monotonic: Callable[[], float] = time.monotonic,
        backoff_base: float = 1.0,
        backoff_cap: float = 30.0,
        history: int = 100,
    ) -> None:
        """
        Args:
            clock: the wall clock, seconds since the epoch: expiry is judged by it.
            monotonic: the clock the event loop's timers run on; backoff delays are
                measured on it, and wall-clock jumps against it.
        """
        self.source = source
        self.refresh_ahead = refresh_ahead
        self._clock = clock
        self._monotonic = monotonic
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._current: Rendered | None = None
        self._inflight: asyncio.Future[Rendered] | None = None
        self._wake = asyncio.Event()
        self._failures = 0
        # When to retry after a failure, by `monotonic`: a backoff is a duration, which a
        # wall-clock jump must neither stretch (an hour back) nor cut short.
        self._retry_due: float | None = None
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
        """When the next refresh is due, by the wall clock."""
        if self._retry_due is not None:
            return self._clock() + max(0.0, self._retry_due - self._monotonic())
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

    def _until_due(self) -> float:
        """Seconds until the next refresh is due; zero or less when it is."""
        if self._retry_due is not None:
            return self._retry_due - self._monotonic()
        return self.next_refresh_at() - self._clock()

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
        self._retry_due = None
        self.poke()
        return rendered

    async def run(self) -> None:
        """The background loop: sleep until the next refresh is due, refresh, repeat."""
        watch = ClockWatch(self._clock, self._monotonic)
        while True:
            await self._sleep_until_due(watch)
            try:
                rendered = await self.refresh()
            except SourceError as exc:
                self._failures += 1
                delay = self._backoff(self._failures)
                self._retry_due = self._monotonic() + delay
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
                    self._retry_due = None
                else:
                    self._expired_on_arrival(rendered)

    def _expired_on_arrival(self, rendered: Rendered) -> None:
        # STS answers with a duration from its own clock, so this means our clock is
        # ahead of it by more than the lifetime. Fetching again at once would not help.
        self._failures += 1
        delay = self._backoff(self._failures)
        self._retry_due = self._monotonic() + delay
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

    async def _sleep_until_due(self, watch: ClockWatch) -> None:
        """
        Sleep until a refresh is due, in slices of at most `CLOCK_CHECK` seconds.

        The timer runs on the monotonic clock, expiry on the wall clock: after each slice
        (or a `poke()`) the schedule is worked out again from the wall clock, so a jump
        forward past the refresh point refreshes at once, and a jump back only moves the
        refresh point (no extra fetches).
        """
        while (left := self._until_due()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(left, CLOCK_CHECK))
            self._wake.clear()
            moved = watch.moved()
            if moved:
                self._clock_moved(moved)

    def _clock_moved(self, moved: float) -> None:
        """Say the clock jumped, and what that does to the schedule: one line a jump."""
        left = self._until_due()
        log.warning(
            "the wall clock jumped %s by %.0fs (%s); role %s: %s",
            "forward" if moved > 0 else "back",
            abs(moved),
            "resumed from suspend, or the clock was set" if moved > 0 else "the clock was set",
            self.source.role.name,
            f"next refresh in {left:.0f}s" if left > 0 else "refreshing now",
        )
