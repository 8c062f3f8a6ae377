"""
The ECS agent's task credential endpoint: `GET /v2/credentials/<id>` and the legacy
`GET /v1/credentials?id=<id>` [K-01], each id a task with its role [K-04] [K-05].

Two flows reach it. The relative-URI flow is ECS's own: SDKs call
`http://169.254.170.2<AWS_CONTAINER_CREDENTIALS_RELATIVE_URI>` with no token [K-01] [K-03],
and only a container that can route to that address gets there. Everything else is the
full-URI flow (`AWS_CONTAINER_CREDENTIALS_FULL_URI`, e.g. a loopback URL), where the SDK
sends `AWS_CONTAINER_AUTHORIZATION_TOKEN(_FILE)` verbatim as `Authorization` [K-03]: that
token must match, as aws-vault's ECS server requires. The flow is told by the `Host` the
SDK sent, which for the relative URI is always 169.254.170.2.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from urllib.parse import parse_qs

from imds.containers.documents import ecs_document, ecs_error
from imds.containers.served import Served
from imds.creds.pool import RoleKey, RotatorPool
from imds.creds.rotation import Rotator
from imds.ec2.answer import Header, Reply
from imds.ec2.guard import host_name

# [K-01] where ECS serves task credentials; SDKs prefix the relative URI with it.
ECS_ADDRESS = "169.254.170.2"
V2_PREFIX = "/v2/credentials"
V1_PATH = "/v1/credentials"

_NO_ID = {
    "v1": ecs_error(400, "NoIdInRequest", "CredentialsV1Request: No ID in the request"),
    "v2": ecs_error(400, "NoIdInRequest", "CredentialsV2Request: No ID in the request"),
}
_UNKNOWN_ID = {
    "v1": ecs_error(400, "InvalidIdInRequest", "CredentialsV1Request: Credentials not found"),
    "v2": ecs_error(400, "InvalidIdInRequest", "CredentialsV2Request: Credentials not found"),
}
_UNINITIALIZED = {
    "v1": ecs_error(503, "CredentialsUninitialized",
                    "CredentialsV1Request: Credentials uninitialized for ID"),
    "v2": ecs_error(503, "CredentialsUninitialized",
                    "CredentialsV2Request: Credentials uninitialized for ID"),
}
# Also what the rotation lab's `revoked` fault answers here (imds.lab.containerdocs).
UNINITIALIZED = _UNINITIALIZED
# Not the ECS agent's (it checks no token): the full-URI flow's, shaped like its errors so
# every SDK shows code and message [K-09].
_NO_TOKEN = ecs_error(401, "MissingAuthorizationToken",
                      "this endpoint needs the Authorization header: set "
                      "AWS_CONTAINER_AUTHORIZATION_TOKEN or _TOKEN_FILE (imds env ecs)")
_WRONG_TOKEN = ecs_error(403, "InvalidAuthorizationToken",
                         "the Authorization header does not match the container token")


def role_arn(rotator: Rotator, role: str) -> str:
    """[K-04] the task role's ARN: the assumed ARN, or the minted role's as IAM spells it."""
    if role.startswith("arn:"):
        return role
    identity = rotator.source.role
    return f"arn:{identity.partition}:iam::{identity.account_id}:role/{identity.name}"


def is_relative_flow(header: Header) -> bool:
    """True when the caller addressed ECS's own endpoint, as the relative URI does [K-01]."""
    host = header("host")
    return host is not None and host_name(host)[0] == ECS_ADDRESS


class EcsEndpoint:
    """Task ids and their roles' documents; the control API adds and removes tasks."""

    def __init__(self, token: str, pool: RotatorPool, clock: Callable[[], float]) -> None:
        self._token = token.encode("utf-8")
        self._pool = pool
        self._clock = clock
        self._served: dict[str, Served] = {}
        self._roles: dict[str, str] = {}

    async def assign(self, task: str, role: str) -> None:
        """
        Serve `role` as task `task`, starting the role's rotation unless another endpoint
        runs it already. Raises SourceError when its first credentials cannot be had.
        """
        rotator = await self._pool.ensure(RoleKey(role))
        arn = role_arn(rotator, role)
        old = self._served.get(task)
        self._served[task] = Served(rotator, self._clock,
                                    lambda creds: ecs_document(creds, arn))
        self._roles[task] = role
        if old is not None:
            old.retire()

    def remove(self, task: str) -> bool:
        served = self._served.pop(task, None)
        self._roles.pop(task, None)
        if served is None:
            return False
        # Answers the fast path kept for it stop at once (imds.containers.served).
        served.retire()
        return True

    def roles(self) -> dict[str, str]:
        """Task id -> role."""
        return dict(self._roles)

    def answer(self, path: str, query: str, header: Header) -> Reply:
        if path.startswith(V2_PREFIX):
            version, task = "v2", path[len(V2_PREFIX):].removeprefix("/")
        else:
            version = "v1"
            ids = parse_qs(query, keep_blank_values=True).get("id")
            task = ids[0] if ids else ""
        if not is_relative_flow(header):
            sent = header("authorization")
            if sent is None:
                return _NO_TOKEN
            if not hmac.compare_digest(sent.encode("utf-8", "surrogateescape"), self._token):
                return _WRONG_TOKEN
        if not task:
            return _NO_ID[version]
        served = self._served.get(task)
        if served is None:
            return _UNKNOWN_ID[version]
        found = served.found()
        if found is None:
            # The role's credentials expired and the source keeps failing [K-05].
            return _UNINITIALIZED[version]
        return Reply(200, found.body, found.content_type, found=found)
