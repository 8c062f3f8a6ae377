"""
The load: wrk for throughput and latency, and small asyncio clients for what wrk cannot
do (a million pipelined PUTs, a thousand cold SDK-style clients at once).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from procs import LOAD_CPUS, pin

WRK_DIR = Path(__file__).resolve().parent / "wrk"
TTL = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN = "X-aws-ec2-metadata-token"
CREDENTIALS = "/latest/meta-data/iam/security-credentials/"


# ------------------------------------------------------------------ one request, sync


def fetch(url: str, method: str, path: str, headers: dict[str, str] | None = None,
          timeout: float = 5.0) -> tuple[int, bytes]:
    """One request on a new connection; raises OSError if nothing listens."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def sdk_sequence(url: str) -> tuple[str, str, bytes]:
    """What botocore does [S-PY-05]: token, role name, credential document."""
    status, token = fetch(url, "PUT", "/latest/api/token", {TTL: "21600"})
    if status != 200:
        raise RuntimeError(f"token PUT answered {status}")
    headers = {TOKEN: token.decode()}
    status, role = fetch(url, "GET", CREDENTIALS, headers)
    if status != 200:
        raise RuntimeError(f"role list answered {status}")
    status, document = fetch(url, "GET", CREDENTIALS + role.decode(), headers)
    if status != 200:
        raise RuntimeError(f"credentials answered {status}")
    return token.decode(), role.decode(), document


# ------------------------------------------------------------------ container endpoints


def ecs_task_id(state_dir: Path) -> str:
    """The default ECS task id imds keeps in its state directory (its own role's)."""
    return (state_dir / "ecs-task-id").read_text().strip()


@dataclass(frozen=True)
class PodIdentity:
    """A pod's request to the EKS Pod Identity endpoint: its path and its token."""

    path: str
    token: str

    @classmethod
    def of(cls, state_dir: Path) -> PodIdentity:
        """A service account token signed with the key imds keeps in `state_dir`."""
        from imds.containers.satoken import load_or_create_key, mint

        key = load_or_create_key(str(state_dir))
        return cls("/v1/credentials", mint(key, namespace="bench", service_account="app",
                                           pod_name="app-0"))


def container_document(url: str, path: str, authorization: str) -> bytes:
    """The credential document a container endpoint serves, as nginx will serve it."""
    status, document = fetch(url, "GET", path, {"Authorization": authorization})
    if status != 200:
        raise RuntimeError(f"{path} answered {status}: {document!r}")
    return document


# ------------------------------------------------------------------ wrk


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: int
    cpu_us_per_request: float | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk(url: str, scenario: str, *, connections: int, duration: float,
        env: dict[str, str]) -> WrkResult:
    """Run wrk with `wrk/<scenario>.lua` (plus the shared JSON report) against `url`."""
    script = (WRK_DIR / "report.lua").read_text() + (WRK_DIR / f"{scenario}.lua").read_text()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        threads = max(1, min(len(LOAD_CPUS), connections))
        done = subprocess.run(
            ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration))}s",
             "--timeout", "5s", "-s", handle.name, url],
            capture_output=True, text=True, env=env, preexec_fn=pin(LOAD_CPUS),
            timeout=duration + 60, check=False,
        )
    finally:
        Path(handle.name).unlink()
    for line in done.stdout.splitlines():
        if line.startswith("WRKJSON "):
            data = json.loads(line[len("WRKJSON "):])
            return WrkResult(
                requests=data["requests"], seconds=data["duration_us"] / 1e6,
                p50_ms=data["p50_us"] / 1000, p99_ms=data["p99_us"] / 1000,
                max_ms=data["max_us"] / 1000, non_2xx=data["non_2xx"],
                socket_errors=data["socket_errors"],
            )
    raise RuntimeError(f"wrk gave no report: {done.stdout}\n{done.stderr}")


# ------------------------------------------------------------------ raw asyncio HTTP


def _split(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


@dataclass
class Tally:
    ok: int = 0
    other: int = 0


async def concurrent_puts(url: str, total: int, *, connections: int = 50) -> Tally:
    """`total` token PUTs, `connections` at a time, each on its own connection."""
    host, port = _split(url)
    left = total
    tally = Tally()
    request = _request("PUT", "/latest/api/token", {TTL: "21600"})

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            status, _ = await _exchange(host, port, request)
            if status == 200:
                tally.ok += 1
            else:
                tally.other += 1

    await asyncio.gather(*(worker() for _ in range(connections)))
    return tally


async def _exchange(host: str, port: int, request: bytes) -> tuple[int, bytes]:
    """One request on its own connection, read to EOF (the server closes [N-04])."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        data = await reader.read(-1)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _request(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 169.254.169.254", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass(frozen=True)
class ColdResult:
    clients: int
    succeeded: int
    wall_seconds: float
    p50_ms: float
    p99_ms: float


async def cold_clients(url: str, count: int, *, wait: float = 0.0) -> ColdResult:
    """
    `count` clients start at once, each doing botocore's three requests, each on a new
    connection, as a fleet of freshly started containers would. With `wait`, a refused
    connection is retried for that many seconds (the server may still be starting).
    """
    host, port = _split(url)
    go = asyncio.Event()

    async def exchange(request: bytes) -> tuple[int, bytes]:
        deadline = time.perf_counter() + wait
        while True:
            try:
                return await _exchange(host, port, request)
            except ConnectionRefusedError:
                if time.perf_counter() >= deadline:
                    raise
                await asyncio.sleep(0.01)

    async def client() -> float | None:
        await go.wait()
        began = time.perf_counter()
        try:
            status, token = await exchange(_request("PUT", "/latest/api/token", {TTL: "21600"}))
            headers = {TOKEN: token.decode()}
            status, role = await exchange(_request("GET", CREDENTIALS, headers))
            status, document = await exchange(_request("GET", CREDENTIALS + role.decode(),
                                                       headers))
        except (OSError, ValueError, IndexError):
            return None
        if status != 200 or b'"Code" : "Success"' not in document:
            return None
        return time.perf_counter() - began

    tasks = [asyncio.create_task(client()) for _ in range(count)]
    await asyncio.sleep(0.05)
    began = time.perf_counter()
    go.set()
    timings = await asyncio.gather(*tasks)
    wall = time.perf_counter() - began
    ok = sorted(t for t in timings if t is not None)
    p99 = ok[min(len(ok) - 1, int(len(ok) * 0.99))] if ok else float("nan")
    return ColdResult(count, len(ok), wall,
                      statistics.median(ok) * 1000 if ok else float("nan"), p99 * 1000)


# ------------------------------------------------------------------ startup


def first_credential(command: list[str], *, cwd: Path, env: dict[str, str], port: int,
                     timeout: float = 30.0) -> float:
    """Seconds from spawning `command` to the first 200 on the credential path."""
    began = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        while time.perf_counter() - began < timeout:
            try:
                sdk_sequence(url)
            except (OSError, http.client.HTTPException, RuntimeError):
                if process.poll() is not None:
                    raise RuntimeError(f"imds exited with {process.returncode}") from None
                time.sleep(0.002)
                continue
            return time.perf_counter() - began
        raise RuntimeError(f"no credential within {timeout}s")
    finally:
        process.terminate()
        process.wait(10)
