"""
Every bad setting ends `imds serve` and `imds config` with exit 2 and one line naming the
setting, never a traceback: host names the resolver would refuse, TOML values of the wrong
type, a config file that is a directory or binary. A bad name that reaches binding anyway
(a Config built by hand) is a startup error, not an exception from getaddrinfo.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imds.cli import EXIT_USAGE, main
from imds.config import OPTIONS, Config, Option, load
from imds.errors import ConfigError, StartupError
from imds.server import start
from tests.conftest import make_config
from tests.support.processes import clean_env, run

LONG_LABEL = "a" * 70
# What `{tmp}` in a case's arguments becomes: a file the case writes (or a directory).
Setup = Callable[[Path], Path]


def toml_file(text: str) -> Setup:
    def write(tmp: Path) -> Path:
        path = tmp / "imds.toml"
        path.write_text(text)
        return path

    return write


def binary_file(tmp: Path) -> Path:
    path = tmp / "imds.toml"
    path.write_bytes(bytes(range(256)) * 4)
    return path


def directory(tmp: Path) -> Path:
    return tmp


# The settings of the finding, and their neighbours: every other host-valued setting and
# every way the config file itself can be unreadable.
CASES = [
    pytest.param(["--host", "evil..name"], None, "--host", id="host-empty-label"),
    pytest.param(["--host", f"{LONG_LABEL}.example"], None, "--host", id="host-long-label"),
    pytest.param(["--host", "a." * 127 + "ab"], None, "--host", id="host-over-253"),
    pytest.param(["--host", "café bar"], None, "--host", id="host-space"),
    pytest.param(["--control-host", "evil..name"], None, "--control-host",
                 id="control-host-empty-label"),
    pytest.param(["--control-host", LONG_LABEL], None, "--control-host",
                 id="control-host-long-label"),
    pytest.param(["--listen", f"{LONG_LABEL}:80"], None, "--listen", id="listen-long-label"),
    pytest.param(["--allow-host", "evil..name"], None, "--allow-host",
                 id="allow-host-empty-label"),
    pytest.param(["--config", "{tmp}"], toml_file("user_data = {a = 1}\n"), "user_data",
                 id="toml-user-data-table"),
    pytest.param(["--config", "{tmp}"], toml_file("host = {a = 1}\n"), "host",
                 id="toml-host-table"),
    pytest.param(["--config", "{tmp}"], toml_file("role_map = {a = 1}\n"), "role_map",
                 id="toml-role-map-table"),
    pytest.param(["--config", "{tmp}"], toml_file('host = ["127.0.0.1"]\n'), "host",
                 id="toml-host-array"),
    pytest.param(["--config", "{tmp}"], toml_file('tags = {Name = {a = 1}}\n'), "tags",
                 id="toml-tag-value-table"),
    pytest.param(["--config", "{tmp}"], toml_file('host = "evil..name"\n'), "host",
                 id="toml-host-empty-label"),
    pytest.param(["--config", "{tmp}"], toml_file('role_map = "\\u0000"\n'), "role_map",
                 id="toml-role-map-nul"),
    pytest.param(["--config", "{tmp}"], directory, "--config", id="config-is-a-directory"),
    pytest.param(["--config", "{tmp}"], binary_file, "--config", id="config-is-binary"),
    pytest.param(["--role-map", "{tmp}"], binary_file, "role_map", id="role-map-is-binary"),
]


@pytest.mark.e2e
class TestTheCommandExits2WithOneLine:
    @pytest.mark.parametrize("command", ["serve", "config"])
    @pytest.mark.parametrize(("args", "setup", "setting"), CASES)
    def test_bad_setting(
        self, command: str, args: list[str], setup: Setup | None, setting: str,
        tmp_path: Path, empty_home: Path,
    ) -> None:
        """`python -m imds serve|config` with the bad setting: rc 2, one line naming it."""
        if setup is not None:
            args = [str(setup(tmp_path)) if arg == "{tmp}" else arg for arg in args]
        result = run([sys.executable, "-m", "imds", command, "--port", "0", *args],
                     clean_env(empty_home), timeout=30)
        lines = result.stderr.splitlines()
        assert "Traceback" not in result.stderr
        assert (EXIT_USAGE, 1) == (result.returncode, len(lines)), result.stderr
        assert lines[0].startswith("imds: configuration error: ")
        assert setting in lines[0]


# The settings a TOML table gives one item of (`[[network_interfaces]]`, docs/instance.md).
TABLE_ITEMS = frozenset({"network_interfaces", "maintenance_events"})


def toml_type(option: Option) -> str:
    """The TOML type a setting takes, from its Config field's type (not from the option)."""
    hint = typing.get_type_hints(Config)[option.key]
    if hint is bool:
        return "boolean"
    if hint is float:
        return "float"
    return "integer" if hint in (int, int | None) else "string"


