"""
Where the server listens: one or more `ADDR[:PORT]` endpoints, served by one process.

EC2 answers on 169.254.169.254:80 and, when enabled, on [fd00:ec2::254]:80 [N-01] [N-02];
a sidecar that stands in for it serves both at once, so `--listen` is repeatable. Without
it the server listens on `--host`/`--port` as before. Parsing only: binding is
imds.http.listen's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from imds.ec2.guard import dns_name_problem

# [N-01] EC2's own endpoints, which the Host check also knows by heart.
IPV4_ENDPOINT = "169.254.169.254"
IPV6_ENDPOINT = "fd00:ec2::254"

@dataclass(frozen=True, slots=True)
class Endpoint:
    """One listening address; `port` None means "the `--port` setting"."""

    host: str
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    def with_port(self, port: int) -> Endpoint:
        return self if self.port is not None else Endpoint(self.host, port)

    def url(self, port: int | None = None) -> str:
        return f"http://{Endpoint(self.host, port if port is not None else self.port)}"


def parse_host(raw: str) -> str:
    """
    An address to listen on (`--host`, `--control-host`, the host of `--listen`): an IP
    address, or a host name the resolver can take (imds.ec2.guard.dns_name_problem), checked
    here so that a bad one is a setting error, never an exception from getaddrinfo.
    """
    text = str(raw).strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    problem = dns_name_problem(text)
    if problem:
        raise ValueError(f"expected an IP address or host name, got {raw!r} ({problem})")
    return text.lower()


def _port(raw: str) -> int:
    if not raw.isdigit() or not 0 <= int(raw) <= 65535:
        raise ValueError(f"expected a port 0..65535, got {raw!r}")
    return int(raw)


def parse_endpoint(raw: str) -> Endpoint:
    """
    `169.254.169.254:80`, `[fd00:ec2::254]:80`, `fd00:ec2::254`, `localhost` (port from
    `--port`). A bare IPv6 address cannot carry a port: bracket it to give one.
    """
    text = str(raw).strip()
    if text.startswith("["):
        inside, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"expected [IPv6]:PORT, got {raw!r}")
        try:
            host = str(ipaddress.IPv6Address(inside))
        except ValueError:
            raise ValueError(f"expected an IPv6 address in brackets, got {raw!r}") from None
        return Endpoint(host, _port(rest[1:]) if rest else None)
    if text.count(":") > 1:
        try:
            return Endpoint(str(ipaddress.IPv6Address(text)))
        except ValueError:
            raise ValueError(f"expected ADDR[:PORT] or [IPv6][:PORT], got {raw!r}") from None
    host, sep, port = text.partition(":")
    return Endpoint(parse_host(host), _port(port) if sep else None)



def endpoints(listen: tuple[Endpoint, ...], host: str, port: int) -> tuple[Endpoint, ...]:
    """The endpoints to bind: `--listen` entries with their ports filled in, or host:port."""
    if not listen:
        return (Endpoint(host, port),)
    return tuple(endpoint.with_port(port) for endpoint in listen)
