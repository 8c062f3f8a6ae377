"""
The container credential settings: ECS task ids and EKS Pod Identity associations, each
naming a role, and the ECS full-URI token. Parsing only; the endpoints are imds.containers'.

A role is written as in a role map (imds.config.rolemap): a role name is minted locally, a
role ARN is assumed with STS from the server's own identity.
"""

from __future__ import annotations

import re

from imds.config import sts
from imds.config.tomlfile import decode, read_bytes, read_text
from imds.errors import ConfigError

# An ECS task id as it appears in the credentials path: the agent uses UUIDs [K-01]; any
# path-safe name of letters, digits and ._- is taken, so a compose file may say `app`.
_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Kubernetes names (namespaces and service accounts are DNS-1123 subdomains/labels).
_K8S_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")
# The Authorization token of the full-URI flow: sent verbatim by the SDKs [K-03], which refuse
# one with CR or LF; printable ASCII without spaces keeps it one header value everywhere.
_TOKEN = re.compile(r"[\x21-\x7e]{16,4096}")


def role(raw: str) -> str:
    """A role name (minted locally) or a role ARN (assumed with STS), as in a role map."""
    value = raw.strip()
    return sts.role_arn(value) if value.startswith("arn:") else sts.role_name(value)


def ecs_task(raw: str) -> str:
    """`ID=ROLE`: an ECS task id and the role its credentials come from."""
    task, sep, name = str(raw).partition("=")
    task = task.strip()
    if not sep or not _TASK_ID.fullmatch(task):
        raise ValueError(f"expected TASK_ID=ROLE with an id of letters, digits and ._- "
                         f"(e.g. a UUID), got {raw!r}")
    return f"{task}={role(name)}"


def association(raw: str) -> str:
    """`NAMESPACE/SERVICE_ACCOUNT=ROLE`: an EKS Pod Identity association."""
    who, sep, name = str(raw).partition("=")
    namespace, slash, account = who.strip().partition("/")
    if not sep or not slash or not _K8S_NAME.fullmatch(namespace) \
            or not _K8S_NAME.fullmatch(account):
        raise ValueError(f"expected NAMESPACE/SERVICE_ACCOUNT=ROLE with Kubernetes names "
                         f"(lower-case letters, digits, . and -), got {raw!r}")
    return f"{namespace}/{account}={role(name)}"


def container_token(raw: str) -> str:
    value = str(raw)
    if not _TOKEN.fullmatch(value):
        # Never echo it: it is a secret.
        raise ValueError("expected 16-4096 printable ASCII characters without spaces, CR or "
                         "LF (SDKs refuse a token with CR or LF [K-03])")
    return value


def tasks(values: tuple[str, ...]) -> dict[str, str]:
    """Task id -> role, from `ecs_task` items already checked by `ecs_task`."""
    return dict(value.split("=", 1) for value in values)


def associations(values: tuple[str, ...]) -> dict[tuple[str, str], str]:
    """(namespace, service account) -> role, from checked `association` items."""
    found: dict[tuple[str, str], str] = {}
    for value in values:
        who, _, name = value.partition("=")
        namespace, _, account = who.partition("/")
        found[(namespace, account)] = name
    return found


def parse_associations(text: str, origin: str) -> dict[tuple[str, str], str]:
    """
    An associations file (`--pod-identity-associations FILE`): one
    `NAMESPACE/SERVICE_ACCOUNT=ROLE` a line, as the repeatable option takes them; blank
    lines and `#` comments are skipped. Every mistake is a ConfigError naming its line.
    """
    found: dict[tuple[str, str], str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        where = f"{origin}, line {number}"
        try:
            checked = association(entry)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        ((who, role_),) = associations((checked,)).items()
        if who in found and found[who] != role_:
            raise ConfigError(f"{where}: {who[0]}/{who[1]} is already associated with "
                              f"{found[who]}")
        found[who] = role_
    return found


def _where(path: str) -> str:
    # Messages start with the setting's key, as the other file settings' do.
    return f"pod_identity_associations {path!r}"


def read_associations(path: str) -> dict[tuple[str, str], str]:
    return parse_associations(read_text(path, _where(path)), _where(path))


def associations_snapshot(path: str) -> tuple[bytes, dict[tuple[str, str], str]]:
    """The file's content and its associations: what a reload compares new versions with."""
    data = read_bytes(path, _where(path))
    return data, loads_associations(data, path)


def loads_associations(data: bytes, path: str) -> dict[tuple[str, str], str]:
    """The associations in `data`, the file's content as a reload read it."""
    return parse_associations(decode(data, _where(path)), _where(path))
