"""
The aiohttp application: one handler that sends EC2's answer to every request.

The answer is worked out by the pure core (imds.ec2.answer); this module turns it into an
aiohttp response and sets the token's hop limit on the socket. A single catch-all route
keeps EC2's statuses under our control for any method and path (aiohttp's router would
answer unknown methods with its own 405 page), and keeps the request path short: verify a
token (an HMAC, no lock, no I/O), walk a dict tree, send bytes rendered ahead of time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.utils import format_datetime

from aiohttp import web

from imds.config import Config
from imds.creds.pool import RoleKey, RotatorPool
from imds.creds.rotation import Rotator
from imds.ec2 import wire as p
from imds.ec2.answer import Containers, Rules, answer
from imds.ec2.guard import Guard
from imds.ec2.tokens import TokenSigner
from imds.ec2.tree import Directory
from imds.http.hoplimit import apply_hop_limit
from imds.http.observer import Handler, Observer
from imds.http.rolemap import Routes


@dataclass(frozen=True, slots=True)
class State:
    """What the handler needs, fixed when the app is built."""

    config: Config
    # What EC2's answers depend on (imds.ec2.answer).
    rules: Rules
    rotator: Rotator
    common_headers: dict[str, str]
    routes: Routes | None = None
    # Faults and counters (imds.lab), shared by aiohttp's path and the fast path.
    lab: Observer | None = None
    # Every role's rotation (imds.creds.pool): run while the app runs.
    pool: RotatorPool | None = None


STATE = web.AppKey("state", State)


def _respond(
    state: State,
    status: int,
    body: bytes = p.EMPTY,
    *,
    content_type: str = p.TEXT_PLAIN,
    headers: tuple[tuple[str, str], ...] = (),
    close: bool = False,
) -> web.Response:
    # aiohttp takes a charset apart from the type, and writes them back as one header.
    kind, _, charset = content_type.partition("; charset=")
    response = web.Response(status=status, body=body, content_type=kind, charset=charset or None)
    response.headers.update(state.common_headers)
    response.headers.extend(headers)
    if close or state.config.connection_close:
        response.force_close()
    return response


async def handle(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    ask = (state.rules, request.method, request.path, request.headers.get, request.remote or "")
    reply = answer(*ask, has_body=request.body_exists, query=request.rel_url.raw_query_string)
    if reply.wait is not None:
        # A pod's first request for an STS-backed role: its session starts now
        # (imds.containers.podidentity); then the answer is worked out again.
        await reply.wait()
        reply = answer(*ask, query=request.rel_url.raw_query_string)
    # [N-05] the hop limit stays on the socket, so its connection carries nothing more.
    hops_limited = apply_hop_limit(reply.hop_limit, request.transport)
    close = reply.close or hops_limited
    return _respond(state, reply.status, reply.body, content_type=reply.content_type,
                    headers=reply.headers, close=close)


async def _refuse_expect(request: web.Request) -> web.StreamResponse | None:
    # [T-14] EC2 answers `Expect: 100-continue` with 417 instead of reading a body; the
    # unread body makes the connection unusable, so it is closed whatever the setting.
    response = _respond(request.app[STATE], 417)
    response.force_close()
    return response


async def _rotation(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    pool = state.pool
    if pool is None:
        # Built without a pool (tests, benchmarks): the server's own role alone.
        pool = RotatorPool(lambda key: state.rotator)
        pool.add(RoleKey(state.rotator.source.role.name), state.rotator)
    pool.start()
    yield
    await pool.stop()


def make_app(
    config: Config,
    *,
    tree: Directory,
    rotator: Rotator,
    clock: Callable[[], float],
    signer: TokenSigner | None = None,
    started: dt.datetime | None = None,
    routes: Routes | None = None,
    lab: Observer | None = None,
    pool: RotatorPool | None = None,
    containers: Containers | None = None,
) -> web.Application:
    """
    Build the metadata application around an already primed rotator; with a `lab`, the
    handler runs inside the rotation lab's faults and counters (imds.lab).
    """
    started = started or dt.datetime.now(dt.UTC)
    rules = Rules(
        tree=tree,
        signer=signer or TokenSigner(clock),
        clock=clock,
        tokens_required=config.http_tokens == "required",
        hop_limit=config.hop_limit,
        guard=Guard.of(config.allow_host, config.allow_client),
        routes=routes,
        containers=containers,
    )
    state = State(
        config=config,
        rules=rules,
        rotator=rotator,
        common_headers={
            "Server": p.SERVER_NAME,
            # observed on every 200 from a Nitro host.
            "Accept-Ranges": "none",
            "Last-Modified": format_datetime(started, usegmt=True),
        },
        routes=routes,
        lab=lab,
        pool=pool,
    )
    # Header limits, timeouts and the connection cap are the server's (imds.http.aioserver.Limits).
    app = web.Application()
    app[STATE] = state
    handler: Handler = handle
    if lab is not None:
        handler = lab.wrap(handle, lambda status, body=p.EMPTY: _respond(state, status, body))
    app.router.add_route("*", "/{tail:.*}", handler, expect_handler=_refuse_expect)
    app.cleanup_ctx.append(_rotation)
    return app
