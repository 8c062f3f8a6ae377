"""Running `imds` and SDK clients as separate processes, the way a user would."""

from __future__ import annotations

import functools
import os
import re
import resource
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """An environment with no AWS settings at all: only PATH, HOME and what is given."""
    (home / ".aws").mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": f"{BIN}{os.pathsep}/usr/bin:/bin",
        "HOME": str(home),
        "AWS_CONFIG_FILE": str(home / ".aws" / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / ".aws" / "credentials"),
        "PYTHONPATH": str(ROOT),
        "LANG": "C.UTF-8",
    }
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        Path(env[name]).touch()
    env.update(extra)
    return env


@dataclass
class ImdsProcess:
    process: subprocess.Popen[str]
    url: str
    banner: list[str]
    stderr: list[str] = field(default_factory=list)


# Runs `imds` as `python -m imds` does, with uvloop unimportable (its absence is the
# only way to the asyncio event loop: the CLI has no switch for it).
WITHOUT_UVLOOP = ("-c", "import sys; sys.modules['uvloop'] = None; "
                        "from imds.cli import main; raise SystemExit(main())")


@contextmanager
def run_imds(*args: str, env: Mapping[str, str], timeout: float = 20,
             launch: Sequence[str] = ("-m", "imds"), open_files: int | None = None,
             ) -> Iterator[ImdsProcess]:
    """
    Start `python -m imds serve --port 0 ARGS` and yield once it prints where it listens.
    `launch` replaces `-m imds` (e.g. `WITHOUT_UVLOOP`); `open_files` is the server's
    RLIMIT_NOFILE, soft and hard, as `ulimit -n` sets it.
    """
    limit = None
    if open_files is not None:
        limit = functools.partial(resource.setrlimit, resource.RLIMIT_NOFILE,
                                  (open_files, open_files))
    process = subprocess.Popen(
        [sys.executable, *launch, "serve", "--port", "0", *args],
        env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        preexec_fn=limit,
    )
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(process.stderr or []), daemon=True)
    reader.start()
    banner: list[str] = []
    url = ""
    try:
        assert process.stdout is not None
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        for line in process.stdout:
            banner.append(line.rstrip("\n"))
            match = re.search(r"listening on (http://\S+)", line)
            if match:
                url = match.group(1)
            if line.startswith("imds: serving role"):
                break
        timer.cancel()
        if not url:
            process.wait(5)
            reader.join(5)
            raise AssertionError(f"imds did not start: {banner} {''.join(stderr)}")
        yield ImdsProcess(process, url, banner, stderr)
    finally:
        stop_process(process)
        reader.join(5)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def stop_process(process: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL after 10 s; returns once the process is gone."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run(
    argv: list[str], env: Mapping[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=dict(env), capture_output=True, text=True, timeout=timeout,
                          check=False, cwd=ROOT)
