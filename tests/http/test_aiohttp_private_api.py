"""
The aiohttp internals imds builds on are still there, in the shape imds uses them, and the
installed aiohttp is inside the range pyproject.toml pins.

aiohttp has no hook for its per-connection protocol or its connection factory, so
imds.http.aioserver and imds.http.acceptor subclass them and use attributes aiohttp does
not document. A release may rename any of them without notice; each check below names
the internal, the imds code that uses it and what changed, so an upgrade fails here
instead of losing the connection limits quietly or crashing on the first connection.
Widen the pin in pyproject.toml only with this file passing on the new version.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_runner import BaseRunner, BaseSite
from aiohttp.web_server import Server
from packaging.requirements import Requirement
from packaging.version import Version

from imds.http.acceptor import Listeners
from imds.http.aioserver import Limits

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


class ApiChanged(AssertionError):
    """An aiohttp internal imds relies on is gone or has another shape."""


@dataclass(frozen=True)
class PrivateApi:
    name: str
    # The imds code that relies on it.
    used_by: str
    check: Callable[[], Awaitable[None]]
    # Makes the internal disappear (for the sanity check that `check` notices).
    remove: Callable[[pytest.MonkeyPatch], None]


async def _ok(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response()


def _server(**kwargs: Any) -> Server:
    return Server(_ok, loop=asyncio.get_running_loop(), **kwargs)


def _handler() -> RequestHandler:
    """A per-connection protocol made the way imds.http.aioserver.CappedServer makes one."""
    server = _server()
    return RequestHandler(server, loop=asyncio.get_running_loop(), **server._kwargs)


def _parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


def _wrap_init(monkeypatch: pytest.MonkeyPatch, cls: type, remove: str) -> None:
    """Make `cls` instances come out without the attribute `remove`."""
    original = cls.__init__  # type: ignore[misc]

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        delattr(self, remove)

    monkeypatch.setattr(cls, "__init__", init)


# Ec2RequestHandler.idle: is the connection between requests (the cap evicts those first)?
async def _check_request_in_progress() -> None:
    assert False is _handler()._request_in_progress


async def _check_messages() -> None:
    assert 0 == len(_handler()._messages)


# CappedServer rebuilds the runner's Server from its own arguments and makes its protocols.
async def _check_server_loop() -> None:
    assert asyncio.get_running_loop() is _server()._loop


async def _check_server_kwargs() -> None:
    assert {"keepalive_timeout": 7.0} == _server(keepalive_timeout=7.0)._kwargs


async def _check_server_arguments() -> None:
    def factory(*args: Any) -> web.BaseRequest:
        raise NotImplementedError

    server = Server(_ok, request_factory=factory, handler_cancellation=True,
                    loop=asyncio.get_running_loop())
    assert (_ok, factory, True) == (server.request_handler, server.request_factory,
                                    server.handler_cancellation)


async def _check_server_hooks() -> None:
    assert ["self", "handler", "transport"] == _parameters(Server.connection_made)
    assert ["self", "handler", "exc"] == _parameters(Server.connection_lost)
    assert ["self"] == _parameters(Server.pre_shutdown)


async def _check_handler_arguments() -> None:
    # Server.__call__ would drop *every* custom argument on a TypeError (with a warning),
    # so an argument aiohttp no longer takes would silently lift all of imds's limits.
    server = _server(**Limits().handler_args())
    RequestHandler(server, loop=asyncio.get_running_loop(), **server._kwargs)


async def _check_handle_error() -> None:
    assert ["self", "request", "status", "exc", "message"] == _parameters(
        RequestHandler.handle_error)


# CappedHandler.eof_received: requests read (aiohttp counts them) against those answered.
async def _check_request_count() -> None:
    assert 0 == _handler()._request_count


# CappedHandler.finish_response counts each answer, then closes a half-closed connection.
async def _check_finish_response() -> None:
    assert ["self", "request", "resp", "start_time"] == _parameters(
        RequestHandler.finish_response)


def _change_finish_response(monkeypatch: pytest.MonkeyPatch) -> None:
    async def finish_response(self: RequestHandler, request: web.BaseRequest,
                              resp: web.StreamResponse) -> None: ...

    monkeypatch.setattr(RequestHandler, "finish_response", finish_response)


async def _check_make_server() -> None:
    made: list[Server] = []

    class Recording(web.AppRunner):
        async def _make_server(self) -> Server:
            server = await super()._make_server()
            made.append(server)
            return server

    runner = Recording(web.Application())
    await runner.setup()
    try:
        assert 1 == len(made)
        assert isinstance(made[0], Server)
        assert made[0] is runner.server
    finally:
        await runner.cleanup()


async def _check_site_internals() -> None:
    runner = web.AppRunner(web.Application())
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=7)
        assert 7 == site._backlog
        await site.start()
        assert site._server is not None
        # asyncio's or uvloop's server; both have `sockets`, which AbstractServer lacks.
        bound = [sock.getsockname() for sock in cast(asyncio.Server, site._server).sockets]
        assert bound == runner.addresses
        # AcceptorSite stores its own listeners there; the runner must read them.
        real = site._server
        site._server = Listeners([])  # type: ignore[assignment]
        try:
            assert [] == runner.addresses
        finally:
            site._server = real
    finally:
        await runner.cleanup()


async def _check_server_logger() -> None:
    # imds.logs filters this logger so no traceback quotes request bytes (a token).
    default = inspect.signature(RequestHandler).parameters["logger"].default
    assert logging.getLogger("aiohttp.server") is default


def _remove_handler_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    original = RequestHandler.__init__

    def init(self: RequestHandler, manager: Server, **kwargs: Any) -> None:
        if "max_headers" in kwargs:
            raise TypeError("__init__() got an unexpected keyword argument 'max_headers'")
        original(self, manager, **kwargs)

    monkeypatch.setattr(RequestHandler, "__init__", init)


def _remove_make_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(web.AppRunner, "_make_server")
    monkeypatch.delattr(BaseRunner, "_make_server")


def _change_server_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    def connection_lost(self: Server, handler: RequestHandler) -> None: ...

    monkeypatch.setattr(Server, "connection_lost", connection_lost)


def _change_handle_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def handle_error(self: RequestHandler, request: web.BaseRequest,
                     status: int = 500) -> web.StreamResponse:
        raise NotImplementedError

    monkeypatch.setattr(RequestHandler, "handle_error", handle_error)


def _change_server_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = RequestHandler.__init__.__kwdefaults__
    assert defaults is not None
    monkeypatch.setitem(defaults, "logger", logging.getLogger("aiohttp.elsewhere"))


PRIVATE_APIS = [
    PrivateApi("aiohttp.web_protocol.RequestHandler._request_in_progress",
               "imds/http/handlers.py Ec2RequestHandler.idle", _check_request_in_progress,
               lambda mp: _wrap_init(mp, RequestHandler, "_request_in_progress")),
    PrivateApi("aiohttp.web_protocol.RequestHandler._messages",
               "imds/http/handlers.py Ec2RequestHandler.idle", _check_messages,
               lambda mp: _wrap_init(mp, RequestHandler, "_messages")),
    PrivateApi("aiohttp.web_protocol.RequestHandler._request_count",
               "imds/http/handlers.py CappedHandler.eof_received (half-close)",
               _check_request_count,
               lambda mp: _wrap_init(mp, RequestHandler, "_request_count")),
    PrivateApi("aiohttp.web_protocol.RequestHandler.finish_response(request, resp, "
               "start_time)", "imds/http/handlers.py CappedHandler.finish_response (override)",
               _check_finish_response, _change_finish_response),
    PrivateApi("aiohttp.web_server.Server._loop",
               "imds/http/aioserver.py CappedServer.__init__, .loop, .aiohttp_protocol",
               _check_server_loop, lambda mp: _wrap_init(mp, Server, "_loop")),
    PrivateApi("aiohttp.web_server.Server._kwargs (the RequestHandler arguments)",
               "imds/http/aioserver.py CappedServer.__init__, .aiohttp_protocol",
               _check_server_kwargs, lambda mp: _wrap_init(mp, Server, "_kwargs")),
    PrivateApi("aiohttp.web_server.Server(request_factory=, handler_cancellation=) and "
               "its request_handler, request_factory, handler_cancellation",
               "imds/http/aioserver.py CappedServer.__init__", _check_server_arguments,
               lambda mp: _wrap_init(mp, Server, "handler_cancellation")),
    PrivateApi("aiohttp.web_server.Server.connection_made(handler, transport), "
               "connection_lost(handler, exc), pre_shutdown()",
               "imds/http/aioserver.py CappedServer (overrides all three)", _check_server_hooks,
               _change_server_hooks),
    PrivateApi("aiohttp.web_protocol.RequestHandler(manager, loop=, keepalive_timeout=, "
               "max_line_size=, max_field_size=, max_headers=, lingering_time=, "
               "tcp_keepalive=, access_log_class=)",
               "imds/http/aioserver.py Limits.handler_args, CappedServer.aiohttp_protocol",
               _check_handler_arguments, _remove_handler_argument),
    PrivateApi("aiohttp.web_protocol.RequestHandler.handle_error(request, status, exc, "
               "message)", "imds/http/handlers.py Ec2RequestHandler.handle_error (override)",
               _check_handle_error, _change_handle_error),
    PrivateApi("aiohttp.web_runner.AppRunner._make_server()",
               "imds/http/aioserver.py Runner._make_server (override)", _check_make_server,
               _remove_make_server),
    PrivateApi("aiohttp.web_runner.BaseSite._backlog and BaseSite._server (read by "
               "BaseRunner.addresses and BaseSite.stop)",
               "imds/http/acceptor.py AcceptorSite.start", _check_site_internals,
               lambda mp: _wrap_init(mp, BaseSite, "_backlog")),
    PrivateApi("the `aiohttp.server` logger as RequestHandler's default logger",
               "imds/logs.py configure (DropRequestEcho)", _check_server_logger,
               _change_server_logger),
]


async def verify(api: PrivateApi) -> None:
    """Run one check; any failure becomes an `ApiChanged` naming the internal and its user."""
    try:
        await api.check()
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise ApiChanged(
            f"aiohttp {aiohttp.__version__} changed {api.name}, which {api.used_by} relies "
            f"on ({detail}). Adapt imds before widening the aiohttp pin in pyproject.toml."
        ) from exc


def _ids(apis: list[PrivateApi]) -> list[Any]:
    return [pytest.param(api, id=api.name.split(" ")[0].removeprefix("aiohttp."))
            for api in apis]


class TestAiohttpInternals:
    @pytest.mark.parametrize("api", _ids(PRIVATE_APIS))
    async def test_the_internal_imds_uses_is_unchanged(self, api: PrivateApi) -> None:
        await verify(api)

    @pytest.mark.parametrize("api", _ids(PRIVATE_APIS))
    async def test_the_check_fails_when_the_internal_disappears(
        self, api: PrivateApi, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Sanity: each check notices its internal gone, and says which and who uses it."""
        api.remove(monkeypatch)
        with pytest.raises(ApiChanged) as failure:
            await verify(api)
        assert api.name in str(failure.value)
        assert api.used_by in str(failure.value)


class TestAiohttpPin:
    def test_the_installed_aiohttp_is_inside_the_pinned_range(self) -> None:
        """The pin has an upper bound (the internals above change between minors)."""
        dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
        pins = [Requirement(d) for d in dependencies if Requirement(d).name == "aiohttp"]
        assert 1 == len(pins)
        specifier = pins[0].specifier
        assert any(spec.operator == "<" for spec in specifier), f"no upper bound: {specifier}"
        assert Version(aiohttp.__version__) in specifier
