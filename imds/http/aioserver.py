"""
The HTTP layer under the app: bounded parsing, a connection cap, idle and slow-client
timeouts, EC2-shaped answers to requests that do not parse, and a quiet access log.

aiohttp parses (llhttp, in C) and runs the app; this module only sets its limits and
replaces the parts that would otherwise let one client hurt the others or answer
un-EC2-like:

- `CappedServer` keeps at most `max_connections` open. Over the cap it closes the
  connection idle the longest (else the oldest), never the newcomer: a thousand idle or
  slow connections cannot keep a new SDK client from being served. With the fast path on,
  each connection starts there (imds.http.fastpath) and is handed to aiohttp when it asks for
  more than a plain answer; on Linux most connections are answered and closed by the
  accept loop (imds.http.acceptor) and never reach the cap. The control listener has a
  `CappedServer` of its own, with aiohttp's answers instead of EC2's (imds.lab.control); the
  two caps share the open-file limit (imds.http.descriptors).
- Each connection aiohttp answers runs imds's per-connection protocol (imds.http.handlers):
  EC2's answers to what does not parse, half-close, eviction, a quiet access log.

The idle timeout is aiohttp's keep-alive timer, armed when a connection opens and after
each response and disarmed only by a complete request, so it bounds a slowloris client
(headers trickled in) as well as an idle one. Fast-path connections keep the same
deadline, checked by one sweep over them all a quarter of the timeout (at most a second)
apart.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from imds.config import Config
from imds.http import acceptor, descriptors
from imds.http.app import STATE
from imds.http.fastpath import FastPath, Wire
from imds.http.handlers import AccessLog, CappedHandler, Ec2RequestHandler, ec2_errors

log = logging.getLogger("imds.httpd")

# The shortest listen backlog (Runner.backlog); Linux's default net.core.somaxconn.
_MIN_BACKLOG = 4096


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client may hold; from `Config`, see its options."""

    max_connections: int = 1024
    idle_timeout: float = 5.0
    max_header_size: int = 8190
    max_headers: int = 64

    @classmethod
    def of(cls, config: Config) -> Limits:
        return cls(
            max_connections=config.max_connections,
            idle_timeout=float(config.idle_timeout),
            max_header_size=config.max_header_size,
            max_headers=config.max_headers,
        )

    def handler_args(self) -> dict[str, Any]:
        """Keyword arguments for aiohttp's `RequestHandler`."""
        return {
            "keepalive_timeout": self.idle_timeout,
            # The request line, each header name, each header value; the parser stops
            # reading past any of them.
            "max_line_size": self.max_header_size,
            "max_field_size": self.max_header_size,
            "max_headers": self.max_headers,
            # Never wait to drain a body nobody asked for: the app refuses bodies and the
            # connection closes, instead of reading for up to 10 s (aiohttp's default).
            "lingering_time": 0.0,
            # TCP keep-alive probes start after two hours; the idle timeout is far shorter,
            # so the per-connection setsockopt is pure cost.
            "tcp_keepalive": False,
            "access_log_class": AccessLog,
        }


class Connection(Protocol):
    """What the connection cap needs of a connection: aiohttp's or the fast path's."""

    @property
    def idle(self) -> bool: ...

    def force_close(self) -> None: ...

    def evict(self) -> None: ...


class Waiter(Protocol):
    """An accept loop waiting for `CappedServer` to have room (imds.http.acceptor)."""

    def resume(self) -> None: ...


