"""
The state directory (`--state-dir`): instance id, identity key and certificate, control
token and URL, the running servers (`servers/`, imds.lab.registry). Whoever can write it
can plant a control token (and drive the control API) or a signing key, and several
servers may start on it at once, so:

- Trusted only as ssh trusts `~/.ssh` (StrictModes): created owner-only (0700); an
  existing directory, and every entry in it and in its subdirectories, must belong to
  this user or root and be writable by nobody else. Otherwise startup stops with a
  configuration error that names `--state-dir` and says what to do.
- Files are created under an exclusive lock (`flock` on `<dir>/lock`), complete or not at
  all (written aside, then linked into place), and used as read back from disk: servers
  starting together create each file once and all use what is on disk.

Only startup, shutdown and `imds identity-cert` / `imds ctl` come here, never a request.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from imds.errors import ConfigError, StartupError

LOCK_FILE = "lock"
# Filesystems that cannot lock (some network and container volume mounts): every write is
# still create-exclusive and read back, so the lock only saves duplicate work there.
_NO_LOCKING = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS})


def prepare(state_dir: str | Path) -> Path:
    """
    The state directory, created owner-only if missing, else checked (see `check`).

    Raises ConfigError when it is unsafe to trust, OSError when it cannot be created.
    """
    directory = Path(state_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    check(directory)
    return directory


def check(directory: Path) -> None:
    """
    Raise ConfigError unless `directory` and every entry in it (subdirectories included)
    belong to this user or root and are writable by no one else (ssh's StrictModes rule).
    """
    found = os.stat(directory)  # a symlinked state directory is judged by its target
    if not stat.S_ISDIR(found.st_mode):
        raise _refused(directory, f"{directory} is not a directory")
    if not _owned(found):
        raise _refused(directory, f"{directory} {_owner(found)}; use a directory of your own")
    if _writable(found):
        raise _refused(directory, f"{directory} {_mode(found)}; run `chmod 700 {directory}`")
    _check_entries(directory, directory)


def _check_entries(folder: Path, directory: Path) -> None:
    with os.scandir(folder) as entries:
        for entry in entries:
            try:
                found = entry.stat()
            except FileNotFoundError:  # removed meanwhile, or a dangling symlink
                continue
            if not _owned(found):
                raise _refused(directory, f"{entry.path} {_owner(found)}; remove it "
                                          f"(`rm {entry.path}`) if you did not put it there")
            if _writable(found):
                raise _refused(directory, f"{entry.path} {_mode(found)}; run "
                                          f"`chmod go-w {entry.path}`")
            # `servers/` (imds.lab.registry): an entry planted there would get the token.
            if entry.is_dir(follow_symlinks=False):
                _check_entries(Path(entry.path), directory)


def _owned(found: os.stat_result) -> bool:
    return found.st_uid in (os.geteuid(), 0)


def _writable(found: os.stat_result) -> bool:
    return bool(found.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _owner(found: os.stat_result) -> str:
    return f"is owned by uid {found.st_uid}, not by you (uid {os.geteuid()}) or root"


def _mode(found: os.stat_result) -> str:
    return f"is writable by group or others (mode {stat.S_IMODE(found.st_mode):04o})"


def _refused(directory: Path, reason: str) -> ConfigError:
    # One line: what is wrong and what to do, naming the setting.
    return ConfigError(f"--state-dir {str(directory)!r}: {reason} (imds trusts only a "
                       "state directory and files that you or root own and nobody else "
                       "can write)")


@contextlib.contextmanager
def locked(state_dir: str | Path) -> Iterator[Path]:
    """
    The prepared state directory, held under an exclusive lock for creating what is
    missing in it. Not reentrant: a second `locked` on the same thread would wait forever.
    """
    directory = prepare(state_dir)
    fd = os.open(directory / LOCK_FILE,
                 os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            # Released on close, and by the kernel if this process dies holding it.
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno not in _NO_LOCKING:
                raise
        yield directory
    finally:
        os.close(fd)


def write_once(path: Path, data: bytes, mode: int) -> bool:
    """
    Create `path` with `data` unless it already exists; False if another writer won.

    The file appears complete or not at all (written aside, then hard-linked into place),
    so a reader never sees half a key; the caller reads back what is on disk.
    """
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        except OSError:
            # Filesystems without hard links (some container volume mounts): rename, which
            # is still atomic, and exclusive while the caller holds `locked`.
            if path.exists():
                return False
            os.replace(temp, path)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def replace_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """
    Put `data` at `path` whole (written aside, then renamed over it), with `mode` whatever
    the umask adds: a group-writable umask must not make our own files fail `check`.
    """
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def replace_held(path: Path, data: bytes, mode: int = 0o600) -> int:
    """
    Put `data` at `path` whole, as `replace_file` does, and return an open descriptor that
    holds an exclusive `flock` on it, taken before the file appears. The lock lasts while
    the descriptor is open and the kernel drops it when the process dies, SIGKILL included,
    so `held` tells the file of a live process from one that a dead process left behind,
    whatever has since been given its pid. Close the descriptor to let go.
    """
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else has it
        except OSError as exc:
            if exc.errno not in _NO_LOCKING:
                raise
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.replace(temp, path)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    return fd


def held(path: Path) -> bool | None:
    """
    Whether a live process holds `path` (`replace_held`); None where the filesystem cannot
    lock, and the caller must judge otherwise. Raises FileNotFoundError if it is gone.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError as exc:
            if exc.errno in _NO_LOCKING:
                return None
            raise
        return False
    finally:
        os.close(fd)


def kept_text(state_dir: str | Path, name: str, make: Callable[[], str],
              mode: int = 0o600, what: str = "") -> str:
    """
    The text kept in `<state_dir>/name`, made by `make` and saved (mode `mode`) on first use,
    under the directory's lock so that servers starting at once agree on one value.
    Raises StartupError when it cannot be read or written, or is empty; ConfigError when
    the state directory is unsafe to trust.
    """
    path = Path(state_dir) / name
    where = f"{what} {str(path)!r}" if what else repr(str(path))
    try:
        with locked(state_dir):
            if not path.exists():
                write_once(path, make().encode("utf-8"), mode)
            text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise StartupError(f"{where}: {exc}") from exc
    if not text:
        raise StartupError(f"{where} is empty; delete it to get a new one")
    return text
