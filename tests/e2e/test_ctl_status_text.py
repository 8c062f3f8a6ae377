"""`imds ctl status` says what clients are told about the key and when it really expires."""

from __future__ import annotations

import re
import time

import pytest

from imds.cli import main
from imds.ctl import _human
from tests.e2e.test_ctl import Start, ctl


def key_line(out: str) -> str:
    [line] = [line.strip() for line in out.splitlines() if line.strip().startswith("key ")]
    return line


class TestStatusAfterExpire:
    def test_expired_keys_read_as_served_expired_with_their_real_expiry(
        self, imds_thread: Start, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Not "expired … (114s left)": the keys are served as expired, and expire later."""
        running = imds_thread()
        assert 0 == main(ctl(running, "expire"), {})
        capsys.readouterr()
        assert 0 == main(ctl(running, "status"), {})
        line = key_line(capsys.readouterr().out)
        assert re.fullmatch(r"key \S+  served as expired  issued [\d:]+  "
                            r"real expiry [\d:]+ \(in \d+s\)", line), line
        assert "left" not in line

    def test_revoked_keys_give_their_real_expiry(
        self, imds_thread: Start, capsys: pytest.CaptureFixture[str]
    ) -> None:
        running = imds_thread()
        assert 0 == main(ctl(running, "revoke"), {})
        capsys.readouterr()
        assert 0 == main(ctl(running, "status"), {})
        line = key_line(capsys.readouterr().out)
        assert re.fullmatch(r"key \S+  revoked  issued [\d:]+  real expiry [\d:]+ "
                            r"\(in \d+s\)", line), line


class TestStatusOfKeysPastExpiry:
    def test_keys_past_their_expiry_say_how_long_ago(self) -> None:
        """A key the rotator could not replace in time: no negative "(-30s left)"."""
        now = time.time()
        status = {
            "roles": {"r": {"role": "r", "source": "local", "refresh_ahead": 300,
                            "lifetime": 3600, "next_rotation": now,
                            "current": {"key": "…ABCD", "state": "expired",
                                        "issued": now - 3630, "expires": now - 30,
                                        "seconds_left": -30.2}}},
            "faults": [], "fetches": [],
        }
        line = key_line(_human("status", status))
        assert re.fullmatch(r"key …ABCD  expired  issued [\d:]+  expired [\d:]+ \(30s ago\)",
                            line), line
