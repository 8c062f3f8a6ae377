"""imds.flows: each flow's variables, how they are quoted, and what `imds exec` clears."""

from __future__ import annotations

import subprocess

import pytest

from imds import flows


class TestVariables:
    def test_imds_gives_the_endpoint_and_its_mode(self) -> None:
        assert {flows.ENDPOINT: "http://127.0.0.1:1338", flows.ENDPOINT_MODE: "IPv4"} == \
            flows.imds_variables("http://127.0.0.1:1338")
        assert "IPv6" == flows.imds_variables("http://[::1]:1338")[flows.ENDPOINT_MODE]

    def test_ecs_gives_the_task_path_and_the_token(self) -> None:
        assert {flows.FULL_URI: "http://127.0.0.1:1338/v2/credentials/task-1",
                flows.TOKEN: "s3cret"} == flows.ecs_variables("http://127.0.0.1:1338",
                                                              "task-1", "s3cret")

    @pytest.mark.parametrize("token", ["", "a\nb", "a\rb", "ab\r\n"],
                             ids=["empty", "lf", "cr", "crlf"])
    def test_a_token_an_sdk_would_refuse_is_refused(self, token: str) -> None:
        """SDKs refuse a token with CR or LF [K-03]: printing it would only hide the cause."""
        with pytest.raises(ValueError, match="CR or LF"):
            flows.ecs_variables("http://127.0.0.1:1338", "task-1", token)

    def test_pod_identity_gives_the_agent_path_and_the_token_file(self) -> None:
        assert {flows.FULL_URI: "http://127.0.0.1:1338/v1/credentials",
                flows.TOKEN_FILE: "/s/tokens/default.default.jwt"} == \
            flows.pod_identity_variables("http://127.0.0.1:1338", "/s/tokens/default.default.jwt")


class TestUrls:
    @pytest.mark.parametrize("url, expected", [
        pytest.param("http://0.0.0.0:1338", "http://127.0.0.1:1338", id="ipv4-any"),
        pytest.param("http://[::]:1338", "http://[::1]:1338", id="ipv6-any"),
        pytest.param("http://127.0.0.1:1338", "http://127.0.0.1:1338", id="loopback"),
        pytest.param("http://169.254.170.2:80", "http://169.254.170.2:80", id="link-local"),
        pytest.param("http://localhost:1338", "http://localhost:1338", id="name"),
    ])
    def test_a_wildcard_address_is_reached_on_loopback(self, url: str, expected: str) -> None:
        assert expected == flows.client_url(url)

    @pytest.mark.parametrize("url, allowed", [
        pytest.param("http://127.0.0.1:1338", True, id="loopback"),
        pytest.param("http://127.8.9.10:1338", True, id="loopback-net"),
        pytest.param("http://[::1]:1338", True, id="ipv6-loopback"),
        pytest.param("http://localhost:1338", True, id="localhost"),
        pytest.param("http://169.254.170.2:80", True, id="ecs"),
        pytest.param("http://169.254.170.23:80", True, id="eks"),
        pytest.param("http://[fd00:ec2::23]:80", True, id="eks-ipv6"),
        pytest.param("https://example.com", True, id="https"),
        pytest.param("http://169.254.169.254:80", False, id="imds-address"),
        pytest.param("http://10.0.0.5:1338", False, id="lan"),
        pytest.param("http://example.com", False, id="http-name"),
    ])
    def test_full_uri_hosts_are_those_the_sdks_allow(self, url: str, allowed: bool) -> None:
        """[K-02]: https anywhere; http only to loopback and the container agents' addresses."""
        assert allowed == flows.full_uri_allowed(url)


class TestExports:
    @pytest.mark.parametrize("value", [
        "http://127.0.0.1:1338", "/tmp/state dir/it's.jwt", "a$b`c\"d\\e", "",
    ], ids=["plain", "space-quote", "shell-specials", "empty"])
    def test_the_shell_reads_back_each_value_exactly(self, value: str) -> None:
        lines = flows.exports({"A_VAR": value, "B_VAR": "x"})
        assert lines.startswith("export A_VAR=") and lines.endswith("export B_VAR=x\n")
        shown = subprocess.run(["bash", "-c", lines + 'printf %s "$A_VAR"'],
                               capture_output=True, text=True, check=True).stdout
        assert value == shown


# Every flow's variables set, pointing elsewhere, beside two that are none of theirs.
POLLUTED = {
    "PATH": "/bin", "AWS_REGION": "eu-west-1",
    flows.ENDPOINT: "http://127.0.0.1:9", flows.ENDPOINT_MODE: "IPv6",
    flows.RELATIVE_URI: "/v2/credentials/other", flows.FULL_URI: "http://127.0.0.1:9/x",
    flows.TOKEN: "other", flows.TOKEN_FILE: "/other", flows.METADATA_DISABLED: "true",
}


class TestEnvironment:

    @pytest.mark.parametrize("flow, variables", [
        (flows.IMDS, flows.imds_variables("http://127.0.0.1:1338")),
        (flows.ECS, flows.ecs_variables("http://127.0.0.1:1338", "t", "token")),
        (flows.POD_IDENTITY, flows.pod_identity_variables("http://127.0.0.1:1338", "/t.jwt")),
    ])
    def test_only_the_chosen_flow_is_left(self, flow: str, variables: dict[str, str]) -> None:
        """Whatever the chain's order [E-09] [K-01], nothing of another flow remains."""
        env = flows.environment(POLLUTED, flow, variables)
        left = {name: env[name] for name in flows.FLOW_VARIABLES if name in env}
        assert variables == left
        assert {"PATH": "/bin", "AWS_REGION": "eu-west-1"}.items() <= env.items()

    def test_imds_drops_the_switch_that_turns_it_off_and_containers_keep_it(self) -> None:
        """[E-01] only matters to the IMDS flow; the container flows leave the user's choice."""
        imds = flows.environment(POLLUTED, flows.IMDS, {})
        ecs = flows.environment(POLLUTED, flows.ECS, {})
        assert flows.METADATA_DISABLED not in imds
        assert "true" == ecs[flows.METADATA_DISABLED]


class TestShadowing:
    def test_the_users_own_keys_are_named_for_every_flow(self) -> None:
        current = {"AWS_ACCESS_KEY_ID": "AKIA…", "AWS_PROFILE": "dev"}
        for flow in flows.FLOWS:
            for cleared in (True, False):
                assert ["AWS_ACCESS_KEY_ID", "AWS_PROFILE"] == \
                    flows.shadowing(current, flow, cleared=cleared)

    def test_container_variables_shadow_imds_unless_cleared(self) -> None:
        current = {flows.FULL_URI: "http://127.0.0.1:9/x", flows.METADATA_DISABLED: "true"}
        assert [flows.FULL_URI, flows.METADATA_DISABLED] == \
            flows.shadowing(current, flows.IMDS, cleared=False)
        assert [] == flows.shadowing(current, flows.IMDS, cleared=True)

    def test_the_relative_uri_shadows_a_full_uri_and_a_token_file_the_token(self) -> None:
        """[K-01]: the relative URI wins; [K-03]: the token file is read before the variable."""
        current = {flows.RELATIVE_URI: "/v2/credentials/x", flows.TOKEN_FILE: "/t"}
        assert [flows.RELATIVE_URI, flows.TOKEN_FILE] == \
            flows.shadowing(current, flows.ECS, cleared=False)
        assert [flows.RELATIVE_URI] == flows.shadowing(current, flows.POD_IDENTITY,
                                                       cleared=False)
