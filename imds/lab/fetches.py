"""
Which credential document an answer carries, and from which endpoint: IMDS's (the role is
in its path) or a container endpoint's (imds.containers), for the counters and the timeline.

A container answer names no role in its path (an ECS task id, or a pod's token), so the
role is the rotator whose current keys the answer holds: one role, one rotation, whichever
endpoint serves it (imds.creds.pool). The lookup runs once per credential answer worked out
(the fast path keeps the result with a kept answer), and its result is remembered by key.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from itertools import chain
from typing import NamedTuple

from imds.containers.kinds import IMDS, endpoint_of
from imds.creds.model import redact_key_id
from imds.creds.rotation import Rotator
from imds.ec2.answer import Header

# EC2 writes its documents spaced [C-07]; both agents write compact JSON
# (imds.containers.documents).
_KEY_FIELD = b'"AccessKeyId" : "'
_CONTAINER_KEY_FIELD = b'"AccessKeyId":"'
# Every IMDS credential path holds this: one `in` rules out most answers.
CREDENTIALS_PATH = "/meta-data/iam/security-credentials"
# Keys remembered with their rotator; past it the lot is dropped and looked up again.
_KNOWN_MAX = 1024


class CredentialPath(NamedTuple):
    """A request for one role's credential document."""

    role: str
    extended: bool


# `/<version>/meta-data/iam/security-credentials[-extended]/<role>[/]` [C-03].
_CREDENTIAL_PATH = re.compile(
    r"/+[^/]+/+meta-data/+iam/+security-credentials(-extended)?/+([^/]+)/*")


def credential_path(path: str) -> CredentialPath | None:
    """The role whose credential document `path` asks for, or None for any other path."""
    match = _CREDENTIAL_PATH.fullmatch(path)
    if match is None:
        return None
    return CredentialPath(match[2], match[1] is not None)


def imds_fetch(path: str, body: bytes) -> tuple[str, str, str] | None:
    """(role, key hint, "imds") of an IMDS credential document (a 200), else None."""
    target = credential_path(path)  # a role's document, not the listing
    return None if target is None else (target.role, key_in(body), IMDS)


def key_in(body: bytes) -> str:
    """The key hint of an IMDS credential document, "" for one without keys [C-06]."""
    at = body.find(_KEY_FIELD)
    if at < 0:
        return ""
    start = at + len(_KEY_FIELD)
    end = body.find(b'"', start)
    # Only the last four characters are ever decoded (redact_key_id's rule).
    return redact_key_id(body[max(start, end - 4):end].decode("ascii", "replace"))


def container_key(body: bytes) -> str | None:
    """The AccessKeyId of a container credential document, None for any other body."""
    at = body.find(_CONTAINER_KEY_FIELD)
    if at < 0:
        return None
    start = at + len(_CONTAINER_KEY_FIELD)
    end = body.find(b'"', start)
    return None if end < 0 else body[start:end].decode("ascii", "replace")


class Holders:
    """Which rotator serves an access key now: the lab's roles, and per-pod sessions."""

    def __init__(self, rotators: Mapping[str, Rotator]) -> None:
        self._rotators = rotators
        # Every rotator of the server's pool (imds.creds.pool), set by the server: per-pod
        # STS sessions are not the lab's roles (their names repeat the role's).
        self.sessions: Callable[[], Iterable[Rotator]] = tuple
        self._known: dict[str, Rotator] = {}

    def of(self, key_id: str) -> Rotator | None:
        rotator = self._known.get(key_id)
        if rotator is not None:
            return rotator
        for candidate in chain(self._rotators.values(), self.sessions()):
            current = candidate.current
            if current is not None and current.credentials.access_key_id == key_id:
                if len(self._known) >= _KNOWN_MAX:
                    self._known.clear()
                self._known[key_id] = candidate
                return candidate
        return None


def container_fetch(path: str, query: str, header: Header, body: bytes,
                    holders: Holders) -> tuple[str, str, str] | None:
    """(role, key hint, endpoint) of a container credential document (a 200), else None."""
    endpoint = endpoint_of(path, query, header)
    if endpoint == IMDS:
        return None
    key = container_key(body)
    if key is None:
        return None
    holder = holders.of(key)
    return (holder.source.role.name if holder is not None else "", redact_key_id(key),
            endpoint)
