"""
The lab's view of the container credential endpoints (imds.containers): which role and key
a container credential answer carries, and the `expired` and `revoked` faults as each
endpoint would show them.

A container answer names no role in its path (an ECS task id, or a pod's token), so the
role is the rotator whose current keys the answer holds: one role, one rotation, whichever
endpoint serves it (imds.creds.pool). The lookup runs once per credential answer worked out
(the fast path keeps the result with a kept answer), and its result is remembered by key.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable, Iterable, Mapping
from itertools import chain

from aiohttp import web

from imds.containers.documents import ecs_document, plain_error, pod_identity_document
from imds.containers.ecs import UNINITIALIZED, V2_PREFIX
from imds.containers.kinds import ECS, IMDS, endpoint_of
from imds.creds.model import Credentials, redact_key_id
from imds.creds.rotation import Rotator
from imds.ec2.answer import Header, Reply

# Both agents write compact JSON (imds.containers.documents), IMDS a spaced one.
_KEY_FIELD = b'"AccessKeyId":"'
# Keys remembered with their rotator; past it the lot is dropped and looked up again.
_KNOWN_MAX = 1024


def container_key(body: bytes) -> str | None:
    """The AccessKeyId of a container credential document, None for any other body."""
    at = body.find(_KEY_FIELD)
    if at < 0:
        return None
    start = at + len(_KEY_FIELD)
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


def expired_body(creds: Credentials, stated: dt.datetime, endpoint: str,
                 served: bytes) -> bytes:
    """
    The document `served` by `endpoint`, its `Expiration` moved to `stated` [L-04], written
    by the endpoint's own renderer: whole seconds for ECS [K-04], nanoseconds for Pod
    Identity [K-07]. What the renderer takes besides the keys comes from `served`.
    """
    sent = json.loads(served)
    late = dataclasses.replace(creds, expiration=stated)
    if endpoint == ECS:
        return ecs_document(late, sent["RoleArn"])
    return pod_identity_document(late, sent["AccountId"])


def revoked_reply(endpoint: str, path: str, fault_id: str) -> Reply:
    """
    What a container endpoint answers for a role whose keys are revoked: C-06's "cannot
    assume the role" has no 200 form there. The ECS agent, holding no credentials for the
    task, answers 503 CredentialsUninitialized [K-05], which SDKs retry [K-10]; the EKS
    agent passes on EKS Auth's failure to assume the role, 500 when it carries no status
    [K-08], as imds.containers.podidentity answers a role it cannot assume.
    """
    if endpoint == ECS:
        return UNINITIALIZED["v2" if path.startswith(V2_PREFIX) else "v1"]
    return plain_error(500, f"Failed to assume the role: its credentials were revoked "
                            f"(rotation lab fault {fault_id})")


def rewrite(response: web.Response, reply: Reply) -> None:
    """Make `response` (not sent yet) carry `reply` instead, as imds.http.app renders one."""
    response.set_status(reply.status)
    kind, _, charset = reply.content_type.partition("; charset=")
    response.content_type = kind
    response.charset = charset or None
    for name, value in reply.headers:
        response.headers[name] = value
    response.body = reply.body
