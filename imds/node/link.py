"""
Mode dummy: the link-local addresses on a link of imds's own, with a route to each, as the
EKS Pod Identity agent's `initialize` puts 169.254.170.23 and fd00:ec2::23 on its dummy
`pod-id-link0` [K-13]. A pod's packet to 169.254.169.254 leaves by its default route to the
node, where the address is local: `imds serve --listen 169.254.169.254:80 ...` (hostNetwork)
answers it, and sees the pod's own address as the caller (the role map's key).

Over netlink with pyroute2, not by running `ip`: each step's error comes back as an errno
to act on (EEXIST, EOPNOTSUPP, EPERM), with no output to parse, and no binary is needed in
the image beyond Python.

Ownership: the link carries the alias `imds node-setup` (IFLA_IFALIAS). Cleanup deletes
only a link by that name and with that alias; deleting it takes its addresses and routes
with it, which is exactly what setup added. A link by the name without the alias is someone
else's: both commands refuse it.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from imds.errors import NodeError
from imds.node.options import NodeOptions

MARK = "imds node-setup"
MAIN_TABLE = 254
IFA_F_NODAD = 0x02


def _family(address: str) -> int:
    return 10 if ipaddress.ip_address(address).version == 6 else 2


def _prefix(address: str) -> int:
    return 128 if _family(address) == 10 else 32


@contextmanager
def _netlink() -> Iterator[Any]:
    try:
        with IPRoute() as ipr:
            yield ipr
    except NetlinkError as exc:
        raise NodeError(_explain(exc)) from None


def _explain(exc: NetlinkError) -> str:
    if exc.code == errno.EPERM:
        return ("not permitted: node-setup and node-cleanup need CAP_NET_ADMIN in the node's "
                "network namespace (a privileged init container, hostNetwork)")
    return f"netlink: {exc.args[1] if len(exc.args) > 1 else exc}"


def _name_of(ipr: Any, index: int) -> str:
    links = ipr.get_links(index)
    return str(links[0].get("ifname")) if links else f"index {index}"


def _own_link(ipr: Any, options: NodeOptions) -> int | None:
    """Our link's index, None when there is none; NodeError when the name is taken."""
    found = ipr.link_lookup(ifname=options.link)
    if not found:
        return None
    link = ipr.get_links(found[0])[0]
    kind = link.get(("IFLA_LINKINFO", "IFLA_INFO_KIND"))
    if link.get("IFLA_IFALIAS") != MARK:
        raise NodeError(f"a link named {options.link} exists and is not imds's (its alias is "
                        f"not {MARK!r}): choose another --link, or remove it")
    if kind != options.link_kind:
        raise NodeError(f"link {options.link} is imds's but a {kind}, not a "
                        f"{options.link_kind}: run node-cleanup first")
    return int(found[0])


def _addresses_on(ipr: Any, address: str) -> set[int]:
    return {int(item["index"]) for item in ipr.get_addr(family=_family(address))
            if item.get("IFA_ADDRESS") == address}


def _routes_to(ipr: Any, address: str) -> set[int]:
    return {int(route.get("RTA_OIF") or 0)
            for route in ipr.get_routes(family=_family(address), table=MAIN_TABLE)
            if route.get("RTA_DST") == address and route["dst_len"] == _prefix(address)}


def _check_free(ipr: Any, options: NodeOptions, own: int | None) -> None:
    """Refuse before changing anything: an address or a route already elsewhere [K-13]."""
    for address in options.addresses():
        for index in _addresses_on(ipr, address) - {own}:
            raise NodeError(f"{address} is already on {_name_of(ipr, index)}: another agent "
                            "(the EKS Pod Identity agent, kube2iam, a previous setup under "
                            "another --link) holds it; remove it there, or use --mode dnat")
        for index in _routes_to(ipr, address) - {own}:
            raise NodeError(f"a route to {address} already goes to {_name_of(ipr, index)}; "
                            "remove it, or use --mode dnat")