def wrong_toml_values(option: Option) -> list[str]:
    """TOML literals of every type this setting does not take."""
    # A float is right for a setting in seconds that takes fractions (reload_interval).
    wrong = [] if toml_type(option) == "float" else ["1.5"]
    wrong.append("2030-01-02T03:04:05Z")
    if toml_type(option) == "boolean":
        wrong.append("1")
    else:
        wrong.append("true")
    table = option.key in TABLE_ITEMS
    if option.repeated:
        wrong.append("[[1]]")
        if not table:
            wrong.append("[{a = 1}]")
    else:
        wrong.append('["a", "b"]')
    wrong.append("{a = {b = 1}}" if option.pairs or table else "{a = 1}")
    return wrong


class TestEveryKeyChecksItsTomlType:
    @pytest.mark.parametrize("option", OPTIONS, ids=lambda option: option.key)
    def test_values_of_other_types_are_refused_naming_key_and_types(
        self, option: Option, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    ) -> None:
        path = tmp_path / "imds.toml"
        refused = []
        for value in wrong_toml_values(option):
            path.write_text(f"{option.key} = {value}\n")
            code = main(["config", "--config", str(path)], environ={})
            lines = capsys.readouterr().err.splitlines()
            refused.append((value, code, len(lines)))
            assert f"config file {str(path)!r}, {option.key}: " in lines[0]
            assert re.search(r"expected an? [a-z -]+, got an? (float|date-time|boolean|integer"
                             r"|array|table)$", lines[0]), lines[0]
        assert [(value, EXIT_USAGE, 1) for value in wrong_toml_values(option)] == refused


# TOML values of every type, nested, as tomllib returns them.
SCALARS = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=80),
    st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), st.booleans(),
    st.datetimes(timezones=st.just(dt.UTC)),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text("abcmacdeprivtx-_", min_size=1, max_size=12), inner,
                      max_size=4),
    max_leaves=8,
)


def toml_string(text: str) -> str:
    # A JSON string is a TOML basic string, but for astral characters (JSON escapes them as
    # surrogate pairs, TOML refuses those) and DEL (TOML wants it escaped).
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_literal(value: Any) -> str:
    """A TOML literal of a value of the strategies above."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_literal(v)}"
                               for k, v in value.items()) + "}"
    return repr(value)


class TestRandomTomlValues:
    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(key=st.sampled_from([option.key for option in OPTIONS]), value=VALUES)
    def test_any_value_for_any_key_loads_or_is_a_config_error(
        self, key: str, value: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Whatever a file holds, loading gives a Config or one ConfigError line naming it."""
        monkeypatch.chdir(tmp_path)  # relative paths a value names are looked up here
        path = tmp_path / "imds.toml"
        path.write_text(f"{key} = {toml_literal(value)}\n")
        try:
            load({}, {}, str(path))
        except ConfigError as exc:
            message = str(exc)
            assert "\n" not in message
            assert key in message or key.replace("_", " ") in message


class TestBindingTurnsBadNamesIntoStartupErrors:
    """Belt and braces: the binding code never lets getaddrinfo's UnicodeError through."""

    @pytest.mark.parametrize("field", ["host", "control_host"])
    async def test_a_name_the_codec_refuses_is_a_startup_error(self, field: str) -> None:
        config = dataclasses.replace(make_config(), **{field: "evil..name"})
        with pytest.raises(StartupError, match=r"cannot listen on evil\.\.name"):
            running = await start(config)
            await running.stop()
