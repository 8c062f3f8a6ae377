"""
Fault scenario: does the SDK ride through an IMDS or STS outage?

    python examples/outage.py                  # its own imds and moto; about 30 seconds
    python examples/outage.py --phase 2        # shorter phases

Phases, each `--phase` seconds, injected through the control API (the same calls as
`imds ctl fault ...`):

    baseline      nothing broken
    throttled     IMDS answers 429 to every metadata request           [P-03]
    unreachable   IMDS resets every connection                          [T-22] [P-02]
    sts-down      the credential source fails, the keys are past their
                  expiry and IMDS keeps serving them                     [L-04]
    recovered     faults cleared, credentials rotated

Two clients run through all of them: a *running* service (one boto3 session calling
STS GetCallerIdentity every 100 ms, on a local moto server) and a *cold start* (a new
session, as a new process would have, one call in the middle of each phase). The table
shows what each saw. The running service rides through everything: botocore holds the
credentials it has and does not need IMDS during a short outage. A cold start cannot get
credentials while IMDS is throttled or unreachable, and *can* while STS is down, because
IMDS serves the expired keys and botocore extends them (static stability, S-PY-08).
Exit status 0 when the running service had no failed call.

With --control-url/--control-token/--imds it drives a server you started yourself, in
another terminal (`imds serve`; `imds ctl url` prints the control URL and token).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rotating_app import Caller, local_api

from imds.ctl import ControlClient

PHASES = ("baseline", "throttled", "unreachable", "sts-down", "recovered")


@contextmanager
def own_imds(lifetime: int) -> Iterator[tuple[str, str, str]]:
    """imds in this process on free ports: (metadata URL, control URL, token)."""
    import tempfile

    from imds import logs
    from imds.config import load
    from imds.server import ServerThread

    # The server's own warnings (failed refreshes during the STS outage) on stderr.
    logs.configure("warning", "text")
    with tempfile.TemporaryDirectory() as state:
        config = load({"port": "0", "control_port": "0", "state_dir": state,
                       "credential_lifetime": str(lifetime), "refresh_ahead": "0"}, {})
        thread = ServerThread(config)
        try:
            running = thread.start()
            assert running.control is not None
            yield running.url, running.control.url, running.control.token
        finally:
            thread.stop()


def inject(ctl: ControlClient, phase: str, seconds: float) -> None:
    if phase == "throttled":
        ctl.add_fault(kind="status", status=429, paths=["/latest/meta-data/"], duration=seconds)
    elif phase == "unreachable":
        ctl.add_fault(kind="drop", mode="reset", duration=seconds)
    elif phase == "sts-down":
        ctl.add_fault(kind="source", duration=seconds)
        ctl.expire()
    elif phase == "recovered":
        ctl.clear_faults()
        ctl.rotate()


class Running:
    """The long-lived service: calls in a thread, tallied per phase."""

    def __init__(self, caller: Caller) -> None:
        self.caller = caller
        self.phase = PHASES[0]
        self.ok = dict.fromkeys(PHASES, 0)
        self.failed = dict.fromkeys(PHASES, 0)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            phase = self.phase
            try:
                self.caller.call()
            except Exception as exc:  # any failure is what we count
                self.failed[phase] += 1
                self.errors.append(f"{phase}: {type(exc).__name__}: {exc}")
            else:
                self.ok[phase] += 1
            self._stop.wait(0.1)

    def __enter__(self) -> Running:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def cold_start(endpoint: str) -> str:
    try:
        return "ok, key " + Caller(endpoint, session_per_call=True).call()
    except Exception as exc:  # reported in the table
        return f"FAILED {type(exc).__name__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", type=float, default=6.0, metavar="SECONDS")
    parser.add_argument("--lifetime", type=int, default=3,
                        help="credential lifetime of the imds this script starts")
    parser.add_argument("--imds", metavar="URL", help="a running imds (with the next two)")
    parser.add_argument("--control-url", metavar="URL")
    parser.add_argument("--control-token", metavar="TOKEN")
    parser.add_argument("--endpoint-url", metavar="URL", help="the API (default: moto)")
    args = parser.parse_args(argv)

    with ExitStack() as stack:
        if args.imds:
            imds_url, control_url, token = args.imds, args.control_url, args.control_token
            if not (control_url and token):
                parser.error("--imds needs --control-url and --control-token")
        else:
            imds_url, control_url, token = stack.enter_context(own_imds(args.lifetime))
        endpoint = args.endpoint_url or stack.enter_context(local_api())
        os.environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = imds_url
        ctl = ControlClient(control_url, token)

        rows = []
        with Running(Caller(endpoint)) as service:
            # The service's first fetch happens here, before anything breaks.
            service.caller.call()
            for phase in PHASES:
                service.phase = phase
                inject(ctl, phase, args.phase)
                time.sleep(args.phase / 2)
                cold = cold_start(endpoint)
                time.sleep(args.phase / 2)
                rows.append((phase, service.ok[phase], service.failed[phase], cold))
        ctl.clear_faults()

    print(f"{'phase':12} {'service ok':>10} {'failed':>7}   cold start")
    for phase, ok, failed, cold in rows:
        print(f"{phase:12} {ok:10d} {failed:7d}   {cold}")
    failed = sum(service.failed.values())
    print(json.dumps({"service_failed": failed, "service_ok": sum(service.ok.values()),
                      "cold_start": {phase: cold for phase, _, _, cold in rows},
                      "errors": service.errors[-5:]}))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
