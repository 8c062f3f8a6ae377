"""The STS settings: flags, `IMDS_*` variables and the config file agree; mistakes are named."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from imds import cli
from imds.config import Config, load
from imds.config.sts import sanitise_session_name
from imds.creds.sources import LocalSource
from imds.creds.sources.sts import AssumeRoleSource
from imds.creds.sources.sts_request import AssumeRoleSettings
from imds.errors import ConfigError
from imds.server import build_source

ROLE_A = "arn:aws:iam::111122223333:role/app"
ROLE_B = "arn:aws:iam::444455556666:role/deploy/cross-account"
POLICY_ARN = "arn:aws:iam::aws:policy/ReadOnlyAccess"
STS_KEYS = ("role_arn", "role_session_name", "external_id", "duration", "policy_file",
            "policy_arn", "session_tag", "source_identity", "profile", "sts_endpoint_url",
            "check_trust", "region")


def sts_fields(config: Config) -> dict[str, Any]:
    return {key: getattr(config, key) for key in STS_KEYS}


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}]}))
    return path


class TestLayersAgree:
    def test_flags_variables_and_file_give_the_same_settings(
        self, tmp_path: Path, policy_file: Path
    ) -> None:
        from_cli = load({
            "role_arn": [ROLE_A, ROLE_B], "role_session_name": "ci-7", "external_id": "ext-1",
            "duration": "1800", "policy_file": str(policy_file), "policy_arn": [POLICY_ARN],
            "session_tag": ["team=blue", "env=dev"], "source_identity": "alice",
            "profile": "dev", "sts_endpoint_url": "http://127.0.0.1:4566",
            "check_trust": "true", "region": "eu-west-1",
        }, {})
        from_env = load({}, {
            "IMDS_ROLE_ARN": f"{ROLE_A};{ROLE_B}", "IMDS_ROLE_SESSION_NAME": "ci-7",
            "IMDS_EXTERNAL_ID": "ext-1", "IMDS_DURATION": "1800",
            "IMDS_POLICY_FILE": str(policy_file), "IMDS_POLICY_ARN": POLICY_ARN,
            "IMDS_SESSION_TAG": "team=blue;env=dev", "IMDS_SOURCE_IDENTITY": "alice",
            "IMDS_PROFILE": "dev", "IMDS_STS_ENDPOINT_URL": "http://127.0.0.1:4566",
            "IMDS_CHECK_TRUST": "true", "IMDS_REGION": "eu-west-1",
        })
        file = tmp_path / "imds.toml"
        file.write_text(
            f'role-arn = ["{ROLE_A}", "{ROLE_B}"]\nrole_session_name = "ci-7"\n'
            f'external-id = "ext-1"\nduration = 1800\npolicy-file = "{policy_file}"\n'
            f'policy-arn = ["{POLICY_ARN}"]\nsession-tag = {{team = "blue", env = "dev"}}\n'
            f'source-identity = "alice"\nprofile = "dev"\n'
            f'sts-endpoint-url = "http://127.0.0.1:4566"\ncheck-trust = true\n'
            f'region = "eu-west-1"\n')
        from_file = load({}, {}, str(file))

        assert sts_fields(from_cli) == sts_fields(from_env) == sts_fields(from_file)
        assert (ROLE_A, ROLE_B) == from_cli.role_arn
        assert ("team=blue", "env=dev") == from_cli.session_tag
        assert from_cli.check_trust is True

    def test_command_line_repeats_and_config_prints_them(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code = cli.main(["config", "--role-arn", ROLE_A, "--role-arn", ROLE_B,
                         "--session-tag", "team=blue", "--session-tag", "env=dev",
                         "--check-trust"], environ={})
        out = capsys.readouterr().out
        assert 0 == code
        assert f"role_arn = {ROLE_A}; {ROLE_B}" in out.splitlines()
        assert "session_tag = team=blue; env=dev" in out.splitlines()
        assert "check_trust = True" in out.splitlines()

    def test_session_name_defaults_to_a_sanitised_user_name(self) -> None:
        name = load({"role_arn": [ROLE_A]}, {}).role_session_name
        assert name.startswith("imds")
        assert sanitise_session_name(name) == name
        assert "" == load({}, {}).role_session_name, "only derived when a role is assumed"

    @pytest.mark.parametrize(
        "raw, clean",
        [("imds-jo hn/ü", "imds-jo-hn--"), ("x", "x-imds"), ("a" * 80, "a" * 64),
         ("dev@corp.example,team=a+b", "dev@corp.example,team=a+b")],
    )
    def test_sanitised_session_names_are_what_sts_accepts(self, raw: str, clean: str) -> None:
        assert clean == sanitise_session_name(raw)

    def test_instance_account_follows_the_served_role_unless_given(self) -> None:
        assert "444455556666" == load({"role_arn": [ROLE_A, ROLE_B]}, {}).account_id
        given = load({"role_arn": [ROLE_B], "account_id": "999988887777"}, {})
        assert "999988887777" == given.account_id


class TestErrors:
    @pytest.mark.parametrize(
        "cli_values, needle",
        [
            ({"role_arn": ["arn:aws:iam::111122223333:user/alice"]},
             "--role-arn: expected a role ARN"),
            ({"role_arn": ["app"]}, "--role-arn: expected a role ARN"),
            ({"role_arn": [ROLE_A], "duration": "899"}, "--duration: expected 900..43200"),
            ({"role_arn": [ROLE_A], "duration": "43201"}, "--duration: expected 900..43200"),
            ({"role_arn": [ROLE_A], "session_tag": ["aws:team=x"]}, "reserved by AWS"),
            ({"role_arn": [ROLE_A], "session_tag": ["novalue"]}, "expected a session tag"),
            ({"role_arn": [ROLE_A], "session_tag": ["team=a", "Team=b"]},
             "each key may appear once"),
            ({"role_arn": [ROLE_A], "policy_arn": [POLICY_ARN] * 11}, "at most 10"),
            ({"role_arn": [ROLE_A], "role_session_name": "has space"},
             "--role-session-name: expected 2-64 characters"),
            ({"role_arn": [ROLE_A], "sts_endpoint_url": "sts.local:4566"},
             "--sts-endpoint-url: expected an http(s) URL"),
            ({"external_id": "ext-1"}, "external_id applies only with role_arn"),
            ({"profile": "dev", "check_trust": "true"},
             "profile, check_trust apply only with role_arn"),
        ],
    )
    def test_mistakes_name_the_setting(self, cli_values: dict[str, Any], needle: str) -> None:
        with pytest.raises(ConfigError, match=re.escape(needle)):
            load(cli_values, {})

    @pytest.mark.parametrize(
        "content, needle",
        [
            ("{not json", "is not JSON"),
            ('["a"]', "is not an IAM policy"),
            (json.dumps({"Statement": [{"Sid": "x" * 2100}]}), "at most 2048"),
        ],
    )
    def test_bad_policy_files_are_configuration_errors(
        self, tmp_path: Path, content: str, needle: str
    ) -> None:
        path = tmp_path / "policy.json"
        path.write_text(content)
        with pytest.raises(ConfigError, match=f"--policy-file: .*{needle}"):
            load({"role_arn": [ROLE_A], "policy_file": str(path)}, {})

    def test_missing_policy_file_is_a_configuration_error(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="--policy-file: cannot read"):
            load({"role_arn": [ROLE_A], "policy_file": str(tmp_path / "none.json")}, {})

    def test_command_line_mistake_exits_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert 2 == cli.main(["serve", "--role-arn", "nonsense"], environ={})
        assert "--role-arn: expected a role ARN" in capsys.readouterr().err


class TestBuildSource:
    def test_role_arn_selects_assume_role_with_the_configured_request(
        self, policy_file: Path
    ) -> None:
        config = load({"role_arn": [ROLE_A, ROLE_B], "policy_file": str(policy_file),
                       "session_tag": ["team=blue"], "role_session_name": "ci-7",
                       "duration": "7200", "region": "eu-west-1"}, {})
        source = build_source(config, time.time)
        assert isinstance(source, AssumeRoleSource)
        assert AssumeRoleSettings(
            role_arns=(ROLE_A, ROLE_B), session_name="ci-7", duration=7200,
            policy=json.dumps(json.loads(policy_file.read_text()), separators=(",", ":")),
            tags=(("team", "blue"),), region="eu-west-1",
        ) == source.settings
        assert 3600 == source.settings.effective_duration
        assert ("cross-account", "444455556666") == (source.role.name, source.role.account_id)
        assert "via arn:aws:iam::111122223333:role/app" in source.describe()

    def test_without_role_arn_the_embedded_default_stays(self) -> None:
        assert isinstance(build_source(load({}, {}), time.time), LocalSource)

    def test_embedded_default_never_imports_boto3(self) -> None:
        """Startup on the embedded default must not pay for boto3's import."""
        probe = ("import sys, time; from imds.config import load; from imds import cli; "
                 "from imds.server import build_source; build_source(load({}, {}), time.time); "
                 "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                 "('boto3', 'botocore')))")
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                check=True, timeout=60)
        assert "[]" == result.stdout.strip()
