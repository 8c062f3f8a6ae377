"""The `imds` command, in-process and as a user runs it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from imds.cli import EXIT_STARTUP, EXIT_USAGE, main
from tests.support.processes import clean_env, run, run_imds


class TestMain:
    def test_config_prints_the_effective_settings(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert 0 == main(["config", "--port", "9999"], environ={"IMDS_ROLE_NAME": "r1"})
        out = capsys.readouterr().out
        assert "port = 9999\n" in out
        assert "role_name = r1\n" in out

    def test_bad_setting_exits_2_naming_it(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert EXIT_USAGE == main(["serve", "--http-tokens", "never"], environ={})
        assert "--http-tokens: expected one of required, optional" in capsys.readouterr().err

    def test_unknown_flag_exits_2(self) -> None:
        with pytest.raises(SystemExit) as exc:
            main(["serve", "--no-such-flag"], environ={})
        assert EXIT_USAGE == exc.value.code


@pytest.mark.e2e
class TestServeProcess:
    def test_port_zero_prints_the_url_and_the_role(self, empty_home: Path) -> None:
        with run_imds("--role-name", "demo-role", env=clean_env(empty_home)) as imds:
            assert imds.url.startswith("http://127.0.0.1:")
            assert not imds.url.endswith(":0")
            assert any("serving role demo-role" in line for line in imds.banner)

    def test_settings_come_from_imds_variables(self, empty_home: Path) -> None:
        env = clean_env(empty_home, IMDS_ROLE_NAME="env-role", IMDS_HTTP_TOKENS="optional")
        with run_imds(env=env) as imds:
            assert "(IMDSv2 optional)" in imds.banner[0]
            assert any("serving role env-role" in line for line in imds.banner)

    def test_python_dash_m_and_console_script_agree(self, empty_home: Path) -> None:
        env = clean_env(empty_home)
        via_module = run([sys.executable, "-m", "imds", "config"], env)
        via_script = run([str(Path(sys.executable).parent / "imds"), "config"], env)
        assert 0 == via_module.returncode == via_script.returncode
        assert via_module.stdout == via_script.stdout

    def test_port_in_use_exits_3_with_a_clear_message(self, empty_home: Path) -> None:
        env = clean_env(empty_home)
        with run_imds(env=env) as imds:
            port = imds.url.rsplit(":", 1)[1]
            result = run([sys.executable, "-m", "imds", "serve", "--port", port], env)
        assert EXIT_STARTUP == result.returncode
        assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
