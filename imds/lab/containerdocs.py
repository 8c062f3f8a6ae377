"""
The `expired` and `revoked` faults on the container credential endpoints (imds.containers):
each endpoint's own document, or its own refusal, as the agents it plays would answer.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

from aiohttp import web

from imds.containers.documents import ecs_document, plain_error, pod_identity_document
from imds.containers.ecs import UNINITIALIZED, V2_PREFIX
from imds.containers.kinds import ECS
from imds.creds.model import Credentials
from imds.ec2.answer import Reply


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
