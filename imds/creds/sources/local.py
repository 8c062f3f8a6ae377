"""The embedded default: credentials minted locally, no AWS account needed."""

from __future__ import annotations

import base64
import datetime as dt
import secrets
from collections.abc import Callable

from imds.creds.model import Credentials
from imds.creds.sources.base import RoleIdentity
from imds.ec2.ids import access_key_id, instance_profile_id

# Real STS session tokens are long base64 blobs; this one opens the way current ones do
# ("IQoJb3JpZ2luX2Vj" is base64 of a protobuf-ish header) so log scrapers and size limits
# see something realistic.
_TOKEN_PREFIX = "IQoJb3JpZ2luX2VjE"


class LocalSource:
    """
    Mints realistic-looking temporary credentials with a fixed lifetime.

    They are not valid against AWS: they are for code that only needs to *hold* and
    rotate credentials (tests, demos, signing against local emulators).
    """

    def __init__(
        self,
        role_name: str,
        account_id: str,
        lifetime: float,
        clock: Callable[[], float],
    ) -> None:
        self._role = RoleIdentity(
            name=role_name,
            account_id=account_id,
            instance_profile_arn=f"arn:aws:iam::{account_id}:instance-profile/{role_name}",
            instance_profile_id=instance_profile_id(f"{account_id}/{role_name}"),
        )
        self._lifetime = lifetime
        self._clock = clock

    @property
    def role(self) -> RoleIdentity:
        return self._role

    @property
    def lifetime(self) -> float:
        return self._lifetime

    @lifetime.setter
    def lifetime(self, seconds: float) -> None:
        self._lifetime = seconds

    def describe(self) -> str:
        return f"locally minted credentials, {self._lifetime:g}s lifetime"

    async def fetch(self) -> Credentials:
        return self.mint()

    def mint(self) -> Credentials:
        """
        One new set, synchronously (it needs no I/O), so the instance identity credentials
        [M-06] can mint outside a coroutine.
        """
        # Whole seconds: [C-09] timestamps carry no fraction, so issue and expiry must
        # agree with what the document will say.
        now = int(self._clock())
        issued = dt.datetime.fromtimestamp(now, dt.UTC)
        return Credentials(
            access_key_id=access_key_id("ASIA"),
            secret_access_key=base64.b64encode(secrets.token_bytes(30)).decode("ascii"),
            session_token=_TOKEN_PREFIX
            + base64.b64encode(secrets.token_bytes(600)).decode("ascii"),
            expiration=issued + dt.timedelta(seconds=max(1, round(self._lifetime))),
            issued=issued,
        )
