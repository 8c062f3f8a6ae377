"""
Real role credentials: `sts:AssumeRole` through boto3, from the user's own identity.

The base identity is whatever boto3's standard chain finds on the host (environment keys,
a profile, SSO, `credential_process`, `source_profile` chains), minus the instance metadata
provider: that would be this very service (or, on a laptop, a one-second timeout towards
169.254.169.254). Only the assumed role's temporary keys ever leave this module; the base
credentials stay inside botocore, which keeps them in memory only.

boto3 is blocking and slow to import, so it is imported on first use and every fetch runs
in a daemon thread of its own (`in_daemon_thread`); the embedded default never imports it.
What to ask STS for is imds.creds.sources.sts_request; how a failure is explained to the
user, imds.creds.sources.sts_errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fnmatch
import functools
import importlib.metadata
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from imds.config import sts
from imds.creds.model import Credentials
from imds.creds.sources.base import RoleIdentity
from imds.creds.sources.sts_errors import explain, short
from imds.creds.sources.sts_request import AssumeRoleSettings
from imds.ec2.ids import instance_profile_id
from imds.errors import SourceError

if TYPE_CHECKING:
    from imds.config import Config

log = logging.getLogger("imds.sts")

T = TypeVar("T")

# The service principal an instance profile's role must trust on EC2 (and its old China
# spelling, which IAM still accepts there).
EC2_PRINCIPALS = frozenset({"ec2.amazonaws.com", "ec2.amazonaws.com.cn"})

def _version() -> str:
    # From the installed distribution, not `imds.__version__`: the package root re-exports
    # the server, which a credential source must not import (README, "Where things are").
    try:
        return importlib.metadata.version("imds")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class AssumeRoleSource:
    """
    Assumes the configured role (through a chain of roles, if given) once per `fetch()`.

    The rotator calls `fetch()` one at a time, off the request path; each call is a
    fresh AssumeRole (per hop), so every rotation mints new keys, as EC2 does [L-03].
    """

    def __init__(
        self,
        settings: AssumeRoleSettings,
        clock: Callable[[], float] = time.time,
        *,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        """
        Args:
            settings: the role(s) and request parameters.
            clock: seconds since the epoch; `LastUpdated` is never later than it.
            client_options: extra `botocore.config.Config` settings. Tests pass
                `parameter_validation=False` to ask moto for sessions shorter than STS's
                900 s minimum, so rotations can be watched in seconds.
        """
        if not settings.role_arns:
            raise ValueError("AssumeRoleSource needs at least one role ARN")
        self.settings = settings
        self._clock = clock
        self._client_options = dict(client_options or {})
        partition, account, path, name = sts.split_role_arn(settings.role_arns[-1])
        self._role = RoleIdentity(
            name=name,
            account_id=account,
            # `iam/info` shows the instance profile [C-01]; the console names it after the
            # role, path included.
            instance_profile_arn=f"arn:{partition}:iam::{account}:instance-profile/{path}{name}",
            instance_profile_id=instance_profile_id(settings.role_arns[-1]),
            partition=partition,
        )
        if settings.chained and settings.duration > sts.CHAINED_DURATION_MAX:
            log.warning(
                "--duration %d lowered to %d: AWS caps sessions of chained roles at one hour",
                settings.duration, sts.CHAINED_DURATION_MAX,
            )
        # One worker thread at a time touches the boto3 session (sessions are not
        # thread-safe); the rotator's single flight already ensures it, this makes it true.
        self._lock = threading.Lock()
        self._session: Any = None
        self._sts: Any = None
        # Shown in logs and errors: a password in the URL never is (imds.config.sts.mask_url).
        self._endpoint = (sts.mask_url(settings.endpoint_url) if settings.endpoint_url
                          else f"the STS endpoint of {settings.region}")
        self._trust_checked = False
        # The assumed-role ARN of the last successful fetch (for status and logs).
        self.assumed_arn = ""

    @classmethod
    def from_config(cls, config: Config, clock: Callable[[], float]) -> AssumeRoleSource:
        return cls(AssumeRoleSettings.from_config(config), clock)

    @property
    def role(self) -> RoleIdentity:
        return self._role

    def describe(self) -> str:
        s = self.settings
        via = f" via {', '.join(s.role_arns[:-1])}" if s.chained else ""
        base = f"profile {s.profile}" if s.profile else "the default AWS credential chain"
        where = sts.mask_url(s.endpoint_url) if s.endpoint_url else f"STS in {s.region}"
        return (f"sts:AssumeRole of {s.role_arns[-1]}{via} as session {s.session_name}, "
                f"{s.effective_duration}s sessions, with {base}, at {where}")

    async def fetch(self) -> Credentials:
        # boto3 blocks (and its first import takes ~0.4 s): never on the event loop.
        return await in_daemon_thread(self._fetch_blocking)

    # ------------------------------------------------------------------ worker thread

    def _fetch_blocking(self) -> Credentials:
        with self._lock:
            try:
                return self._assume_chain()
            except SourceError:
                raise
            except Exception as exc:
                # Whatever went wrong, the rotator must see a SourceError: anything else
                # would end its background task and with it all future rotations.
                raise explain(exc, self.settings.role_arns[0], "", self.settings,
                              self._endpoint) from exc

    def _assume_chain(self) -> Credentials:
        client = self._base_client()
        arns = self.settings.role_arns
        response: dict[str, Any] = {}
        for index, arn in enumerate(arns):
            previous = arns[index - 1] if index else ""
            try:
                if index:
                    client = self._client_with(response["Credentials"])
                response = client.assume_role(**self._request(index))
            except Exception as exc:
                raise explain(exc, arn, previous, self.settings, self._endpoint) from exc
        creds = self._credentials(response)
        self.assumed_arn = response.get("AssumedRoleUser", {}).get("Arn", "")
        log.debug("assumed %s: key %s until %s", self.assumed_arn or arns[-1],
                  creds.key_hint, creds.expiration.isoformat())
        if self.settings.check_trust and not self._trust_checked:
            self._trust_checked = True
            self._check_trust(response["Credentials"])
        return creds

    def _client_config(self, **overrides: Any) -> Any:
        from botocore.config import Config as BotoConfig

        options: dict[str, Any] = {
            # Fail fast enough for a clear startup error; the rotator retries anyway.
            "connect_timeout": 5,
            "read_timeout": 15,
            "retries": {"mode": "standard", "total_max_attempts": 3},
            # CloudTrail's userAgent then says who called.
            "user_agent_extra": f"imds/{_version()}",
        }
        options.update(self._client_options)
        options.update(overrides)
        return BotoConfig(**options)

    def _base_client(self) -> Any:
        """The STS client signed with the base identity: created once, on first use."""
        if self._sts is not None:
            return self._sts
        import boto3
        import botocore.session

        core = botocore.session.get_session()
        if self.settings.profile:
            core.set_config_variable("profile", self.settings.profile)
        # Never the instance metadata provider (see the module docstring). A profile that
        # names `credential_source = Ec2InstanceMetadata` still works: that path has its own.
        core.get_component("credential_provider").remove("iam-role")
        session = boto3.Session(botocore_session=core)
        client = session.client(
            "sts",
            region_name=self.settings.region,
            endpoint_url=self.settings.endpoint_url or None,
            config=self._client_config(),
        )
        self._endpoint = sts.mask_url(client.meta.endpoint_url)
        self._session, self._sts = session, client
        return client

    def _client_with(self, creds: Mapping[str, Any], service: str = "sts", **config: Any) -> Any:
        # A chained hop is signed with the previous hop's session. A client per hop and
        # rotation (hourly at most): the session caches the service model, so it is cheap.
        return self._session.client(
            service,
            region_name=self.settings.region,
            endpoint_url=(self.settings.endpoint_url or None) if service == "sts" else None,
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
            config=self._client_config(**config),
        )

    def _request(self, index: int) -> dict[str, Any]:
        s = self.settings
        last = index == len(s.role_arns) - 1
        request: dict[str, Any] = {
            "RoleArn": s.role_arns[index],
            "RoleSessionName": s.session_name,
            # A hop's credentials are used once, right away, to take the next hop: the
            # shortest session STS grants is plenty and leaves the least lying around.
            "DurationSeconds": s.effective_duration if last else sts.DURATION_MIN,
        }
        if index == 0 and s.source_identity:
            # Set once on the first hop; STS carries it through the chain unchangeable.
            request["SourceIdentity"] = s.source_identity
        if last:
            # The served session is the one the trust condition, policies and tags are for.
            if s.external_id:
                request["ExternalId"] = s.external_id
            if s.policy:
                request["Policy"] = s.policy
            if s.policy_arns:
                request["PolicyArns"] = [{"arn": arn} for arn in s.policy_arns]
            if s.tags:
                request["Tags"] = [{"Key": key, "Value": value} for key, value in s.tags]
            if s.transitive_tag_keys:
                request["TransitiveTagKeys"] = list(s.transitive_tag_keys)
        return request

    def _credentials(self, response: Mapping[str, Any]) -> Credentials:
        raw = response["Credentials"]
        expiration = raw["Expiration"]
        if isinstance(expiration, str):
            expiration = dt.datetime.fromisoformat(expiration.replace("Z", "+00:00"))
        # [C-09] whole seconds; rounding down never claims more validity than STS gave.
        expires = expiration.astimezone(dt.UTC).replace(microsecond=0)
        now = dt.datetime.fromtimestamp(int(self._clock()), dt.UTC)
        # STS does not say when it minted the keys; it grants exactly the requested
        # duration, so this is the moment by STS's own clock (capped at ours).
        issued = min(now, expires - dt.timedelta(seconds=self.settings.effective_duration))
        return Credentials(
            access_key_id=raw["AccessKeyId"],
            secret_access_key=raw["SecretAccessKey"],
            session_token=raw["SessionToken"],
            expiration=expires,
            issued=issued,
        )

    # ------------------------------------------------------------------ --check-trust

    def _check_trust(self, creds: Mapping[str, Any]) -> None:
        """Warn when the served role could not be an instance profile role on EC2."""
        name = self._role.name
        failures = []
        # The served session is in the role's own account (GetRole is not cross-account),
        # but may lack iam:GetRole; the base identity may have it.
        clients: tuple[tuple[str, Callable[[], Any]], ...] = (
            ("the role's own session", lambda: self._client_with(creds, "iam", **_ONE_TRY)),
            ("your base credentials", lambda: self._session.client(
                "iam", region_name=self.settings.region, config=self._client_config(**_ONE_TRY))),
        )
        for who, make in clients:
            try:
                document = make().get_role(RoleName=name)["Role"]["AssumeRolePolicyDocument"]
                trusted = trusts_ec2(document)
            except Exception as exc:  # any failure only means "cannot tell"
                failures.append(f"{who}: {short(exc)}")
                continue
            if trusted:
                log.info("--check-trust: role %s trusts ec2.amazonaws.com", name)
            else:
                log.warning(
                    "--check-trust: the trust policy of role %s does not allow "
                    "ec2.amazonaws.com, so on EC2 it could not be an instance profile's "
                    "role: code that works here would get no credentials there [C-06]", name,
                )
            return
        log.warning("--check-trust: could not read the trust policy of role %s (%s)",
                    name, "; ".join(failures))


async def in_daemon_thread(call: Callable[[], T]) -> T:
    """
    `call()` in a daemon thread of its own, awaited without blocking the event loop.

    Not `asyncio.to_thread`: the default executor's threads are joined when the loop
    closes (`asyncio.run`) and again at interpreter exit (concurrent.futures), so an
    AssumeRole hung on an STS that does not answer (connect 5 s, read 15 s, three
    attempts) would hold the process for up to a minute after a stop signal, beyond
    Docker's 10 s (imds.shutdown). A blocked socket read cannot be interrupted; a daemon
    thread is simply left behind at exit, and the OS closes its socket. A thread per
    fetch costs nothing that matters: fetches come once a rotation.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        outcome: Callable[[], None]
        try:
            outcome = functools.partial(_set_result, future, call())
        except BaseException as exc:  # whatever it is, the awaiting side gets it
            outcome = functools.partial(_set_exception, future, exc)
        # The loop may be closed by now (the server stopped): then nobody is waiting.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(outcome)

    threading.Thread(target=run, name="imds-sts-fetch", daemon=True).start()
    return await future


