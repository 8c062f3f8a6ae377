"""The examples of docs/rotation-lab.md, run as a user runs them, with short settings."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from imds.server import Running
from tests.support.processes import ROOT, clean_env, run

pytestmark = pytest.mark.e2e

APP = str(ROOT / "examples" / "rotating_app.py")
OUTAGE = str(ROOT / "examples" / "outage.py")


def summary(stdout: str) -> dict[str, object]:
    return json.loads(stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


class TestRotatingApp:
    def test_no_call_fails_while_imds_rotates_every_second(
        self, imds_thread: Callable[..., Running], moto_url: str, empty_home: Path
    ) -> None:
        """A new session per call fetches every time: it sees each new key, and no failure."""
        server = imds_thread(credential_lifetime=2, refresh_ahead=1)
        done = run([sys.executable, APP, "--imds", server.url, "--endpoint-url", moto_url,
                    "--duration", "3.5", "--interval", "0.1", "--session-per-call"],
                   clean_env(empty_home))
        result = summary(done.stdout)
        assert 0 == done.returncode, done.stdout + done.stderr
        assert 0 == result["failed"]
        assert result["calls"] >= 5  # type: ignore[operator]
        assert len(result["keys"]) >= 2  # type: ignore[arg-type]
        assert len(server.rotator.history) >= 3

    def test_a_long_lived_session_keeps_its_keys_and_keeps_working(
        self, imds_thread: Callable[..., Running], moto_url: str, empty_home: Path
    ) -> None:
        """botocore holds what it fetched until its own refresh window (S-PY-07, S-PY-08)."""
        server = imds_thread(credential_lifetime=2, refresh_ahead=1)
        done = run([sys.executable, APP, "--imds", server.url, "--endpoint-url", moto_url,
                    "--duration", "3", "--interval", "0.1", "--quiet"], clean_env(empty_home))
        result = summary(done.stdout)
        assert (0, 0) == (done.returncode, result["failed"]), done.stderr
        assert 1 == len(result["keys"])  # type: ignore[arg-type]
        assert len(server.rotator.history) >= 2


class TestOutageScenario:
    def test_the_running_service_rides_through_and_cold_starts_behave_as_documented(
        self, moto_url: str, empty_home: Path
    ) -> None:
        # 2 s phases: a cold start, a new boto3 session 1 s into each, is then sure to
        # reach IMDS while the phase's fault is still on, even on a slow machine.
        done = run([sys.executable, OUTAGE, "--phase", "2", "--lifetime", "2",
                    "--endpoint-url", moto_url], clean_env(empty_home))
        result = summary(done.stdout)
        assert 0 == done.returncode, done.stdout + done.stderr
        assert 0 == result["service_failed"]
        cold = result["cold_start"]
        assert isinstance(cold, dict)
        outcome = {phase: text.split()[0] for phase, text in cold.items()}
        assert {"baseline": "ok,", "throttled": "FAILED", "unreachable": "FAILED",
                "sts-down": "ok,", "recovered": "ok,"} == outcome
        assert "phase        service ok" in done.stdout
