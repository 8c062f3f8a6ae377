"""
The processes a benchmark run starts: `imds serve`, nginx as the baseline, moto as STS.

Each server is pinned to one CPU (the last), the load generators to the others, so that
both servers get the same single core and nothing else competes for it but the machine's
other tenants.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CPUS = sorted(os.sched_getaffinity(0))
# One core for the server under test, the rest for the load; one core shares.
SERVER_CPU = CPUS[-1]
LOAD_CPUS = CPUS[:-1] or CPUS

# Made-up base keys for imds's STS source, used only against moto (which accepts any
# well-formed signature). Not a real secret.
FAKE_BASE_KEYS = {"AWS_ACCESS_KEY_ID": "AKIAIMDSBENCHBASEKEY",
                  "AWS_SECRET_ACCESS_KEY": "imdsBenchFakeSecretForMotoOnly0000000000"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pin(cpus: Sequence[int]) -> Callable[[], None]:
    def apply() -> None:
        os.sched_setaffinity(0, set(cpus))

    return apply


def cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` and its children still alive (nginx's worker)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        this, parent = int(stat.parent.name), int(fields[1])
        if pid in (this, parent):
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def rss_kib(pid: int) -> dict[str, int]:
    """Resident set now and at its peak, in KiB, from /proc/PID/status."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    url: str

    @property
    def pid(self) -> int:
        return self.process.pid


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def imds_command(port: int, state_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "imds", "serve", "--port", str(port),
            "--state-dir", str(state_dir), "--control-port", "0", *args]


@contextmanager
def run_imds(work: Path, *args: str, env: dict[str, str] | None = None,
             name: str = "imds") -> Iterator[Server]:
    """`python -m imds serve` on a free port, as a user starts it, pinned to the server CPU."""
    port = free_port()
    log = (work / f"{name}-{port}.log").open("wb")
    process = subprocess.Popen(
        imds_command(port, work / "state", *args), cwd=ROOT, stdout=log, stderr=log,
        env=env or bench_env(work), preexec_fn=pin([SERVER_CPU]),
    )
    try:
        wait_for_port(port)
        yield Server(name, process, f"http://127.0.0.1:{port}")
    finally:
        _stop(process)
        log.close()


def bench_env(work: Path, **extra: str) -> dict[str, str]:
    """No AWS settings from the user's environment: empty config files, no keys."""
    aws = work / "aws"
    aws.mkdir(exist_ok=True)
    for name in ("config", "credentials"):
        (aws / name).touch()
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work),
            "AWS_CONFIG_FILE": str(aws / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(aws / "credentials"),
            "LANG": "C.UTF-8", **extra}


_NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {work}/nginx-tmp/body;
  proxy_temp_path {work}/nginx-tmp/proxy;
  fastcgi_temp_path {work}/nginx-tmp/fastcgi;
  uwsgi_temp_path {work}/nginx-tmp/uwsgi;
  scgi_temp_path {work}/nginx-tmp/scgi;
  default_type text/plain;
  server_tokens off;
  # A static file server tuned as one would tune it: no per-request open(), sendfile.
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  open_file_cache max=64 inactive=60s;
  open_file_cache_valid 60s;
  keepalive_requests 1000000;
  # `deferred` (TCP_DEFER_ACCEPT) and the backlog: as imds listens (imds.http.acceptor).
  server {{
    listen 127.0.0.1:{keepalive_port} backlog=4096 deferred;
    keepalive_timeout 65s;
    include {work}/nginx-routes.conf;
  }}
  server {{
    # Like EC2 [N-04] (and imds by default): one response per connection.
    listen 127.0.0.1:{close_port} backlog=4096 deferred;
    keepalive_timeout 0;
    include {work}/nginx-routes.conf;
  }}
}}
"""

_NGINX_ROUTES = """\
root {www};
location = /latest/api/token {{
  # The same bytes imds issued once; nginx checks nothing, it only sends them.
  add_header X-Aws-Ec2-Metadata-Token-Ttl-Seconds 21600 always;
  return 200 "{token}";
}}
location = /latest/meta-data/iam/security-credentials/ {{
  try_files /role-list =404;
}}
# The container credential documents (issue 14): JSON, as imds sends them.
location ^~ /v1/ {{
  default_type application/json;
}}
location ^~ /v2/ {{
  default_type application/json;
}}
"""


@dataclass
class Nginx:
    process: subprocess.Popen[bytes]
    keepalive_url: str
    close_url: str

    @property
    def pid(self) -> int:
        return self.process.pid


@contextmanager
def run_nginx(work: Path, *, token: str, role: str, role_list: bytes,
              document: bytes, static: dict[str, bytes] | None = None) -> Iterator[Nginx]:
    """
    nginx serving the same bytes as static files: one port keep-alive, one closing.
    `static` adds files by URL path (the container endpoints' documents).
    """
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    www = work / "www"
    creds = www / "latest" / "meta-data" / "iam" / "security-credentials"
    creds.mkdir(parents=True)
    (creds / role).write_bytes(document)
    for path, body in (static or {}).items():
        file = www / path.lstrip("/")
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(body)
    (www / "role-list").write_bytes(role_list)
    (work / "nginx-tmp").mkdir()
    keepalive_port, close_port = free_port(), free_port()
    (work / "nginx-routes.conf").write_text(_NGINX_ROUTES.format(www=www, token=token))
    conf = work / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(work=work, keepalive_port=keepalive_port,
                                       close_port=close_port))
    # As root nginx's worker runs as nobody: let it read the files.
    for path in [work, *work.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    process = subprocess.Popen([binary, "-c", str(conf), "-p", str(work)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               preexec_fn=pin([SERVER_CPU]))
    try:
        wait_for_port(keepalive_port)
        wait_for_port(close_port)
        yield Nginx(process, f"http://127.0.0.1:{keepalive_port}",
                    f"http://127.0.0.1:{close_port}")
    finally:
        # SIGQUIT: graceful stop of master and worker.
        _stop(process, signal.SIGQUIT)


@contextmanager
def run_moto(work: Path) -> Iterator[str]:
    """moto in server mode (a real STS-compatible HTTP server) on a loopback port."""
    port = free_port()
    log = (work / "moto.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=log, preexec_fn=pin(LOAD_CPUS),
    )
    try:
        wait_for_port(port, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(process)
        log.close()


@contextmanager
def run_floor(work: Path, document: bytes, *, close: bool = False) -> Iterator[Server]:
    """
    benchmarks/floor.py: the same bytes from bare Python (a reference): an asyncio protocol,
    or with `close` a deferred accept loop that closes each connection after its response.
    """
    port = free_port()
    body = work / "floor-body"
    body.write_bytes(document)
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("floor.py")), str(port), str(body),
         *(["close"] if close else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=pin([SERVER_CPU]),
    )
    try:
        wait_for_port(port)
        yield Server("floor", process, f"http://127.0.0.1:{port}")
    finally:
        _stop(process)
