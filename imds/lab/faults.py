"""
Faults injected on purpose, so a client can be tested against a broken IMDS [§15 item 9].

    kind      what the client sees                                   why it matters
    status    an error status (429 by default 503) on chosen paths  [P-03] [P-04] [S-GO-04]
    latency   the answer, late                                      SDK timeouts [S-PY-06] [S-GO-04]
    drop      the connection closed without an answer, FIN or RST   [T-22] [P-02]
    token     the token PUT answers 403, 404 or 405                 IMDSv1 fallback [S-PY-02]
                                                                     [S-GO-02] [S-JS-02]
    source    nothing yet: the credential source (STS) fails, so    the rotator keeps the current
              the rotator cannot replace credentials                 credentials and backs off
    expired   the current keys with an `Expiration` already past    static stability [L-04]
    revoked   EC2's "cannot assume the role" document, no keys      [C-06]
    body      200 with an empty or truncated body                   [S-PY-04] [S-JS-11]

Every kind but `token` and `source` acts on all three endpoints (imds.containers.kinds) unless
its `endpoint` names one: `expired` and `revoked` rewrite the ECS and Pod Identity documents
of the role as each of those endpoints would (imds.lab.containerdocs).

A fault lasts for a number of requests (`count`), a number of seconds (`duration`), both
(whichever ends first), or until it is cleared. `expire` and `revoke` in the control API
are `expired` and `revoked` faults *bound* to the current credentials: they end when the
rotator replaces them.

The request path pays only while a fault is active: the handler reads `Faults.active`,
an empty tuple otherwise. Everything here runs on the server's event loop, so the
registry needs no lock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import http
import itertools
import logging
import socket
import struct
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from imds.containers.kinds import IMDS, endpoint_of
from imds.creds.model import Credentials, Rendered, credential_document, unauthorized_document
from imds.creds.rotation import Rotator
from imds.ec2 import wire as p
from imds.ec2.answer import CONTAINER_PREFIXES
from imds.ec2.wire import from_epoch
from imds.http.observer import Respond
from imds.lab.containerdocs import expired_body, revoked_reply, rewrite
from imds.lab.faultspec import (
    AFTER,
    BEFORE,
    FaultSpec,
    path_matcher,
)
from imds.lab.fetches import Holders, container_key, credential_path
from imds.logs import printable

log = logging.getLogger("imds.faults")

_BODIES = {
    400: p.BAD_REQUEST_BODY, 401: p.EMPTY, 403: p.EMPTY, 404: p.NOT_FOUND_BODY,
    405: p.METHOD_NOT_ALLOWED_BODY,
}


def error_body(status: int) -> bytes:
    body = _BODIES.get(status)
    if body is None:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        body = p._xhtml(f"{status} - {phrase}")  # EC2's one error page [R-06]
    return body


class Fault:
    """One active (or ended) fault: its spec, its budget and what it has done."""

    def __init__(self, fault_id: str, spec: FaultSpec, now: float,
                 bound: tuple[Rotator, Rendered] | None) -> None:
        self.id = fault_id
        self.spec = spec
        self.kind = spec.kind
        self.endpoint = spec.endpoint
        self.created = now
        self.until = now + spec.duration if spec.duration is not None else None
        self.remaining = spec.count
        self.hits = 0
        # (rotator, generation): the fault ends when the rotator moves past it.
        self.bound = bound
        self.ended: float | None = None
        self.end_reason = ""
        self._matchers = tuple(path_matcher(x) for x in spec.paths)
        self._rendered: dict[tuple[int, str], bytes] = {}
        self._timer: asyncio.TimerHandle | None = None

    def matches(self, path: str) -> bool:
        return not self._matchers or any(m(path) for m in self._matchers)

    def stated_expiry(self, creds: Credentials) -> dt.datetime:
        """
        An `Expiration` already past [L-04]: the moment the fault began (never before the
        keys were issued), or their own if that came first.
        """
        return min(creds.expiration, max(creds.issued, from_epoch(self.created)))

    def _cached(self, key: tuple[int, str], render: Callable[[], bytes]) -> bytes:
        body = self._rendered.get(key)
        if body is None:
            body = render()
            if any(k[0] != key[0] for k in self._rendered):
                self._rendered = {}  # one generation at a time, a document per endpoint
            self._rendered[key] = body
        return body

    def expired_document(self, current: Rendered, extended: bool, account_id: str) -> bytes:
        """The current keys in EC2's document, stating an `Expiration` already past."""
        creds = current.credentials

        def render() -> bytes:
            late = dataclasses.replace(creds, expiration=self.stated_expiry(creds))
            return credential_document(late, account_id if extended else None)

        return self._cached((id(current), "extended" if extended else IMDS), render)

    def expired_container_document(self, current: Rendered, endpoint: str,
                                   served: bytes) -> bytes:
        """The same for a container endpoint's document `served` (imds.lab.containerdocs)."""
        creds = current.credentials
        # One rotator serves one role, so one document per endpoint (imds.creds.pool).
        return self._cached((id(current), endpoint),
                            lambda: expired_body(creds, self.stated_expiry(creds), endpoint,
                                                 served))

    def describe(self) -> dict[str, Any]:
        spec = self.spec
        out: dict[str, Any] = {
            "id": self.id, "kind": self.kind, "paths": list(spec.paths), "created": self.created,
            "until": self.until, "count": spec.count, "remaining": self.remaining,
            "hits": self.hits, "ended": self.ended, "end_reason": self.end_reason,
        }
        for name in ("status", "delay", "mode", "endpoint"):
            value = getattr(spec, name)
            if value is not None:
                out[name] = value
        if self.bound is not None:
            rotator, generation = self.bound
            out["role"] = rotator.source.role.name
            out["key"] = generation.credentials.key_hint
        return out

    def summary(self) -> str:
        spec = self.spec
        parts = [self.kind]
        if spec.status is not None:
            parts.append(str(spec.status))
        if spec.delay is not None:
            parts.append(f"{spec.delay:g}s")
        if spec.mode is not None:
            parts.append(spec.mode)
        if spec.paths:
            # Logged when the fault is added: the paths are the control client's text.
            parts.append("on " + printable(",".join(spec.paths)))
        if spec.endpoint is not None:
            parts.append(f"at {spec.endpoint}")
        if self.bound is not None:
            parts.append(f"for key {self.bound[1].credentials.key_hint}")
        if spec.count is not None:
            parts.append(f"count {spec.count}")
        if spec.duration is not None:
            parts.append(f"for {spec.duration:g}s")
        return " ".join(parts)


