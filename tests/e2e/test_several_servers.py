"""
Several `imds serve` on one state directory (the default one here, as a newcomer runs them):
`imds ctl` finds each on its own, never guesses between them, and a server that stops,
or dies, leaves the others findable.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from imds.cli import main
from imds.config.instance import default_state_dir
from imds.ctl import EXIT_USAGE
from imds.lab.control import URL_FILE
from imds.lab.registry import SERVERS_DIR
from tests.e2e.test_state_dir import NOBODY, as_root
from tests.e2e.test_sts_e2e import ROLE_A, server_env
from tests.support.processes import ImdsProcess, clean_env, run, run_imds
from tests.support.rawhttp import untouched_listener

pytestmark = pytest.mark.e2e


def control_url(server: ImdsProcess) -> str:
    """The control URL a server printed in its banner."""
    line = next(line for line in server.banner if "control API" in line)
    return line.split(" on ", 1)[1].split("/ ", 1)[0]


@contextmanager
def two_servers(home: Path, *first: str) -> Iterator[tuple[ImdsProcess, ImdsProcess]]:
    """`first` (default: role lab-a) then role lab-b, both on HOME's default state dir."""
    with ExitStack() as stack:
        older = stack.enter_context(
            run_imds(*(first or ("--role-name", "lab-a")), env=clean_env(home)))
        newer = stack.enter_context(run_imds("--role-name", "lab-b", env=clean_env(home)))
        yield older, newer


