"""
The EKS Pod Identity agent and EKS Auth in one: `GET /v1/credentials` with a service
account token in `Authorization` [K-06], answered with the associated role's credentials
[K-07], or with the agent's plain-text errors [K-08].

In EKS the agent checks the Host, passes the token to EKS Auth (AssumeRoleForPodIdentity),
which verifies the token, finds the pod identity association of its namespace and service
account, and assumes the role with session tags naming the cluster and the pod. imds does
all of it here: the token's signature against the cluster issuer's keys
(imds.containers.satoken), the association from the settings, the role from the server's
rotations (imds.creds.pool). A role minted locally is one rotation for every pod; an
STS-backed role is one session per pod, since its tags name the pod.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from imds.config.containers import loads_associations
from imds.config.watch import Apply
from imds.containers.documents import plain_error, pod_identity_document
from imds.containers.satoken import PodClaims, Verifier
from imds.containers.served import Served
from imds.creds.pool import RoleKey, RotatorPool
from imds.ec2.answer import Header, Reply
from imds.ec2.guard import host_name
from imds.errors import SourceError, TokenRejected

# [K-06] the agent's link-local addresses.
POD_IDENTITY_ADDRESSES = frozenset({"169.254.170.23", "fd00:ec2::23"})
PATH = "/v1/credentials"

_WRONG_HOST = plain_error(403, "Called agent through invalid address")
_NO_TOKEN = plain_error(400, "Service account token cannot be empty")
_THROTTLED = plain_error(429, "Too many requests, try again later")

# Verified tokens remembered (token -> claims) so a pod's every fetch is not an RSA check.
_VERIFIED_MAX = 1024


@dataclass(frozen=True, slots=True)
class Cluster:
    """The cluster imds plays: its name and ARN go into the session tags."""

    name: str
    arn: str


def session_tags(cluster: Cluster, claims: PodClaims) -> tuple[tuple[str, str], ...]:
    """The six tags EKS Pod Identity attaches to the AssumeRole, all transitive [K-11]."""
    return (
        ("eks-cluster-arn", cluster.arn),
        ("eks-cluster-name", cluster.name),
        ("kubernetes-namespace", claims.namespace),
        ("kubernetes-service-account", claims.service_account),
        ("kubernetes-pod-name", claims.pod_name),
        ("kubernetes-pod-uid", claims.pod_uid),
    )


class RateLimit:
    """A token bucket: `rate` requests a second, bursts up to `rate`; 0 turns it off."""

    def __init__(self, rate: int, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._monotonic = monotonic
        self._tokens = float(rate)
        self._at = monotonic()

    def allows(self) -> bool:
        now = self._monotonic()
        self._tokens = min(float(self.rate), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class PodIdentityEndpoint:
    """What answers `GET /v1/credentials` for pods."""

    def __init__(
        self,
        *,
        verifier: Verifier,
        associations: Mapping[tuple[str, str], str] | None,
        own_role: str,
        pool: RotatorPool,
        account_of: Callable[[RoleKey], str],
        cluster: Cluster,
        hosts: frozenset[str],
        any_address: bool,
        rate: int,
        clock: Callable[[], float],
    ) -> None:
        """
        Args:
            associations: (namespace, service account) -> role; None: every service
                account gets `own_role`.
            hosts: the Host names accepted besides the agent's addresses [K-08]: those
                imds listens on; `any_address` accepts any IP literal (a wildcard bind).
        """
        self._verifier = verifier
        self._associations = associations
        self._own_role = own_role
        self._pool = pool
        self._account_of = account_of
        self._cluster = cluster
        self._hosts = POD_IDENTITY_ADDRESSES | hosts
        self._any_address = any_address
        self._limit = RateLimit(rate) if rate else None
        self._clock = clock
        self._verified: dict[str, PodClaims] = {}
        self._host_ok: dict[str, bool] = {}
        self._served: dict[RoleKey, Served] = {}

    def _host_allowed(self, header: str | None) -> bool:
        if header is None:
            return False
        ok = self._host_ok.get(header)
        if ok is None:
            name, literal = host_name(header)
            ok = name in self._hosts or (self._any_address and literal)
            if len(self._host_ok) >= _VERIFIED_MAX:
                self._host_ok.clear()
            self._host_ok[header] = ok
        return ok

    def _claims(self, token: str, now: float) -> PodClaims | Reply:
        claims = self._verified.get(token)
        if claims is not None and now < claims.expires_at:
            return claims
        try:
            claims = self._verifier.verify(token, now)
        except TokenRejected as exc:
            self._verified.pop(token, None)
            return plain_error(400, f"Service account token is invalid: {exc}")
        if len(self._verified) >= _VERIFIED_MAX:
            self._verified.clear()
        self._verified[token] = claims
        return claims

    def key_for(self, claims: PodClaims) -> RoleKey | None:
        """The rotation that serves this pod, or None without an association."""
        if self._associations is None:
            role = self._own_role
        else:
            found = self._associations.get((claims.namespace, claims.service_account))
            if found is None:
                return None
            role = found
        if role.startswith("arn:"):
            # One STS session per pod: its tags name the pod.
            return RoleKey(role, session_tags(self._cluster, claims))
        return RoleKey(role)

    def answer(self, header: Header) -> Reply:
        if not self._host_allowed(header("host")):
            return _WRONG_HOST
        limit = self._limit
        if limit is not None and not limit.allows():
            return _THROTTLED
        token = header("authorization")
        if not token:
            return _NO_TOKEN
        now = self._clock()
        claims = self._claims(token, now)
        if isinstance(claims, Reply):
            return claims
        key = self.key_for(claims)
        if key is None:
            # EKS Auth's ResourceNotFoundException, passed through with its status [K-08].
            return plain_error(404, f"No Pod Identity Association found for service "
                                    f"account {claims.service_account} in namespace "
                                    f"{claims.namespace}")
        rotator = self._pool.get(key)
        if rotator is None:
            failure = self._pool.failure(key)
            if failure is not None:
                # An error from "EKS Auth" (the AssumeRole) without a status: 500 [K-08].
                return plain_error(500, f"Failed to assume the role: {failure}")
            # A pod's first request for an STS-backed role: aiohttp's handler waits for
            # its session (imds.http.app), the fast path hands it over.
            return Reply(500, wait=lambda: self.prepare(key))
        served = self._served.get(key)
        if served is None or served.rotator is not rotator:
            account = self._account_of(key)
            served = Served(rotator, self._clock,
                            lambda creds: pod_identity_document(creds, account))
            if len(self._served) >= _VERIFIED_MAX:
                self._served.clear()
            self._served[key] = served
        found = served.found()
        if found is None:
            return plain_error(500, "Credentials are not available: the role's source is "
                                    "failing")
        if limit is not None:
            # A kept answer skips this method, and with it the rate limit.
            return Reply(200, found.body, found.content_type)
        # Kept by the fast path at most until the token expires.
        return Reply(200, found.body, found.content_type, found=found,
                     until=claims.expires_at)

    def reloader(self, path: str) -> Apply:
        """What a new version of the associations file goes through (imds.config.watch)."""
        async def apply(data: bytes) -> str:
            associations = loads_associations(data, path)
            await self.associate(associations)
            return f"{len(associations)} associations"

        return apply

    async def associate(self, associations: Mapping[tuple[str, str], str]) -> None:
        """
        Put new associations in force (`--pod-identity-associations` reloaded,
        imds.config.watch). Roles minted locally are primed first, as at startup; then one
        assignment swaps the table, and every document served so far is retired, so the
        fast path stops sending an answer kept under the old associations. Raises
        SourceError, the old ones still in force, when a new role gets no credentials.
        """
        for role in set(associations.values()):
            if not role.startswith("arn:"):
                await self._pool.ensure(RoleKey(role))
        served = list(self._served.values())
        self._associations = dict(associations)
        self._served = {}
        for old in served:
            old.retire()

    async def prepare(self, key: RoleKey) -> None:
        """Start the rotation `key` names; a failure is answered from the pool."""
        with contextlib.suppress(SourceError):
            await self._pool.ensure(key)
