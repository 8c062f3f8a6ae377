"""
The aiohttp application: one handler that answers every request the way EC2 does.

A single catch-all route keeps EC2's statuses under our control for any method and path
(aiohttp's router would answer unknown methods with its own 405 page), and keeps the
request path short: verify a token (an HMAC, no lock, no I/O), walk a dict tree, send
bytes rendered ahead of time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.utils import format_datetime
from typing import TYPE_CHECKING, NamedTuple

from aiohttp import web

from imds.config import Config
from imds.creds.rotation import Rotator
from imds.ec2 import wire as p
from imds.ec2.guard import Guard
from imds.ec2.tokens import InvalidTTL, TokenSigner, parse_ttl
from imds.ec2.tree import Directory, Found, lookup
from imds.http.hoplimit import SocketHolder, limit_hops
from imds.http.rolemap import Routes

if TYPE_CHECKING:
    from imds.lab.lab import Handler, Lab

log = logging.getLogger("imds.app")

_GET_HEAD = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class State:
    """What the handler needs, fixed when the app is built."""

    config: Config
    tree: Directory
    signer: TokenSigner
    rotator: Rotator
    clock: Callable[[], float]
    common_headers: dict[str, str]
    # Host check and client allow-list (imds.netguard); per-caller roles (imds.rolemap).
    guard: Guard | None = None
    routes: Routes | None = None
    # Faults and counters (imds.lab), shared by aiohttp's path and the fast path.
    lab: Lab | None = None


STATE = web.AppKey("state", State)


class Reply(NamedTuple):
    """
    An answer before it meets a wire: aiohttp's (`handle`) or the fast path's
    (imds.fastpath), which must send the same bytes for it. A named tuple: one is made
    for most requests, and a frozen dataclass takes three times as long to build.
    """

    status: int
    body: bytes = p.EMPTY
    content_type: str = p.TEXT_PLAIN
    headers: tuple[tuple[str, str], ...] = ()
    # Close the connection after this answer, whatever the client or --connection-close say.
    close: bool = False
    # A metadata answer: where its body came from (imds.fastpath keeps such answers while
    # `found.unchanged()`), and the clock time its headers hold until (the token's
    # remaining lifetime ticks down a second at a time).
    found: Found | None = None
    until: float = math.inf


# Answers that never vary, made once.
_FORBIDDEN = Reply(403)
_UNAUTHORIZED = Reply(401)
_BAD_REQUEST = Reply(400, p.BAD_REQUEST_BODY)
_TOKEN_OPTIONS = Reply(200, headers=(("Allow", p.TOKEN_ALLOW),))
_TOKEN_NOT_ALLOWED = Reply(405, p.METHOD_NOT_ALLOWED_BODY, headers=(("Allow", p.TOKEN_ALLOW),))
_NOT_ALLOWED = Reply(405, p.METHOD_NOT_ALLOWED_BODY, headers=(("Allow", p.METADATA_ALLOW),))
_NO_BODY_TAKEN = Reply(400, p.BAD_REQUEST_BODY, close=True)

# Header names as both callers look them up: aiohttp's headers ignore case, the fast
# path's are lower-cased.
_HOST = "host"
_FORWARDED = "x-forwarded-for"
_TOKEN = p.TOKEN_HEADER.lower()
_TTL = p.TTL_HEADER.lower()

Header = Callable[[str], str | None]


def _token_endpoint(state: State, method: str, header: Header, remote: str,
                    transport: SocketHolder | None) -> Reply:
    if method != "PUT":
        # [T-11] GET on the token path is 405 with `Allow: OPTIONS, PUT`; OPTIONS is allowed.
        return _TOKEN_OPTIONS if method == "OPTIONS" else _TOKEN_NOT_ALLOWED
    if header(_FORWARDED) is not None:
        # [T-09] PUTs that went through a proxy are refused: the SSRF defence of IMDSv2.
        return _FORBIDDEN
    try:
        ttl = parse_ttl(header(_TTL))
    except InvalidTTL:
        # [T-03] [T-04] botocore treats this 400 as fatal (S-PY-02): the right signal.
        return _BAD_REQUEST
    token = state.signer.issue(ttl, remote)
    # [N-05] the token leaves with EC2's hop limit; the socket keeps that TTL, so this
    # connection must not carry another response.
    close = limit_hops(transport, state.config.hop_limit)
    # [T-05] [T-06] Go v2 and Rust need the TTL header back to accept the token.
    return Reply(200, token.encode("ascii"), headers=((p.TTL_RESPONSE_HEADER, str(ttl)),),
                 close=close)


def _is_versioned_token_path(segments: list[str]) -> bool:
    return len(segments) == 3 and segments[1:] == ["api", "token"]


def answer(
    state: State,
    method: str,
    path: str,
    header: Header,
    remote: str,
    transport: SocketHolder | None,
    *,
    has_body: bool = False,
) -> Reply:
    """
    EC2's answer to one request, whichever HTTP layer parsed it: `path` is decoded, and
    `header` looks a header up by its lower-case name.
    """
    guard = state.guard
    if guard is not None and not guard.admits(header(_HOST), remote):
        # A rebinding `Host` or a caller outside --allow-client: "the request is not
        # allowed" [N-03], as the EKS agent answers a wrong Host [K-08]. See imds.netguard.
        return _FORBIDDEN
    if has_body:
        # No IMDS request has a body [T-14]: refuse it unread and close, so nobody can
        # hold a connection by trickling one in.
        return _NO_BODY_TAKEN
    if path == p.TOKEN_PATH:
        return _token_endpoint(state, method, header, remote, transport)

    segments = [s for s in path.split("/") if s]
    if method not in _GET_HEAD:
        if method == "PUT" and _is_versioned_token_path(segments):
            # [T-12] `/latest/api/token/` and [T-13] `/<version>/api/token` answer 403.
            return _FORBIDDEN
        # undocumented; 405 names what metadata paths take [T-18].
        return _NOT_ALLOWED

    headers: tuple[tuple[str, str], ...] = ()
    until = math.inf
    token = header(_TOKEN)
    if token is not None:
        if header(_FORWARDED) is not None:
            # [T-10] kube2iam saw EC2 answer 403 to token-bearing GETs with this header.
            return _FORBIDDEN
        verified = state.signer.verify(token, remote)
        if verified is None:
            # invalid or expired token; Go and JS then fetch a new one (S-GO-03).
            return _UNAUTHORIZED
        # token-bearing responses carry the token's remaining lifetime, a number
        # that holds until the next whole second before the token's expiry.
        remaining = verified.remaining(state.clock())
        headers = ((p.TTL_RESPONSE_HEADER, str(remaining)),)
        until = verified.expires_at - remaining + 1
    elif state.config.http_tokens == "required":
        # IMDSv2 required: no token, empty 401.
        return _UNAUTHORIZED

    routes = state.routes
    tree = state.tree if routes is None else routes.tree_for(remote)
    found = lookup(tree, segments)
    if found is None:
        return Reply(404, p.NOT_FOUND_BODY, headers=headers)
    return Reply(200, found.body, found.content_type, headers, found=found, until=until)


def _respond(
    state: State,
    status: int,
    body: bytes = p.EMPTY,
    *,
    content_type: str = p.TEXT_PLAIN,
    headers: tuple[tuple[str, str], ...] = (),
    close: bool = False,
) -> web.Response:
    response = web.Response(status=status, body=body, content_type=content_type)
    response.headers.update(state.common_headers)
    response.headers.extend(headers)
    if close or state.config.connection_close:
        response.force_close()
    return response


async def handle(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    reply = answer(state, request.method, request.path, request.headers.get,
                   request.remote or "", request.transport, has_body=request.body_exists)
    return _respond(state, reply.status, reply.body, content_type=reply.content_type,
                    headers=reply.headers, close=reply.close)


async def _refuse_expect(request: web.Request) -> web.StreamResponse | None:
    # [T-14] EC2 answers `Expect: 100-continue` with 417 instead of reading a body; the
    # unread body makes the connection unusable, so it is closed whatever the setting.
    response = _respond(request.app[STATE], 417)
    response.force_close()
    return response


async def _rotation(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    # The server's own role, plus one rotator per other role of a role map.
    rotators = {id(state.rotator): state.rotator}
    if state.routes is not None:
        rotators.update((id(r), r) for r in state.routes.rotators.values())
    tasks = [asyncio.create_task(r.run(), name=f"imds-rotation-{r.source.role.name}")
             for r in rotators.values()]
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


def make_app(
    config: Config,
    *,
    tree: Directory,
    rotator: Rotator,
    clock: Callable[[], float],
    signer: TokenSigner | None = None,
    started: dt.datetime | None = None,
    routes: Routes | None = None,
    lab: Lab | None = None,
) -> web.Application:
    """
    Build the metadata application around an already primed rotator; with a `lab`, the
    handler runs inside the rotation lab's faults and counters (imds.lab).
    """
    started = started or dt.datetime.now(dt.UTC)
    state = State(
        config=config,
        tree=tree,
        signer=signer or TokenSigner(clock),
        rotator=rotator,
        clock=clock,
        common_headers={
            "Server": p.SERVER_NAME,
            # observed on every 200 from a Nitro host.
            "Accept-Ranges": "none",
            "Last-Modified": format_datetime(started, usegmt=True),
        },
        guard=Guard.of(config.allow_host, config.allow_client),
        routes=routes,
        lab=lab,
    )
    # Header limits, timeouts and the connection cap are the server's (imds.httpd.Limits).
    app = web.Application()
    app[STATE] = state
    handler: Handler = handle
    if lab is not None:
        handler = lab.wrap(handle, lambda status, body=p.EMPTY: _respond(state, status, body))
    app.router.add_route("*", "/{tail:.*}", handler, expect_handler=_refuse_expect)
    app.cleanup_ctx.append(_rotation)
    return app