def ctl(home: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`imds ctl ARGS` in this process (a CLI start costs a second), as HOME's user."""
    code = main(["ctl", *args], {"HOME": str(home)})
    out, err = capsys.readouterr()
    return code, out, err


def state_of(home: Path) -> Path:
    return Path(default_state_dir({"HOME": str(home)}))


def entries(state: Path) -> list[str]:
    """The servers recorded in `state`, by file name."""
    folder = state / SERVERS_DIR
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def served_role(out: str) -> str:
    """The role `imds ctl status` reports ("" for none)."""
    first = out.split()
    return first[1].rstrip(":") if first[:1] == ["role"] else ""


class TestChoosingAServer:
    def test_ctl_does_not_guess_between_two_servers_but_lists_them(
        self, empty_home: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Two running, none chosen: `imds ctl status` exits 2, naming both and how to pick."""
        with two_servers(empty_home) as (older, newer):
            code, out, err = ctl(empty_home, capsys, "status")
        assert (EXIT_USAGE, "") == (code, out)
        assert "2 servers are running on state directory" in err
        assert "--server PID, ROLE or URL" in err
        listed = err.splitlines()[1:]
        assert [str(older.process.pid), str(newer.process.pid)] == \
            [line.split()[0] for line in listed]
        assert ["lab-a", "lab-b"] == [line.split()[1] for line in listed]

    def test_server_reaches_each_by_pid_role_or_url(
        self, empty_home: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`--server` takes a pid, a role, a metadata URL or a control URL; `--control-url` too."""
        with two_servers(empty_home) as (older, newer):
            chosen = {
                "pid": ctl(empty_home, capsys, "--server", str(older.process.pid), "status"),
                "role": ctl(empty_home, capsys, "--server", "lab-b", "status"),
                "metadata URL": ctl(empty_home, capsys, "--server", older.url, "status"),
                "control URL": ctl(empty_home, capsys, "--server", control_url(newer),
                                   "status"),
                "--control-url": ctl(empty_home, capsys, "--control-url",
                                     control_url(older), "status"),
            }
        assert {"pid": (0, "lab-a"), "role": (0, "lab-b"), "metadata URL": (0, "lab-a"),
                "control URL": (0, "lab-b"), "--control-url": (0, "lab-a")} == \
            {how: (code, served_role(out)) for how, (code, out, _) in chosen.items()}

    def test_a_server_naming_none_of_them_is_exit_2_with_the_list(
        self, empty_home: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with two_servers(empty_home) as (older, _):
            code, _, err = ctl(empty_home, capsys, "--server", "no-such-role", "status")
        assert EXIT_USAGE == code
        assert "--server no-such-role names none of the servers running" in err
        assert str(older.process.pid) in err

    def test_ctl_servers_lists_the_running_servers_oldest_first(
        self, empty_home: Path
    ) -> None:
        """`imds ctl servers --json`, as a user runs it: pid, role and URLs of each."""
        with two_servers(empty_home) as (older, newer):
            listed = run([sys.executable, "-m", "imds", "ctl", "--json", "servers"],
                         clean_env(empty_home))
        assert 0 == listed.returncode, listed.stderr
        assert [(older.process.pid, "lab-a", [older.url], control_url(older)),
                (newer.process.pid, "lab-b", [newer.url], control_url(newer))] == \
            [(s["pid"], s["role"], s["urls"], s["control_url"])
             for s in json.loads(listed.stdout)]

    def test_the_second_server_says_that_it_is_not_alone(self, empty_home: Path) -> None:
        with two_servers(empty_home) as (older, newer):
            pass
        assert not any("also running" in line for line in older.banner)
        assert any(f"also running on {state_of(empty_home)}: pid {older.process.pid} (lab-a)"
                   in line for line in newer.banner)


class TestStoppingOne:
    def test_the_sts_server_stopping_leaves_the_lab_server_findable(
        self, empty_home: Path, moto_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The report: an STS-backed server beside the lab server, the newer one stops first."""
        state = state_of(empty_home)
        with ExitStack() as stack:
            lab = stack.enter_context(run_imds("--role-name", "lab-a", env=clean_env(empty_home)))
            sts = stack.enter_context(run_imds("--role-arn", ROLE_A, "--sts-endpoint-url",
                                               moto_url, env=server_env(empty_home)))
            sts.process.terminate()
            assert 0 == sts.process.wait(15)
            code, out, err = ctl(empty_home, capsys, "status")
            left = entries(state)
            named = (state / URL_FILE).read_text().strip() if (state / URL_FILE).exists() else ""
        assert (0, "lab-a") == (code, served_role(out)), err
        assert [f"{lab.process.pid}.json"] == left
        assert control_url(lab) == named

    def test_each_removes_only_its_own_entry_and_the_last_control_url(
        self, empty_home: Path
    ) -> None:
        state = state_of(empty_home)
        with two_servers(empty_home) as (older, newer):
            newer.process.terminate()
            newer.process.wait(15)
            left = entries(state)
        assert [f"{older.process.pid}.json"] == left
        assert [] == entries(state)
        assert not (state / URL_FILE).exists()


class TestAKilledServer:
    def test_its_entry_is_ignored_and_removed(
        self, empty_home: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """SIGKILL leaves its entry and `control-url` behind; `imds ctl` sees past both."""
        state = state_of(empty_home)
        with two_servers(empty_home) as (older, newer):
            newer.process.send_signal(signal.SIGKILL)
            newer.process.wait(15)
            code, out, err = ctl(empty_home, capsys, "status")
            left = entries(state)
            named = (state / URL_FILE).read_text().strip()
        assert (0, "lab-a") == (code, served_role(out)), err
        assert [f"{older.process.pid}.json"] == left
        assert control_url(older) == named

    def test_its_entry_counts_as_gone_when_another_process_has_its_pid(
        self, empty_home: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A pid is reused; a running process holds its entry, and the kernel lets go at death."""
        state = state_of(empty_home)
        with two_servers(empty_home) as (_, newer):
            newer.process.send_signal(signal.SIGKILL)
            newer.process.wait(15)
            # The dead server's entry, as if its pid now belonged to this (live) process.
            entry = state / SERVERS_DIR / f"{newer.process.pid}.json"
            data = json.loads(entry.read_text())
            entry.rename(entry.with_name(f"{os.getpid()}.json"))
            data["pid"] = os.getpid()
            entry.with_name(f"{os.getpid()}.json").write_text(json.dumps(data))
            code, out, err = ctl(empty_home, capsys, "status")
        assert (0, "lab-a") == (code, served_role(out)), err


class TestTrust:
    @as_root
    def test_ctl_sends_no_token_to_a_server_entry_another_user_planted(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`servers/` is checked as the state directory is: an entry there gets the token."""
        state = tmp_path / "state"
        (state / SERVERS_DIR).mkdir(mode=0o700, parents=True)
        with untouched_listener() as trap_url:
            planted = state / SERVERS_DIR / f"{os.getpid()}.json"
            planted.write_text(json.dumps({
                "pid": os.getpid(), "control_url": trap_url, "urls": [trap_url],
                "role": "trap", "source": "", "started": 0}))
            os.chown(planted, NOBODY, NOBODY)
            code = main(["ctl", "--state-dir", str(state), "status"],
                        {"IMDS_CONTROL_TOKEN": "the-real-token"})
        assert EXIT_USAGE == code
        assert f"{planted} is owned by uid {NOBODY}" in capsys.readouterr().err
