"""
`imds env`, `imds exec` and `imds pod-token` against a real `imds serve`, found through its
state directory: the exports evaluated by a shell and the variables `exec` sets both bring
boto3's default chain to the flow asked for, and to the server's keys.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import stat
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from imds import flows
from imds.cli import main
from imds.envcmd import CONTAINER_TOKEN_FILE, EXIT_ERROR, EXIT_NOT_FOUND, EXIT_USAGE
from imds.lab.registry import Published, Server, publish, running_servers
from tests.support.processes import ImdsProcess, clean_env, run, run_imds

pytestmark = pytest.mark.e2e

IMDS = [sys.executable, "-m", "imds"]
# What the SDK settled on: its provider's name and the key it holds.
CREDENTIALS = ("import boto3, json; c = boto3.Session().get_credentials(); "
               "print(json.dumps({'method': c.method, "
               "'key': c.get_frozen_credentials().access_key}))")
METHOD = {flows.IMDS: "iam-role", flows.ECS: "container-role",
          flows.POD_IDENTITY: "container-role"}
# A container token of the server's own (`--container-token`), as the settings require.
OWN_TOKEN = "own-container-token-0123456789"
# A container token as a server keeps it in its state directory (a newline after it).
STATE_DIR_TOKEN = "state-dir-token-0123456789"


@dataclass
class Served:
    server: ImdsProcess
    state: Path
    env: dict[str, str]

    def imds(self, *args: str, **extra: str) -> tuple[int, str, str]:
        """`imds COMMAND --state-dir STATE ARGS` as a separate process."""
        command, *rest = args
        result = run([*IMDS, command, "--state-dir", str(self.state), *rest],
                     {**self.env, **extra})
        return result.returncode, result.stdout, result.stderr


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server for the module, on a state directory whose path the shell must quote."""
    base = tmp_path_factory.mktemp("env-exec")
    home = base / "home"
    home.mkdir()
    state = base / "state dir 'quoted'"
    env = clean_env(home)
    with run_imds("--state-dir", str(state), env=env) as server:
        yield Served(server, state, env)


