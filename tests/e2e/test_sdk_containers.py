"""
The real SDKs take their credentials from imds's container endpoints, each SDK as its own
process with no AWS configuration but the container variables [E-09]:

- the ECS full-URI flow: `AWS_CONTAINER_CREDENTIALS_FULL_URI=<server>/v2/credentials/<task>`
  with the container token in `AWS_CONTAINER_AUTHORIZATION_TOKEN` or in the file named by
  `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` [K-02] [K-03];
- EKS Pod Identity: `<server>/v1/credentials` with a service-account token signed with the
  server's state-directory key, as `imds pod-token` signs it [K-06];

through boto3 (method `container-role`), the AWS CLI and the AWS SDK for JavaScript v3's
default chains. One rotation per role serves every endpoint, so the keys a client gets are
the ones the IMDS document of that role shows. Then: a long-lived boto3 session follows
rotations on each endpoint; the container provider wins over IMDS; and what the SDKs make of
bad tokens. ECS's relative URI, at 169.254.170.2, needs a network namespace: its tests
(and its precedence over the full URI, K-01) are in tests/e2e/test_netns.py.

IMDS is turned off (`AWS_EC2_METADATA_DISABLED`) wherever the test is not about precedence:
a failing container provider cannot hide behind IMDS, and no client here tries
169.254.169.254 from the host's namespace.
"""

from __future__ import annotations

import json
import shutil
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.request import Request, urlopen

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from imds.containers import satoken
from tests.support.metadata_client import served_document
from tests.support.processes import ROOT, clean_env, run, run_imds
from tests.support.rawhttp import untouched_listener

pytestmark = pytest.mark.e2e

PROBE = str(ROOT / "tests" / "clients" / "imds_probe.py")
FOLLOW = str(ROOT / "tests" / "clients" / "boto3_follow.py")
JS_CHAIN = str(ROOT / "tests" / "js" / "default_chain.mjs")
AWS = str(Path(sys.executable).parent / "aws")

FULL_URI = "AWS_CONTAINER_CREDENTIALS_FULL_URI"
TOKEN_VAR = "AWS_CONTAINER_AUTHORIZATION_TOKEN"
TOKEN_FILE = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"
NO_IMDS = {"AWS_EC2_METADATA_DISABLED": "true"}

ECS_TOKEN = "sdk-test-container-token-5f0c2a"
# A task whose role is not the server's own, so that which endpoint answered shows in the key.
OTHER_TASK = "4f3c8d2e-9b1a-4c5d-8e7f-0a1b2c3d4e5f"
OTHER_ROLE = "sdk-other-role"

FLOWS = ("ecs", "pod-identity")
CARRIERS = ("variable", "file")


@dataclass(frozen=True)
class Server:
    url: str
    state: Path
    # The id the server's own role is served under (state_dir/ecs-task-id).
    task: str


@contextmanager
def container_server(folder: Path, *args: str) -> Iterator[Server]:
    """`imds serve` with a state directory in `folder` and a known container token."""
    state = folder / "state"
    state.mkdir(mode=0o700)
    with run_imds("--state-dir", str(state), "--container-token", ECS_TOKEN, *args,
                  env=clean_env(folder / "server-home")) as imds:
        yield Server(imds.url, state, (state / "ecs-task-id").read_text().strip())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module: its own role, and OTHER_TASK serving OTHER_ROLE."""
    with container_server(tmp_path_factory.mktemp("containers"),
                          "--ecs-task", f"{OTHER_TASK}={OTHER_ROLE}") as running:
        yield running


@pytest.fixture
def node(node_modules: Path) -> str:
    found = shutil.which("node")
    assert found is not None  # node_modules skips without node
    return found


def own_key(server: Server) -> str:
    """The server's own role's key, as its IMDS document shows it."""
    return served_document(server.url)["AccessKeyId"]


def ecs_document(server: Server, task: str) -> dict[str, str]:
    request = Request(f"{server.url}/v2/credentials/{task}",
                      headers={"Authorization": ECS_TOKEN})
    with urlopen(request) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def pod_token(state: Path, key: rsa.RSAPrivateKey | None = None) -> str:
    """A service-account token for default/app, signed with the state directory's key."""
    return satoken.mint(key or satoken.load_or_create_key(str(state)), namespace="default",
                        service_account="app", pod_name="app-7d4b9", pod_uid=str(uuid.uuid4()))


def container_vars(server: Server, flow: str, carrier: str, folder: Path, *,
                   token: str | None = None, task: str | None = None) -> dict[str, str]:
    """What points an SDK at `flow` on `server`, the token in a variable or in a file."""
    if flow == "ecs":
        uri = f"{server.url}/v2/credentials/{task or server.task}"
        token = ECS_TOKEN if token is None else token
    else:
        uri = f"{server.url}/v1/credentials"
        token = pod_token(server.state) if token is None else token
    if carrier == "variable":
        return {FULL_URI: uri, TOKEN_VAR: token}
    path = folder / f"{flow}.token"
    # Written as Kubernetes projects it, without a newline: SDKs send the file verbatim
    # and refuse a token with CR or LF [K-03].
    path.write_text(token)
    return {FULL_URI: uri, TOKEN_FILE: str(path)}


