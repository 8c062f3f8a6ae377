"""
Per-container roles at request time: each caller's tree, by its source address.

The map (imds.config.rolemap) is read once at startup; every distinct role gets its own
`Rotator` (its own source, its own rotation) and its own pre-built tree, so a request costs
one dict lookup on the caller's address.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from imds.config.rolemap import DEFAULT_ROLE, RoleMap, is_arn
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
class Routes:
    """Which tree each caller sees; built at startup, read on every request."""

    role_map: RoleMap
    trees: dict[str, Directory]
    rotators: dict[str, Rotator]
    unmapped: Directory
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
    return Routes(role_map=role_map, trees=trees, rotators=rotators, unmapped=unmapped)
