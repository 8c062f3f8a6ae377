"""
Who may talk to the server: a `Host` check against DNS rebinding, and an optional
allow-list of client networks.

DNS rebinding: a web page from `evil.example` whose name is re-pointed at 127.0.0.1 (or at
169.254.169.254) makes the victim's browser send same-origin requests here, custom headers
and the token PUT included, and read the credentials back. Such requests always carry the
attacker's *name* in `Host`. So a request is served only when `Host` is an IP literal (the
client addressed us by number: no name was resolved, nothing to rebind), `localhost`, or a
name the operator allowed (`--allow-host`, e.g. a compose service name). The EKS Pod
Identity agent makes the same check on its link-local endpoint and answers **403** [K-08];
EC2 documents 403 for "the request is not allowed" [N-03].

The client allow-list (`--allow-client CIDR`, repeatable) refuses every other caller with
the same 403. Both answers are cached per distinct header value / caller address, so the
request path pays one dict lookup; the caches are bounded against floods of new values.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Allowing this name turns the Host check off.
ANY_HOST = "*"
_CACHE_LIMIT = 4096
# DNS name limits (RFC 1035 2.3.4): labels of at most 63 octets, names of at most 253
# characters in their dotted form (255 octets on the wire).
_LABEL_MAX = 63
_NAME_MAX = 253
_LABEL = re.compile(rb"[A-Za-z0-9_-]+")


def parse_network(raw: str) -> str:
    """A client network for `--allow-client`: `10.89.0.0/24`, `10.89.0.7`, `fd00::/64`."""
    try:
        return str(ipaddress.ip_network(str(raw).strip(), strict=False))
    except ValueError:
        raise ValueError(f"expected an address or CIDR network, got {raw!r}") from None


def dns_name_problem(name: str) -> str:
    """
    What makes `name` unusable as a DNS name, or "" when nothing does.

    The rules are the resolver's (RFC 1035 2.3.4; IDNA for international names, as Python's
    `idna` codec applies them before getaddrinfo): at most 253 characters, one optional
    trailing dot, labels of 1-63 letters, digits, `-` or `_`. A name breaking them would
    otherwise surface at bind time as a UnicodeError from the codec, not as a setting error.
    """
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    encoded: list[bytes] = []
    for label in labels:
        if not label:
            return "it has an empty label" if name else "it is empty"
        try:
            ascii_label = label.encode("ascii" if label.isascii() else "idna")
        except UnicodeError:
            return f"label {label!r} is not a valid international label"
        if len(ascii_label) > _LABEL_MAX:
            return (f"label {label[:16]!r}… is {len(ascii_label)} characters long, "
                    f"at most {_LABEL_MAX}")
        if not _LABEL.fullmatch(ascii_label):
            return f"label {label!r} has characters other than letters, digits, - and _"
        encoded.append(ascii_label)
    if len(b".".join(encoded)) > _NAME_MAX:
        return f"it is longer than {_NAME_MAX} characters"
    return ""


def parse_host_name(raw: str) -> str:
    """A `Host` name for `--allow-host`: a DNS name (`imds`, `imds.local`) or `*`."""
    name = str(raw).strip().lower().rstrip(".")
    if name == ANY_HOST:
        return name
    problem = dns_name_problem(name)
    if problem:
        raise ValueError(f"expected a host name or *, got {raw!r} ({problem})")
    return name


def client_address(remote: str | None) -> IPAddress | None:
    """The caller's address, an IPv4-mapped IPv6 address (dual-stack socket) as IPv4."""
    if not remote:
        return None
    try:
        address = ipaddress.ip_address(remote.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def host_name(header: str) -> tuple[str, bool]:
    """
    Split a `Host` header into its host part and whether that part is an IP literal.

    `169.254.169.254:80`, `[fd00:ec2::254]:80`, `localhost:1338`; an unbracketed IPv6
    literal is not valid HTTP but names no DNS name either, so it counts as a literal.
    """
    text = header.strip()
    if text.startswith("["):
        inside, sep, rest = text[1:].partition("]")
        if sep and (not rest or (rest[0] == ":" and rest[1:].isdigit())):
            return inside, _is_ip(inside.partition("%")[0])
        return text, False
    if text.count(":") > 1:
        return text, _is_ip(text)
    host, sep, port = text.partition(":")
    if sep and not port.isdigit():
        return text, False
    return host.lower().rstrip("."), _is_ip(host)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@dataclass
class Guard:
    """Decides, per request, whether the caller and its `Host` header are acceptable."""

    allow_hosts: frozenset[str] = frozenset()
    allow_clients: tuple[IPNetwork, ...] = ()
    _hosts: dict[str | None, bool] = field(default_factory=dict, repr=False)
    _clients: dict[str | None, bool] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, allow_hosts: Iterable[str] = (), allow_clients: Iterable[str] = ()) -> Guard:
        return cls(
            allow_hosts=frozenset(allow_hosts),
            allow_clients=tuple(ipaddress.ip_network(n, strict=False) for n in allow_clients),
        )

    def admits(self, host: str | None, remote: str | None) -> bool:
        """True when both the `Host` header and the caller's address are acceptable."""
        ok = self._hosts.get(host)
        if ok is None:
            ok = self._remember(self._hosts, host, self._host_ok(host))
        if not ok:
            return False
        if not self.allow_clients:
            return True
        ok = self._clients.get(remote)
        if ok is None:
            ok = self._remember(self._clients, remote, self._client_ok(remote))
        return ok

    def _host_ok(self, header: str | None) -> bool:
        if header is None or ANY_HOST in self.allow_hosts:
            # No Host at all (HTTP/1.0): browsers always send one, so this is no rebinding.
            return True
        name, literal = host_name(header)
        return literal or name == "localhost" or name in self.allow_hosts

    def _client_ok(self, remote: str | None) -> bool:
        address = client_address(remote)
        return address is not None and any(address in net for net in self.allow_clients)

    @staticmethod
    def _remember(cache: dict[str | None, bool], key: str | None, ok: bool) -> bool:
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[key] = ok
        return ok
