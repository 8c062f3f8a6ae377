"""
The bodies the container credential endpoints send: the ECS agent's [K-04] [K-05] and the
EKS Pod Identity agent's [K-07] [K-08]. Both agents are Go programs writing compact JSON
(`encoding/json`), so no spaces and their field order.
"""

from __future__ import annotations

import datetime as dt
import json

from imds.creds.model import Credentials
from imds.ec2.answer import Reply
from imds.ec2.wire import iso8601

APPLICATION_JSON = "application/json"
# What Go's http.Error sends [K-08].
TEXT_PLAIN_UTF8 = "text/plain; charset=utf-8"
_NOSNIFF = (("X-Content-Type-Options", "nosniff"),)


def _compact(pairs: list[tuple[str, str]]) -> bytes:
    return json.dumps(dict(pairs), separators=(",", ":")).encode("utf-8")


def ecs_document(creds: Credentials, role_arn: str) -> bytes:
    """[K-04] The ECS agent echoes its backend's RFC 3339 expiry: whole seconds, `Z`."""
    return _compact([
        ("RoleArn", role_arn),
        ("AccessKeyId", creds.access_key_id),
        ("SecretAccessKey", creds.secret_access_key),
        ("Token", creds.session_token),
        ("Expiration", iso8601(creds.expiration)),
    ])


def rfc3339_nano(when: dt.datetime) -> str:
    """
    [K-07] RFC 3339 with a nine-digit fraction. Go's RFC3339Nano would drop trailing zeros;
    the fraction is always written so that every client's parser meets one (K-09: JS parses
    it strictly, botocore and Go take it), which is what the agent sends for EKS Auth's
    sub-second expiries.
    """
    utc = when.astimezone(dt.UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond * 1000:09d}Z"


def pod_identity_document(creds: Credentials, account_id: str) -> bytes:
    """[K-07] the agent's body: AccountId, no Code, no RoleArn."""
    return _compact([
        ("AccessKeyId", creds.access_key_id),
        ("SecretAccessKey", creds.secret_access_key),
        ("Token", creds.session_token),
        ("AccountId", account_id),
        ("Expiration", rfc3339_nano(creds.expiration)),
    ])


def ecs_error(status: int, code: str, message: str) -> Reply:
    """[K-05] the ECS agent's errors: JSON with lower-case `code` and `message`."""
    return Reply(status, _compact([("code", code), ("message", message)]), APPLICATION_JSON)


def plain_error(status: int, message: str) -> Reply:
    """[K-08] the EKS agent's errors, as Go's http.Error writes them."""
    return Reply(status, (message + "\n").encode("utf-8"), TEXT_PLAIN_UTF8, _NOSNIFF)
