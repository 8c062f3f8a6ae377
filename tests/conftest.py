"""Shared fixtures: a clean AWS environment, servers on free loopback ports."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from imds.config import Config, load
from imds.server import Running, ServerThread, start


@pytest.fixture(autouse=True)
def clean_aws_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Every test starts with no AWS or IMDS settings and empty AWS config files."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "IMDS_")):
            monkeypatch.delenv(name)
    empty = tmp_path_factory.mktemp("aws-config")
    (empty / "config").write_text("")
    (empty / "credentials").write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty / "credentials"))
    # One state directory (identity key, instance id) for the whole session, never the
    # user's ~/.local/state/imds; subprocesses inherit it. Tests about the state directory
    # itself pass their own `state_dir`.
    monkeypatch.setenv("IMDS_STATE_DIR", str(tmp_path_factory.getbasetemp() / "imds-state"))


def make_config(**settings: Any) -> Config:
    """
    A config on a free loopback port, with `settings` given as if on the command line
    (a list for a repeatable option: `tags=["a=1", "b=2"]`).
    """
    cli = {
        "port": "0",
        "state_dir": os.environ.get("IMDS_STATE_DIR"),
        **{k: [str(i) for i in v] if isinstance(v, list | tuple) else str(v)
           for k, v in settings.items()},
    }
    return load(cli, {})


ServerFactory = Callable[..., Awaitable[Running]]


@pytest.fixture
async def imds_factory() -> AsyncIterator[ServerFactory]:
    """Start servers on this test's loop; all are stopped at the end, newest first."""
    started: list[Running] = []

    async def factory(**settings: Any) -> Running:
        source = settings.pop("source", None)
        clock = settings.pop("clock", None)
        kwargs: dict[str, Any] = {"source": source}
        if clock is not None:
            kwargs["clock"] = clock
        running = await start(make_config(**settings), **kwargs)
        started.append(running)
        return running

    yield factory
    for running in reversed(started):
        await running.stop()


@pytest.fixture
async def imds(imds_factory: ServerFactory) -> Running:
    """A server on its embedded default, IMDSv2 required."""
    return await imds_factory()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # No connection reuse: the server closes each connection, as EC2 does [N-04].
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        yield session


@pytest.fixture
def imds_thread() -> Iterator[Callable[..., Running]]:
    """Start servers in background threads for synchronous clients (boto3, subprocesses)."""
    threads: list[ServerThread] = []

    def factory(**settings: Any) -> Running:
        source = settings.pop("source", None)
        thread = ServerThread(make_config(**settings), source=source)
        threads.append(thread)
        return thread.start()

    yield factory
    for thread in reversed(threads):
        thread.stop()


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """
    A real STS-compatible server (moto in server mode) on a loopback port, for the session.

    moto accepts any well-formed signature, so it also serves as "an AWS API" that clients
    holding locally minted credentials can call.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    port = server._server.server_port  # type: ignore[union-attr]  # published once bound
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def empty_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home
