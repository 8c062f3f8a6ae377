"""
The metadata tree: directories that list their children, leaves that hold bytes.

A leaf's value is either fixed bytes or a function called per request (credentials, spot
notices); a function returning None means "absent right now", which hides the leaf from
its directory's listing and answers 404 [R-06] [R-09].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from imds.ec2.wire import TEXT_PLAIN

Producer = Callable[[], bytes | None]


@dataclass(frozen=True, slots=True)
class Leaf:
    value: bytes | Producer
    content_type: str = TEXT_PLAIN

    def read(self) -> bytes | None:
        value = self.value
        return value if isinstance(value, bytes) else value()


@dataclass(frozen=True, slots=True)
class Directory:
    children: dict[str, Leaf | Directory] = field(default_factory=dict)
    # A directory present only sometimes (`iam/` without a role, `spot/` ).
    present: Callable[[], bool] | None = None
    # `/` and `/latest/` list their sub-directories bare (`meta-data`, not `meta-data/`)
    # [N-06] [N-07]; everything below marks them with a slash.
    mark_directories: bool = True
    # How a child appears in the listing when not by its name: `public-keys/` lists
    # `0=<key name>` for the child `0/` [M-07].
    labels: dict[str, str] = field(default_factory=dict)

    def is_present(self) -> bool:
        return self.present is None or self.present()

    def listing(self) -> bytes:
        """
        [R-05] one child a line, directories with a trailing `/`, no final newline;
        [M-01] alphabetical.
        """
        names = []
        for name in sorted(self.children):
            child = self.children[name]
            if name in self.labels:
                names.append(self.labels[name])
            elif isinstance(child, Directory):
                if child.is_present():
                    names.append(name + "/" if self.mark_directories else name)
            elif child.read() is not None:
                names.append(name)
        return "\n".join(names).encode("utf-8")


class Found(NamedTuple):
    """A path's body; a named tuple, as one is made for most requests."""

    body: bytes
    content_type: str = TEXT_PLAIN
    # What the body was read from, and the directories along the way that are present
    # only sometimes: enough to tell later, without walking the tree, whether the same
    # path would still give the same body (imds.http.fastpath keeps answers on that condition).
    node: Leaf | Directory | None = None
    conditions: tuple[Directory, ...] = ()

    def unchanged(self) -> bool:
        """True while the path still leads to this very body."""
        for directory in self.conditions:
            if not directory.is_present():
                return False
        node = self.node
        if isinstance(node, Leaf):
            return node.read() == self.body
        return node is not None and node.listing() == self.body


def lookup(root: Directory, segments: list[str]) -> Found | None:
    """
    Find a path below `root`, given its segments without empty ones.

    A directory asked for without its trailing slash lists itself [R-07], and a leaf asked
    for with one answers its value [R-08]: both come down to ignoring the final slash.
    """
    node: Leaf | Directory = root
    conditions: tuple[Directory, ...] = ()
    for segment in segments:
        if not isinstance(node, Directory) or not node.is_present():
            return None
        if node.present is not None:
            conditions += (node,)
        child = node.children.get(segment)
        if child is None:
            return None
        node = child
    if isinstance(node, Directory):
        if not node.is_present():
            return None
        if node.present is not None:
            conditions += (node,)
        return Found(node.listing(), node=node, conditions=conditions)
    body = node.read()
    return None if body is None else Found(body, node.content_type, node, conditions)


def leaf(text: str) -> Leaf:
    """A fixed text leaf."""
    return Leaf(text.encode("utf-8"))
