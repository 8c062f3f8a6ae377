"""
Stopping `imds serve` on a signal, as `docker stop`, systemd, Ctrl-C or a closed terminal
do: within a few seconds whatever is in flight, at once on a second signal, and never
leaving a stale `control-url` behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from imds.ctl import ControlClient, CtlError
from imds.lab.control import TOKEN_FILE, URL_FILE
from imds.shutdown import GRACE
from tests.e2e.test_sts_e2e import ROLE_A, server_env
from tests.support.polling import until
from tests.support.processes import ROOT, ImdsProcess, clean_env, run_imds
from tests.support.sts_support import StsProxy

pytestmark = pytest.mark.e2e

# What a stop may take beyond the grace on this busy shared machine: closing the loop and
# the interpreter's exit. Docker's default stop timeout (10 s) is the bound that matters.
SLACK = 3.0

# A request held far longer than any stop may take.
HELD_FOR = 300


@pytest.fixture
def sts(moto_url: str) -> Iterator[StsProxy]:
    proxy = StsProxy(moto_url).start()
    yield proxy
    proxy.close()


def control(state: Path, timeout: float = 10.0) -> ControlClient:
    url = (state / URL_FILE).read_text().strip()
    return ControlClient(url, (state / TOKEN_FILE).read_text().strip(), timeout)


def in_background(call: Callable[[], object]) -> None:
    """Make a blocking call that will not be answered (its failure is expected) in a thread."""
    def run() -> None:
        with contextlib.suppress(CtlError, OSError):
            call()

    threading.Thread(target=run, daemon=True).start()


def held_request(url: str) -> None:
    """A metadata GET on its own socket, waiting for an answer a latency fault holds back."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=HELD_FOR) as sock:
        sock.sendall(b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n")
        sock.recv(1024)


async def hold_a_request(server: ImdsProcess, state: Path) -> None:
    """Inject a long latency fault and wait until a request is caught in it."""
    api = control(state)
    fault = api.add_fault(kind="latency", delay=HELD_FOR)
    in_background(lambda: held_request(server.url))
    await until(lambda: any(f["id"] == fault["id"] and f["hits"] == 1 for f in api.faults()),
                10, "the request to be held by the latency fault")


def exit_within(process: subprocess.Popen[str], since: float, seconds: float) -> int:
    """The exit status, if the process exits within `seconds` of `since`; else fail."""
    try:
        rc = process.wait(max(0.0, since + seconds - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running {seconds:g}s after the signal") from None
    return rc


async def logged(server: ImdsProcess, text: str) -> None:
    await until(lambda: any(text in line for line in server.stderr), 10, repr(text))


class TestOneSignal:
    @pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP],
                             ids=["SIGTERM", "SIGINT", "SIGHUP"])
    async def test_stops_within_the_grace_while_a_request_is_held(
        self, sig: signal.Signals, tmp_path: Path, empty_home: Path
    ) -> None:
        """docker stop, Ctrl-C or a closed terminal: exit 0 within the grace, control-url gone."""
        state = tmp_path / "state"
        with run_imds("--state-dir", str(state), env=clean_env(empty_home)) as server:
            await hold_a_request(server, state)
            sent = time.monotonic()
            server.process.send_signal(sig)
            rc = exit_within(server.process, sent, GRACE + SLACK)
        assert 0 == rc
        assert not (state / URL_FILE).exists()

    async def test_a_hung_sts_call_mid_rotation_does_not_hold_the_exit(
        self, sts: StsProxy, tmp_path: Path
    ) -> None:
        """The fetch is abandoned, not waited for, nor the control request that asked for it."""
        state = tmp_path / "state"
        args = ("--role-arn", ROLE_A, "--sts-endpoint-url", sts.url, "--state-dir", str(state))
        with run_imds(*args, env=server_env(tmp_path / "home")) as server:
            sts.hang("AssumeRole")
            in_background(control(state, timeout=HELD_FOR).rotate)
            await until(lambda: sts.held() == 1, 10, "the rotation to reach STS")
            sent = time.monotonic()
            server.process.terminate()
            rc = exit_within(server.process, sent, GRACE + SLACK)
        assert 0 == rc
        assert not (state / URL_FILE).exists()

    async def test_a_signal_while_the_first_fetch_hangs_stops_the_start(
        self, sts: StsProxy, tmp_path: Path
    ) -> None:
        """docker stop during a start that waits on STS: a clean exit 0, not a kill."""
        sts.hang("AssumeRole")
        process = subprocess.Popen(
            [sys.executable, "-m", "imds", "serve", "--port", "0", "--role-arn", ROLE_A,
             "--sts-endpoint-url", sts.url, "--state-dir", str(tmp_path / "state")],
            env=server_env(tmp_path / "home"), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, cwd=ROOT,
        )
        try:
            await until(lambda: sts.held() == 1, 20, "the first fetch to reach STS")
            sent = time.monotonic()
            process.terminate()
            rc = exit_within(process, sent, GRACE + SLACK)
        finally:
            process.kill()
            process.wait()
        assert 0 == rc


class TestSecondSignal:
    async def test_a_second_signal_stops_at_once(
        self, tmp_path: Path, empty_home: Path
    ) -> None:
        """SIGTERM then SIGINT (Ctrl-C): the held request is cut off without its grace."""
        state = tmp_path / "state"
        with run_imds("--state-dir", str(state), env=clean_env(empty_home)) as server:
            await hold_a_request(server, state)
            first = time.monotonic()
            server.process.terminate()
            await logged(server, "shutting down")
            server.process.send_signal(signal.SIGINT)
            rc = exit_within(server.process, first, GRACE)
        assert 0 == rc
        assert not (state / URL_FILE).exists()


class TestWithoutUvloop:
    async def test_a_traceback_is_not_chained_to_the_missing_uvloop(
        self, tmp_path: Path, empty_home: Path
    ) -> None:
        """An error while serving is reported as itself, not as 'during handling of' uvloop."""
        state = tmp_path / "state"
        # None in sys.modules makes `import uvloop` fail, as when it is not installed.
        program = ("import runpy, sys; sys.modules['uvloop'] = None; "
                   "runpy.run_module('imds', run_name='__main__', alter_sys=True)")
        process = subprocess.Popen(
            [sys.executable, "-c", program, "serve", "--port", "0", "--state-dir", str(state)],
            env=clean_env(empty_home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, cwd=ROOT,
        )
        # The forced error: stdout is closed before the server prints where it listens, so
        # that print fails with BrokenPipeError (Python ignores SIGPIPE).
        assert process.stdout is not None
        process.stdout.close()
        try:
            _, stderr = await asyncio.to_thread(process.communicate, timeout=30)
        finally:
            process.kill()
        assert "BrokenPipeError" in stderr
        assert "uvloop" not in stderr
        assert not (state / URL_FILE).exists()
