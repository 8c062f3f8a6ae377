"""
`python -m imds.health`: the container image's HEALTHCHECK.

It reads the same settings as `imds serve` (`IMDS_*` variables, `IMDS_CONFIG`), sends one
token PUT to the first endpoint the server listens on, and exits 0 when an `EC2ws` server
answered without a server error. A 403 counts as alive: with `--allow-client` the check's
own address may be refused, and the answer still proves the server is serving.
It runs every few seconds, so it imports the standard library, the configuration and the
pure core only, never aiohttp (the `health-stdlib` import contract in pyproject.toml): its
imports take about 40 ms, where they took 245 ms when the configuration pulled in aiohttp.
"""

from __future__ import annotations

import http.client
import os
import sys
from collections.abc import Mapping

from imds import config as cfg
from imds.config.endpoints import endpoints
from imds.ec2 import wire as p
from imds.errors import ConfigError

# A wildcard listener is reached over loopback.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def check(environ: Mapping[str, str], timeout: float = 3.0) -> tuple[bool, str]:
    """(healthy, one line saying why) for the server these settings describe."""
    try:
        config = cfg.load({}, environ)
    except ConfigError as exc:
        return False, f"configuration error: {exc}"
    endpoint = endpoints(config.listen, config.host, config.port)[0]
    host = _WILDCARDS.get(endpoint.host, endpoint.host)
    connection = http.client.HTTPConnection(host, endpoint.port, timeout=timeout)
    try:
        connection.request("PUT", p.TOKEN_PATH, headers={p.TTL_HEADER: "60"})
        response = connection.getresponse()
        response.read()
    except OSError as exc:
        return False, f"{host}:{endpoint.port}: {exc}"
    except http.client.HTTPException as exc:
        return False, f"{host}:{endpoint.port}: bad answer ({type(exc).__name__})"
    finally:
        connection.close()
    healthy = response.getheader("Server") == p.SERVER_NAME and response.status < 500
    return healthy, f"{host}:{endpoint.port}: token PUT answered {response.status}"


def main() -> int:
    healthy, why = check(os.environ)
    print(f"imds health: {'ok' if healthy else 'FAILING'}: {why}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
