"""
Per-container roles: the role each caller gets, chosen by its source address or network.

One server stands in for the metadata service of several containers, and each container
sees its own instance profile, as if each ran on its own instance. This module reads and
checks the map; imds.http.rolemap routes each request by it.

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

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imds.config import sts
from imds.config.tomlfile import parse_toml, read_bytes, read_toml
from imds.ec2.guard import IPNetwork, client_address
from imds.errors import ConfigError

DEFAULT_ROLE = "default-role"
NO_ROLE = "no-role"


def is_arn(role: str) -> bool:
    return role.startswith("arn:")


def _role(value: Any, origin: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{origin}: expected a role name or role ARN, got {value!r}")
    # The same rules as --role-name and --role-arn (imds.config.sts).
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


def _where(path: str) -> str:
    # Messages start with the setting's key, as the other file settings' do.
    return f"role_map {path!r}"


def read(path: str) -> RoleMap:
    return parse(read_toml(path, _where(path)), _where(path))


def snapshot(path: str) -> tuple[bytes, RoleMap]:
    """The file's content and its map: what a reload compares new versions with."""
    data = read_bytes(path, _where(path))
    return data, loads(data, path)


def loads(data: bytes, path: str) -> RoleMap:
    """The map in `data`, the file's content as a reload read it (imds.config.watch)."""
    return parse(parse_toml(data, _where(path)), _where(path))
