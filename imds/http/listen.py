"""
Binding the endpoints the server listens on (imds.config.endpoints parses them): all
of them or none, with a short wait for addresses that are still coming up.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Callable

from aiohttp import web

from imds.config.endpoints import Endpoint
from imds.errors import StartupError


def urls(runner: web.AppRunner) -> list[str]:
    """Where a started runner listens, one URL per bound socket (ports resolved)."""
    return [Endpoint(host, port).url() for host, port, *_ in runner.addresses]


def bind_error(exc: OSError | UnicodeError) -> str:
    """Why binding failed, in one line: the OS's reason, or the IDNA codec's for a name."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


# A site for host:port, not started yet (imds.http.aioserver.Runner.site).
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
