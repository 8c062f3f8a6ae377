"""`imds ctl`: the control API from the shell, found through flags, IMDS_* or the state dir."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from imds.cli import main
from imds.lab.control import TOKEN_FILE, URL_FILE
from imds.server import Running
from tests.support.processes import clean_env, run, run_imds

Start = Callable[..., Running]


def ctl(running: Running, *args: str) -> list[str]:
    assert running.control is not None
    return ["ctl", "--control-url", running.control.url, "--control-token",
            running.control.token, *args]


class TestCommands:
    def test_status_shows_the_key_hint_and_the_next_rotation(
        self, imds_thread: Start, capsys: pytest.CaptureFixture[str]
    ) -> None:
        running = imds_thread()
        assert 0 == main(ctl(running, "status"), {})
        out = capsys.readouterr().out
        hint = running.rotator.current.credentials.key_hint  # type: ignore[union-attr]
        assert f"key {hint}  valid" in out
        assert "next rotation" in out
        assert running.rotator.current.credentials.access_key_id not in out  # type: ignore[union-attr]

    def test_rotate_replaces_the_served_keys(
        self, imds_thread: Start, capsys: pytest.CaptureFixture[str]
    ) -> None:
        running = imds_thread()
        before = running.rotator.current
        assert 0 == main(ctl(running, "rotate"), {})
        after = running.rotator.current
        assert before is not after and after is not None
        assert f"key {after.credentials.key_hint}" in capsys.readouterr().out

    @pytest.mark.parametrize("action, kind", [("expire", "expired"), ("revoke", "revoked")])
    def test_expire_and_revoke_bind_a_fault_to_the_current_keys(
        self, imds_thread: Start, capsys: pytest.CaptureFixture[str], action: str, kind: str
    ) -> None:
        running = imds_thread()
        assert 0 == main(ctl(running, "--json", action), {})
        fault = json.loads(capsys.readouterr().out)
        hint = running.rotator.current.credentials.key_hint  # type: ignore[union-attr]
        assert (kind, hint) == (fault["kind"], fault["key"])

    def test_fault_add_list_and_clear(
        self, imds_thread: Start, capsys: pytest.CaptureFixture[str]
    ) -> None:
        running = imds_thread()
        assert 0 == main(ctl(running, "fault", "status", "--status", "429", "--count", "3",
                             "--path", "/latest/meta-data/", "--path", "/*/dynamic/*"), {})
        assert re.match(r"f\d+  status 429  /latest/meta-data/ /\*/dynamic/\*  3 left",
                        capsys.readouterr().out)
        assert 0 == main(ctl(running, "fault", "latency", "--delay", "0.5", "--duration",
                             "60"), {})
        capsys.readouterr()
        assert 0 == main(ctl(running, "fault", "list"), {})
        listed = capsys.readouterr().out.splitlines()
        assert 2 == len(listed)
        assert 0 == main(ctl(running, "fault", "clear"), {})
        assert "cleared 2" in capsys.readouterr().out
        assert () == running.lab.faults.active  # type: ignore[union-attr]

    def test_a_refused_fault_is_exit_1_with_the_reason(
        self, imds_thread: Start, capsys: pytest.CaptureFixture[str]
    ) -> None:
        running = imds_thread()
        assert 1 == main(ctl(running, "fault", "token", "--status", "500"), {})
        assert "400 status: a token fault answers 403, 404 or 405" in capsys.readouterr().err

    def test_set_changes_lifetime_and_refresh_ahead(
        self, imds_thread: Start, capsys: pytest.CaptureFixture[str]
    ) -> None:
        running = imds_thread()
        assert 0 == main(ctl(running, "set", "--lifetime", "90", "--refresh-ahead", "10"), {})
        assert "lifetime 90s, refresh-ahead 10s" in capsys.readouterr().out
        assert 10 == running.rotator.refresh_ahead
        assert 1 == main(ctl(running, "set"), {})

    def test_url_carries_the_token_in_the_fragment(
        self, imds_thread: Start, capsys: pytest.CaptureFixture[str]
    ) -> None:
        running = imds_thread()
        assert 0 == main(ctl(running, "url"), {})
        assert running.control is not None
        assert f"{running.control.url}/#token={running.control.token}\n" == \
            capsys.readouterr().out

    def test_metrics_prints_the_exposition_text(
        self, imds_thread: Start, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert 0 == main(ctl(imds_thread(), "metrics"), {})
        assert "# TYPE imds_rotations_total counter" in capsys.readouterr().out


class TestFindingTheServer:
    def test_url_and_token_from_imds_variables(
        self, imds_thread: Start, capsys: pytest.CaptureFixture[str]
    ) -> None:
        running = imds_thread()
        assert running.control is not None
        env = {"IMDS_CONTROL_URL": running.control.url,
               "IMDS_CONTROL_TOKEN": running.control.token}
        assert 0 == main(["ctl", "status"], env)
        assert "role imds-local-role" in capsys.readouterr().out

    def test_url_and_token_from_the_state_dir(
        self, imds_thread: Start, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        running = imds_thread()
        assert running.control is not None
        (tmp_path / URL_FILE).write_text(running.control.url + "\n")
        (tmp_path / TOKEN_FILE).write_text(running.control.token)
        assert 0 == main(["ctl", "status"], {"IMDS_STATE_DIR": str(tmp_path)})
        capsys.readouterr()
        assert 0 == main(["ctl", "--state-dir", str(tmp_path), "rotate"], {})
        assert "rotated" in capsys.readouterr().out

    def test_a_wrong_token_is_exit_1(
        self, imds_thread: Start, capsys: pytest.CaptureFixture[str]
    ) -> None:
        running = imds_thread()
        assert running.control is not None
        assert 1 == main(["ctl", "--control-url", running.control.url, "--control-token",
                          "wrong", "status"], {})
        assert "401" in capsys.readouterr().err

    def test_no_token_anywhere_says_where_it_looked(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert 1 == main(["ctl", "--state-dir", str(tmp_path), "status"], {})
        assert str(tmp_path / TOKEN_FILE) in capsys.readouterr().err

    def test_nothing_listening_is_exit_1_with_a_hint(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert 1 == main(["ctl", "--control-url", "http://127.0.0.1:9", "--control-token",
                          "x", "status"], {})
        assert "is `imds serve` running?" in capsys.readouterr().err


@pytest.mark.e2e
class TestEndToEnd:
    def test_serve_publishes_url_and_token_for_ctl_and_logs_json_without_secrets(
        self, tmp_path: Path, empty_home: Path
    ) -> None:
        """`imds serve` and `imds ctl` as a user runs them, JSON logs read line by line."""
        state = tmp_path / "state"
        env = clean_env(empty_home)
        imds = [sys.executable, "-m", "imds"]
        with run_imds("--state-dir", str(state), "--log-format", "json",
                      "--credential-lifetime", "30", env=env) as server:
            assert any("control API, /metrics and timeline on http://127.0.0.1:" in line
                       for line in server.banner)
            assert (state / URL_FILE).exists()
            status = run([*imds, "ctl", "--state-dir", str(state), "--json", "rotate"], env)
            assert 0 == status.returncode, status.stderr
            hint = json.loads(status.stdout)["key"]
            # The rest in-process (a CLI start costs a second): same discovery, same API.
            for args in (["fault", "status", "--count", "1"], ["expire"], ["revoke"],
                         ["set", "--refresh-ahead", "5"], ["fault", "clear"]):
                assert 0 == main(["ctl", "--state-dir", str(state), *args], {})
        assert not (state / URL_FILE).exists()  # withdrawn on shutdown
        lines = [line for line in "".join(server.stderr).splitlines() if line.strip()]
        events = [json.loads(line) for line in lines]  # every line is one JSON object
        messages = [e["message"] for e in events]
        assert any(f"key {hint}" in m for m in messages)
        assert any("fault f1 added: status 503" in m for m in messages)
        assert any(m.startswith("fault f2 added: expired for key") for m in messages)
        assert any("settings for role imds-local-role: refresh-ahead 5s" in m for m in messages)
        token = (state / TOKEN_FILE).read_text()
        full_keys = re.findall(r"ASIA[A-Z2-7]{16}", "".join(server.stderr))
        assert [] == full_keys
        assert token not in "".join(server.stderr)