def boto3_probe(env: dict[str, str]) -> dict[str, object]:
    """boto3's default chain in a process: {"method", "access_key"} or the error."""
    result = run([sys.executable, PROBE, "boto3"], env)
    assert 0 == result.returncode, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def cli_credentials(env: dict[str, str]) -> tuple[str, str]:
    """What `aws configure list` shows of the resolved key: its type and last 4 characters."""
    result = run([AWS, "configure", "list"], env)
    assert 0 == result.returncode, result.stderr
    for line in result.stdout.splitlines():
        fields = line.split()
        if fields[:1] == ["access_key"]:
            return fields[2], fields[1][-4:]
    raise AssertionError(f"no access_key row: {result.stdout}")


class TestDefaultChains:
    """Each SDK, each flow, the token in the variable and in the file."""

    @pytest.mark.parametrize("carrier", CARRIERS)
    @pytest.mark.parametrize("flow", FLOWS)
    def test_boto3_gets_the_container_role_with_the_keys_imds_serves(
        self, server: Server, empty_home: Path, tmp_path: Path, flow: str, carrier: str
    ) -> None:
        env = clean_env(empty_home, **NO_IMDS,
                        **container_vars(server, flow, carrier, tmp_path))
        answer = boto3_probe(env)
        assert {"method": "container-role", "access_key": own_key(server)} == answer

    @pytest.mark.parametrize("carrier", CARRIERS)
    @pytest.mark.parametrize("flow", FLOWS)
    def test_aws_cli_gets_the_container_role_with_the_keys_imds_serves(
        self, server: Server, empty_home: Path, tmp_path: Path, flow: str, carrier: str
    ) -> None:
        env = clean_env(empty_home, **NO_IMDS,
                        **container_vars(server, flow, carrier, tmp_path))
        assert ("container-role", own_key(server)[-4:]) == cli_credentials(env)

    def test_aws_cli_signs_a_call_with_pod_identity_credentials(
        self, server: Server, empty_home: Path, tmp_path: Path, moto_url: str
    ) -> None:
        env = clean_env(empty_home, **NO_IMDS, AWS_DEFAULT_REGION="us-east-1",
                        **container_vars(server, "pod-identity", "file", tmp_path))
        result = run([AWS, "sts", "get-caller-identity", "--endpoint-url", moto_url,
                      "--output", "json"], env)
        assert 0 == result.returncode, result.stderr
        assert "Account" in json.loads(result.stdout)

    @pytest.mark.parametrize("carrier", CARRIERS)
    @pytest.mark.parametrize("flow", FLOWS)
    def test_js_default_chain_gets_the_keys_imds_serves_and_signs_a_call(
        self, server: Server, node: str, empty_home: Path, tmp_path: Path, moto_url: str,
        flow: str, carrier: str
    ) -> None:
        env = clean_env(empty_home, **NO_IMDS,
                        **container_vars(server, flow, carrier, tmp_path))
        result = run([node, JS_CHAIN, moto_url], env)
        assert 0 == result.returncode, result.stderr
        answer = json.loads(result.stdout)
        assert own_key(server) == answer["accessKeyId"]
        assert answer["account"]


def test_long_lived_boto3_sessions_follow_rotations_on_the_ecs_and_pod_identity_endpoints(
    tmp_path: Path, moto_url: str
) -> None:
    """
    As tests/e2e/test_sdk.py's IMDS session: credentials live 8 s and rotate 4 s before
    expiry, botocore's refresh windows scaled by 1/200. One session per endpoint, at once.
    """
    with container_server(tmp_path, "--credential-lifetime", "8",
                          "--refresh-ahead", "4") as server:
        envs = [clean_env(tmp_path / f"home-{flow}", **NO_IMDS,
                          **container_vars(server, flow, "file", tmp_path)) for flow in FLOWS]
        argv = [sys.executable, FOLLOW, "--api-url", moto_url, "--seconds", "14",
                "--interval", "0.25", "--time-scale", "0.005"]
        with ThreadPoolExecutor(len(envs)) as pool:
            results = list(pool.map(lambda env: run(argv, env, timeout=60), envs))
    for flow, result in zip(FLOWS, results, strict=True):
        assert 0 == result.returncode, (flow, result.stdout + result.stderr)
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert {"method": "container-role"} == lines[0], flow
        calls = lines[1:]
        assert len(calls) >= 40, flow
        assert [] == [call for call in calls if not call["ok"]], flow
        keys = list(dict.fromkeys(call["key"] for call in calls))
        assert len(keys) >= 3, (flow, keys)  # the first key and at least two rotations


