"""
The servers running on one state directory, so that `imds ctl` finds each of them.

Each `imds serve` with a control listener records itself in `<state-dir>/servers/<pid>.json`
(pid, control URL, metadata URLs, role, credential source, start time; mode 0600) and
holds an exclusive `flock` on that file while it runs (imds.instance.statedir.replace_held).
The kernel drops the lock when the process dies, SIGKILL included, so an entry nobody holds
is stale however its pid has been reused since; readers skip it and remove it. On exit a
server removes its own entry and nothing else.

`<state-dir>/control-url` stays for whatever reads it: the newest server writes it, and a
server that stops, or a reader that finds the server it names dead, points it at the
newest server still running, or removes it when none is. Every write and removal is under
the state directory's lock, so two servers starting and stopping at once cannot remove
each other's.

The control token is one per state directory: every server on it uses the same
`control-token` unless it is given its own (`--control-token`), which its entry records.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from imds.errors import ConfigError
from imds.instance import statedir
from imds.lab.control import URL_FILE, write_url

log = logging.getLogger("imds.control")

SERVERS_DIR = "servers"


@dataclass(frozen=True)
class Server:
    """One running server, as its entry records it."""

    pid: int
    control_url: str
    urls: tuple[str, ...]
    role: str
    source: str
    started: float
    # Started with its own --control-token: the state directory's does not open its API.
    own_token: bool = False
    # The id its own role is served under at /v2/credentials/<id> (imds env ecs), and
    # whether it was given its own --container-token (else the state directory's).
    ecs_task: str = ""
    own_container_token: bool = False

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "urls": list(self.urls)}

    @classmethod
    def from_json(cls, data: Any) -> Server:
        """Raises ValueError unless `data` is an entry as `to_json` writes it."""
        try:
            server = cls(pid=data["pid"], control_url=data["control_url"],
                         urls=tuple(data["urls"]), role=data["role"], source=data["source"],
                         started=data["started"], own_token=data.get("own_token", False),
                         ecs_task=data.get("ecs_task", ""),
                         own_container_token=data.get("own_container_token", False))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a server entry: {exc}") from None
        if not (isinstance(server.pid, int) and isinstance(server.control_url, str)
                and all(isinstance(url, str) for url in server.urls)
                and isinstance(server.role, str) and isinstance(server.source, str)
                and isinstance(server.started, int | float)
                and isinstance(server.ecs_task, str)):
            raise ValueError("not a server entry: a field of the wrong type")
        return server

    def matches(self, selector: str) -> bool:
        """`imds ctl --server`: a pid, a URL (control or metadata), or a role name."""
        if selector.isdigit():
            return int(selector) == self.pid
        if "://" in selector:
            return selector.rstrip("/") in {self.control_url, *self.urls}
        return selector == self.role


class Published:
    """This server's entry, held while it runs; `withdraw()` when it stops."""

    def __init__(self, state_dir: str, server: Server, path: Path, fd: int) -> None:
        self._state_dir = state_dir
        self.server = server
        self._path = path
        self._fd = fd

    def withdraw(self) -> None:
        """Remove this server's entry, and `control-url` if it names this server."""
        try:
            with statedir.locked(self._state_dir) as directory:
                # Ours only if it is still the file we hold (a pid is not an identity).
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(self._path).st_ino == os.fstat(self._fd).st_ino:
                        self._path.unlink()
                os.close(self._fd)
                self._fd = -1
                live, _ = _scan(directory / SERVERS_DIR)
                _repoint(directory, {self.server.control_url}, live)
        except (OSError, ConfigError) as exc:
            log.warning("could not withdraw this server from %s: %s", self._state_dir, exc)
        finally:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def publish(state_dir: str, server: Server) -> Published | None:
    """
    Record `server` in the state directory and name it in `control-url`. Not fatal when
    it cannot (a warning): `imds ctl --control-url` still reaches the server.
    """
    try:
        with statedir.locked(state_dir) as directory:
            folder = directory / SERVERS_DIR
            folder.mkdir(mode=0o700, exist_ok=True)
            path = folder / f"{server.pid}.json"
            data = json.dumps(server.to_json(), indent=1) + "\n"
            fd = statedir.replace_held(path, data.encode("ascii"), 0o600)
            # The newest server, as before there were entries: what a reader expects.
            write_url(str(directory), server.control_url)
    except (OSError, ConfigError) as exc:
        log.warning("could not record this server in %s: %s", Path(state_dir) / SERVERS_DIR,
                    exc)
        return None
    return Published(state_dir, server, path, fd)


def running_servers(state_dir: str | Path) -> list[Server]:
    """
    The servers running on `state_dir`, oldest first (a pid breaks a tie). Stale entries
    are skipped and removed. Raises ConfigError when the directory is unsafe to trust
    (imds.instance.statedir.check): a planted entry would be sent the control token.
    """
    directory = Path(state_dir)
    folder = directory / SERVERS_DIR
    if not folder.is_dir():
        return []
    try:
        statedir.check(directory)
        live, stale = _scan(folder)
    except OSError:  # unreadable: nothing to find there
        return []
    if stale:
        # Under the lock: no server is writing an entry, so a path still unheld is stale.
        with contextlib.suppress(OSError, ConfigError), statedir.locked(directory):
            for path, server in stale:
                with contextlib.suppress(FileNotFoundError):
                    if not _alive(path, server):
                        path.unlink()
            _repoint(directory, {s.control_url for _, s in stale if s is not None}, live)
    return live


def _scan(folder: Path) -> tuple[list[Server], list[tuple[Path, Server | None]]]:
    """The live entries, oldest first, and the stale ones (None: unreadable)."""
    live: list[Server] = []
    stale: list[tuple[Path, Server | None]] = []
    for path in folder.glob("*.json"):
        try:
            server: Server | None = Server.from_json(json.loads(path.read_text("ascii")))
        except FileNotFoundError:  # withdrawn meanwhile
            continue
        except (OSError, ValueError):  # UnicodeDecodeError and JSON errors are ValueErrors
            server = None
        try:
            alive = _alive(path, server)
        except OSError:  # withdrawn meanwhile, or not a file to judge: neither listed nor removed
            continue
        if not alive:
            stale.append((path, server))
        elif server is not None:
            live.append(server)
    live.sort(key=lambda s: (s.started, s.pid))
    return live, stale


def _alive(path: Path, server: Server | None) -> bool:
    held = statedir.held(path)
    if held is not None:
        return held
    # A filesystem that cannot lock: the pid is all there is to go by.
    if server is None:
        return False
    try:
        os.kill(server.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone's process: alive
        return True
    return True


def _repoint(directory: Path, gone: Iterable[str], live: list[Server]) -> None:
    """If `control-url` names a server in `gone`, name the newest live one, or remove it."""
    path = directory / URL_FILE
    try:
        named = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return
    if named not in set(gone):
        return  # another server's, or written by hand: not ours to change
    if live:
        statedir.replace_file(path, (live[-1].control_url + "\n").encode("ascii"))
    else:
        path.unlink()
