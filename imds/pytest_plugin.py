"""
pytest plugin (entry point `imds`): a real IMDS for the test, and the knobs to break it.

    def test_app_survives_rotation(imds_server):
        app = MyApp()                  # boto3's default chain finds imds_server
        imds_server.rotate()
        assert app.do_work()

`imds_server` runs the server in-process on a free loopback port (a thread with its own
event loop), points `AWS_EC2_METADATA_SERVICE_ENDPOINT` at it and clears every other way
an SDK could find credentials (key variables, profiles, container and web-identity
variables, the shared config files), so the default chain ends at IMDS exactly as on an
instance. `imds_server_factory(**settings)` starts more, with settings named as the
command line's (`credential_lifetime=60`, `http_tokens="optional"`, ...).

Nothing from imds is imported until a fixture is used: the plugin loads in every pytest
run of an environment where imds is installed, and must cost those runs nothing.
See docs/pytest-plugin.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

if TYPE_CHECKING:
    from imds.creds.model import Credentials
    from imds.lab.faults import Fault
    from imds.lab.lab import Lab
    from imds.server import Running, ServerThread

__all__ = ["FaultHandle", "ImdsServer", "ImdsServerFactory"]

# Where else botocore, the CLI and other SDKs look for credentials before IMDS [E-*]
# (or instead of it): with any of these set, a test would not be testing IMDS.
CLEARED_VARIABLES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_ACCESS_KEY", "AWS_SECRET_KEY", "AWS_CREDENTIAL_EXPIRATION",
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME",
    "AWS_EC2_METADATA_DISABLED", "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
    "AWS_EC2_METADATA_V1_DISABLED",
)


class FaultHandle(Protocol):
    """An injected fault; as a context manager it is cleared on exit."""

    id: str
    kind: str

    @property
    def hits(self) -> int: ...

    @property
    def active(self) -> bool: ...

    def clear(self) -> None: ...

    def __enter__(self) -> FaultHandle: ...

    def __exit__(self, *exc: object) -> None: ...


class ImdsServer(Protocol):
    """What `imds_server` gives a test."""

    url: str
    control_url: str
    control_token: str
    role_name: str

    @property
    def credentials(self) -> Credentials: ...

    def rotate(self) -> Credentials: ...

    def expire(self) -> FaultHandle: ...

    def revoke(self) -> FaultHandle: ...

    def fault(self, kind: str, **spec: Any) -> FaultHandle: ...

    def clear_faults(self) -> int: ...

    def settings(self, *, lifetime: float | None = None,
                 refresh_ahead: float | None = None) -> dict[str, Any]: ...

    def fetches(self) -> list[dict[str, Any]]: ...

    def status(self) -> dict[str, Any]: ...


class ImdsServerFactory(Protocol):
    def __call__(self, *, use_env: bool = True, **settings: Any) -> ImdsServer: ...


class _Fault:
    def __init__(self, server: _Server, fault: Fault) -> None:
        self._server = server
        self._fault = fault
        self.id = fault.id
        self.kind = fault.kind

    @property
    def hits(self) -> int:
        return self._fault.hits

    @property
    def active(self) -> bool:
        return self._fault.ended is None

    def clear(self) -> None:
        lab = self._server.lab
        self._server.on_loop(lambda: lab.faults.end(self._fault, "cleared"))

    def __enter__(self) -> _Fault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()

    def __repr__(self) -> str:
        return f"<imds fault {self.id} {self._fault.summary()}>"


class _Server:
    """`ImdsServer` over a `ServerThread`: every action runs on the server's own loop."""

    def __init__(self, thread: ServerThread, running: Running) -> None:
        self._thread = thread
        self.running = running
        assert running.lab is not None
        self.lab: Lab = running.lab
        self.url = running.url
        self.control_url = running.control.url if running.control else ""
        self.control_token = running.control.token if running.control else ""
        self.role_name = running.rotator.source.role.name

    def on_loop(self, fn: Any) -> Any:
        async def call() -> Any:
            return fn()

        return self._thread.call(call)

    @property
    def credentials(self) -> Credentials:
        current = self.running.rotator.current
        assert current is not None
        return current.credentials

    def rotate(self) -> Credentials:
        return self._thread.call(self.lab.rotate).credentials

    def expire(self) -> _Fault:
        return _Fault(self, self.on_loop(self.lab.expire))

    def revoke(self) -> _Fault:
        return _Fault(self, self.on_loop(self.lab.revoke))

    def fault(self, kind: str, **spec: Any) -> _Fault:
        from imds.lab.faultspec import FaultSpec

        parsed = FaultSpec.parse({"kind": kind, **spec})
        return _Fault(self, self.on_loop(lambda: self.lab.add_fault(parsed)))

    def clear_faults(self) -> int:
        return self.on_loop(self.lab.faults.clear)  # type: ignore[no-any-return]

    def settings(self, *, lifetime: float | None = None,
                 refresh_ahead: float | None = None) -> dict[str, Any]:
        return self.on_loop(  # type: ignore[no-any-return]
            lambda: self.lab.settings(lifetime=lifetime, refresh_ahead=refresh_ahead))

    def fetches(self) -> list[dict[str, Any]]:
        return self.status()["fetches"]  # type: ignore[no-any-return]

    def status(self) -> dict[str, Any]:
        return self.on_loop(self.lab.status)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<imds_server {self.url} role {self.role_name}>"


def _point_sdks_at(url: str, region: str, monkeypatch: pytest.MonkeyPatch,
                   empty: Path) -> None:
    import os

    for name in CLEARED_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    # The developer's ~/.aws files come before IMDS in every default chain.
    for name, file in (("AWS_CONFIG_FILE", "config"), ("AWS_SHARED_CREDENTIALS_FILE",
                                                         "credentials")):
        path = empty / file
        path.touch()
        monkeypatch.setenv(name, str(path))
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", url)
    if not (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
        # The region the simulated instance is in; clients need one and the config file
        # that might have named it is now empty.
        monkeypatch.setenv("AWS_DEFAULT_REGION", region)


@pytest.fixture(scope="session")
def imds_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    One state directory for the session's servers: the instance id and the identity
    signing key are made once (an RSA key takes a while), never in the user's own.
    """
    return tmp_path_factory.mktemp("imds-state")


@pytest.fixture
def imds_server_factory(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory,
    imds_state_dir: Path,
) -> Iterator[ImdsServerFactory]:
    """Start IMDS servers for this test; all are stopped at its end, newest first."""
    from imds.config import load
    from imds.server import ServerThread

    threads: list[ServerThread] = []
    empty = tmp_path_factory.mktemp("aws-config")

    def factory(*, use_env: bool = True, **settings: Any) -> ImdsServer:
        cli = {"port": "0", "control_port": "0", "state_dir": str(imds_state_dir),
               **{key: str(value) for key, value in settings.items()}}
        # Only what the test asks for: the developer's IMDS_* variables do not leak in.
        config = load(cli, {})
        thread = ServerThread(config)
        threads.append(thread)  # stopped at the end even if it fails to start
        running = thread.start()
        server = _Server(thread, running)
        if use_env:
            _point_sdks_at(server.url, config.region, monkeypatch, empty)
        return server

    yield factory
    for thread in reversed(threads):
        thread.stop()


@pytest.fixture
def imds_server(imds_server_factory: ImdsServerFactory) -> ImdsServer:
    """An IMDS on a free port that the AWS SDKs' default chains will use."""
    return imds_server_factory()
