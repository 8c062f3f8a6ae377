"""
The flags of `imds node-setup` and `imds node-cleanup`, read once from argv into one frozen
`NodeOptions` (configuration flows one way: nothing below reads argv or the environment).

Both commands take the same flags, so a DaemonSet's init container and its preStop hook can
share one argument list; cleanup ignores those it does not need (`--to`, `--interface`).
"""

from __future__ import annotations

import argparse
import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Literal

from imds.errors import ConfigError

Mode = Literal["dummy", "dnat"]
LinkKind = Literal["dummy", "bridge"]
MODES: tuple[Mode, ...] = ("dummy", "dnat")
LINK_KINDS: tuple[LinkKind, ...] = ("dummy", "bridge")
COMMANDS = ("node-setup", "node-cleanup")

# The addresses SDKs and agents use on AWS: IMDS [N-01] [N-02], the EKS Pod Identity agent
# [K-06] and ECS's task-role endpoint [K-01]; all on port 80.
IPV4_ADDRESSES = ("169.254.169.254", "169.254.170.23", "169.254.170.2")
IPV6_ADDRESSES = ("fd00:ec2::254", "fd00:ec2::23")
SERVICE_PORT = 80

DEFAULT_LINK = "imds0"
DEFAULT_INTERFACES = ("veth+",)
# What iptables accepts after -i: an interface name (at most 15 characters), `+` ending a
# prefix glob, optionally negated; nothing a shell or a rule file would read otherwise.
_INTERFACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,14}\+?")
_LINK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")


@dataclass(frozen=True)
class Target:
    """Where DNAT sends the pods' requests: imds's own address and port on the node."""

    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int

    @property
    def version(self) -> int:
        return self.address.version

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.version == 6 else str(self.address)
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class NodeOptions:
    mode: Mode = "dummy"
    link: str = DEFAULT_LINK
    link_kind: LinkKind = "dummy"
    ipv6: bool = True
    interfaces: tuple[str, ...] = DEFAULT_INTERFACES
    targets: tuple[Target, ...] = ()

    def addresses(self) -> tuple[str, ...]:
        return IPV4_ADDRESSES + (IPV6_ADDRESSES if self.ipv6 else ())


def parse_target(text: str) -> Target:
    """`10.0.0.5:8080` or `[fd00::5]:8080`."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([0-9.]+):(\d{1,5})", text)
    if match is None:
        raise ConfigError(f"--to {text!r}: expected ADDRESS:PORT, e.g. 10.0.0.5:8080 or "
                        "[fd00::5]:8080")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"--to {text!r}: {host!r} is not an IP address") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"--to {text!r}: port {port} is not in 1..65535")
    return Target(address, port)


def from_args(args: argparse.Namespace) -> NodeOptions:
    """The options of one run, checked; ConfigError names the flag and the value (exit 2)."""
    if not _LINK_NAME.fullmatch(args.link):
        raise ConfigError(f"--link {args.link!r}: not an interface name (at most 15 letters, "
                        "digits, '_', '.', '-')")
    interfaces = tuple(args.interface or DEFAULT_INTERFACES)
    for glob in interfaces:
        if not _INTERFACE.fullmatch(glob):
            raise ConfigError(f"--interface {glob!r}: expected an interface name or a prefix "
                            "ending in '+', such as veth+ or cali+")
    targets = tuple(parse_target(text) for text in args.to or ())
    versions = [target.version for target in targets]
    if len(set(versions)) != len(versions):
        raise ConfigError("--to: give at most one IPv4 and one IPv6 target")
    if args.command == "node-setup" and args.mode == "dnat":
        if not targets:
            raise ConfigError("--mode dnat needs --to ADDRESS:PORT, imds's own address on the "
                            "node (e.g. the node's IP and the port `imds serve` listens on)")
        if 4 not in versions:
            raise ConfigError("--mode dnat needs an IPv4 --to (169.254.169.254 is IPv4)")
        if args.ipv6 and 6 not in versions:
            raise ConfigError("--mode dnat with IPv6 needs an IPv6 --to as well (or --no-ipv6)")
    return NodeOptions(mode=args.mode, link=args.link, link_kind=args.link_kind,
                       ipv6=args.ipv6, interfaces=interfaces, targets=targets)


def add_parsers(sub: Any) -> None:
    """The `node-setup` and `node-cleanup` subcommands, on the `imds` parser."""
    setup = sub.add_parser(
        "node-setup", allow_abbrev=False,
        help="make the link-local addresses reach imds on a Kubernetes node (root)",
        description="Make 169.254.169.254, 169.254.170.23, 169.254.170.2, fd00:ec2::254 and "
                    "fd00:ec2::23 reach imds on this node, as the EKS Pod Identity agent's "
                    "init container (mode dummy) or kube2iam (mode dnat) does. Idempotent; "
                    "on any failure, what this run added is removed again. Needs "
                    "CAP_NET_ADMIN.")
    cleanup = sub.add_parser(
        "node-cleanup", allow_abbrev=False,
        help="remove what node-setup added (root)",
        description="Remove exactly what `imds node-setup` added: its link (mode dummy) or "
                    "its iptables chain and the jump to it (mode dnat). Idempotent. Takes "
                    "node-setup's flags.")
    for parser in (setup, cleanup):
        parser.add_argument("--mode", choices=MODES, default="dummy",
                            help="dummy: the addresses on a link of their own, with routes; "
                                 "dnat: iptables DNAT from the pods' interfaces to --to "
                                 "(default: dummy)")
        parser.add_argument("--link", default=DEFAULT_LINK, metavar="NAME",
                            help=f"mode dummy: the link's name (default: {DEFAULT_LINK})")
        parser.add_argument("--link-kind", choices=LINK_KINDS, default="dummy",
                            help="mode dummy: dummy, or bridge (a bridge without ports holds "
                                 "addresses the same way) for kernels without dummy links "
                                 "(default: dummy)")
        parser.add_argument("--no-ipv6", dest="ipv6", action="store_false",
                            help="leave out fd00:ec2::254 and fd00:ec2::23 (nodes without IPv6)")
        parser.add_argument("--interface", action="append", metavar="GLOB",
                            help="mode dnat, repeatable: the pods' interfaces, a name or a "
                                 "prefix ending in '+' (default: veth+; Calico: cali+)")
        parser.add_argument("--to", action="append", metavar="ADDRESS:PORT",
                            help="mode dnat: imds's own address on the node, one IPv4 "
                                 "(10.0.0.5:8080) and one IPv6 ([fd00::5]:8080)")