class TestContainerProviderComesBeforeImds:
    """
    [E-09] With the IMDS endpoint variable and the container variables both set, every
    SDK takes the container role: OTHER_TASK's, which IMDS does not serve.
    """

    @pytest.fixture
    def both(self, server: Server, empty_home: Path, tmp_path: Path) -> dict[str, str]:
        return clean_env(empty_home, AWS_EC2_METADATA_SERVICE_ENDPOINT=server.url,
                         **container_vars(server, "ecs", "variable", tmp_path,
                                          task=OTHER_TASK))

    @pytest.fixture
    def task_key(self, server: Server) -> str:
        document = ecs_document(server, OTHER_TASK)
        assert document["RoleArn"].endswith(f":role/{OTHER_ROLE}")
        assert own_key(server) != document["AccessKeyId"]
        return document["AccessKeyId"]

    def test_boto3(self, both: dict[str, str], task_key: str) -> None:
        assert {"method": "container-role", "access_key": task_key} == boto3_probe(both)

    def test_aws_cli(self, both: dict[str, str], task_key: str) -> None:
        assert ("container-role", task_key[-4:]) == cli_credentials(both)

    def test_js_default_chain(self, both: dict[str, str], task_key: str, node: str) -> None:
        result = run([node, JS_CHAIN], both)
        assert 0 == result.returncode, result.stderr
        assert task_key == json.loads(result.stdout)["accessKeyId"]


def wrong_token(server: Server, flow: str) -> str:
    """A token the server refuses: not the container token; a JWT signed by another key."""
    if flow == "ecs":
        return "not-the-container-token-000000"
    return pod_token(server.state, rsa.generate_private_key(public_exponent=65537,
                                                             key_size=2048))


class TestBadTokens:
    """What the application sees: no keys, and for CR or LF no request at all [K-03]."""

    @pytest.mark.parametrize("flow", FLOWS)
    def test_boto3_gets_no_credentials_with_a_wrong_token(
        self, server: Server, empty_home: Path, tmp_path: Path, flow: str
    ) -> None:
        env = clean_env(empty_home, **NO_IMDS, **container_vars(
            server, flow, "variable", tmp_path, token=wrong_token(server, flow)))
        answer = boto3_probe(env)
        assert (None, None) == (answer["method"], answer["access_key"])
        error = str(answer["error"])
        assert error.startswith("CredentialRetrievalError: "), error
        assert f"non 200 response {403 if flow == 'ecs' else 400}" in error

    @pytest.mark.parametrize("flow", FLOWS)
    def test_js_default_chain_gets_no_credentials_with_a_wrong_token(
        self, server: Server, node: str, empty_home: Path, tmp_path: Path, flow: str
    ) -> None:
        env = clean_env(empty_home, **NO_IMDS, **container_vars(
            server, flow, "variable", tmp_path, token=wrong_token(server, flow)))
        result = run([node, JS_CHAIN], env)
        assert 0 != result.returncode
        assert "" == result.stdout
        assert "CredentialsProviderError" in result.stderr

    def test_boto3_refuses_a_token_with_cr_lf_without_sending_it(
        self, empty_home: Path
    ) -> None:
        with untouched_listener() as trap:
            env = clean_env(empty_home, **NO_IMDS, **{
                FULL_URI: f"{trap}/v2/credentials/{OTHER_TASK}",
                TOKEN_VAR: f"{ECS_TOKEN}\r\nX-Injected: 1"})
            answer = boto3_probe(env)
        assert {"method": None, "access_key": None,
                "error": "ValueError: Auth token value is not a legal header value"} == answer

    def test_boto3_refuses_a_token_file_that_ends_in_a_newline_without_sending_it(
        self, empty_home: Path, tmp_path: Path
    ) -> None:
        """`echo "$TOKEN" > file` breaks boto3: it sends the file verbatim or not at all."""
        path = tmp_path / "token"
        path.write_text(f"{ECS_TOKEN}\n")
        with untouched_listener() as trap:
            env = clean_env(empty_home, **NO_IMDS, **{
                FULL_URI: f"{trap}/v2/credentials/{OTHER_TASK}", TOKEN_FILE: str(path)})
            answer = boto3_probe(env)
        assert {"method": None, "access_key": None,
                "error": "ValueError: Auth token value is not a legal header value"} == answer

    def test_js_default_chain_refuses_a_token_with_cr_lf_without_sending_it(
        self, node: str, empty_home: Path
    ) -> None:
        with untouched_listener() as trap:
            env = clean_env(empty_home, **NO_IMDS, **{
                FULL_URI: f"{trap}/v2/credentials/{OTHER_TASK}",
                TOKEN_VAR: f"{ECS_TOKEN}\r\nX-Injected: 1"})
            result = run([node, JS_CHAIN], env)
        assert 0 != result.returncode
        assert "" == result.stdout
        # fromHttp refuses it first ("invalid \r\n sequence"); the chain's last provider, the
        # legacy fromContainerMetadata, is stopped by Node's own header check.
        assert 'Invalid character in header content ["Authorization"]' in result.stderr
