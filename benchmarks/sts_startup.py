"""
Startup to first credential, and credential-request latency, for the embedded default and
for `--role-arn` (STS = moto in server mode on a loopback port, fake base keys).

    .venv/bin/python benchmarks/sts_startup.py [--runs 5] [--requests 2000]

What it shows: the embedded default never imports boto3, so `imds serve` answers its first
credential request well under a second; with `--role-arn` startup pays boto3's import and
one AssumeRole; once serving, both answer credential requests from pre-rendered bytes, so
their latencies match (the request path never reaches STS).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from procs import FAKE_BASE_KEYS

ROOT = Path(__file__).resolve().parent.parent
ROLE = "arn:aws:iam::111122223333:role/bench"
TTL = {"X-aws-ec2-metadata-token-ttl-seconds": "21600"}


def env(home: str, **extra: str) -> dict[str, str]:
    aws = Path(home) / ".aws"
    aws.mkdir(parents=True, exist_ok=True)
    for name in ("config", "credentials"):
        (aws / name).touch()
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home,
            "AWS_CONFIG_FILE": str(aws / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(aws / "credentials"), **extra}


async def first_credential(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{url}/latest/api/token", headers=TTL) as r:
            token = {"X-aws-ec2-metadata-token": await r.text()}
        base = f"{url}/latest/meta-data/iam/security-credentials/"
        async with http.get(base, headers=token) as r:
            role = await r.text()
        async with http.get(base + role, headers=token) as r:
            assert r.status == 200 and b"Success" in await r.read()


def startup(args: list[str], environ: dict[str, str]) -> float:
    """Seconds from spawning `imds serve` to the first credential document received."""
    began = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "imds", "serve", "--port", "0", *args],
                               env=environ, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, cwd=ROOT)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            match = re.search(r"listening on (http://\S+)", line)
            if match:
                asyncio.run(first_credential(match.group(1)))
                return time.perf_counter() - began
        raise RuntimeError("imds exited before listening")
    finally:
        process.terminate()
        process.wait(10)


async def latency(source: object | None, requests: int) -> list[float]:
    from imds.config import load
    from imds.server import start

    running = await start(load({"port": "0"}, {}), source=source)  # type: ignore[arg-type]
    timings = []
    try:
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:
            async with http.put(f"{running.url}/latest/api/token", headers=TTL) as r:
                token = {"X-aws-ec2-metadata-token": await r.text()}
            path = f"{running.url}/latest/meta-data/iam/security-credentials/" \
                   f"{running.rotator.source.role.name}"
            for _ in range(requests):
                began = time.perf_counter()
                async with http.get(path, headers=token) as r:
                    await r.read()
                timings.append(time.perf_counter() - began)
    finally:
        await running.stop()
    return timings


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (f"median {statistics.median(ordered) * 1000:7.2f} ms   "
            f"p99 {p99 * 1000:7.2f} ms   max {ordered[-1] * 1000:7.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000)
    options = parser.parse_args()

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per moto request
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    sts_url = f"http://127.0.0.1:{moto.get_host_and_port()[1]}"
    try:
        with tempfile.TemporaryDirectory() as home:
            local = [startup([], env(home)) for _ in range(options.runs)]
            sts = [startup(["--role-arn", ROLE, "--sts-endpoint-url", sts_url],
                           env(home, **FAKE_BASE_KEYS)) for _ in range(options.runs)]
        print(f"startup to first credential ({options.runs} runs, incl. interpreter start)")
        print(f"  embedded default   {summary(local)}")
        print(f"  --role-arn (moto)  {summary(sts)}")

        os.environ.update(FAKE_BASE_KEYS)
        from imds.creds.sources.sts import AssumeRoleSource
        from imds.creds.sources.sts_request import AssumeRoleSettings

        source = AssumeRoleSource(AssumeRoleSettings(role_arns=(ROLE,), session_name="bench",
                                                     endpoint_url=sts_url))
        print(f"credential GET latency ({options.requests} sequential requests, new "
              f"connection each)")
        print(f"  embedded default   {summary(asyncio.run(latency(None, options.requests)))}")
        print(f"  --role-arn (moto)  {summary(asyncio.run(latency(source, options.requests)))}")
    finally:
        moto.stop()


if __name__ == "__main__":
    main()
