"""
Private network namespaces for tests that need 169.254.169.254, routers and several hosts.

Safety rules this module enforces (the tests rely on them):
- nothing is configured in the host's own namespace: every interface is created *inside*
  a namespace made here (`ip -n NS link add ... peer ... netns OTHER`), so 169.254.169.254,
  veths and bridges never appear on the host, and no host sysctl or route changes;
- the test process itself never enters a namespace: servers and clients are subprocesses
  run through `ip netns exec`;
- everything is torn down in `finally` blocks: processes started in a namespace are
  stopped by their pid, then the namespaces are deleted (which destroys their links).
  Namespaces are named `imdst-<pid>-<n>`, so a sweep can remove those of a run that died
  without touching a concurrent run's.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import stop_process

PREFIX = "imdst-"
_counter = itertools.count()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                            check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def unavailable() -> str | None:
    """Why namespace tests cannot run here, or None when they can."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed; scripts/system-deps installs it"
    name = f"{PREFIX}{os.getpid()}-probe"
    result = _ip("netns", "add", name, check=False)
    if result.returncode != 0:
        return f"`ip netns add` is not permitted here: {result.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


def sweep_stale() -> None:
    """Delete namespaces left by earlier test runs whose process no longer exists."""
    listing = _ip("netns", "list", check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.strip() else ""
        match = re.fullmatch(rf"{PREFIX}(\d+)-.*", name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            _kill_pids_in(name)
            _ip("netns", "del", name, check=False)


def _kill_pids_in(name: str) -> None:
    # Only processes inside a namespace this module created: ours by construction.
    pids = _ip("netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


@dataclass
class Namespace:
    name: str

    def ip(self, *args: str) -> None:
        _ip("-n", self.name, *args)

    def argv(self, command: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *command]

    def run(self, command: Sequence[str], *, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(command), env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def sysctl(self, *settings: str) -> None:
        # Per-namespace sysctls (net.ipv4.ip_forward, ...): the host's are untouched.
        result = self.run(["sysctl", "-qw", *settings])
        if result.returncode != 0:
            raise RuntimeError(f"sysctl in {self.name}: {result.stderr.strip()}")


@dataclass
class Lab:
    """A set of namespaces and the links between them, torn down as one."""

    namespaces: dict[str, Namespace] = field(default_factory=dict)
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    # A scratch home (empty AWS config files) for the processes run in the lab.
    home: Path = Path("/nonexistent")

    def add(self, role: str) -> Namespace:
        ns = Namespace(f"{PREFIX}{os.getpid()}-{next(_counter)}")
        _ip("netns", "add", ns.name)
        self.namespaces[role] = ns
        ns.ip("link", "set", "lo", "up")
        return ns

    def __getitem__(self, role: str) -> Namespace:
        return self.namespaces[role]

    def link(self, a: Namespace, a_if: str, b: Namespace, b_if: str) -> None:
        """A veth pair made inside `a` with its peer moved straight into `b`."""
        a.ip("link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)
        a.ip("link", "set", a_if, "up")
        b.ip("link", "set", b_if, "up")

    def popen(self, ns: Namespace, command: Sequence[str], *, env: dict[str, str]
              ) -> subprocess.Popen[str]:
        process = subprocess.Popen(ns.argv(command), env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in reversed(self.processes):
            stop_process(process)
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
        for ns in reversed(list(self.namespaces.values())):
            _kill_pids_in(ns.name)
            _ip("netns", "del", ns.name, check=False)
        self.namespaces.clear()


@contextlib.contextmanager
def lab() -> Iterator[Lab]:
    made = Lab()
    try:
        yield made
    finally:
        made.close()


def address(ns: Namespace, interface: str, *cidrs: str) -> None:
    """Give an interface addresses; IPv6 ones skip duplicate address detection (`nodad`)
    so they are usable at once instead of "tentative" for a second or two."""
    for cidr in cidrs:
        extra = ["nodad"] if ":" in cidr else []
        ns.ip("addr", "add", cidr, "dev", interface, *extra)
