"""
Building the container endpoints at startup: the task ids and associations from the
settings, their roles' rotations (primed now, but for per-pod STS sessions), the full-URI
token and the default task id kept in the state directory, the issuer's keys.
"""

from __future__ import annotations

import dataclasses
import secrets
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from imds.config import containers as settings
from imds.config.endpoints import Endpoint
from imds.containers.ecs import EcsEndpoint
from imds.containers.endpoint import ContainerEndpoints
from imds.containers.podidentity import Cluster, PodIdentityEndpoint
from imds.containers.satoken import Verifier, load_or_create_key
from imds.creds.pool import RoleKey, RotatorPool
from imds.creds.rotation import Rotator
from imds.errors import ConfigError, SourceError, StartupError
from imds.instance.statedir import kept_text

# In the state directory: the full-URI flow's token (0600; never logged) and the id the
# server's own role is served under at /v2/credentials/<id>.
TOKEN_FILE = "container-token"
TASK_ID_FILE = "ecs-task-id"

_WILDCARDS = frozenset({"0.0.0.0", "::"})
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def container_token(config: Any) -> str:
    token: str = config.container_token
    return token or kept_text(config.state_dir, TOKEN_FILE, lambda: secrets.token_urlsafe(32))


def default_task_id(state_dir: str) -> str:
    return kept_text(state_dir, TASK_ID_FILE, lambda: str(uuid.uuid4()), 0o644)


def listened_hosts(endpoints: tuple[Endpoint, ...]) -> tuple[frozenset[str], bool]:
    """The Host names a pod may use besides the agent's addresses [K-08], and whether any
    IP literal will do (a wildcard bind answers on every address)."""
    hosts = {endpoint.host for endpoint in endpoints}
    if hosts & _LOOPBACK:
        hosts |= _LOOPBACK
    return frozenset(hosts), bool(hosts & _WILDCARDS)


async def _primed(pool: RotatorPool, role: str, what: str) -> Rotator:
    try:
        return await pool.ensure(RoleKey(role))
    except SourceError as exc:
        raise StartupError(f"{what}: could not get the first credentials for role "
                           f"{role}: {exc}") from exc


async def start_containers(
    config: Any,
    *,
    pool: RotatorPool,
    own_role: str,
    endpoints: tuple[Endpoint, ...],
    clock: Callable[[], float],
    associations: Mapping[tuple[str, str], str] | None = None,
) -> tuple[ContainerEndpoints, str]:
    """
    The endpoints, and the default task id (for `imds env`). `associations`: those read
    from `--pod-identity-associations` (None: the repeatable option's).
    """
    default_task = default_task_id(config.state_dir)
    tasks = {default_task: own_role, **settings.tasks(config.ecs_task)}
    ecs = EcsEndpoint(container_token(config), pool, clock)
    for task, role in tasks.items():
        try:
            await ecs.assign(task, role)
        except SourceError as exc:
            raise StartupError(f"ecs_task {task}: could not get the first credentials for "
                               f"role {role}: {exc}") from exc

    if associations is None:
        associations = settings.associations(config.pod_identity_association) or None
    for role in set((associations or {}).values()):
        if not role.startswith("arn:"):
            # Minted locally: one rotation for every pod. An STS-backed role gets a session
            # per pod, on the pod's first request.
            await _primed(pool, role, "pod_identity_association")
    try:
        verifier = (Verifier.from_files(config.pod_identity_keys) if config.pod_identity_keys
                    else Verifier.of_key(load_or_create_key(config.state_dir)))
    except ConfigError as exc:
        raise StartupError(str(exc)) from exc
    own = pool.get(RoleKey(own_role))
    assert own is not None, "the server's own role is pooled first"
    partition = own.source.role.partition
    cluster = Cluster(config.cluster_name, f"arn:{partition}:eks:{config.region}:"
                      f"{own.source.role.account_id}:cluster/{config.cluster_name}")
    hosts, any_address = listened_hosts(endpoints)

    def account_of(key: RoleKey) -> str:
        rotator = pool.get(key)
        return rotator.source.role.account_id if rotator is not None else ""

    pods = PodIdentityEndpoint(
        verifier=verifier, associations=associations, own_role=own_role, pool=pool,
        account_of=account_of, cluster=cluster, hosts=hosts, any_address=any_address,
        rate=config.pod_identity_rate, clock=clock)
    return ContainerEndpoints(ecs, pods), default_task


def pod_session(config: Any, tags: tuple[tuple[str, str], ...]) -> Any:
    """
    A role's settings for one pod's STS session: EKS's session tags, all transitive, and a
    session name naming the cluster and pod, as EKS Auth's do (`eks-<cluster>-<pod>-…`).
    """
    values = dict(tags)
    name = f"eks-{values.get('eks-cluster-name', '')}-{values.get('kubernetes-pod-name', '')}"
    name = "".join(c if c.isascii() and (c.isalnum() or c in "+=,.@_-") else "-" for c in name)
    return dataclasses.replace(
        config,
        session_tag=(*config.session_tag, *(f"{key}={value}" for key, value in tags)),
        transitive_tag_keys=tuple(key for key, _ in tags),
        role_session_name=name[:64],
    )
