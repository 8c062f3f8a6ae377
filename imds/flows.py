"""
The three ways an SDK finds a credential endpoint, as environment variables: EC2's metadata
service (`imds`), an ECS task role (`ecs`) and EKS Pod Identity (`pod-identity`). What
`imds env` prints and `imds exec` sets; pure, no I/O.

Every default chain tries the container provider before IMDS [E-09], and the relative URI
before the full one [K-01], so a process that is to use one flow must not carry another's
variables: `environment()` removes them all before setting the chosen flow's.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Mapping
from urllib.parse import urlsplit

IMDS = "imds"
ECS = "ecs"
POD_IDENTITY = "pod-identity"
FLOWS = (IMDS, ECS, POD_IDENTITY)

ENDPOINT = "AWS_EC2_METADATA_SERVICE_ENDPOINT"  # [E-03] [E-10]
ENDPOINT_MODE = "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE"  # [E-04]
METADATA_DISABLED = "AWS_EC2_METADATA_DISABLED"  # [E-01]
RELATIVE_URI = "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"  # [K-01]
FULL_URI = "AWS_CONTAINER_CREDENTIALS_FULL_URI"  # [K-02]
TOKEN = "AWS_CONTAINER_AUTHORIZATION_TOKEN"  # [K-03]
TOKEN_FILE = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"  # [K-03]

# Whatever steers an SDK to one of the three flows; `imds exec` clears them all.
FLOW_VARIABLES = (ENDPOINT, ENDPOINT_MODE, RELATIVE_URI, FULL_URI, TOKEN, TOKEN_FILE)
# Found before any of the three flows in the default chains (environment keys, a profile,
# web identity): not removed, since they are the user's own, but worth a warning.
AHEAD_OF_EVERY_FLOW = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE")

# [K-02] The hosts an SDK accepts in an http:// full URI (Go v2 resolves a name and wants
# every address in this list; loopback satisfies every SDK).
FULL_URI_HOSTS = ("localhost", "169.254.170.2", "169.254.170.23", "fd00:ec2::23")


def imds_variables(url: str) -> dict[str, str]:
    """Point an SDK at the metadata service at `url` (scheme, host and port, no path)."""
    host = urlsplit(url).hostname or ""
    # The endpoint wins over the mode [E-03]; the mode says the same thing, in the exact
    # case the JavaScript SDK needs [E-04], for a tool that reads only the mode.
    return {ENDPOINT: url, ENDPOINT_MODE: "IPv6" if ":" in host else "IPv4"}


def ecs_variables(url: str, task_id: str, token: str) -> dict[str, str]:
    """The ECS full-URI flow: the task's credential path, and the token sent verbatim [K-03]."""
    check_token(token)
    return {FULL_URI: f"{url}/v2/credentials/{task_id}", TOKEN: token}


def pod_identity_variables(url: str, token_file: str) -> dict[str, str]:
    """EKS Pod Identity [K-06]: the agent's path, and the file the SDK re-reads each fetch."""
    return {FULL_URI: f"{url}/v1/credentials", TOKEN_FILE: token_file}


def check_token(token: str) -> None:
    """Raise ValueError for a token an SDK would refuse to send (CR or LF, [K-03])."""
    if not token or "\r" in token or "\n" in token:
        raise ValueError("the container token is empty or has a CR or LF, which SDKs "
                         "refuse to send [K-03]")


def client_url(url: str) -> str:
    """
    `url` as a client on this machine reaches it: a server listening on every address
    (0.0.0.0, ::) is reached on loopback, which every SDK accepts in a full URI [K-02].
    """
    parts = urlsplit(url)
    try:
        address = ipaddress.ip_address(parts.hostname or "")
    except ValueError:
        return url
    if not address.is_unspecified:
        return url
    host = "127.0.0.1" if address.version == 4 else "[::1]"
    return f"{parts.scheme}://{host}:{parts.port}" if parts.port else f"{parts.scheme}://{host}"


def full_uri_allowed(url: str) -> bool:
    """Whether SDKs take `url` as a full URI: https, or http to a host of [K-02]."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    host = (parts.hostname or "").lower()
    if host in FULL_URI_HOSTS:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or str(address) in FULL_URI_HOSTS


def exports(variables: Mapping[str, str]) -> str:
    """`export NAME=VALUE` lines for a POSIX shell, each value quoted as the shell needs."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in variables.items())


def environment(base: Mapping[str, str], flow: str,
                variables: Mapping[str, str]) -> dict[str, str]:
    """
    `base` with every flow's variables removed and `variables` set: the SDK then takes
    the chosen flow, whatever the container-before-IMDS order [E-09] [K-01]. For the
    IMDS flow `AWS_EC2_METADATA_DISABLED` goes too, since it turns that provider off [E-01].
    """
    drop = set(FLOW_VARIABLES) | ({METADATA_DISABLED} if flow == IMDS else set())
    env = {name: value for name, value in base.items() if name not in drop}
    env.update(variables)
    return env


def shadowing(current: Mapping[str, str], flow: str, *, cleared: bool) -> list[str]:
    """
    The variables in `current` that an SDK would use before `flow`'s: always the user's own
    credentials, and, unless the flow's environment is `cleared` (`imds exec`), the other
    flows' variables that win over this one [E-09] [K-01].
    """
    ahead = [name for name in AHEAD_OF_EVERY_FLOW if current.get(name)]
    if cleared:
        return ahead
    if flow == IMDS:
        ahead += [name for name in (RELATIVE_URI, FULL_URI) if current.get(name)]
        if current.get(METADATA_DISABLED, "").lower() == "true":
            ahead.append(METADATA_DISABLED)
        return ahead
    if current.get(RELATIVE_URI):
        ahead.append(RELATIVE_URI)
    if flow == ECS and current.get(TOKEN_FILE):
        ahead.append(TOKEN_FILE)  # read in preference to the token variable [K-03]
    return ahead
