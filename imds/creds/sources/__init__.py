"""
Where served credentials come from.

Every source has the same small shape (`CredentialSource`), so the rotation machinery
and the server never know which one is behind them: the embedded `LocalSource` mints
realistic keys offline, `AssumeRoleSource` gets real ones from STS.
"""

from __future__ import annotations

from imds.creds.sources.base import CredentialSource, RoleIdentity
from imds.creds.sources.local import LocalSource

__all__ = ["CredentialSource", "LocalSource", "RoleIdentity"]
