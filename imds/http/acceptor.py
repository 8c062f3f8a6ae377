"""
The accept loop in front of the fast path, on Linux: a connection whose request is in
when it is accepted is answered and closed before the event loop ever sees it.

An SDK opens a new connection for each request [N-04], and EC2 closes each after its
answer. Under that load the event loop's own bookkeeping per connection (a transport,
registering the socket for reading, a callback when the request arrives, unregistering
it) cost more than the answer (docs/benchmarks.md). So the listening socket is made with
TCP_DEFER_ACCEPT, and the kernel hands a connection over only once its first bytes have
arrived. `Acceptor` accepts a batch each time the listening socket is ready, reads each
connection's request at once, and when it is a whole plain request (imds.http.fastpath.Wire)
sends the answer and closes: accept4, recv, send and close (and the getsockname CPython
makes for each socket object), nothing registered.

Everything else is adopted by the event loop, starting on `FastPath` with what was read
and written so far: a head not complete yet, a request aiohttp must answer, a kept-alive
connection, an answer the socket did not take whole. So every limit and every answer to
an odd request is still the fast path's or aiohttp's; this module only answers what they
would answer the same way.

A client that connects and sends nothing is handed over by the kernel after about a
second anyway (the deferral ends with the first SYN-ACK retransmission), and its idle
timeout counts from then.

Without the fast path (`--fast-path false`, and the control listener) the same loop
accepts, with no deferral, and adopts every connection straight into aiohttp: what it
keeps from the loop is the bound below, which the event loop's own accept code lacks (it
takes up to a backlog's worth of connections a turn, or all there are, before any
protocol sees one).

The loop takes no connection its listener cannot hold (imds.http.descriptors): before each
accept it checks the listener's descriptors against its cap and headroom, and each
connection it adopts first makes room by closing the idlest one. When there is no room
it stops reading the listening socket until a connection lets go, and the clients wait in
the backlog for a moment instead of the whole process running out of descriptors. Should
accept(2) still fail for want of descriptors (taken by something else), it waits for the
next one to be let go, or a second at most, and says so once a minute, not once a try.
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import errno
import logging
import socket
import time
import traceback
from typing import Any, Protocol

from aiohttp import web

from imds.http.fastpath import Adopted, FastPath, Owner, Wire

log = logging.getLogger("imds.httpd")

# Linux only; elsewhere the event loop accepts and every connection starts on FastPath.
SUPPORTED = hasattr(socket, "TCP_DEFER_ACCEPT")

# Seconds the kernel holds a silent connection back (rounded up to one SYN-ACK
# retransmission): the value nginx's `deferred` uses.
DEFER_SECONDS = 1

# Connections accepted per wake-up at most, so a flood of connects still leaves the loop
# time for the rotation, the control API and connections it has adopted.
BATCH = 64

# Accept errors that concern one connection only (accept(2)): skip it and go on.
_PASSING = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN,
                      errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH,
                      errno.EOPNOTSUPP, errno.ENETUNREACH, errno.EINTR})

# Out of descriptors: asyncio's own loop stops accepting for a second (ACCEPT_RETRY_DELAY);
# here a connection letting go of one ends the wait sooner.
_RETRY_DELAY = 1.0

# Seconds between two warnings about it. asyncio logs a traceback for each failed accept,
# and for each of the up to `backlog` it tries in one turn: 84 MB of stderr in 10 s under
# an idle flood without uvloop (CPython issue gh-151615).
_WARN_EVERY = 60.0


class _Socket:
    """What the wire asks of a transport to set the hop limit (imds.http.hoplimit.SocketHolder)."""

    __slots__ = ("sock",)

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else default


class Listener(Owner, Protocol):
    """
    What the accept loop needs of the server it accepts for (imds.http.aioserver's
    CappedServer): what a fast-path connection needs, plus the connection cap's
    bookkeeping. A protocol, so that the server may import this module and not the other
    way round.
    """

    def aiohttp_protocol(self) -> asyncio.Protocol: ...

    def has_room(self) -> bool: ...

    def wait_for_room(self, waiter: Acceptor) -> None: ...

    def stop_waiting(self, waiter: Acceptor) -> None: ...

    def adopting(self) -> None: ...

    def adopted(self) -> None: ...


class Acceptor:
    """One listening socket, accepted from by hand (see the module's docstring)."""

    def __init__(self, sock: socket.socket, server: Listener) -> None:
        self.sock = sock
        self._server = server
        # None: no fast path, every connection goes to aiohttp as it is.
        self._wire: Wire | None = server.wire
        self._loop = server.loop
        self._read_size = server.limits.max_header_size + 4
        self._max_header_size = server.limits.max_header_size
        self._adopting: set[asyncio.Task[None]] = set()
        self._reading = False
        self._closed = False
        self._retry: asyncio.TimerHandle | None = None
        self._warned = -_WARN_EVERY
        self._unwarned = 0
        # Connections answered and closed here, and connections given to the event loop.
        self.answered = 0
        self.adopted = 0
        # Accepted connections are C-level sockets (_socket.socket, which socket.socket
        # wraps): the Python wrapper and its enum-typed family cost 5 µs a connection,
        # the C one 1 µs (a connection costs about 60 µs in all).
        self._kind = (int(sock.family), int(sock.type), sock.proto)
        self.resume()

    def close(self) -> None:
        self._closed = True
        self._server.stop_waiting(self)
        self._pause()
        self.sock.close()
        for task in self._adopting:
            task.cancel()

    def resume(self) -> None:
        """Read the listening socket again (`CappedServer` calls it once there is room)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if not self._reading and not self._closed:
            self._loop.add_reader(self.sock.fileno(), self._ready)
            self._reading = True

    def _pause(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._reading:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self.sock.fileno())
            self._reading = False

    def _ready(self) -> None:
        # What socket.accept does, minus its wrapper (above).
        accept = self.sock._accept  # type: ignore[attr-defined]
        family, kind, proto = self._kind
        server = self._server
        for _ in range(BATCH):
            if not server.has_room():
                # The closes the last adoptions caused are done on the event loop's next
                # turn; until then the connections wait in the backlog (imds.http.descriptors).
                self._pause()
                server.wait_for_room(self)
                return
            try:
                fd, peer = accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _PASSING:
                    continue
                # EMFILE, ENFILE, ENOBUFS, ENOMEM: the connections wait in the backlog.
                self._out_of_descriptors(exc)
                return
            conn = _socket.socket(family, kind, proto, fd)
            try:
                if self._wire is None:
                    self._adopt(conn, None)
                else:
                    self._serve(conn, peer[0])
            except Exception as exc:  # a bug in imds: this connection only
                # As imds.http.aioserver logs one: where, but not the text (it may hold data).
                log.error("internal error answering %s: %s\n%s", peer[0],
                          type(exc).__name__, "".join(traceback.format_tb(exc.__traceback__)))
                conn.close()

    def _out_of_descriptors(self, exc: OSError) -> None:
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY:
            more = f" ({self._unwarned} more times since the last warning)" \
                if self._unwarned else ""
            log.warning("cannot accept connections for now (%s); retrying as soon as a "
                        "connection closes, within %.0f s%s",
                        exc.strerror or exc, _RETRY_DELAY, more)
            self._warned = now
            self._unwarned = 0
        else:
            self._unwarned += 1
        self._pause()
        self._server.wait_for_room(self)
        self._retry = self._loop.call_later(_RETRY_DELAY, self.resume)

    def _serve(self, conn: _socket.socket, remote: str) -> None:
        wire = self._wire
        assert wire is not None  # _ready adopts every connection without a fast path
        # The accepted socket is blocking (accept4 without SOCK_NONBLOCK); MSG_DONTWAIT
        # makes these two calls not wait, without a third call to change the socket.
        try:
            data = conn.recv(self._read_size, socket.MSG_DONTWAIT)
        except BlockingIOError:
            data = b""
        except OSError:
            conn.close()
            return
        else:
            if not data:
                # Closed before asking anything.
                conn.close()
                return
        end = data.find(b"\r\n\r\n")
        if end < 0 or end + 4 != len(data) or end > self._max_header_size:
            # Not a whole head yet, a body, a pipelined request, or near the limits.
            self._adopt(conn, Adopted(read=data))
            return
        reply = wire.respond(data, remote, _Socket(conn))
        if reply is None:
            self._adopt(conn, Adopted(read=data))
            return
        response, close = reply
        try:
            sent = conn.send(response, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError:
            # The client left; as on the event loop, its answer is dropped.
            conn.close()
            return
        if sent < len(response) or not close:
            self._adopt(conn, Adopted(unsent=response[sent:], close=close))
        else:
            conn.close()
            self.answered += 1

    def _adopt(self, conn: _socket.socket, first: Adopted | None) -> None:
        """Give `conn` to the event loop: on the fast path with `first`, else to aiohttp."""
        self.adopted += 1
        server = self._server
        protocol: asyncio.Protocol
        if self._wire is not None and first is not None:
            protocol = FastPath(server, self._wire, first)
        else:
            protocol = server.aiohttp_protocol()
        # Room is made before the next accept, not when the event loop gets to it.
        server.adopting()
        # Event loops take a socket.socket.
        family, kind, proto = self._kind
        wrapped = socket.socket(family, kind, proto, conn.detach())
        task = self._loop.create_task(self._connect(wrapped, protocol))
        self._adopting.add(task)
        task.add_done_callback(self._adopting.discard)

    async def _connect(self, conn: socket.socket, protocol: asyncio.Protocol) -> None:
        try:
            await self._loop.connect_accepted_socket(lambda: protocol, conn)
        except BaseException:
            conn.close()
            raise
        finally:
            self._server.adopted()


class Listeners:
    """What aiohttp's runner reads of a site's server: its sockets, and `close`."""

    def __init__(self, acceptors: list[Acceptor]) -> None:
        self.acceptors = acceptors

    @property
    def sockets(self) -> list[socket.socket]:
        return [acceptor.sock for acceptor in self.acceptors]

    def close(self) -> None:
        for acceptor in self.acceptors:
            acceptor.close()


def listening_socket(family: int, address: Any, backlog: int, *, defer: bool = True,
                     ) -> socket.socket:
    """A non-blocking listening socket, bound as asyncio binds one; `defer`: deferred accept."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # asyncio's create_server does the same: "::" means IPv6 only, and an IPv4
            # endpoint of the same port can be bound beside it.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        if defer:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_SECONDS)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class AcceptorSite(web.BaseSite):
    """A TCP site whose connections are accepted by `Acceptor`s (imds.http.aioserver.Runner)."""

    __slots__ = ("_capped", "_host", "_port")

    def __init__(self, runner: web.BaseRunner, server: Listener, host: str, port: int,
                 *, backlog: int = 128) -> None:
        super().__init__(runner, backlog=backlog)
        self._capped = server
        self._host = host
        self._port = port

    @property
    def name(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        acceptors: list[Acceptor] = []
        seen: set[tuple[int, Any]] = set()
        try:
            for family, _, _, _, address in infos:
                if (family, address) in seen:
                    continue
                seen.add((family, address))
                # Deferral only pays with the fast path: it answers in the accept loop.
                sock = listening_socket(family, address, self._backlog,
                                        defer=self._capped.wire is not None)
                acceptors.append(Acceptor(sock, self._capped))
        except BaseException:
            for acceptor in acceptors:
                acceptor.close()
            raise
        # aiohttp types it an asyncio server; it only reads `sockets` and calls `close`.
        self._server = Listeners(acceptors)  # type: ignore[assignment]
