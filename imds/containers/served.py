"""One role's credential document for one endpoint, rendered once per credential set."""

from __future__ import annotations

from collections.abc import Callable

from imds.containers.documents import APPLICATION_JSON
from imds.creds.model import Credentials, Rendered
from imds.creds.rotation import Rotator
from imds.ec2.tree import Found, Leaf


class Served:
    """
    Reads the rotator's current credentials (an attribute: no lock, no fetch) and renders
    them the first time each set is asked for. The answer is a `Found` of a leaf, so the
    fast path keeps it while the leaf still reads the same bytes (imds.http.fastpath).
    """

    __slots__ = ("_body", "_clock", "_render", "_rendered", "_retired", "leaf", "rotator")

    def __init__(self, rotator: Rotator, clock: Callable[[], float],
                 render: Callable[[Credentials], bytes]) -> None:
        self.rotator = rotator
        self._clock = clock
        self._render = render
        self._rendered: Rendered | None = None
        self._body = b""
        self._retired = False
        self.leaf = Leaf(self.read, APPLICATION_JSON)

    def read(self) -> bytes | None:
        """The document of the valid credentials; None while there are none."""
        current = self.rotator.valid(self._clock())
        if current is None or self._retired:
            return None
        if current is not self._rendered:
            self._body = self._render(current.credentials)
            self._rendered = current
        return self._body

    def retire(self) -> None:
        """No longer served (a task removed): answers kept from it stop matching."""
        self._retired = True

    def found(self) -> Found | None:
        body = self.read()
        return None if body is None else Found(body, APPLICATION_JSON, self.leaf)
