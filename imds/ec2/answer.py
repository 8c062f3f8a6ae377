"""
EC2's answer to one request, worked out without I/O: the pure core of the server.

`answer()` takes a parsed request (method, decoded path, a header lookup, the caller's
address) and returns a `Reply`: status, body, headers, and what the wire must do with the
connection (close it, limit the hops of the token's packets). Both HTTP layers call it,
aiohttp's handler (imds.http.app) and the fast path (imds.http.fastpath), and both must
send the same bytes for one reply. Every rule cites the fact it follows (docs/spec.md).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from imds.ec2 import wire as p
from imds.ec2.guard import Guard
from imds.ec2.tokens import TokenSigner, parse_ttl
from imds.ec2.tree import Directory, Found, lookup
from imds.errors import InvalidTTL

_GET_HEAD = frozenset({"GET", "HEAD"})

# Looks a request header up by its lower-case name (aiohttp's headers ignore case, the fast
# path's are lower-cased).
Header = Callable[[str], str | None]


class Routes(Protocol):
    """Per-caller trees (imds.http.rolemap): each container its own instance profile."""

    def tree_for(self, remote: str | None) -> Directory: ...


# The container credential endpoints' paths (ECS [K-01], EKS Pod Identity [K-06]): no IMDS
# path starts so (IMDS paths start with a version [N-06]).
CONTAINER_PREFIXES = ("/v1/credentials", "/v2/credentials")


class Containers(Protocol):
    """The container credential endpoints (imds.containers.endpoint), beside IMDS."""

    def answer(self, method: str, path: str, query: str, header: Header) -> Reply | None: ...


@dataclass(frozen=True, slots=True)
class Rules:
    """What `answer` needs, fixed when the server is built."""

    tree: Directory
    signer: TokenSigner
    clock: Callable[[], float]
    # [A-03] `--http-tokens required`: IMDSv2 only.
    tokens_required: bool = True
    # [N-05] the token response's IP hop limit (HttpPutResponseHopLimit).
    hop_limit: int = 1
    # Host check and client allow-list (imds.ec2.guard); per-caller roles.
    guard: Guard | None = None
    routes: Routes | None = None
    containers: Containers | None = None


class Reply(NamedTuple):
    """
    An answer before it meets a wire: aiohttp's (`handle`) or the fast path's
    (imds.http.fastpath), which must send the same bytes for it. A named tuple: one is made
    for most requests, and a frozen dataclass takes three times as long to build.
    """

    status: int
    body: bytes = p.EMPTY
    content_type: str = p.TEXT_PLAIN
    headers: tuple[tuple[str, str], ...] = ()
    # Close the connection after this answer, whatever the client or --connection-close say.
    close: bool = False
    # [N-05] Send this answer with at most this many IP hops (0: leave the socket as it is).
    # Data, not a system call: the wire that sends the answer sets it on its socket, and
    # closes the connection after it, since the socket keeps the limit.
    hop_limit: int = 0
    # A metadata answer: where its body came from (imds.http.fastpath keeps such answers while
    # `found.unchanged()`), and the clock time its headers hold until (the token's
    # remaining lifetime ticks down a second at a time).
    found: Found | None = None
    until: float = math.inf
    # Not an answer yet: await this, then ask again (a pod's first request for an STS-backed
    # role waits for its session, imds.containers.podidentity). Only aiohttp's handler can
    # wait; the fast path hands such a request to it.
    wait: Callable[[], Awaitable[None]] | None = None


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


def _token_endpoint(rules: Rules, method: str, header: Header, remote: str) -> Reply:
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
    token = rules.signer.issue(ttl, remote)
    # [N-05] the token leaves with EC2's hop limit. [T-05] [T-06] Go v2 and Rust need the
    # TTL header back to accept the token.
    return Reply(200, token.encode("ascii"), headers=((p.TTL_RESPONSE_HEADER, str(ttl)),),
                 hop_limit=rules.hop_limit)


def _is_versioned_token_path(segments: list[str]) -> bool:
    return len(segments) == 3 and segments[1:] == ["api", "token"]


def answer(
    rules: Rules,
    method: str,
    path: str,
    header: Header,
    remote: str,
    *,
    has_body: bool = False,
    query: str = "",
) -> Reply:
    """
    EC2's answer to one request, whichever HTTP layer parsed it: `path` is decoded,
    `query` is the raw query string (only the container endpoints read it), and `header`
    looks a header up by its lower-case name.
    """
    guard = rules.guard
    if guard is not None and not guard.admits(header(_HOST), remote):
        # A rebinding `Host` or a caller outside --allow-client: "the request is not
        # allowed" [N-03], as the EKS agent answers a wrong Host [K-08]. See imds.ec2.guard.
        return _FORBIDDEN
    if has_body:
        # No IMDS request has a body [T-14]: refuse it unread and close, so nobody can
        # hold a connection by trickling one in.
        return _NO_BODY_TAKEN
    if path == p.TOKEN_PATH:
        return _token_endpoint(rules, method, header, remote)
    containers = rules.containers
    if containers is not None and path.startswith(CONTAINER_PREFIXES):
        reply = containers.answer(method, path, query, header)
        if reply is not None:
            return reply

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
        verified = rules.signer.verify(token, remote)
        if verified is None:
            # invalid or expired token; Go and JS then fetch a new one (S-GO-03).
            return _UNAUTHORIZED
        # token-bearing responses carry the token's remaining lifetime, a number
        # that holds until the next whole second before the token's expiry.
        remaining = verified.remaining(rules.clock())
        headers = ((p.TTL_RESPONSE_HEADER, str(remaining)),)
        until = verified.expires_at - remaining + 1
    elif rules.tokens_required:
        # IMDSv2 required: no token, empty 401.
        return _UNAUTHORIZED

    routes = rules.routes
    tree = rules.tree if routes is None else routes.tree_for(remote)
    found = lookup(tree, segments)
    if found is None:
        return Reply(404, p.NOT_FOUND_BODY, headers=headers)
    return Reply(200, found.body, found.content_type, headers, found=found, until=until)
