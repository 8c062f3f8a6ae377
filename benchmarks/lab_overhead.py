"""
What the rotation lab costs on the metadata request path (docs/rotation-lab.md).

Calls the metadata handler directly, no sockets, so only the handler's own work is timed:
the bare handler, the handler inside `Lab.wrap` with no fault (the fault check is one
read of an empty tuple, plus the per-answer count), with one fault on other paths, and
on the credential path (one ring-buffer entry per fetch). Prints nanoseconds per request,
best of several rounds taken in turns.

    .venv/bin/python benchmarks/lab_overhead.py [--requests 20000] [--rounds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from imds.config import load
from imds.creds.rotation import Rotator
from imds.creds.sources import LocalSource
from imds.ec2.tokens import TokenSigner
from imds.http import app as app_module
from imds.instance.simulated import build_tree, resolve
from imds.lab.faults import FaultSpec
from imds.lab.lab import Lab

INSTANCE_ID = "/latest/meta-data/instance-id"
CREDENTIALS = "/latest/meta-data/iam/security-credentials/imds-local-role"


class Transport:
    """Enough of a transport for the handler: open, with a peer address."""

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


class Protocol:
    """Plain attributes where aiohttp's test helper would put Mocks: a Mock attribute read
    costs microseconds and would swamp what is measured."""

    max_field_size = max_line_length = 8190
    max_headers = 128
    ssl_context = None

    def __init__(self) -> None:
        self.transport = Transport()
        self.peername = ("127.0.0.1", 40000)
        self.sockname = ("127.0.0.1", 1338)


async def build(with_lab: bool) -> tuple[web.Application, Lab | None, str]:
    config = resolve(load({"port": "0", "state_dir": tempfile.mkdtemp()}, {}))
    lab = Lab(time.time) if with_lab else None
    source = LocalSource(config.role_name, config.account_id, 3600, time.time)
    rotator = Rotator(lab.watch(source) if lab else source, refresh_ahead=300,
                      clock=time.time)
    if lab:
        lab.attach(rotator, primary=True)
    await rotator.prime()
    signer = TokenSigner(time.time)
    tree = build_tree(config, rotator, time.time, datetime.datetime.now(datetime.UTC))
    application = app_module.make_app(config, tree=tree, rotator=rotator, clock=time.time,
                                      signer=signer, lab=lab)
    return application, lab, signer.issue(21600, "127.0.0.1")


def handler_of(application: web.Application) -> Callable[[web.Request],
                                                          Awaitable[web.StreamResponse]]:
    route = next(iter(application.router.routes()))
    return route.handler  # type: ignore[return-value]


def requests_for(application: web.Application, token: str, path: str,
                 n: int) -> list[web.Request]:
    return [make_mocked_request("GET", path, headers={"X-aws-ec2-metadata-token": token},
                                app=application, transport=Transport(), protocol=Protocol())
            for _ in range(n)]


async def interleaved(cases: list[tuple[str, web.Application, list[web.Request]]],
                      rounds: int) -> dict[str, float]:
    """Best time per request of each case, the cases taking turns round by round so that
    a machine busy with something else slows them all alike."""
    best = {name: float("inf") for name, _, _ in cases}
    for _ in range(rounds):
        for name, application, requests in cases:
            handler = handler_of(application)
            started = time.perf_counter()
            for request in requests:
                await handler(request)
            best[name] = min(best[name], (time.perf_counter() - started) / len(requests))
    return {name: seconds * 1e9 for name, seconds in best.items()}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    n = args.requests
    bare, _, bare_token = await build(with_lab=False)
    wrapped, lab, token = await build(with_lab=True)
    faulted, faulted_lab, faulted_token = await build(with_lab=True)
    assert lab is not None and faulted_lab is not None
    faulted_lab.faults.add(FaultSpec.parse({"kind": "status", "paths": ["/latest/dynamic/"]}))
    cases = [
        ("bare handler, instance-id", bare, requests_for(bare, bare_token, INSTANCE_ID, n)),
        ("with lab, no fault, instance-id", wrapped,
         requests_for(wrapped, token, INSTANCE_ID, n)),
        ("with lab, 1 fault elsewhere, instance-id", faulted,
         requests_for(faulted, faulted_token, INSTANCE_ID, n)),
        ("bare handler, credentials", bare, requests_for(bare, bare_token, CREDENTIALS, n)),
        ("with lab, no fault, credentials", wrapped,
         requests_for(wrapped, token, CREDENTIALS, n)),
    ]
    # The wrapper alone, around a handler that answers at once (it reads the path, as the
    # real one does first): the difference is the lab's own cost, free of the handler's.
    answer = web.Response(body=b"i-0123456789abcdef0")

    async def instant(request: web.Request) -> web.StreamResponse:
        request.path  # noqa: B018 - computed (and cached) by the real handler too
        return answer

    alone = Lab(time.time).wrap(instant, lambda *a: answer)
    for name, path in (("instance-id", INSTANCE_ID), ("credentials", CREDENTIALS)):
        cases.append((f"instant handler, {name}", _app_with(instant),
                      requests_for(bare, bare_token, path, n)))
        cases.append((f"instant handler in lab, {name}", _app_with(alone),
                      requests_for(bare, bare_token, path, n)))
    result = await interleaved(cases, args.rounds)
    width = max(map(len, result))
    for name, ns in result.items():
        print(f"{name:<{width}}  {ns:8.0f} ns/request")
    print("lab overhead, no fault: "
          f"{result['with lab, no fault, instance-id'] - result['bare handler, instance-id']:+.0f}"
          " ns (instance-id), "
          f"{result['with lab, no fault, credentials'] - result['bare handler, credentials']:+.0f}"
          " ns (credentials)")
    for name in ("instance-id", "credentials"):
        cost = result[f"instant handler in lab, {name}"] - result[f"instant handler, {name}"]
        print(f"the wrapper alone, {name}: {cost:+.0f} ns")


def _app_with(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
    """Something `handler_of` can read a handler from."""

    class Route:
        pass

    route = Route()
    route.handler = handler  # type: ignore[attr-defined]

    class Router:
        def routes(self) -> list[Any]:
            return [route]

    class App:
        router = Router()

    return App()


if __name__ == "__main__":
    asyncio.run(main())
