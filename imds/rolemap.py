"""
Per-container roles: the role each caller gets, chosen by its source address or network.

One server stands in for the metadata service of several containers, and each container
sees its own instance profile, as if each ran on its own instance. The map is read once at
startup; every distinct role gets its own `Rotator` (its own source, its own rotation) and
its own pre-built tree, so a request costs one dict lookup on the caller's address.

The file (`--role-map FILE`, TOML):

    # Callers no entry matches: "default-role" (the default) gives them the server's own
    # role (--role-name / --role-arn); "no-role" answers them as EC2 answers on an instance
    # without an instance profile: no `iam/` in the listing, 404 below it [C-05].
    unmapped = "no-role"

    [clients]
    # An address or a CIDR network; the most specific match wins.
    "10.89.0.10"   = "app-a"                                   # role name: minted locally
    "10.89.1.0/24" = "arn:aws:iam::111122223333:role/batch"    # role ARN: sts:AssumeRole
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imds import sts_settings as sts
from imds.errors import ConfigError, SourceError, StartupError
from imds.metadata import Directory
from imds.netguard import IPNetwork, client_address
from imds.rotation import Rotator

DEFAULT_ROLE = "default-role"
NO_ROLE = "no-role"

_CACHE_LIMIT = 4096


def is_arn(role: str) -> bool:
    return role.startswith("arn:")


def _role(value: Any, origin: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{origin}: expected a role name or role ARN, got {value!r}")
    # The same rules as --role-name and --role-arn (imds.sts_settings).
    try:
        return sts.role_arn(value) if is_arn(value.strip()) else sts.role_name(value)
    except ValueError:
        raise ConfigError(f"{origin}: {value!r} is neither an IAM role name nor a role ARN "
                          f"(arn:aws:iam::111122223333:role/name)") from None


@dataclass(frozen=True, slots=True)
class RoleMap:
    """Caller networks and their roles, most specific network first."""

    clients: tuple[tuple[IPNetwork, str], ...]
    unmapped: str = DEFAULT_ROLE

    def roles(self) -> list[str]:
        """The distinct roles, in file order."""
        return list(dict.fromkeys(role for _, role in self.clients))

    def role_for(self, remote: str | None) -> str | None:
        """The role for a caller address, or None when no entry matches it."""
        address = client_address(remote)
        if address is None:
            return None
        for network, role in self.clients:
            if address in network:
                return role
        return None


def parse(data: Mapping[str, Any], origin: str) -> RoleMap:
    """Check a role map's TOML content; every mistake is a ConfigError naming the entry."""
    unknown = set(data) - {"clients", "unmapped"}
    if unknown:
        raise ConfigError(f"{origin}: unknown key(s) {', '.join(sorted(unknown))}; "
                          f"expected [clients] and unmapped")
    unmapped = data.get("unmapped", DEFAULT_ROLE)
    if unmapped not in (DEFAULT_ROLE, NO_ROLE):
        raise ConfigError(f"{origin}: unmapped must be {DEFAULT_ROLE!r} or {NO_ROLE!r}, "
                          f"got {unmapped!r}")
    clients = data.get("clients", {})
    if not isinstance(clients, Mapping):
        raise ConfigError(f"{origin}: [clients] must be a table of address = role")
    entries: dict[IPNetwork, str] = {}
    for key, value in clients.items():
        where = f"{origin}, clients.{key!r}"
        try:
            network = ipaddress.ip_network(key.strip(), strict=False)
        except ValueError:
            raise ConfigError(f"{where}: expected an address or CIDR network") from None
        if network in entries:
            raise ConfigError(f"{where}: {network} is already mapped")
        entries[network] = _role(value, where)
    # Longest prefix first, as a router picks a route: a /32 inside a mapped /24 wins.
    ordered = sorted(entries.items(), key=lambda item: item[0].prefixlen, reverse=True)
    return RoleMap(clients=tuple(ordered), unmapped=unmapped)


def read(path: str) -> RoleMap:
    # Messages start with the setting's key, as the other file settings' do.
    where = f"role_map {path!r}"
    try:
        with Path(path).open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{where} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{where}: {exc.strerror}") from None
    except UnicodeDecodeError:
        # tomllib decodes the bytes as UTF-8 before parsing: binary content lands here.
        raise ConfigError(f"{where} is not UTF-8 text (TOML files are UTF-8)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from None
    return parse(data, where)


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
    default: tuple[Rotator, Directory],
    make_rotator: Callable[[Any], Rotator],
    make_tree: Callable[[Rotator], Directory],
) -> Routes:
    """
    One primed rotator and one tree per distinct role of the map; the server's own role
    (`default`) is reused where the map names it.
    """
    default_rotator, default_tree = default
    own = own_role(config)
    rotators: dict[str, Rotator] = {own: default_rotator}
    trees: dict[str, Directory] = {own: default_tree}
    for role in role_map.roles():
        if role in rotators:
            continue
        rotator = make_rotator(config_for_role(config, role))
        try:
            await rotator.prime()
        except SourceError as exc:
            raise StartupError(f"role map: could not get the first credentials for role "
                               f"{role}: {exc}") from exc
        rotators[role] = rotator
        trees[role] = make_tree(rotator)
    unmapped = default_tree if role_map.unmapped == DEFAULT_ROLE else without_iam(default_tree)
    return Routes(role_map=role_map, trees=trees, rotators=rotators, unmapped=unmapped)
