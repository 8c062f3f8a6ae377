"""
Starting and stopping the server: in the foreground for the CLI, in a thread for tests.

Startup order matters: the first credentials are fetched before the socket accepts
anything, so no request ever waits for a fetch and no SDK times out on a cold start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from aiohttp import web

from imds import shutdown
from imds.config import Config, account_mismatch
from imds.config import containers as ctr_settings
from imds.config import rolemap as rolemap_file
from imds.config.endpoints import endpoints
from imds.config.rolemap import DEFAULT_ROLE
from imds.config.watch import FileWatch
from imds.containers.build import pod_session, start_containers
from imds.containers.endpoint import ContainerEndpoints
from imds.creds.pool import RoleKey, RotatorPool
from imds.creds.rotation import Rotator
from imds.creds.sources import CredentialSource, LocalSource
from imds.ec2.tokens import TokenSigner
from imds.errors import ConfigError, SourceError, StartupError
from imds.http import aioserver as httpd
from imds.http import descriptors, rolemap
from imds.http.app import make_app
from imds.http.listen import start_sites, urls
from imds.instance.simulated import SimulatedInstance, resolve
from imds.lab.control import (
    CONTROL_LIMITS,
    Control,
    load_or_create_token,
    new_token,
    start_control,
)
from imds.lab.lab import Lab
from imds.lab.registry import Published, Server, publish, running_servers

T = TypeVar("T")


def build_source(config: Config, clock: Callable[[], float]) -> CredentialSource:
    """The credential source the configuration asks for."""
    if config.role_arn:
        # Imported only when asked for: it brings boto3, which the embedded default
        # never needs (startup there stays well under a second).
        from imds.creds.sources.sts import AssumeRoleSource

        return AssumeRoleSource.from_config(config, clock)
    return LocalSource(config.role_name, config.account_id, config.credential_lifetime, clock)


@dataclass
class Running:
    """A started server: where it listens and the parts tests may drive."""

    runner: web.AppRunner
    url: str
    rotator: Rotator
    signer: TokenSigner
    config: Config
    # Every listening URL (several with --listen), and the per-caller roles (--role-map).
    urls: list[str] = field(default_factory=list)
    routes: rolemap.Routes | None = None
    # The rotation lab (faults, counters, actions) and its control listener (imds.lab.control).
    lab: Lab | None = None
    control: Control | None = None
    # Every role's rotation, and the ECS and Pod Identity endpoints (imds.containers) with
    # the id the server's own role is served under.
    pool: RotatorPool | None = None
    containers: ContainerEndpoints | None = None
    ecs_task: str = ""
    # The role map and associations files, read again when they change (imds.config.watch).
    watch: FileWatch | None = None

    async def stop(self, hurry: asyncio.Event | None = None) -> None:
        """
        Close both listeners now and every connection within `shutdown.GRACE` seconds
        (at once when `hurry` is set), then stop the rotation.
        """
        runners = [self.runner] if self.control is None else [self.control.runner, self.runner]
        await shutdown.close(runners, hurry)


async def start(
    config: Config,
    *,
    source: CredentialSource | None = None,
    clock: Callable[[], float] = time.time,
) -> Running:
    """Fetch the first credentials, then bind and start accepting requests."""
    # The instance id is fixed (saved in the state directory) before anything uses it.
    config = resolve(config)
    mismatch = account_mismatch(config)
    if mismatch:
        logging.getLogger("imds.server").warning("%s", mismatch)
    # The lab watches every source (simulated outages, fetch timing) and every rotator.
    lab = Lab(clock)
    source = lab.watch(source or build_source(config, clock))
    rotator = Rotator(source, refresh_ahead=config.refresh_ahead, clock=clock)
    lab.attach(rotator, primary=True)
    try:
        await rotator.prime()
    except SourceError as exc:
        raise StartupError(f"could not get the first credentials for role "
                           f"{source.role.name}: {exc}") from exc
    started = dt.datetime.now(dt.UTC)
    # Signed and minted once; every role's tree shares it (imds.instance).
    instance = SimulatedInstance(config, clock, started)
    tree = instance.tree(rotator)

    def make_rotator(key: RoleKey) -> Rotator:
        role_config = rolemap.config_for_role(config, key.role)
        if key.tags:
            role_config = pod_session(role_config, key.tags)
        return Rotator(lab.watch(build_source(role_config, clock)),
                       refresh_ahead=config.refresh_ahead, clock=clock)

    # One rotation per role, whichever endpoints serve it (imds.creds.pool); per-pod
    # sessions are not the lab's roles (their names repeat the role's).
    pool = RotatorPool(make_rotator,
                       started=lambda key, r: None if key.tags else lab.attach(r))
    # The lab still names their role in the fetches they serve (imds.lab.fetches).
    lab.holders.sessions = lambda: pool.rotators().values()
    own = rolemap.own_role(config)
    pool.add(RoleKey(own), rotator)
    routes = None
    # The files read again when they change (imds.config.watch), as they are now.
    watch = FileWatch(config.reload_interval, lab.reloaded)
    try:
        if config.role_map:
            map_data, role_map = rolemap_file.snapshot(config.role_map)
        if config.pod_identity_associations:
            pod_data, associations = ctr_settings.associations_snapshot(
                config.pod_identity_associations)
    except ConfigError as exc:
        raise StartupError(str(exc)) from exc
    if config.role_map:
        # Per-caller roles: one primed rotator and tree per role of the map (imds.http.rolemap).
        routes = await rolemap.start_routes(config, role_map, pool=pool, default_tree=tree,
                                            make_tree=instance.tree)
        watch.add("role_map", config.role_map, map_data,
                  routes.reloader(config.role_map, pool=pool, make_tree=instance.tree))
    listening = endpoints(config.listen, config.host, config.port)
    containers, ecs_task = await start_containers(
        config, pool=pool, own_role=own, endpoints=listening, clock=clock,
        associations=associations if config.pod_identity_associations else None)
    if config.pod_identity_associations:
        watch.add("pod_identity_associations", config.pod_identity_associations, pod_data,
                  containers.pods.reloader(config.pod_identity_associations))
    signer = TokenSigner(clock)
    app = make_app(config, tree=tree, rotator=rotator, clock=clock, signer=signer,
                   started=started, routes=routes, lab=lab, pool=pool,
                   containers=containers)
    if watch.files and config.reload_interval:
        app.cleanup_ctx.append(lambda _app: watch.running())
    # The two listeners' connection caps share the open-file limit (imds.http.descriptors).
    budget = descriptors.share(config.max_connections,
                               CONTROL_LIMITS.max_connections if config.control else 0)
    # Connection cap, timeouts, header limits, EC2-shaped parse errors (imds.http.aioserver).
    runner = httpd.Runner(app, httpd.Limits.of(config), fast_path=config.fast_path,
                          max_connections=budget.metadata, shutdown_timeout=shutdown.GRACE)
    await runner.setup()
    try:
        await start_sites(runner.site, listening)
    except BaseException:  # a StartupError, or a stop signal while binding (cancelled)
        await runner.cleanup()
        raise
    control = None
    if config.control:
        try:
            control = await start_control(config, lab, config.control_token or new_token(),
                                          max_connections=budget.control, ecs=containers.ecs)
        except BaseException:
            await runner.cleanup()
            raise
    return Running(runner, _url(runner), rotator, signer, config, urls=urls(runner),
                   routes=routes, lab=lab, control=control, pool=pool,
                   containers=containers, ecs_task=ecs_task, watch=watch)


def _url(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


async def serve(config: Config) -> None:
    """
    Run until SIGTERM, SIGINT or SIGHUP, printing where the server listens; a second
    signal stops at once (imds.shutdown). The server's entry in the state directory
    (imds.lab.registry) is withdrawn whatever ends the server, an error included.
    """
    own_token = bool(config.control_token)
    if config.control and not config.control_token:
        # Kept in the state directory, where `imds ctl` looks for it.
        config = dataclasses.replace(config, control_token=load_or_create_token(config.state_dir))
    # Before the first fetch: a stop while STS is slow to answer stops the start.
    signals = shutdown.Signals().install()
    running = await signals.unless_stopped(start(config))
    if running is None:
        return
    control = running.control
    published: Published | None = None
    try:
        role = running.rotator.source.role
        print(f"imds: listening on {', '.join(running.urls)} (IMDSv2 {config.http_tokens})",
              flush=True)
        if control is not None:
            published = _publish(running, control.url, own_token)
            print(f"imds: control API, /metrics and timeline on {control.url}/ "
                  "(token: imds ctl url)", flush=True)
            if published is not None:
                _name_the_others(published.server.pid, running.config.state_dir)
        print(f"imds: serving role {role.name} from {running.rotator.source.describe()}",
              flush=True)
        if running.containers is not None:
            _print_containers(running)
        if running.routes is not None:
            for network, name in running.routes.role_map.clients:
                print(f"imds: callers in {network} get role {name}", flush=True)
            unmapped = running.routes.role_map.unmapped
            others = f"role {role.name}" if unmapped == DEFAULT_ROLE else "no role"
            print(f"imds: other callers get {others}", flush=True)
        await signals.stop.wait()
    finally:
        # First: whatever happens next, `imds ctl` must not find a server that is gone.
        if published is not None:
            published.withdraw()
        await running.stop(hurry=signals.hurry)


def _print_containers(running: Running) -> None:
    """Where the ECS and Pod Identity endpoints are, and how to point an SDK at them."""
    assert running.containers is not None
    url = running.urls[0]
    for task, role in running.containers.ecs.roles().items():
        print(f"imds: ECS task {task} gets role {role} at {url}/v2/credentials/{task}",
              flush=True)
    print(f"imds: EKS Pod Identity at {url}/v1/credentials; `imds env ecs|pod-identity` "
          "prints the variables an SDK needs", flush=True)


def _publish(running: Running, control_url: str, own_token: bool) -> Published | None:
    """Record this server in its state directory, where `imds ctl` looks (imds.lab.registry)."""
    source = running.rotator.source
    return publish(running.config.state_dir, Server(
        pid=os.getpid(), control_url=control_url, urls=tuple(running.urls),
        role=source.role.name, source=source.describe(), started=time.time(),
        own_token=own_token, ecs_task=running.ecs_task,
        own_container_token=bool(running.config.container_token)))


def _name_the_others(pid: int, state_dir: str) -> None:
    """Say so when other servers share the state directory: `imds ctl` will ask which."""
    try:
        others = [s for s in running_servers(state_dir) if s.pid != pid]
    except (OSError, ConfigError):
        return
    if others:
        pids = ", ".join(f"{s.pid} ({s.role})" for s in others)
        print(f"imds: also running on {state_dir}: pid {pids}; `imds ctl servers` lists "
              f"them, `imds ctl --server {pid} ...` picks this one", flush=True)


class ServerThread:
    """
    The server on its own event loop in a daemon thread, for synchronous callers (boto3
    tests, the pytest plugin). `start()` returns once the socket accepts connections.
    """

    def __init__(self, config: Config, *, source: CredentialSource | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._source = source
        self._clock = clock
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="imds-server")
        self.running: Running | None = None

    def start(self) -> Running:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            start(self._config, source=self._source, clock=self._clock), self._loop
        )
        self.running = future.result(timeout=30)
        return self.running

    def call(self, coro_fn: Callable[[], Awaitable[T]], timeout: float = 30) -> T:
        """Run a coroutine function on the server's loop and return its result."""
        async def wrapper() -> T:
            return await coro_fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(timeout)

    def stop(self) -> None:
        if self.running is not None:
            asyncio.run_coroutine_threadsafe(self.running.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()