class CappedServer(Server):
    """
    aiohttp's connection factory with a cap on open connections; with a `Wire`, each
    connection starts on the fast path (imds.http.fastpath) and comes here to be handed over.
    `ec2` False keeps aiohttp's own answers (the control listener's JSON API).
    """

    def __init__(self, base: Server, limits: Limits, max_connections: int,
                 wire: Wire | None = None, *, ec2: bool = True) -> None:
        # aiohttp offers no hook for the protocol class, so the server the runner built is
        # rebuilt from its own arguments (private; tests/http/test_aiohttp_private_api.py
        # pins them).
        super().__init__(
            ec2_errors(base.request_handler) if ec2 else base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            **base._kwargs,
        )
        self.limits = limits
        self.max_connections = max_connections
        self.wire = wire
        self._handler: type[CappedHandler] = Ec2RequestHandler if ec2 else CappedHandler
        # Live connections of both kinds, oldest first (dicts keep insertion order).
        self._live: dict[Connection, None] = {}
        self.evicted = 0
        # What the descriptor budget counts besides the live (imds.http.descriptors): evicted
        # connections not closed yet, connections the accept loop is handing to the event
        # loop, and the accept loops waiting for the sum to fall below the limit.
        self._closing: dict[Connection, None] = {}
        self._pending = 0
        self.held_max = max_connections + descriptors.headroom(max_connections)
        self._waiting: list[Waiter] = []
        # Fast-path connections time out by one sweep a fraction of the idle timeout
        # apart: a timer per connection cost more than the rest of answering it.
        self._sweep_every = min(1.0, limits.idle_timeout / 4)
        self._sweeper: asyncio.TimerHandle | None = None
        if wire is not None:
            self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    # The event loop calls this as the listening socket's protocol factory, which may
    # return any asyncio protocol; only aiohttp's type says RequestHandler.
    def __call__(self) -> asyncio.Protocol:  # type: ignore[override]
        if self.wire is not None:
            return FastPath(self, self.wire)
        return self.aiohttp_protocol()

    def aiohttp_protocol(self) -> CappedHandler:
        return self._handler(self, loop=self._loop, **self._kwargs)

    def hand_over(self, fast: FastPath, transport: asyncio.Transport, data: bytes) -> None:
        """Give a fast-path connection, and the bytes it has read, to aiohttp for good."""
        self._live.pop(fast, None)
        handler = self.aiohttp_protocol()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        handler.data_received(data)

    @property
    def held(self) -> int:
        """Descriptors held by this listener's connections, closing ones included."""
        return len(self._live) + len(self._closing) + self._pending

    def has_room(self) -> bool:
        """Whether the accept loop may take one more connection (imds.http.descriptors)."""
        return self.held < self.held_max

    def wait_for_room(self, waiter: Waiter) -> None:
        """Call `waiter.resume()` once a connection of this listener has let go."""
        if waiter not in self._waiting:
            self._waiting.append(waiter)

    def stop_waiting(self, waiter: Waiter) -> None:
        if waiter in self._waiting:
            self._waiting.remove(waiter)

    def adopting(self) -> None:
        """
        The accept loop is giving the event loop a connection: make room for it now, not
        once the event loop has made it, so that no accept batch takes the listener past
        its cap while the closes it causes are still to come.
        """
        self._pending += 1
        if len(self._live) + self._pending > self.max_connections:
            self._evict(newcomer=None)

    def adopted(self) -> None:
        """The event loop has the connection `adopting` announced (or it failed)."""
        self._pending -= 1
        self._released()

    def track(self, connection: Connection) -> None:
        self._live[connection] = None
        if len(self._live) > self.max_connections:
            self._evict(newcomer=connection)

    def untrack(self, connection: Connection) -> None:
        self._live.pop(connection, None)
        self._closing.pop(connection, None)
        if self._waiting:
            self._released()

    def _released(self) -> None:
        if self._waiting and self.has_room():
            waiting, self._waiting = self._waiting, []
            for waiter in waiting:
                waiter.resume()

    def connection_made(self, handler: RequestHandler, transport: Any) -> None:
        super().connection_made(handler, transport)
        assert isinstance(handler, CappedHandler)  # made by aiohttp_protocol()
        self.track(handler)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        if isinstance(handler, CappedHandler):
            self.untrack(handler)
        super().connection_lost(handler, exc)

    def _sweep(self) -> None:
        now = self.loop.time()
        for connection in [c for c in self._live
                           if isinstance(c, FastPath) and c.deadline <= now]:
            connection.force_close()
        self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)

    def pre_shutdown(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._waiting.clear()
        # Fast-path connections hold no answer in progress: they close at once.
        for connection in list(self._live):
            if isinstance(connection, FastPath):
                connection.force_close()
        super().pre_shutdown()

    def _evict(self, newcomer: Connection | None) -> None:
        # The oldest connection waiting for a request goes first: on an IMDS (one short
        # request per connection, EC2 closes each [N-04]) that is a stalled or hostile
        # client. If every other connection is mid-request, the oldest goes.
        oldest: Connection | None = None
        for connection in self._live:
            if connection is newcomer:
                continue
            if oldest is None:
                oldest = connection
            if connection.idle:
                oldest = connection
                break
        if oldest is not None:
            # Counted until the event loop lets go of it (untrack), a turn later.
            self._live.pop(oldest, None)
            self._closing[oldest] = None
            self.evicted += 1
            oldest.evict()


class Runner(web.AppRunner):
    """An `AppRunner` whose connections get `Limits`."""

    def __init__(self, app: web.Application, limits: Limits, *, fast_path: bool = False,
                 ec2: bool = True, max_connections: int | None = None,
                 **kwargs: Any) -> None:
        """
        `max_connections` is the cap the open-file limit leaves (imds.http.descriptors.share);
        by default `limits.max_connections`. `ec2` as for `CappedServer`.
        """
        super().__init__(app, handle_signals=False, **limits.handler_args(), **kwargs)
        self._limits = limits
        self._fast_path = fast_path
        self._ec2 = ec2
        self._max_connections = (limits.max_connections if max_connections is None
                                 else max_connections)

    @property
    def backlog(self) -> int:
        """
        Accept queue length for the listening sockets: a burst of new clients (a fleet of
        containers starting) waits there instead of having its SYNs dropped, which costs
        a client a one-second retransmit, botocore's whole timeout [S-PY-06]. The kernel
        caps it at net.core.somaxconn.

        With deferred accept (imds.http.acceptor) the same length also bounds the connections
        the kernel holds back until their first bytes arrive; when many such bytes arrive
        at once, all of those connections become ready together. So it is never below
        `_MIN_BACKLOG`, whatever the connection cap: the queues cost the kernel a few
        hundred bytes an entry and imds nothing.
        """
        return max(_MIN_BACKLOG, self._max_connections)

    async def _make_server(self) -> Server:
        base = await super()._make_server()
        wire = Wire(self.app[STATE], self._limits.max_headers) if self._fast_path else None
        return CappedServer(base, self._limits, self._max_connections, wire, ec2=self._ec2)

    def site(self, host: str, port: int) -> web.BaseSite:
        """
        A TCP site for host:port. On Linux, connections are accepted by imds.http.acceptor,
        which takes none past what the connection cap and its headroom hold, and with the
        fast path answers most of them there; elsewhere by the event loop.
        """
        capped = self.capped
        if capped is not None and acceptor.SUPPORTED:
            return acceptor.AcceptorSite(self, capped, host, port, backlog=self.backlog)
        return web.TCPSite(self, host, port, reuse_address=True, backlog=self.backlog)

    @property
    def capped(self) -> CappedServer | None:
        server = self.server
        return server if isinstance(server, CappedServer) else None
