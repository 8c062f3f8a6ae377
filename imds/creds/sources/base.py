"""The one interface every credential source implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from imds.creds.model import Credentials


@dataclass(frozen=True, slots=True)
class RoleIdentity:
    """The role a source serves, as the instance profile on EC2 would show it."""

    # [C-02] the *role* name, served by `iam/security-credentials/`.
    name: str
    account_id: str
    # [C-01] `iam/info` shows the instance profile, not the role.
    instance_profile_arn: str
    instance_profile_id: str
    partition: str = "aws"


class CredentialSource(Protocol):
    """
    Fetches one fresh set of credentials per call.

    Implementations may take seconds (a network round trip); the rotator calls them off the
    request path, one call at a time. They raise `imds.errors.SourceError` on failure.
    """

    @property
    def role(self) -> RoleIdentity: ...

    async def fetch(self) -> Credentials: ...

    def describe(self) -> str:
        """One line for the startup banner and logs; never a secret."""
        ...
