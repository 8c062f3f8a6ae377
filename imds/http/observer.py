"""
The one interface through which the request path is watched and broken on purpose.

The HTTP layer counts nothing itself and knows nothing of faults: it hands every answer to
an `Observer`, passed in when the app is built, and asks it one question (`intercepts`:
may a fault change answers now?). The rotation lab (imds.lab.lab.Lab) implements it; with no
lab there is no observer and the request path does no bookkeeping at all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web

from imds.ec2.answer import Header

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Builds an EC2-shaped response with the server's common headers: (status, body).
Respond = Callable[..., web.StreamResponse]
# What a credential document answered: (role, key hint, endpoint: imds, ecs or
# pod-identity), worked out once per answer.
Fetched = tuple[str, str, str] | None


class Observer(Protocol):
    """What watches the request path: every answer is reported once, whichever path sent it."""

    @property
    def intercepts(self) -> bool:
        """True while a fault may change or delay answers; only `wrap` applies them."""
        ...

    def wrap(self, handle: Handler, respond: Respond) -> Handler:
        """aiohttp's handler with faults around it; it reports each answer itself."""
        ...

    def fetched(self, path: str, status: int, body: bytes | None, header: Header) -> Fetched:
        """
        The credential document an answer carries, if any (kept with kept answers);
        `header` tells the endpoint of a container path (its Host; the fast path's
        requests have no query).
        """
        ...

    def answered(self, path: str, status: int, client: str, fetched: Fetched,
                 kept: bool) -> None:
        """One answer sent by the fast path: worked out now, or `kept` from before."""
        ...

    def handed_over(self) -> None:
        """A fast-path connection went to aiohttp (an odd request, or a fault on)."""
        ...
