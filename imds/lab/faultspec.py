"""
What a fault is: its kinds and modes, and `FaultSpec`, a fault as the control API receives
it, checked field by field. No aiohttp here: `imds ctl` lists the kinds from this module
without importing the server's HTTP stack. Applying faults is imds.lab.faults'.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from imds.containers.kinds import ENDPOINTS
from imds.errors import FaultError

# Faults answered before the request is handled (they stand for the network or a
# throttle in front of IMDS), and faults that rewrite what IMDS would have answered.
BEFORE = frozenset({"status", "latency", "drop", "token"})
AFTER = frozenset({"expired", "revoked", "body"})
KINDS = (*sorted(BEFORE), "source", *sorted(AFTER))
# These have a fixed target; paths do not apply to them.
FIXED_TARGET = frozenset({"token", "source", "expired", "revoked"})

DROP_MODES = ("reset", "close")
BODY_MODES = ("empty", "truncated")
# [T-19] the statuses SDKs read as "IMDSv2 is not available here".
TOKEN_STATUSES = (403, 404, 405)
MAX_DELAY = 300.0


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """What to break, where and for how long; `FaultSpec.parse` checks a JSON object."""

    kind: str
    paths: tuple[str, ...] = ()
    count: int | None = None
    duration: float | None = None
    status: int | None = None
    delay: float | None = None
    mode: str | None = None
    # One endpoint the fault is aimed at (imds.containers.kinds); None: every endpoint.
    endpoint: str | None = None

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> FaultSpec:
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise FaultError(f"unknown field(s): {', '.join(sorted(unknown))}")
        kind = data.get("kind")
        if kind not in KINDS:
            raise FaultError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
        raw_paths = data.get("paths") or ()
        if isinstance(raw_paths, str):
            raw_paths = (raw_paths,)
        if not isinstance(raw_paths, list | tuple) or not all(
            isinstance(x, str) and x.startswith("/") for x in raw_paths
        ):
            raise FaultError("paths: expected paths or globs starting with '/'")
        if raw_paths and kind in FIXED_TARGET:
            raise FaultError(f"paths: a {kind} fault has a fixed target; give no paths")
        endpoint = data.get("endpoint")
        if endpoint is not None and endpoint not in ENDPOINTS:
            raise FaultError(f"endpoint: expected one of {', '.join(ENDPOINTS)}, "
                             f"got {endpoint!r}")
        if endpoint not in (None, "imds") and kind == "token":
            # The token PUT is IMDS's alone [T-01]; the container endpoints take no token.
            raise FaultError(f"endpoint: a token fault is IMDS's, not {endpoint}'s")
        if endpoint is not None and kind == "source":
            raise FaultError("endpoint: a source fault stops the rotation every endpoint "
                             "shares; give no endpoint")
        spec = cls(
            kind=kind,
            paths=tuple(raw_paths),
            count=_number(data, "count", int, 1, 1_000_000),
            duration=_number(data, "duration", float, 0.001, 86_400.0),
            status=_number(data, "status", int, 400, 599),
            delay=_number(data, "delay", float, 0.0, MAX_DELAY),
            mode=data.get("mode"),
            endpoint=endpoint,
        )
        return spec._checked()

    def _checked(self) -> FaultSpec:
        kind = self.kind
        changes: dict[str, Any] = {}
        if kind in ("status", "token"):
            default = 503 if kind == "status" else 404
            status = self.status if self.status is not None else default
            if kind == "token" and status not in TOKEN_STATUSES:
                raise FaultError(f"status: a token fault answers 403, 404 or 405, got {status}")
            changes["status"] = status
        elif self.status is not None:
            raise FaultError(f"status: does not apply to a {kind} fault")
        if kind == "latency":
            changes["delay"] = self.delay if self.delay is not None else 2.0
        elif self.delay is not None:
            raise FaultError(f"delay: does not apply to a {kind} fault")
        modes = {"drop": DROP_MODES, "body": BODY_MODES}.get(kind)
        if modes is not None:
            mode = self.mode or modes[0]
            if mode not in modes:
                raise FaultError(f"mode: expected one of {', '.join(modes)}, got {mode!r}")
            changes["mode"] = mode
        elif self.mode is not None:
            raise FaultError(f"mode: does not apply to a {kind} fault")
        return dataclasses.replace(self, **changes)


def _number(data: Mapping[str, Any], key: str, kind: type, low: float, high: float) -> Any:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise FaultError(f"{key}: expected a number, got {value!r}")
    try:
        number = kind(value)
    except OverflowError:  # int(inf): the control API reads 1e400 as infinity
        raise FaultError(f"{key}: expected a finite number, got {value!r}") from None
    except ValueError:  # int(nan), a string that is no number
        raise FaultError(f"{key}: expected a number, got {value!r}") from None
    # NaN compares false with everything, so it fails this test too.
    if not low <= number <= high:
        raise FaultError(f"{key}: expected {low:g}..{high:g}, got {value!r}")
    return number


def path_matcher(pattern: str) -> Callable[[str], bool]:
    """A glob when the pattern has glob characters (`*` crosses `/`), else a prefix."""
    if any(c in pattern for c in "*?["):
        return re.compile(fnmatch.translate(pattern)).match  # type: ignore[return-value]
    return lambda path: path.startswith(pattern)


# error bodies as EC2 sends them: empty for 401/403 [A-03] [T-09], XHTML otherwise.
