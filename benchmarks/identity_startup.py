"""
What the signed identity document costs, and where: at startup (key creation on the first
start, key loading on later ones, signing once) versus per request (nothing: the bodies
are pre-rendered bytes).

    .venv/bin/python benchmarks/identity_startup.py [--runs 20] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from imds.config import load
from imds.instance.identity import load_or_create
from imds.instance.simulated import identity_document, resolve
from imds.server import start


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - began) * 1000)
    return samples


def show(name: str, samples: list[float]) -> None:
    ordered = sorted(samples)
    p95 = ordered[int(len(ordered) * 0.95) - 1] if len(ordered) > 1 else ordered[0]
    print(f"{name:<36} median {statistics.median(samples):8.3f} ms   p95 {p95:8.3f} ms"
          f"   (n={len(samples)})")


async def requests(state: Path, count: int) -> tuple[list[float], list[float]]:
    server = await start(load({"port": "0", "state_dir": str(state),
                               "http_tokens": "optional"}, {}))
    try:
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:
            out: dict[str, list[float]] = {"document": [], "pkcs7": []}
            for name, samples in out.items():
                url = f"{server.url}/latest/dynamic/instance-identity/{name}"
                for _ in range(count):
                    began = time.perf_counter()
                    async with http.get(url) as response:
                        await response.read()
                    samples.append((time.perf_counter() - began) * 1000)
            return out["document"], out["pkcs7"]
    finally:
        await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        base = Path(temp)
        counter = iter(range(10**6))
        show("first start: create key + cert",
             timed(lambda: load_or_create(base / f"new{next(counter)}"), args.runs))
        show("later start: load key + cert", timed(lambda: load_or_create(base / "new0"),
                                                   args.runs))
        signer = load_or_create(base / "new0")
        config = resolve(load({"state_dir": str(base / "new0")}, {}))
        document = identity_document(config, dt.datetime.now(dt.UTC))
        show("sign once (signature+pkcs7+rsa2048)", timed(lambda: signer.sign(document),
                                                           args.runs))
        document_ms, pkcs7_ms = asyncio.run(requests(base / "new0", args.requests))
        show("GET instance-identity/document", document_ms)
        show("GET instance-identity/pkcs7", pkcs7_ms)


if __name__ == "__main__":
    main()
