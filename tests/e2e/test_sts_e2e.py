"""
`imds serve --role-arn …` as a user runs it: a separate process with base keys in its
environment, an SDK in another process with nothing but the metadata endpoint.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import clean_env, run, run_imds
from tests.support.sts_support import BASE_KEY_ID, BASE_SECRET, StsProxy

pytestmark = pytest.mark.e2e

ROLE_A = "arn:aws:iam::111122223333:role/app"

# What the SDK in the container sees, as JSON.
PROBE = """
import boto3, json
session = boto3.Session()
creds = session.get_credentials()
print(json.dumps({"method": creds.method, "key": creds.access_key,
                  "arn": session.client("sts").get_caller_identity()["Arn"]}))
"""


@pytest.fixture
def sts(moto_url: str) -> Iterator[StsProxy]:
    proxy = StsProxy(moto_url).start()
    yield proxy
    proxy.close()


def server_env(home: Path, *, keys: bool = True) -> dict[str, str]:
    extra = {"AWS_ACCESS_KEY_ID": BASE_KEY_ID, "AWS_SECRET_ACCESS_KEY": BASE_SECRET} if keys \
        else {}
    # Should any call miss the test endpoints, it goes (https) to a closed loopback port.
    return clean_env(home, HTTPS_PROXY="http://127.0.0.1:9", **extra)


class TestServe:
    def test_an_sdk_in_another_process_gets_the_assumed_role(
        self, sts: StsProxy, moto_url: str, tmp_path: Path
    ) -> None:
        home = tmp_path / "server-home"
        args = ("--role-arn", ROLE_A, "--sts-endpoint-url", sts.url, "--role-session-name", "e2e")
        with run_imds(*args, env=server_env(home)) as server:
            client_env = clean_env(tmp_path / "client-home",
                                   AWS_EC2_METADATA_SERVICE_ENDPOINT=server.url,
                                   AWS_ENDPOINT_URL_STS=moto_url, AWS_DEFAULT_REGION="us-east-1")
            result = run([sys.executable, "-c", PROBE], client_env)
        assert 0 == result.returncode, result.stderr
        (call,) = sts.calls("AssumeRole")
        expected = {"method": "iam-role", "key": call.issued_key_id,
                    "arn": "arn:aws:sts::111122223333:assumed-role/app/e2e"}
        assert expected == json.loads(result.stdout)
        assert f"serving role app from sts:AssumeRole of {ROLE_A}" in "\n".join(server.banner)
        output = "\n".join(server.banner) + "".join(server.stderr)
        written = "".join(p.read_text(errors="replace") for p in home.rglob("*") if p.is_file())
        for secret in (BASE_KEY_ID, BASE_SECRET):
            assert secret not in output
            assert secret not in written


class TestStartupErrors:
    @pytest.mark.parametrize(
        "case, needles",
        [
            ("access-denied", ["STS denied sts:AssumeRole of " + ROLE_A,
                               "trust policy must allow this caller", "ec2.amazonaws.com"]),
            ("no-credentials", ["no AWS credentials were found", "--profile", "AWS_PROFILE"]),
            ("unreachable", ["cannot reach STS at http://127.0.0.1:"]),
        ],
    )
    def test_startup_error_is_one_clear_paragraph_and_exit_3(
        self, sts: StsProxy, tmp_path: Path, case: str, needles: list[str]
    ) -> None:
        if case == "access-denied":
            sts.fail("AssumeRole", 403, "AccessDenied",
                     "User: arn:aws:iam::123456789012:user/moto is not authorized to perform: "
                     f"sts:AssumeRole on resource: {ROLE_A}")
        if case == "unreachable":
            sts.down()
        env = server_env(tmp_path / "home", keys=case != "no-credentials")
        result = run([sys.executable, "-m", "imds", "serve", "--port", "0", "--role-arn",
                      ROLE_A, "--sts-endpoint-url", sts.url], env, timeout=60)

        assert 3 == result.returncode
        (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("imds: cannot start")]
        for needle in needles:
            assert needle in line
        assert "Traceback" not in result.stderr
        assert "listening on" not in result.stdout
