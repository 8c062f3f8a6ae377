"""
Where the server listens: one or more `ADDR[:PORT]` endpoints, served by one process.

EC2 answers on 169.254.169.254:80 and, when enabled, on [fd00:ec2::254]:80 [N-01] [N-02];
a sidecar that stands in for it serves both at once, so `--listen` is repeatable. Without
it the server listens on `--host`/`--port` as before.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from imds.errors import StartupError
from imds.netguard import dns_name_problem

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
    address, or a host name the resolver can take (imds.netguard.dns_name_problem), checked
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


def urls(runner: web.AppRunner) -> list[str]:
    """Where a started runner listens, one URL per bound socket (ports resolved)."""
    return [Endpoint(host, port).url() for host, port, *_ in runner.addresses]


def endpoints(listen: tuple[Endpoint, ...], host: str, port: int) -> tuple[Endpoint, ...]:
    """The endpoints to bind: `--listen` entries with their ports filled in, or host:port."""
    if not listen:
        return (Endpoint(host, port),)
    return tuple(endpoint.with_port(port) for endpoint in listen)


def bind_error(exc: OSError | UnicodeError) -> str:
    """Why binding failed, in one line: the OS's reason, or the IDNA codec's for a name."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


# A site for host:port, not started yet (imds.httpd.Runner.site).
MakeSite = Callable[[str, int], web.BaseSite]


async def start_sites(
    make_site: MakeSite,
    where: tuple[Endpoint, ...],
    *,
    address_wait: float = 5.0,
) -> list[web.BaseSite]:
    """
    Bind every endpoint; all or nothing (sites already started are stopped on failure,
    and a StartupError names the endpoint that could not be bound).

    An address that is not there *yet* (EADDRNOTAVAIL) is retried for `address_wait`
    seconds: a container's IPv6 address stays "tentative" until duplicate address detection
    finishes, typically a second or two after the container starts.
    """
    sites: list[web.BaseSite] = []
    try:
        for endpoint in where:
            deadline = time.monotonic() + address_wait
            while True:
                assert endpoint.port is not None  # endpoints() fills every port in
                site = make_site(endpoint.host, endpoint.port)
                try:
                    await site.start()
                    break
                except (OSError, UnicodeError) as exc:
                    # UnicodeError: getaddrinfo's IDNA encoding refused the name. The
                    # configuration checks names (parse_host); this keeps any that slips
                    # past (a Config built by hand) a startup error, not a traceback.
                    await site.stop()  # unregisters the unbound site from the runner
                    not_yet = isinstance(exc, OSError) and exc.errno == errno.EADDRNOTAVAIL
                    if not not_yet or time.monotonic() >= deadline:
                        raise StartupError(f"cannot listen on {endpoint}: "
                                           f"{bind_error(exc)}") from exc
                    await asyncio.sleep(0.2)
            sites.append(site)
    except BaseException:
        for site in sites:
            await site.stop()
        raise
    return sites
