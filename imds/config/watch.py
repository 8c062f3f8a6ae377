"""
Files a setting names, read again when they change: the role map and the Pod Identity
associations, as a Kubernetes ConfigMap volume updates them in place.

kubelet never rewrites a mounted file [K-15]: it writes the new version into a fresh
timestamped directory and swaps a `..data` symlink to it, so the path keeps its name while
its target, inode and content change, and its mtime says nothing reliable. So the watch
reads the content itself, through the path as any reader would, and compares digests:
polling (every `--reload-interval` seconds, 2 by default, in a background task, never on
the request path) catches a symlink swap, a rename over the file and an edit in place
alike, with no inotify watch to lose when the watched directory is replaced. An edit in
place may be read half-written, and a half that parses would serve until the next poll:
writers other than kubelet should write a new file and rename it over the old.

A new version is handed to its setting's `apply`, which parses it and prepares everything
(new roles primed) before putting it in force in one assignment. Whatever goes wrong, the
version in force stays: a file that does not parse (`invalid`), that is gone or unreadable
(`missing`), or whose new roles cannot get their first credentials (`unavailable`). Each
outcome is one log line naming the setting and the file, never the credentials, and is
counted (`imds_config_reloads_total{file,result}` on /metrics). A broken version is
reported once, not at every poll; a failed first fetch is tried again after RETRY_AFTER.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from imds.errors import ConfigError, SourceError

log = logging.getLogger("imds.reload")

# Outcomes, the `result` label of imds_config_reloads_total.
OK = "ok"
INVALID = "invalid"
MISSING = "missing"
UNAVAILABLE = "unavailable"
ERROR = "error"
RESULTS = (OK, INVALID, MISSING, UNAVAILABLE, ERROR)

# Seconds before a version whose new roles could not get credentials is tried again: an STS
# outage heals without an edit, but is not asked again at every poll.
RETRY_AFTER = 30.0

# Parses and puts a new version in force; says what is now in force, for the log line.
# Raises ConfigError (invalid) or SourceError (a new role's first credentials).
Apply = Callable[[bytes], Awaitable[str]]
Count = Callable[[str, str], None]


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass
class Watched:
    """One file, the version in force and the last version seen (None: unreadable)."""

    key: str
    path: str
    apply: Apply
    in_force: bytes
    seen: bytes | None
    retry_at: float = 0.0


class FileWatch:
    """Polls the watched files and applies their new versions, one at a time."""

    def __init__(self, interval: float, count: Count,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._count = count
        self._monotonic = monotonic
        self.files: list[Watched] = []

    def add(self, key: str, path: str, in_force: bytes, apply: Apply) -> None:
        """Watch `path` (setting `key`), whose content `in_force` is what serves now."""
        seen = digest(in_force)
        self.files.append(Watched(key, path, apply, seen, seen))

    async def check(self) -> None:
        """One pass over every file."""
        for watched in self.files:
            await self._check(watched)

    async def _check(self, watched: Watched) -> None:
        where = f"{watched.key} {watched.path!r}"
        reason = ""
        try:
            # A thread: a stat or read on a slow volume must not hold the event loop.
            data: bytes | None = await asyncio.to_thread(Path(watched.path).read_bytes)
        except OSError as exc:
            data, reason = None, exc.strerror or str(exc)
        now = self._monotonic()
        seen = None if data is None else digest(data)
        retry = watched.retry_at and now >= watched.retry_at
        if seen == watched.seen and not (retry and seen is not None):
            return
        watched.seen, watched.retry_at = seen, 0.0
        if data is None:
            self._outcome(watched, MISSING, f"{where} cannot be read ({reason}); the "
                                            f"version in force stays")
            return
        if seen == watched.in_force:
            log.info("%s is back as it was; nothing to change", where)
            return
        try:
            described = await watched.apply(data)
        except ConfigError as exc:
            # The message starts with the setting and the file already.
            self._outcome(watched, INVALID, f"{exc}; the version in force stays")
            return
        except SourceError as exc:
            watched.retry_at = now + RETRY_AFTER
            self._outcome(watched, UNAVAILABLE, f"{where}: a new role could not get its "
                                                f"first credentials ({exc}); the version in "
                                                f"force stays, retried in {RETRY_AFTER:.0f}s")
            return
        except Exception as exc:  # a bug must not end the watch, nor change what serves
            self._outcome(watched, ERROR, f"{where}: could not be applied "
                                          f"({type(exc).__name__}: {exc}); the version in "
                                          f"force stays")
            return
        watched.in_force = digest(data)
        self._count(watched.key, OK)
        log.info("%s reloaded: %s", where, described)

    def _outcome(self, watched: Watched, result: str, message: str) -> None:
        self._count(watched.key, result)
        log.warning("%s", message)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check()

    async def running(self) -> AsyncIterator[None]:
        """Polls in the background while the body runs (an aiohttp cleanup context)."""
        task = asyncio.get_running_loop().create_task(self.run(), name="imds-reload")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
