"""
The rotation lab: what the control API, the metrics, the timeline and the pytest plugin
see and drive.

`Lab` wraps the metadata handler (faults before and after it, one count per response,
one ring-buffer entry per credential fetch) and the credential sources (outages, fetch
timing), listens to the rotators, and carries out the actions: rotate, expire, revoke,
change lifetime and refresh-ahead. Key ids appear only as their last four characters.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiohttp import web

from imds.config.options import LIFETIME_RANGE, REFRESH_AHEAD_RANGE
from imds.containers.kinds import ENDPOINTS
from imds.creds.model import Credentials, Rendered
from imds.creds.rotation import RotationEvent, Rotator, effective_ahead
from imds.creds.sources.base import CredentialSource, RoleIdentity
from imds.ec2 import wire as p
from imds.ec2.answer import CONTAINER_PREFIXES, Header
from imds.errors import FaultError, LabError, SourceError
from imds.http.observer import Fetched, Handler, Respond
from imds.lab.faults import Fault, Faults
from imds.lab.faultspec import FaultSpec
from imds.lab.fetches import CREDENTIALS_PATH, Holders, container_fetch, imds_fetch

log = logging.getLogger("imds.lab")

_new_tuple = tuple.__new__


# Distinct (path, status) pairs counted before new paths share one bucket: a client
# walking random paths must not grow memory (labels are normalised at scrape time).
MAX_COUNTED_PATHS = 2048
OVERFLOW_PATH = "/…"
# Source fetch latency buckets, seconds: a local mint is microseconds, STS ~0.1–1 s.
FETCH_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ClientFetch(NamedTuple):
    """A client fetched a credential document: when, from where, which key (hint)."""

    at: float
    client: str
    role: str
    key: str
    # "" as served; "expired" or "revoked" when a fault rewrote it; "body" when broken.
    fault: str
    # Which endpoint served it: imds, ecs or pod-identity (imds.containers.kinds).
    endpoint: str


@dataclass(frozen=True, slots=True)
class LabEvent:
    """A control action, for the timeline."""

    at: float
    what: str
    detail: str = ""


class Histogram:
    """Just enough of a histogram for fetch latency, read by the metrics collector."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.sum += value
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[index] += 1
                return
        self.counts[-1] += 1

    def cumulative(self) -> list[tuple[str, int]]:
        total, out = 0, []
        for bound, count in zip((*map(str, self.buckets), "+Inf"), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


class WatchedSource:
    """
    A credential source as the lab sees it: `source` faults fail its fetches (an STS
    outage without touching STS), and every fetch is timed.
    """

    def __init__(self, inner: CredentialSource, lab: Lab) -> None:
        self.inner = inner
        self._lab = lab

    @property
    def role(self) -> RoleIdentity:
        return self.inner.role

    def describe(self) -> str:
        return self.inner.describe()

    async def fetch(self) -> Credentials:
        lab = self._lab
        fault = lab.faults.source_failure()
        if fault is not None:
            lab.fetch_errors += 1
            raise SourceError(f"simulated source outage (fault {fault.id})")
        started = time.perf_counter()
        try:
            creds = await self.inner.fetch()
        except SourceError:
            lab.fetch_errors += 1
            lab.fetch_seconds.observe(time.perf_counter() - started)
            raise
        lab.fetch_seconds.observe(time.perf_counter() - started)
        return creds


class Lab:
    """State and actions of the rotation lab for one server."""

    def __init__(self, clock: Callable[[], float], *, fetch_log: int = 512,
                 events: int = 200) -> None:
        self.clock = clock
        self.faults = Faults(clock)
        self.rotators: dict[str, Rotator] = {}
        self.primary: Rotator | None = None
        self.fetches: deque[ClientFetch] = deque(maxlen=fetch_log)
        self.events: deque[LabEvent] = deque(maxlen=events)
        self.requests: dict[tuple[str, int | str], int] = {}
        self.tokens_issued = 0
        self.credential_fetches = 0
        self.fetches_by_endpoint = dict.fromkeys(ENDPOINTS, 0)
        # Which rotator holds a key, for the container answers (imds.lab.fetches).
        self.holders = Holders(self.rotators)
        # How metadata requests were answered (imds.http.fastpath): worked out on the fast path,
        # sent again as kept, or handed to aiohttp (odd requests, faults injected).
        self.fast_answered = 0
        self.fast_kept = 0
        self.handovers = 0
        self.rotations_ok = 0
        self.rotations_failed = 0
        self.fetch_errors = 0
        self.fetch_seconds = Histogram(FETCH_BUCKETS)
        # Files read again (imds.config.watch): (setting, result) -> count.
        self.config_reloads: dict[tuple[str, str], int] = {}
        self.started = clock()

    # ------------------------------------------------------------------ wiring

    def watch(self, source: CredentialSource) -> WatchedSource:
        return source if isinstance(source, WatchedSource) else WatchedSource(source, self)

    def attach(self, rotator: Rotator, *, primary: bool = False) -> None:
        """Follow a rotator: count its rotations, end faults bound to what it replaced."""
        if rotator in self.rotators.values():
            return
        self.rotators[rotator.source.role.name] = rotator
        if primary or self.primary is None:
            self.primary = rotator

        def on_rotation(event: RotationEvent) -> None:
            if event.ok:
                self.rotations_ok += 1
                self.faults.rotated(rotator)
            else:
                self.rotations_failed += 1

        rotator.listeners.append(on_rotation)

    def reloaded(self, key: str, result: str) -> None:
        """A watched file's new version was applied or refused (imds.config.watch)."""
        self.config_reloads[(key, result)] = self.config_reloads.get((key, result), 0) + 1
        self._event("reload", f"{key}: {result}")

    def wrap(self, handle: Handler, respond: Respond) -> Handler:
        """The metadata handler with faults around it and one count per answer."""
        faults = self.faults
        observe = self.observe

        async def observed(request: web.Request) -> web.StreamResponse:
            # With no fault injected this reads one empty tuple; see benchmarks/lab_overhead.py.
            if faults.active:
                early = await faults.apply_before(request, respond)
                if early is not None:
                    transport = request.transport
                    dropped = transport is None or transport.is_closing()
                    self._count(request.path, "dropped" if dropped else early.status)
                    return early
            response = await handle(request)
            applied = ""
            if faults.after:
                served = response.body if isinstance(response, web.Response) else None
                applied = faults.apply_after(request, response, self.rotators, self.holders)
                if applied == "revoked" and response.status != 200 \
                        and isinstance(served, bytes):
                    # A container endpoint's refusal (imds.lab.containerdocs): the client
                    # still asked for that document, and got no key.
                    self._refused(request, response.status, served)
                    return response
            body = response.body if isinstance(response, web.Response) else None
            observe(request.path, response.status, request.remote or "",
                    body if isinstance(body, bytes) else None, applied, request)
            return response

        return observed

    @property
    def intercepts(self) -> bool:
        """True while a fault may change or delay answers: only `wrap` applies them."""
        faults = self.faults
        return bool(faults.before or faults.after)

    def observe(self, path: str, status: int, client: str, body: bytes | None,
                applied: str = "", request: web.BaseRequest | None = None) -> None:
        """
        Count one answer; remember a credential document's key for the timeline. The
        `request` is read only for a container path (which endpoint answered it).
        """
        # `fetched` inlined: this runs for every answer aiohttp sends.
        fetched: Fetched = None
        if status == 200 and body is not None:
            if CREDENTIALS_PATH in path:
                fetched = imds_fetch(path, body)
            elif request is not None and path.startswith(CONTAINER_PREFIXES):
                fetched = container_fetch(path, request.rel_url.raw_query_string,
                                          request.headers.get, body, self.holders)
        self.record(path, status, client, fetched, applied)

    def _refused(self, request: web.BaseRequest, status: int, served: bytes) -> None:
        """A fetch a `revoked` fault refused: the role and endpoint of what was `served`."""
        path = request.path
        fetched = self.fetched(path, 200, served, request.headers.get,
                               request.rel_url.raw_query_string)
        if fetched is not None:
            fetched = (fetched[0], "", fetched[2])  # no key handed out
        self.record(path, status, request.remote or "", fetched, "revoked")

    def fetched(self, path: str, status: int, body: bytes | None, header: Header,
                query: str = "") -> Fetched:
        """
        The role, key hint and endpoint of a credential document answered for `path`, else
        None. `header` and `query` are read only for a container path's 200 (which of the
        endpoints answered it, imds.containers.kinds).
        """
        if status != 200 or body is None:
            return None
        if CREDENTIALS_PATH in path:
            return imds_fetch(path, body)
        if path.startswith(CONTAINER_PREFIXES):
            return container_fetch(path, query, header, body, self.holders)
        return None

    def answered(self, path: str, status: int, client: str, fetched: Fetched,
                 kept: bool) -> None:
        """One answer the fast path sent (imds.http.observer.Observer.answered)."""
        if kept:
            self.fast_kept += 1
        else:
            self.fast_answered += 1
        self.record(path, status, client, fetched)

    def handed_over(self) -> None:
        """A fast-path connection went to aiohttp (imds.http.observer.Observer)."""
        self.handovers += 1

    def record(self, path: str, status: int, client: str, fetched: Fetched,
               applied: str = "") -> None:
        """`observe` with `fetched` worked out already (imds.http.fastpath keeps it)."""
        # Once per answer, kept ones included (imds.http.fastpath): the common case, a path
        # and status counted before, is done here without a call.
        requests = self.requests
        key = (path, status)
        known = requests.get(key)
        if known is None:
            self._count(path, status)
        else:
            requests[key] = known + 1
        if fetched is None:
            if status == 200 and path == p.TOKEN_PATH:
                self.tokens_issued += 1
            return
        self.credential_fetches += 1
        role, hint, endpoint = fetched
        self.fetches_by_endpoint[endpoint] += 1
        # A named tuple's own __new__ is a Python function; tuple.__new__ builds the same
        # object in C, in half the time.
        fetch = _new_tuple(ClientFetch, (self.clock(), client, role, hint, applied, endpoint))
        self.fetches.append(fetch)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("client %s fetched role %s from %s: key %s%s", client, role, endpoint,
                      hint or "(none)", f" ({applied})" if applied else "")

    def _count(self, path: str, status: int | str) -> None:
        key = (path, status)
        requests = self.requests
        known = requests.get(key)
        if known is not None:
            requests[key] = known + 1
        elif len(requests) < MAX_COUNTED_PATHS:
            requests[key] = 1
        else:
            overflow = (OVERFLOW_PATH, status)
            requests[overflow] = requests.get(overflow, 0) + 1

    # ------------------------------------------------------------------ actions

    def rotator(self, role: str | None = None) -> Rotator:
        if role is None or role == "":
            if self.primary is None:
                raise LabError("no role is served", 404)
            return self.primary
        rotator = self.rotators.get(role)
        if rotator is None:
            raise LabError(f"role {role!r} is not served here", 404)
        return rotator

    async def rotate(self, role: str | None = None) -> Rendered:
        """New credentials now; the old stay valid until their own expiry [L-05]."""
        rotator = self.rotator(role)
        try:
            rendered = await rotator.rotate_now()
        except SourceError as exc:
            log.warning("control: rotation of role %s failed: %s", rotator.source.role.name, exc)
            self._event("rotate", f"failed: {exc}")
            raise LabError(f"rotation failed: {exc}", 503) from exc
        self._event("rotate", rendered.credentials.key_hint)
        return rendered

    def expire(self, role: str | None = None, endpoint: str | None = None) -> Fault:
        """
        Serve the current keys as already expired [L-04] until the rotator replaces them:
        what IMDS does when it cannot refresh, and what static stability is for. On every
        endpoint that serves the role, or on `endpoint` only.
        """
        return self._bound("expired", role, endpoint)

    def revoke(self, role: str | None = None, endpoint: str | None = None) -> Fault:
        """
        Stop serving the current keys: the credential document becomes EC2's "cannot assume
        the role" answer [C-06] (the container endpoints' own, imds.lab.containerdocs) until the
        rotator replaces them (at its next refresh, or now with `rotate`). Keys already
        handed out are not recalled [L-05].
        """
        return self._bound("revoked", role, endpoint)

    def _bound(self, kind: str, role: str | None, endpoint: str | None) -> Fault:
        try:
            spec = FaultSpec.parse({"kind": kind, "endpoint": endpoint})
        except FaultError as exc:
            raise LabError(str(exc)) from None
        rotator = self.rotator(role)
        current = rotator.current
        if current is None:
            raise LabError("no credentials to act on yet", 409)
        fault = self.faults.add(spec, bound=(rotator, current))
        self._event(kind, current.credentials.key_hint)
        return fault

    def add_fault(self, spec: FaultSpec) -> Fault:
        fault = self.faults.add(spec)
        self._event("fault", f"{fault.id} {fault.summary()}")
        return fault

    def settings(self, *, lifetime: float | None = None, refresh_ahead: float | None = None,
                 role: str | None = None) -> dict[str, Any]:
        """
        Change the lifetime of the next credentials and how far ahead of expiry the rotator
        replaces them; the schedule is reconsidered at once.
        """
        # The bounds of --credential-lifetime and --refresh-ahead (imds.config.options).
        for name, value, (low, high) in (("lifetime", lifetime, LIFETIME_RANGE),
                                         ("refresh_ahead", refresh_ahead, REFRESH_AHEAD_RANGE)):
            if value is not None and not low <= value <= high:
                raise LabError(f"{name}: expected seconds in {low}..{high}, got {value!r}")
        rotator = self.rotator(role)
        source: Any = rotator.source
        # Any: whether `lifetime` can be set is asked of the source's type, at runtime.
        inner: Any = source.inner if isinstance(source, WatchedSource) else source
        if lifetime is not None:
            setter = getattr(type(inner), "lifetime", None)
            if not isinstance(setter, property) or setter.fset is None:
                raise LabError(f"the lifetime of {inner.describe()} cannot be changed "
                               "at runtime", 409)
            inner.lifetime = lifetime
        if refresh_ahead is not None:
            rotator.refresh_ahead = refresh_ahead
        rotator.poke()
        detail = ", ".join(f"{name} {value:g}s" for name, value in
                           (("lifetime", lifetime), ("refresh-ahead", refresh_ahead))
                           if value is not None)
        log.info("settings for role %s: %s", rotator.source.role.name, detail or "unchanged")
        self._event("settings", detail)
        return self.role_status(rotator)

    def _event(self, what: str, detail: str) -> None:
        # Logged where it happens (rotator, fault registry, settings): one line per event.
        self.events.append(LabEvent(self.clock(), what, detail))

    # ------------------------------------------------------------------ status

    def role_status(self, rotator: Rotator) -> dict[str, Any]:
        now = self.clock()
        current = rotator.current
        source: Any = rotator.source
        inner = source.inner if isinstance(source, WatchedSource) else source
        lifetime = getattr(inner, "lifetime", None)
        out: dict[str, Any] = {
            "role": rotator.source.role.name,
            "source": rotator.source.describe(),
            "lifetime": lifetime if isinstance(lifetime, int | float) else None,
            "refresh_ahead": rotator.refresh_ahead,
            "next_rotation": rotator.next_refresh_at(),
            "current": None,
        }
        if current is not None:
            creds = current.credentials
            served = "valid" if now < current.expires_at else "expired"
            for fault in self.faults.active:
                if fault.bound is not None and fault.bound[1] is current:
                    served = fault.kind
            out["current"] = {
                "key": creds.key_hint,
                "issued": creds.issued.timestamp(),
                "expires": current.expires_at,
                "seconds_left": current.expires_at - now,
                "effective_ahead": effective_ahead(rotator.refresh_ahead, creds.lifetime),
                "state": served,
            }
        out["rotations"] = [
            {"at": e.at, "ok": e.ok, "key": e.key_hint, "expires": e.expires_at or None,
             "error": e.error}
            for e in rotator.history
        ]
        return out

    def status(self) -> dict[str, Any]:
        """Everything the timeline draws, as JSON-ready data."""
        primary = self.primary
        return {
            "now": self.clock(),
            "started": self.started,
            "role": primary.source.role.name if primary is not None else None,
            "roles": {name: self.role_status(r) for name, r in self.rotators.items()},
            "faults": [f.describe() for f in self.faults.active],
            "fault_history": [f.describe() for f in self.faults.history],
            "fetches": [
                {"at": f.at, "client": f.client, "role": f.role, "key": f.key,
                 "fault": f.fault, "endpoint": f.endpoint}
                for f in self.fetches
            ],
            "events": [{"at": e.at, "what": e.what, "detail": e.detail} for e in self.events],
        }