def _set_result(future: asyncio.Future[T], result: T) -> None:
    if not future.done():  # cancelled meanwhile: the rotator or the stop stopped waiting
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


_ONE_TRY = {"retries": {"mode": "standard", "total_max_attempts": 1}}


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def trusts_ec2(document: Mapping[str, Any] | str) -> bool:
    """
    Whether a role trust policy lets EC2 assume the role (what an instance profile needs).

    Counts `Allow` statements whose actions cover `sts:AssumeRole` and whose principal is
    the EC2 service or everyone; conditions are not evaluated.
    """
    if isinstance(document, str):
        # IAM returns the document URL-encoded; boto3 usually decodes it already.
        policy: Mapping[str, Any] = json.loads(urllib.parse.unquote(document))
    else:
        policy = document
    for statement in _as_list(policy.get("Statement")):
        if not isinstance(statement, Mapping) or statement.get("Effect") != "Allow":
            continue
        actions = [str(a).lower() for a in _as_list(statement.get("Action"))]
        if not any(fnmatch.fnmatchcase("sts:assumerole", action) for action in actions):
            continue
        principal = statement.get("Principal")
        if principal == "*":
            return True
        if isinstance(principal, Mapping):
            if EC2_PRINCIPALS & set(_as_list(principal.get("Service"))):
                return True
            if "*" in _as_list(principal.get("AWS")):
                return True
    return False
