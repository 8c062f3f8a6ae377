"""
Podman for the container tests: private configuration and storage, a cached base image,
image builds, and compose projects run inside a network namespace the test made.

How podman is set up here, and why, is /work/shared/CONTAINERS.md (runc, ulimits, a
debootstrapped base image, builds with the host CA bundle mounted, bridges only inside a
private namespace). In short:

- `CONTAINERS_CONF` / `CONTAINERS_STORAGE_CONF` point at files written here; the graph
  root (images, build cache) lives in a cache folder kept across runs, so the base image
  (~1 min of debootstrap) and the image layers are made once per machine; network
  definitions live there too, not in /etc/containers.
- Every podman call that can create networks or containers runs with
  `nsenter --net=/run/netns/<ns>`: netavark's bridge, IP forwarding and NAT rules are made
  in that namespace and vanish with it; the host's namespace is never touched.
- One run at a time uses the cache (a file lock): other test runs wait, then skip.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import netns

BASE_IMAGE = "localhost/debian-python:bookworm"
DEBIAN_SUITE = "bookworm"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
BIN = Path(sys.executable).parent
REQUIRED_TOOLS = ("podman", "runc", "debootstrap", "nsenter", "ip", "iptables")


def cache_dir() -> Path:
    # Not an IMDS_* name: tests/conftest.py clears those for every test.
    return Path(os.environ.get("IMDSTEST_CONTAINER_CACHE", "/var/tmp/imds-container-cache"))


def podman_compose() -> str | None:
    found = BIN / "podman-compose"
    return str(found) if found.exists() else shutil.which("podman-compose")


def unavailable() -> str | None:
    """Why the container tests cannot run here, or None when they can."""
    reason = netns.unavailable()
    if reason:
        return reason
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return (f"missing {', '.join(missing)} (scripts/system-deps installs podman, runc, "
                f"debootstrap, iptables as root)")
    if podman_compose() is None:
        return "podman-compose is not installed (pip, test extra)"
    return None


def debian_mirror() -> str:
    """The machine's own Debian mirror (its apt sources), as CONTAINERS.md says."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                return parts[1]
    return "http://deb.debian.org/debian"


@dataclass
class Timings:
    """Seconds spent per phase, for the report and the test output."""

    phases: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = round(time.monotonic() - started, 1)


class CommandFailed(AssertionError):
    pass


