"""
What imds asks STS for: the role chain, the session's name, duration, policy and tags, and
where to ask, all checked already by imds.config (imds.config.sts). Read once at startup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from imds.config import sts
from imds.errors import StartupError

if TYPE_CHECKING:
    from imds.config import Config


@dataclass(frozen=True, slots=True)
class AssumeRoleSettings:
    """What to ask STS for; validated by `imds.config` (see `imds.config.sts`)."""

    role_arns: tuple[str, ...]
    session_name: str
    duration: int = 3600
    external_id: str = ""
    # The session policy, minified JSON.
    policy: str = ""
    policy_arns: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    transitive_tag_keys: tuple[str, ...] = ()
    source_identity: str = ""
    profile: str = ""
    region: str = "us-east-1"
    endpoint_url: str = ""
    check_trust: bool = False

    @classmethod
    def from_config(cls, config: Config) -> AssumeRoleSettings:
        try:
            policy = sts.read_policy(config.policy_file) if config.policy_file else ""
        except ValueError as exc:
            raise StartupError(f"policy_file: {exc}") from None
        return cls(
            role_arns=config.role_arn,
            session_name=config.role_session_name or sts.default_session_name(),
            duration=config.duration,
            external_id=config.external_id,
            policy=policy,
            policy_arns=config.policy_arn,
            tags=sts.parse_tags(config.session_tag),
            transitive_tag_keys=config.transitive_tag_keys,
            source_identity=config.source_identity,
            profile=config.profile,
            region=config.region,
            endpoint_url=config.sts_endpoint_url,
            check_trust=config.check_trust,
        )

    @property
    def chained(self) -> bool:
        return len(self.role_arns) > 1

    @property
    def effective_duration(self) -> int:
        # AWS refuses more than one hour for a session assumed with role credentials.
        if self.chained:
            return min(self.duration, sts.CHAINED_DURATION_MAX)
        return self.duration
