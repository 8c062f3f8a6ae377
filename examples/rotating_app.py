"""
An application that keeps calling an AWS API while imds rotates its credentials.

    # in one terminal (with .venv/bin on PATH: source .venv/bin/activate):
    imds serve --credential-lifetime 120 --refresh-ahead 60        # new keys every minute
    # in a second terminal:
    python examples/rotating_app.py --imds http://127.0.0.1:1338   # Ctrl-C for the summary

It uses boto3's default credential chain and nothing else: the only AWS setting is
`AWS_EC2_METADATA_SERVICE_ENDPOINT` (what --imds sets). The API is STS
GetCallerIdentity. Without an AWS account it is called on a local moto server that this
script starts on a loopback port (or give --endpoint-url): moto checks that each request
is signed in the right shape, not that the key exists or is still valid, so it shows the
SDK side of rotation, which is what can break in your code.

Each call prints the key it was signed with (last four characters); the last line is a
JSON summary: calls, failed calls, keys used. `--session-per-call` makes a new boto3
session for every call (a CLI run per job, a cold start), which fetches from IMDS every
time; the default keeps one session for the life of the process, as services do, and the
SDK decides when to fetch again (botocore: 15 minutes before the expiry it believes).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Tally:
    calls: int = 0
    failed: int = 0
    keys: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {"calls": self.calls, "failed": self.failed, "keys": self.keys,
                "errors": self.errors[-5:]}


@contextmanager
def local_api() -> Iterator[str]:
    """moto in server mode on a free loopback port: an STS that needs no account."""
    import logging

    from moto.server import ThreadedMotoServer

    # werkzeug logs every request moto serves; the app's own lines are the point here.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{server._server.server_port}"  # type: ignore[union-attr]
    finally:
        server.stop()


class Caller:
    """One GetCallerIdentity per `call()`, through the default credential chain."""

    def __init__(self, endpoint_url: str, *, session_per_call: bool = False,
                 region: str = "us-east-1") -> None:
        import boto3

        self._boto3 = boto3
        self._endpoint = endpoint_url
        self._region = region
        self._per_call = session_per_call
        self._session = None if session_per_call else boto3.Session(region_name=region)

    def call(self) -> str:
        """Make the call; return the key suffix it was signed with. Raises on failure."""
        session = self._session or self._boto3.Session(region_name=self._region)
        client = session.client("sts", endpoint_url=self._endpoint)
        client.get_caller_identity()
        creds = session.get_credentials()
        # The frozen set is what the request was signed with (refreshed if it was due).
        return "…" + creds.get_frozen_credentials().access_key[-4:]


def run(caller: Caller, *, interval: float, duration: float | None,
        out: Callable[[str], None] = print, stop: Callable[[], bool] = lambda: False) -> Tally:
    tally = Tally()
    deadline = None if duration is None else time.monotonic() + duration
    while not stop() and (deadline is None or time.monotonic() < deadline):
        tally.calls += 1
        stamp = time.strftime("%H:%M:%S")
        try:
            key = caller.call()
        except Exception as exc:  # any failure is what we count
            tally.failed += 1
            tally.errors.append(f"{type(exc).__name__}: {exc}")
            out(f"{stamp} call {tally.calls:5d} FAILED {type(exc).__name__}: {exc}")
        else:
            if not tally.keys or tally.keys[-1] != key:
                tally.keys.append(key)
                out(f"{stamp} call {tally.calls:5d} ok   key {key}  (new key)")
            else:
                out(f"{stamp} call {tally.calls:5d} ok   key {key}")
        time.sleep(interval)
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--imds", metavar="URL",
                        help="sets AWS_EC2_METADATA_SERVICE_ENDPOINT (default: the variable)")
    parser.add_argument("--endpoint-url", metavar="URL",
                        help="the API to call (default: a local moto server)")
    parser.add_argument("--interval", type=float, default=1.0, metavar="SECONDS")
    parser.add_argument("--duration", type=float, metavar="SECONDS",
                        help="stop after this long (default: run until Ctrl-C)")
    parser.add_argument("--session-per-call", action="store_true",
                        help="a new boto3 session for every call")
    parser.add_argument("--quiet", action="store_true", help="only the summary")
    args = parser.parse_args(argv)
    if args.imds:
        os.environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = args.imds
    if not os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT"):
        parser.error("give --imds URL or set AWS_EC2_METADATA_SERVICE_ENDPOINT")

    stopping = False

    def on_signal(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    out = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    with (local_api() if not args.endpoint_url else _given(args.endpoint_url)) as endpoint:
        caller = Caller(endpoint, session_per_call=args.session_per_call)
        tally = run(caller, interval=args.interval, duration=args.duration, out=out,
                    stop=lambda: stopping)
    print(json.dumps(tally.summary()), flush=True)
    return 0 if tally.failed == 0 else 1


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


if __name__ == "__main__":
    sys.exit(main())