@dataclass
class Podman:
    """Podman with this test run's configuration, its storage in the shared cache."""

    root: Path
    run_dir: Path
    namespace: netns.Namespace
    timings: Timings = field(default_factory=Timings)

    @property
    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{BIN}{os.pathsep}/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                    "/sbin:/bin",
            "HOME": str(self.run_dir),
            "LANG": "C.UTF-8",
            "CONTAINERS_CONF": str(self.run_dir / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.run_dir / "storage.conf"),
            "TMPDIR": str(self.run_dir / "tmp"),
        }

    def write_config(self) -> None:
        (self.run_dir / "tmp").mkdir(parents=True, exist_ok=True)
        (self.root / "networks").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "containers.conf").write_text(
            "[containers]\n"
            # podman's defaults fail with `setrlimit ... Operation not permitted` here.
            'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
            "[network]\n"
            f'network_config_dir = "{self.root / "networks"}"\n'
            "[engine]\n"
            # crun: "cgroups in hybrid mode not supported".
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{self.run_dir / "events.log"}"\n'
            f'tmp_dir = "{self.run_dir / "libpod"}"\n'
        )
        (self.run_dir / "storage.conf").write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{self.root / "storage"}"\n'
            f'runroot = "{self.run_dir / "runroot"}"\n'
        )

    def run(self, args: Sequence[str], *, timeout: float = 600, check: bool = True,
            env: Mapping[str, str] | None = None, stdin: str | None = None,
            cwd: Path | None = None, host_network: bool = False,
            ) -> subprocess.CompletedProcess[str]:
        """
        A podman (or podman-compose) command, inside the test's namespace unless
        `host_network`: only builds (`--network=host`, which makes no bridge, route or
        rule) and image imports need the host's network, to reach the package mirrors.
        """
        prefix = [] if host_network else ["nsenter", f"--net=/run/netns/{self.namespace.name}"]
        argv = [*prefix, *args]
        result = subprocess.run(argv, env={**self.env, **(env or {})}, input=stdin,
                                capture_output=True, text=True, timeout=timeout, check=False,
                                cwd=cwd)
        if check and result.returncode != 0:
            raise CommandFailed(f"{' '.join(args)} exited {result.returncode}:\n"
                                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def podman(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return self.run(["podman", *args], **kwargs)  # type: ignore[arg-type]

    def image_exists(self, name: str) -> bool:
        return self.podman("image", "exists", name, check=False).returncode == 0

    def clear_leftovers(self) -> None:
        """Containers and networks a killed run left in the shared storage."""
        self.podman("rm", "--all", "--force", "--time", "0", check=False)
        self.podman("network", "prune", "--force", check=False)
        self.podman("volume", "prune", "--force", check=False)

    def ensure_base_image(self) -> None:
        """The local Debian + Python base image (no registry to pull one from)."""
        if self.image_exists(BASE_IMAGE):
            return
        with self.timings.phase("base image (debootstrap + import)"):
            rootfs = self.root / "rootfs-build"
            shutil.rmtree(rootfs, ignore_errors=True)
            try:
                subprocess.run(
                    ["debootstrap", "--variant=minbase",
                     "--include=python3,python3-venv,python3-pip,curl,ca-certificates",
                     DEBIAN_SUITE, str(rootfs), debian_mirror()],
                    capture_output=True, text=True, timeout=900, check=True)
                tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."],
                                       stdout=subprocess.PIPE)
                try:
                    result = subprocess.run(
                        ["podman", "import", "--change", 'CMD ["/bin/bash"]', "-", BASE_IMAGE],
                        stdin=tar.stdout, env=self.env, capture_output=True, text=True,
                        timeout=600, check=False)
                finally:
                    if tar.stdout is not None:
                        tar.stdout.close()
                    tar.wait(60)
                if result.returncode != 0:
                    raise CommandFailed(f"podman import: {result.stderr[-2000:]}")
            except subprocess.CalledProcessError as exc:
                raise CommandFailed(f"debootstrap failed: {exc.stderr[-2000:]}") from None
            finally:
                shutil.rmtree(rootfs, ignore_errors=True)

    def build(self, tag: str, context: Path, *, containerfile: Path | None = None,
              args: Mapping[str, str] | None = None) -> None:
        """`podman build`, downloads through the host's CA bundle (mounted, never copied)."""
        argv = ["build", "--format", "docker", "--network=host",
                "-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro", "-t", tag]
        for key, value in (args or {}).items():
            argv += ["--build-arg", f"{key}={value}"]
        if containerfile is not None:
            argv += ["-f", str(containerfile)]
        with self.timings.phase(f"build {tag}"):
            self.podman(*argv, str(context), timeout=900, host_network=True)

    def prune_if_large(self, limit_bytes: int = 4 << 30) -> None:
        """
        Each rebuild after a code change leaves the previous image untagged (~70 MB). They
        stay while the cache is small, because pruning also drops the build stage's layers
        (the dependency install, the slow part); past `limit_bytes` they go.
        """
        du = subprocess.run(["du", "-sb", str(self.root / "storage")], capture_output=True,
                            text=True, check=False)
        size = int(du.stdout.split()[0]) if du.returncode == 0 and du.stdout else 0
        if size > limit_bytes:
            self.podman("image", "prune", "--force", check=False)


@contextlib.contextmanager
def cache_lock(root: Path, timeout: float) -> Iterator[bool]:
    """Hold the cache's lock (True) or give up after `timeout` seconds (False)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / "lock").open("w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    yield False
                    return
                time.sleep(1)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class Compose:
    """A podman-compose project run from the repository, torn down with `down -t 0`."""

    podman: Podman
    project: str
    files: Sequence[Path]
    env: dict[str, str]
    cwd: Path

    def __call__(self, *args: str, timeout: float = 300, check: bool = True
                 ) -> subprocess.CompletedProcess[str]:
        compose = podman_compose()
        assert compose is not None
        argv = [compose, "--project-name", self.project]
        for path in self.files:
            argv += ["-f", str(path)]
        return self.podman.run([*argv, *args], env=self.env, timeout=timeout, check=check,
                               cwd=self.cwd)

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def logs(self, service: str) -> str:
        result = self.podman.podman("logs", self.container(service), check=False)
        return result.stdout + result.stderr

    def exec(self, service: str, *args: str, stdin: str | None = None
             ) -> subprocess.CompletedProcess[str]:
        flags = ["-i"] if stdin is not None else []
        return self.podman.podman("exec", *flags, self.container(service), *args,
                                  stdin=stdin, check=False, timeout=120)

    @contextlib.contextmanager
    def up(self) -> Iterator[Compose]:
        try:
            self("up", "-d")
            yield self
        finally:
            # Always, also after a failure: the other services would stay up otherwise.
            self("down", "-t", "0", check=False)

    @contextlib.contextmanager
    def until_exit(self, service: str, timeout: float = 180
                   ) -> Iterator[subprocess.CompletedProcess[str]]:
        """
        `up` in the foreground until `service` exits, giving its exit code and every
        service's output (`[name] | line`); the stopped containers stay for inspection
        until the block ends, then `down -v -t 0` removes them and the project's volumes.
        """
        try:
            yield self("up", "--abort-on-container-exit", "--exit-code-from", service,
                       timeout=timeout, check=False)
        finally:
            self("down", "-v", "-t", "0", check=False)
