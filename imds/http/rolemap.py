"""
Per-container roles at request time: each caller's tree, by its source address.

The map (imds.config.rolemap) is read at startup and again whenever its file changes
(imds.config.watch); every distinct role gets its own `Rotator` (its own source, its own
rotation) and its own pre-built tree, so a request costs one dict lookup on the caller's
address.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from imds.config.rolemap import DEFAULT_ROLE, RoleMap, is_arn, loads
from imds.config.watch import Apply
from imds.creds.pool import RoleKey, RotatorPool
from imds.creds.rotation import Rotator
from imds.ec2.tree import Directory
from imds.errors import ConfigError, SourceError, StartupError

# Callers remembered by address before the cache starts over.
_CACHE_LIMIT = 4096


def config_for_role(config: Any, role: str) -> Any:
    """
    The server's configuration with `role` as its own role, for `build_source`.

    A role name is minted locally (`LocalSource`); a role ARN is assumed with STS from the
    server's base identity, with the server's STS settings (profile, region, duration...),
    as a one-link chain: the ARN replaces any `--role-arn` chain rather than extending it.
    """
    names = {f.name for f in dataclasses.fields(config)}
    if is_arn(role):
        if "role_arn" not in names:
            raise ConfigError(f"role map: {role} is a role ARN, but this build has no "
                              f"STS-backed source")
        return dataclasses.replace(config, role_arn=(role,))
    changes: dict[str, Any] = {"role_name": role}
    if "role_arn" in names:
        changes["role_arn"] = ()
    return dataclasses.replace(config, **changes)


def own_role(config: Any) -> str:
    """The role the configuration serves by itself, in role-map spelling."""
    chain: tuple[str, ...] = getattr(config, "role_arn", ())
    role: str = chain[-1] if chain else config.role_name
    return role


def without_iam(tree: Directory) -> Directory:
    """
    The same instance without an instance profile: `meta-data/` no longer lists `iam/` and
    every path below it is 404 [C-05]. Other trees are shared, not copied.
    """
    versions: dict[int, Directory] = {}

    def strip(version: Directory) -> Directory:
        meta = version.children.get("meta-data")
        if not isinstance(meta, Directory):
            return version
        children = {k: v for k, v in meta.children.items() if k != "iam"}
        new_meta = dataclasses.replace(meta, children=children)
        return dataclasses.replace(version, children={**version.children, "meta-data": new_meta})

    children: dict[str, Any] = {}
    for name, child in tree.children.items():
        if isinstance(child, Directory):
            # Every version prefix shares one tree [N-06]; strip it once.
            child = versions.setdefault(id(child), strip(child))
        children[name] = child
    return dataclasses.replace(tree, children=children)


@dataclass
class Table:
    """One version of the map: which tree each caller sees."""

    role_map: RoleMap
    # Role -> tree and rotator, the server's own role (`own`) always among them.
    trees: dict[str, Directory]
    rotators: dict[str, Rotator]
    unmapped: Directory
    own: str
    _cache: dict[str | None, Directory] = field(default_factory=dict, repr=False)

    def tree_for(self, remote: str | None) -> Directory:
        tree = self._cache.get(remote)
        if tree is None:
            role = self.role_map.role_for(remote)
            tree = self.unmapped if role is None else self.trees[role]
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[remote] = tree
        return tree


class Routes:
    """
    The map in force, read on every request; `--role-map` reloads replace it
    (imds.config.watch) with `reload`.

    A new version is built apart, its new roles primed, then put in force by one
    assignment (`self.table = ...`): a request works out its answer without awaiting
    (imds.ec2.answer), so it sees one version or the other, never half of each. Each
    version's trees are its own roots, present only while it is in force, so an answer the
    fast path kept from the old version stops matching at the swap (`Found.unchanged`).
    """

    def __init__(self, table: Table) -> None:
        self.table = self._own(table)

    def _own(self, table: Table) -> Table:
        def present() -> bool:
            return self.table is table

        def rooted(tree: Directory) -> Directory:
            # Instance trees have no condition at their root; a copy of one from an
            # earlier version has that version's, which this one replaces.
            return dataclasses.replace(tree, present=present)

        table.trees = {role: rooted(tree) for role, tree in table.trees.items()}
        table.unmapped = rooted(table.unmapped)
        return table

    def tree_for(self, remote: str | None) -> Directory:
        return self.table.tree_for(remote)

    @property
    def role_map(self) -> RoleMap:
        return self.table.role_map

    @property
    def rotators(self) -> dict[str, Rotator]:
        return self.table.rotators

    def reloader(self, path: str, *, pool: RotatorPool,
                 make_tree: Callable[[Rotator], Directory]) -> Apply:
        """What a new version of the file at `path` goes through (imds.config.watch)."""
        async def apply(data: bytes) -> str:
            role_map = loads(data, path)
            await self.reload(role_map, pool=pool, make_tree=make_tree)
            roles = ", ".join(role_map.roles()) or "none"
            return f"{len(role_map.clients)} entries, roles {roles}"

        return apply

    async def reload(self, role_map: RoleMap, *, pool: RotatorPool,
                     make_tree: Callable[[Rotator], Directory]) -> None:
        """
        Put `role_map` in force. Roles still mapped keep their rotators and trees; a new
        role gets its rotator from `pool` (shared with the other endpoints), primed before
        the swap. A role no longer mapped keeps rotating in the pool: another endpoint may
        serve it, and a later version may map it again. Raises SourceError, the old map
        still in force, when a new role cannot get its first credentials.
        """
        old = self.table
        rotators = {old.own: old.rotators[old.own]}
        trees = {old.own: old.trees[old.own]}
        for role in role_map.roles():
            if role in rotators:
                continue
            if role in old.rotators:
                rotators[role], trees[role] = old.rotators[role], old.trees[role]
                continue
            rotator = await pool.ensure(RoleKey(role))
            rotators[role], trees[role] = rotator, make_tree(rotator)
        default_tree = trees[old.own]
        unmapped = default_tree if role_map.unmapped == DEFAULT_ROLE else without_iam(default_tree)
        self.table = self._own(Table(role_map=role_map, trees=trees, rotators=rotators,
                                     unmapped=unmapped, own=old.own))


async def start_routes(
    config: Any,
    role_map: RoleMap,
    *,
    pool: RotatorPool,
    default_tree: Directory,
    make_tree: Callable[[Rotator], Directory],
) -> Routes:
    """
    One primed rotator (shared through `pool` with every other endpoint that serves the
    role) and one tree per distinct role of the map.
    """
    own = own_role(config)
    own_rotator = pool.get(RoleKey(own))
    assert own_rotator is not None, "the server's own role is pooled first"
    rotators: dict[str, Rotator] = {own: own_rotator}
    trees: dict[str, Directory] = {own: default_tree}
    for role in role_map.roles():
        if role in rotators:
            continue
        try:
            rotator = await pool.ensure(RoleKey(role))
        except SourceError as exc:
            raise StartupError(f"role map: could not get the first credentials for role "
                               f"{role}: {exc}") from exc
        rotators[role] = rotator
        trees[role] = make_tree(rotator)
    unmapped = default_tree if role_map.unmapped == DEFAULT_ROLE else without_iam(default_tree)
    return Routes(Table(role_map=role_map, trees=trees, rotators=rotators, unmapped=unmapped,
                        own=own))
