"""`--help` answers "what is this, and what is the default?" for every flag of every command."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from imds.cli import _parser, main
from imds.config import OPTIONS, Config, Option
from tests.support.processes import clean_env, run

HelpOf = Callable[..., str]
# One line per flag: argparse wraps at the terminal's width, read from COLUMNS.
WIDE = "1000"


def sections(text: str) -> dict[str, dict[str, str]]:
    """`--help` output as {heading: {invocation: help}}; an entry's help may be empty."""
    out: dict[str, dict[str, str]] = {}
    entries: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if re.fullmatch(r"\S.*:", line):
            entries = out.setdefault(line[:-1], {})
        elif line.startswith("  ") and not line.startswith("   "):
            invocation, _, help_text = line.strip().partition("  ")
            last = invocation
            entries[last] = help_text.strip()
        elif line.strip() and last:
            entries[last] = (entries[last] + " " + line.strip()).strip()
    return out


def entry(text: str, flag: str) -> tuple[str, str, str]:
    """(heading, invocation, help) of the flag's entry in `--help` output."""
    for heading, entries in sections(text).items():
        for invocation, help_text in entries.items():
            if flag in invocation.replace(",", " ").split()[:2]:
                return heading, invocation, help_text
    raise AssertionError(f"{flag} is not in the help text")


def shown(value: object) -> str:
    """A Config default as a user would type it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ", ".join(str(item) for item in value)
    return str(value)


def choices_of(option: Option) -> list[str]:
    """The words a setting takes, read from its own parser's refusal ("expected one of …")."""
    try:
        option.parse("§")
    except ValueError as exc:
        found = re.match(r"expected (?:one of (.*)|(true) or (false)), got", str(exc))
        if found and found[1]:
            return found[1].split(", ")
        if found:
            return [found[2], found[3]]
    return []


@pytest.fixture
def help_of(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> HelpOf:
    """`imds ARGV --help`, in-process, as one line a flag."""
    monkeypatch.setenv("COLUMNS", WIDE)

    def help_of(*argv: str) -> str:
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--help"], environ={})
        assert 0 == exc.value.code
        return capsys.readouterr().out

    return help_of


class TestServeHelp:
    def test_every_option_is_under_a_group_heading_with_a_help_line(self, help_of: HelpOf) -> None:
        """No flag sits in the catch-all `options:` list, and none is listed bare."""
        text = help_of("serve")
        for option in OPTIONS:
            heading, _, help_text = entry(text, option.flag)
            assert heading not in ("options", "optional arguments"), option.flag
            assert help_text, option.flag
        headings = set(sections(text)) - {"options", "optional arguments", "usage"}
        assert len(headings) >= 5

    def test_every_config_default_is_shown(self, help_of: HelpOf) -> None:
        """The default a user gets without configuring anything, from Config itself."""
        text = help_of("serve")
        keys = {option.key for option in OPTIONS}
        checked = 0
        for field in dataclasses.fields(Config):
            if field.name not in keys or field.default in (None, "", (), dataclasses.MISSING):
                continue
            _, _, help_text = entry(text, "--" + field.name.replace("_", "-"))
            assert f"(default: {shown(field.default)};" in help_text, field.name
            checked += 1
        assert checked >= 25

    def test_every_option_answers_what_the_default_is(self, help_of: HelpOf) -> None:
        """Computed and empty defaults are said in words: the control port, the state dir."""
        text = help_of("serve")
        for option in OPTIONS:
            assert "(default: " in entry(text, option.flag)[2], option.flag
        assert "(default: 1339, or a free one when the metadata port is free" in entry(
            text, "--control-port")[2]
        assert "~/.local/state/imds" in entry(text, "--state-dir")[2]

    def test_secrets_show_no_default_value(self, help_of: HelpOf) -> None:
        """A masked setting's help says how its default comes about, never a value."""
        text = help_of("serve")
        for option in OPTIONS:
            if option.masked:
                help_text = entry(text, option.flag)[2]
                default = help_text.split("(default: ")[1].split(";")[0]
                assert default == "none" or " " in default, option.flag

    def test_choices_are_shown(self, help_of: HelpOf) -> None:
        text = help_of("serve")
        with_choices = [option for option in OPTIONS if choices_of(option)]
        assert len(with_choices) >= 8
        for option in with_choices:
            invocation = entry(text, option.flag)[1]
            assert "{" + ",".join(choices_of(option)) + "}" in invocation, option.flag
        assert "--log-level {debug,info,warning,error}" == entry(text, "--log-level")[1]


def ctl_commands() -> list[str]:
    ctl = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    actions = ctl.choices["ctl"]._actions
    sub = next(a for a in actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


class TestCtlHelp:
    def test_every_argument_of_every_subcommand_has_help(self, help_of: HelpOf) -> None:
        for command in ["", *ctl_commands()]:
            text = help_of("ctl", *([command] if command else []))
            for heading, entries in sections(text).items():
                if heading == "usage":
                    continue
                for invocation, help_text in entries.items():
                    assert help_text, f"ctl {command}: {invocation}"

    def test_set_says_bounds_and_role(self, help_of: HelpOf) -> None:
        text = help_of("ctl", "set")
        assert "0..21600" in entry(text, "--refresh-ahead")[2]
        assert "--role-map" in entry(text, "--role")[2]


class TestClientCommandsHelp:
    @pytest.mark.parametrize("command", ["env", "exec", "pod-token"])
    def test_every_argument_has_help_and_says_its_default(
        self, help_of: HelpOf, command: str
    ) -> None:
        """Options that take a value say what it is when not given; flags say what they do."""
        text = help_of(command)
        for heading, entries in sections(text).items():
            if heading == "usage":
                continue
            for invocation, help_text in entries.items():
                assert help_text, f"{command}: {invocation}"
                if re.match(r"--[a-z-]+ ", invocation):  # an option that takes a value
                    assert "(default: " in help_text, f"{command}: {invocation}"

    def test_exec_says_it_clears_the_other_flows_variables(self, help_of: HelpOf) -> None:
        text = " ".join(help_of("exec").split())
        assert "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI" in text
        assert "are removed from its environment" in text

    def test_the_commands_are_listed_with_a_line_each(self, help_of: HelpOf) -> None:
        text = help_of()
        for command in ("env", "exec", "pod-token"):
            assert re.search(rf"^    {command}  +\S", text, re.MULTILINE), command


@pytest.mark.e2e
class TestHelpAsAUserRunsIt:
    def test_serve_help_shows_groups_defaults_and_choices(self, empty_home: Path) -> None:
        result = run([sys.executable, "-m", "imds", "serve", "--help"],
                     env=clean_env(empty_home, COLUMNS=WIDE))
        assert 0 == result.returncode, result.stderr
        heading, _, help_text = entry(result.stdout, "--port")
        assert "server" == heading
        assert f"(default: {Config().port};" in help_text
        assert f"(default: {Config().credential_lifetime};" in entry(
            result.stdout, "--credential-lifetime")[2]
        assert f"(default: {Config().refresh_ahead};" in entry(
            result.stdout, "--refresh-ahead")[2]
        assert "--log-level {debug,info,warning,error}" == entry(result.stdout,
                                                                 "--log-level")[1]

    def test_ctl_set_help_explains_every_flag(self, empty_home: Path) -> None:
        result = run([sys.executable, "-m", "imds", "ctl", "set", "--help"],
                     env=clean_env(empty_home, COLUMNS=WIDE))
        assert 0 == result.returncode, result.stderr
        for flag in ("--lifetime", "--refresh-ahead", "--role"):
            assert entry(result.stdout, flag)[2], flag