class Faults:
    """The registry: active faults by phase, a bounded history, timers for durations."""

    def __init__(self, clock: Callable[[], float], history: int = 200) -> None:
        self._clock = clock
        self._ids = itertools.count(1)
        self._all: list[Fault] = []
        # Read on every request: empty tuples when nothing is injected.
        self.active: tuple[Fault, ...] = ()
        self.before: tuple[Fault, ...] = ()
        self.after: tuple[Fault, ...] = ()
        self.source: tuple[Fault, ...] = ()
        self.history: deque[Fault] = deque(maxlen=history)
        self.listeners: list[Callable[[str, Fault], None]] = []

    # ------------------------------------------------------------------ registry

    def add(self, spec: FaultSpec, *, bound: tuple[Rotator, Rendered] | None = None) -> Fault:
        fault = Fault(f"f{next(self._ids)}", spec, self._clock(), bound)
        if spec.duration is not None:
            loop = asyncio.get_running_loop()
            fault._timer = loop.call_later(spec.duration, self.end, fault, "duration")
        self._all.append(fault)
        self.history.append(fault)
        self._rebuild()
        log.info("fault %s added: %s", fault.id, fault.summary())
        self._notify("added", fault)
        return fault

    def get(self, fault_id: str) -> Fault | None:
        return next((f for f in self.history if f.id == fault_id), None)

    def end(self, fault: Fault, reason: str) -> None:
        if fault.ended is not None:
            return
        fault.ended = self._clock()
        fault.end_reason = reason
        if fault._timer is not None:
            fault._timer.cancel()
        self._all.remove(fault)
        self._rebuild()
        log.info("fault %s ended (%s) after %d hit(s)", fault.id, reason, fault.hits)
        self._notify("ended", fault)

    def clear(self) -> int:
        faults = list(self._all)
        for fault in faults:
            self.end(fault, "cleared")
        return len(faults)

    def rotated(self, rotator: Rotator) -> None:
        """End the faults bound to credentials `rotator` no longer serves."""
        for fault in list(self._all):
            if fault.bound is not None and fault.bound[0] is rotator \
                    and rotator.current is not fault.bound[1]:
                self.end(fault, "rotated")

    def _rebuild(self) -> None:
        faults = tuple(self._all)
        self.active = faults
        self.before = tuple(f for f in faults if f.kind in BEFORE)
        self.after = tuple(f for f in faults if f.kind in AFTER)
        self.source = tuple(f for f in faults if f.kind == "source")

    def _notify(self, what: str, fault: Fault) -> None:
        for listener in self.listeners:
            listener(what, fault)

    def _use(self, fault: Fault) -> None:
        fault.hits += 1
        if fault.remaining is not None:
            fault.remaining -= 1
            if fault.remaining <= 0:
                self.end(fault, "count")

    def _live(self, fault: Fault) -> bool:
        # The timer ends a fault on the loop's clock; this covers an injected clock that
        # runs ahead of it.
        if fault.until is not None and self._clock() >= fault.until:
            self.end(fault, "duration")
            return False
        return fault.ended is None

    # ------------------------------------------------------------------ applying

    def source_failure(self) -> Fault | None:
        """The source fault that fails this fetch, if any (spending one of its count)."""
        for fault in self.source:
            if self._live(fault):
                self._use(fault)
                return fault
        return None

    async def apply_before(
        self, request: web.BaseRequest, respond: Respond
    ) -> web.StreamResponse | None:
        """An answer that replaces the real one, or None to handle the request (maybe late)."""
        path = request.path
        endpoint = ""  # worked out for the first fault aimed at one endpoint
        for fault in self.before:
            kind = fault.kind
            if kind == "token":
                if path != p.TOKEN_PATH or request.method != "PUT":
                    continue
            elif not fault.matches(path):
                continue
            if fault.endpoint is not None:
                endpoint = endpoint or endpoint_of(path, request.rel_url.raw_query_string,
                                                   request.headers.get)
                if endpoint != fault.endpoint:
                    continue
            if not self._live(fault):
                continue
            self._use(fault)
            spec = fault.spec
            if kind == "latency":
                await asyncio.sleep(spec.delay or 0.0)
                continue
            if kind == "drop":
                _drop(request, spec.mode or "reset")
                # Nothing reaches the client: writing to the closed transport fails and
                # aiohttp treats it as the client gone.
                return respond(500)
            status = spec.status or 503
            return respond(status, error_body(status))
        return None

    def apply_after(
        self,
        request: web.BaseRequest,
        response: web.StreamResponse,
        rotators: Mapping[str, Rotator],
        holders: Holders,
    ) -> str:
        """Rewrite a 200 the way the active faults say; returns the kind applied, or ""."""
        if response.status != 200 or not isinstance(response, web.Response):
            return ""
        path = request.path
        endpoint = IMDS
        if path.startswith(CONTAINER_PREFIXES):
            endpoint = endpoint_of(path, request.rel_url.raw_query_string, request.headers.get)
        for fault in self.after:
            kind = fault.kind
            if fault.endpoint is not None and fault.endpoint != endpoint:
                continue
            if endpoint != IMDS and kind != "body":
                if self._container(fault, response, endpoint, path, holders):
                    return kind
                continue
            if kind == "body":
                if not fault.matches(path) or not self._live(fault):
                    continue
                body = response.body
                assert isinstance(body, bytes)
                response.body = b"" if fault.spec.mode == "empty" else body[: len(body) // 2]
                self._use(fault)
                return kind
            target = credential_path(path)
            if target is None:
                continue
            rotator = rotators.get(target.role)
            current = rotator.current if rotator is not None else None
            if current is None or not self._live(fault):
                continue
            if fault.bound is not None and fault.bound[1] is not current:
                continue
            role = rotator.source.role  # type: ignore[union-attr]
            if kind == "revoked":
                response.body = unauthorized_document(role.name, from_epoch(self._clock()))
            else:
                response.body = fault.expired_document(current, target.extended, role.account_id)
            self._use(fault)
            return kind
        return ""

    def _container(self, fault: Fault, response: web.Response, endpoint: str, path: str,
                   holders: Holders) -> bool:
        """`expired` or `revoked` on a container endpoint's credential document."""
        body = response.body
        assert isinstance(body, bytes)
        key = container_key(body)
        if key is None:
            return False
        if fault.bound is not None:
            current: Rendered | None = fault.bound[1]
        else:
            holder = holders.of(key)
            current = holder.current if holder is not None else None
        if (current is None or current.credentials.access_key_id != key
                or not self._live(fault)):
            return False
        if fault.kind == "revoked":
            rewrite(response, revoked_reply(endpoint, path, fault.id))
        else:
            response.body = fault.expired_container_document(current, endpoint, body)
        self._use(fault)
        return True


def _drop(request: web.BaseRequest, mode: str) -> None:
    transport = request.transport
    if transport is None:
        return
    if mode == "reset":
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger 0: close() sends RST, the "Connection reset by peer" of [T-22].
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()