def setup(options: NodeOptions) -> list[str]:
    """Create or complete the link; what was done, one line each. Rolled back on failure."""
    with _netlink() as ipr:
        own = _own_link(ipr, options)
        _check_free(ipr, options, own)
        undo: list[Callable[[], object]] = []
        done: list[str] = []
        try:
            if own is None:
                _create(ipr, options)
                own = int(ipr.link_lookup(ifname=options.link)[0])
                index = own
                undo.append(lambda: ipr.link("del", index=index))
                done.append(f"created {options.link_kind} link {options.link}")
            for address in options.addresses():
                if own not in _addresses_on(ipr, address):
                    _add_address(ipr, own, address)
                    undo.append(_remover(ipr, "addr", own, address))
                    done.append(f"added {address}/{_prefix(address)} to {options.link}")
            ipr.link("set", index=own, state="up")
            # After the addresses and `up`: the kernel adds an IPv6 /128's own route then,
            # which is the route we want (the EKS agent skips one that exists too).
            for address in options.addresses():
                if own not in _routes_to(ipr, address):
                    ipr.route("add", dst=address, dst_len=_prefix(address), oif=own,
                              family=_family(address), table=MAIN_TABLE)
                    undo.append(_remover(ipr, "route", own, address))
                    done.append(f"added route {address}/{_prefix(address)} dev {options.link}")
        except (NetlinkError, NodeError) as exc:
            stuck = _roll_back(undo)
            if isinstance(exc, NodeError):
                raise
            outcome = (f"; rolling back failed too: {stuck}" if stuck
                       else "; nothing was left changed")
            raise NodeError(f"{_explain(exc)}{outcome}{_hint(exc, options)}") from None
        return done


def _roll_back(undo: list[Callable[[], object]]) -> str:
    """Every undo step, newest first, each tried even if one before it failed."""
    failed = []
    for step in reversed(undo):
        try:
            step()
        except NetlinkError as exc:
            failed.append(_explain(exc))
    return "; ".join(failed)


def _create(ipr: Any, options: NodeOptions) -> None:
    try:
        ipr.link("add", ifname=options.link, kind=options.link_kind)
    except NetlinkError as exc:
        if exc.code == errno.EOPNOTSUPP and options.link_kind == "dummy":
            raise NodeError("this kernel has no dummy links (CONFIG_DUMMY): use --link-kind "
                            "bridge, a bridge without ports that holds the addresses the "
                            "same way") from None
        raise
    index = ipr.link_lookup(ifname=options.link)[0]
    try:
        ipr.link("set", index=index, ifalias=MARK)
    except NetlinkError:
        ipr.link("del", index=index)
        raise


def _add_address(ipr: Any, index: int, address: str) -> None:
    # No duplicate address detection: a tentative IPv6 address cannot be bound for a
    # second or two, and the server starts right after this.
    flags = IFA_F_NODAD if _family(address) == 10 else 0
    ipr.addr("add", index=index, address=address, prefixlen=_prefix(address), flags=flags)


def _remover(ipr: Any, what: str, index: int, address: str) -> Callable[[], object]:
    def remove() -> object:
        if what == "addr":
            return ipr.addr("del", index=index, address=address, prefixlen=_prefix(address))
        return ipr.route("del", dst=address, dst_len=_prefix(address), oif=index,
                         family=_family(address), table=MAIN_TABLE)
    return remove


def _hint(exc: NetlinkError, options: NodeOptions) -> str:
    if exc.code == errno.EACCES and options.ipv6:
        return " (IPv6 looks disabled on this node: add --no-ipv6)"
    return ""


def cleanup(options: NodeOptions) -> list[str]:
    """Delete our link, and with it its addresses and routes; nothing when there is none."""
    with _netlink() as ipr:
        found = ipr.link_lookup(ifname=options.link)
        if not found:
            return []
        link = ipr.get_links(found[0])[0]
        if link.get("IFLA_IFALIAS") != MARK:
            raise NodeError(f"link {options.link} is not imds's (its alias is not {MARK!r}): "
                            "left alone")
        ipr.link("del", index=found[0])
        return [f"deleted link {options.link} with its addresses and routes"]
