"""The real SDKs accept imds as the EC2 metadata service and follow its rotations."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest

from imds.server import Running
from tests.support.processes import ROOT, clean_env, run, run_imds

CLIENT = ROOT / "tests" / "clients" / "boto3_follow.py"


def served_key(server: Running) -> str:
    current = server.rotator.current
    assert current is not None
    return current.credentials.access_key_id


class TestBoto3InProcess:
    def test_default_chain_reports_iam_role_and_the_served_keys(
        self, imds_thread: Callable[..., Running], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        server = imds_thread()
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", server.url)
        credentials = boto3.Session().get_credentials()
        assert credentials is not None
        assert "iam-role" == credentials.method
        assert served_key(server) == credentials.access_key

    def test_v1_disabled_still_works_because_tokens_are_served(
        self, imds_thread: Callable[..., Running], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """S-PY-03: with IMDSv1 disabled botocore must get a token or fail."""
        server = imds_thread()
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", server.url)
        monkeypatch.setenv("AWS_EC2_METADATA_V1_DISABLED", "true")
        credentials = boto3.Session().get_credentials()
        assert credentials is not None
        assert served_key(server) == credentials.access_key

    def test_region_comes_from_the_availability_zone(
        self, imds_thread: Callable[..., Running], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """S-PY-09: botocore asks `placement/availability-zone/` (with the slash)."""
        from botocore.utils import InstanceMetadataRegionFetcher

        server = imds_thread(region="eu-west-2")
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", server.url)
        fetcher = InstanceMetadataRegionFetcher(
            config={"ec2_metadata_service_endpoint": server.url})
        assert "eu-west-2" == fetcher.retrieve_region()

    def test_botocore_extends_short_lived_credentials(
        self, imds_thread: Callable[..., Running], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """
        S-PY-08, documented in the README: credentials that expire within ~17-25 minutes are
        given a local expiry 17-25 minutes out, so boto3 re-fetches every 2-10 minutes.
        """
        server = imds_thread(credential_lifetime=60)
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", server.url)
        credentials = boto3.Session().get_credentials()
        current = server.rotator.current
        assert current is not None
        extended_by = (credentials._expiry_time - current.credentials.expiration).total_seconds()
        assert 900 <= extended_by <= 1500  # (15 min + 2..10 min jitter) - 60 s


@pytest.mark.e2e
class TestSdkProcesses:
    """`imds serve` as a process; SDK clients as processes with no AWS configuration."""

    def test_boto3_default_chain_gets_the_served_keys(self, empty_home: Path) -> None:
        with run_imds(env=clean_env(empty_home)) as imds:
            env = clean_env(empty_home, AWS_EC2_METADATA_SERVICE_ENDPOINT=imds.url)
            code = ("import boto3,json; c=boto3.Session().get_credentials(); "
                    "print(json.dumps([c.method, c.access_key]))")
            result = run([sys.executable, "-c", code], env)
        assert 0 == result.returncode, result.stderr
        method, key = json.loads(result.stdout)
        assert "iam-role" == method
        assert key.startswith("ASIA")

    def test_aws_cli_reports_the_iam_role_source_and_signs_with_it(
        self, empty_home: Path, moto_url: str
    ) -> None:
        aws = str(Path(sys.executable).parent / "aws")
        with run_imds(env=clean_env(empty_home)) as imds:
            env = clean_env(empty_home, AWS_EC2_METADATA_SERVICE_ENDPOINT=imds.url,
                            AWS_DEFAULT_REGION="us-east-1")
            listing = run([aws, "configure", "list"], env)
            identity = run([aws, "sts", "get-caller-identity", "--endpoint-url", moto_url,
                            "--output", "json"], env)
        assert 0 == listing.returncode, listing.stderr
        assert "iam-role" in listing.stdout
        assert 0 == identity.returncode, identity.stderr
        assert "Account" in json.loads(identity.stdout)

    @pytest.mark.parametrize("v1_disabled", [False, True], ids=["default", "v1-disabled"])
    def test_long_lived_boto3_session_follows_rotations_without_a_failed_call(
        self, empty_home: Path, moto_url: str, v1_disabled: bool
    ) -> None:
        """
        Credentials live 8 s and rotate 4 s before expiry; botocore's refresh windows are
        scaled by 1/200 (15 min -> 4.5 s) so its real refresh logic runs in seconds.
        """
        imds_env = clean_env(empty_home)
        with run_imds("--credential-lifetime", "8", "--refresh-ahead", "4",
                      env=imds_env) as imds:
            extra = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url}
            if v1_disabled:
                extra["AWS_EC2_METADATA_V1_DISABLED"] = "true"
            result = run([sys.executable, str(CLIENT), "--api-url", moto_url,
                          "--seconds", "14", "--interval", "0.25", "--time-scale", "0.005"],
                         clean_env(empty_home, **extra), timeout=60)
        assert 0 == result.returncode, result.stdout + result.stderr
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert {"method": "iam-role"} == lines[0]
        calls = lines[1:]
        assert len(calls) >= 40
        assert [] == [call for call in calls if not call["ok"]]
        keys = list(dict.fromkeys(call["key"] for call in calls))
        assert len(keys) >= 3, keys  # the first key and at least two rotations