def sdk_result(stdout: str) -> dict[str, str]:
    return json.loads(stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def exports_of(stdout: str) -> dict[str, str]:
    """The `export NAME=VALUE` lines as the shell reads them; every line must be one."""
    found = {}
    for line in stdout.splitlines():
        words = shlex.split(line)
        assert "export" == words[0] and 2 == len(words), line
        name, _, value = words[1].partition("=")
        found[name] = value
    return found


def claims_of(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


class TestEnvInAShell:
    @pytest.mark.parametrize("flow", flows.FLOWS)
    def test_the_evaluated_exports_bring_the_sdk_to_the_flow(
        self, served: Served, flow: str
    ) -> None:
        """`eval "$(imds env FLOW)"`, then boto3's default chain, as a user types them."""
        script = (f'set -e; eval "$({shlex.join(IMDS)} env {flow} --state-dir '
                  f'{shlex.quote(str(served.state))})"; python -c {shlex.quote(CREDENTIALS)}')
        result = run(["bash", "-c", script], served.env)
        assert 0 == result.returncode, result.stderr
        found = sdk_result(result.stdout)
        assert METHOD[flow] == found["method"]
        assert found["key"].startswith("ASIA")

    def test_imds_points_at_the_servers_first_url(self, served: Served) -> None:
        code, out, err = served.imds("env")
        assert (0, "") == (code, err)
        assert {flows.ENDPOINT: served.server.url, flows.ENDPOINT_MODE: "IPv4"} == \
            exports_of(out)

    def test_only_export_lines_go_to_stdout_and_a_shadowing_variable_is_named(
        self, served: Served
    ) -> None:
        """What would win over the printed flow [E-09] is said on stderr, not exported."""
        code, out, err = served.imds("env", "imds", **{
            flows.FULL_URI: "http://127.0.0.1:9/elsewhere", "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE"})
        assert 0 == code
        assert {flows.ENDPOINT, flows.ENDPOINT_MODE} == set(exports_of(out))
        assert f"warning: {flows.FULL_URI} is set" in err
        assert "warning: AWS_ACCESS_KEY_ID is set" in err

    def test_ecs_exports_the_task_path_and_the_state_dirs_token(self, served: Served) -> None:
        code, out, err = served.imds("env", "--flow", "ecs")
        assert (0, "") == (code, err)
        [server] = running_servers(served.state)
        token = (served.state / CONTAINER_TOKEN_FILE).read_text().strip()
        assert {flows.FULL_URI: f"{served.server.url}/v2/credentials/{server.ecs_task}",
                flows.TOKEN: token} == exports_of(out)

    def test_pod_identity_writes_a_fresh_token_file_only_its_owner_reads(
        self, served: Served
    ) -> None:
        path = served.state / "tokens" / "team-a.app.jwt"
        code, out, err = served.imds("env", "pod-identity", "--namespace", "team-a",
                                     "--service-account", "app")
        assert (0, "") == (code, err)
        assert {flows.FULL_URI: f"{served.server.url}/v1/credentials",
                flows.TOKEN_FILE: str(path)} == exports_of(out)
        assert 0o600 == stat.S_IMODE(path.stat().st_mode)
        token = path.read_text()
        assert "\n" not in token
        claims = claims_of(token)
        assert {"namespace": "team-a", "serviceaccount": "app"} == {
            "namespace": claims["kubernetes.io"]["namespace"],  # type: ignore[index]
            "serviceaccount": claims["kubernetes.io"]["serviceaccount"]["name"]}  # type: ignore[index]


class TestExec:
    @pytest.mark.parametrize("flow", flows.FLOWS)
    def test_the_command_gets_the_flow_whatever_other_flows_variables_say(
        self, served: Served, flow: str, tmp_path: Path
    ) -> None:
        """
        Variables that would otherwise win (a container URI over IMDS [E-09], a token file
        over the token [K-03]) or switch IMDS off [E-01] point nowhere useful: `exec`
        must clear them for the SDK to reach the chosen flow.
        """
        wrong = tmp_path / "wrong-token"
        wrong.write_text("not-the-token")
        code, out, err = served.imds(
            "exec", "--flow", flow, "--", "python", "-c", CREDENTIALS,
            **{flows.FULL_URI: "http://127.0.0.1:9/elsewhere", flows.TOKEN_FILE: str(wrong),
               flows.TOKEN: "not-the-token", flows.METADATA_DISABLED: "true",
               flows.ENDPOINT: "http://127.0.0.1:9"})
        assert 0 == code, err
        assert METHOD[flow] == sdk_result(out)["method"]

    def test_every_flow_serves_the_servers_own_role_from_one_rotation(
        self, served: Served
    ) -> None:
        """The server's role, under its ECS task id and to every pod: the same keys."""
        keys = set()
        for flow in flows.FLOWS:
            code, out, err = served.imds("exec", "--flow", flow, "--", "python", "-c",
                                         CREDENTIALS)
            assert 0 == code, err
            keys.add(sdk_result(out)["key"])
        assert 1 == len(keys)

    def test_the_exit_code_is_the_commands(self, served: Served) -> None:
        code, _, _ = served.imds("exec", "--", "python", "-c", "raise SystemExit(7)")
        assert 7 == code

    def test_the_command_sees_the_variables_and_its_own_arguments(
        self, served: Served
    ) -> None:
        """No `--` needed when the command has no options of its own; its arguments pass."""
        code, out, err = served.imds(
            "exec", "python", "-c", f"import os, sys; print(os.environ['{flows.ENDPOINT}'], "
            "sys.argv[1:])", "--flow", "x y")
        assert (0, "") == (code, err)
        assert f"{served.server.url} ['--flow', 'x y']\n" == out

    def test_a_command_not_found_is_127(self, served: Served) -> None:
        code, _, err = served.imds("exec", "--", "no-such-command-here")
        assert EXIT_NOT_FOUND == code
        assert "no-such-command-here: command not found" in err

    def test_no_command_is_a_usage_error(self, served: Served) -> None:
        code, _, err = served.imds("exec", "--flow", "ecs")
        assert EXIT_USAGE == code
        assert "give the command to run after --" in err


class TestFindingTheServer:
    def test_no_server_running_is_exit_1_naming_the_state_dir(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert EXIT_ERROR == main(["env", "--state-dir", str(tmp_path)], {})
        out, err = capsys.readouterr()
        assert "" == out
        assert f"no server is running on state directory {tmp_path}" in err

    def test_two_servers_need_server_as_imds_ctl_does(
        self, tmp_path: Path, empty_home: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        state = tmp_path / "state"
        env = clean_env(empty_home)
        with run_imds("--state-dir", str(state), env=env) as older, \
                run_imds("--state-dir", str(state), "--role-name", "other", env=env) as newer:
            assert EXIT_USAGE == main(["env", "--state-dir", str(state)], {})
            out, err = capsys.readouterr()
            assert "" == out
            assert "2 servers are running on state directory" in err
            for server in (older, newer):
                assert 0 == main(["env", "--state-dir", str(state), "--server",
                                  str(server.process.pid)], {})
                assert exports_of(capsys.readouterr().out)[flows.ENDPOINT] == server.url

    def test_a_server_with_its_own_container_token_needs_it_given(
        self, tmp_path: Path, empty_home: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The state dir's token does not open that server: say so rather than print it."""
        state = tmp_path / "state"
        with run_imds("--state-dir", str(state), "--container-token", OWN_TOKEN,
                      env=clean_env(empty_home)):
            assert EXIT_USAGE == main(["env", "ecs", "--state-dir", str(state)], {})
            out, err = capsys.readouterr()
            assert "" == out
            assert "was started with its own --container-token" in err
            assert 0 == main(["env", "ecs", "--state-dir", str(state), "--container-token",
                              OWN_TOKEN], {})
            assert OWN_TOKEN == exports_of(capsys.readouterr().out)[flows.TOKEN]


class TestChoosingTheUrl:
    """Which of a server's URLs each flow gets, from its entry in the state directory."""

    @pytest.fixture
    def entry(self, tmp_path: Path) -> Iterator[Callable[..., Path]]:
        """Record a server as `imds serve` does (held while this test runs); its state dir."""
        held: list[Published] = []

        def entry(*urls: str, **fields: Any) -> Path:
            state = tmp_path / "state"
            published = publish(str(state), Server(
                pid=os.getpid(), control_url="http://127.0.0.1:9", urls=urls,
                role="imds-local-role", source="minted", started=time.time(),
                **{"ecs_task": "task-1", **fields}))
            assert published is not None
            held.append(published)
            (state / CONTAINER_TOKEN_FILE).write_text(STATE_DIR_TOKEN + "\n")
            return state

        yield entry
        for published in held:
            published.withdraw()

    def env(self, state: Path, capsys: pytest.CaptureFixture[str],
            *args: str) -> tuple[int, dict[str, str], str]:
        code = main(["env", "--state-dir", str(state), *args], {})
        out, err = capsys.readouterr()
        return code, exports_of(out), err

    def test_a_server_on_every_address_is_reached_on_loopback(
        self, entry: Callable[..., Path], capsys: pytest.CaptureFixture[str]
    ) -> None:
        state = entry("http://0.0.0.0:4321")
        assert (0, {flows.ENDPOINT: "http://127.0.0.1:4321", flows.ENDPOINT_MODE: "IPv4"},
                "") == self.env(state, capsys)
        assert (0, {flows.FULL_URI: "http://127.0.0.1:4321/v2/credentials/task-1",
                    flows.TOKEN: STATE_DIR_TOKEN}, "") == self.env(state, capsys, "ecs")

    def test_imds_takes_the_first_url_and_a_container_flow_the_first_sdks_allow(
        self, entry: Callable[..., Path], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An http full URI to 169.254.169.254 is refused by every SDK [K-02]."""
        state = entry("http://169.254.169.254:80", "http://127.0.0.1:4321")
        assert "http://169.254.169.254:80" == self.env(state, capsys)[1][flows.ENDPOINT]
        code, found, err = self.env(state, capsys, "pod-identity")
        assert (0, "") == (code, err)
        assert "http://127.0.0.1:4321/v1/credentials" == found[flows.FULL_URI]

    def test_a_server_only_on_a_refused_host_is_printed_with_a_warning(
        self, entry: Callable[..., Path], capsys: pytest.CaptureFixture[str]
    ) -> None:
        state = entry("http://169.254.169.254:80")
        code, found, err = self.env(state, capsys, "ecs")
        assert 0 == code
        assert "http://169.254.169.254:80/v2/credentials/task-1" == found[flows.FULL_URI]
        assert "SDKs refuse an http full URI" in err and "[K-02]" in err

    def test_another_task_id_and_a_given_token(
        self, entry: Callable[..., Path], capsys: pytest.CaptureFixture[str]
    ) -> None:
        state = entry("http://127.0.0.1:4321")
        assert (0, {flows.FULL_URI: "http://127.0.0.1:4321/v2/credentials/batch",
                    flows.TOKEN: "given token"}, "") == self.env(
            state, capsys, "ecs", "--task-id", "batch", "--container-token", "given token")

    def test_a_task_id_that_is_no_path_segment_is_refused(
        self, entry: Callable[..., Path], capsys: pytest.CaptureFixture[str]
    ) -> None:
        state = entry("http://127.0.0.1:4321")
        code, found, err = self.env(state, capsys, "ecs", "--task-id", "../v1/credentials")
        assert (EXIT_USAGE, {}) == (code, found)
        assert "--task-id" in err

    def test_a_server_with_its_own_token_is_exit_2_until_it_is_given(
        self, entry: Callable[..., Path], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The state directory's token would be refused: printing it would only mislead."""
        state = entry("http://127.0.0.1:4321", own_container_token=True)
        code, found, err = self.env(state, capsys, "ecs")
        assert (EXIT_USAGE, {}) == (code, found)
        assert "was started with its own --container-token" in err
        code, found, _ = self.env(state, capsys, "ecs", "--container-token", OWN_TOKEN)
        assert (0, OWN_TOKEN) == (code, found[flows.TOKEN])

    def test_a_token_with_a_line_break_is_refused_not_printed(
        self, entry: Callable[..., Path], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """SDKs refuse it [K-03]; the export would fail far from the cause."""
        state = entry("http://127.0.0.1:4321")
        code, found, err = self.env(state, capsys, "ecs", "--container-token", "a\r\nb")
        assert (EXIT_USAGE, {}) == (code, found)
        assert "CR or LF" in err

    def test_a_server_without_an_ecs_task_is_exit_1(
        self, entry: Callable[..., Path], capsys: pytest.CaptureFixture[str]
    ) -> None:
        state = entry("http://127.0.0.1:4321", ecs_task="")
        code, found, err = self.env(state, capsys, "ecs")
        assert (EXIT_ERROR, {}) == (code, found)
        assert "does not serve ECS task credentials" in err


class TestPodToken:
    def test_a_minted_token_gets_its_pod_the_servers_credentials(self, served: Served) -> None:
        """`imds pod-token` then the agent's request by hand [K-06] [K-07]."""
        code, token, err = served.imds("pod-token", "--namespace", "shop",
                                       "--service-account", "cart", "--pod-name", "cart-1")
        assert (0, "") == (code, err)
        request = urllib.request.Request(f"{served.server.url}/v1/credentials",
                                         headers={"Authorization": token.strip()})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=10) as response:
            body = json.loads(response.read())
        assert {"AccessKeyId", "SecretAccessKey", "Token", "AccountId", "Expiration"} == \
            set(body)

    def test_the_token_file_is_0600_one_line_and_names_the_pod(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        out_file = tmp_path / "token"
        before = time.time()
        assert 0 == main(["pod-token", "--state-dir", str(tmp_path / "state"), "--namespace",
                          "shop", "--service-account", "cart", "--pod-name", "cart-1",
                          "--pod-uid", "0b8e4f4e-1111-4222-8333-944445555666",
                          "--lifetime", "600", "--out", str(out_file)], {})
        assert "" == capsys.readouterr().out
        assert 0o600 == stat.S_IMODE(out_file.stat().st_mode)
        token = out_file.read_text()
        assert 3 == len(token.split(".")) and "\n" not in token
        claims = claims_of(token)
        assert ["pods.eks.amazonaws.com"] == claims["aud"] or \
            "pods.eks.amazonaws.com" == claims["aud"]
        assert {"namespace": "shop", "pod": {"name": "cart-1",
                                             "uid": "0b8e4f4e-1111-4222-8333-944445555666"}} \
            .items() <= claims["kubernetes.io"].items()  # type: ignore[attr-defined]
        assert before + 599 <= claims["exp"] <= time.time() + 601  # type: ignore[operator]

    def test_a_redirected_token_ends_without_a_newline(self, served: Served) -> None:
        """`imds pod-token > file` must make a file botocore sends: it refuses LF [K-03]."""
        code, token, _ = served.imds("pod-token")
        assert 0 == code
        assert 3 == len(token.split(".")) and not token.endswith("\n")

    def test_the_same_pod_gets_the_same_uid(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        uids = set()
        for _ in range(2):
            assert 0 == main(["pod-token", "--state-dir", str(tmp_path)], {})
            uids.add(claims_of(capsys.readouterr().out)["kubernetes.io"]["pod"]["uid"])  # type: ignore[index]
        assert 1 == len(uids) and "" not in uids

    @pytest.mark.parametrize("flag, value", [
        ("--namespace", "../etc"), ("--service-account", "a/b"), ("--namespace", "Upper"),
        ("--pod-name", ""), ("--pod-uid", "not-a-uuid"), ("--lifetime", "0"),
    ])
    def test_a_bad_name_is_exit_2_and_writes_nothing(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
    ) -> None:
        out_file = tmp_path / "token"
        assert EXIT_USAGE == main(["pod-token", "--state-dir", str(tmp_path / "state"), flag,
                                   value, "--out", str(out_file)], {})
        assert flag in capsys.readouterr().err
        assert not out_file.exists()
        assert [] == os.listdir(tmp_path)
