"""
Temporary credentials and the exact documents EC2 serves for them.

Documents are rendered once per credential generation, so the request path only hands
out bytes it already has.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

from imds.ec2.wire import iso8601


def redact_key_id(key_id: str) -> str:
    """Show at most the last four characters of an access key id, as aws-vault logs them."""
    return "…" + key_id[-4:] if key_id else "(none)"


@dataclass(frozen=True, slots=True)
class Credentials:
    """One set of temporary credentials, as a source returns them."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: dt.datetime
    # When this generation was minted; EC2's `LastUpdated` [L-03].
    issued: dt.datetime

    def __post_init__(self) -> None:
        for name in ("expiration", "issued"):
            value = getattr(self, name)
            if value.tzinfo is None:
                raise ValueError(f"Credentials.{name} must be timezone-aware, got {value!r}")

    @property
    def key_hint(self) -> str:
        return redact_key_id(self.access_key_id)

    @property
    def lifetime(self) -> float:
        return (self.expiration - self.issued).total_seconds()


def _document(pairs: list[tuple[str, str]]) -> bytes:
    """
    Render a JSON object the way IMDS prints it.

    [C-01] [C-03] two-space indent, `"key" : value` with a space before the colon, fields
    in EC2's order, no trailing newline. Values go through json-style escaping.
    """
    lines = [f"  {json.dumps(k)} : {json.dumps(v)}" for k, v in pairs]
    return ("{\n" + ",\n".join(lines) + "\n}").encode("utf-8")


def credential_document(creds: Credentials, account_id: str | None = None) -> bytes:
    """
    The body of `iam/security-credentials/<role>` [C-03], with `AccountId` for the
    extended API [X-01].
    """
    pairs = [
        # [C-08] Go v1/v2 and Rust reject the document without this exact Code.
        ("Code", "Success"),
        ("LastUpdated", iso8601(creds.issued)),
        # [C-12] always AWS-HMAC.
        ("Type", "AWS-HMAC"),
        ("AccessKeyId", creds.access_key_id),
        ("SecretAccessKey", creds.secret_access_key),
        ("Token", creds.session_token),
        ("Expiration", iso8601(creds.expiration)),
    ]
    if account_id is not None:
        pairs.append(("AccountId", account_id))
    return _document(pairs)


def info_document(last_updated: dt.datetime, profile_arn: str, profile_id: str) -> bytes:
    """The body of `iam/info` [C-01]."""
    return _document(
        [
            ("Code", "Success"),
            ("LastUpdated", iso8601(last_updated)),
            ("InstanceProfileArn", profile_arn),
            ("InstanceProfileId", profile_id),
        ]
    )


def identity_info_document(last_updated: dt.datetime, account_id: str) -> bytes:
    """The body of `identity-credentials/ec2/info` [M-06]."""
    return _document(
        [
            ("Code", "Success"),
            ("LastUpdated", iso8601(last_updated)),
            ("AccountId", account_id),
        ]
    )


def unauthorized_document(role_name: str, when: dt.datetime) -> bytes:
    """
    What EC2 serves when it cannot assume the instance role [C-06].

    A 200 with `Code`/`Message` and no keys: botocore logs it and returns no credentials,
    Rust and Kotlin raise a configuration error; nobody mistakes it for keys.
    """
    message = (
        f"EC2 cannot assume the role {role_name}.  Please see documentation at "
        "http://docs.amazonwebservices.com/IAM/latest/UserGuide/RolesTroubleshooting.html."
    )
    return _document(
        [
            ("Code", "AssumeRoleUnauthorizedAccess"),
            ("Message", message),
            ("LastUpdated", iso8601(when)),
        ]
    )


@dataclass(frozen=True, slots=True)
class Rendered:
    """A credential generation with its documents rendered once."""

    credentials: Credentials
    document: bytes
    extended_document: bytes
    expires_at: float

    @classmethod
    def of(cls, creds: Credentials, account_id: str) -> Rendered:
        return cls(
            credentials=creds,
            document=credential_document(creds),
            extended_document=credential_document(creds, account_id),
            expires_at=creds.expiration.timestamp(),
        )
